//! Reply encoding for RESP2 and RESP3.
//!
//! Every method appends one complete RESP value (or an aggregate header) to the output buffer.
//! RESP3-only types degrade to their RESP2 equivalents exactly as Redis 7 does:
//! null → `$-1` (or `*-1` for [`ReplyEncoder::null_array`]), map → flat array of 2n, set → array,
//! double → bulk string, boolean → integer 0/1, verbatim string → bulk string.

use bytes::BytesMut;

/// The protocol version a connection speaks (changed by `HELLO 2|3`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Protocol {
    #[default]
    Resp2,
    Resp3,
}

/// Appends encoded replies to a connection's output buffer. Never allocates beyond growing `out`.
pub struct ReplyEncoder<'a> {
    out: &'a mut BytesMut,
    protocol: Protocol,
}

impl<'a> ReplyEncoder<'a> {
    pub fn new(out: &'a mut BytesMut, protocol: Protocol) -> Self {
        Self { out, protocol }
    }
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }
    /// `+text\r\n`; `text` must not contain CR or LF.
    pub fn simple(&mut self, text: &str) { todo!() }
    /// `+OK\r\n`
    pub fn ok(&mut self) { todo!() }
    /// `-text\r\n`; `text` starts with the error code, e.g. `ERR syntax error` or `WRONGTYPE ...`.
    /// CR and LF inside `text` are replaced by spaces so the reply stays one line.
    pub fn error(&mut self, text: &str) { todo!() }
    /// `:n\r\n`
    pub fn integer(&mut self, n: i64) { todo!() }
    /// `$len\r\nbytes\r\n`
    pub fn bulk(&mut self, bytes: &[u8]) { todo!() }
    /// The null bulk string: `$-1\r\n` in RESP2, `_\r\n` in RESP3.
    pub fn null(&mut self) { todo!() }
    /// The null array: `*-1\r\n` in RESP2, `_\r\n` in RESP3.
    pub fn null_array(&mut self) { todo!() }
    /// `*n\r\n` followed by n values the caller writes.
    pub fn array_len(&mut self, n: usize) { todo!() }
    /// RESP3 `%n\r\n` (n key/value pairs follow); RESP2 `*2n\r\n`.
    pub fn map_len(&mut self, n: usize) { todo!() }
    /// RESP3 `~n\r\n`; RESP2 `*n\r\n`.
    pub fn set_len(&mut self, n: usize) { todo!() }
    /// RESP3 `,value\r\n` (`inf`, `-inf`, `nan`); RESP2 the same text as a bulk string.
    /// The text is Redis's `%.17g` style: shortest form that round-trips.
    pub fn double(&mut self, value: f64) { todo!() }
    /// RESP3 `#t`/`#f`; RESP2 `:1`/`:0`.
    pub fn boolean(&mut self, value: bool) { todo!() }
    /// RESP3 `=len\r\nfmt:text\r\n` (`fmt` is three bytes such as `txt`); RESP2 a bulk string.
    pub fn verbatim(&mut self, format: &str, text: &[u8]) { todo!() }
    /// Appends already-encoded RESP bytes (for replies produced on another shard).
    pub fn raw(&mut self, encoded: &[u8]) {
        self.out.extend_from_slice(encoded);
    }
}
