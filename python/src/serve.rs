//! The function-process side: `yr._yr.serve(on_call, task)` serves the calls of the instance the
//! agent started this Python process as, through the runtime's serve loop ([`yr_runtime::App`]).
//!
//! Two kinds of process use it (see `yr/worker.py`): a function service (`task=False`: a call's
//! payload is the request body, `on_call` returns the response body) and a Python driver's
//! function or class (`task=True`: a call's payload is the runtime's task arguments, resolved
//! here — object arguments fetched to this node and pinned — into a list of `bytes` and
//! [`Pinned`] windows; `on_call` returns the encoded value, or a layout to store as an object).
//!
//! Invariants: `on_call` runs with the GIL, on the runtime's call threads (stateless calls up to
//! the function's concurrency at once; a stateful instance's calls one at a time, in order); the
//! serve loop itself waits without the GIL. A Python exception out of `on_call` fails that call
//! as the function's own error with the exception's text; an argument whose only copy is gone
//! fails it as a lost object. Nothing here ends the process but a recycle: `serve` returns when
//! the proxy shuts the instance down or goes away, so the caller can run its stop hook. When the
//! proxy recycles the instance (a stateful call it cancelled was already running, see
//! `runtime/src/app/calls.rs`) the process ends at once with
//! [`RECYCLED_EXIT`](yr_runtime::RECYCLED_EXIT), without the stop hook and without waiting for
//! the GIL: the call may still be running in Python, and the state it changes must never be seen.

use std::sync::Arc;
use std::time::Instant;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};
use yr_runtime::{App, ArgData, Context, Failure, Reply, Stateful, Value};

use crate::pinned::{self, Held, Pinned};
use crate::to_py;

/// The Python callable that runs calls, shared by the call threads.
type OnCall = Arc<Py<PyAny>>;

fn failure(py: Python<'_>, e: PyErr) -> Failure {
    // The exception's own text (worker.py puts the remote traceback there).
    let msg = e
        .value(py)
        .str()
        .map(|s| s.to_string())
        .unwrap_or_else(|_| e.to_string());
    Failure::function(msg)
}

/// A function service's call: body in, body out.
fn raw_call(on_call: &OnCall, method: &str, payload: &[u8]) -> Reply {
    Python::with_gil(|py| {
        let r = on_call
            .call1(py, (method, PyBytes::new(py, payload)))
            .map_err(|e| failure(py, e))?;
        r.extract::<Vec<u8>>(py).map_err(|_| {
            Failure::function(
                "the function process's handler returned something else than bytes".into(),
            )
        })
    })
}

/// A Python driver's call: task arguments in, an encoded value (or an object) out.
fn task_call(on_call: &OnCall, ctx: &Context, method: &str, payload: &[u8]) -> Reply {
    let t0 = Instant::now();
    let (items, fetch) = yr_runtime::task_args(ctx, payload)?;
    let value = Python::with_gil(|py| -> Result<Value, Failure> {
        let args = PyList::empty(py);
        for a in items {
            let r = match a {
                ArgData::Inline(v) => args.append(Pinned::whole(Held::Inline(v))),
                ArgData::Object(g) => args.append(Pinned::whole(Held::Object(g))),
            };
            r.map_err(|e| failure(py, e))?;
        }
        let out = on_call
            .call1(py, (method, args))
            .map_err(|e| failure(py, e))?;
        let out = out.bind(py);
        if let Ok(b) = out.downcast::<PyBytes>() {
            return Ok(Value::Bytes(b.as_bytes().to_vec()));
        }
        // (meta, parts, keep): a value too large for the reply, stored here as an object;
        // `keep` holds the buffers the raw parts point into, alive as long as `out` is.
        let t = out.downcast::<PyTuple>().map_err(|_| {
            Failure::function("a task returned neither bytes nor (meta, parts, keep)".into())
        })?;
        let meta: Vec<u8> = t
            .get_item(0)
            .and_then(|m| m.extract())
            .map_err(|e| failure(py, e))?;
        let parts: Vec<(usize, Bound<'_, PyAny>)> = t
            .get_item(1)
            .and_then(|p| p.extract())
            .map_err(|e| failure(py, e))?;
        let parts = pinned::parts(&parts).map_err(|e| failure(py, e))?;
        let len = pinned::extent(&parts).map_err(|e| failure(py, e))?;
        let store = ctx.store().map_err(Failure::function)?;
        let id = store.new_id();
        let mut b = store
            .create(id, len, meta.len())
            .map_err(|e| Failure::function(format!("cannot store the {len}-byte result: {e}")))?;
        b.meta_mut().copy_from_slice(&meta);
        // SAFETY: the raw parts are buffer exports held by `out` (alive for this closure).
        py.allow_threads(|| unsafe { pinned::write_parts(b.data_mut(), &parts) });
        b.seal()
            .map_err(|e| Failure::function(format!("cannot seal the result {id}: {e}")))?;
        Ok(Value::Object {
            id,
            size: len as u64,
        })
    })?;
    yr_runtime::task_result(ctx, value, t0, fetch)
}

/// A stateful instance: the Python side keeps the state; calls come here one at a time.
struct PyStateful {
    on_call: OnCall,
    task: bool,
}

impl Stateful for PyStateful {
    fn call(&mut self, ctx: &Context, method: &str, input: &[u8]) -> Reply {
        if self.task {
            task_call(&self.on_call, ctx, method, input)
        } else {
            raw_call(&self.on_call, method, input)
        }
    }
}

/// Serves this process's instance (see the module header) until the proxy shuts it down or
/// goes away. Raises if the environment or the proxy connection is wrong.
#[pyfunction]
#[pyo3(signature = (on_call, task=false))]
fn serve(py: Python<'_>, on_call: Py<PyAny>, task: bool) -> PyResult<()> {
    let handler = std::env::var("YR_HANDLER").map_err(|_| {
        crate::YRError::new_err(
            "YR_HANDLER is not set: function processes are started by a yr agent",
        )
    })?;
    let on_call: OnCall = Arc::new(on_call);
    let stateless = Arc::clone(&on_call);
    let app = App::new()
        .typed_handler(&handler, move |ctx, payload| {
            if task {
                task_call(&stateless, ctx, "", payload)
            } else {
                raw_call(&stateless, "", payload)
            }
        })
        .typed_class(&handler, move |_ctx| {
            Ok(Box::new(PyStateful {
                on_call: Arc::clone(&on_call),
                task,
            }) as Box<dyn Stateful>)
        });
    match py.allow_threads(|| app.serve()) {
        Err(e @ yr_runtime::Error::Recycled(_)) => {
            eprintln!("yr function process: {e}");
            // SAFETY: _exit ends the process at once, running nothing of the interpreter's (its
            // threads may hold locks an orderly exit would wait for); it takes no pointers.
            unsafe { libc::_exit(yr_runtime::RECYCLED_EXIT) }
        }
        r => r.map_err(to_py),
    }
}

/// This function process's own connection to its node's data worker (for its code when the
/// driver stored it as an object), made on first use.
static STORE: std::sync::OnceLock<Result<yr_datastore::Client, String>> =
    std::sync::OnceLock::new();

/// The object `id` (hex), fetched to this node if needed, as a zero-copy window; waits up to
/// `timeout` seconds. Only in a function process (it uses the agent's `YR_DATA_SOCKET`).
#[pyfunction]
#[pyo3(signature = (id, timeout=60.0))]
fn fetch_object(py: Python<'_>, id: &str, timeout: f64) -> PyResult<Pinned> {
    let oid = yr_datastore::ObjectId::from_hex(id).ok_or_else(|| {
        pyo3::exceptions::PyValueError::new_err(format!("{id:?} is not an object ID"))
    })?;
    let store = STORE
        .get_or_init(|| {
            let socket = std::env::var("YR_DATA_SOCKET")
                .map_err(|_| "YR_DATA_SOCKET is not set: not a function process".to_string())?;
            yr_datastore::Client::connect_named(&socket, "py-worker")
                .map_err(|e| format!("data worker at {socket}: {e}"))
        })
        .as_ref()
        .map_err(|e| crate::exception("ConnectError", e.clone()))?;
    let t = std::time::Duration::from_secs_f64(timeout.max(0.0));
    py.allow_threads(|| store.get_remote(oid, t))
        .map(|g| Pinned::whole(Held::Object(g)))
        .map_err(|e| to_py(e.into()))
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // A function process's instance secret leaves the environment as the module loads, before
    // the interpreter runs any thread of ours or the function's code starts a child; `serve`
    // finds it kept by the runtime.
    let _ = yr_runtime::take_instance_secret();
    m.add_function(wrap_pyfunction!(serve, m)?)?;
    m.add_function(wrap_pyfunction!(fetch_object, m)?)?;
    Ok(())
}
