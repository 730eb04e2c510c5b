//! The node supervisor (`yr component supervisor`): the process that launches a node's
//! components as its own children, restarts one that exits unexpectedly, and keeps
//! `session.json` current.
//!
//! `yr start` writes the node's launch spec ([`SPEC_FILE`]: every component's program, arguments,
//! log and readiness rule, plus the session it will become) and launches the supervisor, which
//! starts the components in order, writes `session.json` (itself listed last, as
//! [`SUPERVISOR`]) and prints its `ready` line. If a component fails to start it stops those
//! already running and exits with that component's error, so a failed start leaves nothing.
//!
//! Then it watches: a child that exits is started again with the same command line (so the same
//! ports, socket and data folders) after a backoff ([`Backoff`]: exponential, capped, and reset
//! once a component stayed up for a while). The function proxy and agent share a secret made at
//! the proxy's start, so they restart together ([`RESTART_TOGETHER`]). Every exit and restart is written to
//! `session.json` (pid, `restarts`, `state`, `last_exit`), which `yr status` shows.
//!
//! Invariants: the supervisor never kills a component. On SIGTERM or SIGINT it exits at once,
//! leaving the components to `yr stop`, which ends the supervisor first (so nothing it is about to
//! kill is restarted), then reads `session.json` again for the current pids, and also stops any
//! child of the supervisor that a restart in progress had not recorded yet.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use yr_runtime::session::{ComponentInfo, ComponentState, Session};

use super::launch;
use crate::defaults::name;

/// The launch spec's file name in the session folder.
pub const SPEC_FILE: &str = "supervisor.json";

/// The supervisor's name in `session.json` and its log's name.
pub const SUPERVISOR: &str = name::SUPERVISOR;

/// How often the supervisor looks for exited children and due restarts.
const TICK: Duration = Duration::from_millis(50);

/// One process the supervisor launches and keeps running.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SpecComponent {
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub log: PathBuf,
    /// Ready once its client endpoint (`address`) answers (etcd), rather than on a `ready` line.
    pub ready_by_endpoint: bool,
    /// What `session.json` records as its address, and what its ready line must announce.
    pub address: String,
}

/// What `yr start` hands the supervisor.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Spec {
    /// The node's session, without components (the supervisor fills them in).
    pub session: Session,
    /// In launch order.
    pub components: Vec<SpecComponent>,
}

impl Spec {
    /// Writes the spec into the session folder `dir` (0600).
    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join(SPEC_FILE);
        let json = serde_json::to_vec_pretty(self)?;
        yr_runtime::session::write_private(&path, &json)
            .with_context(|| format!("cannot write {}", path.display()))
    }

    fn load(dir: &Path) -> Result<Spec> {
        let path = dir.join(SPEC_FILE);
        let text =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_slice(&text).with_context(|| format!("{} is malformed", path.display()))
    }
}

/// Restart delays: `base` doubled after each exit that came soon after the previous start,
/// at most `cap`; a component that stayed up at least `reset_after` starts again at `base`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
    pub reset_after: Duration,
}

impl Backoff {
    /// A quick first restart (a crashed data worker takes the node's objects calls with it), at
    /// most one attempt every 30 s for a component that keeps failing; a minute of uptime
    /// forgives the past.
    pub const DEFAULT: Backoff = Backoff {
        base: Duration::from_millis(200),
        cap: Duration::from_secs(30),
        reset_after: Duration::from_secs(60),
    };

    /// After an exit of a component that ran for `up_for` and had `quick_exits` quick exits in a
    /// row before this one: the new count of quick exits in a row and the delay before the next
    /// start.
    pub fn on_exit(&self, quick_exits: u32, up_for: Duration) -> (u32, Duration) {
        let n = if up_for >= self.reset_after {
            0
        } else {
            quick_exits
        };
        let delay = self
            .base
            .checked_mul(1u32.checked_shl(n).unwrap_or(u32::MAX))
            .map_or(self.cap, |d| d.min(self.cap));
        (n.saturating_add(1), delay)
    }
}

/// A component under watch.
struct Watched {
    spec: SpecComponent,
    info: ComponentInfo,
    started: Instant,
    quick_exits: u32,
    /// When to start it again, after it exited.
    due: Option<Instant>,
}

/// Runs the supervisor of the session folder `session_dir` until SIGTERM or SIGINT (see the
/// module header).
pub fn run(session_dir: &Path) -> Result<()> {
    check_spec(session_dir)?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("cannot install signal handlers")?;
    }
    let spec = Spec::load(session_dir)?;
    // Waiting for etcd (a master node's, at start and after a restart) speaks as the node.
    spec.session.install_tls().map_err(anyhow::Error::msg)?;
    let mut watched: Vec<Watched> = Vec::new();
    for c in &spec.components {
        match start_one(c) {
            Ok(info) => watched.push(Watched {
                spec: c.clone(),
                info,
                started: Instant::now(),
                quick_exits: 0,
                due: None,
            }),
            Err(e) => {
                for w in watched.iter().rev() {
                    launch::stop_pid(w.info.pid, Duration::from_secs(5));
                }
                return Err(e);
            }
        }
    }
    let me = ComponentInfo {
        name: SUPERVISOR.into(),
        pid: std::process::id(),
        address: String::new(),
        log: session_dir.join("logs").join(format!("{SUPERVISOR}.log")),
        restarts: 0,
        state: ComponentState::Running,
        last_exit: String::new(),
    };
    let save = |watched: &[Watched]| -> Result<()> {
        let mut s = spec.session.clone();
        s.components = watched.iter().map(|w| w.info.clone()).collect();
        s.components.push(me.clone());
        Ok(s.save(session_dir)?)
    };
    if let Err(e) = save(&watched) {
        for w in watched.iter().rev() {
            launch::stop_pid(w.info.pid, Duration::from_secs(5));
        }
        return Err(e);
    }
    announce_ready()?;
    watch(&mut watched, &stop, Backoff::DEFAULT, |w| {
        if let Err(e) = save(w) {
            tracing::warn!("cannot record the components' state: {e:#}");
        }
    });
    tracing::info!("supervisor stopping; the components are left to `yr stop`");
    Ok(())
}

/// Prints the ready line, then points stdout at /dev/null: `yr start` reads one line and closes
/// the pipe, and a later write into it must not fail.
fn announce_ready() -> Result<()> {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    let mut out = std::io::stdout();
    writeln!(out, "ready")?;
    out.flush()?;
    let null = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
    // SAFETY: dup2 onto fd 1 replaces stdout's descriptor with /dev/null's; both are valid.
    unsafe { libc::dup2(null.as_raw_fd(), libc::STDOUT_FILENO) };
    Ok(())
}

/// Reaps exited children and starts them again when due, until `stop`; calls `changed` after
/// every exit or restart.
fn watch(
    watched: &mut [Watched],
    stop: &AtomicBool,
    backoff: Backoff,
    mut changed: impl FnMut(&[Watched]),
) {
    while !stop.load(Ordering::SeqCst) {
        let mut dirty = false;
        while let Some((pid, how)) = reap_any() {
            let Some(w) = watched
                .iter_mut()
                .find(|w| w.info.pid == pid && w.due.is_none())
            else {
                continue;
            };
            let (n, delay) = backoff.on_exit(w.quick_exits, w.started.elapsed());
            tracing::warn!(
                "{} (pid {pid}) exited unexpectedly ({how}); starting it again in {} ms",
                w.info.name,
                delay.as_millis()
            );
            w.quick_exits = n;
            let due = Instant::now() + delay;
            w.due = Some(due);
            w.info.state = ComponentState::Restarting;
            w.info.last_exit = how;
            let name = w.info.name.clone();
            restart_partners(watched, &name, due);
            dirty = true;
        }
        let now = Instant::now();
        for w in watched.iter_mut() {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            if w.due.is_none_or(|d| d > now) {
                continue;
            }
            w.info.restarts = w.info.restarts.saturating_add(1);
            match start_one(&w.spec) {
                Ok(info) => {
                    tracing::info!("{} started again (pid {})", w.info.name, info.pid);
                    w.info.pid = info.pid;
                    w.info.state = ComponentState::Running;
                    w.started = Instant::now();
                    w.due = None;
                }
                Err(e) => {
                    // launch() killed and reaped what it started; try again later.
                    let (n, delay) = backoff.on_exit(w.quick_exits, Duration::ZERO);
                    tracing::warn!(
                        "{} failed to start again: {e:#}; next attempt in {} ms",
                        w.info.name,
                        delay.as_millis()
                    );
                    w.quick_exits = n;
                    w.due = Some(Instant::now() + delay);
                    w.info.last_exit = format!("restart failed: {e}");
                }
            }
            dirty = true;
        }
        if dirty {
            changed(watched);
        }
        std::thread::sleep(TICK);
    }
}

/// Components that must restart together: the proxy creates the node secret when it starts
/// and the agent takes it (see `yr_control::secret`), so a new proxy needs a new agent and a new
/// agent needs a new proxy. Restarts go in launch order, proxy first.
const RESTART_TOGETHER: [&str; 2] = [name::FUNCTION_PROXY, name::FUNCTION_AGENT];

/// After `exited` exited: stops its running partners (see [`RESTART_TOGETHER`]) and makes the
/// whole group due at `due`.
fn restart_partners(watched: &mut [Watched], exited: &str, due: Instant) {
    if !RESTART_TOGETHER.contains(&exited) {
        return;
    }
    for w in watched
        .iter_mut()
        .filter(|w| w.info.name != exited && RESTART_TOGETHER.contains(&w.info.name.as_str()))
    {
        if w.due.is_none() {
            tracing::info!(
                "stopping {} (pid {}) to start it again with {exited}",
                w.info.name,
                w.info.pid
            );
            // SIGKILL, not a graceful stop: a gracefully stopping agent takes its node out of
            // the cluster (it deletes the node's record, and the master moves the node's
            // instances elsewhere), while this is a restart in place. Its function processes
            // die with it either way (PR_SET_PDEATHSIG), and the new agent reports them.
            kill_and_reap(w.info.pid);
            w.info.state = ComponentState::Restarting;
            w.info.last_exit = format!("stopped to restart with {exited}");
        }
        w.due = Some(w.due.map_or(due, |d| d.max(due)));
    }
}

/// SIGKILL to child `pid`, then reaps it (so [`reap_any`] never reports it).
fn kill_and_reap(pid: u32) {
    let Ok(p) = i32::try_from(pid) else { return };
    // SAFETY: kill(2) and waitpid(2) on a child of this process, which only this thread reaps
    // (a pid is not reused before its parent reaps it); `status` is a valid out pointer.
    unsafe {
        if libc::kill(p, libc::SIGKILL) == 0 {
            let mut status = 0;
            libc::waitpid(p, &mut status, 0);
        }
    }
}

/// One exited child of this process and how it ended, if any.
fn reap_any() -> Option<(u32, String)> {
    let mut status = 0;
    // SAFETY: waitpid(2) with WNOHANG on any child; `status` is a valid out pointer.
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
    if pid <= 0 {
        return None;
    }
    let s = std::process::ExitStatus::from_raw(status);
    let how = match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        (None, None) => format!("wait status {status}"),
    };
    Some((pid as u32, how))
}

/// Launches one component and waits until it is ready.
fn start_one(c: &SpecComponent) -> Result<ComponentInfo> {
    let mut cmd = Command::new(&c.program);
    cmd.args(&c.args);
    let mut info = launch::launch(&c.name, cmd, &c.log, !c.ready_by_endpoint)?;
    let announced = std::mem::replace(&mut info.address, c.address.clone());
    let ready = if c.ready_by_endpoint {
        launch::wait_for_etcd(&c.address, info.pid, &c.log)
    } else if !c.address.is_empty() && announced != c.address {
        Err(anyhow!(
            "{} serves {announced}, not the planned {} (see {})",
            c.name,
            c.address,
            c.log.display()
        ))
    } else {
        Ok(())
    };
    if let Err(e) = ready {
        launch::stop_pid(info.pid, Duration::from_secs(5));
        return Err(e);
    }
    Ok(info)
}

/// The supervisor's launch command for the session folder `dir`.
pub fn command(exe: &Path, dir: &Path) -> Command {
    let mut cmd = Command::new(exe);
    cmd.args(["component", SUPERVISOR, "--session-dir"])
        .arg(dir);
    cmd
}

/// The pids of the running children of `pid` (from /proc).
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|s| {
                    // Fields after the command's closing parenthesis: state, ppid, ...
                    let rest = s.rsplit_once(')')?.1;
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// How long `yr start` waits for the supervisor's ready line: each component's own limit, and
/// some slack, so that the supervisor always gives up (and cleans up) first.
pub fn ready_within(components: usize) -> Duration {
    Duration::from_secs(35 * components as u64 + 10)
}

/// Fails unless `dir` holds a spec (for a clear error when started by hand).
fn check_spec(dir: &Path) -> Result<()> {
    if !dir.join(SPEC_FILE).is_file() {
        bail!(
            "{} has no {SPEC_FILE}: the supervisor is started by `yr start`",
            dir.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Backoff = Backoff {
        base: Duration::from_millis(100),
        cap: Duration::from_secs(2),
        reset_after: Duration::from_secs(10),
    };

    #[test]
    fn children_are_found_by_parent_pid() {
        let mut child = Command::new("sleep").arg("30").spawn().expect("sleep");
        let kids = children_of(std::process::id());
        let _ = child.kill();
        let _ = child.wait();
        assert!(kids.contains(&child.id()), "{kids:?} lacks {}", child.id());
        assert!(children_of(child.id()).is_empty());
    }

    #[test]
    fn quick_exits_double_the_delay_up_to_the_cap() {
        let quick = Duration::from_secs(1);
        let mut n = 0;
        let mut delays = Vec::new();
        for _ in 0..7 {
            let (next, d) = B.on_exit(n, quick);
            n = next;
            delays.push(d.as_millis());
        }
        assert_eq!(delays, vec![100, 200, 400, 800, 1600, 2000, 2000]);
        // Far past any shift width: still the cap, no overflow.
        assert_eq!(B.on_exit(200, quick).1, B.cap);
        assert_eq!(B.on_exit(u32::MAX, quick), (u32::MAX, B.cap));
    }

    #[test]
    fn a_component_that_stayed_up_starts_over_at_the_base_delay() {
        let (n, d) = B.on_exit(5, Duration::from_secs(10));
        assert_eq!((n, d), (1, B.base));
        let (n, d) = B.on_exit(5, Duration::from_secs(9));
        assert_eq!((n, d), (6, B.cap));
    }

    #[test]
    fn an_exited_child_is_started_again_with_its_command_line() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let marker = tmp.path().join("starts");
        let spec = SpecComponent {
            name: "x".into(),
            program: "sh".into(),
            args: vec![
                "-c".into(),
                format!(
                    "echo start >> {}; echo ready address=a; exec sleep 30",
                    marker.display()
                )
                .into(),
            ],
            log: tmp.path().join("x.log"),
            ready_by_endpoint: false,
            address: "a".into(),
        };
        let info = start_one(&spec).expect("starts");
        let first = info.pid;
        let mut watched = vec![Watched {
            spec,
            info,
            started: Instant::now(),
            quick_exits: 0,
            due: None,
        }];
        // SAFETY: kill(2) of the child this test started.
        assert_eq!(unsafe { libc::kill(first as i32, libc::SIGKILL) }, 0);
        let stop = AtomicBool::new(false);
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        watch(&mut watched, &stop, B, |w| {
            seen.push((w[0].info.state, w[0].info.restarts, w[0].info.pid));
            if w[0].info.state == ComponentState::Running || Instant::now() > deadline {
                stop.store(true, Ordering::SeqCst);
            }
        });
        let w = &watched[0];
        assert_eq!(w.info.state, ComponentState::Running, "{seen:?}");
        assert_eq!(w.info.restarts, 1);
        assert_ne!(w.info.pid, first);
        assert_eq!(w.info.last_exit, "killed by signal 9");
        assert_eq!(seen[0].0, ComponentState::Restarting);
        let starts = std::fs::read_to_string(&marker).expect("marker");
        assert_eq!(starts.lines().count(), 2);
        assert!(launch::stop_pid(w.info.pid, Duration::from_secs(5)));
    }
}
