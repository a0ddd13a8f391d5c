//! Batches: many operations in one frame (PROTOCOL.md, "Batches").
//!
//! A batch frame has the BATCH flag, its entry count in `arg`, and its entries in the value
//! section, each `key_len u32 | value_len u32 | key | value`. `value_len` = [`ABSENT`]
//! (`0xFFFF_FFFF`) marks a missing value (a key MGET did not find). [`Batch`] keeps the validated
//! section as one `Bytes` and iterates over it: decoding a batch of any size allocates nothing.

use bytes::{Bytes, BytesMut};

use super::error::FrameError;
use super::frame::{len32, FrameWriter, Limits};
use super::header::{u32_at, Flags, Opcode};

/// Size of an entry's header (`key_len u32 | value_len u32`).
pub const ENTRY_HEADER_LEN: usize = 8;
/// `value_len` of an entry whose value is missing.
pub const ABSENT: u32 = u32::MAX;

/// What a batch's entries must look like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchKind {
    /// MGET request: keys, every `value_len` 0.
    Keys,
    /// MSET request: key and value pairs (no [`ABSENT`]).
    Pairs,
    /// VALUE response to MGET: every `key_len` 0, values or [`ABSENT`].
    Values,
}

/// One entry of a batch. `value` is `None` for an absent value and for MGET's keys (whose
/// `value_len` is 0 on the wire); [`Batch::build`] writes MGET keys that way whatever it is given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchEntry {
    pub key: Bytes,
    pub value: Option<Bytes>,
}

/// A validated batch section: `count` entries laid end to end in `body`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    kind: BatchKind,
    count: u32,
    body: Bytes,
}

impl Batch {
    /// Checks that `body` holds exactly `count` entries of `kind`. `count` comes from the peer, so
    /// it is checked against the limit and against what `body` can hold before anything else.
    pub fn parse(kind: BatchKind, count: u64, body: Bytes, limits: &Limits) -> Result<Batch, FrameError> {
        if count > u64::from(limits.max_batch_count) {
            return Err(FrameError::BatchTooLarge {
                count,
                max: limits.max_batch_count.into(),
            });
        }
        // count ≤ max_batch_count (a u32).
        let count = count as u32;
        let fits = (count as usize)
            .checked_mul(ENTRY_HEADER_LEN)
            .is_some_and(|min| min <= body.len());
        if !fits {
            return Err(FrameError::BatchMismatch("count exceeds what the section can hold"));
        }
        let mut pos = 0usize;
        for _ in 0..count {
            let Some(head) = body.get(pos..).filter(|rest| rest.len() >= ENTRY_HEADER_LEN) else {
                return Err(FrameError::BatchMismatch("entry header runs past the section"));
            };
            let key_len = u32_at(head, 0);
            let value_len = u32_at(head, 4);
            if key_len > limits.max_key_len {
                return Err(FrameError::EntryKeyTooLarge {
                    len: key_len.into(),
                    max: limits.max_key_len.into(),
                });
            }
            let shape_ok = match kind {
                BatchKind::Keys => value_len == 0,
                BatchKind::Pairs => value_len != ABSENT,
                BatchKind::Values => key_len == 0,
            };
            if !shape_ok {
                return Err(FrameError::BatchMismatch(match kind {
                    BatchKind::Keys => "MGET entry with a value",
                    BatchKind::Pairs => "MSET entry without a value",
                    BatchKind::Values => "VALUE batch entry with a key",
                }));
            }
            let value_bytes = if value_len == ABSENT { 0 } else { value_len as usize };
            pos = pos
                .checked_add(ENTRY_HEADER_LEN + key_len as usize)
                .and_then(|p| p.checked_add(value_bytes))
                .filter(|&end| end <= body.len())
                .ok_or(FrameError::BatchMismatch("entry runs past the section"))?;
        }
        if pos != body.len() {
            return Err(FrameError::BatchMismatch("bytes after the last entry"));
        }
        Ok(Batch { kind, count, body })
    }

    /// Builds a batch in memory (allocates; for tests and callers off the hot path).
    pub fn build<'a>(kind: BatchKind, entries: impl IntoIterator<Item = (&'a [u8], Option<&'a [u8]>)>) -> Batch {
        let mut body = BytesMut::new();
        let mut count = 0u32;
        for (key, value) in entries {
            let value = if kind == BatchKind::Keys { Some(&[][..]) } else { value };
            put_entry(&mut body, key, value);
            count = count.checked_add(1).expect("batch of 2^32 entries");
        }
        Batch {
            kind,
            count,
            body: body.freeze(),
        }
    }

    pub fn kind(&self) -> BatchKind {
        self.kind
    }
    pub fn len(&self) -> usize {
        self.count as usize
    }
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
    /// The raw entries section, as it travels in the value section.
    pub fn body(&self) -> &Bytes {
        &self.body
    }
    pub fn iter(&self) -> BatchIter<'_> {
        BatchIter {
            keys_only: self.kind == BatchKind::Keys,
            body: &self.body,
            pos: 0,
            left: self.count,
        }
    }
}

impl<'a> IntoIterator for &'a Batch {
    type Item = BatchEntry;
    type IntoIter = BatchIter<'a>;
    fn into_iter(self) -> BatchIter<'a> {
        self.iter()
    }
}

/// Iterates over a validated batch; each key and value is a slice of the frame.
pub struct BatchIter<'a> {
    keys_only: bool,
    body: &'a Bytes,
    pos: usize,
    left: u32,
}

impl Iterator for BatchIter<'_> {
    type Item = BatchEntry;

    fn next(&mut self) -> Option<BatchEntry> {
        if self.left == 0 {
            return None;
        }
        // The batch was validated, so these bounds hold; `get` keeps a broken invariant from
        // turning into a panic.
        let head = self.body.get(self.pos..self.pos + ENTRY_HEADER_LEN)?;
        let key_len = u32_at(head, 0) as usize;
        let value_len = u32_at(head, 4);
        let key_start = self.pos + ENTRY_HEADER_LEN;
        let key_end = key_start + key_len;
        let (value, end) = if value_len == ABSENT {
            (None, key_end)
        } else {
            let end = key_end + value_len as usize;
            (Some(key_end..end), end)
        };
        if end > self.body.len() {
            return None;
        }
        self.pos = end;
        self.left -= 1;
        Some(BatchEntry {
            key: self.body.slice(key_start..key_end),
            value: value.filter(|_| !self.keys_only).map(|range| self.body.slice(range)),
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.left as usize))
    }
}

fn put_entry(out: &mut BytesMut, key: &[u8], value: Option<&[u8]>) {
    let value_len = match value {
        Some(v) => {
            let len = len32(v.len());
            assert!(len != ABSENT, "batch value of 4 GiB - 1 bytes");
            len
        }
        None => ABSENT,
    };
    out.reserve(ENTRY_HEADER_LEN + key.len() + value.map_or(0, <[u8]>::len));
    out.extend_from_slice(&len32(key.len()).to_le_bytes());
    out.extend_from_slice(&value_len.to_le_bytes());
    out.extend_from_slice(key);
    if let Some(v) = value {
        out.extend_from_slice(v);
    }
}

/// Writes one batch frame straight into an output buffer, entry by entry.
///
/// The header is completed (section length, count, CRC) by [`BatchEncoder::finish`] or when the
/// encoder is dropped, so an abandoned encoder still leaves a well-formed frame.
pub struct BatchEncoder<'a> {
    out: &'a mut BytesMut,
    writer: Option<FrameWriter>,
    body_start: usize,
    count: u32,
}

impl<'a> BatchEncoder<'a> {
    /// Starts an MGET request (`keys`), an MSET request (`pairs`) or a VALUE response (`values`).
    ///
    /// # Panics
    /// If `opcode` is not MGET, MSET or VALUE.
    pub fn begin(out: &'a mut BytesMut, opcode: Opcode, request_id: u64, crc: bool) -> Self {
        assert!(
            matches!(opcode, Opcode::MGet | Opcode::MSet | Opcode::Value),
            "{opcode:?} has no batch form"
        );
        let flags = if crc {
            Flags::BATCH | Flags::HAS_CRC
        } else {
            Flags::BATCH
        };
        let writer = FrameWriter::begin(out, opcode as u8, flags, request_id, 0);
        let body_start = out.len();
        BatchEncoder {
            out,
            writer: Some(writer),
            body_start,
            count: 0,
        }
    }

    /// Appends an MGET key.
    pub fn key(&mut self, key: &[u8]) {
        self.entry(key, Some(&[]));
    }
    /// Appends an MSET pair.
    pub fn pair(&mut self, key: &[u8], value: &[u8]) {
        self.entry(key, Some(value));
    }
    /// Appends an MGET result: a value, or `None` for a key that was not found.
    pub fn value(&mut self, value: Option<&[u8]>) {
        self.entry(&[], value);
    }
    /// Appends a raw entry; the methods above keep the entries in the shape their opcode needs.
    pub fn entry(&mut self, key: &[u8], value: Option<&[u8]>) {
        put_entry(self.out, key, value);
        self.count = self.count.checked_add(1).expect("batch of 2^32 entries");
    }

    /// Completes the frame.
    pub fn finish(self) {}
}

impl Drop for BatchEncoder<'_> {
    fn drop(&mut self) {
        if let Some(mut writer) = self.writer.take() {
            writer.set_arg(self.count.into());
            let body_len = self.out.len() - self.body_start;
            writer.finish(self.out, 0, body_len, 0);
        }
    }
}
