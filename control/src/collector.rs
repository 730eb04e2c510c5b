//! The collector: one per node (`yr component collector`), the node's observer. It samples the
//! node (cpu, memory), its data worker's arena, its instances' processes (cpu, RSS, state,
//! restarts), its components' health, the calls its proxy served and the requests its REST
//! services answered (from their own `/metrics`), keeps about an hour of
//! those samples in memory, and serves them over HTTP behind the collector token
//! ([`api::token`]): `/metrics` in the Prometheus text format for a real Prometheus, JSON
//! snapshots ([`api::Snapshot`]) for the dashboard, and instance logs (tail and follow).
//!
//! Invariants: usage figures that need no consistency (cpu, RSS, rates) live here, not in etcd;
//! etcd keeps records and leases. The collector only reads what other components own (etcd
//! records, `/proc`, the data worker's stats, instance log files), so its failure changes
//! nothing else on the node.

pub mod api;
mod expose;
pub mod history;
pub mod logs;
pub mod sample;
mod services;

pub use expose::render;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use yr_proto::InstanceRecord;

use api::Snapshot;

use crate::error::Error;
use crate::etcd::{self, Meta, Mirror};
use crate::rest::Problem;
use crate::Shutdown;

/// What a collector runs with.
#[derive(Clone, Debug)]
pub struct CollectorConfig {
    pub listen: SocketAddr,
    pub etcd_endpoints: Vec<String>,
    pub node_id: String,
    /// This node's data worker socket.
    pub data_socket: PathBuf,
    /// The agent's work folder (instance folders are `instances/<id>/` in it).
    pub work_dir: PathBuf,
    /// This node's session folder (its `session.json` lists the components); none: no
    /// component figures.
    pub session_dir: Option<PathBuf>,
    /// This node's proxy (host:port), asked for its call counters; empty: none.
    pub proxy_address: String,
    /// The certificate this node's REST services serve over HTTPS (none: plain HTTP), which
    /// the collector insists on when it reads their `/metrics`.
    pub rest_tls_cert: Option<PathBuf>,
    /// The collector token every route but `/healthz` requires ([`api::token`]).
    pub token: String,
}

/// How long the collector's etcd registration outlives it without keep-alives.
const LEASE_TTL: i64 = 6;

/// What the routes share.
struct Shared {
    config: CollectorConfig,
    hostname: String,
    history: Mutex<history::History>,
    /// The latest round's instances, calls and components (the node sample is in `history`).
    latest: Mutex<Snapshot>,
    logs: logs::Logs,
}

impl Shared {
    fn snapshot(&self, since: Option<u64>) -> Snapshot {
        let samples = self
            .history
            .lock()
            .map(|h| h.since(since))
            .unwrap_or_default();
        let latest = self.latest.lock().map(|l| l.clone()).unwrap_or_default();
        Snapshot {
            node_id: self.config.node_id.clone(),
            hostname: self.hostname.clone(),
            now_unix_ms: etcd::now_ms(),
            sample_every_ms: api::SAMPLE_EVERY_MS,
            samples,
            ..latest
        }
    }
}

/// Refuses a request without the collector token (all but `/healthz`).
async fn require_token(State(s): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    if req.uri().path() == api::HEALTHZ {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    if crate::rest::authorized(given, &s.config.token) {
        return next.run(req).await;
    }
    let detail = if given.is_none() {
        "this route needs `Authorization: Bearer <collector token>` (`yr token --collector` \
         prints it)"
    } else {
        "the collector token is wrong (`yr token --collector` prints the right one)"
    };
    let mut r = Problem::new(StatusCode::UNAUTHORIZED, 1001, detail).into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    r
}

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    // Only the latest sample is exposed: Prometheus keeps its own history.
    let mut snap = s.snapshot(None);
    if snap.samples.len() > 1 {
        snap.samples.drain(..snap.samples.len() - 1);
    }
    (
        [(header::CONTENT_TYPE, crate::rest::metrics::CONTENT_TYPE)],
        render(&snap),
    )
        .into_response()
}

#[derive(Deserialize)]
struct SnapshotQuery {
    since: Option<String>,
}

async fn snapshot(State(s): State<Arc<Shared>>, Query(q): Query<SnapshotQuery>) -> Response {
    let since = match q.since.as_deref().map(|v| v.trim().parse::<u64>()) {
        None => None,
        Some(Ok(v)) => Some(v),
        Some(Err(_)) => {
            return Problem::bad_request("since must be a time in Unix milliseconds")
                .into_response()
        }
    };
    axum::Json(s.snapshot(since)).into_response()
}

async fn instance_logs(
    State(s): State<Arc<Shared>>,
    Path(id): Path<String>,
    Query(q): Query<logs::LogQuery>,
) -> Response {
    s.logs.serve(&id, &q).await
}

/// The collector's routes over `shared`.
fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(api::HEALTHZ, get(|| async { "ok" }))
        .route(api::METRICS, get(metrics))
        .route(api::SNAPSHOT, get(snapshot))
        .route(api::LOGS, get(instance_logs))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&shared),
            require_token,
        ))
        .with_state(shared)
}

/// Samples every [`api::SAMPLE_EVERY_MS`] until `shutdown`.
async fn sample_loop(shared: Arc<Shared>, instances: Mirror<InstanceRecord>, shutdown: Shutdown) {
    let c = &shared.config;
    let mut sampler = sample::Sampler::new(
        c.data_socket.clone(),
        c.session_dir.clone(),
        &c.proxy_address,
        c.rest_tls_cert.as_deref(),
    );
    let mut tick = tokio::time::interval(Duration::from_millis(api::SAMPLE_EVERY_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait() => return,
        }
        let records: Vec<InstanceRecord> = instances
            .snapshot()
            .values()
            .filter(|r| r.node_id == c.node_id)
            .cloned()
            .collect();
        let mut round = sampler.round(records).await;
        let Ok(mut l) = shared.latest.lock() else {
            tracing::error!("the collector's state is poisoned; sampling stops");
            return;
        };
        // A source that did not answer this round: its last answer stands.
        if let Some(f) = round.functions {
            l.functions = f;
        }
        if let Some(c) = round.components {
            l.components = c;
        }
        l.instances = round.instances;
        round.node.calls_total = l.functions.iter().map(|f| f.calls_total).sum();
        round.node.errors_total = l.functions.iter().map(|f| f.errors_total).sum();
        round.node.rest_requests_total = round.rest.iter().map(|r| r.requests_total).sum();
        round.node.rest_errors_total = round.rest.iter().map(|r| r.errors_total).sum();
        l.rest = round.rest;
        drop(l);
        if let Ok(mut h) = shared.history.lock() {
            h.push(round.node);
        }
    }
}

/// Keeps `url` registered at [`etcd::collector_key`] under a lease of its own until shutdown,
/// registering again when the lease is lost; deletes it at shutdown.
async fn register(meta: Meta, node_id: String, url: String, shutdown: Shutdown) {
    let key = etcd::collector_key(&node_id);
    'lease: loop {
        if shutdown.is_set() {
            return;
        }
        let registered = match meta.grant_kept(LEASE_TTL).await {
            Ok(lease) => meta
                .put_raw_leased(&key, &url, lease.id())
                .await
                .map(|()| lease),
            Err(e) => Err(e),
        };
        let mut lease = match registered {
            Ok(lease) => lease,
            Err(e) => {
                tracing::warn!("cannot register the collector: {e}; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = shutdown.wait() => return,
                }
            }
        };
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                _ = shutdown.wait() => {
                    let _ = meta.delete(&key).await;
                    lease.revoke().await;
                    return;
                }
            }
            if !lease.renew().await {
                tracing::warn!("the collector's etcd lease was lost; registering again");
                continue 'lease;
            }
        }
    }
}

/// Runs the collector until `shutdown`; `on_ready` gets the bound address once it serves.
pub async fn run(
    config: CollectorConfig,
    shutdown: Shutdown,
    on_ready: impl FnOnce(SocketAddr),
) -> Result<(), Error> {
    let meta = Meta::connect(&config.etcd_endpoints).await?;
    let instances = Mirror::start(meta.clone(), etcd::INSTANCES).await?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| Error::io(format!("cannot listen on {}", config.listen), e))?;
    let address = listener
        .local_addr()
        .map_err(|e| Error::io("the collector's address", e))?;
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let shared = Arc::new(Shared {
        logs: logs::Logs::new(&config.work_dir, &config.node_id, shutdown.clone()),
        hostname,
        history: Mutex::new(history::History::default()),
        latest: Mutex::new(Snapshot::default()),
        config,
    });
    tokio::spawn(sample_loop(
        Arc::clone(&shared),
        instances,
        shutdown.clone(),
    ));
    let registration = tokio::spawn(register(
        meta,
        shared.config.node_id.clone(),
        format!("http://{address}"),
        shutdown.clone(),
    ));
    on_ready(address);
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY: {e}");
        }
    });
    let served = axum::serve(listener, router(shared))
        .with_graceful_shutdown(shutdown.clone().wait_owned())
        .await
        .map_err(|e| Error::io("serving the collector", e));
    // The registration is removed before the process ends.
    let _ = tokio::time::timeout(Duration::from_secs(2), registration).await;
    served
}
