//! Object references in a driver: [`ObjectRef`] (a value that exists or will once its call
//! ends), reading values back ([`Bytes`]), and the driver's own objects (`put`, in-place
//! [`DriverObject`]s).
//!
//! Invariants: a reference's state goes from pending to exactly one final state (inline
//! bytes, a stored object, or the call's error) and never back. A stored object is owned by
//! the driver before any clone of its reference can be dropped, and freed in the driver's data
//! worker (and from there on every node) when the last clone goes.

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use yr_datastore::{Client, ObjectBuilder, ObjectGuard, ObjectId};

use super::connect::Yr;
use crate::error::Error;

/// Where and how a finished call ran.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallInfo {
    /// The node.
    pub node_id: String,
    /// The instance.
    pub instance_id: String,
    /// Time inside the function process, argument fetches included.
    pub elapsed: Duration,
    /// Part of it spent fetching arguments.
    pub fetch: Duration,
}

/// What a reference holds.
#[derive(Clone)]
pub(super) enum RefState {
    /// Its call has not ended.
    Pending,
    /// A small value that came in the reply.
    Inline(Arc<Vec<u8>>),
    /// A value stored in the data worker of `node_id`.
    Object {
        id: ObjectId,
        size: u64,
        node_id: String,
    },
    /// Its call failed.
    Failed(Error),
}

struct RefCell {
    state: watch::Sender<RefState>,
    info: parking_lot::Mutex<Option<CallInfo>>,
    store: Client,
    /// A reference to an object someone else owns (see [`Yr::borrowed`]): never freed here.
    borrowed: bool,
    /// For a stateless call's result: the task running the call, and the function's name
    /// (see [`ObjectRef::cancel`]).
    call: parking_lot::Mutex<Option<(tokio::task::AbortHandle, String)>>,
}

impl Drop for RefCell {
    fn drop(&mut self) {
        if self.borrowed {
            return;
        }
        if let RefState::Object { id, .. } = &*self.state.borrow() {
            self.store.free(&[*id]);
        }
    }
}

/// A reference to a value that exists, or will exist once its call ends.
/// Clone it freely; the object is freed everywhere when the last clone (and
/// every call that received it) is gone.
#[derive(Clone)]
pub struct ObjectRef {
    cell: Arc<RefCell>,
}

impl std::fmt::Debug for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &*self.cell.state.borrow() {
            RefState::Pending => write!(f, "ObjectRef(pending)"),
            RefState::Inline(v) => write!(f, "ObjectRef(inline, {} bytes)", v.len()),
            RefState::Object { id, size, node_id } => {
                write!(f, "ObjectRef({id}, {size} bytes on {node_id})")
            }
            RefState::Failed(e) => write!(f, "ObjectRef(failed: {e})"),
        }
    }
}

impl ObjectRef {
    /// A reference in `state`; a stored object is freed through `store` when the last clone
    /// goes.
    pub(super) fn new(store: &Client, state: RefState) -> ObjectRef {
        ObjectRef {
            cell: Arc::new(RefCell {
                state: watch::Sender::new(state),
                info: parking_lot::Mutex::new(None),
                store: store.clone(),
                borrowed: false,
                call: parking_lot::Mutex::new(None),
            }),
        }
    }

    /// Ends a pending reference with its call's outcome.
    pub(super) fn settle(&self, outcome: Result<(RefState, CallInfo), Error>) {
        let (state, info) = match outcome {
            Ok((state, info)) => (state, Some(info)),
            Err(e) => (RefState::Failed(e), None),
        };
        let object = match &state {
            RefState::Object { id, .. } => Some(*id),
            _ => None,
        };
        if let Some(id) = object {
            // Ownership is declared before anyone can drop the reference, so its free follows
            // its own.
            self.cell.store.own(&[id]);
        }
        // Before the state, so that whoever sees the value also sees where it ran.
        if let Some(info) = info {
            *self.cell.info.lock() = Some(info);
        }
        // One cancelled meanwhile keeps its error.
        let taken = self.end(state);
        if let (false, Some(id)) = (taken, object) {
            // Nobody can read this result: its object goes at once.
            self.cell.store.free(&[id]);
        }
    }

    /// Moves a pending reference to its final `state`; false (and nothing changes) when it
    /// has one already: the call's outcome and a cancel race, and the first one stays.
    fn end(&self, state: RefState) -> bool {
        let mut state = Some(state);
        self.cell.state.send_if_modified(|s| match state.take() {
            Some(new) if matches!(s, RefState::Pending) => {
                *s = new;
                true
            }
            _ => false,
        })
    }

    /// Makes this pending reference cancellable: `task` runs the stateless call to `function`
    /// whose result it is.
    pub(super) fn set_call(&self, task: tokio::task::AbortHandle, function: String) {
        *self.cell.call.lock() = Some((task, function));
    }

    /// Cancels the stateless call whose result this is, if it has not ended: its reference
    /// fails with [`Error::Cancelled`] at once and the call's request is dropped, which makes
    /// the node's proxy cancel it in the function process (a call still queued there never
    /// runs; a running one finishes and its result is discarded). Returns whether the call
    /// was cancelled: false once it has ended, and for a reference that is not a stateless
    /// call's (a put, a stateful instance's call: openYuanrong ignores those too).
    pub fn cancel(&self) -> bool {
        let Some((task, function)) = self.cell.call.lock().take() else {
            return false;
        };
        let cancelled = self.end(RefState::Failed(Error::Cancelled(function)));
        if cancelled {
            task.abort();
        }
        cancelled
    }

    /// Whether `other` is a clone of this reference (the same value, not an equal one).
    pub fn same(&self, other: &ObjectRef) -> bool {
        Arc::ptr_eq(&self.cell, &other.cell)
    }

    /// A number that is the same for clones of this reference and differs between live
    /// references (for hashing).
    pub fn identity(&self) -> usize {
        Arc::as_ptr(&self.cell) as usize
    }

    /// Whether the value exists (or its call failed).
    pub fn is_ready(&self) -> bool {
        !matches!(&*self.cell.state.borrow(), RefState::Pending)
    }

    /// The object's ID once it is stored in a data worker.
    pub fn id(&self) -> Option<ObjectId> {
        match &*self.cell.state.borrow() {
            RefState::Object { id, .. } => Some(*id),
            _ => None,
        }
    }

    /// The node holding the primary copy, once stored.
    pub fn node_id(&self) -> Option<String> {
        match &*self.cell.state.borrow() {
            RefState::Object { node_id, .. } => Some(node_id.clone()),
            _ => None,
        }
    }

    /// The stored object as (ID, size, node), once it is one (not for inline values).
    pub fn object(&self) -> Option<(ObjectId, u64, String)> {
        match &*self.cell.state.borrow() {
            RefState::Object { id, size, node_id } => Some((*id, *size, node_id.clone())),
            _ => None,
        }
    }

    /// The value's size once ready.
    pub fn size(&self) -> Option<u64> {
        match &*self.cell.state.borrow() {
            RefState::Object { size, .. } => Some(*size),
            RefState::Inline(v) => Some(v.len() as u64),
            _ => None,
        }
    }

    /// Where and how the call that made this value ran (for call results).
    pub fn call_info(&self) -> Option<CallInfo> {
        self.cell.info.lock().clone()
    }

    /// Waits for a final state (never [`RefState::Pending`]).
    pub(super) async fn ready(&self) -> RefState {
        let mut rx = self.cell.state.subscribe();
        let r = match rx.wait_for(|s| !matches!(s, RefState::Pending)).await {
            Ok(s) => s.clone(),
            Err(_) => RefState::Failed(Error::Platform {
                function: String::new(),
                message: "the call was abandoned".into(),
                kind: yr_proto::ErrorKind::ErrorInternal,
            }),
        };
        r
    }
}

/// A value read back: shared memory (zero-copy) or bytes that came inline.
pub enum Bytes {
    /// A view into this node's data worker.
    Shared(ObjectGuard),
    /// A small value that came in the call's reply.
    Inline(Arc<Vec<u8>>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Shared(g) => g,
            Bytes::Inline(v) => v,
        }
    }
}

impl Bytes {
    /// The bytes as plain numbers, in place.
    pub fn as_slice<T: bytemuck::Pod>(&self) -> Result<&[T], Error> {
        bytemuck::try_cast_slice(self).map_err(|e| {
            Error::Codec(format!(
                "{} bytes are not a slice of {}: {e}",
                self.len(),
                std::any::type_name::<T>()
            ))
        })
    }

    /// Whether this is a view into shared memory (not a copy).
    pub fn is_shared(&self) -> bool {
        matches!(self, Bytes::Shared(_))
    }
}

impl Yr {
    /// Stores a value (serialised) in this node's data worker.
    pub fn put<T: Serialize + ?Sized>(&self, v: &T) -> Result<ObjectRef, Error> {
        let b = bincode::serialize(v).map_err(|e| Error::Codec(format!("put: {e}")))?;
        self.put_bytes(&b)
    }

    /// Stores raw bytes in this node's data worker (one copy).
    pub fn put_bytes(&self, b: &[u8]) -> Result<ObjectRef, Error> {
        let id = self.d.store.new_id();
        self.d.store.put(id, b)?;
        Ok(self.owned(id, b.len() as u64))
    }

    /// A new object of `len` bytes in this node's shared memory, to fill in
    /// place and [`DriverObject::seal`].
    pub fn create_object(&self, len: usize) -> Result<DriverObject<'_>, Error> {
        self.create_object_with_meta(len, &[])
    }

    /// Like [`Yr::create_object`], with `meta` as the object's metadata (which says how to read
    /// the bytes, e.g. the Python package's layout of a pickled value and its buffers).
    pub fn create_object_with_meta(
        &self,
        len: usize,
        meta: &[u8],
    ) -> Result<DriverObject<'_>, Error> {
        let id = self.d.store.new_id();
        let mut b = self.d.store.create(id, len, meta.len())?;
        b.meta_mut().copy_from_slice(meta);
        Ok(DriverObject { yr: self, b })
    }

    /// A reference to the object `id` (of `size` bytes, on `node_id`) that another process owns
    /// (it came inside a value): readable while its owner keeps it, never freed through this
    /// reference.
    pub fn borrowed(&self, id: ObjectId, size: u64, node_id: &str) -> ObjectRef {
        ObjectRef {
            cell: Arc::new(RefCell {
                state: watch::Sender::new(RefState::Object {
                    id,
                    size,
                    node_id: node_id.to_string(),
                }),
                info: parking_lot::Mutex::new(None),
                store: self.d.store.clone(),
                borrowed: true,
                call: parking_lot::Mutex::new(None),
            }),
        }
    }

    fn owned(&self, id: ObjectId, size: u64) -> ObjectRef {
        self.d.store.own(&[id]);
        ObjectRef::new(
            &self.d.store,
            RefState::Object {
                id,
                size,
                node_id: self.d.node_id.clone(),
            },
        )
    }

    fn wait_one(&self, r: &ObjectRef, timeout: Duration) -> Result<RefState, Error> {
        self.d
            .block_on(async { tokio::time::timeout(timeout, r.ready()).await })?
            .map_err(|_| Error::Timeout(format!("{r:?} not ready after {timeout:?}")))
    }

    /// The value's bytes: a zero-copy view when it is an object (pulled to
    /// this node first if it lives elsewhere).
    pub fn get_bytes(&self, r: &ObjectRef, timeout: Duration) -> Result<Bytes, Error> {
        let t0 = Instant::now();
        match self.wait_one(r, timeout)? {
            RefState::Inline(v) => Ok(Bytes::Inline(v)),
            RefState::Object { id, node_id, .. } => {
                let left = timeout.saturating_sub(t0.elapsed());
                let g = self
                    .d
                    .store
                    .get_remote(id, left)
                    .map_err(|e| match Error::from(e) {
                        Error::ObjectLost(m) => Error::ObjectLost(format!("{m} (node {node_id})")),
                        other => other,
                    })?;
                Ok(Bytes::Shared(g))
            }
            RefState::Failed(e) => Err(e),
            RefState::Pending => Err(Error::Timeout(format!("{r:?} not ready"))),
        }
    }

    /// The value decoded as `T`.
    pub fn get<T: DeserializeOwned>(&self, r: &ObjectRef, timeout: Duration) -> Result<T, Error> {
        let b = self.get_bytes(r, timeout)?;
        bincode::deserialize(&b).map_err(|e| {
            Error::Codec(format!(
                "the value of {r:?} is not a {}: {e}",
                std::any::type_name::<T>()
            ))
        })
    }

    /// Waits until `num` of `refs` are ready or `timeout` passes; returns
    /// (ready, not ready), ready ones in the order they finished.
    pub fn wait(
        &self,
        refs: &[ObjectRef],
        num: usize,
        timeout: Duration,
    ) -> Result<(Vec<ObjectRef>, Vec<ObjectRef>), Error> {
        let num = num.min(refs.len());
        self.d.block_on(async {
            let deadline = tokio::time::Instant::now() + timeout;
            let mut pending: Vec<ObjectRef> = Vec::new();
            let mut ready: Vec<ObjectRef> = Vec::new();
            for r in refs {
                if r.is_ready() {
                    ready.push(r.clone());
                } else {
                    pending.push(r.clone());
                }
            }
            let mut set = tokio::task::JoinSet::new();
            for (i, r) in pending.iter().enumerate() {
                let r = r.clone();
                set.spawn(async move {
                    r.ready().await;
                    i
                });
            }
            let mut done = vec![false; pending.len()];
            while ready.len() < num {
                match tokio::time::timeout_at(deadline, set.join_next()).await {
                    Ok(Some(Ok(i))) => {
                        done[i] = true;
                        ready.push(pending[i].clone());
                    }
                    _ => break,
                }
            }
            set.abort_all();
            let rest = pending
                .into_iter()
                .zip(done)
                .filter(|(_, d)| !d)
                .map(|(r, _)| r)
                .collect();
            (ready, rest)
        })
    }
}

/// An object the driver is writing in place (see [`Yr::create_object`]).
pub struct DriverObject<'a> {
    yr: &'a Yr,
    b: ObjectBuilder,
}

impl DriverObject<'_> {
    /// Publishes the object and returns a reference the driver owns.
    pub fn seal(self) -> Result<ObjectRef, Error> {
        let id = self.b.id();
        let size = self.b.len() as u64;
        self.b.seal()?;
        Ok(self.yr.owned(id, size))
    }
}

impl std::ops::Deref for DriverObject<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.b.data()
    }
}

impl std::ops::DerefMut for DriverObject<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.b.data_mut()
    }
}
