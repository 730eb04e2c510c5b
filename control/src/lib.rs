//! The control plane, organised by service. Each service is a library module with an async
//! `run` entry; `yr component NAME` runs one as its own process.
//!
//! - [`master`]: the function master, the only writer of instance records: deploys functions,
//!   places instances ([`master::placement`]) and applies the lifecycle's decisions.
//! - [`scheduler`]: keeps each function's pool between its minimum and maximum.
//! - [`proxy`]: one per node; routes calls to instances and hosts the instance socket.
//! - [`agent`]: one per node; registers the node, starts and stops function processes
//!   ([`agent::package`] unpacks their code, [`agent::procstat`] measures them).
//! - [`rest`]: the HTTP side: frontend (calls), meta (functions), data, openapi, metrics.
//! - [`collector`]: one per node; samples the node, its arena, instances, components and calls
//!   and serves them (Prometheus `/metrics`, JSON history, instance logs) behind its token.
//! - [`dashboard`]: the cluster's web page (master nodes), fed by the master's Status and the
//!   nodes' collectors.
//!
//! Shared pieces, which import no service: [`etcd`] (key layout and typed access), [`pki`] (the
//! cluster CA, node certificates, the join token), [`error`] (the one error type and its gRPC
//! mapping), [`lifecycle`] (the pure instance state machine), [`function`] (the function-name
//! and path-name rules and validated specs), [`secret`] (the node secret behind the instance
//! socket's hellos) and [`election`] (the etcd-lease election of the active master and
//! scheduler). Every client of "the master" goes through [`master_channel`], which knows every
//! master and follows a failover.

pub mod agent;
pub mod collector;
pub mod dashboard;
pub mod election;
pub mod error;
pub mod etcd;
pub mod function;
pub mod http_client;
pub mod lifecycle;
pub mod master;
pub mod pki;
pub mod proxy;
pub mod reconcile;
pub mod rest;
pub mod scheduler;
pub mod secret;

use std::sync::Arc;

/// A shutdown signal shared by a component's tasks: set once, observed by all.
#[derive(Clone, Default)]
pub struct Shutdown {
    inner: Arc<(std::sync::atomic::AtomicBool, tokio::sync::Notify)>,
}

impl Shutdown {
    /// A signal not yet set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the signal and wakes everyone waiting for it.
    pub fn trigger(&self) {
        self.inner
            .0
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.inner.1.notify_waiters();
    }

    /// Whether the signal has been set.
    pub fn is_set(&self) -> bool {
        self.inner.0.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Resolves once `trigger` has been called (at once if it already was).
    pub async fn wait(&self) {
        loop {
            let n = self.inner.1.notified();
            if self.is_set() {
                return;
            }
            n.await;
        }
    }

    /// [`Shutdown::wait`] on an owned handle, for APIs that take a `'static` future.
    pub async fn wait_owned(self) {
        self.wait().await
    }
}

/// A gRPC channel to `address` (host:port) that connects on first use: mutual TLS with this
/// process's node credentials once they are installed ([`yr_proto::tls`]).
pub fn channel(address: &str) -> error::Result<tonic::transport::Channel> {
    let endpoint = yr_proto::tls::endpoint(address)
        .map_err(|e| error::Error::invalid("address", e))?
        .connect_timeout(std::time::Duration::from_secs(3))
        .tcp_nodelay(true);
    Ok(endpoint.connect_lazy())
}

/// The channel through which clients reach "the master": `addresses` lists every master
/// (host:port, comma-separated), and calls go to the one that accepts connections (standbys do
/// not), moving on when it fails ([`yr_proto::failover`]).
pub fn master_channel(addresses: &str) -> error::Result<MasterChannel> {
    let list = master_addresses(addresses);
    yr_proto::failover::FailoverChannel::new(&list, |a| {
        Ok(yr_proto::tls::endpoint(a)?
            .connect_timeout(std::time::Duration::from_secs(3))
            .tcp_nodelay(true)
            .connect_lazy())
    })
    .inspect(|c| c.follow(FOLLOW_MASTERS_EVERY))
    .map_err(|e| error::Error::invalid("master address", e))
}

/// How often a master channel asks the active master for the list of masters.
const FOLLOW_MASTERS_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// A comma-separated list of master addresses, trimmed, without empty entries or repeats.
pub fn master_addresses(addresses: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for a in addresses
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
    {
        if !out.iter().any(|o| o == a) {
            out.push(a.to_string());
        }
    }
    out
}

/// Keeps `channel`'s masters current from those registered in etcd (`/yr/masters/`), plus
/// those it was given, for as long as the process runs: components that hold an etcd client
/// learn of a standby master even if the master they were given dies before telling them.
pub fn follow_masters(meta: etcd::Meta, channel: MasterChannel) {
    let given = channel.addresses();
    tokio::spawn(async move {
        let mut mirror =
            match etcd::Mirror::<yr_proto::MasterRecord>::start(meta, etcd::MASTERS).await {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!("cannot watch the registered masters: {e}");
                    return;
                }
            };
        loop {
            let mut list = given.clone();
            list.extend(mirror.snapshot().values().map(|m| m.address.clone()));
            channel.set_addresses(&list);
            mirror.changed().await;
        }
    });
}

/// See [`master_channel`].
pub type MasterChannel = yr_proto::failover::FailoverChannel;

/// A gRPC server builder: with TLS (client certificates verified against the cluster CA) once
/// node credentials are installed, plaintext otherwise. Services other than `Join` go behind
/// [`yr_proto::tls::require_client_cert`].
pub fn grpc_server() -> error::Result<tonic::transport::Server> {
    let b = tonic::transport::Server::builder().tcp_nodelay(true);
    match yr_proto::tls::installed() {
        Some(c) => b
            .tls_config(c.server())
            .map_err(|e| error::Error::Internal(format!("TLS server config: {e}"))),
        None => Ok(b),
    }
}

/// The connections accepted on `listener`, with Nagle's algorithm off. A gRPC server given its
/// own listener does not set TCP_NODELAY on what it accepts; without it a small reply written
/// while an earlier segment is unacknowledged waits for the peer's delayed ACK (~40 ms).
pub fn incoming(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use futures::StreamExt;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|conn| {
        if let Ok(c) = &conn {
            if let Err(e) = c.set_nodelay(true) {
                tracing::debug!("cannot set TCP_NODELAY: {e}");
            }
        }
        conn
    })
}
