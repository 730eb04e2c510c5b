//! The control plane's wire types and gRPC stubs, generated from `proto/yr/v1/control.proto`.
//!
//! Messages that are also stored in etcd (functions, instances, nodes) are stored in their protobuf
//! encoding, so the master, the agents and the CLI read one schema.

#![allow(clippy::all, missing_docs)]

/// Version 1 of the control plane API.
pub mod v1 {
    tonic::include_proto!("yr.v1");
}

pub use v1::*;

pub mod failover;
pub mod frame;
pub mod ports;
pub mod tls;
