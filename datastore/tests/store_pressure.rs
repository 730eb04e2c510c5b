//! Memory pressure through the store's public API: what the victim choice
//! (`table::choose_victims`) decides is what the spill path does.

use std::time::Duration;
use yr_datastore::spill::SpillConfig;
use yr_datastore::{ObjectId, Store, StoreConfig};

const KIB: u64 = 1 << 10;

fn store(spill: Option<&std::path::Path>) -> Store {
    Store::new(StoreConfig {
        capacity: 1 << 20,
        prefault: false,
        high_watermark: 0.9,
        low_watermark: 0.8,
        spill: spill.map(|dir| SpillConfig {
            dir: dir.to_path_buf(),
            limit: u64::MAX,
        }),
    })
    .expect("store")
}

fn put(store: &Store, client: u32, id: ObjectId, size: u64, secondary: bool) {
    if secondary {
        store
            .create_secondary(client, id, size, 0)
            .expect("create secondary");
    } else {
        store.create(client, id, size, 0).expect("create");
    }
    store.seal(client, id).expect("seal");
}

#[test]
fn pressure_drops_secondaries_spills_primaries_and_spares_pins() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(Some(dir.path()));
    let c = s.connect();
    let prim: Vec<ObjectId> = (0..4).map(|i| ObjectId::new(1, i)).collect();
    let sec: Vec<ObjectId> = (0..4).map(|i| ObjectId::new(2, i)).collect();
    for i in 0..4 {
        put(&s, c, prim[i], 100 * KIB, false);
        put(&s, c, sec[i], 100 * KIB, true);
    }
    // Pin one primary: it must stay in memory.
    let pinned = s.get(c, &[prim[0]], Duration::ZERO);
    assert!(pinned[0].is_ok());
    s.spill_until(0).expect("spill");
    s.check_invariants().expect("invariants");
    let st = s.stats();
    assert_eq!(st.secondary, 0, "secondaries are dropped, not spilled");
    for id in &sec {
        assert!(!s.contains(id), "secondary {id} evicted");
    }
    assert_eq!(st.spilled, 3, "every unpinned primary went to disk");
    assert!(
        s.peek(&prim[0]).is_some(),
        "the pinned one stayed in memory"
    );
    for id in &prim[1..] {
        assert!(s.contains(id) && s.peek(id).is_none(), "{id} on disk only");
    }
    s.release(c, prim[0]);
}

#[test]
fn without_spilling_a_create_evicts_secondaries_oldest_first() {
    let s = store(None);
    let c = s.connect();
    let sec: Vec<ObjectId> = (0..9).map(|i| ObjectId::new(2, i)).collect();
    for id in &sec {
        put(&s, c, *id, 100 * KIB, true);
    }
    // The arena is nearly full of secondaries; a new primary needs room.
    put(&s, c, ObjectId::new(1, 1), 300 * KIB, false);
    s.check_invariants().expect("invariants");
    assert!(!s.contains(&sec[0]), "the least recently used went first");
    assert!(s.contains(&sec[8]), "the most recent one stayed");
    let gone = sec.iter().filter(|id| !s.contains(id)).count();
    assert!(
        (2..=5).contains(&gone),
        "evicted about what was needed, not everything: {gone}"
    );
}
