//! The instance lifecycle: states, which of them are final, and (as it grows) the pure rules
//! that move an instance record from one state to the next. No I/O here: the master applies
//! the decisions this module makes.
//!
//! States: NEW → SCHEDULING → CREATING → RUNNING → (FAILED → SCHEDULING …) → EXITING → EXITED,
//! or FATAL when an instance cannot be kept running. EXITED and FATAL are terminal: nothing moves
//! a record out of them.

use yr_proto::InstanceState;

/// Whether an instance in state `s` (the wire value) has ended for good.
pub fn is_terminal(s: i32) -> bool {
    s == InstanceState::Exited as i32 || s == InstanceState::Fatal as i32
}

/// The name of state `s` (the wire value), `UNKNOWN` for a value this version does not know.
pub fn state_name(s: i32) -> &'static str {
    InstanceState::try_from(s)
        .map(|s| s.as_str_name())
        .unwrap_or("UNKNOWN")
}
