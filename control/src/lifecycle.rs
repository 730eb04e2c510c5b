//! The instance lifecycle: states, which of them are final, and the pure rules that move an
//! instance record from one state to the next. No I/O and no clock here: [`apply`] takes a
//! record, an [`Event`] and the function's spec and returns a [`Transition`]; the master writes
//! the record it gets and does what the transition says next ([`Then`]).
//!
//! States: NEW → SCHEDULING → CREATING → RUNNING → (FAILED → CREATING …) → EXITING → EXITED,
//! or FATAL when an instance cannot be kept running.
//!
//! Invariants (property-tested below):
//! - EXITED and FATAL are terminal: no event changes a record in them.
//! - An instance that exits on its own (or loses its node) is restarted while `restarts` is below
//!   its function's `max_retries`, each restart counting one; then it becomes FATAL with the
//!   last reason kept. It is never FATAL by exiting before that limit, and `restarts` never
//!   exceeds the limit.
//! - A stop that was asked for ends in EXITED, never in a restart.
//! - A state value this version does not know reads as FATAL: the record was written by
//!   something newer, and this version neither counts nor restarts what it cannot read.
//! - Restarts of a crash-looping instance back off ([`restart_backoff`]): the first failure
//!   after a stable run restarts at once, each further failure in a row waits twice as long
//!   (from [`RESTART_FIRST_BACKOFF`] up to [`RESTART_MAX_BACKOFF`]), and the streak is reset
//!   only by a run of at least [`STABLE_AFTER`]. The clock enters only through [`stamp`], which
//!   the master calls with its time when it writes a transition.

use std::time::Duration;

use yr_proto::{InstanceEvent, InstanceRecord, InstanceState};

use crate::error::Error;
use crate::function::Spec;

/// How long an ended (EXITED or FATAL) instance stays visible in `yr status` before its record
/// is deleted; without this, pools that grow and shrink would fill etcd.
pub const RETAIN_ENDED: Duration = Duration::from_secs(600);

/// The pause after the first failed attempt to create a pool's instance.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(2);
/// The longest pause between attempts to create a pool's instance.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The pause before the second restart in a row of an instance that fails before staying up
/// [`STABLE_AFTER`]; each further failure in a row doubles it. One second: a process that
/// crashes on start is retried a handful of times within the first minute, not hundreds.
pub const RESTART_FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest pause before a restart: a crash-looping instance is still retried twice a
/// minute (up to its function's `max_retries`), so a fixed dependency brings it back soon.
pub const RESTART_MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long an instance must have been RUNNING for its failure to count as a new streak
/// (restarted at once) rather than one more failure in a row: longer than the longest pause,
/// so an instance that fails just after each restart never resets its streak.
pub const STABLE_AFTER: Duration = Duration::from_secs(60);

/// The state of a wire value; a value this version does not know reads as FATAL.
pub fn decode_state(s: i32) -> InstanceState {
    InstanceState::try_from(s).unwrap_or(InstanceState::Fatal)
}

/// The state of record `r`.
pub fn state_of(r: &InstanceRecord) -> InstanceState {
    decode_state(r.state)
}

/// Whether state `s` is final.
pub fn terminal(s: InstanceState) -> bool {
    matches!(s, InstanceState::Exited | InstanceState::Fatal)
}

/// Whether the instance of record `r` has ended for good.
pub fn ended(r: &InstanceRecord) -> bool {
    terminal(state_of(r))
}

/// Whether an instance in state `s` (the wire value) has ended for good.
pub fn is_terminal(s: i32) -> bool {
    terminal(decode_state(s))
}

/// The name of state `s` (the wire value), `UNKNOWN` for a value this version does not know.
pub fn state_name(s: i32) -> &'static str {
    InstanceState::try_from(s)
        .map(|s| s.as_str_name())
        .unwrap_or("UNKNOWN")
}

/// Whether `r` is one of `function`'s stateless pool: those count against `max_instances` and
/// are what the scheduler grows and shrinks.
pub fn in_pool(r: &InstanceRecord, function: &str) -> bool {
    r.function == function && !r.stateful && !ended(r)
}

/// Whether one more instance of `spec` may be created when `pool` of its stateless instances
/// are alive. Stateful instances are not bounded by `max_instances`.
pub fn admit(spec: &Spec, stateful: bool, pool: u32) -> Result<(), Error> {
    if !stateful && pool >= spec.max_instances {
        return Err(Error::MaxInstances(format!(
            "function {} already has {pool} instance(s), its max_instances",
            spec.name
        )));
    }
    Ok(())
}

/// What a caller waiting for an instance to come up learns from its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// It runs: calls can reach it.
    Running,
    /// It ended (EXITED or FATAL) and will not run.
    Ended,
    /// It is on its way (or being restarted): keep waiting.
    Pending,
}

/// Whether the instance of `r` runs, ended, or may still come up.
pub fn readiness(r: &InstanceRecord) -> Readiness {
    match state_of(r) {
        InstanceState::Running => Readiness::Running,
        s if terminal(s) => Readiness::Ended,
        _ => Readiness::Pending,
    }
}

/// Whether the record of an ended instance has been kept long enough ([`RETAIN_ENDED`]) to be
/// deleted at `now_ms` (Unix milliseconds).
pub fn expired(r: &InstanceRecord, now_ms: u64) -> bool {
    let cutoff = now_ms.saturating_sub(RETAIN_ENDED.as_millis() as u64);
    ended(r) && r.updated_unix_ms < cutoff
}

/// The pause before the next attempt to create a pool's instance after one failed: `previous`
/// is the pause before the failed attempt (`None` after a success). Doubles from
/// [`FIRST_BACKOFF`] up to [`MAX_BACKOFF`], so a pool whose minimum cannot be met does not pile
/// up FATAL records and log lines twice a second.
pub fn next_backoff(previous: Option<Duration>) -> Duration {
    match previous {
        None => FIRST_BACKOFF,
        Some(p) => p.saturating_mul(2).clamp(FIRST_BACKOFF, MAX_BACKOFF),
    }
}

/// When and how a failed instance is restarted: the decision of [`restart_backoff`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPlan {
    /// Failures in a row without a stable run, this one included (at least 1).
    pub streak: u32,
    /// The pause before the restart.
    pub delay: Duration,
}

/// The pause before a restart when the instance has failed `streak` times in a row: none for
/// the first, then [`RESTART_FIRST_BACKOFF`] doubling up to [`RESTART_MAX_BACKOFF`].
pub fn restart_delay(streak: u32) -> Duration {
    match streak {
        0 | 1 => Duration::ZERO,
        n => {
            let doublings = (n - 2).min(31);
            RESTART_FIRST_BACKOFF
                .saturating_mul(1u32 << doublings)
                .min(RESTART_MAX_BACKOFF)
        }
    }
}

/// How instance `before` (the record as it was when it failed, at `now_ms`) is restarted: its
/// streak grows unless it had been RUNNING for [`STABLE_AFTER`], which starts a new streak.
pub fn restart_backoff(before: &InstanceRecord, now_ms: u64) -> RestartPlan {
    let up_ms = now_ms.saturating_sub(before.running_since_unix_ms);
    let stayed_up = state_of(before) == InstanceState::Running
        && before.running_since_unix_ms != 0
        && up_ms >= STABLE_AFTER.as_millis() as u64;
    let streak = if stayed_up {
        1
    } else {
        before.crash_streak.saturating_add(1)
    };
    RestartPlan {
        streak,
        delay: restart_delay(streak),
    }
}

/// Fills in the clock's part of the transition from `before` to `next` (which then does
/// `then`), at `now_ms`: the write time; when it became RUNNING; and for a restart its streak,
/// when it failed and when the restart is due ([`restart_backoff`]).
pub fn stamp(before: &InstanceRecord, next: &mut InstanceRecord, then: Then, now_ms: u64) {
    next.updated_unix_ms = now_ms;
    let (was, is) = (state_of(before), state_of(next));
    if is == InstanceState::Running && was != InstanceState::Running {
        next.running_since_unix_ms = now_ms;
        next.restart_at_unix_ms = 0;
    }
    if then == Then::Restart {
        let plan = restart_backoff(before, now_ms);
        next.crash_streak = plan.streak;
        next.failed_unix_ms = now_ms;
        next.restart_at_unix_ms = now_ms.saturating_add(plan.delay.as_millis() as u64);
        next.running_since_unix_ms = 0;
    }
}

/// The news of a node's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum News {
    /// Nothing (a report in state NEW: an older agent's usage report; usage now lives in each
    /// node's collector, not in records).
    Usage,
    /// The process connected to its proxy; `pid` 0 when the reporter does not know it.
    Running {
        /// The process ID, 0 if unknown.
        pid: u32,
    },
    /// The process ended because it was asked to.
    Exited,
    /// The process ended on its own.
    Failed {
        /// Why, with the tail of its stderr.
        error: String,
    },
}

/// An agent's or proxy's report about one instance, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// What happened to it.
    pub news: News,
}

impl TryFrom<&InstanceEvent> for Report {
    type Error = Error;

    fn try_from(ev: &InstanceEvent) -> Result<Report, Error> {
        let news = match InstanceState::try_from(ev.state) {
            Ok(InstanceState::New) => News::Usage,
            Ok(InstanceState::Running) => News::Running { pid: ev.pid },
            Ok(InstanceState::Exited) => News::Exited,
            Ok(InstanceState::Failed) => News::Failed {
                error: ev.error.clone(),
            },
            _ => {
                return Err(Error::invalid(
                    "state",
                    format!(
                        "{} is not something a node reports (NEW, RUNNING, EXITED or FAILED)",
                        state_name(ev.state)
                    ),
                ))
            }
        };
        // The deprecated usage fields are ignored: records no longer carry usage.
        Ok(Report { news })
    }
}

/// Something that happens to an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A node was chosen for it; its resources count on that node from now on.
    Placed {
        /// The chosen node.
        node_id: String,
        /// That node's proxy.
        proxy_address: String,
    },
    /// Its node is gone and it waits to be placed again: it counts on no node meanwhile.
    Unplaced,
    /// The master is about to ask `node_id` to start its process.
    Starting {
        /// The node that will run it.
        node_id: String,
        /// That node's proxy.
        proxy_address: String,
    },
    /// The node started its process.
    Started {
        /// The process ID.
        pid: u32,
    },
    /// The node could not start its process.
    StartFailed {
        /// Why, for callers and `yr status`.
        why: String,
    },
    /// No node can take it (when it is created, or when it is placed again to restart).
    Unplaceable {
        /// Why, naming what was asked.
        why: String,
    },
    /// A node reported on it.
    Reported(Report),
    /// Someone asked for it to stop.
    Kill,
    /// Its node confirmed the stop (or no node was running it).
    Stopped,
    /// Node `node_id` disappeared (its lease lapsed).
    NodeLost {
        /// The node that is gone.
        node_id: String,
    },
}

impl Event {
    /// Whether this event can end in a restart or FATAL, so that [`apply`] reads the function's
    /// spec: the master looks the spec up only for these.
    pub fn may_fail(&self) -> bool {
        matches!(
            self,
            Event::NodeLost { .. }
                | Event::Reported(Report {
                    news: News::Failed { .. },
                    ..
                })
        )
    }
}

/// What the master does after writing the record of a [`Transition::To`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// Nothing more.
    Nothing,
    /// Ask the instance's node to start its process.
    Start,
    /// Start it again: on its node if that node is alive, else placed anew.
    Restart,
    /// Ask the instance's node to stop its process.
    Stop,
}

/// The outcome of an event for one record.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    /// Nothing changes and nothing is written.
    Unchanged,
    /// The record becomes `next` (the master writes it), then the master does `then`.
    To {
        /// The record after the event.
        next: Box<InstanceRecord>,
        /// What follows the write.
        then: Then,
    },
}

impl Transition {
    fn to(next: InstanceRecord) -> Transition {
        Transition::To {
            next: Box::new(next),
            then: Then::Nothing,
        }
    }
}

fn with_state(mut r: InstanceRecord, s: InstanceState) -> InstanceRecord {
    r.state = s.into();
    r
}

fn fatal(mut r: InstanceRecord, why: String) -> Transition {
    r.error = why;
    Transition::to(with_state(r, InstanceState::Fatal))
}

/// Whether losing node `node_id` concerns record `r`: it is placed there and neither ended nor
/// already waiting for a restart (a FAILED instance is being placed again anyway).
pub fn affected_by_node_loss(r: &InstanceRecord, node_id: &str) -> bool {
    let s = state_of(r);
    !terminal(s) && s != InstanceState::Failed && !r.node_id.is_empty() && r.node_id == node_id
}

/// The instance of `r` ended without being asked to, for `error`: EXITED if it was being
/// stopped anyway, else restarted while it has retries left, else FATAL with the reason kept.
fn failed(mut r: InstanceRecord, error: String, spec: Option<&Spec>) -> Transition {
    if state_of(&r) == InstanceState::Exiting {
        return Transition::to(with_state(r, InstanceState::Exited));
    }
    let Some(spec) = spec else {
        let why = format!("function {} was deleted; last: {error}", r.function);
        return fatal(r, why);
    };
    if r.restarts >= spec.max_retries {
        let why = format!(
            "exited {} time(s), retry limit {} reached; last: {error}",
            r.restarts + 1,
            spec.max_retries
        );
        return fatal(r, why);
    }
    r.restarts += 1;
    // Reports about that process may still come (an agent retries them until a master takes
    // them); remembering it lets the master tell them from reports about the next one.
    if r.pid != 0 {
        r.ended_pid = r.pid;
    }
    r.pid = 0;
    r.error = error;
    Transition::To {
        next: Box::new(with_state(r, InstanceState::Failed)),
        then: Then::Restart,
    }
}

/// What `event` does to record `r`. `spec` is the instance's function as the master knows it
/// now (`None`: it was deleted); only events that [`Event::may_fail`] read it.
pub fn apply(r: &InstanceRecord, event: &Event, spec: Option<&Spec>) -> Transition {
    let state = state_of(r);
    if terminal(state) {
        return Transition::Unchanged;
    }
    let mut next = r.clone();
    match event {
        Event::Placed {
            node_id,
            proxy_address,
        } => {
            next.node_id = node_id.clone();
            next.proxy_address = proxy_address.clone();
            Transition::to(next)
        }
        Event::Unplaced => {
            next.node_id.clear();
            Transition::to(next)
        }
        Event::Starting {
            node_id,
            proxy_address,
        } => {
            if state == InstanceState::Exiting {
                return Transition::Unchanged;
            }
            next.node_id = node_id.clone();
            next.proxy_address = proxy_address.clone();
            Transition::To {
                next: Box::new(with_state(next, InstanceState::Creating)),
                then: Then::Start,
            }
        }
        Event::Started { pid } => {
            // Only the pid, and only if nobody told it first: the proxy may already have
            // reported RUNNING.
            if r.pid != 0 {
                return Transition::Unchanged;
            }
            next.pid = *pid;
            Transition::to(next)
        }
        Event::StartFailed { why } | Event::Unplaceable { why } => fatal(next, why.clone()),
        Event::Reported(report) => match &report.news {
            News::Usage => Transition::to(next),
            News::Running { pid } => {
                if *pid != 0 {
                    next.pid = *pid;
                }
                if matches!(state, InstanceState::Creating | InstanceState::Failed) {
                    next.error.clear();
                    next = with_state(next, InstanceState::Running);
                }
                Transition::to(next)
            }
            News::Exited => Transition::to(with_state(next, InstanceState::Exited)),
            News::Failed { error } => failed(next, error.clone(), spec),
        },
        Event::Kill => Transition::To {
            next: Box::new(with_state(next, InstanceState::Exiting)),
            then: Then::Stop,
        },
        Event::Stopped => Transition::to(with_state(next, InstanceState::Exited)),
        Event::NodeLost { node_id } => {
            if !affected_by_node_loss(r, node_id) {
                return Transition::Unchanged;
            }
            let why = format!("node {node_id} is dead (its lease lapsed)");
            failed(next, why, spec)
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use yr_proto::FunctionSpec;

    /// Every state, for generators.
    pub(crate) const ALL: [InstanceState; 8] = [
        InstanceState::New,
        InstanceState::Scheduling,
        InstanceState::Creating,
        InstanceState::Running,
        InstanceState::Failed,
        InstanceState::Exiting,
        InstanceState::Exited,
        InstanceState::Fatal,
    ];

    fn spec(max_retries: u32) -> Spec {
        Spec::try_from(FunctionSpec {
            name: "f".into(),
            code_path: "/srv/f".into(),
            max_retries,
            ..Default::default()
        })
        .expect("a valid spec")
    }

    fn record(s: InstanceState, restarts: u32) -> InstanceRecord {
        InstanceRecord {
            instance_id: "f-1".into(),
            function: "f".into(),
            state: s.into(),
            node_id: "n1".into(),
            pid: 42,
            restarts,
            ..Default::default()
        }
    }

    fn report(news: News) -> Event {
        Event::Reported(Report { news })
    }

    fn crashed() -> Event {
        report(News::Failed {
            error: "boom".into(),
        })
    }

    /// The state after `event`, `None` if nothing changes, and what follows.
    fn outcome(
        r: &InstanceRecord,
        event: &Event,
        spec: Option<&Spec>,
    ) -> (Option<InstanceState>, Then) {
        match apply(r, event, spec) {
            Transition::Unchanged => (None, Then::Nothing),
            Transition::To { next, then } => (Some(state_of(&next)), then),
        }
    }

    #[test]
    fn table() {
        use InstanceState::*;
        let f = spec(2);
        let starting = Event::Starting {
            node_id: "n2".into(),
            proxy_address: "p2".into(),
        };
        let running = report(News::Running { pid: 7 });
        let lost = Event::NodeLost {
            node_id: "n1".into(),
        };
        let why = || "no room".to_string();
        /// From state (with restarts), on event (with spec), to state (`None`: unchanged), then.
        type Case<'a> = (
            InstanceState,
            u32,
            Event,
            Option<&'a Spec>,
            Option<InstanceState>,
            Then,
        );
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            (Scheduling, 0, starting.clone(), None, Some(Creating), Then::Start),
            (Failed, 1, starting.clone(), None, Some(Creating), Then::Start),
            (Exiting, 0, starting.clone(), None, None, Then::Nothing),
            (Creating, 0, running.clone(), None, Some(Running), Then::Nothing),
            (Failed, 1, running.clone(), None, Some(Running), Then::Nothing),
            (Scheduling, 0, running.clone(), None, Some(Scheduling), Then::Nothing),
            (Exiting, 0, running.clone(), None, Some(Exiting), Then::Nothing),
            (Running, 0, report(News::Exited), None, Some(Exited), Then::Nothing),
            (Running, 0, crashed(), Some(&f), Some(Failed), Then::Restart),
            (Running, 1, crashed(), Some(&f), Some(Failed), Then::Restart),
            (Running, 2, crashed(), Some(&f), Some(Fatal), Then::Nothing),
            (Running, 0, crashed(), None, Some(Fatal), Then::Nothing),
            (Exiting, 0, crashed(), Some(&f), Some(Exited), Then::Nothing),
            (Running, 0, report(News::Usage), None, Some(Running), Then::Nothing),
            (Creating, 0, Event::StartFailed { why: why() }, None, Some(Fatal), Then::Nothing),
            (Scheduling, 0, Event::Unplaceable { why: why() }, None, Some(Fatal), Then::Nothing),
            (Failed, 1, Event::Unplaceable { why: why() }, None, Some(Fatal), Then::Nothing),
            (Running, 0, Event::Kill, None, Some(Exiting), Then::Stop),
            (Exiting, 0, Event::Kill, None, Some(Exiting), Then::Stop),
            (Exiting, 0, Event::Stopped, None, Some(Exited), Then::Nothing),
            (Running, 0, lost.clone(), Some(&f), Some(Failed), Then::Restart),
            (Running, 2, lost.clone(), Some(&f), Some(Fatal), Then::Nothing),
            (Exiting, 0, lost.clone(), Some(&f), Some(Exited), Then::Nothing),
            (Failed, 1, lost.clone(), Some(&f), None, Then::Nothing),
            (Exited, 0, Event::Kill, None, None, Then::Nothing),
            (Fatal, 0, running.clone(), None, None, Then::Nothing),
        ];
        for (from, restarts, event, spec, to, then) in cases {
            let r = record(from, restarts);
            assert_eq!(
                outcome(&r, &event, spec),
                (to, then),
                "{from:?} (restarts {restarts}) on {event:?}"
            );
        }
    }

    #[test]
    fn reasons_are_kept() {
        let f = spec(1);
        let Transition::To { next, .. } =
            apply(&record(InstanceState::Running, 1), &crashed(), Some(&f))
        else {
            panic!("a crash past the limit changes the record");
        };
        assert_eq!(
            next.error,
            "exited 2 time(s), retry limit 1 reached; last: boom"
        );
        let Transition::To { next, .. } =
            apply(&record(InstanceState::Running, 0), &crashed(), None)
        else {
            panic!("a crash of a deleted function changes the record");
        };
        assert_eq!(next.error, "function f was deleted; last: boom");
        let lost = Event::NodeLost {
            node_id: "n1".into(),
        };
        let Transition::To { next, then } =
            apply(&record(InstanceState::Running, 0), &lost, Some(&f))
        else {
            panic!("a lost node changes its instances");
        };
        assert_eq!((next.restarts, next.pid, then), (1, 0, Then::Restart));
        assert_eq!(next.error, "node n1 is dead (its lease lapsed)");
        // Running again clears the reason of the restart.
        let Transition::To { next, .. } = apply(&next, &report(News::Running { pid: 0 }), None)
        else {
            panic!("running after a restart");
        };
        assert_eq!((next.error.as_str(), next.pid), ("", 0));
    }

    #[test]
    fn node_loss_only_concerns_that_nodes_instances() {
        let r = record(InstanceState::Running, 0);
        let other = Event::NodeLost {
            node_id: "n9".into(),
        };
        assert_eq!(apply(&r, &other, Some(&spec(3))), Transition::Unchanged);
        let unplaced = InstanceRecord {
            node_id: String::new(),
            ..r
        };
        assert!(!affected_by_node_loss(&unplaced, ""));
    }

    #[test]
    fn started_sets_the_pid_once() {
        let mut r = record(InstanceState::Creating, 0);
        r.pid = 0;
        let Transition::To { next, then } = apply(&r, &Event::Started { pid: 9 }, None) else {
            panic!("the first pid is recorded");
        };
        assert_eq!((next.pid, then), (9, Then::Nothing));
        assert_eq!(
            apply(&next, &Event::Started { pid: 10 }, None),
            Transition::Unchanged
        );
    }

    #[test]
    fn reports_are_checked() {
        let ev = |s: i32| InstanceEvent {
            instance_id: "f-1".into(),
            state: s,
            error: "e".into(),
            pid: 3,
            cpu_millis_used: 0,
            memory_bytes_used: 5,
        };
        assert_eq!(
            Report::try_from(&ev(InstanceState::Failed.into())).expect("valid"),
            Report {
                news: News::Failed { error: "e".into() }
            }
        );
        for bad in [
            InstanceState::Fatal.into(),
            InstanceState::Creating.into(),
            99,
        ] {
            let e = Report::try_from(&ev(bad)).expect_err("not a node's report");
            assert_eq!(e.kind(), yr_proto::ErrorKind::ErrorInvalidArgument);
        }
    }

    #[test]
    fn terminal_states_and_unknown_values() {
        assert!(is_terminal(InstanceState::Exited.into()));
        assert!(is_terminal(InstanceState::Fatal.into()));
        assert!(!is_terminal(InstanceState::Running.into()));
        assert!(is_terminal(99), "an unknown state reads as FATAL");
        assert_eq!(state_name(99), "UNKNOWN");
        assert_eq!(state_name(InstanceState::Exiting.into()), "EXITING");
    }

    #[test]
    fn admission_and_expiry() {
        let f = Spec::try_from(FunctionSpec {
            name: "f".into(),
            code_path: "/srv/f".into(),
            max_instances: 2,
            ..Default::default()
        })
        .expect("valid");
        assert!(admit(&f, false, 1).is_ok());
        let e = admit(&f, false, 2).expect_err("at max_instances");
        assert!(matches!(e, Error::MaxInstances(_)), "{e:?}");
        assert!(
            admit(&f, true, 5).is_ok(),
            "stateful instances are not bounded"
        );
        let retain = RETAIN_ENDED.as_millis() as u64;
        let mut r = record(InstanceState::Exited, 0);
        r.updated_unix_ms = 1_000;
        assert!(!expired(&r, 1_000 + retain));
        assert!(expired(&r, 1_001 + retain));
        r.state = InstanceState::Running.into();
        assert!(!expired(&r, u64::MAX), "a live record never expires");
    }

    fn any_state() -> impl Strategy<Value = InstanceState> {
        (0..ALL.len()).prop_map(|i| ALL[i])
    }

    fn any_event() -> impl Strategy<Value = Event> {
        let node = prop_oneof![Just("n1".to_string()), Just("n2".to_string())];
        let news = prop_oneof![
            Just(News::Usage),
            (0u32..3).prop_map(|pid| News::Running { pid }),
            Just(News::Exited),
            "[a-z]{0,4}".prop_map(|error| News::Failed { error }),
        ];
        prop_oneof![
            node.clone().prop_map(|n| Event::Placed {
                node_id: n.clone(),
                proxy_address: n
            }),
            Just(Event::Unplaced),
            node.clone().prop_map(|n| Event::Starting {
                node_id: n.clone(),
                proxy_address: n
            }),
            (1u32..100).prop_map(|pid| Event::Started { pid }),
            Just(Event::StartFailed { why: "no".into() }),
            Just(Event::Unplaceable { why: "no".into() }),
            news.prop_map(|news| Event::Reported(Report { news })),
            Just(Event::Kill),
            Just(Event::Stopped),
            node.prop_map(|node_id| Event::NodeLost { node_id }),
        ]
    }

    proptest! {
        #[test]
        fn nothing_leaves_a_terminal_state(
            fatal: bool, restarts in 0u32..5, ev in any_event(), limit in 0u32..4, deleted: bool,
        ) {
            let s = if fatal { InstanceState::Fatal } else { InstanceState::Exited };
            let f = spec(limit);
            let spec = (!deleted).then_some(&f);
            prop_assert_eq!(apply(&record(s, restarts), &ev, spec), Transition::Unchanged);
        }

        #[test]
        fn restarts_are_bounded_and_fatal_comes_only_at_the_limit(
            limit in 0u32..5,
            events in proptest::collection::vec(any_event(), 1..60),
        ) {
            let f = spec(limit);
            let mut r = record(InstanceState::Scheduling, 0);
            for ev in &events {
                let before = r.clone();
                let Transition::To { next, then } = apply(&r, ev, Some(&f)) else { continue };
                prop_assert!(next.restarts <= limit, "restarts {} past {limit}", next.restarts);
                prop_assert!(next.restarts >= before.restarts, "restarts never go back");
                if then == Then::Restart {
                    prop_assert_eq!(next.restarts, before.restarts + 1);
                    prop_assert_eq!(state_of(&next), InstanceState::Failed);
                }
                let failure = ev.may_fail();
                if failure && state_of(&next) == InstanceState::Fatal {
                    prop_assert_eq!(before.restarts, limit, "FATAL by failing only at the limit");
                }
                r = *next;
            }
        }

        #[test]
        fn an_asked_stop_never_restarts(restarts in 0u32..3, ev in any_event()) {
            let f = spec(5);
            match apply(&record(InstanceState::Exiting, restarts), &ev, Some(&f)) {
                Transition::Unchanged => {}
                Transition::To { next, then } => {
                    prop_assert_ne!(then, Then::Restart);
                    prop_assert_ne!(then, Then::Start);
                    prop_assert!(matches!(
                        state_of(&next),
                        InstanceState::Exiting | InstanceState::Exited | InstanceState::Fatal
                    ));
                }
            }
        }

        #[test]
        fn only_may_fail_events_read_the_spec(
            s in any_state(), restarts in 0u32..3, ev in any_event(), limit in 0u32..4,
        ) {
            prop_assume!(!ev.may_fail());
            let f = spec(limit);
            let r = record(s, restarts);
            prop_assert_eq!(apply(&r, &ev, Some(&f)), apply(&r, &ev, None));
        }

        #[test]
        fn backoff_is_monotone_and_capped(steps in 1usize..40, start in proptest::option::of(0u64..200_000)) {
            let mut prev = start.map(Duration::from_millis);
            for _ in 0..steps {
                let next = next_backoff(prev);
                prop_assert!(next <= MAX_BACKOFF && next >= FIRST_BACKOFF);
                if let Some(p) = prev {
                    prop_assert!(next >= p.min(MAX_BACKOFF), "{next:?} after {p:?}");
                }
                prev = Some(next);
            }
        }
    }

    #[test]
    fn restarts_back_off_and_reset_only_after_a_stable_run() {
        let stable = STABLE_AFTER.as_millis() as u64;
        let t0 = 10_000_000u64;
        // A fresh instance runs, fails soon: restarted at once.
        let mut r = record(InstanceState::Running, 0);
        r.running_since_unix_ms = t0;
        let p = restart_backoff(&r, t0 + 500);
        assert_eq!((p.streak, p.delay), (1, Duration::ZERO));
        // Failing again soon after each restart: 1 s, 2 s, 4 s, ... up to the cap.
        let mut delays = Vec::new();
        for _ in 0..8 {
            let mut next = with_state(r.clone(), InstanceState::Failed);
            stamp(&r, &mut next, Then::Restart, t0 + 500);
            r = next;
            r.state = InstanceState::Running.into();
            r.running_since_unix_ms = t0 + 1000;
            delays.push(restart_backoff(&r, t0 + 2000).delay.as_secs());
        }
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 30, 30, 30]);
        // A failure before it ever ran (still CREATING) does not reset the streak, however long
        // ago it last ran.
        let mut creating = r.clone();
        creating.state = InstanceState::Creating.into();
        assert_eq!(
            restart_backoff(&creating, t0 + 10 * stable).streak,
            r.crash_streak + 1
        );
        // Up for STABLE_AFTER: a new streak, restarted at once.
        let p = restart_backoff(&r, t0 + 1000 + stable);
        assert_eq!((p.streak, p.delay), (1, Duration::ZERO));
        let p = restart_backoff(&r, t0 + 1000 + stable - 1);
        assert!(p.streak > 1 && p.delay == RESTART_MAX_BACKOFF);
    }

    #[test]
    fn stamps_say_when_it_ran_failed_and_restarts() {
        let mut before = record(InstanceState::Creating, 0);
        let mut next = with_state(before.clone(), InstanceState::Running);
        stamp(&before, &mut next, Then::Nothing, 5_000);
        assert_eq!(
            (next.running_since_unix_ms, next.updated_unix_ms),
            (5_000, 5_000)
        );
        // Staying RUNNING (a usage report) keeps when it started.
        before = next.clone();
        stamp(&before, &mut next, Then::Nothing, 7_000);
        assert_eq!(next.running_since_unix_ms, 5_000);
        // A restart: the streak, the failure and the due time; no longer running.
        let mut failed = with_state(before.clone(), InstanceState::Failed);
        failed.crash_streak = 1;
        before.crash_streak = 1;
        stamp(&before, &mut failed, Then::Restart, 8_000);
        assert_eq!(failed.crash_streak, 2);
        assert_eq!(failed.failed_unix_ms, 8_000);
        assert_eq!(failed.restart_at_unix_ms, 9_000);
        assert_eq!(failed.running_since_unix_ms, 0);
    }

    #[test]
    fn backoff_doubles_from_the_first_to_the_cap() {
        let mut seen = vec![];
        let mut prev = None;
        for _ in 0..8 {
            let next = next_backoff(prev);
            seen.push(next.as_secs());
            prev = Some(next);
        }
        assert_eq!(seen, [2, 4, 8, 16, 32, 60, 60, 60]);
    }

    proptest! {
        /// Failing again and again, never up for long: the pauses never shrink, never pass the
        /// cap, and reach it; a stable run resets the streak to a restart at once.
        #[test]
        fn crash_loop_pauses_grow_to_the_cap_and_reset_after_a_stable_run(
            ups in proptest::collection::vec(0u64..(2 * STABLE_AFTER.as_millis() as u64), 1..40),
        ) {
            let stable = STABLE_AFTER.as_millis() as u64;
            let mut r = record(InstanceState::Running, 0);
            let mut now = 1_000_000u64;
            let mut last = Duration::ZERO;
            for up in ups {
                r.state = InstanceState::Running.into();
                r.running_since_unix_ms = now;
                now += up;
                let plan = restart_backoff(&r, now);
                prop_assert!(plan.delay <= RESTART_MAX_BACKOFF);
                if up >= stable {
                    prop_assert_eq!((plan.streak, plan.delay), (1, Duration::ZERO));
                } else {
                    prop_assert_eq!(plan.streak, r.crash_streak + 1);
                    prop_assert!(plan.delay >= last, "{:?} after {:?}", plan.delay, last);
                    prop_assert!(plan.delay == RESTART_MAX_BACKOFF
                        || plan.delay == Duration::ZERO
                        || plan.delay == last * 2
                        || last == Duration::ZERO);
                }
                let mut next = with_state(r.clone(), InstanceState::Failed);
                stamp(&r, &mut next, Then::Restart, now);
                prop_assert_eq!(next.restart_at_unix_ms, now + plan.delay.as_millis() as u64);
                last = plan.delay;
                r = next;
                now += plan.delay.as_millis() as u64;
            }
            prop_assert!(restart_delay(u32::MAX) == RESTART_MAX_BACKOFF);
        }
    }
}
