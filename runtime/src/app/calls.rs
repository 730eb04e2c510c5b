//! The calls a function process holds, from arrival to reply, and what a `CancelCall` from the
//! proxy does to each.
//!
//! The proxy cancels a call when its caller's deadline passes (see
//! `control/src/proxy/cancel.rs`). Threads cannot be interrupted safely in user code, so a
//! cancel acts at the one point the runtime controls, the start of the call:
//! - a call that has not started (waiting for the instance's thread or a free call thread) is
//!   dropped and answered `cancelled`: it never runs, so it never applies;
//! - a stateless call already running is left to finish; its (discarded) reply tells the proxy
//!   that its slot in this process is free again, so the process never runs more calls than the
//!   function's concurrency, however many time out;
//! - a stateful call already running may change the instance's state after its caller was told
//!   it failed; the process ends at once ([`Error::Recycled`](crate::Error::Recycled)), so no
//!   later call can see that change, and the master restarts the instance from its constructor
//!   (the same contract as a crash: a restarted stateful instance starts from fresh state).
//!
//! The decision is [`on_cancel`], a pure function; [`Calls`] holds each call's [`Phase`] under a
//! lock so that a call starting and its cancel arriving cannot both win.
//!
//! Invariants: a call is answered exactly once (its result, or `cancelled` when dropped); a call
//! that was answered `cancelled` never runs.

use std::collections::HashMap;

/// Where a call is in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Arrived; waiting for a thread.
    Queued,
    /// Running in the function's code (or resolving its arguments).
    Running,
}

/// What a cancel does to a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OnCancel {
    /// Nothing: the call is not here (it has been answered already, or is unknown).
    Ignore,
    /// Drop it and answer `cancelled`: it has not started.
    Drop,
    /// Let it finish: its reply frees its slot, and the proxy discards the result.
    LetFinish,
    /// End the process: a stateful call is running and may change state nobody may see.
    Recycle,
}

/// What a cancel does to a call in `phase` (`None`: not held here) of a stateful instance or
/// not.
pub(super) fn on_cancel(phase: Option<Phase>, stateful: bool) -> OnCancel {
    match (phase, stateful) {
        (None, _) => OnCancel::Ignore,
        (Some(Phase::Queued), _) => OnCancel::Drop,
        (Some(Phase::Running), false) => OnCancel::LetFinish,
        (Some(Phase::Running), true) => OnCancel::Recycle,
    }
}

/// The calls held by this process, by call ID. A std mutex: nothing waits while it is held.
#[derive(Default)]
pub(super) struct Calls {
    phases: parking_lot::Mutex<HashMap<u64, Phase>>,
}

impl Calls {
    /// A call arrived.
    pub fn arrived(&self, call_id: u64) {
        self.phases.lock().insert(call_id, Phase::Queued);
    }

    /// A thread is about to run the call: true if it may (it was not dropped by a cancel).
    pub fn begin(&self, call_id: u64) -> bool {
        match self.phases.lock().get_mut(&call_id) {
            Some(p) => {
                *p = Phase::Running;
                true
            }
            None => false,
        }
    }

    /// The call has its outcome (about to be sent).
    pub fn finished(&self, call_id: u64) {
        self.phases.lock().remove(&call_id);
    }

    /// A cancel arrived for `call_id`: decides ([`on_cancel`]) and, for a dropped call,
    /// forgets it so that [`Calls::begin`] refuses it.
    pub fn cancel(&self, call_id: u64, stateful: bool) -> OnCancel {
        let mut phases = self.phases.lock();
        let action = on_cancel(phases.get(&call_id).copied(), stateful);
        if action == OnCancel::Drop {
            phases.remove(&call_id);
        }
        action
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cancel_table() {
        use OnCancel::*;
        let cases = [
            (None, false, Ignore),
            (None, true, Ignore),
            (Some(Phase::Queued), false, Drop),
            (Some(Phase::Queued), true, Drop),
            (Some(Phase::Running), false, LetFinish),
            (Some(Phase::Running), true, Recycle),
        ];
        for (phase, stateful, want) in cases {
            assert_eq!(
                on_cancel(phase, stateful),
                want,
                "{phase:?} stateful={stateful}"
            );
        }
    }

    #[test]
    fn a_dropped_call_never_starts_and_a_started_one_is_not_dropped() {
        let c = Calls::default();
        c.arrived(1);
        assert_eq!(c.cancel(1, true), OnCancel::Drop);
        assert!(!c.begin(1), "a dropped call must not run");
        assert_eq!(c.cancel(1, true), OnCancel::Ignore, "answered once only");

        c.arrived(2);
        assert!(c.begin(2));
        assert_eq!(c.cancel(2, true), OnCancel::Recycle);
        assert_eq!(c.cancel(2, false), OnCancel::LetFinish);
        c.finished(2);
        assert_eq!(
            c.cancel(2, true),
            OnCancel::Ignore,
            "a finished call is not here"
        );
    }

    /// One step in a call's life, for the property below.
    #[derive(Debug, Clone, Copy)]
    enum Step {
        Begin,
        Cancel,
        Finish,
    }

    proptest! {
        /// Whatever the order of a start and cancels: a call runs only if no cancel dropped it
        /// first, is dropped at most once, and a running stateful call is never dropped (it
        /// recycles).
        #[test]
        fn a_call_is_run_or_dropped_never_both(
            steps in proptest::collection::vec(
                prop_oneof![Just(Step::Begin), Just(Step::Cancel), Just(Step::Finish)], 1..8),
            stateful: bool,
        ) {
            let c = Calls::default();
            c.arrived(7);
            let (mut ran, mut dropped, mut done) = (false, 0, false);
            for s in steps {
                match s {
                    Step::Begin if !ran && !done => {
                        if c.begin(7) {
                            prop_assert_eq!(dropped, 0, "ran after being dropped");
                            ran = true;
                        } else {
                            prop_assert_eq!(dropped, 1, "refused without being dropped");
                        }
                    }
                    Step::Begin => {}
                    Step::Cancel => match c.cancel(7, stateful) {
                        OnCancel::Drop => {
                            prop_assert!(!ran, "dropped a running call");
                            dropped += 1;
                        }
                        OnCancel::Recycle => prop_assert!(ran && !done && stateful),
                        OnCancel::LetFinish => prop_assert!(ran && !done && !stateful),
                        OnCancel::Ignore => prop_assert!(dropped == 1 || done),
                    },
                    Step::Finish if ran && !done => {
                        c.finished(7);
                        done = true;
                    }
                    Step::Finish => {}
                }
            }
            prop_assert!(dropped <= 1);
        }
    }
}
