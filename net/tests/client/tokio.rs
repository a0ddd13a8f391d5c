//! The tokio client against the fake node.

use std::sync::atomic::Ordering;
use std::time::Duration;

use corekv_net::client::tokio::Client;
use corekv_net::client::{ClientConfig, ClientError, Pipeline, Reply, SetCondition, SetOptions, Ttl};
use corekv_net::native::Opcode;

use crate::fake::{key_on, FakeCluster};

async fn connect(cluster: &FakeCluster) -> Client {
    Client::connect(cluster.seed(), ClientConfig::default())
        .await
        .expect("connect")
}

fn assert_send_sync<T: Send + Sync + Clone>(_: &T) {}

// On the current-thread runtime: the connection tasks interleave with the caller.
#[tokio::test]
async fn every_operation() {
    let cluster = FakeCluster::start(3);
    let client = connect(&cluster).await;
    assert_send_sync(&client);
    client.ping().await.unwrap();
    assert_eq!(client.topology().await.unwrap().shard_count(), 3);

    assert_eq!(client.get("a").await.unwrap(), None);
    assert!(client.set("a", "1", SetOptions::default()).await.unwrap());
    assert_eq!(client.get("a").await.unwrap().as_deref(), Some(&b"1"[..]));
    assert!(client.exists("a").await.unwrap());
    assert!(!client.exists("nope").await.unwrap());
    let nx = SetOptions {
        condition: SetCondition::IfAbsent,
        ..SetOptions::default()
    };
    assert!(!client.set("a", "2", nx).await.unwrap());
    assert!(client.set("b", "2", nx).await.unwrap());

    assert_eq!(client.incr("n", 5).await.unwrap(), 5);
    assert_eq!(client.incr("big", i64::MAX).await.unwrap(), i64::MAX);
    assert!(client.incr("big", 1).await.unwrap_err().is_overflow());

    assert!(client.cas("b", "2", "3", None).await.unwrap());
    assert!(!client.cas("b", "2", "4", None).await.unwrap());
    assert_eq!(client.get("b").await.unwrap().as_deref(), Some(&b"3"[..]));

    assert_eq!(client.ttl("b").await.unwrap(), Ttl::Persistent);
    assert_eq!(client.ttl("missing").await.unwrap(), Ttl::Missing);
    assert!(client.expire("b", Some(Duration::from_secs(100))).await.unwrap());
    assert!(matches!(client.ttl("b").await.unwrap(), Ttl::Expires(_)));
    assert!(client.expire("b", None).await.unwrap());

    let pairs: Vec<(String, String)> = (0..50).map(|i| (format!("m{i}"), format!("v{i}"))).collect();
    client.mset(&pairs).await.unwrap();
    assert_eq!(cluster.shared.seen(Opcode::MSet), 3, "one MSET frame per shard");
    let keys: Vec<String> = (0..60).rev().map(|i| format!("m{i}")).collect();
    let values = client.mget(&keys).await.unwrap();
    for (key, value) in keys.iter().zip(values) {
        let i: usize = key[1..].parse().unwrap();
        assert_eq!(
            value.map(|v| v.to_vec()),
            (i < 50).then(|| format!("v{i}").into_bytes())
        );
    }
    assert!(client.del("a").await.unwrap());
    assert!(!client.del("a").await.unwrap());
    assert_eq!(cluster.shared.misrouted.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_share_the_connections() {
    let cluster = FakeCluster::start(3);
    let client = connect(&cluster).await;
    let mut tasks = Vec::new();
    for t in 0..20 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                let key = format!("t{t}-{i}");
                client.set(&key, key.clone(), SetOptions::default()).await.unwrap();
                assert_eq!(client.get(&key).await.unwrap().as_deref(), Some(key.as_bytes()));
                client.incr("shared-counter", 1).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(client.incr("shared-counter", 0).await.unwrap(), 1000);
    assert_eq!(cluster.shared.misrouted.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_of_ten_thousand_requests_out_of_order() {
    let cluster = FakeCluster::start(3);
    let client = connect(&cluster).await;
    cluster.shared.switches.reverse.store(true, Ordering::SeqCst);
    let mut pipeline = Pipeline::new();
    for i in 0..5_000 {
        pipeline.set(format!("p{i}"), format!("value-{i}"), SetOptions::default());
    }
    for i in 0..5_000 {
        pipeline.get(format!("p{i}"));
    }
    let results = client.execute(&pipeline).await;
    assert_eq!(results.len(), 10_000);
    for (i, result) in results.into_iter().enumerate() {
        match result {
            Ok(Reply::Bool(true)) if i < 5_000 => {}
            Ok(Reply::Value(Some(v))) if i >= 5_000 => assert_eq!(v, format!("value-{}", i - 5_000).as_bytes()),
            other => panic!("{i}: {other:?}"),
        }
    }
    assert!(cluster.shared.reordered.load(Ordering::SeqCst) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_retries_and_reconnection() {
    let mut cluster = FakeCluster::start(2);
    let config = ClientConfig {
        request_timeout: Duration::from_millis(200),
        max_retries: 0,
        ..ClientConfig::default()
    };
    let client = Client::connect(cluster.seed(), config).await.unwrap();
    client.set("k", "v", SetOptions::default()).await.unwrap();

    // Timeouts: a read's outcome is known, a write's is not.
    cluster.shared.switches.stall.store(true, Ordering::SeqCst);
    let err = client.get("k").await.unwrap_err();
    assert!(matches!(err, ClientError::Timeout { outcome_unknown: false }), "{err}");
    let err = client.set("k", "w", SetOptions::default()).await.unwrap_err();
    assert!(matches!(err, ClientError::Timeout { outcome_unknown: true }), "{err}");
    cluster.shared.switches.stall.store(false, Ordering::SeqCst);
    assert!(client.get("k").await.unwrap().is_some());

    // A write whose connection drops after sending is not retried.
    cluster.shared.switches.drop_next.store(1, Ordering::SeqCst);
    let sets = cluster.shared.seen(Opcode::Set);
    let err = client.set("k", "x", SetOptions::default()).await.unwrap_err();
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
    assert_eq!(cluster.shared.seen(Opcode::Set), sets + 1);

    // With retries, a read survives a dropped connection.
    let retrying = Client::connect(
        cluster.seed(),
        ClientConfig {
            request_timeout: Duration::from_secs(5),
            ..ClientConfig::default()
        },
    )
    .await
    .unwrap();
    retrying.ping().await.unwrap();
    cluster.shared.switches.drop_next.store(1, Ordering::SeqCst);
    let gets = cluster.shared.seen(Opcode::Get);
    assert!(retrying.get("k").await.unwrap().is_some());
    assert_eq!(cluster.shared.seen(Opcode::Get), gets + 2);

    // A node restart: the next calls reconnect and fetch the topology again.
    let topologies = cluster.shared.seen(Opcode::Topology);
    cluster.restart();
    assert!(retrying.get("k").await.unwrap().is_some());
    for shard in 0..2 {
        assert!(retrying
            .set(key_on(shard, 2, 0), "after", SetOptions::default())
            .await
            .unwrap());
    }
    assert!(cluster.shared.seen(Opcode::Topology) > topologies);

    // Malformed bytes: a protocol error, not a panic.
    cluster.shared.switches.garbage.store(true, Ordering::SeqCst);
    let err = client.get("k").await.unwrap_err();
    assert!(matches!(err, ClientError::Protocol(_)), "{err}");
    cluster.shared.switches.garbage.store(false, Ordering::SeqCst);
    client.ping().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_shard_refreshes_the_topology() {
    let cluster = FakeCluster::start(2);
    *cluster.shared.switches.topology_override.lock().unwrap() = Some(vec![cluster.endpoints()[0].clone()]);
    let client = connect(&cluster).await;
    *cluster.shared.switches.topology_override.lock().unwrap() = None;
    let key = key_on(1, 2, 0);
    assert!(client.set(&key, "v", SetOptions::default()).await.unwrap());
    assert_eq!(cluster.shared.misrouted.load(Ordering::SeqCst), 1);
    assert_eq!(client.topology().await.unwrap().shard_count(), 2);
}
