//! Framing: the incremental, zero-copy [`FrameDecoder`] and the raw frame writer.
//!
//! The decoder waits for a whole 40-byte header, checks it (magic, version, reserved bytes,
//! lengths against [`Limits`] and against the declared frame length), waits for the whole frame,
//! checks its CRC if it has one, and hands out the key, value and extra sections as `Bytes`
//! slices of the connection's buffer. Nothing is allocated and nothing is sized from a length
//! field, and because every check runs on the complete header or the complete frame, any split
//! of a byte stream into reads yields the same frames and the same error.

use bytes::{Bytes, BytesMut};

use super::error::FrameError;
use super::header::{Flags, Header, CRC_LEN, HEADER_LEN};

/// Decoder limits. Lengths above them are fatal: they are detected from the header alone, before
/// any of the frame's body is buffered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest whole frame (header, sections and CRC), default 512 MiB + the 40-byte header.
    pub max_frame_len: u32,
    /// Largest key, in the key section or in a batch entry, default 64 KiB.
    pub max_key_len: u32,
    /// Largest value section and largest extra section, default 512 MiB.
    pub max_value_len: u32,
    /// Most entries in a batch and most shards in a topology, default 65 536.
    pub max_batch_count: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_len: 512 * 1024 * 1024 + HEADER_LEN as u32,
            max_key_len: 64 * 1024,
            max_value_len: 512 * 1024 * 1024,
            max_batch_count: 65_536,
        }
    }
}

/// One complete, well-framed frame. Its sections share the decoder's buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub header: Header,
    pub key: Bytes,
    pub value: Bytes,
    pub extra: Bytes,
}

impl Frame {
    pub fn request_id(&self) -> u64 {
        self.header.request_id
    }
}

/// Splits a connection's byte stream into frames.
///
/// Contract (as for the RESP parser): one decoder per connection, always called with that
/// connection's buffer, to which the caller only appends. After a fatal error the decoder is
/// poisoned and returns that error again on every call.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    limits: Limits,
    failed: Option<FrameError>,
}

impl FrameDecoder {
    pub fn new(limits: Limits) -> Self {
        Self { limits, failed: None }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Takes the next complete frame off the front of `buf`. `Ok(None)`: more bytes are needed
    /// (nothing was consumed). Every error returned here is fatal.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        match decode_frame(&self.limits, buf) {
            Err(err) => {
                self.failed = Some(err.clone());
                Err(err)
            }
            ok => ok,
        }
    }
}

fn decode_frame(limits: &Limits, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
    let Some(head) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let header = Header::parse(head)?;
    check_lengths(limits, &header)?;
    // frame_len ≤ max_frame_len (a u32), so it fits a usize.
    let frame_len = header.frame_len as usize;
    if buf.len() < frame_len {
        return Ok(None);
    }
    let frame = buf.split_to(frame_len).freeze();
    let body_end = if header.flags.contains(Flags::HAS_CRC) {
        let body_end = frame_len - CRC_LEN;
        let stored = super::header::u32_at(&frame, body_end);
        let computed = crc32fast::hash(&frame[..body_end]);
        if stored != computed {
            return Err(FrameError::CrcMismatch { stored, computed });
        }
        body_end
    } else {
        frame_len
    };
    let key_end = HEADER_LEN + header.key_len as usize;
    let value_end = key_end + header.value_len as usize;
    debug_assert_eq!(value_end + header.extra_len as usize, body_end);
    Ok(Some(Frame {
        header,
        key: frame.slice(HEADER_LEN..key_end),
        value: frame.slice(key_end..value_end),
        extra: frame.slice(value_end..body_end),
    }))
}

fn check_lengths(limits: &Limits, header: &Header) -> Result<(), FrameError> {
    if header.key_len > limits.max_key_len {
        return Err(FrameError::KeyTooLarge {
            len: header.key_len.into(),
            max: limits.max_key_len.into(),
        });
    }
    for len in [header.value_len, header.extra_len] {
        if len > limits.max_value_len {
            return Err(FrameError::ValueTooLarge {
                len: len.into(),
                max: limits.max_value_len.into(),
            });
        }
    }
    let computed = header.computed_frame_len();
    if computed != u64::from(header.frame_len) {
        return Err(FrameError::LengthMismatch {
            declared: header.frame_len,
            computed,
        });
    }
    if header.frame_len > limits.max_frame_len {
        return Err(FrameError::FrameTooLarge {
            len: header.frame_len.into(),
            max: limits.max_frame_len.into(),
        });
    }
    Ok(())
}

/// Converts a section length for the header.
///
/// # Panics
/// If a section is 4 GiB or more: no peer could accept it, so it is a caller bug.
pub(crate) fn len32(len: usize) -> u32 {
    u32::try_from(len).expect("native protocol section of 4 GiB or more")
}

/// Writes one frame in two steps, so sections whose length is not known up front (batches,
/// topologies) are appended straight into `out` and the header is filled in afterwards.
pub(crate) struct FrameWriter {
    start: usize,
    header: Header,
}

impl FrameWriter {
    /// Appends a zeroed header to `out`; the caller then appends key, value and extra sections.
    pub(crate) fn begin(out: &mut BytesMut, opcode: u8, flags: Flags, request_id: u64, arg: u64) -> Self {
        let start = out.len();
        out.extend_from_slice(&[0u8; HEADER_LEN]);
        FrameWriter {
            start,
            header: Header {
                opcode,
                flags,
                frame_len: 0,
                key_len: 0,
                request_id,
                value_len: 0,
                extra_len: 0,
                arg,
            },
        }
    }

    pub(crate) fn set_arg(&mut self, arg: u64) {
        self.header.arg = arg;
    }

    /// Fills in the header once `key_len + value_len + extra_len` bytes followed it, and appends
    /// the CRC trailer if the flags ask for one.
    pub(crate) fn finish(mut self, out: &mut BytesMut, key_len: usize, value_len: usize, extra_len: usize) {
        let crc = self.header.flags.contains(Flags::HAS_CRC);
        debug_assert_eq!(out.len() - self.start, HEADER_LEN + key_len + value_len + extra_len);
        self.header.key_len = len32(key_len);
        self.header.value_len = len32(value_len);
        self.header.extra_len = len32(extra_len);
        let total = out.len() - self.start + if crc { CRC_LEN } else { 0 };
        self.header.frame_len = len32(total);
        let head: &mut [u8; HEADER_LEN] = (&mut out[self.start..self.start + HEADER_LEN])
            .try_into()
            .expect("header slice is HEADER_LEN bytes");
        self.header.write(head);
        if crc {
            let sum = crc32fast::hash(&out[self.start..]);
            out.extend_from_slice(&sum.to_le_bytes());
        }
    }
}

/// Appends one frame whose sections are plain slices, reserving its whole size first.
pub(crate) fn write_frame(
    out: &mut BytesMut,
    opcode: u8,
    flags: Flags,
    request_id: u64,
    arg: u64,
    sections: [&[u8]; 3],
) {
    let [key, value, extra] = sections;
    out.reserve(HEADER_LEN + key.len() + value.len() + extra.len() + CRC_LEN);
    let writer = FrameWriter::begin(out, opcode, flags, request_id, arg);
    out.extend_from_slice(key);
    out.extend_from_slice(value);
    out.extend_from_slice(extra);
    writer.finish(out, key.len(), value.len(), extra.len());
}
