//! The session contract: what `yr start` records about a node in `DIR/session.json`, and the one
//! serde type through which the CLI writes it and the CLI, drivers and tests read it; and the
//! session root of this user, where `yr start` puts session folders and the `latest` link.
//!
//! Invariants: a session file lists every process its `yr start` left running (so `yr stop` can
//! end them all); fields added later carry `#[serde(default)]` so that a file written by an older
//! `yr` still loads; the file is written whole (to a temporary name, then renamed), so a reader
//! never sees half of one, and it is readable by its user only (0600).
//!
//! The session root is private to its user ([`sessions_root`]): another local user must not be
//! able to read a session's token and logs, nor plant the `latest` link that the CLI and drivers
//! follow. So a root is only used when it is a real folder owned by this user that nobody else
//! may write to ([`check_private_dir`]), and `latest` is only followed when the link and its
//! target belong to this user ([`latest`]). A refusal names the folder and what is wrong.

use std::ffi::OsStr;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The file name of a session inside its folder.
pub const SESSION_FILE: &str = "session.json";

/// The name of the link to the newest session inside the session root.
pub const LATEST: &str = "latest";

/// This process's effective user ID: the owner every private folder and file must have.
pub fn euid() -> u32 {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The session root for a user `uid` whose `$XDG_RUNTIME_DIR` is `xdg`: `$XDG_RUNTIME_DIR/yr` when
/// that folder is usable (an absolute path to a folder of this user that nobody else may write
/// to, as the XDG spec promises), else `/tmp/yr-<uid>`. Pure but for looking at `xdg`.
pub fn root_for(xdg: Option<&OsStr>, uid: u32) -> PathBuf {
    if let Some(x) = xdg.map(Path::new) {
        let usable = x.is_absolute()
            && std::fs::symlink_metadata(x)
                .is_ok_and(|m| m.is_dir() && m.uid() == uid && m.mode() & 0o022 == 0);
        if usable {
            return x.join("yr");
        }
    }
    PathBuf::from(format!("/tmp/yr-{uid}"))
}

/// This user's session root (see [`root_for`]); nothing is created or checked here.
pub fn sessions_root() -> PathBuf {
    root_for(std::env::var_os("XDG_RUNTIME_DIR").as_deref(), euid())
}

/// Checks that `dir` may hold this user's private files: a real folder (not a symbolic link)
/// owned by this user that neither its group nor others may write to.
pub fn check_private_dir(dir: &Path) -> Result<(), SessionError> {
    let refuse = |why: String| SessionError::Unsafe {
        path: dir.to_path_buf(),
        why,
    };
    let m = std::fs::symlink_metadata(dir).map_err(|e| refuse(format!("cannot stat it: {e}")))?;
    if m.file_type().is_symlink() {
        return Err(refuse("it is a symbolic link, not a folder".into()));
    }
    if !m.is_dir() {
        return Err(refuse("it is not a folder".into()));
    }
    let me = euid();
    if m.uid() != me {
        return Err(refuse(format!(
            "it is owned by uid {}, not by you (uid {me}); another user may have created it \
             to read or plant sessions: remove it, or set XDG_RUNTIME_DIR to a private folder",
            m.uid()
        )));
    }
    let mode = m.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(refuse(format!(
            "its group or other users may write to it (mode {mode:04o}); run `chmod 700 {}`",
            dir.display()
        )));
    }
    Ok(())
}

/// This user's session root, created (mode 0700) if missing, and checked as
/// [`check_private_dir`] does: what `yr start` writes sessions under.
pub fn ensure_root() -> Result<PathBuf, SessionError> {
    let root = sessions_root();
    match std::fs::DirBuilder::new().mode(0o700).create(&root) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(source) => {
            return Err(SessionError::Write { path: root, source });
        }
    }
    check_private_dir(&root)?;
    Ok(root)
}

/// The path of the `latest` link in this user's session root (for `yr start` and `yr stop`,
/// which write and remove it; readers go through [`latest`]).
pub fn latest_link() -> PathBuf {
    sessions_root().join(LATEST)
}

/// The newest session's folder on this host: where `latest` in this user's session root points.
/// Refused unless the root is private ([`check_private_dir`]), the link is a symbolic link owned
/// by this user, and its target is a folder owned by this user.
pub fn latest() -> Result<PathBuf, SessionError> {
    latest_in(&sessions_root())
}

/// [`latest`] for the session root `root`.
pub fn latest_in(root: &Path) -> Result<PathBuf, SessionError> {
    let link = root.join(LATEST);
    if !root.exists() {
        return Err(SessionError::Missing {
            path: link,
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
    }
    check_private_dir(root)?;
    let refuse = |why: String| SessionError::Unsafe {
        path: link.clone(),
        why,
    };
    let m = std::fs::symlink_metadata(&link).map_err(|source| SessionError::Missing {
        path: link.clone(),
        source,
    })?;
    let me = euid();
    if !m.file_type().is_symlink() {
        return Err(refuse(
            "it is not a symbolic link to a session folder".into(),
        ));
    }
    if m.uid() != me {
        return Err(refuse(format!(
            "the link is owned by uid {}, not by you (uid {me})",
            m.uid()
        )));
    }
    let target = std::fs::read_link(&link).map_err(|e| refuse(format!("cannot read it: {e}")))?;
    let target = root.join(target);
    let t = std::fs::metadata(&target).map_err(|source| SessionError::Missing {
        path: target.clone(),
        source,
    })?;
    if !t.is_dir() {
        return Err(refuse(format!("{} is not a folder", target.display())));
    }
    if t.uid() != me {
        return Err(refuse(format!(
            "it points at {}, owned by uid {}, not by you (uid {me})",
            target.display(),
            t.uid()
        )));
    }
    Ok(target)
}

/// Writes `contents` to `path` readable and writable by this user only (0600), whatever the
/// umask and whatever mode an earlier file of that name had.
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(contents)
}

/// One component process that `yr start` launched.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ComponentInfo {
    /// Its component name (`etcd`, `function-master`, `data-worker`, ...).
    pub name: String,
    pub pid: u32,
    /// The address it serves on (host:port, a socket path, or empty).
    pub address: String,
    /// Its log file.
    pub log: PathBuf,
    /// How often the node supervisor restarted it after it exited unexpectedly.
    #[serde(default)]
    pub restarts: u32,
    /// What the node supervisor last saw of it.
    #[serde(default)]
    pub state: ComponentState,
    /// How its last unexpected exit ended (`exit status 1`, `killed by signal 9`); empty if
    /// it never exited.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_exit: String,
}

/// A component's state as the node supervisor records it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ComponentState {
    /// Its process runs (the state of every component of a node without a supervisor).
    #[default]
    Running,
    /// It exited unexpectedly; the supervisor starts it again after a backoff.
    Restarting,
}

impl ComponentState {
    /// The name `yr status` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            ComponentState::Running => "running",
            ComponentState::Restarting => "restarting",
        }
    }
}

/// A node's `session.json`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// `master` or `worker`.
    pub role: String,
    pub session_dir: PathBuf,
    pub node_id: String,
    /// The function master's gRPC address (host:port).
    pub master_address: String,
    pub etcd_endpoints: Vec<String>,
    /// The REST frontend (master nodes only).
    #[serde(default)]
    pub frontend_url: Option<String>,
    /// The REST meta service (master nodes only).
    #[serde(default)]
    pub meta_url: Option<String>,
    /// This node's function proxy (host:port).
    pub proxy_address: String,
    /// This node's data worker socket.
    pub data_socket: PathBuf,
    /// The file holding the REST access token (mode 0600; master nodes).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Where other nodes' data workers pull this node's objects from (empty for sessions from
    /// before it existed).
    #[serde(default)]
    pub data_transfer: String,
    /// This node's TLS credentials: the cluster CA's certificate, the node's certificate chain
    /// and its key (mode 0600). Every internal gRPC connection and etcd need them; absent in
    /// sessions from before TLS.
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// The file holding the join token that lets a worker node join (master nodes, mode 0600).
    #[serde(default)]
    pub join_token_file: Option<PathBuf>,
    /// The cluster secret this node's data worker proves on the transfer port (mode 0600): a
    /// worker node given the same file (`yr start --worker --cluster-secret FILE`) can
    /// exchange objects with this one.
    #[serde(default)]
    pub cluster_secret: Option<PathBuf>,
    /// This node's collector (`/metrics`, usage history, instance logs), behind the collector
    /// token (see `yr_control::collector::api::token`); absent in sessions from before it.
    #[serde(default)]
    pub collector_url: Option<String>,
    /// The cluster's web page (master nodes), behind the REST access token.
    #[serde(default)]
    pub dashboard_url: Option<String>,
    pub components: Vec<ComponentInfo>,
    #[serde(default)]
    pub created_unix_ms: u64,
}

/// Why a session could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The session file could not be read (usually: no cluster was started here).
    #[error(
        "no yr session at {} ({source}); start one with `yr start --master`, or name a session \
         folder (--session-dir or YR_SESSION)",
        path.display()
    )]
    Missing {
        /// The file looked for.
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file exists but is not a session.
    #[error("{} is not a session file: {source}", path.display())]
    Malformed {
        /// The file read.
        path: PathBuf,
        source: serde_json::Error,
    },
    /// A folder or link is not private to this user, so using it could expose the session or
    /// follow another user's.
    #[error("refusing {}: {why}", path.display())]
    Unsafe {
        /// The folder or link refused.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The session could not be written.
    #[error("cannot write the session file {}: {source}", path.display())]
    Write {
        /// The file written.
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Session {
    /// The session file for `path`: `path` itself when it names a file, else `path/session.json`.
    pub fn file(path: &Path) -> PathBuf {
        if path.is_dir() {
            path.join(SESSION_FILE)
        } else {
            path.to_path_buf()
        }
    }

    /// Reads the session at `path` (a session folder or its `session.json`).
    pub fn load(path: &Path) -> Result<Session, SessionError> {
        let file = Session::file(path);
        let text = std::fs::read_to_string(&file).map_err(|source| SessionError::Missing {
            path: file.clone(),
            source,
        })?;
        Session::parse(&text).map_err(|source| SessionError::Malformed { path: file, source })
    }

    /// Parses the text of a `session.json`.
    pub fn parse(text: &str) -> Result<Session, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// Writes `DIR/session.json` whole: a reader sees the old file or the new one, never part.
    pub fn save(&self, dir: &Path) -> Result<(), SessionError> {
        let path = dir.join(SESSION_FILE);
        let err = |source| SessionError::Write {
            path: path.clone(),
            source,
        };
        let json = serde_json::to_string_pretty(self).map_err(|e| err(e.into()))?;
        let tmp = dir.join(format!(".{SESSION_FILE}.tmp"));
        write_private(&tmp, json.as_bytes()).map_err(err)?;
        std::fs::rename(&tmp, &path).map_err(err)
    }

    /// The component called `name`.
    pub fn component(&self, name: &str) -> Option<&ComponentInfo> {
        self.components.iter().find(|c| c.name == name)
    }

    /// The pid of the component called `name`.
    pub fn pid_of(&self, name: &str) -> Option<u32> {
        self.component(name).map(|c| c.pid)
    }

    /// This node's TLS credentials, if the session has them.
    pub fn tls(&self) -> Option<yr_proto::tls::NodeTls> {
        Some(yr_proto::tls::NodeTls {
            ca: self.tls_ca.clone()?,
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
        })
    }

    /// Installs this node's TLS credentials as the process's (see `yr_proto::tls`), so that
    /// its gRPC channels and etcd clients are the node's. A session without them installs
    /// nothing.
    pub fn install_tls(&self) -> Result<(), String> {
        match self.tls() {
            Some(t) => yr_proto::tls::install(&t).map(|_| ()),
            None => Ok(()),
        }
    }

    /// Whether this is a master node's session.
    pub fn is_master(&self) -> bool {
        self.role == "master"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Session {
        Session {
            role: "master".into(),
            session_dir: "/tmp/s".into(),
            node_id: "n1".into(),
            master_address: "127.0.0.1:1".into(),
            etcd_endpoints: vec!["http://127.0.0.1:2".into()],
            frontend_url: Some("http://127.0.0.1:3".into()),
            meta_url: None,
            proxy_address: "127.0.0.1:4".into(),
            data_socket: "/tmp/s/data.sock".into(),
            token_file: None,
            data_transfer: "127.0.0.1:5".into(),
            tls_ca: Some("/tmp/s/tls/ca.pem".into()),
            tls_cert: Some("/tmp/s/tls/node.pem".into()),
            tls_key: Some("/tmp/s/tls/node.key".into()),
            join_token_file: None,
            cluster_secret: Some("/tmp/s/cluster-secret".into()),
            collector_url: Some("http://127.0.0.1:6".into()),
            dashboard_url: None,
            components: vec![ComponentInfo {
                name: "etcd".into(),
                pid: 7,
                address: "127.0.0.1:2".into(),
                log: "/tmp/s/etcd.log".into(),
                restarts: 2,
                state: ComponentState::Restarting,
                last_exit: "killed by signal 9".into(),
            }],
            created_unix_ms: 9,
        }
    }

    #[test]
    fn a_saved_session_loads_back_from_its_folder_or_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let s = sample();
        s.save(dir.path()).expect("save");
        assert_eq!(Session::load(dir.path()).expect("load dir"), s);
        assert_eq!(
            Session::load(&dir.path().join(SESSION_FILE)).expect("load file"),
            s
        );
        assert_eq!(s.pid_of("etcd"), Some(7));
        assert_eq!(s.pid_of("nope"), None);
    }

    #[test]
    fn fields_added_later_are_optional() {
        let old = r#"{"role":"worker","session_dir":"/d","node_id":"n","master_address":"m:1",
            "etcd_endpoints":[],"proxy_address":"p:1","data_socket":"/d/s","components":[]}"#;
        let s = Session::parse(old).expect("an older session file loads");
        assert_eq!(s.data_transfer, "");
        assert!(s.token_file.is_none() && !s.is_master());
    }

    #[test]
    fn a_saved_session_is_private() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join(SESSION_FILE);
        // An earlier file readable by everyone does not keep its mode.
        std::fs::write(&file, "{}").expect("write");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        sample().save(dir.path()).expect("save");
        let mode = std::fs::metadata(&file).expect("stat").mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }

    #[test]
    fn the_root_is_xdg_runtime_dir_only_when_that_is_private() {
        let me = euid();
        let xdg = tempfile::tempdir().expect("temp dir");
        std::fs::set_permissions(xdg.path(), std::fs::Permissions::from_mode(0o700))
            .expect("chmod");
        assert_eq!(
            root_for(Some(xdg.path().as_os_str()), me),
            xdg.path().join("yr")
        );
        let fallback = PathBuf::from(format!("/tmp/yr-{me}"));
        assert_eq!(root_for(None, me), fallback);
        assert_eq!(root_for(Some(OsStr::new("relative")), me), fallback);
        assert_eq!(root_for(Some(OsStr::new("/no/such/dir")), me), fallback);
        // Another user's runtime folder (as under `sudo`) is not ours to use.
        assert_eq!(
            root_for(Some(xdg.path().as_os_str()), me + 1),
            PathBuf::from(format!("/tmp/yr-{}", me + 1))
        );
        std::fs::set_permissions(xdg.path(), std::fs::Permissions::from_mode(0o777))
            .expect("chmod");
        assert_eq!(root_for(Some(xdg.path().as_os_str()), me), fallback);
    }

    #[test]
    fn a_root_that_others_may_write_to_or_a_link_is_refused() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let root = tmp.path().join("root");
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&root)
            .expect("mkdir");
        check_private_dir(&root).expect("a private folder");
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o775)).expect("chmod");
        let e = check_private_dir(&root)
            .expect_err("group-writable")
            .to_string();
        assert!(
            e.contains(&root.display().to_string()) && e.contains("mode 0775"),
            "{e}"
        );
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        check_private_dir(&root).expect("readable by others is the user's choice");
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&root, &link).expect("symlink");
        let e = check_private_dir(&link).expect_err("a link").to_string();
        assert!(e.contains("symbolic link"), "{e}");
    }

    #[test]
    fn latest_is_followed_only_to_a_folder_of_this_user() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let root = tmp.path().join("root");
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&root)
            .expect("mkdir");
        let e = latest_in(&root).expect_err("no link yet").to_string();
        assert!(e.contains("yr start"), "{e}");
        let session = root.join("s1");
        std::fs::create_dir(&session).expect("mkdir");
        std::os::unix::fs::symlink(&session, root.join(LATEST)).expect("symlink");
        assert_eq!(latest_in(&root).expect("our own link"), session);
        // A folder in the link's place is not a link yr wrote.
        std::fs::remove_file(root.join(LATEST)).expect("rm");
        std::fs::create_dir(root.join(LATEST)).expect("mkdir");
        let e = latest_in(&root).expect_err("a folder").to_string();
        assert!(e.contains("not a symbolic link"), "{e}");
        std::fs::remove_dir(root.join(LATEST)).expect("rmdir");
        if euid() != 0 {
            eprintln!("not root: another user's folder cannot be made here (the integration test covers it)");
            return;
        }
        let theirs = tmp.path().join("theirs");
        std::fs::create_dir(&theirs).expect("mkdir");
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).expect("chown");
        std::os::unix::fs::symlink(&theirs, root.join(LATEST)).expect("symlink");
        let e = latest_in(&root)
            .expect_err("another user's folder")
            .to_string();
        assert!(e.contains("owned by uid 65534"), "{e}");
        std::os::unix::fs::lchown(root.join(LATEST), Some(65534), Some(65534)).expect("lchown");
        let e = latest_in(&root)
            .expect_err("another user's link")
            .to_string();
        assert!(e.contains("the link is owned by uid 65534"), "{e}");
    }

    #[test]
    fn a_missing_or_bad_file_is_named_in_the_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let e = Session::load(dir.path()).expect_err("no file").to_string();
        assert!(e.contains("session.json") && e.contains("yr start"), "{e}");
        std::fs::write(dir.path().join(SESSION_FILE), "{").expect("write");
        let e = Session::load(dir.path()).expect_err("bad file").to_string();
        assert!(e.contains("is not a session file"), "{e}");
    }
}
