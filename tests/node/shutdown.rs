//! Process lifecycle and CLI: readiness line, graceful shutdown (SIGTERM, SIGINT, SHUTDOWN) with
//! exit code 0, start-up failures (port taken, bad flags) and --help, --max-clients.

use crate::support::*;
use std::time::Duration;

#[test]
fn readiness_line_names_port_and_shards() {
    if corekv_only() {
        return;
    }
    for (node, shards) in [(Node::start(&[]), 2), (Node::start(&["--shards", "3"]), 3)] {
        let line = node.ready_line().to_string();
        let prefix = format!("listening on 127.0.0.1:{} (native protocol: ports ", node.port());
        assert!(line.contains(&prefix), "readiness line: {line:?}");
        assert!(
            line.contains(&format!("), {shards} shards, data dir")),
            "readiness line: {line:?}"
        );
        assert_eq!(node.native_ports().len(), shards, "one native port per shard: {line:?}");
    }
    let node3 = Node::start(&["--shards", "3"]);
    let mut c = node3.client();
    check(&mut c, "SET a 1", ok());
    check(&mut c, "GET a", bulk("1"));
}

fn assert_exit_zero(status: std::process::ExitStatus, how: &str, stderr: &str) {
    assert_eq!(
        status.code(),
        Some(0),
        "{how}: expected exit code 0, got {status:?}; stderr:\n{stderr}"
    );
}

#[test]
fn sigterm_exits_zero() {
    let mut node = Node::start(&[]);
    let mut c = node.client();
    check(&mut c, "SET k v", ok());
    let status = node.stop_with(Signal::SIGTERM);
    assert_exit_zero(status, "SIGTERM", &node.stderr());
}

#[test]
fn sigint_exits_zero() {
    let mut node = Node::start(&[]);
    let mut c = node.client();
    check(&mut c, "SET k v", ok());
    let status = node.stop_with(Signal::SIGINT);
    assert_exit_zero(status, "SIGINT", &node.stderr());
}

#[test]
fn shutdown_command_exits_zero() {
    let mut node = Node::start(&[]);
    let mut raw = node.raw();
    raw.send_cmd(&["SHUTDOWN", "bogus"]).unwrap();
    raw.expect(b"-ERR syntax error\r\n");
    node.assert_alive();
    raw.send_cmd(&["SHUTDOWN"]).unwrap();
    // Success has no reply: the connection just closes.
    raw.expect_closed(Duration::from_secs(30));
    let status = node
        .wait_exit(Duration::from_secs(30))
        .expect("SHUTDOWN did not stop the process");
    assert_exit_zero(status, "SHUTDOWN", &node.stderr());
}

#[test]
fn shutdown_nosave_exits_zero() {
    let mut node = Node::start(&[]);
    let mut c = node.client();
    let r = redis::cmd("SHUTDOWN").arg("NOSAVE").query::<redis::Value>(&mut c);
    assert!(r.is_err(), "SHUTDOWN NOSAVE replied {r:?} instead of closing");
    let status = node
        .wait_exit(Duration::from_secs(30))
        .expect("SHUTDOWN NOSAVE did not stop the process");
    assert_exit_zero(status, "SHUTDOWN NOSAVE", &node.stderr());
}

#[test]
fn sigterm_during_pipeline_sends_only_whole_replies() {
    let mut node = Node::start(&[]);
    let mut raw = node.raw();
    let mut req = Vec::new();
    for _ in 0..20_000 {
        req.extend(encode_cmd(&["INCR", "ctr"]));
    }
    let mut writer = raw.stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        use std::io::Write;
        // The server may close mid-way: errors are expected here.
        let _ = writer.write_all(&req);
    });
    raw.expect(b":1\r\n");
    // Signal while replies are still flowing; keep reading meanwhile so that a server which
    // flushes its in-flight replies before exiting is never blocked by us.
    let pid = nix::unistd::Pid::from_raw(node.pid() as i32);
    nix::sys::signal::kill(pid, Signal::SIGTERM).unwrap();
    // Whatever arrives is a gap-free sequence of complete replies, then the close.
    let mut next = 2;
    loop {
        match raw.read_reply(Duration::from_secs(30)) {
            Ok(r) => {
                assert_eq!(show(&r), show(format!(":{next}\r\n").as_bytes()));
                next += 1;
            }
            Err(RawEnd::Closed(rest)) => {
                assert!(rest.is_empty(), "partial reply before close: {rest}");
                break;
            }
            Err(RawEnd::Timeout(rest)) => panic!("connection left open after SIGTERM: {rest}"),
        }
    }
    sender.join().unwrap();
    let status = node.wait_exit(Duration::from_secs(30)).expect("no exit after SIGTERM");
    assert_exit_zero(status, "SIGTERM during pipeline", &node.stderr());
}

#[test]
fn port_already_taken_fails_with_one_stderr_line() {
    if corekv_only() {
        return;
    }
    let first = Node::start(&[]);
    let port = first.port().to_string();
    let f = match Node::try_start(&["--port", &port]) {
        Ok(_) => panic!("second node started on a port already in use ({port})"),
        Err(f) => f,
    };
    let status = f.status.expect("second node neither got ready nor exited");
    assert!(!status.success(), "exit status {status:?} should be non-zero");
    let lines: Vec<&str> = f.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one stderr line, got:\n{}", f.stderr);
    assert!(!f.stdout.contains("listening on"), "{}", f.stdout);
    first.assert_alive();
}

#[test]
fn bad_flags_fail() {
    if corekv_only() {
        return;
    }
    for args in [
        vec!["--bogus-flag"],
        vec!["--port", "notaport"],
        vec!["--port", "70000"],
        vec!["--maxmemory", "lots"],
        vec!["--maxmemory-policy", "bogus"],
        vec!["--databases", "x"],
        vec!["--shards", "x"],
    ] {
        let (status, _out, err) = run_to_exit(&args);
        assert!(!status.success(), "{args:?} exited with {status:?}");
        assert!(!err.trim().is_empty(), "{args:?}: nothing on stderr");
    }
}

#[test]
fn missing_config_file_fails_with_one_stderr_line() {
    if corekv_only() {
        return;
    }
    let dir = fresh_dir("cfg");
    let missing = dir.join("does-not-exist.toml");
    let f = match Node::try_start(&["--config", missing.to_str().unwrap()]) {
        Ok(_) => panic!("started with a missing --config file"),
        Err(f) => f,
    };
    let _ = std::fs::remove_dir_all(&dir);
    let status = f.status.expect("neither ready nor exited");
    assert!(!status.success());
    let lines: Vec<&str> = f.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one stderr line, got:\n{}", f.stderr);
}

#[test]
fn help_lists_every_flag() {
    if corekv_only() {
        return;
    }
    let (status, out, err) = run_to_exit(&["--help"]);
    assert!(status.success(), "--help exit status {status:?}: {err}");
    for flag in [
        "--bind",
        "--port",
        "--shards",
        "--data-dir",
        "--maxmemory",
        "--maxmemory-policy",
        "--databases",
        "--max-clients",
        "--no-pin",
        "--config",
    ] {
        assert!(out.contains(flag), "--help does not mention {flag}:\n{out}");
    }
}

#[test]
fn max_clients_limit() {
    let node = Node::start(&["--max-clients", "2"]);
    let mut a = node.raw();
    let mut b = node.raw();
    a.send_cmd(&["PING"]).unwrap();
    a.expect(b"+PONG\r\n");
    b.send_cmd(&["PING"]).unwrap();
    b.expect(b"+PONG\r\n");
    let mut third = node.raw();
    third.expect(b"-ERR max number of clients reached\r\n");
    third.expect_closed(Duration::from_secs(10));
    // Once a client leaves, there is room again.
    drop(a);
    let ok = wait_for(Duration::from_secs(10), || {
        let mut r = node.raw();
        let _ = r.send_cmd(&["PING"]);
        match r.read_reply(Duration::from_secs(5)) {
            Ok(reply) if reply == b"+PONG\r\n" => Some(()),
            _ => None,
        }
    });
    assert!(ok.is_some(), "no room after a client disconnected");
}

#[test]
fn unusable_data_dir_fails_with_one_stderr_line() {
    if corekv_only() {
        return;
    }
    let dir = fresh_dir("datadir");
    let file = dir.join("not-a-directory");
    std::fs::write(&file, b"x").unwrap();
    let f = match Node::try_start(&["--data-dir", file.to_str().unwrap()]) {
        Ok(_) => panic!("started with a regular file as its data directory"),
        Err(f) => f,
    };
    let _ = std::fs::remove_dir_all(&dir);
    let status = f.status.expect("neither ready nor exited");
    assert!(!status.success(), "exit status {status:?} should be non-zero");
    let lines: Vec<&str> = f.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one stderr line, got:\n{}", f.stderr);
    assert!(lines[0].contains("data directory"), "{}", lines[0]);
}

#[test]
fn config_file_settings_apply_and_flags_override_them() {
    if corekv_only() {
        return;
    }
    let dir = fresh_dir("cfgfile");
    let path = dir.join("node.toml");
    std::fs::write(
        &path,
        "databases = 4\nmaxmemory = \"64mb\"\nmaxmemory-policy = \"allkeys-lru\"\nmax-clients = 77\n",
    )
    .unwrap();
    let node = Node::start(&["--config", path.to_str().unwrap(), "--databases", "5"]);
    let mut c = node.client();
    check(&mut c, "CONFIG GET databases", bulks(&["databases", "5"]));
    check(&mut c, "CONFIG GET maxmemory", bulks(&["maxmemory", "67108864"]));
    check(
        &mut c,
        "CONFIG GET maxmemory-policy",
        bulks(&["maxmemory-policy", "allkeys-lru"]),
    );
    check(&mut c, "CONFIG GET maxclients", bulks(&["maxclients", "77"]));
    check(&mut c, "SELECT 4", ok());
    check(&mut c, "SELECT 5", err("ERR DB index is out of range"));
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
}
