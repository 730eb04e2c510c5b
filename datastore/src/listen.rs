//! Accepting connections until told to stop: the one accept loop both
//! listeners of the data worker use (the clients' Unix socket in `server`,
//! the peers' TCP port in `transfer`). It sits below both so that neither
//! imports the other for it.
//!
//! A listener is non-blocking and sleeps in poll(2) on two descriptors: its
//! own and a stop eventfd (the worker's `Shutdown` handle owns one). When the
//! stop fd becomes readable the loop returns without accepting again; until
//! then every wake drains all pending connections, so nothing waits for a
//! second wake. This module decides nothing about what a connection is for:
//! the caller's closure does.

use std::io;
use std::os::fd::RawFd;

/// Sleeps in poll(2) until `listen_fd` has connections or `stop_fd` fires; on connections runs
/// `drain` (which accepts them all), on stop returns. A failed poll is logged and ends the loop.
pub(crate) fn poll_accept(listen_fd: RawFd, stop_fd: RawFd, what: &str, mut drain: impl FnMut()) {
    let mut fds = [
        libc::pollfd {
            fd: listen_fd,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: stop_fd,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: fds is a live array of two initialised pollfd.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            tracing::error!("poll on {what} failed: {e}");
            return;
        }
        if fds[1].revents != 0 {
            return;
        }
        drain();
    }
}

/// Accepts from a non-blocking listener until it has nothing pending, handing each connection
/// to `each`. Errors such as EMFILE are logged; the next poll retries.
pub(crate) fn accept_all<S>(mut accept: impl FnMut() -> io::Result<S>, mut each: impl FnMut(S)) {
    loop {
        match accept() {
            Ok(s) => each(s),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_all_drains_until_would_block() {
        let mut script = vec![
            Ok(1),
            Err(io::Error::from(io::ErrorKind::Interrupted)),
            Ok(2),
            Err(io::Error::from(io::ErrorKind::WouldBlock)),
            Ok(3),
        ]
        .into_iter();
        let mut got = Vec::new();
        accept_all(|| script.next().expect("script"), |s| got.push(s));
        assert_eq!(got, vec![1, 2]);
        // The connection after WouldBlock is left for the next poll.
        assert_eq!(script.next().map(|r| r.ok()), Some(Some(3)));
    }

    #[test]
    fn accept_all_stops_on_a_hard_error() {
        let mut script = vec![
            Ok(1),
            Err(io::Error::from_raw_os_error(libc::EMFILE)),
            Ok(2),
        ]
        .into_iter();
        let mut got = Vec::new();
        accept_all(|| script.next().expect("script"), |s| got.push(s));
        assert_eq!(got, vec![1]);
    }
}
