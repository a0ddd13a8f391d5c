//! RESP2 for the benchmark: `GET`/`SET` requests as arrays of bulk strings, and a reply reader.
//!
//! `corekv_net::resp` parses requests, not replies, and the `redis` crate's parser either reads
//! from a blocking `Read` or needs its async codec stack (tokio-util, futures), and builds a
//! `Value` per reply. A benchmark only needs to know a reply's kind and where it ends, so
//! [`decode_reply`] is a small incremental reader that allocates nothing except for the text of
//! an error reply. It accepts every RESP2 type (`+ - : $ *`, nested arrays, null bulk and null
//! array) and refuses anything else as a protocol error.

use bytes::{Buf, Bytes, BytesMut};

use super::{Op, Reply};

/// Deepest array nesting accepted in a reply (GET and SET replies have none).
const MAX_DEPTH: usize = 32;
/// Longest header line (`$len`, `*count`, simple string or error) accepted.
const MAX_LINE: usize = 64 * 1024;

/// Encodes `GET`/`SET` as RESP2 arrays.
#[derive(Clone, Copy, Debug, Default)]
pub struct RespCodec;

impl RespCodec {
    pub fn encode(&self, op: Op, key: &[u8], value: &Bytes, out: &mut BytesMut) {
        match op {
            Op::Get => {
                out.extend_from_slice(b"*2\r\n$3\r\nGET\r\n");
                put_bulk(out, key);
            }
            Op::Set => {
                out.extend_from_slice(b"*3\r\n$3\r\nSET\r\n");
                put_bulk(out, key);
                put_bulk(out, value);
            }
        }
    }
}

fn put_bulk(out: &mut BytesMut, bytes: &[u8]) {
    let mut len = itoa::Buffer::new();
    let len = len.format(bytes.len());
    out.reserve(1 + len.len() + 2 + bytes.len() + 2);
    out.extend_from_slice(b"$");
    out.extend_from_slice(len.as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
}

/// Takes one complete reply off the front of `buf`. `Ok(None)`: incomplete, nothing consumed.
pub fn decode_reply(buf: &mut BytesMut) -> Result<Option<Reply>, String> {
    match scan(buf, 0, 0)? {
        None => Ok(None),
        Some((end, reply)) => {
            buf.advance(end);
            Ok(Some(reply))
        }
    }
}

/// The end of the line starting at `pos` (the index of its `\r`), if it is complete.
fn line_end(buf: &[u8], pos: usize) -> Result<Option<usize>, String> {
    match memchr::memchr(b'\n', &buf[pos..]) {
        Some(i) if i >= 1 && buf[pos + i - 1] == b'\r' => Ok(Some(pos + i - 1)),
        Some(_) => Err("RESP line not ended by CRLF".into()),
        None if buf.len() - pos > MAX_LINE => Err("RESP line longer than 64 KiB".into()),
        None => Ok(None),
    }
}

fn parse_int(line: &[u8]) -> Result<i64, String> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad RESP length {:?}", String::from_utf8_lossy(line)))
}

/// Scans the reply starting at `pos`: `Some((end, reply))` when it is complete.
fn scan(buf: &[u8], pos: usize, depth: usize) -> Result<Option<(usize, Reply)>, String> {
    if pos >= buf.len() {
        return Ok(None);
    }
    let Some(cr) = line_end(buf, pos + 1)? else {
        return Ok(None);
    };
    let line = &buf[pos + 1..cr];
    let after = cr + 2;
    match buf[pos] {
        b'+' => Ok(Some((after, Reply::Done))),
        b'-' => Ok(Some((after, Reply::Error(String::from_utf8_lossy(line).into_owned())))),
        b':' => {
            parse_int(line)?;
            Ok(Some((after, Reply::Unexpected("integer"))))
        }
        b'$' => match parse_int(line)? {
            -1 => Ok(Some((after, Reply::Nil))),
            len if len >= 0 => {
                let end = after + len as usize;
                if buf.len() < end + 2 {
                    return Ok(None);
                }
                if &buf[end..end + 2] != b"\r\n" {
                    return Err("RESP bulk string not followed by CRLF".into());
                }
                Ok(Some((end + 2, Reply::Value)))
            }
            len => Err(format!("bad RESP bulk length {len}")),
        },
        b'*' => match parse_int(line)? {
            -1 => Ok(Some((after, Reply::Nil))),
            count if count >= 0 => {
                if depth >= MAX_DEPTH {
                    return Err("RESP arrays nested too deep".into());
                }
                let mut end = after;
                for _ in 0..count {
                    match scan(buf, end, depth + 1)? {
                        Some((next, _)) => end = next,
                        None => return Ok(None),
                    }
                }
                Ok(Some((end, Reply::Unexpected("array"))))
            }
            count => Err(format!("bad RESP array length {count}")),
        },
        byte => Err(format!("unknown RESP reply type byte 0x{byte:02x}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8]) -> Result<Vec<Reply>, String> {
        let mut buf = BytesMut::from(input);
        let mut replies = Vec::new();
        while let Some(reply) = decode_reply(&mut buf)? {
            replies.push(reply);
        }
        assert!(buf.is_empty(), "left over: {buf:?}");
        Ok(replies)
    }

    #[test]
    fn encodes_requests() {
        let mut out = BytesMut::new();
        RespCodec.encode(Op::Get, b"foo", &Bytes::new(), &mut out);
        RespCodec.encode(Op::Set, b"k", &Bytes::from_static(b"hi"), &mut out);
        assert_eq!(
            &out[..],
            b"*2\r\n$3\r\nGET\r\n$3\r\nfoo\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\nhi\r\n"
        );
    }

    #[test]
    fn reads_every_reply_type() {
        let input = b"+OK\r\n$3\r\nbar\r\n$-1\r\n-ERR no\r\n:12\r\n*2\r\n$1\r\na\r\n*1\r\n:1\r\n*-1\r\n$0\r\n\r\n";
        assert_eq!(
            decode_all(input).unwrap(),
            vec![
                Reply::Done,
                Reply::Value,
                Reply::Nil,
                Reply::Error("ERR no".into()),
                Reply::Unexpected("integer"),
                Reply::Unexpected("array"),
                Reply::Nil,
                Reply::Value,
            ]
        );
    }

    /// Every split of the input into two reads gives the same replies.
    #[test]
    fn resumes_across_reads() {
        let input: &[u8] = b"+OK\r\n$5\r\nhello\r\n*2\r\n$1\r\na\r\n$-1\r\n-WRONGTYPE x\r\n";
        let whole = decode_all(input).unwrap();
        for split in 0..input.len() {
            let mut buf = BytesMut::from(&input[..split]);
            let mut got = Vec::new();
            while let Some(r) = decode_reply(&mut buf).unwrap() {
                got.push(r);
            }
            buf.extend_from_slice(&input[split..]);
            while let Some(r) = decode_reply(&mut buf).unwrap() {
                got.push(r);
            }
            assert_eq!(got, whole, "split at {split}");
        }
    }

    #[test]
    fn refuses_garbage() {
        for bad in [&b"?x\r\n"[..], b"$abc\r\n", b"$3\r\nfooXY", b"+OK\n", b"$-2\r\n"] {
            assert!(decode_all(bad).is_err(), "{bad:?}");
        }
    }
}
