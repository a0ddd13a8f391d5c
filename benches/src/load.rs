//! The load loop: one round of requests against a target, closed or open loop, recorded without
//! coordinated omission.
//!
//! ```text
//!  main thread                       load thread t (one current-thread tokio runtime each)
//!  ───────────                       ──────────────────────────────────────────────────────
//!  TOPOLOGY (native)
//!  spawn T threads ───────────────▶  connect its connections (C/T, one socket per shard)
//!  wait for every "ready"  ◀───────  ready (or the connect error)
//!  fix the schedule ──────────────▶  per connection: 1 writer task + 1 reader task per socket
//!  join, merge the Recordings ◀────  its Recording (histograms of the thread's connections)
//! ```
//!
//! A connection's writer draws each request from its [`Generator`], routes it to its key's
//! shard socket, appends its [`Pending`] entry (id, scheduled time, operation) to that socket's
//! queue and encodes it; requests that can go at once are written together. Each socket's reader
//! decodes replies, matches each to its pending entry (RESP: the oldest; native: by id) and
//! records `reply time - scheduled time`. The pipeline window is a semaphore of `--pipeline`
//! permits per connection: the writer takes one per request, the reader gives it back.
//!
//! **Scheduled time.** Closed loop: the moment the request is encoded. Open loop
//! (`--rate R`): connection `i` of `C` sends its `k`-th request at
//! `start + i/R + k·C/R`, whatever happens; if the window is full or the writer is behind, the
//! request waits but its clock is already running, so a server stall shows in full in the tail
//! (no coordinated omission). Requests sent [`LATE_THRESHOLD`] or more after their scheduled time
//! are counted as late.
//!
//! **Phases.** Requests scheduled before `start + warm-up` are sent but not recorded. Sending
//! stops at `start + warm-up + duration` (or once `--requests` recorded requests were issued);
//! the readers then drain the outstanding replies for at most `--drain-timeout` (default 5 s),
//! after which the ones still missing count as timeouts. With `--duration`, a thread also gives
//! up on its connections at `end + 1.2 × drain timeout` even if a writer is still blocked (a
//! server that neither reads nor answers), counting what it still waits for as timeouts.
//!
//! **The plain loop** (`--io-loop blocking`, the default for a closed loop at pipeline 1 on at
//! most 4 connections, and always for `rdma://`): each connection gets a std thread of its own
//! (`--threads` does not apply) and [`plain`] drives its transports (one per shard) in a loop of
//! blocking calls, with the same pieces as the tokio tasks: [`ThreadCtx::draw`] decides and draws
//! each request, [`ThreadCtx::record`] records each reply, [`take_pending`] matches replies, and
//! the schedule, window, phases and error accounting are the ones described above. [`blocking`]
//! is its transport for TCP targets (blocking sockets: no cross-task wake-up per request), [`rdma`]
//! the one for RDMA sessions (whose calls block).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use corekv_net::routing::key_shard;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Notify, Semaphore};

use crate::config::{IoLoop, KeyPattern, LoadConfig, Ratio, Stop, Workload};
use crate::latency::Recording;
use crate::pacing::Pacer;
use crate::progress::Live;
use crate::target::{self, classify, Codec, Op, Outcome, Protocol, Reply, Target};
use crate::workload::{value_source, Generator};

mod blocking;
mod plain;
mod rdma;

/// An open-loop request sent this long or longer after its scheduled time is "late".
pub const LATE_THRESHOLD: Duration = Duration::from_millis(1);
/// Room a socket's read buffer is given at a time (it grows when replies are larger).
const READ_BUFFER: usize = 16 * 1024;
/// Bytes of encoded requests gathered before a write.
const MAX_WRITE_BATCH: usize = 64 * 1024;
/// Delay between fixing the schedule and its start, so every thread starts on time.
const START_DELAY: Duration = Duration::from_millis(10);

/// The outcome of a round.
#[derive(Debug)]
pub struct RoundResult {
    pub recording: Recording,
    /// From the end of the warm-up to the last recorded reply.
    pub measured: Duration,
}

/// When a round's phases start and end.
#[derive(Clone, Copy, Debug)]
struct Plan {
    start: Instant,
    measure_start: Instant,
    /// Sending stops at this time (`None` with `--requests`).
    end: Option<Instant>,
}

/// Counters shared by every thread of a round.
#[derive(Default)]
struct Shared {
    /// Recorded requests issued so far (for `--requests`).
    issued: AtomicU64,
    /// The sequential key pattern's counter.
    sequence: Arc<AtomicU64>,
}

/// Runs one round: connects every connection, warms up, measures, drains.
pub fn run_round(
    target: &Target,
    workload: &Workload,
    load: &LoadConfig,
    live: Option<Arc<Live>>,
) -> Result<RoundResult, String> {
    let endpoints = current_thread_runtime()?.block_on(target::endpoints(target, &load.rdma_provider))?;
    let io_loop = load.io_loop_for(target.protocol);
    let threads = match io_loop {
        // A blocking connection needs a thread of its own.
        IoLoop::Blocking => load.connections,
        IoLoop::Tokio | IoLoop::Auto => load.threads.clamp(1, load.connections),
    };
    let shared = Arc::new(Shared::default());
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    let mut go = Vec::new();
    let mut handles = Vec::new();
    for thread in 0..threads {
        let (go_tx, go_rx) = mpsc::channel::<Option<Plan>>();
        go.push(go_tx);
        let thread_ctx = ThreadSetup {
            connections: (thread..load.connections).step_by(threads as usize).collect(),
            endpoints: endpoints.clone(),
            protocol: target.protocol,
            io_loop,
            workload: workload.clone(),
            load: load.clone(),
            shared: shared.clone(),
            live: live.clone(),
        };
        let ready = ready_tx.clone();
        let handle = std::thread::Builder::new()
            .name(format!("bench-{thread}"))
            .spawn(move || thread_ctx.run(ready, go_rx))
            .map_err(|e| format!("cannot start a load thread: {e}"))?;
        handles.push(handle);
    }
    drop(ready_tx);
    let mut failure = None;
    for _ in 0..threads {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failure = failure.or(Some(e)),
            Err(_) => failure = failure.or(Some("a load thread died while connecting".to_string())),
        }
    }
    let start = Instant::now() + START_DELAY;
    let measure_start = start + load.warmup;
    let plan = Plan {
        start,
        measure_start,
        end: match load.stop {
            Stop::Duration(d) => Some(measure_start + d),
            Stop::Requests(_) => None,
        },
    };
    if let Some(live) = &live {
        let _ = live.measure_start.set(measure_start);
    }
    for tx in &go {
        let _ = tx.send(if failure.is_none() { Some(plan) } else { None });
    }
    let mut recording = Recording::default();
    for handle in handles {
        match handle.join() {
            Ok(part) => recording.merge(&part),
            Err(_) => failure = failure.or(Some("a load thread panicked".to_string())),
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let measured = match (recording.last_reply, plan.end) {
        (Some(last), _) if last > measure_start => last - measure_start,
        (_, Some(end)) => end - measure_start,
        _ => Duration::ZERO,
    };
    Ok(RoundResult { recording, measured })
}

/// SETs every key of `workload` once (sequentially over the connections), unrecorded by the
/// caller: the returned recording only serves to report errors and throughput. It runs the loop
/// `--io-loop auto` picks for its settings (at least 32 requests in flight per connection).
pub fn prefill(target: &Target, workload: &Workload, load: &LoadConfig) -> Result<RoundResult, String> {
    let workload = Workload {
        ratio: Ratio { read: 0, write: 1 },
        key_pattern: KeyPattern::Sequential,
        ..workload.clone()
    };
    let load = LoadConfig {
        pipeline: load.pipeline.max(32),
        stop: Stop::Requests(workload.keys),
        warmup: Duration::ZERO,
        rate: None,
        progress: false,
        io_loop: IoLoop::Auto,
        ..load.clone()
    };
    run_round(target, &workload, &load, None)
}

fn current_thread_runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a tokio runtime: {e}"))
}

/// What a load thread is given.
struct ThreadSetup {
    /// Global indices of this thread's connections.
    connections: Vec<u32>,
    endpoints: Vec<String>,
    protocol: Protocol,
    /// `Tokio`, or `Blocking` for a thread of the plain loop (one connection).
    io_loop: IoLoop,
    workload: Workload,
    load: LoadConfig,
    shared: Arc<Shared>,
    live: Option<Arc<Live>>,
}

/// A connection's sockets, one per endpoint.
type Sockets = Vec<tokio::net::TcpStream>;

impl ThreadSetup {
    /// The SET values' source, made before the thread reports ready (a large one takes a while,
    /// which must not eat into the round).
    fn values(&self) -> Bytes {
        value_source(self.workload.value_size.max, self.workload.seed)
    }

    /// The state the thread's connections share once the schedule is fixed.
    fn context(&self, plan: Plan, value: Bytes) -> ThreadCtx {
        ThreadCtx {
            plan,
            protocol: self.protocol,
            value,
            workload: self.workload.clone(),
            request_limit: match self.load.stop {
                Stop::Requests(n) => Some(n),
                Stop::Duration(_) => None,
            },
            load: self.load.clone(),
            shared: self.shared.clone(),
            live: self.live.clone(),
            recording: RefCell::new(Recording::default()),
        }
    }

    fn run(self, ready: mpsc::Sender<Result<(), String>>, go: mpsc::Receiver<Option<Plan>>) -> Recording {
        match (self.protocol, self.io_loop) {
            (Protocol::Rdma, _) => return rdma::run_thread(self, ready, go),
            (_, IoLoop::Blocking) => return blocking::run_thread(self, ready, go),
            _ => {}
        }
        let runtime = match current_thread_runtime() {
            Ok(rt) => rt,
            Err(e) => {
                let _ = ready.send(Err(e));
                return Recording::default();
            }
        };
        let connected: Result<Vec<Sockets>, String> = runtime.block_on(async {
            let mut all = Vec::with_capacity(self.connections.len());
            for _ in &self.connections {
                let mut sockets = Vec::with_capacity(self.endpoints.len());
                for endpoint in &self.endpoints {
                    sockets.push(target::connect(endpoint).await?);
                }
                all.push(sockets);
            }
            Ok(all)
        });
        let value = self.values();
        let connections = match connected {
            Ok(c) => {
                let _ = ready.send(Ok(()));
                c
            }
            Err(e) => {
                let _ = ready.send(Err(e));
                return Recording::default();
            }
        };
        let Ok(Some(plan)) = go.recv() else {
            return Recording::default();
        };
        let ctx = Rc::new(self.context(plan, value));
        let local = tokio::task::LocalSet::new();
        local.block_on(&runtime, async {
            let mut tasks = Vec::new();
            let mut conns = Vec::new();
            for (index, sockets) in self.connections.into_iter().zip(connections) {
                let (conn, handles) = spawn_connection(&ctx, index, sockets);
                conns.push(conn);
                tasks.extend(handles);
            }
            let all_done = async {
                for task in tasks {
                    let _ = task.await;
                }
            };
            // A server that stops reading can block a writer for good, and then its readers
            // never start draining: past the drain deadline, give up on whatever is left.
            let Some(deadline) = ctx.give_up_at() else {
                return all_done.await;
            };
            if tokio::time::timeout_at(deadline.into(), all_done).await.is_err() {
                let lost: u64 = conns
                    .iter()
                    .flat_map(|conn| conn.pending.iter())
                    .map(|queue| recorded(&queue.borrow()))
                    .sum();
                ctx.abandoned(lost);
            }
        });
        ctx.recording.take()
    }
}

/// What the tasks of one load thread share.
struct ThreadCtx {
    plan: Plan,
    protocol: Protocol,
    workload: Workload,
    load: LoadConfig,
    request_limit: Option<u64>,
    /// Every SET value is a prefix of this.
    value: Bytes,
    shared: Arc<Shared>,
    live: Option<Arc<Live>>,
    recording: RefCell<Recording>,
}

impl ThreadCtx {
    fn past_end(&self, at: Instant) -> bool {
        self.plan.end.is_some_and(|end| at >= end)
    }

    /// With `--duration`: when a thread gives up on connections still stuck (a server that
    /// neither reads nor answers), `end + 1.2 × drain timeout`.
    fn give_up_at(&self) -> Option<Instant> {
        let drain = self.load.drain_timeout;
        self.plan.end.map(|end| end + drain + drain / 5)
    }

    /// Open loop: when connection `index` sends its request number `k`, at its share of the
    /// rate, offset so connections interleave evenly. `None` in closed loop.
    fn due(&self, index: u32, k: u64) -> Option<Instant> {
        let rate = self.load.rate?;
        let interval = f64::from(self.load.connections) / rate;
        let offset = f64::from(index) / rate;
        Some(self.plan.start + Duration::from_secs_f64(offset + k as f64 * interval))
    }

    /// Draws a connection's next request once it holds a window slot: scheduled at `due` (open
    /// loop) or now (closed loop), with request id `id`, routed to one of `shards` sockets.
    /// `None` when sending stops: past the end, or the `--requests` limit reached.
    fn draw<'g>(&self, generator: &'g mut Generator, due: Option<Instant>, id: u64, shards: u32) -> Option<Drawn<'g>> {
        let now = Instant::now();
        let scheduled = due.unwrap_or(now);
        if due.is_none() && self.past_end(now) {
            return None;
        }
        let recorded = scheduled >= self.plan.measure_start;
        if recorded {
            if let Some(limit) = self.request_limit {
                if self.shared.issued.fetch_add(1, Ordering::Relaxed) >= limit {
                    return None;
                }
            }
            if due.is_some() && now.duration_since(scheduled) >= LATE_THRESHOLD {
                self.recording.borrow_mut().late += 1;
            }
        }
        let op = generator.next_op();
        let value = match op {
            Op::Set => self.value.slice(..generator.next_value_len()),
            Op::Get => Bytes::new(),
        };
        let key = generator.next_key();
        let shard = if shards > 1 { key_shard(key, shards) as usize } else { 0 };
        Some(Drawn {
            pending: Pending {
                id,
                scheduled,
                op,
                recorded,
            },
            shard,
            key,
            value,
        })
    }

    /// Records `reply`, received at `now`, to `request`. `Err`: a protocol error (the reply
    /// cannot answer that request).
    fn record(&self, request: Pending, reply: Reply, now: Instant) -> Result<(), String> {
        if !request.recorded {
            return Ok(());
        }
        let latency_ns = u64::try_from(now.duration_since(request.scheduled).as_nanos()).unwrap_or(u64::MAX);
        let outcome = classify(request.op, reply)?;
        let mut rec = self.recording.borrow_mut();
        rec.last_reply = Some(now);
        let stats = rec.op_mut(request.op);
        stats.record(latency_ns);
        let error = match outcome {
            Outcome::Hit | Outcome::Stored => false,
            Outcome::Miss => {
                stats.misses += 1;
                false
            }
            Outcome::ServerError(message) => {
                stats.errors += 1;
                rec.errors.server += 1;
                rec.note_error(format!("{} error reply: {message}", request.op.name()));
                true
            }
        };
        drop(rec);
        if let Some(live) = &self.live {
            live.record(latency_ns, error);
        }
        Ok(())
    }

    /// A socket (or session) closed or failed with `lost` recorded requests unanswered: they
    /// count as connection errors; the connection's first failure (`first`) also counts it as
    /// lost and keeps `message`.
    fn lost(&self, lost: u64, first: bool, message: &str) {
        let mut rec = self.recording.borrow_mut();
        rec.errors.connection += lost;
        if first {
            rec.connections_lost += 1;
            rec.note_error(format!("{message} ({lost} requests lost)"));
        }
    }

    /// `lost` recorded requests were still unsent or unanswered at the give-up time.
    fn abandoned(&self, lost: u64) {
        let mut rec = self.recording.borrow_mut();
        rec.errors.timeout += lost;
        rec.note_error(format!(
            "{lost} requests still unsent or unanswered at the drain deadline"
        ));
    }

    /// `lost` recorded requests were still unanswered when the drain timeout ran out.
    fn timed_out(&self, lost: u64) {
        let mut rec = self.recording.borrow_mut();
        rec.errors.timeout += lost;
        let wait = self.load.drain_timeout;
        rec.note_error(format!(
            "{lost} requests unanswered {wait:?} after the end of the round"
        ));
    }
}

/// A request drawn for sending, and the socket (shard) it goes to.
struct Drawn<'g> {
    pending: Pending,
    shard: usize,
    key: &'g [u8],
    value: Bytes,
}

/// Takes the request a reply answers off its socket's queue: the oldest (RESP, `id` `None`) or
/// the one with the reply's id (native).
fn take_pending(queue: &mut VecDeque<Pending>, id: Option<u64>) -> Option<Pending> {
    match id {
        None => queue.pop_front(),
        Some(id) => queue.iter().position(|p| p.id == id).and_then(|at| queue.remove(at)),
    }
}

/// Recorded requests in `queue` (the ones a failure or a timeout counts).
fn recorded(queue: &VecDeque<Pending>) -> u64 {
    queue.iter().filter(|p| p.recorded).count() as u64
}

/// A request waiting for its reply.
#[derive(Clone, Copy, Debug)]
struct Pending {
    id: u64,
    scheduled: Instant,
    op: Op,
    recorded: bool,
}

/// State of one connection shared by its writer and readers (all on one thread).
struct Connection {
    /// The pipeline window; closed when the connection fails.
    window: Semaphore,
    /// Per socket: requests sent and not answered, oldest first.
    pending: Vec<RefCell<VecDeque<Pending>>>,
    /// Set once: the connection failed (the writer stops, the failing reader counted its losses).
    failed: Cell<bool>,
    /// Set when the writer is done: the readers drain and stop.
    sending_done: Cell<bool>,
    done: Notify,
    /// The write halves once the writer is done. Dropping a write half shuts the socket's write
    /// side, and a server may drop its unsent replies when it reads that end of stream (Redis
    /// does), so they are kept until the readers are done with the connection.
    parked: RefCell<Vec<OwnedWriteHalf>>,
}

/// Spawns a connection's writer and readers; returns its shared state and their handles.
fn spawn_connection(
    ctx: &Rc<ThreadCtx>,
    index: u32,
    sockets: Sockets,
) -> (Rc<Connection>, Vec<tokio::task::JoinHandle<()>>) {
    let conn = Rc::new(Connection {
        window: Semaphore::new(ctx.load.pipeline as usize),
        pending: sockets
            .iter()
            .map(|_| RefCell::new(VecDeque::with_capacity(ctx.load.pipeline as usize)))
            .collect(),
        failed: Cell::new(false),
        sending_done: Cell::new(false),
        done: Notify::new(),
        parked: RefCell::new(Vec::new()),
    });
    let mut writers = Vec::new();
    let mut tasks = Vec::new();
    for (socket, stream) in sockets.into_iter().enumerate() {
        let (read, write) = stream.into_split();
        writers.push(write);
        tasks.push(tokio::task::spawn_local(read_loop(
            ctx.clone(),
            conn.clone(),
            socket,
            read,
        )));
    }
    tasks.push(tokio::task::spawn_local(write_loop(
        ctx.clone(),
        conn.clone(),
        index,
        writers,
    )));
    (conn, tasks)
}

/// The connection's sockets' write halves with their codecs and output buffers.
struct Outputs {
    halves: Vec<OwnedWriteHalf>,
    codecs: Vec<Codec>,
    buffers: Vec<BytesMut>,
    buffered: usize,
}

impl Outputs {
    /// Writes every buffered request; `false` if a socket failed.
    async fn flush(&mut self) -> bool {
        if self.buffered == 0 {
            return true;
        }
        self.buffered = 0;
        for (half, buffer) in self.halves.iter_mut().zip(&mut self.buffers) {
            if !buffer.is_empty() {
                if half.write_all(buffer).await.is_err() {
                    return false;
                }
                buffer.clear();
            }
        }
        true
    }
}

async fn write_loop(ctx: Rc<ThreadCtx>, conn: Rc<Connection>, index: u32, halves: Vec<OwnedWriteHalf>) {
    let shards = halves.len() as u32;
    let mut out = Outputs {
        codecs: halves.iter().map(|_| Codec::new(ctx.protocol)).collect(),
        buffers: halves.iter().map(|_| BytesMut::with_capacity(4096)).collect(),
        halves,
        buffered: 0,
    };
    let mut generator = Generator::new(&ctx.workload, u64::from(index), ctx.shared.sequence.clone());
    let pacer = Pacer::new(ctx.load.pacing);
    let mut sent = 0u64;
    let mut next_id = 1u64;
    let mut ok = true;
    loop {
        let due = ctx.due(index, sent);
        if let Some(due) = due {
            if ctx.past_end(due) {
                break;
            }
            if Instant::now() < due {
                ok = out.flush().await;
                if !ok {
                    break;
                }
                pacer.until(due).await;
            }
        } else if Instant::now() < ctx.plan.start {
            tokio::time::sleep_until(ctx.plan.start.into()).await;
        }
        // A slot in the pipeline window; an open-loop request's clock runs while it waits.
        match conn.window.try_acquire() {
            Ok(permit) => permit.forget(),
            Err(_) => {
                ok = out.flush().await;
                if !ok {
                    break;
                }
                match conn.window.acquire().await {
                    Ok(permit) => permit.forget(),
                    Err(_) => break,
                }
            }
        }
        if conn.failed.get() {
            break;
        }
        let Some(Drawn {
            pending,
            shard,
            key,
            value,
        }) = ctx.draw(&mut generator, due, next_id, shards)
        else {
            conn.window.add_permits(1);
            break;
        };
        next_id += 1;
        sent += 1;
        conn.pending[shard].borrow_mut().push_back(pending);
        let before = out.buffers[shard].len();
        out.codecs[shard].encode(pending.op, pending.id, key, &value, &mut out.buffers[shard]);
        out.buffered += out.buffers[shard].len() - before;
        // Gather the requests that can go right away into one write.
        let another_now = out.buffered < MAX_WRITE_BATCH
            && conn.window.available_permits() > 0
            && ctx.due(index, sent).map_or(true, |next| next <= Instant::now());
        if !another_now {
            ok = out.flush().await;
            if !ok {
                break;
            }
        }
    }
    if ok && !out.flush().await {
        ok = false;
    }
    if !ok && !conn.failed.get() {
        // The reader sees the failure too and counts the lost requests; make sure it wakes.
        for half in &mut out.halves {
            let _ = half.shutdown().await;
        }
    }
    conn.parked.borrow_mut().append(&mut out.halves);
    conn.sending_done.set(true);
    conn.done.notify_waiters();
}

async fn read_loop(ctx: Rc<ThreadCtx>, conn: Rc<Connection>, socket: usize, mut read: OwnedReadHalf) {
    let mut codec = Codec::new(ctx.protocol);
    let mut buf = BytesMut::with_capacity(READ_BUFFER);
    let mut drain_deadline: Option<Instant> = None;
    let pending = &conn.pending[socket];
    loop {
        if conn.sending_done.get() && pending.borrow().is_empty() {
            return;
        }
        if conn.sending_done.get() && drain_deadline.is_none() {
            drain_deadline = Some(Instant::now() + ctx.load.drain_timeout);
        }
        if buf.capacity() - buf.len() < READ_BUFFER / 4 {
            buf.reserve(READ_BUFFER);
        }
        let result = tokio::select! {
            biased;
            result = read.read_buf(&mut buf) => result,
            _ = conn.done.notified(), if !conn.sending_done.get() => continue,
            _ = tokio::time::sleep_until(drain_deadline.unwrap_or_else(Instant::now).into()),
                if drain_deadline.is_some() => {
                let lost = recorded(&pending.borrow());
                pending.borrow_mut().clear();
                ctx.timed_out(lost);
                return;
            }
        };
        let now = Instant::now();
        match result {
            Ok(0) => return fail(&ctx, &conn, pending, "connection closed by the server".into()),
            Err(e) => return fail(&ctx, &conn, pending, format!("connection failed: {e}")),
            Ok(_) => {}
        }
        loop {
            let (id, reply) = match codec.decode(&mut buf) {
                Ok(Some(decoded)) => decoded,
                Ok(None) => break,
                Err(e) => return protocol_error(&ctx, &conn, pending, false, e),
            };
            let request = take_pending(&mut pending.borrow_mut(), id);
            let Some(request) = request else {
                let message = format!("{} with no request waiting (id {id:?})", reply.describe());
                return protocol_error(&ctx, &conn, pending, true, message);
            };
            conn.window.add_permits(1);
            if let Err(e) = ctx.record(request, reply, now) {
                return protocol_error(&ctx, &conn, pending, true, e);
            }
        }
    }
}

/// A reply that cannot be read on, or cannot answer its request: one protocol error, then the
/// connection fails. `matched` says whether the reply's request was already taken off the queue;
/// if not, the oldest request is the one the bad reply stands for.
fn protocol_error(
    ctx: &ThreadCtx,
    conn: &Connection,
    pending: &RefCell<VecDeque<Pending>>,
    matched: bool,
    message: String,
) {
    if !matched {
        pending.borrow_mut().pop_front();
    }
    ctx.recording.borrow_mut().errors.protocol += 1;
    fail(ctx, conn, pending, format!("protocol error: {message}"));
}

/// The socket closed or failed: its unanswered requests are lost and the connection stops.
fn fail(ctx: &ThreadCtx, conn: &Connection, pending: &RefCell<VecDeque<Pending>>, message: String) {
    let lost = recorded(&pending.borrow());
    pending.borrow_mut().clear();
    ctx.lost(lost, !conn.failed.replace(true), &message);
    conn.window.close();
    conn.done.notify_waiters();
}
