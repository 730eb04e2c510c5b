//! Test support: start real `yr` processes in temporary folders.
//!
//! Integration tests run the `yr` binary built by `cargo build` (the
//! Makefile's `test` target builds it first; `YR_BIN` overrides the path).
//! Every helper waits for a process's own readiness signal (a line on its
//! stdout) rather than sleeping, and kills what it started when dropped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use yr_datastore::Client;

pub mod cluster;
pub mod http;
pub mod webdriver;

/// Path of the `yr` binary under test.
pub fn yr_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("YR_BIN") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/<test-binary> -> target/<profile>/yr
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let bin = profile_dir.join("yr");
    assert!(
        bin.exists(),
        "{} not found: build it first with `cargo build --bin yr` (make test does)",
        bin.display()
    );
    bin
}

/// A data worker running as a child process in its own temporary folder.
pub struct DataWorker {
    /// The worker process.
    pub child: Child,
    /// Its socket.
    pub socket: PathBuf,
    /// Its spill folder.
    pub spill_dir: PathBuf,
    /// Where other workers pull from (when started with `--transfer-address`).
    pub transfer: Option<String>,
    _stdout: BufReader<ChildStdout>,
    /// Keeps the folder alive as long as the worker.
    pub dir: tempfile::TempDir,
}

impl DataWorker {
    /// Starts a worker with `shm_size` bytes of arena and extra flags.
    pub fn start(shm_size: u64, extra: &[&str]) -> DataWorker {
        let dir = tempfile::Builder::new()
            .prefix("yr-test-")
            .tempdir()
            .expect("temp dir");
        let socket = dir.path().join("dw.sock");
        let spill_dir = dir.path().join("spill");
        let mut child = Command::new(yr_bin())
            .args(["component", "data-worker", "--socket"])
            .arg(&socket)
            .args(["--shm-size", &shm_size.to_string(), "--spill-dir"])
            .arg(&spill_dir)
            .args(extra)
            .env("YR_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("start yr component data-worker");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        out.read_line(&mut line).expect("read ready line");
        assert!(line.starts_with("ready"), "worker did not start: {line:?}");
        let transfer = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("transfer="))
            .map(str::to_string);
        DataWorker {
            child,
            socket,
            spill_dir,
            transfer,
            _stdout: out,
            dir,
        }
    }

    /// Starts a worker that serves other workers on a free loopback port,
    /// holding the [`cluster_secret`] every networked worker of this test
    /// process holds. Workers only pull from those they are introduced to
    /// ([`introduce`]).
    pub fn start_networked(shm_size: u64) -> DataWorker {
        let secret = cluster_secret().display().to_string();
        Self::start(
            shm_size,
            &[
                "--transfer-address",
                "127.0.0.1:0",
                "--cluster-secret",
                &secret,
            ],
        )
    }

    /// Its transfer address, parsed.
    pub fn transfer_addr(&self) -> Option<std::net::SocketAddrV4> {
        self.transfer.as_deref().and_then(|t| t.parse().ok())
    }

    /// A new client connection.
    pub fn client(&self) -> Client {
        Client::connect(&self.socket).expect("connect to data worker")
    }

    /// Process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        self.child.wait().expect("wait for worker")
    }
}

impl Drop for DataWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The folder of [`cluster_secret`] and the file in it.
static SECRET: std::sync::OnceLock<(tempfile::TempDir, PathBuf)> = std::sync::OnceLock::new();

/// Removes [`SECRET`]'s folder when the process exits (a static is never dropped).
extern "C" fn remove_secret_dir() {
    if let Some((dir, _)) = SECRET.get() {
        let _ = std::fs::remove_dir_all(dir.path());
    }
}

/// The cluster secret shared by the networked workers this test process
/// starts: a 0600 file in a folder that lives as long as the process.
pub fn cluster_secret() -> &'static Path {
    let (_, path) = SECRET.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("yr-test-secret-")
            .tempdir()
            .expect("temp dir");
        let path = dir.path().join("cluster-secret");
        yr_datastore::peer_auth::create_secret_file(&path).expect("cluster secret");
        // SAFETY: atexit(3) with a function that takes no arguments and does not unwind (it
        // ignores every error); registering it more than once is harmless.
        unsafe { libc::atexit(remove_secret_dir) };
        (dir, path)
    });
    path
}

/// Makes `workers` one cluster, as the nodes' agents do: tells each the
/// transfer addresses of all (the only workers it pulls from).
pub fn introduce(workers: &[&DataWorker]) {
    let addrs: Vec<_> = workers.iter().filter_map(|w| w.transfer_addr()).collect();
    for w in workers {
        w.client().set_peers(&addrs).expect("set peers");
    }
}

/// Deterministic bytes for a given seed.
pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// FNV-1a over the bytes: compares large buffers without printing them.
pub fn checksum(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
        (h ^ x as u64).wrapping_mul(0x0100_0000_01b3)
    })
}
