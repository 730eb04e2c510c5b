//! End-to-end tests of a whole yr cluster: real nodes started with `yr start` (real etcd,
//! function master, data workers, function proxies and agents, each its own process), real
//! function processes (the `hello` and `counter` examples), driven only through the `yr` command
//! line (`function deploy`, `invoke`, `instance create|kill`, `status --json`, `stop`).
//!
//! What is covered: calls to stateless and stateful functions and their errors; placement by
//! cpu across two nodes and the "insufficient resources" refusal; restarts of crashed or killed
//! instances up to the retry limit, then FATAL with the crash's stderr; and that `yr stop`
//! leaves no process or socket behind.
//!
//! How: [`yr_tests::cluster::Cluster`] starts nodes in a temporary folder with `--ports auto`
//! and a 64 MiB arena, so these tests run in parallel; every wait polls `yr status --json` for a
//! real condition with a deadline; dropping the cluster stops every node it started.
//!
//! Not covered: label affinity. Nodes take `--label`, and the scheduler honours affinity rules,
//! but no `yr` command lets a function or an instance ask for one yet, so only the labels'
//! appearance in `yr status` is checked.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use yr_tests::cluster::{
    example, example_dir, processes_mentioning, Cluster, ClusterStatus, InstanceStatus,
    NodeOptions, Process,
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
    let st = c.wait_until("both nodes are registered", |st| {
        (st.node(&master_id).is_some() && st.node(&worker_id).is_some()).then_some(st.clone())
    });
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
    let id = out
        .stderr
        .split_once("instance ")
        .and_then(|(_, rest)| rest.split_once(" of crasher exited"))
        .map(|(id, _)| id.to_string())
        .unwrap_or_else(|| panic!("the error names the instance\n{out}"));

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
