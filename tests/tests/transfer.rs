//! Objects across nodes: two (or three) real data worker processes on
//! loopback, pulling objects from each other over TCP, sharing pulls,
//! freeing every copy when the owner lets go, and failing fast when the only
//! holder is gone.

use std::time::{Duration, Instant};
use yr_datastore::{Client, ErrorCode, ObjectId, StoreStats};
use yr_tests::{bytes, introduce, DataWorker};

const MIB: u64 = 1 << 20;

/// Polls `f` until it holds; frees travel between processes asynchronously.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn stats(c: &Client) -> StoreStats {
    c.stats().expect("stats")
}

#[test]
fn a_remote_get_pulls_once_and_concurrent_gets_share_the_pull() {
    let a = DataWorker::start_networked(256 * MIB);
    let b = DataWorker::start_networked(256 * MIB);
    introduce(&[&a, &b]);
    let producer = a.client();
    let id = producer.new_id();
    assert_eq!(id.tag(), producer.node_tag(), "new IDs name their node");
    // Created but not sealed: the pull waits at the primary, so every get on
    // B arrives while the first one is in flight.
    let data = bytes(32 * MIB as usize, 7);
    let mut builder = producer.create(id, data.len(), 0).expect("create");
    builder.data_mut().copy_from_slice(&data);
    let getters: Vec<_> = (0..4)
        .map(|_| {
            let c = b.client();
            std::thread::spawn(move || {
                let g = c
                    .get_remote(id, Duration::from_secs(60))
                    .expect("remote get");
                let range = c.mapping();
                assert!(
                    range.contains(&(g.as_ptr() as usize)),
                    "view is not in B's arena"
                );
                yr_tests::checksum(&g)
            })
        })
        .collect();
    let watcher = b.client();
    eventually("three gets joined the first pull", || {
        stats(&watcher).pull_joins == 3
    });
    builder.seal().expect("seal");
    let want = yr_tests::checksum(&data);
    for g in getters {
        assert_eq!(g.join().expect("getter"), want);
    }
    let sb = stats(&watcher);
    assert_eq!(sb.pulls, 1, "one transfer for four gets");
    assert_eq!(sb.pulled_bytes, 32 * MIB);
    assert_eq!(sb.secondary, 1);
    assert_eq!(stats(&producer).serves, 1);
    // Counted once the reply is written, which may be just after the puller read it.
    eventually("the producer counted the bytes it served", || {
        stats(&producer).served_bytes == 32 * MIB
    });
    // A later get on B is local: no new pull.
    let again = watcher.get_remote(id, Duration::ZERO).expect("local copy");
    assert_eq!(again.len(), data.len());
    assert_eq!(stats(&watcher).pulls, 1);
}

#[test]
fn freeing_an_owned_object_deletes_every_copy_on_every_node() {
    let a = DataWorker::start_networked(128 * MIB);
    let b = DataWorker::start_networked(128 * MIB);
    let c = DataWorker::start_networked(128 * MIB);
    introduce(&[&a, &b, &c]);
    let (ca, cb, cc) = (a.client(), b.client(), c.client());
    let start = [stats(&ca).used, stats(&cb).used, stats(&cc).used];
    // Primary on A; copies pulled to B and C; the owner is a client on B.
    let x = ca.new_id();
    ca.put(x, &bytes(4 * MIB as usize, 1)).expect("put");
    drop(cb.get_remote(x, Duration::ZERO).expect("pull to B"));
    drop(cc.get_remote(x, Duration::ZERO).expect("pull to C"));
    let owner = b.client();
    owner.own(&[x]);
    owner.free(&[x]);
    for (name, cl, used) in [
        ("A", &ca, start[0]),
        ("B", &cb, start[1]),
        ("C", &cc, start[2]),
    ] {
        eventually(&format!("node {name} back to its starting usage"), || {
            let s = stats(cl);
            s.used == used && s.sealed == 0
        });
    }
    // An owner that disconnects frees what it owned, here a primary on C
    // with a copy on A.
    let y = cc.new_id();
    cc.put(y, &bytes(2 * MIB as usize, 2)).expect("put");
    drop(ca.get_remote(y, Duration::ZERO).expect("pull to A"));
    let owner = c.client();
    owner.own(&[y]);
    drop(owner);
    eventually("y freed on C and A after its owner left", || {
        stats(&cc).sealed == 0 && stats(&ca).sealed == 0
    });
    // A pinned copy outlives the free until its reader lets go.
    let z = ca.new_id();
    ca.put(z, b"pinned while freed").expect("put");
    let view = cb.get_remote(z, Duration::ZERO).expect("pull z");
    let owner = a.client();
    owner.own(&[z]);
    owner.free(&[z]);
    eventually("z gone from A", || stats(&ca).sealed == 0);
    assert_eq!(&view[..], b"pinned while freed", "a held view stays valid");
    drop(view);
    eventually("z gone from B once released", || stats(&cb).sealed == 0);
}

#[test]
fn the_only_holder_dying_gives_object_lost_naming_object_and_node() {
    let mut a = DataWorker::start_networked(64 * MIB);
    let b = DataWorker::start_networked(64 * MIB);
    introduce(&[&a, &b]);
    let ca = a.client();
    let x = ca.new_id();
    ca.put(x, &bytes(MIB as usize, 3)).expect("put");
    let addr = a.transfer.clone().expect("A has a transfer address");
    drop(ca);
    let _ = a.child.kill();
    let _ = a.child.wait();
    let cb = b.client();
    let t = Instant::now();
    let e = cb
        .get_remote(x, Duration::from_secs(120))
        .expect_err("the object is gone");
    assert_eq!(e.code(), Some(ErrorCode::ObjectLost), "{e}");
    let msg = e.to_string();
    assert!(msg.contains(&x.to_hex()), "names the object: {msg}");
    assert!(msg.contains(&addr), "names the node {addr}: {msg}");
    // Fails on the refused connection, not after the get's 120 s timeout.
    assert!(
        t.elapsed() < Duration::from_secs(60),
        "took {:?}",
        t.elapsed()
    );

    // A worker restarted on the same address does not have objects made by
    // its earlier run, and says so.
    let secret = yr_tests::cluster_secret().display().to_string();
    let again = DataWorker::start(
        64 * MIB,
        &["--transfer-address", &addr, "--cluster-secret", &secret],
    );
    let e = cb
        .get_remote(x, Duration::from_secs(120))
        .expect_err("made by an earlier run");
    assert_eq!(e.code(), Some(ErrorCode::ObjectLost), "{e}");
    assert!(e.to_string().contains("earlier run"), "{e}");
    drop(again);
}

#[test]
fn pressure_evicts_secondary_copies_instead_of_spilling_them() {
    let a = DataWorker::start_networked(256 * MIB);
    let b = DataWorker::start_networked(64 * MIB);
    introduce(&[&a, &b]);
    let ca = a.client();
    let cb = b.client();
    let ids: Vec<ObjectId> = (0..4).map(|_| ca.new_id()).collect();
    for (i, id) in ids.iter().enumerate() {
        ca.put(*id, &bytes(24 * MIB as usize, i as u64))
            .expect("put");
    }
    // 4 x 24 MiB through a 64 MiB arena: each pull must make room.
    for (i, id) in ids.iter().enumerate() {
        let g = cb.get_remote(*id, Duration::ZERO).expect("pull");
        assert_eq!(
            yr_tests::checksum(&g),
            yr_tests::checksum(&bytes(24 * MIB as usize, i as u64))
        );
    }
    let s = stats(&cb);
    assert_eq!(s.spill_ops, 0, "secondary copies are never written to disk");
    assert!(s.secondary <= 2, "older copies were evicted: {s:?}");
    assert_eq!(s.pulls, 4);
    // The primaries are untouched, and an evicted copy comes back on demand.
    assert_eq!(stats(&ca).sealed, 4);
    let g = cb.get_remote(ids[0], Duration::ZERO).expect("pull again");
    assert_eq!(g.len(), 24 * MIB as usize);
}

#[test]
fn a_worker_without_a_transfer_address_keeps_objects_local_and_says_so() {
    let a = DataWorker::start(16 * MIB, &[]);
    let b = DataWorker::start_networked(16 * MIB);
    let ca = a.client();
    let x = ca.new_id();
    ca.put(x, b"local only").expect("put");
    assert_eq!(
        &ca.get_remote(x, Duration::ZERO).expect("local")[..],
        b"local only"
    );
    let e = b
        .client()
        .get_remote(x, Duration::ZERO)
        .expect_err("unreachable");
    assert_eq!(e.code(), Some(ErrorCode::ObjectLost), "{e}");
    assert!(e.to_string().contains("no transfer address"), "{e}");
    // A peer port that is not a yr data worker is refused by the magic check,
    // and the worker keeps serving.
    let addr = b.transfer.clone().expect("transfer address");
    let mut s = std::net::TcpStream::connect(&addr).expect("connect");
    use std::io::{Read, Write};
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").expect("write");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(buf.is_empty(), "a stranger gets nothing back");
    assert!(b.client().stats().is_ok());
}

/// Sends `frame` to `addr` as a stranger would (the peer magic, then a
/// request, no handshake) and returns everything the port sends back before
/// closing.
fn as_a_stranger(addr: &str, frame: &[u8]) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut hello = yr_datastore::transfer::PEER_MAGIC.to_vec();
    hello.extend_from_slice(frame);
    // The server may close before reading everything.
    let _ = s.write_all(&hello);
    // Nothing more is coming: the port sees the end at once instead of
    // waiting out its handshake deadline.
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    buf
}

#[test]
fn a_transfer_port_serves_and_deletes_nothing_for_a_peer_without_the_secret() {
    use yr_datastore::transfer::PeerRequest;
    let a = DataWorker::start_networked(64 * MIB);
    let ca = a.client();
    let x = ca.new_id();
    let data = bytes(MIB as usize, 9);
    ca.put(x, &data).expect("put");
    let addr = a.transfer.clone().expect("transfer address");
    let pull = PeerRequest::Pull {
        id: x,
        timeout_ms: 0,
        requester: ca.node_tag(),
    }
    .encode();
    let delete = PeerRequest::Delete { ids: vec![x] }.encode();
    // A request where the handshake's nonce and proof belong, and the same
    // after 64 bytes of zeros standing in for them.
    for frame in [pull.clone(), delete.clone()] {
        for padded in [frame.clone(), [vec![0u8; 64], frame].concat()] {
            let got = as_a_stranger(&addr, &padded);
            assert!(
                got.len() <= 32,
                "a stranger gets at most the server's nonce, got {} bytes",
                got.len()
            );
            assert!(
                !got.windows(16).any(|w| data.windows(16).next() == Some(w)),
                "no object bytes"
            );
        }
    }
    let st = ca.stats().expect("stats");
    assert_eq!(st.serves, 0, "nothing served");
    assert!(
        ca.contains(x).expect("contains"),
        "the object is still there"
    );
    // A member with the secret is still served.
    let b = DataWorker::start_networked(64 * MIB);
    introduce(&[&a, &b]);
    let g = b.client().get_remote(x, Duration::ZERO).expect("pull");
    assert_eq!(yr_tests::checksum(&g), yr_tests::checksum(&data));
}

#[test]
fn a_transfer_between_workers_with_different_secrets_is_refused() {
    let a = DataWorker::start_networked(64 * MIB);
    let dir = tempfile::tempdir().expect("tmp");
    let other = dir.path().join("other-secret");
    yr_datastore::peer_auth::create_secret_file(&other).expect("secret");
    let other = other.display().to_string();
    let b = DataWorker::start(
        64 * MIB,
        &[
            "--transfer-address",
            "127.0.0.1:0",
            "--cluster-secret",
            &other,
        ],
    );
    introduce(&[&a, &b]);
    let x = a.client().new_id();
    a.client().put(x, b"for members only").expect("put");
    let e = b
        .client()
        .get_remote(x, Duration::ZERO)
        .expect_err("refused");
    assert_eq!(e.code(), Some(ErrorCode::BadPeer), "{e}");
    assert!(e.to_string().contains("cluster secret"), "{e}");
    assert_eq!(a.client().stats().expect("stats").serves, 0);
}
