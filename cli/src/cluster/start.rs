//! `yr start` and `yr stop`: the executor of a node plan, and its undoing.
//!
//! `start` checks the flags, claims the session folder, resolves what the plan needs from the
//! system (free ports, the `etcd` program, a worker's etcd endpoints from its master), builds the
//! plan and hands it to the node supervisor ([`super::supervise`]), which launches its components
//! in order, each after the previous one is ready. If any fails, the supervisor stops those it
//! started and exits, so a failed start leaves no process behind. Else the supervisor writes
//! `session.json` (listing every process left running, itself included, for `yr stop`) and keeps
//! the components running; `start` points `latest` at the session when the folder was its own
//! choice, and waits until the master sees the node.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use yr_control::etcd::now_ms;
use yr_proto::Empty;
use yr_runtime::session::Session;

use super::credentials;
use super::launch;
use super::plan::{self, Inputs, NodePlan, PortMode, Ports, Ready, Role, StartArgs};
use super::session::{self, SessionArg};
use super::supervise;
use super::{master_client, rt};

/// How long a standby master waits for the cluster's etcd to accept its member (or to remove
/// it, at `yr stop`).
const MEMBER_ADD_WITHIN: Duration = Duration::from_secs(20);

/// How long a started node may take to appear in the master's view.
const REGISTER_WITHIN: Duration = Duration::from_secs(20);

pub fn start(a: StartArgs) -> Result<()> {
    let a = a.resolve()?;
    let checked = plan::check(&a)?;
    let dir = session::claim(a.session_dir.as_deref())?;
    if !a.bind.is_loopback() {
        eprintln!(
            "warning: yr services of this node listen on {}, reachable from other hosts. REST \
             routes require the access token, gRPC and etcd a certificate from the cluster CA, \
             and the data transfer port the cluster secret: still, only bind an address on a \
             network you trust.",
            a.bind
        );
    }
    // The node's credentials first: a worker's etcd endpoints come with its certificate.
    let tls = yr_proto::tls::NodeTls::in_dir(&dir.join(plan::TLS_DIR));
    let names = credentials::node_names(&hostname(), a.bind);
    // A master given a master's address is a standby: it joins like a worker.
    let standby = checked.role == Role::Master
        && a.master_address
            .as_deref()
            .is_some_and(|m| !m.trim().is_empty());
    let (join_token, master_etcd) = match checked.role {
        Role::Master if !standby => {
            let t = credentials::make_master(
                &tls,
                &dir.join(plan::TLS_DIR).join("ca.key"),
                &dir.join(plan::TLS_DIR).join("join-token"),
                &names,
            )?;
            (Some(t), Vec::new())
        }
        Role::Worker | Role::Master => {
            let master = plan::master_host_port(a.master_address.as_deref().unwrap_or_default());
            let token = a.join_token.as_deref().unwrap_or_default();
            // Without --cluster-secret, the master's comes with the certificate.
            let secret = (a.cluster_secret.is_none()).then(|| dir.join(plan::CLUSTER_SECRET_FILE));
            let (ca_key, join_token, rest_token) = (
                dir.join(plan::TLS_DIR).join("ca.key"),
                dir.join(plan::TLS_DIR).join("join-token"),
                dir.join("token"),
            );
            let files = standby.then(|| credentials::StandbyFiles {
                ca_key: &ca_key,
                join_token: &join_token,
                rest_token: &rest_token,
            });
            (
                None,
                credentials::join(master, token, &tls, &names, secret.as_deref(), files)?,
            )
        }
    };
    // This process speaks as the node from here on (waiting for etcd and for registration).
    yr_proto::tls::install(&tls).map_err(anyhow::Error::msg)?;
    let node_id = plan::node_id(&hostname(), now_ms(), std::process::id());
    let ports = match checked.ports {
        PortMode::Standard => Ports::STANDARD,
        PortMode::Auto => Ports::from_free(launch::free_ports()?),
    };
    // A standby master that runs its own etcd member adds it to the cluster's etcd first.
    let cluster_etcd = master_etcd.clone();
    let (master_etcd, etcd_member) = if standby && a.etcd_endpoints.is_none() {
        let peer = format!("https://{}:{}", a.bind, ports.etcd_peer);
        let name = plan::etcd_member_name(&node_id, true);
        let (member, others) = add_etcd_member(&master_etcd, &name, &peer)?;
        (others, Some(member))
    } else {
        (master_etcd, None)
    };
    let inputs = Inputs {
        exe: std::env::current_exe().context("cannot find the yr executable")?,
        dir,
        node_id,
        ports,
        etcd_program: launch::which("etcd"),
        master_etcd,
        etcd_member,
        // A path that is not UTF-8 is left out rather than mangled.
        python_env: std::env::var("YR_PYTHON")
            .ok()
            .or_else(|| installed_python(&python_candidates())),
    };
    let added = inputs.etcd_member.as_ref().map(|m| m.id);
    let launched = plan::plan(&a, inputs)
        .map_err(anyhow::Error::from)
        .and_then(|plan| Ok((launch_plan(&plan)?, plan)));
    let (session, plan) = match launched {
        Ok(l) => l,
        Err(e) => {
            // A member added but never started would count against the etcd quorum forever.
            if let Some(id) = added {
                remove_etcd_member(&cluster_etcd, id);
            }
            return Err(e);
        }
    };
    if a.session_dir.is_none() {
        session::link_latest(&plan.dir);
    }
    // Wait until the master sees this node, so that a deploy right after start can place work.
    wait_for_node(&session)?;
    print_started(&session, join_token.as_ref())
}

/// Adds this standby master's etcd member (`name` at `peer`) to the cluster's etcd at
/// `endpoints`: returns its `--initial-cluster` list and the client URLs of the members already
/// running (its components' other etcd endpoints).
fn add_etcd_member(
    endpoints: &[String],
    name: &str,
    peer: &str,
) -> Result<(plan::EtcdMember, Vec<String>)> {
    rt()?.block_on(async {
        let meta = yr_control::etcd::Meta::connect(endpoints).await?;
        // etcd admits a member only once every member has been connected for a few seconds
        // (5 s in etcd 3.4-3.5): a standby started right after another waits for that.
        let deadline = Instant::now() + MEMBER_ADD_WITHIN;
        let added = loop {
            match meta.client().member_add([peer], None).await {
                Ok(a) => break a,
                Err(etcd_client::Error::GRpcStatus(s))
                    if s.code() == tonic::Code::Unavailable && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => {
                    return Err(anyhow::Error::from(e)).with_context(|| {
                        format!("the cluster's etcd refused a new member at {peer}")
                    })
                }
            }
        };
        let me = added.member().map(|m| m.id());
        let mut cluster = Vec::new();
        let mut clients = Vec::new();
        for m in added.member_list() {
            if Some(m.id()) == me {
                cluster.push(format!("{name}={peer}"));
                continue;
            }
            if m.name().is_empty() {
                bail!(
                    "the cluster's etcd has a member that never started (peer {}): remove it                      (etcdctl member remove {:x}) and try again",
                    m.peer_urls().join(","),
                    m.id()
                );
            }
            for p in m.peer_urls() {
                cluster.push(format!("{}={p}", m.name()));
            }
            clients.extend(m.client_urls().iter().cloned());
        }
        if me.is_none() {
            bail!("the cluster's etcd did not say which member it added");
        }
        Ok((
            plan::EtcdMember {
                id: me.unwrap_or_default(),
                initial_cluster: cluster.join(","),
            },
            clients,
        ))
    })
}

/// Removes etcd member `id` (best effort: a failed start is being undone).
fn remove_etcd_member(endpoints: &[String], id: u64) {
    let r = rt().and_then(|rt| {
        rt.block_on(async {
            let meta = yr_control::etcd::Meta::connect(endpoints).await?;
            meta.client().member_remove(id).await?;
            anyhow::Ok(())
        })
    });
    if let Err(e) = r {
        eprintln!("warning: cannot remove the etcd member {id:x} this start added: {e:#}");
    }
}

/// Before a master node that runs an etcd member of a larger etcd cluster stops: removes its
/// member, so that the members left keep their quorum (a stopped member that stayed listed
/// would count against it). Best effort, within a few seconds: a failure is reported and the
/// stop goes on.
fn leave_etcd_cluster(s: &Session) {
    let Some(own) = s
        .components
        .iter()
        .find(|c| c.name == crate::defaults::name::ETCD)
        .map(|c| c.address.clone())
    else {
        return;
    };
    let r = rt().and_then(|rt| {
        rt.block_on(async {
            let leave = async {
                let meta = yr_control::etcd::Meta::connect(&s.etcd_endpoints).await?;
                let members = meta.client().member_list().await?;
                if members.members().len() < 2 {
                    return anyhow::Ok(());
                }
                let Some(id) = members
                    .members()
                    .iter()
                    .find(|m| m.client_urls().contains(&own))
                    .map(|m| m.id())
                else {
                    return anyhow::Ok(());
                };
                // Without this member, would the others still have a quorum? If not (members
                // are down), removing it is refused anyway: leave it listed.
                let n = members.members().len();
                let mut others_up = 0;
                for m in members.members().iter().filter(|m| m.id() != id) {
                    for u in m.client_urls() {
                        if accepts_url(u).await {
                            others_up += 1;
                            break;
                        }
                    }
                }
                if others_up < (n - 1) / 2 + 1 {
                    eprintln!(
                        "note: this node's etcd member stays listed: without it, the members \
                         still up ({others_up} of {}) would have no quorum",
                        n - 1
                    );
                    return anyhow::Ok(());
                }
                // As for adding one, etcd removes a member only once every member has been
                // connected for a few seconds.
                loop {
                    match meta.client().member_remove(id).await {
                        Ok(_) => return anyhow::Ok(()),
                        Err(etcd_client::Error::GRpcStatus(st))
                            if st.code() == tonic::Code::Unavailable =>
                        {
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            };
            tokio::time::timeout(MEMBER_ADD_WITHIN, leave)
                .await
                .unwrap_or_else(|_| {
                    Err(anyhow::anyhow!(
                        "etcd did not remove it within {} s",
                        MEMBER_ADD_WITHIN.as_secs()
                    ))
                })
        })
    });
    if let Err(e) = r {
        eprintln!("warning: cannot remove this node's etcd member from the cluster: {e:#}");
    }
}

/// Whether the host:port of `url` (an etcd client URL) accepts a TCP connection now.
async fn accepts_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .unwrap_or(url);
    let host_port = rest.split('/').next().unwrap_or(rest);
    tokio::time::timeout(
        Duration::from_millis(300),
        tokio::net::TcpStream::connect(host_port),
    )
    .await
    .is_ok_and(|c| c.is_ok())
}

/// Where the yr package is likely installed: the active virtual environment, then the one
/// `make` builds (scripts/python-env.sh).
fn python_candidates() -> Vec<PathBuf> {
    let mut c = Vec::new();
    if let Some(v) = std::env::var_os("VIRTUAL_ENV") {
        c.push(PathBuf::from(v));
    }
    if let Some(h) = std::env::var_os("HOME") {
        c.push(PathBuf::from(h).join(".cache/yr/py"));
    }
    c
}

/// The interpreter of the first of `venvs` that has the yr package installed (a
/// `yr-*.dist-info` in its site-packages): the default for Python function processes, so that
/// a node started from the environment the package was installed into runs them there.
fn installed_python(venvs: &[PathBuf]) -> Option<String> {
    venvs.iter().find_map(|v| {
        let python = v.join("bin/python");
        let lib = std::fs::read_dir(v.join("lib")).ok()?;
        let has_yr = lib.flatten().any(|d| {
            std::fs::read_dir(d.path().join("site-packages")).is_ok_and(|entries| {
                entries.flatten().any(|e| {
                    let n = e.file_name();
                    let n = n.to_string_lossy();
                    n.starts_with("yr-") && n.ends_with(".dist-info")
                })
            })
        });
        (has_yr && python.exists()).then(|| python.to_string_lossy().into_owned())
    })
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "node".into())
}

/// Writes the plan's secrets and launch spec, then launches the node supervisor, which starts
/// the plan's components in order (stopping those it started if one fails) and writes the
/// session; returns that session.
fn launch_plan(plan: &NodePlan) -> Result<Session> {
    std::fs::create_dir_all(&plan.node_dir)
        .with_context(|| format!("cannot create {}", plan.node_dir.display()))?;
    // A standby master received the cluster's token when it joined.
    if let Some(t) = plan.token_file.as_ref().filter(|t| !t.exists()) {
        session::write_token(t)?;
    }
    if plan.new_secret {
        yr_datastore::peer_auth::create_secret_file(&plan.cluster_secret)?;
    }
    let spec = supervise::Spec {
        session: plan.session(Vec::new(), now_ms()),
        components: plan
            .components
            .iter()
            .map(|c| supervise::SpecComponent {
                name: c.name.into(),
                program: c.program.clone(),
                args: c.args.clone(),
                log: c.log.clone(),
                ready_by_endpoint: c.ready == Ready::Endpoint,
                address: c.address.clone(),
            })
            .collect(),
    };
    spec.save(&plan.dir)?;
    let exe = std::env::current_exe().context("cannot find the yr executable")?;
    let log = plan
        .dir
        .join("logs")
        .join(format!("{}.log", supervise::SUPERVISOR));
    launch::launch_within(
        supervise::SUPERVISOR,
        supervise::command(&exe, &plan.dir),
        &log,
        true,
        supervise::ready_within(plan.components.len()),
    )?;
    Ok(Session::load(&plan.dir)?)
}

fn wait_for_node(s: &Session) -> Result<()> {
    let rt = rt()?;
    let deadline = Instant::now() + REGISTER_WITHIN;
    loop {
        let st = rt.block_on(async {
            master_client(s)
                .await?
                .status(Empty {})
                .await
                .map_err(anyhow::Error::from)
        });
        if let Ok(st) = st {
            if st.into_inner().nodes.iter().any(|n| n.node_id == s.node_id) {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!(
                "node {} did not register with the master within {} s (see {}/logs)",
                s.node_id,
                REGISTER_WITHIN.as_secs(),
                s.session_dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn print_started(session: &Session, join_token: Option<&yr_control::pki::JoinToken>) -> Result<()> {
    let mut out = std::io::stdout();
    writeln!(
        out,
        "yr {} node {} started; session {}",
        session.role,
        session.node_id,
        session.session_dir.display()
    )?;
    writeln!(out, "  master  {}", session.master_address)?;
    writeln!(out, "  etcd    {}", session.etcd_endpoints.join(","))?;
    writeln!(out, "  proxy   {}", session.proxy_address)?;
    writeln!(out, "  data    {}", session.data_socket.display())?;
    if let Some(c) = &session.collector_url {
        writeln!(
            out,
            "  metrics {c}/metrics (Authorization: Bearer $(yr token --collector))"
        )?;
    }
    if let (Some(f), Some(m)) = (&session.frontend_url, &session.meta_url) {
        writeln!(out, "  REST    frontend {f}  meta service {m}")?;
    }
    if let Some(d) = &session.dashboard_url {
        writeln!(out, "  web     {d} (`yr dashboard` opens it logged in)")?;
    }
    if let Some(t) = &session.token_file {
        writeln!(
            out,
            "  token   {} (send it as Authorization: Bearer <token>)",
            t.display()
        )?;
    }
    if session.is_master() && join_token.is_none() {
        writeln!(
            out,
            "This master stands by: it serves once elected (the active master's lease lapses \
             within {} s of a failure).",
            yr_control::election::LEASE_TTL
        )?;
    } else if session.is_master() {
        writeln!(
            out,
            "To add a worker node, run on it (the join token brings its certificate and the \
             cluster secret):"
        )?;
        writeln!(
            out,
            "  yr start --worker --master-address {} --join-token {}",
            session.master_address,
            join_token.map_or_else(|| "$(yr token --join)".to_string(), |t| t.to_string())
        )?;
        writeln!(
            out,
            "To add a standby master, run the same with --master (best: two of them, so etcd \
             keeps a quorum when one master host is lost)."
        )?;
    }
    Ok(())
}

#[derive(Args)]
pub struct StopArgs {
    #[command(flatten)]
    session: SessionArg,
    /// Kill at once instead of asking politely first.
    #[arg(long)]
    force: bool,
}

/// Stops every process of this host's node of a session, and removes the session file: the
/// supervisor first (so it restarts nothing that is being stopped), then the components, newest
/// first, as `session.json` lists them once the supervisor is gone, and any child of the
/// supervisor it had not recorded yet (a restart in progress).
pub fn stop(a: StopArgs) -> Result<()> {
    let mut s = a.session.load()?;
    let grace = if a.force {
        Duration::ZERO
    } else {
        Duration::from_secs(10)
    };
    let mut forced = Vec::new();
    let mut unrecorded = Vec::new();
    if let Some(sup) = s.component(supervise::SUPERVISOR).cloned() {
        let children = supervise::children_of(sup.pid);
        if !launch::stop_pid(sup.pid, grace) {
            forced.push(sup.name.clone());
        }
        // The supervisor saves the session after every restart: read the pids it left.
        if let Ok(now) = Session::load(&s.session_dir) {
            s.components = now.components;
        }
        unrecorded = children
            .into_iter()
            .filter(|p| s.components.iter().all(|c| c.pid != *p))
            .collect();
    }
    // With the supervisor gone (it would restart the etcd member that leaves), before the
    // components stop.
    leave_etcd_cluster(&s);
    for c in s
        .components
        .iter()
        .rev()
        .filter(|c| c.name != supervise::SUPERVISOR)
    {
        if !launch::stop_pid(c.pid, grace) {
            forced.push(c.name.clone());
        }
    }
    for pid in unrecorded {
        launch::stop_pid(pid, grace);
    }
    let _ = std::fs::remove_file(&s.data_socket);
    session::remove(&s)?;
    println!(
        "stopped {} component(s) of node {}{}",
        s.components.len(),
        s.node_id,
        if forced.is_empty() {
            String::new()
        } else {
            format!(" (killed after the deadline: {})", forced.join(", "))
        }
    );
    Ok(())
}

#[cfg(test)]
mod python_tests {
    use super::*;

    #[test]
    fn the_default_interpreter_is_the_first_environment_with_yr_installed() {
        let d = tempfile::tempdir().expect("temp dir");
        let without = d.path().join("plain");
        let with = d.path().join("venv");
        for v in [&without, &with] {
            std::fs::create_dir_all(v.join("bin")).expect("bin");
            std::fs::write(v.join("bin/python"), "").expect("python");
            std::fs::create_dir_all(v.join("lib/python3.11/site-packages/numpy")).expect("lib");
        }
        std::fs::create_dir_all(with.join("lib/python3.11/site-packages/yr-0.1.0.dist-info"))
            .expect("dist-info");
        let missing = d.path().join("missing");
        let got = installed_python(&[missing, without.clone(), with.clone()]);
        assert_eq!(
            got,
            Some(with.join("bin/python").to_string_lossy().into_owned())
        );
        assert_eq!(installed_python(&[without]), None);
    }
}
