//! The driver: this process's connection to a cluster and everything it does there — objects
//! (put, get, wait), calls of deployed functions, stateful instances, and the data worker's KV.
//!
//! Values are bytes here: the Python half encodes and decodes them (pickle protocol 5 with
//! out-of-band buffers, laid out by `yr/serialization.py`). A value with out-of-band buffers is
//! written straight into a new shared-memory object from the buffers' own memory (one copy),
//! and read back as [`Pinned`] windows (no copy).
//!
//! Invariants: one driver connection per process, made by `init` and dropped by `finalize`
//! (instance handles keep it alive until they go); an `ObjectRef` keeps its object alive (the
//! object is freed everywhere when the last Python reference to it, and every call that received
//! it, is gone); nothing here holds the GIL while it waits on the cluster.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use yr_proto::{AffinityKind, FunctionSpec, LabelAffinity, Resources, SchedulingOptions};
use yr_runtime::{Builder, Bytes, InstanceHandle, Task, Yr};

use crate::pinned::{self, Held, Pinned};
use crate::{to_py, YRError};

/// The process's driver connection, set by `init`.
///
/// A std mutex: it is held only to clone or replace the handle (and, in a function process,
/// while its first use connects it), never across a call.
static DRIVER: Mutex<Option<Yr>> = Mutex::new(None);

pub(crate) fn driver() -> PyResult<Yr> {
    let mut d = DRIVER
        .lock()
        .map_err(|_| YRError::new_err("the driver's lock is poisoned"))?;
    if d.is_none() && std::env::var_os("YR_INSTANCE_ID").is_some() {
        // A function that calls, puts or gets is connected on first use, through its own node.
        *d = Some(Builder::new("py").connect_in_function().map_err(to_py)?);
    }
    d.clone().ok_or_else(|| {
        crate::exception(
            "NotInitializedError",
            "system not initialized: call yr.init() first".into(),
        )
    })
}

fn timeout_of(seconds: Option<f64>) -> PyResult<Duration> {
    match seconds {
        None => Ok(Duration::from_secs(u64::from(u32::MAX))),
        Some(s) if s.is_finite() && s >= 0.0 => Ok(Duration::from_secs_f64(s)),
        Some(s) if s < 0.0 => Ok(Duration::from_secs(u64::from(u32::MAX))),
        Some(s) => Err(PyValueError::new_err(format!(
            "timeout must be a number of seconds, got {s}"
        ))),
    }
}

/// A reference to an object in the cluster (a value put by a driver or returned by a call).
#[pyclass(module = "yr", name = "ObjectRef", frozen)]
pub struct PyObjectRef(pub yr_runtime::ObjectRef);

#[pymethods]
impl PyObjectRef {
    /// The object's ID (hex), once it is stored in a data worker (None for small values that
    /// came back inline, and while the call runs).
    #[getter]
    fn id(&self) -> Option<String> {
        self.0.id().map(|i| i.to_string())
    }

    /// Whether the value exists (or its call failed).
    fn is_ready(&self) -> bool {
        self.0.is_ready()
    }

    /// The value's size in bytes once ready.
    #[getter]
    fn size(&self) -> Option<u64> {
        self.0.size()
    }

    /// Cancels the stateless call whose result this is, if it has not ended (see
    /// `yr.cancel`); whether it was cancelled.
    fn cancel(&self) -> bool {
        self.0.cancel()
    }

    /// Where the call that made this value ran: (node, instance), once it has.
    fn call_info(&self) -> Option<(String, String)> {
        self.0.call_info().map(|c| (c.node_id, c.instance_id))
    }

    fn __repr__(&self) -> String {
        format!("{:?}", self.0)
    }

    /// References are equal when they are the same value (clones of one reference).
    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other
            .downcast::<PyObjectRef>()
            .is_ok_and(|o| o.get().0.same(&self.0))
    }

    fn __hash__(&self) -> u64 {
        self.0.identity() as u64
    }

    /// Inside a value, a reference travels as its object (ID, size, node): the receiver gets a
    /// borrowed reference, readable while this one (the owner's) lives. A pending reference
    /// cannot travel (pass it as a top-level argument: the call waits for it).
    fn __reduce__<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<(Bound<'py, PyAny>, (String, u64, String))> {
        let Some((id, size, node)) = self.0.object() else {
            return Err(crate::exception(
                "YRValueError",
                "an ObjectRef inside a value must be a stored object: pass a pending or small \
                 result as a top-level argument of the call (it is resolved where the call \
                 runs), or yr.get it first"
                    .into(),
            ));
        };
        let rebuild = py.import("yr._yr")?.getattr("borrowed_ref")?;
        Ok((rebuild, (id.to_string(), size, node)))
    }
}

/// A reference to the object `id` another process owns (see `ObjectRef.__reduce__`).
#[pyfunction]
fn borrowed_ref(id: &str, size: u64, node: &str) -> PyResult<PyObjectRef> {
    let oid = yr_datastore::ObjectId::from_hex(id)
        .ok_or_else(|| PyValueError::new_err(format!("{id:?} is not an object ID")))?;
    Ok(PyObjectRef(driver()?.borrowed(oid, size, node)))
}

/// Connects this process to a cluster: the session at `session` (a session folder or its
/// `session.json`), else the master at `master` (host:port), else `$YR_SESSION`,
/// `$YR_MASTER_ADDRESS`, or the newest session on this host.
#[pyfunction]
#[pyo3(signature = (session=None, master=None))]
fn init(py: Python<'_>, session: Option<PathBuf>, master: Option<String>) -> PyResult<()> {
    let in_function = std::env::var_os("YR_INSTANCE_ID").is_some();
    let yr = py.allow_threads(|| match (session, master) {
        (Some(s), _) => Builder::new("py").connect(s),
        (None, Some(m)) => Builder::new("py").connect_master(&m),
        (None, None) if in_function => Builder::new("py").connect_in_function(),
        (None, None) => Builder::new("py").init(),
    });
    let yr = yr.map_err(to_py)?;
    *DRIVER
        .lock()
        .map_err(|_| YRError::new_err("the driver's lock is poisoned"))? = Some(yr);
    Ok(())
}

/// Disconnects; objects this process owns are freed once their last reference is gone.
#[pyfunction]
fn finalize(py: Python<'_>) -> PyResult<()> {
    let old = DRIVER
        .lock()
        .map_err(|_| YRError::new_err("the driver's lock is poisoned"))?
        .take();
    // Dropping the driver joins its runtime's threads: not while holding the GIL.
    py.allow_threads(move || drop(old));
    Ok(())
}

#[pyfunction]
fn is_initialized() -> bool {
    DRIVER.lock().map(|d| d.is_some()).unwrap_or(false)
}

/// Stores `data` as it is (no metadata: Rust programs read it as plain bytes).
#[pyfunction]
fn put_bytes(py: Python<'_>, data: &[u8]) -> PyResult<PyObjectRef> {
    let yr = driver()?;
    // `data` borrows an immutable bytes object the caller keeps alive: it can be read without
    // the GIL, so the one copy is the one into shared memory.
    py.allow_threads(move || yr.put_bytes(data))
        .map(PyObjectRef)
        .map_err(to_py)
}

/// Stores a value laid out as `parts` — `(offset, bytes)` or `(offset, (address, length))` of a
/// buffer export the caller holds until this returns — with `meta` as the object's metadata.
/// Each part is copied once, straight into the new object.
#[pyfunction]
fn put_parts(
    py: Python<'_>,
    meta: &[u8],
    parts: Vec<(usize, Bound<'_, PyAny>)>,
) -> PyResult<PyObjectRef> {
    let yr = driver()?;
    let parts = pinned::parts(&parts)?;
    let len = pinned::extent(&parts)?;
    py.allow_threads(|| {
        let mut obj = yr.create_object_with_meta(len, meta)?;
        // SAFETY: every raw part is a buffer export the Python caller holds (a PickleBuffer of
        // the value being put) for the duration of this call, so its memory stays valid.
        unsafe { pinned::write_parts(&mut obj, &parts) };
        obj.seal()
    })
    .map(PyObjectRef)
    .map_err(to_py)
}

/// The values of `refs`, waiting up to `timeout` seconds in all (forever when None): for each,
/// `(inline, window)` — inline bytes that came in a reply, or a zero-copy window onto the
/// object (whose `meta()` says how to read it).
#[pyfunction]
#[pyo3(signature = (refs, timeout=None))]
fn get(
    py: Python<'_>,
    refs: Vec<PyRef<'_, PyObjectRef>>,
    timeout: Option<f64>,
) -> PyResult<Vec<(bool, Pinned)>> {
    let yr = driver()?;
    let t = timeout_of(timeout)?;
    let refs: Vec<yr_runtime::ObjectRef> = refs.iter().map(|r| r.0.clone()).collect();
    let got = py.allow_threads(move || {
        let t0 = std::time::Instant::now();
        let mut out = Vec::with_capacity(refs.len());
        for r in &refs {
            let left = t.saturating_sub(t0.elapsed());
            out.push(yr.get_bytes(r, left).map_err(|e| match e {
                // Named as openYuanrong's get names it, with the timeout asked for.
                yr_runtime::Error::Timeout(_) => yr_runtime::Error::Timeout(format!(
                    "failed to get object, code: 4005: {r:?} is not ready within {:.3} s",
                    t.as_secs_f64()
                )),
                e => e,
            })?);
        }
        Ok::<_, yr_runtime::Error>(out)
    });
    Ok(got
        .map_err(to_py)?
        .into_iter()
        .map(|b| match b {
            Bytes::Shared(g) => (false, Pinned::whole(Held::Object(g))),
            Bytes::Inline(v) => (true, Pinned::whole(Held::Shared(v))),
        })
        .collect())
}

/// Waits until `num` of `refs` are ready or `timeout` seconds pass: the indexes of the ready
/// ones, in the order they finished.
#[pyfunction]
#[pyo3(signature = (refs, num, timeout=None))]
fn wait(
    py: Python<'_>,
    refs: Vec<PyRef<'_, PyObjectRef>>,
    num: usize,
    timeout: Option<f64>,
) -> PyResult<Vec<usize>> {
    let yr = driver()?;
    let t = timeout_of(timeout)?;
    let refs: Vec<yr_runtime::ObjectRef> = refs.iter().map(|r| r.0.clone()).collect();
    let ready = py
        .allow_threads(|| yr.wait(&refs, num, t))
        .map_err(to_py)?
        .0;
    // The runtime returns clones: match them to the references passed in by identity.
    let mut at: HashMap<usize, Vec<usize>> = HashMap::new();
    for (i, r) in refs.iter().enumerate().rev() {
        at.entry(r.identity()).or_default().push(i);
    }
    Ok(ready
        .iter()
        .filter_map(|r| at.get_mut(&r.identity()).and_then(Vec::pop))
        .collect())
}

/// A call's arguments: bytes travel inline, references as their objects.
fn add_args<'a>(mut task: Task<'a>, args: &[Bound<'_, PyAny>]) -> PyResult<Task<'a>> {
    for a in args {
        if let Ok(r) = a.downcast::<PyObjectRef>() {
            task = task.arg_ref(&r.get().0);
        } else if let Ok(b) = a.downcast::<PyBytes>() {
            task = task.arg_bytes(b.as_bytes());
        } else {
            return Err(PyValueError::new_err(
                "a call's arguments reach the runtime as bytes or ObjectRefs",
            ));
        }
    }
    Ok(task)
}

fn per_call(mut task: Task<'_>, timeout: Option<f64>, retries: Option<u32>) -> Task<'_> {
    if let Some(t) = timeout.filter(|t| t.is_finite() && *t > 0.0) {
        task = task.timeout(Duration::from_secs_f64(t));
    }
    if let Some(n) = retries {
        task = task.retries(n);
    }
    task
}

/// Calls the deployed function `function` with `args`; returns at once with the result's
/// reference.
#[pyfunction]
#[pyo3(signature = (function, args, timeout=None, retries=None))]
fn submit(
    function: &str,
    args: Vec<Bound<'_, PyAny>>,
    timeout: Option<f64>,
    retries: Option<u32>,
) -> PyResult<PyObjectRef> {
    let yr = driver()?;
    let task = per_call(add_args(yr.call(function), &args)?, timeout, retries);
    // Submitting spawns the call on the driver's runtime; nothing here waits.
    task.submit().map(PyObjectRef).map_err(to_py)
}

fn get_str(spec: &Bound<'_, PyDict>, key: &str) -> PyResult<String> {
    Ok(match spec.get_item(key)? {
        Some(v) if !v.is_none() => v.extract()?,
        _ => String::new(),
    })
}

fn get_num<T: for<'a> FromPyObject<'a> + Default>(
    spec: &Bound<'_, PyDict>,
    key: &str,
) -> PyResult<T> {
    Ok(match spec.get_item(key)? {
        Some(v) if !v.is_none() => v.extract()?,
        _ => T::default(),
    })
}

/// Deploys a function described by `spec` (keys: name, runtime, code_path, handler, kind,
/// description, cpu (millicores), memory (MiB), custom (dict), min_instances, max_instances,
/// concurrency, timeout_ms, max_retries, env (dict), affinity (list of (kind, key, values))
/// where kind is "required", "preferred" or "anti"). A second deploy of a known name is taken
/// as the same function.
#[pyfunction]
fn deploy(py: Python<'_>, spec: Bound<'_, PyDict>) -> PyResult<()> {
    let yr = driver()?;
    let mut affinity = Vec::new();
    if let Some(list) = spec.get_item("affinity")? {
        if !list.is_none() {
            for item in list.try_iter()? {
                let (kind, key, values): (String, String, Vec<String>) = item?.extract()?;
                let kind = match kind.as_str() {
                    "required" => AffinityKind::AffinityRequired,
                    "preferred" => AffinityKind::AffinityPreferred,
                    "anti" => AffinityKind::AffinityAnti,
                    other => {
                        return Err(PyValueError::new_err(format!(
                            "affinity kind {other:?} is not one of required, preferred, anti"
                        )))
                    }
                };
                affinity.push(LabelAffinity {
                    kind: kind as i32,
                    key,
                    values,
                });
            }
        }
    }
    let custom: HashMap<String, f64> = get_num(&spec, "custom")?;
    let env: HashMap<String, String> = get_num(&spec, "env")?;
    let f = FunctionSpec {
        name: get_str(&spec, "name")?,
        runtime: get_str(&spec, "runtime")?,
        code_path: get_str(&spec, "code_path")?,
        handler: get_str(&spec, "handler")?,
        kind: get_str(&spec, "kind")?,
        description: get_str(&spec, "description")?,
        resources: Some(Resources {
            cpu_millis: get_num(&spec, "cpu")?,
            memory_mib: get_num(&spec, "memory")?,
            custom: custom.into_iter().collect(),
        }),
        min_instances: get_num(&spec, "min_instances")?,
        max_instances: get_num(&spec, "max_instances")?,
        concurrency: get_num(&spec, "concurrency")?,
        timeout_ms: get_num(&spec, "timeout_ms")?,
        max_retries: get_num(&spec, "max_retries")?,
        env: env.into_iter().collect(),
        scheduling: Some(SchedulingOptions {
            affinity,
            ..Default::default()
        }),
        ..Default::default()
    };
    py.allow_threads(|| yr.deploy(f)).map_err(to_py)
}

/// Deletes the deployed function `name` and stops its instances (gone already is fine).
#[pyfunction]
fn undeploy(py: Python<'_>, name: &str) -> PyResult<()> {
    let yr = driver()?;
    py.allow_threads(|| yr.undeploy(name)).map_err(to_py)
}

/// A stateful instance: calls through one handle run one at a time, in submission order.
#[pyclass(module = "yr", name = "InstanceHandle", frozen)]
pub struct PyInstance {
    handle: Mutex<Option<InstanceHandle>>,
    name: String,
}

impl PyInstance {
    fn new(h: InstanceHandle) -> PyInstance {
        PyInstance {
            name: h.name().to_string(),
            handle: Mutex::new(Some(h)),
        }
    }
}

#[pymethods]
impl PyInstance {
    /// The instance's name (unique in the cluster).
    #[getter]
    fn name(&self) -> String {
        self.name.clone()
    }

    /// Calls `method` with `args`; returns at once with the result's reference.
    #[pyo3(signature = (method, args, timeout=None))]
    fn call(
        &self,
        method: &str,
        args: Vec<Bound<'_, PyAny>>,
        timeout: Option<f64>,
    ) -> PyResult<PyObjectRef> {
        let guard = self
            .handle
            .lock()
            .map_err(|_| YRError::new_err("the instance handle's lock is poisoned"))?;
        let h = guard.as_ref().ok_or_else(|| {
            crate::exception(
                "InstanceDiedError",
                format!("instance {:?} was terminated by this driver", self.name),
            )
        })?;
        let task = per_call(add_args(h.method(method), &args)?, timeout, None);
        task.submit().map(PyObjectRef).map_err(to_py)
    }

    /// Stops the instance (later calls through this handle fail).
    fn kill(&self, py: Python<'_>) -> PyResult<()> {
        let h = self
            .handle
            .lock()
            .map_err(|_| YRError::new_err("the instance handle's lock is poisoned"))?
            .take();
        match h {
            Some(h) => py.allow_threads(|| h.kill()).map_err(to_py),
            None => Ok(()),
        }
    }
}

/// Creates (or finds) the stateful instance `name` of the deployed function `function`.
#[pyfunction]
fn create_instance(py: Python<'_>, function: &str, name: &str) -> PyResult<PyInstance> {
    let yr = driver()?;
    py.allow_threads(|| yr.create_instance(function, name))
        .map(PyInstance::new)
        .map_err(to_py)
}

/// The live stateful instance named `name`, if there is one: (handle, its function).
#[pyfunction]
fn find_instance(py: Python<'_>, name: &str) -> PyResult<Option<PyInstance>> {
    let yr = driver()?;
    py.allow_threads(|| yr.find_instance(name))
        .map(|h| h.map(PyInstance::new))
        .map_err(to_py)
}

/// The names of the cluster's live stateful instances, sorted.
#[pyfunction]
fn instance_names(py: Python<'_>) -> PyResult<Vec<String>> {
    let yr = driver()?;
    py.allow_threads(|| yr.instance_names()).map_err(to_py)
}

/// Writes `value` under `key` in this node's data worker.
#[pyfunction]
fn kv_set(py: Python<'_>, key: &[u8], value: &[u8]) -> PyResult<()> {
    let yr = driver()?;
    py.allow_threads(|| yr.store().kv_set(key, value))
        .map_err(|e| to_py(e.into()))
}

/// The value under `key`, waiting up to `timeout` seconds for it to be written.
#[pyfunction]
#[pyo3(signature = (key, timeout=0.0))]
fn kv_get(py: Python<'_>, key: &[u8], timeout: f64) -> PyResult<Pinned> {
    let yr = driver()?;
    let t = timeout_of(Some(timeout))?;
    py.allow_threads(|| yr.store().kv_get(key, t))
        .map(|g| Pinned::whole(Held::Object(g)))
        .map_err(|e| to_py(e.into()))
}

/// Deletes `key` (an error when it does not exist).
#[pyfunction]
fn kv_del(py: Python<'_>, key: &[u8]) -> PyResult<()> {
    let yr = driver()?;
    py.allow_threads(|| yr.store().kv_del(key))
        .map_err(|e| to_py(e.into()))
}

/// Whether `key` exists.
#[pyfunction]
fn kv_exists(py: Python<'_>, key: &[u8]) -> PyResult<bool> {
    let yr = driver()?;
    py.allow_threads(|| yr.store().kv_exists(key))
        .map_err(|e| to_py(e.into()))
}

/// The address range of this driver's mapping of its node's arena (views returned by `get`
/// lie inside it).
#[pyfunction]
fn arena_range() -> PyResult<(usize, usize)> {
    let r = driver()?.store().mapping();
    Ok((r.start, r.end))
}

/// This node's data worker's figures: sealed objects, used bytes, pinned objects, spilled
/// objects.
#[pyfunction]
fn store_stats(py: Python<'_>) -> PyResult<HashMap<String, u64>> {
    let yr = driver()?;
    let s = py
        .allow_threads(|| yr.store().stats())
        .map_err(|e| to_py(e.into()))?;
    Ok(HashMap::from([
        ("objects".to_string(), s.sealed),
        ("used_bytes".to_string(), s.used),
        ("pinned".to_string(), s.pinned),
        ("spilled".to_string(), s.spilled),
    ]))
}

/// This driver's node.
#[pyfunction]
fn node_id() -> PyResult<String> {
    Ok(driver()?.node_id().to_string())
}

/// The cluster's live nodes: (node ID, hostname, labels).
#[pyfunction]
#[allow(clippy::type_complexity)]
fn nodes(py: Python<'_>) -> PyResult<Vec<(String, String, HashMap<String, String>)>> {
    let yr = driver()?;
    let n = py.allow_threads(|| yr.nodes()).map_err(to_py)?;
    Ok(n.into_iter()
        .map(|n| (n.node_id, n.hostname, n.labels.into_iter().collect()))
        .collect())
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyObjectRef>()?;
    m.add_class::<PyInstance>()?;
    // Whether this extension was built without optimisation (maturin develop's default): the
    // benches report it, since a debug build's figures mean little.
    m.add("DEBUG_BUILD", cfg!(debug_assertions))?;
    m.add_function(wrap_pyfunction!(init, m)?)?;
    m.add_function(wrap_pyfunction!(borrowed_ref, m)?)?;
    m.add_function(wrap_pyfunction!(finalize, m)?)?;
    m.add_function(wrap_pyfunction!(is_initialized, m)?)?;
    m.add_function(wrap_pyfunction!(put_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(put_parts, m)?)?;
    m.add_function(wrap_pyfunction!(get, m)?)?;
    m.add_function(wrap_pyfunction!(wait, m)?)?;
    m.add_function(wrap_pyfunction!(submit, m)?)?;
    m.add_function(wrap_pyfunction!(deploy, m)?)?;
    m.add_function(wrap_pyfunction!(undeploy, m)?)?;
    m.add_function(wrap_pyfunction!(create_instance, m)?)?;
    m.add_function(wrap_pyfunction!(find_instance, m)?)?;
    m.add_function(wrap_pyfunction!(instance_names, m)?)?;
    m.add_function(wrap_pyfunction!(kv_set, m)?)?;
    m.add_function(wrap_pyfunction!(kv_get, m)?)?;
    m.add_function(wrap_pyfunction!(kv_del, m)?)?;
    m.add_function(wrap_pyfunction!(kv_exists, m)?)?;
    m.add_function(wrap_pyfunction!(arena_range, m)?)?;
    m.add_function(wrap_pyfunction!(node_id, m)?)?;
    m.add_function(wrap_pyfunction!(store_stats, m)?)?;
    m.add_function(wrap_pyfunction!(nodes, m)?)?;
    Ok(())
}
