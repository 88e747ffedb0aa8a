//! Helpers for tests of programs that use fork-core (feature `test-support`).
//!
//! They observe processes the way a test should: by waiting for events
//! (a pidfd becoming readable when a process exits), never by sleeping.

use std::io;
use std::os::fd::AsFd;
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

/// Waits until process `pid` (any process, not only a child) has exited, or
/// `timeout` passed. Returns `true` if it exited (or did not exist).
///
/// A zombie counts as exited. Blocks the calling thread.
///
/// # Errors
///
/// If the pidfd cannot be opened or polled for another reason than the
/// process being gone.
pub fn wait_exit(pid: u32, timeout: Duration) -> io::Result<bool> {
    wait_pidfd(pid, timeout, PollFlags::POLLIN)
}

/// Waits until process `pid` has been reaped by its parent (its pidfd hangs
/// up: Linux 6.9 or newer), or `timeout` passed. Returns `true` if it was
/// reaped (or did not exist). Unlike [`wait_exit`], a zombie has not been
/// reaped: this tells whether a process's parent waited for it. Blocks the
/// calling thread.
///
/// # Errors
///
/// As [`wait_exit`].
pub fn wait_reaped(pid: u32, timeout: Duration) -> io::Result<bool> {
    // No event asked for: poll returns on the hang-up alone, which it
    // always reports.
    wait_pidfd(pid, timeout, PollFlags::empty())
}

/// Polls a pidfd of `pid` for `events` (and the hang-up poll always
/// reports), up to `timeout`: whether one came, or the process was gone.
fn wait_pidfd(pid: u32, timeout: Duration, events: PollFlags) -> io::Result<bool> {
    let fd = match crate::sys::pidfd_open(pid as i32) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(true),
        Err(e) => return Err(e),
    };
    let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(fd.as_fd(), events)];
    loop {
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(n) => return Ok(n > 0),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Makes the calling process the reaper of its orphaned descendants
/// (`PR_SET_CHILD_SUBREAPER`), so a test can reap them after killing their
/// parent.
///
/// # Errors
///
/// If `prctl` fails.
pub fn set_child_subreaper() -> io::Result<()> {
    crate::sys::set_child_subreaper()
}

/// Reaps the child `pid` (blocking) and returns its raw wait status.
///
/// # Errors
///
/// If `pid` is not a child of the calling process.
pub fn reap(pid: u32) -> io::Result<i32> {
    crate::sys::wait_child(pid as i32)
}

/// Limits the number of processes of the calling process's user
/// (`RLIMIT_NPROC`, soft and hard), to make `fork` fail on purpose.
///
/// # Errors
///
/// If `setrlimit` fails.
pub fn set_nproc_limit(n: u64) -> io::Result<()> {
    crate::sys::set_nproc_limit(n)
}

/// Registers `handler` to run when the process calls `exit()` (C's
/// `atexit`, which `std::process::exit` runs too, and `_exit` does not):
/// for tests that check which exit path a process took.
///
/// # Errors
///
/// If the C library has no room for another handler.
pub fn on_exit(handler: extern "C" fn()) -> io::Result<()> {
    crate::sys::atexit(handler)
}

/// The environment variable that marks a process started as a template, for
/// tests that start one by hand to feed it bad input.
pub const TEMPLATE_MARKER: &str = crate::template::serve::MARKER;

/// The greeting a remote template of this very build sends first, framed
/// as on the stream (see [`remote`](crate::remote)), with the pid `pid`
/// and, if given, `version` instead of the real protocol version: for tests
/// that pose as a remote template (a command that prints these bytes and
/// then whatever the test wants the parent to read).
pub fn remote_greeting(pid: u32, version: Option<u16>) -> Vec<u8> {
    let mut hello = crate::remote::hello::Hello::ours(pid, false, false);
    if let Some(v) = version {
        hello.version = v;
    }
    crate::remote::wire::to_vec(&crate::remote::wire::Frame::Hello(&hello.encode()))
}
