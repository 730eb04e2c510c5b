//! Object identifiers.
//!
//! An [`ObjectId`] is a fixed-size 24-byte binary ID. Fixed size keeps the
//! per-object metadata small and the wire format trivial. The first eight
//! bytes are reserved for the owner node (so a later cross-node layer can find
//! the primary copy without a central lookup); the rest is unique per object.

use std::fmt;

/// Length of an [`ObjectId`] in bytes.
pub const OBJECT_ID_LEN: usize = 24;

/// A fixed-size binary object identifier.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ObjectId(pub [u8; OBJECT_ID_LEN]);

impl ObjectId {
    /// Builds an ID from an owner node tag and a 128-bit unique part.
    pub fn new(node: u64, unique: u128) -> Self {
        let mut b = [0u8; OBJECT_ID_LEN];
        b[..8].copy_from_slice(&node.to_be_bytes());
        b[8..].copy_from_slice(&unique.to_be_bytes());
        ObjectId(b)
    }

    /// A fresh random ID for the given node tag (random enough to never
    /// collide in practice: 128 bits from the OS-seeded hasher state, a
    /// counter and the clock).
    pub fn random(node: u64) -> Self {
        use std::collections::hash_map::RandomState;
        use std::hash::{BuildHasher, Hasher};
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let mut h1 = RandomState::new().build_hasher();
        h1.write_u64(n);
        h1.write_u64(nanos);
        h1.write_u32(std::process::id());
        let mut h2 = RandomState::new().build_hasher();
        h2.write_u64(h1.finish());
        h2.write_u64(n);
        let unique = ((h1.finish() as u128) << 64) | (h2.finish() ^ n) as u128;
        ObjectId::new(node, unique)
    }

    /// The owner node tag.
    pub fn node(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[..8]);
        u64::from_be_bytes(b)
    }

    /// Lower-case hex form (48 characters).
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(OBJECT_ID_LEN * 2);
        for b in self.0 {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    /// Parses the hex form; shorter input is accepted and zero-padded on the
    /// left, so `"2a"` is a valid ID in scripts and tests.
    pub fn from_hex(s: &str) -> Option<Self> {
        let s = s.trim();
        if s.is_empty() || s.len() > OBJECT_ID_LEN * 2 || !s.len().is_multiple_of(2) {
            return None;
        }
        let mut b = [0u8; OBJECT_ID_LEN];
        let start = OBJECT_ID_LEN - s.len() / 2;
        for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
            let hex = std::str::from_utf8(chunk).ok()?;
            b[start + i] = u8::from_str_radix(hex, 16).ok()?;
        }
        Some(ObjectId(b))
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectId({})", self.to_hex())
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_short_form() {
        let id = ObjectId::random(7);
        assert_eq!(ObjectId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(id.node(), 7);
        let short = ObjectId::from_hex("2a").expect("short hex parses");
        assert_eq!(short.0[OBJECT_ID_LEN - 1], 0x2a);
        assert!(ObjectId::from_hex("xyz").is_none());
        assert!(ObjectId::from_hex(&"0".repeat(50)).is_none());
    }

    #[test]
    fn random_ids_differ() {
        let a = ObjectId::random(1);
        let b = ObjectId::random(1);
        assert_ne!(a, b);
    }
}
