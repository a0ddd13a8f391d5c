//! The blocking client over RDMA (cargo feature `rdma`): the same operations, routing, retries
//! and timeouts as [`blocking::Client`](super::blocking::Client), with each shard reached over an
//! RDMA session instead of a TCP connection.
//!
//! The native frames are unchanged: the sans-IO [`Connection`] encodes them and decodes the
//! responses as for TCP, and [`Router`] / `Plan` route and retry as for TCP. Only the transport
//! differs (`corekv_rdma::rpc` has the message formats):
//!
//! ```text
//!  Connection output ──▶ a block of this session's registered pool ──REQUEST──▶ shard
//!  shard: RDMA Read of the frames, run, RDMA Write of the responses into our response block
//!  ◀──RESPONSE(WRITTEN, len)── ──▶ Connection input        (or PULL: we RDMA-Read it, RELEASE)
//! ```
//!
//! The seed is `rdma://host:port`, a shard's RDMA handshake port (`--rdma-port`); its TOPOLOGY
//! names every shard's RDMA port, and the client opens one session per shard, lazily. Each session
//! registers one pool ([`RdmaOptions::pool_bytes`]) when it opens, never on the request path.
//!
//! Failures: a queue-pair error or a lost link fails the session's outstanding requests (reads
//! may be retried; a write that may have run reports `outcome_unknown`), the session is dropped,
//! and the next request reconnects with a newer session epoch. A request not answered within
//! [`ClientConfig::request_timeout`] fails with [`ClientError::Timeout`] and drops the session.
//! A request the shard refused unexecuted (its pool full) is reported like a lost connection,
//! conservatively (`outcome_unknown` for writes).
//!
//! Only the soft provider is supported here for now (the node serves `--rdma soft`).

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use corekv_rdma::channel::{ChannelConfig, ChannelError, PAYLOAD_MAX};
use corekv_rdma::handshake::{Handshake, Mtu, RegionDesc, VERSION};
use corekv_rdma::pool::{self, BufferPool, PoolBuf, PoolError};
use corekv_rdma::provider::{CompletionQueue, MemoryRegion, ProtectionDomain, QpState, QueuePair, RemoteAddr};
use corekv_rdma::rpc::{Attach, RpcMsg, SoftEndpoint, Status, TOKEN_LEN};
use corekv_rdma::session;
use corekv_rdma::soft::{SoftMr, SoftPd};

use super::config::{ClientConfig, Reply};
use super::connection::Connection;
use super::error::ClientError;
use super::plan::{FrameSpec, Op, Plan};
use super::router::Router;
use crate::native::{RequestRef, Response};

/// The scheme of an RDMA seed.
pub const SCHEME: &str = "rdma://";
/// Encoded requests are sent once this much is buffered (and at the end of a round).
const FLUSH_AT: usize = 16 * 1024;
/// The smallest block of a session's pool.
const MIN_BLOCK: usize = 1024;
/// Data transfers (pulls) outstanding at once per session.
const DATA_DEPTH: u32 = 4;

/// RDMA settings of the client.
#[derive(Clone, Debug)]
pub struct RdmaOptions {
    /// The registered pool of each session (one per shard): requests and responses in flight
    /// live there. A request message larger than the pool cannot be sent. Default 32 MiB.
    pub pool_bytes: usize,
    /// The response buffer given with each request message; a larger response is pulled from the
    /// shard's pool (one more round trip). Default 64 KiB.
    pub response_capacity: usize,
    /// Request messages in flight per session at most (below the session's credits). Default 16.
    pub max_in_flight: usize,
}

impl Default for RdmaOptions {
    fn default() -> Self {
        RdmaOptions {
            pool_bytes: 32 << 20,
            response_capacity: 64 << 10,
            max_in_flight: 16,
        }
    }
}

fn disconnected(reason: impl std::fmt::Display) -> ClientError {
    ClientError::Disconnected {
        outcome_unknown: false,
        reason: format!("rdma: {reason}"),
    }
}

/// `rdma://host:port` (or a bare `host:port`) → `host:port`.
pub fn strip_scheme(seed: &str) -> &str {
    seed.strip_prefix(SCHEME).unwrap_or(seed)
}

/// A random peer id and a first session epoch (the clock, so a restarted client is newer too).
fn fresh_identity() -> (u64, u64) {
    use std::hash::{BuildHasher, Hasher};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(now ^ u64::from(std::process::id()));
    (hasher.finish(), now.max(1))
}

/// A request message in flight: its frames and its response buffer in our pool.
#[derive(Debug)]
struct InFlight {
    tag: u32,
    frames: PoolBuf,
    response: PoolBuf,
}

/// One RDMA session with one shard, as a pipe of native-protocol bytes: [`send`](Self::send)
/// hands over whole encoded frames (one request message), [`recv`](Self::recv) appends one
/// request message's response frames. [`Client`] drives one per shard; a load generator that runs
/// its own codec (such as corekv-bench) can drive them directly, keeping at most
/// [`RdmaOptions::max_in_flight`] messages outstanding ([`can_send`](Self::can_send)).
pub struct RdmaStream {
    endpoint: SoftEndpoint,
    pool: BufferPool<SoftMr>,
    shard_pool: RegionDesc,
    options: RdmaOptions,
    in_flight: VecDeque<InFlight>,
    next_tag: u32,
    next_wr: u64,
    /// Kept so the domain outlives the endpoint and pool created from it.
    _pd: SoftPd,
}

impl std::fmt::Debug for RdmaStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RdmaStream")
            .field("endpoint", &self.endpoint)
            .field("in_flight", &self.in_flight.len())
            .finish_non_exhaustive()
    }
}

impl RdmaStream {
    /// Sets a session up with the shard whose RDMA port is `addr` (`host:port`, or
    /// `rdma://host:port`), as a peer of its own (a fresh node id and epoch).
    pub fn connect(addr: &str, config: &ClientConfig, options: &RdmaOptions) -> Result<RdmaStream, ClientError> {
        let (node_id, epoch) = fresh_identity();
        Self::open(strip_scheme(addr), config, options, node_id, epoch)
    }

    fn open(
        addr: &str,
        config: &ClientConfig,
        options: &RdmaOptions,
        node_id: u64,
        epoch: u64,
    ) -> Result<RdmaStream, ClientError> {
        Self::set_up(addr, config, options, node_id, epoch).map_err(|err| match err {
            // A read timeout of the set-up exchanges reads as EAGAIN: say what it was.
            ClientError::Io(io) if matches!(io.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                ClientError::from(std::io::Error::new(
                    ErrorKind::TimedOut,
                    format!("rdma session set-up with {addr} timed out"),
                ))
            }
            other => other,
        })
    }

    fn set_up(
        addr: &str,
        config: &ClientConfig,
        options: &RdmaOptions,
        node_id: u64,
        epoch: u64,
    ) -> Result<RdmaStream, ClientError> {
        let connect = || -> Result<TcpStream, ClientError> {
            let mut last = None;
            for socket_addr in addr.to_socket_addrs()? {
                match TcpStream::connect_timeout(&socket_addr, config.connect_timeout) {
                    Ok(stream) => {
                        // The set-up exchanges may not hang; the links clear this afterwards.
                        stream.set_read_timeout(Some(config.connect_timeout.max(Duration::from_secs(1))))?;
                        return Ok(stream);
                    }
                    Err(err) => last = Some(err),
                }
            }
            Err(last
                .unwrap_or_else(|| std::io::Error::new(ErrorKind::NotFound, format!("{addr} resolves to no address")))
                .into())
        };
        let mut control = connect()?;
        let pd = SoftPd::new();
        let region = pd.register(options.pool_bytes).map_err(disconnected)?;
        let pool = BufferPool::new(region, MIN_BLOCK).map_err(disconnected)?;
        let config_channel = ChannelConfig::default();
        let mut endpoint = SoftEndpoint::new(&pd, config_channel, DATA_DEPTH).map_err(disconnected)?;
        let ours = Handshake {
            version: VERSION,
            node_id,
            shard_id: 0,
            epoch,
            qp_num: endpoint.chan.qp().qp_num(),
            psn: 0,
            gid: [0; 16],
            lid: 0,
            mtu: Mtu::Mtu4096,
            recv_ring: endpoint.chan.region().desc(),
            pool: pool.mr().desc(),
            credits: config_channel.credits,
        };
        let theirs = session::initiate(&mut control, &ours).map_err(|e| match e {
            session::SessionError::Io(io) => ClientError::from(io),
            other => disconnected(other),
        })?;
        let mut token = [0u8; TOKEN_LEN];
        control.read_exact(&mut token)?;
        let token = u64::from_le_bytes(token);
        let mut data = connect()?;
        let attach = Attach {
            token,
            qp_num: endpoint.data_qp.qp_num(),
            psn: 0,
        };
        data.write_all(&attach.encode())?;
        let mut answer = [0u8; Attach::LEN];
        data.read_exact(&mut answer)?;
        let answer = Attach::decode(&answer).map_err(disconnected)?;
        if answer.token != token {
            return Err(disconnected("the shard attached another session's data connection"));
        }
        endpoint.connect(theirs.credits, control, data).map_err(disconnected)?;
        Ok(RdmaStream {
            endpoint,
            pool,
            shard_pool: theirs.pool,
            options: options.clone(),
            in_flight: VecDeque::new(),
            next_tag: 0,
            next_wr: 0,
            _pd: pd,
        })
    }

    fn is_full(&self) -> bool {
        self.in_flight.len() >= self.options.max_in_flight
    }

    /// Whether another request message may be sent now (fewer than `max_in_flight` unanswered).
    pub fn can_send(&self) -> bool {
        !self.is_full()
    }

    /// Request messages sent and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// True unless the session failed (the shard went away) since its last use.
    pub fn alive(&mut self) -> bool {
        self.endpoint.chan.progress().is_ok()
            && self.endpoint.chan.error().is_none()
            && self.endpoint.chan.qp().state() == QpState::Rts
            && self.endpoint.data_qp.state() == QpState::Rts
    }

    /// Sends `frames` (whole encoded frames) as one request message; the caller keeps below
    /// `max_in_flight` ([`can_send`](Self::can_send)). Parks until `deadline` at most when the
    /// control channel is out of credits.
    pub fn send(&mut self, frames: &[u8], deadline: Instant) -> Result<(), ClientError> {
        let too_large = |pool: &BufferPool<SoftMr>| {
            disconnected(format!(
                "a request of {} bytes does not fit the session's pool ({} bytes, {} in use)",
                frames.len(),
                pool.allocator().total_bytes(),
                pool.allocator().used_bytes()
            ))
        };
        let Some(block) = self.pool.alloc(frames.len()) else {
            return Err(too_large(&self.pool));
        };
        let response = match self.pool.alloc(self.options.response_capacity) {
            Some(response) => response,
            None => {
                let err = too_large(&self.pool);
                self.pool.free(block).map_err(disconnected)?;
                return Err(err);
            }
        };
        self.pool.write(&block, frames).map_err(disconnected)?;
        let tag = self.next_tag;
        self.next_tag = self.next_tag.wrapping_add(1);
        let msg = RpcMsg::Request {
            tag,
            frames_offset: block.offset() as u64,
            frames_len: frames.len() as u32,
            response_offset: response.offset() as u64,
            response_capacity: response.len() as u32,
        };
        self.in_flight.push_back(InFlight {
            tag,
            frames: block,
            response,
        });
        let timeout = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        self.endpoint
            .chan
            .send_blocking(&msg.encode(), timeout)
            .map_err(disconnected)?;
        Ok(())
    }

    /// Waits until `deadline` for one response message and appends its frames to `input`.
    /// `Ok(false)` when the deadline passed first.
    pub fn recv(&mut self, input: &mut bytes::BytesMut, deadline: Instant) -> Result<bool, ClientError> {
        let mut buf = [0u8; PAYLOAD_MAX];
        let len = loop {
            if let Some(len) = self.endpoint.chan.try_recv(&mut buf).map_err(disconnected)? {
                break len;
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            self.endpoint
                .chan
                .cq()
                .wait(deadline - now)
                .map_err(|e| disconnected(ChannelError::from(e)))?;
        };
        let RpcMsg::Response {
            tag,
            status,
            len,
            pull_offset,
        } = RpcMsg::decode(&buf[..len]).map_err(disconnected)?
        else {
            return Err(disconnected("the shard sent a message that is not a RESPONSE"));
        };
        let Some(at) = self.in_flight.iter().position(|f| f.tag == tag) else {
            return Err(disconnected(format!("a RESPONSE for unknown tag {tag}")));
        };
        let Some(done) = self.in_flight.remove(at) else {
            return Err(disconnected("in-flight bookkeeping (client bug)"));
        };
        let len = len as usize;
        let start = input.len();
        let result = match status {
            Status::Written if len <= done.response.len() => {
                input.resize(start + len, 0);
                self.pool
                    .read(&done.response, &mut input[start..])
                    .map_err(disconnected)
            }
            Status::Written => Err(disconnected("a RESPONSE longer than its buffer")),
            Status::Pull => self.pull(tag, pull_offset, len, input, deadline),
            Status::Busy => Err(disconnected("the shard's pool is full (request not executed)")),
            Status::Refused => Err(disconnected("the shard refused the request (not executed)")),
            Status::Lost => Err(disconnected("the shard could not deliver the response")),
        };
        self.pool.free(done.frames).map_err(disconnected)?;
        self.pool.free(done.response).map_err(disconnected)?;
        result.map(|()| true)
    }

    /// Reads a response the shard kept in its pool, then lets it go.
    fn pull(
        &mut self,
        tag: u32,
        offset: u64,
        len: usize,
        input: &mut bytes::BytesMut,
        deadline: Instant,
    ) -> Result<(), ClientError> {
        let block = self
            .pool
            .alloc(len)
            .ok_or_else(|| disconnected(format!("a response of {len} bytes does not fit the session's pool")))?;
        let remote = RemoteAddr {
            addr: self.shard_pool.addr + offset,
            rkey: self.shard_pool.rkey,
        };
        let wr_id = self.next_wr;
        self.next_wr += 1;
        let timeout = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        let read = pool::post_read(&self.endpoint.data_qp, &self.pool, &block, remote, wr_id)
            .and_then(|()| pool::wait_for(&self.endpoint.data_cq, wr_id, timeout).map(drop))
            .and_then(|()| {
                let start = input.len();
                input.resize(start + len, 0);
                self.pool.read(&block, &mut input[start..])
            });
        self.pool.free(block).map_err(disconnected)?;
        read.map_err(|e: PoolError| disconnected(e))?;
        let release = RpcMsg::Release { tag }.encode();
        self.endpoint
            .chan
            .send_blocking(&release, timeout)
            .map_err(disconnected)?;
        Ok(())
    }
}

type Event = (usize, Result<Response, ClientError>);

/// One shard's session and its protocol state. Tokens are frame indices.
struct ShardConn {
    session: RdmaStream,
    conn: Connection<usize>,
}

impl ShardConn {
    fn fail(&mut self, cause: ClientError, events: &mut Vec<Event>) {
        events.extend(self.conn.fail(cause).into_iter().map(|(token, err)| (token, Err(err))));
    }

    /// Sends everything encoded so far as one request message.
    fn flush(&mut self, events: &mut Vec<Event>) {
        if self.conn.is_failed() || self.conn.output_len() == 0 {
            return;
        }
        while self.session.is_full() && !self.conn.is_failed() {
            self.read_some(events);
        }
        if self.conn.is_failed() {
            return;
        }
        let out = self.conn.take_output();
        let deadline = self
            .conn
            .next_deadline()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
        if let Err(err) = self.session.send(&out, deadline) {
            self.fail(err, events);
        }
    }

    fn drain(&mut self, events: &mut Vec<Event>) {
        loop {
            match self.conn.poll_completion() {
                Ok(Some(completion)) => events.push((completion.token, Ok(completion.response))),
                Ok(None) => return,
                Err(failed) => {
                    events.extend(failed.into_iter().map(|(token, err)| (token, Err(err))));
                    return;
                }
            }
        }
    }

    /// Waits for one response (until the earliest deadline) and decodes it; fails the session on
    /// an error, or on a deadline passed with nothing received.
    fn read_some(&mut self, events: &mut Vec<Event>) {
        let Some(deadline) = self.conn.next_deadline() else {
            return;
        };
        let expired = deadline <= Instant::now();
        let mut input = self.conn.take_input();
        let got = self.session.recv(&mut input, deadline);
        self.conn.restore_input(input);
        match got {
            Ok(true) => self.drain(events),
            Ok(false) => {
                if expired || Instant::now() >= deadline {
                    self.fail(ClientError::Timeout { outcome_unknown: false }, events);
                }
            }
            Err(err) => self.fail(err, events),
        }
    }

    fn finish(&mut self, events: &mut Vec<Event>) {
        while self.conn.outstanding() > 0 && !self.conn.is_failed() {
            self.read_some(events);
        }
    }
}

/// A blocking corekv client over RDMA. Not `Sync`: one thread drives it at a time.
pub struct Client {
    seed: String,
    config: ClientConfig,
    options: RdmaOptions,
    router: Option<Router>,
    conns: Vec<Option<ShardConn>>,
    stale: bool,
    node_id: u64,
    next_epoch: u64,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("seed", &self.seed)
            .field("router", &self.router)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to the seed (`rdma://host:port`, a shard's RDMA port), fetches the topology
    /// (retrying per the policy) and returns a client. Shard sessions open lazily.
    pub fn connect(seed: impl Into<String>, config: ClientConfig) -> Result<Client, ClientError> {
        Self::connect_with(seed, config, RdmaOptions::default())
    }

    /// [`connect`](Self::connect) with RDMA settings.
    pub fn connect_with(
        seed: impl Into<String>,
        config: ClientConfig,
        options: RdmaOptions,
    ) -> Result<Client, ClientError> {
        let (node_id, epoch) = fresh_identity();
        let mut client = Client {
            seed: strip_scheme(&seed.into()).to_string(),
            config,
            options,
            router: None,
            conns: Vec::new(),
            stale: true,
            node_id,
            // Epochs only grow: a reconnection is always newer than what the shard saw last.
            next_epoch: epoch,
        };
        client.fetch_first_topology()?;
        Ok(client)
    }

    fn open_shard(&mut self, addr: &str) -> Result<ShardConn, ClientError> {
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        let session = RdmaStream::open(addr, &self.config, &self.options, self.node_id, epoch)?;
        Ok(ShardConn {
            session,
            conn: Connection::new(self.config.crc, self.config.limits),
        })
    }

    fn fetch_router(&mut self) -> Result<Router, ClientError> {
        let seed_addr = self.seed.clone();
        let mut seed = self.open_shard(&seed_addr)?;
        let deadline = Instant::now() + self.config.request_timeout;
        seed.conn.send(RequestRef::Topology, 0, deadline);
        let mut events = Vec::new();
        seed.flush(&mut events);
        while events.is_empty() && seed.conn.outstanding() > 0 {
            seed.read_some(&mut events);
        }
        match events.pop() {
            Some((_, result)) => Router::from_response(result?),
            None => Err(disconnected("the seed did not answer TOPOLOGY")),
        }
    }

    /// Drops sessions that failed while idle (the node went away); the topology is stale then.
    fn drop_dead_connections(&mut self) {
        for slot in &mut self.conns {
            if slot
                .as_mut()
                .is_some_and(|c| c.conn.is_failed() || (c.conn.outstanding() == 0 && !c.session.alive()))
            {
                *slot = None;
                self.stale = true;
            }
        }
    }

    super::blocking_operations!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_take_the_rdma_scheme_or_none() {
        assert_eq!(strip_scheme("rdma://10.0.0.1:7680"), "10.0.0.1:7680");
        assert_eq!(strip_scheme("127.0.0.1:7680"), "127.0.0.1:7680");
    }

    #[test]
    fn a_seed_that_does_not_listen_fails_to_connect() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let config = ClientConfig {
            max_retries: 0,
            ..ClientConfig::default()
        };
        let err = Client::connect(format!("rdma://{addr}"), config).unwrap_err();
        assert!(matches!(err, ClientError::Io(_)), "{err}");
    }
}
