//! The frontend's `/datasystem/v1` object and KV routes and both services' `/metrics`, over
//! real HTTP against real processes: objects put and got (16 MiB streamed in, and chunked),
//! an object made on a second node fetched through the master's frontend, then lost with its
//! node (410); keys set, got, deleted (404 after); bad parameters named in 400s; a body shorter
//! than its Content-Length (or a client gone mid-body) leaves nothing in the store; the body
//! limit refuses a declared length before any byte is read; `/metrics` counts by route
//! template and is valid Prometheus text behind the token. Without a data worker the routes
//! answer 503, and a restarted data worker is reconnected to.
//!
//! The HTTP client is a few lines over `TcpStream` (HTTP/1.1, `Connection: close`) that sends
//! and receives bytes, so a test can lie about lengths and see exactly what comes back.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use yr_datastore::Client;
use yr_tests::cluster::{Cluster, NodeOptions};
use yr_tests::http::{services, Svc};
use yr_tests::{bytes, checksum, yr_bin};

/// A reply with a binary body.
struct Raw {
    status: u16,
    /// Lower-cased head.
    headers: String,
    body: Vec<u8>,
}

impl Raw {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body[..self.body.len().min(400)])
            )
        })
    }

    /// The problem+json `code` and `detail`, checking the content type.
    fn problem(&self) -> (u64, String) {
        assert!(
            self.headers
                .contains("content-type: application/problem+json"),
            "not problem+json: {}",
            self.headers
        );
        let v = self.json();
        (
            v["code"].as_u64().expect("code"),
            v["detail"].as_str().expect("detail").to_string(),
        )
    }
}

fn host(svc: &Svc) -> String {
    svc.url.trim_start_matches("http://").to_string()
}

fn head(svc: &Svc, method: &str, path: &str, extra: &str) -> String {
    let auth = svc
        .token
        .as_ref()
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\n{auth}{extra}Connection: close\r\n\r\n",
        host(svc)
    )
}

fn parse(raw: &[u8]) -> Option<Raw> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let mut body = raw[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let eol = rest.windows(2).position(|w| w == b"\r\n")?;
            let n =
                usize::from_str_radix(std::str::from_utf8(&rest[..eol]).ok()?.trim(), 16).ok()?;
            if n == 0 {
                break;
            }
            out.extend_from_slice(rest.get(eol + 2..eol + 2 + n)?);
            rest = rest.get(eol + 4 + n..)?;
        }
        body = out;
    }
    Some(Raw {
        status,
        headers: head,
        body,
    })
}

/// Sends `head` then `body`; with `half_close`, shuts the write side after sending. Returns
/// the reply, or `None` if the server closed the connection without one.
fn exchange(svc: &Svc, head: &str, body: &[u8], half_close: bool) -> Option<Raw> {
    let h = host(svc);
    let mut s = TcpStream::connect(&h).unwrap_or_else(|e| panic!("connect {h}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    s.write_all(head.as_bytes()).expect("send head");
    // The server may answer (and close) before taking the whole body: that is allowed.
    let _ = s.write_all(body);
    if half_close {
        let _ = s.shutdown(Shutdown::Write);
    }
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    parse(&raw)
}

/// One request with an honest Content-Length.
fn send(svc: &Svc, method: &str, path: &str, body: &[u8]) -> Raw {
    let extra = format!(
        "Content-Type: application/octet-stream\r\nContent-Length: {}\r\n",
        body.len()
    );
    exchange(svc, &head(svc, method, path, &extra), body, false)
        .unwrap_or_else(|| panic!("{method} {path}: no reply"))
}

/// A chunked upload, in pieces of `piece` bytes.
fn send_chunked(svc: &Svc, path: &str, body: &[u8], piece: usize) -> Raw {
    let mut wire = Vec::new();
    for c in body.chunks(piece) {
        wire.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        wire.extend_from_slice(c);
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"0\r\n\r\n");
    let h = head(svc, "POST", path, "Transfer-Encoding: chunked\r\n");
    exchange(svc, &h, &wire, false).unwrap_or_else(|| panic!("POST {path}: no reply"))
}

fn put(svc: &Svc, body: &[u8]) -> String {
    let r = send(svc, "POST", "/datasystem/v1/obj/put", body);
    assert_eq!(r.status, 200, "put: {}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["size"].as_u64(), Some(body.len() as u64), "{v}");
    let id = v["id"].as_str().expect("id").to_string();
    assert_eq!(id.len(), 48, "{id}");
    id
}

fn get_obj(svc: &Svc, id: &str) -> Raw {
    send(svc, "GET", &format!("/datasystem/v1/obj/get?id={id}"), b"")
}

fn expect_bytes(r: &Raw, want: &[u8], what: &str) {
    assert_eq!(
        r.status,
        200,
        "{what}: {}",
        String::from_utf8_lossy(&r.body[..r.body.len().min(400)])
    );
    assert!(
        r.headers.contains("content-type: application/octet-stream"),
        "{what}: {}",
        r.headers
    );
    assert_eq!(r.body.len(), want.len(), "{what}: length");
    assert_eq!(checksum(&r.body), checksum(want), "{what}: checksum");
}

fn expect_problem(r: &Raw, status: u16, code: u64, mention: &str, what: &str) {
    assert_eq!(
        r.status,
        status,
        "{what}: {}",
        String::from_utf8_lossy(&r.body)
    );
    let (c, detail) = r.problem();
    assert_eq!(c, code, "{what}: {detail}");
    assert!(
        detail.contains(mention),
        "{what}: {detail:?} should mention {mention:?}"
    );
}

/// Waits until the store has no unsealed object and exactly `sealed` sealed ones.
fn wait_store(c: &Client, sealed: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = c.stats().expect("stats");
        if s.unsealed == 0 && s.sealed == sealed {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the store still has {} unsealed and {} sealed objects (want 0 and {sealed})",
            s.unsealed,
            s.sealed
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Checks Prometheus text format line by line and returns the samples as (series, value).
fn prometheus(text: &str) -> Vec<(String, f64)> {
    let mut types: Vec<(String, String)> = Vec::new();
    let mut samples = Vec::new();
    let name_ok = |n: &str| {
        !n.is_empty()
            && !n.starts_with(|c: char| c.is_ascii_digit())
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(name_ok(name), "bad metric name in {line:?}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line:?}"
            );
            if kind == "counter" {
                assert!(name.ends_with("_total"), "counter without _total: {line:?}");
            }
            types.push((name.to_string(), kind.to_string()));
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(
            !line.is_empty() && !line.starts_with('#'),
            "stray line {line:?}"
        );
        let (series, value) = line.rsplit_once(' ').expect("a value");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let name = series.split('{').next().unwrap_or(series);
        assert!(name_ok(name), "bad name in {line:?}");
        if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
            assert!(
                labels.starts_with('{') && labels.ends_with("\"}"),
                "bad labels in {line:?}"
            );
        }
        let family = types
            .iter()
            .find(|(t, kind)| {
                name == t
                    || (kind == "histogram"
                        && ["_bucket", "_sum", "_count"]
                            .iter()
                            .any(|s| name.strip_suffix(s) == Some(t)))
            })
            .unwrap_or_else(|| panic!("no TYPE before {line:?}"));
        if family.1 == "histogram" && name.ends_with("_bucket") {
            assert!(series.contains("le=\""), "bucket without le: {line:?}");
        }
        samples.push((series.to_string(), value));
    }
    samples
}

fn sample(samples: &[(String, f64)], series: &str) -> f64 {
    samples
        .iter()
        .find(|(s, _)| s == series)
        .map(|(_, v)| *v)
        .unwrap_or_else(|| {
            panic!(
                "no series {series} in:\n{}",
                samples
                    .iter()
                    .map(|(s, v)| format!("{s} {v}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        })
}

#[test]
fn objects_and_keys_over_rest() {
    let mut c = Cluster::start(NodeOptions::default());
    let (meta, front) = services(&c.master().session_dir);
    let store = Client::connect(&c.master().data_socket).expect("the master's data worker");

    // Every data route wants the token, like every route but /healthz.
    for (method, path) in [
        ("POST", "/datasystem/v1/obj/put"),
        ("GET", "/datasystem/v1/obj/get?id=00"),
        ("POST", "/datasystem/v1/kv/set?key=k"),
        ("GET", "/metrics"),
    ] {
        for svc in [front.without_token(), front.with_token("wrong")] {
            let r = send(&svc, method, path, b"x");
            assert_eq!(r.status, 401, "{method} {path}");
        }
    }
    assert_eq!(
        send(&meta.without_token(), "GET", "/metrics", b"").status,
        401
    );
    let before = store.stats().expect("stats").sealed;

    // A small object with every byte value, then 16 MiB (streamed into shared memory as it
    // arrives), both read back through the frontend and straight from the data worker.
    let small: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    let id = put(&front, &small);
    expect_bytes(&get_obj(&front, &id), &small, "small object");
    let big = bytes((16 << 20) + 123, 7);
    let big_id = put(&front, &big);
    let r = send(
        &front,
        "POST",
        &format!("/datasystem/v1/obj/get?id={big_id}&timeoutMs=1000"),
        b"",
    );
    expect_bytes(&r, &big, "16 MiB object");
    assert!(r
        .headers
        .contains(&format!("content-length: {}", big.len())));
    let parsed = yr_datastore::ObjectId::from_hex(&big_id).expect("hex id");
    let view = store
        .get_one(parsed, Duration::from_secs(1))
        .expect("the object is in the data worker");
    assert_eq!(checksum(&view), checksum(&big));
    drop(view);
    // Deleting: gone for the frontend and the data worker; deleting again is 404.
    let gone = put(&front, b"short-lived");
    let r = send(
        &front,
        "DELETE",
        &format!("/datasystem/v1/obj/del?id={gone}"),
        b"",
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let parsed_gone = yr_datastore::ObjectId::from_hex(&gone).expect("hex id");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while store.contains(parsed_gone).expect("contains") {
        assert!(
            std::time::Instant::now() < deadline,
            "the delete never reached the store"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(get_obj(&front, &gone).status, 404);
    let r = send(
        &front,
        "POST",
        &format!("/datasystem/v1/obj/del?id={gone}"),
        b"",
    );
    assert_eq!(r.status, 404, "{}", String::from_utf8_lossy(&r.body));
    // An empty object, and a chunked upload (no Content-Length) of 3 MiB in odd pieces.
    let empty_id = put(&front, b"");
    expect_bytes(&get_obj(&front, &empty_id), b"", "empty object");
    let chunked = bytes(3 << 20, 9);
    let r = send_chunked(&front, "/datasystem/v1/obj/put", &chunked, 100_003);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["size"].as_u64(), Some(chunked.len() as u64));
    let chunked_id = v["id"].as_str().expect("id").to_string();
    expect_bytes(&get_obj(&front, &chunked_id), &chunked, "chunked upload");
    // A caller-chosen ID; the same ID again is a conflict.
    let mine = store.new_id().to_hex();
    let path = format!("/datasystem/v1/obj/put?id={mine}");
    let r = send(&front, "POST", &path, b"chosen");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["id"].as_str(), Some(mine.as_str()));
    expect_problem(
        &send(&front, "POST", &path, b"again"),
        409,
        1001,
        &mine,
        "same ID twice",
    );
    expect_bytes(&get_obj(&front, &mine), b"chosen", "caller-chosen ID");
    let stored = before + 5;
    wait_store(&store, stored, "after the puts");

    // No such object: 404 code 1003, at once or after waiting timeoutMs.
    let missing = store.new_id().to_hex();
    expect_problem(
        &get_obj(&front, &missing),
        404,
        1003,
        &missing,
        "missing object",
    );
    let t = Instant::now();
    let r = get_obj(&front, &format!("{missing}&timeoutMs=300"));
    expect_problem(&r, 404, 1003, &missing, "missing object, waited");
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );

    // Bad parameters: 400 code 1001 naming the parameter.
    let long_key = "k".repeat(256);
    for (method, path, name) in [
        ("GET", "/datasystem/v1/obj/get".to_string(), "id"),
        ("GET", "/datasystem/v1/obj/get?id=xyz".into(), "id"),
        ("GET", format!("/datasystem/v1/obj/get?id={missing}0"), "id"),
        ("POST", "/datasystem/v1/obj/put?id=12".into(), "id"),
        (
            "GET",
            format!("/datasystem/v1/obj/get?id={missing}&timeoutMs=soon"),
            "timeoutMs",
        ),
        (
            "GET",
            "/datasystem/v1/kv/get?key=k&timeoutMs=-5".into(),
            "timeoutMs",
        ),
        ("POST", "/datasystem/v1/kv/set".into(), "key"),
        ("POST", "/datasystem/v1/kv/set?key=".into(), "key"),
        (
            "POST",
            format!("/datasystem/v1/kv/set?key={long_key}"),
            "key",
        ),
        ("GET", "/datasystem/v1/kv/get".into(), "key"),
        ("DELETE", "/datasystem/v1/kv/del".into(), "key"),
    ] {
        let r = send(&front, method, &path, b"v");
        expect_problem(
            &r,
            400,
            1001,
            &format!("{name}:"),
            &format!("{method} {path}"),
        );
    }

    // The body limit holds for streamed puts: a declared length over it is refused before a
    // byte of the body is read.
    let h = head(
        &front,
        "POST",
        "/datasystem/v1/obj/put",
        &format!("Content-Length: {}\r\n", (64u64 << 20) + 1),
    );
    let r = exchange(&front, &h, b"", false).expect("a reply without sending the body");
    expect_problem(&r, 413, 1001, "limit", "over the body limit");

    // A body shorter than its Content-Length: 400, and the object is aborted.
    let h = head(
        &front,
        "POST",
        "/datasystem/v1/obj/put",
        "Content-Length: 300000\r\n",
    );
    if let Some(r) = exchange(&front, &h, &bytes(100_000, 1), true) {
        expect_problem(&r, 400, 1001, "Content-Length", "short body");
    }
    wait_store(&store, stored, "after a short body");
    // A client that goes away mid-body: the object is aborted too.
    {
        let mut s = TcpStream::connect(host(&front)).expect("connect");
        s.write_all(h.as_bytes()).expect("head");
        s.write_all(&bytes(150_000, 2)).expect("part of the body");
        std::thread::sleep(Duration::from_millis(200));
        let unsealed = store.stats().expect("stats").unsealed;
        assert_eq!(unsealed, 1, "the object is created before its body arrives");
    }
    wait_store(&store, stored, "after a client left mid-body");

    // Keys: set, get, overwrite, delete, then 404; a get waiting for a key set meanwhile.
    let value = bytes(200_000, 3);
    let r = send(&front, "POST", "/datasystem/v1/kv/set?key=a%2Fkey", &value);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["size"].as_u64(), Some(value.len() as u64));
    let r = send(&front, "GET", "/datasystem/v1/kv/get?key=a%2Fkey", b"");
    expect_bytes(&r, &value, "kv get");
    let r = send(
        &front,
        "POST",
        "/datasystem/v1/kv/set?key=a%2Fkey",
        b"second",
    );
    assert_eq!(r.status, 200);
    let r = send(&front, "POST", "/datasystem/v1/kv/get?key=a%2Fkey", b"");
    expect_bytes(&r, b"second", "kv get after overwrite");
    assert_eq!(store.kv_exists(b"a/key").ok(), Some(true));
    let r = send(&front, "DELETE", "/datasystem/v1/kv/del?key=a%2Fkey", b"");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = send(&front, "GET", "/datasystem/v1/kv/get?key=a%2Fkey", b"");
    expect_problem(&r, 404, 1003, "a/key", "kv get after del");
    let r = send(&front, "POST", "/datasystem/v1/kv/del?key=a%2Fkey", b"");
    expect_problem(&r, 404, 1003, "a/key", "kv del twice");
    let setter = {
        let front = front.with_token(front.token.as_deref().unwrap_or(""));
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            send(
                &front,
                "POST",
                "/datasystem/v1/kv/set?key=later",
                b"arrived",
            )
            .status
        })
    };
    let r = send(
        &front,
        "GET",
        "/datasystem/v1/kv/get?key=later&timeoutMs=10000",
        b"",
    );
    expect_bytes(&r, b"arrived", "kv get waiting for the key");
    assert_eq!(setter.join().expect("setter"), 200);

    // An object made on another node, fetched through the master's frontend; then one whose
    // node is gone: 410.
    let w = c.add_worker(NodeOptions::default());
    let remote = Client::connect(&c.session(w).data_socket).expect("node 1's data worker");
    let there = bytes(5 << 20, 11);
    let there_id = remote.new_id();
    remote.put(there_id, &there).expect("put on node 1");
    let lost_id = remote.new_id();
    remote
        .put(lost_id, b"only on node 1")
        .expect("put on node 1");
    expect_bytes(
        &get_obj(&front, &there_id.to_hex()),
        &there,
        "object from node 1",
    );
    drop(remote);
    c.stop_node(w, false).expect_ok("stopping node 1");
    let lost = lost_id.to_hex();
    let r = get_obj(&front, &lost);
    expect_problem(&r, 410, 1003, &lost, "object of a stopped node");
    // The copy pulled before the node stopped is still served.
    expect_bytes(&get_obj(&front, &there_id.to_hex()), &there, "pulled copy");

    // Metrics: counted by route template (never the raw path), method and status; valid text.
    assert_eq!(send(&front, "GET", "/no/such/route", b"").status, 404);
    let r = send(&front, "GET", "/metrics", b"");
    assert_eq!(r.status, 200);
    assert!(
        r.headers
            .contains("content-type: text/plain; version=0.0.4"),
        "{}",
        r.headers
    );
    let text = String::from_utf8(r.body).expect("UTF-8 metrics");
    let s = prometheus(&text);
    let count = |route: &str, method: &str, status: u16| {
        sample(
            &s,
            &format!(
                "yr_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}}"
            ),
        )
    };
    assert!(count("/datasystem/v1/obj/put", "POST", 200) >= 5.0);
    assert!(count("/datasystem/v1/obj/get", "GET", 200) >= 6.0);
    assert_eq!(count("/datasystem/v1/obj/get", "GET", 410), 1.0);
    assert!(count("/datasystem/v1/obj/get", "GET", 400) >= 4.0);
    assert_eq!(count("/datasystem/v1/obj/put", "POST", 409), 1.0);
    assert_eq!(count("/datasystem/v1/kv/del", "DELETE", 200), 1.0);
    assert!(count("/datasystem/v1/obj/put", "POST", 401) >= 2.0);
    assert!(count("/metrics", "GET", 401) >= 2.0);
    assert_eq!(count("unmatched", "GET", 404), 1.0);
    assert!(!text.contains("?id="), "raw paths are not labels");
    let gets = sample(
        &s,
        "yr_http_request_duration_seconds_count{route=\"/datasystem/v1/obj/get\"}",
    );
    let inf = sample(
        &s,
        "yr_http_request_duration_seconds_bucket{route=\"/datasystem/v1/obj/get\",le=\"+Inf\"}",
    );
    assert_eq!(gets, inf);
    assert!(gets >= 10.0, "{gets}");
    assert!(
        sample(
            &s,
            "yr_http_request_duration_seconds_sum{route=\"/datasystem/v1/obj/get\"}"
        ) >= 0.3,
        "the 300 ms wait is in the sum"
    );
    for family in [
        "# TYPE yr_http_requests_total counter",
        "# TYPE yr_http_request_duration_seconds histogram",
        "# TYPE yr_function_invocations_total counter",
        "# TYPE yr_function_invocation_duration_seconds histogram",
    ] {
        assert!(text.contains(family), "{family}");
    }
    // The meta service has its own.
    assert_eq!(
        send(&meta, "GET", "/serverless/v1/functions", b"").status,
        200
    );
    let r = send(&meta, "GET", "/metrics", b"");
    assert_eq!(r.status, 200);
    let s = prometheus(&String::from_utf8(r.body).expect("UTF-8 metrics"));
    assert_eq!(
        sample(
            &s,
            "yr_http_requests_total{route=\"/serverless/v1/functions\",method=\"GET\",status=\"200\"}"
        ),
        1.0
    );
    assert!(
        !s.iter().any(|(k, _)| k.contains("datasystem")),
        "the meta service has no data routes"
    );
}

/// A process this test started, killed on drop.
struct Proc {
    child: Child,
    _out: BufReader<ChildStdout>,
    /// The `ready ...` line's `address=` (or `socket=`) value.
    ready: String,
}

impl Proc {
    fn start(args: &[&str]) -> Proc {
        let mut child = Command::new(yr_bin())
            .args(args)
            .env("YR_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start yr");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        out.read_line(&mut line).expect("ready line");
        assert!(line.starts_with("ready"), "{args:?} printed {line:?}");
        let ready = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("address=").or(w.strip_prefix("socket=")))
            .unwrap_or_default()
            .to_string();
        Proc {
            child,
            _out: out,
            ready,
        }
    }

    fn data_worker(socket: &Path, spill: &Path) -> Proc {
        let (socket, spill) = (socket.display().to_string(), spill.display().to_string());
        Proc::start(&[
            "component",
            "data-worker",
            "--socket",
            &socket,
            "--shm-size",
            "32MiB",
            "--spill-dir",
            &spill,
        ])
    }

    fn frontend(data_socket: Option<&Path>) -> (Proc, Svc) {
        let mut args = vec![
            "component".to_string(),
            "frontend".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--upstream".into(),
            "127.0.0.1:1".into(),
        ];
        if let Some(s) = data_socket {
            args.extend(["--data-socket".into(), s.display().to_string()]);
        }
        let p = Proc::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let svc = Svc {
            url: format!("http://{}", p.ready),
            token: None,
        };
        (p, svc)
    }

    fn stop(mut self) {
        // SAFETY: kill(2) on our own child, which has not been waited for.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn without_a_data_worker_503_and_a_restarted_one_is_reconnected() {
    let dir = tempfile::Builder::new()
        .prefix("yr-rest-data-")
        .tempdir()
        .expect("temp dir");
    let (_bare, bare) = Proc::frontend(None);
    let r = send(
        &bare,
        "GET",
        &format!("/datasystem/v1/obj/get?id={}", "0".repeat(48)),
        b"",
    );
    expect_problem(
        &r,
        503,
        3002,
        "no data worker",
        "frontend without --data-socket",
    );
    let r = send(&bare, "POST", "/datasystem/v1/kv/set?key=k", b"v");
    expect_problem(
        &r,
        503,
        3002,
        "no data worker",
        "frontend without --data-socket",
    );

    let socket: PathBuf = dir.path().join("dw.sock");
    let spill = dir.path().join("spill");
    let worker = Proc::data_worker(&socket, &spill);
    let (_front_proc, front) = Proc::frontend(Some(&socket));
    let one = bytes(300_000, 5);
    let id = put(&front, &one);
    expect_bytes(&get_obj(&front, &id), &one, "before the restart");
    worker.stop();
    let r = send(&front, "POST", "/datasystem/v1/obj/put", b"nobody home");
    expect_problem(&r, 503, 3002, "data worker", "data worker stopped");
    let _worker = Proc::data_worker(&socket, &spill);
    // Pooled connections to the old worker are dropped and the call retried on a new one.
    let two = bytes(200_000, 6);
    let id2 = put(&front, &two);
    expect_bytes(&get_obj(&front, &id2), &two, "after the restart");
    let r = get_obj(&front, &id);
    assert!(
        r.status == 404 || r.status == 410,
        "an object of the old worker: {}",
        String::from_utf8_lossy(&r.body)
    );
}
