//! The live progress line: counters the load loop publishes while a round runs ([`Live`]) and a
//! thread that prints them on stderr once a second ([`Printer`]): elapsed time, throughput over
//! the last second, p99 so far and errors. On a terminal the line is rewritten in place;
//! otherwise (with `--progress`) one line per second is appended.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use histogram::AtomicHistogram;

use crate::latency::{GROUPING_POWER, MAX_VALUE_POWER};

/// Counters shared by every load thread of one round (recorded requests only).
pub struct Live {
    pub completed: AtomicU64,
    pub errors: AtomicU64,
    pub histogram: AtomicHistogram,
    /// Set by the round when its schedule is fixed.
    pub measure_start: OnceLock<Instant>,
}

impl Default for Live {
    fn default() -> Self {
        Live {
            completed: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            histogram: AtomicHistogram::new(GROUPING_POWER, MAX_VALUE_POWER).expect("valid histogram parameters"),
            measure_start: OnceLock::new(),
        }
    }
}

impl Live {
    pub fn record(&self, latency_ns: u64, error: bool) {
        self.completed.fetch_add(1, Ordering::Relaxed);
        if error {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let _ = self.histogram.increment(latency_ns.min((1 << MAX_VALUE_POWER) - 1));
    }
}

/// Prints the progress line until stopped.
pub struct Printer {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    terminal: bool,
}

impl Printer {
    pub fn start(live: Arc<Live>, label: String, terminal: bool) -> Printer {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let started = Instant::now();
            let mut last = (Instant::now(), 0u64);
            while !flag.load(Ordering::Relaxed) {
                // Wake often enough to stop promptly, print once a second.
                std::thread::sleep(Duration::from_millis(100));
                if last.0.elapsed() < Duration::from_secs(1) {
                    continue;
                }
                let now = Instant::now();
                let completed = live.completed.load(Ordering::Relaxed);
                // Only recorded requests are counted: measure the rate from the warm-up's end.
                let since = live.measure_start.get().map_or(last.0, |&start| last.0.max(start));
                let rate = (completed - last.1) as f64 / now.saturating_duration_since(since).as_secs_f64().max(1e-3);
                last = (now, completed);
                let line = match live.measure_start.get() {
                    Some(&start) if now >= start => {
                        let p99 = live
                            .histogram
                            .load()
                            .percentile(99.0)
                            .ok()
                            .flatten()
                            .map_or(0.0, |b| b.end() as f64 / 1e3);
                        format!(
                            "{label} {:>6.1}s {:>11.0} ops/s  p99 {:>9.1} us  errors {}",
                            now.duration_since(start).as_secs_f64(),
                            rate,
                            p99,
                            live.errors.load(Ordering::Relaxed)
                        )
                    }
                    _ => format!("{label} warm-up {:>4.1}s", started.elapsed().as_secs_f64()),
                };
                let mut err = std::io::stderr().lock();
                let _ = if terminal {
                    write!(err, "\r\x1b[2K{line}")
                } else {
                    writeln!(err, "{line}")
                };
                let _ = err.flush();
            }
        });
        Printer {
            stop,
            handle: Some(handle),
            terminal,
        }
    }

    /// Stops the thread and clears the line (on a terminal).
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
        if self.terminal {
            eprint!("\r\x1b[2K");
        }
    }
}
