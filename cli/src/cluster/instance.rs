//! `yr invoke` (a call through this node's proxy) and `yr instance create|kill` (named, stateful
//! instances, through the master).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use yr_proto::proxy_client::ProxyClient;
use yr_proto::{
    CreateInstanceRequest, ErrorKind, InstanceRef, InvokeRequest, LabelAffinity, SchedulingOptions,
};

use super::function::affinity_arg;
use super::master_client;
use super::rt;
use super::session::SessionArg;

#[derive(Args)]
pub struct InvokeArgs {
    /// The function.
    name: String,
    /// Request body.
    #[arg(long, conflicts_with = "data_file")]
    data: Option<String>,
    /// Request body from a file.
    #[arg(long)]
    data_file: Option<PathBuf>,
    /// A stateful instance (its name or ID).
    #[arg(long)]
    instance: Option<String>,
    /// The method, for a stateful instance.
    #[arg(long)]
    method: Option<String>,
    #[arg(long)]
    timeout_ms: Option<u32>,
    #[command(flatten)]
    session: SessionArg,
}

#[derive(Subcommand)]
pub enum InstanceCmd {
    /// Create a named (stateful) instance of a function.
    Create {
        function: String,
        #[arg(long)]
        name: String,
        /// Label affinity for this instance (added to the function's), as for deploy.
        #[arg(long = "affinity", value_parser = affinity_arg)]
        affinity: Vec<LabelAffinity>,
        /// How long to wait for resources and for the instance to run (ms).
        #[arg(long, default_value_t = 30_000)]
        wait_ms: u32,
        #[command(flatten)]
        session: SessionArg,
    },
    /// Stop an instance (by ID or name).
    Kill {
        instance: String,
        #[command(flatten)]
        session: SessionArg,
    },
}

pub fn invoke(a: InvokeArgs) -> Result<()> {
    let s = a.session.load()?;
    let payload = match (&a.data, &a.data_file) {
        (Some(d), _) => d.clone().into_bytes(),
        (None, Some(f)) => {
            std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?
        }
        (None, None) => Vec::new(),
    };
    let req = InvokeRequest {
        function: a.name.clone(),
        instance: a.instance.clone().unwrap_or_default(),
        payload: payload.into(),
        timeout_ms: a.timeout_ms.unwrap_or(0),
        method: a.method.clone().unwrap_or_default(),
        ..Default::default()
    };
    let r = rt()?
        .block_on(async {
            let mut p = ProxyClient::new(yr_control::channel(&s.proxy_address)?)
                .max_decoding_message_size(yr_control::proxy::MAX_MESSAGE)
                .max_encoding_message_size(yr_control::proxy::MAX_MESSAGE);
            p.invoke(req)
                .await
                .map_err(|e| anyhow!("proxy {}: {}", s.proxy_address, e.message()))
        })?
        .into_inner();
    if r.error_kind() != ErrorKind::ErrorNone {
        let kind = ErrorKind::try_from(r.error_kind)
            .map(|k| k.as_str_name())
            .unwrap_or("ERROR");
        bail!("{kind}: {}", r.error);
    }
    let mut out = std::io::stdout();
    out.write_all(&r.payload)?;
    if !r.payload.ends_with(b"\n") && std::io::IsTerminal::is_terminal(&out) {
        writeln!(out)?;
    }
    Ok(())
}

pub fn instance(cmd: InstanceCmd) -> Result<()> {
    match cmd {
        InstanceCmd::Create {
            function,
            name,
            affinity,
            wait_ms,
            session,
        } => {
            let s = session.load()?;
            let r = rt()?
                .block_on(async {
                    master_client(&s)
                        .await?
                        .create_instance(CreateInstanceRequest {
                            function,
                            name,
                            stateful: true,
                            scheduling: Some(SchedulingOptions {
                                affinity,
                                ..Default::default()
                            }),
                            wait_ms,
                            ..Default::default()
                        })
                        .await
                        .map_err(|e| anyhow!("{}", e.message()))
                })?
                .into_inner();
            let i = r.instance.unwrap_or_default();
            println!(
                "{} {} on node {}",
                i.instance_id,
                yr_control::lifecycle::state_name(i.state),
                i.node_id
            );
            Ok(())
        }
        InstanceCmd::Kill { instance, session } => {
            let s = session.load()?;
            rt()?.block_on(async {
                master_client(&s)
                    .await?
                    .kill_instance(InstanceRef {
                        instance_id: String::new(),
                        name: instance.clone(),
                    })
                    .await
                    .map_err(|e| anyhow!("{}", e.message()))
            })?;
            println!("stopped {instance}");
            Ok(())
        }
    }
}
