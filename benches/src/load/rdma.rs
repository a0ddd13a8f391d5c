//! The load loop of an RDMA connection (`rdma://`): one std thread per connection, one
//! [`RdmaStream`] session per shard, driven by blocking calls in a plain loop.
//!
//! ```text
//!  loop:  draw every request that can go now (a window slot free and, open loop, due): encode it
//!         into its shard's buffer (the native codec), queue its Pending entry
//!         send each shard's buffer as one request message (if the session has room for one)
//!         take the replies: decode, match by id, record; if none came, block on a session
//!         until the next send time (open loop, less the pacing margin, then spin), the end of
//!         the round or the drain deadline
//! ```
//!
//! The schedule, the window (`--pipeline` requests drawn and unanswered per connection), the
//! phases and the error accounting are those of the tokio loop, through the same
//! [`ThreadCtx`] methods. A session's calls block and each waits on its own completion queue:
//! with replies due from one session only, the loop blocks on it until they come; with several,
//! it blocks on the one holding the oldest request for at most [`WAIT_SLICE`] at a time and then
//! polls the others, so a reply may be noticed up to about that much late.

use std::collections::VecDeque;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use corekv_net::client::rdma::RdmaStream;

use super::{recorded, take_pending, Drawn, Pending, Plan, ThreadCtx, ThreadSetup, MAX_WRITE_BATCH};
use crate::latency::Recording;
use crate::pacing::blocking_margin;
use crate::target::{self, Codec, Protocol};
use crate::workload::Generator;

/// With replies due from several sessions, the longest blocking wait on one of them.
const WAIT_SLICE: Duration = Duration::from_micros(50);
/// The longest blocking wait when nothing bounds it (`--requests`, window full).
const MAX_WAIT: Duration = Duration::from_secs(1);

/// A load thread of an rdma target: connects its connection's sessions, then runs it.
pub(super) fn run_thread(
    setup: ThreadSetup,
    ready: mpsc::Sender<Result<(), String>>,
    go: mpsc::Receiver<Option<Plan>>,
) -> Recording {
    // `run_round` gives each rdma thread exactly one connection.
    let index = setup.connections[0];
    let options = target::rdma::options(
        MAX_WRITE_BATCH,
        setup.workload.value_size.max,
        &setup.load.rdma_provider,
    );
    let streams: Result<Vec<RdmaStream>, String> = setup
        .endpoints
        .iter()
        .map(|endpoint| target::rdma::connect(endpoint, &options))
        .collect();
    let streams = match streams {
        Ok(streams) => {
            let _ = ready.send(Ok(()));
            streams
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return Recording::default();
        }
    };
    let Ok(Some(plan)) = go.recv() else {
        return Recording::default();
    };
    let ctx = setup.context(plan);
    let mut conn = RdmaConnection {
        ctx: &ctx,
        index,
        sessions: streams.into_iter().map(Session::new).collect(),
        failed: false,
    };
    conn.run();
    ctx.recording.take()
}

/// One shard's session of a connection.
struct Session {
    stream: RdmaStream,
    codec: Codec,
    /// Encoded requests not sent yet (they go as one request message).
    out: BytesMut,
    /// Response bytes not decoded yet.
    input: BytesMut,
    /// Requests encoded and not answered, oldest first.
    pending: VecDeque<Pending>,
    /// The session failed: its requests were counted, it is not used again.
    failed: bool,
}

impl Session {
    fn new(stream: RdmaStream) -> Session {
        Session {
            stream,
            codec: Codec::new(Protocol::Rdma),
            out: BytesMut::with_capacity(4096),
            input: BytesMut::with_capacity(4096),
            pending: VecDeque::new(),
            failed: false,
        }
    }

    /// Replies may come: requests were sent and are not answered.
    fn awaits(&self) -> bool {
        !self.failed && self.stream.in_flight() > 0
    }
}

struct RdmaConnection<'c> {
    ctx: &'c ThreadCtx,
    index: u32,
    sessions: Vec<Session>,
    /// A session failed (the connection is lost and sends nothing more).
    failed: bool,
}

impl RdmaConnection<'_> {
    /// Requests drawn and not answered: the pipeline window's use.
    fn outstanding(&self) -> usize {
        self.sessions.iter().map(|s| s.pending.len()).sum()
    }

    fn run(&mut self) {
        let ctx = self.ctx;
        let shards = self.sessions.len() as u32;
        let window = ctx.load.pipeline as usize;
        let margin = blocking_margin(ctx.load.pacing);
        let mut generator = Generator::new(&ctx.workload, u64::from(self.index), ctx.shared.sequence.clone());
        let mut sent = 0u64;
        let mut sending = true;
        let mut drain_deadline = None;
        if ctx.load.rate.is_none() {
            std::thread::sleep(ctx.plan.start.saturating_duration_since(Instant::now()));
        }
        loop {
            // Draw every request that can go now into its shard's buffer.
            let mut batch = 0;
            while sending && batch < MAX_WRITE_BATCH {
                let due = ctx.due(self.index, sent);
                if self.failed || ctx.past_end(due.unwrap_or_else(Instant::now)) {
                    sending = false;
                    break;
                }
                if due.is_some_and(|due| due > Instant::now()) || self.outstanding() >= window {
                    break;
                }
                let Some(Drawn {
                    pending,
                    shard,
                    key,
                    value,
                }) = ctx.draw(&mut generator, due, sent + 1, shards)
                else {
                    sending = false;
                    break;
                };
                sent += 1;
                let session = &mut self.sessions[shard];
                let before = session.out.len();
                session
                    .codec
                    .encode(pending.op, pending.id, key, &value, &mut session.out);
                batch += session.out.len() - before;
                session.pending.push_back(pending);
            }
            self.flush();
            if !sending && drain_deadline.is_none() {
                drain_deadline = Some(Instant::now() + ctx.load.drain_timeout);
            }
            if !sending && self.outstanding() == 0 {
                return;
            }
            // Take the replies, waiting for one until whatever comes next.
            let next_send = ctx.due(self.index, sent).filter(|_| self.outstanding() < window);
            let (until, margin) = match (sending, next_send) {
                (true, Some(due)) => (Some(due), margin),
                // Closed loop with a free slot: the write batch was full, go on at once.
                (true, None) if self.outstanding() < window => (Some(Instant::now()), Duration::ZERO),
                (true, None) => (ctx.plan.end, Duration::ZERO),
                (false, _) => (drain_deadline, Duration::ZERO),
            };
            self.receive(until, margin);
            if !sending && drain_deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                let lost = self.sessions.iter().map(|s| recorded(&s.pending)).sum();
                if lost > 0 {
                    ctx.timed_out(lost);
                }
                return;
            }
        }
    }

    /// Sends each session's buffered requests as one request message, if it has room for one
    /// more message in flight (otherwise they wait for a reply to free it).
    fn flush(&mut self) {
        for shard in 0..self.sessions.len() {
            let session = &mut self.sessions[shard];
            if session.failed || session.out.is_empty() || !session.stream.can_send() {
                continue;
            }
            let deadline = Instant::now() + self.ctx.load.drain_timeout;
            match session.stream.send(&session.out, deadline) {
                Ok(()) => session.out.clear(),
                Err(e) => self.fail(shard, format!("connection failed: {e}")),
            }
        }
    }

    /// Takes the replies that arrived; if none had, waits for one until `until` (`None`: for
    /// [`MAX_WAIT`]), blocking until `margin` before it and spinning the rest.
    fn receive(&mut self, until: Option<Instant>, margin: Duration) {
        let until = until.unwrap_or_else(|| Instant::now() + MAX_WAIT);
        let block_until = until.checked_sub(margin).unwrap_or(until);
        loop {
            if self.poll() {
                return;
            }
            let now = Instant::now();
            if now >= until {
                return;
            }
            if now >= block_until {
                std::thread::yield_now();
                continue;
            }
            let mut awaiting = self.sessions.iter().enumerate().filter(|(_, s)| s.awaits());
            let oldest = awaiting
                .clone()
                .min_by_key(|(_, s)| s.pending.front().map(|p| p.id))
                .map(|(shard, _)| shard);
            let several = awaiting.nth(1).is_some();
            let Some(shard) = oldest else {
                // Nothing can arrive: just wait for the time.
                std::thread::sleep(block_until - now);
                continue;
            };
            let deadline = if several {
                block_until.min(now + WAIT_SLICE)
            } else {
                block_until
            };
            let session = &mut self.sessions[shard];
            match session.stream.recv(&mut session.input, deadline) {
                Ok(true) => {
                    self.decode(shard, Instant::now());
                    return;
                }
                Ok(false) => {}
                Err(e) => return self.fail(shard, format!("connection failed: {e}")),
            }
        }
    }

    /// Takes every response message already arrived, without blocking; true if there was one.
    fn poll(&mut self) -> bool {
        let mut any = false;
        for shard in 0..self.sessions.len() {
            while self.sessions[shard].awaits() {
                let session = &mut self.sessions[shard];
                match session.stream.recv(&mut session.input, Instant::now()) {
                    Ok(true) => {
                        any = true;
                        self.decode(shard, Instant::now());
                    }
                    Ok(false) => break,
                    Err(e) => {
                        self.fail(shard, format!("connection failed: {e}"));
                        break;
                    }
                }
            }
        }
        any
    }

    /// Decodes the replies in a session's input, received at `now`, and records them.
    fn decode(&mut self, shard: usize, now: Instant) {
        loop {
            let session = &mut self.sessions[shard];
            let (id, reply) = match session.codec.decode(&mut session.input) {
                Ok(Some(decoded)) => decoded,
                Ok(None) => return,
                Err(e) => return self.protocol_error(shard, false, e),
            };
            let Some(request) = take_pending(&mut session.pending, id) else {
                let message = format!("{} with no request waiting (id {id:?})", reply.describe());
                return self.protocol_error(shard, true, message);
            };
            if let Err(e) = self.ctx.record(request, reply, now) {
                return self.protocol_error(shard, true, e);
            }
        }
    }

    /// As the tokio loop's `protocol_error`: one protocol error, then the session fails.
    fn protocol_error(&mut self, shard: usize, matched: bool, message: String) {
        if !matched {
            self.sessions[shard].pending.pop_front();
        }
        self.ctx.recording.borrow_mut().errors.protocol += 1;
        self.fail(shard, format!("protocol error: {message}"));
    }

    /// The session failed: its unanswered requests are lost, and the connection stops sending
    /// (the other sessions still drain).
    fn fail(&mut self, shard: usize, message: String) {
        let session = &mut self.sessions[shard];
        let lost = recorded(&session.pending);
        session.pending.clear();
        session.out.clear();
        session.failed = true;
        let first = !std::mem::replace(&mut self.failed, true);
        self.ctx.lost(lost, first, &message);
    }
}
