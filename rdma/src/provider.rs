//! The provider abstraction: what the transport needs from an RDMA implementation.
//!
//! A provider supplies four kinds of objects, mirroring the verbs objects of the same names:
//!
//! - a **protection domain** ([`ProtectionDomain`]) that creates the others;
//! - **memory regions** ([`MemoryRegion`]): memory the provider owns, registered for local and
//!   remote access, named by an address, a length, a local key and a remote key. Callers read and
//!   write it through bounds-checked accessors; the peer reads and writes it through RDMA Read and
//!   Write with the region's address and rkey;
//! - **completion queues** ([`CompletionQueue`]): polled for [`WorkCompletion`]s without blocking,
//!   or waited on with a timeout (a thread parks) or armed with a [`Waker`] (a task parks);
//! - **reliable-connected queue pairs** ([`QueuePair`]) with the verbs state machine:
//!
//! ```text
//!   RESET ──to_init──▶ INIT ──to_rtr(remote)──▶ RTR ──to_rts──▶ RTS
//!     ▲                  │                        │                │
//!     └──── reset ───────┴────────────────────────┴────────────────┤  (from any state)
//!                                                                   ▼
//!                                                                 ERROR  (to_error, or any failure)
//! ```
//!
//! Receives may be posted from INIT on (so they are in place before the peer can send); sends,
//! Reads and Writes only in RTS. Any other transition or post is an [`RdmaError`].
//!
//! Completion semantics follow RC verbs, and both providers honour them:
//!
//! - work requests on one queue complete in the order they were posted;
//! - an unsignaled send produces no completion on success, and its send-queue slot is only
//!   reclaimed when a later signaled send completes: a caller must signal at least once per
//!   send-queue depth;
//! - the first failure completes its work request with an error status (signaled or not), moves the
//!   queue pair to ERROR, and completes every other outstanding work request, send and receive,
//!   with [`WcStatus::WrFlushErr`]. A completion queue must therefore be deep enough for every work
//!   request that can be outstanding on the queues feeding it.

use std::fmt;
use std::task::Waker;
use std::time::Duration;

use thiserror::Error;

use crate::handshake::RegionDesc;

/// Errors from provider calls (as opposed to failed work requests, which are reported as
/// [`WorkCompletion`]s with an error [`WcStatus`]).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RdmaError {
    /// A queue-pair state transition the state machine does not allow.
    #[error("invalid queue-pair transition {from:?} -> {to:?}")]
    InvalidTransition {
        /// The current state.
        from: QpState,
        /// The state asked for.
        to: QpState,
    },
    /// A post in a state that does not accept it (sends need RTS, receives INIT, RTR or RTS).
    #[error("cannot post {what} in state {state:?}")]
    InvalidState {
        /// What was posted.
        what: &'static str,
        /// The queue pair's state.
        state: QpState,
    },
    /// The send or receive queue is full (verbs returns ENOMEM).
    #[error("{queue} queue full ({depth} outstanding)")]
    QueueFull {
        /// "send" or "receive".
        queue: &'static str,
        /// The queue's depth.
        depth: u32,
    },
    /// A local scatter/gather element outside its memory region.
    #[error("local range {offset}+{len} outside a region of {region_len} bytes")]
    OutOfBounds {
        /// Offset into the region.
        offset: usize,
        /// Length of the access.
        len: usize,
        /// The region's length.
        region_len: usize,
    },
    /// The completion queue overflowed: completions were lost and the queues feeding it are
    /// unusable (verbs reports this as an asynchronous CQ error).
    #[error("completion queue overrun (capacity {0})")]
    CqOverrun(usize),
    /// A setting out of range.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// An error from the underlying device or operating system.
    #[error("{op}: {message}")]
    Device {
        /// The operation that failed.
        op: &'static str,
        /// What the device or system said.
        message: String,
    },
}

/// A queue pair's state (the RC subset of `ibv_qp_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QpState {
    /// Just created, or reset: nothing can be posted.
    Reset,
    /// Initialised: receives can be posted.
    Init,
    /// Ready to receive: connected to the peer, incoming requests are served.
    Rtr,
    /// Ready to send: everything can be posted.
    Rts,
    /// Failed: outstanding work requests were flushed; only `reset` leaves this state.
    Error,
}

/// A work completion's status, named after `ibv_wc_status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WcStatus {
    /// `IBV_WC_SUCCESS`.
    Success,
    /// `IBV_WC_LOC_LEN_ERR`: a received message longer than the receive buffer.
    LocLenErr,
    /// `IBV_WC_LOC_QP_OP_ERR`: an internal queue-pair consistency error.
    LocQpOpErr,
    /// `IBV_WC_LOC_PROT_ERR`: a local buffer the region's keys do not cover.
    LocProtErr,
    /// `IBV_WC_WR_FLUSH_ERR`: flushed because the queue pair went to ERROR.
    WrFlushErr,
    /// `IBV_WC_REM_INV_REQ_ERR`: the responder refused the request (e.g. a Send longer than its
    /// receive buffer).
    RemInvReqErr,
    /// `IBV_WC_REM_ACCESS_ERR`: a Read or Write outside the remote region, or with a wrong rkey.
    RemAccessErr,
    /// `IBV_WC_REM_OP_ERR`: the responder could not complete the operation.
    RemOpErr,
    /// `IBV_WC_RETRY_EXC_ERR`: transport retries exhausted (peer unreachable).
    RetryExcErr,
    /// `IBV_WC_RNR_RETRY_EXC_ERR`: the responder had no receive posted and the
    /// receiver-not-ready retries ran out.
    RnrRetryExcErr,
    /// `IBV_WC_GENERAL_ERR`: any other failure (also used by fault injection).
    GeneralErr,
}

impl WcStatus {
    /// Whether the work request succeeded.
    pub fn is_success(self) -> bool {
        self == Self::Success
    }
}

/// What a completed work request was (`ibv_wc_opcode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WcOpcode {
    /// A Send.
    Send,
    /// An RDMA Write.
    RdmaWrite,
    /// An RDMA Read.
    RdmaRead,
    /// A receive (the peer's Send arrived).
    Recv,
}

/// One work completion.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct WorkCompletion {
    /// The work request's id, as posted.
    pub wr_id: u64,
    /// Success or the reason for failure.
    pub status: WcStatus,
    /// The kind of work request. Meaningful for successful completions; a flushed completion
    /// reports the opcode of the request it flushed in the soft provider, and may not in verbs.
    pub opcode: WcOpcode,
    /// Bytes received (receives) or transferred (Reads); zero for failures.
    pub byte_len: u32,
}

impl WorkCompletion {
    /// A zeroed completion, to initialise poll buffers.
    pub const EMPTY: Self = Self {
        wr_id: 0,
        status: WcStatus::Success,
        opcode: WcOpcode::Send,
        byte_len: 0,
    };
}

impl fmt::Debug for WorkCompletion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Wc({:#x} {:?} {:?} {}B)",
            self.wr_id, self.opcode, self.status, self.byte_len
        )
    }
}

/// A registered memory region.
pub trait MemoryRegion: Send + Sync {
    /// Length in bytes.
    fn len(&self) -> usize;
    /// Whether the region is empty (never, for a region a provider registered).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The address the peer names the region's first byte by (the virtual address in verbs).
    fn addr(&self) -> u64;
    /// The local key.
    fn lkey(&self) -> u32;
    /// The remote key the peer presents to read or write the region.
    fn rkey(&self) -> u32;
    /// Copies `out.len()` bytes starting at `offset` out of the region.
    fn read_at(&self, offset: usize, out: &mut [u8]) -> Result<(), RdmaError>;
    /// Copies `data` into the region at `offset`.
    fn write_at(&self, offset: usize, data: &[u8]) -> Result<(), RdmaError>;

    /// The descriptor to hand the peer (in the handshake) so it can read and write the region.
    fn desc(&self) -> RegionDesc {
        RegionDesc {
            addr: self.addr(),
            len: self.len() as u64,
            rkey: self.rkey(),
        }
    }

    /// The remote address of byte `offset` of this region, as the peer must name it.
    fn remote_at(&self, offset: usize) -> RemoteAddr {
        RemoteAddr {
            addr: self.addr() + offset as u64,
            rkey: self.rkey(),
        }
    }
}

/// Checks that `offset..offset + len` lies inside a region of `region_len` bytes.
pub fn check_range(offset: usize, len: usize, region_len: usize) -> Result<(), RdmaError> {
    match offset.checked_add(len) {
        Some(end) if end <= region_len => Ok(()),
        _ => Err(RdmaError::OutOfBounds {
            offset,
            len,
            region_len,
        }),
    }
}

/// A place in the peer's memory: an address inside one of its regions and that region's rkey.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RemoteAddr {
    /// The remote address (region address + offset).
    pub addr: u64,
    /// The remote region's rkey.
    pub rkey: u32,
}

/// A local buffer: `len` bytes at `offset` of a registered region (one scatter/gather element).
#[derive(Debug)]
pub struct Sge<'a, M> {
    /// The region.
    pub mr: &'a M,
    /// Byte offset into the region.
    pub offset: usize,
    /// Length in bytes.
    pub len: usize,
}

impl<M> Clone for Sge<'_, M> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<M> Copy for Sge<'_, M> {}

/// The operation of a send-queue work request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendOp {
    /// Two-sided Send: the local buffer goes into the peer's next posted receive.
    Send,
    /// One-sided Write: the local buffer is written to the peer's memory at `remote`.
    RdmaWrite {
        /// Where in the peer's memory.
        remote: RemoteAddr,
    },
    /// One-sided Read: the peer's memory at `remote` is read into the local buffer.
    RdmaRead {
        /// Where in the peer's memory.
        remote: RemoteAddr,
    },
}

/// A send-queue work request.
#[derive(Debug, Clone, Copy)]
pub struct SendWr<'a, M> {
    /// Returned in the completion.
    pub wr_id: u64,
    /// Send, Write or Read.
    pub op: SendOp,
    /// The local buffer (source of a Send or Write, destination of a Read).
    pub local: Sge<'a, M>,
    /// Whether a successful completion is reported (failures always are).
    pub signaled: bool,
}

/// A receive-queue work request: a buffer for one incoming Send.
#[derive(Debug, Clone, Copy)]
pub struct RecvWr<'a, M> {
    /// Returned in the completion.
    pub wr_id: u64,
    /// The buffer.
    pub local: Sge<'a, M>,
}

/// Sizes of a queue pair's queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QpCaps {
    /// Send-queue depth: send work requests outstanding (posted and not yet retired) at most.
    pub max_send_wr: u32,
    /// Receive-queue depth: receives posted and not yet completed at most.
    pub max_recv_wr: u32,
}

/// A completion queue.
pub trait CompletionQueue: Send + Sync {
    /// How many completions it holds before overrunning.
    fn capacity(&self) -> usize;
    /// Moves up to `out.len()` completions into `out`, oldest first, without blocking; returns how
    /// many. Never allocates.
    fn poll(&self, out: &mut [WorkCompletion]) -> Result<usize, RdmaError>;
    /// Blocks the calling thread until a completion is ready or `timeout` passes; returns whether
    /// one is ready. Spurious `true` is allowed (poll then finds nothing).
    fn wait(&self, timeout: Duration) -> Result<bool, RdmaError>;
    /// Wakes `waker` once, when the next completion arrives (or at once if one is ready): the
    /// `ibv_req_notify_cq` of a task that parks instead of a thread. The waker may be called from a
    /// provider thread holding provider locks: it must only schedule the task, never call back into
    /// the provider (every runtime's wakers behave so).
    fn arm(&self, waker: &Waker);
}

/// A reliable-connected queue pair.
pub trait QueuePair: Send + Sync {
    /// The provider's memory regions.
    type Mr: MemoryRegion;
    /// What `to_rtr` needs to connect to the peer: its address and queue-pair number for verbs, a
    /// link (in-process or TCP) for the soft provider.
    type Remote;

    /// The queue-pair number (24 bits), to put in the handshake.
    fn qp_num(&self) -> u32;
    /// The current state. It can change under the caller's feet to ERROR when a work request fails
    /// or the peer goes away.
    fn state(&self) -> QpState;
    /// The queue sizes.
    fn caps(&self) -> QpCaps;
    /// RESET → INIT.
    fn to_init(&self) -> Result<(), RdmaError>;
    /// INIT → RTR: connect to the peer.
    fn to_rtr(&self, remote: Self::Remote) -> Result<(), RdmaError>;
    /// RTR → RTS.
    fn to_rts(&self) -> Result<(), RdmaError>;
    /// Any state → ERROR: flushes every outstanding work request.
    fn to_error(&self) -> Result<(), RdmaError>;
    /// Any state → RESET: forgets every outstanding work request without completions.
    fn reset(&self) -> Result<(), RdmaError>;
    /// Posts a Send, Read or Write (RTS only).
    fn post_send(&self, wr: &SendWr<'_, Self::Mr>) -> Result<(), RdmaError>;
    /// Posts a receive buffer (INIT, RTR or RTS).
    fn post_recv(&self, wr: &RecvWr<'_, Self::Mr>) -> Result<(), RdmaError>;
}

/// A protection domain: creates and ties together regions, completion queues and queue pairs.
pub trait ProtectionDomain {
    /// Memory regions.
    type Mr: MemoryRegion;
    /// Completion queues.
    type Cq: CompletionQueue;
    /// Queue pairs.
    type Qp: QueuePair<Mr = Self::Mr>;

    /// Allocates and registers `len` zeroed bytes for local write, remote read and remote write.
    fn register(&self, len: usize) -> Result<Self::Mr, RdmaError>;
    /// Creates a completion queue of at least `capacity` entries.
    fn create_cq(&self, capacity: usize) -> Result<Self::Cq, RdmaError>;
    /// Creates an RC queue pair in RESET, reporting sends to `send_cq` and receives to `recv_cq`
    /// (they may be the same queue).
    fn create_qp(&self, send_cq: &Self::Cq, recv_cq: &Self::Cq, caps: QpCaps) -> Result<Self::Qp, RdmaError>;
}

/// The allowed transitions of [`QueuePair`]'s state machine (shared by the providers so they agree).
pub fn transition_allowed(from: QpState, to: QpState) -> bool {
    matches!(
        (from, to),
        (QpState::Reset, QpState::Init)
            | (QpState::Init, QpState::Rtr)
            | (QpState::Rtr, QpState::Rts)
            | (_, QpState::Error)
            | (_, QpState::Reset)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_machine_table() {
        use QpState::*;
        let all = [Reset, Init, Rtr, Rts, Error];
        for from in all {
            for to in all {
                let expected = matches!(
                    (from, to),
                    (Reset, Init) | (Init, Rtr) | (Rtr, Rts) | (_, Error) | (_, Reset)
                );
                assert_eq!(transition_allowed(from, to), expected, "{from:?} -> {to:?}");
            }
        }
    }

    #[test]
    fn range_checks() {
        assert!(check_range(0, 10, 10).is_ok());
        assert!(check_range(10, 0, 10).is_ok());
        assert!(check_range(1, 10, 10).is_err());
        assert!(check_range(usize::MAX, 2, 10).is_err());
    }
}
