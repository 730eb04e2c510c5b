//! Instances from birth to end: create (admit, place, start, wait until running), reports from
//! nodes, restarts, and stops. Each step turns into a [`lifecycle::Event`] applied through
//! [`MasterState::apply`]; what happens next is the lifecycle's [`Then`], carried out here.
//!
//! A restart waits until the time its record says (`restart_at_unix_ms`, decided by
//! [`lifecycle::restart_backoff`] when the failure was written), so a crash-looping instance is
//! restarted at growing intervals. An instance stopped during the pause is not started again
//! (its record has left FAILED, and the start event no longer applies).

use std::sync::Arc;
use std::time::Duration;

use yr_proto::{
    CreateInstanceRequest, InstanceEvent, InstanceRecord, InstanceRef, InstanceState, NodeRecord,
    SchedulingOptions, StartInstanceRequest,
};

use super::placement::{self, Demand};
use super::state::{Applied, MasterState};
use super::DEFAULT_WAIT;
use crate::error::{Error, Result};
use crate::etcd;
use crate::function::{Scheduling, Spec};
use crate::lifecycle::{self, Event, Readiness, Report, Then};

/// Whether a failed call to an agent never reached it (connection refused or broken), as
/// opposed to the agent refusing the start (bad code, a bad entrypoint).
fn agent_unreachable(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown
    ) && status.details().is_empty()
}

impl MasterState {
    /// Creates an instance of `req.function` and waits until it runs (or returns the named
    /// instance that already exists). Errors by kind: [`Error::NotFound`] (no such function),
    /// [`Error::MaxInstances`] (its pool is full), [`Error::InsufficientResources`] (no node
    /// fits within the wait), [`Error::InstanceFatal`] (it ended instead of running),
    /// [`Error::Timeout`] (it was not running after the wait).
    pub async fn create_instance(
        self: &Arc<Self>,
        req: CreateInstanceRequest,
    ) -> Result<InstanceRecord> {
        let function = self.function(&req.function).await?;
        let wait = if req.wait_ms == 0 {
            DEFAULT_WAIT
        } else {
            Duration::from_millis(req.wait_ms as u64)
        };
        if !req.name.is_empty() {
            let key = etcd::name_key(&req.function, &req.name);
            if let Some(id) = self.meta.get_raw(&key).await? {
                if let Some(r) = self.current(&id).await {
                    if !lifecycle::ended(&r) {
                        return self.wait_running(&id, wait).await;
                    }
                }
            }
        }
        let extra = req
            .scheduling
            .as_ref()
            .map(Scheduling::try_from)
            .transpose()?;
        let scheduling = function.scheduling().merged(extra);
        let resources = req
            .resources
            .clone()
            .unwrap_or_else(|| function.resources());
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
            let pool = self
                .instances
                .lock()
                .await
                .values()
                .filter(|r| lifecycle::in_pool(r, &function.name))
                .count() as u32;
            lifecycle::admit(&function, stateful, pool)?;
            self.save(InstanceRecord {
                instance_id: id.clone(),
                function: function.name.clone(),
                name: req.name.clone(),
                stateful,
                state: InstanceState::Scheduling.into(),
                resources: Some(resources.clone()),
                scheduling: Some(SchedulingOptions::from(&scheduling)),
                ..Default::default()
            })
            .await?;
        }
        if !req.name.is_empty() {
            self.meta
                .put_raw(&etcd::name_key(&req.function, &req.name), &id)
                .await?;
        }
        let demand = Demand {
            resources,
            scheduling,
        };
        let node = match self.place(&id, &function.name, &demand, wait).await {
            Ok(n) => n,
            Err(e) => {
                let why = e.to_string();
                self.apply(&id, &Event::Unplaceable { why }, None).await?;
                return Err(e);
            }
        };
        self.remember_node(&node.node_id).await;
        self.start_on_node(&id, &function, &node).await?;
        self.wait_running(&id, wait).await
    }

    /// Chooses a node for instance `id`, waiting up to `wait` for one to fit, and records the
    /// choice (the instance's resources count on that node from then on).
    async fn place(
        &self,
        id: &str,
        function: &str,
        demand: &Demand,
        wait: Duration,
    ) -> Result<NodeRecord> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut nodes_rx = self.nodes.subscribe();
        loop {
            {
                let _placing = self.placing.lock().await;
                let nodes = self.nodes.snapshot();
                let instances = self.instances.lock().await.clone();
                match placement::choose(&nodes, &instances, function, demand) {
                    Ok(n) => {
                        let placed = Event::Placed {
                            node_id: n.node_id.clone(),
                            proxy_address: n.proxy_address.clone(),
                        };
                        self.apply(id, &placed, None).await?;
                        return Ok(n);
                    }
                    Err(e) => {
                        if tokio::time::Instant::now() >= deadline {
                            return Err(e);
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

    /// Asks the instance's node to start it when the lifecycle says so (not for an instance
    /// being stopped or ended meanwhile); on failure the record says why.
    async fn start_on_node(
        self: &Arc<Self>,
        id: &str,
        function: &Spec,
        node: &NodeRecord,
    ) -> Result<InstanceRecord> {
        let vanished = || Error::NotFound(format!("instance {id} vanished"));
        let starting = Event::Starting {
            node_id: node.node_id.clone(),
            proxy_address: node.proxy_address.clone(),
        };
        let Applied { record, then, .. } = self
            .apply(id, &starting, None)
            .await?
            .ok_or_else(vanished)?;
        if then != Then::Start {
            return Ok(record);
        }
        let mut agent = self.agent(&node.agent_address).await?;
        let reply = agent
            .start_instance(StartInstanceRequest {
                instance: Some(record),
                function: Some(function.proto().clone()),
            })
            .await;
        let event = match reply {
            Ok(r) => Event::Started {
                pid: r.into_inner().pid,
            },
            // The agent was not reached (it is restarting, or its node is going): like a
            // crash, this is retried with backoff while the function's retries last, instead
            // of ending the instance at once.
            Err(status) if agent_unreachable(&status) => {
                let error = format!(
                    "node {}'s agent could not be reached to start it: {}",
                    node.node_id,
                    Error::from_status(status)
                );
                let news = lifecycle::News::Failed { error };
                let r = self
                    .handle(id, Event::Reported(Report { news }))
                    .await?
                    .ok_or_else(vanished)?;
                return Ok(r);
            }
            Err(status) => Event::StartFailed {
                why: format!(
                    "node {} could not start it: {}",
                    node.node_id,
                    Error::from_status(status)
                ),
            },
        };
        let applied = self.apply(id, &event, None).await?.ok_or_else(vanished)?;
        Ok(applied.record)
    }

    /// Waits until the instance is RUNNING or has ended, up to `wait`.
    async fn wait_running(&self, id: &str, wait: Duration) -> Result<InstanceRecord> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.changed.notified();
            let r = self
                .current(id)
                .await
                .ok_or_else(|| Error::NotFound(format!("instance {id} vanished")))?;
            let state = lifecycle::state_of(&r).as_str_name();
            match lifecycle::readiness(&r) {
                Readiness::Running => return Ok(r),
                Readiness::Ended => {
                    return Err(Error::InstanceFatal(format!(
                        "instance {id} of {} is {state}: {}",
                        r.function, r.error
                    )))
                }
                Readiness::Pending => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Timeout(format!(
                    "instance {id} of {} not running after {wait:?} (state {state})",
                    r.function
                )));
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// Stops instance `id_or_name` (an ID, or the name of a live named instance): EXITING,
    /// its node asked to stop it, then EXITED. Stopping an ended instance does nothing.
    pub async fn kill_instance(&self, id_or_name: &str) -> Result<()> {
        let r = {
            let all = self.instances.lock().await;
            all.get(id_or_name)
                .cloned()
                .or_else(|| {
                    all.values()
                        .find(|r| r.name == id_or_name && !lifecycle::ended(r))
                        .cloned()
                })
                .ok_or_else(|| Error::NotFound(format!("no instance {id_or_name:?}")))?
        };
        let id = r.instance_id.clone();
        let Some(Applied {
            record: r, then, ..
        }) = self.apply(&id, &Event::Kill, None).await?
        else {
            return Ok(());
        };
        if then != Then::Stop {
            return Ok(());
        }
        let node = self.nodes.snapshot().get(&r.node_id).cloned();
        if let Some(node) = node {
            let mut agent = self.agent(&node.agent_address).await?;
            if let Err(e) = agent
                .stop_instance(InstanceRef {
                    instance_id: id.clone(),
                    name: String::new(),
                })
                .await
            {
                tracing::warn!(instance = %id, "stop failed: {}", Error::from_status(e));
            }
        }
        self.apply(&id, &Event::Stopped, None).await?;
        if !r.name.is_empty() {
            if let Err(e) = self
                .meta
                .delete(&etcd::name_key(&r.function, &r.name))
                .await
            {
                tracing::warn!(instance = %id, "cannot release the name {:?}: {e}", r.name);
            }
        }
        Ok(())
    }

    /// Applies an agent's or proxy's report.
    pub async fn report(self: &Arc<Self>, ev: InstanceEvent) -> Result<()> {
        let report = Report::try_from(&ev)?;
        // Whatever it says (RUNNING included: one that arrives after the process's exit
        // report must not bring the record back), a report about a process that already
        // ended changes nothing.
        match self.current(&ev.instance_id).await {
            Some(r) if crate::reconcile::stale_report(&r, ev.pid) => {
                tracing::info!(
                    instance = %ev.instance_id,
                    "ignoring a late {:?} report of process {} (the instance runs as {} now)",
                    report.news,
                    ev.pid,
                    r.pid
                );
                return Ok(());
            }
            Some(_) => {}
            None => {
                return Err(Error::NotFound(format!("no instance {}", ev.instance_id)));
            }
        }
        self.handle(&ev.instance_id, Event::Reported(report))
            .await?
            .ok_or_else(|| Error::NotFound(format!("no instance {}", ev.instance_id)))?;
        Ok(())
    }

    /// Applies `event` to instance `id`, reading the function's spec first if the event may
    /// end in a restart or FATAL, and starts the restart the lifecycle asks for. `None` if
    /// there is no such instance.
    pub(super) async fn handle(
        self: &Arc<Self>,
        id: &str,
        event: Event,
    ) -> Result<Option<InstanceRecord>> {
        let spec = if event.may_fail() {
            let Some(cur) = self.current(id).await else {
                return Ok(None);
            };
            // Unreadable counts as deleted: the instance cannot be started again without it.
            self.function(&cur.function).await.ok()
        } else {
            None
        };
        let Some(Applied {
            record: r,
            then,
            changed,
        }) = self.apply(id, &event, spec.as_ref()).await?
        else {
            return Ok(None);
        };
        match (then, spec) {
            (Then::Restart, Some(spec)) => {
                tracing::info!(instance = %r.instance_id, restarts = r.restarts, "restarting: {}", r.error);
                self.restart(r.clone(), spec);
            }
            _ if changed && lifecycle::state_of(&r) == InstanceState::Fatal => {
                tracing::warn!(instance = %r.instance_id, "FATAL: {}", r.error);
            }
            _ => {}
        }
        Ok(Some(r))
    }

    /// Starts failed instance `r` again in the background, once its backoff pause has passed:
    /// on its node if that node is alive, else wherever it fits now; FATAL if it fits nowhere
    /// within [`DEFAULT_WAIT`].
    pub(super) fn restart(self: &Arc<Self>, r: InstanceRecord, function: Spec) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let id = r.instance_id.clone();
            let pause = Duration::from_millis(r.restart_at_unix_ms.saturating_sub(etcd::now_ms()));
            if !pause.is_zero() {
                tracing::info!(instance = %id, streak = r.crash_streak, "restart in {pause:?} (backoff)");
                tokio::time::sleep(pause).await;
            }
            let same_node = this.nodes.snapshot().get(&r.node_id).cloned();
            let node = match same_node {
                Some(n) => Ok(n),
                None => this.place_again(&r, &function).await,
            };
            let outcome = match node {
                Ok(node) => this.start_on_node(&id, &function, &node).await.map(|_| ()),
                Err(e) => {
                    let why = format!("cannot restart: {e}");
                    this.apply(&id, &Event::Unplaceable { why }, None)
                        .await
                        .map(|_| ())
                }
            };
            if let Err(e) = outcome {
                tracing::warn!(instance = %id, "restart failed: {e}");
            }
        });
    }

    /// Places instance `r` anew, its node being gone; it counts on no node meanwhile.
    async fn place_again(&self, r: &InstanceRecord, function: &Spec) -> Result<NodeRecord> {
        let demand = Demand {
            resources: r.resources.clone().unwrap_or_default(),
            scheduling: Scheduling::try_from(&r.scheduling.clone().unwrap_or_default())?,
        };
        self.apply(&r.instance_id, &Event::Unplaced, None).await?;
        self.place(&r.instance_id, &function.name, &demand, DEFAULT_WAIT)
            .await
    }
}
