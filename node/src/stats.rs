//! Per-command statistics (`INFO commandstats`), kept per shard and summed for INFO.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::commands::CommandSpec;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommandStat {
    pub calls: u64,
    pub usec: u64,
    pub rejected_calls: u64,
    pub failed_calls: u64,
}

/// Counters by command name. A BTreeMap keeps INFO's output sorted and stays small (one entry per
/// command actually used).
#[derive(Clone, Debug, Default)]
pub struct CommandStats {
    by_name: BTreeMap<&'static str, CommandStat>,
}

impl CommandStats {
    pub fn record(&mut self, spec: &'static CommandSpec, elapsed: Duration) {
        self.record_call(spec.name, elapsed);
    }

    /// A call by name: a RESP command's, or the RESP name of a native request (`native.rs`).
    pub fn record_call(&mut self, name: &'static str, elapsed: Duration) {
        let stat = self.by_name.entry(name).or_default();
        stat.calls += 1;
        stat.usec += elapsed.as_micros() as u64;
    }

    pub fn record_rejected(&mut self, name: &'static str) {
        self.by_name.entry(name).or_default().rejected_calls += 1;
    }

    pub fn total_calls(&self) -> u64 {
        self.by_name.values().map(|s| s.calls).sum()
    }

    pub fn merge(&mut self, other: &CommandStats) {
        for (name, stat) in &other.by_name {
            let mine = self.by_name.entry(name).or_default();
            mine.calls += stat.calls;
            mine.usec += stat.usec;
            mine.rejected_calls += stat.rejected_calls;
            mine.failed_calls += stat.failed_calls;
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &CommandStat)> {
        self.by_name.iter().map(|(name, stat)| (*name, stat))
    }
}
