//! The out-of-band connection handshake.
//!
//! Two RC queue pairs can only talk once each knows the other's queue-pair number, starting
//! packet sequence number (PSN), address (GID, LID), path MTU, and the memory regions it may read
//! or write. The two ends exchange that in one fixed-size [`Handshake`] message each over an
//! ordinary TCP connection (the initiator proposes, the acceptor answers), as Mooncake and most RDMA
//! systems do.
//!
//! The encoding is explicit and little-endian, field by field, [`Handshake::LEN`] bytes with a
//! magic and a version up front: no `repr(C)` casts, so no padding or host byte order leaks onto
//! the wire, and a peer of another version is refused instead of misread.
//!
//! Two rules ride on the handshake:
//!
//! - **credits**: the initiator proposes how many receive credits it wants; the acceptor may lower
//!   that number (to what it can reserve) but never raise it, since the initiator sized its own
//!   resources for the proposal ([`negotiate_credits`], [`check_accepted_credits`]);
//! - **session epochs**: every (re)connection of a peer carries a strictly newer epoch. A handshake
//!   with an epoch not newer than the last accepted one from that peer (node, shard) is stale or a
//!   duplicate, e.g. a delayed retry that would tear down the live connection, and is refused
//!   ([`EpochTracker`], [`PeerEpochs`]).

use std::collections::HashMap;

use thiserror::Error;

/// The first four bytes of every handshake: "CKVR" read as little-endian.
pub const MAGIC: u32 = u32::from_le_bytes(*b"CKVR");
/// The handshake format this build speaks.
pub const VERSION: u16 = 1;

/// Errors from decoding a handshake or negotiating its credits.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The input is not exactly [`Handshake::LEN`] bytes.
    #[error("handshake is {got} bytes, expected {expected}")]
    WrongLength {
        /// Bytes received.
        got: usize,
        /// [`Handshake::LEN`].
        expected: usize,
    },
    /// The magic does not match: not a corekv RDMA handshake.
    #[error("bad handshake magic {0:#010x}")]
    BadMagic(u32),
    /// A format version this build does not speak.
    #[error("unsupported handshake version {got} (this build speaks {supported})")]
    UnsupportedVersion {
        /// Version received.
        got: u16,
        /// [`VERSION`].
        supported: u16,
    },
    /// The MTU code is not one of the InfiniBand path MTUs.
    #[error("invalid MTU code {0}")]
    BadMtu(u8),
    /// Reserved bytes must be zero, so a later version can give them a meaning.
    #[error("reserved handshake bytes are not zero")]
    ReservedNotZero,
    /// A queue-pair number or PSN above 24 bits (both are 24-bit quantities on the wire).
    #[error("{field} {value:#x} does not fit in 24 bits")]
    Not24Bit {
        /// Which field.
        field: &'static str,
        /// Its value.
        value: u32,
    },
    /// Zero credits would leave the connection unable to send anything.
    #[error("zero credits")]
    ZeroCredits,
    /// The acceptor answered with more credits than were proposed.
    #[error("acceptor raised credits from {proposed} to {accepted}")]
    CreditsRaised {
        /// Credits the initiator proposed.
        proposed: u32,
        /// Credits the acceptor answered.
        accepted: u32,
    },
}

/// Errors from the session-epoch rules.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum EpochError {
    /// The epoch is older than the one already accepted from this peer.
    #[error("stale epoch {got}: epoch {current} already accepted")]
    Stale {
        /// Epoch received.
        got: u64,
        /// Latest epoch accepted.
        current: u64,
    },
    /// The epoch equals the one already accepted: a replayed or duplicated handshake.
    #[error("duplicate epoch {0}")]
    Duplicate(u64),
}

/// InfiniBand path MTU; the wire code is the verbs `ibv_mtu` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Mtu {
    /// 256 bytes.
    Mtu256 = 1,
    /// 512 bytes.
    Mtu512 = 2,
    /// 1024 bytes.
    Mtu1024 = 3,
    /// 2048 bytes.
    Mtu2048 = 4,
    /// 4096 bytes.
    Mtu4096 = 5,
}

impl Mtu {
    /// The MTU in bytes.
    pub fn bytes(self) -> u32 {
        128 << (self as u8)
    }

    /// The MTU of a wire code, if valid.
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => Self::Mtu256,
            2 => Self::Mtu512,
            3 => Self::Mtu1024,
            4 => Self::Mtu2048,
            5 => Self::Mtu4096,
            _ => return None,
        })
    }
}

/// A remotely accessible memory region: where it is in the owner's address space and the key
/// the peer must present to read or write it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct RegionDesc {
    /// Start address (virtual address, as registered).
    pub addr: u64,
    /// Length in bytes.
    pub len: u64,
    /// Remote key.
    pub rkey: u32,
}

impl RegionDesc {
    const LEN: usize = 8 + 8 + 4;
}

/// One side's connection parameters. See the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Handshake {
    /// Format version; [`VERSION`] when built by this crate.
    pub version: u16,
    /// The sender's node id.
    pub node_id: u64,
    /// The sender's shard inside its node.
    pub shard_id: u32,
    /// The sender's session epoch: strictly newer on every reconnection.
    pub epoch: u64,
    /// The sender's queue-pair number (24 bits).
    pub qp_num: u32,
    /// The sender's initial packet sequence number (24 bits).
    pub psn: u32,
    /// The sender's port GID (RoCE address).
    pub gid: [u8; 16],
    /// The sender's port LID (InfiniBand; 0 on RoCE).
    pub lid: u16,
    /// The path MTU the sender will use.
    pub mtu: Mtu,
    /// The sender's control-channel receive ring.
    pub recv_ring: RegionDesc,
    /// The sender's data pool (target of the peer's RDMA Reads and Writes).
    pub pool: RegionDesc,
    /// Credits: proposed by the initiator, granted (at most that) by the acceptor.
    pub credits: u32,
}

// Wire layout, little-endian, every field at a fixed offset:
//   0 magic u32 | 4 version u16 | 6 mtu u8 | 7 reserved u8 (0) | 8 node_id u64 | 16 shard_id u32
//  20 qp_num u32 | 24 epoch u64 | 32 psn u32 | 36 lid u16 | 38 reserved u16 (0) | 40 gid [16]
//  56 recv_ring {addr u64, len u64, rkey u32} | 76 pool {..} | 96 credits u32 | 100 end
const FIELDS_LEN: usize = 4 + 2 + 1 + 1 + 8 + 4 + 4 + 8 + 4 + 2 + 2 + 16 + RegionDesc::LEN * 2 + 4;

// The encoded size is part of the protocol: changing it must be a deliberate version bump.
const _: () = assert!(Handshake::LEN == FIELDS_LEN);
const _: () = assert!(Handshake::LEN == 100);

const MAX_24BIT: u32 = (1 << 24) - 1;

impl Handshake {
    /// Encoded size in bytes.
    pub const LEN: usize = 100;

    /// Encodes into the fixed little-endian layout.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut w = Writer {
            buf: [0; Self::LEN],
            pos: 0,
        };
        w.put(&MAGIC.to_le_bytes());
        w.put(&self.version.to_le_bytes());
        w.put(&[self.mtu as u8, 0]);
        w.put(&self.node_id.to_le_bytes());
        w.put(&self.shard_id.to_le_bytes());
        w.put(&self.qp_num.to_le_bytes());
        w.put(&self.epoch.to_le_bytes());
        w.put(&self.psn.to_le_bytes());
        w.put(&self.lid.to_le_bytes());
        w.put(&[0, 0]);
        w.put(&self.gid);
        for region in [self.recv_ring, self.pool] {
            w.put(&region.addr.to_le_bytes());
            w.put(&region.len.to_le_bytes());
            w.put(&region.rkey.to_le_bytes());
        }
        w.put(&self.credits.to_le_bytes());
        debug_assert_eq!(w.pos, Self::LEN);
        w.buf
    }

    /// Decodes and validates a handshake: exact length, magic, version, MTU code, reserved bytes
    /// zero, 24-bit QP number and PSN. Credits are checked by the negotiation, not here.
    pub fn decode(bytes: &[u8]) -> Result<Self, HandshakeError> {
        let buf: &[u8; Self::LEN] = bytes.try_into().map_err(|_| HandshakeError::WrongLength {
            got: bytes.len(),
            expected: Self::LEN,
        })?;
        let mut r = Reader { buf, pos: 0 };
        let magic = u32::from_le_bytes(r.take());
        if magic != MAGIC {
            return Err(HandshakeError::BadMagic(magic));
        }
        let version = u16::from_le_bytes(r.take());
        // Checked before any other field: another version may lay them out differently.
        if version != VERSION {
            return Err(HandshakeError::UnsupportedVersion {
                got: version,
                supported: VERSION,
            });
        }
        let [mtu_code, reserved1] = r.take();
        let mtu = Mtu::from_code(mtu_code).ok_or(HandshakeError::BadMtu(mtu_code))?;
        let node_id = u64::from_le_bytes(r.take());
        let shard_id = u32::from_le_bytes(r.take());
        let qp_num = u32::from_le_bytes(r.take());
        let epoch = u64::from_le_bytes(r.take());
        let psn = u32::from_le_bytes(r.take());
        let lid = u16::from_le_bytes(r.take());
        let reserved2 = u16::from_le_bytes(r.take());
        let gid = r.take();
        let mut region = || RegionDesc {
            addr: u64::from_le_bytes(r.take()),
            len: u64::from_le_bytes(r.take()),
            rkey: u32::from_le_bytes(r.take()),
        };
        let recv_ring = region();
        let pool = region();
        let credits = u32::from_le_bytes(r.take());
        debug_assert_eq!(r.pos, Self::LEN);
        if reserved1 != 0 || reserved2 != 0 {
            return Err(HandshakeError::ReservedNotZero);
        }
        if qp_num > MAX_24BIT {
            return Err(HandshakeError::Not24Bit {
                field: "qp_num",
                value: qp_num,
            });
        }
        if psn > MAX_24BIT {
            return Err(HandshakeError::Not24Bit {
                field: "psn",
                value: psn,
            });
        }
        Ok(Self {
            version,
            node_id,
            shard_id,
            epoch,
            qp_num,
            psn,
            gid,
            lid,
            mtu,
            recv_ring,
            pool,
            credits,
        })
    }

    /// The peer this handshake comes from.
    pub fn peer(&self) -> PeerId {
        PeerId {
            node_id: self.node_id,
            shard_id: self.shard_id,
        }
    }
}

/// Fills a fixed buffer front to back; positions are compile-time constants in practice.
struct Writer {
    buf: [u8; Handshake::LEN],
    pos: usize,
}

impl Writer {
    fn put(&mut self, bytes: &[u8]) {
        self.buf[self.pos..self.pos + bytes.len()].copy_from_slice(bytes);
        self.pos += bytes.len();
    }
}

/// Reads a fixed buffer front to back. Reading past the end is impossible: the field list sums to
/// exactly [`Handshake::LEN`] (asserted at compile time).
struct Reader<'a> {
    buf: &'a [u8; Handshake::LEN],
    pos: usize,
}

impl Reader<'_> {
    fn take<const K: usize>(&mut self) -> [u8; K] {
        let mut out = [0; K];
        out.copy_from_slice(&self.buf[self.pos..self.pos + K]);
        self.pos += K;
        out
    }
}

/// The acceptor's side of the credit rule: grant the initiator's proposal, lowered to what the
/// acceptor can reserve (`acceptor_max`), never raised. Zero on either side is refused.
pub fn negotiate_credits(proposed: u32, acceptor_max: u32) -> Result<u32, HandshakeError> {
    match proposed.min(acceptor_max) {
        0 => Err(HandshakeError::ZeroCredits),
        credits => Ok(credits),
    }
}

/// The initiator's side of the credit rule: the acceptor's answer must be between 1 and the
/// proposal.
pub fn check_accepted_credits(proposed: u32, accepted: u32) -> Result<u32, HandshakeError> {
    if accepted == 0 {
        return Err(HandshakeError::ZeroCredits);
    }
    if accepted > proposed {
        return Err(HandshakeError::CreditsRaised { proposed, accepted });
    }
    Ok(accepted)
}

/// A peer: one shard of one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId {
    /// The peer's node id.
    pub node_id: u64,
    /// The peer's shard inside its node.
    pub shard_id: u32,
}

/// The session epochs accepted from one peer: only a strictly newer epoch may replace the
/// connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EpochTracker {
    current: Option<u64>,
}

impl EpochTracker {
    /// A tracker that has accepted nothing yet (any first epoch is accepted, 0 included).
    pub fn new() -> Self {
        Self::default()
    }

    /// The latest accepted epoch.
    pub fn current(&self) -> Option<u64> {
        self.current
    }

    /// Whether `epoch` would be accepted, without recording it (to validate before doing the work
    /// of setting up the queue pair).
    pub fn check(&self, epoch: u64) -> Result<(), EpochError> {
        match self.current {
            Some(current) if epoch == current => Err(EpochError::Duplicate(epoch)),
            Some(current) if epoch < current => Err(EpochError::Stale { got: epoch, current }),
            _ => Ok(()),
        }
    }

    /// Accepts `epoch` if strictly newer than the last accepted one, and records it.
    pub fn accept(&mut self, epoch: u64) -> Result<(), EpochError> {
        self.check(epoch)?;
        self.current = Some(epoch);
        Ok(())
    }
}

/// An [`EpochTracker`] per peer (node, shard). Touched only by handshakes, never on the data path.
#[derive(Debug, Clone, Default)]
pub struct PeerEpochs {
    peers: HashMap<PeerId, EpochTracker>,
}

impl PeerEpochs {
    /// No peer seen yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Accepts the handshake's epoch for its peer if strictly newer than the last one accepted
    /// from that peer.
    pub fn accept(&mut self, handshake: &Handshake) -> Result<(), EpochError> {
        self.peers.entry(handshake.peer()).or_default().accept(handshake.epoch)
    }

    /// Checks the handshake's epoch without recording it.
    pub fn check(&self, handshake: &Handshake) -> Result<(), EpochError> {
        self.peers
            .get(&handshake.peer())
            .map_or(Ok(()), |t| t.check(handshake.epoch))
    }

    /// The latest epoch accepted from `peer`.
    pub fn current(&self, peer: PeerId) -> Option<u64> {
        self.peers.get(&peer).and_then(EpochTracker::current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Handshake {
        Handshake {
            version: VERSION,
            node_id: 0x0102_0304_0506_0708,
            shard_id: 7,
            epoch: 42,
            qp_num: 0x00AB_CDEF,
            psn: 0x0012_3456,
            gid: *b"0123456789abcdef",
            lid: 0xBEEF,
            mtu: Mtu::Mtu4096,
            recv_ring: RegionDesc {
                addr: 0x7f00_0000_1000,
                len: 64 * 1024,
                rkey: 0x1111,
            },
            pool: RegionDesc {
                addr: 0x7f00_1000_0000,
                len: 1 << 30,
                rkey: 0x2222,
            },
            credits: 32,
        }
    }

    #[test]
    fn round_trip() {
        let h = sample();
        let bytes = h.encode();
        assert_eq!(bytes.len(), Handshake::LEN);
        assert_eq!(Handshake::decode(&bytes), Ok(h));
    }

    #[test]
    fn layout_is_little_endian_at_fixed_offsets() {
        let bytes = sample().encode();
        assert_eq!(&bytes[0..4], b"CKVR");
        assert_eq!(&bytes[4..6], &[1, 0]);
        assert_eq!(bytes[6], 5);
        assert_eq!(&bytes[8..16], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&bytes[16..20], &[7, 0, 0, 0]);
        assert_eq!(&bytes[20..24], &[0xEF, 0xCD, 0xAB, 0]);
        assert_eq!(&bytes[24..32], &42u64.to_le_bytes());
        assert_eq!(&bytes[36..38], &[0xEF, 0xBE]);
        assert_eq!(&bytes[40..56], b"0123456789abcdef");
        assert_eq!(&bytes[56..64], &0x7f00_0000_1000u64.to_le_bytes());
        assert_eq!(&bytes[96..100], &[32, 0, 0, 0]);
    }

    #[test]
    fn wrong_length_is_refused() {
        let bytes = sample().encode();
        for len in [0, 1, 4, Handshake::LEN - 1] {
            assert_eq!(
                Handshake::decode(&bytes[..len]),
                Err(HandshakeError::WrongLength {
                    got: len,
                    expected: Handshake::LEN
                })
            );
        }
        let mut long = bytes.to_vec();
        long.push(0);
        assert_eq!(
            Handshake::decode(&long),
            Err(HandshakeError::WrongLength {
                got: Handshake::LEN + 1,
                expected: Handshake::LEN
            })
        );
    }

    #[test]
    fn corrupted_input_is_refused() {
        let good = sample().encode();
        let corrupt = |at: usize, value: u8| {
            let mut b = good;
            b[at] = value;
            Handshake::decode(&b)
        };
        assert!(matches!(corrupt(0, b'X'), Err(HandshakeError::BadMagic(_))));
        assert_eq!(
            corrupt(4, 2),
            Err(HandshakeError::UnsupportedVersion {
                got: 2,
                supported: VERSION
            })
        );
        assert_eq!(corrupt(6, 0), Err(HandshakeError::BadMtu(0)));
        assert_eq!(corrupt(6, 6), Err(HandshakeError::BadMtu(6)));
        assert_eq!(corrupt(7, 1), Err(HandshakeError::ReservedNotZero));
        assert_eq!(corrupt(39, 1), Err(HandshakeError::ReservedNotZero));
        assert_eq!(
            corrupt(23, 1),
            Err(HandshakeError::Not24Bit {
                field: "qp_num",
                value: 0x01AB_CDEF
            })
        );
        assert_eq!(
            corrupt(35, 0xFF),
            Err(HandshakeError::Not24Bit {
                field: "psn",
                value: 0xFF12_3456
            })
        );
    }

    #[test]
    fn mtu_codes() {
        for (code, bytes) in [(1, 256), (2, 512), (3, 1024), (4, 2048), (5, 4096)] {
            assert_eq!(Mtu::from_code(code).map(Mtu::bytes), Some(bytes));
        }
        assert_eq!(Mtu::from_code(0), None);
    }

    #[test]
    fn credit_negotiation() {
        assert_eq!(negotiate_credits(32, 64), Ok(32), "never raised");
        assert_eq!(
            negotiate_credits(32, 16),
            Ok(16),
            "lowered to what the acceptor can reserve"
        );
        assert_eq!(negotiate_credits(0, 16), Err(HandshakeError::ZeroCredits));
        assert_eq!(negotiate_credits(32, 0), Err(HandshakeError::ZeroCredits));
        assert_eq!(check_accepted_credits(32, 32), Ok(32));
        assert_eq!(check_accepted_credits(32, 8), Ok(8));
        assert_eq!(
            check_accepted_credits(32, 33),
            Err(HandshakeError::CreditsRaised {
                proposed: 32,
                accepted: 33
            })
        );
        assert_eq!(check_accepted_credits(32, 0), Err(HandshakeError::ZeroCredits));
    }

    #[test]
    fn epoch_rules() {
        let mut t = EpochTracker::new();
        assert_eq!(t.current(), None);
        assert_eq!(t.check(0), Ok(()));
        assert_eq!(t.current(), None, "check records nothing");
        assert_eq!(t.accept(5), Ok(()));
        assert_eq!(t.accept(5), Err(EpochError::Duplicate(5)));
        assert_eq!(t.accept(4), Err(EpochError::Stale { got: 4, current: 5 }));
        assert_eq!(t.accept(0), Err(EpochError::Stale { got: 0, current: 5 }));
        assert_eq!(t.current(), Some(5), "refusals change nothing");
        assert_eq!(t.accept(9), Ok(()), "gaps are fine");
        assert_eq!(t.accept(6), Err(EpochError::Stale { got: 6, current: 9 }));
        assert_eq!(t.accept(u64::MAX), Ok(()));
        assert_eq!(t.accept(u64::MAX), Err(EpochError::Duplicate(u64::MAX)));
    }

    #[test]
    fn epochs_are_per_peer() {
        let mut peers = PeerEpochs::new();
        let a = sample();
        let mut b = sample();
        b.shard_id = 8;
        let mut c = sample();
        c.node_id = 99;
        assert_eq!(peers.accept(&a), Ok(()));
        // Same epoch from another shard of the same node, or another node: independent.
        assert_eq!(peers.accept(&b), Ok(()));
        assert_eq!(peers.accept(&c), Ok(()));
        assert_eq!(peers.check(&a), Err(EpochError::Duplicate(42)));
        assert_eq!(peers.accept(&a), Err(EpochError::Duplicate(42)));
        let mut stale = a;
        stale.epoch = 41;
        assert_eq!(peers.accept(&stale), Err(EpochError::Stale { got: 41, current: 42 }));
        let mut newer = a;
        newer.epoch = 43;
        assert_eq!(peers.check(&newer), Ok(()));
        assert_eq!(peers.current(a.peer()), Some(42));
        assert_eq!(peers.accept(&newer), Ok(()));
        assert_eq!(peers.current(a.peer()), Some(43));
        assert_eq!(peers.current(b.peer()), Some(42));
        assert_eq!(
            peers.current(PeerId {
                node_id: 1,
                shard_id: 1
            }),
            None
        );
    }

    fn region() -> impl Strategy<Value = RegionDesc> {
        (any::<u64>(), any::<u64>(), any::<u32>()).prop_map(|(addr, len, rkey)| RegionDesc { addr, len, rkey })
    }

    proptest! {
        #[test]
        fn any_valid_handshake_round_trips(
            ids in (any::<u64>(), any::<u32>(), any::<u64>()),
            qp in (0..=MAX_24BIT, 0..=MAX_24BIT, any::<[u8; 16]>(), any::<u16>(), 1u8..=5),
            regions in (region(), region()),
            credits in any::<u32>(),
        ) {
            let h = Handshake {
                version: VERSION,
                node_id: ids.0,
                shard_id: ids.1,
                epoch: ids.2,
                qp_num: qp.0,
                psn: qp.1,
                gid: qp.2,
                lid: qp.3,
                mtu: Mtu::from_code(qp.4).unwrap(),
                recv_ring: regions.0,
                pool: regions.1,
                credits,
            };
            prop_assert_eq!(Handshake::decode(&h.encode()), Ok(h));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..=Handshake::LEN + 4)) {
            let _ = Handshake::decode(&bytes);
        }
    }
}
