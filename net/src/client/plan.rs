//! The sans-IO execution plan of a call or a pipeline: operations are routed into frames (one per
//! key, or one batch frame per shard for MGET and MSET), responses are turned into typed
//! [`Reply`]s and reassembled in the caller's order, and failures are retried by the policy of
//! [`retry_policy`]. Both drivers run the same loop:
//!
//! ```text
//! loop {
//!     frames = plan.frames(&router)          // what is left to do, routed
//!     send them all, plan.complete(frame, response or error) for each
//!     match plan.next_round(max_retries) {   // finalize, or decide to retry
//!         None => break,
//!         Some(refresh) => wait the backoff (and fetch the topology again if refresh),
//!     }
//! }
//! ```
//!
//! A retry only resends what is not done: an MGET whose shard 1 frame failed re-reads only the
//! keys of that frame.

use std::time::Instant;

use bytes::Bytes;

use super::config::{Reply, Ttl};
use super::connection::Connection;
use super::error::{retry_policy, ClientError, Retry};
use super::router::Router;
use crate::native::{Opcode, RequestRef, Response, SetCondition};

/// One operation, keys and values as `K` (borrowed slices for a call, `Bytes` for a pipeline).
#[derive(Clone, Debug)]
pub(crate) enum Op<K> {
    Ping,
    Get(K),
    Set {
        key: K,
        value: K,
        ttl_ms: u64,
        condition: SetCondition,
    },
    Del(K),
    Cas {
        key: K,
        expected: K,
        value: K,
        ttl_ms: u64,
    },
    Incr {
        key: K,
        delta: i64,
    },
    Expire {
        key: K,
        ttl_ms: u64,
    },
    Ttl(K),
    Exists(K),
    MGet(Vec<K>),
    MSet(Vec<(K, K)>),
}

impl<K: AsRef<[u8]>> Op<K> {
    pub(crate) fn opcode(&self) -> Opcode {
        match self {
            Op::Ping => Opcode::Ping,
            Op::Get(_) => Opcode::Get,
            Op::Set { .. } => Opcode::Set,
            Op::Del(_) => Opcode::Del,
            Op::Cas { .. } => Opcode::Cas,
            Op::Incr { .. } => Opcode::Incr,
            Op::Expire { .. } => Opcode::Expire,
            Op::Ttl(_) => Opcode::Ttl,
            Op::Exists(_) => Opcode::Exists,
            Op::MGet(_) => Opcode::MGet,
            Op::MSet(_) => Opcode::MSet,
        }
    }

    /// Parts that complete separately: a batch's keys, or the single request.
    fn parts(&self) -> usize {
        match self {
            Op::MGet(keys) => keys.len(),
            Op::MSet(pairs) => pairs.len(),
            _ => 1,
        }
    }

    /// The key of a single-key operation.
    fn key(&self) -> Option<&[u8]> {
        match self {
            Op::Ping | Op::MGet(_) | Op::MSet(_) => None,
            Op::Get(key)
            | Op::Del(key)
            | Op::Ttl(key)
            | Op::Exists(key)
            | Op::Set { key, .. }
            | Op::Cas { key, .. }
            | Op::Incr { key, .. }
            | Op::Expire { key, .. } => Some(key.as_ref()),
        }
    }
}

/// One frame to send: operation `op`'s parts `parts` (batch key indices; `[0]` for a single
/// request), to shard `shard`.
#[derive(Clone, Debug)]
pub(crate) struct FrameSpec {
    pub op: usize,
    pub shard: u32,
    pub parts: Vec<u32>,
}

#[derive(Default)]
struct OpState {
    done: Vec<bool>,
    left: usize,
    values: Vec<Option<Bytes>>,
    reply: Option<Reply>,
    error: Option<ClientError>,
    result: Option<Result<Reply, ClientError>>,
}

pub(crate) struct Plan<K> {
    ops: Vec<Op<K>>,
    states: Vec<OpState>,
    retries: u32,
}

impl<K: AsRef<[u8]>> Plan<K> {
    pub(crate) fn new(ops: Vec<Op<K>>) -> Self {
        let states = ops
            .iter()
            .map(|op| {
                let parts = op.parts();
                OpState {
                    done: vec![false; parts],
                    left: parts,
                    values: if matches!(op, Op::MGet(_)) {
                        vec![None; parts]
                    } else {
                        Vec::new()
                    },
                    ..OpState::default()
                }
            })
            .collect();
        Plan {
            ops,
            states,
            retries: 0,
        }
    }

    /// The opcode `frame` is sent with.
    #[cfg(feature = "tokio")]
    pub(crate) fn opcode_of(&self, frame: &FrameSpec) -> Opcode {
        self.ops[frame.op].opcode()
    }

    /// Rounds retried so far.
    pub(crate) fn retries(&self) -> u32 {
        self.retries
    }

    /// The frames still to send, in submission order, routed with `router`.
    pub(crate) fn frames(&self, router: &Router) -> Vec<FrameSpec> {
        let mut frames = Vec::with_capacity(self.ops.len());
        for (index, (op, state)) in self.ops.iter().zip(&self.states).enumerate() {
            if state.result.is_some() || state.left == 0 {
                continue;
            }
            let todo = state
                .done
                .iter()
                .enumerate()
                .filter(|(_, done)| !**done)
                .map(|(i, _)| i as u32);
            match op {
                Op::MGet(keys) => {
                    let groups = router.group(todo.map(|i| (i, keys[i as usize].as_ref())));
                    frames.extend(groups.into_iter().map(|(shard, parts)| FrameSpec {
                        op: index,
                        shard,
                        parts,
                    }));
                }
                Op::MSet(pairs) => {
                    let groups = router.group(todo.map(|i| (i, pairs[i as usize].0.as_ref())));
                    frames.extend(groups.into_iter().map(|(shard, parts)| FrameSpec {
                        op: index,
                        shard,
                        parts,
                    }));
                }
                _ => frames.push(FrameSpec {
                    op: index,
                    shard: op.key().map_or(0, |key| router.shard_of(key)),
                    parts: vec![0],
                }),
            }
        }
        frames
    }

    /// Encodes `frame` on `conn`; returns its request id.
    pub(crate) fn encode<T>(&self, frame: &FrameSpec, conn: &mut Connection<T>, token: T, deadline: Instant) -> u64 {
        let request = match &self.ops[frame.op] {
            Op::MGet(keys) => {
                let keys = frame.parts.iter().map(|&i| keys[i as usize].as_ref());
                return conn.send_mget(keys, token, deadline);
            }
            Op::MSet(pairs) => {
                let pairs = frame.parts.iter().map(|&i| {
                    let (key, value) = &pairs[i as usize];
                    (key.as_ref(), value.as_ref())
                });
                return conn.send_mset(pairs, token, deadline);
            }
            Op::Ping => RequestRef::Ping,
            Op::Get(key) => RequestRef::Get { key: key.as_ref() },
            Op::Del(key) => RequestRef::Del { key: key.as_ref() },
            Op::Ttl(key) => RequestRef::Ttl { key: key.as_ref() },
            Op::Exists(key) => RequestRef::Exists { key: key.as_ref() },
            Op::Set {
                key,
                value,
                ttl_ms,
                condition,
            } => RequestRef::Set {
                key: key.as_ref(),
                value: value.as_ref(),
                ttl_ms: *ttl_ms,
                condition: *condition,
            },
            Op::Cas {
                key,
                expected,
                value,
                ttl_ms,
            } => RequestRef::Cas {
                key: key.as_ref(),
                expected: expected.as_ref(),
                value: value.as_ref(),
                ttl_ms: *ttl_ms,
            },
            Op::Incr { key, delta } => RequestRef::Incr {
                key: key.as_ref(),
                delta: *delta,
            },
            Op::Expire { key, ttl_ms } => RequestRef::Expire {
                key: key.as_ref(),
                ttl_ms: *ttl_ms,
            },
        };
        conn.send(request, token, deadline)
    }

    /// Records the outcome of one frame.
    pub(crate) fn complete(&mut self, frame: &FrameSpec, result: Result<Response, ClientError>) {
        let opcode = self.ops[frame.op].opcode();
        let state = &mut self.states[frame.op];
        let outcome = result.and_then(|response| match (opcode, response) {
            (Opcode::MGet, Response::Values(batch)) if batch.len() == frame.parts.len() => {
                for (&part, entry) in frame.parts.iter().zip(batch.iter()) {
                    state.values[part as usize] = entry.value;
                }
                Ok(None)
            }
            (Opcode::MGet, Response::Values(_)) => Err(ClientError::Protocol(
                crate::native::FrameError::BatchMismatch("MGET answered with a different number of values"),
            )),
            (Opcode::MSet, Response::Ok) => Ok(None),
            (_, response) => typed(opcode, response).map(Some),
        });
        match outcome {
            Ok(reply) => {
                for &part in &frame.parts {
                    if let Some(done) = state.done.get_mut(part as usize) {
                        if !*done {
                            *done = true;
                            state.left -= 1;
                        }
                    }
                }
                if reply.is_some() {
                    state.reply = reply;
                }
            }
            Err(err) => {
                // Of several failed frames, report the one that forbids a retry.
                let keep_old = state.error.as_ref().is_some_and(|old| retry_policy(old) == Retry::No);
                if !keep_old {
                    state.error = Some(err);
                }
            }
        }
    }

    /// Fails every unfinished operation with `err` (nothing could be sent this round).
    pub(crate) fn fail_round(&mut self, err: &ClientError) {
        for state in &mut self.states {
            if state.result.is_none() && state.error.is_none() {
                state.error = Some(err.clone());
            }
        }
    }

    /// Ends a round: finalizes what succeeded or may not be retried. `None`: all done.
    /// `Some(refresh)`: retry the rest after the backoff, fetching the topology first if `refresh`.
    pub(crate) fn next_round(&mut self, max_retries: u32) -> Option<bool> {
        let mut retry = false;
        let mut refresh = false;
        for (op, state) in self.ops.iter().zip(&mut self.states) {
            if state.result.is_some() {
                continue;
            }
            if let Some(err) = state.error.take() {
                let policy = retry_policy(&err);
                if policy == Retry::No || self.retries >= max_retries {
                    state.result = Some(Err(err));
                } else {
                    retry = true;
                    refresh |= policy == Retry::AfterRefresh;
                }
            } else if state.left == 0 {
                let reply = match op {
                    Op::MGet(_) => Some(Reply::Values(std::mem::take(&mut state.values))),
                    Op::MSet(_) => Some(Reply::Done),
                    _ => state.reply.take(),
                };
                state.result = Some(reply.ok_or_else(|| ClientError::Disconnected {
                    outcome_unknown: false,
                    reason: "no reply recorded (client bug)".into(),
                }));
            } else {
                // A frame the driver never reported: treat it as not sent.
                retry = true;
            }
        }
        if retry {
            self.retries += 1;
            Some(refresh)
        } else {
            None
        }
    }

    /// The results, in submission order.
    pub(crate) fn into_results(self) -> Vec<Result<Reply, ClientError>> {
        self.states
            .into_iter()
            .map(|state| {
                state.result.unwrap_or_else(|| {
                    Err(ClientError::Disconnected {
                        outcome_unknown: false,
                        reason: "operation not finished (client bug)".into(),
                    })
                })
            })
            .collect()
    }
}

/// The typed reply of a single-request operation's response (or its error).
fn typed(request: Opcode, response: Response) -> Result<Reply, ClientError> {
    let unexpected = |response: &Response| ClientError::UnexpectedResponse {
        request,
        response: response.opcode(),
    };
    Ok(match (request, response) {
        (_, Response::Error { code, message }) => {
            return Err(ClientError::Server {
                code,
                message: String::from_utf8_lossy(&message).into_owned(),
            })
        }
        (Opcode::Ping, Response::Ok) => Reply::Done,
        (Opcode::Get, Response::Value(value)) => Reply::Value(Some(value)),
        (Opcode::Get, Response::NotFound) => Reply::Value(None),
        (Opcode::Set, Response::Ok) => Reply::Bool(true),
        (Opcode::Set, Response::NotFound) => Reply::Bool(false),
        (Opcode::Del | Opcode::Cas | Opcode::Expire | Opcode::Exists, Response::Integer(n)) => Reply::Bool(n > 0),
        (Opcode::Incr, Response::Integer(n)) => Reply::Integer(n),
        (Opcode::Ttl, Response::Integer(-2)) => Reply::Ttl(Ttl::Missing),
        (Opcode::Ttl, Response::Integer(-1)) => Reply::Ttl(Ttl::Persistent),
        (Opcode::Ttl, Response::Integer(ms)) if ms >= 0 => {
            Reply::Ttl(Ttl::Expires(std::time::Duration::from_millis(ms as u64)))
        }
        (_, response) => return Err(unexpected(&response)),
    })
}
