//! The native protocol on its per-shard ports, spoken frame by frame with `corekv_net::native`:
//! topology, every operation on its owning shard, WRONG_SHARD for misrouted keys, and malformed
//! or oversized frames (an ERROR frame, then a close; the node keeps serving everyone else).

use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use corekv_net::native::{
    Batch, BatchKind, ErrorCode, FrameDecoder, Limits, Request, Response, SetCondition, HASH_COREKV_V1,
};
use corekv_net::routing::key_shard;
use redis::Commands;

use crate::support::{corekv_only, Node};

/// One native connection to one shard's port.
struct NativeConn {
    stream: TcpStream,
    decoder: FrameDecoder,
    buf: BytesMut,
    next_id: u64,
}

impl NativeConn {
    fn connect(port: u16) -> NativeConn {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to a native port");
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        NativeConn {
            stream,
            decoder: FrameDecoder::new(Limits::default()),
            buf: BytesMut::new(),
            next_id: 1,
        }
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    /// The next frame as a response with its request id; `None` at end of stream.
    fn recv(&mut self) -> Option<(u64, Response)> {
        loop {
            if let Some(frame) = self.decoder.decode(&mut self.buf).expect("a well-formed response") {
                let id = frame.request_id();
                return Some((
                    id,
                    Response::decode(frame, &Limits::default()).expect("a valid response"),
                ));
            }
            let mut chunk = [0u8; 64 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    fn call_with(&mut self, request: &Request, crc: bool) -> Response {
        let id = self.next_id;
        self.next_id += 1;
        let mut out = BytesMut::new();
        request.encode(id, crc, &mut out);
        self.send_raw(&out);
        let (got, response) = self.recv().expect("a response before end of stream");
        assert_eq!(got, id, "response to {request:?}");
        response
    }

    fn call(&mut self, request: &Request) -> Response {
        self.call_with(request, false)
    }

    /// True once the server has closed the connection (reads end of stream).
    fn closed(&mut self) -> bool {
        self.recv().is_none()
    }
}

/// One connection per shard, the way a routing client holds them.
struct Shards {
    conns: RefCell<Vec<NativeConn>>,
}

impl Shards {
    fn connect(node: &Node) -> Shards {
        Shards {
            conns: RefCell::new(node.native_ports().into_iter().map(NativeConn::connect).collect()),
        }
    }

    /// Sends `request` to the shard owning `key` and returns its response.
    fn call(&self, key: &str, request: Request, crc: bool) -> Response {
        let mut conns = self.conns.borrow_mut();
        let shard = key_shard(key.as_bytes(), conns.len() as u32) as usize;
        conns[shard].call_with(&request, crc)
    }
}

fn bytes(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn get(key: &str) -> Request {
    Request::Get { key: bytes(key) }
}

fn set(key: &str, value: &str) -> Request {
    Request::Set {
        key: bytes(key),
        value: bytes(value),
        ttl_ms: 0,
        condition: SetCondition::Always,
    }
}

fn value(s: &str) -> Response {
    Response::Value(bytes(s))
}

fn error_code(response: &Response) -> Option<ErrorCode> {
    match response {
        Response::Error { code, .. } => Some(*code),
        _ => None,
    }
}

/// A key owned by `shard` of `shards`, named after `tag`.
fn key_on(shard: usize, shards: usize, tag: &str) -> String {
    (0..)
        .map(|i| format!("{tag}:{i}"))
        .find(|k| key_shard(k.as_bytes(), shards as u32) as usize == shard)
        .expect("some key lands on every shard")
}

#[test]
fn topology_lists_every_shard_port_and_the_routing_hash() {
    if corekv_only() {
        return;
    }
    let node = Node::start(&["--shards", "3"]);
    let ports = node.native_ports();
    assert_eq!(ports.len(), 3);
    for &port in &ports {
        let mut conn = NativeConn::connect(port);
        let Response::Topology(topology) = conn.call(&Request::Topology) else {
            panic!("TOPOLOGY answered with something else");
        };
        assert_eq!(topology.hash_id(), HASH_COREKV_V1);
        let endpoints: Vec<String> = topology.endpoints().map(str::to_string).collect();
        let expected: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        assert_eq!(endpoints, expected);
        assert_eq!(conn.call(&Request::Ping), Response::Ok);
    }
    let mut redis = node.client();
    let info: String = redis::cmd("INFO").arg("native").query(&mut redis).unwrap();
    let listed = ports.iter().map(u16::to_string).collect::<Vec<_>>();
    assert!(
        info.contains(&format!("native_ports:{}-{}", listed[0], listed[2]))
            || info.contains(&format!("native_ports:{}", listed.join(","))),
        "{info}"
    );
}

#[test]
fn every_operation_on_its_owning_shard() {
    if corekv_only() {
        return;
    }
    let node = Node::start(&[]);
    let shards = Shards::connect(&node);
    for crc in [false, true] {
        let k = |name: &str| format!("{name}:{crc}");
        let call = |key: &str, request: Request| shards.call(key, request, crc);

        assert_eq!(call(&k("a"), get(&k("a"))), Response::NotFound);
        assert_eq!(call(&k("a"), set(&k("a"), "1")), Response::Ok);
        assert_eq!(call(&k("a"), get(&k("a"))), value("1"));
        // NX on an existing key and XX on a missing one store nothing.
        let nx = Request::Set {
            key: bytes(&k("a")),
            value: bytes("2"),
            ttl_ms: 0,
            condition: SetCondition::IfAbsent,
        };
        assert_eq!(call(&k("a"), nx), Response::NotFound);
        let xx = Request::Set {
            key: bytes(&k("missing")),
            value: bytes("2"),
            ttl_ms: 0,
            condition: SetCondition::IfPresent,
        };
        assert_eq!(call(&k("missing"), xx), Response::NotFound);
        assert_eq!(call(&k("missing"), get(&k("missing"))), Response::NotFound);
        assert_eq!(call(&k("a"), get(&k("a"))), value("1"));

        // INCR keeps counting from the stored integer; a non-integer is refused.
        let incr = |by| Request::Incr {
            key: bytes(&k("a")),
            delta: by,
        };
        assert_eq!(call(&k("a"), incr(41)), Response::Integer(42));
        assert_eq!(call(&k("a"), incr(-50)), Response::Integer(-8));
        assert_eq!(call(&k("s"), set(&k("s"), "text")), Response::Ok);
        let not_int = call(
            &k("s"),
            Request::Incr {
                key: bytes(&k("s")),
                delta: 1,
            },
        );
        assert_eq!(error_code(&not_int), Some(ErrorCode::NOT_AN_INTEGER), "{not_int:?}");
        assert_eq!(call(&k("a"), incr(i64::MAX)), Response::Integer(i64::MAX - 8));
        assert_eq!(error_code(&call(&k("a"), incr(9))), Some(ErrorCode::OVERFLOW));

        // CAS swaps only from the expected value.
        let cas = |expected: &str, new: &str| Request::Cas {
            key: bytes(&k("c")),
            expected: bytes(expected),
            value: bytes(new),
            ttl_ms: 0,
        };
        assert_eq!(call(&k("c"), cas("x", "y")), Response::Integer(0), "absent key");
        assert_eq!(call(&k("c"), set(&k("c"), "x")), Response::Ok);
        assert_eq!(call(&k("c"), cas("nope", "y")), Response::Integer(0));
        assert_eq!(call(&k("c"), get(&k("c"))), value("x"));
        assert_eq!(call(&k("c"), cas("x", "y")), Response::Integer(1));
        assert_eq!(call(&k("c"), get(&k("c"))), value("y"));

        // TTL, EXPIRE and a SET with a TTL.
        let ttl = |key: &str| call(key, Request::Ttl { key: bytes(key) });
        assert_eq!(ttl(&k("c")), Response::Integer(-1));
        assert_eq!(ttl(&k("none")), Response::Integer(-2));
        let expire = |ms| Request::Expire {
            key: bytes(&k("c")),
            ttl_ms: ms,
        };
        assert_eq!(call(&k("c"), expire(100_000)), Response::Integer(1));
        let Response::Integer(left) = ttl(&k("c")) else {
            panic!("TTL is an integer")
        };
        assert!((90_000..=100_000).contains(&left), "{left}");
        assert_eq!(call(&k("c"), expire(0)), Response::Integer(1), "0 removes the TTL");
        assert_eq!(ttl(&k("c")), Response::Integer(-1));
        let short = Request::Set {
            key: bytes(&k("t")),
            value: bytes("v"),
            ttl_ms: 50,
            condition: SetCondition::Always,
        };
        assert_eq!(call(&k("t"), short), Response::Ok);
        crate::support::wait_for(Duration::from_secs(5), || {
            (call(&k("t"), get(&k("t"))) == Response::NotFound).then_some(())
        })
        .expect("a key set with a 50 ms TTL expires");
        assert_eq!(
            call(
                &k("none"),
                Request::Expire {
                    key: bytes(&k("none")),
                    ttl_ms: 10
                }
            ),
            Response::Integer(0)
        );

        // EXISTS and DEL.
        let exists = |key: &str| call(key, Request::Exists { key: bytes(key) });
        assert_eq!(exists(&k("c")), Response::Integer(1));
        assert_eq!(
            call(&k("c"), Request::Del { key: bytes(&k("c")) }),
            Response::Integer(1)
        );
        assert_eq!(
            call(&k("c"), Request::Del { key: bytes(&k("c")) }),
            Response::Integer(0)
        );
        assert_eq!(exists(&k("c")), Response::Integer(0));
    }
}

#[test]
fn batches_run_on_the_shard_owning_all_their_keys() {
    if corekv_only() {
        return;
    }
    let node = Node::start(&[]);
    let mut conn = NativeConn::connect(node.native_ports()[1]);
    let keys: Vec<String> = (0..50).map(|i| key_on(1, 2, &format!("batch{i}"))).collect();
    let pairs: Vec<(Vec<u8>, Vec<u8>)> = keys
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 2 == 0)
        .map(|(i, k)| (k.clone().into_bytes(), format!("value-{i}").into_bytes()))
        .collect();
    let mset = Batch::build(
        BatchKind::Pairs,
        pairs.iter().map(|(k, v)| (k.as_slice(), Some(v.as_slice()))),
    );
    assert_eq!(conn.call(&Request::MSet(mset)), Response::Ok);
    let mget = Batch::build(BatchKind::Keys, keys.iter().map(|k| (k.as_bytes(), None)));
    let Response::Values(values) = conn.call(&Request::MGet(mget)) else {
        panic!("MGET answers with a batch of values");
    };
    let got: Vec<Option<Bytes>> = values.iter().map(|e| e.value).collect();
    let expected: Vec<Option<Bytes>> = (0..50)
        .map(|i| (i % 2 == 0).then(|| Bytes::from(format!("value-{i}"))))
        .collect();
    assert_eq!(got, expected);

    // A batch with one foreign key is refused whole.
    let mixed_keys = [key_on(1, 2, "mixed-a"), key_on(0, 2, "mixed-b")];
    let mixed = Batch::build(
        BatchKind::Pairs,
        mixed_keys.iter().map(|k| (k.as_bytes(), Some(&b"v"[..]))),
    );
    let refused = conn.call(&Request::MSet(mixed));
    assert_eq!(error_code(&refused), Some(ErrorCode::WRONG_SHARD), "{refused:?}");
    let mut redis = node.client();
    let stored: Option<String> = redis.get(&mixed_keys[0]).unwrap();
    assert_eq!(stored, None, "nothing of a refused batch is stored");
}

#[test]
fn a_misrouted_key_is_refused_and_counted_and_nothing_crosses_shards() {
    if corekv_only() {
        return;
    }
    let node = Node::start(&[]);
    let ports = node.native_ports();
    let foreign = key_on(1, 2, "foreign");
    let mut shard0 = NativeConn::connect(ports[0]);
    let refused = shard0.call(&set(&foreign, "v"));
    let Response::Error { code, message } = &refused else {
        panic!("expected WRONG_SHARD, got {refused:?}");
    };
    assert_eq!(*code, ErrorCode::WRONG_SHARD);
    assert_eq!(&message[..], b"key belongs to shard 1, not shard 0");
    // The connection stays usable, and the value was not stored anywhere.
    assert_eq!(shard0.call(&Request::Ping), Response::Ok);
    let mut shard1 = NativeConn::connect(ports[1]);
    assert_eq!(shard1.call(&get(&foreign)), Response::NotFound);

    let mut redis = node.client();
    let info: String = redis::cmd("INFO").arg("native").query(&mut redis).unwrap();
    assert!(info.contains("native_wrong_shard:1"), "{info}");
    assert!(
        info.contains(&format!(
            "shard0:port={},connections=1,requests=2,wrong_shard=1",
            ports[0]
        )),
        "{info}"
    );
    assert!(
        info.contains(&format!(
            "shard1:port={},connections=1,requests=1,wrong_shard=0",
            ports[1]
        )),
        "{info}"
    );
    let stats: String = redis::cmd("INFO").arg("stats").query(&mut redis).unwrap();
    assert!(stats.contains("cross_shard_commands:0"), "{stats}");
    // Native requests are counted like RESP commands, under the RESP command's name; a refused
    // one as a rejected call.
    let commands: String = redis::cmd("INFO").arg("commandstats").query(&mut redis).unwrap();
    for (name, calls, rejected) in [("ping", 1, 0), ("get", 1, 0), ("set", 0, 1)] {
        let line = commands
            .lines()
            .find(|l| l.starts_with(&format!("cmdstat_{name}:")))
            .unwrap_or_else(|| panic!("no cmdstat_{name} in {commands}"));
        assert!(line.starts_with(&format!("cmdstat_{name}:calls={calls},")), "{line}");
        assert!(line.contains(&format!(",rejected_calls={rejected},")), "{line}");
    }
}

#[test]
fn native_and_resp_share_the_data_and_it_survives_a_restart() {
    if corekv_only() {
        return;
    }
    let dir = crate::support::TestDir::new("native-restart");
    let mut node = Node::start_in(dir.path(), &[]);
    let key = "shared-key";
    {
        let shards = Shards::connect(&node);
        assert_eq!(shards.call(key, set(key, "from-native"), false), Response::Ok);
        let mut redis = node.client();
        let seen: String = redis.get(key).unwrap();
        assert_eq!(seen, "from-native");
        let _: () = redis.set("resp-key", "from-resp").unwrap();
        assert_eq!(shards.call("resp-key", get("resp-key"), false), value("from-resp"));
    }
    node.stop_with(nix::sys::signal::Signal::SIGTERM);
    let node = Node::start_in(dir.path(), &[]);
    let shards = Shards::connect(&node);
    assert_eq!(shards.call(key, get(key), false), value("from-native"));
}

#[test]
fn framing_errors_get_an_error_frame_then_a_close_and_others_are_served_on() {
    if corekv_only() {
        return;
    }
    let node = Node::start(&[]);
    let port = node.native_ports()[0];
    let fatal = |bytes: &[u8], code: ErrorCode| {
        let mut conn = NativeConn::connect(port);
        conn.send_raw(bytes);
        let (id, response) = conn.recv().expect("an ERROR frame before the close");
        assert_eq!(id, 0, "fatal errors carry request id 0");
        assert_eq!(error_code(&response), Some(code), "{response:?}");
        assert!(conn.closed(), "the connection closes after a fatal error");
    };
    // A RESP client on the native port.
    fatal(
        b"*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nPING\r\n",
        ErrorCode::BAD_MAGIC,
    );
    // A frame longer than the limit whose sections are each within theirs: refused from its
    // header alone, before any body is sent.
    let mut huge = BytesMut::new();
    set("k", "").encode(1, false, &mut huge);
    let value_len: u32 = 512 * 1024 * 1024;
    huge[8..12].copy_from_slice(&(40 + 1 + value_len + 8).to_le_bytes());
    huge[24..28].copy_from_slice(&value_len.to_le_bytes());
    huge[28..32].copy_from_slice(&8u32.to_le_bytes());
    fatal(&huge[..40], ErrorCode::FRAME_TOO_LARGE);
    // Lengths that do not add up.
    let mut mismatch = BytesMut::new();
    set("k", "v").encode(1, false, &mut mismatch);
    mismatch[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    fatal(&mismatch[..40], ErrorCode::LENGTH_MISMATCH);
    // A value above the 512 MiB limit, declared consistently.
    let mut big_value = BytesMut::new();
    set("k", "").encode(2, false, &mut big_value);
    let declared: u32 = 40 + 1 + 600 * 1024 * 1024;
    big_value[8..12].copy_from_slice(&declared.to_le_bytes());
    big_value[24..28].copy_from_slice(&(600u32 * 1024 * 1024).to_le_bytes());
    fatal(&big_value[..40], ErrorCode::VALUE_TOO_LARGE);
    // A corrupted CRC trailer.
    let mut bad_crc = BytesMut::new();
    set("k", "v").encode(3, true, &mut bad_crc);
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 0xFF;
    fatal(&bad_crc, ErrorCode::CRC_MISMATCH);
    // A wrong version.
    let mut version = BytesMut::new();
    Request::Ping.encode(4, false, &mut version);
    version[2] = 9;
    fatal(&version, ErrorCode::UNSUPPORTED_VERSION);

    // Per-frame errors answer that frame and the connection goes on.
    let mut conn = NativeConn::connect(port);
    let mut unknown = BytesMut::new();
    Request::Ping.encode(77, false, &mut unknown);
    unknown[3] = 0x5A;
    conn.send_raw(&unknown);
    let (id, response) = conn.recv().unwrap();
    assert_eq!((id, error_code(&response)), (77, Some(ErrorCode::UNKNOWN_OPCODE)));
    let mut response_as_request = BytesMut::new();
    Response::Ok.encode(78, false, &mut response_as_request);
    conn.send_raw(&response_as_request);
    let (id, response) = conn.recv().unwrap();
    assert_eq!((id, error_code(&response)), (78, Some(ErrorCode::WRONG_DIRECTION)));
    conn.next_id = 79;
    assert_eq!(conn.call(&Request::Ping), Response::Ok);
    node.assert_alive();
}

#[test]
fn random_bytes_never_take_the_node_down() {
    if corekv_only() {
        return;
    }
    let node = Node::start(&[]);
    let port = node.native_ports()[0];
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..200 {
        let mut frame = BytesMut::new();
        set(&format!("k{round}"), "value").encode(round + 1, round % 2 == 0, &mut frame);
        // Flip a few bytes anywhere in a valid frame, header included.
        for _ in 0..1 + next() % 4 {
            let at = (next() % frame.len() as u64) as usize;
            frame[at] ^= (next() % 255 + 1) as u8;
        }
        let mut conn = NativeConn::connect(port);
        conn.send_raw(&frame);
        let _ = conn.stream.shutdown(std::net::Shutdown::Write);
        // Whatever it is answered with must be well-formed frames, then the end of the stream.
        while conn.recv().is_some() {}
    }
    let mut conn = NativeConn::connect(port);
    assert_eq!(conn.call(&Request::Ping), Response::Ok);
    node.assert_alive();
}

#[test]
fn a_connection_past_maxclients_is_told_why() {
    if corekv_only() {
        return;
    }
    let node = Node::start(&["--max-clients", "1"]);
    let mut first = NativeConn::connect(node.native_ports()[0]);
    assert_eq!(first.call(&Request::Ping), Response::Ok);
    let mut second = NativeConn::connect(node.native_ports()[1]);
    let (id, response) = second.recv().expect("an ERROR frame");
    assert_eq!((id, error_code(&response)), (0, Some(ErrorCode::TOO_MANY_CONNECTIONS)));
    assert!(second.closed());
}
