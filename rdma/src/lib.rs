//! corekv's RDMA transport: reliable-connection (RC) queue pairs between shards, their peers and
//! clients.
//!
//! The transport is built in layers, bottom up:
//!
//! - [`provider`]: the traits every RDMA implementation meets (protection domain, memory regions,
//!   completion queues, RC queue pairs with the RESET → INIT → RTR → RTS / ERROR state machine,
//!   Send/Receive and RDMA Read/Write work requests, `ibv_wc_status`-named completion statuses);
//! - two providers:
//!   - [`soft`]: the same semantics in safe Rust, between two queue pairs in one process or over
//!     TCP between processes, with the failure modes of hardware (receiver-not-ready after finite
//!     retries, remote access errors, flushes when the peer dies) and optional fault injection;
//!   - `verbs` (cargo feature `verbs`, off by default): libibverbs through `rdma-sys`; the only
//!     module allowed `unsafe` code;
//! - [`buddy`]: a buddy allocator of offsets into one large registered memory region (the pool
//!   that RDMA Reads and Writes move data through, shared by every connection of a shard);
//! - [`credit`]: credit-based flow control: the receiver grants cumulative credits for the receive
//!   buffers it has re-posted, the sender never sends without one;
//! - [`handshake`]: the fixed-size, little-endian message two ends exchange out of band (over TCP)
//!   to connect their queue pairs, the credit negotiation and the session-epoch rules that reject
//!   stale or replayed handshakes; [`session`] exchanges it over a stream with those rules applied;
//! - [`channel`]: the control channel, fixed-size messages over Send/Receive with pre-posted
//!   receive buffers and credits, a bounded wait queue that pushes back on its caller, selective
//!   signalling, and separate send-queue and completion-queue accounting;
//! - [`pool`]: the data path, values moved by one-sided Read and Write between buddy-carved
//!   registered pools, on a queue pair of its own;
//! - [`rpc`]: the native protocol over RDMA: the session set-up (control and tagged data
//!   connections) and the REQUEST / RESPONSE / RELEASE control messages a client and a shard
//!   exchange.
//!
//! Nothing here owns a thread or a runtime except the soft provider's link threads: callers drive
//! channels with non-blocking calls (`try_send`, `try_recv`, `progress`) and park on the
//! completion queue (`wait` for a thread, `arm` for a task) when the channel pushes back.

#![deny(unsafe_code)]

pub mod buddy;
pub mod channel;
pub mod credit;
pub mod handshake;
pub mod pool;
pub mod provider;
pub mod rpc;
pub mod session;
pub mod soft;
#[cfg(feature = "verbs")]
#[allow(unsafe_code)]
pub mod verbs;

pub use buddy::{Block, BuddyAllocator, BuddyError};
pub use credit::{CreditError, CreditGrantor, CreditLedger};
pub use handshake::{EpochError, EpochTracker, Handshake, HandshakeError, Mtu, PeerEpochs, PeerId, RegionDesc};
