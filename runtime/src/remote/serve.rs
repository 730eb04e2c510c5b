//! Serving: the function-process side of a [`Builder`](super::Builder) program. Each
//! registered function and class becomes a handler of an [`App`](crate::App) whose calls
//! decode their arguments, run the function and encode its result.
//!
//! Invariants: object arguments are read in place from this node's data worker (fetched from
//! their node first when they live elsewhere) and stay pinned until the function returns. A
//! failure is the function's own error unless it is known to be something else: an argument
//! whose only node is gone fails the call as `ErrorObjectLost`, decided here from the data
//! worker's typed code, so the driver can report [`Error::ObjectLost`](crate::Error::ObjectLost)
//! without reading the message.

use prost::Message;
use std::sync::Arc;
use std::time::{Duration, Instant};
use yr_datastore::{Client, ErrorCode, ObjectBuilder};
use yr_proto::{task_arg, task_result, ErrorKind, ObjectRefMsg, TaskArgs, TaskResult};

use super::codec::{object_id, ArgData, Args, Value};
use super::{Builder, INLINE_RESULT};
use crate::app::{App, Failure, Reply, Stateful};
use crate::context::Context;

/// How long a function process waits for an argument's bytes.
const ARG_FETCH_TIMEOUT: Duration = Duration::from_secs(600);

/// A function body: arguments in, a value out (or an error message for the caller).
pub type TaskFn = Arc<dyn Fn(&TaskContext, &Args) -> Result<Value, String> + Send + Sync>;
/// A class's constructor.
pub(super) type ClassFn = Arc<dyn Fn(&TaskContext) -> Result<Box<dyn Actor>, String> + Send + Sync>;

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

/// Argument `i` could not be fetched. A lost object keeps its kind, so the caller learns it is
/// lost rather than that the function failed.
fn arg_failure(i: usize, e: yr_datastore::Error) -> Failure {
    let kind = match e.code() {
        Some(ErrorCode::ObjectLost) => ErrorKind::ErrorObjectLost,
        _ => ErrorKind::ErrorFunction,
    };
    Failure {
        kind,
        message: format!("argument {i}: {e}"),
    }
}

/// A call's arguments as a function process receives them: decoded from the call's payload, each
/// object argument fetched into this node's data worker (pulled from its node first when it lives
/// elsewhere) and held as a pinned, zero-copy view. Returns them with how long the fetches took.
///
/// This is the first half of a task for runtimes in other languages (the Python package's
/// function processes); [`task_result`] is the second.
pub fn task_args(ctx: &Context, payload: &[u8]) -> Result<(Vec<ArgData>, Duration), Failure> {
    let t0 = Instant::now();
    let spec = TaskArgs::decode(payload)
        .map_err(|e| Failure::function(format!("malformed task arguments: {e}")))?;
    let mut items = Vec::with_capacity(spec.args.len());
    for (i, a) in spec.args.into_iter().enumerate() {
        items.push(match a.kind {
            Some(task_arg::Kind::Value(v)) => ArgData::Inline(v),
            Some(task_arg::Kind::Object(o)) => {
                let id = object_id(&o.id)
                    .ok_or_else(|| Failure::function(format!("argument {i}: bad object ID")))?;
                let store = ctx.store().map_err(Failure::function)?;
                ArgData::Object(
                    store
                        .get_remote(id, ARG_FETCH_TIMEOUT)
                        .map_err(|e| arg_failure(i, e))?,
                )
            }
            None => return Err(Failure::function(format!("argument {i} is empty"))),
        });
    }
    Ok((items, t0.elapsed()))
}

/// A task's reply: `value` inline when it is small, else stored in this node's data worker as
/// the call's result object; with where and how long (`started`, `fetch`) the call ran.
pub fn task_result(ctx: &Context, value: Value, started: Instant, fetch: Duration) -> Reply {
    let tc = TaskContext { ctx };
    let kind = match value {
        Value::Bytes(b) if b.len() <= INLINE_RESULT => task_result::Kind::Value(b),
        Value::Bytes(b) => {
            let store = ctx.store().map_err(Failure::function)?;
            let id = store.new_id();
            store.put(id, &b).map_err(|e| {
                Failure::function(format!("cannot store the {}-byte result: {e}", b.len()))
            })?;
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
        elapsed_us: started.elapsed().as_micros() as u64,
        fetch_us: fetch.as_micros() as u64,
    }
    .encode_to_vec())
}

/// Runs one task inside a function process: resolve the arguments, call,
/// encode the result.
fn run_task(
    ctx: &Context,
    payload: &[u8],
    f: impl FnOnce(&TaskContext, &Args) -> Result<Value, String>,
) -> Reply {
    let t0 = Instant::now();
    let (items, fetch) = task_args(ctx, payload)?;
    let args = Args::new(items);
    let value = f(&TaskContext { ctx }, &args).map_err(Failure::function)?;
    drop(args);
    task_result(ctx, value, t0, fetch)
}

/// A class's instance as the serve loop drives it.
struct ActorInstance(Box<dyn Actor>);

impl Stateful for ActorInstance {
    fn call(&mut self, ctx: &Context, method: &str, input: &[u8]) -> Reply {
        let actor = &mut self.0;
        run_task(ctx, input, |tc, args| actor.call(tc, method, args))
    }
}

impl Builder {
    /// Serves calls as a function process; never returns.
    pub(super) fn serve(self) -> ! {
        let mut app = App::new();
        for (name, f) in self.functions {
            app = app.typed_handler(&name, move |ctx, payload| {
                run_task(ctx, payload, |tc, a| f(tc, a))
            });
        }
        for (name, make) in self.classes {
            app = app.typed_class(&name, move |ctx| {
                make(&TaskContext { ctx }).map(|a| Box::new(ActorInstance(a)) as Box<dyn Stateful>)
            });
        }
        app.run()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yr_datastore::protocol::ErrorReply;

    #[test]
    fn a_lost_argument_fails_the_call_as_object_lost() {
        let lost = yr_datastore::Error::Store(ErrorReply::new(
            ErrorCode::ObjectLost,
            "object x is lost: its node 10.0.0.2:7000 is gone",
        ));
        let f = arg_failure(1, lost);
        assert_eq!(f.kind, ErrorKind::ErrorObjectLost);
        assert!(f.message.starts_with("argument 1: "), "{}", f.message);
        // Anything else is the call's failure, whatever its words.
        let other = yr_datastore::Error::Store(ErrorReply::new(
            ErrorCode::Timeout,
            "object x is lost: not really",
        ));
        assert_eq!(arg_failure(0, other).kind, ErrorKind::ErrorFunction);
    }

    #[test]
    fn a_call_that_cannot_decode_its_arguments_is_the_functions_failure() {
        let ctx = Context::new(
            "i".into(),
            "f".into(),
            "/nonexistent".into(),
            "127.0.0.1:1".into(),
        );
        let r = run_task(&ctx, b"\xff\xff not protobuf", |_, _| {
            Ok(Value::bytes(Vec::new()))
        });
        let f = r.expect_err("malformed");
        assert_eq!(f.kind, ErrorKind::ErrorFunction);
        assert!(
            f.message.contains("malformed task arguments"),
            "{}",
            f.message
        );
    }

    #[test]
    fn a_small_result_travels_inline_with_where_it_ran() {
        let ctx = Context::new(
            "i7".into(),
            "f".into(),
            "/nonexistent".into(),
            "127.0.0.1:1".into(),
        );
        let args = yr_proto::TaskArgs {
            args: vec![yr_proto::TaskArg {
                kind: Some(task_arg::Kind::Value(
                    bincode::serialize(&21u64).unwrap_or_default(),
                )),
            }],
        };
        let out = run_task(&ctx, &args.encode_to_vec(), |_, a| {
            let x: u64 = a.get(0)?;
            Value::of(&(x * 2))
        })
        .expect("runs");
        let r = TaskResult::decode(out.as_slice()).expect("a task result");
        assert_eq!(r.instance_id, "i7");
        match r.kind {
            Some(task_result::Kind::Value(v)) => {
                assert_eq!(bincode::deserialize::<u64>(&v).ok(), Some(42))
            }
            other => panic!("expected an inline value, got {other:?}"),
        }
        // The function's own error keeps its words and its kind.
        let err =
            run_task(&ctx, &args.encode_to_vec(), |_, _| Err("no".into())).expect_err("fails");
        assert_eq!(err, Failure::function("no".into()));
    }
}
