//! Starting and stopping a node: listeners, one glommio executor per shard, the channel mesh,
//! signals and graceful shutdown.
//!
//! ```text
//! main thread: resolve config ─ lock data dir ─ check layout (re-distribute keys if the shard
//!              count changed) ─ check port ─ bind N SO_REUSEPORT RESP listeners and one
//!              native-protocol listener per shard
//!   ├─ shard 0 executor: join mesh ─ recover its log ─ start its log writer ─ serve peers
//!   │                    ─ expiry and compaction tasks ─ accept loops (RESP, native)
//!   │                    ─▶ connections
//!   ├─ shard 1 executor: ...
//!   └─ waits for SIGINT/SIGTERM (SHUTDOWN raises SIGTERM), then shuts the listeners:
//!      each shard stops accepting, ends its idle connections after their current batch,
//!      waits until every shard's connections are gone, syncs its log, and returns.
//! ```

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corekv_engine::{EngineConfig, EvictionPolicy, Keyspace};
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{Latency, LocalExecutorBuilder, Placement, Shares};
use nix::sys::signal::{SigSet, Signal};

use crate::config::Config;
use crate::shard::{ReplyBatch, Shard, ShardMsg};

/// Capacity of each cross-shard channel (messages, each a batch of up to 1024 commands).
const MESH_CHANNEL_CAPACITY: usize = 256;
/// Active expiry runs every 100 ms (Redis's hz 10) with at most 25 ms of work.
const EXPIRE_PERIOD: Duration = Duration::from_millis(100);
const EXPIRE_BUDGET: Duration = Duration::from_millis(25);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot use data directory {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("cannot start shard {shard}: {message} (io_uring needs kernel >= 5.8, enough locked memory (ulimit -l) and must not be blocked by seccomp)")]
    Executor { shard: usize, message: String },
    #[error("cannot set up signal handling: {0}")]
    Signals(nix::Error),
    #[error("{0}")]
    Lock(#[from] crate::persist::lock::LockError),
    #[error("data directory: {0}")]
    Layout(String),
    #[error("cannot recover {0}")]
    Recovery(String),
    #[error("shard {shard}: cannot open its log in {dir}: {message}")]
    Log { shard: usize, dir: String, message: String },
    #[error("rdma: {0}")]
    Rdma(String),
}

/// Settings CONFIG SET can change while the node runs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub maxmemory_bytes: u64,
    pub maxmemory_policy: EvictionPolicy,
    pub maxmemory_samples: usize,
    pub max_clients: usize,
}

/// What all shards share: immutable configuration and a few counters. Nothing here is touched on
/// the per-request path except relaxed atomics at connect/disconnect.
pub struct NodeShared {
    pub config: Config,
    pub port: u16,
    /// Each shard's native-protocol port, shard 0 first.
    pub native_ports: Vec<u16>,
    /// RDMA: the provider, each shard's handshake port and counters.
    pub rdma: crate::rdma_serve::RdmaShared,
    settings: Mutex<Settings>,
    pub max_clients: AtomicUsize,
    pub connected_clients: AtomicUsize,
    pub next_client_id: AtomicU64,
    pub total_connections: AtomicU64,
    pub rejected_connections: AtomicU64,
    pub shutting_down: AtomicBool,
    pub started: Instant,
    pub run_id: String,
    listener_fds: Vec<RawFd>,
    /// Per shard: why its log refuses writes (mirrored from its writer, for coordinated writes).
    log_refusals: Mutex<Vec<Option<String>>>,
    any_log_refusal: AtomicBool,
}

impl NodeShared {
    pub fn settings(&self) -> Settings {
        self.settings.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn store_settings(&self, settings: &Settings) {
        self.max_clients.store(settings.max_clients, Ordering::Relaxed);
        *self.settings.lock().unwrap_or_else(|e| e.into_inner()) = settings.clone();
    }

    pub fn reset_stats(&self) {
        self.total_connections.store(0, Ordering::Relaxed);
        self.rejected_connections.store(0, Ordering::Relaxed);
    }

    /// SHUTDOWN: the main thread's signal wait sees SIGTERM and stops the node as for a signal.
    pub fn request_shutdown(&self) {
        let _ = nix::sys::signal::kill(nix::unistd::getpid(), Signal::SIGTERM);
    }

    /// Records a shard's log state (called by that shard's writer on every change).
    pub fn set_log_state(&self, shard: usize, refusal: Option<String>) {
        let mut refusals = self.log_refusals.lock().unwrap_or_else(|e| e.into_inner());
        refusals[shard] = refusal;
        self.any_log_refusal
            .store(refusals.iter().any(Option::is_some), Ordering::Release);
    }

    /// The error for a write while any shard's log refuses writes.
    pub fn write_refusal(&self) -> Option<String> {
        if !self.any_log_refusal.load(Ordering::Acquire) {
            return None;
        }
        self.log_refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find_map(Clone::clone)
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }
}

/// Runs a node until it is told to stop. Returns once every shard has finished.
pub fn run(config: Config) -> Result<(), StartError> {
    prepare_data_dir(&config)?;
    let _lock = crate::persist::lock::DataDirLock::acquire(&config.data_dir)?;
    crate::persist::layout::prepare(&config).map_err(StartError::Layout)?;
    let (listeners, port) = bind_listeners(&config)?;
    let (native_listeners, native_ports) = bind_native_listeners(&config, config.native_port)?;
    crate::rdma_serve::check_start(&config)?;
    let (rdma_listeners, rdma_ports) = match config.rdma.provider {
        crate::config::RdmaProvider::Off => (Vec::new(), Vec::new()),
        _ => bind_native_listeners(&config, config.rdma.port)?,
    };
    warn_if_memlock_low(config.shards);

    // Shard threads inherit this mask, so SIGINT/SIGTERM reach only the main thread's sigwait.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals.thread_block().map_err(StartError::Signals)?;

    let settings = Settings {
        maxmemory_bytes: config.maxmemory_bytes,
        maxmemory_policy: config.maxmemory_policy,
        maxmemory_samples: 5,
        max_clients: config.max_clients,
    };
    let node = Arc::new(NodeShared {
        port,
        native_ports: native_ports.clone(),
        rdma: crate::rdma_serve::RdmaShared::new(config.rdma.provider, rdma_ports.clone()),
        max_clients: AtomicUsize::new(config.max_clients),
        settings: Mutex::new(settings),
        connected_clients: AtomicUsize::new(0),
        next_client_id: AtomicU64::new(1),
        total_connections: AtomicU64::new(0),
        rejected_connections: AtomicU64::new(0),
        shutting_down: AtomicBool::new(false),
        started: Instant::now(),
        run_id: run_id(),
        listener_fds: listeners
            .iter()
            .chain(&native_listeners)
            .chain(&rdma_listeners)
            .map(|l| l.as_raw_fd())
            .collect(),
        log_refusals: Mutex::new(vec![None; config.shards]),
        any_log_refusal: AtomicBool::new(false),
        config: config.clone(),
    });

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pin = config.pin && config.shards <= cores;
    let mesh = MeshBuilder::<ShardMsg, _>::full(config.shards, MESH_CHANNEL_CAPACITY);
    let reply_mesh = MeshBuilder::<ReplyBatch, _>::full(config.shards, MESH_CHANNEL_CAPACITY);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<usize, StartError>>();
    let mut handles = Vec::with_capacity(config.shards);
    let mut rdma_listeners = rdma_listeners.into_iter();
    for (id, (listener, native_listener)) in listeners.into_iter().zip(native_listeners).enumerate() {
        let placement = if pin { Placement::Fixed(id) } else { Placement::Unbound };
        let node = node.clone();
        let mesh = mesh.clone();
        let reply_mesh = reply_mesh.clone();
        let ready = ready_tx.clone();
        let listener_fds = ListenerFds {
            resp: listener.into_raw_fd(),
            native: native_listener.into_raw_fd(),
            rdma: rdma_listeners.next().map(IntoRawFd::into_raw_fd),
        };
        let spawned = LocalExecutorBuilder::new(placement)
            .name(&format!("shard-{id}"))
            .spawn(move || shard_main(id, node, mesh, reply_mesh, listener_fds, ready));
        match spawned {
            Ok(handle) => handles.push(handle),
            Err(e) => {
                return Err(StartError::Executor {
                    shard: id,
                    message: e.to_string(),
                })
            }
        }
    }
    drop(ready_tx);
    for _ in 0..config.shards {
        match ready_rx.recv() {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => return Err(error),
            Err(_) => {
                return Err(StartError::Executor {
                    shard: 0,
                    message: "a shard exited during start-up".into(),
                })
            }
        }
    }
    let rdma = match config.rdma.provider {
        crate::config::RdmaProvider::Off => String::new(),
        provider => format!(" (rdma: {}, ports {})", provider.name(), native_port_list(&rdma_ports)),
    };
    println!(
        "corekv-node {} ready: listening on {}:{} (native protocol: ports {}){rdma}, {} shards, data dir {}",
        env!("CARGO_PKG_VERSION"),
        config.bind,
        port,
        native_port_list(&native_ports),
        config.shards,
        config.data_dir.display()
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();

    let signal = signals.wait().map_err(StartError::Signals)?;
    tracing::info!("received {signal:?}: stopping (in-flight requests finish first)");
    node.shutting_down.store(true, Ordering::Release);
    for &fd in &node.listener_fds {
        // A pending accept on a shut-down listening socket fails at once, which wakes each shard.
        let _ = nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Both);
    }
    for handle in handles {
        let _ = handle.join();
    }
    tracing::info!("stopped");
    Ok(())
}

/// glommio registers about 10 MiB of I/O buffers per executor in locked memory; below that it
/// silently falls back to slower unregistered buffers, so say so where an operator will see it.
fn warn_if_memlock_low(shards: usize) {
    const PER_SHARD_BYTES: u64 = 10 << 20;
    if let Ok((soft, _hard)) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_MEMLOCK) {
        let needed = PER_SHARD_BYTES * shards as u64;
        if soft != nix::sys::resource::RLIM_INFINITY && soft < needed {
            tracing::warn!(
                "locked-memory limit is {} KiB, below the ~{} KiB the shards' registered I/O buffers need: \
                 I/O runs on unregistered buffers (slower). Raise it with `ulimit -l` or LimitMEMLOCK= in systemd.",
                soft / 1024,
                needed / 1024
            );
        }
    }
}

fn prepare_data_dir(config: &Config) -> Result<(), StartError> {
    let path = &config.data_dir;
    let error = |source| StartError::DataDir {
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(path).map_err(error)?;
    let probe = path.join(".corekv-write-probe");
    std::fs::write(&probe, b"probe").map_err(error)?;
    std::fs::remove_file(&probe).map_err(error)?;
    Ok(())
}

/// Binds one SO_REUSEPORT listener per shard on the same address, and makes sure no other
/// process shares the port.
///
/// SO_REUSEPORT lets any process of the same user join the port's group, so two nodes could
/// silently split one port's connections. An explicit port is first claimed with a plain bind (no
/// SO_REUSEPORT), which fails if anything already listens there; port 0 lets the kernel pick a
/// free port for the first listener. Afterwards the listening sockets on the port are counted in
/// /proc/net: more than our own means another process raced us into the group, and the node
/// refuses to start (the later of two racing nodes always sees the other).
fn bind_listeners(config: &Config) -> Result<(Vec<socket2::Socket>, u16), StartError> {
    let requested = SocketAddr::new(config.bind, config.port);
    let listen_error = |source| StartError::Listen {
        addr: requested,
        source,
    };
    if config.port != 0 {
        drop(std::net::TcpListener::bind(requested).map_err(listen_error)?);
    }
    // With port 0 the kernel may hand out a port whose SO_REUSEPORT group another process of the
    // same user already listens in (seen here): then simply ask for another port.
    const PORT_ZERO_ATTEMPTS: usize = 32;
    let attempts = if config.port == 0 { PORT_ZERO_ATTEMPTS } else { 1 };
    let mut last_error = None;
    for _ in 0..attempts {
        let first = reuseport_listener(requested).map_err(listen_error)?;
        let port = first
            .local_addr()
            .map_err(listen_error)?
            .as_socket()
            .map_or(config.port, |a| a.port());
        let addr = SocketAddr::new(config.bind, port);
        let listen_error = |source| StartError::Listen { addr, source };
        let mut sockets = Vec::with_capacity(config.shards);
        sockets.push(first);
        for _ in 1..config.shards {
            sockets.push(reuseport_listener(addr).map_err(listen_error)?);
        }
        if count_listeners(port) <= sockets.len() {
            return Ok((sockets, port));
        }
        last_error = Some(listen_error(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!("another process listens on port {port} too (SO_REUSEPORT)"),
        )));
    }
    Err(last_error.unwrap_or_else(|| listen_error(std::io::ErrorKind::AddrInUse.into())))
}

/// Binds shard i's native-protocol listener on `first_port + i` (or a free port each with 0); the
/// RDMA handshake listeners are bound the same way from `--rdma-port`.
/// A plain bind: the port is this shard's alone, and a port in use fails the start.
fn bind_native_listeners(config: &Config, first_port: u16) -> Result<(Vec<socket2::Socket>, Vec<u16>), StartError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let mut sockets = Vec::with_capacity(config.shards);
    let mut ports = Vec::with_capacity(config.shards);
    for shard in 0..config.shards {
        let port = match first_port {
            0 => 0,
            first => first + shard as u16,
        };
        let addr = SocketAddr::new(config.bind, port);
        let listen_error = |source| StartError::Listen { addr, source };
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(listen_error)?;
        socket.set_reuse_address(true).map_err(listen_error)?;
        socket.set_nonblocking(true).map_err(listen_error)?;
        socket.bind(&addr.into()).map_err(listen_error)?;
        socket.listen(1024).map_err(listen_error)?;
        let bound = socket
            .local_addr()
            .map_err(listen_error)?
            .as_socket()
            .map_or(port, |a| a.port());
        sockets.push(socket);
        ports.push(bound);
    }
    Ok((sockets, ports))
}

/// `7380-7381` for consecutive ports, else a comma-separated list.
pub fn native_port_list(ports: &[u16]) -> String {
    let consecutive = ports.windows(2).all(|w| w[1] == w[0].wrapping_add(1));
    match (ports.first(), ports.last()) {
        (Some(first), Some(last)) if consecutive && ports.len() > 1 => format!("{first}-{last}"),
        _ => ports.iter().map(u16::to_string).collect::<Vec<_>>().join(","),
    }
}

fn reuseport_listener(addr: SocketAddr) -> std::io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket)
}

/// Listening TCP sockets on `port` (any address, IPv4 and IPv6), from /proc/net/tcp{,6}.
fn count_listeners(port: u16) -> usize {
    const LISTEN: &str = "0A";
    let wanted = format!("{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .map(|table| {
            table
                .lines()
                .skip(1)
                .filter(|line| {
                    let mut fields = line.split_whitespace();
                    let local = fields.nth(1).unwrap_or("");
                    let state = fields.nth(1).unwrap_or("");
                    state == LISTEN && local.rsplit(':').next() == Some(wanted.as_str())
                })
                .count()
        })
        .sum()
}

fn run_id() -> String {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut state = seed as u64 ^ (std::process::id() as u64).rotate_left(32);
    (0..40)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            char::from_digit((state % 16) as u32, 16).unwrap_or('0')
        })
        .collect()
}

async fn shard_main(
    id: usize,
    node: Arc<NodeShared>,
    mesh: MeshBuilder<ShardMsg, glommio::channels::channel_mesh::Full>,
    reply_mesh: MeshBuilder<ReplyBatch, glommio::channels::channel_mesh::Full>,
    listener_fds: ListenerFds,
    ready: std::sync::mpsc::Sender<Result<usize, StartError>>,
) {
    let (senders, mut receivers) = match mesh.join().await {
        Ok(ends) => ends,
        Err(e) => {
            let _ = ready.send(Err(StartError::Executor {
                shard: id,
                message: format!("could not join the channel mesh: {e}"),
            }));
            return;
        }
    };
    let (reply_senders, mut reply_receivers) = match reply_mesh.join().await {
        Ok(ends) => ends,
        Err(e) => {
            let _ = ready.send(Err(StartError::Executor {
                shard: id,
                message: format!("could not join the reply mesh: {e}"),
            }));
            return;
        }
    };
    let settings = node.settings();
    // Recovery runs without a budget (a restart with a smaller one must not fail); the budget
    // applies from the first write on.
    let mut keyspace = Keyspace::new(EngineConfig {
        databases: node.config.databases,
        maxmemory_bytes: 0,
        policy: settings.maxmemory_policy,
        eviction_samples: settings.maxmemory_samples,
    });
    let persist = match open_persistence(id, &node, &mut keyspace).await {
        Ok(persist) => persist,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    keyspace.set_limits(
        settings.maxmemory_bytes / node.config.shards as u64,
        settings.maxmemory_policy,
    );
    let shard = Rc::new(Shard::new(id, node.clone(), keyspace, senders, reply_senders, persist));
    if shard.persist.is_some() {
        let writer_shard = shard.clone();
        glommio::spawn_local(async move { run_log_writer(&writer_shard).await }).detach();
    }

    for (_peer, receiver) in receivers.streams() {
        let shard = shard.clone();
        glommio::spawn_local(async move {
            while let Some(msg) = receiver.recv().await {
                shard.handle_msg(msg).await;
            }
        })
        .detach();
    }
    for (_peer, receiver) in reply_receivers.streams() {
        let shard = shard.clone();
        glommio::spawn_local(async move {
            while let Some(batch) = receiver.recv().await {
                shard.complete(batch);
            }
        })
        .detach();
    }

    let background = glommio::executor().create_task_queue(Shares::Static(100), Latency::NotImportant, "background");
    shard.background.set(Some(background));
    if shard.persist.is_some() {
        let compaction_shard = shard.clone();
        if let Ok(task) = glommio::spawn_local_into(async move { auto_compaction(&compaction_shard).await }, background)
        {
            task.detach();
        }
    }
    let expiry_shard = shard.clone();
    let expiry = glommio::spawn_local_into(
        async move {
            while !expiry_shard.node.is_shutting_down() {
                glommio::timer::sleep(EXPIRE_PERIOD).await;
                let started = Instant::now();
                let mut deadline = || started.elapsed() >= EXPIRE_BUDGET;
                let stats = expiry_shard
                    .keyspace
                    .borrow_mut()
                    .active_expire_cycle(crate::shard::now_ms(), &mut deadline);
                if stats.timed_out {
                    expiry_shard
                        .expire_cycle_timeouts
                        .set(expiry_shard.expire_cycle_timeouts.get() + 1);
                }
            }
        },
        background,
    );
    if let Ok(task) = expiry {
        task.detach();
    }

    // SAFETY: both fds are bound, listening, non-blocking TCP sockets created by
    // `bind_listeners` / `bind_native_listeners` and handed to this shard alone (their owner gave
    // them up with `into_raw_fd`).
    let (listener, native_listener) = unsafe {
        (
            glommio::net::TcpListener::from_raw_fd(listener_fds.resp),
            glommio::net::TcpListener::from_raw_fd(listener_fds.native),
        )
    };
    let rdma = match listener_fds.rdma {
        None => None,
        Some(fd) => match crate::rdma_serve::start(&shard, fd) {
            Ok(rdma) => Some(rdma),
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        },
    };
    let _ = ready.send(Ok(id));
    let native_shard = shard.clone();
    let native_accepts = glommio::spawn_local(async move {
        accept_loop(native_listener, &native_shard, crate::native::serve).await;
    });
    accept_loop(listener, &shard, crate::conn::serve).await;
    native_accepts.await;
    let rdma_sessions = match rdma {
        Some(rdma) => {
            rdma.accepts.await;
            Some(rdma.sessions)
        }
        None => None,
    };
    // Graceful stop: idle connections see end-of-file now, idle RDMA sessions are woken to end;
    // busy ones finish their batch first. Every shard keeps serving its peers until all
    // connections of the node are gone, so a request in flight on another shard can still reach
    // this one.
    let close_all = || {
        shard.close_all_clients();
        if let Some(sessions) = &rdma_sessions {
            sessions.stop_all();
        }
    };
    close_all();
    while node.connected_clients.load(Ordering::Acquire) > 0 {
        close_all();
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    if let Some(persist) = &shard.persist {
        // Everything journaled is written and synced before the process exits.
        persist.log.stop().await;
    }
}

/// The listening sockets a shard serves, as raw fds handed over to its executor.
struct ListenerFds {
    resp: RawFd,
    native: RawFd,
    /// The RDMA handshake listener, with `--rdma` on.
    rdma: Option<RawFd>,
}

/// Accepts connections and serves each in its own task until the node stops.
async fn accept_loop<F, Fut>(listener: glommio::net::TcpListener, shard: &Rc<Shard>, serve: F)
where
    F: Fn(Rc<Shard>, glommio::net::TcpStream) -> Fut,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let node = &shard.node;
    loop {
        match listener.accept().await {
            Ok(stream) => {
                if node.is_shutting_down() {
                    break;
                }
                glommio::spawn_local(serve(shard.clone(), stream)).detach();
            }
            Err(e) => {
                if node.is_shutting_down() {
                    break;
                }
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!("shard {}: accept failed: {e}", shard.id);
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Recovers shard `id`'s log into `keyspace` and opens its writer (`None` with durability none).
async fn open_persistence(
    id: usize,
    node: &Arc<NodeShared>,
    keyspace: &mut Keyspace,
) -> Result<Option<crate::persist::ShardPersistence>, StartError> {
    use crate::persist::{files::DmaLogFiles, layout, recovery, writer::LogWriter, CompactionState};
    let config = &node.config;
    let p = &config.persistence;
    if p.durability == crate::config::Durability::None {
        return Ok(None);
    }
    // Absolute: glommio opens directories by a path it cannot resolve relative to the process.
    let dir = layout::shard_dir(&config.data_dir, id);
    let dir = std::fs::canonicalize(&dir).map_err(|e| StartError::Log {
        shard: id,
        dir: dir.display().to_string(),
        message: e.to_string(),
    })?;
    let recovered = recovery::recover_own_shard(&dir, id as u32, config.shards as u32, p.repair, keyspace)
        .map_err(StartError::Recovery)?;
    keyspace.attach_journal(corekv_engine::log::journal::Journal::new(recovered.next_seq));
    let log = LogWriter::open(
        DmaLogFiles::new(&dir),
        id as u32,
        config.shards as u32,
        p.durability,
        p.fsync_interval,
        p.segment_size,
        recovered.segments,
        recovered.next_segment,
        recovered.next_seq,
    )
    .await
    .map_err(|e| StartError::Log {
        shard: id,
        dir: dir.display().to_string(),
        message: if e.raw_os_error() == Some(nix::libc::EINVAL) || e.kind() == std::io::ErrorKind::InvalidInput {
            format!("{e} (the filesystem must support O_DIRECT: tmpfs does not)")
        } else {
            e.to_string()
        },
    })?;
    let shared = node.clone();
    log.set_observer(Box::new(move |state, reason| {
        let refusal = (state != crate::persist::writer::LogState::Ok).then(|| crate::shard::misconf(id, state, reason));
        shared.set_log_state(id, refusal);
    }));
    Ok(Some(crate::persist::ShardPersistence {
        dir,
        log,
        compaction: std::cell::RefCell::new(CompactionState {
            last_ok: true,
            snapshot_bytes: recovered.snapshot_bytes,
            recovered_log_bytes: recovered.log_bytes,
            ..CompactionState::default()
        }),
        recovery: recovered.summary,
    }))
}

/// The shard's log writer task; when the log fails, the journal stops collecting records (the
/// shard refuses writes from then on).
async fn run_log_writer(shard: &Rc<Shard>) {
    let Some(persist) = &shard.persist else {
        return;
    };
    let take = |buf: &mut Vec<u8>| -> u64 {
        let mut keyspace = shard.keyspace.borrow_mut();
        match keyspace.journal_mut() {
            Some(journal) => {
                journal.take_pending(buf);
                journal.last_seq()
            }
            None => 0,
        }
    };
    persist.log.run(&take).await;
    if persist.log.state() == crate::persist::writer::LogState::Failed {
        if let Some(journal) = shard.keyspace.borrow_mut().journal_mut() {
            journal.set_enabled(false);
            journal.discard_pending();
        }
    }
}

/// Starts a compaction whenever a shard's log has grown enough since its last snapshot.
async fn auto_compaction(shard: &Rc<Shard>) {
    let p = &shard.node.config.persistence;
    while !shard.node.is_shutting_down() {
        glommio::timer::sleep(Duration::from_secs(1)).await;
        let due = shard
            .persist
            .as_ref()
            .is_some_and(|persist| persist.compaction_due(p.rewrite_min_size, p.rewrite_percentage));
        if due && crate::persist::compaction::try_begin(shard).is_ok() {
            let _ = crate::persist::compaction::run_begun(shard).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_on_a_port_are_counted_across_processes_view() {
        let first = reuseport_listener("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = first.local_addr().unwrap().as_socket().unwrap().port();
        assert_eq!(count_listeners(port), 1);
        let second = reuseport_listener(SocketAddr::from(([127, 0, 0, 1], port))).unwrap();
        assert_eq!(count_listeners(port), 2);
        drop((first, second));
        assert_eq!(count_listeners(port), 0);
    }
}
