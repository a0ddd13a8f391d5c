//! The report: what a run measured, as a serializable [`Report`] (the JSON output, schema
//! `corekv-bench/1`, documented in `benches/BENCH.md`) and as the text table printed on stdout.
//!
//! Every field of the JSON is present (absent values are `null`) except the optional ones added
//! within a version (marked `?` in the schema: `results[].io_loop`), and the set of keys is fixed:
//! error kinds and operations are object keys, never data. The test
//! `tests/bench_tool.rs::json_schema_is_stable` checks the keys and types against
//! `tests/report-schema.json`; a change of the schema other than a new optional key must bump
//! `SCHEMA`.

use std::fmt::Write;
use std::time::Duration;

use serde::Serialize;

use crate::config::{IoLoop, KeyPattern, LoadConfig, Pacing, Ratio, Settings, Stop, ValueSize};
use crate::latency::{OpStats, Recording, GROUPING_POWER, MAX_VALUE_POWER};
use crate::load::LATE_THRESHOLD;
use crate::target::{Protocol, Target};

/// The JSON schema's name and version.
pub const SCHEMA: &str = "corekv-bench/1";

/// Percentiles of the JSON spectrum: 0, then quarter steps of each "nine" up to 99.999, and 100.
pub const SPECTRUM_PERCENTILES: [f64; 23] = [
    0.0, 25.0, 50.0, 75.0, 90.0, 92.5, 95.0, 97.5, 99.0, 99.25, 99.5, 99.75, 99.9, 99.925, 99.95, 99.975, 99.99,
    99.9925, 99.995, 99.9975, 99.999, 99.9999, 100.0,
];

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub schema: &'static str,
    pub tool: Tool,
    pub config: ConfigReport,
    /// One entry per target (two with `--compare`: A then B), each merging its rounds.
    pub results: Vec<TargetResult>,
    /// With `--compare`: B / A ratios; otherwise `null`.
    pub comparison: Option<Comparison>,
}

impl Report {
    /// The report of `results` (A, then B with `--compare`).
    pub fn new(settings: &Settings, results: Vec<TargetResult>) -> Report {
        let comparison = match &results[..] {
            [a, b] => Some(Comparison::new(a, b)),
            _ => None,
        };
        Report {
            schema: SCHEMA,
            tool: Tool {
                name: "corekv-bench",
                version: env!("CARGO_PKG_VERSION"),
            },
            config: ConfigReport::new(settings),
            results,
            comparison,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Tool {
    pub name: &'static str,
    pub version: &'static str,
}

#[derive(Clone, Debug, Serialize)]
pub struct ConfigReport {
    /// `closed` or `open`.
    pub mode: &'static str,
    pub ratio: Ratio,
    pub keys: u64,
    pub key_pattern: KeyPattern,
    pub zipf_skew: f64,
    pub key_prefix: String,
    pub value_size: ValueSize,
    pub seed: u64,
    pub pipeline: u32,
    pub connections: u32,
    pub threads: u32,
    /// Measured seconds per round, or `null` with `--requests`.
    pub duration_s: Option<f64>,
    /// Measured requests per round, or `null` with `--duration`.
    pub requests: Option<u64>,
    pub warmup_s: f64,
    /// Open loop's total rate, or `null` (closed loop).
    pub rate_per_s: Option<f64>,
    pub pacing: Pacing,
    pub prefill: bool,
    pub rounds: u32,
    pub late_threshold_us: f64,
    pub drain_timeout_s: f64,
    pub histogram: HistogramConfig,
}

#[derive(Clone, Debug, Serialize)]
pub struct HistogramConfig {
    pub grouping_power: u8,
    pub max_value_power: u8,
    /// Largest relative error of a reported percentile (2^-grouping_power).
    pub relative_error: f64,
}

impl ConfigReport {
    pub fn new(settings: &Settings) -> ConfigReport {
        let w = &settings.workload;
        let l = &settings.load;
        ConfigReport {
            mode: if l.is_open_loop() { "open" } else { "closed" },
            ratio: w.ratio,
            keys: w.keys,
            key_pattern: w.key_pattern,
            zipf_skew: w.zipf_skew,
            key_prefix: w.key_prefix.clone(),
            value_size: w.value_size,
            seed: w.seed,
            pipeline: l.pipeline,
            connections: l.connections,
            threads: l.threads,
            duration_s: match l.stop {
                Stop::Duration(d) => Some(d.as_secs_f64()),
                Stop::Requests(_) => None,
            },
            requests: match l.stop {
                Stop::Requests(n) => Some(n),
                Stop::Duration(_) => None,
            },
            warmup_s: l.warmup.as_secs_f64(),
            rate_per_s: l.rate,
            pacing: l.pacing,
            prefill: settings.prefill,
            rounds: settings.rounds,
            late_threshold_us: LATE_THRESHOLD.as_secs_f64() * 1e6,
            drain_timeout_s: l.drain_timeout.as_secs_f64(),
            histogram: HistogramConfig {
                grouping_power: GROUPING_POWER,
                max_value_power: MAX_VALUE_POWER,
                relative_error: 1.0 / f64::from(1u32 << GROUPING_POWER),
            },
        }
    }
}

/// Latency summary in microseconds.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LatencySummary {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub p99_99: f64,
    pub max: f64,
    pub mean: f64,
    pub min: f64,
}

impl LatencySummary {
    pub fn of(stats: &OpStats) -> LatencySummary {
        let p = stats.percentiles_us(&[50.0, 90.0, 99.0, 99.9, 99.99]);
        LatencySummary {
            p50: p[0],
            p90: p[1],
            p99: p[2],
            p99_9: p[3],
            p99_99: p[4],
            max: stats.max_us(),
            mean: stats.mean_us(),
            min: stats.min_us(),
        }
    }

    /// (label, value) in display order.
    pub fn rows(&self) -> [(&'static str, f64); 8] {
        [
            ("p50", self.p50),
            ("p90", self.p90),
            ("p99", self.p99),
            ("p99.9", self.p99_9),
            ("p99.99", self.p99_99),
            ("max", self.max),
            ("mean", self.mean),
            ("min", self.min),
        ]
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ErrorReport {
    pub total: u64,
    pub server: u64,
    pub protocol: u64,
    pub connection: u64,
    pub timeout: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct OpReport {
    /// Answered requests of this operation (including error replies).
    pub requests: u64,
    /// Error replies.
    pub errors: u64,
    /// GETs that found no value (always 0 for SET).
    pub misses: u64,
    pub throughput_ops_per_s: f64,
    pub latency_us: LatencySummary,
}

#[derive(Clone, Debug, Serialize)]
pub struct Ops {
    pub get: OpReport,
    pub set: OpReport,
}

#[derive(Clone, Debug, Serialize)]
pub struct SpectrumPoint {
    pub percentile: f64,
    pub latency_us: f64,
}

/// One target's results, its rounds merged.
#[derive(Clone, Debug, Serialize)]
pub struct TargetResult {
    pub name: String,
    pub target: String,
    pub protocol: Protocol,
    /// The load loop that ran the rounds, `tokio` or `blocking` (optional: absent from reports
    /// written before it was added, and from results built without it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub io_loop: Option<IoLoop>,
    pub rounds: u32,
    /// Measured seconds, summed over rounds.
    pub measured_s: f64,
    /// Answered requests (GET + SET, including error replies).
    pub requests: u64,
    pub throughput_ops_per_s: f64,
    pub misses: u64,
    /// Open loop: requests sent `late_threshold_us` or more after their scheduled time.
    pub late: u64,
    pub connections_lost: u64,
    pub errors: ErrorReport,
    /// The first error messages (at most 5).
    pub first_errors: Vec<String>,
    pub latency_us: LatencySummary,
    pub ops: Ops,
    pub spectrum: Vec<SpectrumPoint>,
}

fn rate(count: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

impl TargetResult {
    pub fn new(name: &str, target: &Target, rounds: u32, recording: &Recording, measured: Duration) -> TargetResult {
        let seconds = measured.as_secs_f64();
        let total = recording.total();
        let op = |stats: &OpStats| OpReport {
            requests: stats.requests,
            errors: stats.errors,
            misses: stats.misses,
            throughput_ops_per_s: rate(stats.requests, seconds),
            latency_us: LatencySummary::of(stats),
        };
        let spectrum = total
            .percentiles_us(&SPECTRUM_PERCENTILES)
            .into_iter()
            .zip(SPECTRUM_PERCENTILES)
            .map(|(latency_us, percentile)| SpectrumPoint { percentile, latency_us })
            .collect();
        let e = recording.errors;
        TargetResult {
            name: name.to_string(),
            target: target.to_string(),
            protocol: target.protocol,
            io_loop: None,
            rounds,
            measured_s: seconds,
            requests: total.requests,
            throughput_ops_per_s: rate(total.requests, seconds),
            misses: total.misses,
            late: recording.late,
            connections_lost: recording.connections_lost,
            errors: ErrorReport {
                total: e.total(),
                server: e.server,
                protocol: e.protocol,
                connection: e.connection,
                timeout: e.timeout,
            },
            first_errors: recording.first_errors.clone(),
            latency_us: LatencySummary::of(&total),
            ops: Ops {
                get: op(&recording.get),
                set: op(&recording.set),
            },
            spectrum,
        }
    }

    /// Names the load loop that ran the rounds.
    pub fn with_io_loop(mut self, io_loop: IoLoop) -> TargetResult {
        self.io_loop = Some(io_loop);
        self
    }

    /// Whether the run had failures (errors of any kind or lost connections) or answered nothing.
    pub fn failed(&self) -> bool {
        self.errors.total > 0 || self.connections_lost > 0 || self.requests == 0
    }
}

/// B / A ratios (`--compare` over `--target`).
#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    /// Always `"b/a"`: each ratio is the `--compare` target's value over the `--target`'s.
    pub direction: &'static str,
    pub a: String,
    pub b: String,
    /// Above 1: B is faster.
    pub throughput: Option<f64>,
    /// Above 1: B is slower. `null` where A's value is 0.
    pub latency_us: LatencyRatios,
}

#[derive(Clone, Debug, Serialize)]
pub struct LatencyRatios {
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    pub p99_9: Option<f64>,
    pub p99_99: Option<f64>,
    pub max: Option<f64>,
    pub mean: Option<f64>,
    pub min: Option<f64>,
}

/// `b / a`, or `None` when `a` is 0.
pub fn ratio(b: f64, a: f64) -> Option<f64> {
    (a != 0.0).then(|| b / a)
}

impl Comparison {
    pub fn new(a: &TargetResult, b: &TargetResult) -> Comparison {
        let (x, y) = (&a.latency_us, &b.latency_us);
        Comparison {
            direction: "b/a",
            a: a.name.clone(),
            b: b.name.clone(),
            throughput: ratio(b.throughput_ops_per_s, a.throughput_ops_per_s),
            latency_us: LatencyRatios {
                p50: ratio(y.p50, x.p50),
                p90: ratio(y.p90, x.p90),
                p99: ratio(y.p99, x.p99),
                p99_9: ratio(y.p99_9, x.p99_9),
                p99_99: ratio(y.p99_99, x.p99_99),
                max: ratio(y.max, x.max),
                mean: ratio(y.mean, x.mean),
                min: ratio(y.min, x.min),
            },
        }
    }
}

/// A latency in µs for tables: 1 decimal below 10 ms, whole µs above.
pub fn us(value: f64) -> String {
    if value < 10_000.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.0}")
    }
}

/// One line describing the run's settings.
pub fn describe(settings: &Settings) -> String {
    let l = &settings.load;
    let w = &settings.workload;
    let mode = match l.rate {
        Some(rate) => format!("open loop at {rate} req/s ({:?} pacing)", l.pacing).to_lowercase(),
        None => "closed loop".to_string(),
    };
    let stop = match l.stop {
        Stop::Duration(d) => format!("{:.1} s", d.as_secs_f64()),
        Stop::Requests(n) => format!("{n} requests"),
    };
    let values = if w.value_size.min == w.value_size.max {
        format!("{} B", w.value_size.min)
    } else {
        format!("{}-{} B", w.value_size.min, w.value_size.max)
    };
    // How each side's connections are driven.
    let driver = |target: &Target, io_loop: IoLoop| {
        let side = LoadConfig { io_loop, ..l.clone() };
        match (target.protocol, side.io_loop_for(target.protocol)) {
            (Protocol::Rdma, _) => format!("rdma {} (a thread per connection)", l.rdma_provider.name()),
            (_, IoLoop::Blocking) => "blocking loop (a thread per connection)".to_string(),
            _ => format!("tokio loop on {} thread(s)", l.threads),
        }
    };
    let a = driver(&settings.target, l.io_loop);
    let threads = match &settings.compare {
        Some((target, _)) if driver(target, settings.compare_io_loop) != a => {
            format!("A {a}, B {}", driver(target, settings.compare_io_loop))
        }
        _ => a,
    };
    format!(
        "{mode}, {} connections x pipeline {}, {threads}, GET:SET {}:{}, {} keys ({:?}), values {values}, \
         {stop} per round after {:.1} s warm-up, {} round(s)",
        l.connections,
        l.pipeline,
        w.ratio.read,
        w.ratio.write,
        w.keys,
        w.key_pattern,
        l.warmup.as_secs_f64(),
        settings.rounds
    )
    .replace("(Uniform)", "(uniform)")
    .replace("(Zipf)", &format!("(zipf {})", w.zipf_skew))
    .replace("(Sequential)", "(sequential)")
}

/// The result table of one target.
pub fn format_result(result: &TargetResult) -> String {
    let mut out = String::new();
    let name = if result.name == result.target {
        result.name.clone()
    } else {
        format!("{} ({})", result.name, result.target)
    };
    let io_loop = result
        .io_loop
        .map_or_else(String::new, |io_loop| format!(", {} loop", io_loop.name()));
    let _ = writeln!(
        out,
        "{name}: {:.2} s measured over {} round(s){io_loop}",
        result.measured_s, result.rounds
    );
    let _ = writeln!(
        out,
        "{:<5} {:>10} {:>12} {:>8} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "op", "requests", "ops/s", "misses", "errors", "p50", "p90", "p99", "p99.9", "p99.99", "max", "mean"
    );
    let mut row = |name: &str, requests: u64, ops: f64, misses: u64, errors: u64, l: &LatencySummary| {
        let _ = writeln!(
            out,
            "{name:<5} {requests:>10} {ops:>12.1} {misses:>8} {errors:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            us(l.p50),
            us(l.p90),
            us(l.p99),
            us(l.p99_9),
            us(l.p99_99),
            us(l.max),
            us(l.mean)
        );
    };
    row(
        "all",
        result.requests,
        result.throughput_ops_per_s,
        result.misses,
        result.errors.total,
        &result.latency_us,
    );
    for (name, op) in [("GET", &result.ops.get), ("SET", &result.ops.set)] {
        if op.requests > 0 {
            row(
                name,
                op.requests,
                op.throughput_ops_per_s,
                op.misses,
                op.errors,
                &op.latency_us,
            );
        }
    }
    let e = &result.errors;
    let _ = writeln!(
        out,
        "latency in µs | errors: server {}, protocol {}, connection {}, timeout {} | connections lost: {} | late sends: {}",
        e.server, e.protocol, e.connection, e.timeout, result.connections_lost, result.late
    );
    for message in &result.first_errors {
        let _ = writeln!(out, "  error: {message}");
    }
    out
}
