//! One shard: the state its executor owns, and the messages other shards send it.
//!
//! A [`Shard`] lives in one executor thread (`Rc`, never shared). It owns its [`Keyspace`], the
//! registry of the connections it accepted, and its statistics. Other shards reach it only by
//! [`ShardMsg`]s over the bounded channel mesh built at start-up: a `Batch` of keyed commands
//! (run in order, replies encoded here in the caller's protocol) or a `Call` that multi-key and
//! keyspace-wide commands use. Every reply travels back on a oneshot channel.

use std::cell::RefCell;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use corekv_engine::{glob::glob_match, EngineError, EvictionPolicy, Expiry, Keyspace, KeyspaceStats, MemoryStats};
use corekv_net::resp::{Protocol, ReplyEncoder};
use futures::channel::oneshot;
use glommio::channels::channel_mesh::Senders;

use crate::client::ClientInfo;
use crate::commands::{CommandSpec, ExecCtx, Handler};
use crate::config::Durability;
use crate::native::NativeStats;
use crate::node::NodeShared;
use crate::persist::compaction::{self, CompactionError};
use crate::persist::writer::{LogState, BACKLOG_LIMIT};
use crate::persist::{CompactionState, RecoverySummary, ShardPersistence};
use crate::stats::CommandStats;

/// One connection's keyed commands for their owner shard, run there in order; the replies are
/// encoded in `protocol` and come back under `ticket`.
pub struct RemoteGroup {
    pub ticket: usize,
    pub db: usize,
    pub protocol: Protocol,
    pub commands: Vec<(&'static CommandSpec, Vec<Bytes>)>,
}

/// The replies to the groups of one [`ShardMsg::Batch`], sent back on the reply mesh.
pub struct ReplyBatch {
    pub groups: Vec<(usize, Vec<Bytes>)>,
}

/// A group's replies, as its connection waits for them.
enum PendingReply {
    Waiting(Option<std::task::Waker>),
    Ready(Vec<Bytes>),
}

/// Resolves to the replies of one submitted [`RemoteGroup`].
pub struct ReplyTicket<'a> {
    shard: &'a Shard,
    ticket: usize,
    /// Set once the replies were taken: the slot may already belong to another ticket then.
    taken: bool,
}

impl std::future::Future for ReplyTicket<'_> {
    type Output = Vec<Bytes>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Vec<Bytes>> {
        let this = &mut *self;
        let mut pending = this.shard.pending.borrow_mut();
        let Some(state) = pending.get_mut(this.ticket) else {
            return std::task::Poll::Ready(Vec::new());
        };
        match state {
            PendingReply::Ready(_) => {
                let PendingReply::Ready(replies) = pending.remove(this.ticket) else {
                    unreachable!("state checked above");
                };
                this.taken = true;
                std::task::Poll::Ready(replies)
            }
            PendingReply::Waiting(waker) => {
                *waker = Some(cx.waker().clone());
                std::task::Poll::Pending
            }
        }
    }
}

impl Drop for ReplyTicket<'_> {
    fn drop(&mut self) {
        // A ticket dropped before its replies arrived must not leave its slot behind.
        let mut pending = self.shard.pending.borrow_mut();
        if !self.taken && pending.contains(self.ticket) {
            pending.remove(self.ticket);
        }
    }
}

/// Work that multi-key and keyspace-wide commands ask of a shard.
pub enum ShardCall {
    MGet {
        db: usize,
        keys: Vec<Bytes>,
    },
    MSet {
        db: usize,
        pairs: Vec<(Bytes, Bytes)>,
    },
    Remove {
        db: usize,
        keys: Vec<Bytes>,
    },
    Exists {
        db: usize,
        keys: Vec<Bytes>,
    },
    Touch {
        db: usize,
        keys: Vec<Bytes>,
    },
    /// A key's value and absolute expiry, for RENAME/COPY.
    Read {
        db: usize,
        key: Bytes,
    },
    /// Writes a value with an absolute expiry; with `if_absent`, only when the key does not exist.
    Write {
        db: usize,
        key: Bytes,
        value: Bytes,
        expire_at_ms: Option<u64>,
        if_absent: bool,
    },
    DbSize {
        db: usize,
    },
    FlushDb {
        db: usize,
    },
    FlushAll,
    SwapDb {
        a: usize,
        b: usize,
    },
    Scan {
        db: usize,
        cursor: u64,
        count: usize,
        pattern: Option<Bytes>,
        type_filter: Option<Bytes>,
    },
    Keys {
        db: usize,
        pattern: Bytes,
    },
    RandomKey {
        db: usize,
        seed: u64,
    },
    Report,
    ResetStats,
    SetLimits {
        maxmemory_bytes: u64,
        policy: EvictionPolicy,
        samples: usize,
    },
    ClientList {
        id_filter: Option<Vec<u64>>,
    },
    ClientKill {
        filter: crate::client::KillFilter,
    },
}

pub enum CallReply {
    Done,
    Count(i64),
    Values(Vec<Option<Bytes>>),
    Entry(Option<(Bytes, Option<u64>)>),
    Written(Result<bool, EngineError>),
    Stored(Result<(), EngineError>),
    Scanned { next_cursor: u64, keys: Vec<Bytes> },
    Keys(Vec<Bytes>),
    Key(Option<Bytes>),
    Report(Box<ShardReport>),
    Lines(Vec<String>),
}

pub enum ShardMsg {
    /// Keyed commands of one or more connections of shard `origin`, gathered in one message.
    Batch {
        origin: usize,
        groups: Vec<RemoteGroup>,
    },
    Call(ShardCall, oneshot::Sender<CallReply>),
    /// Asks the sequencer (on shard 0) for the node-wide multi-key write turn.
    SequencerAcquire(oneshot::Sender<()>),
    /// Gives the turn back.
    SequencerRelease,
    /// Answers once everything this shard journaled so far is durable (`always` mode), or with
    /// the reason it never will be.
    Barrier(oneshot::Sender<Result<(), String>>),
    /// Starts a compaction; with `wait`, answers when it is done.
    Compact {
        wait: bool,
        reply: oneshot::Sender<Result<(), CompactionError>>,
    },
}

/// The node-wide turn for writes that span shards. It lives on shard 0; every cross-shard
/// multi-key write (MSET, MSETNX, DEL, RENAME, COPY, FLUSHDB, FLUSHALL over several shards) runs
/// while holding it, so such writes are serializable among themselves: two concurrent MSETs never
/// leave a mix of both, and of concurrent MSETNXs on the same keys exactly one wins. Single-key
/// commands and reads do not take the turn (they may observe a cross-shard write half-applied).
#[derive(Default)]
struct Sequencer {
    held: std::cell::Cell<bool>,
    waiters: RefCell<std::collections::VecDeque<oneshot::Sender<()>>>,
}

impl Sequencer {
    fn acquire(&self, grant: oneshot::Sender<()>) {
        if self.held.get() {
            self.waiters.borrow_mut().push_back(grant);
        } else {
            self.held.set(true);
            self.grant_or_release(Some(grant));
        }
    }

    fn release(&self) {
        assert!(self.held.get(), "sequencer released while not held");
        let next = self.waiters.borrow_mut().pop_front();
        self.grant_or_release(next);
    }

    /// Hands the turn to `grant`'s requester, or to the next waiter if that requester is gone.
    fn grant_or_release(&self, mut grant: Option<oneshot::Sender<()>>) {
        while let Some(sender) = grant {
            if sender.send(()).is_ok() {
                return;
            }
            grant = self.waiters.borrow_mut().pop_front();
        }
        self.held.set(false);
    }
}

/// What INFO needs from one shard.
#[derive(Clone, Default)]
pub struct ShardReport {
    pub memory: MemoryStats,
    pub keyspace: KeyspaceStats,
    /// Per database: (keys, keys with a TTL).
    pub databases: Vec<(usize, usize)>,
    pub commands: CommandStats,
    pub expire_cycle_timeouts: u64,
    pub forwarded_messages: u64,
    pub forwarded_commands: u64,
    pub native: NativeStats,
    pub persistence: Option<PersistReport>,
}

/// What INFO persistence needs from one shard's log.
#[derive(Clone, Debug)]
pub struct PersistReport {
    pub state: LogState,
    pub last_error: String,
    pub bytes_written: u64,
    pub fsyncs: u64,
    pub records_synced: u64,
    pub last_fsync_ms_ago: Option<u64>,
    pub segments: usize,
    pub log_bytes_since_snapshot: u64,
    /// Journaled bytes the writer has not taken yet.
    pub backlog_bytes: u64,
    pub compaction: CompactionState,
    pub recovery: RecoverySummary,
}

/// One registered connection.
pub struct ClientSlot {
    pub info: Rc<RefCell<ClientInfo>>,
    pub fd: RawFd,
}

pub struct Shard {
    pub id: usize,
    pub shards: usize,
    pub node: Arc<NodeShared>,
    pub keyspace: RefCell<Keyspace>,
    scratch: RefCell<Vec<u8>>,
    senders: Senders<ShardMsg>,
    reply_senders: Senders<ReplyBatch>,
    /// Keyed commands waiting to go to each shard; sent by one flush task per executor turn, so
    /// many connections' commands share one message and one wake-up of the owner.
    outbox: RefCell<Vec<Vec<RemoteGroup>>>,
    flush_scheduled: std::cell::Cell<bool>,
    pending: RefCell<slab::Slab<PendingReply>>,
    pub clients: RefCell<slab::Slab<ClientSlot>>,
    pub commands: RefCell<CommandStats>,
    pub expire_cycle_timeouts: std::cell::Cell<u64>,
    /// Messages carrying keyed commands sent to other shards, and the commands they carried:
    /// their ratio shows how well the outbox batches.
    pub forwarded_messages: std::cell::Cell<u64>,
    pub forwarded_commands: std::cell::Cell<u64>,
    /// Native-protocol traffic served by this shard.
    pub native: std::cell::Cell<NativeStats>,
    sequencer: Sequencer,
    /// The log and snapshots; `None` with durability `none`.
    pub persist: Option<ShardPersistence>,
    /// The low-priority task queue (expiry, compaction).
    pub background: std::cell::Cell<Option<glommio::TaskQueueHandle>>,
}

impl Shard {
    pub fn new(
        id: usize,
        node: Arc<NodeShared>,
        keyspace: Keyspace,
        senders: Senders<ShardMsg>,
        reply_senders: Senders<ReplyBatch>,
        persist: Option<ShardPersistence>,
    ) -> Self {
        let shards = node.config.shards;
        Shard {
            id,
            shards,
            node,
            keyspace: RefCell::new(keyspace),
            scratch: RefCell::new(Vec::new()),
            senders,
            reply_senders,
            outbox: RefCell::new((0..shards).map(|_| Vec::new()).collect()),
            flush_scheduled: std::cell::Cell::new(false),
            pending: RefCell::new(slab::Slab::new()),
            clients: RefCell::new(slab::Slab::new()),
            commands: RefCell::new(CommandStats::default()),
            expire_cycle_timeouts: std::cell::Cell::new(0),
            forwarded_messages: std::cell::Cell::new(0),
            forwarded_commands: std::cell::Cell::new(0),
            native: std::cell::Cell::new(NativeStats::default()),
            sequencer: Sequencer::default(),
            persist,
            background: std::cell::Cell::new(None),
        }
    }

    /// The sequence the next journaled record gets (0 without a log): compare before and after a
    /// batch of commands to know whether it wrote anything.
    pub fn log_position(&self) -> u64 {
        if self.persist.is_none() {
            return 0;
        }
        self.keyspace.borrow_mut().journal_mut().map_or(0, |j| j.next_seq())
    }

    /// After commands that may have written (journal position `since` before them): in `always`
    /// mode waits until their records are durable; otherwise wakes the writer, and waits for it
    /// only when the backlog is too long.
    pub async fn log_barrier(&self, since: u64) -> Result<(), String> {
        let Some(persist) = &self.persist else {
            return Ok(());
        };
        let (next, pending) = match self.keyspace.borrow_mut().journal_mut() {
            Some(j) => (j.next_seq(), j.pending_len()),
            None => return Ok(()),
        };
        if next == since {
            return Ok(());
        }
        let last = next - 1;
        match persist.log.durability {
            Durability::Always => persist.log.wait_durable(last).await.map_err(|e| e.to_string()),
            _ => {
                persist.log.kick();
                if pending > BACKLOG_LIMIT {
                    persist.log.wait_written(last).await;
                }
                Ok(())
            }
        }
    }

    /// Waits until everything this shard journaled so far is durable (`always` mode only).
    pub async fn durable_barrier(&self) -> Result<(), String> {
        match &self.persist {
            Some(p) if p.log.durability == Durability::Always => self.log_barrier(0).await,
            _ => Ok(()),
        }
    }

    /// [`Shard::durable_barrier`] on every shard: after a coordinated write in `always` mode.
    pub async fn durable_barrier_all(&self) -> Result<(), String> {
        if self.node.config.persistence.durability != Durability::Always {
            return Ok(());
        }
        let waits = (0..self.shards).map(|target| async move {
            if target == self.id {
                return self.durable_barrier().await;
            }
            let (reply, receiver) = oneshot::channel();
            if self.senders.send_to(target, ShardMsg::Barrier(reply)).await.is_err() {
                return Err("shard unavailable (node shutting down)".to_string());
            }
            receiver
                .await
                .unwrap_or_else(|_| Err("shard unavailable (node shutting down)".into()))
        });
        futures::future::join_all(waits).await.into_iter().collect()
    }

    /// The error a write command gets while this shard's log cannot take records.
    pub fn write_refusal(&self, spec: &CommandSpec) -> Option<String> {
        if !spec.is_write() {
            return None;
        }
        self.log_refusal()
    }

    /// Why this shard's log cannot take records now, if it cannot: writes are refused meanwhile.
    pub fn log_refusal(&self) -> Option<String> {
        let persist = self.persist.as_ref()?;
        if persist.log.state() == LogState::Ok {
            return None;
        }
        Some(misconf(
            self.id,
            persist.log.state(),
            &persist.log.stats.borrow().last_error,
        ))
    }

    /// Starts a compaction of this shard; with `wait`, resolves when it is done.
    pub async fn compact_local(self: &Rc<Self>, wait: bool) -> Result<(), CompactionError> {
        compaction::try_begin(self)?;
        if wait {
            return compaction::run_begun(self).await;
        }
        let shard = self.clone();
        let task = async move {
            let _ = compaction::run_begun(&shard).await;
        };
        match self.background.get() {
            Some(queue) => match glommio::spawn_local_into(task, queue) {
                Ok(t) => t.detach(),
                Err(e) => return Err(CompactionError::Failed(e.to_string())),
            },
            None => glommio::spawn_local(task).detach(),
        };
        Ok(())
    }

    /// Starts a compaction on every shard; with `wait`, resolves when all are done.
    pub async fn compact_all(self: &Rc<Self>, wait: bool) -> Vec<Result<(), CompactionError>> {
        let runs = (0..self.shards).map(|target| async move {
            if target == self.id {
                return self.compact_local(wait).await;
            }
            let (reply, receiver) = oneshot::channel();
            let unavailable = || CompactionError::Failed("shard unavailable (node shutting down)".into());
            if self
                .senders
                .send_to(target, ShardMsg::Compact { wait, reply })
                .await
                .is_err()
            {
                return Err(unavailable());
            }
            receiver.await.unwrap_or_else(|_| Err(unavailable()))
        });
        futures::future::join_all(runs).await
    }

    fn persist_report(&self, backlog_bytes: u64) -> Option<PersistReport> {
        let p = self.persist.as_ref()?;
        let stats = p.log.stats.borrow();
        Some(PersistReport {
            state: p.log.state(),
            last_error: stats.last_error.clone(),
            bytes_written: stats.bytes_written,
            fsyncs: stats.fsyncs,
            records_synced: stats.records_synced,
            last_fsync_ms_ago: stats.last_fsync.map(|t| t.elapsed().as_millis() as u64),
            segments: p.log.segment_count(),
            log_bytes_since_snapshot: p.log_bytes_since_snapshot(),
            backlog_bytes,
            compaction: p.compaction.borrow().clone(),
            recovery: p.recovery.clone(),
        })
    }

    /// The shard that owns `key` (the stable routing hash).
    pub fn owner_of(&self, key: &[u8]) -> usize {
        corekv_net::routing::key_shard(key, self.shards as u32) as usize
    }

    /// Runs a keyed command on this shard, encoding its reply into `out`.
    pub fn run_keyed(&self, spec: &'static CommandSpec, db: usize, args: &[Bytes], out: &mut ReplyEncoder<'_>) {
        let Handler::Keyed(run) = spec.handler else {
            unreachable!("run_keyed called for coordinated command {}", spec.name);
        };
        if let Some(error) = self.write_refusal(spec) {
            out.error(&error);
            return;
        }
        let started = Instant::now();
        let mut keyspace = self.keyspace.borrow_mut();
        let mut scratch = self.scratch.borrow_mut();
        let mut ctx = ExecCtx {
            keyspace: &mut keyspace,
            db,
            now_ms: now_ms(),
            scratch: &mut scratch,
        };
        run(&mut ctx, args, out);
        self.commands.borrow_mut().record(spec, started.elapsed());
    }

    /// Queues keyed commands for `target` (another shard) and returns a future of their replies.
    /// The commands leave with those of every other connection of this shard in the same turn.
    pub fn submit(
        self: &Rc<Self>,
        target: usize,
        db: usize,
        protocol: Protocol,
        commands: Vec<(&'static CommandSpec, Vec<Bytes>)>,
    ) -> ReplyTicket<'_> {
        debug_assert_ne!(target, self.id);
        let ticket = self.pending.borrow_mut().insert(PendingReply::Waiting(None));
        self.outbox.borrow_mut()[target].push(RemoteGroup {
            ticket,
            db,
            protocol,
            commands,
        });
        if !self.flush_scheduled.replace(true) {
            // Spawned behind the tasks already runnable, so their commands join this flush.
            let shard = self.clone();
            glommio::spawn_local(async move { shard.flush_outbox().await }).detach();
        }
        ReplyTicket {
            shard: self,
            ticket,
            taken: false,
        }
    }

    async fn flush_outbox(&self) {
        self.flush_scheduled.set(false);
        let batches: Vec<(usize, Vec<RemoteGroup>)> = self
            .outbox
            .borrow_mut()
            .iter_mut()
            .enumerate()
            .filter(|(_, groups)| !groups.is_empty())
            .map(|(target, groups)| (target, std::mem::take(groups)))
            .collect();
        for (target, groups) in batches {
            self.forwarded_messages.set(self.forwarded_messages.get() + 1);
            let commands: usize = groups.iter().map(|g| g.commands.len()).sum();
            self.forwarded_commands
                .set(self.forwarded_commands.get() + commands as u64);
            let msg = ShardMsg::Batch {
                origin: self.id,
                groups,
            };
            if let Err(e) = self.senders.send_to(target, msg).await {
                // Only when the node is stopping: fail the waiting commands instead of hanging.
                tracing::warn!("shard {}: cannot reach shard {target}: {e}", self.id);
                if let glommio::GlommioError::Closed(glommio::ResourceType::Channel(ShardMsg::Batch {
                    groups, ..
                })) = e
                {
                    self.complete(ReplyBatch {
                        groups: groups.into_iter().map(|g| (g.ticket, Vec::new())).collect(),
                    });
                }
            }
        }
    }

    /// Hands replies that came back from another shard to the connections waiting for them.
    pub fn complete(&self, batch: ReplyBatch) {
        let mut pending = self.pending.borrow_mut();
        for (ticket, replies) in batch.groups {
            if let Some(state) = pending.get_mut(ticket) {
                if let PendingReply::Waiting(Some(waker)) = std::mem::replace(state, PendingReply::Ready(replies)) {
                    waker.wake();
                }
            }
        }
    }

    /// Runs `call` on shard `target` (here when it is this shard).
    pub async fn call(&self, target: usize, call: ShardCall) -> CallReply {
        if target == self.id {
            return self.handle_call(call);
        }
        let (reply, receiver) = oneshot::channel();
        if self.senders.send_to(target, ShardMsg::Call(call, reply)).await.is_err() {
            return CallReply::Done;
        }
        receiver.await.unwrap_or(CallReply::Done)
    }

    /// Runs `make(shard)` on every shard concurrently and returns the replies in shard order.
    pub async fn call_all(&self, make: impl Fn(usize) -> ShardCall) -> Vec<CallReply> {
        futures::future::join_all((0..self.shards).map(|s| self.call(s, make(s)))).await
    }

    /// Waits for the node-wide turn for a cross-shard write (see [`Sequencer`]). Every call must
    /// be followed by [`Shard::sequenced_end`].
    pub async fn sequenced_begin(&self) {
        let (grant, granted) = oneshot::channel();
        if self.id == 0 {
            self.sequencer.acquire(grant);
        } else if self
            .senders
            .send_to(0, ShardMsg::SequencerAcquire(grant))
            .await
            .is_err()
        {
            return;
        }
        let _ = granted.await;
    }

    pub async fn sequenced_end(&self) {
        if self.id == 0 {
            self.sequencer.release();
        } else {
            let _ = self.senders.send_to(0, ShardMsg::SequencerRelease).await;
        }
    }

    /// Serves one message from another shard.
    pub async fn handle_msg(self: &Rc<Self>, msg: ShardMsg) {
        match msg {
            ShardMsg::SequencerAcquire(grant) => self.sequencer.acquire(grant),
            ShardMsg::SequencerRelease => self.sequencer.release(),
            ShardMsg::Barrier(reply) => {
                let shard = self.clone();
                glommio::spawn_local(async move {
                    let _ = reply.send(shard.durable_barrier().await);
                })
                .detach();
            }
            ShardMsg::Compact { wait, reply } => {
                let shard = self.clone();
                glommio::spawn_local(async move {
                    let _ = reply.send(shard.compact_local(wait).await);
                })
                .detach();
            }
            ShardMsg::Batch { origin, groups } => {
                let since = self.log_position();
                let commands: usize = groups.iter().map(|g| g.commands.len()).sum();
                let mut out = BytesMut::with_capacity(64 * commands);
                let mut replies = Vec::with_capacity(groups.len());
                for group in groups {
                    let mut encoded = Vec::with_capacity(group.commands.len());
                    for (spec, args) in &group.commands {
                        let mut encoder = ReplyEncoder::new(&mut out, group.protocol);
                        self.run_keyed(spec, group.db, args, &mut encoder);
                        encoded.push(out.split().freeze());
                    }
                    replies.push((group.ticket, encoded));
                }
                let batch = ReplyBatch { groups: replies };
                if self.log_position() == since {
                    // Replies travel on their own mesh, whose receivers never wait on anything, so
                    // two shards sending each other requests and replies cannot block each other.
                    let _ = self.reply_senders.send_to(origin, batch).await;
                } else {
                    // Writes: the replies leave once the log allows (durable in `always` mode),
                    // without holding up the next message from `origin`.
                    let shard = self.clone();
                    glommio::spawn_local(async move {
                        let mut batch = batch;
                        if let Err(reason) = shard.log_barrier(since).await {
                            shard.replace_with_errors(&mut batch, &reason);
                        }
                        let _ = shard.reply_senders.send_to(origin, batch).await;
                    })
                    .detach();
                }
            }
            ShardMsg::Call(call, reply) => {
                let since = self.log_position();
                let _ = reply.send(self.handle_call(call));
                if self.log_position() != since {
                    if let Some(p) = &self.persist {
                        p.log.kick();
                    }
                }
            }
        }
    }

    /// Replaces every reply of a batch whose writes could not be made durable: none of them may be
    /// acknowledged.
    fn replace_with_errors(&self, batch: &mut ReplyBatch, reason: &str) {
        let text = misconf(self.id, LogState::Failed, reason);
        for (_, replies) in &mut batch.groups {
            for reply in replies.iter_mut() {
                let mut out = BytesMut::new();
                ReplyEncoder::new(&mut out, Protocol::Resp2).error(&text);
                *reply = out.freeze();
            }
        }
    }

    pub fn handle_call(&self, call: ShardCall) -> CallReply {
        let now = now_ms();
        let mut ks = self.keyspace.borrow_mut();
        match call {
            ShardCall::MGet { db, keys } => CallReply::Values(
                keys.iter()
                    .map(|k| ks.get(db, k, now).map(Bytes::copy_from_slice))
                    .collect(),
            ),
            ShardCall::MSet { db, pairs } => {
                // All of this shard's pairs or none (a refusal puts back what was written).
                let pairs = pairs.iter().map(|(key, value)| (&key[..], &value[..]));
                CallReply::Stored(ks.set_all(db, pairs, now))
            }
            ShardCall::Remove { db, keys } => {
                CallReply::Count(keys.iter().filter(|k| ks.remove(db, k, now)).count() as i64)
            }
            ShardCall::Exists { db, keys } => {
                CallReply::Count(keys.iter().filter(|k| ks.contains(db, k, now)).count() as i64)
            }
            ShardCall::Touch { db, keys } => {
                CallReply::Count(keys.iter().filter(|k| ks.touch(db, k, now)).count() as i64)
            }
            ShardCall::Read { db, key } => {
                let expire = ks.info(db, &key, now).map(|i| i.expire_at_ms);
                CallReply::Entry(match expire {
                    Some(expire_at) => ks.peek(db, &key, now).map(|v| (Bytes::copy_from_slice(v), expire_at)),
                    None => None,
                })
            }
            ShardCall::Write {
                db,
                key,
                value,
                expire_at_ms,
                if_absent,
            } => {
                if if_absent && ks.contains(db, &key, now) {
                    return CallReply::Written(Ok(false));
                }
                let expiry = expire_at_ms.map_or(Expiry::Persist, Expiry::At);
                CallReply::Written(ks.set(db, &key, &value, expiry, now).map(|()| true))
            }
            ShardCall::DbSize { db } => CallReply::Count(ks.len(db) as i64),
            ShardCall::FlushDb { db } => {
                ks.flush_db(db);
                CallReply::Done
            }
            ShardCall::FlushAll => {
                ks.flush_all();
                CallReply::Done
            }
            ShardCall::SwapDb { a, b } => {
                ks.swap_db(a, b);
                CallReply::Done
            }
            ShardCall::Scan {
                db,
                cursor,
                count,
                pattern,
                type_filter,
            } => {
                let mut keys = Vec::new();
                let string_type = type_filter.as_deref().is_none_or(|t| t.eq_ignore_ascii_case(b"string"));
                let next_cursor = ks.scan(db, cursor, count, now, &mut |key| {
                    if string_type && pattern.as_deref().is_none_or(|p| glob_match(p, key, false)) {
                        keys.push(Bytes::copy_from_slice(key));
                    }
                });
                CallReply::Scanned { next_cursor, keys }
            }
            ShardCall::Keys { db, pattern } => {
                let mut keys = Vec::new();
                let all = pattern.as_ref() == b"*";
                ks.for_each_key(db, now, &mut |key| {
                    if all || glob_match(&pattern, key, false) {
                        keys.push(Bytes::copy_from_slice(key));
                    }
                });
                CallReply::Keys(keys)
            }
            ShardCall::RandomKey { db, seed } => {
                CallReply::Key(ks.random_key(db, now, seed).map(Bytes::copy_from_slice))
            }
            ShardCall::Report => {
                let databases = (0..ks.databases())
                    .map(|db| (ks.len(db), ks.volatile_len(db)))
                    .collect();
                CallReply::Report(Box::new(ShardReport {
                    memory: ks.memory_stats(),
                    keyspace: ks.stats(),
                    databases,
                    commands: self.commands.borrow().clone(),
                    expire_cycle_timeouts: self.expire_cycle_timeouts.get(),
                    forwarded_messages: self.forwarded_messages.get(),
                    forwarded_commands: self.forwarded_commands.get(),
                    native: self.native.get(),
                    persistence: self.persist_report(ks.journal_mut().map_or(0, |j| j.pending_len() as u64)),
                }))
            }
            ShardCall::ResetStats => {
                ks.reset_stats();
                *self.commands.borrow_mut() = CommandStats::default();
                self.forwarded_messages.set(0);
                self.forwarded_commands.set(0);
                self.native.set(NativeStats {
                    connections: self.native.get().connections,
                    ..NativeStats::default()
                });
                CallReply::Done
            }
            ShardCall::SetLimits {
                maxmemory_bytes,
                policy,
                samples,
            } => {
                ks.set_limits(maxmemory_bytes, policy);
                ks.set_eviction_samples(samples);
                CallReply::Done
            }
            ShardCall::ClientList { id_filter } => {
                let now = Instant::now();
                let clients = self.clients.borrow();
                let lines = clients
                    .iter()
                    .map(|(_, c)| c.info.borrow())
                    .filter(|info| id_filter.as_ref().is_none_or(|ids| ids.contains(&info.id)))
                    .map(|info| info.describe(now))
                    .collect();
                CallReply::Lines(lines)
            }
            ShardCall::ClientKill { filter } => {
                let clients = self.clients.borrow();
                let mut killed = 0;
                for (_, c) in clients.iter() {
                    let mut info = c.info.borrow_mut();
                    if filter.matches(&info) {
                        info.killed = true;
                        // Waking the connection's pending read ends it after its current batch.
                        let _ = nix::sys::socket::shutdown(c.fd, nix::sys::socket::Shutdown::Both);
                        killed += 1;
                    }
                }
                CallReply::Count(killed)
            }
        }
    }

    /// Stops every connection of this shard after its current batch (graceful shutdown):
    /// their pending reads return end-of-file.
    pub fn close_all_clients(&self) {
        for (_, c) in self.clients.borrow().iter() {
            let _ = nix::sys::socket::shutdown(c.fd, nix::sys::socket::Shutdown::Read);
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The error text of a write refused (or lost) because a shard's log cannot take it.
pub fn misconf(shard: usize, state: LogState, reason: &str) -> String {
    let until = match state {
        LogState::DiskFull => "until the disk has room again",
        _ => "until the node is restarted on a healthy disk",
    };
    format!("MISCONF corekv cannot write its log (shard {shard}: {reason}); write commands are refused {until}")
}
