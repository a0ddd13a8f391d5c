//! The shard's value memory: every item (header, key and value together) lives in one chunk.
//!
//! Small items go into chunks of a size class carved from pages (1 MiB, or smaller under a small
//! memory budget, see [`SlabMemory::set_page_size`]), so a shard holding millions
//! of keys makes no per-key heap allocation and its memory use is known exactly. Classes are the
//! multiples of 8 bytes from 16 to 256, then grow by about 1.125× (rounded up to 8) up to
//! [`MAX_CHUNK`] (64 KiB). A page belongs to one class while it holds items; once it is completely
//! empty it is released (one empty page is kept as a spare so a class that oscillates around a page
//! boundary does not hit the allocator every time), so memory can move between classes.
//!
//! Items larger than [`MAX_CHUNK`] get an exact-size allocation of their own.
//!
//! A chunk is named by a 32-bit [`Handle`]: bit 31 clear means a page chunk, with the page index in
//! bits 17..31 and the offset inside the page in 8-byte units in bits 0..17; bit 31 set means a
//! large allocation whose slab key is in the low 31 bits. 14 page bits allow [`MAX_PAGES`] = 16384
//! pages, i.e. **at most 16 GiB of small items per shard** with 1 MiB pages (smaller pages are only
//! used under budgets far below that); past that, allocations fail (the keyspace reports it as out
//! of memory).
//!
//! Free chunks are kept on an intrusive list per page (the first byte of a free chunk is 0, which a
//! live item header never is, and bytes 4..8 hold the next free offset), and each class keeps the
//! list of its pages that have room, so allocation and release are O(1).

use slab::Slab;

/// Bytes per page (the largest page size; the handle's offset field is sized for it).
pub const PAGE_SIZE: usize = 1 << 20;
/// Allocation granularity inside a page; offsets are stored in these units.
const UNIT: usize = 8;
const OFFSET_BITS: u32 = 17;
const OFFSET_MASK: u32 = (1 << OFFSET_BITS) - 1;
/// Set in handles of large (exact-size) allocations.
pub const LARGE_BIT: u32 = 1 << 31;
/// Maximum number of pages of one shard (16 GiB of small items).
pub const MAX_PAGES: usize = 1 << 14;
/// Smallest chunk size.
pub const MIN_CHUNK: usize = 16;
/// Largest chunk size; bigger items get a large allocation.
pub const MAX_CHUNK: usize = 64 * 1024;
const NONE: u32 = u32::MAX;

/// Names an allocated chunk (see the module documentation for the encoding).
pub type Handle = u32;

struct Page {
    mem: Box<[u8]>,
    class: u8,
    /// Chunks holding items.
    used: u32,
    /// Head of the intrusive free list (offset in units), or `NONE`.
    free_head: u32,
    /// Chunks at or past this offset (in units) have never been handed out.
    bump: u32,
    /// Index of this page in its class's `nonfull` list, or `NONE`.
    nonfull_pos: u32,
    /// Chunks that fit in this page (pages made under different page sizes coexist).
    chunks: u32,
}

struct Class {
    size: u32,
    /// Pages of this class with at least one free chunk.
    nonfull: Vec<u32>,
    pages: u32,
    used_chunks: u64,
}

/// Chunk memory of one shard. See the module documentation.
pub struct SlabMemory {
    classes: Vec<Class>,
    /// Class index by `size.div_ceil(UNIT)`, for sizes up to `MAX_CHUNK`.
    class_by_units: Vec<u8>,
    pages: Vec<Option<Page>>,
    free_page_ids: Vec<u32>,
    spare: Option<Box<[u8]>>,
    /// Size of the pages made from now on.
    page_size: usize,
    large: Slab<Box<[u8]>>,
    page_bytes: u64,
    chunk_bytes: u64,
    large_bytes: u64,
    live: u64,
}

impl Default for SlabMemory {
    fn default() -> Self {
        Self::new()
    }
}

/// The chunk sizes of all classes, ascending.
pub fn class_sizes() -> Vec<usize> {
    let mut sizes: Vec<usize> = (MIN_CHUNK..=256).step_by(UNIT).collect();
    let mut size = 256usize;
    while size < MAX_CHUNK {
        size = (size * 9 / 8).div_ceil(UNIT) * UNIT;
        sizes.push(size.min(MAX_CHUNK));
    }
    sizes
}

impl SlabMemory {
    pub fn new() -> Self {
        let sizes = class_sizes();
        debug_assert!(sizes.len() < 256);
        let classes: Vec<Class> = sizes
            .iter()
            .map(|&size| Class {
                size: size as u32,
                nonfull: Vec::new(),
                pages: 0,
                used_chunks: 0,
            })
            .collect();
        let mut class_by_units = vec![0u8; MAX_CHUNK / UNIT + 1];
        let mut c = 0;
        for (units, slot) in class_by_units.iter_mut().enumerate() {
            while sizes[c] < units * UNIT {
                c += 1;
            }
            *slot = c as u8;
        }
        SlabMemory {
            classes,
            class_by_units,
            pages: Vec::new(),
            free_page_ids: Vec::new(),
            spare: None,
            page_size: PAGE_SIZE,
            large: Slab::new(),
            page_bytes: 0,
            chunk_bytes: 0,
            large_bytes: 0,
            live: 0,
        }
    }

    /// Drops every item and page.
    pub fn clear(&mut self) {
        let page_size = self.page_size;
        *self = SlabMemory::new();
        self.page_size = page_size;
    }

    /// Sets the size of pages made from now on (a power of two from [`MAX_CHUNK`] to
    /// [`PAGE_SIZE`]). Small budgets want small pages: a page is the unit memory moves between
    /// classes in, and a 4 MiB budget of 1 MiB pages could only serve four classes at once.
    pub fn set_page_size(&mut self, size: usize) {
        let size = size.clamp(MAX_CHUNK, PAGE_SIZE).next_power_of_two();
        if size != self.page_size {
            self.page_size = size;
            self.release_spare();
        }
    }

    pub fn page_size(&self) -> usize {
        self.page_size
    }

    /// The class an item of `size` bytes goes to, or `None` if it needs a large allocation.
    pub fn class_for_size(&self, size: usize) -> Option<u8> {
        if size > MAX_CHUNK {
            None
        } else {
            Some(self.class_by_units[size.div_ceil(UNIT)])
        }
    }

    pub fn class_size(&self, class: u8) -> usize {
        self.classes[class as usize].size as usize
    }

    /// Chunks of `class` currently holding items.
    pub fn class_used_chunks(&self, class: u8) -> u64 {
        self.classes[class as usize].used_chunks
    }

    /// Pages of `class`.
    pub fn class_pages(&self, class: u8) -> u32 {
        self.classes[class as usize].pages
    }

    /// The class of an allocated handle (`None` for large allocations).
    pub fn class_of(&self, h: Handle) -> Option<u8> {
        if h & LARGE_BIT != 0 {
            None
        } else {
            self.pages[(h >> OFFSET_BITS) as usize].as_ref().map(|p| p.class)
        }
    }

    pub fn is_large(h: Handle) -> bool {
        h & LARGE_BIT != 0
    }

    /// How much [`SlabMemory::total_bytes`] would grow if an item of `size` bytes were
    /// allocated now.
    pub fn alloc_cost(&self, size: usize) -> u64 {
        match self.class_for_size(size) {
            None => size as u64,
            Some(c) => {
                if !self.classes[c as usize].nonfull.is_empty() || self.spare.is_some() {
                    0
                } else {
                    self.page_size as u64
                }
            }
        }
    }

    /// Whether an item of `size` bytes can be rewritten in place in the chunk `h`: same class, or
    /// for large allocations the same exact size (so accounting stays exact).
    pub fn fits_in_place(&self, h: Handle, size: usize) -> bool {
        if Self::is_large(h) {
            self.large
                .get((h & !LARGE_BIT) as usize)
                .is_some_and(|b| b.len() == size)
        } else {
            self.class_for_size(size).is_some() && self.class_for_size(size) == self.class_of(h)
        }
    }

    /// Allocates a chunk of at least `size` bytes (contents unspecified). `None` when the page
    /// limit is reached or the large-allocation table is full.
    pub fn alloc(&mut self, size: usize) -> Option<Handle> {
        let Some(c) = self.class_for_size(size) else {
            if self.large.vacant_key() >= LARGE_BIT as usize {
                return None;
            }
            let key = self.large.insert(vec![0u8; size].into_boxed_slice());
            self.large_bytes += size as u64;
            self.live += 1;
            return Some(key as u32 | LARGE_BIT);
        };
        let pid = match self.classes[c as usize].nonfull.last() {
            Some(&pid) => pid,
            None => self.new_page(c)?,
        };
        let class = &mut self.classes[c as usize];
        let units = class.size / UNIT as u32;
        let page = self.pages[pid as usize].as_mut().expect("nonfull page exists");
        let off = if page.free_head != NONE {
            let off = page.free_head;
            let at = off as usize * UNIT + 4;
            page.free_head = u32::from_le_bytes(page.mem[at..at + 4].try_into().unwrap());
            off
        } else {
            let off = page.bump;
            page.bump += units;
            off
        };
        page.used += 1;
        if page.used == page.chunks {
            let pos = page.nonfull_pos;
            page.nonfull_pos = NONE;
            remove_nonfull(&mut class.nonfull, &mut self.pages, pos);
        }
        class.used_chunks += 1;
        self.chunk_bytes += class.size as u64;
        self.live += 1;
        Some((pid << OFFSET_BITS) | off)
    }

    fn new_page(&mut self, c: u8) -> Option<u32> {
        let pid = match self.free_page_ids.pop() {
            Some(pid) => pid,
            None if self.pages.len() < MAX_PAGES => {
                self.pages.push(None);
                (self.pages.len() - 1) as u32
            }
            None => return None,
        };
        let mem = match self.spare.take() {
            Some(mem) => mem,
            None => {
                self.page_bytes += self.page_size as u64;
                vec![0u8; self.page_size].into_boxed_slice()
            }
        };
        let class = &mut self.classes[c as usize];
        let chunks = (mem.len() / class.size as usize) as u32;
        class.pages += 1;
        class.nonfull.push(pid);
        self.pages[pid as usize] = Some(Page {
            mem,
            class: c,
            used: 0,
            free_head: NONE,
            bump: 0,
            nonfull_pos: (class.nonfull.len() - 1) as u32,
            chunks,
        });
        Some(pid)
    }

    /// Frees an allocated chunk.
    pub fn free(&mut self, h: Handle) {
        self.live -= 1;
        if Self::is_large(h) {
            let b = self.large.remove((h & !LARGE_BIT) as usize);
            self.large_bytes -= b.len() as u64;
            return;
        }
        let pid = h >> OFFSET_BITS;
        let off = h & OFFSET_MASK;
        let page = self.pages[pid as usize].as_mut().expect("freeing a live chunk");
        let class = &mut self.classes[page.class as usize];
        let at = off as usize * UNIT;
        page.mem[at] = 0;
        page.mem[at + 4..at + 8].copy_from_slice(&page.free_head.to_le_bytes());
        page.free_head = off;
        let was_full = page.used == page.chunks;
        page.used -= 1;
        class.used_chunks -= 1;
        self.chunk_bytes -= class.size as u64;
        if page.used == 0 {
            if !was_full {
                let pos = page.nonfull_pos;
                remove_nonfull(&mut class.nonfull, &mut self.pages, pos);
            }
            class.pages -= 1;
            let page = self.pages[pid as usize].take().expect("page exists");
            self.free_page_ids.push(pid);
            if self.spare.is_none() && page.mem.len() == self.page_size {
                self.spare = Some(page.mem);
            } else {
                self.page_bytes -= page.mem.len() as u64;
            }
        } else if was_full {
            class.nonfull.push(pid);
            page.nonfull_pos = (class.nonfull.len() - 1) as u32;
        }
    }

    /// Releases the spare empty page, if any. Returns whether memory was released.
    pub fn release_spare(&mut self) -> bool {
        if let Some(mem) = self.spare.take() {
            self.page_bytes -= mem.len() as u64;
            true
        } else {
            false
        }
    }

    /// The chunk's bytes (the class size, or the exact size for a large allocation).
    pub fn bytes(&self, h: Handle) -> &[u8] {
        if Self::is_large(h) {
            &self.large[(h & !LARGE_BIT) as usize]
        } else {
            let page = self.pages[(h >> OFFSET_BITS) as usize].as_ref().expect("live handle");
            let at = (h & OFFSET_MASK) as usize * UNIT;
            let size = self.classes[page.class as usize].size as usize;
            &page.mem[at..at + size]
        }
    }

    pub fn bytes_mut(&mut self, h: Handle) -> &mut [u8] {
        if Self::is_large(h) {
            &mut self.large[(h & !LARGE_BIT) as usize]
        } else {
            let page = self.pages[(h >> OFFSET_BITS) as usize].as_mut().expect("live handle");
            let at = (h & OFFSET_MASK) as usize * UNIT;
            let size = self.classes[page.class as usize].size as usize;
            &mut page.mem[at..at + size]
        }
    }

    /// Two distinct chunks at once, the first read-only (for copying an item to a new chunk).
    pub fn pair_mut(&mut self, src: Handle, dst: Handle) -> (&[u8], &mut [u8]) {
        assert_ne!(src, dst);
        match (Self::is_large(src), Self::is_large(dst)) {
            (true, true) => {
                let (a, b) = self
                    .large
                    .get2_mut((src & !LARGE_BIT) as usize, (dst & !LARGE_BIT) as usize)
                    .expect("live handles");
                (&a[..], &mut b[..])
            }
            (true, false) => {
                let s = &self.large[(src & !LARGE_BIT) as usize];
                let d = page_chunk_mut(&mut self.pages, &self.classes, dst);
                (&s[..], d)
            }
            (false, true) => {
                let d = &mut self.large[(dst & !LARGE_BIT) as usize];
                let s = page_chunk(&self.pages, &self.classes, src);
                (s, &mut d[..])
            }
            (false, false) => {
                let (ps, pd) = ((src >> OFFSET_BITS) as usize, (dst >> OFFSET_BITS) as usize);
                if ps == pd {
                    let page = self.pages[ps].as_mut().expect("live handle");
                    let size = self.classes[page.class as usize].size as usize;
                    let (s_at, d_at) = ((src & OFFSET_MASK) as usize * UNIT, (dst & OFFSET_MASK) as usize * UNIT);
                    if s_at < d_at {
                        let (lo, hi) = page.mem.split_at_mut(d_at);
                        (&lo[s_at..s_at + size], &mut hi[..size])
                    } else {
                        let (lo, hi) = page.mem.split_at_mut(s_at);
                        (&hi[..size], &mut lo[d_at..d_at + size])
                    }
                } else {
                    // Distinct pages are distinct boxes: borrow both through split_at_mut.
                    let (lo, hi) = self.pages.split_at_mut(ps.max(pd));
                    let (sp, dp) = if ps < pd {
                        (lo[ps].as_ref(), hi[0].as_mut())
                    } else {
                        (hi[0].as_ref(), lo[pd].as_mut())
                    };
                    let (sp, dp) = (sp.expect("live handle"), dp.expect("live handle"));
                    let s_size = self.classes[sp.class as usize].size as usize;
                    let d_size = self.classes[dp.class as usize].size as usize;
                    let s_at = (src & OFFSET_MASK) as usize * UNIT;
                    let d_at = (dst & OFFSET_MASK) as usize * UNIT;
                    (&sp.mem[s_at..s_at + s_size], &mut dp.mem[d_at..d_at + d_size])
                }
            }
        }
    }

    /// Handles of the live chunks in the page holding `h` (empty for a large allocation).
    pub fn page_items(&self, h: Handle) -> Vec<Handle> {
        if Self::is_large(h) {
            return Vec::new();
        }
        let pid = h >> OFFSET_BITS;
        let Some(page) = self.pages[pid as usize].as_ref() else {
            return Vec::new();
        };
        let units = self.classes[page.class as usize].size / UNIT as u32;
        (0..page.bump)
            .step_by(units as usize)
            .filter(|&off| page.mem[off as usize * UNIT] != 0)
            .map(|off| (pid << OFFSET_BITS) | off)
            .collect()
    }

    /// A live chunk of class `c` chosen from the random number `r` (scans the page list, so it
    /// is meant for the rare case where sampling keys failed to find one).
    pub fn random_item_in_class(&self, c: u8, r: u64) -> Option<Handle> {
        let class = &self.classes[c as usize];
        if class.used_chunks == 0 || self.pages.is_empty() {
            return None;
        }
        let units = class.size / UNIT as u32;
        let n = self.pages.len();
        let start = r as usize % n;
        for i in 0..n {
            let pid = (start + i) % n;
            let Some(page) = self.pages[pid].as_ref() else {
                continue;
            };
            if page.class != c || page.used == 0 {
                continue;
            }
            let chunks = page.bump / units;
            let first = (r >> 32) as u32 % chunks;
            for j in 0..chunks {
                let off = ((first + j) % chunks) * units;
                if page.mem[off as usize * UNIT] != 0 {
                    return Some(((pid as u32) << OFFSET_BITS) | off);
                }
            }
        }
        None
    }

    /// Bytes of pages held (including the spare).
    pub fn page_bytes(&self) -> u64 {
        self.page_bytes
    }
    /// Bytes of chunks holding items.
    pub fn chunk_bytes(&self) -> u64 {
        self.chunk_bytes
    }
    /// Bytes of large allocations.
    pub fn large_bytes(&self) -> u64 {
        self.large_bytes
    }
    /// Everything this memory holds.
    pub fn total_bytes(&self) -> u64 {
        self.page_bytes + self.large_bytes
    }
    /// Live chunks (page chunks and large allocations).
    pub fn live(&self) -> u64 {
        self.live
    }
}

fn page_chunk<'a>(pages: &'a [Option<Page>], classes: &[Class], h: Handle) -> &'a [u8] {
    let page = pages[(h >> OFFSET_BITS) as usize].as_ref().expect("live handle");
    let at = (h & OFFSET_MASK) as usize * UNIT;
    &page.mem[at..at + classes[page.class as usize].size as usize]
}

fn page_chunk_mut<'a>(pages: &'a mut [Option<Page>], classes: &[Class], h: Handle) -> &'a mut [u8] {
    let page = pages[(h >> OFFSET_BITS) as usize].as_mut().expect("live handle");
    let at = (h & OFFSET_MASK) as usize * UNIT;
    &mut page.mem[at..at + classes[page.class as usize].size as usize]
}

/// Removes the entry at `pos` of a class's nonfull list, fixing the position of the page moved
/// into its place.
fn remove_nonfull(nonfull: &mut Vec<u32>, pages: &mut [Option<Page>], pos: u32) {
    let pos = pos as usize;
    nonfull.swap_remove(pos);
    if let Some(&moved) = nonfull.get(pos) {
        pages[moved as usize].as_mut().expect("nonfull page exists").nonfull_pos = pos as u32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_sizes_shape() {
        let sizes = class_sizes();
        assert_eq!(sizes[0], 16);
        assert_eq!(*sizes.last().unwrap(), MAX_CHUNK);
        for w in sizes.windows(2) {
            assert!(w[0] < w[1] && w[1] % UNIT == 0);
            assert!(w[1] as f64 / w[0] as f64 <= 1.15 || w[1] <= 256, "{w:?}");
        }
        let m = SlabMemory::new();
        assert_eq!(m.class_size(m.class_for_size(54).unwrap()), 56);
        assert_eq!(m.class_size(m.class_for_size(1).unwrap()), 16);
        assert_eq!(m.class_size(m.class_for_size(256).unwrap()), 256);
        assert_eq!(m.class_size(m.class_for_size(257).unwrap()), 288);
        assert_eq!(m.class_for_size(MAX_CHUNK + 1), None);
    }

    fn fill(m: &mut SlabMemory, h: Handle, byte: u8) {
        let b = m.bytes_mut(h);
        b.fill(byte);
        b[0] = byte | 0x80;
    }

    #[test]
    fn alloc_free_reuse_and_accounting() {
        let mut m = SlabMemory::new();
        let per_page = PAGE_SIZE / 56;
        let mut hs = Vec::new();
        for i in 0..per_page + 10 {
            assert_eq!(
                m.alloc_cost(50),
                if i == 0 || i == per_page { PAGE_SIZE as u64 } else { 0 }
            );
            let h = m.alloc(50).unwrap();
            assert_eq!(m.bytes(h).len(), 56);
            fill(&mut m, h, i as u8);
            hs.push(h);
        }
        let mut sorted = hs.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), hs.len(), "handles are distinct");
        assert_eq!(m.page_bytes(), 2 * PAGE_SIZE as u64);
        assert_eq!(m.chunk_bytes(), hs.len() as u64 * 56);
        assert_eq!(m.live(), hs.len() as u64);
        for (i, &h) in hs.iter().enumerate() {
            assert_eq!(m.bytes(h)[1], i as u8, "chunks do not overlap");
        }
        // A freed chunk is reused by the next allocation of its class, not by another class.
        let victim = hs[100];
        m.free(victim);
        let other = m.alloc(20).unwrap();
        assert_ne!(other, victim);
        assert_eq!(m.class_of(other), m.class_for_size(20));
        assert_eq!(m.alloc(56).unwrap(), victim);
        fill(&mut m, victim, 1);
        m.free(other);
        // Freeing a full page's chunk makes it allocatable again.
        m.free(hs[5]);
        assert_eq!(m.alloc_cost(50), 0);
        assert_eq!(m.alloc(50).unwrap(), hs[5]);
        fill(&mut m, hs[5], 1);
        assert_eq!(m.page_items(hs[0]).len(), per_page);
        // Free everything: pages are released (one kept as spare).
        for &h in &hs {
            m.free(h);
        }
        assert_eq!(m.live(), 0);
        assert_eq!(m.chunk_bytes(), 0);
        assert_eq!(m.page_bytes(), PAGE_SIZE as u64);
        // The spare page serves any class.
        assert_eq!(m.alloc_cost(1000), 0);
        let h = m.alloc(1000).unwrap();
        assert_eq!(m.page_bytes(), PAGE_SIZE as u64);
        m.free(h);
        assert!(m.release_spare());
        assert_eq!(m.total_bytes(), 0);
    }

    #[test]
    fn large_allocations() {
        let mut m = SlabMemory::new();
        let h = m.alloc(MAX_CHUNK + 1).unwrap();
        assert!(SlabMemory::is_large(h));
        assert_eq!(m.bytes(h).len(), MAX_CHUNK + 1);
        assert_eq!(m.large_bytes(), (MAX_CHUNK + 1) as u64);
        assert_eq!(m.alloc_cost(200_000), 200_000);
        assert!(m.fits_in_place(h, MAX_CHUNK + 1));
        assert!(!m.fits_in_place(h, MAX_CHUNK + 2));
        m.free(h);
        assert_eq!(m.large_bytes(), 0);
        assert_eq!(m.total_bytes(), 0);
    }

    #[test]
    fn pair_mut_all_combinations() {
        let mut m = SlabMemory::new();
        let a = m.alloc(40).unwrap();
        let b = m.alloc(40).unwrap();
        let c = m.alloc(5000).unwrap();
        let d = m.alloc(100_000).unwrap();
        let e = m.alloc(100_000).unwrap();
        for &(s, t) in &[(a, b), (b, a), (a, c), (c, a), (c, d), (d, c), (d, e)] {
            for &h in &[a, b, c, d, e] {
                fill(&mut m, h, h as u8);
            }
            let (src, dst) = m.pair_mut(s, t);
            let n = src.len().min(dst.len());
            dst[..n].copy_from_slice(&src[..n]);
            assert_eq!(m.bytes(t)[1], s as u8);
        }
    }

    #[test]
    fn random_item_in_class_finds_live_chunks() {
        let mut m = SlabMemory::new();
        let c = m.class_for_size(100).unwrap();
        assert_eq!(m.random_item_in_class(c, 1), None);
        let hs: Vec<_> = (0..50).map(|_| m.alloc(100).unwrap()).collect();
        for &h in &hs {
            fill(&mut m, h, 1);
        }
        for &h in &hs[..49] {
            m.free(h);
        }
        for r in 0..20 {
            assert_eq!(m.random_item_in_class(c, r * 7919), Some(hs[49]));
        }
    }
}
