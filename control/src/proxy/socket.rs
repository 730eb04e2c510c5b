//! The instance socket: the Unix socket this node's function processes connect to, carrying the
//! length-prefixed frames of [`yr_proto::frame`] (InstanceMessage upwards, ProxyMessage
//! downwards).
//!
//! A process says hello first, naming its instance and carrying the instance's secret that the
//! agent gave it (see [`crate::secret`]); the proxy checks the secret, looks the instance and its
//! function up, answers with the instance's configuration (or `refused` and closes), registers
//! it as a local instance and reports it RUNNING to the master. Calls then go down the socket and
//! results come up until it closes, which fails every call still waiting on the instance.
//!
//! Invariants: only this user may connect (mode 0600); a connection that does not say hello
//! within [`HELLO_TIMEOUT`] is refused, and so is a hello whose secret is not its instance's, and
//! a hello for an instance that is connected already (so no process can take over another's
//! calls, or unregister it by leaving); each refusal is logged. One peer's frames are written in
//! order, the small ones that are ready gathered into one write. A recycled instance (see
//! [`super::cancel`]) is unregistered at once; if its process has not closed its connection
//! [`RECYCLE_KILL_AFTER`] later, the proxy kills it (through a pidfd taken from the kernel's
//! credentials of the connection when it was accepted, so the signal cannot reach another
//! process that reused the pid).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use yr_proto::frame;
use yr_proto::*;

use super::local::LocalInstance;
use super::{unavailable, State};
use crate::error::Error;
use crate::etcd;
use crate::secret::NodeSecret;
use crate::Shutdown;

/// How long a new connection on the instance socket has to say which instance it is.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a recycled instance's process has to end on its own (the runtime ends it as soon
/// as it reads the recycle) before the proxy kills it: for a process too wedged to read.
const RECYCLE_KILL_AFTER: Duration = Duration::from_secs(5);

/// Frames smaller than this are gathered into one write; larger ones are written on their own.
const BATCH: usize = 64 << 10;

/// The bound instance socket and the node secret its hellos are checked against.
pub(super) struct InstanceSocket {
    listener: UnixListener,
    secret: Arc<NodeSecret>,
}

/// Binds the instance socket at `path`: a file left by an earlier proxy is replaced, one that a
/// live proxy answers on is not. Only this user may connect (mode 0600). Creates the node secret
/// and writes it to `secret_file` for the agent (see [`crate::secret`]).
pub(super) fn bind(
    path: &std::path::Path,
    secret_file: &std::path::Path,
) -> Result<InstanceSocket, Error> {
    use std::os::unix::fs::PermissionsExt;
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(Error::invalid(
                "instance_socket",
                format!(
                    "another proxy serves the instance socket {}; stop it or choose another path",
                    path.display()
                ),
            ));
        }
        std::fs::remove_file(path)
            .map_err(|e| Error::io(format!("cannot replace {}", path.display()), e))?;
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| Error::io(format!("cannot listen on {}", path.display()), e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io(format!("cannot restrict {}", path.display()), e))?;
    let secret = Arc::new(NodeSecret::create(secret_file)?);
    Ok(InstanceSocket { listener, secret })
}

/// Accepts function processes' connections until `shutdown`.
pub(super) async fn accept(state: Arc<State>, socket: InstanceSocket, shutdown: Shutdown) {
    let InstanceSocket { listener, secret } = socket;
    loop {
        tokio::select! {
            conn = listener.accept() => match conn {
                Ok((stream, _)) => {
                    tokio::spawn(serve(Arc::clone(&state), Arc::clone(&secret), stream));
                }
                Err(e) => {
                    tracing::warn!("instance socket: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.wait() => return,
        }
    }
}

/// One function process's connection, from its hello to its end: registers the instance, then
/// delivers replies to the calls waiting for them until the socket closes.
async fn serve(state: Arc<State>, secret: Arc<NodeSecret>, stream: UnixStream) {
    // The connecting process, as the kernel knows it (not as it says): to end it if it is
    // recycled and lingers.
    let process = stream
        .peer_cred()
        .ok()
        .and_then(|c| c.pid())
        .and_then(|pid| u32::try_from(pid).ok())
        .and_then(Pidfd::open);
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(BATCH, rd);
    let mut buf = Vec::new();
    let hello = match tokio::time::timeout(
        HELLO_TIMEOUT,
        read_frame::<InstanceMessage>(&mut rd, &mut buf),
    )
    .await
    {
        Ok(Ok(Some(InstanceMessage {
            msg: Some(instance_message::Msg::Hello(h)),
        }))) => h,
        Ok(Ok(Some(_))) => return refuse(&mut wr, "the first frame must be a hello").await,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => return refuse(&mut wr, &format!("bad hello: {e}")).await,
        Err(_) => {
            return refuse(
                &mut wr,
                &format!("no hello within {} s", HELLO_TIMEOUT.as_secs()),
            )
            .await
        }
    };
    if !secret.verify(&hello.instance_id, &hello.secret) {
        let why = format!(
            "the hello for instance {:?} does not carry that instance's secret (only the process \
             the node's agent started for an instance may serve it)",
            hello.instance_id
        );
        tracing::warn!(instance = %hello.instance_id, pid = hello.pid, "refused: {why}");
        return refuse(&mut wr, &why).await;
    }
    let (record, function) = match instance_and_function(&state, &hello.instance_id).await {
        Ok(rf) => rf,
        Err(why) => {
            tracing::warn!(instance = %hello.instance_id, pid = hello.pid, "refused: {why}");
            return refuse(&mut wr, &why.to_string()).await;
        }
    };
    let (tx, rx) = mpsc::channel(1024);
    let concurrency = if record.stateful {
        1
    } else {
        function.concurrency.max(1)
    };
    let inst = Arc::new(LocalInstance::new(
        record.instance_id.clone(),
        record.function.clone(),
        tx,
        concurrency,
        (!record.stateful).then(|| state.pool(&record.function)),
        hello.cancels,
    ));
    let config = ProxyMessage {
        msg: Some(proxy_message::Msg::Config(InstanceConfig {
            function: record.function.clone(),
            handler: function.handler.clone(),
            stateful: record.stateful,
            name: record.name.clone(),
            concurrency,
        })),
    };
    // Checked and registered under one lock: of two hellos for one instance, one wins. Calls
    // routed to it before its configuration is written wait in `tx`, behind the configuration.
    let taken = match state.locals.write() {
        Ok(mut l) if !l.contains_key(&inst.id) => {
            l.insert(inst.id.clone(), Arc::clone(&inst));
            false
        }
        _ => true,
    };
    if taken {
        let why = format!("instance {} is connected already", inst.id);
        tracing::warn!(instance = %inst.id, pid = hello.pid, "refused: {why}");
        return refuse(&mut wr, &why).await;
    }
    match frame::to_frame(&config) {
        Ok(f) if wr.write_all(&f).await.is_ok() => {}
        _ => {
            unregister(&state, &inst);
            return;
        }
    }
    tokio::spawn(write_frames(wr, rx));
    let recycler = tokio::spawn(on_recycle(Arc::clone(&state), Arc::clone(&inst), process));
    if let Some(pool) = &inst.pool {
        // Calls waiting for a free instance can take this one.
        pool.freed.notify_waiters();
    }
    tracing::info!(instance = %inst.id, function = %inst.function, pid = hello.pid, "instance connected");
    let mut master = state.master.clone();
    let ev = InstanceEvent {
        instance_id: inst.id.clone(),
        state: InstanceState::Running as i32,
        pid: hello.pid,
        ..Default::default()
    };
    if let Err(e) = master.report_instance(ev).await {
        tracing::warn!(instance = %inst.id, "cannot report RUNNING: {}", e.message());
    }
    loop {
        match read_frame::<InstanceMessage>(&mut rd, &mut buf).await {
            Ok(Some(InstanceMessage {
                msg: Some(instance_message::Msg::Result(r)),
            })) => inst.answer(r),
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(instance = %inst.id, "dropping the instance's connection: {e}");
                break;
            }
        }
    }
    recycler.abort();
    unregister(&state, &inst);
    tracing::info!(instance = %inst.id, "instance disconnected");
}

/// Waits for `inst` to be recycled, then unregisters it and, if its process still holds its
/// connection [`RECYCLE_KILL_AFTER`] later, kills the process. Aborted when the connection ends.
async fn on_recycle(state: Arc<State>, inst: Arc<LocalInstance>, process: Option<Pidfd>) {
    inst.recycling.notified().await;
    unregister(&state, &inst);
    tokio::time::sleep(RECYCLE_KILL_AFTER).await;
    match process {
        Some(p) => {
            tracing::warn!(instance = %inst.id, "the recycled process did not end; killing it");
            if let Err(e) = p.kill() {
                tracing::warn!(instance = %inst.id, "cannot kill the recycled process: {e}");
            }
        }
        None => tracing::warn!(
            instance = %inst.id,
            "the recycled process did not end, and its pid is unknown"
        ),
    }
}

/// A process handle that stays tied to one process (Linux pidfd), whatever reuses its pid.
struct Pidfd(std::os::fd::OwnedFd);

impl Pidfd {
    /// A handle on process `pid`; `None` where the kernel has no pidfds (before 5.3).
    fn open(pid: u32) -> Option<Pidfd> {
        use std::os::fd::FromRawFd;
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is
        // passed.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
        // SAFETY: `fd` was just returned by pidfd_open, so it is open and owned by no one else.
        Some(Pidfd(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }))
    }

    /// Sends SIGKILL to the process (an error if it has ended already).
    fn kill(&self) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: pidfd_send_signal takes our open pidfd, a signal number, a null siginfo (as
        // for kill(2)) and flags 0; it touches no memory of ours.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Removes `inst` from this node's local instances (if it is still the one registered under its
/// ID) and fails the calls waiting on it.
fn unregister(state: &State, inst: &Arc<LocalInstance>) {
    if let Ok(mut l) = state.locals.write() {
        if l.get(&inst.id).is_some_and(|i| Arc::ptr_eq(i, inst)) {
            l.remove(&inst.id);
        }
    }
    inst.close();
}

/// The record of a connecting instance and its function's spec, from the mirrors or etcd.
async fn instance_and_function(
    state: &State,
    instance_id: &str,
) -> Result<(InstanceRecord, FunctionSpec), Error> {
    let record = match state.instances.snapshot().get(instance_id).cloned() {
        Some(r) => r,
        None => state
            .meta
            .get::<InstanceRecord>(&etcd::instance_key(instance_id))
            .await
            .map_err(unavailable(&format!(
                "cannot look instance {instance_id} up"
            )))?
            .ok_or_else(|| Error::NotFound(format!("unknown instance {instance_id}")))?,
    };
    let function = match state.functions.snapshot().get(&record.function).cloned() {
        Some(f) => f,
        None => state
            .meta
            .get::<FunctionSpec>(&etcd::function_key(&record.function))
            .await
            .map_err(unavailable(&format!(
                "cannot look function {} up",
                record.function
            )))?
            .ok_or_else(|| Error::NotFound(format!("unknown function {}", record.function)))?,
    };
    Ok((record, function))
}

/// Reads one frame from an instance's socket (see [`frame::read`]).
async fn read_frame<M: prost::Message + Default>(
    rd: &mut BufReader<OwnedReadHalf>,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<M>> {
    let mut head = [0u8; 4];
    // A clean close is one between frames: the first byte of a head does not come.
    match rd.read(&mut head[..1]).await? {
        0 => return Ok(None),
        _ => rd.read_exact(&mut head[1..]).await?,
    };
    let len = frame::body_len(head)?;
    // Grow with the bytes that arrive: a head alone must not cost the frame it announces.
    buf.clear();
    buf.reserve(len.min(frame::EAGER_BODY));
    let got = (&mut *rd).take(len as u64).read_to_end(buf).await?;
    if got < len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("the connection closed inside a frame of {len} bytes"),
        ));
    }
    frame::decode(buf).map(Some)
}

/// Tells a connecting process why it is not served, then closes (best effort: it may be gone).
async fn refuse(wr: &mut OwnedWriteHalf, why: &str) {
    let msg = ProxyMessage {
        msg: Some(proxy_message::Msg::Refused(why.to_string())),
    };
    if let Ok(f) = frame::to_frame(&msg) {
        let _ = wr.write_all(&f).await;
    }
}

/// Writes an instance's frames as they come, gathering the small ones that are ready together
/// into one write. Ends when the instance's sender is dropped or its socket breaks.
async fn write_frames(mut wr: OwnedWriteHalf, mut rx: mpsc::Receiver<Vec<u8>>) {
    let mut batch = Vec::with_capacity(BATCH);
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(f) = next.take() {
            if f.len() >= BATCH {
                if !batch.is_empty() && wr.write_all(&batch).await.is_err() {
                    return;
                }
                batch.clear();
                if wr.write_all(&f).await.is_err() {
                    return;
                }
            } else {
                batch.extend_from_slice(&f);
            }
            if batch.len() < BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() && wr.write_all(&batch).await.is_err() {
            return;
        }
        batch.clear();
    }
}
