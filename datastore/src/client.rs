//! The client side: connect to a data worker, map its arena, and read and
//! write objects in place.
//!
//! Zero copy, for the caller: [`Client::get`] returns [`ObjectGuard`]s whose
//! `Deref<Target = [u8]>` points straight into this process's mapping of the
//! worker's shared memory. No byte is copied, whatever the object's size; the
//! guard holds a pin, so the worker can neither free nor spill the object
//! while the slice is alive, and dropping the guard releases the pin (a
//! one-way message, no round trip). Writing works the same way:
//! [`Client::create`] returns an [`ObjectBuilder`] whose buffers are the
//! object's final bytes in shared memory; [`ObjectBuilder::seal`] publishes
//! them. [`Client::put`] is the convenience that copies a caller's buffer in
//! once (on several threads for large objects).
//!
//! A `Client` is cheap to clone and may be shared between threads; calls on
//! one client are serialised on its socket. It follows restarts of the data
//! worker: after the connection breaks, the next call connects to the new
//! start and maps its arena, while views of the old arena stay valid (see
//! [`Client`]).
//!
//! Releases are deferred: dropping a guard parks its ID, and the parked IDs
//! travel in the same write as this client's next request, or, if no request
//! comes, are sent by a small per-client flusher thread within
//! [`RELEASE_DELAY`]. A get-use-drop loop therefore costs one write per
//! get instead of two (on a VM a socket write is about a microsecond, a
//! quarter of the whole exchange). Invariant: a parked release always
//! reaches the worker before any later request of this client, and within
//! `RELEASE_DELAY` (plus the length of a call in flight) even if none comes.

use crate::arena::{Arena, ReadOnlyMap};
use crate::error::{Error, Result};
use crate::fdpass;
use crate::id::ObjectId;
use crate::protocol::{
    read_frame, ErrorCode, ErrorReply, ObjectInfo, ObjectView, Request, Response, StoreStats,
    INLINE_MAX, MAX_RESPONSE_FRAME, PROTOCOL_VERSION,
};
use parking_lot::{Condvar, Mutex};
use std::io::{BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// The longest a dropped guard's release waits for a request to ride on
/// before the flusher sends it alone. Short next to anything that waits for
/// a pin to go (a deferred delete, a spill), long next to a get (~5 us).
pub const RELEASE_DELAY: Duration = Duration::from_micros(200);

/// How long a call spins for its reply before sleeping in `read`; most
/// replies arrive within a few microseconds (see [`fdpass::SpinStream`]).
const SPIN_BUDGET: Duration = Duration::from_micros(25);

/// Objects at least this large are copied by several threads in `put`.
const PARALLEL_COPY_MIN: usize = 4 << 20;

struct Conn {
    reader: BufReader<fdpass::SpinStream>,
    writer: UnixStream,
    buf: Vec<u8>,
}

struct Inner {
    /// One request/reply exchange at a time: replies carry no request ID,
    /// so the lock is what pairs a reply with its request.
    conn: Mutex<Conn>,
    /// Read-write mapping: where `create` hands out buffers.
    arena: Arena,
    /// Read-only mapping of the same pages: where `get` hands out views.
    view_map: ReadOnlyMap,
    /// Releases of dropped guards, sent with the next request or by the
    /// flusher: a drop never writes to the socket, so it never waits.
    pending_releases: Mutex<Vec<ObjectId>>,
    /// Encoded `Own`/`Free` frames, in the order they were made; they ride
    /// the same way as releases, so dropping a reference never waits.
    pending_frames: Mutex<Vec<u8>>,
    flusher: Arc<Flusher>,
    client_id: u64,
    node_tag: crate::id::NodeTag,
}

/// One connection to one start of a data worker, with its arena mapping. Guards and builders
/// hold the connection they came from, so their views stay in that mapping.
#[derive(Clone)]
struct Connection {
    inner: Arc<Inner>,
}

impl Connection {
    /// Connects, says hello and maps the worker's arena.
    fn connect_named(socket: impl AsRef<Path>, name: &str) -> Result<Connection> {
        let socket = socket.as_ref().to_path_buf();
        let stream = UnixStream::connect(&socket).map_err(|source| Error::Connect {
            path: socket.clone(),
            source,
        })?;
        let hello = Request::Hello {
            version: PROTOCOL_VERSION,
            pid: std::process::id(),
            name: name.into(),
        };
        (&stream).write_all(&hello.encode())?;
        // The reply is small and arrives in one message with the fd; read
        // the rest with plain reads if the kernel split it anyway.
        let mut first = [0u8; 256];
        let (n, fd) = fdpass::recv_with_fd(&stream, &mut first)?;
        if n == 0 {
            return Err(Error::Protocol(
                "data worker closed the connection during the handshake".into(),
            ));
        }
        let mut frame = first[..n].to_vec();
        while frame.len() < 4
            || frame.len()
                < 4 + u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize
        {
            let mut more = [0u8; 256];
            let m = std::io::Read::read(&mut &stream, &mut more)?;
            if m == 0 {
                return Err(Error::Protocol("handshake reply truncated".into()));
            }
            frame.extend_from_slice(&more[..m]);
            if frame.len() > 4096 {
                return Err(Error::Protocol("handshake reply too long".into()));
            }
        }
        let resp = Response::decode(&frame[4..])?;
        let (arena_size, prefaulted, client_id, node_tag) = match resp {
            Response::Hello {
                version,
                arena_size,
                prefaulted,
                client_id,
                node_tag,
            } if version == PROTOCOL_VERSION => (arena_size, prefaulted, client_id, node_tag),
            Response::Hello { version, .. } => {
                return Err(Error::Protocol(format!(
                    "data worker speaks protocol version {version}, this client {PROTOCOL_VERSION}"
                )))
            }
            Response::Error(e) => return Err(Error::Store(e)),
            other => {
                return Err(Error::Protocol(format!(
                    "unexpected handshake reply {other:?}"
                )))
            }
        };
        let fd =
            fd.ok_or_else(|| Error::Protocol("data worker sent no arena descriptor".into()))?;
        let arena = Arena::from_fd(std::fs::File::from(fd), arena_size, prefaulted)?;
        let view_map = ReadOnlyMap::new(&arena)?;
        let writer = stream.try_clone()?;
        let flusher = Arc::new(Flusher::default());
        let inner = Arc::new(Inner {
            conn: Mutex::new(Conn {
                reader: BufReader::with_capacity(
                    64 << 10,
                    fdpass::SpinStream::new(stream, SPIN_BUDGET),
                ),
                writer,
                buf: Vec::with_capacity(4096),
            }),
            arena,
            view_map,
            pending_releases: Mutex::new(Vec::new()),
            pending_frames: Mutex::new(Vec::new()),
            flusher: Arc::clone(&flusher),
            client_id,
            node_tag: crate::id::NodeTag(node_tag),
        });
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("yr-release".into())
            .spawn(move || run_flusher(&flusher, &weak))?;
        Ok(Connection { inner })
    }

    /// A fresh ID for an object whose primary copy will live on this node.
    pub fn new_id(&self) -> ObjectId {
        ObjectId::random(self.inner.node_tag.0)
    }

    /// Pins and maps an object wherever its primary lives: a local copy if
    /// there is one, else the worker pulls it from the node named in its ID
    /// (sharing a pull already in flight) and hands out the local copy.
    /// `timeout` bounds how long the primary waits for the object to be
    /// sealed; a dead primary fails at once with `ObjectLost`.
    pub fn get_remote(&self, id: ObjectId, timeout: Duration) -> Result<ObjectGuard> {
        let r = self.call(&Request::GetRemote {
            timeout_ms: timeout.as_millis().min(u64::MAX as u128) as u64,
            id,
        })?;
        let Response::Objects(mut results) = r else {
            return Err(Self::unexpected(r));
        };
        match (results.pop(), results.is_empty()) {
            (Some(Ok(v)), true) => self.guard(id, v),
            (Some(Err(e)), true) => Err(Error::Store(e)),
            _ => Err(Error::Protocol(
                "a remote get must return one result".into(),
            )),
        }
    }

    /// Declares this client the owner of `ids`: when it frees them, or
    /// when it disconnects (exits, crashes), every copy on every node is
    /// deleted. One-way, like a release.
    pub fn own(&self, ids: &[ObjectId]) {
        self.push_frame(Request::Own { ids: ids.to_vec() });
    }

    /// The owner lets go of `ids`: every copy on every node is deleted.
    /// One-way, like a release.
    pub fn free(&self, ids: &[ObjectId]) {
        self.push_frame(Request::Free { ids: ids.to_vec() });
    }

    /// Tells the worker the transfer addresses of the cluster's data
    /// workers (all of them, replacing what it was told before). The worker
    /// pulls from and sends deletes to these only; an object whose ID names
    /// another address is refused with `NotMember` without connecting
    /// anywhere. The node's agent calls this whenever the members change.
    pub fn set_peers(&self, addrs: &[std::net::SocketAddrV4]) -> Result<()> {
        match self.call(&Request::SetPeers {
            addrs: addrs.to_vec(),
        })? {
            Response::Ok => Ok(()),
            r => Err(Self::unexpected(r)),
        }
    }

    fn push_frame(&self, req: Request) {
        self.inner
            .pending_frames
            .lock()
            .extend_from_slice(&req.encode());
        self.inner.flusher.arm();
    }

    /// The address range of this process's read-only arena mapping, where
    /// every view returned by `get` lies (to check that a view is shared
    /// memory, not a copy).
    pub fn mapping(&self) -> std::ops::Range<usize> {
        let base = self.inner.view_map.base() as usize;
        base..base + self.inner.view_map.size() as usize
    }

    /// Appends parked releases to `out` (as frames).
    fn take_pending_releases(&self, out: &mut Vec<u8>) {
        {
            let mut p = self.inner.pending_releases.lock();
            for id in p.drain(..) {
                out.extend_from_slice(&Request::Release { id }.encode());
            }
        }
        out.append(&mut self.inner.pending_frames.lock());
    }

    fn call(&self, req: &Request) -> Result<Response> {
        let mut c = self.inner.conn.lock();
        let mut frames = Vec::new();
        self.take_pending_releases(&mut frames);
        if frames.is_empty() {
            c.writer.write_all(&req.encode())?;
        } else {
            frames.extend_from_slice(&req.encode());
            c.writer.write_all(&frames)?;
        }
        let r = self.read_reply(&mut c);
        drop(c);
        // Releases parked while we held the connection go out now, not at
        // the next call.
        self.flush_pending_releases();
        r
    }

    /// Sends parked releases if the connection is free. Both the flusher and
    /// a finishing call (after unlocking) run this, so a release parked
    /// while a call held the connection goes out when that call ends.
    fn flush_pending_releases(&self) {
        if self.inner.pending_releases.lock().is_empty()
            && self.inner.pending_frames.lock().is_empty()
        {
            return;
        }
        if let Some(mut c) = self.inner.conn.try_lock() {
            let mut frames = Vec::new();
            self.take_pending_releases(&mut frames);
            // A failed send means the worker is gone, and with it the pins.
            let _ = c.writer.write_all(&frames);
        }
    }

    fn read_reply(&self, c: &mut Conn) -> Result<Response> {
        let Conn { reader, buf, .. } = c;
        read_frame(reader, buf, MAX_RESPONSE_FRAME)?;
        match Response::decode(buf)? {
            Response::Error(e) => Err(Error::Store(e)),
            r => Ok(r),
        }
    }

    fn unexpected(r: Response) -> Error {
        Error::Protocol(format!("unexpected reply {r:?}"))
    }

    fn view_ok(&self, v: ObjectView) -> Result<(usize, usize, usize)> {
        let total = v.data_size.checked_add(v.meta_size);
        match total {
            Some(t) if self.inner.arena.contains(v.offset, t) => Ok((
                v.offset as usize,
                v.data_size as usize,
                v.meta_size as usize,
            )),
            _ => Err(Error::Protocol(format!(
                "data worker returned a range outside the arena: {v:?}"
            ))),
        }
    }

    /// Reserves an object; write its bytes through the builder, then seal.
    pub fn create(
        &self,
        id: ObjectId,
        data_size: usize,
        meta_size: usize,
    ) -> Result<ObjectBuilder> {
        let r = self.call(&Request::Create {
            id,
            data_size: data_size as u64,
            meta_size: meta_size as u64,
        })?;
        let Response::Created { offset } = r else {
            return Err(Self::unexpected(r));
        };
        let (offset, data_size, meta_size) = self.view_ok(ObjectView {
            offset,
            data_size: data_size as u64,
            meta_size: meta_size as u64,
        })?;
        Ok(ObjectBuilder {
            client: self.clone(),
            id,
            offset,
            data_size,
            meta_size,
            done: false,
        })
    }

    /// Stores `data` as a sealed object (one copy).
    pub fn put(&self, id: ObjectId, data: &[u8]) -> Result<()> {
        self.put_with_meta(id, data, &[])
    }

    /// Stores `data` and `meta` as a sealed object (one copy). Small objects
    /// travel inline in one round trip; large ones are written straight into
    /// shared memory.
    pub fn put_with_meta(&self, id: ObjectId, data: &[u8], meta: &[u8]) -> Result<()> {
        if data.len() + meta.len() <= INLINE_MAX {
            let r = self.call(&Request::PutInline {
                id,
                data: data.to_vec(),
                meta: meta.to_vec(),
            })?;
            return match r {
                Response::Ok => Ok(()),
                r => Err(Self::unexpected(r)),
            };
        }
        let mut b = self.create(id, data.len(), meta.len())?;
        parallel_copy(b.data_mut(), data);
        b.meta_mut().copy_from_slice(meta);
        b.seal()
    }

    /// Pins and maps objects, waiting up to `timeout` for each; one result
    /// per ID, in order.
    pub fn get(&self, ids: &[ObjectId], timeout: Duration) -> Result<Vec<Result<ObjectGuard>>> {
        let r = self.call(&Request::Get {
            timeout_ms: timeout.as_millis().min(u64::MAX as u128) as u64,
            ids: ids.to_vec(),
        })?;
        let Response::Objects(results) = r else {
            return Err(Self::unexpected(r));
        };
        if results.len() != ids.len() {
            return Err(Error::Protocol(format!(
                "asked for {} objects, got {} results",
                ids.len(),
                results.len()
            )));
        }
        // Build every guard before checking ranges so pins on valid views
        // are always released, even if a later view is rejected.
        Ok(ids
            .iter()
            .zip(results)
            .map(|(id, r)| match r {
                Ok(v) => self.guard(*id, v),
                Err(e) => Err(Error::Store(e)),
            })
            .collect())
    }

    fn guard(&self, id: ObjectId, v: ObjectView) -> Result<ObjectGuard> {
        match self.view_ok(v) {
            Ok((offset, data_len, meta_len)) => Ok(ObjectGuard {
                client: self.clone(),
                id,
                // SAFETY: view_ok checked the range lies inside the arena,
                // and the read-only mapping has the arena's length.
                ptr: unsafe { self.inner.view_map.base().add(offset) },
                data_len,
                meta_len,
            }),
            Err(e) => {
                self.send_release(id);
                Err(e)
            }
        }
    }

    /// Gets one object.
    pub fn get_one(&self, id: ObjectId, timeout: Duration) -> Result<ObjectGuard> {
        self.get(&[id], timeout)?
            .pop()
            .unwrap_or_else(|| Err(Error::Protocol("empty get reply".into())))
    }

    fn send_release(&self, id: ObjectId) {
        self.inner.pending_releases.lock().push(id);
        self.inner.flusher.arm();
    }

    /// Deletes objects (deferred while other clients hold them).
    pub fn delete(&self, ids: &[ObjectId]) -> Result<Vec<Result<()>>> {
        let r = self.call(&Request::Delete { ids: ids.to_vec() })?;
        let Response::Results(rs) = r else {
            return Err(Self::unexpected(r));
        };
        Ok(rs.into_iter().map(|r| r.map_err(Error::Store)).collect())
    }

    /// Deletes one object.
    pub fn delete_one(&self, id: ObjectId) -> Result<()> {
        self.delete(&[id])?
            .pop()
            .unwrap_or_else(|| Err(Error::Protocol("empty delete reply".into())))
    }

    /// Whether a sealed object exists.
    pub fn contains(&self, id: ObjectId) -> Result<bool> {
        match self.call(&Request::Contains { id })? {
            Response::Bool(b) => Ok(b),
            r => Err(Self::unexpected(r)),
        }
    }

    /// Up to `limit` objects.
    pub fn list(&self, limit: u32) -> Result<Vec<ObjectInfo>> {
        match self.call(&Request::List { limit })? {
            Response::List(rows) => Ok(rows),
            r => Err(Self::unexpected(r)),
        }
    }

    /// The worker's counters.
    pub fn stats(&self) -> Result<StoreStats> {
        match self.call(&Request::Stats)? {
            Response::Stats(s) => Ok(s),
            r => Err(Self::unexpected(r)),
        }
    }

    /// Stores `value` under `key`, replacing any previous value.
    pub fn kv_set(&self, key: &[u8], value: &[u8]) -> Result<()> {
        if key.len() > crate::protocol::MAX_KEY_LEN {
            return Err(Error::Store(ErrorReply::new(
                ErrorCode::BadRequest,
                format!(
                    "key is {} bytes; keys are at most {} bytes",
                    key.len(),
                    crate::protocol::MAX_KEY_LEN
                ),
            )));
        }
        let id = ObjectId::random(0);
        self.put(id, value)?;
        match self.call(&Request::KvBind {
            key: key.to_vec(),
            id,
        }) {
            Ok(_) => Ok(()),
            Err(e) => {
                let _ = self.delete_one(id);
                Err(e)
            }
        }
    }

    /// The value under `key`, zero-copy, waiting up to `timeout` for it.
    pub fn kv_get(&self, key: &[u8], timeout: Duration) -> Result<ObjectGuard> {
        match self.call(&Request::KvGet {
            key: key.to_vec(),
            timeout_ms: timeout.as_millis().min(u64::MAX as u128) as u64,
        })? {
            Response::KvObject { id, view } => self.guard(id, view),
            r => Err(Self::unexpected(r)),
        }
    }

    /// Removes `key`.
    pub fn kv_del(&self, key: &[u8]) -> Result<()> {
        self.call(&Request::KvDel { key: key.to_vec() }).map(|_| ())
    }

    /// Whether `key` exists.
    pub fn kv_exists(&self, key: &[u8]) -> Result<bool> {
        match self.call(&Request::KvExists { key: key.to_vec() })? {
            Response::Bool(b) => Ok(b),
            r => Err(Self::unexpected(r)),
        }
    }

    /// Asks the worker to spill unpinned objects until at most
    /// `target_used` arena bytes remain; returns the bytes freed and the time
    /// the worker spent.
    pub fn spill(&self, target_used: u64) -> Result<(u64, Duration)> {
        match self.call(&Request::Spill { target_used })? {
            Response::Spilled { bytes, nanos } => Ok((bytes, Duration::from_nanos(nanos))),
            r => Err(Self::unexpected(r)),
        }
    }

    /// Stores many small objects with one round trip per batch: requests
    /// are written back to back and the replies read afterwards. Returns one
    /// result per item.
    pub fn put_many(&self, items: &[(ObjectId, &[u8])]) -> Result<Vec<Result<()>>> {
        let mut out = Vec::with_capacity(items.len());
        for batch in items.chunks(512) {
            let mut c = self.inner.conn.lock();
            let mut frames = Vec::with_capacity(batch.len() * 64);
            for (id, data) in batch {
                if data.len() > INLINE_MAX {
                    return Err(Error::Store(ErrorReply::new(
                        ErrorCode::BadRequest,
                        format!(
                            "put_many takes objects up to {INLINE_MAX} bytes; {id} has {}",
                            data.len()
                        ),
                    )));
                }
                frames.extend_from_slice(
                    &Request::PutInline {
                        id: *id,
                        data: data.to_vec(),
                        meta: Vec::new(),
                    }
                    .encode(),
                );
            }
            c.writer.write_all(&frames)?;
            let Conn { reader, buf, .. } = &mut *c;
            for _ in batch {
                read_frame(reader, buf, MAX_RESPONSE_FRAME)?;
                out.push(match Response::decode(buf)? {
                    Response::Ok => Ok(()),
                    Response::Error(e) => Err(Error::Store(e)),
                    r => Err(Self::unexpected(r)),
                });
            }
        }
        self.flush_pending_releases();
        Ok(out)
    }

    /// Sends raw bytes on the socket and reads one reply frame: for tests
    /// of the worker's handling of malformed input.
    #[doc(hidden)]
    pub fn raw_exchange(&self, bytes: &[u8]) -> Result<Response> {
        let mut c = self.inner.conn.lock();
        c.writer.write_all(bytes)?;
        let Conn { reader, buf, .. } = &mut *c;
        read_frame(reader, buf, MAX_RESPONSE_FRAME)?;
        Ok(Response::decode(buf)?)
    }
}

/// A client of a data worker that follows its restarts. Clone to share.
///
/// It holds one [`Connection`] at a time. A call whose connection breaks (the worker exited)
/// fails with that I/O error and marks the connection broken; the next call connects again, to
/// the worker now at the socket, and maps its new arena. A connection idle for
/// [`CHECK_IDLE_AFTER`] is checked before use (a non-blocking peek), so a call after a quiet
/// spell finds a restarted worker without failing first. Views and builders from the old
/// connection keep the old mapping (which stays valid while they live) and release into the
/// old, dead connection, which costs nothing; objects of the old worker are gone with it, and a
/// get of one on the new worker fails with `ObjectLost` (its ID carries the old start's epoch).
/// A failed call is never repeated here: a request may have reached the worker before it died,
/// and a put's ID names the old start.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
}

/// A connection left unused this long is checked for a closed peer before a call.
pub const CHECK_IDLE_AFTER: Duration = Duration::from_millis(100);

struct Shared {
    socket: PathBuf,
    name: String,
    /// The newest connection, whether it is known broken, and when a call last used it. A
    /// parking_lot mutex held only to read or replace these (and to reconnect), never across a
    /// call, so calls on one client still run as the connection's own lock allows.
    current: Mutex<Current>,
}

struct Current {
    conn: Connection,
    broken: bool,
    used: std::time::Instant,
}

/// Whether `e` means the connection itself is unusable (the worker exited, or the stream lost
/// its framing), rather than a refusal by a live worker.
fn breaks_connection(e: &Error) -> bool {
    matches!(e, Error::Io(_) | Error::Protocol(_))
}

/// Whether the peer of `stream` has closed it (nothing is consumed).
fn peer_closed(stream: &UnixStream) -> bool {
    use std::os::fd::AsRawFd;
    let mut b = [0u8; 1];
    // SAFETY: recv(2) into a valid one-byte buffer; MSG_PEEK leaves the data in the socket and
    // MSG_DONTWAIT makes it return at once.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            b.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n == 0 || (n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock)
}

impl Client {
    /// Connects, says hello and maps the worker's arena.
    pub fn connect(socket: impl AsRef<Path>) -> Result<Client> {
        Self::connect_named(socket, "yr-client")
    }

    /// As [`Client::connect`], with a name for the worker's logs.
    pub fn connect_named(socket: impl AsRef<Path>, name: &str) -> Result<Client> {
        let conn = Connection::connect_named(socket.as_ref(), name)?;
        Ok(Client {
            shared: Arc::new(Shared {
                socket: socket.as_ref().to_path_buf(),
                name: name.into(),
                current: Mutex::new(Current {
                    conn,
                    broken: false,
                    used: std::time::Instant::now(),
                }),
            }),
        })
    }

    /// The connection to use now: the current one, or a new one if it broke (or was found
    /// closed after being idle).
    fn conn(&self) -> Result<Connection> {
        let mut cur = self.shared.current.lock();
        let now = std::time::Instant::now();
        if !cur.broken && now.duration_since(cur.used) >= CHECK_IDLE_AFTER {
            let closed = peer_closed(&cur.conn.inner.conn.lock().writer);
            cur.broken = closed;
        }
        if cur.broken {
            let conn = Connection::connect_named(&self.shared.socket, &self.shared.name)?;
            tracing::info!(
                socket = %self.shared.socket.display(),
                "reconnected to the data worker (a new start: objects of the old one are lost)"
            );
            cur.conn = conn;
            cur.broken = false;
        }
        cur.used = now;
        Ok(cur.conn.clone())
    }

    /// The newest connection even if it is broken and no new one can be made (for what needs no
    /// exchange: IDs, parked one-way frames).
    fn latest(&self) -> Connection {
        match self.conn() {
            Ok(c) => c,
            Err(_) => self.shared.current.lock().conn.clone(),
        }
    }

    /// Runs `f` on the connection to use now; marks it broken if `f` found it so.
    fn with<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let c = self.conn()?;
        let r = f(&c);
        if let Err(e) = &r {
            if breaks_connection(e) {
                let mut cur = self.shared.current.lock();
                if Arc::ptr_eq(&cur.conn.inner, &c.inner) {
                    cur.broken = true;
                }
            }
        }
        r
    }

    /// The worker's ID for the current connection.
    pub fn client_id(&self) -> u64 {
        self.latest().inner.client_id
    }

    /// The tag of the worker's node (of its current start): objects made here carry it.
    pub fn node_tag(&self) -> crate::id::NodeTag {
        self.latest().inner.node_tag
    }

    /// A fresh ID for an object whose primary copy will live on this node.
    pub fn new_id(&self) -> ObjectId {
        self.latest().new_id()
    }

    /// Pins and maps an object wherever its primary lives (see the connection's docs below):
    /// a local copy if there is one, else the worker pulls it from the node named in its ID.
    /// `timeout` bounds how long the primary waits for the object to be sealed; a dead primary
    /// (or one restarted since the object was made) fails at once with `ObjectLost`.
    pub fn get_remote(&self, id: ObjectId, timeout: Duration) -> Result<ObjectGuard> {
        self.with(|c| c.get_remote(id, timeout))
    }

    /// Declares this client the owner of `ids`: when it frees them, or when it disconnects
    /// (exits, crashes), every copy on every node is deleted. One-way, like a release.
    pub fn own(&self, ids: &[ObjectId]) {
        self.latest().own(ids)
    }

    /// The owner lets go of `ids`: every copy on every node is deleted. One-way.
    pub fn free(&self, ids: &[ObjectId]) {
        self.latest().free(ids)
    }

    /// Tells the worker the transfer addresses of the cluster's data workers (all of them,
    /// replacing what it was told before); see `Request::SetPeers`.
    pub fn set_peers(&self, addrs: &[std::net::SocketAddrV4]) -> Result<()> {
        self.with(|c| c.set_peers(addrs))
    }

    /// The socket this client connects to.
    pub fn socket(&self) -> &Path {
        &self.shared.socket
    }

    /// The address range of this process's read-only mapping of the current arena, where
    /// every view a `get` returns now lies (to check that a view is shared memory, not a copy).
    pub fn mapping(&self) -> std::ops::Range<usize> {
        self.latest().mapping()
    }

    /// Reserves an object; write its bytes through the builder, then seal.
    pub fn create(
        &self,
        id: ObjectId,
        data_size: usize,
        meta_size: usize,
    ) -> Result<ObjectBuilder> {
        self.with(|c| c.create(id, data_size, meta_size))
    }

    /// Stores `data` as a sealed object (one copy).
    pub fn put(&self, id: ObjectId, data: &[u8]) -> Result<()> {
        self.with(|c| c.put(id, data))
    }

    /// Stores `data` and `meta` as a sealed object (one copy). Small objects travel inline in
    /// one round trip; large ones are written straight into shared memory.
    pub fn put_with_meta(&self, id: ObjectId, data: &[u8], meta: &[u8]) -> Result<()> {
        self.with(|c| c.put_with_meta(id, data, meta))
    }

    /// Pins and maps objects, waiting up to `timeout` for each; one result per ID, in order.
    pub fn get(&self, ids: &[ObjectId], timeout: Duration) -> Result<Vec<Result<ObjectGuard>>> {
        self.with(|c| c.get(ids, timeout))
    }

    /// Gets one object.
    pub fn get_one(&self, id: ObjectId, timeout: Duration) -> Result<ObjectGuard> {
        self.with(|c| c.get_one(id, timeout))
    }

    /// Deletes objects (deferred while other clients hold them).
    pub fn delete(&self, ids: &[ObjectId]) -> Result<Vec<Result<()>>> {
        self.with(|c| c.delete(ids))
    }

    /// Deletes one object.
    pub fn delete_one(&self, id: ObjectId) -> Result<()> {
        self.with(|c| c.delete_one(id))
    }

    /// Whether a sealed object exists.
    pub fn contains(&self, id: ObjectId) -> Result<bool> {
        self.with(|c| c.contains(id))
    }

    /// Up to `limit` objects.
    pub fn list(&self, limit: u32) -> Result<Vec<ObjectInfo>> {
        self.with(|c| c.list(limit))
    }

    /// The worker's counters.
    pub fn stats(&self) -> Result<StoreStats> {
        self.with(|c| c.stats())
    }

    /// Stores `value` under `key`, replacing any previous value.
    pub fn kv_set(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.with(|c| c.kv_set(key, value))
    }

    /// The value under `key`, zero-copy, waiting up to `timeout` for it.
    pub fn kv_get(&self, key: &[u8], timeout: Duration) -> Result<ObjectGuard> {
        self.with(|c| c.kv_get(key, timeout))
    }

    /// Removes `key`.
    pub fn kv_del(&self, key: &[u8]) -> Result<()> {
        self.with(|c| c.kv_del(key))
    }

    /// Whether `key` exists.
    pub fn kv_exists(&self, key: &[u8]) -> Result<bool> {
        self.with(|c| c.kv_exists(key))
    }

    /// Asks the worker to spill unpinned objects until at most `target_used` arena bytes
    /// remain; returns the bytes freed and the time the worker spent.
    pub fn spill(&self, target_used: u64) -> Result<(u64, Duration)> {
        self.with(|c| c.spill(target_used))
    }

    /// Stores many small objects with one round trip per batch; one result per item.
    pub fn put_many(&self, items: &[(ObjectId, &[u8])]) -> Result<Vec<Result<()>>> {
        self.with(|c| c.put_many(items))
    }

    /// Sends raw bytes on the socket and reads one reply frame: for tests of the worker's
    /// handling of malformed input.
    #[doc(hidden)]
    pub fn raw_exchange(&self, bytes: &[u8]) -> Result<Response> {
        self.with(|c| c.raw_exchange(bytes))
    }
}

/// Copies `src` into `dst` (equal lengths), on several threads when large:
/// one core cannot saturate memory bandwidth on most machines.
pub fn parallel_copy(dst: &mut [u8], src: &[u8]) {
    let n = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(4);
    if src.len() < PARALLEL_COPY_MIN || n < 2 {
        dst.copy_from_slice(src);
        return;
    }
    // Chunks on 4 KiB boundaries so two threads never share a page.
    let chunk = src.len().div_ceil(n).next_multiple_of(4096);
    std::thread::scope(|s| {
        let mut pairs = dst.chunks_mut(chunk).zip(src.chunks(chunk));
        let first = pairs.next();
        for (d, sr) in pairs {
            s.spawn(move || d.copy_from_slice(sr));
        }
        if let Some((d, sr)) = first {
            d.copy_from_slice(sr);
        }
    });
}

/// A pinned, sealed object mapped into this process. Derefs to the data
/// bytes in shared memory; dropping it releases the pin.
pub struct ObjectGuard {
    client: Connection,
    id: ObjectId,
    ptr: *const u8,
    data_len: usize,
    meta_len: usize,
}

// SAFETY: the guard points at sealed, immutable bytes kept alive by its pin
// and by the Arc'd mapping inside `client`; reading them from any thread is
// sound, and release goes through the client's own lock.
unsafe impl Send for ObjectGuard {}
// SAFETY: as above; `&ObjectGuard` only gives shared read access.
unsafe impl Sync for ObjectGuard {}

impl ObjectGuard {
    /// The object's ID.
    pub fn id(&self) -> ObjectId {
        self.id
    }

    /// The metadata bytes (zero-copy too).
    pub fn metadata(&self) -> &[u8] {
        // SAFETY: data and metadata are contiguous inside the checked range;
        // sealed bytes are immutable while we hold the pin.
        unsafe { std::slice::from_raw_parts(self.ptr.add(self.data_len), self.meta_len) }
    }
}

impl std::ops::Deref for ObjectGuard {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: range checked against the mapping at creation; the pin
        // keeps the object in place and immutable until drop; the mapping
        // lives as long as `self.client`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.data_len) }
    }
}

/// The per-client thread that sends parked releases no request picked up.
///
/// `armed` is set by a drop that parks a release; the thread then sleeps
/// [`RELEASE_DELAY`], clears `armed` and flushes. Clearing before flushing
/// is what makes it lossless: a drop that saw `armed` set parked its ID
/// before the clear, so the flush that follows takes it; a drop after the
/// clear arms (and wakes) the thread again. While drops keep coming, the
/// thread wakes once per delay and a drop costs no syscall at all.
#[derive(Default)]
struct Flusher {
    armed: AtomicBool,
    /// Set when the client goes away; guards the condvar.
    stopped: Mutex<bool>,
    wake: Condvar,
}

impl Flusher {
    fn arm(&self) {
        if !self.armed.swap(true, Ordering::SeqCst) {
            let _stopped = self.stopped.lock();
            self.wake.notify_one();
        }
    }

    fn stop(&self) {
        *self.stopped.lock() = true;
        self.wake.notify_one();
    }
}

fn run_flusher(flusher: &Flusher, inner: &Weak<Inner>) {
    loop {
        {
            let mut stopped = flusher.stopped.lock();
            while !flusher.armed.load(Ordering::SeqCst) && !*stopped {
                flusher.wake.wait(&mut stopped);
            }
            if *stopped {
                return;
            }
        }
        std::thread::sleep(RELEASE_DELAY);
        flusher.armed.store(false, Ordering::SeqCst);
        // The thread holds only a weak reference, so a dropped client is
        // never kept alive (or connected) by it.
        let Some(inner) = inner.upgrade() else {
            return;
        };
        Connection { inner }.flush_pending_releases();
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Ownership changes still parked must reach the worker (an `Own`
        // lost here would leak the object). Closing the socket releases
        // every pin this client held and frees what it owned; the flusher
        // has nothing left to do.
        let frames = std::mem::take(self.pending_frames.get_mut());
        if !frames.is_empty() {
            let _ = self.conn.get_mut().writer.write_all(&frames);
        }
        self.flusher.stop();
    }
}

impl AsRef<[u8]> for ObjectGuard {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl Drop for ObjectGuard {
    fn drop(&mut self) {
        self.client.send_release(self.id);
    }
}

impl std::fmt::Debug for ObjectGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectGuard")
            .field("id", &self.id)
            .field("len", &self.data_len)
            .field("meta_len", &self.meta_len)
            .finish()
    }
}

/// An object being written. Its buffers are the object's bytes in shared
/// memory; [`ObjectBuilder::seal`] makes them visible and immutable.
/// Dropping it unsealed aborts the object.
pub struct ObjectBuilder {
    client: Connection,
    id: ObjectId,
    offset: usize,
    data_size: usize,
    meta_size: usize,
    done: bool,
}

impl ObjectBuilder {
    /// The object's ID.
    pub fn id(&self) -> ObjectId {
        self.id
    }

    /// The data buffer.
    pub fn data(&self) -> &[u8] {
        // SAFETY: as for data_mut; a shared borrow of our own unsealed block.
        unsafe {
            std::slice::from_raw_parts(
                self.client.inner.arena.base().add(self.offset),
                self.data_size,
            )
        }
    }

    /// Length of the data part.
    pub fn len(&self) -> usize {
        self.data_size
    }

    /// Whether the data part is empty.
    pub fn is_empty(&self) -> bool {
        self.data_size == 0
    }

    /// The data buffer (shared memory), for writing.
    pub fn data_mut(&mut self) -> &mut [u8] {
        // SAFETY: the worker reserved this range for our unsealed object; no
        // one else reads or writes it until we seal.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.client.inner.arena.base().add(self.offset),
                self.data_size,
            )
        }
    }

    /// The metadata buffer.
    pub fn meta_mut(&mut self) -> &mut [u8] {
        // SAFETY: as for data_mut; the metadata follows the data.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.client
                    .inner
                    .arena
                    .base()
                    .add(self.offset + self.data_size),
                self.meta_size,
            )
        }
    }

    /// Publishes the object.
    pub fn seal(mut self) -> Result<()> {
        self.done = true;
        match self.client.call(&Request::Seal { id: self.id })? {
            Response::Ok => Ok(()),
            r => Err(Connection::unexpected(r)),
        }
    }

    /// Discards the object.
    pub fn abort(mut self) -> Result<()> {
        self.done = true;
        self.client
            .call(&Request::Abort { id: self.id })
            .map(|_| ())
    }
}

impl Drop for ObjectBuilder {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.client.call(&Request::Abort { id: self.id });
        }
    }
}
