//! A worker's listening sockets and the connections accepted on them.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context as TaskContext, Poll};

use nix::sys::epoll::Epoll;
use nix::sys::eventfd::{EfdFlags, EventFd};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

use crate::config::AcceptOrder;
use crate::message::ListenerKind;

/// A listening socket in a worker: a duplicate of one the server was built
/// with (the same socket: connections queued on it go to whichever worker
/// accepts first).
///
/// [`Context::serve`](crate::Context::serve) accepts on it without tokio
/// (see the book's "accept strategy": one idle worker is woken per
/// connection). [`accept`](Listener::accept) is tokio's: the listener is
/// registered with the worker's runtime the first time it is called, and
/// from then on every worker waiting there is woken for each connection
/// (one gets it). It is there for a loop of your own; for many idle workers
/// prefer `serve`. [`accept_blocking`](Listener::accept_blocking), for a
/// blocking loop, waits as `serve` does.
#[derive(Debug)]
pub struct Listener {
    socket: Socket,
    /// The duplicate registered with tokio, made on the first `accept`.
    tokio: OnceLock<Registered>,
    /// The exclusive wait of `accept_blocking`, made on its first call.
    blocking: OnceLock<Epoll>,
    drained: Drained,
    order: AcceptOrder,
}

/// An eventfd that becomes readable when the worker drains, shared by its
/// listeners: it ends [`Listener::accept_blocking`].
#[derive(Debug, Clone)]
pub(crate) struct Drained(Arc<EventFd>);

impl Drained {
    pub(crate) fn new() -> io::Result<Drained> {
        Ok(Drained(Arc::new(EventFd::from_flags(
            EfdFlags::EFD_CLOEXEC,
        )?)))
    }

    /// Makes it readable once `link` drains (a task of the worker's
    /// runtime).
    pub(crate) async fn on_drain(self, link: super::Link) {
        link.draining().await;
        // Fails only if the counter would overflow: it is readable.
        let _ = self.0.write(1);
    }
}

/// How [`Socket::try_accept`] makes a connection's descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Blocking: for [`Listener::accept_blocking`].
    Blocking,
    /// Non-blocking: for tokio (`Context::serve`).
    NonBlocking,
}

/// The listening socket, as std has it (non-blocking: its file description
/// is shared with every worker and the parent).
#[derive(Debug)]
pub(crate) enum Socket {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

#[derive(Debug)]
enum Registered {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    /// Wraps a received descriptor (non-blocking first), without
    /// registering it with tokio.
    pub(crate) fn from_fd(
        fd: OwnedFd,
        kind: ListenerKind,
        drained: Drained,
        order: AcceptOrder,
    ) -> io::Result<Listener> {
        let socket = match kind {
            ListenerKind::Tcp => {
                let l = std::net::TcpListener::from(fd);
                l.set_nonblocking(true)?;
                Socket::Tcp(l)
            }
            ListenerKind::Unix => {
                let l = std::os::unix::net::UnixListener::from(fd);
                l.set_nonblocking(true)?;
                Socket::Unix(l)
            }
        };
        Ok(Listener {
            socket,
            tokio: OnceLock::new(),
            blocking: OnceLock::new(),
            drained,
            order,
        })
    }

    pub(crate) fn socket(&self) -> &Socket {
        &self.socket
    }

    pub(crate) fn order(&self) -> AcceptOrder {
        self.order
    }

    /// Whether it is a TCP listener (else a unix one).
    pub fn is_tcp(&self) -> bool {
        matches!(self.socket, Socket::Tcp(_))
    }

    /// Accepts a connection, through tokio.
    ///
    /// # Errors
    ///
    /// As `accept(2)`, and registering the listener with tokio.
    ///
    /// # Panics
    ///
    /// Outside the worker's runtime.
    pub async fn accept(&self) -> io::Result<Stream> {
        std::future::poll_fn(|cx| self.poll_accept(cx)).await
    }

    /// Polls for a connection, through tokio (see [`accept`](Listener::accept)).
    ///
    /// # Errors
    ///
    /// As `accept(2)`, and registering the listener with tokio.
    ///
    /// # Panics
    ///
    /// Outside the worker's runtime.
    pub fn poll_accept(&self, cx: &mut TaskContext<'_>) -> Poll<io::Result<Stream>> {
        let registered = match self.tokio.get() {
            Some(r) => r,
            None => match self.register() {
                Ok(r) => self.tokio.get_or_init(|| r),
                Err(e) => return Poll::Ready(Err(e)),
            },
        };
        match registered {
            Registered::Tcp(l) => l.poll_accept(cx).map_ok(|(s, _)| Stream::Tcp(s)),
            Registered::Unix(l) => l.poll_accept(cx).map_ok(|(s, _)| Stream::Unix(s)),
        }
    }

    /// Waits for a connection and accepts it, blocking the calling thread,
    /// for a blocking loop of your own (Perl's `start(\&code)`): run it on
    /// a thread of its own (`tokio::task::spawn_blocking`), never on the
    /// worker's runtime, whose tasks report the worker's state. Returns
    /// `None` once the worker drains: finish the connection in progress and
    /// return.
    ///
    /// It waits as [`Context::serve`](crate::Context::serve) does: the
    /// kernel wakes one waiting worker per connection, in the server's
    /// [`AcceptOrder`](crate::AcceptOrder). The connection is a blocking
    /// std stream.
    ///
    /// ```no_run
    /// use std::io::Write;
    ///
    /// async fn blocking(mut ctx: fork_prefork::Context) -> std::io::Result<()> {
    ///     let listener = ctx.take_listeners().remove(0);
    ///     let link = ctx.link().clone();
    ///     link.ready();
    ///     tokio::task::spawn_blocking(move || {
    ///         while let Some(mut conn) = listener.accept_blocking()? {
    ///             let _busy = link.busy(); // idle again when dropped
    ///             conn.write_all(b"hello\n")?;
    ///         }
    ///         Ok(())
    ///     })
    ///     .await?
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// As `accept(2)` and `epoll_wait(2)` (`EINTR` and connections aborted
    /// before they were accepted are retried). In round-robin order, an
    /// error too when the wait could not be queued again after an accept
    /// (`ENOMEM`): it would wait for nothing from then on, so return and
    /// let the worker be replaced.
    pub fn accept_blocking(&self) -> io::Result<Option<BlockingStream>> {
        let epoll = match self.blocking.get() {
            Some(e) => e,
            None => {
                let e = super::accept::exclusive_epoll(&[&self.socket], &self.drained.0)?;
                self.blocking.get_or_init(|| e)
            }
        };
        let Some((fd, kind)) =
            super::accept::wait_and_accept(epoll, &[&self.socket], self.order, Mode::Blocking)?
        else {
            return Ok(None);
        };
        Ok(Some(match kind {
            ListenerKind::Tcp => BlockingStream::Tcp(std::net::TcpStream::from(fd)),
            ListenerKind::Unix => BlockingStream::Unix(std::os::unix::net::UnixStream::from(fd)),
        }))
    }

    fn register(&self) -> io::Result<Registered> {
        Ok(match &self.socket {
            Socket::Tcp(l) => Registered::Tcp(TcpListener::from_std(l.try_clone()?)?),
            Socket::Unix(l) => Registered::Unix(UnixListener::from_std(l.try_clone()?)?),
        })
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

impl AsFd for Socket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Socket::Tcp(l) => l.as_fd(),
            Socket::Unix(l) => l.as_fd(),
        }
    }
}

impl Socket {
    /// Accepts a connection that waits, or fails with `WouldBlock`; the
    /// connection is close-on-exec, and blocking or not as `mode` says
    /// (set by `accept4(2)` itself: no `fcntl` per connection).
    pub(crate) fn try_accept(&self, mode: Mode) -> io::Result<OwnedFd> {
        let flags = match mode {
            Mode::Blocking => libc::SOCK_CLOEXEC,
            Mode::NonBlocking => libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
        };
        let (socket, _) = socket2::SockRef::from(self).accept4(flags)?;
        Ok(OwnedFd::from(socket))
    }

    pub(crate) fn kind(&self) -> ListenerKind {
        match self {
            Socket::Tcp(_) => ListenerKind::Tcp,
            Socket::Unix(_) => ListenerKind::Unix,
        }
    }

    pub(crate) fn try_clone(&self) -> io::Result<Socket> {
        Ok(match self {
            Socket::Tcp(l) => Socket::Tcp(l.try_clone()?),
            Socket::Unix(l) => Socket::Unix(l.try_clone()?),
        })
    }
}

impl Stream {
    /// Wraps an accepted connection for tokio; `fd` must be non-blocking
    /// (accepted in [`Mode::NonBlocking`]).
    pub(crate) fn from_accepted(fd: OwnedFd, kind: ListenerKind) -> io::Result<Stream> {
        Ok(match kind {
            ListenerKind::Tcp => Stream::Tcp(TcpStream::from_std(fd.into())?),
            ListenerKind::Unix => Stream::Unix(UnixStream::from_std(fd.into())?),
        })
    }
}

/// A connection accepted by [`Listener::accept_blocking`]: a blocking std
/// stream, TCP or unix, read and written with `std::io::{Read, Write}`.
#[derive(Debug)]
#[non_exhaustive]
pub enum BlockingStream {
    /// A TCP connection.
    Tcp(std::net::TcpStream),
    /// A unix stream connection.
    Unix(std::os::unix::net::UnixStream),
}

impl io::Read for BlockingStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            BlockingStream::Tcp(s) => s.read(buf),
            BlockingStream::Unix(s) => s.read(buf),
        }
    }
}

impl io::Write for BlockingStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            BlockingStream::Tcp(s) => s.write(buf),
            BlockingStream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            BlockingStream::Tcp(s) => s.flush(),
            BlockingStream::Unix(s) => s.flush(),
        }
    }
}

/// A connection accepted on a [`Listener`]: TCP or unix, read and written
/// through tokio's `AsyncRead`/`AsyncWrite` (wrap it in
/// `hyper_util::rt::TokioIo` for hyper).
#[derive(Debug)]
#[non_exhaustive]
pub enum Stream {
    /// A TCP connection.
    Tcp(TcpStream),
    /// A unix stream connection.
    Unix(UnixStream),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Unix(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
