//! The native protocol over RDMA (`--rdma`): each shard serves its own RDMA sessions.
//!
//! ```text
//!  start-up:  per shard: one protection domain, one pool of --rdma-pool bytes registered once
//!             and carved by a buddy allocator; a TCP handshake listener on rdma-port + i
//!  session:   control TCP connection: Handshake ⇄ Handshake + token   (corekv_rdma::rpc)
//!             data TCP connection:    Attach(token) ⇄ Attach          (tags it with its session)
//!             ─▶ control channel + data queue pair, served by one task of this shard
//!  request:   REQUEST(frames at client offset, response buffer) ─▶ RDMA Read into a pool block
//!             ─▶ native::answer_frames (the TCP path's execution) ─▶ log barrier (durability)
//!             ─▶ response into a pool block ─▶ RDMA Write into the client's buffer, or PULL
//!             ─▶ RESPONSE
//! ```
//!
//! Frames stay exactly the native protocol's: RDMA only moves them. A key another shard owns is
//! refused with WRONG_SHARD as on TCP, so a request never crosses cores.
//!
//! Completion polling: the session task takes what the completion queues hold without blocking,
//! yields with `yield_if_needed` between batches, and parks on the completion queues (`arm` with
//! its waker) when there is nothing to do, so an idle shard does not burn its core. (A verbs
//! completion queue could not be awaited by glommio: its task would poll and sleep on a timer
//! when idle instead; the node does not serve verbs yet.)
//!
//! Memory: data buffers come from the shard's pool only, never registered on the request path;
//! the control channel's fixed-size ring (about 12 KiB) is registered once per session, at
//! connection time.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use corekv_net::native::{FrameDecoder, Limits};
use corekv_rdma::channel::{ChannelConfig, ChannelError, PAYLOAD_MAX};
use corekv_rdma::handshake::{Handshake, Mtu, PeerEpochs, RegionDesc, MAGIC, VERSION};
use corekv_rdma::pool::{self, BufferPool, PoolBuf, PoolError};
use corekv_rdma::provider::{CompletionQueue, MemoryRegion, ProtectionDomain, QueuePair, RemoteAddr, WorkCompletion};
use corekv_rdma::rpc::{Attach, RpcMsg, SoftEndpoint, Status, DATA_MAGIC};
use corekv_rdma::session::{self, SessionError};
use corekv_rdma::soft::{SoftCq, SoftMr, SoftPd};
use futures::channel::oneshot;
use futures::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};

use crate::config::{Config, RdmaProvider};
use crate::native::{answer_frames, Answered, Transport};
use crate::node::StartError;
use crate::shard::Shard;

/// The smallest buffer carved from a pool.
const MIN_BLOCK: usize = 1024;
/// Control messages taken and served together.
const MAX_BATCH: usize = 16;
/// Responses kept for a client to pull, per session at most.
const MAX_PULLED: usize = 64;
/// Data transfers outstanding per session at most (a batch's Reads, then its Writes).
const DATA_DEPTH: u32 = 2 * MAX_BATCH as u32;
/// How long the set-up of a session (both connections, both exchanges) may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// glommio's registered I/O memory per executor (see `node::warn_if_memlock_low`).
const GLOMMIO_LOCKED_BYTES: u64 = 10 << 20;

/// The control channel of every session: eRPC-like credits.
fn channel_config() -> ChannelConfig {
    ChannelConfig::default()
}

/// What every shard shares about RDMA: the provider, each shard's port and counters.
pub struct RdmaShared {
    pub provider: RdmaProvider,
    /// Each shard's handshake port, shard 0 first (empty when RDMA is off).
    pub ports: Vec<u16>,
    /// Per shard, written by that shard only.
    pub stats: Vec<RdmaShardStats>,
}

impl RdmaShared {
    pub fn new(provider: RdmaProvider, ports: Vec<u16>) -> Self {
        let stats = ports.iter().map(|_| RdmaShardStats::default()).collect();
        RdmaShared { provider, ports, stats }
    }

    fn stats(&self, shard: usize) -> Option<&RdmaShardStats> {
        self.stats.get(shard)
    }
}

/// One shard's RDMA counters (relaxed atomics: only its shard writes them, INFO reads them).
#[derive(Default, Debug)]
pub struct RdmaShardStats {
    /// Sessions open now.
    pub sessions: AtomicU64,
    /// Sessions set up since start.
    pub sessions_total: AtomicU64,
    /// Native requests answered over RDMA, errors included.
    pub requests: AtomicU64,
    /// Requests refused because another shard owns their key.
    pub wrong_shard: AtomicU64,
    /// Responses larger than the client's buffer, read by the client from the shard's pool.
    pub pulls: AtomicU64,
    /// Request messages refused unexecuted (pool full, bad ranges).
    pub refused: AtomicU64,
    /// Bytes of the shard's pool in use (after the last batch of any session).
    pub pool_used_bytes: AtomicU64,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// Checks at start-up what RDMA needs, before any shard starts: the provider is built in, and the
/// locked-memory limit covers glommio's I/O buffers plus every shard's pool (verbs pins them).
pub fn check_start(config: &Config) -> Result<(), StartError> {
    match config.rdma.provider {
        RdmaProvider::Off => Ok(()),
        RdmaProvider::Soft => {
            tracing::info!(
                "rdma: soft provider (RC semantics over TCP links): its {} MiB pool per shard is ordinary memory, \
                 nothing is locked",
                config.rdma.pool_bytes >> 20
            );
            Ok(())
        }
        RdmaProvider::Verbs => {
            let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_MEMLOCK)
                .map(|(soft, _hard)| soft)
                .ok();
            check_memlock(config.shards, config.rdma.pool_bytes, limit)?;
            Err(StartError::Rdma(
                "the verbs provider is not wired into the node yet (it serves `--rdma soft`); see README, RDMA".into(),
            ))
        }
    }
}

/// The node's locked-memory budget with verbs: per shard, glommio's registered I/O buffers and
/// the pool (pinned by `ibv_reg_mr`).
pub fn memlock_budget(shards: usize, pool_bytes: u64) -> u64 {
    shards as u64 * (GLOMMIO_LOCKED_BYTES + pool_bytes)
}

/// Fails when `limit` (RLIMIT_MEMLOCK's soft limit, `None` if unknown) is below the budget.
fn check_memlock(shards: usize, pool_bytes: u64, limit: Option<u64>) -> Result<(), StartError> {
    let needed = memlock_budget(shards, pool_bytes);
    match limit {
        Some(limit) if limit != nix::sys::resource::RLIM_INFINITY && limit < needed => Err(StartError::Rdma(format!(
            "locked-memory limit is {} KiB but --rdma verbs needs {} KiB ({shards} shards x ({} MiB glommio I/O \
             buffers + {} MiB --rdma-pool)): raise it with `ulimit -l {}` (or `ulimit -l unlimited`), \
             LimitMEMLOCK={} in the systemd unit, or memlock in /etc/security/limits.conf; or lower --rdma-pool",
            limit / 1024,
            needed / 1024,
            GLOMMIO_LOCKED_BYTES >> 20,
            pool_bytes >> 20,
            needed / 1024,
            needed
        ))),
        _ => Ok(()),
    }
}

/// One shard's RDMA state, created on its executor at start-up.
pub struct ShardRdma {
    shard: Rc<Shard>,
    pd: SoftPd,
    pool: RefCell<BufferPool<SoftMr>>,
    pool_desc: RegionDesc,
    epochs: RefCell<PeerEpochs>,
    /// Sessions whose data connection has not arrived yet, by token.
    pending: RefCell<HashMap<u64, oneshot::Sender<TcpStream>>>,
    next_token: Cell<u64>,
    node_id: u64,
}

impl ShardRdma {
    /// Registers the shard's pool (once, here) and returns the state its sessions share.
    pub fn new(shard: &Rc<Shard>) -> Result<Rc<ShardRdma>, StartError> {
        let config = &shard.node.config.rdma;
        let error = |e: &dyn std::fmt::Display| StartError::Rdma(format!("shard {}: {e}", shard.id));
        let pd = SoftPd::new();
        let len = usize::try_from(config.pool_bytes).map_err(|e| error(&e))?;
        let mr = pd.register(len).map_err(|e| error(&e))?;
        let pool = BufferPool::new(mr, MIN_BLOCK).map_err(|e| error(&e))?;
        let pool_desc = pool.mr().desc();
        // Tokens only tag connections (anyone who can reach the port can open a session anyway):
        // unpredictable enough that a stale or foreign attach does not hit a live session.
        let seed = shard.node.run_id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        Ok(Rc::new(ShardRdma {
            shard: shard.clone(),
            pd,
            pool: RefCell::new(pool),
            pool_desc,
            epochs: RefCell::new(PeerEpochs::new()),
            pending: RefCell::new(HashMap::new()),
            next_token: Cell::new(seed ^ (shard.id as u64).rotate_left(48)),
            node_id: seed,
        }))
    }

    fn new_token(&self) -> u64 {
        let token = self.next_token.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        self.next_token.set(token);
        token
    }

    /// Accepts handshake connections until the node stops.
    pub async fn accept_loop(self: Rc<Self>, fd: RawFd) {
        // SAFETY: `fd` is a bound, listening, non-blocking TCP socket created by the node's
        // listener binding and handed to this shard alone (its owner gave it up with
        // `into_raw_fd`).
        let listener = unsafe { TcpListener::from_raw_fd(fd) };
        let node = self.shard.node.clone();
        loop {
            match listener.accept().await {
                Ok(stream) => {
                    if node.is_shutting_down() {
                        break;
                    }
                    let this = self.clone();
                    glommio::spawn_local(async move { this.serve_connection(stream).await }).detach();
                }
                Err(e) => {
                    if node.is_shutting_down() {
                        break;
                    }
                    tracing::warn!("shard {}: rdma accept failed: {e}", self.shard.id);
                    glommio::timer::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }

    async fn serve_connection(self: Rc<Self>, mut stream: TcpStream) {
        let mut magic = [0u8; 4];
        if stream.set_read_timeout(Some(SETUP_TIMEOUT)).is_err() || stream.read_exact(&mut magic).await.is_err() {
            return;
        }
        match u32::from_le_bytes(magic) {
            MAGIC => {
                if let Err(e) = self.serve_session(stream, magic).await {
                    tracing::debug!("shard {}: rdma session ended: {e}", self.shard.id);
                }
            }
            DATA_MAGIC => self.attach(stream, magic).await,
            other => tracing::debug!("shard {}: not an rdma handshake (magic {other:#010x})", self.shard.id),
        }
    }

    /// A data connection: hands it to the session its token names.
    async fn attach(&self, mut stream: TcpStream, magic: [u8; 4]) {
        let mut bytes = [0u8; Attach::LEN];
        bytes[..4].copy_from_slice(&magic);
        if stream.read_exact(&mut bytes[4..]).await.is_err() {
            return;
        }
        let Ok(attach) = Attach::decode(&bytes) else {
            return;
        };
        let waiting = self.pending.borrow_mut().remove(&attach.token);
        if let Some(session) = waiting {
            // The session may have given up meanwhile: then the stream just closes.
            let _ = session.send(stream);
        }
    }

    /// A control connection: handshake, wait for the data connection, connect, serve.
    async fn serve_session(self: &Rc<Self>, mut stream: TcpStream, magic: [u8; 4]) -> Result<(), PeerError> {
        let mut theirs = [0u8; Handshake::LEN];
        theirs[..4].copy_from_slice(&magic);
        stream.read_exact(&mut theirs[4..]).await?;
        // Sessions count against --max-clients like connections (each costs a control ring and,
        // with the soft provider, link threads): past it, the handshake gets no answer.
        let node = &self.shard.node;
        let sessions: u64 = node.rdma.stats.iter().map(|s| s.sessions.load(Ordering::Relaxed)).sum();
        let connected = node.connected_clients.load(Ordering::Relaxed) as u64;
        if sessions + connected >= node.max_clients.load(Ordering::Relaxed) as u64 {
            return Err(PeerError::Setup("max number of clients reached".into()));
        }
        let mut endpoint = SoftEndpoint::new(&self.pd, channel_config(), DATA_DEPTH)?;
        let ours = Handshake {
            version: VERSION,
            node_id: self.node_id,
            shard_id: self.shard.id as u32,
            epoch: 0,
            qp_num: endpoint.chan.qp().qp_num(),
            psn: 0,
            gid: [0; 16],
            lid: 0,
            mtu: Mtu::Mtu4096,
            recv_ring: endpoint.chan.region().desc(),
            pool: self.pool_desc,
            credits: channel_config().credits,
        };
        let (peer, credits, answer) = session::accept_bytes(&theirs, &ours, &mut self.epochs.borrow_mut())?;
        let token = self.new_token();
        let (tx, rx) = oneshot::channel();
        self.pending.borrow_mut().insert(token, tx);
        let exchanged = async {
            stream.write_all(&answer).await?;
            stream.write_all(&token.to_le_bytes()).await?;
            stream.flush().await?;
            let timeout = glommio::timer::sleep(SETUP_TIMEOUT);
            match futures::future::select(rx, Box::pin(timeout)).await {
                futures::future::Either::Left((Ok(data), _)) => Ok(data),
                _ => Err(PeerError::Setup("no data connection for the session".into())),
            }
        };
        let result = exchanged.await;
        self.pending.borrow_mut().remove(&token);
        let mut data = result?;
        let attach = Attach {
            token,
            qp_num: endpoint.data_qp.qp_num(),
            psn: 0,
        };
        data.write_all(&attach.encode()).await?;
        data.flush().await?;
        let local_ip = stream
            .local_addr()
            .map_err(|e| PeerError::Setup(format!("local address: {e}")))?
            .ip();
        let (control, data) = (std_stream(&stream)?, std_stream(&data)?);
        drop(stream);
        endpoint.connect(credits, control, data)?;
        let stats = self.shard.node.rdma.stats(self.shard.id);
        if let Some(stats) = stats {
            bump(&stats.sessions, 1);
            bump(&stats.sessions_total, 1);
        }
        let mut session = Session {
            rdma: self.clone(),
            endpoint,
            peer_pool: peer.pool,
            local_ip,
            pulled: HashMap::new(),
            next_wr: 0,
        };
        let result = session.run().await;
        session.release_all();
        if let Some(stats) = stats {
            stats.sessions.fetch_sub(1, Ordering::Relaxed);
        }
        result
    }
}

/// A std stream on the same socket as a glommio stream (the soft provider's link threads read and
/// write it with blocking calls; the glommio stream is dropped right after, closing only its fd).
fn std_stream(stream: &TcpStream) -> std::io::Result<std::net::TcpStream> {
    // SAFETY: the fd belongs to `stream`, which is alive for the whole borrow; the borrow is only
    // used to duplicate it.
    let borrowed = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
    Ok(std::net::TcpStream::from(borrowed.try_clone_to_owned()?))
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("handshake: {0}")]
    Session(#[from] SessionError),
    #[error("set-up: {0}")]
    Setup(String),
    #[error("control channel: {0}")]
    Channel(#[from] ChannelError),
    #[error("data path: {0}")]
    Pool(#[from] PoolError),
    #[error("bad control message: {0}")]
    Rpc(#[from] corekv_rdma::rpc::RpcError),
    #[error("writes could not be made durable: {0}")]
    Durability(String),
}

/// One request message of a batch, through its stages.
struct Job {
    tag: u32,
    frames: Option<PoolBuf>,
    response_offset: u64,
    response_capacity: u32,
    /// Set once the answer is decided without executing (refused) or after executing.
    status: Option<Status>,
    out: BytesMut,
    response: Option<PoolBuf>,
    pull_offset: u64,
}

/// One connected session, served by one task of its shard.
struct Session {
    rdma: Rc<ShardRdma>,
    endpoint: SoftEndpoint,
    peer_pool: RegionDesc,
    local_ip: IpAddr,
    /// Responses waiting for the client to read them (PULL), by tag.
    pulled: HashMap<u32, PoolBuf>,
    next_wr: u64,
}

impl Session {
    async fn run(&mut self) -> Result<(), PeerError> {
        let mut buf = [0u8; PAYLOAD_MAX];
        let mut batch: Vec<RpcMsg> = Vec::with_capacity(MAX_BATCH);
        let mut jobs: Vec<Job> = Vec::with_capacity(MAX_BATCH);
        loop {
            // Parks on the control completion queue until a message (or the peer's failure) comes.
            let len = {
                let chan = &mut self.endpoint.chan;
                futures::future::poll_fn(|cx| chan.poll_recv(cx, &mut buf)).await?
            };
            batch.push(RpcMsg::decode(&buf[..len])?);
            while batch.len() < MAX_BATCH {
                match self.endpoint.chan.try_recv(&mut buf)? {
                    Some(len) => batch.push(RpcMsg::decode(&buf[..len])?),
                    None => break,
                }
            }
            let served = self.serve_batch(&batch, &mut jobs).await;
            // Whatever happened, the batch's blocks go back to the pool (a failed session must
            // not leak the shard's memory).
            self.free_blocks(&mut jobs);
            let close = served?;
            batch.clear();
            if close {
                return Ok(());
            }
            glommio::yield_if_needed().await;
        }
    }

    /// Serves one batch of control messages; true when the session must end after it.
    async fn serve_batch(&mut self, batch: &[RpcMsg], jobs: &mut Vec<Job>) -> Result<bool, PeerError> {
        let mut reads = 0;
        for msg in batch.iter() {
            match *msg {
                RpcMsg::Release { tag } => {
                    if let Some(block) = self.pulled.remove(&tag) {
                        self.rdma.pool.borrow_mut().free(block)?;
                    }
                }
                RpcMsg::Response { .. } => {
                    return Err(PeerError::Setup("a client sent a RESPONSE".into()));
                }
                RpcMsg::Request {
                    tag,
                    frames_offset,
                    frames_len,
                    response_offset,
                    response_capacity,
                } => {
                    let mut job = Job {
                        tag,
                        frames: None,
                        response_offset,
                        response_capacity,
                        status: None,
                        out: BytesMut::new(),
                        response: None,
                        pull_offset: 0,
                    };
                    let in_peer = |offset: u64, len: u32| {
                        offset
                            .checked_add(u64::from(len))
                            .is_some_and(|end| end <= self.peer_pool.len)
                    };
                    if frames_len == 0
                        || !in_peer(frames_offset, frames_len)
                        || !in_peer(response_offset, response_capacity)
                    {
                        job.status = Some(Status::Refused);
                    } else {
                        let block = self.rdma.pool.borrow_mut().alloc(frames_len as usize);
                        match block {
                            None => {
                                let total = self.rdma.pool.borrow().allocator().total_bytes();
                                let status = if frames_len as usize > total {
                                    Status::Refused
                                } else {
                                    Status::Busy
                                };
                                job.status = Some(status);
                            }
                            Some(block) => {
                                let remote = self.peer_addr(frames_offset);
                                let block = job.frames.insert(block);
                                let pool = self.rdma.pool.borrow();
                                pool::post_read(&self.endpoint.data_qp, &pool, block, remote, self.next_wr)?;
                                self.next_wr += 1;
                                reads += 1;
                            }
                        }
                    }
                    if job.status.is_some() {
                        if let Some(stats) = self.stats() {
                            bump(&stats.refused, 1);
                        }
                    }
                    jobs.push(job);
                }
            }
        }
        wait_data(&self.endpoint.data_cq, reads).await?;

        // Execute every request read, then make their writes durable once.
        let since = self.rdma.shard.log_position();
        let mut close = false;
        let mut answered = Answered::default();
        let ports = &self.rdma.shard.node.rdma.ports;
        let transport = Transport {
            ports,
            local_ip: self.local_ip,
        };
        for job in jobs.iter_mut() {
            let Some(block) = job.frames.take() else {
                continue;
            };
            // A stopping shard stops its log writer once its connections are gone, and RDMA
            // sessions are not among them: run nothing more then, so that no write is journaled
            // after the log's final sync. No await separates this check from the execution.
            if self.rdma.shard.node.is_shutting_down() {
                self.rdma.pool.borrow_mut().free(block)?;
                job.status = Some(Status::Refused);
                close = true;
                continue;
            }
            let mut input = BytesMut::zeroed(block.len());
            {
                let mut pool = self.rdma.pool.borrow_mut();
                let read = pool.read(&block, &mut input);
                pool.free(block)?;
                read?;
            }
            let mut decoder = FrameDecoder::new(Limits::default());
            close |= answer_frames(
                &self.rdma.shard,
                &mut decoder,
                &mut input,
                &mut job.out,
                &transport,
                &mut answered,
            );
            if !input.is_empty() && !close {
                // A message must carry whole frames: a truncated one cannot be answered.
                corekv_net::native::write_error(
                    &mut job.out,
                    0,
                    false,
                    corekv_net::native::ErrorCode::MALFORMED,
                    "truncated frame in an rdma request",
                );
                close = true;
            }
            job.status = Some(Status::Written);
        }
        if let Some(stats) = self.stats() {
            bump(&stats.requests, answered.requests);
            bump(&stats.wrong_shard, answered.wrong_shard);
        }
        if let Err(reason) = self.rdma.shard.log_barrier(since).await {
            // Nothing of this batch is acknowledged: its writes may not be durable.
            return Err(PeerError::Durability(reason));
        }

        // Deliver: RDMA Write what fits the client's buffer, keep the rest for it to pull.
        let mut writes = 0;
        for job in jobs.iter_mut() {
            if job.status != Some(Status::Written) {
                continue;
            }
            let fits = job.out.len().max(1) <= job.response_capacity as usize;
            // A client that never releases what it pulled gets no more pulls (bounded memory).
            if !fits && self.pulled.len() >= MAX_PULLED {
                job.status = Some(Status::Lost);
                continue;
            }
            let block = self.rdma.pool.borrow_mut().alloc(job.out.len().max(1));
            let Some(block) = block else {
                job.status = Some(Status::Lost);
                continue;
            };
            let block = job.response.insert(block);
            let pool = self.rdma.pool.borrow();
            pool.write(block, &job.out)?;
            if fits {
                let remote = self.peer_addr(job.response_offset);
                pool::post_write(&self.endpoint.data_qp, &pool, block, remote, self.next_wr)?;
                self.next_wr += 1;
                writes += 1;
            } else {
                drop(pool);
                job.status = Some(Status::Pull);
                if let Some(block) = job.response.take() {
                    job.pull_offset = block.offset() as u64;
                    if let Some(stale) = self.pulled.insert(job.tag, block) {
                        // A tag reused before its RELEASE: the older response is gone.
                        self.rdma.pool.borrow_mut().free(stale)?;
                    }
                }
                if let Some(stats) = self.stats() {
                    bump(&stats.pulls, 1);
                }
            }
        }
        wait_data(&self.endpoint.data_cq, writes).await?;
        for job in jobs.iter_mut() {
            if let Some(block) = job.response.take() {
                self.rdma.pool.borrow_mut().free(block)?;
            }
            let msg = RpcMsg::Response {
                tag: job.tag,
                status: job.status.unwrap_or(Status::Lost),
                len: job.out.len() as u32,
                pull_offset: job.pull_offset,
            }
            .encode();
            let chan = &mut self.endpoint.chan;
            futures::future::poll_fn(|cx| chan.poll_send(cx, &msg))
                .await
                .map_err(|e| match e {
                    corekv_rdma::channel::TrySendError::Broken(e) => PeerError::Channel(e),
                    other => PeerError::Setup(other.to_string()),
                })?;
        }
        Ok(close)
    }

    /// Returns the blocks a batch still holds to the pool, and empties it.
    fn free_blocks(&mut self, jobs: &mut Vec<Job>) {
        let mut pool = self.rdma.pool.borrow_mut();
        for job in jobs.drain(..) {
            for block in [job.frames, job.response].into_iter().flatten() {
                // Only blocks this pool handed out are here: freeing cannot fail but for a bug.
                if let Err(e) = pool.free(block) {
                    tracing::error!("rdma pool: {e}");
                }
            }
        }
        if let Some(stats) = self.stats() {
            stats
                .pool_used_bytes
                .store(pool.allocator().used_bytes() as u64, Ordering::Relaxed);
        }
    }

    fn peer_addr(&self, offset: u64) -> RemoteAddr {
        RemoteAddr {
            addr: self.peer_pool.addr + offset,
            rkey: self.peer_pool.rkey,
        }
    }

    fn stats(&self) -> Option<&RdmaShardStats> {
        self.rdma.shard.node.rdma.stats(self.rdma.shard.id)
    }

    /// Returns every pulled block to the pool (the session is over).
    fn release_all(&mut self) {
        let mut pool = self.rdma.pool.borrow_mut();
        for (_, block) in self.pulled.drain() {
            if let Err(e) = pool.free(block) {
                tracing::error!("rdma pool: {e}");
            }
        }
        if let Some(stats) = self.stats() {
            stats
                .pool_used_bytes
                .store(pool.allocator().used_bytes() as u64, Ordering::Relaxed);
        }
    }
}

/// Parks until `count` data transfers have completed (they complete in order, all signaled).
async fn wait_data(cq: &SoftCq, count: usize) -> Result<(), PeerError> {
    let mut done = 0;
    let mut wcs = [WorkCompletion::EMPTY; 16];
    futures::future::poll_fn(|cx| loop {
        if done == count {
            return Poll::Ready(Ok(()));
        }
        let n = match cq.poll(&mut wcs) {
            Ok(n) => n,
            Err(e) => return Poll::Ready(Err(PeerError::Pool(e.into()))),
        };
        if n == 0 {
            // A completion that arrived since the poll makes `arm` wake at once.
            cq.arm(cx.waker());
            return Poll::Pending;
        }
        for wc in &wcs[..n] {
            if !wc.status.is_success() {
                return Poll::Ready(Err(PeerError::Pool(PoolError::Failed {
                    wr_id: wc.wr_id,
                    status: wc.status,
                })));
            }
        }
        done += n;
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memlock_budget_counts_glommio_and_the_pools() {
        assert_eq!(memlock_budget(2, 64 << 20), 2 * (74 << 20));
        assert!(check_memlock(2, 64 << 20, Some(2 * (74 << 20))).is_ok());
        assert!(
            check_memlock(2, 64 << 20, None).is_ok(),
            "unknown limit: nothing to say"
        );
        assert!(check_memlock(2, 64 << 20, Some(nix::sys::resource::RLIM_INFINITY)).is_ok());
        let err = check_memlock(2, 64 << 20, Some(8 << 20)).unwrap_err().to_string();
        assert!(err.contains("locked-memory limit is 8192 KiB"), "{err}");
        assert!(err.contains("ulimit -l 151552"), "{err}");
        assert!(err.contains("LimitMEMLOCK="), "{err}");
    }
}
