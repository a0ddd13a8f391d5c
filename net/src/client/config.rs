//! Client configuration and the small value types of the API.

use std::time::Duration;

use bytes::Bytes;

use crate::native::{Limits, SetCondition};

/// Client settings. The defaults suit a node on the local network.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Longest wait for a TCP connection to be established. Default 1 s.
    pub connect_timeout: Duration,
    /// Longest wait for one request's response, from when it is handed to the connection. A
    /// request not answered by then fails with [`ClientError::Timeout`](super::ClientError) and its
    /// connection is dropped. Default 5 s.
    pub request_timeout: Duration,
    /// How many times a failed operation is retried when the policy allows it (module docs,
    /// "Retries"). Default 3.
    pub max_retries: u32,
    /// The wait before each retry. Default 10 ms, doubling, at most 1 s.
    pub retry_backoff: Backoff,
    /// Send every request with a CRC32 trailer. Default false (TCP already checksums).
    pub crc: bool,
    /// Decoder limits applied to responses. Default [`Limits::default`].
    pub limits: Limits,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(5),
            max_retries: 3,
            retry_backoff: Backoff::default(),
            crc: false,
            limits: Limits::default(),
        }
    }
}

/// Exponential backoff: `initial`, doubling after each retry, never more than `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_secs(1),
        }
    }
}

impl Backoff {
    /// The wait before retry number `retry` (0 for the first retry).
    pub fn delay(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// Options of SET.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetOptions {
    /// Expire the key after this long (in whole milliseconds, at least 1); `None`: no expiry.
    pub ttl: Option<Duration>,
    /// Store always, only if the key is absent (NX) or only if present (XX).
    pub condition: SetCondition,
}

/// A key's remaining time to live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ttl {
    /// The key does not exist.
    Missing,
    /// The key exists and never expires.
    Persistent,
    /// The key expires after this long.
    Expires(Duration),
}

/// The result of one operation of a [`Pipeline`](super::Pipeline), by operation:
///
/// | operation | reply |
/// |---|---|
/// | PING, MSET | `Done` |
/// | GET | `Value` |
/// | SET (stored?), DEL (removed?), CAS (swapped?), EXPIRE (key exists?), EXISTS | `Bool` |
/// | INCR | `Integer` |
/// | TTL | `Ttl` |
/// | MGET | `Values`, in the keys' order |
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Done,
    Value(Option<Bytes>),
    Bool(bool),
    Integer(i64),
    Ttl(Ttl),
    Values(Vec<Option<Bytes>>),
}

/// A TTL on the wire: `None` is 0 ("no expiry"); any `Some` is at least 1 ms, so a short TTL
/// never silently becomes "no expiry".
pub(crate) fn ttl_ms(ttl: Option<Duration>) -> u64 {
    ttl.map_or(0, |ttl| u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1))
}
