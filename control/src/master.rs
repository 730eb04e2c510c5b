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

use crate::election;
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
    /// Its node's ID, under which it registers in `/yr/masters/` (empty: its address).
    pub node_id: String,
}

/// The cluster CA and the join token, with which the master admits new nodes.
pub struct JoinAuthority {
    pub ca_pem: String,
    pub ca_key_pem: String,
    pub token: crate::pki::JoinToken,
    /// The cluster secret's file text, which a joining node's data worker proves on its
    /// transfer port.
    pub cluster_secret: String,
    /// The REST access token, handed to standby masters so that one token works on every
    /// master's REST services (None: this master has none to hand).
    pub rest_token: Option<String>,
}

/// Runs the master until `shutdown`; `on_ready` gets the address it serves (or will serve,
/// once elected).
///
/// Every master process campaigns in the [`election::MASTER`] election. A standby registers
/// itself (`/yr/masters/<node_id>`), reports ready, and does not listen on its port until it
/// wins, so clients that know every master's address reach the active one by trying them
/// ([`crate::master_channel`]). The winner rebuilds its state from etcd and serves. A master
/// whose lease is lost stops serving at once and returns [`Error::Unavailable`] (its process
/// exits non-zero; restarted, it campaigns again as a standby).
pub async fn run(
    config: MasterConfig,
    shutdown: Shutdown,
    on_ready: impl FnOnce(std::net::SocketAddr),
) -> Result<()> {
    let mut config = config;
    // A standby must not accept on its port, so port 0 becomes a concrete free port now and is
    // bound only when elected.
    let listen = if config.listen.port() == 0 {
        let probe = std::net::TcpListener::bind(config.listen)
            .map_err(|e| Error::io(format!("cannot listen on {}", config.listen), e))?;
        probe
            .local_addr()
            .map_err(|e| Error::io("the bound address", e))?
    } else {
        config.listen
    };
    if config.advertise.is_empty() {
        config.advertise = listen.to_string();
    }
    if config.node_id.is_empty() {
        config.node_id = config.advertise.clone();
    }
    let meta = crate::etcd::Meta::connect(&config.etcd_endpoints).await?;
    let candidate = election::Candidate::new(&meta).await?;
    let record = yr_proto::MasterRecord {
        node_id: config.node_id.clone(),
        address: config.advertise.clone(),
        active: false,
    };
    meta.put_leased(
        &crate::etcd::master_key(&config.node_id),
        &record,
        candidate.lease(),
    )
    .await?;
    let mut on_ready = Some(on_ready);
    let won = candidate
        .campaign(election::MASTER, &config.advertise, &shutdown, || {
            if let Some(f) = on_ready.take() {
                f(listen)
            }
        })
        .await?;
    let lost = candidate.lost();
    let clock = candidate.clock();
    if !won {
        if lost.is_set() {
            return Err(Error::Unavailable(
                "this standby master lost its election lease".into(),
            ));
        }
        candidate.resign().await;
        return Ok(());
    }
    let started = std::time::Instant::now();
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Error::io(format!("cannot listen on {listen}"), e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::io("the bound address", e))?;
    // Everything the master runs stops on either signal.
    let stop = Shutdown::new();
    {
        let (stop, shutdown, lost) = (stop.clone(), shutdown.clone(), lost.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.wait() => {}
                _ = lost.wait() => {}
            }
            stop.trigger();
        });
    }
    let state = MasterState::load(&config).await?;
    // Before serving: no create or report may race with fixing what the last master left.
    state.reconcile().await;
    tokio::spawn(Arc::clone(&state).watch_nodes(stop.clone()));
    tracing::info!(
        address = %config.advertise,
        took_ms = started.elapsed().as_millis() as u64,
        "active master: serving"
    );
    if let Some(f) = on_ready.take() {
        f(addr);
    }
    let join = service::JoinService {
        authority: config.join,
        etcd_endpoints: config.etcd_endpoints.clone(),
        meta: meta.clone(),
    };
    let serve = crate::grpc_server()?
        .add_service(JoinServer::new(join))
        .add_service(tonic::service::interceptor::InterceptedService::new(
            MasterServer::new(service::Service(state)),
            move |req| {
                // Fenced by time: a master whose lease may have lapsed (paused, starved) answers
                // nothing, even before its keep-alive task notices.
                if !clock.holds() {
                    return Err(tonic::Status::unavailable(
                        "this master's election lease may have lapsed: it no longer serves",
                    ));
                }
                yr_proto::tls::require_client_cert(req)
            },
        ))
        .serve_with_incoming_shutdown(crate::incoming(listener), shutdown.clone().wait_owned());
    tokio::select! {
        r = serve => r.map_err(|e| Error::Internal(format!("serving gRPC on {addr}: {e}")))?,
        // Deposed: stop at once, without waiting for calls in flight.
        _ = lost.wait() => {}
    }
    if lost.is_set() {
        return Err(Error::Unavailable(
            "the active master lost its election lease and stopped serving".into(),
        ));
    }
    candidate.resign().await;
    Ok(())
}
