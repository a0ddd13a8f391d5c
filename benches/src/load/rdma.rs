//! The load loop of an RDMA connection (`rdma://`): one std thread per connection, one
//! [`RdmaStream`] session per shard, driven by blocking calls in the plain loop of
//! [`super::plain`] (this module is its transport).
//!
//! ```text
//!  flush:    send each shard's buffer as one request message (if the session has room for one)
//!  receive:  take the replies: decode, match by id, record; if none came, block on a session
//!            until the next send time (open loop, less the pacing margin, then spin), the end of
//!            the round or the drain deadline
//! ```
//!
//! A session's calls block and each waits on its own completion queue: with replies due from one
//! session only, the loop blocks on it until they come; with several, it blocks on the one holding
//! the oldest request for at most [`WAIT_SLICE`] at a time and then polls the others, so a reply
//! may be noticed up to about that much late.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use corekv_net::client::rdma::RdmaStream;

use super::plain::{self, Conn, Io, Lane, MAX_WAIT};
use super::{Plan, ThreadSetup, MAX_WRITE_BATCH};
use crate::latency::Recording;
use crate::target;

/// With replies due from several sessions, the longest blocking wait on one of them.
const WAIT_SLICE: Duration = Duration::from_micros(50);

/// A load thread of an rdma target: connects its connection's sessions, then runs it.
pub(super) fn run_thread(
    setup: ThreadSetup,
    ready: mpsc::Sender<Result<(), String>>,
    go: mpsc::Receiver<Option<Plan>>,
) -> Recording {
    plain::run_thread(setup, ready, go, |setup| {
        let options = target::rdma::options(
            MAX_WRITE_BATCH,
            setup.workload.value_size.max,
            &setup.load.rdma_provider,
        );
        setup
            .endpoints
            .iter()
            .map(|endpoint| target::rdma::connect(endpoint, &options))
            .collect()
    })
}

/// Replies may come: requests were sent and are not answered.
fn awaits(lane: &Lane<RdmaStream>) -> bool {
    !lane.failed && lane.io.in_flight() > 0
}

impl Io for RdmaStream {
    /// Sends each session's buffered requests as one request message, if it has room for one
    /// more message in flight (otherwise they wait for a reply to free it).
    fn flush(conn: &mut Conn<'_, Self>) {
        for shard in 0..conn.lanes.len() {
            let lane = &mut conn.lanes[shard];
            if lane.failed || lane.out.is_empty() || !lane.io.can_send() {
                continue;
            }
            let deadline = Instant::now() + conn.ctx.load.drain_timeout;
            match lane.io.send(&lane.out, deadline) {
                Ok(()) => lane.out.clear(),
                Err(e) => conn.fail(shard, format!("connection failed: {e}")),
            }
        }
    }

    fn receive(conn: &mut Conn<'_, Self>, until: Option<Instant>, margin: Duration) {
        let until = until.unwrap_or_else(|| Instant::now() + MAX_WAIT);
        let block_until = until.checked_sub(margin).unwrap_or(until);
        loop {
            if poll(conn) {
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
            let mut awaiting = conn.lanes.iter().enumerate().filter(|(_, lane)| awaits(lane));
            let oldest = awaiting
                .clone()
                .min_by_key(|(_, lane)| lane.pending.front().map(|p| p.id))
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
            let lane = &mut conn.lanes[shard];
            match lane.io.recv(&mut lane.input, deadline) {
                Ok(true) => {
                    conn.decode(shard, Instant::now());
                    return;
                }
                Ok(false) => {}
                Err(e) => return conn.fail(shard, format!("connection failed: {e}")),
            }
        }
    }
}

/// Takes every response message already arrived, without blocking; true if there was one.
fn poll(conn: &mut Conn<'_, RdmaStream>) -> bool {
    let mut any = false;
    for shard in 0..conn.lanes.len() {
        while awaits(&conn.lanes[shard]) {
            let lane = &mut conn.lanes[shard];
            match lane.io.recv(&mut lane.input, Instant::now()) {
                Ok(true) => {
                    any = true;
                    conn.decode(shard, Instant::now());
                }
                Ok(false) => break,
                Err(e) => {
                    conn.fail(shard, format!("connection failed: {e}"));
                    break;
                }
            }
        }
    }
    any
}
