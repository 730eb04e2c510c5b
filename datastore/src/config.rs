//! Data worker configuration, in two steps.
//!
//! 1. [`WorkerSettings`] is what a person writes: a serde struct (every field
//!    optional, each default documented on the field) that a config file or
//!    the CLI's flags fill in. It may hold nonsense.
//! 2. [`WorkerSettings::validate`] (or `WorkerConfig::try_from`) turns it into
//!    the runtime [`WorkerConfig`] / [`StoreConfig`] the worker runs with, or
//!    a [`ConfigError`] naming the bad field. The rules live here and only
//!    here: `0 < low_watermark < high_watermark <= 1`, a non-zero arena, a
//!    socket path, a cluster secret for any transfer address (a transfer
//!    port never serves unauthenticated peers). [`crate::Store::new`] checks the same rules again
//!    ([`StoreConfig::validate`]), so a config built by hand cannot skip them.

use crate::error::ConfigError;
use crate::spill::SpillConfig;
use serde::{Deserialize, Deserializer};
use std::net::SocketAddrV4;
use std::path::PathBuf;

/// Default [`WorkerSettings::high_watermark`]: background spilling starts
/// once objects hold more than 90 % of the arena.
pub const DEFAULT_HIGH_WATERMARK: f64 = 0.9;
/// Default [`WorkerSettings::low_watermark`]: background spilling brings
/// usage back down to 80 % of the arena.
pub const DEFAULT_LOW_WATERMARK: f64 = 0.8;

/// What configures a data worker, as written in a file or given as flags
/// (`yr component data-worker --flag` is the field with dashes). Missing
/// fields take the defaults documented on each field.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerSettings {
    /// Unix socket path clients connect to. Required: no default.
    pub socket: PathBuf,
    /// Shared-memory arena size in bytes; a number or a string such as
    /// `"4GiB"`. Default: a third of the machine's memory.
    #[serde(deserialize_with = "opt_size")]
    pub shm_size: Option<u64>,
    /// Folder for spill files (created if missing). Default: none, which
    /// disables spilling (a full arena then refuses creates).
    pub spill_dir: Option<PathBuf>,
    /// Most disk space spill files may use; a number or a string such as
    /// `"100GiB"`. Default: unbounded.
    #[serde(deserialize_with = "opt_size")]
    pub spill_limit: Option<u64>,
    /// Allocate and map every arena page at start (slower start, no page
    /// faults later). Default: false.
    pub prefault: bool,
    /// Fraction of the arena above which background spilling starts.
    /// Default: [`DEFAULT_HIGH_WATERMARK`] (0.9).
    pub high_watermark: f64,
    /// Fraction of the arena background spilling brings usage down to.
    /// Default: [`DEFAULT_LOW_WATERMARK`] (0.8).
    pub low_watermark: f64,
    /// Address other nodes' data workers pull objects from (IPv4:port; port
    /// 0 picks a free one). Default: none, objects stay on this node.
    pub transfer_address: Option<SocketAddrV4>,
    /// File holding the cluster secret (hex, mode 0600, owned by this user)
    /// that peers prove they hold before the transfer port serves them, and
    /// that this worker proves when it pulls. Required with
    /// `transfer_address`. Default: none.
    pub cluster_secret: Option<PathBuf>,
    /// Encrypt and authenticate the bytes of every transfer this worker
    /// takes part in (AES-256-GCM over per-connection keys), not only the
    /// handshake. Default: false (transfers at wire speed, in the clear).
    pub encrypt_transfers: bool,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            socket: PathBuf::new(),
            shm_size: None,
            spill_dir: None,
            spill_limit: None,
            prefault: false,
            high_watermark: DEFAULT_HIGH_WATERMARK,
            low_watermark: DEFAULT_LOW_WATERMARK,
            transfer_address: None,
            cluster_secret: None,
            encrypt_transfers: false,
        }
    }
}

/// Store settings, validated ([`StoreConfig::validate`] holds the rules).
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Arena size in bytes.
    pub capacity: u64,
    /// Allocate and map every arena page at start.
    pub prefault: bool,
    /// Fraction of the arena above which background spilling starts.
    pub high_watermark: f64,
    /// Fraction of the arena background spilling brings usage down to.
    pub low_watermark: f64,
    /// Where and how much to spill; `None` disables spilling.
    pub spill: Option<SpillConfig>,
}

/// What `yr component data-worker` runs with (validated).
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Unix socket path clients connect to.
    pub socket: PathBuf,
    /// The store.
    pub store: StoreConfig,
    /// Where other nodes' data workers pull objects from (port 0 picks a
    /// free port); `None` keeps this worker's objects on this node.
    pub transfer: Option<SocketAddrV4>,
    /// The cluster secret's file (set whenever `transfer` is).
    pub cluster_secret: Option<PathBuf>,
    /// Seal every peer connection (see [`crate::peer_seal`]).
    pub encrypt_transfers: bool,
}

/// `0 < low < high <= 1`, naming the watermark that breaks it (NaN breaks
/// every comparison, so it is refused too).
fn check_watermarks(low: f64, high: f64) -> Result<(), ConfigError> {
    let fraction = |v: f64| v > 0.0 && v <= 1.0;
    if !fraction(high) {
        return Err(ConfigError::OutOfRange {
            field: "high_watermark",
            value: high,
        });
    }
    if !fraction(low) {
        return Err(ConfigError::OutOfRange {
            field: "low_watermark",
            value: low,
        });
    }
    if low >= high {
        return Err(ConfigError::WatermarkOrder { low, high });
    }
    Ok(())
}

impl StoreConfig {
    /// Checks the rules a store relies on: watermarks `0 < low < high <= 1`
    /// and a non-empty arena.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_watermarks(self.low_watermark, self.high_watermark)?;
        if self.capacity == 0 {
            return Err(ConfigError::ZeroSize { field: "shm_size" });
        }
        Ok(())
    }
}

impl WorkerSettings {
    /// The runtime config these settings describe, with the arena defaulting
    /// to a third of this machine's memory.
    pub fn validate(self) -> Result<WorkerConfig, ConfigError> {
        self.validate_for(crate::total_memory())
    }

    /// As [`WorkerSettings::validate`] on a machine with `machine_memory`
    /// bytes (a pure function of its inputs, for tests).
    pub fn validate_for(self, machine_memory: u64) -> Result<WorkerConfig, ConfigError> {
        if self.socket.as_os_str().is_empty() {
            return Err(ConfigError::Missing { field: "socket" });
        }
        let capacity = match self.shm_size {
            Some(0) => return Err(ConfigError::ZeroSize { field: "shm_size" }),
            Some(s) => s,
            // The default needs the machine's size; without it, ask for one.
            None if machine_memory / 3 == 0 => {
                return Err(ConfigError::Missing { field: "shm_size" })
            }
            None => machine_memory / 3,
        };
        let store = StoreConfig {
            capacity,
            prefault: self.prefault,
            high_watermark: self.high_watermark,
            low_watermark: self.low_watermark,
            spill: self.spill_dir.map(|dir| SpillConfig {
                dir,
                limit: self.spill_limit.unwrap_or(u64::MAX),
            }),
        };
        store.validate()?;
        if self.transfer_address.is_some() && self.cluster_secret.is_none() {
            return Err(ConfigError::SecretNeeded);
        }
        Ok(WorkerConfig {
            socket: self.socket,
            store,
            transfer: self.transfer_address,
            cluster_secret: self.cluster_secret,
            encrypt_transfers: self.encrypt_transfers,
        })
    }
}

impl TryFrom<WorkerSettings> for WorkerConfig {
    type Error = ConfigError;

    fn try_from(settings: WorkerSettings) -> Result<Self, ConfigError> {
        settings.validate()
    }
}

/// A byte size as a number or as a string [`crate::parse_size`] reads.
struct Size(u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Size, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a byte count or a size such as \"512MiB\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Size, E> {
                Ok(Size(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Size, E> {
                u64::try_from(v)
                    .map(Size)
                    .map_err(|_| E::custom(format!("a size cannot be negative ({v})")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Size, E> {
                crate::parse_size(v).map(Size).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

fn opt_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(Option::<Size>::deserialize(d)?.map(|s| s.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GIB: u64 = 1 << 30;

    fn settings() -> WorkerSettings {
        WorkerSettings {
            socket: "/tmp/dw.sock".into(),
            ..WorkerSettings::default()
        }
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let d = WorkerSettings::default();
        assert_eq!(d.high_watermark, 0.9);
        assert_eq!(d.low_watermark, 0.8);
        assert_eq!(d.shm_size, None);
        assert_eq!(d.spill_dir, None);
        assert!(!d.prefault);
        let c = settings()
            .validate_for(12 * GIB)
            .expect("defaults validate");
        assert_eq!(c.store.capacity, 4 * GIB, "a third of the machine");
        assert!(c.store.spill.is_none(), "no spill folder, no spilling");
        assert_eq!(c.transfer, None);
    }

    #[test]
    fn a_file_fills_in_what_it_names() {
        let s: WorkerSettings = serde_json::from_str(
            r#"{"socket": "/run/dw.sock", "shm_size": "2GiB", "spill_dir": "/var/spill",
                "spill_limit": 1048576, "low_watermark": 0.5, "transfer_address": "10.0.0.1:7000",
                "cluster_secret": "/run/secret"}"#,
        )
        .expect("parses");
        assert_eq!(s.shm_size, Some(2 * GIB));
        assert_eq!(s.spill_limit, Some(1 << 20));
        assert_eq!(s.high_watermark, DEFAULT_HIGH_WATERMARK);
        let c = WorkerConfig::try_from(s).expect("validates");
        assert_eq!(c.socket, PathBuf::from("/run/dw.sock"));
        assert_eq!(c.store.capacity, 2 * GIB);
        assert_eq!(c.store.low_watermark, 0.5);
        let spill = c.store.spill.expect("spill on");
        assert_eq!(spill.dir, PathBuf::from("/var/spill"));
        assert_eq!(spill.limit, 1 << 20);
        assert_eq!(c.transfer, Some("10.0.0.1:7000".parse().expect("addr")));
        assert_eq!(c.cluster_secret, Some(PathBuf::from("/run/secret")));
    }

    #[test]
    fn bad_files_are_refused_by_serde() {
        for bad in [
            r#"{"socket": "/a", "shm_sise": 5}"#,
            r#"{"socket": "/a", "shm_size": "lots"}"#,
            r#"{"socket": "/a", "shm_size": -1}"#,
            r#"{"socket": "/a", "high_watermark": "high"}"#,
        ] {
            assert!(
                serde_json::from_str::<WorkerSettings>(bad).is_err(),
                "{bad} accepted"
            );
        }
    }

    #[test]
    fn each_bad_setting_is_named() {
        type Case = (fn(&mut WorkerSettings), &'static str);
        let cases: &[Case] = &[
            (|s| s.socket = PathBuf::new(), "socket"),
            (|s| s.shm_size = Some(0), "shm_size"),
            (|s| s.high_watermark = 1.5, "high_watermark"),
            (|s| s.high_watermark = 0.0, "high_watermark"),
            (|s| s.high_watermark = f64::NAN, "high_watermark"),
            (|s| s.low_watermark = 0.0, "low_watermark"),
            (|s| s.low_watermark = -0.1, "low_watermark"),
            (|s| s.low_watermark = f64::NAN, "low_watermark"),
            (|s| s.low_watermark = 0.9, "low_watermark"),
            (
                |s| s.transfer_address = Some("127.0.0.1:0".parse().expect("addr")),
                "cluster_secret",
            ),
            (
                |s| {
                    s.low_watermark = 0.95;
                    s.high_watermark = 0.9
                },
                "low_watermark",
            ),
        ];
        for (i, (edit, field)) in cases.iter().enumerate() {
            let mut s = settings();
            edit(&mut s);
            let e = s.validate_for(12 * GIB).expect_err("refused");
            assert_eq!(e.field(), *field, "case {i}: {e}");
            assert!(e.to_string().contains(field), "case {i}: {e}");
        }
        let e = settings().validate_for(0).expect_err("no default arena");
        assert_eq!(e, ConfigError::Missing { field: "shm_size" });
    }

    #[test]
    fn the_store_checks_the_same_rules() {
        let mut c = settings().validate_for(12 * GIB).expect("ok").store;
        assert_eq!(c.validate(), Ok(()));
        c.low_watermark = c.high_watermark;
        assert_eq!(c.validate().map_err(|e| e.field()), Err("low_watermark"));
    }

    proptest! {
        /// Validation accepts exactly the watermarks with 0 < low < high <= 1.
        #[test]
        fn watermarks_validate_iff_ordered(low in -0.5f64..1.5, high in -0.5f64..1.5) {
            let mut s = settings();
            s.low_watermark = low;
            s.high_watermark = high;
            let ok = 0.0 < low && low < high && high <= 1.0;
            let r = s.validate_for(GIB);
            prop_assert_eq!(r.is_ok(), ok, "low {} high {}: {:?}", low, high, r.err());
            if let Ok(c) = r {
                prop_assert_eq!(c.store.low_watermark, low);
                prop_assert_eq!(c.store.high_watermark, high);
            }
        }
    }
}
