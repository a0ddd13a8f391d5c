//! Keyspace commands: DEL, UNLINK, EXISTS, TOUCH, TYPE, the EXPIRE family with NX/XX/GT/LT, TTL,
//! PTTL, EXPIRETIME, PEXPIRETIME, PERSIST, KEYS, SCAN, RANDOMKEY, RENAME, RENAMENX, COPY, MOVE,
//! OBJECT.

use crate::support::*;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn set_all(c: &mut redis::Connection, keys: &[String], value: &str) {
    for k in keys {
        assert_eq!(qa(c, &["SET", k.as_str(), value]), ok());
    }
}

fn with_cmd(cmd: &str, keys: &[String]) -> Vec<String> {
    let mut v = vec![cmd.to_string()];
    v.extend(keys.iter().cloned());
    v
}

#[test]
fn del_unlink_exists_touch_type() {
    let node = Node::start(&[]);
    let mut c = node.client();
    let keys = spread_keys("d");
    set_all(&mut c, &keys, "v");
    assert_eq!(qa(&mut c, &with_cmd("EXISTS", &keys)), int(20));
    assert_eq!(qa(&mut c, &with_cmd("TOUCH", &keys)), int(20));
    // Duplicates count each time for EXISTS; missing keys count zero.
    let r = qa(&mut c, &["EXISTS", &keys[0], &keys[0], "nope", &keys[1]]);
    assert_eq!(r, int(3));
    check(&mut c, "TOUCH nope1 nope2", int(0));
    // DEL across shards returns the number removed; duplicates count once.
    let mut del = with_cmd("DEL", &keys[..10]);
    del.push(keys[0].clone());
    del.push("nope".into());
    assert_eq!(qa(&mut c, &del), int(10));
    assert_eq!(qa(&mut c, &with_cmd("EXISTS", &keys)), int(10));
    assert_eq!(qa(&mut c, &with_cmd("UNLINK", &keys)), int(10));
    assert_eq!(qa(&mut c, &with_cmd("EXISTS", &keys)), int(0));
    check(&mut c, "DBSIZE", int(0));
    check(&mut c, "DEL nope", int(0));
    check(&mut c, "UNLINK nope", int(0));
    check(&mut c, "DEL", wrong_args("del"));
    check(&mut c, "UNLINK", wrong_args("unlink"));
    check(&mut c, "EXISTS", wrong_args("exists"));
    check(&mut c, "TOUCH", wrong_args("touch"));

    check(&mut c, "SET s v", ok());
    check(&mut c, "TYPE s", simple("string"));
    check(&mut c, "TYPE nope", simple("none"));
    check(&mut c, "TYPE", wrong_args("type"));
    check(&mut c, "TYPE a b", wrong_args("type"));
}

#[test]
fn expire_family_and_ttl() {
    let node = Node::start(&[]);
    let mut c = node.client();
    check(&mut c, "TTL nope", int(-2));
    check(&mut c, "PTTL nope", int(-2));
    check(&mut c, "EXPIRETIME nope", int(-2));
    check(&mut c, "PEXPIRETIME nope", int(-2));
    check(&mut c, "EXPIRE nope 100", int(0));
    check(&mut c, "PEXPIRE nope 100", int(0));
    check(&mut c, "EXPIREAT nope 99999999999", int(0));
    check(&mut c, "PEXPIREAT nope 99999999999999", int(0));
    check(&mut c, "PERSIST nope", int(0));

    check(&mut c, "SET k v", ok());
    check(&mut c, "TTL k", int(-1));
    check(&mut c, "PTTL k", int(-1));
    check(&mut c, "EXPIRETIME k", int(-1));
    check(&mut c, "PEXPIRETIME k", int(-1));
    check(&mut c, "PERSIST k", int(0));
    check(&mut c, "EXPIRE k 100", int(1));
    let ttl = q(&mut c, "TTL k").as_int();
    assert!((90..=100).contains(&ttl), "{ttl}");
    let pttl = q(&mut c, "PTTL k").as_int();
    assert!((90_000..=100_000).contains(&pttl), "{pttl}");
    let et = q(&mut c, "EXPIRETIME k").as_int();
    assert!((et - (now_secs() + 100)).abs() <= 10, "{et}");
    let pet = q(&mut c, "PEXPIRETIME k").as_int();
    assert!((pet / 1000 - et).abs() <= 1, "{pet} vs {et}");
    check(&mut c, "PEXPIRE k 200000", int(1));
    let pttl = q(&mut c, "PTTL k").as_int();
    assert!((190_000..=200_000).contains(&pttl), "{pttl}");
    let at = now_secs() + 1000;
    check(&mut c, &format!("EXPIREAT k {at}"), int(1));
    check(&mut c, "EXPIRETIME k", int(at));
    check(&mut c, "PEXPIRETIME k", int(at * 1000));
    check(&mut c, &format!("PEXPIREAT k {}", at * 1000 + 555), int(1));
    check(&mut c, "PEXPIRETIME k", int(at * 1000 + 555));
    check(&mut c, "EXPIRETIME k", int(at + 1));
    check(&mut c, "PERSIST k", int(1));
    check(&mut c, "TTL k", int(-1));
    check(&mut c, "GET k", bulk("v"));

    // Non-positive relative times and past absolute times delete the key.
    for cmd in [
        "EXPIRE k 0",
        "EXPIRE k -1",
        "PEXPIRE k 0",
        "PEXPIRE k -100",
        "EXPIREAT k 1",
        "PEXPIREAT k 1",
    ] {
        check(&mut c, "SET k v", ok());
        check(&mut c, cmd, int(1));
        check(&mut c, "EXISTS k", int(0));
        check(&mut c, "TTL k", int(-2));
    }

    // Errors.
    check(&mut c, "SET k v", ok());
    check(&mut c, "EXPIRE k abc", err(NOT_INT));
    check(&mut c, "EXPIRE k 1.5", err(NOT_INT));
    check(&mut c, "PEXPIREAT k x", err(NOT_INT));
    check(
        &mut c,
        "EXPIRE k 9223372036854775807",
        err("ERR invalid expire time in 'expire' command"),
    );
    check(
        &mut c,
        "EXPIRE k -9223372036854775808",
        err("ERR invalid expire time in 'expire' command"),
    );
    check(
        &mut c,
        "PEXPIRE k 9223372036854775807",
        err("ERR invalid expire time in 'pexpire' command"),
    );
    check(
        &mut c,
        "EXPIREAT k 9223372036854775807",
        err("ERR invalid expire time in 'expireat' command"),
    );
    check(&mut c, "EXPIRE k 100 bogus", err("ERR Unsupported option bogus"));
    check(&mut c, "EXPIRE k", wrong_args("expire"));
    check(&mut c, "TTL", wrong_args("ttl"));
    check(&mut c, "PERSIST", wrong_args("persist"));
    check(&mut c, "EXPIRETIME a b", wrong_args("expiretime"));
    check(&mut c, "TTL k", int(-1));
}

#[test]
fn expire_nx_xx_gt_lt() {
    let node = Node::start(&[]);
    let mut c = node.client();
    check(&mut c, "SET k v", ok());
    check(&mut c, "EXPIRE k 100 XX", int(0));
    check(&mut c, "EXPIRE k 100 GT", int(0)); // no TTL counts as infinite
    check(&mut c, "TTL k", int(-1));
    check(&mut c, "EXPIRE k 100 NX", int(1));
    check(&mut c, "EXPIRE k 200 NX", int(0));
    check(&mut c, "EXPIRE k 50 GT", int(0));
    check(&mut c, "EXPIRE k 150 gt", int(1));
    let ttl = q(&mut c, "TTL k").as_int();
    assert!((140..=150).contains(&ttl), "{ttl}");
    check(&mut c, "EXPIRE k 300 LT", int(0));
    check(&mut c, "EXPIRE k 100 LT", int(1));
    check(&mut c, "EXPIRE k 120 XX", int(1));
    let ttl = q(&mut c, "TTL k").as_int();
    assert!((110..=120).contains(&ttl), "{ttl}");
    check(&mut c, "PERSIST k", int(1));
    check(&mut c, "EXPIRE k 100 LT", int(1)); // no TTL counts as infinite
    check(&mut c, "PERSIST k", int(1));
    check(&mut c, "PEXPIRE k 100000 NX", int(1));
    check(&mut c, "PEXPIRE k 200000 GT", int(1));
    check(&mut c, "PEXPIRE k 300000 XX LT", int(0));
    check(&mut c, "PEXPIRE k 300000 XX GT", int(1));
    let at = now_secs() + 5000;
    check(&mut c, &format!("EXPIREAT k {at} LT"), int(0));
    check(&mut c, &format!("EXPIREAT k {at} GT"), int(1));
    check(&mut c, &format!("PEXPIREAT k {} GT", at * 1000 - 1), int(0));
    check(&mut c, &format!("PEXPIREAT k {} LT", at * 1000 - 1), int(1));
    check(&mut c, "PEXPIRETIME k", int(at * 1000 - 1));
    check(
        &mut c,
        "EXPIRE k 100 NX XX",
        err("ERR NX and XX, GT or LT options at the same time are not compatible"),
    );
    check(
        &mut c,
        "EXPIRE k 100 NX GT",
        err("ERR NX and XX, GT or LT options at the same time are not compatible"),
    );
    check(
        &mut c,
        "PEXPIRE k 100 NX LT",
        err("ERR NX and XX, GT or LT options at the same time are not compatible"),
    );
    check(
        &mut c,
        "EXPIRE k 100 GT LT",
        err("ERR GT and LT options at the same time are not compatible"),
    );
    check(&mut c, "PEXPIRETIME k", int(at * 1000 - 1));
    // A deleting time with a condition that fails leaves the key alone.
    check(&mut c, "EXPIRE k -1 NX", int(0));
    check(&mut c, "EXISTS k", int(1));
    check(&mut c, "EXPIRE k -1 XX", int(1));
    check(&mut c, "EXISTS k", int(0));
}

#[test]
fn keys_patterns() {
    let node = Node::start(&[]);
    let mut c = node.client();
    for k in [
        "hello", "hallo", "hxllo", "hllo", "heeeello", "hbllo", "h*llo", "other", "h\\llo",
    ] {
        assert_eq!(qa(&mut c, &["SET", k, "1"]), ok());
    }
    let keys = |c: &mut redis::Connection, p: &str| qa(c, &["KEYS", p]).sorted_strings();
    let mut all = keys(&mut c, "*");
    all.sort();
    assert_eq!(all.len(), 9, "{all:?}");
    assert_eq!(
        keys(&mut c, "h?llo"),
        ["h*llo", "h\\llo", "hallo", "hbllo", "hello", "hxllo"]
    );
    assert_eq!(
        keys(&mut c, "h*llo"),
        ["h*llo", "h\\llo", "hallo", "hbllo", "heeeello", "hello", "hllo", "hxllo"]
    );
    assert_eq!(keys(&mut c, "h[ae]llo"), ["hallo", "hello"]);
    assert_eq!(keys(&mut c, "h[^e]llo"), ["h*llo", "h\\llo", "hallo", "hbllo", "hxllo"]);
    assert_eq!(keys(&mut c, "h[a-b]llo"), ["hallo", "hbllo"]);
    assert_eq!(keys(&mut c, "h\\*llo"), ["h*llo"]);
    assert_eq!(keys(&mut c, "h\\\\llo"), ["h\\llo"]);
    assert_eq!(keys(&mut c, "other"), ["other"]);
    assert_eq!(keys(&mut c, "nomatch*"), Vec::<String>::new());
    assert_eq!(
        keys(&mut c, "*o"),
        ["h*llo", "h\\llo", "hallo", "hbllo", "heeeello", "hello", "hllo", "hxllo"]
    );
    // KEYS only sees the selected database and skips expired keys.
    check(&mut c, "PSETEX gone 1 v", ok());
    check(&mut c, "SET dead v PXAT 1", ok());
    check(&mut c, "SELECT 1", ok());
    check(&mut c, "SET db1key v", ok());
    assert_eq!(keys(&mut c, "*"), ["db1key"]);
    check(&mut c, "SELECT 0", ok());
    let gone = wait_for(Duration::from_secs(10), || {
        let k = keys(&mut c, "*");
        (!k.contains(&"gone".to_string())).then_some(k)
    })
    .expect("expired key still listed by KEYS");
    assert_eq!(gone.len(), 9, "{gone:?}");
    check(&mut c, "KEYS", wrong_args("keys"));
    check(&mut c, "KEYS a b", wrong_args("keys"));
}

fn full_scan(c: &mut redis::Connection, extra: &[&str]) -> (Vec<String>, usize) {
    let mut cursor = "0".to_string();
    let mut seen = Vec::new();
    let mut calls = 0;
    loop {
        let mut args = vec!["SCAN".to_string(), cursor.clone()];
        args.extend(extra.iter().map(|s| s.to_string()));
        let r = qa(c, &args).as_arr();
        assert_eq!(r.len(), 2, "SCAN reply has two elements: {r:?}");
        cursor = r[0].as_string();
        for k in r[1].as_arr() {
            seen.push(k.as_string());
        }
        calls += 1;
        assert!(calls < 100_000, "SCAN never finished");
        if cursor == "0" {
            break;
        }
    }
    (seen, calls)
}

#[test]
fn scan_options_and_errors() {
    let node = Node::start(&[]);
    let mut c = node.client();
    let (empty, _) = full_scan(&mut c, &[]);
    assert!(empty.is_empty());
    for i in 0..500 {
        check(&mut c, &format!("SET user:{i} v"), ok());
        check(&mut c, &format!("SET item:{i} v"), ok());
    }
    let (all, _) = full_scan(&mut c, &[]);
    let set: HashSet<_> = all.iter().cloned().collect();
    assert_eq!(set.len(), 1000);
    let (users, _) = full_scan(&mut c, &["MATCH", "user:*", "COUNT", "50"]);
    let uset: HashSet<_> = users.iter().cloned().collect();
    assert_eq!(uset.len(), 500);
    assert!(users.iter().all(|k| k.starts_with("user:")));
    let (one, _) = full_scan(&mut c, &["MATCH", "item:42"]);
    let oset: HashSet<_> = one.into_iter().collect();
    assert_eq!(oset, HashSet::from(["item:42".to_string()]));
    // COUNT is a hint: a large COUNT finishes in few calls; COUNT 1 still covers everything.
    let (big, calls) = full_scan(&mut c, &["COUNT", "100000"]);
    assert_eq!(big.iter().collect::<HashSet<_>>().len(), 1000);
    assert!(calls <= 3, "COUNT 100000 took {calls} calls");
    let (small, _) = full_scan(&mut c, &["COUNT", "1"]);
    assert_eq!(small.iter().collect::<HashSet<_>>().len(), 1000);
    let (strings, _) = full_scan(&mut c, &["TYPE", "string"]);
    assert_eq!(strings.iter().collect::<HashSet<_>>().len(), 1000);
    let (lists, _) = full_scan(&mut c, &["TYPE", "list"]);
    assert!(lists.is_empty(), "{lists:?}");
    let (both, _) = full_scan(&mut c, &["MATCH", "item:1*", "COUNT", "7", "TYPE", "STRING"]);
    assert_eq!(both.iter().collect::<HashSet<_>>().len(), 111);

    check(&mut c, "SCAN abc", err("ERR invalid cursor"));
    check(&mut c, "SCAN 0 COUNT 0", err("ERR syntax error"));
    check(&mut c, "SCAN 0 COUNT -1", err("ERR syntax error"));
    check(&mut c, "SCAN 0 COUNT x", err(NOT_INT));
    check(&mut c, "SCAN 0 MATCH", err("ERR syntax error"));
    check(&mut c, "SCAN 0 bogus 1", err("ERR syntax error"));
    check(&mut c, "SCAN", wrong_args("scan"));
    // Databases are separate.
    check(&mut c, "SELECT 5", ok());
    let (none, _) = full_scan(&mut c, &[]);
    assert!(none.is_empty());
}

#[test]
fn scan_with_concurrent_writes_returns_stable_keys() {
    let node = Node::start(&[]);
    let mut c = node.client();
    let stable: Vec<String> = (0..2000).map(|i| format!("stable:{i}")).collect();
    let mut p = redis::pipe();
    for k in &stable {
        p.cmd("SET").arg(k).arg("v").ignore();
    }
    p.query::<()>(&mut c).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let mut w = node.client();
        std::thread::spawn(move || {
            let mut i: u64 = 0;
            // Bounded: stops when the scan is done, or after 200,000 operations.
            while !stop.load(Ordering::Relaxed) && i < 200_000 {
                let k = format!("churn:{}", i % 3000);
                if i % 3 == 2 {
                    let _: redis::Value = redis::cmd("DEL").arg(&k).query(&mut w).unwrap();
                } else {
                    let _: redis::Value = redis::cmd("SET").arg(&k).arg(i).query(&mut w).unwrap();
                }
                i += 1;
            }
            i
        })
    };
    let mut seen = HashSet::new();
    for _round in 0..3 {
        let (keys, _) = full_scan(&mut c, &["COUNT", "20"]);
        seen.extend(keys);
        let missing: Vec<_> = stable.iter().filter(|k| !seen.contains(*k)).collect();
        assert!(
            missing.is_empty(),
            "SCAN under concurrent writes missed {} stable keys, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        seen.clear();
    }
    stop.store(true, Ordering::Relaxed);
    let ops = writer.join().unwrap();
    assert!(ops > 0);
}

#[test]
fn randomkey() {
    let node = Node::start(&[]);
    let mut c = node.client();
    check(&mut c, "RANDOMKEY", nil());
    let keys = spread_keys("r");
    set_all(&mut c, &keys, "v");
    let mut seen = HashSet::new();
    for _ in 0..200 {
        let k = q(&mut c, "RANDOMKEY").as_string();
        assert!(keys.contains(&k), "RANDOMKEY returned {k:?}");
        seen.insert(k);
    }
    assert!(seen.len() > 1, "RANDOMKEY always returned the same key");
    check(&mut c, "RANDOMKEY x", wrong_args("randomkey"));
    check(&mut c, "SELECT 1", ok());
    check(&mut c, "RANDOMKEY", nil());
}

#[test]
fn rename_and_renamenx_across_shards() {
    let node = Node::start(&[]);
    let mut c = node.client();
    let keys = spread_keys("rn");
    // Rename every key to a new name (about half of them land on the other shard).
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(qa(&mut c, &["SET", k.as_str(), &format!("v{i}")]), ok());
    }
    for (i, src) in keys.iter().enumerate() {
        let dst = format!("renamed:{i}");
        assert_eq!(qa(&mut c, &["RENAME", src.as_str(), &dst]), ok());
        assert_eq!(qa(&mut c, &["EXISTS", src.as_str()]), int(0));
        assert_eq!(qa(&mut c, &["GET", &dst]), bulk(format!("v{i}")));
    }
    check(&mut c, "RENAME nope x", err("ERR no such key"));
    check(&mut c, "RENAMENX nope x", err("ERR no such key"));
    // Overwrites the destination, and the TTL moves with the value.
    check(&mut c, "SET a 1 EX 100", ok());
    check(&mut c, "SET b 2", ok());
    check(&mut c, "RENAME a b", ok());
    check(&mut c, "GET b", bulk("1"));
    assert!(q(&mut c, "TTL b").as_int() > 90);
    check(&mut c, "SET c 3", ok());
    check(&mut c, "SET d 4 EX 100", ok());
    check(&mut c, "RENAME c d", ok());
    check(&mut c, "TTL d", int(-1));
    // Same name: OK for RENAME, 0 for RENAMENX.
    check(&mut c, "RENAME d d", ok());
    check(&mut c, "RENAMENX d d", int(0));
    check(&mut c, "GET d", bulk("3"));
    check(&mut c, "SET e 5", ok());
    check(&mut c, "RENAMENX e d", int(0));
    check(&mut c, "GET d", bulk("3"));
    check(&mut c, "GET e", bulk("5"));
    check(&mut c, "RENAMENX e f", int(1));
    check(&mut c, "GET f", bulk("5"));
    check(&mut c, "EXISTS e", int(0));
    check(&mut c, "RENAME a", wrong_args("rename"));
    check(&mut c, "RENAMENX a", wrong_args("renamenx"));
    // Across databases nothing leaks.
    check(&mut c, "SELECT 1", ok());
    check(&mut c, "RENAME f g", err("ERR no such key"));
}

#[test]
fn copy_and_move() {
    let node = Node::start(&[]);
    let mut c = node.client();
    let keys = spread_keys("cp");
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(qa(&mut c, &["SET", k.as_str(), &format!("v{i}"), "EX", "1000"]), ok());
    }
    // COPY across shards copies the value and the TTL.
    for i in 0..keys.len() {
        let dst = &keys[(i + 7) % keys.len()];
        let fresh = format!("copy:{i}");
        assert_eq!(qa(&mut c, &["COPY", keys[i].as_str(), &fresh]), int(1));
        assert_eq!(qa(&mut c, &["GET", &fresh]), bulk(format!("v{i}")));
        assert!(qa(&mut c, &["TTL", &fresh]).as_int() > 900);
        // Existing destination: 0 without REPLACE.
        assert_eq!(qa(&mut c, &["COPY", keys[i].as_str(), dst.as_str()]), int(0));
    }
    check(&mut c, "SET src s", ok());
    check(&mut c, "SET dst d EX 100", ok());
    check(&mut c, "COPY src dst", int(0));
    check(&mut c, "COPY src dst REPLACE", int(1));
    check(&mut c, "GET dst", bulk("s"));
    check(&mut c, "TTL dst", int(-1));
    check(&mut c, "GET src", bulk("s"));
    check(&mut c, "COPY nope x", int(0));
    check(&mut c, "EXISTS x", int(0));
    check(
        &mut c,
        "COPY src src",
        err("ERR source and destination objects are the same"),
    );
    check(&mut c, "COPY src other DB 16", err("ERR DB index is out of range"));
    check(&mut c, "COPY src other DB abc", err(NOT_INT));
    check(&mut c, "COPY src other bogus", err("ERR syntax error"));
    check(&mut c, "COPY src", wrong_args("copy"));
    // COPY into another database; same name in another DB is fine.
    check(&mut c, "COPY src src DB 1", int(1));
    check(&mut c, "COPY src src DB 1", int(0));
    check(&mut c, "SET src s2", ok());
    check(&mut c, "COPY src src DB 1 REPLACE", int(1));
    check(&mut c, "SELECT 1", ok());
    check(&mut c, "GET src", bulk("s2"));
    check(&mut c, "SELECT 0", ok());

    // MOVE.
    check(&mut c, "SET m v EX 1000", ok());
    check(&mut c, "MOVE m 2", int(1));
    check(&mut c, "EXISTS m", int(0));
    check(&mut c, "MOVE m 2", int(0));
    check(&mut c, "SET m other", ok());
    check(&mut c, "MOVE m 2", int(0)); // exists in the target
    check(&mut c, "GET m", bulk("other"));
    check(
        &mut c,
        "MOVE m 0",
        err("ERR source and destination objects are the same"),
    );
    check(&mut c, "MOVE m 16", err("ERR DB index is out of range"));
    check(&mut c, "MOVE m abc", err(NOT_INT));
    check(&mut c, "MOVE m", wrong_args("move"));
    check(&mut c, "SELECT 2", ok());
    check(&mut c, "GET m", bulk("v"));
    assert!(q(&mut c, "TTL m").as_int() > 900, "MOVE keeps the TTL");
}

#[test]
fn object_encoding_freq_idletime() {
    let node = Node::start(&[]);
    let mut c = node.client();
    check(&mut c, "OBJECT ENCODING nope", nil());
    for (value, enc) in [
        ("12345", "int"),
        ("-1", "int"),
        ("9223372036854775807", "int"),
        ("12345678901234567890", "embstr"),
        ("01", "embstr"),
        ("hello", "embstr"),
        ("01234567890123456789012345678901234567890123", "embstr"), // 44 bytes
        ("012345678901234567890123456789012345678901234", "raw"),   // 45 bytes
    ] {
        assert_eq!(qa(&mut c, &["SET", "k", value]), ok());
        assert_eq!(qa(&mut c, &["OBJECT", "ENCODING", "k"]), bulk(enc), "value {value:?}");
    }
    check(&mut c, "SET n 5", ok());
    check(&mut c, "INCR n", int(6));
    check(&mut c, "OBJECT ENCODING n", bulk("int"));
    check(&mut c, "OBJECT ENCODING", wrong_args("object|encoding"));
    check(
        &mut c,
        "OBJECT FOO k",
        err("ERR unknown subcommand 'FOO'. Try OBJECT HELP."),
    );
    check(
        &mut c,
        "OBJECT FREQ k",
        err("ERR An LFU maxmemory policy is not selected, access frequency not tracked. Please note that when switching between policies at runtime LRU and LFU data will take some time to adjust."),
    );
    check(&mut c, "OBJECT FREQ nope", nil());

    check(&mut c, "OBJECT IDLETIME nope", nil());
    check(&mut c, "SET idle v", ok());
    let t = q(&mut c, "OBJECT IDLETIME idle").as_int();
    assert!((0..=1).contains(&t), "{t}");
    // Idle time grows without access (OBJECT IDLETIME itself is not an access)...
    let grown = wait_for(Duration::from_secs(10), || {
        let t = q(&mut c, "OBJECT IDLETIME idle").as_int();
        (t >= 2).then_some(t)
    });
    assert!(grown.is_some(), "OBJECT IDLETIME never reached 2 s");
    // ...and an access resets it.
    check(&mut c, "GET idle", bulk("v"));
    let t = q(&mut c, "OBJECT IDLETIME idle").as_int();
    assert!(t <= 1, "idle time after GET: {t}");
}
