//! corekv's native protocol for the benchmark, over `corekv_net::native`'s sans-IO codec:
//! requests are [`Request::encode`]d, replies split by a [`FrameDecoder`] and read with
//! [`Response::decode`]. Replies carry their request's id and may come in any order.
//!
//! Before the run, [`fetch_topology`] asks the seed port for TOPOLOGY (PROTOCOL.md, "Serving:
//! one port per shard"); each benchmark connection then opens one socket per shard and the load
//! loop sends every request to its key's shard (`corekv_net::routing::key_shard`).

use bytes::{Bytes, BytesMut};
use corekv_net::native::{Frame, FrameDecoder, Limits, Request, Response, SetCondition, HASH_COREKV_V1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{connect, Op, Reply, Target, CONNECT_TIMEOUT};

/// Encodes requests and decodes responses for one socket.
#[derive(Debug, Default)]
pub struct NativeCodec {
    decoder: FrameDecoder,
    /// Backing store of the request keys: `Request` holds `Bytes`, so each key is copied here and
    /// split off; the bytes are reclaimed once the encoded request dropped them, so steady state
    /// allocates nothing.
    scratch: BytesMut,
}

impl NativeCodec {
    pub fn encode(&mut self, op: Op, id: u64, key: &[u8], value: &Bytes, out: &mut BytesMut) {
        if self.scratch.capacity() < key.len() {
            self.scratch.reserve(key.len().max(16 * 1024));
        }
        self.scratch.extend_from_slice(key);
        let key = self.scratch.split().freeze();
        let request = match op {
            Op::Get => Request::Get { key },
            Op::Set => Request::Set {
                key,
                value: value.clone(),
                ttl_ms: 0,
                condition: SetCondition::Always,
            },
        };
        request.encode(id, false, out);
    }

    /// The next response in `buf`, with its request id.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<(u64, Reply)>, String> {
        let Some(frame) = self.decoder.decode(buf).map_err(|e| format!("bad native frame: {e}"))? else {
            return Ok(None);
        };
        let id = frame.request_id();
        let limits = *self.decoder.limits();
        let response = Response::decode(frame, &limits).map_err(|e| format!("bad native response: {e}"))?;
        let reply = match response {
            Response::Value(_) => Reply::Value,
            Response::NotFound => Reply::Nil,
            Response::Ok => Reply::Done,
            Response::Error { code, message } if id == 0 => {
                return Err(format!(
                    "server closed the stream (error {}): {}",
                    code.0,
                    String::from_utf8_lossy(&message)
                ))
            }
            Response::Error { code, message } => {
                Reply::Error(format!("error {}: {}", code.0, String::from_utf8_lossy(&message)))
            }
            Response::Values(_) => Reply::Unexpected("batch of values"),
            Response::Integer(_) => Reply::Unexpected("integer"),
            Response::Topology(_) => Reply::Unexpected("topology"),
        };
        Ok(Some((id, reply)))
    }
}

/// Asks `target` for the node's topology: each shard's endpoint, shard 0 first.
pub async fn fetch_topology(target: &Target) -> Result<Vec<String>, String> {
    let address = target.address();
    let mut stream = connect(&address).await?;
    let mut out = BytesMut::new();
    Request::Topology.encode(1, false, &mut out);
    let exchange = async {
        stream.write_all(&out).await?;
        let mut decoder = FrameDecoder::new(Limits::default());
        let mut buf = BytesMut::with_capacity(4096);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => return Ok(Ok(frame)),
                Ok(None) => {}
                Err(e) => return Ok(Err(format!("bad native frame: {e}"))),
            }
            if stream.read_buf(&mut buf).await? == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
            }
        }
    };
    let frame = tokio::time::timeout(CONNECT_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("{target}: no TOPOLOGY reply within {CONNECT_TIMEOUT:?}"))?
        .map_err(|e| format!("{target}: TOPOLOGY failed: {e} (is this a native port?)"))?
        .map_err(|e| format!("{target}: {e} (is this a native port?)"))?;
    topology_endpoints(target, frame)
}

/// The shard endpoints of `frame`, the reply to TOPOLOGY (over TCP or RDMA), shard 0 first.
pub fn topology_endpoints(target: &Target, frame: Frame) -> Result<Vec<String>, String> {
    match Response::decode(frame, &Limits::default()) {
        Ok(Response::Topology(topology)) => {
            if topology.hash_id() != HASH_COREKV_V1 {
                return Err(format!("{target}: unknown routing hash id {}", topology.hash_id()));
            }
            let endpoints: Vec<String> = topology.endpoints().map(str::to_string).collect();
            if endpoints.len() != topology.shard_count() as usize || endpoints.is_empty() {
                return Err(format!("{target}: malformed topology"));
            }
            Ok(endpoints)
        }
        Ok(Response::Error { code, message }) => Err(format!(
            "{target}: TOPOLOGY refused (error {}): {}",
            code.0,
            String::from_utf8_lossy(&message)
        )),
        Ok(other) => Err(format!("{target}: unexpected reply to TOPOLOGY: {other:?}")),
        Err(e) => Err(format!("{target}: bad TOPOLOGY reply: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corekv_net::native::ErrorCode;

    fn decode_request(bytes: &mut BytesMut) -> (u64, Request) {
        let frame: Frame = FrameDecoder::default().decode(bytes).unwrap().unwrap();
        let id = frame.request_id();
        (id, Request::decode(frame, &Limits::default()).unwrap())
    }

    #[test]
    fn round_trip() {
        let mut codec = NativeCodec::default();
        let mut out = BytesMut::new();
        codec.encode(Op::Set, 7, b"k", &Bytes::from_static(b"v"), &mut out);
        codec.encode(Op::Get, 8, b"k", &Bytes::new(), &mut out);
        let (id, request) = decode_request(&mut out);
        assert_eq!(id, 7);
        assert!(matches!(request, Request::Set { ref key, ref value, .. } if &key[..] == b"k" && &value[..] == b"v"));
        let (id, request) = decode_request(&mut out);
        assert_eq!(
            (id, request),
            (
                8,
                Request::Get {
                    key: Bytes::from_static(b"k")
                }
            )
        );

        let mut replies = BytesMut::new();
        Response::Ok.encode(7, false, &mut replies);
        Response::NotFound.encode(9, true, &mut replies);
        Response::Error {
            code: ErrorCode::WRONG_SHARD,
            message: Bytes::from_static(b"key belongs to shard 1"),
        }
        .encode(8, false, &mut replies);
        assert_eq!(codec.decode(&mut replies).unwrap(), Some((7, Reply::Done)));
        assert_eq!(codec.decode(&mut replies).unwrap(), Some((9, Reply::Nil)));
        assert_eq!(
            codec.decode(&mut replies).unwrap(),
            Some((8, Reply::Error("error 32: key belongs to shard 1".into())))
        );
        assert_eq!(codec.decode(&mut replies).unwrap(), None);
    }
}
