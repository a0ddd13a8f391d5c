//! The per-database key index: an open-addressing hash table of 32-bit item handles.
//!
//! Linear probing over a power-of-two slot count, with backward-shift deletion so there are no
//! tombstones and every entry always sits in the contiguous occupied run that starts at its home
//! slot (`hash & mask`). Beside the `u32` handle array a 1-byte tag array (0 = empty, otherwise
//! `0x80 | 7 hash bits`) lets probes skip most non-matching entries without dereferencing items.
//!
//! The table stores no keys and no hashes: callers pass closures that compare a handle's key or
//! recompute a handle's hash (reading the key back from slab memory), which keeps an entry at
//! 5 bytes. The same table type also serves as the TTL ("expires") index, hashed by handle.
//!
//! SCAN walks *home buckets* in Redis's reverse-binary cursor order; since every key is always in
//! the probe run of its home bucket, a key present for a whole scan is returned at least once even
//! when the table doubles or halves between steps.

use ahash::RandomState;

/// Smallest non-empty slot count.
const MIN_CAP: usize = 8;

/// Fixed seeds: the index only needs a good spread, not per-process secrecy (routing between
/// shards uses its own hash).
static KEY_HASHER: RandomState = RandomState::with_seeds(
    0x243f_6a88_85a3_08d3,
    0x1319_8a2e_0370_7344,
    0xa409_3822_299f_31d0,
    0x082e_fa98_ec4e_6c89,
);

/// The index hash of a key.
pub fn hash_key(key: &[u8]) -> u64 {
    KEY_HASHER.hash_one(key)
}

/// The index hash of a handle (for the expires index): splitmix64's finalizer, because handles
/// differ mostly in their high (page) bits.
pub fn hash_handle(h: u32) -> u64 {
    let mut z = (h as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn tag_of(hash: u64) -> u8 {
    0x80 | (hash >> 57) as u8
}

/// Open-addressing table of handles. See the module documentation.
#[derive(Default)]
pub struct Table {
    tags: Vec<u8>,
    handles: Vec<u32>,
    len: usize,
}

impl Table {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Slot count (0 or a power of two).
    pub fn capacity(&self) -> usize {
        self.tags.len()
    }

    /// Bytes of the tag and handle arrays.
    pub fn bytes(&self) -> usize {
        self.tags.len() * 5
    }

    fn mask(&self) -> usize {
        self.tags.len().wrapping_sub(1)
    }

    /// The slot holding the entry with this hash for which `eq(handle)` holds.
    pub fn find(&self, hash: u64, mut eq: impl FnMut(u32) -> bool) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let mask = self.mask();
        let tag = tag_of(hash);
        let mut i = hash as usize & mask;
        loop {
            let t = self.tags[i];
            if t == 0 {
                return None;
            }
            if t == tag && eq(self.handles[i]) {
                return Some(i);
            }
            i = (i + 1) & mask;
        }
    }

    pub fn occupied(&self, slot: usize) -> bool {
        self.tags.get(slot).is_some_and(|&t| t != 0)
    }

    pub fn handle_at(&self, slot: usize) -> u32 {
        debug_assert!(self.occupied(slot));
        self.handles[slot]
    }

    /// Replaces the handle of an occupied slot (the item moved; its key, hence hash, is the same).
    pub fn set_handle(&mut self, slot: usize, h: u32) {
        debug_assert!(self.occupied(slot));
        self.handles[slot] = h;
    }

    fn needs_grow(&self) -> bool {
        (self.len + 1) * 5 > self.capacity() * 4
    }

    /// How many bytes [`Table::bytes`] grows by if one new entry is inserted now.
    pub fn grow_bytes_for_insert(&self) -> usize {
        if self.needs_grow() {
            (self.capacity() * 2).max(MIN_CAP) * 5 - self.bytes()
        } else {
            0
        }
    }

    /// Inserts a handle that is not in the table yet, doubling first if the load would pass 0.8.
    pub fn insert(&mut self, hash: u64, h: u32, hash_of: impl Fn(u32) -> u64) {
        if self.needs_grow() {
            self.resize((self.capacity() * 2).max(MIN_CAP), &hash_of);
        }
        self.place(hash, h);
        self.len += 1;
    }

    fn place(&mut self, hash: u64, h: u32) {
        let mask = self.mask();
        let mut i = hash as usize & mask;
        while self.tags[i] != 0 {
            i = (i + 1) & mask;
        }
        self.tags[i] = tag_of(hash);
        self.handles[i] = h;
    }

    fn resize(&mut self, cap: usize, hash_of: &impl Fn(u32) -> u64) {
        debug_assert!(cap.is_power_of_two() && cap * 4 >= self.len * 5);
        let tags = std::mem::replace(&mut self.tags, vec![0; cap]);
        let handles = std::mem::replace(&mut self.handles, vec![0; cap]);
        for (t, h) in tags.into_iter().zip(handles) {
            if t != 0 {
                self.place(hash_of(h), h);
            }
        }
    }

    /// Removes the entry at `slot` by shifting later entries of the run back (no tombstones), and
    /// halves the table when it falls under 1/8 full. Slot numbers are invalid afterwards.
    pub fn remove_at(&mut self, slot: usize, hash_of: impl Fn(u32) -> u64) {
        debug_assert!(self.occupied(slot));
        let mask = self.mask();
        let mut hole = slot;
        let mut k = slot;
        loop {
            k = (k + 1) & mask;
            if self.tags[k] == 0 {
                break;
            }
            let home = hash_of(self.handles[k]) as usize & mask;
            // The entry at k may fill the hole unless its home lies cyclically in (hole, k].
            if (k.wrapping_sub(home) & mask) >= (k.wrapping_sub(hole) & mask) {
                self.tags[hole] = self.tags[k];
                self.handles[hole] = self.handles[k];
                hole = k;
            }
        }
        self.tags[hole] = 0;
        self.len -= 1;
        if self.capacity() > MIN_CAP && self.len * 8 < self.capacity() {
            self.resize(self.capacity() / 2, &hash_of);
        }
    }

    /// Drops every entry and releases the arrays.
    pub fn clear(&mut self) {
        *self = Table::new();
    }

    /// An occupied slot chosen from the random number `r` (the first occupied slot at or after
    /// `r & mask`, so slightly biased towards entries after gaps, as Redis's sampling is).
    pub fn random_slot(&self, r: u64) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let mask = self.mask();
        let mut i = r as usize & mask;
        while self.tags[i] == 0 {
            i = (i + 1) & mask;
        }
        Some(i)
    }

    /// The next occupied slot at or after `slot` (wrapping), if any.
    pub fn next_occupied(&self, slot: usize) -> Option<usize> {
        self.random_slot(slot as u64)
    }

    /// All handles, in slot order.
    pub fn handles(&self) -> impl Iterator<Item = u32> + '_ {
        self.tags
            .iter()
            .zip(&self.handles)
            .filter(|(&t, _)| t != 0)
            .map(|(_, &h)| h)
    }

    /// Appends to `out` the handles whose home bucket is `cursor & mask`: they all sit in the
    /// occupied run starting at that bucket.
    pub fn scan_bucket(&self, cursor: u64, hash_of: impl Fn(u32) -> u64, out: &mut Vec<u32>) {
        if self.capacity() == 0 {
            return;
        }
        let mask = self.mask();
        let b = cursor as usize & mask;
        let mut i = b;
        while self.tags[i] != 0 {
            let h = self.handles[i];
            if hash_of(h) as usize & mask == b {
                out.push(h);
            }
            i = (i + 1) & mask;
            if i == b {
                break;
            }
        }
    }

    /// The cursor after `cursor` in reverse-binary order over the current buckets (0 = done).
    pub fn next_cursor(&self, cursor: u64) -> u64 {
        if self.capacity() == 0 {
            return 0;
        }
        let mask = self.mask() as u64;
        let mut v = cursor | !mask;
        v = v.reverse_bits();
        v = v.wrapping_add(1);
        v.reverse_bits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    /// Keys are the handles themselves, hashed by a deliberately weak function so runs form.
    fn weak(h: u32) -> u64 {
        // Low bits collide often; the tag bits come from the top.
        ((h as u64 % 7) | ((h as u64) << 57)) ^ ((h as u64) << 40)
    }

    fn check_invariants(t: &Table, hash_of: impl Fn(u32) -> u64) {
        let mask = t.mask();
        let mut n = 0;
        for i in 0..t.capacity() {
            if t.tags[i] == 0 {
                continue;
            }
            n += 1;
            let hash = hash_of(t.handles[i]);
            assert_eq!(t.tags[i], tag_of(hash));
            // Every slot from home to i is occupied.
            let mut j = hash as usize & mask;
            while j != i {
                assert_ne!(t.tags[j], 0, "gap in probe run");
                j = (j + 1) & mask;
            }
        }
        assert_eq!(n, t.len());
    }

    #[test]
    fn insert_find_remove_backward_shift() {
        let mut t = Table::new();
        for h in 0..200u32 {
            t.insert(weak(h), h, weak);
            check_invariants(&t, weak);
        }
        assert_eq!(t.len(), 200);
        assert!(t.capacity() * 4 >= 200 * 5);
        for h in 0..200u32 {
            assert!(t.find(weak(h), |x| x == h).is_some());
        }
        assert!(t.find(weak(1000), |x| x == 1000).is_none());
        for h in (0..200u32).step_by(3) {
            let s = t.find(weak(h), |x| x == h).unwrap();
            t.remove_at(s, weak);
            check_invariants(&t, weak);
        }
        for h in 0..200u32 {
            assert_eq!(t.find(weak(h), |x| x == h).is_some(), h % 3 != 0, "{h}");
        }
        for h in 0..200u32 {
            if let Some(s) = t.find(weak(h), |x| x == h) {
                t.remove_at(s, weak);
            }
        }
        assert!(t.is_empty());
        assert!(t.capacity() <= 16, "shrinks when sparse: {}", t.capacity());
        assert_eq!(t.random_slot(7), None);
    }

    #[test]
    fn wraparound_runs() {
        // All entries home at the last slot so runs wrap around the end.
        let cap_hash = |h: u32| 7u64 | ((h as u64) << 57);
        let mut t = Table::new();
        for h in 0..5u32 {
            t.insert(cap_hash(h), h, cap_hash);
        }
        assert_eq!(t.capacity(), 8);
        check_invariants(&t, cap_hash);
        let s = t.find(cap_hash(0), |x| x == 0).unwrap();
        t.remove_at(s, cap_hash);
        check_invariants(&t, cap_hash);
        for h in 1..5u32 {
            assert!(t.find(cap_hash(h), |x| x == h).is_some());
        }
        let mut out = Vec::new();
        t.scan_bucket(7, cap_hash, &mut out);
        out.sort();
        assert_eq!(out, vec![1, 2, 3, 4]);
    }

    #[test]
    fn grow_bytes_predicts_growth() {
        let mut t = Table::new();
        for h in 0..1000u32 {
            let before = t.bytes();
            let predicted = t.grow_bytes_for_insert();
            t.insert(hash_handle(h), h, hash_handle);
            assert_eq!(t.bytes() - before, predicted);
        }
    }

    fn full_scan(t: &Table, hash_of: impl Fn(u32) -> u64 + Copy) -> Vec<u32> {
        let mut out = Vec::new();
        let mut c = 0;
        loop {
            t.scan_bucket(c, hash_of, &mut out);
            c = t.next_cursor(c);
            if c == 0 {
                break;
            }
        }
        out
    }

    #[test]
    fn scan_returns_each_key_once_when_stable() {
        let mut t = Table::new();
        for h in 0..1000u32 {
            t.insert(hash_handle(h), h, hash_handle);
        }
        let mut got = full_scan(&t, hash_handle);
        got.sort();
        assert_eq!(got, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn scan_guarantee_under_growth_and_shrink() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        for round in 0..20 {
            let mut t = Table::new();
            let stable: Vec<u32> = (0..300).collect();
            for &h in &stable {
                t.insert(hash_handle(h), h, hash_handle);
            }
            let mut extra: Vec<u32> = Vec::new();
            let mut next = 1_000_000u32;
            if round % 2 == 1 {
                // Many short-lived keys that the scan's churn deletes, so the table halves.
                for _ in 0..3000 {
                    t.insert(hash_handle(next), next, hash_handle);
                    extra.push(next);
                    next += 1;
                }
            }
            let mut seen = HashMap::new();
            let mut c = 0u64;
            let (start_cap, mut min_cap, mut max_cap) = (t.capacity(), t.capacity(), t.capacity());
            loop {
                min_cap = min_cap.min(t.capacity());
                max_cap = max_cap.max(t.capacity());
                let mut out = Vec::new();
                t.scan_bucket(c, hash_handle, &mut out);
                for h in out {
                    *seen.entry(h).or_insert(0) += 1;
                }
                c = t.next_cursor(c);
                if c == 0 {
                    break;
                }
                // Churn between steps: grow hard in early rounds, shrink in later ones.
                let (inserts, deletes) = if round % 2 == 0 { (8, 4) } else { (2, 10) };
                for _ in 0..rng.gen_range(0..inserts) {
                    t.insert(hash_handle(next), next, hash_handle);
                    extra.push(next);
                    next += 1;
                }
                for _ in 0..rng.gen_range(0..deletes) {
                    if extra.is_empty() {
                        break;
                    }
                    let i = rng.gen_range(0..extra.len());
                    let h = extra.swap_remove(i);
                    let s = t.find(hash_handle(h), |x| x == h).unwrap();
                    t.remove_at(s, hash_handle);
                }
            }
            let missing: HashSet<u32> = stable.iter().copied().filter(|h| !seen.contains_key(h)).collect();
            assert!(missing.is_empty(), "round {round}: missing {missing:?}");
            if round % 2 == 0 {
                assert!(max_cap > start_cap, "the table grew during the scan");
            } else {
                assert!(min_cap < start_cap, "the table shrank during the scan");
            }
        }
    }
}
