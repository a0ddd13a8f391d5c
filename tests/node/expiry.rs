//! Key expiry: lazy (on access) and active (background, without access). Time passes in bounded
//! polling loops; nothing assumes how fast the server is.

use crate::support::*;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

#[test]
fn lazy_expiry_on_access() {
    let node = Node::start(&[]);
    let mut c = node.client();
    check(&mut c, "SET k v PX 50", ok());
    let gone = wait_for(WAIT, || (q(&mut c, "GET k") == nil()).then_some(()));
    assert!(gone.is_some(), "key with PX 50 still readable after {WAIT:?}");
    check(&mut c, "EXISTS k", int(0));
    check(&mut c, "TTL k", int(-2));
    check(&mut c, "PTTL k", int(-2));
    check(&mut c, "EXPIRETIME k", int(-2));
    check(&mut c, "STRLEN k", int(0));
    check(&mut c, "TYPE k", simple("none"));

    // Every kind of access treats an expired key as missing.
    let keys = spread_keys("lazy");
    for k in &keys {
        assert_eq!(qa(&mut c, &["SET", k.as_str(), "10", "PX", "30"]), ok());
    }
    check(&mut c, "SET sentinel v PX 30", ok());
    assert!(wait_for(WAIT, || (q(&mut c, "EXISTS sentinel") == int(0)).then_some(())).is_some());
    // The 20 keys were set before the sentinel, so they have expired too.
    let mut mget = vec!["MGET".to_string()];
    mget.extend(keys.iter().cloned());
    assert_eq!(qa(&mut c, &mget), arr(vec![nil(); 20]));
    let mut exists = vec!["EXISTS".to_string()];
    exists.extend(keys.iter().cloned());
    assert_eq!(qa(&mut c, &exists), int(0));
    assert_eq!(qa(&mut c, &["INCR", keys[0].as_str()]), int(1));
    assert_eq!(qa(&mut c, &["TTL", keys[0].as_str()]), int(-1));
    assert_eq!(qa(&mut c, &["APPEND", keys[1].as_str(), "x"]), int(1));
    assert_eq!(qa(&mut c, &["RENAME", keys[2].as_str(), "dst"]), err("ERR no such key"));
    assert_eq!(qa(&mut c, &["SETNX", keys[3].as_str(), "n"]), int(1));
    assert_eq!(qa(&mut c, &["SET", keys[4].as_str(), "x", "NX"]), ok());
    assert_eq!(qa(&mut c, &["SET", keys[5].as_str(), "x", "XX"]), nil());
    assert_eq!(qa(&mut c, &["GETDEL", keys[6].as_str()]), nil());
    assert_eq!(qa(&mut c, &["COPY", keys[7].as_str(), "copydst"]), int(0));
    assert_eq!(qa(&mut c, &["MOVE", keys[8].as_str(), "1"]), int(0));
    assert_eq!(qa(&mut c, &["EXPIRE", keys[9].as_str(), "100"]), int(0));
    assert_eq!(qa(&mut c, &["PERSIST", keys[10].as_str()]), int(0));
    assert_eq!(qa(&mut c, &["DEL", keys[11].as_str()]), int(0));
    assert_eq!(qa(&mut c, &["GETRANGE", keys[12].as_str(), "0", "-1"]), bulk(""));
    assert_eq!(qa(&mut c, &["OBJECT", "ENCODING", keys[13].as_str()]), nil());
    let all = q(&mut c, "KEYS lazy:*").sorted_strings();
    let mut expected = vec![keys[0].clone(), keys[1].clone(), keys[3].clone(), keys[4].clone()];
    expected.sort();
    assert_eq!(all, expected);
}

#[test]
fn overwrite_and_persist_cancel_expiry() {
    let node = Node::start(&[]);
    let mut c = node.client();
    check(&mut c, "SET overwritten v PX 100", ok());
    check(&mut c, "SET overwritten v2", ok());
    check(&mut c, "SET persisted v PX 100", ok());
    check(&mut c, "PERSIST persisted", int(1));
    check(&mut c, "SET getex v PX 100", ok());
    check(&mut c, "GETEX getex PERSIST", bulk("v"));
    check(&mut c, "SET getset v PX 100", ok());
    check(&mut c, "GETSET getset v2", bulk("v"));
    check(&mut c, "SET sentinel v PX 200", ok());
    assert!(
        wait_for(WAIT, || (q(&mut c, "EXISTS sentinel") == int(0)).then_some(())).is_some(),
        "sentinel never expired"
    );
    check(&mut c, "GET overwritten", bulk("v2"));
    check(&mut c, "GET persisted", bulk("v"));
    check(&mut c, "GET getex", bulk("v"));
    check(&mut c, "GET getset", bulk("v2"));
    check(&mut c, "DBSIZE", int(4));
}

#[test]
fn getex_and_expire_make_keys_expire() {
    let node = Node::start(&[]);
    let mut c = node.client();
    check(&mut c, "SET a v", ok());
    check(&mut c, "GETEX a PX 50", bulk("v"));
    check(&mut c, "SET b v", ok());
    check(&mut c, "PEXPIRE b 50", int(1));
    check(&mut c, "SET c v", ok());
    check(&mut c, "EXPIRE c 1", int(1));
    let gone = wait_for(WAIT, || (q(&mut c, "EXISTS a b c") == int(0)).then_some(()));
    assert!(gone.is_some(), "keys with short TTLs never expired");
}

#[test]
fn active_expiry_without_access() {
    let node = Node::start(&[]);
    let mut c = node.client();
    // 300 short-lived keys spread over both shards and two databases, plus 20 persistent ones.
    let mut p = redis::pipe();
    for i in 0..200 {
        p.cmd("SET")
            .arg(format!("short:{i}"))
            .arg("v")
            .arg("PX")
            .arg(100)
            .ignore();
    }
    for i in 0..20 {
        p.cmd("SET").arg(format!("long:{i}")).arg("v").ignore();
    }
    p.cmd("SELECT").arg(3).ignore();
    for i in 0..100 {
        p.cmd("SET")
            .arg(format!("short3:{i}"))
            .arg("v")
            .arg("PX")
            .arg(100)
            .ignore();
    }
    p.cmd("SELECT").arg(0).ignore();
    p.query::<()>(&mut c).unwrap();
    let before = Info::get(&mut c, "stats").int("expired_keys");

    // Observe only through INFO and DBSIZE, which touch no key.
    let drained = wait_for(WAIT, || {
        let info = Info::get(&mut c, "");
        let db0 = info.db_keys(0).map(|k| k.0).unwrap_or(0);
        let db3 = info.db_keys(3).map(|k| k.0).unwrap_or(0);
        let expired = info.int("expired_keys");
        (db0 == 20 && db3 == 0 && expired - before >= 300).then_some(expired)
    });
    let info = Info::get(&mut c, "");
    assert!(
        drained.is_some(),
        "active expiry did not remove the 300 untouched keys within {WAIT:?}: db0={:?} db3={:?} expired_keys={:?}",
        info.db_keys(0),
        info.db_keys(3),
        info.field("expired_keys")
    );
    check(&mut c, "DBSIZE", int(20));
    assert_eq!(info.db_keys(0), Some((20, 0)));
    check(&mut c, "SELECT 3", ok());
    check(&mut c, "DBSIZE", int(0));
}

#[test]
fn expired_keys_counted_in_info_stats() {
    let node = Node::start(&[]);
    let mut c = node.client();
    check(&mut c, "CONFIG RESETSTAT", ok());
    for i in 0..10 {
        check(&mut c, &format!("SET e{i} v PX 20"), ok());
    }
    let n = wait_for(WAIT, || {
        let n = Info::get(&mut c, "stats").int("expired_keys");
        (n >= 10).then_some(n)
    });
    assert_eq!(n, Some(10), "expired_keys should reach exactly 10");
    check(&mut c, "DBSIZE", int(0));
}
