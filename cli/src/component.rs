//! `yr component NAME`: run one component in the foreground until SIGTERM
//! or SIGINT.
//!
//! Settings come in two steps. A component's `*Args` struct is what a user writes: its flags, and
//! the same fields under the same names (kebab-case) in a serde settings file, each default
//! given once (a `defaults` constant or a function beside the struct). `validate` turns it into
//! the runtime config its library takes (`yr_control::master::MasterConfig`, ...) and names the
//! field of anything it refuses. Once a component serves, it prints one `ready ...` line on
//! stdout (`ready address=ADDR`, the data worker `ready socket=PATH [transfer=ADDR]`): `yr start`,
//! the benches and the tests wait for that line instead of polling.

use crate::config::{self, ConfigError};
use crate::defaults::{self, name, port};
use crate::util::size_arg;
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use yr_datastore::config::{DEFAULT_HIGH_WATERMARK, DEFAULT_LOW_WATERMARK};
use yr_datastore::{Shutdown, WorkerSettings};

#[derive(Subcommand, Debug, PartialEq)]
pub enum ComponentCmd {
    /// The data worker: this node's shared-memory object store.
    #[command(name = name::DATA_WORKER)]
    DataWorker(DataWorkerArgs),
    /// The function master: topology, placement, instance lifecycle.
    #[command(name = name::FUNCTION_MASTER)]
    FunctionMaster(MasterArgs),
    /// The function scheduler: keeps stateless functions' pools between min and max.
    #[command(name = name::FUNCTION_SCHEDULER)]
    FunctionScheduler(SchedulerArgs),
    /// The function proxy: this node's door for calls to instances.
    #[command(name = name::FUNCTION_PROXY)]
    FunctionProxy(ProxyArgs),
    /// The function agent and runtime manager: this node's function processes.
    #[command(name = name::FUNCTION_AGENT)]
    FunctionAgent(AgentArgs),
    /// The collector: this node's metrics (Prometheus), usage history and instance logs.
    #[command(name = name::COLLECTOR)]
    Collector(CollectorArgs),
    /// The meta service: function management over REST.
    #[command(name = name::META_SERVICE)]
    MetaService(RestArgs),
    /// The frontend: function invocation over REST.
    #[command(name = name::FRONTEND)]
    Frontend(RestArgs),
    /// The dashboard: the cluster's web page and its JSON (master nodes).
    #[command(name = name::DASHBOARD)]
    Dashboard(DashboardArgs),
    /// The node supervisor that `yr start` leaves running: launches the node's components and
    /// restarts those that exit.
    /// (`yr` runs it as `yr::cluster::supervise::run`; this crate's modules do not import
    /// each other.)
    #[command(name = name::SUPERVISOR)]
    Supervisor(SuperviseArgs),
}

/// `yr component supervisor`'s flags.
#[derive(Args, Debug, PartialEq)]
pub struct SuperviseArgs {
    /// The session folder whose `supervisor.json` `yr start` wrote.
    #[arg(long)]
    pub session_dir: PathBuf,
}

#[derive(Args, Serialize, Deserialize, Debug, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RestArgs {
    /// Address to listen on.
    #[arg(long)]
    listen: SocketAddr,
    /// The function masters, comma-separated (meta service), or this node's proxy (frontend),
    /// host:port.
    #[arg(long)]
    upstream: String,
    /// This node's TLS credentials (ca.pem, node.pem, node.key, as `yr start` writes them):
    /// with them gRPC is mutual TLS under the cluster CA; without them it is plaintext and open.
    #[arg(long)]
    #[serde(default)]
    tls_dir: Option<PathBuf>,
    /// In a settings file, a `[rest]` table.
    #[command(flatten)]
    #[serde(default)]
    rest: RestFlags,
}

impl RestArgs {
    /// Checks what needs no I/O; the token file is read by [`RestFlags::config`].
    fn validate(self) -> Result<RestArgs, ConfigError> {
        Ok(RestArgs {
            upstream: config::required("upstream", self.upstream)?,
            ..self
        })
    }
}

/// What configures a REST service, whichever process hosts it.
#[derive(Args, Serialize, Deserialize, Debug, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RestFlags {
    /// File holding the access token every route but /healthz requires. Without it the
    /// service is open to anyone who can reach it.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Largest request body accepted.
    #[arg(long, value_parser = size_arg, default_value = defaults::MAX_BODY)]
    #[serde(default = "config::default_max_body", with = "config::size")]
    max_body: u64,
    /// This node's data worker socket (frontend only): serves the /datasystem/v1 object and
    /// KV routes. Without it those routes answer 503.
    #[arg(long)]
    data_socket: Option<PathBuf>,
    /// Serve HTTPS with this PEM certificate chain (with --rest-tls-key); default plain HTTP.
    #[arg(long, requires = "rest_tls_key")]
    #[serde(default)]
    rest_tls_cert: Option<PathBuf>,
    /// The PEM private key of --rest-tls-cert.
    #[arg(long, requires = "rest_tls_cert")]
    #[serde(default)]
    rest_tls_key: Option<PathBuf>,
}

impl Default for RestFlags {
    fn default() -> Self {
        RestFlags {
            token_file: None,
            max_body: config::default_max_body(),
            data_socket: None,
            rest_tls_cert: None,
            rest_tls_key: None,
        }
    }
}

/// How to reach an etcd that `yr start` did not start (`--etcd-endpoints`); in a settings
/// file, an `[etcd-auth]` table. Without them, an `https` etcd is reached with the node's
/// cluster credentials (`--tls-dir`), as the one `yr start` runs.
#[derive(Args, Serialize, Deserialize, Debug, PartialEq, Default, Clone)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct EtcdAuthFlags {
    /// The CA that signed etcd's server certificate (PEM): etcd is reached over TLS.
    #[arg(long)]
    #[serde(default)]
    pub etcd_ca: Option<PathBuf>,
    /// A client certificate for etcd (PEM, with --etcd-key and --etcd-ca).
    #[arg(long, requires_all = ["etcd_key", "etcd_ca"])]
    #[serde(default)]
    pub etcd_cert: Option<PathBuf>,
    /// The private key of --etcd-cert (PEM).
    #[arg(long, requires = "etcd_cert")]
    #[serde(default)]
    pub etcd_key: Option<PathBuf>,
    /// An etcd user (etcd's own authentication), with --etcd-password-file.
    #[arg(long, requires = "etcd_password_file")]
    #[serde(default)]
    pub etcd_user: Option<String>,
    /// The file holding --etcd-user's password (one line).
    #[arg(long, requires = "etcd_user")]
    #[serde(default)]
    pub etcd_password_file: Option<PathBuf>,
}

impl EtcdAuthFlags {
    /// Whether any is given.
    pub fn any(&self) -> bool {
        *self != EtcdAuthFlags::default()
    }

    /// The same flags, for a component's command line.
    pub fn args(&self) -> Vec<std::ffi::OsString> {
        let mut v = Vec::new();
        let mut flag = |name: &str, value: Option<std::ffi::OsString>| {
            if let Some(x) = value {
                v.push(name.into());
                v.push(x);
            }
        };
        flag("--etcd-ca", self.etcd_ca.clone().map(Into::into));
        flag("--etcd-cert", self.etcd_cert.clone().map(Into::into));
        flag("--etcd-key", self.etcd_key.clone().map(Into::into));
        flag("--etcd-user", self.etcd_user.clone().map(Into::into));
        flag(
            "--etcd-password-file",
            self.etcd_password_file.clone().map(Into::into),
        );
        v
    }

    /// Makes them this process's way to etcd (`yr_control::etcd::set_access`).
    fn install(&self) -> Result<()> {
        if !self.any() {
            return Ok(());
        }
        let read =
            |p: &PathBuf| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
        let tls = match &self.etcd_ca {
            Some(ca) => {
                let mut t = tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(read(ca)?));
                if let (Some(c), Some(k)) = (&self.etcd_cert, &self.etcd_key) {
                    t = t.identity(tonic::transport::Identity::from_pem(read(c)?, read(k)?));
                }
                Some(t)
            }
            None => None,
        };
        let user = match (&self.etcd_user, &self.etcd_password_file) {
            (Some(u), Some(p)) => {
                let password = String::from_utf8(read(p)?)
                    .with_context(|| format!("{} is not text", p.display()))?;
                Some((
                    u.clone(),
                    password.trim_end_matches(['\r', '\n']).to_string(),
                ))
            }
            _ => None,
        };
        yr_control::etcd::set_access(yr_control::etcd::EtcdAccess { tls, user });
        Ok(())
    }
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
        let tls = match (&self.rest_tls_cert, &self.rest_tls_key) {
            (Some(cert), Some(key)) => {
                let read = |p: &PathBuf| {
                    std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))
                };
                Some(yr_control::rest::https::server_config(
                    &read(cert)?,
                    &read(key)?,
                )?)
            }
            _ => None,
        };
        Ok(yr_control::rest::RestConfig {
            token,
            max_body: usize::try_from(self.max_body).unwrap_or(usize::MAX),
            data_socket: self.data_socket.clone(),
            tls,
            ..Default::default()
        })
    }
}

fn dashboard_listen() -> SocketAddr {
    defaults::local(port::DASHBOARD)
}

/// `yr component dashboard`'s settings.
#[derive(Args, Serialize, Deserialize, Debug, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct DashboardArgs {
    /// Address to listen on (port 0: any free port).
    #[arg(long, default_value_t = dashboard_listen())]
    #[serde(default = "dashboard_listen")]
    listen: SocketAddr,
    /// etcd endpoints, comma-separated (where the collectors register).
    #[arg(long)]
    etcd: String,
    /// The function masters' addresses (host:port, comma-separated: the active one is found).
    #[arg(long)]
    master: String,
    /// The cluster secret's file: the collectors' token is derived from it. Without it the
    /// collectors are asked without a token.
    #[arg(long)]
    #[serde(default)]
    cluster_secret: Option<PathBuf>,
    /// This node's TLS credentials (ca.pem, node.pem, node.key, as `yr start` writes them):
    /// with them gRPC is mutual TLS under the cluster CA; without them it is plaintext and open.
    #[arg(long)]
    #[serde(default)]
    tls_dir: Option<PathBuf>,
    /// How to reach an etcd `yr start` did not start; in a settings file, an `[etcd-auth]`
    /// table.
    #[command(flatten)]
    #[serde(default)]
    etcd_auth: EtcdAuthFlags,
    /// The REST token (`--token-file`) and HTTPS; in a settings file, a `[rest]` table.
    #[command(flatten)]
    #[serde(default)]
    rest: RestFlags,
}

impl DashboardArgs {
    fn validate(self) -> Result<yr_control::dashboard::DashboardConfig, ConfigError> {
        Ok(yr_control::dashboard::DashboardConfig {
            listen: self.listen,
            etcd_endpoints: config::endpoints("etcd", &self.etcd)?,
            master_address: config::required("master", self.master)?,
            token: None,
            collector_token: None,
            tls: None,
        })
    }
}

fn master_listen() -> SocketAddr {
    defaults::local(port::FUNCTION_MASTER)
}

fn proxy_listen() -> SocketAddr {
    defaults::local(port::FUNCTION_PROXY)
}

fn agent_listen() -> SocketAddr {
    defaults::local(port::FUNCTION_AGENT)
}

fn collector_listen() -> SocketAddr {
    defaults::local(port::COLLECTOR)
}

fn idle_timeout_ms() -> u64 {
    defaults::IDLE_TIMEOUT_MS
}

#[derive(Args, Serialize, Deserialize, Debug, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct MasterArgs {
    /// Address to listen on (port 0: any free port).
    #[arg(long, default_value_t = master_listen())]
    #[serde(default = "master_listen")]
    listen: SocketAddr,
    /// etcd endpoints, comma-separated.
    #[arg(long)]
    etcd: String,
    /// This node's TLS credentials (ca.pem, node.pem, node.key, as `yr start` writes them):
    /// with them gRPC is mutual TLS under the cluster CA; without them it is plaintext and open.
    #[arg(long)]
    #[serde(default)]
    tls_dir: Option<PathBuf>,
    /// How to reach an etcd `yr start` did not start; in a settings file, an `[etcd-auth]`
    /// table.
    #[command(flatten)]
    #[serde(default)]
    etcd_auth: EtcdAuthFlags,
    /// The cluster CA's key (with --join-token-file): the master signs joining nodes'
    /// certificates with it.
    #[arg(long, requires = "join_token_file")]
    #[serde(default)]
    ca_key: Option<PathBuf>,
    /// The file holding the cluster's join token (`<secret>.<CA hash>`).
    #[arg(long, requires_all = ["ca_key", "cluster_secret"])]
    #[serde(default)]
    join_token_file: Option<PathBuf>,
    /// The REST access token's file, handed to standby masters that join (with
    /// --join-token-file), so one token works on every master's REST services.
    #[arg(long, requires = "join_token_file")]
    #[serde(default)]
    rest_token_file: Option<PathBuf>,
    /// The cluster secret's file, handed to joining nodes (with --join-token-file).
    #[arg(long)]
    #[serde(default)]
    cluster_secret: Option<PathBuf>,
    /// This master's node ID, under which it registers among the masters (default: its
    /// address).
    #[arg(long)]
    #[serde(default)]
    node_id: Option<String>,
}

impl MasterArgs {
    fn validate(self) -> Result<yr_control::master::MasterConfig, ConfigError> {
        Ok(yr_control::master::MasterConfig {
            listen: self.listen,
            etcd_endpoints: config::endpoints("etcd", &self.etcd)?,
            advertise: String::new(),
            join: None,
            node_id: self.node_id.unwrap_or_default(),
        })
    }
}

#[derive(Args, Serialize, Deserialize, Debug, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SchedulerArgs {
    /// etcd endpoints, comma-separated.
    #[arg(long)]
    etcd: String,
    /// The function masters' addresses (host:port, comma-separated: the active one is found).
    #[arg(long)]
    master: String,
    /// Stop instances idle this long (milliseconds), down to each function's minimum.
    #[arg(long, default_value_t = idle_timeout_ms())]
    #[serde(default = "idle_timeout_ms")]
    idle_timeout_ms: u64,
    /// This node's TLS credentials (ca.pem, node.pem, node.key, as `yr start` writes them):
    /// with them gRPC is mutual TLS under the cluster CA; without them it is plaintext and open.
    #[arg(long)]
    #[serde(default)]
    tls_dir: Option<PathBuf>,
    /// How to reach an etcd `yr start` did not start; in a settings file, an `[etcd-auth]`
    /// table.
    #[command(flatten)]
    #[serde(default)]
    etcd_auth: EtcdAuthFlags,
}

impl SchedulerArgs {
    fn validate(self) -> Result<yr_control::scheduler::SchedulerConfig, ConfigError> {
        Ok(yr_control::scheduler::SchedulerConfig {
            etcd_endpoints: config::endpoints("etcd", &self.etcd)?,
            master_address: config::required("master", self.master)?,
            idle_timeout: std::time::Duration::from_millis(self.idle_timeout_ms),
        })
    }
}

#[derive(Args, Serialize, Deserialize, Debug, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ProxyArgs {
    /// Address to listen on (port 0: any free port).
    #[arg(long, default_value_t = proxy_listen())]
    #[serde(default = "proxy_listen")]
    listen: SocketAddr,
    /// etcd endpoints, comma-separated.
    #[arg(long)]
    etcd: String,
    /// The function masters' addresses (host:port, comma-separated: the active one is found).
    #[arg(long)]
    master: String,
    /// This node's ID.
    #[arg(long)]
    node_id: String,
    /// The Unix socket this node's function processes connect to (given to the agent as
    /// `--proxy-socket`).
    #[arg(long)]
    instance_socket: PathBuf,
    /// Where to write the node secret for this node's agent (its `--instance-secret-file`):
    /// the instance socket only serves processes the agent gave a secret derived from it.
    #[arg(long)]
    instance_secret_file: PathBuf,
    /// Also serve this node's REST frontend here, calling this proxy in-process (one network
    /// hop less than a separate `frontend` component).
    #[arg(long)]
    frontend_listen: Option<SocketAddr>,
    /// The frontend's settings (with --frontend-listen); in a settings file, a `[rest]` table.
    #[command(flatten)]
    #[serde(default)]
    rest: RestFlags,
    /// This node's TLS credentials (ca.pem, node.pem, node.key, as `yr start` writes them):
    /// with them gRPC is mutual TLS under the cluster CA; without them it is plaintext and open.
    #[arg(long)]
    #[serde(default)]
    tls_dir: Option<PathBuf>,
    /// How to reach an etcd `yr start` did not start; in a settings file, an `[etcd-auth]`
    /// table.
    #[command(flatten)]
    #[serde(default)]
    etcd_auth: EtcdAuthFlags,
}

impl ProxyArgs {
    /// The proxy's own config; the frontend it may host beside it is wired where the process
    /// starts both (the `FunctionProxy` arm of `run`).
    fn validate(self) -> Result<yr_control::proxy::ProxyConfig, ConfigError> {
        Ok(yr_control::proxy::ProxyConfig {
            listen: self.listen,
            etcd_endpoints: config::endpoints("etcd", &self.etcd)?,
            master_address: config::required("master", self.master)?,
            node_id: config::required("node-id", self.node_id)?,
            instance_socket: self.instance_socket,
            instance_secret_file: self.instance_secret_file,
        })
    }
}

#[derive(Args, Serialize, Deserialize, Debug, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct AgentArgs {
    /// Address to listen on (port 0: any free port).
    #[arg(long, default_value_t = agent_listen())]
    #[serde(default = "agent_listen")]
    listen: SocketAddr,
    /// etcd endpoints, comma-separated.
    #[arg(long)]
    etcd: String,
    /// The function masters' addresses (host:port, comma-separated: the active one is found).
    #[arg(long)]
    master: String,
    /// This node's ID.
    #[arg(long)]
    node_id: String,
    /// This node's proxy (host:port), given to function processes.
    #[arg(long)]
    proxy: String,
    /// The proxy's instance socket (its `--instance-socket`), given to function processes.
    #[arg(long)]
    proxy_socket: PathBuf,
    /// The node secret its proxy wrote (the proxy's `--instance-secret-file`); read and removed
    /// at start.
    #[arg(long)]
    instance_secret_file: PathBuf,
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
    #[arg(long = "label")]
    #[serde(default, rename = "label")]
    labels: Vec<String>,
    /// Custom resources, name=amount, repeatable.
    #[arg(long = "resource")]
    #[serde(default, rename = "resource")]
    resources: Vec<String>,
    /// The Python interpreter of python3.x functions' processes (default: `python3` on PATH);
    /// it must import the yr package.
    #[arg(long)]
    #[serde(default)]
    python: Option<String>,
    /// This node's TLS credentials (ca.pem, node.pem, node.key, as `yr start` writes them):
    /// with them gRPC is mutual TLS under the cluster CA; without them it is plaintext and open.
    #[arg(long)]
    #[serde(default)]
    tls_dir: Option<PathBuf>,
    /// How to reach an etcd `yr start` did not start; in a settings file, an `[etcd-auth]`
    /// table.
    #[command(flatten)]
    #[serde(default)]
    etcd_auth: EtcdAuthFlags,
}

impl AgentArgs {
    fn validate(self) -> Result<yr_control::agent::AgentConfig, ConfigError> {
        Ok(yr_control::agent::AgentConfig {
            listen: self.listen,
            etcd_endpoints: config::endpoints("etcd", &self.etcd)?,
            master_address: config::required("master", self.master)?,
            node_id: config::required("node-id", self.node_id)?,
            proxy_address: config::required("proxy", self.proxy)?,
            proxy_socket: self.proxy_socket,
            instance_secret_file: self.instance_secret_file,
            data_socket: self.data_socket,
            data_transfer: self.data_transfer.unwrap_or_default(),
            work_dir: self.work_dir,
            cpu_millis: self.cpu,
            memory_mib: self.memory,
            labels: config::key_values("label", &self.labels)?
                .into_iter()
                .collect(),
            custom: config::amounts("resource", &self.resources)?,
            python: match self.python {
                Some(p) => Some(config::required("python", p)?),
                None => None,
            },
        })
    }
}

#[derive(Args, Serialize, Deserialize, Debug, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct CollectorArgs {
    /// Address to listen on (port 0: any free port).
    #[arg(long, default_value_t = collector_listen())]
    #[serde(default = "collector_listen")]
    listen: SocketAddr,
    /// etcd endpoints, comma-separated.
    #[arg(long)]
    etcd: String,
    /// This node's ID.
    #[arg(long)]
    node_id: String,
    /// This node's data worker socket.
    #[arg(long)]
    data_socket: PathBuf,
    /// The agent's work folder (its `--work-dir`): instance logs are under `instances/<id>/`.
    #[arg(long)]
    work_dir: PathBuf,
    /// This node's session folder, whose `session.json` lists the components.
    #[arg(long)]
    #[serde(default)]
    session_dir: Option<PathBuf>,
    /// The cluster secret's file: the collector token is derived from it.
    #[arg(long)]
    cluster_secret: PathBuf,
    /// This node's proxy (host:port), asked for its call counters.
    #[arg(long)]
    #[serde(default)]
    proxy: Option<String>,
    /// The PEM certificate this node's REST services serve (their `--rest-tls-cert`): the
    /// collector reads their `/metrics` over HTTPS from a server presenting exactly it.
    #[arg(long)]
    #[serde(default)]
    rest_tls_cert: Option<PathBuf>,
    /// This node's TLS credentials (ca.pem, node.pem, node.key, as `yr start` writes them):
    /// with them gRPC is mutual TLS under the cluster CA; without them it is plaintext and open.
    #[arg(long)]
    #[serde(default)]
    tls_dir: Option<PathBuf>,
    /// How to reach an etcd `yr start` did not start; in a settings file, an `[etcd-auth]`
    /// table.
    #[command(flatten)]
    #[serde(default)]
    etcd_auth: EtcdAuthFlags,
}

impl CollectorArgs {
    /// The config, but for the token, which [`CollectorArgs::token`] reads.
    fn validate(
        self,
        token: String,
    ) -> Result<yr_control::collector::CollectorConfig, ConfigError> {
        Ok(yr_control::collector::CollectorConfig {
            listen: self.listen,
            etcd_endpoints: config::endpoints("etcd", &self.etcd)?,
            node_id: config::required("node-id", self.node_id)?,
            data_socket: self.data_socket,
            work_dir: self.work_dir,
            session_dir: self.session_dir,
            proxy_address: self.proxy.unwrap_or_default().trim().to_string(),
            rest_tls_cert: self.rest_tls_cert,
            token,
        })
    }

    fn token(&self) -> Result<String> {
        yr_control::collector::api::token_from_file(&self.cluster_secret).with_context(|| {
            format!(
                "cannot read the cluster secret {}",
                self.cluster_secret.display()
            )
        })
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

fn high_watermark() -> f64 {
    DEFAULT_HIGH_WATERMARK
}

fn low_watermark() -> f64 {
    DEFAULT_LOW_WATERMARK
}

#[derive(Args, Serialize, Deserialize, Debug, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct DataWorkerArgs {
    /// Unix socket clients connect to.
    #[arg(long)]
    socket: PathBuf,
    /// Shared-memory arena size (default: a third of the machine's memory).
    #[arg(long, value_parser = size_arg)]
    #[serde(default, with = "config::size::option")]
    shm_size: Option<u64>,
    /// Folder for spill files (created if missing).
    #[arg(long)]
    spill_dir: PathBuf,
    /// Most disk space spill files may use (default: unbounded).
    #[arg(long, value_parser = size_arg)]
    #[serde(default, with = "config::size::option")]
    spill_limit: Option<u64>,
    /// Allocate and map the whole arena at start.
    #[arg(long)]
    #[serde(default)]
    prefault: bool,
    /// Start spilling above this fraction of the arena.
    #[arg(long, default_value_t = high_watermark())]
    #[serde(default = "high_watermark")]
    high_watermark: f64,
    /// Spill down to this fraction of the arena.
    #[arg(long, default_value_t = low_watermark())]
    #[serde(default = "low_watermark")]
    low_watermark: f64,
    /// Address other nodes' data workers pull objects from (IPv4:port;
    /// port 0 picks a free one). Without it, objects stay on this node.
    #[arg(long)]
    transfer_address: Option<std::net::SocketAddrV4>,
    /// The cluster secret's file (hex, mode 0600), required with --transfer-address: peers
    /// prove they hold it before the transfer port serves them.
    #[arg(long)]
    cluster_secret: Option<PathBuf>,
    /// Encrypt the bytes of every transfer this worker takes part in (default: only the
    /// handshake is protected; the bytes travel in the clear at wire speed).
    #[arg(long)]
    #[serde(default)]
    encrypt_transfers: bool,
}

pub fn run(cmd: ComponentCmd) -> Result<()> {
    match cmd {
        ComponentCmd::Supervisor(_) => {
            anyhow::bail!("the supervisor is run by `yr::run`, not by `component::run`")
        }
        ComponentCmd::DataWorker(a) => data_worker(a),
        ComponentCmd::FunctionMaster(a) => {
            install_tls(a.tls_dir.as_deref())?;
            a.etcd_auth.install()?;
            let join = join_authority(&a)?;
            let mut config = a.validate()?;
            config.join = join;
            run_async("function master", |sd, ready| async move {
                Ok(yr_control::master::run(config, sd, ready).await?)
            })
        }
        ComponentCmd::MetaService(a) => {
            install_tls(a.tls_dir.as_deref())?;
            let a = a.validate()?;
            let config = a.rest.config(a.listen)?;
            run_async("meta service", |sd, ready| async move {
                Ok(yr_control::rest::run_meta(a.listen, &a.upstream, config, sd, ready).await?)
            })
        }
        ComponentCmd::Frontend(a) => {
            install_tls(a.tls_dir.as_deref())?;
            let a = a.validate()?;
            let config = a.rest.config(a.listen)?;
            run_async("frontend", |sd, ready| async move {
                Ok(
                    yr_control::rest::run_frontend(a.listen, &a.upstream, config, sd, ready)
                        .await?,
                )
            })
        }
        ComponentCmd::Dashboard(a) => {
            install_tls(a.tls_dir.as_deref())?;
            a.etcd_auth.install()?;
            let rest = a.rest.config(a.listen)?;
            let collector_token =
                match &a.cluster_secret {
                    Some(p) => Some(yr_control::collector::api::token_from_file(p).with_context(
                        || format!("cannot read the cluster secret {}", p.display()),
                    )?),
                    None => None,
                };
            let mut config = a.validate()?;
            config.token = rest.token;
            config.tls = rest.tls;
            config.collector_token = collector_token;
            run_async("dashboard", |sd, ready| async move {
                Ok(yr_control::dashboard::run(config, sd, ready).await?)
            })
        }
        ComponentCmd::FunctionScheduler(a) => {
            install_tls(a.tls_dir.as_deref())?;
            a.etcd_auth.install()?;
            let config = a.validate()?;
            run_async("function scheduler", |sd, ready| async move {
                // The scheduler serves nothing; its ready line carries no address.
                let none = std::net::SocketAddr::from(([0, 0, 0, 0], 0));
                Ok(yr_control::scheduler::run(config, sd, || ready(none)).await?)
            })
        }
        ComponentCmd::FunctionProxy(a) => {
            install_tls(a.tls_dir.as_deref())?;
            a.etcd_auth.install()?;
            let frontend = match a.frontend_listen {
                Some(l) => Some((l, a.rest.config(l)?)),
                None => None,
            };
            let config = a.validate()?;
            run_async("function proxy", |sd, ready| async move {
                let proxy = yr_control::proxy::Proxy::bind(config).await?;
                if let Some((listen, rest)) = frontend {
                    // This node's frontend calls the proxy in-process, through its Invoker.
                    yr_control::rest::BoundFrontend::bind(listen, rest)
                        .await?
                        .spawn(proxy.invoker().into(), sd.clone());
                }
                Ok(proxy.serve(sd, ready).await?)
            })
        }
        ComponentCmd::FunctionAgent(a) => {
            install_tls(a.tls_dir.as_deref())?;
            a.etcd_auth.install()?;
            let config = a.validate()?;
            run_async("function agent", |sd, ready| async move {
                Ok(yr_control::agent::run(config, sd, ready).await?)
            })
        }
        ComponentCmd::Collector(a) => {
            install_tls(a.tls_dir.as_deref())?;
            a.etcd_auth.install()?;
            let token = a.token()?;
            let config = a.validate(token)?;
            run_async("collector", |sd, ready| async move {
                Ok(yr_control::collector::run(config, sd, ready).await?)
            })
        }
    }
}

/// Installs this process's node credentials (see `yr_proto::tls`), or warns that its gRPC is
/// open without them.
fn install_tls(dir: Option<&std::path::Path>) -> Result<()> {
    match dir {
        Some(d) => {
            yr_proto::tls::install(&yr_proto::tls::NodeTls::in_dir(d))
                .map_err(anyhow::Error::msg)?;
        }
        None => eprintln!(
            "warning: no --tls-dir: this component's gRPC is plaintext and open to anyone who \
             can reach it"
        ),
    }
    Ok(())
}

/// The master's CA and join token, when it was given them.
fn join_authority(a: &MasterArgs) -> Result<Option<yr_control::master::JoinAuthority>> {
    let (Some(key), Some(token), Some(dir), Some(secret)) =
        (&a.ca_key, &a.join_token_file, &a.tls_dir, &a.cluster_secret)
    else {
        return Ok(None);
    };
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
    };
    Ok(Some(yr_control::master::JoinAuthority {
        ca_pem: read(&yr_proto::tls::NodeTls::in_dir(dir).ca)?,
        ca_key_pem: read(key)?,
        token: yr_control::pki::JoinToken::parse(&read(token)?)?,
        cluster_secret: read(secret)?,
        rest_token: match &a.rest_token_file {
            Some(p) => Some(yr_control::rest::read_token(p)?),
            None => None,
        },
    }))
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
        cluster_secret: a.cluster_secret.clone(),
        encrypt_transfers: a.encrypt_transfers,
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Yr {
        #[command(subcommand)]
        cmd: ComponentCmd,
    }

    fn flags(args: &[&str]) -> ComponentCmd {
        match Yr::try_parse_from(std::iter::once("yr").chain(args.iter().copied())) {
            Ok(y) => y.cmd,
            Err(e) => panic!("{args:?}: {e}"),
        }
    }

    fn file<T: serde::de::DeserializeOwned>(text: &str) -> T {
        match toml::from_str(text) {
            Ok(t) => t,
            Err(e) => panic!("{text}: {e}"),
        }
    }

    /// A settings file with only the required fields means what a command line with only the
    /// required flags means: both take their defaults from the same place.
    #[test]
    fn files_and_flags_share_their_defaults() {
        let cases = [
            (
                flags(&["data-worker", "--socket", "/s", "--spill-dir", "/sp"]),
                ComponentCmd::DataWorker(file("socket = '/s'\nspill-dir = '/sp'")),
            ),
            (
                flags(&["function-master", "--etcd", "http://e:1"]),
                ComponentCmd::FunctionMaster(file("etcd = 'http://e:1'")),
            ),
            (
                flags(&["function-scheduler", "--etcd", "e", "--master", "m"]),
                ComponentCmd::FunctionScheduler(file("etcd = 'e'\nmaster = 'm'")),
            ),
            (
                flags(&[
                    "function-proxy",
                    "--etcd",
                    "e",
                    "--master",
                    "m",
                    "--node-id",
                    "n",
                    "--instance-socket",
                    "/i",
                    "--instance-secret-file",
                    "/k",
                ]),
                ComponentCmd::FunctionProxy(file(
                    "etcd = 'e'\nmaster = 'm'\nnode-id = 'n'\ninstance-socket = '/i'\n\
                     instance-secret-file = '/k'",
                )),
            ),
            (
                flags(&[
                    "function-agent",
                    "--etcd",
                    "e",
                    "--master",
                    "m",
                    "--node-id",
                    "n",
                    "--proxy",
                    "p",
                    "--proxy-socket",
                    "/ps",
                    "--instance-secret-file",
                    "/k",
                    "--data-socket",
                    "/ds",
                    "--work-dir",
                    "/w",
                ]),
                ComponentCmd::FunctionAgent(file(
                    "etcd = 'e'\nmaster = 'm'\nnode-id = 'n'\nproxy = 'p'\nproxy-socket = '/ps'\n\
                     instance-secret-file = '/k'\ndata-socket = '/ds'\nwork-dir = '/w'",
                )),
            ),
            (
                flags(&[
                    "collector",
                    "--etcd",
                    "e",
                    "--node-id",
                    "n",
                    "--data-socket",
                    "/ds",
                    "--work-dir",
                    "/w",
                    "--cluster-secret",
                    "/cs",
                ]),
                ComponentCmd::Collector(file(
                    "etcd = 'e'\nnode-id = 'n'\ndata-socket = '/ds'\nwork-dir = '/w'\n\
                     cluster-secret = '/cs'",
                )),
            ),
            (
                flags(&["meta-service", "--listen", "127.0.0.1:1", "--upstream", "u"]),
                ComponentCmd::MetaService(file("listen = '127.0.0.1:1'\nupstream = 'u'")),
            ),
            (
                flags(&["frontend", "--listen", "127.0.0.1:1", "--upstream", "u"]),
                ComponentCmd::Frontend(file("listen = '127.0.0.1:1'\nupstream = 'u'")),
            ),
            (
                flags(&["dashboard", "--etcd", "e", "--master", "m"]),
                ComponentCmd::Dashboard(file("etcd = 'e'\nmaster = 'm'")),
            ),
        ];
        for (from_flags, from_file) in cases {
            assert_eq!(from_flags, from_file);
        }
    }

    #[test]
    fn files_name_settings_as_the_flags_do() {
        let from_flags = flags(&[
            "function-proxy",
            "--etcd",
            "e",
            "--master",
            "m",
            "--node-id",
            "n",
            "--instance-socket",
            "/i",
            "--instance-secret-file",
            "/k",
            "--frontend-listen",
            "127.0.0.1:9",
            "--max-body",
            "1KiB",
        ]);
        let from_file = ComponentCmd::FunctionProxy(file(
            "etcd = 'e'\nmaster = 'm'\nnode-id = 'n'\ninstance-socket = '/i'\n\
             instance-secret-file = '/k'\nfrontend-listen = '127.0.0.1:9'\n[rest]\n\
             max-body = '1KiB'",
        ));
        assert_eq!(from_flags, from_file);
        let ComponentCmd::FunctionAgent(a) = flags(&[
            "function-agent",
            "--etcd",
            "e",
            "--master",
            "m",
            "--node-id",
            "n",
            "--proxy",
            "p",
            "--proxy-socket",
            "/ps",
            "--instance-secret-file",
            "/k",
            "--data-socket",
            "/ds",
            "--work-dir",
            "/w",
            "--label",
            "zone=a",
            "--resource",
            "gpu=2",
            "--python",
            "/venv/bin/python",
        ]) else {
            panic!("not the agent");
        };
        let f: AgentArgs = file(
            "etcd = 'e'\nmaster = 'm'\nnode-id = 'n'\nproxy = 'p'\nproxy-socket = '/ps'\n\
             instance-secret-file = '/k'\ndata-socket = '/ds'\nwork-dir = '/w'\nlabel = ['zone=a']\nresource = ['gpu=2']\n\
             python = '/venv/bin/python'",
        );
        assert_eq!(a, f);
        assert!(
            toml::from_str::<MasterArgs>("etcd = 'e'\nlisten-on = '127.0.0.1:1'").is_err(),
            "an unknown key is refused"
        );
    }

    #[test]
    fn the_standard_ports_are_the_defaults() {
        let ComponentCmd::FunctionMaster(m) = flags(&["function-master", "--etcd", "e"]) else {
            panic!("not the master");
        };
        assert_eq!(m.listen.to_string(), "127.0.0.1:22770");
        let config = m.validate().expect("valid");
        assert_eq!(config.etcd_endpoints, ["e"]);
        assert_eq!(proxy_listen().port(), 22772);
        assert_eq!(dashboard_listen().port(), 9080);
        assert_eq!(agent_listen().port(), 58866);
        assert_eq!(collector_listen().port(), 9082);
    }

    fn agent(extra: &[&str]) -> AgentArgs {
        let mut args = vec![
            "function-agent",
            "--etcd",
            "http://e:1,http://e:2",
            "--master",
            "m:1",
            "--node-id",
            "n",
            "--proxy",
            "p:1",
            "--proxy-socket",
            "/ps",
            "--instance-secret-file",
            "/k",
            "--data-socket",
            "/ds",
            "--work-dir",
            "/w",
        ];
        args.extend_from_slice(extra);
        match flags(&args) {
            ComponentCmd::FunctionAgent(a) => a,
            _ => panic!("not the agent"),
        }
    }

    #[test]
    fn validation_names_the_field_it_refuses() {
        let c = agent(&["--label", "zone=a", "--resource", "gpu=1.5"])
            .validate()
            .expect("valid");
        assert_eq!(c.etcd_endpoints.len(), 2);
        assert_eq!(c.labels.get("zone").map(String::as_str), Some("a"));
        assert_eq!(c.custom.get("gpu"), Some(&1.5));
        assert_eq!(c.python, None);
        let c = agent(&["--python", "/venv/bin/python"])
            .validate()
            .expect("valid");
        assert_eq!(c.python.as_deref(), Some("/venv/bin/python"));
        let refused = |a: AgentArgs| a.validate().err().map(|e| e.field());
        assert_eq!(refused(agent(&["--python", " "])), Some("python"));
        assert_eq!(refused(agent(&["--label", "zone"])), Some("label"));
        assert_eq!(
            refused(agent(&["--resource", "gpu=lots"])),
            Some("resource")
        );
        let mut nameless = agent(&[]);
        nameless.node_id.clear();
        assert_eq!(refused(nameless), Some("node-id"));
        let e = agent(&["--resource", "gpu=lots"]).validate().err();
        assert_eq!(
            e.map(|e| e.to_string()).as_deref(),
            Some("--resource \"gpu=lots\": \"lots\" is not a number")
        );

        let ComponentCmd::FunctionMaster(m) = flags(&["function-master", "--etcd", " , "]) else {
            panic!("not the master");
        };
        assert_eq!(m.validate().err().map(|e| e.field()), Some("etcd"));
        let ComponentCmd::FunctionScheduler(s) =
            flags(&["function-scheduler", "--etcd", "e", "--master", ""])
        else {
            panic!("not the scheduler");
        };
        assert_eq!(s.validate().err().map(|e| e.field()), Some("master"));
        let ComponentCmd::Frontend(f) =
            flags(&["frontend", "--listen", "127.0.0.1:1", "--upstream", " "])
        else {
            panic!("not the frontend");
        };
        assert_eq!(f.validate().err().map(|e| e.field()), Some("upstream"));
    }

    #[test]
    fn the_proxy_config_leaves_the_frontend_to_the_host() {
        let ComponentCmd::FunctionProxy(p) = flags(&[
            "function-proxy",
            "--etcd",
            "e",
            "--master",
            "m",
            "--node-id",
            "n",
            "--instance-socket",
            "/i",
            "--instance-secret-file",
            "/k",
            "--listen",
            "127.0.0.1:5",
        ]) else {
            panic!("not the proxy");
        };
        let c = p.validate().expect("valid");
        assert_eq!(c.listen.port(), 5);
        assert_eq!((c.master_address.as_str(), c.node_id.as_str()), ("m", "n"));
    }
}
