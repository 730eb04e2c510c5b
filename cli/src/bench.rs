//! `yr bench ...`: benchmarks that measure their hardware baselines in the
//! same run and report ratios, because this kind of machine is shared and
//! noisy: an absolute figure means little, a ratio to memcpy / a socket round
//! trip / raw disk I/O measured a moment earlier means a lot.
//!
//! One child module per subcommand ([`store`], [`invoke`], [`transfer`], [`rest`], [`python`], [`faults`]),
//! plus [`node`] (a one-node cluster and the no-op function the cluster benches call),
//! [`stats`] and [`machine`] (what the figures were measured on). The set-up functions are public because the criterion groups of `cargo bench`
//! (`cli/benches/`) call them with the `yr` binary cargo built: one set-up, two drivers.
//! Children use their parent's pieces through `super::`; the parent only dispatches.

pub mod faults;
pub mod invoke;
pub mod machine;
pub mod node;
pub mod python;
pub mod rest;
pub mod stats;
pub mod store;
pub mod transfer;

use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum BenchCmd {
    /// The data worker: put/get against memcpy and a socket round trip,
    /// small-object rates, spill/restore against raw io_uring disk I/O, and
    /// metadata per object.
    Store(store::StoreArgs),
    /// The control plane: no-op calls per second through proxy and runtime on a one-node
    /// cluster, beside a bare gRPC echo.
    Invoke(invoke::InvokeArgs),
    /// Data worker to data worker: an object pulled over loopback TCP, beside a raw TCP
    /// stream of the same bytes.
    Transfer(transfer::TransferArgs),
    /// The REST frontend: no-op calls per second over keep-alive HTTP/1.1 on a one-node
    /// cluster, beside a bare axum handler.
    Rest(rest::RestArgs),
    /// The Python package `yr` on a one-node cluster: put/get of a 256 MiB numpy array beside
    /// a numpy copy, 1 KiB puts, trivial tasks, and a call receiving the array by reference.
    Python(python::PythonArgs),
    /// Failures: a cluster of several masters and a worker under a steady load, and `kill -9`
    /// of each component in turn; recovery time, failed calls and anything acknowledged lost.
    Faults(faults::FaultsArgs),
}

pub fn run(cmd: BenchCmd) -> Result<()> {
    match cmd {
        BenchCmd::Store(a) => store::run(a),
        BenchCmd::Invoke(a) => invoke::run(a),
        BenchCmd::Transfer(a) => transfer::run(a),
        BenchCmd::Rest(a) => rest::run(a),
        BenchCmd::Python(a) => python::run(a),
        BenchCmd::Faults(a) => faults::run(a),
    }
}
