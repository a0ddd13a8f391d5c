//! Two processes over the soft provider's TCP links: the test binary re-executes itself as the
//! peer (selected by an environment variable, with `--exact` on the same test's name), and kills
//! the child whatever happens.
//!
//! Every blocking call has a timeout, in the parent and in the child, so nothing can hang: a child
//! whose parent died gives up on its own.

use std::env;
use std::io;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use corekv_rdma::channel::{ChannelConfig, ChannelError, ControlChannel, PAYLOAD_MAX};
use corekv_rdma::handshake::{Handshake, Mtu, PeerEpochs, RegionDesc, VERSION};
use corekv_rdma::pool::{self, BufferPool, RemotePool};
use corekv_rdma::provider::{
    CompletionQueue, MemoryRegion, ProtectionDomain, QpCaps, QpState, QueuePair, SendOp, SendWr, WcStatus,
    WorkCompletion,
};
use corekv_rdma::session::{self, SessionError};
use corekv_rdma::soft::{SoftConfig, SoftCq, SoftLink, SoftMr, SoftPd, SoftQp};

const ROLE: &str = "COREKV_RDMA_TEST_ROLE";
const PARENT: &str = "COREKV_RDMA_TEST_PARENT";
const EPOCH: &str = "COREKV_RDMA_TEST_EPOCH";
/// How many messages the big test sends (default 1,000,000).
const MESSAGES: &str = "COREKV_RDMA_MESSAGES";

const WAIT: Duration = Duration::from_secs(30);
const POOL_BYTES: usize = 16 << 20;

// ---------------------------------------------------------------------------------------------
// Processes.

/// Kills and reaps the child when dropped, whatever the test's outcome.
struct ChildGuard(Option<Child>);

impl ChildGuard {
    fn spawn(test: &str, role: &str, parent: &TcpListener, epoch: u64, extra: &[(&str, String)]) -> Self {
        let mut command = Command::new(env::current_exe().expect("test binary path"));
        command
            .args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env(ROLE, role)
            .env(PARENT, parent.local_addr().unwrap().to_string())
            .env(EPOCH, epoch.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        for (k, v) in extra {
            command.env(k, v);
        }
        Self(Some(command.spawn().expect("spawn child")))
    }

    /// Waits for the child to exit on its own, up to `timeout`.
    fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.0.as_mut().expect("child");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.0 = None;
                return status;
            }
            assert!(Instant::now() < deadline, "child did not exit within {timeout:?}");
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.0.take() {
            // It may have exited already: then there is nothing to kill, only to reap.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

fn role() -> Option<String> {
    env::var(ROLE).ok()
}

fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").unwrap()
}

/// Accepts one connection, giving up after `WAIT` (the listener is polled, not blocked on).
fn accept(listener: &TcpListener) -> TcpStream {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).unwrap();
                return stream;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "no connection within {WAIT:?}");
                thread::sleep(Duration::from_millis(2));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A connection: a control channel and a data queue pair, each over its own TCP stream.

type Chan = ControlChannel<SoftQp, SoftCq>;

struct Endpoint {
    chan: Chan,
    data_qp: SoftQp,
    data_cq: SoftCq,
    pool: BufferPool<SoftMr>,
    peer: Handshake,
}

enum Side<'a> {
    Initiator { epoch: u64 },
    Acceptor { epochs: &'a mut PeerEpochs },
}

fn channel_config() -> ChannelConfig {
    ChannelConfig {
        credits: 32,
        high_water: 8,
        grant_slots: 2,
        send_queue_depth: 64,
        signal_every: 16,
        queue_limit: 64,
    }
}

fn connect(mut control: TcpStream, data: TcpStream, side: Side<'_>) -> Result<Endpoint, SessionError> {
    let config = channel_config();
    let pd = SoftPd::new();
    let cq = pd.create_cq(config.cq_capacity()).unwrap();
    let caps = QpCaps {
        max_send_wr: config.send_queue_depth,
        max_recv_wr: config.recv_slots(),
    };
    let qp = pd.create_qp(&cq, &cq, caps).unwrap();
    qp.to_init().unwrap();
    let mut chan = ControlChannel::new(qp, cq, pd.register(config.region_len()).unwrap(), config).unwrap();
    // The data path has its own domain, whose long RNR timer lets a test hold a Send outstanding
    // at the responder (nothing posts receives on the data queue pair).
    let data_pd = SoftPd::with_config(SoftConfig {
        rnr_timer: WAIT / 6,
        ..SoftConfig::default()
    })
    .unwrap();
    let data_cq = data_pd.create_cq(32).unwrap();
    let data_qp = data_pd
        .create_qp(
            &data_cq,
            &data_cq,
            QpCaps {
                max_send_wr: 16,
                max_recv_wr: 1,
            },
        )
        .unwrap();
    let pool = BufferPool::new(data_pd.register(POOL_BYTES).unwrap(), 64).unwrap();
    let (node_id, epoch) = match &side {
        Side::Initiator { epoch } => (2, *epoch),
        Side::Acceptor { .. } => (1, 0),
    };
    let ours = Handshake {
        version: VERSION,
        node_id,
        shard_id: 0,
        epoch,
        qp_num: chan.qp().qp_num(),
        psn: 0,
        gid: [0; 16],
        lid: 0,
        mtu: Mtu::Mtu4096,
        recv_ring: chan.region().desc(),
        pool: pool.mr().desc(),
        credits: config.credits,
    };
    control.set_read_timeout(Some(WAIT)).unwrap();
    let (peer, credits) = match side {
        Side::Initiator { .. } => {
            let peer = session::initiate(&mut control, &ours)?;
            (peer, peer.credits)
        }
        Side::Acceptor { epochs } => session::accept(&mut control, &ours, epochs)?,
    };
    // The link's reader thread blocks for as long as the connection lives.
    control.set_read_timeout(None).unwrap();
    chan.limit_credits(credits).unwrap();
    chan.qp().to_rtr(SoftLink::tcp(control)).unwrap();
    chan.qp().to_rts().unwrap();
    data_qp.to_init().unwrap();
    data_qp.to_rtr(SoftLink::tcp(data)).unwrap();
    data_qp.to_rts().unwrap();
    Ok(Endpoint {
        chan,
        data_qp,
        data_cq,
        pool,
        peer,
    })
}

/// The child's end: connects to the parent (control first, then data) as the initiator.
fn child_connect() -> Result<Endpoint, SessionError> {
    let parent = env::var(PARENT).unwrap();
    let epoch = env::var(EPOCH).unwrap().parse().unwrap();
    let control = TcpStream::connect(&parent).unwrap();
    let data = TcpStream::connect(&parent).unwrap();
    connect(control, data, Side::Initiator { epoch })
}

/// The parent's end: accepts the child's two connections as the acceptor.
fn parent_accept(listener: &TcpListener, epochs: &mut PeerEpochs) -> Result<Endpoint, SessionError> {
    let control = accept(listener);
    let data = accept(listener);
    connect(control, data, Side::Acceptor { epochs })
}

fn data_message(i: u64) -> [u8; 24] {
    let mut p = [0u8; 24];
    p[..8].copy_from_slice(&i.to_le_bytes());
    p[8..16].copy_from_slice(&i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
    p[16..].copy_from_slice(b"corekv!!");
    p
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

// ---------------------------------------------------------------------------------------------
// 1. A fast sender and a deliberately slow receiver.

#[test]
fn a_million_messages_to_a_slow_receiver() {
    if let Some(role) = role() {
        assert_eq!(role, "slow-receiver");
        return slow_receiver();
    }
    let count: u64 = env::var(MESSAGES).map_or(1_000_000, |v| v.parse().expect(MESSAGES));
    let listener = listener();
    let mut child = ChildGuard::spawn(
        "a_million_messages_to_a_slow_receiver",
        "slow-receiver",
        &listener,
        1,
        &[(MESSAGES, count.to_string())],
    );
    let mut ep = parent_accept(&listener, &mut PeerEpochs::new()).unwrap();
    let start = Instant::now();
    for i in 0..count {
        ep.chan.send_blocking(&data_message(i), WAIT).unwrap();
    }
    ep.chan.flush_blocking(WAIT).unwrap();
    let sent_in = start.elapsed();
    // The receiver reports its counters once it has taken every message.
    let mut buf = [0u8; PAYLOAD_MAX];
    let len = ep.chan.recv_blocking(&mut buf, WAIT).unwrap();
    let elapsed = start.elapsed();
    assert_eq!(len, 32);
    let (received, rnr, access, grants) = (u64_at(&buf, 0), u64_at(&buf, 8), u64_at(&buf, 16), u64_at(&buf, 24));
    ep.chan.send_blocking(b"bye", WAIT).unwrap();
    ep.chan.flush_blocking(WAIT).unwrap();
    assert!(child.wait(WAIT).success(), "the receiver failed");
    let stats = ep.chan.stats();
    eprintln!(
        "{count} messages: sent in {sent_in:?}, all taken by the receiver in {elapsed:?} ({:.0} msg/s); \
         sender {stats:?}; receiver sent {grants} explicit grants",
        count as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(received, count);
    assert_eq!((rnr, access), (0, 0), "receiver-side errors");
    assert_eq!((stats.rnr_errors, stats.access_errors), (0, 0), "sender-side errors");
    assert_eq!(stats.data_sent, count + 1);
    assert!(ep.chan.error().is_none());
    // Bounded by the receiver: the sender ran out of credits and queue, and was pushed back.
    assert!(stats.would_block > 0, "{stats:?}");
    assert!(grants > 0);
}

fn slow_receiver() {
    let count: u64 = env::var(MESSAGES).unwrap().parse().unwrap();
    let mut ep = child_connect().unwrap();
    let mut buf = [0u8; PAYLOAD_MAX];
    for i in 0..count {
        let len = ep.chan.recv_blocking(&mut buf, WAIT).unwrap();
        assert_eq!(&buf[..len], &data_message(i), "message {i}");
        // Deliberately slow: a pause now and then, a yield often.
        if i & 2047 == 2047 {
            thread::sleep(Duration::from_millis(1));
        } else if i & 63 == 0 {
            thread::yield_now();
        }
    }
    let stats = ep.chan.stats();
    let mut report = [0u8; 32];
    for (i, v) in [
        stats.data_received,
        stats.rnr_errors,
        stats.access_errors,
        stats.grants_sent,
    ]
    .into_iter()
    .enumerate()
    {
        report[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
    }
    ep.chan.send_blocking(&report, WAIT).unwrap();
    ep.chan.flush_blocking(WAIT).unwrap();
    let len = ep.chan.recv_blocking(&mut buf, WAIT).unwrap();
    assert_eq!(&buf[..len], b"bye");
}

// ---------------------------------------------------------------------------------------------
// 2. One-sided Reads and Writes of values from 1 byte to 4 MiB.

const SIZES: [usize; 11] = [1, 2, 3, 4095, 4096, 4097, 65536, 65537, 1 << 20, (1 << 20) + 3, 4 << 20];

fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

const VERIFY: u8 = 1;
const BYE: u8 = 2;

#[test]
fn one_sided_reads_and_writes_between_processes() {
    if let Some(role) = role() {
        assert_eq!(role, "pool-server");
        return pool_server();
    }
    let listener = listener();
    let mut child = ChildGuard::spawn(
        "one_sided_reads_and_writes_between_processes",
        "pool-server",
        &listener,
        1,
        &[],
    );
    let mut ep = parent_accept(&listener, &mut PeerEpochs::new()).unwrap();
    let start = Instant::now();
    // This side places values in the peer's pool, as a leader does in a shared pool.
    let mut remote = RemotePool::new(ep.peer.pool, 64).unwrap();
    let mut wr_id = 0;
    let mut buf = [0u8; PAYLOAD_MAX];
    for (n, &len) in SIZES.iter().enumerate() {
        let value = pattern(len, n as u64 + 1);
        let out = ep.pool.alloc(len).unwrap();
        let back = ep.pool.alloc(len).unwrap();
        let (place, addr) = remote.alloc(len).unwrap();
        ep.pool.write(&out, &value).unwrap();
        wr_id += 1;
        pool::post_write(&ep.data_qp, &ep.pool, &out, addr, wr_id).unwrap();
        pool::wait_for(&ep.data_cq, wr_id, WAIT).unwrap();
        // The peer checks what landed in its memory and transforms it in place.
        let mut msg = [0u8; 25];
        msg[0] = VERIFY;
        msg[1..9].copy_from_slice(&(addr.addr - ep.peer.pool.addr).to_le_bytes());
        msg[9..17].copy_from_slice(&(len as u64).to_le_bytes());
        msg[17..25].copy_from_slice(&fnv1a(&value).to_le_bytes());
        ep.chan.send_blocking(&msg, WAIT).unwrap();
        let n_reply = ep.chan.recv_blocking(&mut buf, WAIT).unwrap();
        assert_eq!(&buf[..n_reply], b"ok", "the peer saw different bytes for {len}");
        // Read the transformed value back and compare byte for byte.
        wr_id += 1;
        pool::post_read(&ep.data_qp, &ep.pool, &back, addr, wr_id).unwrap();
        let wc = pool::wait_for(&ep.data_cq, wr_id, WAIT).unwrap();
        assert_eq!(wc.byte_len as usize, len);
        let mut got = vec![0u8; len];
        ep.pool.read(&back, &mut got).unwrap();
        let expected: Vec<u8> = value.iter().map(|b| b ^ 0x5A).collect();
        assert!(got == expected, "value of {len} bytes differs after the round trip");
        ep.pool.free(out).unwrap();
        ep.pool.free(back).unwrap();
        remote.free(place).unwrap();
    }
    eprintln!(
        "one-sided round trips of {SIZES:?} bytes over TCP in {:?}",
        start.elapsed()
    );
    // A Write outside the peer's pool is a remote access error, and fails the data queue pair.
    let stray = ep.pool.alloc(8).unwrap();
    let outside = corekv_rdma::provider::RemoteAddr {
        addr: ep.peer.pool.addr + ep.peer.pool.len - 4,
        rkey: ep.peer.pool.rkey,
    };
    pool::post_write(&ep.data_qp, &ep.pool, &stray, outside, 99).unwrap();
    assert!(matches!(
        pool::wait_for(&ep.data_cq, 99, WAIT),
        Err(pool::PoolError::Failed {
            status: WcStatus::RemAccessErr,
            ..
        })
    ));
    assert_eq!(ep.data_qp.state(), QpState::Error);
    // The control channel is a separate queue pair and still works.
    ep.chan.send_blocking(&[BYE], WAIT).unwrap();
    ep.chan.flush_blocking(WAIT).unwrap();
    assert!(child.wait(WAIT).success(), "the pool server failed");
}

fn pool_server() {
    let mut ep = child_connect().unwrap();
    let mut buf = [0u8; PAYLOAD_MAX];
    loop {
        let len = ep.chan.recv_blocking(&mut buf, WAIT).unwrap();
        match buf[0] {
            VERIFY => {
                assert_eq!(len, 25);
                let (offset, value_len, hash) = (u64_at(&buf, 1) as usize, u64_at(&buf, 9) as usize, u64_at(&buf, 17));
                let mr = ep.pool.mr();
                let mut value = vec![0u8; value_len];
                mr.read_at(offset, &mut value).unwrap();
                let reply: &[u8] = if fnv1a(&value) == hash { b"ok" } else { b"bad" };
                for b in &mut value {
                    *b ^= 0x5A;
                }
                mr.write_at(offset, &value).unwrap();
                ep.chan.send_blocking(reply, WAIT).unwrap();
            }
            BYE => return,
            other => panic!("unknown request {other}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 3. A peer killed mid-stream, then a reconnection with a newer epoch.

#[test]
fn a_killed_peer_fails_the_survivor_and_a_newer_epoch_reconnects() {
    const TEST: &str = "a_killed_peer_fails_the_survivor_and_a_newer_epoch_reconnects";
    if let Some(role) = role() {
        assert_eq!(role, "echo");
        return echo();
    }
    let listener = listener();
    let mut epochs = PeerEpochs::new();

    // Epoch 1: stream messages, kill the peer mid-stream.
    let mut child = ChildGuard::spawn(TEST, "echo", &listener, 1, &[]);
    let mut ep = parent_accept(&listener, &mut epochs).unwrap();
    for i in 0..2_000 {
        ep.chan.send_blocking(&data_message(i), WAIT).unwrap();
    }
    // Outstanding data-path work too: a Send the peer holds (it posts no receive: RNR, with a long
    // timer) and a Read queued behind it (RC serves requests in order).
    let local = ep.pool.alloc(64).unwrap();
    let send = SendWr {
        wr_id: 1,
        op: SendOp::Send,
        local: ep.pool.sge(&local),
        signaled: false,
    };
    ep.data_qp.post_send(&send).unwrap();
    pool::post_read(&ep.data_qp, &ep.pool, &local, ep.peer.pool_addr(), 2).unwrap();
    thread::sleep(Duration::from_millis(20));
    let mut wcs = [WorkCompletion::EMPTY; 8];
    assert_eq!(ep.data_cq.poll(&mut wcs).unwrap(), 0, "both still outstanding");
    child.kill();
    let start = Instant::now();
    let err = (0..)
        .map(|i| ep.chan.send_blocking(&data_message(2_000 + i), WAIT))
        .find_map(Result::err)
        .unwrap();
    eprintln!("survivor saw {err:?} {:?} after the kill", start.elapsed());
    assert!(
        matches!(
            err,
            ChannelError::Completion {
                status: WcStatus::WrFlushErr,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(ep.chan.qp().state(), QpState::Error);
    // The data queue pair's link died with the process too: both requests are flushed, the
    // unsignaled Send included.
    let mut flushed = Vec::new();
    while flushed.len() < 2 {
        assert!(ep.data_cq.wait(WAIT).unwrap(), "no flush completion within {WAIT:?}");
        let n = ep.data_cq.poll(&mut wcs).unwrap();
        flushed.extend(wcs[..n].iter().map(|wc| (wc.wr_id, wc.status)));
    }
    assert_eq!(flushed, [(1, WcStatus::WrFlushErr), (2, WcStatus::WrFlushErr)]);
    assert_eq!(ep.data_qp.state(), QpState::Error);
    assert!(pool::post_read(&ep.data_qp, &ep.pool, &local, ep.peer.pool_addr(), 3).is_err());
    drop(ep);

    // A stale handshake (epoch 1 again, e.g. a delayed retry) is refused.
    let mut stale = ChildGuard::spawn(TEST, "echo", &listener, 1, &[]);
    let refused = parent_accept(&listener, &mut epochs);
    assert!(matches!(refused, Err(SessionError::Epoch(_))), "{:?}", refused.err());
    assert!(!stale.wait(WAIT).success(), "the stale child must fail to connect");

    // Epoch 2: a fresh session works end to end.
    let mut child = ChildGuard::spawn(TEST, "echo", &listener, 2, &[]);
    let mut ep = parent_accept(&listener, &mut epochs).unwrap();
    assert_eq!(ep.peer.epoch, 2);
    let mut buf = [0u8; PAYLOAD_MAX];
    for i in 0..500u64 {
        let mut ping = [0u8; 12];
        ping[..4].copy_from_slice(b"ping");
        ping[4..].copy_from_slice(&i.to_le_bytes());
        ep.chan.send_blocking(&ping, WAIT).unwrap();
        let len = ep.chan.recv_blocking(&mut buf, WAIT).unwrap();
        assert_eq!(&buf[..4], b"pong");
        assert_eq!(&buf[4..len], &i.to_le_bytes());
    }
    ep.chan.send_blocking(b"bye", WAIT).unwrap();
    ep.chan.flush_blocking(WAIT).unwrap();
    assert!(child.wait(WAIT).success());
    assert_eq!(epochs.current(ep.peer.peer()), Some(2));
}

/// Takes messages slowly; answers "ping" with "pong"; leaves on "bye". A refused handshake fails
/// the process.
fn echo() {
    let mut ep = match child_connect() {
        Ok(ep) => ep,
        Err(e) => {
            eprintln!("echo child: handshake refused (expected where the test replays an old epoch): {e}");
            std::process::exit(3);
        }
    };
    let mut buf = [0u8; PAYLOAD_MAX];
    let mut taken = 0u64;
    loop {
        let len = ep.chan.recv_blocking(&mut buf, WAIT).unwrap();
        taken += 1;
        if taken & 255 == 0 {
            thread::sleep(Duration::from_millis(1));
        }
        match &buf[..len] {
            b"bye" => return,
            m if m.starts_with(b"ping") => {
                let mut pong = [0u8; 12];
                pong[..4].copy_from_slice(b"pong");
                pong[4..].copy_from_slice(&m[4..12]);
                ep.chan.send_blocking(&pong, WAIT).unwrap();
            }
            _ => {}
        }
    }
}

trait PoolAddr {
    fn pool_addr(&self) -> corekv_rdma::provider::RemoteAddr;
}

impl PoolAddr for Handshake {
    fn pool_addr(&self) -> corekv_rdma::provider::RemoteAddr {
        let RegionDesc { addr, rkey, .. } = self.pool;
        corekv_rdma::provider::RemoteAddr { addr, rkey }
    }
}
