//! What the collector serves and the dashboard reads: the HTTP routes, the JSON of a snapshot,
//! and the token both sides derive from the cluster secret.
//!
//! Invariants: every field has a serde default, so a dashboard reads a collector of another
//! version; counters (`*_total`) only grow while the collector runs (a restarted collector
//! starts them again from what its sources report); times are Unix milliseconds.

use serde::{Deserialize, Serialize};

/// `GET`: the Prometheus text exposition format (version 0.0.4).
pub const METRICS: &str = "/metrics";
/// `GET ?since=UNIX_MS`: a [`Snapshot`] whose `samples` are those newer than `since` (all kept
/// ones without it).
pub const SNAPSHOT: &str = "/v1/snapshot";
/// `GET /v1/instances/{id}/logs?stream=stdout|stderr&tail=BYTES|offset=N[&follow=true]`:
/// an instance's output. With `offset` the bytes from there on (the header
/// [`LOG_END_HEADER`] says where the file ends, for the next poll); with `tail` the last bytes;
/// `follow` keeps the response open and streams what is appended.
pub const LOGS: &str = "/v1/instances/{id}/logs";
/// The response header that carries a log file's length at the time of the read (with
/// `offset`, where the bytes returned end: a read is bounded, so a client that polls with
/// `offset` set to it misses nothing).
pub const LOG_END_HEADER: &str = "x-log-end";
/// Open to anyone who can reach the port: liveness only.
pub const HEALTHZ: &str = "/healthz";

/// How often the collector samples.
pub const SAMPLE_EVERY_MS: u64 = 2_000;
/// How many samples it keeps (an hour at [`SAMPLE_EVERY_MS`]).
pub const HISTORY_LEN: usize = 1_800;

/// The collector token: what a client of any collector of the cluster presents as
/// `Authorization: Bearer TOKEN`. Derived from the cluster secret (which every node has), so
/// no node needs another credential: HMAC-SHA256 of a fixed label under the secret's bytes, in
/// hex. `yr token --collector` prints it for a Prometheus's `authorization.credentials`.
pub fn token(cluster_secret: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    type HmacSha256 = Hmac<sha2::Sha256>;
    // HMAC accepts keys of any length.
    let mut mac = match HmacSha256::new_from_slice(cluster_secret) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC takes a key of any length"),
    };
    mac.update(b"yr collector token v1");
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Reads the cluster secret's file (as `yr start` writes it) and derives the [`token`].
pub fn token_from_file(path: &std::path::Path) -> std::io::Result<String> {
    let text = std::fs::read(path)?;
    Ok(token(text.trim_ascii()))
}

/// One node's state and recent history.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Snapshot {
    pub node_id: String,
    pub hostname: String,
    pub now_unix_ms: u64,
    pub sample_every_ms: u64,
    /// Oldest first; the last one is the latest.
    pub samples: Vec<NodeSample>,
    /// The instances this node runs or ran lately, as of the latest sample.
    pub instances: Vec<InstanceUsage>,
    /// The calls this node's proxy served, per function, since the proxy started.
    pub functions: Vec<FunctionCalls>,
    /// This node's component processes, from its `session.json`.
    pub components: Vec<ComponentHealth>,
    /// The REST services this node serves (the frontend, the meta service), as their own
    /// `/metrics` counted them.
    pub rest: Vec<RestService>,
}

/// One sample of a node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeSample {
    pub unix_ms: u64,
    /// Cpu time used by the whole node since the previous sample, per second of wall time, in
    /// millicores (2 busy cores: 2000).
    pub cpu_millis: u64,
    /// The node's cores, in millicores.
    pub cpu_total_millis: u64,
    /// Cpu time the whole node spent busy since boot, in seconds (what `/metrics` exposes as
    /// `yr_node_cpu_seconds_total`).
    pub cpu_seconds_total: f64,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    pub arena: ArenaSample,
    /// Calls the node's proxy answered since it started, and those that failed.
    pub calls_total: u64,
    pub errors_total: u64,
    /// Requests the node's REST services answered (their own scrapes left out), and those
    /// answered with a 5xx status: the sums over [`Snapshot::rest`].
    pub rest_requests_total: u64,
    pub rest_errors_total: u64,
}

/// The data worker's arena.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ArenaSample {
    /// False when the data worker did not answer (the rest is then zero).
    pub up: bool,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    /// Objects in memory (sealed), and those of them held by a client.
    pub objects: u64,
    pub pinned_objects: u64,
    pub spilled_objects: u64,
    pub spilled_bytes: u64,
    pub spills_total: u64,
    pub restores_total: u64,
    /// Bytes pulled from other nodes, and served to them.
    pub transfer_in_bytes_total: u64,
    pub transfer_out_bytes_total: u64,
}

/// One instance on the node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct InstanceUsage {
    pub instance_id: String,
    pub function: String,
    /// The lifecycle state's name, as `yr status` prints it (`RUNNING`, `FATAL`, ...).
    pub state: String,
    pub pid: u32,
    pub restarts: u32,
    /// Cpu over the last sample interval, in millicores.
    pub cpu_millis: u64,
    /// Cpu time its current process used since it started, in seconds.
    pub cpu_seconds_total: f64,
    pub rss_bytes: u64,
    /// Why it FAILED or is FATAL.
    pub error: String,
}

/// Calls to one function through this node's proxy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FunctionCalls {
    pub function: String,
    pub calls_total: u64,
    pub errors_total: u64,
    /// Cumulative counts of calls that took at most each of [`LATENCY_BUCKETS`] seconds (the
    /// `+Inf` bucket is `calls_total`).
    pub latency_buckets: Vec<u64>,
    pub latency_sum_seconds: f64,
}

/// Upper bounds (seconds) of the call latency histogram's buckets: those the proxy counts
/// calls in (defined beside its counters, which must not depend on the collector).
pub const LATENCY_BUCKETS: [f64; 16] = crate::proxy::calls::LATENCY_BUCKETS;

/// One REST service of the node, from its `/metrics` (`yr_http_requests_total` and
/// `yr_http_request_duration_seconds`, summed over routes). Requests to `/metrics` itself are
/// left out: they are the collector's (and a Prometheus's) scrapes, not the service's traffic.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RestService {
    /// Its component name (`frontend`, `meta-service`).
    pub service: String,
    pub url: String,
    /// Whether its `/metrics` answered the last sample; when it did not, the counters are
    /// those of its last answer.
    pub up: bool,
    /// Why it is not up.
    pub error: String,
    pub requests_total: u64,
    /// Requests answered with a 5xx status.
    pub errors_total: u64,
    /// Cumulative counts of requests answered within each of [`REST_LATENCY_BUCKETS`]
    /// seconds (the `+Inf` bucket is `latency_count`).
    pub latency_buckets: Vec<u64>,
    pub latency_count: u64,
    pub latency_sum_seconds: f64,
}

/// Upper bounds (seconds) of the REST services' latency histograms (theirs, re-exported).
pub const REST_LATENCY_BUCKETS: [f64; 14] = crate::rest::metrics::BUCKETS;

/// One component process of the node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ComponentHealth {
    pub name: String,
    pub pid: u32,
    /// `running`, `restarting`, `failed`, ... as `session.json` says.
    pub state: String,
    pub restarts: u32,
}

/// The rate of a counter between two samples, per second: for spills, restores, transfer
/// bytes and calls from two [`NodeSample`]s. `None` if the samples are not in time order or
/// the counter went down (its source restarted).
pub fn per_second(prev_total: u64, prev_unix_ms: u64, total: u64, unix_ms: u64) -> Option<f64> {
    if unix_ms <= prev_unix_ms || total < prev_total {
        return None;
    }
    Some((total - prev_total) as f64 * 1000.0 / (unix_ms - prev_unix_ms) as f64)
}

/// The `q`-quantile (0 < q < 1) of a cumulative histogram over [`LATENCY_BUCKETS`], in
/// seconds, interpolated linearly inside the bucket it falls in (as Prometheus's
/// `histogram_quantile` does); `None` when it counts nothing.
pub fn quantile(q: f64, buckets: &[u64], count: u64) -> Option<f64> {
    quantile_in(&LATENCY_BUCKETS, q, buckets, count)
}

/// [`quantile`] of a cumulative histogram over the upper bounds `bounds` (seconds).
pub fn quantile_in(bounds: &[f64], q: f64, buckets: &[u64], count: u64) -> Option<f64> {
    if count == 0 {
        return None;
    }
    let rank = q * count as f64;
    let mut prev_count = 0u64;
    let mut prev_le = 0.0;
    for (i, &c) in buckets.iter().enumerate() {
        let le = bounds.get(i).copied().unwrap_or(f64::INFINITY);
        if c as f64 >= rank {
            if !le.is_finite() {
                return Some(prev_le);
            }
            let in_bucket = (c - prev_count.min(c)) as f64;
            let frac = if in_bucket > 0.0 {
                (rank - prev_count as f64) / in_bucket
            } else {
                1.0
            };
            return Some(prev_le + (le - prev_le) * frac.clamp(0.0, 1.0));
        }
        prev_count = c;
        prev_le = le;
    }
    // Beyond the last finite bucket: the best bound known.
    Some(prev_le)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_depends_on_the_secret() {
        let a = token(b"secret-a");
        assert_eq!(a.len(), 64);
        assert_eq!(a, token(b"secret-a"));
        assert_ne!(a, token(b"secret-b"));
    }

    #[test]
    fn quantiles_follow_the_buckets() {
        // 100 calls: 90 under 1 ms, 10 under 10 ms.
        let mut b = vec![0u64; LATENCY_BUCKETS.len()];
        for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
            b[i] = if *le >= 0.01 {
                100
            } else if *le >= 0.001 {
                90
            } else {
                0
            };
        }
        let p50 = quantile(0.5, &b, 100).unwrap_or(f64::NAN);
        assert!(p50 > 0.0005 && p50 <= 0.001, "{p50}");
        let p99 = quantile(0.99, &b, 100).unwrap_or(f64::NAN);
        assert!(p99 > 0.005 && p99 <= 0.01, "{p99}");
        assert_eq!(quantile(0.5, &b, 0), None);
    }

    #[test]
    fn rates_are_per_second_and_refuse_resets() {
        assert_eq!(per_second(10, 1_000, 30, 3_000), Some(10.0));
        assert_eq!(per_second(10, 1_000, 10, 3_000), Some(0.0));
        assert_eq!(per_second(30, 1_000, 10, 3_000), None, "a restarted source");
        assert_eq!(per_second(10, 3_000, 30, 3_000), None);
    }

    #[test]
    fn snapshots_read_with_missing_fields() {
        let s: Snapshot = serde_json::from_str(r#"{"node_id":"n"}"#).unwrap_or_default();
        assert_eq!(s.node_id, "n");
        assert!(s.samples.is_empty());
    }
}
