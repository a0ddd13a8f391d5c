//! One RDMA session of a shard: its control messages taken in batches, the batch's frames pulled
//! with RDMA Read, run like the TCP path's (`native::answer_frames`), made durable once, and the
//! responses written into the client's buffer with RDMA Write (or left for it to pull).
//!
//! The session is generic over the provider: the soft provider's completion queues wake the task
//! from their link threads, the verbs provider's from its completion-event thread, so in both cases
//! the task parks on its queues when the client is idle.

use std::collections::HashMap;
use std::net::IpAddr;
use std::ops::Range;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::task::Poll;

use bytes::BytesMut;
use corekv_net::native::{FrameDecoder, Limits};
use corekv_rdma::channel::{ChannelError, PAYLOAD_MAX};
use corekv_rdma::handshake::RegionDesc;
use corekv_rdma::pool::{self, PoolBuf, PoolError};
use corekv_rdma::provider::{CompletionQueue, RemoteAddr, WorkCompletion};
use corekv_rdma::rpc::{Endpoint, RpcMsg, SessionProvider, Status};
use corekv_rdma::session::SessionError;
use futures::AsyncRead;
use glommio::net::TcpStream;

use super::{bump, RdmaShardStats, SessionTicket, ShardRdma, MAX_BATCH, MAX_PULLED};
use crate::native::{answer_frames, Answered, Transport};

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub(super) enum PeerError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("handshake: {0}")]
    Session(#[from] SessionError),
    #[error("set-up: {0}")]
    Setup(String),
    #[error("control channel: {0}")]
    Channel(#[from] ChannelError),
    #[error("data path: {0}")]
    Pool(#[from] PoolError),
    #[error("bad control message: {0}")]
    Rpc(#[from] corekv_rdma::rpc::RpcError),
    #[error("writes could not be made durable: {0}")]
    Durability(String),
}

/// One request message of a batch, through its stages.
struct Job {
    tag: u32,
    frames: Option<PoolBuf>,
    response_offset: u64,
    response_capacity: u32,
    /// Set once the answer is decided without executing (refused) or after executing.
    status: Option<Status>,
    /// Its response frames: this range of the session's `out`.
    out: Range<usize>,
    response: Option<PoolBuf>,
    pull_offset: u64,
}

/// One connected session, served by one task of its shard.
pub(super) struct Session<P: SessionProvider> {
    pub rdma: Rc<ShardRdma<P>>,
    pub endpoint: Endpoint<P>,
    pub peer_pool: RegionDesc,
    pub local_ip: IpAddr,
    /// With a provider whose links do not run over the set-up connections (verbs): the control
    /// connection, whose end-of-file is how a vanished idle client is noticed.
    pub liveness: Option<TcpStream>,
    /// Counts the session as a client and tells it when the node stops.
    pub ticket: SessionTicket,
    /// Responses waiting for the client to read them (PULL), by tag.
    pub pulled: HashMap<u32, PoolBuf>,
    pub next_wr: u64,
    /// The frames of the message being run (reused).
    pub input: BytesMut,
    /// The response frames of the batch being served, each job's in its own range (reused).
    pub out: BytesMut,
}

/// What woke an idle session.
enum Wake {
    /// A control message of `len` bytes.
    Message(usize),
    /// The node is stopping.
    Stop,
    /// The control connection closed or sent something: the client is gone.
    PeerGone,
}

impl<P: SessionProvider> Session<P> {
    /// Serves until the client leaves, the session fails or the node stops. A batch under way
    /// when the node starts stopping is finished and answered first: the shard's log is synced
    /// for the last time only once every session is over.
    pub async fn run(&mut self) -> Result<(), PeerError> {
        let mut buf = [0u8; PAYLOAD_MAX];
        let mut batch: Vec<RpcMsg> = Vec::with_capacity(MAX_BATCH);
        let mut jobs: Vec<Job> = Vec::with_capacity(MAX_BATCH);
        loop {
            // Parks on the control completion queue until a message (or the peer's failure) comes.
            let len = match self.next_wake(&mut buf).await? {
                Wake::Message(len) => len,
                Wake::Stop => return Ok(()),
                Wake::PeerGone => return Err(PeerError::Setup("the control connection closed".into())),
            };
            batch.push(RpcMsg::decode(&buf[..len])?);
            while batch.len() < MAX_BATCH {
                match self.endpoint.chan.try_recv(&mut buf)? {
                    Some(len) => batch.push(RpcMsg::decode(&buf[..len])?),
                    None => break,
                }
            }
            let served = self.serve_batch(&batch, &mut jobs).await;
            // Whatever happened, the batch's blocks go back to the pool (a failed session must
            // not leak the shard's memory).
            self.free_blocks(&mut jobs);
            let close = served?;
            batch.clear();
            if close {
                return Ok(());
            }
            glommio::yield_if_needed().await;
        }
    }

    /// Parks until a control message arrives, the node stops or (verbs) the client's control
    /// connection closes.
    async fn next_wake(&mut self, buf: &mut [u8; PAYLOAD_MAX]) -> Result<Wake, PeerError> {
        let chan = &mut self.endpoint.chan;
        let ticket = &self.ticket;
        let liveness = &mut self.liveness;
        let mut probe = [0u8; 1];
        futures::future::poll_fn(|cx| {
            if ticket.stopping(cx) {
                return Poll::Ready(Ok(Wake::Stop));
            }
            if let Some(stream) = liveness.as_mut() {
                // Nothing is ever sent on it after the set-up: any outcome means the client left.
                if std::pin::Pin::new(stream).poll_read(cx, &mut probe).is_ready() {
                    return Poll::Ready(Ok(Wake::PeerGone));
                }
            }
            chan.poll_recv(cx, buf).map_ok(Wake::Message).map_err(PeerError::from)
        })
        .await
    }

    /// Serves one batch of control messages; true when the session must end after it.
    async fn serve_batch(&mut self, batch: &[RpcMsg], jobs: &mut Vec<Job>) -> Result<bool, PeerError> {
        let mut reads = 0;
        self.out.clear();
        for msg in batch.iter() {
            match *msg {
                RpcMsg::Release { tag } => {
                    if let Some(block) = self.pulled.remove(&tag) {
                        self.rdma.pool.borrow_mut().free(block)?;
                    }
                }
                RpcMsg::Response { .. } => {
                    return Err(PeerError::Setup("a client sent a RESPONSE".into()));
                }
                RpcMsg::Request {
                    tag,
                    frames_offset,
                    frames_len,
                    response_offset,
                    response_capacity,
                } => {
                    let mut job = Job {
                        tag,
                        frames: None,
                        response_offset,
                        response_capacity,
                        status: None,
                        out: 0..0,
                        response: None,
                        pull_offset: 0,
                    };
                    let in_peer = |offset: u64, len: u32| {
                        offset
                            .checked_add(u64::from(len))
                            .is_some_and(|end| end <= self.peer_pool.len)
                    };
                    if frames_len == 0
                        || !in_peer(frames_offset, frames_len)
                        || !in_peer(response_offset, response_capacity)
                    {
                        job.status = Some(Status::Refused);
                    } else {
                        let block = self.rdma.pool.borrow_mut().alloc(frames_len as usize);
                        match block {
                            None => {
                                let total = self.rdma.pool.borrow().allocator().total_bytes();
                                let status = if frames_len as usize > total {
                                    Status::Refused
                                } else {
                                    Status::Busy
                                };
                                job.status = Some(status);
                            }
                            Some(block) => {
                                let remote = self.peer_addr(frames_offset);
                                let block = job.frames.insert(block);
                                let pool = self.rdma.pool.borrow();
                                pool::post_read(&self.endpoint.data_qp, &pool, block, remote, self.next_wr)?;
                                self.next_wr += 1;
                                reads += 1;
                            }
                        }
                    }
                    if job.status.is_some() {
                        if let Some(stats) = self.stats() {
                            bump(&stats.refused, 1);
                        }
                    }
                    jobs.push(job);
                }
            }
        }
        wait_data(&self.endpoint.data_cq, reads).await?;

        // Execute every request read, then make their writes durable once.
        let since = self.rdma.shard.log_position();
        let mut close = false;
        let mut answered = Answered::default();
        let ports = &self.rdma.shard.node.rdma.ports;
        let transport = Transport {
            ports,
            local_ip: self.local_ip,
        };
        for job in jobs.iter_mut() {
            let Some(block) = job.frames.take() else {
                continue;
            };
            // The session's buffers are reused from message to message: once a message is
            // answered nothing refers to its input any more, so no allocation after the first few.
            let (input, out) = (&mut self.input, &mut self.out);
            input.clear();
            input.resize(block.len(), 0);
            {
                let mut pool = self.rdma.pool.borrow_mut();
                let read = pool.read(&block, input);
                pool.free(block)?;
                read?;
            }
            let start = out.len();
            let mut decoder = FrameDecoder::new(Limits::default());
            close |= answer_frames(&self.rdma.shard, &mut decoder, input, out, &transport, &mut answered);
            if !input.is_empty() && !close {
                // A message must carry whole frames: a truncated one cannot be answered.
                corekv_net::native::write_error(
                    out,
                    0,
                    false,
                    corekv_net::native::ErrorCode::MALFORMED,
                    "truncated frame in an rdma request",
                );
                close = true;
            }
            job.out = start..out.len();
            job.status = Some(Status::Written);
        }
        if let Some(stats) = self.stats() {
            bump(&stats.requests, answered.requests);
            bump(&stats.wrong_shard, answered.wrong_shard);
        }
        if let Err(reason) = self.rdma.shard.log_barrier(since).await {
            // Nothing of this batch is acknowledged: its writes may not be durable.
            return Err(PeerError::Durability(reason));
        }

        // Deliver: RDMA Write what fits the client's buffer, keep the rest for it to pull.
        let mut writes = 0;
        for job in jobs.iter_mut() {
            if job.status != Some(Status::Written) {
                continue;
            }
            let response = &self.out[job.out.clone()];
            let fits = response.len().max(1) <= job.response_capacity as usize;
            // A client that never releases what it pulled gets no more pulls (bounded memory).
            if !fits && self.pulled.len() >= MAX_PULLED {
                job.status = Some(Status::Lost);
                continue;
            }
            let block = self.rdma.pool.borrow_mut().alloc(response.len().max(1));
            let Some(block) = block else {
                job.status = Some(Status::Lost);
                continue;
            };
            let block = job.response.insert(block);
            let pool = self.rdma.pool.borrow();
            pool.write(block, response)?;
            if fits {
                let remote = self.peer_addr(job.response_offset);
                pool::post_write(&self.endpoint.data_qp, &pool, block, remote, self.next_wr)?;
                self.next_wr += 1;
                writes += 1;
            } else {
                drop(pool);
                job.status = Some(Status::Pull);
                if let Some(block) = job.response.take() {
                    job.pull_offset = block.offset() as u64;
                    if let Some(stale) = self.pulled.insert(job.tag, block) {
                        // A tag reused before its RELEASE: the older response is gone.
                        self.rdma.pool.borrow_mut().free(stale)?;
                    }
                }
                if let Some(stats) = self.stats() {
                    bump(&stats.pulls, 1);
                }
            }
        }
        wait_data(&self.endpoint.data_cq, writes).await?;
        for job in jobs.iter_mut() {
            if let Some(block) = job.response.take() {
                self.rdma.pool.borrow_mut().free(block)?;
            }
            let msg = RpcMsg::Response {
                tag: job.tag,
                status: job.status.unwrap_or(Status::Lost),
                len: job.out.len() as u32,
                pull_offset: job.pull_offset,
            }
            .encode();
            let chan = &mut self.endpoint.chan;
            futures::future::poll_fn(|cx| chan.poll_send(cx, &msg))
                .await
                .map_err(|e| match e {
                    corekv_rdma::channel::TrySendError::Broken(e) => PeerError::Channel(e),
                    other => PeerError::Setup(other.to_string()),
                })?;
        }
        Ok(close)
    }

    /// Returns the blocks a batch still holds to the pool, and empties it.
    fn free_blocks(&mut self, jobs: &mut Vec<Job>) {
        let mut pool = self.rdma.pool.borrow_mut();
        for job in jobs.drain(..) {
            for block in [job.frames, job.response].into_iter().flatten() {
                // Only blocks this pool handed out are here: freeing cannot fail but for a bug.
                if let Err(e) = pool.free(block) {
                    tracing::error!("rdma pool: {e}");
                }
            }
        }
        if let Some(stats) = self.stats() {
            stats
                .pool_used_bytes
                .store(pool.allocator().used_bytes() as u64, Ordering::Relaxed);
        }
    }

    fn peer_addr(&self, offset: u64) -> RemoteAddr {
        RemoteAddr {
            addr: self.peer_pool.addr + offset,
            rkey: self.peer_pool.rkey,
        }
    }

    fn stats(&self) -> Option<&RdmaShardStats> {
        self.rdma.shard.node.rdma.stats(self.rdma.shard.id)
    }

    /// Returns every pulled block to the pool (the session is over).
    pub fn release_all(&mut self) {
        let mut pool = self.rdma.pool.borrow_mut();
        for (_, block) in self.pulled.drain() {
            if let Err(e) = pool.free(block) {
                tracing::error!("rdma pool: {e}");
            }
        }
        if let Some(stats) = self.stats() {
            stats
                .pool_used_bytes
                .store(pool.allocator().used_bytes() as u64, Ordering::Relaxed);
        }
    }
}

/// Parks until `count` data transfers have completed (they complete in order, all signaled).
async fn wait_data<C: CompletionQueue>(cq: &C, count: usize) -> Result<(), PeerError> {
    let mut done = 0;
    let mut wcs = [WorkCompletion::EMPTY; 16];
    futures::future::poll_fn(|cx| loop {
        if done == count {
            return Poll::Ready(Ok(()));
        }
        let n = match cq.poll(&mut wcs) {
            Ok(n) => n,
            Err(e) => return Poll::Ready(Err(PeerError::Pool(e.into()))),
        };
        if n == 0 {
            // A completion that arrived since the poll makes `arm` wake at once.
            cq.arm(cx.waker());
            return Poll::Pending;
        }
        for wc in &wcs[..n] {
            if !wc.status.is_success() {
                return Poll::Ready(Err(PeerError::Pool(PoolError::Failed {
                    wr_id: wc.wr_id,
                    status: wc.status,
                })));
            }
        }
        done += n;
    })
    .await
}
