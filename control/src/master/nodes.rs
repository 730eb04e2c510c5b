//! Nodes coming and going: the master remembers every node it has seen, treats a node whose
//! registration lapsed as dead (its instances get [`Event::NodeLost`]), forgets a node that left
//! on purpose, and sweeps the records of instances that ended long ago.

use std::collections::HashMap;
use std::sync::Arc;

use yr_proto::NodeRecord;

use super::state::MasterState;
use super::SWEEP_EVERY;
use crate::etcd;
use crate::lifecycle::{self, Event};
use crate::Shutdown;

impl MasterState {
    /// Until `shutdown`: on every change of the nodes (and every [`SWEEP_EVERY`]), tells the
    /// instances of vanished nodes that their node is lost, forgets departed nodes and sweeps
    /// ended records.
    pub(super) async fn watch_nodes(self: Arc<Self>, shutdown: Shutdown) {
        let mut nodes_rx = self.nodes.subscribe();
        loop {
            let alive = self.nodes.snapshot();
            for id in alive.keys() {
                self.remember_node(id).await;
            }
            self.forget_departed(&alive).await;
            let orphans: Vec<(String, String)> = self
                .instances
                .lock()
                .await
                .values()
                .filter(|r| {
                    !alive.contains_key(&r.node_id)
                        && lifecycle::affected_by_node_loss(r, &r.node_id)
                })
                .map(|r| (r.instance_id.clone(), r.node_id.clone()))
                .collect();
            for (id, node_id) in orphans {
                if let Err(e) = self.handle(&id, Event::NodeLost { node_id }).await {
                    tracing::warn!(instance = %id, "cannot record the loss of its node: {e}");
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
        for id in self.known_but_not(alive).await {
            if let Ok(None) = self.meta.get_raw(&etcd::known_node_key(&id)).await {
                tracing::info!(node = %id, "node left the cluster");
                self.known_nodes.lock().await.remove(&id);
            }
        }
    }

    /// Deletes the records of instances that ended more than [`lifecycle::RETAIN_ENDED`] ago.
    async fn sweep_ended(&self) {
        let now = etcd::now_ms();
        let mut all = self.instances.lock().await;
        let old: Vec<String> = all
            .values()
            .filter(|r| lifecycle::expired(r, now))
            .map(|r| r.instance_id.clone())
            .collect();
        for id in old {
            match self.meta.delete(&etcd::instance_key(&id)).await {
                Ok(()) => {
                    all.remove(&id);
                }
                Err(e) => {
                    tracing::warn!("cannot sweep ended instance {id}: {e}");
                    return;
                }
            }
        }
    }
}
