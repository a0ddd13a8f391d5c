//! Incremental, zero-copy parsing of client requests (multibulk and inline).
//!
//! The grammar, limits and error texts are Redis 7.0's `processMultibulkBuffer` /
//! `processInlineBuffer` (networking.c), checked against a real `redis-server` 7.0.15:
//!
//! - A request starting with `*` is multibulk: `*N\r\n` then N × `$len\r\n<len bytes>\r\n`.
//!   Counts and lengths are read with Redis's `string2ll` (no sign `+`, no leading zeros, no
//!   `-0`, at most 20 characters). `*0` and negative counts are skipped. A count line is ended by
//!   the first `\r` and the byte after it is skipped unchecked; the two bytes after a bulk payload
//!   are skipped unchecked too (`$3\r\nfooXY` reads `foo`).
//! - Anything else is an inline command: a line ended by `\n` (one `\r` before it is dropped),
//!   split by Redis's `sdssplitargs` quoting rules. Blank lines are skipped.
//! - Redis finds line ends with `strchr`, so a NUL byte before the line end means the line never
//!   ends: the request waits until the line exceeds 64 KiB and then fails as "too big".
//!
//! One deliberate difference: Redis only checks the 64 KiB line limit while the line end has not
//! arrived yet, so whether a longer line fails as "too big" or as "invalid length" depends on how
//! the bytes were split into reads. This parser rejects any line longer than the limit as "too
//! big", so that every split of the input gives the same requests and errors.

use bytes::{Buf, Bytes, BytesMut};

/// Redis's protocol limits (defaults are Redis 7's).
#[derive(Clone, Copy, Debug)]
pub struct ParseLimits {
    /// `proto-max-bulk-len`: largest bulk string argument, default 512 MiB.
    pub max_bulk_len: usize,
    /// Longest inline command or `*`/`$` count line without its CRLF, default 64 KiB.
    pub max_inline_len: usize,
    /// Largest multibulk argument count accepted, default `i32::MAX` (Redis 7.0 rejects counts
    /// above `INT_MAX`: `*2147483647` is accepted, `*2147483648` is an invalid multibulk length).
    pub max_multibulk_len: usize,
    /// `client-query-buffer-limit`: largest single request, default 1 GiB.
    pub max_query_buffer: usize,
}

impl Default for ParseLimits {
    fn default() -> Self {
        Self {
            max_bulk_len: 512 * 1024 * 1024,
            max_inline_len: 64 * 1024,
            max_multibulk_len: i32::MAX as usize,
            max_query_buffer: 1024 * 1024 * 1024,
        }
    }
}

/// A request that can never become valid. The connection replies `-ERR <Display>` and closes.
/// The Display texts are Redis's own, e.g. `Protocol error: invalid bulk length`.
///
/// Redis sends the byte of [`ParseError::ExpectedDollar`] raw; here it is the byte as a Latin-1
/// `char`, so bytes ≥ 0x80 display as two UTF-8 bytes. For [`ParseError::QueryBufferLimit`]
/// Redis closes the connection without any reply.
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

/// Redis's `PROTO_MBULK_BIG_ARG`: from this payload size on, room for the whole payload is
/// reserved as soon as its length is known, so it arrives without repeated buffer regrowth.
const BIG_ARG: usize = 32 * 1024;

/// Largest buffer room reserved ahead of a big payload's bytes; beyond it the buffer grows as the
/// bytes actually arrive.
const MAX_BULK_RESERVE: usize = 64 * 1024 * 1024;

/// Most argument slots reserved up front for a multibulk request, whatever count it announces
/// (as Redis's `min(multibulklen, 1024)`): the count is untrusted.
const MAX_ARGS_RESERVE: usize = 1024;

/// Parses requests from a connection's read buffer.
///
/// Feed it by appending received bytes to `buf`, then call [`RequestParser::next`] until it returns
/// `Ok(false)` (need more bytes). A parsed request's arguments are `Bytes` that share the buffer's
/// memory (no copy). Partial requests are resumed where they stopped (no re-scan of complete
/// arguments), and no allocation is ever sized from an untrusted count.
///
/// Contract: one parser per connection, always called with that connection's `buf`, to which the
/// caller only appends (the parser alone consumes from its front). Arguments of a partially
/// received request are kept inside the parser, not in the caller's `args`, so `args` may be any
/// vector on each call. After an error the parser is poisoned: every later call returns the same
/// error, because the stream can no longer be framed (Redis closes the connection).
#[derive(Debug, Default)]
pub struct RequestParser {
    limits: ParseLimits,
    /// Arguments the multibulk request in progress still expects; 0 between requests.
    remaining: usize,
    /// Payload length of the bulk argument whose `$len` line was consumed, if any.
    bulk_len: Option<usize>,
    /// Bytes of the multibulk request in progress consumed so far (for `max_query_buffer`).
    request_bytes: usize,
    /// Arguments of the request in progress; swapped into the caller's vector when complete.
    pending: Vec<Bytes>,
    /// Length of the front of `buf` already searched for the current line's end without finding
    /// it, so a long line trickling in is scanned once, not once per read.
    scanned: usize,
    /// A NUL byte sits at `buf[scanned]` before any line end: this line can never end.
    nul_blocked: bool,
    /// The error that poisoned the parser.
    failed: Option<ParseError>,
}

/// What one parsing step achieved.
enum Step {
    /// `pending` holds a complete request.
    Complete,
    /// An empty request (`*0`, `*-1`, blank inline line) was consumed.
    Empty,
    /// More bytes are needed.
    Incomplete,
}

impl RequestParser {
    pub fn new(limits: ParseLimits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// Parses the next complete request from the front of `buf`, consuming its bytes.
    ///
    /// On success the arguments replace the contents of `args` (cleared first; its capacity is
    /// reused). An empty request (`*0`, an empty inline line) is skipped, as Redis does; `*-1` is
    /// skipped too. Returns `Ok(true)` when `args` holds a request, `Ok(false)` when more bytes are
    /// needed (everything complete so far has been consumed or kept as resumable state).
    pub fn next(&mut self, buf: &mut BytesMut, args: &mut Vec<Bytes>) -> Result<bool, ParseError> {
        args.clear();
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        loop {
            let step = if self.remaining > 0 {
                self.multibulk_args(buf)
            } else {
                self.request_start(buf)
            };
            match step {
                Ok(Step::Complete) => {
                    // The caller's (cleared) vector becomes the next request's scratch space.
                    std::mem::swap(args, &mut self.pending);
                    return Ok(true);
                }
                Ok(Step::Empty) => continue,
                Ok(Step::Incomplete) => return Ok(false),
                Err(err) => {
                    self.failed = Some(err.clone());
                    self.pending.clear();
                    return Err(err);
                }
            }
        }
    }

    /// Parses the start of a request: a multibulk count line, or a whole inline command.
    fn request_start(&mut self, buf: &mut BytesMut) -> Result<Step, ParseError> {
        match buf.first() {
            None => return Ok(Step::Incomplete),
            Some(b'*') => {}
            Some(_) => return self.inline(buf),
        }
        let Some(cr) = self.find_line_end(buf, b'\r', ParseError::MultibulkCountTooBig)? else {
            return Ok(Step::Incomplete);
        };
        // Redis wants the byte after the CR in the buffer (it never checks that it is an LF).
        if buf.len() - cr < 2 {
            return Ok(Step::Incomplete);
        }
        let max = i64::try_from(self.limits.max_multibulk_len).unwrap_or(i64::MAX);
        let count = string2ll(&buf[1..cr])
            .filter(|&n| n <= max)
            .ok_or(ParseError::InvalidMultibulkLength)?;
        let header = cr + 2;
        if header > self.limits.max_query_buffer {
            return Err(ParseError::QueryBufferLimit);
        }
        self.consume(buf, header);
        if count <= 0 {
            return Ok(Step::Empty);
        }
        // count ≤ max_multibulk_len ≤ usize::MAX, so this cannot truncate.
        self.remaining = count as usize;
        self.request_bytes = header;
        self.pending.reserve(self.remaining.min(MAX_ARGS_RESERVE));
        self.multibulk_args(buf)
    }

    /// Parses the bulk arguments of the multibulk request in progress.
    fn multibulk_args(&mut self, buf: &mut BytesMut) -> Result<Step, ParseError> {
        while self.remaining > 0 {
            let len = match self.bulk_len {
                Some(len) => len,
                None => match self.bulk_header(buf)? {
                    Some(len) => len,
                    None => return Ok(Step::Incomplete),
                },
            };
            // len + 2 fits: bulk_header checked request_bytes + header + len + 2 for overflow.
            if buf.len() < len + 2 {
                return Ok(Step::Incomplete);
            }
            // Redis skips the two bytes after the payload without looking at them. Splitting
            // them off with the payload and truncating saves a separate (non-inlined) advance.
            let mut arg = buf.split_to(len + 2);
            arg.truncate(len);
            self.pending.push(arg.freeze());
            self.request_bytes += len + 2;
            self.bulk_len = None;
            self.remaining -= 1;
        }
        self.request_bytes = 0;
        Ok(Step::Complete)
    }

    /// Parses a `$len` line; `Ok(None)` when it has not fully arrived.
    fn bulk_header(&mut self, buf: &mut BytesMut) -> Result<Option<usize>, ParseError> {
        let Some(cr) = self.find_line_end(buf, b'\r', ParseError::BulkCountTooBig)? else {
            return Ok(None);
        };
        if buf.len() - cr < 2 {
            return Ok(None);
        }
        if buf[0] != b'$' {
            return Err(ParseError::ExpectedDollar(char::from(buf[0])));
        }
        let len = string2ll(&buf[1..cr])
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| n <= self.limits.max_bulk_len)
            .ok_or(ParseError::InvalidBulkLength)?;
        let header = cr + 2;
        // The request is at least this long once the payload and its CRLF arrive: refuse it now
        // rather than buffer up to the limit first.
        let at_least = self
            .request_bytes
            .checked_add(header)
            .and_then(|n| n.checked_add(len))
            .and_then(|n| n.checked_add(2));
        if !matches!(at_least, Some(n) if n <= self.limits.max_query_buffer) {
            return Err(ParseError::QueryBufferLimit);
        }
        self.request_bytes += header;
        self.consume(buf, header);
        self.bulk_len = Some(len);
        if len >= BIG_ARG && buf.len() < len + 2 {
            // As Redis's sdsMakeRoomForNonGreedy: room for the whole payload at once, so it is
            // not copied again and again while the buffer grows. Capped, because the length is
            // only a claim: 20 bytes of `$len` line must not buy an unbounded allocation.
            let want = (len + 2).min(MAX_BULK_RESERVE);
            if want > buf.len() {
                buf.reserve(want - buf.len());
            }
        }
        Ok(Some(len))
    }

    /// Parses one inline command line.
    fn inline(&mut self, buf: &mut BytesMut) -> Result<Step, ParseError> {
        let Some(lf) = self.find_line_end(buf, b'\n', ParseError::InlineTooBig)? else {
            return Ok(Step::Incomplete);
        };
        let consumed = lf + 1;
        if consumed > self.limits.max_query_buffer {
            return Err(ParseError::QueryBufferLimit);
        }
        let end = if lf > 0 && buf[lf - 1] == b'\r' { lf - 1 } else { lf };
        let line = buf.split_to(consumed).freeze();
        self.line_consumed();
        split_args(&line, end, &mut self.pending).map_err(|()| ParseError::UnbalancedQuotes)?;
        Ok(if self.pending.is_empty() {
            Step::Empty
        } else {
            Step::Complete
        })
    }

    /// Finds the end of the line at the front of `buf` like Redis's `strchr(line, term)`: the
    /// first `term`, unless a NUL byte comes first, in which case the line never ends.
    ///
    /// A line longer than `max_inline_len` bytes (counting up to its end, or everything buffered
    /// while the end is missing) is `too_big`.
    fn find_line_end(&mut self, buf: &[u8], term: u8, too_big: ParseError) -> Result<Option<usize>, ParseError> {
        if !self.nul_blocked {
            // min(): stays in bounds even if a caller broke the append-only contract.
            let from = self.scanned.min(buf.len());
            match find_term_or_nul(&buf[from..], term) {
                Some(offset) => {
                    let at = from + offset;
                    self.scanned = at;
                    if buf[at] == term {
                        if at > self.limits.max_inline_len {
                            return Err(too_big);
                        }
                        return Ok(Some(at));
                    }
                    self.nul_blocked = true;
                }
                None => self.scanned = buf.len(),
            }
        }
        if buf.len() > self.limits.max_inline_len {
            return Err(too_big);
        }
        Ok(None)
    }

    /// Consumes `n` bytes that ended a line.
    fn consume(&mut self, buf: &mut BytesMut, n: usize) {
        buf.advance(n);
        self.line_consumed();
    }

    /// Forgets the line-end search state: the next line starts at the new front of the buffer.
    fn line_consumed(&mut self) {
        self.scanned = 0;
        self.nul_blocked = false;
    }
}

/// The index of the first `term` or NUL byte in `hay`.
fn find_term_or_nul(hay: &[u8], term: u8) -> Option<usize> {
    // Count and length lines are a few bytes long: a plain loop over the first bytes finds their
    // end sooner than memchr's vector setup; long lines (inline commands) go to memchr.
    const HEAD: usize = 16;
    let head = hay.len().min(HEAD);
    match hay[..head].iter().position(|&b| b == term || b == 0) {
        Some(at) => Some(at),
        None => memchr::memchr2(term, 0, &hay[head..]).map(|at| at + head),
    }
}

/// Redis's `string2ll`: an optional `-`, then `0` alone or a digit 1-9 followed by digits, at
/// most 20 characters, within i64. No `+`, no leading zeros, no `-0`, no spaces.
fn string2ll(s: &[u8]) -> Option<i64> {
    // LONG_STR_SIZE is 21: Redis rejects 21 characters and more before looking at them.
    if s.is_empty() || s.len() >= 21 {
        return None;
    }
    if s == b"0" {
        return Some(0);
    }
    let (negative, digits) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, s),
    };
    match digits.first() {
        Some(b'1'..=b'9') => {}
        _ => return None,
    }
    let mut value: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    if negative {
        // -(2^63) is the one negative value without a positive i64 counterpart.
        0i64.checked_sub_unsigned(value)
    } else {
        i64::try_from(value).ok()
    }
}

/// C's `isspace` in the C locale (Redis never sets LC_CTYPE).
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

fn hex_value(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Redis's `sdssplitargs` over `line[..end]`, appending the arguments to `out`.
///
/// Outside quotes, a token ends at space, tab, CR or LF (blanks before a token are any `isspace`
/// byte, so a vertical tab or form feed is skipped there but kept inside a token). `"..."` takes
/// `\n \r \t \b \a \xHH` and `\<any>` escapes; `'...'` takes only `\'`. Quotes may open in the
/// middle of a token (`a"b c"` is `ab c`), and a closing quote must be followed by a blank or the
/// end of the line. An error means unbalanced quotes. Tokens without quotes share `line`'s memory.
fn split_args(line: &Bytes, end: usize, out: &mut Vec<Bytes>) -> Result<(), ()> {
    let s = &line[..end];
    // The C code reads a NUL at the end of the string; `s` holds no NUL (a NUL blocks the line).
    let at = |i: usize| s.get(i).copied().unwrap_or(0);
    let mut p = 0;
    loop {
        while p < s.len() && is_space(s[p]) {
            p += 1;
        }
        if p >= s.len() {
            return Ok(());
        }
        let start = p;
        // Some(..) once the token stops being a plain slice of the line (quotes or escapes).
        let mut owned: Option<Vec<u8>> = None;
        let (mut in_dq, mut in_sq) = (false, false);
        let token_end;
        loop {
            let c = at(p);
            if in_dq {
                let buf = owned.as_mut().expect("quoted tokens are owned");
                if c == b'\\' && at(p + 1) == b'x' {
                    if let (Some(hi), Some(lo)) = (hex_value(at(p + 2)), hex_value(at(p + 3))) {
                        buf.push(hi * 16 + lo);
                        p += 3;
                    } else {
                        // `\x` without two hex digits is the plain escape of `x`.
                        buf.push(b'x');
                        p += 1;
                    }
                } else if c == b'\\' && at(p + 1) != 0 {
                    p += 1;
                    buf.push(match at(p) {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 0x08,
                        b'a' => 0x07,
                        other => other,
                    });
                } else if c == b'"' {
                    if at(p + 1) != 0 && !is_space(at(p + 1)) {
                        return Err(());
                    }
                    token_end = p;
                    p += 1;
                    break;
                } else if c == 0 {
                    return Err(());
                } else {
                    buf.push(c);
                }
            } else if in_sq {
                let buf = owned.as_mut().expect("quoted tokens are owned");
                if c == b'\\' && at(p + 1) == b'\'' {
                    p += 1;
                    buf.push(b'\'');
                } else if c == b'\'' {
                    if at(p + 1) != 0 && !is_space(at(p + 1)) {
                        return Err(());
                    }
                    token_end = p;
                    p += 1;
                    break;
                } else if c == 0 {
                    return Err(());
                } else {
                    buf.push(c);
                }
            } else {
                match c {
                    b' ' | b'\n' | b'\r' | b'\t' | 0 => {
                        token_end = p;
                        if p < s.len() {
                            p += 1;
                        }
                        break;
                    }
                    b'"' | b'\'' => {
                        owned.get_or_insert_with(|| s[start..p].to_vec());
                        if c == b'"' {
                            in_dq = true;
                        } else {
                            in_sq = true;
                        }
                    }
                    _ => {
                        if let Some(buf) = owned.as_mut() {
                            buf.push(c);
                        }
                    }
                }
            }
            p += 1;
        }
        out.push(match owned {
            Some(bytes) => Bytes::from(bytes),
            None => line.slice(start..token_end),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// One observable outcome of feeding a parser.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Out {
        Req(Vec<Vec<u8>>),
        Err(ParseError),
        /// Input ended in the middle of a request (or between requests): waiting for more.
        More,
    }
    use Out::More;

    fn req(args: &[&str]) -> Out {
        Out::Req(args.iter().map(|a| a.as_bytes().to_vec()).collect())
    }
    fn breq(args: &[&[u8]]) -> Out {
        Out::Req(args.iter().map(|a| a.to_vec()).collect())
    }
    fn err(e: ParseError) -> Out {
        Out::Err(e)
    }

    /// Feeds `chunks` one after another, draining requests after each; stops at the first error.
    fn run_chunks<'a>(limits: ParseLimits, chunks: impl IntoIterator<Item = &'a [u8]>) -> Vec<Out> {
        let mut parser = RequestParser::new(limits);
        let mut buf = BytesMut::new();
        let mut args = Vec::new();
        let mut outs = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            loop {
                match parser.next(&mut buf, &mut args) {
                    Ok(true) => outs.push(Out::Req(args.iter().map(|a| a.to_vec()).collect())),
                    Ok(false) => break,
                    Err(e) => {
                        // Poisoned: the same error again, whatever follows.
                        assert_eq!(parser.next(&mut buf, &mut args), Err(e.clone()));
                        outs.push(Out::Err(e));
                        return outs;
                    }
                }
            }
        }
        outs.push(More);
        outs
    }

    fn run_split(limits: ParseLimits, input: &[u8], cuts: &[usize]) -> Vec<Out> {
        let mut chunks = Vec::new();
        let mut from = 0;
        for &cut in cuts {
            let cut = cut.clamp(from, input.len());
            chunks.push(&input[from..cut]);
            from = cut;
        }
        chunks.push(&input[from..]);
        run_chunks(limits, chunks)
    }

    fn check_with(limits: ParseLimits, input: &[u8], expected: &[Out]) {
        let whole = run_chunks(limits, [input]);
        let shown = String::from_utf8_lossy(&input[..input.len().min(200)]);
        assert!(whole == expected, "whole input {shown:?}: got {}", short(&whole));
        if input.len() <= 4096 {
            let bytewise = run_chunks(limits, input.chunks(1));
            assert!(bytewise == expected, "byte by byte {shown:?}: got {}", short(&bytewise));
        }
        for size in [2, 3, 7, 1000] {
            let split = run_chunks(limits, input.chunks(size));
            assert!(split == expected, "chunks of {size} {shown:?}: got {}", short(&split));
        }
    }

    /// Debug text of outcomes, cut short: some tests carry 64 KiB arguments.
    fn short(outs: &[Out]) -> String {
        let text = format!("{outs:?}");
        text.chars().take(300).collect()
    }

    fn check(input: &[u8], expected: &[Out]) {
        check_with(ParseLimits::default(), input, expected);
    }

    #[test]
    fn multibulk_requests() {
        check(b"*1\r\n$4\r\nPING\r\n", &[req(&["PING"]), More]);
        check(
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nvalue\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n",
            &[req(&["SET", "k", "value"]), req(&["GET", "k"]), More],
        );
        // Binary-safe payloads, including CR, LF and NUL.
        check(
            b"*2\r\n$4\r\nECHO\r\n$5\r\na\r\n\x00b\r\n",
            &[breq(&[b"ECHO", b"a\r\n\x00b"]), More],
        );
        // Empty argument.
        check(b"*2\r\n$4\r\nECHO\r\n$0\r\n\r\n", &[req(&["ECHO", ""]), More]);
        // Incomplete requests wait.
        check(b"*2\r\n$3\r\nGET\r\n$1\r\n", &[More]);
        check(b"*2\r\n$3\r\nGET", &[More]);
        check(b"*", &[More]);
        check(b"*1\r", &[More]);
    }

    #[test]
    fn multibulk_counts() {
        // Redis skips empty and negative counts.
        check(b"*0\r\n*1\r\n$4\r\nPING\r\n", &[req(&["PING"]), More]);
        check(b"*-1\r\nPING\r\n", &[req(&["PING"]), More]);
        check(b"*-5\r\nPING\r\n", &[req(&["PING"]), More]);
        check(b"*-9223372036854775808\r\nPING\r\n", &[req(&["PING"]), More]);
        // Counts up to INT_MAX wait for their arguments; above it they are invalid.
        check(b"*2147483647\r\n", &[More]);
        check(b"*2147483648\r\n", &[err(ParseError::InvalidMultibulkLength)]);
        check(b"*3000000000\r\nPING\r\n", &[err(ParseError::InvalidMultibulkLength)]);
        check(b"*99999999999999999999\r\n", &[err(ParseError::InvalidMultibulkLength)]);
        // string2ll: no sign, no leading zero, no -0, no blanks, not empty.
        for bad in [
            &b"*\r\n"[..],
            b"*+1\r\n",
            b"*01\r\n",
            b"*-0\r\n",
            b"*-\r\n",
            b"* 1\r\n",
            b"*1 \r\n",
            b"*x\r\n",
        ] {
            check(bad, &[err(ParseError::InvalidMultibulkLength)]);
        }
        // The count line ends at the first CR; the byte after it is skipped unchecked.
        check(b"*1\rX$4\r\nPING\r\n", &[req(&["PING"]), More]);
        check(b"*1\n$4\r\nPING\r\n", &[err(ParseError::InvalidMultibulkLength)]);
    }

    #[test]
    fn bulk_lengths() {
        let invalid = [err(ParseError::InvalidBulkLength)];
        check(b"*1\r\n$-10\r\n", &invalid);
        check(b"*1\r\n$-1\r\n", &invalid);
        check(b"*1\r\n$2000000000\r\n", &invalid);
        check(b"*1\r\n$536870913\r\n", &invalid);
        check(b"*1\r\n$blabla\r\n", &invalid);
        check(b"*1\r\n$+4\r\nPING\r\n", &invalid);
        check(b"*1\r\n$04\r\nPING\r\n", &invalid);
        check(b"*1\r\n$\r\n", &invalid);
        check(b"*1\r\n$9223372036854775807\r\n", &invalid);
        check(b"*1\r\n$18446744073709551615\r\n", &invalid);
        // proto-max-bulk-len itself is fine (and waits for the payload).
        check(b"*1\r\n$536870912\r\n", &[More]);
        // Missing `$`: Redis names the byte it found.
        check(b"*1\r\nfoo\r\n", &[err(ParseError::ExpectedDollar('f'))]);
        check(b"*1\r\n\r\n", &[err(ParseError::ExpectedDollar('\r'))]);
        check(b"*1\r\n\xffx\r\n", &[err(ParseError::ExpectedDollar('\u{ff}'))]);
        check(b"*2\r\n$3\r\nGET\r\n:1\r\n", &[err(ParseError::ExpectedDollar(':'))]);
        // No CR yet: waits (Redis replies nothing).
        check(b"*1\r\nfoo", &[More]);
    }

    #[test]
    fn bulk_without_trailing_crlf() {
        // Redis skips two bytes after the payload without checking them.
        check(
            b"*2\r\n$4\r\nECHO\r\n$3\r\nfooXY*1\r\n$4\r\nPING\r\n",
            &[req(&["ECHO", "foo"]), req(&["PING"]), More],
        );
        // ... and waits for them.
        check(b"*1\r\n$3\r\nfoo", &[More]);
        check(b"*1\r\n$3\r\nfoo\r", &[More]);
    }

    #[test]
    fn errors_come_after_earlier_requests() {
        check(
            b"PING\r\n*1\r\n$4\r\nPING\r\n*1\r\n$x\r\nPING\r\n",
            &[req(&["PING"]), req(&["PING"]), err(ParseError::InvalidBulkLength)],
        );
    }

    #[test]
    fn inline_requests() {
        check(b"PING\r\n", &[req(&["PING"]), More]);
        check(
            b"SET k v\r\nGET k\n",
            &[req(&["SET", "k", "v"]), req(&["GET", "k"]), More],
        );
        // Blank lines (CRLF, LF, only blanks) are skipped.
        check(b"\r\n\n\r\n  \t \r\nPING\r\n", &[req(&["PING"]), More]);
        // Runs of blanks; leading and trailing blanks.
        check(b"  SET\t\tk   v  \r\n", &[req(&["SET", "k", "v"]), More]);
        // CR inside the line is a delimiter; only one CR before the LF is dropped.
        check(b"ECHO a\rb\r\n", &[req(&["ECHO", "a", "b"]), More]);
        check(b"ECHO a\r\r\n", &[req(&["ECHO", "a"]), More]);
        // Vertical tab / form feed: skipped before a token, part of it inside.
        check(b"\x0bECHO a\x0bb\x0c\r\n", &[breq(&[b"ECHO", b"a\x0bb\x0c"]), More]);
        // A RESP3 type byte starts an inline command named after the line.
        check(b"%1\r\n", &[req(&["%1"]), More]);
        check(b"~2\r\n", &[req(&["~2"]), More]);
        check(b"$4\r\nPING\r\n", &[req(&["$4"]), req(&["PING"]), More]);
        // Waits for the line end.
        check(b"PING", &[More]);
        check(b"PING\r", &[More]);
        // Bytes >= 0x80 are not blanks.
        check(b"ECHO \xa0x\r\n", &[breq(&[b"ECHO", b"\xa0x"]), More]);
    }

    #[test]
    fn inline_quoting() {
        check(br#"SET "a b" 'c d'"#, &[More]);
        check(b"SET \"a b\" 'c d'\r\n", &[req(&["SET", "a b", "c d"]), More]);
        check(
            b"ECHO \"\\n\\r\\t\\b\\a\\\\\\\"\\x41\\xfF\\q\\x4\\xzz\"\r\n",
            &[breq(&[b"ECHO", b"\n\r\t\x08\x07\\\"A\xffqx4xzz"]), More],
        );
        // Single quotes: only \' is an escape.
        check(
            b"ECHO 'it\\'s \\n \"x\"'\r\n",
            &[req(&["ECHO", "it's \\n \"x\""]), More],
        );
        // Empty quoted strings are arguments.
        check(b"ECHO \"\" ''\r\n", &[req(&["ECHO", "", ""]), More]);
        // Quotes may open in the middle of a token.
        check(b"ECHO a\"b c\"\r\n", &[req(&["ECHO", "ab c"]), More]);
        check(b"ECHO a'b c'\r\n", &[req(&["ECHO", "ab c"]), More]);
        // A closing quote followed by a tab or a vertical tab is fine.
        check(b"ECHO \"a\"\tb\r\n", &[req(&["ECHO", "a", "b"]), More]);
        check(b"ECHO \"a\"\x0bb\r\n", &[req(&["ECHO", "a", "b"]), More]);
        // A quote closing right before the CR that precedes LF is at the end of the line.
        check(b"ECHO \"a\"\r\n", &[req(&["ECHO", "a"]), More]);
    }

    #[test]
    fn inline_unbalanced_quotes() {
        let unbalanced = [err(ParseError::UnbalancedQuotes)];
        check(b"ECHO \"foo\r\nPING\r\n", &unbalanced);
        check(b"ECHO 'foo\r\n", &unbalanced);
        check(b"ECHO \"foo\"bar\r\n", &unbalanced);
        check(b"ECHO 'foo'bar\r\n", &unbalanced);
        check(b"ECHO \"foo\\\"\r\n", &unbalanced);
        check(b"ECHO 'foo\\'\r\n", &unbalanced);
        check(b"ECHO \"foo\\\r\n", &unbalanced);
        check(
            b"PING\r\nECHO \"\r\n",
            &[req(&["PING"]), err(ParseError::UnbalancedQuotes)],
        );
    }

    #[test]
    fn mixed_pipeline() {
        check(
            b"*1\r\n$4\r\nPING\r\nPING\r\n*1\r\n$4\r\nPING\r\n\r\nECHO x\n",
            &[
                req(&["PING"]),
                req(&["PING"]),
                req(&["PING"]),
                req(&["ECHO", "x"]),
                More,
            ],
        );
    }

    #[test]
    fn nul_blocks_lines() {
        // Redis finds line ends with strchr: a NUL first means the line never ends.
        check(b"PING\r\n\x00junk\r\nPING\r\n", &[req(&["PING"]), More]);
        check(b"ECHO a\x00b\r\nPING\r\n", &[More]);
        check(b"*1\x00\r\n$4\r\nPING\r\n", &[More]);
        check(b"*1\r\n$4\x00\r\nPING\r\n", &[More]);
        // ... until it is too big.
        let mut junk = b"\x00".to_vec();
        junk.resize(junk.len() + 70_000, b'x');
        junk.extend_from_slice(b"\r\n");
        check(&junk, &[err(ParseError::InlineTooBig)]);
        // NUL inside a bulk payload is just data.
        check(
            b"*2\r\n$4\r\nECHO\r\n$3\r\na\x00b\r\n",
            &[breq(&[b"ECHO", b"a\x00b"]), More],
        );
    }

    #[test]
    fn lines_over_64k() {
        let long = |prefix: &[u8], n: usize, suffix: &[u8]| {
            let mut v = prefix.to_vec();
            v.resize(v.len() + n, b'1');
            v.extend_from_slice(suffix);
            v
        };
        check(&long(b"", 70_000, b""), &[err(ParseError::InlineTooBig)]);
        check(&long(b"", 70_000, b"\r\n"), &[err(ParseError::InlineTooBig)]);
        check(&long(b"*", 70_000, b""), &[err(ParseError::MultibulkCountTooBig)]);
        check(&long(b"*", 70_000, b"\r\n"), &[err(ParseError::MultibulkCountTooBig)]);
        check(&long(b"*1\r\n$", 70_000, b""), &[err(ParseError::BulkCountTooBig)]);
        check(&long(b"*1\r\nx", 70_000, b""), &[err(ParseError::BulkCountTooBig)]);
        // The limit counts every byte before the LF, a CR included (Redis counts the bytes
        // buffered while the LF is missing).
        let at_limit = long(b"", 64 * 1024, b"\n");
        check(&at_limit, &[Out::Req(vec![at_limit[..64 * 1024].to_vec()]), More]);
        let at_limit = long(b"", 64 * 1024 - 1, b"\r\n");
        check(&at_limit, &[Out::Req(vec![at_limit[..64 * 1024 - 1].to_vec()]), More]);
        check(&long(b"", 64 * 1024, b"\r\n"), &[err(ParseError::InlineTooBig)]);
        check(&long(b"", 64 * 1024 + 1, b"\n"), &[err(ParseError::InlineTooBig)]);
        // A 64 KiB count line of digits has a valid length, but not a valid count.
        check(
            &long(b"*", 64 * 1024 - 1, b"\r\n"),
            &[err(ParseError::InvalidMultibulkLength)],
        );
    }

    #[test]
    fn big_bulk() {
        let payload = vec![b'v'; 100_000];
        let mut input = format!("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n${}\r\n", payload.len()).into_bytes();
        input.extend_from_slice(&payload);
        input.extend_from_slice(b"\r\n");
        let want = [breq(&[b"SET", b"k", &payload]), More];
        check(&input, &want);
        assert_eq!(run_split(ParseLimits::default(), &input, &[30, 5000, 99_000]), want);
    }

    #[test]
    fn query_buffer_limit() {
        let limits = ParseLimits {
            max_query_buffer: 26,
            ..ParseLimits::default()
        };
        // 26 bytes: fine.
        let ok = b"*2\r\n$4\r\nECHO\r\n$6\r\n123456\r\n";
        assert_eq!(ok.len(), 26);
        check_with(limits, ok, &[req(&["ECHO", "123456"]), More]);
        // 27: refused as soon as the `$len` line says so.
        check_with(
            limits,
            b"*2\r\n$4\r\nECHO\r\n$7\r\n",
            &[err(ParseError::QueryBufferLimit)],
        );
        // Each request counts on its own.
        let echo = req(&["ECHO", "123456"]);
        check_with(
            limits,
            &ok.repeat(4),
            &[echo.clone(), echo.clone(), echo.clone(), echo, More],
        );
        // Inline lines too.
        let ok = b"ECHO 1234567890123456789\r\n";
        assert_eq!(ok.len(), 26);
        check_with(limits, ok, &[req(&["ECHO", "1234567890123456789"]), More]);
        check_with(
            limits,
            b"ECHO 12345678901234567890\r\n",
            &[err(ParseError::QueryBufferLimit)],
        );
        // Huge lengths never overflow.
        let huge = b"*2\r\n$1\r\nx\r\n$9223372036854775807\r\n";
        let limits = ParseLimits {
            max_bulk_len: usize::MAX,
            ..ParseLimits::default()
        };
        check_with(limits, huge, &[err(ParseError::QueryBufferLimit)]);
        // With no limits at all it just waits (without reserving 2^63 bytes).
        let limits = ParseLimits {
            max_bulk_len: usize::MAX,
            max_query_buffer: usize::MAX,
            ..ParseLimits::default()
        };
        check_with(limits, huge, &[More]);
    }

    #[test]
    fn small_limits() {
        let limits = ParseLimits {
            max_bulk_len: 3,
            max_inline_len: 8,
            max_multibulk_len: 2,
            max_query_buffer: 1 << 20,
        };
        check_with(
            limits,
            b"*2\r\n$3\r\nfoo\r\n$3\r\nbar\r\n",
            &[req(&["foo", "bar"]), More],
        );
        check_with(limits, b"*3\r\n", &[err(ParseError::InvalidMultibulkLength)]);
        check_with(limits, b"*1\r\n$4\r\n", &[err(ParseError::InvalidBulkLength)]);
        check_with(limits, b"1234567\r\n", &[req(&["1234567"]), More]);
        check_with(limits, b"12345678\n", &[req(&["12345678"]), More]);
        check_with(limits, b"12345678\r\n", &[err(ParseError::InlineTooBig)]);
        check_with(limits, b"*1234567\r\n", &[err(ParseError::InvalidMultibulkLength)]);
        check_with(limits, b"*12345678\r\n", &[err(ParseError::MultibulkCountTooBig)]);
    }

    #[test]
    fn args_vector_contract() {
        let mut parser = RequestParser::new(ParseLimits::default());
        let mut buf = BytesMut::from(&b"*2\r\n$3\r\nGET\r\n$1\r\nk"[..]);
        let mut args = vec![Bytes::from_static(b"stale")];
        assert_eq!(parser.next(&mut buf, &mut args), Ok(false));
        assert!(args.is_empty(), "args cleared even when incomplete");
        // A different vector on the next call works: partial state lives in the parser.
        let mut other = Vec::new();
        buf.extend_from_slice(b"\r\n");
        assert_eq!(parser.next(&mut buf, &mut other), Ok(true));
        assert_eq!(other, vec![Bytes::from_static(b"GET"), Bytes::from_static(b"k")]);
        assert!(buf.is_empty());
    }

    #[test]
    fn arguments_share_the_buffer() {
        let mut parser = RequestParser::default();
        let mut buf = BytesMut::from(&b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\nSET k v\r\n"[..]);
        let base = buf.as_ptr() as usize;
        let end = base + buf.len();
        let mut args = Vec::new();
        for _ in 0..2 {
            assert_eq!(parser.next(&mut buf, &mut args), Ok(true));
            for arg in &args {
                let at = arg.as_ptr() as usize;
                assert!(at >= base && at + arg.len() <= end, "argument was copied");
            }
        }
    }

    #[test]
    fn string2ll_matches_redis() {
        assert_eq!(string2ll(b"0"), Some(0));
        assert_eq!(string2ll(b"-1"), Some(-1));
        assert_eq!(string2ll(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(string2ll(b"-9223372036854775808"), Some(i64::MIN));
        for bad in [
            &b""[..],
            b"-",
            b"+1",
            b"01",
            b"-0",
            b"00",
            b"9223372036854775808",
            b"-9223372036854775809",
            b"1a",
            b" 1",
            b"1 ",
            b"18446744073709551616",
            b"123456789012345678901",
        ] {
            assert_eq!(string2ll(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    // ---- property tests ----

    /// How one generated request is written on the wire.
    #[derive(Debug, Clone)]
    enum Wire {
        Multibulk(Vec<Vec<u8>>),
        Inline(Vec<Vec<u8>>, bool),
        /// `*0`, `*-1` or a blank line: produces no request.
        Skipped(&'static [u8]),
    }

    fn plain_ok(arg: &[u8]) -> bool {
        !arg.is_empty()
            && arg
                .iter()
                .all(|&b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n' | 0x0b | 0x0c | 0 | b'"' | b'\''))
    }

    /// Writes `args` as an inline line, picking a quoting style per argument.
    fn inline_line(args: &[Vec<u8>], seed: u64, lf_only: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let mut pick = seed;
        for (i, arg) in args.iter().enumerate() {
            pick = pick.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let choice = (pick >> 33) % 3;
            if i > 0 || choice == 0 {
                out.push(if pick & 1 == 0 { b' ' } else { b'\t' });
                if (pick >> 7) & 3 == 0 {
                    out.extend_from_slice(b"\x0b \x0c");
                }
            }
            let starts_star = i == 0 && arg.first() == Some(&b'*');
            if choice == 0 && plain_ok(arg) && !starts_star {
                out.extend_from_slice(arg);
            } else if choice == 1 && !arg.contains(&b'\n') && !arg.contains(&0) && arg.last() != Some(&b'\\') {
                out.push(b'\'');
                for &b in arg {
                    if b == b'\'' {
                        out.extend_from_slice(b"\\'");
                    } else {
                        out.push(b);
                    }
                }
                out.push(b'\'');
            } else {
                out.push(b'"');
                for &b in arg {
                    match b {
                        b'"' => out.extend_from_slice(b"\\\""),
                        b'\\' => out.extend_from_slice(b"\\\\"),
                        b'\n' => out.extend_from_slice(b"\\n"),
                        b'\r' => out.extend_from_slice(b"\\r"),
                        b'\t' => out.extend_from_slice(b"\\t"),
                        0x07 => out.extend_from_slice(b"\\a"),
                        0x08 => out.extend_from_slice(b"\\b"),
                        b if !(0x20..0x7f).contains(&b) => out.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
                        b => out.push(b),
                    }
                }
                out.push(b'"');
            }
        }
        if (pick >> 11) & 1 == 0 {
            out.push(b' ');
        }
        out.extend_from_slice(if lf_only { b"\n" } else { b"\r\n" });
        out
    }

    fn encode(wires: &[Wire], seed: u64) -> (Vec<u8>, Vec<Out>) {
        let mut input = Vec::new();
        let mut expected = Vec::new();
        for (i, w) in wires.iter().enumerate() {
            match w {
                Wire::Multibulk(args) => {
                    input.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
                    for a in args {
                        input.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
                        input.extend_from_slice(a);
                        input.extend_from_slice(b"\r\n");
                    }
                    expected.push(Out::Req(args.clone()));
                }
                Wire::Inline(args, lf_only) => {
                    input.extend_from_slice(&inline_line(args, seed ^ i as u64, *lf_only));
                    expected.push(Out::Req(args.clone()));
                }
                Wire::Skipped(bytes) => input.extend_from_slice(bytes),
            }
        }
        expected.push(More);
        (input, expected)
    }

    fn arg() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..40),
            "[a-zA-Z0-9:_{}*]{1,12}".prop_map(String::into_bytes),
        ]
    }

    fn wire() -> impl Strategy<Value = Wire> {
        prop_oneof![
            4 => proptest::collection::vec(arg(), 1..6).prop_map(Wire::Multibulk),
            3 => (proptest::collection::vec(arg(), 1..6), any::<bool>()).prop_map(|(a, lf)| Wire::Inline(a, lf)),
            1 => prop_oneof![
                Just(&b"*0\r\n"[..]),
                Just(&b"*-1\r\n"[..]),
                Just(&b"\r\n"[..]),
                Just(&b"\n"[..]),
                Just(&b" \t \r\n"[..]),
            ]
            .prop_map(Wire::Skipped),
        ]
    }

    proptest! {
        #[test]
        fn valid_pipelines_survive_any_split(
            wires in proptest::collection::vec(wire(), 1..12),
            seed in any::<u64>(),
            mut cuts in proptest::collection::vec(any::<usize>(), 0..16),
        ) {
            let (input, expected) = encode(&wires, seed);
            prop_assert_eq!(run_chunks(ParseLimits::default(), [&input[..]]), expected.clone());
            for cut in &mut cuts {
                *cut %= input.len() + 1;
            }
            cuts.sort_unstable();
            prop_assert_eq!(run_split(ParseLimits::default(), &input, &cuts), expected.clone());
            prop_assert_eq!(run_chunks(ParseLimits::default(), input.chunks(1)), expected);
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_split_invariant(
            input in proptest::collection::vec(
                prop_oneof![
                    any::<u8>(),
                    Just(b'\r'), Just(b'\n'), Just(b'*'), Just(b'$'), Just(b'"'), Just(b'\''),
                    Just(b'\\'), Just(b' '), Just(b'0'), Just(b'1'), Just(b'2'), Just(b'-'), Just(0u8),
                ],
                0..300,
            ),
            mut cuts in proptest::collection::vec(any::<usize>(), 0..12),
            small in any::<bool>(),
        ) {
            let limits = if small {
                ParseLimits { max_bulk_len: 20, max_inline_len: 16, max_multibulk_len: 5, max_query_buffer: 64 }
            } else {
                ParseLimits::default()
            };
            let whole = run_chunks(limits, [&input[..]]);
            for cut in &mut cuts {
                *cut %= input.len() + 1;
            }
            cuts.sort_unstable();
            prop_assert_eq!(run_split(limits, &input, &cuts), whole.clone());
            prop_assert_eq!(run_chunks(limits, input.chunks(1)), whole);
        }

        #[test]
        fn structured_junk_split_invariant(
            parts in proptest::collection::vec(
                prop_oneof![
                    Just(&b"*2\r\n"[..]), Just(&b"*1\r\n"[..]), Just(&b"$3\r\n"[..]), Just(&b"$1\r\n"[..]),
                    Just(&b"foo\r\n"[..]), Just(&b"\r\n"[..]), Just(&b"x"[..]), Just(&b"\"a b\" "[..]),
                    Just(&b"'c'"[..]), Just(&b"*0\r\n"[..]), Just(&b"$-1\r\n"[..]), Just(&b"\x00"[..]),
                    Just(&b"\n"[..]), Just(&b"$99\r\n"[..]), Just(&b"*-3\r\n"[..]),
                ],
                0..40,
            ),
            mut cuts in proptest::collection::vec(any::<usize>(), 0..12),
        ) {
            let limits = ParseLimits { max_bulk_len: 64, max_inline_len: 24, max_multibulk_len: 8, max_query_buffer: 100 };
            let input = parts.concat();
            let whole = run_chunks(limits, [&input[..]]);
            for cut in &mut cuts {
                *cut %= input.len() + 1;
            }
            cuts.sort_unstable();
            prop_assert_eq!(run_split(limits, &input, &cuts), whole.clone());
            prop_assert_eq!(run_chunks(limits, input.chunks(1)), whole);
        }
    }
}
