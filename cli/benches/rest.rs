//! `cargo bench --bench rest`: a no-op call through the REST frontend (keep-alive HTTP/1.1 →
//! frontend → proxy → function process) on a one-node cluster started with the `yr` binary
//! cargo built, beside a bare axum handler in this process answering the same request with
//! the same reply, with one request in flight and with 32. The set-up is `yr bench rest`'s
//! ([`yr::bench::rest`]).
//!
//! The function's code is this executable: started by the node's agent, it serves the no-op
//! handler instead of benchmarking (see [`yr::bench::node::serve_echo_if_instance`]).

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use yr::bench::node::{Bins, OneNode};
use yr::bench::rest::{Bare, Clients, Frontend};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Clients (one keep-alive connection each) for the throughput measurement, as
/// `yr bench rest` drives it.
const CONCURRENCY: usize = 32;

/// Calls the function's instance takes at a time.
const INSTANCE_CONCURRENCY: usize = 64;

/// The cluster with the function warm, the bare server, and clients of each per
/// in-flight count.
struct Setup {
    _node: OneNode,
    bare: Bare,
    /// (side, in flight) → its clients.
    clients: Vec<((&'static str, usize), Clients)>,
}

fn setup(rt: &tokio::runtime::Runtime) -> anyhow::Result<Setup> {
    let bins = Bins::for_cargo_bench(env!("CARGO_BIN_EXE_yr"))?;
    let node = OneNode::start(&bins, "yr-cargo-bench-rest-")?;
    let frontend = rt.block_on(Frontend::prepare(&node, INSTANCE_CONCURRENCY))?;
    let bare = Bare::start(&frontend)?;
    let clients = rt.block_on(async {
        let mut all = Vec::new();
        for n in [1, CONCURRENCY] {
            let front_req = frontend.request(&frontend.address);
            let front = Clients::open("frontend", &frontend.address, front_req, n).await?;
            all.push((("frontend", n), front));
            let bare_req = frontend.request(&bare.address);
            let b = Clients::open("bare axum", &bare.address, bare_req, n).await?;
            all.push((("bare_axum", n), b));
        }
        Ok::<_, anyhow::Error>(all)
    })?;
    Ok(Setup {
        _node: node,
        bare,
        clients,
    })
}

fn rest(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    // Started by the first benchmark that runs, so a filter that skips this group costs nothing.
    let mut ready: Option<Setup> = None;
    let mut g = c.benchmark_group("rest");
    g.sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(1));
    for in_flight in [1, CONCURRENCY] {
        for side in ["frontend", "bare_axum"] {
            let id = BenchmarkId::new(side, format!("{in_flight}_in_flight"));
            g.bench_function(id, |b| {
                let s = ready.get_or_insert_with(|| {
                    setup(&rt).unwrap_or_else(|e| panic!("rest bench set-up: {e:#}"))
                });
                let (_, clients) = s
                    .clients
                    .iter_mut()
                    .find(|(k, _)| *k == (side, in_flight))
                    .expect("clients for every side and count");
                b.iter_custom(|iters| {
                    rt.block_on(clients.batch(iters))
                        .unwrap_or_else(|e| panic!("{side}: {e:#}"))
                })
            });
        }
    }
    g.finish();
    if let Some(s) = ready {
        // Connections close on their runtime; the bare server's runtime shuts down here,
        // outside any async context.
        drop(s.clients);
        drop(s.bare);
    }
}

fn main() {
    yr::bench::node::serve_echo_if_instance();
    let mut c = Criterion::default().configure_from_args();
    rest(&mut c);
    c.final_summary();
}
