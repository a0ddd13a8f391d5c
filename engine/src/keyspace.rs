//! A shard's databases and the operations the command layer builds on.
//!
//! Times are milliseconds since the Unix epoch, passed in by the caller (`now_ms`), so that the
//! engine never reads a clock and tests control time. A key whose expiry time is ≤ `now_ms` is
//! logically absent: every read path deletes it lazily (and counts it in `expired_keys`).

/// How the engine frees memory when a write would exceed `maxmemory`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum EvictionPolicy {
    /// Refuse the write with [`EngineError::OutOfMemory`].
    #[default]
    NoEviction,
    /// Evict the least recently used key among a sample of all keys.
    AllKeysLru,
    /// Evict the least recently used key among a sample of keys with a TTL.
    VolatileLru,
    /// Evict a random key.
    AllKeysRandom,
    /// Evict the key with the nearest expiry among a sample of keys with a TTL.
    VolatileTtl,
}

#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Number of databases (SELECT 0..databases).
    pub databases: usize,
    /// This shard's byte budget for [`MemoryStats::used_bytes`]; 0 means unlimited.
    pub maxmemory_bytes: u64,
    pub policy: EvictionPolicy,
    /// Keys sampled per eviction (Redis's `maxmemory-samples`, default 5).
    pub eviction_samples: usize,
}

/// Errors the engine returns to the command layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The write needs memory the budget cannot give (noeviction, or nothing left to evict).
    #[error("OOM command not allowed when used memory > 'maxmemory'.")]
    OutOfMemory,
    /// A key or value larger than the engine supports (documented limit).
    #[error("value too large")]
    TooLarge,
}

/// What to do with a key's TTL on write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// No TTL (a previous one is removed).
    Persist,
    /// Keep the key's current TTL, if it had one (SET KEEPTTL, APPEND, INCR, SETRANGE...).
    Keep,
    /// Expire at this absolute time in ms.
    At(u64),
}

/// Metadata about a live key (OBJECT, TTL, TYPE...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ValueInfo {
    pub value_len: usize,
    /// Absolute expiry in ms, if any.
    pub expire_at_ms: Option<u64>,
    /// Seconds since the last access (approximate LRU clock, at least 1 s resolution).
    pub idle_secs: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Everything the engine holds: slab pages, large-value allocations, index tables.
    pub used_bytes: u64,
    /// Bytes of keys and values themselves (sum over live items of key_len + value_len).
    pub dataset_bytes: u64,
    /// Bytes of index tables (all databases, including the TTL index).
    pub index_bytes: u64,
    /// Bytes of slab pages allocated (all size classes).
    pub slab_page_bytes: u64,
    /// Bytes of slab chunks currently holding items (≤ slab_page_bytes).
    pub slab_used_bytes: u64,
    /// Bytes in allocations for items too large for any size class.
    pub large_bytes: u64,
    /// Live items (all databases).
    pub items: u64,
    /// The budget (0 = unlimited).
    pub maxmemory_bytes: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeyspaceStats {
    pub expired_keys: u64,
    pub evicted_keys: u64,
    pub keyspace_hits: u64,
    pub keyspace_misses: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExpireCycleStats {
    pub sampled: u64,
    pub expired: u64,
    /// True when the cycle stopped because its time budget ran out.
    pub timed_out: bool,
}

pub struct Keyspace {
    // databases, slab memory, stats ...
}

impl Keyspace {
    pub fn new(config: EngineConfig) -> Self { todo!() }
    pub fn config(&self) -> &EngineConfig { todo!() }
    /// Changes the budget/policy at run time (CONFIG SET). Shrinking does not evict at once: the
    /// next writes evict (or are refused) until usage is back under the budget.
    pub fn set_limits(&mut self, maxmemory_bytes: u64, policy: EvictionPolicy) { todo!() }
    pub fn databases(&self) -> usize { todo!() }

    /// The value of a live key, marking it recently used and counting a hit or miss.
    pub fn get(&mut self, db: usize, key: &[u8], now_ms: u64) -> Option<&[u8]> { todo!() }
    /// Like [`Keyspace::get`] but without touching LRU or hit/miss statistics (for internal
    /// read-modify-write and for OBJECT/TTL-like commands).
    pub fn peek(&mut self, db: usize, key: &[u8], now_ms: u64) -> Option<&[u8]> { todo!() }
    /// Metadata of a live key (does not touch LRU).
    pub fn info(&mut self, db: usize, key: &[u8], now_ms: u64) -> Option<ValueInfo> { todo!() }
    /// Whether the key is live (does not count hits; does update LRU like Redis's EXISTS? no: it does not).
    pub fn contains(&mut self, db: usize, key: &[u8], now_ms: u64) -> bool { todo!() }
    /// Marks a live key as just used (TOUCH). Returns whether it exists.
    pub fn touch(&mut self, db: usize, key: &[u8], now_ms: u64) -> bool { todo!() }

    /// Writes `value` under `key` (replacing any previous value) with the given expiry.
    /// Evicts first if the policy allows and the budget needs it; on error nothing changed.
    pub fn set(&mut self, db: usize, key: &[u8], value: &[u8], expiry: Expiry, now_ms: u64) -> Result<(), EngineError> { todo!() }
    /// Removes a key. Returns whether a live key was removed.
    pub fn remove(&mut self, db: usize, key: &[u8], now_ms: u64) -> bool { todo!() }
    /// Sets or clears a live key's expiry. Returns false if the key does not exist.
    /// An expiry at or before `now_ms` deletes the key (and still returns true).
    pub fn set_expiry(&mut self, db: usize, key: &[u8], expire_at_ms: Option<u64>, now_ms: u64) -> bool { todo!() }

    /// Number of keys in a database (keys past their expiry but not yet reclaimed are counted, as in Redis).
    pub fn len(&self, db: usize) -> usize { todo!() }
    /// Number of keys with a TTL in a database.
    pub fn volatile_len(&self, db: usize) -> usize { todo!() }
    pub fn flush_db(&mut self, db: usize) { todo!() }
    pub fn flush_all(&mut self) { todo!() }

    /// One step of a SCAN over `db`: visits the keys of up to about `count` home buckets starting at
    /// `cursor` (reverse-binary order over the index's buckets, as Redis does, so a key present for
    /// the whole scan is returned at least once even across resizes), calling `visit(key)` for each
    /// live key. Returns the next cursor, 0 when the scan is complete.
    pub fn scan(&mut self, db: usize, cursor: u64, count: usize, now_ms: u64, visit: &mut dyn FnMut(&[u8])) -> u64 { todo!() }
    /// Calls `visit` for every live key of `db` (KEYS); the caller filters by pattern.
    pub fn for_each_key(&mut self, db: usize, now_ms: u64, visit: &mut dyn FnMut(&[u8])) { todo!() }
    /// A random live key of `db`, if any (RANDOMKEY). `seed` drives the choice.
    pub fn random_key(&mut self, db: usize, now_ms: u64, seed: u64) -> Option<&[u8]> { todo!() }

    /// Moves a key between databases of this shard (MOVE): false if the source is missing or the target exists.
    pub fn move_key(&mut self, src_db: usize, dst_db: usize, key: &[u8], now_ms: u64) -> bool { todo!() }
    /// Swaps two databases (SWAPDB).
    pub fn swap_db(&mut self, a: usize, b: usize) { todo!() }

    /// Active expiry: samples keys with a TTL and deletes the expired ones, stopping when
    /// `deadline()` says time is up (checked every few dozen keys) or when a sample of 20 holds
    /// fewer than 25% expired keys (Redis's adaptive loop).
    pub fn active_expire_cycle(&mut self, now_ms: u64, deadline: &mut dyn FnMut() -> bool) -> ExpireCycleStats { todo!() }

    pub fn memory_stats(&self) -> MemoryStats { todo!() }
    pub fn stats(&self) -> KeyspaceStats { todo!() }
    pub fn reset_stats(&mut self) { todo!() }
}
