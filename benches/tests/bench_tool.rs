//! Tests of corekv-bench's load loop, report and binary against in-process fake servers.
//!
//! The only timing assertions check that an injected server stall shows up in the recorded
//! latencies (open loop) or does not inflate them beyond one request per window slot (closed
//! loop); nothing asserts that anything is fast.

mod fake_servers;

use std::process::Command;
use std::time::Duration;

use clap::Parser;
use corekv_bench::config::{Cli, IoLoop, Settings};
use corekv_bench::latency::Recording;
use corekv_bench::load::{prefill, run_round, RoundResult};
use corekv_bench::report::{Report, TargetResult, SCHEMA};
use fake_servers::{start_native, start_native_with, start_rdma, start_rdma_dropping, start_resp, Behaviour};
use serde_json::Value;

fn settings(args: &[&str]) -> Settings {
    let cli =
        Cli::try_parse_from(std::iter::once("corekv-bench").chain(args.iter().copied())).expect("valid arguments");
    cli.settings(false).expect("valid settings")
}

fn run(settings: &Settings) -> RoundResult {
    run_round(&settings.target, &settings.workload, &settings.load, None).expect("the round runs")
}

const MS: u64 = 1_000_000;

#[test]
fn open_loop_shows_a_server_stall_in_the_tail() {
    // 2000 requests/s for 1 s; about 0.2 s in, the server stops answering for 300 ms.
    let server = start_resp(Behaviour {
        stall: Some((400, Duration::from_millis(300))),
        ..Behaviour::default()
    });
    let url = format!("resp://127.0.0.1:{}", server.port);
    let s = settings(&[
        "--target",
        &url,
        "--rate",
        "2000",
        "--duration",
        "1s",
        "--warmup",
        "0s",
        "--connections",
        "2",
        "--pipeline",
        "16",
        "--ratio",
        "1:1",
        "--keys",
        "100",
    ]);
    let result = run(&s);
    let rec = &result.recording;
    let total = rec.total();
    assert_eq!(rec.errors.total(), 0, "{:?}", rec.first_errors);
    assert!((1900..=2000).contains(&total.requests), "{} requests", total.requests);
    // About 600 requests are scheduled during the stall; the ~400 of its first 200 ms wait at
    // least 100 ms, whether they were sent (the window holds 32) or queued behind the window.
    let slow = total.count_at_least(100 * MS);
    assert!(slow >= 300, "only {slow} requests of 100 ms or more");
    let p99 = total.percentile_us(99.0);
    eprintln!(
        "open loop: requests {} slow {slow} p99 {p99} max {} late {}",
        total.requests,
        total.max_us(),
        rec.late
    );
    assert!(p99 >= 200_000.0, "p99 {p99} µs hides the 300 ms stall");
    assert!(total.max_us() >= 250_000.0, "max {} µs", total.max_us());
    // The window (2 x 16) was full for most of the stall: the rest were sent late.
    assert!(rec.late >= 300, "{} late", rec.late);
}

#[test]
fn closed_loop_sees_the_stall_once_per_window_slot() {
    for io_loop in ["tokio", "blocking"] {
        closed_loop_stall(io_loop);
    }
}

fn closed_loop_stall(io_loop: &str) {
    let server = start_resp(Behaviour {
        stall: Some((200, Duration::from_millis(300))),
        ..Behaviour::default()
    });
    let url = format!("resp://127.0.0.1:{}", server.port);
    let s = settings(&[
        "--target",
        &url,
        "--io-loop",
        io_loop,
        "--duration",
        "1s",
        "--warmup",
        "0s",
        "--connections",
        "2",
        "--pipeline",
        "1",
        "--keys",
        "100",
    ]);
    let result = run(&s);
    let total = result.recording.total();
    assert_eq!(result.recording.errors.total(), 0);
    assert!(total.requests > 200, "{} requests", total.requests);
    // Only the requests outstanding when the stall began (one per connection) are slow: the
    // closed loop sends nothing while it waits, which is exactly the coordinated omission the
    // open loop avoids. (200 ms rather than 100: the second connection may enter the stall late,
    // and the hiccups of a loaded machine stay well below 200 ms.)
    let slow = total.count_at_least(200 * MS);
    eprintln!(
        "closed loop ({io_loop}): requests {} slow {slow} p99 {} max {}",
        total.requests,
        total.percentile_us(99.0),
        total.max_us()
    );
    assert!((1..=2).contains(&slow), "{io_loop}: {slow} slow requests");
    assert!(total.max_us() >= 250_000.0);
    assert_eq!(result.recording.late, 0, "a closed loop is never late");
}

#[test]
fn native_target_routes_each_key_to_its_shard() {
    let server = start_native();
    let url = format!("native://127.0.0.1:{}", server.seed_port);
    let s = settings(&[
        "--target",
        &url,
        "--requests",
        "3000",
        "--warmup",
        "0s",
        "--connections",
        "3",
        "--threads",
        "2",
        "--pipeline",
        "8",
        "--ratio",
        "1:1",
        "--keys",
        "500",
    ]);
    let filled = prefill(&s.target, &s.workload, &s.load).expect("prefill runs");
    assert_eq!(filled.recording.set.requests, 500);
    assert_eq!(
        filled.recording.errors.total(),
        0,
        "{:?}",
        filled.recording.first_errors
    );
    let result = run(&s);
    let rec = &result.recording;
    // A request sent to the wrong shard would come back as a WRONG_SHARD error.
    assert_eq!(rec.errors.total(), 0, "{:?}", rec.first_errors);
    assert_eq!(rec.total().requests, 3000);
    assert!(rec.get.requests > 1000 && rec.set.requests > 1000);
    assert_eq!(rec.get.misses, 0, "every key was prefilled");
    let per_shard = server
        .per_shard
        .each_ref()
        .map(|n| n.load(std::sync::atomic::Ordering::SeqCst));
    assert!(per_shard.iter().all(|&n| n > 500), "{per_shard:?}");
}

#[test]
fn rdma_target_routes_each_key_to_its_shard() {
    let server = start_rdma();
    let url = format!("rdma://127.0.0.1:{}", server.seed_port);
    let s = settings(&[
        "--target",
        &url,
        "--requests",
        "3000",
        "--warmup",
        "0s",
        "--connections",
        "3",
        "--pipeline",
        "8",
        "--ratio",
        "1:1",
        "--keys",
        "500",
    ]);
    let filled = prefill(&s.target, &s.workload, &s.load).expect("prefill runs");
    assert_eq!(filled.recording.set.requests, 500);
    assert_eq!(
        filled.recording.errors.total(),
        0,
        "{:?}",
        filled.recording.first_errors
    );
    let result = run(&s);
    let rec = &result.recording;
    // A request sent to the wrong shard's session would come back as a WRONG_SHARD error.
    assert_eq!(rec.errors.total(), 0, "{:?}", rec.first_errors);
    assert_eq!(rec.connections_lost, 0);
    assert_eq!(rec.total().requests, 3000);
    assert!(rec.get.requests > 1000 && rec.set.requests > 1000);
    assert_eq!(rec.get.misses, 0, "every key was prefilled");
    assert_eq!(rec.late, 0, "a closed loop is never late");
    let per_shard = server
        .per_shard
        .each_ref()
        .map(|n| n.load(std::sync::atomic::Ordering::SeqCst));
    // 500 prefill SETs and 3000 requests, spread over both shards.
    assert_eq!(per_shard[0] + per_shard[1], 3500);
    assert!(per_shard.iter().all(|&n| n > 1000), "{per_shard:?}");
}

#[test]
fn rdma_target_open_loop_keeps_the_rate() {
    let server = start_rdma();
    let url = format!("rdma://127.0.0.1:{}", server.seed_port);
    let s = settings(&[
        "--target",
        &url,
        "--rate",
        "2000",
        "--duration",
        "500ms",
        "--warmup",
        "100ms",
        "--connections",
        "2",
        "--pipeline",
        "4",
        "--ratio",
        "1:1",
        "--keys",
        "100",
    ]);
    let result = run(&s);
    let rec = &result.recording;
    let total = rec.total();
    assert_eq!(rec.errors.total(), 0, "{:?}", rec.first_errors);
    // 2000/s for 0.5 s, scheduled times fixed in advance: exactly the due requests are recorded.
    assert!((990..=1000).contains(&total.requests), "{} requests", total.requests);
    assert!(rec.get.requests > 300 && rec.set.requests > 300);
    let per_shard = server
        .per_shard
        .each_ref()
        .map(|n| n.load(std::sync::atomic::Ordering::SeqCst));
    assert!(per_shard.iter().all(|&n| n > 300), "{per_shard:?}");
    // The last request is due just before the end; its reply comes after (how long after is
    // not asserted).
    assert!(result.measured.as_secs_f64() >= 0.49, "{:?}", result.measured);
}

#[test]
fn a_failed_rdma_session_is_reported() {
    // The session that receives the node's 200th request message goes away unanswered.
    let server = start_rdma_dropping(Some(200));
    let url = format!("rdma://127.0.0.1:{}", server.seed_port);
    let s = settings(&[
        "--target",
        &url,
        "--duration",
        "500ms",
        "--warmup",
        "0s",
        "--drain-timeout",
        "1s",
        "--connections",
        "2",
        "--pipeline",
        "4",
    ]);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(run(&s));
    });
    let result = done_rx.recv_timeout(Duration::from_secs(30)).expect("the round ends");
    let rec = &result.recording;
    // The session fails (its queue pairs are flushed): its requests are lost, its connection
    // stops sending, and the other connection carried on.
    assert_eq!(rec.connections_lost, 1, "{:?}", rec.first_errors);
    assert!(rec.errors.connection >= 1, "{:?}", rec.errors);
    assert_eq!(rec.errors.total(), rec.errors.connection, "{:?}", rec.first_errors);
    assert!(
        rec.first_errors[0].starts_with("connection failed: "),
        "{:?}",
        rec.first_errors
    );
    assert!(rec.total().requests > 200, "{} requests", rec.total().requests);
}

#[test]
fn error_replies_are_counted_and_kept() {
    let server = start_resp(Behaviour {
        error_every: Some(10),
        ..Behaviour::default()
    });
    let url = format!("resp://127.0.0.1:{}", server.port);
    let s = settings(&[
        "--target",
        &url,
        "--requests",
        "1000",
        "--warmup",
        "0s",
        "--connections",
        "1",
        "--pipeline",
        "4",
    ]);
    let rec = run(&s).recording;
    assert_eq!(rec.total().requests, 1000, "error replies are answered requests");
    assert_eq!(rec.errors.server, 100);
    assert_eq!(rec.get.errors + rec.set.errors, 100);
    assert_eq!(rec.errors.total(), 100);
    assert_eq!(rec.connections_lost, 0);
    assert_eq!(rec.first_errors.len(), 5);
    assert!(
        rec.first_errors[0].contains("ERR injected failure"),
        "{:?}",
        rec.first_errors
    );
}

#[test]
fn a_lost_connection_is_reported() {
    let server = start_resp(Behaviour {
        close_at: Some(100),
        ..Behaviour::default()
    });
    let url = format!("resp://127.0.0.1:{}", server.port);
    let s = settings(&[
        "--target",
        &url,
        "--duration",
        "500ms",
        "--warmup",
        "0s",
        "--connections",
        "2",
        "--pipeline",
        "4",
    ]);
    let rec = run(&s).recording;
    assert_eq!(rec.connections_lost, 1);
    assert!(rec.errors.connection >= 1, "{:?}", rec.errors);
    assert!(
        rec.first_errors
            .iter()
            .any(|m| m.contains("connection closed by the server")),
        "{:?}",
        rec.first_errors
    );
    // The other connection carried on.
    assert!(rec.total().requests > 100);
}

#[test]
fn a_garbled_reply_is_a_protocol_error() {
    let server = start_resp(Behaviour {
        garbage_at: Some(50),
        ..Behaviour::default()
    });
    let url = format!("resp://127.0.0.1:{}", server.port);
    let s = settings(&[
        "--target",
        &url,
        "--requests",
        "200",
        "--warmup",
        "0s",
        "--connections",
        "1",
        "--pipeline",
        "4",
    ]);
    let rec = run(&s).recording;
    assert_eq!(rec.errors.protocol, 1, "{:?}", rec.errors);
    assert_eq!(rec.connections_lost, 1);
    assert_eq!(rec.total().requests, 49, "the replies before the bad one were recorded");
    assert!(
        rec.first_errors[0].contains("unknown RESP reply type byte 0x3f"),
        "{:?}",
        rec.first_errors
    );
}

#[test]
fn a_silent_server_ends_in_timeouts_not_a_hang() {
    let server = start_resp(Behaviour {
        silent_from: Some(100),
        ..Behaviour::default()
    });
    let url = format!("resp://127.0.0.1:{}", server.port);
    let s = settings(&[
        "--target",
        &url,
        "--duration",
        "300ms",
        "--warmup",
        "0s",
        "--drain-timeout",
        "200ms",
        "--connections",
        "2",
        "--pipeline",
        "4",
    ]);
    // The writers wait for window slots that never come back: only the drain deadline ends it.
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(run(&s));
    });
    let result = done_rx.recv_timeout(Duration::from_secs(30)).expect("the round ends");
    let rec = &result.recording;
    assert_eq!(rec.total().requests, 99, "the replies before the silence were recorded");
    assert_eq!(
        rec.errors.timeout, 8,
        "every window slot waits in vain: {:?}",
        rec.first_errors
    );
    assert_eq!(rec.errors.total(), 8);
}

#[test]
fn unreachable_target_is_an_error() {
    // A port that was free a moment ago.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let s = settings(&["--target", &format!("resp://127.0.0.1:{port}"), "--duration", "1s"]);
    let err = run_round(&s.target, &s.workload, &s.load, None).unwrap_err();
    assert!(err.contains("cannot connect to 127.0.0.1"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// The blocking loop (--io-loop blocking; what auto picks at pipeline 1 on at most 4 connections)
// ---------------------------------------------------------------------------------------------

/// A RESP and a two-shard native fake server, both with `behaviour`: their URLs.
fn blocking_targets(behaviour: Behaviour) -> [String; 2] {
    let resp = start_resp(behaviour);
    let native = start_native_with(behaviour);
    [
        format!("resp://127.0.0.1:{}", resp.port),
        format!("native://127.0.0.1:{}", native.seed_port),
    ]
}

/// Runs a round on a thread of its own: a hung round fails the test instead of hanging it.
fn run_bounded(s: Settings) -> RoundResult {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(run(&s));
    });
    done_rx.recv_timeout(Duration::from_secs(30)).expect("the round ends")
}

#[test]
fn blocking_loop_counts_every_request() {
    for url in blocking_targets(Behaviour::default()) {
        // Pipeline 8: with two native shards, several sockets await replies at once.
        for pipeline in ["1", "8"] {
            let s = settings(&[
                "--target",
                &url,
                "--io-loop",
                "blocking",
                "--requests",
                "600",
                "--warmup",
                "0s",
                "--connections",
                "2",
                "--pipeline",
                pipeline,
                "--ratio",
                "1:1",
                "--keys",
                "100",
            ]);
            let filled = prefill(&s.target, &s.workload, &s.load).expect("prefill runs");
            assert_eq!(
                filled.recording.errors.total(),
                0,
                "{:?}",
                filled.recording.first_errors
            );
            let rec = run_bounded(s).recording;
            // A native request sent to the wrong shard would come back as a WRONG_SHARD error.
            assert_eq!(rec.errors.total(), 0, "{url} p{pipeline}: {:?}", rec.first_errors);
            assert_eq!(rec.total().requests, 600, "{url} p{pipeline}");
            assert!(rec.get.requests > 100 && rec.set.requests > 100, "{url} p{pipeline}");
            assert_eq!(rec.get.misses, 0, "{url} p{pipeline}: every key was prefilled");
            assert_eq!((rec.connections_lost, rec.late), (0, 0), "{url} p{pipeline}");
        }
    }
}

#[test]
fn blocking_loop_counts_server_errors() {
    let behaviour = Behaviour {
        error_every: Some(10),
        ..Behaviour::default()
    };
    for url in blocking_targets(behaviour) {
        let s = settings(&[
            "--target",
            &url,
            "--io-loop",
            "blocking",
            "--requests",
            "500",
            "--warmup",
            "0s",
            "--connections",
            "1",
        ]);
        let rec = run_bounded(s).recording;
        assert_eq!(rec.total().requests, 500, "{url}: error replies are answered requests");
        assert_eq!(rec.errors.server, 50, "{url}: {:?}", rec.errors);
        assert_eq!(rec.errors.total(), 50, "{url}");
        assert_eq!(rec.connections_lost, 0, "{url}");
        assert!(
            rec.first_errors[0].contains("injected failure"),
            "{url}: {:?}",
            rec.first_errors
        );
    }
}

#[test]
fn blocking_loop_times_out_on_a_silent_server() {
    let behaviour = Behaviour {
        silent_from: Some(50),
        ..Behaviour::default()
    };
    for url in blocking_targets(behaviour) {
        let s = settings(&[
            "--target",
            &url,
            "--io-loop",
            "blocking",
            "--duration",
            "300ms",
            "--warmup",
            "0s",
            "--drain-timeout",
            "200ms",
            "--connections",
            "2",
        ]);
        let rec = run_bounded(s).recording;
        assert_eq!(
            rec.total().requests,
            49,
            "{url}: the replies before the silence were recorded"
        );
        assert_eq!(rec.errors.timeout, 2, "{url}: one request per connection waits in vain");
        assert_eq!(rec.errors.total(), 2, "{url}: {:?}", rec.first_errors);
        assert!(
            rec.first_errors[0].contains("unanswered"),
            "{url}: {:?}",
            rec.first_errors
        );
    }
}

#[test]
fn blocking_loop_reports_a_dropped_connection() {
    let behaviour = Behaviour {
        close_at: Some(100),
        ..Behaviour::default()
    };
    for url in blocking_targets(behaviour) {
        let s = settings(&[
            "--target",
            &url,
            "--io-loop",
            "blocking",
            "--duration",
            "300ms",
            "--warmup",
            "0s",
            "--connections",
            "2",
        ]);
        let rec = run_bounded(s).recording;
        assert_eq!(rec.connections_lost, 1, "{url}: {:?}", rec.first_errors);
        assert_eq!(rec.errors.connection, 1, "{url}: the one request in flight is lost");
        assert_eq!(rec.errors.total(), 1, "{url}: {:?}", rec.first_errors);
        assert!(
            rec.first_errors[0].contains("connection closed by the server"),
            "{url}: {:?}",
            rec.first_errors
        );
        // The other connection carried on.
        assert!(rec.total().requests > 100, "{url}: {} requests", rec.total().requests);
    }
}

#[test]
fn blocking_loop_gives_up_on_a_server_that_does_not_read() {
    // Accepts, then neither reads nor answers: a SET larger than the socket buffers never
    // finishes writing.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let held: Vec<_> = listener.incoming().flatten().collect();
        drop(held);
    });
    let url = format!("resp://127.0.0.1:{port}");
    let s = settings(&[
        "--target",
        &url,
        "--io-loop",
        "blocking",
        "--ratio",
        "0:1",
        "--value-size",
        "16000000",
        "--duration",
        "200ms",
        "--warmup",
        "0s",
        "--drain-timeout",
        "100ms",
        "--connections",
        "1",
    ]);
    let rec = run_bounded(s).recording;
    assert_eq!(rec.total().requests, 0);
    assert_eq!(rec.errors.timeout, 1, "{:?}", rec.first_errors);
    assert_eq!(rec.errors.total(), 1);
    assert!(
        rec.first_errors[0].contains("still unsent or unanswered"),
        "{:?}",
        rec.first_errors
    );
}

// ---------------------------------------------------------------------------------------------
// JSON schema
// ---------------------------------------------------------------------------------------------

/// Checks `actual` against a shape: an object of shapes (exactly these keys; a key ending in `?`
/// may be absent), a one-element array (the shape of every element), or a type name (`string`,
/// `integer`, `number`, `boolean`, `null`, alternatives joined by `|`).
fn check_shape(expected: &Value, actual: &Value, path: &str, problems: &mut Vec<String>) {
    match expected {
        Value::String(types) => {
            let ok = types.split('|').any(|t| match t {
                "string" => actual.is_string(),
                "integer" => actual.is_u64() || actual.is_i64(),
                "number" => actual.is_number(),
                "boolean" => actual.is_boolean(),
                "null" => actual.is_null(),
                other => panic!("unknown type {other:?} in the schema at {path}"),
            });
            if !ok {
                problems.push(format!("{path}: {actual} is not {types}"));
            }
        }
        Value::Object(fields) => {
            let Some(object) = actual.as_object() else {
                return problems.push(format!("{path}: not an object"));
            };
            for key in fields.keys().filter(|k| !k.ends_with('?') && !object.contains_key(*k)) {
                problems.push(format!("{path}.{key}: missing"));
            }
            let optional = |key: &String| fields.contains_key(&format!("{key}?"));
            for key in object.keys().filter(|k| !fields.contains_key(*k) && !optional(k)) {
                problems.push(format!("{path}.{key}: not in the schema"));
            }
            for (key, shape) in fields {
                if let Some(value) = object.get(key.trim_end_matches('?')) {
                    check_shape(shape, value, &format!("{path}.{key}"), problems);
                }
            }
        }
        Value::Array(element) => {
            let Some(items) = actual.as_array() else {
                return problems.push(format!("{path}: not an array"));
            };
            for (i, item) in items.iter().enumerate() {
                check_shape(&element[0], item, &format!("{path}[{i}]"), problems);
            }
        }
        other => panic!("bad shape {other} at {path}"),
    }
}

fn result_of(s: &Settings, target: &corekv_bench::target::Target, name: &str) -> TargetResult {
    let round = run_round(target, &s.workload, &s.load, None).expect("round runs");
    let mut recording = Recording::default();
    recording.merge(&round.recording);
    TargetResult::new(name, target, 1, &recording, round.measured)
}

#[test]
fn json_schema_is_stable() {
    let a = start_resp(Behaviour {
        error_every: Some(50),
        ..Behaviour::default()
    });
    let b = start_resp(Behaviour::default());
    let (url_a, url_b) = (
        format!("resp://127.0.0.1:{}", a.port),
        format!("resp://127.0.0.1:{}", b.port),
    );
    let s = settings(&[
        "--target",
        &url_a,
        "--compare",
        &url_b,
        "--compare-name",
        "b",
        "--requests",
        "300",
        "--warmup",
        "0s",
        "--rounds",
        "1",
    ]);
    let (target_b, name_b) = s.compare.clone().unwrap();
    // The optional io_loop: present in A, absent from B.
    let results = vec![
        result_of(&s, &s.target, &s.target_name).with_io_loop(IoLoop::Tokio),
        result_of(&s, &target_b, &name_b),
    ];
    let report = serde_json::to_value(Report::new(&s, results)).unwrap();
    assert_eq!(report["schema"], SCHEMA);
    assert_eq!(report["results"][0]["io_loop"], "tokio");
    assert!(report["results"][1].get("io_loop").is_none());
    assert!(report["results"][0]["first_errors"]
        .as_array()
        .is_some_and(|e| !e.is_empty()));

    let schema_path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/report-schema.json");
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(schema_path).unwrap()).unwrap();
    let mut problems = Vec::new();
    check_shape(&schema, &report, "$", &mut problems);
    assert!(
        problems.is_empty(),
        "the report no longer matches tests/report-schema.json (a schema change must bump {SCHEMA}):\n{}",
        problems.join("\n")
    );

    // Without --compare there is one result and no comparison.
    let single = settings(&["--target", &url_b, "--requests", "100", "--warmup", "0s"]);
    let result = result_of(&single, &single.target, &single.target_name);
    let report = serde_json::to_value(Report::new(&single, vec![result])).unwrap();
    assert!(report["comparison"].is_null());
    let mut single_schema = schema.clone();
    single_schema["comparison"] = Value::String("null".into());
    let mut problems = Vec::new();
    check_shape(&single_schema, &report, "$", &mut problems);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// The binary
// ---------------------------------------------------------------------------------------------

fn bench_binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_corekv-bench"))
}

#[test]
fn binary_writes_json_and_plot() {
    let server = start_resp(Behaviour::default());
    let dir = std::env::temp_dir().join(format!("corekv-bench-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let plot = dir.join("plot.svg");
    let output = bench_binary()
        .args(["--target", &format!("resp://127.0.0.1:{}", server.port)])
        .args([
            "--requests",
            "500",
            "--warmup",
            "0s",
            "--prefill",
            "--keys",
            "50",
            "--json",
            "-",
            "--plot",
        ])
        .arg(&plot)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let report: Value = serde_json::from_slice(&output.stdout).expect("stdout is the JSON report");
    assert_eq!(report["schema"], SCHEMA);
    assert_eq!(report["results"][0]["requests"], 500);
    assert_eq!(report["results"][0]["misses"], 0, "prefilled");
    assert!(
        stderr.contains("op ") && stderr.contains("p99.99"),
        "the table goes to stderr: {stderr}"
    );
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("<polyline"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn binary_compares_two_targets() {
    let a = start_resp(Behaviour::default());
    let b = start_resp(Behaviour::default());
    let output = bench_binary()
        .args([
            "--target",
            &format!("resp://127.0.0.1:{}", a.port),
            "--target-name",
            "first",
        ])
        .args([
            "--compare",
            &format!("resp://127.0.0.1:{}", b.port),
            "--compare-name",
            "second",
        ])
        .args(["--requests", "200", "--warmup", "0s", "--rounds", "2", "--json", "-"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["results"][0]["name"], "first");
    assert_eq!(report["results"][1]["name"], "second");
    assert_eq!(report["results"][1]["requests"], 400, "two rounds merged");
    assert_eq!(report["comparison"]["direction"], "b/a");
    assert!(report["comparison"]["throughput"].as_f64().is_some_and(|r| r > 0.0));
    assert!(stderr.contains("ratios are B / A = second / first"), "{stderr}");
    // Rounds run A B, then B A.
    let order: Vec<&str> = stderr.lines().filter(|l| l.starts_with("round ")).collect();
    assert!(
        order[0].contains(" A first") && order[1].contains(" B second"),
        "{order:?}"
    );
    assert!(
        order[2].contains(" B second") && order[3].contains(" A first"),
        "{order:?}"
    );
}

#[test]
fn binary_compares_the_two_loops() {
    let server = start_resp(Behaviour::default());
    let url = format!("resp://127.0.0.1:{}", server.port);
    let output = bench_binary()
        .args(["--target", &url, "--target-name", "t", "--io-loop", "tokio"])
        .args([
            "--compare",
            &url,
            "--compare-name",
            "b",
            "--compare-io-loop",
            "blocking",
        ])
        .args([
            "--connections",
            "1",
            "--requests",
            "200",
            "--warmup",
            "0s",
            "--rounds",
            "2",
        ])
        .args(["--json", "-"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["results"][0]["io_loop"], "tokio");
    assert_eq!(report["results"][1]["io_loop"], "blocking");
    assert_eq!(report["results"][1]["requests"], 400, "two rounds merged");
    assert_eq!(report["results"][1]["errors"]["total"], 0);
    let rounds: Vec<&str> = stderr.lines().filter(|l| l.starts_with("round ")).collect();
    assert!(rounds[0].contains(" A t (tokio loop): "), "{rounds:?}");
    assert!(rounds[1].contains(" B b (blocking loop): "), "{rounds:?}");
    assert!(
        stderr.contains("A tokio loop on 1 thread(s), B blocking loop"),
        "{stderr}"
    );

    // auto: blocking at one connection and pipeline 1, tokio with a window.
    for (pipeline, expected) in [("1", "blocking"), ("4", "tokio")] {
        let output = bench_binary()
            .args(["--target", &url, "--connections", "1", "--pipeline", pipeline])
            .args(["--requests", "100", "--warmup", "0s", "--json", "-"])
            .output()
            .unwrap();
        assert_eq!(
            output.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let report: Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(report["results"][0]["io_loop"], expected, "pipeline {pipeline}");
    }

    // The blocking loop cannot run an open loop: refused before anything runs.
    let refused = bench_binary()
        .args(["--target", &url, "--io-loop", "blocking", "--rate", "100"])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("--io-loop blocking runs a closed loop only"),
        "{stderr}"
    );
}

#[test]
fn binary_runs_an_rdma_target() {
    let server = start_rdma();
    let url = format!("rdma://127.0.0.1:{}", server.seed_port);
    let output = bench_binary()
        .args([
            "--target",
            &url,
            "--connections",
            "2",
            "--pipeline",
            "4",
            "--ratio",
            "1:1",
        ])
        .args([
            "--requests",
            "400",
            "--warmup",
            "0s",
            "--prefill",
            "--keys",
            "50",
            "--json",
            "-",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let report: Value = serde_json::from_slice(&output.stdout).expect("stdout is the JSON report");
    let result = &report["results"][0];
    assert_eq!(result["protocol"], "rdma");
    assert_eq!(result["target"], url);
    assert_eq!(result["requests"], 400);
    assert_eq!(result["misses"], 0, "prefilled");
    assert_eq!(result["errors"]["total"], 0);

    // A port that does not listen: exit code 2, with the session error.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let unreachable = bench_binary()
        .args(["--target", &format!("rdma://127.0.0.1:{port}"), "--duration", "1s"])
        .output()
        .unwrap();
    assert_eq!(unreachable.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&unreachable.stderr);
    assert!(stderr.contains("cannot open an rdma session"), "{stderr}");
}

#[test]
fn binary_exit_codes() {
    let bad_url = bench_binary().args(["--target", "http://x:1"]).output().unwrap();
    assert_eq!(bad_url.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad_url.stderr).contains("unknown scheme"));

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let unreachable = bench_binary()
        .args(["--target", &format!("resp://127.0.0.1:{port}"), "--duration", "1s"])
        .output()
        .unwrap();
    assert_eq!(unreachable.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("cannot connect"));

    let server = start_resp(Behaviour {
        error_every: Some(7),
        ..Behaviour::default()
    });
    let with_errors = bench_binary()
        .args(["--target", &format!("resp://127.0.0.1:{}", server.port)])
        .args(["--requests", "100", "--warmup", "0s"])
        .output()
        .unwrap();
    assert_eq!(with_errors.status.code(), Some(1), "error replies fail the run");
    assert!(String::from_utf8_lossy(&with_errors.stdout).contains("ERR injected failure"));
}
