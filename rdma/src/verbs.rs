//! The hardware provider, over libibverbs through `rdma-sys` (cargo feature `verbs`).
//!
//! It implements the same traits as the [soft provider](crate::soft) with RC queue pairs:
//!
//! - [`VerbsPd::open`] picks a device by name (or the first one), a port and a GID index
//!   ([`VerbsConfig`]), and allocates the protection domain;
//! - regions are page-aligned allocations owned by the provider, registered for local write,
//!   remote read and remote write, read and written by copies (never through Rust references, since
//!   the NIC writes them behind the compiler's back);
//! - completion queues have a completion channel, so [`CompletionQueue::wait`] sleeps in `poll(2)`
//!   on its descriptor instead of spinning. [`CompletionQueue::arm`] cannot hand the descriptor to
//!   an async runtime (glommio has no public way to await an arbitrary fd), so it wakes the task at
//!   once: a task on verbs polls and yields, and parks only when it has nothing outstanding;
//! - queue pairs take the settings others found to work: timeout 14 (about 67 ms), retry count
//!   7, minimum RNR timer 12 (0.64 ms), and a *finite* RNR retry count of 6, since 7 means "retry
//!   forever" and hangs a connection whose receiver stopped posting.
//!
//! Posting checks the state this side last moved the queue pair to. The NIC can move it to ERROR
//! on its own; verbs then accepts posts and completes them with [`WcStatus::WrFlushErr`], which is
//! how a caller learns of it. [`QueuePair::state`] asks the device.
//!
//! Nothing here can run without an RDMA device; the tests that need one are `#[ignore]`d and say
//! so, and the others check that the absence of devices is reported cleanly.

use std::alloc::{self, Layout};
use std::collections::VecDeque;
use std::ffi::{CStr, CString};
use std::io;
use std::ptr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::Duration;

use rdma_sys::*;

use crate::handshake::{Handshake, Mtu};
use crate::provider::{
    check_range, transition_allowed, CompletionQueue, MemoryRegion, ProtectionDomain, QpCaps, QpState, QueuePair,
    RdmaError, RecvWr, SendOp, SendWr, WcOpcode, WcStatus, WorkCompletion,
};

/// Device and queue-pair settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerbsConfig {
    /// The device's name (`ibv_devices` lists them); `None` takes the first device.
    pub device: Option<String>,
    /// The port, from 1.
    pub port: u8,
    /// The GID index (RoCE v2 addresses are usually at 1 or 3).
    pub gid_index: u8,
    /// The path MTU.
    pub mtu: Mtu,
    /// Local ACK timeout exponent: 4.096 µs × 2^timeout.
    pub timeout: u8,
    /// Transport retries before `RETRY_EXC_ERR`.
    pub retry_cnt: u8,
    /// Receiver-not-ready retries before `RNR_RETRY_EXC_ERR`; at most 6 (7 is infinite).
    pub rnr_retry: u8,
    /// Minimum RNR NAK timer code (12 = 0.64 ms).
    pub min_rnr_timer: u8,
    /// Outstanding RDMA Reads per queue pair, both directions.
    pub max_rd_atomic: u8,
}

impl Default for VerbsConfig {
    fn default() -> Self {
        Self {
            device: None,
            port: 1,
            gid_index: 0,
            mtu: Mtu::Mtu4096,
            timeout: 14,
            retry_cnt: 7,
            rnr_retry: 6,
            min_rnr_timer: 12,
            max_rd_atomic: 16,
        }
    }
}

fn os_error(op: &'static str) -> RdmaError {
    RdmaError::Device {
        op,
        message: io::Error::last_os_error().to_string(),
    }
}

fn rc_error(op: &'static str, rc: i32) -> RdmaError {
    RdmaError::Device {
        op,
        message: io::Error::from_raw_os_error(rc.abs()).to_string(),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The names of the RDMA devices present; empty when there are none (or no kernel support).
pub fn device_names() -> Vec<String> {
    let mut count = 0;
    // SAFETY: `count` is a valid out-pointer; the list is freed below and not used after.
    let list = unsafe { ibv_get_device_list(&mut count) };
    if list.is_null() {
        return Vec::new();
    }
    let names = (0..usize::try_from(count).unwrap_or(0))
        .map(|i| {
            // SAFETY: `list` holds `count` valid device pointers until it is freed; the name is a
            // NUL-terminated string owned by the device, copied out before the free.
            unsafe { CStr::from_ptr(ibv_get_device_name(*list.add(i))) }
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    // SAFETY: `list` came from ibv_get_device_list and is freed once.
    unsafe { ibv_free_device_list(list) };
    names
}

/// The opened device and its protection domain, shared by everything created from them so they
/// are torn down last.
#[derive(Debug)]
struct Device {
    context: *mut ibv_context,
    pd: *mut ibv_pd,
    config: VerbsConfig,
    gid: [u8; 16],
    lid: u16,
}

// SAFETY: libibverbs objects may be used from any thread; the library locks internally where
// its objects are shared (the verbs API is documented thread-safe).
unsafe impl Send for Device {}
// SAFETY: as above; `Device` has no interior state of its own besides the handles.
unsafe impl Sync for Device {}

impl Drop for Device {
    fn drop(&mut self) {
        // SAFETY: both handles are valid and every object created from them holds an `Arc` to this
        // device, so they are all gone by now.
        unsafe {
            ibv_dealloc_pd(self.pd);
            ibv_close_device(self.context);
        }
    }
}

/// A verbs protection domain on one device port.
#[derive(Debug, Clone)]
pub struct VerbsPd {
    device: Arc<Device>,
}

impl VerbsPd {
    /// Opens the device, checks the port, reads its GID and LID, allocates a protection domain.
    pub fn open(config: VerbsConfig) -> Result<Self, RdmaError> {
        if config.rnr_retry > 6 {
            return Err(RdmaError::InvalidConfig(format!(
                "rnr_retry {} (7 retries forever)",
                config.rnr_retry
            )));
        }
        let wanted = config
            .device
            .as_deref()
            .map(CString::new)
            .transpose()
            .map_err(|_| RdmaError::InvalidConfig("device name contains NUL".into()))?;
        let mut count = 0;
        // SAFETY: `count` is a valid out-pointer; the list is freed before returning.
        let list = unsafe { ibv_get_device_list(&mut count) };
        if list.is_null() || count <= 0 {
            if !list.is_null() {
                // SAFETY: freed once, not used after.
                unsafe { ibv_free_device_list(list) };
            }
            return Err(RdmaError::Device {
                op: "ibv_get_device_list",
                message: "no RDMA devices".into(),
            });
        }
        let mut chosen = ptr::null_mut();
        for i in 0..count as usize {
            // SAFETY: `list` holds `count` valid device pointers until freed.
            let device = unsafe { *list.add(i) };
            // SAFETY: the device's name is a valid NUL-terminated string while the list lives.
            let name = unsafe { CStr::from_ptr(ibv_get_device_name(device)) };
            let matches = match &wanted {
                None => true,
                Some(w) => w.as_c_str() == name,
            };
            if matches {
                chosen = device;
                break;
            }
        }
        // SAFETY: a device from the list may be opened while the list is alive.
        let context = if chosen.is_null() {
            ptr::null_mut()
        } else {
            unsafe { ibv_open_device(chosen) }
        };
        // SAFETY: the list is freed once; an opened context stays valid after the free.
        unsafe { ibv_free_device_list(list) };
        if chosen.is_null() {
            return Err(RdmaError::InvalidConfig(format!(
                "no RDMA device named {:?}",
                config.device
            )));
        }
        if context.is_null() {
            return Err(os_error("ibv_open_device"));
        }
        // SAFETY: all-zero is a valid ibv_port_attr (plain integers), filled by the query.
        let mut port_attr: ibv_port_attr = unsafe { std::mem::zeroed() };
        // SAFETY: `context` is open and `port_attr` is a valid out-pointer.
        let rc = unsafe { ___ibv_query_port(context, config.port, &mut port_attr) };
        let mut gid = ibv_gid { raw: [0; 16] };
        // SAFETY: as above, `gid` is a valid out-pointer.
        let rc_gid = if rc == 0 {
            unsafe { ibv_query_gid(context, config.port, i32::from(config.gid_index), &mut gid) }
        } else {
            rc
        };
        // SAFETY: `context` is open.
        let pd = if rc_gid == 0 {
            unsafe { ibv_alloc_pd(context) }
        } else {
            ptr::null_mut()
        };
        if pd.is_null() {
            let err = if rc != 0 {
                rc_error("ibv_query_port", rc)
            } else if rc_gid != 0 {
                rc_error("ibv_query_gid", rc_gid)
            } else {
                os_error("ibv_alloc_pd")
            };
            // SAFETY: opened above, closed once.
            unsafe { ibv_close_device(context) };
            return Err(err);
        }
        Ok(Self {
            device: Arc::new(Device {
                context,
                pd,
                // SAFETY: every bit pattern of the union is a valid byte array.
                gid: unsafe { gid.raw },
                lid: port_attr.lid,
                config,
            }),
        })
    }

    /// The port's GID (for the handshake).
    pub fn gid(&self) -> [u8; 16] {
        self.device.gid
    }

    /// The port's LID (for the handshake; 0 on RoCE).
    pub fn lid(&self) -> u16 {
        self.device.lid
    }
}

impl ProtectionDomain for VerbsPd {
    type Mr = VerbsMr;
    type Cq = VerbsCq;
    type Qp = VerbsQp;

    fn register(&self, len: usize) -> Result<VerbsMr, RdmaError> {
        let layout = Layout::from_size_align(len.max(1), 4096)
            .map_err(|e| RdmaError::InvalidConfig(format!("region of {len} bytes: {e}")))?;
        if len == 0 {
            return Err(RdmaError::InvalidConfig("zero-length region".into()));
        }
        // SAFETY: the layout has a non-zero size.
        let buf = unsafe { alloc::alloc_zeroed(layout) };
        if buf.is_null() {
            return Err(RdmaError::Device {
                op: "allocate region",
                message: format!("out of memory for {len} bytes"),
            });
        }
        let access = ibv_access_flags::IBV_ACCESS_LOCAL_WRITE
            | ibv_access_flags::IBV_ACCESS_REMOTE_WRITE
            | ibv_access_flags::IBV_ACCESS_REMOTE_READ;
        // SAFETY: `buf` points to `len` writable bytes that outlive the registration (freed in
        // `Drop` after deregistering); the protection domain is valid.
        let mr = unsafe { ibv_reg_mr(self.device.pd, buf.cast(), len, access.0 as i32) };
        if mr.is_null() {
            let err = os_error("ibv_reg_mr");
            // SAFETY: allocated above with this layout, not registered, freed once.
            unsafe { alloc::dealloc(buf, layout) };
            return Err(err);
        }
        Ok(VerbsMr {
            _device: self.device.clone(),
            mr,
            buf,
            layout,
            len,
        })
    }

    fn create_cq(&self, capacity: usize) -> Result<VerbsCq, RdmaError> {
        let entries = i32::try_from(capacity)
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| RdmaError::InvalidConfig(format!("completion queue of {capacity}")))?;
        // SAFETY: the context is open.
        let channel = unsafe { ibv_create_comp_channel(self.device.context) };
        if channel.is_null() {
            return Err(os_error("ibv_create_comp_channel"));
        }
        // SAFETY: the context and channel are valid; no per-CQ context pointer is used.
        let cq = unsafe { ibv_create_cq(self.device.context, entries, ptr::null_mut(), channel, 0) };
        if cq.is_null() {
            let err = os_error("ibv_create_cq");
            // SAFETY: created above, no CQ uses it, destroyed once.
            unsafe { ibv_destroy_comp_channel(channel) };
            return Err(err);
        }
        Ok(VerbsCq {
            inner: Arc::new(CqRaw {
                _device: self.device.clone(),
                channel,
                cq,
                capacity,
                stash: Mutex::new(VecDeque::new()),
            }),
        })
    }

    fn create_qp(&self, send_cq: &VerbsCq, recv_cq: &VerbsCq, caps: QpCaps) -> Result<VerbsQp, RdmaError> {
        // SAFETY: all-zero is a valid ibv_qp_init_attr (null pointers, zero counts).
        let mut init: ibv_qp_init_attr = unsafe { std::mem::zeroed() };
        init.send_cq = send_cq.inner.cq;
        init.recv_cq = recv_cq.inner.cq;
        init.cap.max_send_wr = caps.max_send_wr;
        init.cap.max_recv_wr = caps.max_recv_wr;
        init.cap.max_send_sge = 1;
        init.cap.max_recv_sge = 1;
        init.qp_type = ibv_qp_type::IBV_QPT_RC;
        init.sq_sig_all = 0;
        // SAFETY: the protection domain and both CQs are valid and outlive the QP (it holds them).
        let qp = unsafe { ibv_create_qp(self.device.pd, &mut init) };
        if qp.is_null() {
            return Err(os_error("ibv_create_qp"));
        }
        Ok(VerbsQp {
            device: self.device.clone(),
            _cqs: [send_cq.inner.clone(), recv_cq.inner.clone()],
            qp,
            caps,
            // SAFETY: `qp` is valid; qp_num is set at creation and never changes.
            qp_num: unsafe { (*qp).qp_num },
            state: Mutex::new(QpState::Reset),
            psn: Mutex::new(0),
        })
    }
}

/// A registered region: page-aligned memory owned by the provider.
#[derive(Debug)]
pub struct VerbsMr {
    _device: Arc<Device>,
    mr: *mut ibv_mr,
    buf: *mut u8,
    layout: Layout,
    len: usize,
}

// SAFETY: the region is plain memory plus a verbs handle; accesses are bounds-checked copies.
unsafe impl Send for VerbsMr {}
// SAFETY: as above. Concurrent copies into overlapping ranges race like the NIC's DMA does; the
// protocol orders them by completions, and no Rust reference to the bytes is ever created.
unsafe impl Sync for VerbsMr {}

impl Drop for VerbsMr {
    fn drop(&mut self) {
        // SAFETY: deregistered once, then the memory the NIC could reach is freed with the layout
        // it was allocated with.
        unsafe {
            ibv_dereg_mr(self.mr);
            alloc::dealloc(self.buf, self.layout);
        }
    }
}

impl MemoryRegion for VerbsMr {
    fn len(&self) -> usize {
        self.len
    }
    fn addr(&self) -> u64 {
        self.buf as u64
    }
    fn lkey(&self) -> u32 {
        // SAFETY: `mr` is valid until drop; lkey never changes.
        unsafe { (*self.mr).lkey }
    }
    fn rkey(&self) -> u32 {
        // SAFETY: as above.
        unsafe { (*self.mr).rkey }
    }
    fn read_at(&self, offset: usize, out: &mut [u8]) -> Result<(), RdmaError> {
        check_range(offset, out.len(), self.len)?;
        // SAFETY: the range is inside the allocation (checked), which lives as long as `self`;
        // `out` is a distinct Rust buffer.
        unsafe { ptr::copy_nonoverlapping(self.buf.add(offset), out.as_mut_ptr(), out.len()) };
        Ok(())
    }
    fn write_at(&self, offset: usize, data: &[u8]) -> Result<(), RdmaError> {
        check_range(offset, data.len(), self.len)?;
        // SAFETY: as in `read_at`, in the other direction.
        unsafe { ptr::copy_nonoverlapping(data.as_ptr(), self.buf.add(offset), data.len()) };
        Ok(())
    }
}

#[derive(Debug)]
struct CqRaw {
    _device: Arc<Device>,
    channel: *mut ibv_comp_channel,
    cq: *mut ibv_cq,
    capacity: usize,
    /// Completions polled by `wait` (to close the race between arming and sleeping), handed out by
    /// the next `poll`.
    stash: Mutex<VecDeque<WorkCompletion>>,
}

// SAFETY: see `Device`; polling one CQ from several threads is serialised by libibverbs.
unsafe impl Send for CqRaw {}
// SAFETY: as above.
unsafe impl Sync for CqRaw {}

impl Drop for CqRaw {
    fn drop(&mut self) {
        // SAFETY: every QP using the CQ holds an `Arc` to it, so none is left; events were acked as
        // they were read; each handle is destroyed once, the CQ before its channel.
        unsafe {
            ibv_destroy_cq(self.cq);
            ibv_destroy_comp_channel(self.channel);
        }
    }
}

/// A verbs completion queue with its completion channel.
#[derive(Debug, Clone)]
pub struct VerbsCq {
    inner: Arc<CqRaw>,
}

fn convert(wc: &ibv_wc) -> WorkCompletion {
    let status = match wc.status {
        ibv_wc_status::IBV_WC_SUCCESS => WcStatus::Success,
        ibv_wc_status::IBV_WC_LOC_LEN_ERR => WcStatus::LocLenErr,
        ibv_wc_status::IBV_WC_LOC_QP_OP_ERR => WcStatus::LocQpOpErr,
        ibv_wc_status::IBV_WC_LOC_PROT_ERR => WcStatus::LocProtErr,
        ibv_wc_status::IBV_WC_WR_FLUSH_ERR => WcStatus::WrFlushErr,
        ibv_wc_status::IBV_WC_REM_INV_REQ_ERR => WcStatus::RemInvReqErr,
        ibv_wc_status::IBV_WC_REM_ACCESS_ERR => WcStatus::RemAccessErr,
        ibv_wc_status::IBV_WC_REM_OP_ERR => WcStatus::RemOpErr,
        ibv_wc_status::IBV_WC_RETRY_EXC_ERR => WcStatus::RetryExcErr,
        ibv_wc_status::IBV_WC_RNR_RETRY_EXC_ERR => WcStatus::RnrRetryExcErr,
        _ => WcStatus::GeneralErr,
    };
    let opcode = match wc.opcode {
        ibv_wc_opcode::IBV_WC_RDMA_WRITE => WcOpcode::RdmaWrite,
        ibv_wc_opcode::IBV_WC_RDMA_READ => WcOpcode::RdmaRead,
        ibv_wc_opcode::IBV_WC_RECV => WcOpcode::Recv,
        _ => WcOpcode::Send,
    };
    WorkCompletion {
        wr_id: wc.wr_id,
        status,
        opcode,
        byte_len: wc.byte_len,
    }
}

impl CqRaw {
    fn poll_raw(&self, out: &mut [WorkCompletion]) -> Result<usize, RdmaError> {
        const BATCH: usize = 16;
        let mut done = 0;
        while done < out.len() {
            // SAFETY: all-zero is a valid ibv_wc (integers and a union of integers).
            let mut wcs: [ibv_wc; BATCH] = unsafe { std::mem::zeroed() };
            let want = (out.len() - done).min(BATCH) as i32;
            // SAFETY: the CQ is valid and `wcs` has room for `want` entries.
            let n = unsafe { ibv_poll_cq(self.cq, want, wcs.as_mut_ptr()) };
            if n < 0 {
                return Err(rc_error("ibv_poll_cq", n));
            }
            for wc in &wcs[..n as usize] {
                out[done] = convert(wc);
                done += 1;
            }
            if n < want {
                break;
            }
        }
        Ok(done)
    }
}

impl CompletionQueue for VerbsCq {
    fn capacity(&self) -> usize {
        self.inner.capacity
    }

    fn poll(&self, out: &mut [WorkCompletion]) -> Result<usize, RdmaError> {
        let mut stash = lock(&self.inner.stash);
        let mut n = 0;
        while n < out.len() {
            let Some(wc) = stash.pop_front() else { break };
            out[n] = wc;
            n += 1;
        }
        drop(stash);
        Ok(n + self.inner.poll_raw(&mut out[n..])?)
    }

    fn wait(&self, timeout: Duration) -> Result<bool, RdmaError> {
        let inner = &self.inner;
        if !lock(&inner.stash).is_empty() {
            return Ok(true);
        }
        // Arm first, then look: a completion that arrived before arming is found by the poll, one
        // after it raises an event.
        // SAFETY: the CQ is valid.
        let rc = unsafe { ibv_req_notify_cq(inner.cq, 0) };
        if rc != 0 {
            return Err(rc_error("ibv_req_notify_cq", rc));
        }
        let mut one = [WorkCompletion::EMPTY; 1];
        if inner.poll_raw(&mut one)? == 1 {
            lock(&inner.stash).push_back(one[0]);
            return Ok(true);
        }
        let mut pfd = libc::pollfd {
            // SAFETY: the channel is valid while `inner` lives.
            fd: unsafe { (*inner.channel).fd },
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: `pfd` is one valid pollfd.
        let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
        if ready < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                return Ok(false);
            }
            return Err(RdmaError::Device {
                op: "poll completion channel",
                message: err.to_string(),
            });
        }
        if ready == 0 {
            return Ok(false);
        }
        let mut cq = ptr::null_mut();
        let mut context = ptr::null_mut();
        // SAFETY: the channel is readable, so this does not block; the out-pointers are valid.
        let rc = unsafe { ibv_get_cq_event(inner.channel, &mut cq, &mut context) };
        if rc != 0 {
            return Err(os_error("ibv_get_cq_event"));
        }
        // SAFETY: one event was read from this CQ; acking it lets the CQ be destroyed later.
        unsafe { ibv_ack_cq_events(cq, 1) };
        Ok(true)
    }

    fn arm(&self, waker: &Waker) {
        // No way to register the channel's descriptor with the runtime: let the task poll again.
        waker.wake_by_ref();
    }
}

/// Where the peer's queue pair is: what `to_rtr` needs, taken from its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerbsRemote {
    /// The peer's queue-pair number.
    pub qp_num: u32,
    /// The peer's initial packet sequence number.
    pub psn: u32,
    /// The peer's GID.
    pub gid: [u8; 16],
    /// The peer's LID (InfiniBand).
    pub lid: u16,
    /// The path MTU (the smaller of both ends').
    pub mtu: Mtu,
    /// This side's initial packet sequence number (the one sent in its own handshake).
    pub local_psn: u32,
}

impl VerbsRemote {
    /// From the peer's handshake and the PSN this side announced in its own.
    pub fn from_handshake(peer: &Handshake, local_psn: u32, local_mtu: Mtu) -> Self {
        Self {
            qp_num: peer.qp_num,
            psn: peer.psn,
            gid: peer.gid,
            lid: peer.lid,
            mtu: peer.mtu.min(local_mtu),
            local_psn,
        }
    }
}

/// A verbs RC queue pair.
#[derive(Debug)]
pub struct VerbsQp {
    device: Arc<Device>,
    _cqs: [Arc<CqRaw>; 2],
    qp: *mut ibv_qp,
    caps: QpCaps,
    qp_num: u32,
    /// The state this side last moved the queue pair to.
    state: Mutex<QpState>,
    /// This side's initial send PSN, learned at RTR, applied at RTS.
    psn: Mutex<u32>,
}

// SAFETY: see `Device`; posting and modifying are thread-safe in libibverbs.
unsafe impl Send for VerbsQp {}
// SAFETY: as above; the cached state is behind a mutex.
unsafe impl Sync for VerbsQp {}

impl Drop for VerbsQp {
    fn drop(&mut self) {
        // SAFETY: the QP is valid and destroyed once; its CQs and device outlive it (held above).
        unsafe { ibv_destroy_qp(self.qp) };
    }
}

fn verbs_state(state: QpState) -> ibv_qp_state::Type {
    match state {
        QpState::Reset => ibv_qp_state::IBV_QPS_RESET,
        QpState::Init => ibv_qp_state::IBV_QPS_INIT,
        QpState::Rtr => ibv_qp_state::IBV_QPS_RTR,
        QpState::Rts => ibv_qp_state::IBV_QPS_RTS,
        QpState::Error => ibv_qp_state::IBV_QPS_ERR,
    }
}

fn verbs_mtu(mtu: Mtu) -> ibv_mtu::Type {
    mtu as u8 as ibv_mtu::Type
}

impl VerbsQp {
    fn modify(&self, to: QpState, fill: impl FnOnce(&mut ibv_qp_attr) -> ibv_qp_attr_mask) -> Result<(), RdmaError> {
        let mut state = lock(&self.state);
        if !transition_allowed(*state, to) {
            return Err(RdmaError::InvalidTransition { from: *state, to });
        }
        // SAFETY: all-zero is a valid ibv_qp_attr (integers and a plain address struct).
        let mut attr: ibv_qp_attr = unsafe { std::mem::zeroed() };
        attr.qp_state = verbs_state(to);
        let mask = ibv_qp_attr_mask::IBV_QP_STATE.0 | fill(&mut attr).0;
        // SAFETY: the QP is valid and `attr` is initialised for every bit in `mask`.
        let rc = unsafe { ibv_modify_qp(self.qp, &mut attr, mask as i32) };
        if rc != 0 {
            return Err(rc_error("ibv_modify_qp", rc));
        }
        *state = to;
        Ok(())
    }

    fn check_post(&self, what: &'static str, allowed: &[QpState]) -> Result<(), RdmaError> {
        let state = *lock(&self.state);
        if allowed.contains(&state) {
            Ok(())
        } else {
            Err(RdmaError::InvalidState { what, state })
        }
    }
}

fn sge<M: MemoryRegion>(local: &crate::provider::Sge<'_, M>) -> Result<ibv_sge, RdmaError> {
    check_range(local.offset, local.len, local.mr.len())?;
    Ok(ibv_sge {
        addr: local.mr.addr() + local.offset as u64,
        length: u32::try_from(local.len)
            .map_err(|_| RdmaError::InvalidConfig(format!("transfer of {} bytes", local.len)))?,
        lkey: local.mr.lkey(),
    })
}

impl QueuePair for VerbsQp {
    type Mr = VerbsMr;
    type Remote = VerbsRemote;

    fn qp_num(&self) -> u32 {
        self.qp_num
    }

    fn state(&self) -> QpState {
        // SAFETY: all-zero attribute structs are valid; the QP is valid.
        let (rc, attr) = unsafe {
            let mut attr: ibv_qp_attr = std::mem::zeroed();
            let mut init: ibv_qp_init_attr = std::mem::zeroed();
            let rc = ibv_query_qp(self.qp, &mut attr, ibv_qp_attr_mask::IBV_QP_STATE.0 as i32, &mut init);
            (rc, attr)
        };
        if rc != 0 {
            return *lock(&self.state);
        }
        match attr.qp_state {
            ibv_qp_state::IBV_QPS_RESET => QpState::Reset,
            ibv_qp_state::IBV_QPS_INIT => QpState::Init,
            ibv_qp_state::IBV_QPS_RTR => QpState::Rtr,
            ibv_qp_state::IBV_QPS_RTS => QpState::Rts,
            _ => QpState::Error,
        }
    }

    fn caps(&self) -> QpCaps {
        self.caps
    }

    fn to_init(&self) -> Result<(), RdmaError> {
        let port = self.device.config.port;
        self.modify(QpState::Init, |attr| {
            attr.pkey_index = 0;
            attr.port_num = port;
            attr.qp_access_flags = (ibv_access_flags::IBV_ACCESS_LOCAL_WRITE
                | ibv_access_flags::IBV_ACCESS_REMOTE_READ
                | ibv_access_flags::IBV_ACCESS_REMOTE_WRITE)
                .0;
            ibv_qp_attr_mask(
                ibv_qp_attr_mask::IBV_QP_PKEY_INDEX.0
                    | ibv_qp_attr_mask::IBV_QP_PORT.0
                    | ibv_qp_attr_mask::IBV_QP_ACCESS_FLAGS.0,
            )
        })
    }

    fn to_rtr(&self, remote: VerbsRemote) -> Result<(), RdmaError> {
        let config = &self.device.config;
        self.modify(QpState::Rtr, |attr| {
            attr.path_mtu = verbs_mtu(remote.mtu);
            attr.dest_qp_num = remote.qp_num;
            attr.rq_psn = remote.psn;
            attr.max_dest_rd_atomic = config.max_rd_atomic;
            attr.min_rnr_timer = config.min_rnr_timer;
            attr.ah_attr.dlid = remote.lid;
            attr.ah_attr.sl = 0;
            attr.ah_attr.src_path_bits = 0;
            attr.ah_attr.port_num = config.port;
            if remote.gid != [0; 16] {
                attr.ah_attr.is_global = 1;
                attr.ah_attr.grh.dgid = ibv_gid { raw: remote.gid };
                attr.ah_attr.grh.sgid_index = config.gid_index;
                attr.ah_attr.grh.hop_limit = 1;
            }
            ibv_qp_attr_mask(
                ibv_qp_attr_mask::IBV_QP_AV.0
                    | ibv_qp_attr_mask::IBV_QP_PATH_MTU.0
                    | ibv_qp_attr_mask::IBV_QP_DEST_QPN.0
                    | ibv_qp_attr_mask::IBV_QP_RQ_PSN.0
                    | ibv_qp_attr_mask::IBV_QP_MAX_DEST_RD_ATOMIC.0
                    | ibv_qp_attr_mask::IBV_QP_MIN_RNR_TIMER.0,
            )
        })?;
        *lock(&self.psn) = remote.local_psn;
        Ok(())
    }

    fn to_rts(&self) -> Result<(), RdmaError> {
        let config = &self.device.config;
        let psn = *lock(&self.psn);
        self.modify(QpState::Rts, |attr| {
            attr.timeout = config.timeout;
            attr.retry_cnt = config.retry_cnt;
            attr.rnr_retry = config.rnr_retry;
            attr.sq_psn = psn;
            attr.max_rd_atomic = config.max_rd_atomic;
            ibv_qp_attr_mask(
                ibv_qp_attr_mask::IBV_QP_TIMEOUT.0
                    | ibv_qp_attr_mask::IBV_QP_RETRY_CNT.0
                    | ibv_qp_attr_mask::IBV_QP_RNR_RETRY.0
                    | ibv_qp_attr_mask::IBV_QP_SQ_PSN.0
                    | ibv_qp_attr_mask::IBV_QP_MAX_QP_RD_ATOMIC.0,
            )
        })
    }

    fn to_error(&self) -> Result<(), RdmaError> {
        self.modify(QpState::Error, |_| ibv_qp_attr_mask(0))
    }

    fn reset(&self) -> Result<(), RdmaError> {
        self.modify(QpState::Reset, |_| ibv_qp_attr_mask(0))
    }

    fn post_send(&self, wr: &SendWr<'_, VerbsMr>) -> Result<(), RdmaError> {
        self.check_post("send", &[QpState::Rts])?;
        let mut sg = sge(&wr.local)?;
        // SAFETY: all-zero is a valid ibv_send_wr (null pointers, zero flags, union of integers).
        let mut swr: ibv_send_wr = unsafe { std::mem::zeroed() };
        swr.wr_id = wr.wr_id;
        swr.sg_list = &mut sg;
        swr.num_sge = 1;
        swr.send_flags = if wr.signaled {
            ibv_send_flags::IBV_SEND_SIGNALED.0
        } else {
            0
        };
        match wr.op {
            SendOp::Send => swr.opcode = ibv_wr_opcode::IBV_WR_SEND,
            SendOp::RdmaWrite { remote } | SendOp::RdmaRead { remote } => {
                swr.opcode = if matches!(wr.op, SendOp::RdmaWrite { .. }) {
                    ibv_wr_opcode::IBV_WR_RDMA_WRITE
                } else {
                    ibv_wr_opcode::IBV_WR_RDMA_READ
                };
                swr.wr.rdma = rdma_t {
                    remote_addr: remote.addr,
                    rkey: remote.rkey,
                };
            }
        }
        let mut bad = ptr::null_mut();
        // SAFETY: the QP is valid; `swr` and `sg` live across the call, which copies them into
        // the send queue; the buffer they name is registered (lkey) and inside its region.
        let rc = unsafe { ibv_post_send(self.qp, &mut swr, &mut bad) };
        match rc {
            0 => Ok(()),
            libc::ENOMEM => Err(RdmaError::QueueFull {
                queue: "send",
                depth: self.caps.max_send_wr,
            }),
            rc => Err(rc_error("ibv_post_send", rc)),
        }
    }

    fn post_recv(&self, wr: &RecvWr<'_, VerbsMr>) -> Result<(), RdmaError> {
        self.check_post("receive", &[QpState::Init, QpState::Rtr, QpState::Rts])?;
        let mut sg = sge(&wr.local)?;
        let mut rwr = ibv_recv_wr {
            wr_id: wr.wr_id,
            next: ptr::null_mut(),
            sg_list: &mut sg,
            num_sge: 1,
        };
        let mut bad = ptr::null_mut();
        // SAFETY: as in `post_send`.
        let rc = unsafe { ibv_post_recv(self.qp, &mut rwr, &mut bad) };
        match rc {
            0 => Ok(()),
            libc::ENOMEM => Err(RdmaError::QueueFull {
                queue: "receive",
                depth: self.caps.max_recv_wr,
            }),
            rc => Err(rc_error("ibv_post_recv", rc)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::Sge;
    use std::time::Duration;

    /// Whether a device exists; prints why a test is skipped when not.
    fn device_or_skip(test: &str) -> bool {
        let names = device_names();
        if names.is_empty() {
            eprintln!("SKIPPED {test}: no RDMA device (ibv_get_device_list found none); it did not run");
            return false;
        }
        eprintln!("{test}: RDMA devices {names:?}");
        true
    }

    #[test]
    fn no_device_is_reported_not_crashed() {
        let names = device_names();
        eprintln!("RDMA devices: {names:?}");
        if names.is_empty() {
            let err = VerbsPd::open(VerbsConfig::default()).unwrap_err();
            assert!(matches!(err, RdmaError::Device { .. }), "{err:?}");
        }
        assert!(VerbsPd::open(VerbsConfig {
            rnr_retry: 7,
            ..VerbsConfig::default()
        })
        .is_err());
    }

    #[test]
    #[ignore = "needs an RDMA device"]
    fn loopback_send_write_read_on_a_device() {
        if !device_or_skip("loopback_send_write_read_on_a_device") {
            panic!("no RDMA device: this test cannot run here");
        }
        let pd = VerbsPd::open(VerbsConfig::default()).unwrap();
        let caps = QpCaps {
            max_send_wr: 16,
            max_recv_wr: 16,
        };
        let (ca, cb) = (pd.create_cq(64).unwrap(), pd.create_cq(64).unwrap());
        let (qa, qb) = (
            pd.create_qp(&ca, &ca, caps).unwrap(),
            pd.create_qp(&cb, &cb, caps).unwrap(),
        );
        let (ma, mb) = (pd.register(8 << 20).unwrap(), pd.register(8 << 20).unwrap());
        let remote = |q: &VerbsQp| VerbsRemote {
            qp_num: q.qp_num(),
            psn: 0,
            gid: pd.gid(),
            lid: pd.lid(),
            mtu: Mtu::Mtu1024,
            local_psn: 0,
        };
        for (q, peer) in [(&qa, remote(&qb)), (&qb, remote(&qa))] {
            q.to_init().unwrap();
            q.to_rtr(peer).unwrap();
            q.to_rts().unwrap();
        }
        let next = |cq: &VerbsCq| {
            assert!(cq.wait(Duration::from_secs(5)).unwrap());
            let mut wc = [WorkCompletion::EMPTY; 1];
            let mut n = cq.poll(&mut wc).unwrap();
            while n == 0 {
                n = cq.poll(&mut wc).unwrap();
            }
            wc[0]
        };
        qb.post_recv(&RecvWr {
            wr_id: 1,
            local: Sge {
                mr: &mb,
                offset: 0,
                len: 64,
            },
        })
        .unwrap();
        ma.write_at(0, b"hello").unwrap();
        qa.post_send(&SendWr {
            wr_id: 2,
            op: SendOp::Send,
            local: Sge {
                mr: &ma,
                offset: 0,
                len: 5,
            },
            signaled: true,
        })
        .unwrap();
        assert_eq!(next(&cb).byte_len, 5);
        assert!(next(&ca).status.is_success());
        for len in [1usize, 4095, 4097, 1 << 20, 4 << 20] {
            let value: Vec<u8> = (0..len).map(|i| (i * 13) as u8).collect();
            ma.write_at(0, &value).unwrap();
            qa.post_send(&SendWr {
                wr_id: 3,
                op: SendOp::RdmaWrite {
                    remote: mb.remote_at(0),
                },
                local: Sge {
                    mr: &ma,
                    offset: 0,
                    len,
                },
                signaled: true,
            })
            .unwrap();
            assert!(next(&ca).status.is_success());
            qa.post_send(&SendWr {
                wr_id: 4,
                op: SendOp::RdmaRead {
                    remote: mb.remote_at(0),
                },
                local: Sge {
                    mr: &ma,
                    offset: 4 << 20,
                    len,
                },
                signaled: true,
            })
            .unwrap();
            assert!(next(&ca).status.is_success());
            let mut got = vec![0u8; len];
            ma.read_at(4 << 20, &mut got).unwrap();
            assert!(got == value);
        }
        // A Send with no receive posted: RNR retries run out (finite), the QP fails.
        qa.post_send(&SendWr {
            wr_id: 5,
            op: SendOp::Send,
            local: Sge {
                mr: &ma,
                offset: 0,
                len: 5,
            },
            signaled: true,
        })
        .unwrap();
        assert_eq!(next(&ca).status, WcStatus::RnrRetryExcErr);
        assert_eq!(qa.state(), QpState::Error);
    }
}
