//! `yr bench faults`: a real cluster under a steady load, and one `kill -9` after another; for
//! each fault, whether the load was fully served again, how long that took, which calls failed
//! and how, and whether anything acknowledged was lost.
//!
//! The cluster: `--masters` master nodes (the first starts the cluster; the others join it as
//! standby masters with `--master_address` and the join token) and one worker node, all on this
//! host with `--ports auto`. The no-op function (`hello`'s echo handler, as in `yr bench
//! invoke`) is deployed with one instance kept warm.
//!
//! The load, each kind paced at [`PACE`] with its own deadline per call ([`CALL_TIMEOUT`]), so
//! a hang shows as a timed-out call, never as a stuck bench:
//! - `rest`: the no-op function through a REST frontend (the frontends of every master are
//!   tried in turn: a client that finds one dead uses the next, as a load balancer would);
//! - `grpc`: the same through the worker node's proxy (the runtime's path);
//! - `objects`: a 1 MiB object put on the worker node and pulled by the first master node's
//!   data worker (the cross-node pipeline's step);
//! - `master`: the master's `Status` (what `yr status`, deploys and instance creation need),
//!   through the address the worker node's session names, as the CLI and drivers reach it.
//!
//! Each fault: wait until every kind has succeeded for [`SETTLE`] in a row; `kill -9` the
//! target process(es), found by their command line in this run's session folders (so a
//! process a supervisor restarted is found again); then wait until every kind has succeeded
//! for [`SETTLE`] after its last failure. `recovery_ms` is from the kill to the first success
//! after the last failure (0 when nothing failed); `recovered` is false if that did not happen
//! within `--deadline-s`. `errors` counts failed calls by kind of error. `acknowledged_lost`
//! counts what the cluster had acknowledged and no longer has after the fault: the deployed
//! function, the named instance created at the start (its record), and objects put on the first
//! master node before the fault (never on a killed data worker). A lost object on the killed
//! data worker is expected and is not counted there.
//!
//! Targets (from the issue): every fault recovered; an active-master failover within the
//! election lease's TTL + 3 s; `acknowledged_lost` 0 everywhere; no process left after
//! `yr stop` (checked at the end by command line).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use serde::Serialize;
use yr_datastore::{Client, ObjectId};
use yr_runtime::session::Session;

use super::invoke::Caller;
use super::node::Bins;
use crate::util::NodesOf;

/// How often each kind of load makes a call.
const PACE: Duration = Duration::from_millis(50);
/// The longest a call may take before it counts as failed (a hang).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long every kind must succeed in a row for the load to count as fully served.
const SETTLE: Duration = Duration::from_secs(2);
/// Size of each object of the `objects` load.
const OBJECT_BYTES: usize = 1 << 20;

#[derive(Args)]
pub struct FaultsArgs {
    /// Print one JSON object (for scripts) instead of a table.
    #[arg(long)]
    json: bool,
    /// Master nodes (the first starts the cluster, the others join as standbys).
    #[arg(long, default_value_t = 3)]
    masters: usize,
    /// Only these faults (comma-separated names; default: all).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// How long a fault may take to recover before it counts as not recovered.
    #[arg(long, default_value_t = 60)]
    deadline_s: u64,
    /// The election lease's TTL the failover target is measured against, in seconds.
    #[arg(long, default_value_t = 6)]
    lease_ttl_s: u64,
}

/// One fault's outcome.
#[derive(Serialize, Debug)]
struct FaultReport {
    fault: String,
    /// The processes killed (component names).
    killed: Vec<String>,
    recovered: bool,
    recovery_ms: u64,
    acknowledged_lost: u64,
    /// Failed calls by load kind and error kind.
    errors: BTreeMap<String, u64>,
    /// Calls that ran into [`CALL_TIMEOUT`] (counted in `errors` too).
    timeouts: u64,
    /// The first message of each entry of `errors`, to see what a user was told.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    error_samples: BTreeMap<String, String>,
    /// What was lost, if anything.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    lost: Vec<String>,
}

#[derive(Serialize)]
struct Report {
    masters: usize,
    workers: usize,
    faults: Vec<FaultReport>,
    all_recovered: bool,
    acknowledged_lost: u64,
    /// The active master's failover, against `lease_ttl_s + 3 s`.
    #[serde(skip_serializing_if = "Option::is_none")]
    failover_ms: Option<u64>,
    failover_target_ms: u64,
    processes_left_after_stop: usize,
    all_targets_met: bool,
}

/// The nodes of the run, in start order (masters first).
struct Nodes {
    _guard: NodesOf,
    _tmp: tempfile::TempDir,
    masters: Vec<Session>,
    worker: Session,
    bins: Bins,
}

impl Nodes {
    fn start(bins: &Bins, masters: usize) -> Result<Nodes> {
        if masters == 0 {
            bail!("--masters must be at least 1");
        }
        let tmp = tempfile::Builder::new()
            .prefix("yr-bench-faults-")
            .tempdir()?;
        let mut guard = NodesOf::new(&bins.yr);
        let common = ["--ports", "auto", "--shm-size", "256MiB", "--cpu", "8000"];
        let dir = |name: &str| tmp.path().join(name).display().to_string();
        let m0 = dir("master-0");
        guard.dirs.push(m0.clone());
        let mut args = vec!["start", "--master", "--session-dir", &m0];
        args.extend(common);
        bins.yr.run(&args)?;
        let first = Session::load(Path::new(&m0))?;
        let token = crate::cluster::read_join_token(&first)?;
        let master_url = format!("http://{}", first.master_address);
        let mut sessions = vec![first];
        for i in 1..masters {
            let d = dir(&format!("master-{i}"));
            guard.dirs.push(d.clone());
            let mut args = vec![
                "start",
                "--master",
                "--master_address",
                &master_url,
                "--join_token",
                &token,
                "--session-dir",
                &d,
            ];
            args.extend(common);
            bins.yr.run(&args).with_context(|| {
                format!("starting standby master {i} (does this yr support standby masters?)")
            })?;
            sessions.push(Session::load(Path::new(&d))?);
        }
        let w = dir("worker");
        guard.dirs.push(w.clone());
        let mut args = vec![
            "start",
            "--master_address",
            &master_url,
            "--join_token",
            &token,
            "--session-dir",
            &w,
        ];
        args.extend(common);
        bins.yr.run(&args)?;
        let worker = Session::load(Path::new(&w))?;
        worker.install_tls().map_err(anyhow::Error::msg)?;
        Ok(Nodes {
            _guard: guard,
            _tmp: tmp,
            masters: sessions,
            worker,
            bins: bins.clone(),
        })
    }

    fn yr_on_first(&self, args: &[&str]) -> Result<String> {
        let dir = self.masters[0].session_dir.display().to_string();
        let mut a: Vec<&str> = args.to_vec();
        a.extend(["--session-dir", &dir]);
        self.bins.yr.run(&a)
    }

    /// `yr status --json` of the cluster, parsed; `None` if no master answered.
    fn status(&self) -> Option<serde_json::Value> {
        let text = self.yr_on_first(&["status", "--json"]).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn all_dirs(&self) -> Vec<PathBuf> {
        self.masters
            .iter()
            .chain(std::iter::once(&self.worker))
            .map(|s| s.session_dir.clone())
            .collect()
    }
}

/// One call's outcome, by load kind.
struct Outcome {
    at: Instant,
    kind: &'static str,
    error: Option<String>,
}

/// The load threads and what they saw.
struct Load {
    seen: Arc<Mutex<Vec<Outcome>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// What kind of error a failed call met, for the report: a short stable word, not the message.
fn error_kind(e: &str) -> &'static str {
    let e = e.to_ascii_lowercase();
    if e.contains("timed out") || e.contains("timeout") || e.contains("deadline") {
        "timeout"
    } else if e.contains("lost") {
        "object_lost"
    } else if e.contains("refused") || e.contains("connect") || e.contains("unavailable") {
        "unavailable"
    } else if e.contains("not found") || e.contains("notfound") {
        "not_found"
    } else if e.contains("broken pipe") || e.contains("reset") || e.contains("closed") {
        "connection_lost"
    } else {
        "other"
    }
}

type Seen = Arc<Mutex<Vec<Outcome>>>;

fn record(seen: &Seen, kind: &'static str, r: Result<()>) {
    if let Ok(mut s) = seen.lock() {
        s.push(Outcome {
            at: Instant::now(),
            kind,
            error: r.err().map(|e| format!("{e:#}")),
        });
    }
}

/// Calls `op` every [`PACE`] until `stop`, recording each outcome as `kind`.
fn paced(seen: &Seen, stop: &AtomicBool, kind: &'static str, mut op: impl FnMut() -> Result<()>) {
    while !stop.load(Ordering::Relaxed) {
        record(seen, kind, op());
        std::thread::sleep(PACE);
    }
}

/// Runs `call` on `rt` with [`CALL_TIMEOUT`], a timeout being an error like any other.
fn timed<T, E: Into<anyhow::Error>>(
    rt: &tokio::runtime::Runtime,
    call: impl std::future::Future<Output = std::result::Result<T, E>>,
) -> Result<T> {
    rt.block_on(async {
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(r) => r.map_err(Into::into),
            Err(_) => Err(anyhow!("the call timed out")),
        }
    })
}

/// A runtime for a load thread's gRPC client.
fn client_runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

impl Load {
    fn start(nodes: &Nodes) -> Result<Load> {
        let seen: Seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        // REST through the masters' frontends, moving to the next on a failure.
        {
            let fronts: Vec<(String, String)> = nodes
                .masters
                .iter()
                .filter_map(|s| {
                    let url = s.frontend_url.clone()?;
                    let token = std::fs::read_to_string(s.token_file.as_ref()?).ok()?;
                    Some((url, token.trim().to_string()))
                })
                .collect();
            if fronts.is_empty() {
                bail!("no master node records a REST frontend");
            }
            let (seen, stop) = (Arc::clone(&seen), Arc::clone(&stop));
            threads.push(std::thread::spawn(move || {
                let mut at = 0usize;
                paced(&seen, &stop, "rest", || {
                    let (url, token) = &fronts[at % fronts.len()];
                    let r = rest_call(url, token);
                    if r.is_err() {
                        at += 1;
                    }
                    r
                })
            }));
        }
        // gRPC through the worker's proxy.
        {
            let proxy = nodes.worker.proxy_address.clone();
            let (seen, stop) = (Arc::clone(&seen), Arc::clone(&stop));
            threads.push(std::thread::spawn(move || {
                let setup = client_runtime().and_then(|rt| {
                    let caller = rt.block_on(async { Caller::connect(&proxy) })?;
                    Ok((rt, caller))
                });
                match setup {
                    Ok((rt, mut caller)) => {
                        paced(&seen, &stop, "grpc", || timed(&rt, caller.call()))
                    }
                    Err(e) => record(&seen, "grpc", Err(e)),
                }
            }));
        }
        // The master, as the CLI and drivers reach it.
        {
            let master = nodes.worker.master_address.clone();
            let (seen, stop) = (Arc::clone(&seen), Arc::clone(&stop));
            threads.push(std::thread::spawn(move || {
                let setup = client_runtime().and_then(|rt| {
                    let ch = rt.block_on(async { yr_control::master_channel(&master) })?;
                    Ok((rt, yr_proto::master_client::MasterClient::new(ch)))
                });
                match setup {
                    Ok((rt, mut client)) => paced(&seen, &stop, "master", || {
                        timed(&rt, client.status(yr_proto::Empty {})).map(|_| ())
                    }),
                    Err(e) => record(&seen, "master", Err(e)),
                }
            }));
        }
        // Objects: put on the worker node, pulled by the first master node.
        {
            let (put_on, get_on) = (
                nodes.worker.data_socket.clone(),
                nodes.masters[0].data_socket.clone(),
            );
            let (seen, stop) = (Arc::clone(&seen), Arc::clone(&stop));
            threads.push(std::thread::spawn(move || {
                let data = vec![7u8; OBJECT_BYTES];
                let mut clients: Option<(Client, Client)> = None;
                paced(&seen, &stop, "objects", || {
                    let r = (|| -> Result<()> {
                        if clients.is_none() {
                            clients = Some((Client::connect(&put_on)?, Client::connect(&get_on)?));
                        }
                        let Some((p, g)) = &clients else {
                            bail!("no clients");
                        };
                        let id = p.new_id();
                        p.put(id, &data)?;
                        let got = g.get_remote(id, CALL_TIMEOUT)?;
                        if got.len() != data.len() {
                            bail!("pulled {} bytes of {}", got.len(), data.len());
                        }
                        drop(got);
                        p.free(&[id]);
                        Ok(())
                    })();
                    if r.is_err() {
                        // Reconnect next time: the data worker may have been restarted.
                        clients = None;
                    }
                    r
                })
            }));
        }
        Ok(Load {
            seen,
            stop,
            threads,
        })
    }

    /// The outcomes since `from`.
    fn since(&self, from: Instant) -> Vec<(Instant, &'static str, Option<String>)> {
        self.seen
            .lock()
            .map(|s| {
                s.iter()
                    .filter(|o| o.at >= from)
                    .map(|o| (o.at, o.kind, o.error.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits until every kind has succeeded for [`SETTLE`] since its last failure after
    /// `from`; returns when the load was served again (the first success after the last
    /// failure, or `from` when nothing failed), or `None` at `deadline`.
    fn wait_served(&self, from: Instant, deadline: Instant) -> Option<Instant> {
        const KINDS: [&str; 4] = ["rest", "grpc", "objects", "master"];
        loop {
            let seen = self.since(from);
            let now = Instant::now();
            let mut served_at = from;
            let mut all = true;
            for kind in KINDS {
                let of: Vec<_> = seen.iter().filter(|o| o.1 == kind).collect();
                let last_fail = of.iter().filter(|o| o.2.is_some()).map(|o| o.0).max();
                let first_ok_after = of
                    .iter()
                    .filter(|o| o.2.is_none() && last_fail.is_none_or(|f| o.0 > f))
                    .map(|o| o.0)
                    .min();
                match first_ok_after {
                    Some(t) if now.duration_since(t) >= SETTLE => {
                        if last_fail.is_some() {
                            served_at = served_at.max(t);
                        }
                    }
                    _ => all = false,
                }
            }
            if all {
                return Some(served_at);
            }
            if now >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// The no-op function service the REST load calls (registered through the meta service, as
/// openYuanrong's function services are), and its invocation path.
const REST_FUNCTION: &str = "0@faults@noop";
const REST_INVOKE_PATH: &str = "/invocations/default/faults/0@faults@noop/";

/// One HTTP/1.1 request on a fresh connection to `url` (`http://host:port`): the reply's
/// status line must be 200.
fn http_once(url: &str, req: Vec<u8>) -> Result<()> {
    use std::io::{Read, Write};
    let host = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("{url} is not http://"))?
        .trim_end_matches('/');
    let addr: std::net::SocketAddr = host.parse().context("REST address")?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, CALL_TIMEOUT)?;
    s.set_read_timeout(Some(CALL_TIMEOUT))?;
    s.set_write_timeout(Some(CALL_TIMEOUT))?;
    let mut req = req;
    // One request per connection: the load must not depend on a kept-alive connection to a
    // service that may have died.
    let at = req
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("malformed request"))?;
    req.splice(at..at, b"\r\nConnection: close".iter().copied());
    s.write_all(&req)?;
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).map_err(|e| {
        if matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            anyhow!("the REST call timed out")
        } else {
            anyhow::Error::from(e)
        }
    })?;
    let head = String::from_utf8_lossy(&reply[..reply.len().min(64)]).to_string();
    if !head.starts_with("HTTP/1.1 200") {
        bail!(
            "{url} answered {}",
            head.lines().next().unwrap_or("nothing")
        );
    }
    Ok(())
}

/// Registers [`REST_FUNCTION`] through the meta service of `s` (one warm instance).
fn register_rest_function(s: &Session, code: &Path) -> Result<()> {
    let meta = s
        .meta_url
        .as_deref()
        .ok_or_else(|| anyhow!("the master's session.json has no meta_url"))?;
    let token_file = s
        .token_file
        .as_deref()
        .ok_or_else(|| anyhow!("the master's session.json has no token_file"))?;
    let token = yr_control::rest::read_token(token_file)?;
    let spec = serde_json::json!({
        "name": REST_FUNCTION, "runtime": "posix-custom-runtime",
        "handler": super::node::ECHO_HANDLER, "kind": "faas", "cpu": 100, "memory": 64,
        "timeout": 30, "minInstance": "1", "maxInstance": "2", "concurrentNum": "16",
        "codePath": code.display().to_string(),
    })
    .to_string();
    let host = meta.trim_start_matches("http://").trim_end_matches('/');
    http_once(
        meta,
        super::rest::request(
            "POST",
            host,
            "/serverless/v1/functions",
            &token,
            spec.as_bytes(),
        ),
    )
    .context("registering the REST load's function through the meta service")
}

/// One no-op call through a frontend at `url` (`http://host:port`).
fn rest_call(url: &str, token: &str) -> Result<()> {
    let host = url.trim_start_matches("http://").trim_end_matches('/');
    http_once(
        url,
        super::rest::request("POST", host, REST_INVOKE_PATH, token, b"ping"),
    )
}

/// The pids of processes whose command line has every one of `words` (as whole arguments or
/// inside one).
fn pids_matching(words: &[&str]) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let line = String::from_utf8_lossy(&raw).replace('\0', " ");
        if words.iter().all(|w| line.contains(w)) {
            out.push(pid);
        }
    }
    out
}

/// A component's process of the node whose session folder is `dir`.
fn component_pids(dir: &Path, component: &str) -> Vec<u32> {
    let d = dir.display().to_string();
    if component == "etcd" {
        return pids_matching(&["etcd", &format!("{d}/etcd")]);
    }
    pids_matching(&["component", &format!(" {component} "), &d])
}

fn kill9(pid: u32) -> Result<()> {
    let p = i32::try_from(pid).map_err(|_| anyhow!("pid {pid} out of range"))?;
    // SAFETY: kill(2) on a pid found by its command line in this run's session folders.
    if unsafe { libc::kill(p, libc::SIGKILL) } != 0 {
        bail!("kill -9 {pid}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// The master nodes (indices into `nodes.masters`) that `yr status` reports active and
/// standing by, in that order; `(0, 1)` when it says nothing (one master, or no answer).
fn active_and_standby(nodes: &Nodes) -> (usize, usize) {
    let fallback = (0, 1.min(nodes.masters.len().saturating_sub(1)));
    let Some(v) = nodes.status() else {
        return fallback;
    };
    let index_of = |id: &str| nodes.masters.iter().position(|s| s.node_id == id);
    let masters = v["masters"].as_array().cloned().unwrap_or_default();
    let active = masters
        .iter()
        .find(|m| m["active"] == true)
        .and_then(|m| m["node_id"].as_str().and_then(index_of));
    let standby = masters
        .iter()
        .find(|m| m["active"] != true)
        .and_then(|m| m["node_id"].as_str().and_then(index_of));
    match (active, standby) {
        (Some(a), Some(s)) => (a, s),
        (Some(a), None) => (a, a),
        _ => fallback,
    }
}

/// The pids of the RUNNING instances of `functions`, as the master reports them.
fn running_pids(nodes: &Nodes, functions: &[&str]) -> Vec<u32> {
    let Some(v) = nodes.status() else {
        return Vec::new();
    };
    v["instances"]
        .as_array()
        .map(|all| {
            all.iter()
                .filter(|i| {
                    i["state"] == "RUNNING"
                        && functions.iter().any(|f| i["function"].as_str() == Some(f))
                })
                .filter_map(|i| i["pid"].as_u64().and_then(|p| u32::try_from(p).ok()))
                .filter(|p| *p != 0)
                .collect()
        })
        .unwrap_or_default()
}

/// What the cluster acknowledged before a fault, checked after it.
struct Acknowledged {
    /// Objects put on the first master node's data worker by this client (kept connected).
    client: Client,
    objects: Vec<ObjectId>,
    function: String,
    instance: String,
}

impl Acknowledged {
    fn make(nodes: &Nodes) -> Result<Acknowledged> {
        let client = Client::connect(&nodes.masters[0].data_socket)?;
        let mut objects = Vec::new();
        for i in 0..4u8 {
            let id = client.new_id();
            client.put(id, &vec![i; 4096])?;
            objects.push(id);
        }
        // A stateful function with a named instance (the `counter` example).
        let counter = nodes
            .bins
            .yr
            .sibling("counter")
            .ok_or_else(|| anyhow!("the counter example is not built next to yr"))?;
        let counter = counter.display().to_string();
        nodes.yr_on_first(&[
            "function",
            "deploy",
            "--name",
            "faults-counter",
            "--code",
            &counter,
            "--handler",
            "counter",
        ])?;
        nodes.yr_on_first(&[
            "instance",
            "create",
            "faults-counter",
            "--name",
            "faults-named",
        ])?;
        Ok(Acknowledged {
            client,
            objects,
            function: "faults-counter".into(),
            instance: "faults-named".into(),
        })
    }

    /// What is gone.
    fn lost(&self, nodes: &Nodes) -> Vec<String> {
        let mut lost = Vec::new();
        for id in &self.objects {
            if !self.client.contains(*id).unwrap_or(false) {
                lost.push(format!("object {id}"));
            }
        }
        // The master may still be failing over: ask for a while.
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            match nodes.status() {
                Some(v) => break Some(v),
                None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
                None => break None,
            }
        };
        match status {
            Some(v) => {
                let has_function = v["functions"]
                    .as_array()
                    .is_some_and(|f| f.iter().any(|f| f["name"].as_str() == Some(&self.function)));
                if !has_function {
                    lost.push(format!("function {}", self.function));
                }
                let has_instance = v["instances"]
                    .as_array()
                    .is_some_and(|i| i.iter().any(|i| i["name"].as_str() == Some(&self.instance)));
                if !has_instance {
                    lost.push(format!("instance record {}", self.instance));
                }
            }
            None => lost.push("the cluster's status (no master answered)".into()),
        }
        lost
    }
}

/// The faults, in order: (name, node index (masters 0.., then the worker), components).
fn faults(masters: usize) -> Vec<(&'static str, usize, Vec<&'static str>)> {
    let worker = masters;
    let mut v = vec![("active-master", 0, vec!["function-master", "etcd"])];
    if masters > 1 {
        v.push(("standby-master", 1, vec!["function-master", "etcd"]));
    }
    v.extend([
        ("proxy", worker, vec!["function-proxy"]),
        ("agent", worker, vec!["function-agent"]),
        ("data-worker", worker, vec!["data-worker"]),
        ("function-process", worker, vec![]),
        ("driver", worker, vec![]),
    ]);
    v
}

pub fn run(a: FaultsArgs) -> Result<()> {
    let log = |s: &str| {
        if !a.json {
            eprintln!("{s}");
        }
    };
    let bins = Bins::for_yr_command()?;
    log(&format!(
        "starting {} master node(s) and a worker node...",
        a.masters
    ));
    let nodes = Nodes::start(&bins, a.masters)?;
    let dir = nodes.masters[0].session_dir.display().to_string();
    let code = bins.function.display().to_string();
    bins.yr.run(&[
        "function",
        "deploy",
        "--session-dir",
        &dir,
        "--name",
        super::invoke::FUNCTION,
        "--code",
        &code,
        "--handler",
        super::node::ECHO_HANDLER,
        "--min-instances",
        "1",
        "--concurrency",
        "16",
    ])?;
    register_rest_function(&nodes.masters[0], &bins.function)?;
    let ack = Acknowledged::make(&nodes)?;
    let load = Load::start(&nodes)?;
    let deadline = Duration::from_secs(a.deadline_s);
    let mut reports = Vec::new();
    for (name, node, components) in faults(a.masters) {
        if !a.only.is_empty() && !a.only.iter().any(|o| o == name) {
            continue;
        }
        // The masters' roles move with each failover: ask which is which now.
        let node = match name {
            "active-master" => active_and_standby(&nodes).0,
            "standby-master" => active_and_standby(&nodes).1,
            _ => node,
        };
        let dir = nodes.all_dirs()[node].clone();
        log(&format!(
            "fault {name}: waiting for the load to be fully served..."
        ));
        if load
            .wait_served(Instant::now(), Instant::now() + deadline)
            .is_none()
        {
            let mut last: BTreeMap<&str, String> = BTreeMap::new();
            for (_, kind, e) in load.since(Instant::now() - SETTLE * 5) {
                if let Some(e) = e {
                    last.insert(kind, e);
                }
            }
            log(&format!(
                "fault {name}: the load is not served before it; skipped. Last errors: {last:?}"
            ));
            reports.push(FaultReport {
                fault: name.into(),
                killed: Vec::new(),
                recovered: false,
                recovery_ms: 0,
                acknowledged_lost: 0,
                errors: BTreeMap::from([("not_served_before_the_fault".into(), 1)]),
                timeouts: 0,
                error_samples: last
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect(),
                lost: Vec::new(),
            });
            continue;
        }
        let mut killed = Vec::new();
        let t0 = Instant::now();
        let mut driver = None;
        match name {
            "function-process" => {
                // The warm instances of the no-op functions, wherever they run.
                for pid in running_pids(&nodes, &[super::invoke::FUNCTION, REST_FUNCTION]) {
                    kill9(pid)?;
                    killed.push(format!("function process {pid}"));
                }
            }
            "driver" => {
                // A driver that owns objects and instances, killed while it works.
                let program = bins
                    .yr
                    .sibling("pipeline")
                    .ok_or_else(|| anyhow!("the pipeline example is not built next to yr"))?;
                let child = std::process::Command::new(program)
                    .args(["--rounds", "1000", "--size", "4MiB"])
                    .env("YR_SESSION", &nodes.masters[0].session_dir)
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .context("starting a driver")?;
                std::thread::sleep(Duration::from_secs(2));
                kill9(child.id())?;
                killed.push(format!("driver {}", child.id()));
                driver = Some(child);
            }
            _ => {
                for c in &components {
                    for pid in component_pids(&dir, c) {
                        kill9(pid)?;
                        killed.push(format!("{c} {pid}"));
                    }
                }
            }
        }
        if let Some(mut d) = driver {
            let _ = d.wait();
        }
        log(&format!("fault {name}: killed {}", killed.join(", ")));
        let served = load.wait_served(t0, t0 + deadline);
        let seen = load.since(t0);
        let mut errors = BTreeMap::new();
        let mut error_samples = BTreeMap::new();
        let mut timeouts = 0;
        for (_, kind, e) in &seen {
            if let Some(e) = e {
                let k = error_kind(e);
                if k == "timeout" {
                    timeouts += 1;
                }
                let key = format!("{kind}:{k}");
                error_samples
                    .entry(key.clone())
                    .or_insert_with(|| e.clone());
                *errors.entry(key).or_insert(0) += 1;
            }
        }
        let lost = ack.lost(&nodes);
        let r = FaultReport {
            fault: name.into(),
            killed,
            recovered: served.is_some(),
            recovery_ms: served.map_or(deadline.as_millis() as u64, |t| {
                t.duration_since(t0).as_millis() as u64
            }),
            acknowledged_lost: lost.len() as u64,
            errors,
            timeouts,
            error_samples,
            lost,
        };
        log(&format!(
            "fault {name}: recovered {} in {} ms, {} call(s) failed, {} lost",
            r.recovered,
            r.recovery_ms,
            r.errors.values().sum::<u64>(),
            r.acknowledged_lost
        ));
        reports.push(r);
    }
    load.stop();
    let dirs = nodes.all_dirs();
    drop(ack);
    drop(nodes);
    // After `yr stop` (the guard's drop): nothing of this run may still run.
    let left: usize = dirs
        .iter()
        .map(|d| pids_matching(&[&d.display().to_string()]).len())
        .sum();
    let failover_ms = reports
        .iter()
        .find(|r| r.fault == "active-master")
        .map(|r| r.recovery_ms);
    let failover_target_ms = (a.lease_ttl_s + 3) * 1000;
    let all_recovered = reports.iter().all(|r| r.recovered);
    let lost: u64 = reports.iter().map(|r| r.acknowledged_lost).sum();
    let report = Report {
        masters: a.masters,
        workers: 1,
        all_recovered,
        acknowledged_lost: lost,
        failover_ms,
        failover_target_ms,
        processes_left_after_stop: left,
        all_targets_met: all_recovered
            && lost == 0
            && left == 0
            && failover_ms.is_none_or(|f| f <= failover_target_ms),
        faults: reports,
    };
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_kinds_are_short_stable_words() {
        assert_eq!(error_kind("the call timed out"), "timeout");
        assert_eq!(
            error_kind("status: Unavailable, message: \"tcp connect error\""),
            "unavailable"
        );
        assert_eq!(
            error_kind("object 00ab is lost: its node 1.2.3.4:5 ..."),
            "object_lost"
        );
        assert_eq!(error_kind("Broken pipe (os error 32)"), "connection_lost");
        assert_eq!(
            error_kind("frontend http://x answered HTTP/1.1 500"),
            "other"
        );
    }

    #[test]
    fn every_fault_of_the_issue_is_listed_and_standbys_only_with_several_masters() {
        let names = |m| faults(m).into_iter().map(|f| f.0).collect::<Vec<_>>();
        assert_eq!(
            names(3),
            [
                "active-master",
                "standby-master",
                "proxy",
                "agent",
                "data-worker",
                "function-process",
                "driver"
            ]
        );
        assert!(!names(1).contains(&"standby-master"));
        // Worker faults target the worker node (after the masters).
        assert!(faults(3)
            .iter()
            .filter(|f| f.0 == "proxy")
            .all(|f| f.1 == 3));
    }
}
