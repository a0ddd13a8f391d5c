//! Starting and stopping node processes for tests, plus the small client helpers every test
//! module shares.
//!
//! * [`Node`]: a `corekv-node` process on a free loopback port with a fresh data dir, killed and
//!   cleaned up on drop. [`Node::start_redis`] runs a real `redis-server` the same way, for
//!   differential tests.
//! * [`Raw`]: a raw TCP connection for protocol tests (send bytes, read one RESP reply with a
//!   timeout, detect close).
//! * [`R`], [`q`], [`qa`]: run a command through the `redis` crate and get its reply as a plain
//!   value whose `Debug` output reads like `redis-cli`, errors included.
//!
//! Developer aid: with `COREKV_TEST_TARGET=redis` in the environment, [`Node::start`] runs a real
//! `redis-server` (with the corekv flags translated) instead of corekv, so the expectations of the
//! whole suite can be checked against Redis itself. Tests of corekv-only behaviour (CLI, start-up
//! failures) call [`corekv_only`] and return early in that mode. A normal run never skips.

#![allow(dead_code)]

use std::fmt;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

pub use nix::sys::signal::Signal;

/// Path of the binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_corekv-node");

/// How long a node may take to print its readiness line.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a node may take to exit after a shutdown request.
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Read timeout of clients handed out by [`Node::client`].
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// True when the suite was asked to run against a real redis-server (developer aid, see module doc).
pub fn target_is_redis() -> bool {
    std::env::var("COREKV_TEST_TARGET")
        .map(|v| v == "redis")
        .unwrap_or(false)
}

/// Tests of corekv-specific behaviour call this first: returns true (and the test should return)
/// only when the suite runs against redis-server on purpose.
pub fn corekv_only() -> bool {
    if target_is_redis() {
        eprintln!("COREKV_TEST_TARGET=redis: corekv-only test not run against redis-server");
        true
    } else {
        false
    }
}

/// A fresh, empty directory under the cargo target tmp dir.
pub fn fresh_dir(tag: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("corekv-{tag}-{}-{n}-{nanos}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create test data dir");
    dir
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Corekv,
    Redis,
}

/// A server process under test. Dropping it kills the process (SIGKILL if still running) and
/// removes its data dir.
pub struct Node {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    kind: Kind,
    ready_line: String,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
    exit: Option<ExitStatus>,
    /// Whether dropping the node removes its data dir (false for [`Node::start_in`] and after
    /// [`Node::keep_dir`]).
    owns_dir: bool,
}

/// Why a node did not become ready.
#[derive(Debug)]
pub struct StartFailure {
    /// `None` if it was still running when we gave up.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

fn has_flag(args: &[&str], flag: &str) -> bool {
    args.iter().any(|a| *a == flag || a.starts_with(&format!("{flag}=")))
}

/// Copies everything `r` yields into `sink`; the returned flag turns true at EOF.
fn spawn_drainer<R: Read + Send + 'static>(r: R, sink: Arc<Mutex<String>>) -> Arc<AtomicBool> {
    let done = Arc::new(AtomicBool::new(false));
    let flag = done.clone();
    thread::spawn(move || {
        let mut r = r;
        let mut buf = [0u8; 4096];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
        flag.store(true, Ordering::SeqCst);
    });
    done
}

/// Waits (bounded) for a drainer to reach EOF, which follows the process exit.
fn wait_drained(done: &AtomicBool) {
    wait_for(Duration::from_secs(5), || done.load(Ordering::SeqCst).then_some(()));
}

/// Parses the port out of `... listening on 127.0.0.1:PORT, ...`.
pub fn parse_ready_line(line: &str) -> Option<u16> {
    let at = line.find("listening on 127.0.0.1:")?;
    let rest = &line[at + "listening on 127.0.0.1:".len()..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// Parses the native ports out of `... (native protocol: ports 7380-7381) ...` (or `7380,7391`).
pub fn parse_native_ports(line: &str) -> Option<Vec<u16>> {
    let at = line.find("native protocol: ports ")?;
    let rest = &line[at + "native protocol: ports ".len()..];
    let list = &rest[..rest.find(')')?];
    if let Some((first, last)) = list.split_once('-') {
        let (first, last): (u16, u16) = (first.parse().ok()?, last.parse().ok()?);
        return Some((first..=last).collect());
    }
    list.split(',').map(|p| p.parse().ok()).collect()
}

/// Parses the RDMA ports out of `... (rdma: soft, ports 7680-7681) ...` (or `7680,7691`).
pub fn parse_rdma_ports(line: &str) -> Option<Vec<u16>> {
    let at = line.find("(rdma: ")?;
    let rest = &line[at..];
    let rest = &rest[rest.find("ports ")? + "ports ".len()..];
    let list = &rest[..rest.find(')')?];
    if let Some((first, last)) = list.split_once('-') {
        let (first, last): (u16, u16) = (first.parse().ok()?, last.parse().ok()?);
        return Some((first..=last).collect());
    }
    list.split(',').map(|p| p.parse().ok()).collect()
}

impl Node {
    /// Starts `corekv-node --port 0 --bind 127.0.0.1 --no-pin --data-dir <fresh> [--shards 2]
    /// ARGS` and waits for its readiness line. Panics (with its stderr) if it does not get ready.
    pub fn start(args: &[&str]) -> Node {
        if target_is_redis() {
            return Node::start_redis(args);
        }
        match Node::try_start(args) {
            Ok(node) => node,
            Err(f) => panic!(
                "corekv-node {args:?} did not become ready: exit status {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                f.status, f.stdout, f.stderr
            ),
        }
    }

    /// Like [`Node::start`], but returns how it failed instead of panicking.
    /// Defaults are added only for flags that `args` does not set itself.
    pub fn try_start(args: &[&str]) -> Result<Node, StartFailure> {
        Node::spawn(fresh_dir("node"), true, args)
    }

    /// Like [`Node::start`], but on the existing data dir `dir` (unless `args` has `--data-dir`),
    /// which the node does not own: it is kept when the node is dropped, for restarts on the same
    /// data. Persistence tests only (corekv).
    pub fn start_in(dir: &Path, args: &[&str]) -> Node {
        match Node::try_start_in(dir, args) {
            Ok(node) => node,
            Err(f) => panic!(
                "corekv-node {args:?} on {} did not become ready: exit status {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                dir.display(),
                f.status,
                f.stdout,
                f.stderr
            ),
        }
    }

    /// Like [`Node::start_in`], but returns how it failed instead of panicking. The dir is kept
    /// either way.
    pub fn try_start_in(dir: &Path, args: &[&str]) -> Result<Node, StartFailure> {
        assert!(
            !target_is_redis(),
            "Node::start_in is corekv-only (call corekv_only() first)"
        );
        Node::spawn(dir.to_path_buf(), false, args)
    }

    fn spawn(dir: PathBuf, owns_dir: bool, args: &[&str]) -> Result<Node, StartFailure> {
        let dir_s = dir.to_str().unwrap().to_string();
        let mut full: Vec<String> = Vec::new();
        if !has_flag(args, "--port") {
            full.extend(["--port".into(), "0".into()]);
        }
        if !has_flag(args, "--bind") {
            full.extend(["--bind".into(), "127.0.0.1".into()]);
        }
        full.push("--no-pin".into());
        if !has_flag(args, "--data-dir") {
            full.extend(["--data-dir".into(), dir_s.clone()]);
        }
        if !has_flag(args, "--shards") {
            full.extend(["--shards".into(), "2".into()]);
        }
        // A node writes its log segments full of zeros when it creates them; small segments keep
        // the many short-lived test nodes cheap on disk.
        if !has_flag(args, "--segment-size") {
            full.extend(["--segment-size".into(), "4mb".into()]);
        }
        full.extend(args.iter().map(|s| s.to_string()));

        let mut child = Command::new(BIN)
            .args(&full)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {BIN}: {e}"));

        let stderr = Arc::new(Mutex::new(String::new()));
        let stderr_done = spawn_drainer(child.stderr.take().unwrap(), stderr.clone());

        // Stdout: a thread forwards lines until EOF, so the child never blocks on a full pipe.
        let stdout_lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel::<String>();
        {
            let out = child.stdout.take().unwrap();
            let lines = stdout_lines.clone();
            thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    lines.lock().unwrap().push(line.clone());
                    let _ = tx.send(line);
                }
            });
        }

        let deadline = Instant::now() + READY_TIMEOUT;
        let mut found: Option<(u16, String)> = None;
        let mut status = None;
        while Instant::now() < deadline {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(line) => {
                    if let Some(port) = parse_ready_line(&line) {
                        found = Some((port, line));
                        break;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // stdout closed: the process is exiting; wait for it below.
                    let t = Instant::now() + Duration::from_secs(10);
                    while Instant::now() < t {
                        if let Some(s) = child.try_wait().unwrap() {
                            status = Some(s);
                            break;
                        }
                        thread::sleep(Duration::from_millis(10));
                    }
                    break;
                }
            }
            if let Some(s) = child.try_wait().unwrap() {
                // Drain what is left on the channel: the readiness line may be there.
                while let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
                    if parse_ready_line(&line).is_some() {
                        break;
                    }
                }
                status = Some(s);
                break;
            }
        }
        match found {
            Some((port, line)) => Ok(Node {
                child: Some(child),
                port,
                dir,
                kind: Kind::Corekv,
                ready_line: line,
                stdout: stdout_lines,
                stderr,
                exit: None,
                owns_dir,
            }),
            None => {
                if status.is_none() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                // Let the drainer collect the last bytes (EOF follows the exit).
                wait_drained(&stderr_done);
                let f = StartFailure {
                    status,
                    stdout: stdout_lines.lock().unwrap().join("\n"),
                    stderr: stderr.lock().unwrap().clone(),
                };
                if owns_dir {
                    let _ = std::fs::remove_dir_all(&dir);
                }
                Err(f)
            }
        }
    }

    /// Runs a real `redis-server` (no persistence) on a free port, translating the corekv flags
    /// that have a Redis equivalent (`--maxmemory`, `--maxmemory-policy`, `--databases`,
    /// `--max-clients`). Panics with a clear message if redis-server is not installed.
    pub fn start_redis(args: &[&str]) -> Node {
        match Command::new("redis-server").arg("--version").output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => panic!("redis-server --version failed: {o:?}"),
            Err(e) => panic!(
                "redis-server is required by this test but could not be run ({e}). \
                 Install Redis 7 (e.g. `apt-get install redis-server`); CI installs it."
            ),
        }
        let mut extra: Vec<String> = Vec::new();
        let mut i = 0;
        while i < args.len() {
            let a = args[i];
            let val = args.get(i + 1).map(|s| s.to_string());
            match a {
                "--maxmemory" | "--maxmemory-policy" | "--databases" => {
                    extra.push(a.to_string());
                    extra.push(val.expect("flag value"));
                    i += 2;
                }
                "--max-clients" => {
                    extra.push("--maxclients".into());
                    extra.push(val.expect("flag value"));
                    i += 2;
                }
                "--shards" | "--data-dir" | "--config" | "--bind" | "--port" => i += 2,
                _ => i += 1,
            }
        }
        let mut last_err = String::new();
        for _attempt in 0..5 {
            let port = free_port();
            let dir = fresh_dir("redis");
            let mut child = Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    dir.to_str().unwrap(),
                    "--logfile",
                    "",
                    "--protected-mode",
                    "no",
                ])
                .args(&extra)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn redis-server");
            let stdout = Arc::new(Mutex::new(String::new()));
            let stderr = Arc::new(Mutex::new(String::new()));
            spawn_drainer(child.stdout.take().unwrap(), stdout.clone());
            spawn_drainer(child.stderr.take().unwrap(), stderr.clone());
            let deadline = Instant::now() + READY_TIMEOUT;
            let mut ready = false;
            while Instant::now() < deadline {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut buf = [0u8; 64];
                    if s.write_all(b"PING\r\n").is_ok() {
                        if let Ok(n) = s.read(&mut buf) {
                            if &buf[..n] == b"+PONG\r\n" {
                                ready = true;
                                break;
                            }
                        }
                    }
                }
                thread::sleep(Duration::from_millis(20));
            }
            if ready {
                return Node {
                    child: Some(child),
                    port,
                    dir,
                    kind: Kind::Redis,
                    ready_line: String::new(),
                    stdout: Arc::new(Mutex::new(Vec::new())),
                    stderr,
                    exit: None,
                    owns_dir: true,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
            last_err = format!("{}{}", stdout.lock().unwrap(), stderr.lock().unwrap());
            let _ = std::fs::remove_dir_all(&dir);
        }
        panic!("redis-server did not start: {last_err}");
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Each shard's native-protocol port, shard 0 first (from the readiness line).
    pub fn native_ports(&self) -> Vec<u16> {
        parse_native_ports(&self.ready_line).unwrap_or_else(|| panic!("no native ports in {:?}", self.ready_line))
    }

    /// Shard 0's native-protocol address: a seed for the client library.
    pub fn native_addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.native_ports()[0]))
    }

    /// Each shard's RDMA handshake port, shard 0 first (from the readiness line; `--rdma` on).
    pub fn rdma_ports(&self) -> Vec<u16> {
        parse_rdma_ports(&self.ready_line).unwrap_or_else(|| panic!("no rdma ports in {:?}", self.ready_line))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("process").id()
    }

    pub fn data_dir(&self) -> &Path {
        &self.dir
    }

    /// The readiness line as printed (empty for redis-server).
    pub fn ready_line(&self) -> &str {
        &self.ready_line
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// A new connection through the `redis` crate, with a generous read timeout.
    pub fn client(&self) -> redis::Connection {
        let client = redis::Client::open(self.url()).expect("client");
        let con = client
            .get_connection_with_timeout(Duration::from_secs(10))
            .unwrap_or_else(|e| {
                // A process that exited but was not reaped yet shows as a zombie (state Z).
                let state = self.child.as_ref().and_then(|c| {
                    let stat = std::fs::read_to_string(format!("/proc/{}/stat", c.id())).ok()?;
                    stat.rsplit(')').next()?.split_whitespace().next().map(str::to_string)
                });
                panic!(
                    "connect to {}: {e} (process state: {state:?}); stderr:\n{}",
                    self.url(),
                    self.stderr()
                )
            });
        con.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
        con.set_write_timeout(Some(CLIENT_TIMEOUT)).unwrap();
        con
    }

    /// A raw TCP connection.
    pub fn raw(&self) -> Raw {
        Raw::connect(self.port)
    }

    /// Everything the process has written to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Stdout lines read so far (corekv only).
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// The server is alive and serving on every shard: PING answers PONG on several brand-new
    /// connections (which may be spread over shards), and a command touching keys on every shard
    /// answers.
    pub fn assert_alive(&self) {
        for i in 0..4 {
            let mut raw = Raw::connect(self.port);
            raw.send(b"*1\r\n$4\r\nPING\r\n").unwrap();
            let r = raw.read_reply(Duration::from_secs(20));
            assert_eq!(
                r.as_deref().map(show),
                Ok("+PONG\\r\\n".to_string()),
                "server did not answer PING on new connection #{i} (crashed or a shard died?); stderr:\n{}",
                self.stderr()
            );
            if i == 0 {
                let mut cmd = vec!["EXISTS".to_string()];
                cmd.extend(spread_keys("alive"));
                raw.send_cmd(&cmd).unwrap();
                let r = raw.read_reply(Duration::from_secs(20));
                assert!(
                    matches!(&r, Ok(b) if b.first() == Some(&b':')),
                    "EXISTS over keys on every shard did not answer: {r:?}; stderr:\n{}",
                    self.stderr()
                );
            }
        }
    }

    /// Sends `signal` and waits for the process to exit; returns its exit status.
    pub fn stop_with(&mut self, signal: Signal) -> ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        nix::sys::signal::kill(pid, signal).expect("send signal");
        self.wait_exit(EXIT_TIMEOUT)
            .unwrap_or_else(|| panic!("process did not exit within {EXIT_TIMEOUT:?} of {signal}"))
    }

    /// SIGKILL: the process dies at once, without any shutdown work. Returns its exit status.
    pub fn kill9(&mut self) -> ExitStatus {
        self.stop_with(Signal::SIGKILL)
    }

    /// Keep the data dir when this node is dropped (the caller cleans it up, e.g. with a
    /// [`TestDir`]).
    pub fn keep_dir(&mut self) {
        self.owns_dir = false;
    }

    /// Waits up to `timeout` for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Some(s) = self.exit {
            return Some(s);
        }
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("process");
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                self.exit = Some(s);
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        if self.exit.is_some() {
            return false;
        }
        match self.child.as_mut().unwrap().try_wait().unwrap() {
            Some(s) => {
                self.exit = Some(s);
                false
            }
            None => true,
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.exit.is_none() {
                if let Ok(None) = child.try_wait() {
                    let _ = child.kill(); // SIGKILL
                }
                let _ = child.wait();
            }
        }
        if self.owns_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A fresh directory (see [`fresh_dir`]) removed with everything in it on drop: the data dir that
/// several nodes share one after the other in persistence tests.
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    pub fn new(tag: &str) -> TestDir {
        TestDir { path: fresh_dir(tag) }
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The shard directories (`shard-NNN`) of a data dir, sorted.
pub fn shard_dirs(data_dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(data_dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.is_dir() && file_name(p).starts_with("shard-"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The log segment files (`shard-NNN/segment-N.log`) of a data dir, sorted by shard then number.
pub fn segment_files(data_dir: &Path) -> Vec<PathBuf> {
    files_matching(data_dir, "segment-", ".log")
}

/// The snapshot files (`shard-NNN/snapshot-N.snap`) of a data dir, sorted by shard then number.
pub fn snapshot_files(data_dir: &Path) -> Vec<PathBuf> {
    files_matching(data_dir, "snapshot-", ".snap")
}

fn files_matching(data_dir: &Path, prefix: &str, suffix: &str) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for shard in shard_dirs(data_dir) {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&shard)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                let n = file_name(p);
                p.is_file() && n.starts_with(prefix) && n.ends_with(suffix)
            })
            .collect();
        // Zero-padded numbers: lexical order is numeric order.
        files.sort();
        v.extend(files);
    }
    v
}

/// The last component of a path, as a string.
pub fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Total size in bytes of the regular files under `path` (recursively).
pub fn dir_size(path: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(path) {
        for e in rd.filter_map(|e| e.ok()) {
            let p = e.path();
            match e.metadata() {
                Ok(m) if m.is_dir() => total += dir_size(&p),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// A currently free TCP port on 127.0.0.1 (for redis-server, which has no `--port 0`).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Runs the binary with `args` exactly as given (no defaults) and waits for it to exit.
/// Panics if it is still running after 30 s.
pub fn run_to_exit(args: &[&str]) -> (ExitStatus, String, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn corekv-node");
    let out = Arc::new(Mutex::new(String::new()));
    let err = Arc::new(Mutex::new(String::new()));
    let out_done = spawn_drainer(child.stdout.take().unwrap(), out.clone());
    let err_done = spawn_drainer(child.stderr.take().unwrap(), err.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "corekv-node {args:?} still running after 30 s; stdout: {} stderr: {}",
                out.lock().unwrap(),
                err.lock().unwrap()
            );
        }
        thread::sleep(Duration::from_millis(10));
    };
    // The pipes close at exit; let the drainers finish.
    wait_drained(&out_done);
    wait_drained(&err_done);
    let o = out.lock().unwrap().clone();
    let e = err.lock().unwrap().clone();
    (status, o, e)
}

// ------------------------------------------------------------------------------------------------
// Replies through the redis crate.

/// A reply, with server errors as values. `Debug` prints it like redis-cli does.
#[derive(Clone, PartialEq)]
pub enum R {
    Nil,
    Int(i64),
    Bulk(Vec<u8>),
    /// A simple string (`+OK` is `Simple("OK")`).
    Simple(String),
    Arr(Vec<R>),
    /// A server error, full text: `"ERR syntax error"`.
    Err(String),
    Map(Vec<(R, R)>),
    Set(Vec<R>),
    Double(f64),
    Bool(bool),
    /// Anything else (verbatim strings, big numbers, pushes, attributes), as text.
    Other(String),
}

impl fmt::Debug for R {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            R::Nil => write!(f, "(nil)"),
            R::Int(n) => write!(f, "(integer) {n}"),
            R::Bulk(b) => write!(f, "{:?}", String::from_utf8_lossy(b)),
            R::Simple(s) => write!(f, "+{s}"),
            R::Arr(v) => f.debug_list().entries(v).finish(),
            R::Err(e) => write!(f, "(error) {e}"),
            R::Map(m) => f.debug_map().entries(m.iter().map(|(k, v)| (k, v))).finish(),
            R::Set(s) => {
                write!(f, "set")?;
                f.debug_set().entries(s).finish()
            }
            R::Double(d) => write!(f, "(double) {d}"),
            R::Bool(b) => write!(f, "(bool) {b}"),
            R::Other(o) => write!(f, "(other) {o}"),
        }
    }
}

fn server_error_text(code: &str, detail: Option<&str>) -> String {
    match detail {
        Some(d) => format!("{code} {d}"),
        None => code.to_string(),
    }
}

impl From<redis::Value> for R {
    fn from(v: redis::Value) -> R {
        use redis::Value as V;
        match v {
            V::Nil => R::Nil,
            V::Int(n) => R::Int(n),
            V::BulkString(b) => R::Bulk(b),
            V::Array(a) => R::Arr(a.into_iter().map(R::from).collect()),
            V::SimpleString(s) => R::Simple(s),
            V::Okay => R::Simple("OK".into()),
            V::Map(m) => R::Map(m.into_iter().map(|(k, v)| (k.into(), v.into())).collect()),
            V::Set(s) => R::Set(s.into_iter().map(R::from).collect()),
            V::Double(d) => R::Double(d),
            V::Boolean(b) => R::Bool(b),
            V::ServerError(e) => R::Err(server_error_text(e.code(), e.details())),
            V::VerbatimString { format, text } => R::Other(format!("verbatim {format:?} {text}")),
            other => R::Other(format!("{other:?}")),
        }
    }
}

/// Converts a `redis` crate result into a reply; I/O errors panic (the connection is gone).
pub fn to_r(res: redis::RedisResult<redis::Value>) -> R {
    match res {
        Ok(v) => v.into(),
        Err(e) => {
            if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
                panic!("connection error: {e}");
            }
            match e.code() {
                Some(code) => R::Err(server_error_text(code, e.detail())),
                None => R::Err(format!("{e}")),
            }
        }
    }
}

/// Like [`to_r`] but returns I/O errors instead of panicking.
pub fn try_r(res: redis::RedisResult<redis::Value>) -> Result<R, redis::RedisError> {
    match res {
        Err(e) if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() => Err(e),
        other => Ok(to_r(other)),
    }
}

/// Splits a command line like redis-cli: whitespace separates arguments, `"..."` quotes (with
/// `\"`, `\\`, `\r`, `\n`, `\xHH` escapes) allow spaces and empty arguments.
pub fn split_line(line: &str) -> Vec<Vec<u8>> {
    let b = line.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        let mut arg = Vec::new();
        if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' && i + 1 < b.len() {
                    i += 1;
                    match b[i] {
                        b'n' => arg.push(b'\n'),
                        b'r' => arg.push(b'\r'),
                        b't' => arg.push(b'\t'),
                        b'x' => {
                            let h = std::str::from_utf8(&b[i + 1..i + 3]).unwrap();
                            arg.push(u8::from_str_radix(h, 16).unwrap());
                            i += 2;
                        }
                        c => arg.push(c),
                    }
                } else {
                    arg.push(b[i]);
                }
                i += 1;
            }
            assert!(i < b.len(), "unterminated quote in test command line {line:?}");
            i += 1;
        } else {
            while i < b.len() && !b[i].is_ascii_whitespace() {
                arg.push(b[i]);
                i += 1;
            }
        }
        out.push(arg);
    }
    out
}

/// Runs a command given as a redis-cli-like line (see [`split_line`]).
pub fn q(con: &mut redis::Connection, line: &str) -> R {
    qa(con, &split_line(line))
}

/// Runs a command given as separate (binary) arguments.
pub fn qa<A: AsRef<[u8]>>(con: &mut redis::Connection, args: &[A]) -> R {
    match try_r(cmd_of(args).query::<redis::Value>(con)) {
        Ok(r) => r,
        Err(e) => {
            let shown: Vec<String> = args
                .iter()
                .take(8)
                .map(|a| show(&a.as_ref()[..a.as_ref().len().min(60)]))
                .collect();
            panic!("connection error on command {shown:?}: {e} (did the server close the connection or crash?)")
        }
    }
}

/// Builds a `redis::Cmd` from arguments.
pub fn cmd_of<A: AsRef<[u8]>>(args: &[A]) -> redis::Cmd {
    assert!(!args.is_empty());
    let mut c = redis::cmd(std::str::from_utf8(args[0].as_ref()).expect("command name"));
    for a in &args[1..] {
        c.arg(a.as_ref());
    }
    c
}

/// Asserts that `line` replies `expected`, naming the command on failure.
#[track_caller]
pub fn check(con: &mut redis::Connection, line: &str, expected: R) {
    let got = q(con, line);
    assert_eq!(got, expected, "command: {line}");
}

pub fn ok() -> R {
    R::Simple("OK".into())
}
pub fn simple(s: &str) -> R {
    R::Simple(s.into())
}
pub fn int(n: i64) -> R {
    R::Int(n)
}
pub fn bulk(s: impl AsRef<[u8]>) -> R {
    R::Bulk(s.as_ref().to_vec())
}
pub fn nil() -> R {
    R::Nil
}
pub fn err(s: &str) -> R {
    R::Err(s.into())
}
pub fn arr(v: Vec<R>) -> R {
    R::Arr(v)
}
/// An array of bulk strings.
pub fn bulks(v: &[&str]) -> R {
    R::Arr(v.iter().map(bulk).collect())
}

impl R {
    /// The integer, or panics.
    #[track_caller]
    pub fn as_int(&self) -> i64 {
        match self {
            R::Int(n) => *n,
            other => panic!("expected an integer reply, got {other:?}"),
        }
    }
    /// The bytes of a bulk or simple string, or panics.
    #[track_caller]
    pub fn as_bytes(&self) -> Vec<u8> {
        match self {
            R::Bulk(b) => b.clone(),
            R::Simple(s) => s.as_bytes().to_vec(),
            R::Other(s) => s.as_bytes().to_vec(),
            other => panic!("expected a string reply, got {other:?}"),
        }
    }
    #[track_caller]
    pub fn as_string(&self) -> String {
        String::from_utf8_lossy(&self.as_bytes()).into_owned()
    }
    /// The elements of an array or set, or panics.
    #[track_caller]
    pub fn as_arr(&self) -> Vec<R> {
        match self {
            R::Arr(v) | R::Set(v) => v.clone(),
            other => panic!("expected an array reply, got {other:?}"),
        }
    }
    /// An array of strings as sorted Strings.
    #[track_caller]
    pub fn sorted_strings(&self) -> Vec<String> {
        let mut v: Vec<String> = self.as_arr().iter().map(|r| r.as_string()).collect();
        v.sort();
        v
    }
    /// The value for `key` in a map reply, or in a flat RESP2 array of key/value pairs.
    #[track_caller]
    pub fn field(&self, key: &str) -> Option<R> {
        match self {
            R::Map(m) => m.iter().find(|(k, _)| k.as_string() == key).map(|(_, v)| v.clone()),
            R::Arr(v) => v
                .chunks(2)
                .find(|c| c.len() == 2 && c[0].as_string() == key)
                .map(|c| c[1].clone()),
            other => panic!("expected a map reply, got {other:?}"),
        }
    }
    pub fn is_err(&self) -> bool {
        matches!(self, R::Err(_))
    }
}

/// `INFO [section]` parsed into (field, value) pairs, plus the section headers seen.
pub struct Info {
    pub text: String,
}

impl Info {
    pub fn get(con: &mut redis::Connection, section: &str) -> Info {
        let r = if section.is_empty() {
            q(con, "INFO")
        } else {
            q(con, &format!("INFO {section}"))
        };
        Info { text: r.as_string() }
    }
    pub fn field(&self, name: &str) -> Option<String> {
        self.text.lines().find_map(|l| {
            let l = l.trim_end_matches('\r');
            l.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(':'))
                .map(|v| v.to_string())
        })
    }
    #[track_caller]
    pub fn int(&self, name: &str) -> i64 {
        let v = self
            .field(name)
            .unwrap_or_else(|| panic!("INFO has no field {name:?}:\n{}", self.text));
        v.parse()
            .unwrap_or_else(|_| panic!("INFO field {name} = {v:?} is not an integer"))
    }
    /// Section headers (`# Server` → `Server`).
    pub fn sections(&self) -> Vec<String> {
        self.text
            .lines()
            .filter_map(|l| l.strip_prefix("# ").map(|s| s.trim().to_string()))
            .collect()
    }
    /// `dbN:keys=K,expires=E,...` → (K, E).
    pub fn db_keys(&self, db: usize) -> Option<(i64, i64)> {
        let v = self.field(&format!("db{db}"))?;
        let mut keys = None;
        let mut expires = None;
        for part in v.split(',') {
            if let Some(k) = part.strip_prefix("keys=") {
                keys = k.trim().parse().ok();
            }
            if let Some(e) = part.strip_prefix("expires=") {
                expires = e.trim().parse().ok();
            }
        }
        Some((keys?, expires?))
    }
}

/// Polls `f` every 10 ms until it returns `Some`, for at most `timeout`.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Twenty distinct keys: with two shards, they are all but certain to span both.
pub fn spread_keys(prefix: &str) -> Vec<String> {
    (0..20).map(|i| format!("{prefix}:{i}:{}", i * 7919)).collect()
}

// ------------------------------------------------------------------------------------------------
// Raw protocol connections.

/// Printable form of raw bytes (`\r\n` shown escaped).
pub fn show(b: &[u8]) -> String {
    let mut s = String::new();
    for &c in b.iter().take(300) {
        match c {
            b'\r' => s.push_str("\\r"),
            b'\n' => s.push_str("\\n"),
            0x20..=0x7e => s.push(c as char),
            _ => s.push_str(&format!("\\x{c:02x}")),
        }
    }
    if b.len() > 300 {
        s.push_str(&format!("...({} bytes)", b.len()));
    }
    s
}

/// What a raw read ended with, when it did not produce a complete reply.
#[derive(Debug, PartialEq, Eq)]
pub enum RawEnd {
    /// The server closed the connection (EOF or reset); bytes of an incomplete reply, if any.
    Closed(String),
    /// Nothing complete arrived in time; bytes received so far.
    Timeout(String),
}

/// A raw TCP connection for protocol-level tests.
pub struct Raw {
    pub stream: TcpStream,
    buf: Vec<u8>,
    closed: bool,
}

/// Length of the first complete RESP2/RESP3 reply in `b`, if complete.
pub fn reply_len(b: &[u8]) -> Option<usize> {
    fn line_end(b: &[u8], from: usize) -> Option<usize> {
        b[from..].windows(2).position(|w| w == b"\r\n").map(|p| from + p)
    }
    fn one(b: &[u8], at: usize) -> Option<usize> {
        let t = *b.get(at)?;
        let e = line_end(b, at)?;
        let header = std::str::from_utf8(&b[at + 1..e]).ok();
        let after = e + 2;
        match t {
            b'+' | b'-' | b':' | b'_' | b'#' | b',' | b'(' => Some(after),
            b'$' | b'=' | b'!' => {
                let n: i64 = header?.parse().ok()?;
                if n < 0 {
                    Some(after)
                } else {
                    let end = after + n as usize + 2;
                    (b.len() >= end).then_some(end)
                }
            }
            b'*' | b'~' | b'>' | b'%' | b'|' => {
                let n: i64 = header?.parse().ok()?;
                let items = if t == b'%' || t == b'|' { n * 2 } else { n };
                let mut pos = after;
                for _ in 0..items.max(0) {
                    pos = one(b, pos)?;
                }
                if t == b'|' {
                    // An attribute precedes the actual reply.
                    return one(b, pos);
                }
                Some(pos)
            }
            // Not RESP: treat the line as one unit so tests can see it.
            _ => Some(after),
        }
    }
    one(b, 0)
}

impl Raw {
    pub fn connect(port: u16) -> Raw {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("raw connect");
        stream.set_nodelay(true).unwrap();
        Raw {
            stream,
            buf: Vec::new(),
            closed: false,
        }
    }

    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Sends a command as a RESP multibulk.
    pub fn send_cmd<A: AsRef<[u8]>>(&mut self, args: &[A]) -> std::io::Result<()> {
        self.send(&encode_cmd(args))
    }

    fn fill(&mut self, deadline: Instant) -> Result<(), RawEnd> {
        if self.closed {
            return Err(RawEnd::Closed(show(&self.buf)));
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(RawEnd::Timeout(show(&self.buf)));
        }
        self.stream
            .set_read_timeout(Some((deadline - now).max(Duration::from_millis(1))))
            .unwrap();
        let mut tmp = [0u8; 65536];
        match self.stream.read(&mut tmp) {
            Ok(0) => {
                self.closed = true;
                Err(RawEnd::Closed(show(&self.buf)))
            }
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                Ok(())
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                Err(RawEnd::Timeout(show(&self.buf)))
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => Ok(()),
            Err(_) => {
                // Reset or another error: the connection is gone.
                self.closed = true;
                Err(RawEnd::Closed(show(&self.buf)))
            }
        }
    }

    /// Reads one complete reply (raw bytes) within `timeout`.
    pub fn read_reply(&mut self, timeout: Duration) -> Result<Vec<u8>, RawEnd> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(n) = reply_len(&self.buf) {
                let r: Vec<u8> = self.buf.drain(..n).collect();
                return Ok(r);
            }
            self.fill(deadline)?;
        }
    }

    /// Reads one reply and asserts it equals `expected` byte for byte.
    #[track_caller]
    pub fn expect(&mut self, expected: &[u8]) {
        let got = self.read_reply(Duration::from_secs(20));
        assert_eq!(got.as_deref().map(show), Ok(show(expected)), "raw reply mismatch");
    }

    /// Asserts the server closes the connection within `timeout` with nothing more sent.
    #[track_caller]
    pub fn expect_closed(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.buf.is_empty() {
                panic!("expected the connection to close, got more bytes: {}", show(&self.buf));
            }
            match self.fill(deadline) {
                Ok(()) => continue,
                Err(RawEnd::Closed(rest)) if rest.is_empty() => return,
                Err(RawEnd::Closed(rest)) => {
                    panic!("expected the connection to close, got more bytes first: {rest}")
                }
                Err(RawEnd::Timeout(_)) => {
                    panic!("connection still open {timeout:?} after it should have closed")
                }
            }
        }
    }

    /// Asserts nothing arrives (and the connection stays open) for `wait`.
    #[track_caller]
    pub fn expect_silence(&mut self, wait: Duration) {
        let deadline = Instant::now() + wait;
        loop {
            match self.fill(deadline) {
                Ok(()) => {}
                Err(RawEnd::Timeout(got)) => {
                    assert!(got.is_empty(), "expected no reply, got {got}");
                    return;
                }
                Err(RawEnd::Closed(got)) => {
                    panic!("expected the connection to stay open; it closed (after {got:?})")
                }
            }
        }
    }

    /// Asserts `expected` arrives, then the connection closes.
    #[track_caller]
    pub fn expect_then_closed(&mut self, expected: &[u8]) {
        self.expect(expected);
        self.expect_closed(Duration::from_secs(20));
    }

    pub fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }
}

/// RESP multibulk encoding of a command.
pub fn encode_cmd<A: AsRef<[u8]>>(args: &[A]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        let a = a.as_ref();
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

// ------------------------------------------------------------------------------------------------
// Shared expectations.

pub const NOT_INT: &str = "ERR value is not an integer or out of range";

/// Redis's reply to a command called with the wrong number of arguments.
pub fn wrong_args(cmd: &str) -> R {
    err(&format!("ERR wrong number of arguments for '{cmd}' command"))
}

/// The wall clock in whole seconds, to compare with EXPIRETIME and TIME.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A node stopped with SIGSTOP (every thread stopped when `stop` returns), resumed with SIGCONT
/// when dropped, even if the test fails while it is stopped.
pub struct Stopped(nix::unistd::Pid);

impl Stopped {
    pub fn stop(node: &Node) -> Stopped {
        let pid = nix::unistd::Pid::from_raw(node.pid() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
        // The signal is delivered asynchronously: wait until every thread is stopped.
        let all_stopped = || -> Option<()> {
            let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
            for task in tasks {
                let stat = std::fs::read_to_string(task.ok()?.path().join("stat")).ok()?;
                let state = stat.rsplit(')').next()?.split_whitespace().next()?;
                if state != "T" && state != "t" {
                    return None;
                }
            }
            Some(())
        };
        wait_for(Duration::from_secs(10), all_stopped).expect("the node's threads stop");
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGCONT);
    }
}
