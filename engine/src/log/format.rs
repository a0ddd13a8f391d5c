//! The on-disk format of a shard's persistence log: the segment header and the record encoding.
//!
//! Everything is little-endian. A segment file starts with a [`SegmentHeader`] padded to
//! [`SEGMENT_HEADER_LEN`] (4096 bytes, the O_DIRECT alignment), followed by records back to back.
//! A record is a fixed [`RECORD_HEADER_LEN`]-byte header, the key, the value and a CRC32
//! (crc32fast, IEEE polynomial) over everything before it. A zero length field where a record
//! would start marks the end of the written data (segment files may be pre-allocated with zeros).
//! The byte tables and the writer's write/sync order are in `engine/FORMAT.md`.
//!
//! [`encode_record`] writes into a caller-provided buffer and never allocates; [`decode_record`]
//! returns a [`Record`] borrowing from the input, or a typed [`DecodeError`].

/// The first 8 bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"CKVLOG\r\n";
/// The format version this code writes and reads.
pub const FORMAT_VERSION: u16 = 1;
/// Bytes of the segment header that carry data (the rest of the 4096-byte block is zero).
pub const SEGMENT_HEADER_DATA_LEN: usize = 44;
/// The segment header occupies one aligned block; records start at this offset.
pub const SEGMENT_HEADER_LEN: usize = 4096;
/// The fixed part of a record, before the key.
pub const RECORD_HEADER_LEN: usize = 32;
/// The CRC32 that ends every record.
pub const RECORD_CRC_LEN: usize = 4;
/// Header + CRC: the size of a record with an empty key and value.
pub const RECORD_OVERHEAD: usize = RECORD_HEADER_LEN + RECORD_CRC_LEN;
/// Largest key a record may carry (Redis's bulk-string limit).
pub const MAX_KEY_LEN: usize = 512 << 20;
/// Largest value a record may carry (Redis's bulk-string limit).
pub const MAX_VALUE_LEN: usize = 512 << 20;
/// Largest encoded record.
pub const MAX_RECORD_LEN: usize = RECORD_OVERHEAD + MAX_KEY_LEN + MAX_VALUE_LEN;

const _: () = assert!(SEGMENT_HEADER_DATA_LEN == 8 + 2 + 2 + 4 + 4 + 4 + 8 + 8 + 4);
const _: () = assert!(SEGMENT_HEADER_DATA_LEN <= SEGMENT_HEADER_LEN);
const _: () = assert!(SEGMENT_HEADER_LEN == 4096);
const _: () = assert!(RECORD_HEADER_LEN == 4 + 1 + 2 + 1 + 8 + 8 + 4 + 4);
const _: () = assert!(MAX_RECORD_LEN <= u32::MAX as usize);

// Record header field offsets.
const R_LEN: usize = 0;
const R_TYPE: usize = 4;
const R_DB: usize = 5;
const R_FLAGS: usize = 7;
const R_SEQ: usize = 8;
const R_EXPIRY: usize = 16;
const R_KEY_LEN: usize = 24;
const R_VALUE_LEN: usize = 28;
const _: () = assert!(R_VALUE_LEN + 4 == RECORD_HEADER_LEN);

// Segment header field offsets.
const H_MAGIC: usize = 0;
const H_VERSION: usize = 8;
const H_RESERVED16: usize = 10;
const H_SHARD_ID: usize = 12;
const H_SHARD_COUNT: usize = 16;
const H_RESERVED32: usize = 20;
const H_SEGMENT_SEQ: usize = 24;
const H_FIRST_SEQ: usize = 32;
const H_CRC: usize = 40;
const _: () = assert!(H_CRC + 4 == SEGMENT_HEADER_DATA_LEN);

/// What a record does when replayed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RecordType {
    /// Set `key` to `value`; `expiry_ms` is the absolute expiry (0 = no TTL).
    Set = 1,
    /// Delete `key`.
    Delete = 2,
    /// Give `key` the absolute expiry `expiry_ms` (never 0).
    Expire = 3,
    /// Remove `key`'s TTL.
    Persist = 4,
    /// Empty database `db`.
    FlushDb = 5,
    /// Empty every database.
    FlushAll = 6,
    /// Swap databases `db` and the one whose number is the key (2 bytes, little-endian).
    SwapDb = 7,
    /// Ends a snapshot: the value is the snapshot's record count (8 bytes, little-endian). Never
    /// valid in a segment.
    End = 8,
}

impl RecordType {
    /// All record types, for tests and exhaustive checks.
    pub const ALL: [RecordType; 8] = [
        RecordType::Set,
        RecordType::Delete,
        RecordType::Expire,
        RecordType::Persist,
        RecordType::FlushDb,
        RecordType::FlushAll,
        RecordType::SwapDb,
        RecordType::End,
    ];

    pub fn from_u8(b: u8) -> Option<RecordType> {
        Self::ALL.into_iter().find(|t| *t as u8 == b)
    }
}

/// A record, borrowing its key and value (from the caller when encoding, from the input buffer
/// when decoding).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub kind: RecordType,
    pub db: u16,
    /// Reserved: must be 0 in format version 1.
    pub flags: u8,
    /// Log sequence number: consecutive within a shard's log, across segments.
    pub sequence: u64,
    /// Absolute expiry in ms since the Unix epoch; 0 = none.
    pub expiry_ms: u64,
    pub key: &'a [u8],
    pub value: &'a [u8],
}

impl Record<'_> {
    /// Bytes this record takes on disk.
    pub fn encoded_len(&self) -> usize {
        RECORD_OVERHEAD + self.key.len() + self.value.len()
    }

    /// Checks the rules each record type imposes on its fields (shared by encoder and decoder).
    fn check_shape(&self) -> Result<(), &'static str> {
        if self.flags != 0 {
            return Err("unknown flags");
        }
        // Allowed key and value lengths (None = any), and the expiry rule (None = any,
        // Some(true) = non-zero, Some(false) = zero). An empty key is a valid key (Redis allows it).
        let (key, value, expiry): (Option<usize>, Option<usize>, Option<bool>) = match self.kind {
            RecordType::Set => (None, None, None),
            RecordType::Delete | RecordType::Persist => (None, Some(0), Some(false)),
            RecordType::Expire => (None, Some(0), Some(true)),
            RecordType::FlushDb | RecordType::FlushAll => (Some(0), Some(0), Some(false)),
            RecordType::SwapDb => (Some(2), Some(0), Some(false)),
            RecordType::End => (Some(0), Some(8), Some(false)),
        };
        if key.is_some_and(|n| n != self.key.len()) {
            return Err(if self.key.is_empty() {
                "missing key"
            } else {
                "unexpected key"
            });
        }
        if value.is_some_and(|n| n != self.value.len()) {
            return Err(if self.value.is_empty() {
                "missing value"
            } else {
                "unexpected value"
            });
        }
        match expiry {
            Some(true) if self.expiry_ms == 0 => return Err("missing expiry"),
            Some(false) if self.expiry_ms != 0 => return Err("unexpected expiry"),
            _ => {}
        }
        if matches!(self.kind, RecordType::FlushAll | RecordType::End) && self.db != 0 {
            return Err("db on a record that has none");
        }
        if self.key.len() > MAX_KEY_LEN || self.value.len() > MAX_VALUE_LEN {
            return Err("key or value too large");
        }
        Ok(())
    }
}

/// Why a record could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    #[error("buffer too small: record needs {needed} bytes, buffer has {available}")]
    BufferTooSmall { needed: usize, available: usize },
    #[error("invalid record: {0}")]
    Invalid(&'static str),
}

/// Why the bytes at an offset are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Fewer bytes than the record header or than the record's length field says: a torn or
    /// incomplete write (only acceptable at the end of the newest segment).
    #[error("incomplete record: need {needed} bytes, have {available}")]
    Incomplete { needed: usize, available: usize },
    /// The length field disagrees with the key and value lengths, or is out of range.
    #[error("bad record length {length} (key {key_len}, value {value_len})")]
    BadLength { length: u32, key_len: u32, value_len: u32 },
    #[error("unknown record type {0}")]
    BadType(u8),
    #[error("record CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadCrc { stored: u32, computed: u32 },
    /// CRC-valid but its fields break the rules of its type (a writer bug).
    #[error("malformed record: {0}")]
    Malformed(&'static str),
    #[error("sequence gap: expected {expected}, found {found}")]
    SequenceGap { expected: u64, found: u64 },
}

/// Why a segment header is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    #[error("incomplete segment header: {available} of {SEGMENT_HEADER_LEN} bytes")]
    Incomplete { available: usize },
    #[error("bad segment magic")]
    BadMagic,
    #[error("unsupported segment format version {0}")]
    UnsupportedVersion(u16),
    #[error("segment header CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadCrc { stored: u32, computed: u32 },
    #[error("segment header reserved field is not zero")]
    Reserved,
}

/// Encodes `rec` at the start of `buf`; returns the bytes written. Never allocates.
pub fn encode_record(rec: &Record<'_>, buf: &mut [u8]) -> Result<usize, EncodeError> {
    rec.check_shape().map_err(EncodeError::Invalid)?;
    let len = rec.encoded_len();
    if buf.len() < len {
        return Err(EncodeError::BufferTooSmall {
            needed: len,
            available: buf.len(),
        });
    }
    let out = &mut buf[..len];
    out[R_LEN..R_LEN + 4].copy_from_slice(&(len as u32).to_le_bytes());
    out[R_TYPE] = rec.kind as u8;
    out[R_DB..R_DB + 2].copy_from_slice(&rec.db.to_le_bytes());
    out[R_FLAGS] = rec.flags;
    out[R_SEQ..R_SEQ + 8].copy_from_slice(&rec.sequence.to_le_bytes());
    out[R_EXPIRY..R_EXPIRY + 8].copy_from_slice(&rec.expiry_ms.to_le_bytes());
    out[R_KEY_LEN..R_KEY_LEN + 4].copy_from_slice(&(rec.key.len() as u32).to_le_bytes());
    out[R_VALUE_LEN..R_VALUE_LEN + 4].copy_from_slice(&(rec.value.len() as u32).to_le_bytes());
    let key_end = RECORD_HEADER_LEN + rec.key.len();
    out[RECORD_HEADER_LEN..key_end].copy_from_slice(rec.key);
    out[key_end..key_end + rec.value.len()].copy_from_slice(rec.value);
    let crc = crc32fast::hash(&out[..len - RECORD_CRC_LEN]);
    out[len - RECORD_CRC_LEN..].copy_from_slice(&crc.to_le_bytes());
    Ok(len)
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The record's length field at the start of `buf`, if at least 4 bytes are there. 0 marks the
/// end of the written data.
pub fn peek_record_len(buf: &[u8]) -> Option<u32> {
    (buf.len() >= 4).then(|| u32_at(buf, R_LEN))
}

/// Decodes the record at the start of `buf`, which must carry sequence `expected_seq`.
///
/// Checks, in order: enough bytes for the header, the length field against the key/value lengths
/// and limits, the type, enough bytes for the whole record, the CRC, the type's field rules, and
/// last the sequence. The record's size on disk is [`Record::encoded_len`].
pub fn decode_record(buf: &[u8], expected_seq: u64) -> Result<Record<'_>, DecodeError> {
    if buf.len() < RECORD_HEADER_LEN {
        return Err(DecodeError::Incomplete {
            needed: RECORD_HEADER_LEN,
            available: buf.len(),
        });
    }
    let length = u32_at(buf, R_LEN);
    let key_len = u32_at(buf, R_KEY_LEN);
    let value_len = u32_at(buf, R_VALUE_LEN);
    let bad_length = || DecodeError::BadLength {
        length,
        key_len,
        value_len,
    };
    if key_len as usize > MAX_KEY_LEN || value_len as usize > MAX_VALUE_LEN {
        return Err(bad_length());
    }
    let len = RECORD_OVERHEAD + key_len as usize + value_len as usize;
    if length as usize != len {
        return Err(bad_length());
    }
    let kind = RecordType::from_u8(buf[R_TYPE]).ok_or(DecodeError::BadType(buf[R_TYPE]))?;
    if buf.len() < len {
        return Err(DecodeError::Incomplete {
            needed: len,
            available: buf.len(),
        });
    }
    let stored = u32_at(buf, len - RECORD_CRC_LEN);
    let computed = crc32fast::hash(&buf[..len - RECORD_CRC_LEN]);
    if stored != computed {
        return Err(DecodeError::BadCrc { stored, computed });
    }
    let key_end = RECORD_HEADER_LEN + key_len as usize;
    let rec = Record {
        kind,
        db: u16_at(buf, R_DB),
        flags: buf[R_FLAGS],
        sequence: u64_at(buf, R_SEQ),
        expiry_ms: u64_at(buf, R_EXPIRY),
        key: &buf[RECORD_HEADER_LEN..key_end],
        value: &buf[key_end..key_end + value_len as usize],
    };
    rec.check_shape().map_err(DecodeError::Malformed)?;
    if rec.sequence != expected_seq {
        return Err(DecodeError::SequenceGap {
            expected: expected_seq,
            found: rec.sequence,
        });
    }
    Ok(rec)
}

/// The header at the start of every segment file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    pub shard_id: u32,
    pub shard_count: u32,
    /// The segment's own number: consecutive across a shard's segment files.
    pub segment_seq: u64,
    /// The sequence of the segment's first record (the next sequence if it holds none).
    pub first_record_seq: u64,
}

impl SegmentHeader {
    /// Writes the header block (data, CRC, zero padding) into `buf[..SEGMENT_HEADER_LEN]`.
    ///
    /// # Panics
    /// If `buf` is shorter than [`SEGMENT_HEADER_LEN`].
    pub fn encode(&self, buf: &mut [u8]) {
        let out = &mut buf[..SEGMENT_HEADER_LEN];
        out.fill(0);
        out[H_MAGIC..H_MAGIC + 8].copy_from_slice(&SEGMENT_MAGIC);
        out[H_VERSION..H_VERSION + 2].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        out[H_SHARD_ID..H_SHARD_ID + 4].copy_from_slice(&self.shard_id.to_le_bytes());
        out[H_SHARD_COUNT..H_SHARD_COUNT + 4].copy_from_slice(&self.shard_count.to_le_bytes());
        out[H_SEGMENT_SEQ..H_SEGMENT_SEQ + 8].copy_from_slice(&self.segment_seq.to_le_bytes());
        out[H_FIRST_SEQ..H_FIRST_SEQ + 8].copy_from_slice(&self.first_record_seq.to_le_bytes());
        let crc = crc32fast::hash(&out[..H_CRC]);
        out[H_CRC..H_CRC + 4].copy_from_slice(&crc.to_le_bytes());
    }

    /// Decodes the header at the start of `buf` (which must hold the whole 4096-byte block).
    pub fn decode(buf: &[u8]) -> Result<SegmentHeader, HeaderError> {
        if buf.len() < SEGMENT_HEADER_LEN {
            return Err(HeaderError::Incomplete { available: buf.len() });
        }
        if buf[H_MAGIC..H_MAGIC + 8] != SEGMENT_MAGIC {
            return Err(HeaderError::BadMagic);
        }
        let stored = u32_at(buf, H_CRC);
        let computed = crc32fast::hash(&buf[..H_CRC]);
        if stored != computed {
            return Err(HeaderError::BadCrc { stored, computed });
        }
        let version = u16_at(buf, H_VERSION);
        if version != FORMAT_VERSION {
            return Err(HeaderError::UnsupportedVersion(version));
        }
        if u16_at(buf, H_RESERVED16) != 0 || u32_at(buf, H_RESERVED32) != 0 {
            return Err(HeaderError::Reserved);
        }
        Ok(SegmentHeader {
            shard_id: u32_at(buf, H_SHARD_ID),
            shard_count: u32_at(buf, H_SHARD_COUNT),
            segment_seq: u64_at(buf, H_SEGMENT_SEQ),
            first_record_seq: u64_at(buf, H_FIRST_SEQ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set<'a>(seq: u64, key: &'a [u8], value: &'a [u8], expiry_ms: u64) -> Record<'a> {
        Record {
            kind: RecordType::Set,
            db: 3,
            flags: 0,
            sequence: seq,
            expiry_ms,
            key,
            value,
        }
    }

    #[test]
    fn round_trip_each_type() {
        let recs = [
            set(7, b"key", b"value", 0),
            set(8, b"k", b"", 1_700_000_000_000),
            Record {
                kind: RecordType::Delete,
                db: 1,
                flags: 0,
                sequence: 9,
                expiry_ms: 0,
                key: b"k",
                value: b"",
            },
            Record {
                kind: RecordType::Expire,
                db: 1,
                flags: 0,
                sequence: 10,
                expiry_ms: 5,
                key: b"k",
                value: b"",
            },
            Record {
                kind: RecordType::Persist,
                db: 1,
                flags: 0,
                sequence: 11,
                expiry_ms: 0,
                key: b"k",
                value: b"",
            },
            Record {
                kind: RecordType::FlushDb,
                db: 15,
                flags: 0,
                sequence: 12,
                expiry_ms: 0,
                key: b"",
                value: b"",
            },
            Record {
                kind: RecordType::FlushAll,
                db: 0,
                flags: 0,
                sequence: 13,
                expiry_ms: 0,
                key: b"",
                value: b"",
            },
        ];
        let mut buf = [0u8; 128];
        for r in recs {
            let n = encode_record(&r, &mut buf).unwrap();
            assert_eq!(n, r.encoded_len());
            assert_eq!(peek_record_len(&buf), Some(n as u32));
            assert_eq!(decode_record(&buf[..n], r.sequence).unwrap(), r);
            // Trailing bytes are not part of the record.
            assert_eq!(decode_record(&buf, r.sequence).unwrap(), r);
        }
    }

    #[test]
    fn swap_db_and_end_records() {
        let swap = Record {
            kind: RecordType::SwapDb,
            db: 2,
            flags: 0,
            sequence: 4,
            expiry_ms: 0,
            key: &9u16.to_le_bytes(),
            value: b"",
        };
        let end = Record {
            kind: RecordType::End,
            db: 0,
            flags: 0,
            sequence: 5,
            expiry_ms: 0,
            key: b"",
            value: &42u64.to_le_bytes(),
        };
        let mut buf = [0u8; 64];
        for r in [swap, end] {
            let n = encode_record(&r, &mut buf).unwrap();
            assert_eq!(buf[4], r.kind as u8);
            assert_eq!(decode_record(&buf[..n], r.sequence).unwrap(), r);
        }
        assert_eq!(RecordType::from_u8(7), Some(RecordType::SwapDb));
        assert_eq!(RecordType::from_u8(8), Some(RecordType::End));
        assert_eq!(RecordType::from_u8(9), None);
        let bad = [
            Record { key: b"\x01", ..swap },
            Record {
                key: b"\x01\0\0",
                ..swap
            },
            Record { value: b"v", ..swap },
            Record { expiry_ms: 1, ..swap },
            Record { value: &[0; 7], ..end },
            Record { key: b"k", ..end },
            Record { db: 1, ..end },
        ];
        for r in bad {
            assert!(
                matches!(encode_record(&r, &mut buf), Err(EncodeError::Invalid(_))),
                "{r:?}"
            );
        }
    }

    #[test]
    fn byte_layout_is_fixed() {
        let mut buf = [0u8; 64];
        let n = encode_record(&set(0x0102_0304_0506_0708, b"ab", b"xyz", 0x1122), &mut buf).unwrap();
        assert_eq!(n, 36 + 5);
        assert_eq!(&buf[0..4], &41u32.to_le_bytes());
        assert_eq!(buf[4], 1);
        assert_eq!(&buf[5..7], &3u16.to_le_bytes());
        assert_eq!(buf[7], 0);
        assert_eq!(&buf[8..16], &0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(&buf[16..24], &0x1122u64.to_le_bytes());
        assert_eq!(&buf[24..28], &2u32.to_le_bytes());
        assert_eq!(&buf[28..32], &3u32.to_le_bytes());
        assert_eq!(&buf[32..37], b"abxyz");
        assert_eq!(&buf[37..41], &crc32fast::hash(&buf[..37]).to_le_bytes());
    }

    #[test]
    fn encoder_rejects_small_buffers_and_bad_shapes() {
        let mut buf = [0u8; 40];
        assert_eq!(
            encode_record(&set(1, b"key", b"value", 0), &mut buf),
            Err(EncodeError::BufferTooSmall {
                needed: 44,
                available: 40
            })
        );
        let bad = [
            Record {
                flags: 1,
                ..set(1, b"k", b"", 0)
            },
            Record {
                kind: RecordType::Delete,
                ..set(1, b"k", b"v", 0)
            },
            Record {
                kind: RecordType::Expire,
                ..set(1, b"k", b"", 0)
            },
            Record {
                kind: RecordType::Persist,
                ..set(1, b"k", b"", 9)
            },
            Record {
                kind: RecordType::FlushDb,
                ..set(1, b"k", b"", 0)
            },
            Record {
                kind: RecordType::FlushAll,
                ..set(1, b"", b"", 0)
            }, // db 3
        ];
        let mut big = [0u8; 128];
        for r in bad {
            assert!(
                matches!(encode_record(&r, &mut big), Err(EncodeError::Invalid(_))),
                "{r:?}"
            );
        }
    }

    #[test]
    fn hostile_inputs() {
        let mut buf = [0u8; 64];
        let n = encode_record(&set(5, b"key", b"val", 0), &mut buf).unwrap();
        let good = buf;

        // Every truncation is Incomplete.
        for cut in 0..n {
            assert!(
                matches!(decode_record(&good[..cut], 5), Err(DecodeError::Incomplete { .. })),
                "cut {cut}"
            );
        }
        // Every single-bit flip is detected (never decodes to a record).
        for byte in 0..n {
            for bit in 0..8 {
                let mut b = good;
                b[byte] ^= 1 << bit;
                assert!(decode_record(&b[..n], 5).is_err(), "flip {byte}.{bit}");
            }
        }
        // Specific errors.
        let mut b = good;
        b[4] = 99;
        assert_eq!(decode_record(&b, 5), Err(DecodeError::BadType(99)));
        let mut b = good;
        b[0..4].copy_from_slice(&1000u32.to_le_bytes());
        assert!(matches!(
            decode_record(&b, 5),
            Err(DecodeError::BadLength { length: 1000, .. })
        ));
        let mut b = good;
        b[24..28].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode_record(&b, 5), Err(DecodeError::BadLength { .. })));
        let mut b = good;
        b[35] ^= 0x80;
        assert!(matches!(decode_record(&b, 5), Err(DecodeError::BadCrc { .. })));
        assert_eq!(
            decode_record(&good, 6),
            Err(DecodeError::SequenceGap { expected: 6, found: 5 })
        );
        // Zeros (pre-allocated space) are never a record.
        assert!(decode_record(&[0u8; 64], 0).is_err());
        assert_eq!(peek_record_len(&[0u8; 64]), Some(0));
        // A CRC-valid record that breaks its type's rules.
        let mut b = good;
        b[4] = RecordType::FlushAll as u8;
        let crc = crc32fast::hash(&b[..n - 4]);
        b[n - 4..n].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(decode_record(&b, 5), Err(DecodeError::Malformed(_))));
    }

    #[test]
    fn segment_header_round_trip_and_damage() {
        let h = SegmentHeader {
            shard_id: 2,
            shard_count: 8,
            segment_seq: 17,
            first_record_seq: 1234,
        };
        let mut block = vec![0xAAu8; SEGMENT_HEADER_LEN + 10];
        h.encode(&mut block);
        assert!(block[SEGMENT_HEADER_DATA_LEN..SEGMENT_HEADER_LEN]
            .iter()
            .all(|&b| b == 0));
        assert_eq!(&block[..8], b"CKVLOG\r\n");
        assert_eq!(SegmentHeader::decode(&block), Ok(h));
        assert_eq!(
            SegmentHeader::decode(&block[..100]),
            Err(HeaderError::Incomplete { available: 100 })
        );
        let mut b = block.clone();
        b[0] ^= 1;
        assert_eq!(SegmentHeader::decode(&b), Err(HeaderError::BadMagic));
        for byte in 8..SEGMENT_HEADER_DATA_LEN {
            let mut b = block.clone();
            b[byte] ^= 0x10;
            assert!(
                matches!(SegmentHeader::decode(&b), Err(HeaderError::BadCrc { .. })),
                "byte {byte}"
            );
        }
        let mut b = block.clone();
        b[8] = 2;
        let crc = crc32fast::hash(&b[..40]);
        b[40..44].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(SegmentHeader::decode(&b), Err(HeaderError::UnsupportedVersion(2)));
    }

    fn arb_record() -> impl Strategy<Value = (u8, u16, u64, u64, Vec<u8>, Vec<u8>)> {
        (
            0u8..8,
            any::<u16>(),
            any::<u64>(),
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 1..64),
            proptest::collection::vec(any::<u8>(), 0..300),
        )
    }

    proptest! {
        #[test]
        fn random_records_round_trip((t, db, seq, exp, key, value) in arb_record(), junk in any::<u8>()) {
            let kind = RecordType::ALL[t as usize];
            let (db, exp, key, value): (u16, u64, &[u8], &[u8]) = match kind {
                RecordType::Set => (db, exp, &key, &value),
                RecordType::Expire => (db, exp.max(1), &key, &[]),
                RecordType::Delete | RecordType::Persist => (db, 0, &key, &[]),
                RecordType::FlushDb => (db, 0, &[], &[]),
                RecordType::FlushAll => (0, 0, &[], &[]),
                RecordType::SwapDb => (db, 0, &key[..2.min(key.len())], &[]),
                RecordType::End => (0, 0, &[], &value[..8.min(value.len())]),
            };
            if kind == RecordType::SwapDb && key.len() != 2 || kind == RecordType::End && value.len() != 8 {
                return Ok(());
            }
            let rec = Record { kind, db, flags: 0, sequence: seq, expiry_ms: exp, key, value };
            let mut buf = vec![junk; rec.encoded_len() + 8];
            let n = encode_record(&rec, &mut buf).unwrap();
            prop_assert_eq!(n, rec.encoded_len());
            prop_assert_eq!(decode_record(&buf, seq).unwrap(), rec);
            prop_assert!(decode_record(&buf[..n - 1], seq).is_err());
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200), seq in any::<u64>()) {
            let _ = decode_record(&bytes, seq);
            let _ = SegmentHeader::decode(&bytes);
        }
    }
}
