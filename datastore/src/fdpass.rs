//! Passing the arena's file descriptor over a Unix socket (SCM_RIGHTS).
//!
//! std's ancillary-data API is unstable, so these two functions wrap
//! `sendmsg`/`recvmsg` directly. They carry one descriptor alongside one
//! buffer; the receiver takes ownership of the descriptor it gets (wrapped
//! in an `OwnedFd` at once so it cannot leak).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

/// Space for one `cmsghdr` carrying one `int`, aligned for `cmsghdr`.
#[repr(C)]
union CmsgBuf {
    _align: libc::cmsghdr,
    bytes: [u8; 64],
}

/// Sends `data` with `fd` attached. Writes the rest of `data` with plain
/// writes if the kernel takes only part of it in the first call.
pub fn send_with_fd(stream: &UnixStream, data: &[u8], fd: RawFd) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let mut cbuf = CmsgBuf { bytes: [0; 64] };
    // SAFETY: CMSG_SPACE is a pure computation on a constant.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    // SAFETY: zeroed msghdr is a valid "empty" value; every pointer we set
    // below points into locals that outlive the sendmsg call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    // SAFETY: writing the `bytes` variant of a plain-data union.
    msg.msg_control = unsafe { cbuf.bytes.as_mut_ptr() } as *mut libc::c_void;
    msg.msg_controllen = space as _;
    // SAFETY: msg_control points at a buffer of `space` bytes, enough for one
    // header carrying one fd, so CMSG_FIRSTHDR is non-null and in bounds.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut RawFd, fd);
    }
    // SAFETY: msg is fully initialised and its buffers are alive.
    let n = unsafe { libc::sendmsg(stream.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    if n < data.len() {
        use std::io::Write;
        (&*stream).write_all(&data[n..])?;
    }
    Ok(())
}

/// Receives into `buf` and returns the byte count and the descriptor that
/// came with them, if any. Extra descriptors (a misbehaving peer) are closed.
pub fn recv_with_fd(stream: &UnixStream, buf: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    let mut cbuf = CmsgBuf { bytes: [0; 64] };
    // SAFETY: as in send_with_fd.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    // SAFETY: writing the `bytes` variant of a plain-data union.
    msg.msg_control = unsafe { cbuf.bytes.as_mut_ptr() } as *mut libc::c_void;
    msg.msg_controllen = 64;
    let n = loop {
        // SAFETY: msg points at live buffers of the sizes given.
        let n = unsafe { libc::recvmsg(stream.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    let mut out = None;
    // SAFETY: the kernel filled msg_control/msg_controllen; the CMSG macros
    // walk only within that length, and each SCM_RIGHTS payload holds
    // (cmsg_len - CMSG_LEN(0)) / sizeof(int) descriptors that are now ours.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let payload = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let count = payload / std::mem::size_of::<RawFd>();
                let data = libc::CMSG_DATA(cmsg) as *const RawFd;
                for i in 0..count {
                    let fd = OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i)));
                    if out.is_none() {
                        out = Some(fd);
                    } // else dropped: closed
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok((n, out))
}

/// A Unix stream whose reads spin briefly before they sleep.
///
/// Why spin at all: the store's calls are a few microseconds of work, about
/// what it costs the scheduler to put a thread to sleep in `read` and wake
/// it again (more on a VM, where an idle vCPU must be woken too). A short,
/// bounded spin lets the common back-to-back request/reply pattern skip that
/// sleep/wake pair; past the budget the read blocks normally, so an idle
/// connection costs nothing. The spin polls with the real, non-blocking
/// read, so data found while spinning costs no extra system call. Between
/// polls it yields the CPU (see `read`), so a peer that shares this CPU is
/// not kept waiting by the spin.
pub struct SpinStream {
    stream: UnixStream,
    budget: std::time::Duration,
}

impl SpinStream {
    /// Wraps a blocking stream.
    pub fn new(stream: UnixStream, budget: std::time::Duration) -> Self {
        SpinStream { stream, budget }
    }

    /// The stream.
    pub fn get_ref(&self) -> &UnixStream {
        &self.stream
    }
}

impl io::Read for SpinStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let start = std::time::Instant::now();
        loop {
            // SAFETY: recv into a live buffer of buf.len() bytes;
            // MSG_DONTWAIT never blocks.
            let n = unsafe {
                libc::recv(
                    self.stream.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock => {}
                io::ErrorKind::Interrupted => continue,
                _ => return Err(e),
            }
            if start.elapsed() >= self.budget {
                return (&self.stream).read(buf);
            }
            // Yield rather than pause: when the peer is runnable on this very CPU (two
            // busy cores, or one), a pause spins the whole budget while the reply cannot
            // be written, and each exchange costs two budgets; a yield lets the peer run
            // now, and returns at once when nothing else wants this CPU.
            std::thread::yield_now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};

    #[test]
    fn passes_a_descriptor() {
        let (a, b) = UnixStream::pair().expect("pair");
        let mut f = tempfile::tempfile().expect("tmp");
        f.write_all(b"shared").expect("write");
        send_with_fd(&a, b"hello", f.as_raw_fd()).expect("send");
        let mut buf = [0u8; 16];
        let (n, fd) = recv_with_fd(&b, &mut buf).expect("recv");
        assert_eq!(&buf[..n], b"hello");
        let mut g = std::fs::File::from(fd.expect("fd arrived"));
        g.rewind().expect("seek");
        let mut s = String::new();
        g.read_to_string(&mut s).expect("read");
        assert_eq!(s, "shared");
    }

    #[test]
    fn plain_data_has_no_descriptor() {
        let (mut a, b) = UnixStream::pair().expect("pair");
        a.write_all(b"x").expect("write");
        let mut buf = [0u8; 4];
        let (n, fd) = recv_with_fd(&b, &mut buf).expect("recv");
        assert_eq!(n, 1);
        assert!(fd.is_none());
    }
}
