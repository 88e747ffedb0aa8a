//! The accept strategy of [`Context::serve`](crate::Context::serve): one
//! thread per worker waits for connections as an *exclusive* waiter, so the
//! kernel wakes one idle worker per connection, not all of them.
//!
//! Tokio registers a listener in the runtime's epoll like any socket; every
//! worker's epoll is then woken for each connection queued on the shared
//! socket, and all but one find nothing to accept (the thundering herd). Here
//! each worker has an epoll of its own in which the listeners are added with
//! `EPOLLEXCLUSIVE`: the kernel wakes the first of those waiting in
//! `epoll_wait`. In [`AcceptOrder::RoundRobin`] the waiter that was woken
//! is added again at the tail after each accept, so idle workers take
//! connections in turn; in [`AcceptOrder::FirstIdle`] it keeps its place.
//! A worker whose
//! runtime has not taken the last connection yet does not wait at all, so a
//! loaded worker leaves new connections to the others.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use tokio::sync::mpsc;

use super::link::Shared;
use super::listener::{Listener, Mode, Socket, Stream};
use crate::config::AcceptOrder;
use crate::message::ListenerKind;

/// The token of the stop eventfd in the epoll (listeners are 0, 1, ...).
const STOP: u64 = u64::MAX;

/// What the accepting thread hands the runtime.
type Accepted = io::Result<(OwnedFd, ListenerKind)>;

/// The accepting thread of one worker, and the channel its connections
/// come through.
pub(crate) struct Acceptor {
    connections: mpsc::Receiver<Accepted>,
    stop: Arc<EventFd>,
    /// Why the thread ended, if it ended on an error.
    ended: Arc<Mutex<Option<io::Error>>>,
}

impl Acceptor {
    /// Starts the thread on duplicates of `listeners`; it counts what it
    /// accepts in `shared`.
    pub(crate) fn start(listeners: &[Listener], shared: Arc<Shared>) -> io::Result<Acceptor> {
        Acceptor::start_with(listeners, shared, requeue)
    }

    /// [`start`](Acceptor::start), re-adding listeners with `requeue`.
    fn start_with(
        listeners: &[Listener],
        shared: Arc<Shared>,
        requeue: Requeue,
    ) -> io::Result<Acceptor> {
        let sockets = listeners
            .iter()
            .map(|l| l.socket().try_clone())
            .collect::<io::Result<Vec<_>>>()?;
        let stop = Arc::new(EventFd::from_flags(EfdFlags::EFD_CLOEXEC)?);
        let epoll = exclusive_epoll(&sockets.iter().collect::<Vec<_>>(), &stop)?;
        // One connection at a time waits for the runtime: while it does,
        // the thread does not wait in epoll, and the kernel wakes another
        // worker for the next one.
        let (tx, connections) = mpsc::channel(1);
        let runtime = tokio::runtime::Handle::current();
        let order = listeners
            .first()
            .map_or(AcceptOrder::RoundRobin, Listener::order);
        let ended = Arc::new(Mutex::new(None));
        let why = ended.clone();
        std::thread::Builder::new()
            .name("fork-prefork-accept".into())
            .spawn(move || {
                if let Err(e) = run(&epoll, &sockets, order, &shared, &tx, &runtime, requeue) {
                    // Before `tx` is dropped: `next` says `None` after.
                    *why.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                }
            })?;
        Ok(Acceptor {
            connections,
            stop,
            ended,
        })
    }

    /// The next connection (or accept error), as a tokio stream; `None`
    /// once the thread has ended (after [`stop`](Acceptor::stop)).
    pub(crate) async fn next(&mut self) -> Option<io::Result<Stream>> {
        let accepted = self.connections.recv().await?;
        Some(accepted.and_then(|(fd, kind)| Stream::from_accepted(fd, kind)))
    }

    /// Why the thread ended (after [`next`](Acceptor::next) said `None`
    /// without [`stop`](Acceptor::stop)): the error it ended on.
    pub(crate) fn ended(&self) -> io::Error {
        self.ended
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_else(|| io::Error::other("the accepting thread ended"))
    }

    /// Tells the thread to stop waiting. Connections it accepted before
    /// still come out of [`next`](Acceptor::next), then `None`.
    pub(crate) fn stop(&self) {
        // Fails only if the counter would overflow: it is set already.
        let _ = self.stop.write(1);
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The accepting thread: waits for room in the channel, then for a
/// connection, accepts it and hands it over; until stopped or the
/// runtime's side is gone (`Ok`), or until it cannot wait any more
/// (logged, and returned: `serve` then fails, so the worker exits and is
/// replaced).
fn run(
    epoll: &Epoll,
    sockets: &[Socket],
    order: AcceptOrder,
    shared: &Shared,
    tx: &mpsc::Sender<Accepted>,
    runtime: &tokio::runtime::Handle,
    requeue: Requeue,
) -> io::Result<()> {
    let sockets: Vec<&Socket> = sockets.iter().collect();
    loop {
        let Ok(permit) = runtime.block_on(tx.reserve()) else {
            return Ok(());
        };
        match wait_and_accept_with(epoll, &sockets, order, Mode::NonBlocking, requeue) {
            Ok(Some(accepted)) => {
                shared.accepted.fetch_add(1, Ordering::Relaxed);
                permit.send(Ok(accepted));
            }
            Ok(None) => return Ok(()),
            Err(e) if is_fatal(&e) => {
                tracing::error!(pid = std::process::id(), "{e}; no more accepting");
                return Err(e);
            }
            Err(e) => permit.send(Err(e)),
        }
    }
}

/// Whether an error of [`wait_and_accept`] means this epoll cannot give
/// connections any more: `EBADF` or `EINVAL` (from `epoll_wait` or
/// `accept`), or a listener that could not be re-added to the epoll.
fn is_fatal(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<RequeueFailed>())
        || e.raw_os_error()
            .is_some_and(|n| n == libc::EBADF || n == libc::EINVAL)
}

/// A listener taken out of the epoll could not be put back (`ENOMEM`,
/// `ENOSPC` at `max_user_watches`): this epoll waits for it no more.
#[derive(Debug)]
struct RequeueFailed(Errno);

impl std::fmt::Display for RequeueFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "re-adding a listener to epoll: {}", self.0)
    }
}

impl std::error::Error for RequeueFailed {}

/// An epoll in which `sockets` are added with `EPOLLEXCLUSIVE` (token: their
/// index) and `stop` without (token [`STOP`]).
pub(crate) fn exclusive_epoll(sockets: &[&Socket], stop: &EventFd) -> io::Result<Epoll> {
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    for (i, socket) in sockets.iter().enumerate() {
        epoll.add(socket, exclusive(i))?;
    }
    epoll.add(stop, EpollEvent::new(EpollFlags::EPOLLIN, STOP))?;
    Ok(epoll)
}

/// Waits in `epoll` (made by [`exclusive_epoll`] over `sockets`) and
/// accepts a connection, blocking or not as `mode` says: the connection
/// and its kind, or `None` once the
/// stop eventfd is readable. In [`AcceptOrder::RoundRobin`], the wait on the
/// listener that gave one goes to the tail of its queue of waiters.
///
/// # Errors
///
/// `epoll_wait`'s, and `accept`'s but for `EINTR`, `EAGAIN` (woken for a
/// connection another worker took) and `ECONNABORTED` (the client gave up
/// first), which it waits again after. A listener that could not be
/// re-added to the epoll after an accept (round robin): an error whose
/// inner error is a `RequeueFailed`; the connection is closed (a client
/// sees it reset), and this epoll no longer waits on that listener. After an error that says a limit is
/// reached (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`) it pauses 10 ms first:
/// the connection waits in the queue, and epoll (level-triggered) would say
/// so again at once.
pub(crate) fn wait_and_accept(
    epoll: &Epoll,
    sockets: &[&Socket],
    order: AcceptOrder,
    mode: Mode,
) -> io::Result<Option<(OwnedFd, ListenerKind)>> {
    wait_and_accept_with(epoll, sockets, order, mode, requeue)
}

/// How a listener is re-added to the epoll: [`requeue`], or a failing one
/// in the tests.
type Requeue = fn(&Epoll, usize, &Socket) -> nix::Result<()>;

fn wait_and_accept_with(
    epoll: &Epoll,
    sockets: &[&Socket],
    order: AcceptOrder,
    mode: Mode,
    requeue: Requeue,
) -> io::Result<Option<(OwnedFd, ListenerKind)>> {
    let mut events = [EpollEvent::empty(); 8];
    loop {
        let n = match epoll.wait(&mut events, EpollTimeout::NONE) {
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        let ready = &events[..n];
        if ready.iter().any(|e| e.data() == STOP) {
            return Ok(None);
        }
        for event in ready {
            let i = event.data() as usize;
            let Some(socket) = sockets.get(i) else {
                continue;
            };
            match socket.try_accept(mode) {
                Ok(fd) => {
                    if order == AcceptOrder::RoundRobin {
                        requeue(epoll, i, socket)
                            .map_err(|e| io::Error::other(RequeueFailed(e)))?;
                    }
                    return Ok(Some((fd, socket.kind())));
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => {
                    if is_limit(&e) {
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                    return Err(e);
                }
            }
        }
    }
}

/// Puts this wait on listener `i` at the tail of the listener's queue of
/// exclusive waiters, so the next connection wakes another idle worker
/// first.
fn requeue(epoll: &Epoll, i: usize, socket: &Socket) -> nix::Result<()> {
    epoll
        .delete(socket)
        .and_then(|()| epoll.add(socket, exclusive(i)))
}

/// The epoll event of listener `i`: readable, exclusive wake-up.
fn exclusive(i: usize) -> EpollEvent {
    EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLEXCLUSIVE, i as u64)
}

/// Whether an accept error says a limit is reached (`EMFILE`, `ENFILE`,
/// `ENOBUFS`, `ENOMEM`).
pub(crate) fn is_limit(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;
    use crate::worker::listener::Drained;

    fn out_of_memory(_: &Epoll, _: usize, _: &Socket) -> nix::Result<()> {
        Err(Errno::ENOMEM)
    }

    /// A TCP listener (as a worker gets it), and a client connected to it.
    fn listener(order: AcceptOrder) -> (Listener, std::net::TcpStream) {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(tcp.local_addr().unwrap()).unwrap();
        let listener = Listener::from_fd(
            OwnedFd::from(tcp),
            ListenerKind::Tcp,
            Drained::new().unwrap(),
            order,
        )
        .unwrap();
        (listener, client)
    }

    /// A listener that cannot be put back in the epoll after an accept
    /// ends the accepting thread with that error (what `serve` returns, so
    /// the worker exits and is replaced), instead of leaving a thread that
    /// waits for nothing.
    #[tokio::test]
    async fn a_listener_not_requeued_ends_the_thread_with_the_error() {
        let (listener, _client) = listener(AcceptOrder::RoundRobin);
        let shared = Arc::new(Shared::new(0, None));
        let mut acceptor =
            Acceptor::start_with(std::slice::from_ref(&listener), shared, out_of_memory).unwrap();
        let next = tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.next())
            .await
            .expect("the thread ends");
        assert!(next.is_none(), "the thread went on: {next:?}");
        let e = acceptor.ended();
        assert!(
            e.get_ref().is_some_and(|i| i.is::<RequeueFailed>()),
            "ended with {e:?}"
        );
        assert!(
            e.to_string().contains("re-adding a listener to epoll"),
            "{e}"
        );
    }

    /// Accepted descriptors are close-on-exec, and non-blocking for tokio
    /// or blocking for `accept_blocking`, as `accept4` made them (no
    /// `fcntl` afterwards).
    #[test]
    fn accepted_descriptors_have_their_flags_from_accept4() {
        use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
        let (listener, _client) = listener(AcceptOrder::FirstIdle);
        let second = std::net::TcpStream::connect(
            std::net::TcpListener::from(listener.as_fd().try_clone_to_owned().unwrap())
                .local_addr()
                .unwrap(),
        )
        .unwrap();
        for (mode, nonblocking) in [(Mode::NonBlocking, true), (Mode::Blocking, false)] {
            let fd = listener.socket().try_accept(mode).unwrap();
            let status = OFlag::from_bits_retain(fcntl(&fd, FcntlArg::F_GETFL).unwrap());
            assert_eq!(status.contains(OFlag::O_NONBLOCK), nonblocking, "{mode:?}");
            let flags = FdFlag::from_bits_retain(fcntl(&fd, FcntlArg::F_GETFD).unwrap());
            assert!(flags.contains(FdFlag::FD_CLOEXEC), "{mode:?}");
        }
        drop(second);
    }

    /// In `FirstIdle` order nothing is re-added: the same seam changes
    /// nothing, the connection comes out.
    #[tokio::test]
    async fn first_idle_does_not_requeue() {
        let (listener, _client) = listener(AcceptOrder::FirstIdle);
        let shared = Arc::new(Shared::new(0, None));
        let mut acceptor =
            Acceptor::start_with(std::slice::from_ref(&listener), shared, out_of_memory).unwrap();
        let next = acceptor.next().await;
        assert!(matches!(next, Some(Ok(_))), "got {next:?}");
    }
}
