//! `--plot`: a latency percentile-spectrum plot as a small hand-written SVG (or an HTML page
//! holding it), one line per target.
//!
//! x is the percentile on a "nines" scale, `-log10(1 - p/100)`: 0 → p0, 1 → p90, 2 → p99,
//! 3 → p99.9 ...; it runs to the nines the sample size supports (log10 of the request count,
//! at least 2, at most 6). y is the latency on a log scale (µs), so the body of the
//! distribution and its tail are both readable.

use std::fmt::Write;
use std::path::Path;

use crate::latency::OpStats;

const WIDTH: f64 = 820.0;
const HEIGHT: f64 = 480.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 40.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;
const COLORS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];
/// Points per nine along a line.
const STEPS_PER_NINE: usize = 50;

/// The percentile at `nines` on the x axis.
pub fn percentile_at(nines: f64) -> f64 {
    100.0 * (1.0 - 10f64.powf(-nines))
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `value` with at most 3 decimals and no trailing zeros.
fn short(value: f64) -> String {
    let text = format!("{value:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// A latency in µs as a short axis label.
fn label_us(us: f64) -> String {
    if us >= 1e6 {
        format!("{} s", short(us / 1e6))
    } else if us >= 1e3 {
        format!("{} ms", short(us / 1e3))
    } else {
        format!("{} µs", short(us))
    }
}

/// The label of the x axis at `nines`: p0, p90, p99, p99.9, ...
fn label_nines(nines: usize) -> String {
    match nines {
        0 => "p0".to_string(),
        1 => "p90".to_string(),
        n => format!("p99{}{}", if n > 2 { "." } else { "" }, "9".repeat(n.saturating_sub(2))),
    }
}

/// The SVG document for `series` (name, latencies).
pub fn spectrum_svg(title: &str, series: &[(&str, &OpStats)]) -> String {
    let requests = series.iter().map(|(_, s)| s.requests).max().unwrap_or(0).max(1);
    let max_nines = (requests as f64).log10().ceil().clamp(2.0, 6.0);
    let steps = (max_nines as usize) * STEPS_PER_NINE;
    let lines: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|(_, stats)| {
            if stats.requests == 0 {
                return Vec::new();
            }
            let xs: Vec<f64> = (0..=steps).map(|i| i as f64 * max_nines / steps as f64).collect();
            let mut ps: Vec<f64> = xs.iter().map(|&x| percentile_at(x)).collect();
            if let Some(last) = ps.last_mut() {
                *last = 100.0;
            }
            xs.into_iter().zip(stats.percentiles_us(&ps)).collect()
        })
        .collect();
    let values = lines.iter().flatten().map(|&(_, y)| y.max(0.001));
    let y_min = values.clone().fold(f64::INFINITY, f64::min);
    let y_max = values.fold(0.0, f64::max);
    let (y_lo, y_hi) = if y_min.is_finite() && y_max > 0.0 {
        (
            10f64.powf(y_min.log10().floor()),
            10f64.powf(y_max.log10().ceil().max(y_min.log10().floor() + 1.0)),
        )
    } else {
        (1.0, 10.0)
    };
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x_of = |nines: f64| LEFT + nines / max_nines * plot_w;
    let y_of = |us: f64| TOP + plot_h * (1.0 - (us.max(y_lo).log10() - y_lo.log10()) / (y_hi.log10() - y_lo.log10()));

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="14">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    // Grid and axis labels: one vertical line per nine, horizontal lines at 1, 2, 5 × 10^k µs.
    for nine in 0..=(max_nines as usize) {
        let x = x_of(nine as f64);
        let label = label_nines(nine);
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
            TOP + plot_h,
            TOP + plot_h + 18.0
        );
    }
    let mut decade = y_lo;
    while decade <= y_hi * 1.0001 {
        for (k, major) in [(1.0, true), (2.0, false), (5.0, false)] {
            let v = decade * k;
            if v > y_hi * 1.0001 {
                break;
            }
            let y = y_of(v);
            let stroke = if major { "#bbb" } else { "#eee" };
            let _ = writeln!(
                svg,
                r#"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{stroke}"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                LEFT + plot_w,
                LEFT - 6.0,
                y + 4.0,
                label_us(v)
            );
        }
        decade *= 10.0;
    }
    let _ = writeln!(
        svg,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333"/>"##
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile (log "nines" scale)</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 16.0
    );
    let _ = writeln!(
        svg,
        r#"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">latency (log scale)</text>"#,
        TOP + plot_h / 2.0
    );
    for (i, ((name, stats), points)) in series.iter().zip(&lines).enumerate() {
        let color = COLORS[i % COLORS.len()];
        if !points.is_empty() {
            let path: Vec<String> = points
                .iter()
                .map(|&(x, y)| format!("{:.1},{:.1}", x_of(x), y_of(y)))
                .collect();
            let _ = writeln!(
                svg,
                r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
                path.join(" ")
            );
        }
        let ly = TOP + 16.0 + i as f64 * 18.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{} ({} requests)</text>"#,
            LEFT + 12.0,
            LEFT + 36.0,
            LEFT + 42.0,
            ly + 4.0,
            escape(name),
            stats.requests
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// Writes the plot to `path`: an SVG, or an HTML page around it when the name ends in `.html`.
pub fn write_plot(path: &Path, title: &str, series: &[(&str, &OpStats)]) -> std::io::Result<()> {
    let svg = spectrum_svg(title, series);
    let is_html = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("html") || e.eq_ignore_ascii_case("htm"));
    let body = if is_html {
        format!(
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{}</title></head>\n<body>\n{svg}</body></html>\n",
            escape(title)
        )
    } else {
        svg
    };
    std::fs::write(path, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nines_scale() {
        assert_eq!(percentile_at(0.0), 0.0);
        assert!((percentile_at(1.0) - 90.0).abs() < 1e-9);
        assert!((percentile_at(3.0) - 99.9).abs() < 1e-9);
    }

    #[test]
    fn labels() {
        let nines: Vec<String> = (0..6).map(label_nines).collect();
        assert_eq!(nines, ["p0", "p90", "p99", "p99.9", "p99.99", "p99.999"]);
        assert_eq!(label_us(20.0), "20 µs");
        assert_eq!(label_us(1000.0 * 2.000_000_000_000_4), "2 ms");
        assert_eq!(label_us(0.5), "0.5 µs");
        assert_eq!(label_us(5e6), "5 s");
    }

    #[test]
    fn svg_has_one_line_per_series() {
        let mut a = OpStats::default();
        let mut b = OpStats::default();
        for i in 1..=1000u64 {
            a.record(i * 1000);
            b.record(i * 2000);
        }
        let svg = spectrum_svg("a <vs> b", &[("a", &a), ("b & c", &b)]);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("a &lt;vs&gt; b") && svg.contains("b &amp; c"));
        assert!(svg.contains(">p99.9<"));
        let empty = spectrum_svg("empty", &[("none", &OpStats::default())]);
        assert_eq!(empty.matches("<polyline").count(), 0);
    }
}
