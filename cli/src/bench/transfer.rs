//! `yr bench transfer`: how fast one data worker pulls an object from another
//! over TCP, against a raw TCP stream of the same bytes on the same machine.
//!
//! Two real data workers (prefaulted arenas, transfer ports on 127.0.0.1)
//! run as child processes. The object is put into worker A; each run gets it
//! through worker B (`get_remote`), which pulls it A→B over loopback, then
//! deletes B's copy so the next run pulls again. The baseline, in the same
//! run, is a std::net TCP connection between two threads of this process:
//! the receiver asks with one byte (as a pull asks with one request), the
//! sender writes the whole buffer, the receiver `read()`s it into a buffer of
//! the same size touched beforehand (as B's arena is prefaulted). Baseline
//! and transfer runs alternate, and which goes first alternates too, so
//! machine noise hits both; each side has one warm-up run (connection setup,
//! first faults) that is not counted. `transfer_vs_tcp` is the median of the
//! per-round ratios (each pair of runs saw the same machine load).
//!
//! Then the same rounds again with both workers started with
//! `--encrypt-transfers` (every pull sealed with AES-256-GCM), against the
//! same kind of TCP baseline: `encrypted_vs_tcp` and `encrypted_vs_plain`
//! say what encryption costs.
//!
//! Then the three-stage pipeline (`examples/pipeline`, built next to `yr`)
//! runs on a real two-node cluster started on this host (`yr start --master`
//! and `yr start --worker`, `--ports auto`): produce and reduce on one node,
//! transform on the other, so each round moves the array across and back.
//! `pipeline_gbps` is the array size over the median round's wall time, the
//! first round (cold starts) excluded.
//!
//! The set-up ([`WorkerPair`], [`TcpBaseline`]) is shared with the criterion group
//! `cli/benches/transfer.rs`.

use crate::store_cmd::pattern;
use crate::util::{size_arg, NodesOf, WorkerProcess, Yr};
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use serde::Serialize;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use yr_datastore::{Client, ObjectId};
use yr_runtime::session::Session;

#[derive(Args)]
pub struct TransferArgs {
    /// Print one JSON object (for scripts) instead of a table.
    #[arg(long)]
    json: bool,
    /// Size of the object pulled (and of the baseline stream).
    #[arg(long, value_parser = size_arg, default_value = "256MiB")]
    size: u64,
    /// Timed runs of each side (after one warm-up each).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Skip the pipeline on a two-node cluster (only the two data workers).
    #[arg(long)]
    no_pipeline: bool,
}

/// What the bench reports. Every field is printed, in JSON and in the table;
/// a new figure is one more field here and one more line where it is built.
#[derive(Serialize)]
struct Report {
    /// Object size / median pull time, in GB/s (1e9 bytes/s).
    transfer_gbps: f64,
    /// Object size / fastest pull time.
    transfer_best_gbps: f64,
    /// Median time of one `get_remote` that pulls the object, in ms.
    transfer_p50_ms: f64,
    /// Size / median time of the raw loopback TCP stream.
    tcp_gbps: f64,
    /// Size / fastest raw TCP stream.
    tcp_best_gbps: f64,
    /// Median time of one raw TCP stream, in ms.
    tcp_p50_ms: f64,
    /// Median over rounds of (TCP time / pull time): the pull's speed
    /// relative to raw TCP under the same load (the target is 0.7 or more).
    transfer_vs_tcp: f64,
    /// Object size / median sealed pull time (`--encrypt-transfers`), GB/s.
    encrypted_gbps: f64,
    /// Median time of one sealed pull, in ms.
    encrypted_p50_ms: f64,
    /// Median over rounds of (TCP time / sealed pull time).
    encrypted_vs_tcp: f64,
    /// Plain pull median time / sealed pull median time: the share of the
    /// default speed that encryption keeps.
    encrypted_vs_plain: f64,
    /// Median time to open a peer connection on loopback with the
    /// authentication handshake (TCP connect, then the challenge–response),
    /// in µs. A pull pays it once per pooled connection, not per object.
    connect_auth_us: f64,
    /// The same without the handshake (TCP connect, then one one-byte round
    /// trip, so both sides carry a request's first round trip).
    connect_plain_us: f64,
    /// What the handshake adds: `connect_auth_us - connect_plain_us`.
    handshake_us: f64,
    /// Array size / median round time of the three-stage pipeline on two
    /// nodes (absent with --no-pipeline).
    #[serde(skip_serializing_if = "Option::is_none")]
    pipeline_gbps: Option<f64>,
    /// Median wall time of one pipeline round, in ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pipeline_p50_ms: Option<f64>,
    /// Bytes per run.
    object_bytes: u64,
    /// Timed runs of each side.
    runs: usize,
}

/// How long one pull may take before the bench gives up.
const PULL_TIMEOUT: Duration = Duration::from_secs(60);

/// Two data workers started as child processes, with an object in worker a that each
/// [`WorkerPair::pull`] gets through worker b. Stopped when dropped.
pub struct WorkerPair {
    // Clients first, so they disconnect before their workers stop.
    client_a: Client,
    client_b: Client,
    _workers: (WorkerProcess, WorkerProcess),
    _dir: tempfile::TempDir,
    id: ObjectId,
    src: Arc<Vec<u8>>,
}

impl WorkerPair {
    /// Starts the two workers of `yr` (prefaulted arenas of twice `size`, at least 64 MiB;
    /// transfer ports on 127.0.0.1) after checking that the machine has the memory for them
    /// and for a [`TcpBaseline`] of the same size, then puts a `size`-byte object into worker
    /// a. With `encrypt`, both workers seal their transfers (`--encrypt-transfers`). `log`
    /// hears what it is doing.
    pub fn start(yr: &Yr, size: u64, encrypt: bool, log: impl Fn(&str)) -> Result<WorkerPair> {
        if size == 0 {
            bail!("--size must be greater than zero");
        }
        let len = usize::try_from(size)
            .map_err(|_| anyhow!("--size {size} does not fit in this machine's memory"))?;
        // Room for the object with a wide margin, so neither worker comes near
        // its spill watermark.
        let shm = size.saturating_mul(2).max(64 << 20);
        // Two arenas, plus the baseline's send and receive buffers.
        let need = shm.saturating_mul(2).saturating_add(size.saturating_mul(2));
        if let Some(avail) = mem_available() {
            if need > avail {
                bail!(
                    "--size {size} needs about {} MiB of memory (two {} MiB arenas and two \
                     buffers for the TCP baseline), but only {} MiB are available; pick a \
                     smaller --size",
                    need >> 20,
                    shm >> 20,
                    avail >> 20
                );
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("yr-bench-transfer-")
            .tempdir()
            .context("cannot create a temporary folder")?;
        log(&format!(
            "starting two data workers ({} MiB arenas, prefaulted)...",
            shm >> 20
        ));
        // Both workers hold one cluster secret, as the nodes of a cluster do.
        let secret = dir.path().join("cluster-secret");
        yr_datastore::peer_auth::create_secret_file(&secret)?;
        let secret = secret.to_string_lossy().into_owned();
        let start = |name: &str| -> Result<(WorkerProcess, std::path::PathBuf)> {
            let socket = dir.path().join(format!("{name}.sock"));
            let mut flags = vec![
                "--prefault",
                "--transfer-address",
                "127.0.0.1:0",
                "--cluster-secret",
                &secret,
            ];
            if encrypt {
                flags.push("--encrypt-transfers");
            }
            let w = WorkerProcess::start_with(
                yr,
                &socket,
                shm,
                &dir.path().join(format!("spill-{name}")),
                &flags,
            )
            .with_context(|| format!("data worker {name}"))?;
            if w.transfer_addr().is_none() {
                bail!("data worker {name} announced no transfer address");
            }
            Ok((w, socket))
        };
        let (worker_a, socket_a) = start("a")?;
        let (worker_b, socket_b) = start("b")?;
        let client_a = Client::connect_named(&socket_a, "yr-bench-transfer")
            .context("cannot connect to data worker a")?;
        let client_b = Client::connect_named(&socket_b, "yr-bench-transfer")
            .context("cannot connect to data worker b")?;
        // What a node's agent does in a cluster: tell each worker the members.
        let members: Vec<_> = [&worker_a, &worker_b]
            .iter()
            .filter_map(|w| w.transfer_addr())
            .collect();
        for c in [&client_a, &client_b] {
            c.set_peers(&members)
                .context("cannot tell the workers their peers")?;
        }
        log(&format!(
            "putting a {} MiB object into worker a...",
            len >> 20
        ));
        let src = Arc::new(pattern(len));
        let id = client_a.new_id();
        client_a
            .put(id, &src)
            .context("cannot put the object into worker a")?;
        Ok(WorkerPair {
            client_a,
            client_b,
            _workers: (worker_a, worker_b),
            _dir: dir,
            id,
            src,
        })
    }

    /// The object's bytes (for a [`TcpBaseline`] of the same data).
    pub fn object(&self) -> Arc<Vec<u8>> {
        Arc::clone(&self.src)
    }

    /// One pull of the object a→b, timed; see [`pull`].
    pub fn pull(&self, check: bool) -> Result<Duration> {
        pull(&self.client_b, self.id, &self.src, check)
    }

    /// Deletes the object from worker a, then stops both workers.
    pub fn stop(self) -> Result<()> {
        self.client_a
            .delete_one(self.id)
            .context("cannot delete the object from worker a")?;
        Ok(())
    }
}

pub fn run(a: TransferArgs) -> Result<()> {
    if a.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let log = |s: &str| {
        if !a.json {
            eprintln!("{s}");
        }
    };
    let yr = Yr::this()?;
    let (mut pulls, mut streams, ratio) = pull_rounds(&yr, &a, false, log)?;
    let (mut sealed, _, sealed_ratio) = pull_rounds(&yr, &a, true, log)?;
    let pipeline = if a.no_pipeline {
        None
    } else {
        log("running the three-stage pipeline on a two-node cluster...");
        Some(pipeline_round(&yr, a.size, a.runs + 1)?)
    };
    log("timing peer connections with and without the handshake...");
    let (auth, plain) = handshake_cost(HANDSHAKE_ROUNDS)?;
    let gbps = |d: Duration| a.size as f64 / d.as_secs_f64() / 1e9;
    let (pull_p50, pull_best) = (median(&mut pulls), best(&pulls));
    let sealed_p50 = median(&mut sealed);
    let (tcp_p50, tcp_best) = (median(&mut streams), best(&streams));
    let report = Report {
        transfer_gbps: gbps(pull_p50),
        transfer_best_gbps: gbps(pull_best),
        transfer_p50_ms: ms(pull_p50),
        tcp_gbps: gbps(tcp_p50),
        tcp_best_gbps: gbps(tcp_best),
        tcp_p50_ms: ms(tcp_p50),
        transfer_vs_tcp: ratio,
        encrypted_gbps: gbps(sealed_p50),
        encrypted_p50_ms: ms(sealed_p50),
        encrypted_vs_tcp: sealed_ratio,
        encrypted_vs_plain: pull_p50.as_secs_f64() / sealed_p50.as_secs_f64().max(1e-9),
        connect_auth_us: us(auth),
        connect_plain_us: us(plain),
        handshake_us: us(auth) - us(plain),
        pipeline_gbps: pipeline.map(gbps),
        pipeline_p50_ms: pipeline.map(ms),
        object_bytes: a.size,
        runs: a.runs,
    };
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_table(&report)?;
    }
    Ok(())
}

/// Alternating rounds of a pull a→b (sealed with `encrypt`) and a raw TCP
/// stream of the same bytes, after one warm-up each: the pull times, the
/// stream times, and the median of the per-round ratios (TCP / pull).
fn pull_rounds(
    yr: &Yr,
    a: &TransferArgs,
    encrypt: bool,
    log: impl Fn(&str),
) -> Result<(Vec<Duration>, Vec<Duration>, f64)> {
    let pair = WorkerPair::start(yr, a.size, encrypt, &log)?;
    let mut tcp = TcpBaseline::start(pair.object())?;
    log(&format!(
        "{} rounds of a {} pull a→b against a raw TCP stream (1 warm-up)...",
        a.runs,
        if encrypt { "sealed" } else { "plain" }
    ));
    let (mut pulls, mut streams) = (Vec::with_capacity(a.runs), Vec::with_capacity(a.runs));
    for round in 0..=a.runs {
        let warm_up = round == 0;
        let (p, s) = if round % 2 == 0 {
            let s = tcp.run(warm_up)?;
            (pair.pull(warm_up)?, s)
        } else {
            let p = pair.pull(warm_up)?;
            (p, tcp.run(warm_up)?)
        };
        tracing::debug!(
            round,
            encrypt,
            pull_ms = ms(p),
            tcp_ms = ms(s),
            "transfer round"
        );
        if !warm_up {
            pulls.push(p);
            streams.push(s);
        }
    }
    tcp.stop()?;
    drop(tcp);
    pair.stop()?;
    let mut ratios: Vec<f64> = pulls
        .iter()
        .zip(&streams)
        .map(|(p, s)| s.as_secs_f64() / p.as_secs_f64().max(1e-9))
        .collect();
    ratios.sort_by(f64::total_cmp);
    let ratio = ratios[ratios.len() / 2];
    Ok((pulls, streams, ratio))
}

/// Connections timed by [`handshake_cost`], of each kind.
const HANDSHAKE_ROUNDS: usize = 400;

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Median times of `rounds` loopback connections of each kind, alternating:
/// connect + the peer handshake of `yr_datastore::peer_auth` (both sides in
/// this process, the server on its own thread as a data worker's is), and
/// connect + a one-byte round trip.
fn handshake_cost(rounds: usize) -> Result<(Duration, Duration)> {
    use yr_datastore::peer_auth::{self, Secret};
    let mut key = vec![0u8; peer_auth::MIN_SECRET_LEN];
    peer_auth::random(&mut key)?;
    let secret = Secret::from_bytes(key)?;
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let addr = listener.local_addr()?;
    let server_secret = secret.clone();
    let server = std::thread::spawn(move || -> io::Result<()> {
        for i in 0..2 * rounds {
            let (mut s, _) = listener.accept()?;
            s.set_nodelay(true)?;
            if i % 2 == 0 {
                let mut magic = [0u8; 4];
                s.read_exact(&mut magic)?;
                peer_auth::server(&mut s, &server_secret, &magic)?;
            } else {
                let mut b = [0u8; 1];
                s.read_exact(&mut b)?;
                s.write_all(&b)?;
            }
        }
        Ok(())
    });
    let (mut auth, mut plain) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
    for _ in 0..rounds {
        let t = Instant::now();
        let mut s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        peer_auth::client(&mut s, &secret, yr_datastore::transfer::PEER_MAGIC)?;
        auth.push(t.elapsed());
        let t = Instant::now();
        let mut s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        s.write_all(&[1])?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b)?;
        plain.push(t.elapsed());
    }
    server
        .join()
        .map_err(|_| anyhow!("the handshake server panicked"))??;
    Ok((median(&mut auth), median(&mut plain)))
}

/// Runs the pipeline example for `rounds` rounds of `size`-byte arrays on a
/// fresh two-node cluster; returns the median round time, the first excluded.
fn pipeline_round(yr: &Yr, size: u64, rounds: usize) -> Result<Duration> {
    let program = yr.sibling("pipeline").ok_or_else(|| {
        anyhow!(
            "the pipeline example is not built next to {} (cargo build --release --bins), or \
             pass --no-pipeline",
            yr.path().display()
        )
    })?;
    if !size.is_multiple_of(4) {
        bail!("the pipeline works on arrays of u32: --size must be a multiple of 4");
    }
    let dir = tempfile::Builder::new()
        .prefix("yr-bench-pipeline-")
        .tempdir()
        .context("cannot create a temporary folder")?;
    let (m, w) = (
        dir.path().join("master").display().to_string(),
        dir.path().join("worker").display().to_string(),
    );
    let shm = format!("{}MiB", (size * 4).max(256 << 20) >> 20);
    let mut nodes = NodesOf::new(yr);
    let common = ["--ports", "auto", "--shm-size", &shm, "--prefault-shm"];
    let mut args = vec!["start", "--master", "--session-dir", &m];
    args.extend(common);
    nodes.dirs.push(m.clone());
    yr.run(&args)?;
    let master_session = Session::load(&dir.path().join("master"))?;
    let master = master_session.master_address.clone();
    let token = crate::cluster::read_join_token(&master_session)?;
    let mut args = vec![
        "start",
        "--worker",
        "--master-address",
        &master,
        "--join-token",
        &token,
        "--session-dir",
        &w,
    ];
    args.extend(common);
    nodes.dirs.push(w.clone());
    yr.run(&args)?;
    let out = std::process::Command::new(&program)
        .args([
            "--json",
            "--size",
            &size.to_string(),
            "--rounds",
            &rounds.to_string(),
        ])
        .env("YR_SESSION", &m)
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", program.display()))?;
    if !out.status.success() {
        bail!(
            "the pipeline failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let mut walls = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("pipeline output {line:?}"))?;
        if v["checked"] != true {
            bail!("a pipeline round was not checked: {v}");
        }
        let wall = v["wall_ms"]
            .as_f64()
            .ok_or_else(|| anyhow!("pipeline output without wall_ms: {v}"))?;
        walls.push(Duration::from_secs_f64(wall / 1e3));
    }
    if walls.len() != rounds {
        bail!("the pipeline reported {} rounds of {rounds}", walls.len());
    }
    let mut timed = walls.split_off(1.min(walls.len()));
    if timed.is_empty() {
        timed = walls;
    }
    Ok(median(&mut timed))
}

/// One `get_remote` through worker B, timed; then B's copy is deleted so the
/// next run pulls again. Checks that B really pulled (not a local hit) and,
/// on the warm-up, that the bytes arrived intact.
pub fn pull(client_b: &Client, id: ObjectId, src: &[u8], check: bool) -> Result<Duration> {
    let before = client_b.stats().context("stats of worker b")?.pulled_bytes;
    let t = Instant::now();
    let g = client_b
        .get_remote(id, PULL_TIMEOUT)
        .with_context(|| format!("worker b cannot pull {id} from worker a"))?;
    let d = t.elapsed();
    if g.len() != src.len() {
        bail!(
            "worker b pulled {} bytes of a {}-byte object",
            g.len(),
            src.len()
        );
    }
    if check && *g != *src {
        bail!("the copy worker b pulled differs from the object put into worker a");
    }
    drop(g);
    client_b
        .delete_one(id)
        .context("cannot delete worker b's copy")?;
    let pulled = client_b
        .stats()
        .context("stats of worker b")?
        .pulled_bytes
        .saturating_sub(before);
    if pulled != src.len() as u64 {
        bail!(
            "worker b pulled {pulled} bytes during a get of a {}-byte object; it was not a \
             transfer (the copy from the last run was still there?)",
            src.len()
        );
    }
    Ok(d)
}

/// The raw TCP baseline: a loopback connection kept open across runs (as
/// workers pool theirs), a sender thread that answers each one-byte request
/// with the whole buffer, and a receive buffer touched once up front.
pub struct TcpBaseline {
    stream: TcpStream,
    buf: Vec<u8>,
    src: Arc<Vec<u8>>,
    sender: Option<JoinHandle<io::Result<()>>>,
}

impl TcpBaseline {
    /// Starts the sender thread on `src` and connects to it.
    pub fn start(src: Arc<Vec<u8>>) -> Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .context("cannot bind a loopback port for the TCP baseline")?;
        let addr = listener.local_addr()?;
        let data = Arc::clone(&src);
        let sender = std::thread::Builder::new()
            .name("yr-bench-tcp".into())
            .spawn(move || -> io::Result<()> {
                let (mut s, _) = listener.accept()?;
                s.set_nodelay(true)?;
                let mut req = [0u8; 1];
                loop {
                    match s.read(&mut req) {
                        Ok(0) => return Ok(()),
                        Ok(_) => s.write_all(&data)?,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
            })
            .context("cannot start the TCP baseline's sender thread")?;
        let stream = TcpStream::connect(addr)
            .with_context(|| format!("cannot connect to the TCP baseline at {addr}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(PULL_TIMEOUT))?;
        // A non-zero fill writes every page, so no run pays for first faults
        // (vec![0; n] would leave them untouched).
        let buf = vec![0xA5u8; src.len()];
        Ok(TcpBaseline {
            stream,
            buf,
            src,
            sender: Some(sender),
        })
    }

    /// One stream of the whole buffer, timed from the request to the last
    /// byte read.
    pub fn run(&mut self, check: bool) -> Result<Duration> {
        let n = self.buf.len();
        let t = Instant::now();
        self.stream
            .write_all(&[1])
            .context("TCP baseline: cannot send the request")?;
        let mut got = 0;
        while got < n {
            match self.stream.read(&mut self.buf[got..]) {
                Ok(0) => bail!("TCP baseline: the sender closed after {got} of {n} bytes"),
                Ok(k) => got += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("TCP baseline: read failed after {got} of {n} bytes")
                    })
                }
            }
        }
        let d = t.elapsed();
        if check && self.buf != *self.src {
            bail!("TCP baseline: the bytes received differ from the bytes sent");
        }
        Ok(d)
    }

    /// Closes the connection and reports the sender's outcome.
    pub fn stop(&mut self) -> Result<()> {
        let _ = self.stream.shutdown(Shutdown::Both);
        match self.sender.take().map(JoinHandle::join) {
            None => Ok(()),
            Some(Ok(r)) => r.context("TCP baseline sender"),
            Some(Err(_)) => bail!("TCP baseline sender panicked"),
        }
    }
}

impl Drop for TcpBaseline {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn print_table(r: &Report) -> Result<()> {
    let v = serde_json::to_value(r)?;
    let fields = v
        .as_object()
        .ok_or_else(|| anyhow!("the report is not a JSON object"))?;
    let width = fields.keys().map(String::len).max().unwrap_or(0);
    for (k, v) in fields {
        match v.as_f64() {
            Some(x) if !(v.is_u64() || v.is_i64()) => println!("{k:<width$}  {x:>10.3}"),
            _ => println!("{k:<width$}  {v:>10}"),
        }
    }
    Ok(())
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    match v.len() {
        0 => Duration::ZERO,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2,
    }
}

fn best(v: &[Duration]) -> Duration {
    v.iter().copied().min().unwrap_or(Duration::ZERO)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// MemAvailable from /proc/meminfo, if it can be read.
fn mem_available() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}
