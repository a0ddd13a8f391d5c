//! A shard's persistence log (groundwork): the on-disk format, the storage it is written to, and
//! the recovery scan that replays it at restart.
//!
//! - [`format`]: segment header and record encoding (byte tables in `engine/FORMAT.md`);
//! - [`storage`]: the [`storage::SegmentStorage`] trait, and in-memory and fault-injecting
//!   implementations for tests;
//! - [`recovery`]: verifies a shard's segments and replays their records.
//!
//! No writer, file-backed storage or node wiring exists yet.

pub mod format;
pub mod recovery;
pub mod storage;

#[cfg(test)]
mod test_writer;
