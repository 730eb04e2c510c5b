//! `yr bench store`: the data worker (a child process) against the baselines measured in the
//! same run: memcpy for puts, a Unix-socket round trip for gets, raw io_uring disk I/O to the
//! same folder for spill and restore; small-object rates and metadata per object beside them.
//! (The criterion group of the store is `benches/benches/store.rs`, on an in-process worker.)

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use serde_json::json;
use yr_datastore::{Client, ObjectId};

use super::stats::{median, percentile};
use crate::store_cmd::pattern;
use crate::util::WorkerProcess;

#[derive(Args)]
pub struct StoreArgs {
    /// Print one JSON object (for scripts) instead of a table.
    #[arg(long)]
    json: bool,
    /// Iterations of each large-object measurement.
    #[arg(long, default_value_t = 15)]
    iters: usize,
    /// Objects for the metadata measurement.
    #[arg(long, default_value_t = 1_000_000)]
    meta_objects: usize,
}

const BIG: usize = 64 << 20;
const SMALL: usize = 1 << 10;

fn gbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e9
}

/// Resident anonymous memory of a process (excludes the shared arena).
fn rss_anon(pid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    for line in s.lines() {
        if let Some(rest) = line.strip_prefix("RssAnon:") {
            let kb: u64 = rest
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .context("RssAnon")?;
            return Ok(kb * 1024);
        }
    }
    anyhow::bail!("no RssAnon in /proc/{pid}/status")
}

fn memcpy_gbps(iters: usize) -> f64 {
    let src = pattern(BIG);
    let mut dst = vec![1u8; BIG];
    let mut v = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        dst.copy_from_slice(&src);
        std::hint::black_box(&mut dst);
        v.push(gbps(BIG, t.elapsed()));
    }
    median(&mut v)
}

/// A 64-byte ping-pong peer on a Unix socket pair: the round-trip baseline.
struct Echo {
    sock: UnixStream,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Echo {
    fn start() -> Result<Echo> {
        let (a, mut b) = UnixStream::pair()?;
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while b.read_exact(&mut buf).is_ok() && b.write_all(&buf).is_ok() {}
        });
        Ok(Echo {
            sock: a,
            thread: Some(thread),
        })
    }

    /// `rounds` round trips, each in microseconds.
    fn block(&mut self, rounds: usize) -> Result<Vec<f64>> {
        let mut buf = [7u8; 64];
        let mut v = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let t = Instant::now();
            self.sock.write_all(&buf)?;
            self.sock.read_exact(&mut buf)?;
            v.push(t.elapsed().as_secs_f64() * 1e6);
        }
        Ok(v)
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn run(a: StoreArgs) -> Result<()> {
    let iters = a.iters.max(3);
    let dir = tempfile::Builder::new().prefix("yr-bench-").tempdir()?;
    let socket = dir.path().join("data-worker.sock");
    let spill_dir = dir.path().join("spill");
    let shm: u64 = 2 << 30;
    let log = |s: &str| {
        if !a.json {
            eprintln!("{s}");
        }
    };
    log("starting data worker (2 GiB arena, prefaulted)...");
    let worker = WorkerProcess::start(&socket, shm, &spill_dir, &["--prefault"])?;
    let client = Client::connect_named(&socket, "yr-bench")?;

    // Baselines first, in the same run.
    log("memcpy baseline...");
    let memcpy = memcpy_gbps(iters);

    // Large put: a private 64 MiB buffer into the store (one copy).
    log("put 64 MiB...");
    let src = pattern(BIG);
    let mut puts = Vec::with_capacity(iters);
    for i in 0..iters + 2 {
        let id = ObjectId::new(1, i as u128);
        let t = Instant::now();
        client.put(id, &src)?;
        let d = t.elapsed();
        if i >= 2 {
            puts.push(gbps(BIG, d)); // the first two warm the page tables
        }
        client.delete_one(id)?;
    }
    let put = median(&mut puts);

    // Get + release of a sealed 64 MiB object, in blocks alternating with
    // blocks of the socket round-trip baseline, so both see the same
    // machine: the ratio is the median of per-block ratios.
    log("get 64 MiB against the socket round trip...");
    let big = ObjectId::new(2, 1);
    client.put(big, &src)?;
    let mut echo = Echo::start()?;
    let (mut gets, mut rtts, mut block_ratios) = (Vec::new(), Vec::new(), Vec::new());
    for block in 0..11 {
        let mut r = echo.block(2_000)?;
        let mut g = Vec::with_capacity(2_000);
        for _ in 0..2_000 {
            let t = Instant::now();
            let v = client.get_one(big, Duration::ZERO)?;
            std::hint::black_box(v.len());
            drop(v);
            g.push(t.elapsed().as_secs_f64() * 1e6);
        }
        if block == 0 {
            continue; // warm-up
        }
        block_ratios.push(median(&mut g) / median(&mut r));
        gets.extend(g);
        rtts.extend(r);
    }
    drop(echo);
    let get_p50 = percentile(&mut gets, 0.5);
    let get_p99 = percentile(&mut gets, 0.99);
    let rtt_p50 = percentile(&mut rtts, 0.5);
    let rtt_p99 = percentile(&mut rtts, 0.99);
    let get_vs_rtt = median(&mut block_ratios);
    client.delete_one(big)?;

    // Small objects, one call at a time.
    log("small objects...");
    let small = pattern(SMALL);
    let n_small = 50_000;
    let t = Instant::now();
    for i in 0..n_small {
        client.put(ObjectId::new(3, i as u128), &small)?;
    }
    let small_put = n_small as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for i in 0..n_small {
        let g = client.get_one(ObjectId::new(3, i as u128), Duration::ZERO)?;
        std::hint::black_box(g.len());
    }
    let small_get = n_small as f64 / t.elapsed().as_secs_f64();
    let ids: Vec<ObjectId> = (0..n_small).map(|i| ObjectId::new(3, i as u128)).collect();
    for chunk in ids.chunks(10_000) {
        client.delete(chunk)?;
    }

    // Spill and restore of 512 MiB in 64 MiB objects, against raw io_uring
    // I/O of the same bytes to the same folder. The disk of a shared VM
    // drifts by tens of percent within seconds, so rounds alternate the two
    // and the ratio reported is the median of per-round ratios.
    log("spill and restore, 6 rounds of 512 MiB...");
    let n_spill = 8;
    let spill_bytes = n_spill * BIG;
    let raw_data = pattern(spill_bytes);
    let (mut spill_r, mut restore_r, mut raw_w, mut raw_r) = (vec![], vec![], vec![], vec![]);
    let mut restore1_r = vec![];
    let (mut spill_ratio, mut restore_ratio) = (vec![], vec![]);
    let mut spilled_objects = 0;
    let (mut engine, mut direct_io) = ("", false);
    // The store's side of a round: spill 512 MiB, then restore it.
    let store_round = |round: u128| -> Result<(f64, f64, f64, u64)> {
        let ids: Vec<ObjectId> = (0..n_spill)
            .map(|i| ObjectId::new(4, round * 1000 + i as u128))
            .collect();
        for id in &ids {
            client.put(*id, &src)?;
        }
        let (spilled, spill_time) = client.spill(0)?;
        // A get of all of them: the worker restores them as one batch.
        let t = Instant::now();
        let views = client.get(&ids, Duration::from_secs(60))?;
        for v in &views {
            if let Err(e) = v {
                anyhow::bail!("restore failed: {e}");
            }
        }
        let rs = gbps(spill_bytes, t.elapsed());
        drop(views);
        // And one object per get, spilled again first.
        client.spill(0)?;
        let t = Instant::now();
        for id in &ids {
            let g = client.get_one(*id, Duration::from_secs(60))?;
            std::hint::black_box(g.len());
        }
        let rs1 = gbps(spill_bytes, t.elapsed());
        let ops = client.stats()?.spill_ops;
        client.delete(&ids)?;
        Ok((gbps(spilled as usize, spill_time), rs, rs1, ops))
    };
    // Which side goes first alternates, so neither always meets the disk
    // fresh from idle (this VM's disk is faster after a pause).
    for round in 0..6u128 {
        let mut store_side = None;
        if round % 2 == 1 {
            store_side = Some(store_round(round)?);
        }
        let mut raw = yr_datastore::spill::raw_write(&spill_dir, &raw_data)?;
        let rw = gbps(spill_bytes, raw.write_time());
        let rr = gbps(spill_bytes, yr_datastore::spill::raw_read(&mut raw)?);
        (engine, direct_io) = (raw.engine_name(), raw.direct_io());
        drop(raw);
        let (sw, rs, rs1, ops) = match store_side {
            Some(v) => v,
            None => store_round(round)?,
        };
        spilled_objects = ops;
        tracing::debug!(round, sw, rs, rs1, rw, rr, "spill round");
        spill_r.push(sw);
        restore_r.push(rs);
        restore1_r.push(rs1);
        raw_w.push(rw);
        raw_r.push(rr);
        spill_ratio.push(sw / rw);
        restore_ratio.push(rs / rr);
    }
    let spill_gbps = median(&mut spill_r);
    let restore_gbps = median(&mut restore_r);
    let restore_single_gbps = median(&mut restore1_r);
    let raw_write = median(&mut raw_w);
    let raw_read = median(&mut raw_r);
    let spill_vs_raw = median(&mut spill_ratio);
    let restore_vs_raw = median(&mut restore_ratio);

    // Metadata per object: the worker's anonymous memory before and after
    // storing many 64-byte objects.
    log("metadata per object...");
    let before = rss_anon(worker.pid())?;
    let tiny = [5u8; 64];
    let n_meta = a.meta_objects;
    let mut items = Vec::with_capacity(4096);
    let mut next = 0usize;
    while next < n_meta {
        items.clear();
        let end = (next + 4096).min(n_meta);
        items.extend((next..end).map(|i| (ObjectId::new(5, i as u128), &tiny[..])));
        for r in client.put_many(&items)? {
            r?;
        }
        next = end;
    }
    let after = rss_anon(worker.pid())?;
    let meta_stats = client.stats()?;
    let meta_per_object = after.saturating_sub(before) as f64 / n_meta.max(1) as f64;
    let table_per_object = meta_stats.meta_bytes as f64 / meta_stats.sealed.max(1) as f64;

    let v = json!({
        "memcpy_gbps": memcpy,
        "put_gbps": put,
        "put_vs_memcpy": put / memcpy,
        "get_p50_us": get_p50,
        "get_p99_us": get_p99,
        "uds_rtt_p50_us": rtt_p50,
        "uds_rtt_p99_us": rtt_p99,
        "get_vs_rtt": get_vs_rtt,
        "small_put_ops_per_s": small_put,
        "small_get_ops_per_s": small_get,
        "spill_write_gbps": spill_gbps,
        "raw_write_gbps": raw_write,
        "spill_vs_raw": spill_vs_raw,
        "restore_gbps": restore_gbps,
        "raw_read_gbps": raw_read,
        "restore_vs_raw": restore_vs_raw,
        "restore_single_gbps": restore_single_gbps,
        "meta_bytes_per_object": meta_per_object,
        "meta_table_bytes_per_object": table_per_object,
        "meta_objects": n_meta,
        "spilled_objects": spilled_objects,
        "spill_engine": engine,
        "spill_direct_io": direct_io,
        "object_bytes": BIG,
        "small_object_bytes": SMALL,
    });
    drop(client);
    drop(worker);
    if a.json {
        println!("{v}");
    } else {
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    Ok(())
}
