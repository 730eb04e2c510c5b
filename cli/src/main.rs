//! `yr`: one binary for every role (`yr start` launches each component as `yr component NAME`).
//!
//! The commands live in the library (`lib.rs`); this file only picks the allocator, sets up
//! logging (`YR_LOG`), runs the parsed command and turns its error into an exit status.

use clap::Parser;

/// Every component is a `yr` process; their request paths allocate and free many small,
/// short-lived buffers across threads, which glibc's allocator serves slowly (measured: a fifth
/// of the function proxy's time under load went to malloc and free).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay`: its place in `mi_option_e` of the (v3) sources
/// libmimalloc-sys builds, which names no constant for it. A test checks that this option still
/// has purge_delay's default, 1000 ms.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Memory freed in large blocks goes back to the OS at once, not after mimalloc's delay: an
/// idle process never reaches the delayed purge, so a data worker whose object table had grown
/// kept the table's old arrays (52 MiB at a million objects) for good. `MIMALLOC_PURGE_DELAY`
/// still overrides.
fn purge_freed_memory_at_once() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets an integer option of the allocator this binary links; mimalloc reads
        // options atomically, so setting one while other threads allocate is allowed.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    }
}

/// Files and folders `yr` and the processes it starts create (session files, logs, spill files,
/// instance folders and their output) are readable by this user only unless made otherwise on
/// purpose: other local users must not read a cluster's data. Sensitive files are also created
/// with explicit modes, so this is the default for everything else.
fn private_by_default() {
    // SAFETY: umask(2) only sets this process's file mode creation mask; it cannot fail.
    unsafe { libc::umask(0o077) };
}

fn main() -> std::process::ExitCode {
    private_by_default();
    purge_freed_memory_at_once();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("YR_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let result = yr::run(yr::Cli::parse());
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("yr: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_option_is_where_we_think() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        // SAFETY: reads an integer option of the linked allocator.
        let v = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(
            v, 1000,
            "option {MI_OPTION_PURGE_DELAY} is not purge_delay (default 1000 ms) in this mimalloc"
        );
    }
}
