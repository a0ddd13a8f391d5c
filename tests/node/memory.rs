//! maxmemory: noeviction answers OOM to writes (reads and DEL still work); each eviction policy
//! keeps used_memory under the limit by evicting, and volatile-* policies spare keys without TTL.

use crate::support::*;

const OOM: &str = "OOM command not allowed when used memory > 'maxmemory'.";
const LIMIT: i64 = 8 * 1024 * 1024;
const VALUE_LEN: usize = 10 * 1024;

fn value(i: usize) -> Vec<u8> {
    let mut v = format!("{i}:").into_bytes();
    v.resize(VALUE_LEN, b'a' + (i % 26) as u8);
    v
}

fn memory(c: &mut redis::Connection) -> (i64, i64, i64) {
    let mem = Info::get(c, "memory");
    let stats = Info::get(c, "stats");
    (mem.int("used_memory"), mem.int("maxmemory"), stats.int("evicted_keys"))
}

#[test]
fn noeviction_rejects_writes_but_serves_reads_and_deletes() {
    let node = Node::start(&["--maxmemory", "8mb", "--maxmemory-policy", "noeviction"]);
    let mut c = node.client();
    let (_, max, _) = memory(&mut c);
    assert_eq!(max, LIMIT);
    let info = Info::get(&mut c, "memory");
    assert_eq!(info.field("maxmemory_policy").as_deref(), Some("noeviction"));
    check(&mut c, "CONFIG GET maxmemory", bulks(&["maxmemory", "8388608"]));
    check(&mut c, "SET keep kept", ok());
    check(&mut c, "SET counter 1", ok());

    // Fill until writes are refused. A sharded server may fill one shard before another, so
    // keep going until 10 writes in a row are refused (bounded: 5x the limit in total).
    let mut written = 0;
    let mut refused_in_a_row = 0;
    let mut first_oom_used = None;
    for i in 0..(5 * LIMIT as usize / VALUE_LEN) {
        let r = qa(&mut c, &[b"SET".as_slice(), format!("fill:{i}").as_bytes(), &value(i)]);
        if r == ok() {
            written += 1;
            refused_in_a_row = 0;
        } else {
            assert_eq!(r, err(OOM), "write {i} failed with something other than OOM");
            if first_oom_used.is_none() {
                first_oom_used = Some(Info::get(&mut c, "memory").int("used_memory"));
            }
            refused_in_a_row += 1;
            if refused_in_a_row == 10 {
                break;
            }
        }
    }
    assert_eq!(
        refused_in_a_row, 10,
        "writing 5x maxmemory never got 10 OOMs in a row ({written} writes accepted)"
    );
    assert!(written > 100, "only {written} values fit in 8mb");
    let used = first_oom_used.unwrap();
    assert!(
        used >= LIMIT / 2,
        "first OOM while used_memory was only {used} of {LIMIT}"
    );
    // Tiny writes may or may not squeeze in, depending on how the server accounts its own
    // buffers (Redis counts the query buffer), but they answer normally or with OOM.
    for line in [
        "SET tiny 1",
        "APPEND other more",
        "MSET a 1 b 2",
        "SETNX new 1",
        "INCR counter",
    ] {
        let r = q(&mut c, line);
        assert!(
            r == err(OOM) || !r.is_err(),
            "{line}: expected a normal reply or {OOM:?}, got {r:?}"
        );
    }
    // Reads, and commands that free memory, still work.
    check(&mut c, "GET keep", bulk("kept"));
    assert_eq!(qa(&mut c, &["GET", "fill:3"]), R::Bulk(value(3)));
    check(&mut c, "EXISTS fill:0 fill:1", int(2));
    check(&mut c, "STRLEN fill:2", int(VALUE_LEN as i64));
    check(&mut c, "TTL keep", int(-1));
    check(&mut c, "PING", simple("PONG"));
    let dbsize = q(&mut c, "DBSIZE").as_int();
    assert!(dbsize >= written + 2, "DBSIZE {dbsize} < {written} + 2: keys were lost");
    let (_, _, evicted) = memory(&mut c);
    assert_eq!(evicted, 0, "noeviction never evicts");
    check(&mut c, "DEL fill:0", int(1));
    check(&mut c, "UNLINK fill:1", int(1));
    check(&mut c, "EXPIRE fill:2 100", int(1));
    // Freeing everything makes writes possible again.
    check(&mut c, "FLUSHALL", ok());
    check(&mut c, "SET tiny 1", ok());
    check(&mut c, "INCR tiny", int(2));
}

#[test]
fn an_mset_refused_for_memory_changes_nothing() {
    let node = Node::start(&["--maxmemory", "8mb", "--maxmemory-policy", "noeviction"]);
    let mut c = node.client();
    check(&mut c, "SET {m}old before", ok());
    // Fill until the shard of {m} refuses writes.
    let mut refused = false;
    for i in 0..(5 * LIMIT as usize / VALUE_LEN) {
        let r = qa(
            &mut c,
            &[b"SET".as_slice(), format!("{{m}}fill:{i}").as_bytes(), &value(i)],
        );
        if r != ok() {
            assert_eq!(r, err(OOM));
            refused = true;
            break;
        }
    }
    assert!(refused, "5x maxmemory was accepted");
    // Every key of this MSET lives on one shard ({m}): it is applied whole or not at all, even
    // when only its last value is too big to fit.
    let big = vec![b'x'; 2 << 20];
    let r = qa(
        &mut c,
        &[&b"MSET"[..], b"{m}old", b"after", b"{m}fresh", b"1", b"{m}big", &big],
    );
    assert_eq!(r, err(OOM));
    check(&mut c, "GET {m}old", bulk("before"));
    check(&mut c, "EXISTS {m}fresh {m}big", int(0));
}

#[test]
fn volatile_policy_without_volatile_keys_answers_oom() {
    let node = Node::start(&["--maxmemory", "8mb", "--maxmemory-policy", "volatile-lru"]);
    let mut c = node.client();
    let mut result = None;
    for i in 0..(5 * LIMIT as usize / VALUE_LEN) {
        let r = qa(&mut c, &[b"SET".as_slice(), format!("p:{i}").as_bytes(), &value(i)]);
        if r != ok() {
            result = Some(r);
            break;
        }
    }
    assert_eq!(result, Some(err(OOM)), "nothing evictable: writes must fail");
    let (_, _, evicted) = memory(&mut c);
    assert_eq!(evicted, 0);
    check(&mut c, "GET p:0", R::Bulk(value(0)));
}

/// Writes about 5x the limit with the given policy; checks the limit holds all along, keys were
/// evicted, and (for volatile policies) keys without TTL all survive.
fn eviction_case(policy: &str) {
    let node = Node::start(&["--maxmemory", "8mb", "--maxmemory-policy", policy]);
    let mut c = node.client();
    let volatile = policy.starts_with("volatile");
    let info = Info::get(&mut c, "memory");
    assert_eq!(info.field("maxmemory_policy").as_deref(), Some(policy));
    assert_eq!(info.int("maxmemory"), LIMIT);

    // Persistent keys: a few small ones (volatile policies must never evict them).
    let persistent = spread_keys("persist");
    for k in &persistent {
        assert_eq!(qa(&mut c, &["SET", k.as_str(), "precious"]), ok());
    }
    let total = 5 * LIMIT as usize / VALUE_LEN;
    for i in 0..total {
        let key = format!("bulk:{i}");
        let v = value(i);
        let r = if volatile {
            // Varied TTLs (for volatile-ttl), all far in the future.
            let ttl = (10_000 + (i * 7919) % 50_000).to_string();
            qa(&mut c, &[b"SET".as_slice(), key.as_bytes(), &v, b"EX", ttl.as_bytes()])
        } else {
            qa(&mut c, &[b"SET".as_slice(), key.as_bytes(), &v])
        };
        assert_eq!(r, ok(), "write {i} of {total} with {policy}");
        if i % 250 == 0 {
            let (used, max, _) = memory(&mut c);
            assert!(
                used <= max,
                "{policy}: used_memory {used} > maxmemory {max} after {i} writes"
            );
        }
    }
    let (used, max, evicted) = memory(&mut c);
    assert!(used <= max, "{policy}: used_memory {used} > maxmemory {max} at the end");
    assert!(evicted > 0, "{policy}: evicted_keys is 0 after writing 5x the limit");
    // Surviving keys hold exactly what was written (eviction removes whole keys, never bytes).
    let mut survivors = 0;
    for i in (0..total).step_by(13) {
        match qa(&mut c, &["GET", &format!("bulk:{i}")]) {
            R::Nil => {}
            R::Bulk(b) => {
                assert!(b == value(i), "{policy}: bulk:{i} holds a corrupted value");
                survivors += 1;
            }
            other => panic!("{policy}: GET bulk:{i} -> {other:?}"),
        }
    }
    assert!(survivors > 0, "{policy}: no sampled key survived");
    // Keys present + keys evicted = keys written, from one INFO snapshot.
    let info = Info::get(&mut c, "");
    let (keys, _) = info.db_keys(0).expect("db0 in INFO keyspace");
    let evicted = info.int("evicted_keys");
    assert!(
        (keys as usize) < total,
        "{policy}: {keys} keys left of {total} — nothing was evicted"
    );
    assert_eq!(
        keys + evicted,
        total as i64 + 20,
        "{policy}: db0 keys {keys} + evicted_keys {evicted} != keys written"
    );
    assert!(
        info.int("used_memory") <= LIMIT,
        "{policy}: {}",
        info.int("used_memory")
    );
    if volatile {
        let mut exists = vec!["EXISTS".to_string()];
        exists.extend(persistent.iter().cloned());
        assert_eq!(qa(&mut c, &exists), int(20), "{policy} evicted a key without TTL");
        for k in &persistent {
            assert_eq!(qa(&mut c, &["GET", k.as_str()]), bulk("precious"));
        }
    }
    node.assert_alive();
}

#[test]
fn eviction_allkeys_lru() {
    eviction_case("allkeys-lru");
}

#[test]
fn eviction_volatile_lru() {
    eviction_case("volatile-lru");
}

#[test]
fn eviction_allkeys_random() {
    eviction_case("allkeys-random");
}

#[test]
fn eviction_volatile_ttl() {
    eviction_case("volatile-ttl");
}

#[test]
fn config_set_maxmemory_at_runtime_evicts() {
    let node = Node::start(&["--maxmemory-policy", "allkeys-random"]);
    let mut c = node.client();
    for i in 0..2000 {
        assert_eq!(
            qa(&mut c, &[b"SET".as_slice(), format!("k:{i}").as_bytes(), &value(i)]),
            ok()
        );
    }
    check(&mut c, "CONFIG SET maxmemory 8mb", ok());
    // The next commands run under the new limit; writes (to keys on every shard) evict.
    for k in spread_keys("trigger") {
        assert_eq!(qa(&mut c, &["SET", k.as_str(), "1"]), ok());
    }
    let (used, max, evicted) = memory(&mut c);
    assert_eq!(max, LIMIT);
    assert!(used <= max, "used_memory {used} > maxmemory {max}");
    assert!(evicted > 0);
    assert!(q(&mut c, "DBSIZE").as_int() < 2000);
}
