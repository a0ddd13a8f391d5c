//! Start-up recovery of one shard: replay its directory into its keyspace, with progress logs.
//!
//! Each shard runs this in its own executor thread before it serves anything, so the shards of a
//! node recover in parallel. The reads are plain blocking file reads: nothing else runs on the
//! thread yet. Also here: the snapshot writing used when the shard count changed (see
//! [`super::layout`]), which runs before the executors start.

use std::path::Path;
use std::time::Instant;

use corekv_engine::log::dir_storage::{segment_file_name, DirStorage};
use corekv_engine::log::format::{SegmentHeader, SEGMENT_HEADER_LEN};
use corekv_engine::log::recovery::{
    recover_shard, KeyspaceReplay, Progress, RecoveryError, RecoveryOptions, ReplayOp, ShardRecoveryReport, TailAction,
};
use corekv_engine::log::snapshot::{SnapshotEncoder, SnapshotHeader};
use corekv_engine::log::storage::SegmentStorage;
use corekv_engine::Keyspace;

use super::files::align_up;
use super::RecoverySummary;

/// A recovery progress line at most this often.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// What the log writer needs to continue a recovered shard's log.
pub struct Recovered {
    pub summary: RecoverySummary,
    /// Segments kept on disk (number, first record sequence), oldest first.
    pub segments: Vec<(u64, u64)>,
    pub next_segment: u64,
    pub next_seq: u64,
    pub snapshot_bytes: u64,
    /// Bytes of log segments on disk, which count toward the next compaction.
    pub log_bytes: u64,
}

/// Names the file behind an engine recovery error, so an operator can find it.
pub fn describe(dir: &Path, error: &RecoveryError) -> String {
    match error {
        RecoveryError::Corrupt {
            segment,
            offset,
            reason,
        } => format!(
            "corrupt log {} at byte offset {offset}: {reason} (start with --repair to truncate the log there, \
             dropping everything after it in this shard)",
            dir.join(segment_file_name(*segment)).display()
        ),
        RecoveryError::Replay { segment, offset, .. } => format!(
            "{error} in {} at byte offset {offset}",
            dir.join(segment_file_name(*segment)).display()
        ),
        other => format!("{other} (in {})", dir.display()),
    }
}

/// Logs a progress line when a second has passed since the last one.
struct ProgressLog<'a> {
    label: &'a str,
    started: Instant,
    last: Instant,
}

impl ProgressLog<'_> {
    fn update(&mut self, p: &Progress) {
        if self.last.elapsed() < PROGRESS_EVERY {
            return;
        }
        self.last = Instant::now();
        let secs = self.started.elapsed().as_secs_f64().max(1e-6);
        tracing::info!(
            "{}: recovering: {:.0} of {:.0} MB read, {} records ({:.0} MB/s, {:.0} records/s)",
            self.label,
            p.bytes_scanned as f64 / 1e6,
            p.bytes_total as f64 / 1e6,
            p.records,
            p.bytes_scanned as f64 / 1e6 / secs,
            p.records as f64 / secs
        );
    }
}

/// Replays shard `shard_id`'s directory into `keyspace` and makes the directory ready for the log
/// writer (torn tail truncated, the newest segment trimmed of its unused pre-allocation).
pub fn recover_own_shard(
    dir: &Path,
    shard_id: u32,
    shard_count: u32,
    repair: bool,
    keyspace: &mut Keyspace,
) -> Result<Recovered, String> {
    let started = Instant::now();
    let label = format!("shard {shard_id}");
    let mut storage = DirStorage::open(dir).map_err(|e| format!("{label}: cannot open {}: {e}", dir.display()))?;
    let opts = RecoveryOptions {
        shard_id,
        shard_count,
        repair,
        read_only: false,
    };
    let mut log = ProgressLog {
        label: &label,
        started,
        last: started,
    };
    let mut replay = KeyspaceReplay::new(keyspace);
    let report = recover_shard(&mut storage, &opts, &mut |p| log.update(p), &mut |op| replay.apply(op))
        .map_err(|e| format!("{label}: {}", describe(dir, &e)))?;
    let expired = replay.finish(crate::shard::now_ms());
    report_outcome(&label, dir, &report, expired);

    // The newest segment keeps its records; its unused pre-allocated space is given back.
    if let Some((n, end)) = report.log.newest_segment {
        let keep = align_up(end.max(SEGMENT_HEADER_LEN as u64));
        if storage.len(n).map_err(|e| format!("{label}: {e}"))? > keep {
            storage
                .truncate(n, keep)
                .and_then(|()| storage.sync(n))
                .map_err(|e| format!("{label}: cannot trim segment {n}: {e}"))?;
        }
    }
    let mut segments = Vec::new();
    let mut log_bytes = 0;
    for n in storage.list().map_err(|e| format!("{label}: {e}"))? {
        let mut block = vec![0u8; SEGMENT_HEADER_LEN];
        storage
            .read_at(n, 0, &mut block)
            .map_err(|e| format!("{label}: cannot read segment {n}: {e}"))?;
        let header = SegmentHeader::decode(&block).map_err(|e| {
            format!(
                "{label}: segment {} has a bad header after recovery: {e}",
                dir.join(segment_file_name(n)).display()
            )
        })?;
        segments.push((n, header.first_record_seq));
        log_bytes += storage.len(n).map_err(|e| format!("{label}: {e}"))?;
    }
    let next_segment = segments.last().map_or(1, |s| s.0 + 1);
    let snapshot_bytes = report.snapshot.map_or(0, |s| s.bytes);
    let truncated_bytes = match &report.log.tail {
        TailAction::Clean => 0,
        TailAction::TruncatedTornTail { bytes, .. } | TailAction::RemovedTornSegment { bytes, .. } => *bytes,
        TailAction::Repaired { bytes, .. } => *bytes,
    };
    Ok(Recovered {
        summary: RecoverySummary {
            records: report.records_replayed(),
            bytes: report.bytes_read(),
            millis: started.elapsed().as_millis() as u64,
            truncated_bytes,
            snapshot_records: report.snapshot.map_or(0, |s| s.records),
        },
        segments,
        next_segment,
        next_seq: report.next_sequence(),
        snapshot_bytes,
        log_bytes,
    })
}

fn report_outcome(label: &str, dir: &Path, report: &ShardRecoveryReport, expired: u64) {
    match &report.log.tail {
        TailAction::Clean => {}
        TailAction::TruncatedTornTail { segment, offset, bytes } => tracing::warn!(
            "{label}: torn tail of {} truncated at byte offset {offset} ({bytes} bytes dropped: a write that was \
             never acknowledged as durable)",
            dir.join(segment_file_name(*segment)).display()
        ),
        TailAction::RemovedTornSegment { segment, bytes } => tracing::warn!(
            "{label}: segment {} was never completed ({bytes} bytes); removed",
            dir.join(segment_file_name(*segment)).display()
        ),
        TailAction::Repaired {
            segment,
            offset,
            bytes,
            reason,
            removed_segments,
        } => tracing::warn!(
            "{label}: --repair: log truncated at {} byte offset {offset} ({reason}); {bytes} bytes and {} later \
             segments dropped",
            dir.join(segment_file_name(*segment)).display(),
            removed_segments.len()
        ),
    }
    if report.removed_incomplete_snapshot {
        tracing::info!("{label}: removed an unfinished snapshot");
    }
    if report.bytes_read() > 0 {
        tracing::info!(
            "{label}: recovered {} records from {:.1} MB ({} expired keys dropped)",
            report.records_replayed(),
            report.bytes_read() as f64 / 1e6,
            expired
        );
    }
}

/// Replays the keys that shard `new_shard` of `new_count` owns out of every old shard directory
/// (read-only, so several new shards can read them at once).
pub fn gather_for_new_shard(
    old_dirs: &[std::path::PathBuf],
    new_shard: u32,
    new_count: u32,
    repair: bool,
    keyspace: &mut Keyspace,
) -> Result<(), String> {
    let mut replay = KeyspaceReplay::new(keyspace);
    for (old, dir) in old_dirs.iter().enumerate() {
        let mut storage = DirStorage::open_read_only(dir).map_err(|e| format!("cannot open {}: {e}", dir.display()))?;
        let opts = RecoveryOptions {
            shard_id: old as u32,
            shard_count: old_dirs.len() as u32,
            repair,
            read_only: true,
        };
        let owned = |key: &[u8]| corekv_net::routing::key_shard(key, new_count) == new_shard;
        recover_shard(&mut storage, &opts, &mut |_| {}, &mut |op| {
            let mine = match op {
                ReplayOp::Set { key, .. }
                | ReplayOp::Delete { key, .. }
                | ReplayOp::Expire { key, .. }
                | ReplayOp::Persist { key, .. } => owned(key),
                ReplayOp::FlushDb { .. } | ReplayOp::FlushAll | ReplayOp::SwapDb { .. } => true,
            };
            if mine {
                replay.apply(op)
            } else {
                Ok(())
            }
        })
        .map_err(|e| describe(dir, &e))?;
    }
    replay.finish(crate::shard::now_ms());
    Ok(())
}

/// Keys per scan step while encoding a snapshot.
pub const SNAPSHOT_SCAN_STEP: usize = 256;

/// Encodes one scan step of database `db` into `out`; returns the next cursor (0: done).
pub fn encode_scan_step(
    keyspace: &mut Keyspace,
    encoder: &mut SnapshotEncoder,
    out: &mut Vec<u8>,
    db: usize,
    cursor: u64,
    now_ms: u64,
) -> Result<u64, String> {
    let mut failure = None;
    let next = keyspace.scan_entries(db, cursor, SNAPSHOT_SCAN_STEP, now_ms, &mut |key, value, expire| {
        if failure.is_none() {
            if let Err(e) = encoder.add(out, db as u16, key, value, expire) {
                failure = Some(e.to_string());
            }
        }
    });
    match failure {
        Some(e) => Err(format!("cannot encode a snapshot record: {e}")),
        None => Ok(next),
    }
}

/// Writes the whole of `keyspace` as a snapshot through sequence 0 into `dir` (created), synced.
/// Used for a new shard when the shard count changed; its log then starts at sequence 1.
pub fn write_initial_snapshot(
    dir: &Path,
    shard_id: u32,
    shard_count: u32,
    keyspace: &mut Keyspace,
) -> Result<(), String> {
    use std::io::Write;
    let storage = DirStorage::create_dir(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let path = storage.snapshot_path(0);
    let io = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    let mut file = std::fs::File::create(&path).map_err(io)?;
    let mut out = Vec::with_capacity(1 << 20);
    let mut encoder = SnapshotEncoder::new(
        &SnapshotHeader {
            shard_id,
            shard_count,
            through_seq: 0,
        },
        &mut out,
    );
    let now = crate::shard::now_ms();
    for db in 0..keyspace.databases() {
        let mut cursor = 0;
        loop {
            cursor = encode_scan_step(keyspace, &mut encoder, &mut out, db, cursor, now)?;
            if out.len() >= 8 << 20 {
                file.write_all(&out).map_err(io)?;
                out.clear();
            }
            if cursor == 0 {
                break;
            }
        }
    }
    encoder.finish(&mut out);
    file.write_all(&out).map_err(io)?;
    file.sync_all().map_err(io)?;
    storage
        .sync_dir()
        .map_err(|e| format!("cannot sync {}: {e}", dir.display()))
}
