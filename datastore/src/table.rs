//! The object table and the eviction decision: which objects exist, in what
//! state, in what order they were last released, and which of them to move
//! out of memory when space is short. No I/O and no locking here: the store
//! holds a [`Table`] under its mutex and does the spilling itself.
//!
//! Layout: compact [`Entry`] records live in a slab (`Vec<Entry>`, vacant
//! slots reused), indexed by a `hashbrown::HashTable<u32>` of slab positions
//! — 5 bytes of index per object instead of a copy of the key — which keeps
//! metadata well under 256 bytes per object with a million small objects. The
//! LRU list is intrusive: each entry carries its `lru_prev` / `lru_next` slot,
//! so pushing and unlinking allocate nothing.
//!
//! Invariants (the store keeps them; `Store::check_invariants` checks them):
//! - the index finds every non-vacant entry at its own slot, and nothing else;
//! - an entry is in the LRU list exactly when it is Sealed, unpinned and not
//!   pending deletion: the list *is* the set of eviction candidates, ordered
//!   from least to most recently released.
//!
//! [`choose_victims`] is the eviction policy as a pure function of plain
//! values (a [`Candidate`] per LRU entry, in LRU order): least recently used
//! first, never a pinned, unsealed or deleted object, secondary copies
//! dropped rather than spilled, stopping as soon as the target is met.

use crate::alloc::BlockHandle;
use crate::id::ObjectId;
use hashbrown::{DefaultHashBuilder, HashTable};
use std::hash::BuildHasher;
use std::ops::{Index, IndexMut};

/// "No slot": the end of the LRU list, an entry without a block or without a
/// spill location.
pub(crate) const NONE: u32 = u32::MAX;

/// Upper bound on bytes chosen per spill batch, so memory is handed back in
/// steps rather than after one huge write.
pub(crate) const SPILL_BATCH_MAX: u64 = 256 << 20;

/// Most LRU entries one victim choice looks at, so the store's lock is never
/// held for a scan of the whole table.
pub(crate) const SCAN_LIMIT: usize = 4096;

/// Where an object is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// Created, being written by its creator.
    Unsealed,
    /// Sealed and in memory.
    Sealed,
    /// Sealed; its bytes are being written to disk (still readable).
    Spilling,
    /// Sealed and on disk only.
    Spilled,
    /// Sealed; its bytes are being read back from disk.
    Restoring,
}

/// One object's record. Kept at 64 bytes: with a million objects the table
/// is most of the worker's metadata.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) id: ObjectId,
    pub(crate) data_size: u64,
    pub(crate) meta_size: u32,
    pub(crate) pins: u32,
    /// Allocator block while in memory, `NONE` otherwise.
    pub(crate) block: BlockHandle,
    lru_prev: u32,
    lru_next: u32,
    /// Index into the store's spill locations while a disk copy exists, else
    /// `NONE`.
    pub(crate) spill: u32,
    /// Creator of an unsealed object.
    pub(crate) owner: u32,
    pub(crate) state: State,
    /// Deleted while pinned or mid-I/O: invisible, freed when the last
    /// holder lets go.
    pub(crate) delete_pending: bool,
    /// Slab slot not in use.
    pub(crate) vacant: bool,
    /// A copy pulled from another node: under pressure it is dropped, not
    /// spilled, since the primary still has the bytes.
    pub(crate) secondary: bool,
}

// The table's memory is dominated by entries; keep them one cache line.
const _: () = assert!(std::mem::size_of::<Entry>() <= 64);

impl Entry {
    /// A fresh, unsealed entry holding `block`, in no list.
    pub(crate) fn unsealed(
        id: ObjectId,
        data_size: u64,
        meta_size: u32,
        block: BlockHandle,
        owner: u32,
    ) -> Entry {
        Entry {
            id,
            data_size,
            meta_size,
            pins: 0,
            block,
            lru_prev: NONE,
            lru_next: NONE,
            spill: NONE,
            owner,
            state: State::Unsealed,
            delete_pending: false,
            vacant: false,
            secondary: false,
        }
    }
    /// Data plus metadata bytes.
    pub(crate) fn total(&self) -> u64 {
        self.data_size + self.meta_size as u64
    }
    /// Whether a get may pin it now.
    pub(crate) fn readable(&self) -> bool {
        !self.vacant
            && !self.delete_pending
            && matches!(self.state, State::Sealed | State::Spilling)
    }
    /// Whether it is visible at all (not vacant, not being deleted).
    pub(crate) fn exists(&self) -> bool {
        !self.vacant && !self.delete_pending
    }
    /// What [`choose_victims`] sees of this entry; `block` is the size of its
    /// arena block (the allocator knows it, not the table).
    pub(crate) fn candidate(&self, slot: u32, block: u64) -> Candidate {
        Candidate {
            slot,
            state: self.state,
            pins: self.pins,
            delete_pending: self.delete_pending,
            secondary: self.secondary,
            size: self.total(),
            block,
        }
    }
}

/// The slab, its index and the LRU list.
pub(crate) struct Table {
    entries: Vec<Entry>,
    vacant: Vec<u32>,
    index: HashTable<u32>,
    hasher: DefaultHashBuilder,
    lru_head: u32,
    lru_tail: u32,
}

impl Index<u32> for Table {
    type Output = Entry;
    fn index(&self, slot: u32) -> &Entry {
        &self.entries[slot as usize]
    }
}

impl IndexMut<u32> for Table {
    fn index_mut(&mut self, slot: u32) -> &mut Entry {
        &mut self.entries[slot as usize]
    }
}

impl Table {
    pub(crate) fn new() -> Table {
        Table {
            entries: Vec::new(),
            vacant: Vec::new(),
            index: HashTable::new(),
            hasher: DefaultHashBuilder::default(),
            lru_head: NONE,
            lru_tail: NONE,
        }
    }

    /// The slot of `id`, vacant-pending entries included (callers check
    /// [`Entry::exists`]).
    pub(crate) fn find(&self, id: &ObjectId) -> Option<u32> {
        let h = self.hasher.hash_one(id);
        let entries = &self.entries;
        self.index
            .find(h, |&i| entries[i as usize].id == *id)
            .copied()
    }

    /// Adds an entry whose ID is not in the table; returns its slot.
    pub(crate) fn insert(&mut self, e: Entry) -> u32 {
        let h = self.hasher.hash_one(e.id);
        let slot = match self.vacant.pop() {
            Some(s) => {
                self.entries[s as usize] = e;
                s
            }
            None => {
                self.entries.push(e);
                (self.entries.len() - 1) as u32
            }
        };
        let Table {
            index,
            entries,
            hasher,
            ..
        } = self;
        index.insert_unique(h, slot, |&i| hasher.hash_one(entries[i as usize].id));
        slot
    }

    /// Removes the entry from the index and the LRU list and frees its slot;
    /// its block and spill copy must be released by the caller first.
    pub(crate) fn remove(&mut self, slot: u32) {
        self.lru_unlink(slot);
        let id = self.entries[slot as usize].id;
        let h = self.hasher.hash_one(id);
        let entries = &self.entries;
        if let Ok(occ) = self.index.find_entry(h, |&i| entries[i as usize].id == id) {
            occ.remove();
        }
        let e = &mut self.entries[slot as usize];
        e.vacant = true;
        e.block = NONE;
        e.spill = NONE;
        self.vacant.push(slot);
    }

    /// Appends `slot` as the most recently released candidate.
    pub(crate) fn lru_push_back(&mut self, slot: u32) {
        let tail = self.lru_tail;
        {
            let e = &mut self.entries[slot as usize];
            e.lru_prev = tail;
            e.lru_next = NONE;
        }
        if tail == NONE {
            self.lru_head = slot;
        } else {
            self.entries[tail as usize].lru_next = slot;
        }
        self.lru_tail = slot;
    }

    /// Takes `slot` out of the LRU list; a slot not in it is left alone.
    pub(crate) fn lru_unlink(&mut self, slot: u32) {
        let (prev, next) = {
            let e = &self.entries[slot as usize];
            (e.lru_prev, e.lru_next)
        };
        if prev == NONE {
            if self.lru_head != slot {
                return; // not in the list
            }
            self.lru_head = next;
        } else {
            self.entries[prev as usize].lru_next = next;
        }
        if next == NONE {
            self.lru_tail = prev;
        } else {
            self.entries[next as usize].lru_prev = prev;
        }
        let e = &mut self.entries[slot as usize];
        e.lru_prev = NONE;
        e.lru_next = NONE;
    }

    /// The LRU list's slots, least recently released first.
    pub(crate) fn lru(&self) -> Lru<'_> {
        Lru {
            table: self,
            cur: self.lru_head,
        }
    }

    /// Checks the list's links (back links, no cycle, tail) and returns its
    /// slots in order, for the store's invariant check.
    pub(crate) fn check_lru(&self) -> Result<Vec<u32>, String> {
        let mut seen = vec![false; self.entries.len()];
        let mut out = Vec::new();
        let mut prev = NONE;
        let mut cur = self.lru_head;
        while cur != NONE {
            let e = &self.entries[cur as usize];
            if e.lru_prev != prev {
                return Err(format!("lru back link broken at {}", e.id));
            }
            if std::mem::replace(&mut seen[cur as usize], true) {
                return Err("lru cycle".into());
            }
            out.push(cur);
            prev = cur;
            cur = e.lru_next;
        }
        if self.lru_tail != prev {
            return Err("lru tail wrong".into());
        }
        Ok(out)
    }

    /// Every slot with its entry, vacant ones included.
    pub(crate) fn slots(&self) -> impl Iterator<Item = (u32, &Entry)> {
        self.entries
            .iter()
            .enumerate()
            .map(|(slot, e)| (slot as u32, e))
    }

    /// Non-vacant entries, in slot order.
    pub(crate) fn live(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(|e| !e.vacant)
    }

    /// Heap bytes of the slab and the index.
    pub(crate) fn meta_bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<Entry>()
            + self.vacant.capacity() * 4
            + self.index.capacity() * 5
    }
}

/// Iterator over the LRU list (see [`Table::lru`]).
pub(crate) struct Lru<'a> {
    table: &'a Table,
    cur: u32,
}

impl Iterator for Lru<'_> {
    type Item = u32;
    fn next(&mut self) -> Option<u32> {
        if self.cur == NONE {
            return None;
        }
        let slot = self.cur;
        self.cur = self.table.entries[slot as usize].lru_next;
        Some(slot)
    }
}

/// What the victim choice knows of one object: plain values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Candidate {
    /// Its slot, returned when chosen.
    pub(crate) slot: u32,
    /// Its state; only Sealed objects may be chosen.
    pub(crate) state: State,
    /// Pins held on it; only unpinned objects may be chosen.
    pub(crate) pins: u32,
    /// Deleted but still held; never chosen.
    pub(crate) delete_pending: bool,
    /// A copy whose primary lives on another node.
    pub(crate) secondary: bool,
    /// Data plus metadata: what spilling it writes to disk.
    pub(crate) size: u64,
    /// Its arena block's size: what moving it out of memory frees.
    pub(crate) block: u64,
}

impl Candidate {
    /// Whether moving it out of memory is allowed at all.
    fn movable(&self) -> bool {
        self.state == State::Sealed && self.pins == 0 && !self.delete_pending
    }
}

/// Which kind of victims a choice is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pass {
    /// Secondary copies to drop (the primary's node still has the bytes).
    Evict,
    /// Primary objects to write to disk, within `disk_room` bytes of spill
    /// quota; secondaries are left for an `Evict` pass.
    Spill {
        /// Spill quota still free for this batch.
        disk_room: u64,
    },
}

/// The outcome of [`choose_victims`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Choice {
    /// Chosen slots, least recently used first.
    pub(crate) victims: Vec<u32>,
    /// Arena bytes the victims' blocks hold.
    pub(crate) freed: u64,
    /// Bytes the victims put on disk (`Spill` only).
    pub(crate) disk: u64,
    /// The smallest object passed over because it did not fit the disk
    /// room (`Spill` only): what to name when nothing fits.
    pub(crate) smallest_refused: Option<u64>,
}

/// Chooses victims to free `target` arena bytes from `lru` (candidates in
/// LRU order, least recently used first), looking at no more than
/// [`SCAN_LIMIT`] of them:
/// - only Sealed, unpinned objects not being deleted are ever chosen;
/// - `Evict` chooses secondary copies only, `Spill` primaries only, each
///   fitting in what is left of `disk_room`;
/// - candidates are taken in LRU order, skipping only those the pass may not
///   take, and the choice stops as soon as the victims' blocks reach the goal:
///   `target` for `Evict`; for `Spill`, `target` clamped to
///   `1..=SPILL_BATCH_MAX` (a spill asked for nothing still moves one object,
///   and one batch never grows past the bound).
pub(crate) fn choose_victims(
    lru: impl IntoIterator<Item = Candidate>,
    target: u64,
    pass: Pass,
) -> Choice {
    let goal = match pass {
        Pass::Evict => target,
        Pass::Spill { .. } => target.clamp(1, SPILL_BATCH_MAX),
    };
    let mut c = Choice::default();
    for cand in lru.into_iter().take(SCAN_LIMIT) {
        if c.freed >= goal {
            break;
        }
        if !cand.movable() {
            continue;
        }
        match pass {
            Pass::Evict if cand.secondary => {}
            Pass::Evict => continue,
            Pass::Spill { .. } if cand.secondary => continue,
            Pass::Spill { disk_room } => {
                let disk = c.disk.saturating_add(cand.size);
                if disk > disk_room {
                    c.smallest_refused =
                        Some(c.smallest_refused.map_or(cand.size, |m| m.min(cand.size)));
                    continue;
                }
                c.disk = disk;
            }
        }
        c.freed = c.freed.saturating_add(cand.block);
        c.victims.push(cand.slot);
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const UNLIMITED: u64 = u64::MAX;

    /// A sealed, unpinned primary of `size` bytes in a block of the same size.
    fn obj(slot: u32, size: u64) -> Candidate {
        Candidate {
            slot,
            state: State::Sealed,
            pins: 0,
            delete_pending: false,
            secondary: false,
            size,
            block: size,
        }
    }
    fn secondary(slot: u32, size: u64) -> Candidate {
        Candidate {
            secondary: true,
            ..obj(slot, size)
        }
    }
    fn pinned(slot: u32, size: u64) -> Candidate {
        Candidate {
            pins: 1,
            ..obj(slot, size)
        }
    }
    fn in_state(slot: u32, size: u64, state: State) -> Candidate {
        Candidate {
            state,
            ..obj(slot, size)
        }
    }
    fn spill(disk_room: u64) -> Pass {
        Pass::Spill { disk_room }
    }

    #[test]
    fn victim_table() {
        let big = 300 << 20;
        // (what, lru, target, pass, victims, smallest_refused)
        type Case = (
            &'static str,
            Vec<Candidate>,
            u64,
            Pass,
            Vec<u32>,
            Option<u64>,
        );
        let cases: Vec<Case> = vec![
            (
                "nothing to choose",
                vec![],
                100,
                spill(UNLIMITED),
                vec![],
                None,
            ),
            (
                "oldest first, stop once enough",
                vec![obj(7, 40), obj(3, 40), obj(9, 40)],
                60,
                spill(UNLIMITED),
                vec![7, 3],
                None,
            ),
            (
                "a spill asked for nothing still moves one",
                vec![obj(1, 10), obj(2, 10)],
                0,
                spill(UNLIMITED),
                vec![1],
                None,
            ),
            (
                "an eviction asked for nothing drops nothing",
                vec![secondary(1, 10)],
                0,
                Pass::Evict,
                vec![],
                None,
            ),
            (
                "pinned, unsealed, moving and deleted objects are skipped",
                vec![
                    pinned(1, 10),
                    in_state(2, 10, State::Unsealed),
                    in_state(3, 10, State::Spilling),
                    in_state(4, 10, State::Restoring),
                    in_state(5, 10, State::Spilled),
                    Candidate {
                        delete_pending: true,
                        ..obj(6, 10)
                    },
                    obj(8, 10),
                ],
                10,
                spill(UNLIMITED),
                vec![8],
                None,
            ),
            (
                "spill skips secondaries, eviction takes only them",
                vec![secondary(1, 10), obj(2, 10), secondary(3, 10)],
                20,
                spill(UNLIMITED),
                vec![2],
                None,
            ),
            (
                "eviction takes secondaries in LRU order",
                vec![secondary(1, 10), obj(2, 10), secondary(3, 10)],
                20,
                Pass::Evict,
                vec![1, 3],
                None,
            ),
            (
                "an object too big for the disk room is passed over, not the batch",
                vec![obj(1, 50), obj(2, 10), obj(3, 30), obj(4, 10)],
                100,
                spill(25),
                vec![2, 4],
                Some(30),
            ),
            (
                "nothing fits the disk: the smallest refusal is named",
                vec![obj(1, 50), obj(2, 30)],
                10,
                spill(20),
                vec![],
                Some(30),
            ),
            (
                "one batch stops at the batch bound",
                vec![obj(1, big), obj(2, big)],
                u64::MAX,
                spill(UNLIMITED),
                vec![1],
                None,
            ),
            (
                "freed counts blocks, not object bytes",
                vec![
                    Candidate {
                        block: 64,
                        ..obj(1, 10)
                    },
                    obj(2, 64),
                ],
                64,
                spill(UNLIMITED),
                vec![1],
                None,
            ),
        ];
        for (what, lru, target, pass, victims, refused) in cases {
            let c = choose_victims(lru, target, pass);
            assert_eq!(c.victims, victims, "{what}");
            assert_eq!(c.smallest_refused, refused, "{what}");
        }
    }

    #[test]
    fn the_scan_is_bounded() {
        let mut lru: Vec<Candidate> = (0..SCAN_LIMIT as u32).map(|s| pinned(s, 10)).collect();
        lru.push(obj(SCAN_LIMIT as u32, 10));
        let c = choose_victims(lru, 10, spill(UNLIMITED));
        assert!(
            c.victims.is_empty(),
            "candidates past the limit are not seen"
        );
    }

    fn arb_candidates() -> impl Strategy<Value = Vec<Candidate>> {
        let state = prop_oneof![
            6 => Just(State::Sealed),
            1 => Just(State::Unsealed),
            1 => Just(State::Spilling),
            1 => Just(State::Spilled),
            1 => Just(State::Restoring),
        ];
        let one = (
            state,
            prop_oneof![4 => Just(0u32), 1 => 1u32..3],
            proptest::bool::weighted(0.1),
            proptest::bool::weighted(0.2),
            1u64..5000,
            0u64..200,
        )
            .prop_map(
                |(state, pins, delete_pending, secondary, size, pad)| Candidate {
                    slot: 0,
                    state,
                    pins,
                    delete_pending,
                    secondary,
                    size,
                    block: size + pad,
                },
            );
        proptest::collection::vec(one, 0..60).prop_map(|mut v| {
            // Slots are the LRU positions, so order checks read plainly.
            for (i, c) in v.iter_mut().enumerate() {
                c.slot = i as u32;
            }
            v
        })
    }

    fn arb_pass() -> impl Strategy<Value = Pass> {
        prop_oneof![
            Just(Pass::Evict),
            Just(spill(UNLIMITED)),
            (0u64..60_000).prop_map(spill),
        ]
    }

    proptest! {
        #[test]
        fn victim_choice_properties(
            lru in arb_candidates(),
            target in prop_oneof![0u64..100_000, Just(u64::MAX)],
            pass in arb_pass(),
        ) {
            let c = choose_victims(lru.iter().copied(), target, pass);
            let goal = match pass {
                Pass::Evict => target,
                Pass::Spill { .. } => target.clamp(1, SPILL_BATCH_MAX),
            };
            let chosen: Vec<&Candidate> = c.victims.iter().map(|&s| &lru[s as usize]).collect();

            // Least recently used first: victims in LRU order, each once.
            prop_assert!(c.victims.windows(2).all(|w| w[0] < w[1]));
            // Never a pinned, unsealed, moving or deleted object; the right kind per pass.
            for v in &chosen {
                prop_assert_eq!(v.state, State::Sealed);
                prop_assert_eq!(v.pins, 0);
                prop_assert!(!v.delete_pending);
                prop_assert_eq!(v.secondary, pass == Pass::Evict);
            }
            // The accounting is the victims'.
            prop_assert_eq!(c.freed, chosen.iter().map(|v| v.block).sum::<u64>());
            match pass {
                Pass::Spill { disk_room } => {
                    prop_assert_eq!(c.disk, chosen.iter().map(|v| v.size).sum::<u64>());
                    prop_assert!(c.disk <= disk_room);
                }
                Pass::Evict => prop_assert_eq!(c.disk, 0),
            }
            // No more than needed: without its last victim the choice falls short.
            if let Some(last) = chosen.last() {
                prop_assert!(c.freed - last.block < goal);
            }
            let takeable = |v: &Candidate| v.movable() && v.secondary == (pass == Pass::Evict);
            // An older object the pass could take is passed over only for lack of disk room.
            let last = c.victims.last().copied().unwrap_or(0);
            let mut disk_before = 0u64;
            for v in lru.iter().take_while(|v| v.slot < last) {
                if c.victims.contains(&v.slot) {
                    disk_before += v.size;
                } else if takeable(v) {
                    match pass {
                        Pass::Spill { disk_room } => prop_assert!(disk_before + v.size > disk_room),
                        Pass::Evict => prop_assert!(false, "skipped an older secondary"),
                    }
                }
            }
            // Frees at least what is asked whenever the scanned candidates allow it.
            let available: u64 = lru.iter().take(SCAN_LIMIT).filter(|v| takeable(v)).map(|v| v.block).sum();
            let unconstrained = matches!(pass, Pass::Evict | Pass::Spill { disk_room: UNLIMITED });
            if unconstrained {
                prop_assert!(c.freed >= goal.min(available));
            }
            // When a spill chooses nothing, either nothing was takeable or the disk refusal is named.
            if c.victims.is_empty() && matches!(pass, Pass::Spill { .. }) && goal > 0 {
                let any = lru.iter().any(takeable);
                prop_assert_eq!(c.smallest_refused.is_some(), any);
            }
        }
    }

    /// The table's LRU list against a plain model under random operations.
    #[derive(Debug, Clone)]
    enum Op {
        Insert(u8),
        Remove(u8),
        Push(u8),
        Unlink(u8),
    }

    proptest! {
        #[test]
        fn table_matches_a_model(ops in proptest::collection::vec(
            prop_oneof![
                (0u8..16).prop_map(Op::Insert),
                (0u8..16).prop_map(Op::Remove),
                (0u8..16).prop_map(Op::Push),
                (0u8..16).prop_map(Op::Unlink),
            ],
            0..200,
        )) {
            let mut t = Table::new();
            let mut live: std::collections::HashMap<u8, u32> = Default::default();
            let mut lru: Vec<u8> = Vec::new();
            let id = |k: u8| ObjectId::new(1, k as u128);
            for op in ops {
                match op {
                    Op::Insert(k) if !live.contains_key(&k) => {
                        let slot = t.insert(Entry::unsealed(id(k), 1, 0, NONE, 0));
                        live.insert(k, slot);
                    }
                    Op::Remove(k) => {
                        if let Some(slot) = live.remove(&k) {
                            t.remove(slot);
                            lru.retain(|&x| x != k);
                        }
                    }
                    Op::Push(k) => {
                        if let Some(&slot) = live.get(&k) {
                            if !lru.contains(&k) {
                                t.lru_push_back(slot);
                                lru.push(k);
                            }
                        }
                    }
                    Op::Unlink(k) => {
                        if let Some(&slot) = live.get(&k) {
                            t.lru_unlink(slot);
                            lru.retain(|&x| x != k);
                        }
                    }
                    Op::Insert(_) => {}
                }
                for (&k, &slot) in &live {
                    prop_assert_eq!(t.find(&id(k)), Some(slot));
                    prop_assert_eq!(t[slot].id, id(k));
                }
                for k in 0u8..16 {
                    if !live.contains_key(&k) {
                        prop_assert_eq!(t.find(&id(k)), None);
                    }
                }
                let order = t.check_lru().map_err(TestCaseError::fail)?;
                prop_assert_eq!(&order, &t.lru().collect::<Vec<_>>());
                let want: Vec<u32> = lru.iter().map(|k| live[k]).collect();
                prop_assert_eq!(order, want);
                prop_assert_eq!(t.live().count(), live.len());
            }
        }
    }
}
