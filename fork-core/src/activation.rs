//! systemd's socket activation (`sd_listen_fds(3)`): the listening sockets
//! a service manager passed to this process, taken by [`init`](crate::init)
//! while the process is single-threaded.
//!
//! A manager that activates a service by socket starts it with the sockets
//! on descriptors 3, 4, ... and three variables: `LISTEN_PID` (the pid they
//! are for), `LISTEN_FDS` (how many) and `LISTEN_FDNAMES` (their names,
//! `:`-separated). [`init`](crate::init) takes those descriptors (marked
//! close-on-exec, so no template or command inherits them) when
//! `LISTEN_PID` is this process, and removes the three variables in any
//! case, before any template or worker exists: none of them takes the
//! sockets for its own. The semantics are the `listenfd` crate's and
//! `sd_listen_fds(unset_environment = 1)`'s.

use std::os::fd::OwnedFd;
use std::sync::Mutex;

use crate::sys::{self, Forker};

/// A socket passed by the service manager, with its name
/// (`FileDescriptorName=` in the socket unit; `None` if it gave none).
#[derive(Debug)]
pub struct ListenFd {
    /// The socket.
    pub fd: OwnedFd,
    /// Its name in `LISTEN_FDNAMES`.
    pub name: Option<String>,
}

impl From<ListenFd> for OwnedFd {
    fn from(listen: ListenFd) -> OwnedFd {
        listen.fd
    }
}

/// The sockets taken by [`init`](crate::init), until [`take_listen_fds`].
static TAKEN: Mutex<Vec<ListenFd>> = Mutex::new(Vec::new());

/// The first descriptor a service manager passes.
const FIRST: i32 = 3;

/// The most descriptors taken (systemd's own limit on a unit's sockets is
/// lower).
const MOST: i32 = 1024;

/// Takes the sockets of a socket activation meant for this process and
/// removes the variables; `forker` proves the process is single-threaded.
pub(crate) fn capture(forker: &Forker) {
    let var = |key| std::env::var(key).ok();
    let (pid, count, names) = (var("LISTEN_PID"), var("LISTEN_FDS"), var("LISTEN_FDNAMES"));
    for key in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        sys::remove_env_single_threaded(forker, key);
    }
    let ours = pid.and_then(|p| p.parse::<u32>().ok()) == Some(std::process::id());
    let count = count.and_then(|n| n.parse::<i32>().ok()).unwrap_or(0);
    if !ours || count <= 0 {
        return;
    }
    let mut names = names.as_deref().unwrap_or("").split(':');
    let mut taken = TAKEN.lock().unwrap_or_else(|p| p.into_inner());
    for fd in FIRST..FIRST + count.min(MOST) {
        let name = names.next().filter(|n| !n.is_empty()).map(str::to_owned);
        match sys::take_inherited_fd(forker, fd) {
            Ok(fd) => taken.push(ListenFd { fd, name }),
            Err(e) => {
                tracing::warn!(fd, "socket activation passed no usable descriptor: {e}");
            }
        }
    }
}

/// Takes the sockets that systemd's socket activation passed to this
/// process (taken by [`init`](crate::init); empty if there were none, or
/// after the first call). Hand them to what listens on them, for example
/// fork-prefork's `Builder::listener`.
///
/// ```no_run
/// # fn main() -> std::io::Result<()> {
/// fork_core::init();
/// let sockets = fork_core::take_listen_fds();
/// let listener = match sockets.into_iter().next() {
///     Some(passed) => std::net::TcpListener::from(passed.fd),
///     None => std::net::TcpListener::bind("127.0.0.1:8080")?,
/// };
/// # drop(listener);
/// # Ok(())
/// # }
/// ```
pub fn take_listen_fds() -> Vec<ListenFd> {
    std::mem::take(&mut *TAKEN.lock().unwrap_or_else(|p| p.into_inner()))
}
