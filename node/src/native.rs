//! The native binary protocol (`net/PROTOCOL.md`) on one shard's own port.
//!
//! ```text
//!  socket ──read──▶ rbuf ──FrameDecoder──▶ Frame ──Request::decode──▶ Request
//!     key owned by this shard ──▶ run on this shard's keyspace, response into `out`
//!     key owned by another ─────▶ WRONG_SHARD (nothing done: the client's map is stale)
//!  end of the bytes read ──▶ log barrier (durability) ──write──▶ socket
//! ```
//!
//! Every shard listens on its own port and a client routes each key to its owner's port, so a
//! request never crosses cores: there is no forwarding path here at all. Responses go out in
//! request order (they may not, by the protocol, but one shard has no reason to reorder), and as
//! on the RESP port a whole read's requests are answered together.

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::Instant;

use bytes::BytesMut;
use corekv_engine::{EngineError, Expiry, Keyspace};
use corekv_net::native::{
    write_error, write_value, BatchEncoder, ErrorCode, Flags, FrameDecoder, Limits, Opcode, Request, Response,
    SetCondition, Topology, HASH_COREKV_V1,
};
use futures::AsyncWriteExt;
use glommio::net::TcpStream;

use crate::client::ClientInfo;
use crate::commands::strings::{add_to_integer, IncrError};
use crate::read_size::AdaptiveRead;
use crate::shard::{now_ms, Shard};

/// The native protocol has no SELECT: it works on database 0.
const DB: usize = 0;

/// Native-protocol traffic of one shard (INFO native).
#[derive(Clone, Copy, Debug, Default)]
pub struct NativeStats {
    pub connections: u64,
    /// Requests answered, errors included.
    pub requests: u64,
    /// Requests refused because another shard owns their key.
    pub wrong_shard: u64,
}

/// Serves an accepted native-protocol connection until it ends.
pub async fn serve(shard: Rc<Shard>, mut stream: TcpStream) {
    let mut refusal = BytesMut::new();
    write_error(
        &mut refusal,
        0,
        false,
        ErrorCode::TOO_MANY_CONNECTIONS,
        "max number of clients reached",
    );
    let Some(registration) = crate::conn::admit(&shard, &mut stream, &refusal, "corekv-native").await else {
        return;
    };
    update_stats(&shard, |s| s.connections += 1);
    let mut connection = NativeConnection {
        shard: shard.clone(),
        info: registration.info.clone(),
        decoder: FrameDecoder::new(Limits::default()),
        rbuf: BytesMut::with_capacity(AdaptiveRead::INITIAL),
        out: BytesMut::with_capacity(AdaptiveRead::INITIAL),
        reader: AdaptiveRead::new(shard.node.config.busy_poll),
    };
    connection.run(&mut stream).await;
    update_stats(&shard, |s| s.connections -= 1);
    let _ = stream.close().await;
}

fn update_stats(shard: &Shard, change: impl FnOnce(&mut NativeStats)) {
    let mut stats = shard.native.get();
    change(&mut stats);
    shard.native.set(stats);
}

struct NativeConnection {
    shard: Rc<Shard>,
    info: Rc<RefCell<ClientInfo>>,
    decoder: FrameDecoder,
    rbuf: BytesMut,
    out: BytesMut,
    reader: AdaptiveRead,
}

impl NativeConnection {
    async fn run(&mut self, stream: &mut TcpStream) {
        loop {
            let connections = self.shard.clients.borrow().len();
            match self.reader.read(stream, &mut self.rbuf, connections).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            self.info.borrow_mut().last_interaction = std::time::Instant::now();
            let since = self.shard.log_position();
            let close = self.process_input();
            if let Err(reason) = self.shard.log_barrier(since).await {
                // Nothing of this read is acknowledged: its writes may not be durable.
                tracing::warn!("closing a native client whose writes could not be made durable: {reason}");
                return;
            }
            if !self.out.is_empty() {
                if stream.write_all(&self.out).await.is_err() {
                    return;
                }
                self.out.clear();
            }
            if close || self.info.borrow().killed {
                return;
            }
        }
    }

    /// Answers every complete frame in the read buffer; true when the connection must close.
    fn process_input(&mut self) -> bool {
        let transport = Transport {
            ports: &self.shard.node.native_ports,
            local_ip: self.info.borrow().local_addr.ip(),
        };
        let mut answered = Answered::default();
        let close = answer_frames(
            &self.shard,
            &mut self.decoder,
            &mut self.rbuf,
            &mut self.out,
            &transport,
            &mut answered,
        );
        update_stats(&self.shard, |s| {
            s.requests += answered.requests;
            s.wrong_shard += answered.wrong_shard;
        });
        close
    }
}

/// The transport a frame arrived by, for TOPOLOGY: every shard's port of that transport (native
/// or RDMA), and the local address the connection reached (the host to name with a wildcard bind).
pub struct Transport<'a> {
    pub ports: &'a [u16],
    pub local_ip: IpAddr,
}

/// What [`answer_frames`] did, for the transport's counters.
#[derive(Clone, Copy, Debug, Default)]
pub struct Answered {
    /// Requests answered, errors included.
    pub requests: u64,
    /// Requests refused because another shard owns their key.
    pub wrong_shard: u64,
}

/// Answers every complete frame in `input` into `out`, on this shard: the execution shared by
/// every transport of the native protocol (TCP here, RDMA in `rdma_serve`). Returns true when the
/// input cannot be framed any more (an error frame saying why is in `out`: close the stream).
pub fn answer_frames(
    shard: &Shard,
    decoder: &mut FrameDecoder,
    input: &mut BytesMut,
    out: &mut BytesMut,
    transport: &Transport<'_>,
    answered: &mut Answered,
) -> bool {
    loop {
        match decoder.decode(input) {
            Ok(Some(frame)) => {
                let id = frame.request_id();
                let crc = frame.header.flags.contains(Flags::HAS_CRC);
                match Request::decode(frame, decoder.limits()) {
                    Ok(request) => {
                        let started = Instant::now();
                        let name = command_name(&request);
                        if execute(shard, id, crc, &request, out, transport) {
                            answered.wrong_shard += 1;
                            shard.commands.borrow_mut().record_rejected(name);
                        } else {
                            shard.commands.borrow_mut().record_call(name, started.elapsed());
                        }
                    }
                    Err(error) => Response::encode_error(&error, id, crc, out),
                }
                answered.requests += 1;
            }
            Ok(None) => return false,
            Err(error) => {
                // The stream cannot be framed any more: say why, then close.
                tracing::debug!("closing a native client: {error}");
                Response::encode_error(&error, 0, false, out);
                return true;
            }
        }
    }
}

/// The name a request is counted under in `INFO commandstats` (and `total_commands_processed`):
/// the RESP command doing the same, or the operation's own name where RESP has none (CAS,
/// TOPOLOGY).
fn command_name(request: &Request) -> &'static str {
    match request {
        Request::Ping => "ping",
        Request::Get { .. } => "get",
        Request::Set { .. } => "set",
        Request::Del { .. } => "del",
        Request::MGet(_) => "mget",
        Request::MSet(_) => "mset",
        Request::Cas { .. } => "cas",
        Request::Incr { .. } => "incrby",
        Request::Expire { ttl_ms: 0, .. } => "persist",
        Request::Expire { .. } => "pexpire",
        Request::Ttl { .. } => "pttl",
        Request::Exists { .. } => "exists",
        Request::Topology => "topology",
    }
}

/// Runs one decoded request on `shard` and appends its response frame to `out`. Returns true
/// when the request was refused with WRONG_SHARD (nothing done).
pub fn execute(
    shard: &Shard,
    id: u64,
    crc: bool,
    request: &Request,
    out: &mut BytesMut,
    transport: &Transport<'_>,
) -> bool {
    if let Some(owner) = misrouted(shard, request) {
        let message = format!("key belongs to shard {owner}, not shard {}", shard.id);
        write_error(out, id, crc, ErrorCode::WRONG_SHARD, &message);
        return true;
    }
    if is_write(request) {
        if let Some(refusal) = shard.log_refusal() {
            write_error(out, id, crc, ErrorCode::WRITES_REFUSED, &refusal);
            return false;
        }
    }
    execute_owned(shard, id, crc, request, out, transport);
    false
}

/// Runs a request whose keys this shard owns.
fn execute_owned(shard: &Shard, id: u64, crc: bool, request: &Request, out: &mut BytesMut, transport: &Transport<'_>) {
    let now = now_ms();
    let mut keyspace = shard.keyspace.borrow_mut();
    let ks: &mut Keyspace = &mut keyspace;
    let reply = |response: Response, out: &mut BytesMut| response.encode(id, crc, out);
    match request {
        Request::Ping => reply(Response::Ok, out),
        Request::Topology => {
            drop(keyspace);
            reply(Response::Topology(topology(shard, transport)), out);
        }
        Request::Get { key } => match ks.get(DB, key, now) {
            Some(value) => write_value(out, id, crc, value),
            None => reply(Response::NotFound, out),
        },
        Request::Set {
            key,
            value,
            ttl_ms,
            condition,
        } => {
            let allowed = match condition {
                SetCondition::Always => true,
                SetCondition::IfAbsent => !ks.contains(DB, key, now),
                SetCondition::IfPresent => ks.contains(DB, key, now),
            };
            if !allowed {
                return reply(Response::NotFound, out);
            }
            match ks.set(DB, key, value, expiry(*ttl_ms, now), now) {
                Ok(()) => reply(Response::Ok, out),
                Err(e) => engine_error(out, id, crc, &e),
            }
        }
        Request::Del { key } => reply(Response::Integer(ks.remove(DB, key, now).into()), out),
        Request::Exists { key } => reply(Response::Integer(ks.contains(DB, key, now).into()), out),
        Request::MGet(keys) => {
            let mut values = BatchEncoder::begin(out, Opcode::Value, id, crc);
            for entry in keys {
                values.value(ks.get(DB, &entry.key, now));
            }
            values.finish();
        }
        Request::MSet(pairs) => {
            // Every pair or none: a refusal puts back what the batch had written.
            let entries: Vec<_> = pairs.iter().collect();
            let pairs = entries
                .iter()
                .map(|entry| (&entry.key[..], entry.value.as_deref().unwrap_or_default()));
            match ks.set_all(DB, pairs, now) {
                Ok(()) => reply(Response::Ok, out),
                Err(e) => engine_error(out, id, crc, &e),
            }
        }
        Request::Cas {
            key,
            expected,
            value,
            ttl_ms,
        } => {
            if ks.peek(DB, key, now) != Some(&expected[..]) {
                return reply(Response::Integer(0), out);
            }
            match ks.set(DB, key, value, expiry(*ttl_ms, now), now) {
                Ok(()) => reply(Response::Integer(1), out),
                Err(e) => engine_error(out, id, crc, &e),
            }
        }
        Request::Incr { key, delta } => match add_to_integer(ks, DB, key, *delta, now) {
            Ok(value) => reply(Response::Integer(value), out),
            Err(IncrError::NotInteger) => write_error(
                out,
                id,
                crc,
                ErrorCode::NOT_AN_INTEGER,
                "value is not an integer or out of range",
            ),
            Err(IncrError::Overflow) => write_error(
                out,
                id,
                crc,
                ErrorCode::OVERFLOW,
                "increment or decrement would overflow",
            ),
            Err(IncrError::Engine(e)) => engine_error(out, id, crc, &e),
        },
        Request::Expire { key, ttl_ms } => {
            let at = (*ttl_ms != 0).then(|| now.saturating_add(*ttl_ms));
            reply(Response::Integer(ks.set_expiry(DB, key, at, now).into()), out)
        }
        Request::Ttl { key } => {
            let ttl = match ks.info(DB, key, now) {
                None => -2,
                Some(info) => info.expire_at_ms.map_or(-1, |at| at.saturating_sub(now) as i64),
            };
            reply(Response::Integer(ttl), out)
        }
    }
}

fn expiry(ttl_ms: u64, now: u64) -> Expiry {
    match ttl_ms {
        0 => Expiry::Persist,
        ttl => Expiry::At(now.saturating_add(ttl)),
    }
}

fn engine_error(out: &mut BytesMut, id: u64, crc: bool, error: &EngineError) {
    let code = match error {
        EngineError::OutOfMemory => ErrorCode::OUT_OF_MEMORY,
        EngineError::TooLarge => ErrorCode::TOO_LARGE,
        _ => ErrorCode::MALFORMED,
    };
    write_error(out, id, crc, code, &error.to_string());
}

/// The shard owning a key of `request` when it is not this one.
fn misrouted(shard: &Shard, request: &Request) -> Option<usize> {
    let foreign = |key: &[u8]| Some(shard.owner_of(key)).filter(|&owner| owner != shard.id);
    match request {
        Request::Ping | Request::Topology => None,
        Request::Get { key }
        | Request::Set { key, .. }
        | Request::Del { key }
        | Request::Cas { key, .. }
        | Request::Incr { key, .. }
        | Request::Expire { key, .. }
        | Request::Ttl { key }
        | Request::Exists { key } => foreign(key),
        Request::MGet(batch) | Request::MSet(batch) => batch.iter().find_map(|entry| foreign(&entry.key)),
    }
}

fn is_write(request: &Request) -> bool {
    matches!(
        request,
        Request::Set { .. }
            | Request::Del { .. }
            | Request::MSet(_)
            | Request::Cas { .. }
            | Request::Incr { .. }
            | Request::Expire { .. }
    )
}

/// Every shard's endpoint on the request's transport. With a wildcard bind address the host is the address this
/// connection reached, which the client can reach too.
fn topology(shard: &Shard, transport: &Transport<'_>) -> Topology {
    let bind = shard.node.config.bind;
    let host = if bind.is_unspecified() {
        transport.local_ip
    } else {
        bind
    };
    let endpoints: Vec<String> = transport
        .ports
        .iter()
        .map(|&port| SocketAddr::new(host, port).to_string())
        .collect();
    Topology::build(HASH_COREKV_V1, endpoints.iter().map(String::as_str))
}
