//! Snapshot files: a shard's whole live state as of a log sequence, so the log before it can be
//! deleted.
//!
//! A snapshot "through X" covers every record with sequence ≤ X. It is taken while writes go on,
//! so it may also hold effects of later records; replaying the log after X on top is still exact,
//! because records carry final values (and a SwapDb during the scan restarts the snapshot, see
//! [`Keyspace::swap_epoch`](crate::Keyspace::swap_epoch)).
//!
//! Layout (byte tables in `engine/FORMAT.md`): a 4096-byte [`SnapshotHeader`] block, then Set
//! records with sequences 1..=n encoded like log records, then an End record (sequence n + 1)
//! whose value is n. Only zeros may follow.
//!
//! [`SnapshotEncoder`] builds the bytes without doing I/O; [`load_snapshot`] streams a file through
//! a bounded buffer, verifying everything, and replays its records.

use std::io::Read;

use super::format::{
    decode_record, encode_record, peek_record_len, DecodeError, EncodeError, HeaderError, Record, RecordType,
    FORMAT_VERSION, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN,
};
use super::recovery::{Corruption, RecoveryError, RecoveryOptions, ReplayOp};
use super::storage::StorageError;
use crate::EngineError;

/// The first 8 bytes of every snapshot file.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"CKVSNAP\n";
/// The header block, like a segment's; records start at this offset.
pub const SNAPSHOT_HEADER_LEN: usize = SEGMENT_HEADER_LEN;
/// Bytes of the header that carry data.
pub const SNAPSHOT_HEADER_DATA_LEN: usize = 44;

/// Bytes read between two progress reports.
pub const PROGRESS_EVERY: u64 = 64 << 20;
/// Bytes asked of the reader at a time.
const CHUNK: usize = 1 << 20;

// Header field offsets (the segment header's layout, with the through-sequence where a segment
// has its number).
const H_VERSION: usize = 8;
const H_RESERVED16: usize = 10;
const H_SHARD_ID: usize = 12;
const H_SHARD_COUNT: usize = 16;
const H_RESERVED32: usize = 20;
const H_THROUGH: usize = 24;
const H_RESERVED64: usize = 32;
const H_CRC: usize = 40;
const _: () = assert!(H_CRC + 4 == SNAPSHOT_HEADER_DATA_LEN);

/// The header at the start of every snapshot file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotHeader {
    pub shard_id: u32,
    pub shard_count: u32,
    /// Every log record with a sequence ≤ this is covered by the snapshot.
    pub through_seq: u64,
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

impl SnapshotHeader {
    /// Writes the header block (data, CRC, zero padding) into `buf[..SNAPSHOT_HEADER_LEN]`.
    ///
    /// # Panics
    /// If `buf` is shorter than [`SNAPSHOT_HEADER_LEN`].
    pub fn encode(&self, buf: &mut [u8]) {
        let out = &mut buf[..SNAPSHOT_HEADER_LEN];
        out.fill(0);
        out[..8].copy_from_slice(&SNAPSHOT_MAGIC);
        out[H_VERSION..H_VERSION + 2].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        out[H_SHARD_ID..H_SHARD_ID + 4].copy_from_slice(&self.shard_id.to_le_bytes());
        out[H_SHARD_COUNT..H_SHARD_COUNT + 4].copy_from_slice(&self.shard_count.to_le_bytes());
        out[H_THROUGH..H_THROUGH + 8].copy_from_slice(&self.through_seq.to_le_bytes());
        let crc = crc32fast::hash(&out[..H_CRC]);
        out[H_CRC..H_CRC + 4].copy_from_slice(&crc.to_le_bytes());
    }

    /// Decodes the header at the start of `buf` (which must hold the whole 4096-byte block).
    pub fn decode(buf: &[u8]) -> Result<SnapshotHeader, HeaderError> {
        if buf.len() < SNAPSHOT_HEADER_LEN {
            return Err(HeaderError::Incomplete { available: buf.len() });
        }
        if buf[..8] != SNAPSHOT_MAGIC {
            return Err(HeaderError::BadMagic);
        }
        let stored = le_u32(buf, H_CRC);
        let computed = crc32fast::hash(&buf[..H_CRC]);
        if stored != computed {
            return Err(HeaderError::BadCrc { stored, computed });
        }
        let version = le_u16(buf, H_VERSION);
        if version != FORMAT_VERSION {
            return Err(HeaderError::UnsupportedVersion(version));
        }
        if le_u16(buf, H_RESERVED16) != 0 || le_u32(buf, H_RESERVED32) != 0 || le_u64(buf, H_RESERVED64) != 0 {
            return Err(HeaderError::Reserved);
        }
        Ok(SnapshotHeader {
            shard_id: le_u32(buf, H_SHARD_ID),
            shard_count: le_u32(buf, H_SHARD_COUNT),
            through_seq: le_u64(buf, H_THROUGH),
        })
    }
}

/// Builds a snapshot file's bytes into caller-provided buffers (sans I/O): the caller may write
/// and clear the buffer between calls to bound memory.
#[derive(Debug)]
pub struct SnapshotEncoder {
    records: u64,
}

impl SnapshotEncoder {
    /// Appends the header block to `out` and starts counting records.
    pub fn new(header: &SnapshotHeader, out: &mut Vec<u8>) -> Self {
        let start = out.len();
        out.resize(start + SNAPSHOT_HEADER_LEN, 0);
        header.encode(&mut out[start..]);
        SnapshotEncoder { records: 0 }
    }

    /// Records added so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Appends one live key (a Set record) to `out`.
    pub fn add(
        &mut self,
        out: &mut Vec<u8>,
        db: u16,
        key: &[u8],
        value: &[u8],
        expire_at_ms: Option<u64>,
    ) -> Result<(), EncodeError> {
        let expiry_ms = expire_at_ms.unwrap_or(0);
        if expire_at_ms == Some(0) {
            // 0 means "no expiry" on disk; an expiry at the epoch is long past anyway.
            return Err(EncodeError::Invalid("expiry at time 0"));
        }
        append(out, RecordType::Set, db, self.records + 1, expiry_ms, key, value)?;
        self.records += 1;
        Ok(())
    }

    /// Appends the End record; the snapshot is complete.
    pub fn finish(self, out: &mut Vec<u8>) {
        let count = self.records.to_le_bytes();
        append(out, RecordType::End, 0, self.records + 1, 0, b"", &count).expect("an End record is well-formed");
    }
}

fn append(
    out: &mut Vec<u8>,
    kind: RecordType,
    db: u16,
    sequence: u64,
    expiry_ms: u64,
    key: &[u8],
    value: &[u8],
) -> Result<(), EncodeError> {
    let rec = Record {
        kind,
        db,
        flags: 0,
        sequence,
        expiry_ms,
        key,
        value,
    };
    let start = out.len();
    out.resize(start + rec.encoded_len(), 0);
    let r = encode_record(&rec, &mut out[start..]);
    if r.is_err() {
        out.truncate(start);
    }
    r.map(|_| ())
}

/// What [`load_snapshot`] read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotReport {
    pub header: SnapshotHeader,
    /// Set records replayed.
    pub records: u64,
    /// Bytes read (the whole file, including zeros after the End record).
    pub bytes: u64,
}

/// A reader behind a bounded buffer that grows only as far as the largest record needs.
struct Chunked<R> {
    reader: R,
    buf: Vec<u8>,
    /// Start of the unconsumed bytes in `buf`.
    start: usize,
    /// File offset of `buf[start]`.
    pos: u64,
    eof: bool,
    chunk: usize,
}

impl<R: Read> Chunked<R> {
    fn avail(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Reads until at least `n` bytes are buffered or the file ends; returns the bytes buffered.
    fn fill(&mut self, n: usize) -> Result<usize, RecoveryError> {
        while self.buf.len() - self.start < n && !self.eof {
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            // Read a chunk at a time, so a length field that lies costs no more memory than the
            // bytes actually present.
            let old = self.buf.len();
            self.buf.resize(old + self.chunk, 0);
            let got = loop {
                match self.reader.read(&mut self.buf[old..]) {
                    Ok(got) => break got,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        self.buf.truncate(old);
                        let at = self.pos + old as u64;
                        let file = format!("snapshot at offset {at}");
                        return Err(StorageError::file(file, "read", &e).into());
                    }
                }
            };
            self.buf.truncate(old + got);
            self.eof = got == 0;
        }
        Ok(self.buf.len() - self.start)
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        self.pos += n as u64;
    }
}

fn corrupt(offset: u64, reason: Corruption) -> RecoveryError {
    RecoveryError::SnapshotCorrupt { offset, reason }
}

/// Verifies and replays a snapshot; see the module doc. Every record is handed to `replay` as a
/// [`ReplayOp::Set`] as it is read: on error, whatever `replay` built must be thrown away.
pub fn load_snapshot(
    reader: impl Read,
    opts: &RecoveryOptions,
    replay: &mut dyn FnMut(&ReplayOp<'_>) -> Result<(), EngineError>,
) -> Result<SnapshotReport, RecoveryError> {
    load_snapshot_with_progress(reader, opts, &mut |_, _| {}, replay)
}

/// [`load_snapshot`], calling `progress(bytes read, records)` about every [`PROGRESS_EVERY`]
/// bytes and at the end.
pub fn load_snapshot_with_progress(
    reader: impl Read,
    opts: &RecoveryOptions,
    progress: &mut dyn FnMut(u64, u64),
    replay: &mut dyn FnMut(&ReplayOp<'_>) -> Result<(), EngineError>,
) -> Result<SnapshotReport, RecoveryError> {
    load_chunked(reader, opts, CHUNK, progress, replay)
}

fn load_chunked(
    reader: impl Read,
    opts: &RecoveryOptions,
    chunk: usize,
    progress: &mut dyn FnMut(u64, u64),
    replay: &mut dyn FnMut(&ReplayOp<'_>) -> Result<(), EngineError>,
) -> Result<SnapshotReport, RecoveryError> {
    let mut r = Chunked {
        reader,
        buf: Vec::new(),
        start: 0,
        pos: 0,
        eof: false,
        chunk: chunk.max(1),
    };
    r.fill(SNAPSHOT_HEADER_LEN)?;
    let header = SnapshotHeader::decode(r.avail()).map_err(|e| corrupt(0, Corruption::Header(e)))?;
    if header.shard_id != opts.shard_id || header.shard_count != opts.shard_count {
        let reason = Corruption::WrongShard {
            shard_id: header.shard_id,
            shard_count: header.shard_count,
        };
        return Err(corrupt(0, reason));
    }
    r.consume(SNAPSHOT_HEADER_LEN);

    let mut records = 0u64;
    let mut next_report = PROGRESS_EVERY;
    loop {
        if r.pos >= next_report {
            progress(r.pos, records);
            next_report = r.pos + PROGRESS_EVERY;
        }
        let off = r.pos;
        let seq = records + 1;
        r.fill(RECORD_HEADER_LEN)?;
        if matches!(peek_record_len(r.avail()), None | Some(0)) {
            // The file ends (or its zero padding starts) before the End record.
            return Err(corrupt(off, Corruption::MissingEnd));
        }
        let needed = match decode_record(r.avail(), seq) {
            Err(DecodeError::Incomplete { needed, .. }) => Some(needed),
            _ => None,
        };
        if let Some(n) = needed {
            r.fill(n)?;
        }
        let rec = decode_record(r.avail(), seq).map_err(|e| corrupt(off, Corruption::Record(e)))?;
        let len = rec.encoded_len();
        match rec.kind {
            RecordType::Set => {
                let op = ReplayOp::from_record(&rec)
                    .ok_or_else(|| corrupt(off, Corruption::UnexpectedRecord(rec.kind as u8)))?;
                replay(&op).map_err(|source| RecoveryError::SnapshotReplay {
                    offset: off,
                    sequence: seq,
                    source,
                })?;
                records += 1;
                r.consume(len);
            }
            RecordType::End => {
                let found = le_u64(rec.value, 0);
                if found != records {
                    return Err(corrupt(
                        off,
                        Corruption::BadEndCount {
                            expected: records,
                            found,
                        },
                    ));
                }
                r.consume(len);
                break;
            }
            other => return Err(corrupt(off, Corruption::UnexpectedRecord(other as u8))),
        }
    }
    // Only zeros (pre-allocation) may follow the End record.
    loop {
        let n = r.fill(chunk)?;
        if n == 0 {
            break;
        }
        if let Some(i) = r.avail().iter().position(|&b| b != 0) {
            return Err(corrupt(r.pos + i as u64, Corruption::TrailingBytes));
        }
        r.consume(n);
    }
    progress(r.pos, records);
    Ok(SnapshotReport {
        header,
        records,
        bytes: r.pos,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::recovery::KeyspaceReplay;
    use crate::{EngineConfig, Expiry, Keyspace};
    use std::collections::BTreeMap;

    const OPTS: RecoveryOptions = RecoveryOptions {
        shard_id: 3,
        shard_count: 8,
        repair: false,
        read_only: false,
    };
    const HEADER: SnapshotHeader = SnapshotHeader {
        shard_id: 3,
        shard_count: 8,
        through_seq: 777,
    };

    type Entries = Vec<(u16, Vec<u8>, Vec<u8>, Option<u64>)>;

    fn entries() -> Entries {
        let mut e: Entries = (0..300u32)
            .map(|i| {
                let exp = (i % 3 == 0).then_some(10_000 + i as u64);
                (
                    (i % 4) as u16,
                    format!("key{i}").into_bytes(),
                    vec![i as u8; (i as usize * 37) % 500],
                    exp,
                )
            })
            .collect();
        e.push((1, Vec::new(), b"empty key".to_vec(), None));
        e.push((0, b"big".to_vec(), vec![0xAB; 100_000], Some(99_999)));
        e
    }

    fn encode(entries: &Entries) -> Vec<u8> {
        let mut out = Vec::new();
        let mut enc = SnapshotEncoder::new(&HEADER, &mut out);
        for (db, k, v, e) in entries {
            enc.add(&mut out, *db, k, v, *e).unwrap();
        }
        assert_eq!(enc.records(), entries.len() as u64);
        enc.finish(&mut out);
        out
    }

    /// A reader that hands out at most `step` bytes per call.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.step).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn load(bytes: &[u8], chunk: usize, step: usize) -> Result<(SnapshotReport, Entries), RecoveryError> {
        let mut got = Entries::new();
        let r = load_chunked(Trickle { data: bytes, step }, &OPTS, chunk, &mut |_, _| {}, &mut |op| {
            if let ReplayOp::Set {
                db,
                key,
                value,
                expire_at_ms,
            } = *op
            {
                got.push((db, key.to_vec(), value.to_vec(), expire_at_ms));
            }
            Ok(())
        })?;
        Ok((r, got))
    }

    #[test]
    fn round_trip_with_any_chunk_and_read_size() {
        let e = entries();
        let bytes = encode(&e);
        assert_eq!(&bytes[..8], b"CKVSNAP\n");
        assert_eq!(SnapshotHeader::decode(&bytes).unwrap(), HEADER);
        for (chunk, step) in [(CHUNK, usize::MAX), (64, 3), (7, 1000), (4096, 1), (1, 7)] {
            let (r, got) = load(&bytes, chunk, step).unwrap();
            assert_eq!(got, e, "chunk {chunk} step {step}");
            assert_eq!(
                (r.header, r.records, r.bytes),
                (HEADER, e.len() as u64, bytes.len() as u64)
            );
        }
        // Zeros after the End record (pre-allocation) are fine; an empty snapshot is valid.
        let mut padded = bytes.clone();
        padded.resize(bytes.len() + 10_000, 0);
        assert_eq!(load(&padded, 100, 333).unwrap().0.bytes, padded.len() as u64);
        let empty = encode(&Entries::new());
        assert_eq!(empty.len(), SNAPSHOT_HEADER_LEN + 36 + 8);
        assert_eq!(load(&empty, 16, 5).unwrap().0.records, 0);
    }

    #[test]
    fn every_damage_is_refused_with_its_offset() {
        let e: Entries = entries().into_iter().take(20).collect();
        let bytes = encode(&e);
        let end_at = (bytes.len() - 44) as u64;
        // Truncation anywhere before the end of the End record.
        for cut in (0..bytes.len()).step_by(97).chain([bytes.len() - 1, end_at as usize]) {
            let err = load(&bytes[..cut], 64, 13).unwrap_err();
            assert!(
                matches!(err, RecoveryError::SnapshotCorrupt { .. }),
                "cut {cut}: {err:?}"
            );
        }
        assert!(matches!(
            load(&bytes[..end_at as usize], 64, 13),
            Err(RecoveryError::SnapshotCorrupt { offset, reason: Corruption::MissingEnd }) if offset == end_at
        ));
        // A bit flip in any record is reported at that record's offset.
        let mut starts = vec![SNAPSHOT_HEADER_LEN];
        while *starts.last().unwrap() < bytes.len() {
            let at = *starts.last().unwrap();
            starts.push(at + peek_record_len(&bytes[at..]).unwrap() as usize);
        }
        for w in starts.windows(2) {
            for at in [w[0], w[0] + 9, w[1] - 1] {
                let mut b = bytes.clone();
                b[at] ^= 0x04;
                match load(&b, 64, 1000) {
                    Err(RecoveryError::SnapshotCorrupt { offset, .. }) => assert_eq!(offset, w[0] as u64),
                    other => panic!("flip at {at}: {other:?}"),
                }
            }
        }
        let mut b = bytes.clone();
        b[20] ^= 1;
        assert!(matches!(
            load(&b, 64, 1000),
            Err(RecoveryError::SnapshotCorrupt {
                offset: 0,
                reason: Corruption::Header(HeaderError::BadCrc { .. })
            })
        ));
        // Garbage after the End record.
        let mut b = bytes.clone();
        b.extend_from_slice(&[0, 0, 0, 5]);
        assert!(matches!(
            load(&b, 64, 1000),
            Err(RecoveryError::SnapshotCorrupt { offset, reason: Corruption::TrailingBytes }) if offset == bytes.len() as u64 + 3
        ));
    }

    #[test]
    fn structure_rules() {
        let mut out = Vec::new();
        let mut enc = SnapshotEncoder::new(&HEADER, &mut out);
        enc.add(&mut out, 0, b"a", b"1", None).unwrap();
        assert_eq!(
            enc.add(&mut out, 0, b"b", b"2", Some(0)),
            Err(EncodeError::Invalid("expiry at time 0"))
        );
        // A Delete record inside a snapshot.
        append(&mut out, RecordType::Delete, 0, 2, 0, b"a", b"").unwrap();
        let at = (SNAPSHOT_HEADER_LEN + 38) as u64;
        assert!(matches!(
            load(&out, 64, 1000),
            Err(RecoveryError::SnapshotCorrupt { offset, reason: Corruption::UnexpectedRecord(2) }) if offset == at
        ));
        // An End record with the wrong count.
        out.truncate(at as usize);
        append(&mut out, RecordType::End, 0, 2, 0, b"", &5u64.to_le_bytes()).unwrap();
        assert!(matches!(
            load(&out, 64, 1000),
            Err(RecoveryError::SnapshotCorrupt {
                reason: Corruption::BadEndCount { expected: 1, found: 5 },
                ..
            })
        ));
        // Another shard's snapshot.
        let other = encode(&Entries::new());
        let opts = RecoveryOptions { shard_id: 4, ..OPTS };
        assert!(matches!(
            load_snapshot(&other[..], &opts, &mut |_| Ok(())),
            Err(RecoveryError::SnapshotCorrupt {
                offset: 0,
                reason: Corruption::WrongShard {
                    shard_id: 3,
                    shard_count: 8
                }
            })
        ));
        // Replay errors carry the record's position.
        let bytes = encode(&entries());
        let err = load_snapshot(&bytes[..], &OPTS, &mut |_| Err(EngineError::OutOfMemory)).unwrap_err();
        assert_eq!(
            err,
            RecoveryError::SnapshotReplay {
                offset: SNAPSHOT_HEADER_LEN as u64,
                sequence: 1,
                source: EngineError::OutOfMemory
            }
        );
    }

    #[test]
    fn progress_is_reported_every_64_mib() {
        let value = vec![7u8; 1 << 20];
        let mut out = Vec::new();
        let mut enc = SnapshotEncoder::new(&HEADER, &mut out);
        for i in 0..150u32 {
            enc.add(&mut out, 0, &i.to_le_bytes(), &value, None).unwrap();
        }
        enc.finish(&mut out);
        let mut calls = Vec::new();
        let r = load_snapshot_with_progress(&out[..], &OPTS, &mut |b, n| calls.push((b, n)), &mut |_| Ok(())).unwrap();
        assert_eq!(r.records, 150);
        assert_eq!(calls.len(), 3, "{calls:?}");
        assert!(calls[0].0 >= PROGRESS_EVERY && calls[0].0 < PROGRESS_EVERY + (2 << 20));
        assert_eq!(*calls.last().unwrap(), (out.len() as u64, 150));
    }

    /// A keyspace written with `scan_entries` and loaded back through [`KeyspaceReplay`] is the
    /// same, minus what expired in between.
    #[test]
    fn keyspace_round_trip() {
        let cfg = EngineConfig {
            databases: 4,
            maxmemory_bytes: 0,
            policy: Default::default(),
            eviction_samples: 5,
        };
        let mut ks = Keyspace::new(cfg.clone());
        for i in 0..5000u32 {
            let exp = match i % 4 {
                0 => Expiry::At(2_000),
                1 => Expiry::At(1_000_000),
                _ => Expiry::Persist,
            };
            ks.set(
                (i % 4) as usize,
                &i.to_be_bytes(),
                &vec![i as u8; i as usize % 300],
                exp,
                1_000,
            )
            .unwrap();
        }
        let mut out = Vec::new();
        let mut enc = SnapshotEncoder::new(&HEADER, &mut out);
        for db in 0..4 {
            let mut cursor = 0;
            loop {
                cursor = ks.scan_entries(db, cursor, 100, 1_000, &mut |k, v, e| {
                    enc.add(&mut out, db as u16, k, v, e).unwrap();
                });
                if cursor == 0 {
                    break;
                }
            }
        }
        enc.finish(&mut out);
        let mut copy = Keyspace::new(cfg);
        let mut rp = KeyspaceReplay::new(&mut copy);
        let r = load_snapshot(&out[..], &OPTS, &mut |op| rp.apply(op)).unwrap();
        assert_eq!(r.records, 5000);
        assert_eq!(rp.finish(5_000), 1250);
        let dump = |ks: &mut Keyspace| {
            let mut m = BTreeMap::new();
            for db in 0..4 {
                let mut keys = Vec::new();
                ks.for_each_key(db, 5_000, &mut |k| keys.push(k.to_vec()));
                for k in keys {
                    let v = ks.peek(db, &k, 5_000).unwrap().to_vec();
                    m.insert((db, k.clone()), (v, ks.info(db, &k, 5_000).unwrap().expire_at_ms));
                }
            }
            m
        };
        let want = dump(&mut ks);
        assert_eq!(want.len(), 3750);
        assert_eq!(dump(&mut copy), want);
    }
}
