//! `cargo bench --bench store`: the data worker's put/get by size (1 KiB to
//! 256 MiB, with memcpy of the same size as the baseline), small-object
//! operations, and spill/restore. The groups that need whole processes
//! (invoke, transfer, rest) are in `cli/benches/`, beside the `yr` binary.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::time::Duration;
use yr_benches::BenchWorker;
use yr_datastore::ObjectId;

const SIZES: [usize; 6] = [1 << 10, 64 << 10, 1 << 20, 16 << 20, 64 << 20, 256 << 20];

fn put_get(c: &mut Criterion) {
    let w = BenchWorker::start(1 << 30);
    let client = w.client();
    let mut g = c.benchmark_group("store");
    g.sample_size(20).measurement_time(Duration::from_secs(3));
    for &size in &SIZES {
        let src = vec![7u8; size];
        let mut dst = vec![1u8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("memcpy", size), &size, |b, _| {
            b.iter(|| dst.copy_from_slice(&src))
        });
        let id = ObjectId::new(1, size as u128);
        g.bench_with_input(BenchmarkId::new("put", size), &size, |b, _| {
            b.iter(|| {
                client.put(id, &src).expect("put");
                client.delete_one(id).expect("delete");
            })
        });
        client.put(id, &src).expect("put");
        g.bench_with_input(BenchmarkId::new("get", size), &size, |b, _| {
            b.iter(|| {
                let v = client.get_one(id, Duration::ZERO).expect("get");
                criterion::black_box(v.len());
            })
        });
        client.delete_one(id).expect("delete");
    }
    g.finish();
}

fn small_ops(c: &mut Criterion) {
    let w = BenchWorker::start(256 << 20);
    let client = w.client();
    let data = [3u8; 1024];
    let mut g = c.benchmark_group("small");
    g.throughput(Throughput::Elements(1));
    let mut n = 0u128;
    g.bench_function("put_delete_1KiB", |b| {
        b.iter(|| {
            n += 1;
            client.put(ObjectId::new(2, n), &data).expect("put");
            client.delete_one(ObjectId::new(2, n)).expect("delete");
        })
    });
    client.put(ObjectId::new(3, 0), &data).expect("put");
    g.bench_function("get_1KiB", |b| {
        b.iter(|| {
            let v = client
                .get_one(ObjectId::new(3, 0), Duration::ZERO)
                .expect("get");
            criterion::black_box(v.len());
        })
    });
    g.bench_function("contains", |b| {
        b.iter(|| client.contains(ObjectId::new(3, 0)).expect("contains"))
    });
    g.finish();
}

fn spill_restore(c: &mut Criterion) {
    let w = BenchWorker::start(512 << 20);
    let client = w.client();
    let size = 32 << 20;
    let src = vec![9u8; size];
    let mut g = c.benchmark_group("spill");
    g.sample_size(10).throughput(Throughput::Bytes(size as u64));
    let mut n = 0u128;
    g.bench_function("spill_then_restore_32MiB", |b| {
        b.iter(|| {
            n += 1;
            let id = ObjectId::new(4, n);
            client.put(id, &src).expect("put");
            client.spill(0).expect("spill");
            let v = client
                .get_one(id, Duration::from_secs(30))
                .expect("restore");
            criterion::black_box(v.len());
            drop(v);
            client.delete_one(id).expect("delete");
        })
    });
    g.finish();
}

criterion_group!(benches, put_get, small_ops, spill_restore);
criterion_main!(benches);
