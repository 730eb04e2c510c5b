//! Distributed programming: one program that is both the driver and its own
//! function processes, remote calls that return object references at once,
//! and objects that move between nodes only when a call needs them.
//!
//! ```no_run
//! use yr_runtime::{Args, Builder, TaskContext, Value};
//! fn square(_ctx: &TaskContext, args: &Args) -> Result<Value, String> {
//!     let x: u64 = args.get(0)?;
//!     Value::of(&(x * x))
//! }
//! fn main() -> Result<(), yr_runtime::Error> {
//!     // In a function process `init` serves calls and never returns.
//!     let yr = Builder::new("squares").function("square", square).init()?;
//!     let r = yr.task("square").arg(&7u64).submit()?;
//!     let y: u64 = yr.get(&r, std::time::Duration::from_secs(30))?;
//!     assert_eq!(y, 49);
//!     Ok(())
//! }
//! ```
//!
//! How it fits together (one child module each):
//! - [`Builder::init`] in a driver (`connect`) reads the node's `session.json`, connects
//!   to the master, this node's proxy and data worker, and deploys each
//!   function on first use as a `yrlib` function whose code is this very
//!   executable. The agent starts copies of it with `YR_INSTANCE_ID` set, and
//!   there `init` turns into the function process's serve loop (`serve`).
//! - A call's arguments are inline values or [`ObjectRef`]s (`object`). A reference
//!   travels as its object ID; the callee's data worker fetches the bytes
//!   (from its own memory when the object is on that node, else pulled once
//!   from the node named in the ID) and the function reads them in place (`codec`).
//! - A call (`call`) is sent to the proxy of the node holding its largest argument, so
//!   the pool there serves it and the big bytes need not move.
//! - Results up to [`INLINE_RESULT`] bytes come back in the reply; larger
//!   ones stay in the callee node's data worker as the call's result object.
//!
//! Reference counting (invariants): the driver owns every object it `put`s
//! and every stored result of its calls; it tells its data worker so
//! (`Own`). An object is freed on every node when the last [`ObjectRef`]
//! clone is dropped — and a call that received a reference holds a clone
//! until the call has finished. If the driver exits or crashes, its data
//! worker frees everything it owned. A reference passed into a call is valid
//! for that call's duration only.

mod call;
mod codec;
mod connect;
mod object;
mod serve;

pub use crate::error::Error;
pub use call::{InstanceHandle, Options, Task};
pub use codec::{ArgData, Args, Value};
pub use connect::{NodeInfo, Yr};
pub use object::{Bytes, CallInfo, DriverObject, ObjectRef};
pub use serve::{task_args, task_result, Actor, NewObject, TaskContext, TaskFn};

use serve::ClassFn;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

/// Results up to this size travel in the reply; larger ones stay in the
/// callee's data worker.
pub const INLINE_RESULT: usize = 64 << 10;

/// Registers a program's functions and classes, then connects it (driver)
/// or serves calls (function process).
pub struct Builder {
    app: String,
    functions: BTreeMap<String, TaskFn>,
    classes: BTreeMap<String, ClassFn>,
}

impl Builder {
    /// `app` prefixes the names the functions are deployed under.
    pub fn new(app: &str) -> Builder {
        Builder {
            app: app.to_string(),
            functions: BTreeMap::new(),
            classes: BTreeMap::new(),
        }
    }

    /// A stateless function.
    pub fn function(
        mut self,
        name: &str,
        f: impl Fn(&TaskContext, &Args) -> Result<Value, String> + Send + Sync + 'static,
    ) -> Builder {
        self.functions.insert(name.to_string(), Arc::new(f));
        self
    }

    /// A stateful class: `make` builds an instance's state when it starts.
    pub fn class<A: Actor + 'static>(
        mut self,
        name: &str,
        make: impl Fn(&TaskContext) -> Result<A, String> + Send + Sync + 'static,
    ) -> Builder {
        self.classes.insert(
            name.to_string(),
            Arc::new(move |tc| make(tc).map(|a| Box::new(a) as Box<dyn Actor>)),
        );
        self
    }

    /// In a function process (started by an agent): serves calls and exits
    /// the process when the proxy closes. In a driver: connects to the
    /// cluster named by `$YR_SESSION` (a session folder or its
    /// `session.json`), else through the master at `$YR_MASTER_ADDRESS`,
    /// else the newest session on this host.
    pub fn init(self) -> Result<Yr, Error> {
        if std::env::var_os("YR_INSTANCE_ID").is_some() {
            self.serve();
        }
        if std::env::var_os("YR_SESSION").is_none() {
            if let Ok(master) = std::env::var("YR_MASTER_ADDRESS") {
                return self.connect_master(&master);
            }
        }
        let session = match std::env::var_os("YR_SESSION") {
            Some(s) => PathBuf::from(s),
            None => crate::session::latest().map_err(|e| Error::Connect(e.to_string()))?,
        };
        self.connect(session)
    }
}
