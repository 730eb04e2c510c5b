//! The client's response decoder: never panics on any bytes; accepted
//! frames round-trip.
#![no_main]
use libfuzzer_sys::fuzz_target;
use yr_datastore::protocol::Response;

fuzz_target!(|data: &[u8]| {
    if let Ok(resp) = Response::decode(data) {
        assert_eq!(&resp.encode()[4..], data);
    }
});
