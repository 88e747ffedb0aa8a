//! The server's listening sockets, as the parent keeps them: checked once
//! at start, duplicated into every worker, never closed before the server
//! stops (a reload keeps them, and with them the connections queued).

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use nix::sys::socket::{
    AddressFamily, SockType, SockaddrLike, SockaddrStorage, getsockname, getsockopt, sockopt,
};

use crate::error::Error;
use crate::message::ListenerKind;

/// Checks that `fd` is a listening stream socket and says which kind.
pub(crate) fn kind_of(index: usize, fd: &OwnedFd) -> Result<ListenerKind, Error> {
    let fail = |source: io::Error| Error::Listener {
        index,
        source: source.into(),
    };
    let errno = |e: nix::errno::Errno| fail(e.into());
    if getsockopt(&fd.as_fd(), sockopt::SockType).map_err(errno)? != SockType::Stream {
        return Err(fail(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a stream socket",
        )));
    }
    if !getsockopt(&fd.as_fd(), sockopt::AcceptConn).map_err(errno)? {
        return Err(fail(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the socket is not listening (call listen first, as std's and tokio's bind do)",
        )));
    }
    let addr: SockaddrStorage = getsockname(std::os::fd::AsRawFd::as_raw_fd(fd)).map_err(errno)?;
    match addr.family() {
        Some(AddressFamily::Inet | AddressFamily::Inet6) => Ok(ListenerKind::Tcp),
        Some(AddressFamily::Unix) => Ok(ListenerKind::Unix),
        other => Err(fail(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("unsupported address family {other:?}"),
        ))),
    }
}
