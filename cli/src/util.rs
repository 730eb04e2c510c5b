//! Small helpers shared by the subcommands: sizes on the command line, the `yr` executable that
//! child processes run, and child processes that announce readiness on stdout.
//!
//! Every child is started through a [`Yr`], never through `current_exe()` directly: inside
//! `cargo bench` the current executable is the bench harness, not `yr`, so the benches hand in
//! the path cargo built (`env!("CARGO_BIN_EXE_yr")`) and share this code with `yr bench`.

use anyhow::{anyhow, bail, Context, Result};
use std::io::{BufRead, BufReader};
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};

/// clap value parser for sizes like `512MiB`.
pub fn size_arg(s: &str) -> Result<u64, String> {
    yr_datastore::parse_size(s)
}

/// The `yr` executable that child processes (components, `yr start`, `yr stop`) are run from.
#[derive(Clone, Debug)]
pub struct Yr {
    path: PathBuf,
}

impl Yr {
    /// This process's own executable: the `yr` command running now.
    pub fn this() -> Result<Yr> {
        let path = std::env::current_exe().context("cannot find the yr executable")?;
        Ok(Yr { path })
    }

    /// The `yr` executable at `path` (a bench passes `env!("CARGO_BIN_EXE_yr")`).
    pub fn at(path: impl Into<PathBuf>) -> Yr {
        Yr { path: path.into() }
    }

    /// Where the executable is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A program built next to it (the examples: `hello`, `pipeline`), if it is there.
    pub fn sibling(&self, name: &str) -> Option<PathBuf> {
        self.path
            .parent()
            .map(|d| d.join(name))
            .filter(|p| p.is_file())
    }

    /// Runs `yr ARGS` to completion and returns its stdout; fails with its stderr.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.path)
            .args(args)
            .output()
            .with_context(|| format!("cannot run {}", self.path.display()))?;
        if !out.status.success() {
            bail!(
                "yr {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// A data worker started as a child process, stopped (SIGTERM, then
/// SIGKILL after a deadline) when dropped.
pub struct WorkerProcess {
    pub child: Child,
    _stdout: BufReader<ChildStdout>,
    /// The peer transfer address from the ready line (`transfer=ADDR`),
    /// when the worker was started with `--transfer-address`.
    transfer: Option<SocketAddrV4>,
}

impl WorkerProcess {
    /// Starts `yr component data-worker` of this executable; see [`WorkerProcess::start_with`].
    pub fn start(socket: &Path, shm_size: u64, spill_dir: &Path, extra: &[&str]) -> Result<Self> {
        Self::start_with(&Yr::this()?, socket, shm_size, spill_dir, extra)
    }

    /// Starts `yr component data-worker` of `yr` with the given flags and waits for its ready
    /// line (the worker prints it once clients can connect).
    pub fn start_with(
        yr: &Yr,
        socket: &Path,
        shm_size: u64,
        spill_dir: &Path,
        extra: &[&str],
    ) -> Result<Self> {
        let mut child = Command::new(yr.path())
            .args(["component", crate::defaults::name::DATA_WORKER, "--socket"])
            .arg(socket)
            .args(["--shm-size", &shm_size.to_string(), "--spill-dir"])
            .arg(spill_dir)
            .args(extra)
            // The parent reports what matters; the worker's own log stays
            // quiet unless the user asks for it.
            .env(
                "YR_LOG",
                std::env::var("YR_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start the data worker")?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("data worker stdout not captured"))?;
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        if !line.starts_with("ready") {
            let status = child.wait()?;
            bail!("data worker did not start ({status})");
        }
        let mut w = WorkerProcess {
            child,
            _stdout: reader,
            transfer: None,
        };
        // On a bad address `w` drops here, which stops the worker.
        if let Some(a) = line
            .split_whitespace()
            .find_map(|word| word.strip_prefix("transfer="))
        {
            w.transfer =
                Some(a.parse().with_context(|| {
                    format!("data worker announced a bad transfer address {a:?}")
                })?);
        }
        Ok(w)
    }

    /// The address other workers pull this worker's objects from, if it has one.
    pub fn transfer_addr(&self) -> Option<SocketAddrV4> {
        self.transfer
    }

    /// The worker's process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Asks the worker to stop and waits for it.
    pub fn stop(&mut self) -> Result<()> {
        terminate(&mut self.child, std::time::Duration::from_secs(10))
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// SIGTERM, wait up to `grace`, then SIGKILL.
pub fn terminate(child: &mut Child, grace: std::time::Duration) -> Result<()> {
    if child.try_wait()?.is_some() {
        return Ok(());
    }
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline {
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill()?;
    child.wait()?;
    Ok(())
}

/// Runs `yr ARGS` (this executable) to completion and returns its stdout; fails with its stderr.
pub fn run_self(args: &[&str]) -> Result<String> {
    Yr::this()?.run(args)
}

/// The session folders of nodes this command started: each is stopped (`yr stop --force`),
/// last started first, however the command ends. Clear it after a clean stop.
pub struct Nodes(pub Vec<String>);

impl Drop for Nodes {
    fn drop(&mut self) {
        if let Ok(yr) = Yr::this() {
            stop_nodes(&yr, &self.0);
        }
    }
}

/// Like [`Nodes`], for nodes started with a given `yr` executable (the benches').
pub struct NodesOf {
    yr: Yr,
    /// Session folders, in the order the nodes started.
    pub dirs: Vec<String>,
}

impl NodesOf {
    /// No nodes yet; push each session folder once its `yr start` has been run.
    pub fn new(yr: &Yr) -> NodesOf {
        NodesOf {
            yr: yr.clone(),
            dirs: Vec::new(),
        }
    }
}

impl Drop for NodesOf {
    fn drop(&mut self) {
        stop_nodes(&self.yr, &self.dirs);
    }
}

/// `yr stop --force` for each session folder, last first; failures are ignored (this runs on
/// the way out, when the node may already be gone).
fn stop_nodes(yr: &Yr, dirs: &[String]) {
    for d in dirs.iter().rev() {
        let _ = yr.run(&["stop", "--force", "--session-dir", d]);
    }
}
