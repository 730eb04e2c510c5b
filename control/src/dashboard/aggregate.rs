//! The dashboard's arithmetic, on plain values: each node's history merged from its
//! collector's snapshots, rates from counters, and per-function (and per-REST-service)
//! latency quantiles from the collectors' histograms.
//!
//! Invariants: a node's samples are in time order without repeats, at most an hour old and at
//! most [`api::HISTORY_LEN`] of them; a counter that goes down (its source restarted) adds
//! nothing rather than a negative or huge rate; rates over fewer than two points are zero.

use std::collections::{BTreeMap, VecDeque};

use crate::collector::api::{
    self, ComponentHealth, FunctionCalls, InstanceUsage, NodeSample, RestService,
};

/// How much history is kept per node.
pub const KEEP_MS: u64 = 3_600_000;
/// The window of the "now" rates (calls/s, errors/s) and of the recent latency quantiles.
pub const RATE_WINDOW_MS: u64 = 10_000;
/// The window of the latency quantiles: long enough to hold a few calls of a quiet function.
pub const LATENCY_WINDOW_MS: u64 = 60_000;
/// How many per-function counter readings are kept per node (enough for the windows).
const FUNCTION_READINGS: usize = 64;

/// One node as its collector described it.
#[derive(Clone, Debug, Default)]
pub struct NodeHistory {
    pub node_id: String,
    /// The collector's URL, from etcd.
    pub url: String,
    pub hostname: String,
    /// Oldest first.
    pub samples: VecDeque<NodeSample>,
    pub instances: Vec<InstanceUsage>,
    pub components: Vec<ComponentHealth>,
    /// The proxy's per-function counters at each snapshot (collector time, oldest first).
    pub functions: VecDeque<(u64, Vec<FunctionCalls>)>,
    /// The node's REST services as the latest snapshot described them.
    pub rest: Vec<RestService>,
    /// Their counters at each snapshot, in the shape of call counters (`function` is the
    /// service's name), so that their rates and quantiles are computed as the functions' are.
    pub rest_readings: VecDeque<(u64, Vec<FunctionCalls>)>,
    /// When its collector last answered (dashboard time), 0: never.
    pub last_ok_unix_ms: u64,
    /// Why the last try failed (none after a success).
    pub error: Option<String>,
}

impl NodeHistory {
    pub fn new(node_id: &str, url: &str) -> NodeHistory {
        NodeHistory {
            node_id: node_id.to_string(),
            url: url.to_string(),
            ..Default::default()
        }
    }

    /// The `since` of the next snapshot request: the newest sample held.
    pub fn since(&self) -> Option<u64> {
        self.samples.back().map(|s| s.unix_ms)
    }

    pub fn latest(&self) -> Option<&NodeSample> {
        self.samples.back()
    }

    /// Adds a snapshot fetched at `now_ms` (dashboard time).
    pub fn merge(&mut self, snap: api::Snapshot, now_ms: u64) {
        if !snap.hostname.is_empty() {
            self.hostname = snap.hostname;
        }
        let newest = self.since().unwrap_or(0);
        let mut fresh: Vec<NodeSample> = snap
            .samples
            .into_iter()
            .filter(|s| s.unix_ms > newest)
            .collect();
        fresh.sort_by_key(|s| s.unix_ms);
        fresh.dedup_by_key(|s| s.unix_ms);
        self.samples.extend(fresh);
        if let Some(last) = self.samples.back().map(|s| s.unix_ms) {
            let cutoff = last.saturating_sub(KEEP_MS);
            while self
                .samples
                .front()
                .is_some_and(|s| s.unix_ms < cutoff || self.samples.len() > api::HISTORY_LEN)
            {
                self.samples.pop_front();
            }
        }
        self.instances = snap.instances;
        self.components = snap.components;
        let at = if snap.now_unix_ms > 0 {
            snap.now_unix_ms
        } else {
            now_ms
        };
        if self.functions.back().is_none_or(|(t, _)| at > *t) {
            self.functions.push_back((at, snap.functions));
            while self.functions.len() > FUNCTION_READINGS {
                self.functions.pop_front();
            }
            let as_calls = snap
                .rest
                .iter()
                .map(|r| FunctionCalls {
                    function: r.service.clone(),
                    calls_total: r.requests_total,
                    errors_total: r.errors_total,
                    latency_buckets: r.latency_buckets.clone(),
                    latency_sum_seconds: r.latency_sum_seconds,
                })
                .collect();
            self.rest_readings.push_back((at, as_calls));
            while self.rest_readings.len() > FUNCTION_READINGS {
                self.rest_readings.pop_front();
            }
        }
        self.rest = snap.rest;
        self.last_ok_unix_ms = now_ms;
        self.error = None;
    }

    /// Records that the collector did not answer.
    pub fn failed(&mut self, why: String) {
        self.error = Some(why);
    }

    /// Whether the collector answered lately: its last answer is at most three sampling
    /// periods old.
    pub fn fresh(&self, now_ms: u64) -> bool {
        self.last_ok_unix_ms > 0
            && self.error.is_none()
            && now_ms.saturating_sub(self.last_ok_unix_ms) <= 3 * api::SAMPLE_EVERY_MS + 2_000
    }
}

/// How much a counter grew from `a` to `b`: nothing if it went down (its source restarted).
pub fn growth(a: u64, b: u64) -> u64 {
    b.saturating_sub(a)
}

/// The rate per second of `counter` over the samples of the last `window_ms` (ending at the
/// latest sample), summing the growth between consecutive samples.
pub fn rate(
    samples: &VecDeque<NodeSample>,
    window_ms: u64,
    counter: impl Fn(&NodeSample) -> u64,
) -> f64 {
    let Some(last) = samples.back() else {
        return 0.0;
    };
    let start = last.unix_ms.saturating_sub(window_ms);
    let recent: Vec<&NodeSample> = samples.iter().filter(|s| s.unix_ms >= start).collect();
    let (Some(first), Some(end)) = (recent.first(), recent.last()) else {
        return 0.0;
    };
    let dt = end.unix_ms.saturating_sub(first.unix_ms);
    if dt == 0 {
        return 0.0;
    }
    let grown: u64 = recent
        .windows(2)
        .map(|w| growth(counter(w[0]), counter(w[1])))
        .sum();
    grown as f64 * 1000.0 / dt as f64
}

/// The rate of `counter` between each sample and the one before it, as (time, per second).
pub fn rate_series(
    samples: &VecDeque<NodeSample>,
    counter: impl Fn(&NodeSample) -> u64,
) -> Vec<(u64, f64)> {
    let v: Vec<&NodeSample> = samples.iter().collect();
    v.windows(2)
        .map(|w| {
            let dt = w[1].unix_ms.saturating_sub(w[0].unix_ms);
            let r = if dt == 0 {
                0.0
            } else {
                growth(counter(w[0]), counter(w[1])) as f64 * 1000.0 / dt as f64
            };
            (w[1].unix_ms, r)
        })
        .collect()
}

/// One function's calls, summed over every node's proxy.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FunctionStats {
    pub calls_total: u64,
    pub errors_total: u64,
    pub calls_per_s: f64,
    pub errors_per_s: f64,
    /// Seconds; from the calls of the last [`LATENCY_WINDOW_MS`], or of all time when there
    /// were none lately; `None` when there were no calls at all.
    pub p50_s: Option<f64>,
    pub p99_s: Option<f64>,
}

/// Adds cumulative histogram `b` into `acc` (lengths may differ: missing buckets count 0).
fn add_buckets(acc: &mut Vec<u64>, b: &[u64]) {
    if acc.len() < b.len() {
        acc.resize(b.len(), 0);
    }
    for (a, x) in acc.iter_mut().zip(b) {
        *a += x;
    }
}

/// The reading of `readings` to measure growth from: the oldest one no older than `window_ms`
/// before the latest (the latest itself when it is alone).
fn base(readings: &VecDeque<(u64, Vec<FunctionCalls>)>, window_ms: u64) -> Option<usize> {
    let (last, _) = readings.back()?;
    let start = last.saturating_sub(window_ms);
    readings.iter().position(|(t, _)| *t >= start)
}

/// Per-function totals, rates and latency quantiles over `nodes`.
pub fn function_stats<'a>(
    nodes: impl IntoIterator<Item = &'a NodeHistory>,
) -> BTreeMap<String, FunctionStats> {
    call_stats(nodes, |n| &n.functions, &api::LATENCY_BUCKETS)
}

/// Per-service totals, rates and latency quantiles of the REST services of `nodes`.
pub fn rest_stats<'a>(
    nodes: impl IntoIterator<Item = &'a NodeHistory>,
) -> BTreeMap<String, FunctionStats> {
    call_stats(nodes, |n| &n.rest_readings, &api::REST_LATENCY_BUCKETS)
}

/// Totals, rates and latency quantiles by name over the counters `readings` picks from each
/// of `nodes`, whose histograms have the upper bounds `bounds`.
fn call_stats<'a>(
    nodes: impl IntoIterator<Item = &'a NodeHistory>,
    readings: impl Fn(&'a NodeHistory) -> &'a VecDeque<(u64, Vec<FunctionCalls>)>,
    bounds: &[f64],
) -> BTreeMap<String, FunctionStats> {
    #[derive(Default)]
    struct Acc {
        stats: FunctionStats,
        all: Vec<u64>,
        recent: Vec<u64>,
        recent_count: u64,
    }
    let mut acc: BTreeMap<String, Acc> = BTreeMap::new();
    for node in nodes {
        let readings = readings(node);
        let Some((last_t, last)) = readings.back() else {
            continue;
        };
        let rate_base = base(readings, RATE_WINDOW_MS).and_then(|i| readings.get(i));
        let lat_base = base(readings, LATENCY_WINDOW_MS).and_then(|i| readings.get(i));
        for f in last {
            let a = acc.entry(f.function.clone()).or_default();
            a.stats.calls_total += f.calls_total;
            a.stats.errors_total += f.errors_total;
            add_buckets(&mut a.all, &f.latency_buckets);
            if let Some((t0, then)) = rate_base {
                let dt = last_t.saturating_sub(*t0);
                if dt > 0 {
                    let before = then.iter().find(|g| g.function == f.function);
                    let calls = growth(before.map_or(0, |g| g.calls_total), f.calls_total);
                    let errors = growth(before.map_or(0, |g| g.errors_total), f.errors_total);
                    a.stats.calls_per_s += calls as f64 * 1000.0 / dt as f64;
                    a.stats.errors_per_s += errors as f64 * 1000.0 / dt as f64;
                }
            }
            if let Some((t0, then)) = lat_base {
                if last_t > t0 {
                    let before = then.iter().find(|g| g.function == f.function);
                    let before_calls = before.map_or(0, |g| g.calls_total);
                    if f.calls_total >= before_calls {
                        let mut d = f.latency_buckets.clone();
                        if let Some(b) = before {
                            for (x, y) in d.iter_mut().zip(&b.latency_buckets) {
                                *x = x.saturating_sub(*y);
                            }
                        }
                        add_buckets(&mut a.recent, &d);
                        a.recent_count += f.calls_total - before_calls;
                    }
                }
            }
        }
    }
    acc.into_iter()
        .map(|(name, mut a)| {
            let (buckets, count) = if a.recent_count > 0 {
                (&a.recent, a.recent_count)
            } else {
                (&a.all, a.stats.calls_total)
            };
            a.stats.p50_s = api::quantile_in(bounds, 0.5, buckets, count);
            a.stats.p99_s = api::quantile_in(bounds, 0.99, buckets, count);
            (name, a.stats)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::api::{Snapshot, LATENCY_BUCKETS};

    fn sample(unix_ms: u64, calls: u64) -> NodeSample {
        NodeSample {
            unix_ms,
            calls_total: calls,
            ..Default::default()
        }
    }

    fn snapshot(now: u64, samples: Vec<NodeSample>, functions: Vec<FunctionCalls>) -> Snapshot {
        Snapshot {
            node_id: "n".into(),
            hostname: "h".into(),
            now_unix_ms: now,
            sample_every_ms: 2_000,
            samples,
            functions,
            ..Default::default()
        }
    }

    /// A function's counters: `fast` calls under 1 ms and `slow` under 100 ms.
    fn calls(name: &str, fast: u64, slow: u64) -> FunctionCalls {
        FunctionCalls {
            function: name.into(),
            calls_total: fast + slow,
            errors_total: slow / 10,
            latency_buckets: LATENCY_BUCKETS
                .iter()
                .map(|&le| {
                    if le >= 0.1 {
                        fast + slow
                    } else if le >= 0.001 {
                        fast
                    } else {
                        0
                    }
                })
                .collect(),
            latency_sum_seconds: 0.0,
        }
    }

    #[test]
    fn merging_keeps_order_without_repeats_and_an_hour_at_most() {
        let mut h = NodeHistory::new("n", "http://x");
        h.merge(
            snapshot(4_000, vec![sample(2_000, 1), sample(4_000, 2)], vec![]),
            10,
        );
        assert_eq!(h.since(), Some(4_000));
        // The next snapshot repeats a sample and brings one newer, out of order.
        h.merge(
            snapshot(
                8_000,
                vec![sample(8_000, 4), sample(4_000, 2), sample(6_000, 3)],
                vec![],
            ),
            20,
        );
        let times: Vec<u64> = h.samples.iter().map(|s| s.unix_ms).collect();
        assert_eq!(times, [2_000, 4_000, 6_000, 8_000]);
        assert_eq!(h.last_ok_unix_ms, 20);
        // An hour later only the last hour remains.
        let late = 8_000 + KEEP_MS + 2_000;
        h.merge(snapshot(late, vec![sample(late, 5)], vec![]), 30);
        let times: Vec<u64> = h.samples.iter().map(|s| s.unix_ms).collect();
        assert_eq!(times, [late]);
        h.failed("refused".into());
        assert!(!h.fresh(30));
    }

    #[test]
    fn rates_come_from_counter_growth() {
        let s: VecDeque<NodeSample> = [
            sample(0, 0),
            sample(2_000, 10),
            sample(4_000, 30),
            sample(6_000, 50),
        ]
        .into();
        // 50 calls in 6 s.
        assert!((rate(&s, 60_000, |x| x.calls_total) - 50.0 / 6.0).abs() < 1e-9);
        // The last 4 s: 40 calls.
        assert!((rate(&s, 4_000, |x| x.calls_total) - 10.0).abs() < 1e-9);
        let series = rate_series(&s, |x| x.calls_total);
        assert_eq!(series, [(2_000, 5.0), (4_000, 10.0), (6_000, 10.0)]);
        // A counter that restarts adds nothing for that step.
        let r: VecDeque<NodeSample> = [sample(0, 100), sample(1_000, 3), sample(2_000, 5)].into();
        assert!((rate(&r, 60_000, |x| x.calls_total) - 1.0).abs() < 1e-9);
        assert_eq!(
            rate(&VecDeque::from([sample(0, 9)]), 10_000, |x| x.calls_total),
            0.0
        );
        assert_eq!(rate(&VecDeque::new(), 10_000, |x| x.calls_total), 0.0);
    }

    #[test]
    fn function_stats_sum_nodes_and_use_recent_latencies() {
        let mut a = NodeHistory::new("a", "u");
        let mut b = NodeHistory::new("b", "u");
        // Node a: 100 fast calls long ago, then 10 slow ones in the last 4 s.
        a.merge(snapshot(0, vec![], vec![calls("f", 100, 0)]), 1);
        a.merge(snapshot(100_000, vec![], vec![calls("f", 100, 0)]), 2);
        a.merge(snapshot(104_000, vec![], vec![calls("f", 100, 10)]), 3);
        // Node b: one reading only (no rate yet), 50 fast calls.
        b.merge(
            snapshot(104_000, vec![], vec![calls("f", 50, 0), calls("g", 0, 0)]),
            3,
        );
        let st = function_stats([&a, &b]);
        let f = &st["f"];
        assert_eq!(f.calls_total, 160);
        assert_eq!(f.errors_total, 1);
        // 10 calls over a's 4 s rate window.
        assert!((f.calls_per_s - 2.5).abs() < 1e-9, "{}", f.calls_per_s);
        assert!((f.errors_per_s - 0.25).abs() < 1e-9);
        // The recent calls were all slow: both quantiles fall in the slow bucket.
        let p50 = f.p50_s.unwrap_or(0.0);
        assert!(p50 > 0.05 && p50 <= 0.1, "{p50}");
        // g never ran.
        assert_eq!(st["g"].p50_s, None);
        assert_eq!(st["g"].calls_per_s, 0.0);
    }

    #[test]
    fn without_recent_calls_the_quantiles_cover_all_time() {
        let mut a = NodeHistory::new("a", "u");
        a.merge(snapshot(0, vec![], vec![calls("f", 99, 1)]), 1);
        a.merge(snapshot(2_000, vec![], vec![calls("f", 99, 1)]), 2);
        let f = &function_stats([&a])["f"];
        assert_eq!(f.calls_per_s, 0.0);
        let p50 = f.p50_s.unwrap_or(0.0);
        assert!(p50 > 0.0005 && p50 <= 0.001, "{p50}");
        let p99 = f.p99_s.unwrap_or(0.0);
        assert!(p99 <= 0.001, "{p99}");
    }
}
