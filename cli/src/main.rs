//! `yr`: one binary for every role.
//!
//! - `yr component NAME ...` runs one component in the foreground (what
//!   `yr start` will launch as separate processes);
//! - `yr store ...` talks to a running data worker;
//! - `yr bench ...` measures components against their hardware baselines;
//! - `yr demo` runs the quick-start demonstration.

mod bench;
mod bench_invoke;
mod bench_rest;
mod bench_transfer;
mod cluster;
mod component;
mod demo;
mod store_cmd;
mod util;

use clap::{Parser, Subcommand};

/// Every component is a `yr` process; their request paths allocate and free many small,
/// short-lived buffers across threads, which glibc's allocator serves slowly (measured: a fifth
/// of the function proxy's time under load went to malloc and free).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "yr",
    version,
    about = "yr: a serverless distributed computing platform"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
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

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("YR_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let result = match cli.cmd {
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
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("yr: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
