//! In-process fake servers for the load loop's tests, on 127.0.0.1 port 0, one std thread per
//! connection: a RESP server (GET/SET on a shared map) that can stall once, inject error replies
//! or drop a connection, and a two-shard native server that checks routing and answers each
//! batch of requests in reverse order (replies matched by id).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use corekv_net::native::{ErrorCode, FrameDecoder, Limits, Request, Response, Topology, HASH_COREKV_V1};
use corekv_net::resp::{ParseLimits, Protocol, ReplyEncoder, RequestParser};
use corekv_net::routing::key_shard;

type Store = Arc<Mutex<HashMap<Bytes, Bytes>>>;

/// What the fake RESP server does besides answering.
#[derive(Clone, Copy, Default)]
pub struct Behaviour {
    /// When the server has received this many requests, it stops answering (every connection)
    /// for the given time, once.
    pub stall: Option<(u64, Duration)>,
    /// Every Nth request gets `-ERR injected failure`.
    pub error_every: Option<u64>,
    /// The connection that receives the server's Nth request is closed without a reply.
    pub close_at: Option<u64>,
    /// The server's Nth request is answered with bytes that are not RESP.
    pub garbage_at: Option<u64>,
    /// From the server's Nth request on, no connection gets any reply (nor is closed).
    pub silent_from: Option<u64>,
}

pub struct FakeResp {
    pub port: u16,
}

struct RespShared {
    behaviour: Behaviour,
    requests: Arc<AtomicU64>,
    store: Store,
    /// While `Some(t)` and before `t`, no connection answers.
    stall_until: Mutex<Option<Instant>>,
}

pub fn start_resp(behaviour: Behaviour) -> FakeResp {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let port = listener.local_addr().unwrap().port();
    let shared = Arc::new(RespShared {
        behaviour,
        requests: Arc::new(AtomicU64::new(0)),
        store: Store::default(),
        stall_until: Mutex::new(None),
    });
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let shared = shared.clone();
            std::thread::spawn(move || serve_resp(stream, &shared));
        }
    });
    FakeResp { port }
}

fn serve_resp(mut stream: TcpStream, shared: &RespShared) {
    let _ = stream.set_nodelay(true);
    let mut parser = RequestParser::new(ParseLimits::default());
    let mut input = BytesMut::with_capacity(64 * 1024);
    let mut args = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut out = BytesMut::new();
    loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        input.extend_from_slice(&chunk[..n]);
        out.clear();
        while parser.next(&mut input, &mut args).expect("valid RESP from the bench") {
            let n = shared.requests.fetch_add(1, Ordering::SeqCst) + 1;
            let b = shared.behaviour;
            if b.close_at == Some(n) {
                return;
            }
            if let Some((at, pause)) = b.stall {
                if n == at {
                    *shared.stall_until.lock().unwrap() = Some(Instant::now() + pause);
                }
            }
            if b.silent_from.is_some_and(|from| n >= from) {
                continue;
            }
            if b.garbage_at == Some(n) {
                out.extend_from_slice(b"?garbage\r\n");
                continue;
            }
            let mut enc = ReplyEncoder::new(&mut out, Protocol::Resp2);
            // (Not `is_multiple_of`: newer than the workspace's rust-version 1.80.)
            #[allow(clippy::manual_is_multiple_of)]
            let inject = b.error_every.is_some_and(|every| n % every == 0);
            if inject {
                enc.error("ERR injected failure");
                continue;
            }
            let command = args[0].to_ascii_uppercase();
            match (&command[..], args.len()) {
                (b"GET", 2) => match shared.store.lock().unwrap().get(&args[1]) {
                    Some(value) => enc.bulk(value),
                    None => enc.null(),
                },
                (b"SET", 3) => {
                    shared.store.lock().unwrap().insert(args[1].clone(), args[2].clone());
                    enc.ok();
                }
                _ => enc.error("ERR unknown command"),
            }
        }
        // A server-wide stall: nothing is answered before it ends.
        let until = *shared.stall_until.lock().unwrap();
        if let Some(until) = until {
            let now = Instant::now();
            if now < until {
                std::thread::sleep(until - now);
            }
        }
        if stream.write_all(&out).is_err() {
            return;
        }
    }
}

pub struct FakeNative {
    /// Shard 0's port, the seed.
    pub seed_port: u16,
    /// Requests served by each shard.
    pub per_shard: Arc<[AtomicU64; 2]>,
}

/// A two-shard native node: each shard on its own port, keys routed by `key_shard(key, 2)`.
pub fn start_native() -> FakeNative {
    let listeners = [
        TcpListener::bind("127.0.0.1:0").unwrap(),
        TcpListener::bind("127.0.0.1:0").unwrap(),
    ];
    let endpoints: Vec<String> = listeners
        .iter()
        .map(|l| format!("127.0.0.1:{}", l.local_addr().unwrap().port()))
        .collect();
    let topology = Topology::build(HASH_COREKV_V1, endpoints.iter().map(String::as_str));
    let seed_port = listeners[0].local_addr().unwrap().port();
    let per_shard: Arc<[AtomicU64; 2]> = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let store = Store::default();
    for (shard, listener) in listeners.into_iter().enumerate() {
        let (topology, store, per_shard) = (topology.clone(), store.clone(), per_shard.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (topology, store, per_shard) = (topology.clone(), store.clone(), per_shard.clone());
                std::thread::spawn(move || serve_native(stream, shard as u32, &topology, &store, &per_shard));
            }
        });
    }
    FakeNative { seed_port, per_shard }
}

fn serve_native(mut stream: TcpStream, shard: u32, topology: &Topology, store: &Store, per_shard: &[AtomicU64; 2]) {
    let _ = stream.set_nodelay(true);
    let mut decoder = FrameDecoder::new(Limits::default());
    let mut input = BytesMut::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        input.extend_from_slice(&chunk[..n]);
        let mut answers = Vec::new();
        while let Some(frame) = decoder.decode(&mut input).expect("valid frames from the bench") {
            let id = frame.request_id();
            let request = Request::decode(frame, &Limits::default()).expect("valid request");
            let wrong_shard = |key: &[u8]| {
                let owner = key_shard(key, 2);
                (owner != shard).then(|| Response::Error {
                    code: ErrorCode::WRONG_SHARD,
                    message: Bytes::from(format!("key belongs to shard {owner}")),
                })
            };
            let response = match request {
                Request::Topology => Response::Topology(topology.clone()),
                Request::Get { key } => wrong_shard(&key).unwrap_or_else(|| {
                    per_shard[shard as usize].fetch_add(1, Ordering::SeqCst);
                    match store.lock().unwrap().get(&key) {
                        Some(v) => Response::Value(v.clone()),
                        None => Response::NotFound,
                    }
                }),
                Request::Set { key, value, .. } => wrong_shard(&key).unwrap_or_else(|| {
                    per_shard[shard as usize].fetch_add(1, Ordering::SeqCst);
                    store.lock().unwrap().insert(key, value);
                    Response::Ok
                }),
                other => panic!("the bench sent {other:?}"),
            };
            answers.push((id, response));
        }
        // Out of order on purpose: the bench must match replies by id.
        let mut out = BytesMut::new();
        for (id, response) in answers.iter().rev() {
            response.encode(*id, false, &mut out);
        }
        if stream.write_all(&out).is_err() {
            return;
        }
    }
}
