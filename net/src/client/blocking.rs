//! The blocking client: std `TcpStream`s (with `TCP_NODELAY`), one per shard, driven by the
//! calling thread. See the [module docs](super) for connections, timeouts and retries.
//!
//! A call (or a [`Pipeline`](super::Pipeline)) runs in rounds: route what is left to do into frames, write them
//! shard by shard while reading responses whenever a connection has
//! [`MAX_UNANSWERED_BYTES`](super::MAX_UNANSWERED_BYTES) unanswered (so a write never blocks on a
//! server that waits for us to read), read every connection until its requests are answered, then
//! retry what the policy allows after the backoff.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::config::{ClientConfig, Reply};
use super::connection::Connection;
use super::error::ClientError;
use super::plan::{FrameSpec, Op, Plan};
use super::router::Router;
use crate::native::{RequestRef, Response};

/// Bytes read per `read` call.
const READ_CHUNK: usize = 64 * 1024;
/// Encoded requests are written once this much is buffered (and at the end of a round).
const FLUSH_AT: usize = 16 * 1024;

type Event = (usize, Result<Response, ClientError>);

/// One shard's connection: the socket and its protocol state. Tokens are frame indices.
struct ShardConn {
    stream: TcpStream,
    conn: Connection<usize>,
}

impl ShardConn {
    fn open(addr: &str, config: &ClientConfig) -> Result<ShardConn, ClientError> {
        let mut last = None;
        for socket_addr in addr.to_socket_addrs()? {
            match TcpStream::connect_timeout(&socket_addr, config.connect_timeout) {
                Ok(stream) => {
                    stream.set_nodelay(true)?;
                    return Ok(ShardConn {
                        stream,
                        conn: Connection::new(config.crc, config.limits),
                    });
                }
                Err(err) => last = Some(err),
            }
        }
        Err(last
            .unwrap_or_else(|| std::io::Error::new(ErrorKind::NotFound, format!("{addr} resolves to no address")))
            .into())
    }

    /// True unless the server closed (or wrote on) this idle connection since its last use.
    fn idle_and_alive(&mut self) -> bool {
        if self.conn.is_failed() {
            return false;
        }
        if self.conn.outstanding() > 0 {
            return true;
        }
        if self.stream.set_nonblocking(true).is_err() {
            return false;
        }
        let mut byte = [0u8; 1];
        let alive = matches!(self.stream.peek(&mut byte), Err(err) if err.kind() == ErrorKind::WouldBlock);
        alive && self.stream.set_nonblocking(false).is_ok()
    }

    fn fail(&mut self, cause: ClientError, events: &mut Vec<Event>) {
        events.extend(self.conn.fail(cause).into_iter().map(|(token, err)| (token, Err(err))));
    }

    /// Writes everything encoded so far.
    fn flush(&mut self, events: &mut Vec<Event>) {
        if self.conn.is_failed() || self.conn.output_len() == 0 {
            return;
        }
        let out = self.conn.take_output();
        if let Err(err) = self.stream.write_all(&out) {
            self.fail(err.into(), events);
        }
    }

    /// Decodes the responses already received.
    fn drain(&mut self, events: &mut Vec<Event>) {
        self.conn.drain_into(events);
    }

    /// Waits for bytes (until the earliest deadline) and decodes them; fails the connection on
    /// EOF, an I/O error, or a deadline passed with nothing more to read. (Once a deadline has
    /// passed, the socket is still read without waiting: a response that arrived while the
    /// caller was busy with another connection is not mistaken for a timeout.)
    fn read_some(&mut self, events: &mut Vec<Event>) {
        let Some(deadline) = self.conn.next_deadline() else {
            return;
        };
        let now = Instant::now();
        let expired = deadline <= now;
        let setup = if expired {
            self.stream.set_nonblocking(true)
        } else {
            self.stream
                .set_read_timeout(Some((deadline - now).max(Duration::from_millis(1))))
        };
        if let Err(err) = setup {
            return self.fail(err.into(), events);
        }
        let input = self.conn.input();
        let start = input.len();
        input.resize(start + READ_CHUNK, 0);
        let read = self.stream.read(&mut input[start..]);
        let got = *read.as_ref().unwrap_or(&0);
        input.truncate(start + got);
        if expired {
            if let Err(err) = self.stream.set_nonblocking(false) {
                return self.fail(err.into(), events);
            }
        }
        match read {
            Ok(0) => self.fail(
                ClientError::Disconnected {
                    outcome_unknown: false,
                    reason: "connection closed by the server".into(),
                },
                events,
            ),
            Ok(_) => self.drain(events),
            Err(err)
                if matches!(
                    err.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                if expired {
                    self.fail(ClientError::Timeout { outcome_unknown: false }, events);
                }
            }
            Err(err) => self.fail(err.into(), events),
        }
    }

    /// Reads until every request is answered or the connection failed.
    fn finish(&mut self, events: &mut Vec<Event>) {
        while self.conn.outstanding() > 0 && !self.conn.is_failed() {
            self.read_some(events);
        }
    }
}

/// A blocking corekv client. Not `Sync`: one thread drives it at a time (it is `Send`).
pub struct Client {
    seed: String,
    config: ClientConfig,
    router: Option<Router>,
    conns: Vec<Option<ShardConn>>,
    /// Fetch the topology again before the next round (a connection failed, or WRONG_SHARD).
    stale: bool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("seed", &self.seed)
            .field("router", &self.router)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to the seed, fetches the topology (retrying per the policy) and returns a client.
    /// Shard connections are opened lazily, on first use.
    pub fn connect(seed: impl Into<String>, config: ClientConfig) -> Result<Client, ClientError> {
        let mut client = Client {
            seed: seed.into(),
            config,
            router: None,
            conns: Vec::new(),
            stale: true,
        };
        client.fetch_first_topology()?;
        Ok(client)
    }

    fn fetch_router(&self) -> Result<Router, ClientError> {
        let mut seed = ShardConn::open(&self.seed, &self.config)?;
        let deadline = Instant::now() + self.config.request_timeout;
        seed.conn.send(RequestRef::Topology, 0, deadline);
        let mut events = Vec::new();
        seed.flush(&mut events);
        while events.is_empty() && seed.conn.outstanding() > 0 {
            seed.read_some(&mut events);
        }
        match events.pop() {
            Some((_, result)) => Router::from_response(result?),
            None => Err(ClientError::Disconnected {
                outcome_unknown: false,
                reason: "the seed did not answer TOPOLOGY".into(),
            }),
        }
    }

    /// Drops connections the server closed while they were idle; any such loss makes the
    /// topology stale (the node may have restarted with other shards).
    fn drop_dead_connections(&mut self) {
        for slot in &mut self.conns {
            if slot.as_mut().is_some_and(|conn| !conn.idle_and_alive()) {
                *slot = None;
                self.stale = true;
            }
        }
    }

    /// Sends a round's frames and collects their outcomes into the plan.
    fn open_shard(&mut self, addr: &str) -> Result<ShardConn, ClientError> {
        ShardConn::open(addr, &self.config)
    }

    super::blocking_operations!();
}
