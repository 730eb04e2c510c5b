//! `cargo bench --bench invoke`: a no-op call's round trip through a real proxy and function
//! process on a one-node cluster (started with the `yr` binary cargo built), beside a bare
//! gRPC echo server in this process answering the same call, with one call in flight and
//! with 64. The set-up is `yr bench invoke`'s ([`yr::bench::invoke`]).
//!
//! The function's code is this executable: started by the node's agent, it serves the no-op
//! handler instead of benchmarking (see [`yr::bench::node::serve_echo_if_instance`]).

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use yr::bench::invoke::{deploy_noop, Caller, GrpcEcho};
use yr::bench::node::{Bins, OneNode};

/// The client (and, in the function process, the handler) allocate like the yr binary does.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Calls in flight for the throughput measurement, as `yr bench invoke` drives it.
const CONCURRENCY: usize = 64;

/// The cluster with the no-op function warm, and the baseline beside it.
struct Setup {
    _node: OneNode,
    _echo: GrpcEcho,
    yr: Caller,
    echo: Caller,
}

fn setup(rt: &tokio::runtime::Runtime) -> anyhow::Result<Setup> {
    let bins = Bins::for_cargo_bench(env!("CARGO_BIN_EXE_yr"))?;
    let node = OneNode::start(&bins, "yr-cargo-bench-invoke-")?;
    deploy_noop(&node, CONCURRENCY as u32)?;
    rt.block_on(async {
        let mut yr = Caller::connect(&node.session.proxy_address)?;
        // The instance is warm before measuring: one call through.
        yr.call().await?;
        let echo = GrpcEcho::start().await?;
        let echo_caller = Caller::connect(&echo.address)?;
        Ok(Setup {
            _node: node,
            _echo: echo,
            yr,
            echo: echo_caller,
        })
    })
}

fn invoke(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    // Started by the first benchmark that runs, so a filter that skips this group costs nothing.
    let mut ready: Option<Setup> = None;
    let mut g = c.benchmark_group("invoke");
    g.sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(1));
    for in_flight in [1, CONCURRENCY] {
        for side in ["yr", "grpc_echo"] {
            let id = BenchmarkId::new(side, format!("{in_flight}_in_flight"));
            g.bench_function(id, |b| {
                let s = ready.get_or_insert_with(|| {
                    setup(&rt).unwrap_or_else(|e| panic!("invoke bench set-up: {e:#}"))
                });
                let caller = if side == "yr" { &s.yr } else { &s.echo };
                b.iter_custom(|iters| {
                    rt.block_on(caller.batch(iters, in_flight))
                        .unwrap_or_else(|e| panic!("{side}: {e:#}"))
                })
            });
        }
    }
    g.finish();
    // The cluster stops before the runtime its client connections live on.
    drop(ready);
}

fn main() {
    yr::bench::node::serve_echo_if_instance();
    let mut c = Criterion::default().configure_from_args();
    invoke(&mut c);
    c.final_summary();
}
