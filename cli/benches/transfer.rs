//! `cargo bench --bench transfer`: one data worker pulling a 64 MiB object from another over
//! loopback TCP (two real worker processes of the `yr` binary cargo built), beside a raw TCP
//! stream of the same bytes between two threads of this process. The set-up is
//! `yr bench transfer`'s ([`yr::bench::transfer`]); each pull's copy is deleted (untimed)
//! before the next, so every pull moves the whole object.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use yr::bench::transfer::{TcpBaseline, WorkerPair};
use yr::util::Yr;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Bytes per pull: large enough to measure the stream, small enough for a short group.
const SIZE: u64 = 64 << 20;

fn setup() -> anyhow::Result<(WorkerPair, TcpBaseline)> {
    let pair = WorkerPair::start(&Yr::at(env!("CARGO_BIN_EXE_yr")), SIZE, false, |_| {})?;
    let mut tcp = TcpBaseline::start(pair.object())?;
    // Both once with their bytes checked (and the first faults and connections paid for).
    pair.pull(true)?;
    tcp.run(true)?;
    Ok((pair, tcp))
}

fn transfer(c: &mut Criterion) {
    // Started by the first benchmark that runs, so a filter that skips this group costs nothing.
    let mut ready: Option<(WorkerPair, TcpBaseline)> = None;
    let mut g = c.benchmark_group("transfer");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Bytes(SIZE));
    let param = format!("{}MiB", SIZE >> 20);
    g.bench_function(BenchmarkId::new("pull", &param), |b| {
        let (pair, _) = ready.get_or_insert_with(|| {
            setup().unwrap_or_else(|e| panic!("transfer bench set-up: {e:#}"))
        });
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| pair.pull(false).unwrap_or_else(|e| panic!("pull: {e:#}")))
                .sum()
        })
    });
    g.bench_function(BenchmarkId::new("tcp", &param), |b| {
        let (_, tcp) = ready.get_or_insert_with(|| {
            setup().unwrap_or_else(|e| panic!("transfer bench set-up: {e:#}"))
        });
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| tcp.run(false).unwrap_or_else(|e| panic!("tcp: {e:#}")))
                .sum()
        })
    });
    g.finish();
    if let Some((pair, mut tcp)) = ready {
        if let Err(e) = tcp.stop().and_then(|()| pair.stop()) {
            panic!("transfer bench tear-down: {e:#}");
        }
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    transfer(&mut c);
    c.final_summary();
}
