//! One round of the collector's sampling: the node from `/proc`, the data worker's arena over a
//! client connection kept across rounds, the node's instances (their records in etcd, their
//! processes in `/proc`), the components from `session.json` and the proxy's call counters.
//!
//! Invariants: a source that fails leaves its part zero for this round (the arena is then
//! marked down), or `None` where the last answer should stand (the proxy's counters, the
//! session's components); nothing here waits on a source for longer than [`SOURCE_TIMEOUT`].
//! Cpu rates come from the difference between this round's counters and the previous round's.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use yr_proto::proxy_client::ProxyClient;
use yr_proto::{Empty, InstanceRecord};

use super::api::{
    ArenaSample, ComponentHealth, FunctionCalls, InstanceUsage, NodeSample, RestService,
};
use crate::agent::procstat;

/// The longest a round waits for one source (the data worker, the proxy).
pub const SOURCE_TIMEOUT: Duration = Duration::from_secs(1);

/// What one round found besides the node sample.
#[derive(Default)]
pub struct Round {
    pub node: NodeSample,
    pub instances: Vec<InstanceUsage>,
    /// `None`: the proxy did not answer.
    pub functions: Option<Vec<FunctionCalls>>,
    /// `None`: `session.json` could not be read.
    pub components: Option<Vec<ComponentHealth>>,
    /// The REST services the session lists (none on a node without them).
    pub rest: Vec<RestService>,
}

/// The sampler's memory between rounds.
pub struct Sampler {
    data_socket: PathBuf,
    session_dir: Option<PathBuf>,
    proxy: Option<ProxyClient<tonic::transport::Channel>>,
    store: Option<yr_datastore::client::Client>,
    prev_procs: HashMap<u32, procstat::ProcSample>,
    prev_node: Option<procstat::NodeSample>,
    /// The REST services as the previous round found them.
    prev_rest: Vec<RestService>,
    /// The certificate their HTTPS must present, if they serve HTTPS (or why it is unusable).
    rest_tls: Option<Result<crate::http_client::Pinned, String>>,
}

/// The arena's figures from the data worker's counters.
pub fn arena_of(s: &yr_datastore::protocol::StoreStats) -> ArenaSample {
    ArenaSample {
        up: true,
        capacity_bytes: s.capacity,
        used_bytes: s.used,
        objects: s.sealed,
        pinned_objects: s.pinned,
        spilled_objects: s.spilled,
        spilled_bytes: s.spilled_bytes,
        spills_total: s.spill_ops,
        restores_total: s.restore_ops,
        transfer_in_bytes_total: s.pulled_bytes,
        transfer_out_bytes_total: s.served_bytes,
    }
}

/// An instance's usage from its record and, when its process runs, two samples of it.
pub fn usage_of(
    r: &InstanceRecord,
    prev: Option<&procstat::ProcSample>,
    now: Option<&procstat::ProcSample>,
) -> InstanceUsage {
    let mut u = InstanceUsage {
        instance_id: r.instance_id.clone(),
        function: r.function.clone(),
        state: crate::lifecycle::state_name(r.state).to_string(),
        pid: r.pid,
        restarts: r.restarts,
        error: r.error.clone(),
        ..Default::default()
    };
    if let Some(n) = now {
        u.rss_bytes = n.rss_bytes;
        u.cpu_seconds_total = n.utime_stime_ticks as f64 / procstat::clock_ticks() as f64;
        u.cpu_millis = prev.map_or(0, |p| procstat::process_cpu_millis(p, n));
    } else {
        // No process to measure (ended, not started yet, or on another node's pid space).
        u.pid = 0;
    }
    u
}

/// The components' health from a session's records: a component recorded as running whose
/// pid is gone counts as `exited`.
pub fn components_of(s: &yr_runtime::session::Session) -> Vec<ComponentHealth> {
    s.components
        .iter()
        .map(|c| {
            let mut state = c.state.as_str().to_string();
            if state == "running" && !Path::new(&format!("/proc/{}", c.pid)).exists() {
                state = "exited".into();
            }
            ComponentHealth {
                name: c.name.clone(),
                pid: c.pid,
                state,
                restarts: c.restarts,
            }
        })
        .collect()
}

/// The call counters of a proxy's reply.
pub fn calls_of(c: yr_proto::CallStats) -> Vec<FunctionCalls> {
    c.functions
        .into_iter()
        .map(|f| FunctionCalls {
            function: f.function,
            calls_total: f.calls,
            errors_total: f.errors,
            latency_buckets: f.latency_buckets,
            latency_sum_seconds: f.latency_sum_seconds,
        })
        .collect()
}

impl Sampler {
    pub fn new(
        data_socket: PathBuf,
        session_dir: Option<PathBuf>,
        proxy_address: &str,
        rest_tls_cert: Option<&Path>,
    ) -> Self {
        let proxy = if proxy_address.is_empty() {
            None
        } else {
            match crate::channel(proxy_address) {
                Ok(c) => Some(ProxyClient::new(c)),
                Err(e) => {
                    tracing::warn!("no call counters: cannot reach the proxy: {e}");
                    None
                }
            }
        };
        Sampler {
            data_socket,
            session_dir,
            proxy,
            store: None,
            prev_procs: HashMap::new(),
            prev_node: None,
            prev_rest: Vec::new(),
            rest_tls: rest_tls_cert.map(crate::http_client::Pinned::from_file),
        }
    }

    /// One round: `records` are the instance records of this node.
    pub async fn round(&mut self, records: Vec<InstanceRecord>) -> Round {
        let mut node = NodeSample {
            unix_ms: crate::etcd::now_ms(),
            ..Default::default()
        };
        let now = procstat::sample_node().ok();
        if let Some(n) = &now {
            node.cpu_total_millis = n.cpu_millis_total;
            node.memory_total_bytes = n.memory_total_bytes;
            node.memory_used_bytes = n
                .memory_total_bytes
                .saturating_sub(n.memory_available_bytes);
            node.cpu_seconds_total = n.cpu_busy_ticks as f64 / procstat::clock_ticks() as f64;
            if let Some(p) = self.prev_node.as_ref() {
                node.cpu_millis = procstat::cpu_busy_millis(p, n);
            }
        }
        self.prev_node = now;

        // The arena, off the async threads (the client is blocking), over the kept connection.
        let socket = self.data_socket.clone();
        let mut conn = self.store.take();
        let stats = tokio::time::timeout(
            SOURCE_TIMEOUT,
            tokio::task::spawn_blocking(move || {
                if conn.is_none() {
                    conn =
                        yr_datastore::client::Client::connect_named(&socket, "yr-collector").ok();
                }
                let stats = conn.as_ref().map(|c| c.stats());
                match stats {
                    Some(Ok(s)) => (Some(s), conn),
                    // A failed connection is dropped; the next round connects again.
                    _ => (None, None),
                }
            }),
        )
        .await;
        if let Ok(Ok((stats, conn))) = stats {
            self.store = conn;
            if let Some(s) = stats {
                node.arena = arena_of(&s);
            }
        }

        let functions = match &self.proxy {
            Some(p) => {
                let mut p = p.clone();
                match tokio::time::timeout(SOURCE_TIMEOUT, p.calls(Empty {})).await {
                    Ok(Ok(r)) => Some(calls_of(r.into_inner())),
                    Ok(Err(e)) => {
                        tracing::debug!("the proxy's call counters: {e}");
                        None
                    }
                    Err(_) => None,
                }
            }
            None => Some(Vec::new()),
        };

        let mut next_procs = HashMap::new();
        let mut instances: Vec<InstanceUsage> = records
            .iter()
            .map(|r| {
                let running = r.pid != 0 && !crate::lifecycle::is_terminal(r.state);
                let now = running
                    .then(|| procstat::sample_process(r.pid).ok())
                    .flatten();
                let u = usage_of(r, self.prev_procs.get(&r.pid), now.as_ref());
                if let Some(n) = now {
                    next_procs.insert(r.pid, n);
                }
                u
            })
            .collect();
        instances.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
        self.prev_procs = next_procs;

        let session = self
            .session_dir
            .as_ref()
            .map(|d| yr_runtime::session::Session::load(d));
        let components = match &session {
            Some(Ok(s)) => Some(components_of(s)),
            Some(Err(e)) => {
                tracing::debug!("no components: {e}");
                None
            }
            None => Some(Vec::new()),
        };
        let rest = match &session {
            Some(Ok(s)) => self.rest_round(s).await,
            // The session could not be read this round: what was known stands.
            Some(Err(_)) => self.prev_rest.clone(),
            None => Vec::new(),
        };
        Round {
            node,
            instances,
            functions,
            components,
            rest,
        }
    }

    /// Reads the `/metrics` of the REST services `s` lists, with the REST token of its node.
    async fn rest_round(&mut self, s: &yr_runtime::session::Session) -> Vec<RestService> {
        let targets: Vec<(&str, &String)> = [
            (REST_FRONTEND, s.frontend_url.as_ref()),
            (REST_META, s.meta_url.as_ref()),
        ]
        .into_iter()
        .filter_map(|(name, url)| url.map(|u| (name, u)))
        .collect();
        if targets.is_empty() {
            self.prev_rest.clear();
            return Vec::new();
        }
        let token = s
            .token_file
            .as_ref()
            .and_then(|f| std::fs::read_to_string(f).ok())
            .map(|t| t.trim().to_string());
        let tls = match &self.rest_tls {
            None => Ok(None),
            Some(Ok(p)) => Ok(Some(p)),
            Some(Err(e)) => Err(format!("the REST certificate: {e}")),
        };
        let mut out = Vec::with_capacity(targets.len());
        for (name, url) in targets {
            let last = self.prev_rest.iter().find(|r| r.service == name);
            out.push(match tls.clone() {
                Ok(tls) => {
                    super::services::scrape(name, url, token.as_deref(), SOURCE_TIMEOUT, tls, last)
                        .await
                }
                Err(error) => super::services::down(name, url, error, last),
            });
        }
        self.prev_rest = out.clone();
        out
    }
}

/// The component names of the REST services, as `session.json` lists them.
const REST_FRONTEND: &str = "frontend";
const REST_META: &str = "meta-service";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arena_figures_map_the_data_workers_counters() {
        let s = yr_datastore::protocol::StoreStats {
            capacity: 100,
            used: 40,
            sealed: 3,
            pinned: 1,
            spilled: 2,
            spilled_bytes: 50,
            spill_ops: 4,
            restore_ops: 1,
            pulled_bytes: 7,
            served_bytes: 9,
            ..Default::default()
        };
        let a = arena_of(&s);
        assert!(a.up);
        assert_eq!(
            (a.used_bytes, a.objects, a.pinned_objects, a.spilled_objects),
            (40, 3, 1, 2)
        );
        assert_eq!((a.spills_total, a.restores_total), (4, 1));
        assert_eq!(
            (a.transfer_in_bytes_total, a.transfer_out_bytes_total),
            (7, 9)
        );
    }

    #[test]
    fn an_instance_without_a_process_has_no_usage() {
        let r = InstanceRecord {
            instance_id: "f-1".into(),
            function: "f".into(),
            state: yr_proto::InstanceState::Running.into(),
            pid: 77,
            restarts: 3,
            ..Default::default()
        };
        let u = usage_of(&r, None, None);
        assert_eq!((u.pid, u.restarts, u.rss_bytes), (0, 3, 0));
        assert_eq!(u.state, "RUNNING");
        // This test's own process, sampled twice.
        let me = std::process::id();
        let a = procstat::sample_process(me).expect("this process");
        let b = procstat::sample_process(me).expect("this process");
        let r = InstanceRecord { pid: me, ..r };
        let u = usage_of(&r, Some(&a), Some(&b));
        assert_eq!(u.pid, me);
        assert!(u.rss_bytes > 0);
    }
}
