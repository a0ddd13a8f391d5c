//! A shard's databases and the operations the command layer builds on.
//!
//! Times are milliseconds since the Unix epoch, passed in by the caller (`now_ms`), so that the
//! engine never reads a clock and tests control time. A key whose expiry time is ≤ `now_ms` is
//! logically absent: every read path deletes it lazily (and counts it in `expired_keys`).
//!
//! Memory: `used_bytes` is slab pages + large allocations + index tables. A write that would take
//! it past the budget first evicts (per policy), and is refused with
//! [`EngineError::OutOfMemory`] if it still cannot fit, leaving the old value intact. Writes that
//! have no error path (`set_expiry` adding a TTL to a key, `move_key`) may overshoot the budget by
//! an index growth or one chunk; the next `set` evicts it back.

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
    /// A database index outside `0..databases` (the command layer normally validates SELECT).
    #[error("DB index is out of range")]
    InvalidDb,
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

/// A pair [`Keyspace::set_all`] has written, and what its key held before: where its value is in
/// the undo buffer, and its expiry.
type Undo<'a> = (&'a [u8], Option<(std::ops::Range<usize>, Option<u64>)>);

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

use crate::item;
use crate::log::format::RecordType;
use crate::log::journal::Journal;
use crate::slab_memory::{Handle, SlabMemory};
use crate::table::{hash_handle, hash_key, Table};

/// Keys examined per round of the active expiry cycle (Redis's ACTIVE_EXPIRE_CYCLE_KEYS_PER_LOOP).
const EXPIRE_SAMPLE: usize = 20;
/// Keys examined between two calls of the cycle's deadline.
const DEADLINE_EVERY: u64 = 16;
/// Evictions that did not bring usage closer to the budget before eviction changes tactics.
const FRUITLESS_LIMIT: u32 = 8;

#[derive(Default)]
struct Db {
    main: Table,
    /// Handles of the items that have a TTL, hashed by handle.
    expires: Table,
    /// Where the active expiry cycle resumes walking `expires`.
    expire_cursor: usize,
}

impl Db {
    fn index_bytes(&self) -> u64 {
        (self.main.bytes() + self.expires.bytes()) as u64
    }
}

/// A shard's databases over one slab memory. See the module documentation.
pub struct Keyspace {
    config: EngineConfig,
    dbs: Vec<Db>,
    mem: SlabMemory,
    stats: KeyspaceStats,
    /// Sum of `Db::index_bytes` over all databases, kept up to date by every table mutation.
    index_bytes: u64,
    dataset_bytes: u64,
    rng: u64,
    expire_db_cursor: usize,
    /// Where mutations are recorded for the persistence log; `None` costs one branch per write.
    journal: Option<Journal>,
    /// Bumped by every effective `swap_db`.
    swap_epoch: u64,
    /// The values `set_all` overwrote during its current call, back to back (reused).
    undo_values: Vec<u8>,
}

/// Recomputes the index hash of a handle's key (table growth, backward shift, SCAN).
fn key_hash(mem: &SlabMemory) -> impl Fn(u32) -> u64 + '_ {
    move |h| hash_key(item::key(mem.bytes(h)))
}

/// Page size for a budget: about 1/128 of it (at least 64 KiB, at most 1 MiB), so that dozens of
/// size classes can each hold a page at once.
fn page_size_for(maxmemory_bytes: u64) -> usize {
    if maxmemory_bytes == 0 {
        crate::slab_memory::PAGE_SIZE
    } else {
        (maxmemory_bytes / 128).min(crate::slab_memory::PAGE_SIZE as u64) as usize
    }
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Keyspace {
    pub fn new(mut config: EngineConfig) -> Self {
        config.databases = config.databases.max(1);
        let dbs = (0..config.databases).map(|_| Db::default()).collect();
        let mut mem = SlabMemory::new();
        mem.set_page_size(page_size_for(config.maxmemory_bytes));
        Keyspace {
            config,
            dbs,
            mem,
            stats: KeyspaceStats::default(),
            index_bytes: 0,
            dataset_bytes: 0,
            rng: 0x853c_49e6_748f_ea9b,
            expire_db_cursor: 0,
            journal: None,
            swap_epoch: 0,
            undo_values: Vec::new(),
        }
    }

    /// Starts recording every mutation that takes effect into `journal` (see
    /// [`crate::log::journal`]). Replaces any journal already attached.
    ///
    /// Lazy and active expiry are not recorded: replay drops expired keys itself. Evictions are
    /// recorded as deletes, or a restart would bring evicted keys back.
    pub fn attach_journal(&mut self, journal: Journal) {
        // Records carry the database as a u16.
        debug_assert!(self.dbs.len() <= usize::from(u16::MAX) + 1);
        self.journal = Some(journal);
    }

    pub fn journal_mut(&mut self) -> Option<&mut Journal> {
        self.journal.as_mut()
    }

    pub fn detach_journal(&mut self) -> Option<Journal> {
        self.journal.take()
    }

    /// Counts effective `swap_db` calls: a snapshot whose scan saw this change must be restarted,
    /// because a SwapDb record replayed on top of a snapshot is not idempotent.
    pub fn swap_epoch(&self) -> u64 {
        self.swap_epoch
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Changes the budget/policy at run time (CONFIG SET). Shrinking does not evict at once: the
    /// next writes evict (or are refused) until usage is back under the budget.
    pub fn set_limits(&mut self, maxmemory_bytes: u64, policy: EvictionPolicy) {
        self.config.maxmemory_bytes = maxmemory_bytes;
        self.config.policy = policy;
        self.mem.set_page_size(page_size_for(maxmemory_bytes));
    }

    /// Keys sampled per eviction (CONFIG SET maxmemory-samples); at least 1.
    pub fn set_eviction_samples(&mut self, samples: usize) {
        self.config.eviction_samples = samples.max(1);
    }

    pub fn databases(&self) -> usize {
        self.dbs.len()
    }

    fn used_bytes(&self) -> u64 {
        self.mem.total_bytes() + self.index_bytes
    }

    /// Runs a mutation of one database's tables, keeping `index_bytes` exact.
    fn with_db<R>(&mut self, db: usize, f: impl FnOnce(&mut Db, &SlabMemory) -> R) -> R {
        let d = &mut self.dbs[db];
        let before = d.index_bytes();
        let r = f(d, &self.mem);
        self.index_bytes = self.index_bytes - before + d.index_bytes();
        r
    }

    fn expired(&self, h: Handle, now_ms: u64) -> bool {
        item::expire_at(self.mem.bytes(h)).is_some_and(|t| t <= now_ms)
    }

    /// The handle of `key` in `db` if present, expired or not.
    fn find(&self, db: usize, key: &[u8]) -> Option<Handle> {
        let mem = &self.mem;
        let t = &self.dbs[db].main;
        t.find(hash_key(key), |h| item::key(mem.bytes(h)) == key)
            .map(|s| t.handle_at(s))
    }

    /// The handle of a live key, lazily deleting it if it has expired.
    fn lookup(&mut self, db: usize, key: &[u8], now_ms: u64) -> Option<Handle> {
        if db >= self.dbs.len() {
            return None;
        }
        let h = self.find(db, key)?;
        if self.expired(h, now_ms) {
            self.delete(db, h);
            self.stats.expired_keys += 1;
            return None;
        }
        Some(h)
    }

    /// Removes an item from its database's indexes without freeing it.
    fn unlink(&mut self, db: usize, h: Handle) {
        self.with_db(db, |d, mem| {
            let buf = mem.bytes(h);
            let slot = d
                .main
                .find(hash_key(item::key(buf)), |x| x == h)
                .expect("a linked item is in the main index");
            d.main.remove_at(slot, key_hash(mem));
            if item::expire_at(buf).is_some() {
                let slot = d
                    .expires
                    .find(hash_handle(h), |x| x == h)
                    .expect("an item with a TTL is in the expires index");
                d.expires.remove_at(slot, hash_handle);
            }
        })
    }

    /// Adds an item (whose key is not in `db`) to the database's indexes.
    fn link(&mut self, db: usize, h: Handle) {
        self.with_db(db, |d, mem| {
            let buf = mem.bytes(h);
            d.main.insert(hash_key(item::key(buf)), h, key_hash(mem));
            if item::expire_at(buf).is_some() {
                d.expires.insert(hash_handle(h), h, hash_handle);
            }
        })
    }

    fn free_item(&mut self, h: Handle) {
        let l = item::layout(self.mem.bytes(h));
        self.dataset_bytes -= (l.klen + l.vlen) as u64;
        self.mem.free(h);
    }

    fn delete(&mut self, db: usize, h: Handle) {
        self.unlink(db, h);
        self.free_item(h);
    }

    /// The value of a live key, marking it recently used and counting a hit or miss.
    pub fn get(&mut self, db: usize, key: &[u8], now_ms: u64) -> Option<&[u8]> {
        match self.lookup(db, key, now_ms) {
            Some(h) => {
                self.stats.keyspace_hits += 1;
                item::set_lru(self.mem.bytes_mut(h), item::lru_clock(now_ms));
                Some(item::value(self.mem.bytes(h)))
            }
            None => {
                self.stats.keyspace_misses += 1;
                None
            }
        }
    }

    /// Like [`Keyspace::get`] but without touching LRU or hit/miss statistics (for internal
    /// read-modify-write and for OBJECT/TTL-like commands).
    pub fn peek(&mut self, db: usize, key: &[u8], now_ms: u64) -> Option<&[u8]> {
        let h = self.lookup(db, key, now_ms)?;
        Some(item::value(self.mem.bytes(h)))
    }

    /// Metadata of a live key (does not touch LRU).
    pub fn info(&mut self, db: usize, key: &[u8], now_ms: u64) -> Option<ValueInfo> {
        let h = self.lookup(db, key, now_ms)?;
        let buf = self.mem.bytes(h);
        let l = item::layout(buf);
        Some(ValueInfo {
            value_len: l.vlen,
            expire_at_ms: l.expire_at,
            idle_secs: item::idle_secs(item::lru(buf), now_ms),
        })
    }

    /// Whether the key is live (does not count hits; does update LRU like Redis's EXISTS? no: it does not).
    pub fn contains(&mut self, db: usize, key: &[u8], now_ms: u64) -> bool {
        self.lookup(db, key, now_ms).is_some()
    }

    /// Marks a live key as just used (TOUCH). Returns whether it exists.
    pub fn touch(&mut self, db: usize, key: &[u8], now_ms: u64) -> bool {
        match self.lookup(db, key, now_ms) {
            Some(h) => {
                item::set_lru(self.mem.bytes_mut(h), item::lru_clock(now_ms));
                true
            }
            None => false,
        }
    }

    /// Writes `value` under `key` (replacing any previous value) with the given expiry.
    /// Evicts first if the policy allows and the budget needs it; on error nothing changed.
    pub fn set(&mut self, db: usize, key: &[u8], value: &[u8], expiry: Expiry, now_ms: u64) -> Result<(), EngineError> {
        self.set_saving(db, key, value, expiry, now_ms, |_| {})
    }

    /// [`set`](Self::set), first showing `save` what the key holds (value and expiry), or `None`
    /// if it is absent: one lookup serves both.
    fn set_saving(
        &mut self,
        db: usize,
        key: &[u8],
        value: &[u8],
        expiry: Expiry,
        now_ms: u64,
        save: impl FnOnce(Option<(&[u8], Option<u64>)>),
    ) -> Result<(), EngineError> {
        if db >= self.dbs.len() {
            return Err(EngineError::InvalidDb);
        }
        if key.len() > item::MAX_LEN || value.len() > item::MAX_LEN {
            return Err(EngineError::TooLarge);
        }
        let old = self.lookup(db, key, now_ms);
        let old_ttl = old.and_then(|h| item::expire_at(self.mem.bytes(h)));
        save(old.map(|h| (item::value(self.mem.bytes(h)), old_ttl)));
        let new_ttl = match expiry {
            Expiry::Persist => None,
            Expiry::Keep => old_ttl,
            Expiry::At(t) => Some(t),
        };
        if new_ttl.is_some_and(|t| t <= now_ms) {
            // Written already expired (SET ... PXAT in the past): the key is simply gone.
            if let Some(h) = old {
                self.delete(db, h);
                self.stats.expired_keys += 1;
                if let Some(j) = &mut self.journal {
                    j.append(RecordType::Delete, db as u16, key, b"", 0);
                }
            }
            return Ok(());
        }
        let size = item::size(key.len(), value.len(), new_ttl.is_some());
        let in_place = old.is_some_and(|h| self.mem.fits_in_place(h, size));
        let want = Want {
            db,
            size,
            in_place,
            new_key: old.is_none(),
            add_ttl: new_ttl.is_some() && old_ttl.is_none(),
            exclude: old,
        };
        self.make_room(&want, now_ms)?;
        let lru = item::lru_clock(now_ms);
        match old {
            Some(h) if in_place => {
                let l = item::layout(self.mem.bytes(h));
                if old_ttl.is_some() && new_ttl.is_none() {
                    self.with_db(db, |d, _| {
                        let slot = d.expires.find(hash_handle(h), |x| x == h).expect("indexed");
                        d.expires.remove_at(slot, hash_handle);
                    });
                }
                item::write(self.mem.bytes_mut(h), key, value, new_ttl, lru);
                if old_ttl.is_none() && new_ttl.is_some() {
                    self.with_db(db, |d, _| d.expires.insert(hash_handle(h), h, hash_handle));
                }
                self.dataset_bytes = self.dataset_bytes - l.vlen as u64 + value.len() as u64;
            }
            _ => {
                let nh = self.mem.alloc(size).ok_or(EngineError::OutOfMemory)?;
                item::write(self.mem.bytes_mut(nh), key, value, new_ttl, lru);
                self.dataset_bytes += (key.len() + value.len()) as u64;
                if let Some(h) = old {
                    self.delete(db, h);
                }
                self.link(db, nh);
            }
        }
        if let Some(j) = &mut self.journal {
            // The final absolute expiry (KEEPTTL resolved), never a relative or kept one.
            j.append(RecordType::Set, db as u16, key, value, new_ttl.unwrap_or(0));
        }
        Ok(())
    }

    /// Writes every pair without a TTL (MSET), or none of them: when one is refused, the pairs
    /// written before it get their previous value and TTL back (or are removed again if they were
    /// absent) and the refusal is returned. Keys evicted to make room stay evicted, as when a single
    /// write is refused after evicting. The undo log copies only the values being overwritten, into
    /// one buffer kept from call to call.
    pub fn set_all<'a>(
        &mut self,
        db: usize,
        pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
        now_ms: u64,
    ) -> Result<(), EngineError> {
        let mut values = std::mem::take(&mut self.undo_values);
        values.clear();
        let mut undo: Vec<Undo<'a>> = Vec::new();
        let mut result = Ok(());
        for (key, value) in pairs {
            let mut previous = None;
            let start = values.len();
            let written = self.set_saving(db, key, value, Expiry::Persist, now_ms, |old| {
                previous = old.map(|(bytes, expire_at)| {
                    values.extend_from_slice(bytes);
                    (start..values.len(), expire_at)
                });
            });
            if let Err(refusal) = written {
                self.undo_writes(db, &undo, &values, now_ms);
                result = Err(refusal);
                break;
            }
            undo.push((key, previous));
        }
        self.undo_values = values;
        result
    }

    /// Puts back what `set_all` overwrote, newest first (so each write's memory is released
    /// before the one before it is restored, and a key written twice ends with its first value).
    fn undo_writes(&mut self, db: usize, undo: &[Undo<'_>], values: &[u8], now_ms: u64) {
        for (key, previous) in undo.iter().rev() {
            match previous {
                None => {
                    self.remove(db, key, now_ms);
                }
                Some((range, expire_at)) => {
                    let expiry = expire_at.map_or(Expiry::Persist, Expiry::At);
                    // The old value fitted a moment ago and its memory was just released (the
                    // chunk of its class, or the page it moved to): restoring it can only fail if
                    // eviction is off and another class took that page meanwhile. The key then
                    // keeps the new value, which is the best left to do.
                    let _ = self.set(db, key, &values[range.clone()], expiry, now_ms);
                }
            }
        }
    }

    /// Bytes `used_bytes` would grow by if `want` were written now.
    fn need_bytes(&self, want: &Want) -> u64 {
        let d = &self.dbs[want.db];
        let mut need = if want.in_place {
            0
        } else {
            self.mem.alloc_cost(want.size)
        };
        if want.new_key {
            need += d.main.grow_bytes_for_insert() as u64;
        }
        if want.add_ttl {
            need += d.expires.grow_bytes_for_insert() as u64;
        }
        need
    }

    /// Evicts until `want` fits the budget, or fails with `OutOfMemory`.
    fn make_room(&mut self, want: &Want, now_ms: u64) -> Result<(), EngineError> {
        let max = self.config.maxmemory_bytes;
        if max == 0 {
            return Ok(());
        }
        let class = if want.in_place {
            None
        } else {
            self.mem.class_for_size(want.size)
        };
        let mut fruitless = 0u32;
        let mut last_total = u64::MAX;
        loop {
            let total = self.used_bytes() + self.need_bytes(want);
            if total <= max {
                return Ok(());
            }
            if total < last_total {
                fruitless = 0;
            } else {
                fruitless += 1;
            }
            last_total = total;
            if self.mem.release_spare() {
                continue;
            }
            if self.config.policy == EvictionPolicy::NoEviction {
                return Err(EngineError::OutOfMemory);
            }
            // When the item needs a new page of its class, freeing a chunk of that class is what
            // helps; other evictions only help once they empty a whole page.
            let prefer = class.filter(|_| self.mem.alloc_cost(want.size) > 0);
            let Some((best, best_in_class)) = self.pick_victim(prefer, want.exclude, now_ms) else {
                return Err(EngineError::OutOfMemory);
            };
            let (_, db, victim) = best;
            let victim_class = self.mem.class_of(victim);
            match prefer {
                Some(c) if victim_class != Some(c) => match best_in_class {
                    // A sampled item of the needed class is as good a victim as any: its chunk
                    // is exactly what the write needs.
                    Some((score, db, h)) if score >= best.0 => self.evict(db, h, now_ms),
                    _ if fruitless >= FRUITLESS_LIMIT / 2 && self.mem.class_used_chunks(c) > 0 => {
                        match self.victim_in_class(c, want.exclude, now_ms) {
                            Some((db, h)) => self.evict(db, h, now_ms),
                            None => self.evict_page(db, victim, want.exclude, now_ms),
                        }
                    }
                    // The best victim lives in another class: free its whole page so the page
                    // can move to the needed class (memcached-style slab rebalancing).
                    _ => self.evict_page(db, victim, want.exclude, now_ms),
                },
                _ if victim_class.is_some() && fruitless >= FRUITLESS_LIMIT => {
                    // Single evictions keep missing (they free chunks, not pages): free a page.
                    self.evict_page(db, victim, want.exclude, now_ms);
                }
                _ => self.evict(db, victim, now_ms),
            }
        }
    }

    fn volatile_policy(&self) -> bool {
        matches!(
            self.config.policy,
            EvictionPolicy::VolatileLru | EvictionPolicy::VolatileTtl
        )
    }

    /// Eviction score of an item under the current policy: higher is evicted first. Random
    /// eviction scores with a fresh random number, so the best of a sample is a random key.
    fn score(&mut self, h: Handle, now_ms: u64) -> u64 {
        let buf = self.mem.bytes(h);
        match self.config.policy {
            EvictionPolicy::AllKeysLru | EvictionPolicy::VolatileLru => item::idle_secs(item::lru(buf), now_ms),
            EvictionPolicy::VolatileTtl => u64::MAX - item::expire_at(buf).unwrap_or(u64::MAX),
            EvictionPolicy::AllKeysRandom | EvictionPolicy::NoEviction => splitmix(&mut self.rng),
        }
    }

    /// Samples `eviction_samples` keys per database (all keys, or keys with a TTL for volatile
    /// policies). Returns the best victim `(score, db, handle)` and the best one of class
    /// `prefer`, if any was sampled.
    #[allow(clippy::type_complexity)]
    fn pick_victim(
        &mut self,
        prefer: Option<u8>,
        exclude: Option<Handle>,
        now_ms: u64,
    ) -> Option<((u64, usize, Handle), Option<(u64, usize, Handle)>)> {
        let volatile = self.volatile_policy();
        let samples = self.config.eviction_samples.max(1);
        let mut best: Option<(u64, usize, Handle)> = None;
        let mut best_pref: Option<(u64, usize, Handle)> = None;
        let ndb = self.dbs.len();
        let start = splitmix(&mut self.rng) as usize % ndb;
        for i in 0..ndb {
            let db = (start + i) % ndb;
            for _ in 0..samples {
                let r = splitmix(&mut self.rng);
                let d = &self.dbs[db];
                let t = if volatile { &d.expires } else { &d.main };
                let Some(slot) = t.random_slot(r) else {
                    break;
                };
                let h = t.handle_at(slot);
                if Some(h) == exclude {
                    continue;
                }
                let score = self.score(h, now_ms);
                if !matches!(best, Some((s, ..)) if s >= score) {
                    best = Some((score, db, h));
                }
                if prefer.is_some()
                    && self.mem.class_of(h) == prefer
                    && !matches!(best_pref, Some((s, ..)) if s >= score)
                {
                    best_pref = Some((score, db, h));
                }
            }
        }
        if best.is_none() {
            // Every sample hit the excluded key (tiny tables): look for any other candidate.
            for (db, d) in self.dbs.iter().enumerate() {
                let t = if volatile { &d.expires } else { &d.main };
                if let Some(h) = t.handles().find(|&h| Some(h) != exclude) {
                    best = Some((0, db, h));
                    break;
                }
            }
        }
        best.map(|b| (b, best_pref))
    }

    /// The database holding item `h`.
    fn db_of(&self, h: Handle) -> Option<usize> {
        let hash = hash_key(item::key(self.mem.bytes(h)));
        (0..self.dbs.len()).find(|&db| self.dbs[db].main.find(hash, |x| x == h).is_some())
    }

    fn eligible(&self, h: Handle, exclude: Option<Handle>) -> bool {
        Some(h) != exclude && (!self.volatile_policy() || item::expire_at(self.mem.bytes(h)).is_some())
    }

    /// Looks for a victim directly in the pages of class `c` (when sampling keys keeps missing it).
    fn victim_in_class(&mut self, c: u8, exclude: Option<Handle>, now_ms: u64) -> Option<(usize, Handle)> {
        let mut best: Option<(u64, Handle)> = None;
        for _ in 0..self.config.eviction_samples.max(1) {
            let r = splitmix(&mut self.rng);
            let Some(h) = self.mem.random_item_in_class(c, r) else {
                break;
            };
            if !self.eligible(h, exclude) {
                continue;
            }
            let score = self.score(h, now_ms);
            if !matches!(best, Some((s, ..)) if s >= score) {
                best = Some((score, h));
            }
        }
        let (_, h) = best?;
        Some((self.db_of(h)?, h))
    }

    fn evict(&mut self, db: usize, h: Handle, now_ms: u64) {
        if let Some(j) = &mut self.journal {
            j.append(RecordType::Delete, db as u16, item::key(self.mem.bytes(h)), b"", 0);
        }
        let expired = self.expired(h, now_ms);
        self.delete(db, h);
        if expired {
            self.stats.expired_keys += 1;
        } else {
            self.stats.evicted_keys += 1;
        }
    }

    /// Evicts `victim` (in `db`, eligible) and every other eligible item of its page, so the
    /// page can go to another class.
    fn evict_page(&mut self, db: usize, victim: Handle, exclude: Option<Handle>, now_ms: u64) {
        let others = self.mem.page_items(victim);
        self.evict(db, victim, now_ms);
        for h in others {
            if h == victim || !self.eligible(h, exclude) {
                continue;
            }
            if let Some(db) = self.db_of(h) {
                self.evict(db, h, now_ms);
            }
        }
    }

    /// Removes a key. Returns whether a live key was removed.
    pub fn remove(&mut self, db: usize, key: &[u8], now_ms: u64) -> bool {
        match self.lookup(db, key, now_ms) {
            Some(h) => {
                self.delete(db, h);
                if let Some(j) = &mut self.journal {
                    j.append(RecordType::Delete, db as u16, key, b"", 0);
                }
                true
            }
            None => false,
        }
    }

    /// Sets or clears a live key's expiry. Returns false if the key does not exist.
    /// An expiry at or before `now_ms` deletes the key (and still returns true).
    pub fn set_expiry(&mut self, db: usize, key: &[u8], expire_at_ms: Option<u64>, now_ms: u64) -> bool {
        let Some(h) = self.lookup(db, key, now_ms) else {
            return false;
        };
        let current = item::expire_at(self.mem.bytes(h));
        let kind = match (expire_at_ms, current) {
            (Some(t), _) if t <= now_ms => {
                self.delete(db, h);
                self.stats.expired_keys += 1;
                RecordType::Delete
            }
            (Some(t), Some(_)) => {
                item::set_expire_at(self.mem.bytes_mut(h), t);
                RecordType::Expire
            }
            (None, None) => return true,
            _ if !self.relocate(db, h, expire_at_ms) => return false,
            (Some(_), None) => RecordType::Expire,
            (None, Some(_)) => RecordType::Persist,
        };
        if let Some(j) = &mut self.journal {
            let at = if kind == RecordType::Expire {
                expire_at_ms.unwrap_or(0)
            } else {
                0
            };
            j.append(kind, db as u16, key, b"", at);
        }
        true
    }

    /// Rewrites an item with a header of a different shape (TTL added or removed) in a new chunk.
    /// Returns false, changing nothing, if no chunk could be had (page limit).
    fn relocate(&mut self, db: usize, h: Handle, expire_at: Option<u64>) -> bool {
        let buf = self.mem.bytes(h);
        let l = item::layout(buf);
        let lru = item::lru(buf);
        let Some(nh) = self.mem.alloc(item::size(l.klen, l.vlen, expire_at.is_some())) else {
            return false;
        };
        let (src, dst) = self.mem.pair_mut(h, nh);
        let at = item::write_head(dst, l.klen, l.vlen, expire_at, lru);
        let body = l.klen + l.vlen;
        dst[at..at + body].copy_from_slice(&src[l.key_at..l.key_at + body]);
        self.unlink(db, h);
        self.mem.free(h);
        self.link(db, nh);
        true
    }

    /// Number of keys in a database (keys past their expiry but not yet reclaimed are counted, as in Redis).
    pub fn len(&self, db: usize) -> usize {
        self.dbs.get(db).map_or(0, |d| d.main.len())
    }

    /// Number of keys with a TTL in a database.
    pub fn volatile_len(&self, db: usize) -> usize {
        self.dbs.get(db).map_or(0, |d| d.expires.len())
    }

    pub fn flush_db(&mut self, db: usize) {
        if db >= self.dbs.len() {
            return;
        }
        if let Some(j) = &mut self.journal {
            j.append(RecordType::FlushDb, db as u16, b"", b"", 0);
        }
        if self.dbs.iter().enumerate().all(|(i, d)| i == db || d.main.is_empty()) {
            return self.clear_all();
        }
        let d = std::mem::take(&mut self.dbs[db]);
        self.index_bytes -= d.index_bytes();
        for h in d.main.handles() {
            self.free_item(h);
        }
        self.mem.release_spare();
    }

    pub fn flush_all(&mut self) {
        if let Some(j) = &mut self.journal {
            j.append(RecordType::FlushAll, 0, b"", b"", 0);
        }
        self.clear_all();
    }

    fn clear_all(&mut self) {
        for d in &mut self.dbs {
            *d = Db::default();
        }
        self.mem.clear();
        self.index_bytes = 0;
        self.dataset_bytes = 0;
    }

    /// One step of a SCAN over `db`: visits the keys of up to about `count` home buckets starting at
    /// `cursor` (reverse-binary order over the index's buckets, as Redis does, so a key present for
    /// the whole scan is returned at least once even across resizes), calling `visit(key)` for each
    /// live key. Returns the next cursor, 0 when the scan is complete.
    ///
    /// Like Redis, a step stops once it has visited `count` keys or `10 × count` buckets.
    pub fn scan(&mut self, db: usize, cursor: u64, count: usize, now_ms: u64, visit: &mut dyn FnMut(&[u8])) -> u64 {
        self.scan_items(db, cursor, count, now_ms, &mut |buf| visit(item::key(buf)))
    }

    /// Like [`scan`](Self::scan) (same cursor and guarantees) but gives each live key's value and
    /// absolute expiry too, for snapshots: `visit(key, value, expire_at_ms)`.
    #[allow(clippy::type_complexity)]
    pub fn scan_entries(
        &mut self,
        db: usize,
        cursor: u64,
        count: usize,
        now_ms: u64,
        visit: &mut dyn FnMut(&[u8], &[u8], Option<u64>),
    ) -> u64 {
        self.scan_items(db, cursor, count, now_ms, &mut |buf| {
            visit(item::key(buf), item::value(buf), item::expire_at(buf))
        })
    }

    /// The SCAN walk shared by [`scan`](Self::scan) and [`scan_entries`](Self::scan_entries):
    /// `visit` gets each live item's bytes.
    fn scan_items(&mut self, db: usize, cursor: u64, count: usize, now_ms: u64, visit: &mut dyn FnMut(&[u8])) -> u64 {
        if db >= self.dbs.len() {
            return 0;
        }
        let count = count.max(1);
        let max_buckets = count.saturating_mul(10);
        let mut cursor = cursor;
        let mut emitted = 0;
        let mut buckets = 0;
        let mut batch = Vec::new();
        loop {
            if self.dbs[db].main.capacity() == 0 {
                return 0;
            }
            batch.clear();
            self.dbs[db].main.scan_bucket(cursor, key_hash(&self.mem), &mut batch);
            // The next cursor follows the table as it was when the bucket was read; deleting
            // expired keys below may halve it, which the cursor order tolerates.
            let next = self.dbs[db].main.next_cursor(cursor);
            for &h in &batch {
                if self.expired(h, now_ms) {
                    self.delete(db, h);
                    self.stats.expired_keys += 1;
                } else {
                    visit(self.mem.bytes(h));
                    emitted += 1;
                }
            }
            buckets += 1;
            if next == 0 || emitted >= count || buckets >= max_buckets {
                return next;
            }
            cursor = next;
        }
    }

    /// Calls `visit` for every live key of `db` (KEYS); the caller filters by pattern.
    pub fn for_each_key(&mut self, db: usize, now_ms: u64, visit: &mut dyn FnMut(&[u8])) {
        if db >= self.dbs.len() {
            return;
        }
        let mut expired = Vec::new();
        for h in self.dbs[db].main.handles() {
            let buf = self.mem.bytes(h);
            if item::expire_at(buf).is_some_and(|t| t <= now_ms) {
                expired.push(h);
            } else {
                visit(item::key(buf));
            }
        }
        for h in expired {
            self.delete(db, h);
            self.stats.expired_keys += 1;
        }
    }

    /// A random live key of `db`, if any (RANDOMKEY). `seed` drives the choice.
    pub fn random_key(&mut self, db: usize, now_ms: u64, seed: u64) -> Option<&[u8]> {
        if db >= self.dbs.len() {
            return None;
        }
        let mut state = seed;
        let found = loop {
            let t = &self.dbs[db].main;
            let Some(slot) = t.random_slot(splitmix(&mut state)) else {
                break None;
            };
            let h = t.handle_at(slot);
            if self.expired(h, now_ms) {
                self.delete(db, h);
                self.stats.expired_keys += 1;
                continue;
            }
            break Some(h);
        };
        found.map(|h| item::key(self.mem.bytes(h)))
    }

    /// Moves a key between databases of this shard (MOVE): false if the source is missing or the target exists.
    pub fn move_key(&mut self, src_db: usize, dst_db: usize, key: &[u8], now_ms: u64) -> bool {
        if src_db == dst_db || dst_db >= self.dbs.len() {
            return false;
        }
        let Some(h) = self.lookup(src_db, key, now_ms) else {
            return false;
        };
        if self.lookup(dst_db, key, now_ms).is_some() {
            return false;
        }
        self.unlink(src_db, h);
        self.link(dst_db, h);
        if let Some(j) = &mut self.journal {
            let buf = self.mem.bytes(h);
            j.append(RecordType::Delete, src_db as u16, key, b"", 0);
            j.append(
                RecordType::Set,
                dst_db as u16,
                key,
                item::value(buf),
                item::expire_at(buf).unwrap_or(0),
            );
        }
        true
    }

    /// Swaps two databases (SWAPDB).
    pub fn swap_db(&mut self, a: usize, b: usize) {
        if a < self.dbs.len() && b < self.dbs.len() && a != b {
            self.dbs.swap(a, b);
            self.swap_epoch += 1;
            if let Some(j) = &mut self.journal {
                j.append_swap_db(a as u16, b as u16);
            }
        }
    }

    /// Active expiry: samples keys with a TTL and deletes the expired ones, stopping when
    /// `deadline()` says time is up (checked every few dozen keys) or when a sample of 20 holds
    /// fewer than 25% expired keys (Redis's adaptive loop).
    ///
    /// Each database's expires index is walked from where the previous cycle stopped, so every
    /// key with a TTL is eventually examined.
    pub fn active_expire_cycle(&mut self, now_ms: u64, deadline: &mut dyn FnMut() -> bool) -> ExpireCycleStats {
        let mut out = ExpireCycleStats::default();
        let ndb = self.dbs.len();
        let start = self.expire_db_cursor % ndb;
        self.expire_db_cursor = (start + 1) % ndb;
        for i in 0..ndb {
            let db = (start + i) % ndb;
            loop {
                let len = self.dbs[db].expires.len();
                if len == 0 {
                    break;
                }
                let want = EXPIRE_SAMPLE.min(len);
                let (mut sampled, mut expired) = (0usize, 0usize);
                let mut slot = self.dbs[db].expire_cursor;
                let mut steps = 0usize;
                while sampled < want && steps <= self.dbs[db].expires.capacity() {
                    let t = &self.dbs[db].expires;
                    if t.capacity() == 0 {
                        break;
                    }
                    slot &= t.capacity() - 1;
                    if t.occupied(slot) {
                        let h = t.handle_at(slot);
                        sampled += 1;
                        out.sampled += 1;
                        if self.expired(h, now_ms) {
                            self.delete(db, h);
                            self.stats.expired_keys += 1;
                            expired += 1;
                            out.expired += 1;
                            // Backward shift may have moved the next entry into this slot: look
                            // at it again rather than advancing.
                        } else {
                            slot += 1;
                            steps += 1;
                        }
                        if out.sampled % DEADLINE_EVERY == 0 && deadline() {
                            self.dbs[db].expire_cursor = slot;
                            out.timed_out = true;
                            return out;
                        }
                    } else {
                        slot += 1;
                        steps += 1;
                    }
                }
                self.dbs[db].expire_cursor = slot;
                if expired * 4 <= sampled {
                    break;
                }
            }
        }
        out
    }

    pub fn memory_stats(&self) -> MemoryStats {
        MemoryStats {
            used_bytes: self.used_bytes(),
            dataset_bytes: self.dataset_bytes,
            index_bytes: self.index_bytes,
            slab_page_bytes: self.mem.page_bytes(),
            slab_used_bytes: self.mem.chunk_bytes(),
            large_bytes: self.mem.large_bytes(),
            items: self.mem.live(),
            maxmemory_bytes: self.config.maxmemory_bytes,
        }
    }

    pub fn stats(&self) -> KeyspaceStats {
        self.stats
    }

    pub fn reset_stats(&mut self) {
        self.stats = KeyspaceStats::default();
    }
}

/// A pending write, for the budget check.
struct Want {
    db: usize,
    /// Item bytes.
    size: usize,
    /// The item overwrites the old one in its chunk.
    in_place: bool,
    /// The key is not in the database yet.
    new_key: bool,
    /// An entry is added to the expires index.
    add_ttl: bool,
    /// The item being replaced, which eviction must not pick.
    exclude: Option<Handle>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    fn ks(databases: usize, maxmemory_bytes: u64, policy: EvictionPolicy) -> Keyspace {
        Keyspace::new(EngineConfig {
            databases,
            maxmemory_bytes,
            policy,
            eviction_samples: 5,
        })
    }

    /// Cross-checks the incremental counters against a full recount.
    fn check_accounting(k: &Keyspace) {
        let index: u64 = k.dbs.iter().map(Db::index_bytes).sum();
        assert_eq!(k.index_bytes, index);
        let mut dataset = 0u64;
        let mut items = 0u64;
        for d in &k.dbs {
            for h in d.main.handles() {
                let l = item::layout(k.mem.bytes(h));
                dataset += (l.klen + l.vlen) as u64;
                items += 1;
                let has_ttl = l.expire_at.is_some();
                assert_eq!(d.expires.find(hash_handle(h), |x| x == h).is_some(), has_ttl);
            }
            assert!(d.expires.len() <= d.main.len());
        }
        assert_eq!(k.dataset_bytes, dataset);
        assert_eq!(k.mem.live(), items);
        let m = k.memory_stats();
        assert_eq!(m.used_bytes, m.slab_page_bytes + m.large_bytes + m.index_bytes);
        assert!(m.slab_used_bytes <= m.slab_page_bytes);
    }

    #[test]
    fn basic_operations() {
        let mut k = ks(16, 0, EvictionPolicy::NoEviction);
        assert_eq!(k.get(0, b"a", 0), None);
        k.set(0, b"a", b"1", Expiry::Persist, 0).unwrap();
        k.set(0, b"", b"empty key", Expiry::Persist, 0).unwrap();
        k.set(1, b"a", b"", Expiry::Persist, 0).unwrap();
        assert_eq!(k.get(0, b"a", 0), Some(&b"1"[..]));
        assert_eq!(k.get(0, b"", 0), Some(&b"empty key"[..]));
        assert_eq!(k.get(1, b"a", 0), Some(&b""[..]));
        assert_eq!(k.len(0), 2);
        assert_eq!(k.stats().keyspace_hits, 3);
        assert_eq!(k.stats().keyspace_misses, 1);
        assert_eq!(k.peek(0, b"a", 0), Some(&b"1"[..]));
        assert_eq!(k.stats().keyspace_hits, 3);
        assert!(k.contains(0, b"a", 0));
        assert!(!k.contains(2, b"a", 0));
        // Overwrite with a value of another class, then one of the same class.
        let big = vec![7u8; 1000];
        k.set(0, b"a", &big, Expiry::Persist, 0).unwrap();
        assert_eq!(k.get(0, b"a", 0), Some(&big[..]));
        k.set(0, b"a", &big[..990], Expiry::Persist, 0).unwrap();
        assert_eq!(k.get(0, b"a", 0), Some(&big[..990]));
        assert!(k.remove(0, b"a", 0));
        assert!(!k.remove(0, b"a", 0));
        assert_eq!(k.len(0), 1);
        // Out-of-range databases never panic.
        assert_eq!(k.set(16, b"x", b"y", Expiry::Persist, 0), Err(EngineError::InvalidDb));
        assert_eq!(k.get(99, b"x", 0), None);
        assert!(!k.move_key(0, 99, b"", 0));
        k.swap_db(0, 99);
        k.flush_db(99);
        assert_eq!(k.scan(99, 0, 10, 0, &mut |_| {}), 0);
        check_accounting(&k);
        k.reset_stats();
        assert_eq!(k.stats(), KeyspaceStats::default());
    }

    #[test]
    fn large_values_and_limits() {
        let mut k = ks(1, 0, EvictionPolicy::NoEviction);
        let v: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        k.set(0, b"big", &v, Expiry::At(10_000), 0).unwrap();
        assert_eq!(k.get(0, b"big", 0), Some(&v[..]));
        assert!(k.memory_stats().large_bytes >= 300_000);
        let key = vec![b'k'; 70_000];
        k.set(0, &key, b"v", Expiry::Persist, 0).unwrap();
        assert_eq!(k.get(0, &key, 0), Some(&b"v"[..]));
        assert!(k.set_expiry(0, b"big", None, 0));
        assert_eq!(k.get(0, b"big", 20_000), Some(&v[..]));
        check_accounting(&k);
        let huge = vec![0u8; item::MAX_LEN + 1];
        assert_eq!(k.set(0, b"x", &huge, Expiry::Persist, 0), Err(EngineError::TooLarge));
        assert_eq!(k.set(0, &huge, b"x", Expiry::Persist, 0), Err(EngineError::TooLarge));
        drop(huge);
        k.flush_all();
        assert_eq!(k.memory_stats().used_bytes, 0);
    }

    #[test]
    fn ttl_and_lazy_expiry() {
        let mut k = ks(2, 0, EvictionPolicy::NoEviction);
        k.set(0, b"t", b"v", Expiry::At(1_000), 0).unwrap();
        k.set(0, b"p", b"v", Expiry::Persist, 0).unwrap();
        assert_eq!(k.volatile_len(0), 1);
        let info = k.info(0, b"t", 500).unwrap();
        assert_eq!(info.expire_at_ms, Some(1_000));
        assert_eq!(info.value_len, 1);
        // KEEPTTL keeps, plain SET clears.
        k.set(0, b"t", b"w", Expiry::Keep, 10).unwrap();
        assert_eq!(k.info(0, b"t", 10).unwrap().expire_at_ms, Some(1_000));
        assert!(k.set_expiry(0, b"p", Some(2_000), 10));
        assert_eq!(k.volatile_len(0), 2);
        assert!(k.set_expiry(0, b"p", Some(3_000), 10));
        assert!(k.set_expiry(0, b"p", None, 10));
        assert_eq!(k.volatile_len(0), 1);
        assert!(!k.set_expiry(0, b"missing", Some(5), 10));
        check_accounting(&k);
        // Past its expiry the key is gone on every path.
        assert_eq!(k.len(0), 2);
        assert_eq!(k.get(0, b"t", 1_000), None);
        assert_eq!(k.stats().expired_keys, 1);
        assert_eq!(k.len(0), 1);
        k.set(0, b"t", b"v", Expiry::At(1_500), 1_000).unwrap();
        let mut seen = Vec::new();
        k.for_each_key(0, 1_500, &mut |key| seen.push(key.to_vec()));
        assert_eq!(seen, vec![b"p".to_vec()]);
        assert_eq!(k.stats().expired_keys, 2);
        // An expiry in the past deletes at once.
        assert!(k.set_expiry(0, b"p", Some(1_500), 1_500));
        assert_eq!(k.len(0), 0);
        k.set(0, b"x", b"v", Expiry::At(5), 10).unwrap();
        assert_eq!(k.len(0), 0);
        check_accounting(&k);
    }

    #[test]
    fn lru_clock_and_touch() {
        let mut k = ks(1, 0, EvictionPolicy::NoEviction);
        k.set(0, b"a", b"v", Expiry::Persist, 1_000).unwrap();
        assert_eq!(k.info(0, b"a", 11_000).unwrap().idle_secs, 10);
        k.peek(0, b"a", 11_000);
        assert_eq!(k.info(0, b"a", 11_000).unwrap().idle_secs, 10);
        k.get(0, b"a", 11_000);
        assert_eq!(k.info(0, b"a", 12_000).unwrap().idle_secs, 1);
        assert!(k.touch(0, b"a", 20_000));
        assert!(!k.touch(0, b"b", 20_000));
        assert_eq!(k.info(0, b"a", 20_000).unwrap().idle_secs, 0);
    }

    #[test]
    fn move_swap_random() {
        let mut k = ks(4, 0, EvictionPolicy::NoEviction);
        for i in 0..100u32 {
            k.set(0, format!("k{i}").as_bytes(), b"v", Expiry::At(1_000 + i as u64), 0)
                .unwrap();
        }
        k.set(1, b"k5", b"other", Expiry::Persist, 0).unwrap();
        assert!(!k.move_key(0, 1, b"k5", 0));
        assert!(k.move_key(0, 1, b"k6", 0));
        assert!(!k.move_key(0, 1, b"k6", 0));
        assert_eq!(k.info(1, b"k6", 0).unwrap().expire_at_ms, Some(1_006));
        assert_eq!(
            (k.len(0), k.volatile_len(0), k.len(1), k.volatile_len(1)),
            (99, 99, 2, 1)
        );
        k.swap_db(0, 1);
        assert_eq!((k.len(0), k.len(1)), (2, 99));
        check_accounting(&k);
        let a = k.random_key(1, 0, 42).map(<[u8]>::to_vec);
        let b = k.random_key(1, 0, 42).map(<[u8]>::to_vec);
        assert!(a.is_some());
        assert_eq!(a, b, "deterministic for a seed");
        let distinct: BTreeSet<Vec<u8>> = (0..200)
            .filter_map(|s| k.random_key(1, 0, s).map(<[u8]>::to_vec))
            .collect();
        assert!(distinct.len() > 20);
        // Expired keys are skipped (and reclaimed).
        assert_eq!(k.random_key(1, 5_000, 1), None);
        assert_eq!(k.len(1), 0);
        assert_eq!(k.random_key(3, 0, 1), None);
        check_accounting(&k);
    }

    #[test]
    fn flush_returns_memory_to_baseline() {
        let mut k = ks(2, 0, EvictionPolicy::NoEviction);
        let baseline = k.memory_stats();
        assert_eq!(baseline.used_bytes, 0);
        for i in 0..50_000u32 {
            let v = vec![1u8; (i % 700) as usize];
            let exp = if i % 3 == 0 {
                Expiry::At(1 << 40)
            } else {
                Expiry::Persist
            };
            k.set((i % 2) as usize, &i.to_le_bytes(), &v, exp, 0).unwrap();
        }
        k.set(0, b"large", &vec![0u8; 200_000], Expiry::Persist, 0).unwrap();
        check_accounting(&k);
        assert!(k.memory_stats().used_bytes > 10 << 20);
        k.flush_db(1);
        check_accounting(&k);
        assert_eq!(k.len(1), 0);
        k.flush_db(0);
        let m = k.memory_stats();
        assert_eq!(m, MemoryStats { ..baseline });
        // Same after flush_all, and after deleting everything key by key (pages are released).
        for i in 0..20_000u32 {
            k.set(0, &i.to_le_bytes(), &[0u8; 100], Expiry::Persist, 0).unwrap();
        }
        for i in 0..20_000u32 {
            assert!(k.remove(0, &i.to_le_bytes(), 0));
        }
        let m = k.memory_stats();
        assert_eq!(m.items, 0);
        assert!(m.used_bytes <= (1 << 20) + 100, "{m:?}");
        k.flush_all();
        assert_eq!(k.memory_stats(), baseline);
    }

    #[test]
    fn scan_guarantee_with_churn_and_expiry() {
        let mut k = ks(1, 0, EvictionPolicy::NoEviction);
        let stable: BTreeSet<Vec<u8>> = (0..2000u32).map(|i| format!("stable:{i}").into_bytes()).collect();
        for key in &stable {
            k.set(0, key, b"v", Expiry::Persist, 0).unwrap();
        }
        for i in 0..500u32 {
            k.set(0, format!("exp:{i}").as_bytes(), b"v", Expiry::At(100), 0)
                .unwrap();
        }
        let mut seen = BTreeSet::new();
        let mut cursor = 0;
        let mut next = 0u32;
        let mut steps = 0;
        loop {
            cursor = k.scan(0, cursor, 10, 200, &mut |key| {
                assert!(!key.starts_with(b"exp:"), "expired keys are not returned");
                seen.insert(key.to_vec());
            });
            steps += 1;
            // Grow the table while scanning, and delete some churn keys.
            for _ in 0..30 {
                k.set(0, format!("churn:{next}").as_bytes(), b"v", Expiry::Persist, 200)
                    .unwrap();
                next += 1;
            }
            for j in 0..10 {
                k.remove(0, format!("churn:{}", next.saturating_sub(j * 3)).as_bytes(), 200);
            }
            if cursor == 0 {
                break;
            }
        }
        assert!(steps > 10);
        let missing: Vec<_> = stable.difference(&seen).collect();
        assert!(missing.is_empty(), "missing {} keys", missing.len());
        check_accounting(&k);
    }

    fn flood(policy: EvictionPolicy, with_ttl: impl Fn(u32) -> bool) -> Keyspace {
        let max = 8u64 << 20;
        let mut k = ks(4, max, policy);
        for i in 0..120_000u32 {
            let len = match i % 10 {
                0 => 3000,
                1 => 70_000 + (i as usize % 5000),
                _ => 10 + (i as usize * 7) % 400,
            };
            let v = vec![(i % 251) as u8; len];
            let exp = if with_ttl(i) {
                Expiry::At(1_000_000 + (i as u64 * 7919) % 100_000)
            } else {
                Expiry::Persist
            };
            let r = k.set((i % 4) as usize, &i.to_le_bytes(), &v, exp, i as u64);
            let used = k.memory_stats().used_bytes;
            assert!(used <= max, "{policy:?}: used {used} > {max} after write {i}");
            if matches!(policy, EvictionPolicy::AllKeysLru | EvictionPolicy::AllKeysRandom) {
                r.unwrap();
            }
            if i % 10_000 == 0 {
                check_accounting(&k);
            }
        }
        check_accounting(&k);
        assert!(k.stats().evicted_keys > 0);
        let items = k.memory_stats().items;
        // ~35 size classes each hold a partly empty 64 KiB page under this 8 MiB budget, and the
        // 70 KB values take most of the rest, so a few hundred keys remain.
        assert!(items > 200, "{policy:?}: only {items} keys left");
        k
    }

    #[test]
    fn eviction_keeps_budget_allkeys_lru() {
        let k = flood(EvictionPolicy::AllKeysLru, |_| false);
        // Recently written keys survive LRU eviction more than old ones.
        let mut k = k;
        let recent = (119_000..120_000u32)
            .filter(|i| k.contains((i % 4) as usize, &i.to_le_bytes(), 0))
            .count();
        let old = (0..1_000u32)
            .filter(|i| k.contains((i % 4) as usize, &i.to_le_bytes(), 0))
            .count();
        assert!(recent > old, "recent {recent} old {old}");
    }

    #[test]
    fn eviction_keeps_budget_allkeys_random() {
        flood(EvictionPolicy::AllKeysRandom, |_| false);
    }

    #[test]
    fn eviction_keeps_budget_volatile() {
        for policy in [EvictionPolicy::VolatileLru, EvictionPolicy::VolatileTtl] {
            // One key in 50 has no TTL: those must all survive.
            let mut k = flood(policy, |i| i % 50 != 7);
            for i in (7..120_000u32).step_by(50) {
                if i % 10 < 2 {
                    continue;
                }
                // Small persistent keys that fit were all written; none may be evicted.
                let db = (i % 4) as usize;
                assert!(
                    k.contains(db, &i.to_le_bytes(), 0),
                    "{policy:?}: persistent key {i} evicted"
                );
            }
        }
    }

    #[test]
    fn volatile_ttl_evicts_nearest_expiry_first() {
        let max = 4u64 << 20;
        let mut k = ks(1, max, EvictionPolicy::VolatileTtl);
        let mut i = 0u64;
        while k.stats().evicted_keys == 0 {
            k.set(0, &i.to_le_bytes(), &[0u8; 100], Expiry::At(1_000_000 + i), 0)
                .unwrap();
            i += 1;
        }
        for _ in 0..5000 {
            k.set(0, &i.to_le_bytes(), &[0u8; 100], Expiry::At(1_000_000 + i), 0)
                .unwrap();
            i += 1;
        }
        let early = (0..1000u64).filter(|j| k.contains(0, &j.to_le_bytes(), 0)).count();
        let late = (i - 1000..i).filter(|j| k.contains(0, &j.to_le_bytes(), 0)).count();
        assert!(late > early * 2, "late {late} early {early}");
    }

    #[test]
    fn volatile_oom_when_no_volatile_keys() {
        let max = 2u64 << 20;
        let mut k = ks(1, max, EvictionPolicy::VolatileLru);
        let mut i = 0u32;
        let err = loop {
            match k.set(0, &i.to_le_bytes(), &[1u8; 200], Expiry::Persist, 0) {
                Ok(()) => i += 1,
                Err(e) => break e,
            }
        };
        assert_eq!(err, EngineError::OutOfMemory);
        assert_eq!(k.stats().evicted_keys, 0);
        assert_eq!(k.len(0), i as usize);
        assert!(k.memory_stats().used_bytes <= max);
        // Keys with a TTL can be written by evicting other keys with a TTL, never persistent ones.
        k.set_limits(max, EvictionPolicy::VolatileLru);
        check_accounting(&k);
    }

    #[test]
    fn set_all_writes_every_pair_or_none() {
        let max = 2u64 << 20;
        let mut k = ks(1, max, EvictionPolicy::NoEviction);
        k.set(0, b"old", b"before", Expiry::At(10_000), 0).unwrap();
        k.set_all(0, [(&b"a"[..], &b"1"[..]), (b"old", b"after")], 0).unwrap();
        assert_eq!(k.get(0, b"a", 0), Some(&b"1"[..]));
        assert_eq!(k.get(0, b"old", 0), Some(&b"after"[..]));
        assert_eq!(k.info(0, b"old", 0).unwrap().expire_at_ms, None, "MSET clears the TTL");

        // Fill the budget, then an MSET whose last pair cannot fit.
        k.set(0, b"old", b"before", Expiry::At(10_000), 0).unwrap();
        let mut i = 0u32;
        while k.set(0, &i.to_le_bytes(), &[1u8; 300], Expiry::Persist, 0).is_ok() {
            i += 1;
        }
        let len = k.len(0);
        let used = k.memory_stats().used_bytes;
        let big = vec![9u8; 1_500_000];
        let refused = k.set_all(
            0,
            [
                (&b"old"[..], &b"new value"[..]),
                (&0u32.to_le_bytes()[..], &[2u8; 300][..]),
                (b"absent", b"x"),
                (b"old", b"twice"),
                (b"too big", &big[..]),
            ],
            0,
        );
        assert_eq!(refused, Err(EngineError::OutOfMemory));
        assert_eq!(k.get(0, b"old", 0), Some(&b"before"[..]), "first value back");
        assert_eq!(k.info(0, b"old", 0).unwrap().expire_at_ms, Some(10_000), "and its TTL");
        assert_eq!(k.get(0, &0u32.to_le_bytes(), 0), Some(&[1u8; 300][..]));
        assert_eq!(k.get(0, b"absent", 0), None);
        assert_eq!(k.len(0), len);
        assert!(k.memory_stats().used_bytes <= used.max(max));
        check_accounting(&k);
    }

    #[test]
    fn noeviction_refuses_and_keeps_old_value() {
        let max = 2u64 << 20;
        let mut k = ks(1, max, EvictionPolicy::NoEviction);
        let mut i = 0u32;
        loop {
            match k.set(0, &i.to_le_bytes(), &[1u8; 300], Expiry::Persist, 0) {
                Ok(()) => i += 1,
                Err(e) => {
                    assert_eq!(e, EngineError::OutOfMemory);
                    break;
                }
            }
        }
        assert!(i > 1000);
        let used = k.memory_stats().used_bytes;
        assert!(used <= max);
        // A bigger value for an existing key does not fit: the old value stays.
        assert_eq!(
            k.set(0, &0u32.to_le_bytes(), &vec![2u8; 1_500_000], Expiry::Persist, 0),
            Err(EngineError::OutOfMemory)
        );
        assert_eq!(k.get(0, &0u32.to_le_bytes(), 0), Some(&[1u8; 300][..]));
        // Same-class overwrites still work in place.
        k.set(0, &0u32.to_le_bytes(), &[3u8; 301], Expiry::Persist, 0).unwrap();
        assert_eq!(k.get(0, &0u32.to_le_bytes(), 0), Some(&[3u8; 301][..]));
        // After a delete, a new key fits again.
        assert!(k.remove(0, &1u32.to_le_bytes(), 0));
        k.set(0, b"new", &[4u8; 300], Expiry::Persist, 0).unwrap();
        assert_eq!(k.stats().evicted_keys, 0);
        // Shrinking the budget refuses writes until usage is back under it.
        k.set_limits(1 << 20, EvictionPolicy::NoEviction);
        assert_eq!(
            k.set(0, &5u32.to_le_bytes(), &[5u8; 300], Expiry::Persist, 0),
            Err(EngineError::OutOfMemory)
        );
        k.set_limits(1 << 20, EvictionPolicy::AllKeysLru);
        k.set(0, &5u32.to_le_bytes(), &[5u8; 300], Expiry::Persist, 0).unwrap();
        assert!(k.memory_stats().used_bytes <= 1 << 20);
        assert!(k.len(0) > 100, "{}", k.len(0));
        check_accounting(&k);
    }

    #[test]
    fn eviction_moves_pages_between_classes() {
        // Fill the budget with small items, then write only items of another class: eviction
        // must free whole pages for the new class instead of evicting everything or failing.
        let max = 8u64 << 20;
        let mut k = ks(1, max, EvictionPolicy::AllKeysLru);
        let mut i = 0u32;
        while k.stats().evicted_keys == 0 {
            k.set(0, &i.to_le_bytes(), &[0u8; 40], Expiry::Persist, 0).unwrap();
            i += 1;
        }
        let small = k.len(0);
        for j in 0..3000u32 {
            k.set(0, &(1_000_000 + j).to_le_bytes(), &[1u8; 2000], Expiry::Persist, 1000)
                .unwrap();
            assert!(k.memory_stats().used_bytes <= max);
        }
        let big = (0..3000u32)
            .filter(|j| k.contains(0, &(1_000_000 + j).to_le_bytes(), 0))
            .count();
        assert!(big > 2000, "{big} of the new items kept");
        assert!(k.len(0) > big, "some small items are kept too ({small} before)");
        check_accounting(&k);
    }

    #[test]
    fn active_expiry_deletes_and_honours_deadline() {
        let mut k = ks(3, 0, EvictionPolicy::NoEviction);
        for db in 0..3 {
            for i in 0..3000u32 {
                let exp = if i % 4 == 0 {
                    Expiry::At(10_000)
                } else {
                    Expiry::At(100)
                };
                k.set(db, &i.to_le_bytes(), b"v", exp, 0).unwrap();
            }
            for i in 0..1000u32 {
                k.set(db, &(100_000 + i).to_le_bytes(), b"v", Expiry::Persist, 0)
                    .unwrap();
            }
        }
        // A deadline that is already over stops the cycle within a few dozen keys.
        let out = k.active_expire_cycle(1_000, &mut || true);
        assert!(out.timed_out);
        assert!(out.sampled <= 16, "{out:?}");
        assert_eq!(out.expired, k.stats().expired_keys);
        let mut total = out.expired;
        for _ in 0..100 {
            let out = k.active_expire_cycle(1_000, &mut || false);
            assert!(!out.timed_out);
            total += out.expired;
            if out.expired == 0 && (0..3).all(|db| k.volatile_len(db) <= 750 + 750 / 3) {
                break;
            }
        }
        // Cycles stop once under 25% of a sample is expired, so a few may linger; most are gone.
        let remaining: usize = (0..3).map(|db| k.volatile_len(db)).sum();
        assert!(remaining < 3 * 750 + 600, "remaining {remaining}");
        assert_eq!(total, k.stats().expired_keys);
        for db in 0..3 {
            assert_eq!(k.len(db) - k.volatile_len(db), 1000);
        }
        check_accounting(&k);
        // Nothing expired: a cycle samples and stops.
        let mut k2 = ks(1, 0, EvictionPolicy::NoEviction);
        for i in 0..100u32 {
            k2.set(0, &i.to_le_bytes(), b"v", Expiry::At(10_000), 0).unwrap();
        }
        let out = k2.active_expire_cycle(0, &mut || false);
        assert_eq!((out.sampled, out.expired), (20, 0));
        // Everything expired: the cycle keeps going until all are gone.
        let out = k2.active_expire_cycle(20_000, &mut || false);
        assert_eq!(out.expired, 100);
        assert_eq!(k2.len(0), 0);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Set(usize, u8, Vec<u8>, Option<u64>, bool),
        Get(usize, u8),
        Remove(usize, u8),
        SetExpiry(usize, u8, Option<u64>),
        Move(usize, usize, u8),
        Flush(Option<usize>),
        Advance(u64),
        Expire,
    }

    fn op() -> impl Strategy<Value = Op> {
        let db = 0..3usize;
        let key = 0..24u8;
        let value = prop_oneof![
            prop::collection::vec(any::<u8>(), 0..40),
            prop::collection::vec(any::<u8>(), 200..300),
            Just(vec![9u8; 70_000]),
        ];
        let ttl = prop::option::of(0..3000u64);
        prop_oneof![
            6 => (db.clone(), key.clone(), value, ttl.clone(), any::<bool>())
                .prop_map(|(d, k, v, t, keep)| Op::Set(d, k, v, t, keep)),
            4 => (db.clone(), key.clone()).prop_map(|(d, k)| Op::Get(d, k)),
            2 => (db.clone(), key.clone()).prop_map(|(d, k)| Op::Remove(d, k)),
            2 => (db.clone(), key.clone(), ttl).prop_map(|(d, k, t)| Op::SetExpiry(d, k, t)),
            1 => (db.clone(), db.clone(), key).prop_map(|(a, b, k)| Op::Move(a, b, k)),
            1 => prop::option::of(db).prop_map(Op::Flush),
            3 => (0..1500u64).prop_map(Op::Advance),
            1 => Just(Op::Expire),
        ]
    }

    type Model = BTreeMap<(usize, u8), (Vec<u8>, Option<u64>)>;

    fn model_live(m: &mut Model, db: usize, key: u8, now: u64) -> Option<(Vec<u8>, Option<u64>)> {
        match m.get(&(db, key)) {
            Some((_, Some(t))) if *t <= now => {
                m.remove(&(db, key));
                None
            }
            other => other.cloned(),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn model_based(ops in prop::collection::vec(op(), 1..200)) {
            let mut k = ks(3, 0, EvictionPolicy::NoEviction);
            let mut m: Model = BTreeMap::new();
            let mut now = 1_000u64;
            for op in ops {
                match op {
                    Op::Set(db, key, value, ttl, keep) => {
                        let old = model_live(&mut m, db, key, now);
                        let (expiry, model_ttl) = match (ttl, keep) {
                            (_, true) => (Expiry::Keep, old.and_then(|o| o.1)),
                            (Some(t), false) => (Expiry::At(now + t), Some(now + t)),
                            (None, false) => (Expiry::Persist, None),
                        };
                        k.set(db, &[key], &value, expiry, now).unwrap();
                        if model_ttl.is_some_and(|t| t <= now) {
                            m.remove(&(db, key));
                        } else {
                            m.insert((db, key), (value, model_ttl));
                        }
                    }
                    Op::Get(db, key) => {
                        let expect = model_live(&mut m, db, key, now);
                        prop_assert_eq!(k.get(db, &[key], now).map(<[u8]>::to_vec), expect.clone().map(|e| e.0));
                        prop_assert_eq!(k.info(db, &[key], now).and_then(|i| i.expire_at_ms), expect.and_then(|e| e.1));
                    }
                    Op::Remove(db, key) => {
                        let expect = model_live(&mut m, db, key, now).is_some();
                        m.remove(&(db, key));
                        prop_assert_eq!(k.remove(db, &[key], now), expect);
                    }
                    Op::SetExpiry(db, key, ttl) => {
                        let live = model_live(&mut m, db, key, now);
                        let at = ttl.map(|t| now + t);
                        prop_assert_eq!(k.set_expiry(db, &[key], at, now), live.is_some());
                        if let Some((v, _)) = live {
                            if at.is_some_and(|t| t <= now) {
                                m.remove(&(db, key));
                            } else {
                                m.insert((db, key), (v, at));
                            }
                        }
                    }
                    Op::Move(a, b, key) => {
                        let src = model_live(&mut m, a, key, now);
                        let dst = model_live(&mut m, b, key, now);
                        let expect = a != b && src.is_some() && dst.is_none();
                        prop_assert_eq!(k.move_key(a, b, &[key], now), expect);
                        if expect {
                            let e = m.remove(&(a, key)).unwrap();
                            m.insert((b, key), e);
                        }
                    }
                    Op::Flush(Some(db)) => {
                        k.flush_db(db);
                        m.retain(|&(d, _), _| d != db);
                    }
                    Op::Flush(None) => {
                        k.flush_all();
                        m.clear();
                    }
                    Op::Advance(ms) => now += ms,
                    Op::Expire => {
                        k.active_expire_cycle(now, &mut || false);
                    }
                }
                check_accounting(&k);
            }
            for db in 0..3 {
                let mut keys = BTreeSet::new();
                k.for_each_key(db, now, &mut |key| { keys.insert(key[0]); });
                let expect: BTreeSet<u8> = m
                    .iter()
                    .filter(|(&(d, _), (_, t))| d == db && !matches!(t, Some(t) if *t <= now))
                    .map(|(&(_, key), _)| key)
                    .collect();
                prop_assert_eq!(&keys, &expect);
                let mut scanned = BTreeSet::new();
                let mut cursor = 0;
                loop {
                    cursor = k.scan(db, cursor, 3, now, &mut |key| { scanned.insert(key[0]); });
                    if cursor == 0 {
                        break;
                    }
                }
                prop_assert_eq!(&scanned, &expect);
                prop_assert_eq!(k.len(db), expect.len());
            }
        }
    }
}
