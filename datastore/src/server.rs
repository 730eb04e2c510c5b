//! The data worker's Unix-socket server.
//!
//! One thread accepts; each client gets its own thread that reads a frame,
//! calls the [`Store`], and writes the reply. Thread-per-client suits the
//! workload: clients are the few dozen processes of one node, calls are
//! short, and a blocking read wakes faster than an event loop handoff, which
//! is what a zero-copy get costs beyond the socket round trip. A blocking
//! `get` simply parks that client's thread.
//!
//! [`start`] takes a validated [`WorkerConfig`] (see [`crate::config`]),
//! binds the socket, opens the store, starts the peer listener of
//! [`crate::transfer`] if asked to (with the cluster secret of
//! [`crate::peer_auth`]), and serves; the accept loop itself is
//! shared with the peer listener (`listen`).
//!
//! Bad input never takes the worker down: a body that does not decode gets
//! an error reply (the frame boundary is intact, so the connection goes on);
//! an oversized or torn frame gets an error reply if possible and the
//! disconnect of that client only. Whatever way a client leaves, its pins are
//! released and its unsealed objects aborted.

pub use crate::config::WorkerConfig;
use crate::error::WorkerError;
use crate::fdpass;
use crate::id::NodeTag;
use crate::listen;
use crate::protocol::{
    read_frame, ErrorCode, ErrorReply, FrameError, Request, Response, MAX_REQUEST_FRAME,
    PROTOCOL_VERSION,
};
use crate::store::{ClientId, Store};
use crate::transfer::Node;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::io::{self, BufReader, Write};
use std::net::SocketAddrV4;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How long a client thread spins for the next request before sleeping in
/// `read` (see [`fdpass::SpinStream`]).
const SPIN_BUDGET: Duration = Duration::from_micros(25);

/// A handle that stops a running worker from another thread (or a signal
/// handler thread). Cloneable; triggering twice is harmless.
#[derive(Clone)]
pub struct Shutdown {
    fd: Arc<OwnedFd>,
}

impl Shutdown {
    /// Makes a new, untriggered handle.
    pub fn new() -> io::Result<Shutdown> {
        // SAFETY: plain syscall; the result is checked and owned at once.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Shutdown { fd: Arc::new(fd) })
    }

    /// Asks the worker to stop.
    pub fn trigger(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our eventfd.
        unsafe {
            libc::write(
                self.fd.as_raw_fd(),
                &one as *const u64 as *const libc::c_void,
                8,
            )
        };
    }
}

/// Binds the socket, refusing to steal it from a live worker.
fn bind(path: &Path) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("socket folder {} does not exist", dir.display()),
            ));
        }
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("a data worker is already listening on {}", path.display()),
            ));
        }
        // A stale socket from a worker that died: nobody answers it.
        std::fs::remove_file(path)?;
    }
    let l = UnixListener::bind(path)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot bind {}: {e}", path.display())))?;
    // Only this user's processes may use the store.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// A running worker started with [`start`]: the store plus the threads
/// serving it.
pub struct Worker {
    store: Arc<Store>,
    node: Arc<Node>,
    transfer_addr: Option<SocketAddrV4>,
    socket: PathBuf,
    shutdown: Shutdown,
    accept: Option<std::thread::JoinHandle<()>>,
    peers: Option<std::thread::JoinHandle<()>>,
    spiller: Option<std::thread::JoinHandle<()>>,
    conns: Arc<Mutex<HashMap<ClientId, UnixStream>>>,
}

/// Creates the store, binds the socket and starts serving in background
/// threads. Returns once clients can connect.
pub fn start(config: WorkerConfig, shutdown: Shutdown) -> Result<Worker, WorkerError> {
    // Bind first: a wrong or busy socket path fails before any memory is
    // reserved or any spill folder is touched.
    let listener = bind(&config.socket)?;
    let peer_listener = match config.transfer.map(crate::transfer::bind).transpose() {
        Ok(l) => l,
        Err(e) => {
            let _ = std::fs::remove_file(&config.socket);
            return Err(e.into());
        }
    };
    // The secret is read before the store exists, so a missing or exposed
    // file fails the start early, naming the file.
    let secret = match config
        .cluster_secret
        .as_deref()
        .map(crate::peer_auth::Secret::load)
        .transpose()
    {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(&config.socket);
            return Err(e.into());
        }
    };
    let store = match Store::new(config.store.clone()) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            let _ = std::fs::remove_file(&config.socket);
            return Err(e.into());
        }
    };
    let epoch = NodeTag::fresh_epoch();
    let tag = match &peer_listener {
        Some((_, addr)) => NodeTag::new(*addr, epoch),
        None => NodeTag(epoch as u64),
    };
    let node = Node::new(Arc::clone(&store), tag, secret, config.encrypt_transfers)?;
    let transfer_addr = peer_listener.as_ref().map(|(_, a)| *a);
    let peers = match peer_listener {
        Some((l, _)) => {
            let node = Arc::clone(&node);
            let stop = shutdown.clone();
            Some(
                std::thread::Builder::new()
                    .name("yr-peer-accept".into())
                    .spawn(move || crate::transfer::serve(node, l, stop.fd.as_raw_fd()))?,
            )
        }
        None => None,
    };
    listener.set_nonblocking(true)?;
    let conns: Arc<Mutex<HashMap<ClientId, UnixStream>>> = Arc::default();
    let spiller = {
        let store = store.clone();
        std::thread::Builder::new()
            .name("yr-spill".into())
            .spawn(move || store.run_spiller())?
    };
    let accept = {
        let node = node.clone();
        let conns = conns.clone();
        let stop = shutdown.clone();
        std::thread::Builder::new()
            .name("yr-accept".into())
            .spawn(move || accept_loop(listener, node, conns, stop))?
    };
    Ok(Worker {
        store,
        node,
        transfer_addr,
        socket: config.socket,
        shutdown,
        accept: Some(accept),
        peers,
        spiller: Some(spiller),
        conns,
    })
}

impl Worker {
    /// The store being served (for in-process tests and stats).
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// This node's cross-node side (tag, transfer counters).
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// The address other nodes pull from, if this worker has one.
    pub fn transfer_addr(&self) -> Option<SocketAddrV4> {
        self.transfer_addr
    }

    /// Blocks until the shutdown handle fires, then stops everything.
    pub fn wait(mut self) {
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        self.stop();
    }

    fn stop(&mut self) {
        self.shutdown.trigger();
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        if let Some(h) = self.peers.take() {
            let _ = h.join();
        }
        self.store.shutdown();
        for (_, c) in self.conns.lock().drain() {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        if let Some(h) = self.spiller.take() {
            let _ = h.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs a worker until `shutdown` fires: the `run(config, shutdown)` entry
/// every component has. `on_ready` is called once clients can connect (the
/// `yr component` wrapper announces readiness there).
pub fn run(
    config: WorkerConfig,
    shutdown: Shutdown,
    on_ready: impl FnOnce(&Worker) -> io::Result<()>,
) -> Result<(), WorkerError> {
    let socket = config.socket.clone();
    let worker = start(config, shutdown)?;
    let st = worker.store();
    tracing::info!(
        socket = %socket.display(),
        arena_bytes = st.arena().size(),
        prefault = st.arena().prefaulted(),
        spill_engine = st.spill_engine().unwrap_or("disabled"),
        transfer = %worker.node().tag(),
        "data worker ready"
    );
    on_ready(&worker)?;
    worker.wait();
    tracing::info!("data worker stopped");
    Ok(())
}

fn accept_loop(
    listener: UnixListener,
    node: Arc<Node>,
    conns: Arc<Mutex<HashMap<ClientId, UnixStream>>>,
    stop: Shutdown,
) {
    let stop_fd = stop.fd.as_raw_fd();
    listen::poll_accept(listener.as_raw_fd(), stop_fd, "data worker socket", || {
        listen::accept_all(
            || listener.accept(),
            |(stream, _)| {
                if let Err(e) = spawn_client(stream, &node, &conns) {
                    tracing::warn!("cannot start client thread: {e}");
                }
            },
        )
    });
}

fn spawn_client(
    stream: UnixStream,
    node: &Arc<Node>,
    conns: &Arc<Mutex<HashMap<ClientId, UnixStream>>>,
) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    let client = node.store().connect();
    conns.lock().insert(client, stream.try_clone()?);
    let node = node.clone();
    let thread_conns = conns.clone();
    let r = std::thread::Builder::new()
        .name(format!("yr-client-{client}"))
        .spawn(move || {
            if let Err(e) = serve(&node, client, stream) {
                tracing::debug!("client {client}: {e}");
            }
            thread_conns.lock().remove(&client);
            // Pins go first, so a freed object is not kept by this client's pins.
            node.store().disconnect(client);
            node.disconnect(client);
        });
    if r.is_err() {
        // The thread never ran: undo the registration here.
        if let Some(s) = conns.lock().remove(&client) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
    r.map(|_| ())
}

fn error(code: ErrorCode, message: impl Into<String>) -> Response {
    Response::Error(ErrorReply::new(code, message))
}

/// Serves one client until it leaves or misbehaves.
fn serve(node: &Node, client: ClientId, stream: UnixStream) -> io::Result<()> {
    let store = node.store();
    let mut writer = stream.try_clone()?;
    let mut reader =
        BufReader::with_capacity(64 << 10, fdpass::SpinStream::new(stream, SPIN_BUDGET));
    let mut buf = Vec::with_capacity(4096);

    // Handshake: the first frame must be a Hello of our version.
    read_frame(&mut reader, &mut buf, MAX_REQUEST_FRAME).map_err(frame_io)?;
    match Request::decode(&buf) {
        Ok(Request::Hello { version, pid, name }) if version == PROTOCOL_VERSION => {
            tracing::debug!("client {client}: {name} (pid {pid}) connected");
            let hello = Response::Hello {
                version: PROTOCOL_VERSION,
                arena_size: store.arena().size(),
                prefaulted: store.arena().prefaulted(),
                client_id: client as u64,
                node_tag: node.tag().0,
            };
            fdpass::send_with_fd(&writer, &hello.encode(), store.arena().raw_fd())?;
        }
        Ok(Request::Hello { version, .. }) => {
            let r = error(
                ErrorCode::VersionMismatch,
                format!(
                    "client speaks protocol version {version}, this data worker speaks {PROTOCOL_VERSION}"
                ),
            );
            writer.write_all(&r.encode())?;
            return Ok(());
        }
        Ok(_) => {
            let r = error(ErrorCode::BadRequest, "the first request must be Hello");
            writer.write_all(&r.encode())?;
            return Ok(());
        }
        Err(e) => {
            let r = error(ErrorCode::BadRequest, format!("malformed hello: {e}"));
            writer.write_all(&r.encode())?;
            return Ok(());
        }
    }

    loop {
        match read_frame(&mut reader, &mut buf, MAX_REQUEST_FRAME) {
            Ok(()) => {}
            Err(FrameError::Closed) => return Ok(()),
            Err(FrameError::Empty) => {
                writer.write_all(&error(ErrorCode::BadRequest, "empty frame").encode())?;
                continue;
            }
            Err(e @ FrameError::TooLarge { .. }) => {
                // We cannot skip the body safely without reading it all;
                // tell the client and hang up.
                let _ = writer.write_all(&error(ErrorCode::BadRequest, e.to_string()).encode());
                return Ok(());
            }
            Err(FrameError::Io(e)) => return Err(e),
        }
        let req = match Request::decode(&buf) {
            Ok(r) => r,
            Err(e) => {
                let r = error(ErrorCode::BadRequest, format!("malformed request: {e}"));
                writer.write_all(&r.encode())?;
                continue;
            }
        };
        if let Some(resp) = handle(node, client, req) {
            writer.write_all(&resp.encode())?;
        }
    }
}

fn frame_io(e: FrameError) -> io::Error {
    match e {
        FrameError::Io(e) => e,
        other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
    }
}

/// Executes one request. `None` for requests without a reply.
pub fn handle(node: &Node, client: ClientId, req: Request) -> Option<Response> {
    let store = node.store();
    let ok_or = |r: Result<(), ErrorReply>| match r {
        Ok(()) => Response::Ok,
        Err(e) => Response::Error(e),
    };
    Some(match req {
        Request::Hello { .. } => error(ErrorCode::BadRequest, "already said hello"),
        Request::Create {
            id,
            data_size,
            meta_size,
        } => match store.create(client, id, data_size, meta_size) {
            Ok(offset) => Response::Created { offset },
            Err(e) => Response::Error(e),
        },
        Request::Seal { id } => ok_or(store.seal(client, id)),
        Request::PutInline { id, data, meta } => ok_or(store.put_inline(client, id, &data, &meta)),
        Request::Get { timeout_ms, ids } => {
            Response::Objects(store.get(client, &ids, Duration::from_millis(timeout_ms)))
        }
        Request::Release { id } => {
            store.release(client, id);
            return None;
        }
        Request::Delete { ids } => Response::Results(store.delete(&ids)),
        Request::Abort { id } => ok_or(store.abort(client, id)),
        Request::Contains { id } => Response::Bool(store.contains(&id)),
        Request::List { limit } => Response::List(store.list(limit as usize)),
        Request::Stats => {
            let mut s = store.stats();
            let t = node.stats();
            s.pulls = t.pulls;
            s.pull_joins = t.pull_joins;
            s.pulled_bytes = t.pulled_bytes;
            s.serves = t.serves;
            s.served_bytes = t.served_bytes;
            Response::Stats(s)
        }
        Request::GetRemote { timeout_ms, id } => Response::Objects(vec![node.get_remote(
            client,
            id,
            Duration::from_millis(timeout_ms),
        )]),
        Request::Own { ids } => {
            node.own(client, &ids);
            return None;
        }
        Request::Free { ids } => {
            node.free(client, &ids);
            return None;
        }
        Request::SetPeers { addrs } => {
            node.set_peers(&addrs);
            Response::Ok
        }
        Request::KvBind { key, id } => ok_or(store.kv_bind(&key, id)),
        Request::KvGet { key, timeout_ms } => {
            match store.kv_get(client, &key, Duration::from_millis(timeout_ms)) {
                Ok((id, view)) => Response::KvObject { id, view },
                Err(e) => Response::Error(e),
            }
        }
        Request::KvDel { key } => ok_or(store.kv_del(&key)),
        Request::KvExists { key } => Response::Bool(store.kv_exists(&key)),
        Request::Spill { target_used } => {
            let t = std::time::Instant::now();
            match store.spill_until(target_used) {
                Ok(bytes) => Response::Spilled {
                    bytes,
                    nanos: t.elapsed().as_nanos() as u64,
                },
                Err(e) => Response::Error(e),
            }
        }
    })
}
