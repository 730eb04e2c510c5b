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
//! How it fits together:
//! - [`Builder::init`] in a driver reads the node's `session.json`, connects
//!   to the master, this node's proxy and data worker, and deploys each
//!   function on first use as a `yrlib` function whose code is this very
//!   executable. The agent starts copies of it with `YR_INSTANCE_ID` set, and
//!   there `init` turns into the function process's serve loop.
//! - A call's arguments are inline values or [`ObjectRef`]s. A reference
//!   travels as its object ID; the callee's data worker fetches the bytes
//!   (from its own memory when the object is on that node, else pulled once
//!   from the node named in the ID) and the function reads them in place.
//! - A call is sent to the proxy of the node holding its largest argument, so
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

use crate::{App, Context, HandlerResult, Instance};
use prost::Message;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use yr_datastore::{Client, ObjectBuilder, ObjectGuard, ObjectId};
use yr_proto::master_client::MasterClient;
use yr_proto::proxy_client::ProxyClient;
use yr_proto::{
    task_arg, task_result, AffinityKind, CreateInstanceRequest, DeployRequest, Empty, ErrorKind,
    FunctionSpec, InstanceRef, InvokeRequest, LabelAffinity, ObjectRefMsg, Resources,
    SchedulingOptions, TaskArg, TaskArgs, TaskResult,
};

/// Results up to this size travel in the reply; larger ones stay in the
/// callee's data worker.
pub const INLINE_RESULT: usize = 64 << 10;
const MAX_MESSAGE: usize = 256 << 20;
/// How long a function process waits for an argument's bytes.
const ARG_FETCH_TIMEOUT: Duration = Duration::from_secs(600);

/// What can go wrong for a driver.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The cluster (session file, master, proxy, data worker) is not reachable.
    #[error("{0}")]
    Connect(String),
    /// The master refused to deploy or create something.
    #[error("{0}")]
    Deploy(String),
    /// The function itself returned an error or panicked.
    #[error("{function} failed: {message}")]
    Task {
        /// The function (or class.method).
        function: String,
        /// Its error message.
        message: String,
    },
    /// The platform could not run the call (no capacity, instance died, timeout).
    #[error("{function} could not run: {message}")]
    Platform {
        /// The function.
        function: String,
        /// Why.
        message: String,
    },
    /// The only node holding an object is gone.
    #[error("{0}")]
    ObjectLost(String),
    /// `get` waited its whole timeout.
    #[error("{0}")]
    Timeout(String),
    /// Bytes did not decode as the asked type, or a value did not encode.
    #[error("{0}")]
    Codec(String),
    /// The data worker refused something.
    #[error("{0}")]
    Store(String),
}

fn store_err(e: yr_datastore::Error) -> Error {
    match e.code() {
        Some(yr_datastore::ErrorCode::ObjectLost) => Error::ObjectLost(e.to_string()),
        Some(yr_datastore::ErrorCode::Timeout) => Error::Timeout(e.to_string()),
        _ => Error::Store(e.to_string()),
    }
}

/// A function body: arguments in, a value out (or an error message for the caller).
pub type TaskFn = Arc<dyn Fn(&TaskContext, &Args) -> Result<Value, String> + Send + Sync>;
type ClassFn = Arc<dyn Fn(&TaskContext) -> Result<Box<dyn Actor>, String> + Send + Sync>;

/// A stateful class's instance: built once, then called method by method, in order.
pub trait Actor: Send {
    /// Runs one method.
    fn call(&mut self, ctx: &TaskContext, method: &str, args: &Args) -> Result<Value, String>;
}

/// What a function sees besides its arguments: where it runs, and the
/// node's data worker for building large results in place.
pub struct TaskContext<'a> {
    ctx: &'a Context,
}

impl TaskContext<'_> {
    /// The node this call runs on (the agent sets it once for the process).
    pub fn node_id(&self) -> &'static str {
        static NODE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        NODE.get_or_init(|| std::env::var("YR_NODE_ID").unwrap_or_default())
    }

    /// The function instance running this call.
    pub fn instance_id(&self) -> &str {
        self.ctx.instance_id()
    }

    /// The node's data worker.
    pub fn store(&self) -> Result<&Client, String> {
        self.ctx.store()
    }

    /// A new object of `len` bytes in this node's shared memory: write the
    /// result into it, then [`NewObject::seal`] it into the call's value. No
    /// byte is copied on the way to the caller's node.
    pub fn create_object(&self, len: usize) -> Result<NewObject, String> {
        let store = self.store()?;
        let b = store
            .create(store.new_id(), len, 0)
            .map_err(|e| format!("cannot create a {len}-byte result object: {e}"))?;
        Ok(NewObject { b })
    }
}

/// An object being written in shared memory (see [`TaskContext::create_object`]).
pub struct NewObject {
    b: ObjectBuilder,
}

impl NewObject {
    /// Publishes the bytes; the returned value is the object itself.
    pub fn seal(self) -> Result<Value, String> {
        let id = self.b.id();
        let size = self.b.len() as u64;
        self.b.seal().map_err(|e| format!("sealing {id}: {e}"))?;
        Ok(Value::Object { id, size })
    }
}

impl std::ops::Deref for NewObject {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.b.data()
    }
}

impl std::ops::DerefMut for NewObject {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.b.data_mut()
    }
}

/// What a function returns.
#[derive(Debug)]
pub enum Value {
    /// Bytes (a serialised value, or raw bytes).
    Bytes(Vec<u8>),
    /// An object already sealed in this node's data worker.
    Object {
        /// The object.
        id: ObjectId,
        /// Its size.
        size: u64,
    },
}

impl Value {
    /// A value serialised with bincode (what [`Yr::get`] and [`Args::get`] decode).
    pub fn of<T: Serialize + ?Sized>(v: &T) -> Result<Value, String> {
        bincode::serialize(v)
            .map(Value::Bytes)
            .map_err(|e| format!("cannot encode the result: {e}"))
    }

    /// Raw bytes.
    pub fn bytes(b: impl Into<Vec<u8>>) -> Value {
        Value::Bytes(b.into())
    }
}

enum ArgData {
    Inline(Vec<u8>),
    Object(ObjectGuard),
}

/// A call's arguments, in order. Object arguments are views into this
/// node's shared memory: reading them copies nothing.
pub struct Args {
    items: Vec<ArgData>,
}

impl Args {
    /// Number of arguments.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The raw bytes of argument `i` (zero-copy for object arguments).
    pub fn bytes(&self, i: usize) -> Result<&[u8], String> {
        match self.items.get(i) {
            Some(ArgData::Inline(v)) => Ok(v),
            Some(ArgData::Object(g)) => Ok(g),
            None => Err(format!(
                "argument {i} is missing: the call has {} arguments",
                self.items.len()
            )),
        }
    }

    /// Argument `i` decoded (it was passed with `arg` or `put`).
    pub fn get<T: DeserializeOwned>(&self, i: usize) -> Result<T, String> {
        bincode::deserialize(self.bytes(i)?)
            .map_err(|e| format!("argument {i} is not a {}: {e}", std::any::type_name::<T>()))
    }

    /// Argument `i` as a slice of plain numbers, in place (zero-copy).
    pub fn slice<T: bytemuck::Pod>(&self, i: usize) -> Result<&[T], String> {
        bytemuck::try_cast_slice(self.bytes(i)?).map_err(|e| {
            format!(
                "argument {i} is not a slice of {}: {e}",
                std::any::type_name::<T>()
            )
        })
    }

    /// Whether argument `i` is a view into shared memory (not a copy).
    pub fn is_shared(&self, i: usize) -> bool {
        matches!(self.items.get(i), Some(ArgData::Object(_)))
    }
}

/// Runs one task inside a function process: resolve the arguments, call,
/// encode the result.
fn run_task(
    ctx: &Context,
    payload: &[u8],
    f: impl FnOnce(&TaskContext, &Args) -> Result<Value, String>,
) -> HandlerResult {
    let t0 = Instant::now();
    let spec = TaskArgs::decode(payload).map_err(|e| format!("malformed task arguments: {e}"))?;
    let tc = TaskContext { ctx };
    let mut items = Vec::with_capacity(spec.args.len());
    for (i, a) in spec.args.into_iter().enumerate() {
        items.push(match a.kind {
            Some(task_arg::Kind::Value(v)) => ArgData::Inline(v),
            Some(task_arg::Kind::Object(o)) => {
                let id = object_id(&o.id).ok_or_else(|| format!("argument {i}: bad object ID"))?;
                let store = ctx.store()?;
                ArgData::Object(
                    store
                        .get_remote(id, ARG_FETCH_TIMEOUT)
                        .map_err(|e| format!("argument {i}: {e}"))?,
                )
            }
            None => return Err(format!("argument {i} is empty")),
        });
    }
    let fetch = t0.elapsed();
    let args = Args { items };
    let value = f(&tc, &args)?;
    drop(args);
    let kind = match value {
        Value::Bytes(b) if b.len() <= INLINE_RESULT => task_result::Kind::Value(b),
        Value::Bytes(b) => {
            let store = ctx.store()?;
            let id = store.new_id();
            store
                .put(id, &b)
                .map_err(|e| format!("cannot store the {}-byte result: {e}", b.len()))?;
            task_result::Kind::Object(ObjectRefMsg {
                id: id.0.to_vec(),
                size: b.len() as u64,
                node_id: tc.node_id().to_string(),
            })
        }
        Value::Object { id, size } => task_result::Kind::Object(ObjectRefMsg {
            id: id.0.to_vec(),
            size,
            node_id: tc.node_id().to_string(),
        }),
    };
    Ok(TaskResult {
        kind: Some(kind),
        node_id: tc.node_id().to_string(),
        instance_id: ctx.instance_id().to_string(),
        elapsed_us: t0.elapsed().as_micros() as u64,
        fetch_us: fetch.as_micros() as u64,
    }
    .encode_to_vec())
}

fn object_id(b: &[u8]) -> Option<ObjectId> {
    let mut id = ObjectId::default();
    if b.len() != id.0.len() {
        return None;
    }
    id.0.copy_from_slice(b);
    Some(id)
}

struct ActorInstance(Box<dyn Actor>);

impl Instance for ActorInstance {
    fn call(&mut self, ctx: &Context, method: &str, input: &[u8]) -> HandlerResult {
        let actor = &mut self.0;
        run_task(ctx, input, |tc, args| actor.call(tc, method, args))
    }
}

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
        let session = std::env::var_os("YR_SESSION")
            .map(PathBuf::from)
            .unwrap_or_else(crate::session::latest);
        self.connect(session)
    }

    fn serve(self) -> ! {
        let mut app = App::new();
        for (name, f) in self.functions {
            app = app.handler(&name, move |ctx, payload| {
                run_task(ctx, payload, |tc, a| f(tc, a))
            });
        }
        for (name, make) in self.classes {
            app = app.class(&name, move |ctx| {
                make(&TaskContext { ctx }).map(ActorInstance)
            });
        }
        app.run()
    }

    /// Connects a driver to the cluster of the session at `session` (a
    /// session folder or its `session.json`).
    pub fn connect(self, session: PathBuf) -> Result<Yr, Error> {
        let s =
            crate::session::Session::load(&session).map_err(|e| Error::Connect(e.to_string()))?;
        self.connect_to(
            driver_runtime()?,
            Endpoints {
                master: s.master_address,
                proxy: s.proxy_address,
                socket: s.data_socket.to_string_lossy().into_owned(),
                node_id: s.node_id,
            },
        )
    }

    /// Connects a driver through the master at `master` (host:port), to
    /// the first live node on this host (its proxy and data worker).
    pub fn connect_master(self, master: &str) -> Result<Yr, Error> {
        let rt = driver_runtime()?;
        let status = rt
            .block_on(async {
                let mut m = MasterClient::new(connect(master).await?);
                m.status(Empty {})
                    .await
                    .map_err(|e| Error::Connect(format!("master {master}: {}", e.message())))
            })?
            .into_inner();
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        let node = status
            .nodes
            .iter()
            .filter(|n| !status.dead_nodes.contains(&n.node_id))
            .find(|n| n.hostname == host)
            .ok_or_else(|| {
                Error::Connect(format!(
                    "the cluster of master {master} has no live node on this host ({host}); \
                     a driver needs one for its data worker: run `yr start --worker \
                     --master-address {master}` here"
                ))
            })?;
        self.connect_to(
            rt,
            Endpoints {
                master: master.to_string(),
                proxy: node.proxy_address.clone(),
                socket: node.data_socket.clone(),
                node_id: node.node_id.clone(),
            },
        )
    }

    fn connect_to(self, rt: tokio::runtime::Runtime, e: Endpoints) -> Result<Yr, Error> {
        let Endpoints {
            master,
            proxy,
            socket,
            node_id,
        } = e;
        let exe = std::env::current_exe()
            .map_err(|e| Error::Connect(format!("cannot find this program's executable: {e}")))?;
        let stamp = std::fs::metadata(&exe)
            .map(|m| {
                let mt = m
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos());
                (m.len(), mt)
            })
            .map_err(|e| Error::Connect(format!("cannot read {}: {e}", exe.display())))?;
        let (master_client, proxy_client) = rt.block_on(async {
            Ok::<_, Error>((
                MasterClient::new(connect(&master).await?)
                    .max_decoding_message_size(MAX_MESSAGE)
                    .max_encoding_message_size(MAX_MESSAGE),
                proxy_client(connect(&proxy).await?),
            ))
        })?;
        let store = Client::connect_named(&socket, "yr-driver")
            .map_err(|e| Error::Connect(format!("data worker: {e}")))?;
        let mut registered: HashSet<String> = self.functions.keys().cloned().collect();
        registered.extend(self.classes.keys().cloned());
        let mut h = std::collections::hash_map::DefaultHasher::new();
        stamp.hash(&mut h);
        exe.hash(&mut h);
        Ok(Yr {
            d: Arc::new(Driver {
                app: self.app,
                exe: exe.display().to_string(),
                code_stamp: h.finish(),
                node_id,
                master: master_client,
                local_proxy: proxy_client,
                proxies: parking_lot::Mutex::new(HashMap::new()),
                nodes: parking_lot::Mutex::new(HashMap::new()),
                store,
                deployed: parking_lot::Mutex::new(HashSet::new()),
                registered,
                rt,
            }),
        })
    }
}

/// Where a driver connects.
struct Endpoints {
    master: String,
    proxy: String,
    socket: String,
    node_id: String,
}

fn driver_runtime() -> Result<tokio::runtime::Runtime, Error> {
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(Error::Connect(
            "a yr_runtime driver runs its own runtime and blocks: connect it from a plain \
             thread (or tokio::task::spawn_blocking), not from an async task"
                .into(),
        ));
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("yr-driver")
        .enable_all()
        .build()
        .map_err(|e| Error::Connect(format!("cannot start the driver's runtime: {e}")))
}

async fn connect(address: &str) -> Result<tonic::transport::Channel, Error> {
    tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| Error::Connect(format!("bad address {address:?}: {e}")))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| Error::Connect(format!("cannot reach {address}: {e}")))
}

fn proxy_client(ch: tonic::transport::Channel) -> ProxyClient<tonic::transport::Channel> {
    ProxyClient::new(ch)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
}

struct Driver {
    app: String,
    exe: String,
    code_stamp: u64,
    node_id: String,
    master: MasterClient<tonic::transport::Channel>,
    local_proxy: ProxyClient<tonic::transport::Channel>,
    /// Proxy clients by address.
    proxies: parking_lot::Mutex<HashMap<String, ProxyClient<tonic::transport::Channel>>>,
    /// Data worker transfer address -> (node ID, proxy address).
    nodes: parking_lot::Mutex<HashMap<String, (String, String)>>,
    store: Client,
    deployed: parking_lot::Mutex<HashSet<String>>,
    registered: HashSet<String>,
    rt: tokio::runtime::Runtime,
}

/// Per-call options.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Options {
    /// CPU in millicores and memory in MiB each instance reserves (default 250 / 256).
    pub cpu_millis: Option<u64>,
    /// Memory in MiB.
    pub memory_mib: Option<u64>,
    /// Retries of a stateless call the platform failed to run (default 3);
    /// a function's own error is never retried.
    pub retries: Option<u32>,
    /// Label affinity of the instances serving the call.
    pub affinity: Vec<(AffinityKind, String, Vec<String>)>,
    /// Per-call timeout (default 10 minutes).
    pub timeout: Option<Duration>,
    /// Calls one instance runs at once (default 1).
    pub concurrency: Option<u32>,
    /// Most instances of the function (default 8).
    pub max_instances: Option<u32>,
}

impl Options {
    fn variant_hash(&self, stamp: u64) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        stamp.hash(&mut h);
        self.cpu_millis.hash(&mut h);
        self.memory_mib.hash(&mut h);
        for (k, key, vals) in &self.affinity {
            (*k as i32).hash(&mut h);
            key.hash(&mut h);
            vals.hash(&mut h);
        }
        self.concurrency.hash(&mut h);
        self.max_instances.hash(&mut h);
        h.finish()
    }
}

/// A node of the cluster, as [`Yr::nodes`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// Its ID.
    pub node_id: String,
    /// Its host.
    pub hostname: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
}

/// Where and how a finished call ran.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallInfo {
    /// The node.
    pub node_id: String,
    /// The instance.
    pub instance_id: String,
    /// Time inside the function process, argument fetches included.
    pub elapsed: Duration,
    /// Part of it spent fetching arguments.
    pub fetch: Duration,
}

#[derive(Clone)]
enum RefState {
    Pending,
    Inline(Arc<Vec<u8>>),
    Object {
        id: ObjectId,
        size: u64,
        node_id: String,
    },
    Failed(Error),
}

struct RefCell {
    state: watch::Sender<RefState>,
    info: parking_lot::Mutex<Option<CallInfo>>,
    store: Client,
}

impl Drop for RefCell {
    fn drop(&mut self) {
        if let RefState::Object { id, .. } = &*self.state.borrow() {
            self.store.free(&[*id]);
        }
    }
}

/// A reference to a value that exists, or will exist once its call ends.
/// Clone it freely; the object is freed everywhere when the last clone (and
/// every call that received it) is gone.
#[derive(Clone)]
pub struct ObjectRef {
    cell: Arc<RefCell>,
}

impl std::fmt::Debug for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &*self.cell.state.borrow() {
            RefState::Pending => write!(f, "ObjectRef(pending)"),
            RefState::Inline(v) => write!(f, "ObjectRef(inline, {} bytes)", v.len()),
            RefState::Object { id, size, node_id } => {
                write!(f, "ObjectRef({id}, {size} bytes on {node_id})")
            }
            RefState::Failed(e) => write!(f, "ObjectRef(failed: {e})"),
        }
    }
}

impl ObjectRef {
    fn new(store: &Client, state: RefState) -> ObjectRef {
        ObjectRef {
            cell: Arc::new(RefCell {
                state: watch::Sender::new(state),
                info: parking_lot::Mutex::new(None),
                store: store.clone(),
            }),
        }
    }

    /// Whether the value exists (or its call failed).
    pub fn is_ready(&self) -> bool {
        !matches!(&*self.cell.state.borrow(), RefState::Pending)
    }

    /// The object's ID once it is stored in a data worker.
    pub fn id(&self) -> Option<ObjectId> {
        match &*self.cell.state.borrow() {
            RefState::Object { id, .. } => Some(*id),
            _ => None,
        }
    }

    /// The node holding the primary copy, once stored.
    pub fn node_id(&self) -> Option<String> {
        match &*self.cell.state.borrow() {
            RefState::Object { node_id, .. } => Some(node_id.clone()),
            _ => None,
        }
    }

    /// The value's size once ready.
    pub fn size(&self) -> Option<u64> {
        match &*self.cell.state.borrow() {
            RefState::Object { size, .. } => Some(*size),
            RefState::Inline(v) => Some(v.len() as u64),
            _ => None,
        }
    }

    /// Where and how the call that made this value ran (for call results).
    pub fn call_info(&self) -> Option<CallInfo> {
        self.cell.info.lock().clone()
    }

    async fn ready(&self) -> RefState {
        let mut rx = self.cell.state.subscribe();
        let r = match rx.wait_for(|s| !matches!(s, RefState::Pending)).await {
            Ok(s) => s.clone(),
            Err(_) => RefState::Failed(Error::Platform {
                function: String::new(),
                message: "the call was abandoned".into(),
            }),
        };
        r
    }
}

/// A value read back: shared memory (zero-copy) or bytes that came inline.
pub enum Bytes {
    /// A view into this node's data worker.
    Shared(ObjectGuard),
    /// A small value that came in the call's reply.
    Inline(Arc<Vec<u8>>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Shared(g) => g,
            Bytes::Inline(v) => v,
        }
    }
}

impl Bytes {
    /// The bytes as plain numbers, in place.
    pub fn as_slice<T: bytemuck::Pod>(&self) -> Result<&[T], Error> {
        bytemuck::try_cast_slice(self).map_err(|e| {
            Error::Codec(format!(
                "{} bytes are not a slice of {}: {e}",
                self.len(),
                std::any::type_name::<T>()
            ))
        })
    }

    /// Whether this is a view into shared memory (not a copy).
    pub fn is_shared(&self) -> bool {
        matches!(self, Bytes::Shared(_))
    }
}

/// Keeps one instance handle's calls in submission order: each call takes
/// a ticket when submitted and is sent only when the previous call's reply
/// has come back (an instance runs its methods one at a time anyway).
#[derive(Default)]
struct Sequencer {
    next_ticket: std::sync::atomic::AtomicU64,
    turn: watch::Sender<u64>,
}

/// Held while a call is the instance's current one; lets the next go on drop.
struct Turn(Arc<Sequencer>);

impl Drop for Turn {
    fn drop(&mut self) {
        self.0.turn.send_modify(|t| *t += 1);
    }
}

impl Sequencer {
    fn ticket(&self) -> u64 {
        self.next_ticket
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    async fn wait_turn(self: Arc<Self>, ticket: u64) -> Turn {
        let mut rx = self.turn.subscribe();
        // The sender lives in `self`, so the channel cannot close here.
        let _ = rx.wait_for(|t| *t == ticket).await;
        drop(rx);
        Turn(self)
    }
}

enum PendingArg {
    Value(Vec<u8>),
    Ref(ObjectRef),
}

/// A call being built: arguments and options, then [`Task::submit`].
pub struct Task<'a> {
    yr: &'a Yr,
    function: String,
    instance: Option<(String, String)>,
    args: Vec<PendingArg>,
    opts: Options,
    encode_error: Option<String>,
    order: Option<Arc<Sequencer>>,
}

impl Task<'_> {
    /// An argument serialised inline.
    pub fn arg<T: Serialize + ?Sized>(mut self, v: &T) -> Self {
        match bincode::serialize(v) {
            Ok(b) => self.args.push(PendingArg::Value(b)),
            Err(e) => {
                self.encode_error = Some(format!("argument {}: {e}", self.args.len()));
                self.args.push(PendingArg::Value(Vec::new()));
            }
        }
        self
    }

    /// Raw bytes inline (read with [`Args::bytes`]).
    pub fn arg_bytes(mut self, b: impl Into<Vec<u8>>) -> Self {
        self.args.push(PendingArg::Value(b.into()));
        self
    }

    /// An object reference: the callee reads the object itself, on its node.
    /// The call waits for the reference's value before it is sent.
    pub fn arg_ref(mut self, r: &ObjectRef) -> Self {
        self.args.push(PendingArg::Ref(r.clone()));
        self
    }

    /// All options at once.
    pub fn options(mut self, o: Options) -> Self {
        self.opts = o;
        self
    }

    /// Resources each instance serving the call reserves.
    pub fn resources(mut self, cpu_millis: u64, memory_mib: u64) -> Self {
        self.opts.cpu_millis = Some(cpu_millis);
        self.opts.memory_mib = Some(memory_mib);
        self
    }

    /// Retries of a call the platform failed to run.
    pub fn retries(mut self, n: u32) -> Self {
        self.opts.retries = Some(n);
        self
    }

    /// Runs the call on the node `node_id` (see [`Yr::nodes`]).
    pub fn on_node(self, node_id: &str) -> Self {
        self.on_label("yr.node", &[node_id])
    }

    /// Runs the call only on nodes whose label `key` is one of `values`.
    pub fn on_label(mut self, key: &str, values: &[&str]) -> Self {
        self.opts.affinity.push((
            AffinityKind::AffinityRequired,
            key.to_string(),
            values.iter().map(|v| v.to_string()).collect(),
        ));
        self
    }

    /// Per-call timeout.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.opts.timeout = Some(t);
        self
    }

    /// Sends the call; returns at once with a reference to its result.
    pub fn submit(self) -> Result<ObjectRef, Error> {
        if let Some(e) = self.encode_error {
            return Err(Error::Codec(format!("{}: {e}", self.function)));
        }
        let d = Arc::clone(&self.yr.d);
        let (target, method) = match &self.instance {
            Some((name, method)) => (name.clone(), method.clone()),
            None => (d.variant(&self.function, &self.opts)?, String::new()),
        };
        let out = ObjectRef::new(&d.store, RefState::Pending);
        let cell = out.clone();
        let label = match &self.instance {
            Some((name, m)) => format!("{name}.{m}"),
            None => self.function.clone(),
        };
        let instance = self.instance.map(|(name, _)| name);
        let function = match &instance {
            Some(_) => self.function.clone(),
            None => target,
        };
        let args = self.args;
        let opts = self.opts;
        let order = self.order.map(|s| {
            let t = s.ticket();
            (s, t)
        });
        let d2 = Arc::clone(&d);
        d.rt.spawn(async move {
            let turn = match order {
                Some((s, t)) => Some(s.wait_turn(t).await),
                None => None,
            };
            let r = d2
                .run_call(&label, function, instance, method, &args, &opts)
                .await;
            drop(turn);
            // `args` (and the references in it) live until the call has ended.
            drop(args);
            match r {
                Ok((state, info)) => {
                    if let RefState::Object { id, .. } = &state {
                        // Ownership is declared before anyone can drop the
                        // reference, so its free follows its own.
                        d2.store.own(&[*id]);
                    }
                    *cell.cell.info.lock() = Some(info);
                    cell.cell.state.send_replace(state);
                }
                Err(e) => {
                    cell.cell.state.send_replace(RefState::Failed(e));
                }
            }
        });
        Ok(out)
    }
}

impl Driver {
    /// Runs `f` on the driver's runtime from the caller's (blocking) thread.
    /// Refused inside an async context, where blocking would stall (or, in
    /// tokio, panic): call the driver from `spawn_blocking` or a plain thread.
    fn block_on<F: std::future::Future>(&self, f: F) -> Result<F::Output, Error> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(Error::Connect(
                "yr_runtime's driver calls block; they cannot run on an async task (use \
                 tokio::task::spawn_blocking or a plain thread)"
                    .into(),
            ));
        }
        Ok(self.rt.block_on(f))
    }

    /// The deployed name of `function` under `opts`, deploying it on first use.
    fn variant(&self, function: &str, opts: &Options) -> Result<String, Error> {
        if !self.registered.contains(function) {
            let mut known: Vec<&String> = self.registered.iter().collect();
            known.sort();
            return Err(Error::Deploy(format!(
                "{function:?} is not registered in this program (it has {known:?})"
            )));
        }
        let name = format!(
            "{}-{}-{:012x}",
            self.app,
            function,
            opts.variant_hash(self.code_stamp) & 0xffff_ffff_ffff
        );
        if self.deployed.lock().contains(&name) {
            return Ok(name);
        }
        let spec = FunctionSpec {
            name: name.clone(),
            runtime: "posix-custom-runtime".into(),
            code_path: self.exe.clone(),
            handler: function.to_string(),
            resources: Some(Resources {
                cpu_millis: opts.cpu_millis.unwrap_or(250),
                memory_mib: opts.memory_mib.unwrap_or(256),
                ..Default::default()
            }),
            min_instances: 0,
            max_instances: opts.max_instances.unwrap_or(8),
            concurrency: opts.concurrency.unwrap_or(1),
            timeout_ms: opts
                .timeout
                .map_or(600_000, |t| t.as_millis().min(u32::MAX as u128) as u32),
            max_retries: 3,
            scheduling: Some(SchedulingOptions {
                affinity: opts
                    .affinity
                    .iter()
                    .map(|(kind, key, values)| LabelAffinity {
                        kind: *kind as i32,
                        key: key.clone(),
                        values: values.clone(),
                    })
                    .collect(),
                ..Default::default()
            }),
            kind: "yrlib".into(),
            description: format!("{function} of {}", self.app),
            ..Default::default()
        };
        let mut master = self.master.clone();
        self.block_on(master.deploy(DeployRequest {
            spec: Some(spec),
            ..Default::default()
        }))?
        .map_err(|e| Error::Deploy(format!("deploying {function}: {}", e.message())))?;
        self.deployed.lock().insert(name.clone());
        Ok(name)
    }

    /// The proxy of the node whose data worker is at `addr`, if known.
    async fn proxy_near(&self, addr: &str) -> Option<ProxyClient<tonic::transport::Channel>> {
        let known = self.nodes.lock().get(addr).cloned();
        let (_, proxy) = match known {
            Some(n) => n,
            None => {
                let mut master = self.master.clone();
                let status = master.status(Empty {}).await.ok()?.into_inner();
                let mut nodes = self.nodes.lock();
                for n in status.nodes {
                    if !n.data_transfer_address.is_empty() {
                        nodes.insert(n.data_transfer_address, (n.node_id, n.proxy_address));
                    }
                }
                nodes.get(addr).cloned()?
            }
        };
        if let Some(c) = self.proxies.lock().get(&proxy) {
            return Some(c.clone());
        }
        let c = proxy_client(connect(&proxy).await.ok()?);
        self.proxies.lock().insert(proxy, c.clone());
        Some(c)
    }

    async fn run_call(
        &self,
        label: &str,
        function: String,
        instance: Option<String>,
        method: String,
        args: &[PendingArg],
        opts: &Options,
    ) -> Result<(RefState, CallInfo), Error> {
        let mut msg = TaskArgs::default();
        let mut largest: Option<(u64, ObjectId)> = None;
        for (i, a) in args.iter().enumerate() {
            let kind = match a {
                PendingArg::Value(v) => task_arg::Kind::Value(v.clone()),
                PendingArg::Ref(r) => match r.ready().await {
                    RefState::Inline(v) => task_arg::Kind::Value(v.to_vec()),
                    RefState::Object { id, size, node_id } => {
                        if largest.is_none_or(|(s, _)| size > s) {
                            largest = Some((size, id));
                        }
                        task_arg::Kind::Object(ObjectRefMsg {
                            id: id.0.to_vec(),
                            size,
                            node_id,
                        })
                    }
                    RefState::Failed(e) => {
                        return Err(Error::Platform {
                            function: label.to_string(),
                            message: format!("argument {i} failed: {e}"),
                        })
                    }
                    RefState::Pending => unreachable!("ready() waits for a final state"),
                },
            };
            msg.args.push(TaskArg { kind: Some(kind) });
        }
        // Stateless calls go to the node holding their largest argument.
        let mut proxy = None;
        if instance.is_none() {
            if let Some(addr) = largest.and_then(|(_, id)| id.tag().addr()) {
                proxy = self.proxy_near(&addr.to_string()).await;
            }
        }
        let mut proxy = proxy.unwrap_or_else(|| self.local_proxy.clone());
        // Shared by the attempts: a retry sends the same buffer again.
        let payload = prost::bytes::Bytes::from(msg.encode_to_vec());
        let retries = if instance.is_some() {
            0
        } else {
            opts.retries.unwrap_or(3)
        };
        let mut attempt = 0;
        loop {
            let req = InvokeRequest {
                function: function.clone(),
                instance: instance.clone().unwrap_or_default(),
                payload: payload.clone(),
                timeout_ms: opts
                    .timeout
                    .map_or(0, |t| t.as_millis().min(u32::MAX as u128) as u32),
                method: method.clone(),
                ..Default::default()
            };
            let reply = match proxy.invoke(req).await {
                Ok(r) => r.into_inner(),
                Err(s) => {
                    if attempt < retries {
                        attempt += 1;
                        proxy = self.local_proxy.clone();
                        continue;
                    }
                    return Err(Error::Platform {
                        function: label.to_string(),
                        message: s.message().to_string(),
                    });
                }
            };
            match ErrorKind::try_from(reply.error_kind).unwrap_or(ErrorKind::ErrorInternal) {
                ErrorKind::ErrorNone => return decode_result(label, &reply.payload),
                ErrorKind::ErrorFunction => {
                    return Err(if reply.error.contains(" is lost: ") {
                        Error::ObjectLost(format!("{label}: {}", reply.error))
                    } else {
                        Error::Task {
                            function: label.to_string(),
                            message: reply.error,
                        }
                    })
                }
                ErrorKind::ErrorNotFound => {
                    return Err(Error::Platform {
                        function: label.to_string(),
                        message: reply.error,
                    })
                }
                _ if attempt < retries => {
                    attempt += 1;
                    tracing::debug!(function = label, attempt, "retrying: {}", reply.error);
                }
                _ => {
                    return Err(Error::Platform {
                        function: label.to_string(),
                        message: reply.error,
                    })
                }
            }
        }
    }
}

fn decode_result(label: &str, payload: &[u8]) -> Result<(RefState, CallInfo), Error> {
    let r = TaskResult::decode(payload).map_err(|e| Error::Platform {
        function: label.to_string(),
        message: format!(
            "the reply is not a task result ({e}); is {label} a yr_runtime::Builder function?"
        ),
    })?;
    let info = CallInfo {
        node_id: r.node_id.clone(),
        instance_id: r.instance_id.clone(),
        elapsed: Duration::from_micros(r.elapsed_us),
        fetch: Duration::from_micros(r.fetch_us),
    };
    let state = match r.kind {
        Some(task_result::Kind::Value(v)) => RefState::Inline(Arc::new(v)),
        Some(task_result::Kind::Object(o)) => RefState::Object {
            id: object_id(&o.id).ok_or_else(|| Error::Platform {
                function: label.to_string(),
                message: "the result names a malformed object ID".into(),
            })?,
            size: o.size,
            node_id: o.node_id,
        },
        None => RefState::Inline(Arc::new(Vec::new())),
    };
    Ok((state, info))
}

/// A connected driver. Cheap to share by reference; dropping it ends the
/// calls still in flight.
pub struct Yr {
    d: Arc<Driver>,
}

/// A stateful instance created by [`Yr::instance`].
pub struct InstanceHandle<'a> {
    yr: &'a Yr,
    function: String,
    name: String,
    order: Arc<Sequencer>,
}

impl InstanceHandle<'_> {
    /// A call of `method` on this instance. Calls made through one handle
    /// run one at a time, in the order they were submitted.
    pub fn method(&self, method: &str) -> Task<'_> {
        Task {
            yr: self.yr,
            function: self.function.clone(),
            instance: Some((self.name.clone(), method.to_string())),
            args: Vec::new(),
            opts: Options::default(),
            encode_error: None,
            order: Some(Arc::clone(&self.order)),
        }
    }

    /// The instance's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Stops the instance.
    pub fn kill(self) -> Result<(), Error> {
        let mut master = self.yr.d.master.clone();
        self.yr
            .d
            .block_on(master.kill_instance(InstanceRef {
                name: self.name.clone(),
                ..Default::default()
            }))?
            .map(|_| ())
            .map_err(|e| Error::Deploy(format!("killing {}: {}", self.name, e.message())))
    }
}

impl Yr {
    /// A call of the registered function `name`.
    pub fn task(&self, name: &str) -> Task<'_> {
        Task {
            yr: self,
            function: name.to_string(),
            instance: None,
            args: Vec::new(),
            opts: Options::default(),
            encode_error: None,
            order: None,
        }
    }

    /// Creates (or finds) the named stateful instance of `class`.
    pub fn instance(
        &self,
        class: &str,
        name: &str,
        opts: Options,
    ) -> Result<InstanceHandle<'_>, Error> {
        let function = self.d.variant(class, &opts)?;
        let mut master = self.d.master.clone();
        self.d
            .block_on(master.create_instance(CreateInstanceRequest {
                function: function.clone(),
                name: name.to_string(),
                stateful: true,
                wait_ms: 60_000,
                ..Default::default()
            }))?
            .map_err(|e| Error::Deploy(format!("creating {class} {name:?}: {}", e.message())))?;
        Ok(InstanceHandle {
            yr: self,
            function,
            name: name.to_string(),
            order: Arc::default(),
        })
    }

    /// Stores a value (serialised) in this node's data worker.
    pub fn put<T: Serialize + ?Sized>(&self, v: &T) -> Result<ObjectRef, Error> {
        let b = bincode::serialize(v).map_err(|e| Error::Codec(format!("put: {e}")))?;
        self.put_bytes(&b)
    }

    /// Stores raw bytes in this node's data worker (one copy).
    pub fn put_bytes(&self, b: &[u8]) -> Result<ObjectRef, Error> {
        let id = self.d.store.new_id();
        self.d.store.put(id, b).map_err(store_err)?;
        Ok(self.owned(id, b.len() as u64))
    }

    /// A new object of `len` bytes in this node's shared memory, to fill in
    /// place and [`DriverObject::seal`].
    pub fn create_object(&self, len: usize) -> Result<DriverObject<'_>, Error> {
        let id = self.d.store.new_id();
        let b = self.d.store.create(id, len, 0).map_err(store_err)?;
        Ok(DriverObject { yr: self, b })
    }

    fn owned(&self, id: ObjectId, size: u64) -> ObjectRef {
        self.d.store.own(&[id]);
        ObjectRef::new(
            &self.d.store,
            RefState::Object {
                id,
                size,
                node_id: self.d.node_id.clone(),
            },
        )
    }

    fn wait_one(&self, r: &ObjectRef, timeout: Duration) -> Result<RefState, Error> {
        self.d
            .block_on(async { tokio::time::timeout(timeout, r.ready()).await })?
            .map_err(|_| Error::Timeout(format!("{r:?} not ready after {timeout:?}")))
    }

    /// The value's bytes: a zero-copy view when it is an object (pulled to
    /// this node first if it lives elsewhere).
    pub fn get_bytes(&self, r: &ObjectRef, timeout: Duration) -> Result<Bytes, Error> {
        let t0 = Instant::now();
        match self.wait_one(r, timeout)? {
            RefState::Inline(v) => Ok(Bytes::Inline(v)),
            RefState::Object { id, node_id, .. } => {
                let left = timeout.saturating_sub(t0.elapsed());
                let g = self
                    .d
                    .store
                    .get_remote(id, left)
                    .map_err(|e| match store_err(e) {
                        Error::ObjectLost(m) => Error::ObjectLost(format!("{m} (node {node_id})")),
                        other => other,
                    })?;
                Ok(Bytes::Shared(g))
            }
            RefState::Failed(e) => Err(e),
            RefState::Pending => Err(Error::Timeout(format!("{r:?} not ready"))),
        }
    }

    /// The value decoded as `T`.
    pub fn get<T: DeserializeOwned>(&self, r: &ObjectRef, timeout: Duration) -> Result<T, Error> {
        let b = self.get_bytes(r, timeout)?;
        bincode::deserialize(&b).map_err(|e| {
            Error::Codec(format!(
                "the value of {r:?} is not a {}: {e}",
                std::any::type_name::<T>()
            ))
        })
    }

    /// Waits until `num` of `refs` are ready or `timeout` passes; returns
    /// (ready, not ready), ready ones in the order they finished.
    pub fn wait(
        &self,
        refs: &[ObjectRef],
        num: usize,
        timeout: Duration,
    ) -> Result<(Vec<ObjectRef>, Vec<ObjectRef>), Error> {
        let num = num.min(refs.len());
        self.d.block_on(async {
            let deadline = tokio::time::Instant::now() + timeout;
            let mut pending: Vec<ObjectRef> = Vec::new();
            let mut ready: Vec<ObjectRef> = Vec::new();
            for r in refs {
                if r.is_ready() {
                    ready.push(r.clone());
                } else {
                    pending.push(r.clone());
                }
            }
            let mut set = tokio::task::JoinSet::new();
            for (i, r) in pending.iter().enumerate() {
                let r = r.clone();
                set.spawn(async move {
                    r.ready().await;
                    i
                });
            }
            let mut done = vec![false; pending.len()];
            while ready.len() < num {
                match tokio::time::timeout_at(deadline, set.join_next()).await {
                    Ok(Some(Ok(i))) => {
                        done[i] = true;
                        ready.push(pending[i].clone());
                    }
                    _ => break,
                }
            }
            set.abort_all();
            let rest = pending
                .into_iter()
                .zip(done)
                .filter(|(_, d)| !d)
                .map(|(r, _)| r)
                .collect();
            (ready, rest)
        })
    }

    /// The cluster's live nodes (ID, with `yr.node` = ID among their labels).
    pub fn nodes(&self) -> Result<Vec<NodeInfo>, Error> {
        let mut master = self.d.master.clone();
        let status = self
            .d
            .block_on(master.status(Empty {}))?
            .map_err(|e| Error::Connect(format!("cluster status: {}", e.message())))?
            .into_inner();
        let mut nodes: Vec<NodeInfo> = status
            .nodes
            .into_iter()
            .filter(|n| !status.dead_nodes.contains(&n.node_id))
            .map(|n| NodeInfo {
                node_id: n.node_id,
                hostname: n.hostname,
                labels: n.labels.into_iter().collect(),
            })
            .collect();
        nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        Ok(nodes)
    }

    /// This driver's node.
    pub fn node_id(&self) -> &str {
        &self.d.node_id
    }

    /// This node's data worker (for stats and advanced use).
    pub fn store(&self) -> &Client {
        &self.d.store
    }
}

/// An object the driver is writing in place (see [`Yr::create_object`]).
pub struct DriverObject<'a> {
    yr: &'a Yr,
    b: ObjectBuilder,
}

impl DriverObject<'_> {
    /// Publishes the object and returns a reference the driver owns.
    pub fn seal(self) -> Result<ObjectRef, Error> {
        let id = self.b.id();
        let size = self.b.len() as u64;
        self.b.seal().map_err(store_err)?;
        Ok(self.yr.owned(id, size))
    }
}

impl std::ops::Deref for DriverObject<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.b.data()
    }
}

impl std::ops::DerefMut for DriverObject<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.b.data_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_decode_inline_values_and_name_what_is_wrong() {
        let args = Args {
            items: vec![
                ArgData::Inline(bincode::serialize(&(7u64, "x".to_string())).unwrap_or_default()),
                ArgData::Inline(bytemuck::cast_slice::<u32, u8>(&[1, 2, 3]).to_vec()),
            ],
        };
        assert_eq!(args.len(), 2);
        assert_eq!(args.get::<(u64, String)>(0), Ok((7, "x".to_string())));
        assert_eq!(args.slice::<u32>(1).map(|s| s.to_vec()), Ok(vec![1, 2, 3]));
        assert!(!args.is_shared(0));
        let missing = args.bytes(5).expect_err("out of range");
        assert!(missing.contains("argument 5 is missing"), "{missing}");
        let wrong = args.get::<String>(1).expect_err("not a string");
        assert!(wrong.contains("argument 1"), "{wrong}");
        // 12 bytes are not a whole number of u64s.
        assert!(args.slice::<u64>(1).is_err());
    }

    #[test]
    fn options_that_change_placement_change_the_deployed_variant() {
        let base = Options::default();
        let pinned = Options {
            affinity: vec![(
                AffinityKind::AffinityRequired,
                "yr.node".into(),
                vec!["a".into()],
            )],
            ..Default::default()
        };
        let bigger = Options {
            cpu_millis: Some(2000),
            ..Default::default()
        };
        // Retries and timeouts are per call, not per pool.
        let retried = Options {
            retries: Some(9),
            timeout: Some(Duration::from_secs(1)),
            ..Default::default()
        };
        let h = |o: &Options| o.variant_hash(42);
        assert_ne!(h(&base), h(&pinned));
        assert_ne!(h(&base), h(&bigger));
        assert_eq!(h(&base), h(&retried));
        assert_ne!(
            base.variant_hash(1),
            base.variant_hash(2),
            "a rebuilt program gets new pools"
        );
    }

    #[test]
    fn results_decode_or_say_what_they_are() {
        let id = ObjectId::random(5);
        let r = TaskResult {
            kind: Some(task_result::Kind::Object(ObjectRefMsg {
                id: id.0.to_vec(),
                size: 99,
                node_id: "n1".into(),
            })),
            node_id: "n1".into(),
            instance_id: "i1".into(),
            elapsed_us: 1500,
            fetch_us: 500,
        };
        let (state, info) = decode_result("f", &r.encode_to_vec()).expect("decodes");
        assert!(matches!(state, RefState::Object { id: got, size: 99, .. } if got == id));
        assert_eq!(info.elapsed, Duration::from_micros(1500));
        assert_eq!(info.node_id, "n1");
        let bad = TaskResult {
            kind: Some(task_result::Kind::Object(ObjectRefMsg {
                id: vec![1, 2, 3],
                ..Default::default()
            })),
            ..Default::default()
        };
        assert!(decode_result("f", &bad.encode_to_vec()).is_err());
        let e = decode_result("f", b"\xff\xff not protobuf")
            .err()
            .map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("not a task result")));
    }

    #[test]
    fn connecting_from_an_async_task_is_an_error_not_a_panic() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let r = rt.block_on(async { Builder::new("t").connect_master("127.0.0.1:1") });
        let e = r.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("not from an async task"), "{e}");
    }

    #[test]
    fn a_sequencer_lets_calls_through_in_ticket_order() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let s = Arc::new(Sequencer::default());
            let tickets: Vec<u64> = (0..4).map(|_| s.ticket()).collect();
            let order = Arc::new(parking_lot::Mutex::new(Vec::new()));
            let mut tasks = Vec::new();
            // Spawned in reverse: each still waits for its turn.
            for &t in tickets.iter().rev() {
                let (s, order) = (Arc::clone(&s), Arc::clone(&order));
                tasks.push(tokio::spawn(async move {
                    let turn = s.wait_turn(t).await;
                    order.lock().push(t);
                    drop(turn);
                }));
            }
            for t in tasks {
                t.await.expect("task");
            }
            assert_eq!(*order.lock(), vec![0, 1, 2, 3]);
        });
    }
}
