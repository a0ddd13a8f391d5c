//! The async client for tokio (cargo feature `tokio`). See the [module docs](super) for
//! connections, timeouts and retries.
//!
//! [`Client`] is a cheap handle (`Clone`, `Send + Sync`) on shared state: the router and one
//! connection per shard, opened lazily. Each shard connection is a [`Connection`] behind a mutex
//! with two tasks:
//!
//! ```text
//!  caller ──lock: encode, register a oneshot──▶ Connection ──take_output──▶ writer task ──▶ socket
//!  caller ◀──────────oneshot (matched by id)─── Connection ◀──input─────── reader task ◀── socket
//! ```
//!
//! A caller encodes its request into the connection's output buffer under the lock, wakes the
//! writer, and awaits its oneshot until the request's deadline. The reader decodes responses and
//! completes the oneshots by request id, in whatever order they arrive, so concurrent calls
//! pipeline over the connection. When a connection fails (EOF, I/O error, bad bytes, or a caller's
//! timeout), every waiter gets its error, both tasks are aborted, and the next call reconnects.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use ::tokio::io::{AsyncReadExt, AsyncWriteExt};
use ::tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use ::tokio::net::TcpStream;
use ::tokio::sync::{oneshot, Notify};
use ::tokio::task::AbortHandle;

use super::config::{ClientConfig, Reply};
use super::connection::{is_read, Connection};
use super::error::{retry_policy, ClientError, Retry};
use super::plan::{Op, Plan};
use super::router::Router;
use crate::native::{RequestRef, Response, Topology};

/// Bytes reserved for each read.
const READ_CHUNK: usize = 64 * 1024;

type Waiter = oneshot::Sender<Result<Response, ClientError>>;

/// One shard's connection: the protocol state shared by callers and the two tasks.
struct ShardConn {
    state: Mutex<Connection<Waiter>>,
    wake_writer: Notify,
    tasks: Mutex<Vec<AbortHandle>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; if something did, the state is still coherent
    // enough to fail the connection.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn connect_stream(addr: &str, config: &ClientConfig) -> Result<TcpStream, ClientError> {
    let stream = match ::tokio::time::timeout(config.connect_timeout, TcpStream::connect(addr)).await {
        Ok(stream) => stream?,
        Err(_) => {
            let err = std::io::Error::new(std::io::ErrorKind::TimedOut, format!("connecting to {addr} timed out"));
            return Err(err.into());
        }
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

impl ShardConn {
    async fn open(addr: &str, config: &ClientConfig) -> Result<Arc<ShardConn>, ClientError> {
        let (read, write) = connect_stream(addr, config).await?.into_split();
        let conn = Arc::new(ShardConn {
            state: Mutex::new(Connection::new(config.crc, config.limits)),
            wake_writer: Notify::new(),
            tasks: Mutex::new(Vec::new()),
        });
        let reader = ::tokio::spawn(read_loop(conn.clone(), read));
        let writer = ::tokio::spawn(write_loop(conn.clone(), write));
        lock(&conn.tasks).extend([reader.abort_handle(), writer.abort_handle()]);
        Ok(conn)
    }

    fn is_failed(&self) -> bool {
        lock(&self.state).is_failed()
    }

    /// Fails the connection: every waiter gets its error, the tasks stop, the socket closes.
    fn fail(&self, cause: ClientError) {
        let failed = lock(&self.state).fail(cause);
        for (waiter, err) in failed {
            let _ = waiter.send(Err(err));
        }
        self.abort_tasks();
    }

    fn abort_tasks(&self) {
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
    }
}

async fn write_loop(conn: Arc<ShardConn>, mut write: OwnedWriteHalf) {
    loop {
        conn.wake_writer.notified().await;
        loop {
            let out = {
                let mut state = lock(&conn.state);
                if state.is_failed() {
                    return;
                }
                state.take_output()
            };
            if out.is_empty() {
                break;
            }
            if let Err(err) = write.write_all(&out).await {
                return conn.fail(err.into());
            }
        }
    }
}

async fn read_loop(conn: Arc<ShardConn>, mut read: OwnedReadHalf) {
    loop {
        let mut input = lock(&conn.state).take_input();
        input.reserve(READ_CHUNK);
        let result = read.read_buf(&mut input).await;
        let mut failed = Vec::new();
        {
            let mut state = lock(&conn.state);
            state.restore_input(input);
            match result {
                Ok(0) => {
                    drop(state);
                    return conn.fail(ClientError::Disconnected {
                        outcome_unknown: false,
                        reason: "connection closed by the server".into(),
                    });
                }
                Err(err) => {
                    drop(state);
                    return conn.fail(err.into());
                }
                Ok(_) => loop {
                    match state.poll_completion() {
                        Ok(Some(completion)) => {
                            let _ = completion.token.send(Ok(completion.response));
                        }
                        Ok(None) => break,
                        Err(lost) => {
                            failed = lost;
                            break;
                        }
                    }
                },
            }
        }
        if conn.is_failed() {
            for (waiter, err) in failed {
                let _ = waiter.send(Err(err));
            }
            return conn.abort_tasks();
        }
    }
}

struct State {
    router: Option<Arc<Router>>,
    conns: Vec<Option<Arc<ShardConn>>>,
    /// Fetch the topology again before the next round (a connection failed, or WRONG_SHARD).
    stale: bool,
}

struct Inner {
    seed: String,
    config: ClientConfig,
    state: ::tokio::sync::Mutex<State>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for conn in self.state.get_mut().conns.iter().flatten() {
            conn.abort_tasks();
        }
    }
}

/// An async corekv client: clone it freely, call it from many tasks at once.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("seed", &self.inner.seed)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to the seed, fetches the topology (retrying per the policy) and returns a client.
    /// Shard connections are opened lazily, on first use. Must be called within a tokio runtime.
    pub async fn connect(seed: impl Into<String>, config: ClientConfig) -> Result<Client, ClientError> {
        let client = Client {
            inner: Arc::new(Inner {
                seed: seed.into(),
                config,
                state: ::tokio::sync::Mutex::new(State {
                    router: None,
                    conns: Vec::new(),
                    stale: true,
                }),
            }),
        };
        let mut retry = 0;
        loop {
            match client.refresh_topology().await {
                Ok(()) => return Ok(client),
                Err(err) if retry < client.inner.config.max_retries && retry_policy(&err) != Retry::No => {
                    ::tokio::time::sleep(client.inner.config.retry_backoff.delay(retry)).await;
                    retry += 1;
                }
                Err(err) => return Err(err),
            }
        }
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The topology in use (fetched again first if a failure made it stale).
    pub async fn topology(&self) -> Result<Topology, ClientError> {
        Ok(self.prepare().await?.topology().clone())
    }

    /// Fetches the topology from the seed now; connections are kept if it did not change.
    pub async fn refresh_topology(&self) -> Result<(), ClientError> {
        let mut state = self.inner.state.lock().await;
        self.refresh_locked(&mut state).await
    }

    async fn refresh_locked(&self, state: &mut State) -> Result<(), ClientError> {
        let router = fetch_router(&self.inner.seed, &self.inner.config).await?;
        if state.router.as_deref() != Some(&router) {
            // Requests in flight on the old connections are answered now (not at their timeout).
            for conn in state.conns.iter().flatten() {
                conn.fail(ClientError::Disconnected {
                    outcome_unknown: false,
                    reason: "the topology changed".into(),
                });
            }
            state.conns = (0..router.shard_count()).map(|_| None).collect();
            state.router = Some(Arc::new(router));
        }
        state.stale = false;
        Ok(())
    }

    /// Drops failed connections and fetches the topology if it is stale; returns the router.
    async fn prepare(&self) -> Result<Arc<Router>, ClientError> {
        let mut state = self.inner.state.lock().await;
        let mut lost = false;
        for slot in &mut state.conns {
            if slot.as_ref().is_some_and(|conn| conn.is_failed()) {
                *slot = None;
                lost = true;
            }
        }
        state.stale |= lost;
        if state.stale || state.router.is_none() {
            self.refresh_locked(&mut state).await?;
        }
        state
            .router
            .clone()
            .ok_or_else(|| ClientError::Topology("no topology".into()))
    }

    /// The connection to `shard` of `router`, opened if needed.
    async fn conn(&self, router: &Arc<Router>, shard: u32) -> Result<Arc<ShardConn>, ClientError> {
        let mut state = self.inner.state.lock().await;
        let current = state.router.as_ref().is_some_and(|r| Arc::ptr_eq(r, router));
        let Some(slot) = state.conns.get_mut(shard as usize).filter(|_| current) else {
            return Err(ClientError::Disconnected {
                outcome_unknown: false,
                reason: "not sent: the topology changed".into(),
            });
        };
        if let Some(conn) = slot.as_ref().filter(|conn| !conn.is_failed()) {
            return Ok(conn.clone());
        }
        let endpoint = &router.endpoints()[shard as usize];
        match ShardConn::open(endpoint, &self.inner.config).await {
            Ok(conn) => {
                *slot = Some(conn.clone());
                Ok(conn)
            }
            Err(err) => {
                *slot = None;
                state.stale = true;
                Err(err)
            }
        }
    }

    async fn run_round<K: AsRef<[u8]>>(&self, plan: &mut Plan<K>) {
        let router = match self.prepare().await {
            Ok(router) => router,
            Err(err) => return plan.fail_round(&err),
        };
        let frames = plan.frames(&router);
        let mut waits = Vec::with_capacity(frames.len());
        for (index, frame) in frames.iter().enumerate() {
            let conn = match self.conn(&router, frame.shard).await {
                Ok(conn) => conn,
                Err(err) => {
                    plan.complete(frame, Err(err));
                    continue;
                }
            };
            let (waiter, done) = oneshot::channel();
            let deadline = Instant::now() + self.inner.config.request_timeout;
            let encoded = {
                let mut state = lock(&conn.state);
                if state.is_failed() {
                    false
                } else {
                    plan.encode(frame, &mut state, waiter, deadline);
                    true
                }
            };
            if encoded {
                conn.wake_writer.notify_one();
                waits.push((index, conn, done, deadline));
            } else {
                let not_sent = ClientError::Disconnected {
                    outcome_unknown: false,
                    reason: "not sent: the connection failed".into(),
                };
                plan.complete(frame, Err(not_sent));
            }
        }
        for (index, conn, mut done, deadline) in waits {
            let read = is_read(plan.opcode_of(&frames[index]));
            let result = match ::tokio::time::timeout_at(deadline.into(), &mut done).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(ClientError::Disconnected {
                    outcome_unknown: !read,
                    reason: "the connection was dropped".into(),
                }),
                Err(_elapsed) => {
                    // The connection is presumed stuck: fail it, which answers this waiter too
                    // (with the outcome the connection knows), unless the response just arrived.
                    conn.fail(ClientError::Timeout { outcome_unknown: false });
                    done.await
                        .unwrap_or(Err(ClientError::Timeout { outcome_unknown: !read }))
                }
            };
            plan.complete(&frames[index], result);
        }
    }

    async fn run<K: AsRef<[u8]>>(&self, ops: Vec<Op<K>>) -> Vec<Result<Reply, ClientError>> {
        let mut plan = Plan::new(ops);
        loop {
            self.run_round(&mut plan).await;
            match plan.next_round(self.inner.config.max_retries) {
                None => return plan.into_results(),
                Some(refresh) => {
                    if refresh {
                        self.inner.state.lock().await.stale = true;
                    }
                    let retry = plan.retries().saturating_sub(1);
                    ::tokio::time::sleep(self.inner.config.retry_backoff.delay(retry)).await;
                }
            }
        }
    }

    async fn one<K: AsRef<[u8]>>(&self, op: Op<K>) -> Result<Reply, ClientError> {
        self.run(vec![op]).await.pop().unwrap_or_else(|| {
            Err(ClientError::Disconnected {
                outcome_unknown: false,
                reason: "no result (client bug)".into(),
            })
        })
    }

    super::operation_methods! {
        receiver: [&],
        asyncness: [async],
        await: [.await],
        /// Sends every operation of `pipeline` at once and returns their results in submission
        /// order. Each operation is retried on its own.
        execute;
        /// The values of `keys`, in their order (one MGET frame per shard, sent concurrently).
        mget;
    }
}

/// Asks the seed for the topology over a short-lived connection.
async fn fetch_router(seed: &str, config: &ClientConfig) -> Result<Router, ClientError> {
    let mut stream = connect_stream(seed, config).await?;
    let deadline = Instant::now() + config.request_timeout;
    let mut conn: Connection<()> = Connection::new(config.crc, config.limits);
    conn.send(RequestRef::Topology, (), deadline);
    let exchange = async {
        stream.write_all(&conn.take_output()).await?;
        loop {
            match conn.poll_completion() {
                Ok(Some(completion)) => return Router::from_response(completion.response),
                Ok(None) => {}
                Err(mut failed) => {
                    let lost = || ClientError::Disconnected {
                        outcome_unknown: false,
                        reason: "the seed connection failed".into(),
                    };
                    return Err(failed.pop().map_or_else(lost, |(_, err)| err));
                }
            }
            let input = conn.input();
            input.reserve(READ_CHUNK);
            if stream.read_buf(input).await? == 0 {
                return Err(ClientError::Disconnected {
                    outcome_unknown: false,
                    reason: "connection closed by the server".into(),
                });
            }
        }
    };
    match ::tokio::time::timeout_at(deadline.into(), exchange).await {
        Ok(result) => result,
        Err(_) => Err(ClientError::Timeout { outcome_unknown: false }),
    }
}
