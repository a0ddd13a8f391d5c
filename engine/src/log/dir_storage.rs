//! A shard's log files in a real directory: [`DirStorage`] implements [`SegmentStorage`] and
//! [`SnapshotStore`] with `std::fs`, and owns the file naming rules.
//!
//! Directory layout (see `engine/FORMAT.md`): `segment-{n:016}.log` per segment (decimal
//! segment number), `snapshot-{x:020}.snap` per installed snapshot (its through-sequence), and
//! `snapshot.tmp` for a snapshot being written. Other files are ignored.
//!
//! Durability: `sync` is `fdatasync`; creating and removing a file also fsyncs the directory, so
//! the file's existence (or absence) survives a crash once the call returns. This is the
//! buffered-I/O implementation used by recovery and tests; the node writes segments with its own
//! DMA files following the same names and order.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::recovery::covered_segments;
use super::storage::{SegmentStorage, SnapshotStore, StorageError};

/// The name of a snapshot being written, before it is installed under its final name.
pub const SNAPSHOT_TMP_NAME: &str = "snapshot.tmp";
const SEGMENT_PREFIX: &str = "segment-";
const SEGMENT_SUFFIX: &str = ".log";
const SNAPSHOT_PREFIX: &str = "snapshot-";
const SNAPSHOT_SUFFIX: &str = ".snap";
/// Linux's ENOSPC (`io::ErrorKind::StorageFull` needs a newer Rust than the workspace's minimum).
const ENOSPC: i32 = 28;

/// The file name of segment `n`.
pub fn segment_file_name(n: u64) -> String {
    format!("{SEGMENT_PREFIX}{n:016}{SEGMENT_SUFFIX}")
}

/// The file name of the snapshot through sequence `x`.
pub fn snapshot_file_name(x: u64) -> String {
    format!("{SNAPSHOT_PREFIX}{x:020}{SNAPSHOT_SUFFIX}")
}

/// The directory name of shard `shard` under the node's data directory.
pub fn shard_dir_name(shard: u32) -> String {
    format!("shard-{shard:03}")
}

/// Parses `name` as `{prefix}{number}{suffix}`. `None`: not that kind of file at all;
/// `Some(None)`: has the prefix but is not exactly a name `format` would produce.
fn parse_name(name: &str, prefix: &str, suffix: &str, format: fn(u64) -> String) -> Option<Option<u64>> {
    let rest = name.strip_prefix(prefix)?;
    let n = rest
        .strip_suffix(suffix)
        .filter(|d| d.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|d| d.parse::<u64>().ok())
        // Round-tripping rejects a wrong width or leading zeros beyond it.
        .filter(|&n| format(n) == name);
    Some(n)
}

/// A shard directory. See the module doc.
#[derive(Debug)]
pub struct DirStorage {
    dir: PathBuf,
    read_only: bool,
    /// Open segment files, so positional I/O does not reopen them.
    files: RefCell<BTreeMap<u64, File>>,
}

impl DirStorage {
    /// Opens an existing shard directory for reading and writing.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StorageError> {
        Self::open_with(dir.into(), false)
    }

    /// Opens an existing shard directory; every operation that would modify it fails.
    pub fn open_read_only(dir: impl Into<PathBuf>) -> Result<Self, StorageError> {
        Self::open_with(dir.into(), true)
    }

    /// Creates the shard directory if needed (durably: the parent is fsynced) and opens it.
    pub fn create_dir(dir: impl Into<PathBuf>) -> Result<Self, StorageError> {
        let dir = dir.into();
        if !dir.is_dir() {
            std::fs::create_dir_all(&dir).map_err(|e| StorageError::file(dir.display(), "create directory", &e))?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent)?;
            }
        }
        Self::open_with(dir, false)
    }

    fn open_with(dir: PathBuf, read_only: bool) -> Result<Self, StorageError> {
        let meta = std::fs::metadata(&dir).map_err(|e| StorageError::file(dir.display(), "open directory", &e))?;
        if !meta.is_dir() {
            let e = std::io::Error::other("not a directory");
            return Err(StorageError::file(dir.display(), "open directory", &e));
        }
        Ok(DirStorage {
            dir,
            read_only,
            files: RefCell::new(BTreeMap::new()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    pub fn segment_path(&self, n: u64) -> PathBuf {
        self.dir.join(segment_file_name(n))
    }

    pub fn snapshot_path(&self, x: u64) -> PathBuf {
        self.dir.join(snapshot_file_name(x))
    }

    /// Where a snapshot is written before [`install_snapshot`](Self::install_snapshot).
    pub fn tmp_snapshot_path(&self) -> PathBuf {
        self.dir.join(SNAPSHOT_TMP_NAME)
    }

    /// Makes the directory's entries durable.
    pub fn sync_dir(&self) -> Result<(), StorageError> {
        sync_dir(&self.dir)
    }

    fn check_writable(&self, what: impl std::fmt::Display) -> Result<(), StorageError> {
        if self.read_only {
            let e = std::io::Error::new(ErrorKind::PermissionDenied, "storage opened read-only");
            return Err(StorageError::file(what, "modify", &e));
        }
        Ok(())
    }

    /// Maps an OS error on segment `n`'s file.
    fn seg_err(&self, n: u64, op: &'static str, e: &std::io::Error) -> StorageError {
        match e.kind() {
            ErrorKind::NotFound => StorageError::NotFound(n),
            ErrorKind::AlreadyExists => StorageError::AlreadyExists(n),
            _ if e.raw_os_error() == Some(ENOSPC) => StorageError::NoSpace(n),
            _ => StorageError::file(self.segment_path(n).display(), op, e),
        }
    }

    /// Runs `f` on segment `n`'s open file, opening it first if needed.
    fn with_file<R>(
        &self,
        n: u64,
        op: &'static str,
        f: impl FnOnce(&File) -> std::io::Result<R>,
    ) -> Result<R, StorageError> {
        let mut files = self.files.borrow_mut();
        let file = match files.entry(n) {
            std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::btree_map::Entry::Vacant(v) => {
                let file = OpenOptions::new()
                    .read(true)
                    .write(!self.read_only)
                    .open(self.segment_path(n))
                    .map_err(|e| self.seg_err(n, "open", &e))?;
                v.insert(file)
            }
        };
        f(file).map_err(|e| self.seg_err(n, op, &e))
    }

    /// Names in the directory, with the number parsed by `parse` (`None` entries skipped).
    fn scan(&self, parse: impl Fn(&str) -> Option<Option<u64>>) -> Result<Vec<u64>, StorageError> {
        let entries =
            std::fs::read_dir(&self.dir).map_err(|e| StorageError::file(self.dir.display(), "list directory", &e))?;
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| StorageError::file(self.dir.display(), "list directory", &e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                continue;
            };
            match parse(name) {
                None => {}
                Some(Some(n)) => out.push(n),
                Some(None) => return Err(StorageError::MisnamedFile(name.to_string())),
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Installs a completely written snapshot: fsyncs `tmp_path`, renames it to the name of the
    /// snapshot through `x`, and fsyncs the directory. Only then may covered segments go.
    pub fn install_snapshot(&mut self, tmp_path: &Path, x: u64) -> Result<(), StorageError> {
        self.check_writable(tmp_path.display())?;
        let file = File::open(tmp_path).map_err(|e| StorageError::file(tmp_path.display(), "open", &e))?;
        file.sync_all()
            .map_err(|e| StorageError::file(tmp_path.display(), "sync", &e))?;
        drop(file);
        let dest = self.snapshot_path(x);
        std::fs::rename(tmp_path, &dest).map_err(|e| StorageError::file(dest.display(), "rename", &e))?;
        self.sync_dir()
    }

    /// Deletes what the newest installed snapshot makes unnecessary: every older snapshot, and
    /// every segment whose successor starts at a record ≤ X + 1, where X is the newest snapshot's
    /// through-sequence capped at `x` (segments are never dropped for a snapshot that is not
    /// installed). Oldest first, so a crash midway leaves a valid log. Returns the removed
    /// segments and snapshots.
    pub fn remove_obsolete(&mut self, x: u64) -> Result<(Vec<u64>, Vec<u64>), StorageError> {
        self.check_writable(self.dir.display())?;
        let snapshots = self.list_snapshots()?;
        let Some(&newest) = snapshots.last() else {
            return Ok((Vec::new(), Vec::new()));
        };
        let segments = self.list()?;
        let covered = covered_segments(self, &segments, newest.min(x))?;
        for &s in &segments[..covered] {
            self.remove(s)?;
        }
        let old = &snapshots[..snapshots.len() - 1];
        for &s in old {
            self.remove_snapshot(s)?;
        }
        Ok((segments[..covered].to_vec(), old.to_vec()))
    }
}

fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::file(dir.display(), "sync directory", &e))
}

impl SegmentStorage for DirStorage {
    fn list(&self) -> Result<Vec<u64>, StorageError> {
        self.scan(|name| parse_name(name, SEGMENT_PREFIX, SEGMENT_SUFFIX, segment_file_name))
    }

    fn create(&mut self, segment: u64) -> Result<(), StorageError> {
        self.check_writable(self.segment_path(segment).display())?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(self.segment_path(segment))
            .map_err(|e| self.seg_err(segment, "create", &e))?;
        self.files.borrow_mut().insert(segment, file);
        self.sync_dir()
    }

    fn len(&self, segment: u64) -> Result<u64, StorageError> {
        self.with_file(segment, "stat", |f| f.metadata().map(|m| m.len()))
    }

    fn read_at(&self, segment: u64, offset: u64, buf: &mut [u8]) -> Result<usize, StorageError> {
        self.with_file(segment, "read", |f| loop {
            match f.read_at(buf, offset) {
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                r => return r,
            }
        })
    }

    fn write_at(&mut self, segment: u64, offset: u64, data: &[u8]) -> Result<(), StorageError> {
        self.check_writable(self.segment_path(segment).display())?;
        self.with_file(segment, "write", |f| f.write_all_at(data, offset))
    }

    fn sync(&mut self, segment: u64) -> Result<(), StorageError> {
        self.check_writable(self.segment_path(segment).display())?;
        self.with_file(segment, "sync", |f| f.sync_data())
    }

    fn truncate(&mut self, segment: u64, len: u64) -> Result<(), StorageError> {
        self.check_writable(self.segment_path(segment).display())?;
        self.with_file(segment, "truncate", |f| f.set_len(len))
    }

    fn remove(&mut self, segment: u64) -> Result<(), StorageError> {
        self.check_writable(self.segment_path(segment).display())?;
        self.files.borrow_mut().remove(&segment);
        std::fs::remove_file(self.segment_path(segment)).map_err(|e| self.seg_err(segment, "remove", &e))?;
        self.sync_dir()
    }
}

impl SnapshotStore for DirStorage {
    type Reader = File;

    fn list_snapshots(&self) -> Result<Vec<u64>, StorageError> {
        self.scan(|name| parse_name(name, SNAPSHOT_PREFIX, SNAPSHOT_SUFFIX, snapshot_file_name))
    }

    fn snapshot_len(&self, through: u64) -> Result<u64, StorageError> {
        let path = self.snapshot_path(through);
        match std::fs::metadata(&path) {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(StorageError::SnapshotNotFound(through)),
            Err(e) => Err(StorageError::file(path.display(), "stat", &e)),
        }
    }

    fn open_snapshot(&self, through: u64) -> Result<File, StorageError> {
        let path = self.snapshot_path(through);
        match File::open(&path) {
            Ok(f) => Ok(f),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(StorageError::SnapshotNotFound(through)),
            Err(e) => Err(StorageError::file(path.display(), "open", &e)),
        }
    }

    fn remove_snapshot(&mut self, through: u64) -> Result<(), StorageError> {
        let path = self.snapshot_path(through);
        self.check_writable(path.display())?;
        match std::fs::remove_file(&path) {
            Ok(()) => self.sync_dir(),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(StorageError::SnapshotNotFound(through)),
            Err(e) => Err(StorageError::file(path.display(), "remove", &e)),
        }
    }

    fn remove_incomplete_snapshot(&mut self) -> Result<bool, StorageError> {
        let path = self.tmp_snapshot_path();
        self.check_writable(path.display())?;
        match std::fs::remove_file(&path) {
            Ok(()) => self.sync_dir().map(|()| true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StorageError::file(path.display(), "remove", &e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::format::{SegmentHeader, SEGMENT_HEADER_LEN};
    use super::super::journal::Journal;
    use super::super::recovery::{recover_shard, KeyspaceReplay, RecoveryOptions, TailAction};
    use super::super::snapshot::{SnapshotEncoder, SnapshotHeader};
    use super::super::test_writer::{live, TestWriter};
    use super::*;
    use crate::{EngineConfig, Expiry, Keyspace};

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let p = std::env::temp_dir().join(format!("corekv-engine-{}-{nanos}-{name}", std::process::id()));
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const OPTS: RecoveryOptions = RecoveryOptions {
        shard_id: 0,
        shard_count: 1,
        repair: false,
        read_only: false,
    };

    #[test]
    fn names() {
        assert_eq!(segment_file_name(12), "segment-0000000000000012.log");
        assert_eq!(snapshot_file_name(345), "snapshot-00000000000000000345.snap");
        assert_eq!(shard_dir_name(7), "shard-007");
        assert_eq!(shard_dir_name(1234), "shard-1234");
        let seg = |n: &str| parse_name(n, SEGMENT_PREFIX, SEGMENT_SUFFIX, segment_file_name);
        assert_eq!(seg("segment-0000000000000012.log"), Some(Some(12)));
        assert_eq!(seg(&segment_file_name(u64::MAX)), Some(Some(u64::MAX)));
        assert_eq!(seg("segment-12.log"), Some(None));
        assert_eq!(seg("segment-000000000000001x.log"), Some(None));
        assert_eq!(seg("segment-0000000000000012.log.bak"), Some(None));
        assert_eq!(seg("snapshot.tmp"), None);
    }

    #[test]
    fn files_behave_like_the_trait_says() {
        let tmp = TempDir::new("basic");
        let mut d = DirStorage::create_dir(&tmp.0).unwrap();
        assert_eq!(d.list().unwrap(), Vec::<u64>::new());
        d.create(2).unwrap();
        d.create(1).unwrap();
        assert_eq!(d.create(1), Err(StorageError::AlreadyExists(1)));
        assert!(tmp.0.join("segment-0000000000000001.log").is_file());
        d.write_at(1, 0, b"hello").unwrap();
        d.write_at(1, 10, b"world").unwrap();
        d.sync(1).unwrap();
        assert_eq!(d.len(1).unwrap(), 15);
        assert_eq!(d.read_all(1).unwrap(), b"hello\0\0\0\0\0world");
        let mut buf = [0u8; 8];
        assert_eq!(d.read_at(1, 12, &mut buf).unwrap(), 3);
        assert_eq!(d.read_at(1, 99, &mut buf).unwrap(), 0);
        d.truncate(1, 4).unwrap();
        assert_eq!(d.read_all(1).unwrap(), b"hell");
        // Unknown files are ignored, a misnamed segment is not.
        std::fs::write(tmp.0.join("notes.txt"), b"x").unwrap();
        std::fs::write(tmp.0.join(SNAPSHOT_TMP_NAME), b"x").unwrap();
        assert_eq!(d.list().unwrap(), vec![1, 2]);
        assert_eq!(d.list_snapshots().unwrap(), Vec::<u64>::new());
        d.remove(2).unwrap();
        assert_eq!(d.remove(2), Err(StorageError::NotFound(2)));
        assert_eq!(d.len(2), Err(StorageError::NotFound(2)));
        assert!(d.remove_incomplete_snapshot().unwrap());
        assert!(!d.remove_incomplete_snapshot().unwrap());
        std::fs::write(tmp.0.join("segment-7.log"), b"x").unwrap();
        assert_eq!(d.list(), Err(StorageError::MisnamedFile("segment-7.log".into())));
        std::fs::remove_file(tmp.0.join("segment-7.log")).unwrap();
        // A second handle sees the same files; a read-only one refuses every change.
        let mut ro = DirStorage::open_read_only(&tmp.0).unwrap();
        assert_eq!(ro.read_all(1).unwrap(), b"hell");
        assert!(matches!(ro.write_at(1, 0, b"x"), Err(StorageError::File { .. })));
        assert!(matches!(ro.truncate(1, 0), Err(StorageError::File { .. })));
        assert!(matches!(ro.remove(1), Err(StorageError::File { .. })));
        assert!(matches!(ro.create(3), Err(StorageError::File { .. })));
        assert_eq!(d.read_all(1).unwrap(), b"hell");
        assert!(DirStorage::open(tmp.0.join("missing")).is_err());
    }

    #[test]
    fn snapshots_install_and_obsolete_files_go() {
        let tmp = TempDir::new("obsolete");
        let mut d = DirStorage::create_dir(&tmp.0).unwrap();
        // Segments 1..=4 starting at records 1, 11, 21, 31.
        for (n, first) in [(1u64, 1u64), (2, 11), (3, 21), (4, 31)] {
            let mut block = vec![0u8; SEGMENT_HEADER_LEN];
            SegmentHeader {
                shard_id: 0,
                shard_count: 1,
                segment_seq: n,
                first_record_seq: first,
            }
            .encode(&mut block);
            d.create(n).unwrap();
            d.write_at(n, 0, &block).unwrap();
        }
        for x in [5u64, 20] {
            let tmp_path = d.tmp_snapshot_path();
            std::fs::write(&tmp_path, format!("snapshot {x}")).unwrap();
            d.install_snapshot(&tmp_path, x).unwrap();
            assert!(!tmp_path.exists());
        }
        assert_eq!(d.list_snapshots().unwrap(), vec![5, 20]);
        assert_eq!(std::fs::read(d.snapshot_path(20)).unwrap(), b"snapshot 20");
        assert_eq!(d.snapshot_len(20).unwrap(), 11);
        // X = 20: segment 3 starts at 21 = X + 1, so 1 and 2 hold only records ≤ 20.
        assert_eq!(d.remove_obsolete(20).unwrap(), (vec![1, 2], vec![5]));
        assert_eq!(d.list().unwrap(), vec![3, 4]);
        assert_eq!(d.list_snapshots().unwrap(), vec![20]);
        // Capped by the newest installed snapshot: nothing past X = 20 goes.
        assert_eq!(d.remove_obsolete(1000).unwrap(), (vec![], vec![]));
        // The newest segment never goes.
        let tmp_path = d.tmp_snapshot_path();
        std::fs::write(&tmp_path, b"s").unwrap();
        d.install_snapshot(&tmp_path, 500).unwrap();
        assert_eq!(d.remove_obsolete(500).unwrap(), (vec![3], vec![20]));
        assert_eq!(d.list().unwrap(), vec![4]);
    }

    fn cfg() -> EngineConfig {
        EngineConfig {
            databases: 4,
            maxmemory_bytes: 0,
            policy: Default::default(),
            eviction_samples: 5,
        }
    }

    /// Writes the journal's pending records through the writer and commits them.
    fn flush(ks: &mut Keyspace, w: &mut TestWriter, d: &mut DirStorage) {
        let j = ks.journal_mut().unwrap();
        let n = j.pending_records();
        let mut bytes = Vec::new();
        j.take_pending(&mut bytes);
        w.append_encoded(&bytes, n);
        w.commit(d).unwrap();
        assert_eq!(w.next_seq, ks.journal_mut().unwrap().next_seq());
    }

    fn write_some(ks: &mut Keyspace, round: u32, now: u64) {
        for i in 0..400u32 {
            let key = format!("k{}", (i * 7 + round * 13) % 300).into_bytes();
            let db = (i % 4) as usize;
            match i % 9 {
                0 => {
                    ks.remove(db, &key, now);
                }
                1 => {
                    ks.set_expiry(db, &key, Some(now + 50 + i as u64), now);
                }
                2 if i % 200 == 2 => ks.swap_db(0, 3),
                3 if i % 300 == 3 => ks.flush_db(2),
                4 => {
                    ks.move_key(db, (db + 1) % 4, &key, now);
                }
                _ => {
                    let exp = if i % 5 == 0 {
                        Expiry::At(now + 100)
                    } else {
                        Expiry::Persist
                    };
                    ks.set(db, &key, &vec![(i + round) as u8; (i as usize * 31) % 900], exp, now)
                        .unwrap();
                }
            }
        }
    }

    /// The whole cycle on a real directory: journal → segments, compaction (roll over, snapshot,
    /// install, remove covered files) while writes continue, more writes, a torn tail, recovery.
    #[test]
    fn journal_snapshot_and_recovery_on_disk() {
        let tmp = TempDir::new("cycle");
        let mut d = DirStorage::create_dir(tmp.0.join(shard_dir_name(0))).unwrap();
        let mut w = TestWriter::create(&mut d, SEGMENT_HEADER_LEN as u64 + 40_000).unwrap();
        let mut ks = Keyspace::new(cfg());
        ks.attach_journal(Journal::new(1));
        let mut now = 1_000;
        for round in 0..6 {
            write_some(&mut ks, round, now);
            flush(&mut ks, &mut w, &mut d);
            now += 30;
        }
        // Compaction: roll over so the new segment starts at X + 1, then snapshot while
        // writes continue (interleaved between scan steps), install, delete covered files.
        w.roll_over(&mut d).unwrap();
        let x = w.next_seq - 1;
        let epoch = ks.swap_epoch();
        let mut snap = Vec::new();
        let header = SnapshotHeader {
            shard_id: 0,
            shard_count: 1,
            through_seq: x,
        };
        let mut enc = SnapshotEncoder::new(&header, &mut snap);
        let mut round = 100;
        for db in 0..4 {
            let mut cursor = 0;
            loop {
                cursor = ks.scan_entries(db, cursor, 40, now, &mut |k, v, e| {
                    enc.add(&mut snap, db as u16, k, v, e).unwrap();
                });
                // Writes racing the snapshot (no swap_db, or the snapshot would restart).
                ks.set(1, format!("race{round}").as_bytes(), b"r", Expiry::Persist, now)
                    .unwrap();
                ks.remove(0, format!("k{}", round % 300).as_bytes(), now);
                round += 1;
                if cursor == 0 {
                    break;
                }
            }
        }
        assert_eq!(ks.swap_epoch(), epoch);
        enc.finish(&mut snap);
        std::fs::write(d.tmp_snapshot_path(), &snap).unwrap();
        let tmp_path = d.tmp_snapshot_path();
        d.install_snapshot(&tmp_path, x).unwrap();
        let segments_before = d.list().unwrap();
        let (removed, _) = d.remove_obsolete(x).unwrap();
        assert_eq!(removed, segments_before[..segments_before.len() - 1]);
        flush(&mut ks, &mut w, &mut d);
        for round in 6..9 {
            write_some(&mut ks, round, now);
            flush(&mut ks, &mut w, &mut d);
            now += 30;
        }
        // A torn, unacknowledged tail.
        let end = w.offset;
        d.write_at(w.segment, end, &[0x5A; 300]).unwrap();
        drop(d);

        let expected = live(&mut ks, now);
        let recover_into = |opts: &RecoveryOptions| {
            let dir = tmp.0.join(shard_dir_name(0));
            let mut d = if opts.read_only {
                DirStorage::open_read_only(dir).unwrap()
            } else {
                DirStorage::open(dir).unwrap()
            };
            let mut copy = Keyspace::new(cfg());
            let mut rp = KeyspaceReplay::new(&mut copy);
            let mut calls = 0;
            let r = recover_shard(&mut d, opts, &mut |_| calls += 1, &mut |op| rp.apply(op)).unwrap();
            rp.finish(now);
            assert!(calls >= r.log.progress.segments_total);
            (r, live(&mut copy, now))
        };
        // Read-only first: same state, nothing changed on disk.
        let (r, got) = recover_into(&RecoveryOptions {
            read_only: true,
            ..OPTS
        });
        assert_eq!(got, expected);
        assert_eq!(r.through_seq(), x);
        assert_eq!(r.next_sequence(), w.next_seq);
        assert_eq!(
            r.log.tail,
            TailAction::TruncatedTornTail {
                segment: w.segment,
                offset: end,
                bytes: 300
            }
        );
        assert_eq!(
            std::fs::metadata(tmp.0.join("shard-000").join(segment_file_name(w.segment)))
                .unwrap()
                .len(),
            end + 300
        );
        // Then for real: the tail is cut, and a second recovery is clean.
        let (r, got) = recover_into(&OPTS);
        assert_eq!(got, expected);
        assert_eq!(r.log.append_at, Some((w.segment, end)));
        assert_eq!(r.records_replayed(), r.snapshot.unwrap().records + (w.next_seq - 1 - x));
        let (r2, got) = recover_into(&OPTS);
        assert_eq!((&r2.log.tail, got), (&TailAction::Clean, expected));
        assert_eq!(r2.bytes_read(), r.bytes_read() - 300);
    }
}
