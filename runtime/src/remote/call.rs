//! Driver calls: building a call ([`Task`]), deploying the function it names on first use,
//! sending it to the right proxy, retrying what the platform failed to run, and calls on named
//! stateful instances ([`InstanceHandle`]).
//!
//! Invariants: a function's own error, a lost argument object and an unknown function are never
//! retried; only what the platform failed to run is, up to the call's retries (stateless calls
//! only). What a failed reply means is decided from its typed `error_kind` by
//! [`reply_error`], a pure function, never from its message. Calls made through one instance
//! handle are sent one at a time, in submission order.

use prost::Message;
use serde::Serialize;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use yr_datastore::ObjectId;
use yr_proto::proxy_client::ProxyClient;
use yr_proto::{
    task_arg, AffinityKind, CreateInstanceRequest, DeployRequest, Empty, ErrorKind, FunctionSpec,
    InstanceRef, InvokeRequest, LabelAffinity, ObjectRefMsg, Resources, SchedulingOptions, TaskArg,
    TaskArgs,
};

use super::codec::decode_result;
use super::connect::{connect, proxy_client, Driver, Yr};
use super::object::{CallInfo, ObjectRef, RefState};
use crate::error::Error;

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
    /// Hash of what decides a function's pool (not per-call settings), with the code stamp.
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
    /// `function` is a deployed name as it is (see [`Yr::call`]), not a registered one.
    deployed: bool,
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

    /// Raw bytes inline (read with [`Args::bytes`](super::Args::bytes)).
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
            None if self.deployed => (self.function.clone(), String::new()),
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
        let stateless = instance.is_none();
        let function_name = label.clone();
        let task = d.runtime().spawn(async move {
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
            cell.settle(r);
        });
        if stateless {
            out.set_call(task.abort_handle(), function_name);
        }
        Ok(out)
    }
}

/// What a failed reply of kind `kind` means for the call `label`: the error to report, and
/// whether another attempt may succeed.
fn reply_error(label: &str, kind: ErrorKind, message: String) -> (Error, bool) {
    let function = label.to_string();
    match kind {
        ErrorKind::ErrorFunction => (Error::Task { function, message }, false),
        ErrorKind::ErrorObjectLost => (Error::ObjectLost(format!("{label}: {message}")), false),
        ErrorKind::ErrorNotFound => (
            Error::Platform {
                function,
                message,
                kind,
            },
            false,
        ),
        _ => (
            Error::Platform {
                function,
                message,
                kind,
            },
            true,
        ),
    }
}

/// Whether an instance in `state` is gone for good (exited or given up on).
fn lifecycle_ended(state: i32) -> bool {
    matches!(
        yr_proto::InstanceState::try_from(state),
        Ok(yr_proto::InstanceState::Exited | yr_proto::InstanceState::Fatal)
    )
}

/// The kind of a call the proxy refused with a gRPC status rather than a reply.
fn status_kind(code: tonic::Code) -> ErrorKind {
    match code {
        tonic::Code::NotFound => ErrorKind::ErrorNotFound,
        tonic::Code::DeadlineExceeded => ErrorKind::ErrorTimeout,
        tonic::Code::Unavailable => ErrorKind::ErrorUnavailable,
        tonic::Code::ResourceExhausted => ErrorKind::ErrorInsufficientResources,
        tonic::Code::InvalidArgument => ErrorKind::ErrorInvalidArgument,
        _ => ErrorKind::ErrorInternal,
    }
}

impl Driver {
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
        self.deploy(spec, function)?;
        Ok(name)
    }

    /// Deploys `spec` unless this driver already has; `label` names it in errors.
    fn deploy(&self, spec: FunctionSpec, label: &str) -> Result<(), Error> {
        let name = spec.name.clone();
        if self.deployed.lock().contains(&name) {
            return Ok(());
        }
        let mut master = self.master.clone();
        self.block_on(master.deploy(DeployRequest {
            spec: Some(spec),
            ..Default::default()
        }))?
        .map_err(|e| Error::Deploy(format!("deploying {label}: {}", e.message())))?;
        self.deployed.lock().insert(name);
        Ok(())
    }

    /// Creates (or finds) the stateful instance `name` of the deployed `function`; `label` (the
    /// class) names it in errors.
    fn create_named(&self, function: String, name: &str, label: &str) -> Result<(), Error> {
        let mut master = self.master.clone();
        self.block_on(master.create_instance(CreateInstanceRequest {
            function,
            name: name.to_string(),
            stateful: true,
            wait_ms: 60_000,
            ..Default::default()
        }))?
        .map(|_| ())
        .map_err(|e| Error::Deploy(format!("creating {label} {name:?}: {}", e.message())))
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
        for a in args.iter() {
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
                    // The argument's own failure is this call's: the caller sees what went
                    // wrong first (a remote exception stays a remote exception).
                    RefState::Failed(e) => return Err(e),
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
                        kind: status_kind(s.code()),
                    });
                }
            };
            let kind = ErrorKind::try_from(reply.error_kind).unwrap_or(ErrorKind::ErrorInternal);
            if kind == ErrorKind::ErrorNone {
                return decode_result(label, &reply.payload);
            }
            match reply_error(label, kind, reply.error) {
                (e, true) if attempt < retries => {
                    attempt += 1;
                    tracing::debug!(function = label, attempt, "retrying: {e}");
                }
                (e, _) => return Err(e),
            }
        }
    }
}

/// A stateful instance created by [`Yr::instance`].
pub struct InstanceHandle {
    yr: Yr,
    function: String,
    name: String,
    order: Arc<Sequencer>,
}

impl InstanceHandle {
    /// A call of `method` on this instance. Calls made through one handle
    /// run one at a time, in the order they were submitted.
    pub fn method(&self, method: &str) -> Task<'_> {
        Task {
            yr: &self.yr,
            function: self.function.clone(),
            instance: Some((self.name.clone(), method.to_string())),
            args: Vec::new(),
            opts: Options::default(),
            encode_error: None,
            order: Some(Arc::clone(&self.order)),
            deployed: true,
        }
    }

    /// The instance's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Stops the instance; one that is already gone (it died, or was stopped) is not an error.
    pub fn kill(self) -> Result<(), Error> {
        let mut master = self.yr.d.master.clone();
        match self.yr.d.block_on(master.kill_instance(InstanceRef {
            name: self.name.clone(),
            ..Default::default()
        }))? {
            Ok(_) => Ok(()),
            Err(e) if e.code() == tonic::Code::NotFound => Ok(()),
            Err(e) => Err(Error::Deploy(format!(
                "killing {}: {}",
                self.name,
                e.message()
            ))),
        }
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
            deployed: false,
        }
    }

    /// A call of `function` as deployed (by [`Yr::deploy`], or through the meta service), not
    /// of a function this program registers: for drivers whose code is not this executable
    /// (the Python package's).
    pub fn call(&self, function: &str) -> Task<'_> {
        Task {
            yr: self,
            function: function.to_string(),
            instance: None,
            args: Vec::new(),
            opts: Options::default(),
            encode_error: None,
            order: None,
            deployed: true,
        }
    }

    /// Deploys `spec` unless this driver already has (a function's name must change when its
    /// code or pool settings do: a second deploy of a known name is taken as the same one).
    pub fn deploy(&self, spec: FunctionSpec) -> Result<(), Error> {
        let name = spec.name.clone();
        self.d.deploy(spec, &name)
    }

    /// Deletes the deployed function `name` and stops its instances; one that is already gone
    /// is not an error.
    pub fn undeploy(&self, name: &str) -> Result<(), Error> {
        self.d.deployed.lock().remove(name);
        let mut master = self.d.master.clone();
        match self
            .d
            .block_on(master.delete_function(yr_proto::FunctionRef {
                name: name.to_string(),
            }))? {
            Ok(_) => Ok(()),
            Err(e) if e.code() == tonic::Code::NotFound => Ok(()),
            Err(e) => Err(Error::Deploy(format!("deleting {name}: {}", e.message()))),
        }
    }

    /// Creates (or finds) the stateful instance `name` of the deployed function `function`.
    pub fn create_instance(&self, function: &str, name: &str) -> Result<InstanceHandle, Error> {
        self.d.create_named(function.to_string(), name, function)?;
        Ok(self.handle(function.to_string(), name))
    }

    /// The live stateful instance named `name`, if the cluster has one, with its function.
    pub fn find_instance(&self, name: &str) -> Result<Option<InstanceHandle>, Error> {
        Ok(self
            .live_stateful()?
            .into_iter()
            .find(|i| i.name == name)
            .map(|i| self.handle(i.function, name)))
    }

    /// The names of the cluster's live stateful instances, sorted (each once); one being
    /// stopped (EXITING, as right after a kill) is no longer listed.
    pub fn instance_names(&self) -> Result<Vec<String>, Error> {
        let mut names: Vec<String> = self
            .live_stateful()?
            .into_iter()
            .filter(|i| i.state != yr_proto::InstanceState::Exiting as i32)
            .map(|i| i.name)
            .filter(|n| !n.is_empty())
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// The records of the cluster's stateful instances that have not ended.
    fn live_stateful(&self) -> Result<Vec<yr_proto::InstanceRecord>, Error> {
        let mut master = self.d.master.clone();
        let status = self
            .d
            .block_on(master.status(Empty {}))?
            .map_err(|e| Error::Connect(format!("cluster status: {}", e.message())))?
            .into_inner();
        Ok(status
            .instances
            .into_iter()
            .filter(|i| i.stateful && !lifecycle_ended(i.state))
            .collect())
    }

    /// A handle on the instance `name` of `function`, with calls in submission order.
    fn handle(&self, function: String, name: &str) -> InstanceHandle {
        InstanceHandle {
            yr: self.clone(),
            function,
            name: name.to_string(),
            order: Arc::default(),
        }
    }

    /// Creates (or finds) the named stateful instance of `class`.
    pub fn instance(
        &self,
        class: &str,
        name: &str,
        opts: Options,
    ) -> Result<InstanceHandle, Error> {
        let function = self.d.variant(class, &opts)?;
        self.d.create_named(function.clone(), name, class)?;
        Ok(self.handle(function, name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn a_failed_reply_is_judged_by_its_kind_alone() {
        let kind = |e: &Error| match e {
            Error::Task { .. } => "Task",
            Error::ObjectLost(_) => "ObjectLost",
            Error::Platform { .. } => "Platform",
            _ => "other",
        };
        // (kind on the wire, error the driver reports, retried?)
        let table = [
            (ErrorKind::ErrorFunction, "Task", false),
            (ErrorKind::ErrorObjectLost, "ObjectLost", false),
            (ErrorKind::ErrorNotFound, "Platform", false),
            (ErrorKind::ErrorInsufficientResources, "Platform", true),
            (ErrorKind::ErrorTimeout, "Platform", true),
            (ErrorKind::ErrorBusy, "Platform", true),
            (ErrorKind::ErrorInstanceFatal, "Platform", true),
            (ErrorKind::ErrorInternal, "Platform", true),
            (ErrorKind::ErrorMaxInstances, "Platform", true),
            (ErrorKind::ErrorUnavailable, "Platform", true),
            (ErrorKind::ErrorInvalidArgument, "Platform", true),
        ];
        for (wire, want, retried) in table {
            // The same message under every kind: only the kind decides.
            let (e, again) = reply_error("f", wire, "object x is lost: y".into());
            assert_eq!((kind(&e), again), (want, retried), "{wire:?}");
        }
        let (e, _) = reply_error("f", ErrorKind::ErrorObjectLost, "object x is lost".into());
        assert_eq!(e.to_string(), "f: object x is lost");
        let (e, _) = reply_error("f", ErrorKind::ErrorFunction, "boom".into());
        assert_eq!(e.to_string(), "f failed: boom");
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
