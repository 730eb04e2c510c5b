//! Default ports, component names and shared setting defaults, defined once.
//!
//! A component name is at the same time the `yr component NAME` subcommand, the name `yr start`
//! records in `session.json` (and that `yr stop`, the tests and the benches look up), and its log
//! file `logs/NAME.log`. The standard ports follow openYuanrong's; `yr start --ports auto` picks
//! free ones instead, so several nodes can share a host.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// The names of a node's components.
pub mod name {
    /// The metadata store: an `etcd` process (not a `yr component`).
    pub const ETCD: &str = "etcd";
    /// Topology, placement and instance lifecycle (master nodes).
    pub const FUNCTION_MASTER: &str = "function-master";
    /// Keeps stateless functions' pools between their minimum and maximum (master nodes).
    pub const FUNCTION_SCHEDULER: &str = "function-scheduler";
    /// Function management over REST (master nodes).
    pub const META_SERVICE: &str = "meta-service";
    /// Invocation over REST; `yr start` runs it inside the master node's function proxy.
    pub const FRONTEND: &str = "frontend";
    /// The node's shared-memory object store.
    pub const DATA_WORKER: &str = "data-worker";
    /// The node's door for calls to instances.
    pub const FUNCTION_PROXY: &str = "function-proxy";
    /// The node's function processes.
    pub const FUNCTION_AGENT: &str = "function-agent";
    /// The node supervisor that `yr start` leaves running.
    pub const SUPERVISOR: &str = "supervisor";
    /// The node's metrics, usage history and instance logs (every node).
    pub const COLLECTOR: &str = "collector";
    /// The cluster's web page (master nodes).
    pub const DASHBOARD: &str = "dashboard";
}

/// The standard ports of a node's listeners.
pub mod port {
    /// etcd's client URL.
    pub const ETCD_CLIENT: u16 = 32379;
    /// etcd's peer URL.
    pub const ETCD_PEER: u16 = 32380;
    /// The function master's gRPC service.
    pub const FUNCTION_MASTER: u16 = 22770;
    /// The function proxy's gRPC service.
    pub const FUNCTION_PROXY: u16 = 22772;
    /// The function agent's gRPC service.
    pub const FUNCTION_AGENT: u16 = 58866;
    /// The meta service (REST).
    pub const META_SERVICE: u16 = 31182;
    /// The frontend (REST).
    pub const FRONTEND: u16 = 8888;
    /// The data worker's object transfer port, where other nodes pull objects from.
    pub const DATA_TRANSFER: u16 = 31501;
    /// The collector (HTTP: `/metrics`, usage history, instance logs).
    pub const COLLECTOR: u16 = 9082;
    /// The dashboard (HTTP: the web page and its JSON).
    pub const DASHBOARD: u16 = 9080;
}

/// A component's listen address unless told otherwise: `127.0.0.1:port`, reachable from this
/// host only.
pub const fn local(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
}

/// How long the scheduler lets a stateless instance sit idle before stopping it (down to its
/// function's minimum), in milliseconds.
pub const IDLE_TIMEOUT_MS: u64 = 60_000;

/// The largest REST request body, as `yr start --max-body` and the REST components'
/// `--max-body` take it.
pub const MAX_BODY: &str = "64MiB";
