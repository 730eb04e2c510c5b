//! `yr._yr`: the native half of the Python package `yr`, a thin skin over the Rust runtime
//! ([`yr_runtime`]). The pure-Python half (`python/pysrc/yr/`) holds openYuanrong's API names,
//! the value format (pickle protocol 5 with out-of-band buffers) and the decorators, and calls
//! in here for everything that touches the cluster.
//!
//! Layout: `driver` — a driver's connection and what it does (objects, calls, instances, KV);
//! `pinned` — zero-copy windows onto shared memory for numpy and pickle; `serve` — the
//! function-process side (`python -m yr.worker` serves its instance's calls through it).
//!
//! Invariants: every call that blocks on the cluster releases the GIL; a kind of failure is one
//! exception class, mapped from [`yr_runtime::Error`] in one place ([`to_py`]), never from a
//! message's words.

mod driver;
mod pinned;
mod serve;

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use yr_proto::ErrorKind;
use yr_runtime::Error;

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
    FunctionNotFoundError,
    PlatformError,
    "The function or instance a call names does not exist."
);
create_exception!(
    _yr,
    InstanceDiedError,
    PlatformError,
    "The instance serving a call died or was terminated."
);
create_exception!(
    _yr,
    CallTimeoutError,
    PlatformError,
    "A call ran longer than its timeout."
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

/// The one mapping from the runtime's errors to Python exceptions: the name of the class in
/// `yr.exception` (openYuanrong's names, deriving from the builtins its docs catch).
fn class_of(e: &Error) -> &'static str {
    match e {
        Error::Connect(_) => "ConnectError",
        Error::Task { .. } => "TaskError",
        Error::Platform { kind, .. } => match kind {
            ErrorKind::ErrorNotFound => "FunctionNotFoundError",
            ErrorKind::ErrorTimeout => "CallTimeoutError",
            ErrorKind::ErrorInstanceFatal => "InstanceDiedError",
            _ => "PlatformError",
        },
        Error::Deploy(_) => "PlatformError",
        Error::ObjectLost(_) => "ObjectLostError",
        Error::Timeout(_) => "GetTimeoutError",
        _ => "YRRuntimeError",
    }
}

/// A Python exception of class `name` of `yr.exception` (or of this module's own classes when
/// `yr.exception` cannot be imported, as when `_yr` is used alone).
pub(crate) fn exception(name: &str, msg: String) -> PyErr {
    Python::with_gil(|py| {
        let cls = py
            .import("yr.exception")
            .and_then(|m| m.getattr(name))
            .and_then(|c| {
                c.downcast_into::<pyo3::types::PyType>()
                    .map_err(PyErr::from)
            });
        match cls {
            Ok(c) => PyErr::from_type(c, msg),
            Err(_) => match name {
                "ConnectError" => ConnectError::new_err(msg),
                "TaskError" => TaskError::new_err(msg),
                "FunctionNotFoundError" => FunctionNotFoundError::new_err(msg),
                "CallTimeoutError" => CallTimeoutError::new_err(msg),
                "InstanceDiedError" => InstanceDiedError::new_err(msg),
                "PlatformError" => PlatformError::new_err(msg),
                "ObjectLostError" => ObjectLostError::new_err(msg),
                "GetTimeoutError" => GetTimeoutError::new_err(msg),
                "NotInitializedError" => NotInitializedError::new_err(msg),
                _ => YRError::new_err(msg),
            },
        }
    })
}

/// A runtime error as the Python exception of its kind.
pub(crate) fn to_py(e: Error) -> PyErr {
    match e {
        // openYuanrong's CancelError builds its message around the task's name.
        Error::Cancelled(function) => exception("CancelError", function),
        e => exception(class_of(&e), e.to_string()),
    }
}

#[pymodule]
fn _yr(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    driver::register(m)?;
    serve::register(m)?;
    m.add_class::<pinned::Pinned>()?;
    m.add("YRError", py.get_type::<YRError>())?;
    m.add("ConnectError", py.get_type::<ConnectError>())?;
    m.add("TaskError", py.get_type::<TaskError>())?;
    m.add("PlatformError", py.get_type::<PlatformError>())?;
    m.add(
        "FunctionNotFoundError",
        py.get_type::<FunctionNotFoundError>(),
    )?;
    m.add("InstanceDiedError", py.get_type::<InstanceDiedError>())?;
    m.add("CallTimeoutError", py.get_type::<CallTimeoutError>())?;
    m.add("ObjectLostError", py.get_type::<ObjectLostError>())?;
    m.add("GetTimeoutError", py.get_type::<GetTimeoutError>())?;
    m.add("NotInitializedError", py.get_type::<NotInitializedError>())?;
    m.add("INLINE_RESULT", yr_runtime::remote::INLINE_RESULT)?;
    Ok(())
}
