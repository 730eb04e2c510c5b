//! The calls a proxy answered, per function: a count, the failures among them and a latency
//! histogram over [`LATENCY_BUCKETS`], for this node's collector (the proxy's `Calls` RPC; the
//! collector's API re-exports the bounds for the dashboard).
//!
//! Invariants: recording a call costs one uncontended mutex and a map lookup without
//! allocation once the function's entry exists (the invoke path must not slow down); at most
//! [`MAX_FUNCTIONS`] names are kept, later ones (and calls to functions that do not exist,
//! which never add a name) are counted under [`OTHER_FUNCTIONS`]; counts only grow.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use yr_proto::{CallStats, FunctionCallStats};

/// Upper bounds (seconds) of the latency histogram's buckets; `+Inf` is implied.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0, 60.0,
];

/// Most distinct function names kept.
pub const MAX_FUNCTIONS: usize = 1000;

/// The name calls beyond [`MAX_FUNCTIONS`] names, and to unknown functions, are counted under.
pub const OTHER_FUNCTIONS: &str = "_other";

/// One function's figures; `buckets[i]` counts calls in bucket `i` alone (not cumulative), the
/// last one those above every bound.
#[derive(Clone, Debug, Default)]
struct Entry {
    calls: u64,
    errors: u64,
    buckets: [u64; LATENCY_BUCKETS.len() + 1],
    sum_seconds: f64,
}

/// The counters of one proxy (shared by its invoke paths).
#[derive(Debug, Default)]
pub struct Calls {
    by_function: Mutex<HashMap<String, Entry>>,
}

/// The bucket of a latency: the first bound it does not exceed.
fn bucket(seconds: f64) -> usize {
    LATENCY_BUCKETS
        .iter()
        .position(|le| seconds <= *le)
        .unwrap_or(LATENCY_BUCKETS.len())
}

impl Calls {
    /// Counts one call to `function` that took `took`; `failed` when its reply carries an
    /// error (the function's or the platform's); `known` is false when no such function is
    /// deployed (it then adds no name).
    pub fn record(&self, function: &str, took: Duration, failed: bool, known: bool) {
        let seconds = took.as_secs_f64();
        // A panic while holding the lock leaves only counters behind: still usable.
        let mut m = self.by_function.lock().unwrap_or_else(|e| e.into_inner());
        let e = match m.get_mut(function) {
            // The common case: no allocation.
            Some(e) => e,
            None => {
                let name = if known && m.len() < MAX_FUNCTIONS {
                    function
                } else {
                    OTHER_FUNCTIONS
                };
                m.entry(name.to_string()).or_default()
            }
        };
        e.calls += 1;
        if failed {
            e.errors += 1;
        }
        e.buckets[bucket(seconds)] += 1;
        e.sum_seconds += seconds;
    }

    /// Everything so far, with cumulative buckets (the `+Inf` one left out: it is `calls`),
    /// by function name.
    pub fn snapshot(&self, node_id: &str) -> CallStats {
        let m = match self.by_function.lock() {
            Ok(m) => m.clone(),
            Err(_) => HashMap::new(),
        };
        let mut functions: Vec<FunctionCallStats> = m
            .into_iter()
            .map(|(function, e)| {
                let mut acc = 0u64;
                let latency_buckets = e.buckets[..LATENCY_BUCKETS.len()]
                    .iter()
                    .map(|n| {
                        acc += n;
                        acc
                    })
                    .collect();
                FunctionCallStats {
                    function,
                    calls: e.calls,
                    errors: e.errors,
                    latency_buckets,
                    latency_sum_seconds: e.sum_seconds,
                }
            })
            .collect();
        functions.sort_by(|a, b| a.function.cmp(&b.function));
        CallStats {
            node_id: node_id.to_string(),
            functions,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_fall_in_cumulative_buckets() {
        let c = Calls::default();
        c.record("f", Duration::from_micros(50), false, true);
        c.record("f", Duration::from_millis(3), true, true);
        c.record("f", Duration::from_secs(100), false, true);
        let s = c.snapshot("n");
        assert_eq!(s.functions.len(), 1);
        let f = &s.functions[0];
        assert_eq!((f.calls, f.errors), (3, 1));
        assert_eq!(f.latency_buckets.len(), LATENCY_BUCKETS.len());
        assert_eq!(f.latency_buckets[0], 1, "50 µs is under the first bound");
        // 3 ms: in the 5 ms bucket (index 5), and every later one.
        assert_eq!(f.latency_buckets[4], 1);
        assert_eq!(f.latency_buckets[5], 2);
        assert_eq!(
            f.latency_buckets.last().copied(),
            Some(2),
            "100 s is only in +Inf"
        );
        assert!((f.latency_sum_seconds - 100.00305).abs() < 1e-6);
    }

    #[test]
    fn names_are_bounded_and_unknown_ones_add_none() {
        let c = Calls::default();
        c.record("nope", Duration::ZERO, true, false);
        for i in 0..MAX_FUNCTIONS + 3 {
            c.record(&format!("f{i}"), Duration::ZERO, false, true);
        }
        let s = c.snapshot("n");
        assert_eq!(s.functions.len(), MAX_FUNCTIONS);
        let other = s
            .functions
            .iter()
            .find(|f| f.function == OTHER_FUNCTIONS)
            .map(|f| f.calls);
        // The unknown call and the 4 names past the bound (the unknown one took a slot).
        assert_eq!(other, Some(5));
    }
}
