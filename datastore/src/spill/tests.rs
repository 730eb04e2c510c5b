use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use super::io::{IoEngine, IoQueue, Op, OpKind, PwriteEngine};
use super::*;

/// Deterministic bytes that differ per seed and per position (xorshift), so a misplaced chunk
/// cannot go unnoticed.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn open(dir: &Path, limit: u64, opts: SpillOptions) -> SpillStore {
    SpillStore::open_with(
        SpillConfig {
            dir: dir.to_owned(),
            limit,
        },
        opts,
    )
    .expect("open spill store")
}

fn spill_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("yr-spill-") && n.ends_with(".bin"))
        .collect();
    names.sort();
    names
}

/// Many small objects (some empty, some straddling chunk and block boundaries) mixed with large
/// ones, sizes chosen to hit every packing case.
fn mixed_objects(seed: u64) -> Vec<Vec<u8>> {
    let mut objs = Vec::new();
    for i in 0..300u64 {
        let len = match i % 7 {
            0 => 0,
            1 => 1,
            2 => 4095,
            3 => 4096,
            4 => 4097,
            5 => (i as usize * 37) % 3000,
            _ => 100 + i as usize,
        };
        objs.push(pattern(seed + i, len));
        if i % 100 == 50 {
            // Large: over a chunk, unaligned length; exactly a chunk; just over the packing threshold.
            objs.push(pattern(seed + 1000 + i, 3 * CHUNK + 12_345));
            objs.push(pattern(seed + 2000 + i, CHUNK));
            objs.push(pattern(seed + 3000 + i, 64 * 1024 + 1));
        }
    }
    objs
}

fn round_trip(store: &SpillStore, seed: u64) {
    let objs = mixed_objects(seed);
    let slices: Vec<&[u8]> = objs.iter().map(Vec::as_slice).collect();
    let total: u64 = objs.iter().map(|o| o.len() as u64).sum();
    let locs = store.write_batch(&slices).expect("write batch");
    assert_eq!(locs.len(), objs.len());
    assert_eq!(store.used(), total);
    assert_eq!(store.file_count(), 1);
    // Read in reverse, to not just follow the write order.
    for (loc, obj) in locs.iter().zip(&objs).rev() {
        let mut dst = vec![0xEE; obj.len()];
        store.read(loc, &mut dst).expect("read back");
        assert!(dst == *obj, "object at {loc:?} differs after round trip");
    }
    for loc in &locs {
        store.free(loc);
    }
    assert_eq!(store.used(), 0);
    assert_eq!(store.file_count(), 0);
    assert!(spill_files(store.dir()).is_empty());
}

#[test]
fn round_trip_many_small_and_some_large_objects_in_one_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), u64::MAX, SpillOptions::default());
    round_trip(&store, 1);
}

#[test]
fn round_trip_with_pwrite_engine() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = SpillOptions {
        engine: EngineChoice::Pwrite,
        ..SpillOptions::default()
    };
    let store = open(dir.path(), u64::MAX, opts);
    assert_eq!(store.engine_name(), "pwrite");
    round_trip(&store, 2);
}

#[test]
fn round_trip_with_io_uring_engine() {
    if let Err(reason) = io::uring_support() {
        eprintln!("skipped: io_uring unavailable here: {reason}");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = SpillOptions {
        engine: EngineChoice::IoUring,
        ..SpillOptions::default()
    };
    let store = open(dir.path(), u64::MAX, opts);
    assert_eq!(store.engine_name(), "io_uring");
    round_trip(&store, 3);
}

#[test]
fn round_trip_buffered_with_both_engines() {
    for engine in [EngineChoice::Auto, EngineChoice::Pwrite] {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = SpillOptions {
            engine,
            direct_io: DirectIo::Off,
        };
        let store = open(dir.path(), u64::MAX, opts);
        assert!(!store.direct_io());
        round_trip(&store, 4);
    }
}

#[test]
fn round_trip_on_tmpfs() {
    // tmpfs holds the page cache itself; whatever the probe decides there must work.
    let Ok(dir) = tempfile::tempdir_in("/dev/shm") else {
        eprintln!("skipped: no /dev/shm");
        return;
    };
    let store = open(dir.path(), u64::MAX, SpillOptions::default());
    round_trip(&store, 5);
}

#[test]
fn direct_io_is_used_on_a_disk_filesystem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), u64::MAX, SpillOptions::default());
    // Informational: the probe result depends on the filesystem under the temp dir.
    eprintln!(
        "engine {} direct_io {} in {}",
        store.engine_name(),
        store.direct_io(),
        dir.path().display()
    );
}

#[test]
fn several_batches_and_interleaved_frees() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), u64::MAX, SpillOptions::default());
    let mut live: Vec<(SpillLoc, Vec<u8>)> = Vec::new();
    for batch in 0..6u64 {
        let objs: Vec<Vec<u8>> = (0..20u64)
            .map(|i| {
                pattern(
                    batch * 100 + i,
                    ((batch * 7919 + i * 104_729) % 300_000) as usize,
                )
            })
            .collect();
        let slices: Vec<&[u8]> = objs.iter().map(Vec::as_slice).collect();
        let locs = store.write_batch(&slices).expect("write batch");
        assert!(locs.iter().all(|l| l.len == 0 || l.file == locs[0].file));
        live.extend(locs.into_iter().zip(objs));
        // Free every third live object, oldest first.
        let mut i = 0;
        live.retain(|(loc, _)| {
            i += 1;
            if i % 3 == 0 {
                store.free(loc);
                false
            } else {
                true
            }
        });
        let expect: u64 = live.iter().map(|(l, _)| l.len).sum();
        assert_eq!(store.used(), expect);
        for (loc, obj) in &live {
            let mut dst = vec![0; obj.len()];
            store.read(loc, &mut dst).expect("read");
            assert!(dst == *obj);
        }
    }
    assert_eq!(store.file_count(), spill_files(dir.path()).len());
    for (loc, _) in &live {
        store.free(loc);
    }
    assert_eq!(store.used(), 0);
    assert!(spill_files(dir.path()).is_empty());
}

#[test]
fn free_punches_dead_blocks_and_unlinks_with_the_last_object() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), u64::MAX, SpillOptions::default());
    let a = pattern(1, 4 * CHUNK);
    let b = pattern(2, 100);
    let locs = store.write_batch(&[&a, &b]).expect("write");
    let path = store.file_path(locs[0].file);
    let before = fs::metadata(&path).expect("stat").blocks() * 512;
    store.free(&locs[0]);
    assert_eq!(store.used(), 100);
    assert!(
        path.exists(),
        "file unlinked while an object still lives in it"
    );
    let after = fs::metadata(&path).expect("stat").blocks() * 512;
    assert!(
        after + 4 * CHUNK as u64 <= before + 2 * BLOCK,
        "freed blocks not punched: {before} -> {after} bytes allocated"
    );
    // The survivor still reads back; a freed object no longer does.
    let mut dst = vec![0; 100];
    store.read(&locs[1], &mut dst).expect("read survivor");
    assert_eq!(dst, b);
    let mut dst = vec![0; a.len()];
    assert!(matches!(
        store.read(&locs[0], &mut dst),
        Err(SpillError::NotLive { .. })
    ));
    // Double free changes nothing.
    store.free(&locs[0]);
    assert_eq!(store.used(), 100);
    store.free(&locs[1]);
    assert!(!path.exists(), "file kept after its last object was freed");
    assert_eq!(store.file_count(), 0);
    assert_eq!(store.used(), 0);
}

#[test]
fn limit_is_enforced_before_writing_anything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), 10_000, SpillOptions::default());
    assert_eq!(store.limit(), 10_000);
    let a = pattern(1, 6000);
    let b = pattern(2, 5000);
    let locs = store.write_batch(&[&a]).expect("fits");
    match store.write_batch(&[&b[..2000], &b[2000..]]) {
        Err(SpillError::LimitReached {
            requested,
            used,
            limit,
        }) => assert_eq!((requested, used, limit), (5000, 6000, 10_000)),
        other => panic!("expected LimitReached, got {other:?}"),
    }
    assert_eq!(store.used(), 6000);
    assert_eq!(store.file_count(), 1);
    assert_eq!(spill_files(dir.path()).len(), 1);
    store.free(&locs[0]);
    let locs = store.write_batch(&[&b]).expect("fits after free");
    assert_eq!(store.used(), 5000);
    store.free(&locs[0]);
}

#[test]
fn corruption_is_detected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), u64::MAX, SpillOptions::default());
    let a = pattern(1, 3000);
    let b = pattern(2, 2 * CHUNK + 5);
    let locs = store.write_batch(&[&a, &b]).expect("write");
    let path = store.file_path(locs[1].file);
    // Flip one byte in the middle of b, behind the store's back (buffered write: fine, the
    // store's O_DIRECT read sees it once it is written back).
    let f = OpenOptions::new()
        .write(true)
        .read(true)
        .open(&path)
        .expect("open");
    let at = locs[1].offset + CHUNK as u64 + 17;
    let mut byte = [0u8];
    f.read_exact_at(&mut byte, at).expect("read byte");
    byte[0] ^= 0x40;
    f.write_all_at(&byte, at).expect("write byte");
    f.sync_all().expect("sync");
    drop(f);
    let mut dst = vec![0; b.len()];
    match store.read(&locs[1], &mut dst) {
        Err(SpillError::Corrupt {
            path: p,
            offset,
            expected,
            actual,
            ..
        }) => {
            assert_eq!(p, path);
            assert_eq!(offset, locs[1].offset);
            assert_eq!(expected, locs[1].crc);
            assert_ne!(actual, expected);
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // The neighbour is intact.
    let mut dst = vec![0; a.len()];
    store.read(&locs[0], &mut dst).expect("read a");
    assert_eq!(dst, a);
}

#[test]
fn concurrent_restores_and_spills() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), u64::MAX, SpillOptions::default());
    let base: Vec<Vec<u8>> = (0..8).map(|i| pattern(i, 300_000 + i as usize)).collect();
    let slices: Vec<&[u8]> = base.iter().map(Vec::as_slice).collect();
    let base_locs = store.write_batch(&slices).expect("write base");
    std::thread::scope(|s| {
        let writer = s.spawn(|| {
            for round in 0..12u64 {
                let objs: Vec<Vec<u8>> = (0..5)
                    .map(|i| pattern(100 + round * 10 + i, 700_000 + i as usize * 999))
                    .collect();
                let slices: Vec<&[u8]> = objs.iter().map(Vec::as_slice).collect();
                let locs = store.write_batch(&slices).expect("concurrent write");
                for (loc, obj) in locs.iter().zip(&objs) {
                    let mut dst = vec![0; obj.len()];
                    store.read(loc, &mut dst).expect("read own");
                    assert!(dst == *obj);
                    store.free(loc);
                }
            }
        });
        let reader = s.spawn(|| {
            for _ in 0..10 {
                for (loc, obj) in base_locs.iter().zip(&base) {
                    let mut dst = vec![0; obj.len()];
                    store.read(loc, &mut dst).expect("concurrent read");
                    assert!(dst == *obj);
                }
            }
        });
        writer.join().expect("writer");
        reader.join().expect("reader");
    });
    assert_eq!(
        store.used(),
        base.iter().map(|b| b.len() as u64).sum::<u64>()
    );
    assert_eq!(store.file_count(), 1);
}

#[test]
fn empty_batches_and_empty_objects() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), 0, SpillOptions::default());
    assert!(store.write_batch(&[]).expect("empty batch").is_empty());
    let locs = store.write_batch(&[&[], &[]]).expect("empty objects");
    assert_eq!(store.file_count(), 0);
    for loc in &locs {
        store.read(loc, &mut []).expect("read empty");
        store.free(loc);
    }
    assert!(matches!(
        store.write_batch(&[b"x"]),
        Err(SpillError::LimitReached { .. })
    ));
}

#[test]
fn wrong_destination_size_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), u64::MAX, SpillOptions::default());
    let locs = store.write_batch(&[b"hello"]).expect("write");
    let mut dst = [0u8; 4];
    assert!(matches!(
        store.read(&locs[0], &mut dst),
        Err(SpillError::Io { .. })
    ));
}

#[test]
fn stale_files_are_removed_and_the_directory_is_owned_by_one_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("yr-spill-0000002a.bin"), b"old").expect("write stale");
    fs::write(dir.path().join("keep-me.bin"), b"not ours").expect("write other");
    let store = open(dir.path(), u64::MAX, SpillOptions::default());
    assert!(spill_files(dir.path()).is_empty());
    assert!(dir.path().join("keep-me.bin").exists());
    let second = SpillStore::open(SpillConfig {
        dir: dir.path().to_owned(),
        limit: u64::MAX,
    });
    assert!(matches!(second, Err(SpillError::DirInUse { .. })));
    // Files still live when the store goes away go with it.
    store.write_batch(&[b"abc"]).expect("write");
    assert_eq!(spill_files(dir.path()).len(), 1);
    drop(store);
    assert!(spill_files(dir.path()).is_empty());
    open(dir.path(), u64::MAX, SpillOptions::default());
}

#[test]
fn opening_in_an_unusable_place_is_an_io_error_naming_the_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blocker = dir.path().join("a-file");
    fs::write(&blocker, b"").expect("write");
    let res = SpillStore::open(SpillConfig {
        dir: blocker.join("spill"),
        limit: u64::MAX,
    });
    match res {
        Err(SpillError::Io { path, .. }) => assert_eq!(path, blocker.join("spill")),
        Err(other) => panic!("expected Io, got {other:?}"),
        Ok(_) => panic!("expected Io, got a store"),
    }
}

/// An engine that behaves like a filling disk: writes at or past `fail_from` fail with ENOSPC.
struct FullDisk {
    inner: Box<dyn IoEngine>,
    fail_from: u64,
}

struct FullDiskQueue<'a> {
    inner: Box<dyn IoQueue + 'a>,
    fail_from: u64,
}

impl IoEngine for FullDisk {
    fn name(&self) -> &'static str {
        "full-disk"
    }

    fn queue<'a>(&'a self, file: &'a File, depth: usize) -> Box<dyn IoQueue + 'a> {
        Box::new(FullDiskQueue {
            inner: self.inner.queue(file, depth),
            fail_from: self.fail_from,
        })
    }
}

impl IoQueue for FullDiskQueue<'_> {
    fn push(&mut self, op: Op) -> std::io::Result<()> {
        if op.kind == OpKind::Write && op.offset + op.len as u64 > self.fail_from {
            return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
        }
        self.inner.push(op)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
    fn wait(&mut self) -> std::io::Result<Op> {
        self.inner.wait()
    }
    fn pending(&self) -> usize {
        self.inner.pending()
    }
}

#[test]
fn full_disk_fails_cleanly_with_the_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inner = make_engine(EngineChoice::Auto, dir.path()).expect("engine");
    let engine = Box::new(FullDisk {
        inner,
        fail_from: 3 * CHUNK as u64,
    });
    let store =
        SpillStore::open_with_engine(dir.path().to_owned(), 1 << 40, DirectIo::Auto, engine)
            .expect("open");
    let small = pattern(1, 1000);
    let kept = store.write_batch(&[&small]).expect("small batch fits");
    let big = pattern(2, 8 * CHUNK);
    match store.write_batch(&[&small, &big]) {
        Err(SpillError::Io { op, path, source }) => {
            assert_eq!(source.raw_os_error(), Some(libc::ENOSPC));
            assert!(op.contains("write"), "op {op}");
            assert!(path.starts_with(dir.path()), "path {}", path.display());
            assert!(!path.exists(), "partial file left behind");
        }
        other => panic!("expected Io(ENOSPC), got {other:?}"),
    }
    assert_eq!(store.used(), 1000, "quota of the failed batch not released");
    assert_eq!(store.file_count(), 1);
    assert_eq!(spill_files(dir.path()).len(), 1);
    let mut dst = vec![0; 1000];
    store
        .read(&kept[0], &mut dst)
        .expect("earlier batch intact");
    assert_eq!(dst, small);
}

#[test]
fn pwrite_queue_reports_short_files() {
    // A read past the end of a file must be an error, not zeros.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("short");
    fs::write(&path, [1u8; 100]).expect("write");
    let file = File::open(&path).expect("open");
    for engine in [
        Box::new(PwriteEngine::new(2)) as Box<dyn IoEngine>,
        make_engine(EngineChoice::Auto, dir.path()).expect("engine"),
    ] {
        let mut q = engine.queue(&file, 4);
        let res = q
            .push(Op {
                kind: OpKind::Read,
                offset: 0,
                len: 4096,
                buf: buf::AlignedBuf::new(4096).expect("buf"),
                tag: 0,
            })
            .and_then(|()| q.wait());
        let err = res.err().expect("short read must fail");
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::UnexpectedEof,
            "{}",
            engine.name()
        );
    }
}

#[test]
fn raw_baseline_round_trips() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = pattern(9, 3 * CHUNK + 77);
    let mut raw = raw_write(dir.path(), &data).expect("raw write");
    assert_eq!(raw.len(), data.len() as u64);
    raw_read(&mut raw).expect("raw read");
    let path = raw.path().to_owned();
    assert!(path.exists());
    drop(raw);
    assert!(!path.exists());
}

/// Spill and restore throughput against the raw baseline, 256 MiB, as one object and as 256
/// objects of 1 MiB (restored one by one, as gets would).
///
/// This VM's disk (virtio under Firecracker) swings by ±30% between runs, and by file (host-side
/// caching), so: rounds alternate the order of the phases (ABBA), the filesystem is settled before
/// every timed phase (ext4 with `discard` trims unlinked files at journal commit), ratios are
/// taken per round and their median reported, and restores are compared both with `raw_read` of
/// the raw file and with a raw read of the very same spill file (same bytes, same place on
/// disk, no copy-out and no crc), in alternating order.
///
/// Run with `cargo test --release -- --ignored --nocapture spill_vs_raw`; `YR_SPILL_BENCH_DIR`
/// picks the directory (default: the temp dir), `YR_SPILL_BENCH_ENGINE=pwrite` the fallback
/// engine and `YR_SPILL_BENCH_BUFFERED=1` buffered I/O.
#[test]
#[ignore]
fn spill_vs_raw_throughput() {
    const LEN: usize = 256 << 20;
    const ROUNDS: usize = 10;
    let base = std::env::var_os("YR_SPILL_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(base).expect("tempdir");
    let data = pattern(42, LEN);
    let opts = SpillOptions {
        engine: match std::env::var("YR_SPILL_BENCH_ENGINE").as_deref() {
            Ok("pwrite") => EngineChoice::Pwrite,
            Ok("io_uring") => EngineChoice::IoUring,
            _ => EngineChoice::Auto,
        },
        direct_io: match std::env::var("YR_SPILL_BENCH_BUFFERED").as_deref() {
            Ok("1") => DirectIo::Off,
            _ => DirectIo::Auto,
        },
    };
    let raw_dir = dir.path().join("raw");
    fs::create_dir_all(&raw_dir).expect("mkdir");
    let store = open(&dir.path().join("spill"), u64::MAX, opts);
    let mut dst = vec![1u8; LEN]; // faulted in, as an arena slice would be
    let mut same_file_bufs: Vec<Option<AlignedBuf>> = (0..LEN / CHUNK)
        .map(|_| {
            let mut b = AlignedBuf::new(CHUNK).expect("alloc");
            b.as_mut_slice().fill(1);
            Some(b)
        })
        .collect();
    let shapes: [(&str, Vec<&[u8]>); 2] = [
        ("1 x 256 MiB", vec![&data[..]]),
        ("256 x 1 MiB", data.chunks(1 << 20).collect()),
    ];
    let settle = || {
        // SAFETY: sync(2) takes no arguments and cannot fail.
        unsafe { libc::sync() };
        std::thread::sleep(Duration::from_millis(100));
    };

    #[derive(Clone, Default)]
    struct Times {
        write: Vec<Duration>,
        read: Vec<Duration>,
        /// Raw read of the spill file just restored from (spill shapes only).
        same_file: Vec<Duration>,
    }
    // times[0] is raw, times[1 + i] is shape i.
    let mut times = vec![Times::default(); 1 + shapes.len()];
    for round in 0..ROUNDS {
        let mut phases: Vec<usize> = (0..=shapes.len()).collect();
        if round % 2 == 1 {
            phases.reverse();
        }
        for phase in phases {
            settle();
            if phase == 0 {
                let mut raw = raw_write_with(&raw_dir, &data, opts).expect("raw write");
                assert_eq!(raw.engine_name(), store.engine_name());
                assert_eq!(raw.direct_io(), store.direct_io());
                settle();
                let read = raw_read(&mut raw).expect("raw read");
                times[0].write.push(raw.write_time());
                times[0].read.push(read);
                continue;
            }
            let t = Instant::now();
            let locs = store.write_batch(&shapes[phase - 1].1).expect("spill");
            times[phase].write.push(t.elapsed());
            let path = store.file_path(locs[0].file);
            for step in 0..2 {
                settle();
                if (step + round) % 2 == 0 {
                    let t = Instant::now();
                    let mut at = 0;
                    for loc in &locs {
                        let n = loc.len as usize;
                        store.read(loc, &mut dst[at..at + n]).expect("restore");
                        at += n;
                    }
                    times[phase].read.push(t.elapsed());
                    assert!(dst == data);
                } else {
                    let d = timed_raw_read(
                        &*store.engine,
                        &path,
                        store.direct,
                        LEN as u64,
                        &mut same_file_bufs,
                    )
                    .expect("raw read of the spill file");
                    times[phase].same_file.push(d);
                }
            }
            for loc in &locs {
                store.free(loc);
            }
        }
    }

    let gbps = |d: &Duration| LEN as f64 / d.as_secs_f64() / 1e9;
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let speed = |t: &[Duration]| median(t.iter().map(gbps).collect());
    // Per-round ratio of baseline time to our time, then the median.
    let ratio = |base: &[Duration], ours: &[Duration]| {
        median(
            base.iter()
                .zip(ours)
                .map(|(b, o)| b.as_secs_f64() / o.as_secs_f64())
                .collect(),
        )
    };
    println!(
        "engine {} direct_io {} chunk {} KiB depth {}, {ROUNDS} rounds, medians: raw write {:.2} GB/s, raw read {:.2} GB/s",
        store.engine_name(),
        store.direct_io(),
        CHUNK >> 10,
        QUEUE_DEPTH,
        speed(&times[0].write),
        speed(&times[0].read),
    );
    for (i, (label, _)) in shapes.iter().enumerate() {
        let t = &times[1 + i];
        println!(
            "  {label}: spill {:.2} GB/s = {:.2} x raw write | restore {:.2} GB/s = {:.2} x raw read, = {:.2} x raw read of the same file ({:.2} GB/s)",
            speed(&t.write),
            ratio(&times[0].write, &t.write),
            speed(&t.read),
            ratio(&times[0].read, &t.read),
            ratio(&t.same_file, &t.read),
            speed(&t.same_file),
        );
    }
}

/// A page-aligned heap buffer, so the in-place read path is taken too.
fn aligned(len: usize) -> (Vec<u8>, usize) {
    let v = vec![0u8; len + 4096];
    let off = v.as_ptr().align_offset(4096);
    (v, off)
}

#[test]
fn read_many_streams_objects_of_several_files_and_reports_each() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), u64::MAX, SpillOptions::default());
    let first = mixed_objects(40);
    let second = [
        pattern(7, 3 * CHUNK + 1),
        pattern(8, 10),
        pattern(9, 2 * CHUNK),
    ];
    let refs1: Vec<&[u8]> = first.iter().map(|o| o.as_slice()).collect();
    let refs2: Vec<&[u8]> = second.iter().map(|o| o.as_slice()).collect();
    let mut locs = store.write_batch(&refs1).expect("write 1");
    locs.extend(store.write_batch(&refs2).expect("write 2"));
    let objs: Vec<&Vec<u8>> = first.iter().chain(second.iter()).collect();
    // Ask in an order unlike the files', with some destinations aligned.
    let order: Vec<usize> = (0..objs.len()).rev().collect();
    let mut bufs: Vec<(Vec<u8>, usize)> = order.iter().map(|&i| aligned(objs[i].len())).collect();
    let mut reqs: Vec<(SpillLoc, &mut [u8])> = order
        .iter()
        .zip(bufs.iter_mut())
        .map(|(&i, (v, off))| (locs[i], &mut v[*off..*off + objs[i].len()]))
        .collect();
    let results = store.read_many(&mut reqs);
    assert_eq!(results.len(), order.len());
    for r in &results {
        assert!(r.is_ok(), "{r:?}");
    }
    for (&i, (v, off)) in order.iter().zip(&bufs) {
        assert_eq!(
            &v[*off..*off + objs[i].len()],
            objs[i].as_slice(),
            "object {i}"
        );
    }
    // A freed location fails alone; its neighbour still comes back.
    store.free(&locs[1]);
    let mut freed = vec![0u8; objs[1].len()];
    let mut next = vec![0u8; objs[2].len()];
    let mut reqs: Vec<(SpillLoc, &mut [u8])> = vec![(locs[1], &mut freed), (locs[2], &mut next)];
    let results = store.read_many(&mut reqs);
    assert!(
        matches!(results[0], Err(SpillError::NotLive { .. })),
        "{:?}",
        results[0]
    );
    assert!(results[1].is_ok());
    assert_eq!(&next, objs[2]);
}
