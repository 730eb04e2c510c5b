//! `yr function deploy|delete|list`: a function's spec from a TOML file and flags (flags win), sent
//! to the master; and the label-affinity syntax that deploy and `yr instance create` share.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use clap::{Args, Subcommand};
use serde::Deserialize;
use yr_proto::{
    AffinityKind, DeployRequest, Empty, FunctionRef, FunctionSpec, LabelAffinity, Resources,
    SchedulingOptions,
};

use super::master_client;
use super::rt;
use super::session::SessionArg;
use crate::config;

#[derive(Subcommand)]
pub enum FunctionCmd {
    /// Register (or update) a function, from a TOML file and/or flags.
    Deploy(Box<DeployArgs>),
    /// Remove a function and stop its instances.
    Delete {
        name: String,
        #[command(flatten)]
        session: SessionArg,
    },
    /// List deployed functions.
    List {
        #[command(flatten)]
        session: SessionArg,
    },
}

#[derive(Args)]
pub struct DeployArgs {
    /// A TOML file with the function's fields (name, code_path, entrypoint, handler, ...);
    /// flags override it. A relative code_path is relative to the file.
    #[arg(long)]
    file: Option<PathBuf>,
    #[arg(long)]
    name: Option<String>,
    /// A folder, an executable, or a .tar.gz/.zip package.
    #[arg(long)]
    code: Option<PathBuf>,
    #[arg(long)]
    entrypoint: Option<String>,
    #[arg(long)]
    handler: Option<String>,
    #[arg(long)]
    min_instances: Option<u32>,
    #[arg(long)]
    max_instances: Option<u32>,
    #[arg(long)]
    concurrency: Option<u32>,
    #[arg(long)]
    cpu: Option<u64>,
    #[arg(long)]
    memory: Option<u64>,
    #[arg(long)]
    timeout_ms: Option<u32>,
    #[arg(long)]
    max_retries: Option<u32>,
    /// Label affinity: `required:KEY=V1|V2`, `preferred:KEY=V`, `anti:KEY` (repeatable).
    #[arg(long = "affinity", value_parser = affinity_arg)]
    affinity: Vec<LabelAffinity>,
    /// Spread instances over nodes instead of preferring the caller's node.
    #[arg(long)]
    spread: bool,
    /// Environment of the function's processes, KEY=VALUE (repeatable; adds to the file's).
    #[arg(long = "env")]
    env: Vec<String>,
    /// Custom resources each instance needs, NAME=AMOUNT (repeatable).
    #[arg(long = "resource")]
    resources: Vec<String>,
    #[command(flatten)]
    session: SessionArg,
}

/// Parses `required:zone=a|b`, `preferred:gpu`, `anti:zone=c`.
pub(super) fn affinity_arg(s: &str) -> Result<LabelAffinity, String> {
    let (kind, rule) = s.split_once(':').ok_or_else(|| {
        format!("{s:?}: expected KIND:KEY[=V1|V2], KIND one of required, preferred, anti")
    })?;
    let kind = match kind {
        "required" => AffinityKind::AffinityRequired,
        "preferred" => AffinityKind::AffinityPreferred,
        "anti" => AffinityKind::AffinityAnti,
        other => {
            return Err(format!(
                "{other:?} is not an affinity kind (required, preferred, anti)"
            ))
        }
    };
    let (key, values) = match rule.split_once('=') {
        Some((k, v)) => (k, v.split('|').map(str::to_string).collect()),
        None => (rule, Vec::new()),
    };
    if key.is_empty() {
        return Err(format!("{s:?}: the label key is empty"));
    }
    Ok(LabelAffinity {
        kind: kind as i32,
        key: key.to_string(),
        values,
    })
}

/// The function spec fields a TOML file may set.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FunctionToml {
    name: Option<String>,
    version: Option<String>,
    code_path: Option<PathBuf>,
    entrypoint: Option<String>,
    handler: Option<String>,
    cpu: Option<u64>,
    memory: Option<u64>,
    min_instances: Option<u32>,
    max_instances: Option<u32>,
    concurrency: Option<u32>,
    timeout_ms: Option<u32>,
    max_retries: Option<u32>,
    env: Option<std::collections::HashMap<String, String>>,
    resources: Option<std::collections::HashMap<String, f64>>,
}

pub fn function(cmd: FunctionCmd) -> Result<()> {
    match cmd {
        FunctionCmd::Deploy(a) => deploy(*a),
        FunctionCmd::Delete { name, session } => {
            let s = session.load()?;
            rt()?.block_on(async {
                master_client(&s)
                    .await?
                    .delete_function(FunctionRef { name: name.clone() })
                    .await
                    .map_err(|e| anyhow!("{}", e.message()))
            })?;
            println!("deleted {name}");
            Ok(())
        }
        FunctionCmd::List { session } => {
            let s = session.load()?;
            let l = rt()?
                .block_on(async {
                    master_client(&s)
                        .await?
                        .list_functions(Empty {})
                        .await
                        .map_err(|e| anyhow!("{}", e.message()))
                })?
                .into_inner();
            for f in l.functions {
                println!("{}\t{}\t{}", f.name, f.version, f.code_path);
            }
            Ok(())
        }
    }
}

fn deploy(a: DeployArgs) -> Result<()> {
    let s = a.session.load()?;
    let (t, base) = match &a.file {
        Some(f) => {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read {}", f.display()))?;
            let t: FunctionToml = toml::from_str(&text)
                .with_context(|| format!("{} is not a valid function file", f.display()))?;
            (t, f.parent().map(Path::to_path_buf).unwrap_or_default())
        }
        None => (FunctionToml::default(), std::env::current_dir()?),
    };
    let code = a
        .code
        .clone()
        .map(|c| std::env::current_dir().map(|d| d.join(c)))
        .transpose()?
        .or_else(|| t.code_path.as_ref().map(|c| base.join(c)))
        .ok_or_else(|| {
            anyhow!("the function's code is missing: pass --code PATH or set code_path")
        })?;
    let mut env = t.env.clone().unwrap_or_default();
    env.extend(config::key_values("env", &a.env)?);
    let mut custom = t.resources.clone().unwrap_or_default();
    custom.extend(config::amounts("resource", &a.resources)?);
    let code = code
        .canonicalize()
        .with_context(|| format!("code path {} does not exist", code.display()))?;
    let spec = FunctionSpec {
        name: a
            .name
            .clone()
            .or(t.name)
            .ok_or_else(|| anyhow!("the function needs a name (--name or name = ...)"))?,
        version: t.version.unwrap_or_default(),
        runtime: "posix-custom-runtime".into(),
        code_path: code.display().to_string(),
        entrypoint: a.entrypoint.clone().or(t.entrypoint).unwrap_or_default(),
        handler: a.handler.clone().or(t.handler).unwrap_or_default(),
        resources: Some(Resources {
            cpu_millis: a.cpu.or(t.cpu).unwrap_or(0),
            memory_mib: a.memory.or(t.memory).unwrap_or(0),
            custom: custom.clone(),
        }),
        min_instances: a.min_instances.or(t.min_instances).unwrap_or(0),
        max_instances: a.max_instances.or(t.max_instances).unwrap_or(0),
        concurrency: a.concurrency.or(t.concurrency).unwrap_or(0),
        timeout_ms: a.timeout_ms.or(t.timeout_ms).unwrap_or(0),
        env,
        max_retries: a.max_retries.or(t.max_retries).unwrap_or(3),
        scheduling: Some(SchedulingOptions {
            affinity: a.affinity.clone(),
            spread: a.spread,
            preferred_node: String::new(),
        }),
        ..Default::default()
    };
    let r = rt()?
        .block_on(async {
            master_client(&s)
                .await?
                .deploy(DeployRequest {
                    spec: Some(spec),
                    ..Default::default()
                })
                .await
                .map_err(|e| anyhow!("{}", e.message()))
        })?
        .into_inner();
    let spec = r.spec.unwrap_or_default();
    println!(
        "{} function {} (handler {}, code {})",
        if r.created { "deployed" } else { "updated" },
        spec.name,
        spec.handler,
        spec.code_path
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affinity_rules_parse_or_say_why_not() {
        let a = affinity_arg("required:zone=a|b").expect("valid");
        assert_eq!(a.kind, AffinityKind::AffinityRequired as i32);
        assert_eq!(
            (a.key.as_str(), a.values.as_slice()),
            ("zone", &["a".to_string(), "b".to_string()][..])
        );
        let a = affinity_arg("preferred:gpu").expect("valid");
        assert_eq!(a.kind, AffinityKind::AffinityPreferred as i32);
        assert!(a.values.is_empty());
        assert_eq!(
            affinity_arg("anti:zone=c").map(|a| a.kind),
            Ok(AffinityKind::AffinityAnti as i32)
        );
        for bad in ["zone=a", "maybe:zone=a", "required:", "required:=a"] {
            assert!(affinity_arg(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn function_files_refuse_unknown_fields() {
        let t: FunctionToml =
            toml::from_str("name = 'f'\nhandler = 'h'\n[env]\nA = '1'").expect("valid");
        assert_eq!(t.name.as_deref(), Some("f"));
        assert!(toml::from_str::<FunctionToml>("nmae = 'f'").is_err());
    }
}
