//! corekv's wire formats.
//!
//! - [`resp`]: the Redis protocol (RESP2 and RESP3): an incremental, zero-copy request parser with
//!   Redis's limits and error texts, and a reply encoder that writes either protocol version.
//! - [`native`]: corekv's native binary protocol (`PROTOCOL.md`): fixed-header frames, a sans-IO
//!   zero-copy decoder and an encoder.
//! - [`client`]: the client library of the native protocol: a sans-IO core (request ids,
//!   out-of-order completion, routing, batch splitting, the retry policy), a blocking client and,
//!   with the `tokio` feature, an async client.
//! - [`routing`]: the stable routing hash that maps a key to its hash slot and a slot to its shard.
//!
//! This crate knows nothing of storage or of the server's runtime: it turns bytes into requests and
//! replies into bytes, and (in [`client`]) sends requests to a node.

pub mod client;
pub mod native;
pub mod resp;
pub mod routing;
