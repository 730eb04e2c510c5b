//! The function proxy, one per node: the door through which every call reaches an instance.
//!
//! Function processes on this node connect to its instance socket ([`socket`]) and receive
//! their calls there. Callers anywhere send `Invoke` (gRPC); a service in this same process (the
//! REST frontend) calls through an [`Invoker`], the same path without the network hop. The proxy
//! delivers to a local instance ([`local`]), or forwards to the proxy of the node that runs the
//! chosen instance; where a call goes is decided by the pure functions of [`route`], which this
//! module feeds with what it sees and whose decisions it applies.
//!
//! Invariants:
//! - Each local instance has `concurrency` calls in flight at most. A stateless call that finds
//!   every local instance of its function busy waits for *any* of them (or for a new one) to
//!   free up, not for one chosen on arrival, so an instance added under load takes waiting calls
//!   at once. At most [`QUEUE_BOUND`] calls per local instance wait; beyond that a call is refused
//!   as BUSY, never dropped silently.
//! - A call to a named (stateful) instance waits in that instance's FIFO; concurrency 1 and the
//!   FIFO are what keep its calls in order.
//! - Every call ends with a reply: the result, the function's error, a timeout, or the instance's
//!   exit; a call is never left waiting on an instance that is gone.
//! - A call that times out is cancelled where it runs, and a stateful call never applies after
//!   its caller was told it failed: [`cancel`] decides, [`local`] applies.
//! - A forwarded call names its instance, so it is delivered here or refused; it is never
//!   forwarded twice.
//! - Errors are [`Error`]s until the reply is made: their kind travels in the reply's
//!   `error_kind`, and the master's refusals are read by their kind, never by their text.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tonic::{Request, Response, Status};
use yr_proto::frame;
use yr_proto::master_client::MasterClient;
use yr_proto::proxy_client::ProxyClient;
use yr_proto::proxy_server::{Proxy as ProxyService, ProxyServer};
use yr_proto::*;

use crate::error::Error;
use crate::etcd::{self, Meta, Mirror};
use crate::Shutdown;

pub mod calls;
pub mod cancel;
mod local;
pub mod route;
mod socket;

use local::{LocalInstance, Pool};
pub use route::QUEUE_BOUND;
use route::{Created, NamedView, PoolView, Refused, Route, Target};

/// Largest call or reply on the wire. Large data belongs in the data worker, passed by ID.
pub const MAX_MESSAGE: usize = frame::MAX_PAYLOAD;

/// How often a waiting call looks again even without a signal (a safety net, not the mechanism).
const RECHECK: Duration = Duration::from_millis(50);

/// How long a background scale-up waits for its instance.
const SCALE_UP_WAIT: Duration = Duration::from_secs(30);

pub struct ProxyConfig {
    pub listen: std::net::SocketAddr,
    pub etcd_endpoints: Vec<String>,
    pub master_address: String,
    pub node_id: String,
    /// The Unix socket this node's function processes connect to (mode 0600).
    pub instance_socket: std::path::PathBuf,
    /// Where the proxy writes the node secret for its agent (see [`crate::secret`]).
    pub instance_secret_file: std::path::PathBuf,
}

/// The outcome of one instance creation, shared by every call that waits for it.
type Creation = tokio::sync::OnceCell<Result<InstanceRecord, Arc<Error>>>;

struct State {
    config: ProxyConfig,
    meta: Meta,
    master: MasterClient<crate::MasterChannel>,
    locals: std::sync::RwLock<HashMap<String, Arc<LocalInstance>>>,
    instances: Mirror<InstanceRecord>,
    functions: Mirror<FunctionSpec>,
    peers: std::sync::Mutex<HashMap<String, ProxyClient<tonic::transport::Channel>>>,
    rr: AtomicUsize,
    /// One cold start or scale-up in flight per function.
    creating: Mutex<HashMap<String, Arc<Creation>>>,
    pools: std::sync::Mutex<HashMap<String, Arc<Pool>>>,
    /// The functions mirror's snapshot and the specs calls took from it (see `function`).
    specs: std::sync::Mutex<FunctionCache>,
    /// The calls answered, per function, for this node's collector.
    calls: calls::Calls,
}

type FunctionCache = (
    Arc<HashMap<String, FunctionSpec>>,
    HashMap<String, Arc<FunctionSpec>>,
);

/// A platform error as the reply that carries it: the kind decided where it arose, and its
/// message for people.
fn reply_of(e: &Error) -> InvokeReply {
    InvokeReply {
        error_kind: e.kind() as i32,
        error: e.to_string(),
        ..Default::default()
    }
}

/// Maps a failure of etcd or of a connection set-up to [`Error::Unavailable`], saying what was
/// being done.
fn unavailable<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> Error + '_ {
    move |e| Error::Unavailable(format!("{what}: {e:#}"))
}

impl State {
    fn pool(&self, function: &str) -> Arc<Pool> {
        let Ok(mut pools) = self.pools.lock() else {
            return Arc::new(Pool::default());
        };
        // Looked up on every call: no key allocation once the pool exists.
        if let Some(p) = pools.get(function) {
            return Arc::clone(p);
        }
        Arc::clone(pools.entry(function.to_string()).or_default())
    }

    /// This node's connected stateless instances of `function`.
    fn locals_of(&self, function: &str) -> Vec<Arc<LocalInstance>> {
        self.locals
            .read()
            .map(|l| {
                l.values()
                    .filter(|i| i.function == function && i.pool.is_some())
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    fn local(&self, id: &str) -> Option<Arc<LocalInstance>> {
        self.locals.read().ok()?.get(id).cloned()
    }

    /// The stateless instances of `function` not ended, anywhere (starting ones included).
    fn alive(instances: &HashMap<String, InstanceRecord>, function: &str) -> usize {
        instances
            .values()
            .filter(|r| {
                r.function == function && !r.stateful && !crate::lifecycle::is_terminal(r.state)
            })
            .count()
    }

    /// The RUNNING stateless instances of `function` on other nodes, in the snapshot's order.
    fn remote<'a>(
        &'a self,
        instances: &'a HashMap<String, InstanceRecord>,
        function: &'a str,
    ) -> impl Iterator<Item = &'a InstanceRecord> + 'a {
        instances.values().filter(move |r| {
            r.function == function
                && !r.stateful
                && r.state() == InstanceState::Running
                && r.node_id != self.config.node_id
                && self.local(&r.instance_id).is_none()
        })
    }

    fn peer(&self, address: &str) -> Result<ProxyClient<tonic::transport::Channel>, Error> {
        let mut peers = self
            .peers
            .lock()
            .map_err(|_| Error::Internal("the peer table is poisoned".into()))?;
        if let Some(p) = peers.get(address) {
            return Ok(p.clone());
        }
        let channel = crate::channel(address)?;
        let c = ProxyClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        peers.insert(address.to_string(), c.clone());
        Ok(c)
    }

    async fn forward(
        &self,
        record: &InstanceRecord,
        mut req: InvokeRequest,
    ) -> Result<InvokeReply, Error> {
        req.instance = record.instance_id.clone();
        req.forwarded = true;
        let mut peer = self.peer(&record.proxy_address)?;
        match peer.invoke(req).await {
            Ok(r) => Ok(r.into_inner()),
            Err(e) => Err(Error::Internal(format!(
                "proxy of node {} ({}) unreachable: {}",
                record.node_id,
                record.proxy_address,
                e.message()
            ))),
        }
    }

    /// Creates one more instance of `function` unless one is already being created, and
    /// returns the instance (RUNNING) that this or the concurrent creation made.
    async fn create_one(
        self: &Arc<Self>,
        function: &str,
        wait: Duration,
    ) -> Result<InstanceRecord, Arc<Error>> {
        let cell = {
            let mut c = self.creating.lock().await;
            Arc::clone(c.entry(function.to_string()).or_default())
        };
        let this = Arc::clone(self);
        let f = function.to_string();
        let r = cell
            .get_or_init(|| async move {
                let mut master = this.master.clone();
                let created = master
                    .create_instance(CreateInstanceRequest {
                        function: f,
                        scheduling: Some(SchedulingOptions {
                            preferred_node: this.config.node_id.clone(),
                            ..Default::default()
                        }),
                        wait_ms: wait.as_millis() as u32,
                        ..Default::default()
                    })
                    .await
                    // The master's refusal keeps its kind (max_instances, resources, timeout…).
                    .map_err(Error::from_status)
                    .and_then(|r| {
                        r.into_inner().instance.ok_or_else(|| {
                            Error::Internal("the master returned no instance".into())
                        })
                    });
                created.map_err(Arc::new)
            })
            .await
            .clone();
        let mut c = self.creating.lock().await;
        if c.get(function).is_some_and(|x| Arc::ptr_eq(x, &cell)) {
            c.remove(function);
        }
        r
    }

    /// The spec of `name`: shared from the mirror (copied once per change of the mirror, not
    /// once per call), else read from etcd itself when the mirror has not seen it yet: a
    /// function registered a moment ago (by a driver or the meta service) must be invocable at
    /// once, before the watch event reaches this proxy.
    async fn function(&self, name: &str) -> Option<Arc<FunctionSpec>> {
        let snapshot = self.functions.snapshot();
        if let Ok(mut cache) = self.specs.lock() {
            if !Arc::ptr_eq(&cache.0, &snapshot) {
                *cache = (Arc::clone(&snapshot), HashMap::new());
            }
            if let Some(f) = cache.1.get(name) {
                return Some(Arc::clone(f));
            }
            if let Some(f) = snapshot.get(name) {
                let f = Arc::new(f.clone());
                cache.1.insert(name.to_string(), Arc::clone(&f));
                return Some(f);
            }
        }
        match self
            .meta
            .get::<FunctionSpec>(&etcd::function_key(name))
            .await
        {
            Ok(f) => f.map(Arc::new),
            Err(e) => {
                tracing::debug!(function = name, "etcd lookup failed: {e}");
                None
            }
        }
    }

    async fn invoke(self: &Arc<Self>, req: InvokeRequest) -> InvokeReply {
        if req.dry_run || req.forwarded {
            // An existence check is not a call; a call another proxy forwarded here is counted
            // there, where it entered the cluster (end to end, and once: the dashboard sums
            // the nodes' counts).
            return match self.call(req).await {
                Ok(r) => r,
                Err(e) => reply_of(&e),
            };
        }
        let start = std::time::Instant::now();
        // The name is needed after the request moves into the call; a short string.
        let function = req.function.clone();
        let reply = match self.call(req).await {
            Ok(r) => r,
            Err(e) => reply_of(&e),
        };
        let kind = reply.error_kind();
        self.calls.record(
            &function,
            start.elapsed(),
            kind != ErrorKind::ErrorNone,
            // A call to a function that does not exist adds no name (see `calls`); only
            // looked up on that error's path.
            kind != ErrorKind::ErrorNotFound || self.functions.snapshot().contains_key(&function),
        );
        reply
    }

    async fn call(self: &Arc<Self>, req: InvokeRequest) -> Result<InvokeReply, Error> {
        let Some(function) = self.function(&req.function).await else {
            return Err(Error::NotFound(format!(
                "function {:?} is not deployed",
                req.function
            )));
        };
        if req.dry_run {
            // Only asked whether the function exists: it does.
            return Ok(InvokeReply::default());
        }
        let timeout = Duration::from_millis(if req.timeout_ms > 0 {
            req.timeout_ms
        } else {
            function.timeout_ms
        } as u64);
        if req.instance.is_empty() {
            self.call_any(&function, req, timeout).await
        } else {
            self.call_named(&function, req, timeout).await
        }
    }

    /// A stateless call: to a free local instance, else as [`route::route`] decides.
    async fn call_any(
        self: &Arc<Self>,
        function: &FunctionSpec,
        req: InvokeRequest,
        timeout: Duration,
    ) -> Result<InvokeReply, Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        let pool = self.pool(&function.name);
        let mut cold_starts = 0u32;
        loop {
            // Armed before looking, so a permit freed between the look and the wait still wakes
            // this call.
            let freed = pool.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let local = self.locals_of(&function.name);
            let free = local
                .iter()
                .find_map(|l| l.permits.try_acquire().ok().map(|p| (l, p)));
            let mut view = PoolView {
                forwarded: req.forwarded,
                local_free: free.is_some(),
                local: local.len(),
                max_instances: function.max_instances,
                cold_starts,
                ..PoolView::default()
            };
            // The instances mirror is only looked at when no local instance is free.
            let instances = free.is_none().then(|| self.instances.snapshot());
            if let Some(instances) = &instances {
                view.alive = Self::alive(instances, &function.name);
                view.remote = self.remote(instances, &function.name).count();
                view.waiting = pool.waiting.load(Ordering::Relaxed);
                view.turn = self.rr.load(Ordering::Relaxed);
            }
            let decision = route::route(&view);
            if decision.scale_up {
                let this = Arc::clone(self);
                let f = function.name.clone();
                tokio::spawn(async move {
                    if let Err(e) = this.create_one(&f, SCALE_UP_WAIT).await {
                        tracing::debug!(function = %f, "scale-up refused: {e}");
                    }
                });
            }
            let node = &self.config.node_id;
            match decision.route {
                Route::Local => {
                    let Some((l, permit)) = free else {
                        return Err(Error::Internal(
                            "routed to a local instance without its permit".into(),
                        ));
                    };
                    return l.run_call(permit, function, &req, deadline, node).await;
                }
                Route::Forward(i) => {
                    self.rr.fetch_add(1, Ordering::Relaxed);
                    let target = instances
                        .as_ref()
                        .and_then(|s| self.remote(s, &function.name).nth(i));
                    let Some(target) = target else {
                        return Err(Error::Internal(format!(
                            "routed to remote instance {i} of {}, which is not there",
                            function.name
                        )));
                    };
                    return self.forward(target, req).await;
                }
                Route::Busy => {
                    return Err(Error::Busy(format!(
                        "{} has {} calls waiting on this node; try again later",
                        function.name,
                        QUEUE_BOUND * local.len()
                    )))
                }
                Route::Wait => {
                    pool.waiting.fetch_add(1, Ordering::Relaxed);
                    let timed_out = tokio::select! {
                        _ = &mut freed => false,
                        _ = tokio::time::sleep(RECHECK) => false,
                        _ = tokio::time::sleep_until(deadline) => true,
                    };
                    pool.waiting.fetch_sub(1, Ordering::Relaxed);
                    if timed_out {
                        return Err(Error::Timeout(format!(
                            "{} timed out after {timeout:?} waiting for a free instance",
                            function.name
                        )));
                    }
                }
                Route::WaitForStart => self.wait_for_start(function, deadline, timeout).await?,
                Route::NotHere => {
                    return Err(Error::NotFound(format!(
                        "no instance of {} runs on node {node}",
                        function.name
                    )))
                }
                Route::GiveUp => {
                    return Err(Error::Internal(format!(
                        "no running instance of {} found after starting one",
                        function.name
                    )))
                }
                Route::Create => {
                    // Cold start: no instance runs anywhere. Deliver to the very instance the
                    // master started (waiting for the mirror could see an intermediate state
                    // and start another).
                    cold_starts += 1;
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    let created = match self.create_one(&function.name, left).await {
                        Ok(r) => r,
                        Err(e) => match route::refused(e.kind()) {
                            Refused::WaitForStart => {
                                cold_starts -= 1;
                                self.wait_for_start(function, deadline, timeout).await?;
                                continue;
                            }
                            Refused::Fail(kind) => {
                                return Err(Error::from_kind(
                                    kind,
                                    format!("cannot start an instance of {}: {e}", function.name),
                                ))
                            }
                        },
                    };
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    let connected = self.local(&created.instance_id);
                    match (
                        route::created(connected.is_some(), created.node_id != *node),
                        connected,
                    ) {
                        (Created::Deliver, Some(l)) => {
                            return l.deliver(function, &req, left, node).await
                        }
                        (Created::Forward, _) => return self.forward(&created, req).await,
                        _ => {
                            tracing::debug!(cold_starts, instance = %created.instance_id,
                                "new instance not connected");
                        }
                    }
                }
            }
        }
    }

    /// Waits for the instances mirror to change (an instance starting elsewhere may become
    /// usable), at most [`RECHECK`]; a timeout once the call's deadline has passed.
    async fn wait_for_start(
        &self,
        function: &FunctionSpec,
        deadline: tokio::time::Instant,
        timeout: Duration,
    ) -> Result<(), Error> {
        let mut m = self.instances.subscribe();
        tokio::select! {
            _ = m.changed() => {}
            _ = tokio::time::sleep(RECHECK) => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Timeout(format!(
                "{} has no running instance after {timeout:?}",
                function.name
            )));
        }
        Ok(())
    }

    /// Whether the newest record of the instance `key` (an ID or a name) of `function` is on its
    /// way to RUNNING: not running yet, and not ended.
    fn starting(&self, function: &str, key: &str) -> bool {
        let instances = self.instances.snapshot();
        let record = instances
            .get(key)
            .filter(|r| r.function == function)
            .or_else(|| {
                instances
                    .values()
                    .filter(|r| r.name == key && r.function == function)
                    .max_by_key(|r| (!crate::lifecycle::is_terminal(r.state), r.updated_unix_ms))
            });
        record.is_some_and(|r| {
            matches!(
                InstanceState::try_from(r.state),
                Ok(InstanceState::New
                    | InstanceState::Scheduling
                    | InstanceState::Creating
                    | InstanceState::Failed)
            )
        })
    }

    /// A call to the instance `req.instance` names (its ID, or a stateful instance's name), as
    /// [`route::named`] decides.
    async fn call_named(
        &self,
        function: &FunctionSpec,
        req: InvokeRequest,
        timeout: Duration,
    ) -> Result<InvokeReply, Error> {
        let key = req.instance.as_str();
        // A named instance still starting (the master told its creator it runs, this proxy's
        // mirror of the records may lag behind; or it is restarting) is waited for within the
        // call's time rather than refused.
        let deadline = tokio::time::Instant::now() + timeout;
        let mut watch = self.instances.subscribe();
        while self.local(key).is_none() && self.starting(&function.name, key) {
            if tokio::time::timeout_at(deadline, watch.changed())
                .await
                .is_err()
            {
                break;
            }
        }
        let local = self.local(key).or_else(|| {
            let locals = self.locals.read().ok()?;
            let instances = self.instances.snapshot();
            instances
                .values()
                .find(|r| {
                    r.name == key
                        && r.function == function.name
                        && !crate::lifecycle::is_terminal(r.state)
                })
                .and_then(|r| locals.get(&r.instance_id).cloned())
        });
        // The instances mirror is only looked at when the instance is not connected here.
        let instances = local.is_none().then(|| self.instances.snapshot());
        let record = instances.as_ref().and_then(|instances| {
            instances
                .get(key)
                .filter(|r| r.function == function.name)
                .or_else(|| {
                    instances
                        .values()
                        .filter(|r| r.name == key && r.function == function.name)
                        .max_by_key(|r| {
                            (!crate::lifecycle::is_terminal(r.state), r.updated_unix_ms)
                        })
                })
        });
        let view = NamedView {
            forwarded: req.forwarded,
            local: local.is_some(),
            // A state this version does not know is not RUNNING.
            record: record.map(|r| InstanceState::try_from(r.state).unwrap_or(InstanceState::New)),
        };
        let node = &self.config.node_id;
        match (route::named(&view), local, record) {
            (Target::Local, Some(l), _) => l.deliver(function, &req, timeout, node).await,
            (Target::Forward, _, Some(r)) => self.forward(r, req).await,
            (Target::NotHere, ..) => Err(Error::NotFound(format!(
                "instance {key} does not run on node {node}"
            ))),
            (Target::Fatal, _, Some(r)) => Err(Error::InstanceFatal(format!(
                "instance {} is FATAL: {}",
                r.instance_id, r.error
            ))),
            (Target::NotRunning, _, Some(r)) => Err(Error::NotFound(format!(
                "instance {} is {}, not RUNNING",
                r.instance_id,
                crate::lifecycle::state_name(r.state)
            ))),
            _ => Err(Error::NotFound(format!(
                "no instance {key:?} of function {}",
                function.name
            ))),
        }
    }
}

/// This proxy's calls for a service in the same process (the REST frontend): the path of a gRPC
/// `Invoke` without the network hop, the call's payload a shared buffer handed on, not copied.
/// Cheap to clone.
#[derive(Clone)]
pub struct Invoker(Arc<State>);

impl Invoker {
    /// Runs one call to its end: the reply carries the result, the function's error, or the
    /// platform error's kind and message.
    pub async fn invoke(&self, req: InvokeRequest) -> InvokeReply {
        self.0.invoke(req).await
    }
}

struct Service(Arc<State>);

#[tonic::async_trait]
impl ProxyService for Service {
    async fn invoke(&self, req: Request<InvokeRequest>) -> Result<Response<InvokeReply>, Status> {
        Ok(Response::new(self.0.invoke(req.into_inner()).await))
    }

    async fn load(&self, _: Request<Empty>) -> Result<Response<LoadReport>, Status> {
        let now = etcd::now_ms();
        let locals: Vec<Arc<LocalInstance>> = self
            .0
            .locals
            .read()
            .map(|l| l.values().cloned().collect())
            .unwrap_or_default();
        Ok(Response::new(LoadReport {
            node_id: self.0.config.node_id.clone(),
            instances: locals.iter().map(|l| l.load(now)).collect(),
        }))
    }

    async fn calls(&self, _: Request<Empty>) -> Result<Response<CallStats>, Status> {
        Ok(Response::new(self.0.calls.snapshot(&self.0.config.node_id)))
    }
}

/// A proxy whose sockets are bound and whose mirrors run, not serving yet: the process that
/// hosts it can take its [`Invoker`] (for a frontend in the same process) before it serves.
pub struct Proxy {
    state: Arc<State>,
    listener: tokio::net::TcpListener,
    instance_listener: socket::InstanceSocket,
    address: std::net::SocketAddr,
}

impl Proxy {
    /// Connects to etcd, starts the mirrors and binds the gRPC port and the instance socket.
    pub async fn bind(config: ProxyConfig) -> Result<Proxy, Error> {
        let meta = Meta::connect(&config.etcd_endpoints).await?;
        let instances = Mirror::start(meta.clone(), etcd::INSTANCES).await?;
        let functions = Mirror::start(meta.clone(), etcd::FUNCTIONS).await?;
        let specs = std::sync::Mutex::new((functions.snapshot(), HashMap::new()));
        let channel = crate::master_channel(&config.master_address)?;
        crate::follow_masters(meta.clone(), channel.clone());
        let master = MasterClient::new(channel);
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| Error::io(format!("cannot listen on {}", config.listen), e))?;
        let address = listener
            .local_addr()
            .map_err(|e| Error::io("the proxy's address", e))?;
        let instance_listener =
            socket::bind(&config.instance_socket, &config.instance_secret_file)?;
        let state = Arc::new(State {
            config,
            meta,
            master,
            locals: Default::default(),
            instances,
            functions,
            peers: Default::default(),
            rr: AtomicUsize::new(0),
            creating: Mutex::new(HashMap::new()),
            pools: Default::default(),
            specs,
            calls: calls::Calls::default(),
        });
        Ok(Proxy {
            state,
            listener,
            instance_listener,
            address,
        })
    }

    /// The bound gRPC address.
    pub fn address(&self) -> std::net::SocketAddr {
        self.address
    }

    /// The handle through which a service in this process calls this proxy.
    pub fn invoker(&self) -> Invoker {
        Invoker(Arc::clone(&self.state))
    }

    /// Serves until `shutdown`; `on_ready` gets the bound address once the instance socket
    /// accepts.
    pub async fn serve(
        self,
        shutdown: Shutdown,
        on_ready: impl FnOnce(std::net::SocketAddr),
    ) -> Result<(), Error> {
        let instance_socket = self.state.config.instance_socket.clone();
        tokio::spawn(socket::accept(
            Arc::clone(&self.state),
            self.instance_listener,
            shutdown.clone(),
        ));
        on_ready(self.address);
        let served = crate::grpc_server()?
            .add_service(tonic::service::interceptor::InterceptedService::new(
                ProxyServer::new(Service(self.state))
                    .max_decoding_message_size(MAX_MESSAGE)
                    .max_encoding_message_size(MAX_MESSAGE),
                yr_proto::tls::require_client_cert,
            ))
            .serve_with_incoming_shutdown(crate::incoming(self.listener), shutdown.wait_owned())
            .await;
        let _ = std::fs::remove_file(&instance_socket);
        served.map_err(|e| Error::Internal(format!("serving gRPC on {}: {e}", self.address)))
    }
}

/// Runs the proxy until `shutdown`; `on_ready` gets the bound address.
pub async fn run(
    config: ProxyConfig,
    shutdown: Shutdown,
    on_ready: impl FnOnce(std::net::SocketAddr),
) -> Result<(), Error> {
    Proxy::bind(config).await?.serve(shutdown, on_ready).await
}
