//! Out-of-band TLSF allocator for offsets inside the shared-memory arena.
//!
//! The data worker hands clients raw offsets into one big shared mapping of
//! `capacity` bytes. This module decides *which* offsets are free; it never
//! reads or writes the arena itself.
//!
//! # Why the metadata is out of band
//!
//! Clients map the arena writable, so anything stored inside it (classic
//! malloc headers, boundary tags, free-list links) could be corrupted by a
//! buggy or hostile client and turn into a worker crash or an arbitrary
//! write. All bookkeeping therefore lives in ordinary Rust vectors owned by
//! the worker: a slab of `Block` records indexed by [`BlockHandle`], one
//! head per size class and two levels of bitmaps.
//!
//! # Algorithm
//!
//! Two-level segregated fit (Masmano et al.). Sizes are handled in units of
//! [`ALIGN`] bytes. The first level is the log2 class of the size, the
//! second level splits each power-of-two range into [`SL_COUNT`] linear
//! subdivisions; sizes below `SL_COUNT` units get one exact list each. A
//! bitmap per level records which lists are non-empty, so finding a list is
//! a couple of bit scans and every public call runs in time independent of
//! the number of blocks.
//!
//! `alloc` rounds the request up to the next class boundary ("mapping
//! search") so that *any* block in the list it finds is big enough and only
//! the list head needs to be looked at. Because that rounding would refuse a
//! request that exactly matches the only free block (e.g. allocating the
//! whole arena), a failed search falls back to inspecting a bounded number of
//! blocks in the request's own class.
//!
//! # Invariants
//!
//! * Live blocks (free and allocated) tile `[0, capacity)` exactly, linked in
//!   address order through `prev_phys` / `next_phys`.
//! * No two physically adjacent blocks are both free (`free` coalesces).
//! * Every free block is in exactly one free list: the one for its own size
//!   class (`mapping_insert`), and allocated blocks are in none.
//! * Bit `sl` of `sl_bitmap[fl]` is set iff list `(fl, sl)` is non-empty, and
//!   bit `fl` of `fl_bitmap` is set iff `sl_bitmap[fl] != 0`.
//! * `used` is the exact sum of the sizes of allocated blocks.
//! * Offsets and sizes of all blocks are multiples of [`ALIGN`].
//!
//! Record slots released by coalescing are chained into a slot free list and
//! reused, so the slab stays proportional to the number of live blocks.

/// Alignment and granularity of every allocation, in bytes.
///
/// 64 matches the cache-line size, so objects never share a line and
/// concurrent writers to neighbouring objects do not false-share.
pub const ALIGN: u64 = 64;

/// Index of a block record in the allocator's slab.
///
/// Stable while the block is allocated; after `free` the slot may be
/// recycled for an unrelated block.
pub type BlockHandle = u32;

/// Result of a successful [`Tlsf::alloc`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allocation {
    /// Handle to pass to [`Tlsf::free`].
    pub handle: BlockHandle,
    /// Byte offset of the block inside the arena (multiple of [`ALIGN`]).
    pub offset: u64,
    /// Bytes actually reserved: the request rounded up to [`ALIGN`], possibly
    /// more when the remainder of a free block was too small to split off.
    pub size: u64,
}

/// log2 of [`ALIGN`]; sizes are converted to units of `ALIGN` for mapping.
const ALIGN_LOG2: u32 = ALIGN.trailing_zeros();

/// log2 of the number of second-level subdivisions.
const SL_LOG2: u32 = 4;
/// Number of linear subdivisions of each power-of-two size range.
pub const SL_COUNT: usize = 1 << SL_LOG2;

/// Number of first-level classes. Index 0 holds the exact small sizes
/// (`< SL_COUNT` units); index `i >= 1` holds sizes with log2 `i + SL_LOG2 - 1`.
/// The largest unit count is `u64::MAX >> ALIGN_LOG2` (log2 = 57), so this
/// covers any capacity representable in a `u64`, not just the 1 TiB target.
const FL_COUNT: usize = (64 - ALIGN_LOG2 - SL_LOG2 + 1) as usize;

/// Sentinel for "no block" in links and list heads.
const NIL: u32 = u32::MAX;

/// How many blocks of the request's own class `alloc` inspects when the
/// rounded-up search fails. Bounded so a call stays O(1); small because the
/// fallback only exists to catch near-exact fits such as "the whole arena".
const FALLBACK_SCAN: usize = 8;

/// Block state, kept in the low bits of `Block::size_state` (sizes are
/// multiples of 64, so those bits are otherwise always zero).
const STATE_MASK: u64 = ALIGN - 1;
/// Slot is not a block; it sits on the unused-slot chain.
const STATE_UNUSED: u64 = 0;
/// Block is free and linked into its class list.
const STATE_FREE: u64 = 1;
/// Block is handed out to a caller.
const STATE_ALLOCATED: u64 = 2;

/// One block record. 32 bytes: the store keeps about one record per live
/// object, and the per-object metadata budget is tight, so the state is
/// packed into the size word instead of taking a padded field of its own.
#[derive(Debug, Clone, Copy)]
struct Block {
    /// Byte offset of the block in the arena.
    offset: u64,
    /// Size in bytes (multiple of `ALIGN`) OR'ed with the `STATE_*` value.
    size_state: u64,
    /// Previous block in address order, or `NIL`.
    prev_phys: u32,
    /// Next block in address order, or `NIL`. For unused slots this is the
    /// next unused slot instead, which avoids a separate vector.
    next_phys: u32,
    /// Neighbours in the free list of this block's class (free blocks only).
    free_prev: u32,
    free_next: u32,
}

const _: () = assert!(std::mem::size_of::<Block>() == 32);

impl Block {
    fn size(&self) -> u64 {
        self.size_state & !STATE_MASK
    }

    fn state(&self) -> u64 {
        self.size_state & STATE_MASK
    }

    fn set_size(&mut self, size: u64) {
        debug_assert_eq!(size & STATE_MASK, 0);
        self.size_state = size | self.state();
    }

    fn set_state(&mut self, state: u64) {
        self.size_state = self.size() | state;
    }

    fn is_free(&self) -> bool {
        self.state() == STATE_FREE
    }
}

/// Maps a size in units to the list that contains blocks of that size.
fn mapping_insert(units: u64) -> (usize, usize) {
    if units < SL_COUNT as u64 {
        (0, units as usize)
    } else {
        let log2 = 63 - units.leading_zeros();
        let fl = (log2 - SL_LOG2 + 1) as usize;
        // Drop the implicit leading one; what remains is the subdivision.
        let sl = ((units >> (log2 - SL_LOG2)) as usize) ^ SL_COUNT;
        (fl, sl)
    }
}

/// Maps a request in units to the first list whose *every* block fits it,
/// by rounding the request up to the next subdivision boundary.
fn mapping_search(units: u64) -> (usize, usize) {
    if units < SL_COUNT as u64 {
        (0, units as usize)
    } else {
        let log2 = 63 - units.leading_zeros();
        let round = (1u64 << (log2 - SL_LOG2)) - 1;
        // Cannot overflow: units <= u64::MAX >> ALIGN_LOG2.
        mapping_insert(units + round)
    }
}

/// Smallest size in units that belongs to list `(fl, sl)`.
fn class_base(fl: usize, sl: usize) -> u64 {
    if fl == 0 {
        sl as u64
    } else {
        let log2 = fl as u32 + SL_LOG2 - 1;
        (1u64 << log2) + ((sl as u64) << (log2 - SL_LOG2))
    }
}

/// Two-level segregated fit allocator over `[0, capacity)`.
#[derive(Debug, Clone)]
pub struct Tlsf {
    capacity: u64,
    used: u64,
    /// Block record slab; `BlockHandle` indexes it.
    blocks: Vec<Block>,
    /// Head of the chain of unused record slots, or `NIL`.
    unused_head: u32,
    /// Number of slots currently on the unused chain.
    unused_count: usize,
    /// Bit `fl` set iff `sl_bitmap[fl] != 0`.
    fl_bitmap: u64,
    /// Bit `sl` of entry `fl` set iff list `(fl, sl)` is non-empty.
    sl_bitmap: [u32; FL_COUNT],
    /// Free-list heads, `FL_COUNT * SL_COUNT` entries, flattened.
    heads: Vec<u32>,
}

impl Tlsf {
    /// Creates an allocator for an arena of `capacity` bytes, rounded down to
    /// [`ALIGN`]. A zero capacity yields an allocator where every `alloc`
    /// fails.
    pub fn new(capacity: u64) -> Self {
        let capacity = capacity & !(ALIGN - 1);
        let mut tlsf = Tlsf {
            capacity,
            used: 0,
            blocks: Vec::new(),
            unused_head: NIL,
            unused_count: 0,
            fl_bitmap: 0,
            sl_bitmap: [0; FL_COUNT],
            heads: vec![NIL; FL_COUNT * SL_COUNT],
        };
        if capacity > 0 {
            tlsf.blocks.push(Block {
                offset: 0,
                size_state: capacity | STATE_FREE,
                prev_phys: NIL,
                next_phys: NIL,
                free_prev: NIL,
                free_next: NIL,
            });
            tlsf.insert_free(0);
        }
        tlsf
    }

    /// Reserves at least `size` bytes (0 is treated as [`ALIGN`]).
    ///
    /// Returns `None` when no free block can hold the request; the allocator
    /// is unchanged in that case.
    pub fn alloc(&mut self, size: u64) -> Option<Allocation> {
        let size = size.max(1);
        if size > self.capacity - self.used {
            return None;
        }
        // No overflow: size <= capacity <= u64::MAX rounded down to ALIGN.
        let units = size.div_ceil(ALIGN);
        let idx = self.find_block(units)?;
        self.remove_free(idx);
        let need = units << ALIGN_LOG2;
        let have = self.blocks[idx as usize].size();
        if have > need {
            // The remainder is at least ALIGN because both are multiples of it.
            self.split(idx, need);
        }
        let block = &mut self.blocks[idx as usize];
        block.set_state(STATE_ALLOCATED);
        let size = block.size();
        self.used += size;
        Some(Allocation {
            handle: idx,
            offset: block.offset,
            size,
        })
    }

    /// Releases an allocated block and merges it with free neighbours.
    ///
    /// A handle that is not currently allocated is a caller bug: it trips a
    /// debug assertion, and is ignored in release builds so that a confused
    /// caller cannot corrupt the free lists.
    pub fn free(&mut self, handle: BlockHandle) {
        let valid = self
            .blocks
            .get(handle as usize)
            .is_some_and(|b| b.state() == STATE_ALLOCATED);
        debug_assert!(valid, "free of a handle that is not allocated: {handle}");
        if !valid {
            return;
        }
        let mut idx = handle;
        self.used -= self.blocks[idx as usize].size();
        self.blocks[idx as usize].set_state(STATE_FREE);

        let prev = self.blocks[idx as usize].prev_phys;
        if prev != NIL && self.blocks[prev as usize].is_free() {
            self.remove_free(prev);
            self.absorb_next(prev);
            idx = prev;
        }
        let next = self.blocks[idx as usize].next_phys;
        if next != NIL && self.blocks[next as usize].is_free() {
            self.remove_free(next);
            self.absorb_next(idx);
        }
        self.insert_free(idx);
    }

    /// Byte offset of an allocated block (0 for an unknown handle).
    pub fn offset(&self, h: BlockHandle) -> u64 {
        self.live_block(h).map_or(0, |b| b.offset)
    }

    /// Reserved size in bytes of an allocated block (0 for an unknown handle).
    pub fn size(&self, h: BlockHandle) -> u64 {
        self.live_block(h).map_or(0, |b| b.size())
    }

    /// Managed bytes (the constructor argument rounded down to [`ALIGN`]).
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Exact sum of the reserved sizes of all allocated blocks.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// `capacity() - used()`; may be fragmented across many blocks.
    pub fn free_bytes(&self) -> u64 {
        self.capacity - self.used
    }

    /// O(1) lower bound on the largest request `alloc` would satisfy now.
    ///
    /// Reads the bitmaps to find the highest non-empty class and returns the
    /// size of the head block of that list. A request of at most that many
    /// bytes either rounds to a lower-or-equal class (whose search succeeds
    /// because this list is non-empty) or shares the head's class, in which
    /// case the fallback scan sees the head first. Larger blocks may sit
    /// further down the same list, hence "lower bound". Returns 0 when
    /// nothing is free.
    pub fn largest_free_hint(&self) -> u64 {
        if self.fl_bitmap == 0 {
            return 0;
        }
        let fl = (63 - self.fl_bitmap.leading_zeros()) as usize;
        let sl = (31 - self.sl_bitmap[fl].leading_zeros()) as usize;
        let head = self.heads[fl * SL_COUNT + sl];
        self.blocks
            .get(head as usize)
            .map_or(class_base(fl, sl) << ALIGN_LOG2, Block::size)
    }

    /// Number of live block records (free and allocated).
    pub fn block_count(&self) -> usize {
        self.blocks.len() - self.unused_count
    }

    /// Bytes of memory attributable to the allocator: the reserved capacity
    /// of its heap tables plus the fixed-size struct itself.
    pub fn metadata_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.blocks.capacity() * std::mem::size_of::<Block>()
            + self.heads.capacity() * std::mem::size_of::<u32>()
    }

    fn live_block(&self, h: BlockHandle) -> Option<&Block> {
        self.blocks
            .get(h as usize)
            .filter(|b| b.state() == STATE_ALLOCATED)
    }

    /// Finds a free block of at least `units` units without unlinking it.
    fn find_block(&self, units: u64) -> Option<u32> {
        let (fl, sl) = mapping_search(units);
        if let Some(idx) = self.find_suitable(fl, sl) {
            return Some(idx);
        }
        // The rounded-up class is empty all the way up, but the request's own
        // class may still hold a block that is large enough.
        let (fl, sl) = mapping_insert(units);
        let need = units << ALIGN_LOG2;
        let mut cur = self.heads[fl * SL_COUNT + sl];
        for _ in 0..FALLBACK_SCAN {
            let block = self.blocks.get(cur as usize)?;
            if block.size() >= need {
                return Some(cur);
            }
            cur = block.free_next;
        }
        None
    }

    /// Head of the first non-empty list at or above `(fl, sl)`.
    fn find_suitable(&self, fl: usize, sl: usize) -> Option<u32> {
        if fl >= FL_COUNT {
            return None;
        }
        let mut fl = fl;
        let mut sl_map = self.sl_bitmap[fl] & (!0u32 << sl);
        if sl_map == 0 {
            // fl + 1 <= FL_COUNT < 64, so the shift is in range.
            let fl_map = self.fl_bitmap & (!0u64 << (fl + 1));
            if fl_map == 0 {
                return None;
            }
            fl = fl_map.trailing_zeros() as usize;
            sl_map = self.sl_bitmap[fl];
        }
        let sl = sl_map.trailing_zeros() as usize;
        let head = self.heads[fl * SL_COUNT + sl];
        debug_assert_ne!(head, NIL, "bitmap says list ({fl}, {sl}) is non-empty");
        (head != NIL).then_some(head)
    }

    /// Cuts free-but-unlinked block `idx` down to `need` bytes and files the
    /// tail as a new free block. If the slab cannot grow (u32 handles
    /// exhausted) the caller simply keeps the whole block.
    fn split(&mut self, idx: u32, need: u64) {
        let block = self.blocks[idx as usize];
        let Some(rest) = self.new_record(Block {
            offset: block.offset + need,
            size_state: (block.size() - need) | STATE_FREE,
            prev_phys: idx,
            next_phys: block.next_phys,
            free_prev: NIL,
            free_next: NIL,
        }) else {
            return;
        };
        if block.next_phys != NIL {
            self.blocks[block.next_phys as usize].prev_phys = rest;
        }
        let block = &mut self.blocks[idx as usize];
        block.next_phys = rest;
        block.set_size(need);
        // The old successor was not free (no adjacent free blocks), so the
        // tail needs no merging.
        self.insert_free(rest);
    }

    /// Merges the physical successor of `idx` into `idx` and recycles the
    /// successor's record. Neither block may be on a free list.
    fn absorb_next(&mut self, idx: u32) {
        let next = self.blocks[idx as usize].next_phys;
        let next_block = self.blocks[next as usize];
        if next_block.next_phys != NIL {
            self.blocks[next_block.next_phys as usize].prev_phys = idx;
        }
        let block = &mut self.blocks[idx as usize];
        block.next_phys = next_block.next_phys;
        block.set_size(block.size() + next_block.size());
        self.release_record(next);
    }

    fn new_record(&mut self, block: Block) -> Option<u32> {
        if self.unused_head != NIL {
            let idx = self.unused_head;
            self.unused_head = self.blocks[idx as usize].next_phys;
            self.unused_count -= 1;
            self.blocks[idx as usize] = block;
            Some(idx)
        } else {
            // NIL itself is not a usable index.
            let idx = u32::try_from(self.blocks.len())
                .ok()
                .filter(|&i| i != NIL)?;
            self.blocks.push(block);
            Some(idx)
        }
    }

    fn release_record(&mut self, idx: u32) {
        self.blocks[idx as usize] = Block {
            offset: 0,
            size_state: STATE_UNUSED,
            prev_phys: NIL,
            next_phys: self.unused_head,
            free_prev: NIL,
            free_next: NIL,
        };
        self.unused_head = idx;
        self.unused_count += 1;
    }

    fn insert_free(&mut self, idx: u32) {
        let (fl, sl) = mapping_insert(self.blocks[idx as usize].size() >> ALIGN_LOG2);
        let slot = fl * SL_COUNT + sl;
        let head = self.heads[slot];
        let block = &mut self.blocks[idx as usize];
        block.set_state(STATE_FREE);
        block.free_prev = NIL;
        block.free_next = head;
        if head != NIL {
            self.blocks[head as usize].free_prev = idx;
        }
        self.heads[slot] = idx;
        self.sl_bitmap[fl] |= 1 << sl;
        self.fl_bitmap |= 1 << fl;
    }

    /// Unlinks free block `idx` from its class list. The block keeps its
    /// `STATE_FREE` marking; callers either re-mark it or merge it away.
    fn remove_free(&mut self, idx: u32) {
        let block = self.blocks[idx as usize];
        let (fl, sl) = mapping_insert(block.size() >> ALIGN_LOG2);
        let slot = fl * SL_COUNT + sl;
        if block.free_prev != NIL {
            self.blocks[block.free_prev as usize].free_next = block.free_next;
        } else {
            debug_assert_eq!(self.heads[slot], idx);
            self.heads[slot] = block.free_next;
        }
        if block.free_next != NIL {
            self.blocks[block.free_next as usize].free_prev = block.free_prev;
        }
        let block = &mut self.blocks[idx as usize];
        block.free_prev = NIL;
        block.free_next = NIL;
        if self.heads[slot] == NIL {
            self.sl_bitmap[fl] &= !(1 << sl);
            if self.sl_bitmap[fl] == 0 {
                self.fl_bitmap &= !(1 << fl);
            }
        }
    }

    /// Walks every table and panics if any invariant from the module docs is
    /// violated. O(blocks); for tests only.
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        let n = self.blocks.len();

        // Unused-slot chain: exactly the slots marked unused.
        let mut unused = vec![false; n];
        let mut cur = self.unused_head;
        let mut count = 0;
        while cur != NIL {
            let b = &self.blocks[cur as usize];
            assert_eq!(b.state(), STATE_UNUSED, "slot {cur} on unused chain");
            assert!(!unused[cur as usize], "unused chain cycles at {cur}");
            unused[cur as usize] = true;
            count += 1;
            cur = b.next_phys;
        }
        assert_eq!(count, self.unused_count);
        for (i, b) in self.blocks.iter().enumerate() {
            assert_eq!(b.state() == STATE_UNUSED, unused[i], "slot {i} state");
            assert!(b.state() <= STATE_ALLOCATED, "slot {i} bad state");
        }

        // Physical chain tiles [0, capacity) with no adjacent free pair.
        let live = n - self.unused_count;
        if self.capacity == 0 {
            assert_eq!(live, 0);
        } else {
            let first = self
                .blocks
                .iter()
                .position(|b| b.state() != STATE_UNUSED && b.prev_phys == NIL)
                .expect("no first block");
            let mut seen = 0;
            let mut expect_offset = 0;
            let mut used = 0;
            let mut prev = NIL;
            let mut prev_free = false;
            let mut cur = first as u32;
            while cur != NIL {
                let b = &self.blocks[cur as usize];
                assert_ne!(b.state(), STATE_UNUSED, "unused slot {cur} in chain");
                assert_eq!(b.prev_phys, prev, "prev_phys of {cur}");
                assert_eq!(b.offset, expect_offset, "gap/overlap at {cur}");
                assert!(b.size() > 0, "empty block {cur}");
                assert_eq!(b.size() % ALIGN, 0, "size of {cur}");
                assert!(!(prev_free && b.is_free()), "adjacent free at {cur}");
                if b.state() == STATE_ALLOCATED {
                    used += b.size();
                }
                prev_free = b.is_free();
                expect_offset += b.size();
                seen += 1;
                assert!(seen <= live, "physical chain cycles");
                prev = cur;
                cur = b.next_phys;
            }
            assert_eq!(expect_offset, self.capacity, "chain does not reach end");
            assert_eq!(seen, live, "records not on the physical chain");
            assert_eq!(used, self.used, "used counter drift");
        }

        // Free lists: each free block exactly once, in its own class;
        // bitmaps mirror emptiness.
        let mut listed = vec![false; n];
        for fl in 0..FL_COUNT {
            assert_eq!(
                (self.fl_bitmap >> fl) & 1 == 1,
                self.sl_bitmap[fl] != 0,
                "fl bitmap bit {fl}"
            );
            for sl in 0..SL_COUNT {
                let head = self.heads[fl * SL_COUNT + sl];
                assert_eq!(
                    (self.sl_bitmap[fl] >> sl) & 1 == 1,
                    head != NIL,
                    "sl bitmap bit ({fl}, {sl})"
                );
                let mut prev = NIL;
                let mut cur = head;
                while cur != NIL {
                    let b = &self.blocks[cur as usize];
                    assert!(b.is_free(), "non-free block {cur} in list");
                    assert!(!listed[cur as usize], "block {cur} listed twice");
                    listed[cur as usize] = true;
                    assert_eq!(b.free_prev, prev, "free_prev of {cur}");
                    assert_eq!(mapping_insert(b.size() >> ALIGN_LOG2), (fl, sl));
                    prev = cur;
                    cur = b.free_next;
                }
            }
        }
        for (i, b) in self.blocks.iter().enumerate() {
            assert_eq!(b.is_free(), listed[i], "free block {i} not listed");
        }
        for bits in &self.sl_bitmap {
            assert_eq!(bits >> SL_COUNT, 0, "sl bitmap bits beyond SL_COUNT");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const MIB: u64 = 1 << 20;

    #[test]
    fn record_is_small() {
        assert!(std::mem::size_of::<Block>() <= 40);
    }

    #[test]
    fn mapping_is_consistent() {
        for units in 1..100_000u64 {
            let (fl, sl) = mapping_insert(units);
            assert!(class_base(fl, sl) <= units);
            let (sfl, ssl) = mapping_search(units);
            // Every block in the searched class fits the request.
            assert!(class_base(sfl, ssl) >= units, "units {units}");
            assert!((sfl, ssl) >= (fl, sl));
        }
        let max = u64::MAX >> ALIGN_LOG2;
        let (fl, _) = mapping_insert(max);
        assert!(fl < FL_COUNT);
    }

    #[test]
    fn simple_alloc_free() {
        let mut t = Tlsf::new(MIB);
        t.check_invariants();
        let a = t.alloc(100).unwrap();
        assert_eq!(a.size, 128);
        assert_eq!(t.offset(a.handle), a.offset);
        assert_eq!(t.size(a.handle), 128);
        let b = t.alloc(0).unwrap();
        assert_eq!(b.size, ALIGN);
        assert_eq!(t.used(), 192);
        assert_eq!(t.free_bytes(), MIB - 192);
        assert_eq!(t.block_count(), 3);
        t.check_invariants();
        t.free(a.handle);
        t.check_invariants();
        t.free(b.handle);
        t.check_invariants();
        assert_eq!(t.used(), 0);
        assert_eq!(t.block_count(), 1);
    }

    #[test]
    fn alignment() {
        let mut t = Tlsf::new(4 * MIB + 63);
        assert_eq!(t.capacity(), 4 * MIB);
        for size in [1, 63, 64, 65, 127, 1000, 4097, 65_537, 3] {
            let a = t.alloc(size).unwrap();
            assert_eq!(a.offset % ALIGN, 0);
            assert_eq!(a.size % ALIGN, 0);
            assert!(a.size >= size);
        }
        t.check_invariants();
    }

    #[test]
    fn exhaustion_returns_none() {
        let mut t = Tlsf::new(64 * 10);
        let mut hs = Vec::new();
        for _ in 0..10 {
            hs.push(t.alloc(64).unwrap());
        }
        assert_eq!(t.alloc(1), None);
        assert_eq!(t.largest_free_hint(), 0);
        assert_eq!(t.free_bytes(), 0);
        t.free(hs[3].handle);
        assert_eq!(t.largest_free_hint(), 64);
        assert_eq!(t.alloc(65), None);
        assert_eq!(t.alloc(64).unwrap().offset, hs[3].offset);
        t.check_invariants();

        let mut z = Tlsf::new(0);
        assert_eq!(z.alloc(0), None);
        assert_eq!(z.largest_free_hint(), 0);
        z.check_invariants();
        assert_eq!(Tlsf::new(63).alloc(1), None);
        assert_eq!(Tlsf::new(MIB).alloc(MIB + 1), None);
        assert_eq!(Tlsf::new(MIB).alloc(u64::MAX), None);
    }

    #[test]
    fn full_free_coalesces() {
        let cap = 3 * MIB + 64 * 7;
        let mut t = Tlsf::new(cap);
        let mut hs = Vec::new();
        while let Some(a) = t.alloc(4000) {
            hs.push(a.handle);
        }
        t.check_invariants();
        // Free in an interleaved order to exercise both merge directions.
        let (even, odd): (Vec<_>, Vec<_>) = hs.iter().enumerate().partition(|(i, _)| i % 2 == 0);
        for (_, &h) in even.iter().chain(odd.iter()) {
            t.free(h);
        }
        t.check_invariants();
        assert_eq!(t.block_count(), 1);
        assert_eq!(t.used(), 0);
        assert_eq!(t.largest_free_hint(), cap);
        let all = t.alloc(cap).unwrap();
        assert_eq!((all.offset, all.size), (0, cap));
        t.check_invariants();
    }

    #[test]
    fn whole_free_capacity_when_unfragmented() {
        // Odd sizes so the free block is not on a class boundary and the
        // rounded-up search alone would miss it.
        for cap in [MIB + 64 * 5, 1u64 << 40, 64 * 17] {
            let mut t = Tlsf::new(cap);
            let a = t.alloc(1000).unwrap();
            let rest = t.free_bytes();
            assert_eq!(t.largest_free_hint(), rest);
            let b = t.alloc(rest).unwrap_or_else(|| panic!("cap {cap}"));
            assert_eq!(b.size, rest);
            assert_eq!(t.free_bytes(), 0);
            t.check_invariants();
            t.free(a.handle);
            t.free(b.handle);
            assert_eq!(t.alloc(cap).map(|a| a.size), Some(cap));
        }
    }

    #[test]
    fn reuse_of_freed_space() {
        let mut t = Tlsf::new(MIB);
        let a = t.alloc(MIB / 2).unwrap();
        let b = t.alloc(MIB / 2).unwrap();
        assert_eq!(t.alloc(64), None);
        t.free(a.handle);
        let c = t.alloc(1000).unwrap();
        assert_eq!(c.offset, a.offset);
        let d = t.alloc(MIB / 4).unwrap();
        assert!(d.offset < b.offset);
        t.check_invariants();
        // Freed record slots are recycled rather than growing the slab. The
        // first cycle may need one new slot for the split remainder.
        let x = t.alloc(128).unwrap();
        t.free(x.handle);
        let slab = t.blocks.len();
        for _ in 0..1000 {
            let x = t.alloc(128).unwrap();
            t.free(x.handle);
        }
        assert_eq!(t.blocks.len(), slab);
        t.check_invariants();
    }

    #[test]
    fn largest_free_hint_is_satisfiable() {
        let mut t = Tlsf::new(8 * MIB);
        let mut hs = Vec::new();
        for i in 0..200u64 {
            hs.push(t.alloc(1 + i * 7919 % 50_000).unwrap().handle);
        }
        for h in hs.iter().step_by(3) {
            t.free(*h);
        }
        let hint = t.largest_free_hint();
        assert!(hint > 0);
        assert!(t.alloc(hint).is_some());
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "not allocated")]
    fn double_free_asserts_in_debug() {
        let mut t = Tlsf::new(MIB);
        let a = t.alloc(64).unwrap();
        t.free(a.handle);
        t.free(a.handle);
    }

    #[test]
    #[cfg(not(debug_assertions))]
    fn bad_handle_ignored_in_release() {
        let mut t = Tlsf::new(MIB);
        let a = t.alloc(64).unwrap();
        t.free(a.handle);
        t.free(a.handle);
        t.free(12345);
        t.free(NIL);
        t.check_invariants();
        assert_eq!(t.used(), 0);
    }

    #[test]
    fn million_small_objects_metadata() {
        let n = 1_000_000u64;
        let mut t = Tlsf::new(n * 64 + MIB);
        for _ in 0..n {
            t.alloc(64).unwrap();
        }
        let per_object = t.metadata_bytes() as u64 / n;
        assert!(per_object <= 80, "{per_object} bytes per object");
    }

    #[derive(Debug, Clone)]
    enum Op {
        Alloc(u64),
        Free(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        let size = prop_oneof![
            4 => 1..=256u64,
            3 => 1..=MIB,
            1 => Just(MIB),
            1 => prop::sample::select(vec![0u64, 63, 64, 65, 4096, MIB - 1]),
        ];
        prop_oneof![
            3 => size.prop_map(Op::Alloc),
            2 => any::<usize>().prop_map(Op::Free),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn random_ops_match_model(
            cap_mib in 1u64..=16,
            extra in 0u64..64 * 64,
            ops in prop::collection::vec(op(), 1..300),
        ) {
            let cap = cap_mib * MIB + extra;
            let mut t = Tlsf::new(cap);
            let cap = t.capacity();
            // offset -> (size, handle)
            let mut model: BTreeMap<u64, (u64, BlockHandle)> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Alloc(size) => {
                        if let Some(a) = t.alloc(size) {
                            // The slab never runs out of handles here, so every
                            // split happens and the size is exactly rounded up.
                            prop_assert_eq!(a.size, size.max(1).div_ceil(ALIGN) * ALIGN);
                            prop_assert_eq!(a.offset % ALIGN, 0);
                            prop_assert_eq!(a.size % ALIGN, 0);
                            prop_assert!(a.offset + a.size <= cap);
                            prop_assert_eq!(t.offset(a.handle), a.offset);
                            prop_assert_eq!(t.size(a.handle), a.size);
                            if let Some((&o, &(s, _))) = model.range(..a.offset).next_back() {
                                prop_assert!(o + s <= a.offset, "overlaps predecessor");
                            }
                            if let Some((&o, _)) = model.range(a.offset..).next() {
                                prop_assert!(a.offset + a.size <= o, "overlaps successor");
                            }
                            prop_assert!(model.values().all(|&(_, h)| h != a.handle));
                            model.insert(a.offset, (a.size, a.handle));
                        } else {
                            // Failure is only allowed when the request exceeds
                            // what the hint promises.
                            prop_assert!(size.max(1).div_ceil(ALIGN) * ALIGN > t.largest_free_hint());
                        }
                    }
                    Op::Free(i) => {
                        if !model.is_empty() {
                            let key = *model.keys().nth(i % model.len()).unwrap();
                            let (_, h) = model.remove(&key).unwrap();
                            t.free(h);
                        }
                    }
                }
                let sum: u64 = model.values().map(|&(s, _)| s).sum();
                prop_assert_eq!(t.used(), sum);
                prop_assert_eq!(t.free_bytes(), cap - sum);
                prop_assert!(t.block_count() <= 2 * model.len() + 1);
                t.check_invariants();
            }
            for (_, (_, h)) in std::mem::take(&mut model) {
                t.free(h);
            }
            t.check_invariants();
            prop_assert_eq!(t.block_count(), 1);
            prop_assert_eq!(t.alloc(cap).map(|a| a.size), Some(cap));
        }
    }
}
