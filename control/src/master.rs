//! The function master: cluster topology, placement of instances, and their lifecycle.
//!
//! Invariants:
//! - The master is the only writer of instance records (`/yr/instances/`); agents and proxies
//!   report events to it ([`Master::report_instance`]) instead of writing etcd themselves.
//! - A record is written to etcd before the master acts on it or answers for it, so a restarted
//!   master rebuilds everything from etcd ([`MasterState::load`]).
//! - A node is alive while its agent's lease keeps `/yr/nodes/<id>` present. Instances on a node
//!   that disappears become FAILED and are restarted elsewhere while they have retries left.
//! - Resources in use on a node are the sum over the non-terminal instances placed there, derived
//!   from the records rather than counted separately, so they cannot drift.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio::sync::{Mutex, Notify};
use tonic::{Request, Response, Status};
use yr_proto::agent_client::AgentClient;
use yr_proto::master_server::{Master, MasterServer};
use yr_proto::*;

use crate::etcd::{self, Meta, Mirror};
use crate::lifecycle::{is_terminal, state_name};
use placement::Demand;

pub mod placement;
use crate::Shutdown;

/// How long a create waits for resources and for the instance to come up, unless told.
const DEFAULT_WAIT: Duration = Duration::from_secs(30);
/// How long an ended (EXITED or FATAL) instance stays visible in `yr status` before its record
/// is deleted; without this, pools that grow and shrink would fill etcd.
const RETAIN_ENDED: Duration = Duration::from_secs(600);
/// How often ended records are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// Key under which the master remembers every node it has seen (to tell dead from unknown).
pub const KNOWN_NODES: &str = "/yr/known-nodes/";

pub struct MasterConfig {
    pub listen: std::net::SocketAddr,
    pub etcd_endpoints: Vec<String>,
    /// The address other components use to reach this master.
    pub advertise: String,
}

pub struct MasterState {
    meta: Meta,
    nodes: Mirror<NodeRecord>,
    instances: Mutex<HashMap<String, InstanceRecord>>,
    changed: Notify,
    known_nodes: Mutex<HashSet<String>>,
    info: ClusterInfo,
    agents: Mutex<HashMap<String, AgentClient<tonic::transport::Channel>>>,
    /// Held from choosing a node until the choice is recorded, so that two placements at once
    /// cannot both count the same free resources.
    placing: Mutex<()>,
}

fn status_of(e: anyhow::Error) -> Status {
    Status::internal(format!("{e:#}"))
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
        let known: Vec<String> = meta
            .client()
            .get(
                KNOWN_NODES,
                Some(
                    etcd_client::GetOptions::new()
                        .with_prefix()
                        .with_keys_only(),
                ),
            )
            .await?
            .kvs()
            .iter()
            .map(|kv| String::from_utf8_lossy(kv.key())[KNOWN_NODES.len()..].to_string())
            .collect();
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
            },
            agents: Mutex::new(HashMap::new()),
            placing: Mutex::new(()),
        }))
    }

    /// Writes a record as it is (a new one: nobody else knows its ID yet).
    async fn save(&self, mut r: InstanceRecord) -> Result<InstanceRecord, Status> {
        r.updated_unix_ms = etcd::now_ms();
        let mut all = self.instances.lock().await;
        self.meta
            .put(&etcd::instance_key(&r.instance_id), &r)
            .await
            .map_err(status_of)?;
        all.insert(r.instance_id.clone(), r.clone());
        drop(all);
        self.changed.notify_waiters();
        Ok(r)
    }

    /// Changes instance `id` atomically: `f` sees the current record and returns whether to
    /// write it; no other change to any record interleaves between the read and the write
    /// (the cache lock is held across the etcd write). `None` if there is no such instance.
    async fn update(
        &self,
        id: &str,
        f: impl FnOnce(&mut InstanceRecord) -> bool,
    ) -> Result<Option<InstanceRecord>, Status> {
        let mut all = self.instances.lock().await;
        let Some(cur) = all.get(id) else {
            return Ok(None);
        };
        let mut r = cur.clone();
        if !f(&mut r) {
            return Ok(Some(r));
        }
        r.updated_unix_ms = etcd::now_ms();
        self.meta
            .put(&etcd::instance_key(id), &r)
            .await
            .map_err(status_of)?;
        all.insert(id.to_string(), r.clone());
        drop(all);
        self.changed.notify_waiters();
        Ok(Some(r))
    }

    async fn function(&self, name: &str) -> Result<FunctionSpec, Status> {
        self.meta
            .get::<FunctionSpec>(&etcd::function_key(name))
            .await
            .map_err(status_of)?
            .ok_or_else(|| Status::not_found(format!("function {name:?} is not deployed")))
    }

    async fn agent(&self, address: &str) -> Result<AgentClient<tonic::transport::Channel>, Status> {
        if let Some(c) = self.agents.lock().await.get(address) {
            return Ok(c.clone());
        }
        let channel = crate::channel(address)
            .map_err(|e| Status::internal(format!("agent address: {e:#}")))?;
        let c = AgentClient::new(channel);
        self.agents
            .lock()
            .await
            .insert(address.to_string(), c.clone());
        Ok(c)
    }

    /// Chooses a node for instance `id`, waiting up to `wait` for one to fit, and records the
    /// choice (the instance's resources count on that node from then on).
    async fn place(
        &self,
        id: &str,
        function: &FunctionSpec,
        demand: &Demand,
        wait: Duration,
    ) -> Result<NodeRecord, Status> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut nodes_rx = self.nodes.subscribe();
        loop {
            {
                let _placing = self.placing.lock().await;
                let nodes = self.nodes.snapshot();
                let instances = self.instances.lock().await.clone();
                match placement::choose(&nodes, &instances, &function.name, demand) {
                    Ok(n) => {
                        self.update(id, |r| {
                            r.node_id = n.node_id.clone();
                            r.proxy_address = n.proxy_address.clone();
                            true
                        })
                        .await?;
                        return Ok(n);
                    }
                    Err(why) => {
                        if tokio::time::Instant::now() >= deadline {
                            return Err(Status::resource_exhausted(why));
                        }
                    }
                }
            }
            // Resources free up when a node joins or an instance ends.
            tokio::select! {
                _ = nodes_rx.changed() => {}
                _ = self.changed.notified() => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// Asks the instance's node to start it; on failure the record says why. Does nothing for
    /// an instance that is being stopped or has ended meanwhile.
    async fn start_on_node(
        &self,
        id: &str,
        function: &FunctionSpec,
        node: &NodeRecord,
    ) -> Result<InstanceRecord, Status> {
        let mut go = false;
        let record = self
            .update(id, |r| {
                if is_terminal(r.state) || r.state == InstanceState::Exiting as i32 {
                    return false;
                }
                r.node_id = node.node_id.clone();
                r.proxy_address = node.proxy_address.clone();
                r.state = InstanceState::Creating as i32;
                go = true;
                true
            })
            .await?
            .ok_or_else(|| Status::not_found(format!("instance {id} vanished")))?;
        if !go {
            return Ok(record);
        }
        let mut agent = self.agent(&node.agent_address).await?;
        let reply = agent
            .start_instance(StartInstanceRequest {
                instance: Some(record.clone()),
                function: Some(function.clone()),
            })
            .await;
        let updated = match reply {
            Ok(r) => {
                let pid = r.into_inner().pid;
                // Only the pid: the proxy may already have reported RUNNING.
                self.update(id, |r| {
                    if r.pid == 0 && !is_terminal(r.state) {
                        r.pid = pid;
                        true
                    } else {
                        false
                    }
                })
                .await?
            }
            Err(e) => {
                let why = format!("node {} could not start it: {}", node.node_id, e.message());
                self.update(id, |r| {
                    if is_terminal(r.state) {
                        return false;
                    }
                    r.state = InstanceState::Fatal as i32;
                    r.error = why;
                    true
                })
                .await?
            }
        };
        updated.ok_or_else(|| Status::not_found(format!("instance {id} vanished")))
    }

    async fn current(&self, id: &str) -> Option<InstanceRecord> {
        self.instances.lock().await.get(id).cloned()
    }

    /// Waits until the instance is RUNNING or has ended, up to `wait`.
    async fn wait_running(&self, id: &str, wait: Duration) -> Result<InstanceRecord, Status> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.changed.notified();
            let r = self
                .current(id)
                .await
                .ok_or_else(|| Status::not_found(format!("instance {id} vanished")))?;
            if r.state == InstanceState::Running as i32 {
                return Ok(r);
            }
            if r.state == InstanceState::Fatal as i32 || r.state == InstanceState::Exited as i32 {
                return Err(Status::failed_precondition(format!(
                    "instance {id} of {} is {}: {}",
                    r.function,
                    state_name(r.state),
                    r.error
                )));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Status::deadline_exceeded(format!(
                    "instance {id} of {} not running after {:?} (state {})",
                    r.function,
                    wait,
                    state_name(r.state)
                )));
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    pub async fn create_instance(
        &self,
        req: CreateInstanceRequest,
    ) -> Result<InstanceRecord, Status> {
        let function = self.function(&req.function).await?;
        let wait = if req.wait_ms == 0 {
            DEFAULT_WAIT
        } else {
            Duration::from_millis(req.wait_ms as u64)
        };
        if !req.name.is_empty() {
            let key = etcd::name_key(&req.function, &req.name);
            if let Some(id) = self.meta.get_raw(&key).await.map_err(status_of)? {
                if let Some(r) = self.current(&id).await {
                    if !is_terminal(r.state) {
                        return self.wait_running(&id, wait).await;
                    }
                }
            }
        }
        let mut scheduling = function.scheduling.clone().unwrap_or_default();
        if let Some(extra) = &req.scheduling {
            scheduling.affinity.extend(extra.affinity.iter().cloned());
            scheduling.spread |= extra.spread;
            if !extra.preferred_node.is_empty() {
                scheduling.preferred_node = extra.preferred_node.clone();
            }
        }
        let resources = req
            .resources
            .clone()
            .or_else(|| function.resources.clone())
            .unwrap_or_default();
        let id = format!(
            "{}-{}",
            function.name,
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let stateful = req.stateful || !req.name.is_empty();
        {
            // Counting and recording under one lock: concurrent creates (the scheduler, several
            // proxies) cannot take a stateless pool past its maximum.
            let _placing = self.placing.lock().await;
            if !stateful {
                let alive = self
                    .instances
                    .lock()
                    .await
                    .values()
                    .filter(|r| r.function == function.name && !r.stateful && !is_terminal(r.state))
                    .count() as u32;
                if alive >= function.max_instances {
                    return Err(Status::resource_exhausted(format!(
                        "function {} already has {alive} instance(s), its max_instances",
                        function.name
                    )));
                }
            }
            self.save(InstanceRecord {
                instance_id: id.clone(),
                function: function.name.clone(),
                name: req.name.clone(),
                stateful,
                state: InstanceState::Scheduling as i32,
                resources: Some(resources.clone()),
                scheduling: Some(scheduling.clone()),
                ..Default::default()
            })
            .await?;
        }
        if !req.name.is_empty() {
            self.meta
                .put_raw(&etcd::name_key(&req.function, &req.name), &id)
                .await
                .map_err(status_of)?;
        }
        let demand = Demand {
            resources,
            scheduling,
        };
        let node = match self.place(&id, &function, &demand, wait).await {
            Ok(n) => n,
            Err(e) => {
                let why = e.message().to_string();
                self.update(&id, |r| {
                    r.state = InstanceState::Fatal as i32;
                    r.error = why;
                    true
                })
                .await?;
                return Err(e);
            }
        };
        self.remember_node(&node.node_id).await;
        self.start_on_node(&id, &function, &node).await?;
        self.wait_running(&id, wait).await
    }

    async fn remember_node(&self, id: &str) {
        if self.known_nodes.lock().await.insert(id.to_string()) {
            let _ = self.meta.put_raw(&format!("{KNOWN_NODES}{id}"), "").await;
        }
    }

    pub async fn kill_instance(&self, id_or_name: &str) -> Result<(), Status> {
        let r = {
            let all = self.instances.lock().await;
            all.get(id_or_name)
                .cloned()
                .or_else(|| {
                    all.values()
                        .find(|r| r.name == id_or_name && !is_terminal(r.state))
                        .cloned()
                })
                .ok_or_else(|| Status::not_found(format!("no instance {id_or_name:?}")))?
        };
        if is_terminal(r.state) {
            return Ok(());
        }
        let id = r.instance_id.clone();
        self.update(&id, |r| {
            if is_terminal(r.state) {
                return false;
            }
            r.state = InstanceState::Exiting as i32;
            true
        })
        .await?;
        if let Some(node) = self.nodes.snapshot().get(&r.node_id) {
            let mut agent = self.agent(&node.agent_address).await?;
            if let Err(e) = agent
                .stop_instance(InstanceRef {
                    instance_id: id.clone(),
                    name: String::new(),
                })
                .await
            {
                tracing::warn!(instance = %id, "stop failed: {}", e.message());
            }
        }
        self.update(&id, |r| {
            if is_terminal(r.state) {
                return false;
            }
            r.state = InstanceState::Exited as i32;
            true
        })
        .await?;
        if !r.name.is_empty() {
            let _ = self
                .meta
                .delete(&etcd::name_key(&r.function, &r.name))
                .await;
        }
        Ok(())
    }

    /// Applies an agent's or proxy's report.
    pub async fn report(self: &Arc<Self>, ev: InstanceEvent) -> Result<(), Status> {
        let s = ev.state;
        let mut then_fail = false;
        let found = self
            .update(&ev.instance_id, |r| {
                if is_terminal(r.state) {
                    return false; // late news about an instance that already ended
                }
                if ev.cpu_millis_used != 0 || ev.memory_bytes_used != 0 {
                    r.cpu_millis_used = ev.cpu_millis_used;
                    r.memory_bytes_used = ev.memory_bytes_used;
                }
                if s == InstanceState::Running as i32 {
                    if ev.pid != 0 {
                        r.pid = ev.pid;
                    }
                    if r.state == InstanceState::Creating as i32
                        || r.state == InstanceState::Failed as i32
                    {
                        r.state = s;
                        r.error.clear();
                    }
                } else if s == InstanceState::Exited as i32 {
                    r.state = InstanceState::Exited as i32;
                } else if s == InstanceState::Failed as i32 {
                    if r.state == InstanceState::Exiting as i32 {
                        r.state = InstanceState::Exited as i32;
                    } else {
                        r.error = ev.error.clone();
                        then_fail = true;
                    }
                }
                true
            })
            .await?;
        if found.is_none() {
            return Err(Status::not_found(format!("no instance {}", ev.instance_id)));
        }
        if then_fail {
            self.fail(&ev.instance_id).await?;
        }
        Ok(())
    }

    /// An instance died on its own (or with its node): restart it while it has retries left,
    /// else FATAL with the reason kept for callers.
    async fn fail(self: &Arc<Self>, id: &str) -> Result<(), Status> {
        let Some(cur) = self.current(id).await else {
            return Ok(());
        };
        let function = self.function(&cur.function).await.ok();
        let mut restart = false;
        let r = self
            .update(id, |r| {
                if is_terminal(r.state) || r.state == InstanceState::Exiting as i32 {
                    return false;
                }
                let Some(f) = &function else {
                    r.state = InstanceState::Fatal as i32;
                    r.error = format!("function {} was deleted; last: {}", r.function, r.error);
                    return true;
                };
                if r.restarts >= f.max_retries {
                    r.state = InstanceState::Fatal as i32;
                    r.error = format!(
                        "exited {} time(s), retry limit {} reached; last: {}",
                        r.restarts + 1,
                        f.max_retries,
                        r.error
                    );
                    tracing::warn!(instance = %r.instance_id, "FATAL: {}", r.error);
                    return true;
                }
                r.restarts += 1;
                r.state = InstanceState::Failed as i32;
                r.pid = 0;
                restart = true;
                true
            })
            .await?;
        let (Some(r), Some(function), true) = (r, function, restart) else {
            return Ok(());
        };
        tracing::info!(instance = %r.instance_id, restarts = r.restarts, "restarting: {}", r.error);
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let id = r.instance_id.clone();
            let node = match this.nodes.snapshot().get(&r.node_id).cloned() {
                Some(n) => Ok(n),
                None => {
                    let demand = Demand {
                        resources: r.resources.clone().unwrap_or_default(),
                        scheduling: r.scheduling.clone().unwrap_or_default(),
                    };
                    // Not counted on the dead node while it is placed again.
                    let _ = this
                        .update(&id, |r| {
                            r.node_id.clear();
                            true
                        })
                        .await;
                    this.place(&id, &function, &demand, DEFAULT_WAIT).await
                }
            };
            match node {
                Ok(node) => {
                    if let Err(e) = this.start_on_node(&id, &function, &node).await {
                        tracing::warn!("restart failed: {}", e.message());
                    }
                }
                Err(e) => {
                    let why = format!("cannot restart: {}", e.message());
                    let _ = this
                        .update(&id, |r| {
                            if is_terminal(r.state) {
                                return false;
                            }
                            r.state = InstanceState::Fatal as i32;
                            r.error = why;
                            true
                        })
                        .await;
                }
            }
        });
        Ok(())
    }

    /// Marks instances on vanished nodes FAILED (and so restarts them elsewhere).
    async fn watch_nodes(self: Arc<Self>, shutdown: Shutdown) {
        let mut nodes_rx = self.nodes.subscribe();
        loop {
            let alive = self.nodes.snapshot();
            for id in alive.keys() {
                self.remember_node(id).await;
            }
            self.forget_departed(&alive).await;
            let orphans: Vec<InstanceRecord> = self
                .instances
                .lock()
                .await
                .values()
                .filter(|r| {
                    !is_terminal(r.state)
                        && !r.node_id.is_empty()
                        && r.state != InstanceState::Failed as i32
                        && !alive.contains_key(&r.node_id)
                })
                .cloned()
                .collect();
            for orphan in orphans {
                let mut then_fail = false;
                let _ = self
                    .update(&orphan.instance_id, |r| {
                        if is_terminal(r.state) || alive.contains_key(&r.node_id) {
                            return false;
                        }
                        if r.state == InstanceState::Exiting as i32 {
                            r.state = InstanceState::Exited as i32;
                        } else {
                            r.error = format!("node {} is dead (its lease lapsed)", r.node_id);
                            tracing::warn!(instance = %r.instance_id, "{}", r.error);
                            then_fail = true;
                        }
                        true
                    })
                    .await;
                if then_fail {
                    let _ = self.fail(&orphan.instance_id).await;
                }
            }
            self.sweep_ended().await;
            tokio::select! {
                _ = nodes_rx.changed() => {}
                _ = tokio::time::sleep(SWEEP_EVERY) => {}
                _ = shutdown.wait() => return,
            }
        }
    }

    /// A node that stopped gracefully deleted its known-nodes key before its registration went:
    /// it left, it did not die, so `yr status` stops listing it.
    async fn forget_departed(&self, alive: &HashMap<String, NodeRecord>) {
        let missing: Vec<String> = self
            .known_nodes
            .lock()
            .await
            .iter()
            .filter(|id| !alive.contains_key(*id))
            .cloned()
            .collect();
        for id in missing {
            if let Ok(None) = self.meta.get_raw(&format!("{KNOWN_NODES}{id}")).await {
                tracing::info!(node = %id, "node left the cluster");
                self.known_nodes.lock().await.remove(&id);
            }
        }
    }

    /// Deletes the records of instances that ended more than [`RETAIN_ENDED`] ago.
    async fn sweep_ended(&self) {
        let cutoff = etcd::now_ms().saturating_sub(RETAIN_ENDED.as_millis() as u64);
        let mut all = self.instances.lock().await;
        let old: Vec<String> = all
            .values()
            .filter(|r| is_terminal(r.state) && r.updated_unix_ms < cutoff)
            .map(|r| r.instance_id.clone())
            .collect();
        for id in old {
            match self.meta.delete(&etcd::instance_key(&id)).await {
                Ok(()) => {
                    all.remove(&id);
                }
                Err(e) => {
                    tracing::warn!("cannot sweep ended instance {id}: {e:#}");
                    return;
                }
            }
        }
    }

    pub async fn status(&self) -> Result<ClusterStatus, Status> {
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
        let mut dead: Vec<String> = self
            .known_nodes
            .lock()
            .await
            .iter()
            .filter(|id| !alive.contains_key(*id))
            .cloned()
            .collect();
        dead.sort();
        let mut functions = self.meta.functions().await.map_err(status_of)?;
        functions.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(ClusterStatus {
            nodes,
            dead_nodes: dead,
            functions,
            instances,
        })
    }
}

/// Fills defaults and checks a function spec; the error names the field.
pub fn normalize_spec(mut spec: FunctionSpec) -> Result<FunctionSpec, Status> {
    let bad = |field: &str, why: String| Status::invalid_argument(format!("{field}: {why}"));
    crate::function::check_name(&spec.name)?;
    if spec.version.is_empty() {
        spec.version = "latest".into();
    }
    if spec.runtime.is_empty() {
        spec.runtime = "posix-custom-runtime".into();
    }
    if spec.runtime != "posix-custom-runtime" {
        return Err(bad(
            "runtime",
            format!(
                "{:?} is not supported (posix-custom-runtime is)",
                spec.runtime
            ),
        ));
    }
    if spec.code_path.is_empty() {
        return Err(bad("code_path", "is required".into()));
    }
    if !std::path::Path::new(&spec.code_path).is_absolute() {
        return Err(bad(
            "code_path",
            format!("{:?} must be an absolute path", spec.code_path),
        ));
    }
    if spec.handler.is_empty() {
        spec.handler = spec.name.clone();
    }
    let r = spec.resources.get_or_insert_with(Resources::default);
    if r.cpu_millis == 0 {
        r.cpu_millis = 100;
    }
    if r.memory_mib == 0 {
        r.memory_mib = 64;
    }
    if spec.concurrency == 0 {
        spec.concurrency = 1;
    }
    if spec.max_instances == 0 {
        spec.max_instances = spec.min_instances.max(8);
    }
    if spec.min_instances > spec.max_instances {
        return Err(bad(
            "min_instances",
            format!(
                "{} is more than max_instances {}",
                spec.min_instances, spec.max_instances
            ),
        ));
    }
    if spec.timeout_ms == 0 {
        spec.timeout_ms = 30_000;
    }
    if spec.created_unix_ms == 0 {
        spec.created_unix_ms = etcd::now_ms();
    }
    Ok(spec)
}

struct Service(Arc<MasterState>);

#[tonic::async_trait]
impl Master for Service {
    async fn deploy(&self, req: Request<DeployRequest>) -> Result<Response<DeployReply>, Status> {
        let req = req.into_inner();
        let spec = req
            .spec
            .ok_or_else(|| Status::invalid_argument("spec: missing"))?;
        let mut spec = normalize_spec(spec)?;
        let key = etcd::function_key(&spec.name);
        let _deploying = self.0.placing.lock().await;
        let old = self
            .0
            .meta
            .get::<FunctionSpec>(&key)
            .await
            .map_err(status_of)?;
        let existed = old.is_some();
        if existed && req.create_only {
            return Err(Status::already_exists(format!(
                "the function name {} already exists",
                spec.name
            )));
        }
        if !existed && req.update_only {
            return Err(Status::not_found(format!(
                "function {:?} is not deployed",
                spec.name
            )));
        }
        if let Some(old) = old {
            spec.created_unix_ms = old.created_unix_ms;
            spec.revision = old.revision + 1;
        }
        self.0.meta.put(&key, &spec).await.map_err(status_of)?;
        tracing::info!(function = %spec.name, created = !existed, "deployed");
        Ok(Response::new(DeployReply {
            spec: Some(spec),
            created: !existed,
        }))
    }

    async fn delete_function(&self, req: Request<FunctionRef>) -> Result<Response<Empty>, Status> {
        let name = req.into_inner().name;
        self.0.function(&name).await?;
        let ids: Vec<String> = self
            .0
            .instances
            .lock()
            .await
            .values()
            .filter(|r| r.function == name && !is_terminal(r.state))
            .map(|r| r.instance_id.clone())
            .collect();
        for id in ids {
            self.0.kill_instance(&id).await?;
        }
        self.0
            .meta
            .delete(&etcd::function_key(&name))
            .await
            .map_err(status_of)?;
        Ok(Response::new(Empty {}))
    }

    async fn list_functions(&self, _: Request<Empty>) -> Result<Response<FunctionList>, Status> {
        Ok(Response::new(FunctionList {
            functions: self.0.meta.functions().await.map_err(status_of)?,
        }))
    }

    async fn create_instance(
        &self,
        req: Request<CreateInstanceRequest>,
    ) -> Result<Response<InstanceReply>, Status> {
        let r = self.0.create_instance(req.into_inner()).await?;
        Ok(Response::new(InstanceReply { instance: Some(r) }))
    }

    async fn kill_instance(&self, req: Request<InstanceRef>) -> Result<Response<Empty>, Status> {
        let r = req.into_inner();
        let key = if r.instance_id.is_empty() {
            r.name
        } else {
            r.instance_id
        };
        self.0.kill_instance(&key).await?;
        Ok(Response::new(Empty {}))
    }

    async fn status(&self, _: Request<Empty>) -> Result<Response<ClusterStatus>, Status> {
        Ok(Response::new(self.0.status().await?))
    }

    async fn report_instance(
        &self,
        req: Request<InstanceEvent>,
    ) -> Result<Response<Empty>, Status> {
        self.0.report(req.into_inner()).await?;
        Ok(Response::new(Empty {}))
    }

    async fn info(&self, _: Request<Empty>) -> Result<Response<ClusterInfo>, Status> {
        Ok(Response::new(self.0.info.clone()))
    }
}

/// Runs the master until `shutdown`; `on_ready` gets the bound address.
pub async fn run(
    config: MasterConfig,
    shutdown: Shutdown,
    on_ready: impl FnOnce(std::net::SocketAddr),
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let addr = listener.local_addr()?;
    let mut config = config;
    if config.advertise.is_empty() {
        config.advertise = addr.to_string();
    }
    let state = MasterState::load(&config).await?;
    tokio::spawn(Arc::clone(&state).watch_nodes(shutdown.clone()));
    on_ready(addr);
    tonic::transport::Server::builder()
        .add_service(MasterServer::new(Service(state)))
        .serve_with_incoming_shutdown(crate::incoming(listener), shutdown.wait_owned())
        .await?;
    Ok(())
}
