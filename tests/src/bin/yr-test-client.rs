//! A client process for tests that need one to die: it pins a sealed object
//! and creates an unsealed one, reports what it holds on stdout, then waits
//! on stdin until it is killed.
//!
//! Usage: yr-test-client SOCKET PIN_ID_HEX CREATE_ID_HEX CREATE_SIZE

use std::io::{Read, Write};
use std::time::Duration;
use yr_datastore::{Client, ObjectId};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: yr-test-client SOCKET PIN_ID CREATE_ID CREATE_SIZE");
        std::process::exit(2);
    }
    let parse = |s: &str| ObjectId::from_hex(s).unwrap_or_else(|| panic!("bad id {s}"));
    let client = Client::connect(&args[1]).expect("connect");
    let pinned = client
        .get_one(parse(&args[2]), Duration::from_secs(10))
        .expect("pin");
    let size: usize = args[4].parse().expect("size");
    let mut builder = client.create(parse(&args[3]), size, 0).expect("create");
    builder.data_mut().fill(0xAB);
    println!("holding {} {}", pinned.len(), builder.id());
    std::io::stdout().flush().expect("flush");
    // Block until killed (or the test closes our stdin).
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop(builder);
    drop(pinned);
}
