//! The instance socket's framing (yr-proto's `frame`): the proxy decodes what
//! function processes send, and the runtime what the proxy sends. The input
//! is a byte stream of frames, cut as the readers cut it: a 4-byte head
//! checked by `frame::body_len`, then a body decoded by `frame::decode` in both
//! directions. Nothing panics, no length over `MAX_FRAME` is accepted, and an
//! accepted message survives `encode` -> `read` unchanged.
#![no_main]
use libfuzzer_sys::fuzz_target;
use yr_proto::{frame, InstanceMessage, ProxyMessage};

fn round_trips<M: prost::Message + Default + PartialEq + std::fmt::Debug>(m: &M) {
    let wire = frame::to_frame(m).expect("an accepted message re-encodes");
    let len = frame::body_len([wire[0], wire[1], wire[2], wire[3]]).expect("own head is valid");
    assert_eq!(len, wire.len() - 4);
    let mut buf = Vec::new();
    let back: M = frame::read(&mut std::io::Cursor::new(&wire), &mut buf)
        .expect("own frame reads")
        .expect("one frame");
    assert_eq!(&back, m);
}

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while rest.len() >= 4 {
        let head = [rest[0], rest[1], rest[2], rest[3]];
        let Ok(len) = frame::body_len(head) else {
            assert!(u32::from_le_bytes(head) as usize > frame::MAX_FRAME);
            return;
        };
        assert!(len <= frame::MAX_FRAME);
        let Some(body) = rest.get(4..4 + len) else {
            // Torn frame: `frame::read` must call it an error, not a message.
            let mut buf = Vec::new();
            assert!(frame::read::<InstanceMessage>(&mut std::io::Cursor::new(rest), &mut buf).is_err());
            return;
        };
        if let Ok(m) = frame::decode::<InstanceMessage>(body) {
            round_trips(&m);
        }
        if let Ok(m) = frame::decode::<ProxyMessage>(body) {
            round_trips(&m);
        }
        rest = &rest[4 + len..];
    }
});
