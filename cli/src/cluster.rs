//! Cluster commands: `yr start`, `yr stop`, `yr status`, `yr token`, `yr function`, `yr invoke`,
//! `yr instance`, `yr dashboard`.
//!
//! `yr start` launches a node supervisor that launches every component as its own process, waits
//! for each one to be ready, records what it started in `DIR/session.json`, and restarts a
//! component that exits; everything else reads that file to find the
//! cluster. Invariant: a session file lists every process its `yr start` left running, so
//! `yr stop` can end them all.
//!
//! Parts, each depending only on those listed before it:
//! - [`session`]: the session folder, the `latest` link, the access token file;
//! - [`credentials`]: the node's TLS credentials (a master's new CA, a worker's join);
//! - [`launch`]: start a process, wait until it is ready, stop pids;
//! - [`node_config`]: `yr start`'s settings (defaults < `-c FILE` < `-s KEY=VALUE` < flags) as
//!   one typed struct, and `yr config template|dump`;
//! - [`plan`]: `yr start`'s settings to a typed node plan, without I/O;
//! - [`supervise`]: the node supervisor, which launches a plan's components as its children and
//!   restarts those that exit;
//! - [`start`]: the executor of a plan (through the supervisor), and `yr stop`;
//! - [`status`], [`health`], [`function`], [`instance`], [`dashboard`]: the commands that talk
//!   to the running cluster.
//!
//! The helpers below (a runtime, a master client) are shared by the parts.

pub mod credentials;
pub mod dashboard;
pub mod function;
pub mod health;
pub mod instance;
pub mod launch;
pub mod node_config;
pub mod plan;
pub mod session;
pub mod start;
pub mod status;
pub mod supervise;

use anyhow::Result;
use yr_proto::master_client::MasterClient;

pub use dashboard::{dashboard, DashboardArgs};
pub use function::{function, FunctionCmd};
pub use health::{health, HealthArgs};
pub use instance::{instance, invoke, InstanceCmd, InvokeArgs};
pub use launch::running;
pub use node_config::{config, ConfigCmd};
pub use plan::StartArgs;
pub use session::{print_session, token, SessionArg, TokenArgs};
pub use start::{start, stop, StopArgs};
pub use status::{status, StatusArgs};
pub use yr_runtime::session::{ComponentInfo, Session};

/// A runtime for one command's few RPCs.
fn rt() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// The join token of the cluster whose master node's session is `s` (for starting its workers
/// from a program: the demo and the benches).
pub fn read_join_token(s: &Session) -> Result<String> {
    let file = s.join_token_file.as_ref().ok_or_else(|| {
        anyhow::anyhow!("the session of node {} has no join token file", s.node_id)
    })?;
    Ok(std::fs::read_to_string(file)
        .map_err(|e| anyhow::anyhow!("cannot read the join token {}: {e}", file.display()))?
        .trim()
        .to_string())
}

/// A client of the cluster's active master: the session's masters and those registered in
/// etcd (masters started after this node's session was written), reached through a channel
/// that settles on the one that accepts connections (standbys do not).
async fn master_client(s: &Session) -> Result<MasterClient<yr_control::MasterChannel>> {
    Ok(MasterClient::new(master_channel(s).await?))
}

/// How long a command waits for a master that answers.
const SETTLE_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The channel of [`master_client`].
async fn master_channel(s: &Session) -> Result<yr_control::MasterChannel> {
    let mut list = yr_control::master_addresses(&s.master_address);
    for a in registered_masters(&s.etcd_endpoints).await {
        if !list.contains(&a) {
            list.push(a);
        }
    }
    let channel = yr_control::master_channel(&list.join(","))?;
    // Right after a failover the new master may take a moment to serve (or, on a loaded
    // host, to answer the probe): wait for one rather than send the command to a dead one.
    if !channel.settle_within(SETTLE_LIMIT).await {
        anyhow::bail!(
            "no function master answers at {} (waited {} s): is the cluster running?",
            list.join(", "),
            SETTLE_LIMIT.as_secs()
        );
    }
    Ok(channel)
}

/// The addresses of the masters registered in etcd, the active one first; none if etcd does
/// not answer within a moment (the session's own list is then all there is).
async fn registered_masters(etcd: &[String]) -> Vec<String> {
    let ask = async {
        let meta = yr_control::etcd::Meta::connect(etcd).await?;
        let active = yr_control::election::leader(&meta, yr_control::election::MASTER).await?;
        let mut all: Vec<String> = meta
            .list::<yr_proto::MasterRecord>(yr_control::etcd::MASTERS)
            .await?
            .into_iter()
            .map(|m| m.address)
            .collect();
        all.sort_by_key(|a| Some(a) != active.as_ref());
        Ok::<_, yr_control::error::Error>(all)
    };
    match tokio::time::timeout(std::time::Duration::from_secs(2), ask).await {
        Ok(Ok(all)) => all,
        _ => Vec::new(),
    }
}
