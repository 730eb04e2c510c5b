//! `yr start` as data: from the parsed flags to a [`NodePlan`] (the node's role, its addresses,
//! and every component to launch with its command line), touching nothing. What needs the
//! system (free ports, the `etcd` program, the executable's path, a worker's etcd endpoints from
//! its master) is resolved by the executor beforehand and comes in as plain [`Inputs`].
//!
//! Invariants: components are listed in launch order (etcd before the master, the master before
//! its clients, the proxy before the agent that names it); every listener gets a concrete port,
//! so each address is known before its component starts, and a component's flags name only
//! addresses of this plan (the executor checks that each announces the address planned for it).
//! A master plan has etcd (unless given `--etcd-endpoints`), the function master and scheduler
//! the meta service and the dashboard, and hosts the REST frontend in its proxy; every plan has
//! the data worker, the function proxy, the function agent and the collector.

use std::ffi::{OsStr, OsString};
use std::net::Ipv4Addr;
use std::path::PathBuf;

use yr_runtime::session::{ComponentInfo, Session};

pub use super::node_config::{PortMode, StartArgs, StartConfig};
use crate::config::{self, ConfigError};
use crate::defaults::{name, port};

/// What a node is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Starts a cluster: etcd (or uses one), the function master and scheduler, the REST
    /// services, and worker components.
    Master,
    /// Joins a master's cluster with worker components only.
    Worker,
}

impl Role {
    /// Its name in `session.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Master => "master",
            Role::Worker => "worker",
        }
    }
}

/// The port of each listener of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ports {
    pub etcd_client: u16,
    pub etcd_peer: u16,
    pub function_master: u16,
    pub meta_service: u16,
    pub data_transfer: u16,
    pub function_proxy: u16,
    pub frontend: u16,
    pub function_agent: u16,
    pub collector: u16,
    pub dashboard: u16,
}

impl Ports {
    /// How many listeners a node may have.
    pub const COUNT: usize = 10;

    /// The standard ports.
    pub const STANDARD: Ports = Ports {
        etcd_client: port::ETCD_CLIENT,
        etcd_peer: port::ETCD_PEER,
        function_master: port::FUNCTION_MASTER,
        meta_service: port::META_SERVICE,
        data_transfer: port::DATA_TRANSFER,
        function_proxy: port::FUNCTION_PROXY,
        frontend: port::FRONTEND,
        function_agent: port::FUNCTION_AGENT,
        collector: port::COLLECTOR,
        dashboard: port::DASHBOARD,
    };

    /// Every port, in field order (the order [`Ports::from_free`] takes them in).
    pub fn all(&self) -> [u16; Ports::COUNT] {
        [
            self.etcd_client,
            self.etcd_peer,
            self.function_master,
            self.meta_service,
            self.data_transfer,
            self.function_proxy,
            self.frontend,
            self.function_agent,
            self.collector,
            self.dashboard,
        ]
    }

    /// Ports from a list of distinct free ones, in field order.
    pub fn from_free(p: [u16; Ports::COUNT]) -> Ports {
        let [etcd_client, etcd_peer, function_master, meta_service, data_transfer, function_proxy, frontend, function_agent, collector, dashboard] =
            p;
        Ports {
            etcd_client,
            etcd_peer,
            function_master,
            meta_service,
            data_transfer,
            function_proxy,
            frontend,
            function_agent,
            collector,
            dashboard,
        }
    }
}

/// What the flags alone decide, checked before anything touches the system.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checked {
    pub role: Role,
    pub ports: PortMode,
}

/// Checks the settings on their own: a role (a worker, the default, needs its master's address
/// and the join token), a bind address that names a host, and etcd credentials only for an
/// etcd given by its endpoints. (Keys and values were checked by [`StartArgs::resolve`].)
pub fn check(a: &StartConfig) -> Result<Checked, ConfigError> {
    let role = if a.master { Role::Master } else { Role::Worker };
    if role == Role::Worker {
        if a.master_address
            .as_deref()
            .unwrap_or_default()
            .trim()
            .is_empty()
        {
            return Err(ConfigError::Missing {
                field: "master-address",
                message: "a worker node (the default role) needs --master_address \
                          http://IP:PORT of the cluster's master and its --join_token; say \
                          --master to start a new cluster"
                    .into(),
            });
        }
        if a.join_token
            .as_deref()
            .unwrap_or_default()
            .trim()
            .is_empty()
        {
            return Err(ConfigError::Missing {
                field: "join-token",
                message: "a worker needs --join-token TOKEN: `yr start --master` printed it, and \
                          `yr token --join` on the master prints it again"
                    .into(),
            });
        }
    }
    if role == Role::Master
        && !a
            .master_address
            .as_deref()
            .unwrap_or_default()
            .trim()
            .is_empty()
        && a.join_token
            .as_deref()
            .unwrap_or_default()
            .trim()
            .is_empty()
    {
        return Err(ConfigError::Missing {
            field: "join-token",
            message: "a standby master (--master with --master_address) needs --join-token                       TOKEN: `yr token --join` on the active master prints it"
                .into(),
        });
    }
    if a.bind.is_unspecified() {
        return Err(ConfigError::invalid(
            "bind",
            a.bind.to_string(),
            "names no host: other nodes need an address to reach this one at (object IDs and \
             node records carry it); give this host's address",
        ));
    }
    if a.etcd_endpoints.is_none() && role == Role::Master && a.etcd_auth.any() {
        return Err(ConfigError::invalid(
            "etcd-ca",
            "",
            "--etcd-ca, --etcd-cert, --etcd-key and --etcd-user are for an etcd given with \
             --etcd-endpoints; the etcd yr starts uses the cluster's own certificates",
        ));
    }
    Ok(Checked {
        role,
        ports: a.ports,
    })
}

/// The folder of a node's TLS credentials inside its session folder.
pub const TLS_DIR: &str = "tls";

/// The cluster secret's file inside a session folder (made by a master, received by a worker).
pub const CLUSTER_SECRET_FILE: &str = "cluster-secret";

/// The master's address without openYuanrong's `http://` (or an `https://`) in front.
pub fn master_host_port(address: &str) -> &str {
    let a = address.trim();
    let a = a
        .strip_prefix("http://")
        .or_else(|| a.strip_prefix("https://"))
        .unwrap_or(a);
    a.trim_end_matches('/')
}

/// This node's ID: the host name and 24 bits mixed from the start time and the pid.
pub fn node_id(hostname: &str, now_ms: u64, pid: u32) -> String {
    format!(
        "{hostname}-{:06x}",
        (now_ms ^ (u64::from(pid) * 7919)) & 0xff_ffff
    )
}

/// What the plan needs from the system, resolved by the executor.
#[derive(Clone, Debug)]
pub struct Inputs {
    /// The `yr` executable the components run from.
    pub exe: PathBuf,
    /// The claimed session folder (canonical).
    pub dir: PathBuf,
    pub node_id: String,
    pub ports: Ports,
    /// The `etcd` program on `PATH`, if any (a master node without --etcd-endpoints starts it).
    pub etcd_program: Option<PathBuf>,
    /// The etcd endpoints a worker's master reported; for a standby master, those of the
    /// etcd members already running.
    pub master_etcd: Vec<String>,
    /// A standby master's etcd member, added to the cluster's etcd before it starts.
    pub etcd_member: Option<EtcdMember>,
    /// `$YR_PYTHON` of the process running `yr start` (or the environment yr is installed in):
    /// the interpreter when `--python` is not
    /// given.
    pub python_env: Option<String>,
}

/// A new member of the cluster's etcd (a standby master's), as `MemberAdd` admitted it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdMember {
    /// Its member ID (to remove it again if the node fails to start).
    pub id: u64,
    /// The `--initial-cluster` list, `name=peer-url` for every member including this one.
    pub initial_cluster: String,
}

/// The etcd member name of a master node: the first master's is `yr`, a standby's its node
/// ID (unique in the cluster).
pub fn etcd_member_name(node_id: &str, joining: bool) -> String {
    if joining {
        node_id.to_string()
    } else {
        "yr".into()
    }
}

/// How the executor knows a launched component is ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ready {
    /// It prints a `ready` line on stdout, announcing the planned address (if it has one).
    Line,
    /// etcd prints no ready line: it is ready once its client endpoint (its address) answers.
    Endpoint,
}

/// One process to launch.
#[derive(Clone, Debug, PartialEq)]
pub struct ComponentPlan {
    /// Its component name (see `defaults::name`).
    pub name: &'static str,
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// Where its stdout and stderr go: `DIR/logs/NAME.log`.
    pub log: PathBuf,
    pub ready: Ready,
    /// What `session.json` records as its address and what its ready line must announce
    /// (empty: it serves nothing, as the scheduler).
    pub address: String,
}

/// A node to start: what `session.json` will say about it, and the processes that make it.
#[derive(Clone, Debug, PartialEq)]
pub struct NodePlan {
    pub role: Role,
    pub dir: PathBuf,
    pub node_id: String,
    /// The address every listener binds (not loopback: reachable from other hosts).
    pub bind: Ipv4Addr,
    /// Folder of this node's sockets, spill files and function work folders.
    pub node_dir: PathBuf,
    pub master_address: String,
    pub etcd_endpoints: Vec<String>,
    pub proxy_address: String,
    pub data_socket: PathBuf,
    pub data_transfer: String,
    pub frontend_url: Option<String>,
    pub meta_url: Option<String>,
    /// The dashboard's URL (master).
    pub dashboard_url: Option<String>,
    /// This node's collector (every node has one).
    pub collector_url: Option<String>,
    /// The REST access token's file, which the executor writes before launching (master).
    pub token_file: Option<PathBuf>,
    /// This node's TLS credentials (`ca.pem`, `node.pem`, `node.key`), which the executor
    /// writes before launching: made from the new CA on a master, received by `Join` on a
    /// worker.
    pub tls_dir: PathBuf,
    /// The CA's key and the join token's file (master).
    pub ca_key: Option<PathBuf>,
    pub join_token_file: Option<PathBuf>,
    /// The cluster secret's file; the executor creates it before launching when `new_secret`.
    pub cluster_secret: PathBuf,
    pub new_secret: bool,
    /// In launch order.
    pub components: Vec<ComponentPlan>,
}

impl NodePlan {
    /// The `session.json` of this node once `components` (its launched processes) run.
    pub fn session(&self, components: Vec<ComponentInfo>, created_unix_ms: u64) -> Session {
        Session {
            role: self.role.as_str().into(),
            session_dir: self.dir.clone(),
            node_id: self.node_id.clone(),
            master_address: self.master_address.clone(),
            etcd_endpoints: self.etcd_endpoints.clone(),
            frontend_url: self.frontend_url.clone(),
            meta_url: self.meta_url.clone(),
            proxy_address: self.proxy_address.clone(),
            data_socket: self.data_socket.clone(),
            token_file: self.token_file.clone(),
            cluster_secret: Some(self.cluster_secret.clone()),
            data_transfer: self.data_transfer.clone(),
            tls_ca: Some(yr_proto::tls::NodeTls::in_dir(&self.tls_dir).ca),
            tls_cert: Some(yr_proto::tls::NodeTls::in_dir(&self.tls_dir).cert),
            tls_key: Some(yr_proto::tls::NodeTls::in_dir(&self.tls_dir).key),
            join_token_file: self.join_token_file.clone(),
            collector_url: self.collector_url.clone(),
            dashboard_url: self.dashboard_url.clone(),
            components,
            created_unix_ms,
        }
    }
}

/// A command line under construction.
#[derive(Default)]
struct CommandLine(Vec<OsString>);

impl CommandLine {
    fn flag(mut self, flag: &str, value: impl AsRef<OsStr>) -> Self {
        self.0.push(flag.into());
        self.0.push(value.as_ref().to_os_string());
        self
    }

    fn flag_if(self, flag: &str, value: Option<impl AsRef<OsStr>>) -> Self {
        match value {
            Some(v) => self.flag(flag, v),
            None => self,
        }
    }

    fn switch(mut self, flag: &str, on: bool) -> Self {
        if on {
            self.0.push(flag.into());
        }
        self
    }

    fn each(self, flag: &str, values: &[String]) -> Self {
        values.iter().fold(self, |c, v| c.flag(flag, v))
    }

    fn all(mut self, args: &[OsString]) -> Self {
        self.0.extend_from_slice(args);
        self
    }
}

/// A map's entries as `KEY=VALUE` flag values, in key order.
fn pairs<V: std::fmt::Display>(m: &std::collections::BTreeMap<String, V>) -> Vec<String> {
    m.iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// The plan for `a`, given what the system said.
pub fn plan(a: &StartConfig, inputs: Inputs) -> Result<NodePlan, ConfigError> {
    let Checked { role, .. } = check(a)?;
    let Inputs {
        exe,
        dir,
        node_id,
        ports,
        etcd_program,
        master_etcd,
        etcd_member,
        python_env,
    } = inputs;
    // A master given a master's address is a standby of that master's cluster.
    let active_master = (role == Role::Master)
        .then(|| master_host_port(a.master_address.as_deref().unwrap_or_default()).to_string())
        .filter(|m| !m.is_empty());
    let at = |port: u16| format!("{}:{port}", a.bind);
    let tls_dir = dir.join(TLS_DIR);
    let tls = yr_proto::tls::NodeTls::in_dir(&tls_dir);
    let (ca_key, join_token_file) = match role {
        // A standby master too: it receives the CA's key and the token when it joins, so that
        // it admits nodes once it is active.
        Role::Master => (
            Some(tls_dir.join("ca.key")),
            Some(tls_dir.join("join-token")),
        ),
        Role::Worker => (None, None),
    };
    let log = |name: &str| dir.join("logs").join(format!("{name}.log"));
    // `yr component NAME ...`.
    let yr = |name: &'static str, args: CommandLine, address: String| ComponentPlan {
        name,
        program: exe.clone(),
        args: CommandLine::default()
            .all(&["component".into(), name.into()])
            .all(&args.0)
            // The gRPC components speak mutual TLS with the node's credentials.
            .flag_if("--tls-dir", (name != name::DATA_WORKER).then_some(&tls_dir))
            .0,
        log: log(name),
        ready: Ready::Line,
        address,
    };
    // The cluster secret of the data workers' transfer ports. A master without
    // --cluster-secret makes a new one; a worker without it receives the master's when it joins
    // (the executor writes it before launching). The master hands it to joining nodes.
    let new_secret = role == Role::Master && a.cluster_secret.is_none() && active_master.is_none();
    let cluster_secret = a
        .cluster_secret
        .clone()
        .unwrap_or_else(|| dir.join(CLUSTER_SECRET_FILE));
    let mut components = Vec::new();

    let (etcd_endpoints, master_address) = match role {
        Role::Master => {
            let endpoints = match &a.etcd_endpoints {
                Some(e) => config::endpoints("etcd-endpoints", &e.join(","))?,
                None => {
                    let program = etcd_program.ok_or_else(|| ConfigError::Missing {
                        field: "etcd-endpoints",
                        message: "etcd is not installed (Debian: apt-get install etcd-server), \
                                  or pass --etcd-endpoints"
                            .into(),
                    })?;
                    // Clients and peers need a certificate from the cluster CA.
                    let client = format!("https://{}", at(ports.etcd_client));
                    let peer = format!("https://{}", at(ports.etcd_peer));
                    let joining = active_master.is_some();
                    let member = etcd_member_name(&node_id, joining);
                    let (initial_cluster, state) = match (&etcd_member, joining) {
                        (Some(m), true) => (m.initial_cluster.clone(), "existing"),
                        (None, true) => {
                            return Err(ConfigError::invalid(
                                "master-address",
                                active_master.clone().unwrap_or_default(),
                                "a standby master's etcd member was not added to the cluster",
                            ))
                        }
                        _ => (format!("{member}={peer}"), "new"),
                    };
                    let args = CommandLine::default()
                        .switch("--client-cert-auth", true)
                        .flag("--trusted-ca-file", &tls.ca)
                        .flag("--cert-file", &tls.cert)
                        .flag("--key-file", &tls.key)
                        .switch("--peer-client-cert-auth", true)
                        .flag("--peer-trusted-ca-file", &tls.ca)
                        .flag("--peer-cert-file", &tls.cert)
                        .flag("--peer-key-file", &tls.key)
                        .flag("--name", &member)
                        .flag("--data-dir", dir.join("etcd"))
                        .flag("--listen-client-urls", &client)
                        .flag("--advertise-client-urls", &client)
                        .flag("--listen-peer-urls", &peer)
                        .flag("--initial-advertise-peer-urls", &peer)
                        .flag("--initial-cluster", initial_cluster)
                        .flag("--initial-cluster-state", state)
                        // A new etcd leader within about a second of losing one (default: 1 to
                        // 2 s, then leases are extended by this timeout again): the master
                        // election's failover is the lease TTL plus these.
                        .flag("--heartbeat-interval", "100")
                        .flag("--election-timeout", "500")
                        .flag("--log-level", "warn");
                    components.push(ComponentPlan {
                        name: name::ETCD,
                        program,
                        args: args.0,
                        log: log(name::ETCD),
                        ready: Ready::Endpoint,
                        address: client.clone(),
                    });
                    // The local member first, then the others (a standby's).
                    let mut endpoints = vec![client];
                    for e in &master_etcd {
                        if !endpoints.contains(e) {
                            endpoints.push(e.clone());
                        }
                    }
                    endpoints
                }
            };
            let etcd = endpoints.join(",");
            let master = at(ports.function_master);
            // Its clients know every master: the active one first (a standby's own port
            // refuses until it is elected).
            let masters = match &active_master {
                Some(active) if *active != master => format!("{active},{master}"),
                _ => master.clone(),
            };
            components.push(yr(
                name::FUNCTION_MASTER,
                CommandLine::default()
                    .flag("--listen", &master)
                    .flag("--etcd", &etcd)
                    .all(&a.etcd_auth.args())
                    .flag("--cluster-secret", &cluster_secret)
                    .flag_if("--ca-key", ca_key.as_ref())
                    .flag_if("--join-token-file", join_token_file.as_ref())
                    .flag_if(
                        "--rest-token-file",
                        join_token_file.as_ref().map(|_| dir.join("token")),
                    )
                    .flag("--node-id", &node_id),
                master.clone(),
            ));
            components.push(yr(
                name::FUNCTION_SCHEDULER,
                CommandLine::default()
                    .flag("--etcd", &etcd)
                    .all(&a.etcd_auth.args())
                    .flag("--master", &masters)
                    .flag("--idle-timeout-ms", a.idle_timeout_ms.to_string()),
                String::new(),
            ));
            (endpoints, masters)
        }
        Role::Worker => {
            let master =
                master_host_port(a.master_address.as_deref().unwrap_or_default()).to_string();
            if master_etcd.is_empty() {
                return Err(ConfigError::invalid(
                    "master-address",
                    master,
                    "the master reported no etcd endpoints",
                ));
            }
            (master_etcd, master)
        }
    };
    let etcd = etcd_endpoints.join(",");

    // The REST services of a master node, behind the cluster's access token.
    let token_file = (role == Role::Master).then(|| dir.join("token"));
    let rest_flags = match &token_file {
        Some(t) => {
            CommandLine::default()
                .flag("--token-file", t)
                .flag("--max-body", a.max_body.to_string())
                .flag_if("--rest-tls-cert", a.rest_tls_cert.as_ref())
                .flag_if("--rest-tls-key", a.rest_tls_key.as_ref())
                .0
        }
        None => Vec::new(),
    };
    let rest_scheme = if a.rest_tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    let mut meta_url = None;
    if role == Role::Master {
        let listen = at(ports.meta_service);
        components.push(yr(
            name::META_SERVICE,
            CommandLine::default()
                .all(&rest_flags)
                .flag("--listen", &listen)
                .flag("--upstream", &master_address),
            listen.clone(),
        ));
        meta_url = Some(format!("{rest_scheme}://{listen}"));
    }
    // The dashboard reads the master and the collectors; it serves behind the REST token.
    let mut dashboard_url = None;
    if role == Role::Master {
        let listen = at(ports.dashboard);
        components.push(yr(
            name::DASHBOARD,
            CommandLine::default()
                .all(&rest_flags)
                .flag("--listen", &listen)
                .flag("--etcd", &etcd)
                .all(&a.etcd_auth.args())
                .flag("--master", &master_address)
                .flag("--cluster-secret", &cluster_secret),
            listen.clone(),
        ));
        dashboard_url = Some(format!("{rest_scheme}://{listen}"));
    }

    // This node's worker components.
    let node_dir = dir.join("node");
    let data_socket = node_dir.join("data-worker.sock");
    let data_transfer = at(ports.data_transfer);
    components.push(yr(
        name::DATA_WORKER,
        CommandLine::default()
            .flag("--socket", &data_socket)
            .flag("--spill-dir", node_dir.join("spill"))
            .flag_if("--shm-size", a.shm_size.map(|s| s.to_string()))
            .switch("--prefault", a.prefault_shm)
            .switch("--encrypt-transfers", a.encrypt_transfers)
            .flag("--transfer-address", &data_transfer)
            .flag("--cluster-secret", &cluster_secret),
        data_transfer.clone(),
    ));
    let node_flags = CommandLine::default()
        .flag("--etcd", &etcd)
        .all(&a.etcd_auth.args())
        .flag("--master", &master_address)
        .flag("--node-id", &node_id)
        .0;
    let instance_socket = node_dir.join("proxy.sock");
    let proxy_address = at(ports.function_proxy);
    let mut proxy = CommandLine::default()
        .flag("--listen", &proxy_address)
        .all(&node_flags)
        .flag("--instance-socket", &instance_socket)
        .flag("--instance-secret-file", instance_secret_file(&node_dir));
    // The master node's REST frontend runs inside its proxy: calls skip a gRPC hop.
    let mut frontend_url = None;
    if role == Role::Master {
        let listen = at(ports.frontend);
        proxy = proxy
            .flag("--frontend-listen", &listen)
            .all(&rest_flags)
            .flag("--data-socket", &data_socket);
        frontend_url = Some(format!("{rest_scheme}://{listen}"));
    }
    components.push(yr(name::FUNCTION_PROXY, proxy, proxy_address.clone()));
    let agent_address = at(ports.function_agent);
    let work_dir = node_dir.join("work");
    components.push(yr(
        name::FUNCTION_AGENT,
        CommandLine::default()
            .flag("--listen", &agent_address)
            .all(&node_flags)
            .flag("--proxy", &proxy_address)
            .flag("--proxy-socket", &instance_socket)
            .flag("--instance-secret-file", instance_secret_file(&node_dir))
            .flag("--data-socket", &data_socket)
            .flag("--data-transfer", &data_transfer)
            .flag("--work-dir", &work_dir)
            .flag_if("--cpu", a.cpu.map(|c| c.to_string()))
            .flag_if("--memory", a.memory.map(|m| m.to_string()))
            .each("--label", &pairs(&a.labels))
            .each("--resource", &pairs(&a.resources))
            .flag_if(
                "--python",
                a.python
                    .clone()
                    .or(python_env)
                    .filter(|p| !p.trim().is_empty()),
            ),
        agent_address,
    ));
    // The node's observer: reads what the others own (etcd records, /proc, the data worker's
    // counters, instance logs, session.json, the proxy's call counters).
    let collector_address = at(ports.collector);
    components.push(yr(
        name::COLLECTOR,
        CommandLine::default()
            .flag("--listen", &collector_address)
            .flag("--etcd", &etcd)
            .all(&a.etcd_auth.args())
            .flag("--node-id", &node_id)
            .flag("--data-socket", &data_socket)
            .flag("--work-dir", &work_dir)
            .flag("--session-dir", &dir)
            .flag("--cluster-secret", &cluster_secret)
            .flag("--proxy", &proxy_address)
            .flag_if(
                "--rest-tls-cert",
                a.rest_tls_cert.as_ref().filter(|_| role == Role::Master),
            ),
        collector_address.clone(),
    ));
    let collector_url = Some(format!("http://{collector_address}"));

    Ok(NodePlan {
        role,
        dir,
        node_id,
        bind: a.bind,
        node_dir,
        master_address,
        etcd_endpoints,
        proxy_address,
        data_socket,
        data_transfer,
        frontend_url,
        meta_url,
        dashboard_url,
        collector_url,
        token_file,
        tls_dir,
        ca_key,
        join_token_file,
        cluster_secret,
        new_secret,
        components,
    })
}

#[cfg(test)]
mod tests {
    use super::super::node_config::start_args;
    use super::*;
    use clap::Parser;
    use std::path::Path;

    /// The settings of a command line; panics if they are refused.
    fn args(flags: &[&str]) -> StartConfig {
        match start_args(flags).resolve() {
            Ok(c) => c,
            Err(e) => panic!("{flags:?}: {e}"),
        }
    }

    fn inputs(ports: Ports) -> Inputs {
        Inputs {
            exe: "/opt/yr/bin/yr".into(),
            dir: "/s".into(),
            node_id: "host-00abcd".into(),
            ports,
            etcd_program: Some("/usr/bin/etcd".into()),
            master_etcd: Vec::new(),
            etcd_member: None,
            python_env: None,
        }
    }

    fn planned(flags: &[&str], inputs: Inputs) -> NodePlan {
        match plan(&args(flags), inputs) {
            Ok(p) => p,
            Err(e) => panic!("{flags:?}: {e}"),
        }
    }

    fn names(p: &NodePlan) -> Vec<&'static str> {
        p.components.iter().map(|c| c.name).collect()
    }

    fn component<'a>(p: &'a NodePlan, name: &str) -> &'a ComponentPlan {
        match p.components.iter().find(|c| c.name == name) {
            Some(c) => c,
            None => panic!("no {name} in {:?}", names(p)),
        }
    }

    /// The values of `flag` in a component's command line.
    fn values(p: &NodePlan, name: &str, flag: &str) -> Vec<String> {
        let args = &component(p, name).args;
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].to_string_lossy().into_owned())
            .collect()
    }

    fn value(p: &NodePlan, name: &str, flag: &str) -> Option<String> {
        values(p, name, flag).into_iter().next()
    }

    fn has(p: &NodePlan, name: &str, flag: &str) -> bool {
        component(p, name).args.iter().any(|a| a == flag)
    }

    /// The setting a command line is refused for, by its settings or by the plan.
    fn refused(flags: &[&str], inputs: Inputs) -> &'static str {
        match start_args(flags).resolve().and_then(|c| plan(&c, inputs)) {
            Ok(_) => panic!("{flags:?} planned"),
            Err(e) => e.field(),
        }
    }

    #[test]
    fn a_master_plan_starts_etcd_the_master_and_the_worker_components_on_the_standard_ports() {
        let p = planned(&["--master"], inputs(Ports::STANDARD));
        assert_eq!(p.role, Role::Master);
        assert_eq!(
            names(&p),
            [
                "etcd",
                "function-master",
                "function-scheduler",
                "meta-service",
                "dashboard",
                "data-worker",
                "function-proxy",
                "function-agent",
                "collector"
            ]
        );
        assert_eq!(p.dashboard_url.as_deref(), Some("http://127.0.0.1:9080"));
        assert_eq!(
            value(&p, "dashboard", "--token-file").as_deref(),
            Some("/s/token")
        );
        assert_eq!(p.etcd_endpoints, ["https://127.0.0.1:32379"]);
        assert_eq!(p.master_address, "127.0.0.1:22770");
        assert_eq!(p.proxy_address, "127.0.0.1:22772");
        assert_eq!(p.data_transfer, "127.0.0.1:31501");
        assert_eq!(p.meta_url.as_deref(), Some("http://127.0.0.1:31182"));
        assert_eq!(p.frontend_url.as_deref(), Some("http://127.0.0.1:8888"));
        assert_eq!(p.token_file.as_deref(), Some(Path::new("/s/token")));
        assert_eq!(p.data_socket, Path::new("/s/node/data-worker.sock"));

        let etcd = component(&p, "etcd");
        assert_eq!(etcd.program, Path::new("/usr/bin/etcd"));
        assert_eq!(etcd.ready, Ready::Endpoint);
        assert_eq!(etcd.address, "https://127.0.0.1:32379");
        // etcd requires client and peer certificates from the cluster CA.
        assert!(
            has(&p, "etcd", "--client-cert-auth") && has(&p, "etcd", "--peer-client-cert-auth")
        );
        assert_eq!(
            value(&p, "etcd", "--trusted-ca-file").as_deref(),
            Some("/s/tls/ca.pem")
        );
        assert_eq!(
            value(&p, "function-master", "--join-token-file").as_deref(),
            Some("/s/tls/join-token")
        );
        for c in [
            "function-master",
            "function-scheduler",
            "meta-service",
            "dashboard",
            "function-proxy",
            "function-agent",
        ] {
            assert_eq!(value(&p, c, "--tls-dir").as_deref(), Some("/s/tls"), "{c}");
        }
        assert!(!has(&p, "data-worker", "--tls-dir"));
        assert_eq!(
            value(&p, "etcd", "--listen-peer-urls").as_deref(),
            Some("https://127.0.0.1:32380")
        );
        assert_eq!(etcd.log, Path::new("/s/logs/etcd.log"));
        let master = component(&p, "function-master");
        assert_eq!(master.program, Path::new("/opt/yr/bin/yr"));
        assert_eq!(master.args[..2], ["component", "function-master"]);
        assert_eq!(master.address, "127.0.0.1:22770");
        assert_eq!(master.log, Path::new("/s/logs/function-master.log"));
        assert_eq!(
            value(&p, "function-master", "--etcd").as_deref(),
            Some("https://127.0.0.1:32379")
        );
        assert_eq!(
            component(&p, "function-scheduler").address,
            "",
            "serves nothing"
        );
        assert_eq!(
            value(&p, "function-scheduler", "--idle-timeout-ms").as_deref(),
            Some("60000")
        );
        // The REST services need the token; the frontend runs in the proxy.
        for name in ["meta-service", "dashboard", "function-proxy"] {
            assert_eq!(value(&p, name, "--token-file").as_deref(), Some("/s/token"));
            assert_eq!(value(&p, name, "--max-body").as_deref(), Some("67108864"));
        }
        assert_eq!(
            value(&p, "function-proxy", "--frontend-listen").as_deref(),
            Some("127.0.0.1:8888")
        );
        assert_eq!(
            value(&p, "function-agent", "--listen").as_deref(),
            Some("127.0.0.1:58866")
        );
        assert_eq!(
            value(&p, "function-agent", "--proxy").as_deref(),
            Some("127.0.0.1:22772")
        );
        assert_eq!(
            value(&p, "function-agent", "--data-transfer").as_deref(),
            Some("127.0.0.1:31501")
        );
        // A master makes the cluster secret its data worker (and every worker node's) proves.
        assert!(p.new_secret);
        assert_eq!(p.cluster_secret, Path::new("/s/cluster-secret"));
        assert_eq!(
            value(&p, "data-worker", "--cluster-secret").as_deref(),
            Some("/s/cluster-secret")
        );
    }

    #[test]
    fn a_worker_plan_has_no_etcd_master_or_rest_services() {
        let mut i = inputs(Ports::STANDARD);
        i.master_etcd = vec!["http://10.0.0.1:32379".into()];
        i.etcd_program = None;
        let p = planned(
            &[
                "--worker",
                "--master-address",
                "10.0.0.1:22770",
                "--join-token",
                "t",
                "--cluster-secret",
                "/m/cluster-secret",
            ],
            i,
        );
        assert_eq!(p.role, Role::Worker);
        assert_eq!(
            names(&p),
            [
                "data-worker",
                "function-proxy",
                "function-agent",
                "collector"
            ]
        );
        assert_eq!(p.master_address, "10.0.0.1:22770");
        // Every node has a collector, deriving its token from the cluster secret.
        assert_eq!(
            value(&p, "collector", "--cluster-secret").as_deref(),
            Some("/m/cluster-secret")
        );
        assert_eq!(
            value(&p, "collector", "--work-dir"),
            value(&p, "function-agent", "--work-dir")
        );
        assert_eq!(p.collector_url.as_deref(), Some("http://127.0.0.1:9082"));
        assert_eq!(p.etcd_endpoints, ["http://10.0.0.1:32379"]);
        assert_eq!(
            (&p.token_file, &p.meta_url, &p.frontend_url),
            (&None, &None, &None)
        );
        assert!(!has(&p, "function-proxy", "--frontend-listen"));
        assert!(!has(&p, "function-proxy", "--token-file"));
        // Its data worker proves the master's secret; the worker makes none of its own.
        assert_eq!(
            value(&p, "data-worker", "--cluster-secret").as_deref(),
            Some("/m/cluster-secret")
        );
        assert!(!p.new_secret);
        for name in ["function-proxy", "function-agent"] {
            assert_eq!(
                value(&p, name, "--master").as_deref(),
                Some("10.0.0.1:22770")
            );
            assert_eq!(
                value(&p, name, "--etcd").as_deref(),
                Some("http://10.0.0.1:32379")
            );
            assert_eq!(value(&p, name, "--node-id").as_deref(), Some("host-00abcd"));
        }
        // A worker whose master names no etcd cannot join.
        let p = plan(
            &args(&[
                "--worker",
                "--master-address",
                "10.0.0.1:22770",
                "--join-token",
                "t",
                "--cluster-secret",
                "/m/cluster-secret",
            ]),
            inputs(Ports::STANDARD),
        );
        assert_eq!(p.err().map(|e| e.field()), Some("master-address"));
        // Without --cluster-secret, a worker's data worker proves the secret it receives
        // when it joins, written into its own session folder.
        let mut i = inputs(Ports::STANDARD);
        i.master_etcd = vec!["https://10.0.0.1:32379".into()];
        let p = planned(
            &[
                "--worker",
                "--master-address",
                "10.0.0.1:22770",
                "--join-token",
                "t",
            ],
            i,
        );
        assert!(!p.new_secret);
        assert_eq!(
            value(&p, "data-worker", "--cluster-secret").as_deref(),
            Some("/s/cluster-secret")
        );
    }

    /// openYuanrong's worker command, as its deployment pages write it: no `--worker`, the
    /// master's address with `http://` and underscores in the flags' names.
    #[test]
    fn a_master_address_alone_makes_a_worker() {
        let mut i = inputs(Ports::STANDARD);
        i.master_etcd = vec!["https://10.0.0.1:32379".into()];
        let p = planned(
            &[
                "--master_address",
                "http://10.0.0.1:22770",
                "--join_token",
                "t",
                "--shm_size",
                "64MiB",
            ],
            i.clone(),
        );
        assert_eq!(p.role, Role::Worker);
        assert_eq!(p.master_address, "10.0.0.1:22770");
        assert_eq!(
            value(&p, "data-worker", "--shm-size").as_deref(),
            Some("67108864")
        );
        // The same from a settings file's keys, given with --set.
        let q = planned(
            &[
                "-s",
                "master_address=http://10.0.0.1:22770",
                "-s",
                "join-token=t",
                "-s",
                "shm-size=64MiB",
            ],
            i,
        );
        assert_eq!(q, p);
    }

    /// `yr start --master --master_address http://IP:PORT --join_token T`: a standby master.
    #[test]
    fn a_master_given_a_masters_address_is_a_standby_that_joins_the_etcd_cluster() {
        let flags = [
            "--master",
            "--master_address",
            "http://10.0.0.1:22770",
            "--join_token",
            "t",
        ];
        let mut i = inputs(Ports::STANDARD);
        i.master_etcd = vec!["https://10.0.0.1:32379".into()];
        i.etcd_member = Some(EtcdMember {
            id: 7,
            initial_cluster: "yr=https://10.0.0.1:32380,host-00abcd=https://127.0.0.1:32380".into(),
        });
        let p = planned(&flags, i.clone());
        assert_eq!(p.role, Role::Master);
        assert_eq!(names(&p)[0], "etcd");
        assert_eq!(value(&p, "etcd", "--name").as_deref(), Some("host-00abcd"));
        assert_eq!(
            value(&p, "etcd", "--initial-cluster-state").as_deref(),
            Some("existing")
        );
        assert_eq!(
            value(&p, "etcd", "--initial-cluster"),
            i.etcd_member.as_ref().map(|m| m.initial_cluster.clone())
        );
        assert!(has(&p, "etcd", "--peer-client-cert-auth"));
        // The local member first, then the cluster's.
        assert_eq!(
            p.etcd_endpoints,
            ["https://127.0.0.1:32379", "https://10.0.0.1:32379"]
        );
        // Clients know both masters, the active one first.
        assert_eq!(p.master_address, "10.0.0.1:22770,127.0.0.1:22770");
        for c in ["function-scheduler", "function-proxy", "function-agent"] {
            assert_eq!(
                value(&p, c, "--master").as_deref(),
                Some("10.0.0.1:22770,127.0.0.1:22770"),
                "{c}"
            );
        }
        assert_eq!(
            value(&p, "function-master", "--listen").as_deref(),
            Some("127.0.0.1:22770")
        );
        assert_eq!(
            value(&p, "function-master", "--node-id").as_deref(),
            Some("host-00abcd")
        );
        // It receives the CA's key, the join token, the REST token and the cluster secret
        // when it joins (the executor writes them), so that it admits nodes once active.
        assert_eq!(
            value(&p, "function-master", "--ca-key").as_deref(),
            Some("/s/tls/ca.key")
        );
        assert_eq!(
            p.join_token_file.as_deref(),
            Some(Path::new("/s/tls/join-token"))
        );
        assert_eq!(
            value(&p, "function-master", "--rest-token-file").as_deref(),
            Some("/s/token")
        );
        assert!(!p.new_secret);
        // Its etcd member must have been added first; and it needs the join token.
        let mut not_added = i.clone();
        not_added.etcd_member = None;
        assert_eq!(refused(&flags, not_added), "master-address");
        assert_eq!(
            refused(
                &["--master", "--master_address", "http://10.0.0.1:22770"],
                i
            ),
            "join-token"
        );
        // The first master's etcd starts a new cluster, its member named yr.
        let first = planned(&["--master"], inputs(Ports::STANDARD));
        assert_eq!(value(&first, "etcd", "--name").as_deref(), Some("yr"));
        assert_eq!(
            value(&first, "etcd", "--initial-cluster-state").as_deref(),
            Some("new")
        );
    }

    #[test]
    fn the_credentials_of_a_given_etcd_reach_every_etcd_client() {
        let mut i = inputs(Ports::STANDARD);
        i.etcd_program = None;
        let flags = [
            "--master",
            "--etcd-endpoints",
            "https://e1:2379",
            "--etcd-ca",
            "/e/ca.pem",
            "--etcd-cert",
            "/e/c.pem",
            "--etcd-key",
            "/e/c.key",
            "--etcd-user",
            "yr",
            "--etcd-password-file",
            "/e/pw",
        ];
        let p = planned(&flags, i.clone());
        for c in [
            "function-master",
            "function-scheduler",
            "dashboard",
            "function-proxy",
            "function-agent",
        ] {
            assert_eq!(
                value(&p, c, "--etcd-ca").as_deref(),
                Some("/e/ca.pem"),
                "{c}"
            );
            assert_eq!(
                value(&p, c, "--etcd-key").as_deref(),
                Some("/e/c.key"),
                "{c}"
            );
            assert_eq!(value(&p, c, "--etcd-user").as_deref(), Some("yr"), "{c}");
            assert_eq!(
                value(&p, c, "--etcd-password-file").as_deref(),
                Some("/e/pw"),
                "{c}"
            );
        }
        assert!(!has(&p, "meta-service", "--etcd-ca"));
        // They are for a given etcd: the one yr starts uses the cluster's certificates.
        assert_eq!(
            refused(
                &["--master", "--etcd-ca", "/e/ca.pem"],
                inputs(Ports::STANDARD)
            ),
            "etcd-ca"
        );
    }

    #[test]
    fn a_master_with_etcd_endpoints_starts_no_etcd() {
        let mut i = inputs(Ports::STANDARD);
        i.etcd_program = None;
        let p = planned(
            &[
                "--master",
                "--etcd-endpoints",
                "http://e1:2379, http://e2:2379",
            ],
            i.clone(),
        );
        assert_eq!(names(&p)[0], "function-master");
        assert_eq!(p.etcd_endpoints, ["http://e1:2379", "http://e2:2379"]);
        assert_eq!(
            value(&p, "function-master", "--etcd").as_deref(),
            Some("http://e1:2379,http://e2:2379")
        );
        // Without endpoints, a master needs the etcd program.
        assert_eq!(refused(&["--master"], i), "etcd-endpoints");
        assert_eq!(
            refused(
                &["--master", "--etcd-endpoints", ","],
                inputs(Ports::STANDARD)
            ),
            "etcd-endpoints"
        );
    }

    #[test]
    fn ports_auto_uses_the_ports_given_and_nothing_else() {
        assert_eq!(
            check(&args(&["--master", "--ports", "auto"])).map(|c| c.ports),
            Ok(PortMode::Auto)
        );
        assert_eq!(
            check(&args(&["--master"])).map(|c| c.ports),
            Ok(PortMode::Standard)
        );
        assert_eq!(
            start_args(&["--master", "--ports", "9000"])
                .resolve()
                .map_err(|e| e.field()),
            Err("ports")
        );
        let free = [
            40001, 40002, 40003, 40004, 40005, 40006, 40007, 40008, 40009, 40010,
        ];
        let p = planned(
            &["--master", "--ports", "auto"],
            inputs(Ports::from_free(free)),
        );
        let every_arg: Vec<String> = p
            .components
            .iter()
            .flat_map(|c| c.args.iter().map(|a| a.to_string_lossy().into_owned()))
            .collect();
        for standard in [
            32379, 32380, 22770, 22772, 58866, 31182, 8888, 31501, 9082, 9080,
        ] {
            assert!(
                !every_arg
                    .iter()
                    .any(|a| a.ends_with(&format!(":{standard}"))),
                "standard port {standard} in {every_arg:?}"
            );
        }
        for port in free {
            assert!(
                every_arg.iter().any(|a| a.ends_with(&format!(":{port}"))),
                "port {port} unused in {every_arg:?}"
            );
        }
        assert_eq!(p.master_address, "127.0.0.1:40003");
        assert_eq!(p.frontend_url.as_deref(), Some("http://127.0.0.1:40007"));
    }

    #[test]
    fn the_flags_are_checked_before_anything_starts() {
        let i = || inputs(Ports::STANDARD);
        assert_eq!(
            refused(&[], i()),
            "master-address",
            "a worker is the default role"
        );
        assert_eq!(refused(&["--master", "--bind", "0.0.0.0"], i()), "bind");
        assert_eq!(refused(&["--master", "--label", "zone"], i()), "label");
        assert_eq!(
            refused(&["--master", "--resource", "gpu=lots"], i()),
            "resource"
        );
        assert_eq!(
            refused(&["--worker"], i()),
            "master-address",
            "a worker needs --master-address"
        );
        assert!(crate::Cli::try_parse_from(["yr", "start", "--master", "--worker"]).is_err());
        assert_eq!(
            refused(&["--worker", "--master-address", "m:1"], i()),
            "join-token",
            "a worker needs the join token"
        );
        assert_eq!(master_host_port("http://10.0.0.1:22770/"), "10.0.0.1:22770");
        assert_eq!(master_host_port("10.0.0.1:22770"), "10.0.0.1:22770");
    }

    #[test]
    fn node_settings_reach_their_components() {
        let p = planned(
            &[
                "--master",
                "--bind",
                "10.1.2.3",
                "--shm-size",
                "1GiB",
                "--prefault-shm",
                "--cpu",
                "1500",
                "--memory",
                "2048",
                "--label",
                "zone=a",
                "--label",
                "gpu=yes",
                "--resource",
                "fpga=2",
                "--idle-timeout-ms",
                "1500",
                "--max-body",
                "1MiB",
            ],
            inputs(Ports::STANDARD),
        );
        assert_eq!(p.etcd_endpoints, ["https://10.1.2.3:32379"]);
        assert_eq!(p.master_address, "10.1.2.3:22770");
        assert_eq!(
            value(&p, "data-worker", "--shm-size").as_deref(),
            Some("1073741824")
        );
        assert!(has(&p, "data-worker", "--prefault"));
        assert_eq!(
            value(&p, "data-worker", "--transfer-address").as_deref(),
            Some("10.1.2.3:31501")
        );
        assert_eq!(
            value(&p, "function-agent", "--cpu").as_deref(),
            Some("1500")
        );
        assert_eq!(
            value(&p, "function-agent", "--memory").as_deref(),
            Some("2048")
        );
        assert_eq!(
            values(&p, "function-agent", "--label"),
            ["gpu=yes", "zone=a"]
        );
        assert_eq!(values(&p, "function-agent", "--resource"), ["fpga=2"]);
        assert_eq!(
            value(&p, "function-scheduler", "--idle-timeout-ms").as_deref(),
            Some("1500")
        );
        assert_eq!(
            value(&p, "meta-service", "--max-body").as_deref(),
            Some("1048576")
        );
        // Defaults leave the optional flags out.
        let p = planned(&["--master"], inputs(Ports::STANDARD));
        assert!(!has(&p, "data-worker", "--shm-size"));
        assert!(!has(&p, "data-worker", "--prefault"));
        assert!(!has(&p, "function-agent", "--cpu"));
        assert!(!has(&p, "function-agent", "--label"));
        assert!(!has(&p, "function-agent", "--python"));
    }

    #[test]
    fn the_python_interpreter_comes_from_the_flag_then_the_environment() {
        let mut with_env = inputs(Ports::STANDARD);
        with_env.python_env = Some("/env/python".into());
        let p = planned(&["--master", "--python", "/flag/python"], with_env.clone());
        assert_eq!(
            value(&p, "function-agent", "--python").as_deref(),
            Some("/flag/python")
        );
        let p = planned(&["--master"], with_env);
        assert_eq!(
            value(&p, "function-agent", "--python").as_deref(),
            Some("/env/python")
        );
        let mut blank = inputs(Ports::STANDARD);
        blank.python_env = Some(String::new());
        assert!(!has(
            &planned(&["--master"], blank),
            "function-agent",
            "--python"
        ));
    }

    /// Every `yr component` command line of a plan is one `yr component` accepts, so the plan and
    /// the components agree on names and flags.
    #[test]
    fn planned_command_lines_parse_as_components() {
        let mut worker = inputs(Ports::STANDARD);
        worker.master_etcd = vec!["http://127.0.0.1:32379".into()];
        let plans = [
            planned(
                &[
                    "--master",
                    "--shm-size",
                    "64MiB",
                    "--label",
                    "a=b",
                    "--cpu",
                    "100",
                    "--python",
                    "/venv/bin/python",
                ],
                inputs(Ports::STANDARD),
            ),
            planned(
                &[
                    "--worker",
                    "--master-address",
                    "127.0.0.1:22770",
                    "--join-token",
                    "t",
                    "--cluster-secret",
                    "/m/cluster-secret",
                ],
                worker,
            ),
        ];
        for p in &plans {
            for c in p.components.iter().filter(|c| c.name != name::ETCD) {
                let argv = std::iter::once(OsString::from("yr")).chain(c.args.iter().cloned());
                if let Err(e) = crate::Cli::try_parse_from(argv) {
                    panic!("{}: {:?}: {e}", c.name, c.args);
                }
            }
        }
    }

    #[test]
    fn the_session_records_the_plan() {
        let p = planned(&["--master"], inputs(Ports::STANDARD));
        let s = p.session(Vec::new(), 7);
        assert!(s.is_master());
        assert_eq!(s.session_dir, Path::new("/s"));
        assert_eq!(s.node_id, "host-00abcd");
        assert_eq!(s.master_address, p.master_address);
        assert_eq!(s.proxy_address, p.proxy_address);
        assert_eq!(s.data_transfer, p.data_transfer);
        assert_eq!(s.token_file, p.token_file);
        assert_eq!(s.dashboard_url.as_deref(), Some("http://127.0.0.1:9080"));
        assert_eq!(
            s.cluster_secret.as_deref(),
            Some(Path::new("/s/cluster-secret"))
        );
        assert_eq!(s.created_unix_ms, 7);
        assert_eq!(s.collector_url.as_deref(), Some("http://127.0.0.1:9082"));
    }

    #[test]
    fn node_ids_carry_the_host_name_and_differ_by_pid() {
        let a = node_id("box", 1_000, 1);
        let b = node_id("box", 1_000, 2);
        assert!(a.starts_with("box-") && a.len() == "box-".len() + 6, "{a}");
        assert_ne!(a, b);
    }
}

// ---- Local hardening (issue 12): the node secret between a node's proxy and its agent. ----

/// The file through which a node's proxy hands the node secret to its agent, which removes it
/// (see `yr_control::secret`); inside the node's private folder.
fn instance_secret_file(node_dir: &std::path::Path) -> PathBuf {
    node_dir.join("instance.key")
}

#[cfg(test)]
mod instance_secret_tests {
    use super::super::node_config::start_args;
    use super::*;

    #[test]
    fn the_proxy_and_the_agent_name_one_secret_file_in_the_node_folder() {
        let a = start_args(&["--master"]).resolve().expect("settings");
        let p = plan(
            &a,
            Inputs {
                exe: "/opt/yr/bin/yr".into(),
                dir: "/s".into(),
                node_id: "host-00abcd".into(),
                ports: Ports::STANDARD,
                etcd_program: Some("/usr/bin/etcd".into()),
                master_etcd: Vec::new(),
                etcd_member: None,
                python_env: None,
            },
        )
        .expect("plan");
        let file_of = |name: &str| {
            let c = p.components.iter().find(|c| c.name == name).expect(name);
            c.args
                .windows(2)
                .find(|w| w[0] == "--instance-secret-file")
                .map(|w| PathBuf::from(&w[1]))
        };
        let proxy = file_of(name::FUNCTION_PROXY).expect("the proxy writes it");
        assert_eq!(file_of(name::FUNCTION_AGENT), Some(proxy.clone()));
        assert_eq!(proxy, p.node_dir.join("instance.key"));
    }
}
