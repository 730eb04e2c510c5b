//! Where a call goes: the proxy's routing decisions as pure functions of what it sees, the way
//! `placement::choose` and `scheduler::decide` are. The proxy's async code gathers the values
//! (its local instances, the instances mirror, queue lengths) and applies the decision; nothing
//! here does I/O, reads a clock or allocates.
//!
//! Invariants (unit cases and property tests below):
//! - A free local instance is always preferred: when the caller holds one's permit, the call
//!   runs there.
//! - A forwarded call is never forwarded again, and never starts an instance: it is delivered on
//!   this node or refused.
//! - A call never asks for an instance past the function's `max_instances` (it waits for one
//!   that is starting instead), and a cold-starting call asks at most [`MAX_COLD_STARTS`] times.
//! - A call is refused as BUSY only when [`QUEUE_BOUND`] calls per local instance already wait.

use yr_proto::{ErrorKind, InstanceState};

/// Calls that may wait for a busy instance, per instance.
pub const QUEUE_BOUND: usize = 1024;

/// Instances one call may ask the master for before it gives up (each one it was given was gone
/// before the call reached it).
pub const MAX_COLD_STARTS: u32 = 3;

/// What the proxy sees of a stateless function when one of its calls arrives, or looks again
/// after waiting.
///
/// The caller tries the local instances' permits first; when it holds one (`local_free`), the
/// other fields are not looked at and may be left at their defaults (so the hot path does not
/// scan the instances mirror).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolView {
    /// The call came from another node's proxy.
    pub forwarded: bool,
    /// The caller holds the permit of a free local instance of the function.
    pub local_free: bool,
    /// The function's instances connected to this proxy.
    pub local: usize,
    /// The function's RUNNING instances on other nodes.
    pub remote: usize,
    /// The function's instances anywhere that have not ended, starting ones included.
    pub alive: usize,
    /// The function's `max_instances`.
    pub max_instances: u32,
    /// The function's calls already waiting on this node for a local instance.
    pub waiting: usize,
    /// Instances this call has already asked the master for.
    pub cold_starts: u32,
    /// A turn counter, to spread forwarded calls over the remote instances.
    pub turn: usize,
}

/// Where a stateless call goes next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Run on the local instance whose permit the caller holds.
    Local,
    /// Forward to the remote instance with this index (`< remote`), on its node's proxy.
    Forward(usize),
    /// Wait for a local instance to free up (or a new one to connect), then look again.
    Wait,
    /// Wait for an instance that is starting somewhere (the pool is at its maximum), then look
    /// again.
    WaitForStart,
    /// Ask the master for a new instance and deliver the call to it.
    Create,
    /// Refuse: the queue of this node's instances is full.
    Busy,
    /// Refuse: the call was forwarded here, but no instance of the function runs on this node.
    NotHere,
    /// Refuse: every instance asked for was gone before the call reached it.
    GiveUp,
}

/// A routing decision: where the call goes, and whether to grow the pool meanwhile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub route: Route,
    /// Ask the master for one more instance in the background (every local instance is busy and
    /// the pool is below its maximum).
    pub scale_up: bool,
}

/// Whether `waiting` calls queued for `instances` instances leave room for one more.
pub fn admits(waiting: usize, instances: usize) -> bool {
    waiting < QUEUE_BOUND.saturating_mul(instances)
}

/// Where a stateless call goes, given what the proxy sees (see [`PoolView`]).
pub fn route(v: &PoolView) -> Decision {
    let only = |route| Decision {
        route,
        scale_up: false,
    };
    if v.local_free {
        return only(Route::Local);
    }
    let below_max = (v.alive as u64) < u64::from(v.max_instances);
    if v.forwarded {
        // Delivered here or refused: a forwarded call neither travels on nor starts instances.
        return only(match v.local {
            0 => Route::NotHere,
            n if admits(v.waiting, n) => Route::Wait,
            _ => Route::Busy,
        });
    }
    if v.local > 0 || v.remote > 0 {
        // Every local instance is busy: grow the pool. Busy is only known for local instances;
        // a node with none forwards, and the scheduler grows the pool if the calls then queue up
        // where the instances are.
        let scale_up = v.local > 0 && below_max;
        let route = if v.remote > 0 {
            // Instances elsewhere: spread the overflow over them.
            Route::Forward(v.turn % v.remote)
        } else if admits(v.waiting, v.local) {
            Route::Wait
        } else {
            Route::Busy
        };
        return Decision { route, scale_up };
    }
    // Nothing runs that this call could use: a cold start.
    only(if v.cold_starts >= MAX_COLD_STARTS {
        Route::GiveUp
    } else if !below_max {
        Route::WaitForStart
    } else {
        Route::Create
    })
}

/// What a call that asked for an instance does when the master refuses (by the refusal's kind).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Others are starting the pool's instances: wait for one of them (this does not count as
    /// a cold start).
    WaitForStart,
    /// Fail the call with this kind.
    Fail(ErrorKind),
}

/// The call's answer to the master refusing to create an instance with an error of `kind`.
pub fn refused(kind: ErrorKind) -> Refused {
    match kind {
        ErrorKind::ErrorMaxInstances => Refused::WaitForStart,
        ErrorKind::ErrorInsufficientResources => {
            Refused::Fail(ErrorKind::ErrorInsufficientResources)
        }
        ErrorKind::ErrorTimeout => Refused::Fail(ErrorKind::ErrorTimeout),
        _ => Refused::Fail(ErrorKind::ErrorInstanceFatal),
    }
}

/// Where the instance the master just created for a call is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Created {
    /// Connected to this proxy: deliver the call to it.
    Deliver,
    /// On another node: forward the call to it.
    Forward,
    /// Started on this node but not connected (it exited at once): look again.
    LookAgain,
}

/// Where the created instance is: `connected` to this proxy, or `elsewhere` (another node).
pub fn created(connected: bool, elsewhere: bool) -> Created {
    if connected {
        Created::Deliver
    } else if elsewhere {
        Created::Forward
    } else {
        Created::LookAgain
    }
}

/// What the proxy sees of the instance a call names (by ID or by stateful name).
///
/// When the instance is connected here (`local`), `record` is not looked at and may be left
/// `None` (so the hot path does not scan the instances mirror).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NamedView {
    /// The call came from another node's proxy.
    pub forwarded: bool,
    /// The instance is connected to this proxy.
    pub local: bool,
    /// The state of its record in the instances mirror, if it has one.
    pub record: Option<InstanceState>,
}

/// Where a call to a named instance goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Deliver to the local instance (waiting in its queue).
    Local,
    /// Forward to the proxy of the instance's node.
    Forward,
    /// Refuse (not found): a forwarded call for an instance that is not on this node.
    NotHere,
    /// Refuse (not found): no such instance.
    Missing,
    /// Refuse (not found): the instance exists but is not RUNNING.
    NotRunning,
    /// Refuse (instance fatal): the instance failed for good.
    Fatal,
}

/// Where a call to a named instance goes (see [`NamedView`]).
pub fn named(v: &NamedView) -> Target {
    if v.local {
        return Target::Local;
    }
    if v.forwarded {
        return Target::NotHere;
    }
    match v.record {
        None => Target::Missing,
        Some(InstanceState::Running) => Target::Forward,
        Some(InstanceState::Fatal) => Target::Fatal,
        Some(_) => Target::NotRunning,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn view(local_free: bool, local: usize, remote: usize, alive: usize, max: u32) -> PoolView {
        PoolView {
            local_free,
            local,
            remote,
            alive,
            max_instances: max,
            ..PoolView::default()
        }
    }

    #[test]
    fn stateless_cases() {
        use Route::*;
        let cases: &[(&str, PoolView, Route, bool)] = &[
            (
                "a free local instance",
                view(true, 2, 3, 5, 8),
                Local,
                false,
            ),
            (
                "a free local instance, even when forwarded",
                PoolView {
                    forwarded: true,
                    ..view(true, 1, 0, 1, 1)
                },
                Local,
                false,
            ),
            (
                "local busy, room to grow",
                view(false, 1, 0, 1, 4),
                Wait,
                true,
            ),
            (
                "local busy, at the maximum",
                view(false, 2, 0, 2, 2),
                Wait,
                false,
            ),
            (
                "local busy, remote running: forward and grow",
                view(false, 1, 2, 3, 4),
                Forward(0),
                true,
            ),
            (
                "no local, remote running: forward, no growing here",
                view(false, 0, 2, 2, 4),
                Forward(0),
                false,
            ),
            (
                "the turn spreads forwards",
                PoolView {
                    turn: 5,
                    ..view(false, 0, 2, 2, 4)
                },
                Forward(1),
                false,
            ),
            (
                "queue full",
                PoolView {
                    waiting: QUEUE_BOUND * 2,
                    ..view(false, 2, 0, 2, 2)
                },
                Busy,
                false,
            ),
            (
                "queue one short of full",
                PoolView {
                    waiting: QUEUE_BOUND * 2 - 1,
                    ..view(false, 2, 0, 2, 2)
                },
                Wait,
                false,
            ),
            ("cold start", view(false, 0, 0, 0, 2), Create, false),
            (
                "cold start while others start the pool",
                view(false, 0, 0, 2, 2),
                WaitForStart,
                false,
            ),
            (
                "cold starts used up",
                PoolView {
                    cold_starts: MAX_COLD_STARTS,
                    ..view(false, 0, 0, 0, 2)
                },
                GiveUp,
                false,
            ),
            (
                "forwarded, nothing here",
                PoolView {
                    forwarded: true,
                    ..view(false, 0, 3, 3, 8)
                },
                NotHere,
                false,
            ),
            (
                "forwarded, local busy",
                PoolView {
                    forwarded: true,
                    ..view(false, 1, 3, 4, 8)
                },
                Wait,
                false,
            ),
        ];
        for (what, v, route, scale_up) in cases {
            let d = super::route(v);
            assert_eq!((d.route, d.scale_up), (*route, *scale_up), "{what}: {v:?}");
        }
    }

    #[test]
    fn refusals_and_creations() {
        assert_eq!(refused(ErrorKind::ErrorMaxInstances), Refused::WaitForStart);
        assert_eq!(
            refused(ErrorKind::ErrorInsufficientResources),
            Refused::Fail(ErrorKind::ErrorInsufficientResources)
        );
        assert_eq!(
            refused(ErrorKind::ErrorTimeout),
            Refused::Fail(ErrorKind::ErrorTimeout)
        );
        for other in [
            ErrorKind::ErrorInternal,
            ErrorKind::ErrorNotFound,
            ErrorKind::ErrorUnavailable,
            ErrorKind::ErrorInvalidArgument,
        ] {
            assert_eq!(refused(other), Refused::Fail(ErrorKind::ErrorInstanceFatal));
        }
        assert_eq!(created(true, false), Created::Deliver);
        assert_eq!(created(true, true), Created::Deliver);
        assert_eq!(created(false, true), Created::Forward);
        assert_eq!(created(false, false), Created::LookAgain);
    }

    #[test]
    fn named_cases() {
        use InstanceState as S;
        let v = |forwarded, local, record| NamedView {
            forwarded,
            local,
            record,
        };
        let cases = [
            (v(false, true, None), Target::Local),
            (v(true, true, Some(S::Running)), Target::Local),
            (v(true, false, Some(S::Running)), Target::NotHere),
            (v(false, false, None), Target::Missing),
            (v(false, false, Some(S::Running)), Target::Forward),
            (v(false, false, Some(S::Fatal)), Target::Fatal),
            (v(false, false, Some(S::Creating)), Target::NotRunning),
            (v(false, false, Some(S::Exited)), Target::NotRunning),
        ];
        for (view, target) in cases {
            assert_eq!(named(&view), target, "{view:?}");
        }
    }

    fn any_view() -> impl Strategy<Value = PoolView> {
        (
            any::<bool>(),
            any::<bool>(),
            0usize..5,
            0usize..5,
            0usize..12,
            0u32..10,
            0usize..(QUEUE_BOUND * 6),
            0u32..5,
            any::<usize>(),
        )
            .prop_map(
                |(forwarded, local_free, local, remote, alive, max, waiting, cold, turn)| {
                    PoolView {
                        forwarded,
                        local_free: local_free && local > 0,
                        local,
                        remote,
                        // The counts the proxy gathers: every running instance is alive.
                        alive: alive.max(local + remote),
                        max_instances: max,
                        waiting,
                        cold_starts: cold,
                        turn,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn a_free_local_instance_is_preferred(v in any_view()) {
            let d = route(&v);
            prop_assert_eq!(d.route == Route::Local, v.local_free);
            if v.local_free {
                prop_assert!(!d.scale_up);
            }
        }

        #[test]
        fn a_forwarded_call_is_never_forwarded_nor_creates(v in any_view()) {
            let v = PoolView { forwarded: true, ..v };
            let d = route(&v);
            prop_assert!(!matches!(d.route, Route::Forward(_) | Route::Create | Route::WaitForStart));
            prop_assert!(!d.scale_up);
        }

        #[test]
        fn never_creates_past_max_instances(v in any_view()) {
            let d = route(&v);
            if d.route == Route::Create || d.scale_up {
                prop_assert!((v.alive as u64) < u64::from(v.max_instances), "{:?} -> {:?}", v, d);
            }
            if d.route == Route::Create {
                prop_assert!(v.cold_starts < MAX_COLD_STARTS);
            }
        }

        #[test]
        fn busy_only_at_the_queue_bound(v in any_view()) {
            let d = route(&v);
            if d.route == Route::Busy {
                prop_assert!(v.local > 0 && v.waiting >= QUEUE_BOUND * v.local, "{:?}", v);
            }
            // Waiting below the bound for busy local instances with nowhere else to go: it waits.
            if !v.local_free && v.local > 0 && v.remote == 0 && v.waiting < QUEUE_BOUND * v.local {
                prop_assert_eq!(d.route, Route::Wait);
            }
        }

        #[test]
        fn forwards_only_to_a_remote_instance(v in any_view()) {
            if let Route::Forward(i) = route(&v).route {
                prop_assert!(i < v.remote);
                prop_assert!(!v.forwarded && !v.local_free);
            }
        }

        #[test]
        fn a_named_call_is_never_forwarded_twice(
            local in any::<bool>(),
            state in prop::option::of(0i32..8),
        ) {
            let record = state.and_then(|s| InstanceState::try_from(s).ok());
            let t = named(&NamedView { forwarded: true, local, record });
            prop_assert!(t != Target::Forward);
            prop_assert_eq!(t == Target::Local, local);
        }
    }
}
