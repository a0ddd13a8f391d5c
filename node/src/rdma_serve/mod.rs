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
//! Providers: the serving code is generic over [`SessionProvider`]; `--rdma soft` instantiates it
//! with the software provider, `--rdma verbs` (a build with the `rdma-verbs` feature) with
//! libibverbs on `--rdma-device`, `--rdma-ib-port` and `--rdma-gid-index`.
//!
//! Completion polling: the session task takes what the completion queues hold without blocking,
//! yields with `yield_if_needed` between batches, and parks on the completion queues (`arm` with
//! its waker) when there is nothing to do, so an idle shard does not burn its core.
//!
//! Sessions count as clients (`connected_clients`, `--max-clients`). When the node stops, every
//! idle session is told at once and ends (as does one still waiting for its data connection); a
//! session in the middle of a batch finishes and answers it first, and the shard syncs its log
//! for the last time only once all of them are over.
//!
//! Memory: data buffers come from the shard's pool only, never registered on the request path;
//! the control channel's fixed-size ring (about 12 KiB) is registered once per session, at
//! connection time.

mod session;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Waker};
use std::time::Duration;

use corekv_rdma::channel::ChannelConfig;
use corekv_rdma::handshake::{Handshake, PeerEpochs, RegionDesc, MAGIC};
use corekv_rdma::pool::BufferPool;
use corekv_rdma::provider::MemoryRegion;
use corekv_rdma::rpc::{Attach, Endpoint, PeerQueuePairs, SessionProvider, DATA_MAGIC};
use corekv_rdma::session as handshake_exchange;
use corekv_rdma::soft::SoftPd;
use futures::channel::oneshot;
use futures::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};

use self::session::{PeerError, Session};
use crate::config::{Config, RdmaProvider};
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
            if !cfg!(feature = "rdma-verbs") {
                return Err(StartError::Rdma(
                    "this corekv-node was built without the verbs provider: rebuild with \
                     `cargo build --release -p corekv-node --features rdma-verbs` (needs libibverbs-dev, \
                     librdmacm-dev and libclang-dev); see README, RDMA"
                        .into(),
                ));
            }
            #[cfg(feature = "rdma-verbs")]
            check_device(config.rdma.device.as_deref(), &corekv_rdma::verbs::device_names())?;
            let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_MEMLOCK)
                .map(|(soft, _hard)| soft)
                .ok();
            check_memlock(config.shards, config.rdma.pool_bytes, limit)
        }
    }
}

/// Fails unless the device `wanted` (or any device, with `None`) is among `present`.
#[cfg_attr(not(feature = "rdma-verbs"), allow(dead_code))]
fn check_device(wanted: Option<&str>, present: &[String]) -> Result<(), StartError> {
    let listed = || present.join(", ");
    match wanted {
        _ if present.is_empty() => Err(StartError::Rdma(
            "--rdma verbs: no RDMA devices found (`ibv_devices` lists none: no RDMA NIC, or its kernel driver is \
             not loaded); use --rdma soft on a machine without RDMA"
                .into(),
        )),
        Some(name) if !present.iter().any(|p| p == name) => Err(StartError::Rdma(format!(
            "--rdma-device {name}: no such RDMA device (present: {})",
            listed()
        ))),
        _ => Ok(()),
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

/// What the node keeps of a shard's RDMA serving: the accept loop and the sessions' registry.
pub struct ShardRdmaHandle {
    pub accepts: glommio::Task<()>,
    pub sessions: Rc<SessionRegistry>,
}

/// Opens the shard's provider, registers its pool and starts accepting sessions on the
/// handshake listener `fd` (on the shard's executor, at start-up).
pub fn start(shard: &Rc<Shard>, fd: RawFd) -> Result<ShardRdmaHandle, StartError> {
    let error = |e: &dyn std::fmt::Display| StartError::Rdma(format!("shard {}: {e}", shard.id));
    match shard.node.config.rdma.provider {
        RdmaProvider::Off => Err(error(&"rdma is off")),
        RdmaProvider::Soft => Ok(ShardRdma::new(shard, SoftPd::new())?.spawn(fd)),
        #[cfg(feature = "rdma-verbs")]
        RdmaProvider::Verbs => {
            let config = &shard.node.config.rdma;
            let pd = corekv_rdma::verbs::VerbsPd::open(corekv_rdma::verbs::VerbsConfig {
                device: config.device.clone(),
                port: config.ib_port,
                gid_index: config.gid_index,
                ..Default::default()
            })
            .map_err(|e| {
                let devices = corekv_rdma::verbs::device_names();
                let present = if devices.is_empty() {
                    "none".to_string()
                } else {
                    devices.join(", ")
                };
                error(&format!(
                    "opening the RDMA device ({}, port {}, GID index {}): {e} (devices present: {present})",
                    config.device.as_deref().unwrap_or("the first"),
                    config.ib_port,
                    config.gid_index,
                ))
            })?;
            Ok(ShardRdma::new(shard, pd)?.spawn(fd))
        }
        #[cfg(not(feature = "rdma-verbs"))]
        RdmaProvider::Verbs => Err(error(&"built without the verbs provider (feature rdma-verbs)")),
    }
}

/// The RDMA sessions of one shard: how to tell them the node stops.
#[derive(Default)]
pub struct SessionRegistry {
    stopping: Cell<bool>,
    /// The waker of each parked session, by ticket slot.
    wakers: RefCell<slab::Slab<Option<Waker>>>,
}

impl SessionRegistry {
    /// Tells every session the node stops: idle ones wake and end, busy ones end after their batch.
    pub fn stop_all(&self) {
        self.stopping.set(true);
        let wakers: Vec<Waker> = self
            .wakers
            .borrow_mut()
            .iter_mut()
            .filter_map(|(_, w)| w.take())
            .collect();
        for waker in wakers {
            waker.wake();
        }
    }

    /// Admits a session: counted as a client of the node until the ticket drops. `None` past
    /// `--max-clients` or once the node stops.
    fn admit(self: &Rc<Self>, shard: &Rc<Shard>) -> Option<SessionTicket> {
        let node = &shard.node;
        if self.stopping.get() || node.is_shutting_down() {
            return None;
        }
        node.total_connections.fetch_add(1, Ordering::Relaxed);
        let connected = node.connected_clients.fetch_add(1, Ordering::AcqRel) + 1;
        if connected > node.max_clients.load(Ordering::Relaxed) {
            node.rejected_connections.fetch_add(1, Ordering::Relaxed);
            node.connected_clients.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let slot = self.wakers.borrow_mut().insert(None);
        Some(SessionTicket {
            registry: self.clone(),
            shard: shard.clone(),
            slot,
        })
    }
}

/// One admitted session: counted in `connected_clients` and registered for the stop signal.
pub(crate) struct SessionTicket {
    registry: Rc<SessionRegistry>,
    shard: Rc<Shard>,
    slot: usize,
}

impl SessionTicket {
    /// Whether the node stops; if not, `cx`'s waker is woken when it starts to.
    fn stopping(&self, cx: &mut Context<'_>) -> bool {
        if self.registry.stopping.get() {
            return true;
        }
        if let Some(waker) = self.registry.wakers.borrow_mut().get_mut(self.slot) {
            match waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => *waker = Some(cx.waker().clone()),
            }
        }
        false
    }

    /// Resolves once the node stops.
    async fn stopped(&self) {
        std::future::poll_fn(|cx| {
            if self.stopping(cx) {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
        .await
    }
}

impl Drop for SessionTicket {
    fn drop(&mut self) {
        self.registry.wakers.borrow_mut().try_remove(self.slot);
        self.shard.node.connected_clients.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One shard's RDMA state over provider `P`, created on its executor at start-up.
pub struct ShardRdma<P: SessionProvider> {
    shard: Rc<Shard>,
    pd: P,
    pool: RefCell<BufferPool<P::Mr>>,
    pool_desc: RegionDesc,
    epochs: RefCell<PeerEpochs>,
    /// Sessions whose data connection has not arrived yet, by token.
    pending: RefCell<HashMap<u64, oneshot::Sender<(TcpStream, Attach)>>>,
    next_token: Cell<u64>,
    node_id: u64,
    sessions: Rc<SessionRegistry>,
}

impl<P: SessionProvider + 'static> ShardRdma<P> {
    /// Registers the shard's pool (once, here) and returns the state its sessions share.
    fn new(shard: &Rc<Shard>, pd: P) -> Result<Rc<Self>, StartError> {
        let config = &shard.node.config.rdma;
        let error = |e: &dyn std::fmt::Display| StartError::Rdma(format!("shard {}: {e}", shard.id));
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
            sessions: Rc::new(SessionRegistry::default()),
        }))
    }

    fn spawn(self: Rc<Self>, fd: RawFd) -> ShardRdmaHandle {
        let sessions = self.sessions.clone();
        ShardRdmaHandle {
            accepts: glommio::spawn_local(self.accept_loop(fd)),
            sessions,
        }
    }

    fn new_token(&self) -> u64 {
        let token = self.next_token.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        self.next_token.set(token);
        token
    }

    /// Accepts handshake connections until the node stops.
    async fn accept_loop(self: Rc<Self>, fd: RawFd) {
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
            let _ = session.send((stream, attach));
        }
    }

    /// A control connection: handshake, wait for the data connection, connect, serve.
    async fn serve_session(self: &Rc<Self>, mut stream: TcpStream, magic: [u8; 4]) -> Result<(), PeerError> {
        let mut theirs = [0u8; Handshake::LEN];
        theirs[..4].copy_from_slice(&magic);
        stream.read_exact(&mut theirs[4..]).await?;
        // Sessions count against --max-clients like connections (each costs a control ring and
        // queue pairs): past it, or once the node stops, the handshake gets no answer.
        let Some(ticket) = self.sessions.admit(&self.shard) else {
            return Err(PeerError::Setup(
                "max number of clients reached, or the node is stopping".into(),
            ));
        };
        let mut endpoint = Endpoint::new(&self.pd, channel_config(), DATA_DEPTH)?;
        let ours = endpoint.handshake(&self.pd, self.node_id, self.shard.id as u32, 0, self.pool_desc);
        let (peer, credits, answer) = handshake_exchange::accept_bytes(&theirs, &ours, &mut self.epochs.borrow_mut())?;
        let token = self.new_token();
        let (tx, rx) = oneshot::channel();
        self.pending.borrow_mut().insert(token, tx);
        let exchanged = async {
            stream.write_all(&answer).await?;
            stream.write_all(&token.to_le_bytes()).await?;
            stream.flush().await?;
            // A stopping node does not wait for a session still being set up.
            let timeout = glommio::timer::sleep(SETUP_TIMEOUT);
            let given_up = futures::future::select(Box::pin(timeout), Box::pin(ticket.stopped()));
            match futures::future::select(rx, given_up).await {
                futures::future::Either::Left((Ok(data), _)) => Ok(data),
                futures::future::Either::Right((futures::future::Either::Right(_), _)) => {
                    Err(PeerError::Setup("the node is stopping".into()))
                }
                _ => Err(PeerError::Setup("no data connection for the session".into())),
            }
        };
        let result = exchanged.await;
        self.pending.borrow_mut().remove(&token);
        let (mut data, peer_data) = result?;
        data.write_all(&endpoint.attach(token).encode()).await?;
        data.flush().await?;
        let local_ip = stream
            .local_addr()
            .map_err(|e| PeerError::Setup(format!("local address: {e}")))?
            .ip();
        let peer = PeerQueuePairs {
            handshake: peer,
            data: peer_data,
        };
        endpoint.connect_to(&self.pd, credits, &peer, std_stream(&stream)?, std_stream(&data)?)?;
        drop(data);
        let liveness = if P::LINKS_OVER_SETUP {
            // The provider's links own the connection now: reading it here would steal their bytes.
            drop(stream);
            None
        } else {
            stream
                .set_read_timeout(None)
                .map_err(|e| PeerError::Setup(format!("control connection: {e}")))?;
            Some(stream)
        };
        let stats = self.shard.node.rdma.stats(self.shard.id);
        if let Some(stats) = stats {
            bump(&stats.sessions, 1);
            bump(&stats.sessions_total, 1);
        }
        let mut session = Session {
            rdma: self.clone(),
            endpoint,
            peer_pool: peer.handshake.pool,
            local_ip,
            liveness,
            ticket,
            pulled: HashMap::new(),
            next_wr: 0,
            input: bytes::BytesMut::new(),
            out: bytes::BytesMut::new(),
        };
        let result = session.run().await;
        session.release_all();
        if let Some(stats) = stats {
            stats.sessions.fetch_sub(1, Ordering::Relaxed);
        }
        result
    }
}

/// A std stream on the same socket as a glommio stream, for the provider: the soft provider's
/// link threads read and write it with blocking calls (the glommio stream is dropped right after,
/// closing only its fd); verbs only needs it to exist.
fn std_stream(stream: &TcpStream) -> std::io::Result<std::net::TcpStream> {
    // SAFETY: the fd belongs to `stream`, which is alive for the whole borrow; the borrow is only
    // used to duplicate it.
    let borrowed = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
    Ok(std::net::TcpStream::from(borrowed.try_clone_to_owned()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_device_must_be_present() {
        let present = ["mlx5_0".to_string(), "mlx5_1".to_string()];
        assert!(check_device(None, &present).is_ok());
        assert!(check_device(Some("mlx5_1"), &present).is_ok());
        let err = check_device(Some("mlx4_0"), &present).unwrap_err().to_string();
        assert!(
            err.contains("--rdma-device mlx4_0: no such RDMA device (present: mlx5_0, mlx5_1)"),
            "{err}"
        );
        let err = check_device(None, &[]).unwrap_err().to_string();
        assert!(err.contains("no RDMA devices found"), "{err}");
        assert!(check_device(Some("mlx5_0"), &[]).is_err());
    }

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
