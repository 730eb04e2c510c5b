//! The worker's request decoder sees bytes from any local process: it must
//! never panic, and whatever it accepts must re-encode to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use yr_datastore::protocol::Request;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = Request::decode(data) {
        let frame = req.encode();
        assert_eq!(&frame[4..], data, "accepted frame has exactly one encoding");
    }
});
