//! One client connection: read, parse, route, execute, reply — in request order.
//!
//! ```text
//!  socket ──read──▶ rbuf ──RequestParser──▶ args (Bytes slices of rbuf)
//!     keyed, owner == this shard ─────────▶ run now, reply into `out` (or `staged` while
//!                                            remote replies are outstanding)
//!     keyed, owner == other shard ────────▶ appended to that shard's batch; a placeholder
//!                                            keeps its position in the reply order
//!     coordinated (multi-key, server) ────▶ flush the batches first, then run it
//!  end of the bytes read (or a full batch) ▶ send batches, await them, splice replies in order
//!  ──write──▶ socket
//! ```
//!
//! Only whole reads are processed before the next read, so memory per connection is bounded by
//! one read's requests and their replies (backpressure: a client that does not read its replies
//! stops being read). A connection whose keys are all local never allocates on this path.

use std::cell::RefCell;
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use corekv_net::resp::{ParseError, Protocol, ReplyEncoder, RequestParser};
use futures::AsyncWriteExt;
use glommio::net::TcpStream;

use crate::client::ClientInfo;
use crate::commands::{self, CommandSpec, Handler};
use crate::coord;
use crate::read_size::AdaptiveRead;
use crate::shard::Shard;

/// Keyed commands queued for other shards before the connection stops to collect their replies.
const MAX_REMOTE_QUEUE: usize = 1024;

/// Whether the connection goes on after a command.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Flow {
    Continue,
    /// Send what is pending, then close (QUIT, protocol error, CLIENT KILL).
    Close,
}

/// Where the reply to one command of the current batch is.
enum Slot {
    /// `staged[start..end]`
    Staged(usize, usize),
    /// The `index`-th reply of the batch sent to `shard`.
    Remote { shard: usize, index: usize },
}

pub struct Connection {
    pub shard: Rc<Shard>,
    pub info: Rc<RefCell<ClientInfo>>,
    pub db: usize,
    pub protocol: Protocol,
    parser: RequestParser,
    rbuf: BytesMut,
    pub out: BytesMut,
    staged: BytesMut,
    pub args: Vec<Bytes>,
    slots: Vec<Slot>,
    batches: Vec<Vec<(&'static CommandSpec, Vec<Bytes>)>>,
    remote_pending: bool,
    reader: AdaptiveRead,
    /// Set when writes of the current batch could not be made durable: the batch's replies are
    /// dropped and the connection closed, so nothing undurable is ever acknowledged.
    pub log_failed: bool,
}

impl Connection {
    pub fn new(shard: Rc<Shard>, info: Rc<RefCell<ClientInfo>>) -> Self {
        let shards = shard.shards;
        let busy_poll = shard.node.config.busy_poll;
        Connection {
            shard,
            info,
            db: 0,
            protocol: Protocol::Resp2,
            parser: RequestParser::new(Default::default()),
            rbuf: BytesMut::with_capacity(AdaptiveRead::INITIAL),
            out: BytesMut::with_capacity(AdaptiveRead::INITIAL),
            staged: BytesMut::new(),
            args: Vec::with_capacity(8),
            slots: Vec::new(),
            batches: (0..shards).map(|_| Vec::new()).collect(),
            remote_pending: false,
            reader: AdaptiveRead::new(busy_poll),
            log_failed: false,
        }
    }

    pub fn encoder(&mut self) -> ReplyEncoder<'_> {
        ReplyEncoder::new(&mut self.out, self.protocol)
    }

    /// Serves the connection until the client leaves, an error occurs, or the node stops.
    pub async fn run(&mut self, stream: &mut TcpStream) {
        loop {
            let connections = self.shard.clients.borrow().len();
            match self.reader.read(stream, &mut self.rbuf, connections).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            self.info.borrow_mut().last_interaction = std::time::Instant::now();
            let since = self.shard.log_position();
            let flow = self.process_input().await;
            if let Err(reason) = self.shard.log_barrier(since).await {
                self.log_failed = true;
                tracing::warn!("closing a client whose writes could not be made durable: {reason}");
            }
            if self.log_failed {
                return;
            }
            if !self.out.is_empty() {
                if stream.write_all(&self.out).await.is_err() {
                    return;
                }
                self.out.clear();
            }
            if flow == Flow::Close || self.info.borrow().killed {
                return;
            }
        }
    }

    /// Runs every complete request in the read buffer.
    async fn process_input(&mut self) -> Flow {
        let mut flow = Flow::Continue;
        loop {
            match self.parser.next(&mut self.rbuf, &mut self.args) {
                Ok(true) => {
                    flow = self.execute().await;
                    self.args.clear();
                    if flow == Flow::Close {
                        break;
                    }
                }
                Ok(false) => break,
                Err(ParseError::QueryBufferLimit) => {
                    // Redis closes such a client without a reply (it logs the event instead).
                    tracing::warn!("closing a client whose request exceeds the query buffer limit");
                    flow = Flow::Close;
                    break;
                }
                Err(error) => {
                    // Replies to the requests before the bad one go first, as in Redis.
                    self.flush_remote().await;
                    self.encoder().error(&format!("ERR {error}"));
                    flow = Flow::Close;
                    break;
                }
            }
        }
        self.flush_remote().await;
        flow
    }

    /// Routes and runs the request in `self.args`.
    async fn execute(&mut self) -> Flow {
        let Some(spec) = commands::lookup(&self.args[0]) else {
            let text = commands::unknown_command_error(&self.args);
            self.reply_error(&text).await;
            return Flow::Continue;
        };
        if !spec.arity_ok(self.args.len()) {
            self.shard.commands.borrow_mut().record_rejected(spec.name);
            let text = format!("ERR wrong number of arguments for '{}' command", spec.name);
            self.reply_error(&text).await;
            return Flow::Continue;
        }
        self.info.borrow_mut().last_command = spec.name;
        match spec.handler {
            Handler::Keyed(_) => {
                // A keyed command given no key (OBJECT HELP) answers wherever it is.
                let owner = match self.args.get(spec.first_key as usize) {
                    Some(key) => self.shard.owner_of(key),
                    None => self.shard.id,
                };
                if owner == self.shard.id {
                    self.run_local(spec);
                } else {
                    let batch = &mut self.batches[owner];
                    batch.push((spec, std::mem::take(&mut self.args)));
                    self.slots.push(Slot::Remote {
                        shard: owner,
                        index: batch.len() - 1,
                    });
                    self.remote_pending = true;
                    if self.slots.len() >= MAX_REMOTE_QUEUE {
                        self.flush_remote().await;
                    }
                }
                Flow::Continue
            }
            Handler::Coordinated => {
                self.flush_remote().await;
                coord::run(self, spec).await
            }
        }
    }

    fn run_local(&mut self, spec: &'static CommandSpec) {
        if self.remote_pending {
            let start = self.staged.len();
            let mut encoder = ReplyEncoder::new(&mut self.staged, self.protocol);
            self.shard.run_keyed(spec, self.db, &self.args, &mut encoder);
            self.slots.push(Slot::Staged(start, self.staged.len()));
        } else {
            let mut encoder = ReplyEncoder::new(&mut self.out, self.protocol);
            self.shard.run_keyed(spec, self.db, &self.args, &mut encoder);
        }
    }

    async fn reply_error(&mut self, text: &str) {
        self.flush_remote().await;
        self.encoder().error(text);
    }

    /// Sends the queued batches, waits for their replies and appends every pending reply to
    /// `out` in request order.
    pub async fn flush_remote(&mut self) {
        if !self.remote_pending {
            return;
        }
        let (db, protocol) = (self.db, self.protocol);
        let shard = self.shard.clone();
        let sends = self
            .batches
            .iter_mut()
            .enumerate()
            .filter(|(_, batch)| !batch.is_empty())
            .map(|(target, batch)| {
                let commands = std::mem::take(batch);
                let ticket = shard.submit(target, db, protocol, commands);
                async move { (target, ticket.await) }
            })
            .collect::<Vec<_>>();
        let mut replies: Vec<Vec<Bytes>> = (0..self.shard.shards).map(|_| Vec::new()).collect();
        for (target, batch_replies) in futures::future::join_all(sends).await {
            replies[target] = batch_replies;
        }
        for slot in self.slots.drain(..) {
            match slot {
                Slot::Staged(start, end) => self.out.extend_from_slice(&self.staged[start..end]),
                Slot::Remote { shard, index } => match replies[shard].get(index) {
                    Some(reply) => self.out.extend_from_slice(reply),
                    None => {
                        ReplyEncoder::new(&mut self.out, protocol).error("ERR shard unavailable (node shutting down)")
                    }
                },
            }
        }
        self.staged.clear();
        self.remote_pending = false;
    }
}

/// Serves an accepted RESP connection until it ends.
pub async fn serve(shard: Rc<Shard>, mut stream: TcpStream) {
    let Some(registration) = admit(&shard, &mut stream, b"-ERR max number of clients reached\r\n", "").await else {
        return;
    };
    let mut connection = Connection::new(shard.clone(), registration.info.clone());
    connection.run(&mut stream).await;
    let _ = stream.close().await;
}

/// An admitted connection: counted in the node's totals and registered with its shard (CLIENT
/// LIST, CLIENT KILL, shutdown) until dropped.
pub struct Registration {
    shard: Rc<Shard>,
    slot: usize,
    pub info: Rc<RefCell<ClientInfo>>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.shard.clients.borrow_mut().remove(self.slot);
        self.shard
            .node
            .connected_clients
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Counts and registers a new connection of either protocol; past `maxclients` writes `refusal`
/// to it and returns `None`. `lib_name` pre-fills CLIENT LIST's lib-name.
pub async fn admit(shard: &Rc<Shard>, stream: &mut TcpStream, refusal: &[u8], lib_name: &str) -> Option<Registration> {
    use std::os::fd::AsRawFd;
    use std::sync::atomic::Ordering;
    let node = &shard.node;
    node.total_connections.fetch_add(1, Ordering::Relaxed);
    let connected = node.connected_clients.fetch_add(1, Ordering::AcqRel) + 1;
    if connected > node.max_clients.load(Ordering::Relaxed) {
        node.rejected_connections.fetch_add(1, Ordering::Relaxed);
        let _ = stream.write_all(refusal).await;
        node.connected_clients.fetch_sub(1, Ordering::AcqRel);
        return None;
    }
    // Replies are written whole per batch, so Nagle's delay would only add latency.
    let _ = stream.set_nodelay(true);
    let unspecified = std::net::SocketAddr::from(([0, 0, 0, 0], 0));
    let now = std::time::Instant::now();
    let info = Rc::new(RefCell::new(ClientInfo {
        id: node.next_client_id.fetch_add(1, Ordering::Relaxed),
        addr: stream.peer_addr().unwrap_or(unspecified),
        local_addr: stream.local_addr().unwrap_or(unspecified),
        fd: stream.as_raw_fd(),
        shard: shard.id,
        name: String::new(),
        lib_name: lib_name.to_string(),
        lib_ver: String::new(),
        db: 0,
        protocol: Protocol::Resp2,
        created: now,
        last_interaction: now,
        last_command: "NULL",
        killed: false,
    }));
    let slot = shard.clients.borrow_mut().insert(crate::shard::ClientSlot {
        info: info.clone(),
        fd: stream.as_raw_fd(),
    });
    if node.is_shutting_down() {
        shard.close_all_clients();
    }
    Some(Registration {
        shard: shard.clone(),
        slot,
        info,
    })
}
