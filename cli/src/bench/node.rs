//! What the cluster benches (invoke, REST, Python) call: a one-node cluster in a temporary
//! folder (`yr start --master --ports auto`) and the no-op function's code.
//!
//! The function is an executable with an `echo` handler (the request's bytes back). For
//! `yr bench` it is the `hello` example built next to `yr`. A criterion bench cannot count on
//! that (`cargo bench` builds no other package's plain binaries), so it deploys its own
//! executable, whose `main` first calls [`serve_echo_if_instance`]: started by the agent with
//! [`SELF_SERVE_ENV`] in its environment, the bench process becomes the function process (the
//! same `yr_runtime::App` and handler as `hello`'s).

use std::path::PathBuf;

use anyhow::{anyhow, Result};
use yr_runtime::session::Session;

use crate::util::{NodesOf, Yr};

/// The no-op handler both function codes serve.
pub const ECHO_HANDLER: &str = "echo";

/// Set in the function's environment when its code is a bench executable serving
/// [`ECHO_HANDLER`] itself.
pub const SELF_SERVE_ENV: &str = "YR_BENCH_SERVE_ECHO";

/// The executables a cluster bench runs.
#[derive(Clone, Debug)]
pub struct Bins {
    /// Runs the components and `yr start` / `yr stop`.
    pub yr: Yr,
    /// The no-op function's code: an executable with an [`ECHO_HANDLER`] handler.
    pub function: PathBuf,
    /// Environment of the function's processes.
    pub function_env: Vec<(String, String)>,
}

impl Bins {
    /// For `yr bench`: this executable, and the `hello` example built next to it.
    pub fn for_yr_command() -> Result<Bins> {
        let yr = Yr::this()?;
        let function = yr.sibling("hello").ok_or_else(|| {
            anyhow!(
                "the example function `hello` is not built next to {} (cargo build --release --bins)",
                yr.path().display()
            )
        })?;
        Ok(Bins {
            yr,
            function,
            function_env: Vec::new(),
        })
    }

    /// For a bench whose functions bring their own code (the Python bench deploys Python
    /// functions): this executable, and no no-op function (`function` is empty).
    pub fn yr_only() -> Result<Bins> {
        Ok(Bins {
            yr: Yr::this()?,
            function: PathBuf::new(),
            function_env: Vec::new(),
        })
    }

    /// For a criterion bench: the `yr` at `yr` (`env!("CARGO_BIN_EXE_yr")`), and the running
    /// bench executable as the function's code (its `main` must call
    /// [`serve_echo_if_instance`] before anything else).
    pub fn for_cargo_bench(yr: impl Into<PathBuf>) -> Result<Bins> {
        let function = std::env::current_exe()
            .map_err(|e| anyhow!("cannot find the bench executable: {e}"))?;
        Ok(Bins {
            yr: Yr::at(yr),
            function,
            function_env: vec![(SELF_SERVE_ENV.to_string(), "1".to_string())],
        })
    }
}

/// Serves [`ECHO_HANDLER`] and never returns when this process was started by an agent as an
/// instance of a function deployed by [`Bins::for_cargo_bench`]; otherwise returns at once.
pub fn serve_echo_if_instance() {
    if std::env::var_os("YR_INSTANCE_ID").is_some() && std::env::var_os(SELF_SERVE_ENV).is_some() {
        yr_runtime::App::new()
            .handler(ECHO_HANDLER, |_ctx, input| Ok(input.to_vec()))
            .run()
    }
}

/// A one-node cluster in a temporary folder: stopped, then its folder removed, when dropped.
pub struct OneNode {
    // Declared first, so dropped first: the cluster stops before its folder goes.
    _guard: NodesOf,
    _tmp: tempfile::TempDir,
    /// The node's session folder (`--session-dir`).
    pub dir: PathBuf,
    /// What `yr start` wrote there: the node's addresses.
    pub session: Session,
    /// The executables it runs, and the function's code.
    pub bins: Bins,
}

impl OneNode {
    /// Starts a one-node cluster (`yr start --master --ports auto`, 64 MiB of shared memory)
    /// in a new temporary folder named `prefix...`.
    pub fn start(bins: &Bins, prefix: &str) -> Result<OneNode> {
        Self::start_with(bins, prefix, &["--shm-size", "64MiB"])
    }

    /// [`OneNode::start`] with `extra` arguments of `yr start` (`--shm-size`, `--cpu`...)
    /// instead of the 64 MiB arena.
    pub fn start_with(bins: &Bins, prefix: &str, extra: &[&str]) -> Result<OneNode> {
        let tmp = tempfile::Builder::new().prefix(prefix).tempdir()?;
        let dir = tmp.path().join("session");
        let dir_s = dir.display().to_string();
        let mut guard = NodesOf::new(&bins.yr);
        // Pushed before the start, so that a start that fails half-way is stopped too.
        guard.dirs.push(dir_s.clone());
        let mut args = vec![
            "start",
            "--master",
            "--session-dir",
            &dir_s,
            "--ports",
            "auto",
        ];
        args.extend_from_slice(extra);
        bins.yr.run(&args)?;
        let session = Session::load(&dir)?;
        // The bench's clients are this node's, as a driver on it would be.
        session.install_tls().map_err(anyhow::Error::msg)?;
        Ok(OneNode {
            _guard: guard,
            _tmp: tmp,
            dir,
            session,
            bins: bins.clone(),
        })
    }
}
