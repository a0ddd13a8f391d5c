//! The hardware provider, over libibverbs through `rdma-sys` (cargo feature `verbs`).
//!
//! It implements the same traits as the [soft provider](crate::soft) with RC queue pairs:
//!
//! - [`VerbsPd::open`] picks a device by name (or the first one), a port and a GID index
//!   ([`VerbsConfig`]), and allocates the protection domain;
//! - regions are page-aligned allocations owned by the provider, registered for local write,
//!   remote read and remote write, read and written by copies (never through Rust references, since
//!   the NIC writes them behind the compiler's back);
//! - completion queues have a completion channel, made non-blocking. [`CompletionQueue::arm`]
//!   cannot hand the channel's descriptor to an async runtime (glommio has no public way to await
//!   an arbitrary fd), so each opened device has a *notifier*: one thread, `corekv-verbs-cq`,
//!   started by the first `arm` of any of its queues, that sleeps in `epoll_wait` on the channels
//!   of the queues that were armed (and on an eventfd that stops it when the device is dropped).
//!   `arm` stores the task's waker, requests a notification (`ibv_req_notify_cq`), then polls once:
//!   a completion that arrived before the request is found by that poll (and wakes the task at
//!   once), one after it raises an event, which the notifier reads, acknowledges, and answers by
//!   waking the stored waker. So an idle task parks and its shard's core is free; a completion
//!   that ends an idle spell costs one cross-thread wake. [`CompletionQueue::wait`] is `arm` with a
//!   waker that unparks the calling thread. When a channel cannot be watched (no notifier, a failed
//!   channel), `arm` falls back to waking at once: the task then polls and yields;
//! - queue pairs take the settings others found to work: timeout 14 (about 67 ms), retry count
//!   7, minimum RNR timer 12 (0.64 ms), and a *finite* RNR retry count of 6, since 7 means "retry
//!   forever" and hangs a connection whose receiver stopped posting; outstanding RDMA Reads are
//!   kept within the device's limits, and Sends and Writes of up to one control message (128
//!   bytes) are posted inline when the device allows it.
//!
//! Posting checks the state this side last moved the queue pair to. The NIC can move it to ERROR
//! on its own; verbs then accepts posts and completes them with [`WcStatus::WrFlushErr`], which is
//! how a caller learns of it. [`QueuePair::state`] asks the device.
//!
//! Nothing here can run without an RDMA device; the tests that need one are `#[ignore]`d and say
//! so, and the others check that the absence of devices is reported cleanly.

use std::alloc::{self, Layout};
use std::collections::{HashMap, VecDeque};
use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Wake, Waker};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

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
    /// Outstanding RDMA Reads per queue pair, both directions (lowered to the device's limits).
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
    /// The smaller of the configured MTU and the port's active MTU.
    mtu: Mtu,
    /// RDMA Reads outstanding per queue pair: the configured count within the device's limits.
    rd_atomic: u8,
    /// The thread that wakes armed completion queues, started by the first `arm`.
    notifier: Mutex<Option<Arc<Notifier>>>,
}

impl Device {
    /// The device's notifier, started if it is not yet.
    fn notifier(&self) -> Result<Arc<Notifier>, RdmaError> {
        let mut slot = lock(&self.notifier);
        if let Some(notifier) = &*slot {
            return Ok(notifier.clone());
        }
        // The thread is detached: it exits on its own once `Drop` stops it.
        let (notifier, _thread) = Notifier::start()?;
        *slot = Some(notifier.clone());
        Ok(notifier)
    }
}

// SAFETY: libibverbs objects may be used from any thread; the library locks internally where
// its objects are shared (the verbs API is documented thread-safe).
unsafe impl Send for Device {}
// SAFETY: as above; `Device`'s own interior state (the notifier slot) is behind a mutex.
unsafe impl Sync for Device {}

impl Drop for Device {
    fn drop(&mut self) {
        // Every completion queue holds an `Arc` to the device, so all are gone and none is left in
        // the notifier's epoll set: stop the thread. Never join it: this may run on that very
        // thread (when it dropped the last queue); it releases its descriptors as it exits.
        if let Some(notifier) = self.notifier.get_mut().unwrap_or_else(|e| e.into_inner()).take() {
            notifier.stop();
        }
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
        // SAFETY: all-zero is a valid ibv_device_attr (integers and a byte array), filled below.
        let mut device_attr: ibv_device_attr = unsafe { std::mem::zeroed() };
        let rc_device = if rc_gid == 0 {
            // SAFETY: `context` is open and `device_attr` is a valid out-pointer.
            unsafe { ibv_query_device(context, &mut device_attr) }
        } else {
            rc_gid
        };
        // A port that is down would only show up later, as connections that never complete.
        let inactive = rc_device == 0 && port_attr.state != ibv_port_state::IBV_PORT_ACTIVE;
        // SAFETY: `context` is open.
        let pd = if rc_device == 0 && !inactive {
            unsafe { ibv_alloc_pd(context) }
        } else {
            ptr::null_mut()
        };
        if pd.is_null() {
            let err = if rc != 0 {
                rc_error("ibv_query_port", rc)
            } else if rc_gid != 0 {
                rc_error("ibv_query_gid", rc_gid)
            } else if rc_device != 0 {
                rc_error("ibv_query_device", rc_device)
            } else if inactive {
                let state = match port_attr.state {
                    ibv_port_state::IBV_PORT_DOWN => "DOWN",
                    ibv_port_state::IBV_PORT_INIT => "INIT",
                    ibv_port_state::IBV_PORT_ARMED => "ARMED",
                    _ => "not active",
                };
                RdmaError::InvalidConfig(format!(
                    "port {} is {state}, not ACTIVE (`ibv_devinfo` shows the ports' states)",
                    config.port
                ))
            } else {
                os_error("ibv_alloc_pd")
            };
            // SAFETY: opened above, closed once.
            unsafe { ibv_close_device(context) };
            return Err(err);
        }
        // Outstanding RDMA Reads per queue pair: what was asked for, within what the device takes
        // (asking for more makes ibv_modify_qp fail with EINVAL).
        let device_rd_atomic = device_attr.max_qp_rd_atom.min(device_attr.max_qp_init_rd_atom).max(1);
        let rd_atomic = u8::try_from(device_rd_atomic).map_or(config.max_rd_atomic, |d| d.min(config.max_rd_atomic));
        Ok(Self {
            device: Arc::new(Device {
                context,
                pd,
                // SAFETY: every bit pattern of the union is a valid byte array.
                gid: unsafe { gid.raw },
                lid: port_attr.lid,
                mtu: Mtu::from_code(port_attr.active_mtu as u8).map_or(config.mtu, |active| active.min(config.mtu)),
                rd_atomic,
                config,
                notifier: Mutex::new(None),
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

    /// The path MTU this end supports: the configured one, lowered to the port's active MTU.
    pub fn mtu(&self) -> Mtu {
        self.device.mtu
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
        // The notifier drains the channel until EAGAIN: `ibv_get_cq_event` must never block.
        // SAFETY: the channel was just created and is valid; `fd` is a plain field.
        if let Err(err) = set_nonblocking(unsafe { (*channel).fd }) {
            // SAFETY: created above, no CQ uses it, destroyed once.
            unsafe { ibv_destroy_comp_channel(channel) };
            return Err(err);
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
                device: self.device.clone(),
                channel,
                cq,
                capacity,
                stash: Mutex::new(VecDeque::new()),
                notify: Mutex::new(CqNotify::default()),
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
        // Control messages are small: carried inside the work request (IBV_SEND_INLINE), the NIC
        // skips a DMA read of the buffer. A device that cannot inline that much gets a queue pair
        // without (the second attempt).
        let mut qp = ptr::null_mut();
        for inline in [INLINE_WANTED, 0] {
            init.cap.max_inline_data = inline;
            // SAFETY: the protection domain and both CQs are valid and outlive the QP (it holds
            // them); `init` is fully initialised.
            qp = unsafe { ibv_create_qp(self.device.pd, &mut init) };
            if !qp.is_null() {
                break;
            }
        }
        if qp.is_null() {
            return Err(os_error("ibv_create_qp"));
        }
        Ok(VerbsQp {
            // What the device granted (it may round up).
            max_inline: init.cap.max_inline_data,
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
    device: Arc<Device>,
    channel: *mut ibv_comp_channel,
    cq: *mut ibv_cq,
    capacity: usize,
    /// Completions polled by `arm` (to close the race between arming and parking), handed out by
    /// the next `poll`. Held across `poll`'s and `arm`'s polls, so completions keep their order.
    stash: Mutex<VecDeque<WorkCompletion>>,
    /// What the notifier needs. The notifier reads and acknowledges the channel's events under
    /// this lock.
    notify: Mutex<CqNotify>,
}

/// A completion queue's side of the notifier.
#[derive(Debug, Default)]
struct CqNotify {
    /// The waker of the last `arm`, taken (woken once) by the notifier at the next event.
    waker: Option<Waker>,
    /// The notifier whose epoll set holds the channel, and this queue's id there.
    registered: Option<(Arc<Notifier>, u64)>,
    /// Reading the channel failed: it is out of the epoll set, and `arm` wakes at once.
    failed: bool,
}

// SAFETY: see `Device`; polling one CQ from several threads is serialised by libibverbs, and the
// channel is only read by the notifier, under `notify`.
unsafe impl Send for CqRaw {}
// SAFETY: as above; the Rust-side state is behind mutexes.
unsafe impl Sync for CqRaw {}

impl Drop for CqRaw {
    fn drop(&mut self) {
        let notify = self.notify.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some((notifier, id)) = notify.registered.take() {
            // Out of the epoll set and the registry before the channel's descriptor is closed (and
            // its number reused). This never waits on the notifier thread, which may be the one
            // running this drop (it held the last reference).
            notifier.deregister(id, self.channel_fd());
        }
        // SAFETY: every QP using the CQ holds an `Arc` to it, so none is left. Every event read
        // from the channel was acknowledged: the notifier reads and acks under `notify` through a
        // strong reference, so never while this drop runs (which needs the last reference) and
        // never leaves an event unacked when it releases the lock (`ibv_destroy_cq` would wait
        // forever). Events still unread in the channel need no ack. Each handle is destroyed once,
        // the CQ before its channel.
        unsafe {
            ibv_destroy_cq(self.cq);
            ibv_destroy_comp_channel(self.channel);
        }
    }
}

/// The inline size asked for at queue-pair creation: one control message.
const INLINE_WANTED: u32 = crate::channel::MSG_LEN as u32;

/// Makes a descriptor non-blocking.
fn set_nonblocking(fd: RawFd) -> Result<(), RdmaError> {
    // SAFETY: F_GETFL on a descriptor takes no pointer; an invalid one fails with EBADF.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(os_error("fcntl(F_GETFL)"));
    }
    // SAFETY: as above, F_SETFL takes an integer.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(os_error("fcntl(F_SETFL, O_NONBLOCK)"));
    }
    Ok(())
}

/// The epoll data of the notifier's stop eventfd; completion queues' ids count up from 0.
const STOP: u64 = u64::MAX;

/// One per opened device: a thread asleep in `epoll_wait` on the completion channels of the
/// device's queues that were armed, which wakes a queue's stored waker when its channel has events.
///
/// Shared by the device (which stops it when dropped), the queues registered with it (which
/// deregister when dropped) and the thread, which holds the last reference once stopped, so the
/// descriptors are closed when the thread exits. It names the queues by id and holds them weakly:
/// it never keeps a queue (or the device) alive, and never touches a queue that is gone.
#[derive(Debug)]
struct Notifier {
    epoll: OwnedFd,
    /// An eventfd in the epoll set: written to stop the thread.
    stop: OwnedFd,
    /// The queues in the epoll set, by the id in their epoll data.
    cqs: Mutex<HashMap<u64, Weak<CqRaw>>>,
    next_id: AtomicU64,
    /// The thread has exited (stopped or failed): `arm` falls back to waking at once.
    dead: AtomicBool,
}

impl Notifier {
    /// Creates the epoll set and the eventfd and starts the thread.
    fn start() -> Result<(Arc<Self>, JoinHandle<()>), RdmaError> {
        // SAFETY: takes no pointer; a non-negative result is a new descriptor.
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epoll < 0 {
            return Err(os_error("epoll_create1"));
        }
        // SAFETY: just created and owned by nothing else.
        let epoll = unsafe { OwnedFd::from_raw_fd(epoll) };
        // SAFETY: takes no pointer; a non-negative result is a new descriptor.
        let stop = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if stop < 0 {
            return Err(os_error("eventfd"));
        }
        // SAFETY: just created and owned by nothing else.
        let stop = unsafe { OwnedFd::from_raw_fd(stop) };
        let notifier = Arc::new(Self {
            epoll,
            stop,
            cqs: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            dead: AtomicBool::new(false),
        });
        notifier.ctl(libc::EPOLL_CTL_ADD, notifier.stop.as_raw_fd(), STOP)?;
        let running = notifier.clone();
        let thread = thread::Builder::new()
            .name("corekv-verbs-cq".into())
            .spawn(move || running.run())
            .map_err(|e| RdmaError::Device {
                op: "spawn the completion notifier",
                message: e.to_string(),
            })?;
        Ok((notifier, thread))
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, data: u64) -> Result<(), RdmaError> {
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: data,
        };
        // SAFETY: the epoll descriptor is open while `self` lives; `event` is a valid event
        // (ignored by EPOLL_CTL_DEL); a bad `fd` fails with an error.
        if unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), op, fd, &mut event) } < 0 {
            return Err(os_error("epoll_ctl"));
        }
        Ok(())
    }

    fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    /// Adds `cq`'s channel to the epoll set; returns its id.
    fn register(&self, cq: &Arc<CqRaw>) -> Result<u64, RdmaError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.cqs).insert(id, Arc::downgrade(cq));
        if let Err(err) = self.ctl(libc::EPOLL_CTL_ADD, cq.channel_fd(), id) {
            lock(&self.cqs).remove(&id);
            return Err(err);
        }
        Ok(id)
    }

    /// Takes a queue's channel out of the epoll set (if a failure has not already) and the
    /// registry. Events the thread already has in hand for `id` find nothing in the registry.
    fn deregister(&self, id: u64, fd: RawFd) {
        let _ = self.ctl(libc::EPOLL_CTL_DEL, fd, id);
        let entry = lock(&self.cqs).remove(&id);
        // A `Weak` of the queue being dropped: dropping it runs no destructor, but do it unlocked.
        drop(entry);
    }

    /// Asks the thread to exit; does not wait for it.
    fn stop(&self) {
        let one = 1u64;
        // SAFETY: the eventfd is open while `self` lives; 8 bytes are read from a live u64. It
        // cannot fail short of a counter overflow, which would leave it readable anyway.
        unsafe { libc::write(self.stop.as_raw_fd(), ptr::from_ref(&one).cast(), 8) };
    }

    /// The thread's body.
    fn run(self: Arc<Self>) {
        /// Marks the notifier dead as the thread exits, however it exits (a waker could panic),
        /// and wakes the queues still waiting, whose next `arm` falls back to waking at once.
        struct Exit<'a>(&'a Notifier);
        impl Drop for Exit<'_> {
            fn drop(&mut self) {
                self.0.dead.store(true, Ordering::SeqCst);
                let cqs: Vec<Arc<CqRaw>> = lock(&self.0.cqs).values().filter_map(Weak::upgrade).collect();
                for cq in cqs {
                    let waker = lock(&cq.notify).waker.take();
                    if let Some(waker) = waker {
                        waker.wake();
                    }
                    // Dropping `cq` may drop the queue, which takes `cqs`: not held here.
                }
            }
        }
        let _exit = Exit(&self);
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 32];
        loop {
            // SAFETY: the epoll descriptor is open while `self` lives; `events` has room for
            // `events.len()` entries.
            let n = unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), events.as_mut_ptr(), events.len() as i32, -1) };
            if n < 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return;
            }
            for event in &events[..n as usize] {
                let id = event.u64;
                if id == STOP {
                    return;
                }
                // The registry's lock is released at the end of this statement: the upgraded
                // reference may be the last one, and dropping the queue takes that lock.
                let cq = lock(&self.cqs).get(&id).and_then(Weak::upgrade);
                if let Some(cq) = cq {
                    cq.on_event(&self);
                }
            }
        }
    }
}

/// A waker that unparks the thread that made it: how [`CompletionQueue::wait`] parks a thread
/// on [`CompletionQueue::arm`].
#[derive(Debug)]
struct ThreadWaker {
    thread: Thread,
    woken: AtomicBool,
}

impl ThreadWaker {
    /// A waker for the calling thread.
    fn new() -> Arc<Self> {
        Arc::new(Self {
            thread: thread::current(),
            woken: AtomicBool::new(false),
        })
    }

    /// Parks the calling thread, which must be the one that made `self`, until woken or until
    /// `timeout` passes; returns whether it was woken (at any time since it was made).
    fn park(&self, timeout: Duration) -> bool {
        debug_assert_eq!(thread::current().id(), self.thread.id(), "parked on another thread");
        let deadline = Instant::now().checked_add(timeout);
        loop {
            if self.woken.load(Ordering::Acquire) {
                return true;
            }
            match deadline {
                None => thread::park(),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return self.woken.load(Ordering::Acquire);
                    }
                    thread::park_timeout(deadline - now);
                }
            }
        }
    }
}

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.thread.unpark();
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
    fn channel_fd(&self) -> RawFd {
        // SAFETY: the channel is valid while `self` lives; `fd` is a plain field.
        unsafe { (*self.channel).fd }
    }

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

    /// Arms the queue for `waker`: `Ok(false)` when the waker is stored and the notifier will wake
    /// it at the next completion, `Ok(true)` when a completion is ready now (the waker is not kept),
    /// an error when the queue cannot be watched (the waker is not kept).
    fn try_arm(this: &Arc<Self>, waker: &Waker) -> Result<bool, RdmaError> {
        if !lock(&this.stash).is_empty() {
            return Ok(true);
        }
        let replaced = {
            let mut notify = lock(&this.notify);
            if notify.failed {
                return Err(RdmaError::Device {
                    op: "ibv_get_cq_event",
                    message: "the completion channel failed earlier".into(),
                });
            }
            let notifier = match &notify.registered {
                Some((notifier, _)) => notifier.clone(),
                None => {
                    let notifier = this.device.notifier()?;
                    let id = notifier.register(this)?;
                    notify.registered = Some((notifier.clone(), id));
                    notifier
                }
            };
            // Checked after registering and under `notify`: a notifier dying now wakes (takes)
            // the waker stored below, one dead before is seen here.
            if notifier.is_dead() {
                return Err(RdmaError::Device {
                    op: "completion notifier",
                    message: "the notifier thread exited".into(),
                });
            }
            match &notify.waker {
                Some(stored) if stored.will_wake(waker) => None,
                _ => notify.waker.replace(waker.clone()),
            }
        };
        // Dropped unlocked: a waker's destructor is foreign code.
        drop(replaced);
        // Arm first, then look: a completion that arrived before arming is found by the poll, one
        // after it raises an event, which finds the waker stored above.
        // SAFETY: the CQ is valid while `this` lives.
        let rc = unsafe { ibv_req_notify_cq(this.cq, 0) };
        if rc != 0 {
            this.forget_waker(waker);
            return Err(rc_error("ibv_req_notify_cq", rc));
        }
        let mut stash = lock(&this.stash);
        if stash.is_empty() {
            let mut one = [WorkCompletion::EMPTY; 1];
            match this.poll_raw(&mut one) {
                Ok(0) => return Ok(false),
                Ok(_) => stash.push_back(one[0]),
                Err(err) => {
                    drop(stash);
                    this.forget_waker(waker);
                    return Err(err);
                }
            }
        }
        drop(stash);
        // Ready now: take the waker back so the event this completion may raise does not wake it
        // a second time.
        this.forget_waker(waker);
        Ok(true)
    }

    /// Takes `waker` out if it is the one stored (another task's stays).
    fn forget_waker(&self, waker: &Waker) {
        let taken = {
            let mut notify = lock(&self.notify);
            match &notify.waker {
                Some(stored) if stored.will_wake(waker) => notify.waker.take(),
                _ => None,
            }
        };
        drop(taken);
    }

    /// On the notifier thread, when the channel is readable: reads and acknowledges every event
    /// (the channel is non-blocking, so until EAGAIN), then wakes the stored waker.
    fn on_event(&self, notifier: &Notifier) {
        let mut notify = lock(&self.notify);
        loop {
            let mut cq = ptr::null_mut();
            let mut context = ptr::null_mut();
            // SAFETY: the channel is valid while `self` lives and non-blocking, so this returns at
            // once; the out-pointers are valid.
            if unsafe { ibv_get_cq_event(self.channel, &mut cq, &mut context) } == 0 {
                // SAFETY: one event was read for `cq` (this queue, the channel's only one); it is
                // acknowledged at once, under `notify`, so `Drop` never sees it unacknowledged.
                unsafe { ibv_ack_cq_events(cq, 1) };
                continue;
            }
            match io::Error::last_os_error().kind() {
                io::ErrorKind::WouldBlock => break,
                io::ErrorKind::Interrupted => {}
                _ => {
                    // Level-triggered: a channel that stays readable and fails would spin the
                    // thread. Take it out; the queue's `arm` wakes at once from now on.
                    notify.failed = true;
                    if let Some((_, id)) = &notify.registered {
                        let _ = notifier.ctl(libc::EPOLL_CTL_DEL, self.channel_fd(), *id);
                    }
                    break;
                }
            }
        }
        let waker = notify.waker.take();
        drop(notify);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl CompletionQueue for VerbsCq {
    fn capacity(&self) -> usize {
        self.inner.capacity
    }

    fn poll(&self, out: &mut [WorkCompletion]) -> Result<usize, RdmaError> {
        // Held across the device poll: a completion `arm` stashes is never overtaken by a later one.
        let mut stash = lock(&self.inner.stash);
        let mut n = 0;
        while n < out.len() {
            let Some(wc) = stash.pop_front() else { break };
            out[n] = wc;
            n += 1;
        }
        Ok(n + self.inner.poll_raw(&mut out[n..])?)
    }

    fn wait(&self, timeout: Duration) -> Result<bool, RdmaError> {
        let parker = ThreadWaker::new();
        let waker = Waker::from(parker.clone());
        if CqRaw::try_arm(&self.inner, &waker)? {
            return Ok(true);
        }
        let woken = parker.park(timeout);
        // Timed out: the notifier must not keep (and later wake) this thread's waker.
        self.inner.forget_waker(&waker);
        Ok(woken || !lock(&self.inner.stash).is_empty())
    }

    fn arm(&self, waker: &Waker) {
        match CqRaw::try_arm(&self.inner, waker) {
            Ok(false) => {}
            // Ready now, or the queue cannot be watched: the task polls again (and, if the queue
            // cannot be watched, keeps polling and yielding, as before the notifier).
            Ok(true) | Err(_) => waker.wake_by_ref(),
        }
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
    /// Sends and Writes of at most this many bytes are posted inline.
    max_inline: u32,
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
            attr.max_dest_rd_atomic = self.device.rd_atomic;
            attr.min_rnr_timer = config.min_rnr_timer;
            attr.ah_attr.dlid = remote.lid;
            attr.ah_attr.sl = 0;
            attr.ah_attr.src_path_bits = 0;
            attr.ah_attr.port_num = config.port;
            if remote.gid != [0; 16] {
                attr.ah_attr.is_global = 1;
                attr.ah_attr.grh.dgid = ibv_gid { raw: remote.gid };
                attr.ah_attr.grh.sgid_index = config.gid_index;
                // RoCE v2 packets are routable: let them cross IP routers.
                attr.ah_attr.grh.hop_limit = 64;
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
            attr.max_rd_atomic = self.device.rd_atomic;
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
        // Inline only applies to what the NIC reads locally (a Read writes the local buffer).
        if !matches!(wr.op, SendOp::RdmaRead { .. }) && sg.length <= self.max_inline {
            swr.send_flags |= ibv_send_flags::IBV_SEND_INLINE.0;
        }
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
    fn thread_waker_woken_before_park_returns_at_once() {
        let parker = ThreadWaker::new();
        Waker::from(parker.clone()).wake();
        let start = Instant::now();
        assert!(parker.park(Duration::from_secs(30)));
        assert!(start.elapsed() < Duration::from_secs(10));
        // The flag stays set: a later park returns at once too.
        assert!(parker.park(Duration::ZERO));
    }

    #[test]
    fn thread_waker_times_out_unwoken() {
        let parker = ThreadWaker::new();
        let start = Instant::now();
        assert!(!parker.park(Duration::from_millis(50)));
        assert!(start.elapsed() >= Duration::from_millis(50));
        assert!(!parker.park(Duration::ZERO));
    }

    #[test]
    fn thread_waker_woken_from_another_thread() {
        for timeout in [Duration::from_secs(30), Duration::MAX] {
            let parker = ThreadWaker::new();
            let waker = Waker::from(parker.clone());
            let waking = thread::spawn(move || {
                thread::sleep(Duration::from_millis(20));
                waker.wake_by_ref();
            });
            let start = Instant::now();
            assert!(parker.park(timeout));
            assert!(start.elapsed() < Duration::from_secs(10));
            waking.join().unwrap();
        }
    }

    #[test]
    fn notifier_thread_starts_and_stops() {
        let (notifier, thread) = Notifier::start().unwrap();
        assert_eq!(thread.thread().name(), Some("corekv-verbs-cq"));
        assert!(!notifier.is_dead());
        notifier.stop();
        thread.join().unwrap();
        assert!(notifier.is_dead());
        // The thread let go of its reference: the descriptors close with this last one.
        assert_eq!(Arc::strong_count(&notifier), 1);
    }

    #[test]
    fn notifier_stopped_before_its_thread_runs() {
        // Stopping does not wait, and a stop sent before the thread reaches epoll_wait is kept.
        let (notifier, thread) = Notifier::start().unwrap();
        notifier.stop();
        drop(notifier);
        thread.join().unwrap();
    }

    #[test]
    #[ignore = "needs an RDMA device"]
    fn arm_parks_until_a_completion_on_a_device() {
        if !device_or_skip("arm_parks_until_a_completion_on_a_device") {
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
        let (ma, mb) = (pd.register(4096).unwrap(), pd.register(4096).unwrap());
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
        // Idle: the waker is kept, not woken; a thread waiting times out.
        let parker = ThreadWaker::new();
        cb.arm(&Waker::from(parker.clone()));
        assert!(
            !parker.park(Duration::from_millis(200)),
            "woken with nothing to complete"
        );
        assert!(!ca.wait(Duration::from_millis(100)).unwrap());
        // A completion wakes the armed waker, from the notifier thread.
        qb.post_recv(&RecvWr {
            wr_id: 1,
            local: Sge {
                mr: &mb,
                offset: 0,
                len: 64,
            },
        })
        .unwrap();
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
        assert!(parker.park(Duration::from_secs(5)), "not woken by a completion");
        let mut wc = [WorkCompletion::EMPTY; 4];
        let mut n = cb.poll(&mut wc).unwrap();
        while n == 0 {
            n = cb.poll(&mut wc).unwrap();
        }
        assert_eq!((wc[0].wr_id, wc[0].byte_len), (1, 5));
        // The send's completion was never polled: arming finds it and wakes at once.
        while !ca.wait(Duration::from_secs(5)).unwrap() {}
        let parker = ThreadWaker::new();
        ca.arm(&Waker::from(parker.clone()));
        assert!(parker.park(Duration::ZERO), "a ready completion must wake at once");
        assert_eq!(ca.poll(&mut wc).unwrap(), 1);
        assert_eq!(wc[0].wr_id, 2);
        // Queues dropped while armed leave the epoll set; dropping the device stops the thread.
        cb.arm(&Waker::from(ThreadWaker::new()));
        drop((qa, qb, ca, cb, ma, mb, pd));
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
