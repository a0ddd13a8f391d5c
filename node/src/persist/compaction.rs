//! Compaction: a snapshot of a shard's live data, after which the log segments it covers go.
//!
//! Order (see `engine/FORMAT.md`): note X, the sequence of the last record journaled; ask the
//! writer to start a new segment; write every live key into `snapshot.tmp` while requests go on
//! (a few hundred keys per step, yielding to the executor between steps, in the low-priority
//! task queue); sync it and rename it to `snapshot-X`; sync the directory; then delete the older
//! snapshots and every segment whose records are all ≤ X.
//!
//! The snapshot is not a point-in-time image: keys written while it runs may appear with their
//! newer values. That is safe because restart replays every record after X on top of it, and
//! records carry final values. SWAPDB during a snapshot would mix two databases' contents, so the
//! snapshot starts over when the keyspace's swap epoch moves.

use std::rc::Rc;

use corekv_engine::log::dir_storage::{snapshot_file_name, DirStorage, SNAPSHOT_TMP_NAME};
use corekv_engine::log::snapshot::{SnapshotEncoder, SnapshotHeader};
use corekv_engine::log::storage::SnapshotStore;
use futures::AsyncWriteExt;
use glommio::io::{DmaStreamWriterBuilder, OpenOptions};

use super::recovery::encode_scan_step;
use crate::shard::Shard;

/// Bytes encoded before they are handed to the file.
const WRITE_CHUNK: usize = 1 << 20;
/// Attempts before a snapshot that keeps being restarted by SWAPDB gives up.
const MAX_RESTARTS: usize = 8;

/// Why a compaction did not happen.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CompactionError {
    #[error("durability is none: there is no log to compact")]
    Disabled,
    #[error("Background save already in progress")]
    InProgress,
    #[error("{0}")]
    Failed(String),
}

/// Marks a compaction of `shard` as started, or says why it cannot start. Every success must be
/// followed by [`run_begun`].
pub fn try_begin(shard: &Shard) -> Result<(), CompactionError> {
    let Some(persist) = shard.persist.as_ref() else {
        return Err(CompactionError::Disabled);
    };
    let mut state = persist.compaction.borrow_mut();
    if state.in_progress {
        return Err(CompactionError::InProgress);
    }
    state.in_progress = true;
    Ok(())
}

/// Takes a snapshot of `shard` and drops the log it covers (after [`try_begin`]).
pub async fn run_begun(shard: &Rc<Shard>) -> Result<(), CompactionError> {
    let persist = shard.persist.as_ref().ok_or(CompactionError::Disabled)?;
    let started = std::time::Instant::now();
    let result = snapshot_and_trim(shard).await;
    let mut state = persist.compaction.borrow_mut();
    state.in_progress = false;
    state.runs += 1;
    match &result {
        Ok((through, bytes)) => {
            state.last_ok = true;
            state.last_error.clear();
            state.last_save_unix = Some(crate::shard::now_ms() / 1000);
            state.snapshot_bytes = *bytes;
            state.recovered_log_bytes = 0;
            tracing::info!(
                "shard {}: snapshot through record {through} written ({:.1} MB in {} ms)",
                shard.id,
                *bytes as f64 / 1e6,
                started.elapsed().as_millis()
            );
        }
        Err(e) => {
            state.last_ok = false;
            state.last_error = e.clone();
            tracing::error!("shard {}: compaction failed: {e}", shard.id);
        }
    }
    result.map(|_| ()).map_err(CompactionError::Failed)
}

/// Writes the snapshot and has the writer remove what it covers: (X, snapshot bytes).
async fn snapshot_and_trim(shard: &Rc<Shard>) -> Result<(u64, u64), String> {
    let persist = shard.persist.as_ref().expect("checked by compact");
    let dir = persist.dir.clone();
    let tmp = dir.join(SNAPSHOT_TMP_NAME);
    for _ in 0..MAX_RESTARTS {
        let (through, epoch) = {
            let mut ks = shard.keyspace.borrow_mut();
            let through = ks.journal_mut().map_or(0, |j| j.last_seq());
            (through, ks.swap_epoch())
        };
        persist.compaction.borrow_mut().log_bytes_at_snapshot = persist.log.stats.borrow().bytes_written;
        persist.log.request_roll();
        let _ = std::fs::remove_file(&tmp);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .dma_open(&tmp)
            .await
            .map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
        let mut writer = DmaStreamWriterBuilder::new(file)
            .with_buffer_size(WRITE_CHUNK)
            .with_write_behind(4)
            .build();
        let mut out = Vec::with_capacity(WRITE_CHUNK + 64 * 1024);
        let mut encoder = SnapshotEncoder::new(
            &SnapshotHeader {
                shard_id: shard.id as u32,
                shard_count: shard.shards as u32,
                through_seq: through,
            },
            &mut out,
        );
        let databases = shard.keyspace.borrow().databases();
        let mut swapped = false;
        'dbs: for db in 0..databases {
            let mut cursor = 0;
            loop {
                {
                    let mut ks = shard.keyspace.borrow_mut();
                    if ks.swap_epoch() != epoch {
                        swapped = true;
                        break 'dbs;
                    }
                    let now = crate::shard::now_ms();
                    cursor = encode_scan_step(&mut ks, &mut encoder, &mut out, db, cursor, now)?;
                }
                if out.len() >= WRITE_CHUNK {
                    writer
                        .write_all(&out)
                        .await
                        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
                    out.clear();
                }
                glommio::yield_if_needed().await;
                if cursor == 0 {
                    break;
                }
            }
        }
        if swapped {
            let _ = writer.close().await;
            tracing::info!("shard {}: SWAPDB during a snapshot: starting it over", shard.id);
            continue;
        }
        encoder.finish(&mut out);
        writer
            .write_all(&out)
            .await
            .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        // Closing flushes the last partial block, truncates to the exact size and syncs.
        writer
            .close()
            .await
            .map_err(|e| format!("cannot sync {}: {e}", tmp.display()))?;
        let bytes = std::fs::metadata(&tmp).map(|m| m.len()).unwrap_or(0);
        let target = dir.join(snapshot_file_name(through));
        std::fs::rename(&tmp, &target).map_err(|e| format!("cannot install {}: {e}", target.display()))?;
        sync_dir(&dir).await?;
        remove_older_snapshots(&dir, through).await?;
        persist.log.request_removal(through);
        return Ok((through, bytes));
    }
    Err("SWAPDB kept interrupting the snapshot".into())
}

async fn sync_dir(dir: &std::path::Path) -> Result<(), String> {
    super::files::sync_dir(dir)
        .await
        .map_err(|e| format!("cannot sync {}: {e}", dir.display()))
}

async fn remove_older_snapshots(dir: &std::path::Path, newest: u64) -> Result<(), String> {
    let storage = DirStorage::open(dir).map_err(|e| format!("cannot open {}: {e}", dir.display()))?;
    let older: Vec<u64> = storage
        .list_snapshots()
        .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
        .into_iter()
        .filter(|&x| x < newest)
        .collect();
    for &x in &older {
        let path = storage.snapshot_path(x);
        std::fs::remove_file(&path).map_err(|e| format!("cannot remove {}: {e}", path.display()))?;
    }
    if !older.is_empty() {
        sync_dir(dir).await?;
    }
    Ok(())
}
