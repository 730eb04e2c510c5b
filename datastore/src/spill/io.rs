//! The I/O engines behind spill and restore: io_uring, and a pwrite/pread fallback (on a few
//! worker threads, so it too keeps several transfers in flight) for kernels or seccomp profiles
//! that refuse io_uring.
//!
//! Both sit behind [`IoEngine`], a deliberately narrow seam: a queue of positioned whole-buffer
//! transfers. Callers push [`Op`]s, which *own* their buffers, and get each one back from
//! [`IoQueue::wait`] once it has transferred every byte. Ownership moving into the queue is what
//! makes asynchronous I/O safe without borrow gymnastics: nobody can touch a buffer while the
//! kernel may be writing into it, and a queue that is dropped early first waits until the kernel
//! has let go of every buffer it holds.
//!
//! Short transfers are completed by resubmitting the remainder; `EINTR`/`EAGAIN` completions are
//! retried; any other negative result becomes an `io::Error` for that op.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::sync::{mpsc, Arc, OnceLock};

use io_uring::{opcode, squeue, types, IoUring, Probe};
use parking_lot::Mutex;

use super::buf::AlignedBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OpKind {
    Read,
    Write,
}

/// One positioned transfer of `buf[..len]` at file offset `offset`.
pub(super) struct Op {
    pub(super) kind: OpKind,
    pub(super) offset: u64,
    pub(super) len: usize,
    pub(super) buf: AlignedBuf,
    /// The caller's name for this op (e.g. its chunk index); completions may arrive in any order.
    pub(super) tag: usize,
}

/// A way to run batches of positioned transfers against a file.
pub(super) trait IoEngine: Send + Sync {
    fn name(&self) -> &'static str;

    /// A queue for transfers on `file`. The caller keeps at most `depth` ops pushed and not yet
    /// returned by `wait`.
    fn queue<'a>(&'a self, file: &'a File, depth: usize) -> Box<dyn IoQueue + 'a>;
}

pub(super) trait IoQueue {
    /// Queues `op`. An engine may start (or, synchronously, finish) it right away.
    fn push(&mut self, op: Op) -> io::Result<()>;

    /// Hands every queued op to the kernel without waiting, so the device works while the
    /// caller prepares the next buffer.
    fn flush(&mut self) -> io::Result<()>;

    /// Waits until some pushed op has transferred all its bytes and returns it. An error names
    /// the failure of one op; that op's buffer is gone, the others are still queued.
    fn wait(&mut self) -> io::Result<Op>;

    /// Ops pushed and not yet returned by `wait`.
    fn pending(&self) -> usize;
}

fn check_op(op: &Op) -> io::Result<()> {
    if op.len > op.buf.len() || u32::try_from(op.len).is_err() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "transfer of {} bytes does not fit a {}-byte buffer",
                op.len,
                op.buf.len()
            ),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// pwrite/pread fallback

/// Positioned I/O on a few worker threads, for where io_uring is refused (old kernels, container
/// seccomp profiles). The threads are what let it keep several transfers in flight and overlap
/// them with the caller's staging copies, as io_uring does. Ops own their buffers, so a transfer
/// outliving its queue is harmless; the queue waits for its ops anyway, so that a failed spill
/// has really stopped writing when it reports.
pub(super) struct PwriteEngine {
    workers: usize,
    /// Started on first use; `None` inside if no thread could be spawned, and then every
    /// transfer runs synchronously on the caller's thread.
    jobs: OnceLock<Option<mpsc::Sender<Job>>>,
}

struct Job {
    file: Arc<File>,
    op: Op,
    done: mpsc::Sender<io::Result<Op>>,
}

impl PwriteEngine {
    /// `workers` bounds the transfers in flight across all queues of this engine.
    pub(super) fn new(workers: usize) -> Self {
        Self {
            workers: workers.max(1),
            jobs: OnceLock::new(),
        }
    }

    fn jobs(&self) -> Option<mpsc::Sender<Job>> {
        let jobs = self.jobs.get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Job>();
            let rx = Arc::new(Mutex::new(rx));
            let mut started = 0;
            for i in 0..self.workers {
                let rx = Arc::clone(&rx);
                let spawned = std::thread::Builder::new()
                    .name(format!("yr-spill-io-{i}"))
                    .spawn(move || loop {
                        // The lock is held only to take a job, never across the transfer.
                        let job = rx.lock().recv();
                        let Ok(Job { file, mut op, done }) = job else {
                            return; // engine dropped
                        };
                        let res = transfer(&file, &mut op).map(|()| op);
                        let _ = done.send(res); // the queue may have given up on it
                    });
                match spawned {
                    Ok(_) => started += 1,
                    Err(e) => tracing::warn!(error = %e, "cannot start a spill I/O thread"),
                }
            }
            (started > 0).then_some(tx)
        });
        jobs.clone()
    }
}

/// One whole positioned transfer; std's `*_all_at` already loop over short transfers and EINTR.
fn transfer(file: &File, op: &mut Op) -> io::Result<()> {
    match op.kind {
        OpKind::Write => file.write_all_at(&op.buf.as_slice()[..op.len], op.offset),
        OpKind::Read => file.read_exact_at(&mut op.buf.as_mut_slice()[..op.len], op.offset),
    }
}

impl IoEngine for PwriteEngine {
    fn name(&self) -> &'static str {
        "pwrite"
    }

    fn queue<'a>(&'a self, file: &'a File, _depth: usize) -> Box<dyn IoQueue + 'a> {
        // Workers need a handle of their own on the file: a dup'ed descriptor.
        let threaded = self
            .jobs()
            .and_then(|jobs| Some((jobs, Arc::new(file.try_clone().ok()?))));
        let (done_tx, done_rx) = mpsc::channel();
        Box::new(PwriteQueue {
            file,
            threaded,
            done_tx,
            done_rx,
            in_flight: 0,
            done: VecDeque::new(),
        })
    }
}

struct PwriteQueue<'a> {
    file: &'a File,
    threaded: Option<(mpsc::Sender<Job>, Arc<File>)>,
    done_tx: mpsc::Sender<io::Result<Op>>,
    done_rx: mpsc::Receiver<io::Result<Op>>,
    /// Ops handed to workers and not yet received back.
    in_flight: usize,
    /// Ops finished synchronously (no workers).
    done: VecDeque<Op>,
}

impl IoQueue for PwriteQueue<'_> {
    fn push(&mut self, mut op: Op) -> io::Result<()> {
        check_op(&op)?;
        if let Some((jobs, file)) = &self.threaded {
            let job = Job {
                file: Arc::clone(file),
                op,
                done: self.done_tx.clone(),
            };
            match jobs.send(job) {
                Ok(()) => {
                    self.in_flight += 1;
                    return Ok(());
                }
                // Workers gone (cannot happen while the engine lives): do it here.
                Err(mpsc::SendError(job)) => op = job.op,
            }
        }
        transfer(self.file, &mut op)?;
        self.done.push_back(op);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn wait(&mut self) -> io::Result<Op> {
        if let Some(op) = self.done.pop_front() {
            return Ok(op);
        }
        if self.in_flight == 0 {
            return Err(nothing_pending());
        }
        let res = self
            .done_rx
            .recv()
            .map_err(|_| io::Error::other("spill I/O thread vanished"))?;
        self.in_flight -= 1;
        res
    }

    fn pending(&self) -> usize {
        self.in_flight + self.done.len()
    }
}

impl Drop for PwriteQueue<'_> {
    fn drop(&mut self) {
        while self.in_flight > 0 && self.done_rx.recv().is_ok() {
            self.in_flight -= 1;
        }
    }
}

fn nothing_pending() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, "wait with no transfer pending")
}

// ---------------------------------------------------------------------------------------------
// io_uring

/// Rings kept idle per engine. Each concurrent spill or restore takes one ring for its duration,
/// so that a restore never queues behind a spill's submissions; a few cover the data worker's
/// threads, and a burst beyond that gets short-lived extra rings.
const MAX_IDLE_RINGS: usize = 8;

/// io_uring with a small pool of rings.
pub(super) struct UringEngine {
    entries: u32,
    /// For a transfer that cannot get a ring (out of fds or locked memory).
    fallback: PwriteEngine,
    /// Rings are not shared while in use (the submission queue is single-producer), so a pool of
    /// whole rings rather than one ring behind a lock.
    idle: Mutex<Vec<IoUring>>,
}

/// Whether this process may use io_uring: decided once, on first use, by building a ring and
/// checking that the kernel knows the read and write opcodes (5.6+). `Err` carries the reason.
pub(super) fn uring_support() -> &'static Result<(), String> {
    static SUPPORT: OnceLock<Result<(), String>> = OnceLock::new();
    SUPPORT.get_or_init(|| {
        let ring = IoUring::new(4).map_err(|e| format!("io_uring_setup failed: {e}"))?;
        let mut probe = Probe::new();
        ring.submitter()
            .register_probe(&mut probe)
            .map_err(|e| format!("io_uring probe failed: {e}"))?;
        if probe.is_supported(opcode::Read::CODE) && probe.is_supported(opcode::Write::CODE) {
            Ok(())
        } else {
            Err("kernel io_uring lacks IORING_OP_READ/WRITE (needs Linux 5.6+)".to_owned())
        }
    })
}

impl UringEngine {
    /// `depth` is the most ops any queue will have in flight; every ring is sized for it.
    pub(super) fn new(depth: usize) -> io::Result<Self> {
        let entries = u32::try_from(depth.max(1))
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "queue depth too large"))?
            .next_power_of_two();
        // Build the first ring now, so a store that opens with io_uring can use it.
        let ring = IoUring::new(entries)?;
        Ok(Self {
            entries,
            fallback: PwriteEngine::new(depth),
            idle: Mutex::new(vec![ring]),
        })
    }
}

impl IoEngine for UringEngine {
    fn name(&self) -> &'static str {
        "io_uring"
    }

    fn queue<'a>(&'a self, file: &'a File, depth: usize) -> Box<dyn IoQueue + 'a> {
        let pooled = self.idle.lock().pop();
        let ring = match pooled {
            Some(ring) => ring,
            None => match IoUring::new(self.entries) {
                Ok(ring) => ring,
                Err(e) => {
                    // Out of fds or locked memory: this one transfer still has to happen.
                    tracing::warn!(error = %e, "cannot build another io_uring; using pwrite for this transfer");
                    return self.fallback.queue(file, depth);
                }
            },
        };
        let capacity = (self.entries as usize).min(depth.max(1));
        Box::new(UringQueue {
            engine: self,
            ring: Some(ring),
            fd: file.as_raw_fd(),
            _file: file,
            slots: (0..capacity).map(|_| None).collect(),
            free: (0..capacity).rev().collect(),
            done: VecDeque::new(),
            completions: Vec::with_capacity(capacity),
        })
    }
}

/// An op the kernel holds, and how far it has got.
struct Slot {
    op: Op,
    transferred: usize,
}

struct UringQueue<'a> {
    engine: &'a UringEngine,
    /// `None` only after the ring has been leaked because it could not be drained (see `Drop`).
    ring: Option<IoUring>,
    fd: RawFd,
    /// Keeps the file (and so `fd`) open while transfers on it are in flight.
    _file: &'a File,
    /// Ops with the kernel, indexed by their SQE user_data.
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    done: VecDeque<Op>,
    /// Reused scratch for (user_data, result) pairs of one reap.
    completions: Vec<(u64, i32)>,
}

impl UringQueue<'_> {
    fn ring(&mut self) -> io::Result<&mut IoUring> {
        self.ring
            .as_mut()
            .ok_or_else(|| io::Error::other("io_uring was abandoned after a failure"))
    }

    fn in_kernel(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Queues an SQE for the untransferred remainder of slot `idx`.
    fn push_sqe(&mut self, idx: usize) -> io::Result<()> {
        let fd = self.fd;
        let Some(slot) = self.slots[idx].as_mut() else {
            return Err(io::Error::other("io_uring slot lost its op"));
        };
        let remaining = (slot.op.len - slot.transferred) as u32;
        let offset = slot.op.offset + slot.transferred as u64;
        // SAFETY: `transferred < len <= buf.len()` (checked in `push`), so the pointer stays
        // inside the buffer.
        let ptr = unsafe { slot.op.buf.as_mut_ptr().add(slot.transferred) };
        let entry = match slot.op.kind {
            OpKind::Write => opcode::Write::new(types::Fd(fd), ptr, remaining)
                .offset(offset)
                .build(),
            OpKind::Read => opcode::Read::new(types::Fd(fd), ptr, remaining)
                .offset(offset)
                .build(),
        }
        .user_data(idx as u64);
        self.push_entry(&entry)
    }

    fn push_entry(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        let ring = self.ring()?;
        for _ in 0..2 {
            // SAFETY: the SQE points into a buffer owned by `self.slots`, which keeps it (neither
            // moved out nor accessed) until its completion is reaped; `Drop` waits for every
            // outstanding completion, or leaks the buffers if it cannot. The fd stays open because
            // `self` borrows the `File` for its whole life.
            if unsafe { ring.submission().push(entry) }.is_ok() {
                return Ok(());
            }
            // The SQ holds at most one entry per slot, so it is never full for long: submit
            // what is there and retry.
            submit(ring)?;
        }
        Err(io::Error::other("io_uring submission queue stays full"))
    }

    /// Moves every available completion into `done` (or resubmits its remainder). Returns the
    /// first failure, after processing all completions so that no slot is forgotten.
    fn reap(&mut self) -> io::Result<()> {
        let mut completions = std::mem::take(&mut self.completions);
        completions.clear();
        completions.extend(
            self.ring()?
                .completion()
                .map(|cqe| (cqe.user_data(), cqe.result())),
        );
        let mut first_err = None;
        for &(user_data, res) in &completions {
            if let Err(e) = self.complete(user_data as usize, res) {
                first_err.get_or_insert(e);
            }
        }
        self.completions = completions;
        first_err.map_or(Ok(()), Err)
    }

    fn complete(&mut self, idx: usize, res: i32) -> io::Result<()> {
        let Some(slot) = self.slots.get_mut(idx).and_then(Option::as_mut) else {
            return Err(io::Error::other(format!(
                "io_uring completion for unknown op {idx}"
            )));
        };
        if res < 0 {
            let errno = -res;
            if errno == libc::EINTR || errno == libc::EAGAIN {
                return self.resubmit(idx);
            }
            self.release(idx);
            return Err(io::Error::from_raw_os_error(errno));
        }
        if res == 0 {
            let kind = slot.op.kind;
            self.release(idx);
            return Err(match kind {
                OpKind::Write => io::Error::new(io::ErrorKind::WriteZero, "write made no progress"),
                OpKind::Read => io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "file ends before the requested range",
                ),
            });
        }
        slot.transferred += res as usize;
        if slot.transferred < slot.op.len {
            return self.resubmit(idx);
        }
        if let Some(slot) = self.release(idx) {
            self.done.push_back(slot.op);
        }
        Ok(())
    }

    /// Queues the rest of slot `idx`. If that fails the kernel no longer holds the buffer (its last
    /// transfer completed), so the slot is released rather than left to be waited for forever.
    fn resubmit(&mut self, idx: usize) -> io::Result<()> {
        let res = self.push_sqe(idx);
        if res.is_err() {
            self.release(idx);
        }
        res
    }

    fn release(&mut self, idx: usize) -> Option<Slot> {
        let slot = self.slots[idx].take();
        if slot.is_some() {
            self.free.push(idx);
        }
        slot
    }
}

/// `submit`, retrying interruptions; `EBUSY` (completion queue full) is left for the caller's
/// next reap to clear.
fn submit(ring: &IoUring) -> io::Result<()> {
    loop {
        match ring.submit() {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// Blocks until at least one completion is available (or a harmless interruption).
fn submit_and_wait_one(ring: &IoUring) -> io::Result<()> {
    match ring.submit_and_wait(1) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(()),
        Err(e) => Err(e),
    }
}

impl IoQueue for UringQueue<'_> {
    fn push(&mut self, op: Op) -> io::Result<()> {
        check_op(&op)?;
        let Some(idx) = self.free.pop() else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "io_uring queue depth exceeded",
            ));
        };
        if op.len == 0 {
            self.free.push(idx);
            self.done.push_back(op);
            return Ok(());
        }
        self.slots[idx] = Some(Slot { op, transferred: 0 });
        if let Err(e) = self.push_sqe(idx) {
            // Never reached the SQ, so the kernel never saw the buffer.
            self.release(idx);
            return Err(e);
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        submit(self.ring()?)
    }

    fn wait(&mut self) -> io::Result<Op> {
        loop {
            if let Some(op) = self.done.pop_front() {
                return Ok(op);
            }
            if self.in_kernel() == 0 {
                return Err(nothing_pending());
            }
            self.reap()?;
            if !self.done.is_empty() {
                continue;
            }
            submit_and_wait_one(self.ring()?)?;
        }
    }

    fn pending(&self) -> usize {
        self.in_kernel() + self.done.len()
    }
}

impl Drop for UringQueue<'_> {
    fn drop(&mut self) {
        // After an error (or a panic in the caller) ops may still be in flight: their buffers
        // must outlive the kernel's use of them.
        let mut finished = Vec::new();
        while self.in_kernel() > 0 {
            let drained = match self.ring.as_mut() {
                Some(ring) => submit_and_wait_one(ring).map(|()| {
                    finished.extend(ring.completion().map(|cqe| cqe.user_data()));
                }),
                None => Err(io::Error::other("ring already abandoned")),
            };
            if let Err(e) = drained {
                tracing::error!(error = %e, in_flight = self.in_kernel(),
                    "cannot drain io_uring; leaking its buffers rather than freeing memory the kernel may still write");
                for slot in self.slots.iter_mut().filter_map(Option::take) {
                    std::mem::forget(slot);
                }
                if let Some(ring) = self.ring.take() {
                    std::mem::forget(ring);
                }
                return;
            }
            for idx in finished.drain(..) {
                if let Some(i) = usize::try_from(idx).ok().filter(|&i| i < self.slots.len()) {
                    self.release(i);
                }
            }
        }
        if let Some(ring) = self.ring.take() {
            let mut idle = self.engine.idle.lock();
            if idle.len() < MAX_IDLE_RINGS {
                idle.push(ring);
            }
        }
    }
}
