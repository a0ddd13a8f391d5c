//! The control channel over the in-process soft provider.

use std::thread;

use super::*;
use crate::provider::{ProtectionDomain, QpCaps};
use crate::soft::{SoftConfig, SoftCq, SoftLink, SoftPd, SoftQp};

type Chan = ControlChannel<SoftQp, SoftCq>;

const WAIT: Duration = Duration::from_secs(20);

fn channel(config: ChannelConfig) -> Chan {
    let pd = SoftPd::with_config(SoftConfig::default()).unwrap();
    let cq = pd.create_cq(config.cq_capacity()).unwrap();
    let caps = QpCaps {
        max_send_wr: config.send_queue_depth,
        max_recv_wr: config.recv_slots(),
    };
    let qp = pd.create_qp(&cq, &cq, caps).unwrap();
    let mr = pd.register(config.region_len()).unwrap();
    qp.to_init().unwrap();
    ControlChannel::new(qp, cq, mr, config).unwrap()
}

fn channel_pair(config: ChannelConfig) -> (Chan, Chan) {
    let (a, b) = (channel(config), channel(config));
    let (la, lb) = SoftLink::pair();
    for (c, l) in [(&a, la), (&b, lb)] {
        c.qp().to_rtr(l).unwrap();
        c.qp().to_rts().unwrap();
    }
    (a, b)
}

fn payload(i: u64) -> [u8; 16] {
    let mut p = [0u8; 16];
    p[..8].copy_from_slice(&i.to_le_bytes());
    p[8..].copy_from_slice(&(!i).to_le_bytes());
    p
}

fn check_payload(buf: &[u8; PAYLOAD_MAX], len: usize, i: u64) {
    assert_eq!(len, 16);
    assert_eq!(&buf[..16], &payload(i), "message {i}");
}

#[test]
fn settings_are_validated() {
    let bad = [
        ChannelConfig {
            grant_slots: 0,
            ..ChannelConfig::default()
        },
        ChannelConfig {
            signal_every: 65,
            ..ChannelConfig::default()
        },
        ChannelConfig {
            high_water: 33,
            ..ChannelConfig::default()
        },
        ChannelConfig {
            credits: 0,
            ..ChannelConfig::default()
        },
    ];
    for config in bad {
        assert!(config.validate().is_err(), "{config:?}");
    }
    // A completion queue too small for a full flush is refused.
    let config = ChannelConfig::default();
    let pd = SoftPd::new();
    let cq = pd.create_cq(config.cq_capacity() - 1).unwrap();
    let qp = pd
        .create_qp(
            &cq,
            &cq,
            QpCaps {
                max_send_wr: 64,
                max_recv_wr: 64,
            },
        )
        .unwrap();
    qp.to_init().unwrap();
    let mr = pd.register(config.region_len()).unwrap();
    assert!(matches!(
        ControlChannel::new(qp, cq, mr, config),
        Err(ChannelError::Config(_))
    ));
}

#[test]
fn sender_uses_its_credits_then_queues_then_pushes_back() {
    let config = ChannelConfig {
        credits: 4,
        high_water: 2,
        grant_slots: 1,
        send_queue_depth: 8,
        signal_every: 4,
        queue_limit: 3,
    };
    let (mut a, mut b) = channel_pair(config);
    for i in 0..4 {
        assert_eq!(a.try_send(&payload(i)), Ok(Sent::Posted));
    }
    for i in 4..7 {
        assert_eq!(a.try_send(&payload(i)), Ok(Sent::Queued));
    }
    assert_eq!(a.try_send(&payload(7)), Err(TrySendError::WouldBlock));
    assert_eq!(a.credits_available(), 0);
    let mut buf = [0u8; PAYLOAD_MAX];
    // Taking two messages returns two buffers: the high-water mark, so an explicit grant.
    for i in 0..2 {
        let len = b.recv_blocking(&mut buf, WAIT).unwrap();
        check_payload(&buf, len, i);
    }
    assert_eq!(b.stats().grants_sent, 1);
    // The grant lets two of the queued messages out.
    let deadline = Instant::now() + WAIT;
    while a.waiting() > 1 {
        assert!(Instant::now() < deadline, "the grant never arrived");
        a.progress().unwrap();
        a.cq().wait(Duration::from_millis(10)).unwrap();
    }
    assert_eq!(a.waiting(), 1, "two credits returned, two sent, one still waiting");
    assert!(matches!(
        a.flush_blocking(Duration::from_millis(50)),
        Err(ChannelError::Timeout(_))
    ));
    for i in 2..4 {
        let len = b.recv_blocking(&mut buf, WAIT).unwrap();
        check_payload(&buf, len, i);
    }
    // Two more returned: the last queued message goes out.
    a.flush_blocking(WAIT).unwrap();
    for i in 4..7 {
        let len = b.recv_blocking(&mut buf, WAIT).unwrap();
        check_payload(&buf, len, i);
    }
    assert_eq!(a.waiting(), 0);
    assert_eq!(a.stats().would_block, 1);
    assert_eq!(a.stats().queued, 3);
    assert_eq!(b.stats().data_received, 7);
    assert_eq!(a.stats().rnr_errors + b.stats().rnr_errors, 0);
}

#[test]
fn a_slow_receiver_bounds_the_sender_without_errors() {
    const N: u64 = 20_000;
    let config = ChannelConfig {
        credits: 16,
        high_water: 4,
        queue_limit: 8,
        ..ChannelConfig::default()
    };
    let (mut a, mut b) = channel_pair(config);
    let receiver = thread::spawn(move || {
        let mut buf = [0u8; PAYLOAD_MAX];
        for i in 0..N {
            let len = b.recv_blocking(&mut buf, WAIT).unwrap();
            check_payload(&buf, len, i);
            if i % 500 == 0 {
                thread::sleep(Duration::from_millis(1));
            }
        }
        // Tell the sender everything arrived.
        b.send_blocking(b"done", WAIT).unwrap();
        b.flush_blocking(WAIT).unwrap();
        b
    });
    for i in 0..N {
        a.send_blocking(&payload(i), WAIT).unwrap();
    }
    let mut buf = [0u8; PAYLOAD_MAX];
    assert_eq!(a.recv_blocking(&mut buf, WAIT).unwrap(), 4);
    let b = receiver.join().unwrap();
    let (sa, sb) = (a.stats(), b.stats());
    assert_eq!((sa.data_sent, sb.data_received), (N, N));
    assert_eq!(sa.rnr_errors + sb.rnr_errors + sa.access_errors + sb.access_errors, 0);
    assert!(sa.would_block > 0, "the receiver, not the sender, set the pace: {sa:?}");
    assert!(sb.grants_sent > 0);
    assert!(sa.send_queue_high <= config.send_queue_depth);
    assert!(sa.signaled >= N / u64::from(config.signal_every));
    assert!(sa.cq_high as usize <= config.cq_capacity());
}

#[test]
fn two_starved_sides_do_not_deadlock() {
    // One credit each way and one grant slot: the tightest configuration.
    const N: u64 = 3_000;
    let config = ChannelConfig {
        credits: 1,
        high_water: 1,
        grant_slots: 1,
        send_queue_depth: 4,
        signal_every: 2,
        queue_limit: 1,
    };
    let (a, b) = channel_pair(config);
    let run = |mut c: Chan| {
        thread::spawn(move || {
            let deadline = Instant::now() + WAIT;
            let (mut sent, mut received) = (0u64, 0u64);
            let mut buf = [0u8; PAYLOAD_MAX];
            while sent < N || received < N {
                assert!(
                    Instant::now() < deadline,
                    "deadlock: sent {sent} received {received} {c:?}"
                );
                let mut moved = false;
                if sent < N && c.try_send(&payload(sent)).is_ok() {
                    sent += 1;
                    moved = true;
                }
                if let Some(len) = c.try_recv(&mut buf).unwrap() {
                    check_payload(&buf, len, received);
                    received += 1;
                    moved = true;
                }
                if !moved {
                    c.cq().wait(Duration::from_millis(100)).unwrap();
                }
            }
            c.flush_blocking(WAIT).unwrap();
            c // Dropped only once both sides are done: dropping closes the link.
        })
    };
    let (ta, tb) = (run(a), run(b));
    let (a, b) = (ta.join().unwrap(), tb.join().unwrap());
    let (sa, sb) = (a.stats(), b.stats());
    assert_eq!((sa.data_received, sb.data_received), (N, N));
}

#[test]
fn a_dead_peer_fails_the_sender_without_hanging() {
    let config = ChannelConfig {
        credits: 4,
        high_water: 2,
        queue_limit: 2,
        ..ChannelConfig::default()
    };
    let (mut a, b) = channel_pair(config);
    for i in 0..6 {
        a.try_send(&payload(i)).unwrap();
    }
    drop(b);
    let err = a.send_blocking(&payload(6), WAIT).unwrap_err();
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
    assert!(a.try_send(&payload(7)).is_err());
    assert_eq!(a.qp().state(), QpState::Error);
}

#[test]
fn a_parked_task_is_woken_by_a_grant() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::task::{Wake, Waker};
    struct Flag(AtomicBool);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let config = ChannelConfig {
        credits: 2,
        high_water: 1,
        queue_limit: 1,
        ..ChannelConfig::default()
    };
    let (mut a, mut b) = channel_pair(config);
    let flag = Arc::new(Flag(AtomicBool::new(false)));
    let waker = Waker::from(flag.clone());
    let mut cx = Context::from_waker(&waker);
    let mut i = 0;
    // Fill credits and the queue; the first refusal parks the task.
    while let Poll::Ready(sent) = a.poll_send(&mut cx, &payload(i)) {
        sent.unwrap();
        i += 1;
        assert!(i < 10);
    }
    assert_eq!(i, 3);
    let mut buf = [0u8; PAYLOAD_MAX];
    b.recv_blocking(&mut buf, WAIT).unwrap();
    let start = Instant::now();
    while !flag.0.load(Ordering::SeqCst) {
        assert!(start.elapsed() < WAIT, "never woken");
        thread::sleep(Duration::from_millis(1));
    }
    assert!(a.poll_send(&mut cx, &payload(i)).is_ready());

    // The receiving side parks the same way.
    let (mut a, mut b) = channel_pair(config);
    flag.0.store(false, Ordering::SeqCst);
    assert!(b.poll_recv(&mut cx, &mut buf).is_pending());
    a.try_send(&payload(0)).unwrap();
    let start = Instant::now();
    while !flag.0.load(Ordering::SeqCst) {
        assert!(start.elapsed() < WAIT, "receiver never woken");
        thread::sleep(Duration::from_millis(1));
    }
    match b.poll_recv(&mut cx, &mut buf) {
        Poll::Ready(Ok(len)) => check_payload(&buf, len, 0),
        other => panic!("{other:?}"),
    }
}
