//! In-process fake servers for the load loop's tests, on 127.0.0.1 port 0, one std thread per
//! connection: a RESP server (GET/SET on a shared map) that can stall once, inject error replies
//! or drop a connection, and a two-shard native server that checks routing and answers each
//! batch of requests in reverse order (replies matched by id), over TCP ([`start_native`], or
//! [`start_native_with`] some of the RESP server's faults) or over
//! RDMA sessions of `corekv_rdma`'s soft provider ([`start_rdma`], served as `node/src/rdma_serve.rs`
//! does: handshake and tagged data connection, RDMA Read of the frames, RDMA Write of the
//! responses, RESPONSE).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use corekv_net::native::{ErrorCode, FrameDecoder, Limits, Request, Response, Topology, HASH_COREKV_V1};
use corekv_net::resp::{ParseLimits, Protocol, ReplyEncoder, RequestParser};
use corekv_net::routing::key_shard;
use corekv_rdma::channel::{ChannelConfig, PAYLOAD_MAX};
use corekv_rdma::handshake::{Handshake, PeerEpochs, MAGIC};
use corekv_rdma::pool::{self, BufferPool};
use corekv_rdma::provider::{CompletionQueue, MemoryRegion, ProtectionDomain, RemoteAddr};
use corekv_rdma::rpc::{Attach, PeerQueuePairs, RpcMsg, SoftEndpoint, Status, DATA_MAGIC};
use corekv_rdma::session;
use corekv_rdma::soft::SoftPd;

type Store = Arc<Mutex<HashMap<Bytes, Bytes>>>;

/// What the fake RESP server does besides answering (the native one over TCP does `error_every`,
/// `close_at` and `silent_from`).
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

/// The faults a fake native node injects (over TCP), counted over its GETs and SETs.
struct NativeFaults {
    behaviour: Behaviour,
    requests: AtomicU64,
}

pub struct FakeNative {
    /// Shard 0's port, the seed.
    pub seed_port: u16,
    /// Requests served by each shard.
    pub per_shard: Arc<[AtomicU64; 2]>,
}

/// A two-shard native node: each shard on its own port, keys routed by `key_shard(key, 2)`.
pub fn start_native() -> FakeNative {
    start_native_with(Behaviour::default())
}

/// [`start_native`], injecting `behaviour`'s `error_every`, `close_at` and `silent_from`.
pub fn start_native_with(behaviour: Behaviour) -> FakeNative {
    let faults = Arc::new(NativeFaults {
        behaviour,
        requests: AtomicU64::new(0),
    });
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
        let (topology, store, per_shard, faults) = (topology.clone(), store.clone(), per_shard.clone(), faults.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (topology, store, per_shard, faults) =
                    (topology.clone(), store.clone(), per_shard.clone(), faults.clone());
                std::thread::spawn(move || serve_native(stream, shard as u32, &topology, &store, &per_shard, &faults));
            }
        });
    }
    FakeNative { seed_port, per_shard }
}

fn serve_native(
    mut stream: TcpStream,
    shard: u32,
    topology: &Topology,
    store: &Store,
    per_shard: &[AtomicU64; 2],
    faults: &NativeFaults,
) {
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
        let Some(out) = answer_frames(
            &mut decoder,
            &mut input,
            shard,
            topology,
            store,
            per_shard,
            Some(faults),
        ) else {
            return; // close_at: the connection closes without a reply
        };
        if stream.write_all(&out).is_err() {
            return;
        }
    }
}

/// Answers every whole frame of `input` as shard `shard` of a two-shard node, in reverse order
/// on purpose: the bench must match replies by id. `None`: `faults` closes the connection.
fn answer_frames(
    decoder: &mut FrameDecoder,
    input: &mut BytesMut,
    shard: u32,
    topology: &Topology,
    store: &Store,
    per_shard: &[AtomicU64; 2],
    faults: Option<&NativeFaults>,
) -> Option<BytesMut> {
    let mut answers = Vec::new();
    while let Some(frame) = decoder.decode(input).expect("valid frames from the bench") {
        let id = frame.request_id();
        let request = Request::decode(frame, &Limits::default()).expect("valid request");
        if let Some(faults) = faults.filter(|_| !matches!(request, Request::Topology)) {
            let n = faults.requests.fetch_add(1, Ordering::SeqCst) + 1;
            let b = faults.behaviour;
            if b.close_at == Some(n) {
                return None;
            }
            if b.silent_from.is_some_and(|from| n >= from) {
                continue;
            }
            #[allow(clippy::manual_is_multiple_of)]
            let inject = b.error_every.is_some_and(|every| n % every == 0);
            if inject {
                let message = Bytes::from_static(b"injected failure");
                answers.push((
                    id,
                    Response::Error {
                        code: ErrorCode::OUT_OF_MEMORY,
                        message,
                    },
                ));
                continue;
            }
        }
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
    let mut out = BytesMut::new();
    for (id, response) in answers.iter().rev() {
        response.encode(*id, false, &mut out);
    }
    Some(out)
}

// ---------------------------------------------------------------------------------------------
// The two-shard node over RDMA (soft provider)
// ---------------------------------------------------------------------------------------------

/// What every session of one fake RDMA shard shares.
struct RdmaShard {
    shard: u32,
    topology: Topology,
    store: Store,
    per_shard: Arc<[AtomicU64; 2]>,
    epochs: Mutex<PeerEpochs>,
    /// Sessions waiting for their data connection, by token.
    waiting: Mutex<HashMap<u64, mpsc::Sender<(TcpStream, Attach)>>>,
    next_token: AtomicU64,
    /// Request messages received by both shards.
    messages: Arc<AtomicU64>,
    /// The session that receives the node's Nth request message drops it unanswered and ends.
    drop_at: Option<u64>,
}

/// A two-shard native node over RDMA: each shard's handshake port serves its sessions (one
/// thread each), keys routed by `key_shard(key, 2)`; TOPOLOGY names the RDMA ports. Responses
/// must fit the client's response buffer (no PULL), which the bench's small values do.
pub fn start_rdma() -> FakeNative {
    start_rdma_dropping(None)
}

/// [`start_rdma`], whose session that receives the node's `drop_at`th request message ends
/// there, unanswered (the client sees its session fail).
pub fn start_rdma_dropping(drop_at: Option<u64>) -> FakeNative {
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
    let messages = Arc::new(AtomicU64::new(0));
    for (shard, listener) in listeners.into_iter().enumerate() {
        let shared = Arc::new(RdmaShard {
            messages: messages.clone(),
            drop_at,
            shard: shard as u32,
            topology: topology.clone(),
            store: store.clone(),
            per_shard: per_shard.clone(),
            epochs: Mutex::new(PeerEpochs::new()),
            waiting: Mutex::new(HashMap::new()),
            next_token: AtomicU64::new(1 + ((shard as u64) << 32)),
        });
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let shared = shared.clone();
                std::thread::spawn(move || serve_rdma_connection(stream, &shared));
            }
        });
    }
    FakeNative { seed_port, per_shard }
}

fn serve_rdma_connection(mut stream: TcpStream, shared: &RdmaShard) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut magic = [0u8; 4];
    if stream.read_exact(&mut magic).is_err() {
        return;
    }
    match u32::from_le_bytes(magic) {
        MAGIC => serve_rdma_session(stream, magic, shared),
        DATA_MAGIC => {
            let mut bytes = [0u8; Attach::LEN];
            bytes[..4].copy_from_slice(&magic);
            if stream.read_exact(&mut bytes[4..]).is_err() {
                return;
            }
            let attach = Attach::decode(&bytes).expect("a valid attach");
            if let Some(session) = shared.waiting.lock().unwrap().remove(&attach.token) {
                let _ = session.send((stream, attach));
            }
        }
        other => panic!("not an rdma handshake: {other:#x}"),
    }
}

/// One session: handshake, data connection, then REQUEST → RDMA Read the frames, answer them,
/// RDMA Write the responses → RESPONSE, until the client goes away.
fn serve_rdma_session(mut control: TcpStream, magic: [u8; 4], shared: &RdmaShard) {
    const DEPTH: u32 = 4;
    let mut theirs = [0u8; Handshake::LEN];
    theirs[..4].copy_from_slice(&magic);
    control.read_exact(&mut theirs[4..]).unwrap();
    let pd = SoftPd::new();
    let mut pool = BufferPool::new(pd.register(4 << 20).unwrap(), 1024).unwrap();
    let mut endpoint = SoftEndpoint::new(&pd, ChannelConfig::default(), DEPTH).unwrap();
    let ours = endpoint.handshake(&pd, 42, shared.shard, 0, pool.mr().desc());
    let (peer, credits, answer) =
        session::accept_bytes(&theirs, &ours, &mut shared.epochs.lock().unwrap()).expect("a valid handshake");
    let token = shared.next_token.fetch_add(1, Ordering::SeqCst);
    let (tx, rx) = mpsc::channel();
    shared.waiting.lock().unwrap().insert(token, tx);
    control.write_all(&answer).unwrap();
    control.write_all(&token.to_le_bytes()).unwrap();
    let Ok((mut data, their_attach)) = rx.recv_timeout(Duration::from_secs(10)) else {
        return;
    };
    data.write_all(&endpoint.attach(token).encode()).unwrap();
    let peers = PeerQueuePairs {
        handshake: peer,
        data: their_attach,
    };
    endpoint.connect_to(&pd, credits, &peers, control, data).unwrap();

    let timeout = Duration::from_secs(5);
    let remote = |offset: u64| RemoteAddr {
        addr: peer.pool.addr + offset,
        rkey: peer.pool.rkey,
    };
    let mut decoder = FrameDecoder::new(Limits::default());
    let mut message = [0u8; PAYLOAD_MAX];
    let mut next_wr = 0u64;
    loop {
        let len = loop {
            match endpoint.chan.try_recv(&mut message) {
                Ok(Some(len)) => break len,
                Ok(None) => {}
                Err(_) => return, // the client went away
            }
            if endpoint.chan.cq().wait(Duration::from_millis(100)).is_err() {
                return;
            }
        };
        let RpcMsg::Request {
            tag,
            frames_offset,
            frames_len,
            response_offset,
            response_capacity,
        } = RpcMsg::decode(&message[..len]).unwrap()
        else {
            continue; // RELEASE: nothing is ever pulled here
        };
        if shared.drop_at == Some(shared.messages.fetch_add(1, Ordering::SeqCst) + 1) {
            return;
        }
        let block = pool.alloc(frames_len as usize).expect("room for the frames");
        next_wr += 1;
        pool::post_read(&endpoint.data_qp, &pool, &block, remote(frames_offset), next_wr).unwrap();
        pool::wait_for(&endpoint.data_cq, next_wr, timeout).unwrap();
        let mut input = BytesMut::zeroed(frames_len as usize);
        pool.read(&block, &mut input).unwrap();
        pool.free(block).unwrap();
        let out = answer_frames(
            &mut decoder,
            &mut input,
            shared.shard,
            &shared.topology,
            &shared.store,
            &shared.per_shard,
            None,
        )
        .unwrap_or_default();
        assert!(input.is_empty(), "a request message carries whole frames");
        assert!(out.len() <= response_capacity as usize, "no PULL in this fake");
        let block = pool.alloc(out.len().max(1)).expect("room for the responses");
        pool.write(&block, &out).unwrap();
        next_wr += 1;
        pool::post_write(&endpoint.data_qp, &pool, &block, remote(response_offset), next_wr).unwrap();
        let written = pool::wait_for(&endpoint.data_cq, next_wr, timeout);
        pool.free(block).unwrap();
        if written.is_err() {
            return;
        }
        let response = RpcMsg::Response {
            tag,
            status: Status::Written,
            len: out.len() as u32,
            pull_offset: 0,
        };
        if endpoint.chan.send_blocking(&response.encode(), timeout).is_err() {
            return;
        }
    }
}
