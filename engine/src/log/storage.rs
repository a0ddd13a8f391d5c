//! Where a shard's segment files live: the [`SegmentStorage`] trait, and in-memory
//! implementations for tests.
//!
//! Segments are named by their segment sequence number (a real implementation maps it to a file
//! name in the shard's directory). [`MemStorage`] keeps, per segment, the bytes a reader sees and
//! the bytes that would survive a crash (those covered by a successful [`SegmentStorage::sync`]);
//! [`FaultyStorage`] wraps it to inject the failures the recovery code must survive: loss of
//! unsynced data, a write torn at a 512-byte sector boundary, bit flips, EIO on write or sync, and
//! ENOSPC. A failed sync behaves like Linux after an fsync error: the unsynced writes it covered
//! are never made durable, even if a later sync succeeds.

use std::collections::BTreeMap;

/// The sector size at which [`FaultyStorage`] tears writes.
pub const SECTOR: u64 = 512;

/// An I/O failure of segment storage.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    #[error("segment {0} does not exist")]
    NotFound(u64),
    #[error("segment {0} already exists")]
    AlreadyExists(u64),
    /// EIO: the data may or may not have reached the device; after a failed sync it must be
    /// assumed lost.
    #[error("I/O error on segment {segment}: {op}")]
    Io { segment: u64, op: &'static str },
    /// ENOSPC: nothing was written.
    #[error("no space left on device writing segment {0}")]
    NoSpace(u64),
    /// Any other failure of a file operation, with the OS's description.
    #[error("{op} {file}: {message}")]
    File {
        file: String,
        op: &'static str,
        kind: std::io::ErrorKind,
        message: String,
    },
    /// A file whose name claims to be a segment but does not parse as one.
    #[error("misnamed segment file {0:?}")]
    MisnamedFile(String),
    #[error("snapshot {0} does not exist")]
    SnapshotNotFound(u64),
}

impl StorageError {
    /// Wraps an OS error from operation `op` on `file`.
    pub fn file(file: impl std::fmt::Display, op: &'static str, e: &std::io::Error) -> Self {
        StorageError::File {
            file: file.to_string(),
            op,
            kind: e.kind(),
            message: e.to_string(),
        }
    }
}

/// A shard's segment files.
///
/// Durability contract: data written with [`write_at`](Self::write_at), a truncation, and a newly
/// created segment's existence survive a crash only once a later [`sync`](Self::sync) of that
/// segment has returned `Ok`. [`remove`](Self::remove) is durable when it returns.
pub trait SegmentStorage {
    /// The segments that exist, in ascending order.
    fn list(&self) -> Result<Vec<u64>, StorageError>;
    /// Creates an empty segment; fails if it exists.
    fn create(&mut self, segment: u64) -> Result<(), StorageError>;
    /// The segment's current length in bytes.
    fn len(&self, segment: u64) -> Result<u64, StorageError>;
    /// Reads up to `buf.len()` bytes at `offset`; returns how many were read (0 at or past the end).
    fn read_at(&self, segment: u64, offset: u64, buf: &mut [u8]) -> Result<usize, StorageError>;
    /// Writes `data` at `offset`, extending the segment (with zeros before `offset` if needed).
    fn write_at(&mut self, segment: u64, offset: u64, data: &[u8]) -> Result<(), StorageError>;
    /// Makes everything written to this segment so far durable (fdatasync, plus the directory
    /// entry of a new segment).
    fn sync(&mut self, segment: u64) -> Result<(), StorageError>;
    /// Cuts the segment to `len` bytes (durable after the next sync).
    fn truncate(&mut self, segment: u64, len: u64) -> Result<(), StorageError>;
    /// Deletes the segment.
    fn remove(&mut self, segment: u64) -> Result<(), StorageError>;

    /// Reads the whole segment.
    fn read_all(&self, segment: u64) -> Result<Vec<u8>, StorageError> {
        let len = self.len(segment)? as usize;
        let mut buf = vec![0u8; len];
        let mut at = 0;
        while at < len {
            let n = self.read_at(segment, at as u64, &mut buf[at..])?;
            if n == 0 {
                buf.truncate(at);
                break;
            }
            at += n;
        }
        Ok(buf)
    }
}

/// A shard's installed snapshots, named by their through-sequence. An installed snapshot is
/// complete and durable (it is written under a temporary name and renamed once synced); at most
/// one incomplete snapshot exists, left by a crash mid-write.
pub trait SnapshotStore {
    type Reader: std::io::Read;
    /// Installed snapshots' through-sequences, ascending.
    fn list_snapshots(&self) -> Result<Vec<u64>, StorageError>;
    fn snapshot_len(&self, through: u64) -> Result<u64, StorageError>;
    fn open_snapshot(&self, through: u64) -> Result<Self::Reader, StorageError>;
    /// Deletes an installed snapshot (durable when it returns).
    fn remove_snapshot(&mut self, through: u64) -> Result<(), StorageError>;
    /// Deletes the leftover of a snapshot that was never installed; returns whether one existed.
    fn remove_incomplete_snapshot(&mut self) -> Result<bool, StorageError>;
}

#[derive(Clone, Debug)]
enum PendingOp {
    Write { offset: u64, data: Vec<u8> },
    Truncate(u64),
}

fn apply(bytes: &mut Vec<u8>, op: &PendingOp) {
    match op {
        PendingOp::Write { offset, data } => {
            let (start, end) = (*offset as usize, *offset as usize + data.len());
            if bytes.len() < end {
                bytes.resize(end, 0);
            }
            bytes[start..end].copy_from_slice(data);
        }
        PendingOp::Truncate(len) => bytes.truncate(*len as usize),
    }
}

#[derive(Clone, Debug, Default)]
struct MemSegment {
    /// What readers see.
    current: Vec<u8>,
    /// What survives a crash; `None` while the segment's creation has not been synced.
    durable: Option<Vec<u8>>,
    /// Operations since the last sync, in order (applied to `current` already).
    pending: Vec<PendingOp>,
}

/// Segments in memory, with a durable image per segment. See the module doc.
#[derive(Clone, Debug, Default)]
pub struct MemStorage {
    segments: BTreeMap<u64, MemSegment>,
    /// Installed snapshots (durable as soon as installed, like a synced rename).
    snapshots: BTreeMap<u64, Vec<u8>>,
    incomplete_snapshot: Option<Vec<u8>>,
}

impl MemStorage {
    pub fn new() -> Self {
        Self::default()
    }

    fn seg(&self, segment: u64) -> Result<&MemSegment, StorageError> {
        self.segments.get(&segment).ok_or(StorageError::NotFound(segment))
    }

    fn seg_mut(&mut self, segment: u64) -> Result<&mut MemSegment, StorageError> {
        self.segments.get_mut(&segment).ok_or(StorageError::NotFound(segment))
    }

    /// Installs a complete snapshot with through-sequence `through`.
    pub fn install_snapshot(&mut self, through: u64, bytes: Vec<u8>) {
        self.snapshots.insert(through, bytes);
    }

    /// Leaves an incomplete snapshot behind, as a crash while writing one would.
    pub fn set_incomplete_snapshot(&mut self, bytes: Option<Vec<u8>>) {
        self.incomplete_snapshot = bytes;
    }

    pub fn has_incomplete_snapshot(&self) -> bool {
        self.incomplete_snapshot.is_some()
    }

    /// An installed snapshot's bytes, for tests that damage them.
    pub fn snapshot_mut(&mut self, through: u64) -> Option<&mut Vec<u8>> {
        self.snapshots.get_mut(&through)
    }

    /// Total bytes of all segments as readers see them.
    pub fn total_len(&self) -> u64 {
        self.segments.values().map(|s| s.current.len() as u64).sum()
    }

    /// Simulates a crash: every segment goes back to its durable image; segments whose creation
    /// was never synced disappear.
    pub fn crash(&mut self) {
        self.crash_keeping(|_, _| None);
    }

    /// Simulates a crash in which the last pending write of `segment` (if any) reached the disk
    /// only up to the end of the `sectors`-th 512-byte sector (of the file) it touches, nothing of
    /// it if `sectors` is 0, while its earlier pending operations did reach it. All other unsynced data is
    /// lost as in [`crash`](Self::crash).
    pub fn crash_tearing_last_write(&mut self, segment: u64, sectors: u64) {
        self.crash_keeping(|seg, s| {
            if seg != segment {
                return None;
            }
            let (last, earlier) = s.pending.split_last()?;
            let mut bytes = s.durable.clone().unwrap_or_default();
            earlier.iter().for_each(|op| apply(&mut bytes, op));
            if let PendingOp::Write { offset, data } = last {
                let end = offset + data.len() as u64;
                let cut = ((offset / SECTOR + sectors) * SECTOR).clamp(*offset, end);
                let keep = PendingOp::Write {
                    offset: *offset,
                    data: data[..(cut - offset) as usize].to_vec(),
                };
                apply(&mut bytes, &keep);
            } else {
                apply(&mut bytes, last);
            }
            Some(bytes)
        });
    }

    fn crash_keeping(&mut self, mut survivor: impl FnMut(u64, &MemSegment) -> Option<Vec<u8>>) {
        let mut next = BTreeMap::new();
        for (&id, s) in &self.segments {
            let bytes = match survivor(id, s) {
                Some(b) => b,
                None => match &s.durable {
                    Some(d) => d.clone(),
                    None => continue,
                },
            };
            next.insert(
                id,
                MemSegment {
                    current: bytes.clone(),
                    durable: Some(bytes),
                    pending: Vec::new(),
                },
            );
        }
        self.segments = next;
    }

    /// Flips one bit both in what readers see and in the durable image (media corruption).
    pub fn flip_bit(&mut self, segment: u64, offset: u64, bit: u8) -> Result<(), StorageError> {
        let s = self.seg_mut(segment)?;
        let mask = 1u8 << (bit % 8);
        let at = offset as usize;
        if let Some(b) = s.current.get_mut(at) {
            *b ^= mask;
        }
        if let Some(b) = s.durable.as_mut().and_then(|d| d.get_mut(at)) {
            *b ^= mask;
        }
        Ok(())
    }

    /// Forgets the segment's pending operations without making them durable (what a failed
    /// fsync does on Linux). Readers still see them until a crash.
    fn drop_pending(&mut self, segment: u64) -> Result<(), StorageError> {
        self.seg_mut(segment)?.pending.clear();
        Ok(())
    }
}

impl SnapshotStore for MemStorage {
    type Reader = std::io::Cursor<Vec<u8>>;

    fn list_snapshots(&self) -> Result<Vec<u64>, StorageError> {
        Ok(self.snapshots.keys().copied().collect())
    }

    fn snapshot_len(&self, through: u64) -> Result<u64, StorageError> {
        let s = self
            .snapshots
            .get(&through)
            .ok_or(StorageError::SnapshotNotFound(through))?;
        Ok(s.len() as u64)
    }

    fn open_snapshot(&self, through: u64) -> Result<Self::Reader, StorageError> {
        let s = self
            .snapshots
            .get(&through)
            .ok_or(StorageError::SnapshotNotFound(through))?;
        Ok(std::io::Cursor::new(s.clone()))
    }

    fn remove_snapshot(&mut self, through: u64) -> Result<(), StorageError> {
        self.snapshots
            .remove(&through)
            .map(|_| ())
            .ok_or(StorageError::SnapshotNotFound(through))
    }

    fn remove_incomplete_snapshot(&mut self) -> Result<bool, StorageError> {
        Ok(self.incomplete_snapshot.take().is_some())
    }
}

impl SnapshotStore for FaultyStorage {
    type Reader = std::io::Cursor<Vec<u8>>;

    fn list_snapshots(&self) -> Result<Vec<u64>, StorageError> {
        self.inner.list_snapshots()
    }

    fn snapshot_len(&self, through: u64) -> Result<u64, StorageError> {
        self.inner.snapshot_len(through)
    }

    fn open_snapshot(&self, through: u64) -> Result<Self::Reader, StorageError> {
        self.inner.open_snapshot(through)
    }

    fn remove_snapshot(&mut self, through: u64) -> Result<(), StorageError> {
        self.inner.remove_snapshot(through)
    }

    fn remove_incomplete_snapshot(&mut self) -> Result<bool, StorageError> {
        self.inner.remove_incomplete_snapshot()
    }
}

impl SegmentStorage for MemStorage {
    fn list(&self) -> Result<Vec<u64>, StorageError> {
        Ok(self.segments.keys().copied().collect())
    }

    fn create(&mut self, segment: u64) -> Result<(), StorageError> {
        if self.segments.contains_key(&segment) {
            return Err(StorageError::AlreadyExists(segment));
        }
        self.segments.insert(segment, MemSegment::default());
        Ok(())
    }

    fn len(&self, segment: u64) -> Result<u64, StorageError> {
        Ok(self.seg(segment)?.current.len() as u64)
    }

    fn read_at(&self, segment: u64, offset: u64, buf: &mut [u8]) -> Result<usize, StorageError> {
        let cur = &self.seg(segment)?.current;
        let start = (offset as usize).min(cur.len());
        let n = buf.len().min(cur.len() - start);
        buf[..n].copy_from_slice(&cur[start..start + n]);
        Ok(n)
    }

    fn write_at(&mut self, segment: u64, offset: u64, data: &[u8]) -> Result<(), StorageError> {
        let s = self.seg_mut(segment)?;
        let op = PendingOp::Write {
            offset,
            data: data.to_vec(),
        };
        apply(&mut s.current, &op);
        s.pending.push(op);
        Ok(())
    }

    fn sync(&mut self, segment: u64) -> Result<(), StorageError> {
        let s = self.seg_mut(segment)?;
        let mut durable = s.durable.take().unwrap_or_default();
        for op in s.pending.drain(..) {
            apply(&mut durable, &op);
        }
        s.durable = Some(durable);
        Ok(())
    }

    fn truncate(&mut self, segment: u64, len: u64) -> Result<(), StorageError> {
        let s = self.seg_mut(segment)?;
        let op = PendingOp::Truncate(len);
        apply(&mut s.current, &op);
        s.pending.push(op);
        Ok(())
    }

    fn remove(&mut self, segment: u64) -> Result<(), StorageError> {
        self.segments
            .remove(&segment)
            .map(|_| ())
            .ok_or(StorageError::NotFound(segment))
    }
}

/// [`MemStorage`] with injectable faults, for tests. See the module doc.
#[derive(Clone, Debug, Default)]
pub struct FaultyStorage {
    pub inner: MemStorage,
    fail_next_write: bool,
    fail_next_sync: bool,
    capacity: Option<u64>,
    /// Segments whose sync has failed: writes pending at that moment are lost for good.
    failed_syncs: Vec<u64>,
}

impl FaultyStorage {
    pub fn new() -> Self {
        Self::default()
    }

    /// The next `write_at` returns EIO and writes nothing.
    pub fn fail_next_write(&mut self) {
        self.fail_next_write = true;
    }

    /// The next `sync` returns EIO; the writes it should have made durable never will be.
    pub fn fail_next_sync(&mut self) {
        self.fail_next_sync = true;
    }

    /// Writes that would take the total size of all segments past `bytes` fail with ENOSPC.
    pub fn set_capacity(&mut self, bytes: Option<u64>) {
        self.capacity = bytes;
    }

    /// Segments on which a sync has failed so far.
    pub fn failed_syncs(&self) -> &[u64] {
        &self.failed_syncs
    }

    /// See [`MemStorage::crash`].
    pub fn crash(&mut self) {
        self.inner.crash();
    }

    /// See [`MemStorage::crash_tearing_last_write`].
    pub fn crash_tearing_last_write(&mut self, segment: u64, sectors: u64) {
        self.inner.crash_tearing_last_write(segment, sectors);
    }

    /// See [`MemStorage::flip_bit`].
    pub fn flip_bit(&mut self, segment: u64, offset: u64, bit: u8) -> Result<(), StorageError> {
        self.inner.flip_bit(segment, offset, bit)
    }
}

impl SegmentStorage for FaultyStorage {
    fn list(&self) -> Result<Vec<u64>, StorageError> {
        self.inner.list()
    }

    fn create(&mut self, segment: u64) -> Result<(), StorageError> {
        self.inner.create(segment)
    }

    fn len(&self, segment: u64) -> Result<u64, StorageError> {
        self.inner.len(segment)
    }

    fn read_at(&self, segment: u64, offset: u64, buf: &mut [u8]) -> Result<usize, StorageError> {
        self.inner.read_at(segment, offset, buf)
    }

    fn write_at(&mut self, segment: u64, offset: u64, data: &[u8]) -> Result<(), StorageError> {
        let len = self.inner.len(segment)?;
        if std::mem::take(&mut self.fail_next_write) {
            return Err(StorageError::Io { segment, op: "write" });
        }
        if let Some(cap) = self.capacity {
            let growth = (offset + data.len() as u64).saturating_sub(len);
            if self.inner.total_len() + growth > cap {
                return Err(StorageError::NoSpace(segment));
            }
        }
        self.inner.write_at(segment, offset, data)
    }

    fn sync(&mut self, segment: u64) -> Result<(), StorageError> {
        self.inner.len(segment)?;
        if std::mem::take(&mut self.fail_next_sync) {
            self.inner.drop_pending(segment)?;
            self.failed_syncs.push(segment);
            return Err(StorageError::Io { segment, op: "sync" });
        }
        self.inner.sync(segment)
    }

    fn truncate(&mut self, segment: u64, len: u64) -> Result<(), StorageError> {
        self.inner.truncate(segment, len)
    }

    fn remove(&mut self, segment: u64) -> Result<(), StorageError> {
        self.inner.remove(segment)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsynced_data_and_segments_are_lost_on_crash() {
        let mut s = MemStorage::new();
        s.create(1).unwrap();
        s.write_at(1, 0, b"hello").unwrap();
        s.sync(1).unwrap();
        s.write_at(1, 5, b" world").unwrap();
        s.create(2).unwrap();
        s.write_at(2, 0, b"x").unwrap();
        assert_eq!(s.read_all(1).unwrap(), b"hello world");
        s.crash();
        assert_eq!(s.list().unwrap(), vec![1]);
        assert_eq!(s.read_all(1).unwrap(), b"hello");
    }

    #[test]
    fn truncate_is_durable_only_after_sync() {
        let mut s = MemStorage::new();
        s.create(1).unwrap();
        s.write_at(1, 0, b"abcdef").unwrap();
        s.sync(1).unwrap();
        s.truncate(1, 2).unwrap();
        assert_eq!(s.read_all(1).unwrap(), b"ab");
        s.crash();
        assert_eq!(s.read_all(1).unwrap(), b"abcdef");
        s.truncate(1, 2).unwrap();
        s.sync(1).unwrap();
        s.crash();
        assert_eq!(s.read_all(1).unwrap(), b"ab");
    }

    #[test]
    fn torn_write_keeps_whole_sectors_only() {
        let mut s = MemStorage::new();
        s.create(1).unwrap();
        s.write_at(1, 0, &[1u8; 100]).unwrap();
        s.sync(1).unwrap();
        s.write_at(1, 100, &[2u8; 1500]).unwrap();
        s.crash_tearing_last_write(1, 2);
        let b = s.read_all(1).unwrap();
        assert_eq!(b.len(), 1024);
        assert!(b[..100].iter().all(|&x| x == 1) && b[100..].iter().all(|&x| x == 2));
        // Zero sectors kept: only the synced data survives.
        s.write_at(1, 1024, &[3u8; 10]).unwrap();
        s.crash_tearing_last_write(1, 0);
        assert_eq!(s.len(1).unwrap(), 1024);
    }

    #[test]
    fn bit_flip_hits_durable_image() {
        let mut s = MemStorage::new();
        s.create(1).unwrap();
        s.write_at(1, 0, &[0u8; 4]).unwrap();
        s.sync(1).unwrap();
        s.flip_bit(1, 2, 3).unwrap();
        s.crash();
        assert_eq!(s.read_all(1).unwrap(), [0, 0, 8, 0]);
    }

    #[test]
    fn failed_sync_loses_data_for_good() {
        let mut s = FaultyStorage::new();
        s.create(1).unwrap();
        s.write_at(1, 0, b"aaaa").unwrap();
        s.sync(1).unwrap();
        s.write_at(1, 4, b"bbbb").unwrap();
        s.fail_next_sync();
        assert_eq!(s.sync(1), Err(StorageError::Io { segment: 1, op: "sync" }));
        assert_eq!(s.failed_syncs(), &[1]);
        // A later sync "succeeds" but does not bring the lost write back.
        s.write_at(1, 8, b"cccc").unwrap();
        s.sync(1).unwrap();
        assert_eq!(s.read_all(1).unwrap(), b"aaaabbbbcccc");
        s.crash();
        assert_eq!(s.read_all(1).unwrap(), b"aaaa\0\0\0\0cccc");
    }

    #[test]
    fn eio_and_enospc_on_write_write_nothing() {
        let mut s = FaultyStorage::new();
        s.create(1).unwrap();
        s.fail_next_write();
        assert_eq!(
            s.write_at(1, 0, b"x"),
            Err(StorageError::Io {
                segment: 1,
                op: "write"
            })
        );
        s.write_at(1, 0, b"x").unwrap();
        s.set_capacity(Some(4));
        assert_eq!(s.write_at(1, 1, b"yyyy"), Err(StorageError::NoSpace(1)));
        s.write_at(1, 0, b"zzzz").unwrap();
        assert_eq!(s.read_all(1).unwrap(), b"zzzz");
        assert_eq!(s.write_at(9, 0, b"z"), Err(StorageError::NotFound(9)));
    }
}
