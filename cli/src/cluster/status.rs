//! `yr status`: this node's component processes (state and restarts, from `session.json`, which
//! the node supervisor keeps current) and the cluster's nodes, functions and instances, as the
//! master reports them, for a person (a table) or a script (`--json`, whose shape the tests and
//! tools read).

use std::collections::HashMap;

use anyhow::{Context, Result};
use clap::Args;
use yr_control::collector::api::{InstanceUsage, Snapshot};
use yr_proto::{ClusterStatus, Empty, InstanceState, Resources};

use yr_runtime::session::{ComponentInfo, ComponentState, Session};

use super::master_channel;
use super::rt;
use super::session::SessionArg;

/// How long one try of `yr status` waits for a master's answer.
const STATUS_TRY: std::time::Duration = std::time::Duration::from_secs(3);

/// How long `yr status` waits for etcd's list of collectors, and for each collector.
const COLLECTOR_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    session: SessionArg,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

pub fn status(a: StatusArgs) -> Result<()> {
    let s = a.session.load()?;
    if !a.json {
        // This node's processes first: they are known even when the master is not reachable.
        print_components(&s);
    }
    let rt = rt()?;
    let st = rt
        .block_on(async {
            let channel = master_channel(&s).await?;
            let mut m = yr_proto::master_client::MasterClient::new(channel.clone());
            // A read, so it may be repeated: once per master, as a failed call moves the
            // channel to the next master that accepts.
            let tries = yr_control::master_addresses(&s.master_address).len().max(1);
            let mut last = None;
            for _ in 0..tries {
                // Bounded: a master that is paused still accepts connections but never
                // answers; the next try goes to the master the failed one's probe found.
                match tokio::time::timeout(STATUS_TRY, m.status(Empty {})).await {
                    Ok(Ok(st)) => return Ok(st),
                    Ok(Err(e)) => last = Some(e),
                    Err(_) => {
                        channel.fail_current().await;
                        last = Some(tonic::Status::deadline_exceeded(format!(
                            "the master did not answer within {} s",
                            STATUS_TRY.as_secs()
                        )))
                    }
                }
            }
            Err(anyhow::Error::from(last.unwrap_or_else(|| {
                tonic::Status::unavailable("no master address")
            })))
        })
        .with_context(|| format!("cannot reach the master at {}", s.master_address))?
        .into_inner();
    // Usage is not in the records: each node's collector measures its instances.
    let usage = rt.block_on(collector_usage(&s));
    if a.json {
        let mut v = status_json(&st, &usage);
        v["components"] = components_json(&s);
        v["dashboard_url"] = serde_json::json!(s.dashboard_url);
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if let Some(d) = &s.dashboard_url {
        println!("DASHBOARD {d} (`yr dashboard` opens it logged in)");
    }
    println!("MASTERS");
    for m in &st.masters {
        println!(
            "  {:<24} {:<8} {}",
            m.node_id,
            if m.active { "active" } else { "standby" },
            m.address
        );
    }
    println!("NODES");
    for n in &st.nodes {
        let t = n.total.clone().unwrap_or_default();
        let u = n.used.clone().unwrap_or_default();
        println!(
            "  {:<24} alive  cpu {}/{}m  memory {}/{} MiB  shm {}/{} MiB  {}",
            n.node_id,
            u.cpu_millis,
            t.cpu_millis,
            u.memory_mib,
            t.memory_mib,
            n.shm_used_bytes >> 20,
            n.shm_total_bytes >> 20,
            n.proxy_address
        );
    }
    for d in &st.dead_nodes {
        println!("  {d:<24} dead");
    }
    println!("FUNCTIONS");
    for f in &st.functions {
        let running = st
            .instances
            .iter()
            .filter(|i| i.function == f.name && i.state() == InstanceState::Running)
            .count();
        println!(
            "  {:<20} min {} max {} concurrency {}  running {}",
            f.name, f.min_instances, f.max_instances, f.concurrency, running
        );
    }
    println!("INSTANCES");
    for i in &st.instances {
        // "-": its node's collector did not answer (or the process does not run).
        let (cpu, rss) = match usage.get(&i.instance_id).filter(|u| u.pid != 0) {
            Some(u) => (
                format!("{}m", u.cpu_millis),
                format!("{} MiB", u.rss_bytes >> 20),
            ),
            None => ("-".into(), "-".into()),
        };
        println!(
            "  {:<28} {:<10} {:<9} node {:<20} pid {:<7} cpu {:>5}  rss {:>8}  {}{}",
            i.instance_id,
            i.function,
            yr_control::lifecycle::state_name(i.state),
            i.node_id,
            i.pid,
            cpu,
            rss,
            if i.name.is_empty() {
                String::new()
            } else {
                format!("name {} ", i.name)
            },
            if i.error.is_empty() {
                String::new()
            } else {
                format!("error: {}", i.error)
            }
        );
    }
    Ok(())
}

/// This node's component processes as its `session.json` records them, with whether each pid
/// runs now.
fn print_components(s: &Session) {
    println!("COMPONENTS (node {})", s.node_id);
    for c in &s.components {
        println!(
            "  {:<20} {:<10} pid {:<7} restarts {:<3} {}{}",
            c.name,
            component_state(c),
            c.pid,
            c.restarts,
            c.address,
            if c.last_exit.is_empty() {
                String::new()
            } else {
                format!("  last exit: {}", c.last_exit)
            }
        );
    }
}

/// The recorded state, or `exited` for a running-recorded pid that is gone (no supervisor, or
/// one that has not noticed yet).
fn component_state(c: &ComponentInfo) -> &'static str {
    match c.state {
        ComponentState::Running if !super::launch::running(c.pid) => "exited",
        st => st.as_str(),
    }
}

fn components_json(s: &Session) -> serde_json::Value {
    serde_json::Value::Array(
        s.components
            .iter()
            .map(|c| {
                serde_json::json!({
                    "name": c.name, "pid": c.pid, "address": c.address,
                    "state": component_state(c), "restarts": c.restarts,
                    "last_exit": c.last_exit,
                })
            })
            .collect(),
    )
}

/// The instances' usage by instance ID, from the collectors registered in etcd (this node's
/// from its session if etcd does not answer): best effort, each bounded by [`COLLECTOR_WAIT`];
/// an instance whose collector does not answer is missing.
async fn collector_usage(s: &Session) -> HashMap<String, InstanceUsage> {
    let Some(token) = s
        .cluster_secret
        .as_deref()
        .and_then(|f| yr_control::collector::api::token_from_file(f).ok())
    else {
        return HashMap::new();
    };
    let registered = async {
        let meta = yr_control::etcd::Meta::connect(&s.etcd_endpoints).await?;
        let mut urls = Vec::new();
        // `keys` names them without the prefix: node IDs.
        for node in meta.keys(yr_control::etcd::COLLECTORS).await? {
            if let Some(url) = meta
                .get_raw(&yr_control::etcd::collector_key(&node))
                .await?
            {
                urls.push(url);
            }
        }
        Ok::<_, yr_control::error::Error>(urls)
    };
    let mut urls = match tokio::time::timeout(COLLECTOR_WAIT, registered).await {
        Ok(Ok(u)) => u,
        _ => Vec::new(),
    };
    if let Some(own) = &s.collector_url {
        if !urls.contains(own) {
            urls.push(own.clone());
        }
    }
    let mut asks = tokio::task::JoinSet::new();
    for url in urls {
        let token = token.clone();
        asks.spawn(async move {
            tokio::time::timeout(COLLECTOR_WAIT, snapshot_of(&url, &token))
                .await
                .ok()
                .flatten()
        });
    }
    let mut out = HashMap::new();
    while let Some(done) = asks.join_next().await {
        if let Ok(Some(snap)) = done {
            for i in snap.instances {
                out.insert(i.instance_id.clone(), i);
            }
        }
    }
    out
}

/// A collector's snapshot without its history (`since` now), or `None` if it does not answer
/// as a collector.
async fn snapshot_of(url: &str, token: &str) -> Option<Snapshot> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = url.strip_prefix("http://")?.trim_end_matches('/');
    let mut c = tokio::net::TcpStream::connect(host).await.ok()?;
    let path = format!(
        "{}?since={}",
        yr_control::collector::api::SNAPSHOT,
        yr_control::etcd::now_ms()
    );
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\
         Connection: close\r\n\r\n"
    );
    c.write_all(req.as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    // A snapshot without samples is small; a bound keeps a wrong peer from filling memory.
    c.take(16 << 20).read_to_end(&mut raw).await.ok()?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    if head.split_whitespace().nth(1) != Some("200") {
        return None;
    }
    serde_json::from_slice(&raw[split + 4..]).ok()
}

fn status_json(st: &ClusterStatus, usage: &HashMap<String, InstanceUsage>) -> serde_json::Value {
    let res = |r: &Option<Resources>| {
        let r = r.clone().unwrap_or_default();
        serde_json::json!({"cpu_millis": r.cpu_millis, "memory_mib": r.memory_mib, "custom": r.custom})
    };
    serde_json::json!({
        "masters": st.masters.iter().map(|m| serde_json::json!({
            "node_id": m.node_id, "address": m.address, "active": m.active,
        })).collect::<Vec<_>>(),
        "nodes": st.nodes.iter().map(|n| serde_json::json!({
            "node_id": n.node_id, "alive": true, "hostname": n.hostname,
            "proxy_address": n.proxy_address, "agent_address": n.agent_address,
            "total": res(&n.total), "used": res(&n.used), "labels": n.labels,
            "shm_total_bytes": n.shm_total_bytes, "shm_used_bytes": n.shm_used_bytes,
            "cpu_millis_busy": n.cpu_millis_busy, "memory_used_bytes": n.memory_used_bytes,
        })).chain(st.dead_nodes.iter().map(|d| serde_json::json!({"node_id": d, "alive": false}))).collect::<Vec<_>>(),
        "functions": st.functions.iter().map(|f| serde_json::json!({
            "name": f.name, "version": f.version, "code_path": f.code_path, "handler": f.handler,
            "min_instances": f.min_instances, "max_instances": f.max_instances,
            "concurrency": f.concurrency, "timeout_ms": f.timeout_ms, "resources": res(&f.resources),
        })).collect::<Vec<_>>(),
        "instances": st.instances.iter().map(|i| serde_json::json!({
            "instance_id": i.instance_id, "function": i.function, "name": i.name,
            "stateful": i.stateful, "state": yr_control::lifecycle::state_name(i.state),
            "node_id": i.node_id, "pid": i.pid, "restarts": i.restarts, "error": i.error,
            // From the instance's node's collector; null when it did not answer.
            "cpu_millis_used": usage.get(&i.instance_id).map(|u| u.cpu_millis),
            "memory_bytes_used": usage.get(&i.instance_id).map(|u| u.rss_bytes),
        })).collect::<Vec<_>>(),
    })
}
