//! A buddy allocator of offsets into one registered memory region.
//!
//! RDMA needs memory registered with the NIC before it can be read or written remotely, and
//! registering is slow (it pins pages and programs the NIC's translation tables). So a shard
//! registers one large region at start-up and carves buffers out of it; this module does the
//! carving. It manages *offsets only*: it never touches the memory, so the same logic serves a
//! verbs memory region, a software provider's buffer, or a test.
//!
//! The region is `2^max_order` blocks of `min_block` bytes. A block of order `k` is
//! `min_block << k` bytes long and starts at an offset that is a multiple of its own length, so
//! every block is naturally aligned to its size. Allocation rounds a request up to the smallest
//! order that fits and splits larger blocks as needed; freeing merges a block with its buddy (the
//! other half of the block it was split from) for as long as that buddy is free too.
//!
//! After construction, `alloc` and `free` never allocate: the free lists are intrusive
//! doubly-linked lists threaded through arrays sized once, with one entry per minimum block.
//! Both run in `O(max_order)`.
//!
//! Freeing a block that is not currently allocated (a double free, a block from another allocator,
//! a made-up offset) returns [`BuddyError::NotAllocated`] or [`BuddyError::InvalidBlock`] and leaves
//! the allocator untouched. The only undetectable misuse is freeing a block from *another*
//! allocator that happens to describe a block live in this one: blocks carry no owner tag.

use thiserror::Error;

/// The largest `max_order` accepted: `2^24` minimum blocks (e.g. 64 GiB of 4 KiB blocks) keeps the
/// metadata (9 bytes per minimum block) under 160 MiB and every index within `u32`.
pub const MAX_ORDER_LIMIT: u32 = 24;

/// Errors from building an allocator or freeing a block.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum BuddyError {
    /// The minimum block size must be a non-zero power of two.
    #[error("minimum block size {0} is not a non-zero power of two")]
    MinBlockNotPowerOfTwo(usize),
    /// `max_order` is above [`MAX_ORDER_LIMIT`].
    #[error("max order {max_order} exceeds the limit {limit}")]
    MaxOrderTooLarge {
        /// The order asked for.
        max_order: u32,
        /// [`MAX_ORDER_LIMIT`].
        limit: u32,
    },
    /// `min_block << max_order` does not fit in `usize`.
    #[error("region of {min_block} << {max_order} bytes overflows usize")]
    RegionTooLarge {
        /// The minimum block size asked for.
        min_block: usize,
        /// The order asked for.
        max_order: u32,
    },
    /// The block cannot exist in this allocator: out of range, misaligned, or order too large.
    #[error("block at offset {offset} of order {order} is not a valid block of this allocator")]
    InvalidBlock {
        /// The block's offset.
        offset: usize,
        /// The block's order.
        order: u32,
    },
    /// The block is well-formed but not currently allocated (double free, or freed with the
    /// wrong order).
    #[error("block at offset {offset} of order {order} is not allocated")]
    NotAllocated {
        /// The block's offset.
        offset: usize,
        /// The block's order.
        order: u32,
    },
}

/// An allocated block: `offset` bytes into the region, `min_block << order` bytes long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Block {
    /// Byte offset of the block in the region; a multiple of the block's length.
    pub offset: usize,
    /// The block's order: its length is `min_block << order`.
    pub order: u32,
}

/// `next`/`prev` value meaning "no block".
const NIL: u32 = u32::MAX;
/// `state` of a minimum block that does not start any block (it is inside a larger one).
const NOT_HEAD: u8 = 0xFF;
/// `state` flag of the first minimum block of an allocated block; the low bits hold its order.
const ALLOCATED: u8 = 0x80;
/// Mask of the order in a `state` byte (only the invariant checker decodes states).
#[cfg(test)]
const ORDER_MASK: u8 = 0x3F;

/// A buddy allocator over `2^max_order * min_block` bytes. See the module documentation.
#[derive(Debug, Clone)]
pub struct BuddyAllocator {
    min_block: usize,
    min_shift: u32,
    max_order: u32,
    /// Per minimum block (indexed by `offset / min_block`): [`NOT_HEAD`], `ALLOCATED | order` for
    /// the first unit of an allocated block, or `order` for the first unit of a free block.
    state: Vec<u8>,
    /// Free-list links, meaningful only for the first unit of a free block.
    next: Vec<u32>,
    prev: Vec<u32>,
    /// Head of the free list of each order (`NIL` when empty).
    heads: Vec<u32>,
    used: usize,
}

impl BuddyAllocator {
    /// An allocator over `min_block_bytes << max_order` bytes, all free (one block of
    /// `max_order`). `min_block_bytes` must be a power of two and `max_order` at most
    /// [`MAX_ORDER_LIMIT`].
    pub fn new(min_block_bytes: usize, max_order: u32) -> Result<Self, BuddyError> {
        if !min_block_bytes.is_power_of_two() {
            return Err(BuddyError::MinBlockNotPowerOfTwo(min_block_bytes));
        }
        if max_order > MAX_ORDER_LIMIT {
            return Err(BuddyError::MaxOrderTooLarge {
                max_order,
                limit: MAX_ORDER_LIMIT,
            });
        }
        let min_shift = min_block_bytes.trailing_zeros();
        // The total and every block end must be representable; checking the total suffices.
        if min_shift + max_order >= usize::BITS {
            return Err(BuddyError::RegionTooLarge {
                min_block: min_block_bytes,
                max_order,
            });
        }
        let units = 1usize << max_order;
        let mut this = Self {
            min_block: min_block_bytes,
            min_shift,
            max_order,
            state: vec![NOT_HEAD; units],
            next: vec![NIL; units],
            prev: vec![NIL; units],
            heads: vec![NIL; max_order as usize + 1],
            used: 0,
        };
        this.push_free(0, max_order);
        Ok(this)
    }

    /// The minimum block size in bytes.
    pub fn min_block(&self) -> usize {
        self.min_block
    }

    /// The order of the whole region.
    pub fn max_order(&self) -> u32 {
        self.max_order
    }

    /// The region's size in bytes.
    pub fn total_bytes(&self) -> usize {
        self.min_block << self.max_order
    }

    /// The length in bytes of a block of `order`.
    pub fn block_size(&self, order: u32) -> usize {
        self.min_block << order
    }

    /// The smallest order whose blocks hold `len` bytes, or `None` when even the whole region is
    /// too small. A zero-length request gets a minimum block, like `malloc(0)` returns a unique
    /// pointer: callers never need a special case.
    pub fn order_for(&self, len: usize) -> Option<u32> {
        if len > self.total_bytes() {
            return None;
        }
        let units = len.div_ceil(self.min_block).max(1);
        // units <= 2^max_order here, so next_power_of_two cannot overflow.
        Some(units.next_power_of_two().trailing_zeros())
    }

    /// Allocates a block of at least `len` bytes: the smallest order that fits, split from the
    /// smallest free block available. `None` when no free block is large enough.
    pub fn alloc(&mut self, len: usize) -> Option<Block> {
        let order = self.order_for(len)?;
        let mut found = (order..=self.max_order).find(|&o| self.heads[o as usize] != NIL)?;
        let unit = self.heads[found as usize];
        self.remove_free(unit, found);
        // Split down: keep the lower half, return the upper half (the buddy) to its free list.
        while found > order {
            found -= 1;
            self.push_free(unit + (1u32 << found), found);
        }
        self.state[unit as usize] = ALLOCATED | order as u8;
        self.used += self.block_size(order);
        Some(Block {
            offset: (unit as usize) << self.min_shift,
            order,
        })
    }

    /// Returns `block` to the allocator, merging it with its buddy for as long as the buddy is
    /// free. A block that is not currently allocated here is refused and nothing changes.
    pub fn free(&mut self, block: Block) -> Result<(), BuddyError> {
        let Block { offset, order } = block;
        let invalid = BuddyError::InvalidBlock { offset, order };
        if order > self.max_order || offset % self.block_size(order) != 0 || offset >= self.total_bytes() {
            return Err(invalid);
        }
        let mut unit = (offset >> self.min_shift) as u32;
        if self.state[unit as usize] != ALLOCATED | order as u8 {
            return Err(BuddyError::NotAllocated { offset, order });
        }
        self.state[unit as usize] = NOT_HEAD;
        self.used -= self.block_size(order);
        let mut order = order;
        while order < self.max_order {
            let buddy = unit ^ (1u32 << order);
            if self.state[buddy as usize] != order as u8 {
                break; // The buddy is allocated, split, or inside a larger free block: stop.
            }
            self.remove_free(buddy, order);
            unit = unit.min(buddy);
            order += 1;
        }
        self.push_free(unit, order);
        Ok(())
    }

    /// Free bytes (in free blocks of any order).
    pub fn free_bytes(&self) -> usize {
        self.total_bytes() - self.used
    }

    /// Bytes in allocated blocks (block sizes, not requested lengths).
    pub fn used_bytes(&self) -> usize {
        self.used
    }

    /// The size in bytes of the largest free block: the largest request `alloc` can satisfy now.
    /// Zero when nothing is free.
    pub fn largest_free_block(&self) -> usize {
        (0..=self.max_order)
            .rev()
            .find(|&o| self.heads[o as usize] != NIL)
            .map_or(0, |o| self.block_size(o))
    }

    /// Number of free blocks of `order` (walks the list; for tests and statistics).
    pub fn free_blocks_of_order(&self, order: u32) -> usize {
        let mut count = 0;
        let mut unit = self.heads.get(order as usize).copied().unwrap_or(NIL);
        while unit != NIL {
            count += 1;
            unit = self.next[unit as usize];
        }
        count
    }

    fn push_free(&mut self, unit: u32, order: u32) {
        let head = self.heads[order as usize];
        self.state[unit as usize] = order as u8;
        self.next[unit as usize] = head;
        self.prev[unit as usize] = NIL;
        if head != NIL {
            self.prev[head as usize] = unit;
        }
        self.heads[order as usize] = unit;
    }

    fn remove_free(&mut self, unit: u32, order: u32) {
        debug_assert_eq!(self.state[unit as usize], order as u8);
        let (next, prev) = (self.next[unit as usize], self.prev[unit as usize]);
        if prev == NIL {
            self.heads[order as usize] = next;
        } else {
            self.next[prev as usize] = next;
        }
        if next != NIL {
            self.prev[next as usize] = prev;
        }
        self.state[unit as usize] = NOT_HEAD;
    }

    /// Checks every internal invariant; panics with a description when one is broken.
    #[cfg(test)]
    fn check_invariants(&self) {
        let mut free = 0usize;
        for order in 0..=self.max_order {
            let mut prev = NIL;
            let mut unit = self.heads[order as usize];
            while unit != NIL {
                assert_eq!(
                    self.state[unit as usize], order as u8,
                    "free-list entry has wrong state"
                );
                assert_eq!(self.prev[unit as usize], prev, "broken prev link");
                assert_eq!(unit % (1 << order), 0, "misaligned free block");
                if order < self.max_order {
                    // Two free buddies of the same order must have been merged.
                    let buddy = unit ^ (1 << order);
                    assert_ne!(self.state[buddy as usize], order as u8, "unmerged free buddies");
                }
                free += self.block_size(order);
                prev = unit;
                unit = self.next[unit as usize];
            }
        }
        assert_eq!(free + self.used, self.total_bytes(), "free + used != total");
        // Walking block heads from offset 0 must tile the region exactly.
        let mut unit = 0usize;
        let mut used = 0usize;
        while unit < self.state.len() {
            let state = self.state[unit];
            assert_ne!(state, NOT_HEAD, "gap in the tiling at unit {unit}");
            let order = (state & ORDER_MASK) as u32;
            if state & ALLOCATED != 0 {
                used += self.block_size(order);
            }
            for inner in unit + 1..unit + (1 << order) {
                assert_eq!(self.state[inner], NOT_HEAD, "overlapping blocks at unit {inner}");
            }
            unit += 1 << order;
        }
        assert_eq!(used, self.used, "used counter disagrees with the blocks");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    const KIB: usize = 1024;

    #[test]
    fn rejects_bad_geometry() {
        assert_eq!(
            BuddyAllocator::new(0, 4).unwrap_err(),
            BuddyError::MinBlockNotPowerOfTwo(0)
        );
        assert_eq!(
            BuddyAllocator::new(3000, 4).unwrap_err(),
            BuddyError::MinBlockNotPowerOfTwo(3000)
        );
        assert!(matches!(
            BuddyAllocator::new(4096, MAX_ORDER_LIMIT + 1),
            Err(BuddyError::MaxOrderTooLarge { .. })
        ));
        assert!(matches!(
            BuddyAllocator::new(1 << (usize::BITS - 4), 8),
            Err(BuddyError::RegionTooLarge { .. })
        ));
        let a = BuddyAllocator::new(1, 0).unwrap();
        assert_eq!(a.total_bytes(), 1);
    }

    #[test]
    fn starts_as_one_free_block() {
        let a = BuddyAllocator::new(4 * KIB, 4).unwrap();
        assert_eq!(a.total_bytes(), 64 * KIB);
        assert_eq!(a.free_bytes(), 64 * KIB);
        assert_eq!(a.used_bytes(), 0);
        assert_eq!(a.largest_free_block(), 64 * KIB);
        assert_eq!(a.free_blocks_of_order(4), 1);
        a.check_invariants();
    }

    #[test]
    fn rounds_up_to_the_smallest_fitting_order() {
        let a = BuddyAllocator::new(4 * KIB, 4).unwrap();
        assert_eq!(a.order_for(0), Some(0));
        assert_eq!(a.order_for(1), Some(0));
        assert_eq!(a.order_for(4 * KIB), Some(0));
        assert_eq!(a.order_for(4 * KIB + 1), Some(1));
        assert_eq!(a.order_for(12 * KIB), Some(2));
        assert_eq!(a.order_for(64 * KIB), Some(4));
        assert_eq!(a.order_for(64 * KIB + 1), None);
    }

    #[test]
    fn split_then_merge_back_to_one_block() {
        let mut a = BuddyAllocator::new(4 * KIB, 4).unwrap();
        let b = a.alloc(100).unwrap();
        assert_eq!(b, Block { offset: 0, order: 0 });
        // Splitting order 4 down to 0 leaves one free block of each order 0..=3.
        for order in 0..4 {
            assert_eq!(a.free_blocks_of_order(order), 1, "order {order}");
        }
        assert_eq!(a.free_blocks_of_order(4), 0);
        assert_eq!(a.used_bytes(), 4 * KIB);
        assert_eq!(a.largest_free_block(), 32 * KIB);
        a.check_invariants();
        a.free(b).unwrap();
        assert_eq!(a.free_blocks_of_order(4), 1);
        assert_eq!(a.largest_free_block(), 64 * KIB);
        a.check_invariants();
    }

    #[test]
    fn merge_needs_both_buddies() {
        let mut a = BuddyAllocator::new(4 * KIB, 2).unwrap();
        let blocks: Vec<_> = (0..4).map(|_| a.alloc(4 * KIB).unwrap()).collect();
        assert!(a.alloc(1).is_none());
        a.free(blocks[1]).unwrap();
        a.free(blocks[2]).unwrap();
        // 1 and 2 are not buddies: two separate order-0 blocks.
        assert_eq!(a.free_blocks_of_order(0), 2);
        assert_eq!(a.largest_free_block(), 4 * KIB);
        assert!(a.alloc(8 * KIB).is_none(), "8 KiB free in total but not contiguous");
        a.free(blocks[0]).unwrap();
        assert_eq!(a.free_blocks_of_order(1), 1);
        a.free(blocks[3]).unwrap();
        assert_eq!(a.free_blocks_of_order(2), 1);
        a.check_invariants();
    }

    #[test]
    fn exhaustion_returns_none() {
        let mut a = BuddyAllocator::new(64, 3).unwrap();
        for _ in 0..8 {
            assert!(a.alloc(64).is_some());
        }
        assert_eq!(a.free_bytes(), 0);
        assert_eq!(a.largest_free_block(), 0);
        assert!(a.alloc(1).is_none());
        assert!(a.alloc(0).is_none());
        let mut b = BuddyAllocator::new(64, 3).unwrap();
        assert!(b.alloc(64 * 8 + 1).is_none());
        assert!(b.alloc(usize::MAX).is_none());
        b.check_invariants();
    }

    #[test]
    fn offsets_are_aligned_to_their_block_size() {
        let mut a = BuddyAllocator::new(512, 10).unwrap();
        let mut rng = StdRng::seed_from_u64(7);
        while let Some(b) = a.alloc(rng.gen_range(1..=16 * KIB)) {
            assert_eq!(b.offset % a.block_size(b.order), 0, "{b:?}");
            assert!(b.offset + a.block_size(b.order) <= a.total_bytes());
        }
        a.check_invariants();
    }

    #[test]
    fn double_and_foreign_frees_are_refused_without_damage() {
        let mut a = BuddyAllocator::new(4 * KIB, 4).unwrap();
        let b = a.alloc(8 * KIB).unwrap();
        let c = a.alloc(4 * KIB).unwrap();
        let before = (a.free_bytes(), a.used_bytes(), a.largest_free_block());
        // Wrong order for a live block.
        assert_eq!(
            a.free(Block {
                offset: b.offset,
                order: 0
            }),
            Err(BuddyError::NotAllocated { offset: 0, order: 0 })
        );
        // Misaligned, out of range, order too large.
        assert!(matches!(
            a.free(Block { offset: 100, order: 0 }),
            Err(BuddyError::InvalidBlock { .. })
        ));
        assert!(matches!(
            a.free(Block {
                offset: 64 * KIB,
                order: 0
            }),
            Err(BuddyError::InvalidBlock { .. })
        ));
        assert!(matches!(
            a.free(Block { offset: 0, order: 5 }),
            Err(BuddyError::InvalidBlock { .. })
        ));
        // A free block, and the inside of a free block.
        assert!(matches!(
            a.free(Block {
                offset: 32 * KIB,
                order: 3
            }),
            Err(BuddyError::NotAllocated { .. })
        ));
        assert!(matches!(
            a.free(Block {
                offset: 48 * KIB,
                order: 0
            }),
            Err(BuddyError::NotAllocated { .. })
        ));
        assert_eq!(before, (a.free_bytes(), a.used_bytes(), a.largest_free_block()));
        a.check_invariants();
        a.free(b).unwrap();
        assert_eq!(
            a.free(b),
            Err(BuddyError::NotAllocated {
                offset: b.offset,
                order: b.order
            })
        );
        a.free(c).unwrap();
        assert_eq!(
            a.free(c),
            Err(BuddyError::NotAllocated {
                offset: c.offset,
                order: c.order
            })
        );
        assert_eq!(a.largest_free_block(), 64 * KIB);
        a.check_invariants();
    }

    /// Fragmentation under a random steady-state workload: requests of 1 B..64 KiB in a 16 MiB
    /// pool of 4 KiB blocks, allocating while under ~70% full and freeing a random live block
    /// otherwise (or when an allocation fails).
    ///
    /// - internal: share of allocated bytes lost to rounding up to a power of two;
    /// - external: `1 - largest_free_block / free_bytes`, averaged over the steps, i.e. how much of
    ///   the free space is unusable for one request of the largest size that would fit otherwise;
    /// - failure rate: allocations refused although `free_bytes` could hold them.
    #[test]
    fn fragmentation_under_a_random_workload() {
        let mut a = BuddyAllocator::new(4 * KIB, 12).unwrap();
        let mut rng = StdRng::seed_from_u64(42);
        let mut live: Vec<(Block, usize)> = Vec::new();
        let (mut requested, mut external_sum, mut samples) = (0usize, 0.0f64, 0u32);
        let (mut attempts, mut refused_with_room) = (0u32, 0u32);
        for step in 0..200_000u32 {
            let want_alloc = a.used_bytes() < a.total_bytes() * 7 / 10 || live.is_empty();
            if want_alloc {
                let len = rng.gen_range(1..=64 * KIB);
                attempts += 1;
                match a.alloc(len) {
                    Some(b) => {
                        requested += len;
                        live.push((b, len));
                    }
                    None => {
                        if a.free_bytes() >= len {
                            refused_with_room += 1;
                        }
                    }
                }
            } else {
                let (b, len) = live.swap_remove(rng.gen_range(0..live.len()));
                a.free(b).unwrap();
                requested -= len;
            }
            if step >= 10_000 && a.free_bytes() > 0 {
                external_sum += 1.0 - a.largest_free_block() as f64 / a.free_bytes() as f64;
                samples += 1;
            }
        }
        let internal = 1.0 - requested as f64 / a.used_bytes() as f64;
        let external = external_sum / f64::from(samples);
        let refused = f64::from(refused_with_room) / f64::from(attempts);
        println!(
            "buddy fragmentation: internal {:.1}%, external {:.1}%, refused-with-room {:.2}%, occupancy {:.1}%",
            internal * 100.0,
            external * 100.0,
            refused * 100.0,
            a.used_bytes() as f64 / a.total_bytes() as f64 * 100.0
        );
        // Power-of-two rounding of uniform sizes loses about a quarter; never half.
        assert!(internal < 0.40, "internal fragmentation {internal}");
        // At ~30% free, the largest free block must stay a sizeable share of the free space.
        assert!(external < 0.80, "external fragmentation {external}");
        assert!(refused < 0.05, "refused with room {refused}");
        a.check_invariants();
        for (b, _) in live {
            a.free(b).unwrap();
        }
        assert_eq!(a.largest_free_block(), a.total_bytes());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Alloc(usize),
        /// Free the live block at this index (modulo the number of live blocks).
        Free(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![(0usize..=1100).prop_map(Op::Alloc), any::<usize>().prop_map(Op::Free)]
    }

    proptest! {
        #[test]
        fn random_sequences_match_a_model(
            min_shift in 4u32..8,
            max_order in 0u32..7,
            ops in proptest::collection::vec(op(), 0..200),
        ) {
            let min_block = 1usize << min_shift;
            let mut a = BuddyAllocator::new(min_block, max_order).unwrap();
            let total = a.total_bytes();
            // The model: the live blocks as byte ranges.
            let mut live: Vec<Block> = Vec::new();
            for op in ops {
                match op {
                    Op::Alloc(len) => match a.alloc(len) {
                        Some(b) => {
                            let size = a.block_size(b.order);
                            prop_assert!(size >= len.max(1));
                            // Smallest fitting order.
                            prop_assert!(b.order == 0 || a.block_size(b.order - 1) < len);
                            prop_assert_eq!(b.offset % size, 0);
                            prop_assert!(b.offset + size <= total);
                            for o in &live {
                                let osize = a.block_size(o.order);
                                prop_assert!(b.offset + size <= o.offset || o.offset + osize <= b.offset,
                                    "{:?} overlaps {:?}", b, o);
                            }
                            live.push(b);
                        }
                        None => {
                            // Refusal is only allowed when no free block is large enough.
                            if let Some(order) = a.order_for(len) {
                                prop_assert!(a.largest_free_block() < a.block_size(order));
                            }
                        }
                    },
                    Op::Free(i) => {
                        if !live.is_empty() {
                            let b = live.swap_remove(i % live.len());
                            prop_assert_eq!(a.free(b), Ok(()));
                            // Freeing again must be refused.
                            prop_assert!(a.free(b).is_err());
                        }
                    }
                }
                let used: usize = live.iter().map(|b| a.block_size(b.order)).sum();
                prop_assert_eq!(a.used_bytes(), used);
                prop_assert_eq!(a.free_bytes() + a.used_bytes(), total);
                a.check_invariants();
            }
            for b in live.drain(..) {
                prop_assert_eq!(a.free(b), Ok(()));
            }
            prop_assert_eq!(a.free_blocks_of_order(max_order), 1);
            prop_assert_eq!(a.largest_free_block(), total);
            a.check_invariants();
        }
    }
}
