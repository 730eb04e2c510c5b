//! The shared-memory arena: one memfd per data worker, mapped once by the
//! worker and once by every client.
//!
//! The memfd is the unit of sharing: the worker passes its descriptor to each
//! client over the Unix socket (SCM_RIGHTS), and both sides map the same
//! pages, so an object written by one process is read in place by another.
//!
//! Raw pointers into the mapping live here and in the client's view guards
//! only. Who may touch which bytes is decided by the store (an object's bytes
//! are written only while it is unsealed, by its creator, and read only while
//! pinned or sealed), not by the type system; the `unsafe` accessors below
//! document that contract.

use memmap2::{MmapOptions, MmapRaw};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};

/// A mapped memfd.
pub struct Arena {
    file: File,
    map: MmapRaw,
    size: u64,
    prefaulted: bool,
}

impl Arena {
    /// Creates a fresh memfd of `size` bytes and maps it. With `prefault`
    /// the pages are allocated up front (fallocate) and the page tables filled
    /// (MAP_POPULATE), so the first write to an object does not fault.
    pub fn create(size: u64, prefault: bool) -> io::Result<Arena> {
        if size == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "arena size must be greater than zero",
            ));
        }
        let name = c"yr-arena";
        // SAFETY: `name` is a valid NUL-terminated string; the returned fd is
        // checked before use and owned by the File below.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own exclusively.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(size)?;
        if prefault {
            // SAFETY: plain syscall on a descriptor we own.
            let rc = unsafe { libc::fallocate(fd, 0, 0, size as libc::off_t) };
            if rc != 0 {
                let e = io::Error::last_os_error();
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot reserve {size} bytes of shared memory: {e}"),
                ));
            }
        }
        let map = map_file(&file, size, prefault)?;
        Ok(Arena {
            file,
            map,
            size,
            prefaulted: prefault,
        })
    }

    /// Maps an arena received from a worker, read-write.
    pub fn from_fd(file: File, size: u64, prefault: bool) -> io::Result<Arena> {
        let actual = file.metadata()?.len();
        if actual < size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("arena fd is {actual} bytes, worker announced {size}"),
            ));
        }
        let map = map_file(&file, size, prefault)?;
        Ok(Arena {
            file,
            map,
            size,
            prefaulted: prefault,
        })
    }

    /// The memfd, to pass to clients.
    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Arena length in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether the pages were allocated up front.
    pub fn prefaulted(&self) -> bool {
        self.prefaulted
    }

    /// Base address of the mapping.
    pub fn base(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    /// Makes this mapping's page-table entries for a range present and
    /// writable before a large write into it (a restore's copy-back): one
    /// call instead of a fault per 4 KiB page. Best effort.
    pub fn populate_write(&self, offset: u64, len: u64) {
        if len == 0 || !self.contains(offset, len) {
            return;
        }
        let _ = self.map.advise_range(
            memmap2::Advice::PopulateWrite,
            offset as usize,
            len as usize,
        );
    }

    /// Whether `[offset, offset+len)` lies inside the arena.
    pub fn contains(&self, offset: u64, len: u64) -> bool {
        offset.checked_add(len).is_some_and(|end| end <= self.size)
    }

    /// Read access to a range.
    ///
    /// # Safety
    /// The range must be inside the arena and nobody may write it while the
    /// returned slice lives (the store guarantees this for sealed objects
    /// that are pinned or marked as being spilled).
    pub unsafe fn slice(&self, offset: u64, len: u64) -> &[u8] {
        debug_assert!(self.contains(offset, len));
        // SAFETY: in bounds per the caller's contract; the mapping lives as
        // long as `self`.
        unsafe { std::slice::from_raw_parts(self.base().add(offset as usize), len as usize) }
    }

    /// Write access to a range.
    ///
    /// # Safety
    /// The range must be inside the arena and exclusively owned by the
    /// caller for the slice's lifetime (an unsealed object's creator, or the
    /// store while restoring into a freshly allocated block).
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice_mut(&self, offset: u64, len: u64) -> &mut [u8] {
        debug_assert!(self.contains(offset, len));
        // SAFETY: in bounds and exclusive per the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.base().add(offset as usize), len as usize) }
    }
}

fn map_file(file: &File, size: u64, populate: bool) -> io::Result<MmapRaw> {
    let mut opts = MmapOptions::new();
    opts.len(size as usize);
    let map = opts.map_raw(file)?;
    if populate {
        // MAP_POPULATE on a shared mapping installs *read-only* entries, so
        // the first write to every page would still fault (a restore copying
        // 512 MiB back paid ~130,000 write-protect faults, a third of its
        // time). Populating for write makes the entries writable once, up
        // front.
        if let Err(e) = map.advise(memmap2::Advice::PopulateWrite) {
            // Kernels before 5.14 lack it: pages then fault on first use.
            tracing::warn!(
                "cannot pre-fault the arena for writing ({e}); pages fault on first use"
            );
        }
    }
    advise(&map);
    Ok(map)
}

/// A read-only mapping of the same memfd: what clients hand out views of,
/// so a stray write through a view faults instead of corrupting a sealed
/// object that other processes are reading.
pub struct ReadOnlyMap {
    map: MmapRaw,
    size: u64,
}

impl ReadOnlyMap {
    /// Maps `size` bytes of `arena`'s memfd read-only.
    pub fn new(arena: &Arena) -> io::Result<ReadOnlyMap> {
        let mut opts = MmapOptions::new();
        opts.len(arena.size as usize);
        if arena.prefaulted {
            opts.populate();
        }
        let map = opts.map_raw_read_only(&arena.file)?;
        advise(&map);
        Ok(ReadOnlyMap {
            map,
            size: arena.size,
        })
    }

    /// Base address.
    pub fn base(&self) -> *const u8 {
        self.map.as_ptr()
    }

    /// Length in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }
}

fn advise(map: &MmapRaw) {
    // Where shmem transparent huge pages are enabled in `advise` mode this
    // cuts page faults 512-fold for large objects; elsewhere it is a no-op.
    let _ = map.advise(memmap2::Advice::HugePage);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_mappings_share_bytes() {
        let a = Arena::create(1 << 20, false).expect("arena");
        let dup = a.file.try_clone().expect("dup");
        let b = Arena::from_fd(dup, 1 << 20, true).expect("map");
        // SAFETY: test owns both mappings; no concurrent access.
        unsafe {
            a.slice_mut(4096, 5).copy_from_slice(b"hello");
            assert_eq!(b.slice(4096, 5), b"hello");
        }
        assert!(a.contains(0, 1 << 20));
        assert!(!a.contains(1, 1 << 20));
        assert!(!a.contains(u64::MAX, 2));
    }

    #[test]
    fn zero_size_is_refused() {
        assert!(Arena::create(0, false).is_err());
    }
}
