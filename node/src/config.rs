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
}

/// The same settings as a TOML file; keys are spelled like the flags (`maxmemory-policy = "allkeys-lru"`).
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    pub bind: Option<IpAddr>,
    pub port: Option<u16>,
    pub shards: Option<usize>,
    pub data_dir: Option<PathBuf>,
    pub maxmemory: Option<toml::Value>,
    pub maxmemory_policy: Option<String>,
    pub databases: Option<usize>,
    pub max_clients: Option<usize>,
    pub no_pin: Option<bool>,
}

/// The resolved settings the node runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub bind: IpAddr,
    pub port: u16,
    pub shards: usize,
    pub data_dir: PathBuf,
    pub maxmemory_bytes: u64,
    pub maxmemory_policy: EvictionPolicy,
    pub databases: usize,
    pub max_clients: usize,
    pub pin: bool,
}

pub const DEFAULT_PORT: u16 = 7379;
pub const MAX_SHARDS: usize = 1024;
pub const MAX_DATABASES: usize = 1 << 16;

impl Config {
    /// Resolves flags over the file over defaults.
    pub fn resolve(cli: Cli) -> Result<Config, ConfigError> {
        let file = match &cli.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
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
        Ok(Config {
            bind: cli.bind.or(file.bind).unwrap_or(IpAddr::from([127, 0, 0, 1])),
            port: cli.port.or(file.port).unwrap_or(DEFAULT_PORT),
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
        })
    }
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
}
