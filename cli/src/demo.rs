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
//! 6. Reads the dashboard's view of the cluster (what the web page shows): both nodes alive, the
//!    calls `hello` served and the requests the REST services answered, as the nodes'
//!    collectors measured them.
//! 7. Stops both nodes and checks that no process it started is left; with `--keep-running`
//!    leaves them running instead, for a look at the dashboard (`yr dashboard`).
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
    /// Leave the cluster running at the end (and its session folders), for a look at the
    /// dashboard; `yr stop` stops it.
    #[arg(long)]
    keep_running: bool,
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
    let master_address = master_session.master_address.clone();
    let join_token = crate::cluster::read_join_token(&master_session)?;
    yr(
        &[
            "start",
            "--worker",
            "--master-address",
            &master_address,
            "--join-token",
            &join_token,
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
    let frontend_requests = run_rest_examples(&m, &hello)?;

    println!("== 6. the dashboard's view of the cluster, as the nodes' collectors measure it");
    show_dashboard(&master_dir, frontend_requests)?;

    println!("== 7. the cluster");
    yr(&["status", "--session-dir", &m], true)?;
    if a.keep_running {
        let kept = tmp.keep();
        nodes.0.clear();
        println!(
            "== done in {:.1} s; the cluster keeps running (sessions under {}):\n   \
             $ yr dashboard --session-dir {m}     # the web page, with a one-time login\n   \
             $ yr stop --session-dir {w} && yr stop --session-dir {m}",
            started.elapsed().as_secs_f64(),
            kept.display()
        );
        return Ok(());
    }
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

/// `GET url` with the REST token, as JSON (a blocking HTTP/1.1 request on its own connection).
fn get_json(url: &str, token: &str) -> Result<serde_json::Value> {
    use std::io::{Read, Write};
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("{url} is not an http:// URL"))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut s = std::net::TcpStream::connect(host).with_context(|| format!("connect to {host}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\
         Connection: close\r\n\r\n"
    )?;
    let mut reply = Vec::new();
    s.read_to_end(&mut reply)
        .with_context(|| format!("read the reply of {url}"))?;
    let text = String::from_utf8_lossy(&reply);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("{url}: a reply without a head"))?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("{url}: {}", head.lines().next().unwrap_or_default());
    }
    serde_json::from_str(body).with_context(|| format!("{url}: the reply is not JSON"))
}

/// Waits until the dashboard sees both nodes, the calls made to `hello` and (at least) the
/// `frontend_requests` of step 5, then prints what it shows (the figures of the web page's
/// overview and functions).
fn show_dashboard(master_dir: &Path, frontend_requests: u64) -> Result<()> {
    let s = Session::load(master_dir)?;
    let url = s
        .dashboard_url
        .clone()
        .ok_or_else(|| anyhow!("the master's session.json names no dashboard"))?;
    let token_file = s
        .token_file
        .clone()
        .ok_or_else(|| anyhow!("the master's session.json names no token file"))?;
    let token = std::fs::read_to_string(&token_file)
        .with_context(|| format!("read {}", token_file.display()))?;
    let state_url = format!("{}/api/state", url.trim_end_matches('/'));
    // The collectors sample every 2 s and the dashboard reads them every 2 s.
    let deadline = Instant::now() + Duration::from_secs(30);
    let st = loop {
        let st = get_json(&state_url, token.trim())?;
        let hello_calls = st["functions"]
            .as_array()
            .and_then(|f| f.iter().find(|f| f["name"] == "hello"))
            .and_then(|f| f["calls_total"].as_u64())
            .unwrap_or(0);
        // Step 5's curls went to the frontend: its collector counts them.
        let rest_requests = st["rest"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["service"] == "frontend"))
            .and_then(|r| r["requests_total"].as_u64())
            .unwrap_or(0);
        if st["overview"]["nodes_alive"] == 2
            && hello_calls >= 2
            && rest_requests >= frontend_requests.max(1)
        {
            break st;
        }
        if Instant::now() > deadline {
            bail!(
                "the dashboard did not show both nodes, hello's calls and the frontend's \
                 requests within 30 s: {st}"
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    println!("   {url}  (open it with: yr dashboard)");
    let o = &st["overview"];
    println!(
        "     nodes alive {}, instances {} ({} running), objects {}, shared memory {} MiB used",
        o["nodes_alive"],
        o["instances"],
        o["instances_running"],
        o["objects"],
        o["shm_used_bytes"].as_u64().unwrap_or(0) >> 20
    );
    // A latency the dashboard does not know yet (no call measured) is null.
    let ms = |v: &serde_json::Value| v.as_f64().map_or("-".to_string(), |x| format!("{x} ms"));
    for f in st["functions"].as_array().into_iter().flatten() {
        println!(
            "     function {:<10} calls {:>4}  errors {:>3}  p50 {}  p99 {}",
            f["name"].as_str().unwrap_or("?"),
            f["calls_total"],
            f["errors_total"],
            ms(&f["p50_ms"]),
            ms(&f["p99_ms"])
        );
    }
    for r in st["rest"].as_array().into_iter().flatten() {
        println!(
            "     REST {:<13} requests {:>4}  5xx {:>3}  p50 {}  p99 {}",
            r["service"].as_str().unwrap_or("?"),
            r["requests_total"],
            r["errors_total"],
            ms(&r["p50_ms"]),
            ms(&r["p99_ms"])
        );
    }
    Ok(())
}

/// Runs the README's curl examples against the master node's REST services; how many of its
/// commands went to the frontend (each is at least one request).
fn run_rest_examples(session: &str, hello: &Path) -> Result<u64> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/rest/try.sh");
    if !script.is_file() {
        println!("   (skipped: {} is not here)", script.display());
        return Ok(0);
    }
    let mut frontend = 0;
    let out = Command::new("bash")
        .arg(&script)
        .env("YR_SESSION", session)
        .env("HELLO", hello)
        .stdin(Stdio::null())
        .output()
        .context("cannot run bash for the REST examples")?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if line.starts_with('$') {
            if line.contains("$FRONTEND") {
                frontend += 1;
            }
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
    Ok(frontend)
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
