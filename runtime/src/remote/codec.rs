//! The value codec: how a call's arguments and results are represented on both ends.
//!
//! A function returns a [`Value`] (bincode bytes, raw bytes, or an object it sealed in shared
//! memory) and reads its [`Args`] (inline bytes, or zero-copy views of objects). A driver
//! decodes a reply's `TaskResult` into the state of the call's [`ObjectRef`](super::ObjectRef).
//!
//! Invariants: values written with [`Value::of`] or `Task::arg` are bincode and read back with
//! [`Args::get`] or `Yr::get`; an object ID on the wire is exactly `ObjectId`'s length (anything
//! else is refused, never padded). Decoding here does no I/O.

use prost::Message;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use yr_datastore::{ObjectGuard, ObjectId};
use yr_proto::{task_result, TaskResult};

use super::object::{CallInfo, RefState};
use crate::error::Error;

/// What a function returns.
#[derive(Debug)]
pub enum Value {
    /// Bytes (a serialised value, or raw bytes).
    Bytes(Vec<u8>),
    /// An object already sealed in this node's data worker.
    Object {
        /// The object.
        id: ObjectId,
        /// Its size.
        size: u64,
    },
}

impl Value {
    /// A value serialised with bincode (what [`Yr::get`](super::Yr::get) and [`Args::get`]
    /// decode).
    pub fn of<T: Serialize + ?Sized>(v: &T) -> Result<Value, String> {
        bincode::serialize(v)
            .map(Value::Bytes)
            .map_err(|e| format!("cannot encode the result: {e}"))
    }

    /// Raw bytes.
    pub fn bytes(b: impl Into<Vec<u8>>) -> Value {
        Value::Bytes(b.into())
    }
}

/// One argument as the function sees it.
pub enum ArgData {
    /// Bytes that came in the call.
    Inline(Vec<u8>),
    /// A view of an object in this node's data worker.
    Object(ObjectGuard),
}

/// A call's arguments, in order. Object arguments are views into this
/// node's shared memory: reading them copies nothing.
pub struct Args {
    items: Vec<ArgData>,
}

impl Args {
    pub(super) fn new(items: Vec<ArgData>) -> Args {
        Args { items }
    }

    /// Number of arguments.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The raw bytes of argument `i` (zero-copy for object arguments).
    pub fn bytes(&self, i: usize) -> Result<&[u8], String> {
        match self.items.get(i) {
            Some(ArgData::Inline(v)) => Ok(v),
            Some(ArgData::Object(g)) => Ok(g),
            None => Err(format!(
                "argument {i} is missing: the call has {} arguments",
                self.items.len()
            )),
        }
    }

    /// Argument `i` decoded (it was passed with `arg` or `put`).
    pub fn get<T: DeserializeOwned>(&self, i: usize) -> Result<T, String> {
        bincode::deserialize(self.bytes(i)?)
            .map_err(|e| format!("argument {i} is not a {}: {e}", std::any::type_name::<T>()))
    }

    /// Argument `i` as a slice of plain numbers, in place (zero-copy).
    pub fn slice<T: bytemuck::Pod>(&self, i: usize) -> Result<&[T], String> {
        bytemuck::try_cast_slice(self.bytes(i)?).map_err(|e| {
            format!(
                "argument {i} is not a slice of {}: {e}",
                std::any::type_name::<T>()
            )
        })
    }

    /// Whether argument `i` is a view into shared memory (not a copy).
    pub fn is_shared(&self, i: usize) -> bool {
        matches!(self.items.get(i), Some(ArgData::Object(_)))
    }
}

/// An object ID from its wire bytes; `None` unless they are exactly an ID's length.
pub(super) fn object_id(b: &[u8]) -> Option<ObjectId> {
    let mut id = ObjectId::default();
    if b.len() != id.0.len() {
        return None;
    }
    id.0.copy_from_slice(b);
    Some(id)
}

/// A successful reply's payload (a `TaskResult`) as the state of the call's reference and
/// where the call ran. `label` names the call in errors.
pub(super) fn decode_result(label: &str, payload: &[u8]) -> Result<(RefState, CallInfo), Error> {
    let r = TaskResult::decode(payload).map_err(|e| Error::Platform {
        function: label.to_string(),
        message: format!(
            "the reply is not a task result ({e}); is {label} a yr_runtime::Builder function?"
        ),
        kind: yr_proto::ErrorKind::ErrorInternal,
    })?;
    let info = CallInfo {
        node_id: r.node_id.clone(),
        instance_id: r.instance_id.clone(),
        elapsed: Duration::from_micros(r.elapsed_us),
        fetch: Duration::from_micros(r.fetch_us),
    };
    let state = match r.kind {
        Some(task_result::Kind::Value(v)) => RefState::Inline(Arc::new(v)),
        Some(task_result::Kind::Object(o)) => RefState::Object {
            id: object_id(&o.id).ok_or_else(|| Error::Platform {
                function: label.to_string(),
                message: "the result names a malformed object ID".into(),
                kind: yr_proto::ErrorKind::ErrorInternal,
            })?,
            size: o.size,
            node_id: o.node_id,
        },
        None => RefState::Inline(Arc::new(Vec::new())),
    };
    Ok((state, info))
}

#[cfg(test)]
mod tests {
    use super::*;
    use yr_proto::ObjectRefMsg;

    #[test]
    fn args_decode_inline_values_and_name_what_is_wrong() {
        let args = Args {
            items: vec![
                ArgData::Inline(bincode::serialize(&(7u64, "x".to_string())).unwrap_or_default()),
                ArgData::Inline(bytemuck::cast_slice::<u32, u8>(&[1, 2, 3]).to_vec()),
            ],
        };
        assert_eq!(args.len(), 2);
        assert_eq!(args.get::<(u64, String)>(0), Ok((7, "x".to_string())));
        assert_eq!(args.slice::<u32>(1).map(|s| s.to_vec()), Ok(vec![1, 2, 3]));
        assert!(!args.is_shared(0));
        let missing = args.bytes(5).expect_err("out of range");
        assert!(missing.contains("argument 5 is missing"), "{missing}");
        let wrong = args.get::<String>(1).expect_err("not a string");
        assert!(wrong.contains("argument 1"), "{wrong}");
        // 12 bytes are not a whole number of u64s.
        assert!(args.slice::<u64>(1).is_err());
    }

    #[test]
    fn results_decode_or_say_what_they_are() {
        let id = ObjectId::random(5);
        let r = TaskResult {
            kind: Some(task_result::Kind::Object(ObjectRefMsg {
                id: id.0.to_vec(),
                size: 99,
                node_id: "n1".into(),
            })),
            node_id: "n1".into(),
            instance_id: "i1".into(),
            elapsed_us: 1500,
            fetch_us: 500,
        };
        let (state, info) = decode_result("f", &r.encode_to_vec()).expect("decodes");
        assert!(matches!(state, RefState::Object { id: got, size: 99, .. } if got == id));
        assert_eq!(info.elapsed, Duration::from_micros(1500));
        assert_eq!(info.node_id, "n1");
        let bad = TaskResult {
            kind: Some(task_result::Kind::Object(ObjectRefMsg {
                id: vec![1, 2, 3],
                ..Default::default()
            })),
            ..Default::default()
        };
        assert!(decode_result("f", &bad.encode_to_vec()).is_err());
        let e = decode_result("f", b"\xff\xff not protobuf")
            .err()
            .map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("not a task result")));
    }

    #[test]
    fn object_ids_are_exactly_their_length() {
        let id = ObjectId::random(3);
        assert_eq!(object_id(&id.0), Some(id));
        assert_eq!(object_id(&id.0[1..]), None);
        assert_eq!(object_id(&[id.0.as_slice(), &[0]].concat()), None);
    }
}
