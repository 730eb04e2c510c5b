//! Zero-copy bytes for Python: [`Pinned`], a window onto bytes that live in this node's shared
//! memory (an object's mapped view) or in a reply, which numpy and `pickle` read in place.
//!
//! The limited Python API of abi3 before 3.11 cannot export the buffer protocol, so a window is
//! exposed the way numpy documents for foreign memory: an `__array_interface__` whose `data`
//! names the address. `numpy.asarray(window)` then views the bytes without copying, and keeps
//! the window (its `base`) alive — and with it the object's pin — for as long as any array over
//! it lives. Without numpy, `tobytes()` copies.
//!
//! Invariants: a window never outlives what it looks at (it holds an `Arc` of the pinned
//! object or reply); the bytes are read-only (`data` says so, and nothing here writes them);
//! `offset + len` is within the held bytes (checked where windows are made).

use std::sync::Arc;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};
use yr_datastore::client::ObjectGuard;

/// What a window holds on to.
pub enum Held {
    /// An object in this node's data worker, pinned while the guard lives.
    Object(ObjectGuard),
    /// Bytes that came inline (a reply, a call's argument).
    Inline(Vec<u8>),
    /// Bytes that came inline in a driver's reply, shared with the reference's state.
    Shared(Arc<Vec<u8>>),
}

impl Held {
    fn bytes(&self) -> &[u8] {
        match self {
            Held::Object(g) => g,
            Held::Inline(v) => v,
            Held::Shared(v) => v,
        }
    }

    /// The object's metadata; empty for inline bytes.
    fn meta(&self) -> &[u8] {
        match self {
            Held::Object(g) => g.metadata(),
            _ => &[],
        }
    }
}

/// A read-only window onto pinned bytes (see the module header).
#[pyclass(module = "yr", frozen)]
pub struct Pinned {
    held: Arc<Held>,
    offset: usize,
    len: usize,
}

impl Pinned {
    /// A window onto all of `held`.
    pub fn whole(held: Held) -> Pinned {
        let len = held.bytes().len();
        Pinned {
            held: Arc::new(held),
            offset: 0,
            len,
        }
    }

    fn bytes(&self) -> &[u8] {
        &self.held.bytes()[self.offset..self.offset + self.len]
    }
}

#[pymethods]
impl Pinned {
    /// numpy's protocol for foreign memory: a read-only array of `len` bytes at the address.
    #[getter]
    fn __array_interface__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("shape", PyTuple::new(py, [self.len])?)?;
        d.set_item("typestr", "|u1")?;
        d.set_item("data", (self.address(), true))?;
        d.set_item("version", 3)?;
        Ok(d)
    }

    /// The address of the first byte (to check that it lies in the mapped arena).
    #[getter]
    fn address(&self) -> usize {
        self.bytes().as_ptr() as usize
    }

    /// Whether the bytes are an object in shared memory (not a copy that came inline).
    #[getter]
    fn shared(&self) -> bool {
        matches!(*self.held, Held::Object(_))
    }

    /// The metadata of the object the window is on (empty for inline bytes).
    fn meta<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.held.meta())
    }

    /// A window onto `len` bytes from `offset` within this one.
    fn window(&self, offset: usize, len: usize) -> PyResult<Pinned> {
        if offset.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(PyValueError::new_err(format!(
                "window [{offset}, +{len}) is outside the {} bytes it is cut from",
                self.len
            )));
        }
        Ok(Pinned {
            held: Arc::clone(&self.held),
            offset: self.offset + offset,
            len,
        })
    }

    /// A copy of the bytes.
    fn tobytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.bytes())
    }

    fn __len__(&self) -> usize {
        self.len
    }

    fn __repr__(&self) -> String {
        let place = if self.shared() {
            "shared memory"
        } else {
            "inline"
        };
        format!("Pinned({} bytes in {place})", self.len)
    }
}

/// One piece of a value being written: bytes, or `(address, length)` of a buffer the caller
/// keeps exported (a `pickle.PickleBuffer`) until the write returns.
pub enum Part<'a> {
    /// A bytes object's contents.
    Bytes(&'a [u8]),
    /// Raw memory of a live buffer export.
    Raw(usize, usize),
}

/// Reads `(offset, part)` pairs from Python: `part` is `bytes` or an `(address, length)` tuple.
pub fn parts<'a>(items: &'a [(usize, Bound<'_, PyAny>)]) -> PyResult<Vec<(usize, Part<'a>)>> {
    let mut out = Vec::with_capacity(items.len());
    for (off, p) in items {
        if let Ok(b) = p.downcast::<PyBytes>() {
            out.push((*off, Part::Bytes(b.as_bytes())));
        } else {
            let (addr, len): (usize, usize) = p.extract().map_err(|_| {
                PyValueError::new_err("a part is bytes or an (address, length) tuple")
            })?;
            out.push((*off, Part::Raw(addr, len)));
        }
    }
    Ok(out)
}

/// Total size the parts need from their offsets.
pub fn extent(parts: &[(usize, Part<'_>)]) -> PyResult<usize> {
    let mut end = 0usize;
    for (off, p) in parts {
        let len = match p {
            Part::Bytes(b) => b.len(),
            Part::Raw(_, l) => *l,
        };
        let e = off
            .checked_add(len)
            .ok_or_else(|| PyValueError::new_err("a part's offset + length overflows"))?;
        end = end.max(e);
    }
    Ok(end)
}

/// Writes `parts` into `dst` (every part within it; gaps are zeroed). Runs without the GIL.
///
/// # Safety
/// Every `Part::Raw(addr, len)` must be readable memory that stays valid and unmoved for the
/// whole call (the caller holds the buffer export that owns it).
pub unsafe fn write_parts(dst: &mut [u8], parts: &[(usize, Part<'_>)]) {
    let mut covered = 0usize;
    let mut sorted: Vec<&(usize, Part<'_>)> = parts.iter().collect();
    sorted.sort_by_key(|(off, _)| *off);
    for (off, p) in sorted {
        let src: &[u8] = match p {
            Part::Bytes(b) => b,
            // SAFETY: the caller guarantees `addr..addr+len` is a live, readable buffer.
            Part::Raw(addr, len) => unsafe { std::slice::from_raw_parts(*addr as *const u8, *len) },
        };
        if *off > covered {
            dst[covered..*off].fill(0);
        }
        let end = off + src.len();
        yr_datastore::client::parallel_copy(&mut dst[*off..end], src);
        covered = covered.max(end);
    }
    if covered < dst.len() {
        dst[covered..].fill(0);
    }
}
