//! The blocking client against the fake node.

use std::sync::atomic::Ordering;
use std::time::Duration;

use corekv_net::client::blocking::Client;
use corekv_net::client::{ClientConfig, ClientError, Pipeline, Reply, SetCondition, SetOptions, Ttl};
use corekv_net::native::Opcode;
use corekv_net::routing::key_shard;

use crate::fake::{key_on, FakeCluster};

fn quick() -> ClientConfig {
    ClientConfig {
        request_timeout: Duration::from_secs(5),
        ..ClientConfig::default()
    }
}

const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<Client>();
};

fn connect(cluster: &FakeCluster) -> Client {
    Client::connect(cluster.seed(), quick()).expect("connect")
}

#[test]
fn every_operation() {
    let cluster = FakeCluster::start(3);
    let mut client = connect(&cluster);
    client.ping().unwrap();
    let topology = client.topology().unwrap();
    assert_eq!(topology.shard_count(), 3);
    assert_eq!(
        topology.endpoints().map(str::to_owned).collect::<Vec<_>>(),
        cluster.endpoints()
    );

    assert_eq!(client.get("a").unwrap(), None);
    assert!(client.set("a", "1", SetOptions::default()).unwrap());
    assert_eq!(client.get("a").unwrap().as_deref(), Some(&b"1"[..]));
    assert!(client.exists("a").unwrap());
    assert!(!client.exists("nope").unwrap());

    let nx = SetOptions {
        condition: SetCondition::IfAbsent,
        ..SetOptions::default()
    };
    let xx = SetOptions {
        condition: SetCondition::IfPresent,
        ..SetOptions::default()
    };
    assert!(!client.set("a", "2", nx).unwrap());
    assert!(client.set("a", "2", xx).unwrap());
    assert!(!client.set("b", "2", xx).unwrap());
    let borrowed: Vec<u8> = b"2".to_vec();
    assert!(client.set("b", &borrowed[..], nx).unwrap());

    assert_eq!(client.incr("n", 5).unwrap(), 5);
    assert_eq!(client.incr("n", -7).unwrap(), -2);
    client.set("s", "abc", SetOptions::default()).unwrap();
    let err = client.incr("s", 1).unwrap_err();
    assert!(err.is_not_an_integer(), "{err}");

    assert!(client.cas("a", "2", "3", None).unwrap());
    assert!(!client.cas("a", "2", "4", None).unwrap());
    assert!(!client.cas("missing", "", "x", None).unwrap());
    assert_eq!(client.get("a").unwrap().as_deref(), Some(&b"3"[..]));

    assert_eq!(client.ttl("a").unwrap(), Ttl::Persistent);
    assert_eq!(client.ttl("missing").unwrap(), Ttl::Missing);
    assert!(client.expire("a", Some(Duration::from_secs(100))).unwrap());
    match client.ttl("a").unwrap() {
        Ttl::Expires(left) => assert!(left <= Duration::from_secs(100) && left > Duration::from_secs(50)),
        other => panic!("{other:?}"),
    }
    assert!(client.expire("a", None).unwrap());
    assert_eq!(client.ttl("a").unwrap(), Ttl::Persistent);
    assert!(!client.expire("missing", None).unwrap());
    let with_ttl = SetOptions {
        ttl: Some(Duration::from_secs(30)),
        ..SetOptions::default()
    };
    assert!(client.set("t", "v", with_ttl).unwrap());
    assert!(matches!(client.ttl("t").unwrap(), Ttl::Expires(_)));

    client.mset(&[("m1", "x"), ("m2", "y")]).unwrap();
    assert_eq!(
        client.mget(&["m2", "zz", "m1"]).unwrap(),
        vec![Some("y".into()), None, Some("x".into())]
    );
    assert_eq!(client.mget::<&str>(&[]).unwrap(), Vec::<Option<bytes::Bytes>>::new());
    client.mset::<&str, &str>(&[]).unwrap();

    assert!(client.del("a").unwrap());
    assert!(!client.del("a").unwrap());
    assert_eq!(cluster.shared.misrouted.load(Ordering::SeqCst), 0);
}

#[test]
fn routing_sends_every_key_to_its_shard() {
    let cluster = FakeCluster::start(4);
    let mut client = connect(&cluster);
    for i in 0..200 {
        let key = format!("user:{i}");
        client.set(&key, key.clone(), SetOptions::default()).unwrap();
        assert_eq!(client.get(&key).unwrap().as_deref(), Some(key.as_bytes()));
    }
    assert_eq!(cluster.shared.misrouted.load(Ordering::SeqCst), 0);
    for (shard, count) in cluster.shared.keyed_requests.iter().enumerate() {
        let expected = (0..200)
            .filter(|i| key_shard(format!("user:{i}").as_bytes(), 4) == shard as u32)
            .count();
        assert_eq!(count.load(Ordering::SeqCst), 2 * expected as u64, "shard {shard}");
    }
}

#[test]
fn mget_and_mset_split_per_shard_and_keep_the_callers_order() {
    let cluster = FakeCluster::start(4);
    let mut client = connect(&cluster);
    let pairs: Vec<(String, String)> = (0..100).map(|i| (format!("k{i}"), format!("v{i}"))).collect();
    client.mset(&pairs).unwrap();
    assert_eq!(cluster.shared.seen(Opcode::MSet), 4, "one MSET frame per shard");

    let mut keys: Vec<String> = (0..120).rev().map(|i| format!("k{i}")).collect();
    keys.swap(3, 50);
    let values = client.mget(&keys).unwrap();
    assert_eq!(cluster.shared.seen(Opcode::MGet), 4, "one MGET frame per shard");
    for (key, value) in keys.iter().zip(&values) {
        let i: usize = key[1..].parse().unwrap();
        let expected = (i < 100).then(|| format!("v{i}"));
        assert_eq!(value.as_deref(), expected.as_deref().map(str::as_bytes), "{key}");
    }
    // Keys of one shard: one frame.
    let same: Vec<String> = (0..5).map(|n| key_on(2, 4, n)).collect();
    client.mget(&same).unwrap();
    assert_eq!(cluster.shared.seen(Opcode::MGet), 5);
    assert_eq!(cluster.shared.misrouted.load(Ordering::SeqCst), 0);
}

#[test]
fn pipeline_of_ten_thousand_requests() {
    let cluster = FakeCluster::start(3);
    let mut client = connect(&cluster);
    let mut pipeline = Pipeline::new();
    for i in 0..5_000 {
        pipeline.set(format!("p{i}"), format!("value-{i}"), SetOptions::default());
    }
    for i in 0..5_000 {
        pipeline.get(format!("p{i}"));
    }
    assert_eq!(pipeline.len(), 10_000);
    let results = client.execute(&pipeline);
    assert_eq!(results.len(), 10_000);
    for (i, result) in results.iter().enumerate() {
        match result {
            Ok(Reply::Bool(true)) if i < 5_000 => {}
            Ok(Reply::Value(Some(v))) if i >= 5_000 => assert_eq!(v, format!("value-{}", i - 5_000).as_bytes()),
            other => panic!("{i}: {other:?}"),
        }
    }
    assert_eq!(cluster.shared.misrouted.load(Ordering::SeqCst), 0);
}

#[test]
fn pipeline_of_large_values_does_not_deadlock() {
    // Responses far larger than the socket buffers: the client must read while it writes.
    let cluster = FakeCluster::start(2);
    let mut client = connect(&cluster);
    let big = vec![b'x'; 256 * 1024];
    client.set("big", big.clone(), SetOptions::default()).unwrap();
    let mut pipeline = Pipeline::new();
    for _ in 0..64 {
        pipeline.get("big");
    }
    for result in client.execute(&pipeline) {
        assert_eq!(result.unwrap(), Reply::Value(Some(big.clone().into())));
    }
}

#[test]
fn out_of_order_responses_are_matched_by_id() {
    let cluster = FakeCluster::start(2);
    let mut client = connect(&cluster);
    let mut pipeline = Pipeline::new();
    for i in 0..500 {
        pipeline.set(format!("o{i}"), format!("{i}"), SetOptions::default());
    }
    client.execute(&pipeline);
    cluster.shared.switches.reverse.store(true, Ordering::SeqCst);
    let mut pipeline = Pipeline::new();
    for i in 0..500 {
        pipeline.get(format!("o{i}")).incr(format!("c{i}"), i);
    }
    let results = client.execute(&pipeline);
    assert!(
        cluster.shared.reordered.load(Ordering::SeqCst) > 0,
        "the fake reordered responses"
    );
    for i in 0..500 {
        let value = results[2 * i as usize].clone().unwrap();
        assert_eq!(value, Reply::Value(Some(format!("{i}").into())));
        assert_eq!(results[2 * i as usize + 1].clone().unwrap(), Reply::Integer(i));
    }
}

#[test]
fn a_request_not_answered_in_time_times_out_and_the_connection_is_replaced() {
    let cluster = FakeCluster::start(2);
    let config = ClientConfig {
        request_timeout: Duration::from_millis(200),
        max_retries: 0,
        ..ClientConfig::default()
    };
    let mut client = Client::connect(cluster.seed(), config).unwrap();
    client.set("k", "v", SetOptions::default()).unwrap();
    cluster.shared.switches.stall.store(true, Ordering::SeqCst);
    let err = client.get("k").unwrap_err();
    assert!(matches!(err, ClientError::Timeout { outcome_unknown: false }), "{err}");
    let err = client.set("k", "w", SetOptions::default()).unwrap_err();
    assert!(matches!(err, ClientError::Timeout { outcome_unknown: true }), "{err}");
    assert!(err.is_outcome_unknown());
    cluster.shared.switches.stall.store(false, Ordering::SeqCst);
    // A fresh connection: the stalled requests' late answers (if any) cannot reach this one.
    assert_eq!(client.get("k").unwrap().as_deref(), Some(&b"v"[..]));
}

#[test]
fn a_timed_out_read_is_retried() {
    let cluster = FakeCluster::start(1);
    let config = ClientConfig {
        request_timeout: Duration::from_millis(200),
        ..ClientConfig::default()
    };
    let mut client = Client::connect(cluster.seed(), config).unwrap();
    client.set("k", "v", SetOptions::default()).unwrap();
    cluster.shared.switches.stall.store(true, Ordering::SeqCst);
    let shared = cluster.shared.clone();
    let unstall = std::thread::spawn(move || {
        crate::fake::wait_until("a GET to stall", || shared.seen(Opcode::Get) >= 1);
        shared.switches.stall.store(false, Ordering::SeqCst);
    });
    // The first GET stalls and times out; a retry on a new connection is answered.
    assert_eq!(client.get("k").unwrap().as_deref(), Some(&b"v"[..]));
    unstall.join().unwrap();
    assert!(cluster.shared.seen(Opcode::Get) >= 2);
}

#[test]
fn the_next_call_after_a_node_restart_reconnects() {
    let mut cluster = FakeCluster::start(3);
    let mut client = connect(&cluster);
    for shard in 0..3 {
        client
            .set(key_on(shard, 3, 0), "before", SetOptions::default())
            .unwrap();
    }
    let topologies = cluster.shared.seen(Opcode::Topology);
    cluster.restart();
    // Writes too: the client notices the closed idle connections before sending.
    for shard in 0..3 {
        assert!(client.set(key_on(shard, 3, 0), "after", SetOptions::default()).unwrap());
    }
    assert!(
        cluster.shared.seen(Opcode::Topology) > topologies,
        "topology fetched again"
    );
    assert_eq!(client.get(key_on(1, 3, 0)).unwrap().as_deref(), Some(&b"after"[..]));
}

#[test]
fn a_read_is_retried_after_a_disconnection() {
    let cluster = FakeCluster::start(2);
    let mut client = connect(&cluster);
    client.set("r", "v", SetOptions::default()).unwrap();
    cluster.shared.switches.drop_next.store(1, Ordering::SeqCst);
    assert_eq!(client.get("r").unwrap().as_deref(), Some(&b"v"[..]));
    assert_eq!(cluster.shared.seen(Opcode::Get), 2, "sent, dropped, sent again");
}

#[test]
fn a_write_is_not_retried_once_sent() {
    let cluster = FakeCluster::start(2);
    let mut client = connect(&cluster);
    client.ping().unwrap();
    cluster.shared.switches.drop_next.store(1, Ordering::SeqCst);
    let err = client.set("w", "v", SetOptions::default()).unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Disconnected {
                outcome_unknown: true,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.is_outcome_unknown());
    assert_eq!(cluster.shared.seen(Opcode::Set), 1, "not retried");
    for write in 0..4 {
        cluster.shared.switches.drop_next.store(1, Ordering::SeqCst);
        let result = match write {
            0 => client.del("w").map(drop),
            1 => client.incr("w", 1).map(drop),
            2 => client.mset(&[("w", "1")]),
            _ => client.cas("w", "a", "b", None).map(drop),
        };
        assert!(result.unwrap_err().is_outcome_unknown(), "write {write}");
    }
    // The client recovers on the next call.
    assert!(client.set("w", "v", SetOptions::default()).unwrap());
}

#[test]
fn wrong_shard_refreshes_the_topology_and_retries_even_a_write() {
    let cluster = FakeCluster::start(2);
    // The node first claims a single shard: keys of shard 1 go to shard 0's port.
    *cluster.shared.switches.topology_override.lock().unwrap() = Some(vec![cluster.endpoints()[0].clone()]);
    let mut client = connect(&cluster);
    assert_eq!(client.topology().unwrap().shard_count(), 1);
    *cluster.shared.switches.topology_override.lock().unwrap() = None;
    let key = key_on(1, 2, 0);
    assert!(client.set(&key, "v", SetOptions::default()).unwrap());
    assert_eq!(cluster.shared.misrouted.load(Ordering::SeqCst), 1);
    assert_eq!(client.topology().unwrap().shard_count(), 2);
    assert_eq!(client.get(&key).unwrap().as_deref(), Some(&b"v"[..]));
    assert_eq!(cluster.shared.misrouted.load(Ordering::SeqCst), 1);
}

#[test]
fn malformed_server_bytes_are_a_protocol_error() {
    let cluster = FakeCluster::start(1);
    let config = ClientConfig {
        max_retries: 1,
        ..ClientConfig::default()
    };
    let mut client = Client::connect(cluster.seed(), config).unwrap();
    cluster.shared.switches.garbage.store(true, Ordering::SeqCst);
    let err = client.get("k").unwrap_err();
    assert!(matches!(err, ClientError::Protocol(_)), "{err}");
    let err = client.set("k", "v", SetOptions::default()).unwrap_err();
    assert!(err.is_outcome_unknown(), "{err}");
    cluster.shared.switches.garbage.store(false, Ordering::SeqCst);
    client.ping().unwrap();
}

#[test]
fn an_unknown_routing_hash_is_refused() {
    let cluster = FakeCluster::start(1);
    cluster.shared.switches.hash_id.store(7, Ordering::SeqCst);
    let err = Client::connect(cluster.seed(), ClientConfig::default()).unwrap_err();
    assert!(
        matches!(err, ClientError::Topology(ref m) if m.contains("hash")),
        "{err}"
    );
}

#[test]
fn connecting_to_nothing_is_an_io_error() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let config = ClientConfig {
        max_retries: 1,
        ..ClientConfig::default()
    };
    let err = Client::connect(format!("127.0.0.1:{port}"), config).unwrap_err();
    assert!(matches!(err, ClientError::Io(_)), "{err}");
}

#[test]
fn requests_with_crc_trailers() {
    let cluster = FakeCluster::start(2);
    let config = ClientConfig {
        crc: true,
        ..ClientConfig::default()
    };
    let mut client = Client::connect(cluster.seed(), config).unwrap();
    assert!(client.set("c", "v", SetOptions::default()).unwrap());
    client.mset(&[("c1", "1"), ("c2", "2")]).unwrap();
    assert_eq!(
        client.mget(&["c", "c2"]).unwrap(),
        vec![Some("v".into()), Some("2".into())]
    );
    assert!(client.cas("c", "v", "w", Some(Duration::from_secs(9))).unwrap());
}
