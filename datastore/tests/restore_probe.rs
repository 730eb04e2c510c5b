//! Diagnostic probe, ignored by default: spill and restore through the real
//! [`Store`] in one process, beside the raw io_uring baseline of the same
//! bytes, printed per round. `yr bench store` is the number users quote; this
//! probe exists to separate the store's restore path from the process and
//! socket around it while the restore gap is investigated.
//!
//! `cargo test --release -p yr-datastore --test restore_probe -- --ignored --nocapture`
//! (`NOPREFAULT=1` to skip pre-faulting the arena).

use std::time::{Duration, Instant};
use yr_datastore::spill::SpillConfig;
use yr_datastore::{ObjectId, Store, StoreConfig};

#[test]
#[ignore]
fn restore_probe() {
    let dir = tempfile::tempdir_in(std::env::temp_dir()).expect("temp dir");
    let store = Store::new(StoreConfig {
        capacity: 2 << 30,
        prefault: std::env::var_os("NOPREFAULT").is_none(),
        high_watermark: 0.9,
        low_watermark: 0.8,
        spill: Some(SpillConfig {
            dir: dir.path().join("spill"),
            limit: u64::MAX,
        }),
    })
    .expect("store");
    let c = store.connect();
    let big = 64usize << 20;
    let gbps = |bytes: usize, d: Duration| bytes as f64 / d.as_secs_f64() / 1e9;
    let data: Vec<u8> = (0..big).map(|i| (i * 7 + 3) as u8).collect();
    let raw_data: Vec<u8> = (0..8 * big).map(|i| (i * 5) as u8).collect();
    for round in 0..3u128 {
        let ids: Vec<ObjectId> = (0..8).map(|i| ObjectId::new(7, round * 100 + i)).collect();
        for id in &ids {
            store.put_inline(c, *id, &data, &[]).expect("put");
        }
        let t = Instant::now();
        store.spill_until(0).expect("spill");
        let sw = gbps(8 * big, t.elapsed());
        let t = Instant::now();
        for id in &ids {
            let r = store.get(c, &[*id], Duration::from_secs(10));
            assert!(r[0].is_ok(), "{:?}", r[0]);
            store.release(c, *id);
        }
        let rs = gbps(8 * big, t.elapsed());
        for r in store.delete(&ids) {
            r.expect("delete");
        }
        let mut raw = yr_datastore::spill::raw_write(dir.path(), &raw_data).expect("raw write");
        let rw = gbps(8 * big, raw.write_time());
        let rr = gbps(
            8 * big,
            yr_datastore::spill::raw_read(&mut raw).expect("raw read"),
        );
        eprintln!("spill {sw:.2} restore {rs:.2} raw write {rw:.2} raw read {rr:.2} GB/s");
    }
}
