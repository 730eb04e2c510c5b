//! A node's TLS credentials in its session folder (`DIR/tls/`, mode 0700): a master makes the
//! cluster CA, its own certificate and the join token; a worker gets its certificate from the
//! master through `Join`, having checked that the master presents the CA the token names.
//!
//! Invariants: keys and the token are written 0600 and never overwritten; a worker sends the
//! token's secret only over a TLS connection to a master whose chain has the token's CA, and
//! keeps the CA it checked (not one the reply names).

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use anyhow::{bail, Context, Result};
use yr_control::pki::{self, JoinToken};
use yr_proto::tls::NodeTls;

/// The names a node's certificate is valid for: loopback, this host's name and the bind address.
pub fn node_names(hostname: &str, bind: std::net::Ipv4Addr) -> Vec<String> {
    vec![
        "127.0.0.1".into(),
        "localhost".into(),
        hostname.to_string(),
        bind.to_string(),
    ]
}

/// Creates the credentials folder afresh: one left by a start that failed (its session folder
/// holds no session, which `claim` checked) is replaced.
fn private_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))
}

/// Writes a new file readable by this user only.
fn write_private(path: &Path, contents: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(contents.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Makes a new cluster CA (its key at `ca_key`), this master node's credentials in `tls` and
/// the join token (in `token_file`), and returns the token.
pub fn make_master(
    tls: &NodeTls,
    ca_key: &Path,
    token_file: &Path,
    names: &[String],
) -> Result<JoinToken> {
    if let Some(d) = tls.ca.parent() {
        private_dir(d)?;
    }
    let ca = pki::new_ca()?;
    write_private(&tls.ca, &ca.chain_pem)?;
    write_private(ca_key, &ca.key_pem)?;
    let node = pki::issue_node(&ca.chain_pem, &ca.key_pem, names)?;
    write_private(&tls.cert, &node.chain_pem)?;
    write_private(&tls.key, &node.key_pem)?;
    let token = JoinToken {
        secret: pki::new_secret()?,
        ca_hash: pki::pem_hash(&ca.chain_pem)?,
    };
    write_private(token_file, &format!("{token}\n"))?;
    Ok(token)
}

/// Where a standby master keeps what the active master hands it when it joins.
pub struct StandbyFiles<'a> {
    /// The cluster CA's key.
    pub ca_key: &'a Path,
    /// The join token.
    pub join_token: &'a Path,
    /// The REST access token.
    pub rest_token: &'a Path,
}

/// Joins the cluster of the master at `master` (host:port) with `token`: writes this node's
/// credentials into `tls` (the cluster secret into `secret`, if given, and for a standby
/// master the CA's key and the tokens into `standby`) and returns the cluster's etcd endpoints.
pub fn join(
    master: &str,
    token: &str,
    tls: &NodeTls,
    names: &[String],
    secret: Option<&Path>,
    standby: Option<StandbyFiles<'_>>,
) -> Result<Vec<String>> {
    let standby_master = standby.is_some();
    let token = JoinToken::parse(token)?;
    let rt = super::rt()?;
    let (ca_pem, reply, key_pem) = rt.block_on(async {
        let ca_pem = pki::fetch_pinned_ca(master, &token.ca_hash).await?;
        let (csr_pem, key_pem) = pki::node_request(names)?;
        // Trusting only the pinned CA, and showing no certificate: `Join` is the one call a
        // node without one may make.
        let endpoint = tonic::transport::Endpoint::from_shared(format!("https://{master}"))?
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(&ca_pem)),
            )?
            .connect_timeout(std::time::Duration::from_secs(5));
        let channel = endpoint
            .connect()
            .await
            .with_context(|| format!("cannot reach the master at {master}"))?;
        let reply = yr_proto::join_client::JoinClient::new(channel)
            .join(yr_proto::JoinRequest {
                token: token.secret.clone(),
                csr_pem,
                standby_master,
            })
            .await
            .map_err(|s| {
                anyhow::anyhow!("the master at {master} refused to join: {}", s.message())
            })?
            .into_inner();
        anyhow::Ok((ca_pem, reply, key_pem))
    })?;
    if pki::pem_hash(&reply.ca_pem)? != token.ca_hash {
        bail!("the master at {master} answered with another CA than the join token's");
    }
    if reply.etcd_endpoints.is_empty() {
        bail!("the master at {master} reported no etcd endpoints");
    }
    if let Some(d) = tls.ca.parent() {
        private_dir(d)?;
    }
    write_private(&tls.ca, &ca_pem)?;
    write_private(&tls.cert, &reply.cert_pem)?;
    write_private(&tls.key, &key_pem)?;
    if let Some(path) = secret {
        if reply.cluster_secret.trim().is_empty() {
            bail!("the master at {master} sent no cluster secret");
        }
        write_private(path, &reply.cluster_secret)?;
    }
    if let Some(f) = standby {
        let given = [
            (f.ca_key, &reply.ca_key_pem, "the CA's key"),
            (f.join_token, &reply.join_token, "the join token"),
            (f.rest_token, &reply.rest_token, "the REST access token"),
        ];
        for (path, text, what) in given {
            if text.trim().is_empty() {
                bail!(
                    "the master at {master} sent no {what} for a standby master (is it an older \
                     yr, or was it started without its CA?)"
                );
            }
            write_private(path, &format!("{}\n", text.trim()))?;
        }
    }
    Ok(reply.etcd_endpoints)
}
