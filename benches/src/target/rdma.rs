//! corekv's native protocol over RDMA (`rdma://HOST:PORT`, a node started with `--rdma soft` or
//! `--rdma verbs` as `--rdma-provider` says, any shard's RDMA handshake port as the seed): the frames and the codec are the
//! [`native`](super::native) ones; only the transport differs. Each shard is reached over one
//! [`RdmaStream`] (`corekv_net::client::rdma`), a session used as a pipe of native-protocol
//! bytes: `send` hands over whole encoded frames as one request message, `recv` appends one
//! message's response frames. Its calls block, so the load loop drives each RDMA connection on
//! a thread of its own (`load::rdma`).

use std::time::Instant;

use bytes::BytesMut;
use corekv_net::client::rdma::{RdmaOptions, RdmaProvider, RdmaStream};
use corekv_net::client::ClientConfig;
use corekv_net::native::{FrameDecoder, Limits, Request};

use super::native::topology_endpoints;
use super::{Target, CONNECT_TIMEOUT};

/// The sessions' settings: the client library's defaults, with a pool (registered once per
/// session) large enough for every message in flight even with large values: each message holds
/// up to one write batch of frames (`max_batch` bytes, plus one request past it) and reserves a
/// response buffer; a larger response is pulled into the pool. The sessions run on `provider`.
pub fn options(max_batch: usize, max_value: usize, provider: &RdmaProvider) -> RdmaOptions {
    let defaults = RdmaOptions::default();
    let message = (max_batch + max_value + 4096).next_power_of_two() + defaults.response_capacity;
    RdmaOptions {
        pool_bytes: defaults.pool_bytes.max(2 * message * (defaults.max_in_flight + 1)),
        provider: provider.clone(),
        ..defaults
    }
}

/// Opens a session with the shard whose RDMA port is `address`, within [`CONNECT_TIMEOUT`].
pub fn connect(address: &str, options: &RdmaOptions) -> Result<RdmaStream, String> {
    let config = ClientConfig {
        connect_timeout: CONNECT_TIMEOUT,
        ..ClientConfig::default()
    };
    RdmaStream::connect(address, &config, options)
        .map_err(|e| format!("cannot open an rdma session with {address}: {e}"))
}

/// Asks `target` (over an RDMA session on `provider`) for the node's topology: each shard's RDMA
/// endpoint, shard 0 first.
pub fn fetch_topology(target: &Target, provider: &RdmaProvider) -> Result<Vec<String>, String> {
    let mut stream = connect(&target.address(), &options(0, 0, provider))?;
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    let failed = |e: &dyn std::fmt::Display| format!("{target}: TOPOLOGY failed: {e} (is this a node's --rdma-port?)");
    let mut out = BytesMut::new();
    Request::Topology.encode(1, false, &mut out);
    stream.send(&out, deadline).map_err(|e| failed(&e))?;
    let mut decoder = FrameDecoder::new(Limits::default());
    let mut buf = BytesMut::new();
    loop {
        match decoder.decode(&mut buf) {
            Ok(Some(frame)) => return topology_endpoints(target, frame),
            Ok(None) => {}
            Err(e) => return Err(failed(&format!("bad native frame: {e}"))),
        }
        if !stream.recv(&mut buf, deadline).map_err(|e| failed(&e))? {
            return Err(format!("{target}: no TOPOLOGY reply within {CONNECT_TIMEOUT:?}"));
        }
    }
}
