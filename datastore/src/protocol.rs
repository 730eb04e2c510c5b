//! The client ↔ data worker wire protocol.
//!
//! Every message travels in a frame: a little-endian `u32` body length
//! followed by the body. A body starts with a one-byte tag and continues
//! with the tag's fields in a fixed order (integers little-endian, byte
//! strings as `u32` length + bytes, lists as `u32` count + items).
//!
//! The protocol is versioned once per connection: the first request must be
//! [`Request::Hello`] carrying [`PROTOCOL_VERSION`]; the worker answers with
//! [`Response::Hello`] and passes the arena's memfd in the same `sendmsg`
//! (SCM_RIGHTS). A worker refuses other versions with
//! [`ErrorCode::VersionMismatch`].
//!
//! Invariants the decoder keeps, because its input comes from other
//! processes: it never panics, never allocates more than the frame it was
//! given can justify (counts are checked against the bytes left), and
//! rejects trailing bytes, so every accepted frame has exactly one meaning.
//! Requests have no sequence number: a connection's replies come back in
//! request order, and [`Request::Release`] is the only request without a
//! reply (so dropping a view never waits for a round trip).

use crate::id::{ObjectId, OBJECT_ID_LEN};
use std::io::{self, Read, Write};

/// Version spoken by this build; bumped on any incompatible change.
pub const PROTOCOL_VERSION: u16 = 2;
/// Largest request body the worker accepts. Large objects never travel
/// through the socket (they are written into shared memory), so requests
/// stay small; a bigger frame is an error and ends the connection.
pub const MAX_REQUEST_FRAME: usize = 1 << 20;
/// Largest response body a client accepts (a long `List` reply).
pub const MAX_RESPONSE_FRAME: usize = 256 << 20;
/// Objects up to this size are sent inline with [`Request::PutInline`]:
/// one round trip instead of create + seal.
pub const INLINE_MAX: usize = 64 << 10;
/// Longest KV key.
pub const MAX_KEY_LEN: usize = 255;

/// Machine-readable error kinds carried in replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    /// No such object or key.
    NotFound = 1,
    /// A get waited for its whole timeout without the object being sealed.
    Timeout = 2,
    /// An object with this ID already exists.
    AlreadyExists = 3,
    /// Memory and spill space are both exhausted.
    OutOfMemory = 4,
    /// The object is larger than the whole arena.
    TooLarge = 5,
    /// The operation does not fit the object's state (seal twice, abort a sealed object...).
    InvalidState = 6,
    /// The request was malformed.
    BadRequest = 7,
    /// The client speaks another protocol version.
    VersionMismatch = 8,
    /// Spilled bytes failed their checksum or could not be read back.
    SpillFailed = 9,
    /// Something went wrong inside the worker.
    Internal = 10,
    /// The only node holding the object is gone (unreachable, or restarted
    /// since the object was made): the bytes cannot be fetched.
    ObjectLost = 11,
}

impl ErrorCode {
    fn from_u16(v: u16) -> Option<Self> {
        use ErrorCode::*;
        Some(match v {
            1 => NotFound,
            2 => Timeout,
            3 => AlreadyExists,
            4 => OutOfMemory,
            5 => TooLarge,
            6 => InvalidState,
            7 => BadRequest,
            8 => VersionMismatch,
            9 => SpillFailed,
            10 => Internal,
            11 => ObjectLost,
            _ => return None,
        })
    }
}

/// An error as carried on the wire: a kind and a human-readable message
/// that names the object and the numbers involved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorReply {
    /// The kind.
    pub code: ErrorCode,
    /// What happened, for a person.
    pub message: String,
}

/// Where a sealed object's bytes are in the arena.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectView {
    /// Offset of the data in the arena; the metadata follows the data.
    pub offset: u64,
    /// Length of the data part.
    pub data_size: u64,
    /// Length of the metadata part.
    pub meta_size: u64,
}

/// Object state as reported by `List`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ObjectState {
    /// Created, being written.
    Unsealed = 0,
    /// Sealed and in memory.
    Sealed = 1,
    /// Sealed and on disk only.
    Spilled = 2,
}

/// One row of a `List` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The object.
    pub id: ObjectId,
    /// Data length.
    pub data_size: u64,
    /// Metadata length.
    pub meta_size: u64,
    /// Where it is.
    pub state: ObjectState,
    /// Number of pins held on it by all clients.
    pub pins: u32,
}

/// Store counters (the `Stats` reply). Sizes are in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreStats {
    /// Arena size.
    pub capacity: u64,
    /// Bytes of the arena held by objects (allocation granularity included).
    pub used: u64,
    /// Largest single create that fits right now without spilling (lower bound).
    pub largest_free: u64,
    /// Sealed objects in memory.
    pub sealed: u64,
    /// Objects being written.
    pub unsealed: u64,
    /// Objects on disk only.
    pub spilled: u64,
    /// Bytes of spilled objects.
    pub spilled_bytes: u64,
    /// Spill space in use on disk.
    pub spill_used: u64,
    /// Spill space limit (`u64::MAX` = unbounded).
    pub spill_limit: u64,
    /// Objects with at least one pin.
    pub pinned: u64,
    /// Connected clients.
    pub clients: u64,
    /// Objects written to disk since start.
    pub spill_ops: u64,
    /// Objects read back from disk since start.
    pub restore_ops: u64,
    /// Named keys.
    pub kv_keys: u64,
    /// Heap bytes of the store's own tables.
    pub meta_bytes: u64,
    /// Gets currently blocked waiting for an object or key.
    pub waiters: u64,
    /// Secondary copies held here (objects pulled from other nodes).
    pub secondary: u64,
    /// Pulls this node made from other nodes (one per object fetched).
    pub pulls: u64,
    /// Gets that joined a pull already in flight instead of starting one.
    pub pull_joins: u64,
    /// Bytes pulled from other nodes.
    pub pulled_bytes: u64,
    /// Pulls this node served to other nodes.
    pub serves: u64,
}

/// Client → worker messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// First message on a connection.
    Hello {
        /// Must equal [`PROTOCOL_VERSION`].
        version: u16,
        /// Client process ID (for logs).
        pid: u32,
        /// Client name (for logs).
        name: String,
    },
    /// Reserve space for an object; replies `Created`.
    Create {
        /// The new object.
        id: ObjectId,
        /// Data length.
        data_size: u64,
        /// Metadata length.
        meta_size: u64,
    },
    /// Make a created object immutable and visible.
    Seal {
        /// The object.
        id: ObjectId,
    },
    /// Create, copy and seal a small object in one round trip.
    PutInline {
        /// The new object.
        id: ObjectId,
        /// Its data.
        data: Vec<u8>,
        /// Its metadata.
        meta: Vec<u8>,
    },
    /// Pin and locate objects, waiting up to `timeout_ms` for absent or unsealed ones.
    Get {
        /// How long to wait.
        timeout_ms: u64,
        /// The objects.
        ids: Vec<ObjectId>,
    },
    /// Drop one pin taken by `Get`; no reply.
    Release {
        /// The object.
        id: ObjectId,
    },
    /// Delete objects (deferred while pinned).
    Delete {
        /// The objects.
        ids: Vec<ObjectId>,
    },
    /// Discard an unsealed object.
    Abort {
        /// The object.
        id: ObjectId,
    },
    /// Whether a sealed object exists (in memory or spilled).
    Contains {
        /// The object.
        id: ObjectId,
    },
    /// List up to `limit` objects.
    List {
        /// Maximum rows.
        limit: u32,
    },
    /// Store counters.
    Stats,
    /// Bind a key to a sealed object (replacing and deleting any previous one).
    KvBind {
        /// The key (≤ [`MAX_KEY_LEN`] bytes).
        key: Vec<u8>,
        /// A sealed object.
        id: ObjectId,
    },
    /// Pin and locate the object bound to a key.
    KvGet {
        /// The key.
        key: Vec<u8>,
        /// How long to wait for the key to appear.
        timeout_ms: u64,
    },
    /// Remove a key (and its object).
    KvDel {
        /// The key.
        key: Vec<u8>,
    },
    /// Whether a key exists.
    KvExists {
        /// The key.
        key: Vec<u8>,
    },
    /// Operator request: spill unpinned objects now until the arena holds at
    /// most `target_used` bytes (frees memory ahead of a big job; also how
    /// the benchmark times the spill path).
    Spill {
        /// Usage to get down to.
        target_used: u64,
    },
    /// Pin and locate an object that may live on another node: the ID's
    /// node tag names the data worker holding the primary copy, which this
    /// worker pulls it from (once, however many clients ask) into a local
    /// secondary copy. Replies `Objects` with one result.
    GetRemote {
        /// How long the primary may wait for the object to be sealed.
        timeout_ms: u64,
        /// The object.
        id: ObjectId,
    },
    /// This client owns these objects (wherever they live): when it frees
    /// them or disconnects, the worker deletes every copy on every node.
    /// No reply.
    Own {
        /// The objects.
        ids: Vec<ObjectId>,
    },
    /// The owner dropped its last reference: delete every copy of these
    /// objects, on this node and on the others. No reply.
    Free {
        /// The objects.
        ids: Vec<ObjectId>,
    },
}

/// One entry of an `Objects` reply.
pub type ObjectResult = Result<ObjectView, ErrorReply>;

/// Worker → client messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// Handshake reply; the arena memfd travels with it.
    Hello {
        /// The worker's protocol version.
        version: u16,
        /// Arena length to map.
        arena_size: u64,
        /// Whether the worker pre-faulted the arena (the client then pre-faults its mapping too).
        prefaulted: bool,
        /// This connection's ID in the worker's logs.
        client_id: u64,
        /// The worker's node tag: the first eight bytes of the IDs of objects
        /// whose primary copy lives here (see [`crate::id::NodeTag`]).
        node_tag: u64,
    },
    /// Success without data.
    Ok,
    /// Space reserved at `offset` (data, then metadata).
    Created {
        /// Arena offset.
        offset: u64,
    },
    /// One result per requested object, in request order.
    Objects(Vec<ObjectResult>),
    /// A yes/no answer.
    Bool(bool),
    /// One result per object of a `Delete`.
    Results(Vec<Result<(), ErrorReply>>),
    /// `List` rows.
    List(Vec<ObjectInfo>),
    /// Counters.
    Stats(StoreStats),
    /// The object bound to a key, pinned.
    KvObject {
        /// The object (release it by this ID).
        id: ObjectId,
        /// Where it is.
        view: ObjectView,
    },
    /// The request failed.
    Error(ErrorReply),
    /// Result of a `Spill`.
    Spilled {
        /// Arena bytes freed.
        bytes: u64,
        /// Time the spill took inside the worker.
        nanos: u64,
    },
}

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The body ended inside a field.
    #[error("frame truncated: needed {needed} more bytes for {what}")]
    Truncated {
        /// Missing byte count.
        needed: usize,
        /// Field being read.
        what: &'static str,
    },
    /// The first byte names no message.
    #[error("unknown message tag {0}")]
    UnknownTag(u8),
    /// A field holds a value outside its domain.
    #[error("invalid value for {what}: {value}")]
    Invalid {
        /// Field.
        what: &'static str,
        /// Offending value.
        value: u64,
    },
    /// Bytes remained after the last field.
    #[error("{0} unexpected trailing bytes")]
    Trailing(usize),
    /// A string field is not UTF-8.
    #[error("{0} is not valid UTF-8")]
    Utf8(&'static str),
}

pub(crate) struct Writer(pub(crate) Vec<u8>);

impl Writer {
    pub(crate) fn with_tag(tag: u8) -> Self {
        let mut v = Vec::with_capacity(64);
        v.extend_from_slice(&[0, 0, 0, 0, tag]);
        Writer(v)
    }
    pub(crate) fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub(crate) fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn len(&mut self, n: usize) {
        self.u32(u32::try_from(n).unwrap_or(u32::MAX));
    }
    pub(crate) fn bytes(&mut self, b: &[u8]) {
        self.len(b.len());
        self.0.extend_from_slice(b);
    }
    pub(crate) fn id(&mut self, id: &ObjectId) {
        self.0.extend_from_slice(&id.0);
    }
    pub(crate) fn ids(&mut self, ids: &[ObjectId]) {
        self.len(ids.len());
        for id in ids {
            self.id(id);
        }
    }
    pub(crate) fn err(&mut self, e: &ErrorReply) {
        self.u16(e.code as u16);
        self.bytes(e.message.as_bytes());
    }
    pub(crate) fn view(&mut self, v: &ObjectView) {
        self.u64(v.offset);
        self.u64(v.data_size);
        self.u64(v.meta_size);
    }
    /// Fills in the length prefix and returns the whole frame.
    pub(crate) fn finish(mut self) -> Vec<u8> {
        let body = (self.0.len() - 4) as u32;
        self.0[..4].copy_from_slice(&body.to_le_bytes());
        self.0
    }
}

pub(crate) struct Reader<'a> {
    pub(crate) buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated {
                needed: n - self.buf.len(),
                what,
            });
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    pub(crate) fn array<const N: usize>(
        &mut self,
        what: &'static str,
    ) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }
    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }
    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    pub(crate) fn bool(&mut self, what: &'static str) -> Result<bool, DecodeError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(DecodeError::Invalid {
                what,
                value: v.into(),
            }),
        }
    }
    /// A count of items each at least `item_size` bytes long; checked
    /// against the remaining bytes so a hostile count cannot make us
    /// allocate more than the frame holds.
    pub(crate) fn count(
        &mut self,
        item_size: usize,
        what: &'static str,
    ) -> Result<usize, DecodeError> {
        let n = self.u32(what)? as usize;
        let need = n.saturating_mul(item_size.max(1));
        if need > self.buf.len() {
            return Err(DecodeError::Truncated {
                needed: need - self.buf.len(),
                what,
            });
        }
        Ok(n)
    }
    pub(crate) fn bytes(&mut self, what: &'static str) -> Result<Vec<u8>, DecodeError> {
        let n = self.count(1, what)?;
        Ok(self.take(n, what)?.to_vec())
    }
    pub(crate) fn string(&mut self, what: &'static str) -> Result<String, DecodeError> {
        String::from_utf8(self.bytes(what)?).map_err(|_| DecodeError::Utf8(what))
    }
    pub(crate) fn key(&mut self) -> Result<Vec<u8>, DecodeError> {
        let k = self.bytes("key")?;
        if k.len() > MAX_KEY_LEN {
            return Err(DecodeError::Invalid {
                what: "key length",
                value: k.len() as u64,
            });
        }
        Ok(k)
    }
    pub(crate) fn id(&mut self) -> Result<ObjectId, DecodeError> {
        Ok(ObjectId(self.array::<OBJECT_ID_LEN>("object id")?))
    }
    pub(crate) fn ids(&mut self) -> Result<Vec<ObjectId>, DecodeError> {
        let n = self.count(OBJECT_ID_LEN, "id count")?;
        (0..n).map(|_| self.id()).collect()
    }
    pub(crate) fn err(&mut self) -> Result<ErrorReply, DecodeError> {
        let raw = self.u16("error code")?;
        let code = ErrorCode::from_u16(raw).ok_or(DecodeError::Invalid {
            what: "error code",
            value: raw.into(),
        })?;
        Ok(ErrorReply {
            code,
            message: self.string("error message")?,
        })
    }
    pub(crate) fn view(&mut self) -> Result<ObjectView, DecodeError> {
        Ok(ObjectView {
            offset: self.u64("offset")?,
            data_size: self.u64("data size")?,
            meta_size: self.u64("meta size")?,
        })
    }
    pub(crate) fn end(self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Trailing(self.buf.len()))
        }
    }
}

impl Request {
    /// Encodes the request as a complete frame (length prefix included).
    pub fn encode(&self) -> Vec<u8> {
        let mut w;
        match self {
            Request::Hello { version, pid, name } => {
                w = Writer::with_tag(1);
                w.u16(*version);
                w.u32(*pid);
                w.bytes(name.as_bytes());
            }
            Request::Create {
                id,
                data_size,
                meta_size,
            } => {
                w = Writer::with_tag(2);
                w.id(id);
                w.u64(*data_size);
                w.u64(*meta_size);
            }
            Request::Seal { id } => {
                w = Writer::with_tag(3);
                w.id(id);
            }
            Request::PutInline { id, data, meta } => {
                w = Writer::with_tag(4);
                w.id(id);
                w.bytes(data);
                w.bytes(meta);
            }
            Request::Get { timeout_ms, ids } => {
                w = Writer::with_tag(5);
                w.u64(*timeout_ms);
                w.ids(ids);
            }
            Request::Release { id } => {
                w = Writer::with_tag(6);
                w.id(id);
            }
            Request::Delete { ids } => {
                w = Writer::with_tag(7);
                w.ids(ids);
            }
            Request::Abort { id } => {
                w = Writer::with_tag(8);
                w.id(id);
            }
            Request::Contains { id } => {
                w = Writer::with_tag(9);
                w.id(id);
            }
            Request::List { limit } => {
                w = Writer::with_tag(10);
                w.u32(*limit);
            }
            Request::Stats => w = Writer::with_tag(11),
            Request::KvBind { key, id } => {
                w = Writer::with_tag(12);
                w.bytes(key);
                w.id(id);
            }
            Request::KvGet { key, timeout_ms } => {
                w = Writer::with_tag(13);
                w.bytes(key);
                w.u64(*timeout_ms);
            }
            Request::KvDel { key } => {
                w = Writer::with_tag(14);
                w.bytes(key);
            }
            Request::KvExists { key } => {
                w = Writer::with_tag(15);
                w.bytes(key);
            }
            Request::Spill { target_used } => {
                w = Writer::with_tag(16);
                w.u64(*target_used);
            }
            Request::GetRemote { timeout_ms, id } => {
                w = Writer::with_tag(17);
                w.u64(*timeout_ms);
                w.id(id);
            }
            Request::Own { ids } => {
                w = Writer::with_tag(18);
                w.ids(ids);
            }
            Request::Free { ids } => {
                w = Writer::with_tag(19);
                w.ids(ids);
            }
        }
        w.finish()
    }

    /// Decodes a request body (the frame without its length prefix).
    pub fn decode(body: &[u8]) -> Result<Request, DecodeError> {
        let mut r = Reader { buf: body };
        let req = match r.u8("tag")? {
            1 => Request::Hello {
                version: r.u16("version")?,
                pid: r.u32("pid")?,
                name: r.string("client name")?,
            },
            2 => Request::Create {
                id: r.id()?,
                data_size: r.u64("data size")?,
                meta_size: r.u64("meta size")?,
            },
            3 => Request::Seal { id: r.id()? },
            4 => Request::PutInline {
                id: r.id()?,
                data: r.bytes("data")?,
                meta: r.bytes("meta")?,
            },
            5 => Request::Get {
                timeout_ms: r.u64("timeout")?,
                ids: r.ids()?,
            },
            6 => Request::Release { id: r.id()? },
            7 => Request::Delete { ids: r.ids()? },
            8 => Request::Abort { id: r.id()? },
            9 => Request::Contains { id: r.id()? },
            10 => Request::List {
                limit: r.u32("limit")?,
            },
            11 => Request::Stats,
            12 => Request::KvBind {
                key: r.key()?,
                id: r.id()?,
            },
            13 => Request::KvGet {
                key: r.key()?,
                timeout_ms: r.u64("timeout")?,
            },
            14 => Request::KvDel { key: r.key()? },
            15 => Request::KvExists { key: r.key()? },
            16 => Request::Spill {
                target_used: r.u64("target")?,
            },
            17 => Request::GetRemote {
                timeout_ms: r.u64("timeout")?,
                id: r.id()?,
            },
            18 => Request::Own { ids: r.ids()? },
            19 => Request::Free { ids: r.ids()? },
            t => return Err(DecodeError::UnknownTag(t)),
        };
        r.end()?;
        Ok(req)
    }

    /// Whether the worker answers this request.
    pub fn expects_reply(&self) -> bool {
        !matches!(
            self,
            Request::Release { .. } | Request::Own { .. } | Request::Free { .. }
        )
    }
}

const STATS_FIELDS: usize = 21;

impl StoreStats {
    fn to_array(self) -> [u64; STATS_FIELDS] {
        [
            self.capacity,
            self.used,
            self.largest_free,
            self.sealed,
            self.unsealed,
            self.spilled,
            self.spilled_bytes,
            self.spill_used,
            self.spill_limit,
            self.pinned,
            self.clients,
            self.spill_ops,
            self.restore_ops,
            self.kv_keys,
            self.meta_bytes,
            self.waiters,
            self.secondary,
            self.pulls,
            self.pull_joins,
            self.pulled_bytes,
            self.serves,
        ]
    }
    fn from_array(a: [u64; STATS_FIELDS]) -> Self {
        StoreStats {
            capacity: a[0],
            used: a[1],
            largest_free: a[2],
            sealed: a[3],
            unsealed: a[4],
            spilled: a[5],
            spilled_bytes: a[6],
            spill_used: a[7],
            spill_limit: a[8],
            pinned: a[9],
            clients: a[10],
            spill_ops: a[11],
            restore_ops: a[12],
            kv_keys: a[13],
            meta_bytes: a[14],
            waiters: a[15],
            secondary: a[16],
            pulls: a[17],
            pull_joins: a[18],
            pulled_bytes: a[19],
            serves: a[20],
        }
    }
}

impl Response {
    /// Encodes the response as a complete frame (length prefix included).
    pub fn encode(&self) -> Vec<u8> {
        let mut w;
        match self {
            Response::Hello {
                version,
                arena_size,
                prefaulted,
                client_id,
                node_tag,
            } => {
                w = Writer::with_tag(1);
                w.u16(*version);
                w.u64(*arena_size);
                w.u8(u8::from(*prefaulted));
                w.u64(*client_id);
                w.u64(*node_tag);
            }
            Response::Ok => w = Writer::with_tag(2),
            Response::Created { offset } => {
                w = Writer::with_tag(3);
                w.u64(*offset);
            }
            Response::Objects(results) => {
                w = Writer::with_tag(4);
                w.len(results.len());
                for r in results {
                    match r {
                        Ok(v) => {
                            w.u8(0);
                            w.view(v);
                        }
                        Err(e) => {
                            w.u8(1);
                            w.err(e);
                        }
                    }
                }
            }
            Response::Bool(b) => {
                w = Writer::with_tag(5);
                w.u8(u8::from(*b));
            }
            Response::Results(results) => {
                w = Writer::with_tag(6);
                w.len(results.len());
                for r in results {
                    match r {
                        Ok(()) => w.u8(0),
                        Err(e) => {
                            w.u8(1);
                            w.err(e);
                        }
                    }
                }
            }
            Response::List(rows) => {
                w = Writer::with_tag(7);
                w.len(rows.len());
                for row in rows {
                    w.id(&row.id);
                    w.u64(row.data_size);
                    w.u64(row.meta_size);
                    w.u8(row.state as u8);
                    w.u32(row.pins);
                }
            }
            Response::Stats(s) => {
                w = Writer::with_tag(8);
                for v in s.to_array() {
                    w.u64(v);
                }
            }
            Response::KvObject { id, view } => {
                w = Writer::with_tag(9);
                w.id(id);
                w.view(view);
            }
            Response::Error(e) => {
                w = Writer::with_tag(10);
                w.err(e);
            }
            Response::Spilled { bytes, nanos } => {
                w = Writer::with_tag(11);
                w.u64(*bytes);
                w.u64(*nanos);
            }
        }
        w.finish()
    }

    /// Decodes a response body (the frame without its length prefix).
    pub fn decode(body: &[u8]) -> Result<Response, DecodeError> {
        let mut r = Reader { buf: body };
        let resp = match r.u8("tag")? {
            1 => Response::Hello {
                version: r.u16("version")?,
                arena_size: r.u64("arena size")?,
                prefaulted: r.bool("prefaulted")?,
                client_id: r.u64("client id")?,
                node_tag: r.u64("node tag")?,
            },
            2 => Response::Ok,
            3 => Response::Created {
                offset: r.u64("offset")?,
            },
            4 => {
                let n = r.count(1 + 3, "result count")?;
                let mut out = Vec::with_capacity(n);
                for _ in 0..n {
                    out.push(match r.u8("result tag")? {
                        0 => Ok(r.view()?),
                        1 => Err(r.err()?),
                        v => {
                            return Err(DecodeError::Invalid {
                                what: "result tag",
                                value: v.into(),
                            })
                        }
                    });
                }
                Response::Objects(out)
            }
            5 => Response::Bool(r.bool("bool")?),
            6 => {
                let n = r.count(1, "result count")?;
                let mut out = Vec::with_capacity(n);
                for _ in 0..n {
                    out.push(match r.u8("result tag")? {
                        0 => Ok(()),
                        1 => Err(r.err()?),
                        v => {
                            return Err(DecodeError::Invalid {
                                what: "result tag",
                                value: v.into(),
                            })
                        }
                    });
                }
                Response::Results(out)
            }
            7 => {
                let n = r.count(OBJECT_ID_LEN + 21, "row count")?;
                let mut rows = Vec::with_capacity(n);
                for _ in 0..n {
                    let id = r.id()?;
                    let data_size = r.u64("data size")?;
                    let meta_size = r.u64("meta size")?;
                    let state = match r.u8("state")? {
                        0 => ObjectState::Unsealed,
                        1 => ObjectState::Sealed,
                        2 => ObjectState::Spilled,
                        v => {
                            return Err(DecodeError::Invalid {
                                what: "state",
                                value: v.into(),
                            })
                        }
                    };
                    rows.push(ObjectInfo {
                        id,
                        data_size,
                        meta_size,
                        state,
                        pins: r.u32("pins")?,
                    });
                }
                Response::List(rows)
            }
            8 => {
                let mut a = [0u64; STATS_FIELDS];
                for v in a.iter_mut() {
                    *v = r.u64("stats field")?;
                }
                Response::Stats(StoreStats::from_array(a))
            }
            9 => Response::KvObject {
                id: r.id()?,
                view: r.view()?,
            },
            10 => Response::Error(r.err()?),
            11 => Response::Spilled {
                bytes: r.u64("bytes")?,
                nanos: r.u64("nanos")?,
            },
            t => return Err(DecodeError::UnknownTag(t)),
        };
        r.end()?;
        Ok(resp)
    }
}

/// Why reading a frame failed.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer closed the connection between frames.
    #[error("connection closed")]
    Closed,
    /// The length prefix exceeds the limit.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// A zero-length frame (no tag).
    #[error("empty frame")]
    Empty,
    /// Socket error (including EOF inside a frame).
    #[error("socket error: {0}")]
    Io(#[from] io::Error),
}

/// Reads one frame body into `buf` (reused across calls to avoid an
/// allocation per message).
pub fn read_frame<R: Read>(r: &mut R, buf: &mut Vec<u8>, max: usize) -> Result<(), FrameError> {
    let mut len = [0u8; 4];
    // Distinguish a clean close (EOF before any byte) from a torn frame.
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Err(FrameError::Closed),
            Ok(0) => return Err(FrameError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    if len == 0 {
        return Err(FrameError::Empty);
    }
    buf.clear();
    buf.resize(len, 0);
    r.read_exact(buf)?;
    Ok(())
}

/// Writes a complete frame (as made by `encode`).
pub fn write_frame<W: Write>(w: &mut W, frame: &[u8]) -> io::Result<()> {
    w.write_all(frame)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_id() -> impl Strategy<Value = ObjectId> {
        any::<[u8; OBJECT_ID_LEN]>().prop_map(ObjectId)
    }
    fn arb_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..max)
    }
    fn arb_code() -> impl Strategy<Value = ErrorCode> {
        (1u16..=10).prop_map(|c| ErrorCode::from_u16(c).expect("valid code"))
    }
    fn arb_err() -> impl Strategy<Value = ErrorReply> {
        (arb_code(), ".{0,40}").prop_map(|(code, message)| ErrorReply { code, message })
    }
    fn arb_view() -> impl Strategy<Value = ObjectView> {
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(offset, data_size, meta_size)| {
            ObjectView {
                offset,
                data_size,
                meta_size,
            }
        })
    }

    fn arb_request() -> impl Strategy<Value = Request> {
        prop_oneof![
            (any::<u16>(), any::<u32>(), ".{0,20}")
                .prop_map(|(version, pid, name)| Request::Hello { version, pid, name }),
            (arb_id(), any::<u64>(), any::<u64>()).prop_map(|(id, data_size, meta_size)| {
                Request::Create {
                    id,
                    data_size,
                    meta_size,
                }
            }),
            arb_id().prop_map(|id| Request::Seal { id }),
            (arb_id(), arb_bytes(300), arb_bytes(30))
                .prop_map(|(id, data, meta)| Request::PutInline { id, data, meta }),
            (any::<u64>(), proptest::collection::vec(arb_id(), 0..5))
                .prop_map(|(timeout_ms, ids)| Request::Get { timeout_ms, ids }),
            arb_id().prop_map(|id| Request::Release { id }),
            proptest::collection::vec(arb_id(), 0..5).prop_map(|ids| Request::Delete { ids }),
            arb_id().prop_map(|id| Request::Abort { id }),
            arb_id().prop_map(|id| Request::Contains { id }),
            any::<u32>().prop_map(|limit| Request::List { limit }),
            Just(Request::Stats),
            (arb_bytes(MAX_KEY_LEN + 1), arb_id())
                .prop_map(|(key, id)| Request::KvBind { key, id }),
            (arb_bytes(MAX_KEY_LEN + 1), any::<u64>())
                .prop_map(|(key, timeout_ms)| Request::KvGet { key, timeout_ms }),
            arb_bytes(MAX_KEY_LEN + 1).prop_map(|key| Request::KvDel { key }),
            arb_bytes(MAX_KEY_LEN + 1).prop_map(|key| Request::KvExists { key }),
            any::<u64>().prop_map(|target_used| Request::Spill { target_used }),
            (any::<u64>(), arb_id())
                .prop_map(|(timeout_ms, id)| Request::GetRemote { timeout_ms, id }),
            proptest::collection::vec(arb_id(), 0..5).prop_map(|ids| Request::Own { ids }),
            proptest::collection::vec(arb_id(), 0..5).prop_map(|ids| Request::Free { ids }),
        ]
    }

    fn arb_response() -> impl Strategy<Value = Response> {
        let stats = proptest::collection::vec(any::<u64>(), STATS_FIELDS)
            .prop_map(|v| {
                let mut a = [0u64; STATS_FIELDS];
                a.copy_from_slice(&v);
                a
            })
            .prop_map(StoreStats::from_array);
        let row = (arb_id(), any::<u64>(), any::<u64>(), 0u8..3, any::<u32>()).prop_map(
            |(id, data_size, meta_size, s, pins)| ObjectInfo {
                id,
                data_size,
                meta_size,
                state: match s {
                    0 => ObjectState::Unsealed,
                    1 => ObjectState::Sealed,
                    _ => ObjectState::Spilled,
                },
                pins,
            },
        );
        prop_oneof![
            (
                any::<u16>(),
                any::<u64>(),
                any::<bool>(),
                any::<u64>(),
                any::<u64>()
            )
                .prop_map(|(version, arena_size, prefaulted, client_id, node_tag)| {
                    Response::Hello {
                        version,
                        arena_size,
                        prefaulted,
                        client_id,
                        node_tag,
                    }
                }),
            Just(Response::Ok),
            any::<u64>().prop_map(|offset| Response::Created { offset }),
            proptest::collection::vec(
                prop_oneof![arb_view().prop_map(Ok), arb_err().prop_map(Err)],
                0..5
            )
            .prop_map(Response::Objects),
            any::<bool>().prop_map(Response::Bool),
            proptest::collection::vec(prop_oneof![Just(Ok(())), arb_err().prop_map(Err)], 0..5)
                .prop_map(Response::Results),
            proptest::collection::vec(row, 0..5).prop_map(Response::List),
            stats.prop_map(Response::Stats),
            (arb_id(), arb_view()).prop_map(|(id, view)| Response::KvObject { id, view }),
            arb_err().prop_map(Response::Error),
            (any::<u64>(), any::<u64>())
                .prop_map(|(bytes, nanos)| Response::Spilled { bytes, nanos }),
        ]
    }

    proptest! {
        #[test]
        fn request_round_trip(req in arb_request()) {
            let frame = req.encode();
            let len = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
            prop_assert_eq!(len, frame.len() - 4);
            let decoded = Request::decode(&frame[4..]);
            let key_too_long = matches!(&req,
                Request::KvBind { key, .. } | Request::KvGet { key, .. }
                | Request::KvDel { key } | Request::KvExists { key } if key.len() > MAX_KEY_LEN);
            if key_too_long {
                prop_assert!(decoded.is_err());
            } else {
                prop_assert_eq!(decoded, Ok(req));
            }
        }

        #[test]
        fn response_round_trip(resp in arb_response()) {
            let frame = resp.encode();
            prop_assert_eq!(Response::decode(&frame[4..]), Ok(resp));
        }

        #[test]
        fn decoders_never_panic(body in arb_bytes(200)) {
            let _ = Request::decode(&body);
            let _ = Response::decode(&body);
        }

        #[test]
        fn truncated_frames_are_rejected(req in arb_request(), cut in 0usize..64) {
            let frame = req.encode();
            let body = &frame[4..];
            if cut < body.len() {
                prop_assert!(Request::decode(&body[..cut]).is_err());
            }
        }
    }

    #[test]
    fn hostile_count_does_not_allocate() {
        // Get with a count of 4 billion ids but no bytes behind it.
        let body = [5u8, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            Request::decode(&body),
            Err(DecodeError::Truncated { .. })
        ));
    }

    #[test]
    fn oversized_and_empty_frames_are_rejected() {
        let mut buf = Vec::new();
        let big = (MAX_REQUEST_FRAME as u32 + 1).to_le_bytes();
        let mut cur = std::io::Cursor::new(big.to_vec());
        assert!(matches!(
            read_frame(&mut cur, &mut buf, MAX_REQUEST_FRAME),
            Err(FrameError::TooLarge { .. })
        ));
        let mut cur = std::io::Cursor::new(vec![0u8, 0, 0, 0]);
        assert!(matches!(
            read_frame(&mut cur, &mut buf, MAX_REQUEST_FRAME),
            Err(FrameError::Empty)
        ));
        let mut cur = std::io::Cursor::new(Vec::new());
        assert!(matches!(
            read_frame(&mut cur, &mut buf, MAX_REQUEST_FRAME),
            Err(FrameError::Closed)
        ));
        let mut cur = std::io::Cursor::new(vec![9u8, 0, 0, 0, 1]);
        assert!(matches!(
            read_frame(&mut cur, &mut buf, MAX_REQUEST_FRAME),
            Err(FrameError::Io(_))
        ));
    }
}
