//! End-to-end tests of the data worker: a real `yr component data-worker`
//! process, real Unix sockets, real shared memory, real spill files.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;
use yr_datastore::protocol::{Response, MAX_REQUEST_FRAME};
use yr_datastore::{Client, ErrorCode, ObjectId};
use yr_tests::{bytes, DataWorker};

const MIB: u64 = 1 << 20;

fn id(n: u128) -> ObjectId {
    ObjectId::new(9, n)
}

#[test]
fn zero_copy_get_points_into_the_shared_mapping() {
    let w = DataWorker::start(64 * MIB, &[]);
    let producer = w.client();
    let consumer = w.client();
    let data = bytes(8 * MIB as usize, 1);
    producer.put(id(1), &data).expect("put");
    let g = consumer.get_one(id(1), Duration::ZERO).expect("get");
    assert_eq!(&g[..], &data[..]);
    let map = consumer.mapping();
    let start = g.as_ptr() as usize;
    assert!(
        map.contains(&start),
        "view starts outside the arena mapping"
    );
    assert!(
        map.contains(&(start + g.len() - 1)),
        "view ends outside the arena mapping"
    );
    // A second get of the same object is the same bytes, not a copy.
    let g2 = consumer.get_one(id(1), Duration::ZERO).expect("get again");
    assert_eq!(g2.as_ptr(), g.as_ptr());
}

#[test]
fn create_write_seal_and_metadata() {
    let w = DataWorker::start(16 * MIB, &[]);
    let c = w.client();
    let mut b = c.create(id(2), 1000, 10).expect("create");
    b.data_mut().copy_from_slice(&bytes(1000, 2));
    b.meta_mut().copy_from_slice(b"meta-bytes");
    // Not visible before seal.
    assert!(!c.contains(id(2)).expect("contains"));
    b.seal().expect("seal");
    assert!(c.contains(id(2)).expect("contains"));
    let g = c.get_one(id(2), Duration::ZERO).expect("get");
    assert_eq!(&g[..], &bytes(1000, 2)[..]);
    assert_eq!(g.metadata(), b"meta-bytes");
    // Duplicate IDs are refused with a clear error.
    let e = c.put(id(2), b"x").expect_err("duplicate");
    assert_eq!(e.code(), Some(ErrorCode::AlreadyExists));
    assert!(e.to_string().contains(&id(2).to_hex()), "{e}");
}

#[test]
fn blocking_get_wakes_on_seal_and_times_out_clearly() {
    let w = DataWorker::start(16 * MIB, &[]);
    let c = w.client();
    let producer = w.client();
    let waiter = std::thread::spawn(move || {
        let g = c
            .get_one(id(3), Duration::from_secs(30))
            .expect("get waits for seal");
        g.to_vec()
    });
    // Seal only once the waiter is blocked inside the worker, so the test
    // shows a wake-up rather than a get that came late.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while producer.stats().expect("stats").waiters == 0 {
        assert!(std::time::Instant::now() < deadline, "getter never blocked");
        std::thread::yield_now();
    }
    let mut b = producer.create(id(3), 4, 0).expect("create");
    b.data_mut().copy_from_slice(b"abcd");
    b.seal().expect("seal");
    assert_eq!(waiter.join().expect("waiter"), b"abcd");

    let c = w.client();
    let e = c
        .get_one(id(4), Duration::from_millis(50))
        .expect_err("absent");
    assert_eq!(e.code(), Some(ErrorCode::NotFound));
    assert!(e.to_string().contains("not found"), "{e}");
    let _unsealed = producer.create(id(5), 8, 0).expect("create");
    let e = c
        .get_one(id(5), Duration::from_millis(50))
        .expect_err("unsealed");
    assert_eq!(e.code(), Some(ErrorCode::Timeout));
    assert!(e.to_string().contains("unsealed"), "{e}");
}

#[test]
fn delete_is_deferred_while_pinned_and_abort_only_for_unsealed() {
    let w = DataWorker::start(16 * MIB, &[]);
    let c = w.client();
    c.put(id(6), &bytes(100_000, 6)).expect("put");
    let g = c.get_one(id(6), Duration::ZERO).expect("get");
    let used_with = c.stats().expect("stats").used;
    c.delete_one(id(6)).expect("delete");
    // Invisible at once, but the bytes stay valid while pinned.
    assert!(!c.contains(id(6)).expect("contains"));
    assert_eq!(&g[..], &bytes(100_000, 6)[..]);
    assert_eq!(c.stats().expect("stats").used, used_with);
    drop(g);
    // The release is one-way; the next request on the same socket is
    // processed after it.
    assert_eq!(c.stats().expect("stats").used, 0);

    c.put(id(7), b"sealed").expect("put");
    let e = c.create(id(7), 1, 0).err().expect("exists");
    assert_eq!(e.code(), Some(ErrorCode::AlreadyExists));
    let b = c.create(id(8), 64, 0).expect("create");
    b.abort().expect("abort");
    assert!(!c.contains(id(8)).expect("contains"));
    assert_eq!(
        c.delete_one(id(9)).expect_err("absent").code(),
        Some(ErrorCode::NotFound)
    );
}

#[test]
fn kv_set_get_delete_exists() {
    let w = DataWorker::start(16 * MIB, &[]);
    let c = w.client();
    c.kv_set(b"model/weights", &bytes(200_000, 10))
        .expect("set");
    assert!(c.kv_exists(b"model/weights").expect("exists"));
    let v = c.kv_get(b"model/weights", Duration::ZERO).expect("get");
    assert_eq!(&v[..], &bytes(200_000, 10)[..]);
    drop(v);
    c.kv_set(b"model/weights", b"v2").expect("overwrite");
    assert_eq!(
        &c.kv_get(b"model/weights", Duration::ZERO).expect("get")[..],
        b"v2"
    );
    c.kv_del(b"model/weights").expect("del");
    assert!(!c.kv_exists(b"model/weights").expect("exists"));
    let e = c
        .kv_get(b"model/weights", Duration::ZERO)
        .expect_err("gone");
    assert_eq!(e.code(), Some(ErrorCode::NotFound));
    let long = vec![b'k'; 256];
    assert!(c.kv_set(&long, b"x").is_err());
    // Only the overwritten value's object is gone; nothing leaked.
    assert_eq!(c.stats().expect("stats").used, 0);
}

#[test]
fn killed_client_releases_pins_and_aborts_unsealed_objects() {
    let w = DataWorker::start(64 * MIB, &[]);
    let c = w.client();
    c.put(id(20), &bytes(1 << 20, 20)).expect("put");
    let baseline = c.stats().expect("stats");
    let mut child = Command::new(env!("CARGO_BIN_EXE_yr-test-client"))
        .arg(&w.socket)
        .arg(id(20).to_hex())
        .arg(id(21).to_hex())
        .arg((8 * MIB).to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn client");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    assert!(line.starts_with("holding"), "{line}");
    let held = c.stats().expect("stats");
    assert_eq!(held.pinned, 1);
    assert_eq!(held.unsealed, 1);
    assert!(held.used > baseline.used);
    // A pinned object cannot be freed by delete meanwhile.
    child.kill().expect("kill -9");
    child.wait().expect("wait");
    // The worker notices the closed socket on its own; wait for it through
    // the stats (bounded: the worker must clean up promptly).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = c.stats().expect("stats");
        if s.clients == 1 {
            assert_eq!(s.pinned, 0, "pins of the dead client released");
            assert_eq!(s.unsealed, 0, "its unsealed object aborted");
            assert_eq!(s.used, baseline.used, "arena usage back to where it was");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "worker never noticed the dead client: {s:?}"
        );
        std::thread::yield_now();
    }
    assert!(!c.contains(id(21)).expect("contains"));
    assert_eq!(
        &c.get_one(id(20), Duration::ZERO).expect("still there")[..],
        &bytes(1 << 20, 20)[..]
    );
}

#[test]
fn pressure_spills_to_disk_and_get_restores_transparently() {
    let w = DataWorker::start(64 * MIB, &[]);
    let c = w.client();
    // 12 objects of 8 MiB = 96 MiB through a 64 MiB arena.
    for i in 0..12u64 {
        c.put(id(100 + i as u128), &bytes(8 * MIB as usize, i))
            .expect("put under pressure");
    }
    let s = c.stats().expect("stats");
    assert!(s.spilled > 0, "something was spilled: {s:?}");
    assert!(s.spill_used > 0);
    let files = std::fs::read_dir(&w.spill_dir).expect("spill dir").count();
    assert!(files > 0, "spill files exist on disk");
    // One get of several spilled objects restores them as a batch.
    let spilled: Vec<_> = c
        .list(100)
        .expect("list")
        .into_iter()
        .filter(|o| o.state == yr_datastore::protocol::ObjectState::Spilled)
        .map(|o| o.id)
        .take(4)
        .collect();
    assert!(spilled.len() >= 2, "several objects on disk: {spilled:?}");
    let restores_before = c.stats().expect("stats").restore_ops;
    let views = c.get(&spilled, Duration::from_secs(10)).expect("batch get");
    for (oid, v) in spilled.iter().zip(&views) {
        let v = v.as_ref().expect("restored in the batch");
        let seed = (0..12u64)
            .find(|&i| id(100 + i as u128) == *oid)
            .expect("known id");
        assert_eq!(
            &v[..],
            &bytes(8 * MIB as usize, seed)[..],
            "object {seed} intact"
        );
    }
    drop(views);
    let restored = c.stats().expect("stats").restore_ops - restores_before;
    assert_eq!(restored, spilled.len() as u64, "each restored once");
    for i in 0..12u64 {
        let g = c
            .get_one(id(100 + i as u128), Duration::from_secs(10))
            .expect("get restores");
        assert_eq!(&g[..], &bytes(8 * MIB as usize, i)[..], "object {i} intact");
    }
    assert!(c.stats().expect("stats").restore_ops > 0);
    // Deleting everything frees the spill space.
    let ids: Vec<_> = (0..12).map(|i| id(100 + i)).collect();
    for r in c.delete(&ids).expect("delete") {
        r.expect("deleted");
    }
    // An object the worker was spilling in the background when it was deleted is freed when
    // that write completes (its delete is pending until then): wait for it, within a deadline.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let s = c.stats().expect("stats");
        if (s.used, s.spill_used, s.spilled) == (0, 0, 0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "deleting everything left memory or spill space in use: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn full_memory_and_spill_limit_fail_create_clearly_without_losing_objects() {
    let w = DataWorker::start(32 * MIB, &["--spill-limit", "16MiB"]);
    let c = w.client();
    let mut stored = Vec::new();
    let mut failure = None;
    for i in 0..20u64 {
        match c.put(id(200 + i as u128), &bytes(4 * MIB as usize, i)) {
            Ok(()) => stored.push(i),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let e = failure.expect("memory + 16 MiB of spill cannot hold 80 MiB");
    assert_eq!(e.code(), Some(ErrorCode::OutOfMemory), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(&(4 * MIB).to_string()),
        "names the requested size: {msg}"
    );
    assert!(msg.contains("free"), "says what is free: {msg}");
    // Larger than the arena: refused at once.
    let e = c
        .create(id(300), 64 * MIB as usize, 0)
        .err()
        .expect("too large");
    assert_eq!(e.code(), Some(ErrorCode::TooLarge));
    // Every object stored before the failure is intact.
    for i in stored {
        let g = c
            .get_one(id(200 + i as u128), Duration::from_secs(10))
            .expect("kept");
        assert_eq!(&g[..], &bytes(4 * MIB as usize, i)[..]);
    }
}

#[test]
fn malformed_frames_get_errors_and_only_that_client_is_dropped() {
    let w = DataWorker::start(16 * MIB, &[]);
    let good = w.client();
    good.put(id(400), b"survivor").expect("put");

    let bad = w.client();
    // Unknown tag: an error reply, and the connection goes on.
    match bad.raw_exchange(&[1, 0, 0, 0, 0xEE]).expect("reply") {
        Response::Error(e) => {
            assert_eq!(e.code, ErrorCode::BadRequest);
            assert!(e.message.contains("tag"), "{}", e.message);
        }
        r => panic!("expected an error, got {r:?}"),
    }
    // Truncated body (a Seal without its id).
    match bad.raw_exchange(&[3, 0, 0, 0, 3, 1, 2]).expect("reply") {
        Response::Error(e) => assert!(e.message.contains("truncated"), "{}", e.message),
        r => panic!("expected an error, got {r:?}"),
    }
    assert!(bad.contains(id(400)).expect("still usable"));
    // Oversized frame: error reply, then that client is disconnected.
    let len = (MAX_REQUEST_FRAME as u32 + 1).to_le_bytes();
    match bad.raw_exchange(&len).expect("reply") {
        Response::Error(e) => assert!(e.message.contains("exceeds"), "{}", e.message),
        r => panic!("expected an error, got {r:?}"),
    }
    assert!(
        bad.stats().is_err(),
        "the misbehaving client was disconnected"
    );

    // A raw socket speaking garbage before hello.
    let mut raw = std::os::unix::net::UnixStream::connect(&w.socket).expect("connect");
    raw.write_all(&[5, 0, 0, 0, 1, 2, 3, 4, 5]).expect("write");
    drop(raw);

    // The worker and the other client are unaffected.
    assert_eq!(
        &good.get_one(id(400), Duration::ZERO).expect("get")[..],
        b"survivor"
    );
    let fresh = Client::connect(&w.socket).expect("new clients still welcome");
    assert!(fresh.contains(id(400)).expect("contains"));
}

#[test]
fn bad_paths_and_sizes_are_reported() {
    let e = Client::connect("/nonexistent/dir/dw.sock")
        .err()
        .expect("no socket");
    assert!(e.to_string().contains("/nonexistent/dir/dw.sock"), "{e}");
    let out = Command::new(yr_tests::yr_bin())
        .args([
            "component",
            "data-worker",
            "--socket",
            "/nonexistent/dir/dw.sock",
        ])
        .args(["--shm-size", "16MiB", "--spill-dir", "/tmp/yr-unused-spill"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/dir"), "{err}");
    let out = Command::new(yr_tests::yr_bin())
        .args([
            "component",
            "data-worker",
            "--socket",
            "/tmp/x.sock",
            "--shm-size",
            "lots",
        ])
        .args(["--spill-dir", "/tmp/yr-unused-spill"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid size"));
}

#[test]
fn a_second_worker_on_the_same_socket_is_refused_and_sigterm_cleans_up() {
    let w = DataWorker::start(16 * MIB, &[]);
    let out = Command::new(yr_tests::yr_bin())
        .args(["component", "data-worker", "--socket"])
        .arg(&w.socket)
        .args(["--shm-size", "16MiB", "--spill-dir"])
        .arg(w.dir.path().join("spill2"))
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already listening"));
    let mut w = w;
    let status = w.terminate();
    assert!(status.success(), "graceful exit on SIGTERM: {status}");
    assert!(!w.socket.exists(), "socket removed on exit");
}

#[test]
fn a_dropped_view_is_released_even_if_its_client_goes_quiet() {
    let w = DataWorker::start(16 * MIB, &[]);
    let holder = w.client();
    let other = w.client();
    holder.put(id(520), &bytes(1 << 20, 52)).expect("put");
    let view = holder.get_one(id(520), Duration::ZERO).expect("get");
    // Deferred while pinned: the bytes stay in use.
    other.delete_one(id(520)).expect("delete");
    assert_eq!(other.stats().expect("stats").pinned, 1);
    assert!(other.stats().expect("stats").used >= 1 << 20);
    // The holder drops its view and makes no further request: the release
    // must still arrive (within the client's release delay), and the
    // deferred delete then frees the object.
    drop(view);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = other.stats().expect("stats");
        if s.pinned == 0 && s.used == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "release of an idle client never reached the worker: {s:?}"
        );
        std::thread::yield_now();
    }
    drop(holder);
}

#[test]
fn dropping_a_view_never_waits_for_a_blocked_get_on_the_same_client() {
    let w = DataWorker::start(16 * MIB, &[]);
    let c = w.client();
    let observer = w.client();
    c.put(id(500), b"held").expect("put");
    let view = c.get_one(id(500), Duration::ZERO).expect("get");
    let blocked = {
        let c = c.clone();
        std::thread::spawn(move || {
            c.get_one(id(501), Duration::from_secs(60))
                .map(|g| g.to_vec())
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while observer.stats().expect("stats").waiters == 0 {
        assert!(std::time::Instant::now() < deadline, "get never blocked");
        std::thread::yield_now();
    }
    // The other thread holds the connection inside its get; this drop must
    // return at once (the release is parked, not waited for).
    drop(view);
    assert_eq!(
        observer.stats().expect("stats").waiters,
        1,
        "the get is still blocked"
    );
    observer.put(id(501), b"wake").expect("put");
    assert_eq!(blocked.join().expect("thread").expect("get"), b"wake");
    // The parked release went out when the get finished.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while observer.stats().expect("stats").pinned != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "parked release never sent"
        );
        std::thread::yield_now();
    }
}
