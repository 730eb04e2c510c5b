//! The function scheduler: keeps each stateless function's pool of instances between its
//! `min_instances` and `max_instances`.
//!
//! Every [`TICK`] it reads the instances (etcd mirror) and asks every node's proxy how busy its
//! instances are, then:
//! - creates instances while a function has fewer than `min_instances` alive (not EXITED/FATAL);
//! - adds one instance of a function whose instances all have calls queued, up to
//!   `max_instances` (proxies also grow a pool at once when a call finds every local instance
//!   busy; this catches load spread over nodes);
//! - stops instances idle longer than the idle timeout while the function has more than
//!   `min_instances`, the longest idle first.
//!
//! Only the holder of the [`crate::election::SCHEDULER`] election acts; the schedulers of
//! standby master nodes wait in it, and one that loses its lease stops at once (returns an
//! error, so its process exits non-zero).
//!
//! It never writes instance records itself: every change goes through the master, the records'
//! only writer. Stateful (named) instances are never touched: they live until terminated.
//! What counts as a pool's instance, and how long to pause after a failed create, are the
//! lifecycle's rules ([`lifecycle::in_pool`], [`lifecycle::next_backoff`]); [`decide`] is the
//! scheduler's own pure rule.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use yr_proto::master_client::MasterClient;
use yr_proto::proxy_client::ProxyClient;
use yr_proto::*;

use crate::error::{Error, Result};
use crate::etcd::{self, Meta, Mirror};
use crate::function::Spec;
use crate::lifecycle;
use crate::Shutdown;

/// How often the pools are checked.
pub const TICK: Duration = Duration::from_millis(500);

/// How a scheduler is started.
pub struct SchedulerConfig {
    /// The etcd cluster it reads nodes, functions and instances from.
    pub etcd_endpoints: Vec<String>,
    /// The master it asks to create and stop instances.
    pub master_address: String,
    /// An instance idle this long may be stopped (down to `min_instances`).
    pub idle_timeout: Duration,
}

struct Scheduler {
    config: SchedulerConfig,
    master: MasterClient<crate::MasterChannel>,
    nodes: Mirror<NodeRecord>,
    functions: Mirror<FunctionSpec>,
    instances: Mirror<InstanceRecord>,
    proxies: HashMap<String, ProxyClient<tonic::transport::Channel>>,
    /// Functions whose last create failed: no new attempt before the instant; the pause is
    /// [`lifecycle::next_backoff`] of the one before.
    backoff: Arc<Mutex<HashMap<String, (Instant, Duration)>>>,
}

/// What to do with one function's pool, from its state: a pure function, unit-tested.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Create this many instances.
    Create(u32),
    /// Stop these instances (IDs), the longest idle first.
    Stop(Vec<String>),
    /// Leave the pool as it is.
    Nothing,
}

/// `alive`: the function's non-terminal stateless instances; `load`: what proxies said about
/// those that are connected.
pub fn decide(
    f: &Spec,
    alive: &[&InstanceRecord],
    load: &HashMap<String, InstanceLoad>,
    idle_timeout: Duration,
) -> Action {
    let n = alive.len() as u32;
    if n < f.min_instances {
        return Action::Create(f.min_instances - n);
    }
    let running: Vec<&InstanceRecord> = alive
        .iter()
        .filter(|r| lifecycle::state_of(r) == InstanceState::Running)
        .copied()
        .collect();
    let starting = alive.len() - running.len();
    let all_queued = !running.is_empty()
        && running
            .iter()
            .all(|r| load.get(&r.instance_id).is_some_and(|l| l.queued > 0));
    if all_queued && starting == 0 && n < f.max_instances {
        return Action::Create(1);
    }
    if n > f.min_instances {
        let mut idle: Vec<(&str, u64)> = running
            .iter()
            .filter_map(|r| {
                let l = load.get(&r.instance_id)?;
                (l.inflight == 0 && l.queued == 0 && l.idle_ms >= idle_timeout.as_millis() as u64)
                    .then_some((r.instance_id.as_str(), l.idle_ms))
            })
            .collect();
        idle.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let surplus = (n - f.min_instances) as usize;
        let stop: Vec<String> = idle
            .into_iter()
            .take(surplus)
            .map(|(id, _)| id.to_string())
            .collect();
        if !stop.is_empty() {
            return Action::Stop(stop);
        }
    }
    Action::Nothing
}

impl Scheduler {
    async fn loads(&mut self) -> HashMap<String, InstanceLoad> {
        let mut out = HashMap::new();
        for node in self.nodes.snapshot().values() {
            let client = match self.proxies.get(&node.proxy_address) {
                Some(c) => c.clone(),
                None => match crate::channel(&node.proxy_address) {
                    Ok(ch) => {
                        let c = ProxyClient::new(ch);
                        self.proxies.insert(node.proxy_address.clone(), c.clone());
                        c
                    }
                    Err(_) => continue,
                },
            };
            let mut c = client;
            if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(2), c.load(Empty {})).await
            {
                for l in r.into_inner().instances {
                    out.insert(l.instance_id.clone(), l);
                }
            }
        }
        out
    }

    async fn tick(&mut self) {
        let load = self.loads().await;
        let instances = self.instances.snapshot();
        for f in self.functions.snapshot().values() {
            let f = match Spec::try_from(f.clone()) {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(function = %f.name, "skipping an invalid spec: {e}");
                    continue;
                }
            };
            let paused = self
                .backoff
                .lock()
                .ok()
                .and_then(|b| b.get(&f.name).map(|(until, _)| *until > Instant::now()))
                .unwrap_or(false);
            let alive: Vec<&InstanceRecord> = instances
                .values()
                .filter(|r| lifecycle::in_pool(r, &f.name))
                .collect();
            match decide(&f, &alive, &load, self.config.idle_timeout) {
                Action::Create(_) if paused => {}
                Action::Create(k) => {
                    for _ in 0..k {
                        let mut m = self.master.clone();
                        let name = f.name.clone();
                        let backoff = Arc::clone(&self.backoff);
                        // In the background: a create waits for the instance to run.
                        tokio::spawn(async move {
                            let r = m
                                .create_instance(CreateInstanceRequest {
                                    function: name.clone(),
                                    scheduling: Some(SchedulingOptions {
                                        spread: true,
                                        ..Default::default()
                                    }),
                                    ..Default::default()
                                })
                                .await;
                            let Ok(mut b) = backoff.lock() else { return };
                            match r {
                                Ok(_) => {
                                    b.remove(&name);
                                }
                                Err(e) => {
                                    let pause =
                                        lifecycle::next_backoff(b.get(&name).map(|(_, p)| *p));
                                    b.insert(name.clone(), (Instant::now() + pause, pause));
                                    tracing::warn!(
                                        function = %name,
                                        retry_in = ?pause,
                                        "cannot grow the pool: {}",
                                        Error::from_status(e)
                                    );
                                }
                            }
                        });
                    }
                    tracing::info!(function = %f.name, count = k, "growing the pool");
                }
                Action::Stop(ids) => {
                    for id in ids {
                        tracing::info!(function = %f.name, instance = %id, "stopping an idle instance");
                        let mut m = self.master.clone();
                        if let Err(e) = m
                            .kill_instance(InstanceRef {
                                instance_id: id.clone(),
                                name: String::new(),
                            })
                            .await
                        {
                            tracing::warn!(instance = %id, "cannot stop: {}", Error::from_status(e));
                        }
                    }
                }
                Action::Nothing => {}
            }
        }
    }
}

/// Runs the scheduler until `shutdown`.
pub async fn run(
    config: SchedulerConfig,
    shutdown: Shutdown,
    on_ready: impl FnOnce(),
) -> Result<()> {
    let meta = Meta::connect(&config.etcd_endpoints).await?;
    // One scheduler acts at a time, so two never scale the same pools: every master node runs
    // one, and the others stand by in the election.
    let candidate = crate::election::Candidate::new(&meta).await?;
    let mut on_ready = Some(on_ready);
    let me = format!("scheduler-{}", std::process::id());
    let won = candidate
        .campaign(crate::election::SCHEDULER, &me, &shutdown, || {
            if let Some(f) = on_ready.take() {
                f()
            }
        })
        .await?;
    let lost = candidate.lost();
    if !won {
        if lost.is_set() {
            return Err(Error::Unavailable(
                "this standby scheduler lost its election lease".into(),
            ));
        }
        candidate.resign().await;
        return Ok(());
    }
    let channel = crate::master_channel(&config.master_address)?;
    crate::follow_masters(meta.clone(), channel.clone());
    let master = MasterClient::new(channel);
    let mut s = Scheduler {
        nodes: Mirror::start(meta.clone(), etcd::NODES).await?,
        functions: Mirror::start(meta.clone(), etcd::FUNCTIONS).await?,
        instances: Mirror::start(meta, etcd::INSTANCES).await?,
        config,
        master,
        proxies: HashMap::new(),
        backoff: Arc::default(),
    };
    if let Some(f) = on_ready.take() {
        f();
    }
    loop {
        // Creations started last tick are in flight; the mirror shows them as SCHEDULING or
        // CREATING, which count as alive, so a slow start is not doubled.
        tokio::select! {
            _ = s.tick() => {}
            _ = lost.wait() => {}
        }
        if lost.is_set() {
            return Err(Error::Unavailable(
                "the active scheduler lost its election lease and stopped".into(),
            ));
        }
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = lost.wait() => {}
            _ = shutdown.wait() => {
                candidate.resign().await;
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(min: u32, max: u32) -> Spec {
        Spec::try_from(FunctionSpec {
            name: "f".into(),
            code_path: "/srv/f".into(),
            min_instances: min,
            max_instances: max,
            ..Default::default()
        })
        .expect("a valid spec")
    }
    fn inst(id: &str, state: InstanceState) -> InstanceRecord {
        InstanceRecord {
            instance_id: id.into(),
            function: "f".into(),
            state: state.into(),
            ..Default::default()
        }
    }
    fn load(id: &str, inflight: u32, queued: u32, idle_ms: u64) -> (String, InstanceLoad) {
        (
            id.into(),
            InstanceLoad {
                instance_id: id.into(),
                function: "f".into(),
                inflight,
                queued,
                idle_ms,
            },
        )
    }
    const IDLE: Duration = Duration::from_secs(10);

    #[test]
    fn keeps_the_minimum() {
        let a = inst("a", InstanceState::Running);
        assert_eq!(
            decide(&spec(3, 5), &[&a], &HashMap::new(), IDLE),
            Action::Create(2)
        );
    }

    #[test]
    fn grows_when_every_instance_has_a_queue_up_to_max() {
        let (a, b) = (
            inst("a", InstanceState::Running),
            inst("b", InstanceState::Running),
        );
        let busy: HashMap<_, _> = [load("a", 1, 3, 0), load("b", 1, 1, 0)].into();
        assert_eq!(
            decide(&spec(0, 3), &[&a, &b], &busy, IDLE),
            Action::Create(1)
        );
        assert_eq!(decide(&spec(0, 2), &[&a, &b], &busy, IDLE), Action::Nothing);
        let half: HashMap<_, _> = [load("a", 1, 3, 0), load("b", 1, 0, 0)].into();
        assert_eq!(decide(&spec(0, 3), &[&a, &b], &half, IDLE), Action::Nothing);
        // One still starting: wait for it before adding more.
        let c = inst("c", InstanceState::Creating);
        assert_eq!(
            decide(&spec(0, 5), &[&a, &b, &c], &busy, IDLE),
            Action::Nothing
        );
    }

    #[test]
    fn stops_the_longest_idle_down_to_min() {
        let (a, b, c) = (
            inst("a", InstanceState::Running),
            inst("b", InstanceState::Running),
            inst("c", InstanceState::Running),
        );
        let l: HashMap<_, _> = [
            load("a", 0, 0, 20_000),
            load("b", 0, 0, 50_000),
            load("c", 1, 0, 0),
        ]
        .into();
        assert_eq!(
            decide(&spec(1, 5), &[&a, &b, &c], &l, IDLE),
            Action::Stop(vec!["b".into(), "a".into()])
        );
        assert_eq!(
            decide(&spec(2, 5), &[&a, &b, &c], &l, IDLE),
            Action::Stop(vec!["b".into()])
        );
        assert_eq!(
            decide(&spec(3, 5), &[&a, &b, &c], &l, IDLE),
            Action::Nothing
        );
        let recent: HashMap<_, _> = [
            load("a", 0, 0, 500),
            load("b", 0, 0, 900),
            load("c", 0, 0, 0),
        ]
        .into();
        assert_eq!(
            decide(&spec(0, 5), &[&a, &b, &c], &recent, IDLE),
            Action::Nothing
        );
    }
}
