//! Where an instance goes: a pure function of the live nodes, the instance records and the
//! demand, so it is unit-tested without a cluster. It knows the lifecycle only through
//! [`crate::lifecycle::ended`] (ended instances hold no resources) and never calls back into the
//! master.
//!
//! Order of decisions: hard filters first (resources fit, required label affinity, anti-affinity),
//! then a score: preferred affinity, then the caller's node ("local first"), then — when asked to
//! spread — fewest instances of the same function, then the most free cpu.

use std::collections::HashMap;

use yr_proto::{AffinityKind, InstanceRecord, NodeRecord, Resources};

use crate::error::Error;
use crate::function::Scheduling;
use crate::lifecycle::ended;

/// What an instance asks of its node.
#[derive(Debug, Clone, PartialEq)]
pub struct Demand {
    /// What it reserves there.
    pub resources: Resources,
    /// Where it may and would rather go.
    pub scheduling: Scheduling,
}

/// Resources reserved on `node` by its non-terminal instances.
pub fn used_on<'a>(
    instances: impl IntoIterator<Item = &'a InstanceRecord>,
    node: &str,
) -> Resources {
    let mut used = Resources::default();
    for r in instances {
        if r.node_id != node || ended(r) {
            continue;
        }
        if let Some(res) = &r.resources {
            used.cpu_millis += res.cpu_millis;
            used.memory_mib += res.memory_mib;
            for (k, v) in &res.custom {
                *used.custom.entry(k.clone()).or_default() += v;
            }
        }
    }
    used
}

fn free(total: &Resources, used: &Resources) -> Resources {
    Resources {
        cpu_millis: total.cpu_millis.saturating_sub(used.cpu_millis),
        memory_mib: total.memory_mib.saturating_sub(used.memory_mib),
        custom: total
            .custom
            .iter()
            .map(|(k, v)| (k.clone(), v - used.custom.get(k).copied().unwrap_or(0.0)))
            .collect(),
    }
}

fn fits(free: &Resources, want: &Resources) -> bool {
    free.cpu_millis >= want.cpu_millis
        && free.memory_mib >= want.memory_mib
        && want
            .custom
            .iter()
            .all(|(k, v)| free.custom.get(k).copied().unwrap_or(0.0) + 1e-9 >= *v)
}

/// `r` as people read it: "cpu 600m, memory 64 MiB, gpu 1".
pub fn describe(r: &Resources) -> String {
    let mut s = format!("cpu {}m, memory {} MiB", r.cpu_millis, r.memory_mib);
    let mut custom: Vec<_> = r.custom.iter().collect();
    custom.sort_by(|a, b| a.0.cmp(b.0));
    for (k, v) in custom {
        s.push_str(&format!(", {k} {v}"));
    }
    s
}

/// The best node for `demand`, or [`Error::InsufficientResources`] saying why none fits (naming
/// what was asked and the largest node, or the label rules no node satisfies).
pub fn choose(
    nodes: &HashMap<String, NodeRecord>,
    instances: &HashMap<String, InstanceRecord>,
    function: &str,
    demand: &Demand,
) -> Result<NodeRecord, Error> {
    let want = &demand.resources;
    let aff = &demand.scheduling.affinity;
    let mut best: Option<(i64, u64, &NodeRecord)> = None;
    let mut largest: Option<(&NodeRecord, Resources)> = None;
    let mut fit_but_labels = 0usize;
    for node in nodes.values() {
        let total = node.total.clone().unwrap_or_default();
        let f = free(&total, &used_on(instances.values(), &node.node_id));
        if largest
            .as_ref()
            .is_none_or(|(_, l)| (f.cpu_millis, f.memory_mib) > (l.cpu_millis, l.memory_mib))
        {
            largest = Some((node, f.clone()));
        }
        if !fits(&f, want) {
            continue;
        }
        let required_ok = aff
            .iter()
            .filter(|a| a.kind == AffinityKind::AffinityRequired)
            .all(|a| a.matches(&node.labels));
        let anti_ok = !aff
            .iter()
            .filter(|a| a.kind == AffinityKind::AffinityAnti)
            .any(|a| a.matches(&node.labels));
        if !required_ok || !anti_ok {
            fit_but_labels += 1;
            continue;
        }
        let mut score: i64 = 0;
        score += 1000
            * aff
                .iter()
                .filter(|a| a.kind == AffinityKind::AffinityPreferred)
                .filter(|a| a.matches(&node.labels))
                .count() as i64;
        if demand.scheduling.spread {
            let same = instances
                .values()
                .filter(|r| r.node_id == node.node_id && r.function == function && !ended(r))
                .count() as i64;
            score -= 10 * same;
        } else if node.node_id == demand.scheduling.preferred_node {
            score += 100;
        }
        let key = (score, f.cpu_millis);
        if best
            .as_ref()
            .is_none_or(|(s, c, n)| key > (*s, *c) || (key == (*s, *c) && node.node_id < n.node_id))
        {
            best = Some((key.0, key.1, node));
        }
    }
    if let Some((_, _, n)) = best {
        return Ok(n.clone());
    }
    if fit_but_labels > 0 {
        let rules: Vec<String> = aff
            .iter()
            .filter(|a| a.kind != AffinityKind::AffinityPreferred)
            .map(|a| {
                let kind = if a.kind == AffinityKind::AffinityAnti {
                    "anti"
                } else {
                    "required"
                };
                if a.values.is_empty() {
                    format!("{kind}:{}", a.key)
                } else {
                    format!("{kind}:{}={}", a.key, a.values.join("|"))
                }
            })
            .collect();
        return Err(Error::InsufficientResources(format!(
            "insufficient resources: {fit_but_labels} node(s) have room for {} but none satisfies the label affinity {}",
            describe(want),
            rules.join(", ")
        )));
    }
    let asked = describe(want);
    let affinity = if aff.is_empty() {
        String::new()
    } else {
        format!(" with {} label affinity rule(s)", aff.len())
    };
    Err(Error::InsufficientResources(match largest {
        None => format!("insufficient resources: asked {asked}{affinity}, but no node is alive"),
        Some((n, f)) => format!(
            "insufficient resources: asked {asked}{affinity}; the largest node, {}, has {} free",
            n.node_id,
            describe(&f)
        ),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::function::Affinity;

    /// The message of an [`Error::InsufficientResources`]; any other error fails the test.
    fn refusal(e: Error) -> String {
        match e {
            Error::InsufficientResources(m) => m,
            other => panic!("not a refusal for resources: {other:?}"),
        }
    }

    fn node(id: &str, cpu: u64, mem: u64, labels: &[(&str, &str)]) -> NodeRecord {
        NodeRecord {
            node_id: id.into(),
            total: Some(Resources {
                cpu_millis: cpu,
                memory_mib: mem,
                custom: Default::default(),
            }),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    fn inst(id: &str, node: &str, f: &str, cpu: u64) -> InstanceRecord {
        InstanceRecord {
            instance_id: id.into(),
            node_id: node.into(),
            function: f.into(),
            state: yr_proto::InstanceState::Running.into(),
            resources: Some(Resources {
                cpu_millis: cpu,
                memory_mib: 10,
                custom: Default::default(),
            }),
            ..Default::default()
        }
    }

    fn demand(cpu: u64, aff: Vec<Affinity>, spread: bool, local: &str) -> Demand {
        Demand {
            resources: Resources {
                cpu_millis: cpu,
                memory_mib: 10,
                custom: Default::default(),
            },
            scheduling: Scheduling {
                affinity: aff,
                spread,
                preferred_node: local.into(),
            },
        }
    }

    fn map<T: Clone>(v: Vec<(&str, T)>) -> HashMap<String, T> {
        v.into_iter().map(|(k, x)| (k.to_string(), x)).collect()
    }

    #[test]
    fn fits_local_first_then_most_free() {
        let nodes = map(vec![
            ("a", node("a", 2000, 1000, &[])),
            ("b", node("b", 4000, 1000, &[])),
        ]);
        let none = HashMap::new();
        assert_eq!(
            choose(&nodes, &none, "f", &demand(500, vec![], false, "a"))
                .unwrap()
                .node_id,
            "a"
        );
        assert_eq!(
            choose(&nodes, &none, "f", &demand(500, vec![], false, ""))
                .unwrap()
                .node_id,
            "b"
        );
        assert_eq!(
            choose(&nodes, &none, "f", &demand(3000, vec![], false, "a"))
                .unwrap()
                .node_id,
            "b"
        );
        // Used resources count: b is full.
        let insts = map(vec![("i", inst("i", "b", "g", 4000))]);
        assert_eq!(
            choose(&nodes, &insts, "f", &demand(500, vec![], false, ""))
                .unwrap()
                .node_id,
            "a"
        );
        let e = refusal(choose(&nodes, &insts, "f", &demand(3000, vec![], false, "")).unwrap_err());
        assert!(
            e.contains("asked cpu 3000m") && e.contains("largest node, a, has cpu 2000m"),
            "{e}"
        );
    }

    #[test]
    fn affinity_required_preferred_anti() {
        let nodes = map(vec![
            ("a", node("a", 2000, 1000, &[("zone", "x")])),
            ("b", node("b", 4000, 1000, &[("zone", "y"), ("gpu", "1")])),
        ]);
        let none = HashMap::new();
        let req = |k: AffinityKind, key: &str, vals: &[&str]| Affinity {
            kind: k,
            key: key.into(),
            values: vals.iter().map(|s| s.to_string()).collect(),
        };
        let r = AffinityKind::AffinityRequired;
        let p = AffinityKind::AffinityPreferred;
        let a = AffinityKind::AffinityAnti;
        assert_eq!(
            choose(
                &nodes,
                &none,
                "f",
                &demand(100, vec![req(r, "zone", &["x"])], false, "")
            )
            .unwrap()
            .node_id,
            "a"
        );
        assert_eq!(
            choose(
                &nodes,
                &none,
                "f",
                &demand(100, vec![req(p, "zone", &["x"])], false, "b")
            )
            .unwrap()
            .node_id,
            "a"
        );
        assert_eq!(
            choose(
                &nodes,
                &none,
                "f",
                &demand(100, vec![req(a, "gpu", &[])], false, "b")
            )
            .unwrap()
            .node_id,
            "a"
        );
        assert!(choose(
            &nodes,
            &none,
            "f",
            &demand(100, vec![req(r, "zone", &["z"])], false, "")
        )
        .is_err_and(|e| refusal(e).contains("none satisfies the label affinity required:zone=z")));
    }

    #[test]
    fn spread_prefers_fewest_of_the_same_function() {
        let nodes = map(vec![
            ("a", node("a", 8000, 1000, &[])),
            ("b", node("b", 4000, 1000, &[])),
        ]);
        let insts = map(vec![
            ("i", inst("i", "a", "f", 100)),
            ("j", inst("j", "b", "g", 100)),
        ]);
        assert_eq!(
            choose(&nodes, &insts, "f", &demand(100, vec![], true, "a"))
                .unwrap()
                .node_id,
            "b"
        );
    }

    #[test]
    fn no_nodes_says_so() {
        let e = refusal(
            choose(
                &HashMap::new(),
                &HashMap::new(),
                "f",
                &demand(1, vec![], false, ""),
            )
            .unwrap_err(),
        );
        assert!(e.contains("no node is alive"), "{e}");
    }
}
