//! A minimal log writer for tests: batches records, writes each batch with one `write_at` and
//! syncs it, rolls to a new segment past a size limit, following the order in `engine/FORMAT.md`.
//! After any storage error it refuses further work (the fsyncgate rule).

use super::format::{RecordType, SegmentHeader, SEGMENT_HEADER_LEN};
use super::journal::Journal;
use super::storage::{SegmentStorage, StorageError};

pub struct TestWriter {
    pub shard_id: u32,
    pub shard_count: u32,
    pub segment: u64,
    pub offset: u64,
    pub next_seq: u64,
    pub segment_limit: u64,
    batch: Vec<u8>,
    failed: bool,
}

impl TestWriter {
    /// Starts a new log (segment 1, first record sequence 1).
    pub fn create(storage: &mut impl SegmentStorage, segment_limit: u64) -> Result<Self, StorageError> {
        let mut w = TestWriter {
            shard_id: 0,
            shard_count: 1,
            segment: 0,
            offset: 0,
            next_seq: 1,
            segment_limit,
            batch: Vec::new(),
            failed: false,
        };
        w.start_segment(storage, 1)?;
        Ok(w)
    }

    fn start_segment(&mut self, storage: &mut impl SegmentStorage, segment: u64) -> Result<(), StorageError> {
        let mut block = vec![0u8; SEGMENT_HEADER_LEN];
        SegmentHeader {
            shard_id: self.shard_id,
            shard_count: self.shard_count,
            segment_seq: segment,
            first_record_seq: self.next_seq,
        }
        .encode(&mut block);
        storage.create(segment)?;
        storage.write_at(segment, 0, &block)?;
        storage.sync(segment)?;
        self.segment = segment;
        self.offset = SEGMENT_HEADER_LEN as u64;
        Ok(())
    }

    /// Adds a record to the current batch; returns its sequence.
    pub fn append(&mut self, kind: RecordType, db: u16, key: &[u8], value: &[u8], expiry_ms: u64) -> u64 {
        // Encoded exactly as the keyspace's journal encodes it.
        let mut journal = Journal::new(self.next_seq);
        journal.append(kind, db, key, value, expiry_ms);
        self.append_encoded(journal.pending(), 1);
        self.next_seq - 1
    }

    /// Adds already encoded records (a journal's pending bytes, sequences from `next_seq`).
    pub fn append_encoded(&mut self, bytes: &[u8], records: u64) {
        self.batch.extend_from_slice(bytes);
        self.next_seq += records;
    }

    /// Commits the batch and starts the next segment (first record sequence = `next_seq`), as
    /// compaction does before it writes a snapshot.
    pub fn roll_over(&mut self, storage: &mut impl SegmentStorage) -> Result<(), StorageError> {
        self.commit(storage)?;
        if self.offset > SEGMENT_HEADER_LEN as u64 {
            self.start_segment(storage, self.segment + 1)?;
        }
        Ok(())
    }

    /// Writes the batch without syncing it.
    pub fn write(&mut self, storage: &mut impl SegmentStorage) -> Result<(), StorageError> {
        assert!(!self.failed, "writer used after a storage error");
        if self.batch.is_empty() {
            return Ok(());
        }
        let r = storage.write_at(self.segment, self.offset, &self.batch);
        self.failed = r.is_err();
        r?;
        self.offset += self.batch.len() as u64;
        self.batch.clear();
        Ok(())
    }

    /// Writes and syncs the batch (group commit), then rolls over if the segment is full.
    pub fn commit(&mut self, storage: &mut impl SegmentStorage) -> Result<(), StorageError> {
        self.write(storage)?;
        let r = storage.sync(self.segment);
        self.failed = r.is_err();
        r?;
        if self.offset >= self.segment_limit {
            let r = self.start_segment(storage, self.segment + 1);
            self.failed = r.is_err();
            r?;
        }
        Ok(())
    }
}

/// Every live entry of a keyspace, (db, key) → (value, expiry), read with `scan_entries`.
pub type Live = std::collections::BTreeMap<(usize, Vec<u8>), (Vec<u8>, Option<u64>)>;

/// Every live entry, read with `scan_entries` (which must visit each key exactly once here).
pub fn live(ks: &mut crate::Keyspace, now: u64) -> Live {
    let mut out = Live::new();
    for db in 0..ks.databases() {
        let mut cursor = 0;
        loop {
            cursor = ks.scan_entries(db, cursor, 7, now, &mut |k, v, e| {
                out.insert((db, k.to_vec()), (v.to_vec(), e));
            });
            if cursor == 0 {
                break;
            }
        }
        assert_eq!(out.range((db, Vec::new())..(db + 1, Vec::new())).count(), ks.len(db));
    }
    out
}
