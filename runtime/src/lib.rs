//! The Rust runtime SDK used by function processes and driver programs (grows with later issues).
