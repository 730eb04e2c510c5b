//! The object store: lifecycle, pins, clients, KV names, and the I/O of
//! spilling and restoring.
//!
//! Layout: one [`Arena`] holds the bytes; a [`Tlsf`] allocator hands out
//! 64-byte aligned ranges of it; the object table (slab, index and LRU list,
//! in `table`) records each object. Which objects leave memory under
//! pressure is decided by `table::choose_victims`, a pure function; this
//! module applies its choice: it drops secondary copies, marks spill victims
//! Spilling, writes them out and records where they went.
//!
//! Invariants (checked by the model-based proptest):
//! - an entry owns an allocator block exactly when its bytes are in memory
//!   (Unsealed, Sealed, Spilling, Restoring); blocks never overlap, so live
//!   objects never overlap;
//! - an entry is in the LRU list exactly when it is Sealed, unpinned and not
//!   pending deletion: the list *is* the set of eviction candidates, ordered
//!   from least to most recently released;
//! - a pinned object (pins > 0) is never freed, spilled or moved; neither is an
//!   object while the spill path reads it (Spilling) or a restore writes it
//!   (Restoring);
//! - a sealed object's bytes never change; an object leaves the table only by
//!   delete or abort, never by pressure: pressure moves it to disk. The one
//!   exception is a secondary copy (pulled from another node, whose primary
//!   still holds the bytes): pressure evicts it, unpinned, before spilling
//!   anything.
//!
//! Concurrency: one `parking_lot::Mutex` guards all tables. Disk I/O never
//! happens under it: the spill path marks its victims Spilling, unlocks,
//! writes, relocks and finishes; a restore marks its target Restoring the same
//! way. Waiters (blocking gets) sleep on one condition variable that is
//! notified whenever an object becomes readable.

use crate::alloc::Tlsf;
use crate::arena::Arena;
pub use crate::config::StoreConfig;
use crate::error::StoreError;
use crate::id::ObjectId;
use crate::protocol::{ErrorCode, ErrorReply, ObjectInfo, ObjectState, ObjectView, StoreStats};
use crate::spill::{SpillError, SpillLoc, SpillStore};
use crate::table::{choose_victims, Choice, Entry, Pass, State, Table, NONE};
use hashbrown::{HashMap, HashSet};
use parking_lot::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Identifies a connected client inside the store (pins and unsealed
/// objects are tracked per client so a disconnect can undo them).
pub type ClientId = u32;

/// How long restores must pause before the background thread reclaims the
/// disk space they released.
const FREE_IDLE: Duration = Duration::from_millis(50);

#[derive(Default)]
struct ClientState {
    pins: HashMap<ObjectId, u32>,
    unsealed: HashSet<ObjectId>,
}

struct Inner {
    alloc: Tlsf,
    table: Table,
    spill_locs: Vec<SpillLoc>,
    spill_vacant: Vec<u32>,
    kv: HashMap<Box<[u8]>, ObjectId>,
    clients: HashMap<ClientId, ClientState>,
    next_client: ClientId,
    spill_ops: u64,
    restore_ops: u64,
    /// Gets blocked right now (reported in stats).
    waiters: u64,
    /// Set once by [`Store::shutdown`]: waiters return, the spiller exits.
    shutting_down: bool,
}

/// Result of a lookup for a blocking get.
enum Probe {
    Ready(u32),
    Wait,
    Restore(u32),
}

/// The store. Share it behind an `Arc`; every method takes `&self`.
pub struct Store {
    arena: Arena,
    inner: Mutex<Inner>,
    /// Notified whenever an object becomes readable or leaves a transient
    /// state (sealed, restored, spill finished, kv bound).
    changed: Condvar,
    /// Wakes the background spill thread.
    spill_wake: Condvar,
    /// Disk copies of restored objects, freed by the background thread: a
    /// hole punch costs about a quarter of a restore's time, and the getter
    /// waiting for its bytes should not pay for it.
    deferred_frees: Mutex<Vec<SpillLoc>>,
    /// When the last restore finished: the background thread frees disk
    /// space only once restores have paused for [`FREE_IDLE`], because on
    /// a filesystem mounted with `discard` a hole punch slows the reads of
    /// restores running at the same time.
    last_restore: Mutex<Instant>,
    spill: Option<SpillStore>,
    config: StoreConfig,
}

fn err(code: ErrorCode, message: impl Into<String>) -> ErrorReply {
    ErrorReply::new(code, message)
}

impl Inner {
    /// The victims [`choose_victims`] picks from the LRU list right now.
    fn choose(&self, target: u64, pass: Pass) -> Choice {
        let (table, alloc) = (&self.table, &self.alloc);
        let lru = table.lru().map(|slot| {
            let e = &table[slot];
            e.candidate(slot, alloc.size(e.block))
        });
        choose_victims(lru, target, pass)
    }

    fn offset(&self, slot: u32) -> u64 {
        self.alloc.offset(self.table[slot].block)
    }

    fn view(&self, slot: u32) -> ObjectView {
        let e = &self.table[slot];
        ObjectView {
            offset: self.alloc.offset(e.block),
            data_size: e.data_size,
            meta_size: e.meta_size as u64,
        }
    }

    fn pin(&mut self, client: ClientId, slot: u32) {
        let (first, id) = {
            let e = &mut self.table[slot];
            e.pins += 1;
            (e.pins == 1, e.id)
        };
        if first {
            self.table.lru_unlink(slot);
        }
        *self
            .clients
            .entry(client)
            .or_default()
            .pins
            .entry(id)
            .or_insert(0) += 1;
    }

    fn add_spill_loc(&mut self, loc: SpillLoc) -> u32 {
        match self.spill_vacant.pop() {
            Some(i) => {
                self.spill_locs[i as usize] = loc;
                i
            }
            None => {
                self.spill_locs.push(loc);
                (self.spill_locs.len() - 1) as u32
            }
        }
    }

    fn take_spill_loc(&mut self, slot: u32) -> Option<SpillLoc> {
        let i = std::mem::replace(&mut self.table[slot].spill, NONE);
        if i == NONE {
            return None;
        }
        self.spill_vacant.push(i);
        Some(self.spill_locs[i as usize])
    }

    fn meta_bytes(&self) -> u64 {
        (self.table.meta_bytes()
            + self.spill_locs.capacity() * std::mem::size_of::<SpillLoc>()
            + self.spill_vacant.capacity() * 4
            + self.alloc.metadata_bytes()) as u64
            + self
                .kv
                .iter()
                .map(|(k, _)| k.len() as u64 + 40)
                .sum::<u64>()
    }
}

impl Store {
    /// Checks the config, creates the arena and (when configured) opens the
    /// spill folder.
    pub fn new(config: StoreConfig) -> Result<Store, StoreError> {
        config.validate()?;
        let arena = Arena::create(config.capacity, config.prefault).map_err(StoreError::Arena)?;
        let spill = match &config.spill {
            Some(cfg) => Some(SpillStore::open(cfg.clone())?),
            None => None,
        };
        Ok(Store {
            inner: Mutex::new(Inner {
                alloc: Tlsf::new(config.capacity),
                table: Table::new(),
                spill_locs: Vec::new(),
                spill_vacant: Vec::new(),
                kv: HashMap::new(),
                clients: HashMap::new(),
                next_client: 1,
                spill_ops: 0,
                restore_ops: 0,
                waiters: 0,
                shutting_down: false,
            }),
            arena,
            changed: Condvar::new(),
            spill_wake: Condvar::new(),
            deferred_frees: Mutex::new(Vec::new()),
            last_restore: Mutex::new(Instant::now()),
            spill,
            config,
        })
    }

    /// The arena (its fd goes to clients).
    pub fn arena(&self) -> &Arena {
        &self.arena
    }

    /// The configuration in force.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// The spill engine in use, if spilling is enabled.
    pub fn spill_engine(&self) -> Option<&'static str> {
        self.spill.as_ref().map(|s| s.engine_name())
    }

    /// Registers a client; its pins and unsealed objects are tracked until
    /// [`Store::disconnect`].
    pub fn connect(&self) -> ClientId {
        let mut g = self.inner.lock();
        let id = g.next_client;
        g.next_client = g.next_client.wrapping_add(1).max(1);
        g.clients.insert(id, ClientState::default());
        id
    }

    /// Undoes everything a client left behind: releases its pins and aborts
    /// its unsealed objects.
    pub fn disconnect(&self, client: ClientId) {
        let mut g = self.inner.lock();
        let Some(state) = g.clients.remove(&client) else {
            return;
        };
        for (id, n) in state.pins {
            if let Some(slot) = g.table.find(&id) {
                for _ in 0..n {
                    self.unpin_locked(&mut g, slot);
                }
            }
        }
        for id in state.unsealed {
            if let Some(slot) = g.table.find(&id) {
                let e = &g.table[slot];
                if e.state == State::Unsealed && e.owner == client {
                    self.free_object(&mut g, slot);
                }
            }
        }
        drop(g);
        self.changed.notify_all();
    }

    /// Reserves space for an object and returns its arena offset (data, then
    /// metadata). Spills other objects if memory is short.
    pub fn create(
        &self,
        client: ClientId,
        id: ObjectId,
        data_size: u64,
        meta_size: u64,
    ) -> Result<u64, ErrorReply> {
        self.create_as(client, id, data_size, meta_size, false)
    }

    /// As [`Store::create`], for a secondary copy of an object whose primary
    /// lives on another node: evicted rather than spilled under pressure.
    pub fn create_secondary(
        &self,
        client: ClientId,
        id: ObjectId,
        data_size: u64,
        meta_size: u64,
    ) -> Result<u64, ErrorReply> {
        self.create_as(client, id, data_size, meta_size, true)
    }

    fn create_as(
        &self,
        client: ClientId,
        id: ObjectId,
        data_size: u64,
        meta_size: u64,
        secondary: bool,
    ) -> Result<u64, ErrorReply> {
        let total = data_size.saturating_add(meta_size);
        if meta_size > u32::MAX as u64 {
            return Err(err(
                ErrorCode::BadRequest,
                format!("metadata of object {id} is {meta_size} bytes; the limit is 4 GiB"),
            ));
        }
        if total > self.arena.size() {
            return Err(err(
                ErrorCode::TooLarge,
                format!(
                    "object {id} needs {total} bytes but the whole arena is {} bytes",
                    self.arena.size()
                ),
            ));
        }
        let mut g = self.inner.lock();
        let slot = self.create_locked(&mut g, client, id, data_size, meta_size as u32)?;
        g.table[slot].secondary = secondary;
        let off = g.offset(slot);
        self.maybe_wake_spiller(&g);
        Ok(off)
    }

    fn create_locked(
        &self,
        g: &mut MutexGuard<'_, Inner>,
        client: ClientId,
        id: ObjectId,
        data_size: u64,
        meta_size: u32,
    ) -> Result<u32, ErrorReply> {
        let total = data_size + meta_size as u64;
        loop {
            if let Some(slot) = g.table.find(&id) {
                let what = if g.table[slot].delete_pending {
                    "is being deleted"
                } else {
                    "already exists"
                };
                return Err(err(ErrorCode::AlreadyExists, format!("object {id} {what}")));
            }
            if let Some(a) = g.alloc.alloc(total) {
                let slot = g
                    .table
                    .insert(Entry::unsealed(id, data_size, meta_size, a.handle, client));
                g.clients.entry(client).or_default().unsealed.insert(id);
                return Ok(slot);
            }
            self.make_room(g, total, 0).map_err(|why| {
                let st = self.stats_locked(g);
                err(
                    ErrorCode::OutOfMemory,
                    format!(
                        "cannot create object {id} of {total} bytes: the arena has {} of {} bytes \
                         free (largest free block {} bytes) and {why}",
                        st.capacity - st.used,
                        st.capacity,
                        st.largest_free,
                    ),
                )
            })?;
        }
    }

    /// Frees memory for an allocation of `needed` bytes by spilling LRU
    /// victims. Returns why it could not when nothing more can move.
    ///
    /// `credit` lets the spill exceed the disk quota by that many bytes; a
    /// restore passes its own size, since it frees that much disk at once.
    fn make_room(
        &self,
        g: &mut MutexGuard<'_, Inner>,
        needed: u64,
        credit: u64,
    ) -> Result<(), String> {
        if self.spill.is_none() {
            if self.evict_secondaries(g, needed.saturating_add(needed / 8)) > 0 {
                return Ok(());
            }
            return Err("spilling is disabled (no spill folder)".into());
        }
        // Ask for a little more than needed: fragmentation means freed bytes
        // are not always contiguous.
        match self.spill_batch(g, needed.saturating_add(needed / 8), credit) {
            Ok(0) => Err("every other object is pinned, unsealed or already on disk".into()),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("spilling failed: {e}")),
        }
    }

    /// Picks LRU victims totalling at least `target` bytes (bounded by
    /// `SPILL_BATCH_MAX`, see [`choose_victims`]), writes them out and frees their memory. Returns
    /// the bytes freed. The lock is released during the write.
    fn spill_batch(
        &self,
        g: &mut MutexGuard<'_, Inner>,
        target: u64,
        credit: u64,
    ) -> Result<u64, SpillError> {
        // Copies whose primary lives elsewhere go first, and go for free.
        let evicted = self.evict_secondaries(g, target);
        if evicted >= target {
            return Ok(evicted);
        }
        let Some(spill) = &self.spill else {
            return Ok(evicted);
        };
        self.flush_deferred_frees();
        // Victims in LRU order, skipping any that would not fit in the disk
        // quota (so a batch is never refused as a whole because of one big
        // object); `choose_victims` bounds the scan to keep the lock hold short.
        let room = spill
            .limit()
            .saturating_sub(spill.used())
            .saturating_add(credit);
        let choice = g.choose(target, Pass::Spill { disk_room: room });
        let victims = choice.victims;
        if victims.is_empty() {
            return match choice.smallest_refused {
                _ if evicted > 0 => Ok(evicted),
                Some(requested) => Err(SpillError::LimitReached {
                    requested,
                    used: spill.used(),
                    limit: spill.limit(),
                }),
                None => Ok(0),
            };
        }
        let mut ranges = Vec::with_capacity(victims.len());
        for &slot in &victims {
            g.table.lru_unlink(slot);
            g.table[slot].state = State::Spilling;
            let off = g.offset(slot);
            ranges.push((off, g.table[slot].total()));
        }
        let result = MutexGuard::unlocked(g, || {
            // SAFETY: every range belongs to a sealed object in state
            // Spilling: the store neither frees nor hands out its block for
            // writing until this batch finishes, so the bytes are immutable.
            let slices: Vec<&[u8]> = ranges
                .iter()
                .map(|&(off, len)| unsafe { self.arena.slice(off, len) })
                .collect();
            spill.write_batch_with_credit(&slices, credit)
        });
        let mut freed = evicted;
        match result {
            Ok(locs) => {
                for (slot, loc) in victims.into_iter().zip(locs) {
                    let (pins, delete_pending, block) = {
                        let e = &g.table[slot];
                        (e.pins, e.delete_pending, e.block)
                    };
                    if delete_pending && pins == 0 {
                        spill.free(&loc);
                        freed += g.alloc.size(block);
                        self.free_object(g, slot);
                    } else if pins > 0 || delete_pending {
                        // Someone got it while it was being written: it stays
                        // in memory and the disk copy is dropped.
                        spill.free(&loc);
                        g.table[slot].state = State::Sealed;
                    } else {
                        freed += g.alloc.size(block);
                        g.alloc.free(block);
                        let li = g.add_spill_loc(loc);
                        let e = &mut g.table[slot];
                        e.block = NONE;
                        e.spill = li;
                        e.state = State::Spilled;
                        g.spill_ops += 1;
                    }
                }
                self.changed.notify_all();
                Ok(freed)
            }
            Err(e) => {
                for slot in victims {
                    let en = &mut g.table[slot];
                    en.state = State::Sealed;
                    if en.delete_pending && en.pins == 0 {
                        self.free_object(g, slot);
                    } else if en.pins == 0 && !en.delete_pending {
                        g.table.lru_push_back(slot);
                    }
                }
                self.changed.notify_all();
                Err(e)
            }
        }
    }

    /// Drops unpinned secondary copies, least recently used first, until
    /// `target` bytes are freed or none is left in the first part of the LRU
    /// list. Returns the bytes freed.
    fn evict_secondaries(&self, g: &mut Inner, target: u64) -> u64 {
        let choice = g.choose(target, Pass::Evict);
        for &slot in &choice.victims {
            self.free_object(g, slot);
        }
        choice.freed
    }

    /// Spills until usage is at or below `target_used` bytes or nothing more
    /// can be spilled. Returns bytes freed. Used by the background thread and
    /// by tests that apply pressure on demand.
    pub fn spill_until(&self, target_used: u64) -> Result<u64, ErrorReply> {
        let mut g = self.inner.lock();
        let mut total = 0;
        while g.alloc.used() > target_used {
            let want = g.alloc.used() - target_used;
            match self.spill_batch(&mut g, want, 0) {
                Ok(0) => break,
                Ok(n) => total += n,
                Err(e) => return Err(err(ErrorCode::SpillFailed, format!("spill failed: {e}"))),
            }
        }
        Ok(total)
    }

    fn high_mark(&self) -> u64 {
        (self.arena.size() as f64 * self.config.high_watermark) as u64
    }

    fn maybe_wake_spiller(&self, g: &Inner) {
        if self.spill.is_some() && g.alloc.used() > self.high_mark() {
            self.spill_wake.notify_one();
        }
    }

    /// Body of the background spill thread: sleeps until usage crosses the
    /// high watermark, then spills down to the low watermark. Returns after
    /// [`Store::shutdown`].
    pub fn run_spiller(&self) {
        if self.spill.is_none() {
            return;
        }
        let low = (self.arena.size() as f64 * self.config.low_watermark) as u64;
        let mut g = self.inner.lock();
        loop {
            if g.shutting_down {
                return;
            }
            if !self.deferred_frees.lock().is_empty() {
                let quiet = self.last_restore.lock().elapsed();
                if quiet >= FREE_IDLE {
                    MutexGuard::unlocked(&mut g, || self.flush_deferred_frees());
                    continue;
                }
            }
            if g.alloc.used() > self.high_mark() {
                while g.alloc.used() > low && !g.shutting_down {
                    let want = g.alloc.used() - low;
                    match self.spill_batch(&mut g, want, 0) {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!("background spill failed: {e}");
                            break;
                        }
                    }
                }
            }
            // Woken by a create that crossed the watermark or a restore that
            // left disk space to free; the timeout re-checks after failures
            // (a full disk may clear) and for frees waiting on quiet.
            let pending = !self.deferred_frees.lock().is_empty();
            let nap = if pending {
                FREE_IDLE
            } else {
                Duration::from_secs(1)
            };
            self.spill_wake.wait_for(&mut g, nap);
        }
    }

    /// Frees the disk copies restores left to the background thread. Also
    /// run before anything reports or relies on spill usage (stats, delete,
    /// choosing spill victims), so what callers observe is never stale.
    fn flush_deferred_frees(&self) {
        let frees = std::mem::take(&mut *self.deferred_frees.lock());
        if let Some(spill) = &self.spill {
            for loc in &frees {
                spill.free(loc);
            }
        }
    }

    /// Stops background work and wakes every waiter.
    pub fn shutdown(&self) {
        self.inner.lock().shutting_down = true;
        self.spill_wake.notify_all();
        self.changed.notify_all();
    }

    /// Makes an unsealed object immutable and visible to getters.
    pub fn seal(&self, client: ClientId, id: ObjectId) -> Result<(), ErrorReply> {
        let mut g = self.inner.lock();
        let slot = g
            .table
            .find(&id)
            .filter(|&s| g.table[s].exists())
            .ok_or_else(|| {
                err(
                    ErrorCode::NotFound,
                    format!("cannot seal object {id}: not found"),
                )
            })?;
        let e = &g.table[slot];
        if e.state != State::Unsealed {
            return Err(err(
                ErrorCode::InvalidState,
                format!("cannot seal object {id}: already sealed"),
            ));
        }
        if e.owner != client {
            return Err(err(
                ErrorCode::InvalidState,
                format!("cannot seal object {id}: it was created by another client"),
            ));
        }
        self.seal_locked(&mut g, client, slot);
        drop(g);
        self.changed.notify_all();
        Ok(())
    }

    fn seal_locked(&self, g: &mut Inner, client: ClientId, slot: u32) {
        let id = g.table[slot].id;
        g.table[slot].state = State::Sealed;
        if let Some(c) = g.clients.get_mut(&client) {
            c.unsealed.remove(&id);
        }
        g.table.lru_push_back(slot);
    }

    /// Create + copy + seal in one step (small objects).
    pub fn put_inline(
        &self,
        client: ClientId,
        id: ObjectId,
        data: &[u8],
        meta: &[u8],
    ) -> Result<(), ErrorReply> {
        let (ds, ms) = (data.len() as u64, meta.len() as u64);
        if ds + ms > self.arena.size() {
            return Err(err(
                ErrorCode::TooLarge,
                format!(
                    "object {id} needs {} bytes but the whole arena is {} bytes",
                    ds + ms,
                    self.arena.size()
                ),
            ));
        }
        let mut g = self.inner.lock();
        let slot = self.create_locked(&mut g, client, id, ds, ms as u32)?;
        let off = g.offset(slot);
        // SAFETY: the block was just allocated for this unsealed object and is
        // referenced by no one else; we hold the lock until it is sealed.
        unsafe {
            self.arena.slice_mut(off, ds).copy_from_slice(data);
            self.arena.slice_mut(off + ds, ms).copy_from_slice(meta);
        }
        self.seal_locked(&mut g, client, slot);
        self.maybe_wake_spiller(&g);
        drop(g);
        self.changed.notify_all();
        Ok(())
    }

    /// Discards an unsealed object created by `client`.
    pub fn abort(&self, client: ClientId, id: ObjectId) -> Result<(), ErrorReply> {
        let mut g = self.inner.lock();
        let slot = g
            .table
            .find(&id)
            .filter(|&s| g.table[s].exists())
            .ok_or_else(|| {
                err(
                    ErrorCode::NotFound,
                    format!("cannot abort object {id}: not found"),
                )
            })?;
        let e = &g.table[slot];
        if e.state != State::Unsealed {
            return Err(err(
                ErrorCode::InvalidState,
                format!("cannot abort object {id}: it is sealed (delete it instead)"),
            ));
        }
        if e.owner != client {
            return Err(err(
                ErrorCode::InvalidState,
                format!("cannot abort object {id}: it was created by another client"),
            ));
        }
        if let Some(c) = g.clients.get_mut(&client) {
            c.unsealed.remove(&id);
        }
        self.free_object(&mut g, slot);
        Ok(())
    }

    /// Releases an object's memory, disk copy and table slot.
    fn free_object(&self, g: &mut Inner, slot: u32) {
        let block = g.table[slot].block;
        if block != NONE {
            g.alloc.free(block);
        }
        if let Some(loc) = g.take_spill_loc(slot) {
            if let Some(s) = &self.spill {
                s.free(&loc);
            }
        }
        // Also takes it out of the LRU list.
        g.table.remove(slot);
    }

    fn probe(&self, g: &Inner, id: &ObjectId) -> Probe {
        match g.table.find(id) {
            None => Probe::Wait,
            Some(slot) => {
                let e = &g.table[slot];
                if !e.exists() {
                    return Probe::Wait;
                }
                match e.state {
                    State::Sealed | State::Spilling => Probe::Ready(slot),
                    State::Spilled => Probe::Restore(slot),
                    State::Unsealed | State::Restoring => Probe::Wait,
                }
            }
        }
    }

    /// Pins and locates objects, waiting up to `timeout` for each to be
    /// sealed (restoring spilled ones from disk). Per-object results, in
    /// order; every `Ok` carries a pin the client must release.
    pub fn get(
        &self,
        client: ClientId,
        ids: &[ObjectId],
        timeout: Duration,
    ) -> Vec<Result<ObjectView, ErrorReply>> {
        let deadline = Instant::now().checked_add(timeout);
        let mut g = self.inner.lock();
        let mut slots: Vec<Option<u32>> = vec![None; ids.len()];
        let mut failed: Vec<Option<ErrorReply>> = vec![None; ids.len()];
        loop {
            let mut waiting = false;
            let mut restore: Vec<(usize, u32)> = Vec::new();
            for (i, id) in ids.iter().enumerate() {
                if failed[i].is_some() {
                    continue;
                }
                match self.probe(&g, id) {
                    Probe::Ready(s) => slots[i] = Some(s),
                    Probe::Wait => {
                        slots[i] = None;
                        waiting = true;
                    }
                    Probe::Restore(s) => {
                        slots[i] = None;
                        if !restore.iter().any(|&(_, r)| r == s) {
                            restore.push((i, s));
                        }
                        waiting = true;
                    }
                }
            }
            if !restore.is_empty() {
                let batch: Vec<u32> = restore.iter().map(|&(_, s)| s).collect();
                for ((i, _), r) in restore.iter().zip(self.restore_many(&mut g, &batch)) {
                    if let Err(e) = r {
                        failed[*i] = Some(e);
                    }
                }
                continue;
            }
            let expired = g.shutting_down || deadline.is_some_and(|d| Instant::now() >= d);
            if !waiting || expired {
                // Pin exactly the objects we return, all under one lock hold,
                // so none can be freed between lookup and pin.
                let waited = timeout.as_millis();
                return ids
                    .iter()
                    .enumerate()
                    .map(|(i, id)| {
                        if let Some(e) = failed[i].take() {
                            return Err(e);
                        }
                        match slots[i] {
                            Some(s) => {
                                g.pin(client, s);
                                Ok(g.view(s))
                            }
                            None => Err(self.absent_error(&g, id, waited)),
                        }
                    })
                    .collect();
            }
            self.wait_changed(&mut g, deadline);
        }
    }

    fn wait_changed(&self, g: &mut MutexGuard<'_, Inner>, deadline: Option<Instant>) {
        g.waiters += 1;
        match deadline {
            Some(d) => {
                self.changed.wait_until(g, d);
            }
            None => self.changed.wait(g),
        }
        g.waiters -= 1;
    }

    fn absent_error(&self, g: &Inner, id: &ObjectId, waited_ms: u128) -> ErrorReply {
        match g.table.find(id).map(|s| &g.table[s]) {
            Some(e) if e.exists() && e.state == State::Unsealed => err(
                ErrorCode::Timeout,
                format!("object {id} is still unsealed after waiting {waited_ms} ms"),
            ),
            Some(e) if e.exists() => err(
                ErrorCode::Timeout,
                format!("object {id} is still being restored after waiting {waited_ms} ms"),
            ),
            _ => err(
                ErrorCode::NotFound,
                format!("object {id} not found (waited {waited_ms} ms)"),
            ),
        }
    }

    /// Brings spilled objects back into memory, as one batch: room is made
    /// for all of them first, then their bytes are read in one pass (objects
    /// of one spill file as one stream), with the lock released during the
    /// read. Concurrent getters of the same objects wait on `changed` (they
    /// are Restoring) instead of reading them twice. One result per slot;
    /// `Ok` also when another thread restored or deleted the object first
    /// (the caller re-probes).
    fn restore_many(
        &self,
        g: &mut MutexGuard<'_, Inner>,
        slots: &[u32],
    ) -> Vec<Result<(), ErrorReply>> {
        let Some(spill) = self.spill.as_ref() else {
            return slots
                .iter()
                .map(|_| {
                    Err(err(
                        ErrorCode::Internal,
                        "spilled object without a spill store",
                    ))
                })
                .collect();
        };
        let mut results: Vec<Result<(), ErrorReply>> = slots.iter().map(|_| Ok(())).collect();
        // (index into slots, slot, id, block, offset, total, loc) of each object being read.
        let mut batch = Vec::with_capacity(slots.len());
        for (k, &slot) in slots.iter().enumerate() {
            let (id, total) = {
                let e = &g.table[slot];
                (e.id, e.total())
            };
            let placed = loop {
                match g.table.find(&id) {
                    Some(s) if s == slot && g.table[s].state == State::Spilled => {}
                    _ => break None, // restored or deleted meanwhile
                }
                if let Some(a) = g.alloc.alloc(total) {
                    break Some(a.handle);
                }
                // Objects already in this batch are Restoring, so making
                // room (which releases the lock) can neither pick nor free them.
                if let Err(why) = self.make_room(g, total, total) {
                    results[k] = Err(err(
                        ErrorCode::OutOfMemory,
                        format!("cannot restore object {id} of {total} bytes from disk: {why}"),
                    ));
                    break None;
                }
            };
            let Some(handle) = placed else {
                continue;
            };
            let loc = g.spill_locs[g.table[slot].spill as usize];
            {
                let e = &mut g.table[slot];
                e.block = handle;
                e.state = State::Restoring;
            }
            let off = g.offset(slot);
            batch.push((k, slot, id, handle, off, total, loc));
        }
        if batch.is_empty() {
            return results;
        }
        let read = MutexGuard::unlocked(g, || {
            let mut reqs: Vec<(SpillLoc, &mut [u8])> = batch
                .iter()
                .map(|&(_, _, _, _, off, total, loc)| {
                    if !self.arena.prefaulted() {
                        self.arena.populate_write(off, total);
                    }
                    // SAFETY: each block was just allocated for its object,
                    // which is Restoring: nobody else reads or writes it
                    // until we finish, and the blocks do not overlap.
                    (loc, unsafe { self.arena.slice_mut(off, total) })
                })
                .collect();
            spill.read_many(&mut reqs)
        });
        let mut restored_any = false;
        for ((k, slot, id, handle, _, _, _), r) in batch.into_iter().zip(read) {
            match r {
                Ok(()) => {
                    if let Some(loc) = g.take_spill_loc(slot) {
                        self.deferred_frees.lock().push(loc);
                        restored_any = true;
                    }
                    g.restore_ops += 1;
                    let e = &mut g.table[slot];
                    e.state = State::Sealed;
                    if e.delete_pending && e.pins == 0 {
                        self.free_object(g, slot);
                    } else if e.pins == 0 {
                        g.table.lru_push_back(slot);
                    }
                }
                Err(e) => {
                    g.alloc.free(handle);
                    let en = &mut g.table[slot];
                    en.block = NONE;
                    en.state = State::Spilled;
                    if en.delete_pending {
                        self.free_object(g, slot);
                    }
                    results[k] = Err(err(
                        ErrorCode::SpillFailed,
                        format!("cannot restore object {id} from disk: {e}"),
                    ));
                }
            }
        }
        if restored_any {
            *self.last_restore.lock() = Instant::now();
            self.spill_wake.notify_one();
        }
        self.changed.notify_all();
        results
    }

    /// Drops one pin. Unknown pins are ignored (the reply-less release has
    /// nobody to tell), so a confused client cannot corrupt counts.
    pub fn release(&self, client: ClientId, id: ObjectId) {
        let mut g = self.inner.lock();
        let Some(c) = g.clients.get_mut(&client) else {
            return;
        };
        match c.pins.get_mut(&id) {
            Some(n) if *n > 1 => *n -= 1,
            Some(_) => {
                c.pins.remove(&id);
            }
            None => {
                tracing::debug!("client {client} released {id} without holding it");
                return;
            }
        }
        if let Some(slot) = g.table.find(&id) {
            self.unpin_locked(&mut g, slot);
        }
    }

    fn unpin_locked(&self, g: &mut Inner, slot: u32) {
        let e = &mut g.table[slot];
        if e.pins == 0 {
            return;
        }
        e.pins -= 1;
        if e.pins == 0 {
            if e.delete_pending && e.state == State::Sealed {
                self.free_object(g, slot);
            } else if e.state == State::Sealed && !e.delete_pending {
                g.table.lru_push_back(slot);
            }
        }
    }

    /// Deletes objects; those pinned or mid-I/O become invisible at once and
    /// are freed when released.
    pub fn delete(&self, ids: &[ObjectId]) -> Vec<Result<(), ErrorReply>> {
        self.flush_deferred_frees();
        let mut g = self.inner.lock();
        ids.iter()
            .map(|id| self.delete_locked(&mut g, id))
            .collect()
    }

    fn delete_locked(&self, g: &mut Inner, id: &ObjectId) -> Result<(), ErrorReply> {
        let slot = g
            .table
            .find(id)
            .filter(|&s| g.table[s].exists())
            .ok_or_else(|| {
                err(
                    ErrorCode::NotFound,
                    format!("cannot delete object {id}: not found"),
                )
            })?;
        let e = &mut g.table[slot];
        match e.state {
            State::Unsealed => Err(err(
                ErrorCode::InvalidState,
                format!(
                    "cannot delete object {id}: it is unsealed (its creator must seal or abort it)"
                ),
            )),
            State::Sealed if e.pins == 0 => {
                self.free_object(g, slot);
                Ok(())
            }
            State::Spilled => {
                self.free_object(g, slot);
                Ok(())
            }
            _ => {
                e.delete_pending = true;
                g.table.lru_unlink(slot);
                Ok(())
            }
        }
    }

    /// Whether a sealed object with this ID exists (in memory or on disk).
    pub fn contains(&self, id: &ObjectId) -> bool {
        let g = self.inner.lock();
        g.table.find(id).is_some_and(|s| {
            let e = &g.table[s];
            e.exists() && e.state != State::Unsealed
        })
    }

    /// Up to `limit` objects.
    pub fn list(&self, limit: usize) -> Vec<ObjectInfo> {
        let g = self.inner.lock();
        g.table
            .live()
            .filter(|e| e.exists())
            .take(limit)
            .map(|e| ObjectInfo {
                id: e.id,
                data_size: e.data_size,
                meta_size: e.meta_size as u64,
                state: match e.state {
                    State::Unsealed => ObjectState::Unsealed,
                    State::Spilled => ObjectState::Spilled,
                    _ => ObjectState::Sealed,
                },
                pins: e.pins,
            })
            .collect()
    }

    /// Counters.
    pub fn stats(&self) -> StoreStats {
        self.flush_deferred_frees();
        let g = self.inner.lock();
        self.stats_locked(&g)
    }

    fn stats_locked(&self, g: &Inner) -> StoreStats {
        let mut s = StoreStats {
            capacity: g.alloc.capacity(),
            used: g.alloc.used(),
            largest_free: g.alloc.largest_free_hint(),
            spill_used: self.spill.as_ref().map_or(0, |s| s.used()),
            spill_limit: self.spill.as_ref().map_or(0, |s| s.limit()),
            clients: g.clients.len() as u64,
            spill_ops: g.spill_ops,
            restore_ops: g.restore_ops,
            kv_keys: g.kv.len() as u64,
            meta_bytes: g.meta_bytes(),
            waiters: g.waiters,
            ..Default::default()
        };
        for e in g.table.live() {
            match e.state {
                State::Unsealed => s.unsealed += 1,
                State::Spilled => {
                    s.spilled += 1;
                    s.spilled_bytes += e.total();
                }
                _ => s.sealed += 1,
            }
            if e.secondary {
                s.secondary += 1;
            }
            if e.pins > 0 {
                s.pinned += 1;
            }
        }
        s
    }

    /// Binds `key` to a sealed object, deleting the object it replaces.
    pub fn kv_bind(&self, key: &[u8], id: ObjectId) -> Result<(), ErrorReply> {
        let mut g = self.inner.lock();
        let ok = g.table.find(&id).is_some_and(|s| {
            let e = &g.table[s];
            e.exists() && e.state != State::Unsealed
        });
        if !ok {
            return Err(err(
                ErrorCode::NotFound,
                format!(
                    "cannot bind key {:?}: object {id} is not a sealed object",
                    String::from_utf8_lossy(key)
                ),
            ));
        }
        if let Some(old) = g.kv.insert(key.into(), id) {
            if old != id {
                let _ = self.delete_locked(&mut g, &old);
            }
        }
        drop(g);
        self.changed.notify_all();
        Ok(())
    }

    /// Pins the object bound to `key`, waiting up to `timeout` for the key.
    pub fn kv_get(
        &self,
        client: ClientId,
        key: &[u8],
        timeout: Duration,
    ) -> Result<(ObjectId, ObjectView), ErrorReply> {
        let deadline = Instant::now().checked_add(timeout);
        let mut g = self.inner.lock();
        let id = loop {
            if let Some(id) = g.kv.get(key) {
                break *id;
            }
            let expired = g.shutting_down || deadline.is_some_and(|d| Instant::now() >= d);
            if expired {
                return Err(err(
                    ErrorCode::NotFound,
                    format!(
                        "key {:?} not found (waited {} ms)",
                        String::from_utf8_lossy(key),
                        timeout.as_millis()
                    ),
                ));
            }
            self.wait_changed(&mut g, deadline);
        };
        drop(g);
        let left = deadline.map_or(timeout, |d| d.saturating_duration_since(Instant::now()));
        let mut r = self.get(client, &[id], left);
        match r.pop() {
            Some(Ok(view)) => Ok((id, view)),
            Some(Err(e)) => Err(e),
            None => Err(err(ErrorCode::Internal, "empty get result")),
        }
    }

    /// Removes a key and deletes its object.
    pub fn kv_del(&self, key: &[u8]) -> Result<(), ErrorReply> {
        let mut g = self.inner.lock();
        match g.kv.remove(key) {
            Some(id) => {
                let _ = self.delete_locked(&mut g, &id);
                Ok(())
            }
            None => Err(err(
                ErrorCode::NotFound,
                format!("key {:?} not found", String::from_utf8_lossy(key)),
            )),
        }
    }

    /// Whether a key is bound.
    pub fn kv_exists(&self, key: &[u8]) -> bool {
        self.inner.lock().kv.contains_key(key)
    }

    /// Test helper: checks the internal invariants listed in the module
    /// header and returns the first violation.
    #[doc(hidden)]
    pub fn check_invariants(&self) -> Result<(), String> {
        let g = self.inner.lock();
        let in_lru: HashSet<u32> = g.table.check_lru()?.into_iter().collect();
        let mut used = 0u64;
        let mut ranges = Vec::new();
        for (slot, e) in g.table.slots() {
            if e.vacant {
                continue;
            }
            let in_mem = matches!(
                e.state,
                State::Unsealed | State::Sealed | State::Spilling | State::Restoring
            );
            if in_mem != (e.block != NONE) {
                return Err(format!(
                    "{}: block presence does not match state {:?}",
                    e.id, e.state
                ));
            }
            if (e.state == State::Spilled) != (e.spill != NONE) {
                return Err(format!("{}: spill location does not match state", e.id));
            }
            let candidate = e.state == State::Sealed && e.pins == 0 && !e.delete_pending;
            if candidate != in_lru.contains(&slot) {
                return Err(format!("{}: lru membership wrong ({:?})", e.id, e.state));
            }
            if e.block != NONE {
                let off = g.alloc.offset(e.block);
                let size = g.alloc.size(e.block);
                if size < e.total() || !off.is_multiple_of(64) {
                    return Err(format!("{}: block too small or misaligned", e.id));
                }
                used += size;
                ranges.push((off, off + size));
            }
            if g.table.find(&e.id) != Some(slot) {
                return Err(format!("{}: index does not find its slot", e.id));
            }
        }
        if used != g.alloc.used() {
            return Err(format!(
                "allocator used {} != objects {used}",
                g.alloc.used()
            ));
        }
        ranges.sort_unstable();
        for w in ranges.windows(2) {
            if w[0].1 > w[1].0 {
                return Err(format!("overlapping objects at {:?} and {:?}", w[0], w[1]));
            }
        }
        Ok(())
    }

    /// Test helper: a copy of a sealed object's bytes (data then metadata)
    /// without pinning, `None` when absent or not in memory.
    #[doc(hidden)]
    pub fn peek(&self, id: &ObjectId) -> Option<Vec<u8>> {
        let g = self.inner.lock();
        let slot = g.table.find(id)?;
        let e = &g.table[slot];
        if !e.readable() {
            return None;
        }
        // SAFETY: sealed bytes are immutable and cannot be freed while we
        // hold the lock.
        Some(unsafe { self.arena.slice(g.offset(slot), e.total()) }.to_vec())
    }

    /// Test helper: writes into an unsealed object's bytes, as its creator
    /// would through its mapping.
    #[doc(hidden)]
    pub fn write_unsealed(&self, id: &ObjectId, at: u64, bytes: &[u8]) -> bool {
        let g = self.inner.lock();
        let Some(slot) = g.table.find(id) else {
            return false;
        };
        let e = &g.table[slot];
        if e.vacant || e.state != State::Unsealed || at + bytes.len() as u64 > e.total() {
            return false;
        }
        // SAFETY: unsealed bytes belong to the creator; tests act as it.
        unsafe {
            self.arena
                .slice_mut(g.offset(slot) + at, bytes.len() as u64)
                .copy_from_slice(bytes)
        };
        true
    }
}
