//! Preparing a function's code for one instance.
//!
//! A function's code arrives as a directory, a single executable, a `.tar.gz` /
//! `.tgz` archive or a `.zip` archive. [`prepare`] turns it into the folder that
//! becomes the function process's working directory, and [`find_entrypoint`]
//! picks the program to start inside that folder.
//!
//! Invariants:
//! - Directory sources are used in place and never modified.
//! - Everything else is materialised only inside `instance_dir/code`, which must
//!   not exist beforehand (so nothing planted there earlier can be followed).
//! - Unpacking never creates, modifies or follows anything outside
//!   `instance_dir/code`: absolute names, `..` components, links whose target
//!   leaves the folder, writes through an unpacked symlink, devices and fifos are
//!   all refused. Every symlink left behind resolves inside the folder.
//! - Unpacking is bounded by [`MAX_UNPACKED_BYTES`] and [`MAX_ENTRIES`], counted
//!   from the bytes actually decompressed rather than from (forgeable) headers.
//! - If preparing fails, the partially filled `instance_dir/code` is removed.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use flate2::read::MultiGzDecoder;

/// Upper bound on the bytes an archive may unpack to.
pub const MAX_UNPACKED_BYTES: u64 = 4 << 30;
/// Upper bound on the number of entries an archive may contain.
pub const MAX_ENTRIES: u64 = 100_000;

/// Name of the folder created inside the instance directory.
const CODE_DIR: &str = "code";
/// Symlink targets longer than this are not legitimate paths (PATH_MAX).
const MAX_LINK_TARGET_BYTES: u64 = 4096;
const COPY_BUF_BYTES: usize = 64 * 1024;

/// Devices, fifos, sockets and sparse files have no place in function code.
const ALLOWED_TYPES: &str = "only files, directories and links are allowed";

const S_IFMT: u32 = 0o170_000;
const S_IFREG: u32 = 0o100_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFLNK: u32 = 0o120_000;

/// Where a function's code comes from, as decided by [`classify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeSource {
    /// A directory, used in place.
    Dir(PathBuf),
    /// A single executable file, copied into the code folder.
    Executable(PathBuf),
    /// A `.tar.gz` / `.tgz` archive, unpacked into the code folder.
    TarGz(PathBuf),
    /// A `.zip` archive, unpacked into the code folder.
    Zip(PathBuf),
}

/// Why a function's code could not be prepared or its entrypoint found.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    /// The code path does not exist.
    #[error("code path {} does not exist", path.display())]
    NotFound { path: PathBuf },
    /// The code path is something other than a directory or a regular file.
    #[error("code path {} is neither a directory nor a regular file", path.display())]
    UnsupportedSource { path: PathBuf },
    /// The instance's code folder exists already; it is never reused (something may have
    /// been planted there).
    #[error("instance code folder {} already exists; refusing to reuse it", path.display())]
    CodeDirExists { path: PathBuf },
    /// A file operation on `path` failed.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Copying a single-executable source into the code folder failed.
    #[error("copying {} to {} failed: {source}", from.display(), to.display())]
    Copy {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The archive does not decode (truncated, not an archive, bad checksum).
    #[error("archive {} is corrupt or unreadable: {detail}", archive.display())]
    Corrupt { archive: PathBuf, detail: String },
    /// An archive entry would escape the code folder or is of a refused type.
    #[error("archive {}: entry {entry:?} refused: {reason}", archive.display())]
    UnsafeEntry {
        archive: PathBuf,
        entry: String,
        reason: String,
    },
    /// The archive unpacks to more than the byte limit.
    #[error("archive {} unpacks to more than {limit} bytes", archive.display())]
    TooLarge { archive: PathBuf, limit: u64 },
    /// The archive has more entries than the limit.
    #[error("archive {} has more than {limit} entries", archive.display())]
    TooManyEntries { archive: PathBuf, limit: u64 },
    /// The entrypoint given is not a plain relative path inside the code folder.
    #[error("entrypoint {entrypoint:?} is invalid: {reason}")]
    InvalidEntrypoint {
        entrypoint: String,
        reason: &'static str,
    },
    /// The entrypoint's file is missing, not a regular file, not executable or outside the
    /// code folder.
    #[error("entrypoint {}: {reason}", path.display())]
    BadEntrypoint { path: PathBuf, reason: &'static str },
    /// No entrypoint was given and the code folder does not have exactly one executable to
    /// guess.
    #[error(
        "no entrypoint given and {} has {found} executable files at top level \
         (exactly one is required to guess); an entrypoint is needed",
        dir.display()
    )]
    EntrypointNeeded { dir: PathBuf, found: usize },
}

/// As the agent reports it: bad code is an invalid `code_path`, a bad entrypoint an invalid
/// `entrypoint` (the function's deployer must fix either); file trouble on the node is I/O.
impl From<PackageError> for crate::error::Error {
    fn from(e: PackageError) -> crate::error::Error {
        use crate::error::Error;
        match e {
            PackageError::Io { path, source } => Error::io(path.display().to_string(), source),
            PackageError::Copy { from, to, source } => Error::io(
                format!("copying {} to {}", from.display(), to.display()),
                source,
            ),
            PackageError::CodeDirExists { .. } => Error::Internal(e.to_string()),
            PackageError::InvalidEntrypoint { .. }
            | PackageError::BadEntrypoint { .. }
            | PackageError::EntrypointNeeded { .. } => Error::invalid("entrypoint", e.to_string()),
            PackageError::NotFound { .. }
            | PackageError::UnsupportedSource { .. }
            | PackageError::Corrupt { .. }
            | PackageError::UnsafeEntry { .. }
            | PackageError::TooLarge { .. }
            | PackageError::TooManyEntries { .. } => Error::invalid("code_path", e.to_string()),
        }
    }
}

fn io_err(path: &Path, source: io::Error) -> PackageError {
    PackageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Decides what kind of code source `code_path` is, from its metadata and name.
pub fn classify(code_path: &Path) -> Result<CodeSource, PackageError> {
    let meta = match fs::metadata(code_path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(PackageError::NotFound {
                path: code_path.to_path_buf(),
            })
        }
        Err(e) => return Err(io_err(code_path, e)),
    };
    if meta.is_dir() {
        return Ok(CodeSource::Dir(code_path.to_path_buf()));
    }
    if !meta.is_file() {
        return Err(PackageError::UnsupportedSource {
            path: code_path.to_path_buf(),
        });
    }
    let name = code_path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let path = code_path.to_path_buf();
    Ok(if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
        CodeSource::TarGz(path)
    } else if name.ends_with(".zip") {
        CodeSource::Zip(path)
    } else {
        CodeSource::Executable(path)
    })
}

/// Returns the folder that becomes the function process's working directory.
///
/// Directories are used in place (canonicalized); anything else is copied or
/// unpacked into `instance_dir/code`, which must not exist yet.
pub fn prepare(code_path: &Path, instance_dir: &Path) -> Result<PathBuf, PackageError> {
    prepare_with_limits(code_path, instance_dir, Limits::DEFAULT)
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    max_bytes: u64,
    max_entries: u64,
}

impl Limits {
    const DEFAULT: Limits = Limits {
        max_bytes: MAX_UNPACKED_BYTES,
        max_entries: MAX_ENTRIES,
    };
}

fn prepare_with_limits(
    code_path: &Path,
    instance_dir: &Path,
    limits: Limits,
) -> Result<PathBuf, PackageError> {
    let source = classify(code_path)?;
    tracing::debug!(?source, instance_dir = %instance_dir.display(), "preparing function code");
    match source {
        CodeSource::Dir(dir) => fs::canonicalize(&dir).map_err(|e| io_err(&dir, e)),
        CodeSource::Executable(file) => {
            with_fresh_code_dir(instance_dir, |code| copy_executable(&file, code))
        }
        CodeSource::TarGz(archive) => {
            with_fresh_code_dir(instance_dir, |code| unpack_tar_gz(&archive, code, limits))
        }
        CodeSource::Zip(archive) => {
            with_fresh_code_dir(instance_dir, |code| unpack_zip(&archive, code, limits))
        }
    }
}

/// Creates `instance_dir/code`, fills it with `fill`, and removes it again if
/// filling fails so a half-unpacked package is never mistaken for a good one.
fn with_fresh_code_dir(
    instance_dir: &Path,
    fill: impl FnOnce(&Path) -> Result<(), PackageError>,
) -> Result<PathBuf, PackageError> {
    fs::create_dir_all(instance_dir).map_err(|e| io_err(instance_dir, e))?;
    let code = instance_dir.join(CODE_DIR);
    match fs::create_dir(&code) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(PackageError::CodeDirExists { path: code })
        }
        Err(e) => return Err(io_err(&code, e)),
    }
    match fill(&code) {
        Ok(()) => Ok(code),
        Err(err) => {
            // remove_dir_all does not follow symlinks, so this cannot reach
            // outside the folder even if the failed archive left links behind.
            if let Err(cleanup) = fs::remove_dir_all(&code) {
                tracing::warn!(
                    path = %code.display(),
                    error = %cleanup,
                    "failed to remove partially prepared code folder"
                );
            }
            Err(err)
        }
    }
}

fn copy_executable(file: &Path, code: &Path) -> Result<(), PackageError> {
    let name = file
        .file_name()
        .ok_or_else(|| PackageError::UnsupportedSource {
            path: file.to_path_buf(),
        })?;
    let dest = code.join(name);
    // A hard link is instant and as good as a copy: compilers and package
    // managers replace a program by writing a new file, so the instance keeps
    // running the bytes it started with. Across filesystems, copy.
    if fs::hard_link(file, &dest).is_ok() {
        return Ok(());
    }
    // fs::copy carries the permission bits over, which keeps the x bit.
    fs::copy(file, &dest).map_err(|source| PackageError::Copy {
        from: file.to_path_buf(),
        to: dest.clone(),
        source,
    })?;
    Ok(())
}

/// Resolves the program to start inside `code_dir`.
///
/// A non-empty `entrypoint` must be a relative path without `..` naming an
/// executable regular file that (after following symlinks) lies inside
/// `code_dir`. An empty one is accepted only when exactly one such file sits at
/// the top level of `code_dir`.
pub fn find_entrypoint(code_dir: &Path, entrypoint: &str) -> Result<PathBuf, PackageError> {
    if entrypoint.is_empty() {
        return sole_executable(code_dir);
    }
    let invalid = |reason| PackageError::InvalidEntrypoint {
        entrypoint: entrypoint.to_owned(),
        reason,
    };
    if entrypoint.contains('\0') {
        return Err(invalid("contains a NUL byte"));
    }
    let rel = Path::new(entrypoint);
    let mut names = 0usize;
    for component in rel.components() {
        match component {
            Component::Normal(_) => names += 1,
            Component::CurDir => {}
            Component::ParentDir => return Err(invalid("must not contain '..'")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(invalid("must be a relative path, not absolute"))
            }
        }
    }
    if names == 0 {
        return Err(invalid("does not name a file"));
    }
    let path = code_dir.join(rel);
    check_entrypoint_file(code_dir, &path)?;
    Ok(path)
}

fn sole_executable(code_dir: &Path) -> Result<PathBuf, PackageError> {
    let mut found = Vec::new();
    for entry in fs::read_dir(code_dir).map_err(|e| io_err(code_dir, e))? {
        let path = entry.map_err(|e| io_err(code_dir, e))?.path();
        match check_entrypoint_file(code_dir, &path) {
            Ok(()) => found.push(path),
            // Files that break an entrypoint rule are simply not candidates.
            Err(PackageError::BadEntrypoint { .. }) => {}
            Err(other) => return Err(other),
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        n => Err(PackageError::EntrypointNeeded {
            dir: code_dir.to_path_buf(),
            found: n,
        }),
    }
}

fn check_entrypoint_file(code_dir: &Path, path: &Path) -> Result<(), PackageError> {
    let bad = |reason| PackageError::BadEntrypoint {
        path: path.to_path_buf(),
        reason,
    };
    let meta = match fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(bad("does not exist")),
        Err(e) => return Err(io_err(path, e)),
    };
    // A symlinked entrypoint is fine as long as the program it runs is part of
    // the package, not an arbitrary binary elsewhere on the host.
    let real = fs::canonicalize(path).map_err(|e| io_err(path, e))?;
    let base = fs::canonicalize(code_dir).map_err(|e| io_err(code_dir, e))?;
    if !real.starts_with(&base) {
        return Err(bad("resolves outside the code folder"));
    }
    if !meta.is_file() {
        return Err(bad("is not a regular file"));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(bad("is not executable (no x permission bit)"));
    }
    Ok(())
}

/// Shared, format-independent half of unpacking: path checks, limits and the
/// actual file system writes.
struct Unpacker<'a> {
    archive: &'a Path,
    root: &'a Path,
    limits: Limits,
    entries: u64,
    bytes: u64,
    /// Relative paths already verified to be real directories (not symlinks).
    /// Safe to cache because entries never replace an existing path.
    real_dirs: HashSet<PathBuf>,
    buf: Vec<u8>,
}

impl<'a> Unpacker<'a> {
    fn new(archive: &'a Path, root: &'a Path, limits: Limits) -> Self {
        Unpacker {
            archive,
            root,
            limits,
            entries: 0,
            bytes: 0,
            real_dirs: HashSet::new(),
            buf: vec![0; COPY_BUF_BYTES],
        }
    }

    fn corrupt(&self, entry: Option<&str>, err: impl std::fmt::Display) -> PackageError {
        let detail = match entry {
            Some(name) => format!("entry {name:?}: {err}"),
            None => err.to_string(),
        };
        PackageError::Corrupt {
            archive: self.archive.to_path_buf(),
            detail,
        }
    }

    fn refuse(&self, entry: &str, reason: impl Into<String>) -> PackageError {
        PackageError::UnsafeEntry {
            archive: self.archive.to_path_buf(),
            entry: entry.to_owned(),
            reason: reason.into(),
        }
    }

    fn count_entry(&mut self) -> Result<(), PackageError> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(PackageError::TooManyEntries {
                archive: self.archive.to_path_buf(),
                limit: self.limits.max_entries,
            });
        }
        Ok(())
    }

    fn add_bytes(&mut self, n: u64) -> Result<(), PackageError> {
        self.bytes = self.bytes.saturating_add(n);
        if self.bytes > self.limits.max_bytes {
            return Err(PackageError::TooLarge {
                archive: self.archive.to_path_buf(),
                limit: self.limits.max_bytes,
            });
        }
        Ok(())
    }

    /// Turns an archive name into a relative path made only of plain names.
    /// The result may be empty (for names like `./`).
    fn entry_path(&self, raw: &[u8], entry: &str) -> Result<PathBuf, PackageError> {
        if raw.contains(&0) {
            return Err(self.refuse(entry, "name contains a NUL byte"));
        }
        let mut rel = PathBuf::new();
        for component in Path::new(OsStr::from_bytes(raw)).components() {
            match component {
                Component::Normal(name) => rel.push(name),
                Component::CurDir => {}
                Component::ParentDir => {
                    return Err(self.refuse(entry, "path contains a '..' component"))
                }
                Component::RootDir | Component::Prefix(_) => {
                    return Err(self.refuse(entry, "path is absolute"))
                }
            }
        }
        Ok(rel)
    }

    fn non_empty_path(&self, raw: &[u8], entry: &str) -> Result<PathBuf, PackageError> {
        let rel = self.entry_path(raw, entry)?;
        if rel.as_os_str().is_empty() {
            return Err(self.refuse(entry, "path names the archive root"));
        }
        Ok(rel)
    }

    /// Walks `rel_dir` from the root, making sure every step is a real
    /// directory so nothing is ever written through a symlink. Missing
    /// directories are created when `create` is set.
    fn ensure_dirs(
        &mut self,
        rel_dir: &Path,
        create: bool,
        entry: &str,
    ) -> Result<(), PackageError> {
        let mut cur = PathBuf::new();
        for component in rel_dir.components() {
            cur.push(component);
            if self.real_dirs.contains(&cur) {
                continue;
            }
            let abs = self.root.join(&cur);
            match fs::symlink_metadata(&abs) {
                Ok(meta) if meta.file_type().is_dir() => {}
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(self.refuse(
                        entry,
                        format!("would be written through the symlink {}", cur.display()),
                    ))
                }
                Ok(_) => {
                    return Err(self.refuse(entry, format!("{} is not a directory", cur.display())))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                    fs::create_dir(&abs).map_err(|e| io_err(&abs, e))?;
                    // Archive directory modes are ignored: a read-only
                    // directory would block later entries, and the function
                    // must be able to list its own code.
                    fs::set_permissions(&abs, Permissions::from_mode(0o755))
                        .map_err(|e| io_err(&abs, e))?;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(self.refuse(entry, format!("{} does not exist", cur.display())))
                }
                Err(e) => return Err(io_err(&abs, e)),
            }
            self.real_dirs.insert(cur.clone());
        }
        Ok(())
    }

    fn ensure_parent(&mut self, rel: &Path, entry: &str) -> Result<PathBuf, PackageError> {
        if let Some(parent) = rel.parent() {
            self.ensure_dirs(parent, true, entry)?;
        }
        Ok(self.root.join(rel))
    }

    fn duplicate_or_io(&self, entry: &str, path: &Path, e: io::Error) -> PackageError {
        if e.kind() == io::ErrorKind::AlreadyExists {
            // Refusing instead of replacing keeps `real_dirs` truthful and
            // means an earlier symlink can never be swapped in or out.
            self.refuse(entry, "duplicate entry: path was already unpacked")
        } else {
            io_err(path, e)
        }
    }

    fn make_dir(&mut self, raw: &[u8], entry: &str) -> Result<(), PackageError> {
        let rel = self.entry_path(raw, entry)?;
        self.ensure_dirs(&rel, true, entry)
    }

    fn write_file(
        &mut self,
        raw: &[u8],
        entry: &str,
        declared_size: u64,
        executable: bool,
        data: &mut dyn Read,
    ) -> Result<(), PackageError> {
        let rel = self.non_empty_path(raw, entry)?;
        // Fail fast on an honest header; the streaming count below is what
        // actually enforces the limit against a lying one.
        if self.bytes.saturating_add(declared_size) > self.limits.max_bytes {
            return Err(PackageError::TooLarge {
                archive: self.archive.to_path_buf(),
                limit: self.limits.max_bytes,
            });
        }
        let path = self.ensure_parent(&rel, entry)?;
        // create_new (O_EXCL) also refuses to open through a symlink at `path`.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| self.duplicate_or_io(entry, &path, e))?;
        loop {
            let n = match data.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.corrupt(Some(entry), e)),
            };
            self.add_bytes(n as u64)?;
            file.write_all(&self.buf[..n])
                .map_err(|e| io_err(&path, e))?;
        }
        // Only the x bit is taken from the archive: setuid/setgid or
        // world-writable modes from an upload have no business here.
        let mode = if executable { 0o755 } else { 0o644 };
        file.set_permissions(Permissions::from_mode(mode))
            .map_err(|e| io_err(&path, e))?;
        Ok(())
    }

    fn make_symlink(&mut self, raw: &[u8], entry: &str, target: &[u8]) -> Result<(), PackageError> {
        let rel = self.non_empty_path(raw, entry)?;
        if target.is_empty() {
            return Err(self.refuse(entry, "symlink has an empty target"));
        }
        if target.contains(&0) {
            return Err(self.refuse(entry, "symlink target contains a NUL byte"));
        }
        let target_path = Path::new(OsStr::from_bytes(target));
        // The link lives in a real directory `depth` levels below the root
        // (ensure_parent guarantees that), so up to `depth` leading `..` stay
        // inside. `..` after a name is refused: the name may itself be a
        // symlink, and the kernel applies `..` to where that link points,
        // which a lexical check cannot see (e.g. `b -> .`, `a -> b/b/..`).
        let mut depth = rel.components().count().saturating_sub(1);
        let mut seen_name = false;
        for component in target_path.components() {
            match component {
                Component::RootDir | Component::Prefix(_) => {
                    return Err(self.refuse(
                        entry,
                        format!("symlink target {} is absolute", target_path.display()),
                    ))
                }
                Component::CurDir => {}
                Component::Normal(_) => seen_name = true,
                Component::ParentDir if seen_name => {
                    return Err(self.refuse(
                        entry,
                        format!(
                            "symlink target {} has '..' after a name",
                            target_path.display()
                        ),
                    ))
                }
                Component::ParentDir if depth == 0 => {
                    return Err(self.refuse(
                        entry,
                        format!(
                            "symlink target {} escapes the code folder",
                            target_path.display()
                        ),
                    ))
                }
                Component::ParentDir => depth -= 1,
            }
        }
        let path = self.ensure_parent(&rel, entry)?;
        symlink(target_path, &path).map_err(|e| self.duplicate_or_io(entry, &path, e))
    }

    fn make_hardlink(
        &mut self,
        raw: &[u8],
        entry: &str,
        target: &[u8],
    ) -> Result<(), PackageError> {
        let rel = self.non_empty_path(raw, entry)?;
        // Hard link targets are archive names, relative to the archive root.
        let target_rel = self.non_empty_path(target, entry).map_err(|_| {
            self.refuse(
                entry,
                format!(
                    "hard link target {:?} is absolute, contains '..' or is empty",
                    String::from_utf8_lossy(target)
                ),
            )
        })?;
        if let Some(parent) = target_rel.parent() {
            self.ensure_dirs(parent, false, entry)?;
        }
        let source = self.root.join(&target_rel);
        let is_file = fs::symlink_metadata(&source)
            .map(|meta| meta.file_type().is_file())
            .unwrap_or(false);
        if !is_file {
            // Linking to a symlink would re-anchor its relative target at a
            // new place, so only earlier regular files may be linked.
            return Err(self.refuse(
                entry,
                format!(
                    "hard link target {} is not an earlier regular file",
                    target_rel.display()
                ),
            ));
        }
        let path = self.ensure_parent(&rel, entry)?;
        fs::hard_link(&source, &path).map_err(|e| self.duplicate_or_io(entry, &path, e))
    }
}

fn unpack_tar_gz(archive: &Path, root: &Path, limits: Limits) -> Result<(), PackageError> {
    let file = File::open(archive).map_err(|e| io_err(archive, e))?;
    // Multi-member aware, because concatenated gzip streams are valid .tar.gz
    // files and a single-member decoder would silently drop the rest.
    let mut tar = tar::Archive::new(MultiGzDecoder::new(BufReader::new(file)));
    let mut unpacker = Unpacker::new(archive, root, limits);
    let entries = tar.entries().map_err(|e| unpacker.corrupt(None, e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| unpacker.corrupt(None, e))?;
        unpacker.count_entry()?;
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let entry_type = entry.header().entry_type();
        match entry_type {
            tar::EntryType::Directory => unpacker.make_dir(&raw, &name)?,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mode = entry
                    .header()
                    .mode()
                    .map_err(|e| unpacker.corrupt(Some(&name), e))?;
                let size = entry.size();
                unpacker.write_file(&raw, &name, size, mode & 0o111 != 0, &mut entry)?;
            }
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .ok_or_else(|| unpacker.refuse(&name, "link entry has no target"))?;
                if entry_type == tar::EntryType::Symlink {
                    unpacker.make_symlink(&raw, &name, &target)?;
                } else {
                    unpacker.make_hardlink(&raw, &name, &target)?;
                }
            }
            // Global pax headers carry only metadata defaults; nothing to write.
            tar::EntryType::XGlobalHeader => {}
            other => {
                return Err(unpacker.refuse(
                    &name,
                    format!("unsupported entry type {other:?}; {ALLOWED_TYPES}"),
                ))
            }
        }
    }
    // tar stops at its end marker (or even at a clean EOF without one), which
    // would leave the gzip trailer unread and a truncated upload accepted as a
    // shorter package. Reading to the end makes the decoder verify CRC and
    // length. The trailing padding is bounded so it cannot burn CPU forever.
    let mut rest = tar.into_inner().take(limits.max_bytes.saturating_add(1));
    let drained = io::copy(&mut rest, &mut io::sink()).map_err(|e| unpacker.corrupt(None, e))?;
    if drained > limits.max_bytes {
        return Err(PackageError::TooLarge {
            archive: archive.to_path_buf(),
            limit: limits.max_bytes,
        });
    }
    Ok(())
}

fn unpack_zip(archive: &Path, root: &Path, limits: Limits) -> Result<(), PackageError> {
    let file = File::open(archive).map_err(|e| io_err(archive, e))?;
    let mut unpacker = Unpacker::new(archive, root, limits);
    let mut zip =
        zip::ZipArchive::new(BufReader::new(file)).map_err(|e| unpacker.corrupt(None, e))?;
    for index in 0..zip.len() {
        let mut entry = zip
            .by_index(index)
            .map_err(|e| unpacker.corrupt(Some(&format!("#{index}")), e))?;
        unpacker.count_entry()?;
        let name = entry.name().to_owned();
        let raw = name.as_bytes();
        // Archives made on non-Unix systems carry no mode; treat those as
        // plain files or, by the trailing slash convention, directories.
        let file_type = entry.unix_mode().map_or(0, |mode| mode & S_IFMT);
        let executable = entry.unix_mode().is_some_and(|mode| mode & 0o111 != 0);
        match file_type {
            S_IFLNK => {
                let mut target = Vec::new();
                (&mut entry)
                    .take(MAX_LINK_TARGET_BYTES + 1)
                    .read_to_end(&mut target)
                    .map_err(|e| unpacker.corrupt(Some(&name), e))?;
                if target.len() as u64 > MAX_LINK_TARGET_BYTES {
                    return Err(unpacker.refuse(&name, "symlink target is too long"));
                }
                unpacker.add_bytes(target.len() as u64)?;
                unpacker.make_symlink(raw, &name, &target)?;
            }
            S_IFDIR => unpacker.make_dir(raw, &name)?,
            0 | S_IFREG if name.ends_with('/') => unpacker.make_dir(raw, &name)?,
            0 | S_IFREG => {
                let size = entry.size();
                unpacker.write_file(raw, &name, size, executable, &mut entry)?;
            }
            other => {
                return Err(unpacker.refuse(
                    &name,
                    format!("unsupported file type {other:#o}; {ALLOWED_TYPES}"),
                ))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    enum T<'a> {
        File(&'a [u8], &'a [u8], u32),
        Dir(&'a [u8]),
        Symlink(&'a [u8], &'a [u8]),
        HardLink(&'a [u8], &'a [u8]),
        Fifo(&'a [u8]),
    }

    /// Writes a tar.gz with raw header names, bypassing the builder's own path
    /// sanitising so the malicious names really end up in the archive.
    fn write_tar_gz(path: &Path, entries: &[T]) {
        let file = File::create(path).unwrap();
        let gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
        let mut builder = tar::Builder::new(gz);
        for e in entries {
            let mut header = tar::Header::new_gnu();
            let (name, data, mode, ty, link): (&[u8], &[u8], u32, tar::EntryType, Option<&[u8]>) =
                match e {
                    T::File(n, d, m) => (n, d, *m, tar::EntryType::Regular, None),
                    T::Dir(n) => (n, b"", 0o755, tar::EntryType::Directory, None),
                    T::Symlink(n, t) => (n, b"", 0o777, tar::EntryType::Symlink, Some(t)),
                    T::HardLink(n, t) => (n, b"", 0o644, tar::EntryType::Link, Some(t)),
                    T::Fifo(n) => (n, b"", 0o644, tar::EntryType::Fifo, None),
                };
            let raw = &mut header.as_old_mut().name;
            assert!(name.len() < raw.len());
            raw.fill(0);
            raw[..name.len()].copy_from_slice(name);
            header.set_mode(mode);
            header.set_size(data.len() as u64);
            header.set_entry_type(ty);
            if let Some(target) = link {
                header.set_link_name_literal(target).unwrap();
            }
            header.set_cksum();
            builder.append(&header, data).unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap();
    }

    fn write_zip(path: &Path, entries: &[T]) {
        use zip::write::SimpleFileOptions;
        let mut zw = zip::ZipWriter::new(File::create(path).unwrap());
        let opts =
            SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        for e in entries {
            match e {
                T::File(n, d, m) => {
                    let name = std::str::from_utf8(n).unwrap();
                    zw.start_file(name, opts.unix_permissions(*m)).unwrap();
                    zw.write_all(d).unwrap();
                }
                T::Dir(n) => {
                    let name = std::str::from_utf8(n).unwrap();
                    zw.add_directory(name, opts).unwrap();
                }
                T::Symlink(n, t) => {
                    let name = std::str::from_utf8(n).unwrap();
                    let target = std::str::from_utf8(t).unwrap();
                    zw.add_symlink(name, target, opts).unwrap();
                }
                T::HardLink(..) | T::Fifo(..) => unreachable!("not representable in zip"),
            }
        }
        zw.finish().unwrap();
    }

    /// Every path under `dir` (not following symlinks), relative to `dir`.
    fn snapshot(dir: &Path) -> BTreeSet<PathBuf> {
        fn walk(base: &Path, dir: &Path, out: &mut BTreeSet<PathBuf>) {
            for entry in fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                out.insert(path.strip_prefix(base).unwrap().to_path_buf());
                if fs::symlink_metadata(&path).unwrap().is_dir() {
                    walk(base, &path, out);
                }
            }
        }
        let mut out = BTreeSet::new();
        walk(dir, dir, &mut out);
        out
    }

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    struct Fixture {
        tmp: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Self {
            let tmp = tempfile::tempdir().unwrap();
            fs::create_dir(tmp.path().join("inst")).unwrap();
            fs::create_dir(tmp.path().join("outside")).unwrap();
            Fixture { tmp }
        }
        fn p(&self, rel: &str) -> PathBuf {
            self.tmp.path().join(rel)
        }
        fn inst(&self) -> PathBuf {
            self.p("inst")
        }
        /// Prepares `archive` expecting failure, and checks the failure left
        /// the surrounding temp dir exactly as it was.
        fn expect_refused(&self, archive: &Path, limits: Limits) -> PackageError {
            let before = snapshot(self.tmp.path());
            let err = prepare_with_limits(archive, &self.inst(), limits)
                .expect_err("malicious archive must be refused");
            assert_eq!(snapshot(self.tmp.path()), before, "error: {err}");
            assert!(!self.inst().join(CODE_DIR).exists());
            err
        }
    }

    fn normal_entries() -> Vec<T<'static>> {
        vec![
            T::File(b"run.sh", b"#!/bin/sh\necho hi\n", 0o755),
            T::Dir(b"lib/"),
            T::File(b"lib/data.txt", b"data", 0o644),
            T::File(b"deep/nested/file.txt", b"nested", 0o600),
            T::Symlink(b"lib/run-link", b"../run.sh"),
        ]
    }

    fn check_normal(code: &Path) {
        assert_eq!(
            fs::read(code.join("run.sh")).unwrap(),
            b"#!/bin/sh\necho hi\n"
        );
        assert_eq!(mode_of(&code.join("run.sh")), 0o755);
        assert_eq!(fs::read(code.join("lib/data.txt")).unwrap(), b"data");
        assert_eq!(mode_of(&code.join("lib/data.txt")) & 0o111, 0);
        assert_eq!(
            fs::read(code.join("deep/nested/file.txt")).unwrap(),
            b"nested"
        );
        assert_eq!(
            fs::read_link(code.join("lib/run-link")).unwrap(),
            Path::new("../run.sh")
        );
        assert_eq!(
            find_entrypoint(code, "lib/run-link").unwrap(),
            code.join("lib/run-link")
        );
        assert_eq!(find_entrypoint(code, "").unwrap(), code.join("run.sh"));
    }

    #[test]
    fn tar_gz_normal_package() {
        let fx = Fixture::new();
        let archive = fx.p("pkg.tar.gz");
        write_tar_gz(&archive, &normal_entries());
        let code = prepare(&archive, &fx.inst()).unwrap();
        assert_eq!(code, fx.inst().join(CODE_DIR));
        check_normal(&code);
    }

    #[test]
    fn zip_normal_package() {
        let fx = Fixture::new();
        let archive = fx.p("pkg.zip");
        write_zip(&archive, &normal_entries());
        let code = prepare(&archive, &fx.inst()).unwrap();
        assert_eq!(code, fx.inst().join(CODE_DIR));
        check_normal(&code);
    }

    #[test]
    fn tar_hard_link_to_earlier_file() {
        let fx = Fixture::new();
        let archive = fx.p("pkg.tgz");
        write_tar_gz(
            &archive,
            &[
                T::File(b"bin/app", b"x", 0o755),
                T::HardLink(b"app2", b"bin/app"),
            ],
        );
        let code = prepare(&archive, &fx.inst()).unwrap();
        assert_eq!(fs::read(code.join("app2")).unwrap(), b"x");
    }

    fn assert_unsafe(err: &PackageError, needle: &str) {
        match err {
            PackageError::UnsafeEntry { reason, .. } => {
                assert!(reason.contains(needle), "unexpected reason: {err}")
            }
            other => panic!("expected UnsafeEntry, got {other:?}"),
        }
    }

    /// Runs the same malicious entries as tar.gz (and zip where expressible).
    fn refuse_both(entries: &[T], needle: &str, zip_too: bool) {
        let fx = Fixture::new();
        let archive = fx.p("evil.tar.gz");
        write_tar_gz(&archive, entries);
        let err = fx.expect_refused(&archive, Limits::DEFAULT);
        assert_unsafe(&err, needle);
        assert!(err.to_string().contains("evil.tar.gz"), "{err}");
        if zip_too {
            let fx = Fixture::new();
            let archive = fx.p("evil.zip");
            write_zip(&archive, entries);
            let err = fx.expect_refused(&archive, Limits::DEFAULT);
            assert_unsafe(&err, needle);
            assert!(err.to_string().contains("evil.zip"), "{err}");
        }
    }

    #[test]
    fn refuses_parent_dir_entry() {
        refuse_both(
            &[
                T::File(b"ok", b"ok", 0o644),
                T::File(b"../evil", b"x", 0o644),
            ],
            "'..'",
            true,
        );
        refuse_both(&[T::File(b"a/../../../evil", b"x", 0o644)], "'..'", true);
    }

    #[test]
    fn refuses_absolute_entry() {
        let fx = Fixture::new();
        let target = fx.p("outside/evil");
        let name = target.to_str().unwrap().as_bytes();
        let archive = fx.p("abs.tar.gz");
        write_tar_gz(&archive, &[T::File(name, b"x", 0o644)]);
        assert_unsafe(&fx.expect_refused(&archive, Limits::DEFAULT), "absolute");
        let archive = fx.p("abs.zip");
        write_zip(&archive, &[T::File(name, b"x", 0o644)]);
        assert_unsafe(&fx.expect_refused(&archive, Limits::DEFAULT), "absolute");
        assert!(!target.exists());

        refuse_both(&[T::File(b"/tmp/evil", b"x", 0o644)], "absolute", true);
    }

    #[test]
    fn refuses_absolute_symlink_then_write_through_it() {
        // Pointing at a directory inside the temp dir rather than the real
        // /etc keeps a regression from damaging the machine running tests.
        let fx = Fixture::new();
        let outside = fx.p("outside");
        let target = outside.to_str().unwrap().as_bytes().to_vec();
        for archive in [fx.p("link.tar.gz"), fx.p("link.zip")] {
            let entries = [
                T::Symlink(b"link", &target),
                T::File(b"link/passwd", b"root::0:0::/:/bin/sh\n", 0o644),
            ];
            if archive.extension() == Some(OsStr::new("zip")) {
                write_zip(&archive, &entries);
            } else {
                write_tar_gz(&archive, &entries);
            }
            assert_unsafe(&fx.expect_refused(&archive, Limits::DEFAULT), "absolute");
            assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
        }
        refuse_both(
            &[
                T::Symlink(b"link", b"/etc"),
                T::File(b"link/yr_package_test_marker", b"x", 0o644),
            ],
            "absolute",
            true,
        );
        assert!(!Path::new("/etc/yr_package_test_marker").exists());
    }

    #[test]
    fn refuses_write_through_inner_symlink() {
        refuse_both(
            &[
                T::Dir(b"sub/"),
                T::Symlink(b"link", b"sub"),
                T::File(b"link/file", b"x", 0o644),
            ],
            "through the symlink link",
            true,
        );
    }

    #[test]
    fn refuses_escaping_relative_symlinks() {
        refuse_both(&[T::Symlink(b"x", b"../../x")], "escapes", true);
        refuse_both(&[T::Symlink(b"a/b/x", b"../../../x")], "escapes", true);
        // `b -> .` makes `b/b/..` climb above the root at run time.
        refuse_both(
            &[T::Symlink(b"b", b"."), T::Symlink(b"a", b"b/b/..")],
            "after a name",
            true,
        );
    }

    #[test]
    fn refuses_bad_hard_links() {
        refuse_both(
            &[T::HardLink(b"x", b"../../etc/passwd")],
            "hard link",
            false,
        );
        refuse_both(&[T::HardLink(b"x", b"/etc/passwd")], "hard link", false);
        refuse_both(
            &[T::Symlink(b"s", b"."), T::HardLink(b"x", b"s")],
            "not an earlier regular file",
            false,
        );
    }

    #[test]
    fn refuses_fifo_and_duplicates() {
        refuse_both(&[T::Fifo(b"pipe")], "unsupported entry type", false);
        refuse_both(
            &[T::File(b"a", b"1", 0o644), T::Symlink(b"a", b"b")],
            "duplicate",
            false,
        );
    }

    #[test]
    fn enforces_size_and_entry_limits() {
        let zeros = vec![0u8; 100_000];
        let small = Limits {
            max_bytes: 10_000,
            max_entries: 5,
        };
        let many: Vec<T> = (0..10)
            .map(|i| T::Dir([b"d", &[b'0' + i][..]].concat().leak()))
            .collect();

        for ext in ["tar.gz", "zip"] {
            let fx = Fixture::new();
            let big = fx.p(&format!("big.{ext}"));
            let lots = fx.p(&format!("lots.{ext}"));
            if ext == "zip" {
                write_zip(&big, &[T::File(b"zeros", &zeros, 0o644)]);
                write_zip(&lots, &many);
            } else {
                write_tar_gz(&big, &[T::File(b"zeros", &zeros, 0o644)]);
                write_tar_gz(&lots, &many);
            }
            let err = fx.expect_refused(&big, small);
            assert!(
                matches!(err, PackageError::TooLarge { limit: 10_000, .. }),
                "{err}"
            );
            assert!(err.to_string().contains(&format!("big.{ext}")));
            let err = fx.expect_refused(&lots, small);
            assert!(
                matches!(err, PackageError::TooManyEntries { limit: 5, .. }),
                "{err}"
            );
            assert!(err.to_string().contains(&format!("lots.{ext}")));
        }
    }

    #[test]
    fn size_limit_does_not_trust_headers() {
        // A header may under-declare its size; the bytes actually streamed
        // are what the limit is enforced on.
        let fx = Fixture::new();
        let root = fx.p("outside");
        let limits = Limits {
            max_bytes: 100,
            max_entries: 10,
        };
        let mut unpacker = Unpacker::new(Path::new("liar.tar.gz"), &root, limits);
        let mut data: &[u8] = &[7u8; 200];
        let err = unpacker
            .write_file(b"f", "f", 10, false, &mut data)
            .unwrap_err();
        assert!(
            matches!(err, PackageError::TooLarge { limit: 100, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("liar.tar.gz"), "{err}");
    }

    #[test]
    fn corrupt_archives_give_errors() {
        let fx = Fixture::new();
        let good = fx.p("good.tar.gz");
        write_tar_gz(&good, &normal_entries());
        let bytes = fs::read(&good).unwrap();
        let truncated = fx.p("trunc.tar.gz");
        fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
        let err = fx.expect_refused(&truncated, Limits::DEFAULT);
        assert!(matches!(err, PackageError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("trunc.tar.gz"), "{err}");

        let garbage = fx.p("garbage.tgz");
        fs::write(&garbage, b"definitely not gzip").unwrap();
        let err = fx.expect_refused(&garbage, Limits::DEFAULT);
        assert!(matches!(err, PackageError::Corrupt { .. }), "{err}");

        // Every strict prefix must fail, including cuts inside the gzip
        // trailer or the tar end blocks, which tar alone never reads.
        for cut in 1..bytes.len() {
            let prefix = fx.p("prefix.tar.gz");
            fs::write(&prefix, &bytes[..cut]).unwrap();
            match prepare(&prefix, &fx.inst()) {
                Err(PackageError::Corrupt { .. }) => {}
                other => panic!("prefix of {cut} bytes: {other:?}"),
            }
            assert!(!fx.inst().join(CODE_DIR).exists());
        }

        let bad_zip = fx.p("bad.zip");
        fs::write(&bad_zip, b"PK\x03\x04 this is not really a zip").unwrap();
        let err = fx.expect_refused(&bad_zip, Limits::DEFAULT);
        assert!(matches!(err, PackageError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("bad.zip"), "{err}");

        let good_zip = fx.p("good.zip");
        let text = b"some compressible text, repeated. ".repeat(50);
        write_zip(&good_zip, &[T::File(b"f.txt", &text, 0o644)]);
        let data_start = {
            let mut zip = zip::ZipArchive::new(File::open(&good_zip).unwrap()).unwrap();
            let entry = zip.by_index(0).unwrap();
            entry.data_start() as usize
        };
        let mut bytes = fs::read(&good_zip).unwrap();
        // Damage the compressed data itself (the central directory stays
        // intact), so the error can only surface while streaming the entry.
        for b in &mut bytes[data_start + 2..data_start + 8] {
            *b ^= 0x5a;
        }
        let damaged = fx.p("damaged.zip");
        fs::write(&damaged, &bytes).unwrap();
        let err = fx.expect_refused(&damaged, Limits::DEFAULT);
        assert!(matches!(err, PackageError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("damaged.zip"), "{err}");
        assert!(err.to_string().contains("f.txt"), "{err}");
    }

    #[test]
    fn existing_code_dir_is_not_reused() {
        let fx = Fixture::new();
        let archive = fx.p("pkg.tar.gz");
        write_tar_gz(&archive, &normal_entries());
        fs::create_dir(fx.inst().join(CODE_DIR)).unwrap();
        let err = prepare(&archive, &fx.inst()).unwrap_err();
        assert!(matches!(err, PackageError::CodeDirExists { .. }), "{err}");
    }

    #[test]
    fn directory_source_is_used_in_place() {
        let fx = Fixture::new();
        let src = fx.p("src");
        fs::create_dir(&src).unwrap();
        fs::write(src.join("main"), b"x").unwrap();
        let code = prepare(&fx.p("src/../src"), &fx.inst()).unwrap();
        assert_eq!(code, fs::canonicalize(&src).unwrap());
        assert!(!fx.inst().join(CODE_DIR).exists());
    }

    #[test]
    fn single_executable_is_copied_and_stays_executable() {
        let fx = Fixture::new();
        let exe = fx.p("handler");
        fs::write(&exe, b"#!/bin/sh\n").unwrap();
        fs::set_permissions(&exe, Permissions::from_mode(0o750)).unwrap();
        let code = prepare(&exe, &fx.inst()).unwrap();
        assert_eq!(code, fx.inst().join(CODE_DIR));
        assert_eq!(fs::read(code.join("handler")).unwrap(), b"#!/bin/sh\n");
        assert_eq!(mode_of(&code.join("handler")), 0o750);
        assert_eq!(find_entrypoint(&code, "").unwrap(), code.join("handler"));
        assert!(exe.exists());
    }

    #[test]
    fn classify_by_metadata_and_name() {
        let fx = Fixture::new();
        for (name, want) in [
            ("a.tar.gz", "targz"),
            ("a.TGZ", "targz"),
            ("a.zip", "zip"),
            ("a.tar", "exe"),
            ("run", "exe"),
        ] {
            let path = fx.p(name);
            fs::write(&path, b"").unwrap();
            let got = match classify(&path).unwrap() {
                CodeSource::TarGz(p) if p == path => "targz",
                CodeSource::Zip(p) if p == path => "zip",
                CodeSource::Executable(p) if p == path => "exe",
                other => panic!("{name}: {other:?}"),
            };
            assert_eq!(got, want, "{name}");
        }
        assert_eq!(classify(&fx.inst()).unwrap(), CodeSource::Dir(fx.inst()));
        let missing = fx.p("nope.zip");
        let err = classify(&missing).unwrap_err();
        assert!(matches!(err, PackageError::NotFound { .. }));
        assert!(err.to_string().contains("nope.zip"), "{err}");
        assert!(matches!(
            prepare(&missing, &fx.inst()),
            Err(PackageError::NotFound { .. })
        ));
    }

    #[test]
    fn entrypoint_rules() {
        let fx = Fixture::new();
        let code = fx.p("code");
        fs::create_dir_all(code.join("bin")).unwrap();
        let write = |rel: &str, mode: u32| {
            let p = code.join(rel);
            fs::write(&p, b"x").unwrap();
            fs::set_permissions(&p, Permissions::from_mode(mode)).unwrap();
        };
        write("bin/app", 0o755);
        write("notes.txt", 0o644);
        write("../outside/tool", 0o755);
        symlink(fx.p("outside/tool"), code.join("escape")).unwrap();

        assert_eq!(
            find_entrypoint(&code, "bin/app").unwrap(),
            code.join("bin/app")
        );
        assert_eq!(
            find_entrypoint(&code, "./bin/app").unwrap(),
            code.join("./bin/app")
        );

        let invalid = |ep: &str, needle: &str| match find_entrypoint(&code, ep) {
            Err(err @ PackageError::InvalidEntrypoint { .. }) => {
                assert!(err.to_string().contains(needle), "{err}")
            }
            other => panic!("{ep}: {other:?}"),
        };
        invalid("/bin/sh", "absolute");
        invalid("../outside/tool", "'..'");
        invalid("bin/../bin/app", "'..'");
        invalid(".", "does not name a file");

        let bad = |ep: &str, needle: &str| match find_entrypoint(&code, ep) {
            Err(err @ PackageError::BadEntrypoint { .. }) => {
                let msg = err.to_string();
                assert!(msg.contains(needle) && msg.contains(ep), "{msg}")
            }
            other => panic!("{ep}: {other:?}"),
        };
        bad("missing", "does not exist");
        bad("bin", "not a regular file");
        bad("notes.txt", "not executable");
        bad("escape", "outside the code folder");

        // Only bin/app is executable, but it is not at top level.
        let err = find_entrypoint(&code, "").unwrap_err();
        assert!(
            matches!(err, PackageError::EntrypointNeeded { found: 0, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("entrypoint is needed"));
        write("one", 0o700);
        assert_eq!(find_entrypoint(&code, "").unwrap(), code.join("one"));
        write("two", 0o755);
        let err = find_entrypoint(&code, "").unwrap_err();
        assert!(
            matches!(err, PackageError::EntrypointNeeded { found: 2, .. }),
            "{err}"
        );
    }

    #[test]
    fn zip_default_options_give_plain_file() {
        let fx = Fixture::new();
        let archive = fx.p("dos.zip");
        let mut zw = zip::ZipWriter::new(File::create(&archive).unwrap());
        zw.start_file("readme.txt", zip::write::SimpleFileOptions::default())
            .unwrap();
        zw.write_all(b"hello").unwrap();
        zw.finish().unwrap();
        let code = prepare(&archive, &fx.inst()).unwrap();
        assert_eq!(fs::read(code.join("readme.txt")).unwrap(), b"hello");
        assert_eq!(mode_of(&code.join("readme.txt")) & 0o111, 0);
    }
}
