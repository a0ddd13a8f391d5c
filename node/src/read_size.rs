//! Reading a socket into a connection's input buffer: a read size that follows the traffic, and
//! optional busy polling.
//!
//! The read size doubles while reads fill it and shrinks back otherwise: the spare room has to be
//! zeroed before each read, and small requests should not pay for zeroing a large chunk.
//!
//! With busy polling (`--busy-poll`), a connection that has just answered tries non-blocking
//! `recv`s for up to that long before it waits on io_uring, yielding to the shard's other tasks
//! between tries. A client doing one request at a time sends its next one about one round trip
//! later; catching it this way saves the executor's park and wake-up (an `io_uring_enter` that
//! sleeps, a poll completion, a timer armed and cancelled), which is most of the difference
//! between a request's latency and a bare TCP round trip. It costs up to that much CPU per
//! response when no request follows.
//!
//! Only while its shard serves few connections ([`BUSY_POLL_MAX_CONNECTIONS`]): a polling
//! connection keeps the shard's task queue runnable, and glommio looks for the other connections'
//! I/O completions only between task-queue runs or when its preempt timer fires (100 ms), so with
//! many connections polling would hold the others' readiness back (measured: p99.9 ×17–20 at 50
//! connections). Many connections keep a shard busy anyway, which is when polling helps least.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures::AsyncReadExt;
use glommio::net::TcpStream;
use nix::errno::Errno;
use nix::sys::socket::{recv, MsgFlags};

/// Busy polling is skipped while the shard has more connections than this.
pub const BUSY_POLL_MAX_CONNECTIONS: usize = 4;

/// Bytes asked of a read, at first and at most.
const READ_CHUNK_MIN: usize = 4 * 1024;
const READ_CHUNK_MAX: usize = 256 * 1024;

pub struct AdaptiveRead {
    chunk: usize,
    busy_poll: Duration,
}

impl AdaptiveRead {
    /// The capacity a fresh input or output buffer starts with.
    pub const INITIAL: usize = READ_CHUNK_MIN;

    /// `busy_poll`: how long to try non-blocking reads before waiting (zero: never).
    pub fn new(busy_poll: Duration) -> Self {
        AdaptiveRead {
            chunk: READ_CHUNK_MIN,
            busy_poll,
        }
    }

    /// Appends what one read returns to `buf`; `Ok(0)` at end of stream. `shard_connections`: how
    /// many connections the shard serves now (busy polling only with few).
    pub async fn read(
        &mut self,
        stream: &mut TcpStream,
        buf: &mut BytesMut,
        shard_connections: usize,
    ) -> std::io::Result<usize> {
        let filled = buf.len();
        buf.resize(filled + self.chunk, 0);
        let poll = shard_connections <= BUSY_POLL_MAX_CONNECTIONS;
        let busy = if poll {
            self.busy_read(stream, &mut buf[filled..]).await
        } else {
            None
        };
        let read = match busy {
            Some(done) => done,
            None => stream.read(&mut buf[filled..]).await,
        };
        let n = *read.as_ref().unwrap_or(&0);
        buf.truncate(filled + n);
        self.chunk = if n == self.chunk {
            (self.chunk * 2).min(READ_CHUNK_MAX)
        } else {
            (self.chunk / 2).max(READ_CHUNK_MIN)
        };
        read
    }

    /// Non-blocking reads for up to `busy_poll`; `None` when nothing came in that time.
    async fn busy_read(&self, stream: &TcpStream, into: &mut [u8]) -> Option<std::io::Result<usize>> {
        if self.busy_poll.is_zero() {
            return None;
        }
        let started = Instant::now();
        loop {
            match recv(stream.as_raw_fd(), into, MsgFlags::MSG_DONTWAIT) {
                Ok(n) => return Some(Ok(n)),
                Err(Errno::EAGAIN) | Err(Errno::EINTR) => {}
                Err(e) => return Some(Err(e.into())),
            }
            if started.elapsed() >= self.busy_poll {
                return None;
            }
            // Let the shard's other connections and tasks run between tries.
            glommio::executor().yield_now().await;
            std::thread::yield_now();
        }
    }
}
