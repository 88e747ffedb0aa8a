//! Passing file descriptors over unix sockets, safely.
//!
//! The machinery the template protocol uses, for your own sockets (fork-rpc
//! sends descriptors to running workers with it): all descriptors of a
//! message travel in one `SCM_RIGHTS` control message; received ones are
//! close-on-exec and owned ([`OwnedFd`]) before anything is checked, so no
//! error path leaks one; a truncated message or control message is an
//! error, not a silent loss. (The `sendfd` crate's receive, for one, does
//! not set close-on-exec.)
//!
//! Use a datagram or seqpacket socket so each message keeps its
//! descriptors; the functions honour the socket's blocking mode (with a
//! non-blocking socket inside tokio, call them from
//! `UnixDatagram::async_io`).
//!
//! ```
//! use std::io::{Read, Write};
//! use std::os::fd::AsFd;
//! use fork_core::fdpass;
//!
//! # fn main() -> std::io::Result<()> {
//! let (a, b) = fdpass::seqpacket_pair()?;
//! let (reader, mut writer) = std::io::pipe()?;
//! writer.write_all(b"through the pipe")?;
//! drop(writer);
//! fdpass::send_fds(a.as_fd(), b"a pipe", &[reader.as_fd()])?;
//!
//! let mut buf = [0u8; 16];
//! let (len, fds) = fdpass::recv_fds(b.as_fd(), &mut buf)?.expect("a message");
//! assert_eq!(&buf[..len], b"a pipe");
//! let mut text = String::new();
//! std::fs::File::from(fds.into_iter().next().unwrap()).read_to_string(&mut text)?;
//! assert_eq!(text, "through the pipe");
//! # Ok(())
//! # }
//! ```

use std::io::{self, IoSlice};
use std::os::fd::{BorrowedFd, OwnedFd};

use crate::sys::scm;

/// Most descriptors one message can carry (the kernel's `SCM_MAX_FD`).
pub const MAX_FDS: usize = scm::SCM_MAX_FD;

/// Sends `data` with `fds` attached, as one message.
///
/// # Errors
///
/// I/O errors of `sendmsg` (`WouldBlock` on a full non-blocking socket), or
/// [`io::ErrorKind::InvalidInput`] for more than [`MAX_FDS`] descriptors.
pub fn send_fds(sock: BorrowedFd<'_>, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} descriptors exceed the limit of {MAX_FDS} per message",
                fds.len()
            ),
        ));
    }
    scm::send(sock, &[IoSlice::new(data)], fds, false)
}

/// Receives one message into `buf`, returning its length and descriptors;
/// `Ok(None)` at EOF.
///
/// # Errors
///
/// I/O errors of `recvmsg`, or [`io::ErrorKind::InvalidData`] if the
/// message or its control data was truncated (the descriptors that arrived
/// are closed).
pub fn recv_fds(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<(usize, Vec<OwnedFd>)>> {
    match scm::recv(sock, buf, false)? {
        scm::Received::Eof => Ok(None),
        scm::Received::Frame { len, fds } => Ok(Some((len, fds))),
    }
}

/// A `SOCK_SEQPACKET` socket pair, both ends close-on-exec and blocking:
/// the kind of socket to pass descriptors over.
///
/// # Errors
///
/// If `socketpair` fails.
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    crate::sys::seqpacket_pair()
}

/// Shuts down the sending direction of a socket (`shutdown(SHUT_WR)`): the
/// peer reads EOF once it has read what was sent, and can still reply.
pub fn shutdown_write(sock: BorrowedFd<'_>) {
    crate::sys::shutdown(sock, nix::sys::socket::Shutdown::Write);
}
