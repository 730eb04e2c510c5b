//! The instance socket's framing (yr-proto's `frame`): the proxy decodes what
//! function processes send, and the runtime what the proxy sends. The input
//! is a byte stream of frames. It is cut by hand, as the readers cut it (a
//! 4-byte head checked by `frame::body_len`, a body decoded by `frame::decode`
//! in both directions), and read by `frame::read`, which must agree frame by
//! frame. Nothing panics, no length over `MAX_FRAME` is accepted, and an
//! accepted message survives `encode` -> `read` unchanged.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::io::Cursor;
use yr_proto::{frame, InstanceMessage, ProxyMessage};

fn round_trips<M: prost::Message + Default + PartialEq + std::fmt::Debug>(m: &M) {
    let wire = frame::to_frame(m).expect("an accepted message re-encodes");
    let len = frame::body_len([wire[0], wire[1], wire[2], wire[3]]).expect("own head is valid");
    assert_eq!(len, wire.len() - 4);
    let mut buf = Vec::new();
    let back: M = frame::read(&mut Cursor::new(&wire), &mut buf)
        .expect("own frame reads")
        .expect("one frame");
    assert_eq!(&back, m);
}

fuzz_target!(|data: &[u8]| {
    let mut stream = Cursor::new(data);
    let mut buf = Vec::new();
    let mut rest = data;
    loop {
        let read = frame::read::<InstanceMessage>(&mut stream, &mut buf);
        if rest.is_empty() {
            assert!(
                matches!(read, Ok(None)),
                "a close between frames is the end"
            );
            return;
        }
        let Some(head) = rest.first_chunk::<4>() else {
            assert!(read.is_err(), "a torn head is an error");
            return;
        };
        let Ok(len) = frame::body_len(*head) else {
            assert!(u32::from_le_bytes(*head) as usize > frame::MAX_FRAME);
            assert!(read.is_err(), "an oversized frame is refused");
            return;
        };
        assert!(len <= frame::MAX_FRAME);
        let Some(body) = rest.get(4..4 + len) else {
            assert!(read.is_err(), "a torn body is an error, not a message");
            return;
        };
        if let Ok(m) = frame::decode::<ProxyMessage>(body) {
            round_trips(&m);
        }
        match frame::decode::<InstanceMessage>(body) {
            Ok(m) => {
                assert_eq!(read.ok().flatten().as_ref(), Some(&m), "read agrees");
                round_trips(&m);
            }
            Err(_) => {
                // A reader gives up on the connection after a bad frame.
                assert!(read.is_err());
                return;
            }
        }
        rest = &rest[4 + len..];
    }
});
