//! `yr bench python`: the Python package `yr` on a one-node cluster this command starts (and
//! stops) itself, as issue 11 defines its speed: put and get of a 256 MiB numpy array beside a
//! numpy copy measured in the same run, 1 KiB puts, trivial tasks with 1,000 in flight, and a
//! call that receives the stored array by reference.
//!
//! The measuring is Python (`python/bench/bench_python.py`, compiled into this binary and
//! written to the cluster's temporary folder, or `--script`), run with an interpreter that has
//! `yr` and numpy: `--python`, else `$YR_PYTHON`, else the virtual environment `make python`
//! builds (~/.cache/yr/py). It prints one JSON object of raw figures; this side adds the
//! ratio, the targets and whether each is met, and the machine's facts.
//!
//! Invariants: the cluster is stopped whatever happens (its guard drops on every path), and the
//! script is killed if it outlives `--timeout`; a figure the script did not report is `null`
//! and its target counts as not met.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Map, Value};

use super::machine;
use super::node::{Bins, OneNode};

/// The script, as it is in the repository (python/bench/bench_python.py).
const SCRIPT: &str = include_str!("../../../python/bench/bench_python.py");

#[derive(Args)]
pub struct PythonArgs {
    /// Print one JSON object (for scripts) instead of a table.
    #[arg(long)]
    json: bool,
    /// A Python interpreter with the packages `yr` and numpy (default: $YR_PYTHON, else
    /// ~/.cache/yr/py/bin/python, the environment `make python` builds).
    #[arg(long)]
    python: Option<PathBuf>,
    /// The measuring script (default: the copy of python/bench/bench_python.py built in).
    #[arg(long)]
    script: Option<PathBuf>,
    /// Shared memory of the node's data worker (holds the stored array and a put's copy).
    #[arg(long, default_value = "1GiB")]
    shm_size: String,
    /// Measured rounds of tasks and small puts (after one warm-up round).
    #[arg(long, default_value_t = 10)]
    rounds: u32,
    /// Calls in flight in each task round.
    #[arg(long, default_value_t = 1000)]
    calls: u32,
    /// Seconds the script may run before it is killed.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
}

#[derive(Clone, Copy)]
enum Goal {
    AtLeast,
    AtMost,
}

/// Issue 11's targets on the 2-core development machine.
const TARGETS: &[(&str, Goal, f64)] = &[
    ("put_vs_copy", Goal::AtLeast, 0.8),
    ("get_p50_us", Goal::AtMost, 20.0),
    ("small_put_per_s", Goal::AtLeast, 20_000.0),
    ("tasks_per_s", Goal::AtLeast, 5_000.0),
    ("pass_256mib_ms", Goal::AtMost, 1.0),
];

/// The interpreter to run: the flag, else `$YR_PYTHON`, else the `make python` environment.
fn interpreter(flag: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = flag {
        return Ok(p);
    }
    if let Some(p) = std::env::var_os("YR_PYTHON").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let home = std::env::var_os("HOME").context("HOME is not set: pass --python")?;
    Ok(PathBuf::from(home).join(".cache/yr/py/bin/python"))
}

/// Fails with how to build the environment when `python` cannot import yr and numpy; else
/// whether its `yr` extension is a debug build.
fn check_interpreter(python: &PathBuf) -> Result<bool> {
    let how = "build it with `make python` (the environment ~/.cache/yr/py; \
               `YR_PY_RELEASE=1 ./scripts/python-env.sh` for a release build of the extension), \
               or pass --python / set YR_PYTHON to an interpreter that has them";
    let out = Command::new(python)
        .args([
            "-c",
            "import numpy, yr, yr._yr as n; print(getattr(n, 'DEBUG_BUILD', 'unknown'))",
        ])
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) => bail!(
            "cannot run the Python interpreter {}: {e}; {how}",
            python.display()
        ),
    };
    if !out.status.success() {
        bail!(
            "{} cannot import yr and numpy ({}); {how}",
            python.display(),
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
                .trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim() != "False")
}

/// Runs `cmd` to completion within `timeout`; its stdout. Killed (and an error) past it.
fn run_with_deadline(mut cmd: Command, timeout: Duration) -> Result<String> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start the bench script")?;
    let mut stdout = child.stdout.take().context("the script's stdout")?;
    // The pipe is drained by a thread so that a chatty script cannot block on a full pipe
    // while this one waits for it to exit.
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).map(|_| s)
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the bench script ran longer than {} s", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the thread reading the script's output panicked"))?
        .context("reading the script's output")?;
    if !status.success() {
        bail!(
            "the bench script failed ({status}); its output: {}",
            out.trim()
        );
    }
    Ok(out)
}

fn num(v: &Map<String, Value>, k: &str) -> Option<f64> {
    v.get(k).and_then(Value::as_f64)
}

/// Adds the ratio, the targets and whether each is met to the script's figures.
fn judge(mut v: Map<String, Value>) -> Map<String, Value> {
    if let (Some(put), Some(copy)) = (num(&v, "put_gbps"), num(&v, "copy_gbps")) {
        v.insert("put_vs_copy".into(), json!(put / copy));
    }
    let mut targets = Map::new();
    let mut all = true;
    for (name, goal, bound) in TARGETS {
        let value = num(&v, name);
        let met = value.is_some_and(|x| match goal {
            Goal::AtLeast => x >= *bound,
            Goal::AtMost => x <= *bound,
        });
        all &= met;
        let target = match goal {
            Goal::AtLeast => format!(">= {bound}"),
            Goal::AtMost => format!("<= {bound}"),
        };
        targets.insert(
            (*name).into(),
            json!({ "value": value, "target": target, "met": met }),
        );
    }
    v.insert("targets".into(), Value::Object(targets));
    v.insert("all_targets_met".into(), json!(all));
    v
}

fn fmt(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(x) if x >= 1000.0 => format!("{x:.0}"),
        Some(x) if x >= 10.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.2}"),
    }
}

fn print_table(v: &Map<String, Value>) {
    let rows: &[(&str, &str, Option<&str>)] = &[
        (
            "copy_gbps",
            "numpy copy of the array, GB/s (baseline)",
            None,
        ),
        ("put_gbps", "yr.put of the array, GB/s", None),
        ("put_vs_copy", "put / copy", Some("put_vs_copy")),
        (
            "get_p50_us",
            "yr.get of the stored array, p50 µs",
            Some("get_p50_us"),
        ),
        ("get_p99_us", "  p99 µs", None),
        (
            "get_release_p50_us",
            "  get + drop of the view, p50 µs",
            None,
        ),
        (
            "store_rtt_p50_us",
            "  data worker round trip, p50 µs (floor)",
            None,
        ),
        (
            "small_put_per_s",
            "1 KiB puts /s (refs kept)",
            Some("small_put_per_s"),
        ),
        (
            "small_put_dropped_per_s",
            "  refs dropped at once, /s",
            None,
        ),
        (
            "tasks_per_s",
            "trivial tasks /s (median round)",
            Some("tasks_per_s"),
        ),
        ("tasks_per_s_best", "  best round", None),
        (
            "pass_256mib_ms",
            "pass the stored array by ref, p50 ms",
            Some("pass_256mib_ms"),
        ),
        ("pass_256mib_p99_ms", "  p99 ms", None),
    ];
    let targets = v.get("targets").and_then(Value::as_object);
    println!(
        "{:<44} {:>12} {:>10} {:>5}",
        "measure", "value", "target", "met"
    );
    for (key, label, target) in rows {
        let t = target.and_then(|t| targets.and_then(|m| m.get(t)));
        let (goal, met) = match t {
            Some(t) => (
                t["target"].as_str().unwrap_or("").to_string(),
                if t["met"].as_bool() == Some(true) {
                    "yes"
                } else {
                    "NO"
                },
            ),
            None => (String::new(), ""),
        };
        println!("{label:<44} {:>12} {goal:>10} {met:>5}", fmt(num(v, key)));
    }
    let m = &v["machine"];
    println!(
        "machine: {} CPUs ({}), {:.1} GiB, kernel {}; Python {}, numpy {}, {} extension; \
         {} calls in flight",
        m["cpus"],
        m["cpu_model"].as_str().unwrap_or("?"),
        m["mem_total_bytes"].as_f64().unwrap_or(0.0) / (1u64 << 30) as f64,
        m["kernel"].as_str().unwrap_or("?"),
        v["python"].as_str().unwrap_or("?"),
        v["numpy"].as_str().unwrap_or("?"),
        v["extension_build"].as_str().unwrap_or("?"),
        v["task_calls_in_flight"],
    );
}

pub fn run(a: PythonArgs) -> Result<()> {
    let log = |s: &str| {
        if !a.json {
            eprintln!("{s}");
        }
    };
    let python = interpreter(a.python.clone())?;
    let debug = check_interpreter(&python)?;
    if debug {
        log(
            "warning: the yr extension is a debug build (or too old to say): figures are slow; \
             rebuild it with YR_PY_RELEASE=1 ./scripts/python-env.sh",
        );
    }
    log("starting a one-node cluster...");
    let node = OneNode::start_with(
        &Bins::yr_only()?,
        "yr-bench-python-",
        &["--shm-size", &a.shm_size, "--prefault-shm"],
    )?;
    let script = match &a.script {
        Some(s) => s.clone(),
        None => {
            // Beside the session folder, inside the cluster's temporary folder.
            let parent = node.dir.parent().context("the session folder's parent")?;
            let p = parent.join("bench_python.py");
            std::fs::write(&p, SCRIPT).context("writing the bench script")?;
            p
        }
    };
    let mut cmd = Command::new(&python);
    cmd.arg(&script)
        .arg("--session")
        .arg(&node.dir)
        .args(["--rounds", &a.rounds.to_string()])
        .args(["--calls", &a.calls.to_string()]);
    if a.json {
        cmd.arg("--quiet");
    }
    let out = run_with_deadline(cmd, Duration::from_secs(a.timeout))?;
    drop(node);
    let line = out
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .context("the bench script printed no JSON object")?;
    let raw: Map<String, Value> =
        serde_json::from_str(line).context("the bench script's JSON object")?;
    let mut v = judge(raw);
    v.insert(
        "extension_build".into(),
        json!(if debug { "debug" } else { "release" }),
    );
    v.insert("tasks_per_s_is".into(), json!("median of rounds"));
    v.insert("machine".into(), machine::facts());
    if a.json {
        println!("{}", Value::Object(v));
    } else {
        print_table(&v);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_judged_in_their_direction_and_missing_figures_fail() {
        let raw = json!({
            "copy_gbps": 4.0, "put_gbps": 3.0, "get_p50_us": 25.0,
            "small_put_per_s": 30_000.0, "tasks_per_s": 5_000.0,
        });
        let v = judge(raw.as_object().cloned().unwrap_or_default());
        assert_eq!(num(&v, "put_vs_copy"), Some(0.75));
        let t = &v["targets"];
        assert_eq!(t["put_vs_copy"]["met"], json!(false));
        assert_eq!(t["get_p50_us"]["met"], json!(false));
        assert_eq!(t["small_put_per_s"]["met"], json!(true));
        assert_eq!(t["tasks_per_s"]["met"], json!(true));
        assert_eq!(t["pass_256mib_ms"]["met"], json!(false));
        assert_eq!(t["pass_256mib_ms"]["value"], Value::Null);
        assert_eq!(v["all_targets_met"], json!(false));
    }
}
