//! The client library of corekv's native protocol (`net/PROTOCOL.md`).
//!
//! A client connects to any shard's port of a node (the *seed*), asks for the TOPOLOGY, and then
//! sends each request straight to the shard that owns its key, over one connection per shard,
//! routing keys with [`crate::routing::key_shard`]. Keys and values are taken as
//! `impl AsRef<[u8]>` and encoded straight from the caller's bytes; values come back as `Bytes`
//! slices of the connection's receive buffer (no copy). MGET and MSET travel as one batch frame per
//! shard, and MGET's values come back in the caller's key order.
//!
//! - [`blocking::Client`]: std sockets, methods take `&mut self`; pipelining with [`Pipeline`].
//! - `tokio::Client` (cargo feature `tokio`): cloneable, `Send + Sync`, methods take `&self`;
//!   concurrent calls pipeline over each shard's connection.
//! - `rdma::Client` (cargo feature `rdma`): the blocking client over RDMA sessions
//!   (`rdma://host:port` seeds), the same frames moved through registered memory; the soft
//!   provider by default, libibverbs with `RdmaOptions::provider` (cargo feature `rdma-verbs`).
//! - The sans-IO parts both are built on: [`Connection`] (request ids, encoding, matching
//!   responses by id, out of order) and [`Router`] (topology, key → shard, splitting batches).
//!
//! ```no_run
//! use std::time::Duration;
//! use corekv_net::client::{blocking::Client, ClientConfig, SetOptions, Ttl};
//!
//! # fn main() -> Result<(), corekv_net::client::ClientError> {
//! let mut client = Client::connect("127.0.0.1:7380", ClientConfig::default())?;
//! client.set("user:1", "ada", SetOptions::default())?;
//! assert_eq!(client.get("user:1")?.as_deref(), Some(&b"ada"[..]));
//! let values = client.mget(&["user:1", "user:2"])?; // [Some("ada"), None]
//! assert_eq!(values.len(), 2);
//! assert_eq!(client.incr("hits", 1)?, 1);
//! client.expire("user:1", Some(Duration::from_secs(60)))?;
//! assert!(matches!(client.ttl("user:1")?, Ttl::Expires(_)));
//! # Ok(())
//! # }
//! ```
//!
//! # Connections
//!
//! `connect` fetches the topology from the seed at once (so a wrong address fails there); the
//! connection to each shard is opened lazily, on its first request. After a connection fails
//! (reset, closed, timed out, or undecodable bytes) the client drops it, and the next request
//! fetches the topology from the seed again and reconnects: a node restart costs callers nothing
//! more than a reconnection. The blocking client also checks, before it sends on an idle
//! connection, that the server has not closed it meanwhile, so a write after a restart goes to a
//! fresh connection instead of failing with an unknown outcome.
//!
//! # Timeouts
//!
//! Every request has [`ClientConfig::request_timeout`], counted from when it is handed to its
//! connection. A request not answered by then fails with [`ClientError::Timeout`], and its whole
//! connection is dropped: a late response can never reach another request (ids are never reused
//! on a connection either), and the other requests in flight on that connection fail as in a
//! disconnection.
//!
//! # Retries
//!
//! A failed operation is retried, up to [`ClientConfig::max_retries`] times, waiting
//! [`ClientConfig::retry_backoff`] (doubling, capped) before each retry, only when that is safe:
//!
//! - **reads** (GET, MGET, TTL, EXISTS, PING, TOPOLOGY) after a transport failure or a timeout;
//! - **any operation** that provably was not sent (the connection could not be opened, or broke
//!   before the request's bytes were handed to the socket);
//! - **any operation** the server refused with WRONG_SHARD (after fetching the topology again) or
//!   SHUTTING_DOWN: both guarantee that nothing was done.
//!
//! A write (SET, DEL, MSET, CAS, INCR, EXPIRE) whose bytes may have reached the server is never
//! retried: a transport failure returns [`ClientError::Disconnected`] and a timeout
//! [`ClientError::Timeout`], both with `outcome_unknown: true`
//! ([`ClientError::is_outcome_unknown`]). Other server errors (NOT_AN_INTEGER, OUT_OF_MEMORY…)
//! and a topology the client cannot use (an unknown routing hash) are returned at once. A retry
//! resends only the unfinished part of an operation (the failed shards' frames of an MGET or
//! MSET).

pub mod blocking;
mod config;
mod connection;
mod error;
mod plan;
#[cfg(feature = "rdma")]
pub mod rdma;
mod router;
#[cfg(test)]
mod tests;
#[cfg(feature = "tokio")]
pub mod tokio;

use bytes::Bytes;

pub use self::config::{Backoff, ClientConfig, Reply, SetOptions, Ttl};
pub use self::connection::{is_read, Completion, Connection, MAX_UNANSWERED_BYTES};
pub use self::error::ClientError;
pub use self::router::Router;
pub use crate::native::{SetCondition, Topology};

use self::config::ttl_ms;
use self::plan::Op;

/// Operations queued to be sent together: [`blocking::Client::execute`] (or the tokio client's)
/// sends them all, to whichever shards they go, and returns one result per operation in
/// submission order. Keys and values are held as `Bytes` (a key given as a slice is copied once).
#[derive(Clone, Debug, Default)]
pub struct Pipeline {
    ops: Vec<Op<Bytes>>,
}

fn bytes_of(key: impl AsRef<[u8]>) -> Bytes {
    Bytes::copy_from_slice(key.as_ref())
}

impl Pipeline {
    pub fn new() -> Self {
        Pipeline::default()
    }
    pub fn len(&self) -> usize {
        self.ops.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
    pub fn clear(&mut self) {
        self.ops.clear();
    }
    /// Reply: [`Reply::Done`].
    pub fn ping(&mut self) -> &mut Self {
        self.ops.push(Op::Ping);
        self
    }
    /// Reply: [`Reply::Value`].
    pub fn get(&mut self, key: impl AsRef<[u8]>) -> &mut Self {
        self.ops.push(Op::Get(bytes_of(key)));
        self
    }
    /// Reply: [`Reply::Bool`], whether it stored.
    pub fn set(&mut self, key: impl AsRef<[u8]>, value: impl Into<Bytes>, options: SetOptions) -> &mut Self {
        self.ops.push(Op::Set {
            key: bytes_of(key),
            value: value.into(),
            ttl_ms: ttl_ms(options.ttl),
            condition: options.condition,
        });
        self
    }
    /// Reply: [`Reply::Bool`], whether the key existed.
    pub fn del(&mut self, key: impl AsRef<[u8]>) -> &mut Self {
        self.ops.push(Op::Del(bytes_of(key)));
        self
    }
    /// Reply: [`Reply::Bool`], whether it swapped.
    pub fn cas(
        &mut self,
        key: impl AsRef<[u8]>,
        expected: impl Into<Bytes>,
        new: impl Into<Bytes>,
        ttl: Option<std::time::Duration>,
    ) -> &mut Self {
        self.ops.push(Op::Cas {
            key: bytes_of(key),
            expected: expected.into(),
            value: new.into(),
            ttl_ms: ttl_ms(ttl),
        });
        self
    }
    /// Reply: [`Reply::Integer`], the new value.
    pub fn incr(&mut self, key: impl AsRef<[u8]>, delta: i64) -> &mut Self {
        self.ops.push(Op::Incr {
            key: bytes_of(key),
            delta,
        });
        self
    }
    /// Reply: [`Reply::Bool`], whether the key exists. `None` removes the TTL.
    pub fn expire(&mut self, key: impl AsRef<[u8]>, ttl: Option<std::time::Duration>) -> &mut Self {
        self.ops.push(Op::Expire {
            key: bytes_of(key),
            ttl_ms: ttl_ms(ttl),
        });
        self
    }
    /// Reply: [`Reply::Ttl`].
    pub fn ttl(&mut self, key: impl AsRef<[u8]>) -> &mut Self {
        self.ops.push(Op::Ttl(bytes_of(key)));
        self
    }
    /// Reply: [`Reply::Bool`].
    pub fn exists(&mut self, key: impl AsRef<[u8]>) -> &mut Self {
        self.ops.push(Op::Exists(bytes_of(key)));
        self
    }
    /// Reply: [`Reply::Values`], in the keys' order.
    pub fn mget<K: AsRef<[u8]>>(&mut self, keys: &[K]) -> &mut Self {
        self.ops.push(Op::MGet(keys.iter().map(bytes_of).collect()));
        self
    }
    /// Reply: [`Reply::Done`].
    pub fn mset<K: AsRef<[u8]>, V: AsRef<[u8]>>(&mut self, pairs: &[(K, V)]) -> &mut Self {
        self.ops.push(Op::MSet(
            pairs.iter().map(|(k, v)| (bytes_of(k), bytes_of(v))).collect(),
        ));
        self
    }
}

/// Takes the reply of the variant an operation produces; any other is a client bug, reported as
/// an error rather than a panic.
macro_rules! expect_reply {
    ($result:expr, $pattern:pat => $value:expr) => {
        match $result {
            Ok($pattern) => Ok($value),
            Ok(other) => Err($crate::client::ClientError::Disconnected {
                outcome_unknown: false,
                reason: format!("unexpected reply {other:?} (client bug)"),
            }),
            Err(err) => Err(err),
        }
    };
}
pub(crate) use expect_reply;

/// The operations every client has, over its `one` (and `run`): `receiver` is `&mut` (blocking
/// clients) or `&` (the tokio client), `asyncness` empty or `async`, and `await` what follows each
/// call to `one`/`run` (empty or `.await`). The two methods whose docs differ between clients take
/// their doc comments from the invocation. `self` is written here, in the parameter lists and the
/// bodies alike, so that both come from the same syntax context.
macro_rules! operation_methods {
    (
        receiver: [$($receiver:tt)*],
        asyncness: [$($asyncness:tt)*],
        await: [$($await:tt)*],
        $(#[$execute_doc:meta])*
        execute;
        $(#[$mget_doc:meta])*
        mget;
    ) => {
        $(#[$execute_doc])*
        pub $($asyncness)* fn execute(
            $($receiver)* self,
            pipeline: &$crate::client::Pipeline,
        ) -> Vec<::std::result::Result<$crate::client::Reply, $crate::client::ClientError>> {
            self.run(pipeline.ops.clone())$($await)*
        }

        pub $($asyncness)* fn ping($($receiver)* self) -> ::std::result::Result<(), $crate::client::ClientError> {
            $crate::client::expect_reply!(self.one($crate::client::plan::Op::<&[u8]>::Ping)$($await)*, $crate::client::Reply::Done => ())
        }

        /// The value of `key`, a slice of the received frame (no copy).
        pub $($asyncness)* fn get(
            $($receiver)* self,
            key: impl AsRef<[u8]>,
        ) -> ::std::result::Result<Option<::bytes::Bytes>, $crate::client::ClientError> {
            $crate::client::expect_reply!(self.one($crate::client::plan::Op::Get(key.as_ref()))$($await)*, $crate::client::Reply::Value(value) => value)
        }

        /// Stores `value` (encoded straight from the caller's bytes); false when the condition (NX/XX)
        /// prevented the store.
        pub $($asyncness)* fn set(
            $($receiver)* self,
            key: impl AsRef<[u8]>,
            value: impl AsRef<[u8]>,
            options: $crate::client::SetOptions,
        ) -> ::std::result::Result<bool, $crate::client::ClientError> {
            let op = $crate::client::plan::Op::Set {
                key: key.as_ref(),
                value: value.as_ref(),
                ttl_ms: $crate::client::config::ttl_ms(options.ttl),
                condition: options.condition,
            };
            $crate::client::expect_reply!(self.one(op)$($await)*, $crate::client::Reply::Bool(stored) => stored)
        }

        /// Removes `key`; true if it existed.
        pub $($asyncness)* fn del(
            $($receiver)* self,
            key: impl AsRef<[u8]>,
        ) -> ::std::result::Result<bool, $crate::client::ClientError> {
            $crate::client::expect_reply!(self.one($crate::client::plan::Op::Del(key.as_ref()))$($await)*, $crate::client::Reply::Bool(removed) => removed)
        }

        $(#[$mget_doc])*
        pub $($asyncness)* fn mget<K: AsRef<[u8]>>(
            $($receiver)* self,
            keys: &[K],
        ) -> ::std::result::Result<Vec<Option<::bytes::Bytes>>, $crate::client::ClientError> {
            let keys = keys.iter().map(AsRef::as_ref).collect();
            $crate::client::expect_reply!(self.one($crate::client::plan::Op::MGet(keys))$($await)*, $crate::client::Reply::Values(values) => values)
        }

        /// Stores every pair (one MSET frame per shard; a shard stores all of its pairs or none).
        /// If an error is returned, the shards whose frames succeeded have stored their pairs.
        pub $($asyncness)* fn mset<K: AsRef<[u8]>, V: AsRef<[u8]>>(
            $($receiver)* self,
            pairs: &[(K, V)],
        ) -> ::std::result::Result<(), $crate::client::ClientError> {
            let pairs = pairs.iter().map(|(k, v)| (k.as_ref(), v.as_ref())).collect();
            $crate::client::expect_reply!(self.one($crate::client::plan::Op::MSet(pairs))$($await)*, $crate::client::Reply::Done => ())
        }

        /// Replaces the value of `key` with `new` if it is `expected`; true if it swapped.
        pub $($asyncness)* fn cas(
            $($receiver)* self,
            key: impl AsRef<[u8]>,
            expected: impl AsRef<[u8]>,
            new: impl AsRef<[u8]>,
            ttl: Option<::std::time::Duration>,
        ) -> ::std::result::Result<bool, $crate::client::ClientError> {
            let op = $crate::client::plan::Op::Cas {
                key: key.as_ref(),
                expected: expected.as_ref(),
                value: new.as_ref(),
                ttl_ms: $crate::client::config::ttl_ms(ttl),
            };
            $crate::client::expect_reply!(self.one(op)$($await)*, $crate::client::Reply::Bool(swapped) => swapped)
        }

        /// Adds `delta` to the integer at `key` (0 if absent); returns the new value.
        pub $($asyncness)* fn incr(
            $($receiver)* self,
            key: impl AsRef<[u8]>,
            delta: i64,
        ) -> ::std::result::Result<i64, $crate::client::ClientError> {
            let op = $crate::client::plan::Op::Incr {
                key: key.as_ref(),
                delta,
            };
            $crate::client::expect_reply!(self.one(op)$($await)*, $crate::client::Reply::Integer(value) => value)
        }

        /// Sets (`Some`) or removes (`None`) the TTL of `key`; true if the key exists.
        pub $($asyncness)* fn expire(
            $($receiver)* self,
            key: impl AsRef<[u8]>,
            ttl: Option<::std::time::Duration>,
        ) -> ::std::result::Result<bool, $crate::client::ClientError> {
            let op = $crate::client::plan::Op::Expire {
                key: key.as_ref(),
                ttl_ms: $crate::client::config::ttl_ms(ttl),
            };
            $crate::client::expect_reply!(self.one(op)$($await)*, $crate::client::Reply::Bool(exists) => exists)
        }

        pub $($asyncness)* fn ttl(
            $($receiver)* self,
            key: impl AsRef<[u8]>,
        ) -> ::std::result::Result<$crate::client::Ttl, $crate::client::ClientError> {
            $crate::client::expect_reply!(self.one($crate::client::plan::Op::Ttl(key.as_ref()))$($await)*, $crate::client::Reply::Ttl(ttl) => ttl)
        }

        pub $($asyncness)* fn exists(
            $($receiver)* self,
            key: impl AsRef<[u8]>,
        ) -> ::std::result::Result<bool, $crate::client::ClientError> {
            $crate::client::expect_reply!(self.one($crate::client::plan::Op::Exists(key.as_ref()))$($await)*, $crate::client::Reply::Bool(exists) => exists)
        }
    };
}
pub(crate) use operation_methods;

/// What the blocking client and the RDMA client share word for word: the rounds that route a
/// [`Plan`](plan::Plan) over one connection per shard (`run`, `one`), the topology, and the
/// operations. The client type provides `ShardConn` (with `conn`, `flush`, `read_some`,
/// `finish`), `open_shard`, `fetch_router`, `drop_dead_connections`, and the fields `config`,
/// `router`, `conns`, `stale`; the module provides `Event`, `FLUSH_AT`, `Plan`, `FrameSpec`.
macro_rules! blocking_operations {
    () => {
        fn run_round<K: AsRef<[u8]>>(&mut self, plan: &mut Plan<K>) {
            self.drop_dead_connections();
            if let Err(err) = self.ensure_router() {
                return plan.fail_round(&err);
            }
            let Some(router) = &self.router else {
                return plan.fail_round(&ClientError::Topology("no topology".into()));
            };
            let frames = plan.frames(router);
            let endpoints = router.endpoints().to_vec();
            let mut broken: Vec<Option<ClientError>> = vec![None; endpoints.len()];
            let mut events: Vec<Event> = Vec::new();
            let apply = |plan: &mut Plan<K>, events: &mut Vec<Event>, frames: &[FrameSpec]| {
                for (token, result) in events.drain(..) {
                    plan.complete(&frames[token], result);
                }
            };
            for (index, frame) in frames.iter().enumerate() {
                let shard = frame.shard as usize;
                if let Some(err) = broken.get(shard).and_then(Option::as_ref) {
                    let not_sent = ClientError::Disconnected {
                        outcome_unknown: false,
                        reason: format!("not sent: {err}"),
                    };
                    plan.complete(frame, Err(not_sent));
                    continue;
                }
                if self.conns[shard].is_none() {
                    match self.open_shard(&endpoints[shard]) {
                        Ok(conn) => self.conns[shard] = Some(conn),
                        Err(err) => {
                            broken[shard] = Some(err.clone());
                            self.stale = true;
                            plan.complete(frame, Err(err));
                            continue;
                        }
                    }
                }
                let Some(conn) = self.conns[shard].as_mut() else {
                    continue;
                };
                plan.encode(
                    frame,
                    &mut conn.conn,
                    index,
                    Instant::now() + self.config.request_timeout,
                );
                while conn.conn.must_read_before_write() && !conn.conn.is_failed() {
                    conn.read_some(&mut events);
                }
                if conn.conn.output_len() >= FLUSH_AT {
                    conn.flush(&mut events);
                }
                apply(plan, &mut events, &frames);
                if let Some(err) = conn.conn.failure() {
                    broken[shard] = Some(err.clone());
                    self.conns[shard] = None;
                    self.stale = true;
                }
            }
            // Every shard's requests go out before any shard is waited for.
            for conn in self.conns.iter_mut().flatten() {
                conn.flush(&mut events);
            }
            apply(plan, &mut events, &frames);
            for slot in &mut self.conns {
                if let Some(conn) = slot {
                    conn.finish(&mut events);
                    apply(plan, &mut events, &frames);
                    if conn.conn.is_failed() {
                        *slot = None;
                        self.stale = true;
                    }
                }
            }
        }

        fn run<K: AsRef<[u8]>>(&mut self, ops: Vec<Op<K>>) -> Vec<Result<Reply, ClientError>> {
            let mut plan = Plan::new(ops);
            loop {
                self.run_round(&mut plan);
                match plan.next_round(self.config.max_retries) {
                    None => return plan.into_results(),
                    Some(refresh) => {
                        self.stale |= refresh;
                        std::thread::sleep(self.config.retry_backoff.delay(plan.retries().saturating_sub(1)));
                    }
                }
            }
        }

        fn one<K: AsRef<[u8]>>(&mut self, op: Op<K>) -> Result<Reply, ClientError> {
            self.run(vec![op]).pop().unwrap_or_else(|| {
                Err(ClientError::Disconnected {
                    outcome_unknown: false,
                    reason: "no result (client bug)".into(),
                })
            })
        }

        pub fn config(&self) -> &$crate::client::ClientConfig {
            &self.config
        }

        /// The topology in use (fetched again first if a failure made it stale).
        pub fn topology(&mut self) -> ::std::result::Result<$crate::client::Topology, $crate::client::ClientError> {
            self.ensure_router()?;
            match &self.router {
                Some(router) => Ok(router.topology().clone()),
                None => Err($crate::client::ClientError::Topology("no topology".into())),
            }
        }

        /// Fetches the topology from the seed now; connections are kept if it did not change.
        pub fn refresh_topology(&mut self) -> ::std::result::Result<(), $crate::client::ClientError> {
            let router = self.fetch_router()?;
            if self.router.as_ref() != Some(&router) {
                self.conns = (0..router.shard_count()).map(|_| None).collect();
                self.router = Some(router);
            }
            self.stale = false;
            Ok(())
        }

        fn ensure_router(&mut self) -> ::std::result::Result<(), $crate::client::ClientError> {
            if self.stale || self.router.is_none() {
                self.refresh_topology()?;
            }
            Ok(())
        }

        /// `connect`'s first topology fetch, retried per the policy.
        fn fetch_first_topology(&mut self) -> ::std::result::Result<(), $crate::client::ClientError> {
            let mut retry = 0;
            loop {
                match self.refresh_topology() {
                    Ok(()) => return Ok(()),
                    Err(err)
                        if retry < self.config.max_retries
                            && $crate::client::error::retry_policy(&err) != $crate::client::error::Retry::No =>
                    {
                        ::std::thread::sleep(self.config.retry_backoff.delay(retry));
                        retry += 1;
                    }
                    Err(err) => return Err(err),
                }
            }
        }

        $crate::client::operation_methods! {
            receiver: [&mut],
            asyncness: [],
            await: [],
            /// Sends every operation of `pipeline` (to whichever shards they go) and returns their
            /// results in submission order. Each operation is retried on its own.
            execute;
            /// The values of `keys`, in their order (one MGET frame per shard).
            mget;
        }
    };
}
pub(crate) use blocking_operations;
