//! Active-standby masters: a master node, two standby masters that joined it
//! (`yr start --master --master_address http://IP:PORT --join_token T --ports auto`) and a
//! worker, all real processes with a three-member etcd cluster. `kill -9` of the active master's
//! function master (and, in the second test, of its etcd member too) hands the cluster to a
//! standby within the election lease's TTL + 3 s; the deployed functions, the instances and
//! their state survive, and the running proxies, agents and schedulers follow the new master
//! without being restarted. The killed master's node supervisor is killed first (a host whose
//! processes do not come back); otherwise it restarts the master, which then stands by.

use std::time::{Duration, Instant};

use serde_json::Value;
use yr_tests::cluster::{example, Cluster, NodeOptions, Process};

/// The bound on the time from the fault to the new master serving (from its log). The target
/// is the election lease's TTL (control/src/election.rs) plus 3 s, and `yr bench faults`
/// measures and reports it; this test only proves that a failover happens and nothing hangs,
/// so it allows twice that on a loaded machine (speed belongs to the benchmark).
const FAILOVER_BOUND: Duration = Duration::from_secs(2 * (6 + 3));

/// The bound on the time until `yr status` (a new process per poll, each connecting to etcd and
/// probing the masters; against a paused master, after a timeout) names the new master, with
/// the same allowance.
const SEEN_BOUND: Duration = Duration::from_secs(2 * (6 + 3 + 3));

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

/// How long after `since` the master at `address` (one of the first three nodes) logged that it
/// serves as the active master.
fn took_over_after(c: &Cluster, address: &str, since: std::time::SystemTime) -> Duration {
    let i = (0..3)
        .find(|&i| {
            c.session(i)
                .component("function-master")
                .is_some_and(|m| m.address == address)
        })
        .unwrap_or_else(|| panic!("no master node serves at {address}"));
    let served = serving_since(c, i).expect("the new master logged that it serves");
    served.duration_since(since).unwrap_or_default()
}

/// When node `i`'s function master logged that it serves as the active master.
fn serving_since(c: &Cluster, i: usize) -> Option<std::time::SystemTime> {
    let log = c.session(i).component("function-master")?.log.clone();
    let text = std::fs::read_to_string(log).ok()?;
    let line = text
        .lines()
        .find(|l| l.contains("active master: serving"))?;
    // `YYYY-MM-DDTHH:MM:SS.ffffffZ`, among colour codes.
    let b = line.as_bytes();
    let start = (0..b.len().saturating_sub(26))
        .find(|&i| b[i + 4] == b'-' && b[i + 10] == b'T' && b[i + 26] == b'Z')?;
    let stamp = line.get(start..start + 26)?;
    let num = |a: usize, b: usize| stamp.get(a..b)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (h, mi, sec, micros) = (num(11, 13)?, num(14, 16)?, num(17, 19)?, num(20, 26)?);
    // Days since the Unix epoch of a civil date (proleptic Gregorian).
    let (y2, m2) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * m2 + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec;
    Some(
        std::time::UNIX_EPOCH
            + Duration::from_secs(u64::try_from(secs).ok()?)
            + Duration::from_micros(u64::try_from(micros).ok()?),
    )
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
    // A driver on the worker, connected before the failover and used after it.
    let driver = yr_runtime::Builder::new("ha")
        .connect(c.session(3).session_dir.clone())
        .expect("a driver connects through the worker's session");
    assert_eq!(driver.nodes().expect("nodes").len(), 4);
    // The node's supervisor would restart the killed master, which may win the election again:
    // with it gone, as on a host whose processes do not come back, a standby must take over.
    kill9(&c, 0, "supervisor");
    let t0 = Instant::now();
    let killed_at = std::time::SystemTime::now();
    kill9(&c, 0, "function-master");
    let (new, seen) = wait_for_new_active(&c, 3, &old, t0);
    assert!(
        seen <= SEEN_BOUND,
        "yr status named the new master only after {seen:?}"
    );
    let took = took_over_after(&c, &new, killed_at);
    println!(
        "failover after kill -9 of the active function master: {new} serving after {took:?}, \
         seen by yr status after {seen:?}"
    );
    assert!(
        took <= FAILOVER_BOUND,
        "failover took {took:?}, more than twice the lease TTL + 3 s"
    );
    works_after_failover(&c, 3);
    // One REST token for the cluster: the standbys received the first master's, so a REST
    // client keeps its token on whichever master's services it reaches after the failover.
    let token_of = |i: usize| {
        let f = c
            .session(i)
            .token_file
            .clone()
            .expect("a master node's token file");
        std::fs::read_to_string(&f)
            .expect("token file")
            .trim()
            .to_string()
    };
    assert_eq!(token_of(0), token_of(1));
    assert_eq!(token_of(0), token_of(2));
    let (meta, _) = yr_tests::http::services(&c.session(1).session_dir);
    let r = yr_tests::http::http_with(&meta, "GET", "/serverless/v1/functions", &[], "");
    assert_eq!(
        r.status, 200,
        "the first master's token on a standby's meta service: {}",
        r.body
    );
    // The new active master admits nodes: it received the CA's key and the join token.
    let token = c.join_token();
    let mut c = c;
    c.add_node(
        "late-worker",
        &[
            "--master_address",
            &format!("http://{new}"),
            "--join_token",
            &token,
        ],
        NodeOptions::default(),
    );
    // The driver follows without reconnecting: its first call may still meet the dead master.
    let deadline = Instant::now() + Duration::from_secs(5);
    let nodes = loop {
        match driver.nodes() {
            Ok(n) => break n,
            Err(e) if Instant::now() < deadline => {
                println!("driver call during the failover: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("the driver did not follow the new master: {e}"),
        }
    };
    assert_eq!(
        nodes.len(),
        5,
        "every node, the dead master's and the late worker's too: {nodes:?}"
    );
}

#[test]
fn a_standby_takes_over_when_the_active_master_and_its_etcd_member_are_killed() {
    let c = three_masters();
    let old = deploy_and_call(&c);
    kill9(&c, 0, "supervisor");
    let t0 = Instant::now();
    let killed_at = std::time::SystemTime::now();
    kill9(&c, 0, "function-master");
    kill9(&c, 0, "etcd");
    // Node 1's session knows the other etcd members and masters.
    let (new, seen) = wait_for_new_active(&c, 1, &old, t0);
    assert!(
        seen <= SEEN_BOUND,
        "yr status named the new master only after {seen:?}"
    );
    let took = took_over_after(&c, &new, killed_at);
    println!(
        "failover after kill -9 of the active master and its etcd member: {new} serving after \
         {took:?}, seen by yr status after {seen:?}"
    );
    assert!(
        took <= FAILOVER_BOUND,
        "failover took {took:?}, more than twice the lease TTL + 3 s"
    );
    works_after_failover(&c, 1);
}

#[test]
fn a_paused_master_is_deposed_and_stops_serving() {
    let mut c = Cluster::start(NodeOptions::default());
    let master = format!("http://{}", c.master().master_address);
    let token = c.join_token();
    c.add_node(
        "standby1",
        &[
            "--master",
            "--master_address",
            &master,
            "--join_token",
            &token,
        ],
        NodeOptions::default(),
    );
    let old = active(&c, 1).expect("an active master");
    assert_eq!(old, c.master().master_address, "the first master leads");
    let pid = c
        .session(0)
        .pid_of("function-master")
        .expect("the first master's pid");
    let p = Process::find(pid, "function master").expect("it runs");
    let signal = |sig| {
        // SAFETY: kill(2) on the first master's pid, checked above to be that process.
        let r = unsafe { libc::kill(i32::try_from(pid).expect("pid fits"), sig) };
        assert_eq!(r, 0, "kill -{sig} {pid}");
    };
    // Paused past its lease: the standby takes over. A paused master's port still accepts
    // connections, so clients notice only by timing out; the takeover itself is timed from the
    // standby's log.
    let t0 = Instant::now();
    let paused_at = std::time::SystemTime::now();
    signal(libc::SIGSTOP);
    let (new, seen) = wait_for_new_active(&c, 1, &old, t0);
    assert!(
        seen <= SEEN_BOUND,
        "yr status named the new master only after {seen:?}"
    );
    let took = took_over_after(&c, &new, paused_at);
    println!(
        "failover from a paused master: serving after {took:?}, seen by yr status after {seen:?}"
    );
    assert!(took <= FAILOVER_BOUND, "failover took {took:?}");
    // Resumed, it finds its lease gone and exits instead of serving.
    signal(libc::SIGCONT);
    assert!(
        p.wait_gone(Duration::from_secs(10)),
        "the deposed master still runs 10 s after it was resumed\n{}",
        c.logs()
    );
    assert_eq!(active(&c, 1).as_deref(), Some(new.as_str()));
    // Its node's supervisor starts it again, as a standby.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = masters(&c, 1).unwrap_or_default();
        let standby = m.iter().any(|(_, a, act)| *a == old && !act);
        if standby && m.iter().any(|(_, a, act)| *a == new && *act) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted master did not stand by: {m:?}\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
