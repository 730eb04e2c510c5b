//! What a master that takes over does with each instance record, given what the record's node
//! actually runs: the pure decision behind the master's reconciliation (applied in
//! `master::takeover`).
//!
//! Why this exists: a master that starts (after a crash, or as a standby that won the election)
//! rebuilds its records from etcd, but the previous master may have died between writing a
//! record and acting on it (a placement or start in flight, a restart it had scheduled), and
//! processes may have exited while no master listened. Left alone, such records stay in
//! SCHEDULING, CREATING or FAILED for ever and keep their resources; processes with no live
//! record keep running. Each record is checked once against its node's agent
//! (`ListInstances`):
//!
//! | record | process on its node | fix |
//! |---|---|---|
//! | RUNNING | runs | keep |
//! | RUNNING | gone | FAILED (restart while retries last) |
//! | CREATING | runs | RUNNING |
//! | CREATING | gone | FAILED (restart while retries last) |
//! | SCHEDULING/NEW, never ran | — | FATAL: its creator's call failed with the old master, and a retried create makes a new one |
//! | SCHEDULING/NEW, a restart in flight | — | restart (placed again) |
//! | FAILED | any | restart (the old master's restart task died with it); a process still running is stopped first |
//! | EXITING | runs | stop it |
//! | EXITING | gone | EXITED |
//! | EXITED/FATAL | runs | stop the process (an orphan) |
//! | none | runs | stop the process (an orphan) |
//!
//! Records whose node is not alive are left to the node watch (`NodeLost`), and records whose
//! agent does not answer are left as they are (the next takeover, or the node's loss, settles
//! them). Resources need no separate release: they are derived from the records.
//!
//! A late exit report is told apart from one about the current process by its pid
//! ([`stale_report`]), so an exit of a process that a reconciled restart already replaced cannot
//! fail the new one.

use yr_proto::{InstanceRecord, InstanceState};

use crate::lifecycle::{state_of, terminal};

/// What an instance's node runs for it, as its agent said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnNode {
    /// No process of this instance runs there.
    Gone,
    /// A process runs.
    Runs {
        /// Its pid.
        pid: u32,
    },
}

/// What the master does with one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fix {
    /// Nothing.
    Keep,
    /// Its process runs: record RUNNING with this pid.
    Running {
        /// The running process.
        pid: u32,
    },
    /// Record it FAILED with this reason (the lifecycle then restarts it or makes it FATAL).
    Failed(String),
    /// Record it FATAL with this reason.
    Fatal(String),
    /// Start it again (stopping the process first when one still runs).
    Restart,
    /// Stop its process; the agent's exit report settles the record.
    Stop,
    /// Record it EXITED (its stop finished while no master listened).
    Exited,
}

/// The fix for record `r` whose node runs what `on_node` says. `r`'s node is alive and answered.
pub fn decide(r: &InstanceRecord, on_node: OnNode) -> Fix {
    let state = state_of(r);
    let runs = matches!(on_node, OnNode::Runs { .. });
    if terminal(state) {
        return if runs { Fix::Stop } else { Fix::Keep };
    }
    match (state, on_node) {
        (InstanceState::Running, OnNode::Runs { .. }) => Fix::Keep,
        (InstanceState::Running, OnNode::Gone) => Fix::Failed(format!(
            "its process was no longer running on node {} when a master took over (it exited \
             while no master was listening)",
            r.node_id
        )),
        (InstanceState::Creating, OnNode::Runs { pid }) => Fix::Running { pid },
        (InstanceState::Creating, OnNode::Gone) => Fix::Failed(format!(
            "its start on node {} was interrupted when the master changed",
            r.node_id
        )),
        (InstanceState::New | InstanceState::Scheduling, _) if never_ran(r) => Fix::Fatal(
            "its creation was interrupted when the master changed; the caller was told the \
             create failed"
                .into(),
        ),
        (InstanceState::New | InstanceState::Scheduling | InstanceState::Failed, _) => Fix::Restart,
        (InstanceState::Exiting, OnNode::Runs { .. }) => Fix::Stop,
        (InstanceState::Exiting, OnNode::Gone) => Fix::Exited,
        // Terminal states returned above; every other state is listed.
        _ => Fix::Keep,
    }
}

/// Whether the instance never had a process (a first placement, not a restart).
fn never_ran(r: &InstanceRecord) -> bool {
    r.pid == 0 && r.restarts == 0
}

/// Whether a node's report about process `pid` (RUNNING, FAILED or EXITED) concerns a process
/// of the instance that already ended and was replaced: then it changes nothing. Only a process known
/// to have ended counts (not merely "another pid than the record's"): a process that crashes
/// right after its start may report before the master has recorded its pid.
pub fn stale_report(r: &InstanceRecord, pid: u32) -> bool {
    pid != 0 && pid == r.ended_pid
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(state: InstanceState, pid: u32, restarts: u32) -> InstanceRecord {
        InstanceRecord {
            instance_id: "i-1".into(),
            node_id: "n-1".into(),
            state: state.into(),
            pid,
            restarts,
            ..Default::default()
        }
    }

    use crate::lifecycle::tests::ALL as STATES;

    #[test]
    fn the_table_of_the_module_header() {
        use InstanceState::*;
        let runs = OnNode::Runs { pid: 7 };
        assert_eq!(decide(&record(Running, 7, 0), runs), Fix::Keep);
        assert!(
            matches!(decide(&record(Running, 7, 0), OnNode::Gone), Fix::Failed(m) if m.contains("n-1"))
        );
        assert_eq!(
            decide(&record(Creating, 0, 0), runs),
            Fix::Running { pid: 7 }
        );
        assert!(matches!(
            decide(&record(Creating, 0, 0), OnNode::Gone),
            Fix::Failed(_)
        ));
        assert!(matches!(
            decide(&record(Scheduling, 0, 0), OnNode::Gone),
            Fix::Fatal(_)
        ));
        assert!(matches!(
            decide(&record(New, 0, 0), OnNode::Gone),
            Fix::Fatal(_)
        ));
        assert_eq!(
            decide(&record(Scheduling, 5, 1), OnNode::Gone),
            Fix::Restart
        );
        assert_eq!(decide(&record(Failed, 5, 1), OnNode::Gone), Fix::Restart);
        assert_eq!(decide(&record(Failed, 5, 1), runs), Fix::Restart);
        assert_eq!(decide(&record(Exiting, 7, 0), runs), Fix::Stop);
        assert_eq!(decide(&record(Exiting, 7, 0), OnNode::Gone), Fix::Exited);
        assert_eq!(decide(&record(Exited, 7, 0), runs), Fix::Stop);
        assert_eq!(decide(&record(Fatal, 7, 0), runs), Fix::Stop);
        assert_eq!(decide(&record(Exited, 7, 0), OnNode::Gone), Fix::Keep);
    }

    proptest! {
        /// Nothing is left stuck: every non-terminal record that is not RUNNING with its
        /// process gets a fix that moves it, and a terminal record is only ever touched to stop
        /// a leftover process.
        #[test]
        fn no_record_stays_stuck(
            si in 0usize..8, pid in 0u32..3, restarts in 0u32..3, runs in any::<bool>(), rpid in 1u32..3,
        ) {
            let r = record(STATES[si], pid, restarts);
            let on = if runs { OnNode::Runs { pid: rpid } } else { OnNode::Gone };
            let fix = decide(&r, on);
            let state = STATES[si];
            if terminal(state) {
                prop_assert_eq!(fix, if runs { Fix::Stop } else { Fix::Keep });
            } else if state == InstanceState::Running && runs {
                prop_assert_eq!(fix, Fix::Keep);
            } else {
                prop_assert_ne!(fix, Fix::Keep, "{:?} with {:?} would stay stuck", state, on);
            }
        }

        #[test]
        fn only_reports_about_an_ended_process_are_stale(ended in 0u32..4, b in 0u32..4, now in 0u32..4) {
            let mut r = record(InstanceState::Creating, now, 1);
            r.ended_pid = ended;
            prop_assert_eq!(stale_report(&r, b), b != 0 && b == ended);
        }
    }
}
