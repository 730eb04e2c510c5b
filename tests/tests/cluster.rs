//! End-to-end tests of a whole yr cluster: real nodes started with `yr start` (real etcd,
//! function master, data workers, function proxies and agents, each its own process), real
//! function processes (the `hello` and `counter` examples), driven only through the `yr` command
//! line (`function deploy`, `invoke`, `instance create|kill`, `status --json`, `stop`).
//!
//! What is covered: calls to stateless and stateful functions and their errors; placement by
//! cpu across two nodes and the "insufficient resources" refusal; placement by label affinity
//! (required, anti, and the refusal when no node matches); a stateless pool growing to its
//! maximum under load and shrinking back to its minimum when idle; restarts of crashed or killed
//! instances up to the retry limit, then FATAL with the crash's stderr; a function master killed
//! and restarted that rebuilds its state from etcd; that `yr stop` leaves no process or
//! socket behind; and that a component refuses a bad `YR_COMPONENT_THREADS` by name.
//!
//! How: [`yr_tests::cluster::Cluster`] starts nodes in a temporary folder with `--ports auto`
//! and a 64 MiB arena, so these tests run in parallel; every wait polls `yr status --json` for a
//! real condition with a deadline; dropping the cluster stops every node it started (and any
//! component the test started itself).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use yr_tests::cluster::{
    example, example_dir, processes_mentioning, Cluster, ClusterStatus, InstanceStatus,
    NodeOptions, Process, YrOutput,
};

/// The instance ID in a reply of the `hello` handler: `hello, WHO (from ID)`.
fn replying_instance(reply: &str) -> Option<&str> {
    let (_, id) = reply.trim_end().strip_suffix(')')?.rsplit_once("(from ")?;
    Some(id)
}

#[test]
fn hello_and_counter_on_one_node() {
    let c = Cluster::start(NodeOptions::default());
    let hello = example("hello");
    let counter = example("counter");

    // The example's function.toml, with the code this build produced.
    let toml = example_dir("hello").join("function.toml");
    let out = c.deploy(&[
        "--file",
        toml.to_str().expect("UTF-8 path"),
        "--code",
        hello.to_str().expect("UTF-8 path"),
    ]);
    assert!(
        out.stdout.contains("deployed function hello"),
        "deploy says what it did\n{out}"
    );

    let out = c.invoke("hello", "world").expect_ok("invoke hello");
    assert!(
        out.stdout.starts_with("hello, world (from hello-"),
        "unexpected reply\n{out}"
    );
    let id = replying_instance(&out.stdout).expect("reply names its instance");
    let st = c.status();
    let inst = st.instance(id).unwrap_or_else(|| {
        panic!(
            "instance {id} that answered is not in the status:\n{}",
            st.raw
        )
    });
    assert_eq!(inst.function, "hello");
    assert_eq!(inst.state, "RUNNING", "{}", st.raw);
    assert!(!inst.stateful);
    assert_eq!(inst.node_id, c.master().node_id);
    assert!(
        Process::find(inst.pid, "hello instance").is_some(),
        "status gives pid {} for {id}, but no such process runs",
        inst.pid
    );

    let out = c
        .invoke("no-such-function", "x")
        .expect_err("invoking an undeployed function");
    assert!(
        out.stderr.contains("ERROR_NOT_FOUND") && out.stderr.contains("\"no-such-function\""),
        "the error names the missing function\n{out}"
    );

    // A stateful instance: calls arrive in order and state persists between them.
    let toml = example_dir("counter").join("function.toml");
    c.deploy(&[
        "--file",
        toml.to_str().expect("UTF-8 path"),
        "--code",
        counter.to_str().expect("UTF-8 path"),
    ]);
    let out = c
        .yr(&["instance", "create", "counter", "--name", "c1"])
        .expect_ok("create instance c1");
    assert!(
        out.stdout.contains("RUNNING on node"),
        "create reports a running instance\n{out}"
    );
    for i in 1..=20 {
        let out = c.call("counter", "c1", "add", "1").expect_ok("add 1");
        assert_eq!(out.stdout.trim(), i.to_string(), "add #{i}\n{out}");
    }
    let out = c.call("counter", "c1", "calls", "").expect_ok("calls");
    assert_eq!(out.stdout.trim(), "21", "20 adds and this call\n{out}");

    let out = c
        .call("counter", "c1", "nope", "")
        .expect_err("calling a method the class lacks");
    assert!(
        out.stderr.contains("ERROR_FUNCTION")
            && out.stderr.contains("counter has no method \"nope\""),
        "the function's own error reaches the caller\n{out}"
    );
    // The error did not cost the instance its state.
    let out = c.call("counter", "c1", "get", "").expect_ok("get");
    assert_eq!(out.stdout.trim(), "20", "{out}");

    let st = c.status();
    let c1 = st.named("c1").expect("c1 in status");
    assert!(
        c1.stateful && c1.state == "RUNNING" && c1.restarts == 0,
        "{}",
        st.raw
    );
}

#[test]
fn placement_spreads_across_two_workers_when_one_is_full() {
    let mut c = Cluster::start(NodeOptions::cpu(1000).label("zone", "a"));
    c.add_worker(NodeOptions::cpu(1000).label("zone", "b"));
    let (master_id, worker_id) = (c.session(0).node_id.clone(), c.session(1).node_id.clone());
    let st = c.wait_for_all_nodes();
    for (id, zone) in [(&master_id, "a"), (&worker_id, "b")] {
        let n = st.node(id).expect("node");
        assert_eq!(n.cpu_total, 1000, "--cpu 1000 is what the node offers");
        assert_eq!(n.labels.get("zone").map(String::as_str), Some(zone));
    }

    let counter = example("counter");
    c.deploy(&[
        "--name",
        "counter",
        "--code",
        counter.to_str().expect("UTF-8 path"),
        "--handler",
        "counter",
        "--cpu",
        "600",
    ]);
    for name in ["a", "b"] {
        c.yr(&["instance", "create", "counter", "--name", name])
            .expect_ok(&format!("create instance {name}"));
    }
    let st = c.status();
    let node_of = |name: &str| -> String {
        let i = st
            .named(name)
            .unwrap_or_else(|| panic!("instance {name} missing:\n{}", st.raw));
        assert_eq!(i.state, "RUNNING", "{}", st.raw);
        i.node_id.clone()
    };
    let nodes: HashSet<String> = [node_of("a"), node_of("b")].into();
    assert_eq!(
        nodes,
        HashSet::from([master_id.clone(), worker_id.clone()]),
        "600m instances on 1000m nodes must go one per node\n{}",
        st.raw
    );
    for id in [&master_id, &worker_id] {
        assert_eq!(st.node(id).map(|n| n.cpu_used), Some(600), "{}", st.raw);
    }

    std::thread::scope(|s| {
        // Neither node has 600m left. The master waits (here 2 s) for resources to free up
        // before it refuses; meanwhile, check the other paths.
        let third = s.spawn(|| {
            let t = Instant::now();
            let out = c.yr(&[
                "instance",
                "create",
                "counter",
                "--name",
                "third",
                "--wait-ms",
                "2000",
            ]);
            (out, t.elapsed())
        });

        // Calls through the master node's proxy reach both instances, wherever they run.
        for name in ["a", "b"] {
            let out = c.call("counter", name, "add", "5").expect_ok("add 5");
            assert_eq!(out.stdout.trim(), "5", "instance {name}\n{out}");
        }

        // A cold start of a stateless function that does not fit is refused as such, within
        // the call's own timeout.
        let hello = example("hello");
        c.deploy(&[
            "--name",
            "big",
            "--code",
            hello.to_str().expect("UTF-8 path"),
            "--handler",
            "hello",
            "--cpu",
            "600",
            "--timeout-ms",
            "2000",
        ]);
        let out = c
            .invoke("big", "x")
            .expect_err("cold start without resources");
        assert!(
            out.stderr.contains("ERROR_INSUFFICIENT_RESOURCES")
                && out
                    .stderr
                    .contains("insufficient resources: asked cpu 600m"),
            "{out}"
        );

        let (out, took) = third.join().expect("create thread");
        let out = out.expect_err("a third 600m instance on two 1000m nodes");
        assert!(
            out.stderr.contains("insufficient resources")
                && out.stderr.contains("asked cpu 600m, memory 64 MiB"),
            "the refusal says what was asked\n{out}"
        );
        eprintln!("the refused `yr instance create` took {took:?}");
    });

    let st = c.status();
    let third = st.named("third").expect("the refused instance is recorded");
    assert_eq!(third.state, "FATAL", "{}", st.raw);
    assert!(third.error.contains("insufficient resources"), "{}", st.raw);
    for id in [&master_id, &worker_id] {
        assert_eq!(
            st.node(id).map(|n| n.cpu_used),
            Some(600),
            "refused instances reserve nothing\n{}",
            st.raw
        );
    }
}

/// Waits until `id` is RUNNING after `restarts` restarts (or FATAL), and returns it.
fn wait_restarted_or_fatal(c: &Cluster, id: &str, restarts: u32) -> InstanceStatus {
    c.wait_until(
        &format!("{id} is RUNNING after {restarts} restart(s), or FATAL"),
        |st| {
            let i = st.instance(id)?;
            ((i.state == "RUNNING" && i.restarts == restarts && i.pid != 0) || i.state == "FATAL")
                .then(|| i.clone())
        },
    )
}

#[test]
fn crashed_instance_is_restarted_then_fatal() {
    let c = Cluster::start(NodeOptions::default());
    let hello = example("hello");
    let hello_path = hello.to_str().expect("UTF-8 path");
    c.deploy(&[
        "--name",
        "crasher",
        "--code",
        hello_path,
        "--handler",
        "crash",
        "--max-retries",
        "2",
    ]);

    // The first call cold-starts an instance, which dies during the call.
    let out = c
        .invoke("crasher", "boom")
        .expect_err("a call that crashes");
    assert!(
        out.stderr.contains("ERROR_INSTANCE_FATAL") && out.stderr.contains("exited"),
        "the caller learns the instance exited\n{out}"
    );
    let id = out.exited_instance("crasher");

    // Every crash is followed by a restart until the retry limit (2) is spent. Later calls name
    // the instance, so they can never cold-start another one.
    let mut i = wait_restarted_or_fatal(&c, &id, 1);
    let crashers = |st: &ClusterStatus| -> Vec<String> {
        st.instances_of("crasher")
            .iter()
            .map(|i| i.instance_id.clone())
            .collect()
    };
    let started = crashers(&c.status());
    let mut pids = HashSet::new();
    while i.state != "FATAL" {
        assert!(i.restarts <= 2, "restarted beyond max_retries\n{i:?}");
        assert!(pids.insert(i.pid), "a restart runs a new process\n{i:?}");
        let out = c
            .yr(&["invoke", "crasher", "--instance", &id, "--data", "boom"])
            .expect_err("a call that crashes the restarted instance");
        assert!(out.stderr.contains("exited during the call"), "{out}");
        i = wait_restarted_or_fatal(&c, &id, i.restarts + 1);
    }
    assert_eq!(i.restarts, 2, "two restarts, then FATAL\n{i:?}");
    assert!(
        i.error.contains("exited") && i.error.contains("crash requested"),
        "the FATAL error says the process exited and carries its stderr\n{i:?}"
    );
    assert!(i.error.contains("retry limit 2"), "{i:?}");
    let out = c
        .yr(&["invoke", "crasher", "--instance", &id, "--data", "x"])
        .expect_err("calling a FATAL instance");
    assert!(
        out.stderr.contains("FATAL") && out.stderr.contains("crash requested"),
        "callers of a FATAL instance get its reason\n{out}"
    );
    assert_eq!(
        crashers(&c.status()),
        started,
        "calls naming the instance start no other"
    );

    // An instance killed from outside is restarted in place: same ID, new process.
    c.deploy(&[
        "--name",
        "hello",
        "--code",
        hello_path,
        "--handler",
        "hello",
    ]);
    let out = c.invoke("hello", "you").expect_ok("invoke hello");
    let hid = replying_instance(&out.stdout)
        .expect("reply names its instance")
        .to_string();
    let st = c.status();
    let before = st.instance(&hid).expect("hello instance in status").clone();
    assert_eq!(before.restarts, 0);
    let victim = Process::find(before.pid, "hello instance").expect("its process runs");
    let pid = i32::try_from(before.pid).expect("pid fits in pid_t");
    // SAFETY: kill(2) on the instance's pid, checked above to be the running instance.
    let killed = unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(killed, 0, "kill -9 {pid}");
    let after = c.wait_until(
        &format!("{hid} is RUNNING again with a new process after kill -9 {pid}"),
        |st| {
            let i = st.instance(&hid)?;
            (i.state == "RUNNING" && i.pid != 0 && i.pid != before.pid).then(|| i.clone())
        },
    );
    assert_eq!(after.restarts, 1, "{after:?}");
    assert!(
        after.error.is_empty(),
        "RUNNING clears the error\n{after:?}"
    );
    assert!(victim.is_gone(), "pid {pid} still runs");
    assert!(
        Process::find(after.pid, "restarted hello").is_some(),
        "status says pid {} but no such process runs",
        after.pid
    );
    let out = c
        .invoke("hello", "again")
        .expect_ok("invoke after the restart");
    assert!(out.stdout.starts_with("hello, again (from "), "{out}");
}

#[test]
fn stop_leaves_nothing_behind() {
    let mut c = Cluster::start(NodeOptions::cpu(1000));
    c.add_worker(NodeOptions::cpu(1000));
    let hello = example("hello");
    let counter = example("counter");
    c.deploy(&[
        "--name",
        "hello",
        "--code",
        hello.to_str().expect("UTF-8 path"),
        "--handler",
        "hello",
    ]);
    c.invoke("hello", "once").expect_ok("invoke hello");
    // Two 600m instances on two 1000m nodes: a function process on each node.
    c.deploy(&[
        "--name",
        "counter",
        "--code",
        counter.to_str().expect("UTF-8 path"),
        "--handler",
        "counter",
        "--cpu",
        "600",
    ]);
    for name in ["a", "b"] {
        c.yr(&["instance", "create", "counter", "--name", name])
            .expect_ok("create instance");
    }

    let st = c.status();
    let running: Vec<&InstanceStatus> = st
        .instances
        .iter()
        .filter(|i| i.state == "RUNNING")
        .collect();
    for f in ["hello", "counter"] {
        assert!(
            running.iter().any(|i| i.function == f),
            "{f} runs\n{}",
            st.raw
        );
    }
    let mut per_node: Vec<Vec<Process>> = Vec::new();
    for n in 0..c.node_count() {
        let s = c.session(n);
        let mut procs: Vec<Process> = s
            .components
            .iter()
            .map(|comp| {
                Process::find(comp.pid, &format!("{} of {}", comp.name, s.node_id))
                    .unwrap_or_else(|| panic!("{} (pid {}) is not running", comp.name, comp.pid))
            })
            .collect();
        for i in running.iter().filter(|i| i.node_id == s.node_id) {
            procs.push(
                Process::find(i.pid, &format!("instance {}", i.instance_id))
                    .unwrap_or_else(|| panic!("instance process {} is not running", i.pid)),
            );
        }
        assert!(s.data_socket.exists(), "{}", s.data_socket.display());
        let instance_socket = s.session_dir.join("node").join("proxy.sock");
        assert!(instance_socket.exists(), "{}", instance_socket.display());
        per_node.push(procs);
    }
    assert!(
        per_node.iter().all(|p| p.len() > 3),
        "every node runs a function process: {per_node:?}"
    );

    // Workers first, then the master node; each stop must end everything of its node politely.
    for n in (0..c.node_count()).rev() {
        let s = c.session(n).clone();
        let t = Instant::now();
        let out = c.stop_node(n, false);
        let took = t.elapsed();
        let out = out.expect_ok(&format!("yr stop of node {}", s.node_id));
        assert!(
            out.stdout.contains(&format!(
                "stopped {} component(s) of node {}",
                s.components.len(),
                s.node_id
            )),
            "{out}"
        );
        assert!(
            !out.stdout.contains("killed after the deadline"),
            "every component ends on SIGTERM\n{out}"
        );
        let left: Vec<&Process> = per_node[n].iter().filter(|p| !p.is_gone()).collect();
        assert!(
            left.is_empty(),
            "yr stop returned (after {took:?}) but these still run: {left:?}"
        );
        assert!(
            !s.data_socket.exists(),
            "the data worker's socket {} is left behind",
            s.data_socket.display()
        );
        let instance_socket = s.session_dir.join("node").join("proxy.sock");
        assert!(
            !instance_socket.exists(),
            "the proxy's instance socket {} is left behind",
            instance_socket.display()
        );
        assert!(
            !s.session_dir.join("session.json").exists(),
            "session.json of a stopped node is removed"
        );
        assert!(took < Duration::from_secs(20), "stop took {took:?}");
    }

    // Nothing else started from this cluster's folder is still alive either (a restart the
    // master began after the worker left would show up here).
    let root = c.root().display().to_string();
    let left = processes_mentioning(&root);
    assert!(left.is_empty(), "processes left behind: {left:#?}");
}

/// Instances that count against a pool's maximum: every one that has not ended.
fn alive(i: &InstanceStatus) -> bool {
    i.state != "EXITED" && i.state != "FATAL"
}

/// The IDs of `function`'s RUNNING instances; panics if more than `max` are alive.
#[track_caller]
fn running_within_max(st: &ClusterStatus, function: &str, max: usize) -> Vec<String> {
    let of = st.instances_of(function);
    let alive_now = of.iter().filter(|i| alive(i)).count();
    assert!(
        alive_now <= max,
        "{alive_now} instances of {function} alive, more than max_instances {max}\n{}",
        st.raw
    );
    of.iter()
        .filter(|i| i.state == "RUNNING")
        .map(|i| i.instance_id.clone())
        .collect()
}

/// `max_instances` of `slow`.
const SLOW_MAX: usize = 3;

/// Starts a master node whose scheduler stops instances idle for 1.5 s, deploys `slow` (the
/// `sleep` handler; one call at a time per instance; between 1 and [`SLOW_MAX`] instances) and
/// waits until its minimum, one instance, is RUNNING; returns the cluster and that instance.
fn start_slow_pool() -> (Cluster, String) {
    let c = Cluster::start(NodeOptions::default().idle_timeout_ms(1500));
    let hello = example("hello");
    let max = SLOW_MAX.to_string();
    c.deploy(&[
        "--name",
        "slow",
        "--code",
        hello.to_str().expect("UTF-8 path"),
        "--handler",
        "sleep",
        "--concurrency",
        "1",
        "--min-instances",
        "1",
        "--max-instances",
        &max,
        "--cpu",
        "100",
    ]);
    // The scheduler brings the pool up to its minimum without any call.
    let first = c.wait_until("exactly one instance of slow is RUNNING", |st| {
        let running = running_within_max(st, "slow", SLOW_MAX);
        (running.len() == 1).then(|| running[0].clone())
    });
    (c, first)
}

/// Checks what six finished calls to `slow` replied, and returns the instances that served them.
fn served_by(replies: Vec<YrOutput>) -> HashSet<String> {
    replies
        .into_iter()
        .map(|out| {
            let out = out.expect_ok("a 3 s call to slow");
            let id = out.stdout.trim().to_string();
            assert!(
                id.starts_with("slow-"),
                "a reply of the sleep handler is its instance ID\n{out}"
            );
            id
        })
        .collect()
}

/// After the calls, idle for 1.5 s, the pool goes back to its minimum: the instances of `peak`
/// but one are stopped (EXITED), and nothing else runs.
fn wait_shrunk_to_min(c: &Cluster, peak: &[String]) {
    let st = c.wait_until("slow is back to exactly one RUNNING instance", |st| {
        let running = running_within_max(st, "slow", SLOW_MAX);
        let settled = st
            .instances_of("slow")
            .iter()
            .all(|i| i.state == "RUNNING" || i.state == "EXITED");
        (running.len() == 1 && settled).then(|| st.clone())
    });
    let stopped = peak
        .iter()
        .filter(|id| st.instance(id).is_some_and(|i| i.state == "EXITED"))
        .count();
    assert_eq!(
        stopped,
        peak.len() - 1,
        "all but one of the instances at the peak ({peak:?}) were stopped as idle\n{}",
        st.raw
    );
}

/// A burst of calls on a pool at its minimum: the pool grows to its maximum, never beyond, the
/// calls spread over the new instances (waiting calls are not bound to the busy instance they
/// arrived to), and the pool shrinks back once idle.
#[test]
fn pool_scales_between_min_and_max() {
    let (c, first) = start_slow_pool();
    let t = Instant::now();
    let (replies, peak) = std::thread::scope(|s| {
        let calls: Vec<_> = (0..6)
            .map(|_| s.spawn(|| c.invoke("slow", "3000")))
            .collect();
        let peak = c.wait_until("three instances of slow are RUNNING at once", |st| {
            let running = running_within_max(st, "slow", SLOW_MAX);
            if running.len() == SLOW_MAX {
                return Some(running);
            }
            assert!(
                !calls.iter().all(|h| h.is_finished()),
                "all six calls ended (after {:?}) and the pool never had {SLOW_MAX} instances \
                 RUNNING at once\n{}",
                t.elapsed(),
                st.raw
            );
            None
        });
        let replies: Vec<YrOutput> = calls
            .into_iter()
            .map(|h| h.join().expect("invoke thread"))
            .collect();
        (replies, peak)
    });
    let served = served_by(replies);
    eprintln!("six 3 s calls took {:?}; served by {served:?}", t.elapsed());
    assert!(
        served.len() >= 2,
        "the six concurrent calls were all served by {served:?}, though the pool grew to \
         {peak:?}"
    );
    assert!(peak.contains(&first), "{peak:?} lacks {first}");
    wait_shrunk_to_min(&c, &peak);
}

/// The same pool under calls that arrive while it grows: each call that finds every instance
/// busy makes the pool grow, up to its maximum and never beyond; an added instance serves the
/// calls that arrive once it runs; idle, the pool shrinks back to its minimum.
#[test]
fn pool_scales_under_staggered_calls() {
    let (c, first) = start_slow_pool();
    let t = Instant::now();
    let (replies, peak) = std::thread::scope(|s| {
        let mut calls = Vec::new();
        let mut peak = Vec::new();
        // Two calls on the one instance: the first takes it, the second finds it busy, so the
        // pool grows. Two more once a second instance runs: one takes it, the other finds every
        // instance busy, so the pool grows again. The last two once a third instance runs: the
        // pool is at its maximum, so calls that find every instance busy must not grow it.
        for (launch, want) in [(2, 2), (2, 3), (2, 3)] {
            for _ in 0..launch {
                calls.push(s.spawn(|| c.invoke("slow", "3000")));
            }
            peak = c.wait_until(
                &format!(
                    "{want} instances of slow are RUNNING with {} calls made",
                    calls.len()
                ),
                |st| {
                    let running = running_within_max(st, "slow", SLOW_MAX);
                    (running.len() >= want).then_some(running)
                },
            );
        }
        // All six calls are in; the pool is at its maximum. Keep checking the bound until
        // they end.
        while !calls.iter().all(|h| h.is_finished()) {
            running_within_max(&c.status(), "slow", SLOW_MAX);
            std::thread::sleep(Duration::from_millis(100));
        }
        let replies: Vec<YrOutput> = calls
            .into_iter()
            .map(|h| h.join().expect("invoke thread"))
            .collect();
        (replies, peak)
    });
    let served = served_by(replies);
    eprintln!("six 3 s calls took {:?}; served by {served:?}", t.elapsed());
    assert_eq!(peak.len(), SLOW_MAX, "{peak:?}");
    assert!(peak.contains(&first), "{peak:?} lacks {first}");
    assert!(
        served.len() >= 2 && served.iter().all(|id| peak.contains(id)),
        "the calls were served by {served:?}; the instances at the peak were {peak:?}"
    );
    wait_shrunk_to_min(&c, &peak);
    eprintln!(
        "the pool was back to one instance {:?} after the first call",
        t.elapsed()
    );
}

#[test]
fn label_affinity_places_and_refuses() {
    let mut c = Cluster::start(NodeOptions::default().label("zone", "a"));
    c.add_worker(NodeOptions::default().label("zone", "b").label("gpu", "1"));
    let (master_id, worker_id) = (c.session(0).node_id.clone(), c.session(1).node_id.clone());
    c.wait_for_all_nodes();
    let counter = example("counter");
    let counter_path = counter.to_str().expect("UTF-8 path");
    c.deploy(&[
        "--name",
        "counter",
        "--code",
        counter_path,
        "--handler",
        "counter",
    ]);

    // (instance, affinity, the node it must land on)
    for (name, affinity, node) in [
        ("in-zone-b", "required:zone=b", &worker_id),
        ("no-gpu", "anti:gpu", &master_id),
    ] {
        let out = c
            .yr(&[
                "instance",
                "create",
                "counter",
                "--name",
                name,
                "--affinity",
                affinity,
            ])
            .expect_ok(&format!("create {name} with --affinity {affinity}"));
        assert!(
            out.stdout.contains(&format!("RUNNING on node {node}")),
            "--affinity {affinity} places {name} on node {node}\n{out}"
        );
        let st = c.status();
        let i = st
            .named(name)
            .unwrap_or_else(|| panic!("{name} missing from the status\n{}", st.raw));
        assert_eq!(
            (i.state.as_str(), i.node_id.as_str()),
            ("RUNNING", node.as_str()),
            "{}",
            st.raw
        );
        let out = c.call("counter", name, "add", "3").expect_ok("add 3");
        assert_eq!(out.stdout.trim(), "3", "{name} answers\n{out}");
    }

    // A function's own affinity applies to every instance of it.
    c.deploy(&[
        "--name",
        "pinned",
        "--code",
        counter_path,
        "--handler",
        "counter",
        "--affinity",
        "required:zone=b|c",
        "--affinity",
        "preferred:zone=a",
    ]);
    let out = c
        .yr(&["instance", "create", "pinned", "--name", "p1"])
        .expect_ok("create an instance of a function with affinity");
    assert!(
        out.stdout.contains(&format!("RUNNING on node {worker_id}")),
        "required:zone=b|c wins over preferred:zone=a\n{out}"
    );

    // No node is in zone z: refused after the wait, saying that the labels are the reason.
    let t = Instant::now();
    let out = c
        .yr(&[
            "instance",
            "create",
            "counter",
            "--name",
            "nowhere",
            "--affinity",
            "required:zone=z",
            "--wait-ms",
            "1000",
        ])
        .expect_err("an affinity no node satisfies");
    let took = t.elapsed();
    assert!(
        out.stderr.contains("none satisfies the label affinity")
            && out.stderr.contains("required:zone=z"),
        "the refusal names the affinity rule\n{out}"
    );
    assert!(
        took < Duration::from_secs(10),
        "the refusal came after {took:?}, with --wait-ms 1000"
    );
    let st = c.status();
    let nowhere = st
        .named("nowhere")
        .expect("the refused instance is recorded");
    assert_eq!(nowhere.state, "FATAL", "{}", st.raw);
    assert!(
        nowhere.error.contains("none satisfies the label affinity"),
        "{}",
        st.raw
    );
}

#[test]
fn master_restart_rebuilds_from_etcd() {
    let mut c = Cluster::start(NodeOptions::default());
    let counter = example("counter");
    c.deploy(&[
        "--name",
        "counter",
        "--code",
        counter.to_str().expect("UTF-8 path"),
        "--handler",
        "counter",
    ]);
    c.yr(&["instance", "create", "counter", "--name", "c1"])
        .expect_ok("create c1");
    let out = c.call("counter", "c1", "add", "4").expect_ok("add 4");
    assert_eq!(out.stdout.trim(), "4", "{out}");
    let st = c.status();
    let before = st.named("c1").expect("c1 in the status").clone();
    assert_eq!(before.state, "RUNNING", "{}", st.raw);

    // kill -9 the function master that `yr start` began (and the node's supervisor before it,
    // so that the test restarts the master itself).
    let master = c.master().clone();
    let supervisor = master
        .pid_of("supervisor")
        .and_then(|p| Process::find(p, "supervisor"))
        .expect("the node supervisor runs");
    // SAFETY: kill(2) on the supervisor's pid, checked above to be that running process.
    unsafe { libc::kill(supervisor.pid as i32, libc::SIGKILL) };
    assert!(supervisor.wait_gone(Duration::from_secs(10)));
    let pid = master
        .pid_of("function-master")
        .expect("session.json lists the function master");
    let address = master
        .components
        .iter()
        .find(|comp| comp.name == "function-master")
        .map(|comp| comp.address.clone())
        .expect("the function master's address");
    let old = Process::find(pid, "function master").expect("the function master runs");
    // SAFETY: kill(2) on the function master's pid, checked above to be that running process.
    let killed = unsafe {
        libc::kill(
            i32::try_from(pid).expect("pid fits in pid_t"),
            libc::SIGKILL,
        )
    };
    assert_eq!(killed, 0, "kill -9 {pid}");
    assert!(
        old.wait_gone(Duration::from_secs(10)),
        "the function master (pid {pid}) still runs 10 s after kill -9"
    );
    let out = c.yr(&["status", "--json"]);
    assert!(
        !out.success(),
        "yr status answers with no function master running\n{out}"
    );

    // A new master on the same address rebuilds its view from etcd.
    let (new_pid, ready) = c.restart_function_master(Duration::from_secs(30));
    assert_eq!(
        ready,
        format!("ready address={address}"),
        "the restarted master serves on the old address"
    );
    assert_ne!(new_pid, pid);
    let st = c.wait_until("the restarted master answers and shows c1 RUNNING", |st| {
        st.named("c1")
            .is_some_and(|i| i.state == "RUNNING")
            .then(|| st.clone())
    });
    let after = st.named("c1").expect("c1");
    assert_eq!(
        (after.instance_id.as_str(), after.pid, after.restarts),
        (before.instance_id.as_str(), before.pid, 0),
        "c1 is the same instance and the same process\n{}",
        st.raw
    );
    assert!(
        st.node(&master.node_id).is_some(),
        "the node is alive for the new master\n{}",
        st.raw
    );
    assert!(st.functions.iter().any(|f| f == "counter"), "{}", st.raw);
    assert!(
        Process::find(before.pid, "c1").is_some(),
        "c1's process (pid {}) still runs",
        before.pid
    );

    // The instance kept its state, and the new master places new instances.
    let out = c
        .call("counter", "c1", "add", "4")
        .expect_ok("add 4 after the restart");
    assert_eq!(out.stdout.trim(), "8", "c1 kept its state\n{out}");
    let out = c
        .yr(&["instance", "create", "counter", "--name", "c2"])
        .expect_ok("create c2 through the restarted master");
    assert!(out.stdout.contains("RUNNING on node"), "{out}");
    let st = c.status();
    let c2 = st.named("c2").expect("c2 in the status");
    assert_eq!(c2.state, "RUNNING", "{}", st.raw);
    assert_ne!(c2.instance_id, before.instance_id);
    let out = c.call("counter", "c2", "add", "1").expect_ok("add 1 to c2");
    assert_eq!(out.stdout.trim(), "1", "{out}");
}

/// What happens while no master runs is not lost: an instance whose process dies then is
/// restarted once a master is back (here the node's supervisor restarts it; the agent keeps its
/// exit report until a master takes it, and the new master checks every record against what
/// the agents run), while an instance that kept running is left alone.
#[test]
fn a_restarted_master_settles_what_happened_while_it_was_down() {
    let c = Cluster::start(NodeOptions::default());
    let counter = example("counter");
    c.deploy(&[
        "--name",
        "counter",
        "--code",
        counter.to_str().expect("UTF-8 path"),
        "--handler",
        "counter",
    ]);
    for name in ["dies", "lives"] {
        c.yr(&["instance", "create", "counter", "--name", name])
            .expect_ok("create");
        c.call("counter", name, "add", "3").expect_ok("add 3");
    }
    let st = c.status();
    let dies = st.named("dies").expect("dies").clone();
    let lives = st.named("lives").expect("lives").clone();

    let master = c.master().clone();
    let pid = master
        .pid_of("function-master")
        .expect("session.json lists the function master");
    let old = Process::find(pid, "function master").expect("the function master runs");
    for (p, what) in [
        (pid, "the function master"),
        (dies.pid, "the instance's process"),
    ] {
        // SAFETY: kill(2) on a pid this test found running (the master, then a function
        // process the cluster started).
        let killed = unsafe { libc::kill(i32::try_from(p).expect("pid fits"), libc::SIGKILL) };
        assert_eq!(killed, 0, "kill -9 {what} ({p})");
    }
    assert!(old.wait_gone(Duration::from_secs(10)), "the master is gone");
    let gone = Process::find(dies.pid, "dies");
    assert!(
        gone.is_none_or(|p| p.wait_gone(Duration::from_secs(10))),
        "the instance's process is gone"
    );

    // The node's supervisor starts the master again.
    let st = c.wait_until_within(
        "the instance that died while no master ran is running again",
        Duration::from_secs(60),
        |st| {
            st.named("dies")
                .is_some_and(|i| i.state == "RUNNING" && i.pid != dies.pid && i.pid != 0)
                .then(|| st.clone())
        },
    );
    let again = st.named("dies").expect("dies");
    assert_eq!(again.instance_id, dies.instance_id, "{}", st.raw);
    assert_eq!(again.restarts, 1, "restarted once\n{}", st.raw);
    let still = st.named("lives").expect("lives");
    assert_eq!(
        (still.state.as_str(), still.pid, still.restarts),
        ("RUNNING", lives.pid, 0),
        "the instance that kept running is untouched\n{}",
        st.raw
    );
    // The restarted one starts from a fresh state; the other kept its own.
    let out = c.call("counter", "dies", "add", "1").expect_ok("add 1");
    assert_eq!(out.stdout.trim(), "1", "{out}");
    let out = c.call("counter", "lives", "add", "1").expect_ok("add 1");
    assert_eq!(out.stdout.trim(), "4", "{out}");
    assert!(
        c.logs().contains("reconciled"),
        "the new master logs its reconciliation"
    );
}

/// The function side: code shipped as a `.tar.gz` package (unpacked per instance, entrypoint
/// inside it), the deployment's environment reaching the process, and the runtime context: one
/// function calling another through the proxy, and a handler putting into and reading from its
/// node's data worker with a zero-copy view.
#[test]
fn packages_environment_and_the_runtime_context() {
    let c = Cluster::start(NodeOptions::default());
    let hello = example("hello");
    let pkg_dir = c.root().join("pkg");
    std::fs::create_dir_all(pkg_dir.join("bin")).expect("package folder");
    std::fs::copy(&hello, pkg_dir.join("bin/hello")).expect("copy the executable");
    let pkg = c.root().join("hello.tar.gz");
    let status = std::process::Command::new("tar")
        .arg("czf")
        .arg(&pkg)
        .arg("-C")
        .arg(&pkg_dir)
        .arg("bin")
        .status()
        .expect("run tar");
    assert!(status.success(), "tar failed");
    let pkg_s = pkg.to_str().expect("UTF-8 path");
    c.deploy(&[
        "--name",
        "hello",
        "--code",
        pkg_s,
        "--entrypoint",
        "bin/hello",
        "--handler",
        "hello",
        "--env",
        "GREETING=hi",
    ])
    .expect_ok("deploy a package");
    let out = c
        .invoke("hello", "world")
        .expect_ok("invoke the packaged function");
    assert!(out.stdout.starts_with("hi, world (from hello-"), "{out}");
    // The package was unpacked into the instance's own folder.
    let id = replying_instance(&out.stdout).expect("reply names its instance");
    let unpacked = c
        .master()
        .session_dir
        .join("node/work/instances")
        .join(id)
        .join("code/bin/hello");
    assert!(unpacked.is_file(), "{} missing", unpacked.display());

    let hello_s = hello.to_str().expect("UTF-8 path");
    c.deploy(&["--name", "relay", "--code", hello_s, "--handler", "relay"])
        .expect_ok("deploy relay");
    let out = c.invoke("relay", "x").expect_ok("relay calls hello");
    assert!(
        out.stdout.starts_with("relayed: hi, x (from hello-"),
        "{out}"
    );

    c.deploy(&["--name", "store", "--code", hello_s, "--handler", "store"])
        .expect_ok("deploy store");
    let data = "y".repeat(100_000);
    let out = c.invoke("store", &data).expect_ok("store round trip");
    assert_eq!(
        out.stdout.trim(),
        "stored 100000 bytes; zero-copy view: true; same bytes: true",
        "{out}"
    );

    // A package whose entrypoint is missing: the call fails, naming it.
    c.deploy(&[
        "--name",
        "broken",
        "--code",
        pkg_s,
        "--entrypoint",
        "bin/nope",
        "--handler",
        "hello",
    ])
    .expect_ok("deploy with a wrong entrypoint");
    let out = c.invoke("broken", "x").expect_err("no such entrypoint");
    assert!(out.stderr.contains("bin/nope"), "{out}");
}

/// A worker node dies (its agent and proxy are killed with SIGKILL, so nothing deregisters):
/// once its lease lapses the node shows as dead, and its instance is restarted on the surviving
/// node with the same ID, where calls reach it again.
#[test]
fn a_dead_nodes_instances_move_to_a_live_node() {
    let mut c = Cluster::start(NodeOptions::default());
    c.add_worker(NodeOptions::default().label("zone", "b"));
    let (master_id, worker_id) = (c.session(0).node_id.clone(), c.session(1).node_id.clone());
    c.wait_for_all_nodes();
    let counter = example("counter");
    c.deploy(&[
        "--name",
        "counter",
        "--code",
        counter.to_str().expect("UTF-8 path"),
        "--handler",
        "counter",
    ]);
    c.yr(&[
        "instance",
        "create",
        "counter",
        "--name",
        "mover",
        "--affinity",
        "preferred:zone=b",
    ])
    .expect_ok("create on the worker");
    let before = c.status();
    let inst = before.named("mover").expect("instance recorded").clone();
    assert_eq!(inst.node_id, worker_id, "{}", before.raw);
    let out = c.call("counter", "mover", "add", "3").expect_ok("add 3");
    assert_eq!(out.stdout.trim(), "3");

    // Kill the worker's agent and proxy outright: no lease revocation, no goodbye. Its
    // supervisor first, as a host failure would, so that nothing restarts them.
    let worker = c.session(1).clone();
    let mut killed = Vec::new();
    for name in ["supervisor", "function-agent", "function-proxy"] {
        let pid = worker.pid_of(name).expect("component pid");
        let p = Process::find(pid, name).expect("component running");
        // SAFETY: SIGKILL to a process this test started (checked running just above).
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        killed.push(p);
    }
    for p in &killed {
        assert!(
            p.wait_gone(Duration::from_secs(10)),
            "{} survived SIGKILL",
            p.what
        );
    }
    // The lease lapses (6 s), the master marks the instance FAILED and restarts it elsewhere.
    let moved = c.wait_until_within(
        "the instance runs again on the live node",
        Duration::from_secs(40),
        |st| {
            let dead = st.node(&worker_id).is_none_or(|n| !n.alive);
            let i = st.named("mover")?;
            (dead && i.state == "RUNNING" && i.node_id == master_id).then(|| i.clone())
        },
    );
    assert_eq!(
        moved.instance_id, inst.instance_id,
        "same instance, new place"
    );
    assert_eq!(moved.restarts, 1);
    // A fresh process: its state started over.
    let out = c
        .call("counter", "mover", "add", "4")
        .expect_ok("add 4 after the move");
    assert_eq!(out.stdout.trim(), "4", "{out}");
}

#[test]
fn a_bad_component_thread_count_is_refused_by_name() {
    let out = std::process::Command::new(yr_tests::yr_bin())
        .args([
            "component",
            "meta-service",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "127.0.0.1:1",
        ])
        .env("YR_COMPONENT_THREADS", "many")
        .output()
        .expect("run yr");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("YR_COMPONENT_THREADS=\"many\" is not a positive number of threads"),
        "{stderr}"
    );
}
