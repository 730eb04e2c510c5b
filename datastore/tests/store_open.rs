//! Opening a store fails with typed errors: the caller can tell a busy spill
//! folder from a bad config from a failed arena without reading the message.

use yr_datastore::spill::{SpillConfig, SpillError};
use yr_datastore::{ConfigError, Store, StoreConfig, StoreError};

fn config(dir: &std::path::Path) -> StoreConfig {
    StoreConfig {
        capacity: 1 << 20,
        prefault: false,
        high_watermark: 0.9,
        low_watermark: 0.8,
        spill: Some(SpillConfig {
            dir: dir.to_path_buf(),
            limit: u64::MAX,
        }),
    }
}

#[test]
fn a_busy_spill_folder_is_a_typed_spill_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _first = Store::new(config(dir.path())).expect("first store");
    let e = Store::new(config(dir.path()))
        .err()
        .expect("second store refused");
    match &e {
        StoreError::Spill(SpillError::DirInUse { path }) => assert_eq!(path, dir.path()),
        other => panic!("expected DirInUse, got {other:?}"),
    }
    // The message is still the spill store's own.
    assert!(e.to_string().contains("in use"), "{e}");
}

#[test]
fn a_bad_config_is_refused_before_anything_is_made() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spill = dir.path().join("never-created");
    let mut c = config(&spill);
    c.low_watermark = 0.95;
    let e = Store::new(c).err().expect("refused");
    assert!(
        matches!(e, StoreError::Config(ConfigError::WatermarkOrder { .. })),
        "{e:?}"
    );
    assert!(
        !spill.exists(),
        "validation runs before the spill folder is made"
    );
    let mut c = config(&spill);
    c.capacity = 0;
    let e = Store::new(c).err().expect("refused");
    assert!(
        matches!(
            e,
            StoreError::Config(ConfigError::ZeroSize { field: "shm_size" })
        ),
        "{e:?}"
    );
}
