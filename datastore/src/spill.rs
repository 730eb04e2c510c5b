//! Spill store: moves sealed objects out of the shared-memory arena onto local disk under memory
//! pressure, and brings them back on demand.
//!
//! The data worker hands [`SpillStore::write_batch`] a batch of objects chosen for eviction (as
//! slices into the arena) and keeps the returned [`SpillLoc`]s; a later get calls
//! [`SpillStore::read`] to copy an object back into a fresh arena slice, then
//! [`SpillStore::free`] once the disk copy is no longer wanted (restored or deleted).
//!
//! # Layout
//!
//! - One directory ([`SpillConfig::dir`]), owned by one store at a time through an flock on
//!   `yr-spill.lock`.
//! - One file per batch, `yr-spill-<id:08x>.bin`: the batch's objects fused in order. Objects
//!   under 64 KiB are packed back to back; larger ones start on a 4 KiB boundary. The file is
//!   zero-padded to a whole number of 4 KiB blocks. There is no header or index in the file: the
//!   caller's `SpillLoc` (file id, offset, length, crc32c) is the only index, kept in memory.
//! - `spill/io.rs`: the `IoEngine` seam with its two engines — io_uring
//!   (a pool of rings, one per concurrent transfer; up to [`QUEUE_DEPTH`] chunks of
//!   [`CHUNK`] bytes in flight) and a pwrite/pread fallback on worker threads, used only where
//!   the kernel refuses io_uring; `spill/file.rs`: open, preallocate, punch, lock, sweep; `spill/buf.rs`: aligned
//!   staging buffers; `spill/layout.rs`: packing and punch arithmetic, free of I/O.
//!
//! # Invariants
//!
//! - [`SpillStore::used`] equals the sum of the lengths of live objects, plus the bytes reserved by
//!   batches still being written; it never exceeds [`SpillStore::limit`]. Padding is not counted.
//! - A file is unlinked exactly when its last live object is freed (or when its batch fails to
//!   write). Until then it stays whole, except for holes punched over 4 KiB blocks that no live
//!   object touches any more.
//! - No internal lock is held across I/O: the locks guard only the in-memory file table, the
//!   idle ring pool and the idle buffer pool, so a slow disk stalls nobody else, and spills and
//!   restores on different threads proceed in parallel.
//!
//! # Durability
//!
//! None, on purpose: nothing is fsynced. Spill files are scratch: they are only read by the
//! process that wrote them, and a new store deletes any it finds (the objects they held died with
//! the old process). The files are opened with O_DIRECT wherever the filesystem accepts it, so
//! that spilled bytes actually leave memory instead of moving into the page cache (which is what
//! memory pressure asked for); elsewhere (e.g. a filesystem refusing O_DIRECT) buffered I/O is used.
//! O_DIRECT requires aligned memory, offsets and lengths, hence the staging buffers: copying an
//! object into staging overlaps with the transfer of the previous chunks.
//!
//! Every object is checksummed with crc32c (hardware-accelerated) while it is staged, and
//! verified on restore: a mismatch is [`SpillError::Corrupt`], never silently returned data.

mod buf;
mod file;
mod io;
mod layout;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fs::{self, File};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use self::buf::{AlignedBuf, BufPool};
use self::io::{IoEngine, IoQueue, Op, OpKind, PwriteEngine, UringEngine};
use self::layout::{round_down, round_up, FileObjects, Packer, BLOCK};

/// Bytes per transfer. Large enough that per-request overhead vanishes next to the transfer,
/// small enough that several are in flight at once and that copying one into staging overlaps
/// with the device writing the previous ones.
pub const CHUNK: usize = 1 << 20;

/// Transfers in flight per spill or restore. A single queue of this depth saturates the local
/// disk; it also bounds the staging memory of one transfer at `(QUEUE_DEPTH + 1) * CHUNK`.
pub const QUEUE_DEPTH: usize = 8;

/// Staging buffers kept idle between transfers (enough for two concurrent transfers).
const MAX_IDLE_BUFS: usize = 2 * (QUEUE_DEPTH + 1);

/// File id of the locations of a batch whose objects are all empty: no file is created for it.
const NO_FILE: u32 = 0;

/// Where to spill, and how much.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpillConfig {
    /// Directory for spill files; created if missing.
    pub dir: PathBuf,
    /// Most bytes of object data on disk at once (`u64::MAX`: unbounded).
    pub limit: u64,
}

/// Which I/O engine to use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EngineChoice {
    /// io_uring if the kernel allows it, otherwise pwrite/pread (logged once).
    #[default]
    Auto,
    /// io_uring or fail.
    IoUring,
    /// pwrite/pread even if io_uring is available.
    Pwrite,
}

/// Whether to bypass the page cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DirectIo {
    /// O_DIRECT if the directory's filesystem supports it (probed at open).
    #[default]
    Auto,
    /// Always buffered I/O.
    Off,
}

/// Knobs that production leaves at their defaults; tests and benchmarks pin them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpillOptions {
    pub engine: EngineChoice,
    pub direct_io: DirectIo,
}

/// Where one spilled object lives. Kept by the caller, one per spilled object, so it is small
/// (24 bytes) and `Copy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpillLoc {
    /// Spill file id (the file is `yr-spill-<file:08x>.bin`).
    pub file: u32,
    /// Byte offset of the object in that file.
    pub offset: u64,
    /// Object length in bytes.
    pub len: u64,
    /// crc32c of the object's bytes.
    pub crc: u32,
}

/// Why a spill operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SpillError {
    /// Spilling `requested` more bytes would take the spill data on disk past the limit.
    #[error("spill quota exhausted: {requested} bytes requested, {used} of {limit} bytes in use")]
    LimitReached {
        /// Bytes the refused write needed.
        requested: u64,
        /// Bytes on disk (and reserved) at the time.
        used: u64,
        /// The quota.
        limit: u64,
    },
    /// The bytes read back do not match the checksum taken when they were spilled.
    #[error(
        "spilled object corrupt in {} at offset {offset} ({len} bytes): crc32c expected {expected:#010x}, found {actual:#010x}",
        path.display()
    )]
    Corrupt {
        /// The spill file.
        path: PathBuf,
        /// Where the object starts in it.
        offset: u64,
        /// The object's length.
        len: u64,
        /// crc32c taken when the object was spilled.
        expected: u32,
        /// crc32c of what was read back.
        actual: u32,
    },
    /// An I/O operation on the spill directory failed; `op` says which, `path` on what.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done, as a verb phrase ("create spill directory").
        op: &'static str,
        /// The file or folder it was done to.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The location names no live object of this store (freed already, or never spilled here).
    #[error("spill location {loc:?} names no live object")]
    NotLive {
        /// The location given.
        loc: SpillLoc,
    },
    /// Another spill store, in this process or another, owns the directory.
    #[error("spill directory {} is in use by another spill store", path.display())]
    DirInUse {
        /// The folder.
        path: PathBuf,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SpillError + 'a {
    move |source| SpillError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Picks the engine; logs the fallback to pwrite where io_uring is refused.
fn make_engine(choice: EngineChoice, dir: &Path) -> Result<Box<dyn IoEngine>, SpillError> {
    if choice == EngineChoice::Pwrite {
        return Ok(Box::new(PwriteEngine::new(QUEUE_DEPTH)));
    }
    let uring = match io::uring_support() {
        Ok(()) => UringEngine::new(QUEUE_DEPTH).map_err(|e| e.to_string()),
        Err(reason) => Err(reason.clone()),
    };
    match (uring, choice) {
        (Ok(engine), _) => Ok(Box::new(engine)),
        (Err(reason), EngineChoice::IoUring) => Err(SpillError::Io {
            op: "set up io_uring for",
            path: dir.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::Unsupported, reason),
        }),
        (Err(reason), _) => {
            tracing::warn!(%reason, "io_uring unavailable; spilling with pwrite/pread");
            Ok(Box::new(PwriteEngine::new(QUEUE_DEPTH)))
        }
    }
}

fn choose_direct(choice: DirectIo, dir: &Path) -> Result<bool, SpillError> {
    match choice {
        DirectIo::Off => Ok(false),
        DirectIo::Auto => file::probe_direct(dir).map_err(io_err("probe O_DIRECT in", dir)),
    }
}

/// Spill files of one directory. `Send + Sync`; every method takes `&self` and may be called from
/// any number of threads at once.
pub struct SpillStore {
    dir: PathBuf,
    limit: u64,
    /// Live bytes plus in-flight reservations. An atomic rather than a field under `files`, so that
    /// quota checks and `used()` never wait behind a table update.
    used: AtomicU64,
    /// Live objects of each file, by file id. Held only to look up or update the table, never
    /// across I/O.
    files: Mutex<HashMap<u32, FileObjects>>,
    next_file: AtomicU32,
    engine: Box<dyn IoEngine>,
    direct: bool,
    bufs: BufPool,
    /// Holds the directory's flock for the store's life; released when the store drops.
    _lock: File,
}

/// Quota taken by a batch being written; given back unless the batch commits.
struct Reservation<'a> {
    used: &'a AtomicU64,
    bytes: u64,
}

impl Reservation<'_> {
    fn commit(mut self) {
        self.bytes = 0;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

impl SpillStore {
    /// Opens `cfg.dir` with the default options: io_uring when the kernel allows it, O_DIRECT when
    /// the filesystem allows it.
    pub fn open(cfg: SpillConfig) -> Result<Self, SpillError> {
        Self::open_with(cfg, SpillOptions::default())
    }

    /// Creates the directory if needed, takes ownership of it (fails with `DirInUse` if another
    /// store has it), deletes spill files left by a previous run, and chooses the engine and
    /// O_DIRECT as `opts` asks.
    pub fn open_with(cfg: SpillConfig, opts: SpillOptions) -> Result<Self, SpillError> {
        let dir = cfg.dir;
        fs::create_dir_all(&dir).map_err(io_err("create spill directory", &dir))?;
        let engine = make_engine(opts.engine, &dir)?;
        Self::open_with_engine(dir, cfg.limit, opts.direct_io, engine)
    }

    fn open_with_engine(
        dir: PathBuf,
        limit: u64,
        direct_io: DirectIo,
        engine: Box<dyn IoEngine>,
    ) -> Result<Self, SpillError> {
        let lock = file::lock_dir(&dir)
            .map_err(io_err("lock spill directory", &dir))?
            .ok_or_else(|| SpillError::DirInUse { path: dir.clone() })?;
        let stale = file::sweep_stale(&dir).map_err(io_err("sweep spill directory", &dir))?;
        let direct = choose_direct(direct_io, &dir)?;
        tracing::info!(dir = %dir.display(), engine = engine.name(), direct_io = direct, limit,
            stale_files_removed = stale, "spill store open");
        Ok(Self {
            dir,
            limit,
            used: AtomicU64::new(0),
            files: Mutex::new(HashMap::new()),
            next_file: AtomicU32::new(NO_FILE + 1),
            engine,
            direct,
            bufs: BufPool::new(CHUNK, MAX_IDLE_BUFS),
            _lock: lock,
        })
    }

    /// `"io_uring"` or `"pwrite"`.
    pub fn engine_name(&self) -> &'static str {
        self.engine.name()
    }

    /// Whether spill files bypass the page cache.
    pub fn direct_io(&self) -> bool {
        self.direct
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes of live spilled objects (plus batches being written).
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Spill files on disk.
    pub fn file_count(&self) -> usize {
        self.files.lock().len()
    }

    /// The path of spill file `id`.
    pub fn file_path(&self, id: u32) -> PathBuf {
        self.dir
            .join(format!("{}{id:08x}{}", file::PREFIX, file::SUFFIX))
    }

    fn reserve(&self, bytes: u64, credit: u64) -> Result<Reservation<'_>, SpillError> {
        let mut used = self.used.load(Ordering::Acquire);
        let cap = self.limit.saturating_add(credit);
        loop {
            let Some(new) = used.checked_add(bytes).filter(|&n| n <= cap) else {
                return Err(SpillError::LimitReached {
                    requested: bytes,
                    used,
                    limit: self.limit,
                });
            };
            match self
                .used
                .compare_exchange_weak(used, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    return Ok(Reservation {
                        used: &self.used,
                        bytes,
                    })
                }
                Err(now) => used = now,
            }
        }
    }

    fn new_file_id(&self) -> u32 {
        loop {
            let id = self.next_file.fetch_add(1, Ordering::Relaxed);
            // Ids wrap after 2^32 batches; skip the reserved one and any still in use.
            if id != NO_FILE && !self.files.lock().contains_key(&id) {
                return id;
            }
        }
    }

    /// Writes `objects` into one new spill file and returns their locations, in order.
    ///
    /// Takes the quota first: if it would be exceeded, fails with `LimitReached` having written
    /// nothing. On any I/O error (a full disk included) the partial file is removed and the quota
    /// given back, so a failed batch leaves no trace.
    pub fn write_batch(&self, objects: &[&[u8]]) -> Result<Vec<SpillLoc>, SpillError> {
        self.write_batch_with_credit(objects, 0)
    }

    /// As [`write_batch`](Self::write_batch), but the batch may take the
    /// quota up to `limit + credit`. This is for swaps: a restore that must
    /// spill something to make room frees its own object's spill space right
    /// after, so with memory and disk both full it can still proceed, and
    /// disk use exceeds the limit by at most that object for that moment.
    pub fn write_batch_with_credit(
        &self,
        objects: &[&[u8]],
        credit: u64,
    ) -> Result<Vec<SpillLoc>, SpillError> {
        let total = objects.iter().map(|o| o.len() as u64).sum();
        let reservation = self.reserve(total, credit)?;
        let layout = layout::pack(objects.iter().map(|o| o.len() as u64));
        let empty_crc = crc32c::crc32c(&[]);
        if layout.file_len == 0 {
            return Ok(objects
                .iter()
                .map(|_| SpillLoc {
                    file: NO_FILE,
                    offset: 0,
                    len: 0,
                    crc: empty_crc,
                })
                .collect());
        }

        let id = self.new_file_id();
        let path = self.file_path(id);
        let crcs = match self.write_file(&path, objects, &layout) {
            Ok(crcs) => crcs,
            Err(e) => {
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(rm) if rm.kind() == std::io::ErrorKind::NotFound => {}
                    Err(rm) => tracing::warn!(path = %path.display(), error = %rm,
                        "cannot remove the spill file of a failed batch"),
                }
                return Err(e);
            }
        };

        let locs: Vec<SpillLoc> = objects
            .iter()
            .zip(&layout.offsets)
            .zip(crcs)
            .map(|((obj, &offset), crc)| SpillLoc {
                file: id,
                offset,
                len: obj.len() as u64,
                crc,
            })
            .collect();
        let live = locs
            .iter()
            .filter(|l| l.len > 0)
            .map(|l| (l.offset, l.len))
            .collect();
        self.files
            .lock()
            .insert(id, FileObjects::new(live, layout.file_len));
        reservation.commit();
        Ok(locs)
    }

    fn write_file(
        &self,
        path: &Path,
        objects: &[&[u8]],
        layout: &layout::Layout,
    ) -> Result<Vec<u32>, SpillError> {
        let file = file::create(path, self.direct).map_err(io_err("create spill file", path))?;
        file::preallocate(&file, layout.file_len).map_err(io_err("allocate spill file", path))?;
        let mut packer = Packer::new(objects, &layout.offsets);
        let mut spare = Vec::new();
        let mut queue = self.engine.queue(&file, QUEUE_DEPTH);
        let res = pipelined_write(
            &mut *queue,
            &self.bufs,
            &mut spare,
            layout.file_len,
            |start, buf| packer.fill(start, buf),
        );
        // Only once the queue is gone (and the kernel done with every buffer) are buffers reused.
        drop(queue);
        self.bufs.put(spare);
        res.map_err(io_err("write spill file", path))?;
        Ok(packer.into_crcs())
    }

    /// Copies the object at `loc` into `dst` (which must be exactly `loc.len` bytes) and checks its
    /// crc32c. The object stays spilled: call [`free`](Self::free) when the copy on disk is no
    /// longer wanted.
    pub fn read(&self, loc: &SpillLoc, dst: &mut [u8]) -> Result<(), SpillError> {
        let path = self.file_path(loc.file);
        if dst.len() as u64 != loc.len {
            return Err(SpillError::Io {
                op: "restore into a wrongly sized buffer from",
                path,
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("buffer is {} bytes, object is {}", dst.len(), loc.len),
                ),
            });
        }
        let actual = if loc.len == 0 {
            crc32c::crc32c(&[])
        } else {
            let live = self
                .files
                .lock()
                .get(&loc.file)
                .and_then(|f| f.find_live(loc.offset, loc.len))
                .is_some();
            if !live {
                return Err(SpillError::NotLive { loc: *loc });
            }
            let file =
                file::open_read(&path, self.direct).map_err(io_err("open spill file", &path))?;
            let mut spare = Vec::new();
            let mut queue = self.engine.queue(&file, QUEUE_DEPTH);
            let res = pipelined_read(&mut *queue, &self.bufs, &mut spare, loc.offset, dst);
            drop(queue);
            self.bufs.put(spare);
            res.map_err(io_err("read spill file", &path))?
        };
        if actual != loc.crc {
            return Err(SpillError::Corrupt {
                path,
                offset: loc.offset,
                len: loc.len,
                expected: loc.crc,
                actual,
            });
        }
        Ok(())
    }

    /// Reads several objects back, each into its destination (exactly
    /// `loc.len` bytes), verifying each crc32c. Objects of one file are read
    /// as one stream in file order, which is what makes restoring a batch of
    /// objects (a get of many spilled objects) run at the disk's streaming
    /// speed. One result per request, in order.
    pub fn read_many(&self, reqs: &mut [(SpillLoc, &mut [u8])]) -> Vec<Result<(), SpillError>> {
        let mut out: Vec<Option<Result<(), SpillError>>> = (0..reqs.len()).map(|_| None).collect();
        let mut by_file: std::collections::BTreeMap<u32, Vec<usize>> = Default::default();
        for (i, (loc, dst)) in reqs.iter().enumerate() {
            if dst.len() as u64 != loc.len {
                out[i] = Some(Err(SpillError::Io {
                    op: "restore into a wrongly sized buffer from",
                    path: self.file_path(loc.file),
                    source: std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("buffer is {} bytes, object is {}", dst.len(), loc.len),
                    ),
                }));
            } else if loc.len == 0 {
                out[i] = Some(if loc.crc == crc32c::crc32c(&[]) {
                    Ok(())
                } else {
                    Err(SpillError::NotLive { loc: *loc })
                });
            } else {
                let live = self
                    .files
                    .lock()
                    .get(&loc.file)
                    .and_then(|f| f.find_live(loc.offset, loc.len))
                    .is_some();
                if live {
                    by_file.entry(loc.file).or_default().push(i);
                } else {
                    out[i] = Some(Err(SpillError::NotLive { loc: *loc }));
                }
            }
        }
        for (file_id, mut idx) in by_file {
            idx.sort_by_key(|&i| reqs[i].0.offset);
            let path = self.file_path(file_id);
            let segs: Vec<Segment> = idx
                .iter()
                .map(|&i| Segment {
                    offset: reqs[i].0.offset,
                    base: reqs[i].1.as_mut_ptr(),
                    len: reqs[i].1.len(),
                })
                .collect();
            let res = file::open_read(&path, self.direct)
                .map_err(|e| ("open spill file", e))
                .and_then(|file| {
                    let mut spare = Vec::new();
                    let mut queue = self.engine.queue(&file, QUEUE_DEPTH);
                    let r = pipelined_read_many(&mut *queue, &self.bufs, &mut spare, &segs);
                    drop(queue);
                    self.bufs.put(spare);
                    r.map_err(|e| ("read spill file", e))
                });
            match res {
                Ok(crcs) => {
                    for (&i, actual) in idx.iter().zip(crcs) {
                        let loc = reqs[i].0;
                        out[i] = Some(if actual == loc.crc {
                            Ok(())
                        } else {
                            Err(SpillError::Corrupt {
                                path: path.clone(),
                                offset: loc.offset,
                                len: loc.len,
                                expected: loc.crc,
                                actual,
                            })
                        });
                    }
                }
                Err((op, e)) => {
                    for &i in &idx {
                        out[i] = Some(Err(SpillError::Io {
                            op,
                            path: path.clone(),
                            source: std::io::Error::new(e.kind(), e.to_string()),
                        }));
                    }
                }
            }
        }
        out.into_iter().map(|r| r.unwrap_or(Ok(()))).collect()
    }

    /// Releases the disk space of the object at `loc`: its bytes leave `used`, blocks no live
    /// object touches any more are punched out, and the file is unlinked once it holds no live
    /// object. Freeing a location twice (or one this store never returned) is logged and ignored.
    pub fn free(&self, loc: &SpillLoc) {
        if loc.len == 0 {
            return;
        }
        enum Then {
            Nothing,
            Punch(Range<u64>),
            Unlink,
        }
        let then = {
            let mut files = self.files.lock();
            let Some(table) = files.get_mut(&loc.file) else {
                tracing::warn!(?loc, "free of a spill location with no live file; ignored");
                return;
            };
            let Some(idx) = table.find_live(loc.offset, loc.len) else {
                tracing::warn!(
                    ?loc,
                    "free of a spill location with no live object; ignored"
                );
                return;
            };
            let punch = table.kill(idx);
            self.used.fetch_sub(loc.len, Ordering::AcqRel);
            if table.live_count() == 0 {
                files.remove(&loc.file);
                Then::Unlink
            } else if punch.is_empty() {
                Then::Nothing
            } else {
                Then::Punch(punch)
            }
        };
        let path = self.file_path(loc.file);
        match then {
            Then::Nothing => {}
            Then::Unlink => {
                if let Err(e) = fs::remove_file(&path) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot unlink spill file");
                }
            }
            Then::Punch(range) => match file::punch_hole(&path, range.clone()) {
                Ok(true) => {}
                Ok(false) => {
                    tracing::debug!(path = %path.display(), "filesystem cannot punch holes")
                }
                // Freed space comes back at unlink at the latest; nothing is lost but time.
                Err(e) => tracing::warn!(path = %path.display(), ?range, error = %e,
                    "cannot punch freed spill space"),
            },
        }
    }
}

impl Drop for SpillStore {
    /// Spill files are scratch: a store going away takes its files along.
    fn drop(&mut self) {
        let ids: Vec<u32> = self.files.get_mut().keys().copied().collect();
        for id in ids {
            let path = self.file_path(id);
            if let Err(e) = fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove spill file");
            }
        }
    }
}

/// Writes `[0, len)` of a new file chunk by chunk. `fill` produces each chunk in staging while the
/// previous ones are in flight; each chunk is submitted as soon as it is ready. Buffers in use at
/// the end are left in `spare`, for the caller to recycle once the queue is dropped.
fn pipelined_write(
    queue: &mut dyn IoQueue,
    pool: &BufPool,
    spare: &mut Vec<AlignedBuf>,
    len: u64,
    mut fill: impl FnMut(u64, &mut [u8]),
) -> std::io::Result<()> {
    let chunks = len.div_ceil(CHUNK as u64);
    let mut next = 0u64;
    while next < chunks || queue.pending() > 0 {
        while next < chunks && queue.pending() < QUEUE_DEPTH {
            let mut buf = match spare.pop() {
                Some(buf) => buf,
                None => pool.get()?,
            };
            let start = next * CHUNK as u64;
            let n = (len - start).min(CHUNK as u64) as usize;
            fill(start, &mut buf.as_mut_slice()[..n]);
            queue.push(Op {
                kind: OpKind::Write,
                offset: start,
                len: n,
                buf,
                tag: next as usize,
            })?;
            queue.flush()?;
            next += 1;
        }
        spare.push(queue.wait()?.buf);
    }
    Ok(())
}

/// One object of a multi-object read: its place in the file and its
/// destination (valid for writes of `len` bytes, touched by nobody else
/// during the read).
struct Segment {
    offset: u64,
    base: *mut u8,
    len: usize,
}

/// Reads `dst.len()` bytes at `offset` into `dst`; returns the crc32c of `dst`.
fn pipelined_read(
    queue: &mut dyn IoQueue,
    pool: &BufPool,
    spare: &mut Vec<AlignedBuf>,
    offset: u64,
    dst: &mut [u8],
) -> std::io::Result<u32> {
    let seg = Segment {
        offset,
        base: dst.as_mut_ptr(),
        len: dst.len(),
    };
    let crcs = pipelined_read_many(queue, pool, spare, &[seg])?;
    Ok(crcs.first().copied().unwrap_or_else(|| crc32c::crc32c(&[])))
}

/// Reads several objects of one file as one stream of block-aligned chunks,
/// keeping `QUEUE_DEPTH` chunks in flight across object boundaries (a
/// device streams one long run much faster than many short ones), and
/// returns each object's crc32c. Chunks land in private staging buffers and
/// are copied out as they arrive, while later chunks are in flight. Reading
/// straight into the arena was tried and measured slower: an O_DIRECT read
/// into shared (shmem) pages pays for dirtying every page on completion,
/// which costs more than the copy.
fn pipelined_read_many(
    queue: &mut dyn IoQueue,
    pool: &BufPool,
    spare: &mut Vec<AlignedBuf>,
    segs: &[Segment],
) -> std::io::Result<Vec<u32>> {
    // (segment, file range) per chunk, in file order within each segment.
    let mut chunks: Vec<(usize, Range<u64>)> = Vec::new();
    for (si, seg) in segs.iter().enumerate() {
        let obj_end = seg.offset + seg.len as u64;
        let start = round_down(seg.offset, BLOCK);
        let end = round_up(obj_end, BLOCK);
        let mut c = start;
        while c < end {
            let e = (c + CHUNK as u64).min(end);
            chunks.push((si, c..e));
            c = e;
        }
    }
    // The crc of the object bytes in each chunk; chunks may complete out of order.
    let mut crcs = vec![0u32; chunks.len()];
    let mut next = 0usize;
    let mut refill = |queue: &mut dyn IoQueue, spare: &mut Vec<AlignedBuf>| {
        while next < chunks.len() && queue.pending() < QUEUE_DEPTH {
            let r = &chunks[next].1;
            let buf = match spare.pop() {
                Some(buf) => buf,
                None => pool.get()?,
            };
            queue.push(Op {
                kind: OpKind::Read,
                offset: r.start,
                len: (r.end - r.start) as usize,
                buf,
                tag: next,
            })?;
            next += 1;
        }
        queue.flush()
    };
    refill(queue, spare)?;
    // Time blocked on the device vs spent copying and checksumming: the
    // split that tells a slow disk from a slow copy (logged at debug).
    let (mut waited, mut copied) = (Duration::ZERO, Duration::ZERO);
    while queue.pending() > 0 {
        let t = Instant::now();
        let op = queue.wait()?;
        let t2 = Instant::now();
        waited += t2 - t;
        // Keep the device busy while this chunk is copied out.
        refill(queue, spare)?;
        let (si, r) = &chunks[op.tag];
        let seg = &segs[*si];
        let obj_end = seg.offset + seg.len as u64;
        let (a, b) = (r.start.max(seg.offset), r.end.min(obj_end));
        // SAFETY: [a, b) is inside the segment's destination and belongs to this completed
        // chunk alone.
        let piece = unsafe {
            std::slice::from_raw_parts_mut(
                seg.base.add((a - seg.offset) as usize),
                (b - a) as usize,
            )
        };
        piece.copy_from_slice(&op.buf.as_slice()[(a - r.start) as usize..(b - r.start) as usize]);
        spare.push(op.buf);
        crcs[op.tag] = crc32c::crc32c(piece);
        copied += t2.elapsed();
    }
    tracing::debug!(
        objects = segs.len(),
        bytes = segs.iter().map(|s| s.len).sum::<usize>(),
        waited_us = waited.as_micros() as u64,
        copied_us = copied.as_micros() as u64,
        "restore read"
    );
    let mut out = vec![crc32c::crc32c(&[]); segs.len()];
    for ((si, r), part) in chunks.iter().zip(crcs) {
        let seg = &segs[*si];
        let piece_len = r.end.min(seg.offset + seg.len as u64) - r.start.max(seg.offset);
        out[*si] = crc32c::crc32c_combine(out[*si], part, piece_len as usize);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Raw baseline

/// A file written by [`raw_write`], for [`raw_read`] to read back; removed when dropped.
///
/// The baseline is what the disk does through the *same* engine, O_DIRECT choice, chunk size,
/// queue depth, preallocation and (absent) durability as the spill store, minus the store's own
/// work: the data is staged into aligned buffers before the clock starts, and read back into
/// them without a copy out or a checksum. `spill time / raw time` is therefore the store's
/// overhead (staging copy, crc32c, bookkeeping) and nothing else.
pub struct RawFile {
    path: PathBuf,
    len: u64,
    engine: Box<dyn IoEngine>,
    direct: bool,
    /// One staged chunk each; reused by `raw_read`, so neither half times allocation or page faults.
    bufs: Vec<Option<AlignedBuf>>,
    crc: u32,
    write_time: Duration,
}

impl RawFile {
    /// How long writing the file took: create, preallocate, transfer all chunks.
    pub fn write_time(&self) -> Duration {
        self.write_time
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn engine_name(&self) -> &'static str {
        self.engine.name()
    }

    pub fn direct_io(&self) -> bool {
        self.direct
    }
}

impl Drop for RawFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Writes `data` to a fresh file in `dir` with the default engine and O_DIRECT choice (as
/// [`SpillStore::open`] would pick) and times it; see [`RawFile`] for what is measured.
pub fn raw_write(dir: &Path, data: &[u8]) -> Result<RawFile, SpillError> {
    raw_write_with(dir, data, SpillOptions::default())
}

/// [`raw_write`] with the engine and O_DIRECT choice pinned, as for [`SpillStore::open_with`].
pub fn raw_write_with(dir: &Path, data: &[u8], opts: SpillOptions) -> Result<RawFile, SpillError> {
    let engine = make_engine(opts.engine, dir)?;
    let direct = choose_direct(opts.direct_io, dir)?;
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let path = dir.join(format!(
        "{}raw-{}-{}{}",
        file::PREFIX,
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed),
        file::SUFFIX
    ));
    // Buffers of the same kind as the store's (huge-page backed where granted), so that the
    // baseline and the store describe their transfers to the device alike.
    let pool = BufPool::new(CHUNK, 0);
    let mut bufs = Vec::new();
    for chunk in data.chunks(CHUNK) {
        let mut buf = pool.get().map_err(io_err("stage raw write for", &path))?;
        buf.as_mut_slice()[..chunk.len()].copy_from_slice(chunk);
        bufs.push(Some(buf));
    }
    let mut raw = RawFile {
        path,
        len: data.len() as u64,
        engine,
        direct,
        bufs,
        crc: crc32c::crc32c(data),
        write_time: Duration::ZERO,
    };
    let file_len = round_up(raw.len, BLOCK);
    let started = Instant::now();
    let file = file::create(&raw.path, direct).map_err(io_err("create raw file", &raw.path))?;
    file::preallocate(&file, file_len).map_err(io_err("allocate raw file", &raw.path))?;
    run_chunks(&*raw.engine, &file, OpKind::Write, file_len, &mut raw.bufs)
        .map_err(io_err("write raw file", &raw.path))?;
    drop(file);
    raw.write_time = started.elapsed();
    Ok(raw)
}

/// Reads the file [`raw_write`] made back into its staging buffers and times it (open, transfer
/// all chunks), then checks the data against what was written (untimed).
pub fn raw_read(raw: &mut RawFile) -> Result<Duration, SpillError> {
    let elapsed = timed_raw_read(&*raw.engine, &raw.path, raw.direct, raw.len, &mut raw.bufs)?;
    let mut crc = crc32c::crc32c(&[]);
    let mut left = raw.len as usize;
    for buf in raw.bufs.iter().flatten() {
        let n = left.min(CHUNK);
        crc = crc32c::crc32c_append(crc, &buf.as_slice()[..n]);
        left -= n;
    }
    if crc != raw.crc {
        return Err(SpillError::Corrupt {
            path: raw.path.clone(),
            offset: 0,
            len: raw.len,
            expected: raw.crc,
            actual: crc,
        });
    }
    Ok(elapsed)
}

/// Opens `path` and reads its first `len` bytes (rounded up to a block) into `bufs`, one chunk
/// each, timing it.
fn timed_raw_read(
    engine: &dyn IoEngine,
    path: &Path,
    direct: bool,
    len: u64,
    bufs: &mut [Option<AlignedBuf>],
) -> Result<Duration, SpillError> {
    let started = Instant::now();
    let file = file::open_read(path, direct).map_err(io_err("open raw file", path))?;
    run_chunks(engine, &file, OpKind::Read, round_up(len, BLOCK), bufs)
        .map_err(io_err("read raw file", path))?;
    drop(file);
    Ok(started.elapsed())
}

/// Transfers chunk `i` of `[0, len)` from/to `bufs[i]`, `QUEUE_DEPTH` at a time.
fn run_chunks(
    engine: &dyn IoEngine,
    file: &File,
    kind: OpKind,
    len: u64,
    bufs: &mut [Option<AlignedBuf>],
) -> std::io::Result<()> {
    let mut queue = engine.queue(file, QUEUE_DEPTH);
    let chunks = len.div_ceil(CHUNK as u64) as usize;
    let mut next = 0;
    while next < chunks || queue.pending() > 0 {
        while next < chunks && queue.pending() < QUEUE_DEPTH {
            let buf = bufs[next]
                .take()
                .ok_or_else(|| std::io::Error::other("raw buffer lost by an earlier failure"))?;
            let offset = (next * CHUNK) as u64;
            queue.push(Op {
                kind,
                offset,
                len: (len - offset).min(CHUNK as u64) as usize,
                buf,
                tag: next,
            })?;
            next += 1;
        }
        queue.flush()?;
        let op = queue.wait()?;
        bufs[op.tag] = Some(op.buf);
    }
    Ok(())
}
