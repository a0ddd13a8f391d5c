//! A shard's persistence log: the on-disk format, the storage it is written to, the records the
//! keyspace produces, snapshots, and the recovery that replays them at restart.
//!
//! - [`format`](mod@format): segment header and record encoding (byte tables in `engine/FORMAT.md`);
//! - [`journal`]: the [`journal::Journal`] a keyspace appends its mutations to, as encoded records;
//! - [`snapshot`]: snapshot files (a shard's whole state through a sequence): encoder and
//!   streaming loader;
//! - [`storage`]: the [`storage::SegmentStorage`] and [`storage::SnapshotStore`] traits, and
//!   in-memory and fault-injecting implementations for tests;
//! - [`dir_storage`]: [`dir_storage::DirStorage`], a shard directory on a real file system, and the
//!   file naming rules;
//! - [`recovery`]: verifies a shard's snapshot and segments and replays them
//!   ([`recovery::recover_shard`]).
//!
//! The node owns the writer (DMA files, group commit) and the compaction schedule; it follows the
//! write, sync and compaction order in `engine/FORMAT.md`.

pub mod dir_storage;
pub mod format;
pub mod journal;
pub mod recovery;
pub mod snapshot;
pub mod storage;

#[cfg(test)]
mod test_writer;
