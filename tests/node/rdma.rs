//! The native protocol over RDMA (`--rdma soft`), end to end: the client library's RDMA transport
//! (`corekv_net::client::rdma`) against the real node: every operation on keys of both shards,
//! values from 1 byte to 1 MiB, per-shard counters that show no request crossed shards, an idle
//! node that does not burn CPU, a client killed mid-stream, and a node restart.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use corekv_net::client::rdma::Client;
use corekv_net::client::{ClientConfig, Router, SetCondition, SetOptions, Ttl};
use corekv_net::routing::key_shard;

use crate::support::{corekv_only, wait_for, Info, Node, TestDir};

const SHARDS: usize = 2;
/// Set in the child process of `a_client_killed_mid_stream_leaves_the_node_serving_others`.
const CHILD_SEED: &str = "COREKV_RDMA_CHILD_SEED";

fn start() -> Node {
    Node::start(&["--rdma", "soft", "--rdma-pool", "16mb"])
}

fn seed(node: &Node) -> String {
    format!("rdma://127.0.0.1:{}", node.rdma_ports()[0])
}

fn connect(node: &Node) -> Client {
    Client::connect(seed(node), ClientConfig::default()).expect("connect over rdma")
}

/// A key owned by `shard`, named after `tag`.
fn key_on(shard: usize, tag: &str) -> String {
    (0..)
        .map(|i| format!("{tag}:{i}"))
        .find(|k| key_shard(k.as_bytes(), SHARDS as u32) as usize == shard)
        .expect("some key lands on every shard")
}

/// Per shard: `shardN:port=..,sessions=..,...` of INFO rdma as (field, value) pairs.
fn rdma_shard_stats(node: &Node, shard: usize) -> Vec<(String, u64)> {
    let info = Info::get(&mut node.client(), "rdma");
    let line = info
        .field(&format!("shard{shard}"))
        .unwrap_or_else(|| panic!("no shard{shard} in INFO rdma:\n{}", info.text));
    line.split(',')
        .filter_map(|part| {
            let (name, value) = part.split_once('=')?;
            Some((name.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

fn stat(stats: &[(String, u64)], name: &str) -> u64 {
    stats
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| *v)
        .unwrap_or_else(|| panic!("no {name} in {stats:?}"))
}

fn value_of(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt) ^ (i >> 9) as u8)
        .collect()
}

#[test]
fn every_native_operation_over_rdma_on_both_shards() {
    if corekv_only() {
        return;
    }
    let node = start();
    assert!(
        node.ready_line().contains("(rdma: soft, ports "),
        "{}",
        node.ready_line()
    );
    let mut client = connect(&node);

    // TOPOLOGY over an RDMA seed names every shard's RDMA port.
    let topology = client.topology().unwrap();
    let expected: Vec<String> = node.rdma_ports().iter().map(|p| format!("127.0.0.1:{p}")).collect();
    assert_eq!(topology.endpoints().map(str::to_string).collect::<Vec<_>>(), expected);
    let router = Router::new(topology).unwrap();
    assert_eq!(router.shard_count(), SHARDS as u32);

    client.ping().unwrap();
    for shard in 0..SHARDS {
        let key = key_on(shard, &format!("op{shard}"));
        assert_eq!(router.shard_of(key.as_bytes()) as usize, shard);
        // GET / SET / EXISTS / DEL.
        assert_eq!(client.get(&key).unwrap(), None);
        assert!(!client.exists(&key).unwrap());
        assert!(client.set(&key, "v1", SetOptions::default()).unwrap());
        assert_eq!(client.get(&key).unwrap().as_deref(), Some(&b"v1"[..]));
        assert!(client.exists(&key).unwrap());
        // NX / XX.
        let nx = SetOptions {
            condition: SetCondition::IfAbsent,
            ..SetOptions::default()
        };
        let xx = SetOptions {
            condition: SetCondition::IfPresent,
            ..SetOptions::default()
        };
        assert!(!client.set(&key, "nx", nx).unwrap());
        assert!(client.set(&key, "xx", xx).unwrap());
        assert_eq!(client.get(&key).unwrap().as_deref(), Some(&b"xx"[..]));
        let absent = key_on(shard, &format!("absent{shard}"));
        assert!(!client.set(&absent, "xx", xx).unwrap());
        assert!(client.set(&absent, "nx", nx).unwrap());
        // TTL / EXPIRE / SET with a TTL.
        assert_eq!(client.ttl(&key).unwrap(), Ttl::Persistent);
        assert!(client.expire(&key, Some(Duration::from_secs(100))).unwrap());
        assert!(matches!(client.ttl(&key).unwrap(), Ttl::Expires(d) if d <= Duration::from_secs(100)));
        assert!(client.expire(&key, None).unwrap());
        assert_eq!(client.ttl(&key).unwrap(), Ttl::Persistent);
        let with_ttl = SetOptions {
            ttl: Some(Duration::from_secs(50)),
            ..SetOptions::default()
        };
        assert!(client.set(&key, "ttl", with_ttl).unwrap());
        assert!(matches!(client.ttl(&key).unwrap(), Ttl::Expires(d) if d > Duration::from_secs(40)));
        assert_eq!(client.ttl(key_on(shard, "never")).unwrap(), Ttl::Missing);
        // CAS.
        assert!(!client.cas(&key, "wrong", "new", None).unwrap());
        assert!(client.cas(&key, "ttl", "new", None).unwrap());
        assert_eq!(client.get(&key).unwrap().as_deref(), Some(&b"new"[..]));
        // INCR, and its errors.
        let counter = key_on(shard, &format!("counter{shard}"));
        assert_eq!(client.incr(&counter, 5).unwrap(), 5);
        assert_eq!(client.incr(&counter, -7).unwrap(), -2);
        assert!(client.incr(&key, 1).unwrap_err().is_not_an_integer());
        // DEL.
        assert!(client.del(&key).unwrap());
        assert!(!client.del(&key).unwrap());
        assert_eq!(client.get(&key).unwrap(), None);
    }

    // MSET / MGET across both shards, values from 1 byte to 1 MiB (the large ones are pulled from
    // the shard's pool: they do not fit the default 64 KiB response buffer).
    let sizes = [1, 2, 100, 4095, 4096, 4097, 65_535, 65_536, 65_537, 300_000, 1 << 20];
    let pairs: Vec<(String, Vec<u8>)> = sizes
        .iter()
        .enumerate()
        .map(|(i, &len)| (key_on(i % SHARDS, &format!("big{i}")), value_of(len, i as u8)))
        .collect();
    for (key, value) in &pairs {
        assert!(client.set(key, value, SetOptions::default()).unwrap());
        let got = client.get(key).unwrap().expect("just stored");
        assert!(got == value[..], "GET of {} bytes", value.len());
    }
    let mset: Vec<(String, Vec<u8>)> = pairs.iter().map(|(k, v)| (format!("m{k}"), v.clone())).collect();
    client.mset(&mset).unwrap();
    let mut keys: Vec<String> = mset.iter().map(|(k, _)| k.clone()).collect();
    keys.push(key_on(0, "mget-missing"));
    let values = client.mget(&keys).unwrap();
    assert_eq!(values.len(), keys.len());
    for ((_, expected), got) in mset.iter().zip(&values) {
        assert!(
            got.as_deref() == Some(&expected[..]),
            "MGET of {} bytes",
            expected.len()
        );
    }
    assert_eq!(values.last(), Some(&None));
    // The keys spanned both shards.
    let shards: std::collections::HashSet<u32> = keys.iter().map(|k| router.shard_of(k.as_bytes())).collect();
    assert_eq!(shards.len(), SHARDS);

    // Every request ran on the shard it was sent to: no WRONG_SHARD, both shards served.
    for shard in 0..SHARDS {
        let stats = rdma_shard_stats(&node, shard);
        assert_eq!(stat(&stats, "wrong_shard"), 0, "shard {shard}: {stats:?}");
        assert!(stat(&stats, "requests") > 20, "shard {shard}: {stats:?}");
        assert!(stat(&stats, "sessions") >= 1, "shard {shard}: {stats:?}");
        assert_eq!(stat(&stats, "refused"), 0, "shard {shard}: {stats:?}");
    }
    let pulls: u64 = (0..SHARDS).map(|s| stat(&rdma_shard_stats(&node, s), "pulls")).sum();
    assert!(pulls > 0, "large responses are pulled");
    // Every pulled response was released: the pools are empty between requests.
    wait_for(Duration::from_secs(10), || {
        (0..SHARDS)
            .all(|s| stat(&rdma_shard_stats(&node, s), "pool_used_bytes") == 0)
            .then_some(())
    })
    .unwrap_or_else(|| panic!("pool blocks held: {:?}", rdma_shard_stats(&node, 0)));
    let info = Info::get(&mut node.client(), "rdma");
    assert_eq!(info.field("rdma_provider").as_deref(), Some("soft"));
    // No cross-shard traffic on the node either.
    let stats = Info::get(&mut node.client(), "stats");
    assert_eq!(stats.int("cross_shard_commands"), 0, "{}", stats.text);
    // Requests over RDMA count as commands, like every other transport's.
    let requests: u64 = (0..SHARDS).map(|s| stat(&rdma_shard_stats(&node, s), "requests")).sum();
    assert!(
        stats.int("total_commands_processed") as u64 >= requests,
        "{requests} rdma requests: {}",
        stats.text
    );

    // The same data is visible over RESP (which may forward the key to its shard).
    let (key, value) = &pairs[0];
    let mut resp = node.client();
    let over_resp: Vec<u8> = redis::cmd("GET").arg(key).query(&mut resp).unwrap();
    assert_eq!(&over_resp, value);
    node.assert_alive();
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/pid/stat");
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5), 12 and 13 after the comm.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn an_idle_node_with_rdma_sessions_does_not_burn_cpu() {
    if corekv_only() {
        return;
    }
    let node = start();
    let mut client = connect(&node);
    // A session to each shard, then nothing.
    for shard in 0..SHARDS {
        client.set(key_on(shard, "idle"), "x", SetOptions::default()).unwrap();
    }
    let window = Duration::from_secs(2);
    let ticks_per_second = 100; // USER_HZ on Linux.
    let before = cpu_ticks(node.pid());
    let started = Instant::now();
    // The measurement window itself: nothing to poll for, the node must simply stay quiet.
    std::thread::sleep(window);
    let used = cpu_ticks(node.pid()) - before;
    let elapsed = started.elapsed();
    eprintln!("idle node with {SHARDS} rdma sessions: {used} ticks of CPU in {elapsed:?}");
    // A shard spinning on its completion queues would use ~100 ticks per second per shard.
    let budget = ticks_per_second * window.as_secs() / 10;
    assert!(
        used <= budget,
        "an idle node used {used} CPU ticks in {elapsed:?} (budget {budget})"
    );
    // Still serving.
    assert_eq!(client.get(key_on(1, "idle")).unwrap().as_deref(), Some(&b"x"[..]));
}

/// The child's part: writes forever over RDMA until it is killed.
fn child_writer(seed: &str) {
    let mut client = Client::connect(seed, ClientConfig::default()).expect("child connect");
    let value = vec![7u8; 4096];
    for i in 0u64.. {
        let _ = client.set(format!("child:{}", i % 1000), &value, SetOptions::default());
    }
}

/// Kills and reaps the child however the test ends.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_client_killed_mid_stream_leaves_the_node_serving_others() {
    if let Ok(seed) = std::env::var(CHILD_SEED) {
        return child_writer(&seed);
    }
    if corekv_only() {
        return;
    }
    let node = start();
    let child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "rdma::a_client_killed_mid_stream_leaves_the_node_serving_others",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_SEED, seed(&node))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the child client");
    let mut child = ChildGuard(child);
    // Wait until the child is streaming requests to both shards.
    let total = |name: &str| {
        (0..SHARDS)
            .map(|s| stat(&rdma_shard_stats(&node, s), name))
            .sum::<u64>()
    };
    wait_for(Duration::from_secs(20), || (total("requests") > 200).then_some(())).expect("the child never got going");
    child.0.kill().expect("kill the child");
    let _ = child.0.wait();
    // Its sessions end on the node (the links broke), and the node serves a new client.
    wait_for(Duration::from_secs(10), || (total("sessions") == 0).then_some(()))
        .unwrap_or_else(|| panic!("the killed client's sessions linger: {:?}", rdma_shard_stats(&node, 0)));
    // Every block its requests held went back to the shards' pools.
    assert_eq!(total("pool_used_bytes"), 0, "{:?}", rdma_shard_stats(&node, 0));
    let mut client = connect(&node);
    for shard in 0..SHARDS {
        let key = key_on(shard, "after-kill");
        assert!(client.set(&key, "alive", SetOptions::default()).unwrap());
        assert_eq!(client.get(&key).unwrap().as_deref(), Some(&b"alive"[..]));
    }
    node.assert_alive();
}

/// Two consecutive free ports (for a node restarted on the same RDMA ports).
fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let first = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = first.local_addr().unwrap().port();
        if port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no two consecutive free ports");
}

#[test]
fn the_client_reconnects_after_the_node_restarts() {
    if corekv_only() {
        return;
    }
    let dir = TestDir::new("rdma-restart");
    let port = free_port_pair().to_string();
    let args = ["--rdma", "soft", "--rdma-pool", "16mb", "--rdma-port", &port];
    let mut node = Node::start_in(dir.path(), &args);
    let mut client = connect(&node);
    for shard in 0..SHARDS {
        assert!(client
            .set(key_on(shard, "durable"), "before", SetOptions::default())
            .unwrap());
    }
    node.stop_with(nix::sys::signal::Signal::SIGTERM);
    // While the node is down, a request fails instead of hanging.
    let started = Instant::now();
    assert!(client.get(key_on(0, "durable")).is_err());
    assert!(started.elapsed() < Duration::from_secs(30));
    let node = Node::start_in(dir.path(), &args);
    // Reads and writes go through new sessions (new epochs) to the restarted node.
    for shard in 0..SHARDS {
        let key = key_on(shard, "durable");
        assert_eq!(client.get(&key).unwrap().as_deref(), Some(&b"before"[..]));
        assert!(client.set(&key, "after", SetOptions::default()).unwrap());
        assert_eq!(client.get(&key).unwrap().as_deref(), Some(&b"after"[..]));
    }
    node.assert_alive();
}

#[test]
fn a_request_to_a_dead_shard_times_out_instead_of_hanging() {
    if corekv_only() {
        return;
    }
    let node = start();
    let config = ClientConfig {
        request_timeout: Duration::from_millis(500),
        max_retries: 1,
        ..ClientConfig::default()
    };
    let mut client = Client::connect(seed(&node), config).unwrap();
    client.ping().unwrap();
    // SIGSTOP: the sessions stay connected but nothing answers.
    let stopped = crate::support::Stopped::stop(&node);
    let started = Instant::now();
    let err = client.get(key_on(0, "stopped")).unwrap_err();
    let waited = started.elapsed();
    drop(stopped);
    // The request times out; its retry cannot even set a session up.
    assert!(
        matches!(err, corekv_net::client::ClientError::Timeout { .. }) || err.to_string().contains("timed out"),
        "{err}"
    );
    assert!(waited < Duration::from_secs(20), "took {waited:?}");
    // Once the node runs again, the client reconnects.
    wait_for(Duration::from_secs(10), || client.ping().ok()).expect("ping after SIGCONT");
    node.assert_alive();
}

#[test]
fn verbs_without_a_device_is_refused_at_start_up_with_a_clear_message() {
    if corekv_only() {
        return;
    }
    let start = || match Node::try_start(&["--rdma", "verbs", "--shards", "1", "--rdma-pool", "4mb"]) {
        Err(failure) => failure,
        Ok(_) => panic!("a node with --rdma verbs started on a machine without RDMA devices"),
    };
    if cfg!(feature = "rdma-verbs") {
        // Devices are looked for before anything else (the locked-memory budget comes next).
        let failure = start();
        assert!(failure.stderr.contains("corekv-node: rdma: "), "{}", failure.stderr);
        assert!(failure.stderr.contains("no RDMA devices found"), "{}", failure.stderr);
        assert!(failure.stderr.contains("--rdma soft"), "{}", failure.stderr);
    } else {
        let failure = start();
        assert!(failure.stderr.contains("corekv-node: rdma: "), "{}", failure.stderr);
        assert!(
            failure.stderr.contains("built without the verbs provider")
                && failure.stderr.contains("--features rdma-verbs"),
            "{}",
            failure.stderr
        );
    }
}

/// `clients:` of INFO: connected_clients.
fn connected_clients(node: &Node) -> u64 {
    let info = Info::get(&mut node.client(), "clients");
    info.field("connected_clients")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no connected_clients in INFO clients:\n{}", info.text))
}

#[test]
fn sessions_count_as_clients_and_a_stopping_node_ends_them() {
    if corekv_only() {
        return;
    }
    let dir = TestDir::new("rdma-stop");
    let args = ["--rdma", "soft", "--rdma-pool", "16mb", "--durability", "always"];
    let mut node = Node::start_in(dir.path(), &args);
    // The INFO connection itself is one client (earlier INFO connections may take a moment to
    // be noticed closed, hence the polling).
    let settles_at = |expected: u64| {
        wait_for(Duration::from_secs(10), || {
            (connected_clients(&node) == expected).then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "connected_clients never reached {expected}: {}",
                connected_clients(&node)
            )
        })
    };
    settles_at(1);
    let mut idle = connect(&node);
    for shard in 0..SHARDS {
        idle.set(key_on(shard, "idle"), "x", SetOptions::default()).unwrap();
    }
    settles_at(1 + SHARDS as u64);

    // A writer keeps one shard's session busy while the node is told to stop: every write it
    // saw acknowledged must be there after the restart.
    let seed = seed(&node);
    let writer = std::thread::spawn(move || {
        let mut client = Client::connect(seed, ClientConfig::default()).expect("writer connect");
        let mut acknowledged = 0u64;
        for i in 1u64.. {
            match client.set(format!("stop:{i}"), i.to_string(), SetOptions::default()) {
                Ok(true) => acknowledged = i,
                Ok(false) => panic!("SET stop:{i} not done"),
                Err(_) => break,
            }
        }
        acknowledged
    });
    wait_for(Duration::from_secs(10), || {
        let written: Option<String> = redis::cmd("GET").arg("stop:2").query(&mut node.client()).ok()?;
        written.map(|_| ())
    })
    .expect("the writer's session is up");
    let mut redis = node.client();
    let _: redis::RedisResult<()> = redis::cmd("SHUTDOWN").query(&mut redis);
    // Idle and busy sessions end, so the node exits (a session left waiting would hold it).
    let status = node
        .wait_exit(Duration::from_secs(30))
        .expect("the node did not exit with RDMA sessions open");
    assert!(status.success(), "exit {status:?}: {}", node.stderr());
    let acknowledged = writer.join().expect("writer thread");
    assert!(acknowledged > 0, "the writer got no write through");
    assert!(idle.ping().is_err(), "a session outlived its node");

    let node = Node::start_in(dir.path(), &args);
    let mut client = node.client();
    for i in 1..=acknowledged {
        let value: Option<String> = redis::cmd("GET").arg(format!("stop:{i}")).query(&mut client).unwrap();
        assert_eq!(
            value,
            Some(i.to_string()),
            "acknowledged write stop:{i} of {acknowledged} lost"
        );
    }
}

#[test]
fn bad_rdma_flags_are_refused() {
    if corekv_only() {
        return;
    }
    let Err(failure) = Node::try_start(&["--rdma", "carrier-pigeon"]) else {
        panic!("a node with an unknown provider started");
    };
    assert!(
        failure.stderr.contains("invalid rdma 'carrier-pigeon'"),
        "{}",
        failure.stderr
    );
}

#[test]
fn a_raw_stream_carries_many_frames_per_message_and_misrouted_keys_are_refused() {
    use bytes::{Bytes, BytesMut};
    use corekv_net::client::rdma::{RdmaOptions, RdmaStream};
    use corekv_net::native::{ErrorCode, FrameDecoder, Limits, Request, Response};

    if corekv_only() {
        return;
    }
    let node = start();
    let ports = node.rdma_ports();
    let config = ClientConfig::default();
    let mut stream = RdmaStream::connect(
        &format!("rdma://127.0.0.1:{}", ports[0]),
        &config,
        &RdmaOptions::default(),
    )
    .expect("a session with shard 0");
    let own = Bytes::from(key_on(0, "raw"));
    let foreign = Bytes::from(key_on(1, "raw"));
    // Four frames in one request message: the shard answers them all in one response message.
    let mut out = BytesMut::new();
    Request::Ping.encode(1, false, &mut out);
    Request::Set {
        key: own.clone(),
        value: Bytes::from_static(b"v"),
        ttl_ms: 0,
        condition: corekv_net::native::SetCondition::Always,
    }
    .encode(2, false, &mut out);
    Request::Get { key: own.clone() }.encode(3, true, &mut out);
    Request::Get { key: foreign.clone() }.encode(4, false, &mut out);
    let deadline = Instant::now() + Duration::from_secs(10);
    assert!(stream.can_send());
    stream.send(&out, deadline).unwrap();
    assert_eq!(stream.in_flight(), 1);
    let mut input = BytesMut::new();
    assert!(stream.recv(&mut input, deadline).unwrap());
    assert_eq!(stream.in_flight(), 0);
    let mut decoder = FrameDecoder::new(Limits::default());
    let mut responses = Vec::new();
    while let Some(frame) = decoder.decode(&mut input).unwrap() {
        let id = frame.request_id();
        responses.push((id, Response::decode(frame, &Limits::default()).unwrap()));
    }
    assert_eq!(responses.len(), 4, "{responses:?}");
    assert_eq!(responses[0], (1, Response::Ok));
    assert_eq!(responses[1], (2, Response::Ok));
    assert_eq!(responses[2].0, 3);
    assert!(
        matches!(&responses[2].1, Response::Value(v) if &v[..] == b"v"),
        "{responses:?}"
    );
    assert!(
        matches!(&responses[3], (4, Response::Error { code, .. }) if *code == ErrorCode::WRONG_SHARD),
        "{responses:?}"
    );
    assert!(stream.alive());
    let stats = rdma_shard_stats(&node, 0);
    assert_eq!(
        (stat(&stats, "requests"), stat(&stats, "wrong_shard")),
        (4, 1),
        "{stats:?}"
    );
}

#[test]
fn a_session_left_half_set_up_does_not_hold_a_stopping_node() {
    use corekv_rdma::channel::ChannelConfig;
    use corekv_rdma::provider::{MemoryRegion, ProtectionDomain};
    use corekv_rdma::rpc::Endpoint;
    use corekv_rdma::soft::SoftPd;
    use std::io::Read;

    if corekv_only() {
        return;
    }
    let mut node = start();
    // A client that completes the handshake but never opens its data connection: the node
    // admits the session and waits for that connection (up to its 10 s set-up timeout).
    let pd = SoftPd::new();
    let pool = pd.register(1 << 20).expect("register a pool");
    let endpoint = Endpoint::new(&pd, ChannelConfig::default(), 4).expect("endpoint");
    let ours = endpoint.handshake(&pd, 7, 0, 1, pool.desc());
    let mut control = std::net::TcpStream::connect(("127.0.0.1", node.rdma_ports()[0])).expect("connect");
    corekv_rdma::session::initiate(&mut control, &ours).expect("the node answers the handshake");
    let mut token = [0u8; 8];
    control
        .read_exact(&mut token)
        .expect("the node sends the session token");
    wait_for(Duration::from_secs(10), || {
        (connected_clients(&node) == 2).then_some(())
    })
    .unwrap_or_else(|| panic!("the half-set-up session is not counted: {}", connected_clients(&node)));

    let _: redis::RedisResult<()> = redis::cmd("SHUTDOWN").query(&mut node.client());
    // Well inside the set-up timeout: the stop ends the waiting session instead of waiting for it.
    let status = node
        .wait_exit(Duration::from_secs(8))
        .expect("the node waited for a half-set-up session before exiting");
    assert!(status.success(), "exit {status:?}: {}", node.stderr());
    let mut rest = Vec::new();
    control.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(
        control.read_to_end(&mut rest).expect("the control connection closes"),
        0,
        "unexpected bytes after the token: {rest:?}"
    );
}
