//! Persistence: the per-shard log (durability modes `always`, `periodic`, `none`), restart and
//! replay, crash safety under SIGKILL, resharding on restart, torn tails and corruption (with and
//! without `--repair`), the data-dir lock, expiry across restarts, compaction (SAVE, BGSAVE,
//! BGREWRITEAOF, automatic rewrite) and the `# Persistence` INFO section.
//!
//! All of this is corekv-only: every test calls [`corekv_only`] first. Tests that restart a node
//! share one data dir between successive processes through a [`TestDir`] and [`Node::start_in`].
//! The on-disk layout and record format read here are those of `engine/FORMAT.md`.
//!
//! The crash tests pick their kill moments from a seed printed at the start; reproduce a run with
//! `COREKV_CRASH_SEED=<seed>`.

use crate::support::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

// ------------------------------------------------------------------------------------------------
// Helpers.

const MIB: usize = 1 << 20;

/// Graceful stop with SIGTERM; asserts exit code 0.
fn stop(node: &mut Node) {
    let status = node.stop_with(Signal::SIGTERM);
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM: expected exit code 0, got {status:?}; stderr:\n{}",
        node.stderr()
    );
}

/// The `# Persistence` section.
fn pinfo(c: &mut redis::Connection) -> Info {
    Info::get(c, "persistence")
}

/// A reproducible seed: `COREKV_CRASH_SEED` if set, else the clock. Printed so a failure can be
/// replayed.
fn test_seed(what: &str) -> u64 {
    let seed = std::env::var("COREKV_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("{what}: seed {seed} (set COREKV_CRASH_SEED={seed} to repeat)");
    seed
}

fn splitmix(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `len` deterministic bytes covering all byte values (binary-safe values).
fn pattern(len: usize, salt: u64) -> Vec<u8> {
    let mut s = salt;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&splitmix(&mut s).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Gets many keys (pipelined, in chunks) from the current database.
fn get_many(c: &mut redis::Connection, keys: &[String]) -> Vec<Option<Vec<u8>>> {
    let mut out = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(500) {
        let mut p = redis::pipe();
        for k in chunk {
            p.cmd("GET").arg(k);
        }
        let vals: Vec<Option<Vec<u8>>> = p.query(c).expect("pipelined GET");
        out.extend(vals);
    }
    out
}

/// PTTL of many keys (pipelined).
fn pttl_many(c: &mut redis::Connection, keys: &[String]) -> Vec<i64> {
    let mut out = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(500) {
        let mut p = redis::pipe();
        for k in chunk {
            p.cmd("PTTL").arg(k);
        }
        let vals: Vec<i64> = p.query(c).expect("pipelined PTTL");
        out.extend(vals);
    }
    out
}

/// Sets many keys (pipelined); `ttl_secs` > 0 adds `EX`.
fn set_many(c: &mut redis::Connection, items: &[(String, Vec<u8>, u64)]) {
    for chunk in items.chunks(200) {
        let mut p = redis::pipe();
        for (k, v, ttl) in chunk {
            let cmd = p.cmd("SET").arg(k).arg(v);
            if *ttl > 0 {
                cmd.arg("EX").arg(*ttl);
            }
        }
        let replies: Vec<redis::Value> = p.query(c).expect("pipelined SET");
        for r in replies {
            assert_eq!(R::from(r), ok(), "pipelined SET");
        }
    }
}

/// Every key of the current database, via SCAN (deduplicated).
fn scan_all(c: &mut redis::Connection) -> HashSet<String> {
    let mut cursor = "0".to_string();
    let mut seen = HashSet::new();
    for _ in 0..1_000_000 {
        let r = qa(c, &["SCAN", &cursor, "COUNT", "1000"]).as_arr();
        assert_eq!(r.len(), 2, "SCAN reply has two elements: {r:?}");
        cursor = r[0].as_string();
        for k in r[1].as_arr() {
            seen.insert(k.as_string());
        }
        if cursor == "0" {
            return seen;
        }
    }
    panic!("SCAN never finished");
}

/// The sorted key names of database `db` (leaves the connection on that database).
fn keys_of(c: &mut redis::Connection, db: usize) -> Vec<String> {
    check(c, &format!("SELECT {db}"), ok());
    q(c, "KEYS *").sorted_strings()
}

fn ms_since_epoch() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

// ------------------------------------------------------------------------------------------------
// Reading segment files (engine/FORMAT.md).

const SEGMENT_MAGIC: &[u8; 8] = b"CKVLOG\r\n";
const SEGMENT_HEADER_LEN: usize = 4096;
const RECORD_HEADER_LEN: usize = 32;
const RECORD_OVERHEAD: usize = RECORD_HEADER_LEN + 4;
const TYPE_SET: u8 = 1;

fn crc32(data: &[u8]) -> u32 {
    static TABLE: OnceLock<[u32; 256]> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            }
            *e = c;
        }
        t
    });
    let mut crc = !0u32;
    for &b in data {
        crc = table[((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// One record of a segment file.
#[derive(Debug, Clone)]
struct LogRecord {
    /// Byte offset of the record in its segment file.
    offset: usize,
    typ: u8,
    db: u16,
    seq: u64,
    expiry_ms: u64,
    key: Vec<u8>,
    value: Vec<u8>,
}

/// The valid records of a segment, walked with their length fields (and checked with their CRC)
/// from the header block on, and the offset where the valid data ends. `None` if the file does not
/// start with a segment header (a segment whose creation was cut short).
fn try_read_segment(path: &Path) -> Option<(Vec<LogRecord>, usize)> {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    if data.len() < SEGMENT_HEADER_LEN || &data[..8] != SEGMENT_MAGIC {
        return None;
    }
    let mut at = SEGMENT_HEADER_LEN;
    let mut records = Vec::new();
    while at + RECORD_OVERHEAD <= data.len() {
        let len = u32_at(&data, at) as usize;
        if len < RECORD_OVERHEAD || at + len > data.len() {
            break;
        }
        let rec = &data[at..at + len];
        if crc32(&rec[..len - 4]) != u32_at(rec, len - 4) {
            break;
        }
        let klen = u32_at(rec, 24) as usize;
        let vlen = u32_at(rec, 28) as usize;
        if RECORD_OVERHEAD + klen + vlen != len {
            break;
        }
        records.push(LogRecord {
            offset: at,
            typ: rec[4],
            db: u16::from_le_bytes([rec[5], rec[6]]),
            seq: u64_at(rec, 8),
            expiry_ms: u64_at(rec, 16),
            key: rec[RECORD_HEADER_LEN..RECORD_HEADER_LEN + klen].to_vec(),
            value: rec[RECORD_HEADER_LEN + klen..RECORD_HEADER_LEN + klen + vlen].to_vec(),
        });
        at += len;
    }
    Some((records, at))
}

/// [`try_read_segment`] of a segment that must have a header.
fn read_segment(path: &Path) -> (Vec<LogRecord>, usize) {
    try_read_segment(path).unwrap_or_else(|| {
        let data = std::fs::read(path).unwrap();
        panic!(
            "{} ({} bytes) does not start with a segment header: {}",
            path.display(),
            data.len(),
            show(&data[..data.len().min(64)])
        )
    })
}

/// Segment files grouped by shard dir (each list oldest first).
fn segments_by_shard(data_dir: &Path) -> BTreeMap<PathBuf, Vec<PathBuf>> {
    let mut m: BTreeMap<PathBuf, Vec<PathBuf>> = BTreeMap::new();
    for seg in segment_files(data_dir) {
        m.entry(seg.parent().unwrap().to_path_buf()).or_default().push(seg);
    }
    m
}

/// Total apparent size of the shard dirs (segments and snapshots).
fn shards_size(data_dir: &Path) -> u64 {
    shard_dirs(data_dir).iter().map(|d| dir_size(d)).sum()
}

fn listing(data_dir: &Path) -> String {
    let mut s = String::new();
    for d in shard_dirs(data_dir) {
        let mut files: Vec<_> = std::fs::read_dir(&d).unwrap().filter_map(|e| e.ok()).collect();
        files.sort_by_key(|e| e.file_name());
        for e in files {
            let len = e.metadata().map(|m| m.len()).unwrap_or(0);
            s.push_str(&format!(
                "  {}/{}: {len}\n",
                file_name(&d),
                e.file_name().to_string_lossy()
            ));
        }
    }
    s
}

// ------------------------------------------------------------------------------------------------
// 1. Restart keeps data.

fn big(len: usize, salt: u64) -> Vec<u8> {
    pattern(len, salt)
}

/// Writes a mix of data through many command kinds and databases; [`verify_mix`] checks it.
fn populate_mix(c: &mut redis::Connection) {
    // Something that FLUSHALL removes.
    check(c, "SELECT 5", ok());
    check(c, "SET flushed:all x", ok());
    check(c, "SELECT 0", ok());
    check(c, "SET flushed:all0 x", ok());
    check(c, "FLUSHALL", ok());

    check(c, "SET str:empty \"\"", ok());
    check(c, "SET str:small hello", ok());
    assert_eq!(qa(c, &[b"SET".as_slice(), b"str:1k", &big(1000, 1)]), ok());
    assert_eq!(qa(c, &[b"SET".as_slice(), b"str:64k", &big(65536, 2)]), ok());
    assert_eq!(qa(c, &[b"SET".as_slice(), b"str:1m", &big(MIB, 3)]), ok());
    assert_eq!(
        qa(c, &[b"SET".as_slice(), b"bin:\x00\xff\r\nkey", b"\x00\r\n\xfe"]),
        ok()
    );
    check(c, "SET str:over first", ok());
    check(c, "SET str:over second", ok());

    check(c, "SET ttl:ex v EX 1000", ok());
    check(c, "SET ttl:px v PX 500000", ok());
    check(c, "SET ttl:persisted v EX 100", ok());
    check(c, "PERSIST ttl:persisted", int(1));
    check(c, "SET ttl:expire v", ok());
    check(c, "EXPIRE ttl:expire 2000", int(1));
    check(c, "SET ttl:dropped v EX 100", ok());
    check(c, "SET ttl:dropped w", ok()); // a plain SET clears the TTL

    check(c, "SET del:gone x", ok());
    check(c, "DEL del:gone", int(1));
    check(c, "SET del:m1 a", ok());
    check(c, "SET del:m2 b", ok());
    check(c, "DEL del:m1 del:m2 del:never", int(2));

    check(c, "INCR ctr", int(1));
    check(c, "INCRBY ctr 41", int(42));
    check(c, "DECR ctr", int(41));
    check(c, "APPEND app abc", int(3));
    check(c, "APPEND app def", int(6));

    check(c, "SET ren:src moved EX 1000", ok());
    check(c, "RENAME ren:src ren:dst", ok());
    check(c, "SET ren:old from-old", ok());
    check(c, "SET ren:over overwritten", ok());
    check(c, "RENAME ren:old ren:over", ok());

    check(c, "SET mv:k moving", ok());
    check(c, "MOVE mv:k 1", int(1));
    check(c, "MSET m:a 1 m:b 2", ok());

    let many: Vec<(String, Vec<u8>, u64)> = (0..200)
        .map(|i| (format!("many:{i}"), format!("value-{i}").into_bytes(), 0))
        .collect();
    set_many(c, &many);

    check(c, "SELECT 1", ok());
    check(c, "SET d1:a one", ok());
    check(c, "SELECT 2", ok());
    check(c, "SET d2:x x", ok());
    check(c, "SET d2:y y", ok());
    check(c, "FLUSHDB", ok());
    check(c, "SET d2:after after", ok());
    check(c, "SELECT 0", ok());
}

#[track_caller]
fn assert_ttl_between(c: &mut redis::Connection, key: &str, lo: i64, hi: i64) {
    let t = q(c, &format!("TTL {key}")).as_int();
    assert!((lo..=hi).contains(&t), "TTL {key} = {t}, expected {lo}..={hi}");
}

/// Checks everything [`populate_mix`] wrote (and nothing else is there).
fn verify_mix(c: &mut redis::Connection, extra_db0: &[&str]) {
    let mut db0: Vec<String> = [
        "app",
        "bin:\u{0}\u{fffd}\r\nkey",
        "ctr",
        "m:a",
        "m:b",
        "ren:dst",
        "ren:over",
        "str:1k",
        "str:1m",
        "str:64k",
        "str:empty",
        "str:over",
        "str:small",
        "ttl:dropped",
        "ttl:ex",
        "ttl:expire",
        "ttl:persisted",
        "ttl:px",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain((0..200).map(|i| format!("many:{i}")))
    .chain(extra_db0.iter().map(|s| s.to_string()))
    .collect();
    db0.sort();
    let got0 = keys_of(c, 0);
    assert_eq!(got0, db0, "keys of db 0 after restart");
    assert_eq!(keys_of(c, 1), vec!["d1:a", "mv:k"], "keys of db 1");
    check(c, "GET d1:a", bulk("one"));
    check(c, "GET mv:k", bulk("moving"));
    assert_eq!(keys_of(c, 2), vec!["d2:after"], "db 2 (FLUSHDB then SET)");
    assert_eq!(keys_of(c, 5), Vec::<String>::new(), "db 5 after FLUSHALL");
    check(c, "SELECT 0", ok());

    check(c, "GET str:empty", bulk(""));
    check(c, "STRLEN str:empty", int(0));
    check(c, "GET str:small", bulk("hello"));
    assert_eq!(q(c, "GET str:1k"), bulk(big(1000, 1)), "str:1k");
    assert_eq!(q(c, "GET str:64k").as_bytes(), big(65536, 2), "str:64k");
    let v = q(c, "GET str:1m").as_bytes();
    assert!(v == big(MIB, 3), "str:1m differs (len {})", v.len());
    assert_eq!(
        qa(c, &[b"GET".as_slice(), b"bin:\x00\xff\r\nkey"]),
        bulk(b"\x00\r\n\xfe")
    );
    check(c, "GET str:over", bulk("second"));
    check(c, "GET ctr", bulk("41"));
    check(c, "INCR ctr", int(42));
    check(c, "DECR ctr", int(41));
    check(c, "GET app", bulk("abcdef"));
    check(c, "GET ren:dst", bulk("moved"));
    check(c, "GET ren:over", bulk("from-old"));
    check(c, "MGET m:a m:b", bulks(&["1", "2"]));
    let keys: Vec<String> = (0..200).map(|i| format!("many:{i}")).collect();
    for (i, v) in get_many(c, &keys).into_iter().enumerate() {
        assert_eq!(v, Some(format!("value-{i}").into_bytes()), "many:{i}");
    }

    // TTLs: kept (approximately; the test runs for seconds, not minutes).
    assert_ttl_between(c, "ttl:ex", 900, 1000);
    assert_ttl_between(c, "ren:dst", 900, 1000);
    assert_ttl_between(c, "ttl:expire", 1900, 2000);
    let p = q(c, "PTTL ttl:px").as_int();
    assert!((400_000..=500_000).contains(&p), "PTTL ttl:px = {p}");
    check(c, "TTL ttl:persisted", int(-1));
    check(c, "TTL ttl:dropped", int(-1));
    check(c, "TTL str:small", int(-1));
    check(c, "GET ttl:dropped", bulk("w"));
}

#[derive(Clone, Copy, Debug)]
enum StopHow {
    Term,
    Kill,
    /// SIGKILL after waiting longer than the fsync interval (200 ms) plus a margin.
    KillAfterWindow,
}

fn restart_round_trip(args: &[&str], how: StopHow) {
    let dir = TestDir::new("persist-rt");
    let mut node = Node::start_in(dir.path(), args);
    let mut c = node.client();
    populate_mix(&mut c);
    verify_mix(&mut c, &[]);
    drop(c);
    match how {
        StopHow::Term => stop(&mut node),
        StopHow::Kill => {
            node.kill9();
        }
        StopHow::KillAfterWindow => {
            // The stated loss window of `periodic` is the fsync interval (200 ms here).
            thread::sleep(Duration::from_millis(1200));
            node.kill9();
        }
    }

    let mut node = Node::start_in(dir.path(), args);
    let mut c = node.client();
    verify_mix(&mut c, &[]);
    // Writes after a replay are logged after the replayed data and survive the next restart.
    check(&mut c, "SET after:restart yes", ok());
    check(&mut c, "APPEND app ghi", int(9));
    check(&mut c, "DEL str:over", int(1));
    check(&mut c, "SET str:over second", ok());
    drop(c);
    match how {
        StopHow::Term => stop(&mut node),
        StopHow::Kill => {
            node.kill9();
        }
        StopHow::KillAfterWindow => {
            thread::sleep(Duration::from_millis(1200));
            node.kill9();
        }
    }
    let mut node = Node::start_in(dir.path(), args);
    let mut c = node.client();
    check(&mut c, "GET app", bulk("abcdefghi"));
    check(&mut c, "SET app abcdef", ok());
    verify_mix(&mut c, &["after:restart"]);
    check(&mut c, "GET after:restart", bulk("yes"));
    drop(c);
    stop(&mut node);
}

#[test]
fn swapdb_survives_restarts() {
    if corekv_only() {
        return;
    }
    let dir = TestDir::new("swapdb");
    let args = ["--durability", "always"];
    let mut node = Node::start_in(dir.path(), &args);
    let mut c = node.client();
    check(&mut c, "SELECT 3", ok());
    check(&mut c, "SET d3:k three", ok());
    check(&mut c, "SET d3:ttl t EX 1000", ok());
    check(&mut c, "SELECT 4", ok());
    check(&mut c, "SET d4:k four", ok());
    check(&mut c, "SWAPDB 3 4", ok());
    // Writes after the swap land in the swapped databases.
    check(&mut c, "SET d4:after x", ok());
    drop(c);
    node.kill9();

    let mut node = Node::start_in(dir.path(), &args);
    let mut c = node.client();
    assert_eq!(keys_of(&mut c, 3), vec!["d4:k"], "db 3 after SWAPDB 3 4");
    check(&mut c, "GET d4:k", bulk("four"));
    assert_eq!(
        keys_of(&mut c, 4),
        vec!["d3:k", "d3:ttl", "d4:after"],
        "db 4 after SWAPDB 3 4"
    );
    check(&mut c, "GET d3:k", bulk("three"));
    assert_ttl_between(&mut c, "d3:ttl", 900, 1000);
    check(&mut c, "SWAPDB 4 0", ok());
    check(&mut c, "SWAPDB 0 4", ok());
    check(&mut c, "SWAPDB 3 0", ok());
    drop(c);
    stop(&mut node);

    let mut node = Node::start_in(dir.path(), &args);
    let mut c = node.client();
    assert_eq!(keys_of(&mut c, 0), vec!["d4:k"], "db 0 after SWAPDB 3 0");
    assert_eq!(keys_of(&mut c, 3), Vec::<String>::new(), "db 3 after SWAPDB 3 0");
    assert_eq!(keys_of(&mut c, 4), vec!["d3:k", "d3:ttl", "d4:after"], "db 4");
    drop(c);
    stop(&mut node);
}

#[test]
fn always_mode_keeps_data_across_sigterm() {
    if corekv_only() {
        return;
    }
    restart_round_trip(&["--durability", "always"], StopHow::Term);
}

#[test]
fn always_mode_keeps_every_acknowledged_write_across_sigkill() {
    if corekv_only() {
        return;
    }
    restart_round_trip(&["--durability", "always"], StopHow::Kill);
}

#[test]
fn periodic_mode_keeps_data_across_sigterm() {
    if corekv_only() {
        return;
    }
    // periodic is the default.
    restart_round_trip(&[], StopHow::Term);
}

#[test]
fn periodic_mode_keeps_writes_older_than_the_fsync_interval_across_sigkill() {
    if corekv_only() {
        return;
    }
    restart_round_trip(
        &["--durability", "periodic", "--fsync-interval", "200ms"],
        StopHow::KillAfterWindow,
    );
}

// ------------------------------------------------------------------------------------------------
// 2./3. Crash tests: concurrent writers, SIGKILL at a random moment, restart, check.

const CRASH_THREADS: usize = 4;

fn fnv1a(b: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &x in b {
        h ^= x as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// The one value ever written for `key`: the key itself, its padding length, then padding
/// whose length (mostly 0..1500 bytes, sometimes 16..64 KiB) and bytes depend on key and seed.
fn crash_value(seed: u64, key: &str) -> Vec<u8> {
    let mut s = fnv1a(key.as_bytes()) ^ seed;
    let r = splitmix(&mut s);
    let pad = if r.is_multiple_of(50) {
        16384 + (r >> 8) as usize % 49152
    } else {
        (r >> 8) as usize % 1500
    };
    let mut v = format!("{key}|{pad}|").into_bytes();
    v.extend(pattern(pad, splitmix(&mut s)));
    v
}

fn crash_key(round: usize, thread: usize, n: usize) -> String {
    format!("crash:{round}:{thread}:{n}")
}

/// What one writer did in one round.
#[derive(Clone, Debug, Default)]
struct WriterLog {
    /// Keys 0..acked were acknowledged with OK, in order.
    acked: usize,
    /// Keys 0..attempted were sent (at most one more than acked: the one in flight at the kill).
    attempted: usize,
    /// When each acknowledgement arrived.
    ack_times: Vec<Instant>,
}

/// Runs `CRASH_THREADS` writers against `node` until it dies; `kill_after` later, SIGKILLs it.
/// Returns the writers' logs and the moment the signal was sent.
fn crash_round(node: &mut Node, seed: u64, round: usize, kill_after: Duration) -> (Vec<WriterLog>, Instant) {
    let mut handles = Vec::new();
    let start = Instant::now();
    for t in 0..CRASH_THREADS {
        let mut con = node.client();
        handles.push(thread::spawn(move || {
            let mut log = WriterLog::default();
            loop {
                let key = crash_key(round, t, log.attempted);
                let value = crash_value(seed, &key);
                log.attempted += 1;
                match try_r(redis::cmd("SET").arg(&key).arg(&value).query::<redis::Value>(&mut con)) {
                    Ok(r) if r == ok() => {
                        log.acked += 1;
                        log.ack_times.push(Instant::now());
                    }
                    Ok(other) => panic!("SET {key} replied {other:?}"),
                    Err(_) => return log, // the node was killed
                }
            }
        }));
    }
    // The crash point is the point of this test (not a readiness wait).
    thread::sleep(kill_after.saturating_sub(start.elapsed()));
    let killed_at = Instant::now();
    node.kill9();
    let logs: Vec<WriterLog> = handles
        .into_iter()
        .map(|h| h.join().expect("writer thread panicked"))
        .collect();
    (logs, killed_at)
}

/// Checks a restarted node against the history of all rounds. `must_have(round, thread, n)` says
/// why an acknowledged key must be present (`None`: it may be lost). Returns the acknowledged keys that are missing, as
/// (round, thread, n).
fn verify_crash_history(
    node: &Node,
    seed: u64,
    history: &[Vec<WriterLog>],
    must_have: &dyn Fn(usize, usize, usize) -> Option<String>,
) -> Vec<(usize, usize, usize)> {
    let mut c = node.client();
    let present = scan_all(&mut c);
    let dbsize = q(&mut c, "DBSIZE").as_int() as usize;
    assert_eq!(
        dbsize,
        present.len(),
        "DBSIZE differs from the number of keys SCAN returned"
    );

    // Every key present was written (attempted) by some writer, and holds the value written.
    let mut present_list: Vec<String> = present.iter().cloned().collect();
    present_list.sort();
    for key in &present_list {
        let parts: Vec<&str> = key.split(':').collect();
        let parsed = (parts.len() == 4 && parts[0] == "crash")
            .then(|| {
                Some((
                    parts[1].parse::<usize>().ok()?,
                    parts[2].parse::<usize>().ok()?,
                    parts[3].parse::<usize>().ok()?,
                ))
            })
            .flatten();
        let Some((r, t, n)) = parsed else {
            panic!("key {key:?} present after restart was never written")
        };
        assert!(
            r < history.len() && t < CRASH_THREADS && n < history[r][t].attempted,
            "key {key:?} present after restart was never written"
        );
    }
    let values = get_many(&mut c, &present_list);
    for (key, v) in present_list.iter().zip(values) {
        let want = crash_value(seed, key);
        match v {
            Some(v) if v == want => {}
            Some(v) => panic!(
                "key {key:?} holds a value never written for it: {} bytes starting {:?}, expected {} bytes",
                v.len(),
                show(&v[..v.len().min(60)]),
                want.len()
            ),
            None => panic!("key {key:?} listed by SCAN but GET returns nil"),
        }
    }

    // Every acknowledged key that must be there is there.
    let mut missing = Vec::new();
    let mut violations = Vec::new();
    for (r, logs) in history.iter().enumerate() {
        for (t, log) in logs.iter().enumerate() {
            for n in 0..log.acked {
                let key = crash_key(r, t, n);
                if !present.contains(&key) {
                    if let Some(why) = must_have(r, t, n) {
                        violations.push(format!("{key} ({why})"));
                    }
                    missing.push((r, t, n));
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "{} acknowledged keys are missing after restart ({} of {} acknowledged keys missing in all), e.g.:\n{}",
        violations.len(),
        missing.len(),
        history.iter().flatten().map(|l| l.acked).sum::<usize>(),
        violations[..violations.len().min(10)].join("\n")
    );
    missing
}

#[test]
fn crash_always_mode_loses_no_acknowledged_write() {
    if corekv_only() {
        return;
    }
    const ROUNDS: usize = 20;
    let seed = test_seed("crash_always_mode_loses_no_acknowledged_write");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = TestDir::new("crash-always");
    let args = ["--durability", "always", "--shards", "2", "--segment-size", "1mb"];
    let mut history: Vec<Vec<WriterLog>> = Vec::new();
    let t0 = Instant::now();
    for round in 0..ROUNDS {
        let mut node = Node::start_in(dir.path(), &args);
        verify_crash_history(&node, seed, &history, &|_, _, _| Some("always mode".into()));
        let delay = Duration::from_millis(rng.gen_range(20..=300));
        let (logs, _) = crash_round(&mut node, seed, round, delay);
        let acked: usize = logs.iter().map(|l| l.acked).sum();
        eprintln!(
            "round {round}: killed after {delay:?}, {acked} acknowledged SETs, {:.1} s so far",
            t0.elapsed().as_secs_f64()
        );
        history.push(logs);
    }
    let mut node = Node::start_in(dir.path(), &args);
    verify_crash_history(&node, seed, &history, &|_, _, _| Some("always mode".into()));
    let total: usize = history.iter().flatten().map(|l| l.acked).sum();
    eprintln!(
        "{ROUNDS} crashes, {total} acknowledged keys all present, {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    assert!(total > 0, "no write was acknowledged in {ROUNDS} rounds");
    stop(&mut node);
}

#[test]
fn crash_periodic_mode_loses_only_writes_within_the_fsync_window() {
    if corekv_only() {
        return;
    }
    const ROUNDS: usize = 3;
    // fsync interval (200 ms) plus a generous margin: a process crash in periodic mode loses at
    // most what was not yet handed to the kernel, the stated window is the fsync interval. (Large
    // segments: a roll-over waits for the previous segment's sync, which the README states.)
    const WINDOW: Duration = Duration::from_millis(1200);
    let seed = test_seed("crash_periodic_mode_loses_only_writes_within_the_fsync_window");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = TestDir::new("crash-periodic");
    let args = [
        "--durability",
        "periodic",
        "--fsync-interval",
        "200ms",
        "--shards",
        "2",
        "--segment-size",
        "32mb",
    ];
    let mut history: Vec<Vec<WriterLog>> = Vec::new();
    let mut kill_times: Vec<Instant> = Vec::new();
    for round in 0..=ROUNDS {
        let mut node = Node::start_in(dir.path(), &args);
        let must_have = |r: usize, t: usize, n: usize| {
            let age = kill_times[r].saturating_duration_since(history[r][t].ack_times[n]);
            (age > WINDOW).then(|| format!("acknowledged {age:?} before the kill"))
        };
        let missing = verify_crash_history(&node, seed, &history, &must_have);
        if round > 0 {
            let r = round - 1;
            let acked: usize = history[r].iter().map(|l| l.acked).sum();
            let lost: Vec<Duration> = missing
                .iter()
                .filter(|m| m.0 == r)
                .map(|&(_, t, n)| kill_times[r].saturating_duration_since(history[r][t].ack_times[n]))
                .collect();
            eprintln!(
                "round {r}: {acked} acknowledged SETs, {} lost, the oldest acknowledged {:?} before the kill",
                lost.len(),
                lost.iter().max().copied().unwrap_or_default()
            );
        }
        if round == ROUNDS {
            stop(&mut node);
            break;
        }
        // Longer than the window, so that the older writes of the round must survive.
        let delay = Duration::from_millis(rng.gen_range(2000..=3000));
        let (logs, killed_at) = crash_round(&mut node, seed, round, delay);
        history.push(logs);
        kill_times.push(killed_at);
    }
}

// ------------------------------------------------------------------------------------------------
// 4. Restart with a different shard count.

fn reshard_items(from: usize, to: usize) -> Vec<(String, Vec<u8>, u64)> {
    (from..to)
        .map(|i| {
            let ttl = if i % 5 == 0 { 10_000 + i as u64 } else { 0 };
            let mut v = format!("val:{i}:").into_bytes();
            v.extend(pattern(i % 300, i as u64));
            (format!("rk:{i}"), v, ttl)
        })
        .collect()
}

fn verify_items(c: &mut redis::Connection, items: &[(String, Vec<u8>, u64)], what: &str) {
    let keys: Vec<String> = items.iter().map(|(k, _, _)| k.clone()).collect();
    let values = get_many(c, &keys);
    let ttls = pttl_many(c, &keys);
    let mut missing = Vec::new();
    for (((k, v, ttl), got), pttl) in items.iter().zip(values).zip(ttls) {
        match got {
            None => missing.push(k.clone()),
            Some(g) => {
                assert!(&g == v, "{what}: {k} has a different value ({} bytes)", g.len());
                if *ttl == 0 {
                    assert_eq!(pttl, -1, "{what}: {k} gained a TTL");
                } else {
                    let max = *ttl as i64 * 1000;
                    assert!(
                        (max - 100_000..=max).contains(&pttl),
                        "{what}: {k} PTTL {pttl}, set with EX {ttl}"
                    );
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "{what}: {} of {} keys missing, e.g. {:?}",
        missing.len(),
        items.len(),
        &missing[..missing.len().min(10)]
    );
}

#[test]
fn restart_with_another_shard_count_redistributes_keys() {
    if corekv_only() {
        return;
    }
    let dir = TestDir::new("reshard");
    let items = reshard_items(0, 5000);
    let db3: Vec<(String, Vec<u8>, u64)> = (0..300)
        .map(|i| {
            (
                format!("other:{i}"),
                format!("db3-{i}").into_bytes(),
                if i % 3 == 0 { 5000 } else { 0 },
            )
        })
        .collect();

    let mut node = Node::start_in(dir.path(), &["--shards", "2"]);
    let mut c = node.client();
    set_many(&mut c, &items);
    check(&mut c, "SELECT 3", ok());
    set_many(&mut c, &db3);
    drop(c);
    stop(&mut node);
    assert!(dir.path().join("LAYOUT").is_file(), "no LAYOUT file in the data dir");

    let mut node = Node::start_in(dir.path(), &["--shards", "3"]);
    assert!(node.ready_line().contains("3 shards"), "{}", node.ready_line());
    let mut c = node.client();
    check(&mut c, "DBSIZE", int(5000));
    verify_items(&mut c, &items, "2 → 3 shards");
    check(&mut c, "SELECT 3", ok());
    check(&mut c, "DBSIZE", int(300));
    verify_items(&mut c, &db3, "2 → 3 shards, db 3");
    check(&mut c, "SELECT 0", ok());
    // Writes under the new layout, including overwrites and deletes of redistributed keys.
    let more = reshard_items(5000, 5500);
    set_many(&mut c, &more);
    check(&mut c, "DEL rk:1 rk:2 rk:3", int(3));
    drop(c);
    stop(&mut node);

    let mut node = Node::start_in(dir.path(), &["--shards", "1"]);
    let mut c = node.client();
    check(&mut c, "DBSIZE", int(5497));
    let expect: Vec<_> = items
        .iter()
        .chain(more.iter())
        .filter(|(k, _, _)| !["rk:1", "rk:2", "rk:3"].contains(&k.as_str()))
        .cloned()
        .collect();
    verify_items(&mut c, &expect, "3 → 1 shard");
    check(&mut c, "EXISTS rk:1 rk:2 rk:3", int(0));
    check(&mut c, "SELECT 3", ok());
    verify_items(&mut c, &db3, "3 → 1 shard, db 3");
    drop(c);
    stop(&mut node);

    // And back to 2, once more.
    let mut node = Node::start_in(dir.path(), &["--shards", "2"]);
    let mut c = node.client();
    check(&mut c, "DBSIZE", int(5497));
    verify_items(&mut c, &expect, "1 → 2 shards");
    drop(c);
    stop(&mut node);
}

// ------------------------------------------------------------------------------------------------
// 5./6. Torn tails and corruption.

fn write_at(path: &Path, offset: usize, bytes: &[u8]) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(offset as u64)).unwrap();
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
}

#[test]
fn torn_tail_is_truncated_and_the_node_starts() {
    if corekv_only() {
        return;
    }
    let dir = TestDir::new("torn");
    let args = ["--durability", "always", "--shards", "2"];
    let items: Vec<(String, Vec<u8>, u64)> = (0..300)
        .map(|i| (format!("torn:{i}"), pattern(i * 7 % 2000, i as u64), 0))
        .collect();
    let mut node = Node::start_in(dir.path(), &args);
    let mut c = node.client();
    set_many(&mut c, &items);
    drop(c);
    stop(&mut node);

    // Garbage right after the last record of the newest segment of the first shard.
    let by_shard = segments_by_shard(dir.path());
    let (shard, segs) = by_shard.iter().next().expect("no segment file after a graceful stop");
    let newest = segs.last().unwrap();
    let (records, end) = read_segment(newest);
    eprintln!("{}: {} records, data ends at {end}", newest.display(), records.len());
    let mut garbage = pattern(100, 99);
    garbage[0] = 0xA5; // never a zero length field
    garbage[1] = 0x5A;
    write_at(newest, end, &garbage);

    let mut node = Node::start_in(dir.path(), &args);
    let mut c = node.client();
    check(&mut c, "DBSIZE", int(300));
    verify_items(&mut c, &items, "after a torn tail");
    let info = pinfo(&mut c);
    let truncated = info.int("recovery_truncated_bytes");
    assert!(truncated > 0, "recovery_truncated_bytes = {truncated}:\n{}", info.text);
    let stderr = node.stderr();
    assert!(
        stderr.to_lowercase().contains("truncat"),
        "stderr does not mention the truncation of {}:\n{stderr}",
        file_name(shard)
    );
    // The truncation holds: writes after it survive, and the next start finds a clean log.
    let more: Vec<(String, Vec<u8>, u64)> = (0..50)
        .map(|i| (format!("after-torn:{i}"), format!("v{i}").into_bytes(), 0))
        .collect();
    set_many(&mut c, &more);
    drop(c);
    stop(&mut node);

    let mut node = Node::start_in(dir.path(), &args);
    let mut c = node.client();
    check(&mut c, "DBSIZE", int(350));
    verify_items(&mut c, &items, "restart after the truncation");
    verify_items(&mut c, &more, "restart after the truncation");
    let info = pinfo(&mut c);
    assert_eq!(
        info.int("recovery_truncated_bytes"),
        0,
        "the torn tail came back:\n{}",
        info.text
    );
    drop(c);
    stop(&mut node);
}

#[test]
fn corruption_before_valid_records_refuses_to_start_unless_repair() {
    if corekv_only() {
        return;
    }
    let dir = TestDir::new("corrupt");
    let args = ["--durability", "always", "--shards", "2"];
    let items: Vec<(String, Vec<u8>, u64)> = (0..200)
        .map(|i| (format!("cor:{i}"), format!("value:{i}").into_bytes(), 0))
        .collect();
    let mut node = Node::start_in(dir.path(), &args);
    let mut c = node.client();
    set_many(&mut c, &items);
    drop(c);
    // SIGKILL: everything acknowledged is in the log, and no shutdown work rewrites it.
    node.kill9();

    // A segment whose first record is a SET with a key and has later records. (The newest segment
    // of a shard may be the next one, created ahead and still without a header.)
    let by_shard = segments_by_shard(dir.path());
    let mut target: Option<(PathBuf, usize, LogRecord)> = None;
    'find: for segs in by_shard.values() {
        for (i, seg) in segs.iter().enumerate() {
            let Some((records, _)) = try_read_segment(seg) else {
                continue;
            };
            if records.len() >= 2 && records[0].typ == TYPE_SET && !records[0].key.is_empty() {
                target = Some((seg.clone(), i, records[0].clone()));
                break 'find;
            }
        }
    }
    let (seg, seg_index, first) = target.unwrap_or_else(|| {
        panic!(
            "no segment with at least 2 records (a SET first) after 200 SETs:\n{}",
            listing(dir.path())
        )
    });
    let shard = seg.parent().unwrap().to_path_buf();
    // The keys logged from the corrupt record on (in this shard) are dropped by --repair; all
    // others are kept.
    let mut dropped: HashSet<Vec<u8>> = HashSet::new();
    for later in &by_shard[&shard][seg_index..] {
        for r in try_read_segment(later).map(|(records, _)| records).unwrap_or_default() {
            if r.typ == TYPE_SET {
                dropped.insert(r.key);
            }
        }
    }
    let key_byte = first.offset + RECORD_HEADER_LEN;
    let original = std::fs::read(&seg).unwrap()[key_byte];
    write_at(&seg, key_byte, &[original ^ 0x20]);
    eprintln!(
        "flipped byte {key_byte} of {} (key of record seq {} at offset {}); {} keys to be dropped by repair",
        seg.display(),
        first.seq,
        first.offset,
        dropped.len()
    );

    let f = match Node::try_start_in(dir.path(), &args) {
        Ok(_) => panic!("the node started on a log with a corrupt record followed by valid ones"),
        Err(f) => f,
    };
    let status = f.status.expect("the node neither got ready nor exited");
    assert!(!status.success(), "exit status {status:?} should be non-zero");
    let name = file_name(&seg);
    assert!(
        f.stderr.contains(&name),
        "the message does not name {name}:\n{}",
        f.stderr
    );
    assert!(
        f.stderr.contains(&first.offset.to_string()),
        "the message does not name the offset {} of the corrupt record:\n{}",
        first.offset,
        f.stderr
    );
    // Refusing changed nothing: it still refuses.
    assert!(
        Node::try_start_in(dir.path(), &args).is_err(),
        "a second start succeeded without --repair"
    );

    let mut repair_args = args.to_vec();
    repair_args.push("--repair");
    let mut node = Node::start_in(dir.path(), &repair_args);
    let mut c = node.client();
    let kept: Vec<_> = items
        .iter()
        .filter(|(k, _, _)| !dropped.contains(k.as_bytes()))
        .cloned()
        .collect();
    assert!(!kept.is_empty(), "every key was in the corrupt shard's log");
    check(&mut c, "DBSIZE", int(kept.len() as i64));
    verify_items(&mut c, &kept, "after --repair");
    check(&mut c, "SET after:repair yes", ok());
    drop(c);
    stop(&mut node);

    // The repair is permanent: a normal start works and keeps the same data.
    let mut node = Node::start_in(dir.path(), &args);
    let mut c = node.client();
    check(&mut c, "DBSIZE", int(kept.len() as i64 + 1));
    verify_items(&mut c, &kept, "normal start after --repair");
    check(&mut c, "GET after:repair", bulk("yes"));
    drop(c);
    stop(&mut node);
}

// ------------------------------------------------------------------------------------------------
// 7. Data-dir lock.

#[test]
fn second_node_on_the_same_data_dir_is_refused() {
    if corekv_only() {
        return;
    }
    let dir = TestDir::new("lock");
    let mut first = Node::start_in(dir.path(), &[]);
    let mut c = first.client();
    check(&mut c, "SET k v", ok());
    let f = match Node::try_start_in(dir.path(), &[]) {
        Ok(_) => panic!("a second node started on a data dir in use"),
        Err(f) => f,
    };
    let status = f.status.expect("the second node neither got ready nor exited");
    assert!(!status.success(), "exit status {status:?} should be non-zero");
    assert!(
        f.stderr.contains("in use"),
        "stderr does not say `in use`:\n{}",
        f.stderr
    );
    assert!(dir.path().join("LOCK").exists(), "no LOCK file in the data dir");
    // The first node is unaffected.
    first.assert_alive();
    check(&mut c, "GET k", bulk("v"));
    drop(c);
    stop(&mut first);
    // The lock goes with the process.
    let mut again = Node::start_in(dir.path(), &[]);
    let mut c = again.client();
    check(&mut c, "GET k", bulk("v"));
    drop(c);
    stop(&mut again);
    // Even after a SIGKILL.
    let mut killed = Node::start_in(dir.path(), &[]);
    killed.kill9();
    let mut last = Node::start_in(dir.path(), &[]);
    stop(&mut last);
}

// ------------------------------------------------------------------------------------------------
// 8. Expired keys stay expired.

#[test]
fn expired_keys_are_not_resurrected_by_a_restart() {
    if corekv_only() {
        return;
    }
    let dir = TestDir::new("expired");
    let args = ["--durability", "always"];
    let mut node = Node::start_in(dir.path(), &args);
    let mut c = node.client();
    let set_at = Instant::now();
    check(&mut c, "SET short v PX 300", ok());
    check(&mut c, "SET later v", ok());
    check(&mut c, "PEXPIRE later 300", int(1));
    check(&mut c, "SET at v", ok());
    check(&mut c, &format!("PEXPIREAT at {}", ms_since_epoch() + 300), int(1));
    check(&mut c, "SET long v EX 1000", ok());
    check(&mut c, "SET plain v", ok());
    drop(c);
    node.kill9();
    // Let the short TTLs pass (the point of the test, not a readiness wait).
    thread::sleep(Duration::from_millis(500).saturating_sub(set_at.elapsed()));

    let mut node = Node::start_in(dir.path(), &args);
    let mut c = node.client();
    check(&mut c, "GET short", nil());
    check(&mut c, "GET later", nil());
    check(&mut c, "GET at", nil());
    check(&mut c, "EXISTS short later at", int(0));
    check(&mut c, "GET long", bulk("v"));
    assert_ttl_between(&mut c, "long", 900, 1000);
    check(&mut c, "GET plain", bulk("v"));
    check(&mut c, "DBSIZE", int(2));
    assert_eq!(q(&mut c, "KEYS *").sorted_strings(), vec!["long", "plain"]);
    // Same after a graceful stop.
    let set_at = Instant::now();
    check(&mut c, "SET short2 v PX 300", ok());
    drop(c);
    stop(&mut node);
    thread::sleep(Duration::from_millis(500).saturating_sub(set_at.elapsed()));
    let mut node = Node::start_in(dir.path(), &args);
    let mut c = node.client();
    check(&mut c, "EXISTS short short2 later at", int(0));
    check(&mut c, "DBSIZE", int(2));
    drop(c);
    stop(&mut node);
}

// ------------------------------------------------------------------------------------------------
// 9. durability none.

#[test]
fn durability_none_keeps_nothing_and_refuses_a_dir_with_a_log() {
    if corekv_only() {
        return;
    }
    let dir = TestDir::new("none");
    let mut node = Node::start_in(dir.path(), &["--durability", "none"]);
    let mut c = node.client();
    let info = pinfo(&mut c);
    assert_eq!(info.field("durability").as_deref(), Some("none"), "{}", info.text);
    assert_eq!(info.field("aof_enabled").as_deref(), Some("0"), "{}", info.text);
    check(&mut c, "SET k v", ok());
    check(&mut c, "SELECT 1", ok());
    check(&mut c, "SET k1 v", ok());
    drop(c);
    stop(&mut node);
    assert!(
        segment_files(dir.path()).is_empty(),
        "durability none wrote log segments:\n{}",
        listing(dir.path())
    );
    let mut node = Node::start_in(dir.path(), &["--durability", "none"]);
    let mut c = node.client();
    check(&mut c, "GET k", nil());
    check(&mut c, "DBSIZE", int(0));
    check(&mut c, "SELECT 1", ok());
    check(&mut c, "DBSIZE", int(0));
    drop(c);
    stop(&mut node);

    // A data dir that holds a log is not silently ignored (or thrown away) by `none`.
    let dir2 = TestDir::new("none-log");
    let args = ["--durability", "always"];
    let mut node = Node::start_in(dir2.path(), &args);
    let mut c = node.client();
    check(&mut c, "SET kept v", ok());
    drop(c);
    node.kill9();
    assert!(
        !segment_files(dir2.path()).is_empty(),
        "no log segment after an acknowledged write"
    );
    let f = match Node::try_start_in(dir2.path(), &["--durability", "none"]) {
        Ok(_) => panic!("durability none started on a data dir that holds a log"),
        Err(f) => f,
    };
    let status = f.status.expect("neither ready nor exited");
    assert!(!status.success(), "exit status {status:?} should be non-zero");
    assert!(
        f.stderr.contains("durability"),
        "the message does not mention durability:\n{}",
        f.stderr
    );
    let mut node = Node::start_in(dir2.path(), &args);
    let mut c = node.client();
    check(&mut c, "GET kept", bulk("v"));
    drop(c);
    stop(&mut node);
}

// ------------------------------------------------------------------------------------------------
// 10. Compaction, SAVE, BGSAVE, LASTSAVE.

fn compaction_value(round: usize, i: usize) -> Vec<u8> {
    let mut v = format!("r{round}:k{i}:").into_bytes();
    v.extend(pattern(10 * 1024 - v.len(), (round * 1000 + i) as u64));
    v
}

/// Overwrites keys `cmp:0..100` with 10 KiB values `rounds` times; returns the last round's items.
fn overwrite_rounds(c: &mut redis::Connection, rounds: usize) -> Vec<(String, Vec<u8>, u64)> {
    let mut last = Vec::new();
    for round in 0..rounds {
        last = (0..100)
            .map(|i| (format!("cmp:{i}"), compaction_value(round, i), 0))
            .collect();
        set_many(c, &last);
    }
    last
}

#[test]
fn bgrewriteaof_compacts_the_log_and_disk_usage_follows_live_data() {
    if corekv_only() {
        return;
    }
    let dir = TestDir::new("compact");
    let args = ["--segment-size", "1mb", "--shards", "2"];
    let mut node = Node::start_in(dir.path(), &args);
    let mut c = node.client();
    let last = overwrite_rounds(&mut c, 25); // 25 MiB of log for 1 MiB of live data
    wait_for(Duration::from_secs(10), || {
        (pinfo(&mut c).int("log_bytes_written") >= 20 * MIB as i64).then_some(())
    })
    .unwrap_or_else(|| panic!("log_bytes_written after 25 MiB of SETs:\n{}", pinfo(&mut c).text));
    // Without a compaction, the log holds all of it.
    let before = wait_for(Duration::from_secs(10), || {
        let s = shards_size(dir.path());
        (s >= 20 * MIB as u64).then_some(s)
    })
    .unwrap_or_else(|| panic!("the log is smaller than the data written:\n{}", listing(dir.path())));

    let compactions = pinfo(&mut c).int("log_compactions");
    check(
        &mut c,
        "BGREWRITEAOF",
        simple("Background append only file rewriting started"),
    );
    let info = wait_for(Duration::from_secs(60), || {
        let info = pinfo(&mut c);
        (info.field("aof_rewrite_in_progress").as_deref() == Some("0") && info.int("log_compactions") > compactions)
            .then_some(info)
    })
    .unwrap_or_else(|| panic!("BGREWRITEAOF did not complete in 60 s:\n{}", pinfo(&mut c).text));
    assert_eq!(
        info.field("aof_last_bgrewrite_status").as_deref(),
        Some("ok"),
        "{}",
        info.text
    );
    // The covered segments are deleted right after the compaction (INFO may report it done a
    // moment before the last deletion).
    let after = wait_for(Duration::from_secs(10), || {
        let s = shards_size(dir.path());
        (s < 8 * MIB as u64).then_some(s)
    })
    .unwrap_or_else(|| {
        panic!(
            "{} bytes on disk 10 s after the compaction, for ~1 MiB of live data:\n{}",
            shards_size(dir.path()),
            listing(dir.path())
        )
    });
    eprintln!("shard dirs: {before} bytes before BGREWRITEAOF, {after} after");
    assert!(
        !snapshot_files(dir.path()).is_empty(),
        "no snapshot file after BGREWRITEAOF"
    );
    verify_items(&mut c, &last, "after BGREWRITEAOF");
    // Writes after the compaction go on the log after the snapshot.
    check(&mut c, "SET cmp:after yes", ok());
    check(&mut c, "DEL cmp:0", int(1));
    drop(c);
    stop(&mut node);

    let mut node = Node::start_in(dir.path(), &args);
    let mut c = node.client();
    check(&mut c, "DBSIZE", int(100));
    verify_items(&mut c, &last[1..], "restart after BGREWRITEAOF");
    check(&mut c, "GET cmp:0", nil());
    check(&mut c, "GET cmp:after", bulk("yes"));
    drop(c);
    stop(&mut node);
}

#[test]
fn automatic_rewrite_bounds_the_log() {
    if corekv_only() {
        return;
    }
    let dir = TestDir::new("autorewrite");
    let args = [
        "--segment-size",
        "1mb",
        "--rewrite-min-size",
        "4mb",
        "--rewrite-percentage",
        "100",
    ];
    let mut node = Node::start_in(dir.path(), &args);
    let mut c = node.client();
    let last = overwrite_rounds(&mut c, 40); // 40 MiB of log, 1 MiB live
    let info = wait_for(Duration::from_secs(60), || {
        let info = pinfo(&mut c);
        (info.int("log_compactions") > 0 && info.field("aof_rewrite_in_progress").as_deref() == Some("0"))
            .then_some(info)
    })
    .unwrap_or_else(|| panic!("no automatic compaction after 40 MiB of log:\n{}", pinfo(&mut c).text));
    eprintln!("log_compactions: {}", info.int("log_compactions"));
    // The log since the last snapshot stays around the thresholds, far below what was written.
    let size = wait_for(Duration::from_secs(30), || {
        let s = shards_size(dir.path());
        (s < 20 * MIB as u64).then_some(s)
    })
    .unwrap_or_else(|| {
        panic!(
            "the shard dirs stay above 20 MiB with automatic rewrite on:\n{}",
            listing(dir.path())
        )
    });
    eprintln!("shard dirs: {size} bytes after 40 MiB written");
    verify_items(&mut c, &last, "after automatic compaction");
    drop(c);
    stop(&mut node);
    let mut node = Node::start_in(dir.path(), &args);
    let mut c = node.client();
    check(&mut c, "DBSIZE", int(100));
    verify_items(&mut c, &last, "restart after automatic compaction");
    drop(c);
    stop(&mut node);
}

#[test]
fn rewrite_percentage_zero_disables_automatic_rewrite() {
    if corekv_only() {
        return;
    }
    let node = Node::start(&[
        "--segment-size",
        "1mb",
        "--rewrite-min-size",
        "1mb",
        "--rewrite-percentage",
        "0",
    ]);
    let mut c = node.client();
    overwrite_rounds(&mut c, 10);
    let info = pinfo(&mut c);
    assert_eq!(info.int("log_compactions"), 0, "{}", info.text);
    // Explicit requests still work, and only they compact.
    check(
        &mut c,
        "BGREWRITEAOF",
        simple("Background append only file rewriting started"),
    );
    wait_for(Duration::from_secs(60), || {
        let info = pinfo(&mut c);
        (info.int("log_compactions") > 0 && info.field("aof_rewrite_in_progress").as_deref() == Some("0")).then_some(())
    })
    .unwrap_or_else(|| panic!("BGREWRITEAOF did not complete:\n{}", pinfo(&mut c).text));
    let compactions = pinfo(&mut c).int("log_compactions");
    overwrite_rounds(&mut c, 5);
    let info = pinfo(&mut c);
    assert_eq!(info.int("log_compactions"), compactions, "{}", info.text);
}

#[test]
fn save_bgsave_and_lastsave() {
    if corekv_only() {
        return;
    }
    let dir = TestDir::new("save");
    let started = now_secs();
    let mut node = Node::start_in(dir.path(), &[]);
    let mut c = node.client();
    // Before any save: the start time.
    let l0 = q(&mut c, "LASTSAVE").as_int();
    assert!(
        (started..=now_secs()).contains(&l0),
        "LASTSAVE {l0} before any save, node started at {started}"
    );
    let items: Vec<(String, Vec<u8>, u64)> = (0..500)
        .map(|i| {
            (
                format!("sv:{i}"),
                format!("v{i}").into_bytes(),
                if i % 4 == 0 { 3000 } else { 0 },
            )
        })
        .collect();
    set_many(&mut c, &items);
    let before = now_secs();
    check(&mut c, "SAVE", ok());
    let l1 = q(&mut c, "LASTSAVE").as_int();
    assert!(
        (before..=now_secs()).contains(&l1),
        "LASTSAVE {l1}, SAVE called at {before}"
    );
    let info = pinfo(&mut c);
    let rdb = info.int("rdb_last_save_time");
    assert!((l1 - rdb).abs() <= 1, "rdb_last_save_time {rdb} vs LASTSAVE {l1}");
    assert!(!snapshot_files(dir.path()).is_empty(), "no snapshot file after SAVE");
    check(&mut c, "SAVE extra", wrong_args("save"));

    check(&mut c, "SET sv:after-save x", ok());
    check(&mut c, "BGSAVE", simple("Background saving started"));
    check(&mut c, "SET sv:after-bgsave y", ok());
    drop(c);
    stop(&mut node);

    let mut node = Node::start_in(dir.path(), &[]);
    let mut c = node.client();
    check(&mut c, "DBSIZE", int(502));
    verify_items(&mut c, &items, "restart after SAVE");
    check(&mut c, "GET sv:after-save", bulk("x"));
    check(&mut c, "GET sv:after-bgsave", bulk("y"));
    drop(c);
    stop(&mut node);
}

// ------------------------------------------------------------------------------------------------
// 11. INFO persistence, flags.

const PERSISTENCE_FIELDS: &[&str] = &[
    "durability",
    "aof_enabled",
    "aof_rewrite_in_progress",
    "aof_last_bgrewrite_status",
    "aof_last_write_status",
    "rdb_last_save_time",
    "log_status",
    "log_bytes_written",
    "log_segments",
    "log_fsyncs",
    "log_last_error",
    "log_compactions",
    "recovery_records",
    "recovery_bytes",
    "recovery_truncated_bytes",
];

#[test]
fn info_persistence_fields() {
    if corekv_only() {
        return;
    }
    let dir = TestDir::new("info");
    let started = now_secs();
    let args = ["--durability", "always"];
    let mut node = Node::start_in(dir.path(), &args);
    let mut c = node.client();
    let all = Info::get(&mut c, "");
    assert!(
        all.sections().iter().any(|s| s == "Persistence"),
        "INFO has no # Persistence section: {:?}",
        all.sections()
    );
    let info = pinfo(&mut c);
    assert_eq!(info.sections(), vec!["Persistence"], "INFO persistence:\n{}", info.text);
    for f in PERSISTENCE_FIELDS {
        assert!(info.field(f).is_some(), "INFO persistence has no {f}:\n{}", info.text);
    }
    let field = |info: &Info, f: &str| info.field(f).unwrap();
    assert_eq!(field(&info, "durability"), "always");
    assert_eq!(field(&info, "aof_enabled"), "1");
    assert_eq!(field(&info, "aof_rewrite_in_progress"), "0");
    assert_eq!(field(&info, "aof_last_bgrewrite_status"), "ok");
    assert_eq!(field(&info, "aof_last_write_status"), "ok");
    assert_eq!(field(&info, "log_status"), "ok");
    assert_eq!(field(&info, "log_last_error"), "");
    let save_time = info.int("rdb_last_save_time");
    assert!(
        (started..=now_secs()).contains(&save_time),
        "rdb_last_save_time {save_time}"
    );
    assert_eq!(info.int("log_compactions"), 0);
    assert_eq!(info.int("recovery_records"), 0, "fresh data dir:\n{}", info.text);
    assert_eq!(info.int("recovery_truncated_bytes"), 0);

    let bytes0 = info.int("log_bytes_written");
    let fsyncs0 = info.int("log_fsyncs");
    let items: Vec<(String, Vec<u8>, u64)> = (0..100).map(|i| (format!("inf:{i}"), vec![b'x'; 100], 0)).collect();
    set_many(&mut c, &items);
    let info = pinfo(&mut c);
    let bytes1 = info.int("log_bytes_written");
    assert!(
        bytes1 >= bytes0 + 100 * (36 + 100),
        "log_bytes_written {bytes0} → {bytes1} after 100 SETs of 100-byte values"
    );
    assert!(
        info.int("log_fsyncs") > fsyncs0,
        "no fsync in always mode:\n{}",
        info.text
    );
    assert!(info.int("log_segments") >= 1, "{}", info.text);
    assert_eq!(info.field("log_status").as_deref(), Some("ok"), "{}", info.text);
    // Reads are not logged.
    check(&mut c, "GET inf:1", bulk(vec![b'x'; 100]));
    check(&mut c, "GET missing", nil());
    assert_eq!(
        pinfo(&mut c).int("log_bytes_written"),
        bytes1,
        "reads changed log_bytes_written"
    );
    drop(c);
    stop(&mut node);

    let mut node = Node::start_in(dir.path(), &args);
    let mut c = node.client();
    let info = pinfo(&mut c);
    assert!(
        info.int("recovery_records") >= 100,
        "recovery_records after replaying 100 SETs:\n{}",
        info.text
    );
    assert!(info.int("recovery_bytes") > 0, "{}", info.text);
    assert_eq!(info.int("recovery_truncated_bytes"), 0, "{}", info.text);
    drop(c);
    stop(&mut node);

    // The default is periodic.
    let node = Node::start(&[]);
    let mut c = node.client();
    let info = pinfo(&mut c);
    assert_eq!(info.field("durability").as_deref(), Some("periodic"), "{}", info.text);
    assert_eq!(info.field("aof_enabled").as_deref(), Some("1"), "{}", info.text);
    let b0 = info.int("log_bytes_written");
    check(&mut c, "SET k v", ok());
    let grew = wait_for(Duration::from_secs(10), || {
        (pinfo(&mut c).int("log_bytes_written") > b0).then_some(())
    });
    assert!(
        grew.is_some(),
        "log_bytes_written did not grow after a SET in periodic mode"
    );
}

#[test]
fn persistence_settings_from_the_config_file() {
    if corekv_only() {
        return;
    }
    let dir = TestDir::new("pcfg");
    let path = dir.path().join("node.toml");
    std::fs::write(
        &path,
        "durability = \"always\"\nfsync-interval = \"200ms\"\nsegment-size = \"1mb\"\n\
         rewrite-min-size = \"8mb\"\nrewrite-percentage = 50\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let mut node = Node::start(&["--config", path.to_str().unwrap(), "--data-dir", data.to_str().unwrap()]);
    let mut c = node.client();
    let info = pinfo(&mut c);
    assert_eq!(info.field("durability").as_deref(), Some("always"), "{}", info.text);
    check(&mut c, "SET k v", ok());
    drop(c);
    node.kill9();
    drop(node);
    // Flags override the file.
    let mut node = Node::start(&[
        "--config",
        path.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--durability",
        "periodic",
    ]);
    let mut c = node.client();
    let info = pinfo(&mut c);
    assert_eq!(info.field("durability").as_deref(), Some("periodic"), "{}", info.text);
    check(&mut c, "GET k", bulk("v"));
    drop(c);
    stop(&mut node);
}

#[test]
fn bad_persistence_flags_fail() {
    if corekv_only() {
        return;
    }
    for args in [
        vec!["--durability", "sometimes"],
        vec!["--fsync-interval", "soon"],
        vec!["--segment-size", "1kb"],
        vec!["--segment-size", "huge"],
        vec!["--rewrite-min-size", "x"],
        vec!["--rewrite-percentage", "-1"],
        vec!["--rewrite-percentage", "x"],
    ] {
        match Node::try_start(&args) {
            Ok(_) => panic!("started with {args:?}"),
            Err(f) => {
                let status = f.status.expect("neither ready nor exited");
                assert!(!status.success(), "{args:?} exited with {status:?}");
                assert!(!f.stderr.trim().is_empty(), "{args:?}: nothing on stderr");
            }
        }
    }
    // The accepted forms.
    for args in [
        vec!["--durability", "always", "--fsync-interval", "1s"],
        vec!["--durability", "periodic", "--fsync-interval", "200ms"],
        vec!["--durability", "none"],
        vec![
            "--segment-size",
            "64kb",
            "--rewrite-min-size",
            "64mb",
            "--rewrite-percentage",
            "100",
        ],
    ] {
        let mut node = Node::start(&args);
        let mut c = node.client();
        check(&mut c, "SET k v", ok());
        drop(c);
        stop(&mut node);
    }
}

/// Tiny segments: records roll over to new segments often; everything survives restarts.
#[test]
fn tiny_segments_roll_over_and_replay() {
    if corekv_only() {
        return;
    }
    let dir = TestDir::new("tiny");
    let args = [
        "--segment-size",
        "64kb",
        "--durability",
        "always",
        "--rewrite-percentage",
        "0",
    ];
    let mut node = Node::start_in(dir.path(), &args);
    let mut c = node.client();
    let items: Vec<(String, Vec<u8>, u64)> = (0..400)
        .map(|i| (format!("tiny:{i}"), pattern(500 + i * 37 % 3000, i as u64), 0))
        .collect();
    set_many(&mut c, &items);
    // A value larger than a segment.
    let huge = pattern(200 * 1024, 7);
    assert_eq!(qa(&mut c, &[b"SET".as_slice(), b"tiny:huge", &huge]), ok());
    let segs = pinfo(&mut c).int("log_segments");
    drop(c);
    node.kill9();
    let by_key: std::collections::HashMap<String, Vec<u8>> =
        items.iter().map(|(k, v, _)| (k.clone(), v.clone())).collect();
    let files = segment_files(dir.path());
    assert!(
        files.len() >= 10,
        "{} segment files for ~700 KiB in 64 KiB segments (INFO said {segs})",
        files.len()
    );
    // Segment numbering within each shard is consecutive, record sequences increase.
    for (shard, segs) in segments_by_shard(dir.path()) {
        let nums: Vec<u64> = segs
            .iter()
            .map(|p| {
                let n = file_name(p);
                n.trim_start_matches("segment-")
                    .trim_end_matches(".log")
                    .parse()
                    .unwrap()
            })
            .collect();
        for w in nums.windows(2) {
            assert_eq!(
                w[1],
                w[0] + 1,
                "segment numbers of {} are not consecutive: {nums:?}",
                shard.display()
            );
        }
        let mut last_seq = None;
        for (i, seg) in segs.iter().enumerate() {
            let Some((records, _)) = try_read_segment(seg) else {
                // Only the newest segment may lack its header (created, not yet written).
                assert_eq!(i + 1, segs.len(), "{} has no segment header", seg.display());
                continue;
            };
            for r in records {
                if let Some(prev) = last_seq {
                    assert_eq!(r.seq, prev + 1, "record sequence gap in {}", seg.display());
                }
                last_seq = Some(r.seq);
                assert!(
                    r.typ == TYPE_SET && r.db == 0 && r.expiry_ms == 0,
                    "{}: {r:?}",
                    seg.display()
                );
                let key = String::from_utf8_lossy(&r.key).into_owned();
                let want = if key == "tiny:huge" {
                    Some(&huge)
                } else {
                    by_key.get(&key)
                };
                assert!(
                    want == Some(&r.value),
                    "record for {key:?} in {} has another value",
                    seg.display()
                );
            }
        }
    }
    let mut node = Node::start_in(dir.path(), &args);
    let mut c = node.client();
    check(&mut c, "DBSIZE", int(401));
    verify_items(&mut c, &items, "tiny segments");
    assert!(q(&mut c, "GET tiny:huge").as_bytes() == huge, "tiny:huge differs");
    drop(c);
    stop(&mut node);
}

/// A helper sanity check: the crash value of a key is stable and starts with the key.
#[test]
fn crash_values_are_deterministic() {
    let a = crash_value(1, "crash:0:0:0");
    assert_eq!(a, crash_value(1, "crash:0:0:0"));
    assert!(a.starts_with(b"crash:0:0:0|"));
    let sizes: HashSet<usize> = (0..200).map(|n| crash_value(1, &crash_key(0, 0, n)).len()).collect();
    assert!(sizes.len() > 100, "padding sizes do not vary");
}

/// The test's own CRC32 is the IEEE one of the log format (standard check value).
#[test]
fn log_reader_crc_is_ieee() {
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    assert_eq!(crc32(b""), 0);
}

/// The default data dir is relative (`./corekv-data`): a node started with a relative
/// `--data-dir` keeps its data there and finds it again.
#[test]
fn a_relative_data_dir_works() {
    if corekv_only() {
        return;
    }
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let dir = TestDir::new("relative");
    let start = || {
        let mut child = Command::new(BIN)
            .args(["--port", "0", "--no-pin", "--shards", "2", "--data-dir", "rel-data"])
            .current_dir(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn corekv-node");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("readiness line");
        let port = parse_ready_line(&line).unwrap_or_else(|| {
            let mut err = String::new();
            let _ = std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err);
            panic!("node did not get ready: {line:?} {err}")
        });
        (child, port)
    };
    let stop = |mut child: std::process::Child| {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), Signal::SIGTERM).expect("SIGTERM");
        assert!(child.wait().expect("wait").success());
    };
    let (child, port) = start();
    let mut con = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .and_then(|c| c.get_connection())
        .expect("connect");
    assert_eq!(q(&mut con, "SET rel value"), ok());
    stop(child);
    assert!(
        dir.path().join("rel-data/shard-000").is_dir(),
        "data under the relative dir"
    );
    let (child, port) = start();
    let mut con = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .and_then(|c| c.get_connection())
        .expect("connect");
    assert_eq!(q(&mut con, "GET rel"), bulk("value"));
    stop(child);
}

/// The submission counts (`SqHead` in fdinfo) of every io_uring instance the process holds.
fn io_uring_submissions(pid: u32) -> Vec<u64> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).expect("list /proc/pid/fd");
    let mut heads = Vec::new();
    for fd in fds.flatten() {
        let is_ring = std::fs::read_link(fd.path()).is_ok_and(|target| target.to_string_lossy().contains("io_uring"));
        if !is_ring {
            continue;
        }
        let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.file_name().to_string_lossy()))
            .expect("read fdinfo");
        let head = info
            .lines()
            .find_map(|l| l.strip_prefix("SqHead:"))
            .map(|v| v.trim().parse::<u64>().expect("SqHead"))
            .expect("an io_uring fdinfo shows SqHead");
        heads.push(head);
    }
    heads
}

#[test]
fn log_writes_never_go_through_the_polled_ring() {
    if corekv_only() {
        return;
    }
    // glommio gives each shard three rings; its polled ring (IOPOLL) cannot sleep while a request
    // is in flight, so a shard whose log writes went there would spin through every write. The
    // node keeps the log off it: that ring sees at most glommio's one probe read per shard.
    let dir = TestDir::new("no-iopoll");
    let shards = 2;
    let node = Node::start_in(dir.path(), &["--durability", "always", "--shards", "2"]);
    let mut c = node.client();
    let items: Vec<(String, Vec<u8>, u64)> = (0..300).map(|i| (format!("poll:{i}"), vec![b'x'; 1000], 0)).collect();
    set_many(&mut c, &items);
    let info = pinfo(&mut c);
    assert!(
        info.int("log_bytes_written") >= 300 * 1000,
        "the writes did not reach the log:\n{}",
        info.text
    );
    let heads = io_uring_submissions(node.pid());
    assert_eq!(heads.len(), 3 * shards, "expected 3 rings per shard: {heads:?}");
    let idle = heads.iter().filter(|&&h| h <= 1).count();
    assert_eq!(
        idle, shards,
        "one ring per shard (the polled one) must stay unused; submissions per ring: {heads:?}"
    );
}
