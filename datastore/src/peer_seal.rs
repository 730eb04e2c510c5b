//! Sealed peer connections: the bytes of a transfer, encrypted and
//! authenticated, for clusters started with `--encrypt-transfers`.
//!
//! After the handshake of [`crate::peer_auth`], each direction of a sealed
//! connection is a sequence of records:
//!
//! ```text
//! u32 LE plaintext length L (1..=MAX_RECORD) ‖ L bytes of AES-256-GCM ciphertext ‖ 16-byte tag
//! ```
//!
//! Why this shape:
//! - each direction has its own key ([`crate::peer_auth::SessionKeys`]),
//!   fresh per connection, so the record counter alone is a nonce that
//!   never repeats under a key; a counter that would wrap ends the
//!   connection instead;
//! - the length header is the record's associated data, so a changed
//!   length fails authentication like a changed byte; reordered, replayed
//!   or dropped records fail too (their counter no longer matches);
//! - a reader whose buffer holds a whole record reads the ciphertext
//!   straight into it and decrypts in place: a pull decrypts into the
//!   object's block of the arena with no intermediate buffer. Smaller reads
//!   go through one record-sized buffer;
//! - a writer copies each record once into its buffer to encrypt it (the
//!   source is the arena, which must not change), so records are large
//!   ([`MAX_RECORD`]) to keep syscalls and per-record costs small.
//!
//! Invariants: bytes are handed to a reader only after their record
//! authenticated; after any error (I/O, a bad tag, a bad length) the
//! connection is unusable and the caller drops it (a failed read may have
//! left unauthenticated bytes in the caller's buffer, which the caller
//! discards: a pull aborts the object it was filling).
//! AES-GCM comes from `ring`, already linked for TLS, whose AES-NI and
//! CLMUL code keeps sealing fast.

use crate::peer_auth::{Handshake, Secret};
use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_256_GCM, NONCE_LEN};
use std::io::{self, Read, Write};

/// Largest plaintext in one record.
pub const MAX_RECORD: usize = 256 * 1024;
/// Bytes of a record's header (the plaintext length).
const HEADER: usize = 4;
/// Bytes of a record's authentication tag.
pub const TAG: usize = 16;

/// Which end of the connection this is: it picks which derived key seals
/// and which opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The end that connected (the puller).
    Client,
    /// The end that accepted.
    Server,
}

/// One direction's key and record counter.
struct Direction {
    key: LessSafeKey,
    counter: u64,
}

impl Direction {
    fn new(key: &[u8; 32]) -> io::Result<Direction> {
        let key = UnboundKey::new(&AES_256_GCM, key)
            .map_err(|_| io::Error::other("cannot make an AES-256-GCM key"))?;
        Ok(Direction {
            key: LessSafeKey::new(key),
            counter: 0,
        })
    }

    /// The nonce of the next record, counting it.
    fn next_nonce(&mut self) -> io::Result<Nonce> {
        let n = self.counter;
        self.counter = n.checked_add(1).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "a sealed peer connection ran out of record numbers",
            )
        })?;
        let mut bytes = [0u8; NONCE_LEN];
        bytes[NONCE_LEN - 8..].copy_from_slice(&n.to_be_bytes());
        Ok(Nonce::assume_unique_for_key(bytes))
    }
}

fn tampered() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "a sealed transfer record failed authentication: its bytes were changed, reordered or \
         replayed on the wire",
    )
}

/// The sealing state of one connection (both directions). The stream is
/// passed to each call, so the caller keeps owning it (and its timeouts).
pub struct Channel {
    tx: Direction,
    rx: Direction,
    /// The record being written (header, plaintext sealed in place, tag).
    wbuf: Vec<u8>,
    /// A record opened for a read smaller than it; `rpos..rbuf.len()` is
    /// what is left to hand out.
    rbuf: Vec<u8>,
    rpos: usize,
}

impl Channel {
    /// The channel of a connection whose handshake `hs` this node ran as
    /// `side`, with the cluster `secret`.
    pub fn new(hs: &Handshake, secret: &Secret, side: Side) -> io::Result<Channel> {
        let keys = hs.keys(secret);
        let (tx, rx) = match side {
            Side::Client => (keys.client_to_server, keys.server_to_client),
            Side::Server => (keys.server_to_client, keys.client_to_server),
        };
        Ok(Channel {
            tx: Direction::new(&tx)?,
            rx: Direction::new(&rx)?,
            wbuf: Vec::new(),
            rbuf: Vec::new(),
            rpos: 0,
        })
    }

    /// Seals up to [`MAX_RECORD`] bytes of `buf` as one record and writes it
    /// whole; returns how many bytes of `buf` it carried.
    pub fn write<W: Write>(&mut self, stream: &mut W, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let n = buf.len().min(MAX_RECORD);
        let header = (n as u32).to_le_bytes();
        self.wbuf.clear();
        self.wbuf.extend_from_slice(&header);
        self.wbuf.extend_from_slice(&buf[..n]);
        let nonce = self.tx.next_nonce()?;
        let tag = self
            .tx
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(header), &mut self.wbuf[HEADER..])
            .map_err(|_| io::Error::other("cannot seal a transfer record"))?;
        self.wbuf.extend_from_slice(tag.as_ref());
        stream.write_all(&self.wbuf)?;
        Ok(n)
    }

    /// Reads plaintext into `buf`: what is left of an opened record, else
    /// the next record (straight into `buf` when it fits). `Ok(0)` only at a
    /// clean end of the stream between records.
    pub fn read<R: Read>(&mut self, stream: &mut R, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.rpos < self.rbuf.len() {
            let n = buf.len().min(self.rbuf.len() - self.rpos);
            buf[..n].copy_from_slice(&self.rbuf[self.rpos..self.rpos + n]);
            self.rpos += n;
            return Ok(n);
        }
        let mut header = [0u8; HEADER];
        // A stream that ends before a record starts is a clean close; one
        // that ends inside a record is an error.
        let first = loop {
            match stream.read(&mut header) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => break r?,
            }
        };
        if first == 0 {
            return Ok(0);
        }
        stream.read_exact(&mut header[first..])?;
        let len = u32::from_le_bytes(header) as usize;
        if len == 0 || len > MAX_RECORD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a sealed transfer record claims {len} bytes (1..={MAX_RECORD} allowed)"),
            ));
        }
        let mut tag = [0u8; TAG];
        let nonce = self.rx.next_nonce()?;
        if buf.len() >= len {
            let dst = &mut buf[..len];
            stream.read_exact(dst)?;
            stream.read_exact(&mut tag)?;
            self.rx
                .key
                .open_in_place_separate_tag(nonce, Aad::from(header), Tag::from(tag), dst, 0..)
                .map_err(|_| tampered())?;
            return Ok(len);
        }
        self.rbuf.resize(len, 0);
        self.rpos = 0;
        stream.read_exact(&mut self.rbuf)?;
        stream.read_exact(&mut tag)?;
        let opened = self.rx.key.open_in_place_separate_tag(
            nonce,
            Aad::from(header),
            Tag::from(tag),
            &mut self.rbuf,
            0..,
        );
        if opened.is_err() {
            self.rbuf.clear();
            return Err(tampered());
        }
        let n = buf.len();
        buf.copy_from_slice(&self.rbuf[..n]);
        self.rpos = n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer_auth;
    use std::os::unix::net::UnixStream;

    fn secret() -> Secret {
        Secret::from_bytes(vec![11; 32]).expect("secret")
    }

    /// A client and a server channel over one real handshake on a socket
    /// pair, with the streams and the server's handshake (to make more
    /// readers of the same connection's keys).
    #[allow(clippy::type_complexity)]
    fn pair() -> ((Channel, UnixStream), (Channel, UnixStream), Handshake) {
        let (mut a, mut b) = UnixStream::pair().expect("pair");
        let t = std::thread::spawn(move || {
            let mut magic = [0u8; 4];
            b.read_exact(&mut magic).expect("magic");
            let hs = peer_auth::server(&mut b, &secret(), &magic).expect("server");
            (
                Channel::new(&hs, &secret(), Side::Server).expect("chan"),
                b,
                hs,
            )
        });
        let hs = peer_auth::client(&mut a, &secret(), b"TEST").expect("client");
        let c = Channel::new(&hs, &secret(), Side::Client).expect("chan");
        let (s, b, shs) = t.join().expect("server");
        assert_eq!(hs, shs, "both ends saw the same handshake");
        ((c, a), (s, b), shs)
    }

    /// What the client end puts on the wire for `messages`, one record each.
    fn sealed(messages: &[&[u8]]) -> (Vec<u8>, Handshake) {
        let ((mut c, mut cs), (_s, mut ss), hs) = pair();
        for m in messages {
            write_all(&mut c, &mut cs, m);
        }
        drop(cs);
        let mut wire = Vec::new();
        ss.read_to_end(&mut wire).expect("wire");
        (wire, hs)
    }

    fn write_all(c: &mut Channel, s: &mut UnixStream, mut buf: &[u8]) {
        while !buf.is_empty() {
            let n = c.write(s, buf).expect("write");
            buf = &buf[n..];
        }
    }

    fn read_n(c: &mut Channel, s: &mut UnixStream, n: usize, chunk: usize) -> Vec<u8> {
        let mut out = vec![0u8; n];
        let mut got = 0;
        while got < n {
            let end = (got + chunk).min(n);
            let k = c.read(s, &mut out[got..end]).expect("read");
            assert!(k > 0, "early end after {got} bytes");
            got += k;
        }
        out
    }

    #[test]
    fn bytes_round_trip_both_ways_in_any_read_sizes() {
        let ((mut c, mut cs), (mut s, mut ss), _) = pair();
        let data: Vec<u8> = (0..(MAX_RECORD * 2 + 1234))
            .map(|i| (i * 7) as u8)
            .collect();
        let sent = data.clone();
        let w = std::thread::spawn(move || {
            write_all(&mut s, &mut ss, &sent);
            write_all(&mut s, &mut ss, b"second");
            let back = read_n(&mut s, &mut ss, 5, 5);
            assert_eq!(back, b"hello");
        });
        // Whole-record reads (decrypted in place) and small reads alike.
        let got = read_n(&mut c, &mut cs, data.len(), 100_000);
        assert_eq!(got, data);
        assert_eq!(read_n(&mut c, &mut cs, 6, 1), b"second");
        write_all(&mut c, &mut cs, b"hello");
        w.join().expect("server side");
        // A clean close between records reads as the end.
        let mut b = [0u8; 8];
        assert_eq!(c.read(&mut cs, &mut b).expect("eof"), 0);
    }

    #[test]
    fn the_wire_never_carries_the_plaintext() {
        let data = b"a secret pattern that must not be seen ".repeat(100);
        let (wire, _) = sealed(&[&data]);
        assert_eq!(wire.len(), data.len() + HEADER + TAG);
        assert!(
            !wire.windows(16).any(|w| w == &data[..16]),
            "plaintext seen on the wire"
        );
    }

    fn server_reader(hs: &Handshake) -> Channel {
        Channel::new(hs, &secret(), Side::Server).expect("reader")
    }

    #[test]
    fn any_changed_byte_of_a_record_is_refused() {
        let (wire, hs) = sealed(&[b"0123456789abcdef"]);
        let mut good: &[u8] = &wire;
        let mut out = [0u8; 64];
        assert_eq!(
            server_reader(&hs)
                .read(&mut good, &mut out)
                .expect("intact"),
            16
        );
        // Each flipped bit, in the header, the ciphertext or the tag, is
        // refused, for whole-record and partial reads alike.
        for at in 0..wire.len() {
            for want in [64usize, 3] {
                let mut bad = wire.clone();
                bad[at] ^= 0x40;
                let mut src: &[u8] = &bad;
                let r = server_reader(&hs).read(&mut src, &mut out[..want]);
                assert!(r.is_err(), "flipped byte {at} accepted ({want}-byte read)");
            }
        }
    }

    #[test]
    fn replayed_reordered_or_foreign_records_are_refused() {
        let (wire, hs) = sealed(&[b"first", b"second"]);
        let (r1, r2) = wire.split_at(HEADER + 5 + TAG);
        let mut out = [0u8; 16];
        // In order: both open.
        let mut rd = server_reader(&hs);
        let mut src: &[u8] = &wire;
        assert_eq!(rd.read(&mut src, &mut out).expect("first"), 5);
        assert_eq!(rd.read(&mut src, &mut out).expect("second"), 6);
        // The second record first: refused.
        let mut src: &[u8] = r2;
        assert!(server_reader(&hs).read(&mut src, &mut out).is_err());
        // The first record twice: the replay is refused.
        let twice = [r1, r1].concat();
        let mut rd = server_reader(&hs);
        let mut src: &[u8] = &twice;
        assert_eq!(rd.read(&mut src, &mut out).expect("first"), 5);
        assert!(rd.read(&mut src, &mut out).is_err(), "replay accepted");
        // Records of another connection (other nonces, so other keys).
        let (_, other) = sealed(&[b"x"]);
        let mut src: &[u8] = r1;
        assert!(server_reader(&other).read(&mut src, &mut out).is_err());
    }

    #[test]
    fn oversized_and_empty_records_are_refused_before_reading_them() {
        let (_, hs) = sealed(&[]);
        let mut s = server_reader(&hs);
        for len in [0u32, MAX_RECORD as u32 + 1, u32::MAX] {
            let mut src: &[u8] = &len.to_le_bytes();
            let e = s.read(&mut src, &mut [0u8; 16]).expect_err("refused");
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        }
    }
}
