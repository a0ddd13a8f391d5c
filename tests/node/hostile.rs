//! Hostile and malformed input, each case on its own raw connection. The expected replies, and
//! whether the connection closes, are what redis-server 7.0.15 does (checked against it by hand
//! and with `COREKV_TEST_TARGET=redis`). After every case the server must still answer PING on
//! another connection.

use crate::support::*;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long "no reply" is watched for.
const QUIET: Duration = Duration::from_millis(300);

#[derive(Clone, Debug)]
enum Expect {
    /// These replies (concatenated), then the connection stays open and answers PING.
    Replies(&'static [u8]),
    /// This error reply, then the server closes the connection.
    ErrorThenClose(&'static str),
    /// No reply, connection open; after sending the second bytes, this reply.
    QuietThen(&'static [u8], &'static [u8]),
}

struct Case {
    name: &'static str,
    send: Vec<u8>,
    expect: Expect,
}

fn case(name: &'static str, send: &[u8], expect: Expect) -> Case {
    Case {
        name,
        send: send.to_vec(),
        expect,
    }
}

fn read_exact_bytes(raw: &mut Raw, expected: &[u8]) -> Result<(), String> {
    let mut got = Vec::new();
    while got.len() < expected.len() {
        match raw.read_reply(Duration::from_secs(20)) {
            Ok(r) => got.extend(r),
            Err(e) => return Err(format!("expected {} got {} then {e:?}", show(expected), show(&got))),
        }
    }
    if got != expected {
        return Err(format!("expected {} got {}", show(expected), show(&got)));
    }
    Ok(())
}

fn run_case(node: &Node, c: &Case) -> Result<(), String> {
    let mut raw = node.raw();
    raw.send(&c.send).map_err(|e| format!("send: {e}"))?;
    match &c.expect {
        Expect::Replies(replies) => {
            if replies.is_empty() {
                match raw.read_reply(QUIET) {
                    Err(RawEnd::Timeout(s)) if s.is_empty() => {}
                    other => return Err(format!("expected no reply, got {other:?}")),
                }
            } else {
                read_exact_bytes(&mut raw, replies)?;
            }
            raw.send(b"*1\r\n$4\r\nPING\r\n")
                .map_err(|e| format!("send PING: {e}"))?;
            read_exact_bytes(&mut raw, b"+PONG\r\n").map_err(|e| format!("connection unusable afterwards: {e}"))?;
        }
        Expect::ErrorThenClose(e) => {
            let expected = format!("-{e}\r\n");
            match raw.read_reply(Duration::from_secs(20)) {
                Ok(r) if r == expected.as_bytes() => {}
                other => {
                    return Err(format!(
                        "expected {} then close, got {other:?}",
                        show(expected.as_bytes())
                    ))
                }
            }
            match raw.read_reply(Duration::from_secs(20)) {
                Err(RawEnd::Closed(rest)) if rest.is_empty() => {}
                other => return Err(format!("expected the connection to close, got {other:?}")),
            }
        }
        Expect::QuietThen(more, reply) => {
            match raw.read_reply(QUIET) {
                Err(RawEnd::Timeout(s)) if s.is_empty() => {}
                other => return Err(format!("expected no reply yet, got {other:?}")),
            }
            raw.send(more).map_err(|e| format!("send rest: {e}"))?;
            read_exact_bytes(&mut raw, reply)?;
        }
    }
    Ok(())
}

fn run_cases(cases: Vec<Case>, args: &[&str]) {
    let node = Node::start(args);
    let mut failures = Vec::new();
    for c in &cases {
        if let Err(e) = run_case(&node, c) {
            failures.push(format!("{} (sent {}): {e}", c.name, show(&c.send)));
        }
        node.assert_alive();
    }
    assert!(
        failures.is_empty(),
        "{} of {} hostile cases differ from Redis 7.0:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn framing_edge_cases() {
    use Expect::*;
    let cases = vec![
        // Empty lines and empty multibulks are skipped silently.
        case("empty lines", b"\r\n\r\n", Replies(b"")),
        case("blank inline line", b"   \r\n", Replies(b"")),
        case("empty lines then PING", b"\r\n\r\n\r\nPING\r\n", Replies(b"+PONG\r\n")),
        case("*0", b"*0\r\n", Replies(b"")),
        case("*-1", b"*-1\r\n", Replies(b"")),
        case("*-5", b"*-5\r\nPING\r\n", Replies(b"+PONG\r\n")),
        case(
            "mixed skips",
            b"*1\r\n$4\r\nPING\r\n*0\r\n*-1\r\n\r\nPING\r\n",
            Replies(b"+PONG\r\n+PONG\r\n"),
        ),
        case("LF-only inline", b"PING\n", Replies(b"+PONG\r\n")),
        case("inline trailing spaces", b"PING   \r\n", Replies(b"+PONG\r\n")),
        case(
            "inline quoted escapes",
            b"ECHO \"\\x41\\n\"\r\n",
            Replies(b"$2\r\nA\n\r\n"),
        ),
        case("inline single quotes", b"ECHO 'a b'\r\n", Replies(b"$3\r\na b\r\n")),
        case(
            "empty command name",
            b"*1\r\n$0\r\n\r\n",
            Replies(b"-ERR unknown command '', with args beginning with: \r\n"),
        ),
        case(
            "empty bulk argument",
            b"*2\r\n$4\r\nECHO\r\n$0\r\n\r\n",
            Replies(b"$0\r\n\r\n"),
        ),
        // Multibulk lengths.
        case(
            "*3000000000",
            b"*3000000000\r\n",
            ErrorThenClose("ERR Protocol error: invalid multibulk length"),
        ),
        case(
            "*2147483648",
            b"*2147483648\r\n",
            ErrorThenClose("ERR Protocol error: invalid multibulk length"),
        ),
        case(
            "*abc",
            b"*abc\r\n",
            ErrorThenClose("ERR Protocol error: invalid multibulk length"),
        ),
        case(
            "*+1",
            b"*+1\r\n",
            ErrorThenClose("ERR Protocol error: invalid multibulk length"),
        ),
        case(
            "*01",
            b"*01\r\n$4\r\nPING\r\n",
            ErrorThenClose("ERR Protocol error: invalid multibulk length"),
        ),
        case(
            "*-0",
            b"*-0\r\nPING\r\n",
            ErrorThenClose("ERR Protocol error: invalid multibulk length"),
        ),
        case(
            "* alone",
            b"*\r\n",
            ErrorThenClose("ERR Protocol error: invalid multibulk length"),
        ),
        case(
            "*1 space",
            b"*1 \r\n$4\r\nPING\r\n",
            ErrorThenClose("ERR Protocol error: invalid multibulk length"),
        ),
        // A huge but valid count just waits for the arguments (no up-front allocation).
        case("*1000000000 waits", b"*1000000000\r\n", QuietThen(b"", b"")),
        // Bulk lengths.
        case(
            "$-10",
            b"*1\r\n$-10\r\n",
            ErrorThenClose("ERR Protocol error: invalid bulk length"),
        ),
        case(
            "$-1 in a request",
            b"*2\r\n$4\r\nECHO\r\n$-1\r\n",
            ErrorThenClose("ERR Protocol error: invalid bulk length"),
        ),
        case(
            "$2000000000",
            b"*1\r\n$2000000000\r\n",
            ErrorThenClose("ERR Protocol error: invalid bulk length"),
        ),
        case(
            "$536870913",
            b"*1\r\n$536870913\r\n",
            ErrorThenClose("ERR Protocol error: invalid bulk length"),
        ),
        case(
            "$blabla",
            b"*1\r\n$blabla\r\n",
            ErrorThenClose("ERR Protocol error: invalid bulk length"),
        ),
        case(
            "$+5",
            b"*1\r\n$+5\r\nhello\r\n",
            ErrorThenClose("ERR Protocol error: invalid bulk length"),
        ),
        case(
            "$05",
            b"*1\r\n$05\r\nhello\r\n",
            ErrorThenClose("ERR Protocol error: invalid bulk length"),
        ),
        case(
            "$ alone",
            b"*1\r\n$\r\n",
            ErrorThenClose("ERR Protocol error: invalid bulk length"),
        ),
        case(
            "$4 space",
            b"*1\r\n$4 \r\nPING\r\n",
            ErrorThenClose("ERR Protocol error: invalid bulk length"),
        ),
        // 512 MiB exactly is allowed: the server waits for the data.
        case("$536870912 waits", b"*1\r\n$536870912\r\n", QuietThen(b"", b"")),
        // Something other than '$' where a bulk is expected.
        case(
            "*1 foo",
            b"*1\r\nfoo\r\n",
            ErrorThenClose("ERR Protocol error: expected '$', got 'f'"),
        ),
        case(
            "RESP3 map in request",
            b"*1\r\n%1\r\n",
            ErrorThenClose("ERR Protocol error: expected '$', got '%'"),
        ),
        case(
            "RESP3 boolean arg",
            b"*2\r\n$4\r\nECHO\r\n#t\r\n",
            ErrorThenClose("ERR Protocol error: expected '$', got '#'"),
        ),
        case(
            "integer arg",
            b"*1\r\n:5\r\n",
            ErrorThenClose("ERR Protocol error: expected '$', got ':'"),
        ),
        // RESP3 type bytes at the start of a request are an inline command.
        case(
            "top-level RESP3 map",
            b"%1\r\n",
            Replies(b"-ERR unknown command '%1', with args beginning with: \r\n"),
        ),
        case(
            "top-level null",
            b"_\r\n",
            Replies(b"-ERR unknown command '_', with args beginning with: \r\n"),
        ),
        case(
            "top-level bulk header",
            b"$4\r\nPING\r\n",
            Replies(b"-ERR unknown command '$4', with args beginning with: \r\n+PONG\r\n"),
        ),
        // Unbalanced quotes in inline commands.
        case(
            "unbalanced double quote",
            b"SET \"foo bar\r\n",
            ErrorThenClose("ERR Protocol error: unbalanced quotes in request"),
        ),
        case(
            "unbalanced single quote",
            b"ECHO 'a\r\n",
            ErrorThenClose("ERR Protocol error: unbalanced quotes in request"),
        ),
        case(
            "closing quote not followed by space",
            b"ECHO \"a\"b\r\n",
            ErrorThenClose("ERR Protocol error: unbalanced quotes in request"),
        ),
        // A bulk without its trailing CRLF: the server waits for it.
        case(
            "bulk without CRLF",
            b"*1\r\n$4\r\nPING",
            QuietThen(b"\r\n", b"+PONG\r\n"),
        ),
        case(
            "bulk with only CR",
            b"*1\r\n$4\r\nPING\r",
            QuietThen(b"\n", b"+PONG\r\n"),
        ),
        case(
            "multibulk missing an argument",
            b"*2\r\n$4\r\nECHO\r\n",
            QuietThen(b"$2\r\nhi\r\n", b"$2\r\nhi\r\n"),
        ),
    ];
    run_cases(cases, &[]);
}

#[test]
fn bulk_terminator_is_skipped_not_checked_like_redis() {
    // Redis skips the two bytes after a bulk without checking they are CRLF.
    use Expect::*;
    run_cases(
        vec![
            case("PINGxx", b"*1\r\n$4\r\nPINGxx", Replies(b"+PONG\r\n")),
            case(
                "ECHO abcd",
                b"*2\r\n$4\r\nECHO\r\n$3\r\nabcd\r\nPING\r\n",
                Replies(b"$3\r\nabc\r\n+PONG\r\n"),
            ),
        ],
        &[],
    );
}

#[test]
fn overlong_lines_without_crlf() {
    use Expect::*;
    let mut inline = vec![b'A'; 70_000];
    inline.extend_from_slice(b"");
    let mut mbulk = b"*".to_vec();
    mbulk.extend(vec![b'1'; 70_000]);
    let mut bulk = b"*1\r\n$".to_vec();
    bulk.extend(vec![b'1'; 70_000]);
    run_cases(
        vec![
            Case {
                name: "70000-byte inline line",
                send: inline,
                expect: ErrorThenClose("ERR Protocol error: too big inline request"),
            },
            Case {
                name: "70000-digit multibulk count",
                send: mbulk,
                expect: ErrorThenClose("ERR Protocol error: too big mbulk count string"),
            },
            Case {
                name: "70000-digit bulk length",
                send: bulk,
                expect: ErrorThenClose("ERR Protocol error: too big bulk count string"),
            },
        ],
        &[],
    );
}

#[test]
fn endless_junk_after_nul_is_cut_off() {
    let node = Node::start(&[]);
    let mut raw = node.raw();
    let mut writer = raw.stream.try_clone().unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let sender = {
        let done = done.clone();
        std::thread::spawn(move || {
            writer.write_all(b"\x00").unwrap();
            let junk: Vec<u8> = (0..16 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
            // A never-ending stream, bounded at 256 MiB or until the server hangs up.
            let mut sent = 0usize;
            while !done.load(Ordering::Relaxed) && sent < 256 << 20 {
                if writer.write_all(&junk).is_err() {
                    return (sent, true);
                }
                sent += junk.len();
            }
            (sent, false)
        })
    };
    let r = raw.read_reply(Duration::from_secs(30));
    let closed = raw.read_reply(Duration::from_secs(30));
    done.store(true, Ordering::Relaxed);
    let (sent, write_failed) = sender.join().unwrap();
    assert_eq!(
        r.as_deref().map(show),
        Ok(show(b"-ERR Protocol error: too big inline request\r\n")),
        "after {sent} bytes of junk"
    );
    assert!(
        matches!(closed, Err(RawEnd::Closed(ref rest)) if rest.is_empty()),
        "connection not closed: {closed:?}"
    );
    assert!(write_failed || sent < 256 << 20, "server kept reading junk");
    node.assert_alive();
}

#[test]
fn mset_with_20002_arguments() {
    let node = Node::start(&[]);
    let mut c = node.client();
    let mut args = vec!["MSET".to_string()];
    for i in 0..10_001 {
        args.push(format!("bigmset:{i}"));
        args.push(format!("value:{i}"));
    }
    assert_eq!(args.len() - 1, 20_002);
    assert_eq!(qa(&mut c, &args), ok());
    check(&mut c, "DBSIZE", int(10_001));
    let mut mget = vec!["MGET".to_string()];
    for i in (0..10_001).rev() {
        mget.push(format!("bigmset:{i}"));
    }
    let r = qa(&mut c, &mget).as_arr();
    assert_eq!(r.len(), 10_001);
    for (j, v) in r.iter().enumerate() {
        assert_eq!(v, &bulk(format!("value:{}", 10_000 - j)));
    }
    node.assert_alive();
}

#[test]
fn keys_with_pathological_pattern_returns() {
    let node = Node::start(&[]);
    let mut c = node.client();
    check(&mut c, "SET short v", ok());
    let long = "a".repeat(100);
    assert_eq!(qa(&mut c, &["SET", long.as_str(), "v"]), ok());
    let long2 = "ab".repeat(60);
    assert_eq!(qa(&mut c, &["SET", long2.as_str(), "v"]), ok());
    let pattern = "*?".repeat(50_000);
    // The client read timeout (60 s) bounds the wait.
    assert_eq!(qa(&mut c, &["KEYS", pattern.as_str()]), arr(vec![]));
    let pattern2 = format!("{}b", "*a".repeat(25_000));
    assert_eq!(qa(&mut c, &["KEYS", pattern2.as_str()]), arr(vec![]));
    let pattern3 = format!("{}c", "a*".repeat(60));
    assert_eq!(qa(&mut c, &["KEYS", pattern3.as_str()]), arr(vec![]));
    node.assert_alive();
}

#[test]
fn setrange_at_max_offset_allocates_512mb() {
    // No --maxmemory: Redis replies with the new length (512 MiB). Without a log: this is about
    // the string's limits, and writing a 512 MiB record would load the disk every other test
    // running meanwhile shares.
    let node = Node::start(&["--durability", "none"]);
    let mut raw = node.raw();
    raw.send_cmd(&["SETRANGE", "k", "536870911", "x"]).unwrap();
    raw.expect(b":536870912\r\n");
    raw.send_cmd(&["STRLEN", "k"]).unwrap();
    raw.expect(b":536870912\r\n");
    raw.send_cmd(&["GETRANGE", "k", "536870910", "-1"]).unwrap();
    raw.expect(b"$2\r\n\x00x\r\n");
    raw.send_cmd(&["SETRANGE", "k", "536870912", "x"]).unwrap();
    raw.expect(b"-ERR string exceeds maximum allowed size (proto-max-bulk-len)\r\n");
    raw.send_cmd(&["DEL", "k"]).unwrap();
    raw.expect(b":1\r\n");
    node.assert_alive();
}

#[test]
fn numeric_edge_cases() {
    let node = Node::start(&[]);
    let mut raw = node.raw();
    for (cmd, reply) in [
        (vec!["SET", "n", "9223372036854775807"], "+OK\r\n"),
        (
            vec!["INCRBY", "n", "1"],
            "-ERR increment or decrement would overflow\r\n",
        ),
        (vec!["INCR", "n"], "-ERR increment or decrement would overflow\r\n"),
        (vec!["SET", "m", "-9223372036854775808"], "+OK\r\n"),
        (
            vec!["DECRBY", "m", "1"],
            "-ERR increment or decrement would overflow\r\n",
        ),
        (
            vec!["INCRBY", "m", "9223372036854775808"],
            "-ERR value is not an integer or out of range\r\n",
        ),
        (vec!["SET", "k", "v"], "+OK\r\n"),
        (
            vec!["EXPIRE", "k", "9223372036854775807"],
            "-ERR invalid expire time in 'expire' command\r\n",
        ),
        (vec!["TTL", "k"], ":-1\r\n"),
        (
            vec!["SET", "k", "v", "EX", "0"],
            "-ERR invalid expire time in 'set' command\r\n",
        ),
        (vec!["GET", "k"], "$1\r\nv\r\n"),
    ] {
        raw.send_cmd(&cmd).unwrap();
        let got = raw.read_reply(Duration::from_secs(20));
        assert_eq!(got.as_deref().map(show), Ok(show(reply.as_bytes())), "{cmd:?}");
        node.assert_alive();
    }
}

#[test]
fn abrupt_disconnects_mid_request() {
    let node = Node::start(&[]);
    for partial in [
        &b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhel"[..],
        b"*2\r\n$4\r\nECHO\r\n$100000\r\n",
        b"*5\r\n",
        b"GET k",
        b"*1\r\n$4\r\nPI",
    ] {
        let mut raw = node.raw();
        raw.send(partial).unwrap();
        drop(raw);
        node.assert_alive();
    }
    let mut c = node.client();
    check(&mut c, "GET k", nil());
    // A client that sends a request and leaves without reading the reply.
    for _ in 0..20 {
        let mut raw = node.raw();
        raw.send_cmd(&["MSET", "a", "1", "b", "2"]).unwrap();
        raw.send_cmd(&["MGET", "a", "b"]).unwrap();
        drop(raw);
    }
    node.assert_alive();
    check(&mut c, "MGET a b", bulks(&["1", "2"]));
}
