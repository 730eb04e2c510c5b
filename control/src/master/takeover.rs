//! Reconciliation when a master starts: each instance record is checked against what its node's
//! agent runs, and fixed as [`crate::reconcile::decide`] says; processes no record accounts for
//! are stopped. Runs before the master serves, so no create or report races with it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use yr_proto::{Empty, InstanceRef, InstanceState, NodeRecord};

use super::state::MasterState;
use crate::etcd;
use crate::lifecycle::{self, Event, News, Report};
use crate::reconcile::{self, Fix, OnNode};

/// How long a master waits for one agent's list before leaving that node's records as they are.
const LIST_TIMEOUT: Duration = Duration::from_secs(3);

/// What reconciliation did, for the log and for tests reading it.
#[derive(Debug, Default)]
pub(super) struct Reconciled {
    pub checked: usize,
    pub fixed: usize,
    pub orphans_stopped: usize,
    pub nodes_unanswered: usize,
}

impl MasterState {
    /// Reconciles every record with the processes the alive nodes run.
    pub(super) async fn reconcile(self: &Arc<Self>) -> Reconciled {
        let alive = self.nodes.snapshot();
        let lists = futures::future::join_all(alive.values().map(|n| self.list_on(n))).await;
        let mut out = Reconciled::default();
        let mut running: HashMap<String, HashMap<String, u32>> = HashMap::new();
        for (node, list) in alive.keys().zip(lists) {
            match list {
                Some(l) => {
                    running.insert(node.clone(), l);
                }
                None => out.nodes_unanswered += 1,
            }
        }
        let records: Vec<_> = self.instances.lock().await.values().cloned().collect();
        for r in records {
            // A record with no node yet is judged without one; one on a dead or silent node is
            // left to the node watch.
            let on_node = if r.node_id.is_empty() {
                OnNode::Gone
            } else {
                let Some(list) = running.get_mut(&r.node_id) else {
                    continue;
                };
                match list.remove(&r.instance_id) {
                    Some(pid) => OnNode::Runs { pid },
                    None => OnNode::Gone,
                }
            };
            out.checked += 1;
            let fix = reconcile::decide(&r, on_node);
            if fix != Fix::Keep {
                out.fixed += 1;
                tracing::info!(instance = %r.instance_id, state = lifecycle::state_name(r.state), ?on_node, ?fix, "reconciling");
            }
            self.apply_fix(&r, on_node, fix, &alive).await;
        }
        // What is left in the lists runs with no record at all.
        for (node_id, list) in running {
            for id in list.into_keys() {
                tracing::warn!(instance = %id, node = %node_id, "stopping a process no record accounts for");
                out.orphans_stopped += 1;
                if let Some(n) = alive.get(&node_id) {
                    self.stop_on(n, &id);
                }
            }
        }
        tracing::info!(
            checked = out.checked,
            fixed = out.fixed,
            orphans_stopped = out.orphans_stopped,
            nodes_unanswered = out.nodes_unanswered,
            "instance records reconciled with the nodes"
        );
        out
    }

    async fn apply_fix(
        self: &Arc<Self>,
        r: &yr_proto::InstanceRecord,
        on_node: OnNode,
        fix: Fix,
        alive: &HashMap<String, NodeRecord>,
    ) {
        let id = r.instance_id.as_str();
        let report = |news| Event::Reported(Report { news });
        let result = match fix {
            Fix::Keep => Ok(()),
            Fix::Running { pid } => self
                .handle(id, report(News::Running { pid }))
                .await
                .map(|_| ()),
            Fix::Failed(error) => self
                .handle(id, report(News::Failed { error }))
                .await
                .map(|_| ()),
            Fix::Exited => self.apply(id, &Event::Stopped, None).await.map(|_| ()),
            Fix::Fatal(why) => {
                let r2 = self.apply(id, &Event::Unplaceable { why }, None).await;
                self.release_name(r).await;
                r2.map(|_| ())
            }
            Fix::Stop => {
                if let Some(n) = alive.get(&r.node_id) {
                    self.stop_on(n, id);
                }
                Ok(())
            }
            Fix::Restart => {
                if let (OnNode::Runs { .. }, Some(n)) = (on_node, alive.get(&r.node_id)) {
                    self.stop_now(n, id).await;
                }
                match self.function(&r.function).await {
                    Ok(spec) => {
                        self.restart(r.clone(), spec);
                        Ok(())
                    }
                    Err(e) => {
                        let why = format!("cannot restart after a master change: {e}");
                        let r2 = self.apply(id, &Event::Unplaceable { why }, None).await;
                        self.release_name(r).await;
                        r2.map(|_| ())
                    }
                }
            }
        };
        if let Err(e) = result {
            tracing::warn!(instance = %id, "cannot reconcile: {e}");
        }
    }

    /// The processes node `n` runs (instance → pid), or `None` if its agent does not answer.
    async fn list_on(&self, n: &NodeRecord) -> Option<HashMap<String, u32>> {
        let mut agent = self.agent(&n.agent_address).await.ok()?;
        match tokio::time::timeout(LIST_TIMEOUT, agent.list_instances(Empty {})).await {
            Ok(Ok(reply)) => Some(
                reply
                    .into_inner()
                    .instances
                    .into_iter()
                    .map(|i| (i.instance_id, i.pid))
                    .collect(),
            ),
            Ok(Err(e)) => {
                tracing::warn!(node = %n.node_id, "cannot list its processes: {e}");
                None
            }
            Err(_) => {
                tracing::warn!(node = %n.node_id, "its agent did not list its processes in time");
                None
            }
        }
    }

    async fn stop_now(&self, n: &NodeRecord, id: &str) {
        if let Ok(mut agent) = self.agent(&n.agent_address).await {
            let req = InstanceRef {
                instance_id: id.to_string(),
                name: String::new(),
            };
            if let Err(e) = agent.stop_instance(req).await {
                tracing::warn!(instance = %id, "cannot stop its process: {e}");
            }
        }
    }

    /// Stops a process in the background (a stop waits out the process's grace period).
    fn stop_on(self: &Arc<Self>, n: &NodeRecord, id: &str) {
        let (this, n, id) = (Arc::clone(self), n.clone(), id.to_string());
        tokio::spawn(async move { this.stop_now(&n, &id).await });
    }

    async fn release_name(&self, r: &yr_proto::InstanceRecord) {
        let now = self.current(&r.instance_id).await;
        let ended = now
            .as_ref()
            .is_some_and(|r| lifecycle::state_of(r) == InstanceState::Fatal);
        if ended && !r.name.is_empty() {
            if let Err(e) = self
                .meta
                .delete(&etcd::name_key(&r.function, &r.name))
                .await
            {
                tracing::warn!(instance = %r.instance_id, "cannot release the name {:?}: {e}", r.name);
            }
        }
    }
}
