//! The collector end to end: a real one-node cluster started by `yr start`, its collector's
//! `/metrics` read with the collector token and parsed by a Prometheus text parser (and the
//! project's stricter checker), its figures following what the test does (objects put into
//! the arena, calls, an instance killed with SIGKILL and restarted, requests to the node's REST
//! services), its instance logs, and its refusals (no or a wrong token: 401; an unknown instance: 404; bad parameters: 400).

use std::time::{Duration, Instant};

use yr_tests::cluster::{run_yr, Cluster, NodeOptions};
use yr_tests::http::{http, services, Reply, Svc};

/// How long a figure may take to follow: a few of the collector's 2 s samples.
const FOLLOW: Duration = Duration::from_secs(30);

fn collector(c: &Cluster) -> Svc {
    let url = c
        .master()
        .collector_url
        .clone()
        .expect("session.json names the collector");
    let token = c
        .yr(&["token", "--collector"])
        .expect_ok("yr token --collector")
        .stdout
        .trim()
        .to_string();
    assert_eq!(token.len(), 64, "a hex HMAC-SHA256: {token:?}");
    Svc {
        url,
        token: Some(token),
    }
}

/// `/metrics`, checked by the project's checker and parsed by `prometheus-parse`.
fn scrape(svc: &Svc) -> prometheus_parse::Scrape {
    let r = http(svc, "GET", "/metrics", "");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.headers.contains("text/plain; version=0.0.4"),
        "{}",
        r.headers
    );
    yr_control::rest::metrics::check_exposition(&r.body)
        .unwrap_or_else(|e| panic!("{e}\n{}", r.body));
    prometheus_parse::Scrape::parse(r.body.lines().map(|l| Ok(l.to_string())))
        .unwrap_or_else(|e| panic!("not the Prometheus text format: {e}\n{}", r.body))
}

/// The value of the sample `name` whose labels include `labels`.
fn value(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples
        .iter()
        .find(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .and_then(|x| match x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => Some(v),
            _ => None,
        })
}

/// Scrapes until `check` says yes, within [`FOLLOW`]; returns its answer.
fn wait_for<T>(
    svc: &Svc,
    what: &str,
    mut check: impl FnMut(&prometheus_parse::Scrape) -> Option<T>,
) -> T {
    let deadline = Instant::now() + FOLLOW;
    loop {
        let s = scrape(svc);
        if let Some(t) = check(&s) {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {FOLLOW:?}; last scrape:\n{}",
            http(svc, "GET", "/metrics", "").body
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn logs(svc: &Svc, query: &str) -> Reply {
    http(svc, "GET", &format!("/v1/instances/{query}"), "")
}

#[test]
fn the_collector_serves_metrics_that_follow_the_node() {
    let c = Cluster::start(NodeOptions::default());
    let svc = collector(&c);
    let node = c.master().node_id.clone();

    // The token guards everything but /healthz.
    assert_eq!(
        http(&svc.without_token(), "GET", "/healthz", "").status,
        200
    );
    assert_eq!(
        http(&svc.without_token(), "GET", "/metrics", "").status,
        401
    );
    let wrong = svc.with_token(&"0".repeat(64));
    assert_eq!(http(&wrong, "GET", "/metrics", "").status, 401);
    assert_eq!(http(&wrong, "GET", "/v1/snapshot", "").status, 401);
    // The REST token is not the collector's.
    let rest_token = c
        .yr(&["token"])
        .expect_ok("yr token")
        .stdout
        .trim()
        .to_string();
    assert_eq!(
        http(&svc.with_token(&rest_token), "GET", "/metrics", "").status,
        401
    );

    // The first sample: the arena answers, the node's components run.
    let (used, objects) = wait_for(&svc, "the arena's first sample", |s| {
        (value(s, "yr_arena_up", &[("node", &node)]) == Some(1.0)).then(|| {
            (
                value(s, "yr_arena_used_bytes", &[]).unwrap_or(f64::NAN),
                value(s, "yr_arena_objects", &[]).unwrap_or(f64::NAN),
            )
        })
    });
    let s = scrape(&svc);
    for component in [
        "function-proxy",
        "data-worker",
        "function-agent",
        "collector",
    ] {
        assert_eq!(
            value(&s, "yr_component_up", &[("component", component)]),
            Some(1.0),
            "{component} runs"
        );
    }
    assert!(value(&s, "yr_node_memory_total_bytes", &[]).unwrap_or(0.0) > 0.0);
    assert!(value(&s, "yr_node_cpu_seconds_total", &[]).unwrap_or(0.0) > 0.0);

    // Objects put into the arena: its use rises.
    let tmp = tempfile::tempdir().expect("temp dir");
    let file = tmp.path().join("object");
    std::fs::write(&file, vec![7u8; 1 << 20]).expect("write the object's bytes");
    let socket = c
        .master()
        .data_socket
        .to_str()
        .expect("UTF-8 path")
        .to_string();
    for _ in 0..3 {
        run_yr(&[
            "store",
            "put",
            "--socket",
            &socket,
            "--file",
            file.to_str().expect("UTF-8 path"),
        ])
        .expect_ok("yr store put");
    }
    wait_for(&svc, "the arena's use after three puts of 1 MiB", |s| {
        let u = value(s, "yr_arena_used_bytes", &[])?;
        let o = value(s, "yr_arena_objects", &[])?;
        (u >= used + f64::from(3u32 << 20) && o >= objects + 3.0).then_some(())
    });

    // A call through the proxy: counted, with its latency.
    c.deploy_example("hello", "hello", "hello", &[]);
    c.invoke("hello", "world").expect_ok("invoke hello");
    let st = c.status();
    let inst = st
        .instances_of("hello")
        .first()
        .map(|i| (*i).clone())
        .expect("a hello instance");
    let id = inst.instance_id.clone();
    wait_for(&svc, "the call and the instance in /metrics", |s| {
        let calls = value(s, "yr_function_calls_total", &[("function", "hello")])?;
        let count = value(
            s,
            "yr_function_call_duration_seconds_count",
            &[("function", "hello")],
        );
        let rss = value(
            s,
            "yr_instance_resident_memory_bytes",
            &[("instance_id", &id)],
        )?;
        let running = value(
            s,
            "yr_instance_state",
            &[("instance_id", &id), ("state", "RUNNING")],
        )?;
        (calls >= 1.0 && count == Some(calls) && rss > 0.0 && running == 1.0).then_some(())
    });
    let restarts = value(
        &scrape(&svc),
        "yr_instance_restarts_total",
        &[("instance_id", &id)],
    )
    .expect("the instance's restarts");

    // `yr status` takes the instance's usage from the collector.
    let out = c.yr(&["status", "--json"]).expect_ok("yr status --json");
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("status is JSON");
    let mem = v["instances"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["instance_id"] == id.as_str()))
        .map(|i| i["memory_bytes_used"].clone());
    assert!(
        mem.as_ref().and_then(|m| m.as_u64()).unwrap_or(0) > 0,
        "status shows the instance's memory from the collector: {mem:?}\n{}",
        out.stdout
    );

    // Kill the instance's process: it is restarted, and its restart count rises.
    // SAFETY: kill(2) on the test cluster's own function process, named by `yr status`.
    let r = unsafe { libc::kill(inst.pid as libc::pid_t, libc::SIGKILL) };
    assert_eq!(r, 0, "kill -9 {}", inst.pid);
    wait_for(&svc, "the restart in /metrics", |s| {
        let n = value(s, "yr_instance_restarts_total", &[("instance_id", &id)])?;
        (n >= restarts + 1.0).then_some(())
    });

    // The snapshot for the dashboard: history, instances, calls and components.
    let r = http(&svc, "GET", "/v1/snapshot", "");
    assert_eq!(r.status, 200, "{}", r.body);
    let snap: serde_json::Value = serde_json::from_str(&r.body).expect("snapshot JSON");
    assert_eq!(snap["node_id"], node.as_str());
    assert!(
        snap["samples"].as_array().map_or(0, Vec::len) >= 2,
        "{}",
        r.body
    );
    let last = snap["samples"][snap["samples"].as_array().map_or(0, Vec::len) - 1]["unix_ms"]
        .as_u64()
        .unwrap_or(0);
    let r = http(&svc, "GET", &format!("/v1/snapshot?since={last}"), "");
    let later: serde_json::Value = serde_json::from_str(&r.body).expect("snapshot JSON");
    assert!(
        later["samples"]
            .as_array()
            .is_some_and(|a| a.iter().all(|x| x["unix_ms"].as_u64() > Some(last))),
        "since= returns only newer samples: {}",
        r.body
    );
    assert_eq!(http(&svc, "GET", "/v1/snapshot?since=soon", "").status, 400);
}

/// The latest sample time in the collector's snapshot.
fn latest_sample_ms(svc: &Svc) -> u64 {
    let r = http(svc, "GET", "/v1/snapshot", "");
    assert_eq!(r.status, 200, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).expect("snapshot JSON");
    v["samples"]
        .as_array()
        .and_then(|a| a.last())
        .and_then(|s| s["unix_ms"].as_u64())
        .unwrap_or(0)
}

#[test]
fn the_collector_counts_the_rest_services_requests() {
    let c = Cluster::start(NodeOptions::default());
    let svc = collector(&c);
    let (meta, front) = services(&c.master().session_dir);
    let rest = |s: &prometheus_parse::Scrape, service: &str| {
        let up = value(s, "yr_rest_up", &[("service", service)])?;
        let n = value(s, "yr_rest_requests_total", &[("service", service)])?;
        let count = value(
            s,
            "yr_rest_request_duration_seconds_count",
            &[("service", service)],
        )?;
        (up == 1.0).then_some((n, count))
    };
    let (meta0, front0) = wait_for(&svc, "both REST services up in /metrics", |s| {
        Some((rest(s, "meta-service")?, rest(s, "frontend")?))
    });

    // Seven listings from the meta service, three calls of a function that does not exist
    // (404s: counted, not as errors) and one refused request (401) at the frontend.
    for _ in 0..7 {
        assert_eq!(
            http(&meta, "GET", "/serverless/v1/functions", "").status,
            200
        );
    }
    for _ in 0..3 {
        let r = http(
            &front,
            "POST",
            "/invocations/default/svc/0@svc@missing/",
            "{}",
        );
        assert_eq!(r.status, 404, "{}", r.body);
    }
    let r = http(
        &front.with_token("wrong"),
        "POST",
        "/invocations/default/svc/0@svc@missing/",
        "{}",
    );
    assert_eq!(r.status, 401, "{}", r.body);
    let want_meta = meta0.0 + 7.0;
    let want_front = front0.0 + 4.0;
    let errors0 = value(
        &scrape(&svc),
        "yr_rest_errors_total",
        &[("service", "frontend")],
    );
    wait_for(&svc, "the requests counted by service", |s| {
        let (m, m_count) = rest(s, "meta-service")?;
        let (f, f_count) = rest(s, "frontend")?;
        (m >= want_meta && m_count >= meta0.1 + 7.0 && f >= want_front && f_count >= front0.1 + 4.0)
            .then_some(())
    });
    // The collector reads `/metrics` every round: those reads are not counted as traffic.
    let t = latest_sample_ms(&svc);
    let deadline = Instant::now() + FOLLOW;
    while latest_sample_ms(&svc) < t + 3 * 2_000 {
        assert!(Instant::now() < deadline, "the collector stopped sampling");
        std::thread::sleep(Duration::from_millis(200));
    }
    let s = scrape(&svc);
    assert_eq!(
        rest(&s, "meta-service").map(|r| r.0),
        Some(want_meta),
        "exactly the seven requests, whatever the scrapes"
    );
    assert_eq!(rest(&s, "frontend").map(|r| r.0), Some(want_front));
    assert_eq!(
        value(&s, "yr_rest_errors_total", &[("service", "frontend")]),
        errors0,
        "404 and 401 are not server errors"
    );

    // The snapshot for the dashboard carries the same, with the services' URLs.
    let r = http(&svc, "GET", "/v1/snapshot", "");
    let v: serde_json::Value = serde_json::from_str(&r.body).expect("snapshot JSON");
    let of = |name: &str| {
        v["rest"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["service"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("no {name} in the snapshot: {v}"))
    };
    assert_eq!(of("frontend")["url"], front.url.as_str());
    assert_eq!(of("meta-service")["up"], true);
}

#[test]
fn the_collector_serves_instance_logs() {
    let c = Cluster::start(NodeOptions::default());
    let svc = collector(&c);
    c.deploy_example("crasher", "hello", "crash", &["--max-retries", "0"]);
    let out = c
        .invoke("crasher", "boom")
        .expect_err("a call that crashes");
    let id = out.exited_instance("crasher");

    // The tail of what the function printed on stderr.
    let r = logs(&svc, &format!("{id}/logs?stream=stderr&tail=4096"));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("crash requested"), "{}", r.body);
    let end: u64 = r
        .headers
        .lines()
        .find_map(|l| l.strip_prefix("x-log-end:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no x-log-end header: {}", r.headers));
    assert_eq!(
        end,
        r.body.len() as u64,
        "the whole small file was returned"
    );
    // From an offset: the rest of the file; at its end, nothing.
    let r = logs(&svc, &format!("{id}/logs?stream=stderr&offset=6"));
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len() as u64, end - 6);
    let r = logs(&svc, &format!("{id}/logs?stream=stderr&offset={end}"));
    assert_eq!((r.status, r.body.as_str()), (200, ""));

    // A follow: the response stays open and starts with what is there.
    {
        use std::io::{Read, Write};
        let host = svc.url.trim_start_matches("http://");
        let mut s = std::net::TcpStream::connect(host).expect("connect to the collector");
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("read timeout");
        let token = svc.token.clone().unwrap_or_default();
        write!(
            s,
            "GET /v1/instances/{id}/logs?stream=stderr&offset=0&follow=true HTTP/1.1\r\n\
             Host: {host}\r\nAuthorization: Bearer {token}\r\n\r\n"
        )
        .expect("send");
        let mut got = Vec::new();
        let deadline = Instant::now() + FOLLOW;
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains("crash requested") {
            assert!(
                Instant::now() < deadline,
                "no log bytes: {:?}",
                String::from_utf8_lossy(&got)
            );
            match s.read(&mut buf) {
                Ok(0) => panic!("the follow ended: {:?}", String::from_utf8_lossy(&got)),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(e) => panic!("reading the follow: {e}"),
            }
        }
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        // Still open: nothing more to read, and no end of the stream.
        match s.read(&mut buf) {
            Ok(0) => panic!("the follow ended by itself"),
            Ok(_) => {}
            Err(e) => assert!(
                matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "{e}"
            ),
        }
    }

    // Refusals.
    let r = logs(&svc, "no-such-instance/logs");
    assert_eq!(r.status, 404, "{}", r.body);
    assert!(r.body.contains("no-such-instance"), "{}", r.body);
    assert_eq!(logs(&svc, &format!("{id}/logs?stream=stdin")).status, 400);
    assert_eq!(logs(&svc, &format!("{id}/logs?tail=x")).status, 400);
    assert_eq!(
        logs(&svc, &format!("{id}/logs?tail=1&offset=1")).status,
        400
    );
    assert_eq!(logs(&svc, "..hidden/logs").status, 400);
    assert_eq!(
        http(
            &svc.without_token(),
            "GET",
            &format!("/v1/instances/{id}/logs"),
            ""
        )
        .status,
        401
    );
}

/// `yr status` on the master shows the usage of an instance that runs on a worker node: read
/// from the worker's collector, found through etcd, not from the instance's record.
#[test]
fn status_reads_each_nodes_collector() {
    let mut c = Cluster::start(NodeOptions::default());
    c.add_worker(NodeOptions::default().label("zone", "b"));
    let worker_id = c.session(1).node_id.clone();
    assert!(
        c.session(1).collector_url.is_some(),
        "a worker node has a collector too"
    );
    c.wait_until("the worker is registered", |st| {
        st.node(&worker_id).is_some().then_some(())
    });
    c.deploy_example("counter", "counter", "counter", &[]);
    c.yr(&[
        "instance",
        "create",
        "counter",
        "--name",
        "there",
        "--affinity",
        "required:zone=b",
    ])
    .expect_ok("create an instance on the worker");
    let deadline = Instant::now() + FOLLOW;
    loop {
        let out = c.yr(&["status", "--json"]).expect_ok("yr status --json");
        let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("status is JSON");
        let there = v["instances"]
            .as_array()
            .and_then(|a| a.iter().find(|i| i["name"] == "there").cloned())
            .unwrap_or_else(|| panic!("no instance `there`: {}", out.stdout));
        assert_eq!(there["node_id"], worker_id.as_str(), "{there}");
        if there["memory_bytes_used"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no usage of the worker's instance within {FOLLOW:?}: {there}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
