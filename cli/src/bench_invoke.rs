//! `yr bench invoke`: calls per second and latency of a no-op function through the proxy and
//! the runtime, on a one-node cluster this command starts (and stops) itself.
//!
//! The baseline, measured in the same run with the same client and concurrency, is a bare
//! gRPC server in this process answering the same `Invoke` call with the request's bytes: what
//! one gRPC hop costs on this machine with nothing behind it. A call through yr makes two
//! hops (client → proxy → function process) plus queueing and the handler's thread handoff.

use std::path::PathBuf;
use std::time::{Duration, Instant};
use yr_runtime::session::Session;

use anyhow::{anyhow, bail, Result};
use clap::Args;
use serde_json::json;
use tonic::{Request, Response, Status};
use yr_proto::proxy_client::ProxyClient;
use yr_proto::proxy_server::{Proxy, ProxyServer};
use yr_proto::*;

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
}

struct Measured {
    per_s: f64,
    p50_us: f64,
    p99_us: f64,
    errors: u64,
}

/// Runs `concurrency` callers for `seconds` against `address`, each sending `req` back to back.
async fn drive(
    address: &str,
    req: InvokeRequest,
    concurrency: usize,
    seconds: f64,
) -> Result<Measured> {
    let client = ProxyClient::new(yr_control::channel(address)?);
    // Warm-up: connections, instance threads, caches.
    let warm = Duration::from_secs_f64(seconds / 3.0);
    let run = Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let measure_from = start + warm;
    let end = measure_from + run;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let mut c = client.clone();
        let req = req.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            loop {
                let t = Instant::now();
                if t >= end {
                    break;
                }
                let r = c.invoke(req.clone()).await;
                let ok =
                    matches!(&r, Ok(r) if r.get_ref().error_kind == ErrorKind::ErrorNone as i32);
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

use crate::util::run_self as yr;

/// A one-node cluster in a temporary folder, for the benches: stopped, then its folder
/// removed, when dropped.
pub(crate) struct OneNode {
    // Declared first, so dropped first: the cluster stops before its folder goes.
    _guard: crate::util::Nodes,
    _tmp: tempfile::TempDir,
    /// The node's session folder (`--session-dir`).
    pub dir: PathBuf,
    pub session: Session,
    /// The `hello` example function, built next to this executable.
    pub hello: PathBuf,
}

/// Starts a one-node cluster (`yr start --master --ports auto`) in a new temporary folder named
/// `prefix...`, after checking that the `hello` example is built.
pub(crate) fn start_one_node(prefix: &str) -> Result<OneNode> {
    let exe = std::env::current_exe()?;
    let hello = exe
        .parent()
        .map(|d| d.join("hello"))
        .filter(|p| p.exists())
        .ok_or_else(|| anyhow!("the example function `hello` is not built next to {} (cargo build --release --bins)", exe.display()))?;
    let tmp = tempfile::Builder::new().prefix(prefix).tempdir()?;
    let dir = tmp.path().join("session");
    let dir_s = dir.display().to_string();
    yr(&[
        "start",
        "--master",
        "--session-dir",
        &dir_s,
        "--ports",
        "auto",
        "--shm-size",
        "64MiB",
    ])?;
    let guard = crate::util::Nodes(vec![dir_s]);
    let session = Session::load(&dir)?;
    Ok(OneNode {
        _guard: guard,
        _tmp: tmp,
        dir,
        session,
        hello,
    })
}

pub fn run(a: InvokeArgs) -> Result<()> {
    let log = |s: &str| {
        if !a.json {
            eprintln!("{s}");
        }
    };
    log("starting a one-node cluster...");
    let node = start_one_node("yr-bench-invoke-")?;
    let (session, dir_s) = (&node.session, node.dir.display().to_string());
    let conc = a.instance_concurrency.to_string();
    yr(&[
        "function",
        "deploy",
        "--session-dir",
        &dir_s,
        "--name",
        "noop",
        "--code",
        &node.hello.display().to_string(),
        "--handler",
        "echo",
        "--min-instances",
        "1",
        "--max-instances",
        "1",
        "--concurrency",
        &conc,
    ])?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let req = InvokeRequest {
        function: "noop".into(),
        payload: axum::body::Bytes::from_static(b"ping"),
        ..Default::default()
    };
    let (yr_m, base) = rt.block_on(async {
        // The instance is warm before measuring: one call through.
        let mut c = ProxyClient::new(yr_control::channel(&session.proxy_address)?);
        let first = c.invoke(req.clone()).await?.into_inner();
        if first.error_kind != ErrorKind::ErrorNone as i32 {
            bail!("the no-op function failed: {}", first.error);
        }
        log("invoking through proxy and runtime...");
        let yr_m = drive(
            &session.proxy_address,
            req.clone(),
            a.concurrency,
            a.seconds,
        )
        .await?;
        log("bare gRPC baseline...");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .tcp_nodelay(true)
                .add_service(ProxyServer::new(Echo))
                .serve_with_incoming(yr_control::incoming(listener)),
        );
        let base = drive(&addr.to_string(), req.clone(), a.concurrency, a.seconds).await?;
        server.abort();
        Ok::<_, anyhow::Error>((yr_m, base))
    })?;
    let v = json!({
        "invokes_per_s": yr_m.per_s,
        "p50_us": yr_m.p50_us,
        "p99_us": yr_m.p99_us,
        "errors": yr_m.errors,
        "grpc_echo_per_s": base.per_s,
        "grpc_echo_p50_us": base.p50_us,
        "invoke_vs_grpc": yr_m.per_s / base.per_s,
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
