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
//! Each tag (message kinds, list entries, object states, error codes) is
//! declared once, by `wire_tags!`, as an enum whose `TryFrom` is the decoder:
//! no number is written twice.
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
use std::net::{Ipv4Addr, SocketAddrV4};

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

/// Declares a wire tag type once, for both directions: a fieldless enum with
/// the given representation (encode with `tag as u8`, or `u8::from(tag)`) and
/// a `TryFrom` of that integer whose error is the unknown value (decode). The
/// numbers appear only here, so an encoder and its decoder cannot disagree.
macro_rules! wire_tags {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident: $repr:ty {
            $($(#[$vmeta:meta])* $variant:ident = $value:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr($repr)]
        $vis enum $name {
            $($(#[$vmeta])* $variant = $value,)+
        }

        impl $name {
            /// Every tag, in declaration order (for tests and exhaustive checks).
            #[allow(dead_code)]
            pub(crate) const ALL: &'static [$name] = &[$($name::$variant),+];
        }

        impl From<$name> for $repr {
            fn from(tag: $name) -> $repr {
                tag as $repr
            }
        }

        impl TryFrom<$repr> for $name {
            type Error = $repr;
            fn try_from(v: $repr) -> Result<Self, $repr> {
                match v {
                    $($value => Ok($name::$variant),)+
                    other => Err(other),
                }
            }
        }
    };
}
pub(crate) use wire_tags;

wire_tags! {
    /// Machine-readable error kinds carried in replies.
    pub enum ErrorCode: u16 {
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
        /// The object ID names a node that is not a member of this cluster
        /// (no registered data worker has that transfer address): nothing
        /// was connected to.
        NotMember = 12,
        /// A peer data worker failed authentication or broke the peer
        /// protocol (a wrong cluster secret, a reply larger than allowed).
        BadPeer = 13,
    }
}

wire_tags! {
    /// The first byte of a request body: which [`Request`] follows.
    pub(crate) enum RequestTag: u8 {
        Hello = 1,
        Create = 2,
        Seal = 3,
        PutInline = 4,
        Get = 5,
        Release = 6,
        Delete = 7,
        Abort = 8,
        Contains = 9,
        List = 10,
        Stats = 11,
        KvBind = 12,
        KvGet = 13,
        KvDel = 14,
        KvExists = 15,
        Spill = 16,
        GetRemote = 17,
        Own = 18,
        Free = 19,
        SetPeers = 20,
    }
}

wire_tags! {
    /// The first byte of a response body: which [`Response`] follows.
    pub(crate) enum ResponseTag: u8 {
        Hello = 1,
        Ok = 2,
        Created = 3,
        Objects = 4,
        Bool = 5,
        Results = 6,
        List = 7,
        Stats = 8,
        KvObject = 9,
        Error = 10,
        Spilled = 11,
    }
}

wire_tags! {
    /// The byte before each entry of an `Objects` or `Results` list.
    pub(crate) enum ResultTag: u8 {
        Ok = 0,
        Err = 1,
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

wire_tags! {
    /// Object state as reported by `List`.
    pub enum ObjectState: u8 {
        /// Created, being written.
        Unsealed = 0,
        /// Sealed and in memory.
        Sealed = 1,
        /// Sealed and on disk only.
        Spilled = 2,
    }
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
    /// Bytes (data and metadata) of the objects this node served to other nodes' pulls.
    pub served_bytes: u64,
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
    /// The transfer addresses of the cluster's data workers (its current
    /// members; sent by the node's agent whenever they change). Pulls and
    /// deletes only ever connect to these; an address that was a member and
    /// is no longer counts as a node that left. Replies `Ok`.
    SetPeers {
        /// The members' transfer addresses.
        addrs: Vec<SocketAddrV4>,
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
    pub(crate) fn with_tag(tag: impl Into<u8>) -> Self {
        let mut v = Vec::with_capacity(64);
        v.extend_from_slice(&[0, 0, 0, 0, tag.into()]);
        Writer(v)
    }
    pub(crate) fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub(crate) fn result_tag(&mut self, tag: ResultTag) {
        self.0.push(tag.into());
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
        self.u16(e.code.into());
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
    /// A message tag: an unknown value is [`DecodeError::UnknownTag`].
    pub(crate) fn tag<T: TryFrom<u8, Error = u8>>(&mut self) -> Result<T, DecodeError> {
        T::try_from(self.u8("tag")?).map_err(DecodeError::UnknownTag)
    }
    /// A tag inside a message (a list entry's kind, a state): an unknown
    /// value is [`DecodeError::Invalid`] naming the field.
    pub(crate) fn field_tag<T: TryFrom<u8, Error = u8>>(
        &mut self,
        what: &'static str,
    ) -> Result<T, DecodeError> {
        T::try_from(self.u8(what)?).map_err(|v| DecodeError::Invalid {
            what,
            value: v.into(),
        })
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
        let code = ErrorCode::try_from(raw).map_err(|v| DecodeError::Invalid {
            what: "error code",
            value: v.into(),
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
                w = Writer::with_tag(RequestTag::Hello);
                w.u16(*version);
                w.u32(*pid);
                w.bytes(name.as_bytes());
            }
            Request::Create {
                id,
                data_size,
                meta_size,
            } => {
                w = Writer::with_tag(RequestTag::Create);
                w.id(id);
                w.u64(*data_size);
                w.u64(*meta_size);
            }
            Request::Seal { id } => {
                w = Writer::with_tag(RequestTag::Seal);
                w.id(id);
            }
            Request::PutInline { id, data, meta } => {
                w = Writer::with_tag(RequestTag::PutInline);
                w.id(id);
                w.bytes(data);
                w.bytes(meta);
            }
            Request::Get { timeout_ms, ids } => {
                w = Writer::with_tag(RequestTag::Get);
                w.u64(*timeout_ms);
                w.ids(ids);
            }
            Request::Release { id } => {
                w = Writer::with_tag(RequestTag::Release);
                w.id(id);
            }
            Request::Delete { ids } => {
                w = Writer::with_tag(RequestTag::Delete);
                w.ids(ids);
            }
            Request::Abort { id } => {
                w = Writer::with_tag(RequestTag::Abort);
                w.id(id);
            }
            Request::Contains { id } => {
                w = Writer::with_tag(RequestTag::Contains);
                w.id(id);
            }
            Request::List { limit } => {
                w = Writer::with_tag(RequestTag::List);
                w.u32(*limit);
            }
            Request::Stats => w = Writer::with_tag(RequestTag::Stats),
            Request::KvBind { key, id } => {
                w = Writer::with_tag(RequestTag::KvBind);
                w.bytes(key);
                w.id(id);
            }
            Request::KvGet { key, timeout_ms } => {
                w = Writer::with_tag(RequestTag::KvGet);
                w.bytes(key);
                w.u64(*timeout_ms);
            }
            Request::KvDel { key } => {
                w = Writer::with_tag(RequestTag::KvDel);
                w.bytes(key);
            }
            Request::KvExists { key } => {
                w = Writer::with_tag(RequestTag::KvExists);
                w.bytes(key);
            }
            Request::Spill { target_used } => {
                w = Writer::with_tag(RequestTag::Spill);
                w.u64(*target_used);
            }
            Request::GetRemote { timeout_ms, id } => {
                w = Writer::with_tag(RequestTag::GetRemote);
                w.u64(*timeout_ms);
                w.id(id);
            }
            Request::Own { ids } => {
                w = Writer::with_tag(RequestTag::Own);
                w.ids(ids);
            }
            Request::Free { ids } => {
                w = Writer::with_tag(RequestTag::Free);
                w.ids(ids);
            }
            Request::SetPeers { addrs } => {
                w = Writer::with_tag(RequestTag::SetPeers);
                w.len(addrs.len());
                for a in addrs {
                    w.u32(u32::from(*a.ip()));
                    w.u16(a.port());
                }
            }
        }
        w.finish()
    }

    /// Decodes a request body (the frame without its length prefix).
    pub fn decode(body: &[u8]) -> Result<Request, DecodeError> {
        let mut r = Reader { buf: body };
        let req = match r.tag()? {
            RequestTag::Hello => Request::Hello {
                version: r.u16("version")?,
                pid: r.u32("pid")?,
                name: r.string("client name")?,
            },
            RequestTag::Create => Request::Create {
                id: r.id()?,
                data_size: r.u64("data size")?,
                meta_size: r.u64("meta size")?,
            },
            RequestTag::Seal => Request::Seal { id: r.id()? },
            RequestTag::PutInline => Request::PutInline {
                id: r.id()?,
                data: r.bytes("data")?,
                meta: r.bytes("meta")?,
            },
            RequestTag::Get => Request::Get {
                timeout_ms: r.u64("timeout")?,
                ids: r.ids()?,
            },
            RequestTag::Release => Request::Release { id: r.id()? },
            RequestTag::Delete => Request::Delete { ids: r.ids()? },
            RequestTag::Abort => Request::Abort { id: r.id()? },
            RequestTag::Contains => Request::Contains { id: r.id()? },
            RequestTag::List => Request::List {
                limit: r.u32("limit")?,
            },
            RequestTag::Stats => Request::Stats,
            RequestTag::KvBind => Request::KvBind {
                key: r.key()?,
                id: r.id()?,
            },
            RequestTag::KvGet => Request::KvGet {
                key: r.key()?,
                timeout_ms: r.u64("timeout")?,
            },
            RequestTag::KvDel => Request::KvDel { key: r.key()? },
            RequestTag::KvExists => Request::KvExists { key: r.key()? },
            RequestTag::Spill => Request::Spill {
                target_used: r.u64("target")?,
            },
            RequestTag::GetRemote => Request::GetRemote {
                timeout_ms: r.u64("timeout")?,
                id: r.id()?,
            },
            RequestTag::Own => Request::Own { ids: r.ids()? },
            RequestTag::Free => Request::Free { ids: r.ids()? },
            RequestTag::SetPeers => {
                let n = r.count(6, "peer count")?;
                let addrs = (0..n)
                    .map(|_| {
                        let ip = Ipv4Addr::from(r.u32("peer address")?);
                        Ok(SocketAddrV4::new(ip, r.u16("peer port")?))
                    })
                    .collect::<Result<_, DecodeError>>()?;
                Request::SetPeers { addrs }
            }
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

const STATS_FIELDS: usize = 22;

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
            self.served_bytes,
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
            served_bytes: a[21],
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
                w = Writer::with_tag(ResponseTag::Hello);
                w.u16(*version);
                w.u64(*arena_size);
                w.u8(u8::from(*prefaulted));
                w.u64(*client_id);
                w.u64(*node_tag);
            }
            Response::Ok => w = Writer::with_tag(ResponseTag::Ok),
            Response::Created { offset } => {
                w = Writer::with_tag(ResponseTag::Created);
                w.u64(*offset);
            }
            Response::Objects(results) => {
                w = Writer::with_tag(ResponseTag::Objects);
                w.len(results.len());
                for r in results {
                    match r {
                        Ok(v) => {
                            w.result_tag(ResultTag::Ok);
                            w.view(v);
                        }
                        Err(e) => {
                            w.result_tag(ResultTag::Err);
                            w.err(e);
                        }
                    }
                }
            }
            Response::Bool(b) => {
                w = Writer::with_tag(ResponseTag::Bool);
                w.u8(u8::from(*b));
            }
            Response::Results(results) => {
                w = Writer::with_tag(ResponseTag::Results);
                w.len(results.len());
                for r in results {
                    match r {
                        Ok(()) => w.result_tag(ResultTag::Ok),
                        Err(e) => {
                            w.result_tag(ResultTag::Err);
                            w.err(e);
                        }
                    }
                }
            }
            Response::List(rows) => {
                w = Writer::with_tag(ResponseTag::List);
                w.len(rows.len());
                for row in rows {
                    w.id(&row.id);
                    w.u64(row.data_size);
                    w.u64(row.meta_size);
                    w.u8(row.state.into());
                    w.u32(row.pins);
                }
            }
            Response::Stats(s) => {
                w = Writer::with_tag(ResponseTag::Stats);
                for v in s.to_array() {
                    w.u64(v);
                }
            }
            Response::KvObject { id, view } => {
                w = Writer::with_tag(ResponseTag::KvObject);
                w.id(id);
                w.view(view);
            }
            Response::Error(e) => {
                w = Writer::with_tag(ResponseTag::Error);
                w.err(e);
            }
            Response::Spilled { bytes, nanos } => {
                w = Writer::with_tag(ResponseTag::Spilled);
                w.u64(*bytes);
                w.u64(*nanos);
            }
        }
        w.finish()
    }

    /// Decodes a response body (the frame without its length prefix).
    pub fn decode(body: &[u8]) -> Result<Response, DecodeError> {
        let mut r = Reader { buf: body };
        let resp = match r.tag()? {
            ResponseTag::Hello => Response::Hello {
                version: r.u16("version")?,
                arena_size: r.u64("arena size")?,
                prefaulted: r.bool("prefaulted")?,
                client_id: r.u64("client id")?,
                node_tag: r.u64("node tag")?,
            },
            ResponseTag::Ok => Response::Ok,
            ResponseTag::Created => Response::Created {
                offset: r.u64("offset")?,
            },
            ResponseTag::Objects => {
                let n = r.count(1 + 3, "result count")?;
                let mut out = Vec::with_capacity(n);
                for _ in 0..n {
                    out.push(match r.field_tag("result tag")? {
                        ResultTag::Ok => Ok(r.view()?),
                        ResultTag::Err => Err(r.err()?),
                    });
                }
                Response::Objects(out)
            }
            ResponseTag::Bool => Response::Bool(r.bool("bool")?),
            ResponseTag::Results => {
                let n = r.count(1, "result count")?;
                let mut out = Vec::with_capacity(n);
                for _ in 0..n {
                    out.push(match r.field_tag("result tag")? {
                        ResultTag::Ok => Ok(()),
                        ResultTag::Err => Err(r.err()?),
                    });
                }
                Response::Results(out)
            }
            ResponseTag::List => {
                let n = r.count(OBJECT_ID_LEN + 21, "row count")?;
                let mut rows = Vec::with_capacity(n);
                for _ in 0..n {
                    let id = r.id()?;
                    let data_size = r.u64("data size")?;
                    let meta_size = r.u64("meta size")?;
                    let state = r.field_tag("state")?;
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
            ResponseTag::Stats => {
                let mut a = [0u64; STATS_FIELDS];
                for v in a.iter_mut() {
                    *v = r.u64("stats field")?;
                }
                Response::Stats(StoreStats::from_array(a))
            }
            ResponseTag::KvObject => Response::KvObject {
                id: r.id()?,
                view: r.view()?,
            },
            ResponseTag::Error => Response::Error(r.err()?),
            ResponseTag::Spilled => Response::Spilled {
                bytes: r.u64("bytes")?,
                nanos: r.u64("nanos")?,
            },
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
        proptest::sample::select(ErrorCode::ALL)
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
            proptest::collection::vec((any::<u32>(), any::<u16>()), 0..5).prop_map(|a| {
                Request::SetPeers {
                    addrs: a
                        .into_iter()
                        .map(|(ip, port)| SocketAddrV4::new(ip.into(), port))
                        .collect(),
                }
            }),
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
                state: ObjectState::ALL[s as usize],
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

    /// Each tag type decodes exactly the values it declares, and each value
    /// back to its own tag.
    fn tags_round_trip<T>(all: &[T])
    where
        T: Copy + Eq + std::fmt::Debug + Into<u8> + TryFrom<u8, Error = u8>,
    {
        let declared: Vec<u8> = all.iter().map(|&t| t.into()).collect();
        for v in 0..=u8::MAX {
            match T::try_from(v) {
                Ok(t) => assert_eq!(t.into(), v),
                Err(e) => {
                    assert_eq!(e, v);
                    assert!(!declared.contains(&v), "declared tag {v} does not decode");
                }
            }
        }
        for &t in all {
            assert_eq!(T::try_from(t.into()), Ok(t));
        }
    }

    #[test]
    fn wire_tags_decode_what_they_encode() {
        tags_round_trip(RequestTag::ALL);
        tags_round_trip(ResponseTag::ALL);
        tags_round_trip(ResultTag::ALL);
        tags_round_trip(ObjectState::ALL);
        assert_eq!(RequestTag::ALL.len(), 20);
        assert_eq!(ResponseTag::ALL.len(), 11);
        for &c in ErrorCode::ALL {
            assert_eq!(ErrorCode::try_from(u16::from(c)), Ok(c));
        }
        assert_eq!(ErrorCode::try_from(0), Err(0));
        assert_eq!(ErrorCode::try_from(14), Err(14));
        // The bytes on the wire are the protocol's; a renumbering breaks old peers.
        assert_eq!(Request::Stats.encode(), vec![1, 0, 0, 0, 11]);
        assert_eq!(Response::Ok.encode(), vec![1, 0, 0, 0, 2]);
        assert_eq!(Request::decode(&[21]), Err(DecodeError::UnknownTag(21)));
        assert_eq!(Response::decode(&[0]), Err(DecodeError::UnknownTag(0)));
        assert_eq!(
            Response::decode(&[6, 1, 0, 0, 0, 2]),
            Err(DecodeError::Invalid {
                what: "result tag",
                value: 2
            })
        );
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
