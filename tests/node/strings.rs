//! String commands: GET, SET and its options, SETNX, SETEX, PSETEX, GETSET, GETDEL, GETEX, MGET,
//! MSET, MSETNX, APPEND, STRLEN, GETRANGE, SUBSTR, SETRANGE, INCR, DECR, INCRBY, DECRBY,
//! INCRBYFLOAT.

use crate::support::*;

const SYNTAX: &str = "ERR syntax error";

#[test]
fn get_and_set_basics() {
    let node = Node::start(&[]);
    let mut c = node.client();
    check(&mut c, "GET k", nil());
    check(&mut c, "SET k v", ok());
    check(&mut c, "GET k", bulk("v"));
    check(&mut c, "SET k \"\"", ok());
    check(&mut c, "GET k", bulk(""));
    check(&mut c, "EXISTS k", int(1));
    check(&mut c, "SET k overwritten", ok());
    check(&mut c, "GET k", bulk("overwritten"));
    // Binary-safe keys and values.
    let key: Vec<u8> = vec![0, 1, b'\r', b'\n', 255, b' '];
    let val: Vec<u8> = (0u8..=255).cycle().take(3000).collect();
    assert_eq!(qa(&mut c, &[b"SET".as_slice(), &key, &val]), ok());
    assert_eq!(qa(&mut c, &[b"GET".as_slice(), &key]), R::Bulk(val.clone()));
    // A large value.
    let big = vec![b'x'; 1 << 20];
    assert_eq!(qa(&mut c, &[b"SET".as_slice(), b"big", &big]), ok());
    assert_eq!(qa(&mut c, &[b"GET".as_slice(), b"big"]), R::Bulk(big));
    check(&mut c, "STRLEN big", int(1 << 20));
    check(&mut c, "SET", wrong_args("set"));
    check(&mut c, "GET", wrong_args("get"));
}

#[test]
fn set_nx_xx_get() {
    let node = Node::start(&[]);
    let mut c = node.client();
    check(&mut c, "SET k v XX", nil());
    check(&mut c, "EXISTS k", int(0));
    check(&mut c, "SET k v NX", ok());
    check(&mut c, "SET k v2 NX", nil());
    check(&mut c, "GET k", bulk("v"));
    check(&mut c, "SET k v3 XX", ok());
    check(&mut c, "GET k", bulk("v3"));
    check(&mut c, "SET k v NX XX", err(SYNTAX));
    check(&mut c, "SET k v xx nx", err(SYNTAX));
    // GET returns the old value (or nil).
    check(&mut c, "SET k v4 GET", bulk("v3"));
    check(&mut c, "SET fresh x GET", nil());
    check(&mut c, "GET fresh", bulk("x"));
    // NX GET (allowed since 7.0): old value, not set.
    check(&mut c, "SET k v5 NX GET", bulk("v4"));
    check(&mut c, "GET k", bulk("v4"));
    check(&mut c, "SET nxget v NX GET", nil());
    check(&mut c, "GET nxget", bulk("v"));
    // XX GET on a missing key: nil, not set.
    check(&mut c, "SET missing v XX GET", nil());
    check(&mut c, "EXISTS missing", int(0));
    check(&mut c, "SET k v6 XX GET", bulk("v4"));
    check(&mut c, "GET k", bulk("v6"));
    check(&mut c, "SET k v bogus", err(SYNTAX));
    check(&mut c, "SET k v NX bogus", err(SYNTAX));
    check(&mut c, "GET k", bulk("v6"));
}

#[test]
fn set_expiry_options() {
    let node = Node::start(&[]);
    let mut c = node.client();
    check(&mut c, "SET k v EX 100", ok());
    let ttl = q(&mut c, "TTL k").as_int();
    assert!((90..=100).contains(&ttl), "TTL {ttl}");
    check(&mut c, "SET k v PX 100000", ok());
    let pttl = q(&mut c, "PTTL k").as_int();
    assert!((90_000..=100_000).contains(&pttl), "PTTL {pttl}");
    let at = now_secs() + 500;
    check(&mut c, &format!("SET k v EXAT {at}"), ok());
    check(&mut c, "EXPIRETIME k", int(at));
    let pat = (now_secs() + 600) * 1000 + 123;
    check(&mut c, &format!("SET k v PXAT {pat}"), ok());
    check(&mut c, "PEXPIRETIME k", int(pat));
    // A plain SET clears the TTL; KEEPTTL keeps it.
    check(&mut c, "SET k v EX 100", ok());
    check(&mut c, "SET k v2 KEEPTTL", ok());
    let ttl = q(&mut c, "TTL k").as_int();
    assert!((90..=100).contains(&ttl), "KEEPTTL kept TTL: {ttl}");
    check(&mut c, "GET k", bulk("v2"));
    check(&mut c, "SET k v3", ok());
    check(&mut c, "TTL k", int(-1));
    check(&mut c, "SET k v KEEPTTL", ok());
    check(&mut c, "TTL k", int(-1));
    // GET with an expiry.
    check(&mut c, "SET k v4 GET EX 50", bulk("v"));
    let ttl = q(&mut c, "TTL k").as_int();
    assert!((40..=50).contains(&ttl), "{ttl}");
    // NX/XX with expiry.
    check(&mut c, "SET k v5 NX EX 10", nil());
    check(&mut c, "SET k v5 XX PX 70000", ok());
    let pttl = q(&mut c, "PTTL k").as_int();
    assert!(pttl > 60_000 && pttl <= 70_000, "{pttl}");

    // Errors.
    check(&mut c, "SET k v EX 10 PX 10", err(SYNTAX));
    check(&mut c, "SET k v EX 10 KEEPTTL", err(SYNTAX));
    check(&mut c, "SET k v KEEPTTL PXAT 10", err(SYNTAX));
    check(&mut c, "SET k v EX", err(SYNTAX));
    check(&mut c, "SET k v PX", err(SYNTAX));
    check(&mut c, "SET k v EX abc", err(NOT_INT));
    check(&mut c, "SET k v PX 1.5", err(NOT_INT));
    for bad in [
        "SET k v EX 0",
        "SET k v PX 0",
        "SET k v EX -1",
        "SET k v EXAT 0",
        "SET k v EXAT -5",
        "SET k v PXAT 0",
        "SET k v EX 9223372036854775807",
        "SET k v PX 9223372036854775807",
        "SET k v EX 9223372036854775",
    ] {
        check(&mut c, bad, err("ERR invalid expire time in 'set' command"));
    }
    // None of the failed SETs changed the value.
    check(&mut c, "GET k", bulk("v5"));
    // EXAT/PXAT in the past: the key is set and immediately gone.
    check(&mut c, "SET past v EXAT 1", ok());
    check(&mut c, "EXISTS past", int(0));
    check(&mut c, "SET past v PXAT 1000", ok());
    check(&mut c, "GET past", nil());
}

#[test]
fn set_ifeq() {
    // IFEQ as in Valkey 8.1 (not in Redis 7.0): set only if the current value equals the given one.
    if corekv_only() {
        return;
    }
    let node = Node::start(&[]);
    let mut c = node.client();
    check(&mut c, "SET k new IFEQ old", nil());
    check(&mut c, "EXISTS k", int(0));
    check(&mut c, "SET k old", ok());
    check(&mut c, "SET k new IFEQ other", nil());
    check(&mut c, "GET k", bulk("old"));
    check(&mut c, "SET k new IFEQ old", ok());
    check(&mut c, "GET k", bulk("new"));
    // Comparison is exact (case, length).
    check(&mut c, "SET k x IFEQ NEW", nil());
    check(&mut c, "SET k x IFEQ ne", nil());
    check(&mut c, "GET k", bulk("new"));
    // With GET: the old value either way.
    check(&mut c, "SET k v2 IFEQ nope GET", bulk("new"));
    check(&mut c, "GET k", bulk("new"));
    check(&mut c, "SET k v2 IFEQ new GET", bulk("new"));
    check(&mut c, "GET k", bulk("v2"));
    check(&mut c, "SET missing v IFEQ x GET", nil());
    check(&mut c, "EXISTS missing", int(0));
    // With an expiry.
    check(&mut c, "SET k v3 IFEQ v2 EX 100", ok());
    let ttl = q(&mut c, "TTL k").as_int();
    assert!((90..=100).contains(&ttl), "{ttl}");
    check(&mut c, "SET k v4 IFEQ v3 KEEPTTL", ok());
    let ttl = q(&mut c, "TTL k").as_int();
    assert!((90..=100).contains(&ttl), "{ttl}");
    // Exclusive with NX/XX; needs its argument.
    check(&mut c, "SET k v IFEQ v4 NX", err(SYNTAX));
    check(&mut c, "SET k v XX IFEQ v4", err(SYNTAX));
    check(&mut c, "SET k v IFEQ", err(SYNTAX));
    check(&mut c, "GET k", bulk("v4"));
    // Binary comparison values.
    assert_eq!(qa(&mut c, &[b"SET".as_slice(), b"bin", b"\x00\xff"]), ok());
    assert_eq!(
        qa(&mut c, &[b"SET".as_slice(), b"bin", b"y", b"IFEQ", b"\x00\xff"]),
        ok()
    );
    check(&mut c, "GET bin", bulk("y"));
}

#[test]
fn setnx_setex_psetex() {
    let node = Node::start(&[]);
    let mut c = node.client();
    check(&mut c, "SETNX k v", int(1));
    check(&mut c, "SETNX k w", int(0));
    check(&mut c, "GET k", bulk("v"));
    check(&mut c, "SETNX k", wrong_args("setnx"));

    check(&mut c, "SETEX e 100 v", ok());
    let ttl = q(&mut c, "TTL e").as_int();
    assert!((90..=100).contains(&ttl), "{ttl}");
    check(&mut c, "GET e", bulk("v"));
    check(&mut c, "SETEX e abc v", err(NOT_INT));
    check(&mut c, "SETEX e 0 v", err("ERR invalid expire time in 'setex' command"));
    check(
        &mut c,
        "SETEX e -1 v",
        err("ERR invalid expire time in 'setex' command"),
    );
    check(&mut c, "SETEX e 10", wrong_args("setex"));
    // SETEX overwrites and resets the TTL.
    check(&mut c, "SET p plain", ok());
    check(&mut c, "SETEX p 5000 v", ok());
    assert!(q(&mut c, "TTL p").as_int() > 4000);

    check(&mut c, "PSETEX m 100000 v", ok());
    let pttl = q(&mut c, "PTTL m").as_int();
    assert!((90_000..=100_000).contains(&pttl), "{pttl}");
    check(
        &mut c,
        "PSETEX m 0 v",
        err("ERR invalid expire time in 'psetex' command"),
    );
    check(&mut c, "PSETEX m x v", err(NOT_INT));
    check(&mut c, "GET m", bulk("v"));
}

#[test]
fn getset_getdel_getex() {
    let node = Node::start(&[]);
    let mut c = node.client();
    check(&mut c, "GETSET k a", nil());
    check(&mut c, "GETSET k b", bulk("a"));
    check(&mut c, "GET k", bulk("b"));
    // GETSET clears the TTL.
    check(&mut c, "SET t v EX 100", ok());
    check(&mut c, "GETSET t w", bulk("v"));
    check(&mut c, "TTL t", int(-1));
    check(&mut c, "GETSET k", wrong_args("getset"));

    check(&mut c, "GETDEL k", bulk("b"));
    check(&mut c, "GETDEL k", nil());
    check(&mut c, "EXISTS k", int(0));
    check(&mut c, "GETDEL", wrong_args("getdel"));

    check(&mut c, "GETEX nope", nil());
    check(&mut c, "GETEX nope EX 10", nil());
    check(&mut c, "EXISTS nope", int(0));
    check(&mut c, "SET k v", ok());
    check(&mut c, "GETEX k", bulk("v"));
    check(&mut c, "TTL k", int(-1));
    check(&mut c, "GETEX k EX 100", bulk("v"));
    let ttl = q(&mut c, "TTL k").as_int();
    assert!((90..=100).contains(&ttl), "{ttl}");
    check(&mut c, "GETEX k PX 200000", bulk("v"));
    assert!(q(&mut c, "PTTL k").as_int() > 150_000);
    let at = now_secs() + 1000;
    check(&mut c, &format!("GETEX k EXAT {at}"), bulk("v"));
    check(&mut c, "EXPIRETIME k", int(at));
    check(&mut c, &format!("GETEX k PXAT {}", at * 1000 + 7), bulk("v"));
    check(&mut c, "PEXPIRETIME k", int(at * 1000 + 7));
    check(&mut c, "GETEX k PERSIST", bulk("v"));
    check(&mut c, "TTL k", int(-1));
    check(
        &mut c,
        "GETEX k EX 0",
        err("ERR invalid expire time in 'getex' command"),
    );
    check(
        &mut c,
        "GETEX k PX -1",
        err("ERR invalid expire time in 'getex' command"),
    );
    check(&mut c, "GETEX k EX 10 PX 10", err(SYNTAX));
    check(&mut c, "GETEX k PERSIST EX 10", err(SYNTAX));
    check(&mut c, "GETEX k bogus", err(SYNTAX));
    check(&mut c, "GETEX k EX", err(SYNTAX));
    check(&mut c, "GETEX k EX abc", err(NOT_INT));
    check(&mut c, "TTL k", int(-1));
    // A time in the past deletes the key after returning it.
    check(&mut c, "GETEX k EXAT 1", bulk("v"));
    check(&mut c, "EXISTS k", int(0));
    check(&mut c, "SET k v", ok());
    check(&mut c, "GETEX k PXAT 100", bulk("v"));
    check(&mut c, "EXISTS k", int(0));
    check(&mut c, "GETEX", wrong_args("getex"));
}

#[test]
fn mget_mset_msetnx_across_shards() {
    let node = Node::start(&[]);
    let mut c = node.client();
    let keys = spread_keys("m");
    let mut mset = vec!["MSET".to_string()];
    for (i, k) in keys.iter().enumerate() {
        mset.push(k.clone());
        mset.push(format!("value-{i}"));
    }
    assert_eq!(qa(&mut c, &mset), ok());
    // MGET returns values in request order, nil for missing keys, across shards.
    let mut mget = vec!["MGET".to_string()];
    let mut expected = Vec::new();
    for (i, k) in keys.iter().enumerate().rev() {
        mget.push(k.clone());
        expected.push(bulk(format!("value-{i}")));
        if i % 3 == 0 {
            mget.push(format!("missing-{i}"));
            expected.push(nil());
        }
    }
    assert_eq!(qa(&mut c, &mget), arr(expected));
    // The same key twice.
    let r = qa(&mut c, &["MGET", &keys[0], &keys[0], &keys[5]]);
    assert_eq!(r, arr(vec![bulk("value-0"), bulk("value-0"), bulk("value-5")]));
    check(&mut c, "MGET", wrong_args("mget"));
    check(&mut c, "MSET a", wrong_args("mset"));
    check(&mut c, "MSET a 1 b", wrong_args("mset"));
    // MSET with a repeated key: the last value wins.
    check(&mut c, "MSET dup 1 dup 2 dup 3", ok());
    check(&mut c, "GET dup", bulk("3"));
    // MSET clears TTLs.
    check(&mut c, "SET withttl v EX 100", ok());
    check(&mut c, "MSET withttl w", ok());
    check(&mut c, "TTL withttl", int(-1));

    // MSETNX: all or nothing, across shards.
    let fresh = spread_keys("nx");
    let mut msetnx = vec!["MSETNX".to_string()];
    for k in &fresh {
        msetnx.push(k.clone());
        msetnx.push("n".into());
    }
    assert_eq!(qa(&mut c, &msetnx), int(1));
    let mut mget = vec!["MGET".to_string()];
    mget.extend(fresh.iter().cloned());
    assert_eq!(qa(&mut c, &mget), arr(vec![bulk("n"); 20]));
    // One existing key (on whichever shard) blocks every other.
    let more: Vec<String> = spread_keys("nx2");
    let mut msetnx = vec!["MSETNX".to_string()];
    for k in &more {
        msetnx.push(k.clone());
        msetnx.push("x".into());
    }
    msetnx.push(fresh[7].clone());
    msetnx.push("x".into());
    assert_eq!(qa(&mut c, &msetnx), int(0));
    let mut exists = vec!["EXISTS".to_string()];
    exists.extend(more.iter().cloned());
    assert_eq!(qa(&mut c, &exists), int(0));
    check(&mut c, &format!("GET {}", fresh[7]), bulk("n"));
    check(&mut c, "MSETNX a", wrong_args("msetnx"));
    check(&mut c, "MSETNX a 1 b", wrong_args("msetnx"));
    // MSETNX with the same new key twice succeeds; the last value wins.
    check(&mut c, "MSETNX twice 1 twice 2", int(1));
    check(&mut c, "GET twice", bulk("2"));
}

#[test]
fn append_strlen() {
    let node = Node::start(&[]);
    let mut c = node.client();
    check(&mut c, "APPEND k abc", int(3));
    check(&mut c, "APPEND k def", int(6));
    check(&mut c, "GET k", bulk("abcdef"));
    check(&mut c, "APPEND k \"\"", int(6));
    check(&mut c, "STRLEN k", int(6));
    check(&mut c, "STRLEN nope", int(0));
    check(&mut c, "APPEND empty \"\"", int(0));
    check(&mut c, "EXISTS empty", int(1));
    // APPEND on an integer-looking value.
    check(&mut c, "SET n 12", ok());
    check(&mut c, "APPEND n 34", int(4));
    check(&mut c, "INCR n", int(1235));
    check(&mut c, "STRLEN n", int(4));
    // APPEND keeps the TTL.
    check(&mut c, "SET t a EX 100", ok());
    check(&mut c, "APPEND t b", int(2));
    assert!(q(&mut c, "TTL t").as_int() > 90);
    check(&mut c, "APPEND k", wrong_args("append"));
    check(&mut c, "STRLEN", wrong_args("strlen"));
    check(&mut c, "STRLEN a b", wrong_args("strlen"));
    // Many appends build the right string.
    let mut expected = Vec::new();
    for i in 0..200 {
        let piece = format!("{i},");
        expected.extend_from_slice(piece.as_bytes());
        check(&mut c, &format!("APPEND grow {piece}"), int(expected.len() as i64));
    }
    check(&mut c, "GET grow", R::Bulk(expected));
}

#[test]
fn getrange_substr_setrange() {
    let node = Node::start(&[]);
    let mut c = node.client();
    check(&mut c, "SET k \"This is a string\"", ok());
    check(&mut c, "GETRANGE k 0 3", bulk("This"));
    check(&mut c, "GETRANGE k -3 -1", bulk("ing"));
    check(&mut c, "GETRANGE k 0 -1", bulk("This is a string"));
    check(&mut c, "GETRANGE k 10 100", bulk("string"));
    check(&mut c, "GETRANGE k -100 3", bulk("This"));
    check(&mut c, "GETRANGE k 5 3", bulk(""));
    check(&mut c, "GETRANGE k 100 200", bulk(""));
    check(&mut c, "GETRANGE k -1 -5", bulk(""));
    check(&mut c, "GETRANGE nope 0 -1", bulk(""));
    check(&mut c, "GETRANGE k 0 abc", err(NOT_INT));
    check(&mut c, "GETRANGE k 0", wrong_args("getrange"));
    check(&mut c, "SUBSTR k 5 6", bulk("is"));
    check(&mut c, "SUBSTR k -6 -1", bulk("string"));
    check(&mut c, "SUBSTR k 0", wrong_args("substr"));
    check(&mut c, "SET n 12345", ok());
    check(&mut c, "GETRANGE n 1 2", bulk("23"));

    check(&mut c, "SET s \"Hello World\"", ok());
    check(&mut c, "SETRANGE s 6 Redis", int(11));
    check(&mut c, "GET s", bulk("Hello Redis"));
    // Zero-padding past the end.
    check(&mut c, "SETRANGE pad 5 hi", int(7));
    check(&mut c, "GET pad", bulk(b"\0\0\0\0\0hi"));
    check(&mut c, "SETRANGE pad 0 AB", int(7));
    check(&mut c, "GET pad", bulk(b"AB\0\0\0hi"));
    check(&mut c, "SETRANGE pad 10 z", int(11));
    check(&mut c, "GET pad", bulk(b"AB\0\0\0hi\0\0\0z"));
    // Empty value: length reply, no change, no key created.
    check(&mut c, "SETRANGE pad 3 \"\"", int(11));
    check(&mut c, "SETRANGE nokey 10 \"\"", int(0));
    check(&mut c, "EXISTS nokey", int(0));
    check(&mut c, "SETRANGE s -1 x", err("ERR offset is out of range"));
    check(&mut c, "SETRANGE s abc x", err(NOT_INT));
    check(
        &mut c,
        "SETRANGE s 536870912 x",
        err("ERR string exceeds maximum allowed size (proto-max-bulk-len)"),
    );
    check(&mut c, "SETRANGE s 0", wrong_args("setrange"));
    check(&mut c, "GET s", bulk("Hello Redis"));
    // SETRANGE on an integer value, and TTL preserved.
    check(&mut c, "SET num 100 EX 100", ok());
    check(&mut c, "SETRANGE num 0 9", int(3));
    check(&mut c, "INCR num", int(901));
    assert!(q(&mut c, "TTL num").as_int() > 90);
}

#[test]
fn incr_decr_family() {
    let node = Node::start(&[]);
    let mut c = node.client();
    check(&mut c, "INCR n", int(1));
    check(&mut c, "INCR n", int(2));
    check(&mut c, "DECR n", int(1));
    check(&mut c, "DECR n", int(0));
    check(&mut c, "DECR n", int(-1));
    check(&mut c, "INCRBY n 10", int(9));
    check(&mut c, "INCRBY n -20", int(-11));
    check(&mut c, "DECRBY n 5", int(-16));
    check(&mut c, "DECRBY n -20", int(4));
    check(&mut c, "GET n", bulk("4"));
    check(&mut c, "DECR fresh", int(-1));
    check(&mut c, "INCRBY fresh2 -7", int(-7));
    check(&mut c, "DECRBY fresh3 7", int(-7));

    // INCR keeps the TTL.
    check(&mut c, "SET t 5 EX 100", ok());
    check(&mut c, "INCR t", int(6));
    assert!(q(&mut c, "TTL t").as_int() > 90);

    // Values that are not integers.
    for v in [
        "abc",
        "1.5",
        "\" 1\"",
        "\"1 \"",
        "01",
        "+1",
        "-0",
        "99999999999999999999",
        "\"\"",
    ] {
        check(&mut c, &format!("SET bad {v}"), ok());
        check(&mut c, "INCR bad", err(NOT_INT));
        check(&mut c, "DECR bad", err(NOT_INT));
        check(&mut c, "INCRBY bad 1", err(NOT_INT));
    }
    check(&mut c, "INCRBY n abc", err(NOT_INT));
    check(&mut c, "INCRBY n 1.0", err(NOT_INT));
    check(&mut c, "DECRBY n 99999999999999999999", err(NOT_INT));
    check(&mut c, "INCR", wrong_args("incr"));
    check(&mut c, "INCR a b", wrong_args("incr"));
    check(&mut c, "INCRBY n", wrong_args("incrby"));
    check(&mut c, "DECRBY n", wrong_args("decrby"));

    // Overflow.
    check(&mut c, "SET max 9223372036854775807", ok());
    check(&mut c, "INCR max", err("ERR increment or decrement would overflow"));
    check(&mut c, "INCRBY max 1", err("ERR increment or decrement would overflow"));
    check(
        &mut c,
        "DECRBY max -1",
        err("ERR increment or decrement would overflow"),
    );
    check(&mut c, "GET max", bulk("9223372036854775807"));
    check(&mut c, "SET min -9223372036854775808", ok());
    check(&mut c, "DECR min", err("ERR increment or decrement would overflow"));
    check(
        &mut c,
        "INCRBY min -1",
        err("ERR increment or decrement would overflow"),
    );
    check(&mut c, "INCRBY min 9223372036854775807", int(-1));
    check(
        &mut c,
        "DECRBY min -9223372036854775808",
        err("ERR decrement would overflow"),
    );
    check(&mut c, "SET z 0", ok());
    check(&mut c, "INCRBY z -9223372036854775808", int(i64::MIN));
    check(&mut c, "INCRBY z 9223372036854775807", int(-1));
}

#[test]
fn incrbyfloat() {
    let node = Node::start(&[]);
    let mut c = node.client();
    // The examples from the Redis documentation.
    check(&mut c, "SET k 10.50", ok());
    check(&mut c, "INCRBYFLOAT k 0.1", bulk("10.6"));
    check(&mut c, "INCRBYFLOAT k -5", bulk("5.6"));
    check(&mut c, "SET k 5.0e3", ok());
    check(&mut c, "INCRBYFLOAT k 2.0e2", bulk("5200"));
    check(&mut c, "GET k", bulk("5200"));
    check(&mut c, "INCR k", int(5201));
    check(&mut c, "INCRBYFLOAT new 3", bulk("3"));
    check(&mut c, "INCRBYFLOAT new2 1.0", bulk("1"));
    check(&mut c, "INCRBYFLOAT new3 .5", bulk("0.5"));
    check(&mut c, "INCRBYFLOAT new3 -1.25", bulk("-0.75"));
    check(&mut c, "INCRBYFLOAT new4 -0.0", bulk("0"));
    check(&mut c, "SET i 7", ok());
    check(&mut c, "INCRBYFLOAT i 1.5", bulk("8.5"));
    check(&mut c, "INCRBYFLOAT i 1e3", bulk("1008.5"));
    // INCRBYFLOAT keeps the TTL.
    check(&mut c, "SET t 1 EX 100", ok());
    check(&mut c, "INCRBYFLOAT t 1", bulk("2"));
    assert!(q(&mut c, "TTL t").as_int() > 90);

    check(&mut c, "INCRBYFLOAT k abc", err("ERR value is not a valid float"));
    check(&mut c, "INCRBYFLOAT k nan", err("ERR value is not a valid float"));
    check(&mut c, "INCRBYFLOAT k \"\"", err("ERR value is not a valid float"));
    check(
        &mut c,
        "INCRBYFLOAT k inf",
        err("ERR increment would produce NaN or Infinity"),
    );
    check(&mut c, "SET s notanumber", ok());
    check(&mut c, "INCRBYFLOAT s 1", err("ERR value is not a valid float"));
    check(&mut c, "INCRBYFLOAT k", wrong_args("incrbyfloat"));
    check(&mut c, "GET k", bulk("5201"));
}

#[test]
fn incrbyfloat_formats_like_redis_long_double() {
    // Redis computes in long double and prints with 17 significant digits, so 0.1 + 0.2 reads
    // back as "0.3" (an f64 sum would print 0.30000000000000004).
    let node = Node::start(&[]);
    let mut c = node.client();
    check(&mut c, "SET g 0.1", ok());
    check(&mut c, "INCRBYFLOAT g 0.2", bulk("0.3"));
    check(&mut c, "SET m -9223372036854775808", ok());
    check(&mut c, "INCRBYFLOAT m 1", bulk("-9223372036854775807"));
}
