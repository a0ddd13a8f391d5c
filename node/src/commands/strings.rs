//! Keyed string commands (GET, SET, INCR family, APPEND, GETRANGE, SETRANGE, ...).
//!
//! Semantics, reply types and error texts follow Redis 7.0 (`t_string.c`), plus Valkey 8.1's
//! `SET ... IFEQ value`. Integers are parsed like Redis's `string2ll`; INCRBYFLOAT works in x87
//! 80-bit extended precision (Redis's `long double` on x86-64) through the software
//! implementation in [`long_double`], so that its results are byte-for-byte Redis's.

use std::cmp::Ordering;

use bytes::Bytes;
use corekv_engine::{EngineError, Expiry, Keyspace};
use corekv_net::resp::ReplyEncoder;

use super::{CommandSpec, ExecCtx};

pub(crate) const ERR_SYNTAX: &str = "ERR syntax error";
pub(crate) const ERR_NOT_INTEGER: &str = "ERR value is not an integer or out of range";
pub(crate) const ERR_NOT_FLOAT: &str = "ERR value is not a valid float";
const ERR_OVERFLOW: &str = "ERR increment or decrement would overflow";
const ERR_DECR_OVERFLOW: &str = "ERR decrement would overflow";
const ERR_NAN_INF: &str = "ERR increment would produce NaN or Infinity";
const ERR_TOO_LONG: &str = "ERR string exceeds maximum allowed size (proto-max-bulk-len)";
const ERR_OFFSET: &str = "ERR offset is out of range";

/// Redis's default `proto-max-bulk-len`: the largest string APPEND/SETRANGE may build.
pub(crate) const PROTO_MAX_BULK_LEN: u64 = 512 * 1024 * 1024;

/// Scratch buffers above this capacity are given back after use, so that one huge APPEND or
/// SETRANGE does not pin its memory for the life of the shard.
const SCRATCH_KEEP: usize = 1 << 20;

pub const SPECS: &[CommandSpec] = &[
    spec("get", 2, &["readonly", "fast"], "Get the value of a key", "1.0.0", get),
    spec(
        "set",
        -3,
        &["write", "denyoom"],
        "Set the string value of a key",
        "1.0.0",
        set,
    ),
    spec(
        "setnx",
        3,
        &["write", "denyoom", "fast"],
        "Set the value of a key, only if the key does not exist",
        "1.0.0",
        setnx,
    ),
    spec(
        "setex",
        4,
        &["write", "denyoom"],
        "Set the value and expiration of a key",
        "2.0.0",
        setex,
    ),
    spec(
        "psetex",
        4,
        &["write", "denyoom"],
        "Set the value and expiration in milliseconds of a key",
        "2.6.0",
        psetex,
    ),
    spec(
        "getset",
        3,
        &["write", "denyoom", "fast"],
        "Set the string value of a key and return its old value",
        "1.0.0",
        getset,
    ),
    spec(
        "getdel",
        2,
        &["write", "fast"],
        "Get the value of a key and delete the key",
        "6.2.0",
        getdel,
    ),
    spec(
        "getex",
        -2,
        &["write", "fast"],
        "Get the value of a key and optionally set its expiration",
        "6.2.0",
        getex,
    ),
    spec(
        "append",
        3,
        &["write", "denyoom", "fast"],
        "Append a value to a key",
        "2.0.0",
        append,
    ),
    spec(
        "strlen",
        2,
        &["readonly", "fast"],
        "Get the length of the value stored in a key",
        "2.2.0",
        strlen,
    ),
    spec(
        "getrange",
        4,
        &["readonly"],
        "Get a substring of the string stored at a key",
        "2.4.0",
        getrange,
    ),
    spec(
        "substr",
        4,
        &["readonly"],
        "Get a substring of the string stored at a key",
        "1.0.0",
        substr,
    ),
    spec(
        "setrange",
        4,
        &["write", "denyoom"],
        "Overwrite part of a string at key starting at the specified offset",
        "2.2.0",
        setrange,
    ),
    spec(
        "incr",
        2,
        &["write", "denyoom", "fast"],
        "Increment the integer value of a key by one",
        "1.0.0",
        incr,
    ),
    spec(
        "decr",
        2,
        &["write", "denyoom", "fast"],
        "Decrement the integer value of a key by one",
        "1.0.0",
        decr,
    ),
    spec(
        "incrby",
        3,
        &["write", "denyoom", "fast"],
        "Increment the integer value of a key by the given amount",
        "1.0.0",
        incrby,
    ),
    spec(
        "decrby",
        3,
        &["write", "denyoom", "fast"],
        "Decrement the integer value of a key by the given number",
        "1.0.0",
        decrby,
    ),
    spec(
        "incrbyfloat",
        3,
        &["write", "denyoom", "fast"],
        "Increment the float value of a key by the given amount",
        "2.6.0",
        incrbyfloat,
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
    CommandSpec::keyed(name, arity, flags, "string", summary, since, run)
}

// ---------------------------------------------------------------------------------------------
// Shared helpers (also used by `keys.rs`)
// ---------------------------------------------------------------------------------------------

/// Redis's `string2ll`: an optional '-', no '+', no leading zeros (except "0" itself), no spaces,
/// fewer than 21 bytes, within i64.
pub(crate) fn parse_i64(s: &[u8]) -> Option<i64> {
    if s.is_empty() || s.len() >= 21 {
        return None;
    }
    if s == b"0" {
        return Some(0);
    }
    let (negative, digits) = match s[0] {
        b'-' => (true, &s[1..]),
        _ => (false, s),
    };
    let first = *digits.first()?;
    if !(b'1'..=b'9').contains(&first) {
        return None;
    }
    let mut v: u64 = u64::from(first - b'0');
    for &c in &digits[1..] {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
    }
    if negative {
        if v > (i64::MAX as u64) + 1 {
            return None;
        }
        Some((v as i64).wrapping_neg())
    } else {
        i64::try_from(v).ok()
    }
}

/// Formats `n` in decimal into `buf`, returning the used tail.
pub(crate) fn format_i64(n: i64, buf: &mut [u8; 20]) -> &[u8] {
    let mut v = n.unsigned_abs();
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if n < 0 {
        i -= 1;
        buf[i] = b'-';
    }
    &buf[i..]
}

/// Replies an engine error: the OOM error carries its Redis code in its text; anything else is
/// reported as an `ERR`.
pub(crate) fn reply_engine_error(err: &EngineError, enc: &mut ReplyEncoder<'_>) {
    match err {
        EngineError::OutOfMemory => enc.error(&err.to_string()),
        other => enc.error(&format!("ERR {other}")),
    }
}

/// Gives back an oversized scratch buffer's memory.
fn release_scratch(scratch: &mut Vec<u8>) {
    if scratch.capacity() > SCRATCH_KEEP {
        scratch.clear();
        scratch.shrink_to(SCRATCH_KEEP);
    }
}

/// Redis's `checkStringLength`: whether a string of `size + append` bytes is allowed.
fn string_length_ok(size: u64, append: u64) -> bool {
    size.checked_add(append)
        .is_some_and(|total| total <= PROTO_MAX_BULK_LEN)
}

// ---------------------------------------------------------------------------------------------
// SET / GETEX options
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ExpireKind {
    Ex,
    Px,
    ExAt,
    PxAt,
}

/// The options of SET (`for_set`) or GETEX, as Redis's `parseExtendedStringArgumentsOrReply`
/// accepts them (plus Valkey's IFEQ for SET).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct StringOptions<'a> {
    nx: bool,
    xx: bool,
    get: bool,
    keepttl: bool,
    persist: bool,
    ifeq: Option<&'a [u8]>,
    expire: Option<(ExpireKind, &'a [u8])>,
}

/// Parses `args[start..]`; `Err(())` means "ERR syntax error".
fn parse_string_options(args: &[Bytes], start: usize, for_set: bool) -> Result<StringOptions<'_>, ()> {
    let mut o = StringOptions::default();
    let mut j = start;
    while j < args.len() {
        let opt: &[u8] = &args[j];
        let next: Option<&[u8]> = args.get(j + 1).map(|b| &b[..]);
        let expire_kind = o.expire.map(|(k, _)| k);
        // An expiry option may repeat itself but not follow another kind of expiry.
        let expire_ok = |kind: ExpireKind| expire_kind.unwrap_or(kind) == kind;
        let is = |name: &[u8]| opt.eq_ignore_ascii_case(name);
        if for_set && is(b"nx") && !o.xx && o.ifeq.is_none() {
            o.nx = true;
        } else if for_set && is(b"xx") && !o.nx && o.ifeq.is_none() {
            o.xx = true;
        } else if for_set && is(b"get") {
            o.get = true;
        } else if for_set && is(b"keepttl") && !o.persist && o.expire.is_none() {
            o.keepttl = true;
        } else if !for_set && is(b"persist") && o.expire.is_none() && !o.keepttl {
            o.persist = true;
        } else if for_set && is(b"ifeq") && next.is_some() && !o.nx && !o.xx && o.ifeq.is_none() {
            o.ifeq = next;
            j += 1;
        } else if let (Some(kind), Some(value)) = (expire_option(opt), next) {
            if o.keepttl || o.persist || !expire_ok(kind) {
                return Err(());
            }
            o.expire = Some((kind, value));
            j += 1;
        } else {
            return Err(());
        }
        j += 1;
    }
    Ok(o)
}

fn expire_option(opt: &[u8]) -> Option<ExpireKind> {
    if opt.eq_ignore_ascii_case(b"ex") {
        Some(ExpireKind::Ex)
    } else if opt.eq_ignore_ascii_case(b"px") {
        Some(ExpireKind::Px)
    } else if opt.eq_ignore_ascii_case(b"exat") {
        Some(ExpireKind::ExAt)
    } else if opt.eq_ignore_ascii_case(b"pxat") {
        Some(ExpireKind::PxAt)
    } else {
        None
    }
}

#[derive(Debug, PartialEq, Eq)]
enum ExpireError {
    NotInteger,
    Invalid,
}

/// Redis's `getExpireMillisecondsOrReply`: the absolute expiry in ms of an EX/PX/EXAT/PXAT value.
fn expire_at_ms(kind: ExpireKind, value: &[u8], now_ms: u64) -> Result<u64, ExpireError> {
    let mut ms = parse_i64(value).ok_or(ExpireError::NotInteger)?;
    let seconds = matches!(kind, ExpireKind::Ex | ExpireKind::ExAt);
    if ms <= 0 || (seconds && ms > i64::MAX / 1000) {
        return Err(ExpireError::Invalid);
    }
    if seconds {
        ms *= 1000;
    }
    if matches!(kind, ExpireKind::Ex | ExpireKind::Px) {
        let now = i64::try_from(now_ms).map_err(|_| ExpireError::Invalid)?;
        ms = ms.checked_add(now).ok_or(ExpireError::Invalid)?;
    }
    Ok(ms as u64)
}

fn reply_expire_error(err: ExpireError, invalid_text: &str, enc: &mut ReplyEncoder<'_>) {
    match err {
        ExpireError::NotInteger => enc.error(ERR_NOT_INTEGER),
        ExpireError::Invalid => enc.error(invalid_text),
    }
}

// ---------------------------------------------------------------------------------------------
// GET / SET family
// ---------------------------------------------------------------------------------------------

/// GET key
pub fn get(ctx: &mut ExecCtx<'_>, args: &[Bytes], enc: &mut ReplyEncoder<'_>) {
    match ctx.keyspace.get(ctx.db, &args[1], ctx.now_ms) {
        Some(v) => enc.bulk(v),
        None => enc.null(),
    }
}

/// How SET-like commands acknowledge: `+OK`/nil (SET, SETEX, PSETEX) or `:1`/`:0` (SETNX).
#[derive(Clone, Copy, PartialEq, Eq)]
enum SetReply {
    OkNull,
    OneZero,
}

/// `SET key value [NX | XX | IFEQ cmp] [GET] [EX s | PX ms | EXAT ts | PXAT ts-ms | KEEPTTL]`
pub fn set(ctx: &mut ExecCtx<'_>, args: &[Bytes], enc: &mut ReplyEncoder<'_>) {
    let Ok(opts) = parse_string_options(args, 3, true) else {
        enc.error(ERR_SYNTAX);
        return;
    };
    set_generic(
        ctx,
        &args[1],
        &args[2],
        &opts,
        "ERR invalid expire time in 'set' command",
        SetReply::OkNull,
        enc,
    );
}

/// SETNX key value
pub fn setnx(ctx: &mut ExecCtx<'_>, args: &[Bytes], enc: &mut ReplyEncoder<'_>) {
    let opts = StringOptions {
        nx: true,
        ..Default::default()
    };
    set_generic(ctx, &args[1], &args[2], &opts, "", SetReply::OneZero, enc);
}

/// SETEX key seconds value
pub fn setex(ctx: &mut ExecCtx<'_>, args: &[Bytes], enc: &mut ReplyEncoder<'_>) {
    set_with_expiry(
        ctx,
        args,
        ExpireKind::Ex,
        "ERR invalid expire time in 'setex' command",
        enc,
    );
}

/// PSETEX key milliseconds value
pub fn psetex(ctx: &mut ExecCtx<'_>, args: &[Bytes], enc: &mut ReplyEncoder<'_>) {
    set_with_expiry(
        ctx,
        args,
        ExpireKind::Px,
        "ERR invalid expire time in 'psetex' command",
        enc,
    );
}

/// SETEX and PSETEX: `key ttl value`, the TTL in the unit `kind` names.
fn set_with_expiry(
    ctx: &mut ExecCtx<'_>,
    args: &[Bytes],
    kind: ExpireKind,
    invalid_expire: &str,
    enc: &mut ReplyEncoder<'_>,
) {
    let opts = StringOptions {
        expire: Some((kind, &args[2])),
        ..Default::default()
    };
    set_generic(ctx, &args[1], &args[3], &opts, invalid_expire, SetReply::OkNull, enc);
}

/// Redis's `setGenericCommand` (with Valkey's IFEQ).
fn set_generic(
    ctx: &mut ExecCtx<'_>,
    key: &[u8],
    value: &[u8],
    opts: &StringOptions<'_>,
    invalid_expire: &str,
    reply: SetReply,
    enc: &mut ReplyEncoder<'_>,
) {
    let expiry = match opts.expire {
        Some((kind, arg)) => match expire_at_ms(kind, arg, ctx.now_ms) {
            Ok(at) => Expiry::At(at),
            Err(e) => return reply_expire_error(e, invalid_expire, enc),
        },
        None if opts.keepttl => Expiry::Keep,
        None => Expiry::Persist,
    };
    let (db, now) = (ctx.db, ctx.now_ms);
    let keyspace = &mut *ctx.keyspace;
    let scratch = &mut *ctx.scratch;

    // GET: the old value (a read lookup: counts a hit or miss), kept in `scratch` for the reply.
    let mut old_found = false;
    if opts.get {
        if let Some(v) = keyspace.get(db, key, now) {
            scratch.clear();
            scratch.extend_from_slice(v);
            old_found = true;
        }
    }
    let proceed = if opts.nx || opts.xx {
        let found = if opts.get {
            old_found
        } else {
            keyspace.contains(db, key, now)
        };
        if opts.nx {
            !found
        } else {
            found
        }
    } else if let Some(expected) = opts.ifeq {
        if opts.get {
            old_found && scratch.as_slice() == expected
        } else {
            keyspace.peek(db, key, now) == Some(expected)
        }
    } else {
        true
    };

    if proceed {
        if let Err(e) = keyspace.set(db, key, value, expiry, now) {
            reply_engine_error(&e, enc);
            release_scratch(scratch);
            return;
        }
    }
    if opts.get {
        if old_found {
            enc.bulk(scratch);
        } else {
            enc.null();
        }
        release_scratch(scratch);
    } else {
        match (reply, proceed) {
            (SetReply::OkNull, true) => enc.ok(),
            (SetReply::OkNull, false) => enc.null(),
            (SetReply::OneZero, true) => enc.integer(1),
            (SetReply::OneZero, false) => enc.integer(0),
        }
    }
}

/// GETSET key value (the new value has no TTL).
pub fn getset(ctx: &mut ExecCtx<'_>, args: &[Bytes], enc: &mut ReplyEncoder<'_>) {
    let (db, now) = (ctx.db, ctx.now_ms);
    let keyspace = &mut *ctx.keyspace;
    let scratch = &mut *ctx.scratch;
    let found = match keyspace.get(db, &args[1], now) {
        Some(v) => {
            scratch.clear();
            scratch.extend_from_slice(v);
            true
        }
        None => false,
    };
    match keyspace.set(db, &args[1], &args[2], Expiry::Persist, now) {
        Err(e) => reply_engine_error(&e, enc),
        Ok(()) if found => enc.bulk(scratch),
        Ok(()) => enc.null(),
    }
    release_scratch(scratch);
}

/// GETDEL key
pub fn getdel(ctx: &mut ExecCtx<'_>, args: &[Bytes], enc: &mut ReplyEncoder<'_>) {
    let (db, now) = (ctx.db, ctx.now_ms);
    match ctx.keyspace.get(db, &args[1], now) {
        Some(v) => enc.bulk(v),
        None => return enc.null(),
    }
    ctx.keyspace.remove(db, &args[1], now);
}

/// GETEX key [EX s | PX ms | EXAT ts | PXAT ts-ms | PERSIST]
pub fn getex(ctx: &mut ExecCtx<'_>, args: &[Bytes], enc: &mut ReplyEncoder<'_>) {
    let Ok(opts) = parse_string_options(args, 2, false) else {
        enc.error(ERR_SYNTAX);
        return;
    };
    let (db, now) = (ctx.db, ctx.now_ms);
    let Some(value) = ctx.keyspace.get(db, &args[1], now) else {
        enc.null();
        return;
    };
    // The expiry is validated only for an existing key, as Redis does.
    let expire_at = match opts.expire {
        Some((kind, arg)) => match expire_at_ms(kind, arg, now) {
            Ok(at) => Some(at),
            Err(e) => return reply_expire_error(e, "ERR invalid expire time in 'getex' command", enc),
        },
        None => None,
    };
    enc.bulk(value);
    if let Some(at) = expire_at {
        // An EXAT/PXAT in the past deletes the key.
        ctx.keyspace.set_expiry(db, &args[1], Some(at), now);
    } else if opts.persist {
        ctx.keyspace.set_expiry(db, &args[1], None, now);
    }
}

// ---------------------------------------------------------------------------------------------
// APPEND, STRLEN, GETRANGE, SETRANGE
// ---------------------------------------------------------------------------------------------

/// APPEND key value
pub fn append(ctx: &mut ExecCtx<'_>, args: &[Bytes], enc: &mut ReplyEncoder<'_>) {
    let (db, now) = (ctx.db, ctx.now_ms);
    let keyspace = &mut *ctx.keyspace;
    let scratch = &mut *ctx.scratch;
    let (key, tail) = (&args[1][..], &args[2][..]);
    let result = match keyspace.peek(db, key, now) {
        None => keyspace.set(db, key, tail, Expiry::Persist, now).map(|()| tail.len()),
        Some(old) => {
            if !string_length_ok(old.len() as u64, tail.len() as u64) {
                enc.error(ERR_TOO_LONG);
                return;
            }
            scratch.clear();
            scratch.reserve(old.len() + tail.len());
            scratch.extend_from_slice(old);
            scratch.extend_from_slice(tail);
            keyspace
                .set(db, key, scratch, Expiry::Keep, now)
                .map(|()| scratch.len())
        }
    };
    match result {
        Ok(len) => enc.integer(len as i64),
        Err(e) => reply_engine_error(&e, enc),
    }
    release_scratch(scratch);
}

/// STRLEN key
pub fn strlen(ctx: &mut ExecCtx<'_>, args: &[Bytes], enc: &mut ReplyEncoder<'_>) {
    let len = ctx.keyspace.get(ctx.db, &args[1], ctx.now_ms).map_or(0, <[u8]>::len);
    enc.integer(len as i64);
}

/// GETRANGE key start end
pub fn getrange(ctx: &mut ExecCtx<'_>, args: &[Bytes], enc: &mut ReplyEncoder<'_>) {
    let (Some(start), Some(end)) = (parse_i64(&args[2]), parse_i64(&args[3])) else {
        enc.error(ERR_NOT_INTEGER);
        return;
    };
    match ctx.keyspace.get(ctx.db, &args[1], ctx.now_ms) {
        Some(v) => enc.bulk(substring(v, start, end)),
        None => enc.bulk(b""),
    }
}

/// SUBSTR key start end (the old name of GETRANGE)
pub fn substr(ctx: &mut ExecCtx<'_>, args: &[Bytes], enc: &mut ReplyEncoder<'_>) {
    getrange(ctx, args, enc);
}

/// Redis 7.0's GETRANGE index arithmetic (including its quirk that an end index far before the
/// start of the string clamps to 0, so `GETRANGE "Hello" 0 -100` is "H").
fn substring(v: &[u8], start: i64, end: i64) -> &[u8] {
    let len = v.len() as i64;
    if start < 0 && end < 0 && start > end {
        return b"";
    }
    let mut start = if start < 0 { start + len } else { start };
    let mut end = if end < 0 { end + len } else { end };
    start = start.max(0);
    end = end.max(0);
    if end >= len {
        end = len - 1;
    }
    if start > end || len == 0 {
        return b"";
    }
    &v[start as usize..=end as usize]
}

/// SETRANGE key offset value
pub fn setrange(ctx: &mut ExecCtx<'_>, args: &[Bytes], enc: &mut ReplyEncoder<'_>) {
    let Some(offset) = parse_i64(&args[2]) else {
        enc.error(ERR_NOT_INTEGER);
        return;
    };
    if offset < 0 {
        enc.error(ERR_OFFSET);
        return;
    }
    let (db, now) = (ctx.db, ctx.now_ms);
    let keyspace = &mut *ctx.keyspace;
    let scratch = &mut *ctx.scratch;
    let (key, patch) = (&args[1][..], &args[3][..]);
    let offset_u = offset as u64;
    let expiry = match keyspace.peek(db, key, now) {
        None => {
            if patch.is_empty() {
                enc.integer(0);
                return;
            }
            if !string_length_ok(offset_u, patch.len() as u64) {
                enc.error(ERR_TOO_LONG);
                return;
            }
            scratch.clear();
            Expiry::Persist
        }
        Some(old) => {
            if patch.is_empty() {
                enc.integer(old.len() as i64);
                return;
            }
            if !string_length_ok(offset_u, patch.len() as u64) {
                enc.error(ERR_TOO_LONG);
                return;
            }
            scratch.clear();
            scratch.extend_from_slice(old);
            Expiry::Keep
        }
    };
    // Both fit in usize: offset + len <= 512 MiB.
    let start = offset as usize;
    let end = start + patch.len();
    if scratch.len() < end {
        scratch.resize(end, 0);
    }
    scratch[start..end].copy_from_slice(patch);
    match keyspace.set(db, key, scratch, expiry, now) {
        Ok(()) => enc.integer(scratch.len() as i64),
        Err(e) => reply_engine_error(&e, enc),
    }
    release_scratch(scratch);
}

// ---------------------------------------------------------------------------------------------
// INCR family
// ---------------------------------------------------------------------------------------------

/// INCR key
pub fn incr(ctx: &mut ExecCtx<'_>, args: &[Bytes], enc: &mut ReplyEncoder<'_>) {
    incr_decr(ctx, &args[1], 1, enc);
}

/// DECR key
pub fn decr(ctx: &mut ExecCtx<'_>, args: &[Bytes], enc: &mut ReplyEncoder<'_>) {
    incr_decr(ctx, &args[1], -1, enc);
}

/// INCRBY key increment
pub fn incrby(ctx: &mut ExecCtx<'_>, args: &[Bytes], enc: &mut ReplyEncoder<'_>) {
    match parse_i64(&args[2]) {
        Some(n) => incr_decr(ctx, &args[1], n, enc),
        None => enc.error(ERR_NOT_INTEGER),
    }
}

/// DECRBY key decrement
pub fn decrby(ctx: &mut ExecCtx<'_>, args: &[Bytes], enc: &mut ReplyEncoder<'_>) {
    match parse_i64(&args[2]) {
        Some(i64::MIN) => enc.error(ERR_DECR_OVERFLOW),
        Some(n) => incr_decr(ctx, &args[1], -n, enc),
        None => enc.error(ERR_NOT_INTEGER),
    }
}

/// Redis's `incrDecrCommand`: the TTL is kept.
fn incr_decr(ctx: &mut ExecCtx<'_>, key: &[u8], by: i64, enc: &mut ReplyEncoder<'_>) {
    match add_to_integer(ctx.keyspace, ctx.db, key, by, ctx.now_ms) {
        Ok(value) => enc.integer(value),
        Err(IncrError::NotInteger) => enc.error(ERR_NOT_INTEGER),
        Err(IncrError::Overflow) => enc.error(ERR_OVERFLOW),
        Err(IncrError::Engine(e)) => reply_engine_error(&e, enc),
    }
}

/// Why [`add_to_integer`] changed nothing.
pub(crate) enum IncrError {
    NotInteger,
    Overflow,
    Engine(EngineError),
}

/// Adds `by` to the integer stored at `key` (0 when absent) and returns the sum; an existing
/// key's TTL is kept. Shared by RESP's INCR family and the native protocol's INCR.
pub(crate) fn add_to_integer(
    keyspace: &mut Keyspace,
    db: usize,
    key: &[u8],
    by: i64,
    now: u64,
) -> Result<i64, IncrError> {
    let (current, expiry) = match keyspace.peek(db, key, now) {
        None => (0, Expiry::Persist),
        Some(v) => (parse_i64(v).ok_or(IncrError::NotInteger)?, Expiry::Keep),
    };
    let value = current.checked_add(by).ok_or(IncrError::Overflow)?;
    let mut buf = [0u8; 20];
    keyspace
        .set(db, key, format_i64(value, &mut buf), expiry, now)
        .map_err(IncrError::Engine)?;
    Ok(value)
}

/// INCRBYFLOAT key increment (in x87 extended precision, replied as a bulk string).
pub fn incrbyfloat(ctx: &mut ExecCtx<'_>, args: &[Bytes], enc: &mut ReplyEncoder<'_>) {
    let (db, now) = (ctx.db, ctx.now_ms);
    let keyspace = &mut *ctx.keyspace;
    let scratch = &mut *ctx.scratch;
    let (current, expiry) = match keyspace.peek(db, &args[1], now) {
        None => (long_double::LongDouble::ZERO, Expiry::Persist),
        Some(v) => match long_double::parse(v) {
            Some(x) => (x, Expiry::Keep),
            None => return enc.error(ERR_NOT_FLOAT),
        },
    };
    let Some(incr) = long_double::parse(&args[2]) else {
        enc.error(ERR_NOT_FLOAT);
        return;
    };
    let sum = current.add(incr);
    if !sum.is_finite() {
        enc.error(ERR_NAN_INF);
        return;
    }
    scratch.clear();
    sum.format_human(scratch);
    match keyspace.set(db, &args[1], scratch, expiry, now) {
        Ok(()) => enc.bulk(scratch),
        Err(e) => reply_engine_error(&e, enc),
    }
    release_scratch(scratch);
}

// ---------------------------------------------------------------------------------------------
// x87 extended precision
// ---------------------------------------------------------------------------------------------

/// A software model of the x87 80-bit `long double` Redis uses for INCRBYFLOAT on x86-64: glibc
/// `strtold` parsing (as Redis's `string2ld` checks it), correctly rounded addition, and
/// `%.17Lf` formatting with Redis's trailing-zero trimming (`ld2string`, `LD_STR_HUMAN`).
pub(crate) mod long_double {
    use super::Ordering;

    /// Smallest exponent of a value's least significant bit: subnormals are multiples of 2^-16445.
    const MIN_EXP: i64 = -16445;
    /// Largest exponent of a value's most significant bit (max ≈ 1.19e4932).
    const MAX_LEAD: i64 = 16383;
    /// Redis's `MAX_LONG_DOUBLE_CHARS`: inputs of this many bytes or more are rejected.
    const MAX_CHARS: usize = 5 * 1024;

    /// `mant × 2^exp`, or ±infinity. Finite values are canonical: `mant` has its top bit set,
    /// except for subnormals (`exp == MIN_EXP`) and zero (`mant == 0`, `exp == 0`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct LongDouble {
        neg: bool,
        inf: bool,
        mant: u64,
        exp: i64,
    }

    impl LongDouble {
        pub const ZERO: LongDouble = LongDouble {
            neg: false,
            inf: false,
            mant: 0,
            exp: 0,
        };

        fn zero(neg: bool) -> Self {
            LongDouble { neg, ..Self::ZERO }
        }

        fn infinity(neg: bool) -> Self {
            LongDouble {
                neg,
                inf: true,
                mant: 0,
                exp: 0,
            }
        }

        pub fn is_finite(&self) -> bool {
            !self.inf
        }

        fn is_zero(&self) -> bool {
            !self.inf && self.mant == 0
        }

        /// The correctly rounded (to nearest, ties to even) sum. NaN (inf - inf) is reported as
        /// a non-finite value too.
        pub fn add(self, other: LongDouble) -> LongDouble {
            if self.inf || other.inf {
                return LongDouble::infinity(self.neg);
            }
            if self.is_zero() && other.is_zero() {
                return LongDouble::zero(self.neg && other.neg);
            }
            if self.is_zero() {
                return other;
            }
            if other.is_zero() {
                return self;
            }
            // x has the larger (or equal) exponent, hence the larger or equal magnitude order.
            let (x, y) = if self.exp >= other.exp {
                (self, other)
            } else {
                (other, self)
            };
            let base = x.exp - 62;
            let big = u128::from(x.mant) << 62;
            let d = base - y.exp;
            let (small, sticky) = if d <= 0 {
                (u128::from(y.mant) << (-d), false)
            } else if d >= 128 {
                (0, true)
            } else {
                let m = u128::from(y.mant);
                (m >> d, m & ((1u128 << d) - 1) != 0)
            };
            if x.neg == y.neg {
                return round(x.neg, big + small, base, sticky);
            }
            if sticky {
                // |y| was truncated; x is normal and far larger, so the result keeps x's sign and
                // lies strictly between big - small - 1 and big - small.
                return round(x.neg, big - small - 1, base, true);
            }
            match big.cmp(&small) {
                Ordering::Equal => LongDouble::ZERO,
                Ordering::Greater => round(x.neg, big - small, base, false),
                Ordering::Less => round(y.neg, small - big, base, false),
            }
        }

        /// Appends `%.17Lf` with trailing zeros (and a trailing '.') removed, "-0" becoming "0":
        /// the text Redis stores and replies for INCRBYFLOAT. `self` must be finite.
        pub fn format_human(&self, out: &mut Vec<u8>) {
            let start = out.len();
            if self.neg {
                out.push(b'-');
            }
            if self.exp >= 0 {
                // An integer: its %.17Lf fraction is all zeros, which are trimmed.
                let mut n = Big::from_u64(self.mant);
                n.shl(self.exp as usize);
                n.write_decimal(out);
            } else {
                // mant × 10^17 < 2^121: the 17-decimal fixed-point value, rounded half to even.
                let scaled = u128::from(self.mant) * 100_000_000_000_000_000u128;
                let sh = (-self.exp) as u32;
                let n = if sh >= 128 {
                    0
                } else {
                    let kept = scaled >> sh;
                    let rem = scaled & ((1u128 << sh) - 1);
                    let half = 1u128 << (sh - 1);
                    match rem.cmp(&half) {
                        Ordering::Greater => kept + 1,
                        Ordering::Equal => kept + (kept & 1),
                        Ordering::Less => kept,
                    }
                };
                let mut digits = [0u8; 40];
                let mut i = digits.len();
                let mut v = n;
                // At least 18 digits: one before the point and 17 after.
                while v > 0 || digits.len() - i < 18 {
                    i -= 1;
                    digits[i] = b'0' + (v % 10) as u8;
                    v /= 10;
                }
                let digits = &digits[i..];
                let (int_part, frac) = digits.split_at(digits.len() - 17);
                out.extend_from_slice(int_part);
                let frac_len = frac.iter().rposition(|&c| c != b'0').map_or(0, |p| p + 1);
                if frac_len > 0 {
                    out.push(b'.');
                    out.extend_from_slice(&frac[..frac_len]);
                }
            }
            if &out[start..] == b"-0" {
                out.truncate(start);
                out.push(b'0');
            }
        }
    }

    /// Rounds `sig × 2^e2` (plus, if `sticky`, something strictly between 0 and one unit of
    /// `sig`'s last bit) to the nearest long double, ties to even. Callers that pass `sticky`
    /// give `sig` at least two bits more than the result keeps.
    fn round(neg: bool, sig: u128, e2: i64, sticky: bool) -> LongDouble {
        if sig == 0 {
            return LongDouble::zero(neg);
        }
        let bits = 128 - i64::from(sig.leading_zeros());
        let lead = e2 + bits - 1;
        let mut exp = (lead - 63).max(MIN_EXP);
        let shift = exp - e2;
        let mut mant: u128 = if shift <= 0 {
            sig << (-shift)
        } else if shift >= 128 {
            let above_half = shift == 128 && (sig > 1u128 << 127 || (sig == 1u128 << 127 && sticky));
            u128::from(above_half)
        } else {
            let kept = sig >> shift;
            let rem = sig & ((1u128 << shift) - 1);
            let half = 1u128 << (shift - 1);
            let up = match rem.cmp(&half) {
                Ordering::Greater => true,
                Ordering::Equal => sticky || kept & 1 == 1,
                Ordering::Less => false,
            };
            kept + u128::from(up)
        };
        if mant >> 64 != 0 {
            mant >>= 1;
            exp += 1;
        }
        if mant == 0 {
            return LongDouble::zero(neg);
        }
        let top = exp + 63 - i64::from((mant as u64).leading_zeros());
        if top > MAX_LEAD {
            return LongDouble::infinity(neg);
        }
        LongDouble {
            neg,
            inf: false,
            mant: mant as u64,
            exp,
        }
    }

    /// Redis's `string2ld`: glibc `strtold` over the whole input (no leading space, nothing
    /// left over), rejecting NaN, overflow to infinity and underflow to zero. "inf"/"infinity"
    /// are accepted (INCRBYFLOAT then refuses the infinite result).
    pub fn parse(s: &[u8]) -> Option<LongDouble> {
        if s.is_empty() || s.len() >= MAX_CHARS {
            return None;
        }
        let (neg, rest) = match s[0] {
            b'-' => (true, &s[1..]),
            b'+' => (false, &s[1..]),
            _ => (false, s),
        };
        if rest.eq_ignore_ascii_case(b"inf") || rest.eq_ignore_ascii_case(b"infinity") {
            return Some(LongDouble::infinity(neg));
        }
        let value = if rest.len() > 2 && rest[0] == b'0' && (rest[1] | 0x20) == b'x' {
            parse_hex(neg, &rest[2..])?
        } else {
            parse_decimal(neg, rest)?
        };
        value.is_finite().then_some(value)
    }

    /// Splits `mantissa[.fraction][<marker>[+-]digits]`, returning (integer digits, fraction
    /// digits, exponent saturated to ±10^9), or None if that is not the whole input.
    fn split_number(s: &[u8], is_digit: fn(&u8) -> bool, marker: u8) -> Option<(&[u8], &[u8], i64)> {
        let int_len = s.iter().take_while(|c| is_digit(c)).count();
        let (int_digits, mut rest) = s.split_at(int_len);
        let mut frac_digits: &[u8] = &[];
        if let Some((b'.', after)) = rest.split_first() {
            let frac_len = after.iter().take_while(|c| is_digit(c)).count();
            frac_digits = &after[..frac_len];
            rest = &after[frac_len..];
        }
        if int_digits.is_empty() && frac_digits.is_empty() {
            return None;
        }
        let mut exp: i64 = 0;
        if let Some((&m, after)) = rest.split_first() {
            if m | 0x20 != marker {
                return None;
            }
            let (exp_neg, digits) = match after.split_first() {
                Some((b'-', d)) => (true, d),
                Some((b'+', d)) => (false, d),
                _ => (false, after),
            };
            if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            for &c in digits {
                exp = (exp * 10 + i64::from(c - b'0')).min(1_000_000_000);
            }
            if exp_neg {
                exp = -exp;
            }
        }
        Some((int_digits, frac_digits, exp))
    }

    fn parse_decimal(neg: bool, s: &[u8]) -> Option<LongDouble> {
        let (int_digits, frac_digits, exp) = split_number(s, u8::is_ascii_digit, b'e')?;
        // value = int(all digits) × 10^(exp - frac_len), with leading/trailing zeros stripped.
        let all = int_digits.iter().chain(frac_digits.iter());
        let total = int_digits.len() + frac_digits.len();
        let leading = all.clone().take_while(|&&c| c == b'0').count();
        if leading == total {
            return Some(LongDouble::zero(neg));
        }
        let trailing = all.clone().rev().take_while(|&&c| c == b'0').count();
        let nd = (total - leading - trailing) as i64;
        let e10 = exp - frac_digits.len() as i64 + trailing as i64;
        // value ≥ 10^(nd+e10-1) ≥ 10^4933 > LDBL_MAX, or value < 10^-4951 < half the smallest
        // subnormal: ERANGE with ±HUGE_VALL or zero, which Redis rejects.
        if nd + e10 >= 4934 || nd + e10 <= -4951 {
            return None;
        }
        let mut d = Big::zero();
        let mut chunk: u32 = 0;
        let mut chunk_len = 0;
        for &c in all.skip(leading).take(nd as usize) {
            chunk = chunk * 10 + u32::from(c - b'0');
            chunk_len += 1;
            if chunk_len == 9 {
                d.mul_add(1_000_000_000, chunk);
                chunk = 0;
                chunk_len = 0;
            }
        }
        if chunk_len > 0 {
            d.mul_add(10u32.pow(chunk_len), chunk);
        }
        if e10 >= 0 {
            d.mul_pow10(e10 as usize);
            if d.overflow {
                return None;
            }
            let (sig, e2, sticky) = d.top128();
            return Some(round(neg, sig, e2, sticky));
        }
        // value = d / 10^k: q = floor(d × 2^s / 10^k) with 66..67 bits, the rest sticky.
        let mut p = Big::from_u64(1);
        p.mul_pow10((-e10) as usize);
        let s = p.bit_len() as i64 - d.bit_len() as i64 + 66;
        if s >= 0 {
            d.shl(s as usize);
        } else {
            p.shl((-s) as usize);
        }
        p.shl(67);
        let mut q: u128 = 0;
        for i in (0..=67).rev() {
            if d.cmp(&p) != Ordering::Less {
                d.sub(&p);
                q |= 1u128 << i;
            }
            p.shr1();
        }
        if d.overflow || p.overflow {
            return None;
        }
        let value = round(neg, q, -s, !d.is_zero());
        (!value.is_zero()).then_some(value)
    }

    fn parse_hex(neg: bool, s: &[u8]) -> Option<LongDouble> {
        let (int_digits, frac_digits, exp) = split_number(s, u8::is_ascii_hexdigit, b'p')?;
        let mut h = Big::zero();
        for &c in int_digits.iter().chain(frac_digits.iter()) {
            let v = (c as char).to_digit(16).unwrap_or(0);
            h.mul_add(16, v);
        }
        if h.overflow {
            return None;
        }
        if h.is_zero() {
            return Some(LongDouble::zero(neg));
        }
        let (sig, e2, sticky) = h.top128();
        let value = round(neg, sig, e2 + exp - 4 * frac_digits.len() as i64, sticky);
        (!value.is_zero()).then_some(value)
    }

    /// Words of a [`Big`]: enough for 10^10069 shifted left by 67 bits (the largest divisor a
    /// 5 KiB input can need) and for 2^16384 × 10^17.
    const BIG_WORDS: usize = 1072;

    /// A fixed-capacity unsigned big integer (little-endian u32 words) on the stack.
    pub(super) struct Big {
        len: usize,
        w: [u32; BIG_WORDS],
        /// Set if an operation would have exceeded the capacity (never for inputs
        /// [`parse`] accepts; checked rather than trusted).
        overflow: bool,
    }

    impl Big {
        fn zero() -> Self {
            Big {
                len: 0,
                w: [0; BIG_WORDS],
                overflow: false,
            }
        }

        fn from_u64(v: u64) -> Self {
            let mut b = Big::zero();
            b.w[0] = v as u32;
            b.w[1] = (v >> 32) as u32;
            b.len = 2;
            b.trim();
            b
        }

        fn trim(&mut self) {
            while self.len > 0 && self.w[self.len - 1] == 0 {
                self.len -= 1;
            }
        }

        fn is_zero(&self) -> bool {
            self.len == 0
        }

        fn bit_len(&self) -> usize {
            if self.len == 0 {
                0
            } else {
                self.len * 32 - self.w[self.len - 1].leading_zeros() as usize
            }
        }

        /// self = self × m + a
        fn mul_add(&mut self, m: u32, a: u32) {
            let mut carry = u64::from(a);
            for word in &mut self.w[..self.len] {
                let v = u64::from(*word) * u64::from(m) + carry;
                *word = v as u32;
                carry = v >> 32;
            }
            if carry != 0 {
                if self.len == BIG_WORDS {
                    self.overflow = true;
                    return;
                }
                self.w[self.len] = carry as u32;
                self.len += 1;
            }
        }

        fn mul_pow10(&mut self, mut k: usize) {
            while k >= 9 {
                self.mul_add(1_000_000_000, 0);
                k -= 9;
            }
            if k > 0 {
                self.mul_add(10u32.pow(k as u32), 0);
            }
        }

        fn shl(&mut self, n: usize) {
            if self.len == 0 || n == 0 {
                return;
            }
            let words = n / 32;
            let bits = (n % 32) as u32;
            let new_len = self.len + words + 1;
            if new_len > BIG_WORDS {
                self.overflow = true;
                return;
            }
            for i in (0..self.len).rev() {
                let v = u64::from(self.w[i]) << bits;
                self.w[i + words + 1] |= (v >> 32) as u32;
                self.w[i + words] = v as u32;
            }
            self.w[..words].fill(0);
            self.len = new_len;
            self.trim();
        }

        fn shr1(&mut self) {
            for i in 0..self.len {
                let hi = if i + 1 < self.len { self.w[i + 1] << 31 } else { 0 };
                self.w[i] = (self.w[i] >> 1) | hi;
            }
            self.trim();
        }

        fn cmp(&self, other: &Big) -> Ordering {
            self.len
                .cmp(&other.len)
                .then_with(|| self.w[..self.len].iter().rev().cmp(other.w[..other.len].iter().rev()))
        }

        /// self -= other (requires self ≥ other)
        fn sub(&mut self, other: &Big) {
            let mut borrow = 0i64;
            for i in 0..self.len {
                let o = if i < other.len { i64::from(other.w[i]) } else { 0 };
                let mut v = i64::from(self.w[i]) - o - borrow;
                borrow = 0;
                if v < 0 {
                    v += 1 << 32;
                    borrow = 1;
                }
                self.w[i] = v as u32;
            }
            self.trim();
        }

        /// The top 128 bits, the exponent of their last bit, and whether any bit below is set.
        fn top128(&self) -> (u128, i64, bool) {
            let bits = self.bit_len();
            let (shift, sticky) = if bits > 128 {
                let shift = bits - 128;
                let words = shift / 32;
                let below =
                    self.w[..words].iter().any(|&w| w != 0) || self.w[words] & ((1u32 << (shift % 32)) - 1) != 0;
                (shift, below)
            } else {
                (0, false)
            };
            let mut sig: u128 = 0;
            for i in (0..self.len).rev() {
                let word_lo = i * 32;
                if word_lo + 32 <= shift {
                    break;
                }
                let w = u128::from(self.w[i]);
                if word_lo >= shift {
                    sig |= w << (word_lo - shift);
                } else {
                    sig |= w >> (shift - word_lo);
                }
            }
            (sig, shift as i64, sticky)
        }

        fn divmod_small(&mut self, d: u32) -> u32 {
            let mut rem = 0u64;
            for i in (0..self.len).rev() {
                let v = (rem << 32) | u64::from(self.w[i]);
                self.w[i] = (v / u64::from(d)) as u32;
                rem = v % u64::from(d);
            }
            self.trim();
            rem as u32
        }

        /// Appends the decimal digits (consumes the value).
        fn write_decimal(&mut self, out: &mut Vec<u8>) {
            let start = out.len();
            loop {
                let mut chunk = self.divmod_small(1_000_000_000);
                let last = self.is_zero();
                let mut n = 0;
                while chunk > 0 || (!last && n < 9) || (last && n == 0) {
                    out.push(b'0' + (chunk % 10) as u8);
                    chunk /= 10;
                    n += 1;
                }
                if last {
                    break;
                }
            }
            out[start..].reverse();
        }
    }
}

/// A keyspace, a context and an encoder for command tests (shared with `keys.rs`).
#[cfg(test)]
pub(crate) mod test_util {
    use bytes::{Bytes, BytesMut};
    use corekv_engine::{EngineConfig, Keyspace};
    use corekv_net::resp::{Protocol, ReplyEncoder};

    use crate::commands::{ExecCtx, KeyedFn};

    /// 2024-01-01T00:00:00Z, in ms.
    pub const NOW: u64 = 1_704_067_200_000;

    pub struct Harness {
        pub keyspace: Keyspace,
        pub scratch: Vec<u8>,
        pub db: usize,
        pub now_ms: u64,
        pub protocol: Protocol,
    }

    impl Harness {
        pub fn new() -> Self {
            Harness {
                keyspace: Keyspace::new(EngineConfig {
                    databases: 16,
                    maxmemory_bytes: 0,
                    policy: Default::default(),
                    eviction_samples: 5,
                }),
                scratch: Vec::new(),
                db: 0,
                now_ms: NOW,
                protocol: Protocol::Resp2,
            }
        }

        /// Runs `f` on `args` (the command name first) and returns the raw reply.
        pub fn run_bytes(&mut self, f: KeyedFn, args: &[&[u8]]) -> Vec<u8> {
            let args: Vec<Bytes> = args.iter().map(|a| Bytes::copy_from_slice(a)).collect();
            let mut out = BytesMut::new();
            let mut enc = ReplyEncoder::new(&mut out, self.protocol);
            let mut ctx = ExecCtx {
                keyspace: &mut self.keyspace,
                db: self.db,
                now_ms: self.now_ms,
                scratch: &mut self.scratch,
            };
            f(&mut ctx, &args, &mut enc);
            out.to_vec()
        }

        /// Runs `f` on string arguments and returns the reply as text.
        pub fn run(&mut self, f: KeyedFn, args: &[&str]) -> String {
            let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
            String::from_utf8(self.run_bytes(f, &args)).expect("reply is UTF-8")
        }

        /// The raw value of a key (without touching stats).
        pub fn value(&mut self, key: &str) -> Option<Vec<u8>> {
            self.keyspace
                .peek(self.db, key.as_bytes(), self.now_ms)
                .map(<[u8]>::to_vec)
        }

        pub fn expire_at(&mut self, key: &str) -> Option<u64> {
            self.keyspace
                .info(self.db, key.as_bytes(), self.now_ms)
                .and_then(|i| i.expire_at_ms)
        }
    }

    pub fn bulk(s: &str) -> String {
        format!("${}\r\n{}\r\n", s.len(), s)
    }

    pub fn err(s: &str) -> String {
        format!("-{s}\r\n")
    }

    pub const OK: &str = "+OK\r\n";
    pub const NIL: &str = "$-1\r\n";
}

#[cfg(test)]
mod tests {
    use super::long_double::{self, LongDouble};
    use super::test_util::*;
    use super::*;
    use corekv_net::resp::Protocol;

    /// What INCRBYFLOAT replies when the key holds `current` and the increment is `incr`.
    fn incrbyfloat_text(current: &str, incr: &str) -> String {
        let (Some(a), Some(b)) = (
            long_double::parse(current.as_bytes()),
            long_double::parse(incr.as_bytes()),
        ) else {
            return ERR_NOT_FLOAT.to_string();
        };
        let sum = a.add(b);
        if !sum.is_finite() {
            return ERR_NAN_INF.to_string();
        }
        let mut out = Vec::new();
        sum.format_human(&mut out);
        String::from_utf8(out).unwrap()
    }

    // The long-double arithmetic is compared with a real redis-server on random operands by the
    // black-box test `differential::incrbyfloat_long_double_matches_redis`.

    // ---- pure helpers -------------------------------------------------------------------

    #[test]
    fn parse_i64_is_string2ll() {
        let ok: &[(&str, i64)] = &[
            ("0", 0),
            ("1", 1),
            ("-1", -1),
            ("1234567890", 1_234_567_890),
            ("9223372036854775807", i64::MAX),
            ("-9223372036854775808", i64::MIN),
        ];
        for &(s, v) in ok {
            assert_eq!(parse_i64(s.as_bytes()), Some(v), "{s}");
        }
        let bad = [
            "",
            "-",
            "+1",
            "-0",
            "00",
            "01",
            "-01",
            " 1",
            "1 ",
            "1a",
            "1.0",
            "0x10",
            "1e3",
            "9223372036854775808",
            "-9223372036854775809",
            "18446744073709551616",
            "123456789012345678901",
            "\u{0}1",
        ];
        for s in bad {
            assert_eq!(parse_i64(s.as_bytes()), None, "{s:?}");
        }
    }

    #[test]
    fn format_i64_round_trips() {
        let mut buf = [0u8; 20];
        for v in [0, 1, -1, 9, 10, -10, 12345, i64::MAX, i64::MIN] {
            assert_eq!(format_i64(v, &mut buf), v.to_string().as_bytes());
        }
    }

    #[test]
    fn long_double_matches_redis() {
        // (current value, increment, INCRBYFLOAT reply), all checked against Redis 7.0.15.
        let cases: &[(&str, &str, &str)] = &[
            ("0.1", "0.2", "0.3"),
            ("10.5", "0.1", "10.6"),
            ("3.0e3", "0", "3000"),
            ("5.0e3", "10000.5", "15000.5"),
            ("1.1", "2.2", "3.3"),
            ("0.1", "0.7", "0.8"),
            ("0.1", "-0.1", "0"),
            ("1e20", "0", "100000000000000000000"),
            ("1e-20", "0", "0"),
            ("10000000000.1", "0", "10000000000.09999999962747097"),
            ("17179869184", "0.1", "17179869184.09999999962747097"),
            ("1e30", "1", "1000000000000000000024696061952"),
            ("-1e30", "1", "-1000000000000000000024696061952"),
            ("123456789012345678901234", "1", "123456789012345678897152"),
            ("0x1p3", "0", "8"),
            ("0", "0x1.8p1", "3"),
            ("0", "0x.8", "0.5"),
            ("0", "0X1P-2", "0.25"),
            ("1.5", "-1.5", "0"),
            ("-0.0", "0", "0"),
            ("0", "-1.5", "-1.5"),
            ("0", "-0.00000000000000001", "-0.00000000000000001"),
            ("0", "-0.000000000000000001", "0"),
            ("0", "0.000000000000000005", "0"),
            ("0", "0.000000000000000015", "0.00000000000000002"),
            ("0", "0.000000000000000025", "0.00000000000000002"),
            ("0", "0.0000000000000000250001", "0.00000000000000003"),
            ("0", "3.814697265625e-6", "0.00000381469726562"),
            ("0", "1.5e3", "1500"),
            ("+1.5", "1", "2.5"),
            ("1.", "1", "2"),
            (".5", "1", "1.5"),
            ("1E+2", "1", "101"),
            ("0", "1e-4950", "0"),
            ("0", "1.9e-4951", "0"),
            ("0e-99999", "1", "1"),
            ("0", "0e99999999999999", "0"),
            ("9952636.50898359992606856", "-0.3", "9952636.20898359992588667"),
            ("9952637.9090135999258564", "-99.99", "9952537.91901359992607468"),
            (
                "-672603.4057000517",
                "-8.07049996228303883685957e-544",
                "-672603.40570005170002332",
            ),
            (
                "-335533.0437390682",
                "0x35d51c20.1056b100p-6",
                "13776323.45725816314188705",
            ),
            // Errors: not a float, or an infinite/NaN result.
            (" 1", "0", ERR_NOT_FLOAT),
            ("1 ", "0", ERR_NOT_FLOAT),
            ("", "1", ERR_NOT_FLOAT),
            ("123abc", "1", ERR_NOT_FLOAT),
            ("1", "nan", ERR_NOT_FLOAT),
            ("1", "NaN(123)", ERR_NOT_FLOAT),
            ("0", "0x", ERR_NOT_FLOAT),
            ("0", "1e+", ERR_NOT_FLOAT),
            ("0", "1e", ERR_NOT_FLOAT),
            ("0", ".", ERR_NOT_FLOAT),
            ("0", "-", ERR_NOT_FLOAT),
            ("0", "+", ERR_NOT_FLOAT),
            ("0", "1\u{0}", ERR_NOT_FLOAT),
            ("0", "1.2e4932", ERR_NOT_FLOAT),
            ("0", "1e99999999999999999999", ERR_NOT_FLOAT),
            ("0", "1.8e-4951", ERR_NOT_FLOAT),
            ("0", "1e-5000", ERR_NOT_FLOAT),
            ("0", "1e-99999999999999", ERR_NOT_FLOAT),
            ("1", "inf", ERR_NAN_INF),
            ("1", "-infinity", ERR_NAN_INF),
            ("1", "Infinity", ERR_NAN_INF),
            ("1.18e4932", "0.01e4932", ERR_NAN_INF),
        ];
        for &(a, b, want) in cases {
            assert_eq!(incrbyfloat_text(a, b), want, "{a} + {b}");
        }
        // 1e400 is finite in extended precision; its %.17Lf starts like this.
        assert!(incrbyfloat_text("1e400", "0").starts_with("10000000000000000000281880683947586514586"));
        assert_eq!(incrbyfloat_text("1e400", "0").len(), 401);
        // Inputs of 5 KiB or more are refused whatever they hold.
        let long = format!("1.{}", "0".repeat(5118));
        assert_eq!(long.len(), 5120);
        assert_eq!(incrbyfloat_text(&long, "0"), ERR_NOT_FLOAT);
        assert_eq!(incrbyfloat_text(&long[..5119], "0"), "1");
        assert_eq!(LongDouble::ZERO.add(LongDouble::ZERO), LongDouble::ZERO);
    }

    #[test]
    fn long_double_extreme_inputs_are_bounded() {
        // The largest divisor a 5 KiB input can need, and the largest values.
        let tiny = format!("{}e-4950", "9".repeat(5100));
        assert!(incrbyfloat_text(&tiny, "0").starts_with("1000000000000000000000289098200446899979"));
        let tiny = format!("0.{}1", "0".repeat(5000));
        assert!(long_double::parse(tiny.as_bytes()).is_none());
        let max = "1.18973149535723176502e4932";
        let v = long_double::parse(max.as_bytes()).unwrap();
        let mut out = Vec::new();
        v.format_human(&mut out);
        assert_eq!(out.len(), 4933);
        assert!(long_double::parse("9".repeat(5119).as_bytes()).is_none());
        let third = format!("0.{}", "3".repeat(5117));
        assert_eq!(incrbyfloat_text(&third, "0"), "0.33333333333333333");
    }

    #[test]
    fn string_options_follow_redis() {
        fn parse(args: &[&str], for_set: bool) -> Result<StringOptions<'static>, ()> {
            let args: Vec<Bytes> = args.iter().map(|a| Bytes::from(a.to_string())).collect();
            let args: &'static [Bytes] = Box::leak(args.into_boxed_slice());
            parse_string_options(args, if for_set { 3 } else { 2 }, for_set)
        }
        let set = |args: &[&str]| parse(args, true);
        let getex = |args: &[&str]| parse(args, false);
        assert_eq!(set(&["set", "k", "v"]), Ok(StringOptions::default()));
        let o = set(&["set", "k", "v", "nx", "Get", "EX", "10"]).unwrap();
        assert!(o.nx && o.get);
        assert_eq!(o.expire, Some((ExpireKind::Ex, &b"10"[..])));
        // The same expiry option may repeat (the last wins); two kinds may not mix.
        let o = set(&["set", "k", "v", "ex", "10", "ex", "20"]).unwrap();
        assert_eq!(o.expire, Some((ExpireKind::Ex, &b"20"[..])));
        assert!(set(&["set", "k", "v", "ex", "10", "px", "10"]).is_err());
        assert!(set(&["set", "k", "v", "keepttl", "ex", "1"]).is_err());
        assert!(set(&["set", "k", "v", "exat", "1", "keepttl"]).is_err());
        assert!(set(&["set", "k", "v", "nx", "xx"]).is_err());
        assert!(set(&["set", "k", "v", "nx", "nx"]).is_ok());
        assert!(set(&["set", "k", "v", "ex"]).is_err());
        assert!(set(&["set", "k", "v", "foo"]).is_err());
        assert!(set(&["set", "k", "v", "persist"]).is_err());
        // IFEQ takes a value and excludes NX/XX (and itself).
        let o = set(&["set", "k", "v", "IFEQ", "old", "get"]).unwrap();
        assert_eq!(o.ifeq, Some(&b"old"[..]));
        assert!(o.get);
        assert!(set(&["set", "k", "v", "ifeq"]).is_err());
        assert!(set(&["set", "k", "v", "ifeq", "a", "nx"]).is_err());
        assert!(set(&["set", "k", "v", "xx", "ifeq", "a"]).is_err());
        assert!(set(&["set", "k", "v", "ifeq", "a", "ifeq", "b"]).is_err());
        // GETEX: PERSIST or one expiry, nothing of SET's.
        assert!(getex(&["getex", "k", "persist"]).unwrap().persist);
        assert!(getex(&["getex", "k", "persist", "ex", "10"]).is_err());
        assert!(getex(&["getex", "k", "ex", "10", "persist"]).is_err());
        assert!(getex(&["getex", "k", "nx"]).is_err());
        assert!(getex(&["getex", "k", "keepttl"]).is_err());
        assert!(getex(&["getex", "k", "get"]).is_err());
        assert!(getex(&["getex", "k", "foo"]).is_err());
        assert!(getex(&["getex", "k", "pxat", "5"]).is_ok());
    }

    #[test]
    fn expire_values_follow_redis() {
        use ExpireError::*;
        use ExpireKind::*;
        let now = NOW;
        assert_eq!(expire_at_ms(Ex, b"10", now), Ok(now + 10_000));
        assert_eq!(expire_at_ms(Px, b"10", now), Ok(now + 10));
        assert_eq!(expire_at_ms(ExAt, b"10", now), Ok(10_000));
        assert_eq!(expire_at_ms(PxAt, b"10", now), Ok(10));
        assert_eq!(expire_at_ms(Ex, b"0", now), Err(Invalid));
        assert_eq!(expire_at_ms(Px, b"-1", now), Err(Invalid));
        assert_eq!(expire_at_ms(ExAt, b"0", now), Err(Invalid));
        assert_eq!(expire_at_ms(Ex, b"9223372036854776", now), Err(Invalid));
        assert_eq!(expire_at_ms(Px, b"9223372036854775807", now), Err(Invalid));
        assert_eq!(
            expire_at_ms(ExAt, b"9223372036854775", now),
            Ok(9_223_372_036_854_775_000)
        );
        assert_eq!(expire_at_ms(PxAt, b"9223372036854775807", now), Ok(i64::MAX as u64));
        assert_eq!(expire_at_ms(Ex, b"abc", now), Err(NotInteger));
        assert_eq!(expire_at_ms(Ex, b"+1", now), Err(NotInteger));
    }

    #[test]
    fn substring_follows_redis_7_0() {
        let s = b"Hello";
        let cases: &[(i64, i64, &str)] = &[
            (0, -1, "Hello"),
            (1, 3, "ell"),
            (-3, -1, "llo"),
            (0, -100, "H"),
            (-1, -5, ""),
            (10, 20, ""),
            (-100, -1, "Hello"),
            (0, i64::MIN, "H"),
            (i64::MIN, i64::MAX, "Hello"),
            (4, 100, "o"),
            (3, 2, ""),
        ];
        for &(start, end, want) in cases {
            assert_eq!(substring(s, start, end), want.as_bytes(), "{start} {end}");
        }
        assert_eq!(substring(b"", 0, -1), b"");
        assert_eq!(substring(b"", 0, 0), b"");
    }

    #[test]
    fn string_length_limit() {
        assert!(string_length_ok(0, PROTO_MAX_BULK_LEN));
        assert!(!string_length_ok(1, PROTO_MAX_BULK_LEN));
        assert!(!string_length_ok(u64::MAX, 1));
    }

    // ---- commands -----------------------------------------------------------------------

    #[test]
    fn get_and_set() {
        let mut h = Harness::new();
        assert_eq!(h.run(get, &["get", "k"]), NIL);
        assert_eq!(h.run(set, &["set", "k", "v"]), OK);
        assert_eq!(h.run(get, &["GET", "k"]), bulk("v"));
        assert_eq!(h.run(set, &["set", "k", ""]), OK);
        assert_eq!(h.run(get, &["get", "k"]), bulk(""));
        h.protocol = Protocol::Resp3;
        assert_eq!(h.run(get, &["get", "nokey"]), "_\r\n");
        // Binary-safe.
        let reply = h.run_bytes(set, &[b"set", b"b\x00", b"\r\n\xff"]);
        assert_eq!(reply, b"+OK\r\n");
        assert_eq!(h.run_bytes(get, &[b"get", b"b\x00"]), b"$3\r\n\r\n\xff\r\n");
    }

    #[test]
    fn set_conditions() {
        let mut h = Harness::new();
        assert_eq!(h.run(set, &["set", "k", "v", "xx"]), NIL);
        assert_eq!(h.value("k"), None);
        assert_eq!(h.run(set, &["set", "k", "v", "nx"]), OK);
        assert_eq!(h.run(set, &["set", "k", "v2", "nx"]), NIL);
        assert_eq!(h.value("k").as_deref(), Some(&b"v"[..]));
        assert_eq!(h.run(set, &["set", "k", "v2", "xx"]), OK);
        assert_eq!(h.value("k").as_deref(), Some(&b"v2"[..]));
        // GET replies the old value whether or not the write happens.
        assert_eq!(h.run(set, &["set", "k", "v3", "nx", "get"]), bulk("v2"));
        assert_eq!(h.value("k").as_deref(), Some(&b"v2"[..]));
        assert_eq!(h.run(set, &["set", "k", "v3", "get", "xx"]), bulk("v2"));
        assert_eq!(h.value("k").as_deref(), Some(&b"v3"[..]));
        assert_eq!(h.run(set, &["set", "n", "1", "get"]), NIL);
        assert_eq!(h.value("n").as_deref(), Some(&b"1"[..]));
        assert_eq!(h.run(set, &["set", "m", "1", "get", "xx"]), NIL);
        assert_eq!(h.value("m"), None);
        // IFEQ (Valkey 8.1).
        assert_eq!(h.run(set, &["set", "k", "v4", "ifeq", "nope"]), NIL);
        assert_eq!(h.value("k").as_deref(), Some(&b"v3"[..]));
        assert_eq!(h.run(set, &["set", "k", "v4", "ifeq", "v3"]), OK);
        assert_eq!(h.value("k").as_deref(), Some(&b"v4"[..]));
        assert_eq!(h.run(set, &["set", "k", "v5", "ifeq", "v4", "get"]), bulk("v4"));
        assert_eq!(h.run(set, &["set", "k", "v6", "ifeq", "v4", "get"]), bulk("v5"));
        assert_eq!(h.value("k").as_deref(), Some(&b"v5"[..]));
        assert_eq!(h.run(set, &["set", "x", "v", "ifeq", "v"]), NIL);
        assert_eq!(h.run(set, &["set", "x", "v", "ifeq", "v", "get"]), NIL);
        assert_eq!(h.value("x"), None);
        assert_eq!(h.run(set, &["set", "k", "v", "ifeq", "v5", "nx"]), err(ERR_SYNTAX));
        assert_eq!(h.run(set, &["set", "k", "v", "nx", "xx"]), err(ERR_SYNTAX));
        assert_eq!(h.run(set, &["set", "k", "v", "foo"]), err(ERR_SYNTAX));
        h.protocol = Protocol::Resp3;
        assert_eq!(h.run(set, &["set", "k", "v", "nx"]), "_\r\n");
    }

    #[test]
    fn set_expiry() {
        let mut h = Harness::new();
        let invalid = err("ERR invalid expire time in 'set' command");
        assert_eq!(h.run(set, &["set", "k", "v", "ex", "0"]), invalid);
        assert_eq!(h.run(set, &["set", "k", "v", "px", "-5"]), invalid);
        assert_eq!(h.run(set, &["set", "k", "v", "ex", "9223372036854776"]), invalid);
        assert_eq!(h.run(set, &["set", "k", "v", "px", "9223372036854775807"]), invalid);
        assert_eq!(h.run(set, &["set", "k", "v", "ex", "1x"]), err(ERR_NOT_INTEGER));
        assert_eq!(h.value("k"), None);
        assert_eq!(h.run(set, &["set", "k", "v", "ex", "10"]), OK);
        assert_eq!(h.expire_at("k"), Some(NOW + 10_000));
        assert_eq!(h.run(set, &["set", "k", "v", "px", "10"]), OK);
        assert_eq!(h.expire_at("k"), Some(NOW + 10));
        assert_eq!(h.run(set, &["set", "k", "v", "exat", "1800000000"]), OK);
        assert_eq!(h.expire_at("k"), Some(1_800_000_000_000));
        assert_eq!(h.run(set, &["set", "k", "v", "pxat", "1800000000001"]), OK);
        assert_eq!(h.expire_at("k"), Some(1_800_000_000_001));
        assert_eq!(h.run(set, &["set", "k", "v2", "keepttl"]), OK);
        assert_eq!(h.expire_at("k"), Some(1_800_000_000_001));
        assert_eq!(h.run(set, &["set", "k", "v3"]), OK);
        assert_eq!(h.expire_at("k"), None);
        assert_eq!(h.value("k").as_deref(), Some(&b"v3"[..]));
        // An absolute time in the past: OK, and the key is gone.
        assert_eq!(h.run(set, &["set", "k", "v", "exat", "1"]), OK);
        assert_eq!(h.value("k"), None);
    }

    #[test]
    fn setnx_setex_psetex() {
        let mut h = Harness::new();
        assert_eq!(h.run(setnx, &["setnx", "k", "a"]), ":1\r\n");
        assert_eq!(h.run(setnx, &["setnx", "k", "b"]), ":0\r\n");
        assert_eq!(h.value("k").as_deref(), Some(&b"a"[..]));
        assert_eq!(h.run(setex, &["setex", "k", "100", "c"]), OK);
        assert_eq!(h.expire_at("k"), Some(NOW + 100_000));
        assert_eq!(h.value("k").as_deref(), Some(&b"c"[..]));
        assert_eq!(h.run(psetex, &["psetex", "k", "100", "d"]), OK);
        assert_eq!(h.expire_at("k"), Some(NOW + 100));
        assert_eq!(
            h.run(setex, &["setex", "k", "0", "v"]),
            err("ERR invalid expire time in 'setex' command")
        );
        assert_eq!(
            h.run(psetex, &["psetex", "k", "-1", "v"]),
            err("ERR invalid expire time in 'psetex' command")
        );
        assert_eq!(h.run(setex, &["setex", "k", "abc", "v"]), err(ERR_NOT_INTEGER));
        assert_eq!(h.value("k").as_deref(), Some(&b"d"[..]));
    }

    #[test]
    fn getset_getdel() {
        let mut h = Harness::new();
        assert_eq!(h.run(getset, &["getset", "k", "1"]), NIL);
        assert_eq!(h.run(set, &["set", "k", "1", "ex", "100"]), OK);
        assert_eq!(h.run(getset, &["getset", "k", "2"]), bulk("1"));
        assert_eq!(h.expire_at("k"), None);
        assert_eq!(h.value("k").as_deref(), Some(&b"2"[..]));
        assert_eq!(h.run(getdel, &["getdel", "k"]), bulk("2"));
        assert_eq!(h.value("k"), None);
        assert_eq!(h.run(getdel, &["getdel", "k"]), NIL);
    }

    #[test]
    fn getex_options() {
        let mut h = Harness::new();
        assert_eq!(h.run(getex, &["getex", "k"]), NIL);
        // A missing key replies nil before the expiry is validated; syntax is checked first.
        assert_eq!(h.run(getex, &["getex", "k", "ex", "0"]), NIL);
        assert_eq!(h.run(getex, &["getex", "k", "foo"]), err(ERR_SYNTAX));
        h.run(set, &["set", "k", "v"]);
        assert_eq!(
            h.run(getex, &["getex", "k", "ex", "0"]),
            err("ERR invalid expire time in 'getex' command")
        );
        assert_eq!(h.run(getex, &["getex", "k", "px", "x"]), err(ERR_NOT_INTEGER));
        assert_eq!(h.run(getex, &["getex", "k"]), bulk("v"));
        assert_eq!(h.expire_at("k"), None);
        assert_eq!(h.run(getex, &["getex", "k", "ex", "10"]), bulk("v"));
        assert_eq!(h.expire_at("k"), Some(NOW + 10_000));
        assert_eq!(h.run(getex, &["getex", "k", "pxat", "1800000000000"]), bulk("v"));
        assert_eq!(h.expire_at("k"), Some(1_800_000_000_000));
        assert_eq!(h.run(getex, &["getex", "k", "persist"]), bulk("v"));
        assert_eq!(h.expire_at("k"), None);
        assert_eq!(h.run(getex, &["getex", "k", "persist", "ex", "1"]), err(ERR_SYNTAX));
        // A past absolute time deletes the key after replying its value.
        assert_eq!(h.run(getex, &["getex", "k", "exat", "1"]), bulk("v"));
        assert_eq!(h.value("k"), None);
    }

    #[test]
    fn append_and_strlen() {
        let mut h = Harness::new();
        assert_eq!(h.run(strlen, &["strlen", "k"]), ":0\r\n");
        assert_eq!(h.run(append, &["append", "k", "abc"]), ":3\r\n");
        assert_eq!(h.run(set, &["set", "k", "abc", "ex", "100"]), OK);
        assert_eq!(h.run(append, &["append", "k", "def"]), ":6\r\n");
        assert_eq!(h.value("k").as_deref(), Some(&b"abcdef"[..]));
        assert_eq!(h.expire_at("k"), Some(NOW + 100_000));
        assert_eq!(h.run(append, &["append", "k", ""]), ":6\r\n");
        assert_eq!(h.run(strlen, &["strlen", "k"]), ":6\r\n");
        assert_eq!(h.run(append, &["append", "e", ""]), ":0\r\n");
        assert_eq!(h.value("e").as_deref(), Some(&b""[..]));
    }

    #[test]
    fn getrange_and_substr() {
        let mut h = Harness::new();
        assert_eq!(h.run(getrange, &["getrange", "k", "0", "1"]), bulk(""));
        h.run(set, &["set", "k", "Hello"]);
        assert_eq!(h.run(getrange, &["getrange", "k", "0", "-100"]), bulk("H"));
        assert_eq!(h.run(getrange, &["getrange", "k", "-3", "-1"]), bulk("llo"));
        assert_eq!(h.run(getrange, &["getrange", "k", "10", "20"]), bulk(""));
        assert_eq!(h.run(substr, &["substr", "k", "1", "2"]), bulk("el"));
        assert_eq!(h.run(getrange, &["getrange", "k", "a", "1"]), err(ERR_NOT_INTEGER));
        assert_eq!(h.run(getrange, &["getrange", "k", "01", "2"]), err(ERR_NOT_INTEGER));
        h.protocol = Protocol::Resp3;
        assert_eq!(h.run(getrange, &["getrange", "nokey", "0", "1"]), bulk(""));
    }

    #[test]
    fn setrange_command() {
        let mut h = Harness::new();
        assert_eq!(h.run(setrange, &["setrange", "k", "-1", "x"]), err(ERR_OFFSET));
        assert_eq!(h.run(setrange, &["setrange", "k", "x", "x"]), err(ERR_NOT_INTEGER));
        assert_eq!(h.run(setrange, &["setrange", "k", "536870912", "x"]), err(ERR_TOO_LONG));
        assert_eq!(h.run(setrange, &["setrange", "k", "536870912", ""]), ":0\r\n");
        assert_eq!(h.run(setrange, &["setrange", "k", "5", ""]), ":0\r\n");
        assert_eq!(h.value("k"), None);
        assert_eq!(h.run(setrange, &["setrange", "k", "2", "ab"]), ":4\r\n");
        assert_eq!(h.value("k").as_deref(), Some(&b"\0\0ab"[..]));
        h.run(set, &["set", "k", "Hello World", "ex", "100"]);
        assert_eq!(h.run(setrange, &["setrange", "k", "6", "Redis"]), ":11\r\n");
        assert_eq!(h.value("k").as_deref(), Some(&b"Hello Redis"[..]));
        assert_eq!(h.run(setrange, &["setrange", "k", "10", "!!"]), ":12\r\n");
        assert_eq!(h.value("k").as_deref(), Some(&b"Hello Redi!!"[..]));
        assert_eq!(h.run(setrange, &["setrange", "k", "1", ""]), ":12\r\n");
        assert_eq!(h.expire_at("k"), Some(NOW + 100_000));
        assert_eq!(
            h.run(setrange, &["setrange", "k", "536870911", "xx"]),
            err(ERR_TOO_LONG)
        );
    }

    #[test]
    fn incr_family() {
        let mut h = Harness::new();
        assert_eq!(h.run(incr, &["incr", "n"]), ":1\r\n");
        assert_eq!(h.run(incrby, &["incrby", "n", "10"]), ":11\r\n");
        assert_eq!(h.run(decr, &["decr", "n"]), ":10\r\n");
        assert_eq!(h.run(decrby, &["decrby", "n", "-5"]), ":15\r\n");
        assert_eq!(h.value("n").as_deref(), Some(&b"15"[..]));
        assert_eq!(h.run(decrby, &["decrby", "m", "20"]), ":-20\r\n");
        assert_eq!(h.value("m").as_deref(), Some(&b"-20"[..]));
        assert_eq!(
            h.run(decrby, &["decrby", "n", "-9223372036854775808"]),
            err(ERR_DECR_OVERFLOW)
        );
        assert_eq!(
            h.run(incrby, &["incrby", "n", "9223372036854775808"]),
            err(ERR_NOT_INTEGER)
        );
        assert_eq!(h.run(incrby, &["incrby", "n", "+1"]), err(ERR_NOT_INTEGER));
        h.run(set, &["set", "n", "9223372036854775807", "ex", "100"]);
        assert_eq!(h.run(incr, &["incr", "n"]), err(ERR_OVERFLOW));
        assert_eq!(h.run(decr, &["decr", "n"]), ":9223372036854775806\r\n");
        assert_eq!(h.expire_at("n"), Some(NOW + 100_000));
        h.run(set, &["set", "n", "-9223372036854775808"]);
        assert_eq!(h.run(decr, &["decr", "n"]), err(ERR_OVERFLOW));
        for bad in [" 1", "-0", "01", "1.0", "abc", ""] {
            h.run(set, &["set", "b", bad]);
            assert_eq!(h.run(incr, &["incr", "b"]), err(ERR_NOT_INTEGER), "{bad:?}");
            assert_eq!(h.value("b").as_deref(), Some(bad.as_bytes()));
        }
    }

    #[test]
    fn incrbyfloat_command() {
        let mut h = Harness::new();
        assert_eq!(h.run(incrbyfloat, &["incrbyfloat", "f", "10.5"]), bulk("10.5"));
        assert_eq!(h.run(incrbyfloat, &["incrbyfloat", "f", "0.1"]), bulk("10.6"));
        assert_eq!(h.value("f").as_deref(), Some(&b"10.6"[..]));
        assert_eq!(
            h.run(incrbyfloat, &["incrbyfloat", "f", "-5.0e3"]),
            bulk("-4989.39999999999999991")
        );
        assert_eq!(h.run(incrbyfloat, &["incrbyfloat", "f", "x"]), err(ERR_NOT_FLOAT));
        assert_eq!(h.run(incrbyfloat, &["incrbyfloat", "f", "inf"]), err(ERR_NAN_INF));
        assert_eq!(h.value("f").as_deref(), Some(&b"-4989.39999999999999991"[..]));
        h.run(set, &["set", "f", "5", "ex", "100"]);
        assert_eq!(h.run(incrbyfloat, &["incrbyfloat", "f", "1"]), bulk("6"));
        assert_eq!(h.expire_at("f"), Some(NOW + 100_000));
        h.run(set, &["set", "f", "abc"]);
        assert_eq!(h.run(incrbyfloat, &["incrbyfloat", "f", "1"]), err(ERR_NOT_FLOAT));
        // RESP3 still replies a bulk string, not a double.
        h.protocol = Protocol::Resp3;
        assert_eq!(h.run(incrbyfloat, &["incrbyfloat", "g", "3.0e3"]), bulk("3000"));
    }

    #[test]
    fn specs_are_consistent() {
        for spec in SPECS {
            assert_eq!(spec.group, "string");
            assert_eq!((spec.first_key, spec.last_key, spec.step), (1, 1, 1));
            assert!(matches!(spec.handler, super::super::Handler::Keyed(_)));
            assert!(spec.flags.contains(&"readonly") != spec.flags.contains(&"write"));
        }
        let find = |n: &str| SPECS.iter().find(|s| s.name == n).unwrap();
        assert_eq!(find("get").flags, &["readonly", "fast"]);
        assert_eq!(find("set").flags, &["write", "denyoom"]);
        assert_eq!(find("set").arity, -3);
        assert_eq!(find("getex").arity, -2);
        assert_eq!(SPECS.len(), 18);
    }
}
