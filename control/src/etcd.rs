//! The cluster's metadata in etcd: key layout and typed access.
//!
//! Layout (all values are protobuf encodings of `yr_proto` messages):
//! - `/yr/nodes/<node_id>`: [`NodeRecord`], written by the node's agent under a lease it keeps
//!   alive; a node whose lease lapses disappears, and that is what "dead" means.
//! - `/yr/functions/<name>`: [`FunctionSpec`], written by the master (deploy/delete).
//! - `/yr/instances/<instance_id>`: [`InstanceRecord`], written only by the master, so that a
//!   record never goes backwards because two writers raced.
//! - `/yr/names/<function>/<name>`: the instance ID of a named (stateful) instance.
//! - `/yr/masters/<node_id>`: [`yr_proto::MasterRecord`], every master process (active or
//!   standby) under its election lease; `/yr/election/master` holds the active one's address
//!   (see the `election` module).
//! - `/yr/collectors/<node_id>`: the URL (UTF-8 text, `http://host:port` or `https://...`) of
//!   the node's collector, under the collector's own lease: how the dashboard finds every
//!   node's collector.
//! - `/yr/known-nodes/<node_id>`: empty; every node the master has seen, so that a node whose
//!   registration lapsed shows as dead rather than unknown. A node that leaves gracefully deletes
//!   its own key first.
//!
//! Everything the master acknowledges to a caller is in etcd before the reply, which is what lets
//! a restarted master rebuild its state from here alone.

use etcd_client::{Client, GetOptions, PutOptions};
use prost::Message;
use yr_proto::{FunctionSpec, InstanceRecord, NodeRecord};

use crate::error::{Error, Result};

pub const NODES: &str = "/yr/nodes/";
pub const FUNCTIONS: &str = "/yr/functions/";
pub const INSTANCES: &str = "/yr/instances/";
pub const NAMES: &str = "/yr/names/";
pub const KNOWN_NODES: &str = "/yr/known-nodes/";
pub const MASTERS: &str = "/yr/masters/";
pub const COLLECTORS: &str = "/yr/collectors/";

pub fn node_key(id: &str) -> String {
    format!("{NODES}{id}")
}
pub fn function_key(name: &str) -> String {
    format!("{FUNCTIONS}{name}")
}
pub fn instance_key(id: &str) -> String {
    format!("{INSTANCES}{id}")
}
pub fn name_key(function: &str, name: &str) -> String {
    format!("{NAMES}{function}/{name}")
}
pub fn known_node_key(id: &str) -> String {
    format!("{KNOWN_NODES}{id}")
}
pub fn master_key(node_id: &str) -> String {
    format!("{MASTERS}{node_id}")
}
pub fn collector_key(node_id: &str) -> String {
    format!("{COLLECTORS}{node_id}")
}

/// A cheap-to-clone handle on etcd with typed helpers.
///
/// Its client spreads requests over the etcd members it knows, and a background task keeps
/// that set to the members that accept connections ([`tend_endpoints`]): it adds members that
/// joined later (a standby master's) and drops one that stopped answering, which the client's
/// balancer would otherwise keep choosing (a dead member fails a share of all requests).
#[derive(Clone)]
pub struct Meta {
    client: Client,
    /// Held by every clone; the tending task stops once the last clone is gone.
    _alive: std::sync::Arc<()>,
}

/// How often a [`Meta`] checks which etcd members accept connections.
const TEND_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Keeps `client`'s endpoints (`active` now) to the members (of `given` and of the member
/// list) that accept connections, never fewer than one, until `alive` has no strong holder left.
async fn tend_endpoints(
    client: Client,
    active: Vec<String>,
    given: Vec<String>,
    alive: std::sync::Weak<()>,
) {
    let mut active = active;
    let mut known: Vec<String> = given;
    let mut first = true;
    loop {
        // The first pass at once: a member missing from the given list is learnt before the
        // one given can fail.
        if !first {
            tokio::time::sleep(TEND_EVERY).await;
        }
        first = false;
        if alive.strong_count() == 0 {
            return;
        }
        let listed = tokio::time::timeout(TEND_EVERY, client.clone().member_list()).await;
        if let Ok(Ok(m)) = listed {
            for member in m.members() {
                for u in member.client_urls() {
                    if !known.contains(u) {
                        known.push(u.clone());
                    }
                }
            }
        }
        for e in &known {
            let up = accepts(e).await;
            let listed = active.contains(e);
            if up && !listed {
                if client.add_endpoint(e).await.is_ok() {
                    tracing::info!(endpoint = %e, "etcd member reachable: using it");
                    active.push(e.clone());
                }
            } else if !up && listed && active.len() > 1 && client.remove_endpoint(e).await.is_ok() {
                tracing::warn!(endpoint = %e, "etcd member unreachable: not using it");
                active.retain(|a| a != e);
            }
        }
    }
}

/// Whether the host:port of etcd URL `url` accepts a TCP connection now.
async fn accepts(url: &str) -> bool {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .unwrap_or(url);
    let host_port = rest.split('/').next().unwrap_or(rest);
    tokio::time::timeout(
        std::time::Duration::from_millis(300),
        tokio::net::TcpStream::connect(host_port),
    )
    .await
    .is_ok_and(|c| c.is_ok())
}

/// How this process reaches an etcd the user runs (`--etcd-endpoints` with `--etcd-ca`,
/// `--etcd-cert`/`--etcd-key`, `--etcd-user`): set once at start, before the first connect.
#[derive(Clone, Default)]
pub struct EtcdAccess {
    /// TLS trusting the given CA, with the given client certificate if any.
    pub tls: Option<etcd_client::TlsOptions>,
    /// etcd's own authentication: user and password.
    pub user: Option<(String, String)>,
}

static ACCESS: std::sync::OnceLock<EtcdAccess> = std::sync::OnceLock::new();

/// Sets how this process reaches etcd (see [`EtcdAccess`]); the first setting wins.
pub fn set_access(access: EtcdAccess) {
    let _ = ACCESS.set(access);
}

impl Meta {
    /// Connects to etcd; fails (naming the endpoints) if none answers within a few seconds.
    pub async fn connect(endpoints: &[String]) -> Result<Meta> {
        let mut opts = etcd_client::ConnectOptions::new()
            .with_connect_timeout(std::time::Duration::from_secs(3))
            .with_timeout(std::time::Duration::from_secs(10));
        match ACCESS.get() {
            // An etcd the user runs, with the credentials they gave.
            Some(a) => {
                if let Some(t) = &a.tls {
                    opts = opts.with_tls(t.clone());
                }
                if let Some((user, password)) = &a.user {
                    opts = opts.with_user(user.clone(), password.clone());
                }
            }
            // The etcd `yr start` runs requires client certificates from the cluster CA: it is
            // reached with this node's credentials.
            None if endpoints.iter().any(|e| e.starts_with("https://")) => {
                if let Some(c) = yr_proto::tls::installed() {
                    opts = opts.with_tls(c.client());
                }
            }
            None => {}
        }
        // Members that refuse connections now are left out (the balancer would send them a
        // share of the requests); the tending task adds them back once they answer.
        let mut up = Vec::new();
        for e in endpoints {
            if accepts(e).await {
                up.push(e.clone());
            }
        }
        let first: &[String] = if up.is_empty() { endpoints } else { &up };
        let mut client = Client::connect(first, Some(opts))
            .await
            .map_err(|e| Error::etcd(format!("connect to {}", endpoints.join(",")), e))?;
        client
            .status()
            .await
            .map_err(|e| Error::etcd(format!("status of {}", endpoints.join(",")), e))?;
        let alive = std::sync::Arc::new(());
        tokio::spawn(tend_endpoints(
            client.clone(),
            first.to_vec(),
            endpoints.to_vec(),
            std::sync::Arc::downgrade(&alive),
        ));
        Ok(Meta {
            client,
            _alive: alive,
        })
    }

    pub fn client(&self) -> Client {
        self.client.clone()
    }

    pub async fn put<M: Message>(&self, key: &str, msg: &M) -> Result<()> {
        self.client
            .clone()
            .put(key, msg.encode_to_vec(), None)
            .await
            .map_err(|e| Error::etcd(format!("put {key}"), e))?;
        Ok(())
    }

    pub async fn put_leased<M: Message>(&self, key: &str, msg: &M, lease: i64) -> Result<()> {
        self.client
            .clone()
            .put(
                key,
                msg.encode_to_vec(),
                Some(PutOptions::new().with_lease(lease)),
            )
            .await
            .map_err(|e| Error::etcd(format!("put {key}"), e))?;
        Ok(())
    }

    pub async fn put_raw(&self, key: &str, value: &str) -> Result<()> {
        self.client
            .clone()
            .put(key, value, None)
            .await
            .map_err(|e| Error::etcd(format!("put {key}"), e))?;
        Ok(())
    }

    pub async fn put_raw_leased(&self, key: &str, value: &str, lease: i64) -> Result<()> {
        self.client
            .clone()
            .put(key, value, Some(PutOptions::new().with_lease(lease)))
            .await
            .map_err(|e| Error::etcd(format!("put {key}"), e))?;
        Ok(())
    }

    pub async fn get_raw(&self, key: &str) -> Result<Option<String>> {
        let r = self
            .client
            .clone()
            .get(key, None)
            .await
            .map_err(|e| Error::etcd(format!("get {key}"), e))?;
        Ok(r.kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    pub async fn get<M: Message + Default>(&self, key: &str) -> Result<Option<M>> {
        let r = self
            .client
            .clone()
            .get(key, None)
            .await
            .map_err(|e| Error::etcd(format!("get {key}"), e))?;
        match r.kvs().first() {
            Some(kv) => Ok(Some(M::decode(kv.value()).map_err(|e| {
                Error::Internal(format!("corrupt record at {key}: {e}"))
            })?)),
            None => Ok(None),
        }
    }

    /// Every record under `prefix`; records that do not decode are skipped with a warning rather
    /// than failing the listing (one bad key must not hide the cluster).
    pub async fn list<M: Message + Default>(&self, prefix: &str) -> Result<Vec<M>> {
        let r = self
            .client
            .clone()
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| Error::etcd(format!("list {prefix}"), e))?;
        let mut out = Vec::with_capacity(r.kvs().len());
        for kv in r.kvs() {
            match M::decode(kv.value()) {
                Ok(m) => out.push(m),
                Err(e) => {
                    tracing::warn!(key = %String::from_utf8_lossy(kv.key()), "skipping corrupt record: {e}")
                }
            }
        }
        Ok(out)
    }

    /// The client URLs of every etcd member (in member order), or `None` if etcd does not say.
    pub async fn member_urls(&self) -> Option<Vec<String>> {
        let r = self.client.clone().member_list().await.ok()?;
        let urls: Vec<String> = r
            .members()
            .iter()
            .flat_map(|m| m.client_urls().iter().cloned())
            .collect();
        (!urls.is_empty()).then_some(urls)
    }

    /// The keys under `prefix`, without the prefix (values are not read).
    pub async fn keys(&self, prefix: &str) -> Result<Vec<String>> {
        let r = self
            .client
            .clone()
            .get(
                prefix,
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await
            .map_err(|e| Error::etcd(format!("list {prefix}"), e))?;
        Ok(r.kvs()
            .iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(kv.key());
                key.get(prefix.len()..).unwrap_or_default().to_string()
            })
            .collect())
    }

    pub async fn delete(&self, key: &str) -> Result<()> {
        self.client
            .clone()
            .delete(key, None)
            .await
            .map_err(|e| Error::etcd(format!("delete {key}"), e))?;
        Ok(())
    }

    pub async fn nodes(&self) -> Result<Vec<NodeRecord>> {
        self.list(NODES).await
    }
    pub async fn functions(&self) -> Result<Vec<FunctionSpec>> {
        self.list(FUNCTIONS).await
    }
    pub async fn instances(&self) -> Result<Vec<InstanceRecord>> {
        self.list(INSTANCES).await
    }
}

impl Meta {
    /// A lease of `ttl` seconds with its keep-alive stream open, for a process that keeps a
    /// registration alive by renewing it in its own loop ([`KeptLease::renew`]).
    pub async fn grant_kept(&self, ttl: i64) -> Result<KeptLease> {
        let mut client = self.client();
        let id = client
            .lease_grant(ttl, None)
            .await
            .map_err(|e| Error::etcd("grant a lease", e))?
            .id();
        match client.lease_keep_alive(id).await {
            Ok((keeper, acks)) => Ok(KeptLease {
                id,
                client,
                keeper,
                acks,
            }),
            Err(e) => {
                // Not kept, so not left behind either (it would lapse on its own, later).
                let _ = client.lease_revoke(id).await;
                Err(Error::etcd("keep a lease alive", e))
            }
        }
    }
}

/// How long [`KeptLease::renew`] waits for etcd's answer.
const RENEW_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// A lease this process renews itself (the node's agent, the collector): the records put under
/// it vanish when the process stops renewing, which is how the cluster sees it gone. Once
/// [`KeptLease::renew`] says false the lease must be taken as lost (its records may be gone):
/// the owner grants a new one and puts its records again.
pub struct KeptLease {
    id: i64,
    client: Client,
    keeper: etcd_client::LeaseKeeper,
    acks: etcd_client::LeaseKeepAliveStream,
}

impl KeptLease {
    /// The lease's ID, to put records under.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// Renews the lease once; false if the stream broke, etcd did not answer within
    /// [`RENEW_WAIT`], or it says the lease expired.
    pub async fn renew(&mut self) -> bool {
        if self.keeper.keep_alive().await.is_err() {
            return false;
        }
        matches!(
            tokio::time::timeout(RENEW_WAIT, self.acks.message()).await,
            Ok(Ok(Some(ack))) if ack.ttl() > 0
        )
    }

    /// Ends the lease now (its records go at once), for a process leaving on purpose.
    pub async fn revoke(mut self) {
        let _ = self.client.lease_revoke(self.id).await;
    }
}

/// Milliseconds since the Unix epoch, for `updated_unix_ms` fields.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A live copy of every record under a prefix: loaded once, then kept current by an etcd watch
/// from the revision of that load, so no change between the two is missed. If the watch breaks
/// (etcd restarted, compaction), the mirror reloads and watches again.
pub struct Mirror<M> {
    rx: tokio::sync::watch::Receiver<std::sync::Arc<std::collections::HashMap<String, M>>>,
}

impl<M: Message + Default + Clone + Send + Sync + 'static> Mirror<M> {
    pub async fn start(meta: Meta, prefix: &'static str) -> Result<Mirror<M>> {
        let (map, rev) = load::<M>(&meta, prefix).await?;
        let (tx, rx) = tokio::sync::watch::channel(std::sync::Arc::new(map));
        tokio::spawn(async move {
            let mut rev = rev;
            loop {
                if let Err(e) = follow(&meta, prefix, rev, &tx).await {
                    tracing::warn!(prefix, "etcd watch ended: {e}; reloading");
                }
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                match load::<M>(&meta, prefix).await {
                    Ok((map, r)) => {
                        rev = r;
                        let _ = tx.send(std::sync::Arc::new(map));
                    }
                    Err(e) => tracing::warn!(prefix, "etcd reload failed: {e}"),
                }
            }
        });
        Ok(Mirror { rx })
    }

    /// The current records, keyed by the part of the key after the prefix.
    pub fn snapshot(&self) -> std::sync::Arc<std::collections::HashMap<String, M>> {
        self.rx.borrow().clone()
    }

    /// Waits until the mirror changes (or its watcher stops).
    pub async fn changed(&mut self) {
        let _ = self.rx.changed().await;
    }

    pub fn subscribe(&self) -> Mirror<M> {
        Mirror {
            rx: self.rx.clone(),
        }
    }
}

async fn load<M: Message + Default>(
    meta: &Meta,
    prefix: &str,
) -> Result<(std::collections::HashMap<String, M>, i64)> {
    let r = meta
        .client()
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .map_err(|e| Error::etcd(format!("list {prefix}"), e))?;
    let rev = r.header().map(|h| h.revision()).unwrap_or(0);
    let mut map = std::collections::HashMap::new();
    for kv in r.kvs() {
        let key = String::from_utf8_lossy(kv.key());
        if let Ok(m) = M::decode(kv.value()) {
            map.insert(key[prefix.len()..].to_string(), m);
        }
    }
    Ok((map, rev))
}

async fn follow<M: Message + Default + Clone>(
    meta: &Meta,
    prefix: &str,
    rev: i64,
    tx: &tokio::sync::watch::Sender<std::sync::Arc<std::collections::HashMap<String, M>>>,
) -> Result<()> {
    let opts = etcd_client::WatchOptions::new()
        .with_prefix()
        .with_start_revision(rev + 1);
    let mut stream = meta
        .client()
        .watch(prefix, Some(opts))
        .await
        .map_err(|e| Error::etcd(format!("watch {prefix}"), e))?;
    while let Some(resp) = stream
        .message()
        .await
        .map_err(|e| Error::etcd(format!("watch {prefix}"), e))?
    {
        if resp.canceled() {
            return Err(Error::Unavailable(format!(
                "etcd watch {prefix} canceled: {}",
                resp.cancel_reason()
            )));
        }
        if resp.events().is_empty() {
            continue;
        }
        let mut map = (**tx.borrow()).clone();
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let key = String::from_utf8_lossy(kv.key());
            let short = key.get(prefix.len()..).unwrap_or_default().to_string();
            match ev.event_type() {
                etcd_client::EventType::Put => {
                    if let Ok(m) = M::decode(kv.value()) {
                        map.insert(short, m);
                    }
                }
                etcd_client::EventType::Delete => {
                    map.remove(&short);
                }
            }
        }
        if tx.send(std::sync::Arc::new(map)).is_err() {
            return Ok(());
        }
    }
    Err(Error::Unavailable(format!(
        "etcd watch {prefix}: stream closed"
    )))
}
