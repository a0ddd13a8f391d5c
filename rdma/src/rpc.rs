//! The native protocol over RDMA: the messages a client and a shard exchange to move native
//! frames (`net/PROTOCOL.md`) through registered memory, and the set-up of one session.
//!
//! # Session set-up (out of band, over TCP, on the shard's RDMA port)
//!
//! A session is two TCP connections to the same shard port. With the soft provider each becomes
//! one queue pair's link; with verbs they only carry the exchange (queue-pair numbers, PSNs, GID,
//! LID, MTU: [`SessionProvider`]), and the control connection stays open for the session's life,
//! its end-of-file telling either side that the other is gone:
//!
//! 1. **control**: the client sends its [`Handshake`] (it starts with
//!    the handshake magic `CKVR`); the shard answers with its own, then with an 8-byte
//!    little-endian **session token**. This connection carries the control channel;
//! 2. **data**: the client opens a second connection and sends an [`Attach`] (magic `CKVD`) naming
//!    the token and its data queue pair; the shard answers with an [`Attach`] naming its own. The
//!    token tags the connection with its session, so two clients connecting at once can never get
//!    each other's data queue pairs.
//!
//! # Requests and responses (control messages, [`RpcMsg::LEN`] bytes, little-endian)
//!
//! ```text
//!  REQUEST  client -> shard    0 kind u8 = 1 | 1 reserved u8 | 2 reserved u16 | 4 tag u32
//!                              8 frames_offset u64      (client pool)
//!                             16 frames_len u32  | 20 response_capacity u32
//!                             24 response_offset u64    (client pool)
//!  RESPONSE shard -> client    0 kind u8 = 2 | 1 status u8 | 2 reserved u16 | 4 tag u32
//!                              8 pull_offset u64        (shard pool; status PULL only)
//!                             16 len u32         | 20 reserved u32 | 24 reserved u64
//!  RELEASE  client -> shard    0 kind u8 = 3 | 1..4 reserved | 4 tag u32 | 8..32 reserved
//! ```
//!
//! The client encodes native frames (one or many) into its registered pool and sends REQUEST. The
//! shard RDMA-Reads the frames into a block of its own pool, runs them, and answers with RESPONSE:
//!
//! - `WRITTEN`: the `len` response bytes were RDMA-Written to the client's response buffer before
//!   the RESPONSE was sent (the shard waits for the Write's completion, since the data and the
//!   control message travel on different queue pairs);
//! - `PULL`: the response is larger than the response buffer; it waits at `pull_offset` of the
//!   shard's pool (named in its handshake) until the client has RDMA-Read it and sent RELEASE.
//!   Nothing is executed twice and no response size has to be guessed;
//! - `BUSY` / `REFUSED`: the shard's pool had no room for the frames, or the frames could not be
//!   read or were too large: **nothing was executed**;
//! - `LOST`: the frames ran but no block was free for the response: outcome unknown.

use std::net::TcpStream;

use thiserror::Error;

use crate::channel::{ChannelConfig, ChannelError, ControlChannel};
use crate::handshake::{Handshake, Mtu, RegionDesc, VERSION};
use crate::provider::{MemoryRegion, ProtectionDomain, QpCaps, QueuePair};
use crate::soft::{SoftLink, SoftPd};

/// The first four bytes of a data connection: "CKVD" read as little-endian.
pub const DATA_MAGIC: u32 = u32::from_le_bytes(*b"CKVD");
/// The session token's length after the acceptor's handshake answer.
pub const TOKEN_LEN: usize = 8;

/// A malformed RDMA-session message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RpcError {
    /// Too short or with a bad magic / kind / status.
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// Which message.
        what: &'static str,
        /// What was wrong.
        detail: String,
    },
}

fn malformed(what: &'static str, detail: impl Into<String>) -> RpcError {
    RpcError::Malformed {
        what,
        detail: detail.into(),
    }
}

/// The data connection's preface (client) and its answer (shard).
///
/// ```text
///  0 magic u32 "CKVD" | 4 version u16 (1) | 6 reserved u16 | 8 token u64 | 16 qp_num u32 | 20 psn u32
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attach {
    /// The session token the shard gave on the control connection.
    pub token: u64,
    /// The sender's data queue pair.
    pub qp_num: u32,
    /// The sender's initial packet sequence number on it.
    pub psn: u32,
}

impl Attach {
    /// Encoded size.
    pub const LEN: usize = 24;

    /// Encodes into the fixed layout.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut buf = [0u8; Self::LEN];
        buf[0..4].copy_from_slice(&DATA_MAGIC.to_le_bytes());
        buf[4..6].copy_from_slice(&1u16.to_le_bytes());
        buf[8..16].copy_from_slice(&self.token.to_le_bytes());
        buf[16..20].copy_from_slice(&self.qp_num.to_le_bytes());
        buf[20..24].copy_from_slice(&self.psn.to_le_bytes());
        buf
    }

    /// Decodes and checks magic, version and reserved bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, RpcError> {
        if bytes.len() != Self::LEN {
            return Err(malformed("attach", format!("{} bytes", bytes.len())));
        }
        let magic = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        if magic != DATA_MAGIC || bytes[4..6] != 1u16.to_le_bytes() || bytes[6..8] != [0, 0] {
            return Err(malformed("attach", format!("header {:?}", &bytes[..8])));
        }
        Ok(Self {
            token: u64_at(bytes, 8),
            qp_num: u32_at(bytes, 16),
            psn: u32_at(bytes, 20),
        })
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// What a RESPONSE says about the response bytes. See the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    /// Written into the client's response buffer.
    Written = 0,
    /// Waiting in the shard's pool for the client to read (then RELEASE).
    Pull = 1,
    /// The shard's pool was full: nothing was executed.
    Busy = 2,
    /// The frames could not be read or were larger than the shard accepts: nothing was executed.
    Refused = 3,
    /// Executed, but the response could not be delivered: outcome unknown.
    Lost = 4,
}

impl Status {
    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => Self::Written,
            1 => Self::Pull,
            2 => Self::Busy,
            3 => Self::Refused,
            4 => Self::Lost,
            _ => return None,
        })
    }
}

/// A control message of the native protocol over RDMA. See the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RpcMsg {
    /// Frames to run, and where their responses may go.
    Request {
        /// Chosen by the client; echoed in the RESPONSE.
        tag: u32,
        /// The frames' offset in the client's pool.
        frames_offset: u64,
        /// Their length.
        frames_len: u32,
        /// The response buffer's offset in the client's pool.
        response_offset: u64,
        /// Its capacity.
        response_capacity: u32,
    },
    /// The answer to one REQUEST.
    Response {
        /// The request's tag.
        tag: u32,
        /// Where the response bytes are.
        status: Status,
        /// Response bytes.
        len: u32,
        /// For [`Status::Pull`]: the response's offset in the shard's pool.
        pull_offset: u64,
    },
    /// The client has read a pulled response: the shard may reuse its block.
    Release {
        /// The request's tag.
        tag: u32,
    },
}

const KIND_REQUEST: u8 = 1;
const KIND_RESPONSE: u8 = 2;
const KIND_RELEASE: u8 = 3;

impl RpcMsg {
    /// Encoded size (it fits a control message's payload).
    pub const LEN: usize = 32;

    /// Encodes into the fixed layout.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut buf = [0u8; Self::LEN];
        match *self {
            Self::Request {
                tag,
                frames_offset,
                frames_len,
                response_offset,
                response_capacity,
            } => {
                buf[0] = KIND_REQUEST;
                buf[4..8].copy_from_slice(&tag.to_le_bytes());
                buf[8..16].copy_from_slice(&frames_offset.to_le_bytes());
                buf[16..20].copy_from_slice(&frames_len.to_le_bytes());
                buf[20..24].copy_from_slice(&response_capacity.to_le_bytes());
                buf[24..32].copy_from_slice(&response_offset.to_le_bytes());
            }
            Self::Response {
                tag,
                status,
                len,
                pull_offset,
            } => {
                buf[0] = KIND_RESPONSE;
                buf[1] = status as u8;
                buf[4..8].copy_from_slice(&tag.to_le_bytes());
                buf[8..16].copy_from_slice(&pull_offset.to_le_bytes());
                buf[16..20].copy_from_slice(&len.to_le_bytes());
            }
            Self::Release { tag } => {
                buf[0] = KIND_RELEASE;
                buf[4..8].copy_from_slice(&tag.to_le_bytes());
            }
        }
        buf
    }

    /// Decodes a control message's payload.
    pub fn decode(bytes: &[u8]) -> Result<Self, RpcError> {
        if bytes.len() != Self::LEN {
            return Err(malformed("control message", format!("{} bytes", bytes.len())));
        }
        let tag = u32_at(bytes, 4);
        match bytes[0] {
            KIND_REQUEST => Ok(Self::Request {
                tag,
                frames_offset: u64_at(bytes, 8),
                frames_len: u32_at(bytes, 16),
                response_capacity: u32_at(bytes, 20),
                response_offset: u64_at(bytes, 24),
            }),
            KIND_RESPONSE => Ok(Self::Response {
                tag,
                status: Status::from_code(bytes[1])
                    .ok_or_else(|| malformed("response", format!("status {}", bytes[1])))?,
                len: u32_at(bytes, 16),
                pull_offset: u64_at(bytes, 8),
            }),
            KIND_RELEASE => Ok(Self::Release { tag }),
            kind => Err(malformed("control message", format!("kind {kind}"))),
        }
    }
}

/// This end's addressing, announced in its handshake and attach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalAddress {
    /// The port's GID (zero for the soft provider).
    pub gid: [u8; 16],
    /// The port's LID (InfiniBand; zero on RoCE and for the soft provider).
    pub lid: u16,
    /// The largest path MTU this end supports.
    pub mtu: Mtu,
}

/// What one end learned of the other's queue pairs during the set-up exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerQueuePairs {
    /// The peer's handshake: its control queue pair, PSN, GID, LID and MTU.
    pub handshake: Handshake,
    /// The peer's attach: its data queue pair and PSN.
    pub data: Attach,
}

/// A provider that can carry sessions: how it names this end in the set-up exchange and how it
/// turns what the exchange taught into the [`QueuePair::Remote`]s its queue pairs connect to.
///
/// The set-up always runs over two TCP connections (control and data). A provider whose queue
/// pairs carry their traffic over those very connections ([`Self::LINKS_OVER_SETUP`], the soft
/// provider) takes them over: the caller must not read or write them afterwards. Otherwise (verbs)
/// the connections are only how addresses travel; the caller keeps the control connection open
/// and treats its end-of-file as the peer's death, which a queue pair with nothing outstanding
/// would never report.
pub trait SessionProvider: ProtectionDomain {
    /// Whether the queue pairs' traffic runs over the set-up connections.
    const LINKS_OVER_SETUP: bool;

    /// This end's addressing.
    fn local_address(&self) -> LocalAddress;

    /// The remotes for the control and the data queue pair. `control` and `data` are (duplicates
    /// of) the set-up connections, in blocking mode.
    fn remotes(
        &self,
        peer: &PeerQueuePairs,
        local: &Endpoint<Self>,
        control: TcpStream,
        data: TcpStream,
    ) -> Result<(RemoteOf<Self>, RemoteOf<Self>), ChannelError>
    where
        Self: Sized;
}

/// What a provider's queue pairs connect to.
pub type RemoteOf<P> = <<P as ProtectionDomain>::Qp as QueuePair>::Remote;

impl SessionProvider for SoftPd {
    const LINKS_OVER_SETUP: bool = true;

    fn local_address(&self) -> LocalAddress {
        LocalAddress {
            gid: [0; 16],
            lid: 0,
            mtu: Mtu::Mtu4096,
        }
    }

    fn remotes(
        &self,
        _peer: &PeerQueuePairs,
        _local: &Endpoint<Self>,
        control: TcpStream,
        data: TcpStream,
    ) -> Result<(SoftLink, SoftLink), ChannelError> {
        for stream in [&control, &data] {
            stream
                .set_nonblocking(false)
                .map_err(|e| ChannelError::Config(format!("blocking mode for a link: {e}")))?;
        }
        Ok((SoftLink::tcp(control), SoftLink::tcp(data)))
    }
}

#[cfg(feature = "verbs")]
impl SessionProvider for crate::verbs::VerbsPd {
    const LINKS_OVER_SETUP: bool = false;

    fn local_address(&self) -> LocalAddress {
        LocalAddress {
            gid: self.gid(),
            lid: self.lid(),
            mtu: self.mtu(),
        }
    }

    fn remotes(
        &self,
        peer: &PeerQueuePairs,
        local: &Endpoint<Self>,
        _control: TcpStream,
        _data: TcpStream,
    ) -> Result<(crate::verbs::VerbsRemote, crate::verbs::VerbsRemote), ChannelError> {
        use crate::verbs::VerbsRemote;
        let control = VerbsRemote::from_handshake(&peer.handshake, local.control_psn, self.mtu());
        let data = VerbsRemote {
            qp_num: peer.data.qp_num,
            psn: peer.data.psn,
            local_psn: local.data_psn,
            ..control
        };
        Ok((control, data))
    }
}

/// One end of a session: the control channel and the data queue pair with its completion queue
/// (all data transfers are signaled, so they complete there in order).
pub struct Endpoint<P: ProtectionDomain> {
    /// The control channel.
    pub chan: ControlChannel<P::Qp, P::Cq>,
    /// The data queue pair (RDMA Read and Write only; nothing posts receives on it).
    pub data_qp: P::Qp,
    /// Its completion queue.
    pub data_cq: P::Cq,
    /// The control queue pair's initial packet sequence number, announced in the handshake.
    pub control_psn: u32,
    /// The data queue pair's, announced in the attach.
    pub data_psn: u32,
}

/// The soft provider's endpoint.
pub type SoftEndpoint = Endpoint<SoftPd>;

impl<P: ProtectionDomain> std::fmt::Debug for Endpoint<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("chan", &self.chan)
            .field("control_psn", &self.control_psn)
            .field("data_psn", &self.data_psn)
            .finish_non_exhaustive()
    }
}

/// A 24-bit initial packet sequence number. It only has to differ between successive queue pairs
/// of the same numbers, so that a late packet of an old connection is not taken for a new one's.
fn initial_psn() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mixed = (nanos ^ COUNTER.fetch_add(0x9E37_79B9, Ordering::Relaxed)).wrapping_mul(0x85EB_CA6B);
    (mixed ^ (mixed >> 13)) & 0x00FF_FFFF
}

impl<P: ProtectionDomain> Endpoint<P> {
    /// Creates both queue pairs in INIT on `pd` (the domain of the pool the data path uses, so
    /// the peer's Reads and Writes find it), registering the control channel's small ring (a fixed
    /// size, per session; data buffers always come from the pool registered at start-up).
    /// `data_depth` bounds the data transfers outstanding at once.
    pub fn new(pd: &P, config: ChannelConfig, data_depth: u32) -> Result<Self, ChannelError> {
        let cq = pd.create_cq(config.cq_capacity())?;
        let caps = QpCaps {
            max_send_wr: config.send_queue_depth,
            max_recv_wr: config.recv_slots(),
        };
        let qp = pd.create_qp(&cq, &cq, caps)?;
        qp.to_init()?;
        let chan = ControlChannel::new(qp, cq, pd.register(config.region_len())?, config)?;
        let data_cq = pd.create_cq(data_depth as usize)?;
        let data_qp = pd.create_qp(
            &data_cq,
            &data_cq,
            QpCaps {
                max_send_wr: data_depth,
                max_recv_wr: 1,
            },
        )?;
        data_qp.to_init()?;
        Ok(Self {
            chan,
            data_qp,
            data_cq,
            control_psn: initial_psn(),
            data_psn: initial_psn(),
        })
    }

    /// Connects both queue pairs to the peer's (after the handshake and the attach) with the
    /// negotiated credits.
    pub fn connect(
        &mut self,
        credits: u32,
        control: <P::Qp as QueuePair>::Remote,
        data: <P::Qp as QueuePair>::Remote,
    ) -> Result<(), ChannelError> {
        self.chan.limit_credits(credits)?;
        self.chan.qp().to_rtr(control)?;
        self.chan.qp().to_rts()?;
        self.data_qp.to_rtr(data)?;
        self.data_qp.to_rts()?;
        Ok(())
    }
}

impl<P: SessionProvider> Endpoint<P> {
    /// This end's handshake for a session: its control queue pair, PSN, addressing and receive
    /// ring, the `pool` the peer reads and writes, and the credits it proposes or grants.
    pub fn handshake(&self, pd: &P, node_id: u64, shard_id: u32, epoch: u64, pool: RegionDesc) -> Handshake {
        let address = pd.local_address();
        Handshake {
            version: VERSION,
            node_id,
            shard_id,
            epoch,
            qp_num: self.chan.qp().qp_num(),
            psn: self.control_psn,
            gid: address.gid,
            lid: address.lid,
            mtu: address.mtu,
            recv_ring: self.chan.region().desc(),
            pool,
            credits: self.chan.config().credits,
        }
    }

    /// This end's attach for the session `token`: its data queue pair and PSN.
    pub fn attach(&self, token: u64) -> Attach {
        Attach {
            token,
            qp_num: self.data_qp.qp_num(),
            psn: self.data_psn,
        }
    }

    /// Connects both queue pairs once the exchange is done: `control` and `data` are (duplicates
    /// of) the set-up connections, which the provider takes over when it runs its links over them.
    pub fn connect_to(
        &mut self,
        pd: &P,
        credits: u32,
        peer: &PeerQueuePairs,
        control: TcpStream,
        data: TcpStream,
    ) -> Result<(), ChannelError> {
        let (control, data) = pd.remotes(peer, self, control, data)?;
        self.connect(credits, control, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let msgs = [
            RpcMsg::Request {
                tag: 7,
                frames_offset: 1 << 40,
                frames_len: 123,
                response_offset: 99,
                response_capacity: 65536,
            },
            RpcMsg::Response {
                tag: u32::MAX,
                status: Status::Pull,
                len: 1 << 20,
                pull_offset: 4096,
            },
            RpcMsg::Release { tag: 3 },
        ];
        for msg in msgs {
            assert_eq!(RpcMsg::decode(&msg.encode()), Ok(msg));
        }
        let attach = Attach {
            token: 0xDEAD_BEEF_0000_0001,
            qp_num: 0x00AB_CDEF,
            psn: 5,
        };
        assert_eq!(Attach::decode(&attach.encode()), Ok(attach));
    }

    #[test]
    fn malformed_messages_are_refused() {
        assert!(RpcMsg::decode(&[0u8; 31]).is_err());
        assert!(RpcMsg::decode(&[9u8; 32]).is_err(), "unknown kind");
        let mut response = RpcMsg::Release { tag: 1 }.encode();
        response[0] = KIND_RESPONSE;
        response[1] = 200;
        assert!(RpcMsg::decode(&response).is_err(), "unknown status");
        let mut attach = Attach {
            token: 1,
            qp_num: 2,
            psn: 3,
        }
        .encode();
        attach[0] ^= 1;
        assert!(Attach::decode(&attach).is_err(), "bad magic");
        assert!(Attach::decode(&attach[..20]).is_err());
    }
}
