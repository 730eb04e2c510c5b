//! The function-process SDK: a registry of handlers and classes, and the loop that serves the
//! proxy's calls on its instance socket.
//!
//! The agent starts a function executable with the environment that says which instance it is
//! and where its node's proxy and data worker are. [`App::run`] connects to the proxy's instance
//! socket (frames of [`yr_proto::frame`]), says hello with the names it registers, learns from
//! the proxy's configuration which handler (or class) this instance serves, and answers calls
//! until the proxy goes away. [`reply`] writes the answers; [`workers`] runs stateless calls;
//! [`calls`] tracks each call so that the proxy's `CancelCall` (sent when a caller's deadline
//! passes) drops a call that has not started, and ends the process when a stateful call it
//! cancels is already running (see that module for why).
//!
//! The hello carries the instance's secret that the agent put in `YR_INSTANCE_SECRET`; it is
//! taken out of the environment (and its bytes overwritten where `/proc/<pid>/environ` shows
//! them) the first time it is read ([`take_instance_secret`]), so neither the process's children
//! nor other processes of the user read it there.
//!
//! Invariants: a stateless handler may run on several threads at once, never more than the
//! function's concurrency (enforced by the proxy, and by the pool's thread limit here); a
//! stateful instance's methods run one at a time, in the order the proxy delivered them, on one
//! thread that owns the state. A call answered `cancelled` never ran; a stateful call cancelled
//! while running ends the process before anything else is served. A panicking handler fails
//! that call with the panic message; the process keeps serving. A reply's error kind is decided
//! here, in the process that knows it (see [`Failure`]), and travels typed to the caller.

mod calls;
mod reply;
mod workers;

pub use reply::{Failure, Reply};

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use yr_proto::frame;
use yr_proto::{
    instance_message, proxy_message, Call, InstanceHello, InstanceMessage, ProxyMessage,
};

use crate::context::Context;
use crate::error::Error;
use calls::{Calls, OnCancel};
use reply::Replies;
use workers::Workers;

/// The environment variable through which the agent gives a function process its instance's
/// secret (`yr_control::secret::INSTANCE_SECRET_ENV`).
pub const INSTANCE_SECRET_ENV: &str = "YR_INSTANCE_SECRET";

/// The call threads of a stateless instance when the proxy does not say its concurrency (an
/// older proxy): a bound still, so that calls it gave up on cannot grow the threads forever.
const DEFAULT_CALL_THREADS: usize = 256;

/// The exit status of a process that ends because the proxy recycled its instance.
pub const RECYCLED_EXIT: i32 = 75;

/// This function process's instance secret: taken out of the environment on the first call
/// (which the serve loop, and the Python module when it is imported, make before they start
/// threads), then kept here. `None` outside a process started by an agent.
pub fn take_instance_secret() -> Option<String> {
    static SECRET: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    SECRET
        .get_or_init(|| {
            let value = std::env::var(INSTANCE_SECRET_ENV).ok()?;
            scrub_from_environ_block(INSTANCE_SECRET_ENV);
            // Removing a variable races with other threads that read the environment through
            // libc: this runs before the serve loop or the Python module starts threads of ours.
            std::env::remove_var(INSTANCE_SECRET_ENV);
            Some(value)
        })
        .clone()
}

/// Overwrites the value of `key` in place in the environment block the process started with,
/// which is what `/proc/<pid>/environ` shows to other processes of the same user: removing the
/// variable alone leaves its bytes there.
fn scrub_from_environ_block(key: &str) {
    let Ok(name) = std::ffi::CString::new(key) else {
        return;
    };
    // SAFETY: getenv returns null or a pointer to the NUL-terminated value inside the
    // environment entry of `key`, valid until the environment is changed; nothing changes it
    // before the overwrite below (this runs before the process starts threads of its own, see
    // `take_instance_secret`). Overwriting the value's bytes (not its terminator) keeps the
    // entry a valid C string; environment strings live in writable memory (the initial stack,
    // or putenv/setenv buffers).
    unsafe {
        let v = libc::getenv(name.as_ptr());
        if !v.is_null() {
            let len = libc::strlen(v);
            std::ptr::write_bytes(v, b'x', len);
        }
    }
}

/// What a handler returns: the reply's bytes, or an error message for the caller.
pub type HandlerResult = Result<Vec<u8>, String>;

/// A stateful instance: created once per instance, then called method by method, in order.
pub trait Instance: Send {
    /// Runs one method on the instance's state.
    fn call(&mut self, ctx: &Context, method: &str, input: &[u8]) -> HandlerResult;
}

/// A stateful instance as the serve loop drives it: a user's [`Instance`], the runtime's own
/// adapter for `Builder` classes, or another language's instance (the Python package's), any of
/// which can fail a call with a kind other than the function's own error.
pub trait Stateful: Send {
    /// Runs one method.
    fn call(&mut self, ctx: &Context, method: &str, input: &[u8]) -> Reply;
}

struct UserInstance<I>(I);

impl<I: Instance> Stateful for UserInstance<I> {
    fn call(&mut self, ctx: &Context, method: &str, input: &[u8]) -> Reply {
        self.0.call(ctx, method, input).map_err(Failure::function)
    }
}

type Handler = Arc<dyn Fn(&Context, &[u8]) -> Reply + Send + Sync>;
type Factory = Arc<dyn Fn(&Context) -> Result<Box<dyn Stateful>, String> + Send + Sync>;

/// The function process's registry of handlers and classes.
#[derive(Default)]
pub struct App {
    handlers: HashMap<String, Handler>,
    classes: HashMap<String, Factory>,
}

impl App {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// A stateless handler.
    pub fn handler(
        self,
        name: &str,
        f: impl Fn(&Context, &[u8]) -> HandlerResult + Send + Sync + 'static,
    ) -> Self {
        self.typed_handler(name, move |ctx, input| {
            f(ctx, input).map_err(Failure::function)
        })
    }

    /// A stateful class: `make` builds one instance's state when the instance starts.
    pub fn class<I: Instance + 'static>(
        self,
        name: &str,
        make: impl Fn(&Context) -> Result<I, String> + Send + Sync + 'static,
    ) -> Self {
        self.typed_class(name, move |ctx| {
            make(ctx).map(|i| Box::new(UserInstance(i)) as Box<dyn Stateful>)
        })
    }

    /// A stateless handler whose failures carry their kind.
    pub fn typed_handler(
        mut self,
        name: &str,
        f: impl Fn(&Context, &[u8]) -> Reply + Send + Sync + 'static,
    ) -> Self {
        self.handlers.insert(name.to_string(), Arc::new(f));
        self
    }

    /// A stateful class whose calls' failures carry their kind.
    pub fn typed_class(
        mut self,
        name: &str,
        make: impl Fn(&Context) -> Result<Box<dyn Stateful>, String> + Send + Sync + 'static,
    ) -> Self {
        self.classes.insert(name.to_string(), Arc::new(make));
        self
    }

    /// Serves calls until the proxy closes the socket; exits the process with an error message
    /// if the environment or the connection is wrong (the agent reports it with stderr's tail).
    pub fn run(self) -> ! {
        let code = match self.serve() {
            Ok(()) => 0,
            Err(e @ Error::Recycled(_)) => {
                eprintln!("yr function process: {e}");
                RECYCLED_EXIT
            }
            Err(e) => {
                eprintln!("yr function process: {e}");
                1
            }
        };
        std::process::exit(code)
    }

    /// Serves calls until the proxy closes the socket or says to shut down, then returns (for a
    /// runtime that has work of its own to do at stop, such as a `pre_stop` hook); an error says
    /// what in the environment or the connection is wrong. [`Error::Recycled`] says the process
    /// must end now, without a stop hook: a call may still be running in user code, and the
    /// instance's state may hold its effect.
    pub fn serve(self) -> Result<(), Error> {
        let env = |k: &'static str| std::env::var(k).map_err(|_| Error::NotStartedByAgent(k));
        let instance_id = env("YR_INSTANCE_ID")?;
        let socket_path = env("YR_PROXY_SOCKET")?;
        let proxy_address = env("YR_PROXY_ADDRESS")?;
        let secret = take_instance_secret().ok_or(Error::NotStartedByAgent(INSTANCE_SECRET_ENV))?;
        let data_socket = std::env::var("YR_DATA_SOCKET").unwrap_or_default();
        let socket = UnixStream::connect(&socket_path).map_err(|e| {
            Error::InstanceSocket(format!(
                "cannot reach the proxy's instance socket {socket_path}: {e}"
            ))
        })?;
        let mut names: Vec<String> = self.handlers.keys().cloned().collect();
        names.extend(self.classes.keys().cloned());
        let hello = InstanceMessage {
            msg: Some(instance_message::Msg::Hello(InstanceHello {
                instance_id: instance_id.clone(),
                handlers: names,
                pid: std::process::id(),
                secret,
                cancels: true,
            })),
        };
        let greet = |e: std::io::Error| {
            Error::InstanceSocket(format!("cannot greet the proxy at {socket_path}: {e}"))
        };
        (&socket)
            .write_all(&frame::to_frame(&hello).map_err(greet)?)
            .map_err(greet)?;
        let replies = Arc::new(Replies::new(socket.try_clone().map_err(greet)?));
        let mut input = std::io::BufReader::with_capacity(64 << 10, socket);
        let mut buf = Vec::new();
        let mut next = || -> Result<Option<proxy_message::Msg>, Error> {
            match frame::read::<ProxyMessage>(&mut input, &mut buf) {
                Ok(m) => Ok(m.and_then(|m| m.msg)),
                Err(e) => Err(Error::InstanceSocket(format!(
                    "the proxy connection broke: {e}"
                ))),
            }
        };
        let config = match next()? {
            Some(proxy_message::Msg::Config(c)) => c,
            Some(proxy_message::Msg::Refused(why)) => {
                return Err(Error::InstanceSocket(format!(
                    "the proxy refused instance {instance_id}: {why}"
                )))
            }
            None => {
                return Err(Error::InstanceSocket(format!(
                    "the proxy closed the connection before configuring instance {instance_id}"
                )))
            }
            Some(other) => {
                return Err(Error::InstanceSocket(format!(
                    "expected the instance's configuration, got {other:?}"
                )))
            }
        };
        let ctx = Arc::new(Context::new(
            instance_id,
            config.function.clone(),
            data_socket,
            proxy_address,
        ));
        let calls = Arc::new(Calls::default());
        // A stateful instance: one thread owns the state and takes calls in order.
        let stateful_tx = if config.stateful {
            let factory =
                self.classes
                    .get(&config.handler)
                    .cloned()
                    .ok_or_else(|| Error::NotRegistered {
                        what: "class",
                        name: config.handler.clone(),
                        known: sorted(self.classes.keys()),
                    })?;
            let (tx, rx) = std::sync::mpsc::channel::<Call>();
            let ctx2 = Arc::clone(&ctx);
            let out = Arc::clone(&replies);
            let held = Arc::clone(&calls);
            let mut state = factory(&ctx).map_err(|message| Error::InstanceInit {
                class: config.handler.clone(),
                message,
            })?;
            std::thread::Builder::new()
                .name("yr-instance".into())
                .spawn(move || {
                    for call in rx {
                        if !held.begin(call.call_id) {
                            continue; // cancelled before it started, and answered so
                        }
                        let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
                            state.call(&ctx2, &call.method, &call.payload)
                        }))
                        .unwrap_or_else(|p| Err(Failure::function(panic_message(p))));
                        held.finished(call.call_id);
                        out.send(call.call_id, r);
                    }
                })
                .map_err(|e| Error::Threads(format!("cannot start the instance's thread: {e}")))?;
            Some(tx)
        } else {
            if !self.handlers.contains_key(&config.handler) {
                return Err(Error::NotRegistered {
                    what: "handler",
                    name: config.handler.clone(),
                    known: sorted(self.handlers.keys()),
                });
            }
            None
        };
        let workers = Workers::new(match config.concurrency {
            0 => DEFAULT_CALL_THREADS,
            n => n as usize,
        });
        while let Some(msg) = next()? {
            match msg {
                proxy_message::Msg::Call(call) => {
                    calls.arrived(call.call_id);
                    if let Some(tx) = &stateful_tx {
                        tx.send(call).map_err(|_| {
                            Error::Threads("the instance thread has stopped".into())
                        })?;
                        continue;
                    }
                    let handler = self.handlers.get(&call.handler).cloned();
                    let ctx = Arc::clone(&ctx);
                    let out = Arc::clone(&replies);
                    let held = Arc::clone(&calls);
                    workers.run(Box::new(move || {
                        if !held.begin(call.call_id) {
                            return; // cancelled before it started, and answered so
                        }
                        let r = match handler {
                            Some(h) => std::panic::catch_unwind(AssertUnwindSafe(|| {
                                h(&ctx, &call.payload)
                            }))
                            .unwrap_or_else(|p| Err(Failure::function(panic_message(p)))),
                            None => {
                                Err(Failure::function(format!("no handler {:?}", call.handler)))
                            }
                        };
                        held.finished(call.call_id);
                        out.send(call.call_id, r);
                    }))?;
                }
                proxy_message::Msg::Cancel(c) => match calls.cancel(c.call_id, config.stateful) {
                    OnCancel::Drop => replies.cancelled(c.call_id),
                    OnCancel::Recycle => {
                        return Err(Error::Recycled(format!(
                            "call {} timed out while running in stateful instance {}; the \
                                 process ends so that its effect never shows, and the instance \
                                 restarts",
                            c.call_id,
                            ctx.instance_id()
                        )))
                    }
                    OnCancel::LetFinish | OnCancel::Ignore => {}
                },
                proxy_message::Msg::Recycle(why) => return Err(Error::Recycled(why)),
                proxy_message::Msg::Shutdown(_) => return Ok(()),
                proxy_message::Msg::Refused(why) => {
                    return Err(Error::InstanceSocket(format!(
                        "the proxy dropped this instance: {why}"
                    )))
                }
                proxy_message::Msg::Config(_) => {}
            }
        }
        Ok(())
    }
}

fn sorted<'a>(names: impl Iterator<Item = &'a String>) -> Vec<String> {
    let mut v: Vec<String> = names.cloned().collect();
    v.sort();
    v
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    let msg = p
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    format!("handler panicked: {msg}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_instance_secret_is_taken_out_of_the_environment_once() {
        // The only test of this process that touches the variable (it is process-wide).
        std::env::set_var(INSTANCE_SECRET_ENV, "abc123");
        assert_eq!(take_instance_secret().as_deref(), Some("abc123"));
        assert!(
            std::env::var_os(INSTANCE_SECRET_ENV).is_none(),
            "still in the environment"
        );
        assert_eq!(
            take_instance_secret().as_deref(),
            Some("abc123"),
            "kept for the hello"
        );
    }

    #[test]
    fn a_panic_becomes_the_calls_error_message() {
        let p = std::panic::catch_unwind(|| panic!("boom {}", 7)).expect_err("panics");
        assert_eq!(panic_message(p), "handler panicked: boom 7");
        let p = std::panic::catch_unwind(|| std::panic::panic_any(3u8)).expect_err("panics");
        assert_eq!(panic_message(p), "handler panicked: unknown panic");
    }
}
