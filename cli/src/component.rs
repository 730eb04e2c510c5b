//! `yr component NAME`: run one component in the foreground until SIGTERM
//! or SIGINT.

use crate::util::size_arg;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use std::io::Write;
use std::path::PathBuf;
use yr_datastore::spill::SpillConfig;
use yr_datastore::{Shutdown, StoreConfig, WorkerConfig};

#[derive(Subcommand)]
pub enum ComponentCmd {
    /// The data worker: this node's shared-memory object store.
    DataWorker(DataWorkerArgs),
}

#[derive(Args)]
pub struct DataWorkerArgs {
    /// Unix socket clients connect to.
    #[arg(long)]
    socket: PathBuf,
    /// Shared-memory arena size (default: a third of the machine's memory).
    #[arg(long, value_parser = size_arg)]
    shm_size: Option<u64>,
    /// Folder for spill files (created if missing).
    #[arg(long)]
    spill_dir: PathBuf,
    /// Most disk space spill files may use (default: unbounded).
    #[arg(long, value_parser = size_arg)]
    spill_limit: Option<u64>,
    /// Allocate and map the whole arena at start.
    #[arg(long)]
    prefault: bool,
    /// Start spilling above this fraction of the arena.
    #[arg(long, default_value_t = 0.9)]
    high_watermark: f64,
    /// Spill down to this fraction of the arena.
    #[arg(long, default_value_t = 0.8)]
    low_watermark: f64,
}

pub fn run(cmd: ComponentCmd) -> Result<()> {
    match cmd {
        ComponentCmd::DataWorker(a) => data_worker(a),
    }
}

fn data_worker(a: DataWorkerArgs) -> Result<()> {
    if !(0.0 < a.low_watermark && a.low_watermark < a.high_watermark && a.high_watermark <= 1.0) {
        bail!(
            "watermarks must satisfy 0 < low < high <= 1 (got low {}, high {})",
            a.low_watermark,
            a.high_watermark
        );
    }
    let capacity = match a.shm_size {
        Some(0) => bail!("--shm-size must be greater than zero"),
        Some(s) => s,
        None => yr_datastore::total_memory() / 3,
    };
    let config = WorkerConfig {
        socket: a.socket.clone(),
        store: StoreConfig {
            capacity,
            prefault: a.prefault,
            high_watermark: a.high_watermark,
            low_watermark: a.low_watermark,
            spill: Some(SpillConfig {
                dir: a.spill_dir.clone(),
                limit: a.spill_limit.unwrap_or(u64::MAX),
            }),
        },
    };
    let shutdown = Shutdown::new()?;
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .context("cannot install signal handlers")?;
    {
        let shutdown = shutdown.clone();
        std::thread::spawn(move || {
            if signals.forever().next().is_some() {
                shutdown.trigger();
            }
        });
    }
    let socket = a.socket.clone();
    yr_datastore::server::run(config, shutdown, |_| {
        // Parents (yr start, yr bench, tests) wait for this line instead of
        // polling the socket.
        let mut out = std::io::stdout();
        writeln!(out, "ready socket={}", socket.display())?;
        out.flush()
    })
    .with_context(|| format!("data worker on {}", a.socket.display()))?;
    Ok(())
}
