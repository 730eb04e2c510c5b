//! Who may use a transfer port: a challenge–response on the cluster secret.
//!
//! Every data worker of a cluster holds the same secret `K` (a file, readable
//! by its owner only, that `yr start --master` creates). A connection to a
//! transfer port is served only after both ends have shown they hold `K`,
//! each over a nonce the other just chose:
//!
//! ```text
//! client → server   Nc                              (32 random bytes, after the peer magic)
//! server → client   Ns                              (32 random bytes)
//! client → server   HMAC-SHA256(K, "yr-peer client" ‖ M ‖ Nc ‖ Ns)
//! server → client   HMAC-SHA256(K, "yr-peer server" ‖ M ‖ Nc ‖ Ns)   only if the client's tag holds
//! ```
//!
//! `M` is the peer magic the client opened with; it names the protocol
//! version and whether the connection is sealed (see the `peer_seal` module),
//! so a man in the middle cannot turn a sealed connection into a plain one
//! without both tags failing.
//!
//! Why this shape:
//! - each side's tag covers a nonce the *other* side chose fresh for this
//!   connection, so a recorded handshake cannot be replayed in either
//!   direction;
//! - the two directions use different labels, so a server's tag cannot be
//!   reflected back as a client's (or the reverse);
//! - the server proves itself last, so a stranger learns nothing from the
//!   port but one random nonce, and tags are compared in constant time;
//! - a puller checks the server's tag before it reads any reply, so a
//!   process squatting on a member's address cannot feed it objects.
//!
//! What it does not do by itself: encrypt or authenticate the bytes after
//! the handshake. A sealed connection does that with keys derived here
//! ([`Handshake::keys`]); on a plain one, someone who can rewrite traffic
//! between two nodes can still tamper with a transfer (see the README).

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::io::{self, Read, Write};
use std::path::Path;

type HmacSha256 = Hmac<Sha256>;

/// Length of each nonce and each tag on the wire.
pub const NONCE_LEN: usize = 32;
/// Length of an HMAC-SHA256 tag.
pub const TAG_LEN: usize = 32;
/// Fewest secret bytes accepted (the size `create_secret_file` writes).
pub const MIN_SECRET_LEN: usize = 32;

const CLIENT_LABEL: &[u8] = b"yr-peer client";
const SERVER_LABEL: &[u8] = b"yr-peer server";
const CLIENT_KEY_LABEL: &[u8] = b"yr-peer key client-to-server";
const SERVER_KEY_LABEL: &[u8] = b"yr-peer key server-to-client";

/// What a finished handshake leaves behind: the transcript both sides saw,
/// from which a sealed connection derives its keys.
#[derive(Clone, PartialEq, Eq)]
pub struct Handshake {
    magic: Vec<u8>,
    client_nonce: [u8; NONCE_LEN],
    server_nonce: [u8; NONCE_LEN],
}

impl std::fmt::Debug for Handshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Handshake({:?})", String::from_utf8_lossy(&self.magic))
    }
}

/// One key per direction, both derived from the cluster secret and the two
/// fresh nonces of one handshake: no two connections (and no two
/// directions of one) share a key, so per-connection counters can serve as
/// nonces without ever repeating under one key.
pub struct SessionKeys {
    /// Seals what the connecting side sends.
    pub client_to_server: [u8; 32],
    /// Seals what the accepting side sends.
    pub server_to_client: [u8; 32],
}

impl Handshake {
    /// The keys of this connection. HMAC-SHA256 keyed by the (uniformly
    /// random) cluster secret is a PRF, so its outputs over distinct labels
    /// and this handshake's nonces are independent keys.
    pub fn keys(&self, secret: &Secret) -> SessionKeys {
        let derive = |label: &[u8]| -> [u8; 32] {
            secret
                .tag_over(label, &self.magic, &self.client_nonce, &self.server_nonce)
                .finalize()
                .into_bytes()
                .into()
        };
        SessionKeys {
            client_to_server: derive(CLIENT_KEY_LABEL),
            server_to_client: derive(SERVER_KEY_LABEL),
        }
    }
}

/// The cluster secret, held in memory. Its `Debug` never prints the bytes.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

impl Secret {
    /// A secret from raw bytes; refuses fewer than [`MIN_SECRET_LEN`].
    pub fn from_bytes(bytes: Vec<u8>) -> io::Result<Secret> {
        if bytes.len() < MIN_SECRET_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the cluster secret has {} bytes; at least {MIN_SECRET_LEN} are needed",
                    bytes.len()
                ),
            ));
        }
        Ok(Secret(bytes))
    }

    /// Reads a secret file: hex text (whitespace around it ignored), owned by
    /// this user and readable by nobody else.
    pub fn load(path: &Path) -> io::Result<Secret> {
        use std::os::unix::fs::MetadataExt;
        let named = |e: io::Error| {
            io::Error::new(e.kind(), format!("cluster secret {}: {e}", path.display()))
        };
        let meta = std::fs::metadata(path).map_err(named)?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        if meta.uid() != me {
            return Err(named(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("owned by uid {}, not by this user ({me})", meta.uid()),
            )));
        }
        if meta.mode() & 0o077 != 0 {
            return Err(named(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "mode {:o} lets other users read it; it must be 0600",
                    meta.mode() & 0o777
                ),
            )));
        }
        let text = std::fs::read_to_string(path).map_err(named)?;
        let bytes = from_hex(text.trim()).ok_or_else(|| {
            named(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a hex string",
            ))
        })?;
        Secret::from_bytes(bytes).map_err(named)
    }

    fn tag_over(
        &self,
        label: &[u8],
        magic: &[u8],
        client: &[u8; NONCE_LEN],
        server: &[u8; NONCE_LEN],
    ) -> HmacSha256 {
        // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
        let mut m = match HmacSha256::new_from_slice(&self.0) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC accepts every key length"),
        };
        m.update(label);
        // The labels and the magic are fixed-length per use, so the
        // concatenation is unambiguous.
        m.update(magic);
        m.update(client);
        m.update(server);
        m
    }
}

/// Creates a secret file of [`MIN_SECRET_LEN`] random bytes (hex), mode
/// 0600; refuses to replace an existing file.
pub fn create_secret_file(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut raw = [0u8; MIN_SECRET_LEN];
    random(&mut raw)?;
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot create {}: {e}", path.display())))?;
    writeln!(f, "{hex}")
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    s.as_bytes()
        .chunks(2)
        .map(|c| u8::from_str_radix(std::str::from_utf8(c).ok()?, 16).ok())
        .collect()
}

/// Fills `buf` from the kernel's random source.
pub fn random(buf: &mut [u8]) -> io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        let rest = &mut buf[got..];
        // SAFETY: writes at most `rest.len()` bytes into `rest`, which we own.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        got += n as usize;
    }
    Ok(())
}

fn refused(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, what.to_string())
}

/// Reads exactly `buf.len()` bytes; an early end is `UnexpectedEof` naming
/// the handshake step.
fn read_step<R: Read>(r: &mut R, buf: &mut [u8], step: &str) -> io::Result<()> {
    r.read_exact(buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the peer closed the connection during the handshake ({step})"),
            )
        } else {
            io::Error::new(e.kind(), format!("handshake ({step}): {e}"))
        }
    })
}

/// The connecting side. Writes `prefix` (the peer magic) and its nonce in
/// one write, then checks the server's nonce and tag. On success both sides
/// hold `secret`; on failure nothing may be read from or sent on `stream`.
pub fn client<S: Read + Write>(
    stream: &mut S,
    secret: &Secret,
    prefix: &[u8],
) -> io::Result<Handshake> {
    let mut nc = [0u8; NONCE_LEN];
    random(&mut nc)?;
    client_with_nonce(stream, secret, prefix, nc)
}

fn client_with_nonce<S: Read + Write>(
    stream: &mut S,
    secret: &Secret,
    prefix: &[u8],
    nc: [u8; NONCE_LEN],
) -> io::Result<Handshake> {
    let mut hello = Vec::with_capacity(prefix.len() + NONCE_LEN);
    hello.extend_from_slice(prefix);
    hello.extend_from_slice(&nc);
    stream.write_all(&hello)?;
    let mut ns = [0u8; NONCE_LEN];
    read_step(stream, &mut ns, "server nonce")?;
    let hs = Handshake {
        magic: prefix.to_vec(),
        client_nonce: nc,
        server_nonce: ns,
    };
    let mine = hs.tag(secret, CLIENT_LABEL).finalize().into_bytes();
    stream.write_all(&mine)?;
    let mut theirs = [0u8; TAG_LEN];
    read_step(stream, &mut theirs, "server proof").map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            refused(
                "the peer closed the connection instead of proving it holds the cluster \
                 secret: it refused ours (do both nodes use the same cluster secret?)",
            )
        } else {
            e
        }
    })?;
    hs.tag(secret, SERVER_LABEL)
        .verify_slice(&theirs)
        .map_err(|_| refused("the peer does not hold the cluster secret (its proof is wrong)"))?;
    Ok(hs)
}

/// The accepting side, after the peer magic `prefix` was read. Returns
/// once the client has proved it holds `secret` and the server's proof is
/// sent; an error means the connection must be closed unserved.
pub fn server<S: Read + Write>(
    stream: &mut S,
    secret: &Secret,
    prefix: &[u8],
) -> io::Result<Handshake> {
    let mut ns = [0u8; NONCE_LEN];
    random(&mut ns)?;
    server_with_nonce(stream, secret, prefix, ns)
}

fn server_with_nonce<S: Read + Write>(
    stream: &mut S,
    secret: &Secret,
    prefix: &[u8],
    ns: [u8; NONCE_LEN],
) -> io::Result<Handshake> {
    let mut nc = [0u8; NONCE_LEN];
    read_step(stream, &mut nc, "client nonce")?;
    stream.write_all(&ns)?;
    let hs = Handshake {
        magic: prefix.to_vec(),
        client_nonce: nc,
        server_nonce: ns,
    };
    let mut theirs = [0u8; TAG_LEN];
    read_step(stream, &mut theirs, "client proof")?;
    hs.tag(secret, CLIENT_LABEL)
        .verify_slice(&theirs)
        .map_err(|_| refused("the client does not hold the cluster secret (its proof is wrong)"))?;
    let mine = hs.tag(secret, SERVER_LABEL).finalize().into_bytes();
    stream.write_all(&mine)?;
    Ok(hs)
}

impl Handshake {
    fn tag(&self, secret: &Secret, label: &[u8]) -> HmacSha256 {
        secret.tag_over(label, &self.magic, &self.client_nonce, &self.server_nonce)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    fn secret(b: u8) -> Secret {
        Secret::from_bytes(vec![b; 32]).expect("32 bytes")
    }

    /// Runs a server on one end of a socket pair in a thread and `client` on
    /// the other; returns (client result, server result).
    fn run<C>(server_secret: Secret, client: C) -> (io::Result<()>, io::Result<()>)
    where
        C: FnOnce(&mut UnixStream) -> io::Result<()>,
    {
        let (mut a, mut b) = UnixStream::pair().expect("socket pair");
        for s in [&a, &b] {
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
        }
        let t = std::thread::spawn(move || {
            let r = server(&mut b, &server_secret, b"").map(|_| ());
            drop(b);
            r
        });
        let c = client(&mut a);
        drop(a);
        (c, t.join().expect("server thread"))
    }

    #[test]
    fn the_same_secret_passes_both_ways() {
        let (c, s) = run(secret(7), |s| client(s, &secret(7), b"").map(|_| ()));
        c.expect("client accepted");
        s.expect("server accepted");
    }

    #[test]
    fn a_wrong_secret_is_refused_and_the_server_proves_nothing() {
        let (c, s) = run(secret(7), |s| client(s, &secret(8), b"").map(|_| ()));
        let s = s.expect_err("server refuses");
        assert_eq!(s.kind(), io::ErrorKind::PermissionDenied, "{s}");
        let c = c.expect_err("client learns it was refused");
        assert_eq!(c.kind(), io::ErrorKind::PermissionDenied, "{c}");
        assert!(c.to_string().contains("cluster secret"), "{c}");
    }

    #[test]
    fn a_server_without_the_secret_is_caught_by_the_client() {
        // A fake server that answers with a nonce and a tag made with another key.
        let (mut a, mut b) = UnixStream::pair().expect("pair");
        let t = std::thread::spawn(move || {
            let mut nc = [0u8; NONCE_LEN];
            b.read_exact(&mut nc).expect("nonce");
            let ns = [3u8; NONCE_LEN];
            b.write_all(&ns).expect("ns");
            let mut tag = [0u8; TAG_LEN];
            b.read_exact(&mut tag).expect("client tag");
            let fake = secret(9)
                .tag_over(SERVER_LABEL, b"", &nc, &ns)
                .finalize()
                .into_bytes();
            b.write_all(&fake).expect("fake proof");
        });
        let e = client(&mut a, &secret(7), b"").expect_err("fake server refused");
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
        t.join().expect("fake server");
    }

    #[test]
    fn a_replayed_client_proof_is_refused() {
        // Record a good client's transcript against one server nonce...
        let (mut a, mut b) = UnixStream::pair().expect("pair");
        let t =
            std::thread::spawn(move || server_with_nonce(&mut b, &secret(7), b"", [1; NONCE_LEN]));
        let nc = [5u8; NONCE_LEN];
        client_with_nonce(&mut a, &secret(7), b"", nc).expect("good run");
        t.join().expect("server").expect("accepted");
        let recorded = secret(7)
            .tag_over(CLIENT_LABEL, b"", &nc, &[1; NONCE_LEN])
            .finalize()
            .into_bytes();
        // ...and replay it (same client nonce, same proof) to a server that
        // chose a fresh nonce: refused.
        let (c, s) = run(secret(7), move |s| {
            s.write_all(&nc)?;
            let mut ns = [0u8; NONCE_LEN];
            s.read_exact(&mut ns)?;
            assert_ne!(ns, [1; NONCE_LEN], "the server's nonce is fresh");
            s.write_all(&recorded)?;
            let mut rest = Vec::new();
            s.read_to_end(&mut rest)?;
            assert!(rest.is_empty(), "a refused client gets no proof");
            Ok(())
        });
        c.expect("replayer ran");
        assert_eq!(
            s.expect_err("replay refused").kind(),
            io::ErrorKind::PermissionDenied
        );
    }

    #[test]
    fn a_replayed_server_proof_is_refused() {
        // A server proof recorded for one client nonce does not fit another.
        let ns = [2u8; NONCE_LEN];
        let old = secret(7)
            .tag_over(SERVER_LABEL, b"", &[4; NONCE_LEN], &ns)
            .finalize()
            .into_bytes();
        let (mut a, mut b) = UnixStream::pair().expect("pair");
        let t = std::thread::spawn(move || {
            let mut nc = [0u8; NONCE_LEN];
            b.read_exact(&mut nc).expect("nonce");
            assert_ne!(nc, [4; NONCE_LEN], "the client's nonce is fresh");
            b.write_all(&ns).expect("ns");
            let mut tag = [0u8; TAG_LEN];
            b.read_exact(&mut tag).expect("client tag");
            b.write_all(&old).expect("replayed proof");
        });
        let e = client(&mut a, &secret(7), b"").expect_err("replay refused");
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
        t.join().expect("replaying server");
    }

    #[test]
    fn a_rewritten_magic_fails_both_proofs_and_keys_are_per_connection() {
        // The client opens sealed; someone on the wire makes the server
        // read a plain magic: the server refuses the client's proof.
        let (mut a, mut b) = UnixStream::pair().expect("pair");
        let t = std::thread::spawn(move || {
            let mut magic = [0u8; 4];
            b.read_exact(&mut magic).expect("magic");
            assert_eq!(&magic, b"SEAL");
            server(&mut b, &secret(7), b"PLN_")
        });
        let c = client(&mut a, &secret(7), b"SEAL");
        drop(a);
        let s = t.join().expect("server").expect_err("downgrade refused");
        assert_eq!(s.kind(), io::ErrorKind::PermissionDenied, "{s}");
        assert!(c.is_err(), "the client got no proof either");
        // Two honest handshakes: each side derives the same keys, the two
        // directions differ, and the next connection's keys differ.
        let mut keys = Vec::new();
        for _ in 0..2 {
            let (mut a, mut b) = UnixStream::pair().expect("pair");
            let t = std::thread::spawn(move || {
                let mut magic = [0u8; 4];
                b.read_exact(&mut magic).expect("magic");
                server(&mut b, &secret(7), &magic).expect("server")
            });
            let hc = client(&mut a, &secret(7), b"SEAL").expect("client");
            let hs = t.join().expect("server thread");
            let (kc, ks) = (hc.keys(&secret(7)), hs.keys(&secret(7)));
            assert_eq!(kc.client_to_server, ks.client_to_server);
            assert_eq!(kc.server_to_client, ks.server_to_client);
            assert_ne!(kc.client_to_server, kc.server_to_client);
            // Another secret gives other keys for the same transcript.
            assert_ne!(hc.keys(&secret(8)).client_to_server, kc.client_to_server);
            keys.push(kc.client_to_server);
        }
        assert_ne!(keys[0], keys[1], "fresh keys per connection");
    }

    #[test]
    fn a_client_proof_cannot_be_reflected_as_a_server_proof() {
        let (nc, ns) = ([4u8; NONCE_LEN], [2u8; NONCE_LEN]);
        let c = secret(7)
            .tag_over(CLIENT_LABEL, b"", &nc, &ns)
            .finalize()
            .into_bytes();
        assert!(secret(7)
            .tag_over(SERVER_LABEL, b"", &nc, &ns)
            .verify_slice(&c)
            .is_err());
    }

    #[test]
    fn truncated_handshakes_are_refused() {
        for cut in [0, 1, NONCE_LEN - 1, NONCE_LEN, NONCE_LEN + TAG_LEN - 1] {
            let (c, s) = run(secret(7), move |s| {
                // A correct client that stops after `cut` bytes of its part.
                let nc = [6u8; NONCE_LEN];
                let mut sent = nc.to_vec();
                if cut > NONCE_LEN {
                    s.write_all(&nc)?;
                    let mut ns = [0u8; NONCE_LEN];
                    s.read_exact(&mut ns)?;
                    let tag = secret(7)
                        .tag_over(CLIENT_LABEL, b"", &nc, &ns)
                        .finalize()
                        .into_bytes();
                    sent.extend_from_slice(&tag);
                    s.write_all(&sent[NONCE_LEN..cut])?;
                } else {
                    s.write_all(&sent[..cut])?;
                }
                s.shutdown(std::net::Shutdown::Write)?;
                let mut rest = Vec::new();
                s.read_to_end(&mut rest)?;
                assert!(
                    rest.len() <= NONCE_LEN,
                    "cut {cut}: got {} bytes, more than the server's nonce",
                    rest.len()
                );
                Ok(())
            });
            c.expect("client ran");
            let e = s.expect_err("truncated handshake refused");
            assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "cut {cut}: {e}");
        }
        // The client side: a server that stops after half its nonce.
        let (mut a, mut b) = UnixStream::pair().expect("pair");
        let t = std::thread::spawn(move || {
            let mut nc = [0u8; NONCE_LEN];
            b.read_exact(&mut nc).expect("nonce");
            b.write_all(&[0u8; NONCE_LEN / 2]).expect("half");
        });
        let e = client(&mut a, &secret(7), b"").expect_err("truncated server");
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
        t.join().expect("server");
    }

    #[test]
    fn secret_files_are_private_hex_and_long_enough() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().expect("tmp");
        let p = d.path().join("cluster-secret");
        create_secret_file(&p).expect("created");
        let mode = std::fs::metadata(&p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let s = Secret::load(&p).expect("loads");
        assert_eq!(s.0.len(), MIN_SECRET_LEN);
        assert!(!format!("{s:?}").contains(&format!("{:02x}", s.0[0]).repeat(4)));
        assert!(create_secret_file(&p).is_err(), "never replaced");
        // Two files differ.
        let q = d.path().join("other");
        create_secret_file(&q).expect("second");
        assert_ne!(Secret::load(&q).expect("loads").0, s.0);
        // Readable by others: refused, naming the file and the mode.
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = Secret::load(&p).expect_err("world-readable");
        assert!(
            e.to_string().contains("0600") && e.to_string().contains("cluster-secret"),
            "{e}"
        );
        // Too short or not hex: refused.
        let short = d.path().join("short");
        std::fs::write(&short, "abcd\n").expect("write");
        std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert!(Secret::load(&short).is_err());
        let junk = d.path().join("junk");
        std::fs::write(&junk, "zz".repeat(40)).expect("write");
        std::fs::set_permissions(&junk, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert!(Secret::load(&junk).is_err());
    }
}
