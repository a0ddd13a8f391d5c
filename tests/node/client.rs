//! The client library (`corekv_net::client`, blocking and tokio) against a real node: every
//! operation, routing (each request served by its owning shard, checked with the node's per-shard
//! counters), a 10,000-request pipeline, responses arriving out of order across shards, timeouts
//! against a stopped node, and reconnection after a restart.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use corekv_net::client::{blocking, ClientConfig, ClientError, Pipeline, Reply, SetCondition, SetOptions, Ttl};
use corekv_net::routing::key_shard;
use nix::sys::signal::Signal;

use crate::support::{corekv_only, free_port, Node, Stopped, TestDir};

/// The operations of both clients behind one interface, so one scenario checks both.
trait Ops {
    fn ping(&mut self) -> Result<(), ClientError>;
    fn get(&mut self, key: &str) -> Result<Option<Bytes>, ClientError>;
    fn set(&mut self, key: &str, value: &[u8], options: SetOptions) -> Result<bool, ClientError>;
    fn del(&mut self, key: &str) -> Result<bool, ClientError>;
    fn mget(&mut self, keys: &[String]) -> Result<Vec<Option<Bytes>>, ClientError>;
    fn mset(&mut self, pairs: &[(String, String)]) -> Result<(), ClientError>;
    fn cas(&mut self, key: &str, expected: &str, new: &str, ttl: Option<Duration>) -> Result<bool, ClientError>;
    fn incr(&mut self, key: &str, delta: i64) -> Result<i64, ClientError>;
    fn expire(&mut self, key: &str, ttl: Option<Duration>) -> Result<bool, ClientError>;
    fn ttl(&mut self, key: &str) -> Result<Ttl, ClientError>;
    fn exists(&mut self, key: &str) -> Result<bool, ClientError>;
    fn execute(&mut self, pipeline: &Pipeline) -> Vec<Result<Reply, ClientError>>;
}

impl Ops for blocking::Client {
    fn ping(&mut self) -> Result<(), ClientError> {
        blocking::Client::ping(self)
    }
    fn get(&mut self, key: &str) -> Result<Option<Bytes>, ClientError> {
        blocking::Client::get(self, key)
    }
    fn set(&mut self, key: &str, value: &[u8], options: SetOptions) -> Result<bool, ClientError> {
        blocking::Client::set(self, key, value, options)
    }
    fn del(&mut self, key: &str) -> Result<bool, ClientError> {
        blocking::Client::del(self, key)
    }
    fn mget(&mut self, keys: &[String]) -> Result<Vec<Option<Bytes>>, ClientError> {
        blocking::Client::mget(self, keys)
    }
    fn mset(&mut self, pairs: &[(String, String)]) -> Result<(), ClientError> {
        blocking::Client::mset(self, pairs)
    }
    fn cas(&mut self, key: &str, expected: &str, new: &str, ttl: Option<Duration>) -> Result<bool, ClientError> {
        blocking::Client::cas(self, key, expected, new, ttl)
    }
    fn incr(&mut self, key: &str, delta: i64) -> Result<i64, ClientError> {
        blocking::Client::incr(self, key, delta)
    }
    fn expire(&mut self, key: &str, ttl: Option<Duration>) -> Result<bool, ClientError> {
        blocking::Client::expire(self, key, ttl)
    }
    fn ttl(&mut self, key: &str) -> Result<Ttl, ClientError> {
        blocking::Client::ttl(self, key)
    }
    fn exists(&mut self, key: &str) -> Result<bool, ClientError> {
        blocking::Client::exists(self, key)
    }
    fn execute(&mut self, pipeline: &Pipeline) -> Vec<Result<Reply, ClientError>> {
        blocking::Client::execute(self, pipeline)
    }
}

/// The tokio client, driven from a test thread by its own runtime.
struct TokioOps {
    runtime: tokio::runtime::Runtime,
    client: corekv_net::client::tokio::Client,
}

impl TokioOps {
    fn connect(seed: String, config: ClientConfig) -> Result<TokioOps, ClientError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let client = runtime.block_on(corekv_net::client::tokio::Client::connect(seed, config))?;
        Ok(TokioOps { runtime, client })
    }
}

impl Ops for TokioOps {
    fn ping(&mut self) -> Result<(), ClientError> {
        self.runtime.block_on(self.client.ping())
    }
    fn get(&mut self, key: &str) -> Result<Option<Bytes>, ClientError> {
        self.runtime.block_on(self.client.get(key))
    }
    fn set(&mut self, key: &str, value: &[u8], options: SetOptions) -> Result<bool, ClientError> {
        self.runtime.block_on(self.client.set(key, value, options))
    }
    fn del(&mut self, key: &str) -> Result<bool, ClientError> {
        self.runtime.block_on(self.client.del(key))
    }
    fn mget(&mut self, keys: &[String]) -> Result<Vec<Option<Bytes>>, ClientError> {
        self.runtime.block_on(self.client.mget(keys))
    }
    fn mset(&mut self, pairs: &[(String, String)]) -> Result<(), ClientError> {
        self.runtime.block_on(self.client.mset(pairs))
    }
    fn cas(&mut self, key: &str, expected: &str, new: &str, ttl: Option<Duration>) -> Result<bool, ClientError> {
        self.runtime.block_on(self.client.cas(key, expected, new, ttl))
    }
    fn incr(&mut self, key: &str, delta: i64) -> Result<i64, ClientError> {
        self.runtime.block_on(self.client.incr(key, delta))
    }
    fn expire(&mut self, key: &str, ttl: Option<Duration>) -> Result<bool, ClientError> {
        self.runtime.block_on(self.client.expire(key, ttl))
    }
    fn ttl(&mut self, key: &str) -> Result<Ttl, ClientError> {
        self.runtime.block_on(self.client.ttl(key))
    }
    fn exists(&mut self, key: &str) -> Result<bool, ClientError> {
        self.runtime.block_on(self.client.exists(key))
    }
    fn execute(&mut self, pipeline: &Pipeline) -> Vec<Result<Reply, ClientError>> {
        self.runtime.block_on(self.client.execute(pipeline))
    }
}

#[derive(Clone, Copy, Debug)]
enum Flavor {
    Blocking,
    Tokio,
}

const BOTH: [Flavor; 2] = [Flavor::Blocking, Flavor::Tokio];

fn connect_with(flavor: Flavor, seed: String, config: ClientConfig) -> Result<Box<dyn Ops>, ClientError> {
    Ok(match flavor {
        Flavor::Blocking => Box::new(blocking::Client::connect(seed, config)?),
        Flavor::Tokio => Box::new(TokioOps::connect(seed, config)?),
    })
}

fn connect(flavor: Flavor, node: &Node) -> Box<dyn Ops> {
    connect_with(flavor, node.native_addr().to_string(), ClientConfig::default()).expect("client connects")
}

fn some(s: &str) -> Option<Bytes> {
    Some(Bytes::copy_from_slice(s.as_bytes()))
}

/// Per-shard native request counts from INFO native.
fn native_requests(node: &Node) -> Vec<u64> {
    let mut redis = node.client();
    let info: String = redis::cmd("INFO").arg("native").query(&mut redis).unwrap();
    let field = |line: &str, name: &str| -> u64 {
        line.split(',')
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {line:?}"))
    };
    let lines: Vec<&str> = info.lines().filter(|l| l.starts_with("shard")).collect();
    for line in &lines {
        assert_eq!(
            field(line, "wrong_shard"),
            0,
            "a request reached a shard not owning its key: {info}"
        );
    }
    let stats: String = redis::cmd("INFO").arg("stats").query(&mut redis).unwrap();
    assert!(stats.contains("cross_shard_commands:0"), "{stats}");
    lines.iter().map(|l| field(l, "requests")).collect()
}

#[test]
fn every_operation_with_both_clients() {
    if corekv_only() {
        return;
    }
    let node = Node::start(&[]);
    for flavor in BOTH {
        let mut c = connect(flavor, &node);
        let k = |name: &str| format!("{flavor:?}:{name}");
        c.ping().unwrap();
        assert_eq!(c.get(&k("a")).unwrap(), None);
        assert!(c.set(&k("a"), b"1", SetOptions::default()).unwrap());
        assert_eq!(c.get(&k("a")).unwrap(), some("1"));
        let nx = SetOptions {
            condition: SetCondition::IfAbsent,
            ..SetOptions::default()
        };
        let xx = SetOptions {
            condition: SetCondition::IfPresent,
            ..SetOptions::default()
        };
        assert!(!c.set(&k("a"), b"2", nx).unwrap());
        assert!(!c.set(&k("absent"), b"2", xx).unwrap());
        assert!(c.set(&k("a"), b"3", xx).unwrap());
        assert!(c.set(&k("b"), b"x", nx).unwrap());
        assert_eq!(c.get(&k("a")).unwrap(), some("3"));

        assert!(c.exists(&k("a")).unwrap());
        assert!(!c.exists(&k("absent")).unwrap());
        assert!(c.del(&k("a")).unwrap());
        assert!(!c.del(&k("a")).unwrap());

        assert_eq!(c.incr(&k("n"), 5).unwrap(), 5);
        assert_eq!(c.incr(&k("n"), -7).unwrap(), -2);
        assert!(c.incr(&k("b"), 1).unwrap_err().is_not_an_integer());
        assert_eq!(c.incr(&k("max"), i64::MAX).unwrap(), i64::MAX);
        assert!(c.incr(&k("max"), 1).unwrap_err().is_overflow());

        assert!(!c.cas(&k("b"), "y", "z", None).unwrap());
        assert!(c.cas(&k("b"), "x", "y", None).unwrap());
        assert_eq!(c.get(&k("b")).unwrap(), some("y"));
        assert!(!c.cas(&k("absent"), "", "z", None).unwrap());

        assert_eq!(c.ttl(&k("b")).unwrap(), Ttl::Persistent);
        assert_eq!(c.ttl(&k("absent")).unwrap(), Ttl::Missing);
        assert!(c.expire(&k("b"), Some(Duration::from_secs(100))).unwrap());
        match c.ttl(&k("b")).unwrap() {
            Ttl::Expires(left) => assert!(left > Duration::from_secs(90) && left <= Duration::from_secs(100)),
            other => panic!("TTL after EXPIRE: {other:?}"),
        }
        assert!(c.expire(&k("b"), None).unwrap());
        assert_eq!(c.ttl(&k("b")).unwrap(), Ttl::Persistent);
        assert!(!c.expire(&k("absent"), Some(Duration::from_secs(1))).unwrap());
        assert!(c.cas(&k("b"), "y", "w", Some(Duration::from_secs(50))).unwrap());
        assert!(matches!(c.ttl(&k("b")).unwrap(), Ttl::Expires(_)));
        let short = SetOptions {
            ttl: Some(Duration::from_millis(30)),
            ..SetOptions::default()
        };
        assert!(c.set(&k("short"), b"v", short).unwrap());
        crate::support::wait_for(Duration::from_secs(5), || {
            c.get(&k("short")).unwrap().is_none().then_some(())
        })
        .expect("a key set with a 30 ms TTL expires");

        // MSET/MGET over keys of every shard, read back in the caller's order, misses included.
        let pairs: Vec<(String, String)> = (0..100).map(|i| (k(&format!("m{i}")), format!("v{i}"))).collect();
        c.mset(&pairs).unwrap();
        let keys: Vec<String> = (0..120).rev().map(|i| k(&format!("m{i}"))).collect();
        let values = c.mget(&keys).unwrap();
        let expected: Vec<Option<Bytes>> = (0..120)
            .rev()
            .map(|i| (i < 100).then(|| Bytes::from(format!("v{i}"))))
            .collect();
        assert_eq!(values, expected);
        // Binary keys and values, and an empty value.
        let binary: Vec<u8> = (0..=255u8).collect();
        assert!(c.set(&k("bin"), &binary, SetOptions::default()).unwrap());
        assert_eq!(c.get(&k("bin")).unwrap().as_deref(), Some(&binary[..]));
        assert!(c.set(&k("empty"), b"", SetOptions::default()).unwrap());
        assert_eq!(c.get(&k("empty")).unwrap(), some(""));
    }
}

#[test]
fn every_request_is_served_by_the_shard_owning_its_key() {
    if corekv_only() {
        return;
    }
    let node = Node::start(&["--shards", "3"]);
    let shards = 3u32;
    let before = native_requests(&node);
    assert_eq!(before, vec![0, 0, 0]);
    let mut c = connect(Flavor::Blocking, &node);
    // connect() asked the seed (shard 0) for the topology.
    let mut expected = vec![1u64, 0, 0];
    let keys: Vec<String> = (0..600).map(|i| format!("route:{i}")).collect();
    for key in &keys {
        assert!(c.set(key, key.as_bytes(), SetOptions::default()).unwrap());
        assert_eq!(c.get(key).unwrap().as_deref(), Some(key.as_bytes()));
        expected[key_shard(key.as_bytes(), shards) as usize] += 2;
    }
    // One MGET frame per shard.
    let values = c.mget(&keys).unwrap();
    assert!(values
        .iter()
        .zip(&keys)
        .all(|(v, k)| v.as_deref() == Some(k.as_bytes())));
    for count in &mut expected {
        *count += 1;
    }
    assert_eq!(native_requests(&node), expected);
    assert!(
        expected.iter().all(|&n| n > 100),
        "every shard served part of the keys: {expected:?}"
    );
}

#[test]
fn a_pipeline_of_ten_thousand_requests() {
    if corekv_only() {
        return;
    }
    let node = Node::start(&[]);
    for flavor in BOTH {
        let mut c = connect(flavor, &node);
        let mut pipeline = Pipeline::new();
        for i in 0..5_000 {
            pipeline.set(format!("{flavor:?}:p{i}"), format!("value-{i}"), SetOptions::default());
        }
        for i in 0..5_000 {
            pipeline.get(format!("{flavor:?}:p{i}"));
        }
        assert_eq!(pipeline.len(), 10_000);
        let results = c.execute(&pipeline);
        assert_eq!(results.len(), 10_000);
        for (i, result) in results.into_iter().enumerate() {
            let reply = result.unwrap_or_else(|e| panic!("request {i}: {e}"));
            if i < 5_000 {
                assert_eq!(reply, Reply::Bool(true), "SET {i}");
            } else {
                assert_eq!(
                    reply,
                    Reply::Value(Some(Bytes::from(format!("value-{}", i - 5_000)))),
                    "GET {i}"
                );
            }
        }
    }
}

#[test]
fn responses_from_different_shards_complete_out_of_order_and_reach_their_requests() {
    if corekv_only() {
        return;
    }
    let node = Node::start(&[]);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client =
            corekv_net::client::tokio::Client::connect(node.native_addr().to_string(), ClientConfig::default())
                .await
                .unwrap();
        // Large values on some keys, small on others, on both shards: the small ones' answers
        // overtake the large ones'.
        let value_of = |i: usize| -> Vec<u8> {
            let len = if i.is_multiple_of(7) { 2 * 1024 * 1024 } else { 16 };
            (0..len).map(|j| (i * 31 + j) as u8).collect()
        };
        for i in 0..64 {
            client
                .set(format!("ooo{i}"), value_of(i), SetOptions::default())
                .await
                .unwrap();
        }
        let mut finished = Vec::new();
        let reads = (0..64).map(|i| {
            let client = client.clone();
            async move {
                let value = client.get(format!("ooo{i}")).await.unwrap();
                (i, value)
            }
        });
        let mut tasks: futures::stream::FuturesUnordered<_> = reads.collect();
        use futures::StreamExt;
        while let Some((i, value)) = tasks.next().await {
            assert_eq!(
                value.as_deref(),
                Some(&value_of(i)[..]),
                "GET ooo{i} got another request's value"
            );
            finished.push(i);
        }
        assert_eq!(finished.len(), 64);
        // Many concurrent callers on one client pipeline over its shard connections.
        let incrs = (0..2_000).map(|_| {
            let client = client.clone();
            async move { client.incr("ooo:counter", 1).await.unwrap() }
        });
        let mut seen: Vec<i64> = futures::future::join_all(incrs).await;
        seen.sort_unstable();
        assert_eq!(seen, (1..=2_000).collect::<Vec<i64>>());
    });
}

#[test]
fn requests_time_out_against_a_node_that_stops_answering_and_work_once_it_answers_again() {
    if corekv_only() {
        return;
    }
    let node = Node::start(&[]);
    let config = ClientConfig {
        request_timeout: Duration::from_millis(300),
        max_retries: 0,
        ..ClientConfig::default()
    };
    for flavor in BOTH {
        let mut c = connect_with(flavor, node.native_addr().to_string(), config.clone()).unwrap();
        assert!(c.set("t:key", b"before", SetOptions::default()).unwrap());
        let stopped = Stopped::stop(&node);
        // The write goes out on the open connection and is never answered.
        let write = c.set("t:key", b"during", SetOptions::default()).unwrap_err();
        assert!(
            matches!(write, ClientError::Timeout { outcome_unknown: true }),
            "{flavor:?}: a write that timed out may have happened: {write:?}"
        );
        // The read needs a new connection and the topology first, which time out as well.
        let read = c.get("t:key").unwrap_err();
        assert!(matches!(read, ClientError::Timeout { .. }), "{flavor:?}: {read:?}");
        drop(stopped);
        // The stopped node answers again: the client reconnects and carries on.
        let value = crate::support::wait_for(Duration::from_secs(10), || c.get("t:key").ok())
            .expect("the client works again once the node answers");
        assert!(value == some("before") || value == some("during"), "{value:?}");
        assert!(c.set("t:key", b"after", SetOptions::default()).unwrap());
        assert_eq!(c.get("t:key").unwrap(), some("after"));
    }
}

/// A free port `p` with `p + 1` free too, for a node restarted on the same native ports.
fn free_port_pair() -> u16 {
    loop {
        let port = free_port();
        if port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

#[test]
fn clients_reconnect_after_a_node_restart() {
    if corekv_only() {
        return;
    }
    let dir = TestDir::new("client-restart");
    let native = free_port_pair().to_string();
    let args = ["--native-port", native.as_str()];
    let mut node = Node::start_in(dir.path(), &args);
    let seed = node.native_addr().to_string();
    let mut clients: Vec<Box<dyn Ops>> = BOTH
        .iter()
        .map(|&f| connect_with(f, seed.clone(), ClientConfig::default()).unwrap())
        .collect();
    let mut expected = HashMap::new();
    for (n, c) in clients.iter_mut().enumerate() {
        for i in 0..50 {
            let key = format!("r{n}:{i}");
            assert!(c.set(&key, key.as_bytes(), SetOptions::default()).unwrap());
            expected.insert(key, n);
        }
    }
    node.stop_with(Signal::SIGTERM);
    let node = Node::start_in(dir.path(), &args);
    assert_eq!(node.native_addr().to_string(), seed);
    for c in clients.iter_mut() {
        // Reads are retried across the reconnection; every key written before is there.
        for key in expected.keys() {
            assert_eq!(c.get(key).unwrap().as_deref(), Some(key.as_bytes()));
        }
        // And writes work on the new connections.
        assert!(c.set("after-restart", b"yes", SetOptions::default()).unwrap());
    }
}

#[test]
fn server_errors_are_typed() {
    if corekv_only() {
        return;
    }
    let node = Node::start(&["--maxmemory", "2mb"]);
    let mut c = connect(Flavor::Blocking, &node);
    let big = vec![7u8; 256 * 1024];
    let mut refused = None;
    for i in 0..64 {
        match c.set(&format!("fill{i}"), &big, SetOptions::default()) {
            Ok(_) => {}
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let error = refused.expect("a 2 MB budget refuses 16 MB of values");
    assert!(error.is_out_of_memory(), "{error:?}");
    // An MSET on one shard that runs out of memory half-way changes nothing on it.
    c.set("{m}old", b"before", SetOptions::default()).unwrap();
    let huge = "x".repeat(4 << 20);
    let pairs =
        [("{m}old", "after"), ("{m}fresh", "1"), ("{m}big", &huge)].map(|(k, v)| (k.to_string(), v.to_string()));
    let refused = c.mset(&pairs).unwrap_err();
    assert!(refused.is_out_of_memory(), "{refused:?}");
    assert_eq!(c.get("{m}old").unwrap().as_deref(), Some(&b"before"[..]));
    assert!(!c.exists("{m}fresh").unwrap());
    // Reads and deletes keep working at the budget.
    assert!(c.exists("fill0").unwrap());
    assert!(c.del("fill0").unwrap());
}

#[test]
fn busy_polling_connections_serve_both_protocols_and_notice_clients_leaving() {
    if corekv_only() {
        return;
    }
    let node = Node::start(&["--busy-poll", "200us"]);
    let mut native = connect(Flavor::Blocking, &node);
    let mut pipeline = Pipeline::new();
    for i in 0..1_000 {
        pipeline.set(format!("busy{i}"), format!("v{i}"), SetOptions::default());
        pipeline.get(format!("busy{i}"));
    }
    for (i, result) in native.execute(&pipeline).into_iter().enumerate() {
        let expected = if i % 2 == 0 {
            Reply::Bool(true)
        } else {
            Reply::Value(Some(Bytes::from(format!("v{}", i / 2))))
        };
        assert_eq!(result.unwrap(), expected, "request {i}");
    }
    // One request at a time: each arrives while the connection is still polling, or after.
    for i in 0..200 {
        assert_eq!(native.incr("busy:counter", 1).unwrap(), i + 1);
    }
    let mut resp = node.client();
    for i in 0..200 {
        let _: () = redis::cmd("SET").arg(format!("r{i}")).arg(i).query(&mut resp).unwrap();
        let got: i64 = redis::cmd("GET").arg(format!("r{i}")).query(&mut resp).unwrap();
        assert_eq!(got, i);
    }
    let got: Option<String> = redis::cmd("GET").arg("busy7").query(&mut resp).unwrap();
    assert_eq!(got.as_deref(), Some("v7"));
    // Connections closed by their clients are noticed (end of stream seen by a polling read).
    let clients = |resp: &mut redis::Connection| -> u64 {
        let info: String = redis::cmd("INFO").arg("clients").query(resp).unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("connected_clients:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap()
    };
    assert!(clients(&mut resp) >= 2);
    drop(native);
    crate::support::wait_for(Duration::from_secs(10), || (clients(&mut resp) == 1).then_some(()))
        .expect("the native client's connections are closed once it is dropped");
}
