//! The threads that run stateless calls.
//!
//! A call goes to an idle thread through a channel whose receivers spin briefly before
//! sleeping, so under load a thread picks the next call up without a sleep and wake (measured:
//! handing each call to `spawn_blocking` cost about four context switches per call). A thread
//! is added whenever a call finds none idle, up to `limit` threads (the function's concurrency,
//! which the proxy also enforces): calls that block never wait for each other below the limit,
//! and calls the proxy gave up on can never make the threads grow past it.
//!
//! Invariants: `idle` counts threads waiting for a job; below the limit a job is sent only after
//! an idle thread was claimed or a new one started, so no job waits behind a busy thread. At the
//! limit a job waits in the channel for the first thread to finish (threads never end before the
//! instance does, so once at the limit the pool stays there and `idle` only decides nothing).
//! Never more than `limit` threads.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::error::Error;

/// One call's work.
pub(super) type Job = Box<dyn FnOnce() + Send>;

/// The pool of call threads.
pub(super) struct Workers {
    tx: crossbeam::channel::Sender<Job>,
    rx: crossbeam::channel::Receiver<Job>,
    idle: Arc<AtomicUsize>,
    /// Threads started (they run until the instance ends).
    threads: AtomicUsize,
    /// The most threads this pool starts.
    limit: usize,
}

impl Workers {
    /// A pool of at most `limit` threads (at least one).
    pub fn new(limit: usize) -> Workers {
        let (tx, rx) = crossbeam::channel::unbounded();
        Workers {
            tx,
            rx,
            idle: Arc::default(),
            threads: AtomicUsize::new(0),
            limit: limit.max(1),
        }
    }

    /// Threads started so far.
    #[cfg(test)]
    fn threads(&self) -> usize {
        self.threads.load(Ordering::Acquire)
    }

    /// Runs `job` on an idle thread, or on a new one when none is idle and the pool is below
    /// its limit, else on the first thread that finishes.
    pub fn run(&self, job: Job) -> Result<(), Error> {
        // Claim an idle thread; without one, start another if the limit allows.
        let claimed = self
            .idle
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok();
        let start = !claimed
            && self
                .threads
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < self.limit).then_some(n + 1)
                })
                .is_ok();
        if start {
            let rx = self.rx.clone();
            let idle = Arc::clone(&self.idle);
            std::thread::Builder::new()
                .name("yr-call".into())
                .spawn(move || {
                    // Ends when the instance stops (the sender is dropped).
                    while let Ok(job) = rx.recv() {
                        job();
                        idle.fetch_add(1, Ordering::AcqRel);
                    }
                })
                .map_err(|e| Error::Threads(format!("cannot start a call thread: {e}")))?;
        }
        self.tx
            .send(job)
            .map_err(|_| Error::Threads("the call threads have stopped".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_that_block_do_not_wait_for_each_other() {
        let w = Workers::new(4);
        // Every job blocks until all four run at once: a pool that queued a job behind a busy
        // thread would never get there.
        let all = Arc::new(std::sync::Barrier::new(4));
        let (done_tx, done_rx) = std::sync::mpsc::channel::<usize>();
        for i in 0..4usize {
            let (all, done) = (Arc::clone(&all), done_tx.clone());
            w.run(Box::new(move || {
                all.wait();
                let _ = done.send(i);
            }))
            .expect("runs");
        }
        let mut finished: Vec<usize> = (0..4)
            .map(|_| {
                done_rx
                    .recv_timeout(std::time::Duration::from_secs(30))
                    .expect("every job finishes")
            })
            .collect();
        finished.sort();
        assert_eq!(finished, vec![0, 1, 2, 3]);
    }

    #[test]
    fn the_threads_stay_within_the_limit_and_queued_calls_run_later() {
        let w = Workers::new(2);
        // Two calls block until released; four more queue behind them.
        let gate = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        let (done_tx, done_rx) = std::sync::mpsc::channel::<usize>();
        for i in 0..6usize {
            let (gate, done) = (Arc::clone(&gate), done_tx.clone());
            w.run(Box::new(move || {
                let (open, cv) = &*gate;
                let mut g = open.lock().unwrap_or_else(|p| p.into_inner());
                while !*g {
                    g = cv.wait(g).unwrap_or_else(|p| p.into_inner());
                }
                drop(g);
                let _ = done.send(i);
            }))
            .expect("runs");
        }
        assert_eq!(w.threads(), 2, "never more threads than the limit");
        {
            let (open, cv) = &*gate;
            *open.lock().unwrap_or_else(|p| p.into_inner()) = true;
            cv.notify_all();
        }
        let mut finished: Vec<usize> = (0..6)
            .map(|_| {
                done_rx
                    .recv_timeout(std::time::Duration::from_secs(30))
                    .expect("every queued job runs")
            })
            .collect();
        finished.sort();
        assert_eq!(finished, (0..6).collect::<Vec<_>>());
        assert_eq!(w.threads(), 2);
    }
}
