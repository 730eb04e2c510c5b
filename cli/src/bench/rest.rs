//! `yr bench rest`: requests per second and latency of a no-op function through the REST
//! frontend, on a one-node cluster this command starts (and stops) itself.
//!
//! The function (the `hello` example's `echo` handler, one warm instance) is registered through
//! the meta service's REST API and called at
//! `POST {frontend_url}/invocations/default/svc/0@svc@noop/` with the cluster's access token.
//! The load comes from this process: `--concurrency` clients, each a task owning one keep-alive
//! HTTP/1.1 connection (TCP_NODELAY) and sending its next request when the previous reply is in.
//! A call goes client → frontend → proxy (gRPC) → function process and back.
//!
//! The baseline, measured in the same run with the same clients and concurrency, is a bare axum
//! handler in this process (on its own runtime, one thread per core: tokio's default) that answers
//! the same request with the same body and the same response headers: what one HTTP hop costs
//! on this machine with nothing behind it. The two alternate in rounds, so that the machine's
//! noise falls on both; the rates reported are the medians of the rounds, and `rest_vs_bare` is
//! the median of the rounds' ratios (each round's REST rate over the bare rate next to it).
//!
//! The set-up ([`Frontend::prepare`], [`Bare::start`], [`Clients`]) is shared with the
//! criterion group `cli/benches/rest.rs`; only the measuring loops differ.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use clap::Args;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::node::{Bins, OneNode, ECHO_HANDLER};
use super::stats::{median, percentile};

#[derive(Args)]
pub struct RestArgs {
    /// Print one JSON object (for scripts).
    #[arg(long)]
    json: bool,
    /// Clients, each with one keep-alive connection and one request in flight.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds each side is measured, over alternating rounds (after a warm-up of a third of it).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
}

/// The function's deployed name (openYuanrong's `tenant@namespace@name` form).
const FUNCTION: &str = "0@svc@noop";
/// The path both sides are called at.
const INVOKE_PATH: &str = "/invocations/default/svc/0@svc@noop/";
const PAYLOAD: &[u8] = b"ping";
/// Measured rounds per side; each side gets `seconds / ROUNDS` a round.
const ROUNDS: usize = 7;
/// How long one request may take before the bench gives up.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// `host:port` of an `http://host:port` URL.
fn authority(url: &str) -> Result<&str> {
    let a = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("{url:?} is not an http:// URL"))?;
    Ok(a.trim_end_matches('/'))
}

/// An HTTP/1.1 request with a body, ready to write.
pub fn request(method: &str, host: &str, path: &str, token: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One keep-alive HTTP/1.1 connection, one request at a time: enough of a client to read
/// replies that carry `Content-Length` (every reply of axum with a body known in advance).
pub struct Conn {
    stream: TcpStream,
    address: String,
    buf: Vec<u8>,
    /// The last reply's head and body within `buf`.
    head: Range<usize>,
    body: Range<usize>,
}

impl Conn {
    /// Connects to `address` (`host:port`), with TCP_NODELAY.
    pub async fn open(address: &str) -> Result<Conn> {
        let stream = TcpStream::connect(address)
            .await
            .with_context(|| format!("cannot connect to {address}"))?;
        stream
            .set_nodelay(true)
            .with_context(|| format!("cannot set TCP_NODELAY towards {address}"))?;
        Ok(Conn {
            stream,
            address: address.to_string(),
            buf: Vec::with_capacity(4096),
            head: 0..0,
            body: 0..0,
        })
    }

    /// Sends `req` and reads the whole reply; returns its status.
    pub async fn call(&mut self, req: &[u8]) -> Result<u16> {
        match tokio::time::timeout(CALL_TIMEOUT, self.exchange(req)).await {
            Ok(r) => r.with_context(|| format!("HTTP request to {}", self.address)),
            Err(_) => bail!(
                "no reply from {} within {} s",
                self.address,
                CALL_TIMEOUT.as_secs()
            ),
        }
    }

    async fn exchange(&mut self, req: &[u8]) -> Result<u16> {
        // What the last reply left: nothing, as requests are not pipelined.
        self.buf.drain(..self.body.end);
        self.stream.write_all(req).await?;
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            self.read_more().await?;
        };
        let head = std::str::from_utf8(&self.buf[..head_end])
            .map_err(|_| anyhow!("the reply's head is not UTF-8"))?;
        let status = head
            .strip_prefix("HTTP/1.1 ")
            .and_then(|s| s.get(..3))
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| anyhow!("not an HTTP/1.1 status line: {:?}", head.lines().next()))?;
        let mut length = None;
        for line in head.split("\r\n").skip(1) {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            if name.eq_ignore_ascii_case("content-length") {
                length = Some(
                    value
                        .trim()
                        .parse::<usize>()
                        .map_err(|_| anyhow!("bad Content-Length {value:?}"))?,
                );
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                bail!("a reply with Transfer-Encoding {value:?} (this client reads Content-Length only)");
            }
        }
        let length = length.ok_or_else(|| anyhow!("a reply without Content-Length"))?;
        while self.buf.len() < head_end + length {
            self.read_more().await?;
        }
        self.head = 0..head_end;
        self.body = head_end..head_end + length;
        Ok(status)
    }

    async fn read_more(&mut self) -> Result<()> {
        self.buf.reserve(4096);
        if self.stream.read_buf(&mut self.buf).await? == 0 {
            bail!("the server closed the connection");
        }
        Ok(())
    }

    /// The last reply's head: status line and headers.
    pub fn head(&self) -> &str {
        std::str::from_utf8(&self.buf[self.head.clone()]).unwrap_or("")
    }

    /// The last reply's body, as text.
    pub fn body(&self) -> String {
        String::from_utf8_lossy(&self.buf[self.body.clone()]).into_owned()
    }
}

/// Keep-alive connections to one server, all sending the same request.
pub struct Clients {
    conns: Vec<Conn>,
    req: Arc<[u8]>,
}

impl Clients {
    /// Opens `n` connections to `address`, each to send `req`; `name` says which side in errors.
    pub async fn open(name: &str, address: &str, req: Vec<u8>, n: usize) -> Result<Clients> {
        let mut conns = Vec::with_capacity(n);
        for _ in 0..n {
            conns.push(
                Conn::open(address)
                    .await
                    .with_context(|| name.to_string())?,
            );
        }
        Ok(Clients {
            conns,
            req: req.into(),
        })
    }

    /// `calls` requests, every connection sending its share back to back (so as many are in
    /// flight as there are connections); returns the wall time of them all. Fails on the first
    /// reply that is not 200.
    pub async fn batch(&mut self, calls: u64) -> Result<Duration> {
        let n = self.conns.len() as u64;
        if n == 0 {
            bail!("no connections");
        }
        let start = Instant::now();
        let mut tasks = Vec::with_capacity(self.conns.len());
        for (i, mut conn) in self.conns.drain(..).enumerate() {
            // The first `calls % n` connections send one request more.
            let share = calls / n + u64::from((i as u64) < calls % n);
            let req = Arc::clone(&self.req);
            tasks.push(tokio::spawn(async move {
                for _ in 0..share {
                    let status = conn.call(&req).await?;
                    if status != 200 {
                        bail!("{status}: {}", conn.body());
                    }
                }
                Ok::<_, anyhow::Error>(conn)
            }));
        }
        // Every task is awaited, so the connections of the others come back after a failure.
        let mut first_error = None;
        for t in tasks {
            match t.await.context("a client task") {
                Ok(Ok(conn)) => self.conns.push(conn),
                Ok(Err(e)) | Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(start.elapsed()),
        }
    }
}

/// One side of the comparison: its clients and what its measured rounds gave.
struct Side {
    name: &'static str,
    clients: Clients,
    rounds_per_s: Vec<f64>,
    latencies_us: Vec<f64>,
    errors: u64,
    first_error: Option<String>,
}

impl Side {
    async fn open(name: &'static str, address: &str, req: Vec<u8>, clients: usize) -> Result<Side> {
        Ok(Side {
            name,
            clients: Clients::open(name, address, req, clients).await?,
            rounds_per_s: Vec::new(),
            latencies_us: Vec::new(),
            errors: 0,
            first_error: None,
        })
    }

    /// Every client sends requests back to back for `span`; with `record`, the round counts.
    async fn round(&mut self, span: Duration, record: bool) -> Result<()> {
        let start = Instant::now();
        let end = start + span;
        let mut tasks = Vec::with_capacity(self.clients.conns.len());
        for mut conn in self.clients.conns.drain(..) {
            let req = Arc::clone(&self.clients.req);
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::with_capacity(1 << 12);
                let (mut errors, mut first_error) = (0u64, None);
                let mut last = start;
                loop {
                    let t = Instant::now();
                    if t >= end {
                        break;
                    }
                    let status = conn.call(&req).await?;
                    last = Instant::now();
                    if status == 200 {
                        lat.push((last - t).as_secs_f64() * 1e6);
                    } else {
                        errors += 1;
                        if first_error.is_none() {
                            first_error = Some(format!("{status}: {}", conn.body()));
                        }
                    }
                }
                Ok::<_, anyhow::Error>((conn, lat, errors, first_error, last))
            }));
        }
        let (mut done, mut last) = (0usize, start);
        for t in tasks {
            let (conn, lat, errors, first_error, l) =
                t.await.context(self.name)?.context(self.name)?;
            self.clients.conns.push(conn);
            last = last.max(l);
            if record {
                done += lat.len();
                self.latencies_us.extend(lat);
                self.errors += errors;
                if self.first_error.is_none() {
                    self.first_error = first_error;
                }
            }
        }
        if record {
            // Requests started in the span, over the time until the last of them ended.
            let secs = (last - start).as_secs_f64().max(1e-9);
            self.rounds_per_s.push(done as f64 / secs);
        }
        Ok(())
    }

    fn report(&self) -> Result<(f64, f64, f64)> {
        if self.latencies_us.is_empty() {
            bail!(
                "{}: no request succeeded ({} failed{})",
                self.name,
                self.errors,
                self.first_error
                    .as_deref()
                    .map(|e| format!(", first: {e}"))
                    .unwrap_or_default()
            );
        }
        let (mut rates, mut lat) = (self.rounds_per_s.clone(), self.latencies_us.clone());
        Ok((
            median(&mut rates),
            percentile(&mut lat, 0.5),
            percentile(&mut lat, 0.99),
        ))
    }
}

/// The REST side, ready to call: the no-op function registered through the meta service and
/// answering through the frontend.
pub struct Frontend {
    /// `host:port` of the frontend.
    pub address: String,
    token: String,
    /// The `x-*` headers of the frontend's reply, which the bare baseline adds to its own.
    reply_headers: Vec<(HeaderName, HeaderValue)>,
}

impl Frontend {
    /// Registers the no-op function on `node` (`POST /serverless/v1/functions`: one instance,
    /// `instance_concurrency` calls at a time), then calls it through the frontend until it
    /// answers with the payload (the first call may wait for the instance to start).
    pub async fn prepare(node: &OneNode, instance_concurrency: usize) -> Result<Frontend> {
        let s = &node.session;
        let front_url = s
            .frontend_url
            .as_deref()
            .ok_or_else(|| anyhow!("the node's session.json has no frontend_url"))?;
        let meta_url = s
            .meta_url
            .as_deref()
            .ok_or_else(|| anyhow!("the node's session.json has no meta_url"))?;
        let token_file = s
            .token_file
            .as_deref()
            .ok_or_else(|| anyhow!("the node's session.json has no token_file"))?;
        let token = yr_control::rest::read_token(token_file)?;
        let (front, meta) = (authority(front_url)?, authority(meta_url)?);
        let environment: serde_json::Map<String, serde_json::Value> = node
            .bins
            .function_env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().into()))
            .collect();
        let spec = json!({
            "name": FUNCTION, "runtime": "posix-custom-runtime", "handler": ECHO_HANDLER,
            "kind": "faas", "cpu": 100, "memory": 64, "timeout": 30,
            "minInstance": "1", "maxInstance": "1",
            "concurrentNum": instance_concurrency.to_string(),
            "codePath": node.bins.function.display().to_string(),
            "environment": environment,
        })
        .to_string();
        let mut m = Conn::open(meta).await.context("meta service")?;
        let status = m
            .call(&request(
                "POST",
                meta,
                "/serverless/v1/functions",
                &token,
                spec.as_bytes(),
            ))
            .await?;
        if status != 200 {
            bail!("registering {FUNCTION} failed: {status} {}", m.body());
        }
        let invoke = request("POST", front, INVOKE_PATH, &token, PAYLOAD);
        let mut c = Conn::open(front).await.context("frontend")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = c.call(&invoke).await?;
            if status == 200 {
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "the no-op function does not answer through the frontend: {status} {}",
                    c.body()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if c.body().as_bytes() != PAYLOAD {
            bail!(
                "the no-op function answered {:?}, not {:?}",
                c.body(),
                String::from_utf8_lossy(PAYLOAD)
            );
        }
        Ok(Frontend {
            address: front.to_string(),
            token,
            reply_headers: extra_headers(c.head()),
        })
    }

    /// The no-op call as bytes on the wire, addressed to `host` (the frontend's
    /// [`Frontend::address`], or the bare baseline's): the same path, token and body.
    pub fn request(&self, host: &str) -> Vec<u8> {
        request("POST", host, INVOKE_PATH, &self.token, PAYLOAD)
    }
}

/// The bare baseline's handler: the request's body back, with the headers the frontend's reply
/// carried (so that both replies are the same size).
async fn bare(
    State(headers): State<Arc<Vec<(HeaderName, HeaderValue)>>>,
    Path(_): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    let mut r = body.into_response();
    for (k, v) in headers.iter() {
        r.headers_mut().insert(k.clone(), v.clone());
    }
    r
}

/// The `x-*` headers of a reply's head.
fn extra_headers(head: &str) -> Vec<(HeaderName, HeaderValue)> {
    head.split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.len() > 2 && n[..2].eq_ignore_ascii_case("x-"))
        .filter_map(|(n, v)| {
            Some((
                HeaderName::from_bytes(n.trim().as_bytes()).ok()?,
                HeaderValue::from_str(v.trim()).ok()?,
            ))
        })
        .collect()
}

/// The baseline: a bare axum handler at the frontend's path on 127.0.0.1, answering the no-op
/// call with the request's body and the frontend's reply headers, on its own runtime (a thread
/// per core, tokio's default). Dropping it shuts that runtime down, so drop it outside any
/// async context.
pub struct Bare {
    /// `host:port` to call it at.
    pub address: String,
    _rt: tokio::runtime::Runtime,
}

impl Bare {
    /// Starts it, answering like `frontend` does.
    pub fn start(frontend: &Frontend) -> Result<Bare> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .thread_name("yr-bench-bare")
            .enable_all()
            .build()?;
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .context("cannot listen for the bare baseline")?;
        let address = listener.local_addr()?.to_string();
        let router = axum::Router::new()
            .route(
                "/invocations/{tenant}/{namespace}/{function}/",
                axum::routing::post(bare),
            )
            .with_state(Arc::new(frontend.reply_headers.clone()));
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!("cannot set TCP_NODELAY: {e}");
            }
        });
        rt.spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::warn!("bare baseline server: {e}");
            }
        });
        Ok(Bare { address, _rt: rt })
    }
}

pub fn run(a: RestArgs) -> Result<()> {
    if a.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    if !(a.seconds > 0.0 && a.seconds.is_finite()) {
        bail!("--seconds must be a positive number");
    }
    let log = |s: &str| {
        if !a.json {
            eprintln!("{s}");
        }
    };
    log("starting a one-node cluster...");
    let node = OneNode::start(&Bins::for_yr_command()?, "yr-bench-rest-")?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let instance_concurrency = a.concurrency.max(64);

    let (mut rest, frontend) = rt.block_on(async {
        log("registering the no-op function through the meta service...");
        let frontend = Frontend::prepare(&node, instance_concurrency).await?;
        let side = Side::open(
            "REST frontend",
            &frontend.address,
            frontend.request(&frontend.address),
            a.concurrency,
        )
        .await?;
        Ok::<_, anyhow::Error>((side, frontend))
    })?;
    let bare_server = Bare::start(&frontend)?;
    let bare_req = frontend.request(&bare_server.address);
    let slice = Duration::from_secs_f64(a.seconds / ROUNDS as f64);
    let warm = Duration::from_secs_f64(a.seconds / 3.0);

    let bare = rt.block_on(async {
        let mut bare = Side::open(
            "bare axum baseline",
            &bare_server.address,
            bare_req,
            a.concurrency,
        )
        .await?;
        log("warming up both...");
        rest.round(warm, false).await?;
        bare.round(warm, false).await?;
        log(&format!(
            "{ROUNDS} rounds of REST frontend and bare axum, alternating..."
        ));
        for round in 0..ROUNDS {
            // Which goes first alternates too.
            if round % 2 == 0 {
                bare.round(slice, true).await?;
                rest.round(slice, true).await?;
            } else {
                rest.round(slice, true).await?;
                bare.round(slice, true).await?;
            }
        }
        Ok::<_, anyhow::Error>(bare)
    })?;
    drop(bare_server);

    for side in [&rest, &bare] {
        if let Some(e) = &side.first_error {
            eprintln!(
                "warning: {}: {} requests failed; the first: {e}",
                side.name, side.errors
            );
        }
    }
    let (rest_rps, rest_p50, rest_p99) = rest.report()?;
    let (bare_rps, bare_p50, bare_p99) = bare.report()?;
    // The ratio of each round's pair (run back to back), then their median: the machine's
    // slower drifts fall on both members of a pair and cancel.
    let mut ratios: Vec<f64> = rest
        .rounds_per_s
        .iter()
        .zip(&bare.rounds_per_s)
        .map(|(r, b)| r / b.max(1e-9))
        .collect();
    let rest_vs_bare = median(&mut ratios);
    let v = json!({
        "rest_rps": rest_rps,
        "rest_p50_us": rest_p50,
        "rest_p99_us": rest_p99,
        "bare_rps": bare_rps,
        "bare_p50_us": bare_p50,
        "bare_p99_us": bare_p99,
        "rest_vs_bare": rest_vs_bare,
        "errors": rest.errors + bare.errors,
        "concurrency": a.concurrency,
    });
    if a.json {
        println!("{v}");
    } else {
        println!(
            "{:<16} {:>10} {:>10} {:>10}",
            "", "req/s", "p50 µs", "p99 µs"
        );
        println!(
            "{:<16} {rest_rps:>10.0} {rest_p50:>10.0} {rest_p99:>10.0}",
            "REST frontend"
        );
        println!(
            "{:<16} {bare_rps:>10.0} {bare_p50:>10.0} {bare_p99:>10.0}",
            "bare axum"
        );
        println!(
            "rest_vs_bare {:.2} (target ≥ 0.35), errors {}, concurrency {}",
            rest_vs_bare,
            rest.errors + bare.errors,
            a.concurrency
        );
    }
    Ok(())
}
