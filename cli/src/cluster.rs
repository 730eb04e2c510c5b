//! Cluster commands: `yr start`, `yr stop`, `yr status`, `yr function deploy`, `yr invoke`,
//! `yr instance`.
//!
//! `yr start` launches every component as its own process (in a new session, so that it outlives
//! the command and `yr stop` can sweep its process group), waits for each one's `ready` line, and
//! records what it started in `DIR/session.json`. Everything else reads that file to find the
//! cluster. Invariant: a session file lists every process its `yr start` left running, so `yr
//! stop` can end them all.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use serde::Deserialize;
use yr_proto::master_client::MasterClient;
use yr_proto::proxy_client::ProxyClient;
use yr_proto::*;

pub use yr_runtime::session::{ComponentInfo, Session, SESSIONS_ROOT};

#[derive(Args)]
pub struct StartArgs {
    /// Start a master node: etcd, function master and this node's worker components.
    #[arg(long, conflicts_with = "worker")]
    master: bool,
    /// Start a worker node that joins the master at --master-address.
    #[arg(long, requires = "master_address")]
    worker: bool,
    /// The master to join (host:port), for --worker.
    #[arg(long)]
    master_address: Option<String>,
    /// Use an existing etcd instead of starting one (comma-separated URLs).
    #[arg(long)]
    etcd_endpoints: Option<String>,
    /// Session folder (default /tmp/yr_sessions/<timestamp>).
    #[arg(long)]
    session_dir: Option<PathBuf>,
    /// `auto`: pick free ports (to run several nodes on one host); default: the standard ports.
    #[arg(long)]
    ports: Option<String>,
    /// Shared memory for this node's data worker (default: a third of memory).
    #[arg(long, value_parser = crate::util::size_arg)]
    shm_size: Option<u64>,
    /// Allocate and map the data worker's shared memory at start (faster first puts).
    #[arg(long)]
    prefault_shm: bool,
    /// CPU this node offers, in millicores.
    #[arg(long)]
    cpu: Option<u64>,
    /// Memory this node offers, in MiB.
    #[arg(long)]
    memory: Option<u64>,
    /// Node labels, key=value, repeatable.
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Custom resources, name=amount, repeatable.
    #[arg(long = "resource")]
    resources: Vec<String>,
    /// Stop stateless instances idle this long (ms), down to each function's minimum (master).
    #[arg(long, default_value_t = 60_000)]
    idle_timeout_ms: u64,
    /// Address every service of this node listens on. The default keeps the node reachable
    /// from this host only; another address is announced with a warning.
    #[arg(long, default_value = "127.0.0.1")]
    bind: std::net::Ipv4Addr,
    /// Largest REST request body (master).
    #[arg(long, value_parser = crate::util::size_arg, default_value = "64MiB")]
    max_body: u64,
}

#[derive(Args)]
pub struct SessionArg {
    /// Session folder (default: /tmp/yr_sessions/latest).
    #[arg(long)]
    session_dir: Option<PathBuf>,
}

#[derive(Args)]
pub struct StopArgs {
    #[command(flatten)]
    session: SessionArg,
    /// Kill at once instead of asking politely first.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    session: SessionArg,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
pub enum FunctionCmd {
    /// Register (or update) a function, from a TOML file and/or flags.
    Deploy(Box<DeployArgs>),
    /// Remove a function and stop its instances.
    Delete {
        name: String,
        #[command(flatten)]
        session: SessionArg,
    },
    /// List deployed functions.
    List {
        #[command(flatten)]
        session: SessionArg,
    },
}

#[derive(Args)]
pub struct DeployArgs {
    /// A TOML file with the function's fields (name, code_path, entrypoint, handler, ...);
    /// flags override it. A relative code_path is relative to the file.
    #[arg(long)]
    file: Option<PathBuf>,
    #[arg(long)]
    name: Option<String>,
    /// A folder, an executable, or a .tar.gz/.zip package.
    #[arg(long)]
    code: Option<PathBuf>,
    #[arg(long)]
    entrypoint: Option<String>,
    #[arg(long)]
    handler: Option<String>,
    #[arg(long)]
    min_instances: Option<u32>,
    #[arg(long)]
    max_instances: Option<u32>,
    #[arg(long)]
    concurrency: Option<u32>,
    #[arg(long)]
    cpu: Option<u64>,
    #[arg(long)]
    memory: Option<u64>,
    #[arg(long)]
    timeout_ms: Option<u32>,
    #[arg(long)]
    max_retries: Option<u32>,
    /// Label affinity: `required:KEY=V1|V2`, `preferred:KEY=V`, `anti:KEY` (repeatable).
    #[arg(long = "affinity", value_parser = affinity_arg)]
    affinity: Vec<LabelAffinity>,
    /// Spread instances over nodes instead of preferring the caller's node.
    #[arg(long)]
    spread: bool,
    /// Environment of the function's processes, KEY=VALUE (repeatable; adds to the file's).
    #[arg(long = "env")]
    env: Vec<String>,
    /// Custom resources each instance needs, NAME=AMOUNT (repeatable).
    #[arg(long = "resource")]
    resources: Vec<String>,
    #[command(flatten)]
    session: SessionArg,
}

fn pairs(v: &[String], flag: &str) -> Result<Vec<(String, String)>> {
    v.iter()
        .map(|s| match s.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => bail!("{flag} {s:?}: expected KEY=VALUE"),
        })
        .collect()
}

/// Parses `required:zone=a|b`, `preferred:gpu`, `anti:zone=c`.
fn affinity_arg(s: &str) -> Result<LabelAffinity, String> {
    let (kind, rule) = s.split_once(':').ok_or_else(|| {
        format!("{s:?}: expected KIND:KEY[=V1|V2], KIND one of required, preferred, anti")
    })?;
    let kind = match kind {
        "required" => AffinityKind::AffinityRequired,
        "preferred" => AffinityKind::AffinityPreferred,
        "anti" => AffinityKind::AffinityAnti,
        other => {
            return Err(format!(
                "{other:?} is not an affinity kind (required, preferred, anti)"
            ))
        }
    };
    let (key, values) = match rule.split_once('=') {
        Some((k, v)) => (k, v.split('|').map(str::to_string).collect()),
        None => (rule, Vec::new()),
    };
    if key.is_empty() {
        return Err(format!("{s:?}: the label key is empty"));
    }
    Ok(LabelAffinity {
        kind: kind as i32,
        key: key.to_string(),
        values,
    })
}

#[derive(Args)]
pub struct InvokeArgs {
    /// The function.
    name: String,
    /// Request body.
    #[arg(long, conflicts_with = "data_file")]
    data: Option<String>,
    /// Request body from a file.
    #[arg(long)]
    data_file: Option<PathBuf>,
    /// A stateful instance (its name or ID).
    #[arg(long)]
    instance: Option<String>,
    /// The method, for a stateful instance.
    #[arg(long)]
    method: Option<String>,
    #[arg(long)]
    timeout_ms: Option<u32>,
    #[command(flatten)]
    session: SessionArg,
}

#[derive(Subcommand)]
pub enum InstanceCmd {
    /// Create a named (stateful) instance of a function.
    Create {
        function: String,
        #[arg(long)]
        name: String,
        /// Label affinity for this instance (added to the function's), as for deploy.
        #[arg(long = "affinity", value_parser = affinity_arg)]
        affinity: Vec<LabelAffinity>,
        /// How long to wait for resources and for the instance to run (ms).
        #[arg(long, default_value_t = 30_000)]
        wait_ms: u32,
        #[command(flatten)]
        session: SessionArg,
    },
    /// Stop an instance (by ID or name).
    Kill {
        instance: String,
        #[command(flatten)]
        session: SessionArg,
    },
}

/// The function spec fields a TOML file may set.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FunctionToml {
    name: Option<String>,
    version: Option<String>,
    code_path: Option<PathBuf>,
    entrypoint: Option<String>,
    handler: Option<String>,
    cpu: Option<u64>,
    memory: Option<u64>,
    min_instances: Option<u32>,
    max_instances: Option<u32>,
    concurrency: Option<u32>,
    timeout_ms: Option<u32>,
    max_retries: Option<u32>,
    env: Option<std::collections::HashMap<String, String>>,
    resources: Option<std::collections::HashMap<String, f64>>,
}

use yr_control::etcd::now_ms;

fn session_dir(arg: &SessionArg) -> PathBuf {
    arg.session_dir
        .clone()
        .unwrap_or_else(yr_runtime::session::latest)
}

#[derive(Args)]
pub struct TokenArgs {
    #[command(flatten)]
    session: SessionArg,
    /// Print the whole header line, `Authorization: Bearer <token>`.
    #[arg(long)]
    header: bool,
}

/// Prints the REST access token of the session's cluster.
pub fn token(a: TokenArgs) -> Result<()> {
    let s = load_session(&a.session)?;
    let file = s.token_file.ok_or_else(|| {
        anyhow!(
            "the session of node {} has no token file: the token lives in the master node's \
             session (pass its folder with --session-dir)",
            s.node_id
        )
    })?;
    let t = yr_control::rest::read_token(&file)?;
    if a.header {
        println!("Authorization: Bearer {t}");
    } else {
        println!("{t}");
    }
    Ok(())
}

pub fn load_session(arg: &SessionArg) -> Result<Session> {
    Ok(Session::load(&session_dir(arg))?)
}

fn rt() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn master_client(address: &str) -> Result<MasterClient<tonic::transport::Channel>> {
    Ok(MasterClient::new(yr_control::channel(address)?))
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Starts `cmd` in its own session with stderr to `log`, and waits (bounded) for its `ready`
/// line on stdout; on failure the error includes the log's tail.
fn launch(
    name: &str,
    mut cmd: Command,
    log: &Path,
    expect_ready_line: bool,
) -> Result<ComponentInfo> {
    let logf = std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
    cmd.stdin(Stdio::null())
        .stdout(if expect_ready_line {
            Stdio::piped()
        } else {
            Stdio::from(logf.try_clone()?)
        })
        .stderr(logf);
    // SAFETY: setsid() is async-signal-safe and touches only the child being set up.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {name}"))?;
    let pid = child.id();
    let mut address = String::new();
    if expect_ready_line {
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("{name}: stdout not captured"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let r = BufReader::new(stdout).read_line(&mut line).map(|_| line);
            let _ = tx.send(r);
        });
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(l)) if l.starts_with("ready") => l,
            Ok(_) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "{name} failed to start; its log ({}):\n{}",
                    log.display(),
                    tail(log)
                );
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "{name} not ready after 30 s; its log ({}):\n{}",
                    log.display(),
                    tail(log)
                );
            }
        };
        // A component's address: what it serves on the network if anything
        // (a data worker's transfer port), else its socket.
        address = ["address=", "transfer=", "socket="]
            .iter()
            .find_map(|k| line.split_whitespace().find_map(|w| w.strip_prefix(k)))
            .unwrap_or_default()
            .to_string();
    }
    Ok(ComponentInfo {
        name: name.to_string(),
        pid,
        address,
        log: log.to_path_buf(),
    })
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

fn wait_for_etcd(endpoint: &str, log: &Path) -> Result<()> {
    let rt = rt()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let ok = rt.block_on(yr_control::etcd::Meta::connect(&[endpoint.to_string()]));
        if ok.is_ok() {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "etcd at {endpoint} not ready after 20 s; its log ({}):\n{}",
                log.display(),
                tail(log)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn start(a: StartArgs) -> Result<()> {
    if !a.master && !a.worker {
        bail!("say --master (a new cluster) or --worker --master-address ADDR (join one)");
    }
    let auto = match a.ports.as_deref() {
        None => false,
        Some("auto") => true,
        Some(other) => bail!("--ports takes `auto`, not {other:?}"),
    };
    let dir = match &a.session_dir {
        Some(d) => d.clone(),
        None => {
            let stamp = chrono_like_stamp();
            PathBuf::from(SESSIONS_ROOT).join(stamp)
        }
    };
    if dir.join(yr_runtime::session::SESSION_FILE).exists() {
        bail!(
            "{} already holds a session; stop it first (`yr stop --session-dir {}`) or choose another folder",
            dir.display(),
            dir.display()
        );
    }
    std::fs::create_dir_all(dir.join("logs"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let bind = a.bind;
    if bind.is_unspecified() {
        bail!(
            "--bind {bind} names no host: other nodes need an address to reach this one at \
             (object IDs and node records carry it); give this host's address"
        );
    }
    if !bind.is_loopback() {
        eprintln!(
            "warning: yr services of this node listen on {bind}, reachable from other hosts. REST \
             routes require the access token, but the gRPC ports, etcd and the data transfer port \
             have no authentication: only bind an address on a network you trust."
        );
    }
    let exe = std::env::current_exe().context("cannot find the yr executable")?;
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "node".into());
    let node_id = format!(
        "{hostname}-{:06x}",
        (now_ms() ^ (std::process::id() as u64 * 7919)) & 0xff_ffff
    );
    let port = |default: u16| -> Result<u16> {
        if auto {
            free_port()
        } else {
            Ok(default)
        }
    };
    // `yr component NAME`, for the caller's flags; started with its log in `logs/NAME.log`.
    let component = |name: &str| {
        let mut cmd = Command::new(&exe);
        cmd.args(["component", name]);
        cmd
    };
    let start_component =
        |name: &str, cmd: Command| launch(name, cmd, &dir.join(format!("logs/{name}.log")), true);
    let mut started: Vec<ComponentInfo> = Vec::new();
    let result = (|| -> Result<Session> {
        // etcd and the master, for a master node.
        let (etcd_endpoints, master_address) = if a.master {
            let endpoints = match &a.etcd_endpoints {
                Some(e) => e
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .collect::<Vec<_>>(),
                None => {
                    let etcd = which("etcd").ok_or_else(|| {
                        anyhow!("etcd is not installed (Debian: apt-get install etcd-server), or pass --etcd-endpoints")
                    })?;
                    let (cp, pp) = (port(32379)?, port(32380)?);
                    let client = format!("http://{bind}:{cp}");
                    let peer = format!("http://{bind}:{pp}");
                    let mut cmd = Command::new(etcd);
                    cmd.arg("--name")
                        .arg("yr")
                        .arg("--data-dir")
                        .arg(dir.join("etcd"))
                        .arg("--listen-client-urls")
                        .arg(&client)
                        .arg("--advertise-client-urls")
                        .arg(&client)
                        .arg("--listen-peer-urls")
                        .arg(&peer)
                        .arg("--initial-advertise-peer-urls")
                        .arg(&peer)
                        .arg("--initial-cluster")
                        .arg(format!("yr={peer}"))
                        .arg("--log-level")
                        .arg("warn");
                    let log = dir.join("logs/etcd.log");
                    let mut info = launch("etcd", cmd, &log, false)?;
                    info.address = client.clone();
                    started.push(info);
                    wait_for_etcd(&client, &log)?;
                    vec![client]
                }
            };
            let mut cmd = component("function-master");
            cmd.arg("--listen")
                .arg(format!("{bind}:{}", port(22770)?))
                .args(["--etcd", &endpoints.join(",")]);
            let master = start_component("function-master", cmd)?;
            let addr = master.address.clone();
            started.push(master);
            let mut cmd = component("function-scheduler");
            cmd.args(["--etcd", &endpoints.join(","), "--master", &addr])
                .arg("--idle-timeout-ms")
                .arg(a.idle_timeout_ms.to_string());
            let mut scheduler = start_component("function-scheduler", cmd)?;
            scheduler.address.clear(); // it serves nothing
            started.push(scheduler);
            (endpoints, addr)
        } else {
            let master = a.master_address.clone().unwrap_or_default();
            let info = rt()?
                .block_on(async {
                    master_client(&master)?
                        .info(Empty {})
                        .await
                        .map_err(anyhow::Error::from)
                })
                .with_context(|| format!("cannot reach the master at {master}"))?
                .into_inner();
            (info.etcd_endpoints, master)
        };
        let etcd = etcd_endpoints.join(",");
        let mut meta_url = None;
        let token_file = if a.master {
            Some(write_token(&dir)?)
        } else {
            None
        };
        let max_body = a.max_body.to_string();
        let rest_flags: Vec<std::ffi::OsString> = match &token_file {
            Some(t) => vec![
                "--token-file".into(),
                t.into(),
                "--max-body".into(),
                max_body.clone().into(),
            ],
            None => Vec::new(),
        };
        if a.master {
            let mut cmd = component("meta-service");
            cmd.args(&rest_flags);
            cmd.arg("--listen")
                .arg(format!("{bind}:{}", port(31182)?))
                .args(["--upstream", &master_address]);
            let meta = start_component("meta-service", cmd)?;
            meta_url = Some(format!("http://{}", meta.address));
            started.push(meta);
        }
        // This node's worker components.
        let node_dir = dir.join("node");
        std::fs::create_dir_all(&node_dir)?;
        let socket = node_dir.join("data-worker.sock");
        let mut cmd = component("data-worker");
        cmd.arg("--socket")
            .arg(&socket)
            .arg("--spill-dir")
            .arg(node_dir.join("spill"));
        if let Some(s) = a.shm_size {
            cmd.arg("--shm-size").arg(s.to_string());
        }
        if a.prefault_shm {
            cmd.arg("--prefault");
        }
        cmd.arg("--transfer-address")
            .arg(format!("{bind}:{}", port(31501)?));
        let data_worker = start_component("data-worker", cmd)?;
        let data_transfer = data_worker.address.clone();
        started.push(data_worker);
        let node_flags = [
            "--etcd",
            &etcd,
            "--master",
            &master_address,
            "--node-id",
            &node_id,
        ];
        let instance_socket = node_dir.join("proxy.sock");
        let mut cmd = component("function-proxy");
        cmd.arg("--listen")
            .arg(format!("{bind}:{}", port(22772)?))
            .args(node_flags)
            .arg("--instance-socket")
            .arg(&instance_socket);
        // The master node's REST frontend runs inside its proxy: calls skip a gRPC hop.
        let mut frontend_url = None;
        if a.master {
            let listen = format!("{bind}:{}", port(8888)?);
            cmd.args(["--frontend-listen", &listen])
                .args(&rest_flags)
                .arg("--data-socket")
                .arg(&socket);
            frontend_url = Some(format!("http://{listen}"));
        }
        let proxy = start_component("function-proxy", cmd)?;
        let proxy_address = proxy.address.clone();
        started.push(proxy);
        let mut cmd = component("function-agent");
        cmd.arg("--listen")
            .arg(format!("{bind}:{}", port(58866)?))
            .args(node_flags)
            .args(["--proxy", &proxy_address, "--proxy-socket"])
            .arg(&instance_socket)
            .arg("--data-socket")
            .arg(&socket)
            .args(["--data-transfer", &data_transfer])
            .arg("--work-dir")
            .arg(node_dir.join("work"));
        if let Some(c) = a.cpu {
            cmd.arg("--cpu").arg(c.to_string());
        }
        if let Some(m) = a.memory {
            cmd.arg("--memory").arg(m.to_string());
        }
        for l in &a.labels {
            cmd.arg("--label").arg(l);
        }
        for r in &a.resources {
            cmd.arg("--resource").arg(r);
        }
        started.push(start_component("function-agent", cmd)?);
        Ok(Session {
            role: if a.master {
                "master".into()
            } else {
                "worker".into()
            },
            session_dir: dir.clone(),
            node_id: node_id.clone(),
            master_address,
            etcd_endpoints,
            frontend_url,
            meta_url,
            proxy_address,
            data_socket: socket,
            token_file,
            data_transfer,
            components: Vec::new(),
            created_unix_ms: now_ms(),
        })
    })();
    let mut session = match result {
        Ok(s) => s,
        Err(e) => {
            // Leave nothing half-started behind.
            for c in started.iter().rev() {
                stop_pid(c.pid, Duration::from_secs(5));
            }
            return Err(e);
        }
    };
    session.components = started;
    session.save(&dir)?;
    if a.session_dir.is_none() {
        let latest = yr_runtime::session::latest();
        let _ = std::fs::remove_file(&latest);
        let _ = std::os::unix::fs::symlink(&dir, &latest);
    }
    // Wait until the master sees this node, so that a deploy right after start can place work.
    wait_for_node(&session)?;
    let mut out = std::io::stdout();
    writeln!(
        out,
        "yr {} node {} started; session {}",
        session.role,
        session.node_id,
        dir.display()
    )?;
    writeln!(out, "  master  {}", session.master_address)?;
    writeln!(out, "  etcd    {}", session.etcd_endpoints.join(","))?;
    writeln!(out, "  proxy   {}", session.proxy_address)?;
    writeln!(out, "  data    {}", session.data_socket.display())?;
    if let (Some(f), Some(m)) = (&session.frontend_url, &session.meta_url) {
        writeln!(out, "  REST    frontend {f}  meta service {m}")?;
    }
    if let Some(t) = &session.token_file {
        writeln!(
            out,
            "  token   {} (send it as Authorization: Bearer <token>)",
            t.display()
        )?;
    }
    if a.master {
        writeln!(out, "To add a worker node, run on it:")?;
        writeln!(
            out,
            "  yr start --worker --master-address {}",
            session.master_address
        )?;
    }
    Ok(())
}

/// Generates the cluster's REST access token (256 bits from the kernel's random source) into
/// `DIR/token`, readable by this user only; returns its path.
fn write_token(dir: &Path) -> Result<PathBuf> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut raw = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut raw))
        .context("cannot read /dev/urandom for the access token")?;
    let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let path = dir.join("token");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    writeln!(f, "{token}")?;
    Ok(path)
}

fn wait_for_node(s: &Session) -> Result<()> {
    let rt = rt()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let st = rt.block_on(async {
            master_client(&s.master_address)?
                .status(Empty {})
                .await
                .map_err(anyhow::Error::from)
        });
        if let Ok(st) = st {
            if st.into_inner().nodes.iter().any(|n| n.node_id == s.node_id) {
                return Ok(());
            }
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "node {} did not register with the master within 20 s (see {}/logs)",
                s.node_id,
                s.session_dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn chrono_like_stamp() -> String {
    let secs = now_ms() / 1000;
    // UTC date-time from Unix seconds (civil-from-days), to name session folders readably.
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}-{}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        std::process::id()
    )
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

/// Whether `pid` is a process that has not ended (a zombie has: it only awaits its parent).
pub fn running(pid: u32) -> bool {
    alive(pid) && !is_zombie(pid)
}

/// SIGTERM to the process and its group, then SIGKILL to both after `grace`.
fn stop_pid(pid: u32, grace: Duration) -> bool {
    if pid == 0 || !alive(pid) {
        return true;
    }
    // SAFETY: plain signals to a process (and its group: each component leads its own session).
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    let deadline = std::time::Instant::now() + grace;
    while alive(pid) && !reaped(pid) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let clean = !alive(pid) || reaped(pid);
    // SAFETY: as above; the group sweep catches function processes of a killed agent.
    unsafe {
        libc::kill(-(pid as i32), libc::SIGKILL);
        libc::kill(pid as i32, libc::SIGKILL);
    }
    clean
}

/// A zombie child of ours counts as gone; reap it.
fn reaped(pid: u32) -> bool {
    let mut status = 0;
    // SAFETY: waitpid with WNOHANG on a pid; harmless if it is not our child (ECHILD).
    let r = unsafe { libc::waitpid(pid as i32, &mut status, libc::WNOHANG) };
    r == pid as i32 || is_zombie(pid)
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

pub fn stop(a: StopArgs) -> Result<()> {
    let s = load_session(&a.session)?;
    let grace = if a.force {
        Duration::ZERO
    } else {
        Duration::from_secs(10)
    };
    let mut forced = Vec::new();
    for c in s.components.iter().rev() {
        if !stop_pid(c.pid, grace) {
            forced.push(c.name.clone());
        }
    }
    let _ = std::fs::remove_file(&s.data_socket);
    std::fs::remove_file(s.session_dir.join(yr_runtime::session::SESSION_FILE))?;
    let latest = yr_runtime::session::latest();
    if std::fs::read_link(&latest).ok().as_deref() == Some(s.session_dir.as_path()) {
        let _ = std::fs::remove_file(&latest);
    }
    println!(
        "stopped {} component(s) of node {}{}",
        s.components.len(),
        s.node_id,
        if forced.is_empty() {
            String::new()
        } else {
            format!(" (killed after the deadline: {})", forced.join(", "))
        }
    );
    Ok(())
}

pub fn status(a: StatusArgs) -> Result<()> {
    let s = load_session(&a.session)?;
    let st = rt()?
        .block_on(async {
            master_client(&s.master_address)?
                .status(Empty {})
                .await
                .map_err(anyhow::Error::from)
        })
        .with_context(|| format!("cannot reach the master at {}", s.master_address))?
        .into_inner();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&status_json(&st))?);
        return Ok(());
    }
    println!("NODES");
    for n in &st.nodes {
        let t = n.total.clone().unwrap_or_default();
        let u = n.used.clone().unwrap_or_default();
        println!(
            "  {:<24} alive  cpu {}/{}m  memory {}/{} MiB  shm {}/{} MiB  {}",
            n.node_id,
            u.cpu_millis,
            t.cpu_millis,
            u.memory_mib,
            t.memory_mib,
            n.shm_used_bytes >> 20,
            n.shm_total_bytes >> 20,
            n.proxy_address
        );
    }
    for d in &st.dead_nodes {
        println!("  {d:<24} dead");
    }
    println!("FUNCTIONS");
    for f in &st.functions {
        let running = st
            .instances
            .iter()
            .filter(|i| i.function == f.name && i.state == InstanceState::Running as i32)
            .count();
        println!(
            "  {:<20} min {} max {} concurrency {}  running {}",
            f.name, f.min_instances, f.max_instances, f.concurrency, running
        );
    }
    println!("INSTANCES");
    for i in &st.instances {
        println!(
            "  {:<28} {:<10} {:<9} node {:<20} pid {:<7} cpu {:>4}m  rss {:>4} MiB  {}{}",
            i.instance_id,
            i.function,
            yr_control::lifecycle::state_name(i.state),
            i.node_id,
            i.pid,
            i.cpu_millis_used,
            i.memory_bytes_used >> 20,
            if i.name.is_empty() {
                String::new()
            } else {
                format!("name {} ", i.name)
            },
            if i.error.is_empty() {
                String::new()
            } else {
                format!("error: {}", i.error)
            }
        );
    }
    Ok(())
}

fn status_json(st: &ClusterStatus) -> serde_json::Value {
    let res = |r: &Option<Resources>| {
        let r = r.clone().unwrap_or_default();
        serde_json::json!({"cpu_millis": r.cpu_millis, "memory_mib": r.memory_mib, "custom": r.custom})
    };
    serde_json::json!({
        "nodes": st.nodes.iter().map(|n| serde_json::json!({
            "node_id": n.node_id, "alive": true, "hostname": n.hostname,
            "proxy_address": n.proxy_address, "agent_address": n.agent_address,
            "total": res(&n.total), "used": res(&n.used), "labels": n.labels,
            "shm_total_bytes": n.shm_total_bytes, "shm_used_bytes": n.shm_used_bytes,
            "cpu_millis_busy": n.cpu_millis_busy, "memory_used_bytes": n.memory_used_bytes,
        })).chain(st.dead_nodes.iter().map(|d| serde_json::json!({"node_id": d, "alive": false}))).collect::<Vec<_>>(),
        "functions": st.functions.iter().map(|f| serde_json::json!({
            "name": f.name, "version": f.version, "code_path": f.code_path, "handler": f.handler,
            "min_instances": f.min_instances, "max_instances": f.max_instances,
            "concurrency": f.concurrency, "timeout_ms": f.timeout_ms, "resources": res(&f.resources),
        })).collect::<Vec<_>>(),
        "instances": st.instances.iter().map(|i| serde_json::json!({
            "instance_id": i.instance_id, "function": i.function, "name": i.name,
            "stateful": i.stateful, "state": yr_control::lifecycle::state_name(i.state),
            "node_id": i.node_id, "pid": i.pid, "restarts": i.restarts, "error": i.error,
            "cpu_millis_used": i.cpu_millis_used, "memory_bytes_used": i.memory_bytes_used,
        })).collect::<Vec<_>>(),
    })
}

pub fn function(cmd: FunctionCmd) -> Result<()> {
    match cmd {
        FunctionCmd::Deploy(a) => deploy(*a),
        FunctionCmd::Delete { name, session } => {
            let s = load_session(&session)?;
            rt()?.block_on(async {
                master_client(&s.master_address)?
                    .delete_function(FunctionRef { name: name.clone() })
                    .await
                    .map_err(|e| anyhow!("{}", e.message()))
            })?;
            println!("deleted {name}");
            Ok(())
        }
        FunctionCmd::List { session } => {
            let s = load_session(&session)?;
            let l = rt()?
                .block_on(async {
                    master_client(&s.master_address)?
                        .list_functions(Empty {})
                        .await
                        .map_err(|e| anyhow!("{}", e.message()))
                })?
                .into_inner();
            for f in l.functions {
                println!("{}\t{}\t{}", f.name, f.version, f.code_path);
            }
            Ok(())
        }
    }
}

fn deploy(a: DeployArgs) -> Result<()> {
    let s = load_session(&a.session)?;
    let (t, base) = match &a.file {
        Some(f) => {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read {}", f.display()))?;
            let t: FunctionToml = toml::from_str(&text)
                .with_context(|| format!("{} is not a valid function file", f.display()))?;
            (t, f.parent().map(Path::to_path_buf).unwrap_or_default())
        }
        None => (FunctionToml::default(), std::env::current_dir()?),
    };
    let code = a
        .code
        .clone()
        .map(|c| std::env::current_dir().map(|d| d.join(c)))
        .transpose()?
        .or_else(|| t.code_path.as_ref().map(|c| base.join(c)))
        .ok_or_else(|| {
            anyhow!("the function's code is missing: pass --code PATH or set code_path")
        })?;
    let mut env = t.env.clone().unwrap_or_default();
    env.extend(pairs(&a.env, "--env")?);
    let mut custom = t.resources.clone().unwrap_or_default();
    for (k, v) in pairs(&a.resources, "--resource")? {
        let n: f64 = v
            .parse()
            .map_err(|_| anyhow!("--resource {k}={v}: {v:?} is not a number"))?;
        custom.insert(k, n);
    }
    let code = code
        .canonicalize()
        .with_context(|| format!("code path {} does not exist", code.display()))?;
    let spec = FunctionSpec {
        name: a
            .name
            .clone()
            .or(t.name)
            .ok_or_else(|| anyhow!("the function needs a name (--name or name = ...)"))?,
        version: t.version.unwrap_or_default(),
        runtime: "posix-custom-runtime".into(),
        code_path: code.display().to_string(),
        entrypoint: a.entrypoint.clone().or(t.entrypoint).unwrap_or_default(),
        handler: a.handler.clone().or(t.handler).unwrap_or_default(),
        resources: Some(Resources {
            cpu_millis: a.cpu.or(t.cpu).unwrap_or(0),
            memory_mib: a.memory.or(t.memory).unwrap_or(0),
            custom: custom.clone(),
        }),
        min_instances: a.min_instances.or(t.min_instances).unwrap_or(0),
        max_instances: a.max_instances.or(t.max_instances).unwrap_or(0),
        concurrency: a.concurrency.or(t.concurrency).unwrap_or(0),
        timeout_ms: a.timeout_ms.or(t.timeout_ms).unwrap_or(0),
        env,
        max_retries: a.max_retries.or(t.max_retries).unwrap_or(3),
        scheduling: Some(SchedulingOptions {
            affinity: a.affinity.clone(),
            spread: a.spread,
            preferred_node: String::new(),
        }),
        ..Default::default()
    };
    let r = rt()?
        .block_on(async {
            master_client(&s.master_address)?
                .deploy(DeployRequest {
                    spec: Some(spec),
                    ..Default::default()
                })
                .await
                .map_err(|e| anyhow!("{}", e.message()))
        })?
        .into_inner();
    let spec = r.spec.unwrap_or_default();
    println!(
        "{} function {} (handler {}, code {})",
        if r.created { "deployed" } else { "updated" },
        spec.name,
        spec.handler,
        spec.code_path
    );
    Ok(())
}

pub fn invoke(a: InvokeArgs) -> Result<()> {
    let s = load_session(&a.session)?;
    let payload = match (&a.data, &a.data_file) {
        (Some(d), _) => d.clone().into_bytes(),
        (None, Some(f)) => {
            std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?
        }
        (None, None) => Vec::new(),
    };
    let req = InvokeRequest {
        function: a.name.clone(),
        instance: a.instance.clone().unwrap_or_default(),
        payload: payload.into(),
        timeout_ms: a.timeout_ms.unwrap_or(0),
        method: a.method.clone().unwrap_or_default(),
        ..Default::default()
    };
    let r = rt()?
        .block_on(async {
            let mut p = ProxyClient::new(yr_control::channel(&s.proxy_address)?)
                .max_decoding_message_size(yr_control::proxy::MAX_MESSAGE)
                .max_encoding_message_size(yr_control::proxy::MAX_MESSAGE);
            p.invoke(req)
                .await
                .map_err(|e| anyhow!("proxy {}: {}", s.proxy_address, e.message()))
        })?
        .into_inner();
    if r.error_kind != ErrorKind::ErrorNone as i32 {
        let kind = ErrorKind::try_from(r.error_kind)
            .map(|k| k.as_str_name())
            .unwrap_or("ERROR");
        bail!("{kind}: {}", r.error);
    }
    let mut out = std::io::stdout();
    out.write_all(&r.payload)?;
    if !r.payload.ends_with(b"\n") && std::io::IsTerminal::is_terminal(&out) {
        writeln!(out)?;
    }
    Ok(())
}

pub fn instance(cmd: InstanceCmd) -> Result<()> {
    match cmd {
        InstanceCmd::Create {
            function,
            name,
            affinity,
            wait_ms,
            session,
        } => {
            let s = load_session(&session)?;
            let r = rt()?
                .block_on(async {
                    master_client(&s.master_address)?
                        .create_instance(CreateInstanceRequest {
                            function,
                            name,
                            stateful: true,
                            scheduling: Some(SchedulingOptions {
                                affinity,
                                ..Default::default()
                            }),
                            wait_ms,
                            ..Default::default()
                        })
                        .await
                        .map_err(|e| anyhow!("{}", e.message()))
                })?
                .into_inner();
            let i = r.instance.unwrap_or_default();
            println!(
                "{} {} on node {}",
                i.instance_id,
                yr_control::lifecycle::state_name(i.state),
                i.node_id
            );
            Ok(())
        }
        InstanceCmd::Kill { instance, session } => {
            let s = load_session(&session)?;
            rt()?.block_on(async {
                master_client(&s.master_address)?
                    .kill_instance(InstanceRef {
                        instance_id: String::new(),
                        name: instance.clone(),
                    })
                    .await
                    .map_err(|e| anyhow!("{}", e.message()))
            })?;
            println!("stopped {instance}");
            Ok(())
        }
    }
}
