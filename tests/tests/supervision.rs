//! Supervision end to end: a real one-node cluster started by `yr start`, components killed
//! with `kill -9`, the node supervisor restarting them, and what the node's users see.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use yr_tests::cluster::{example, Cluster, NodeOptions, Process, Session};

/// The session as the supervisor last wrote it.
fn session_now(c: &Cluster) -> Session {
    Session::load(&c.master().session_dir).expect("session.json readable")
}

/// Sends SIGKILL to component `name` of the master node; returns the killed process.
fn kill9(c: &Cluster, name: &str) -> Process {
    let pid = session_now(c)
        .pid_of(name)
        .unwrap_or_else(|| panic!("session.json lists no {name}"));
    let p = Process::find(pid, name).unwrap_or_else(|| panic!("{name} (pid {pid}) runs"));
    // SAFETY: kill(2) on a component of the test's own cluster, checked above to be running.
    let r = unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    assert_eq!(r, 0, "kill -9 {pid}");
    assert!(
        p.wait_gone(Duration::from_secs(10)),
        "{name} survived kill -9"
    );
    p
}

/// Waits until the supervisor has started `name` again (`restarts` at least `n`, running, with
/// a live pid other than `old`); returns its new pid.
fn wait_restarted(c: &Cluster, name: &str, old: u32, n: u32) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = session_now(c);
        if let Some(comp) = s.component(name) {
            if comp.restarts >= n
                && comp.state == yr_runtime::session::ComponentState::Running
                && comp.pid != old
                && Process::find(comp.pid, name).is_some()
            {
                return comp.pid;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{name} was not restarted within 30 s; session: {:?}\n{}",
            s.components,
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `yr status --json`'s entry for component `name`.
fn status_component(c: &Cluster, name: &str) -> serde_json::Value {
    let out = c.yr(&["status", "--json"]).expect_ok("yr status --json");
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("status is JSON");
    v["components"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["name"] == name).cloned())
        .unwrap_or_else(|| panic!("status lists no component {name}: {}", out.stdout))
}

/// Calls `function` until it answers `want`, within `deadline`; returns how long it took.
fn invoke_until(
    c: &Cluster,
    function: &str,
    data: &str,
    want: &str,
    deadline: Duration,
) -> Duration {
    let t = Instant::now();
    loop {
        let out = c.invoke(function, data);
        if out.success() && out.stdout.contains(want) {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < deadline,
            "{function} did not answer {want:?} within {deadline:?}; last:\n{out}\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A driver program started against the master node's session.
struct Driver {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Driver {
    fn start(args: &[&str], c: &Cluster) -> Driver {
        let mut child = Command::new(example("yr-test-driver"))
            .args(args)
            .env_remove("YR_MASTER_ADDRESS")
            .env("YR_SESSION", &c.master().session_dir)
            .env("YR_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start yr-test-driver");
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

    fn next(&self) -> serde_json::Value {
        let l = self
            .lines
            .recv_timeout(Duration::from_secs(90))
            .expect("the driver printed nothing within 90 s (or exited)");
        serde_json::from_str(&l).unwrap_or_else(|e| panic!("driver line {l:?}: {e}"))
    }

    fn proceed(&mut self) {
        let mut s = self.stdin.take().expect("stdin");
        writeln!(s, "go").expect("write to the driver");
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Stops the cluster's node and checks that no process of it is left: every pid the session
/// ever recorded (before and after restarts), the supervisor, and `also`.
fn stop_and_check(c: &mut Cluster, mut also: Vec<Process>) {
    let s = session_now(c);
    for comp in &s.components {
        if let Some(p) = Process::find(comp.pid, &comp.name) {
            also.push(p);
        }
    }
    assert!(
        s.component("supervisor").is_some(),
        "the node runs a supervisor: {:?}",
        s.components
    );
    c.stop_node(0, false).expect_ok("yr stop");
    let left: Vec<&Process> = also
        .iter()
        .filter(|p| !p.wait_gone(Duration::from_secs(10)))
        .collect();
    assert!(left.is_empty(), "yr stop left these running: {left:?}");
}

#[test]
fn a_killed_data_worker_is_restarted_and_its_lost_objects_say_so() {
    let mut c = Cluster::start(NodeOptions::default());
    let node = c.master().node_id.clone();
    let mut d = Driver::start(&["restart", &node], &c);
    let v = d.next();
    assert_eq!(v["ready"], true, "{v}");
    let id = v["id"].as_str().expect("object id").to_string();

    let old = kill9(&c, "data-worker");
    let pid = wait_restarted(&c, "data-worker", old.pid, 1);
    let st = status_component(&c, "data-worker");
    assert_eq!(st["restarts"], 1, "{st}");
    assert_eq!(st["state"], "running", "{st}");
    assert_eq!(st["pid"], pid, "{st}");
    assert_eq!(st["last_exit"], "killed by signal 9", "{st}");

    // The driver owned an object of the old data worker: it is lost, and says so at once. New
    // puts and gets (here and in a function process) work again.
    let t = Instant::now();
    d.proceed();
    let v = d.next();
    assert_eq!(v["old"]["kind"], "ObjectLost", "{v}");
    let msg = v["old"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains(&id), "the error names the object {id}: {msg}");
    assert_eq!(
        v["fresh"]["ok"],
        format!("{0} {0} {0}", 1 << 20),
        "new objects work after the restart: {v}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "took {:?}",
        t.elapsed()
    );
    drop(d);
    stop_and_check(&mut c, vec![]);
}

#[test]
fn a_killed_agent_takes_its_function_processes_along_and_calls_work_again() {
    let mut c = Cluster::start(NodeOptions::default());
    let hello = example("hello");
    let code = hello.to_str().expect("UTF-8 path");
    c.deploy(&["--name", "hello", "--code", code, "--handler", "hello"])
        .expect_ok("deploy hello");
    c.deploy(&["--name", "hstore", "--code", code, "--handler", "store"])
        .expect_ok("deploy hstore");
    c.invoke("hello", "x").expect_ok("invoke hello");
    c.invoke("hstore", "abc").expect_ok("invoke hstore");
    let st = c.status();
    let instances: Vec<Process> = st
        .instances
        .iter()
        .filter(|i| i.state == "RUNNING")
        .map(|i| Process::find(i.pid, &i.instance_id).expect("instance process runs"))
        .collect();
    assert_eq!(instances.len(), 2, "{}", st.raw);

    // kill -9 of the agent: no function process survives it.
    let agent = kill9(&c, "function-agent");
    for p in &instances {
        assert!(
            p.wait_gone(Duration::from_secs(5)),
            "function process {p:?} outlived its agent"
        );
    }
    wait_restarted(&c, "function-agent", agent.pid, 1);
    // The new agent tells the master that those instances' processes are gone: no record keeps
    // a dead pid as RUNNING (each is restarted or replaced).
    let dead: Vec<u32> = instances.iter().map(|p| p.pid).collect();
    c.wait_until("no instance is recorded RUNNING under a dead pid", |st| {
        (!st.instances
            .iter()
            .any(|i| i.state == "RUNNING" && dead.contains(&i.pid)))
        .then_some(())
    });
    let took = invoke_until(
        &c,
        "hstore",
        "abc",
        "same bytes: true",
        Duration::from_secs(30),
    );
    eprintln!("calls served again {took:?} after the agent's restart");
    let proxy = status_component(&c, "function-proxy");
    assert_eq!(proxy["restarts"], 1, "restarted with the agent: {proxy}");

    // kill -9 of the proxy: restarted (with the agent), and calls work again.
    let st = c.status();
    let instances: Vec<Process> = st
        .instances
        .iter()
        .filter(|i| i.state == "RUNNING")
        .filter_map(|i| Process::find(i.pid, &i.instance_id))
        .collect();
    let proxy = kill9(&c, "function-proxy");
    wait_restarted(&c, "function-proxy", proxy.pid, 2);
    invoke_until(
        &c,
        "hello",
        "again",
        "hello, again",
        Duration::from_secs(30),
    );
    invoke_until(
        &c,
        "hstore",
        "abc",
        "same bytes: true",
        Duration::from_secs(30),
    );
    let agent = status_component(&c, "function-agent");
    assert_eq!(agent["restarts"], 2, "{agent}");
    stop_and_check(&mut c, instances);
}

#[test]
fn killed_etcd_and_master_services_are_restarted_on_their_ports() {
    let mut c = Cluster::start(NodeOptions::default());
    let before = session_now(&c);
    for name in [
        "etcd",
        "function-master",
        "meta-service",
        "function-scheduler",
    ] {
        let old = kill9(&c, name);
        wait_restarted(&c, name, old.pid, 1);
    }
    let after = session_now(&c);
    for name in ["etcd", "function-master", "meta-service"] {
        assert_eq!(
            before.component(name).map(|x| &x.address),
            after.component(name).map(|x| &x.address),
            "{name} serves where it did"
        );
    }
    // The restarted master answers (the node re-registers with it), and deploys work (etcd
    // kept its data folder).
    c.wait_until("the node is seen by the restarted master", |st| {
        st.node(&before.node_id).map(|_| ())
    });
    let hello = example("hello");
    c.deploy(&[
        "--name",
        "hello",
        "--code",
        hello.to_str().expect("UTF-8 path"),
        "--handler",
        "hello",
    ])
    .expect_ok("deploy after the restarts");
    invoke_until(&c, "hello", "back", "hello, back", Duration::from_secs(30));
    stop_and_check(&mut c, vec![]);
}

#[test]
fn a_restarted_data_worker_is_told_the_members_and_pulls_from_other_nodes() {
    let mut c = Cluster::start(NodeOptions::default());
    let w = c.add_worker(NodeOptions::default());
    let worker = c.session(w).node_id.clone();
    let mut d = Driver::start(&["restart", &worker], &c);
    let v = d.next();
    assert_eq!(v["ready"], true, "{v}");
    // The master node's data worker restarts with an empty member list: its agent tells it the
    // members again, and the driver on this node pulls an object made on the worker node.
    let old = kill9(&c, "data-worker");
    wait_restarted(&c, "data-worker", old.pid, 1);
    d.proceed();
    let v = d.next();
    assert_eq!(v["old"]["kind"], "ObjectLost", "{v}");
    assert_eq!(
        v["fresh"]["ok"],
        format!("{0} {0} {0}", 1 << 20),
        "objects of the other node are pulled again: {v}"
    );
    drop(d);
    c.stop_node(w, false).expect_ok("yr stop of the worker");
    stop_and_check(&mut c, vec![]);
}
