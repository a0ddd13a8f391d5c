//! Incremental, zero-copy parsing of client requests (multibulk and inline).

use bytes::{Bytes, BytesMut};

/// Redis's protocol limits (defaults are Redis 7's).
#[derive(Clone, Copy, Debug)]
pub struct ParseLimits {
    /// `proto-max-bulk-len`: largest bulk string argument, default 512 MiB.
    pub max_bulk_len: usize,
    /// Longest inline command or `*`/`$` count line without its CRLF, default 64 KiB.
    pub max_inline_len: usize,
    /// Largest multibulk argument count accepted, default 1024 * 1024 * 1024 - 1 (Redis's INT_MAX-ish check).
    pub max_multibulk_len: usize,
    /// `client-query-buffer-limit`: largest single request, default 1 GiB.
    pub max_query_buffer: usize,
}

impl Default for ParseLimits {
    fn default() -> Self {
        Self {
            max_bulk_len: 512 * 1024 * 1024,
            max_inline_len: 64 * 1024,
            max_multibulk_len: 1024 * 1024 * 1024,
            max_query_buffer: 1024 * 1024 * 1024,
        }
    }
}

/// A request that can never become valid. The connection replies `-ERR <Display>` and closes.
/// The Display texts are Redis's own, e.g. `Protocol error: invalid bulk length`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    #[error("Protocol error: invalid multibulk length")]
    InvalidMultibulkLength,
    #[error("Protocol error: invalid bulk length")]
    InvalidBulkLength,
    #[error("Protocol error: expected '$', got '{0}'")]
    ExpectedDollar(char),
    #[error("Protocol error: too big inline request")]
    InlineTooBig,
    #[error("Protocol error: too big mbulk count string")]
    MultibulkCountTooBig,
    #[error("Protocol error: too big bulk count string")]
    BulkCountTooBig,
    #[error("Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
    #[error("Protocol error: query buffer limit reached")]
    QueryBufferLimit,
}

/// Parses requests from a connection's read buffer.
///
/// Feed it by appending received bytes to `buf`, then call [`RequestParser::next`] until it returns
/// `Ok(None)` (need more bytes). A parsed request's arguments are `Bytes` that share the buffer's
/// memory (no copy). Partial requests are resumed where they stopped (no re-scan of complete
/// arguments), and no allocation is ever sized from an untrusted count.
#[derive(Debug, Default)]
pub struct RequestParser {
    limits: ParseLimits,
    // resumable state for a partially received multibulk request
}

impl RequestParser {
    pub fn new(limits: ParseLimits) -> Self {
        todo!()
    }

    /// Parses the next complete request from the front of `buf`, consuming its bytes.
    ///
    /// On success the arguments replace the contents of `args` (cleared first; its capacity is
    /// reused). An empty request (`*0`, an empty inline line) is skipped, as Redis does; `*-1` is
    /// skipped too. Returns `Ok(true)` when `args` holds a request, `Ok(false)` when more bytes are
    /// needed (everything complete so far has been consumed or kept as resumable state).
    pub fn next(&mut self, buf: &mut BytesMut, args: &mut Vec<Bytes>) -> Result<bool, ParseError> {
        todo!()
    }
}
