//! Concurrent clients on keys spread over both shards: no deadlock in cross-shard commands, no
//! lost updates, and Redis's atomicity of multi-key commands (every command is atomic in Redis:
//! "It is not possible for clients to see that some of the keys were updated while others are
//! unchanged", MSET documentation).
//!
//! Every loop is bounded by a count; the clients' read timeout (60 s) turns a deadlock into a
//! failure.

use crate::support::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

#[test]
fn cross_shard_commands_from_many_clients_do_not_deadlock() {
    let node = Node::start(&[]);
    let keys: Vec<String> = spread_keys("dl");
    let mut handles = Vec::new();
    for t in 0..6u64 {
        let mut c = node.client();
        let keys = keys.clone();
        handles.push(thread::spawn(move || {
            let mut rng = StdRng::seed_from_u64(t);
            for i in 0..1500 {
                let a = keys.choose(&mut rng).unwrap().clone();
                let b = keys.choose(&mut rng).unwrap().clone();
                let r = match rng.gen_range(0..8) {
                    0 => qa(&mut c, &["MSET", &a, "x", &b, "y"]),
                    1 => qa(&mut c, &["MGET", &a, &b, &keys[0], &keys[19]]),
                    2 => qa(&mut c, &["RENAME", &a, &b]),
                    3 => qa(&mut c, &["COPY", &a, &b, "REPLACE"]),
                    4 => qa(&mut c, &["DEL", &a, &b]),
                    5 => qa(&mut c, &["MSETNX", &a, "1", &b, "2"]),
                    6 => qa(&mut c, &["EXISTS", &a, &b]),
                    _ => qa(&mut c, &["RENAMENX", &a, &b]),
                };
                if let R::Err(e) = &r {
                    let same_key = a == b && e == "ERR source and destination objects are the same";
                    assert!(e == "ERR no such key" || same_key, "client {t} op {i}: {e}");
                }
            }
        }));
    }
    for h in handles {
        h.join().expect("a client failed or timed out (deadlock?)");
    }
    node.assert_alive();
}

#[test]
fn concurrent_incrby_loses_no_update() {
    let node = Node::start(&[]);
    let keys = spread_keys("sum");
    let mut handles = Vec::new();
    for t in 0..6u64 {
        let mut c = node.client();
        let keys = keys.clone();
        handles.push(thread::spawn(move || {
            let mut rng = StdRng::seed_from_u64(100 + t);
            let mut p = redis::pipe();
            for _ in 0..2000 {
                let k = keys.choose(&mut rng).unwrap();
                p.cmd("INCRBY").arg(k).arg(3).ignore();
            }
            p.query::<()>(&mut c).unwrap();
        }));
    }
    for h in handles {
        h.join().unwrap();
    }
    let mut c = node.client();
    let mut mget = vec!["MGET".to_string()];
    mget.extend(keys.iter().cloned());
    let total: i64 = qa(&mut c, &mget)
        .as_arr()
        .iter()
        .map(|v| match v {
            R::Nil => 0,
            other => other.as_string().parse::<i64>().unwrap(),
        })
        .sum();
    assert_eq!(total, 6 * 2000 * 3);
}

#[test]
fn mset_is_atomic_for_concurrent_mget() {
    let node = Node::start(&[]);
    let keys = spread_keys("atomic");
    let mut c = node.client();
    let mut mset = vec!["MSET".to_string()];
    for k in &keys {
        mset.push(k.clone());
        mset.push("gen-0".into());
    }
    assert_eq!(qa(&mut c, &mset), ok());
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let mut w = node.client();
        let keys = keys.clone();
        let stop = stop.clone();
        thread::spawn(move || {
            for g in 1..=3000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let mut mset = vec!["MSET".to_string()];
                for k in &keys {
                    mset.push(k.clone());
                    mset.push(format!("gen-{g}"));
                }
                assert_eq!(qa(&mut w, &mset), ok());
            }
        })
    };
    let mut readers = Vec::new();
    for _ in 0..2 {
        let mut r = node.client();
        let keys = keys.clone();
        readers.push(thread::spawn(move || {
            let mut mget = vec!["MGET".to_string()];
            mget.extend(keys.iter().cloned());
            for i in 0..1500 {
                let vals = qa(&mut r, &mget).sorted_strings();
                assert!(
                    vals.first() == vals.last(),
                    "MGET #{i} saw a partially applied MSET: {:?} .. {:?}",
                    vals.first(),
                    vals.last()
                );
            }
        }));
    }
    let results: Vec<_> = readers.into_iter().map(|h| h.join()).collect();
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    for r in results {
        if let Err(e) = r {
            std::panic::resume_unwind(e);
        }
    }
}

#[test]
fn concurrent_msetnx_has_one_winner() {
    let node = Node::start(&[]);
    let keys = spread_keys("race");
    let mut admin = node.client();
    for round in 0..40 {
        let barrier = Arc::new(std::sync::Barrier::new(4));
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let mut c = node.client();
                let keys = keys.clone();
                let barrier = barrier.clone();
                thread::spawn(move || {
                    let mut cmd = vec!["MSETNX".to_string()];
                    // Each client lists the keys in its own order.
                    let mut order = keys.clone();
                    order.rotate_left(t * 5);
                    for k in &order {
                        cmd.push(k.clone());
                        cmd.push(format!("client-{t}"));
                    }
                    barrier.wait();
                    qa(&mut c, &cmd).as_int()
                })
            })
            .collect();
        let wins: Vec<i64> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(
            wins.iter().sum::<i64>(),
            1,
            "round {round}: MSETNX results {wins:?}"
        );
        let winner = wins.iter().position(|w| *w == 1).unwrap();
        let mut mget = vec!["MGET".to_string()];
        mget.extend(keys.iter().cloned());
        assert_eq!(
            qa(&mut admin, &mget),
            arr(vec![bulk(format!("client-{winner}")); 20]),
            "round {round}"
        );
        let mut del = vec!["DEL".to_string()];
        del.extend(keys.iter().cloned());
        assert_eq!(qa(&mut admin, &del), int(20));
    }
}

#[test]
fn rename_is_atomic_for_concurrent_readers() {
    // A key renamed back and forth between two shards is always in exactly one place.
    let node = Node::start(&[]);
    let keys = spread_keys("mv");
    let (a, b) = (keys[0].clone(), keys[1].clone());
    let mut c = node.client();
    assert_eq!(qa(&mut c, &["SET", a.as_str(), "token"]), ok());
    let stop = Arc::new(AtomicBool::new(false));
    let mover = {
        let mut m = node.client();
        let (a, b) = (a.clone(), b.clone());
        let stop = stop.clone();
        thread::spawn(move || {
            for i in 0..4000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let (src, dst) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
                assert_eq!(qa(&mut m, &["RENAME", src.as_str(), dst.as_str()]), ok());
            }
        })
    };
    let mut r = node.client();
    let mut bad = None;
    for i in 0..2000 {
        let n = qa(&mut r, &["EXISTS", a.as_str(), b.as_str()]).as_int();
        if n != 1 {
            bad = Some((i, n));
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    mover.join().unwrap();
    assert_eq!(
        bad,
        None,
        "EXISTS a b saw the renamed key in {:?} places",
        bad.map(|b| b.1)
    );
}

#[test]
fn connection_churn() {
    let node = Node::start(&[]);
    for i in 0..300 {
        let mut raw = node.raw();
        if i % 3 == 0 {
            raw.send_cmd(&["SET", &format!("churn:{i}"), "v"]).unwrap();
            raw.expect(b"+OK\r\n");
        }
        // Dropped without QUIT.
    }
    let mut c = node.client();
    check(&mut c, "DBSIZE", int(100));
    let info = Info::get(&mut c, "clients");
    let connected = wait_for(std::time::Duration::from_secs(10), || {
        let n = Info::get(&mut c, "clients").int("connected_clients");
        (n <= 2).then_some(n)
    });
    assert!(
        connected.is_some(),
        "closed connections still counted: {}",
        info.text
    );
    node.assert_alive();
}
