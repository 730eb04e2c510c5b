//! `yr demo`: the quick-start demonstration, on a real local cluster.
//!
//! 1. Starts a master node and a worker node on this host (`yr start --master`, then
//!    `yr start --worker`, each with `--ports auto` and its own session folder): etcd, function
//!    master and scheduler, and per node a data worker, function proxy and function agent, all
//!    separate processes.
//! 2. Runs the `pipeline` example as a driver on the master node: three stages (produce →
//!    transform → reduce) pass 256 MiB arrays as object references; transform runs on the
//!    worker node, so each round pulls the data across and back; every stage reports where it
//!    ran and how fast.
//! 3. Deploys the `hello` example with two instances (the scheduler spreads them over both
//!    nodes) and calls it; deploys `counter`, creates a named instance and calls it in order.
//! 4. Passes a large object between a producer and a consumer process through the master node's
//!    data worker: the consumer blocks until it is sealed, then reads it in place.
//! 5. Runs the README's REST examples (`examples/rest/try.sh`, curl) against the cluster:
//!    register, call sync and async, the Lambda and OpenFaaS aliases, and two errors.
//! 6. Stops both nodes and checks that no process it started is left.
//!
//! Every step prints the `yr` command it runs, so the demo doubles as a tutorial.

use crate::util::{size_arg, Nodes};
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use yr_datastore::ObjectId;
use yr_runtime::session::Session;

#[derive(Args)]
pub struct DemoArgs {
    /// Object size to pass between the processes and the pipeline's stages.
    #[arg(long, value_parser = size_arg, default_value = "256MiB")]
    size: u64,
    /// Pipeline rounds.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
}

fn exe() -> Result<PathBuf> {
    std::env::current_exe().context("cannot find the yr executable")
}

/// Runs `yr ARGS`, echoing the command (with `--session-dir` shortened) and its output.
fn yr(args: &[&str], show: bool) -> Result<String> {
    if show {
        let shown: Vec<&str> = args
            .iter()
            .scan(false, |skip, a| {
                let out = if *skip { None } else { Some(*a) };
                *skip = *a == "--session-dir";
                Some(out)
            })
            .flatten()
            .filter(|a| *a != "--session-dir")
            .collect();
        let quoted: Vec<String> = shown
            .iter()
            .map(|a| {
                if a.contains(' ') {
                    format!("'{a}'")
                } else {
                    a.to_string()
                }
            })
            .collect();
        println!("   $ yr {}", quoted.join(" "));
    }
    let stdout = crate::util::run_self(args)?;
    if show {
        for line in stdout.lines() {
            println!("     {line}");
        }
    }
    Ok(stdout)
}

fn status(dir: &str) -> Result<serde_json::Value> {
    Ok(serde_json::from_str(&yr(
        &["status", "--json", "--session-dir", dir],
        false,
    )?)?)
}

fn session_pids(dir: &Path) -> Result<Vec<u64>> {
    let s = Session::load(dir)?;
    Ok(s.components.iter().map(|c| u64::from(c.pid)).collect())
}

pub fn run(a: DemoArgs) -> Result<()> {
    let tmp = tempfile::Builder::new().prefix("yr-demo-").tempdir()?;
    let master_dir = tmp.path().join("master");
    let worker_dir = tmp.path().join("worker");
    let (m, w) = (
        master_dir.display().to_string(),
        worker_dir.display().to_string(),
    );
    // Room for a stage's input, its output and a pulled copy, per node.
    let shm = ((a.size * 4).max(512 << 20) >> 20).to_string() + "MiB";
    let started = Instant::now();

    println!("== 1. a cluster of two nodes on this host");
    let mut nodes = Nodes(Vec::new());
    yr(
        &[
            "start",
            "--master",
            "--ports",
            "auto",
            "--shm-size",
            &shm,
            "--prefault-shm",
            "--cpu",
            "2000",
            "--session-dir",
            &m,
        ],
        true,
    )?;
    nodes.0.push(m.clone());
    status(&m)?;
    let master_session = Session::load(&master_dir)?;
    let master_address = master_session.master_address;
    // The worker's data worker proves the master's cluster secret to the other nodes.
    let secret = master_session
        .cluster_secret
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    yr(
        &[
            "start",
            "--worker",
            "--master-address",
            &master_address,
            "--cluster-secret",
            &secret,
            "--ports",
            "auto",
            "--shm-size",
            &shm,
            "--prefault-shm",
            "--cpu",
            "2000",
            "--session-dir",
            &w,
        ],
        true,
    )?;
    nodes.0.push(w.clone());

    let bin_dir = exe()?
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| anyhow!("yr has no folder"))?;
    let (hello, counter, pipeline) = (
        bin_dir.join("hello"),
        bin_dir.join("counter"),
        bin_dir.join("pipeline"),
    );
    for p in [&hello, &counter, &pipeline] {
        if !p.exists() {
            bail!(
                "{} is not built (cargo build --release --bins)",
                p.display()
            );
        }
    }
    println!(
        "== 2. a pipeline over both nodes: produce -> transform -> reduce, {} MiB per stage",
        a.size >> 20
    );
    run_pipeline(&pipeline, &m, a.size, a.rounds)?;

    println!("== 3. function services");
    let hello_s = hello.display().to_string();
    yr(
        &[
            "function",
            "deploy",
            "--name",
            "hello",
            "--code",
            &hello_s,
            "--handler",
            "hello",
            "--cpu",
            "1200",
            "--min-instances",
            "2",
            "--max-instances",
            "2",
            "--session-dir",
            &m,
        ],
        true,
    )?;
    // The scheduler brings the pool to its minimum, one instance per node (1200m each does
    // not fit twice in a 2000m node).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = status(&m)?;
        let running: Vec<&serde_json::Value> = st["instances"]
            .as_array()
            .map(|v| {
                v.iter()
                    .filter(|i| i["function"] == "hello" && i["state"] == "RUNNING")
                    .collect()
            })
            .unwrap_or_default();
        if running.len() >= 2 {
            for i in running {
                println!(
                    "     instance {} RUNNING on node {} (pid {})",
                    i["instance_id"].as_str().unwrap_or("?"),
                    i["node_id"].as_str().unwrap_or("?"),
                    i["pid"]
                );
            }
            break;
        }
        if Instant::now() > deadline {
            bail!("hello's two instances did not start within 60 s: {st}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    yr(
        &["invoke", "hello", "--data", "world", "--session-dir", &m],
        true,
    )?;
    println!();
    // From the worker node: its own proxy delivers to its local instance.
    yr(
        &[
            "invoke",
            "hello",
            "--data",
            "from the worker node",
            "--session-dir",
            &w,
        ],
        true,
    )?;
    println!();
    let counter_s = counter.display().to_string();
    yr(
        &[
            "function",
            "deploy",
            "--name",
            "counter",
            "--code",
            &counter_s,
            "--handler",
            "counter",
            "--cpu",
            "100",
            "--session-dir",
            &m,
        ],
        true,
    )?;
    yr(
        &[
            "instance",
            "create",
            "counter",
            "--name",
            "c1",
            "--session-dir",
            &m,
        ],
        true,
    )?;
    for n in ["--data=5", "--data=10", "--data=-3"] {
        yr(
            &[
                "invoke",
                "counter",
                "--instance",
                "c1",
                "--method",
                "add",
                n,
                "--session-dir",
                &w,
            ],
            true,
        )?;
        println!();
    }

    println!(
        "== 4. a {} MiB object between two processes, through the master node's data worker",
        a.size >> 20
    );
    let socket = Session::load(&master_dir)?
        .data_socket
        .to_string_lossy()
        .into_owned();
    pass_object(&socket, a.size)?;

    println!("== 5. the REST gateway, with curl (examples/rest/try.sh, as in the README)");
    run_rest_examples(&m, &hello)?;

    println!("== 6. the cluster");
    yr(&["status", "--session-dir", &m], true)?;
    let mut pids = session_pids(&master_dir)?;
    pids.extend(session_pids(&worker_dir)?);
    let st = status(&m)?;
    if let Some(v) = st["instances"].as_array() {
        pids.extend(
            v.iter()
                .filter_map(|i| i["pid"].as_u64())
                .filter(|p| *p != 0),
        );
    }
    yr(&["stop", "--session-dir", &w], true)?;
    yr(&["stop", "--session-dir", &m], true)?;
    nodes.0.clear();
    let left: Vec<u64> = pids
        .into_iter()
        .filter(|p| u32::try_from(*p).is_ok_and(crate::cluster::running))
        .collect();
    if !left.is_empty() {
        bail!("processes still running after yr stop: {left:?}");
    }
    println!(
        "== done in {:.1} s: both nodes stopped, no process left",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Runs the README's curl examples against the master node's REST services.
fn run_rest_examples(session: &str, hello: &Path) -> Result<()> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/rest/try.sh");
    if !script.is_file() {
        println!("   (skipped: {} is not here)", script.display());
        return Ok(());
    }
    let out = Command::new("bash")
        .arg(&script)
        .env("YR_SESSION", session)
        .env("HELLO", hello)
        .stdin(Stdio::null())
        .output()
        .context("cannot run bash for the REST examples")?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if line.starts_with('$') {
            println!("   {line}");
        } else {
            println!("     {line}");
        }
    }
    if !out.status.success() {
        bail!(
            "the REST examples failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Runs the pipeline example as a driver of the master node's session, showing its output.
fn run_pipeline(program: &Path, session: &str, size: u64, rounds: u32) -> Result<()> {
    let size_arg = format!("{}MiB", size >> 20);
    let rounds_arg = rounds.to_string();
    println!(
        "   $ YR_SESSION=<master session> {} --size {size_arg} --rounds {rounds_arg}",
        program.display()
    );
    let out = Command::new(program)
        .args(["--size", &size_arg, "--rounds", &rounds_arg])
        .env("YR_SESSION", session)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", program.display()))?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        println!("     {line}");
    }
    if !out.status.success() {
        bail!(
            "the pipeline failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A consumer blocks on an object that does not exist yet; a producer stores it; the consumer
/// reads it in place. Both are separate processes.
fn pass_object(socket: &str, size: u64) -> Result<()> {
    let exe = exe()?;
    let id = ObjectId::random(0).to_hex();
    let mut consumer = Command::new(&exe)
        .args(["store", "consume", "--sync-stdin", "--socket", socket])
        .args(["--id", &id])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start the consumer")?;
    let producer = Command::new(&exe)
        .args(["store", "produce", "--socket", socket])
        .args(["--id", &id, "--size", &size.to_string()])
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
        size >> 20,
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
    Ok(())
}
