//! The software provider: RC queue-pair semantics without RDMA hardware, in safe Rust.
//!
//! Two soft queue pairs talk over a [`SoftLink`]: an in-process channel ([`SoftLink::pair`], for
//! unit tests) or a TCP stream ([`SoftLink::tcp`], between processes; the packet framing is in
//! [`wire`]). Each connected queue pair runs one inbound thread (TCP: one reader and one writer)
//! that serves the peer's requests against this side's memory regions and completes this side's
//! own requests as the responses come back. Memory regions are provider-owned byte buffers behind a
//! mutex, named by a made-up address and a random-looking rkey; the peer's Reads and Writes find
//! them by rkey and are bounds-checked.
//!
//! The failure modes of real hardware are reproduced:
//!
//! - a Send that finds no receive posted is held for `rnr_retry` periods of `rnr_timer` (the RNR
//!   NAK and retry of the hardware); if no receive turns up, the sender's work request completes
//!   with [`WcStatus::RnrRetryExcErr`] and its queue pair goes to ERROR;
//! - a Read or Write with an unknown rkey or outside the region completes with
//!   [`WcStatus::RemAccessErr`]; both queue pairs go to ERROR (the responder's access violation);
//! - a Send longer than the receive buffer: [`WcStatus::LocLenErr`] at the receiver,
//!   [`WcStatus::RemInvReqErr`] at the sender;
//! - a dead link (TCP closed, peer process killed, peer queue pair dropped or failed) moves the
//!   queue pair to ERROR and flushes every outstanding work request with
//!   [`WcStatus::WrFlushErr`]. A queue pair that enters ERROR closes its link, so its peer follows
//!   at once (hardware would let the peer notice by its transport timeout instead);
//! - posting a send outside RTS, or a receive outside INIT/RTR/RTS, is an error.
//!
//! Tests can inject faults per queue pair ([`Faults`]): delay every completion, drop the link
//! after N packets, fail the Nth completion.
//!
//! Differences from hardware, deliberately: the data of a Send or Write is copied at post time
//! (hardware reads it when it transmits), and a work request's completion waits for the peer's
//! response even for a Send (as hardware does for RC).

pub mod wire;

use std::collections::{HashMap, VecDeque};
use std::io::{BufReader, BufWriter, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::task::Waker;
use std::thread;
use std::time::{Duration, Instant};

use crate::provider::{
    check_range, transition_allowed, CompletionQueue, MemoryRegion, ProtectionDomain, QpCaps, QpState, QueuePair,
    RdmaError, RecvWr, SendOp, SendWr, WcOpcode, WcStatus, WorkCompletion,
};
use wire::{NakCode, Packet, MAX_MESSAGE_BYTES};

/// The largest RNR retry count: 7 means "retry forever" in verbs, which hangs a connection whose
/// receiver stopped posting, so the soft provider (like corekv's verbs settings) refuses it.
pub const MAX_RNR_RETRY: u8 = 6;

/// Faults to inject into one queue pair (all off by default).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    /// Delay every completion of this side's requests by this much.
    pub completion_delay: Option<Duration>,
    /// Close the link after this many packets have been sent by this side.
    pub drop_link_after_packets: Option<u64>,
    /// Turn the response to this side's Nth request (1-based) into a failure with this status.
    pub fail_completion: Option<(u64, WcStatus)>,
}

/// Soft provider settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SoftConfig {
    /// How many times a Send that finds no receive is retried before failing (at most
    /// [`MAX_RNR_RETRY`]).
    pub rnr_retry: u8,
    /// How long each retry waits for a receive to be posted.
    pub rnr_timer: Duration,
    /// Faults to inject into the queue pairs this domain creates.
    pub faults: Faults,
}

impl Default for SoftConfig {
    fn default() -> Self {
        Self {
            rnr_retry: MAX_RNR_RETRY,
            // Verbs' min_rnr_timer 12 is 0.64 ms; a thread wake-up is coarser, so be generous.
            rnr_timer: Duration::from_millis(2),
            faults: Faults::default(),
        }
    }
}

/// Locks a mutex, ignoring poisoning: every critical section here leaves its data consistent
/// before it can panic, and a panicking test thread must not cascade into others.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

static NEXT_QP_NUM: AtomicU32 = AtomicU32::new(1);
static NEXT_REGION: AtomicU64 = AtomicU64::new(1);

type Registry = Mutex<HashMap<u32, Weak<MrInner>>>;

/// A soft protection domain.
#[derive(Debug, Clone)]
pub struct SoftPd {
    inner: Arc<PdInner>,
}

#[derive(Debug)]
struct PdInner {
    config: SoftConfig,
    regions: Arc<Registry>,
}

impl SoftPd {
    /// A domain with default settings.
    pub fn new() -> Self {
        Self::with_config(SoftConfig::default()).expect("the default configuration is valid")
    }

    /// A domain with `config`.
    pub fn with_config(config: SoftConfig) -> Result<Self, RdmaError> {
        if config.rnr_retry > MAX_RNR_RETRY {
            return Err(RdmaError::InvalidConfig(format!(
                "rnr_retry {} above {MAX_RNR_RETRY} (7 would retry forever)",
                config.rnr_retry
            )));
        }
        Ok(Self {
            inner: Arc::new(PdInner {
                config,
                regions: Arc::new(Mutex::new(HashMap::new())),
            }),
        })
    }

    fn lookup(&self, rkey: u32) -> Option<SoftMr> {
        lock(&self.inner.regions)
            .get(&rkey)
            .and_then(Weak::upgrade)
            .map(|inner| SoftMr { inner })
    }
}

impl Default for SoftPd {
    fn default() -> Self {
        Self::new()
    }
}

impl ProtectionDomain for SoftPd {
    type Mr = SoftMr;
    type Cq = SoftCq;
    type Qp = SoftQp;

    fn register(&self, len: usize) -> Result<SoftMr, RdmaError> {
        if len == 0 {
            return Err(RdmaError::InvalidConfig("zero-length region".into()));
        }
        let id = NEXT_REGION.fetch_add(1, Ordering::Relaxed);
        // Addresses are made up but distinct: 1 TiB apart, never 0.
        let addr = id << 40;
        // Keys look random so a stale or guessed key is unlikely to hit another region, and mix in
        // the process id so two processes do not hand out the same keys.
        let rkey = (id as u32).wrapping_mul(0x9E37_79B9) ^ std::process::id().rotate_left(16);
        let inner = Arc::new(MrInner {
            addr,
            rkey,
            data: Mutex::new(vec![0u8; len].into_boxed_slice()),
            len,
            registry: Arc::downgrade(&self.inner.regions),
        });
        lock(&self.inner.regions).insert(rkey, Arc::downgrade(&inner));
        Ok(SoftMr { inner })
    }

    fn create_cq(&self, capacity: usize) -> Result<SoftCq, RdmaError> {
        if capacity == 0 {
            return Err(RdmaError::InvalidConfig("zero-capacity completion queue".into()));
        }
        Ok(SoftCq {
            inner: Arc::new(CqInner {
                capacity,
                state: Mutex::new(CqState {
                    queue: VecDeque::with_capacity(capacity),
                    overrun: false,
                    waker: None,
                }),
                ready: Condvar::new(),
            }),
        })
    }

    fn create_qp(&self, send_cq: &SoftCq, recv_cq: &SoftCq, caps: QpCaps) -> Result<SoftQp, RdmaError> {
        if caps.max_send_wr == 0 || caps.max_recv_wr == 0 {
            return Err(RdmaError::InvalidConfig(format!("queue sizes {caps:?}")));
        }
        let qp_num = NEXT_QP_NUM.fetch_add(1, Ordering::Relaxed) & 0x00FF_FFFF;
        Ok(SoftQp {
            inner: Arc::new(QpInner {
                qp_num,
                caps,
                config: self.inner.config.clone(),
                pd: self.clone(),
                send_cq: send_cq.inner.clone(),
                recv_cq: recv_cq.inner.clone(),
                core: Mutex::new(Core {
                    state: QpState::Reset,
                    link: None,
                    generation: 0,
                    next_seq: 0,
                    sq: VecDeque::with_capacity(caps.max_send_wr as usize),
                    rq: VecDeque::with_capacity(caps.max_recv_wr as usize),
                    packets_sent: 0,
                    responses: 0,
                    faults: self.inner.config.faults.clone(),
                }),
                recv_posted: Condvar::new(),
            }),
        })
    }
}

/// A soft memory region: a zeroed buffer owned by the provider. Clones name the same region.
#[derive(Debug, Clone)]
pub struct SoftMr {
    inner: Arc<MrInner>,
}

#[derive(Debug)]
struct MrInner {
    addr: u64,
    rkey: u32,
    len: usize,
    data: Mutex<Box<[u8]>>,
    registry: Weak<Registry>,
}

impl Drop for MrInner {
    fn drop(&mut self) {
        // Deregistration: the peer's key stops working.
        if let Some(registry) = self.registry.upgrade() {
            lock(&registry).remove(&self.rkey);
        }
    }
}

impl SoftMr {
    /// The region's offset for a remote address, if `len` bytes from it lie inside the region.
    fn offset_of(&self, addr: u64, len: usize) -> Option<usize> {
        let offset = usize::try_from(addr.checked_sub(self.inner.addr)?).ok()?;
        check_range(offset, len, self.inner.len).ok()?;
        Some(offset)
    }

    /// Runs `f` over the region's bytes (for tests and pools that fill or check whole ranges).
    pub fn with_bytes<R>(&self, f: impl FnOnce(&mut [u8]) -> R) -> R {
        f(&mut lock(&self.inner.data))
    }
}

impl MemoryRegion for SoftMr {
    fn len(&self) -> usize {
        self.inner.len
    }
    fn addr(&self) -> u64 {
        self.inner.addr
    }
    fn lkey(&self) -> u32 {
        self.inner.rkey
    }
    fn rkey(&self) -> u32 {
        self.inner.rkey
    }
    fn read_at(&self, offset: usize, out: &mut [u8]) -> Result<(), RdmaError> {
        check_range(offset, out.len(), self.inner.len)?;
        out.copy_from_slice(&lock(&self.inner.data)[offset..offset + out.len()]);
        Ok(())
    }
    fn write_at(&self, offset: usize, data: &[u8]) -> Result<(), RdmaError> {
        check_range(offset, data.len(), self.inner.len)?;
        lock(&self.inner.data)[offset..offset + data.len()].copy_from_slice(data);
        Ok(())
    }
}

/// A soft completion queue. Clones name the same queue.
#[derive(Debug, Clone)]
pub struct SoftCq {
    inner: Arc<CqInner>,
}

#[derive(Debug)]
struct CqInner {
    capacity: usize,
    state: Mutex<CqState>,
    ready: Condvar,
}

#[derive(Debug)]
struct CqState {
    queue: VecDeque<WorkCompletion>,
    overrun: bool,
    waker: Option<Waker>,
}

impl CqInner {
    fn push(&self, wc: WorkCompletion) {
        let mut state = lock(&self.state);
        if state.queue.len() == self.capacity {
            // Hardware loses the completion and raises an asynchronous error; so do we.
            state.overrun = true;
        } else {
            state.queue.push_back(wc);
        }
        let waker = state.waker.take();
        drop(state);
        self.ready.notify_all();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl CompletionQueue for SoftCq {
    fn capacity(&self) -> usize {
        self.inner.capacity
    }

    fn poll(&self, out: &mut [WorkCompletion]) -> Result<usize, RdmaError> {
        let mut state = lock(&self.inner.state);
        if state.overrun {
            return Err(RdmaError::CqOverrun(self.inner.capacity));
        }
        let n = out.len().min(state.queue.len());
        for (slot, wc) in out.iter_mut().zip(state.queue.drain(..n)) {
            *slot = wc;
        }
        Ok(n)
    }

    fn wait(&self, timeout: Duration) -> Result<bool, RdmaError> {
        let deadline = Instant::now() + timeout;
        let mut state = lock(&self.inner.state);
        loop {
            if state.overrun {
                return Err(RdmaError::CqOverrun(self.inner.capacity));
            }
            if !state.queue.is_empty() {
                return Ok(true);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            state = self
                .inner
                .ready
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn arm(&self, waker: &Waker) {
        let mut state = lock(&self.inner.state);
        if state.queue.is_empty() && !state.overrun {
            state.waker = Some(waker.clone());
        } else {
            drop(state);
            waker.wake_by_ref();
        }
    }
}

/// How a soft queue pair reaches its peer: the `Remote` of [`SoftQp::to_rtr`].
#[derive(Debug)]
pub struct SoftLink {
    kind: LinkKind,
}

#[derive(Debug)]
enum LinkKind {
    InProcess { tx: Sender<Packet>, rx: Receiver<Packet> },
    Tcp(TcpStream),
}

impl SoftLink {
    /// Two ends of an in-process link: give one to each queue pair.
    pub fn pair() -> (Self, Self) {
        let (tx_a, rx_b) = mpsc::channel();
        let (tx_b, rx_a) = mpsc::channel();
        (
            Self {
                kind: LinkKind::InProcess { tx: tx_a, rx: rx_a },
            },
            Self {
                kind: LinkKind::InProcess { tx: tx_b, rx: rx_b },
            },
        )
    }

    /// A link over a connected TCP stream (typically the one the handshake went over). Nagle is
    /// turned off (the writer batches on its own) and any timeouts are cleared: the link's reader
    /// waits for as long as the connection lives, and only the end of the stream or an error ends
    /// it.
    pub fn tcp(stream: TcpStream) -> Self {
        // Best effort: a stream that refuses these options still works (only slower, or with a
        // reader that gives up on a quiet link, which then fails like a dead peer).
        let _ = stream.set_nodelay(true);
        let _ = stream.set_read_timeout(None);
        let _ = stream.set_write_timeout(None);
        Self {
            kind: LinkKind::Tcp(stream),
        }
    }
}

/// This side's end of a live link: packets to the peer (in-process), or to the TCP writer thread.
#[derive(Debug)]
struct LinkTx {
    tx: Sender<Packet>,
}

impl LinkTx {
    /// Closes the link after the packets already queued (a NAK sent just before failing must
    /// reach the peer before the end of the stream). In-process, the peer's thread sees the
    /// channel disconnect; over TCP, the writer thread drains its queue, then shuts the socket
    /// down both ways, which ends both ends' reader threads.
    fn close(self) {
        drop(self.tx);
    }
}

/// A soft RC queue pair. Dropping it moves it to ERROR and closes its link.
#[derive(Debug)]
pub struct SoftQp {
    inner: Arc<QpInner>,
}

#[derive(Debug)]
struct QpInner {
    qp_num: u32,
    caps: QpCaps,
    config: SoftConfig,
    pd: SoftPd,
    send_cq: Arc<CqInner>,
    recv_cq: Arc<CqInner>,
    core: Mutex<Core>,
    /// Signalled when a receive is posted or the state changes (wakes a Send waiting out RNR).
    recv_posted: Condvar,
}

#[derive(Debug)]
struct Core {
    state: QpState,
    link: Option<LinkTx>,
    /// Bumped on every new link and on reset, so threads of an old link stop touching the queue
    /// pair.
    generation: u64,
    next_seq: u64,
    /// Send work requests posted and not yet retired, in order.
    sq: VecDeque<PendingSend>,
    /// Receives posted and not yet consumed, in order.
    rq: VecDeque<PendingRecv>,
    packets_sent: u64,
    responses: u64,
    faults: Faults,
}

#[derive(Debug)]
struct PendingSend {
    wr_id: u64,
    seq: u64,
    opcode: WcOpcode,
    signaled: bool,
    len: usize,
    /// Destination of a Read.
    read_into: Option<(SoftMr, usize)>,
    /// Succeeded but unsignaled: waits for a later signaled completion to retire it.
    done: bool,
}

#[derive(Debug)]
struct PendingRecv {
    wr_id: u64,
    mr: SoftMr,
    offset: usize,
    len: usize,
}

impl SoftQp {
    /// Replaces the faults injected into this queue pair (counters keep running).
    pub fn set_faults(&self, faults: Faults) {
        lock(&self.inner.core).faults = faults;
    }

    /// Send work requests posted and not yet retired (the send-queue occupancy).
    pub fn send_queue_used(&self) -> usize {
        lock(&self.inner.core).sq.len()
    }

    /// Receives posted and not yet consumed.
    pub fn recv_queue_used(&self) -> usize {
        lock(&self.inner.core).rq.len()
    }
}

impl Drop for SoftQp {
    fn drop(&mut self) {
        let mut core = lock(&self.inner.core);
        core.generation += 1;
        self.inner.fail(&mut core, None);
    }
}

impl QpInner {
    /// Moves to ERROR: the failing request (if any) completes with its status, every other
    /// outstanding request is flushed, the link is closed. Idempotent.
    fn fail(&self, core: &mut Core, failed: Option<(u64, WcStatus)>) {
        if core.state == QpState::Error {
            return;
        }
        core.state = QpState::Error;
        if let Some(link) = core.link.take() {
            link.close();
        }
        for send in core.sq.drain(..) {
            if send.done {
                continue; // Succeeded unsignaled: no completion, as in verbs.
            }
            let status = match failed {
                Some((seq, status)) if seq == send.seq => status,
                _ => WcStatus::WrFlushErr,
            };
            self.send_cq.push(WorkCompletion {
                wr_id: send.wr_id,
                status,
                opcode: send.opcode,
                byte_len: 0,
            });
        }
        for recv in core.rq.drain(..) {
            self.recv_cq.push(WorkCompletion {
                wr_id: recv.wr_id,
                status: WcStatus::WrFlushErr,
                opcode: WcOpcode::Recv,
                byte_len: 0,
            });
        }
        self.recv_posted.notify_all();
    }

    /// Sends a packet to the peer, applying the drop-link fault. A dead link fails the queue pair.
    fn transmit(&self, core: &mut Core, packet: Packet) {
        core.packets_sent += 1;
        if let Some(limit) = core.faults.drop_link_after_packets {
            if core.packets_sent > limit {
                self.fail(core, None);
                return;
            }
        }
        let sent = match &core.link {
            Some(link) => link.tx.send(packet).is_ok(),
            None => false,
        };
        if !sent {
            self.fail(core, None);
        }
    }

    /// The link died (end of stream, I/O or protocol error, peer gone).
    fn link_down(&self, generation: u64) {
        let mut core = lock(&self.core);
        if core.generation == generation {
            self.fail(&mut core, None);
        }
    }

    /// Serves one packet from the peer. Runs on the link's inbound thread.
    fn handle(&self, generation: u64, packet: Packet) {
        if matches!(
            packet,
            Packet::Ack { .. } | Packet::ReadResp { .. } | Packet::Nak { .. }
        ) {
            let delay = lock(&self.core).faults.completion_delay;
            if let Some(delay) = delay {
                thread::sleep(delay);
            }
        }
        let mut core = lock(&self.core);
        if core.generation != generation || !matches!(core.state, QpState::Rtr | QpState::Rts) {
            return; // An old link, or a queue pair that no longer serves anything.
        }
        match packet {
            Packet::Send { seq, data } => self.serve_send(core, generation, seq, data),
            Packet::Write { seq, addr, rkey, data } => match self.remote_region(rkey, addr, data.len()) {
                Some((mr, offset)) => {
                    mr.write_at(offset, &data).expect("range checked");
                    self.transmit(&mut core, Packet::Ack { seq });
                }
                None => self.refuse_access(&mut core, seq),
            },
            Packet::ReadReq { seq, addr, rkey, len } => match self.remote_region(rkey, addr, len as usize) {
                Some((mr, offset)) => {
                    let mut data = vec![0u8; len as usize];
                    mr.read_at(offset, &mut data).expect("range checked");
                    self.transmit(&mut core, Packet::ReadResp { seq, data });
                }
                None => self.refuse_access(&mut core, seq),
            },
            Packet::Ack { seq } => self.complete(&mut core, seq, Ok(None)),
            Packet::ReadResp { seq, data } => self.complete(&mut core, seq, Ok(Some(data))),
            Packet::Nak { seq, code } => {
                let status = match code {
                    NakCode::RnrRetryExceeded => WcStatus::RnrRetryExcErr,
                    NakCode::RemoteAccess => WcStatus::RemAccessErr,
                    NakCode::InvalidRequest => WcStatus::RemInvReqErr,
                };
                self.complete(&mut core, seq, Err(status));
            }
        }
    }

    fn remote_region(&self, rkey: u32, addr: u64, len: usize) -> Option<(SoftMr, usize)> {
        let mr = self.pd.lookup(rkey)?;
        let offset = mr.offset_of(addr, len)?;
        Some((mr, offset))
    }

    fn refuse_access(&self, core: &mut Core, seq: u64) {
        self.transmit(
            core,
            Packet::Nak {
                seq,
                code: NakCode::RemoteAccess,
            },
        );
        // The responder's access violation takes its queue pair to ERROR too.
        self.fail(core, None);
    }

    /// A Send from the peer: into the oldest posted receive, waiting out the RNR retries if none.
    fn serve_send(&self, mut core: MutexGuard<'_, Core>, generation: u64, seq: u64, data: Vec<u8>) {
        let mut retries = 0;
        while core.rq.is_empty() {
            if retries == self.config.rnr_retry {
                self.transmit(
                    &mut core,
                    Packet::Nak {
                        seq,
                        code: NakCode::RnrRetryExceeded,
                    },
                );
                return;
            }
            retries += 1;
            let deadline = Instant::now() + self.config.rnr_timer;
            // Wait out one RNR period (until a receive is posted or the period ends).
            loop {
                let now = Instant::now();
                if !core.rq.is_empty() || now >= deadline {
                    break;
                }
                core = self
                    .recv_posted
                    .wait_timeout(core, deadline - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                if core.generation != generation || !matches!(core.state, QpState::Rtr | QpState::Rts) {
                    return;
                }
            }
        }
        let recv = core.rq.pop_front().expect("checked non-empty");
        if data.len() > recv.len {
            self.recv_cq.push(WorkCompletion {
                wr_id: recv.wr_id,
                status: WcStatus::LocLenErr,
                opcode: WcOpcode::Recv,
                byte_len: 0,
            });
            self.transmit(
                &mut core,
                Packet::Nak {
                    seq,
                    code: NakCode::InvalidRequest,
                },
            );
            self.fail(&mut core, None);
            return;
        }
        recv.mr.write_at(recv.offset, &data).expect("checked at post");
        self.recv_cq.push(WorkCompletion {
            wr_id: recv.wr_id,
            status: WcStatus::Success,
            opcode: WcOpcode::Recv,
            byte_len: data.len() as u32,
        });
        self.transmit(&mut core, Packet::Ack { seq });
    }

    /// The response to this side's request `seq`: the oldest not yet answered, since RC answers in
    /// order.
    fn complete(&self, core: &mut Core, seq: u64, result: Result<Option<Vec<u8>>, WcStatus>) {
        let Some(index) = core.sq.iter().position(|s| !s.done) else {
            return self.fail(core, None); // A response to nothing: the peer is broken.
        };
        if core.sq[index].seq != seq {
            let expected = core.sq[index].seq;
            return self.fail(core, Some((expected, WcStatus::GeneralErr)));
        }
        core.responses += 1;
        let result = match core.faults.fail_completion {
            Some((n, status)) if n == core.responses => Err(status),
            _ => result,
        };
        let data = match result {
            Ok(data) => data,
            Err(status) => return self.fail(core, Some((seq, status))),
        };
        if let (Some(data), Some((mr, offset))) = (&data, &core.sq[index].read_into) {
            if data.len() != core.sq[index].len {
                return self.fail(core, Some((seq, WcStatus::GeneralErr)));
            }
            mr.write_at(*offset, data).expect("checked at post");
        }
        let send = &mut core.sq[index];
        send.done = true;
        if send.signaled {
            let wc = WorkCompletion {
                wr_id: send.wr_id,
                status: WcStatus::Success,
                opcode: send.opcode,
                byte_len: send.len as u32,
            };
            // A signaled completion retires it and every unsignaled request before it.
            core.sq.drain(..=index);
            self.send_cq.push(wc);
        }
    }

    fn spawn_in_process(self: &Arc<Self>, generation: u64, rx: Receiver<Packet>) -> Result<(), RdmaError> {
        let qp = Arc::downgrade(self);
        spawn(format!("soft-qp-{}", self.qp_num), move || {
            while let Ok(packet) = rx.recv() {
                let Some(qp) = qp.upgrade() else { return };
                qp.handle(generation, packet);
            }
            if let Some(qp) = qp.upgrade() {
                qp.link_down(generation);
            }
        })
    }

    fn spawn_tcp(self: &Arc<Self>, generation: u64, stream: &TcpStream, rx: Receiver<Packet>) -> Result<(), RdmaError> {
        let clone = |s: &TcpStream| {
            s.try_clone().map_err(|e| RdmaError::Device {
                op: "clone TCP stream",
                message: e.to_string(),
            })
        };
        let mut writer = BufWriter::with_capacity(256 << 10, clone(stream)?);
        let mut reader = BufReader::with_capacity(256 << 10, clone(stream)?);
        let qp = Arc::downgrade(self);
        spawn(format!("soft-qp-{}-tx", self.qp_num), move || {
            // Write every packet queued, then flush once: batching without Nagle's delay.
            let ok = (|| -> std::io::Result<()> {
                while let Ok(packet) = rx.recv() {
                    packet.encode(&mut writer)?;
                    while let Ok(packet) = rx.try_recv() {
                        packet.encode(&mut writer)?;
                    }
                    writer.flush()?;
                }
                Ok(())
            })();
            // Closing: both directions, so this side's reader and the peer see the end of stream.
            // The socket may already be dead, which is what shutting down wants anyway.
            let _ = writer.get_ref().shutdown(Shutdown::Both);
            if ok.is_err() {
                if let Some(qp) = qp.upgrade() {
                    qp.link_down(generation);
                }
            }
        })?;
        let qp = Arc::downgrade(self);
        spawn(format!("soft-qp-{}-rx", self.qp_num), move || {
            while let Ok(Some(packet)) = Packet::decode(&mut reader) {
                let Some(qp) = qp.upgrade() else { return };
                qp.handle(generation, packet);
            }
            if let Some(qp) = qp.upgrade() {
                qp.link_down(generation);
            }
        })
    }
}

fn spawn(name: String, f: impl FnOnce() + Send + 'static) -> Result<(), RdmaError> {
    thread::Builder::new()
        .name(name)
        .spawn(f)
        .map(drop)
        .map_err(|e| RdmaError::Device {
            op: "spawn link thread",
            message: e.to_string(),
        })
}

impl QueuePair for SoftQp {
    type Mr = SoftMr;
    type Remote = SoftLink;

    fn qp_num(&self) -> u32 {
        self.inner.qp_num
    }

    fn state(&self) -> QpState {
        lock(&self.inner.core).state
    }

    fn caps(&self) -> QpCaps {
        self.inner.caps
    }

    fn to_init(&self) -> Result<(), RdmaError> {
        let mut core = lock(&self.inner.core);
        check_transition(core.state, QpState::Init)?;
        core.state = QpState::Init;
        Ok(())
    }

    fn to_rtr(&self, remote: SoftLink) -> Result<(), RdmaError> {
        let mut core = lock(&self.inner.core);
        check_transition(core.state, QpState::Rtr)?;
        core.generation += 1;
        let generation = core.generation;
        let link = match remote.kind {
            LinkKind::InProcess { tx, rx } => {
                self.inner.spawn_in_process(generation, rx)?;
                LinkTx { tx }
            }
            LinkKind::Tcp(stream) => {
                let (tx, rx) = mpsc::channel();
                self.inner.spawn_tcp(generation, &stream, rx)?;
                LinkTx { tx }
            }
        };
        core.link = Some(link);
        core.state = QpState::Rtr;
        Ok(())
    }

    fn to_rts(&self) -> Result<(), RdmaError> {
        let mut core = lock(&self.inner.core);
        check_transition(core.state, QpState::Rts)?;
        core.state = QpState::Rts;
        Ok(())
    }

    fn to_error(&self) -> Result<(), RdmaError> {
        let mut core = lock(&self.inner.core);
        self.inner.fail(&mut core, None);
        Ok(())
    }

    fn reset(&self) -> Result<(), RdmaError> {
        let mut core = lock(&self.inner.core);
        core.generation += 1;
        if let Some(link) = core.link.take() {
            link.close();
        }
        core.sq.clear();
        core.rq.clear();
        core.next_seq = 0;
        core.packets_sent = 0;
        core.responses = 0;
        core.state = QpState::Reset;
        self.inner.recv_posted.notify_all();
        Ok(())
    }

    fn post_send(&self, wr: &SendWr<'_, SoftMr>) -> Result<(), RdmaError> {
        let mut core = lock(&self.inner.core);
        if core.state != QpState::Rts {
            return Err(RdmaError::InvalidState {
                what: "send",
                state: core.state,
            });
        }
        if core.sq.len() >= self.inner.caps.max_send_wr as usize {
            return Err(RdmaError::QueueFull {
                queue: "send",
                depth: self.inner.caps.max_send_wr,
            });
        }
        let local = wr.local;
        check_range(local.offset, local.len, local.mr.len())?;
        if local.len > MAX_MESSAGE_BYTES {
            return Err(RdmaError::InvalidConfig(format!(
                "message of {} bytes above the soft limit {MAX_MESSAGE_BYTES}",
                local.len
            )));
        }
        let seq = core.next_seq;
        core.next_seq += 1;
        let copy_out = || {
            let mut data = vec![0u8; local.len];
            local.mr.read_at(local.offset, &mut data).expect("range checked");
            data
        };
        let (opcode, packet, read_into) = match wr.op {
            SendOp::Send => (WcOpcode::Send, Packet::Send { seq, data: copy_out() }, None),
            SendOp::RdmaWrite { remote } => (
                WcOpcode::RdmaWrite,
                Packet::Write {
                    seq,
                    addr: remote.addr,
                    rkey: remote.rkey,
                    data: copy_out(),
                },
                None,
            ),
            SendOp::RdmaRead { remote } => (
                WcOpcode::RdmaRead,
                Packet::ReadReq {
                    seq,
                    addr: remote.addr,
                    rkey: remote.rkey,
                    len: local.len as u32,
                },
                Some((local.mr.clone(), local.offset)),
            ),
        };
        core.sq.push_back(PendingSend {
            wr_id: wr.wr_id,
            seq,
            opcode,
            signaled: wr.signaled,
            len: local.len,
            read_into,
            done: false,
        });
        self.inner.transmit(&mut core, packet);
        Ok(())
    }

    fn post_recv(&self, wr: &RecvWr<'_, SoftMr>) -> Result<(), RdmaError> {
        let mut core = lock(&self.inner.core);
        if !matches!(core.state, QpState::Init | QpState::Rtr | QpState::Rts) {
            return Err(RdmaError::InvalidState {
                what: "receive",
                state: core.state,
            });
        }
        if core.rq.len() >= self.inner.caps.max_recv_wr as usize {
            return Err(RdmaError::QueueFull {
                queue: "receive",
                depth: self.inner.caps.max_recv_wr,
            });
        }
        check_range(wr.local.offset, wr.local.len, wr.local.mr.len())?;
        core.rq.push_back(PendingRecv {
            wr_id: wr.wr_id,
            mr: wr.local.mr.clone(),
            offset: wr.local.offset,
            len: wr.local.len,
        });
        drop(core);
        self.inner.recv_posted.notify_all();
        Ok(())
    }
}

fn check_transition(from: QpState, to: QpState) -> Result<(), RdmaError> {
    if transition_allowed(from, to) {
        Ok(())
    } else {
        Err(RdmaError::InvalidTransition { from, to })
    }
}

#[cfg(test)]
mod tests;
