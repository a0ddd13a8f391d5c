//! corekv's RDMA transport: reliable-connection (RC) queue pairs between shards, their peers and
//! clients.
//!
//! The transport is built in layers. What exists today is the pure logic every provider will share,
//! with no verbs calls and no memory of its own:
//!
//! - [`buddy`]: a buddy allocator of offsets into one large registered memory region (the pool
//!   that RDMA Reads and Writes move data through, shared by every connection of a shard);
//! - [`credit`]: credit-based flow control for the control channel: the receiver grants cumulative
//!   credits for the receive buffers it has re-posted, the sender never sends without one;
//! - [`handshake`]: the fixed-size, little-endian message two ends exchange out of band (over TCP)
//!   to connect their queue pairs, the credit negotiation and the session-epoch rules that reject
//!   stale or replayed handshakes.
//!
//! Providers (rdma-sys verbs, and a software provider to run the protocol where there is no RDMA
//! hardware) come later and build on these pieces.

#![forbid(unsafe_code)]

pub mod buddy;
pub mod credit;
pub mod handshake;

pub use buddy::{Block, BuddyAllocator, BuddyError};
pub use credit::{CreditError, CreditGrantor, CreditLedger};
pub use handshake::{EpochError, EpochTracker, Handshake, HandshakeError, Mtu, PeerEpochs, PeerId, RegionDesc};
