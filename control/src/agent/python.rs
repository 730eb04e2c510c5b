//! Python function processes: which interpreter runs an instance of a `python3.x` function, the
//! environment `python -m yr.worker` reads its hooks and user data from, and the check that the
//! interpreter can import yr at all.
//!
//! Invariants:
//! - The interpreter is decided by [`interpreter`] alone, first that applies: the function's
//!   environment `YR_PYTHON` (a Python driver names its own interpreter there), the node's
//!   configured one (`yr start --python`), else `python3` on `PATH`.
//! - An interpreter that imports `yr._yr` is remembered for the agent's lifetime; one that does
//!   not is checked again at the next start, so installing the package fixes a node without a
//!   restart. A start with an interpreter that fails the check fails with an error that names the
//!   interpreter, the runtime, the import error and the fix.
//! - The stop grace of a Python instance covers its `pre_stop` hook ([`stop_grace`]): the agent
//!   never kills a process whose hook is still within its timeout.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::function::Spec;

/// The function environment key that names the interpreter for its instances.
pub const PYTHON_ENV: &str = "YR_PYTHON";
/// The interpreter used when neither the function nor the node names one.
pub const DEFAULT_PYTHON: &str = "python3";
/// What a stopping process gets on top of its `pre_stop` timeout: the hook's own deadline fires
/// first, and the process still has to flush and exit.
pub const PRE_STOP_MARGIN: Duration = Duration::from_secs(5);
/// How long the import check may take (a cold disk, a large site-packages).
const CHECK_WITHIN: Duration = Duration::from_secs(60);
/// How much of a failed import's stderr the error keeps.
const CHECK_TAIL: usize = 1024;

/// The interpreter for `function_env`'s instances on a node configured with `configured`.
pub fn interpreter(function_env: &HashMap<String, String>, configured: Option<&str>) -> String {
    function_env
        .get(PYTHON_ENV)
        .filter(|p| !p.trim().is_empty())
        .map(String::as_str)
        .or(configured.filter(|p| !p.trim().is_empty()))
        .unwrap_or(DEFAULT_PYTHON)
        .to_string()
}

/// How long a stopping instance of `spec` gets between SIGTERM and SIGKILL: `base`, or its
/// `pre_stop` timeout plus [`PRE_STOP_MARGIN`] when that is longer.
pub fn stop_grace(spec: &Spec, base: Duration) -> Duration {
    if spec.pre_stop.is_empty() {
        return base;
    }
    base.max(Duration::from_millis(u64::from(spec.pre_stop_timeout_ms)) + PRE_STOP_MARGIN)
}

/// The environment `python -m yr.worker` reads, besides what every function process gets: the
/// runtime, the kind, the hooks with their timeouts, the user data (the function's environment
/// as one JSON object, for `context.getUserData`), what the context reports (version, call
/// timeout, cpu and memory), unbuffered output (so `print` reaches `stdout.log` as it
/// happens, not when a buffer fills) and no bytecode files (the code folder stays untouched).
pub fn worker_env(spec: &Spec) -> Vec<(&'static str, String)> {
    // A map of strings always serializes; the fallback keeps a start from failing over it.
    let user_data = serde_json::to_string(&spec.env).unwrap_or_else(|_| "{}".into());
    vec![
        ("YR_RUNTIME", spec.runtime.clone()),
        ("YR_FUNCTION_KIND", spec.kind.clone()),
        ("YR_INITIALIZER", spec.initializer.clone()),
        ("YR_PRE_STOP", spec.pre_stop.clone()),
        (
            "YR_INITIALIZER_TIMEOUT_MS",
            spec.initializer_timeout_ms.to_string(),
        ),
        (
            "YR_PRE_STOP_TIMEOUT_MS",
            spec.pre_stop_timeout_ms.to_string(),
        ),
        ("YR_USER_DATA", user_data),
        ("YR_FUNCTION_VERSION", spec.version.clone()),
        ("YR_FUNCTION_TIMEOUT_MS", spec.timeout_ms.to_string()),
        ("YR_CPU_MILLIS", spec.resources().cpu_millis.to_string()),
        ("YR_MEMORY_MIB", spec.resources().memory_mib.to_string()),
        ("PYTHONUNBUFFERED", "1".into()),
        // A code folder is used in place and never modified: no __pycache__ written into it.
        ("PYTHONDONTWRITEBYTECODE", "1".into()),
    ]
}

/// The arguments that make an interpreter a function process.
pub const WORKER_ARGS: [&str; 2] = ["-m", "yr.worker"];

/// The interpreters known to import `yr._yr`.
#[derive(Default)]
pub struct Checked(Mutex<HashSet<String>>);

impl Checked {
    fn known(&self, python: &str) -> bool {
        // A poisoned set is still a set of strings: use it.
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(python)
    }

    fn remember(&self, python: &str) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(python.to_string());
    }

    /// Succeeds when `python` imports `yr._yr` (checked once per interpreter); else the error
    /// names the interpreter, `runtime`, what went wrong and how to fix it.
    pub async fn ensure(&self, python: &str, runtime: &str) -> Result<()> {
        if self.known(python) {
            return Ok(());
        }
        let fix = "install the yr Python package into that interpreter (from a checkout of yr: \
                   `pip install ./python`, or `make python` for the repository's own environment), \
                   or start the node with `yr start --python PATH` naming one that has it (a \
                   function's environment YR_PYTHON overrides the node's choice)";
        let refuse = |why: String| {
            Error::invalid(
                "runtime",
                format!(
                    "{runtime:?} needs a Python that imports yr, but the interpreter {python:?} \
                     {why}; {fix}"
                ),
            )
        };
        let mut cmd = tokio::process::Command::new(python);
        // From "/", so that nothing in the agent's own folder shadows the package.
        cmd.args(["-c", "import yr._yr"])
            .current_dir("/")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let out = match tokio::time::timeout(CHECK_WITHIN, cmd.output()).await {
            Err(_) => {
                return Err(refuse(format!(
                    "did not finish `import yr._yr` within {} s",
                    CHECK_WITHIN.as_secs()
                )))
            }
            Ok(Err(e)) => return Err(refuse(format!("cannot be run ({e})"))),
            Ok(Ok(out)) => out,
        };
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let err = err.trim();
            let start = err.len().saturating_sub(CHECK_TAIL);
            // Cut at a character boundary: the tail is for people, any boundary will do.
            let start = (start..=err.len())
                .find(|&i| err.is_char_boundary(i))
                .unwrap_or(err.len());
            return Err(refuse(format!(
                "fails `import yr._yr` ({}): {}",
                out.status,
                &err[start..]
            )));
        }
        self.remember(python);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yr_proto::FunctionSpec;

    fn spec(pre_stop: &str, pre_stop_timeout_ms: u32) -> Spec {
        let Ok(s) = Spec::try_from(FunctionSpec {
            name: "f".into(),
            runtime: "python3.9".into(),
            handler: "demo.handler".into(),
            pre_stop: pre_stop.into(),
            pre_stop_timeout_ms,
            env: HashMap::from([("show_date".to_string(), "yes".to_string())]),
            ..Default::default()
        }) else {
            panic!("a valid spec was refused");
        };
        s
    }

    #[test]
    fn the_function_then_the_node_then_path_choose_the_interpreter() {
        let env = |p: &str| HashMap::from([(PYTHON_ENV.to_string(), p.to_string())]);
        assert_eq!(
            interpreter(&env("/venv/bin/python"), Some("/usr/bin/python3.11")),
            "/venv/bin/python"
        );
        assert_eq!(
            interpreter(&HashMap::new(), Some("/usr/bin/python3.11")),
            "/usr/bin/python3.11"
        );
        assert_eq!(interpreter(&env(" "), Some("/n/python")), "/n/python");
        assert_eq!(interpreter(&HashMap::new(), None), DEFAULT_PYTHON);
        assert_eq!(interpreter(&HashMap::new(), Some("")), DEFAULT_PYTHON);
    }

    #[test]
    fn the_grace_covers_the_pre_stop_hook() {
        let base = Duration::from_secs(5);
        assert_eq!(stop_grace(&spec("", 0), base), base);
        assert_eq!(
            stop_grace(&spec("demo.pre_stop", 30_000), base),
            Duration::from_secs(30) + PRE_STOP_MARGIN
        );
        // The default timeout applies when the body gives none.
        let s = spec("demo.pre_stop", 0);
        assert!(stop_grace(&s, base) > Duration::from_millis(u64::from(s.pre_stop_timeout_ms)));
    }

    #[test]
    fn the_worker_learns_hooks_and_user_data() {
        let s = spec("demo.pre_stop", 2_000);
        let env: HashMap<&str, String> = worker_env(&s).into_iter().collect();
        assert_eq!(env["YR_RUNTIME"], "python3.9");
        assert_eq!(env["YR_PRE_STOP"], "demo.pre_stop");
        assert_eq!(env["YR_PRE_STOP_TIMEOUT_MS"], "2000");
        assert_eq!(env["YR_INITIALIZER"], "");
        assert_eq!(env["PYTHONUNBUFFERED"], "1");
        assert_eq!(env["PYTHONDONTWRITEBYTECODE"], "1");
        let data: HashMap<String, String> =
            serde_json::from_str(&env["YR_USER_DATA"]).expect("user data is a JSON object");
        assert_eq!(data.get("show_date").map(String::as_str), Some("yes"));
    }

    #[tokio::test]
    async fn an_interpreter_without_yr_is_refused_with_the_fix() {
        let checked = Checked::default();
        // `sh -c "import yr._yr"` fails as an interpreter without the package does: non-zero,
        // with an error on stderr.
        let e = checked
            .ensure("sh", "python3.9")
            .await
            .expect_err("sh cannot import yr");
        let text = e.to_string();
        for part in [
            "\"sh\"",
            "python3.9",
            "import yr._yr",
            "--python",
            "install",
        ] {
            assert!(text.contains(part), "{part:?} missing from: {text}");
        }
        let e = checked
            .ensure("/nonexistent/python", "python3")
            .await
            .expect_err("no such interpreter");
        assert!(e.to_string().contains("cannot be run"), "{e}");
        assert!(!checked.known("sh"), "failures are checked again next time");
    }
}
