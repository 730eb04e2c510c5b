//! The session folder on this host: choosing and claiming one for `yr start`, the `latest` link,
//! the REST access token kept in it, and finding a session for the other commands
//! (`--session-dir`, else `latest`). The `session.json` inside is `yr_runtime::session::Session`.
//!
//! Invariants: a folder holds at most one session; `yr start` refuses a folder whose
//! `session.json` exists, and `yr stop` removes the file (and `latest`, if it points there). A
//! session folder and its `logs/` are 0700 and checked as private before use (see
//! `yr_runtime::session::check_private_dir`); the session root is this user's own
//! (`yr_runtime::session::ensure_root`), and `latest` is followed only as
//! `yr_runtime::session::latest` allows.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use yr_runtime::session::{Session, SESSION_FILE};

#[derive(Args)]
pub struct SessionArg {
    /// Session folder or its session.json file (default: `latest` in this user's session root,
    /// $XDG_RUNTIME_DIR/yr or /tmp/yr-<uid>).
    #[arg(
        long,
        visible_alias = "session",
        alias = "session_dir",
        alias = "session-file",
        alias = "session_file"
    )]
    session_dir: Option<PathBuf>,
}

impl SessionArg {
    /// The folder named, else this user's newest session on this host.
    pub fn dir(&self) -> Result<PathBuf> {
        match &self.session_dir {
            Some(d) => Ok(d.clone()),
            None => Ok(yr_runtime::session::latest()?),
        }
    }

    /// Reads the session's `session.json` and installs its node's TLS credentials, so that
    /// the command's gRPC goes out as that node.
    pub fn load(&self) -> Result<Session> {
        let s = Session::load(&self.dir()?)?;
        s.install_tls().map_err(anyhow::Error::msg)?;
        Ok(s)
    }
}

/// The session folder name for a start at `now_ms` by process `pid`: the UTC date and time, then
/// the pid (two starts in one second on one host differ by pid).
pub fn folder_name(now_ms: u64, pid: u32) -> String {
    let secs = now_ms / 1000;
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
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}-{pid}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
    )
}

/// Claims `dir` (default: a new folder under this user's session root) for a new session:
/// refuses one that holds a session or is not private to this user, creates it and its `logs/`
/// with mode 0700, and returns its canonical path.
pub fn claim(dir: Option<&Path>) -> Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let dir = match dir {
        Some(d) => d.to_path_buf(),
        None => yr_runtime::session::ensure_root()?
            .join(folder_name(yr_control::etcd::now_ms(), std::process::id())),
    };
    if dir.join(SESSION_FILE).exists() {
        bail!(
            "{} already holds a session; stop it first (`yr stop --session-dir {}`) or choose another folder",
            dir.display(),
            dir.display()
        );
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    // A folder that existed keeps the mode it had: make it private, or refuse it below if it is
    // not ours to change.
    let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
    yr_runtime::session::check_private_dir(&dir)?;
    let logs = dir.join("logs");
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&logs)
        .or_else(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Ok(()),
            _ => Err(e),
        })
        .with_context(|| format!("cannot create {}", logs.display()))?;
    std::fs::set_permissions(&logs, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot make {} private", logs.display()))?;
    Ok(dir.canonicalize()?)
}

/// Points `latest` in this user's session root at `dir`, replacing the old link at once (a
/// reader sees the old link or the new one). Best effort: a stale link only misleads commands
/// run without `--session-dir`.
pub fn link_latest(dir: &Path) {
    let Ok(root) = yr_runtime::session::ensure_root() else {
        return;
    };
    let tmp = root.join(format!(".latest.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    if std::os::unix::fs::symlink(dir, &tmp).is_ok()
        && std::fs::rename(&tmp, root.join(yr_runtime::session::LATEST)).is_err()
    {
        let _ = std::fs::remove_file(&tmp);
    }
}

/// Removes the session file of `s`, and `latest` if it points at that session.
pub fn remove(s: &Session) -> Result<()> {
    std::fs::remove_file(s.session_dir.join(SESSION_FILE))?;
    let latest = yr_runtime::session::latest_link();
    if std::fs::read_link(&latest).ok().as_deref() == Some(s.session_dir.as_path()) {
        let _ = std::fs::remove_file(&latest);
    }
    Ok(())
}

/// Generates the cluster's REST access token (256 bits from the kernel's random source) into
/// `path`, readable by this user only; refuses to overwrite a file.
pub fn write_token(path: &Path) -> Result<()> {
    // The same form as the cluster secret: 32 random bytes, hex, in a new 0600 file.
    yr_datastore::peer_auth::create_secret_file(path).context("cannot write the access token")
}

/// Prints the session folder that commands without `--session-dir` use (after the checks that
/// `latest` must pass), once its `session.json` is there.
pub fn print_session(a: SessionArg) -> Result<()> {
    let s = a.load()?;
    println!("{}", s.session_dir.display());
    Ok(())
}

#[derive(Args)]
pub struct TokenArgs {
    #[command(flatten)]
    session: SessionArg,
    /// Print the whole header line, `Authorization: Bearer <token>`.
    #[arg(long, conflicts_with = "join")]
    header: bool,
    /// Print the join token instead: what a worker node needs to join
    /// (`yr start --worker --master-address ADDR --join-token TOKEN`).
    #[arg(long, conflicts_with = "collector")]
    join: bool,
    /// Print the collector token instead: what every node's collector (`/metrics`, usage,
    /// instance logs) requires, derived from the cluster secret (for a Prometheus's
    /// `authorization.credentials_file`).
    #[arg(long)]
    collector: bool,
}

/// Prints the REST access token of the session's cluster (or its join or collector token).
pub fn token(a: TokenArgs) -> Result<()> {
    let s = a.session.load()?;
    if a.collector {
        let file = s.cluster_secret.ok_or_else(|| {
            anyhow!(
                "the session of node {} names no cluster secret (a session from before it)",
                s.node_id
            )
        })?;
        let t = yr_control::collector::api::token_from_file(&file)
            .with_context(|| format!("cannot read the cluster secret {}", file.display()))?;
        if a.header {
            println!("Authorization: Bearer {t}");
        } else {
            println!("{t}");
        }
        return Ok(());
    }
    if a.join {
        let file = s.join_token_file.ok_or_else(|| {
            anyhow!(
                "the session of node {} has no join token: it lives in the master node's \
                 session (pass its folder with --session-dir)",
                s.node_id
            )
        })?;
        let t = std::fs::read_to_string(&file)
            .with_context(|| format!("cannot read the join token {}", file.display()))?;
        println!("{}", t.trim());
        return Ok(());
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_are_named_by_utc_time_and_pid() {
        assert_eq!(folder_name(0, 7), "19700101-000000-7");
        // 2000-02-29 12:34:56 UTC, a leap day.
        assert_eq!(folder_name(951_827_696_000, 42), "20000229-123456-42");
        // 2026-12-31 23:59:59.999 UTC.
        assert_eq!(folder_name(1_798_761_599_999, 1), "20261231-235959-1");
    }

    #[test]
    fn a_folder_holding_a_session_is_not_claimed_twice() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("s");
        let claimed = claim(Some(&dir)).expect("a fresh folder");
        assert!(claimed.join("logs").is_dir());
        use std::os::unix::fs::PermissionsExt;
        for d in [&claimed, &claimed.join("logs")] {
            let mode = std::fs::metadata(d).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "{}: {mode:o}", d.display());
        }
        std::fs::write(claimed.join(SESSION_FILE), "{}").expect("write");
        let e = claim(Some(&dir)).expect_err("holds a session");
        assert!(e.to_string().contains("already holds a session"), "{e}");
    }

    #[test]
    fn the_token_is_private_and_never_overwritten() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().expect("temp dir");
        let path = tmp.path().join("token");
        write_token(&path).expect("written");
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text.trim().len(), 64);
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(
            write_token(&path).is_err(),
            "a second token would replace the first"
        );
        assert_eq!(std::fs::read_to_string(&path).expect("read"), text);
    }
}
