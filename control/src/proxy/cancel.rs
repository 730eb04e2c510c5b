//! What the proxy does with a call whose deadline passed after it was sent to its instance: a
//! pure decision, applied by the `local` module.
//!
//! A timed-out call is cancelled where it runs: the proxy sends `CancelCall` on the instance
//! socket. The function process drops a call that has not started and answers `cancelled`; it
//! cannot interrupt one running in user code (see `runtime/src/app/calls.rs`). Then:
//!
//! - **Stateless**: the caller is told of the timeout at once. The call keeps its slot (one of
//!   the instance's `concurrency` permits) until the process answers it — its result is
//!   discarded — so a process never runs more calls than its concurrency, however many time out:
//!   its threads and queues stay bounded, and calls that find the slots taken wait in the
//!   proxy's bounded queue. A call still running [`RECYCLE_STATELESS_AFTER`] past its deadline
//!   is taken as stuck: the instance is recycled (its process ends, the master restarts it) so
//!   the slot is not lost for good.
//! - **Stateful**: the caller is answered only once the proxy knows the call will never apply,
//!   so that "failed" means "had no effect" (waiting at most [`STATEFUL_CANCEL_WAIT`] past the
//!   deadline). If the process answers `cancelled`, the call never started: the instance keeps
//!   its state and serves on. Otherwise — the call was running (the process ends itself on the
//!   cancel), its result arrived after the deadline, or no answer came — the instance is
//!   recycled: the proxy stops delivering to it before the caller is answered, the process ends,
//!   and the master restarts the instance from its constructor (FAILED → restart, counting
//!   against `max_retries`, like a crash). No later call can see the timed-out call's effect,
//!   because no later call reaches the process that holds it. Calls queued behind it on this
//!   proxy fail as they do when an instance exits.
//!
//! Why recycle rather than deliver a late success: the caller's own transport may have given up
//! at the deadline already, and a late effect on state is exactly what the caller must be able
//! to rule out after a failure. Why not recycle stateless instances at once: they hold no state
//! a later call could read, and a cold start costs more than a slot held a little longer.

use std::time::Duration;

/// How long past its deadline a stateful call's caller waits for the instance to drop the call
/// (or end): the runtime answers a cancel within one round trip on the node, so this only
/// matters for a process that is wedged or too old to know cancels.
pub const STATEFUL_CANCEL_WAIT: Duration = Duration::from_secs(2);

/// How long past its deadline a stateless call may keep its slot before its instance is
/// recycled: generous, since recycling fails the instance's other calls and costs a cold start,
/// but bounded, so a handler that never returns does not hold a slot forever.
pub const RECYCLE_STATELESS_AFTER: Duration = Duration::from_secs(30);

/// What became of a call sent to its instance, by the end of the wait after its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Late {
    /// The process dropped it before it started: it had no effect.
    Cancelled,
    /// The process answered with its outcome after the deadline: it ran.
    Finished,
    /// The process's connection ended (it exited, or was recycled already).
    Gone,
    /// No answer within the wait.
    NoAnswer,
}

/// What the proxy does with the instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// Keep serving calls on it.
    Keep,
    /// Stop delivering to it and end its process, so that the master restarts it.
    Recycle,
}

/// What the proxy does with an instance (stateful or not) after a call's deadline passed and
/// `late` became of the call.
pub fn after_deadline(stateful: bool, late: Late) -> Then {
    match (stateful, late) {
        (_, Late::Cancelled) | (_, Late::Gone) => Then::Keep,
        (false, Late::Finished) => Then::Keep,
        (true, Late::Finished) => Then::Recycle,
        (_, Late::NoAnswer) => Then::Recycle,
    }
}

/// How long past the deadline the proxy waits for the call's answer before deciding.
pub fn wait_after_deadline(stateful: bool) -> Duration {
    if stateful {
        STATEFUL_CANCEL_WAIT
    } else {
        RECYCLE_STATELESS_AFTER
    }
}

/// Whether the caller is answered only after the wait (stateful: "failed" must mean "never
/// applies"), rather than at the deadline.
pub fn caller_waits(stateful: bool) -> bool {
    stateful
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn table() {
        use Late::*;
        let cases = [
            (true, Cancelled, Then::Keep),
            (true, Finished, Then::Recycle),
            (true, Gone, Then::Keep),
            (true, NoAnswer, Then::Recycle),
            (false, Cancelled, Then::Keep),
            (false, Finished, Then::Keep),
            (false, Gone, Then::Keep),
            (false, NoAnswer, Then::Recycle),
        ];
        for (stateful, late, want) in cases {
            assert_eq!(after_deadline(stateful, late), want, "{stateful} {late:?}");
        }
        assert!(caller_waits(true) && !caller_waits(false));
        assert!(wait_after_deadline(true) < wait_after_deadline(false));
    }

    fn any_late() -> impl Strategy<Value = Late> {
        prop_oneof![
            Just(Late::Cancelled),
            Just(Late::Finished),
            Just(Late::Gone),
            Just(Late::NoAnswer)
        ]
    }

    proptest! {
        /// A stateful instance keeps serving after a timed-out call only if that call never
        /// ran (dropped before it started) or its process is gone anyway: an effect that may
        /// have happened is never left for a later call to see.
        #[test]
        fn a_stateful_instance_is_kept_only_when_the_call_had_no_effect(late in any_late()) {
            let kept = after_deadline(true, late) == Then::Keep;
            prop_assert_eq!(kept, matches!(late, Late::Cancelled | Late::Gone));
        }

        /// A stateless instance is recycled only for a call that never answered: every call
        /// it answers frees its slot.
        #[test]
        fn a_stateless_instance_is_recycled_only_when_stuck(late in any_late()) {
            prop_assert_eq!(after_deadline(false, late) == Then::Recycle, late == Late::NoAnswer);
        }
    }
}
