//! Latency recording: per-operation [`OpStats`] (an `histogram` crate histogram plus exact count,
//! sum, min and max) and the per-thread [`Recording`] of a round, merged at the end.
//!
//! Latencies are recorded in nanoseconds in a histogram of grouping power 7 (relative error below
//! 2^-7 = 0.78%) up to 2^40 ns (about 18 minutes; longer latencies are clamped). A percentile is
//! reported as the upper end of its bucket, clamped to the exact minimum and maximum, so it is
//! never below the true value and at most 0.78% above it.

use std::time::Instant;

use histogram::Histogram;

use crate::target::Op;

/// Buckets per power of two = 2^7: relative error below 0.78%.
pub const GROUPING_POWER: u8 = 7;
/// Largest recordable latency: 2^40 - 1 ns.
pub const MAX_VALUE_POWER: u8 = 40;
/// Error messages kept for the report (the first ones seen).
pub const FIRST_ERRORS: usize = 5;

pub fn new_histogram() -> Histogram {
    Histogram::new(GROUPING_POWER, MAX_VALUE_POWER).expect("valid histogram parameters")
}

/// Largest value the histogram holds.
const MAX_NS: u64 = (1 << MAX_VALUE_POWER) - 1;

/// Latencies and counts of one operation (or of all).
#[derive(Clone, Debug)]
pub struct OpStats {
    pub histogram: Histogram,
    /// Answered requests (hits, misses, stores and error replies).
    pub requests: u64,
    /// Error replies among them.
    pub errors: u64,
    /// GETs answered "not found".
    pub misses: u64,
    pub sum_ns: u64,
    pub min_ns: u64,
    pub max_ns: u64,
}

impl Default for OpStats {
    fn default() -> Self {
        OpStats {
            histogram: new_histogram(),
            requests: 0,
            errors: 0,
            misses: 0,
            sum_ns: 0,
            min_ns: u64::MAX,
            max_ns: 0,
        }
    }
}

impl OpStats {
    pub fn record(&mut self, latency_ns: u64) {
        let ns = latency_ns.min(MAX_NS);
        self.histogram
            .increment(ns)
            .expect("value within the histogram's range");
        self.requests += 1;
        self.sum_ns = self.sum_ns.saturating_add(ns);
        self.min_ns = self.min_ns.min(ns);
        self.max_ns = self.max_ns.max(ns);
    }

    pub fn merge(&mut self, other: &OpStats) {
        self.histogram = self
            .histogram
            .wrapping_add(&other.histogram)
            .expect("histograms of one configuration");
        self.requests += other.requests;
        self.errors += other.errors;
        self.misses += other.misses;
        self.sum_ns = self.sum_ns.saturating_add(other.sum_ns);
        self.min_ns = self.min_ns.min(other.min_ns);
        self.max_ns = self.max_ns.max(other.max_ns);
    }

    /// The latencies at `percentiles` (0..=100), in microseconds; zeros when nothing was recorded.
    pub fn percentiles_us(&self, percentiles: &[f64]) -> Vec<f64> {
        let Ok(Some(found)) = self.histogram.percentiles(percentiles) else {
            return vec![0.0; percentiles.len()];
        };
        // `percentiles` returns its results sorted by percentile; give them back in call order.
        percentiles
            .iter()
            .map(|p| {
                // The exact extremes rather than their buckets' bounds.
                if *p <= 0.0 {
                    return self.min_ns as f64 / 1e3;
                }
                if *p >= 100.0 {
                    return self.max_ns as f64 / 1e3;
                }
                let bucket = &found
                    .iter()
                    .find(|(q, _)| q == p)
                    .expect("every requested percentile is found in a non-empty histogram")
                    .1;
                bucket.end().clamp(self.min_ns, self.max_ns) as f64 / 1e3
            })
            .collect()
    }

    pub fn percentile_us(&self, percentile: f64) -> f64 {
        self.percentiles_us(&[percentile])[0]
    }

    pub fn mean_us(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.sum_ns as f64 / self.requests as f64 / 1e3
        }
    }

    pub fn min_us(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.min_ns as f64 / 1e3
        }
    }

    pub fn max_us(&self) -> f64 {
        self.max_ns as f64 / 1e3
    }

    /// How many recorded latencies are at least `threshold_ns` (to the histogram's precision:
    /// whole buckets whose start is at or above the threshold).
    pub fn count_at_least(&self, threshold_ns: u64) -> u64 {
        self.histogram
            .iter()
            .filter(|bucket| bucket.start() >= threshold_ns)
            .map(|bucket| bucket.count())
            .sum()
    }
}

/// Failed requests, by kind. The kinds are fixed (they are JSON keys).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ErrorCounts {
    /// Error replies (RESP `-ERR ...`, native ERROR frames).
    pub server: u64,
    /// Replies that could not be decoded or cannot answer their request; the connection closed.
    pub protocol: u64,
    /// Requests lost because their connection closed or failed before the reply.
    pub connection: u64,
    /// Requests still unanswered when the drain timeout after the round ran out.
    pub timeout: u64,
}

impl ErrorCounts {
    pub fn total(&self) -> u64 {
        self.server + self.protocol + self.connection + self.timeout
    }

    pub fn merge(&mut self, other: &ErrorCounts) {
        self.server += other.server;
        self.protocol += other.protocol;
        self.connection += other.connection;
        self.timeout += other.timeout;
    }
}

/// Everything recorded during a round's measured period, by one thread or merged.
#[derive(Clone, Debug, Default)]
pub struct Recording {
    pub get: OpStats,
    pub set: OpStats,
    pub errors: ErrorCounts,
    /// Open loop: requests sent at least [`crate::load::LATE_THRESHOLD`] after their scheduled
    /// time (the pipeline window was full or the sender fell behind).
    pub late: u64,
    /// Connections that closed or failed during the round.
    pub connections_lost: u64,
    /// The first error messages seen (at most [`FIRST_ERRORS`]).
    pub first_errors: Vec<String>,
    /// When the last recorded reply arrived.
    pub last_reply: Option<Instant>,
}

impl Recording {
    pub fn op_mut(&mut self, op: Op) -> &mut OpStats {
        match op {
            Op::Get => &mut self.get,
            Op::Set => &mut self.set,
        }
    }

    /// GET and SET together.
    pub fn total(&self) -> OpStats {
        let mut total = self.get.clone();
        total.merge(&self.set);
        total
    }

    /// Keeps `message` if fewer than [`FIRST_ERRORS`] were kept.
    pub fn note_error(&mut self, message: String) {
        if self.first_errors.len() < FIRST_ERRORS {
            self.first_errors.push(message);
        }
    }

    pub fn merge(&mut self, other: &Recording) {
        self.get.merge(&other.get);
        self.set.merge(&other.set);
        self.errors.merge(&other.errors);
        self.late += other.late;
        self.connections_lost += other.connections_lost;
        for message in &other.first_errors {
            self.note_error(message.clone());
        }
        self.last_reply = match (self.last_reply, other.last_reply) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 1..=10000 µs, once each: the percentiles are known exactly, and the reported ones are at
    /// most the histogram's relative error above them (never below).
    #[test]
    fn percentiles_of_a_known_input() {
        let mut stats = OpStats::default();
        for us in 1..=10_000u64 {
            stats.record(us * 1000);
        }
        let error = 1.0 / f64::from(1u32 << GROUPING_POWER);
        let cases = [
            (50.0, 5000.0),
            (90.0, 9000.0),
            (99.0, 9900.0),
            (99.9, 9990.0),
            (99.99, 9999.0),
        ];
        let got = stats.percentiles_us(&cases.map(|(p, _)| p));
        for ((p, want), got) in cases.iter().zip(got) {
            assert!(
                got >= *want && got <= want * (1.0 + error),
                "p{p}: {got} µs, want {want}"
            );
        }
        assert_eq!(stats.percentile_us(100.0), 10_000.0);
        assert_eq!(stats.percentile_us(0.0), 1.0);
        assert_eq!(stats.max_us(), 10_000.0);
        assert_eq!(stats.min_us(), 1.0);
        assert!((stats.mean_us() - 5000.5).abs() < 1e-9);
        assert_eq!(stats.requests, 10_000);
        // Values of 9 ms and above: 1001 (9000..=10000), give or take one bucket's width.
        let slow = stats.count_at_least(9_000_000);
        assert!((1001 - 80..=1001).contains(&slow), "{slow}");
    }

    #[test]
    fn merging_adds_up() {
        let mut a = Recording::default();
        let mut b = Recording::default();
        a.op_mut(Op::Get).record(1_000);
        b.op_mut(Op::Get).record(3_000);
        b.op_mut(Op::Set).record(2_000_000);
        b.errors.server = 2;
        for i in 0..4 {
            a.note_error(format!("a{i}"));
            b.note_error(format!("b{i}"));
        }
        a.merge(&b);
        assert_eq!(a.get.requests, 2);
        assert_eq!(a.total().requests, 3);
        assert_eq!(a.total().max_us(), 2000.0);
        assert_eq!(a.total().min_us(), 1.0);
        assert_eq!(a.errors.total(), 2);
        assert_eq!(a.first_errors, ["a0", "a1", "a2", "a3", "b0"]);
    }

    #[test]
    fn empty_stats_report_zeros() {
        let stats = OpStats::default();
        assert_eq!(stats.percentiles_us(&[50.0, 99.0]), [0.0, 0.0]);
        assert_eq!((stats.mean_us(), stats.min_us(), stats.max_us()), (0.0, 0.0, 0.0));
    }
}
