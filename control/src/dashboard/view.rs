//! What the page shows, as JSON: the master's records (nodes, functions, instances, masters)
//! joined with what each node's collector measured (usage, arena, calls, REST requests),
//! built from plain values so that it is tested without a cluster.
//!
//! Invariants: the master is the authority on what exists and its state (a node's `alive` or
//! `dead`, an instance's lifecycle state); the collectors add figures. When either has not
//! answered lately the view still lists what was last known and says which source is stale.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};
use yr_proto::ClusterStatus;

use super::aggregate::{self, NodeHistory};
use crate::collector::api::NodeSample;

/// The master's side of the view.
#[derive(Clone, Debug, Default)]
pub struct MasterView {
    /// The last status the master gave.
    pub status: Option<ClusterStatus>,
    /// When it gave it (0: never).
    pub last_ok_unix_ms: u64,
    /// Why the last try failed (none after a success).
    pub error: Option<String>,
}

fn secs(v: Option<f64>) -> Value {
    match v {
        Some(s) if s.is_finite() => json!((s * 1e6).round() / 1e3),
        _ => Value::Null,
    }
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// The `/api/state` document.
pub fn state(
    master: &MasterView,
    nodes: &BTreeMap<String, NodeHistory>,
    etcd_error: Option<&str>,
    now_ms: u64,
) -> Value {
    let empty = ClusterStatus::default();
    let st = master.status.as_ref().unwrap_or(&empty);
    let dead: BTreeSet<&str> = st.dead_nodes.iter().map(String::as_str).collect();

    // Nodes: those the master lists (alive and dead), then those only a collector knows.
    let mut ids: Vec<String> = st.nodes.iter().map(|n| n.node_id.clone()).collect();
    ids.extend(st.dead_nodes.iter().cloned());
    for id in nodes.keys() {
        if !ids.contains(id) {
            ids.push(id.clone());
        }
    }
    let mut node_rows = Vec::new();
    let mut object_rows = Vec::new();
    let mut totals = (0u64, 0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    let (mut calls_per_s, mut errors_per_s) = (0.0f64, 0.0f64);
    let (mut rest_per_s, mut rest_errors_per_s) = (0.0f64, 0.0f64);
    let mut rest_rows = Vec::new();
    for id in &ids {
        let rec = st.nodes.iter().find(|n| &n.node_id == id);
        let hist = nodes.get(id);
        let latest = hist.and_then(NodeHistory::latest);
        let state = if rec.is_some() {
            "alive"
        } else if dead.contains(id.as_str()) {
            "dead"
        } else {
            // Known only from its collector: the master has not listed it (yet).
            "unknown"
        };
        let total = rec.and_then(|r| r.total.clone()).unwrap_or_default();
        let cpu = latest
            .map(|s| s.cpu_millis)
            .or(rec.map(|r| r.cpu_millis_busy))
            .unwrap_or(0);
        let cpu_total = latest
            .map(|s| s.cpu_total_millis)
            .filter(|&c| c > 0)
            .unwrap_or(total.cpu_millis);
        let mem = latest
            .map(|s| s.memory_used_bytes)
            .or(rec.map(|r| r.memory_used_bytes))
            .unwrap_or(0);
        let mem_total = latest
            .map(|s| s.memory_total_bytes)
            .filter(|&m| m > 0)
            .unwrap_or(total.memory_mib << 20);
        let arena = latest.map(|s| s.arena.clone()).unwrap_or_default();
        let shm_used = if arena.up {
            arena.used_bytes
        } else {
            rec.map_or(0, |r| r.shm_used_bytes)
        };
        let shm_total = if arena.up {
            arena.capacity_bytes
        } else {
            rec.map_or(0, |r| r.shm_total_bytes)
        };
        // A counter's rate over the last window of this node's samples (0 without them).
        let recent = |counter: fn(&NodeSample) -> u64| {
            hist.map_or(0.0, |h| {
                aggregate::rate(&h.samples, aggregate::RATE_WINDOW_MS, counter)
            })
        };
        let (c_rate, e_rate) = (recent(|s| s.calls_total), recent(|s| s.errors_total));
        if let Some(h) = hist {
            let stats = aggregate::rest_stats(std::iter::once(h));
            for r in &h.rest {
                let st = stats.get(&r.service).cloned().unwrap_or_default();
                rest_rows.push(json!({
                    "service": r.service,
                    "node_id": id,
                    "url": r.url,
                    "up": r.up,
                    "error": r.error,
                    "requests_total": st.calls_total,
                    "errors_total": st.errors_total,
                    "requests_per_s": round2(st.calls_per_s),
                    "errors_per_s": round2(st.errors_per_s),
                    "p50_ms": secs(st.p50_s),
                    "p99_ms": secs(st.p99_s),
                }));
            }
        }
        if state == "alive" {
            totals.0 += 1;
            rest_per_s += recent(|s| s.rest_requests_total);
            rest_errors_per_s += recent(|s| s.rest_errors_total);
            totals.2 += cpu;
            totals.3 += cpu_total;
            totals.4 += mem;
            totals.5 += mem_total;
            totals.6 += shm_used;
            totals.1 += shm_total;
            calls_per_s += c_rate;
            errors_per_s += e_rate;
        }
        let collector = match hist {
            Some(h) => json!({
                "url": h.url,
                "reachable": h.error.is_none() && h.last_ok_unix_ms > 0,
                "stale": !h.fresh(now_ms),
                "error": h.error,
                "last_ok_unix_ms": h.last_ok_unix_ms,
            }),
            None => json!({
                "url": null, "reachable": false, "stale": true,
                "error": "no collector is registered for this node",
                "last_ok_unix_ms": 0,
            }),
        };
        node_rows.push(json!({
            "node_id": id,
            "hostname": rec.map(|r| r.hostname.clone()).filter(|h| !h.is_empty())
                .or(hist.map(|h| h.hostname.clone())).unwrap_or_default(),
            "state": state,
            "proxy_address": rec.map(|r| r.proxy_address.clone()).unwrap_or_default(),
            "labels": rec.map(|r| r.labels.clone()).unwrap_or_default(),
            "cpu_millis": cpu,
            "cpu_total_millis": cpu_total,
            "memory_used_bytes": mem,
            "memory_total_bytes": mem_total,
            "shm_used_bytes": shm_used,
            "shm_total_bytes": shm_total,
            "objects": arena.objects,
            "spilled_bytes": arena.spilled_bytes,
            "calls_per_s": round2(c_rate),
            "errors_per_s": round2(e_rate),
            "instances": st.instances.iter().filter(|i| &i.node_id == id).count(),
            "components": hist.map(|h| h.components.clone()).unwrap_or_default(),
            "collector": collector,
        }));
        let (tin, tout) = (
            recent(|s| s.arena.transfer_in_bytes_total),
            recent(|s| s.arena.transfer_out_bytes_total),
        );
        object_rows.push(json!({
            "node_id": id,
            "state": state,
            "up": arena.up,
            "capacity_bytes": shm_total,
            "used_bytes": shm_used,
            "objects": arena.objects,
            "pinned_objects": arena.pinned_objects,
            "spilled_objects": arena.spilled_objects,
            "spilled_bytes": arena.spilled_bytes,
            "spills_total": arena.spills_total,
            "restores_total": arena.restores_total,
            "transfer_in_bytes_total": arena.transfer_in_bytes_total,
            "transfer_out_bytes_total": arena.transfer_out_bytes_total,
            "transfer_in_per_s": round2(tin),
            "transfer_out_per_s": round2(tout),
        }));
    }
    let objects_total: u64 = ids
        .iter()
        .filter_map(|id| nodes.get(id).and_then(NodeHistory::latest))
        .map(|s| s.arena.objects)
        .sum();

    // Instances: the master's records, with the figures of the collector of their node.
    let usage = |node: &str, id: &str| {
        nodes
            .get(node)
            .and_then(|h| h.instances.iter().find(|u| u.instance_id == id))
    };
    let instance_rows: Vec<Value> = st
        .instances
        .iter()
        .map(|i| {
            let u = usage(&i.node_id, &i.instance_id);
            json!({
                "instance_id": i.instance_id,
                "function": i.function,
                "name": i.name,
                "stateful": i.stateful,
                "state": crate::lifecycle::state_name(i.state),
                "node_id": i.node_id,
                "pid": i.pid,
                "restarts": i.restarts,
                "cpu_millis": u.map(|u| u.cpu_millis).unwrap_or(i.cpu_millis_used),
                "rss_bytes": u.map(|u| u.rss_bytes).filter(|&r| r > 0).unwrap_or(i.memory_bytes_used),
                "error": if i.error.is_empty() { u.map(|u| u.error.clone()).unwrap_or_default() } else { i.error.clone() },
            })
        })
        .collect();

    // Functions: the master's specs, with the calls the proxies counted.
    let stats = aggregate::function_stats(nodes.values());
    let mut names: Vec<String> = st.functions.iter().map(|f| f.name.clone()).collect();
    for n in stats.keys() {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    let function_rows: Vec<Value> = names
        .iter()
        .map(|name| {
            let spec = st.functions.iter().find(|f| &f.name == name);
            let s = stats.get(name).cloned().unwrap_or_default();
            let of_it = st.instances.iter().filter(|i| &i.function == name);
            let running = of_it
                .clone()
                .filter(|i| i.state() == yr_proto::InstanceState::Running)
                .count();
            json!({
                "name": name,
                "deployed": spec.is_some(),
                "kind": spec.map(|f| f.kind.clone()).unwrap_or_default(),
                "version": spec.map(|f| f.version.clone()).unwrap_or_default(),
                "min": spec.map_or(0, |f| f.min_instances),
                "max": spec.map_or(0, |f| f.max_instances),
                "concurrency": spec.map_or(0, |f| f.concurrency),
                "instances": of_it.count(),
                "running": running,
                "calls_total": s.calls_total,
                "errors_total": s.errors_total,
                "calls_per_s": round2(s.calls_per_s),
                "errors_per_s": round2(s.errors_per_s),
                "p50_ms": secs(s.p50_s),
                "p99_ms": secs(s.p99_s),
            })
        })
        .collect();

    let masters: Vec<Value> = st
        .masters
        .iter()
        .map(|m| json!({"node_id": m.node_id, "address": m.address, "active": m.active}))
        .collect();
    let active = st
        .masters
        .iter()
        .find(|m| m.active)
        .map(|m| m.node_id.clone());

    json!({
        "updated_unix_ms": now_ms,
        "cluster": {
            "name": active.clone().map(|a| format!("yr · {a}")).unwrap_or_else(|| "yr".into()),
            "active_master": active,
        },
        "sources": {
            "master": {
                "reachable": master.error.is_none() && master.last_ok_unix_ms > 0,
                "error": master.error,
                "last_ok_unix_ms": master.last_ok_unix_ms,
            },
            "etcd": {"reachable": etcd_error.is_none(), "error": etcd_error},
        },
        "overview": {
            "nodes_alive": totals.0,
            "nodes_dead": st.dead_nodes.len(),
            "instances": st.instances.len(),
            "instances_running": st.instances.iter().filter(|i| i.state() == yr_proto::InstanceState::Running).count(),
            "functions": st.functions.len(),
            "calls_per_s": round2(calls_per_s),
            "errors_per_s": round2(errors_per_s),
            "rest_requests_per_s": round2(rest_per_s),
            "rest_errors_per_s": round2(rest_errors_per_s),
            "cpu_millis": totals.2,
            "cpu_total_millis": totals.3,
            "memory_used_bytes": totals.4,
            "memory_total_bytes": totals.5,
            "shm_used_bytes": totals.6,
            "shm_total_bytes": totals.1,
            "objects": objects_total,
        },
        "nodes": node_rows,
        "functions": function_rows,
        "rest": rest_rows,
        "instances": instance_rows,
        "objects": object_rows,
        "masters": masters,
    })
}

/// The `/api/nodes/{id}/history` document: samples newer than `since`.
pub fn history(h: &NodeHistory, since: u64) -> Value {
    let calls = aggregate::rate_series(&h.samples, |s| s.calls_total);
    let errors = aggregate::rate_series(&h.samples, |s| s.errors_total);
    let rest = aggregate::rate_series(&h.samples, |s| s.rest_requests_total);
    let rate_at = |series: &[(u64, f64)], t: u64| {
        series
            .iter()
            .find(|(u, _)| *u == t)
            .map_or(0.0, |(_, r)| round2(*r))
    };
    let samples: Vec<Value> = h
        .samples
        .iter()
        .filter(|s| s.unix_ms > since)
        .map(|s| {
            json!({
                "unix_ms": s.unix_ms,
                "cpu_millis": s.cpu_millis,
                "cpu_total_millis": s.cpu_total_millis,
                "memory_used_bytes": s.memory_used_bytes,
                "memory_total_bytes": s.memory_total_bytes,
                "arena_used_bytes": s.arena.used_bytes,
                "arena_capacity_bytes": s.arena.capacity_bytes,
                "spilled_bytes": s.arena.spilled_bytes,
                "objects": s.arena.objects,
                "calls_per_s": rate_at(&calls, s.unix_ms),
                "errors_per_s": rate_at(&errors, s.unix_ms),
                "rest_requests_per_s": rate_at(&rest, s.unix_ms),
            })
        })
        .collect();
    json!({"node_id": h.node_id, "samples": samples})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::api::{ArenaSample, InstanceUsage, NodeSample, RestService, Snapshot};
    use yr_proto::{FunctionSpec, InstanceRecord, MasterRecord, NodeRecord};

    fn status() -> ClusterStatus {
        ClusterStatus {
            nodes: vec![NodeRecord {
                node_id: "n1".into(),
                hostname: "h1".into(),
                ..Default::default()
            }],
            dead_nodes: vec!["n0".into()],
            functions: vec![FunctionSpec {
                name: "f".into(),
                min_instances: 1,
                max_instances: 3,
                ..Default::default()
            }],
            instances: vec![InstanceRecord {
                instance_id: "i1".into(),
                function: "f".into(),
                node_id: "n1".into(),
                state: yr_proto::InstanceState::Running as i32,
                pid: 42,
                ..Default::default()
            }],
            masters: vec![MasterRecord {
                node_id: "n1".into(),
                address: "a".into(),
                active: true,
            }],
        }
    }

    #[test]
    fn the_state_joins_records_and_measurements() {
        let mut h = NodeHistory::new("n1", "http://c");
        let s = |t: u64, calls: u64| NodeSample {
            unix_ms: t,
            cpu_millis: 500,
            cpu_total_millis: 2000,
            memory_used_bytes: 1 << 30,
            memory_total_bytes: 4 << 30,
            calls_total: calls,
            rest_requests_total: 2 * calls,
            arena: ArenaSample {
                up: true,
                capacity_bytes: 1 << 20,
                used_bytes: 1 << 10,
                objects: 3,
                ..Default::default()
            },
            ..Default::default()
        };
        h.merge(
            Snapshot {
                node_id: "n1".into(),
                now_unix_ms: 4_000,
                samples: vec![s(2_000, 0), s(4_000, 20)],
                instances: vec![InstanceUsage {
                    instance_id: "i1".into(),
                    cpu_millis: 7,
                    rss_bytes: 99,
                    ..Default::default()
                }],
                rest: vec![RestService {
                    service: "frontend".into(),
                    url: "http://f".into(),
                    up: true,
                    requests_total: 40,
                    // 40 requests, all within 2.5 ms.
                    latency_buckets: vec![0, 40],
                    latency_count: 40,
                    ..Default::default()
                }],
                ..Default::default()
            },
            4_000,
        );
        let nodes = BTreeMap::from([("n1".to_string(), h)]);
        let m = MasterView {
            status: Some(status()),
            last_ok_unix_ms: 4_000,
            error: None,
        };
        let v = state(&m, &nodes, None, 4_100);
        assert_eq!(v["overview"]["nodes_alive"], 1);
        assert_eq!(v["overview"]["nodes_dead"], 1);
        assert_eq!(v["overview"]["objects"], 3);
        assert_eq!(v["overview"]["calls_per_s"], 10.0);
        assert_eq!(v["nodes"][0]["state"], "alive");
        assert_eq!(v["nodes"][0]["collector"]["reachable"], true);
        assert_eq!(v["nodes"][1]["node_id"], "n0");
        assert_eq!(v["nodes"][1]["state"], "dead");
        assert_eq!(v["nodes"][1]["collector"]["reachable"], false);
        assert_eq!(v["instances"][0]["state"], "RUNNING");
        assert_eq!(v["instances"][0]["cpu_millis"], 7);
        assert_eq!(v["instances"][0]["rss_bytes"], 99);
        assert_eq!(v["functions"][0]["min"], 1);
        assert_eq!(v["functions"][0]["max"], 3);
        assert_eq!(v["functions"][0]["instances"], 1);
        assert_eq!(v["masters"][0]["active"], true);
        assert_eq!(v["overview"]["rest_requests_per_s"], 20.0);
        assert_eq!(v["rest"][0]["service"], "frontend");
        assert_eq!(v["rest"][0]["node_id"], "n1");
        assert_eq!(v["rest"][0]["requests_total"], 40);
        let p50 = v["rest"][0]["p50_ms"].as_f64().unwrap_or(f64::NAN);
        assert!(
            p50 > 1.0 && p50 <= 2.5,
            "p50 {p50} ms from the REST buckets"
        );
        assert_eq!(v["sources"]["master"]["reachable"], true);

        let hist = history(&nodes["n1"], 2_000);
        assert_eq!(hist["samples"].as_array().map(Vec::len), Some(1));
        assert_eq!(hist["samples"][0]["calls_per_s"], 10.0);
        assert_eq!(hist["samples"][0]["rest_requests_per_s"], 20.0);
    }

    #[test]
    fn an_unreachable_master_keeps_the_last_view_and_says_so() {
        let m = MasterView {
            status: Some(status()),
            last_ok_unix_ms: 1,
            error: Some("timed out".into()),
        };
        let v = state(&m, &BTreeMap::new(), Some("etcd down"), 10);
        assert_eq!(v["sources"]["master"]["reachable"], false);
        assert_eq!(v["sources"]["etcd"]["error"], "etcd down");
        assert_eq!(v["nodes"][0]["node_id"], "n1");
        assert_eq!(v["nodes"][0]["collector"]["stale"], true);
        let none = state(&MasterView::default(), &BTreeMap::new(), None, 10);
        assert_eq!(none["nodes"].as_array().map(Vec::len), Some(0));
    }
}
