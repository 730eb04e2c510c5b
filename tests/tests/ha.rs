//! Active-standby masters: a master node, two standby masters that joined it
//! (`yr start --master --master_address http://IP:PORT --join_token T --ports auto`) and a
//! worker, all real processes with a three-member etcd cluster. `kill -9` of the active master's
//! function master (and, in the second test, of its etcd member too) hands the cluster to a
//! standby within the election lease's TTL + 3 s; the deployed functions, the instances and
//! their state survive, and the running proxies, agents and schedulers follow the new master
//! without being restarted.

use std::time::{Duration, Instant};

use serde_json::Value;
use yr_tests::cluster::{example, Cluster, NodeOptions, Process};

/// The election lease's TTL (control/src/election.rs) plus the 3 s.
const FAILOVER_BOUND: Duration = Duration::from_secs(6 + 3);

/// A cluster of three masters (node 0 active, nodes 1 and 2 standing by) and a worker (node 3).
fn three_masters() -> Cluster {
    let mut c = Cluster::start(NodeOptions::default());
    let master = format!("http://{}", c.master().master_address);
    let token = c.join_token();
    for name in ["standby1", "standby2"] {
        c.add_node(
            name,
            &[
                "--master",
                "--master_address",
                &master,
                "--join_token",
                &token,
            ],
            NodeOptions::default(),
        );
    }
    c.add_worker(NodeOptions::default());
    c
}

/// `(node_id, address, active)` of every master in node `i`'s `yr status --json`.
fn masters(c: &Cluster, i: usize) -> Result<Vec<(String, String, bool)>, String> {
    let out = c.yr_on(i, &["status", "--json"]);
    if !out.success() {
        return Err(format!("{out}"));
    }
    let v: Value = serde_json::from_str(&out.stdout).map_err(|e| format!("{e}: {out}"))?;
    let list = v
        .get("masters")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("no masters in {out}"))?;
    Ok(list
        .iter()
        .map(|m| {
            let s = |k: &str| {
                m.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            let active = m.get("active").and_then(Value::as_bool).unwrap_or(false);
            (s("node_id"), s("address"), active)
        })
        .collect())
}

/// The active master's address as node `i` sees it, if exactly one is active.
fn active(c: &Cluster, i: usize) -> Option<String> {
    let m = masters(c, i).ok()?;
    let act: Vec<&(String, String, bool)> = m.iter().filter(|m| m.2).collect();
    (act.len() == 1).then(|| act[0].1.clone())
}

/// Sends SIGKILL to component `name` of node `i`; returns when it is gone.
fn kill9(c: &Cluster, i: usize, name: &str) {
    let pid = c
        .session(i)
        .pid_of(name)
        .unwrap_or_else(|| panic!("node {i} runs no {name}"));
    let p = Process::find(pid, name).unwrap_or_else(|| panic!("{name} (pid {pid}) runs"));
    // SAFETY: kill(2) on a pid checked above to be that running component.
    let r = unsafe { libc::kill(i32::try_from(pid).expect("pid fits"), libc::SIGKILL) };
    assert_eq!(r, 0, "kill -9 {pid}");
    assert!(
        p.wait_gone(Duration::from_secs(5)),
        "{name} survived kill -9"
    );
}

/// Deploys the counter, creates `c1` on the worker and adds 4; checks one master is active.
fn deploy_and_call(c: &Cluster) -> String {
    let counter = example("counter");
    let code = counter.to_str().expect("UTF-8 path");
    c.deploy(&["--name", "counter", "--code", code, "--handler", "counter"]);
    c.yr(&["instance", "create", "counter", "--name", "c1"])
        .expect_ok("create c1");
    let out = c.call("counter", "c1", "add", "4").expect_ok("add 4");
    assert_eq!(out.stdout.trim(), "4", "{out}");
    let m = masters(c, 3).expect("yr status on the worker");
    assert_eq!(m.len(), 3, "three masters registered: {m:?}");
    assert_eq!(m.iter().filter(|m| m.2).count(), 1, "one active: {m:?}");
    let first = active(c, 3).expect("an active master");
    assert_eq!(first, c.master().master_address, "the first master leads");
    first
}

/// Polls node `i`'s `yr status` until a master other than `old` is active; returns it and the
/// time since `since`.
fn wait_for_new_active(c: &Cluster, i: usize, old: &str, since: Instant) -> (String, Duration) {
    let deadline = Duration::from_secs(30);
    loop {
        if let Some(a) = active(c, i) {
            if a != old {
                return (a, since.elapsed());
            }
        }
        assert!(
            since.elapsed() < deadline,
            "no standby took over within {deadline:?}\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// After a failover seen from node `i`: the counter kept its state, a new function deploys and
/// is invoked through the worker's proxy (which asks the new master to create its instance),
/// and a new named instance is created.
fn works_after_failover(c: &Cluster, i: usize) {
    let out = c
        .yr_on(
            i,
            &[
                "invoke",
                "counter",
                "--instance",
                "c1",
                "--method",
                "add",
                "--data",
                "4",
            ],
        )
        .expect_ok("add 4 after the failover");
    assert_eq!(out.stdout.trim(), "8", "c1 kept its state\n{out}");
    let st = c.yr_on(i, &["status", "--json"]).expect_ok("status");
    assert!(
        st.stdout.contains("\"counter\""),
        "the function is still deployed\n{st}"
    );
    let hello = example("hello");
    let code = hello.to_str().expect("UTF-8 path");
    c.yr_on(
        i,
        &[
            "function",
            "deploy",
            "--name",
            "hello",
            "--code",
            code,
            "--handler",
            "hello",
        ],
    )
    .expect_ok("deploy through the new master");
    let out = c
        .yr_on(3, &["invoke", "hello", "--data", "again"])
        .expect_ok("invoke through the worker's proxy, which follows the new master");
    assert!(out.stdout.starts_with("hello, again"), "{out}");
    let out = c
        .yr_on(i, &["instance", "create", "counter", "--name", "c2"])
        .expect_ok("create c2 through the new master");
    assert!(out.stdout.contains("RUNNING"), "{out}");
    let out = c
        .yr_on(
            i,
            &[
                "invoke",
                "counter",
                "--instance",
                "c2",
                "--method",
                "add",
                "--data",
                "1",
            ],
        )
        .expect_ok("add 1 to c2");
    assert_eq!(out.stdout.trim(), "1", "{out}");
}

#[test]
fn a_standby_takes_over_when_the_active_function_master_is_killed() {
    let c = three_masters();
    let old = deploy_and_call(&c);
    let t0 = Instant::now();
    kill9(&c, 0, "function-master");
    let (new, took) = wait_for_new_active(&c, 3, &old, t0);
    println!("failover after kill -9 of the active function master: {took:?} (to {new})");
    assert!(
        took <= FAILOVER_BOUND,
        "failover took {took:?}, more than the lease TTL + 3 s"
    );
    works_after_failover(&c, 3);
}

#[test]
fn a_standby_takes_over_when_the_active_master_and_its_etcd_member_are_killed() {
    let c = three_masters();
    let old = deploy_and_call(&c);
    let t0 = Instant::now();
    kill9(&c, 0, "function-master");
    kill9(&c, 0, "etcd");
    // Node 1's session knows the other etcd members and masters.
    let (new, took) = wait_for_new_active(&c, 1, &old, t0);
    println!(
        "failover after kill -9 of the active master and its etcd member: {took:?} (to {new})"
    );
    assert!(
        took <= FAILOVER_BOUND,
        "failover took {took:?}, more than the lease TTL + 3 s"
    );
    works_after_failover(&c, 1);
}
