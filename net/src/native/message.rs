//! Typed requests and responses: which header fields and sections each opcode uses
//! (PROTOCOL.md, "Operations" and "Responses"), decoding from a [`Frame`] and encoding into an
//! output buffer.
//!
//! Decoding a frame into a [`Request`] or [`Response`] never allocates: keys and values stay
//! `Bytes` slices of the frame, batches and topologies are validated in place. Errors here are
//! per-frame (not fatal): the frame was consumed and the stream is still in step.

use bytes::{Bytes, BytesMut};

use super::batch::{Batch, BatchKind};
use super::error::{ErrorCode, FrameError};
use super::frame::{len32, write_frame, Frame, FrameWriter, Limits};
use super::header::{u16_at, u32_at, Flags, Opcode};

/// What SET does when the key already exists or not (flags NX and XX).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SetCondition {
    #[default]
    Always,
    /// Flag NX: only if the key does not exist.
    IfAbsent,
    /// Flag XX: only if the key exists.
    IfPresent,
}

/// A request. TTLs are milliseconds, 0 meaning "no TTL".
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Ping,
    Get {
        key: Bytes,
    },
    Set {
        key: Bytes,
        value: Bytes,
        ttl_ms: u64,
        condition: SetCondition,
    },
    Del {
        key: Bytes,
    },
    /// Keys of one shard, in a [`BatchKind::Keys`] batch.
    MGet(Batch),
    /// Pairs of one shard, in a [`BatchKind::Pairs`] batch.
    MSet(Batch),
    /// Stores `value` only if the key's current value equals `expected` (the extra section).
    Cas {
        key: Bytes,
        expected: Bytes,
        value: Bytes,
        ttl_ms: u64,
    },
    Incr {
        key: Bytes,
        delta: i64,
    },
    /// Sets the key's TTL; `ttl_ms` 0 removes it.
    Expire {
        key: Bytes,
        ttl_ms: u64,
    },
    Ttl {
        key: Bytes,
    },
    Exists {
        key: Bytes,
    },
    Topology,
}

/// A response. It carries the request id of the request it answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    Ok,
    Value(Bytes),
    /// MGET's results, in the order of its keys: a [`BatchKind::Values`] batch.
    Values(Batch),
    NotFound,
    Integer(i64),
    Error {
        code: ErrorCode,
        message: Bytes,
    },
    Topology(Topology),
}

/// Which header fields and sections an opcode uses; all others must be zero.
struct Shape {
    key: bool,
    value: bool,
    extra: bool,
    arg: bool,
    /// Flags allowed besides HAS_CRC.
    flags: Flags,
    /// Flags that must be present.
    required: Flags,
}

const fn shape(key: bool, value: bool, extra: bool, arg: bool) -> Shape {
    Shape {
        key,
        value,
        extra,
        arg,
        flags: Flags::NONE,
        required: Flags::NONE,
    }
}

fn shape_of(opcode: Opcode, flags: Flags) -> Shape {
    let batch = Shape {
        flags: Flags::BATCH,
        required: Flags::BATCH,
        ..shape(false, true, false, true)
    };
    match opcode {
        Opcode::Ping | Opcode::Topology => shape(false, false, false, false),
        Opcode::Get | Opcode::Del | Opcode::Ttl | Opcode::Exists => shape(true, false, false, false),
        Opcode::Set => Shape {
            flags: Flags(Flags::NX.0 | Flags::XX.0),
            ..shape(true, true, false, true)
        },
        Opcode::Cas => shape(true, true, true, true),
        Opcode::Incr | Opcode::Expire => shape(true, false, false, true),
        Opcode::MGet | Opcode::MSet => batch,
        Opcode::Ok | Opcode::NotFound => shape(false, false, false, false),
        Opcode::Value if flags.contains(Flags::BATCH) => batch,
        Opcode::Value | Opcode::TopologyReply => shape(false, true, false, false),
        Opcode::Integer => shape(false, false, false, true),
        Opcode::Error => shape(false, true, false, true),
    }
}

/// Checks the frame's opcode, direction, flags and fields against its opcode's shape.
fn check_shape(frame: &Frame, want_response: bool) -> Result<Opcode, FrameError> {
    let h = &frame.header;
    let opcode = Opcode::from_u8(h.opcode).ok_or(FrameError::UnknownOpcode(h.opcode))?;
    if opcode.is_response() != want_response {
        return Err(FrameError::WrongDirection(h.opcode));
    }
    let flags = h.flags.without_crc();
    let s = shape_of(opcode, flags);
    let both_conditions = flags.contains(Flags(Flags::NX.0 | Flags::XX.0));
    if flags.0 & !s.flags.0 != 0 || !flags.contains(s.required) || both_conditions {
        return Err(FrameError::InvalidFlags {
            opcode: h.opcode,
            flags: h.flags.0,
        });
    }
    let malformed = |reason| FrameError::Malformed {
        opcode: h.opcode,
        reason,
    };
    if !s.key && h.key_len != 0 {
        return Err(malformed("unexpected key section"));
    }
    if !s.value && h.value_len != 0 {
        return Err(malformed("unexpected value section"));
    }
    if !s.extra && h.extra_len != 0 {
        return Err(malformed("unexpected extra section"));
    }
    if !s.arg && h.arg != 0 {
        return Err(malformed("unexpected argument"));
    }
    if !want_response && h.request_id == 0 {
        return Err(malformed("request id 0 is reserved"));
    }
    Ok(opcode)
}

impl Request {
    /// Interprets a frame as a request.
    pub fn decode(frame: Frame, limits: &Limits) -> Result<Request, FrameError> {
        let opcode = check_shape(&frame, false)?;
        let Frame {
            header,
            key,
            value,
            extra,
        } = frame;
        let arg = header.arg;
        Ok(match opcode {
            Opcode::Ping => Request::Ping,
            Opcode::Topology => Request::Topology,
            Opcode::Get => Request::Get { key },
            Opcode::Del => Request::Del { key },
            Opcode::Ttl => Request::Ttl { key },
            Opcode::Exists => Request::Exists { key },
            Opcode::Set => {
                let condition = if header.flags.contains(Flags::NX) {
                    SetCondition::IfAbsent
                } else if header.flags.contains(Flags::XX) {
                    SetCondition::IfPresent
                } else {
                    SetCondition::Always
                };
                Request::Set {
                    key,
                    value,
                    ttl_ms: arg,
                    condition,
                }
            }
            Opcode::Cas => Request::Cas {
                key,
                expected: extra,
                value,
                ttl_ms: arg,
            },
            Opcode::Incr => Request::Incr { key, delta: arg as i64 },
            Opcode::Expire => Request::Expire { key, ttl_ms: arg },
            Opcode::MGet => Request::MGet(Batch::parse(BatchKind::Keys, arg, value, limits)?),
            Opcode::MSet => Request::MSet(Batch::parse(BatchKind::Pairs, arg, value, limits)?),
            // check_shape only lets request opcodes through.
            Opcode::Ok | Opcode::Value | Opcode::NotFound | Opcode::Integer | Opcode::Error | Opcode::TopologyReply => {
                return Err(FrameError::WrongDirection(header.opcode))
            }
        })
    }

    pub fn opcode(&self) -> Opcode {
        match self {
            Request::Ping => Opcode::Ping,
            Request::Get { .. } => Opcode::Get,
            Request::Set { .. } => Opcode::Set,
            Request::Del { .. } => Opcode::Del,
            Request::MGet(_) => Opcode::MGet,
            Request::MSet(_) => Opcode::MSet,
            Request::Cas { .. } => Opcode::Cas,
            Request::Incr { .. } => Opcode::Incr,
            Request::Expire { .. } => Opcode::Expire,
            Request::Ttl { .. } => Opcode::Ttl,
            Request::Exists { .. } => Opcode::Exists,
            Request::Topology => Opcode::Topology,
        }
    }

    /// Appends this request as one frame (with a CRC trailer if `crc`).
    ///
    /// # Panics
    /// If a section is 4 GiB or more, or if a batch has the wrong [`BatchKind`].
    pub fn encode(&self, request_id: u64, crc: bool, out: &mut BytesMut) {
        let flags = if crc { Flags::HAS_CRC } else { Flags::NONE };
        let op = self.opcode() as u8;
        let simple = match self {
            Request::Ping => RequestRef::Ping,
            Request::Topology => RequestRef::Topology,
            Request::Get { key } => RequestRef::Get { key },
            Request::Del { key } => RequestRef::Del { key },
            Request::Ttl { key } => RequestRef::Ttl { key },
            Request::Exists { key } => RequestRef::Exists { key },
            Request::Set {
                key,
                value,
                ttl_ms,
                condition,
            } => RequestRef::Set {
                key,
                value,
                ttl_ms: *ttl_ms,
                condition: *condition,
            },
            Request::Cas {
                key,
                expected,
                value,
                ttl_ms,
            } => RequestRef::Cas {
                key,
                expected,
                value,
                ttl_ms: *ttl_ms,
            },
            Request::Incr { key, delta } => RequestRef::Incr { key, delta: *delta },
            Request::Expire { key, ttl_ms } => RequestRef::Expire { key, ttl_ms: *ttl_ms },
            Request::MGet(batch) | Request::MSet(batch) => {
                let kind = if matches!(self, Request::MGet(_)) {
                    BatchKind::Keys
                } else {
                    BatchKind::Pairs
                };
                assert_eq!(
                    batch.kind(),
                    kind,
                    "{:?} with a {:?} batch",
                    self.opcode(),
                    batch.kind()
                );
                return write_batch(out, op, flags, request_id, batch);
            }
        };
        simple.encode(request_id, crc, out);
    }
}

/// A request without a batch, whose sections are borrowed slices: it encodes exactly as the
/// matching [`Request`] without building one, so a client can send a caller's key and value
/// without first copying them into `Bytes`. (MGET and MSET are written with
/// [`BatchEncoder`](super::BatchEncoder).)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestRef<'a> {
    Ping,
    Get {
        key: &'a [u8],
    },
    Set {
        key: &'a [u8],
        value: &'a [u8],
        ttl_ms: u64,
        condition: SetCondition,
    },
    Del {
        key: &'a [u8],
    },
    Cas {
        key: &'a [u8],
        expected: &'a [u8],
        value: &'a [u8],
        ttl_ms: u64,
    },
    Incr {
        key: &'a [u8],
        delta: i64,
    },
    Expire {
        key: &'a [u8],
        ttl_ms: u64,
    },
    Ttl {
        key: &'a [u8],
    },
    Exists {
        key: &'a [u8],
    },
    Topology,
}

impl RequestRef<'_> {
    pub fn opcode(&self) -> Opcode {
        match self {
            RequestRef::Ping => Opcode::Ping,
            RequestRef::Get { .. } => Opcode::Get,
            RequestRef::Set { .. } => Opcode::Set,
            RequestRef::Del { .. } => Opcode::Del,
            RequestRef::Cas { .. } => Opcode::Cas,
            RequestRef::Incr { .. } => Opcode::Incr,
            RequestRef::Expire { .. } => Opcode::Expire,
            RequestRef::Ttl { .. } => Opcode::Ttl,
            RequestRef::Exists { .. } => Opcode::Exists,
            RequestRef::Topology => Opcode::Topology,
        }
    }

    /// Appends this request as one frame (with a CRC trailer if `crc`); returns the frame's length.
    ///
    /// # Panics
    /// If a section is 4 GiB or more.
    pub fn encode(&self, request_id: u64, crc: bool, out: &mut BytesMut) -> usize {
        let start = out.len();
        let mut flags = if crc { Flags::HAS_CRC } else { Flags::NONE };
        let op = self.opcode() as u8;
        let none: &[u8] = &[];
        match *self {
            RequestRef::Ping | RequestRef::Topology => write_frame(out, op, flags, request_id, 0, [none; 3]),
            RequestRef::Get { key }
            | RequestRef::Del { key }
            | RequestRef::Ttl { key }
            | RequestRef::Exists { key } => write_frame(out, op, flags, request_id, 0, [key, none, none]),
            RequestRef::Set {
                key,
                value,
                ttl_ms,
                condition,
            } => {
                flags = match condition {
                    SetCondition::Always => flags,
                    SetCondition::IfAbsent => flags | Flags::NX,
                    SetCondition::IfPresent => flags | Flags::XX,
                };
                write_frame(out, op, flags, request_id, ttl_ms, [key, value, none])
            }
            RequestRef::Cas {
                key,
                expected,
                value,
                ttl_ms,
            } => write_frame(out, op, flags, request_id, ttl_ms, [key, value, expected]),
            RequestRef::Incr { key, delta } => write_frame(out, op, flags, request_id, delta as u64, [key, none, none]),
            RequestRef::Expire { key, ttl_ms } => write_frame(out, op, flags, request_id, ttl_ms, [key, none, none]),
        }
        out.len() - start
    }
}

fn write_batch(out: &mut BytesMut, opcode: u8, flags: Flags, request_id: u64, batch: &Batch) {
    let count = batch.len() as u64;
    write_frame(
        out,
        opcode,
        flags | Flags::BATCH,
        request_id,
        count,
        [&[], batch.body(), &[]],
    );
}

impl Response {
    /// Interprets a frame as a response.
    pub fn decode(frame: Frame, limits: &Limits) -> Result<Response, FrameError> {
        let opcode = check_shape(&frame, true)?;
        let Frame { header, value, .. } = frame;
        Ok(match opcode {
            Opcode::Ok => Response::Ok,
            Opcode::NotFound => Response::NotFound,
            Opcode::Value if header.flags.contains(Flags::BATCH) => {
                Response::Values(Batch::parse(BatchKind::Values, header.arg, value, limits)?)
            }
            Opcode::Value => Response::Value(value),
            Opcode::Integer => Response::Integer(header.arg as i64),
            Opcode::Error => {
                let code = u16::try_from(header.arg).map_err(|_| FrameError::Malformed {
                    opcode: header.opcode,
                    reason: "error code above 0xFFFF",
                })?;
                Response::Error {
                    code: ErrorCode(code),
                    message: value,
                }
            }
            Opcode::TopologyReply => Response::Topology(Topology::parse(value, limits)?),
            _ => return Err(FrameError::WrongDirection(header.opcode)),
        })
    }

    pub fn opcode(&self) -> Opcode {
        match self {
            Response::Ok => Opcode::Ok,
            Response::Value(_) | Response::Values(_) => Opcode::Value,
            Response::NotFound => Opcode::NotFound,
            Response::Integer(_) => Opcode::Integer,
            Response::Error { .. } => Opcode::Error,
            Response::Topology(_) => Opcode::TopologyReply,
        }
    }

    /// Appends this response as one frame (with a CRC trailer if `crc`).
    ///
    /// # Panics
    /// If a section is 4 GiB or more, or if a batch is not a [`BatchKind::Values`] batch.
    pub fn encode(&self, request_id: u64, crc: bool, out: &mut BytesMut) {
        let flags = if crc { Flags::HAS_CRC } else { Flags::NONE };
        let op = self.opcode() as u8;
        let none: &[u8] = &[];
        match self {
            Response::Ok | Response::NotFound => write_frame(out, op, flags, request_id, 0, [none; 3]),
            Response::Value(value) => write_frame(out, op, flags, request_id, 0, [none, value, none]),
            Response::Values(batch) => {
                assert_eq!(batch.kind(), BatchKind::Values, "VALUE with a {:?} batch", batch.kind());
                write_batch(out, op, flags, request_id, batch)
            }
            Response::Integer(n) => write_frame(out, op, flags, request_id, *n as u64, [none; 3]),
            Response::Error { code, message } => {
                write_frame(out, op, flags, request_id, code.0.into(), [none, message, none])
            }
            Response::Topology(topology) => write_frame(out, op, flags, request_id, 0, [none, &topology.body, none]),
        }
    }

    /// Appends an ERROR response for a decoding error (`request_id` 0 for a fatal one).
    pub fn encode_error(err: &FrameError, request_id: u64, crc: bool, out: &mut BytesMut) {
        use std::fmt::Write;
        let flags = if crc { Flags::HAS_CRC } else { Flags::NONE };
        let writer = FrameWriter::begin(out, Opcode::Error as u8, flags, request_id, err.code().0.into());
        let start = out.len();
        // Writing into a BytesMut cannot fail.
        let _ = write!(out, "{err}");
        let len = out.len() - start;
        writer.finish(out, 0, len, 0);
    }
}

/// `hash_id` of corekv's routing hash v1: `shard = jump_consistent_hash(CRC16(tag(key)) mod
/// 16384, shards)` ([`crate::routing`]).
pub const HASH_COREKV_V1: u16 = 1;

/// Size of the fixed part of a topology section.
pub const TOPOLOGY_HEADER_LEN: usize = 8;

/// A TOPOLOGY response's section: `shard_count u32 | hash_id u16 | reserved u16 | shard_count ×
/// (len u16 | UTF-8 endpoint)`, endpoint *i* serving shard *i*.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    shard_count: u32,
    hash_id: u16,
    body: Bytes,
}

impl Topology {
    /// Validates a topology section (count against the limit and the bytes, UTF-8 endpoints).
    pub fn parse(body: Bytes, limits: &Limits) -> Result<Topology, FrameError> {
        let malformed = |reason| FrameError::Malformed {
            opcode: Opcode::TopologyReply as u8,
            reason,
        };
        if body.len() < TOPOLOGY_HEADER_LEN {
            return Err(malformed("topology section shorter than its header"));
        }
        let shard_count = u32_at(&body, 0);
        let hash_id = u16_at(&body, 4);
        if u16_at(&body, 6) != 0 {
            return Err(malformed("reserved topology bytes are not zero"));
        }
        if shard_count == 0 {
            return Err(malformed("topology without shards"));
        }
        if shard_count > limits.max_batch_count {
            return Err(FrameError::BatchTooLarge {
                count: shard_count.into(),
                max: limits.max_batch_count.into(),
            });
        }
        let mut pos = TOPOLOGY_HEADER_LEN;
        for _ in 0..shard_count {
            let Some(len) = body.get(pos..pos + 2).map(|b| u16_at(b, 0) as usize) else {
                return Err(malformed("endpoint runs past the section"));
            };
            let Some(endpoint) = body.get(pos + 2..pos + 2 + len) else {
                return Err(malformed("endpoint runs past the section"));
            };
            if std::str::from_utf8(endpoint).is_err() {
                return Err(malformed("endpoint is not UTF-8"));
            }
            pos += 2 + len;
        }
        if pos != body.len() {
            return Err(malformed("bytes after the last endpoint"));
        }
        Ok(Topology {
            shard_count,
            hash_id,
            body,
        })
    }

    /// Builds a topology section (allocates; topologies are small and rare).
    ///
    /// # Panics
    /// If there are no endpoints, or an endpoint is longer than 65 535 bytes.
    pub fn build<'a>(hash_id: u16, endpoints: impl IntoIterator<Item = &'a str>) -> Topology {
        let mut body = BytesMut::with_capacity(64);
        body.extend_from_slice(&[0u8; TOPOLOGY_HEADER_LEN]);
        let mut count = 0usize;
        for endpoint in endpoints {
            let len = u16::try_from(endpoint.len()).expect("endpoint longer than 65535 bytes");
            body.extend_from_slice(&len.to_le_bytes());
            body.extend_from_slice(endpoint.as_bytes());
            count += 1;
        }
        assert!(count > 0, "topology without shards");
        let shard_count = len32(count);
        body[0..4].copy_from_slice(&shard_count.to_le_bytes());
        body[4..6].copy_from_slice(&hash_id.to_le_bytes());
        Topology {
            shard_count,
            hash_id,
            body: body.freeze(),
        }
    }

    pub fn shard_count(&self) -> u32 {
        self.shard_count
    }
    pub fn hash_id(&self) -> u16 {
        self.hash_id
    }
    /// The raw section, as it travels in the value section.
    pub fn body(&self) -> &Bytes {
        &self.body
    }
    /// The endpoints, shard 0 first (validated UTF-8).
    pub fn endpoints(&self) -> impl Iterator<Item = &str> + '_ {
        let mut pos = TOPOLOGY_HEADER_LEN;
        (0..self.shard_count).map_while(move |_| {
            let len = u16_at(self.body.get(pos..pos + 2)?, 0) as usize;
            let endpoint = self.body.get(pos + 2..pos + 2 + len)?;
            pos += 2 + len;
            std::str::from_utf8(endpoint).ok()
        })
    }
}
