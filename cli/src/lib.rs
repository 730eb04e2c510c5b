//! The `yr` command as a library: its subcommands, so that the benches (`cargo bench`) and the
//! binary share one cluster set-up instead of copies.
//!
//! Layout: [`cluster`] (start/stop/status, functions, instances), [`component`] (one component in
//! the foreground), [`store_cmd`] (talk to a data worker), [`bench`] (`yr bench`, whose
//! set-up the `cargo bench` groups share), [`demo`], [`util`].

pub mod bench;
pub mod cluster;
pub mod component;
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
    /// Start a node: `--master` for a new cluster, `--worker --master-address ADDR` to join one.
    Start(cluster::StartArgs),
    /// Stop this host's node of a session (all its processes).
    Stop(cluster::StopArgs),
    /// Nodes, functions and instances of the cluster.
    Status(cluster::StatusArgs),
    /// The cluster's REST access token (from the master node's session), for scripts:
    /// `curl -H "$(yr token --header)" ...`.
    Token(cluster::TokenArgs),
    /// Manage functions.
    #[command(subcommand)]
    Function(cluster::FunctionCmd),
    /// Call a function and print its reply.
    Invoke(cluster::InvokeArgs),
    /// Manage named (stateful) instances.
    #[command(subcommand)]
    Instance(cluster::InstanceCmd),
}

/// Runs one parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Component(c) => component::run(c),
        Cmd::Store(c) => store_cmd::run(c),
        Cmd::Bench(c) => bench::run(c),
        Cmd::Demo(a) => demo::run(a),
        Cmd::Start(a) => cluster::start(a),
        Cmd::Stop(a) => cluster::stop(a),
        Cmd::Status(a) => cluster::status(a),
        Cmd::Token(a) => cluster::token(a),
        Cmd::Function(c) => cluster::function(c),
        Cmd::Invoke(a) => cluster::invoke(a),
        Cmd::Instance(c) => cluster::instance(c),
    }
}
