//! `yr demo`: the quick-start demonstration. Starts a data worker in a
//! temporary folder, then a consumer process that blocks on an object that
//! does not exist yet and a producer process that stores it; the consumer
//! reads it in place from shared memory. Prints what each side measured and
//! checks both saw the same bytes.

use crate::util::{size_arg, WorkerProcess};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::process::{Command, Stdio};
use yr_datastore::ObjectId;

#[derive(Args)]
pub struct DemoArgs {
    /// Object size to pass between the processes.
    #[arg(long, value_parser = size_arg, default_value = "256MiB")]
    size: u64,
}

pub fn run(a: DemoArgs) -> Result<()> {
    let dir = tempfile::Builder::new().prefix("yr-demo-").tempdir()?;
    let socket = dir.path().join("data-worker.sock");
    let spill = dir.path().join("spill");
    let shm = (a.size * 2).max(1 << 30);
    println!(
        "== yr demo: passing a {} MiB object between two processes",
        a.size >> 20
    );
    println!(
        "   data worker: socket {}, {} MiB shared memory (prefaulted)",
        socket.display(),
        shm >> 20
    );
    let mut worker = WorkerProcess::start(&socket, shm, &spill, &["--prefault"])?;
    println!("   data worker running (pid {})", worker.pid());

    let exe = std::env::current_exe()?;
    let id = ObjectId::random(0).to_hex();
    let mut consumer = Command::new(&exe)
        .args(["store", "consume", "--sync-stdin", "--socket"])
        .arg(&socket)
        .args(["--id", &id])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start the consumer")?;
    let producer = Command::new(&exe)
        .args(["store", "produce", "--socket"])
        .arg(&socket)
        .args(["--id", &id, "--size", &a.size.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start the producer")?;
    let p = producer.wait_with_output()?;
    // The producer is gone: let the consumer time its gets now.
    if let Some(mut stdin) = consumer.stdin.take() {
        use std::io::Write;
        let _ = stdin.write_all(b"go\n");
    }
    let c = consumer.wait_with_output()?;
    if !p.status.success() || !c.status.success() {
        bail!("producer ({}) or consumer ({}) failed", p.status, c.status);
    }
    let p: serde_json::Value = serde_json::from_slice(&p.stdout).context("producer output")?;
    let c: serde_json::Value = serde_json::from_slice(&c.stdout).context("consumer output")?;
    println!(
        "   producer (pid {}): put {} MiB in {:.1} ms = {:.2} GB/s (one copy into shared memory)",
        p["pid"],
        a.size >> 20,
        p["put_ms"].as_f64().unwrap_or(0.0),
        p["put_gbps"].as_f64().unwrap_or(0.0)
    );
    println!(
        "   consumer (pid {}): blocked {:.1} ms until sealed; then a get + release takes {:.1} us (median); zero-copy view: {}; read it in place at {:.2} GB/s",
        c["pid"],
        c["waited_ms"].as_f64().unwrap_or(0.0),
        c["get_us"].as_f64().unwrap_or(0.0),
        c["zero_copy"],
        c["checksum_gbps"].as_f64().unwrap_or(0.0)
    );
    if p["crc32c"] != c["crc32c"] {
        bail!(
            "checksums differ: producer {} consumer {}",
            p["crc32c"],
            c["crc32c"]
        );
    }
    println!("   checksums match (crc32c {})", c["crc32c"]);
    worker.stop()?;
    println!(
        "== done: data worker stopped, {} removed",
        dir.path().display()
    );
    Ok(())
}
