//! Reply encoding for RESP2 and RESP3.
//!
//! Every method appends one complete RESP value (or an aggregate header) to the output buffer.
//! RESP3-only types degrade to their RESP2 equivalents exactly as Redis 7 does:
//! null → `$-1` (or `*-1` for [`ReplyEncoder::null_array`]), map → flat array of 2n, set → array,
//! double → bulk string, boolean → integer 0/1, verbatim string → bulk string.
//!
//! Doubles print as Redis 7.2+ does (`d2string`): the shortest text that parses back to the same
//! value, integral values without `.0`, `inf`/`-inf`/`nan`. Redis 7.0 printed `%.17g` instead
//! (`1.1` → `1.1000000000000001`); corekv follows the newer, shorter form.
//!
//! Integers go through `itoa` and doubles through `ryu` on the stack: nothing is allocated
//! except when `out` itself has to grow.

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
    pub fn simple(&mut self, text: &str) {
        debug_assert!(
            !text.bytes().any(|b| b == b'\r' || b == b'\n'),
            "simple string with CR/LF: {text:?}"
        );
        self.out.reserve(text.len() + 3);
        self.out.extend_from_slice(b"+");
        self.out.extend_from_slice(text.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }
    /// `+OK\r\n`
    pub fn ok(&mut self) {
        self.out.extend_from_slice(b"+OK\r\n");
    }
    /// `-text\r\n`; `text` starts with the error code, e.g. `ERR syntax error` or `WRONGTYPE ...`.
    /// CR and LF inside `text` are replaced by spaces so the reply stays one line.
    pub fn error(&mut self, text: &str) {
        let text = text.as_bytes();
        self.out.reserve(text.len() + 3);
        self.out.extend_from_slice(b"-");
        // Copy the runs between line breaks in bulk; error texts (which may echo client input, as
        // Redis's do) must not be able to end the reply early and inject a forged one.
        let mut from = 0;
        for at in memchr::memchr2_iter(b'\r', b'\n', text) {
            self.out.extend_from_slice(&text[from..at]);
            self.out.extend_from_slice(b" ");
            from = at + 1;
        }
        self.out.extend_from_slice(&text[from..]);
        self.out.extend_from_slice(b"\r\n");
    }
    /// `:n\r\n`
    pub fn integer(&mut self, n: i64) {
        self.header(b':', n);
    }
    /// `$len\r\nbytes\r\n`
    pub fn bulk(&mut self, bytes: &[u8]) {
        // One reservation for header + payload + CRLF so the payload copy never reallocates twice.
        self.out.reserve(bytes.len() + 25);
        self.header(b'$', bytes.len());
        self.out.extend_from_slice(bytes);
        self.out.extend_from_slice(b"\r\n");
    }
    /// The null bulk string: `$-1\r\n` in RESP2, `_\r\n` in RESP3.
    pub fn null(&mut self) {
        self.out.extend_from_slice(match self.protocol {
            Protocol::Resp2 => b"$-1\r\n".as_slice(),
            Protocol::Resp3 => b"_\r\n",
        });
    }
    /// The null array: `*-1\r\n` in RESP2, `_\r\n` in RESP3.
    pub fn null_array(&mut self) {
        self.out.extend_from_slice(match self.protocol {
            Protocol::Resp2 => b"*-1\r\n".as_slice(),
            Protocol::Resp3 => b"_\r\n",
        });
    }
    /// `*n\r\n` followed by n values the caller writes.
    pub fn array_len(&mut self, n: usize) {
        self.header(b'*', n);
    }
    /// RESP3 `%n\r\n` (n key/value pairs follow); RESP2 `*2n\r\n`.
    pub fn map_len(&mut self, n: usize) {
        match self.protocol {
            Protocol::Resp2 => {
                // n pairs in memory can never reach usize::MAX / 2; saturate rather than wrap.
                self.header(b'*', n.saturating_mul(2))
            }
            Protocol::Resp3 => self.header(b'%', n),
        }
    }
    /// RESP3 `~n\r\n`; RESP2 `*n\r\n`.
    pub fn set_len(&mut self, n: usize) {
        match self.protocol {
            Protocol::Resp2 => self.header(b'*', n),
            Protocol::Resp3 => self.header(b'~', n),
        }
    }
    /// RESP3 `,value\r\n` (`inf`, `-inf`, `nan`); RESP2 the same text as a bulk string.
    /// The text is Redis's `%.17g` style: shortest form that round-trips.
    ///
    /// Precisely, the text is what Redis 7.2+ `d2string` prints (see `format_double`): Redis
    /// 7.0 still printed `%.17g` (`1.1` → `1.1000000000000001`); 7.2 switched to the shortest
    /// round-trip form, which is what corekv promises.
    pub fn double(&mut self, value: f64) {
        let mut text = [0u8; DOUBLE_BUF];
        let len = format_double(value, &mut text);
        let text = &text[..len];
        match self.protocol {
            Protocol::Resp2 => self.bulk(text),
            Protocol::Resp3 => {
                self.out.reserve(len + 3);
                self.out.extend_from_slice(b",");
                self.out.extend_from_slice(text);
                self.out.extend_from_slice(b"\r\n");
            }
        }
    }
    /// RESP3 `#t`/`#f`; RESP2 `:1`/`:0`.
    pub fn boolean(&mut self, value: bool) {
        self.out.extend_from_slice(match (self.protocol, value) {
            (Protocol::Resp2, false) => b":0\r\n".as_slice(),
            (Protocol::Resp2, true) => b":1\r\n",
            (Protocol::Resp3, false) => b"#f\r\n",
            (Protocol::Resp3, true) => b"#t\r\n",
        });
    }
    /// RESP3 `=len\r\nfmt:text\r\n` (`fmt` is three bytes such as `txt`); RESP2 a bulk string.
    pub fn verbatim(&mut self, format: &str, text: &[u8]) {
        debug_assert_eq!(format.len(), 3, "verbatim format must be 3 bytes: {format:?}");
        match self.protocol {
            Protocol::Resp2 => self.bulk(text),
            Protocol::Resp3 => {
                self.out.reserve(text.len() + 29);
                self.header(b'=', text.len() + 4);
                self.out.extend_from_slice(format.as_bytes());
                self.out.extend_from_slice(b":");
                self.out.extend_from_slice(text);
                self.out.extend_from_slice(b"\r\n");
            }
        }
    }
    /// Appends already-encoded RESP bytes (for replies produced on another shard).
    pub fn raw(&mut self, encoded: &[u8]) {
        self.out.extend_from_slice(encoded);
    }

    /// `<kind><n>\r\n`: an integer reply, or the length or count of an aggregate.
    fn header(&mut self, kind: u8, n: impl itoa::Integer) {
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(n).as_bytes();
        self.out.reserve(digits.len() + 3);
        self.out.extend_from_slice(&[kind]);
        self.out.extend_from_slice(digits);
        self.out.extend_from_slice(b"\r\n");
    }
}

/// Room for the longest text [`format_double`] writes (`-` + 17 digits + 7 zeros is 25 bytes;
/// `-d.16digitse-308` is 24).
const DOUBLE_BUF: usize = 32;

/// Formats `value` as Redis 7.2+ `d2string` does, into `out`; returns the length.
///
/// - NaN → `nan` (whatever its sign), ±∞ → `inf`/`-inf`, ±0 → `0`/`-0`;
/// - an integral value with |v| ≤ 2^62 (Redis's `double2ll` range) → plain integer, no `.0`;
/// - otherwise the shortest digits that round-trip (Ryu; Redis uses Grisu2, which yields the
///   same digits except in rare cases where Grisu2 is not shortest), laid out by the rules of
///   Redis's `fpconv_dtoa`: plain integer while the exponent < digits + 7, plain decimal while
///   the exponent > -7 (or the decimal exponent is < 4), else `d.ddde+X` / `d.ddde-X` with the
///   exponent unpadded (`1e+20`, `1.5e-7`).
fn format_double(value: f64, out: &mut [u8; DOUBLE_BUF]) -> usize {
    if value.is_nan() {
        return put(out, 0, b"nan");
    }
    if value.is_infinite() {
        return put(out, 0, if value > 0.0 { b"inf" } else { b"-inf" });
    }
    if value == 0.0 {
        return put(out, 0, if value.is_sign_negative() { b"-0" } else { b"0" });
    }
    // 2^62 is exactly representable; `as i64` is exact for every integral value in range.
    const INT_LIMIT: f64 = 4_611_686_018_427_387_904.0;
    if (-INT_LIMIT..=INT_LIMIT).contains(&value) && value.fract() == 0.0 {
        let mut digits = itoa::Buffer::new();
        return put(out, 0, digits.format(value as i64).as_bytes());
    }

    // Decompose Ryu's shortest text (e.g. `1.5e-7`, `0.001`, `123.45`, `1e20`) into significant
    // digits D and exponent K with |value| = D × 10^K.
    let mut ryu_buf = ryu::Buffer::new();
    let text = ryu_buf.format_finite(value.abs()).as_bytes();
    let (mantissa, exp10) = match text.iter().position(|&b| b == b'e') {
        Some(e) => {
            let exp = std::str::from_utf8(&text[e + 1..])
                .ok()
                .and_then(|s| s.parse::<i32>().ok())
                .unwrap_or(0);
            (&text[..e], exp)
        }
        None => (text, 0),
    };
    let mut digits = [0u8; 24];
    let mut n = 0usize;
    let mut frac_len = 0i32;
    let mut seen_point = false;
    for &b in mantissa {
        if b == b'.' {
            seen_point = true;
        } else {
            // Leading zeros (`0.001`) are not significant.
            if n > 0 || b != b'0' {
                digits[n] = b;
                n += 1;
            }
            if seen_point {
                frac_len += 1;
            }
        }
    }
    let mut k = exp10 - frac_len;
    while n > 1 && digits[n - 1] == b'0' {
        n -= 1;
        k += 1;
    }
    let digits = &digits[..n];
    let nd = n as i32;

    let mut len = 0;
    if value < 0.0 {
        len = put(out, len, b"-");
    }
    let exp = (k + nd - 1).abs();
    if k >= 0 && exp < nd + 7 {
        len = put(out, len, digits);
        for _ in 0..k {
            len = put(out, len, b"0");
        }
    } else if k < 0 && (k > -7 || exp < 4) {
        let offset = nd + k;
        if offset <= 0 {
            len = put(out, len, b"0.");
            for _ in 0..-offset {
                len = put(out, len, b"0");
            }
            len = put(out, len, digits);
        } else {
            let offset = offset as usize;
            len = put(out, len, &digits[..offset]);
            len = put(out, len, b".");
            len = put(out, len, &digits[offset..]);
        }
    } else {
        len = put(out, len, &digits[..1]);
        if n > 1 {
            len = put(out, len, b".");
            len = put(out, len, &digits[1..]);
        }
        len = put(out, len, if k + nd - 1 < 0 { b"e-" } else { b"e+" });
        let mut e = itoa::Buffer::new();
        len = put(out, len, e.format(exp).as_bytes());
    }
    len
}

/// Copies `bytes` into `out` at `at`, returning the new end.
fn put(out: &mut [u8], at: usize, bytes: &[u8]) -> usize {
    out[at..at + bytes.len()].copy_from_slice(bytes);
    at + bytes.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(protocol: Protocol, f: impl FnOnce(&mut ReplyEncoder<'_>)) -> Vec<u8> {
        let mut out = BytesMut::new();
        let mut e = ReplyEncoder::new(&mut out, protocol);
        assert_eq!(e.protocol(), protocol);
        f(&mut e);
        out.to_vec()
    }

    /// Checks one method's output in both protocols.
    fn check(f: impl Fn(&mut ReplyEncoder<'_>), resp2: &[u8], resp3: &[u8]) {
        let got2 = enc(Protocol::Resp2, &f);
        assert_eq!(got2, resp2, "RESP2: {:?}", String::from_utf8_lossy(&got2));
        let got3 = enc(Protocol::Resp3, &f);
        assert_eq!(got3, resp3, "RESP3: {:?}", String::from_utf8_lossy(&got3));
    }

    #[test]
    fn default_protocol_is_resp2() {
        assert_eq!(Protocol::default(), Protocol::Resp2);
    }

    #[test]
    fn simple_and_ok() {
        check(|e| e.simple("PONG"), b"+PONG\r\n", b"+PONG\r\n");
        check(|e| e.simple(""), b"+\r\n", b"+\r\n");
        check(|e| e.ok(), b"+OK\r\n", b"+OK\r\n");
    }

    #[test]
    fn error_replaces_line_breaks() {
        check(
            |e| e.error("ERR syntax error"),
            b"-ERR syntax error\r\n",
            b"-ERR syntax error\r\n",
        );
        check(
            |e| e.error("ERR a\r\nb\nc\rd"),
            b"-ERR a  b c d\r\n",
            b"-ERR a  b c d\r\n",
        );
        check(|e| e.error("\r\n"), b"-  \r\n", b"-  \r\n");
        check(|e| e.error(""), b"-\r\n", b"-\r\n");
    }

    #[test]
    fn integers() {
        for (n, text) in [
            (0i64, "0"),
            (1, "1"),
            (-1, "-1"),
            (1234567890, "1234567890"),
            (i64::MAX, "9223372036854775807"),
            (i64::MIN, "-9223372036854775808"),
        ] {
            let want = format!(":{text}\r\n");
            check(|e| e.integer(n), want.as_bytes(), want.as_bytes());
        }
    }

    #[test]
    fn bulk_strings() {
        check(|e| e.bulk(b"hello"), b"$5\r\nhello\r\n", b"$5\r\nhello\r\n");
        check(|e| e.bulk(b""), b"$0\r\n\r\n", b"$0\r\n\r\n");
        check(|e| e.bulk(b"a\r\nb"), b"$4\r\na\r\nb\r\n", b"$4\r\na\r\nb\r\n");
        let big = vec![b'x'; 100_000];
        let mut want = b"$100000\r\n".to_vec();
        want.extend_from_slice(&big);
        want.extend_from_slice(b"\r\n");
        check(|e| e.bulk(&big), &want, &want);
    }

    #[test]
    fn nulls() {
        check(|e| e.null(), b"$-1\r\n", b"_\r\n");
        check(|e| e.null_array(), b"*-1\r\n", b"_\r\n");
    }

    #[test]
    fn aggregates() {
        check(|e| e.array_len(0), b"*0\r\n", b"*0\r\n");
        check(|e| e.array_len(3), b"*3\r\n", b"*3\r\n");
        check(|e| e.map_len(2), b"*4\r\n", b"%2\r\n");
        check(|e| e.map_len(0), b"*0\r\n", b"%0\r\n");
        check(|e| e.set_len(5), b"*5\r\n", b"~5\r\n");
        check(
            |e| {
                e.map_len(1);
                e.bulk(b"k");
                e.integer(7);
            },
            b"*2\r\n$1\r\nk\r\n:7\r\n",
            b"%1\r\n$1\r\nk\r\n:7\r\n",
        );
    }

    #[test]
    fn booleans() {
        check(|e| e.boolean(true), b":1\r\n", b"#t\r\n");
        check(|e| e.boolean(false), b":0\r\n", b"#f\r\n");
    }

    #[test]
    fn verbatim_strings() {
        check(
            |e| e.verbatim("txt", b"Some string"),
            b"$11\r\nSome string\r\n",
            b"=15\r\ntxt:Some string\r\n",
        );
        check(|e| e.verbatim("mkd", b""), b"$0\r\n\r\n", b"=4\r\nmkd:\r\n");
    }

    #[test]
    fn raw_passthrough() {
        check(|e| e.raw(b":1\r\n"), b":1\r\n", b":1\r\n");
    }

    fn double_text(v: f64) -> String {
        let mut buf = [0u8; DOUBLE_BUF];
        let n = format_double(v, &mut buf);
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn double_texts() {
        for (v, text) in [
            (1.5, "1.5"),
            (-1.5, "-1.5"),
            (1.1, "1.1"),
            (0.1, "0.1"),
            (3.0, "3"),
            (-3.0, "-3"),
            (0.0, "0"),
            (-0.0, "-0"),
            (f64::INFINITY, "inf"),
            (f64::NEG_INFINITY, "-inf"),
            (f64::NAN, "nan"),
            (-f64::NAN, "nan"),
            (1e17, "100000000000000000"),
            (4611686018427387904.0, "4611686018427387904"),
            (1e19, "1e+19"),
            (1e20, "1e+20"),
            (1.5e300, "1.5e+300"),
            (1.2345e22, "1.2345e+22"),
            (1.2345678901234567e23, "123456789012345670000000"),
            (0.001, "0.001"),
            (0.000001, "0.000001"),
            (1e-7, "1e-7"),
            (1.5e-7, "1.5e-7"),
            (1.2345678e-5, "1.2345678e-5"),
            (123.456, "123.456"),
            (2.5e-3, "0.0025"),
            (1234567.8901234567, "1.2345678901234567e+6"),
            (5e-324, "5e-324"),
            (f64::MAX, "1.7976931348623157e+308"),
            (-f64::MAX, "-1.7976931348623157e+308"),
        ] {
            assert_eq!(double_text(v), text, "{v:e}");
        }
    }

    #[test]
    fn double_texts_round_trip() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..20_000 {
            // xorshift over raw bit patterns covers every exponent range.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = f64::from_bits(x);
            if !v.is_finite() {
                continue;
            }
            let text = double_text(v);
            let back: f64 = text.parse().unwrap();
            assert_eq!(back.to_bits(), v.to_bits(), "{v:e} printed as {text}");
        }
    }

    #[test]
    fn double_replies() {
        check(|e| e.double(1.5), b"$3\r\n1.5\r\n", b",1.5\r\n");
        check(|e| e.double(10.0), b"$2\r\n10\r\n", b",10\r\n");
        check(|e| e.double(f64::INFINITY), b"$3\r\ninf\r\n", b",inf\r\n");
        check(|e| e.double(f64::NEG_INFINITY), b"$4\r\n-inf\r\n", b",-inf\r\n");
        check(|e| e.double(f64::NAN), b"$3\r\nnan\r\n", b",nan\r\n");
        check(|e| e.double(-1e-7), b"$5\r\n-1e-7\r\n", b",-1e-7\r\n");
    }

    #[test]
    fn appends_without_clearing() {
        let mut out = BytesMut::from(&b"x"[..]);
        let mut e = ReplyEncoder::new(&mut out, Protocol::Resp3);
        e.ok();
        e.null();
        assert_eq!(&out[..], b"x+OK\r\n_\r\n");
    }
}
