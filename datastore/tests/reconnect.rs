//! A client follows a restart of its data worker: views of the old arena stay readable, new
//! puts and gets go to the new start, and objects of the old start are reported lost.

use std::path::Path;
use std::time::{Duration, Instant};

use yr_datastore::config::{StoreConfig, WorkerConfig};
use yr_datastore::server::{self, Worker};
use yr_datastore::{Client, ErrorCode, Shutdown};

fn worker(socket: &Path) -> Worker {
    server::start(
        WorkerConfig {
            socket: socket.to_path_buf(),
            store: StoreConfig {
                capacity: 16 << 20,
                prefault: false,
                high_watermark: 0.9,
                low_watermark: 0.8,
                spill: None,
            },
            transfer: None,
            cluster_secret: None,
            encrypt_transfers: false,
        },
        Shutdown::new().expect("eventfd"),
    )
    .expect("worker starts")
}

#[test]
fn a_client_reconnects_to_a_restarted_worker() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("dw.sock");
    let first = worker(&socket);
    let client = Client::connect(&socket).expect("connects");
    let old_tag = client.node_tag();
    let old_id = client.new_id();
    client.put(old_id, b"before the restart").expect("put");
    let held = client.get_one(old_id, Duration::from_secs(1)).expect("get");
    let old_mapping = client.mapping();

    drop(first);
    let _second = worker(&socket);

    // The first call may meet the dead connection (and fail); within a deadline, calls work
    // again on the new start.
    let deadline = Instant::now() + Duration::from_secs(10);
    let new_id = loop {
        let id = client.new_id();
        match client.put(id, b"after the restart") {
            Ok(()) => break id,
            Err(e) if Instant::now() < deadline => {
                assert!(
                    !matches!(e, yr_datastore::Error::Store(_)),
                    "only the broken connection may fail a call: {e}"
                );
            }
            Err(e) => panic!("no put worked within the deadline: {e}"),
        }
    };
    assert_ne!(client.node_tag(), old_tag, "a new start has a new epoch");
    let got = client.get_one(new_id, Duration::from_secs(1)).expect("get");
    assert_eq!(&*got, b"after the restart");
    assert!(
        client.mapping().contains(&(got.as_ptr() as usize)),
        "a new view lies in the new mapping"
    );
    // The view taken before the restart still reads the old bytes, in the old mapping.
    assert_eq!(&*held, b"before the restart");
    assert!(old_mapping.contains(&(held.as_ptr() as usize)));
    // The old start's object is lost, not waited for.
    let started = Instant::now();
    let e = client
        .get_remote(old_id, Duration::from_secs(5))
        .expect_err("the object went with the old start");
    assert_eq!(e.code(), Some(ErrorCode::ObjectLost), "{e}");
    assert!(started.elapsed() < Duration::from_secs(4), "failed at once");
    drop(held);
}
