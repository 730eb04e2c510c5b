//! The node secret that a node's proxy and agent share, and the per-instance secrets derived
//! from it: what lets the proxy's instance socket tell the process the agent started for an
//! instance from any other process of the same user that names that instance.
//!
//! - The proxy creates the node secret (256 bits from the kernel) when it binds its instance
//!   socket and writes it to a 0600 file in the node's folder ([`NodeSecret::create`]); the
//!   agent, which starts after its proxy, reads that file and removes it
//!   ([`NodeSecret::take`]), so function processes (which the agent starts later) never find it
//!   on disk.
//! - The agent gives each process it starts `YR_INSTANCE_SECRET` =
//!   hex(HMAC-SHA256(node secret, instance ID)) ([`NodeSecret::for_instance`]); the runtime sends
//!   it in its hello and drops it from its environment; the proxy recomputes it and compares in
//!   constant time ([`NodeSecret::verify`]).
//!
//! Invariant: the node secret itself never leaves the proxy's and agent's memory once the file
//! is taken; a process learns only its own instance's secret, from which no other is derived.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::Error;

/// The environment variable through which a function process gets its instance's secret.
pub const INSTANCE_SECRET_ENV: &str = "YR_INSTANCE_SECRET";

/// Bytes of a node secret.
const LEN: usize = 32;

/// A node's secret (kept out of `Debug` output).
pub struct NodeSecret([u8; LEN]);

impl std::fmt::Debug for NodeSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeSecret(..)")
    }
}

impl NodeSecret {
    /// A fresh secret from the kernel's random source.
    pub fn generate() -> Result<NodeSecret, Error> {
        let mut raw = [0u8; LEN];
        yr_datastore::peer_auth::random(&mut raw)
            .map_err(|e| Error::io("no randomness for the node secret", e))?;
        Ok(NodeSecret(raw))
    }

    /// A fresh secret, written (hex) to a new file at `path` readable by this user only; a file
    /// left there by an earlier proxy is replaced.
    pub fn create(path: &Path) -> Result<NodeSecret, Error> {
        let secret = NodeSecret::generate()?;
        let what = |e| {
            Error::io(
                format!("cannot write the node secret {}", path.display()),
                e,
            )
        };
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(what(e)),
        }
        // create_new: never write through a link planted at `path`.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(what)?;
        f.write_all(hex(&secret.0).as_bytes()).map_err(what)?;
        Ok(secret)
    }

    /// Reads the secret its proxy wrote at `path` and removes the file.
    pub fn take(path: &Path) -> Result<NodeSecret, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::io(
                format!(
                    "cannot read the node secret {} (the node's proxy writes it when it starts: \
                     start the agent after its proxy, as `yr start` does)",
                    path.display()
                ),
                e,
            )
        })?;
        std::fs::remove_file(path)
            .map_err(|e| Error::io(format!("cannot remove {}", path.display()), e))?;
        let raw = unhex(text.trim())
            .filter(|b| b.len() == LEN)
            .ok_or_else(|| {
                Error::invalid(
                    "instance_secret_file",
                    format!("{} does not hold a node secret", path.display()),
                )
            })?;
        let mut s = [0u8; LEN];
        s.copy_from_slice(&raw);
        Ok(NodeSecret(s))
    }

    fn mac(&self, instance_id: &str) -> Hmac<Sha256> {
        // HMAC takes a key of any length: this cannot fail.
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        m.update(instance_id.as_bytes());
        m
    }

    /// The secret of instance `instance_id` (64 hex digits).
    pub fn for_instance(&self, instance_id: &str) -> String {
        hex(&self.mac(instance_id).finalize().into_bytes())
    }

    /// Whether `presented` is the secret of `instance_id`, compared in constant time.
    pub fn verify(&self, instance_id: &str, presented: &str) -> bool {
        match unhex(presented) {
            Some(tag) => self.mac(instance_id).verify_slice(&tag).is_ok(),
            None => false,
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn an_instance_secret_verifies_for_its_instance_only() {
        let s = NodeSecret::generate().expect("secret");
        let a = s.for_instance("f-1");
        assert_eq!(a.len(), 64);
        assert!(s.verify("f-1", &a));
        assert!(!s.verify("f-2", &a), "one instance's secret opens another");
        assert!(!s.verify("f-1", &s.for_instance("f-2")));
        assert!(!s.verify("f-1", ""));
        assert!(!s.verify("f-1", &a[..62]));
        assert!(!s.verify("f-1", "zz"));
        let other = NodeSecret::generate().expect("secret");
        assert!(!other.verify("f-1", &a), "another node's secret verifies");
    }

    #[test]
    fn the_file_is_private_and_taken_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("instance.key");
        std::fs::write(&path, "stale").expect("write");
        let made = NodeSecret::create(&path).expect("create");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        let taken = NodeSecret::take(&path).expect("take");
        assert_eq!(taken.for_instance("x"), made.for_instance("x"));
        assert!(!path.exists(), "the agent leaves no secret on disk");
        let e = NodeSecret::take(&path).expect_err("gone").to_string();
        assert!(e.contains("start the agent after its proxy"), "{e}");
        std::fs::write(&path, "not hex").expect("write");
        assert!(NodeSecret::take(&path).is_err());
    }
}
