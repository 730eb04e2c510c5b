//! Test support for whole-cluster tests: a [`Cluster`] of real nodes started with `yr start` in a
//! temporary folder and driven only through the `yr` command line, as a user would drive it.
//!
//! - Every node runs as real processes (etcd, function master, data worker, function proxy,
//!   function agent); nodes use `--ports auto` and a small arena so that several clusters can run
//!   side by side on one small machine.
//! - Every `yr` command runs with a deadline: a hung command fails the test with what it printed
//!   instead of hanging the run.
//! - Waiting is always for a real condition: [`Cluster::wait_until`] polls `yr status --json`
//!   until a predicate holds, and fails with the last status and the logs when the deadline passes.
//! - Dropping a [`Cluster`] runs `yr stop --force` on every node it started and did not stop,
//!   workers first, and falls back to killing the recorded processes if that fails. When the test
//!   is failing it first prints the tail of every component's and every instance's log.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::yr_bin;

/// How long any single `yr` command may take. `yr instance create` may legitimately wait 30 s
/// for resources (the master's default), so this is comfortably above that.
pub const COMMAND_DEADLINE: Duration = Duration::from_secs(90);

/// The default deadline of [`Cluster::wait_until`].
pub const WAIT_DEADLINE: Duration = Duration::from_secs(30);

/// Arena of each node's data worker.
const SHM_SIZE: &str = "64MiB";

/// What one `yr` command did.
#[derive(Debug)]
pub struct YrOutput {
    /// The command line, for messages.
    pub command: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl YrOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Returns the output if the command succeeded; otherwise panics with everything it printed.
    #[track_caller]
    pub fn expect_ok(self, what: &str) -> YrOutput {
        assert!(self.success(), "{what}: the command failed\n{self}");
        self
    }

    /// Returns the output if the command failed; otherwise panics with everything it printed.
    #[track_caller]
    pub fn expect_err(self, what: &str) -> YrOutput {
        assert!(!self.success(), "{what}: the command succeeded\n{self}");
        self
    }

    /// The ID of the instance of `function` whose exit failed this call, as its error names
    /// it ("instance ID of FUNCTION exited ..."); panics with the output when it names none.
    #[track_caller]
    pub fn exited_instance(&self, function: &str) -> String {
        self.stderr
            .split_once("instance ")
            .and_then(|(_, rest)| rest.split_once(&format!(" of {function} exited")))
            .map(|(id, _)| id.to_string())
            .unwrap_or_else(|| panic!("the error names the instance\n{self}"))
    }
}

impl fmt::Display for YrOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "$ {}\n{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command, self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `yr` with `args`, with [`COMMAND_DEADLINE`].
pub fn run_yr(args: &[&str]) -> YrOutput {
    run_yr_within(args, COMMAND_DEADLINE)
}

/// Runs `yr` with `args`; kills it and panics if it has not finished within `deadline`.
///
/// Output goes to anonymous files rather than pipes, so that a process the command leaves
/// running (every component of `yr start`) can never hold the test up on an open pipe.
/// `YR_LOG` is `info` for `yr start` (its components inherit it, and their logs explain
/// failures) and `warn` for everything else.
pub fn run_yr_within(args: &[&str], deadline: Duration) -> YrOutput {
    let command = format!("yr {}", args.join(" "));
    let log_level = if args.first() == Some(&"start") {
        "info"
    } else {
        "warn"
    };
    let mut out = tempfile::tempfile().expect("temporary file for stdout");
    let mut err = tempfile::tempfile().expect("temporary file for stderr");
    let mut child = Command::new(yr_bin())
        .args(args)
        .env("YR_LOG", log_level)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("clone stdout file"))
        .stderr(err.try_clone().expect("clone stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {command}: {e}"));
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{command} did not finish within {deadline:?}; it printed:\n{}\n{}",
                    read_all(&mut out),
                    read_all(&mut err)
                );
            }
            Err(e) => panic!("waiting for {command}: {e}"),
        }
    };
    YrOutput {
        command,
        status,
        stdout: read_all(&mut out),
        stderr: read_all(&mut err),
    }
}

fn read_all(f: &mut std::fs::File) -> String {
    let mut bytes = Vec::new();
    if f.rewind().is_err() || f.read_to_end(&mut bytes).is_err() {
        return "(unreadable)".into();
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// An example function executable built by `cargo build --workspace --bins` next to `yr`.
pub fn example(name: &str) -> PathBuf {
    let bin = yr_bin();
    let path = bin.parent().map(|d| d.join(name)).unwrap_or_default();
    assert!(
        path.is_file(),
        "example {name:?} not found at {}: build it with `cargo build --workspace --bins`",
        path.display()
    );
    path
}

/// The folder of an example's sources (with its `function.toml`).
pub fn example_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("examples")
        .join(name)
}

/// Flags for one `yr start`.
#[derive(Clone, Default, Debug)]
pub struct NodeOptions {
    /// `--cpu`, in millicores (default: every core).
    pub cpu_millis: Option<u64>,
    /// `--memory`, in MiB (default: all memory).
    pub memory_mib: Option<u64>,
    /// `--label key=value`.
    pub labels: Vec<(String, String)>,
    /// `--idle-timeout-ms` (master nodes: how long the scheduler lets a stateless instance sit
    /// idle before stopping it; default 60 s).
    pub idle_timeout_ms: Option<u64>,
    /// Further `yr start` flags, as given.
    pub extra: Vec<String>,
}

impl NodeOptions {
    /// A node offering `cpu_millis` millicores.
    pub fn cpu(cpu_millis: u64) -> NodeOptions {
        NodeOptions {
            cpu_millis: Some(cpu_millis),
            ..Default::default()
        }
    }

    /// Adds a label.
    pub fn label(mut self, key: &str, value: &str) -> NodeOptions {
        self.labels.push((key.into(), value.into()));
        self
    }

    /// Sets `--idle-timeout-ms` (meaningful for a master node).
    pub fn idle_timeout_ms(mut self, ms: u64) -> NodeOptions {
        self.idle_timeout_ms = Some(ms);
        self
    }

    fn args(&self) -> Vec<String> {
        let mut v = vec![
            "--ports".into(),
            "auto".into(),
            "--shm-size".into(),
            SHM_SIZE.into(),
        ];
        if let Some(c) = self.cpu_millis {
            v.extend(["--cpu".into(), c.to_string()]);
        }
        if let Some(m) = self.memory_mib {
            v.extend(["--memory".into(), m.to_string()]);
        }
        for (k, val) in &self.labels {
            v.extend(["--label".into(), format!("{k}={val}")]);
        }
        if let Some(ms) = self.idle_timeout_ms {
            v.extend(["--idle-timeout-ms".into(), ms.to_string()]);
        }
        v.extend(self.extra.iter().cloned());
        v
    }
}

/// One component process of a node, from `session.json`.
pub use yr_runtime::session::ComponentInfo as Component;
/// A node's `session.json`, as `yr start` wrote it.
pub use yr_runtime::session::Session;

fn field<'a>(v: &'a Value, key: &str) -> Result<&'a Value, String> {
    v.get(key).ok_or_else(|| format!("field {key:?} missing"))
}

fn str_field(v: &Value, key: &str) -> Result<String, String> {
    field(v, key)?
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("field {key:?} is not a string"))
}

fn u64_field(v: &Value, key: &str) -> Result<u64, String> {
    field(v, key)?
        .as_u64()
        .ok_or_else(|| format!("field {key:?} is not an unsigned integer"))
}

fn u32_field(v: &Value, key: &str) -> Result<u32, String> {
    u32::try_from(u64_field(v, key)?).map_err(|_| format!("field {key:?} is out of range"))
}

fn bool_field(v: &Value, key: &str) -> Result<bool, String> {
    field(v, key)?
        .as_bool()
        .ok_or_else(|| format!("field {key:?} is not a boolean"))
}

fn array_field<'a>(v: &'a Value, key: &str) -> Result<&'a Vec<Value>, String> {
    field(v, key)?
        .as_array()
        .ok_or_else(|| format!("field {key:?} is not an array"))
}

/// One node in `yr status --json`.
#[derive(Clone, Debug)]
pub struct NodeStatus {
    pub node_id: String,
    pub alive: bool,
    /// Millicores the node offers (0 for a dead node).
    pub cpu_total: u64,
    /// Millicores reserved by its instances (0 for a dead node).
    pub cpu_used: u64,
    pub labels: BTreeMap<String, String>,
}

/// One instance in `yr status --json`.
#[derive(Clone, Debug)]
pub struct InstanceStatus {
    pub instance_id: String,
    pub function: String,
    pub name: String,
    pub stateful: bool,
    /// `SCHEDULING`, `CREATING`, `RUNNING`, `FAILED`, `EXITING`, `EXITED`, `FATAL`.
    pub state: String,
    pub node_id: String,
    pub pid: u32,
    pub restarts: u32,
    pub error: String,
}

/// `yr status --json`, parsed.
#[derive(Clone, Debug)]
pub struct ClusterStatus {
    pub nodes: Vec<NodeStatus>,
    /// Names of the deployed functions.
    pub functions: Vec<String>,
    pub instances: Vec<InstanceStatus>,
    /// The JSON as printed, for messages.
    pub raw: String,
}

impl ClusterStatus {
    /// Parses the output of `yr status --json`.
    pub fn parse(text: &str) -> Result<ClusterStatus, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let nodes = array_field(&v, "nodes")?
            .iter()
            .map(|n| {
                let alive = bool_field(n, "alive")?;
                let (cpu_total, cpu_used, labels) = if alive {
                    let labels = field(n, "labels")?
                        .as_object()
                        .ok_or("field \"labels\" is not an object")?
                        .iter()
                        .map(|(k, v)| {
                            v.as_str()
                                .map(|s| (k.clone(), s.to_owned()))
                                .ok_or_else(|| format!("label {k:?} is not a string"))
                        })
                        .collect::<Result<BTreeMap<_, _>, String>>()?;
                    (
                        u64_field(field(n, "total")?, "cpu_millis")?,
                        u64_field(field(n, "used")?, "cpu_millis")?,
                        labels,
                    )
                } else {
                    (0, 0, BTreeMap::new())
                };
                Ok(NodeStatus {
                    node_id: str_field(n, "node_id")?,
                    alive,
                    cpu_total,
                    cpu_used,
                    labels,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let functions = array_field(&v, "functions")?
            .iter()
            .map(|f| str_field(f, "name"))
            .collect::<Result<Vec<_>, String>>()?;
        let instances = array_field(&v, "instances")?
            .iter()
            .map(|i| {
                Ok(InstanceStatus {
                    instance_id: str_field(i, "instance_id")?,
                    function: str_field(i, "function")?,
                    name: str_field(i, "name")?,
                    stateful: bool_field(i, "stateful")?,
                    state: str_field(i, "state")?,
                    node_id: str_field(i, "node_id")?,
                    pid: u32_field(i, "pid")?,
                    restarts: u32_field(i, "restarts")?,
                    error: str_field(i, "error")?,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(ClusterStatus {
            nodes,
            functions,
            instances,
            raw: text.to_owned(),
        })
    }

    /// The instance with this ID.
    pub fn instance(&self, id: &str) -> Option<&InstanceStatus> {
        self.instances.iter().find(|i| i.instance_id == id)
    }

    /// The newest-listed instance with this name (names are reused after an instance ends).
    pub fn named(&self, name: &str) -> Option<&InstanceStatus> {
        self.instances.iter().rfind(|i| i.name == name)
    }

    /// Every instance of `function`.
    pub fn instances_of(&self, function: &str) -> Vec<&InstanceStatus> {
        self.instances
            .iter()
            .filter(|i| i.function == function)
            .collect()
    }

    /// The live node with this ID.
    pub fn node(&self, id: &str) -> Option<&NodeStatus> {
        self.nodes.iter().find(|n| n.node_id == id && n.alive)
    }
}

/// A node this test started.
struct Node {
    dir: PathBuf,
    session: Session,
    stopped: bool,
}

/// A cluster of real nodes in one temporary folder: node 0 is the master node, the others are
/// workers that joined it.
pub struct Cluster {
    nodes: Vec<Node>,
    /// Components the test started itself (outside any `yr start`), killed on drop.
    extra: Vec<ExtraComponent>,
    root: tempfile::TempDir,
}

/// A component the test started with `yr component ...` (not listed in any session.json).
struct ExtraComponent {
    name: String,
    child: std::process::Child,
    log: PathBuf,
    /// Keeps the stdout pipe open, so that the component never writes into a closed pipe.
    _stdout: Option<std::process::ChildStdout>,
}

impl ExtraComponent {
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Cluster {
    /// Starts a master node (etcd, function master and the node's worker components).
    pub fn start(master: NodeOptions) -> Cluster {
        let root = tempfile::Builder::new()
            .prefix("yr-cluster-")
            .tempdir()
            .expect("temporary folder for the cluster");
        let mut c = Cluster {
            nodes: Vec::new(),
            extra: Vec::new(),
            root,
        };
        c.start_node("master", &["--master"], &master);
        c
    }

    /// Starts a worker node that joins the master; returns its index (the master is 0).
    pub fn add_worker(&mut self, options: NodeOptions) -> usize {
        let master = self.master().master_address.clone();
        let token = self.join_token();
        let name = format!("worker{}", self.nodes.len());
        self.start_node(
            &name,
            &[
                "--worker",
                "--master-address",
                &master,
                "--join-token",
                &token,
            ],
            &options,
        );
        self.nodes.len() - 1
    }

    /// Starts a node with `yr start ROLE_ARGS` as given (for instance openYuanrong's
    /// `--master_address http://IP:PORT --join_token T`) plus `options`, in folder `name`;
    /// returns its index.
    pub fn add_node(&mut self, name: &str, role_args: &[&str], options: NodeOptions) -> usize {
        self.start_node(name, role_args, &options);
        self.nodes.len() - 1
    }

    fn start_node(&mut self, name: &str, role: &[&str], options: &NodeOptions) {
        let dir = self.root.path().join(name);
        let dir_arg = dir.display().to_string();
        let opts = options.args();
        let mut args: Vec<&str> = vec!["start"];
        args.extend_from_slice(role);
        args.extend(["--session-dir", &dir_arg]);
        args.extend(opts.iter().map(String::as_str));
        let out = run_yr(&args);
        // Record what was started before judging, so that Drop cleans up even a failed start.
        let session = Session::load(&dir);
        if let Ok(session) = &session {
            self.nodes.push(Node {
                dir: dir.clone(),
                session: session.clone(),
                stopped: false,
            });
        }
        let out = out.expect_ok(&format!("starting the {name} node"));
        if let Err(e) = session {
            panic!("{name} node started but its session is unreadable: {e}\n{out}");
        }
    }

    /// The cluster's join token (what `yr token --join` prints on the master node).
    pub fn join_token(&self) -> String {
        let file = self
            .master()
            .join_token_file
            .clone()
            .expect("the master node's session names its join token file");
        std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("cannot read the join token {}: {e}", file.display()))
            .trim()
            .to_string()
    }

    /// The master node's session.
    pub fn master(&self) -> &Session {
        self.session(0)
    }

    /// Node `i`'s session (0 is the master node).
    pub fn session(&self, i: usize) -> &Session {
        &self
            .nodes
            .get(i)
            .unwrap_or_else(|| panic!("the cluster has no node {i}"))
            .session
    }

    /// How many nodes this test started.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// The folder holding every node's session folder.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Runs `yr ARGS --session-dir <master node>`.
    pub fn yr(&self, args: &[&str]) -> YrOutput {
        self.yr_on(0, args)
    }

    /// Runs `yr ARGS --session-dir <node i>`.
    pub fn yr_on(&self, i: usize, args: &[&str]) -> YrOutput {
        let dir = self
            .nodes
            .get(i)
            .unwrap_or_else(|| panic!("the cluster has no node {i}"))
            .dir
            .display()
            .to_string();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--session-dir", &dir]);
        run_yr(&all)
    }

    /// `yr function deploy ARGS`; panics unless it succeeds.
    #[track_caller]
    pub fn deploy(&self, args: &[&str]) -> YrOutput {
        let mut all = vec!["function", "deploy"];
        all.extend_from_slice(args);
        self.yr(&all).expect_ok("deploy")
    }

    /// Deploys the example `example` as function `name` with `handler` (and `more` deploy
    /// arguments); panics unless it succeeds.
    #[track_caller]
    pub fn deploy_example(&self, name: &str, example_name: &str, handler: &str, more: &[&str]) {
        let code = example(example_name);
        let code = code.to_str().expect("UTF-8 path");
        let mut args = vec!["--name", name, "--code", code, "--handler", handler];
        args.extend_from_slice(more);
        self.deploy(&args);
    }

    /// Waits until every node this test started (and has not stopped) is registered and
    /// alive; the status that showed it.
    pub fn wait_for_all_nodes(&self) -> ClusterStatus {
        let ids: Vec<String> = self
            .nodes
            .iter()
            .map(|n| n.session.node_id.clone())
            .collect();
        self.wait_until(&format!("all {} nodes are registered", ids.len()), |st| {
            ids.iter()
                .all(|id| st.node(id).is_some())
                .then(|| st.clone())
        })
    }

    /// `yr invoke FUNCTION --data DATA`.
    pub fn invoke(&self, function: &str, data: &str) -> YrOutput {
        self.yr(&["invoke", function, "--data", data])
    }

    /// `yr invoke FUNCTION --instance INSTANCE --method METHOD --data DATA`.
    pub fn call(&self, function: &str, instance: &str, method: &str, data: &str) -> YrOutput {
        self.yr(&[
            "invoke",
            function,
            "--instance",
            instance,
            "--method",
            method,
            "--data",
            data,
        ])
    }

    /// `yr status --json`, parsed.
    pub fn try_status(&self) -> Result<ClusterStatus, String> {
        let out = self.yr(&["status", "--json"]);
        if !out.success() {
            return Err(format!("yr status failed\n{out}"));
        }
        ClusterStatus::parse(&out.stdout)
            .map_err(|e| format!("yr status printed bad JSON ({e})\n{out}"))
    }

    /// `yr status --json`, parsed; panics if that fails.
    #[track_caller]
    pub fn status(&self) -> ClusterStatus {
        self.try_status().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Polls `yr status --json` until `check` returns `Some`, for up to [`WAIT_DEADLINE`].
    #[track_caller]
    pub fn wait_until<T>(&self, what: &str, check: impl FnMut(&ClusterStatus) -> Option<T>) -> T {
        self.wait_until_within(what, WAIT_DEADLINE, check)
    }

    /// Polls `yr status --json` until `check` returns `Some`; after `deadline` panics with
    /// `what`, the last status seen and the cluster's logs.
    #[track_caller]
    pub fn wait_until_within<T>(
        &self,
        what: &str,
        deadline: Duration,
        mut check: impl FnMut(&ClusterStatus) -> Option<T>,
    ) -> T {
        let start = Instant::now();
        loop {
            let last = match self.try_status() {
                Ok(st) => {
                    if let Some(v) = check(&st) {
                        return v;
                    }
                    st.raw
                }
                Err(e) => e,
            };
            if start.elapsed() > deadline {
                panic!(
                    "timed out after {deadline:?} waiting until {what}; last status:\n{last}\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `yr stop` (with `--force` if asked) on node `i`; the node is not stopped again on
    /// drop, whatever the outcome.
    pub fn stop_node(&mut self, i: usize, force: bool) -> YrOutput {
        let mut args = vec!["stop"];
        if force {
            args.push("--force");
        }
        let out = self.yr_on(i, &args);
        if let Some(n) = self.nodes.get_mut(i) {
            n.stopped = true;
        }
        out
    }

    /// Runs `yr stop ARGS` as given (naming node `i`'s session the test's own way); node `i` is
    /// not stopped again on drop, whatever the outcome.
    pub fn stop_node_with(&mut self, i: usize, args: &[&str]) -> YrOutput {
        let mut all = vec!["stop"];
        all.extend_from_slice(args);
        let out = run_yr(&all);
        if let Some(n) = self.nodes.get_mut(i) {
            n.stopped = true;
        }
        out
    }

    /// Starts the master node's function master again, on the address and with the etcd
    /// endpoints its `session.json` records (after the test killed the one `yr start` began),
    /// and waits up to `deadline` for its `ready address=...` line; returns its pid and that
    /// line. The new process is the test's child: dropping the cluster kills it (`yr stop` only
    /// knows the old pid). Panics, with the new master's log, if it does not get ready.
    #[track_caller]
    pub fn restart_function_master(&mut self, deadline: Duration) -> (u32, String) {
        let s = self.master().clone();
        let old = s
            .components
            .iter()
            .find(|c| c.name == "function-master")
            .unwrap_or_else(|| panic!("node {} runs no function master", s.node_id))
            .clone();
        let n = self
            .extra
            .iter()
            .filter(|e| e.name == "function-master")
            .count();
        let log = s
            .session_dir
            .join("logs")
            .join(format!("function-master-restart{}.log", n + 1));
        let logf = std::fs::File::create(&log)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let mut child = Command::new(yr_bin())
            .args(["component", "function-master", "--listen", &old.address])
            .args(["--etcd", &s.etcd_endpoints.join(",")])
            .args(master_tls_args(&s))
            .env("YR_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(logf)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run yr component function-master: {e}"));
        let pid = child.id();
        let stdout = child.stdout.take().expect("piped stdout");
        // Recorded before waiting, so that drop kills it even if it never gets ready.
        self.extra.push(ExtraComponent {
            name: "function-master".into(),
            child,
            log: log.clone(),
            _stdout: None,
        });
        // The ready line is read on a thread so that the wait has a deadline; the thread hands
        // the pipe back so that it stays open for the master's lifetime.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = std::io::BufReader::new(stdout);
            let mut line = String::new();
            let r = std::io::BufRead::read_line(&mut reader, &mut line).map(|_| line);
            let _ = tx.send((r, reader.into_inner()));
        });
        let line = match rx.recv_timeout(deadline) {
            Ok((Ok(line), stdout)) if line.starts_with("ready") => {
                if let Some(e) = self.extra.last_mut() {
                    e._stdout = Some(stdout);
                }
                line.trim().to_string()
            }
            Ok((r, _)) => panic!(
                "the restarted function master (pid {pid}) printed {r:?} instead of a ready line; \
                 its log ({}):\n{}",
                log.display(),
                tail(&log, 30)
            ),
            Err(_) => panic!(
                "the restarted function master (pid {pid}) was not ready within {deadline:?}; \
                 its log ({}):\n{}",
                log.display(),
                tail(&log, 30)
            ),
        };
        (pid, line)
    }

    /// The tail of every component log and every instance's stderr, for failure messages.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for n in &self.nodes {
            for c in &n.session.components {
                s.push_str(&format!(
                    "==> {} of node {} ({}):\n{}\n",
                    c.name,
                    n.session.node_id,
                    c.log.display(),
                    tail(&c.log, if c.name == "etcd" { 8 } else { 30 })
                ));
            }
            if n.session.role == "master" {
                for e in &self.extra {
                    s.push_str(&format!(
                        "==> {} started by the test, pid {} ({}):\n{}\n",
                        e.name,
                        e.child.id(),
                        e.log.display(),
                        tail(&e.log, 30)
                    ));
                }
            }
            let instances = n.dir.join("node/work/instances");
            let mut dirs: Vec<PathBuf> = std::fs::read_dir(&instances)
                .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
                .unwrap_or_default();
            dirs.sort();
            for d in dirs {
                let log = d.join("stderr.log");
                s.push_str(&format!(
                    "==> instance {} stderr:\n{}\n",
                    d.display(),
                    tail(&log, 10)
                ));
            }
        }
        s
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- logs of the cluster in {} ----\n{}",
                self.root.path().display(),
                self.logs()
            );
        }
        // Workers first, then the master node (whose etcd and master the workers talk to).
        // Components the test started itself go just before the master node's.
        for i in (0..self.nodes.len()).rev() {
            if i == 0 {
                for e in &mut self.extra {
                    e.kill();
                }
            }
            if self.nodes[i].stopped {
                continue;
            }
            let dir = self.nodes[i].dir.display().to_string();
            let out = run_yr_within(
                &["stop", "--force", "--session-dir", &dir],
                Duration::from_secs(30),
            );
            self.nodes[i].stopped = true;
            if !out.success() {
                eprintln!("cleanup: {out}\nkilling the recorded processes instead");
                for c in &self.nodes[i].session.components {
                    kill_group(c.pid);
                }
            }
        }
        for e in &mut self.extra {
            e.kill();
        }
    }
}

/// SIGKILL to a component and its process group (each component leads its own session).
/// A gRPC endpoint for `address` (host:port) that presents node `s`'s certificate and trusts
/// its cluster's CA: how the cluster's own components and the CLI connect.
pub fn member_endpoint(s: &Session, address: &str) -> tonic::transport::Endpoint {
    let tls = s
        .tls()
        .unwrap_or_else(|| panic!("the session of node {} names no TLS files", s.node_id))
        .load()
        .unwrap_or_else(|e| panic!("node {}'s credentials: {e}", s.node_id));
    tonic::transport::Endpoint::from_shared(format!("https://{address}"))
        .unwrap_or_else(|e| panic!("address {address:?}: {e}"))
        .tls_config(tls.client())
        .unwrap_or_else(|e| panic!("TLS config: {e}"))
        .connect_timeout(Duration::from_secs(5))
}

/// The TLS flags `yr start` gave the master node's function master (its credentials folder,
/// the CA key and the join token), from its session.
fn master_tls_args(s: &Session) -> Vec<String> {
    let mut args = Vec::new();
    if let Some(dir) = s.tls_cert.as_deref().and_then(Path::parent) {
        args.extend(["--tls-dir".to_string(), dir.display().to_string()]);
        if let (Some(t), Some(secret)) = (&s.join_token_file, &s.cluster_secret) {
            args.extend([
                "--ca-key".to_string(),
                dir.join("ca.key").display().to_string(),
                "--join-token-file".to_string(),
                t.display().to_string(),
                "--cluster-secret".to_string(),
                secret.display().to_string(),
            ]);
        }
    }
    args
}

fn kill_group(pid: u32) {
    let Ok(pid) = i32::try_from(pid) else { return };
    if pid <= 0 {
        return;
    }
    // SAFETY: kill(2) with plain signals; a stale pid at worst gets ESRCH.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
        libc::kill(pid, libc::SIGKILL);
    }
}

fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read: {e})"),
    }
}

/// A process, identified by pid and start time so that a reused pid is not mistaken for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    /// What the test calls it, for messages.
    pub what: String,
    start_time: u64,
}

/// `/proc/PID/stat`: the state letter and the start time (clock ticks after boot).
fn proc_stat(pid: u32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses; fields resume after the last ')'.
    let (_, rest) = text.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); field 22 (starttime) is at index 19.
    let state = fields.first()?.chars().next()?;
    let start_time = fields.get(19)?.parse().ok()?;
    Some((state, start_time))
}

impl Process {
    /// The running process `pid`, or `None` if there is none (or only a zombie).
    pub fn find(pid: u32, what: &str) -> Option<Process> {
        match proc_stat(pid) {
            Some((state, start_time)) if state != 'Z' => Some(Process {
                pid,
                what: what.to_owned(),
                start_time,
            }),
            _ => None,
        }
    }

    /// Polls until the process has ended (see [`Process::is_gone`]); false if it still runs
    /// after `deadline`.
    pub fn wait_gone(&self, deadline: Duration) -> bool {
        let start = Instant::now();
        while !self.is_gone() {
            if start.elapsed() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    /// Whether the process has ended: no such pid, a zombie (an ended process nobody has
    /// reaped yet, which holds no resources), or the pid now belongs to another process.
    pub fn is_gone(&self) -> bool {
        match proc_stat(self.pid) {
            None => true,
            Some((state, start_time)) => state == 'Z' || start_time != self.start_time,
        }
    }
}

/// Live (non-zombie) processes whose executable or command line mentions `needle`, as
/// `pid: command line`.
pub fn processes_mentioning(needle: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        if matches!(proc_stat(pid), None | Some(('Z', _))) {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        let exe = std::fs::read_link(entry.path().join("exe"))
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        if cmdline.contains(needle) || exe.contains(needle) {
            found.push(format!("{pid}: {} ({exe})", cmdline.trim()));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_json() {
        let text = r#"{
          "functions": [{"name": "hello"}],
          "instances": [{"instance_id": "hello-1", "function": "hello", "name": "",
            "stateful": false, "state": "RUNNING", "node_id": "n1", "pid": 42,
            "restarts": 1, "error": ""}],
          "nodes": [
            {"node_id": "n1", "alive": true, "labels": {"zone": "a"},
             "total": {"cpu_millis": 1000}, "used": {"cpu_millis": 100}},
            {"node_id": "n2", "alive": false}
          ]
        }"#;
        let st = ClusterStatus::parse(text).expect("valid status");
        assert_eq!(st.functions, ["hello"]);
        assert_eq!(st.instances[0].pid, 42);
        assert_eq!(st.instances[0].restarts, 1);
        assert_eq!(st.node("n1").map(|n| n.cpu_used), Some(100));
        assert_eq!(
            st.node("n1").and_then(|n| n.labels.get("zone").cloned()),
            Some("a".into())
        );
        assert!(st.node("n2").is_none(), "a dead node is not live");
        assert!(ClusterStatus::parse("{\"nodes\": 3}").is_err());
        assert!(ClusterStatus::parse("not json").is_err());
    }

    #[test]
    fn own_process_is_found_and_not_gone() {
        let me = Process::find(std::process::id(), "this test").expect("this process");
        assert!(!me.is_gone());
        let other = Process {
            start_time: me.start_time + 1,
            ..me.clone()
        };
        assert!(other.is_gone(), "a different start time means a reused pid");
    }
}
