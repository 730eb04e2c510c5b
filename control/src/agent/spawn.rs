//! Starting function processes so that they die with their agent.
//!
//! A function process must not outlive the agent that started it: the master restarts a dead
//! node's (or agent's) instances elsewhere, and a survivor would be a second copy of a stateful
//! instance, and an orphan nobody stops. So every function process is started with
//! `PR_SET_PDEATHSIG(SIGKILL)`: the kernel kills it when its parent dies, `kill -9` included.
//!
//! Hazard: the death signal fires when the *thread* that forked the child exits, not the
//! process. tokio's threads come and go (the blocking pool's after 10 s idle; a worker thread
//! that enters `block_in_place` hands its role to a new thread), so forking on one of them could
//! kill a healthy instance seconds later. Every function process is therefore forked by one
//! dedicated thread ([`spawn`]) that lives as long as the process: its job channel's sender is a
//! static, so its loop never ends. The child also checks, after `prctl`, that its parent is still
//! the agent (the agent may have died between fork and `prctl`) and fails the start if not.

use std::sync::mpsc;
use std::sync::OnceLock;

/// A start: the command, and where to send it back with the outcome.
type Job = (
    tokio::process::Command,
    tokio::sync::oneshot::Sender<(
        tokio::process::Command,
        std::io::Result<tokio::process::Child>,
    )>,
);

/// The spawner thread's queue. A static, so the thread's receive loop never ends (see the
/// module header).
static SPAWNER: OnceLock<mpsc::Sender<Job>> = OnceLock::new();

/// Starts `cmd` on the spawner thread, within the runtime of the caller (whose process driver
/// then reaps it). Returns the command too, for a retry. Must be called from inside a tokio
/// runtime. Pass a command prepared by [`die_with_parent`].
pub async fn spawn(
    cmd: tokio::process::Command,
) -> (
    tokio::process::Command,
    std::io::Result<tokio::process::Child>,
) {
    let tx = SPAWNER.get_or_init(start_thread);
    let (reply, rx) = tokio::sync::oneshot::channel();
    if let Err(mpsc::SendError((cmd, _))) = tx.send((cmd, reply)) {
        return (
            cmd,
            Err(std::io::Error::other("the spawner thread is gone")),
        );
    }
    match rx.await {
        Ok(r) => r,
        // The thread never drops a job unanswered; this only guards against its panic.
        Err(_) => (
            tokio::process::Command::new("/nonexistent"),
            Err(std::io::Error::other("the spawner thread failed")),
        ),
    }
}

fn start_thread() -> mpsc::Sender<Job> {
    let (tx, rx) = mpsc::channel::<Job>();
    let handle = tokio::runtime::Handle::current();
    let started = std::thread::Builder::new()
        .name("yr-spawner".into())
        .spawn(move || {
            // tokio's process driver (which reaps the child) belongs to the agent's runtime.
            let _rt = handle.enter();
            for (mut cmd, reply) in rx {
                let r = cmd.spawn();
                let _ = reply.send((cmd, r));
            }
        });
    if let Err(e) = started {
        // Without the thread every start fails with the send error above.
        tracing::error!("cannot start the function process spawner thread: {e}");
    }
    tx
}

/// Makes the child get SIGKILL when the thread that forks it ends: with [`spawn`], the
/// spawner thread, which lives as long as this process.
pub fn die_with_parent(cmd: &mut tokio::process::Command) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs between fork and exec and calls only async-signal-safe
    // functions (prctl, getppid) and allocation-free error constructors.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent died before prctl: the signal will never come, so do not run.
            if libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_child_carries_the_death_signal_and_is_reaped_by_the_runtime() {
        let mut cmd = tokio::process::Command::new("sh");
        cmd.args(["-c", "exit 7"]);
        die_with_parent(&mut cmd);
        let (_, child) = spawn(cmd).await;
        let mut child = child.expect("spawned");
        let pid = child.id().expect("pid");
        assert_ne!(pid, 0);
        let status = child.wait().await.expect("waited");
        assert_eq!(status.code(), Some(7));
        // The spawner is shared: a second start works too.
        let (_, again) = spawn(tokio::process::Command::new("true")).await;
        assert!(again
            .expect("spawned")
            .wait()
            .await
            .expect("waited")
            .success());
    }
}
