//! The local control socket of a relay (`SOCK_SEQPACKET`, to a template on
//! the remote side, to the template's [`Conn`](crate::template::conn) here),
//! read and written from tokio, messages reassembled and split as the
//! control protocol frames them.

use std::io::{self, IoSlice};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::proto::{self, Assembler, HEADER_LEN, MAX_FRAME_PAYLOAD};
use crate::sys::{self, scm};

/// One end of a control socket pair, non-blocking, registered with tokio.
#[derive(Debug)]
pub(crate) struct Ctrl {
    fd: AsyncFd<OwnedFd>,
}

/// A whole message received, with its descriptors; `None` at EOF.
pub(crate) type Message = Option<(Vec<u8>, Vec<OwnedFd>)>;

impl Ctrl {
    pub(crate) fn new(fd: OwnedFd) -> io::Result<Ctrl> {
        sys::set_nonblocking(fd.as_fd(), true)?;
        Ok(Ctrl {
            fd: sys::async_fd(fd)?,
        })
    }

    fn sock(&self) -> BorrowedFd<'_> {
        self.fd.get_ref().as_fd()
    }

    /// Receives the next whole message.
    ///
    /// # Errors
    ///
    /// I/O errors and malformed frames ([`io::ErrorKind::InvalidData`]).
    pub(crate) async fn recv(&self, asm: &mut Assembler<OwnedFd>) -> io::Result<Message> {
        let mut buf = vec![0u8; HEADER_LEN + MAX_FRAME_PAYLOAD];
        loop {
            let got = self
                .fd
                .async_io(Interest::READABLE, |_| {
                    scm::recv(self.sock(), &mut buf, true)
                })
                .await;
            match got {
                Ok(scm::Received::Eof) => return Ok(None),
                Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => return Ok(None),
                Err(e) => return Err(e),
                Ok(scm::Received::Frame { len, fds }) => match asm.push(&buf[..len], fds) {
                    Ok(Some(message)) => return Ok(Some(message)),
                    Ok(None) => {}
                    Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.0)),
                },
            }
        }
    }

    /// Whether the peer will send nothing more (it shut down its sending
    /// side or closed its end), even if what it sent before is not all
    /// read yet. Does not wait.
    pub(crate) fn peer_done(&self) -> bool {
        sys::peer_shut_down(self.sock())
    }

    /// Shuts down the sending side: the peer reads what was sent, then EOF.
    pub(crate) fn shutdown_write(&self) {
        sys::shutdown(self.sock(), nix::sys::socket::Shutdown::Write);
    }

    /// Sends one message with its descriptors, split into frames.
    ///
    /// # Errors
    ///
    /// I/O errors (the peer is gone).
    pub(crate) async fn send(&self, msg: &[u8], fds: Vec<OwnedFd>) -> io::Result<()> {
        let mut fds = fds.into_iter();
        for (header, bytes, fd_range) in proto::split(msg.len(), fds.len()) {
            let frame_fds: Vec<OwnedFd> = fds.by_ref().take(fd_range.len()).collect();
            let borrowed: Vec<BorrowedFd<'_>> = frame_fds.iter().map(AsFd::as_fd).collect();
            let header = proto::encode_header(header);
            let parts = [IoSlice::new(&header), IoSlice::new(&msg[bytes])];
            self.fd
                .async_io(Interest::WRITABLE, |_| {
                    scm::send(self.sock(), &parts, &borrowed, true)
                })
                .await?;
        }
        Ok(())
    }
}
