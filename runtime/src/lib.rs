//! The Rust runtime SDK: what a function process links to serve calls.
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
//! Invariants: a stateless handler may run on several threads at once (the function's
//! concurrency, enforced by the proxy); a stateful instance's methods run one at a time, in the
//! order the proxy delivered them, on one thread that owns the state. A panicking handler fails
//! that call with the panic message; the process keeps serving.

pub mod remote;
pub mod session;
pub use remote::{
    Actor, Args, Builder, Bytes, CallInfo, DriverObject, Error, InstanceHandle, NewObject,
    NodeInfo, ObjectRef, Options, Task, TaskContext, Value, Yr,
};

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, OnceLock};

use std::io::Write;
use std::os::unix::net::UnixStream;

use yr_proto::frame;
use yr_proto::proxy_client::ProxyClient;
use yr_proto::*;

/// What a handler returns: the reply's bytes, or an error message for the caller.
pub type HandlerResult = Result<Vec<u8>, String>;

type Handler = Arc<dyn Fn(&Context, &[u8]) -> HandlerResult + Send + Sync>;
type Factory = Arc<dyn Fn(&Context) -> Result<Box<dyn Instance>, String> + Send + Sync>;

/// A stateful instance: created once per instance, then called method by method, in order.
pub trait Instance: Send {
    fn call(&mut self, ctx: &Context, method: &str, input: &[u8]) -> HandlerResult;
}

/// What a handler can reach: its identity, the node's data worker, other functions.
pub struct Context {
    instance_id: String,
    function: String,
    data_socket: String,
    store: OnceLock<Result<yr_datastore::client::Client, String>>,
    proxy_address: String,
    /// A runtime and a gRPC client of the proxy, made on the first [`Context::invoke`]: a
    /// function that calls no other function runs no async machinery at all.
    invoker: OnceLock<Result<Invoker, String>>,
}

struct Invoker {
    rt: tokio::runtime::Runtime,
    proxy: ProxyClient<tonic::transport::Channel>,
}

impl Context {
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    pub fn function(&self) -> &str {
        &self.function
    }

    /// The node's data worker: `put` once, `get` zero-copy views.
    pub fn store(&self) -> Result<&yr_datastore::client::Client, String> {
        self.store
            .get_or_init(|| {
                yr_datastore::client::Client::connect_named(&self.data_socket, &self.instance_id)
                    .map_err(|e| format!("data worker at {}: {e}", self.data_socket))
            })
            .as_ref()
            .map_err(|e| e.clone())
    }

    fn invoker(&self) -> Result<&Invoker, String> {
        self.invoker
            .get_or_init(|| {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("yr-invoke")
                    .enable_all()
                    .build()
                    .map_err(|e| format!("cannot start the invocation runtime: {e}"))?;
                let endpoint = tonic::transport::Endpoint::from_shared(format!(
                    "http://{}",
                    self.proxy_address
                ))
                .map_err(|e| format!("proxy address {:?}: {e}", self.proxy_address))?
                .tcp_nodelay(true);
                // Connects on first use, inside the runtime.
                let channel = {
                    let _in_rt = rt.enter();
                    endpoint.connect_lazy()
                };
                let proxy = ProxyClient::new(channel)
                    .max_decoding_message_size(frame::MAX_PAYLOAD + (1 << 20))
                    .max_encoding_message_size(frame::MAX_PAYLOAD + (1 << 20));
                Ok(Invoker { rt, proxy })
            })
            .as_ref()
            .map_err(|e| e.clone())
    }

    /// Calls another function (any instance) and waits for its reply.
    pub fn invoke(&self, function: &str, payload: &[u8]) -> HandlerResult {
        let invoker = self.invoker()?;
        let mut proxy = invoker.proxy.clone();
        let req = InvokeRequest {
            function: function.to_string(),
            payload: prost::bytes::Bytes::copy_from_slice(payload),
            ..Default::default()
        };
        let r = invoker
            .rt
            .block_on(proxy.invoke(req))
            .map_err(|e| format!("invoke {function}: {}", e.message()))?
            .into_inner();
        if r.error_kind == ErrorKind::ErrorNone as i32 {
            Ok(r.payload)
        } else {
            Err(r.error)
        }
    }
}

/// The function process's registry of handlers and classes.
#[derive(Default)]
pub struct App {
    handlers: HashMap<String, Handler>,
    classes: HashMap<String, Factory>,
}

/// The proxy's end of the instance socket, shared by the threads that send replies. A reply is
/// written by the thread that computed it, whole, under the lock: no hand-off to a writer
/// thread (each hand-off is a wake-up), and frames never interleave.
struct Replies {
    socket: parking_lot::Mutex<UnixStream>,
}

impl Replies {
    /// Sends a call's outcome. A reply over the frame limit becomes an error reply saying so;
    /// a broken socket is left to the reading loop, which ends the process when it sees it.
    fn send(&self, call_id: u64, r: HandlerResult) {
        let (payload, error) = match r {
            Ok(p) if p.len() > frame::MAX_PAYLOAD => (
                Vec::new(),
                format!(
                    "the reply of {} bytes is over the {}-byte limit; put large results in the \
                     data worker and return their IDs",
                    p.len(),
                    frame::MAX_PAYLOAD
                ),
            ),
            Ok(p) => (p, String::new()),
            Err(e) => (Vec::new(), if e.is_empty() { "error".into() } else { e }),
        };
        let msg = InstanceMessage {
            msg: Some(instance_message::Msg::Result(CallResult {
                call_id,
                payload,
                error,
            })),
        };
        let mut out = Vec::new();
        if let Err(e) = frame::encode(&msg, &mut out) {
            eprintln!("yr function process: cannot encode the reply to call {call_id}: {e}");
            return;
        }
        let _ = self.socket.lock().write_all(&out);
    }
}

impl App {
    pub fn new() -> Self {
        Self::default()
    }

    /// A stateless handler.
    pub fn handler(
        mut self,
        name: &str,
        f: impl Fn(&Context, &[u8]) -> HandlerResult + Send + Sync + 'static,
    ) -> Self {
        self.handlers.insert(name.to_string(), Arc::new(f));
        self
    }

    /// A stateful class: `make` builds one instance's state when the instance starts.
    pub fn class<I: Instance + 'static>(
        mut self,
        name: &str,
        make: impl Fn(&Context) -> Result<I, String> + Send + Sync + 'static,
    ) -> Self {
        self.classes.insert(
            name.to_string(),
            Arc::new(move |ctx| make(ctx).map(|i| Box::new(i) as Box<dyn Instance>)),
        );
        self
    }

    /// Serves calls until the proxy closes the socket; exits the process with an error message
    /// if the environment or the connection is wrong (the agent reports it with stderr's tail).
    pub fn run(self) -> ! {
        let code = match self.serve() {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("yr function process: {e:#}");
                1
            }
        };
        std::process::exit(code)
    }

    fn serve(self) -> anyhow::Result<()> {
        let env = |k: &str| {
            std::env::var(k).map_err(|_| {
                anyhow::anyhow!("{k} is not set: function processes are started by a yr agent")
            })
        };
        let instance_id = env("YR_INSTANCE_ID")?;
        let socket_path = env("YR_PROXY_SOCKET")?;
        let proxy_address = env("YR_PROXY_ADDRESS")?;
        let data_socket = std::env::var("YR_DATA_SOCKET").unwrap_or_default();
        let socket = UnixStream::connect(&socket_path).map_err(|e| {
            anyhow::anyhow!("cannot reach the proxy's instance socket {socket_path}: {e}")
        })?;
        let mut names: Vec<String> = self.handlers.keys().cloned().collect();
        names.extend(self.classes.keys().cloned());
        let hello = InstanceMessage {
            msg: Some(instance_message::Msg::Hello(InstanceHello {
                instance_id: instance_id.clone(),
                handlers: names,
                pid: std::process::id(),
            })),
        };
        (&socket)
            .write_all(&frame::to_frame(&hello)?)
            .map_err(|e| anyhow::anyhow!("cannot greet the proxy at {socket_path}: {e}"))?;
        let replies = Arc::new(Replies {
            socket: parking_lot::Mutex::new(socket.try_clone()?),
        });
        let mut input = std::io::BufReader::with_capacity(64 << 10, socket);
        let mut buf = Vec::new();
        let mut next = || -> anyhow::Result<Option<proxy_message::Msg>> {
            match frame::read::<ProxyMessage>(&mut input, &mut buf) {
                Ok(m) => Ok(m.and_then(|m| m.msg)),
                Err(e) => anyhow::bail!("the proxy connection broke: {e}"),
            }
        };
        let config = match next()? {
            Some(proxy_message::Msg::Config(c)) => c,
            Some(proxy_message::Msg::Refused(why)) => {
                anyhow::bail!("the proxy refused instance {instance_id}: {why}")
            }
            None => anyhow::bail!(
                "the proxy closed the connection before configuring instance {instance_id}"
            ),
            Some(other) => anyhow::bail!("expected the instance's configuration, got {other:?}"),
        };
        let ctx = Arc::new(Context {
            instance_id,
            function: config.function.clone(),
            data_socket,
            store: OnceLock::new(),
            proxy_address,
            invoker: OnceLock::new(),
        });
        // A stateful instance: one thread owns the state and takes calls in order.
        let stateful_tx = if config.stateful {
            let factory = self.classes.get(&config.handler).cloned().ok_or_else(|| {
                anyhow::anyhow!(
                    "no class {:?} registered (this executable has {:?})",
                    config.handler,
                    self.classes.keys().collect::<Vec<_>>()
                )
            })?;
            let (tx, rx) = std::sync::mpsc::channel::<Call>();
            let ctx2 = Arc::clone(&ctx);
            let out = Arc::clone(&replies);
            let mut state = factory(&ctx).map_err(|e| {
                anyhow::anyhow!("creating the {} instance failed: {e}", config.handler)
            })?;
            std::thread::Builder::new()
                .name("yr-instance".into())
                .spawn(move || {
                    for call in rx {
                        let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
                            state.call(&ctx2, &call.method, &call.payload)
                        }))
                        .unwrap_or_else(|p| Err(panic_message(p)));
                        out.send(call.call_id, r);
                    }
                })?;
            Some(tx)
        } else {
            if !self.handlers.contains_key(&config.handler) {
                anyhow::bail!(
                    "no handler {:?} registered (this executable has {:?})",
                    config.handler,
                    self.handlers.keys().collect::<Vec<_>>()
                );
            }
            None
        };
        let workers = Workers::new();
        while let Some(msg) = next()? {
            match msg {
                proxy_message::Msg::Call(call) => {
                    if let Some(tx) = &stateful_tx {
                        tx.send(call)
                            .map_err(|_| anyhow::anyhow!("the instance thread has stopped"))?;
                        continue;
                    }
                    let handler = self.handlers.get(&call.handler).cloned();
                    let ctx = Arc::clone(&ctx);
                    let out = Arc::clone(&replies);
                    workers.run(Box::new(move || {
                        let r = match handler {
                            Some(h) => std::panic::catch_unwind(AssertUnwindSafe(|| {
                                h(&ctx, &call.payload)
                            }))
                            .unwrap_or_else(|p| Err(panic_message(p))),
                            None => Err(format!("no handler {:?}", call.handler)),
                        };
                        out.send(call.call_id, r);
                    }))?;
                }
                proxy_message::Msg::Shutdown(_) => return Ok(()),
                proxy_message::Msg::Refused(why) => {
                    anyhow::bail!("the proxy dropped this instance: {why}")
                }
                proxy_message::Msg::Config(_) => {}
            }
        }
        Ok(())
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// The threads that run stateless calls. A call goes to an idle thread through a channel whose
/// receivers spin briefly before sleeping, so under load a thread picks the next call up without
/// a sleep and wake (measured: handing each call to `spawn_blocking` cost about four context
/// switches per call). A thread is added whenever a call finds none idle, so calls that block
/// never wait for each other (the proxy bounds how many run at once: the function's concurrency).
struct Workers {
    tx: crossbeam::channel::Sender<Job>,
    rx: crossbeam::channel::Receiver<Job>,
    idle: Arc<std::sync::atomic::AtomicUsize>,
}

impl Workers {
    fn new() -> Workers {
        let (tx, rx) = crossbeam::channel::unbounded();
        Workers {
            tx,
            rx,
            idle: Arc::default(),
        }
    }

    fn run(&self, job: Job) -> anyhow::Result<()> {
        use std::sync::atomic::Ordering;
        // Claim an idle thread; without one, start another.
        let claimed = self
            .idle
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok();
        if !claimed {
            let rx = self.rx.clone();
            let idle = Arc::clone(&self.idle);
            std::thread::Builder::new()
                .name("yr-call".into())
                .spawn(move || {
                    // Ends when the instance stops (the sender is dropped).
                    while let Ok(job) = rx.recv() {
                        job();
                        idle.fetch_add(1, Ordering::AcqRel);
                    }
                })?;
        }
        self.tx
            .send(job)
            .map_err(|_| anyhow::anyhow!("the call threads have stopped"))
    }
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    let msg = p
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    format!("handler panicked: {msg}")
}
