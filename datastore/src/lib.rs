//! yr data worker: a shared-memory object store for one node.
//!
//! Function processes on a node exchange objects through one worker: a
//! producer creates an object directly in shared memory, seals it, and any
//! process on the node reads it in place (zero copy) while holding a pin.
//! Under memory pressure unpinned objects move to disk (io_uring) and come
//! back transparently on the next get.
//!
//! Layout, roughly from the bytes up (no two modules import each other;
//! `tests/tests/architecture.rs` checks):
//! - [`arena`]: the memfd and its mappings; [`alloc`]: the TLSF allocator of
//!   arena ranges; [`id`]: object IDs and node tags;
//! - `table`: the object table (slab, index, LRU list) and `choose_victims`,
//!   the pure eviction decision;
//! - [`spill`]: spill files, checksums and the io_uring / pwrite engines;
//! - [`store`]: object lifecycle, pins, KV names; applies the eviction
//!   decision and does the spill / restore I/O;
//! - [`config`]: settings (serde, documented defaults) validated into the
//!   runtime [`WorkerConfig`] / [`StoreConfig`];
//! - [`protocol`]: the versioned, length-prefixed wire format (tags declared
//!   once for encode and decode);
//! - `listen`: the poll/accept loop both listeners share;
//! - [`peer_auth`]: the cluster secret and the challenge–response every
//!   transfer connection starts with;
//! - [`transfer`]: moving objects between nodes' workers, and freeing them
//!   everywhere (its peer protocol lives there too);
//! - [`server`]: the Unix-socket server (`yr component data-worker`);
//! - [`client`]: the client library with zero-copy guards ([`fdpass`]
//!   carries the arena's fd);
//! - [`error`]: the crate's error types (client errors, typed start-up
//!   errors, config errors naming the field).

pub mod alloc;
pub mod arena;
pub mod client;
pub mod config;
pub mod error;
pub mod fdpass;
pub mod id;
mod listen;
pub mod peer_auth;
pub mod peer_seal;
pub mod protocol;
pub mod server;
pub mod spill;
pub mod store;
mod table;
pub mod transfer;

pub use client::{Client, ObjectBuilder, ObjectGuard};
pub use config::{StoreConfig, WorkerConfig, WorkerSettings};
pub use error::{ConfigError, Error, Result, StoreError, WorkerError};
pub use id::{NodeTag, ObjectId};
pub use protocol::{ErrorCode, StoreStats};
pub use server::{Shutdown, Worker};
pub use store::Store;

/// Parses a byte size such as `512MiB`, `4GiB`, `100MB`, `64k` or `1048576`.
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| {
        format!("invalid size {s:?}: expected a number with an optional unit like 512MiB")
    })?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" | "ki" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" | "mi" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" | "gi" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" | "ti" => 1 << 40,
        other => {
            return Err(format!(
                "invalid size {s:?}: unknown unit {other:?} (use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)"
            ))
        }
    };
    let bytes = value * mult as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("invalid size {s:?}: out of range"));
    }
    Ok(bytes as u64)
}

/// Total physical memory of this machine in bytes.
pub fn total_memory() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    if pages <= 0 || page <= 0 {
        return 0;
    }
    pages as u64 * page as u64
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("4GiB"), Ok(4 << 30));
        assert_eq!(parse_size("100MB"), Ok(100_000_000));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("12 parsecs").is_err());
    }
}
