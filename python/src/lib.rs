//! `yr._yr`: the native half of the Python package `yr`, a thin skin over the Rust runtime
//! ([`yr_runtime::Yr`]). The pure-Python half (`python/pysrc/yr/`) holds openYuanrong's API names
//! and calls in here.
//!
//! What is here so far (issue 11, first slice): connecting a driver to a cluster (`init`,
//! `finalize`, `is_initialized`), objects of bytes (`put`, `get`, `wait`) and the exception
//! classes. Every call that blocks on the cluster releases the GIL.
//!
//! Invariants: one driver connection per process, made by `init` and dropped by `finalize`; an
//! `ObjectRef` keeps its object alive (the object is freed everywhere when the last Python
//! reference to it, and every call that received it, is gone); a kind of failure is one exception
//! class, mapped from [`yr_runtime::Error`] in one place ([`to_py`]).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use yr_runtime::{Builder, Error, Yr};

create_exception!(_yr, YRError, PyException, "Any error of yr.");
create_exception!(
    _yr,
    ConnectError,
    YRError,
    "The cluster could not be reached."
);
create_exception!(
    _yr,
    TaskError,
    YRError,
    "A remote function raised or failed."
);
create_exception!(
    _yr,
    PlatformError,
    YRError,
    "The platform could not run a call."
);
create_exception!(
    _yr,
    ObjectLostError,
    YRError,
    "The only copy of an object is gone."
);
create_exception!(
    _yr,
    GetTimeoutError,
    YRError,
    "A get or wait ran out of time."
);
create_exception!(
    _yr,
    NotInitializedError,
    YRError,
    "yr.init() has not been called."
);

/// The process's driver connection, set by `init`.
///
/// A std mutex: it is held only to clone or replace the handle, never across a call.
static DRIVER: Mutex<Option<Arc<Yr>>> = Mutex::new(None);

/// The one mapping from the runtime's errors to Python exceptions.
fn to_py(e: Error) -> PyErr {
    let msg = e.to_string();
    match e {
        Error::Connect(_) => ConnectError::new_err(msg),
        Error::Task { .. } => TaskError::new_err(msg),
        Error::Platform { .. } | Error::Deploy(_) => PlatformError::new_err(msg),
        Error::ObjectLost(_) => ObjectLostError::new_err(msg),
        Error::Timeout(_) => GetTimeoutError::new_err(msg),
        _ => YRError::new_err(msg),
    }
}

fn driver() -> PyResult<Arc<Yr>> {
    DRIVER
        .lock()
        .map_err(|_| YRError::new_err("the driver's lock is poisoned"))?
        .as_ref()
        .map(Arc::clone)
        .ok_or_else(|| NotInitializedError::new_err("call yr.init() first"))
}

fn timeout_of(seconds: Option<f64>) -> PyResult<Duration> {
    match seconds {
        None => Ok(Duration::from_secs(u64::from(u32::MAX))),
        Some(s) if s.is_finite() && s >= 0.0 => Ok(Duration::from_secs_f64(s)),
        Some(s) => Err(pyo3::exceptions::PyValueError::new_err(format!(
            "timeout must be a non-negative number of seconds, got {s}"
        ))),
    }
}

/// A reference to an object in the cluster (a value put by a driver or returned by a call).
#[pyclass(module = "yr", name = "ObjectRef", frozen)]
struct PyObjectRef(yr_runtime::ObjectRef);

#[pymethods]
impl PyObjectRef {
    /// The object's ID (hex), once it has one.
    #[getter]
    fn id(&self) -> Option<String> {
        self.0.id().map(|i| i.to_string())
    }

    fn is_ready(&self) -> bool {
        self.0.is_ready()
    }

    fn __repr__(&self) -> String {
        format!("{:?}", self.0)
    }
}

/// Connects this process to a cluster: the session at `session` (a session folder or its
/// `session.json`), else `$YR_SESSION`, `$YR_MASTER_ADDRESS`, or the newest session on this host.
#[pyfunction]
#[pyo3(signature = (session=None))]
fn init(py: Python<'_>, session: Option<PathBuf>) -> PyResult<()> {
    let yr = py.allow_threads(|| match session {
        Some(s) => Builder::new("py").connect(s),
        None => Builder::new("py").init(),
    });
    let yr = yr.map_err(to_py)?;
    *DRIVER
        .lock()
        .map_err(|_| YRError::new_err("the driver's lock is poisoned"))? = Some(Arc::new(yr));
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

/// Stores `data` in this node's data worker.
#[pyfunction]
fn put_bytes(py: Python<'_>, data: &[u8]) -> PyResult<PyObjectRef> {
    let yr = driver()?;
    // `data` borrows an immutable bytes object the caller keeps alive: it can be read without
    // the GIL, so the one copy is the one into shared memory.
    py.allow_threads(move || yr.put_bytes(data))
        .map(PyObjectRef)
        .map_err(to_py)
}

/// The bytes of `r`, waiting up to `timeout` seconds (forever when None).
#[pyfunction]
#[pyo3(signature = (r, timeout=None))]
fn get_bytes<'py>(
    py: Python<'py>,
    r: &PyObjectRef,
    timeout: Option<f64>,
) -> PyResult<Bound<'py, PyBytes>> {
    let yr = driver()?;
    let t = timeout_of(timeout)?;
    let r = r.0.clone();
    // The view into shared memory comes back to the GIL side and is copied once, into the
    // bytes object.
    let b = py
        .allow_threads(move || yr.get_bytes(&r, t))
        .map_err(to_py)?;
    Ok(PyBytes::new(py, &b))
}

/// Waits until `num` of `refs` are ready or `timeout` seconds pass: (ready, not ready).
#[pyfunction]
#[pyo3(signature = (refs, num, timeout=None))]
#[allow(clippy::type_complexity)]
fn wait(
    py: Python<'_>,
    refs: Vec<PyRef<'_, PyObjectRef>>,
    num: usize,
    timeout: Option<f64>,
) -> PyResult<(Vec<PyObjectRef>, Vec<PyObjectRef>)> {
    let yr = driver()?;
    let t = timeout_of(timeout)?;
    let refs: Vec<yr_runtime::ObjectRef> = refs.iter().map(|r| r.0.clone()).collect();
    let (ready, rest) = py
        .allow_threads(move || yr.wait(&refs, num, t))
        .map_err(to_py)?;
    Ok((
        ready.into_iter().map(PyObjectRef).collect(),
        rest.into_iter().map(PyObjectRef).collect(),
    ))
}

#[pymodule]
fn _yr(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<PyObjectRef>()?;
    m.add_function(wrap_pyfunction!(init, m)?)?;
    m.add_function(wrap_pyfunction!(finalize, m)?)?;
    m.add_function(wrap_pyfunction!(is_initialized, m)?)?;
    m.add_function(wrap_pyfunction!(put_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(get_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(wait, m)?)?;
    m.add("YRError", py.get_type::<YRError>())?;
    m.add("ConnectError", py.get_type::<ConnectError>())?;
    m.add("TaskError", py.get_type::<TaskError>())?;
    m.add("PlatformError", py.get_type::<PlatformError>())?;
    m.add("ObjectLostError", py.get_type::<ObjectLostError>())?;
    m.add("GetTimeoutError", py.get_type::<GetTimeoutError>())?;
    m.add("NotInitializedError", py.get_type::<NotInitializedError>())?;
    Ok(())
}
