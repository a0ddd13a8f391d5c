//! An in-process fake corekv node: one std-thread TCP listener per shard on 127.0.0.1, speaking
//! the native protocol with the crate's codec, backed by one `HashMap`. It answers TOPOLOGY,
//! refuses misrouted keys with WRONG_SHARD (and counts them), and has switches for misbehaviour:
//! stop answering, answer in reverse order, drop the connection on the next requests, send
//! garbage, lie about the topology.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use corekv_net::native::{
    Batch, BatchKind, ErrorCode, FrameDecoder, Limits, Opcode, Request, Response, SetCondition, Topology,
    HASH_COREKV_V1,
};
use corekv_net::routing::key_shard;

#[derive(Default)]
pub struct Switches {
    /// Read requests but never answer them (data requests: PING and TOPOLOGY still work).
    pub stall: AtomicBool,
    /// Answer the requests of each read in reverse order.
    pub reverse: AtomicBool,
    /// Close the connection, unanswered, on this many next requests (counting down).
    pub drop_next: AtomicU32,
    /// Answer every request with bytes that are not a frame.
    pub garbage: AtomicBool,
    /// The routing hash id announced.
    pub hash_id: AtomicU16,
    /// Announce these endpoints instead of the real ones.
    pub topology_override: Mutex<Option<Vec<String>>>,
}

pub struct Shared {
    pub shards: u32,
    pub ports: Mutex<Vec<u16>>,
    data: Mutex<HashMap<Bytes, (Bytes, Option<Instant>)>>,
    /// Requests naming keys, per shard (batch frames count once).
    pub keyed_requests: Vec<AtomicU64>,
    /// Requests refused with WRONG_SHARD.
    pub misrouted: AtomicU64,
    /// Requests seen, per opcode (dropped and stalled ones included).
    pub opcodes: Mutex<HashMap<u8, u64>>,
    /// Responses sent out of request order.
    pub reordered: AtomicU64,
    pub switches: Switches,
    conns: Mutex<Vec<TcpStream>>,
    stop: AtomicBool,
}

impl Shared {
    pub fn seen(&self, opcode: Opcode) -> u64 {
        self.opcodes.lock().unwrap().get(&(opcode as u8)).copied().unwrap_or(0)
    }
}

pub struct FakeCluster {
    pub shared: Arc<Shared>,
    acceptors: Vec<JoinHandle<()>>,
}

impl FakeCluster {
    pub fn start(shards: u32) -> FakeCluster {
        let listeners: Vec<TcpListener> = (0..shards).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
        let ports = listeners.iter().map(|l| l.local_addr().unwrap().port()).collect();
        let shared = Arc::new(Shared {
            shards,
            ports: Mutex::new(ports),
            data: Mutex::new(HashMap::new()),
            keyed_requests: (0..shards).map(|_| AtomicU64::new(0)).collect(),
            misrouted: AtomicU64::new(0),
            opcodes: Mutex::new(HashMap::new()),
            reordered: AtomicU64::new(0),
            switches: Switches {
                hash_id: AtomicU16::new(HASH_COREKV_V1),
                ..Switches::default()
            },
            conns: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let acceptors = spawn_acceptors(&shared, listeners);
        FakeCluster { shared, acceptors }
    }

    /// The seed address (shard 0's port).
    pub fn seed(&self) -> String {
        format!("127.0.0.1:{}", self.shared.ports.lock().unwrap()[0])
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.shared
            .ports
            .lock()
            .unwrap()
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect()
    }

    fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for conn in self.shared.conns.lock().unwrap().drain(..) {
            let _ = conn.shutdown(Shutdown::Both);
        }
        for port in self.shared.ports.lock().unwrap().iter() {
            // Wakes the acceptor blocked in accept().
            let _ = TcpStream::connect(("127.0.0.1", *port));
        }
        for acceptor in self.acceptors.drain(..) {
            acceptor.join().unwrap();
        }
    }

    /// Closes every connection and listener, then listens again on the same ports (the data
    /// survives, as on a durable node).
    pub fn restart(&mut self) {
        self.stop();
        self.shared.stop.store(false, Ordering::SeqCst);
        let ports = self.shared.ports.lock().unwrap().clone();
        let listeners = ports
            .iter()
            .map(|p| TcpListener::bind(("127.0.0.1", *p)).unwrap())
            .collect();
        self.acceptors = spawn_acceptors(&self.shared, listeners);
    }
}

impl Drop for FakeCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn_acceptors(shared: &Arc<Shared>, listeners: Vec<TcpListener>) -> Vec<JoinHandle<()>> {
    listeners
        .into_iter()
        .enumerate()
        .map(|(shard, listener)| {
            let shared = shared.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if shared.stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    shared.conns.lock().unwrap().push(stream.try_clone().unwrap());
                    let shared = shared.clone();
                    std::thread::spawn(move || serve(&shared, shard as u32, stream));
                }
            })
        })
        .collect()
}

fn serve(shared: &Shared, shard: u32, mut stream: TcpStream) {
    let limits = Limits::default();
    let mut decoder = FrameDecoder::new(limits);
    let mut input = BytesMut::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        input.extend_from_slice(&chunk[..n]);
        let mut requests = Vec::new();
        loop {
            match decoder.decode(&mut input) {
                Ok(Some(frame)) => {
                    let id = frame.request_id();
                    *shared.opcodes.lock().unwrap().entry(frame.header.opcode).or_default() += 1;
                    requests.push((id, Request::decode(frame, &limits)));
                }
                Ok(None) => break,
                Err(err) => {
                    let mut out = BytesMut::new();
                    Response::encode_error(&err, 0, false, &mut out);
                    let _ = stream.write_all(&out);
                    return;
                }
            }
        }
        let switches = &shared.switches;
        // The misbehaviour switches apply to data requests only, so the client can still fetch
        // the topology and ping.
        let keyed = requests
            .iter()
            .any(|(_, r)| !matches!(r, Ok(Request::Ping) | Ok(Request::Topology)));
        if keyed {
            if switches.stall.load(Ordering::SeqCst) {
                continue;
            }
            let dropping = switches
                .drop_next
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
            if dropping.is_ok() {
                let _ = stream.shutdown(Shutdown::Both);
                return;
            }
            if switches.garbage.load(Ordering::SeqCst) {
                let _ = stream.write_all(&[0xAB; 64]);
                continue;
            }
        }
        let mut responses: Vec<(u64, Response)> = requests
            .into_iter()
            .map(|(id, request)| {
                let response = match request {
                    Ok(request) => execute(shared, shard, request),
                    Err(err) => Response::Error {
                        code: err.code(),
                        message: Bytes::from(err.to_string()),
                    },
                };
                (id, response)
            })
            .collect();
        if switches.reverse.load(Ordering::SeqCst) && responses.len() > 1 {
            responses.reverse();
            shared.reordered.fetch_add(responses.len() as u64, Ordering::SeqCst);
        }
        let mut out = BytesMut::new();
        for (id, response) in &responses {
            response.encode(*id, false, &mut out);
        }
        if stream.write_all(&out).is_err() {
            return;
        }
    }
}

fn error(code: ErrorCode, message: &str) -> Response {
    Response::Error {
        code,
        message: Bytes::copy_from_slice(message.as_bytes()),
    }
}

fn expiry(ttl_ms: u64) -> Option<Instant> {
    (ttl_ms > 0).then(|| Instant::now() + Duration::from_millis(ttl_ms))
}

fn execute(shared: &Shared, shard: u32, request: Request) -> Response {
    let keys: Vec<Bytes> = match &request {
        Request::Ping => return Response::Ok,
        Request::Topology => {
            let endpoints = shared
                .switches
                .topology_override
                .lock()
                .unwrap()
                .clone()
                .unwrap_or_else(|| {
                    let ports = shared.ports.lock().unwrap();
                    ports.iter().map(|p| format!("127.0.0.1:{p}")).collect()
                });
            let hash_id = shared.switches.hash_id.load(Ordering::SeqCst);
            return Response::Topology(Topology::build(hash_id, endpoints.iter().map(String::as_str)));
        }
        Request::MGet(batch) | Request::MSet(batch) => batch.iter().map(|e| e.key).collect(),
        Request::Get { key }
        | Request::Del { key }
        | Request::Ttl { key }
        | Request::Exists { key }
        | Request::Set { key, .. }
        | Request::Cas { key, .. }
        | Request::Incr { key, .. }
        | Request::Expire { key, .. } => vec![key.clone()],
    };
    for key in &keys {
        let owner = key_shard(key, shared.shards);
        if owner != shard {
            shared.misrouted.fetch_add(1, Ordering::SeqCst);
            return error(ErrorCode::WRONG_SHARD, &format!("key belongs to shard {owner}"));
        }
    }
    shared.keyed_requests[shard as usize].fetch_add(1, Ordering::SeqCst);
    let mut data = shared.data.lock().unwrap();
    let now = Instant::now();
    data.retain(|_, (_, expires)| !matches!(expires, Some(at) if *at <= now));
    match request {
        Request::Ping | Request::Topology => Response::Ok,
        Request::Get { key } => data
            .get(&key)
            .map_or(Response::NotFound, |(v, _)| Response::Value(v.clone())),
        Request::Set {
            key,
            value,
            ttl_ms,
            condition,
        } => {
            let exists = data.contains_key(&key);
            let store = match condition {
                SetCondition::Always => true,
                SetCondition::IfAbsent => !exists,
                SetCondition::IfPresent => exists,
            };
            if store {
                data.insert(key, (value, expiry(ttl_ms)));
                Response::Ok
            } else {
                Response::NotFound
            }
        }
        Request::Del { key } => Response::Integer(data.remove(&key).is_some() as i64),
        Request::Exists { key } => Response::Integer(data.contains_key(&key) as i64),
        Request::Ttl { key } => match data.get(&key) {
            None => Response::Integer(-2),
            Some((_, None)) => Response::Integer(-1),
            Some((_, Some(at))) => Response::Integer(at.saturating_duration_since(now).as_millis() as i64),
        },
        Request::Expire { key, ttl_ms } => match data.get_mut(&key) {
            None => Response::Integer(0),
            Some(entry) => {
                entry.1 = expiry(ttl_ms);
                Response::Integer(1)
            }
        },
        Request::Cas {
            key,
            expected,
            value,
            ttl_ms,
        } => match data.get(&key) {
            Some((current, _)) if *current == expected => {
                data.insert(key, (value, expiry(ttl_ms)));
                Response::Integer(1)
            }
            _ => Response::Integer(0),
        },
        Request::Incr { key, delta } => {
            let current = match data.get(&key) {
                None => 0,
                Some((v, _)) => match std::str::from_utf8(v).ok().and_then(|s| s.parse::<i64>().ok()) {
                    Some(n) => n,
                    None => return error(ErrorCode::NOT_AN_INTEGER, "value is not an integer or out of range"),
                },
            };
            let Some(next) = current.checked_add(delta) else {
                return error(ErrorCode::OVERFLOW, "increment or decrement would overflow");
            };
            let expires = data.get(&key).and_then(|(_, e)| *e);
            data.insert(key, (Bytes::from(next.to_string()), expires));
            Response::Integer(next)
        }
        Request::MGet(batch) => {
            let values: Vec<Option<Bytes>> = batch.iter().map(|e| data.get(&e.key).map(|(v, _)| v.clone())).collect();
            Response::Values(Batch::build(
                BatchKind::Values,
                values.iter().map(|v| (&[][..], v.as_deref())),
            ))
        }
        Request::MSet(batch) => {
            for entry in batch.iter() {
                data.insert(entry.key, (entry.value.unwrap_or_default(), None));
            }
            Response::Ok
        }
    }
}

/// Polls `condition` until it holds (panics after 10 s).
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::yield_now();
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A key owned by `shard` of `shards`, distinct per `n`.
pub fn key_on(shard: u32, shards: u32, n: usize) -> String {
    (0..)
        .map(|i| format!("k{n}-{i}"))
        .find(|k| key_shard(k.as_bytes(), shards) == shard)
        .unwrap()
}
