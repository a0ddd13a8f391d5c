//! The `corekv-bench` program: runs the rounds (alternating targets with `--compare`), prints the
//! results, writes the JSON report and the plot, and chooses the exit code.
//!
//! Exit codes: 0 the run completed without errors; 1 it completed but requests failed (error
//! replies, protocol errors, lost connections, timeouts) or none was answered; 2 it could not run
//! (bad arguments, unreachable target, unwritable output).

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use crate::compare::format_comparison;
use crate::config::{Cli, IoLoop, LoadConfig, Settings};
use crate::latency::Recording;
use crate::load::{prefill, run_round};
use crate::plot::write_plot;
use crate::progress::{Live, Printer};
use crate::report::{describe, format_result, Report, TargetResult};
use crate::target::Target;

/// Exit code: completed without errors.
pub const EXIT_OK: i32 = 0;
/// Exit code: completed, but some requests failed.
pub const EXIT_ERRORS: i32 = 1;
/// Exit code: could not run.
pub const EXIT_UNUSABLE: i32 = 2;

/// One target's rounds, merged.
struct Side {
    label: &'static str,
    target: Target,
    name: String,
    /// The load settings of this side (its `--io-loop` or `--compare-io-loop`).
    load: LoadConfig,
    /// The loop its rounds run.
    io_loop: IoLoop,
    recording: Recording,
    measured: Duration,
}

/// Runs the program; returns the exit code.
pub fn run(cli: &Cli) -> i32 {
    let terminal = std::io::stderr().is_terminal();
    let settings = match cli.settings(terminal) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("corekv-bench: {e}");
            return EXIT_UNUSABLE;
        }
    };
    match execute(&settings, terminal) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("corekv-bench: {e}");
            EXIT_UNUSABLE
        }
    }
}

fn execute(settings: &Settings, terminal: bool) -> Result<i32, String> {
    let side = |label, target: &Target, name: &str, io_loop| {
        let load = LoadConfig {
            io_loop,
            ..settings.load.clone()
        };
        Side {
            label,
            target: target.clone(),
            name: name.to_string(),
            io_loop: load.io_loop_for(target.protocol),
            load,
            recording: Recording::default(),
            measured: Duration::ZERO,
        }
    };
    let mut sides = vec![side(
        "A",
        &settings.target,
        &settings.target_name,
        settings.load.io_loop,
    )];
    if let Some((target, name)) = &settings.compare {
        sides.push(side("B", target, name, settings.compare_io_loop));
    }
    // With --json - the report owns stdout; the text goes to stderr.
    let json_to_stdout = settings.json.as_deref() == Some("-");
    let say = |text: &str| {
        if json_to_stdout {
            eprint!("{text}");
        } else {
            print!("{text}");
        }
    };
    say(&format!(
        "corekv-bench {}: {}\n",
        env!("CARGO_PKG_VERSION"),
        describe(settings)
    ));

    if settings.prefill {
        for side in &sides {
            let result = prefill(&side.target, &settings.workload, &side.load)?;
            let rec = &result.recording;
            let errors = rec.errors.total();
            eprintln!(
                "prefill {}: {} keys set in {:.2} s, {errors} errors",
                side.name,
                rec.set.requests,
                result.measured.as_secs_f64()
            );
            if errors > 0 || rec.connections_lost > 0 {
                for message in &rec.first_errors {
                    eprintln!("  error: {message}");
                }
                return Err(format!("prefill of {} failed", side.name));
            }
        }
    }

    for round in 1..=settings.rounds {
        // A, B in odd rounds and B, A in even ones (ABBA): drift of the machine during a round
        // pair, and any advantage of going first or second, falls on both sides alike.
        let order: Vec<usize> = if round % 2 == 1 {
            (0..sides.len()).collect()
        } else {
            (0..sides.len()).rev().collect()
        };
        for index in order {
            let side = &mut sides[index];
            let live = settings.load.progress.then(|| Arc::new(Live::default()));
            let printer = live.as_ref().map(|live| {
                let label = format!("[{} {} round {round}/{}]", side.label, side.name, settings.rounds);
                Printer::start(live.clone(), label, terminal)
            });
            let result = run_round(&side.target, &settings.workload, &side.load, live);
            if let Some(printer) = printer {
                printer.stop();
            }
            let result = result?;
            let total = result.recording.total();
            eprintln!(
                "round {round}/{} {} {} ({} loop): {} requests, {:.1} ops/s, p99 {:.1} µs, {} errors",
                settings.rounds,
                side.label,
                side.name,
                side.io_loop.name(),
                total.requests,
                total.requests as f64 / result.measured.as_secs_f64().max(1e-9),
                total.percentile_us(99.0),
                result.recording.errors.total()
            );
            side.recording.merge(&result.recording);
            side.measured += result.measured;
        }
    }

    let results: Vec<TargetResult> = sides
        .iter()
        .map(|s| {
            TargetResult::new(&s.name, &s.target, settings.rounds, &s.recording, s.measured).with_io_loop(s.io_loop)
        })
        .collect();
    let failed = results.iter().any(TargetResult::failed);
    let report = Report::new(settings, results);
    for result in &report.results {
        say(&format!("\n{}", format_result(result)));
    }
    if let (Some(comparison), [a, b]) = (&report.comparison, &report.results[..]) {
        say(&format!("\n{}", format_comparison(a, b, comparison)));
    }

    if let Some(path) = &settings.json {
        let json = serde_json::to_string_pretty(&report).expect("the report serializes");
        if path == "-" {
            println!("{json}");
        } else {
            std::fs::write(path, json + "\n").map_err(|e| format!("cannot write {path}: {e}"))?;
        }
    }
    if let Some(path) = &settings.plot {
        let totals: Vec<_> = sides.iter().map(|s| (s.name.as_str(), s.recording.total())).collect();
        let series: Vec<_> = totals.iter().map(|(name, stats)| (*name, stats)).collect();
        let title = format!("latency by percentile ({})", describe_short(settings));
        write_plot(path, &title, &series).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(if failed { EXIT_ERRORS } else { EXIT_OK })
}

/// The plot's subtitle.
fn describe_short(settings: &Settings) -> String {
    let l = &settings.load;
    let mode = match l.rate {
        Some(rate) => format!("open loop {rate} req/s"),
        None => "closed loop".to_string(),
    };
    format!(
        "{mode}, {} conn x pipeline {}, GET:SET {}:{}",
        l.connections, l.pipeline, settings.workload.ratio.read, settings.workload.ratio.write
    )
}
