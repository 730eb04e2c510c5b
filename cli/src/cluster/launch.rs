//! Process launch: start a component process in its own session, wait (bounded) until it is
//! ready, and stop processes by pid.
//!
//! A component leads its own session (`setsid`), so it outlives the process that launched it
//! (`yr start`, or the node supervisor) and `yr stop` can sweep its whole process group (the
//! agent's function processes with it).
//! Ready means: its first stdout line starts with `ready` (every `yr component` prints one once it
//! serves), or, for etcd, which prints none, that its client endpoint answers. A component that
//! fails to get ready is killed, and the error carries the tail of its log.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use yr_runtime::session::{ComponentInfo, ComponentState};

/// How long a component may take to print its ready line.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// How long etcd may take to answer.
const ETCD_READY_WITHIN: Duration = Duration::from_secs(20);

/// Starts `cmd` in its own session with stderr to `log`. With `expect_ready_line`, waits
/// (bounded) for its `ready` line on stdout and takes the address it announces; otherwise its
/// stdout goes to the log too and the address is left empty. On failure the error includes the
/// log's tail.
pub fn launch(
    name: &str,
    cmd: Command,
    log: &Path,
    expect_ready_line: bool,
) -> Result<ComponentInfo> {
    launch_within(name, cmd, log, expect_ready_line, READY_WITHIN)
}

/// [`launch`], waiting up to `within` for the ready line (the node supervisor's comes after
/// every component's).
pub fn launch_within(
    name: &str,
    mut cmd: Command,
    log: &Path,
    expect_ready_line: bool,
    within: Duration,
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
        let line = match rx.recv_timeout(within) {
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
                    "{name} not ready after {} s; its log ({}):\n{}",
                    within.as_secs(),
                    log.display(),
                    tail(log)
                );
            }
        };
        address = announced_address(&line).to_string();
    }
    Ok(ComponentInfo {
        name: name.to_string(),
        pid,
        address,
        log: log.to_path_buf(),
        restarts: 0,
        state: ComponentState::Running,
        last_exit: String::new(),
    })
}

/// The address a ready line announces: what the component serves on the network if anything (a
/// data worker's transfer port), else its socket.
fn announced_address(line: &str) -> &str {
    ["address=", "transfer=", "socket="]
        .iter()
        .find_map(|k| line.split_whitespace().find_map(|w| w.strip_prefix(k)))
        .unwrap_or_default()
}

/// The last lines of a log, for an error message.
pub fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Waits until etcd (process `pid`) answers at `endpoint`; when it exits first or the wait
/// times out, the error includes its log's tail.
pub fn wait_for_etcd(endpoint: &str, pid: u32, log: &Path) -> Result<()> {
    let rt = super::rt()?;
    let deadline = Instant::now() + ETCD_READY_WITHIN;
    loop {
        let ok = rt.block_on(yr_control::etcd::Meta::connect(&[endpoint.to_string()]));
        if ok.is_ok() {
            return Ok(());
        }
        // An etcd that failed on its flags or its ports is done: say so now, not at the deadline.
        if !running(pid) {
            bail!(
                "etcd exited before it answered at {endpoint}; its log ({}):\n{}",
                log.display(),
                tail(log)
            );
        }
        if Instant::now() > deadline {
            bail!(
                "etcd at {endpoint} not ready after {} s; its log ({}):\n{}",
                ETCD_READY_WITHIN.as_secs(),
                log.display(),
                tail(log)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `N` distinct free TCP ports for a node's components, none of yr's standard ports (another
/// node on this host may use those): see [`yr_proto::ports`] for why they are not simply port-0
/// binds.
pub fn free_ports<const N: usize>() -> Result<[u16; N]> {
    let standard = super::plan::Ports::STANDARD.all();
    let picked = yr_proto::ports::free(N, &standard)?;
    let mut ports = [0u16; N];
    ports.copy_from_slice(&picked);
    Ok(ports)
}

/// The program `name` on `PATH`, if any.
pub fn which(name: &str) -> Option<PathBuf> {
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

/// SIGTERM to the process, then SIGKILL to it and its group after `grace`; whether it ended
/// within `grace`.
pub fn stop_pid(pid: u32, grace: Duration) -> bool {
    if pid == 0 || !alive(pid) {
        return true;
    }
    // SAFETY: a plain signal to a process.
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while alive(pid) && !reaped(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let clean = !alive(pid) || reaped(pid);
    // SAFETY: plain signals to a process and its group (each component leads its own session);
    // the group sweep catches function processes of a killed agent.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ready_line_announces_the_network_address_first() {
        assert_eq!(
            announced_address("ready address=127.0.0.1:5\n"),
            "127.0.0.1:5"
        );
        assert_eq!(
            announced_address("ready socket=/s/dw.sock transfer=127.0.0.1:9\n"),
            "127.0.0.1:9"
        );
        assert_eq!(announced_address("ready socket=/s/dw.sock\n"), "/s/dw.sock");
        assert_eq!(announced_address("ready\n"), "");
    }

    #[test]
    fn free_ports_are_distinct() {
        let ports = free_ports::<8>().expect("free ports");
        let mut sorted = ports.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 8, "{ports:?}");
        assert!(ports.iter().all(|&p| p != 0));
        let standard = crate::cluster::plan::Ports::STANDARD.all();
        assert!(ports.iter().all(|p| !standard.contains(p)), "{ports:?}");
    }

    #[test]
    fn a_component_that_exits_before_ready_fails_with_its_log() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let log = tmp.path().join("x.log");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo broken config >&2; exit 3"]);
        let e = launch("x", cmd, &log, true).expect_err("never ready");
        let msg = format!("{e:#}");
        assert!(
            msg.contains("x failed to start") && msg.contains("broken config"),
            "{msg}"
        );
    }

    #[test]
    fn an_etcd_that_exits_is_reported_at_once_with_its_log() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let log = tmp.path().join("etcd.log");
        let out = std::fs::File::create(&log).expect("log");
        let mut child = Command::new("sh")
            .args([
                "-c",
                "echo 'listen tcp: bind: address already in use' >&2; exit 1",
            ])
            .stderr(out)
            .spawn()
            .expect("spawn");
        // Nothing answers on this endpoint, so only the exit can end the wait early.
        let port = yr_proto::ports::free(1, &[]).expect("port")[0];
        let e = wait_for_etcd(&format!("http://127.0.0.1:{port}"), child.id(), &log)
            .expect_err("etcd exited");
        let msg = format!("{e:#}");
        assert!(
            msg.contains("exited before it answered") && msg.contains("address already in use"),
            "{msg}"
        );
        child.wait().expect("reap");
    }

    #[test]
    fn a_ready_component_is_recorded_and_stopped() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let log = tmp.path().join("y.log");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo ready address=127.0.0.1:7; exec sleep 30"]);
        let info = launch("y", cmd, &log, true).expect("ready");
        assert_eq!(info.address, "127.0.0.1:7");
        assert!(running(info.pid));
        assert!(
            stop_pid(info.pid, Duration::from_secs(5)),
            "ended on SIGTERM"
        );
        assert!(!running(info.pid));
    }
}
