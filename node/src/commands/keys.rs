//! Keyed key-space commands (TYPE, EXPIRE family, TTL family, PERSIST, OBJECT, MOVE, ...).
//!
//! Semantics, reply types and error texts follow Redis 7.0 (`expire.c`, `db.c`, `object.c`).

use bytes::Bytes;
use corekv_engine::EvictionPolicy;
use corekv_net::resp::ReplyEncoder;

use super::strings::{parse_i64, ERR_NOT_INTEGER};
use super::{CommandSpec, ExecCtx, Handler};

pub const SPECS: &[CommandSpec] = &[
    spec(
        "type",
        2,
        &["readonly", "fast"],
        "Determine the type stored at key",
        "1.0.0",
        type_,
    ),
    spec(
        "expire",
        -3,
        &["write", "fast"],
        "Set a key's time to live in seconds",
        "1.0.0",
        expire,
    ),
    spec(
        "pexpire",
        -3,
        &["write", "fast"],
        "Set a key's time to live in milliseconds",
        "2.6.0",
        pexpire,
    ),
    spec(
        "expireat",
        -3,
        &["write", "fast"],
        "Set the expiration for a key as a UNIX timestamp",
        "1.2.0",
        expireat,
    ),
    spec(
        "pexpireat",
        -3,
        &["write", "fast"],
        "Set the expiration for a key as a UNIX timestamp specified in milliseconds",
        "2.6.0",
        pexpireat,
    ),
    spec(
        "ttl",
        2,
        &["readonly", "fast"],
        "Get the time to live for a key in seconds",
        "1.0.0",
        ttl,
    ),
    spec(
        "pttl",
        2,
        &["readonly", "fast"],
        "Get the time to live for a key in milliseconds",
        "2.6.0",
        pttl,
    ),
    spec(
        "expiretime",
        2,
        &["readonly", "fast"],
        "Get the expiration Unix timestamp for a key",
        "7.0.0",
        expiretime,
    ),
    spec(
        "pexpiretime",
        2,
        &["readonly", "fast"],
        "Get the expiration Unix timestamp for a key in milliseconds",
        "7.0.0",
        pexpiretime,
    ),
    spec(
        "persist",
        2,
        &["write", "fast"],
        "Remove the expiration from a key",
        "2.2.0",
        persist,
    ),
    // Redis 7 makes OBJECT a container whose ENCODING/FREQ/IDLETIME/REFCOUNT subcommands are
    // "readonly" with their key at position 2; OBJECT HELP has no key.
    CommandSpec {
        name: "object",
        arity: -2,
        flags: &["readonly"],
        first_key: 2,
        last_key: 2,
        step: 1,
        group: "generic",
        summary: "A container for object introspection commands",
        since: "2.2.3",
        handler: Handler::Keyed(object),
    },
    spec(
        "move",
        3,
        &["write", "fast"],
        "Move a key to another database",
        "1.0.0",
        move_,
    ),
];

/// A single-key command of this family whose key is the first argument.
const fn spec(
    name: &'static str,
    arity: i32,
    flags: &'static [&'static str],
    summary: &'static str,
    since: &'static str,
    run: super::KeyedFn,
) -> CommandSpec {
    CommandSpec::keyed(name, arity, flags, "generic", summary, since, run)
}

/// TYPE key: corekv only has strings.
pub fn type_(ctx: &mut ExecCtx<'_>, args: &[Bytes], enc: &mut ReplyEncoder<'_>) {
    if ctx.keyspace.contains(ctx.db, &args[1], ctx.now_ms) {
        enc.simple("string");
    } else {
        enc.simple("none");
    }
}

// ---------------------------------------------------------------------------------------------
// EXPIRE family
// ---------------------------------------------------------------------------------------------

/// EXPIRE key seconds [NX | XX | GT | LT]
pub fn expire(ctx: &mut ExecCtx<'_>, args: &[Bytes], enc: &mut ReplyEncoder<'_>) {
    let now = now_i64(ctx.now_ms);
    expire_generic(ctx, args, enc, now, true, "ERR invalid expire time in 'expire' command");
}

/// PEXPIRE key milliseconds [NX | XX | GT | LT]
pub fn pexpire(ctx: &mut ExecCtx<'_>, args: &[Bytes], enc: &mut ReplyEncoder<'_>) {
    let now = now_i64(ctx.now_ms);
    expire_generic(
        ctx,
        args,
        enc,
        now,
        false,
        "ERR invalid expire time in 'pexpire' command",
    );
}

/// EXPIREAT key unix-time-seconds [NX | XX | GT | LT]
pub fn expireat(ctx: &mut ExecCtx<'_>, args: &[Bytes], enc: &mut ReplyEncoder<'_>) {
    expire_generic(ctx, args, enc, 0, true, "ERR invalid expire time in 'expireat' command");
}

/// PEXPIREAT key unix-time-milliseconds [NX | XX | GT | LT]
pub fn pexpireat(ctx: &mut ExecCtx<'_>, args: &[Bytes], enc: &mut ReplyEncoder<'_>) {
    expire_generic(
        ctx,
        args,
        enc,
        0,
        false,
        "ERR invalid expire time in 'pexpireat' command",
    );
}

fn now_i64(now_ms: u64) -> i64 {
    i64::try_from(now_ms).unwrap_or(i64::MAX)
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct ExpireFlags {
    nx: bool,
    xx: bool,
    gt: bool,
    lt: bool,
}

/// Redis's `parseExtendedExpireArgumentsOrReply`: `Err(text)` is the error to reply.
fn parse_expire_flags(opts: &[Bytes]) -> Result<ExpireFlags, String> {
    let mut f = ExpireFlags::default();
    for opt in opts {
        if opt.eq_ignore_ascii_case(b"nx") {
            f.nx = true;
        } else if opt.eq_ignore_ascii_case(b"xx") {
            f.xx = true;
        } else if opt.eq_ignore_ascii_case(b"gt") {
            f.gt = true;
        } else if opt.eq_ignore_ascii_case(b"lt") {
            f.lt = true;
        } else {
            // Redis formats the option as a C string: it ends at the first NUL.
            let text = opt.split(|&b| b == 0).next().unwrap_or_default();
            return Err(format!("ERR Unsupported option {}", String::from_utf8_lossy(text)));
        }
    }
    if f.nx && (f.xx || f.gt || f.lt) {
        return Err("ERR NX and XX, GT or LT options at the same time are not compatible".into());
    }
    if f.gt && f.lt {
        return Err("ERR GT and LT options at the same time are not compatible".into());
    }
    Ok(f)
}

/// Redis 7.0's `expireGenericCommand`. `basetime` is now (relative forms) or 0 (absolute forms).
fn expire_generic(
    ctx: &mut ExecCtx<'_>,
    args: &[Bytes],
    enc: &mut ReplyEncoder<'_>,
    basetime: i64,
    seconds: bool,
    invalid_text: &str,
) {
    let flags = match parse_expire_flags(&args[3..]) {
        Ok(f) => f,
        Err(text) => return enc.error(&text),
    };
    let Some(mut when) = parse_i64(&args[2]) else {
        enc.error(ERR_NOT_INTEGER);
        return;
    };
    if seconds {
        if !(i64::MIN / 1000..=i64::MAX / 1000).contains(&when) {
            enc.error(invalid_text);
            return;
        }
        when *= 1000;
    }
    if when > i64::MAX - basetime {
        enc.error(invalid_text);
        return;
    }
    when += basetime;

    let (db, now) = (ctx.db, ctx.now_ms);
    let key = &args[1][..];
    let Some(info) = ctx.keyspace.info(db, key, now) else {
        enc.integer(0);
        return;
    };
    // -1: no TTL (an infinite one for GT/LT).
    let current = info.expire_at_ms.map_or(-1, now_i64);
    let refused = (flags.nx && current != -1)
        || (flags.xx && current == -1)
        || (flags.gt && (when <= current || current == -1))
        || (flags.lt && current != -1 && when >= current);
    if refused {
        enc.integer(0);
        return;
    }
    if when <= now_i64(now) {
        // Already expired: the key is deleted (and the command still succeeds).
        ctx.keyspace.remove(db, key, now);
    } else {
        ctx.keyspace.set_expiry(db, key, Some(when as u64), now);
    }
    enc.integer(1);
}

// ---------------------------------------------------------------------------------------------
// TTL family, PERSIST
// ---------------------------------------------------------------------------------------------

/// TTL key: seconds left (rounded), -1 without TTL, -2 if missing.
pub fn ttl(ctx: &mut ExecCtx<'_>, args: &[Bytes], enc: &mut ReplyEncoder<'_>) {
    ttl_generic(ctx, args, enc, false, false);
}

/// PTTL key
pub fn pttl(ctx: &mut ExecCtx<'_>, args: &[Bytes], enc: &mut ReplyEncoder<'_>) {
    ttl_generic(ctx, args, enc, true, false);
}

/// EXPIRETIME key
pub fn expiretime(ctx: &mut ExecCtx<'_>, args: &[Bytes], enc: &mut ReplyEncoder<'_>) {
    ttl_generic(ctx, args, enc, false, true);
}

/// PEXPIRETIME key
pub fn pexpiretime(ctx: &mut ExecCtx<'_>, args: &[Bytes], enc: &mut ReplyEncoder<'_>) {
    ttl_generic(ctx, args, enc, true, true);
}

/// Redis's `ttlGenericCommand`.
fn ttl_generic(ctx: &mut ExecCtx<'_>, args: &[Bytes], enc: &mut ReplyEncoder<'_>, output_ms: bool, output_abs: bool) {
    let Some(info) = ctx.keyspace.info(ctx.db, &args[1], ctx.now_ms) else {
        enc.integer(-2);
        return;
    };
    let Some(at) = info.expire_at_ms else {
        enc.integer(-1);
        return;
    };
    enc.integer(ttl_reply(at, ctx.now_ms, output_ms, output_abs));
}

/// The reply of TTL/PTTL/EXPIRETIME/PEXPIRETIME for a key expiring at `at`. Redis computes
/// `(ttl + 500) / 1000` in C; done here in i128 so it cannot overflow.
fn ttl_reply(at: u64, now_ms: u64, output_ms: bool, output_abs: bool) -> i64 {
    let at = i128::from(at);
    let ttl = if output_abs { at } else { at - i128::from(now_ms) }.max(0);
    let v = if output_ms { ttl } else { (ttl + 500) / 1000 };
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// PERSIST key
pub fn persist(ctx: &mut ExecCtx<'_>, args: &[Bytes], enc: &mut ReplyEncoder<'_>) {
    let (db, now) = (ctx.db, ctx.now_ms);
    let has_ttl = ctx
        .keyspace
        .info(db, &args[1], now)
        .is_some_and(|i| i.expire_at_ms.is_some());
    if has_ttl {
        ctx.keyspace.set_expiry(db, &args[1], None, now);
    }
    enc.integer(i64::from(has_ttl));
}

// ---------------------------------------------------------------------------------------------
// OBJECT
// ---------------------------------------------------------------------------------------------

const OBJECT_HELP: &[&str] = &[
    "ENCODING <key>",
    "    Return the kind of internal representation used in order to store the value",
    "    associated with a <key>.",
    "FREQ <key>",
    "    Return the access frequency index of the <key>. The returned integer is",
    "    proportional to the logarithm of the recent access frequency of the key.",
    "IDLETIME <key>",
    "    Return the idle time of the <key>, that is the approximated number of",
    "    seconds elapsed since the last access to the key.",
    "REFCOUNT <key>",
    "    Return the number of references of the value associated with the specified",
    "    <key>.",
    "HELP",
    "    Prints this help.",
];

const ERR_NO_LFU: &str = "ERR An LFU maxmemory policy is not selected, access frequency not \
tracked. Please note that when switching between policies at runtime LRU and LFU data will take \
some time to adjust.";

/// Redis's `OBJ_SHARED_REFCOUNT`: OBJECT REFCOUNT of a shared integer.
const SHARED_REFCOUNT: i64 = i32::MAX as i64;
/// Redis's `OBJ_SHARED_INTEGERS`: integers 0..10000 are shared objects.
const SHARED_INTEGERS: i64 = 10_000;

#[derive(Clone, Copy, PartialEq, Eq)]
enum ObjectSub {
    Help,
    Encoding,
    Freq,
    IdleTime,
    RefCount,
}

impl ObjectSub {
    fn parse(name: &[u8]) -> Option<Self> {
        let subs = [
            (&b"help"[..], ObjectSub::Help),
            (b"encoding", ObjectSub::Encoding),
            (b"freq", ObjectSub::Freq),
            (b"idletime", ObjectSub::IdleTime),
            (b"refcount", ObjectSub::RefCount),
        ];
        subs.iter().find(|(n, _)| name.eq_ignore_ascii_case(n)).map(|&(_, s)| s)
    }

    fn full_name(self) -> &'static str {
        match self {
            ObjectSub::Help => "object|help",
            ObjectSub::Encoding => "object|encoding",
            ObjectSub::Freq => "object|freq",
            ObjectSub::IdleTime => "object|idletime",
            ObjectSub::RefCount => "object|refcount",
        }
    }

    fn arity(self) -> usize {
        if self == ObjectSub::Help {
            2
        } else {
            3
        }
    }
}

/// OBJECT ENCODING|FREQ|IDLETIME|REFCOUNT key, OBJECT HELP. Redis 7 checks the subcommand and
/// its arity in the dispatcher; corekv has one spec for OBJECT, so it checks them here, with
/// Redis's texts.
pub fn object(ctx: &mut ExecCtx<'_>, args: &[Bytes], enc: &mut ReplyEncoder<'_>) {
    let Some(sub) = args.get(1).and_then(|s| ObjectSub::parse(s)) else {
        let name = args.get(1).map_or(&b""[..], |s| &s[..]);
        let name = &name[..name.len().min(128)];
        enc.error(&format!(
            "ERR unknown subcommand '{}'. Try OBJECT HELP.",
            String::from_utf8_lossy(name)
        ));
        return;
    };
    if args.len() != sub.arity() {
        enc.error(&format!(
            "ERR wrong number of arguments for '{}' command",
            sub.full_name()
        ));
        return;
    }
    if sub == ObjectSub::Help {
        let mut header = String::from_utf8_lossy(&args[0]).to_ascii_uppercase();
        header.push_str(" <subcommand> [<arg> [value] [opt] ...]. Subcommands are:");
        enc.array_len(OBJECT_HELP.len() + 1);
        enc.simple(&header);
        for line in OBJECT_HELP {
            enc.simple(line);
        }
        return;
    }
    let (db, now, key) = (ctx.db, ctx.now_ms, &args[2][..]);
    match sub {
        ObjectSub::Encoding => match ctx.keyspace.peek(db, key, now) {
            Some(v) => enc.bulk(string_encoding(v).as_bytes()),
            None => enc.null(),
        },
        ObjectSub::IdleTime => match ctx.keyspace.info(db, key, now) {
            // corekv has no LFU policy, so idle time is always tracked.
            Some(info) => enc.integer(i64::try_from(info.idle_secs).unwrap_or(i64::MAX)),
            None => enc.null(),
        },
        ObjectSub::Freq => match ctx.keyspace.info(db, key, now) {
            Some(_) => enc.error(ERR_NO_LFU),
            None => enc.null(),
        },
        ObjectSub::RefCount => {
            let config = ctx.keyspace.config();
            let shared_allowed = config.maxmemory_bytes == 0
                || !matches!(config.policy, EvictionPolicy::AllKeysLru | EvictionPolicy::VolatileLru);
            match ctx.keyspace.peek(db, key, now) {
                Some(v) => enc.integer(refcount(v, shared_allowed)),
                None => enc.null(),
            }
        }
        ObjectSub::Help => {}
    }
}

/// The encoding Redis would give a string with this content: "int" for a canonical i64 of at most
/// 20 characters, "embstr" up to 44 bytes, "raw" beyond.
fn string_encoding(v: &[u8]) -> &'static str {
    if v.len() <= 20 && parse_i64(v).is_some() {
        "int"
    } else if v.len() <= 44 {
        "embstr"
    } else {
        "raw"
    }
}

/// Redis shares the integer objects 0..9999 (unless maxmemory is set with an LRU/LFU policy),
/// whose refcount reads as INT_MAX; every other value has refcount 1.
fn refcount(v: &[u8], shared_allowed: bool) -> i64 {
    match parse_i64(v) {
        Some(n) if shared_allowed && (0..SHARED_INTEGERS).contains(&n) => SHARED_REFCOUNT,
        _ => 1,
    }
}

// ---------------------------------------------------------------------------------------------
// MOVE
// ---------------------------------------------------------------------------------------------

/// MOVE key db
pub fn move_(ctx: &mut ExecCtx<'_>, args: &[Bytes], enc: &mut ReplyEncoder<'_>) {
    let Some(target) = parse_i64(&args[2]) else {
        enc.error(ERR_NOT_INTEGER);
        return;
    };
    if target < i64::from(i32::MIN) || target > i64::from(i32::MAX) {
        enc.error("ERR value is out of range, value must between -2147483648 and 2147483647");
        return;
    }
    let databases = ctx.keyspace.databases();
    if target < 0 || target as usize >= databases {
        enc.error("ERR DB index is out of range");
        return;
    }
    let target = target as usize;
    if target == ctx.db {
        enc.error("ERR source and destination objects are the same");
        return;
    }
    let moved = ctx.keyspace.move_key(ctx.db, target, &args[1], ctx.now_ms);
    enc.integer(i64::from(moved));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::strings::test_util::*;
    use crate::commands::strings::{getex, set};
    use corekv_net::resp::Protocol;

    fn setup() -> Harness {
        let mut h = Harness::new();
        assert_eq!(h.run(set, &["set", "k", "v"]), OK);
        h
    }

    #[test]
    fn type_command() {
        let mut h = setup();
        assert_eq!(h.run(type_, &["type", "k"]), "+string\r\n");
        assert_eq!(h.run(type_, &["type", "nokey"]), "+none\r\n");
        h.protocol = Protocol::Resp3;
        assert_eq!(h.run(type_, &["type", "k"]), "+string\r\n");
    }

    #[test]
    fn expire_flag_parsing() {
        let flags = |opts: &[&str]| {
            let opts: Vec<Bytes> = opts.iter().map(|o| Bytes::from(o.to_string())).collect();
            parse_expire_flags(&opts)
        };
        let nx_err = "ERR NX and XX, GT or LT options at the same time are not compatible";
        let gtlt_err = "ERR GT and LT options at the same time are not compatible";
        assert_eq!(flags(&[]), Ok(ExpireFlags::default()));
        assert_eq!(flags(&["nx", "xx"]), Err(nx_err.to_string()));
        assert_eq!(flags(&["NX", "gt"]), Err(nx_err.to_string()));
        assert_eq!(flags(&["lt", "nx"]), Err(nx_err.to_string()));
        assert_eq!(flags(&["gt", "lt"]), Err(gtlt_err.to_string()));
        assert_eq!(flags(&["nx", "gt", "lt"]), Err(nx_err.to_string()));
        assert_eq!(flags(&["xx", "gt"]).map(|f| f.xx && f.gt), Ok(true));
        assert_eq!(flags(&["nx", "nx"]).map(|f| f.nx), Ok(true));
        // The first unknown option is reported as sent, before any compatibility check.
        assert_eq!(
            flags(&["nx", "xx", "Foo"]),
            Err("ERR Unsupported option Foo".to_string())
        );
        assert_eq!(flags(&["a b", "c"]), Err("ERR Unsupported option a b".to_string()));
    }

    #[test]
    fn expire_family() {
        let mut h = setup();
        assert_eq!(h.run(expire, &["expire", "nokey", "10"]), ":0\r\n");
        assert_eq!(h.run(expire, &["expire", "k", "10"]), ":1\r\n");
        assert_eq!(h.expire_at("k"), Some(NOW + 10_000));
        assert_eq!(h.run(pexpire, &["pexpire", "k", "10"]), ":1\r\n");
        assert_eq!(h.expire_at("k"), Some(NOW + 10));
        assert_eq!(h.run(expireat, &["expireat", "k", "1800000000"]), ":1\r\n");
        assert_eq!(h.expire_at("k"), Some(1_800_000_000_000));
        assert_eq!(h.run(pexpireat, &["pexpireat", "k", "1800000000001"]), ":1\r\n");
        assert_eq!(h.expire_at("k"), Some(1_800_000_000_001));
        // Options are checked before the time, which is checked before the key.
        assert_eq!(
            h.run(expire, &["expire", "nokey", "abc", "foo"]),
            err("ERR Unsupported option foo")
        );
        assert_eq!(h.run(expire, &["expire", "nokey", "abc"]), err(ERR_NOT_INTEGER));
        assert_eq!(
            h.run(expire, &["expire", "k", "10", "nx", "xx"]),
            err("ERR NX and XX, GT or LT options at the same time are not compatible")
        );
        assert_eq!(
            h.run(expire, &["expire", "k", "10", "gt", "lt"]),
            err("ERR GT and LT options at the same time are not compatible")
        );
        // Overflow.
        let invalid = |cmd: &str| err(&format!("ERR invalid expire time in '{cmd}' command"));
        assert_eq!(h.run(expire, &["expire", "k", "9223372036854776"]), invalid("expire"));
        assert_eq!(h.run(expire, &["expire", "k", "-9223372036854776"]), invalid("expire"));
        assert_eq!(
            h.run(pexpire, &["pexpire", "k", "9223372036854775807"]),
            invalid("pexpire")
        );
        assert_eq!(
            h.run(expireat, &["expireat", "k", "9223372036854775807"]),
            invalid("expireat")
        );
        assert_eq!(h.expire_at("k"), Some(1_800_000_000_001));
        assert_eq!(h.run(pexpireat, &["pexpireat", "k", "9223372036854775807"]), ":1\r\n");
        assert_eq!(h.expire_at("k"), Some(i64::MAX as u64));
        // A time in the past deletes the key and replies 1.
        assert_eq!(h.run(expire, &["expire", "k", "-9223372036854775"]), ":1\r\n");
        assert_eq!(h.value("k"), None);
        assert_eq!(h.run(expire, &["expire", "k", "-1"]), ":0\r\n");
        h.run(set, &["set", "k", "v"]);
        assert_eq!(h.run(pexpireat, &["pexpireat", "k", "1"]), ":1\r\n");
        assert_eq!(h.value("k"), None);
    }

    #[test]
    fn expire_conditions() {
        let mut h = setup();
        // No TTL: GT fails (infinite), LT succeeds, XX fails, NX succeeds.
        assert_eq!(h.run(expire, &["expire", "k", "100", "gt"]), ":0\r\n");
        assert_eq!(h.run(expire, &["expire", "k", "100", "xx"]), ":0\r\n");
        assert_eq!(h.expire_at("k"), None);
        assert_eq!(h.run(expire, &["expire", "k", "100", "lt"]), ":1\r\n");
        assert_eq!(h.expire_at("k"), Some(NOW + 100_000));
        assert_eq!(h.run(expire, &["expire", "k", "50", "nx"]), ":0\r\n");
        assert_eq!(h.run(expire, &["expire", "k", "50", "gt"]), ":0\r\n");
        assert_eq!(h.run(expire, &["expire", "k", "100", "gt"]), ":0\r\n");
        assert_eq!(h.run(expire, &["expire", "k", "200", "GT"]), ":1\r\n");
        assert_eq!(h.run(expire, &["expire", "k", "200", "lt"]), ":0\r\n");
        assert_eq!(h.run(expire, &["expire", "k", "50", "xx", "lt"]), ":1\r\n");
        assert_eq!(h.expire_at("k"), Some(NOW + 50_000));
        assert_eq!(h.run(persist, &["persist", "k"]), ":1\r\n");
        assert_eq!(h.run(expire, &["expire", "k", "50", "nx"]), ":1\r\n");
    }

    #[test]
    fn ttl_family() {
        let mut h = setup();
        for f in [ttl as crate::commands::KeyedFn, pttl, expiretime, pexpiretime] {
            assert_eq!(h.run(f, &["x", "nokey"]), ":-2\r\n");
            assert_eq!(h.run(f, &["x", "k"]), ":-1\r\n");
        }
        h.run(pexpire, &["pexpire", "k", "10499"]);
        assert_eq!(h.run(ttl, &["ttl", "k"]), ":10\r\n");
        assert_eq!(h.run(pttl, &["pttl", "k"]), ":10499\r\n");
        h.run(pexpire, &["pexpire", "k", "10500"]);
        assert_eq!(h.run(ttl, &["ttl", "k"]), ":11\r\n");
        let at = NOW + 10_500;
        assert_eq!(h.run(pexpiretime, &["pexpiretime", "k"]), format!(":{at}\r\n"));
        assert_eq!(
            h.run(expiretime, &["expiretime", "k"]),
            format!(":{}\r\n", (at + 500) / 1000)
        );
        h.run(pexpireat, &["pexpireat", "k", "9223372036854775807"]);
        assert_eq!(h.run(expiretime, &["expiretime", "k"]), ":9223372036854776\r\n");
        assert_eq!(ttl_reply(NOW - 1, NOW, true, false), 0);
        assert_eq!(ttl_reply(u64::MAX, 0, true, true), i64::MAX);
    }

    #[test]
    fn persist_command() {
        let mut h = setup();
        assert_eq!(h.run(persist, &["persist", "nokey"]), ":0\r\n");
        assert_eq!(h.run(persist, &["persist", "k"]), ":0\r\n");
        h.run(expire, &["expire", "k", "100"]);
        assert_eq!(h.run(persist, &["persist", "k"]), ":1\r\n");
        assert_eq!(h.expire_at("k"), None);
        h.run(getex, &["getex", "k", "ex", "5"]);
        assert_eq!(h.expire_at("k"), Some(NOW + 5_000));
    }

    #[test]
    fn object_command() {
        let mut h = setup();
        let encodings = [
            ("1234567890123456789", "int"),
            ("-1", "int"),
            ("-9223372036854775808", "int"),
            ("12345678901234567890", "embstr"),
            ("0123", "embstr"),
            ("", "embstr"),
        ];
        for (value, want) in encodings {
            h.run(set, &["set", "e", value]);
            assert_eq!(h.run(object, &["object", "encoding", "e"]), bulk(want), "{value}");
        }
        h.run(set, &["set", "e", &"a".repeat(44)]);
        assert_eq!(h.run(object, &["object", "ENCODING", "e"]), bulk("embstr"));
        h.run(set, &["set", "e", &"a".repeat(45)]);
        assert_eq!(h.run(object, &["object", "encoding", "e"]), bulk("raw"));
        assert_eq!(h.run(object, &["object", "encoding", "nokey"]), NIL);

        for (value, want) in [
            ("9999", 2147483647),
            ("0", 2147483647),
            ("10000", 1),
            ("-1", 1),
            ("a", 1),
        ] {
            h.run(set, &["set", "r", value]);
            assert_eq!(h.run(object, &["object", "refcount", "r"]), format!(":{want}\r\n"));
        }
        assert_eq!(refcount(b"5", false), 1);
        assert_eq!(h.run(object, &["object", "refcount", "nokey"]), NIL);

        assert_eq!(h.run(object, &["object", "idletime", "k"]), ":0\r\n");
        assert_eq!(h.run(object, &["object", "idletime", "nokey"]), NIL);
        assert_eq!(h.run(object, &["object", "freq", "k"]), err(ERR_NO_LFU));
        assert_eq!(h.run(object, &["object", "freq", "nokey"]), NIL);
        h.protocol = Protocol::Resp3;
        assert_eq!(h.run(object, &["object", "freq", "nokey"]), "_\r\n");
    }

    #[test]
    fn object_subcommand_errors_and_help() {
        let mut h = setup();
        assert_eq!(
            h.run(object, &["object", "fOo", "k"]),
            err("ERR unknown subcommand 'fOo'. Try OBJECT HELP.")
        );
        let long = format!("FOO{}", "a".repeat(200));
        assert_eq!(
            h.run(object, &["object", &long]),
            err(&format!("ERR unknown subcommand '{}'. Try OBJECT HELP.", &long[..128]))
        );
        assert_eq!(
            h.run(object, &["object", "encoding"]),
            err("ERR wrong number of arguments for 'object|encoding' command")
        );
        assert_eq!(
            h.run(object, &["object", "encoding", "a", "b"]),
            err("ERR wrong number of arguments for 'object|encoding' command")
        );
        assert_eq!(
            h.run(object, &["object", "help", "x"]),
            err("ERR wrong number of arguments for 'object|help' command")
        );
        let help = h.run(object, &["objecT", "HeLP"]);
        assert!(help.starts_with(
            "*15\r\n+OBJECT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:\r\n\
             +ENCODING <key>\r\n"
        ));
        assert!(help.ends_with("+HELP\r\n+    Prints this help.\r\n"));
        assert_eq!(help.matches("\r\n").count(), 16);
    }

    #[test]
    fn move_command() {
        let mut h = setup();
        h.run(expire, &["expire", "k", "100"]);
        assert_eq!(
            h.run(move_, &["move", "k", "0"]),
            err("ERR source and destination objects are the same")
        );
        assert_eq!(h.run(move_, &["move", "k", "16"]), err("ERR DB index is out of range"));
        assert_eq!(h.run(move_, &["move", "k", "-1"]), err("ERR DB index is out of range"));
        assert_eq!(h.run(move_, &["move", "k", "abc"]), err(ERR_NOT_INTEGER));
        assert_eq!(
            h.run(move_, &["move", "k", "99999999999"]),
            err("ERR value is out of range, value must between -2147483648 and 2147483647")
        );
        assert_eq!(h.run(move_, &["move", "nokey", "1"]), ":0\r\n");
        assert_eq!(h.run(move_, &["move", "k", "1"]), ":1\r\n");
        assert_eq!(h.value("k"), None);
        h.db = 1;
        assert_eq!(h.value("k").as_deref(), Some(&b"v"[..]));
        assert_eq!(h.expire_at("k"), Some(NOW + 100_000));
        h.run(set, &["set", "k", "other"]);
        h.db = 0;
        h.run(set, &["set", "k", "mine"]);
        // The target already has the key: nothing moves.
        assert_eq!(h.run(move_, &["move", "k", "1"]), ":0\r\n");
        assert_eq!(h.value("k").as_deref(), Some(&b"mine"[..]));
    }

    #[test]
    fn specs_are_consistent() {
        for spec in SPECS {
            assert_eq!(spec.group, "generic");
            assert!(matches!(spec.handler, Handler::Keyed(_)));
        }
        let find = |n: &str| SPECS.iter().find(|s| s.name == n).unwrap();
        assert_eq!(find("object").first_key, 2);
        assert_eq!(find("move").flags, &["write", "fast"]);
        assert_eq!(find("expire").arity, -3);
        assert_eq!(SPECS.len(), 12);
    }
}
