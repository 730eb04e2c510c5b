//! Distributed programming end to end: real clusters (etcd, master, two
//! nodes started by `yr start`), driver programs that are also their own
//! function processes, objects moving between the nodes' data workers.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};
use yr_datastore::{Client, StoreStats};
use yr_tests::cluster::{example, Cluster, NodeOptions, Session};

/// A driver program started against the master node's session.
struct Driver {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Driver {
    fn start(program: &str, args: &[&str], cluster: &Cluster) -> Driver {
        let session = cluster.master().session_dir.display().to_string();
        Self::start_with(program, args, &[("YR_SESSION", &session)])
    }

    /// As `start`, with the driver finding its cluster through `env`.
    fn start_with(program: &str, args: &[&str], env: &[(&str, &str)]) -> Driver {
        let mut child = Command::new(example(program))
            .args(args)
            .env_remove("YR_SESSION")
            .env_remove("YR_MASTER_ADDRESS")
            .envs(env.iter().copied())
            .env("YR_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        Driver {
            stdin: child.stdin.take(),
            child,
            lines: rx,
        }
    }

    /// The next JSON line the driver prints.
    fn next(&self) -> serde_json::Value {
        let l = self
            .lines
            .recv_timeout(Duration::from_secs(180))
            .expect("the driver printed nothing within 180 s (or exited)");
        serde_json::from_str(&l).unwrap_or_else(|e| panic!("driver line {l:?}: {e}"))
    }

    fn proceed(&mut self) {
        let mut s = self.stdin.take().expect("stdin");
        writeln!(s, "go").expect("write to the driver");
    }

    fn finish(mut self) -> std::process::ExitStatus {
        drop(self.stdin.take());
        self.child.wait().expect("wait for the driver")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn two_nodes() -> Cluster {
    let mut c = Cluster::start(NodeOptions::default());
    c.add_worker(NodeOptions::default());
    c
}

fn stats(s: &Session) -> StoreStats {
    Client::connect(&s.data_socket)
        .and_then(|c| c.stats())
        .unwrap_or_else(|e| panic!("stats of {}: {e}", s.data_socket.display()))
}

/// Waits until both nodes' stores hold exactly what they held at `start`
/// (frees travel between processes asynchronously).
fn back_to(cluster: &Cluster, start: &[StoreStats], what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now: Vec<StoreStats> = (0..start.len())
            .map(|i| stats(cluster.session(i)))
            .collect();
        let same = now
            .iter()
            .zip(start)
            .all(|(n, s)| n.used == s.used && n.sealed == s.sealed && n.spilled == s.spilled);
        if same {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: stores not back to their starting usage after 30 s\nstart {start:?}\nnow {now:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn usage(cluster: &Cluster) -> Vec<StoreStats> {
    (0..cluster.node_count())
        .map(|i| stats(cluster.session(i)))
        .collect()
}

#[test]
fn the_pipeline_runs_on_two_nodes_and_a_thousand_steps_leave_every_store_as_it_was() {
    let cluster = two_nodes();
    let (head, worker) = (
        cluster.master().node_id.clone(),
        cluster.session(1).node_id.clone(),
    );
    let start = usage(&cluster);
    // Three rounds of 8 MiB arrays, checked by the driver against a local
    // computation; produce and reduce on the driver's node, transform on the other.
    let d = Driver::start(
        "pipeline",
        &["--size", "8MiB", "--rounds", "3", "--json"],
        &cluster,
    );
    for round in 0..3 {
        let v = d.next();
        assert_eq!(v["round"], round, "{v}");
        assert_eq!(v["checked"], true, "{v}");
        let nodes: Vec<&str> = v["stages"]
            .as_array()
            .expect("stages")
            .iter()
            .map(|s| s["node"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(
            nodes,
            [head.as_str(), worker.as_str(), head.as_str()],
            "{v}"
        );
    }
    assert!(d.finish().success(), "the pipeline driver failed");
    back_to(&cluster, &start, "after the 3-round pipeline");

    // 1,000 steps of 128 KiB arrays (stored, not inline), each crossing the
    // network twice: every object is freed on both nodes.
    let d = Driver::start(
        "pipeline",
        &["--size", "128KiB", "--rounds", "1000", "--quiet"],
        &cluster,
    );
    assert!(d.finish().success(), "the 1000-step pipeline failed");
    back_to(&cluster, &start, "after the 1000-step pipeline");
    let moved: u64 = usage(&cluster).iter().map(|s| s.pulls).sum();
    assert!(moved >= 2000, "each step pulls twice; saw {moved} pulls");
}

#[test]
fn calls_run_where_their_argument_is_and_read_it_in_place() {
    let cluster = two_nodes();
    let worker = cluster.session(1).node_id.clone();
    let d = Driver::start("yr-test-driver", &["locality", &worker], &cluster);
    let v = d.next();
    assert_eq!(v["object_node"], worker.as_str(), "{v}");
    assert_eq!(
        v["consume_node"],
        worker.as_str(),
        "a call with no placement rule runs on the node holding its argument: {v}"
    );
    assert_eq!(
        v["shared"], true,
        "the argument is a shared-memory view: {v}"
    );
    assert_eq!(v["len"], 1 << 20);
    let want: u64 = (0..1u64 << 20).map(|i| i % 251).sum();
    assert_eq!(v["sum"], want);
    assert!(d.finish().success());
    // Nothing moved: the consumer ran beside the object.
    assert_eq!(usage(&cluster).iter().map(|s| s.pulls).sum::<u64>(), 0);
}

#[test]
fn an_object_whose_only_node_died_fails_fast_with_object_lost() {
    let mut cluster = two_nodes();
    let worker = cluster.session(1).clone();
    let mut d = Driver::start("yr-test-driver", &["lost", &worker.node_id], &cluster);
    let v = d.next();
    assert_eq!(v["ready"], true, "{v}");
    let id = v["id"].as_str().expect("object id").to_string();
    cluster
        .stop_node(1, true)
        .expect_ok("killing the worker node");
    let t = Instant::now();
    d.proceed();
    let v = d.next();
    for what in ["get", "call"] {
        assert_eq!(v[what]["kind"], "ObjectLost", "{what}: {v}");
        let msg = v[what]["message"].as_str().unwrap_or("");
        assert!(msg.contains(&id), "{what} names the object {id}: {msg}");
        assert!(
            msg.contains(&worker.data_transfer),
            "{what} names the node {}: {msg}",
            worker.data_transfer
        );
    }
    // Far less than the get's 120 s timeout: the error comes from the
    // refused connection, not from waiting.
    assert!(
        t.elapsed() < Duration::from_secs(60),
        "took {:?}",
        t.elapsed()
    );
    let get = v["get"]["message"].as_str().unwrap_or("");
    assert!(
        get.contains(&worker.node_id),
        "get names the node ID: {get}"
    );
    assert!(d.finish().success());
}

#[test]
fn a_driver_that_exits_releases_everything_it_owned() {
    let cluster = two_nodes();
    let worker = cluster.session(1).node_id.clone();
    let start = usage(&cluster);
    let mut d = Driver::start("yr-test-driver", &["exit-owning", &worker], &cluster);
    let v = d.next();
    assert_eq!(v["ready"], true, "{v}");
    let held = usage(&cluster);
    assert!(
        held[0].used > start[0].used,
        "the driver's put is on its node"
    );
    assert!(
        held[1].used > start[1].used,
        "the call's result is on the worker"
    );
    d.proceed();
    d.finish();
    back_to(&cluster, &start, "after the driver exited");
}

#[test]
fn stateful_instances_keep_order_and_wait_returns_the_first_ready() {
    let cluster = Cluster::start(NodeOptions::default());
    // This driver finds its node through the master's address and the node's credentials
    // (what an agent gives its function processes), without a session.
    let s = cluster.master();
    let file = |p: &Option<std::path::PathBuf>| {
        p.as_ref()
            .expect("the session names its TLS files")
            .display()
            .to_string()
    };
    let (ca, cert, key) = (file(&s.tls_ca), file(&s.tls_cert), file(&s.tls_key));
    let d = Driver::start_with(
        "yr-test-driver",
        &["actors"],
        &[
            ("YR_MASTER_ADDRESS", &s.master_address),
            ("YR_TLS_CA", &ca),
            ("YR_TLS_CERT", &cert),
            ("YR_TLS_KEY", &key),
        ],
    );
    let v = d.next();
    assert_eq!(v["totals"], serde_json::json!([1, 3, 6, 10, 15]), "{v}");
    assert_eq!(v["total"], 15);
    assert_eq!(v["calls"], 5);
    let unknown = v["unknown_method"].as_str().unwrap_or("");
    assert!(unknown.contains("no method \"nope\""), "{v}");
    assert_eq!(v["first_ready"], 10, "the ready value comes first: {v}");
    assert_eq!(v["pending"], 1, "the 800 ms call is still running: {v}");
    assert_eq!(v["all_ready"], 2, "waiting for both returns both: {v}");
    assert_eq!(v["none_pending"], 0);
    assert_eq!(v["slow"], 800);
    assert!(d.finish().success());
}
