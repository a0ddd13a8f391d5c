//! The blocking load loop of TCP targets (`resp://`, `native://`; `--io-loop blocking`, or
//! `auto` for a closed loop at pipeline 1 on at most 4 connections): one std thread per
//! connection, one blocking [`TcpStream`] per shard (TCP_NODELAY), driven by the plain loop of
//! [`super::plain`] (this module is its transport).
//!
//! Why: the tokio loop hands every reply from a reader task to the writer task, a cross-task
//! wake-up and an executor turn that add several µs to each request at pipeline 1. Here a
//! request costs one `write` and one `read` on the thread that times it.
//!
//! ```text
//!  flush:    write each shard's buffer (write_all, taking replies meanwhile if the socket is full)
//!  receive:  one socket awaits replies: a blocking read on it
//!            several sockets await replies: non-blocking reads of each in turn, yielding between
//!            rounds, until one has replies
//!            then decode, match (RESP: the oldest, native: by id), record
//! ```
//!
//! **Several shards.** The thread must not block on one socket while another has a reply. With
//! `--pipeline 1` (what `auto` picks it for) this cannot happen: one request is outstanding at a
//! time, so one socket at most awaits a reply, and RESP has one socket anyway. With a wider window
//! on several native shards, the loop polls the sockets awaiting replies with non-blocking reads
//! (`MSG_DONTWAIT`) and yields between rounds: no reply waits for another socket, but the thread
//! spins on its core while it waits (the tokio loop suits that case better).
//!
//! **Deadlines.** Reads and writes block for at most [`WAKE_EVERY`] (`SO_RCVTIMEO`,
//! `SO_SNDTIMEO`, set once per socket) and then check the round's deadlines, so the end of the
//! round, the drain deadline and the give-up time are noticed at most about that late (the
//! measured latencies are not affected: a reply wakes its read at once). A socket whose server
//! takes no more requests does not block the thread for good: between write attempts the loop
//! takes the replies already arrived (a server may wait for its replies to be read before it
//! reads on), and at the give-up time (`--duration`: end + 1.2 × drain timeout, as the tokio
//! loop) it counts what is still unsent or unanswered as timeouts.
//!
//! **Closed loop only.** `SO_RCVTIMEO` runs on the kernel's tick (ms), too coarse to wake at an
//! open loop's send times, and waiting on a socket and a timer together would need `poll`:
//! `--io-loop blocking` with `--rate` is refused when the settings are checked (`config`).

use std::io::{self, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use nix::sys::socket::{recv, MsgFlags};

use super::plain::{self, Conn, Io, Lane, MAX_WAIT};
use super::{Plan, ThreadSetup, READ_BUFFER};
use crate::latency::Recording;
use crate::target;

/// The longest a read or a write blocks before the loop looks at the round's deadlines.
const WAKE_EVERY: Duration = Duration::from_millis(10);

/// A load thread of the blocking loop: connects its connection's sockets, then runs it.
pub(super) fn run_thread(
    setup: ThreadSetup,
    ready: mpsc::Sender<Result<(), String>>,
    go: mpsc::Receiver<Option<Plan>>,
) -> Recording {
    plain::run_thread(setup, ready, go, |setup| {
        setup
            .endpoints
            .iter()
            .map(|endpoint| Socket::connect(endpoint))
            .collect()
    })
}

/// One shard's socket.
pub(super) struct Socket {
    stream: TcpStream,
    /// Where reads land before they are appended to the lane's input (a `BytesMut`'s spare room
    /// is not initialized, which `Read` needs).
    scratch: Box<[u8]>,
}

impl Socket {
    /// Opens a socket to `address` (TCP_NODELAY), whose reads and writes block for at most
    /// [`WAKE_EVERY`].
    fn connect(address: &str) -> Result<Socket, String> {
        let stream = target::connect_blocking(address)?;
        stream
            .set_read_timeout(Some(WAKE_EVERY))
            .and_then(|()| stream.set_write_timeout(Some(WAKE_EVERY)))
            .map_err(|e| format!("cannot set the socket timeouts of {address}: {e}"))?;
        Ok(Socket {
            stream,
            scratch: vec![0; READ_BUFFER].into_boxed_slice(),
        })
    }

    /// Reads what arrived into `input`: waiting up to [`WAKE_EVERY`] for it if `wait`, not at all
    /// otherwise. `Ok(0)`: the server closed the connection; nothing yet: an error [`retry`]
    /// accepts.
    fn read_into(&mut self, input: &mut BytesMut, wait: bool) -> io::Result<usize> {
        let n = if wait {
            self.stream.read(&mut self.scratch)?
        } else {
            recv(self.stream.as_raw_fd(), &mut self.scratch, MsgFlags::MSG_DONTWAIT).map_err(io::Error::from)?
        };
        input.extend_from_slice(&self.scratch[..n]);
        Ok(n)
    }
}

/// An I/O error that only means "not now": a timeout, no data yet, or a signal.
fn retry(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
    )
}

/// Replies may come: requests were sent (or are being sent) and are not answered.
fn awaits(lane: &Lane<Socket>) -> bool {
    !lane.failed && !lane.pending.is_empty()
}

impl Io for Socket {
    fn flush(conn: &mut Conn<'_, Self>) {
        for shard in 0..conn.lanes.len() {
            while !conn.lanes[shard].failed && !conn.lanes[shard].out.is_empty() {
                let lane = &mut conn.lanes[shard];
                match lane.io.stream.write(&lane.out) {
                    Ok(0) => conn.fail(shard, "connection failed: the socket takes no more bytes".into()),
                    Ok(n) => lane.out.advance(n),
                    Err(e) if retry(&e) => {
                        // The server takes no more for now; it may be waiting for its replies to be read.
                        poll(conn);
                        if conn.ctx.give_up_at().is_some_and(|at| Instant::now() >= at) {
                            return conn.give_up();
                        }
                    }
                    Err(e) => conn.fail(shard, format!("connection failed: {e}")),
                }
            }
        }
    }

    /// The loop is closed (no send time to spin up to): `margin` is always zero.
    fn receive(conn: &mut Conn<'_, Self>, until: Option<Instant>, _margin: Duration) {
        let until = until.unwrap_or_else(|| Instant::now() + MAX_WAIT);
        if Instant::now() >= until {
            poll(conn);
            return;
        }
        let mut awaiting = (0..conn.lanes.len()).filter(|&shard| awaits(&conn.lanes[shard]));
        let first = awaiting.next();
        let several = awaiting.next().is_some();
        match (first, several) {
            // The one socket replies can come from: block on it.
            (Some(shard), false) => while !read(conn, shard, true) && Instant::now() < until {},
            // Never block on one while another may have a reply.
            (Some(_), true) => {
                while !poll(conn) && Instant::now() < until {
                    std::thread::yield_now();
                }
            }
            // Nothing can arrive: just wait for the time.
            (None, _) => std::thread::sleep(until.saturating_duration_since(Instant::now())),
        }
    }
}

/// Reads lane `shard` once (blocking for at most [`WAKE_EVERY`] if `wait`) and records the
/// replies that came; true if something happened (replies read, or the lane failed).
fn read(conn: &mut Conn<'_, Socket>, shard: usize, wait: bool) -> bool {
    let lane = &mut conn.lanes[shard];
    match lane.io.read_into(&mut lane.input, wait) {
        Ok(0) => conn.fail(shard, "connection closed by the server".into()),
        Ok(_) => conn.decode(shard, Instant::now()),
        Err(e) if retry(&e) => return false,
        Err(e) => conn.fail(shard, format!("connection failed: {e}")),
    }
    true
}

/// Takes every reply already arrived on the sockets awaiting some, without blocking; true if
/// something happened.
fn poll(conn: &mut Conn<'_, Socket>) -> bool {
    let mut any = false;
    for shard in 0..conn.lanes.len() {
        while awaits(&conn.lanes[shard]) && read(conn, shard, false) {
            any = true;
        }
    }
    any
}
