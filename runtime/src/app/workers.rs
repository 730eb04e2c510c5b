//! The threads that run stateless calls.
//!
//! A call goes to an idle thread through a channel whose receivers spin briefly before
//! sleeping, so under load a thread picks the next call up without a sleep and wake (measured:
//! handing each call to `spawn_blocking` cost about four context switches per call). A thread
//! is added whenever a call finds none idle, so calls that block never wait for each other (the
//! proxy bounds how many run at once: the function's concurrency).
//!
//! Invariants: `idle` counts threads waiting for a job; a job is sent only after an idle thread
//! was claimed or a new one started, so no job waits behind a busy thread.

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
}

impl Workers {
    pub fn new() -> Workers {
        let (tx, rx) = crossbeam::channel::unbounded();
        Workers {
            tx,
            rx,
            idle: Arc::default(),
        }
    }

    /// Runs `job` on an idle thread, or on a new one when none is idle.
    pub fn run(&self, job: Job) -> Result<(), Error> {
        // Claim an idle thread; without one, start another.
        let claimed = self
            .idle
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok();
        if !claimed {
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
        let w = Workers::new();
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
}
