//! The soft provider's failure modes and state machine, in process.

use std::time::Duration;

use super::*;
use crate::provider::{RemoteAddr, Sge};

const WAIT: Duration = Duration::from_secs(10);

/// One side of a connection: its domain, one completion queue for everything, a queue pair and a
/// 1 MiB region.
struct Side {
    pd: SoftPd,
    cq: SoftCq,
    qp: SoftQp,
    mr: SoftMr,
}

fn side(config: &SoftConfig) -> Side {
    let pd = SoftPd::with_config(config.clone()).unwrap();
    let cq = pd.create_cq(64).unwrap();
    let qp = pd
        .create_qp(
            &cq,
            &cq,
            QpCaps {
                max_send_wr: 16,
                max_recv_wr: 16,
            },
        )
        .unwrap();
    let mr = pd.register(1 << 20).unwrap();
    Side { pd, cq, qp, mr }
}

fn connect(a: &Side, b: &Side) {
    let (la, lb) = SoftLink::pair();
    for (s, l) in [(a, la), (b, lb)] {
        s.qp.to_init().unwrap();
        s.qp.to_rtr(l).unwrap();
        s.qp.to_rts().unwrap();
    }
}

fn pair_with(config: SoftConfig) -> (Side, Side) {
    let (a, b) = (side(&config), side(&config));
    connect(&a, &b);
    (a, b)
}

fn pair() -> (Side, Side) {
    pair_with(SoftConfig::default())
}

/// Waits for exactly one completion.
fn next(cq: &SoftCq) -> WorkCompletion {
    assert!(cq.wait(WAIT).unwrap(), "no completion within {WAIT:?}");
    let mut wc = [WorkCompletion::EMPTY; 1];
    assert_eq!(cq.poll(&mut wc).unwrap(), 1);
    wc[0]
}

fn send(s: &Side, wr_id: u64, offset: usize, len: usize, signaled: bool) -> Result<(), RdmaError> {
    s.qp.post_send(&SendWr {
        wr_id,
        op: SendOp::Send,
        local: Sge { mr: &s.mr, offset, len },
        signaled,
    })
}

fn recv(s: &Side, wr_id: u64, offset: usize, len: usize) -> Result<(), RdmaError> {
    s.qp.post_recv(&RecvWr {
        wr_id,
        local: Sge { mr: &s.mr, offset, len },
    })
}

fn one_sided(s: &Side, wr_id: u64, op: SendOp, offset: usize, len: usize) -> Result<(), RdmaError> {
    s.qp.post_send(&SendWr {
        wr_id,
        op,
        local: Sge { mr: &s.mr, offset, len },
        signaled: true,
    })
}

#[test]
fn state_machine_allows_only_the_verbs_transitions() {
    let s = side(&SoftConfig::default());
    assert_eq!(s.qp.state(), QpState::Reset);
    assert!(matches!(s.qp.to_rts(), Err(RdmaError::InvalidTransition { .. })));
    assert!(matches!(
        s.qp.to_rtr(SoftLink::pair().0),
        Err(RdmaError::InvalidTransition {
            from: QpState::Reset,
            to: QpState::Rtr
        })
    ));
    assert!(
        matches!(recv(&s, 1, 0, 8), Err(RdmaError::InvalidState { .. })),
        "no receive in RESET"
    );
    s.qp.to_init().unwrap();
    assert!(s.qp.to_init().is_err(), "INIT -> INIT");
    assert!(s.qp.to_rts().is_err(), "INIT -> RTS skips RTR");
    recv(&s, 1, 0, 8).unwrap();
    assert!(matches!(
        send(&s, 2, 0, 8, true),
        Err(RdmaError::InvalidState {
            state: QpState::Init,
            ..
        })
    ));
    let (l, _peer) = SoftLink::pair();
    s.qp.to_rtr(l).unwrap();
    assert!(matches!(
        send(&s, 2, 0, 8, true),
        Err(RdmaError::InvalidState {
            state: QpState::Rtr,
            ..
        })
    ));
    s.qp.to_rts().unwrap();
    assert_eq!(s.qp.state(), QpState::Rts);
    s.qp.to_error().unwrap();
    assert_eq!(s.qp.state(), QpState::Error);
    // The posted receive was flushed.
    let wc = next(&s.cq);
    assert_eq!(
        (wc.wr_id, wc.status, wc.opcode),
        (1, WcStatus::WrFlushErr, WcOpcode::Recv)
    );
    assert!(s.qp.to_rts().is_err(), "ERROR -> RTS");
    assert!(send(&s, 3, 0, 8, true).is_err(), "no send in ERROR");
    assert!(recv(&s, 3, 0, 8).is_err(), "no receive in ERROR");
    s.qp.reset().unwrap();
    assert_eq!(s.qp.state(), QpState::Reset);
    s.qp.to_init().unwrap();
}

#[test]
fn send_lands_in_the_posted_receive() {
    let (a, b) = pair();
    a.mr.write_at(100, b"hello, peer").unwrap();
    recv(&b, 7, 5000, 64).unwrap();
    send(&a, 1, 100, 11, true).unwrap();
    let wc = next(&b.cq);
    assert_eq!(
        (wc.wr_id, wc.status, wc.opcode, wc.byte_len),
        (7, WcStatus::Success, WcOpcode::Recv, 11)
    );
    let mut got = [0u8; 11];
    b.mr.read_at(5000, &mut got).unwrap();
    assert_eq!(&got, b"hello, peer");
    let wc = next(&a.cq);
    assert_eq!((wc.wr_id, wc.status, wc.opcode), (1, WcStatus::Success, WcOpcode::Send));
}

#[test]
fn unsignaled_sends_hold_their_slots_until_a_signaled_one_completes() {
    let (a, b) = pair();
    for i in 0..16 {
        recv(&b, i, i as usize * 64, 64).unwrap();
    }
    for i in 0..15 {
        send(&a, i, 0, 8, false).unwrap();
    }
    // Wait until the peer has consumed all 15 receives: still no completion at the sender.
    for _ in 0..15 {
        assert_eq!(next(&b.cq).status, WcStatus::Success);
    }
    assert!(!a.cq.wait(Duration::from_millis(50)).unwrap());
    assert_eq!(a.qp.send_queue_used(), 15);
    // Hold the response to the signaled send long enough to see the queue full.
    a.qp.set_faults(Faults {
        completion_delay: Some(Duration::from_millis(100)),
        ..Faults::default()
    });
    send(&a, 15, 0, 8, true).unwrap();
    assert!(
        matches!(
            send(&a, 16, 0, 8, true),
            Err(RdmaError::QueueFull {
                queue: "send",
                depth: 16
            })
        ),
        "16 outstanding"
    );
    let wc = next(&a.cq);
    assert_eq!((wc.wr_id, wc.status), (15, WcStatus::Success));
    assert_eq!(a.qp.send_queue_used(), 0, "the signaled completion retired all 16");
}

#[test]
fn send_without_a_receive_is_an_rnr_error_after_finite_retries() {
    let config = SoftConfig {
        rnr_retry: 3,
        rnr_timer: Duration::from_millis(10),
        ..SoftConfig::default()
    };
    let (a, b) = pair_with(config);
    recv(&a, 50, 0, 64).unwrap(); // A's own receive: flushed when A fails.
    let start = Instant::now();
    send(&a, 1, 0, 8, false).unwrap();
    send(&a, 2, 0, 8, false).unwrap();
    let wc = next(&a.cq);
    assert_eq!(
        (wc.wr_id, wc.status),
        (1, WcStatus::RnrRetryExcErr),
        "reported although unsignaled"
    );
    assert!(start.elapsed() >= Duration::from_millis(30), "3 retries of 10 ms");
    assert_eq!(next(&a.cq).status, WcStatus::WrFlushErr);
    assert_eq!(next(&a.cq).status, WcStatus::WrFlushErr);
    assert_eq!(a.qp.state(), QpState::Error);
    assert!(matches!(
        send(&a, 3, 0, 8, true),
        Err(RdmaError::InvalidState {
            state: QpState::Error,
            ..
        })
    ));
    // A closed the link, so B followed it into ERROR.
    wait_for_state(&b.qp, QpState::Error);
}

#[test]
fn a_receive_posted_during_the_rnr_retries_saves_the_send() {
    let config = SoftConfig {
        rnr_retry: 6,
        rnr_timer: Duration::from_millis(50),
        ..SoftConfig::default()
    };
    let (a, b) = pair_with(config);
    send(&a, 1, 0, 8, true).unwrap();
    thread::sleep(Duration::from_millis(20));
    recv(&b, 9, 0, 64).unwrap();
    assert_eq!(next(&a.cq).status, WcStatus::Success);
    assert_eq!(next(&b.cq).wr_id, 9);
}

#[test]
fn send_longer_than_the_receive_buffer_fails_both_sides() {
    let (a, b) = pair();
    recv(&b, 9, 0, 4).unwrap();
    send(&a, 1, 0, 5, true).unwrap();
    assert_eq!(next(&a.cq).status, WcStatus::RemInvReqErr);
    assert_eq!(next(&b.cq).status, WcStatus::LocLenErr);
}

fn wait_for_state(qp: &SoftQp, state: QpState) {
    let start = Instant::now();
    while qp.state() != state {
        assert!(start.elapsed() < WAIT, "still {:?}", qp.state());
        thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn write_then_read_back() {
    let (a, b) = pair();
    let data: Vec<u8> = (0..4097u32).map(|i| (i * 7) as u8).collect();
    a.mr.write_at(0, &data).unwrap();
    one_sided(
        &a,
        1,
        SendOp::RdmaWrite {
            remote: b.mr.remote_at(1000),
        },
        0,
        data.len(),
    )
    .unwrap();
    assert_eq!(next(&a.cq).opcode, WcOpcode::RdmaWrite);
    let mut got = vec![0u8; data.len()];
    b.mr.read_at(1000, &mut got).unwrap();
    assert_eq!(got, data);
    one_sided(
        &a,
        2,
        SendOp::RdmaRead {
            remote: b.mr.remote_at(1000),
        },
        8192,
        data.len(),
    )
    .unwrap();
    let wc = next(&a.cq);
    assert_eq!(
        (wc.opcode, wc.status, wc.byte_len),
        (WcOpcode::RdmaRead, WcStatus::Success, 4097)
    );
    a.mr.read_at(8192, &mut got).unwrap();
    assert_eq!(got, data);
    assert!(
        !b.cq.wait(Duration::from_millis(20)).unwrap(),
        "one-sided: nothing at the target"
    );
}

/// Builds the operation of a test case against the target side.
type OpFor = Box<dyn Fn(&Side) -> SendOp>;

#[test]
fn access_outside_the_region_or_with_a_wrong_rkey_is_a_remote_access_error() {
    let len = 1 << 20;
    let cases: [(&str, OpFor); 5] = [
        (
            "write past the end",
            Box::new(move |b| SendOp::RdmaWrite {
                remote: b.mr.remote_at(len - 4),
            }),
        ),
        (
            "read past the end",
            Box::new(move |b| SendOp::RdmaRead {
                remote: b.mr.remote_at(len - 4),
            }),
        ),
        (
            "read before the start",
            Box::new(|b| SendOp::RdmaRead {
                remote: RemoteAddr {
                    addr: b.mr.addr() - 1,
                    rkey: b.mr.rkey(),
                },
            }),
        ),
        (
            "write with a wrong rkey",
            Box::new(|b| SendOp::RdmaWrite {
                remote: RemoteAddr {
                    addr: b.mr.addr(),
                    rkey: b.mr.rkey() ^ 1,
                },
            }),
        ),
        (
            "read of a deregistered region",
            Box::new(|b| {
                let gone = b.pd.register(64).unwrap();
                let remote = gone.remote_at(0);
                drop(gone);
                SendOp::RdmaRead { remote }
            }),
        ),
    ];
    for (name, op) in cases {
        let (a, b) = pair();
        one_sided(&a, 1, op(&b), 0, 8).unwrap();
        let wc = next(&a.cq);
        assert_eq!((wc.wr_id, wc.status), (1, WcStatus::RemAccessErr), "{name}");
        assert_eq!(a.qp.state(), QpState::Error, "{name}");
        wait_for_state(&b.qp, QpState::Error);
    }
}

#[test]
fn a_dead_peer_flushes_every_outstanding_request() {
    let (a, b) = pair_with(SoftConfig {
        rnr_timer: Duration::from_secs(5),
        ..SoftConfig::default()
    });
    for i in 0..4 {
        recv(&a, 100 + i, 0, 64).unwrap();
    }
    // B never posts a receive and the RNR timer is long: A's sends stay outstanding.
    for i in 0..3 {
        send(&a, i, 0, 8, i == 1).unwrap();
    }
    thread::sleep(Duration::from_millis(20));
    drop(b);
    let mut wcs = Vec::new();
    for _ in 0..7 {
        wcs.push(next(&a.cq));
    }
    assert!(wcs.iter().all(|wc| wc.status == WcStatus::WrFlushErr), "{wcs:?}");
    let mut ids: Vec<u64> = wcs.iter().map(|wc| wc.wr_id).collect();
    ids.sort_unstable();
    assert_eq!(ids, [0, 1, 2, 100, 101, 102, 103]);
    assert_eq!(a.qp.state(), QpState::Error);
    assert!(send(&a, 9, 0, 8, true).is_err());
}

#[test]
fn injected_faults() {
    // Fail the second completion.
    let (a, b) = pair();
    a.qp.set_faults(Faults {
        fail_completion: Some((2, WcStatus::GeneralErr)),
        ..Faults::default()
    });
    for i in 0..3 {
        one_sided(
            &a,
            i,
            SendOp::RdmaWrite {
                remote: b.mr.remote_at(0),
            },
            0,
            8,
        )
        .unwrap();
    }
    let got: Vec<(u64, WcStatus)> = (0..3).map(|_| next(&a.cq)).map(|wc| (wc.wr_id, wc.status)).collect();
    assert_eq!(
        got,
        [
            (0, WcStatus::Success),
            (1, WcStatus::GeneralErr),
            (2, WcStatus::WrFlushErr)
        ]
    );

    // Drop the link after two packets: the third request never leaves.
    let (a, b) = pair();
    a.qp.set_faults(Faults {
        drop_link_after_packets: Some(2),
        ..Faults::default()
    });
    for i in 0..3 {
        one_sided(
            &a,
            i,
            SendOp::RdmaWrite {
                remote: b.mr.remote_at(0),
            },
            0,
            8,
        )
        .unwrap();
        let expected = if i < 2 { WcStatus::Success } else { WcStatus::WrFlushErr };
        assert_eq!(next(&a.cq).status, expected, "request {i}");
    }
    wait_for_state(&b.qp, QpState::Error);

    // Delay completions.
    let (a, b) = pair();
    a.qp.set_faults(Faults {
        completion_delay: Some(Duration::from_millis(30)),
        ..Faults::default()
    });
    let start = Instant::now();
    one_sided(
        &a,
        1,
        SendOp::RdmaWrite {
            remote: b.mr.remote_at(0),
        },
        0,
        8,
    )
    .unwrap();
    assert_eq!(next(&a.cq).status, WcStatus::Success);
    assert!(start.elapsed() >= Duration::from_millis(30));
}

#[test]
fn completion_queue_overrun_is_reported() {
    let pd = SoftPd::new();
    let cq = pd.create_cq(2).unwrap();
    let qp = pd
        .create_qp(
            &cq,
            &cq,
            QpCaps {
                max_send_wr: 4,
                max_recv_wr: 4,
            },
        )
        .unwrap();
    let mr = pd.register(64).unwrap();
    qp.to_init().unwrap();
    for i in 0..3 {
        qp.post_recv(&RecvWr {
            wr_id: i,
            local: Sge {
                mr: &mr,
                offset: 0,
                len: 8,
            },
        })
        .unwrap();
    }
    qp.to_error().unwrap();
    let mut wc = [WorkCompletion::EMPTY; 4];
    assert_eq!(cq.poll(&mut wc), Err(RdmaError::CqOverrun(2)));
}

#[test]
fn an_armed_waker_fires_on_the_next_completion() {
    use std::sync::atomic::AtomicBool;
    use std::task::Wake;
    struct Flag(AtomicBool);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let (a, b) = pair();
    let flag = Arc::new(Flag(AtomicBool::new(false)));
    let waker = Waker::from(flag.clone());
    a.cq.arm(&waker);
    assert!(!flag.0.load(Ordering::SeqCst));
    one_sided(
        &a,
        1,
        SendOp::RdmaWrite {
            remote: b.mr.remote_at(0),
        },
        0,
        8,
    )
    .unwrap();
    assert!(a.cq.wait(WAIT).unwrap());
    // The waker runs right after the completion is queued, on the link's thread.
    let start = Instant::now();
    while !flag.0.load(Ordering::SeqCst) {
        assert!(start.elapsed() < WAIT, "never woken");
        thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn over_tcp_on_loopback() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let client = TcpStream::connect(addr).unwrap();
    let (server, _) = listener.accept().unwrap();
    let config = SoftConfig::default();
    let (a, b) = (side(&config), side(&config));
    for (s, stream) in [(&a, client), (&b, server)] {
        s.qp.to_init().unwrap();
        s.qp.to_rtr(SoftLink::tcp(stream)).unwrap();
        s.qp.to_rts().unwrap();
    }
    recv(&b, 1, 0, 64).unwrap();
    a.mr.write_at(0, b"over tcp").unwrap();
    send(&a, 1, 0, 8, true).unwrap();
    assert_eq!(next(&b.cq).byte_len, 8);
    assert_eq!(next(&a.cq).status, WcStatus::Success);
    one_sided(
        &a,
        2,
        SendOp::RdmaWrite {
            remote: RemoteAddr { addr: 1, rkey: 1 },
        },
        0,
        8,
    )
    .unwrap();
    assert_eq!(
        next(&a.cq).status,
        WcStatus::RemAccessErr,
        "the NAK arrives before the link closes"
    );
    wait_for_state(&b.qp, QpState::Error);
}
