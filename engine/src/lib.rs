//! One corekv shard's data.
//!
//! A [`Keyspace`] holds a shard's databases: for each, a key index ([`table`]) whose entries are
//! 32-bit handles into the shard's slab memory ([`slab_memory`]), where each item (header, key and
//! value together) lives in a chunk of its size class. TTLs, approximated-LRU/random/TTL eviction
//! under a byte budget, and exact memory accounting live here too.
//!
//! The engine knows nothing of the network or the runtime: it is a single-threaded data structure
//! owned by one shard's executor, and every operation is synchronous and bounded.
//!
//! [`log`] holds the engine side of per-shard persistence: the on-disk format, the journal a
//! keyspace records its mutations in, snapshots, directory-backed storage and whole-shard recovery.

pub mod glob;
mod item;
mod keyspace;
pub mod log;
pub mod slab_memory;
pub mod table;

pub use keyspace::{
    EngineConfig, EngineError, EvictionPolicy, ExpireCycleStats, Expiry, Keyspace, KeyspaceStats, MemoryStats,
    ValueInfo,
};
