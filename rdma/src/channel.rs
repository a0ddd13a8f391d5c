//! The control channel: fixed-size messages over Send/Receive with credit-based flow control, over
//! any provider.
//!
//! # Buffers
//!
//! The channel owns one registered region, carved into [`MSG_LEN`]-byte slots:
//!
//! ```text
//!   [ recv slot 0 .. credits-1 | grant slot 0 .. grant_slots-1 | send slot 0 .. send_queue_depth-1 ]
//! ```
//!
//! Every receive slot is posted before the queue pair is connected, so the peer's first Send finds
//! a buffer. A send slot is reused once the send that used it is retired.
//!
//! # Credits (the [`credit`](crate::credit) module's rules)
//!
//! Each side reserves `credits` receive buffers for the other's *data* messages. A data message is
//! posted only with a credit ([`CreditLedger`]); without one it waits in a bounded queue, and when
//! that is full the caller gets [`TrySendError::WouldBlock`] (or parks in
//! [`ControlChannel::send_blocking`] / [`ControlChannel::poll_send`] on the completion queue).
//! Nothing spins.
//!
//! A receive buffer is re-posted when the application takes the message out
//! ([`ControlChannel::try_recv`]), not when it arrives: a slow application is what slows the
//! sender. Re-posted buffers go back as cumulative grants ([`CreditGrantor`]): on every message
//! going the other way for free, and in an explicit grant message once `high_water` of them wait.
//!
//! Explicit grants must not need credits themselves, or two sides out of credits would wait on
//! each other forever. They land in `grant_slots` extra receive buffers outside the credit scheme
//! (Lustre o2iblnd's out-of-band buffers). Each side counts the grant messages it has received and
//! re-posted and reports that count on every message it sends; a side sends an explicit grant only
//! while fewer than `grant_slots` of its grants are unreported, so grant buffers are never
//! overrun. This cannot deadlock: a side waiting for credits has, by then, sent a message reporting
//! every grant it processed.
//!
//! # Queue depths
//!
//! Send-queue slots and completion-queue entries are accounted separately. Sends are signaled one
//! in `signal_every` (and whenever the send queue fills); an unsignaled send keeps its slot until a
//! later signaled one completes. The completion queue must hold a completion for every work request
//! that can be outstanding at once (every receive plus a full send queue), since a failure flushes
//! them all: [`ControlChannel::new`] checks that.
//!
//! # Message layout
//!
//! ```text
//!   0 kind u8 (1 data, 2 grant) | 1 reserved u8 (0) | 2 payload_len u16 | 4 reserved u32 (0)
//!   8 grant_total u64     cumulative credits granted to the receiver of this message
//!  16 grants_seen u64     explicit grant messages the sender has received and re-posted
//!  24 seq u64             data messages: 1, 2, 3, ... (0 for grants)
//!  32 payload [96]
//! ```

use std::collections::VecDeque;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::credit::{CreditError, CreditGrantor, CreditLedger};
use crate::provider::{
    CompletionQueue, MemoryRegion, QpState, QueuePair, RdmaError, RecvWr, SendOp, SendWr, Sge, WcOpcode, WcStatus,
    WorkCompletion,
};

/// Size of every control message on the wire.
pub const MSG_LEN: usize = 128;
/// Size of the header in front of the payload.
pub const HEADER_LEN: usize = 32;
/// The largest payload of one message.
pub const PAYLOAD_MAX: usize = MSG_LEN - HEADER_LEN;

const KIND_DATA: u8 = 1;
const KIND_GRANT: u8 = 2;
const RECV_TAG: u64 = 1 << 63;

const _: () = assert!(HEADER_LEN == 1 + 1 + 2 + 4 + 8 + 8 + 8);
const _: () = assert!(PAYLOAD_MAX <= u16::MAX as usize);

/// Channel settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelConfig {
    /// Receive buffers reserved for the peer's data messages; also the credits the peer reserved
    /// for ours (the handshake negotiates one number for both directions).
    pub credits: u32,
    /// Returned buffers that trigger an explicit grant message.
    pub high_water: u32,
    /// Extra receive buffers for explicit grant messages (at least 1).
    pub grant_slots: u32,
    /// The queue pair's send-queue depth (send slots).
    pub send_queue_depth: u32,
    /// Signal one send in this many (1..=send_queue_depth).
    pub signal_every: u32,
    /// Data messages that may wait for credits before the caller is pushed back.
    pub queue_limit: usize,
}

impl Default for ChannelConfig {
    /// eRPC-like: 32 credits, grants returned 8 at a time.
    fn default() -> Self {
        Self {
            credits: 32,
            high_water: 8,
            grant_slots: 2,
            send_queue_depth: 64,
            signal_every: 16,
            queue_limit: 64,
        }
    }
}

impl ChannelConfig {
    /// Receive buffers posted: credits plus grant slots.
    pub fn recv_slots(&self) -> u32 {
        self.credits + self.grant_slots
    }

    /// Bytes of registered memory the channel needs.
    pub fn region_len(&self) -> usize {
        (self.recv_slots() as usize + self.send_queue_depth as usize) * MSG_LEN
    }

    /// The smallest completion-queue capacity the channel accepts (every receive plus a full send
    /// queue, as all of them complete when the queue pair fails).
    pub fn cq_capacity(&self) -> usize {
        self.recv_slots() as usize + self.send_queue_depth as usize
    }

    fn validate(&self) -> Result<(), ChannelError> {
        let bad = |why: &str| Err(ChannelError::Config(why.to_string()));
        if self.grant_slots == 0 {
            return bad("grant_slots must be at least 1");
        }
        if self.send_queue_depth == 0 || self.signal_every == 0 || self.signal_every > self.send_queue_depth {
            return bad("signal_every must be within 1..=send_queue_depth");
        }
        CreditGrantor::new(self.credits, self.high_water)?;
        Ok(())
    }
}

/// Why a channel stopped or refused to start.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ChannelError {
    /// Invalid settings.
    #[error("invalid channel configuration: {0}")]
    Config(String),
    /// A provider call failed.
    #[error(transparent)]
    Provider(#[from] RdmaError),
    /// A work request failed (the queue pair is in ERROR now).
    #[error("work request {wr_id:#x} ({opcode:?}) failed: {status:?}")]
    Completion {
        /// The failed work request.
        wr_id: u64,
        /// Its status.
        status: WcStatus,
        /// Its kind.
        opcode: WcOpcode,
    },
    /// The peer broke the credit protocol.
    #[error("credit protocol violated: {0}")]
    Credit(#[from] CreditError),
    /// The peer sent a malformed message.
    #[error("malformed control message: {0}")]
    Malformed(String),
    /// A blocking call ran out of time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// Why [`ControlChannel::try_send`] did not take a message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum TrySendError {
    /// No credit and the wait queue is full: try again after [`ControlChannel::progress`] (the
    /// completion queue wakes the caller when that can help).
    #[error("would block: no credit and the send queue is full")]
    WouldBlock,
    /// The payload is above [`PAYLOAD_MAX`].
    #[error("payload of {0} bytes above {PAYLOAD_MAX}")]
    TooLarge(usize),
    /// The channel has failed.
    #[error(transparent)]
    Broken(#[from] ChannelError),
}

/// What [`ControlChannel::try_send`] did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Posted to the queue pair.
    Posted,
    /// Queued, waiting for a credit (it goes out from [`ControlChannel::progress`]).
    Queued,
}

/// Counters, for tests and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChannelStats {
    /// Data messages posted.
    pub data_sent: u64,
    /// Data messages received.
    pub data_received: u64,
    /// Explicit grant messages posted.
    pub grants_sent: u64,
    /// Explicit grant messages received.
    pub grants_received: u64,
    /// Data messages that had to wait in the queue for a credit or a send-queue slot.
    pub queued: u64,
    /// Times the caller was pushed back ([`TrySendError::WouldBlock`]).
    pub would_block: u64,
    /// Signaled sends posted.
    pub signaled: u64,
    /// Completions with [`WcStatus::RnrRetryExcErr`].
    pub rnr_errors: u64,
    /// Completions with [`WcStatus::RemAccessErr`].
    pub access_errors: u64,
    /// The most send-queue slots in use at once.
    pub send_queue_high: u32,
    /// The most completion-queue entries that could have been pending at once (posted receives
    /// plus signaled sends not yet completed).
    pub cq_high: u32,
}

/// A control channel over one queue pair. See the module documentation.
pub struct ControlChannel<Q: QueuePair, C: CompletionQueue> {
    qp: Q,
    cq: C,
    mr: Q::Mr,
    config: ChannelConfig,
    ledger: CreditLedger,
    grantor: CreditGrantor,
    /// Data messages waiting for a credit or a send slot: (length, payload).
    waiting: VecDeque<(u16, [u8; PAYLOAD_MAX])>,
    /// Receive slots holding data messages the application has not taken yet, in arrival order.
    inbox: VecDeque<u32>,
    data_seq_sent: u64,
    data_seq_received: u64,
    /// Sends posted and retired, numbered from 0; `posted - retired` slots are in use.
    sends_posted: u64,
    sends_retired: u64,
    /// Signaled sends not yet completed.
    signaled_pending: u32,
    unsignaled_run: u32,
    /// Explicit grants received and re-posted by this side; and the peer's count of ours.
    grants_seen: u64,
    peer_grants_seen: u64,
    /// A grant released by the grantor that no message has carried yet.
    grant_owed: bool,
    failed: Option<ChannelError>,
    stats: ChannelStats,
}

impl<Q: QueuePair, C: CompletionQueue> ControlChannel<Q, C> {
    /// Builds a channel on a queue pair in INIT (its receives are posted here, before the caller
    /// connects it), a completion queue taking both its send and receive completions (this channel's
    /// alone: it reads every completion as its own), and a region of at least
    /// [`ChannelConfig::region_len`] bytes.
    pub fn new(qp: Q, cq: C, mr: Q::Mr, config: ChannelConfig) -> Result<Self, ChannelError> {
        config.validate()?;
        if mr.len() < config.region_len() {
            return Err(ChannelError::Config(format!(
                "region of {} bytes, {} needed",
                mr.len(),
                config.region_len()
            )));
        }
        if cq.capacity() < config.cq_capacity() {
            return Err(ChannelError::Config(format!(
                "completion queue of {}, {} needed",
                cq.capacity(),
                config.cq_capacity()
            )));
        }
        let caps = qp.caps();
        if caps.max_send_wr < config.send_queue_depth || caps.max_recv_wr < config.recv_slots() {
            return Err(ChannelError::Config(format!(
                "queue pair {caps:?} too small for {config:?}"
            )));
        }
        if qp.state() != QpState::Init {
            return Err(ChannelError::Config(format!(
                "queue pair in {:?}, INIT needed",
                qp.state()
            )));
        }
        let mut this = Self {
            ledger: CreditLedger::new(config.credits),
            grantor: CreditGrantor::new(config.credits, config.high_water)?,
            waiting: VecDeque::with_capacity(config.queue_limit),
            inbox: VecDeque::with_capacity(config.credits as usize),
            qp,
            cq,
            mr,
            config,
            data_seq_sent: 0,
            data_seq_received: 0,
            sends_posted: 0,
            sends_retired: 0,
            signaled_pending: 0,
            unsignaled_run: 0,
            grants_seen: 0,
            peer_grants_seen: 0,
            grant_owed: false,
            failed: None,
            stats: ChannelStats::default(),
        };
        for slot in 0..config.recv_slots() {
            this.post_recv(slot)?;
        }
        this.stats.cq_high = config.recv_slots();
        Ok(this)
    }

    /// Lowers the credits to what the handshake negotiated (at most the configured number), before
    /// any message has been sent or received. The surplus receive buffers stay posted, unused.
    pub fn limit_credits(&mut self, credits: u32) -> Result<(), ChannelError> {
        if credits > self.config.credits || self.stats.data_sent + self.stats.data_received + self.stats.grants_sent > 0
        {
            return Err(ChannelError::Config(format!(
                "cannot set credits to {credits} (configured {}, traffic already sent)",
                self.config.credits
            )));
        }
        self.ledger = CreditLedger::new(credits);
        self.grantor = CreditGrantor::new(credits, self.config.high_water.min(credits))?;
        Ok(())
    }

    /// The settings it was built with (its `credits` are the most it proposes or grants).
    pub fn config(&self) -> &ChannelConfig {
        &self.config
    }

    /// The queue pair (to connect it: `to_rtr`, `to_rts`).
    pub fn qp(&self) -> &Q {
        &self.qp
    }

    /// The channel's registered region (its descriptor goes in the handshake's `recv_ring`).
    pub fn region(&self) -> &Q::Mr {
        &self.mr
    }

    /// The completion queue.
    pub fn cq(&self) -> &C {
        &self.cq
    }

    /// The counters.
    pub fn stats(&self) -> ChannelStats {
        self.stats
    }

    /// Credits available for data messages now.
    pub fn credits_available(&self) -> u64 {
        self.ledger.available()
    }

    /// Data messages waiting for credits.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// The error that stopped the channel, if any.
    pub fn error(&self) -> Option<&ChannelError> {
        self.failed.as_ref()
    }

    fn check(&self) -> Result<(), ChannelError> {
        match &self.failed {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn fail(&mut self, e: ChannelError) -> ChannelError {
        if self.failed.is_none() {
            self.failed = Some(e.clone());
            // Best effort: the queue pair may be in ERROR already, and we are failing anyway.
            let _ = self.qp.to_error();
        }
        e
    }

    fn slot_offset(slot: u32) -> usize {
        slot as usize * MSG_LEN
    }

    fn post_recv(&mut self, slot: u32) -> Result<(), ChannelError> {
        let wr = RecvWr {
            wr_id: RECV_TAG | u64::from(slot),
            local: Sge {
                mr: &self.mr,
                offset: Self::slot_offset(slot),
                len: MSG_LEN,
            },
        };
        self.qp.post_recv(&wr).map_err(|e| self.fail_post(e))
    }

    /// A post refused because the queue pair went to ERROR under our feet: the completion that
    /// says why is in the completion queue (the soft provider flushes before the state is seen;
    /// verbs accepts the post and flushes it), and is the better error to report.
    fn fail_post(&mut self, e: RdmaError) -> ChannelError {
        if matches!(
            e,
            RdmaError::InvalidState {
                state: QpState::Error,
                ..
            }
        ) {
            let mut wcs = [WorkCompletion::EMPTY; 32];
            while let Ok(n @ 1..) = self.cq.poll(&mut wcs) {
                if let Some(wc) = wcs[..n].iter().find(|wc| !wc.status.is_success()) {
                    let wc = *wc;
                    return match self.on_completion(&wc) {
                        Err(e) => e,
                        Ok(()) => unreachable!("an error completion fails the channel"),
                    };
                }
            }
        }
        self.fail(e.into())
    }

    fn sq_used(&self) -> u32 {
        (self.sends_posted - self.sends_retired) as u32
    }

    fn sq_free(&self) -> bool {
        self.sq_used() < self.config.send_queue_depth
    }

    /// Posts one message (data or grant) into the next send slot. The caller checked for a free
    /// send slot (and, for data, took a credit).
    fn post_message(&mut self, kind: u8, payload: &[u8]) -> Result<(), ChannelError> {
        debug_assert!(self.sq_free());
        let number = self.sends_posted;
        let slot = self.config.recv_slots() + (number % u64::from(self.config.send_queue_depth)) as u32;
        let seq = if kind == KIND_DATA {
            self.data_seq_sent += 1;
            self.data_seq_sent
        } else {
            0
        };
        let mut msg = [0u8; MSG_LEN];
        msg[0] = kind;
        msg[2..4].copy_from_slice(&(payload.len() as u16).to_le_bytes());
        // Every message returns every buffer waiting to be granted.
        msg[8..16].copy_from_slice(&self.grantor.piggyback().to_le_bytes());
        msg[16..24].copy_from_slice(&self.grants_seen.to_le_bytes());
        msg[24..32].copy_from_slice(&seq.to_le_bytes());
        msg[HEADER_LEN..HEADER_LEN + payload.len()].copy_from_slice(payload);
        self.grant_owed = false;
        let offset = Self::slot_offset(slot);
        self.mr.write_at(offset, &msg).map_err(|e| self.fail(e.into()))?;
        // Signal one in `signal_every`, and the send that fills the queue (or nothing could ever
        // retire it).
        let signaled =
            self.unsignaled_run + 1 >= self.config.signal_every || self.sq_used() + 1 == self.config.send_queue_depth;
        let wr = SendWr {
            wr_id: number,
            op: SendOp::Send,
            local: Sge {
                mr: &self.mr,
                offset,
                len: MSG_LEN,
            },
            signaled,
        };
        self.qp.post_send(&wr).map_err(|e| self.fail_post(e))?;
        self.sends_posted += 1;
        if signaled {
            self.unsignaled_run = 0;
            self.signaled_pending += 1;
            self.stats.signaled += 1;
        } else {
            self.unsignaled_run += 1;
        }
        self.stats.send_queue_high = self.stats.send_queue_high.max(self.sq_used());
        let cq_pending = self.config.recv_slots() + self.signaled_pending;
        debug_assert!(cq_pending as usize <= self.cq.capacity());
        self.stats.cq_high = self.stats.cq_high.max(cq_pending);
        if kind == KIND_DATA {
            self.stats.data_sent += 1;
        } else {
            self.stats.grants_sent += 1;
        }
        Ok(())
    }

    /// Offers a message. It is posted at once if a credit and a send slot are free and nothing is
    /// waiting before it; queued if the wait queue has room; refused with
    /// [`TrySendError::WouldBlock`] otherwise (the message is not taken: the caller keeps it).
    pub fn try_send(&mut self, payload: &[u8]) -> Result<Sent, TrySendError> {
        if payload.len() > PAYLOAD_MAX {
            return Err(TrySendError::TooLarge(payload.len()));
        }
        self.check()?;
        if self.waiting.is_empty() && self.sq_free() && self.ledger.try_consume(1) {
            self.post_message(KIND_DATA, payload)?;
            return Ok(Sent::Posted);
        }
        if self.waiting.len() >= self.config.queue_limit {
            self.stats.would_block += 1;
            return Err(TrySendError::WouldBlock);
        }
        let mut buf = [0u8; PAYLOAD_MAX];
        buf[..payload.len()].copy_from_slice(payload);
        self.waiting.push_back((payload.len() as u16, buf));
        self.stats.queued += 1;
        Ok(Sent::Queued)
    }

    /// Sends a message, parking the thread on the completion queue while the channel pushes back.
    pub fn send_blocking(&mut self, payload: &[u8], timeout: Duration) -> Result<Sent, ChannelError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.try_send(payload) {
                Ok(sent) => return Ok(sent),
                Err(TrySendError::Broken(e)) => return Err(e),
                Err(TrySendError::TooLarge(n)) => {
                    return Err(ChannelError::Config(format!(
                        "payload of {n} bytes above {PAYLOAD_MAX}"
                    )))
                }
                Err(TrySendError::WouldBlock) => {}
            }
            if self.progress()? == 0 {
                self.park(deadline, timeout)?;
            }
        }
    }

    /// The task version of [`send_blocking`](Self::send_blocking): `Pending` arms the completion
    /// queue with the task's waker, so the task sleeps until a completion can free a credit.
    pub fn poll_send(&mut self, cx: &mut Context<'_>, payload: &[u8]) -> Poll<Result<Sent, TrySendError>> {
        loop {
            match self.try_send(payload) {
                Err(TrySendError::WouldBlock) => {}
                other => return Poll::Ready(other),
            }
            match self.progress() {
                Err(e) => return Poll::Ready(Err(e.into())),
                Ok(0) => {
                    self.cq.arm(cx.waker());
                    // A completion that arrived before arming is still there: arm wakes at once then,
                    // and the next poll finds it.
                    return Poll::Pending;
                }
                Ok(_) => {}
            }
        }
    }

    /// Takes the oldest received message's payload into `out`, returns its length, and re-posts
    /// its buffer (which may send a grant). `None` when nothing has arrived; messages received
    /// before a failure are still handed out, the failure after them.
    pub fn try_recv(&mut self, out: &mut [u8; PAYLOAD_MAX]) -> Result<Option<usize>, ChannelError> {
        if self.inbox.is_empty() && self.failed.is_none() {
            self.progress()?;
        }
        let Some(slot) = self.inbox.pop_front() else {
            self.check()?;
            return Ok(None);
        };
        let mut msg = [0u8; MSG_LEN];
        let offset = Self::slot_offset(slot);
        self.mr.read_at(offset, &mut msg).map_err(|e| self.fail(e.into()))?;
        let len = u16::from_le_bytes([msg[2], msg[3]]) as usize;
        out[..len].copy_from_slice(&msg[HEADER_LEN..HEADER_LEN + len]);
        if self.failed.is_none() {
            self.post_recv(slot)?;
            if self.grantor.release(1).map_err(|e| self.fail(e.into()))?.is_some() {
                self.grant_owed = true;
                // Poll too, not just push out: the peer's report that frees the grant window may
                // be sitting in the completion queue behind messages not taken yet.
                self.progress()?;
            }
        }
        Ok(Some(len))
    }

    /// The task version of [`recv_blocking`](Self::recv_blocking): `Pending` arms the completion
    /// queue with the task's waker.
    pub fn poll_recv(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut [u8; PAYLOAD_MAX],
    ) -> Poll<Result<usize, ChannelError>> {
        match self.try_recv(out) {
            Ok(Some(len)) => Poll::Ready(Ok(len)),
            Err(e) => Poll::Ready(Err(e)),
            Ok(None) => {
                // A completion that arrived since the poll in `try_recv` makes `arm` wake at once.
                self.cq.arm(cx.waker());
                Poll::Pending
            }
        }
    }

    /// Receives a message, parking the thread on the completion queue until one arrives.
    pub fn recv_blocking(&mut self, out: &mut [u8; PAYLOAD_MAX], timeout: Duration) -> Result<usize, ChannelError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(len) = self.try_recv(out)? {
                return Ok(len);
            }
            self.park(deadline, timeout)?;
        }
    }

    /// Waits until every queued message has been posted.
    pub fn flush_blocking(&mut self, timeout: Duration) -> Result<(), ChannelError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.waiting.is_empty() {
                return Ok(());
            }
            if self.progress()? == 0 && !self.waiting.is_empty() {
                self.park(deadline, timeout)?;
            }
        }
    }

    fn park(&mut self, deadline: Instant, timeout: Duration) -> Result<(), ChannelError> {
        let now = Instant::now();
        if now >= deadline {
            return Err(ChannelError::Timeout(timeout));
        }
        self.cq.wait(deadline - now).map_err(|e| self.fail(e.into()))?;
        Ok(())
    }

    /// Handles every completion ready, then posts what credits and send slots allow: waiting data
    /// messages, and an owed grant. Returns how many completions it handled. Never blocks.
    pub fn progress(&mut self) -> Result<usize, ChannelError> {
        self.check()?;
        let mut handled = 0;
        let mut wcs = [WorkCompletion::EMPTY; 32];
        loop {
            let n = self.cq.poll(&mut wcs).map_err(|e| self.fail(e.into()))?;
            for wc in &wcs[..n] {
                self.on_completion(wc)?;
            }
            handled += n;
            if n < wcs.len() {
                break;
            }
        }
        self.push_out()?;
        Ok(handled)
    }

    fn on_completion(&mut self, wc: &WorkCompletion) -> Result<(), ChannelError> {
        if !wc.status.is_success() {
            match wc.status {
                WcStatus::RnrRetryExcErr => self.stats.rnr_errors += 1,
                WcStatus::RemAccessErr => self.stats.access_errors += 1,
                _ => {}
            }
            return Err(self.fail(ChannelError::Completion {
                wr_id: wc.wr_id,
                status: wc.status,
                opcode: wc.opcode,
            }));
        }
        if wc.wr_id & RECV_TAG == 0 {
            // A signaled send: it and every send before it are done.
            let number = wc.wr_id;
            if number < self.sends_retired || number >= self.sends_posted {
                return Err(self.fail(ChannelError::Malformed(format!("completion for unknown send {number}"))));
            }
            let Some(pending) = self.signaled_pending.checked_sub(1) else {
                return Err(self.fail(ChannelError::Malformed(format!(
                    "unexpected completion for send {number}"
                ))));
            };
            self.sends_retired = number + 1;
            self.signaled_pending = pending;
            return Ok(());
        }
        let slot = (wc.wr_id & !RECV_TAG) as u32;
        if slot >= self.config.recv_slots() || wc.byte_len as usize != MSG_LEN {
            return Err(self.fail(ChannelError::Malformed(format!("receive {wc:?}"))));
        }
        let mut header = [0u8; HEADER_LEN];
        self.mr
            .read_at(Self::slot_offset(slot), &mut header)
            .map_err(|e| self.fail(e.into()))?;
        let u64_at = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().expect("8 bytes"));
        let (kind, len, grant_total, grants_seen, seq) = (
            header[0],
            u16::from_le_bytes([header[2], header[3]]),
            u64_at(8),
            u64_at(16),
            u64_at(24),
        );
        if usize::from(len) > PAYLOAD_MAX || header[1] != 0 || header[4..8] != [0; 4] {
            return Err(self.fail(ChannelError::Malformed(format!("header {header:?}"))));
        }
        self.ledger.apply_grant(grant_total).map_err(|e| self.fail(e.into()))?;
        if grants_seen > self.stats.grants_sent {
            return Err(self.fail(ChannelError::Malformed(format!(
                "peer saw {grants_seen} grants, {} sent",
                self.stats.grants_sent
            ))));
        }
        self.peer_grants_seen = self.peer_grants_seen.max(grants_seen);
        match kind {
            KIND_DATA => {
                self.grantor.on_receive().map_err(|e| self.fail(e.into()))?;
                if seq != self.data_seq_received + 1 {
                    return Err(self.fail(ChannelError::Malformed(format!(
                        "data message {seq}, expected {}",
                        self.data_seq_received + 1
                    ))));
                }
                self.data_seq_received = seq;
                self.stats.data_received += 1;
                self.inbox.push_back(slot);
            }
            KIND_GRANT => {
                // Out-of-band buffer: re-posted at once, reported on our next message.
                self.post_recv(slot)?;
                self.grants_seen += 1;
                self.stats.grants_received += 1;
            }
            other => return Err(self.fail(ChannelError::Malformed(format!("message kind {other}")))),
        }
        Ok(())
    }

    /// Posts waiting data messages while credits and send slots last, then an owed grant if no
    /// data message carried it.
    fn push_out(&mut self) -> Result<(), ChannelError> {
        while !self.waiting.is_empty() && self.sq_free() && self.ledger.try_consume(1) {
            let (len, buf) = self.waiting.pop_front().expect("checked non-empty");
            self.post_message(KIND_DATA, &buf[..usize::from(len)])?;
        }
        let grant_window_open = self.stats.grants_sent - self.peer_grants_seen < u64::from(self.config.grant_slots);
        if self.grant_owed && grant_window_open && self.sq_free() {
            self.post_message(KIND_GRANT, &[])?;
        }
        Ok(())
    }
}

impl<Q: QueuePair, C: CompletionQueue> std::fmt::Debug for ControlChannel<Q, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlChannel")
            .field("qp_num", &self.qp.qp_num())
            .field("config", &self.config)
            .field("credits_available", &self.ledger.available())
            .field("waiting", &self.waiting.len())
            .field("inbox", &self.inbox.len())
            .field("stats", &self.stats)
            .field("failed", &self.failed)
            .finish()
    }
}

#[cfg(test)]
mod tests;
