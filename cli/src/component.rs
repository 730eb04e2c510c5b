//! `yr component NAME`: run one component in the foreground until SIGTERM
//! or SIGINT.

use crate::util::size_arg;
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use std::io::Write;
use std::path::PathBuf;
use yr_datastore::config::{DEFAULT_HIGH_WATERMARK, DEFAULT_LOW_WATERMARK};
use yr_datastore::{Shutdown, WorkerSettings};

#[derive(Subcommand)]
pub enum ComponentCmd {
    /// The data worker: this node's shared-memory object store.
    DataWorker(DataWorkerArgs),
    /// The function master: topology, placement, instance lifecycle.
    FunctionMaster(MasterArgs),
    /// The function scheduler: keeps stateless functions' pools between min and max.
    FunctionScheduler(SchedulerArgs),
    /// The function proxy: this node's door for calls to instances.
    FunctionProxy(ProxyArgs),
    /// The function agent and runtime manager: this node's function processes.
    FunctionAgent(AgentArgs),
    /// The meta service: function management over REST.
    MetaService(RestArgs),
    /// The frontend: function invocation over REST.
    Frontend(RestArgs),
}

#[derive(Args)]
pub struct RestArgs {
    /// Address to listen on.
    #[arg(long)]
    listen: std::net::SocketAddr,
    /// The function master (meta service) or this node's proxy (frontend), host:port.
    #[arg(long)]
    upstream: String,
    #[command(flatten)]
    rest: RestFlags,
}

/// What configures a REST service, whichever process hosts it.
#[derive(Args)]
pub struct RestFlags {
    /// File holding the access token every route but /healthz requires. Without it the
    /// service is open to anyone who can reach it.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Largest request body accepted.
    #[arg(long, value_parser = size_arg, default_value = "64MiB")]
    max_body: u64,
    /// This node's data worker socket (frontend only): serves the /datasystem/v1 object and
    /// KV routes. Without it those routes answer 503.
    #[arg(long)]
    data_socket: Option<PathBuf>,
}

impl RestFlags {
    fn config(&self, listen: std::net::SocketAddr) -> Result<yr_control::rest::RestConfig> {
        let token = match &self.token_file {
            Some(p) => Some(yr_control::rest::read_token(p)?),
            None => {
                eprintln!(
                    "warning: no --token-file: every REST route is open to anyone who can reach {listen}"
                );
                None
            }
        };
        Ok(yr_control::rest::RestConfig {
            token,
            max_body: usize::try_from(self.max_body).unwrap_or(usize::MAX),
            data_socket: self.data_socket.clone(),
            ..Default::default()
        })
    }
}

fn endpoints(s: &str) -> Vec<String> {
    s.split(',')
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty())
        .collect()
}

#[derive(Args)]
pub struct MasterArgs {
    /// Address to listen on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:22770")]
    listen: std::net::SocketAddr,
    /// etcd endpoints, comma-separated.
    #[arg(long)]
    etcd: String,
}

#[derive(Args)]
pub struct SchedulerArgs {
    #[arg(long)]
    etcd: String,
    #[arg(long)]
    master: String,
    /// Stop instances idle this long (milliseconds), down to each function's minimum.
    #[arg(long, default_value_t = 60_000)]
    idle_timeout_ms: u64,
}

#[derive(Args)]
pub struct ProxyArgs {
    #[arg(long, default_value = "127.0.0.1:22772")]
    listen: std::net::SocketAddr,
    #[arg(long)]
    etcd: String,
    /// The function master's address (host:port).
    #[arg(long)]
    master: String,
    /// This node's ID.
    #[arg(long)]
    node_id: String,
    /// The Unix socket this node's function processes connect to (given to the agent as
    /// `--proxy-socket`).
    #[arg(long)]
    instance_socket: PathBuf,
    /// Also serve this node's REST frontend here, calling this proxy in-process (one network
    /// hop less than a separate `frontend` component).
    #[arg(long)]
    frontend_listen: Option<std::net::SocketAddr>,
    #[command(flatten)]
    rest: RestFlags,
}

#[derive(Args)]
pub struct AgentArgs {
    #[arg(long, default_value = "127.0.0.1:58866")]
    listen: std::net::SocketAddr,
    #[arg(long)]
    etcd: String,
    #[arg(long)]
    master: String,
    #[arg(long)]
    node_id: String,
    /// This node's proxy (host:port), given to function processes.
    #[arg(long)]
    proxy: String,
    /// The proxy's instance socket (its `--instance-socket`), given to function processes.
    #[arg(long)]
    proxy_socket: PathBuf,
    /// This node's data worker socket, given to function processes.
    #[arg(long)]
    data_socket: PathBuf,
    /// This node's data worker transfer address, published with the node so
    /// drivers can send calls to where their data is.
    #[arg(long)]
    data_transfer: Option<String>,
    /// Folder for instances' code and logs.
    #[arg(long)]
    work_dir: PathBuf,
    /// CPU this node offers, in millicores (default: all cores).
    #[arg(long)]
    cpu: Option<u64>,
    /// Memory this node offers, in MiB (default: all memory).
    #[arg(long)]
    memory: Option<u64>,
    /// Node labels, key=value, repeatable.
    #[arg(long = "label", value_parser = key_value)]
    labels: Vec<(String, String)>,
    /// Custom resources, name=amount, repeatable.
    #[arg(long = "resource", value_parser = key_value)]
    resources: Vec<(String, String)>,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not key=value")),
    }
}

/// Runs an async component on a tokio runtime until SIGTERM/SIGINT, printing `ready ADDR` once
/// it serves.
/// Worker threads of a component's runtime: `$YR_COMPONENT_THREADS`, else half the cores (at
/// least one). A node's components share it with its function processes, and fewer threads
/// mean fewer cross-thread wake-ups: on 2 cores the function proxy served 27–33k REST calls/s
/// with one thread against 23–24k with two (`yr bench rest`).
fn component_threads() -> Result<usize> {
    if let Some(v) = std::env::var_os("YR_COMPONENT_THREADS") {
        return v
            .to_str()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .filter(|&n| n > 0)
            .ok_or_else(|| {
                anyhow::anyhow!("YR_COMPONENT_THREADS={v:?} is not a positive number of threads")
            });
    }
    Ok(std::thread::available_parallelism()
        .map(|n| n.get() / 2)
        .unwrap_or(1)
        .max(1))
}

fn run_async<F, Fut>(name: &str, f: F) -> Result<()>
where
    F: FnOnce(yr_control::Shutdown, Box<dyn FnOnce(std::net::SocketAddr) + Send>) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let threads = component_threads()?;
    // One thread: tokio's single-threaded scheduler, without the work-stealing one's
    // bookkeeping (this thread runs every task; blocking work still goes to the blocking pool).
    let rt = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    let shutdown = yr_control::Shutdown::new();
    rt.block_on(async {
        let s = shutdown.clone();
        tokio::spawn(async move {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::error!("cannot install a SIGTERM handler: {e}");
                        return;
                    }
                };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            s.trigger();
        });
        let ready: Box<dyn FnOnce(std::net::SocketAddr) + Send> = Box::new(|addr| {
            let mut out = std::io::stdout();
            let _ = writeln!(out, "ready address={addr}");
            let _ = out.flush();
        });
        f(shutdown, ready).await.with_context(|| name.to_string())
    })
}

#[derive(Args)]
pub struct DataWorkerArgs {
    /// Unix socket clients connect to.
    #[arg(long)]
    socket: PathBuf,
    /// Shared-memory arena size (default: a third of the machine's memory).
    #[arg(long, value_parser = size_arg)]
    shm_size: Option<u64>,
    /// Folder for spill files (created if missing).
    #[arg(long)]
    spill_dir: PathBuf,
    /// Most disk space spill files may use (default: unbounded).
    #[arg(long, value_parser = size_arg)]
    spill_limit: Option<u64>,
    /// Allocate and map the whole arena at start.
    #[arg(long)]
    prefault: bool,
    /// Start spilling above this fraction of the arena.
    #[arg(long, default_value_t = DEFAULT_HIGH_WATERMARK)]
    high_watermark: f64,
    /// Spill down to this fraction of the arena.
    #[arg(long, default_value_t = DEFAULT_LOW_WATERMARK)]
    low_watermark: f64,
    /// Address other nodes' data workers pull objects from (IPv4:port;
    /// port 0 picks a free one). Without it, objects stay on this node.
    #[arg(long)]
    transfer_address: Option<std::net::SocketAddrV4>,
}

pub fn run(cmd: ComponentCmd) -> Result<()> {
    match cmd {
        ComponentCmd::DataWorker(a) => data_worker(a),
        ComponentCmd::FunctionMaster(a) => run_async("function master", |sd, ready| async move {
            let config = yr_control::master::MasterConfig {
                listen: a.listen,
                etcd_endpoints: endpoints(&a.etcd),
                advertise: String::new(),
            };
            yr_control::master::run(config, sd, ready).await
        }),
        ComponentCmd::MetaService(a) => {
            let config = a.rest.config(a.listen)?;
            run_async("meta service", |sd, ready| async move {
                yr_control::rest::run_meta(a.listen, &a.upstream, config, sd, ready).await
            })
        }
        ComponentCmd::Frontend(a) => {
            let config = a.rest.config(a.listen)?;
            run_async("frontend", |sd, ready| async move {
                yr_control::rest::run_frontend(a.listen, &a.upstream, config, sd, ready).await
            })
        }
        ComponentCmd::FunctionScheduler(a) => {
            run_async("function scheduler", |sd, ready| async move {
                let config = yr_control::scheduler::SchedulerConfig {
                    etcd_endpoints: endpoints(&a.etcd),
                    master_address: a.master,
                    idle_timeout: std::time::Duration::from_millis(a.idle_timeout_ms),
                };
                // The scheduler serves nothing; its ready line carries no address.
                let none = std::net::SocketAddr::from(([0, 0, 0, 0], 0));
                yr_control::scheduler::run(config, sd, || ready(none)).await
            })
        }
        ComponentCmd::FunctionProxy(a) => {
            let frontend = match a.frontend_listen {
                Some(l) => Some((l, a.rest.config(l)?)),
                None => None,
            };
            run_async("function proxy", |sd, ready| async move {
                let config = yr_control::proxy::ProxyConfig {
                    listen: a.listen,
                    etcd_endpoints: endpoints(&a.etcd),
                    master_address: a.master,
                    node_id: a.node_id,
                    instance_socket: a.instance_socket,
                    frontend,
                };
                yr_control::proxy::run(config, sd, ready).await
            })
        }
        ComponentCmd::FunctionAgent(a) => run_async("function agent", |sd, ready| async move {
            let mut custom = std::collections::HashMap::new();
            for (k, v) in a.resources {
                let n: f64 = v
                    .parse()
                    .map_err(|_| anyhow::anyhow!("--resource {k}={v}: {v:?} is not a number"))?;
                custom.insert(k, n);
            }
            let config = yr_control::agent::AgentConfig {
                listen: a.listen,
                etcd_endpoints: endpoints(&a.etcd),
                master_address: a.master,
                node_id: a.node_id,
                proxy_address: a.proxy,
                proxy_socket: a.proxy_socket,
                data_socket: a.data_socket,
                data_transfer: a.data_transfer.unwrap_or_default(),
                work_dir: a.work_dir,
                cpu_millis: a.cpu,
                memory_mib: a.memory,
                labels: a.labels.into_iter().collect(),
                custom,
            };
            yr_control::agent::run(config, sd, ready).await
        }),
    }
}

fn data_worker(a: DataWorkerArgs) -> Result<()> {
    // The flags are the settings; their rules (watermarks, sizes) live in yr-datastore.
    let config = WorkerSettings {
        socket: a.socket.clone(),
        shm_size: a.shm_size,
        spill_dir: Some(a.spill_dir.clone()),
        spill_limit: a.spill_limit,
        prefault: a.prefault,
        high_watermark: a.high_watermark,
        low_watermark: a.low_watermark,
        transfer_address: a.transfer_address,
    }
    .validate()?;
    let shutdown = Shutdown::new()?;
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .context("cannot install signal handlers")?;
    {
        let shutdown = shutdown.clone();
        std::thread::spawn(move || {
            if signals.forever().next().is_some() {
                shutdown.trigger();
            }
        });
    }
    let socket = a.socket.clone();
    yr_datastore::server::run(config, shutdown, |w| {
        // Parents (yr start, yr bench, tests) wait for this line instead of
        // polling the socket.
        let mut out = std::io::stdout();
        match w.transfer_addr() {
            Some(t) => writeln!(out, "ready socket={} transfer={t}", socket.display())?,
            None => writeln!(out, "ready socket={}", socket.display())?,
        }
        out.flush()
    })
    .with_context(|| format!("data worker on {}", a.socket.display()))?;
    Ok(())
}
