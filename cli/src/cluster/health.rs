//! `yr health`: whether the cluster of a session is healthy, for people and for scripts (exit
//! status 0 only when every check passes; otherwise the error names each unhealthy part).
//!
//! Checks, each independent of the others so that one report lists every problem: every
//! process the session's `yr start` left running is still running (not a zombie); the master
//! answers within a deadline; this node is registered and alive in the master's view; no node
//! of the cluster is dead.

use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;
use yr_proto::Empty;

use super::session::SessionArg;
use super::{launch, master_client, rt};

#[derive(Args)]
pub struct HealthArgs {
    #[command(flatten)]
    session: SessionArg,
    /// How long the master may take to answer, in milliseconds.
    #[arg(long, alias = "timeout_ms", default_value_t = 5000)]
    timeout_ms: u64,
}

/// One check's outcome: `Ok(what)` or `Err(what is wrong)`.
type Check = std::result::Result<String, String>;

pub fn health(a: HealthArgs) -> Result<()> {
    let s = a.session.load()?;
    let mut checks: Vec<Check> = s
        .components
        .iter()
        .map(|c| {
            if launch::running(c.pid) {
                Ok(format!("{} (pid {}) is running", c.name, c.pid))
            } else {
                Err(format!("{} (pid {}) is not running", c.name, c.pid))
            }
        })
        .collect();
    let deadline = Duration::from_millis(a.timeout_ms);
    let status = rt()?.block_on(async {
        let ask = async {
            master_client(&s)
                .await?
                .status(Empty {})
                .await
                .map_err(anyhow::Error::from)
        };
        match tokio::time::timeout(deadline, ask).await {
            Ok(r) => r,
            Err(_) => Err(anyhow::anyhow!("no answer within {deadline:?}")),
        }
    });
    match status {
        Err(e) => checks.push(Err(format!(
            "the master at {} does not answer: {e:#}",
            s.master_address
        ))),
        Ok(st) => {
            let st = st.into_inner();
            checks.push(Ok(format!("the master at {} answers", s.master_address)));
            checks.push(if st.nodes.iter().any(|n| n.node_id == s.node_id) {
                Ok(format!("node {} is registered and alive", s.node_id))
            } else {
                Err(format!(
                    "node {} is not alive in the master's view",
                    s.node_id
                ))
            });
            checks.extend(
                st.dead_nodes
                    .iter()
                    .map(|d| Err(format!("node {d} of the cluster is dead"))),
            );
            checks.push(Ok(format!("{} node(s) alive", st.nodes.len())));
        }
    }
    for c in &checks {
        match c {
            Ok(m) => println!("ok    {m}"),
            Err(m) => println!("FAIL  {m}"),
        }
    }
    let bad: Vec<&str> = checks
        .iter()
        .filter_map(|c| c.as_ref().err().map(String::as_str))
        .collect();
    if !bad.is_empty() {
        bail!(
            "the cluster of node {} is unhealthy: {}",
            s.node_id,
            bad.join("; ")
        );
    }
    println!("healthy");
    Ok(())
}
