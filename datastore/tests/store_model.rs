//! Model-based test of the store: random sequences of create / write /
//! seal / get / release / delete / abort / disconnect / pressure run against
//! the real [`Store`] (real arena, real spill files) and a plain model of
//! what each object should be. After every step: the store's internal
//! invariants hold (no overlap, exact accounting, LRU = eviction candidates),
//! every sealed object still exists with exactly its sealed bytes, and the
//! counters match the model.

use proptest::prelude::*;
use std::collections::HashMap;
use std::time::Duration;
use yr_datastore::protocol::ErrorCode;
use yr_datastore::spill::SpillConfig;
use yr_datastore::store::ClientId;
use yr_datastore::{ObjectId, Store, StoreConfig};

const CLIENTS: usize = 3;
const IDS: u8 = 12;

#[derive(Debug, Clone)]
enum Op {
    Create { client: usize, obj: u8, size: usize },
    Write { obj: u8, at: usize, byte: u8 },
    Seal { client: usize, obj: u8 },
    Get { client: usize, obj: u8 },
    Release { client: usize, obj: u8 },
    Delete { obj: u8 },
    Abort { client: usize, obj: u8 },
    Disconnect { client: usize },
    Pressure,
}

fn op() -> impl Strategy<Value = Op> {
    let c = 0..CLIENTS;
    let o = 0..IDS;
    prop_oneof![
        3 => (c.clone(), o.clone(), prop_oneof![1usize..512, 512usize..48_000])
            .prop_map(|(client, obj, size)| Op::Create { client, obj, size }),
        2 => (o.clone(), any::<usize>(), any::<u8>()).prop_map(|(obj, at, byte)| Op::Write { obj, at, byte }),
        3 => (c.clone(), o.clone()).prop_map(|(client, obj)| Op::Seal { client, obj }),
        3 => (c.clone(), o.clone()).prop_map(|(client, obj)| Op::Get { client, obj }),
        2 => (c.clone(), o.clone()).prop_map(|(client, obj)| Op::Release { client, obj }),
        1 => o.clone().prop_map(|obj| Op::Delete { obj }),
        1 => (c.clone(), o.clone()).prop_map(|(client, obj)| Op::Abort { client, obj }),
        1 => c.prop_map(|client| Op::Disconnect { client }),
        1 => Just(Op::Pressure),
    ]
}

#[derive(Debug, Clone)]
struct Obj {
    bytes: Vec<u8>,
    sealed: bool,
    owner: usize,
    /// Pins per client slot.
    pins: [u32; CLIENTS],
    deleted: bool,
}

fn oid(obj: u8) -> ObjectId {
    ObjectId::new(1, obj as u128)
}

fn run(ops: Vec<Op>) -> Result<yr_datastore::StoreStats, TestCaseError> {
    let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
    let store = Store::new(StoreConfig {
        capacity: 256 << 10,
        prefault: false,
        high_watermark: 0.9,
        low_watermark: 0.8,
        spill: Some(SpillConfig {
            dir: dir.path().to_path_buf(),
            limit: u64::MAX,
        }),
    })
    .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let mut clients: Vec<ClientId> = (0..CLIENTS).map(|_| store.connect()).collect();
    let mut model: HashMap<u8, Obj> = HashMap::new();

    for op in ops {
        match op {
            Op::Create { client, obj, size } => {
                let r = store.create(clients[client], oid(obj), size as u64, 0);
                match (model.get(&obj), r) {
                    (Some(_), Ok(_)) => prop_assert!(false, "create of an existing id succeeded"),
                    (Some(_), Err(e)) => prop_assert_eq!(e.code, ErrorCode::AlreadyExists),
                    (None, Ok(_)) => {
                        model.insert(
                            obj,
                            Obj {
                                // A fresh block may hold old bytes; the
                                // creator writes what it wants, so the model
                                // starts from what the creator will write.
                                bytes: vec![0; size],
                                sealed: false,
                                owner: client,
                                pins: [0; CLIENTS],
                                deleted: false,
                            },
                        );
                        prop_assert!(store.write_unsealed(&oid(obj), 0, &vec![0; size]));
                    }
                    (None, Err(e)) => prop_assert_eq!(e.code, ErrorCode::OutOfMemory, "{}", e),
                }
            }
            Op::Write { obj, at, byte } => {
                if let Some(o) = model.get_mut(&obj) {
                    if !o.sealed && !o.bytes.is_empty() {
                        let at = at % o.bytes.len();
                        o.bytes[at] = byte;
                        prop_assert!(store.write_unsealed(&oid(obj), at as u64, &[byte]));
                    }
                }
            }
            Op::Seal { client, obj } => {
                let r = store.seal(clients[client], oid(obj));
                match model.get_mut(&obj) {
                    Some(o) if !o.sealed && o.owner == client => {
                        prop_assert!(r.is_ok(), "{:?}", r);
                        o.sealed = true;
                    }
                    _ => prop_assert!(r.is_err()),
                }
            }
            Op::Get { client, obj } => {
                let mut r = store.get(clients[client], &[oid(obj)], Duration::ZERO);
                let r = r.pop().ok_or_else(|| TestCaseError::fail("empty get"))?;
                match model.get_mut(&obj) {
                    Some(o) if o.sealed && !o.deleted => match r {
                        Ok(v) => {
                            prop_assert_eq!(v.data_size as usize, o.bytes.len());
                            o.pins[client] += 1;
                            let seen = store.peek(&oid(obj)).ok_or_else(|| {
                                TestCaseError::fail("pinned object not in memory")
                            })?;
                            prop_assert_eq!(&seen, &o.bytes, "sealed bytes changed");
                        }
                        // A spilled object cannot come back while pins and
                        // unsealed objects fill the arena: that must be a
                        // clear refusal, and the object must still exist.
                        Err(e) if e.code == ErrorCode::OutOfMemory => {
                            prop_assert!(store.contains(&oid(obj)), "refused restore lost {}", obj);
                        }
                        Err(e) => {
                            return Err(TestCaseError::fail(format!("sealed object lost: {e}")))
                        }
                    },
                    _ => prop_assert!(r.is_err()),
                }
            }
            Op::Release { client, obj } => {
                store.release(clients[client], oid(obj));
                if let Some(o) = model.get_mut(&obj) {
                    if o.pins[client] > 0 {
                        o.pins[client] -= 1;
                    }
                }
            }
            Op::Delete { obj } => {
                let r = store
                    .delete(&[oid(obj)])
                    .pop()
                    .ok_or_else(|| TestCaseError::fail("empty delete"))?;
                match model.get_mut(&obj) {
                    Some(o) if o.sealed && !o.deleted => {
                        prop_assert!(r.is_ok(), "{:?}", r);
                        o.deleted = true;
                    }
                    _ => prop_assert!(r.is_err()),
                }
            }
            Op::Abort { client, obj } => {
                let r = store.abort(clients[client], oid(obj));
                match model.get(&obj) {
                    Some(o) if !o.sealed && o.owner == client => {
                        prop_assert!(r.is_ok(), "{:?}", r);
                        model.remove(&obj);
                    }
                    _ => prop_assert!(r.is_err()),
                }
            }
            Op::Disconnect { client } => {
                store.disconnect(clients[client]);
                clients[client] = store.connect();
                model.retain(|_, o| o.sealed || o.owner != client);
                for o in model.values_mut() {
                    o.pins[client] = 0;
                }
            }
            Op::Pressure => {
                store
                    .spill_until(0)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
        }
        // Deleted objects leave once unpinned.
        model.retain(|_, o| !(o.deleted && o.pins.iter().all(|&p| p == 0)));

        store.check_invariants().map_err(TestCaseError::fail)?;
        let st = store.stats();
        let unsealed = model.values().filter(|o| !o.sealed).count() as u64;
        let sealed = model.values().filter(|o| o.sealed).count() as u64;
        let pinned = model
            .values()
            .filter(|o| o.pins.iter().any(|&p| p > 0))
            .count() as u64;
        prop_assert_eq!(st.unsealed, unsealed, "unsealed count");
        prop_assert_eq!(st.sealed + st.spilled, sealed, "sealed count");
        prop_assert_eq!(st.pinned, pinned, "pinned count");
        for (k, o) in &model {
            if o.sealed && !o.deleted {
                prop_assert!(store.contains(&oid(*k)), "sealed object {} lost", k);
                if let Some(seen) = store.peek(&oid(*k)) {
                    prop_assert_eq!(&seen, &o.bytes, "sealed bytes changed");
                }
            }
        }
    }

    // Finally every sealed object comes back intact, from disk if needed
    // (once the clients are gone, so their pins do not crowd the arena).
    for c in clients {
        store.disconnect(c);
    }
    let reader = store.connect();
    for (k, o) in &model {
        if o.sealed && !o.deleted {
            let r = store.get(reader, &[oid(*k)], Duration::from_secs(5)).pop();
            let v = r
                .ok_or_else(|| TestCaseError::fail("empty get"))?
                .map_err(|e| TestCaseError::fail(format!("object {k} lost: {e}")))?;
            prop_assert_eq!(v.data_size as usize, o.bytes.len());
            let seen = store
                .peek(&oid(*k))
                .ok_or_else(|| TestCaseError::fail("not in memory after get"))?;
            prop_assert_eq!(&seen, &o.bytes);
            store.release(reader, oid(*k));
        }
    }
    Ok(store.stats())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn store_matches_model(ops in proptest::collection::vec(op(), 1..80)) {
        run(ops)?;
    }
}

/// A fixed sequence that must go through spill and restore, so the random
/// runs above are known to reach those paths at all.
#[test]
fn pressure_sequence_spills_and_restores() {
    let mut ops = Vec::new();
    for obj in 0..IDS {
        ops.push(Op::Create {
            client: 0,
            obj,
            size: 40_000,
        });
        ops.push(Op::Write {
            obj,
            at: obj as usize * 7,
            byte: obj,
        });
        ops.push(Op::Seal { client: 0, obj });
    }
    ops.push(Op::Pressure);
    ops.push(Op::Get { client: 1, obj: 0 });
    ops.push(Op::Disconnect { client: 1 });
    let st = run(ops).expect("model holds");
    assert!(st.spill_ops > 0, "spilled: {st:?}");
    assert!(st.restore_ops > 0, "restored: {st:?}");
}
