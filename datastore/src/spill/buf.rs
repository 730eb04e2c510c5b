//! Page-aligned staging buffers and the pool that recycles them.
//!
//! O_DIRECT transfers need the memory address, the file offset and the length all aligned to the
//! device's logical block size; object bytes in the arena are not, so they are staged here. The
//! buffers are recycled because a fresh multi-MiB allocation is an mmap plus page faults on first
//! touch, which would cost more than the copy it enables.
//!
//! Pool buffers are carved out of transparent huge pages where the kernel grants them. The reason
//! is the device, not the TLB: a transfer is described to a virtio disk as one descriptor per
//! physically contiguous run of memory, and a disk without indirect descriptors (Firecracker's, for
//! one) shares a single ring of ~256 descriptors among all requests in flight. A 1 MiB chunk in
//! scattered 4 KiB pages takes the whole ring and the queue depth collapses to one; the same chunk
//! inside one huge page takes a single descriptor. Measured on such a VM: restores ran at either
//! ~1.0 or ~2.0 GB/s depending on how fragmented a process's recycled buffers happened to be.
//! When huge pages are refused the buffers are ordinary pages and everything still works.
//!
//! Invariant: every buffer is `ALIGN`-aligned, a whole number of `ALIGN` blocks long, zeroed when
//! first handed out, and owned by exactly one `AlignedBuf` at a time; a huge-page region is unmapped
//! only when the last buffer carved from it is dropped.

use std::alloc::{self, Layout};
use std::io;
use std::ptr::NonNull;
use std::sync::Arc;

use parking_lot::Mutex;

/// Alignment of every staging buffer, file offset and transfer length. 4096 covers both 512-byte
/// and 4 KiB logical block devices, and is the page size, which O_DIRECT on most filesystems needs.
pub(super) const ALIGN: usize = 4096;

/// The transparent huge page size of x86-64 and of arm64 with 4 KiB pages.
const HUGE: usize = 2 << 20;

/// Pool buffers smaller than this come from the heap: a small transfer has few descriptors anyway.
const HUGE_MIN_BUF: usize = 64 << 10;

/// An anonymous mapping of whole huge pages, `HUGE`-aligned so that the kernel can back it with
/// transparent huge pages; unmapped on drop.
struct Region {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the region is plain memory owned by whoever holds the `Arc`; the buffers carved from it
// are disjoint, and the region itself is only unmapped, never accessed, through this type.
unsafe impl Send for Region {}
// SAFETY: as above; `Region` exposes no access to the bytes.
unsafe impl Sync for Region {}

impl Region {
    /// Maps `len` bytes (a multiple of `HUGE`) at a `HUGE`-aligned address, asks for huge pages and
    /// touches every page so that no transfer takes a page fault.
    fn new(len: usize) -> io::Result<Self> {
        debug_assert!(len > 0 && len.is_multiple_of(HUGE));
        let span = len + HUGE;
        // SAFETY: an anonymous private mapping at an address of the kernel's choosing aliases
        // nothing; the result is checked before use.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                span,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                format!(
                    "cannot map {len} bytes of staging buffers: {}",
                    io::Error::last_os_error()
                ),
            ));
        }
        let start = raw as usize;
        let aligned = start.next_multiple_of(HUGE);
        let (head, tail) = (aligned - start, start + span - (aligned + len));
        // SAFETY: both ranges lie inside the mapping just made and outside [aligned, aligned+len),
        // which is all that is kept; unmapping a sub-range of one's own mapping is always allowed.
        unsafe {
            if head > 0 {
                libc::munmap(raw, head);
            }
            if tail > 0 {
                libc::munmap((aligned + len) as *mut libc::c_void, tail);
            }
        }
        let ptr = aligned as *mut u8;
        // SAFETY: [ptr, ptr+len) is mapped read-write and owned by this region. MADV_HUGEPAGE only
        // changes the backing policy; failure (THP disabled) leaves ordinary pages, which is fine.
        unsafe {
            libc::madvise(ptr.cast(), len, libc::MADV_HUGEPAGE);
        }
        for off in (0..len).step_by(ALIGN) {
            // SAFETY: in bounds of the mapping; writing the zero the page already holds faults it
            // in (a whole huge page at once where granted) without changing its contents.
            unsafe { ptr.add(off).write_volatile(0) };
        }
        let ptr = NonNull::new(ptr).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Self { ptr, len })
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: the range was mapped in `new` and every buffer carved from it has been dropped
        // (each holds an `Arc` to this region).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Where an `AlignedBuf`'s memory came from, which decides how it is given back.
enum Owner {
    Heap,
    Region(#[allow(dead_code)] Arc<Region>),
}

/// An owned, zero-initialised, `ALIGN`-aligned heap buffer whose length is a multiple of `ALIGN`.
///
/// Ownership (not a borrow) is what lets a buffer be handed to the kernel for an asynchronous
/// transfer and handed back on completion, with no aliasing in between.
pub(super) struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    owner: Owner,
}

// SAFETY: `AlignedBuf` exclusively owns its allocation, exactly like `Vec<u8>`; nothing in it is
// tied to a thread.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only hands out `&[u8]`, which is `Sync`.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// Allocates at least `len` bytes (rounded up to a whole number of `ALIGN` blocks, at least one).
    /// Fails with `OutOfMemory` rather than aborting: a spill that cannot get memory must not take
    /// down the worker.
    pub(super) fn new(len: usize) -> io::Result<Self> {
        let len = len.max(1).div_ceil(ALIGN).saturating_mul(ALIGN);
        let layout = Layout::from_size_align(len, ALIGN)
            .map_err(|e| io::Error::new(io::ErrorKind::OutOfMemory, e))?;
        // SAFETY: `layout` has a non-zero size (len >= ALIGN).
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::OutOfMemory,
                format!("cannot allocate a {len}-byte staging buffer"),
            )
        })?;
        Ok(Self {
            ptr,
            len,
            owner: Owner::Heap,
        })
    }

    /// Buffers of `buf_len` bytes carved from one huge-page region: several when `buf_len` divides
    /// a huge page, one when it is a multiple of it. `None` for sizes that fit neither, or are
    /// too small to be worth it.
    fn huge_batch(buf_len: usize) -> Option<io::Result<Vec<Self>>> {
        if buf_len < HUGE_MIN_BUF || !buf_len.is_multiple_of(ALIGN) {
            return None;
        }
        let region_len = if HUGE.is_multiple_of(buf_len) {
            HUGE
        } else if buf_len.is_multiple_of(HUGE) {
            buf_len
        } else {
            return None;
        };
        Some(Region::new(region_len).map(|region| {
            let region = Arc::new(region);
            (0..region_len / buf_len)
                .map(|i| Self {
                    // SAFETY: i * buf_len < region_len, so the pointer stays inside the region.
                    ptr: unsafe { region.ptr.add(i * buf_len) },
                    len: buf_len,
                    owner: Owner::Region(Arc::clone(&region)),
                })
                .collect()
        }))
    }

    /// Whether this buffer lives in a huge-page region (for tests and diagnostics).
    #[cfg(test)]
    fn in_region(&self) -> bool {
        matches!(self.owner, Owner::Region(_))
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` points to `len` initialised (zeroed at allocation) bytes owned by `self`,
        // and the shared borrow of `self` prevents mutation for the slice's lifetime.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub(super) fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and the exclusive borrow of `self` makes this the only access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// The start of the buffer, for handing to the kernel. Valid for `len()` bytes for as long as
    /// the buffer is neither dropped nor accessed through a slice.
    pub(super) fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if let Owner::Region(_) = self.owner {
            return; // the region is unmapped when its last buffer's `Arc` goes
        }
        // The layout was valid at allocation and neither field has changed since.
        if let Ok(layout) = Layout::from_size_align(self.len, ALIGN) {
            // SAFETY: `ptr` came from `alloc_zeroed` with this same layout and is freed only here.
            unsafe { alloc::dealloc(self.ptr.as_ptr(), layout) };
        }
    }
}

/// A bounded stack of same-sized staging buffers shared by all threads of one store.
///
/// A plain mutex is enough: it is held for a push or a pop, never across I/O.
pub(super) struct BufPool {
    buf_len: usize,
    max_idle: usize,
    idle: Mutex<Vec<AlignedBuf>>,
}

impl BufPool {
    pub(super) fn new(buf_len: usize, max_idle: usize) -> Self {
        Self {
            buf_len,
            max_idle,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// An idle buffer, or fresh ones: a new huge-page region's siblings of the returned buffer go
    /// to the idle list whatever its bound, since they are already paid for.
    pub(super) fn get(&self) -> io::Result<AlignedBuf> {
        if let Some(buf) = self.idle.lock().pop() {
            return Ok(buf);
        }
        match AlignedBuf::huge_batch(self.buf_len) {
            Some(Ok(mut bufs)) => {
                let first = bufs.pop().ok_or_else(|| io::Error::other("empty region"))?;
                self.idle.lock().extend(bufs);
                Ok(first)
            }
            // Refused huge regions (address space limits) fall back to the heap.
            Some(Err(_)) | None => AlignedBuf::new(self.buf_len),
        }
    }

    /// Returns buffers to the pool; beyond `max_idle` they are freed, so a burst of concurrent
    /// restores does not pin its peak staging memory forever.
    pub(super) fn put(&self, bufs: impl IntoIterator<Item = AlignedBuf>) {
        let mut idle = self.idle.lock();
        for buf in bufs {
            if idle.len() < self.max_idle && buf.len() == self.buf_len {
                idle.push(buf);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_rounded() {
        let mut b = AlignedBuf::new(5000).expect("alloc");
        assert_eq!(b.len(), 8192);
        assert_eq!(b.as_mut_ptr() as usize % ALIGN, 0);
        assert!(b.as_slice().iter().all(|&x| x == 0));
        b.as_mut_slice()[8191] = 7;
        assert_eq!(b.as_slice()[8191], 7);
        assert_eq!(AlignedBuf::new(0).expect("alloc").len(), ALIGN);
    }

    #[test]
    fn pool_carves_disjoint_aligned_buffers_from_huge_regions() {
        let pool = BufPool::new(1 << 20, 0);
        let mut bufs: Vec<AlignedBuf> = (0..5).map(|_| pool.get().expect("alloc")).collect();
        for (i, b) in bufs.iter_mut().enumerate() {
            assert!(b.in_region());
            assert_eq!(b.len(), 1 << 20);
            assert_eq!(b.as_mut_ptr() as usize % (1 << 20), 0);
            assert!(b.as_slice().iter().all(|&x| x == 0));
            b.as_mut_slice().fill(i as u8 + 1);
        }
        for (i, b) in bufs.iter().enumerate() {
            assert!(
                b.as_slice().iter().all(|&x| x == i as u8 + 1),
                "buffer {i} was overwritten"
            );
        }
        // Odd sizes and small ones come from the heap.
        assert!(!BufPool::new(3 * ALIGN, 0).get().expect("alloc").in_region());
        assert!(!BufPool::new(HUGE + ALIGN, 0)
            .get()
            .expect("alloc")
            .in_region());
        assert!(BufPool::new(2 * HUGE, 0).get().expect("alloc").in_region());
    }

    #[test]
    fn pool_recycles_up_to_its_bound() {
        let pool = BufPool::new(ALIGN, 1);
        let a = pool.get().expect("alloc");
        let b = pool.get().expect("alloc");
        pool.put([a, b]);
        assert_eq!(pool.idle.lock().len(), 1);
    }
}
