//! Differential test: a seeded random sequence of commands sent to a corekv node (2 shards) and to
//! a fresh redis-server, every reply compared.
//!
//! Reproduce a failure with `COREKV_DIFF_SEED=<seed printed on failure>`; change the length with
//! `COREKV_DIFF_COMMANDS` (default 20,000).
//!
//! Deliberate differences, kept out of the comparison or the generated mix:
//! * TTL/PTTL/EXPIRETIME/PEXPIRETIME of keys given a *relative* TTL are compared with a tolerance
//!   (2 s / 2000 ms): the two servers received the command at slightly different times.
//! * EXPIRE/PEXPIRE with GT/LT and a positive relative time are not generated: comparing two
//!   relative deadlines set microseconds apart is a race (same millisecond or not). GT/LT are
//!   exercised with absolute times (EXPIREAT/PEXPIREAT, from a fixed set far from any relative
//!   deadline) and with non-positive relative times (which delete).
//! * SET ... EXAT/PXAT with a time in the past is not generated: Redis stores the already-expired
//!   key until its active expiry cycle removes it, so DBSIZE would depend on timing. (Past times
//!   are exercised with EXPIREAT/PEXPIREAT/GETEX, which delete at once in Redis.)
//! * INCRBYFLOAT runs only on a separate key pool whose values are always multiples of 0.25 of
//!   modest size: Redis computes in long double, so non-dyadic or huge operands could legitimately
//!   print differently from a double implementation. (strings.rs checks Redis's formatting, and
//!   `incrbyfloat_long_double_matches_redis` below compares the long-double arithmetic itself on
//!   random operands of every shape.)
//! * Repeated identical options (`SET k v NX NX`, `EX 1 EX 2`), which Redis 7.0 accepts, are not
//!   generated.
//! * Not compared at all: RANDOMKEY and SCAN (order/cursors are implementation details), OBJECT
//!   (encoding, idle time), INFO, CLIENT, HELLO, COMMAND, CONFIG, TIME (server-specific), and SET
//!   IFEQ (a Valkey 8.1 extension that Redis 7.0 lacks).
//! * KEYS replies are compared as sets (order is unspecified).

use crate::support::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

const MAIN_KEYS: &[&str] = &[
    "k0",
    "k1",
    "k2",
    "k3",
    "k4",
    "k5",
    "k6",
    "k7",
    "k8",
    "k9",
    "user:{a}1",
    "user:{a}2",
];
/// Keys used by INCRBYFLOAT, holding only float-safe values.
const FLOAT_KEYS: &[&str] = &["f0", "f1", "f2"];
const VALUES: &[&str] = &[
    "",
    "0",
    "1",
    "-1",
    "42",
    "007",
    "abc",
    "hello world",
    "9223372036854775807",
    "-9223372036854775808",
    "9223372036854775806",
    "1.5",
    " 12",
    "+5",
    "x",
    "0123456789012345678901234567890123456789012345678901234567890",
];
const FLOAT_VALUES: &[&str] = &["0", "1.5", "-2.25", "10", "abc", "3.0", "1e2", "-0.5"];
const INTS: &[&str] = &[
    "1",
    "-1",
    "0",
    "5",
    "100",
    "-100",
    "9223372036854775807",
    "-9223372036854775808",
    "9223372036854775808",
    "abc",
    "1.5",
    "",
];
const SMALL_INTS: &[&str] = &["1", "-1", "0", "2", "17", "-30", "abc"];
const TTLS: &[&str] = &["1000", "2000", "3500", "5000"];
const BAD_TTLS: &[&str] = &["0", "-1", "abc", "9223372036854775807", ""];
const INDICES: &[&str] = &["0", "1", "3", "-1", "-3", "100", "-100", "abc"];
const OFFSETS: &[&str] = &["0", "1", "5", "20", "-1", "abc", "536870912"];
const DBS: &[&str] = &["0", "1", "2", "3", "16", "-1", "abc"];
const PATTERNS: &[&str] = &["*", "k*", "f?", "k[0-3]", "*1*", "user:*", "nomatch", "*{a}*"];

struct Gen {
    rng: StdRng,
    /// Unix time (s) at the start: absolute deadlines derive from it, identical for both servers.
    t0: i64,
}

impl Gen {
    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from.choose(&mut self.rng).unwrap()
    }
    fn key(&mut self) -> String {
        if self.rng.gen_bool(0.15) {
            self.pick(FLOAT_KEYS).to_string()
        } else {
            self.pick(MAIN_KEYS).to_string()
        }
    }
    fn main_key(&mut self) -> String {
        self.pick(MAIN_KEYS).to_string()
    }
    fn float_key(&mut self) -> String {
        self.pick(FLOAT_KEYS).to_string()
    }
    /// A value fit for `key`'s pool.
    fn value_for(&mut self, key: &str) -> String {
        if FLOAT_KEYS.contains(&key) {
            self.pick(FLOAT_VALUES).to_string()
        } else {
            self.pick(VALUES).to_string()
        }
    }
    /// Two keys of the same pool (for RENAME/COPY).
    fn key_pair(&mut self) -> (String, String) {
        if self.rng.gen_bool(0.15) {
            (self.float_key(), self.float_key())
        } else {
            (self.main_key(), self.main_key())
        }
    }
    fn abs_secs(&mut self) -> String {
        match self.rng.gen_range(0..5) {
            0 => (self.t0 + 10_000).to_string(),
            1 => (self.t0 + 20_000).to_string(),
            2 => (self.t0 + 30_000).to_string(),
            3 => "1".to_string(), // the past: deletes
            _ => "abc".to_string(),
        }
    }
    fn abs_ms(&mut self) -> String {
        match self.rng.gen_range(0..6) {
            0 => ((self.t0 + 10_000) * 1000).to_string(),
            1 => ((self.t0 + 20_000) * 1000 + 500).to_string(),
            2 => ((self.t0 + 30_000) * 1000).to_string(),
            3 => "1".to_string(),
            4 => "0".to_string(),
            _ => "x".to_string(),
        }
    }
    /// A future absolute deadline only (for SET/GETEX-style options that keep the key).
    fn future_abs(&mut self, ms: bool) -> String {
        let s = self.t0 + [10_000, 20_000, 30_000][self.rng.gen_range(0..3)];
        if ms {
            (s * 1000 + 250).to_string()
        } else {
            s.to_string()
        }
    }

    fn set_cmd(&mut self, key: String, value: String) -> Vec<String> {
        let mut cmd = vec!["SET".to_string(), key, value];
        let mut opts: Vec<Vec<String>> = Vec::new();
        match self.rng.gen_range(0..10) {
            0..=1 => opts.push(vec!["NX".into()]),
            2..=3 => opts.push(vec!["XX".into()]),
            4 => opts.push(vec!["NX".into(), "XX".into()]),
            _ => {}
        }
        if self.rng.gen_bool(0.3) {
            opts.push(vec!["GET".into()]);
        }
        match self.rng.gen_range(0..14) {
            0..=1 => opts.push(vec!["EX".into(), self.pick(TTLS).into()]),
            2 => opts.push(vec!["PX".into(), format!("{}000", self.pick(TTLS))]),
            3 => opts.push(vec!["EXAT".into(), self.future_abs(false)]),
            4 => opts.push(vec!["PXAT".into(), self.future_abs(true)]),
            5..=6 => opts.push(vec!["KEEPTTL".into()]),
            7 => opts.push(vec!["EX".into(), self.pick(BAD_TTLS).into()]),
            8 => opts.push(vec!["EX".into(), "100".into(), "PX".into(), "100".into()]),
            9 => opts.push(vec!["KEEPTTL".into(), "EX".into(), "1000".into()]),
            10 => opts.push(vec!["BOGUS".into()]),
            11 => opts.push(vec!["EX".into()]),
            _ => {}
        }
        opts.shuffle(&mut self.rng);
        for o in opts {
            cmd.extend(o);
        }
        cmd
    }

    fn expire_cmd(&mut self) -> Vec<String> {
        let key = self.key();
        let (name, value, absolute) = match self.rng.gen_range(0..4) {
            0 => {
                let v = if self.rng.gen_bool(0.6) {
                    self.pick(TTLS).to_string()
                } else {
                    self.pick(BAD_TTLS).to_string()
                };
                ("EXPIRE", v, false)
            }
            1 => {
                let v = if self.rng.gen_bool(0.6) {
                    format!("{}000", self.pick(TTLS))
                } else {
                    self.pick(&["0", "-5", "x", "9223372036854775807"]).to_string()
                };
                ("PEXPIRE", v, false)
            }
            2 => ("EXPIREAT", self.abs_secs(), true),
            _ => ("PEXPIREAT", self.abs_ms(), true),
        };
        let positive_relative = !absolute && value.parse::<i64>().map(|v| v > 0).unwrap_or(false);
        let mut cmd = vec![name.to_string(), key, value];
        let flags: Vec<&str> = match self.rng.gen_range(0..12) {
            0 => vec!["NX"],
            1 => vec!["XX"],
            2 => vec!["GT"],
            3 => vec!["LT"],
            4 => vec!["NX", "XX"],
            5 => vec!["GT", "LT"],
            6 => vec!["NX", "GT"],
            7 => vec!["XX", "GT"],
            8 => vec!["XX", "LT"],
            9 => vec!["BOGUS"],
            _ => vec![],
        };
        let racy = positive_relative
            && flags.iter().any(|f| *f == "GT" || *f == "LT")
            && !(flags.contains(&"NX") || flags.contains(&"BOGUS"))
            && !(flags.contains(&"GT") && flags.contains(&"LT"));
        if !racy {
            cmd.extend(flags.iter().map(|s| s.to_string()));
        }
        cmd
    }

    fn next(&mut self) -> Vec<String> {
        let s = |x: &str| x.to_string();
        let mut cmd: Vec<String> = match self.rng.gen_range(0..1000) {
            0..=79 => vec![s("GET"), self.key()],
            80..=189 => {
                let k = self.key();
                let v = self.value_for(&k);
                self.set_cmd(k, v)
            }
            190..=209 => {
                let k = self.key();
                let v = self.value_for(&k);
                vec![s("SETNX"), k, v]
            }
            210..=224 => {
                let k = self.key();
                let v = self.value_for(&k);
                let t = if self.rng.gen_bool(0.8) {
                    self.pick(TTLS)
                } else {
                    self.pick(BAD_TTLS)
                };
                vec![s("SETEX"), k, s(t), v]
            }
            225..=234 => {
                let k = self.key();
                let v = self.value_for(&k);
                let t = if self.rng.gen_bool(0.8) {
                    format!("{}000", self.pick(TTLS))
                } else {
                    s(self.pick(BAD_TTLS))
                };
                vec![s("PSETEX"), k, t, v]
            }
            235..=249 => {
                let k = self.key();
                let v = self.value_for(&k);
                vec![s("GETSET"), k, v]
            }
            250..=264 => vec![s("GETDEL"), self.key()],
            265..=289 => {
                let mut c = vec![s("GETEX"), self.key()];
                match self.rng.gen_range(0..9) {
                    0 => c.extend([s("EX"), s(self.pick(TTLS))]),
                    1 => c.extend([s("PX"), format!("{}000", self.pick(TTLS))]),
                    2 => c.extend([s("EXAT"), self.abs_secs()]),
                    3 => c.extend([s("PXAT"), self.abs_ms()]),
                    4 => c.push(s("PERSIST")),
                    5 => c.extend([s("EX"), s(self.pick(BAD_TTLS))]),
                    6 => c.extend([s("EX"), s("10"), s("PERSIST")]),
                    7 => c.push(s("BOGUS")),
                    _ => {}
                }
                c
            }
            290..=339 => {
                let mut c = vec![s("MGET")];
                for _ in 0..self.rng.gen_range(1..6) {
                    c.push(self.key());
                }
                c
            }
            340..=374 => {
                let mut c = vec![s("MSET")];
                for _ in 0..self.rng.gen_range(1..5) {
                    let k = self.main_key();
                    c.push(k);
                    c.push(s(self.pick(VALUES)));
                }
                c
            }
            375..=389 => {
                let mut c = vec![s("MSETNX")];
                for _ in 0..self.rng.gen_range(1..4) {
                    let k = self.main_key();
                    c.push(k);
                    c.push(s(self.pick(VALUES)));
                }
                c
            }
            390..=409 => vec![s("APPEND"), self.main_key(), s(self.pick(VALUES))],
            410..=419 => vec![s("STRLEN"), self.key()],
            420..=434 => {
                let name = if self.rng.gen_bool(0.8) { "GETRANGE" } else { "SUBSTR" };
                vec![s(name), self.key(), s(self.pick(INDICES)), s(self.pick(INDICES))]
            }
            435..=449 => vec![
                s("SETRANGE"),
                self.main_key(),
                s(self.pick(OFFSETS)),
                s(self.pick(&["", "x", "hello", "123"])),
            ],
            450..=469 => vec![s("INCR"), self.key()],
            470..=484 => vec![s("DECR"), self.key()],
            485..=504 => {
                let k = self.key();
                let by = if FLOAT_KEYS.contains(&k.as_str()) {
                    self.pick(SMALL_INTS)
                } else {
                    self.pick(INTS)
                };
                vec![s("INCRBY"), k, s(by)]
            }
            505..=519 => {
                let k = self.key();
                let by = if FLOAT_KEYS.contains(&k.as_str()) {
                    self.pick(SMALL_INTS)
                } else {
                    self.pick(INTS)
                };
                vec![s("DECRBY"), k, s(by)]
            }
            520..=549 => {
                let by = match self.rng.gen_range(0..12) {
                    0 => s("abc"),
                    1 => s("inf"),
                    2 => s(""),
                    _ => {
                        let quarters: i64 = self.rng.gen_range(-4000..4000);
                        let v = quarters as f64 / 4.0;
                        if v == v.trunc() && self.rng.gen_bool(0.5) {
                            format!("{}", v as i64)
                        } else {
                            format!("{v}")
                        }
                    }
                };
                vec![s("INCRBYFLOAT"), self.float_key(), by]
            }
            550..=579 => {
                let name = if self.rng.gen_bool(0.5) { "DEL" } else { "UNLINK" };
                let mut c = vec![s(name)];
                for _ in 0..self.rng.gen_range(1..4) {
                    c.push(self.key());
                }
                c
            }
            580..=604 => {
                let name = if self.rng.gen_bool(0.7) { "EXISTS" } else { "TOUCH" };
                let mut c = vec![s(name)];
                for _ in 0..self.rng.gen_range(1..5) {
                    c.push(self.key());
                }
                c
            }
            605..=614 => vec![s("TYPE"), self.key()],
            615..=679 => self.expire_cmd(),
            680..=719 => {
                let name = self.pick(&["TTL", "PTTL", "EXPIRETIME", "PEXPIRETIME"]);
                vec![s(name), self.key()]
            }
            720..=734 => vec![s("PERSIST"), self.key()],
            735..=744 => vec![s("KEYS"), s(self.pick(PATTERNS))],
            745..=769 => {
                let (a, b) = self.key_pair();
                let name = if self.rng.gen_bool(0.6) { "RENAME" } else { "RENAMENX" };
                vec![s(name), a, b]
            }
            770..=794 => {
                let (a, b) = self.key_pair();
                let mut c = vec![s("COPY"), a, b];
                if self.rng.gen_bool(0.4) {
                    c.extend([s("DB"), s(self.pick(DBS))]);
                }
                if self.rng.gen_bool(0.3) {
                    c.push(s("REPLACE"));
                }
                if self.rng.gen_bool(0.03) {
                    c.push(s("BOGUS"));
                }
                c
            }
            795..=809 => vec![s("MOVE"), self.key(), s(self.pick(DBS))],
            810..=839 => {
                let db = if self.rng.gen_bool(0.9) {
                    self.pick(&["0", "1", "2", "3"])
                } else {
                    self.pick(&["16", "-1", "abc"])
                };
                vec![s("SELECT"), s(db)]
            }
            840..=859 => vec![s("DBSIZE")],
            860..=864 => vec![s("PING")],
            865..=869 => vec![s("ECHO"), s(self.pick(VALUES))],
            870..=871 => vec![s("FLUSHDB")],
            872 => vec![s("FLUSHALL")],
            873..=879 => vec![s("NOSUCHCOMMAND"), self.key()],
            _ => {
                // Fill in with more reads and writes.
                let k = self.key();
                let v = self.value_for(&k);
                vec![s("SET"), k, v]
            }
        };
        // Arity mutations: drop the last argument, or add a junk one.
        let r = self.rng.gen_range(0..100);
        if r < 2 && cmd.len() > 1 {
            cmd.pop();
        } else if r < 4 && !matches!(cmd[0].as_str(), "SET" | "KEYS") {
            cmd.push(s("junk"));
        }
        cmd
    }
}

/// Whether two replies agree, with the tolerances described in the module doc.
fn same(cmd: &[String], a: &R, b: &R) -> bool {
    if a == b {
        return true;
    }
    let name = cmd[0].to_ascii_uppercase();
    match (name.as_str(), a, b) {
        ("TTL" | "EXPIRETIME", R::Int(x), R::Int(y)) if *x >= 0 && *y >= 0 => (x - y).abs() <= 2,
        ("PTTL" | "PEXPIRETIME", R::Int(x), R::Int(y)) if *x >= 0 && *y >= 0 => (x - y).abs() <= 2000,
        ("KEYS", R::Arr(_), R::Arr(_)) => a.sorted_strings() == b.sorted_strings(),
        _ => false,
    }
}

fn show_cmd(cmd: &[String]) -> String {
    cmd.iter()
        .map(|a| {
            if a.is_empty() || a.contains(' ') {
                format!("{a:?}")
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn seed_and_count(default_n: usize) -> (u64, usize) {
    let seed: u64 = match std::env::var("COREKV_DIFF_SEED") {
        Ok(s) => s.parse().expect("COREKV_DIFF_SEED must be a u64"),
        Err(_) => rand::thread_rng().gen(),
    };
    let n: usize = std::env::var("COREKV_DIFF_COMMANDS")
        .ok()
        .map(|s| s.parse().expect("COREKV_DIFF_COMMANDS must be a number"))
        .unwrap_or(default_n);
    (seed, n)
}

#[test]
fn differential_against_redis() {
    let (seed, n) = seed_and_count(20_000);
    run_differential(seed, n, false);
}

/// The same with both connections switched to RESP3 (HELLO 3): maps, nulls, doubles.
#[test]
fn differential_resp3_against_redis() {
    let (seed, n) = seed_and_count(5_000);
    run_differential(seed, n, true);
}

fn run_differential(seed: u64, n: usize, resp3: bool) {
    let proto = if resp3 { "RESP3" } else { "RESP2" };
    eprintln!("differential ({proto}): seed {seed} ({n} commands); reproduce with COREKV_DIFF_SEED={seed}");

    let redis = Node::start_redis(&[]);
    let corekv = Node::start(&["--shards", "2"]);
    let mut a = corekv.client();
    let mut b = redis.client();
    if resp3 {
        for c in [&mut a, &mut b] {
            let hello = q(c, "HELLO 3");
            assert_eq!(hello.field("proto"), Some(int(3)), "{hello:?}");
        }
    }
    let t0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut gen = Gen {
        rng: StdRng::seed_from_u64(seed),
        t0,
    };
    let mut history: VecDeque<String> = VecDeque::new();
    let started = Instant::now();
    let fail = |i: usize, cmd: &[String], ra: &R, rb: &R, history: &VecDeque<String>| -> ! {
        panic!(
            "differential ({proto}) mismatch at command #{i} (seed {seed}, reproduce with COREKV_DIFF_SEED={seed}):\n  command: {}\n  corekv:  {ra:?}\n  redis:   {rb:?}\nlast commands (corekv reply):\n{}",
            show_cmd(cmd),
            history.iter().cloned().collect::<Vec<_>>().join("\n")
        )
    };
    let (mut errors, mut nils) = (0usize, 0usize);
    for i in 0..n {
        let cmd = gen.next();
        let ra = to_r(cmd_of(&cmd).query::<redis::Value>(&mut a));
        let rb = to_r(cmd_of(&cmd).query::<redis::Value>(&mut b));
        if !same(&cmd, &ra, &rb) {
            fail(i, &cmd, &ra, &rb, &history);
        }
        match rb {
            R::Err(_) => errors += 1,
            R::Nil => nils += 1,
            _ => {}
        }
        history.push_back(format!("  #{i} {} -> {ra:?}", show_cmd(&cmd)));
        if history.len() > 40 {
            history.pop_front();
        }
    }

    // The final states agree: same keys in every database, same values, same TTLs.
    for db in 0..4 {
        let sel = vec!["SELECT".to_string(), db.to_string()];
        assert_eq!(qa(&mut a, &sel), ok());
        assert_eq!(qa(&mut b, &sel), ok());
        let ka = q(&mut a, "KEYS *").sorted_strings();
        let kb = q(&mut b, "KEYS *").sorted_strings();
        assert_eq!(ka, kb, "final keys of db {db} (seed {seed})");
        for k in &ka {
            for what in ["GET", "TTL"] {
                let cmd = vec![what.to_string(), k.clone()];
                let ra = qa(&mut a, &cmd);
                let rb = qa(&mut b, &cmd);
                assert!(
                    same(&cmd, &ra, &rb),
                    "final {what} {k} in db {db} (seed {seed}): corekv {ra:?} redis {rb:?}"
                );
            }
        }
        let da = q(&mut a, "DBSIZE");
        let dbb = q(&mut b, "DBSIZE");
        assert_eq!(da, dbb, "final DBSIZE of db {db} (seed {seed})");
    }
    eprintln!(
        "differential ({proto}): {n} commands agreed in {:.1} s ({errors} error replies, {nils} nil replies)",
        started.elapsed().as_secs_f64()
    );
    // The mix must mostly exercise real work, not just error paths.
    assert!(
        errors * 3 < n,
        "{errors} of {n} replies were errors: generator too hostile"
    );
}

/// One random operand for INCRBYFLOAT: decimals of up to 21 significant digits, exponents,
/// integers near 2^63 and 2^64, thirds, tiny and huge magnitudes, signs.
fn float_operand(rng: &mut StdRng) -> String {
    fn digits(rng: &mut StdRng, len: std::ops::Range<usize>) -> String {
        let n = rng.gen_range(len);
        (0..n).map(|_| char::from(b'0' + rng.gen_range(0..10u8))).collect()
    }
    let sign = if rng.gen_bool(0.3) { "-" } else { "" };
    match rng.gen_range(0..8) {
        0 => format!("{sign}{}", rng.gen_range(0..1_000_000u64)),
        1 => format!("{sign}{}.{}", rng.gen_range(0..100_000u64), digits(rng, 1..12)),
        2 => format!("{sign}0.{}", digits(rng, 1..22)),
        3 => format!("{sign}{}e{}", rng.gen_range(1..10_000u64), rng.gen_range(-40..40)),
        4 => format!(
            "{sign}{}.{}e{}",
            rng.gen_range(1..10),
            digits(rng, 15..16),
            rng.gen_range(-300..300)
        ),
        5 => format!("{sign}{}", [i64::MAX as u64, u64::MAX][rng.gen_range(0..2)]),
        6 => format!(
            "{sign}{}",
            ["0.1", "0.2", "0.3", "1", "3", "0.333333333333333333", "1e17", "5e-324"][rng.gen_range(0..8)]
        ),
        _ => format!(
            "{sign}{}{}",
            digits(rng, 1..20),
            if rng.gen_bool(0.5) { ".5" } else { "" }
        ),
    }
}

/// INCRBYFLOAT computes in 80-bit long double, as Redis does on x86-64: for random operands of
/// every shape, the replies (result text or error) are byte for byte those of redis-server.
#[test]
fn incrbyfloat_long_double_matches_redis() {
    let (seed, _) = seed_and_count(0);
    let pairs: usize = std::env::var("COREKV_INCRBYFLOAT_PAIRS")
        .ok()
        .map(|s| s.parse().expect("COREKV_INCRBYFLOAT_PAIRS must be a number"))
        .unwrap_or(20_000);
    eprintln!("incrbyfloat differential: seed {seed} ({pairs} pairs); reproduce with COREKV_DIFF_SEED={seed}");
    let redis = Node::start_redis(&[]);
    let corekv = Node::start(&["--shards", "2"]);
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut a, mut b) = (corekv.raw(), redis.raw());
    const CHUNK: usize = 500;
    let mut done = 0;
    let mut results = 0;
    while done < pairs {
        let n = CHUNK.min(pairs - done);
        let operands: Vec<(String, String)> = (0..n)
            .map(|_| (float_operand(&mut rng), float_operand(&mut rng)))
            .collect();
        let mut request = Vec::new();
        for (i, (base, by)) in operands.iter().enumerate() {
            let key = format!("f{i}");
            request.extend(encode_cmd(&["SET", key.as_str(), base.as_str()]));
            request.extend(encode_cmd(&["INCRBYFLOAT", key.as_str(), by.as_str()]));
        }
        a.send(&request).expect("send to corekv");
        b.send(&request).expect("send to redis");
        for (base, by) in &operands {
            for what in ["SET", "INCRBYFLOAT"] {
                let ra = a.read_reply(Duration::from_secs(30)).expect("corekv reply");
                let rb = b.read_reply(Duration::from_secs(30)).expect("redis reply");
                assert_eq!(
                    show(&ra),
                    show(&rb),
                    "{what} after SET {base:?}, INCRBYFLOAT {by:?} (seed {seed}, reproduce with COREKV_DIFF_SEED={seed})"
                );
                if what == "INCRBYFLOAT" && rb.first() == Some(&b'$') {
                    results += 1;
                }
            }
        }
        done += n;
    }
    // Most pairs must produce a number (not an error), or the comparison says little.
    assert!(
        results * 2 > pairs,
        "only {results} of {pairs} INCRBYFLOATs produced a number"
    );
    eprintln!("incrbyfloat differential: {results} of {pairs} produced a number, all identical to redis-server");
}
