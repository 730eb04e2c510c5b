//! Page-aligned staging buffers and the pool that recycles them.
//!
//! O_DIRECT transfers need the memory address, the file offset and the length all aligned to the
//! device's logical block size; object bytes in the arena are not, so they are staged here. The
//! buffers are recycled because a fresh multi-MiB allocation is an mmap plus page faults on first
//! touch, which would cost more than the copy it enables.

use std::alloc::{self, Layout};
use std::io;
use std::ptr::NonNull;

use parking_lot::Mutex;

/// Alignment of every staging buffer, file offset and transfer length. 4096 covers both 512-byte
/// and 4 KiB logical block devices, and is the page size, which O_DIRECT on most filesystems needs.
pub(super) const ALIGN: usize = 4096;

/// An owned, zero-initialised, `ALIGN`-aligned heap buffer whose length is a multiple of `ALIGN`.
///
/// Ownership (not a borrow) is what lets a buffer be handed to the kernel for an asynchronous
/// transfer and handed back on completion, with no aliasing in between.
pub(super) struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
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
        Ok(Self { ptr, len })
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

    pub(super) fn get(&self) -> io::Result<AlignedBuf> {
        if let Some(buf) = self.idle.lock().pop() {
            return Ok(buf);
        }
        AlignedBuf::new(self.buf_len)
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
    fn pool_recycles_up_to_its_bound() {
        let pool = BufPool::new(ALIGN, 1);
        let a = pool.get().expect("alloc");
        let b = pool.get().expect("alloc");
        pool.put([a, b]);
        assert_eq!(pool.idle.lock().len(), 1);
    }
}
