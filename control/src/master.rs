//! The function master: cluster topology, placement of instances, and their lifecycle.
//!
//! Layout: `state` holds the master's view (etcd-backed records) and the one place a record
//! changes (`MasterState::apply`); `instances` creates, starts, restarts and stops
//! instances; `nodes` watches nodes come and go; `functions` deploys and deletes functions;
//! `service` is the gRPC surface over all of it; [`placement`] chooses nodes. Every decision
//! about an instance's state is made by [`crate::lifecycle`]; this module applies them.
//!
//! Invariants:
//! - The master is the only writer of instance records (`/yr/instances/`); agents and proxies
//!   report events to it ([`MasterState::report`]) instead of writing etcd themselves.
//! - A record is written to etcd before the master acts on it or answers for it, so a restarted
//!   master rebuilds everything from etcd ([`MasterState::load`]).
//! - A node is alive while its agent's lease keeps `/yr/nodes/<id>` present. Instances on a node
//!   that disappears become FAILED and are restarted elsewhere while they have retries left.
//! - Resources in use on a node are the sum over the non-terminal instances placed there, derived
//!   from the records rather than counted separately, so they cannot drift.
//! - A starting master reconciles the records with what the agents run before it serves
//!   ([`crate::reconcile`]): nothing stays stuck in SCHEDULING, CREATING or FAILED, and no
//!   process runs without a live record.
//! - Errors leave the master typed ([`crate::error::Error`]); the gRPC status carries their kind.

use std::sync::Arc;
use std::time::Duration;

use yr_proto::join_server::JoinServer;
use yr_proto::master_server::MasterServer;

use crate::error::{Error, Result};
use crate::Shutdown;

mod functions;
mod instances;
mod nodes;
pub mod placement;
mod service;
mod state;
mod takeover;

pub use state::MasterState;

/// How long a create waits for resources and for the instance to come up, unless told.
const DEFAULT_WAIT: Duration = Duration::from_secs(30);
/// How often ended records are swept (and nodes rechecked without a change).
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// How a master is started.
pub struct MasterConfig {
    /// Where it serves gRPC (port 0: any free port).
    pub listen: std::net::SocketAddr,
    /// The etcd cluster holding its state.
    pub etcd_endpoints: Vec<String>,
    /// The address other components use to reach this master (empty: the bound address).
    pub advertise: String,
    /// What lets it sign joining nodes' certificates (None: `Join` is refused).
    pub join: Option<JoinAuthority>,
}

/// The cluster CA and the join token, with which the master admits new nodes.
pub struct JoinAuthority {
    pub ca_pem: String,
    pub ca_key_pem: String,
    pub token: crate::pki::JoinToken,
    /// The cluster secret's file text, which a joining node's data worker proves on its
    /// transfer port.
    pub cluster_secret: String,
}

/// Runs the master until `shutdown`; `on_ready` gets the bound address.
pub async fn run(
    config: MasterConfig,
    shutdown: Shutdown,
    on_ready: impl FnOnce(std::net::SocketAddr),
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| Error::io(format!("cannot listen on {}", config.listen), e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::io("the bound address", e))?;
    let mut config = config;
    if config.advertise.is_empty() {
        config.advertise = addr.to_string();
    }
    let state = MasterState::load(&config).await?;
    // Before serving: no create or report may race with fixing what the last master left.
    state.reconcile().await;
    tokio::spawn(Arc::clone(&state).watch_nodes(shutdown.clone()));
    on_ready(addr);
    let join = service::JoinService {
        authority: config.join,
        etcd_endpoints: config.etcd_endpoints.clone(),
    };
    crate::grpc_server()?
        .add_service(JoinServer::new(join))
        .add_service(tonic::service::interceptor::InterceptedService::new(
            MasterServer::new(service::Service(state)),
            yr_proto::tls::require_client_cert,
        ))
        .serve_with_incoming_shutdown(crate::incoming(listener), shutdown.wait_owned())
        .await
        .map_err(|e| Error::Internal(format!("serving gRPC on {addr}: {e}")))?;
    Ok(())
}
