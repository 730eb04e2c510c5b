//! A call's outcome on its way back to the proxy: [`Failure`] carries the kind of a failed
//! call, and [`Replies`] writes each outcome as one frame on the instance socket.
//!
//! Invariants: a reply is written by the thread that computed it, whole, under one lock: no
//! hand-off to a writer thread (each hand-off is a wake-up), and frames never interleave. No
//! reply is over the frame limit (a large one is turned into an error saying so). A failure's
//! kind is set where it is known and sent as `CallResult.error_kind`, never implied by its text.

use std::io::Write;
use std::os::unix::net::UnixStream;

use yr_proto::frame;
use yr_proto::{instance_message, CallResult, ErrorKind, InstanceMessage};

/// Why a call failed, as the function process knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The kind the caller acts on: [`ErrorKind::ErrorFunction`] for the function's own error,
    /// [`ErrorKind::ErrorObjectLost`] for an argument whose only node is gone.
    pub kind: ErrorKind,
    /// What to tell the caller.
    pub message: String,
}

impl Failure {
    /// The function's own error (or panic).
    pub fn function(message: String) -> Failure {
        Failure {
            kind: ErrorKind::ErrorFunction,
            message,
        }
    }
}

/// A call's outcome inside the function process.
pub type Reply = Result<Vec<u8>, Failure>;

/// The proxy's end of the instance socket, shared by the threads that send replies.
pub(super) struct Replies {
    socket: parking_lot::Mutex<UnixStream>,
}

impl Replies {
    pub fn new(socket: UnixStream) -> Replies {
        Replies {
            socket: parking_lot::Mutex::new(socket),
        }
    }

    /// Sends a call's outcome. A broken socket is left to the reading loop, which ends the
    /// process when it sees it.
    pub fn send(&self, call_id: u64, r: Reply) {
        self.write(call_id, result_message(call_id, r));
    }

    /// Says that a call was dropped before it started (see `calls`): it had no effect.
    pub fn cancelled(&self, call_id: u64) {
        let msg = InstanceMessage {
            msg: Some(instance_message::Msg::Result(CallResult {
                call_id,
                cancelled: true,
                ..Default::default()
            })),
        };
        self.write(call_id, msg);
    }

    fn write(&self, call_id: u64, msg: InstanceMessage) {
        let mut out = Vec::new();
        if let Err(e) = frame::encode(&msg, &mut out) {
            eprintln!("yr function process: cannot encode the reply to call {call_id}: {e}");
            return;
        }
        let _ = self.socket.lock().write_all(&out);
    }
}

/// The frame body for a call's outcome. A reply over the frame limit becomes an error reply
/// saying so; an empty error message is still an error.
fn result_message(call_id: u64, r: Reply) -> InstanceMessage {
    let (payload, error, kind) = match r {
        Ok(p) if p.len() > frame::MAX_PAYLOAD => (
            Vec::new(),
            format!(
                "the reply of {} bytes is over the {}-byte limit; put large results in the \
                 data worker and return their IDs",
                p.len(),
                frame::MAX_PAYLOAD
            ),
            ErrorKind::ErrorFunction,
        ),
        Ok(p) => (p, String::new(), ErrorKind::ErrorNone),
        Err(f) => (
            Vec::new(),
            if f.message.is_empty() {
                "error".into()
            } else {
                f.message
            },
            f.kind,
        ),
    };
    InstanceMessage {
        msg: Some(instance_message::Msg::Result(CallResult {
            call_id,
            payload,
            error,
            error_kind: kind as i32,
            cancelled: false,
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(m: InstanceMessage) -> CallResult {
        match m.msg {
            Some(instance_message::Msg::Result(r)) => r,
            other => panic!("not a result: {other:?}"),
        }
    }

    #[test]
    fn an_outcome_carries_its_kind_typed() {
        let ok = result(result_message(1, Ok(b"hi".to_vec())));
        assert_eq!((ok.call_id, ok.payload.as_slice()), (1, &b"hi"[..]));
        assert_eq!((ok.error.as_str(), ok.error_kind), ("", 0));

        let lost = result(result_message(
            2,
            Err(Failure {
                kind: ErrorKind::ErrorObjectLost,
                message: "argument 0: object x is lost".into(),
            }),
        ));
        assert_eq!(lost.error_kind, ErrorKind::ErrorObjectLost as i32);
        assert_eq!(lost.error, "argument 0: object x is lost");

        let own = result(result_message(3, Err(Failure::function(String::new()))));
        assert_eq!(own.error_kind, ErrorKind::ErrorFunction as i32);
        assert_eq!(own.error, "error", "an empty message is still an error");
    }

    #[test]
    fn a_reply_over_the_frame_limit_becomes_an_error() {
        let big = vec![0u8; frame::MAX_PAYLOAD + 1];
        let r = result(result_message(4, Ok(big)));
        assert!(r.payload.is_empty());
        assert_eq!(r.error_kind, ErrorKind::ErrorFunction as i32);
        assert!(r.error.contains("over the"), "{}", r.error);
    }
}
