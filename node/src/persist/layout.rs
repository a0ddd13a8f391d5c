//! The data directory's layout, checked and prepared before any shard starts.
//!
//! ```text
//! <data-dir>/LOCK                 flock'd by the running node
//! <data-dir>/LAYOUT               "shards = N": how many shard directories the data is split into
//! <data-dir>/shard-000/ ...       one directory per shard: segment-*.log, snapshot-*.snap
//! <data-dir>/reshard.tmp/         only while the shard count changes (see below)
//! ```
//!
//! Changing the shard count re-distributes the keys: every new shard reads every old shard's
//! directory (read-only, in parallel, keeping the keys it owns under the new count) and writes
//! them as a snapshot into `reshard.tmp/shard-NNN/`. Once all are synced, a `COMPLETE` marker is
//! written and synced, and only then are the old directories replaced. The switch rolls forward:
//! a node that stops in the middle finds `COMPLETE` at its next start and finishes it; without
//! `COMPLETE` the staging directory is discarded and the old data is still whole.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use corekv_engine::log::dir_storage::shard_dir_name;
use corekv_engine::{EngineConfig, EvictionPolicy, Keyspace};

use crate::config::{Config, Durability};

const LAYOUT: &str = "LAYOUT";
const STAGING: &str = "reshard.tmp";
const COMPLETE: &str = "COMPLETE";

fn io_error(what: &str, path: &Path, e: std::io::Error) -> String {
    format!("cannot {what} {}: {e}", path.display())
}

fn sync_dir(path: &Path) -> Result<(), String> {
    std::fs::File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("sync directory", path, e))
}

/// Writes `text` to `dir/name` atomically (temporary file, fsync, rename, fsync of the directory).
fn write_atomically(dir: &Path, name: &str, text: &str) -> Result<(), String> {
    use std::io::Write;
    let tmp = dir.join(format!("{name}.tmp"));
    let mut file = std::fs::File::create(&tmp).map_err(|e| io_error("create", &tmp, e))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| io_error("write", &tmp, e))?;
    let path = dir.join(name);
    std::fs::rename(&tmp, &path).map_err(|e| io_error("rename to", &path, e))?;
    sync_dir(dir)
}

/// The shard count recorded in `LAYOUT`, if the file exists.
fn read_layout(data_dir: &Path) -> Result<Option<usize>, String> {
    let path = data_dir.join(LAYOUT);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error("read", &path, e)),
    };
    parse_count(&text)
        .map(Some)
        .ok_or_else(|| format!("{} is damaged: expected `shards = N`", path.display()))
}

fn parse_count(text: &str) -> Option<usize> {
    let line = text.lines().find(|l| l.trim_start().starts_with("shards"))?;
    let value = line.split('=').nth(1)?.trim();
    value.parse().ok().filter(|&n| n > 0)
}

fn layout_text(shards: usize) -> String {
    format!("# written by corekv; the number of shard directories the data is split into\nshards = {shards}\n")
}

/// Whether a shard directory holds any log segment or snapshot.
fn holds_data(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with("segment-") || name.starts_with("snapshot-")
        })
    })
}

pub fn shard_dir(data_dir: &Path, shard: usize) -> PathBuf {
    data_dir.join(shard_dir_name(shard as u32))
}

/// Checks and prepares the layout for `config.shards` shards; re-distributes the keys first if
/// the data was written with another shard count.
pub fn prepare(config: &Config) -> Result<(), String> {
    let data_dir = &config.data_dir;
    let staging = data_dir.join(STAGING);
    if staging.join(COMPLETE).exists() {
        tracing::info!("finishing an interrupted change of the shard count");
        finish_switch(data_dir)?;
    } else if staging.exists() {
        tracing::info!("discarding an unfinished change of the shard count (the old data is intact)");
        std::fs::remove_dir_all(&staging).map_err(|e| io_error("remove", &staging, e))?;
    }
    let recorded = read_layout(data_dir)?;
    if config.persistence.durability == Durability::None {
        let count = recorded.unwrap_or(0).max(config.shards);
        if let Some(dir) = (0..count).map(|s| shard_dir(data_dir, s)).find(|d| holds_data(d)) {
            return Err(format!(
                "durability is none, but {} holds a log: corekv would neither load nor update it. Start with \
                 --durability periodic (or always) to use it, or remove the shard-* directories to discard it",
                dir.display()
            ));
        }
        return Ok(());
    }
    match recorded {
        None => {
            if let Some(dir) = (0..crate::config::MAX_SHARDS)
                .map(|s| shard_dir(data_dir, s))
                .find(|d| holds_data(d))
            {
                return Err(format!(
                    "{} holds a log but {} is missing: cannot tell how the data is split; restore LAYOUT \
                     (`shards = N`)",
                    dir.display(),
                    data_dir.join(LAYOUT).display()
                ));
            }
            create_shard_dirs(data_dir, config.shards)?;
            write_atomically(data_dir, LAYOUT, &layout_text(config.shards))
        }
        Some(old) if old == config.shards => create_shard_dirs(data_dir, config.shards),
        Some(old) => reshard(config, old),
    }
}

fn create_shard_dirs(data_dir: &Path, shards: usize) -> Result<(), String> {
    for s in 0..shards {
        let dir = shard_dir(data_dir, s);
        if !dir.exists() {
            std::fs::create_dir_all(&dir).map_err(|e| io_error("create", &dir, e))?;
        }
    }
    sync_dir(data_dir)
}

/// Re-distributes the keys of `old` shard directories over `config.shards` new ones.
fn reshard(config: &Config, old: usize) -> Result<(), String> {
    let data_dir = &config.data_dir;
    let new = config.shards;
    tracing::info!("the data was written by {old} shards and the node now has {new}: re-distributing the keys");
    let started = std::time::Instant::now();
    let old_dirs: Vec<PathBuf> = (0..old).map(|s| shard_dir(data_dir, s)).collect();
    let staging = data_dir.join(STAGING);
    std::fs::create_dir_all(&staging).map_err(|e| io_error("create", &staging, e))?;
    let next = AtomicUsize::new(0);
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(new);
    let results: Vec<Result<(), String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| -> Result<(), String> {
                    loop {
                        let shard = next.fetch_add(1, Ordering::Relaxed);
                        if shard >= new {
                            return Ok(());
                        }
                        // No budget while moving data: the configured one applies once serving.
                        let mut keyspace = Keyspace::new(EngineConfig {
                            databases: config.databases,
                            maxmemory_bytes: 0,
                            policy: EvictionPolicy::NoEviction,
                            eviction_samples: 5,
                        });
                        super::recovery::gather_for_new_shard(
                            &old_dirs,
                            shard as u32,
                            new as u32,
                            config.persistence.repair,
                            &mut keyspace,
                        )?;
                        super::recovery::write_initial_snapshot(
                            &staging.join(shard_dir_name(shard as u32)),
                            shard as u32,
                            new as u32,
                            &mut keyspace,
                        )?;
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a re-distribution thread panicked".into()))
            })
            .collect()
    });
    if let Some(Err(e)) = results.into_iter().find(|r| r.is_err()) {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(format!(
            "cannot change the shard count from {old} to {new}: {e} (the data is unchanged; start with --shards {old} \
             to use it as it is)"
        ));
    }
    write_atomically(&staging, COMPLETE, &layout_text(new))?;
    finish_switch(data_dir)?;
    tracing::info!(
        "re-distributed the keys of {old} shards over {new} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Replaces the old shard directories by the staged ones (idempotent: resumes where a previous
/// attempt stopped).
fn finish_switch(data_dir: &Path) -> Result<(), String> {
    let staging = data_dir.join(STAGING);
    let marker = staging.join(COMPLETE);
    let text = std::fs::read_to_string(&marker).map_err(|e| io_error("read", &marker, e))?;
    let new = parse_count(&text).ok_or_else(|| format!("{} is damaged", marker.display()))?;
    for s in 0..new {
        let staged = staging.join(shard_dir_name(s as u32));
        if staged.exists() {
            let target = shard_dir(data_dir, s);
            if target.exists() {
                std::fs::remove_dir_all(&target).map_err(|e| io_error("remove", &target, e))?;
            }
            std::fs::rename(&staged, &target).map_err(|e| io_error("move into place", &staged, e))?;
        }
    }
    sync_dir(data_dir)?;
    for s in new..crate::config::MAX_SHARDS {
        let old = shard_dir(data_dir, s);
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(|e| io_error("remove", &old, e))?;
        }
    }
    write_atomically(data_dir, LAYOUT, &layout_text(new))?;
    std::fs::remove_dir_all(&staging).map_err(|e| io_error("remove", &staging, e))?;
    sync_dir(data_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_text_round_trips() {
        assert_eq!(parse_count(&layout_text(7)), Some(7));
        assert_eq!(parse_count("shards = 0\n"), None);
        assert_eq!(parse_count("nothing\n"), None);
    }
}
