//! The client's typed errors, and which of them a retry may follow.

use std::sync::Arc;

use crate::native::{ErrorCode, FrameError, Opcode};

/// Why a client operation failed.
///
/// `outcome_unknown` (on [`ClientError::Timeout`] and [`ClientError::Disconnected`]) is true only
/// for a write whose bytes may have reached the server: it may or may not have been applied, and
/// the client never retries it on its own (see the module docs, "Retries").
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Connecting, reading or writing failed.
    #[error("I/O error: {0}")]
    Io(Arc<std::io::Error>),
    /// The request was not answered within [`ClientConfig::request_timeout`](super::ClientConfig);
    /// its connection was dropped and is re-established on the next use.
    #[error("request timed out{}", unknown_suffix(*outcome_unknown))]
    Timeout { outcome_unknown: bool },
    /// The connection broke before the request was answered (or before it was sent, when
    /// `outcome_unknown` is false).
    #[error("connection lost ({reason}){}", unknown_suffix(*outcome_unknown))]
    Disconnected { outcome_unknown: bool, reason: String },
    /// The server answered with an ERROR frame. [`ClientError::code`] gives its code; the
    /// `is_*` helpers name the codes of PROTOCOL.md's operation errors (32–38).
    #[error("server error {code}: {message}", code = code.0)]
    Server { code: ErrorCode, message: String },
    /// The server sent bytes that are not a valid frame or response.
    #[error("protocol error: {0}")]
    Protocol(#[from] FrameError),
    /// The server answered with a well-formed response of the wrong kind for the request.
    #[error("unexpected {response:?} response to {request:?}")]
    UnexpectedResponse { request: Opcode, response: Opcode },
    /// The topology could not be fetched or is unusable (unknown routing hash, bad endpoint).
    #[error("topology error: {0}")]
    Topology(String),
}

fn unknown_suffix(outcome_unknown: bool) -> &'static str {
    if outcome_unknown {
        "; the request may have been applied (outcome unknown)"
    } else {
        ""
    }
}

impl From<std::io::Error> for ClientError {
    fn from(err: std::io::Error) -> Self {
        ClientError::Io(Arc::new(err))
    }
}

impl ClientError {
    /// The server's error code, for [`ClientError::Server`].
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// True when a write may or may not have been applied: the caller has to find out (or
    /// resend, if the write is idempotent for it).
    pub fn is_outcome_unknown(&self) -> bool {
        matches!(
            self,
            ClientError::Timeout { outcome_unknown: true }
                | ClientError::Disconnected {
                    outcome_unknown: true,
                    ..
                }
        )
    }

    /// WRONG_SHARD (32): the key belongs to another shard; nothing was done.
    pub fn is_wrong_shard(&self) -> bool {
        self.code() == Some(ErrorCode::WRONG_SHARD)
    }
    /// OUT_OF_MEMORY (33): the node's memory budget refused the write.
    pub fn is_out_of_memory(&self) -> bool {
        self.code() == Some(ErrorCode::OUT_OF_MEMORY)
    }
    /// NOT_AN_INTEGER (34): INCR on a value that is not a 64-bit decimal integer.
    pub fn is_not_an_integer(&self) -> bool {
        self.code() == Some(ErrorCode::NOT_AN_INTEGER)
    }
    /// OVERFLOW (35): INCR would overflow a signed 64-bit integer.
    pub fn is_overflow(&self) -> bool {
        self.code() == Some(ErrorCode::OVERFLOW)
    }
    /// WRITES_REFUSED (36): the node's log cannot take records; reads still work.
    pub fn is_writes_refused(&self) -> bool {
        self.code() == Some(ErrorCode::WRITES_REFUSED)
    }
    /// TOO_LARGE (37): a key or value larger than the store accepts.
    pub fn is_too_large(&self) -> bool {
        self.code() == Some(ErrorCode::TOO_LARGE)
    }
    /// SHUTTING_DOWN (38): the node is stopping; nothing was done.
    pub fn is_shutting_down(&self) -> bool {
        self.code() == Some(ErrorCode::SHUTTING_DOWN)
    }
}

/// What to do after an attempt failed with `err` (the retry policy of the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Retry {
    No,
    Yes,
    /// Retry after fetching the topology again (WRONG_SHARD).
    AfterRefresh,
}

/// The retry policy. Errors are built so that a write that may have reached the server carries
/// `outcome_unknown: true` (or is a server error), so this needs not know the operation.
pub(crate) fn retry_policy(err: &ClientError) -> Retry {
    match err {
        ClientError::Server { code, .. } if *code == ErrorCode::WRONG_SHARD => Retry::AfterRefresh,
        ClientError::Server { code, .. } if *code == ErrorCode::SHUTTING_DOWN => Retry::Yes,
        // A topology this client cannot use (unknown hash, bad endpoints) will not improve.
        ClientError::Server { .. } | ClientError::UnexpectedResponse { .. } | ClientError::Topology(_) => Retry::No,
        ClientError::Timeout { outcome_unknown } | ClientError::Disconnected { outcome_unknown, .. } => {
            if *outcome_unknown {
                Retry::No
            } else {
                Retry::Yes
            }
        }
        // Only reads and requests that were provably not sent carry these (a write that may have
        // been sent gets `Disconnected { outcome_unknown: true }` instead).
        ClientError::Io(_) | ClientError::Protocol(_) => Retry::Yes,
    }
}
