//! A data worker's transfer port takes bytes from any host that reaches it:
//! the peer request decoder never panics, never allocates beyond what the
//! body justifies, and whatever it accepts re-encodes to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use yr_datastore::transfer::PeerRequest;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = PeerRequest::decode(data) {
        let frame = req.encode();
        assert_eq!(
            u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize,
            frame.len() - 4
        );
        assert_eq!(&frame[4..], data, "accepted frame has exactly one encoding");
    }
});
