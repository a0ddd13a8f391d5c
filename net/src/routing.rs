//! The stable routing hash: key → hash slot → shard.
//!
//! `slot = CRC16-XMODEM(tag(key)) mod 16384`, exactly Redis Cluster's `CLUSTER KEYSLOT`, where
//! `tag(key)` is the content of the first `{...}` with at least one byte inside, or the whole key.
//! `shard = jump_consistent_hash(slot, shards)` (Lamping & Veach), so growing from n to n+1 shards
//! moves only about 1/(n+1) of the slots. Both functions are fixed forever: persisted data and
//! clients depend on them. Test vectors live in this module's tests.

/// Number of hash slots.
pub const SLOTS: u16 = 16384;

/// The hash slot of `key` (0..16384), honouring `{hash tags}`.
pub fn key_slot(key: &[u8]) -> u16 {
    crc16(hash_tag(key)) & (SLOTS - 1)
}

/// The shard (0..shards) that owns `slot`. `shards` must be ≥ 1.
pub fn slot_shard(slot: u16, shards: u32) -> u32 {
    debug_assert!(shards >= 1, "slot_shard needs at least one shard");
    jump_consistent_hash(u64::from(slot), shards.max(1))
}

/// The shard that owns `key`.
pub fn key_shard(key: &[u8], shards: u32) -> u32 {
    slot_shard(key_slot(key), shards)
}

/// The bytes Redis Cluster hashes for `key` (`keyHashSlot`): the content between the first `{`
/// and the first `}` after it, if non-empty; otherwise the whole key.
fn hash_tag(key: &[u8]) -> &[u8] {
    if let Some(open) = memchr::memchr(b'{', key) {
        let rest = &key[open + 1..];
        if let Some(close) = memchr::memchr(b'}', rest) {
            if close > 0 {
                return &rest[..close];
            }
        }
    }
    key
}

/// CRC16-XMODEM lookup table (polynomial 0x1021), built at compile time.
const CRC16_TABLE: [u16; 256] = {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = (i as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// CRC16-XMODEM (poly 0x1021, init 0, no reflection, no final xor): Redis Cluster's `crc16`.
fn crc16(bytes: &[u8]) -> u16 {
    bytes.iter().fold(0u16, |crc, &b| {
        (crc << 8) ^ CRC16_TABLE[usize::from(((crc >> 8) as u8) ^ b)]
    })
}

/// Lamping & Veach, "A Fast, Minimal Memory, Consistent Hash Algorithm" (2014), verbatim: the
/// 64-bit LCG step and the floating-point jump are part of the persisted layout, never "improve"
/// them.
fn jump_consistent_hash(mut key: u64, buckets: u32) -> u32 {
    let mut b: i64 = -1;
    let mut j: i64 = 0;
    while j < i64::from(buckets) {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_619_845).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_check_value() {
        // The catalogue check value of CRC-16/XMODEM, also quoted by the Redis Cluster spec.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(crc16(b""), 0);
    }

    #[test]
    fn redis_key_slots() {
        // 0x31C3 (the CRC) is below 16384, so it is also the slot.
        assert_eq!(key_slot(b"123456789"), 0x31C3);
        assert_eq!(key_slot(b"123456789"), 12739);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"bar"), 5061);
        assert_eq!(key_slot(b""), 0);
    }

    #[test]
    fn hash_tags() {
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"{user1000}.followers"));
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        // Empty tag: the whole key is hashed.
        assert_eq!(hash_tag(b"foo{}{bar}"), b"foo{}{bar}");
        assert_eq!(key_slot(b"foo{}{bar}"), key_slot(b"foo{}{bar}".as_slice()));
        assert_ne!(key_slot(b"foo{}{bar}"), key_slot(b"bar"));
        // First `{`, then the first `}` after it.
        assert_eq!(hash_tag(b"foo{{bar}}zap"), b"{bar");
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
        assert_eq!(hash_tag(b"foo{bar}{zap}"), b"bar");
        assert_eq!(key_slot(b"foo{bar}{zap}"), key_slot(b"bar"));
        // No closing brace, or a `}` only before the `{`: whole key.
        assert_eq!(hash_tag(b"foo{bar"), b"foo{bar");
        assert_eq!(hash_tag(b"}foo{"), b"}foo{");
        assert_eq!(hash_tag(b"a}b{c}d"), b"c");
    }

    #[test]
    fn key_shard_composes() {
        for key in [&b"foo"[..], b"bar", b"{user1000}.x", b""] {
            for shards in [1, 2, 7, 64] {
                assert_eq!(key_shard(key, shards), slot_shard(key_slot(key), shards));
            }
        }
    }

    #[test]
    fn one_shard_owns_everything() {
        assert!((0..SLOTS).all(|s| slot_shard(s, 1) == 0));
    }

    /// Fixed vectors: these values are persisted layout and must never change.
    #[test]
    fn slot_shard_vectors() {
        const SAMPLE: [u16; 12] = [0, 1, 2, 3, 100, 1000, 5061, 8191, 8192, 12182, 12739, 16383];
        let table: [(u32, [u32; 12]); 6] = VECTORS;
        for (shards, want) in table {
            let got: Vec<u32> = SAMPLE.iter().map(|&s| slot_shard(s, shards)).collect();
            assert_eq!(got, want, "shards = {shards}");
        }
    }

    #[test]
    fn growing_moves_only_to_the_new_shard() {
        for n in 1..=64u32 {
            let mut moved = 0u32;
            for slot in 0..SLOTS {
                let before = slot_shard(slot, n);
                let after = slot_shard(slot, n + 1);
                assert!(before < n && after <= n);
                if before != after {
                    assert_eq!(after, n, "slot {slot} moved {before} -> {after} for {n}->{}", n + 1);
                    moved += 1;
                }
            }
            // Expect 16384 / (n+1) moves; allow a generous statistical margin.
            let expected = f64::from(SLOTS) / f64::from(n + 1);
            let dev = (f64::from(moved) - expected).abs();
            assert!(
                dev <= 4.0 * expected.sqrt() + 2.0,
                "n={n}: moved {moved}, expected {expected:.0}"
            );
        }
    }

    #[test]
    fn shards_are_balanced() {
        for n in [2u32, 3, 4, 8, 64] {
            let mut counts = vec![0u32; n as usize];
            for slot in 0..SLOTS {
                counts[slot_shard(slot, n) as usize] += 1;
            }
            let expected = f64::from(SLOTS) / f64::from(n);
            for c in counts {
                assert!((f64::from(c) - expected).abs() <= 5.0 * expected.sqrt(), "n={n}");
            }
        }
    }

    const VECTORS: [(u32, [u32; 12]); 6] = [
        (1, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        (2, [0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 1]),
        (3, [0, 0, 0, 2, 2, 0, 2, 0, 2, 1, 0, 1]),
        (4, [0, 0, 3, 2, 2, 0, 2, 0, 2, 1, 0, 1]),
        (8, [0, 7, 5, 5, 2, 5, 2, 6, 5, 1, 0, 1]),
        (64, [0, 41, 37, 19, 33, 5, 2, 23, 10, 52, 19, 24]),
    ];
}
