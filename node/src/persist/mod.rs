//! Per-shard persistence: the log writer, snapshots (compaction), start-up recovery, and the data
//! directory's lock and layout.
//!
//! - [`lock`]: one node per data directory;
//! - [`layout`]: the directory layout (`LAYOUT`, `shard-NNN/`), the `none`-mode guard, and
//!   re-distribution of the keys when the shard count changed;
//! - [`recovery`]: each shard replays its own directory at start (in its own thread);
//! - [`files`] and [`writer`]: the log writer with group commit, over glommio DMA files;
//! - [`compaction`]: snapshots of a shard's live data that let old segments go.
//!
//! The on-disk format itself (segments, records, snapshots) is the engine's: `engine/FORMAT.md`.

pub mod compaction;
pub mod files;
pub mod layout;
pub mod lock;
pub mod recovery;
pub mod writer;

use std::cell::RefCell;
use std::path::PathBuf;

use files::DmaLogFiles;
use writer::LogWriter;

/// What recovery found at start-up, for INFO.
#[derive(Clone, Debug, Default)]
pub struct RecoverySummary {
    pub records: u64,
    pub bytes: u64,
    pub millis: u64,
    pub truncated_bytes: u64,
    pub snapshot_records: u64,
}

/// Compaction's state, for INFO and LASTSAVE.
#[derive(Clone, Debug, Default)]
pub struct CompactionState {
    pub in_progress: bool,
    pub runs: u64,
    pub last_ok: bool,
    pub last_error: String,
    /// Unix seconds of the last snapshot that completed.
    pub last_save_unix: Option<u64>,
    pub snapshot_bytes: u64,
    /// `stats.bytes_written` of the log when the last snapshot began: what was logged since
    /// decides when the next compaction is due.
    pub log_bytes_at_snapshot: u64,
    /// Log bytes on disk found at start-up (they count toward the next compaction).
    pub recovered_log_bytes: u64,
}

/// A shard's persistence, when durability is not `none`.
pub struct ShardPersistence {
    pub dir: PathBuf,
    pub log: LogWriter<DmaLogFiles>,
    pub compaction: RefCell<CompactionState>,
    pub recovery: RecoverySummary,
}

impl ShardPersistence {
    /// Log bytes written since the last snapshot began (plus what recovery found on disk).
    pub fn log_bytes_since_snapshot(&self) -> u64 {
        let c = self.compaction.borrow();
        let written = self.log.stats.borrow().bytes_written;
        c.recovered_log_bytes + written.saturating_sub(c.log_bytes_at_snapshot)
    }

    /// Whether automatic compaction should start now.
    pub fn compaction_due(&self, min_size: u64, percentage: u64) -> bool {
        if percentage == 0 || self.compaction.borrow().in_progress {
            return false;
        }
        let since = self.log_bytes_since_snapshot();
        let base = self.compaction.borrow().snapshot_bytes;
        since >= min_size && since.saturating_mul(100) >= base.saturating_mul(percentage)
    }
}
