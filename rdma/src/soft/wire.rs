//! The soft provider's packets and their TCP framing.
//!
//! Every packet travels as one frame, all integers little-endian:
//!
//! ```text
//!   0 len u32 (bytes after this field) | 4 type u8 | 5 body
//!   type 1 SEND       body: seq u64 | payload ..
//!   type 2 WRITE      body: seq u64 | addr u64 | rkey u32 | payload ..
//!   type 3 READ_REQ   body: seq u64 | addr u64 | rkey u32 | len u32
//!   type 4 READ_RESP  body: seq u64 | payload ..
//!   type 5 ACK        body: seq u64
//!   type 6 NAK        body: seq u64 | code u8 (1 RNR retry exceeded, 2 remote access, 3 invalid request)
//! ```
//!
//! `seq` numbers a queue pair's requests from 0, in posting order; every request gets exactly one
//! response (ACK, READ_RESP or NAK) with the same `seq`, in order, as RC delivers them. A frame
//! longer than [`MAX_FRAME`], or of an unknown type, is a protocol error that kills the link.

use std::io::{self, Read, Write};

/// The largest payload of one packet (a Send, Write or Read): 64 MiB.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;
/// The largest frame accepted, header included.
pub const MAX_FRAME: usize = 1 + 8 + 8 + 4 + MAX_MESSAGE_BYTES;

const SEND: u8 = 1;
const WRITE: u8 = 2;
const READ_REQ: u8 = 3;
const READ_RESP: u8 = 4;
const ACK: u8 = 5;
const NAK: u8 = 6;

/// Why a responder refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NakCode {
    /// No receive posted after every RNR retry.
    RnrRetryExceeded = 1,
    /// Bad rkey or range.
    RemoteAccess = 2,
    /// The Send did not fit the receive buffer.
    InvalidRequest = 3,
}

impl NakCode {
    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => Self::RnrRetryExceeded,
            2 => Self::RemoteAccess,
            3 => Self::InvalidRequest,
            _ => return None,
        })
    }
}

/// One packet between two soft queue pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Packet {
    Send {
        seq: u64,
        data: Vec<u8>,
    },
    Write {
        seq: u64,
        addr: u64,
        rkey: u32,
        data: Vec<u8>,
    },
    ReadReq {
        seq: u64,
        addr: u64,
        rkey: u32,
        len: u32,
    },
    ReadResp {
        seq: u64,
        data: Vec<u8>,
    },
    Ack {
        seq: u64,
    },
    Nak {
        seq: u64,
        code: NakCode,
    },
}

impl Packet {
    /// Writes the packet as one frame.
    pub(crate) fn encode(&self, w: &mut impl Write) -> io::Result<()> {
        let (kind, seq, extra, data): (u8, u64, &[u8], &[u8]) = match self {
            Self::Send { seq, data } => (SEND, *seq, &[], data),
            Self::Write { seq, addr, rkey, data } => {
                let mut head = [0u8; 12];
                head[..8].copy_from_slice(&addr.to_le_bytes());
                head[8..].copy_from_slice(&rkey.to_le_bytes());
                return write_frame(w, WRITE, *seq, &head, data);
            }
            Self::ReadReq { seq, addr, rkey, len } => {
                let mut head = [0u8; 16];
                head[..8].copy_from_slice(&addr.to_le_bytes());
                head[8..12].copy_from_slice(&rkey.to_le_bytes());
                head[12..].copy_from_slice(&len.to_le_bytes());
                return write_frame(w, READ_REQ, *seq, &head, &[]);
            }
            Self::ReadResp { seq, data } => (READ_RESP, *seq, &[], data),
            Self::Ack { seq } => (ACK, *seq, &[], &[]),
            Self::Nak { seq, code } => return write_frame(w, NAK, *seq, &[*code as u8], &[]),
        };
        write_frame(w, kind, seq, extra, data)
    }

    /// Reads one frame. `Ok(None)` at a clean end of stream (between frames).
    pub(crate) fn decode(r: &mut impl Read) -> io::Result<Option<Self>> {
        let mut len = [0u8; 4];
        match r.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let len = u32::from_le_bytes(len) as usize;
        if !(1 + 8..=MAX_FRAME).contains(&len) {
            return Err(invalid(format!("frame length {len}")));
        }
        let mut head = [0u8; 9];
        r.read_exact(&mut head)?;
        let kind = head[0];
        let seq = u64::from_le_bytes(head[1..].try_into().expect("8 bytes"));
        let rest = len - 9;
        let mut fixed = |n: usize| -> io::Result<Vec<u8>> {
            if rest != n {
                return Err(invalid(format!("type {kind} with {rest} body bytes")));
            }
            let mut buf = vec![0u8; n];
            r.read_exact(&mut buf)?;
            Ok(buf)
        };
        let u64_at = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
        let u32_at = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"));
        Ok(Some(match kind {
            SEND | READ_RESP => {
                let data = read_body(r, rest)?;
                if kind == SEND {
                    Self::Send { seq, data }
                } else {
                    Self::ReadResp { seq, data }
                }
            }
            WRITE => {
                if rest < 12 {
                    return Err(invalid(format!("short WRITE of {rest} bytes")));
                }
                let mut head = [0u8; 12];
                r.read_exact(&mut head)?;
                let data = read_body(r, rest - 12)?;
                Self::Write {
                    seq,
                    addr: u64_at(&head, 0),
                    rkey: u32_at(&head, 8),
                    data,
                }
            }
            READ_REQ => {
                let b = fixed(16)?;
                Self::ReadReq {
                    seq,
                    addr: u64_at(&b, 0),
                    rkey: u32_at(&b, 8),
                    len: u32_at(&b, 12),
                }
            }
            ACK => {
                fixed(0)?;
                Self::Ack { seq }
            }
            NAK => {
                let b = fixed(1)?;
                let code = NakCode::from_code(b[0]).ok_or_else(|| invalid(format!("NAK code {}", b[0])))?;
                Self::Nak { seq, code }
            }
            other => return Err(invalid(format!("packet type {other}"))),
        }))
    }
}

/// Reads exactly `len` bytes, growing the buffer as they arrive: a corrupt length costs a refused
/// frame, not a 64 MiB allocation up front.
fn read_body(r: &mut impl Read, len: usize) -> io::Result<Vec<u8>> {
    let mut data = Vec::with_capacity(len.min(64 << 10));
    r.take(len as u64).read_to_end(&mut data)?;
    if data.len() != len {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "frame cut short"));
    }
    Ok(data)
}

fn write_frame(w: &mut impl Write, kind: u8, seq: u64, extra: &[u8], data: &[u8]) -> io::Result<()> {
    let len = 1 + 8 + extra.len() + data.len();
    let len = u32::try_from(len).map_err(|_| invalid(format!("frame of {len} bytes")))?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(&[kind])?;
    w.write_all(&seq.to_le_bytes())?;
    w.write_all(extra)?;
    w.write_all(data)
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(p: Packet) {
        let mut buf = Vec::new();
        p.encode(&mut buf).unwrap();
        let mut r = &buf[..];
        assert_eq!(Packet::decode(&mut r).unwrap(), Some(p));
        assert!(r.is_empty());
        assert_eq!(Packet::decode(&mut r).unwrap(), None, "clean end of stream");
    }

    #[test]
    fn every_packet_round_trips() {
        round_trip(Packet::Send {
            seq: 7,
            data: b"hello".to_vec(),
        });
        round_trip(Packet::Send { seq: 0, data: vec![] });
        round_trip(Packet::Write {
            seq: u64::MAX,
            addr: 0x1234_5678_9abc,
            rkey: 0xdead_beef,
            data: vec![1, 2, 3],
        });
        round_trip(Packet::ReadReq {
            seq: 3,
            addr: 9,
            rkey: 1,
            len: 4 << 20,
        });
        round_trip(Packet::ReadResp {
            seq: 3,
            data: vec![9; 4097],
        });
        round_trip(Packet::Ack { seq: 11 });
        round_trip(Packet::Nak {
            seq: 12,
            code: NakCode::RemoteAccess,
        });
    }

    #[test]
    fn byte_layout_is_little_endian() {
        let mut buf = Vec::new();
        Packet::Ack { seq: 0x0102 }.encode(&mut buf).unwrap();
        assert_eq!(buf, [9, 0, 0, 0, ACK, 2, 1, 0, 0, 0, 0, 0, 0]);
    }

    fn packet() -> impl proptest::strategy::Strategy<Value = Packet> {
        use proptest::prelude::*;
        let data = || proptest::collection::vec(any::<u8>(), 0..64);
        prop_oneof![
            (any::<u64>(), data()).prop_map(|(seq, data)| Packet::Send { seq, data }),
            (any::<u64>(), any::<u64>(), any::<u32>(), data()).prop_map(|(seq, addr, rkey, data)| Packet::Write {
                seq,
                addr,
                rkey,
                data
            }),
            (any::<u64>(), any::<u64>(), any::<u32>(), any::<u32>())
                .prop_map(|(seq, addr, rkey, len)| Packet::ReadReq { seq, addr, rkey, len }),
            (any::<u64>(), data()).prop_map(|(seq, data)| Packet::ReadResp { seq, data }),
            any::<u64>().prop_map(|seq| Packet::Ack { seq }),
            (any::<u64>(), 1u8..=3).prop_map(|(seq, code)| Packet::Nak {
                seq,
                code: NakCode::from_code(code).unwrap()
            }),
        ]
    }

    proptest::proptest! {
        /// A stream of packets decodes to the same packets however the bytes arrive.
        #[test]
        fn streams_decode_whatever_the_split(packets in proptest::collection::vec(packet(), 0..8), chunk in 1usize..17) {
            let mut buf = Vec::new();
            for p in &packets {
                p.encode(&mut buf).unwrap();
            }
            // A reader handing out at most `chunk` bytes per read.
            struct Trickle<'a>(&'a [u8], usize);
            impl Read for Trickle<'_> {
                fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
                    let n = out.len().min(self.1).min(self.0.len());
                    out[..n].copy_from_slice(&self.0[..n]);
                    self.0 = &self.0[n..];
                    Ok(n)
                }
            }
            let mut r = Trickle(&buf, chunk);
            for p in &packets {
                let got = Packet::decode(&mut r).unwrap();
                proptest::prop_assert_eq!(got.as_ref(), Some(p));
            }
            proptest::prop_assert_eq!(Packet::decode(&mut r).unwrap(), None);
        }

        /// Arbitrary bytes are decoded or refused, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let mut r = &bytes[..];
            while let Ok(Some(_)) = Packet::decode(&mut r) {}
        }
    }

    #[test]
    fn garbage_is_refused() {
        for bad in [
            vec![0u8, 0, 0, 0],                                // too short a frame
            vec![9, 0, 0, 0, 99, 0, 0, 0, 0, 0, 0, 0, 0],      // unknown type
            vec![10, 0, 0, 0, ACK, 0, 0, 0, 0, 0, 0, 0, 0, 0], // ACK with a body
            vec![0xff, 0xff, 0xff, 0xff],                      // too long a frame
        ] {
            assert!(Packet::decode(&mut &bad[..]).is_err(), "{bad:?}");
        }
        // A frame cut short is an error, not a clean end.
        let mut buf = Vec::new();
        Packet::Send {
            seq: 1,
            data: vec![1; 10],
        }
        .encode(&mut buf)
        .unwrap();
        assert!(Packet::decode(&mut &buf[..buf.len() - 1]).is_err());
    }
}
