//! The master's view of the cluster, rebuilt from etcd at start, and the one place an instance
//! record changes: [`MasterState::apply`] asks [`crate::lifecycle`] what an event does to the
//! record and writes the answer, to etcd first and then to the cache, under the cache's lock so
//! no two changes to records interleave.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::{Mutex, Notify};
use yr_proto::agent_client::AgentClient;
use yr_proto::{
    ClusterInfo, ClusterStatus, FunctionSpec, InstanceRecord, MasterRecord, NodeRecord,
};

use super::placement;
use super::MasterConfig;
use crate::error::{Error, Result};
use crate::etcd::{self, Meta, Mirror};
use crate::function::Spec;
use crate::lifecycle::{self, Event, Then, Transition};

/// What applying an event did to a record.
pub(super) struct Applied {
    /// The record after the event.
    pub record: InstanceRecord,
    /// What the master does next.
    pub then: Then,
    /// Whether the event changed the record (and so it was written).
    pub changed: bool,
}

/// Everything the master knows; shared by its gRPC handlers and its background tasks.
pub struct MasterState {
    pub(super) meta: Meta,
    pub(super) nodes: Mirror<NodeRecord>,
    /// Every instance record, as in etcd (the master is their only writer).
    pub(super) instances: Mutex<HashMap<String, InstanceRecord>>,
    /// Woken after every change to a record.
    pub(super) changed: Notify,
    /// Every node seen (mirrors `/yr/known-nodes/`), to tell dead nodes from unknown ones.
    pub(super) known_nodes: Mutex<HashSet<String>>,
    pub(super) info: ClusterInfo,
    agents: Mutex<HashMap<String, AgentClient<tonic::transport::Channel>>>,
    /// Held from choosing a node until the choice is recorded, so that two placements at once
    /// cannot both count the same free resources; also serialises deploys and pool admission.
    pub(super) placing: Mutex<()>,
}

impl MasterState {
    /// Connects to etcd and rebuilds the master's view from it.
    pub async fn load(config: &MasterConfig) -> Result<Arc<MasterState>> {
        let meta = Meta::connect(&config.etcd_endpoints).await?;
        let nodes = Mirror::start(meta.clone(), etcd::NODES).await?;
        let mut instances = HashMap::new();
        for r in meta.instances().await? {
            instances.insert(r.instance_id.clone(), r);
        }
        let known = meta.keys(etcd::KNOWN_NODES).await?;
        tracing::info!(
            instances = instances.len(),
            known_nodes = known.len(),
            "master state rebuilt from etcd"
        );
        Ok(Arc::new(MasterState {
            meta,
            nodes,
            instances: Mutex::new(instances),
            changed: Notify::new(),
            known_nodes: Mutex::new(known.into_iter().collect()),
            info: ClusterInfo {
                etcd_endpoints: config.etcd_endpoints.clone(),
                master_address: config.advertise.clone(),
                master_addresses: Vec::new(),
            },
            agents: Mutex::new(HashMap::new()),
            placing: Mutex::new(()),
        }))
    }

    /// Writes a new record as it is (nobody else knows its ID yet).
    pub(super) async fn save(&self, mut r: InstanceRecord) -> Result<InstanceRecord> {
        r.updated_unix_ms = etcd::now_ms();
        let mut all = self.instances.lock().await;
        self.meta
            .put(&etcd::instance_key(&r.instance_id), &r)
            .await?;
        all.insert(r.instance_id.clone(), r.clone());
        drop(all);
        self.changed.notify_waiters();
        Ok(r)
    }

    /// Applies `event` to instance `id`: the lifecycle decides, this writes (atomically: the
    /// cache lock is held across the etcd write, so no other change interleaves). `None` if
    /// there is no such instance. `spec` is the instance's function, needed by events that
    /// [`Event::may_fail`].
    pub(super) async fn apply(
        &self,
        id: &str,
        event: &Event,
        spec: Option<&Spec>,
    ) -> Result<Option<Applied>> {
        let mut all = self.instances.lock().await;
        let Some(cur) = all.get(id) else {
            return Ok(None);
        };
        let (mut record, then) = match lifecycle::apply(cur, event, spec) {
            Transition::Unchanged => {
                return Ok(Some(Applied {
                    record: cur.clone(),
                    then: Then::Nothing,
                    changed: false,
                }))
            }
            Transition::To { next, then } => (*next, then),
        };
        lifecycle::stamp(cur, &mut record, then, etcd::now_ms());
        self.meta.put(&etcd::instance_key(id), &record).await?;
        all.insert(id.to_string(), record.clone());
        drop(all);
        self.changed.notify_waiters();
        Ok(Some(Applied {
            record,
            then,
            changed: true,
        }))
    }

    /// The deployed function `name`, checked.
    pub(super) async fn function(&self, name: &str) -> Result<Spec> {
        let spec = self
            .meta
            .get::<FunctionSpec>(&etcd::function_key(name))
            .await?
            .ok_or_else(|| Error::NotFound(format!("function {name:?} is not deployed")))?;
        Spec::try_from(spec)
    }

    /// A client of the agent at `address`, connected once and kept.
    pub(super) async fn agent(
        &self,
        address: &str,
    ) -> Result<AgentClient<tonic::transport::Channel>> {
        if let Some(c) = self.agents.lock().await.get(address) {
            return Ok(c.clone());
        }
        let c = AgentClient::new(crate::channel(address)?);
        self.agents
            .lock()
            .await
            .insert(address.to_string(), c.clone());
        Ok(c)
    }

    /// The record of instance `id` as it is now.
    pub(super) async fn current(&self, id: &str) -> Option<InstanceRecord> {
        self.instances.lock().await.get(id).cloned()
    }

    /// Notes that node `id` exists, so that its disappearance reads as a death.
    pub(super) async fn remember_node(&self, id: &str) {
        if self.known_nodes.lock().await.insert(id.to_string()) {
            if let Err(e) = self.meta.put_raw(&etcd::known_node_key(id), "").await {
                tracing::warn!(node = %id, "cannot remember the node: {e}");
            }
        }
    }

    /// Known nodes that are not in `alive` (dead, or gone for good), sorted.
    pub(super) async fn known_but_not(&self, alive: &HashMap<String, NodeRecord>) -> Vec<String> {
        let mut missing: Vec<String> = self
            .known_nodes
            .lock()
            .await
            .iter()
            .filter(|id| !alive.contains_key(*id))
            .cloned()
            .collect();
        missing.sort();
        missing
    }

    /// Nodes (with what their instances reserve), dead nodes, functions and instances.
    pub async fn status(&self) -> Result<ClusterStatus> {
        let alive = self.nodes.snapshot();
        let mut nodes: Vec<NodeRecord> = alive.values().cloned().collect();
        let instances: Vec<InstanceRecord> = {
            let mut v: Vec<_> = self.instances.lock().await.values().cloned().collect();
            v.sort_by(|a, b| {
                a.function
                    .cmp(&b.function)
                    .then(a.instance_id.cmp(&b.instance_id))
            });
            v
        };
        for n in &mut nodes {
            n.used = Some(placement::used_on(&instances, &n.node_id));
        }
        nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        let dead = self.known_but_not(&alive).await;
        let mut functions = self.meta.functions().await?;
        functions.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(ClusterStatus {
            nodes,
            dead_nodes: dead,
            functions,
            instances,
            masters: self.masters().await?,
        })
    }

    /// Every registered master, the active one (the election's holder) first and marked.
    pub async fn masters(&self) -> Result<Vec<MasterRecord>> {
        let leader = crate::election::leader(&self.meta, crate::election::MASTER).await?;
        let mut masters: Vec<MasterRecord> = self.meta.list(etcd::MASTERS).await?;
        for m in &mut masters {
            m.active = leader.as_deref() == Some(m.address.as_str());
        }
        masters.sort_by(|a, b| b.active.cmp(&a.active).then(a.node_id.cmp(&b.node_id)));
        Ok(masters)
    }

    /// What a client needs to find the cluster: etcd, this master, and every master.
    pub async fn info(&self) -> ClusterInfo {
        let mut info = self.info.clone();
        match self.masters().await {
            Ok(m) => info.master_addresses = m.into_iter().map(|m| m.address).collect(),
            Err(e) => tracing::warn!("cannot list the masters: {e}"),
        }
        if info.master_addresses.is_empty() {
            info.master_addresses = vec![info.master_address.clone()];
        }
        info
    }
}
