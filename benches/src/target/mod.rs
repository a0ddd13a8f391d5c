//! Targets: what a URL names ([`Target`]), how to open a benchmark connection's sockets
//! ([`endpoints`], [`connect`], [`connect_blocking`]) and how requests and replies look on the wire ([`Codec`]).
//!
//! Both protocols are driven straight from their sans-IO codecs, with no client library between
//! the load loop and the socket: [`resp`] writes RESP2 `GET`/`SET` arrays and reads replies with
//! a small allocation-free reader, [`native`] uses `corekv_net::native` (`Request::encode`,
//! `FrameDecoder`, `Response::decode`). A codec only turns bytes into a protocol-neutral
//! [`Reply`]; whether a reply is right for the request it answers is decided by [`classify`].
//! [`rdma`] carries the native protocol's frames, with the native codec, over RDMA sessions
//! (`corekv_net::client::rdma::RdmaStream`) instead of sockets.

pub mod native;
pub mod rdma;
pub mod resp;

use std::fmt;
use std::net::ToSocketAddrs;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use corekv_net::client::rdma::RdmaProvider;
use serde::Serialize;
use tokio::net::TcpStream;

/// The wire protocol of a target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// RESP2 on one socket per connection; replies arrive in request order.
    Resp,
    /// corekv's native protocol: one socket per shard per connection; replies matched by id.
    Native,
    /// corekv's native protocol over RDMA (a node's `--rdma-port`, on the provider
    /// `--rdma-provider` names): one RDMA session per shard per connection; replies matched by id.
    Rdma,
}

/// A server to benchmark: `resp://HOST:PORT`, `native://HOST:PORT` or `rdma://HOST:PORT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub protocol: Protocol,
    pub host: String,
    pub port: u16,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("target {url:?} is not resp://, native:// or rdma://HOST:PORT"))?;
        let protocol = match scheme {
            "resp" | "redis" => Protocol::Resp,
            "native" => Protocol::Native,
            "rdma" => Protocol::Rdma,
            _ => {
                return Err(format!(
                    "target {url:?}: unknown scheme {scheme:?} (resp, native or rdma)"
                ))
            }
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| format!("target {url:?} has no port (HOST:PORT)"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("target {url:?} has no host"));
        }
        let port: u16 = port
            .parse()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("target {url:?}: {port:?} is not a port (1-65535)"))?;
        Ok(Target {
            protocol,
            host: host.to_string(),
            port,
        })
    }

    /// `HOST:PORT`, bracketing IPv6 literals.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.protocol {
            Protocol::Resp => "resp",
            Protocol::Native => "native",
            Protocol::Rdma => "rdma",
        };
        write!(f, "{scheme}://{}", self.address())
    }
}

/// How long opening a socket or fetching the topology may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The addresses every benchmark connection opens a socket (or RDMA session) to, in routing
/// order: the target itself for RESP; for native and rdma, each shard's endpoint from a TOPOLOGY
/// asked of the target (rdma: over a session on `rdma_provider`). (The rdma exchange blocks the
/// calling thread: it is the only task of the runtime it runs on.)
pub async fn endpoints(target: &Target, rdma_provider: &RdmaProvider) -> Result<Vec<String>, String> {
    match target.protocol {
        Protocol::Resp => Ok(vec![target.address()]),
        Protocol::Native => native::fetch_topology(target).await,
        Protocol::Rdma => rdma::fetch_topology(target, rdma_provider),
    }
}

/// Opens one socket (TCP_NODELAY) to `address`, within [`CONNECT_TIMEOUT`].
pub async fn connect(address: &str) -> Result<TcpStream, String> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address))
        .await
        .map_err(|_| format!("cannot connect to {address}: timed out after {CONNECT_TIMEOUT:?}"))?
        .map_err(|e| format!("cannot connect to {address}: {e}"))?;
    stream
        .set_nodelay(true)
        .map_err(|e| format!("cannot set TCP_NODELAY on {address}: {e}"))?;
    Ok(stream)
}

/// Opens one blocking socket (TCP_NODELAY) to `address`, within [`CONNECT_TIMEOUT`] per
/// address it resolves to (the blocking load loop's sockets).
pub fn connect_blocking(address: &str) -> Result<std::net::TcpStream, String> {
    let addresses = address
        .to_socket_addrs()
        .map_err(|e| format!("cannot connect to {address}: {e}"))?;
    let mut failure = format!("cannot connect to {address}: it resolves to no address");
    for resolved in addresses {
        match std::net::TcpStream::connect_timeout(&resolved, CONNECT_TIMEOUT) {
            Ok(stream) => {
                stream
                    .set_nodelay(true)
                    .map_err(|e| format!("cannot set TCP_NODELAY on {address}: {e}"))?;
                return Ok(stream);
            }
            Err(e) => failure = format!("cannot connect to {address}: {e}"),
        }
    }
    Err(failure)
}

/// The operations the benchmark sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Get,
    Set,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Get => "GET",
            Op::Set => "SET",
        }
    }
}

/// A decoded reply, before it is matched to its request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// A value (RESP bulk string, native VALUE).
    Value,
    /// No value (RESP null bulk, native NOT_FOUND).
    Nil,
    /// Success without a value (RESP `+OK` or another simple string, native OK).
    Done,
    /// The server refused the request (RESP `-ERR ...`, native ERROR).
    Error(String),
    /// A well-formed reply of a kind GET and SET never get (named for the error message).
    Unexpected(&'static str),
}

impl Reply {
    /// The reply's kind, for error messages.
    pub fn describe(&self) -> String {
        match self {
            Reply::Value => "a value".to_string(),
            Reply::Nil => "a nil reply".to_string(),
            Reply::Done => "a status reply".to_string(),
            Reply::Error(message) => format!("error {message:?}"),
            Reply::Unexpected(kind) => format!("a reply of type {kind}"),
        }
    }
}

/// What a reply means for the request it answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// GET found its key.
    Hit,
    /// GET did not find its key.
    Miss,
    /// SET stored its value.
    Stored,
    /// An error reply.
    ServerError(String),
}

/// Interprets `reply` as the answer to `op`; `Err` is a protocol error (a reply that cannot
/// answer that request).
pub fn classify(op: Op, reply: Reply) -> Result<Outcome, String> {
    match (op, reply) {
        (_, Reply::Error(message)) => Ok(Outcome::ServerError(message)),
        (Op::Get, Reply::Value) => Ok(Outcome::Hit),
        (Op::Get, Reply::Nil) => Ok(Outcome::Miss),
        (Op::Set, Reply::Done) => Ok(Outcome::Stored),
        (op, reply) => Err(format!("unexpected reply to {}: {}", op.name(), reply.describe())),
    }
}

/// A socket's codec: encodes requests into its output buffer and decodes replies from its input
/// buffer. One per socket.
pub enum Codec {
    Resp(resp::RespCodec),
    Native(native::NativeCodec),
}

impl Codec {
    pub fn new(protocol: Protocol) -> Codec {
        match protocol {
            Protocol::Resp => Codec::Resp(resp::RespCodec),
            Protocol::Native | Protocol::Rdma => Codec::Native(native::NativeCodec::default()),
        }
    }

    /// Appends one request. `value` is only used by SET; `id` only by the native protocol.
    pub fn encode(&mut self, op: Op, id: u64, key: &[u8], value: &Bytes, out: &mut BytesMut) {
        match self {
            Codec::Resp(c) => c.encode(op, key, value, out),
            Codec::Native(c) => c.encode(op, id, key, value, out),
        }
    }

    /// Takes the next complete reply off the front of `buf`, with the request id it carries
    /// (native) or `None` (RESP: replies come in request order). `Ok(None)`: more bytes needed.
    /// `Err`: the stream cannot be read on; the connection must close.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<(Option<u64>, Reply)>, String> {
        match self {
            Codec::Resp(_) => Ok(resp::decode_reply(buf)?.map(|reply| (None, reply))),
            Codec::Native(c) => Ok(c.decode(buf)?.map(|(id, reply)| (Some(id), reply))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = Target::parse("resp://127.0.0.1:6379").unwrap();
        assert_eq!(
            (t.protocol, t.host.as_str(), t.port),
            (Protocol::Resp, "127.0.0.1", 6379)
        );
        assert_eq!(t.to_string(), "resp://127.0.0.1:6379");
        let t = Target::parse("native://[::1]:7000").unwrap();
        assert_eq!((t.protocol, t.host.as_str(), t.port), (Protocol::Native, "::1", 7000));
        assert_eq!(t.address(), "[::1]:7000");
        let t = Target::parse("rdma://10.0.0.1:7680").unwrap();
        assert_eq!(
            (t.protocol, t.host.as_str(), t.port),
            (Protocol::Rdma, "10.0.0.1", 7680)
        );
        assert_eq!(t.to_string(), "rdma://10.0.0.1:7680");
        for bad in [
            "127.0.0.1:6379",
            "http://h:1",
            "resp://h",
            "resp://:1",
            "resp://h:0",
            "resp://h:99999",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn classification() {
        assert_eq!(classify(Op::Get, Reply::Value), Ok(Outcome::Hit));
        assert_eq!(classify(Op::Get, Reply::Nil), Ok(Outcome::Miss));
        assert_eq!(classify(Op::Set, Reply::Done), Ok(Outcome::Stored));
        assert_eq!(
            classify(Op::Set, Reply::Error("ERR x".into())),
            Ok(Outcome::ServerError("ERR x".into()))
        );
        assert!(classify(Op::Set, Reply::Value).is_err());
        assert!(classify(Op::Get, Reply::Unexpected("integer")).is_err());
    }
}
