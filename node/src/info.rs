//! INFO and CONFIG GET: the node's state as text, gathered from every shard.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use crate::config::policy_name;
use crate::conn::Connection;
use crate::node::{NodeShared, Settings};
use crate::shard::{CallReply, ShardCall, ShardReport};
use crate::stats::CommandStats;

/// The Redis version whose command semantics corekv follows (reported as `redis_version`, since
/// clients use it to pick features).
pub const REDIS_COMPAT_VERSION: &str = "7.0.0";

const DEFAULT_SECTIONS: &[&str] = &[
    "server",
    "clients",
    "memory",
    "persistence",
    "stats",
    "replication",
    "cpu",
    "native",
    "keyspace",
];
const ALL_SECTIONS: &[&str] = &[
    "server",
    "clients",
    "memory",
    "persistence",
    "stats",
    "replication",
    "cpu",
    "native",
    "rdma",
    "commandstats",
    "keyspace",
];

/// Renders the INFO sections named in `args` (none: the default set; `all`/`everything`: all).
pub async fn render(conn: &Connection, args: &[Bytes]) -> String {
    let mut wanted: Vec<&str> = Vec::new();
    if args.is_empty() {
        wanted.extend_from_slice(DEFAULT_SECTIONS);
    }
    for arg in args {
        let name = String::from_utf8_lossy(arg).to_ascii_lowercase();
        match name.as_str() {
            "all" | "everything" => wanted.extend_from_slice(ALL_SECTIONS),
            "default" => wanted.extend_from_slice(DEFAULT_SECTIONS),
            other => {
                if let Some(section) = ALL_SECTIONS.iter().find(|s| **s == other) {
                    wanted.push(section);
                }
            }
        }
    }
    let mut seen = Vec::new();
    wanted.retain(|s| {
        let first = !seen.contains(s);
        seen.push(*s);
        first
    });

    let reports: Vec<ShardReport> = conn
        .shard
        .call_all(|_| ShardCall::Report)
        .await
        .into_iter()
        .filter_map(|r| match r {
            CallReply::Report(report) => Some(*report),
            _ => None,
        })
        .collect();
    let node = &conn.shard.node;
    let settings = node.settings();
    let mut text = String::new();
    for section in wanted {
        if !text.is_empty() {
            text.push_str("\r\n");
        }
        section_text(&mut text, section, node, &settings, &reports);
    }
    text
}

fn section_text(out: &mut String, section: &str, node: &NodeShared, settings: &Settings, reports: &[ShardReport]) {
    let uptime = node.started.elapsed().as_secs();
    // Section headers ("# Server") stand alone; every other line is "key:value".
    let mut line = |key: &str, value: &dyn std::fmt::Display| {
        let _ = if key.starts_with('#') {
            write!(out, "{key}\r\n")
        } else {
            write!(out, "{key}:{value}\r\n")
        };
    };
    match section {
        "server" => {
            line("# Server", &"");
            line("redis_version", &REDIS_COMPAT_VERSION);
            line("corekv_version", &env!("CARGO_PKG_VERSION"));
            line("redis_mode", &"standalone");
            line("os", &std::env::consts::OS);
            line("arch_bits", &64);
            line("multiplexing_api", &"io_uring");
            line("process_id", &std::process::id());
            line("run_id", &node.run_id);
            line("tcp_port", &node.port);
            line("uptime_in_seconds", &uptime);
            line("uptime_in_days", &(uptime / 86400));
            line("hz", &10);
            line("shards", &node.config.shards);
            line(
                "executable",
                &std::env::current_exe()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
            );
            line("config_file", &"");
        }
        "clients" => {
            line("# Clients", &"");
            line("connected_clients", &node.connected_clients.load(Ordering::Relaxed));
            line("maxclients", &settings.max_clients);
            line("blocked_clients", &0);
        }
        "memory" => {
            let used: u64 = reports.iter().map(|r| r.memory.used_bytes).sum();
            let dataset: u64 = reports.iter().map(|r| r.memory.dataset_bytes).sum();
            let items: u64 = reports.iter().map(|r| r.memory.items).sum();
            let index: u64 = reports.iter().map(|r| r.memory.index_bytes).sum();
            let pages: u64 = reports.iter().map(|r| r.memory.slab_page_bytes).sum();
            let chunks: u64 = reports.iter().map(|r| r.memory.slab_used_bytes).sum();
            let large: u64 = reports.iter().map(|r| r.memory.large_bytes).sum();
            let rss = resident_bytes();
            line("# Memory", &"");
            line("used_memory", &used);
            line("used_memory_human", &human_bytes(used));
            line("used_memory_rss", &rss);
            line("used_memory_rss_human", &human_bytes(rss));
            line("used_memory_dataset", &dataset);
            line("used_memory_overhead", &used.saturating_sub(dataset));
            line("used_memory_index", &index);
            line("used_memory_slab_pages", &pages);
            line("used_memory_slab_chunks", &chunks);
            line("used_memory_large_values", &large);
            line("keys_in_memory", &items);
            line(
                "overhead_per_key",
                &used.saturating_sub(dataset).checked_div(items).unwrap_or(0),
            );
            line("maxmemory", &settings.maxmemory_bytes);
            line("maxmemory_human", &human_bytes(settings.maxmemory_bytes));
            line("maxmemory_policy", &policy_name(settings.maxmemory_policy));
            // Slab fragmentation: page bytes not holding an item, relative to those that do.
            let slab_ratio = if chunks > 0 { pages as f64 / chunks as f64 } else { 1.0 };
            line("slab_fragmentation_ratio", &format!("{slab_ratio:.2}"));
            let rss_ratio = if used > 0 { rss as f64 / used as f64 } else { 1.0 };
            line("mem_fragmentation_ratio", &format!("{rss_ratio:.2}"));
            line("mem_allocator", &"corekv-slab");
        }
        "persistence" => persistence_section(&mut line, node, reports),
        "stats" => {
            let calls: u64 = reports.iter().map(|r| r.commands.total_calls()).sum();
            let keyspace = reports
                .iter()
                .fold(corekv_engine::KeyspaceStats::default(), |mut acc, r| {
                    acc.expired_keys += r.keyspace.expired_keys;
                    acc.evicted_keys += r.keyspace.evicted_keys;
                    acc.keyspace_hits += r.keyspace.keyspace_hits;
                    acc.keyspace_misses += r.keyspace.keyspace_misses;
                    acc
                });
            line("# Stats", &"");
            line(
                "total_connections_received",
                &node.total_connections.load(Ordering::Relaxed),
            );
            line("total_commands_processed", &calls);
            line(
                "rejected_connections",
                &node.rejected_connections.load(Ordering::Relaxed),
            );
            line("expired_keys", &keyspace.expired_keys);
            line("evicted_keys", &keyspace.evicted_keys);
            line("keyspace_hits", &keyspace.keyspace_hits);
            line("keyspace_misses", &keyspace.keyspace_misses);
            line(
                "cross_shard_messages",
                &reports.iter().map(|r| r.forwarded_messages).sum::<u64>(),
            );
            line(
                "cross_shard_commands",
                &reports.iter().map(|r| r.forwarded_commands).sum::<u64>(),
            );
            line(
                "expire_cycle_cpu_budget_exhausted",
                &reports.iter().map(|r| r.expire_cycle_timeouts).sum::<u64>(),
            );
        }
        "native" => {
            line("# Native", &"");
            line("native_ports", &crate::node::native_port_list(&node.native_ports));
            let sum = |f: fn(&crate::native::NativeStats) -> u64| reports.iter().map(|r| f(&r.native)).sum::<u64>();
            line("native_connections", &sum(|n| n.connections));
            line("native_requests", &sum(|n| n.requests));
            line("native_wrong_shard", &sum(|n| n.wrong_shard));
            for (id, report) in reports.iter().enumerate() {
                let n = &report.native;
                let port = node.native_ports.get(id).copied().unwrap_or(0);
                let value = format!(
                    "port={port},connections={},requests={},wrong_shard={}",
                    n.connections, n.requests, n.wrong_shard
                );
                line(&format!("shard{id}"), &value);
            }
        }
        "rdma" => {
            use std::sync::atomic::Ordering::Relaxed;
            let rdma = &node.rdma;
            line("# Rdma", &"");
            line("rdma_provider", &rdma.provider.name());
            line("rdma_device", &node.config.rdma.device.as_deref().unwrap_or("(first)"));
            line("rdma_ib_port", &node.config.rdma.ib_port);
            line("rdma_gid_index", &node.config.rdma.gid_index);
            line("rdma_ports", &crate::node::native_port_list(&rdma.ports));
            line("rdma_pool_bytes_per_shard", &node.config.rdma.pool_bytes);
            let sum = |f: fn(&crate::rdma_serve::RdmaShardStats) -> &std::sync::atomic::AtomicU64| {
                rdma.stats.iter().map(|s| f(s).load(Relaxed)).sum::<u64>()
            };
            line("rdma_sessions", &sum(|s| &s.sessions));
            line("rdma_requests", &sum(|s| &s.requests));
            line("rdma_wrong_shard", &sum(|s| &s.wrong_shard));
            for (id, (port, s)) in rdma.ports.iter().zip(&rdma.stats).enumerate() {
                let value = format!(
                    "port={port},sessions={},sessions_total={},requests={},wrong_shard={},pulls={},refused={},\
                     pool_used_bytes={}",
                    s.sessions.load(Relaxed),
                    s.sessions_total.load(Relaxed),
                    s.requests.load(Relaxed),
                    s.wrong_shard.load(Relaxed),
                    s.pulls.load(Relaxed),
                    s.refused.load(Relaxed),
                    s.pool_used_bytes.load(Relaxed)
                );
                line(&format!("shard{id}"), &value);
            }
        }
        "replication" => {
            line("# Replication", &"");
            line("role", &"master");
            line("connected_slaves", &0);
        }
        "cpu" => {
            let (user, system) = cpu_seconds();
            line("# CPU", &"");
            line("used_cpu_sys", &format!("{system:.6}"));
            line("used_cpu_user", &format!("{user:.6}"));
        }
        "commandstats" => {
            let mut total = CommandStats::default();
            for report in reports {
                total.merge(&report.commands);
            }
            line("# Commandstats", &"");
            for (name, stat) in total.iter() {
                let per_call = if stat.calls > 0 {
                    stat.usec as f64 / stat.calls as f64
                } else {
                    0.0
                };
                line(
                    &format!("cmdstat_{name}"),
                    &format!(
                        "calls={},usec={},usec_per_call={per_call:.2},rejected_calls={},failed_calls={}",
                        stat.calls, stat.usec, stat.rejected_calls, stat.failed_calls
                    ),
                );
            }
        }
        "keyspace" => {
            line("# Keyspace", &"");
            for db in 0..node.config.databases {
                let (keys, expires) = reports
                    .iter()
                    .filter_map(|r| r.databases.get(db))
                    .fold((0, 0), |(k, e), (keys, expires)| (k + keys, e + expires));
                if keys > 0 {
                    line(&format!("db{db}"), &format!("keys={keys},expires={expires},avg_ttl=0"));
                }
            }
        }
        _ => {}
    }
}

/// The parameters CONFIG GET reports, with their current values.
pub fn config_values(node: &NodeShared, settings: &Settings) -> Vec<(String, String)> {
    let c = &node.config;
    vec![
        ("bind".into(), c.bind.to_string()),
        ("port".into(), node.port.to_string()),
        ("databases".into(), c.databases.to_string()),
        ("dir".into(), c.data_dir.display().to_string()),
        ("maxclients".into(), settings.max_clients.to_string()),
        ("maxmemory".into(), settings.maxmemory_bytes.to_string()),
        ("maxmemory-policy".into(), policy_name(settings.maxmemory_policy).into()),
        ("maxmemory-samples".into(), settings.maxmemory_samples.to_string()),
        ("proto-max-bulk-len".into(), (512u64 * 1024 * 1024).to_string()),
        ("client-query-buffer-limit".into(), (1024u64 * 1024 * 1024).to_string()),
        ("hz".into(), "10".into()),
        ("save".into(), String::new()),
        ("appendonly".into(), "no".into()),
        ("timeout".into(), "0".into()),
        ("shards".into(), c.shards.to_string()),
    ]
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{value:.2}{}", UNITS[unit])
    }
}

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn cpu_seconds() -> (f64, f64) {
    match nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF) {
        Ok(usage) => {
            let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
            (secs(usage.user_time()), secs(usage.system_time()))
        }
        Err(_) => (0.0, 0.0),
    }
}

/// LASTSAVE and `rdb_last_save_time`: the oldest of the shards' last completed snapshots (the
/// last moment every shard had one), or the node's start time for shards without one.
pub fn last_save_unix<'a>(node: &NodeShared, logs: impl IntoIterator<Item = &'a crate::shard::PersistReport>) -> u64 {
    let started_unix = (crate::shard::now_ms() / 1000).saturating_sub(node.started.elapsed().as_secs());
    logs.into_iter()
        .map(|r| r.compaction.last_save_unix.unwrap_or(started_unix))
        .min()
        .unwrap_or(started_unix)
}

/// INFO persistence: Redis's field names where they mean the same here (tools read them), and
/// corekv's own for the log. Figures are summed over shards; states report the worst shard.
fn persistence_section(line: &mut dyn FnMut(&str, &dyn std::fmt::Display), node: &NodeShared, reports: &[ShardReport]) {
    let p = &node.config.persistence;
    let logs: Vec<&crate::shard::PersistReport> = reports.iter().filter_map(|r| r.persistence.as_ref()).collect();
    let sum = |f: &dyn Fn(&crate::shard::PersistReport) -> u64| -> u64 { logs.iter().map(|r| f(r)).sum() };
    let last_save = last_save_unix(node, logs.iter().copied());
    let in_progress = logs.iter().any(|r| r.compaction.in_progress);
    let compaction_ok = logs.iter().all(|r| r.compaction.last_ok);
    let worst = logs
        .iter()
        .map(|r| r.state)
        .max_by_key(|s| match s {
            crate::persist::writer::LogState::Ok => 0,
            crate::persist::writer::LogState::DiskFull => 1,
            crate::persist::writer::LogState::Failed => 2,
        })
        .unwrap_or(crate::persist::writer::LogState::Ok);
    let last_error = logs
        .iter()
        .find(|r| !r.last_error.is_empty())
        .map_or("", |r| r.last_error.as_str());
    let enabled = p.durability != crate::config::Durability::None;
    line("# Persistence", &"");
    line("loading", &0);
    line("durability", &p.durability.name());
    line("fsync_interval_ms", &p.fsync_interval.as_millis());
    line("rdb_changes_since_last_save", &0);
    line("rdb_bgsave_in_progress", &u8::from(in_progress));
    line("rdb_last_save_time", &last_save);
    line("rdb_last_bgsave_status", &if compaction_ok { "ok" } else { "err" });
    line("aof_enabled", &u8::from(enabled));
    line("aof_rewrite_in_progress", &u8::from(in_progress));
    line("aof_last_bgrewrite_status", &if compaction_ok { "ok" } else { "err" });
    line(
        "aof_last_write_status",
        &if worst == crate::persist::writer::LogState::Ok {
            "ok"
        } else {
            "err"
        },
    );
    line("log_status", &worst.name());
    line("log_last_error", &last_error);
    line("log_bytes_written", &sum(&|r| r.bytes_written));
    line("log_bytes_since_snapshot", &sum(&|r| r.log_bytes_since_snapshot));
    line("log_segments", &sum(&|r| r.segments as u64));
    line("log_backlog_bytes", &sum(&|r| r.backlog_bytes));
    line("log_fsyncs", &sum(&|r| r.fsyncs));
    let fsyncs = sum(&|r| r.fsyncs);
    let per_sync = if fsyncs > 0 {
        sum(&|r| r.records_synced) as f64 / fsyncs as f64
    } else {
        0.0
    };
    line("log_records_per_fsync", &format!("{per_sync:.2}"));
    let last_fsync = logs.iter().filter_map(|r| r.last_fsync_ms_ago).min();
    line("log_last_fsync_ms_ago", &last_fsync.map_or(-1, |ms| ms as i64));
    line("log_compactions", &sum(&|r| r.compaction.runs));
    line("log_snapshot_bytes", &sum(&|r| r.compaction.snapshot_bytes));
    line(
        "log_last_compaction_error",
        &logs
            .iter()
            .find(|r| !r.compaction.last_error.is_empty())
            .map_or("", |r| r.compaction.last_error.as_str()),
    );
    line("recovery_records", &sum(&|r| r.recovery.records));
    line("recovery_bytes", &sum(&|r| r.recovery.bytes));
    line(
        "recovery_ms",
        &logs.iter().map(|r| r.recovery.millis).max().unwrap_or(0),
    );
    line("recovery_truncated_bytes", &sum(&|r| r.recovery.truncated_bytes));
    line("recovery_snapshot_records", &sum(&|r| r.recovery.snapshot_records));
}
