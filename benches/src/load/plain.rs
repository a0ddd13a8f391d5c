//! The plain loop of one connection on a thread of its own, generic over the transport that
//! carries its requests ([`Io`], one per shard): [`super::rdma`] supplies RDMA sessions,
//! [`super::blocking`] blocking TCP sockets, and this module the rest.
//!
//! ```text
//!  loop:  draw every request that can go now (a window slot free and, open loop, due): encode it
//!         into its shard's buffer with the lane's codec, queue its Pending entry
//!         Io::flush: send the buffers
//!         Io::receive: take the replies that arrived (Conn::decode matches and records them);
//!         if none had, wait for one until the next send time (open loop, less the pacing
//!         margin, then spin), the end of the round or the drain deadline
//! ```
//!
//! The schedule, the window (`--pipeline` requests drawn and unanswered per connection), the
//! phases and the error accounting are those of the tokio loop, through the same
//! [`ThreadCtx`] methods.

use std::collections::VecDeque;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::{recorded, take_pending, Drawn, Pending, Plan, ThreadCtx, ThreadSetup, MAX_WRITE_BATCH};
use crate::latency::Recording;
use crate::pacing::blocking_margin;
use crate::target::Codec;
use crate::workload::Generator;

/// The longest wait for a reply when nothing bounds it (`--requests`, window full).
pub(super) const MAX_WAIT: Duration = Duration::from_secs(1);

/// What carries one shard's requests and replies.
pub(super) trait Io: Sized {
    /// Sends the lanes' buffered requests (or as many as the transport takes now: the rest stay
    /// buffered, counted in the window).
    fn flush(conn: &mut Conn<'_, Self>);

    /// Takes the replies that arrived; if none had, waits for one until `until` (`None`: for
    /// [`MAX_WAIT`]), blocking until `margin` before it and spinning the rest.
    fn receive(conn: &mut Conn<'_, Self>, until: Option<Instant>, margin: Duration);
}

/// One shard's side of a connection: its transport, codec, buffers and unanswered requests.
pub(super) struct Lane<S> {
    pub io: S,
    pub codec: Codec,
    /// Encoded requests not sent yet.
    pub out: BytesMut,
    /// Reply bytes not decoded yet.
    pub input: BytesMut,
    /// Requests encoded and not answered, oldest first.
    pub pending: VecDeque<Pending>,
    /// The lane failed: its requests were counted, it is not used again.
    pub failed: bool,
}

/// A connection driven by the plain loop.
pub(super) struct Conn<'c, S> {
    pub ctx: &'c ThreadCtx,
    pub index: u32,
    /// One per shard, in routing order.
    pub lanes: Vec<Lane<S>>,
    /// A lane failed, or the connection gave up: it sends nothing more.
    pub failed: bool,
}

/// A load thread of the plain loop: opens its connection's transports with `connect` (one per
/// endpoint), reports ready, waits for the schedule, then runs the connection.
pub(super) fn run_thread<S: Io>(
    setup: ThreadSetup,
    ready: mpsc::Sender<Result<(), String>>,
    go: mpsc::Receiver<Option<Plan>>,
    connect: impl FnOnce(&ThreadSetup) -> Result<Vec<S>, String>,
) -> Recording {
    // `run_round` gives each thread of the plain loop exactly one connection.
    let index = setup.connections[0];
    let value = setup.values();
    let ios = match connect(&setup) {
        Ok(ios) => {
            let _ = ready.send(Ok(()));
            ios
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return Recording::default();
        }
    };
    let Ok(Some(plan)) = go.recv() else {
        return Recording::default();
    };
    let ctx = setup.context(plan, value);
    let window = ctx.load.pipeline as usize;
    let lanes = ios
        .into_iter()
        .map(|io| Lane {
            io,
            codec: Codec::new(setup.protocol),
            out: BytesMut::with_capacity(4096),
            input: BytesMut::with_capacity(4096),
            pending: VecDeque::with_capacity(window),
            failed: false,
        })
        .collect();
    let mut conn = Conn {
        ctx: &ctx,
        index,
        lanes,
        failed: false,
    };
    conn.run();
    // The transports close here, once every reply the loop waited for was taken.
    drop(conn);
    ctx.recording.take()
}

impl<S: Io> Conn<'_, S> {
    /// Requests drawn and not answered: the pipeline window's use.
    pub fn outstanding(&self) -> usize {
        self.lanes.iter().map(|lane| lane.pending.len()).sum()
    }

    fn run(&mut self) {
        let ctx = self.ctx;
        let shards = self.lanes.len() as u32;
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
                let lane = &mut self.lanes[shard];
                let before = lane.out.len();
                lane.codec.encode(pending.op, pending.id, key, &value, &mut lane.out);
                batch += lane.out.len() - before;
                lane.pending.push_back(pending);
            }
            S::flush(self);
            if self.failed {
                sending = false;
            }
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
            S::receive(self, until, margin);
            if !sending && drain_deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                let lost = self.lanes.iter().map(|lane| recorded(&lane.pending)).sum();
                if lost > 0 {
                    ctx.timed_out(lost);
                }
                return;
            }
        }
    }
}

impl<S> Conn<'_, S> {
    /// Decodes the replies in a lane's input, received at `now`, and records them.
    pub fn decode(&mut self, shard: usize, now: Instant) {
        loop {
            let lane = &mut self.lanes[shard];
            let (id, reply) = match lane.codec.decode(&mut lane.input) {
                Ok(Some(decoded)) => decoded,
                Ok(None) => return,
                Err(e) => return self.protocol_error(shard, false, e),
            };
            let Some(request) = take_pending(&mut lane.pending, id) else {
                let message = format!("{} with no request waiting (id {id:?})", reply.describe());
                return self.protocol_error(shard, true, message);
            };
            if let Err(e) = self.ctx.record(request, reply, now) {
                return self.protocol_error(shard, true, e);
            }
        }
    }

    /// As the tokio loop's `protocol_error`: one protocol error, then the lane fails.
    fn protocol_error(&mut self, shard: usize, matched: bool, message: String) {
        if !matched {
            self.lanes[shard].pending.pop_front();
        }
        self.ctx.recording.borrow_mut().errors.protocol += 1;
        self.fail(shard, format!("protocol error: {message}"));
    }

    /// The lane failed: its unanswered requests are lost, and the connection stops sending (the
    /// other lanes still drain).
    pub fn fail(&mut self, shard: usize, message: String) {
        let lane = &mut self.lanes[shard];
        let lost = recorded(&lane.pending);
        lane.pending.clear();
        lane.out.clear();
        lane.failed = true;
        let first = !std::mem::replace(&mut self.failed, true);
        self.ctx.lost(lost, first, &message);
    }

    /// The round's give-up time passed with the connection stuck (a server that neither reads
    /// nor answers): whatever is still unsent or unanswered counts as timeouts, as in the tokio
    /// loop, and the connection stops.
    pub fn give_up(&mut self) {
        let lost = self.lanes.iter().map(|lane| recorded(&lane.pending)).sum();
        for lane in &mut self.lanes {
            lane.pending.clear();
            lane.out.clear();
            lane.failed = true;
        }
        self.failed = true;
        self.ctx.abandoned(lost);
    }
}
