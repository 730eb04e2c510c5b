//! The session contract: what `yr start` records about a node in `DIR/session.json`, and the one
//! serde type through which the CLI writes it and the CLI, drivers and tests read it.
//!
//! Invariants: a session file lists every process its `yr start` left running (so `yr stop` can
//! end them all); fields added later carry `#[serde(default)]` so that a file written by an older
//! `yr` still loads; the file is written whole (to a temporary name, then renamed), so a reader
//! never sees half of one.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where `yr start` puts session folders unless told otherwise, and where `latest` points to the
/// newest one.
pub const SESSIONS_ROOT: &str = "/tmp/yr_sessions";

/// The file name of a session inside its folder.
pub const SESSION_FILE: &str = "session.json";

/// The newest session's folder on this host (`SESSIONS_ROOT/latest`).
pub fn latest() -> PathBuf {
    Path::new(SESSIONS_ROOT).join("latest")
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
    /// The cluster secret this node's data worker proves on the transfer port (mode 0600): a
    /// worker node given the same file (`yr start --worker --cluster-secret FILE`) can
    /// exchange objects with this one.
    #[serde(default)]
    pub cluster_secret: Option<PathBuf>,
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
        std::fs::write(&tmp, json).map_err(err)?;
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
            cluster_secret: Some("/tmp/s/cluster-secret".into()),
            components: vec![ComponentInfo {
                name: "etcd".into(),
                pid: 7,
                address: "127.0.0.1:2".into(),
                log: "/tmp/s/etcd.log".into(),
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
    fn a_missing_or_bad_file_is_named_in_the_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let e = Session::load(dir.path()).expect_err("no file").to_string();
        assert!(e.contains("session.json") && e.contains("yr start"), "{e}");
        std::fs::write(dir.path().join(SESSION_FILE), "{").expect("write");
        let e = Session::load(dir.path()).expect_err("bad file").to_string();
        assert!(e.contains("is not a session file"), "{e}");
    }
}
