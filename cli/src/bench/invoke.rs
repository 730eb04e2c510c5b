//! `yr bench invoke`: calls per second and latency of a no-op function through the proxy and
//! the runtime, on a one-node cluster this command starts (and stops) itself.
//!
//! The baseline, measured in the same run with the same client and concurrency, is a bare
//! gRPC server in this process answering the same `Invoke` call with the request's bytes, over
//! mutual TLS with the node's credentials as every yr hop: what one gRPC hop costs on this
//! machine with nothing behind it. The same server in plaintext, and the time a new connection
//! takes with and without TLS, show what TLS costs. A call through yr makes two
//! hops (client → proxy → function process) plus queueing and the handler's thread handoff.
//!
//! The set-up ([`deploy_noop`], [`Caller`], [`GrpcEcho`]) is shared with the criterion group
//! `cli/benches/invoke.rs`; only the measuring loops differ (timed here, counted there).

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use yr_proto::proxy_client::ProxyClient;
use yr_proto::proxy_server::{Proxy, ProxyServer};
use yr_proto::*;

use super::node::{Bins, OneNode, ECHO_HANDLER};

#[derive(Args)]
pub struct InvokeArgs {
    /// Print one JSON object (for scripts).
    #[arg(long)]
    json: bool,
    /// Calls in flight at once from the client.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seconds each measurement runs (after a warm-up of a third of it).
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Calls in flight per instance.
    #[arg(long, default_value_t = 64)]
    instance_concurrency: u32,
}

/// The no-op function's deployed name.
pub const FUNCTION: &str = "noop";

/// Deploys the no-op function on `node` (`yr function deploy`): one instance, taking
/// `instance_concurrency` calls at a time. Call [`Caller::call`] once after it to wait for the
/// instance to be warm.
pub fn deploy_noop(node: &OneNode, instance_concurrency: u32) -> Result<()> {
    let dir = node.dir.display().to_string();
    let code = node.bins.function.display().to_string();
    let conc = instance_concurrency.to_string();
    let env: Vec<String> = node
        .bins
        .function_env
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let mut args = vec![
        "function",
        "deploy",
        "--session-dir",
        &dir,
        "--name",
        FUNCTION,
        "--code",
        &code,
        "--handler",
        ECHO_HANDLER,
        "--min-instances",
        "1",
        "--max-instances",
        "1",
        "--concurrency",
        &conc,
    ];
    for e in &env {
        args.extend(["--env", e]);
    }
    node.bins.yr.run(&args)?;
    Ok(())
}

/// A client sending the no-op call to a proxy, or to the bare [`GrpcEcho`] (both serve the
/// proxy's gRPC service). Clones share one connection.
#[derive(Clone)]
pub struct Caller {
    client: ProxyClient<Channel>,
    req: InvokeRequest,
}

impl Caller {
    /// A client of the gRPC server at `address` (`host:port`); connects on the first call.
    /// Must be called inside a tokio runtime.
    /// With this process's node credentials, as every yr client (mutual TLS once installed).
    pub fn connect(address: &str) -> Result<Caller> {
        Ok(Caller::over(yr_control::channel(address)?))
    }

    /// Plaintext gRPC, whatever is installed: the baseline that shows what TLS costs.
    pub fn connect_plain(address: &str) -> Result<Caller> {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{address}"))?
            .tcp_nodelay(true)
            .connect_lazy();
        Ok(Caller::over(ch))
    }

    fn over(ch: Channel) -> Caller {
        Caller {
            client: ProxyClient::new(ch),
            req: InvokeRequest {
                function: FUNCTION.into(),
                payload: axum::body::Bytes::from_static(b"ping"),
                ..Default::default()
            },
        }
    }

    /// One call; fails if it did not reach the function or the function failed.
    pub async fn call(&mut self) -> Result<()> {
        let r = self.client.invoke(self.req.clone()).await?.into_inner();
        if r.error_kind() != ErrorKind::ErrorNone {
            bail!("the no-op function failed: {}", r.error);
        }
        Ok(())
    }

    /// `calls` calls, `concurrency` at a time (each of `concurrency` tasks makes its share
    /// back to back); returns the wall time of them all. Fails on the first failed call.
    pub async fn batch(&self, calls: u64, concurrency: usize) -> Result<Duration> {
        let tasks = (concurrency as u64).clamp(1, calls.max(1));
        let start = Instant::now();
        let mut running = Vec::with_capacity(tasks as usize);
        for i in 0..tasks {
            // The first `calls % tasks` tasks make one call more.
            let share = calls / tasks + u64::from(i < calls % tasks);
            let mut c = self.clone();
            running.push(tokio::spawn(async move {
                for _ in 0..share {
                    c.call().await?;
                }
                Ok::<_, anyhow::Error>(())
            }));
        }
        for t in running {
            t.await.context("a calling task")??;
        }
        Ok(start.elapsed())
    }
}

/// A gRPC server with nothing behind it: replies to Invoke with the payload.
struct Echo;

#[tonic::async_trait]
impl Proxy for Echo {
    async fn invoke(&self, req: Request<InvokeRequest>) -> Result<Response<InvokeReply>, Status> {
        Ok(Response::new(InvokeReply {
            payload: req.into_inner().payload.to_vec(),
            ..Default::default()
        }))
    }
    async fn load(&self, _: Request<Empty>) -> Result<Response<LoadReport>, Status> {
        Ok(Response::new(LoadReport::default()))
    }
    async fn calls(&self, _: Request<Empty>) -> Result<Response<CallStats>, Status> {
        Ok(Response::new(CallStats::default()))
    }
}

/// The baseline: a bare gRPC server of the proxy's service on 127.0.0.1, answering Invoke with
/// the request's payload. Stopped when dropped.
pub struct GrpcEcho {
    /// `host:port` to call it at.
    pub address: String,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl GrpcEcho {
    /// Starts it on the current tokio runtime, configured as a proxy is: mutual TLS with the
    /// node's credentials once they are installed in this process.
    pub async fn start() -> Result<GrpcEcho> {
        Self::start_on(yr_control::grpc_server()?).await
    }

    /// Starts it in plaintext, whatever is installed.
    pub async fn start_plain() -> Result<GrpcEcho> {
        Self::start_on(tonic::transport::Server::builder().tcp_nodelay(true)).await
    }

    async fn start_on(mut server: tonic::transport::Server) -> Result<GrpcEcho> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("cannot listen for the gRPC echo baseline")?;
        let address = listener.local_addr()?.to_string();
        let server = tokio::spawn(
            server
                .add_service(ProxyServer::new(Echo))
                .serve_with_incoming(yr_control::incoming(listener)),
        );
        Ok(GrpcEcho { address, server })
    }
}

impl Drop for GrpcEcho {
    fn drop(&mut self) {
        self.server.abort();
    }
}

struct Measured {
    per_s: f64,
    p50_us: f64,
    p99_us: f64,
    errors: u64,
}

/// Runs `concurrency` callers for `seconds` through `caller`, each sending calls back to back.
async fn drive(caller: &Caller, concurrency: usize, seconds: f64) -> Result<Measured> {
    // Warm-up: connections, instance threads, caches.
    let warm = Duration::from_secs_f64(seconds / 3.0);
    let run = Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let measure_from = start + warm;
    let end = measure_from + run;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let mut c = caller.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            loop {
                let t = Instant::now();
                if t >= end {
                    break;
                }
                let ok = c.call().await.is_ok();
                if t >= measure_from {
                    if ok {
                        lat.push(t.elapsed().as_secs_f64() * 1e6);
                    } else {
                        errors += 1;
                    }
                }
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await?;
        all.extend(l);
        errors += e;
    }
    if all.is_empty() {
        bail!("no call succeeded ({errors} failed)");
    }
    all.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| all[((all.len() - 1) as f64 * p) as usize];
    Ok(Measured {
        per_s: all.len() as f64 / run.as_secs_f64(),
        p50_us: pct(0.5),
        p99_us: pct(0.99),
        errors,
    })
}

/// Rounds of the TLS-against-plaintext comparison; its ratio is their median, so that drifts of
/// a shared machine fall on both sides.
const TLS_ROUNDS: usize = 5;

/// Seconds a new connection and its first call take (the median of 50): the TCP, TLS (when
/// `tls`) and HTTP/2 handshakes plus one call.
async fn connect_and_call(address: &str, tls: bool) -> Result<f64> {
    let mut times = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        let mut c = if tls {
            Caller::connect(address)?
        } else {
            Caller::connect_plain(address)?
        };
        c.call().await?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(|a, b| a.total_cmp(b));
    Ok(times[times.len() / 2])
}

pub fn run(a: InvokeArgs) -> Result<()> {
    let log = |s: &str| {
        if !a.json {
            eprintln!("{s}");
        }
    };
    log("starting a one-node cluster...");
    let node = OneNode::start(&Bins::for_yr_command()?, "yr-bench-invoke-")?;
    deploy_noop(&node, a.instance_concurrency)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (yr_m, base, plain, tls_vs_plain, tls_connect, plain_connect) = rt.block_on(async {
        let mut yr = Caller::connect(&node.session.proxy_address)?;
        // The instance is warm before measuring: one call through.
        yr.call().await?;
        log("invoking through proxy and runtime...");
        let yr_m = drive(&yr, a.concurrency, a.seconds).await?;
        log("bare gRPC baseline (mutual TLS, as the proxy)...");
        let echo = GrpcEcho::start().await?;
        let tls_caller = Caller::connect(&echo.address)?;
        let base = drive(&tls_caller, a.concurrency, a.seconds).await?;
        log("bare gRPC with TLS and in plaintext, alternating (what TLS costs)...");
        let plain_echo = GrpcEcho::start_plain().await?;
        let plain_caller = Caller::connect_plain(&plain_echo.address)?;
        let (mut ratios, mut plain_rates) = (Vec::new(), Vec::new());
        for _ in 0..TLS_ROUNDS {
            let t = drive(&tls_caller, a.concurrency, a.seconds / 3.0).await?;
            let p = drive(&plain_caller, a.concurrency, a.seconds / 3.0).await?;
            ratios.push(t.per_s / p.per_s);
            plain_rates.push(p);
        }
        ratios.sort_by(|a, b| a.total_cmp(b));
        plain_rates.sort_by(|a, b| a.per_s.total_cmp(&b.per_s));
        let tls_vs_plain = ratios[ratios.len() / 2];
        let plain = plain_rates.swap_remove(plain_rates.len() / 2);
        log("connections: a new channel and one call, with and without TLS...");
        let tls_connect = connect_and_call(&echo.address, true).await?;
        let plain_connect = connect_and_call(&plain_echo.address, false).await?;
        Ok::<_, anyhow::Error>((yr_m, base, plain, tls_vs_plain, tls_connect, plain_connect))
    })?;
    let v = json!({
        "invokes_per_s": yr_m.per_s,
        "p50_us": yr_m.p50_us,
        "p99_us": yr_m.p99_us,
        "errors": yr_m.errors,
        "grpc_echo_per_s": base.per_s,
        "grpc_echo_p50_us": base.p50_us,
        "invoke_vs_grpc": yr_m.per_s / base.per_s,
        "grpc_plain_per_s": plain.per_s,
        "grpc_plain_p50_us": plain.p50_us,
        "tls_vs_plain": tls_vs_plain,
        "connect_tls_ms": tls_connect * 1e3,
        "connect_plain_ms": plain_connect * 1e3,
        "client_concurrency": a.concurrency,
        "instance_concurrency": a.instance_concurrency,
    });
    if a.json {
        println!("{v}");
    } else {
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    Ok(())
}
