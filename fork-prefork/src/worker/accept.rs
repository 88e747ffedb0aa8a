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
use std::sync::Arc;
use std::sync::atomic::Ordering;

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use tokio::sync::mpsc;

use super::link::Shared;
use super::listener::{Listener, Socket, Stream};
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
}

impl Acceptor {
    /// Starts the thread on duplicates of `listeners`; it counts what it
    /// accepts in `shared`.
    pub(crate) fn start(listeners: &[Listener], shared: Arc<Shared>) -> io::Result<Acceptor> {
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
        std::thread::Builder::new()
            .name("fork-prefork-accept".into())
            .spawn(move || run(&epoll, &sockets, order, &shared, &tx, &runtime))?;
        Ok(Acceptor { connections, stop })
    }

    /// The next connection (or accept error), as a tokio stream; `None`
    /// once the thread has ended (after [`stop`](Acceptor::stop)).
    pub(crate) async fn next(&mut self) -> Option<io::Result<Stream>> {
        let accepted = self.connections.recv().await?;
        Some(accepted.and_then(|(fd, kind)| Stream::from_accepted(fd, kind)))
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
/// connection, accepts it and hands it over; until stopped, the runtime's
/// side is gone, or epoll itself fails (logged).
fn run(
    epoll: &Epoll,
    sockets: &[Socket],
    order: AcceptOrder,
    shared: &Shared,
    tx: &mpsc::Sender<Accepted>,
    runtime: &tokio::runtime::Handle,
) {
    let sockets: Vec<&Socket> = sockets.iter().collect();
    loop {
        let Ok(permit) = runtime.block_on(tx.reserve()) else {
            return;
        };
        match wait_and_accept(epoll, &sockets, order) {
            Ok(Some(accepted)) => {
                shared.accepted.fetch_add(1, Ordering::Relaxed);
                permit.send(Ok(accepted));
            }
            Ok(None) => return,
            Err(e)
                if e.raw_os_error()
                    .is_some_and(|n| n == libc::EBADF || n == libc::EINVAL) =>
            {
                tracing::error!(
                    pid = std::process::id(),
                    "epoll_wait: {e}; no more accepting"
                );
                return;
            }
            Err(e) => permit.send(Err(e)),
        }
    }
}

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
/// accepts a connection: the connection and its kind, or `None` once the
/// stop eventfd is readable. In [`AcceptOrder::RoundRobin`], the wait on the
/// listener that gave one goes to the tail of its queue of waiters.
///
/// # Errors
///
/// `epoll_wait`'s, and `accept`'s but for `EINTR`, `EAGAIN` (woken for a
/// connection another worker took) and `ECONNABORTED` (the client gave up
/// first), which it waits again after. After an error that says a limit is
/// reached (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`) it pauses 10 ms first:
/// the connection waits in the queue, and epoll (level-triggered) would say
/// so again at once.
pub(crate) fn wait_and_accept(
    epoll: &Epoll,
    sockets: &[&Socket],
    order: AcceptOrder,
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
            match socket.try_accept() {
                Ok(fd) => {
                    if order == AcceptOrder::RoundRobin {
                        requeue(epoll, i, socket);
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
fn requeue(epoll: &Epoll, i: usize, socket: &Socket) {
    if let Err(e) = epoll
        .delete(socket)
        .and_then(|()| epoll.add(socket, exclusive(i)))
    {
        tracing::warn!(
            pid = std::process::id(),
            "re-adding a listener to epoll: {e}"
        );
    }
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
