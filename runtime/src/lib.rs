//! The Rust runtime SDK: what a function process links to serve calls, and what a driver
//! program links to call functions on a cluster.
//!
//! A function executable registers named handlers (bytes in, bytes out) and stateful instance
//! classes, then calls [`App::run`]. The agent starts it with the environment that says which
//! instance it is and where its node's proxy and data worker are; `run` connects to the proxy's
//! instance socket (frames of [`yr_proto::frame`]), learns which handler (or class) this instance
//! serves, and answers calls until the proxy goes away.
//!
//! ```no_run
//! yr_runtime::App::new()
//!     .handler("hello", |_ctx, input| Ok(format!("hello, {}", String::from_utf8_lossy(input)).into_bytes()))
//!     .run()
//! ```
//!
//! Layout:
//! - `app` — the function-process SDK: [`App`] (registry and serve loop), its reply writer and
//!   call threads; `context` — [`Context`], what a handler reaches (data worker, other functions).
//! - [`remote`] — distributed programming on top of it ([`Builder`], [`Yr`], [`ObjectRef`]): a
//!   parent with `codec` (values and arguments), `serve` (the function-process side), `connect`
//!   (a driver's connection), `object` (references and reads) and `call` (sending calls).
//! - [`session`] — the one `session.json` type; `error` — [`Error`], the crate's one error type.
//!
//! Invariants: a stateless handler may run on several threads at once (the function's
//! concurrency, enforced by the proxy); a stateful instance's methods run one at a time, in the
//! order the proxy delivered them, on one thread that owns the state. A panicking handler fails
//! that call with the panic message; the process keeps serving. Error kinds travel typed (a
//! reply's `error_kind`, a data worker's code); nothing decides by reading an error message.

mod app;
mod context;
mod error;
pub mod remote;
pub mod session;

pub use app::{
    take_instance_secret, App, Failure, HandlerResult, Instance, Reply, Stateful,
    INSTANCE_SECRET_ENV, RECYCLED_EXIT,
};
pub use context::Context;
pub use error::Error;
pub use remote::{
    task_args, task_result, Actor, ArgData, Args, Builder, Bytes, CallInfo, DriverObject,
    InstanceHandle, NewObject, NodeInfo, ObjectRef, Options, Task, TaskContext, Value, Yr,
};
