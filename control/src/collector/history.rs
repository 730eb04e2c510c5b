//! The collector's short memory: the last [`HISTORY_LEN`] node samples, oldest first.
//!
//! Invariants: never more than its capacity (the oldest sample goes first); samples are kept
//! in the order they were pushed, which is the order of their times (the sampler pushes them
//! one after the other).

use std::collections::VecDeque;

use super::api::{NodeSample, HISTORY_LEN};

/// A ring of node samples.
#[derive(Debug)]
pub struct History {
    samples: VecDeque<NodeSample>,
    capacity: usize,
}

impl Default for History {
    fn default() -> Self {
        History::with_capacity(HISTORY_LEN)
    }
}

impl History {
    /// A ring keeping at most `capacity` samples (at least one).
    pub fn with_capacity(capacity: usize) -> History {
        let capacity = capacity.max(1);
        History {
            samples: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    /// Adds the newest sample, dropping the oldest when full.
    pub fn push(&mut self, s: NodeSample) {
        if self.samples.len() == self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back(s);
    }

    /// The newest sample.
    pub fn latest(&self) -> Option<&NodeSample> {
        self.samples.back()
    }

    /// The samples newer than `since_unix_ms` (all of them for `None`), oldest first.
    pub fn since(&self, since_unix_ms: Option<u64>) -> Vec<NodeSample> {
        let from = since_unix_ms.unwrap_or(0);
        // Samples are in time order: skip the old ones from the front.
        let first = self.samples.partition_point(|s| s.unix_ms <= from);
        match since_unix_ms {
            None => self.samples.iter().cloned().collect(),
            Some(_) => self.samples.range(first..).cloned().collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> NodeSample {
        NodeSample {
            unix_ms: ms,
            ..Default::default()
        }
    }

    #[test]
    fn the_ring_keeps_the_newest() {
        let mut h = History::with_capacity(3);
        assert!(h.is_empty());
        for ms in 1..=5 {
            h.push(at(ms * 1000));
        }
        assert_eq!(h.len(), 3);
        let times: Vec<u64> = h.since(None).iter().map(|s| s.unix_ms).collect();
        assert_eq!(times, [3000, 4000, 5000]);
        assert_eq!(h.latest().map(|s| s.unix_ms), Some(5000));
    }

    #[test]
    fn since_returns_only_newer_samples() {
        let mut h = History::with_capacity(10);
        for ms in [1000, 2000, 3000] {
            h.push(at(ms));
        }
        let times = |since| -> Vec<u64> { h.since(since).iter().map(|s| s.unix_ms).collect() };
        assert_eq!(times(Some(2000)), [3000]);
        assert_eq!(times(Some(1500)), [2000, 3000]);
        assert_eq!(times(Some(0)), [1000, 2000, 3000]);
        assert!(times(Some(3000)).is_empty());
        assert_eq!(times(None).len(), 3);
        assert_eq!(History::with_capacity(0).capacity, 1);
    }
}
