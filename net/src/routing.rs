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
    todo!()
}

/// The shard (0..shards) that owns `slot`. `shards` must be ≥ 1.
pub fn slot_shard(slot: u16, shards: u32) -> u32 {
    todo!()
}

/// The shard that owns `key`.
pub fn key_shard(key: &[u8], shards: u32) -> u32 {
    slot_shard(key_slot(key), shards)
}
