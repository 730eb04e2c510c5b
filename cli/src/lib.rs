//! The `yr` command as a library: its subcommands, so that the benches (`cargo bench`) and the
//! binary share one cluster set-up instead of copies. `main.rs` only parses and calls [`run`].
//!
//! Layout:
//! - [`cluster`]: `yr start|stop|status|health|config|token|function|invoke|instance`, in parts:
//!   the session folder, process launch, `start`'s settings and typed node plan (pure) and its
//!   executor, and the commands that talk to a running cluster;
//! - [`component`]: `yr component NAME`, one component in the foreground, its settings in two
//!   steps (flags or a file, then the validated runtime config);
//! - [`defaults`]: default ports and component names, defined once; [`config`]: the error that
//!   names a refused setting, and the checks settings share;
//! - [`store_cmd`] (`yr store`: talk to a data worker), [`bench`] (`yr bench`, whose
//!   set-up the `cargo bench` groups share), [`demo`], [`util`] (sizes, child processes with a ready line).
//!
//! Dependencies point one way: `cluster` and `component` use the shared modules (`config`,
//! `defaults`, `util`) and not each other; `demo` uses `cluster`.

pub mod bench;
pub mod cluster;
pub mod component;
pub mod config;
pub mod defaults;
pub mod demo;
pub mod store_cmd;
pub mod util;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "yr",
    version,
    about = "yr: a serverless distributed computing platform"
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Run one component in the foreground.
    #[command(subcommand)]
    Component(component::ComponentCmd),
    /// Talk to a running data worker.
    #[command(subcommand)]
    Store(store_cmd::StoreCmd),
    /// Benchmarks that measure their own baselines in the same run.
    #[command(subcommand)]
    Bench(bench::BenchCmd),
    /// Pass a large object between two processes through a fresh data worker.
    Demo(demo::DemoArgs),
    /// Start a node: `--master` for a new cluster, `--master_address http://IP:PORT
    /// --join_token TOKEN` to join one (a worker, the default role). Settings also come from
    /// `-c FILE` and `-s KEY=VALUE` (see `yr config template`).
    Start(cluster::StartArgs),
    /// Stop this host's node of a session (all its processes).
    Stop(cluster::StopArgs),
    /// Nodes, functions and instances of the cluster.
    Status(cluster::StatusArgs),
    /// Check the cluster of a session: its processes, the master, every node; exits non-zero
    /// naming what is unhealthy.
    Health(cluster::HealthArgs),
    /// `yr start`'s settings: a commented template, or the effective settings of a command line.
    #[command(subcommand)]
    Config(cluster::ConfigCmd),
    /// Print yr's version (as `yr --version`).
    Version,
    /// The cluster's REST access token (from the master node's session), for scripts:
    /// `curl -H "$(yr token --header)" ...`.
    Token(cluster::TokenArgs),
    /// The session folder commands use (this user's newest, unless --session-dir), for scripts:
    /// `S=$(yr session)`.
    Session(cluster::SessionArg),
    /// Manage functions.
    #[command(subcommand)]
    Function(cluster::FunctionCmd),
    /// Call a function and print its reply.
    Invoke(cluster::InvokeArgs),
    /// Manage named (stateful) instances.
    #[command(subcommand)]
    Instance(cluster::InstanceCmd),
    /// Open the cluster's web page, logged in (a one-time URL; `--print` only prints it).
    Dashboard(cluster::DashboardArgs),
}

/// Runs one parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Component(component::ComponentCmd::Supervisor(a)) => {
            cluster::supervise::run(&a.session_dir)
        }
        Cmd::Component(c) => component::run(c),
        Cmd::Store(c) => store_cmd::run(c),
        Cmd::Bench(c) => bench::run(c),
        Cmd::Demo(a) => demo::run(a),
        Cmd::Start(a) => cluster::start(a),
        Cmd::Stop(a) => cluster::stop(a),
        Cmd::Status(a) => cluster::status(a),
        Cmd::Health(a) => cluster::health(a),
        Cmd::Config(c) => cluster::config(c),
        Cmd::Version => {
            println!("yr {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Cmd::Token(a) => cluster::token(a),
        Cmd::Session(a) => cluster::print_session(a),
        Cmd::Function(c) => cluster::function(c),
        Cmd::Invoke(a) => cluster::invoke(a),
        Cmd::Instance(c) => cluster::instance(c),
        Cmd::Dashboard(a) => cluster::dashboard(a),
    }
}
