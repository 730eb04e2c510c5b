//! The function proxy, one per node: the door through which every call reaches an instance.
//!
//! Function processes on this node connect to its instance socket (a Unix socket carrying the
//! frames of [`yr_proto::frame`]) and receive their calls there. Callers anywhere send `Invoke`
//! (gRPC); the proxy delivers to a local instance, or forwards to the proxy of the node that runs
//! the chosen instance.
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
//! - A forwarded call names its instance, so it is delivered here or refused; it is never
//!   forwarded twice.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, Mutex, Semaphore};
use tonic::{Request, Response, Status};
use yr_proto::frame;
use yr_proto::master_client::MasterClient;
use yr_proto::proxy_client::ProxyClient;
use yr_proto::proxy_server::{Proxy, ProxyServer};
use yr_proto::*;

use crate::etcd::{self, Meta, Mirror};
use crate::Shutdown;

/// Calls that may wait for a busy instance, per instance.
pub const QUEUE_BOUND: usize = 1024;

/// Largest call or reply on the wire. Large data belongs in the data worker, passed by ID.
pub const MAX_MESSAGE: usize = frame::MAX_PAYLOAD;

/// How long a new connection on the instance socket has to say which instance it is.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Frames smaller than this are gathered into one write; larger ones are written on their own.
const BATCH: usize = 64 << 10;

pub struct ProxyConfig {
    pub listen: std::net::SocketAddr,
    pub etcd_endpoints: Vec<String>,
    pub master_address: String,
    pub node_id: String,
    /// The Unix socket this node's function processes connect to (mode 0600).
    pub instance_socket: std::path::PathBuf,
    /// Also serve this node's REST frontend, calling this proxy in-process.
    pub frontend: Option<(std::net::SocketAddr, crate::rest::RestConfig)>,
}

struct LocalInstance {
    id: String,
    function: String,
    /// Encoded frames for the instance's socket.
    tx: mpsc::Sender<Vec<u8>>,
    pending: std::sync::Mutex<HashMap<u64, oneshot::Sender<CallResult>>>,
    permits: Semaphore,
    concurrency: u32,
    waiting: AtomicUsize,
    /// When its last call ended (ms since the epoch); its start time until then.
    last_done: AtomicU64,
    /// The function's waiting calls, for stateless instances.
    pool: Option<Arc<Pool>>,
}

/// Stateless calls of one function waiting on this node for any local instance to free up.
#[derive(Default)]
struct Pool {
    /// Signalled when a call ends on one of the function's local instances or one connects.
    freed: tokio::sync::Notify,
    waiting: AtomicUsize,
}

/// Ends a call's occupancy of an instance (dropped after its permit): stamps the instance's
/// last activity and lets one waiting call of the function look again.
struct Busy<'a>(&'a LocalInstance);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.last_done.store(etcd::now_ms(), Ordering::Relaxed);
        if let Some(pool) = &self.0.pool {
            pool.freed.notify_one();
        }
    }
}

/// How often a waiting call looks again even without a signal (a safety net, not the mechanism).
const RECHECK: Duration = Duration::from_millis(50);

/// The outcome of one instance creation, shared by every call that waits for it.
type Creation = tokio::sync::OnceCell<Result<InstanceRecord, String>>;

struct State {
    config: ProxyConfig,
    meta: Meta,
    master: MasterClient<tonic::transport::Channel>,
    locals: std::sync::RwLock<HashMap<String, Arc<LocalInstance>>>,
    instances: Mirror<InstanceRecord>,
    functions: Mirror<FunctionSpec>,
    peers: std::sync::Mutex<HashMap<String, ProxyClient<tonic::transport::Channel>>>,
    next_call: AtomicU64,
    rr: AtomicUsize,
    /// One cold start or scale-up in flight per function.
    creating: Mutex<HashMap<String, Arc<Creation>>>,
    pools: std::sync::Mutex<HashMap<String, Arc<Pool>>>,
    /// The functions mirror's snapshot and the specs calls took from it (see `function`).
    specs: std::sync::Mutex<FunctionCache>,
}

type FunctionCache = (
    Arc<HashMap<String, FunctionSpec>>,
    HashMap<String, Arc<FunctionSpec>>,
);

fn fail(kind: ErrorKind, msg: impl Into<String>) -> InvokeReply {
    InvokeReply {
        error_kind: kind as i32,
        error: msg.into(),
        ..Default::default()
    }
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

    fn peer(&self, address: &str) -> Result<ProxyClient<tonic::transport::Channel>, String> {
        let mut peers = self
            .peers
            .lock()
            .map_err(|_| "peer table poisoned".to_string())?;
        if let Some(p) = peers.get(address) {
            return Ok(p.clone());
        }
        let c = ProxyClient::new(crate::channel(address).map_err(|e| e.to_string())?)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        peers.insert(address.to_string(), c.clone());
        Ok(c)
    }

    async fn deliver(
        &self,
        inst: &LocalInstance,
        function: &FunctionSpec,
        req: &InvokeRequest,
        timeout: Duration,
    ) -> InvokeReply {
        if inst.waiting.load(Ordering::Relaxed) >= QUEUE_BOUND {
            return fail(
                ErrorKind::ErrorBusy,
                format!(
                    "instance {} of {} has {QUEUE_BOUND} calls queued; try again later",
                    inst.id, inst.function
                ),
            );
        }
        let deadline = tokio::time::Instant::now() + timeout;
        inst.waiting.fetch_add(1, Ordering::Relaxed);
        let permit = tokio::time::timeout_at(deadline, inst.permits.acquire()).await;
        inst.waiting.fetch_sub(1, Ordering::Relaxed);
        let permit = match permit {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => {
                return fail(
                    ErrorKind::ErrorInstanceFatal,
                    format!("instance {} exited", inst.id),
                )
            }
            Err(_) => {
                return fail(
                    ErrorKind::ErrorTimeout,
                    format!(
                        "{} timed out after {timeout:?} waiting for a free instance",
                        function.name
                    ),
                )
            }
        };
        self.run_call(inst, permit, function, req, deadline).await
    }

    /// Sends one call to a local instance whose permit the caller holds, and waits for its end.
    async fn run_call(
        &self,
        inst: &LocalInstance,
        permit: tokio::sync::SemaphorePermit<'_>,
        function: &FunctionSpec,
        req: &InvokeRequest,
        deadline: tokio::time::Instant,
    ) -> InvokeReply {
        let _busy = Busy(inst);
        let _permit = permit;
        let timeout = deadline.saturating_duration_since(tokio::time::Instant::now());
        let call_id = self.next_call.fetch_add(1, Ordering::Relaxed);
        if req.payload.len() > MAX_MESSAGE {
            return fail(
                ErrorKind::ErrorInternal,
                format!(
                    "a call of {} bytes to {} is over the {MAX_MESSAGE}-byte limit; put large \
                     data in the data worker and pass its ID",
                    req.payload.len(),
                    function.name
                ),
            );
        }
        let call = ProxyMessage {
            msg: Some(proxy_message::Msg::Call(Call {
                call_id,
                handler: function.handler.clone(),
                payload: req.payload.clone(),
                timeout_ms: timeout.as_millis() as u32,
                method: req.method.clone(),
            })),
        };
        let call = match frame::to_frame(&call) {
            Ok(f) => f,
            Err(e) => return fail(ErrorKind::ErrorInternal, format!("{}: {e}", function.name)),
        };
        let (tx, rx) = oneshot::channel();
        if let Ok(mut p) = inst.pending.lock() {
            p.insert(call_id, tx);
        }
        // Bounded by the deadline too: a process that stopped reading its socket fills the
        // queue to it, and the call must still end.
        let sent = tokio::time::timeout_at(deadline, inst.tx.send(call)).await;
        if !matches!(sent, Ok(Ok(()))) {
            if let Ok(mut p) = inst.pending.lock() {
                p.remove(&call_id);
            }
            return match sent {
                Err(_) => fail(
                    ErrorKind::ErrorTimeout,
                    format!(
                        "instance {} of {} did not take the call within {timeout:?}",
                        inst.id, function.name
                    ),
                ),
                _ => fail(
                    ErrorKind::ErrorInstanceFatal,
                    format!("instance {} exited", inst.id),
                ),
            };
        }
        let outcome = tokio::time::timeout_at(deadline, rx).await;
        match outcome {
            Ok(Ok(r)) if r.error.is_empty() => InvokeReply {
                payload: r.payload,
                instance_id: inst.id.clone(),
                node_id: self.config.node_id.clone(),
                ..Default::default()
            },
            Ok(Ok(r)) => InvokeReply {
                error_kind: ErrorKind::ErrorFunction as i32,
                error: r.error,
                instance_id: inst.id.clone(),
                node_id: self.config.node_id.clone(),
                ..Default::default()
            },
            Ok(Err(_)) => fail(
                ErrorKind::ErrorInstanceFatal,
                format!(
                    "instance {} of {} exited during the call",
                    inst.id, inst.function
                ),
            ),
            Err(_) => {
                if let Ok(mut p) = inst.pending.lock() {
                    p.remove(&call_id);
                }
                fail(
                    ErrorKind::ErrorTimeout,
                    format!("{} did not answer within {timeout:?}", function.name),
                )
            }
        }
    }

    async fn forward(&self, record: &InstanceRecord, mut req: InvokeRequest) -> InvokeReply {
        req.instance = record.instance_id.clone();
        req.forwarded = true;
        let mut peer = match self.peer(&record.proxy_address) {
            Ok(p) => p,
            Err(e) => return fail(ErrorKind::ErrorInternal, e),
        };
        match peer.invoke(req).await {
            Ok(r) => r.into_inner(),
            Err(e) => fail(
                ErrorKind::ErrorInternal,
                format!(
                    "proxy of node {} ({}) unreachable: {}",
                    record.node_id,
                    record.proxy_address,
                    e.message()
                ),
            ),
        }
    }

    /// Creates one more instance of `function` unless one is already being created, and
    /// returns the instance (RUNNING) that this or the concurrent creation made.
    async fn create_one(
        self: &Arc<Self>,
        function: &str,
        wait: Duration,
    ) -> Result<InstanceRecord, String> {
        let cell = {
            let mut c = self.creating.lock().await;
            Arc::clone(c.entry(function.to_string()).or_default())
        };
        let this = Arc::clone(self);
        let f = function.to_string();
        let r = cell
            .get_or_init(|| async move {
                let mut master = this.master.clone();
                master
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
                    .map_err(|e| e.message().to_string())
                    .and_then(|r| {
                        r.into_inner()
                            .instance
                            .ok_or_else(|| "the master returned no instance".to_string())
                    })
            })
            .await
            .clone();
        let mut c = self.creating.lock().await;
        if c.get(function).is_some_and(|x| Arc::ptr_eq(x, &cell)) {
            c.remove(function);
        }
        r
    }

    /// The function's spec from the mirror, or from etcd itself when the mirror has not seen it
    /// yet: a function registered a moment ago (by a driver or the meta service) must be
    /// invocable at once, before the watch event reaches this proxy.
    /// The spec of `name`: shared from the mirror (copied once per change of the mirror, not
    /// once per call), else read from etcd for a function the watch has not delivered yet.
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
        let Some(function) = self.function(&req.function).await else {
            return fail(
                ErrorKind::ErrorNotFound,
                format!("function {:?} is not deployed", req.function),
            );
        };
        let timeout = Duration::from_millis(if req.timeout_ms > 0 {
            req.timeout_ms
        } else {
            function.timeout_ms
        } as u64);
        if !req.instance.is_empty() {
            return self.invoke_instance(&function, req, timeout).await;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let pool = self.pool(&function.name);
        let mut attempt = 0u32;
        loop {
            // Armed before looking, so a permit freed between the look and the wait still wakes
            // this call.
            let freed = pool.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let local = self.locals_of(&function.name);
            if let Some((l, permit)) = local
                .iter()
                .find_map(|l| l.permits.try_acquire().ok().map(|p| (l, p)))
            {
                return self.run_call(l, permit, &function, &req, deadline).await;
            }
            let instances = self.instances.snapshot();
            let alive = instances
                .values()
                .filter(|r| {
                    r.function == function.name
                        && !r.stateful
                        && !crate::lifecycle::is_terminal(r.state)
                })
                .count();
            let remote: Vec<&InstanceRecord> = instances
                .values()
                .filter(|r| {
                    r.function == function.name
                        && !r.stateful
                        && r.state == InstanceState::Running as i32
                        && self.local(&r.instance_id).is_none()
                        && r.node_id != self.config.node_id
                })
                .collect();
            if !local.is_empty() || !remote.is_empty() {
                // Every local instance is busy: grow the pool in the background. Busy is only
                // known for local instances; a node with none forwards, and the scheduler grows
                // the pool if the calls then queue up where the instances are.
                if !local.is_empty() && (alive as u32) < function.max_instances {
                    let this = Arc::clone(self);
                    let f = function.name.clone();
                    tokio::spawn(async move {
                        if let Err(e) = this.create_one(&f, Duration::from_secs(30)).await {
                            tracing::debug!(function = %f, "scale-up refused: {e}");
                        }
                    });
                }
                if !remote.is_empty() {
                    // Instances elsewhere: spread the overflow over them.
                    let i = self.rr.fetch_add(1, Ordering::Relaxed) % remote.len();
                    return self.forward(remote[i], req).await;
                }
                if pool.waiting.load(Ordering::Relaxed) >= QUEUE_BOUND * local.len() {
                    return fail(
                        ErrorKind::ErrorBusy,
                        format!(
                            "{} has {} calls waiting on this node; try again later",
                            function.name,
                            QUEUE_BOUND * local.len()
                        ),
                    );
                }
                pool.waiting.fetch_add(1, Ordering::Relaxed);
                let timed_out = tokio::select! {
                    _ = &mut freed => false,
                    _ = tokio::time::sleep(RECHECK) => false,
                    _ = tokio::time::sleep_until(deadline) => true,
                };
                pool.waiting.fetch_sub(1, Ordering::Relaxed);
                if timed_out {
                    return fail(
                        ErrorKind::ErrorTimeout,
                        format!(
                            "{} timed out after {timeout:?} waiting for a free instance",
                            function.name
                        ),
                    );
                }
                continue;
            }
            attempt += 1;
            if attempt > 3 {
                break;
            }
            // Cold start: no instance runs anywhere. Deliver to the very instance the master
            // started (waiting for the mirror could see an intermediate state and start another).
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let created = match self.create_one(&function.name, left).await {
                Ok(r) => r,
                Err(e) if e.contains("max_instances") => {
                    // Others are starting the pool's instances: wait for one of them.
                    let mut m = self.instances.subscribe();
                    tokio::select! {
                        _ = m.changed() => {}
                        _ = tokio::time::sleep(RECHECK) => {}
                        _ = tokio::time::sleep_until(deadline) => {}
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return fail(
                            ErrorKind::ErrorTimeout,
                            format!(
                                "{} has no running instance after {timeout:?}",
                                function.name
                            ),
                        );
                    }
                    attempt = attempt.saturating_sub(1);
                    continue;
                }
                Err(e) => {
                    let kind = if e.contains("insufficient resources") {
                        ErrorKind::ErrorInsufficientResources
                    } else if e.contains("not running after") {
                        ErrorKind::ErrorTimeout
                    } else {
                        ErrorKind::ErrorInstanceFatal
                    };
                    return fail(
                        kind,
                        format!("cannot start an instance of {}: {e}", function.name),
                    );
                }
            };
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if let Some(l) = self.local(&created.instance_id) {
                return self.deliver(&l, &function, &req, left).await;
            }
            if created.node_id != self.config.node_id {
                return self.forward(&created, req).await;
            }
            // Started on this node but no longer connected (it exited at once): look again.
            tracing::debug!(attempt, instance = %created.instance_id, "new instance not connected");
        }
        fail(
            ErrorKind::ErrorInternal,
            format!(
                "no running instance of {} found after starting one",
                function.name
            ),
        )
    }

    async fn invoke_instance(
        &self,
        function: &FunctionSpec,
        req: InvokeRequest,
        timeout: Duration,
    ) -> InvokeReply {
        let key = req.instance.clone();
        let local = self.local(&key).or_else(|| {
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
        if let Some(l) = local {
            return self.deliver(&l, function, &req, timeout).await;
        }
        if req.forwarded {
            return fail(
                ErrorKind::ErrorNotFound,
                format!(
                    "instance {key} does not run on node {}",
                    self.config.node_id
                ),
            );
        }
        let instances = self.instances.snapshot();
        let record = instances
            .get(&key)
            .filter(|r| r.function == function.name)
            .or_else(|| {
                instances
                    .values()
                    .filter(|r| r.name == key && r.function == function.name)
                    .max_by_key(|r| (!crate::lifecycle::is_terminal(r.state), r.updated_unix_ms))
            });
        match record {
            None => fail(
                ErrorKind::ErrorNotFound,
                format!("no instance {key:?} of function {}", function.name),
            ),
            Some(r) if r.state == InstanceState::Running as i32 => self.forward(r, req).await,
            Some(r) if r.state == InstanceState::Fatal as i32 => fail(
                ErrorKind::ErrorInstanceFatal,
                format!("instance {} is FATAL: {}", r.instance_id, r.error),
            ),
            Some(r) => fail(
                ErrorKind::ErrorNotFound,
                format!(
                    "instance {} is {}, not RUNNING",
                    r.instance_id,
                    crate::lifecycle::state_name(r.state)
                ),
            ),
        }
    }

    /// One function process's connection, from its hello to its end: registers the instance,
    /// then delivers replies to the calls waiting for them until the socket closes.
    async fn serve_instance(self: Arc<Self>, stream: UnixStream) {
        let (rd, mut wr) = stream.into_split();
        let mut rd = BufReader::with_capacity(BATCH, rd);
        let mut buf = Vec::new();
        let hello = match tokio::time::timeout(
            HELLO_TIMEOUT,
            read_frame::<InstanceMessage>(&mut rd, &mut buf),
        )
        .await
        {
            Ok(Ok(Some(InstanceMessage {
                msg: Some(instance_message::Msg::Hello(h)),
            }))) => h,
            Ok(Ok(Some(_))) => return refuse(&mut wr, "the first frame must be a hello").await,
            Ok(Ok(None)) => return,
            Ok(Err(e)) => return refuse(&mut wr, &format!("bad hello: {e}")).await,
            Err(_) => {
                return refuse(
                    &mut wr,
                    &format!("no hello within {} s", HELLO_TIMEOUT.as_secs()),
                )
                .await
            }
        };
        let (record, function) = match self.instance_and_function(&hello.instance_id).await {
            Ok(rf) => rf,
            Err(why) => {
                tracing::warn!(instance = %hello.instance_id, pid = hello.pid, "refused: {why}");
                return refuse(&mut wr, &why).await;
            }
        };
        let (tx, rx) = mpsc::channel(1024);
        let concurrency = if record.stateful {
            1
        } else {
            function.concurrency.max(1)
        };
        let inst = Arc::new(LocalInstance {
            id: record.instance_id.clone(),
            function: record.function.clone(),
            tx,
            pending: std::sync::Mutex::new(HashMap::new()),
            permits: Semaphore::new(concurrency as usize),
            concurrency,
            waiting: AtomicUsize::new(0),
            last_done: AtomicU64::new(etcd::now_ms()),
            pool: (!record.stateful).then(|| self.pool(&record.function)),
        });
        let config = ProxyMessage {
            msg: Some(proxy_message::Msg::Config(InstanceConfig {
                function: record.function.clone(),
                handler: function.handler.clone(),
                stateful: record.stateful,
                name: record.name.clone(),
            })),
        };
        match frame::to_frame(&config) {
            Ok(f) if wr.write_all(&f).await.is_ok() => {}
            _ => return,
        }
        tokio::spawn(write_frames(wr, rx));
        if let Ok(mut l) = self.locals.write() {
            l.insert(inst.id.clone(), Arc::clone(&inst));
        }
        if let Some(pool) = &inst.pool {
            // Calls waiting for a free instance can take this one.
            pool.freed.notify_waiters();
        }
        tracing::info!(instance = %inst.id, function = %inst.function, pid = hello.pid, "instance connected");
        let mut master = self.master.clone();
        let ev = InstanceEvent {
            instance_id: inst.id.clone(),
            state: InstanceState::Running as i32,
            pid: hello.pid,
            ..Default::default()
        };
        if let Err(e) = master.report_instance(ev).await {
            tracing::warn!(instance = %inst.id, "cannot report RUNNING: {}", e.message());
        }
        loop {
            match read_frame::<InstanceMessage>(&mut rd, &mut buf).await {
                Ok(Some(InstanceMessage {
                    msg: Some(instance_message::Msg::Result(r)),
                })) => {
                    let waiter = inst
                        .pending
                        .lock()
                        .ok()
                        .and_then(|mut p| p.remove(&r.call_id));
                    if let Some(w) = waiter {
                        let _ = w.send(r);
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(instance = %inst.id, "dropping the instance's connection: {e}");
                    break;
                }
            }
        }
        if let Ok(mut l) = self.locals.write() {
            l.remove(&inst.id);
        }
        inst.permits.close();
        // Dropping the senders fails every call still waiting on this instance.
        if let Ok(mut p) = inst.pending.lock() {
            p.clear();
        }
        tracing::info!(instance = %inst.id, "instance disconnected");
    }

    /// The record of a connecting instance and its function's spec, from the mirrors or etcd.
    async fn instance_and_function(
        &self,
        instance_id: &str,
    ) -> Result<(InstanceRecord, FunctionSpec), String> {
        let record = match self.instances.snapshot().get(instance_id).cloned() {
            Some(r) => r,
            None => self
                .meta
                .get::<InstanceRecord>(&etcd::instance_key(instance_id))
                .await
                .map_err(|e| format!("cannot look instance {instance_id} up: {e:#}"))?
                .ok_or_else(|| format!("unknown instance {instance_id}"))?,
        };
        let function = match self.functions.snapshot().get(&record.function).cloned() {
            Some(f) => f,
            None => self
                .meta
                .get::<FunctionSpec>(&etcd::function_key(&record.function))
                .await
                .map_err(|e| format!("cannot look function {} up: {e:#}", record.function))?
                .ok_or_else(|| format!("unknown function {}", record.function))?,
        };
        Ok((record, function))
    }
}

/// Reads one frame from an instance's socket (see [`frame::read`]).
async fn read_frame<M: prost::Message + Default>(
    rd: &mut BufReader<OwnedReadHalf>,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<M>> {
    let mut head = [0u8; 4];
    // A clean close is one between frames: the first byte of a head does not come.
    match rd.read(&mut head[..1]).await? {
        0 => return Ok(None),
        _ => rd.read_exact(&mut head[1..]).await?,
    };
    let len = frame::body_len(head)?;
    buf.clear();
    buf.resize(len, 0);
    rd.read_exact(buf).await?;
    frame::decode(buf).map(Some)
}

/// Tells a connecting process why it is not served, then closes (best effort: it may be gone).
async fn refuse(wr: &mut OwnedWriteHalf, why: &str) {
    let msg = ProxyMessage {
        msg: Some(proxy_message::Msg::Refused(why.to_string())),
    };
    if let Ok(f) = frame::to_frame(&msg) {
        let _ = wr.write_all(&f).await;
    }
}

/// Writes an instance's frames as they come, gathering the small ones that are ready together
/// into one write. Ends when the instance's sender is dropped or its socket breaks.
async fn write_frames(mut wr: OwnedWriteHalf, mut rx: mpsc::Receiver<Vec<u8>>) {
    let mut batch = Vec::with_capacity(BATCH);
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(f) = next.take() {
            if f.len() >= BATCH {
                if !batch.is_empty() && wr.write_all(&batch).await.is_err() {
                    return;
                }
                batch.clear();
                if wr.write_all(&f).await.is_err() {
                    return;
                }
            } else {
                batch.extend_from_slice(&f);
            }
            if batch.len() < BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() && wr.write_all(&batch).await.is_err() {
            return;
        }
        batch.clear();
    }
}

/// Binds the instance socket at `path`: a file left by an earlier proxy is replaced, one that a
/// live proxy answers on is not. Only this user may connect (mode 0600).
fn bind_instance_socket(path: &std::path::Path) -> Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "another proxy serves the instance socket {}; stop it or choose another path",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .map_err(|e| anyhow::anyhow!("cannot replace {}: {e}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| anyhow::anyhow!("cannot restrict {}: {e}", path.display()))?;
    Ok(listener)
}

/// Accepts function processes' connections until `shutdown`.
async fn accept_instances(state: Arc<State>, listener: UnixListener, shutdown: Shutdown) {
    loop {
        tokio::select! {
            conn = listener.accept() => match conn {
                Ok((stream, _)) => {
                    tokio::spawn(Arc::clone(&state).serve_instance(stream));
                }
                Err(e) => {
                    tracing::warn!("instance socket: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.wait() => return,
        }
    }
}

struct Service(Arc<State>);

#[tonic::async_trait]
impl Proxy for Service {
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
        let instances = locals
            .iter()
            .map(|l| {
                let inflight = l
                    .concurrency
                    .saturating_sub(l.permits.available_permits() as u32);
                // A stateless instance counts its function's waiting calls: any of them may
                // be its next.
                let queued = (l.waiting.load(Ordering::Relaxed)
                    + l.pool
                        .as_ref()
                        .map_or(0, |p| p.waiting.load(Ordering::Relaxed)))
                    as u32;
                InstanceLoad {
                    instance_id: l.id.clone(),
                    function: l.function.clone(),
                    inflight,
                    queued,
                    idle_ms: if inflight + queued > 0 {
                        0
                    } else {
                        now.saturating_sub(l.last_done.load(Ordering::Relaxed))
                    },
                }
            })
            .collect();
        Ok(Response::new(LoadReport {
            node_id: self.0.config.node_id.clone(),
            instances,
        }))
    }
}

/// Runs the proxy until `shutdown`; `on_ready` gets the bound address.
pub async fn run(
    config: ProxyConfig,
    shutdown: Shutdown,
    on_ready: impl FnOnce(std::net::SocketAddr),
) -> Result<()> {
    let meta = Meta::connect(&config.etcd_endpoints).await?;
    let instances = Mirror::start(meta.clone(), etcd::INSTANCES).await?;
    let functions = Mirror::start(meta.clone(), etcd::FUNCTIONS).await?;
    let specs = std::sync::Mutex::new((functions.snapshot(), HashMap::new()));
    let master = MasterClient::new(crate::channel(&config.master_address)?);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let addr = listener.local_addr()?;
    let instance_listener = bind_instance_socket(&config.instance_socket)?;
    let instance_socket = config.instance_socket.clone();
    // Bound before announcing readiness, so a busy frontend port fails the start.
    let frontend = match &config.frontend {
        Some((listen, rest)) => Some((
            tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {listen} (frontend): {e}"))?,
            rest.clone(),
        )),
        None => None,
    };
    let state = Arc::new(State {
        config,
        meta,
        master,
        locals: Default::default(),
        instances,
        functions,
        peers: Default::default(),
        next_call: AtomicU64::new(1),
        rr: AtomicUsize::new(0),
        creating: Mutex::new(HashMap::new()),
        pools: Default::default(),
        specs,
    });
    if let Some((listener, rest)) = frontend {
        let st = Arc::clone(&state);
        let upstream = crate::rest::frontend::Upstream::Local(Arc::new(move |req| {
            let st = Arc::clone(&st);
            Box::pin(async move { st.invoke(req).await })
        }));
        let sd = shutdown.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::rest::serve_frontend_on(listener, upstream, rest, sd).await {
                tracing::error!("frontend stopped: {e:#}");
            }
        });
    }
    tokio::spawn(accept_instances(
        Arc::clone(&state),
        instance_listener,
        shutdown.clone(),
    ));
    on_ready(addr);
    let served = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(
            ProxyServer::new(Service(state))
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .serve_with_incoming_shutdown(crate::incoming(listener), shutdown.wait_owned())
        .await;
    let _ = std::fs::remove_file(&instance_socket);
    served?;
    Ok(())
}
