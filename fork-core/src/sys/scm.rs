//! Frames with file descriptors over unix sockets (`SCM_RIGHTS`).
//!
//! All descriptors of a frame travel in one `ScmRights` control message.
//! Received descriptors are close-on-exec (`MSG_CMSG_CLOEXEC`) and wrapped in
//! [`OwnedFd`] before anything else is checked, so no error path leaks one; a
//! truncated control message or payload is an error.

use std::io::{self, IoSlice};
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// The kernel's limit of descriptors in one message (`SCM_MAX_FD`).
pub(crate) const SCM_MAX_FD: usize = 253;

/// Room for one `SCM_RIGHTS` message with [`SCM_MAX_FD`] descriptors,
/// aligned for `cmsghdr`.
#[repr(C, align(8))]
struct CmsgBuf([u8; 1536]);

/// Result of one receive.
#[derive(Debug)]
pub(crate) enum Received {
    /// The peer closed the connection.
    Eof,
    /// A frame of this many bytes arrived in the buffer, with descriptors.
    Frame { len: usize, fds: Vec<OwnedFd> },
}

/// Sends one message made of `parts`, with `fds` attached.
///
/// Never raises `SIGPIPE`. With `dontwait`, a full socket gives
/// [`io::ErrorKind::WouldBlock`].
pub(crate) fn send(
    sock: BorrowedFd<'_>,
    parts: &[IoSlice<'_>],
    fds: &[BorrowedFd<'_>],
    dontwait: bool,
) -> io::Result<usize> {
    assert!(
        fds.len() <= SCM_MAX_FD,
        "too many descriptors for one message"
    );
    let mut cmsg = CmsgBuf([0; 1536]);
    let payload = size_of::<RawFd>() * fds.len();
    // SAFETY: a zeroed msghdr is a valid empty header.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_iov = parts.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = parts.len();
    if !fds.is_empty() {
        // SAFETY: CMSG_SPACE only computes a size.
        let space = unsafe { libc::CMSG_SPACE(payload as u32) } as usize;
        debug_assert!(space <= cmsg.0.len());
        msg.msg_control = cmsg.0.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: msg_control points at `space` writable, aligned bytes, so
        // CMSG_FIRSTHDR returns a valid header pointer into `cmsg`, and
        // CMSG_DATA has room for `payload` bytes (CMSG_SPACE accounted it).
        unsafe {
            let hdr = libc::CMSG_FIRSTHDR(&msg);
            (*hdr).cmsg_level = libc::SOL_SOCKET;
            (*hdr).cmsg_type = libc::SCM_RIGHTS;
            (*hdr).cmsg_len = libc::CMSG_LEN(payload as u32) as usize;
            let data = libc::CMSG_DATA(hdr).cast::<RawFd>();
            for (i, fd) in fds.iter().enumerate() {
                data.add(i).write_unaligned(fd.as_raw_fd());
            }
        }
    }
    let mut flags = libc::MSG_NOSIGNAL;
    if dontwait {
        flags |= libc::MSG_DONTWAIT;
    }
    loop {
        // SAFETY: `msg` points at live iovecs (`IoSlice` is ABI-compatible with
        // iovec) and a control buffer that outlive the call.
        let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, flags) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Receives one message into `buf`, with any descriptors attached.
///
/// With `dontwait`, an empty socket gives [`io::ErrorKind::WouldBlock`].
///
/// # Errors
///
/// Besides I/O errors: a message larger than `buf` (`MSG_TRUNC`) or a
/// truncated control message (`MSG_CTRUNC`) is [`io::ErrorKind::InvalidData`];
/// the descriptors that did arrive are closed.
pub(crate) fn recv(sock: BorrowedFd<'_>, buf: &mut [u8], dontwait: bool) -> io::Result<Received> {
    let mut cmsg = CmsgBuf([0; 1536]);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: a zeroed msghdr is a valid empty header.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.0.as_mut_ptr().cast();
    msg.msg_controllen = cmsg.0.len();
    let mut flags = libc::MSG_CMSG_CLOEXEC;
    if dontwait {
        flags |= libc::MSG_DONTWAIT;
    }
    let n = loop {
        // SAFETY: `msg` points at `buf` and `cmsg`, both writable for the
        // lengths given and alive for the call.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, flags) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    // Take ownership of every descriptor first, so that every path below
    // closes them.
    let mut fds = Vec::new();
    // SAFETY: after a successful recvmsg the kernel filled `msg_controllen`
    // bytes of `cmsg` with well-formed headers; CMSG_FIRSTHDR/NXTHDR walk
    // exactly those, and SCM_RIGHTS data is an array of new descriptors that
    // this process now owns (and nobody else knows of).
    unsafe {
        let mut hdr = libc::CMSG_FIRSTHDR(&msg);
        while !hdr.is_null() {
            if (*hdr).cmsg_level == libc::SOL_SOCKET && (*hdr).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(hdr).cast::<RawFd>();
                let bytes = (*hdr).cmsg_len - libc::CMSG_LEN(0) as usize;
                for i in 0..bytes / size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            hdr = libc::CMSG_NXTHDR(&msg, hdr);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "control message truncated: descriptors were lost",
        ));
    }
    if msg.msg_flags & libc::MSG_TRUNC != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message larger than {} bytes", buf.len()),
        ));
    }
    if n == 0 && fds.is_empty() {
        return Ok(Received::Eof);
    }
    Ok(Received::Frame { len: n, fds })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn fd_is_cloexec(fd: BorrowedFd<'_>) -> bool {
        let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).unwrap();
        flags & libc::FD_CLOEXEC != 0
    }

    #[test]
    fn frames_carry_descriptors_closed_on_exec() {
        let (a, b) = super::super::seqpacket_pair().unwrap();
        let (r, w) = std::io::pipe().unwrap();
        let fds = [r.as_fd(), w.as_fd()];
        send(
            a.as_fd(),
            &[IoSlice::new(b"he"), IoSlice::new(b"llo")],
            &fds,
            false,
        )
        .unwrap();
        let mut buf = [0u8; 16];
        let Received::Frame { len, fds } = recv(b.as_fd(), &mut buf, false).unwrap() else {
            panic!("expected a frame")
        };
        assert_eq!(&buf[..len], b"hello");
        assert_eq!(fds.len(), 2);
        assert!(fds.iter().all(|f| fd_is_cloexec(f.as_fd())));
        drop(a);
        assert!(matches!(
            recv(b.as_fd(), &mut buf, false).unwrap(),
            Received::Eof
        ));
    }

    #[test]
    fn oversized_message_is_an_error_and_closes_descriptors() {
        let (a, b) = super::super::seqpacket_pair().unwrap();
        let (r, _w) = std::io::pipe().unwrap();
        send(a.as_fd(), &[IoSlice::new(&[7; 64])], &[r.as_fd()], false).unwrap();
        let mut buf = [0u8; 8];
        let e = recv(b.as_fd(), &mut buf, false).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn dontwait_on_empty_socket_would_block() {
        let (_a, b) = super::super::seqpacket_pair().unwrap();
        let mut buf = [0u8; 8];
        let e = recv(b.as_fd(), &mut buf, true).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    }
}
