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

use crate::config::{KeyPattern, LoadConfig, Ratio, Stop, Workload};
use crate::latency::Recording;
use crate::pacing::Pacer;
use crate::progress::Live;
use crate::target::{self, classify, Codec, Op, Outcome, Protocol, Target};
use crate::workload::{value_source, Generator};

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
    let endpoints = current_thread_runtime()?.block_on(target::endpoints(target))?;
    let threads = load.threads.clamp(1, load.connections);
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
/// caller: the returned recording only serves to report errors and throughput.
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
    workload: Workload,
    load: LoadConfig,
    shared: Arc<Shared>,
    live: Option<Arc<Live>>,
}

/// A connection's sockets, one per endpoint.
type Sockets = Vec<tokio::net::TcpStream>;

impl ThreadSetup {
    fn run(self, ready: mpsc::Sender<Result<(), String>>, go: mpsc::Receiver<Option<Plan>>) -> Recording {
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
        let ctx = Rc::new(ThreadCtx {
            plan,
            protocol: self.protocol,
            value: value_source(self.workload.value_size.max, self.workload.seed),
            workload: self.workload,
            request_limit: match self.load.stop {
                Stop::Requests(n) => Some(n),
                Stop::Duration(_) => None,
            },
            load: self.load,
            shared: self.shared,
            live: self.live,
            recording: RefCell::new(Recording::default()),
        });
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
            let Some(end) = plan.end else {
                return all_done.await;
            };
            let deadline = end + ctx.load.drain_timeout + ctx.load.drain_timeout / 5;
            if tokio::time::timeout_at(deadline.into(), all_done).await.is_err() {
                let lost: u64 = conns
                    .iter()
                    .flat_map(|conn| conn.pending.iter())
                    .map(|queue| queue.borrow().iter().filter(|p| p.recorded).count() as u64)
                    .sum();
                let mut rec = ctx.recording.borrow_mut();
                rec.errors.timeout += lost;
                rec.note_error(format!(
                    "{lost} requests still unsent or unanswered at the drain deadline"
                ));
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
    // Open loop: this connection's share of the rate, offset so connections interleave evenly.
    let schedule = ctx.load.rate.map(|rate| {
        let interval = f64::from(ctx.load.connections) / rate;
        let offset = f64::from(index) / rate;
        (interval, offset)
    });
    // The scheduled time of this connection's request number `k` (open loop).
    let due_of = |k: u64| {
        schedule.map(|(interval, offset)| ctx.plan.start + Duration::from_secs_f64(offset + k as f64 * interval))
    };
    let pacer = Pacer::new(ctx.load.pacing);
    let mut sent = 0u64;
    let mut next_id = 1u64;
    let mut ok = true;
    loop {
        let due = due_of(sent);
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
        let now = Instant::now();
        let scheduled = due.unwrap_or(now);
        if due.is_none() && ctx.past_end(now) {
            conn.window.add_permits(1);
            break;
        }
        let recorded = scheduled >= ctx.plan.measure_start;
        if recorded {
            if let Some(limit) = ctx.request_limit {
                if ctx.shared.issued.fetch_add(1, Ordering::Relaxed) >= limit {
                    conn.window.add_permits(1);
                    break;
                }
            }
            if due.is_some() && now.duration_since(scheduled) >= LATE_THRESHOLD {
                ctx.recording.borrow_mut().late += 1;
            }
        }
        let op = generator.next_op();
        let value = match op {
            Op::Set => ctx.value.slice(..generator.next_value_len()),
            Op::Get => Bytes::new(),
        };
        let key = generator.next_key();
        let shard = if shards > 1 { key_shard(key, shards) as usize } else { 0 };
        let id = next_id;
        next_id += 1;
        sent += 1;
        conn.pending[shard].borrow_mut().push_back(Pending {
            id,
            scheduled,
            op,
            recorded,
        });
        let before = out.buffers[shard].len();
        out.codecs[shard].encode(op, id, key, &value, &mut out.buffers[shard]);
        out.buffered += out.buffers[shard].len() - before;
        // Gather the requests that can go right away into one write.
        let another_now = out.buffered < MAX_WRITE_BATCH
            && conn.window.available_permits() > 0
            && due_of(sent).map_or(true, |next| next <= Instant::now());
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
                let lost = pending.borrow().iter().filter(|p| p.recorded).count() as u64;
                pending.borrow_mut().clear();
                let mut rec = ctx.recording.borrow_mut();
                rec.errors.timeout += lost;
                let wait = ctx.load.drain_timeout;
                rec.note_error(format!("{lost} requests unanswered {wait:?} after the end of the round"));
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
            let request = {
                let mut queue = pending.borrow_mut();
                match id {
                    None => queue.pop_front(),
                    Some(id) => queue.iter().position(|p| p.id == id).and_then(|at| queue.remove(at)),
                }
            };
            let Some(request) = request else {
                let message = format!("{} with no request waiting (id {id:?})", reply.describe());
                return protocol_error(&ctx, &conn, pending, true, message);
            };
            conn.window.add_permits(1);
            if !request.recorded {
                continue;
            }
            let latency_ns = u64::try_from(now.duration_since(request.scheduled).as_nanos()).unwrap_or(u64::MAX);
            let outcome = match classify(request.op, reply) {
                Ok(outcome) => outcome,
                Err(e) => return protocol_error(&ctx, &conn, pending, true, e),
            };
            let mut rec = ctx.recording.borrow_mut();
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
            if let Some(live) = &ctx.live {
                live.record(latency_ns, error);
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
    let lost = pending.borrow().iter().filter(|p| p.recorded).count() as u64;
    pending.borrow_mut().clear();
    let mut rec = ctx.recording.borrow_mut();
    rec.errors.connection += lost;
    if !conn.failed.replace(true) {
        rec.connections_lost += 1;
        rec.note_error(format!("{message} ({lost} requests lost)"));
    }
    conn.window.close();
    conn.done.notify_waiters();
}
