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
//! Providers ([`RdmaOptions::provider`]): [`RdmaProvider::Soft`] (the default), the software
//! provider whose queue pairs run over the set-up TCP connections (a node started with
//! `--rdma soft`), and, with the cargo feature `rdma-verbs`, `RdmaProvider::Verbs`, libibverbs on
//! an RDMA device (a node started with `--rdma verbs`). A verbs session opens its protection
//! domain before it connects (so a machine without a device fails at once, with the device's
//! error), exchanges addresses over the set-up connections and keeps the control connection open
//! for its whole life: the shard takes its end-of-file for the client's death, and the client
//! takes the shard's for the shard's.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use corekv_rdma::channel::{ChannelConfig, ChannelError, PAYLOAD_MAX};
use corekv_rdma::handshake::RegionDesc;
use corekv_rdma::pool::{self, BufferPool, PoolBuf, PoolError};
use corekv_rdma::provider::{CompletionQueue, MemoryRegion, QpState, QueuePair, RemoteAddr};
use corekv_rdma::rpc::{Attach, Endpoint, PeerQueuePairs, RpcMsg, SessionProvider, Status, TOKEN_LEN};
use corekv_rdma::session;
use corekv_rdma::soft::SoftPd;
/// The verbs provider's device and queue-pair settings (`RdmaProvider::Verbs`).
#[cfg(feature = "rdma-verbs")]
pub use corekv_rdma::verbs::VerbsConfig;
#[cfg(feature = "rdma-verbs")]
use corekv_rdma::verbs::VerbsPd;

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

/// The RDMA provider a client's sessions run on; the shard must serve the same one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum RdmaProvider {
    /// The software provider: queue pairs over the set-up TCP connections (`--rdma soft`).
    #[default]
    Soft,
    /// libibverbs on the device, port and GID the configuration names (`--rdma verbs`; cargo
    /// feature `rdma-verbs`). Each session opens its own protection domain with it.
    #[cfg(feature = "rdma-verbs")]
    Verbs(VerbsConfig),
}

impl RdmaProvider {
    /// The provider's name, as a node's `--rdma` flag spells it: `soft` or `verbs`.
    pub fn name(&self) -> &'static str {
        match self {
            RdmaProvider::Soft => "soft",
            #[cfg(feature = "rdma-verbs")]
            RdmaProvider::Verbs(_) => "verbs",
        }
    }
}

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
    /// The provider of the sessions. Default [`RdmaProvider::Soft`].
    pub provider: RdmaProvider,
}

impl Default for RdmaOptions {
    fn default() -> Self {
        RdmaOptions {
            pool_bytes: 32 << 20,
            response_capacity: 64 << 10,
            max_in_flight: 16,
            provider: RdmaProvider::Soft,
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

/// One RDMA session with one shard on provider `P`: what [`RdmaStream`] does, for one provider.
struct Session<P: SessionProvider> {
    endpoint: Endpoint<P>,
    pool: BufferPool<P::Mr>,
    shard_pool: RegionDesc,
    options: RdmaOptions,
    in_flight: VecDeque<InFlight>,
    next_tag: u32,
    next_wr: u64,
    /// The control set-up connection, when the provider does not run its links over it (verbs):
    /// kept open (non-blocking, never read but to notice its end) for the session's life, since
    /// the shard takes its end-of-file for the client's death, and its end-of-file tells the
    /// client of the shard's.
    control: Option<TcpStream>,
    /// Kept so the domain outlives the endpoint and pool created from it (dropped last).
    _pd: P,
}

/// Opens one TCP connection of a session's set-up, with a read timeout so the exchanges cannot
/// hang.
fn connect_setup(addr: &str, config: &ClientConfig) -> Result<TcpStream, ClientError> {
    let mut last = None;
    for socket_addr in addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&socket_addr, config.connect_timeout) {
            Ok(stream) => {
                // Soft links clear this when they take the stream over; verbs sessions clear it
                // on the control connection they keep.
                stream.set_read_timeout(Some(config.connect_timeout.max(Duration::from_secs(1))))?;
                return Ok(stream);
            }
            Err(err) => last = Some(err),
        }
    }
    Err(last
        .unwrap_or_else(|| std::io::Error::new(ErrorKind::NotFound, format!("{addr} resolves to no address")))
        .into())
}

impl<P: SessionProvider> Session<P> {
    /// Sets a session up on `pd` with the shard whose RDMA port is `addr` (`host:port`).
    fn set_up(
        pd: P,
        addr: &str,
        config: &ClientConfig,
        options: &RdmaOptions,
        node_id: u64,
        epoch: u64,
    ) -> Result<Self, ClientError> {
        let mut control = connect_setup(addr, config)?;
        let region = pd.register(options.pool_bytes).map_err(disconnected)?;
        let pool = BufferPool::new(region, MIN_BLOCK).map_err(disconnected)?;
        let mut endpoint = Endpoint::new(&pd, ChannelConfig::default(), DATA_DEPTH).map_err(disconnected)?;
        let ours = endpoint.handshake(&pd, node_id, 0, epoch, pool.mr().desc());
        let theirs = session::initiate(&mut control, &ours).map_err(|e| match e {
            session::SessionError::Io(io) => ClientError::from(io),
            other => disconnected(other),
        })?;
        let mut token = [0u8; TOKEN_LEN];
        control.read_exact(&mut token)?;
        let token = u64::from_le_bytes(token);
        let mut data = connect_setup(addr, config)?;
        data.write_all(&endpoint.attach(token).encode())?;
        let mut answer = [0u8; Attach::LEN];
        data.read_exact(&mut answer)?;
        let answer = Attach::decode(&answer).map_err(disconnected)?;
        if answer.token != token {
            return Err(disconnected("the shard attached another session's data connection"));
        }
        // A provider that does not take the set-up connections over gets duplicates: the control
        // connection must stay open for the session's life.
        let kept = if P::LINKS_OVER_SETUP {
            None
        } else {
            let kept = control.try_clone()?;
            kept.set_read_timeout(None)?;
            kept.set_nonblocking(true)?;
            Some(kept)
        };
        let peer = PeerQueuePairs {
            handshake: theirs,
            data: answer,
        };
        endpoint
            .connect_to(&pd, theirs.credits, &peer, control, data)
            .map_err(disconnected)?;
        Ok(Session {
            endpoint,
            pool,
            shard_pool: theirs.pool,
            options: options.clone(),
            in_flight: VecDeque::new(),
            next_tag: 0,
            next_wr: 0,
            control: kept,
            _pd: pd,
        })
    }

    fn is_full(&self) -> bool {
        self.in_flight.len() >= self.options.max_in_flight
    }

    fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Whether the shard closed the control connection a verbs session keeps (always false for
    /// a provider whose links run over it: they report a lost link themselves).
    fn control_closed(&self) -> bool {
        let Some(control) = &self.control else {
            return false;
        };
        let mut byte = [0u8; 1];
        match control.peek(&mut byte) {
            Ok(0) => true,
            // The shard sends nothing on it after the set-up; bytes there are not an end.
            Ok(_) => false,
            Err(err) => !matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted),
        }
    }

    fn alive(&mut self) -> bool {
        self.endpoint.chan.progress().is_ok()
            && self.endpoint.chan.error().is_none()
            && self.endpoint.chan.qp().state() == QpState::Rts
            && self.endpoint.data_qp.state() == QpState::Rts
            && !self.control_closed()
    }

    fn send(&mut self, frames: &[u8], deadline: Instant) -> Result<(), ClientError> {
        let too_large = |pool: &BufferPool<P::Mr>| {
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

    fn recv(&mut self, input: &mut bytes::BytesMut, deadline: Instant) -> Result<bool, ClientError> {
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

/// A session on one of the providers.
enum AnySession {
    // Boxed (once per session, at set-up): the variants differ in size by hundreds of bytes.
    Soft(Box<Session<SoftPd>>),
    #[cfg(feature = "rdma-verbs")]
    Verbs(Box<Session<VerbsPd>>),
}

/// Runs `$body` with `$session` bound to the session, whatever its provider.
macro_rules! dispatch {
    ($any:expr, $session:ident => $body:expr) => {
        match $any {
            AnySession::Soft($session) => $body,
            #[cfg(feature = "rdma-verbs")]
            AnySession::Verbs($session) => $body,
        }
    };
}

/// One RDMA session with one shard, as a pipe of native-protocol bytes: [`send`](Self::send)
/// hands over whole encoded frames (one request message), [`recv`](Self::recv) appends one
/// request message's response frames. [`Client`] drives one per shard; a load generator that runs
/// its own codec (such as corekv-bench) can drive them directly, keeping at most
/// [`RdmaOptions::max_in_flight`] messages outstanding ([`can_send`](Self::can_send)). The
/// provider is [`RdmaOptions::provider`].
pub struct RdmaStream {
    session: AnySession,
}

impl std::fmt::Debug for RdmaStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let provider = match &self.session {
            AnySession::Soft(_) => RdmaProvider::Soft.name(),
            #[cfg(feature = "rdma-verbs")]
            AnySession::Verbs(_) => "verbs",
        };
        dispatch!(&self.session, s => f
            .debug_struct("RdmaStream")
            .field("provider", &provider)
            .field("endpoint", &s.endpoint)
            .field("in_flight", &s.in_flight.len())
            .finish_non_exhaustive())
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
        // The protection domain first: a missing or misnamed device is reported as such, before
        // any connection is tried.
        let session = match &options.provider {
            RdmaProvider::Soft => Session::set_up(SoftPd::new(), addr, config, options, node_id, epoch)
                .map(|s| AnySession::Soft(Box::new(s))),
            #[cfg(feature = "rdma-verbs")]
            RdmaProvider::Verbs(verbs) => {
                let pd = VerbsPd::open(verbs.clone()).map_err(|e| disconnected(format!("verbs device: {e}")))?;
                Session::set_up(pd, addr, config, options, node_id, epoch).map(|s| AnySession::Verbs(Box::new(s)))
            }
        };
        session.map(|session| RdmaStream { session }).map_err(|err| match err {
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

    fn is_full(&self) -> bool {
        dispatch!(&self.session, s => s.is_full())
    }

    /// Whether another request message may be sent now (fewer than `max_in_flight` unanswered).
    pub fn can_send(&self) -> bool {
        !self.is_full()
    }

    /// Request messages sent and not answered yet.
    pub fn in_flight(&self) -> usize {
        dispatch!(&self.session, s => s.in_flight())
    }

    /// True unless the session failed (the shard went away) since its last use.
    pub fn alive(&mut self) -> bool {
        dispatch!(&mut self.session, s => s.alive())
    }

    /// Sends `frames` (whole encoded frames) as one request message; the caller keeps below
    /// `max_in_flight` ([`can_send`](Self::can_send)). Parks until `deadline` at most when the
    /// control channel is out of credits.
    pub fn send(&mut self, frames: &[u8], deadline: Instant) -> Result<(), ClientError> {
        dispatch!(&mut self.session, s => s.send(frames, deadline))
    }

    /// Waits until `deadline` for one response message and appends its frames to `input`.
    /// `Ok(false)` when the deadline passed first.
    pub fn recv(&mut self, input: &mut bytes::BytesMut, deadline: Instant) -> Result<bool, ClientError> {
        dispatch!(&mut self.session, s => s.recv(input, deadline))
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

    /// Decodes the responses already received.
    fn drain(&mut self, events: &mut Vec<Event>) {
        self.conn.drain_into(events);
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

    #[test]
    fn options_default_to_the_soft_provider() {
        assert_eq!(RdmaOptions::default().provider, RdmaProvider::Soft);
        assert_eq!(RdmaProvider::default().name(), "soft");
    }

    /// Without an RDMA device (as on CI), a verbs session fails on opening its protection domain,
    /// before it connects: the seed here accepts TCP, and sees no connection.
    #[cfg(feature = "rdma-verbs")]
    #[test]
    fn verbs_without_a_device_fails_before_connecting() {
        if !corekv_rdma::verbs::device_names().is_empty() {
            eprintln!("skipped: this machine has RDMA devices");
            return;
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let seed = format!("rdma://{}", listener.local_addr().unwrap());
        let options = RdmaOptions {
            provider: RdmaProvider::Verbs(VerbsConfig::default()),
            ..RdmaOptions::default()
        };
        let err = RdmaStream::connect(&seed, &ClientConfig::default(), &options).unwrap_err();
        assert!(matches!(err, ClientError::Disconnected { .. }), "{err}");
        assert!(err.to_string().contains("no RDMA devices"), "{err}");
        let config = ClientConfig {
            max_retries: 0,
            ..ClientConfig::default()
        };
        let err = Client::connect_with(seed, config, options).unwrap_err();
        assert!(err.to_string().contains("no RDMA devices"), "{err}");
        listener.set_nonblocking(true).unwrap();
        assert_eq!(
            listener.accept().map(drop).unwrap_err().kind(),
            ErrorKind::WouldBlock,
            "no set-up connection was opened"
        );
    }
}
