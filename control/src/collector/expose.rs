//! A node's figures in the Prometheus text exposition format (version 0.0.4): what `GET
//! /metrics` answers. Pure: a [`Snapshot`] in, text out.
//!
//! Naming follows Prometheus's conventions: base units (bytes, seconds), counters end in
//! `_total`, every series carries `node` (the node ID); instance series carry `instance_id`
//! and `function` (never `instance`, which Prometheus sets to the scraped target), component
//! series `component`, call series `function`, REST series `service`. Every family has a HELP
//! and a TYPE line, even when it has no series.

use std::fmt::Write as _;

use super::api::{Snapshot, LATENCY_BUCKETS, REST_LATENCY_BUCKETS};

/// The text of a label value, escaped as the format wants (backslash, quote, newline).
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A number as the format writes it.
fn num(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

struct Out {
    text: String,
    node: String,
}

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// One series: `labels` are extra `key="value"` pairs (values escaped here).
    fn series(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let _ = write!(self.text, "{name}{{node=\"{}\"", self.node);
        for (k, v) in labels {
            let _ = write!(self.text, ",{k}=\"{}\"", escape(v));
        }
        let _ = writeln!(self.text, "}} {}", num(value));
    }

    /// The series of one histogram labelled `label`: `buckets` cumulative over `bounds`
    /// (forced to never decrease nor pass `count`, whatever the source sent).
    fn histogram(
        &mut self,
        name: &str,
        label: (&str, &str),
        bounds: &[f64],
        buckets: &[u64],
        count: u64,
        sum: f64,
    ) {
        let (key, value) = (label.0, escape(label.1));
        let node = &self.node;
        let mut prev = 0u64;
        for (i, le) in bounds.iter().enumerate() {
            let n = buckets
                .get(i)
                .copied()
                .unwrap_or(count)
                .max(prev)
                .min(count);
            prev = n;
            let _ = writeln!(
                self.text,
                "{name}_bucket{{node=\"{node}\",{key}=\"{value}\",le=\"{le}\"}} {n}"
            );
        }
        let _ = writeln!(
            self.text,
            "{name}_bucket{{node=\"{node}\",{key}=\"{value}\",le=\"+Inf\"}} {count}\n\
             {name}_sum{{node=\"{node}\",{key}=\"{value}\"}} {}\n\
             {name}_count{{node=\"{node}\",{key}=\"{value}\"}} {count}",
            num(sum)
        );
    }

    /// A family with one series of the node.
    fn one(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.family(name, kind, help);
        self.series(name, &[], value);
    }
}

/// Renders `s`: the latest sample (nothing of the node's figures before the first one), the
/// instances, the components and the calls.
pub fn render(s: &Snapshot) -> String {
    let mut o = Out {
        text: String::new(),
        node: escape(&s.node_id),
    };
    if let Some(n) = s.samples.last() {
        o.one(
            "yr_node_cpu_seconds_total",
            "counter",
            "Cpu time the node spent busy (all cores, not idle or waiting for I/O) since boot.",
            n.cpu_seconds_total,
        );
        o.one(
            "yr_node_cpu_cores",
            "gauge",
            "Cores of the node this process may use.",
            n.cpu_total_millis as f64 / 1000.0,
        );
        o.one(
            "yr_node_memory_used_bytes",
            "gauge",
            "Memory in use on the node (total less available).",
            n.memory_used_bytes as f64,
        );
        o.one(
            "yr_node_memory_total_bytes",
            "gauge",
            "Memory of the node.",
            n.memory_total_bytes as f64,
        );
        let a = &n.arena;
        let arena: [(&str, &str, &str, u64); 11] = [
            (
                "yr_arena_capacity_bytes",
                "gauge",
                "Size of the data worker's shared-memory arena.",
                a.capacity_bytes,
            ),
            (
                "yr_arena_used_bytes",
                "gauge",
                "Bytes of the arena held by objects.",
                a.used_bytes,
            ),
            (
                "yr_arena_objects",
                "gauge",
                "Sealed objects in the arena.",
                a.objects,
            ),
            (
                "yr_arena_pinned_objects",
                "gauge",
                "Objects in the arena held by a client.",
                a.pinned_objects,
            ),
            (
                "yr_arena_spilled_objects",
                "gauge",
                "Objects spilled to disk only.",
                a.spilled_objects,
            ),
            (
                "yr_arena_spilled_bytes",
                "gauge",
                "Bytes of the objects spilled to disk.",
                a.spilled_bytes,
            ),
            (
                "yr_arena_spills_total",
                "counter",
                "Objects written to disk since the data worker started.",
                a.spills_total,
            ),
            (
                "yr_arena_restores_total",
                "counter",
                "Objects read back from disk since the data worker started.",
                a.restores_total,
            ),
            (
                "yr_arena_transfer_received_bytes_total",
                "counter",
                "Bytes of objects pulled from other nodes since the data worker started.",
                a.transfer_in_bytes_total,
            ),
            (
                "yr_arena_transfer_sent_bytes_total",
                "counter",
                "Bytes of objects served to other nodes since the data worker started.",
                a.transfer_out_bytes_total,
            ),
            (
                "yr_arena_up",
                "gauge",
                "1 if the data worker answered the last sample, else 0.",
                u64::from(a.up),
            ),
        ];
        for (name, kind, help, v) in arena {
            o.one(name, kind, help, v as f64);
        }
    }

    o.family(
        "yr_instance_state",
        "gauge",
        "1 for each instance of the node, with its lifecycle state as a label.",
    );
    for i in &s.instances {
        o.series(
            "yr_instance_state",
            &[
                ("instance_id", &i.instance_id),
                ("function", &i.function),
                ("state", &i.state),
            ],
            1.0,
        );
    }
    type Figure = fn(&super::api::InstanceUsage) -> f64;
    let per_instance: [(&str, &str, &str, Figure); 3] = [
        (
            "yr_instance_cpu_seconds_total",
            "counter",
            "Cpu time the instance's current process used.",
            |i| i.cpu_seconds_total,
        ),
        (
            "yr_instance_resident_memory_bytes",
            "gauge",
            "Resident memory of the instance's process.",
            |i| i.rss_bytes as f64,
        ),
        (
            "yr_instance_restarts_total",
            "counter",
            "Times the instance was restarted after its process failed.",
            |i| f64::from(i.restarts),
        ),
    ];
    for (name, kind, help, figure) in per_instance {
        o.family(name, kind, help);
        for i in &s.instances {
            // Usage only for a process that runs: a stopped one has none.
            if name != "yr_instance_restarts_total" && i.pid == 0 {
                continue;
            }
            o.series(
                name,
                &[("instance_id", &i.instance_id), ("function", &i.function)],
                figure(i),
            );
        }
    }

    o.family(
        "yr_component_up",
        "gauge",
        "1 if the component's process runs, else 0.",
    );
    for c in &s.components {
        let up = if c.state == "running" { 1.0 } else { 0.0 };
        o.series("yr_component_up", &[("component", &c.name)], up);
    }
    o.family(
        "yr_component_restarts_total",
        "counter",
        "Times the node supervisor restarted the component.",
    );
    for c in &s.components {
        o.series(
            "yr_component_restarts_total",
            &[("component", &c.name)],
            f64::from(c.restarts),
        );
    }

    o.family(
        "yr_function_calls_total",
        "counter",
        "Calls this node's proxy answered, by function.",
    );
    for f in &s.functions {
        o.series(
            "yr_function_calls_total",
            &[("function", &f.function)],
            f.calls_total as f64,
        );
    }
    o.family(
        "yr_function_call_errors_total",
        "counter",
        "Calls this node's proxy answered with an error, by function.",
    );
    for f in &s.functions {
        o.series(
            "yr_function_call_errors_total",
            &[("function", &f.function)],
            f.errors_total as f64,
        );
    }
    let h = "yr_function_call_duration_seconds";
    o.family(
        h,
        "histogram",
        "Time this node's proxy took to answer a call, by function.",
    );
    for f in &s.functions {
        o.histogram(
            h,
            ("function", &f.function),
            &LATENCY_BUCKETS,
            &f.latency_buckets,
            f.calls_total,
            f.latency_sum_seconds,
        );
    }

    type ServiceFigure = fn(&super::api::RestService) -> f64;
    let per_service: [(&str, &str, &str, ServiceFigure); 3] = [
        (
            "yr_rest_up",
            "gauge",
            "1 if the REST service's /metrics answered the last sample, else 0.",
            |r| f64::from(u8::from(r.up)),
        ),
        (
            "yr_rest_requests_total",
            "counter",
            "Requests the REST service answered (scrapes of its /metrics left out).",
            |r| r.requests_total as f64,
        ),
        (
            "yr_rest_errors_total",
            "counter",
            "Requests the REST service answered with a 5xx status.",
            |r| r.errors_total as f64,
        ),
    ];
    for (name, kind, help, figure) in per_service {
        o.family(name, kind, help);
        for r in &s.rest {
            o.series(name, &[("service", &r.service)], figure(r));
        }
    }
    let h = "yr_rest_request_duration_seconds";
    o.family(
        h,
        "histogram",
        "Time the REST service took from a request to its response head.",
    );
    for r in &s.rest {
        o.histogram(
            h,
            ("service", &r.service),
            &REST_LATENCY_BUCKETS,
            &r.latency_buckets,
            r.latency_count,
            r.latency_sum_seconds,
        );
    }
    o.text
}

#[cfg(test)]
mod tests {
    use super::super::api::*;
    use super::*;
    use crate::rest::metrics::check_exposition;

    fn snapshot() -> Snapshot {
        let mut buckets = vec![0u64; LATENCY_BUCKETS.len()];
        for (i, b) in buckets.iter_mut().enumerate() {
            *b = if i >= 3 { 4 } else { 1 };
        }
        Snapshot {
            node_id: "host-1".into(),
            samples: vec![NodeSample {
                unix_ms: 1,
                cpu_total_millis: 2000,
                cpu_seconds_total: 12.5,
                memory_used_bytes: 100,
                memory_total_bytes: 1000,
                arena: ArenaSample {
                    up: true,
                    used_bytes: 4096,
                    objects: 3,
                    ..Default::default()
                },
                ..Default::default()
            }],
            instances: vec![
                InstanceUsage {
                    instance_id: "f-1".into(),
                    function: "0@svc@\"odd\"".into(),
                    state: "RUNNING".into(),
                    pid: 7,
                    restarts: 2,
                    rss_bytes: 1 << 20,
                    cpu_seconds_total: 0.25,
                    ..Default::default()
                },
                InstanceUsage {
                    instance_id: "f-2".into(),
                    function: "f".into(),
                    state: "FATAL".into(),
                    ..Default::default()
                },
            ],
            functions: vec![FunctionCalls {
                function: "f".into(),
                calls_total: 5,
                errors_total: 1,
                latency_buckets: buckets,
                latency_sum_seconds: 0.5,
            }],
            components: vec![
                ComponentHealth {
                    name: "data-worker".into(),
                    pid: 3,
                    state: "running".into(),
                    restarts: 1,
                },
                ComponentHealth {
                    name: "function-agent".into(),
                    pid: 4,
                    state: "restarting".into(),
                    restarts: 0,
                },
            ],
            rest: vec![RestService {
                service: "frontend".into(),
                url: "http://127.0.0.1:8888".into(),
                up: true,
                requests_total: 9,
                errors_total: 2,
                latency_buckets: (0..REST_LATENCY_BUCKETS.len() as u64).collect(),
                latency_count: 9,
                latency_sum_seconds: 0.25,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn the_exposition_is_valid_and_says_what_the_snapshot_says() {
        let text = render(&snapshot());
        check_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        for line in [
            "yr_node_cpu_seconds_total{node=\"host-1\"} 12.5",
            "yr_node_cpu_cores{node=\"host-1\"} 2",
            "yr_arena_used_bytes{node=\"host-1\"} 4096",
            "yr_arena_objects{node=\"host-1\"} 3",
            "yr_arena_up{node=\"host-1\"} 1",
            "yr_instance_restarts_total{node=\"host-1\",instance_id=\"f-1\",function=\"0@svc@\\\"odd\\\"\"} 2",
            "yr_instance_restarts_total{node=\"host-1\",instance_id=\"f-2\",function=\"f\"} 0",
            "yr_instance_state{node=\"host-1\",instance_id=\"f-2\",function=\"f\",state=\"FATAL\"} 1",
            "yr_instance_resident_memory_bytes{node=\"host-1\",instance_id=\"f-1\",function=\"0@svc@\\\"odd\\\"\"} 1048576",
            "yr_component_up{node=\"host-1\",component=\"function-agent\"} 0",
            "yr_component_restarts_total{node=\"host-1\",component=\"data-worker\"} 1",
            "yr_function_calls_total{node=\"host-1\",function=\"f\"} 5",
            "yr_function_call_errors_total{node=\"host-1\",function=\"f\"} 1",
            "yr_function_call_duration_seconds_bucket{node=\"host-1\",function=\"f\",le=\"0.001\"} 4",
            "yr_function_call_duration_seconds_bucket{node=\"host-1\",function=\"f\",le=\"+Inf\"} 5",
            "yr_function_call_duration_seconds_count{node=\"host-1\",function=\"f\"} 5",
            "yr_rest_up{node=\"host-1\",service=\"frontend\"} 1",
            "yr_rest_requests_total{node=\"host-1\",service=\"frontend\"} 9",
            "yr_rest_errors_total{node=\"host-1\",service=\"frontend\"} 2",
            "yr_rest_request_duration_seconds_bucket{node=\"host-1\",service=\"frontend\",le=\"0.001\"} 0",
            "yr_rest_request_duration_seconds_bucket{node=\"host-1\",service=\"frontend\",le=\"0.005\"} 2",
            "yr_rest_request_duration_seconds_bucket{node=\"host-1\",service=\"frontend\",le=\"30\"} 9",
            "yr_rest_request_duration_seconds_count{node=\"host-1\",service=\"frontend\"} 9",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        // A process that does not run has no usage.
        assert!(
            !text.contains("yr_instance_resident_memory_bytes{node=\"host-1\",instance_id=\"f-2\"")
        );
    }

    #[test]
    fn an_empty_snapshot_still_declares_its_families() {
        let text = render(&Snapshot::default());
        check_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert!(text.contains("# TYPE yr_function_call_duration_seconds histogram"));
        assert!(!text.contains("yr_node_cpu_cores"), "no sample yet");
    }
}
