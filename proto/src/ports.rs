//! Free TCP ports for processes that are told their port before they bind it: a node's
//! components under `yr start --ports auto`, `etcd`, a test's `chromedriver`.
//!
//! Binding port 0 and handing the number on is racy: between the pick and the child's bind, the
//! kernel may give the same port to any other port-0 bind or outgoing connection on the host (a
//! parallel test run does thousands of both). So a port handed out here holds three things at
//! the time it is picked:
//! - it lies outside the kernel's ephemeral range (`ip_local_port_range`), which the kernel
//!   never gives out on its own, and outside the well-known low ports and the caller's `avoid`
//!   list (yr's standard ports);
//! - it is claimed for [`CLAIM_FOR`] by a file in a per-user folder, created exclusively, so two
//!   pickers on this host (concurrent `yr start`s) never hand out the same port while a child
//!   may still be starting; an older claim is taken over atomically (one rename wins);
//! - nothing listens on it: it binds on every address at the time of the check.
//!
//! What remains is a program that binds a fixed port in the same range at the same moment;
//! the child then fails to start, and its log says the address is in use.

use std::collections::HashSet;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a claimed port stays reserved for the process it was picked for: long enough for a
/// node's components to start one after the other and bind.
pub const CLAIM_FOR: Duration = Duration::from_secs(180);

/// Claims older than this are removed.
const PRUNE_AFTER: Duration = Duration::from_secs(30 * 60);

/// Ports below this are left to the system's well-known and registered services.
const LOWEST: u16 = 10_000;

/// Linux's default ephemeral range, when `/proc` does not say.
const DEFAULT_EPHEMERAL: (u16, u16) = (32_768, 60_999);

/// `n` distinct free ports (see the module header for what "free" promises), none in `avoid`.
pub fn free(n: usize, avoid: &[u16]) -> io::Result<Vec<u16>> {
    let dir = claims_dir()?;
    prune(&dir);
    free_in(n, avoid, &dir, ephemeral_range())
}

/// Removes claims long expired, so the folder does not keep one file per port ever picked. A
/// claim this old is never one a picker has just taken over (those are fresh), short of a
/// takeover between the age check and the removal.
fn prune(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let age = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok());
        if age.is_some_and(|a| a > PRUNE_AFTER) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

fn free_in(n: usize, avoid: &[u16], claims: &Path, ephemeral: (u16, u16)) -> io::Result<Vec<u16>> {
    let avoid: HashSet<u16> = avoid.iter().copied().collect();
    let candidates: Vec<u16> = (LOWEST..=u16::MAX)
        .filter(|p| !(ephemeral.0..=ephemeral.1).contains(p) && !avoid.contains(p))
        .collect();
    if candidates.is_empty() {
        return Err(io::Error::other(format!(
            "no port can be picked: the ephemeral range {}-{} covers every port from {LOWEST}",
            ephemeral.0, ephemeral.1
        )));
    }
    // A random starting point, so that concurrent pickers seldom meet on the same claims.
    let start = (seed() % candidates.len() as u64) as usize;
    let mut picked = Vec::with_capacity(n);
    for i in 0..candidates.len() {
        if picked.len() == n {
            break;
        }
        let port = candidates[(start + i) % candidates.len()];
        if claim(claims, port)? && listenable(port) {
            picked.push(port);
        }
    }
    if picked.len() < n {
        return Err(io::Error::other(format!(
            "only {} of {n} free ports found outside the ephemeral range {}-{} (claims in {})",
            picked.len(),
            ephemeral.0,
            ephemeral.1,
            claims.display()
        )));
    }
    Ok(picked)
}

/// Whether nothing listens on `port` now, on any address.
fn listenable(port: u16) -> bool {
    TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).is_ok()
}

/// Claims `port` for [`CLAIM_FOR`]; false when another picker holds it.
fn claim(dir: &Path, port: u16) -> io::Result<bool> {
    let file = dir.join(port.to_string());
    match create_new(&file) {
        Ok(()) => return Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(claim_error(&file, e)),
    }
    let age = std::fs::metadata(&file)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok());
    if age.is_none_or(|a| a < CLAIM_FOR) {
        return Ok(false);
    }
    // An expired claim: moving it aside succeeds for one picker only, and that picker then
    // races fresh pickers for the name through `create_new` like everyone else.
    let aside = dir.join(format!(".{port}.{}.{}", std::process::id(), seed()));
    if std::fs::rename(&file, &aside).is_err() {
        return Ok(false);
    }
    let _ = std::fs::remove_file(&aside);
    match create_new(&file) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(claim_error(&file, e)),
    }
}

fn create_new(file: &Path) -> io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(file)
        .map(drop)
}

fn claim_error(file: &Path, e: io::Error) -> io::Error {
    io::Error::new(
        e.kind(),
        format!("cannot claim a port with {}: {e}", file.display()),
    )
}

/// The per-user folder of port claims (per user, so that no user can block another's picks).
fn claims_dir() -> io::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let uid = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("yr-port-claims-{uid}"));
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => Ok(dir),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(dir),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!(
                "cannot create the port claims folder {}: {e}",
                dir.display()
            ),
        )),
    }
}

/// The kernel's ephemeral port range.
fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| parse_range(&s))
        .unwrap_or(DEFAULT_EPHEMERAL)
}

fn parse_range(s: &str) -> Option<(u16, u16)> {
    let mut it = s.split_whitespace().map(str::parse::<u16>);
    let (lo, hi) = (it.next()?.ok()?, it.next()?.ok()?);
    (lo <= hi).then_some((lo, hi))
}

/// Entropy enough to spread concurrent pickers: the clock's nanoseconds mixed with the pid.
fn seed() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    // splitmix64's finalizer: nearby inputs give unrelated outputs.
    let mut z = nanos ^ (u64::from(std::process::id()) << 32);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("yr-ports-test-{}-{}", std::process::id(), seed()));
        std::fs::create_dir_all(&d).expect("test claims folder");
        d
    }

    #[test]
    fn picks_distinct_ports_outside_the_ephemeral_range_and_the_avoided_ones() {
        let d = dir();
        let avoid: Vec<u16> = (LOWEST..LOWEST + 5000).collect();
        // Candidates 15000-19999 only: the other tests bind-check ports above 60999.
        let p = free_in(12, &avoid, &d, (20_000, u16::MAX)).expect("ports");
        assert_eq!(p.len(), 12);
        assert_eq!(p.iter().collect::<HashSet<_>>().len(), 12, "{p:?}");
        for port in &p {
            assert!(
                (15_000..20_000).contains(port),
                "{port} lies in the ephemeral or avoided range"
            );
        }
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn a_claimed_port_is_not_handed_out_again_until_the_claim_expires() {
        // The claims alone (no bind check, which other tests' listeners could fail).
        let d = dir();
        assert!(claim(&d, 20_001).expect("claim"));
        assert!(!claim(&d, 20_001).expect("claim again"), "already claimed");
        assert!(claim(&d, 20_002).expect("another port"));
        // Expire the first claim by dating it back: the next picker takes it over, once.
        let old = SystemTime::now() - CLAIM_FOR - Duration::from_secs(1);
        let f = std::fs::File::options()
            .write(true)
            .open(d.join("20001"))
            .expect("claim file");
        f.set_modified(old).expect("date the claim back");
        assert!(claim(&d, 20_001).expect("expired claim"));
        assert!(
            !claim(&d, 20_001).expect("taken over"),
            "the takeover is a fresh claim"
        );
        assert!(!claim(&d, 20_002).expect("live claim"));
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn a_port_something_listens_on_is_skipped() {
        let d = dir();
        let busy = TcpListener::bind("0.0.0.0:0").expect("bind");
        let port = busy.local_addr().expect("addr").port();
        // The only candidate is the busy port.
        let avoid: Vec<u16> = (LOWEST..=u16::MAX).filter(|p| *p != port).collect();
        let e = free_in(1, &avoid, &d, (1, 2)).expect_err("busy");
        assert!(e.to_string().contains("only 0 of 1"), "{e}");
        drop(busy);
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn long_expired_claims_are_pruned_and_live_ones_kept() {
        let d = dir();
        for name in ["20001", "20002"] {
            std::fs::write(d.join(name), "").expect("claim");
        }
        let f = std::fs::File::options()
            .write(true)
            .open(d.join("20001"))
            .expect("claim file");
        f.set_modified(SystemTime::now() - PRUNE_AFTER - Duration::from_secs(1))
            .expect("date the claim back");
        prune(&d);
        assert!(!d.join("20001").exists());
        assert!(d.join("20002").exists());
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn the_range_is_read_from_procfs_text() {
        assert_eq!(parse_range("32768\t60999\n"), Some((32_768, 60_999)));
        assert_eq!(parse_range("9 3"), None);
        assert_eq!(parse_range("x"), None);
    }
}
