//! Restart: scan a shard's segments in order, verify them, and replay their records.
//!
//! [`recover_shard`] recovers a whole shard directory: the newest snapshot, then the segments it
//! does not cover (rules in `engine/FORMAT.md`, "Recovery with a snapshot"); [`recover`] scans a
//! log without snapshots.
//!
//! [`recover`] reads the segments oldest first, checks each header (magic, version, CRC, shard,
//! segment number, continuity of record sequences with the previous segment) and every record
//! (length, type, CRC, sequence), and hands each record to a callback as a [`ReplayOp`].
//! [`KeyspaceReplay`] applies them to a [`Keyspace`] and then deletes every key whose expiry is
//! ≤ now, so no expired key is served as live.
//!
//! Where the valid data of a segment stops (a zero length field, a record that does not decode, or
//! the end of the file) the rest of the segment decides what happened:
//! - only zeros: a clean end;
//! - in the newest segment, bytes that hold no valid record: a torn tail, left by a write that
//!   never completed its sync. It is truncated (and the truncation synced) and reported;
//! - the newest segment's header itself torn, with no valid record after it: a segment whose
//!   creation never completed; it is removed and reported;
//! - anything else (a valid record after the damage, damage in an older segment, a missing
//!   segment, a foreign header): corruption. Recovery refuses with the segment and offset, unless
//!   `repair` is set, in which case it truncates the log there (removing every later segment).
//!
//! Records are replayed as they are read, before later segments are checked: when `recover`
//! returns an error, whatever the callback built must be thrown away.
//!
//! Known limit: a torn write whose later sectors reached the disk while an earlier one did not can
//! leave a complete record after the tear; it is reported as corruption (use `repair`).

use super::format::{
    decode_record, peek_record_len, DecodeError, HeaderError, Record, RecordType, SegmentHeader, RECORD_OVERHEAD,
    SEGMENT_HEADER_LEN,
};
use super::snapshot::{load_snapshot_with_progress, SnapshotReport};
use super::storage::{SegmentStorage, SnapshotStore, StorageError};
use crate::{EngineError, Expiry, Keyspace};

/// What [`recover`] needs to know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecoveryOptions {
    /// The shard whose log this is; every segment header must name it.
    pub shard_id: u32,
    pub shard_count: u32,
    /// Truncate at corruption instead of refusing (drops everything after it).
    pub repair: bool,
    /// Never modify storage: no truncation, no removal. A torn tail (or, with `repair`, a
    /// corruption) is reported and the data after it ignored, as if it had been cut. Used when a
    /// node restarted with another shard count reads old shards' directories concurrently.
    pub read_only: bool,
}

/// One record's effect, as replay applies it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplayOp<'a> {
    Set {
        db: u16,
        key: &'a [u8],
        value: &'a [u8],
        expire_at_ms: Option<u64>,
    },
    Delete {
        db: u16,
        key: &'a [u8],
    },
    Expire {
        db: u16,
        key: &'a [u8],
        at_ms: u64,
    },
    Persist {
        db: u16,
        key: &'a [u8],
    },
    FlushDb {
        db: u16,
    },
    FlushAll,
    SwapDb {
        a: u16,
        b: u16,
    },
}

impl<'a> ReplayOp<'a> {
    /// The record's effect, as written (expiry times are absolute and left to the applier).
    /// `None` for a record that has no effect on a keyspace (End) or a malformed one.
    pub fn from_record(rec: &Record<'a>) -> Option<ReplayOp<'a>> {
        let (db, key) = (rec.db, rec.key);
        Some(match rec.kind {
            RecordType::Set => ReplayOp::Set {
                db,
                key,
                value: rec.value,
                expire_at_ms: (rec.expiry_ms != 0).then_some(rec.expiry_ms),
            },
            RecordType::Expire => ReplayOp::Expire {
                db,
                key,
                at_ms: rec.expiry_ms,
            },
            RecordType::Delete => ReplayOp::Delete { db, key },
            RecordType::Persist => ReplayOp::Persist { db, key },
            RecordType::FlushDb => ReplayOp::FlushDb { db },
            RecordType::FlushAll => ReplayOp::FlushAll,
            RecordType::SwapDb => match *key {
                [lo, hi] => ReplayOp::SwapDb {
                    a: db,
                    b: u16::from_le_bytes([lo, hi]),
                },
                _ => return None,
            },
            RecordType::End => return None,
        })
    }
}

/// Replays operations into a shard's [`Keyspace`].
///
/// Expiry is decided per key, not per record: a SET whose expiry has passed may have been given a
/// later expiry (or none) by a following EXPIRE or PERSIST record. So records are applied with
/// the engine's clock at 0 (nothing expires during replay, as when Redis loads an AOF), and
/// [`finish`](Self::finish) then deletes every key whose final expiry is ≤ `now_ms`: no expired
/// key is ever live after recovery. Keys replayed this way have an LRU access time of 0.
///
/// This relies on the writer logging only operations that took effect: an EXPIRE to a time at or
/// before the moment it ran is logged as a DELETE, and nothing is logged for a key that did not
/// exist (see `engine/FORMAT.md`).
pub struct KeyspaceReplay<'k> {
    ks: &'k mut Keyspace,
}

/// The engine clock used while replaying.
const REPLAY_CLOCK_MS: u64 = 0;

impl<'k> KeyspaceReplay<'k> {
    pub fn new(ks: &'k mut Keyspace) -> Self {
        KeyspaceReplay { ks }
    }

    /// Applies one operation.
    pub fn apply(&mut self, op: &ReplayOp<'_>) -> Result<(), EngineError> {
        let ks = &mut *self.ks;
        let now = REPLAY_CLOCK_MS;
        let db = match *op {
            ReplayOp::Set { db, .. }
            | ReplayOp::Delete { db, .. }
            | ReplayOp::Expire { db, .. }
            | ReplayOp::Persist { db, .. }
            | ReplayOp::FlushDb { db } => db as usize,
            ReplayOp::SwapDb { a, b } => a.max(b) as usize,
            ReplayOp::FlushAll => 0,
        };
        if db >= ks.databases() {
            return Err(EngineError::InvalidDb);
        }
        match *op {
            ReplayOp::Set {
                key,
                value,
                expire_at_ms,
                ..
            } => {
                ks.set(db, key, value, expire_at_ms.map_or(Expiry::Persist, Expiry::At), now)?;
            }
            ReplayOp::Delete { key, .. } => {
                ks.remove(db, key, now);
            }
            ReplayOp::Expire { key, at_ms, .. } => {
                ks.set_expiry(db, key, Some(at_ms), now);
            }
            ReplayOp::Persist { key, .. } => {
                ks.set_expiry(db, key, None, now);
            }
            ReplayOp::FlushDb { .. } => ks.flush_db(db),
            ReplayOp::FlushAll => ks.flush_all(),
            ReplayOp::SwapDb { a, b } => ks.swap_db(a as usize, b as usize),
        }
        Ok(())
    }

    /// Deletes every key whose expiry is ≤ `now_ms`; returns how many were deleted.
    pub fn finish(self, now_ms: u64) -> u64 {
        let mut removed = 0;
        for db in 0..self.ks.databases() {
            let before = self.ks.len(db);
            self.ks.for_each_key(db, now_ms, &mut |_| {});
            removed += (before - self.ks.len(db)) as u64;
        }
        removed
    }
}

/// What is wrong at a corrupt position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Corruption {
    #[error("{0}")]
    Header(HeaderError),
    #[error("{0}")]
    Record(DecodeError),
    #[error("end-of-data marker followed by a valid record")]
    RecordAfterEnd,
    #[error("non-zero bytes after the end of an older segment")]
    TrailingBytes,
    #[error("segment belongs to shard {shard_id} of {shard_count}")]
    WrongShard { shard_id: u32, shard_count: u32 },
    #[error("segment file {named} holds segment number {in_header}")]
    Misnamed { named: u64, in_header: u64 },
    #[error("missing segment: expected {expected}, found {found}")]
    MissingSegment { expected: u64, found: u64 },
    #[error("segment starts at record {found}, expected {expected}")]
    SequenceGap { expected: u64, found: u64 },
    /// The oldest kept segment starts after the record that follows the snapshot (or, without
    /// a snapshot, after record 1).
    #[error("log does not continue the snapshot: snapshot through {through}, log starts at {first}")]
    LogGap { through: u64, first: u64 },
    #[error("record type {0} is not allowed in a snapshot")]
    UnexpectedRecord(u8),
    #[error("snapshot has no end record")]
    MissingEnd,
    #[error("snapshot end record counts {found} records, {expected} were read")]
    BadEndCount { expected: u64, found: u64 },
}

/// Why recovery stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecoveryError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Refusal: the log is damaged before its end. Nothing was changed on storage.
    #[error("corrupt log: segment {segment} at offset {offset}: {reason}")]
    Corrupt {
        segment: u64,
        offset: u64,
        reason: Corruption,
    },
    /// Refusal: a snapshot file is damaged (a snapshot is only installed once complete and
    /// synced, so any damage is corruption).
    #[error("corrupt snapshot at offset {offset}: {reason}")]
    SnapshotCorrupt { offset: u64, reason: Corruption },
    /// The replay callback failed on a snapshot record.
    #[error("replaying snapshot record {sequence} (offset {offset}): {source}")]
    SnapshotReplay {
        offset: u64,
        sequence: u64,
        source: EngineError,
    },
    /// The replay callback failed on the record at this position.
    #[error("replaying record {sequence} (segment {segment}, offset {offset}): {source}")]
    Replay {
        segment: u64,
        offset: u64,
        sequence: u64,
        source: EngineError,
    },
}

/// What recovery did at the end of the log. With [`RecoveryOptions::read_only`] it is what
/// recovery would have done: nothing was changed on storage, and the data past the point was
/// ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TailAction {
    /// Nothing to do.
    Clean,
    /// The newest segment had a torn tail: it was truncated to `offset`, dropping `bytes`.
    TruncatedTornTail { segment: u64, offset: u64, bytes: u64 },
    /// The newest segment's header was torn and it held no valid record: it was removed.
    RemovedTornSegment { segment: u64, bytes: u64 },
    /// `repair`: the log was truncated at a corruption (segment, offset), dropping `bytes` of
    /// that segment and every later segment in `removed_segments`.
    Repaired {
        segment: u64,
        offset: u64,
        bytes: u64,
        reason: Corruption,
        removed_segments: Vec<u64>,
    },
}

/// Progress counters, reported after each segment (and about every 64 MiB of a snapshot).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub segments_done: usize,
    pub segments_total: usize,
    /// Bytes read so far (snapshot and segments).
    pub bytes_scanned: u64,
    pub bytes_total: u64,
    /// Records verified (snapshot records and log records).
    pub records: u64,
    /// Records handed to the replay callback (log records covered by the snapshot are verified
    /// but not replayed).
    pub replayed: u64,
}

/// The outcome of a successful recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    pub progress: Progress,
    /// The last replayed sequence, if any record was replayed.
    pub last_sequence: Option<u64>,
    /// The sequence the next record must carry (1 for an empty log).
    pub next_sequence: u64,
    /// The newest remaining segment and the offset at which its valid data ends.
    pub newest_segment: Option<(u64, u64)>,
    /// Where the writer appends `next_sequence`: the newest segment and its end, when its last
    /// record is `next_sequence - 1`. `None`: start a new segment (newest + 1, or 1 when there is
    /// none) whose first record sequence is `next_sequence` (an empty log, or a log that ends
    /// before its snapshot).
    pub append_at: Option<(u64, u64)>,
    pub tail: TailAction,
}

/// Where the valid data of a segment stopped.
enum Stop {
    /// The whole segment was valid records up to its end, or a zero length field.
    End(u64),
    /// A record failed to decode at this offset.
    Bad(u64, DecodeError),
}

/// Is there a record that decodes, with sequence ≥ `min_seq`, anywhere in `data[from..]`?
/// Whether `bytes` are all zero. Pre-allocated segments end in megabytes of zeros, so this
/// compares whole blocks (memcmp) rather than byte by byte.
fn is_all_zeros(bytes: &[u8]) -> bool {
    const ZEROS: [u8; 4096] = [0; 4096];
    bytes.chunks(ZEROS.len()).all(|chunk| chunk == &ZEROS[..chunk.len()])
}

fn valid_record_after(data: &[u8], from: usize, min_seq: u64) -> bool {
    const BLOCK: usize = 4096;
    let end = data.len().saturating_sub(RECORD_OVERHEAD - 1);
    let mut p = from;
    while p < end {
        // No record starts where its length field is zero: skip runs of zero blocks (the
        // pre-allocated rest of a segment) a block at a time. A record may still start in the
        // last 3 bytes of a zero block, its length's high bytes being in the next block.
        let block_end = (p / BLOCK + 1) * BLOCK;
        if data[p] == 0 && block_end <= data.len() && is_all_zeros(&data[p..block_end]) {
            p = (block_end - 3).max(p + 1);
            continue;
        }
        let rest = &data[p..];
        if let Some(len) = peek_record_len(rest) {
            if len as usize >= RECORD_OVERHEAD && len as usize <= rest.len() {
                let seq = u64::from_le_bytes(rest[8..16].try_into().expect("8 bytes"));
                if seq >= min_seq && decode_record(rest, seq).is_ok() {
                    return true;
                }
            }
        }
        p += 1;
    }
    false
}

/// Scans and replays a shard's log (segments only, no snapshot); see the module doc.
///
/// `replay` receives every record in order; `progress` is called after each segment. The first
/// segment must start at record 1.
pub fn recover<S: SegmentStorage>(
    storage: &mut S,
    opts: &RecoveryOptions,
    progress: &mut dyn FnMut(&Progress),
    replay: &mut dyn FnMut(&ReplayOp<'_>) -> Result<(), EngineError>,
) -> Result<RecoveryReport, RecoveryError> {
    let segments = storage.list()?;
    let mut prog = Progress {
        segments_total: segments.len(),
        ..Progress::default()
    };
    for &s in &segments {
        prog.bytes_total += storage.len(s)?;
    }
    scan_log(storage, &segments, opts, 0, prog, progress, replay)
}

/// Verifies `segments` (the kept part of the log, oldest first) and replays their records with a
/// sequence above `through` (the snapshot's; 0 without one). The oldest segment must start at a
/// record ≤ `through + 1`. See the module doc for the handling of the end of the log.
pub(crate) fn scan_log<S: SegmentStorage>(
    storage: &mut S,
    segments: &[u64],
    opts: &RecoveryOptions,
    through: u64,
    mut prog: Progress,
    progress: &mut dyn FnMut(&Progress),
    replay: &mut dyn FnMut(&ReplayOp<'_>) -> Result<(), EngineError>,
) -> Result<RecoveryReport, RecoveryError> {
    let mut report = RecoveryReport {
        progress: prog,
        last_sequence: None,
        next_sequence: through + 1,
        newest_segment: None,
        append_at: None,
        tail: TailAction::Clean,
    };
    // (segment number, next expected record sequence) of the previous segment.
    let mut prev: Option<(u64, u64)> = None;
    let modify = !opts.read_only;

    for (i, &seg) in segments.iter().enumerate() {
        let newest = i + 1 == segments.len();
        let data = storage.read_all(seg)?;
        let file_len = data.len() as u64;
        let min_seq = prev.map_or(0, |p| p.1);

        // Whatever we find wrong is either a refusal or, with `repair`, a truncation here.
        let corrupt = |storage: &mut S, offset: u64, reason: Corruption| -> Result<TailAction, RecoveryError> {
            if !opts.repair {
                return Err(RecoveryError::Corrupt {
                    segment: seg,
                    offset,
                    reason,
                });
            }
            let later = segments[i + 1..].to_vec();
            if modify {
                for &l in later.iter().rev() {
                    storage.remove(l)?;
                }
                if offset == 0 {
                    storage.remove(seg)?;
                } else {
                    storage.truncate(seg, offset)?;
                    storage.sync(seg)?;
                }
            }
            Ok(TailAction::Repaired {
                segment: seg,
                offset,
                bytes: file_len - offset,
                reason,
                removed_segments: later,
            })
        };

        let header = match SegmentHeader::decode(&data) {
            Ok(h) => h,
            Err(e) => {
                if newest && !valid_record_after(&data, SEGMENT_HEADER_LEN.min(data.len()), min_seq) {
                    if modify {
                        storage.remove(seg)?;
                    }
                    report.tail = TailAction::RemovedTornSegment {
                        segment: seg,
                        bytes: file_len,
                    };
                } else {
                    report.tail = corrupt(storage, 0, Corruption::Header(e))?;
                }
                prog.bytes_scanned += file_len;
                prog.segments_done += 1;
                progress(&prog);
                break;
            }
        };
        let mismatch = if header.shard_id != opts.shard_id || header.shard_count != opts.shard_count {
            Some(Corruption::WrongShard {
                shard_id: header.shard_id,
                shard_count: header.shard_count,
            })
        } else if header.segment_seq != seg {
            Some(Corruption::Misnamed {
                named: seg,
                in_header: header.segment_seq,
            })
        } else if let Some((p, next)) = prev {
            if seg != p + 1 {
                Some(Corruption::MissingSegment {
                    expected: p + 1,
                    found: seg,
                })
            } else if header.first_record_seq != next {
                Some(Corruption::SequenceGap {
                    expected: next,
                    found: header.first_record_seq,
                })
            } else {
                None
            }
        } else if header.first_record_seq == 0 || header.first_record_seq > through + 1 {
            Some(Corruption::LogGap {
                through,
                first: header.first_record_seq,
            })
        } else {
            None
        };
        if let Some(reason) = mismatch {
            report.tail = corrupt(storage, 0, reason)?;
            break;
        }

        // Records.
        let mut next_seq = header.first_record_seq;
        let mut off = SEGMENT_HEADER_LEN;
        let stop = loop {
            let rest = &data[off..];
            if rest.is_empty() || peek_record_len(rest) == Some(0) {
                break Stop::End(off as u64);
            }
            match decode_record(rest, next_seq) {
                Ok(rec) => {
                    let Some(op) = ReplayOp::from_record(&rec) else {
                        break Stop::Bad(off as u64, DecodeError::Malformed("end record in a segment"));
                    };
                    // Records the snapshot covers are verified, not replayed.
                    if rec.sequence > through {
                        replay(&op).map_err(|source| RecoveryError::Replay {
                            segment: seg,
                            offset: off as u64,
                            sequence: rec.sequence,
                            source,
                        })?;
                        report.last_sequence = Some(rec.sequence);
                        prog.replayed += 1;
                    }
                    prog.records += 1;
                    off += rec.encoded_len();
                    next_seq += 1;
                }
                Err(e) => break Stop::Bad(off as u64, e),
            }
        };
        prog.bytes_scanned += file_len;
        prog.segments_done += 1;
        // The snapshot may reach past the end of the log (a log that lost nothing the snapshot
        // lacks); numbering then continues after the snapshot.
        report.next_sequence = next_seq.max(through + 1);

        let (at, err) = match stop {
            Stop::End(at) => (at, None),
            Stop::Bad(at, e) => (at, Some(e)),
        };
        let tail = &data[at as usize..];
        let all_zero = is_all_zeros(tail);
        if newest {
            if valid_record_after(&data, at as usize + usize::from(err.is_none()), next_seq) {
                let reason = err.map_or(Corruption::RecordAfterEnd, Corruption::Record);
                report.tail = corrupt(storage, at, reason)?;
            } else if !all_zero {
                if modify {
                    storage.truncate(seg, at)?;
                    storage.sync(seg)?;
                }
                report.tail = TailAction::TruncatedTornTail {
                    segment: seg,
                    offset: at,
                    bytes: file_len - at,
                };
            }
        } else if let Some(e) = err {
            report.tail = corrupt(storage, at, Corruption::Record(e))?;
        } else if !all_zero {
            report.tail = corrupt(storage, at, Corruption::TrailingBytes)?;
        }
        report.newest_segment = Some((seg, at));
        report.append_at = (next_seq == report.next_sequence).then_some((seg, at));
        prev = Some((seg, next_seq));
        progress(&prog);
        if report.tail != TailAction::Clean {
            break;
        }
    }
    report.progress = prog;
    Ok(report)
}

/// How many of `segments` (ascending, from the oldest) hold only records ≤ `through`: segment i
/// is covered when segment i + 1's header is valid, names it, and starts at a record
/// ≤ `through + 1`. The newest segment is never covered.
pub(crate) fn covered_segments<S: SegmentStorage + ?Sized>(
    storage: &S,
    segments: &[u64],
    through: u64,
) -> Result<usize, StorageError> {
    let mut block = vec![0u8; SEGMENT_HEADER_LEN];
    let mut covered = 0;
    for pair in segments.windows(2) {
        let next = pair[1];
        let mut got = 0;
        while got < block.len() {
            let n = storage.read_at(next, got as u64, &mut block[got..])?;
            if n == 0 {
                break;
            }
            got += n;
        }
        match SegmentHeader::decode(&block[..got]) {
            Ok(h) if h.segment_seq == next && h.first_record_seq <= through + 1 => covered += 1,
            _ => break,
        }
    }
    Ok(covered)
}

/// The outcome of [`recover_shard`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardRecoveryReport {
    /// The snapshot loaded (its through-sequence X is `header.through_seq`), if any.
    pub snapshot: Option<SnapshotReport>,
    /// Segments the snapshot covers: skipped, and removed unless read-only.
    pub obsolete_segments: Vec<u64>,
    /// Older snapshots removed (none when read-only).
    pub removed_snapshots: Vec<u64>,
    /// Whether a leftover incomplete snapshot was removed.
    pub removed_incomplete_snapshot: bool,
    /// The scan of the kept segments. Its progress counts the snapshot too; its tail, newest
    /// segment, append position and next sequence are the shard's.
    pub log: RecoveryReport,
}

impl ShardRecoveryReport {
    /// The snapshot's through-sequence, 0 without one.
    pub fn through_seq(&self) -> u64 {
        self.snapshot.map_or(0, |s| s.header.through_seq)
    }

    /// Records handed to the replay callback (snapshot and log).
    pub fn records_replayed(&self) -> u64 {
        self.log.progress.replayed
    }

    /// Bytes read (snapshot and kept segments).
    pub fn bytes_read(&self) -> u64 {
        self.log.progress.bytes_scanned
    }

    /// The sequence the next record must carry.
    pub fn next_sequence(&self) -> u64 {
        self.log.next_sequence
    }
}

/// Recovers a whole shard directory: the newest snapshot, then the log after it.
///
/// 1. A leftover incomplete snapshot is removed (unless read-only).
/// 2. The newest installed snapshot, if any, is verified and replayed; X is its through-sequence
///    (0 without one). A damaged snapshot is always refused: it was complete when installed.
/// 3. Segments covered by it (see `covered_segments`) are skipped and, with older snapshots,
///    removed unless read-only (finishing an interrupted compaction).
/// 4. The remaining segments are scanned as by [`recover`]: the oldest must start at a record
///    ≤ X + 1 ([`Corruption::LogGap`] otherwise), records ≤ X are verified but not replayed.
///
/// `progress` is called after each segment and about every 64 MiB of the snapshot. Records are
/// replayed as they are read: on error, whatever `replay` built must be thrown away.
pub fn recover_shard<S: SegmentStorage + SnapshotStore>(
    storage: &mut S,
    opts: &RecoveryOptions,
    progress: &mut dyn FnMut(&Progress),
    replay: &mut dyn FnMut(&ReplayOp<'_>) -> Result<(), EngineError>,
) -> Result<ShardRecoveryReport, RecoveryError> {
    let modify = !opts.read_only;
    let removed_incomplete_snapshot = modify && storage.remove_incomplete_snapshot()?;
    let snapshots = storage.list_snapshots()?;
    let newest = snapshots.last().copied();
    let segments = storage.list()?;
    let covered = match newest {
        Some(x) => covered_segments(storage, &segments, x)?,
        None => 0,
    };
    let kept = &segments[covered..];
    let mut prog = Progress {
        segments_total: kept.len(),
        ..Progress::default()
    };
    for &s in kept {
        prog.bytes_total += storage.len(s)?;
    }

    let mut snapshot = None;
    if let Some(x) = newest {
        prog.bytes_total += storage.snapshot_len(x)?;
        let reader = storage.open_snapshot(x)?;
        let base = prog;
        let rep = load_snapshot_with_progress(
            reader,
            opts,
            &mut |bytes, records| {
                progress(&Progress {
                    bytes_scanned: base.bytes_scanned + bytes,
                    records: base.records + records,
                    replayed: base.replayed + records,
                    ..base
                })
            },
            replay,
        )?;
        if rep.header.through_seq != x {
            return Err(RecoveryError::SnapshotCorrupt {
                offset: 0,
                reason: Corruption::Misnamed {
                    named: x,
                    in_header: rep.header.through_seq,
                },
            });
        }
        prog.bytes_scanned += rep.bytes;
        prog.records += rep.records;
        prog.replayed += rep.records;
        snapshot = Some(rep);
    }

    let mut removed_snapshots = Vec::new();
    if modify {
        for &s in &segments[..covered] {
            storage.remove(s)?;
        }
        for &old in &snapshots[..snapshots.len().saturating_sub(1)] {
            storage.remove_snapshot(old)?;
            removed_snapshots.push(old);
        }
    }

    let through = snapshot.map_or(0, |s: SnapshotReport| s.header.through_seq);
    let log = scan_log(storage, kept, opts, through, prog, progress, replay)?;
    Ok(ShardRecoveryReport {
        snapshot,
        obsolete_segments: segments[..covered].to_vec(),
        removed_snapshots,
        removed_incomplete_snapshot,
        log,
    })
}

#[cfg(test)]
mod tests {
    use super::super::format::{encode_record, RecordType as T, SEGMENT_HEADER_LEN};
    use super::super::storage::{FaultyStorage, MemStorage, SegmentStorage, StorageError};
    use super::super::test_writer::TestWriter;
    use super::*;
    use crate::EngineConfig;
    use rand::{rngs::StdRng, Rng, SeedableRng};
    use std::collections::BTreeMap;

    const OPTS: RecoveryOptions = RecoveryOptions {
        shard_id: 0,
        shard_count: 1,
        repair: false,
        read_only: false,
    };
    const HDR: u64 = SEGMENT_HEADER_LEN as u64;

    /// Recovers, returning the report and the sequence-ordered keys of the SET records replayed.
    fn run(
        s: &mut impl SegmentStorage,
        opts: RecoveryOptions,
    ) -> Result<(RecoveryReport, Vec<Vec<u8>>), RecoveryError> {
        let mut keys = Vec::new();
        let r = recover(s, &opts, &mut |_| {}, &mut |op| {
            if let ReplayOp::Set { key, .. } = op {
                keys.push(key.to_vec());
            }
            Ok(())
        })?;
        Ok((r, keys))
    }

    fn key(i: u64) -> Vec<u8> {
        format!("key{i:04}").into_bytes()
    }

    /// `n` SET records (keys key1..keyN), each committed on its own.
    fn log_of(s: &mut impl SegmentStorage, n: u64, segment_limit: u64) -> TestWriter {
        let mut w = TestWriter::create(s, segment_limit).unwrap();
        for i in 1..=n {
            w.append(T::Set, 0, &key(i), b"value", 0);
            w.commit(s).unwrap();
        }
        w
    }

    fn keys(range: std::ops::RangeInclusive<u64>) -> Vec<Vec<u8>> {
        range.map(key).collect()
    }

    /// Size of each record `log_of` writes.
    const RECORD_LEN: u64 = 36 + 7 + 5;

    /// Offset of record `seq` (1-based) in a single-segment log built by `log_of`.
    fn offset_of(seq: u64) -> u64 {
        HDR + (seq - 1) * RECORD_LEN
    }

    #[test]
    fn clean_log_replays_everything_across_segments() {
        let mut s = MemStorage::new();
        log_of(&mut s, 200, HDR + 1000);
        assert!(s.list().unwrap().len() > 5);
        let mut calls = 0;
        let opts = OPTS;
        let r = recover(&mut s, &opts, &mut |_| calls += 1, &mut |_| Ok(())).unwrap();
        assert_eq!(r.tail, TailAction::Clean);
        assert_eq!(
            (r.progress.records, r.last_sequence, r.next_sequence),
            (200, Some(200), 201)
        );
        assert_eq!(r.progress.bytes_scanned, s.total_len());
        assert_eq!(r.progress.bytes_total, s.total_len());
        assert_eq!(calls, s.list().unwrap().len());
        let (seg, off) = r.newest_segment.unwrap();
        assert_eq!(off, s.len(seg).unwrap());
        assert_eq!(run(&mut s, OPTS).unwrap().1, keys(1..=200));
        // An empty log.
        let r = run(&mut MemStorage::new(), OPTS).unwrap().0;
        assert_eq!(
            (r.next_sequence, r.newest_segment, r.tail),
            (1, None, TailAction::Clean)
        );
    }

    #[test]
    fn zero_padding_after_the_records_is_a_clean_end() {
        let mut s = MemStorage::new();
        let w = log_of(&mut s, 3, 1 << 20);
        s.write_at(1, w.offset, &[0u8; 8192]).unwrap();
        let (r, k) = run(&mut s, OPTS).unwrap();
        assert_eq!((r.tail, k), (TailAction::Clean, keys(1..=3)));
        assert_eq!(r.newest_segment, Some((1, w.offset)));
    }

    #[test]
    fn unsynced_writes_are_lost() {
        let mut s = MemStorage::new();
        let mut w = log_of(&mut s, 5, 1 << 20);
        w.append(T::Set, 0, b"late", b"v", 0);
        w.write(&mut s).unwrap();
        assert_eq!(run(&mut s.clone(), OPTS).unwrap().1.len(), 6);
        s.crash();
        let (r, k) = run(&mut s, OPTS).unwrap();
        assert_eq!((r.tail, k, r.next_sequence), (TailAction::Clean, keys(1..=5), 6));
    }

    #[test]
    fn torn_tail_is_truncated_and_reported() {
        let mut s = MemStorage::new();
        let mut w = log_of(&mut s, 5, 1 << 20);
        let synced = w.offset;
        w.append(T::Set, 0, b"big", &[7u8; 3000], 0);
        w.write(&mut s).unwrap();
        s.crash_tearing_last_write(1, 2);
        let torn_len = s.len(1).unwrap();
        assert!(torn_len > synced && torn_len < synced + 3000);
        let (r, k) = run(&mut s, OPTS).unwrap();
        assert_eq!(k, keys(1..=5));
        assert_eq!(
            r.tail,
            TailAction::TruncatedTornTail {
                segment: 1,
                offset: synced,
                bytes: torn_len - synced
            }
        );
        assert_eq!(s.len(1).unwrap(), synced);
        // The truncation was synced; the next recovery is clean.
        s.crash();
        assert_eq!(run(&mut s, OPTS).unwrap().0.tail, TailAction::Clean);
    }

    #[test]
    fn bit_flip_in_the_last_record_is_a_torn_tail() {
        let mut s = MemStorage::new();
        log_of(&mut s, 5, 1 << 20);
        s.flip_bit(1, offset_of(5) + 33, 2).unwrap();
        let (r, k) = run(&mut s, OPTS).unwrap();
        assert_eq!(k, keys(1..=4));
        assert_eq!(
            r.tail,
            TailAction::TruncatedTornTail {
                segment: 1,
                offset: offset_of(5),
                bytes: RECORD_LEN
            }
        );
    }

    #[test]
    fn bit_flip_followed_by_valid_records_is_refused_or_repaired() {
        let mut s = MemStorage::new();
        log_of(&mut s, 10, 1 << 20);
        for byte in [0, 4, 8, 20, 35, 44] {
            for bit in [0, 7] {
                let mut c = s.clone();
                c.flip_bit(1, offset_of(4) + byte, bit).unwrap();
                match run(&mut c, OPTS) {
                    Err(RecoveryError::Corrupt { segment: 1, offset, .. }) => assert_eq!(offset, offset_of(4)),
                    other => panic!("byte {byte} bit {bit}: {other:?}"),
                }
                assert_eq!(c.len(1).unwrap(), s.len(1).unwrap(), "a refusal changes nothing");
            }
        }
        s.flip_bit(1, offset_of(4) + 40, 0).unwrap();
        let (r, k) = run(&mut s, RecoveryOptions { repair: true, ..OPTS }).unwrap();
        assert_eq!(k, keys(1..=3));
        assert!(matches!(
            r.tail,
            TailAction::Repaired { segment: 1, offset, bytes: 336, reason: Corruption::Record(DecodeError::BadCrc { .. }), .. }
                if offset == offset_of(4)
        ));
        s.crash();
        let (r, k) = run(&mut s, OPTS).unwrap();
        assert_eq!((r.tail, k, r.next_sequence), (TailAction::Clean, keys(1..=3), 4));
    }

    #[test]
    fn corruption_in_an_older_segment_is_refused_or_repaired() {
        let mut s = MemStorage::new();
        log_of(&mut s, 60, HDR + 1000);
        let segs = s.list().unwrap();
        assert!(segs.len() >= 3);
        let last_of_first = s.len(1).unwrap() - RECORD_LEN;
        s.flip_bit(1, last_of_first + 10, 1).unwrap();
        assert!(
            matches!(run(&mut s, OPTS), Err(RecoveryError::Corrupt { segment: 1, offset, .. }) if offset == last_of_first)
        );
        let (r, k) = run(&mut s, RecoveryOptions { repair: true, ..OPTS }).unwrap();
        let kept = k.len() as u64;
        assert_eq!(k, keys(1..=kept));
        match r.tail {
            TailAction::Repaired {
                segment: 1,
                removed_segments,
                ..
            } => assert_eq!(removed_segments, segs[1..]),
            other => panic!("{other:?}"),
        }
        assert_eq!(s.list().unwrap(), vec![1]);
        // A missing middle segment is refused too.
        let mut s = MemStorage::new();
        log_of(&mut s, 60, HDR + 1000);
        s.remove(2).unwrap();
        let e = run(&mut s, OPTS).unwrap_err();
        assert!(matches!(
            e,
            RecoveryError::Corrupt {
                segment: 3,
                offset: 0,
                reason: Corruption::MissingSegment { .. }
            }
        ));
    }

    #[test]
    fn foreign_or_damaged_headers() {
        let mut s = MemStorage::new();
        log_of(&mut s, 3, 1 << 20);
        let e = run(
            &mut s,
            RecoveryOptions {
                shard_id: 1,
                shard_count: 2,
                ..OPTS
            },
        )
        .unwrap_err();
        assert!(matches!(
            e,
            RecoveryError::Corrupt {
                reason: Corruption::WrongShard {
                    shard_id: 0,
                    shard_count: 1
                },
                ..
            }
        ));
        // The newest segment's header torn, records after it: refused.
        s.flip_bit(1, 20, 0).unwrap();
        assert!(matches!(
            run(&mut s, OPTS),
            Err(RecoveryError::Corrupt {
                segment: 1,
                offset: 0,
                ..
            })
        ));
    }

    #[test]
    fn torn_segment_creation_is_removed() {
        let mut s = MemStorage::new();
        log_of(&mut s, 3, 1 << 20);
        s.create(2).unwrap();
        s.write_at(2, 0, &[0x55; 4096]).unwrap();
        s.crash_tearing_last_write(2, 3);
        assert_eq!(s.len(2).unwrap(), 1536);
        let (r, k) = run(&mut s, OPTS).unwrap();
        assert_eq!(
            r.tail,
            TailAction::RemovedTornSegment {
                segment: 2,
                bytes: 1536
            }
        );
        assert_eq!(
            (k, s.list().unwrap(), r.newest_segment.unwrap().0),
            (keys(1..=3), vec![1], 1)
        );
    }

    #[test]
    fn eio_on_write_loses_only_the_unacknowledged_batch() {
        let mut s = FaultyStorage::new();
        let mut w = log_of(&mut s, 4, 1 << 20);
        w.append(T::Set, 0, b"x", b"y", 0);
        s.fail_next_write();
        assert_eq!(
            w.commit(&mut s),
            Err(StorageError::Io {
                segment: 1,
                op: "write"
            })
        );
        s.crash();
        let (r, k) = run(&mut s, OPTS).unwrap();
        assert_eq!((r.tail, k), (TailAction::Clean, keys(1..=4)));
    }

    #[test]
    fn eio_on_sync_is_never_papered_over() {
        let mut s = FaultyStorage::new();
        let mut w = log_of(&mut s, 4, 1 << 20);
        let lost_at = w.offset;
        w.append(T::Set, 0, b"lost", b"v", 0);
        s.fail_next_sync();
        assert!(w.commit(&mut s).is_err());
        // A writer that ignored the error and kept going: its next sync "succeeds".
        let mut buf = [0u8; 64];
        let rec = Record {
            kind: T::Set,
            db: 0,
            flags: 0,
            sequence: 6,
            expiry_ms: 0,
            key: b"after",
            value: b"",
        };
        let n = encode_record(&rec, &mut buf).unwrap();
        s.write_at(1, lost_at + 43, &buf[..n]).unwrap();
        s.sync(1).unwrap();
        s.crash();
        // The lost batch is a hole of zeros followed by a valid record: refused, not replayed.
        let e = run(&mut s, OPTS).unwrap_err();
        assert_eq!(
            e,
            RecoveryError::Corrupt {
                segment: 1,
                offset: lost_at,
                reason: Corruption::RecordAfterEnd
            }
        );
        let (_, k) = run(&mut s, RecoveryOptions { repair: true, ..OPTS }).unwrap();
        assert_eq!(k, keys(1..=4));
    }

    #[test]
    fn enospc_keeps_the_acknowledged_log() {
        let mut s = FaultyStorage::new();
        let mut w = log_of(&mut s, 4, 1 << 20);
        s.set_capacity(Some(s.inner.total_len() + 10));
        w.append(T::Set, 0, b"big", &[1u8; 100], 0);
        assert_eq!(w.commit(&mut s), Err(StorageError::NoSpace(1)));
        let (r, k) = run(&mut s, OPTS).unwrap();
        assert_eq!((r.tail, k), (TailAction::Clean, keys(1..=4)));
    }

    #[test]
    fn replay_errors_carry_their_position() {
        let mut s = MemStorage::new();
        log_of(&mut s, 3, 1 << 20);
        let e = recover(&mut s, &OPTS, &mut |_| {}, &mut |_| Err(EngineError::OutOfMemory)).unwrap_err();
        assert_eq!(
            e,
            RecoveryError::Replay {
                segment: 1,
                offset: HDR,
                sequence: 1,
                source: EngineError::OutOfMemory
            }
        );
    }

    #[test]
    fn expired_keys_are_not_live_after_replay() {
        let mut s = MemStorage::new();
        let mut w = TestWriter::create(&mut s, 1 << 20).unwrap();
        w.append(T::Set, 0, b"gone", b"v", 1500);
        w.append(T::Set, 0, b"extended", b"v", 1500);
        w.append(T::Expire, 0, b"extended", b"", 9000);
        w.append(T::Set, 0, b"persisted", b"v", 1500);
        w.append(T::Persist, 0, b"persisted", b"", 0);
        w.append(T::Set, 1, b"later", b"v", 9000);
        w.commit(&mut s).unwrap();
        let mut ks = Keyspace::new(cfg());
        let mut rp = KeyspaceReplay::new(&mut ks);
        recover(&mut s, &OPTS, &mut |_| {}, &mut |op| rp.apply(op)).unwrap();
        assert_eq!(rp.finish(2000), 1);
        assert!(!ks.contains(0, b"gone", 0));
        assert_eq!(ks.info(0, b"extended", 2000).unwrap().expire_at_ms, Some(9000));
        assert_eq!(ks.info(0, b"persisted", 2000).unwrap().expire_at_ms, None);
        assert_eq!(ks.info(1, b"later", 2000).unwrap().expire_at_ms, Some(9000));
    }

    fn cfg() -> EngineConfig {
        EngineConfig {
            databases: 2,
            maxmemory_bytes: 0,
            policy: Default::default(),
            eviction_samples: 5,
        }
    }

    type Model = BTreeMap<(u16, Vec<u8>), (Vec<u8>, Option<u64>)>;

    /// Random writes to a model and to the log; crash (with or without a torn last write);
    /// recover into a fresh keyspace and compare with the model as of the recovered sequence,
    /// which must be at least the last synced one.
    #[test]
    fn model_survives_crash_and_recovery() {
        const WRITE_NOW: u64 = 1000;
        const RECOVER_NOW: u64 = 2000;
        for seed in 0..40u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut s = MemStorage::new();
            let mut w = TestWriter::create(&mut s, HDR + rng.gen_range(200..3000)).unwrap();
            let mut model = Model::new();
            // history[i] = model after record sequence i (history[0] = empty).
            let mut history = vec![model.clone()];
            let mut synced_seq = 0;
            for _ in 0..rng.gen_range(1..300) {
                let db = rng.gen_range(0..2u16);
                let k = format!("k{}", rng.gen_range(0..12)).into_bytes();
                let exp = [0, 1500, 9000][rng.gen_range(0..3)];
                let live = model.contains_key(&(db, k.clone()));
                // Only operations that take effect are logged (the writer's contract).
                match rng.gen_range(0..20) {
                    0..=9 => {
                        let v = vec![rng.gen::<u8>(); rng.gen_range(0..50)];
                        w.append(T::Set, db, &k, &v, exp);
                        model.insert((db, k), (v, (exp != 0).then_some(exp)));
                    }
                    10..=12 if live => {
                        w.append(T::Delete, db, &k, b"", 0);
                        model.remove(&(db, k));
                    }
                    13..=14 if live => {
                        let at = [500, 1500, 9000][rng.gen_range(0..3)];
                        if at <= WRITE_NOW {
                            w.append(T::Delete, db, &k, b"", 0);
                            model.remove(&(db, k));
                        } else {
                            w.append(T::Expire, db, &k, b"", at);
                            model.get_mut(&(db, k)).unwrap().1 = Some(at);
                        }
                    }
                    15..=16 if live => {
                        w.append(T::Persist, db, &k, b"", 0);
                        model.get_mut(&(db, k)).unwrap().1 = None;
                    }
                    17 => {
                        w.append(T::FlushDb, db, b"", b"", 0);
                        model.retain(|(d, _), _| *d != db);
                    }
                    18 if rng.gen_ratio(1, 4) => {
                        w.append(T::FlushAll, 0, b"", b"", 0);
                        model.clear();
                    }
                    _ => continue,
                }
                history.push(model.clone());
                if rng.gen_ratio(1, 4) {
                    w.commit(&mut s).unwrap();
                    synced_seq = w.next_seq - 1;
                }
            }
            w.write(&mut s).unwrap();
            if rng.gen_bool(0.5) {
                s.crash();
            } else {
                s.crash_tearing_last_write(w.segment, rng.gen_range(0..4));
            }

            let mut ks = Keyspace::new(cfg());
            let mut rp = KeyspaceReplay::new(&mut ks);
            let r = recover(&mut s, &OPTS, &mut |_| {}, &mut |op| rp.apply(op))
                .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            rp.finish(RECOVER_NOW);
            let recovered = r.next_sequence - 1;
            assert!(
                recovered >= synced_seq,
                "seed {seed}: recovered {recovered} < synced {synced_seq}"
            );
            let expected: Model = history[recovered as usize]
                .iter()
                .filter(|(_, (_, e))| !matches!(e, Some(t) if *t <= RECOVER_NOW))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let mut actual = Model::new();
            for db in 0..2u16 {
                let mut names = Vec::new();
                ks.for_each_key(db as usize, RECOVER_NOW, &mut |k| names.push(k.to_vec()));
                for k in names {
                    let v = ks.peek(db as usize, &k, RECOVER_NOW).unwrap().to_vec();
                    let e = ks.info(db as usize, &k, RECOVER_NOW).unwrap().expire_at_ms;
                    actual.insert((db, k), (v, e));
                }
            }
            assert_eq!(actual, expected, "seed {seed}");
            // A second recovery of the same storage is clean and replays the same records.
            let r2 = run(&mut s, OPTS).unwrap().0;
            assert_eq!(
                (r2.tail, r2.next_sequence),
                (TailAction::Clean, r.next_sequence),
                "seed {seed}"
            );
        }
    }

    /// A snapshot through `x` holding keys key1..=keyX (as `log_of` writes them).
    fn snapshot_of(x: u64) -> Vec<u8> {
        use super::super::snapshot::{SnapshotEncoder, SnapshotHeader};
        let mut out = Vec::new();
        let h = SnapshotHeader {
            shard_id: 0,
            shard_count: 1,
            through_seq: x,
        };
        let mut enc = SnapshotEncoder::new(&h, &mut out);
        for i in 1..=x {
            enc.add(&mut out, 0, &key(i), b"value", None).unwrap();
        }
        enc.finish(&mut out);
        out
    }

    fn run_shard(
        s: &mut MemStorage,
        opts: RecoveryOptions,
    ) -> Result<(ShardRecoveryReport, Vec<Vec<u8>>, usize), RecoveryError> {
        let mut keys = Vec::new();
        let mut calls = 0;
        let r = recover_shard(s, &opts, &mut |_| calls += 1, &mut |op| {
            if let ReplayOp::Set { key, .. } = op {
                keys.push(key.to_vec());
            }
            Ok(())
        })?;
        Ok((r, keys, calls))
    }

    #[test]
    fn shard_recovery_skips_what_the_snapshot_covers() {
        let mut s = MemStorage::new();
        let mut w = log_of(&mut s, 100, HDR + 1000);
        w.roll_over(&mut s).unwrap();
        let x = w.next_seq - 1;
        let covered: Vec<u64> = s.list().unwrap()[..w.segment as usize - 1].to_vec();
        s.install_snapshot(40, snapshot_of(40));
        s.install_snapshot(x, snapshot_of(x));
        s.set_incomplete_snapshot(Some(vec![1, 2, 3]));
        for i in 101..=110 {
            w.append(T::Set, 0, &key(i), b"value", 0);
        }
        w.commit(&mut s).unwrap();
        let before = s.clone();

        // Read-only: the same result, nothing removed.
        let ro = RecoveryOptions {
            read_only: true,
            ..OPTS
        };
        let (r, k, calls) = run_shard(&mut s, ro).unwrap();
        assert_eq!(k, keys(1..=110));
        assert_eq!(r.through_seq(), x);
        assert_eq!((r.snapshot.unwrap().records, r.records_replayed()), (100, 110));
        assert_eq!(r.obsolete_segments, covered);
        assert_eq!((r.removed_snapshots.len(), r.removed_incomplete_snapshot), (0, false));
        assert_eq!((r.next_sequence(), r.log.append_at), (111, Some((w.segment, w.offset))));
        assert_eq!(calls, 1 + 1);
        assert_eq!(s.list().unwrap(), before.list().unwrap());
        assert_eq!(s.list_snapshots().unwrap(), vec![40, x]);
        assert!(s.has_incomplete_snapshot());

        let (r, k, _) = run_shard(&mut s, OPTS).unwrap();
        assert_eq!(k, keys(1..=110));
        assert_eq!((r.removed_snapshots, r.removed_incomplete_snapshot), (vec![40], true));
        assert_eq!(s.list().unwrap(), vec![w.segment]);
        assert_eq!(s.list_snapshots().unwrap(), vec![x]);
        let (r, k, _) = run_shard(&mut s, OPTS).unwrap();
        assert_eq!(
            (k, r.obsolete_segments, r.log.tail),
            (keys(1..=110), vec![], TailAction::Clean)
        );
    }

    #[test]
    fn records_the_snapshot_covers_are_verified_not_replayed() {
        let mut s = MemStorage::new();
        log_of(&mut s, 20, 1 << 20);
        // A snapshot through 12 (taken without rolling over): records 1..=12 are verified only.
        s.install_snapshot(12, snapshot_of(12));
        let (r, k, _) = run_shard(&mut s, OPTS).unwrap();
        assert_eq!(k, keys(1..=20));
        assert_eq!((r.log.progress.records, r.records_replayed()), (12 + 20, 12 + 8));
        assert!(r.obsolete_segments.is_empty());
        // Damage in a covered record is still corruption.
        s.flip_bit(1, offset_of(3) + 40, 0).unwrap();
        assert!(matches!(
            run_shard(&mut s, OPTS),
            Err(RecoveryError::Corrupt { segment: 1, offset, .. }) if offset == offset_of(3)
        ));
    }

    #[test]
    fn log_must_continue_the_snapshot() {
        let mut s = MemStorage::new();
        let mut w = log_of(&mut s, 30, HDR + 500);
        w.roll_over(&mut s).unwrap();
        let first_kept = w.segment;
        // Without a snapshot, a log whose first segment does not start at record 1 is refused.
        let mut gap = s.clone();
        gap.remove(1).unwrap();
        assert!(matches!(
            run(&mut gap, OPTS),
            Err(RecoveryError::Corrupt {
                segment: 2,
                offset: 0,
                reason: Corruption::LogGap { through: 0, .. }
            })
        ));
        // A snapshot that ends before the oldest segment starts leaves a hole.
        let mut hole = s.clone();
        for seg in 1..first_kept {
            hole.remove(seg).unwrap();
        }
        hole.install_snapshot(5, snapshot_of(5));
        assert!(matches!(
            run_shard(&mut hole, OPTS),
            Err(RecoveryError::Corrupt {
                reason: Corruption::LogGap { through: 5, first: 31 },
                ..
            })
        ));
        // A snapshot reaching past the end of the log: numbering continues after it.
        s.install_snapshot(40, snapshot_of(40));
        let (r, k, _) = run_shard(&mut s, OPTS).unwrap();
        assert_eq!(k, keys(1..=40));
        assert_eq!((r.next_sequence(), r.log.append_at), (41, None));
        assert_eq!(r.log.newest_segment, Some((first_kept, HDR)));
    }

    #[test]
    fn damaged_snapshot_and_read_only_tail() {
        let mut s = MemStorage::new();
        let mut w = log_of(&mut s, 10, 1 << 20);
        s.install_snapshot(10, snapshot_of(10));
        let len = s.snapshot_len(10).unwrap() as usize;
        s.snapshot_mut(10).unwrap()[len - 10] ^= 1;
        assert!(matches!(
            run_shard(&mut s, RecoveryOptions { repair: true, ..OPTS }),
            Err(RecoveryError::SnapshotCorrupt {
                reason: Corruption::Record(DecodeError::BadCrc { .. }),
                ..
            })
        ));
        s.install_snapshot(10, snapshot_of(10));
        // A snapshot file under the wrong name.
        s.install_snapshot(11, snapshot_of(10));
        assert!(matches!(
            run_shard(&mut s.clone(), OPTS),
            Err(RecoveryError::SnapshotCorrupt {
                reason: Corruption::Misnamed {
                    named: 11,
                    in_header: 10
                },
                ..
            })
        ));
        s.remove_snapshot(11).unwrap();
        // A torn tail under read-only is reported, ignored and left in place.
        let end = w.offset;
        w.append(T::Set, 0, b"torn", &[1u8; 2000], 0);
        w.write(&mut s).unwrap();
        s.crash_tearing_last_write(1, 2);
        let torn = s.len(1).unwrap();
        let (r, k, _) = run_shard(
            &mut s,
            RecoveryOptions {
                read_only: true,
                ..OPTS
            },
        )
        .unwrap();
        assert_eq!(k, keys(1..=10));
        assert_eq!(
            r.log.tail,
            TailAction::TruncatedTornTail {
                segment: 1,
                offset: end,
                bytes: torn - end
            }
        );
        assert_eq!(s.len(1).unwrap(), torn);
        run_shard(&mut s, OPTS).unwrap();
        assert_eq!(s.len(1).unwrap(), end);
    }
}
