//! The sans-IO state of one client connection: request ids, the output buffer, the outstanding
//! requests and the decoding of their responses. No sockets and no clocks: the drivers
//! ([`blocking`](super::blocking), `tokio`) move the bytes and pass the time in.
//!
//! ```text
//!   send_*()  ──▶ out ──take_output()──▶ socket ──▶ server
//!                                                      │
//!   poll_completion() ◀── input ◀── socket ◀───────────┘
//! ```
//!
//! Ids come from a counter starting at 1 and never repeat on a connection, so a late response can
//! only match the request it answers. A connection that failed (a fatal ERROR with request id 0,
//! undecodable bytes, a response to no outstanding request, an I/O error or a timeout reported by
//! the driver) stays failed: [`Connection::fail`] hands every outstanding request back with the
//! error it gets, and the driver opens a new connection for the next request.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use bytes::BytesMut;

use super::error::ClientError;
use crate::native::{BatchEncoder, FrameDecoder, Limits, Opcode, RequestRef, Response};

/// Requests whose bytes may be unanswered on a connection before the driver must read: while at
/// most this much is outstanding, it fits in the kernel's socket buffers (our send buffer and the
/// server's receive buffer), so a write can never block on a server that is itself blocked
/// writing responses we are not reading. A single larger request is sent only on an idle
/// connection.
pub const MAX_UNANSWERED_BYTES: usize = 64 * 1024;

/// Whether an operation only reads: reads are retried after a transport failure or a timeout.
pub fn is_read(opcode: Opcode) -> bool {
    matches!(
        opcode,
        Opcode::Ping | Opcode::Get | Opcode::MGet | Opcode::Ttl | Opcode::Exists | Opcode::Topology
    )
}

struct Pending<T> {
    opcode: Opcode,
    frame_len: usize,
    token: T,
}

/// A request answered: its id, its opcode, the caller's token and the response (which may be an
/// ERROR response; the connection stays usable).
#[derive(Debug)]
pub struct Completion<T> {
    pub request_id: u64,
    pub opcode: Opcode,
    pub token: T,
    pub response: Response,
}

/// One connection's protocol state. `T` is the driver's token for a request (an index, a
/// oneshot sender), handed back with its completion or failure.
pub struct Connection<T> {
    crc: bool,
    next_id: u64,
    /// Requests with an id at or above this one are still in `out`: provably not sent.
    first_unsent: u64,
    out: BytesMut,
    input: BytesMut,
    decoder: FrameDecoder,
    pending: HashMap<u64, Pending<T>>,
    /// Deadlines in send order (so in deadline order, the timeout being fixed); entries of
    /// requests already answered are skipped lazily.
    deadlines: VecDeque<(Instant, u64)>,
    unanswered_bytes: usize,
    failed: Option<ClientError>,
}

impl<T> Connection<T> {
    pub fn new(crc: bool, limits: Limits) -> Self {
        Connection {
            crc,
            next_id: 1,
            first_unsent: 1,
            out: BytesMut::new(),
            input: BytesMut::new(),
            decoder: FrameDecoder::new(limits),
            pending: HashMap::new(),
            deadlines: VecDeque::new(),
            unanswered_bytes: 0,
            failed: None,
        }
    }

    fn register(&mut self, opcode: Opcode, frame_len: usize, token: T, deadline: Instant) -> u64 {
        debug_assert!(self.failed.is_none(), "request sent on a failed connection");
        let id = self.next_id;
        self.next_id += 1;
        debug_assert!(id != 0 && !self.pending.contains_key(&id));
        self.pending.insert(
            id,
            Pending {
                opcode,
                frame_len,
                token,
            },
        );
        self.deadlines.push_back((deadline, id));
        self.unanswered_bytes += frame_len;
        id
    }

    /// Encodes a request without a batch; returns its request id.
    pub fn send(&mut self, request: RequestRef<'_>, token: T, deadline: Instant) -> u64 {
        let len = request.encode(self.next_id, self.crc, &mut self.out);
        self.register(request.opcode(), len, token, deadline)
    }

    /// Encodes an MGET of `keys` (one shard's); returns its request id.
    pub fn send_mget<'k>(&mut self, keys: impl IntoIterator<Item = &'k [u8]>, token: T, deadline: Instant) -> u64 {
        let start = self.out.len();
        let mut batch = BatchEncoder::begin(&mut self.out, Opcode::MGet, self.next_id, self.crc);
        for key in keys {
            batch.key(key);
        }
        batch.finish();
        let len = self.out.len() - start;
        self.register(Opcode::MGet, len, token, deadline)
    }

    /// Encodes an MSET of `pairs` (one shard's); returns its request id.
    pub fn send_mset<'k>(
        &mut self,
        pairs: impl IntoIterator<Item = (&'k [u8], &'k [u8])>,
        token: T,
        deadline: Instant,
    ) -> u64 {
        let start = self.out.len();
        let mut batch = BatchEncoder::begin(&mut self.out, Opcode::MSet, self.next_id, self.crc);
        for (key, value) in pairs {
            batch.pair(key, value);
        }
        batch.finish();
        let len = self.out.len() - start;
        self.register(Opcode::MSet, len, token, deadline)
    }

    /// Bytes encoded and not yet taken by [`Connection::take_output`].
    pub fn output_len(&self) -> usize {
        self.out.len()
    }

    /// Takes the encoded bytes for the driver to write. From here on their requests count as
    /// possibly sent: if the connection fails, a write among them has an unknown outcome.
    pub fn take_output(&mut self) -> BytesMut {
        self.first_unsent = self.next_id;
        self.out.split()
    }

    /// Bytes of the requests not answered yet, encoded or sent.
    pub fn unanswered_bytes(&self) -> usize {
        self.unanswered_bytes
    }

    /// Requests not answered yet.
    pub fn outstanding(&self) -> usize {
        self.pending.len()
    }

    /// True when the requests still to be written must wait for responses first (see
    /// [`MAX_UNANSWERED_BYTES`]).
    pub fn must_read_before_write(&self) -> bool {
        let sent = self.unanswered_bytes - self.out.len();
        sent > 0 && self.unanswered_bytes > MAX_UNANSWERED_BYTES
    }

    /// The earliest deadline of an outstanding request.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(&(deadline, id)) = self.deadlines.front() {
            if self.pending.contains_key(&id) {
                return Some(deadline);
            }
            self.deadlines.pop_front();
        }
        None
    }

    /// True when an outstanding request's deadline has passed at `now`.
    pub fn timed_out(&mut self, now: Instant) -> bool {
        self.next_deadline().is_some_and(|deadline| deadline <= now)
    }

    /// The receive buffer: the driver appends what it reads here.
    pub fn input(&mut self) -> &mut BytesMut {
        &mut self.input
    }

    /// Takes the receive buffer (for a reader that fills it without holding the connection);
    /// [`Connection::restore_input`] puts it back.
    pub fn take_input(&mut self) -> BytesMut {
        std::mem::take(&mut self.input)
    }

    pub fn restore_input(&mut self, input: BytesMut) {
        debug_assert!(self.input.is_empty());
        self.input = input;
    }

    pub fn is_failed(&self) -> bool {
        self.failed.is_some()
    }

    /// Why the connection failed.
    pub fn failure(&self) -> Option<&ClientError> {
        self.failed.as_ref()
    }

    /// Decodes every response already received into `events`, each with its token; if the
    /// connection fails meanwhile, its outstanding requests follow with their errors.
    pub fn drain_into(&mut self, events: &mut Vec<(T, Result<Response, ClientError>)>) {
        loop {
            match self.poll_completion() {
                Ok(Some(completion)) => events.push((completion.token, Ok(completion.response))),
                Ok(None) => return,
                Err(failed) => {
                    events.extend(failed.into_iter().map(|(token, err)| (token, Err(err))));
                    return;
                }
            }
        }
    }

    /// Decodes the next response out of the receive buffer. `Ok(None)`: more bytes are needed.
    /// `Err`: the connection failed; [`Connection::fail`] has already been called, and its
    /// outstanding requests are returned for the driver to report.
    #[allow(clippy::type_complexity)]
    pub fn poll_completion(&mut self) -> Result<Option<Completion<T>>, Vec<(T, ClientError)>> {
        if self.failed.is_some() {
            return Err(Vec::new());
        }
        let frame = match self.decoder.decode(&mut self.input) {
            Ok(Some(frame)) => frame,
            Ok(None) => return Ok(None),
            Err(err) => return Err(self.fail(ClientError::Protocol(err))),
        };
        let request_id = frame.request_id();
        let response = match Response::decode(frame, self.decoder.limits()) {
            Ok(response) => response,
            // A per-frame error in a response: the server cannot be trusted on this stream.
            Err(err) => return Err(self.fail(ClientError::Protocol(err))),
        };
        if request_id == 0 {
            let err = match response {
                Response::Error { code, message } => ClientError::Server {
                    code,
                    message: String::from_utf8_lossy(&message).into_owned(),
                },
                other => ClientError::UnexpectedResponse {
                    request: Opcode::Ping,
                    response: other.opcode(),
                },
            };
            return Err(self.fail(err));
        }
        let Some(pending) = self.pending.remove(&request_id) else {
            let err = ClientError::Disconnected {
                outcome_unknown: false,
                reason: format!("response to request {request_id}, which is not outstanding"),
            };
            return Err(self.fail(err));
        };
        self.unanswered_bytes -= pending.frame_len;
        Ok(Some(Completion {
            request_id,
            opcode: pending.opcode,
            token: pending.token,
            response,
        }))
    }

    /// Fails the connection with `cause` and hands back every outstanding request with its error:
    /// a request still in the output buffer was provably not sent (`Disconnected`, outcome
    /// known); a read gets `cause` itself (it may be retried); a write that may have been sent
    /// gets an error with `outcome_unknown: true`.
    pub fn fail(&mut self, cause: ClientError) -> Vec<(T, ClientError)> {
        if self.failed.is_none() {
            self.failed = Some(cause.clone());
        }
        let first_unsent = self.first_unsent;
        let mut failed: Vec<(u64, Pending<T>)> = self.pending.drain().collect();
        failed.sort_by_key(|(id, _)| *id);
        self.deadlines.clear();
        self.unanswered_bytes = 0;
        self.out.clear();
        failed
            .into_iter()
            .map(|(id, pending)| {
                let sent = id < first_unsent;
                let err = if !sent {
                    ClientError::Disconnected {
                        outcome_unknown: false,
                        reason: format!("not sent: {cause}"),
                    }
                } else if is_read(pending.opcode) {
                    match &cause {
                        ClientError::Timeout { .. } => ClientError::Timeout { outcome_unknown: false },
                        other => other.clone(),
                    }
                } else if matches!(cause, ClientError::Timeout { .. }) {
                    ClientError::Timeout { outcome_unknown: true }
                } else {
                    ClientError::Disconnected {
                        outcome_unknown: true,
                        reason: cause.to_string(),
                    }
                };
                (pending.token, err)
            })
            .collect()
    }
}
