//! The node's TLS credentials and the gRPC configs made from them: every internal gRPC connection
//! of a cluster is mutual TLS under the cluster's CA.
//!
//! A node's credentials are three PEM files ([`NodeTls`]): the cluster CA's certificate, the
//! node's certificate chain (its certificate, then the CA's), and the node's private key. A
//! process installs them once ([`install`]) before it makes a channel or serves; after that
//! [`endpoint`] makes `https` endpoints that present the node's certificate and trust only the
//! cluster CA, [`server_config`] makes the servers' config, and [`require_client_cert`] is the
//! check every service but `Join` runs on each call.
//!
//! Invariants: a component installs its node's credentials once, at start, so every channel
//! and server of it speaks one identity. A driver installs those of the session it connects to;
//! connecting to another cluster later installs that one's, for the channels made after it (a
//! channel keeps the credentials it was made with). Without an install, endpoints are plaintext
//! and [`require_client_cert`] lets calls through: that is a component started without
//! `--tls-dir`, which warns that it is open. A
//! server with TLS accepts a handshake without a client certificate only so that a joining node
//! can call `Join`; every other service refuses such a call with `UNAUTHENTICATED`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};
use tonic::{Request, Status};

/// The environment variables through which an agent tells its function processes the node's
/// credentials (see [`NodeTls::env`]).
pub const ENV_CA: &str = "YR_TLS_CA";
pub const ENV_CERT: &str = "YR_TLS_CERT";
pub const ENV_KEY: &str = "YR_TLS_KEY";

/// The file names of a node's credentials inside its folder.
pub const CA_FILE: &str = "ca.pem";
pub const CERT_FILE: &str = "node.pem";
pub const KEY_FILE: &str = "node.key";

/// Where a node's credentials are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeTls {
    /// The cluster CA's certificate (PEM).
    pub ca: PathBuf,
    /// The node's certificate, followed by the CA's (PEM).
    pub cert: PathBuf,
    /// The node's private key (PEM, mode 0600).
    pub key: PathBuf,
}

impl NodeTls {
    /// The credentials in `dir`, under their standard names.
    pub fn in_dir(dir: &Path) -> NodeTls {
        NodeTls {
            ca: dir.join(CA_FILE),
            cert: dir.join(CERT_FILE),
            key: dir.join(KEY_FILE),
        }
    }

    /// The environment variables that name these files to a child process.
    pub fn env(&self) -> [(&'static str, PathBuf); 3] {
        [
            (ENV_CA, self.ca.clone()),
            (ENV_CERT, self.cert.clone()),
            (ENV_KEY, self.key.clone()),
        ]
    }

    /// Reads the three files.
    pub fn load(&self) -> Result<Credentials, String> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| format!("cannot read TLS file {}: {e}", p.display()))
        };
        Ok(Credentials {
            files: self.clone(),
            ca: read(&self.ca)?,
            cert: read(&self.cert)?,
            key: read(&self.key)?,
        })
    }
}

/// A node's credentials, read.
#[derive(Clone)]
pub struct Credentials {
    files: NodeTls,
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Credentials")
            .field("files", &self.files)
            .finish()
    }
}

impl Credentials {
    /// The files they were read from.
    pub fn files(&self) -> &NodeTls {
        &self.files
    }

    /// The CA certificate (PEM).
    pub fn ca_pem(&self) -> &[u8] {
        &self.ca
    }

    /// A client config that presents this node's certificate and trusts only the cluster CA.
    pub fn client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .identity(Identity::from_pem(&self.cert, &self.key))
            .timeout(HANDSHAKE_TIMEOUT)
    }

    /// A server config that presents this node's certificate and verifies any client
    /// certificate against the cluster CA. A client without one completes the handshake (to
    /// call `Join`); [`require_client_cert`] refuses it everywhere else.
    pub fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert, &self.key))
            .client_ca_root(Certificate::from_pem(&self.ca))
            .client_auth_optional(true)
            .timeout(HANDSHAKE_TIMEOUT)
    }
}

/// A peer that opens a connection and says nothing holds no more than this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

static INSTALLED: RwLock<Option<Arc<Credentials>>> = RwLock::new(None);
/// Set by the first install and never cleared: from then on a server of this process refuses
/// calls without a client certificate (read on every call, so kept apart from the lock).
static ENFORCED: AtomicBool = AtomicBool::new(false);

/// Installs `files` as this process's credentials (see the module's invariants); installing
/// the ones already installed reads nothing.
pub fn install(files: &NodeTls) -> Result<Arc<Credentials>, String> {
    if let Some(c) = installed() {
        if c.files == *files {
            return Ok(c);
        }
    }
    let c = Arc::new(files.load()?);
    let mut slot = INSTALLED
        .write()
        .map_err(|_| "the TLS credentials' lock is poisoned".to_string())?;
    *slot = Some(Arc::clone(&c));
    ENFORCED.store(true, Ordering::Release);
    Ok(c)
}

/// Installs the credentials named by [`ENV_CA`], [`ENV_CERT`] and [`ENV_KEY`], if they are
/// set (function processes).
pub fn install_from_env() -> Result<Option<Arc<Credentials>>, String> {
    let var = |k| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    match (var(ENV_CA), var(ENV_CERT), var(ENV_KEY)) {
        (Some(ca), Some(cert), Some(key)) => install(&NodeTls { ca, cert, key }).map(Some),
        _ => Ok(None),
    }
}

/// This process's credentials, if installed.
pub fn installed() -> Option<Arc<Credentials>> {
    INSTALLED.read().ok().and_then(|c| c.clone())
}

/// An endpoint for `address` (host:port): `https` with the installed credentials, else plain
/// `http`.
pub fn endpoint(address: &str) -> Result<Endpoint, String> {
    let bad = |e: &dyn std::fmt::Display| format!("bad address {address:?}: {e}");
    match installed() {
        Some(c) => Endpoint::from_shared(format!("https://{address}"))
            .map_err(|e| bad(&e))?
            .tls_config(c.client())
            .map_err(|e| bad(&e)),
        None => Endpoint::from_shared(format!("http://{address}")).map_err(|e| bad(&e)),
    }
}

/// The check that every service but `Join` runs on each call: with TLS installed, a call whose
/// connection presented no client certificate (verified against the cluster CA by the
/// handshake) is refused.
#[allow(clippy::result_large_err)] // tonic's interceptor signature
pub fn require_client_cert(req: Request<()>) -> Result<Request<()>, Status> {
    if !ENFORCED.load(Ordering::Acquire) {
        return Ok(req);
    }
    match req.peer_certs() {
        Some(certs) if !certs.is_empty() => Ok(req),
        _ => Err(Status::unauthenticated(
            "this service needs a client certificate from the cluster's CA: a node joins with \
             `yr start --worker --master-address ADDR --join-token TOKEN`",
        )),
    }
}
