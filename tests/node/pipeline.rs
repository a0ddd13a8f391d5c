//! Pipelining: 10,000 mixed commands on many keys (both shards), every reply checked in order.

use crate::support::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

/// A random mix of SET/GET/INCR/APPEND/DEL/MGET/MSET/EXISTS with the replies a correct server
/// gives, computed from a model of the keyspace.
fn workload(seed: u64, n: usize) -> Vec<(Vec<String>, R)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut model: HashMap<String, String> = HashMap::new();
    let mut out = Vec::with_capacity(n);
    let key = |rng: &mut StdRng| format!("pk:{}", rng.gen_range(0..400));
    let counter = |rng: &mut StdRng| format!("pc:{}", rng.gen_range(0..100));
    for i in 0..n {
        let (cmd, reply) = match rng.gen_range(0..100) {
            0..=24 => {
                let k = key(&mut rng);
                let v = format!("v{i}");
                model.insert(k.clone(), v.clone());
                (vec!["SET".into(), k, v], ok())
            }
            25..=49 => {
                let k = key(&mut rng);
                let r = model.get(&k).map(bulk).unwrap_or(nil());
                (vec!["GET".into(), k], r)
            }
            50..=69 => {
                let k = counter(&mut rng);
                let next = model.get(&k).map(|v| v.parse::<i64>().unwrap()).unwrap_or(0) + 1;
                model.insert(k.clone(), next.to_string());
                (vec!["INCR".into(), k], int(next))
            }
            70..=74 => {
                let k = key(&mut rng);
                let mut v = model.get(&k).cloned().unwrap_or_default();
                v.push('+');
                let len = v.len() as i64;
                model.insert(k.clone(), v);
                (vec!["APPEND".into(), k, "+".into()], int(len))
            }
            75..=79 => {
                let k = key(&mut rng);
                let n = model.remove(&k).is_some() as i64;
                (vec!["DEL".into(), k], int(n))
            }
            80..=89 => {
                let mut cmd = vec!["MGET".to_string()];
                let mut rep = Vec::new();
                for _ in 0..rng.gen_range(1..8) {
                    let k = key(&mut rng);
                    rep.push(model.get(&k).map(bulk).unwrap_or(nil()));
                    cmd.push(k);
                }
                (cmd, arr(rep))
            }
            90..=94 => {
                let mut cmd = vec!["MSET".to_string()];
                for j in 0..rng.gen_range(1..5) {
                    let k = key(&mut rng);
                    let v = format!("m{i}.{j}");
                    model.insert(k.clone(), v.clone());
                    cmd.push(k);
                    cmd.push(v);
                }
                (cmd, ok())
            }
            _ => {
                let mut cmd = vec!["EXISTS".to_string()];
                let mut n = 0;
                for _ in 0..rng.gen_range(1..5) {
                    let k = key(&mut rng);
                    n += model.contains_key(&k) as i64;
                    cmd.push(k);
                }
                (cmd, int(n))
            }
        };
        out.push((cmd, reply));
    }
    out
}

#[test]
fn pipeline_10000_mixed_commands_through_redis_crate() {
    let node = Node::start(&[]);
    let mut c = node.client();
    let work = workload(0xC0FFEE, 10_000);
    let mut p = redis::pipe();
    for (cmd, _) in &work {
        p.add_command(cmd_of(cmd));
    }
    let replies: Vec<redis::Value> = p.query(&mut c).expect("pipeline");
    assert_eq!(replies.len(), work.len());
    for (i, ((cmd, expected), got)) in work.iter().zip(replies).enumerate() {
        let got = R::from(got);
        assert_eq!(&got, expected, "reply {i} to {cmd:?}");
    }
    // The connection is in sync afterwards.
    check(&mut c, "PING", simple("PONG"));
}

/// Expected raw RESP2 encoding of a reply.
fn encode(r: &R) -> Vec<u8> {
    match r {
        R::Nil => b"$-1\r\n".to_vec(),
        R::Int(n) => format!(":{n}\r\n").into_bytes(),
        R::Bulk(b) => {
            let mut v = format!("${}\r\n", b.len()).into_bytes();
            v.extend_from_slice(b);
            v.extend_from_slice(b"\r\n");
            v
        }
        R::Simple(s) => format!("+{s}\r\n").into_bytes(),
        R::Err(e) => format!("-{e}\r\n").into_bytes(),
        R::Arr(a) => {
            let mut v = format!("*{}\r\n", a.len()).into_bytes();
            for x in a {
                v.extend(encode(x));
            }
            v
        }
        other => panic!("no RESP2 encoding for {other:?}"),
    }
}

#[test]
fn pipeline_10000_raw_with_errors_interleaved() {
    let node = Node::start(&[]);
    let mut work = workload(42, 10_000);
    // Sprinkle errors: they must come back at their position without disturbing the rest.
    for i in (0..work.len()).step_by(97) {
        let e = match i % 3 {
            0 => (
                vec!["GET".to_string()],
                err("ERR wrong number of arguments for 'get' command"),
            ),
            1 => (
                vec!["INCRBY".to_string(), "pc:0".into(), "notanumber".into()],
                err("ERR value is not an integer or out of range"),
            ),
            _ => (
                vec!["NOSUCHCMD".to_string()],
                err("ERR unknown command 'NOSUCHCMD', with args beginning with: "),
            ),
        };
        work.insert(i, e);
    }
    let mut request = Vec::new();
    let mut expected = Vec::new();
    for (cmd, reply) in &work {
        request.extend(encode_cmd(cmd));
        expected.push(encode(reply));
    }
    let mut raw = node.raw();
    // Send from another thread so a full socket buffer cannot deadlock us.
    let mut writer = raw.stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        // Uneven chunks split commands at arbitrary points.
        let mut pos = 0;
        let mut step = 1;
        while pos < request.len() {
            let end = (pos + step).min(request.len());
            writer.write_all(&request[pos..end]).unwrap();
            pos = end;
            step = step * 7 % 65_521 + 1;
        }
    });
    for (i, exp) in expected.iter().enumerate() {
        let got = raw
            .read_reply(Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("reply {i} to {:?}: {e:?}", work[i].0));
        assert!(
            &got == exp,
            "reply {i} to {:?}: expected {} got {}",
            work[i].0,
            show(exp),
            show(&got)
        );
    }
    sender.join().unwrap();
    raw.send_cmd(&["PING"]).unwrap();
    raw.expect(b"+PONG\r\n");
}

#[test]
fn inline_commands_pipelined() {
    let node = Node::start(&[]);
    let mut raw = node.raw();
    let mut req = Vec::new();
    for i in 0..1000 {
        req.extend(format!("SET inline:{i} {i}\r\nGET inline:{i}\r\n").as_bytes());
    }
    req.extend(b"MGET inline:0 inline:999 nope\r\n");
    raw.send(&req).unwrap();
    for i in 0..1000 {
        raw.expect(b"+OK\r\n");
        let v = i.to_string();
        raw.expect(format!("${}\r\n{v}\r\n", v.len()).as_bytes());
    }
    raw.expect(b"*3\r\n$1\r\n0\r\n$3\r\n999\r\n$-1\r\n");
}
