//! The operating-system layer: every `unsafe` block of the workspace lives here.
//!
//! The wrappers have safe signatures wherever the invariant can be checked or
//! owned here; each `unsafe` block states why it holds.

pub(crate) mod memfd;
pub(crate) mod scm;

use std::ffi::{CString, OsStr};
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

/// Converts a `-1` return into the current `errno`.
fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Number of threads of the calling process, from `/proc/self/task`.
pub(crate) fn thread_count() -> io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/task")?.count())
}

/// Proof that the process was single-threaded when last checked, which is
/// what makes `fork()` sound. Not `Send`: it stays on the thread that checked.
#[derive(Debug)]
pub(crate) struct Forker {
    _not_send: PhantomData<*const ()>,
}

/// Which side of a `fork()` we are on.
#[derive(Debug)]
pub(crate) enum Forked {
    Parent { child: i32 },
    Child,
}

impl Forker {
    /// Checks that the process is single-threaded.
    ///
    /// # Errors
    ///
    /// Fails when `/proc/self/task` cannot be read or lists more than one thread.
    pub(crate) fn new() -> io::Result<Forker> {
        match thread_count()? {
            1 => Ok(Forker {
                _not_send: PhantomData,
            }),
            n => Err(io::Error::other(format!(
                "{n} threads are running; only a single-threaded process may fork"
            ))),
        }
    }

    /// `fork()`s the process.
    pub(crate) fn fork(&self) -> io::Result<Forked> {
        // SAFETY: a `Forker` exists only while the process is single-threaded
        // (checked in `new`, re-checked by the template after running user
        // code), so the child cannot inherit locks held by other threads.
        let pid = cvt(unsafe { libc::fork() })?;
        Ok(if pid == 0 {
            Forked::Child
        } else {
            Forked::Parent { child: pid }
        })
    }
}

/// Asks for `SIGKILL` when the parent thread dies, then checks that the parent
/// has not died already (the race `PR_SET_PDEATHSIG` leaves open).
///
/// Returns `false` if the parent is already gone.
pub(crate) fn die_with_parent(expected_parent: u32) -> io::Result<bool> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes an integer signal number; no
    // memory is passed.
    cvt(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) })?;
    Ok(std::os::unix::process::parent_id() == expected_parent)
}

/// The calling thread's name (`/proc/self/task/<tid>/comm`; the process's
/// `comm` for its first thread), as `ps` and `top` show it.
pub(crate) fn thread_name() -> io::Result<String> {
    let mut name = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes, NUL included, into the
    // buffer, which has 16.
    cvt(unsafe { libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr() as libc::c_ulong) })?;
    let len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Ok(String::from_utf8_lossy(&name[..len]).into_owned())
}

/// Sets the calling thread's name (see [`thread_name`]): its first 15 bytes,
/// cut at a character boundary (the kernel keeps 15).
pub(crate) fn set_thread_name(name: &str) -> io::Result<()> {
    let mut end = name.len().min(15);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    let mut buf = [0u8; 16];
    buf[..end].copy_from_slice(&name.as_bytes()[..end]);
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16
    // bytes; `buf` has 16 and its last byte is always NUL.
    cvt(unsafe { libc::prctl(libc::PR_SET_NAME, buf.as_ptr() as libc::c_ulong) }).map(drop)
}

/// Stops the `SIGKILL` asked for by [`die_with_parent`]: the process lives
/// on when its parent dies.
pub(crate) fn outlive_parent() -> io::Result<()> {
    // SAFETY: prctl(PR_SET_PDEATHSIG, 0) passes only integers.
    cvt(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, 0 as libc::c_ulong) }).map(drop)
}

/// Ends the process at once, without running `atexit` handlers or flushing
/// stdio buffers (for a forked child that must not touch the parent's state).
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` is always safe to call; it never returns.
    unsafe { libc::_exit(code) }
}

/// Sets the disposition of `signal` back to the default.
pub(crate) fn reset_signal(signal: libc::c_int) -> io::Result<()> {
    // SAFETY: installing SIG_DFL runs no code of ours in signal context.
    let old = unsafe { libc::signal(signal, libc::SIG_DFL) };
    if old == libc::SIG_ERR {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Removes an environment variable.
///
/// Only called while the process is single-threaded (checked by the caller
/// with a [`Forker`]), which is what `std::env::remove_var` requires.
pub(crate) fn remove_env_single_threaded(_proof: &Forker, key: &str) {
    // SAFETY: the `Forker` proves no other thread runs that could read the
    // environment concurrently.
    unsafe { std::env::remove_var(key) }
}

/// Takes descriptor `fd`, inherited from the process's own parent (a
/// service manager's socket activation), as owned and close-on-exec.
///
/// Only called by `init`, while the process is single-threaded (the
/// `Forker` proves it), for descriptors the environment says were passed to
/// this process: nothing else in it owns them yet.
pub(crate) fn take_inherited_fd(_proof: &Forker, fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_GETFD only reads the descriptor's flags; an fd that is not
    // open fails with EBADF, checked here.
    let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    // SAFETY: as above, on a descriptor just seen open.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) })?;
    // SAFETY: the descriptor is open (F_GETFD succeeded) and, as the
    // caller's proof and the activation protocol say, owned by nobody else
    // in this single-threaded process.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Makes a process's standard input `/dev/null` and returns the descriptor
/// that was there before, moved to a new close-on-exec number.
pub(crate) fn take_stdin() -> io::Result<OwnedFd> {
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) only creates a new descriptor; fd 0 is
    // checked to exist by the call itself.
    let fd = cvt(unsafe { libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 3) })?;
    // SAFETY: `fd` was just returned by fcntl and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    null_stdin()?;
    Ok(fd)
}

/// Takes standard input and output for a stream of the process's own
/// (moved to new close-on-exec numbers) and leaves `/dev/null` on standard
/// input and standard error on standard output, so that nothing printed
/// reaches the stream: `(input, output)`.
pub(crate) fn take_stdio() -> io::Result<(OwnedFd, OwnedFd)> {
    let input = take_stdin()?;
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) only creates a new descriptor; fd 1 is
    // checked to exist by the call itself.
    let output = cvt(unsafe { libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 3) })?;
    // SAFETY: `output` was just returned by fcntl and is owned by nobody else.
    let output = unsafe { OwnedFd::from_raw_fd(output) };
    nix::unistd::dup2_stdout(std::io::stderr()).map_err(io::Error::from)?;
    Ok((input, output))
}

/// Replaces the process's standard input with `/dev/null`.
pub(crate) fn null_stdin() -> io::Result<()> {
    let null = std::fs::File::open("/dev/null")?;
    nix::unistd::dup2_stdin(&null).map_err(io::Error::from)
}

/// Closes the descriptors from 3 up that a template inherited through an
/// `exec` (or from the program's own parent), keeping `keep` and every
/// close-on-exec descriptor.
///
/// A descriptor without close-on-exec was inherited across an `exec`: Rust's
/// standard library, tokio and nix create every descriptor close-on-exec, so
/// nothing in this program opened it, and nothing here owns it. A
/// close-on-exec one was opened by this program's own code before `init` (a
/// static, a logger): its owner may still use it, so it stays open (and is
/// inherited by the workers, as descriptors opened by init functions are).
pub(crate) fn close_inherited(keep: BorrowedFd<'_>) -> io::Result<()> {
    let keep = keep.as_raw_fd();
    let listed = {
        let dir = std::fs::read_dir("/proc/self/fd")?;
        let mut fds = Vec::new();
        for entry in dir {
            if let Ok(fd) = entry?.file_name().to_string_lossy().parse::<RawFd>() {
                fds.push(fd);
            }
        }
        fds
        // The directory's own descriptor (close-on-exec) is closed here.
    };
    for fd in listed {
        if fd <= 2 || fd == keep {
            continue;
        }
        // SAFETY: F_GETFD only reads the descriptor's flags; a number that
        // is not open (the directory's, closed above) gives EBADF.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if flags == -1 || flags & libc::FD_CLOEXEC != 0 {
            continue;
        }
        // SAFETY: an open descriptor without close-on-exec was inherited
        // through exec; no object of this program owns it (see above), so
        // closing it cannot pull a descriptor from under an owner.
        unsafe { libc::close(fd) };
    }
    Ok(())
}

/// Puts the calling process in a new process group of its own
/// (`setpgid(0, 0)`), so that signals sent to its parent's group (Ctrl-C
/// in a terminal, `kill -TERM -<pgid>`) do not reach it.
pub(crate) fn new_process_group() -> io::Result<()> {
    nix::unistd::setpgid(nix::unistd::Pid::from_raw(0), nix::unistd::Pid::from_raw(0))?;
    Ok(())
}

/// Flushes Rust's standard output and every C stdio output stream, so that
/// text buffered in a template is written once, not copied into every
/// process it forks.
pub(crate) fn flush_stdio() {
    let _ = std::io::Write::flush(&mut std::io::stdout());
    // SAFETY: fflush(NULL) flushes every open C output stream; it takes no
    // pointer of ours.
    unsafe { libc::fflush(std::ptr::null_mut()) };
}

/// The pid of a child that has exited and waits to be reaped, without
/// reaping it (`waitid(P_ALL, WEXITED | WNOHANG | WNOWAIT)`): `None` when no
/// child has exited.
pub(crate) fn peek_exited() -> io::Result<Option<i32>> {
    // SAFETY: a zeroed siginfo_t is a valid value to be written into.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `info` is a valid, writable siginfo_t; P_ALL ignores the id.
        let ret = unsafe {
            libc::waitid(
                libc::P_ALL,
                0,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        match cvt(ret) {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.raw_os_error() == Some(libc::ECHILD) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    // SAFETY: waitid filled `info` for a child (si_pid is 0 when none
    // exited, with WNOHANG).
    let pid = unsafe { info.si_pid() };
    Ok((pid != 0).then_some(pid))
}

/// Reaps the child `pid` if it has exited, without blocking: its raw wait
/// status, or `None` while it runs.
pub(crate) fn try_reap(pid: i32) -> io::Result<Option<i32>> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid, writable c_int.
        match cvt(unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) }) {
            Ok(0) => return Ok(None),
            Ok(_) => return Ok(Some(status)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Blocks until the child `pid` exits and returns its raw wait status.
pub(crate) fn wait_child(pid: i32) -> io::Result<i32> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid, writable c_int.
        match cvt(unsafe { libc::waitpid(pid, &mut status, 0) }) {
            Ok(_) => return Ok(status),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Sends `signal` to `pid`.
pub(crate) fn kill(pid: i32, signal: i32) -> io::Result<()> {
    // SAFETY: kill(2) takes plain integers.
    cvt(unsafe { libc::kill(pid, signal) }).map(drop)
}

/// Sets or clears `O_NONBLOCK`.
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    let flags = if on {
        flags | OFlag::O_NONBLOCK
    } else {
        flags & !OFlag::O_NONBLOCK
    };
    fcntl(fd, FcntlArg::F_SETFL(flags))?;
    Ok(())
}

/// Duplicates `fd` to a new close-on-exec descriptor.
pub(crate) fn dup_cloexec(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    fd.try_clone_to_owned()
}

/// A `SOCK_SEQPACKET` pair, both ends close-on-exec and blocking.
pub(crate) fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    Ok(socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?)
}

#[cfg(feature = "test-support")]
/// Raises `RLIMIT_NPROC` soft and hard limits to `n` processes (used by tests
/// and by users who want to cap a template).
pub(crate) fn set_nproc_limit(n: u64) -> io::Result<()> {
    use nix::sys::resource::{Resource, setrlimit};
    setrlimit(Resource::RLIMIT_NPROC, n, n)?;
    Ok(())
}

/// What an exec'd program gets, prepared before `exec` is called.
#[derive(Debug)]
pub(crate) struct ExecImage {
    program: CString,
    argv: Vec<CString>,
    env: Option<Vec<CString>>,
    cwd: Option<CString>,
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "nul byte"))
}

impl ExecImage {
    /// Builds the C strings for `execvpe`.
    pub(crate) fn new(
        program: &[u8],
        args: &[Vec<u8>],
        env: Option<Vec<(Vec<u8>, Vec<u8>)>>,
        cwd: Option<&[u8]>,
    ) -> io::Result<ExecImage> {
        let mut argv = vec![cstring(program)?];
        for a in args {
            argv.push(cstring(a)?);
        }
        let env = match env {
            None => None,
            Some(vars) => Some(
                vars.into_iter()
                    .map(|(mut k, v)| {
                        k.push(b'=');
                        k.extend_from_slice(&v);
                        cstring(&k)
                    })
                    .collect::<io::Result<_>>()?,
            ),
        };
        Ok(ExecImage {
            program: cstring(program)?,
            argv,
            env,
            cwd: cwd.map(cstring).transpose()?,
        })
    }

    /// Installs `stdio` on 0, 1, 2 (where given), restores default `SIGPIPE`
    /// handling (Rust ignores it, programs expect the default), changes
    /// directory and replaces the process image. Returns only on failure.
    pub(crate) fn exec(self, stdio: [Option<BorrowedFd<'_>>; 3]) -> io::Error {
        let run = || -> io::Result<std::convert::Infallible> {
            for (target, fd) in stdio.into_iter().enumerate() {
                if let Some(fd) = fd {
                    // SAFETY: dup2 onto 0/1/2 replaces this process's own
                    // standard streams, which nothing else here owns; the
                    // result is not close-on-exec, which is what exec needs.
                    cvt(unsafe { libc::dup2(fd.as_raw_fd(), target as RawFd) })?;
                }
            }
            reset_signal(libc::SIGPIPE)?;
            if let Some(dir) = &self.cwd {
                nix::unistd::chdir(dir.as_c_str())?;
            }
            Ok(match &self.env {
                Some(env) => nix::unistd::execvpe(&self.program, &self.argv, env)?,
                None => nix::unistd::execvp(&self.program, &self.argv)?,
            })
        };
        match run() {
            Ok(never) => match never {},
            Err(e) => e,
        }
    }
}

/// Encodes an `OsStr` as bytes for the wire.
pub(crate) fn os_bytes(s: &OsStr) -> Vec<u8> {
    s.as_bytes().to_vec()
}

/// Borrows a descriptor held in a slice by index, for `exec`'s stdio.
pub(crate) fn borrow_index(fds: &[OwnedFd], index: Option<u32>) -> Option<BorrowedFd<'_>> {
    index.and_then(|i| fds.get(i as usize)).map(|f| f.as_fd())
}

/// Registers an owned descriptor with the current tokio reactor.
pub(crate) fn async_fd(fd: OwnedFd) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: an `OwnedFd` is a valid, open descriptor that stays open and
    // refers to the same file description until it is dropped, which happens
    // only when the `AsyncFd` that owns it is dropped; its `as_raw_fd` always
    // returns the same number.
    unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)
}

/// Shuts down one or both directions of a socket.
pub(crate) fn shutdown(sock: BorrowedFd<'_>, how: nix::sys::socket::Shutdown) {
    let _ = nix::sys::socket::shutdown(sock.as_raw_fd(), how);
}

/// Whether the peer of the connected socket `sock` will send nothing more:
/// it shut down its sending side or closed its end (`POLLRDHUP`), whether
/// or not what it sent before is still unread here. Does not wait.
pub(crate) fn peer_shut_down(sock: BorrowedFd<'_>) -> bool {
    let mut pfd = libc::pollfd {
        fd: sock.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: `pfd` is one valid, writable pollfd, for a descriptor kept
    // open by the borrow for the call; a zero timeout never blocks.
    let ready = unsafe { libc::poll(&mut pfd, 1, 0) };
    ready > 0 && pfd.revents & (libc::POLLRDHUP | libc::POLLHUP) != 0
}

/// Opens a pidfd for any process (Linux 5.3+).
pub(crate) fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor
    // or -1; no memory is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a new descriptor that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

#[cfg(feature = "test-support")]
/// Registers `handler` to run at `exit()` (C's `atexit`).
pub(crate) fn atexit(handler: extern "C" fn()) -> io::Result<()> {
    // SAFETY: `handler` is a plain function with no arguments, valid for
    // the life of the program, as atexit requires.
    match unsafe { libc::atexit(handler) } {
        0 => Ok(()),
        _ => Err(io::Error::other("atexit: no room for another handler")),
    }
}

#[cfg(feature = "test-support")]
/// Makes this process the reaper of orphaned descendants.
pub(crate) fn set_child_subreaper() -> io::Result<()> {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER, 1) passes only integers.
    cvt(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong) }).map(drop)
}
