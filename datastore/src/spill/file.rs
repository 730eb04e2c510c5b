//! Spill-file system calls that are not transfers: create and open (with or without O_DIRECT),
//! preallocate, punch holes, lock the directory, probe O_DIRECT support, sweep stale files.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use super::buf::{AlignedBuf, ALIGN};

/// Every file this module creates is named `yr-spill-*.bin`, so that the next run can tell its
/// leftovers from anything else in the directory.
pub(super) const PREFIX: &str = "yr-spill-";
pub(super) const SUFFIX: &str = ".bin";
/// Held (flock) by the store that owns the directory. Not `*.bin`, so the sweep leaves it alone.
pub(super) const LOCK_NAME: &str = "yr-spill.lock";
const PROBE_NAME: &str = "yr-spill-probe.bin";

fn direct_flag(direct: bool) -> i32 {
    if direct {
        libc::O_DIRECT
    } else {
        0
    }
}

/// Creates a new spill file for writing and reading; it must not exist (the name is unique, so
/// an existing file means something is wrong and must not be overwritten).
pub(super) fn create(path: &Path, direct: bool) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(direct_flag(direct))
        .open(path)
}

pub(super) fn open_read(path: &Path, direct: bool) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(direct_flag(direct))
        .open(path)
}

fn fallocate(file: &File, mode: i32, range: Range<u64>) -> io::Result<()> {
    let too_big = || io::Error::new(io::ErrorKind::InvalidInput, "range beyond off_t");
    let offset = libc::off_t::try_from(range.start).map_err(|_| too_big())?;
    let len =
        libc::off_t::try_from(range.end.saturating_sub(range.start)).map_err(|_| too_big())?;
    loop {
        // SAFETY: plain syscall on an fd that `file` keeps open for the duration of the call; no
        // memory is passed.
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), mode, offset, len) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

fn unsupported(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS)
    )
}

/// Reserves the file's blocks up front: a full disk fails here, before any byte is written, and
/// the extents come out contiguous. Filesystems without fallocate just allocate as they write.
pub(super) fn preallocate(file: &File, len: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    match fallocate(file, 0, 0..len) {
        Err(e) if unsupported(&e) => Ok(()),
        other => other,
    }
}

/// Gives `range` (block-aligned) back to the filesystem without changing the file's size, so the
/// offsets of the objects still living in the file stay valid. Returns `Ok(false)` where the
/// filesystem cannot punch holes: the space then comes back when the file is unlinked.
pub(super) fn punch_hole(path: &Path, range: Range<u64>) -> io::Result<bool> {
    let file = OpenOptions::new().write(true).open(path)?;
    match fallocate(
        &file,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        range,
    ) {
        Ok(()) => Ok(true),
        Err(e) if unsupported(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Takes an exclusive, non-blocking flock on the directory's lock file: `Ok(None)` when another
/// store (in this or another process) holds it. Without this, two stores sharing a directory
/// would sweep each other's live files as stale.
pub(super) fn lock_dir(dir: &Path) -> io::Result<Option<File>> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(dir.join(LOCK_NAME))?;
    loop {
        // SAFETY: plain syscall on an fd that `file` keeps open; no memory is passed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(Some(file));
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(None),
            _ => return Err(err),
        }
    }
}

/// Removes every `yr-spill-*.bin` in `dir`: spill files do not outlive the store that wrote them,
/// so any found at open are a crashed run's. Returns how many were removed.
pub(super) fn sweep_stale(dir: &Path) -> io::Result<usize> {
    let mut removed = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !(name.starts_with(PREFIX) && name.ends_with(SUFFIX)) {
            continue;
        }
        if !entry.file_type()?.is_file() {
            continue;
        }
        match fs::remove_file(entry.path()) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(path = %entry.path().display(), error = %e,
                "cannot remove stale spill file"),
        }
    }
    Ok(removed)
}

/// Whether O_DIRECT works in `dir`: some filesystems refuse the flag at open, others only at
/// the first transfer, so the probe does a real aligned write and read. Other errors (no space,
/// no permission) are real problems with the directory and are returned.
pub(super) fn probe_direct(dir: &Path) -> io::Result<bool> {
    let path = dir.join(PROBE_NAME);
    match fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let refused = |e: &io::Error| e.raw_os_error() == Some(libc::EINVAL);
    let result = (|| {
        let file = match create(&path, true) {
            Err(e) if refused(&e) => return Ok(false),
            other => other?,
        };
        let mut buf = AlignedBuf::new(ALIGN)?;
        buf.as_mut_slice().fill(0x5a);
        match file.write_all_at(buf.as_slice(), 0) {
            Err(e) if refused(&e) => return Ok(false),
            other => other?,
        }
        match file.read_exact_at(buf.as_mut_slice(), 0) {
            Err(e) if refused(&e) => Ok(false),
            other => other.map(|()| true),
        }
    })();
    let _ = fs::remove_file(&path);
    result
}
