//! `--compare`: the side-by-side table of two targets' merged results, with B / A ratios
//! (`--compare` over `--target`). Running the rounds alternately (A B, B A, ...) so that drift of
//! the machine hits both alike is the caller's job (`app`); this module only presents them.

use std::fmt::Write;

use crate::report::{us, Comparison, TargetResult};

/// `x1.23`, or `-` when undefined.
fn times(ratio: Option<f64>) -> String {
    ratio.map_or_else(|| "-".to_string(), |r| format!("x{r:.2}"))
}

/// The comparison table, ending with a line that states the ratio's direction.
pub fn format_comparison(a: &TargetResult, b: &TargetResult, comparison: &Comparison) -> String {
    let mut out = String::new();
    let width = (a.name.chars().count().max(b.name.chars().count()) + 3).clamp(12, 44);
    let _ = writeln!(
        out,
        "{:<22} {:>width$} {:>width$} {:>9}",
        "",
        format!("A: {}", a.name),
        format!("B: {}", b.name),
        "B / A"
    );
    let _ = writeln!(
        out,
        "{:<22} {:>width$.1} {:>width$.1} {:>9}",
        "throughput (ops/s)",
        a.throughput_ops_per_s,
        b.throughput_ops_per_s,
        times(comparison.throughput)
    );
    let rows_a = a.latency_us.rows();
    let rows_b = b.latency_us.rows();
    let ratios = &comparison.latency_us;
    let ratio_rows = [
        ratios.p50,
        ratios.p90,
        ratios.p99,
        ratios.p99_9,
        ratios.p99_99,
        ratios.max,
        ratios.mean,
        ratios.min,
    ];
    for (((label, x), (_, y)), r) in rows_a.iter().zip(rows_b.iter()).zip(ratio_rows) {
        let _ = writeln!(
            out,
            "{:<22} {:>width$} {:>width$} {:>9}",
            format!("{label} (µs)"),
            us(*x),
            us(*y),
            times(r)
        );
    }
    for (label, x, y) in [
        ("GET p99 (µs)", &a.ops.get, &b.ops.get),
        ("SET p99 (µs)", &a.ops.set, &b.ops.set),
    ] {
        if x.requests > 0 || y.requests > 0 {
            let r = crate::report::ratio(y.latency_us.p99, x.latency_us.p99);
            let _ = writeln!(
                out,
                "{label:<22} {:>width$} {:>width$} {:>9}",
                us(x.latency_us.p99),
                us(y.latency_us.p99),
                times(r)
            );
        }
    }
    for (label, x, y) in [
        ("requests", a.requests, b.requests),
        ("errors", a.errors.total, b.errors.total),
        ("misses", a.misses, b.misses),
        ("late sends", a.late, b.late),
    ] {
        let _ = writeln!(out, "{label:<22} {x:>width$} {y:>width$}");
    }
    let _ = writeln!(
        out,
        "ratios are B / A = {} / {}: throughput above 1 means B is faster, latency above 1 means B is slower",
        b.name, a.name
    );
    out
}
