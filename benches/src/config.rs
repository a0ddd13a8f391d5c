//! The command line ([`Cli`]) and the validated settings it turns into: the [`Workload`] (which
//! requests) and the [`LoadConfig`] (how they are sent). Parsing of the small value syntaxes
//! (`9:1`, `32-1024`, `10s`) lives here too, so every bad argument is refused before any socket
//! is opened.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use corekv_net::client::rdma::RdmaProvider;
#[cfg(feature = "rdma-verbs")]
use corekv_net::client::rdma::VerbsConfig;
use serde::Serialize;

use crate::target::{Protocol, Target};

/// `corekv-bench`: latency benchmark for RESP servers (corekv, Redis, Valkey) and corekv's native
/// protocol (over TCP or RDMA), closed or open loop, without coordinated omission.
#[derive(Parser, Debug, Clone)]
#[command(name = "corekv-bench", version)]
pub struct Cli {
    /// Server to load: resp://HOST:PORT (any RESP server), native://HOST:PORT (a corekv node's
    /// native port: any shard's port serves as the seed) or rdma://HOST:PORT (the native protocol
    /// over RDMA, a node started with --rdma soft or verbs, see --rdma-provider: any shard's
    /// --rdma-port serves as the seed).
    #[arg(long, value_parser = Target::parse)]
    pub target: Target,
    /// Second server, run alternately with --target (same workload); ratios are printed as
    /// compare / target (B / A).
    #[arg(long, value_parser = Target::parse, value_name = "TARGET_B")]
    pub compare: Option<Target>,
    /// Name of --target in tables, JSON and plots (default: its URL).
    #[arg(long, value_name = "NAME")]
    pub target_name: Option<String>,
    /// Name of --compare in tables, JSON and plots (default: its URL).
    #[arg(long, value_name = "NAME")]
    pub compare_name: Option<String>,
    /// The load loop of TCP targets (resp://, native://): tokio (a writer and a reader task per
    /// socket on --threads runtimes), blocking (one thread per connection, blocking sockets; closed
    /// loop only) or auto: blocking for a closed loop at --pipeline 1 with at most 4 connections,
    /// tokio otherwise. rdma:// always runs its own blocking loop.
    #[arg(long, value_enum, default_value_t = IoLoop::Auto)]
    pub io_loop: IoLoop,
    /// The load loop of --compare (default: as --io-loop), so one run can compare the two loops.
    #[arg(long, value_enum, value_name = "IO_LOOP")]
    pub compare_io_loop: Option<IoLoop>,
    /// Measured runs per target, merged (default 1; 3 with --compare, in the order A B, B A, A B...).
    #[arg(long, value_name = "N")]
    pub rounds: Option<u32>,

    /// Reads to writes (GET:SET), e.g. 1:1, 9:1, 0:1.
    #[arg(long, default_value = "9:1", value_parser = Ratio::parse)]
    pub ratio: Ratio,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    pub keys: u64,
    /// How keys are picked.
    #[arg(long, value_enum, default_value_t = KeyPattern::Uniform)]
    pub key_pattern: KeyPattern,
    /// Zipf exponent for --key-pattern zipf (0 is uniform, 0.99 is the YCSB default).
    #[arg(long, default_value_t = 0.99, value_name = "S")]
    pub zipf_skew: f64,
    /// Prefix of every key; keys are PREFIX + a zero-padded index (all keys have one length).
    #[arg(long, default_value = "key:", value_name = "PREFIX")]
    pub key_prefix: String,
    /// Value size in bytes of SETs: N, or a range N-M picked uniformly per request.
    #[arg(long, default_value = "100", value_parser = ValueSize::parse, value_name = "N|N-M")]
    pub value_size: ValueSize,
    /// Seed of the key, operation and value-size choices (each connection derives its own).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// Requests outstanding per connection (the pipeline window).
    #[arg(long, default_value_t = 1, value_name = "D")]
    pub pipeline: u32,
    /// Connections (with native://, each connection has one socket per shard; with rdma://, one
    /// RDMA session per shard).
    #[arg(long, default_value_t = 8, value_name = "C")]
    pub connections: u32,
    /// Load-generator threads of the tokio loop, each a single-threaded tokio runtime driving its
    /// share of the connections (capped at --connections). The blocking loop (--io-loop) and
    /// rdma:// ignore it: each connection runs on a thread of its own.
    #[arg(long, default_value_t = 1, value_name = "T")]
    pub threads: u32,
    /// Measured time per round, e.g. 10s, 500ms, 2m (default 10s unless --requests is given).
    #[arg(long, value_parser = parse_duration, conflicts_with = "requests")]
    pub duration: Option<Duration>,
    /// Measured requests per round (over all connections), instead of --duration.
    #[arg(long, value_name = "N")]
    pub requests: Option<u64>,
    /// Unrecorded load before each measured round.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// How long to wait for outstanding replies after a round before counting them as timeouts.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// SET every key once (not recorded) before the first round on each target, so GETs hit.
    #[arg(long)]
    pub prefill: bool,
    /// Open loop: send R requests/s in total, spread evenly over the connections at fixed
    /// intervals; latency runs from each request's scheduled time. Without it: closed loop.
    #[arg(long, value_name = "R")]
    pub rate: Option<f64>,
    /// How the open loop waits for a request's scheduled time: timer (a timerfd per connection:
    /// precise, CPU idle), spin (precise, keeps the bench thread busy) or sleep (tokio's 1 ms
    /// timer: a send may be up to 1 ms late, and that delay counts as latency).
    #[arg(long, value_enum, default_value_t = Pacing::Timer)]
    pub pacing: Pacing,

    /// The RDMA provider of rdma:// sessions, the node's --rdma: soft (the software provider) or
    /// verbs (libibverbs on an RDMA device; needs corekv-bench built with the cargo feature
    /// rdma-verbs).
    #[arg(long, value_enum, default_value_t = RdmaProviderKind::Soft)]
    pub rdma_provider: RdmaProviderKind,
    /// --rdma-provider verbs: the RDMA device, as ibv_devices names it (default: the first one).
    #[arg(long, value_name = "NAME")]
    pub rdma_device: Option<String>,
    /// --rdma-provider verbs: the device's port, from 1 [default: 1].
    #[arg(long, value_name = "N")]
    pub rdma_ib_port: Option<u8>,
    /// --rdma-provider verbs: the GID index (RoCE v2 addresses are usually at 1 or 3) [default: 0].
    #[arg(long, value_name = "N")]
    pub rdma_gid_index: Option<u8>,

    /// Write the report as JSON (schema corekv-bench/1) to FILE, or to stdout with "-".
    #[arg(long, value_name = "FILE")]
    pub json: Option<String>,
    /// Write a latency percentile-spectrum plot (.svg, or .html wrapping the SVG).
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
    /// Print a live progress line each second on stderr even when it is not a terminal.
    #[arg(long)]
    pub progress: bool,
    /// Never print the live progress line.
    #[arg(long, conflicts_with = "progress")]
    pub no_progress: bool,
}

/// Reads and writes in proportion `read:write`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Ratio {
    pub read: u32,
    pub write: u32,
}

impl Ratio {
    pub fn parse(text: &str) -> Result<Ratio, String> {
        let (read, write) = text
            .split_once(':')
            .ok_or_else(|| format!("ratio {text:?} is not READ:WRITE, e.g. 9:1"))?;
        let number = |s: &str| {
            s.trim()
                .parse::<u32>()
                .map_err(|_| format!("ratio {text:?}: {s:?} is not a whole number"))
        };
        let ratio = Ratio {
            read: number(read)?,
            write: number(write)?,
        };
        if ratio.read == 0 && ratio.write == 0 {
            return Err("ratio 0:0 sends nothing".into());
        }
        Ok(ratio)
    }
}

/// Size of SET values: fixed when `min == max`, otherwise uniform in `min..=max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ValueSize {
    pub min: usize,
    pub max: usize,
}

/// Largest value the tool sends (Redis's default `proto-max-bulk-len`).
pub const MAX_VALUE_SIZE: usize = 512 * 1024 * 1024;

impl ValueSize {
    pub fn parse(text: &str) -> Result<ValueSize, String> {
        let number = |s: &str| {
            s.trim()
                .parse::<usize>()
                .map_err(|_| format!("value size {text:?}: {s:?} is not a byte count"))
        };
        let size = match text.split_once('-') {
            Some((min, max)) => ValueSize {
                min: number(min)?,
                max: number(max)?,
            },
            None => {
                let n = number(text)?;
                ValueSize { min: n, max: n }
            }
        };
        if size.min > size.max {
            return Err(format!("value size range {text:?} is empty"));
        }
        if size.max > MAX_VALUE_SIZE {
            return Err(format!("value size {} exceeds {MAX_VALUE_SIZE} bytes", size.max));
        }
        Ok(size)
    }
}

/// Which key each request uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyPattern {
    /// Every key equally likely.
    Uniform,
    /// Zipf-distributed (key 0 the most popular), exponent --zipf-skew.
    Zipf,
    /// 0, 1, 2, ... over all connections together, wrapping around.
    Sequential,
}

/// How the open loop waits until a request is due.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pacing {
    Timer,
    Spin,
    Sleep,
}

/// The load loop that drives a round's connections (`--io-loop`; `load` describes both).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IoLoop {
    /// Blocking for a closed loop at pipeline 1 with at most [`AUTO_BLOCKING_CONNECTIONS`]
    /// connections, tokio otherwise.
    Auto,
    /// Per connection a writer task and a reader task per socket, on `--threads` current-thread
    /// tokio runtimes.
    Tokio,
    /// One std thread per connection, blocking sockets (`load::blocking`); closed loop only.
    Blocking,
}

impl IoLoop {
    pub fn name(self) -> &'static str {
        match self {
            IoLoop::Auto => "auto",
            IoLoop::Tokio => "tokio",
            IoLoop::Blocking => "blocking",
        }
    }
}

/// `--io-loop auto` runs the blocking loop (one thread each) for at most this many connections.
pub const AUTO_BLOCKING_CONNECTIONS: u32 = 4;

/// The RDMA provider named by `--rdma-provider`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RdmaProviderKind {
    Soft,
    Verbs,
}

/// Why `--rdma-provider verbs` is refused by a build without the verbs provider.
#[cfg(not(feature = "rdma-verbs"))]
pub const VERBS_UNAVAILABLE: &str = "--rdma-provider verbs: this corekv-bench was built without the verbs provider; \
     rebuild it with the cargo feature rdma-verbs (cargo build --release -p corekv-benches --features rdma-verbs)";

/// Refuses a load loop `target` cannot run with: tokio for rdma:// (its sessions block), and the
/// blocking TCP loop in an open loop (it waits for replies in blocking reads, which cannot wake
/// at each send time precisely).
fn check_io_loop(flag: &str, io_loop: IoLoop, target: &Target, rate: Option<f64>) -> Result<(), String> {
    match (target.protocol, io_loop) {
        (Protocol::Rdma, IoLoop::Tokio) => Err(format!(
            "{flag} tokio: {target} is an rdma:// target, whose sessions block: it always runs the blocking loop \
             (ask for auto or blocking)"
        )),
        (Protocol::Resp | Protocol::Native, IoLoop::Blocking) if rate.is_some() => Err(format!(
            "{flag} blocking runs a closed loop only: it waits for replies in blocking reads and cannot wake at \
             open-loop send times (--rate); ask for tokio or auto"
        )),
        _ => Ok(()),
    }
}

/// Parses `10s`, `500ms`, `2m`, `1h`, `250us` or a bare number of seconds (`1.5`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("duration {text:?} is not a number with a unit (us, ms, s, m, h)"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1e3,
        "us" => value / 1e6,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("duration {text:?}: unknown unit {unit:?} (us, ms, s, m, h)")),
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(format!("duration {text:?} must be a finite, non-negative time"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Which requests to send: operations, keys and values.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Workload {
    pub ratio: Ratio,
    pub keys: u64,
    pub key_pattern: KeyPattern,
    pub zipf_skew: f64,
    pub key_prefix: String,
    pub value_size: ValueSize,
    pub seed: u64,
}

/// When a round stops sending.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Measured time, after the warm-up.
    Duration(Duration),
    /// Measured requests over all connections, after the warm-up.
    Requests(u64),
}

/// How the requests are sent.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadConfig {
    pub connections: u32,
    pub threads: u32,
    pub pipeline: u32,
    pub stop: Stop,
    pub warmup: Duration,
    /// How long the readers wait for outstanding replies once sending stopped.
    pub drain_timeout: Duration,
    /// Open loop at this many requests per second in total; closed loop when `None`.
    pub rate: Option<f64>,
    pub pacing: Pacing,
    /// Publish live counters for the progress line.
    pub progress: bool,
    /// The provider of rdma:// sessions.
    pub rdma_provider: RdmaProvider,
    /// The load loop asked for (`auto` is decided per round by [`LoadConfig::io_loop_for`]).
    pub io_loop: IoLoop,
}

impl LoadConfig {
    pub fn is_open_loop(&self) -> bool {
        self.rate.is_some()
    }

    /// The loop that runs a round against a `protocol` target: never `Auto`. rdma:// always
    /// runs the blocking loop (`load::rdma`); `auto` picks the blocking loop when it cannot add
    /// a cross-task wake-up to each request's latency for nothing: a closed loop at pipeline 1
    /// on at most [`AUTO_BLOCKING_CONNECTIONS`] connections (one thread each).
    pub fn io_loop_for(&self, protocol: Protocol) -> IoLoop {
        match (protocol, self.io_loop) {
            (Protocol::Rdma, _) => IoLoop::Blocking,
            (_, IoLoop::Auto)
                if !self.is_open_loop() && self.pipeline == 1 && self.connections <= AUTO_BLOCKING_CONNECTIONS =>
            {
                IoLoop::Blocking
            }
            (_, IoLoop::Auto) => IoLoop::Tokio,
            (_, chosen) => chosen,
        }
    }
}

/// Everything a benchmark run needs, validated.
#[derive(Clone, Debug)]
pub struct Settings {
    pub target: Target,
    pub target_name: String,
    pub compare: Option<(Target, String)>,
    /// The load loop asked for on `--compare` (`load.io_loop` is `--target`'s).
    pub compare_io_loop: IoLoop,
    pub rounds: u32,
    pub workload: Workload,
    pub load: LoadConfig,
    pub prefill: bool,
    pub json: Option<String>,
    pub plot: Option<PathBuf>,
}

impl Cli {
    /// Checks the combination of arguments; `stderr_is_terminal` decides the progress default.
    pub fn settings(&self, stderr_is_terminal: bool) -> Result<Settings, String> {
        if self.keys == 0 {
            return Err("--keys must be at least 1".into());
        }
        if self.pipeline == 0 || self.connections == 0 || self.threads == 0 {
            return Err("--pipeline, --connections and --threads must be at least 1".into());
        }
        if self.key_pattern == KeyPattern::Zipf && !(self.zipf_skew.is_finite() && self.zipf_skew >= 0.0) {
            return Err("--zipf-skew must be a finite number ≥ 0".into());
        }
        if let Some(rate) = self.rate {
            if !(rate.is_finite() && rate > 0.0) {
                return Err("--rate must be a positive number of requests per second".into());
            }
        }
        let stop = match (self.requests, self.duration) {
            (Some(0), _) => return Err("--requests must be at least 1".into()),
            (Some(n), _) => Stop::Requests(n),
            (None, Some(d)) if d.is_zero() => return Err("--duration must be longer than 0".into()),
            (None, Some(d)) => Stop::Duration(d),
            (None, None) => Stop::Duration(Duration::from_secs(10)),
        };
        let rounds = self.rounds.unwrap_or(if self.compare.is_some() { 3 } else { 1 });
        if rounds == 0 {
            return Err("--rounds must be at least 1".into());
        }
        let progress = !self.no_progress && (self.progress || stderr_is_terminal);
        let rdma_provider = self.rdma_provider()?;
        let compare_io_loop = self.compare_io_loop.unwrap_or(self.io_loop);
        check_io_loop("--io-loop", self.io_loop, &self.target, self.rate)?;
        if let Some(compare) = &self.compare {
            let flag = match self.compare_io_loop {
                Some(_) => "--compare-io-loop",
                None => "--compare-io-loop (as --io-loop by default)",
            };
            check_io_loop(flag, compare_io_loop, compare, self.rate)?;
        } else if self.compare_io_loop.is_some() {
            return Err("--compare-io-loop needs --compare".into());
        }
        Ok(Settings {
            target_name: self.target_name.clone().unwrap_or_else(|| self.target.to_string()),
            target: self.target.clone(),
            compare: self.compare.clone().map(|b| {
                let name = self.compare_name.clone().unwrap_or_else(|| b.to_string());
                (b, name)
            }),
            compare_io_loop,
            rounds,
            workload: Workload {
                ratio: self.ratio,
                keys: self.keys,
                key_pattern: self.key_pattern,
                zipf_skew: self.zipf_skew,
                key_prefix: self.key_prefix.clone(),
                value_size: self.value_size,
                seed: self.seed,
            },
            load: LoadConfig {
                connections: self.connections,
                threads: self.threads.min(self.connections),
                pipeline: self.pipeline,
                stop,
                warmup: self.warmup,
                drain_timeout: self.drain_timeout,
                rate: self.rate,
                pacing: self.pacing,
                progress,
                rdma_provider,
                io_loop: self.io_loop,
            },
            prefill: self.prefill,
            json: self.json.clone(),
            plot: self.plot.clone(),
        })
    }

    /// The provider `--rdma-provider` and the verbs flags describe.
    fn rdma_provider(&self) -> Result<RdmaProvider, String> {
        let verbs_flags = self.rdma_device.is_some() || self.rdma_ib_port.is_some() || self.rdma_gid_index.is_some();
        match self.rdma_provider {
            RdmaProviderKind::Soft if verbs_flags => {
                Err("--rdma-device, --rdma-ib-port and --rdma-gid-index apply to --rdma-provider verbs only".into())
            }
            RdmaProviderKind::Soft => Ok(RdmaProvider::Soft),
            #[cfg(not(feature = "rdma-verbs"))]
            RdmaProviderKind::Verbs => Err(VERBS_UNAVAILABLE.into()),
            #[cfg(feature = "rdma-verbs")]
            RdmaProviderKind::Verbs => {
                let defaults = VerbsConfig::default();
                let port = self.rdma_ib_port.unwrap_or(defaults.port);
                if port == 0 {
                    return Err("--rdma-ib-port must be at least 1 (device ports count from 1)".into());
                }
                Ok(RdmaProvider::Verbs(VerbsConfig {
                    device: self.rdma_device.clone(),
                    port,
                    gid_index: self.rdma_gid_index.unwrap_or(defaults.gid_index),
                    ..defaults
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios() {
        assert_eq!(Ratio::parse("9:1"), Ok(Ratio { read: 9, write: 1 }));
        assert_eq!(Ratio::parse("0:1"), Ok(Ratio { read: 0, write: 1 }));
        assert!(Ratio::parse("0:0").is_err());
        assert!(Ratio::parse("9").is_err());
        assert!(Ratio::parse("a:1").is_err());
    }

    #[test]
    fn value_sizes() {
        assert_eq!(ValueSize::parse("100"), Ok(ValueSize { min: 100, max: 100 }));
        assert_eq!(ValueSize::parse("32-1024"), Ok(ValueSize { min: 32, max: 1024 }));
        assert!(ValueSize::parse("10-5").is_err());
        assert!(ValueSize::parse("x").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    fn cli(args: &[&str]) -> Cli {
        let base = ["corekv-bench", "--target", "rdma://127.0.0.1:7680"];
        Cli::try_parse_from(base.iter().chain(args)).expect("the arguments parse")
    }

    fn tcp(args: &[&str]) -> Result<Settings, String> {
        let base = ["corekv-bench", "--target", "native://127.0.0.1:7400"];
        Cli::try_parse_from(base.iter().chain(args))
            .expect("the arguments parse")
            .settings(false)
    }

    #[test]
    fn auto_picks_the_blocking_loop_for_few_unpipelined_closed_connections() {
        let io_loop = |args: &[&str]| tcp(args).unwrap().load.io_loop_for(Protocol::Native);
        assert_eq!(io_loop(&["--connections", "1"]), IoLoop::Blocking);
        assert_eq!(io_loop(&["--connections", "4"]), IoLoop::Blocking);
        assert_eq!(io_loop(&[]), IoLoop::Tokio, "8 connections by default");
        assert_eq!(io_loop(&["--connections", "1", "--pipeline", "2"]), IoLoop::Tokio);
        assert_eq!(io_loop(&["--connections", "1", "--rate", "100"]), IoLoop::Tokio);
        assert_eq!(io_loop(&["--connections", "1", "--io-loop", "tokio"]), IoLoop::Tokio);
        assert_eq!(
            io_loop(&["--io-loop", "blocking", "--pipeline", "16"]),
            IoLoop::Blocking
        );
        let rdma = cli(&["--io-loop", "auto", "--pipeline", "8"]).settings(false).unwrap();
        assert_eq!(rdma.load.io_loop_for(Protocol::Rdma), IoLoop::Blocking);
    }

    #[test]
    fn impossible_loops_are_refused() {
        let err = tcp(&["--io-loop", "blocking", "--rate", "1000"]).unwrap_err();
        assert!(err.contains("--io-loop blocking runs a closed loop only"), "{err}");
        let err = cli(&["--io-loop", "tokio"]).settings(false).unwrap_err();
        assert!(err.contains("rdma:// target"), "{err}");
        let err = tcp(&["--compare-io-loop", "tokio"]).unwrap_err();
        assert!(err.contains("--compare-io-loop needs --compare"), "{err}");
        // --compare inherits --io-loop unless told otherwise.
        let err = tcp(&["--io-loop", "tokio", "--compare", "rdma://127.0.0.1:7680"]).unwrap_err();
        assert!(
            err.contains("--compare-io-loop (as --io-loop by default) tokio"),
            "{err}"
        );
        let s = tcp(&[
            "--io-loop",
            "tokio",
            "--compare",
            "rdma://h:1",
            "--compare-io-loop",
            "auto",
        ])
        .unwrap();
        assert_eq!((s.load.io_loop, s.compare_io_loop), (IoLoop::Tokio, IoLoop::Auto));
        let s = tcp(&["--io-loop", "blocking", "--compare", "native://h:1"]).unwrap();
        assert_eq!(s.compare_io_loop, IoLoop::Blocking);
    }

    #[test]
    fn the_rdma_provider_defaults_to_soft() {
        let settings = cli(&[]).settings(false).unwrap();
        assert_eq!(settings.load.rdma_provider, RdmaProvider::Soft);
        let err = cli(&["--rdma-device", "mlx5_0"]).settings(false).unwrap_err();
        assert!(err.contains("--rdma-provider verbs"), "{err}");
        assert!(Cli::try_parse_from(["corekv-bench", "--target", "rdma://h:1", "--rdma-provider", "ib"]).is_err());
    }

    #[cfg(not(feature = "rdma-verbs"))]
    #[test]
    fn verbs_needs_the_rdma_verbs_feature() {
        let err = cli(&["--rdma-provider", "verbs"]).settings(false).unwrap_err();
        assert_eq!(err, VERBS_UNAVAILABLE);
        assert!(err.contains("cargo feature rdma-verbs"), "{err}");
    }

    #[cfg(feature = "rdma-verbs")]
    #[test]
    fn verbs_flags_fill_the_verbs_config() {
        let settings = cli(&["--rdma-provider", "verbs"]).settings(false).unwrap();
        assert_eq!(settings.load.rdma_provider, RdmaProvider::Verbs(VerbsConfig::default()));
        let args = [
            "--rdma-provider",
            "verbs",
            "--rdma-device",
            "mlx5_1",
            "--rdma-ib-port",
            "2",
            "--rdma-gid-index",
            "3",
        ];
        let settings = cli(&args).settings(false).unwrap();
        let RdmaProvider::Verbs(config) = settings.load.rdma_provider else {
            panic!("not verbs: {:?}", settings.load.rdma_provider);
        };
        assert_eq!(
            (config.device.as_deref(), config.port, config.gid_index),
            (Some("mlx5_1"), 2, 3)
        );
        let err = cli(&["--rdma-provider", "verbs", "--rdma-ib-port", "0"])
            .settings(false)
            .unwrap_err();
        assert!(err.contains("--rdma-ib-port"), "{err}");
    }
}
