//! Object identifiers.
//!
//! An [`ObjectId`] is a fixed-size 24-byte binary ID. Fixed size keeps the
//! per-object metadata small and the wire format trivial. The first eight
//! bytes are the [`NodeTag`] of the data worker holding the primary copy: its
//! transfer address plus a per-start epoch, so any node can fetch the object
//! straight from its primary without a central lookup, and an object made
//! before that worker restarted is recognised as lost instead of waited for.
//! The other sixteen bytes are unique per object.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};

/// Where an object's primary copy lives: IPv4 address (32 bits), transfer
/// port (16 bits) and the epoch of that data worker's start (16 bits, never
/// zero). A port of zero means a worker without a transfer listener, whose
/// objects no other node can fetch.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct NodeTag(pub u64);

impl NodeTag {
    /// The tag of a worker listening for peers at `addr`, started at `epoch`.
    pub fn new(addr: SocketAddrV4, epoch: u16) -> Self {
        let ip = u32::from(*addr.ip()) as u64;
        NodeTag((ip << 32) | ((addr.port() as u64) << 16) | epoch.max(1) as u64)
    }

    /// A fresh non-zero epoch (different across restarts in practice).
    pub fn fresh_epoch() -> u16 {
        let r = ObjectId::random(0).0;
        u16::from_be_bytes([r[22], r[23]]).max(1)
    }

    /// The peer address to fetch from, if the worker has one.
    pub fn addr(&self) -> Option<SocketAddrV4> {
        let port = ((self.0 >> 16) & 0xffff) as u16;
        (port != 0).then(|| SocketAddrV4::new(Ipv4Addr::from((self.0 >> 32) as u32), port))
    }

    /// The epoch part.
    pub fn epoch(&self) -> u16 {
        (self.0 & 0xffff) as u16
    }

    /// Whether two tags name the same address (possibly different starts).
    pub fn same_address(&self, other: NodeTag) -> bool {
        self.0 >> 16 == other.0 >> 16
    }
}

impl fmt::Display for NodeTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr() {
            Some(a) => write!(f, "{a}"),
            None => write!(f, "local-only node (epoch {})", self.epoch()),
        }
    }
}

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

    /// The node tag of the data worker holding the primary copy.
    pub fn tag(&self) -> NodeTag {
        NodeTag(self.node())
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
    fn node_tags_carry_the_address() {
        let addr = SocketAddrV4::new(Ipv4Addr::new(10, 1, 2, 3), 31502);
        let t = NodeTag::new(addr, 77);
        assert_eq!(t.addr(), Some(addr));
        assert_eq!(t.epoch(), 77);
        let id = ObjectId::random(t.0);
        assert_eq!(id.tag(), t);
        assert!(t.same_address(NodeTag::new(addr, 78)));
        assert_ne!(t, NodeTag::new(addr, 78));
        assert_eq!(NodeTag(5).addr(), None);
        assert_eq!(NodeTag::new(addr, 0).epoch(), 1, "epoch zero is never used");
    }

    #[test]
    fn random_ids_differ() {
        let a = ObjectId::random(1);
        let b = ObjectId::random(1);
        assert_ne!(a, b);
    }
}
