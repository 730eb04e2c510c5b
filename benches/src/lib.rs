//! Shared setup for the criterion benchmarks: an in-process data worker on a
//! real Unix socket in a temporary folder (the server threads are the same
//! code `yr component data-worker` runs; only the process boundary differs).

use std::path::PathBuf;
use yr_datastore::spill::SpillConfig;
use yr_datastore::{Client, Shutdown, StoreConfig, Worker, WorkerConfig};

/// A running worker and the folder it lives in.
pub struct BenchWorker {
    /// The worker (stopped on drop).
    pub worker: Worker,
    /// Its socket.
    pub socket: PathBuf,
    /// Its spill folder.
    pub spill_dir: PathBuf,
    _dir: tempfile::TempDir,
}

impl BenchWorker {
    /// Starts a worker with `capacity` bytes of prefaulted arena.
    pub fn start(capacity: u64) -> BenchWorker {
        let dir = tempfile::Builder::new()
            .prefix("yr-bench-")
            .tempdir()
            .expect("temp dir");
        let socket = dir.path().join("dw.sock");
        let spill_dir = dir.path().join("spill");
        let worker = yr_datastore::server::start(
            WorkerConfig {
                socket: socket.clone(),
                store: StoreConfig {
                    capacity,
                    prefault: true,
                    high_watermark: 0.9,
                    low_watermark: 0.8,
                    spill: Some(SpillConfig {
                        dir: spill_dir.clone(),
                        limit: u64::MAX,
                    }),
                },
                transfer: None,
                cluster_secret: None,
                encrypt_transfers: false,
            },
            Shutdown::new().expect("eventfd"),
        )
        .expect("start worker");
        BenchWorker {
            worker,
            socket,
            spill_dir,
            _dir: dir,
        }
    }

    /// A client connection.
    pub fn client(&self) -> Client {
        Client::connect(&self.socket).expect("connect")
    }
}
