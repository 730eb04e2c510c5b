//! The function agent with its runtime manager, one per node: registers the node in etcd, starts
//! and watches function processes, and reports what they use.
//!
//! Invariants:
//! - The node record lives under a lease this agent keeps alive; if the agent dies the record
//!   lapses within [`LEASE_TTL`] and the master treats the node as dead.
//! - An instance ID passes [`crate::function::check_path_name`] before it becomes a path.
//! - Every function process gets its instance's secret (`YR_INSTANCE_SECRET`, see
//!   [`crate::secret`]), without which the proxy will not let it serve the instance.
//! - Every function process runs in its own folder `work_dir/instances/<id>/`, with its code
//!   there (or its code folder as is), its stdout and stderr captured to `stdout.log` and
//!   `stderr.log` there.
//! - A function's runtime decides the program: the entrypoint of its code
//!   (`posix-custom-runtime`), or a Python interpreter running `-m yr.worker` in the code folder
//!   (`python3.x`, see [`python`]), which starts only after the interpreter is seen to import yr.
//! - A stopping process gets SIGTERM, then SIGKILL after its grace: [`STOP_GRACE`], or longer
//!   when its function's `pre_stop` hook may take longer.
//! - Every exit is reported to the master: EXITED when the master asked for it, FAILED (with the
//!   tail of stderr) when the process ended on its own, with the process's pid so a late report
//!   cannot fail a later incarnation. A report is retried (backing off to [`REPORT_RETRY_MAX`])
//!   until a master acknowledges it: a master that is down or failing over loses none. The agent
//!   never restarts anything itself; the master decides.
//! - `ListInstances` tells a master that takes over which processes run here, so it can
//!   reconcile its records with them. A restarted agent reports the instances the master still
//!   records on its node, whose processes died with the previous agent, as FAILED
//!   ([`report_previous_agents_processes`]).
//! - Stopping the agent stops every function process it started, and a function process dies
//!   with its agent, `kill -9` included ([`spawn`]: no orphan keeps running an instance the master
//!   restarts elsewhere).
//! - The node's data worker is kept told the cluster's members ([`members`]), the only data
//!   workers it exchanges objects with.
//!
//! [`package`] turns a function's code into the process's folder; [`procstat`] measures the node
//! and its processes from `/proc`; [`python`] holds what is particular to Python processes. A start request's function enters as a checked
//! [`crate::function::Spec`]; failures leave typed ([`crate::error::Error`]), bad code or a bad
//! entrypoint as an invalid argument naming `code_path` or `entrypoint`.

use std::collections::HashMap;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tonic::{Request, Response, Status};
use yr_proto::agent_server::{Agent, AgentServer};
use yr_proto::master_client::MasterClient;
use yr_proto::*;

use crate::error::{Error, Result};
use crate::etcd::{self, Meta};
use crate::function::Spec;
use crate::Shutdown;

pub mod members;
pub mod package;
pub mod procstat;
pub mod python;
pub mod spawn;

use crate::function::Runtime;

/// Lifetime of the node's registration without keep-alives.
pub const LEASE_TTL: i64 = 6;
/// How often the node record (with the node's usage) is refreshed.
const REPORT_EVERY: Duration = Duration::from_secs(2);
/// How long a stopped process gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How much of a crashed process's stderr goes into the error callers see.
const STDERR_TAIL: usize = 2048;

/// How an agent is started.
pub struct AgentConfig {
    /// Where it serves gRPC (port 0: any free port).
    pub listen: std::net::SocketAddr,
    /// The etcd cluster it registers the node in.
    pub etcd_endpoints: Vec<String>,
    /// The master it reports instances to.
    pub master_address: String,
    /// This node's ID.
    pub node_id: String,
    /// This node's proxy (gRPC).
    pub proxy_address: String,
    /// The proxy's instance socket, where function processes take their calls.
    pub proxy_socket: std::path::PathBuf,
    /// The node secret its proxy wrote (see [`crate::secret`]); read and removed at start.
    pub instance_secret_file: PathBuf,
    /// This node's data worker socket.
    pub data_socket: PathBuf,
    /// The data worker's transfer address (empty: objects stay on this node).
    pub data_transfer: String,
    /// Where instance folders go (`instances/<id>/`).
    pub work_dir: PathBuf,
    /// The node's cpu to offer (default: what it has).
    pub cpu_millis: Option<u64>,
    /// The node's memory to offer (default: what it has).
    pub memory_mib: Option<u64>,
    /// The node's labels, for affinity rules.
    pub labels: HashMap<String, String>,
    /// Custom resources the node offers ("gpu": 1).
    pub custom: HashMap<String, f64>,
    /// The interpreter of Python function processes (default: `python3` on `PATH`); a
    /// function's environment `YR_PYTHON` overrides it.
    pub python: Option<String>,
}

/// Longest pause between two attempts to deliver an exit report.
const REPORT_RETRY_MAX: Duration = Duration::from_secs(2);

/// Delivers `ev` to the master, retrying until one acknowledges it. A master that answers that
/// it has no such instance (its record was swept or deleted) also ends the retries: nothing is
/// left to tell.
async fn report_until_acknowledged(
    mut master: MasterClient<crate::MasterChannel>,
    ev: InstanceEvent,
) {
    let mut pause = Duration::from_millis(100);
    let mut warned = false;
    loop {
        match master.report_instance(ev.clone()).await {
            Ok(_) => {
                if warned {
                    tracing::info!(instance = %ev.instance_id, "exit report delivered");
                }
                return;
            }
            Err(e) if e.code() == tonic::Code::NotFound => return,
            Err(e) => {
                if !warned {
                    tracing::warn!(
                        instance = %ev.instance_id,
                        "cannot report exit yet, will retry until a master takes it: {}",
                        Error::from_status(e)
                    );
                    warned = true;
                }
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(REPORT_RETRY_MAX);
    }
}

/// How long a starting agent keeps asking a master which instances its node had.
const PREVIOUS_WITHIN: Duration = Duration::from_secs(60);

/// The instances a master records as running on this node, under pids this agent did not start:
/// after a restart of the agent, those processes died with the previous one (see [`spawn`]).
/// Pure, for tests: `records` from the master, `ours` the instance IDs this agent runs.
fn died_with_previous_agent<'a>(
    records: &'a [InstanceRecord],
    node_id: &str,
    ours: &std::collections::HashSet<String>,
) -> Vec<&'a InstanceRecord> {
    records
        .iter()
        .filter(|r| {
            r.node_id == node_id
                && r.pid != 0
                && r.state() == InstanceState::Running
                && !ours.contains(&r.instance_id)
        })
        .collect()
}

/// When an agent starts on a node whose previous agent died (the node supervisor restarted
/// it), the master still records that agent's instances as running, though their processes died
/// with it. Reports each as FAILED, with the pid it had (a master ignores the report if the
/// record moved on to another process), so the master restarts it as for any crash. A new node
/// has no records: one status call, nothing reported.
async fn report_previous_agents_processes(state: Arc<State>, shutdown: Shutdown) {
    let deadline = tokio::time::Instant::now() + PREVIOUS_WITHIN;
    let mut pause = Duration::from_millis(200);
    let status = loop {
        let mut m = state.master.clone();
        match m.status(Empty {}).await {
            Ok(s) => break s.into_inner(),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                tracing::warn!(
                    "cannot ask a master which instances this node had: {}",
                    Error::from_status(e)
                );
                return;
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.wait() => return,
        }
        pause = (pause * 2).min(REPORT_RETRY_MAX);
    };
    let ours: std::collections::HashSet<String> =
        state.running.lock().await.keys().cloned().collect();
    for r in died_with_previous_agent(&status.instances, &state.config.node_id, &ours) {
        tracing::warn!(
            instance = %r.instance_id,
            pid = r.pid,
            "the instance's process ended with this node's previous agent; reporting it failed"
        );
        let ev = InstanceEvent {
            instance_id: r.instance_id.clone(),
            state: InstanceState::Failed.into(),
            pid: r.pid,
            error: format!(
                "process {} ended with the agent of node {} (the agent was restarted)",
                r.pid, state.config.node_id
            ),
            ..Default::default()
        };
        tokio::spawn(report_until_acknowledged(state.master.clone(), ev));
    }
}

struct Running {
    pid: u32,
    /// Between SIGTERM and SIGKILL.
    grace: Duration,
    stopping: Arc<std::sync::atomic::AtomicBool>,
    exited: Arc<tokio::sync::Notify>,
    done: Arc<std::sync::atomic::AtomicBool>,
}

struct State {
    config: AgentConfig,
    /// Shared with this node's proxy: each process's `YR_INSTANCE_SECRET` derives from it.
    secret: crate::secret::NodeSecret,
    master: MasterClient<crate::MasterChannel>,
    running: Mutex<HashMap<String, Running>>,
    /// Python interpreters seen to import yr.
    pythons: python::Checked,
}

/// The last [`STDERR_TAIL`] bytes written to `path` after offset `from` (this run's output;
/// earlier runs of a restarted instance append to the same file).
fn tail_of(path: &Path, from: u64) -> String {
    let Ok(bytes) = std::fs::read(path) else {
        return String::new();
    };
    let this_run = &bytes[(from as usize).min(bytes.len())..];
    let start = this_run.len().saturating_sub(STDERR_TAIL);
    String::from_utf8_lossy(&this_run[start..])
        .trim()
        .to_string()
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a pid we started; a stale pid at worst gets ESRCH.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

impl State {
    async fn start(&self, instance: InstanceRecord, function: Spec) -> Result<u32> {
        let id = instance.instance_id.clone();
        // The ID becomes a folder whose `code` is removed below: only a name that stays inside
        // `instances/` gets that far.
        crate::function::check_path_name("instance_id", &id)?;
        if let Some(r) = self.running.lock().await.get(&id) {
            if !r.done.load(std::sync::atomic::Ordering::SeqCst) {
                return Ok(r.pid);
            }
        }
        let dir = self.config.work_dir.join("instances").join(&id);
        let io = |what: String| {
            let id = id.clone();
            move |e| Error::io(format!("instance {id}: {what}"), e)
        };
        // Private to the cluster's user, whatever the agent's umask: the instance's code and
        // output are the function's data.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io(format!("create {}", dir.display())))?;
        // A restart reuses the instance's folder: unpack its code afresh.
        let own_code = dir.join("code");
        if own_code.exists() {
            std::fs::remove_dir_all(&own_code)
                .map_err(io(format!("remove {}", own_code.display())))?;
        }
        let code_dir = if function.code_path.is_empty() {
            // Only Python functions may come without code (validated): they run in an empty
            // folder of their own.
            std::fs::create_dir(&own_code).map_err(io(format!("create {}", own_code.display())))?;
            own_code
        } else {
            let code = PathBuf::from(&function.code_path);
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || package::prepare(&code, &dir))
                .await
                .map_err(|e| Error::Internal(format!("instance {id}: preparing code: {e}")))??
        };
        let (exe, args, extra_env): (PathBuf, &[&str], Vec<(&str, String)>) =
            match function.runtime() {
                Runtime::Custom => (
                    package::find_entrypoint(&code_dir, &function.entrypoint)?,
                    &[],
                    Vec::new(),
                ),
                Runtime::Python => {
                    let py = python::interpreter(&function.env, self.config.python.as_deref());
                    self.pythons.ensure(&py, &function.runtime).await?;
                    (
                        PathBuf::from(py),
                        &python::WORKER_ARGS,
                        python::worker_env(&function),
                    )
                }
            };
        let output = || {
            let mut o = std::fs::File::options();
            o.create(true).append(true).mode(0o600);
            o
        };
        let stdout = output()
            .open(dir.join("stdout.log"))
            .map_err(io("open stdout.log".into()))?;
        let stderr_path = dir.join("stderr.log");
        let stderr = output()
            .open(&stderr_path)
            .map_err(io("open stderr.log".into()))?;
        let stderr_start = stderr.metadata().map(|m| m.len()).unwrap_or(0);
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.args(args)
            .current_dir(&code_dir)
            .envs(&function.env)
            .envs(extra_env)
            .env("YR_INSTANCE_ID", &id)
            .env("YR_FUNCTION", &function.name)
            .env("YR_HANDLER", &function.handler)
            .env("YR_NODE_ID", &self.config.node_id)
            .env("YR_PROXY_ADDRESS", &self.config.proxy_address)
            .env("YR_PROXY_SOCKET", &self.config.proxy_socket)
            .env("YR_MASTER_ADDRESS", &self.config.master_address)
            .env("YR_DATA_SOCKET", &self.config.data_socket)
            .env("YR_INSTANCE_DIR", &dir)
            .envs(yr_proto::tls::installed().map_or(Vec::new(), |c| c.files().env().to_vec()))
            .env(
                crate::secret::INSTANCE_SECRET_ENV,
                self.secret.for_instance(&id),
            )
            .stdin(std::process::Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(false);
        // ETXTBSY: another thread of this agent forked while the executable was being copied
        // (for another instance), so its child briefly holds the copy open for writing until
        // it execs. The window is microseconds; a few retries always get past it.
        // Started by the spawner thread, so that the process dies with this agent.
        spawn::die_with_parent(&mut cmd);
        let mut attempts = 0;
        let mut child = loop {
            let (back, r) = spawn::spawn(cmd).await;
            cmd = back;
            match r {
                Ok(c) => break c,
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempts < 20 => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(5 * attempts)).await;
                }
                Err(e) => return Err(io(format!("start {}", exe.display()))(e)),
            }
        };
        let pid = child.id().unwrap_or(0);
        tracing::info!(instance = %id, pid, exe = %exe.display(), "function process started");
        let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let exited = Arc::new(tokio::sync::Notify::new());
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        self.running.lock().await.insert(
            id.clone(),
            Running {
                pid,
                grace: python::stop_grace(&function, STOP_GRACE),
                stopping: Arc::clone(&stopping),
                exited: Arc::clone(&exited),
                done: Arc::clone(&done),
            },
        );
        let master = self.master.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            exited.notify_waiters();
            let asked = stopping.load(std::sync::atomic::Ordering::SeqCst);
            let how = match &status {
                Ok(s) => s.to_string(),
                Err(e) => format!("wait failed: {e}"),
            };
            let ev = if asked {
                InstanceEvent {
                    instance_id: id.clone(),
                    state: InstanceState::Exited.into(),
                    pid,
                    ..Default::default()
                }
            } else {
                let tail = tail_of(&stderr_path, stderr_start);
                tracing::warn!(instance = %id, "function process exited on its own ({how})");
                InstanceEvent {
                    instance_id: id.clone(),
                    state: InstanceState::Failed.into(),
                    error: if tail.is_empty() {
                        format!("process {pid} exited ({how})")
                    } else {
                        format!("process {pid} exited ({how}); stderr: {tail}")
                    },
                    pid,
                    ..Default::default()
                }
            };
            report_until_acknowledged(master, ev).await;
        });
        Ok(pid)
    }

    /// SIGTERM, then SIGKILL after the grace period; returns once the process is gone.
    async fn stop(&self, id: &str) {
        let (pid, grace, exited, done) = {
            let running = self.running.lock().await;
            let Some(r) = running.get(id) else { return };
            r.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
            (r.pid, r.grace, Arc::clone(&r.exited), Arc::clone(&r.done))
        };
        let gone = || done.load(std::sync::atomic::Ordering::SeqCst);
        if !gone() {
            let n = exited.notified();
            signal(pid, libc::SIGTERM);
            if !gone() && tokio::time::timeout(grace, n).await.is_err() {
                let n = exited.notified();
                signal(pid, libc::SIGKILL);
                if !gone() {
                    let _ = tokio::time::timeout(Duration::from_secs(5), n).await;
                }
            }
        }
        self.running.lock().await.remove(id);
    }

    /// The function processes running now.
    async fn list(&self) -> Vec<RunningInstance> {
        let mut v: Vec<RunningInstance> = self
            .running
            .lock()
            .await
            .iter()
            .filter(|(_, r)| !r.done.load(std::sync::atomic::Ordering::SeqCst))
            .map(|(id, r)| RunningInstance {
                instance_id: id.clone(),
                pid: r.pid,
            })
            .collect();
        v.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
        v
    }

    async fn stop_all(&self) {
        let ids: Vec<String> = self.running.lock().await.keys().cloned().collect();
        futures::future::join_all(ids.iter().map(|id| self.stop(id))).await;
    }
}

struct Service(Arc<State>);

#[tonic::async_trait]
impl Agent for Service {
    async fn start_instance(
        &self,
        req: Request<StartInstanceRequest>,
    ) -> Result<Response<StartInstanceReply>, Status> {
        let r = req.into_inner();
        let instance = r
            .instance
            .ok_or_else(|| Error::invalid("instance", "missing"))?;
        let function = r
            .function
            .ok_or_else(|| Error::invalid("function", "missing"))?;
        let pid = self.0.start(instance, Spec::try_from(function)?).await?;
        Ok(Response::new(StartInstanceReply { pid }))
    }

    async fn stop_instance(&self, req: Request<InstanceRef>) -> Result<Response<Empty>, Status> {
        self.0.stop(&req.into_inner().instance_id).await;
        Ok(Response::new(Empty {}))
    }

    async fn list_instances(
        &self,
        _req: Request<Empty>,
    ) -> Result<Response<RunningInstances>, Status> {
        Ok(Response::new(RunningInstances {
            instances: self.0.list().await,
        }))
    }
}

fn node_record(config: &AgentConfig, hostname: &str) -> NodeRecord {
    let sample = procstat::sample_node().ok();
    let cpu = config
        .cpu_millis
        .unwrap_or_else(|| sample.as_ref().map(|s| s.cpu_millis_total).unwrap_or(1000));
    let mem = config.memory_mib.unwrap_or_else(|| {
        sample
            .as_ref()
            .map(|s| s.memory_total_bytes >> 20)
            .unwrap_or(1024)
    });
    NodeRecord {
        node_id: config.node_id.clone(),
        hostname: hostname.to_string(),
        proxy_address: config.proxy_address.clone(),
        agent_address: String::new(),
        data_socket: config.data_socket.display().to_string(),
        data_transfer_address: config.data_transfer.clone(),
        total: Some(Resources {
            cpu_millis: cpu,
            memory_mib: mem,
            custom: config.custom.clone(),
        }),
        labels: {
            // Every node can be named in a label affinity rule by its ID.
            let mut l = config.labels.clone();
            l.entry(NODE_LABEL.to_string())
                .or_insert_with(|| config.node_id.clone());
            l
        },
        ..Default::default()
    }
}

/// The label every node carries with its node ID as value.
pub const NODE_LABEL: &str = "yr.node";

/// Reads the data worker's arena size and use (blocking; run off the async threads) over
/// `conn`, connecting first if there is no connection yet or the last one failed. Kept across
/// reports: a connection maps the whole arena, not something to redo every few seconds.
fn shm_usage(conn: &mut Option<yr_datastore::client::Client>, socket: &Path) -> Option<(u64, u64)> {
    if conn.is_none() {
        *conn = yr_datastore::client::Client::connect_named(socket, "yr-agent").ok();
    }
    match conn.as_ref()?.stats() {
        Ok(s) => Some((s.capacity, s.used)),
        Err(_) => {
            *conn = None;
            None
        }
    }
}

/// Keeps the node registered and its usage current until shutdown; re-registers if the lease is
/// lost (etcd restarted, a long pause).
async fn register(state: Arc<State>, meta: Meta, agent_address: String, shutdown: Shutdown) {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let mut prev_node = procstat::sample_node().ok();
    let mut store: Option<yr_datastore::client::Client> = None;
    'lease: loop {
        if shutdown.is_set() {
            return;
        }
        let mut lease = match meta.grant_kept(LEASE_TTL).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!("cannot register the node: {e}; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = shutdown.wait() => return,
                }
            }
        };
        loop {
            let mut rec = node_record(&state.config, &hostname);
            rec.agent_address = agent_address.clone();
            let now = procstat::sample_node().ok();
            if let (Some(p), Some(n)) = (&prev_node, &now) {
                rec.cpu_millis_busy = procstat::cpu_busy_millis(p, n);
                rec.memory_used_bytes = n
                    .memory_total_bytes
                    .saturating_sub(n.memory_available_bytes);
            }
            prev_node = now;
            let socket = state.config.data_socket.clone();
            let mut conn = store.take();
            let usage = tokio::task::spawn_blocking(move || {
                let u = shm_usage(&mut conn, &socket);
                (u, conn)
            })
            .await;
            if let Ok((u, conn)) = usage {
                store = conn;
                if let Some((total, used)) = u {
                    rec.shm_total_bytes = total;
                    rec.shm_used_bytes = used;
                }
            }
            rec.updated_unix_ms = etcd::now_ms();
            if let Err(e) = meta
                .put_leased(&etcd::node_key(&state.config.node_id), &rec, lease.id())
                .await
            {
                tracing::warn!("cannot update the node record: {e}");
                continue 'lease;
            }
            // Per-instance usage is not reported: this node's collector measures it (usage
            // needs no consistency, so it stays out of etcd's records).
            if !lease.renew().await {
                tracing::warn!("etcd lease lost; registering again");
                continue 'lease;
            }
            tokio::select! {
                _ = tokio::time::sleep(REPORT_EVERY) => {}
                _ = shutdown.wait() => {
                    // Leaving, not dying: the master stops listing this node once its
                    // registration goes.
                    let _ = meta
                        .delete(&etcd::known_node_key(&state.config.node_id))
                        .await;
                    lease.revoke().await;
                    return;
                }
            }
        }
    }
}

/// Runs the agent until `shutdown`, then stops every function process it started.
pub async fn run(
    config: AgentConfig,
    shutdown: Shutdown,
    on_ready: impl FnOnce(std::net::SocketAddr),
) -> Result<()> {
    crate::function::check_path_name("node_id", &config.node_id)?;
    let secret = crate::secret::NodeSecret::take(&config.instance_secret_file)?;
    std::fs::create_dir_all(config.work_dir.join("instances"))
        .map_err(|e| Error::io(format!("cannot create {}", config.work_dir.display()), e))?;
    let meta = Meta::connect(&config.etcd_endpoints).await?;
    tokio::spawn(members::push(
        meta.clone(),
        config.data_socket.clone(),
        shutdown.clone(),
    ));
    let channel = crate::master_channel(&config.master_address)?;
    crate::follow_masters(meta.clone(), channel.clone());
    let master = MasterClient::new(channel);
    let mut server = crate::grpc_server()?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| Error::io(format!("cannot listen on {}", config.listen), e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::io("the bound address", e))?;
    let state = Arc::new(State {
        config,
        secret,
        master,
        running: Mutex::new(HashMap::new()),
        pythons: python::Checked::default(),
    });
    let reg = tokio::spawn(register(
        Arc::clone(&state),
        meta,
        addr.to_string(),
        shutdown.clone(),
    ));
    tokio::spawn(report_previous_agents_processes(
        Arc::clone(&state),
        shutdown.clone(),
    ));
    on_ready(addr);
    // Processes are stopped even if serving failed: none may outlive the agent.
    let served = server
        .add_service(tonic::service::interceptor::InterceptedService::new(
            AgentServer::new(Service(Arc::clone(&state))),
            yr_proto::tls::require_client_cert,
        ))
        .serve_with_incoming_shutdown(crate::incoming(listener), shutdown.clone().wait_owned())
        .await
        .map_err(|e| Error::Internal(format!("serving gRPC on {addr}: {e}")));
    state.stop_all().await;
    let _ = reg.await;
    served
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_running_records_of_this_node_that_this_agent_does_not_run_died_with_the_previous() {
        let rec = |id: &str, node: &str, state: InstanceState, pid: u32| InstanceRecord {
            instance_id: id.into(),
            node_id: node.into(),
            state: state.into(),
            pid,
            ..Default::default()
        };
        let records = [
            rec("old", "n1", InstanceState::Running, 10),
            rec("mine", "n1", InstanceState::Running, 11),
            rec("elsewhere", "n2", InstanceState::Running, 12),
            rec("creating", "n1", InstanceState::Creating, 0),
            rec("failed", "n1", InstanceState::Failed, 13),
            rec("no-pid", "n1", InstanceState::Running, 0),
        ];
        let ours = ["mine".to_string()].into_iter().collect();
        let got: Vec<&str> = died_with_previous_agent(&records, "n1", &ours)
            .iter()
            .map(|r| r.instance_id.as_str())
            .collect();
        assert_eq!(got, ["old"]);
    }
}
