//! Bootstrap: a driver's connection to a cluster, and the [`Yr`] handle it gets.
//!
//! A driver finds its cluster through a session file or the master, then holds gRPC clients of
//! the master and of its node's proxy, a client of its node's data worker, and a tokio runtime
//! of its own on which every call runs.
//!
//! Invariants: a driver is used from plain threads: every blocking entry point refuses to run
//! inside an async context (where blocking would stall or panic) with an error instead. The
//! code stamp (this executable's size and modification time) is part of every deployed name, so
//! a rebuilt program never shares function pools with an older build.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use yr_datastore::Client;
use yr_proto::master_client::MasterClient;
use yr_proto::proxy_client::ProxyClient;
use yr_proto::Empty;

use super::Builder;
use crate::error::Error;

/// Largest gRPC message a driver sends or takes.
const MAX_MESSAGE: usize = 256 << 20;

type Channel = tonic::transport::Channel;

/// A connected driver. Cheap to clone (clones share one connection); dropping the last clone
/// (instance handles hold one) ends the calls still in flight.
#[derive(Clone)]
pub struct Yr {
    pub(super) d: Arc<Driver>,
}

/// What a driver holds while connected.
pub(super) struct Driver {
    /// Prefix of deployed function names.
    pub app: String,
    /// This executable: the code every deployed function runs.
    pub exe: String,
    /// Hash of the executable's path, size and modification time.
    pub code_stamp: u64,
    /// The node this driver runs on.
    pub node_id: String,
    /// The master, through a channel that follows a failover to a standby master.
    pub master: MasterClient<yr_proto::failover::FailoverChannel>,
    pub local_proxy: ProxyClient<Channel>,
    /// Proxy clients by address.
    pub proxies: parking_lot::Mutex<HashMap<String, ProxyClient<Channel>>>,
    /// Data worker transfer address -> (node ID, proxy address).
    pub nodes: parking_lot::Mutex<HashMap<String, (String, String)>>,
    /// This node's data worker.
    pub store: Client,
    /// Deployed function names (variants included).
    pub deployed: parking_lot::Mutex<HashSet<String>>,
    /// Functions and classes the program registers.
    pub registered: HashSet<String>,
    /// Always `Some` until the driver is dropped (see its `Drop`).
    pub rt: Option<tokio::runtime::Runtime>,
}

/// A node of the cluster, as [`Yr::nodes`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// Its ID.
    pub node_id: String,
    /// Its host.
    pub hostname: String,
    /// Its labels.
    pub labels: std::collections::BTreeMap<String, String>,
}

/// Where a driver connects.
struct Endpoints {
    master: String,
    proxy: String,
    socket: String,
    node_id: String,
}

impl Builder {
    /// Connects a driver to the cluster of the session at `session` (a
    /// session folder or its `session.json`).
    pub fn connect(self, session: PathBuf) -> Result<Yr, Error> {
        let s =
            crate::session::Session::load(&session).map_err(|e| Error::Connect(e.to_string()))?;
        // The driver speaks as this node: its gRPC goes out with the node's certificate.
        s.install_tls().map_err(Error::Connect)?;
        self.connect_to(
            driver_runtime()?,
            Endpoints {
                master: s.master_address,
                proxy: s.proxy_address,
                socket: s.data_socket.to_string_lossy().into_owned(),
                node_id: s.node_id,
            },
        )
    }

    /// Connects a driver through the master at `master` (host:port), to
    /// the first live node on this host (its proxy and data worker).
    pub fn connect_master(self, master: &str) -> Result<Yr, Error> {
        let rt = driver_runtime()?;
        install_node_tls()?;
        let status = rt
            .block_on(async {
                let mut m = MasterClient::new(connect_master(master).await?);
                m.status(Empty {})
                    .await
                    .map_err(|e| Error::Connect(format!("master {master}: {}", e.message())))
            })?
            .into_inner();
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        let node = status
            .nodes
            .iter()
            .filter(|n| !status.dead_nodes.contains(&n.node_id))
            .find(|n| n.hostname == host)
            .ok_or_else(|| {
                Error::Connect(format!(
                    "the cluster of master {master} has no live node on this host ({host}); \
                     a driver needs one for its data worker: run `yr start --worker \
                     --master-address {master}` here"
                ))
            })?;
        self.connect_to(
            rt,
            Endpoints {
                master: master.to_string(),
                proxy: node.proxy_address.clone(),
                socket: node.data_socket.clone(),
                node_id: node.node_id.clone(),
            },
        )
    }

    /// Connects a driver from inside a function process (for calls a function makes itself),
    /// through the master, proxy and data worker its agent named in its environment.
    pub fn connect_in_function(self) -> Result<Yr, Error> {
        yr_proto::tls::install_from_env().map_err(Error::Connect)?;
        let env = |k: &'static str| std::env::var(k).map_err(|_| Error::NotStartedByAgent(k));
        let endpoints = Endpoints {
            master: env("YR_MASTER_ADDRESS")?,
            proxy: env("YR_PROXY_ADDRESS")?,
            socket: env("YR_DATA_SOCKET")?,
            node_id: env("YR_NODE_ID")?,
        };
        self.connect_to(driver_runtime()?, endpoints)
    }

    fn connect_to(self, rt: tokio::runtime::Runtime, e: Endpoints) -> Result<Yr, Error> {
        let Endpoints {
            master,
            proxy,
            socket,
            node_id,
        } = e;
        let exe = std::env::current_exe()
            .map_err(|e| Error::Connect(format!("cannot find this program's executable: {e}")))?;
        let stamp = std::fs::metadata(&exe)
            .map(|m| {
                let mt = m
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos());
                (m.len(), mt)
            })
            .map_err(|e| Error::Connect(format!("cannot read {}: {e}", exe.display())))?;
        let (master_client, proxy_client) = rt.block_on(async {
            Ok::<_, Error>((
                MasterClient::new(connect_master(&master).await?)
                    .max_decoding_message_size(MAX_MESSAGE)
                    .max_encoding_message_size(MAX_MESSAGE),
                proxy_client(connect(&proxy).await?),
            ))
        })?;
        let store = Client::connect_named(&socket, "yr-driver")
            .map_err(|e| Error::Connect(format!("data worker: {e}")))?;
        let mut registered: HashSet<String> = self.functions.keys().cloned().collect();
        registered.extend(self.classes.keys().cloned());
        let mut h = std::collections::hash_map::DefaultHasher::new();
        stamp.hash(&mut h);
        exe.hash(&mut h);
        Ok(Yr {
            d: Arc::new(Driver {
                app: self.app,
                exe: exe.display().to_string(),
                code_stamp: h.finish(),
                node_id,
                master: master_client,
                local_proxy: proxy_client,
                proxies: parking_lot::Mutex::new(HashMap::new()),
                nodes: parking_lot::Mutex::new(HashMap::new()),
                store,
                deployed: parking_lot::Mutex::new(HashSet::new()),
                registered,
                rt: Some(rt),
            }),
        })
    }
}

fn driver_runtime() -> Result<tokio::runtime::Runtime, Error> {
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(Error::Connect(
            "a yr_runtime driver runs its own runtime and blocks: connect it from a plain \
             thread (or tokio::task::spawn_blocking), not from an async task"
                .into(),
        ));
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("yr-driver")
        .enable_all()
        .build()
        .map_err(|e| Error::Connect(format!("cannot start the driver's runtime: {e}")))
}

/// The credentials of a driver given only a master's address: those its agent gave it
/// (`YR_TLS_*`), else those of this host's newest session (`$YR_SESSION`, else `latest`).
fn install_node_tls() -> Result<(), Error> {
    if yr_proto::tls::install_from_env()
        .map_err(Error::Connect)?
        .is_some()
    {
        return Ok(());
    }
    let session = match std::env::var_os("YR_SESSION") {
        Some(s) => Ok(PathBuf::from(s)),
        None => crate::session::latest(),
    };
    let s = session
        .and_then(|s| crate::session::Session::load(&s))
        .map_err(|e| {
            Error::Connect(format!(
                "a driver given only a master's address needs this node's credentials: set \
             YR_SESSION to the session folder of the yr node on this host (or YR_TLS_CA, \
             YR_TLS_CERT and YR_TLS_KEY); {e}"
            ))
        })?;
    s.install_tls().map_err(Error::Connect)
}

/// A gRPC channel to `address` (host:port), connected now (mutual TLS with the node's
/// credentials, see `yr_proto::tls`).
pub(super) async fn connect(address: &str) -> Result<Channel, Error> {
    yr_proto::tls::endpoint(address)
        .map_err(Error::Connect)?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| Error::Connect(format!("cannot reach {address}: {e}")))
}

/// A channel to the master among `masters` (host:port, comma-separated) that accepts, which
/// follows a failover ([`yr_proto::failover`]); fails if none answers now.
pub(super) async fn connect_master(
    masters: &str,
) -> Result<yr_proto::failover::FailoverChannel, Error> {
    let list: Vec<String> = masters
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(String::from)
        .collect();
    let ch = yr_proto::failover::FailoverChannel::new(&list, |a| {
        Ok(yr_proto::tls::endpoint(a)?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .connect_lazy())
    })
    .map_err(|e| Error::Connect(format!("master {masters:?}: {e}")))?;
    // One try per master at most: a failed try moves the channel to one that accepts.
    let mut last = String::new();
    for _ in 0..list.len() {
        match MasterClient::new(ch.clone()).info(Empty {}).await {
            Ok(info) => {
                // Every master the active one knows, at once: a driver that learned only its
                // session's address would have no standby to turn to if the active master
                // died before the first refresh.
                let mut all = ch.addresses();
                all.extend(info.into_inner().master_addresses);
                ch.set_addresses(&all);
                ch.follow(Duration::from_secs(2));
                return Ok(ch);
            }
            Err(e) => last = e.message().to_string(),
        }
    }
    Err(Error::Connect(format!(
        "cannot reach the master at {masters}: {last}"
    )))
}

/// A proxy client that takes messages as large as a driver sends.
pub(super) fn proxy_client(ch: Channel) -> ProxyClient<Channel> {
    ProxyClient::new(ch)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
}

impl Driver {
    /// The driver's runtime.
    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        // Set at connect and taken only by `drop`.
        self.rt
            .as_ref()
            .expect("the driver's runtime lives as long as the driver")
    }

    /// Runs `f` on the driver's runtime from the caller's (blocking) thread.
    /// Refused inside an async context, where blocking would stall (or, in
    /// tokio, panic): call the driver from `spawn_blocking` or a plain thread.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> Result<F::Output, Error> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(Error::Connect(
                "yr_runtime's driver calls block; they cannot run on an async task (use \
                 tokio::task::spawn_blocking or a plain thread)"
                    .into(),
            ));
        }
        Ok(self.runtime().block_on(f))
    }
}

impl Drop for Driver {
    /// The last reference to a driver can go on one of its own runtime's threads (a call's task
    /// ending after the program let go of its handle), where a runtime cannot be dropped (it
    /// would wait for itself): there it is shut down in the background instead.
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                rt.shutdown_background();
            }
        }
    }
}

impl Yr {
    /// The cluster's live nodes (ID, with `yr.node` = ID among their labels).
    pub fn nodes(&self) -> Result<Vec<NodeInfo>, Error> {
        let mut master = self.d.master.clone();
        let status = self
            .d
            .block_on(master.status(Empty {}))?
            .map_err(|e| Error::Connect(format!("cluster status: {}", e.message())))?
            .into_inner();
        let mut nodes: Vec<NodeInfo> = status
            .nodes
            .into_iter()
            .filter(|n| !status.dead_nodes.contains(&n.node_id))
            .map(|n| NodeInfo {
                node_id: n.node_id,
                hostname: n.hostname,
                labels: n.labels.into_iter().collect(),
            })
            .collect();
        nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        Ok(nodes)
    }

    /// This driver's node.
    pub fn node_id(&self) -> &str {
        &self.d.node_id
    }

    /// This node's data worker (for stats and advanced use).
    pub fn store(&self) -> &Client {
        &self.d.store
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connecting_from_an_async_task_is_an_error_not_a_panic() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let r = rt.block_on(async { Builder::new("t").connect_master("127.0.0.1:1") });
        let e = r.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("not from an async task"), "{e}");
    }
}
