//! The node's settings: command-line flags, an optional TOML file, and the built-in defaults.
//!
//! Precedence: a flag given on the command line beats the same setting in `--config FILE`, which
//! beats the default. Every setting has the same name in both places (`--maxmemory-policy` on the
//! command line is `maxmemory-policy` in the file).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use clap::Parser;
use corekv_engine::EvictionPolicy;
use serde::Deserialize;

/// Errors in the configuration, reported as one line at start-up.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    ReadFile { path: PathBuf, source: std::io::Error },
    #[error("invalid config file {path}: {message}")]
    ParseFile { path: PathBuf, message: String },
    #[error("invalid {setting} '{value}': {reason}")]
    Invalid {
        setting: &'static str,
        value: String,
        reason: &'static str,
    },
}

/// corekv-node: a shard-per-core, Redis-compatible key-value server.
///
/// With no arguments it listens on 127.0.0.1:7379 with one shard per core and keeps its data
/// under ./corekv-data.
#[derive(Parser, Debug, Default)]
#[command(name = "corekv-node", version)]
pub struct Cli {
    /// TOML file with any of the settings below (flags override it).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1].
    #[arg(long, value_name = "ADDR")]
    pub bind: Option<IpAddr>,
    /// RESP port; 0 picks a free port (printed in the readiness line) [default: 7379].
    #[arg(long)]
    pub port: Option<u16>,
    /// First native-protocol port: shard i listens on native-port + i; 0 gives every shard a free
    /// port (INFO native lists them) [default: 7380, or 0 when --port is 0].
    #[arg(long, value_name = "PORT")]
    pub native_port: Option<u16>,
    /// Number of shards, one executor thread each [default: number of available cores].
    #[arg(long)]
    pub shards: Option<usize>,
    /// Directory for the node's data; created if missing [default: ./corekv-data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Memory budget for data, split evenly over shards: bytes or 100kb, 512mb, 2gb, ... (0 = unlimited) [default: 0].
    #[arg(long, value_name = "SIZE")]
    pub maxmemory: Option<String>,
    /// What happens at the budget: noeviction, allkeys-lru, volatile-lru, allkeys-random, volatile-ttl [default: noeviction].
    #[arg(long, value_name = "POLICY")]
    pub maxmemory_policy: Option<String>,
    /// Number of databases (SELECT 0..N-1) [default: 16].
    #[arg(long)]
    pub databases: Option<usize>,
    /// Maximum simultaneous client connections [default: 10000].
    #[arg(long)]
    pub max_clients: Option<usize>,
    /// Do not pin shard threads to cores (pinning happens only when shards <= cores anyway).
    #[arg(long)]
    pub no_pin: bool,
    /// After answering, a connection tries non-blocking reads for this long before it sleeps,
    /// while its shard serves at most 4 connections: lower latency for one-request-at-a-time
    /// clients, for up to that much CPU per response (e.g. 30us; 0 = off, at most 1ms) [default: 0].
    #[arg(long, value_name = "DURATION")]
    pub busy_poll: Option<String>,
    /// When a write is acknowledged: always (after its log record is on disk), periodic (at once;
    /// the log is synced every --fsync-interval), none (no log) [default: periodic].
    #[arg(long, value_name = "MODE")]
    pub durability: Option<String>,
    /// How often periodic durability syncs the log: 1s, 250ms, ... [default: 1s].
    #[arg(long, value_name = "DURATION")]
    pub fsync_interval: Option<String>,
    /// Size of each log segment file, pre-allocated: 64mb, 1gb, ... (at least 64kb) [default: 64mb].
    #[arg(long, value_name = "SIZE")]
    pub segment_size: Option<String>,
    /// Compaction starts once a shard's log since its last snapshot is at least this big [default: 64mb].
    #[arg(long, value_name = "SIZE")]
    pub rewrite_min_size: Option<String>,
    /// ... and at least this percentage of the last snapshot's size; 0 turns automatic compaction off [default: 100].
    #[arg(long, value_name = "PERCENT")]
    pub rewrite_percentage: Option<u64>,
    /// At start-up, truncate a corrupted log at the first bad record instead of refusing to start
    /// (everything after that point in that shard's log is dropped).
    #[arg(long)]
    pub repair: bool,
    /// Serve the native protocol over RDMA too: off, soft (the software provider, over TCP; for
    /// tests and machines without RDMA), verbs (libibverbs; needs a build with `rdma-verbs`) [default: off].
    #[arg(long, value_name = "PROVIDER")]
    pub rdma: Option<String>,
    /// The RDMA device to use with verbs (as `ibv_devices` lists it) [default: the first device].
    #[arg(long, value_name = "NAME")]
    pub rdma_device: Option<String>,
    /// The device's port to use with verbs, from 1 (`ibv_devinfo` lists them) [default: 1].
    #[arg(long, value_name = "N")]
    pub rdma_ib_port: Option<u8>,
    /// The GID index to use with verbs: on RoCE v2 the IPv4-mapped address is usually at 1 or 3
    /// (`show_gids` lists them) [default: 0].
    #[arg(long, value_name = "N")]
    pub rdma_gid_index: Option<u8>,
    /// First RDMA handshake port: shard i listens on rdma-port + i; 0 gives every shard a free port
    /// [default: 7680, or 0 when --port is 0].
    #[arg(long, value_name = "PORT")]
    pub rdma_port: Option<u16>,
    /// The registered memory region of each shard, carved into data buffers [default: 64mb].
    #[arg(long, value_name = "SIZE")]
    pub rdma_pool: Option<String>,
}

/// The same settings as a TOML file; keys are spelled like the flags (`maxmemory-policy = "allkeys-lru"`).
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    pub bind: Option<IpAddr>,
    pub port: Option<u16>,
    pub native_port: Option<u16>,
    pub shards: Option<usize>,
    pub data_dir: Option<PathBuf>,
    pub maxmemory: Option<toml::Value>,
    pub maxmemory_policy: Option<String>,
    pub databases: Option<usize>,
    pub max_clients: Option<usize>,
    pub no_pin: Option<bool>,
    pub busy_poll: Option<String>,
    pub durability: Option<String>,
    pub fsync_interval: Option<String>,
    pub segment_size: Option<toml::Value>,
    pub rewrite_min_size: Option<toml::Value>,
    pub rewrite_percentage: Option<u64>,
    pub rdma: Option<String>,
    pub rdma_device: Option<String>,
    pub rdma_ib_port: Option<u8>,
    pub rdma_gid_index: Option<u8>,
    pub rdma_port: Option<u16>,
    pub rdma_pool: Option<toml::Value>,
}

/// The resolved settings the node runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub bind: IpAddr,
    pub port: u16,
    /// First native port (shard i on `native_port + i`); 0 = a free port per shard.
    pub native_port: u16,
    pub shards: usize,
    pub data_dir: PathBuf,
    pub maxmemory_bytes: u64,
    pub maxmemory_policy: EvictionPolicy,
    pub databases: usize,
    pub max_clients: usize,
    pub pin: bool,
    /// How long a connection polls its socket before sleeping (zero: it does not).
    pub busy_poll: std::time::Duration,
    pub persistence: PersistConfig,
    pub rdma: RdmaConfig,
}

/// Which RDMA provider serves the native protocol (`--rdma`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RdmaProvider {
    /// No RDMA listeners.
    Off,
    /// The software provider: RC semantics over TCP links, no hardware, no locked memory.
    Soft,
    /// libibverbs (hardware, or rxe/siw).
    Verbs,
}

impl RdmaProvider {
    pub fn name(self) -> &'static str {
        match self {
            RdmaProvider::Off => "off",
            RdmaProvider::Soft => "soft",
            RdmaProvider::Verbs => "verbs",
        }
    }
}

/// The RDMA settings.
#[derive(Clone, Debug)]
pub struct RdmaConfig {
    pub provider: RdmaProvider,
    /// The verbs device (`None`: the first one).
    pub device: Option<String>,
    /// The verbs device's port, from 1.
    pub ib_port: u8,
    /// The verbs GID index.
    pub gid_index: u8,
    /// First handshake port (shard i on `port + i`); 0 = a free port per shard.
    pub port: u16,
    /// Each shard's registered pool.
    pub pool_bytes: u64,
}

/// When a write is acknowledged, relative to its log record reaching the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// After the fdatasync of the flush that holds its record.
    Always,
    /// At once; the log is written continuously and synced every `fsync_interval`.
    Periodic,
    /// No log at all: data lives in memory only.
    None,
}

impl Durability {
    pub fn name(self) -> &'static str {
        match self {
            Durability::Always => "always",
            Durability::Periodic => "periodic",
            Durability::None => "none",
        }
    }
}

/// The log and compaction settings.
#[derive(Clone, Debug)]
pub struct PersistConfig {
    pub durability: Durability,
    pub fsync_interval: std::time::Duration,
    pub segment_size: u64,
    pub rewrite_min_size: u64,
    /// 0 turns automatic compaction off.
    pub rewrite_percentage: u64,
    pub repair: bool,
}

pub const MIN_SEGMENT_SIZE: u64 = 64 * 1024;

pub const DEFAULT_PORT: u16 = 7379;
pub const DEFAULT_NATIVE_PORT: u16 = 7380;
pub const DEFAULT_RDMA_PORT: u16 = 7680;
pub const DEFAULT_RDMA_POOL: u64 = 64 << 20;
/// The smallest pool: a few 1 MiB values in flight.
pub const MIN_RDMA_POOL: u64 = 4 << 20;
/// The largest pool (request and response lengths are 32-bit on the wire).
pub const MAX_RDMA_POOL: u64 = 4 << 30;
pub const MAX_SHARDS: usize = 1024;
pub const MAX_DATABASES: usize = 1 << 16;

impl Config {
    /// Resolves flags over the file over defaults.
    pub fn resolve(cli: Cli) -> Result<Config, ConfigError> {
        let file = match &cli.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let persistence = resolve_persistence(&cli_persist(&cli), &file)?;
        let rdma_flags = RdmaFlags {
            rdma: cli.rdma.clone(),
            device: cli.rdma_device.clone(),
            ib_port: cli.rdma_ib_port,
            gid_index: cli.rdma_gid_index,
            port: cli.rdma_port,
            pool: cli.rdma_pool.clone(),
        };
        let rdma_file = RdmaFile {
            rdma: file.rdma.clone(),
            rdma_device: file.rdma_device.clone(),
            rdma_ib_port: file.rdma_ib_port,
            rdma_gid_index: file.rdma_gid_index,
            rdma_port: file.rdma_port,
            rdma_pool: file.rdma_pool.clone(),
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let maxmemory_bytes = match (cli.maxmemory, file.maxmemory) {
            (Some(text), _) => parse_size(&text).map_err(|reason| ConfigError::Invalid {
                setting: "maxmemory",
                value: text,
                reason,
            })?,
            (None, Some(toml::Value::Integer(n))) => u64::try_from(n).map_err(|_| ConfigError::Invalid {
                setting: "maxmemory",
                value: n.to_string(),
                reason: "must not be negative",
            })?,
            (None, Some(toml::Value::String(text))) => parse_size(&text).map_err(|reason| ConfigError::Invalid {
                setting: "maxmemory",
                value: text,
                reason,
            })?,
            (None, Some(other)) => {
                return Err(ConfigError::Invalid {
                    setting: "maxmemory",
                    value: other.to_string(),
                    reason: "expected a size such as 512mb or a number of bytes",
                })
            }
            (None, None) => 0,
        };
        let policy_text = cli.maxmemory_policy.or(file.maxmemory_policy);
        let maxmemory_policy = match policy_text {
            Some(text) => parse_policy(&text).ok_or(ConfigError::Invalid {
                setting: "maxmemory-policy",
                value: text,
                reason: "expected noeviction, allkeys-lru, volatile-lru, allkeys-random or volatile-ttl",
            })?,
            None => EvictionPolicy::NoEviction,
        };
        let shards = cli.shards.or(file.shards).unwrap_or(cores);
        if shards == 0 || shards > MAX_SHARDS {
            return Err(ConfigError::Invalid {
                setting: "shards",
                value: shards.to_string(),
                reason: "must be between 1 and 1024",
            });
        }
        let databases = cli.databases.or(file.databases).unwrap_or(16);
        if databases == 0 || databases > MAX_DATABASES {
            return Err(ConfigError::Invalid {
                setting: "databases",
                value: databases.to_string(),
                reason: "must be between 1 and 65536",
            });
        }
        let max_clients = cli.max_clients.or(file.max_clients).unwrap_or(10_000);
        if max_clients == 0 {
            return Err(ConfigError::Invalid {
                setting: "max-clients",
                value: max_clients.to_string(),
                reason: "must be at least 1",
            });
        }
        let port = cli.port.or(file.port).unwrap_or(DEFAULT_PORT);
        let native_default = if port == 0 { 0 } else { DEFAULT_NATIVE_PORT };
        let native_port = cli.native_port.or(file.native_port).unwrap_or(native_default);
        if native_port != 0 && u32::from(native_port) + shards as u32 - 1 > u32::from(u16::MAX) {
            return Err(ConfigError::Invalid {
                setting: "native-port",
                value: native_port.to_string(),
                reason: "native-port + shards - 1 must be a valid port (at most 65535)",
            });
        }
        let rdma = resolve_rdma(rdma_flags, &rdma_file, port, shards)?;
        let busy_poll = match cli.busy_poll.as_ref().or(file.busy_poll.as_ref()) {
            None => std::time::Duration::ZERO,
            Some(text) => parse_busy_poll(text).map_err(|reason| ConfigError::Invalid {
                setting: "busy-poll",
                value: text.clone(),
                reason,
            })?,
        };
        Ok(Config {
            persistence,
            rdma,
            native_port,
            bind: cli.bind.or(file.bind).unwrap_or(IpAddr::from([127, 0, 0, 1])),
            port,
            shards,
            data_dir: cli
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from("./corekv-data")),
            maxmemory_bytes,
            maxmemory_policy,
            databases,
            max_clients,
            pin: !(cli.no_pin || file.no_pin.unwrap_or(false)),
            busy_poll,
        })
    }
}

/// The RDMA flags given on the command line (taken before `cli` is consumed).
struct RdmaFlags {
    rdma: Option<String>,
    device: Option<String>,
    ib_port: Option<u8>,
    gid_index: Option<u8>,
    port: Option<u16>,
    pool: Option<String>,
}

/// The RDMA keys of the file (taken before `file` is consumed).
struct RdmaFile {
    rdma: Option<String>,
    rdma_device: Option<String>,
    rdma_ib_port: Option<u8>,
    rdma_gid_index: Option<u8>,
    rdma_port: Option<u16>,
    rdma_pool: Option<toml::Value>,
}

fn resolve_rdma(flags: RdmaFlags, file: &RdmaFile, port: u16, shards: usize) -> Result<RdmaConfig, ConfigError> {
    let RdmaFlags {
        rdma: provider,
        device,
        ib_port,
        gid_index,
        port: rdma_port,
        pool,
    } = flags;
    let provider = match provider.or_else(|| file.rdma.clone()) {
        None => RdmaProvider::Off,
        Some(text) => match text.to_ascii_lowercase().as_str() {
            "off" | "none" => RdmaProvider::Off,
            "soft" => RdmaProvider::Soft,
            "verbs" => RdmaProvider::Verbs,
            _ => {
                return Err(ConfigError::Invalid {
                    setting: "rdma",
                    value: text,
                    reason: "expected off, soft or verbs",
                })
            }
        },
    };
    let default_port = if port == 0 { 0 } else { DEFAULT_RDMA_PORT };
    let rdma_port = rdma_port.or(file.rdma_port).unwrap_or(default_port);
    if rdma_port != 0 && u32::from(rdma_port) + shards as u32 - 1 > u32::from(u16::MAX) {
        return Err(ConfigError::Invalid {
            setting: "rdma-port",
            value: rdma_port.to_string(),
            reason: "rdma-port + shards - 1 must be a valid port (at most 65535)",
        });
    }
    let pool_bytes = size_setting("rdma-pool", &pool, &file.rdma_pool, DEFAULT_RDMA_POOL)?;
    if !(MIN_RDMA_POOL..=MAX_RDMA_POOL).contains(&pool_bytes) {
        return Err(ConfigError::Invalid {
            setting: "rdma-pool",
            value: pool_bytes.to_string(),
            reason: "must be between 4mb and 4gb",
        });
    }
    let ib_port = ib_port.or(file.rdma_ib_port).unwrap_or(1);
    if ib_port == 0 {
        return Err(ConfigError::Invalid {
            setting: "rdma-ib-port",
            value: ib_port.to_string(),
            reason: "device ports are numbered from 1",
        });
    }
    Ok(RdmaConfig {
        provider,
        device: device.or_else(|| file.rdma_device.clone()),
        ib_port,
        gid_index: gid_index.or(file.rdma_gid_index).unwrap_or(0),
        port: rdma_port,
        pool_bytes,
    })
}

/// The persistence flags given on the command line (taken before `cli` is consumed).
struct PersistFlags {
    durability: Option<String>,
    fsync_interval: Option<String>,
    segment_size: Option<String>,
    rewrite_min_size: Option<String>,
    rewrite_percentage: Option<u64>,
    repair: bool,
}

fn cli_persist(cli: &Cli) -> PersistFlags {
    PersistFlags {
        durability: cli.durability.clone(),
        fsync_interval: cli.fsync_interval.clone(),
        segment_size: cli.segment_size.clone(),
        rewrite_min_size: cli.rewrite_min_size.clone(),
        rewrite_percentage: cli.rewrite_percentage,
        repair: cli.repair,
    }
}

/// A size from a flag (text) or the file (text or integer).
fn size_setting(
    setting: &'static str,
    flag: &Option<String>,
    file: &Option<toml::Value>,
    default: u64,
) -> Result<u64, ConfigError> {
    let invalid = |value: String, reason| ConfigError::Invalid { setting, value, reason };
    match (flag, file) {
        (Some(text), _) | (None, Some(toml::Value::String(text))) => {
            parse_size(text).map_err(|reason| invalid(text.clone(), reason))
        }
        (None, Some(toml::Value::Integer(n))) => {
            u64::try_from(*n).map_err(|_| invalid(n.to_string(), "must not be negative"))
        }
        (None, Some(other)) => Err(invalid(
            other.to_string(),
            "expected a size such as 64mb or a number of bytes",
        )),
        (None, None) => Ok(default),
    }
}

fn resolve_persistence(flags: &PersistFlags, file: &FileConfig) -> Result<PersistConfig, ConfigError> {
    let durability = match flags.durability.as_ref().or(file.durability.as_ref()) {
        None => Durability::Periodic,
        Some(text) => match text.to_ascii_lowercase().as_str() {
            "always" => Durability::Always,
            "periodic" | "everysec" => Durability::Periodic,
            "none" | "no" => Durability::None,
            _ => {
                return Err(ConfigError::Invalid {
                    setting: "durability",
                    value: text.clone(),
                    reason: "expected always, periodic or none",
                })
            }
        },
    };
    let fsync_interval = match flags.fsync_interval.as_ref().or(file.fsync_interval.as_ref()) {
        None => std::time::Duration::from_secs(1),
        Some(text) => parse_duration(text).map_err(|reason| ConfigError::Invalid {
            setting: "fsync-interval",
            value: text.clone(),
            reason,
        })?,
    };
    let segment_size = size_setting("segment-size", &flags.segment_size, &file.segment_size, 64 << 20)?;
    if !(MIN_SEGMENT_SIZE..=(1 << 40)).contains(&segment_size) {
        return Err(ConfigError::Invalid {
            setting: "segment-size",
            value: segment_size.to_string(),
            reason: "must be between 64kb and 1tb",
        });
    }
    Ok(PersistConfig {
        durability,
        fsync_interval,
        segment_size,
        rewrite_min_size: size_setting(
            "rewrite-min-size",
            &flags.rewrite_min_size,
            &file.rewrite_min_size,
            64 << 20,
        )?,
        rewrite_percentage: flags.rewrite_percentage.or(file.rewrite_percentage).unwrap_or(100),
        repair: flags.repair,
    })
}

/// Parses `250ms`, `1s`, `2m`, or a bare number of seconds; between 1 ms and 1 hour.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, &'static str> {
    let lower = text.trim().to_ascii_lowercase();
    let split = lower.find(|c: char| !c.is_ascii_digit()).unwrap_or(lower.len());
    let (digits, unit) = lower.split_at(split);
    let number: u64 = digits.parse().map_err(|_| "expected a duration such as 1s or 250ms")?;
    let ms = match unit {
        "ms" => Some(number),
        "" | "s" => number.checked_mul(1000),
        "m" => number.checked_mul(60_000),
        _ => return Err("unknown unit (use ms, s or m)"),
    }
    .ok_or("duration too large")?;
    if !(1..=3_600_000).contains(&ms) {
        return Err("must be between 1ms and 1 hour");
    }
    Ok(std::time::Duration::from_millis(ms))
}

/// Parses `30us`, `1ms` or `0`: at most 1 ms.
pub fn parse_busy_poll(text: &str) -> Result<std::time::Duration, &'static str> {
    let lower = text.trim().to_ascii_lowercase();
    let split = lower.find(|c: char| !c.is_ascii_digit()).unwrap_or(lower.len());
    let (digits, unit) = lower.split_at(split);
    let number: u64 = digits.parse().map_err(|_| "expected a duration such as 30us or 1ms")?;
    let micros = match unit {
        "us" => number,
        "ms" => number.saturating_mul(1000),
        "" if number == 0 => 0,
        _ => return Err("give a unit: us or ms"),
    };
    if micros > 1000 {
        return Err("must be at most 1ms");
    }
    Ok(std::time::Duration::from_micros(micros))
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::ParseFile {
        path: path.to_owned(),
        message: e.message().to_owned(),
    })
}

/// Parses a size the way Redis's `memtoll` does: a number with an optional unit
/// (`k`=1000, `kb`=1024, `m`=10^6, `mb`=1024², `g`=10^9, `gb`=1024³), case-insensitive.
pub fn parse_size(text: &str) -> Result<u64, &'static str> {
    let lower = text.trim().to_ascii_lowercase();
    let split = lower.find(|c: char| !c.is_ascii_digit()).unwrap_or(lower.len());
    let (digits, unit) = lower.split_at(split);
    if digits.is_empty() {
        return Err("expected a number of bytes, optionally followed by kb, mb or gb");
    }
    let multiplier: u64 = match unit {
        "" | "b" => 1,
        "k" => 1000,
        "kb" => 1024,
        "m" => 1000 * 1000,
        "mb" => 1024 * 1024,
        "g" => 1000 * 1000 * 1000,
        "gb" => 1024 * 1024 * 1024,
        _ => return Err("unknown unit (use b, k, kb, m, mb, g or gb)"),
    };
    let number: u64 = digits.parse().map_err(|_| "number too large")?;
    number.checked_mul(multiplier).ok_or("number too large")
}

pub fn parse_policy(text: &str) -> Option<EvictionPolicy> {
    Some(match text.to_ascii_lowercase().as_str() {
        "noeviction" => EvictionPolicy::NoEviction,
        "allkeys-lru" => EvictionPolicy::AllKeysLru,
        "volatile-lru" => EvictionPolicy::VolatileLru,
        "allkeys-random" => EvictionPolicy::AllKeysRandom,
        "volatile-ttl" => EvictionPolicy::VolatileTtl,
        _ => return None,
    })
}

pub fn policy_name(policy: EvictionPolicy) -> &'static str {
    match policy {
        EvictionPolicy::NoEviction => "noeviction",
        EvictionPolicy::AllKeysLru => "allkeys-lru",
        EvictionPolicy::VolatileLru => "volatile-lru",
        EvictionPolicy::AllKeysRandom => "allkeys-random",
        EvictionPolicy::VolatileTtl => "volatile-ttl",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_like_redis_memtoll() {
        for (text, bytes) in [
            ("0", 0),
            ("1048576", 1 << 20),
            ("100kb", 100 * 1024),
            ("512mb", 512 << 20),
            ("2gb", 2 << 30),
            ("2GB", 2 << 30),
            ("1k", 1000),
            ("3m", 3_000_000),
            ("1g", 1_000_000_000),
        ] {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
        for bad in ["", "mb", "12xb", "-5", "99999999999999999999gb"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = std::env::temp_dir().join(format!("corekv-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("node.toml");
        std::fs::write(
            &path,
            "port = 7000\nshards = 3\nmaxmemory = \"2gb\"\nmaxmemory-policy = \"allkeys-lru\"\ndatabases = 4\n",
        )
        .unwrap();
        let cli = Cli {
            config: Some(path.clone()),
            port: Some(7001),
            ..Cli::default()
        };
        let config = Config::resolve(cli).unwrap();
        assert_eq!(config.port, 7001);
        assert_eq!(config.shards, 3);
        assert_eq!(config.maxmemory_bytes, 2 << 30);
        assert_eq!(config.maxmemory_policy, EvictionPolicy::AllKeysLru);
        assert_eq!(config.databases, 4);
        assert_eq!(config.data_dir, PathBuf::from("./corekv-data"));
        std::fs::write(&path, "prot = 1\n").unwrap();
        let err = Config::resolve(Cli {
            config: Some(path),
            ..Cli::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bad_values_are_rejected_with_the_setting_named() {
        let err = Config::resolve(Cli {
            maxmemory_policy: Some("lfu".into()),
            ..Cli::default()
        })
        .unwrap_err();
        assert!(err.to_string().starts_with("invalid maxmemory-policy 'lfu'"), "{err}");
        let err = Config::resolve(Cli {
            shards: Some(0),
            ..Cli::default()
        })
        .unwrap_err();
        assert!(err.to_string().starts_with("invalid shards '0'"), "{err}");
    }

    #[test]
    fn rdma_settings_resolve_from_flags_and_file() {
        let config = Config::resolve(Cli::default()).unwrap();
        assert_eq!(config.rdma.provider, RdmaProvider::Off);
        assert_eq!(config.rdma.port, DEFAULT_RDMA_PORT);
        assert_eq!(config.rdma.pool_bytes, DEFAULT_RDMA_POOL);
        let config = Config::resolve(Cli {
            port: Some(0),
            rdma: Some("soft".into()),
            rdma_pool: Some("16mb".into()),
            rdma_device: Some("mlx5_0".into()),
            ..Cli::default()
        })
        .unwrap();
        assert_eq!(config.rdma.provider, RdmaProvider::Soft);
        assert_eq!(config.rdma.port, 0, "free ports like the native ones with --port 0");
        assert_eq!(config.rdma.pool_bytes, 16 << 20);
        assert_eq!(config.rdma.device.as_deref(), Some("mlx5_0"));
        assert_eq!((config.rdma.ib_port, config.rdma.gid_index), (1, 0), "the defaults");

        let dir = std::env::temp_dir().join(format!("corekv-rdma-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("node.toml");
        std::fs::write(
            &path,
            "rdma = \"verbs\"\nrdma-port = 9000\nrdma-pool = 8388608\nrdma-ib-port = 2\nrdma-gid-index = 3\n",
        )
        .unwrap();
        let config = Config::resolve(Cli {
            config: Some(path.clone()),
            ..Cli::default()
        })
        .unwrap();
        assert_eq!(config.rdma.provider, RdmaProvider::Verbs);
        assert_eq!((config.rdma.port, config.rdma.pool_bytes), (9000, 8 << 20));
        assert_eq!((config.rdma.ib_port, config.rdma.gid_index), (2, 3));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bad_rdma_settings_are_rejected() {
        for (cli, prefix) in [
            (
                Cli {
                    rdma: Some("infiniband".into()),
                    ..Cli::default()
                },
                "invalid rdma 'infiniband'",
            ),
            (
                Cli {
                    rdma_pool: Some("1mb".into()),
                    ..Cli::default()
                },
                "invalid rdma-pool",
            ),
            (
                Cli {
                    rdma_port: Some(65535),
                    shards: Some(2),
                    ..Cli::default()
                },
                "invalid rdma-port '65535'",
            ),
            (
                Cli {
                    rdma_ib_port: Some(0),
                    ..Cli::default()
                },
                "invalid rdma-ib-port '0'",
            ),
        ] {
            let err = Config::resolve(cli).unwrap_err();
            assert!(err.to_string().starts_with(prefix), "{err}");
        }
    }

    #[test]
    fn busy_poll_takes_microseconds_up_to_one_millisecond() {
        use std::time::Duration;
        assert_eq!(parse_busy_poll("0"), Ok(Duration::ZERO));
        assert_eq!(parse_busy_poll("30us"), Ok(Duration::from_micros(30)));
        assert_eq!(parse_busy_poll("1ms"), Ok(Duration::from_millis(1)));
        assert!(parse_busy_poll("2ms").is_err());
        assert!(
            parse_busy_poll("30").is_err(),
            "a bare number other than 0 is ambiguous"
        );
        assert!(parse_busy_poll("fast").is_err());
        let config = Config::resolve(Cli {
            busy_poll: Some("50us".into()),
            ..Cli::default()
        })
        .unwrap();
        assert_eq!(config.busy_poll, Duration::from_micros(50));
        assert_eq!(Config::resolve(Cli::default()).unwrap().busy_poll, Duration::ZERO);
    }
}
