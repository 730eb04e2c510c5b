//! The transfer ports of a real two-node cluster (`yr start --master`, `yr start --worker`)
//! against an outsider: a plain TCP client that knows a real object's ID and a node's transfer
//! address (from `session.json`) gets nothing and deletes nothing; an object ID chosen by a REST
//! caller to name an address outside the cluster makes no data worker connect there; and the
//! nodes themselves still pull from each other (the agents told their data workers the members,
//! and the worker node was given the master's cluster secret).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use yr_datastore::transfer::{PeerRequest, PEER_MAGIC};
use yr_datastore::{Client, NodeTag, ObjectId};
use yr_tests::cluster::{Cluster, NodeOptions};
use yr_tests::http::{http_with, services};
use yr_tests::{bytes, checksum};

/// Connects to `addr`, sends the peer magic and `frame` without any handshake, and returns
/// what comes back before the port closes the connection.
fn as_a_stranger(addr: &str, frame: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut hello = PEER_MAGIC.to_vec();
    // Zeros where the nonce and the proof belong, then the request.
    hello.extend_from_slice(&[0u8; 64]);
    hello.extend_from_slice(frame);
    let _ = s.write_all(&hello);
    // Nothing more is coming: the port sees the end at once instead of
    // waiting out its handshake deadline.
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    got
}

#[test]
fn cluster_transfer_ports_refuse_outsiders_and_only_members_are_pulled_from() {
    let mut c = Cluster::start(NodeOptions::default());
    let w = c.add_worker(NodeOptions::default());
    let master = c.master().clone();
    let worker = c.session(w).clone();
    for s in [&master, &worker] {
        let secret = s
            .cluster_secret
            .as_ref()
            .expect("the session names the secret");
        let mode = std::fs::metadata(secret).expect("secret file");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            mode.permissions().mode() & 0o777,
            0o600,
            "{}",
            secret.display()
        );
    }

    // A real object on the worker node.
    let there = Client::connect(&worker.data_socket).expect("worker's data worker");
    let data = bytes(3 << 20, 5);
    let id = there.new_id();
    there.put(id, &data).expect("put on the worker node");

    // An outsider at the worker's transfer port, with a pull and a delete for it.
    for frame in [
        PeerRequest::Pull {
            id,
            timeout_ms: 0,
            requester: NodeTag(0),
        }
        .encode(),
        PeerRequest::Delete { ids: vec![id] }.encode(),
    ] {
        let got = as_a_stranger(&worker.data_transfer, &frame);
        assert!(
            got.len() <= 32,
            "an outsider gets at most a nonce, got {} bytes",
            got.len()
        );
    }
    assert!(there.contains(id).expect("contains"), "still there");
    assert_eq!(there.stats().expect("stats").serves, 0, "nothing served");

    // The master node pulls it: members with the secret are served.
    let here = Client::connect(&master.data_socket).expect("master's data worker");
    let g = here
        .get_remote(id, Duration::from_secs(30))
        .expect("a cross-node pull");
    assert_eq!(checksum(&g), checksum(&data));
    drop(g);
    assert_eq!(there.stats().expect("stats").serves, 1);

    // A REST caller names an object on an address outside the cluster, where something
    // listens: the data worker refuses without connecting.
    let bait = TcpListener::bind("127.0.0.1:0").expect("bind");
    bait.set_nonblocking(true).expect("nonblocking");
    let addr = match bait.local_addr().expect("addr") {
        std::net::SocketAddr::V4(a) => a,
        other => panic!("not IPv4: {other}"),
    };
    let forged = ObjectId::random(NodeTag::new(addr, 9).0);
    let (_, front) = services(&master.session_dir);
    let r = http_with(
        &front,
        "GET",
        &format!("/datasystem/v1/obj/get?id={forged}&timeoutMs=100"),
        &[],
        "",
    );
    assert_eq!(r.status, 404, "{}", r.body);
    assert!(r.body.contains("not a member"), "{}", r.body);
    assert!(r.body.contains(&addr.to_string()), "{}", r.body);
    match bait.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the data worker connected to {addr}: {other:?}"),
    }
    // Same through a client of the data worker.
    let e = here
        .get_remote(forged, Duration::ZERO)
        .expect_err("not a member");
    assert_eq!(e.code(), Some(yr_datastore::ErrorCode::NotMember), "{e}");
    match bait.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the data worker connected to {addr}: {other:?}"),
    }
    let log = c.logs();
    assert!(
        log.contains("transfer port: refused"),
        "the refusals are logged"
    );
}

#[test]
fn a_node_started_with_encrypt_transfers_pulls_and_serves_sealed_in_a_mixed_cluster() {
    // Only the worker node encrypts: its own pulls open sealed connections, and the master's
    // plain connection to it is told to reconnect sealed. Objects cross both ways intact.
    let mut c = Cluster::start(NodeOptions::default());
    let w = c.add_worker(NodeOptions {
        extra: vec!["--encrypt-transfers".into()],
        ..Default::default()
    });
    let master = c.master().clone();
    let worker = c.session(w).clone();
    let here = Client::connect(&master.data_socket).expect("master's data worker");
    let there = Client::connect(&worker.data_socket).expect("worker's data worker");
    for (from, to, seed) in [(&there, &here, 7u64), (&here, &there, 8)] {
        let data = bytes(5 << 20, seed);
        let id = from.new_id();
        from.put(id, &data).expect("put");
        let g = to
            .get_remote(id, Duration::from_secs(30))
            .expect("a sealed cross-node pull");
        assert_eq!(checksum(&g), checksum(&data));
    }
    assert_eq!(there.stats().expect("stats").serves, 1);
    assert_eq!(here.stats().expect("stats").serves, 1);
    // An outsider still gets nothing from the encrypting node's port.
    let got = as_a_stranger(
        &worker.data_transfer,
        &PeerRequest::Delete { ids: vec![] }.encode(),
    );
    assert!(got.len() <= 32, "an outsider got {} bytes", got.len());
}
