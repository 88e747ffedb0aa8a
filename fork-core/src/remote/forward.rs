//! Workers' streams through a forwarded socket (stream protocol 3), when
//! the connector can forward unix sockets ([`Connector::forward`]: ssh).
//!
//! The parent's greeting asks for it (a flag); the remote side listens on
//! `s` in a new directory only this user can enter (under
//! `$XDG_RUNTIME_DIR`, else the temporary directory) and sends its path in
//! a `Listening` frame, its first after the greetings. The parent asks the
//! connector to forward a socket here to that path, and checks the forward
//! with one connection (a probe, which the remote side answers with one
//! byte).
//!
//! From then on each spawn's socket here is a new connection through the
//! forward, made by the [`Template`](crate::Template) instead of a socket
//! pair. The relay writes a header naming the spawn's id as its first
//! bytes and sends `Forwarded { id }` before the spawn request; the remote
//! side, which accepted the connection and read its header, hands the
//! connection to its template as the worker's socket instead of making a
//! socket pair whose other end is a channel. A worker's bytes then go
//! through the transport alone (sshd, the ssh ControlMaster): no relay of
//! ours on either side, and the transport's flow control.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::connector::{Connector, Forward};
use super::stream::{FrameReader, Owned, ReadError};
use crate::error::{Error, Result};

/// First bytes of every connection to the remote side's socket.
const MAGIC: &[u8; 8] = b"fcstream";
/// A connection's header: [`MAGIC`], then the spawn's id (u64 LE).
const HEADER_LEN: usize = 16;
/// The header's id of the parent's probe, answered with one byte.
const PROBE: u64 = u64::MAX;
/// How long a connection may take to send its header, and a spawn request
/// at most to wait for its connection (the remote side reads nothing else
/// meanwhile, so it also waits no longer than half the keepalive timeout).
pub(crate) const ARRIVAL: Duration = Duration::from_secs(5);
/// Connections that may wait for their spawn request at once.
const MAX_WAITING: usize = 1024;
/// Longest path a unix socket address holds (`sun_path`, with its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// The header for spawn `id`.
fn header(id: u64) -> [u8; HEADER_LEN] {
    let mut h = [0; HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[8..].copy_from_slice(&id.to_le_bytes());
    h
}

// ===== the remote side =====

/// The remote side's socket for workers' streams, and the connections that
/// came to it, by spawn id, until their spawn request takes them.
pub(crate) struct Listener {
    dir: PathBuf,
    path: PathBuf,
    arrived: Arc<Arrived>,
    accepting: JoinHandle<()>,
}

#[derive(Default)]
struct Arrived {
    conns: Mutex<HashMap<u64, Slot>>,
    notify: Notify,
}

/// A spawn id's entry in [`Arrived`].
enum Slot {
    /// Its connection came; its spawn request has not taken it yet.
    Came(OwnedFd),
    /// Its spawn request gave up waiting: the connection, if it comes
    /// late, is closed at once (not kept for nobody).
    GaveUp,
}

impl Listener {
    /// Listens in a new directory of mode 700. Needs a tokio runtime.
    pub(crate) fn bind() -> io::Result<Listener> {
        let dir = private_dir()?;
        let path = dir.join("s");
        let listener = match UnixListener::bind(&path) {
            Ok(l) => l,
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                return Err(e);
            }
        };
        let arrived = Arc::new(Arrived::default());
        let accepting = tokio::spawn(accept(listener, arrived.clone()));
        Ok(Listener {
            dir,
            path,
            arrived,
            accepting,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The connection whose header named spawn `id`, once it came; `None`
    /// if it did not within `within`.
    pub(crate) async fn take(&self, id: u64, within: Duration) -> Option<OwnedFd> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.arrived.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut conns = lock(&self.arrived.conns);
                if let Some(Slot::Came(fd)) = conns.remove(&id) {
                    return Some(fd);
                }
                if tokio::time::Instant::now() >= deadline {
                    conns.insert(id, Slot::GaveUp);
                    return None;
                }
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.accepting.abort();
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A new directory `fork-core-<pid>-<n>` of mode 700 (creating it fails if
/// the name exists, so it is never someone else's), under
/// `$XDG_RUNTIME_DIR` if set, else the temporary directory: for a socket.
/// Those of processes that are gone (killed before they could remove
/// theirs) are removed first.
pub(crate) fn private_dir() -> io::Result<PathBuf> {
    let base = base_dir();
    sweep(&base);
    let pid = std::process::id();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut last = None;
    for n in 0..16u32 {
        let dir = base.join(format!("fork-core-{pid}-{:x}", seed.wrapping_add(n)));
        if dir.join("s").as_os_str().len() > MAX_SOCKET_PATH {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is too long a path for a unix socket", dir.display()),
            ));
        }
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free directory name")))
}

/// `$XDG_RUNTIME_DIR` if set, else the temporary directory.
fn base_dir() -> PathBuf {
    std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|d| d.is_absolute() && d.is_dir())
        .unwrap_or_else(std::env::temp_dir)
}

/// Removes this user's `fork-core-<pid>-*` directories in `base` whose
/// process is gone and whose socket nothing listens on any more (a process
/// of another pid namespace sharing the directory may still), with the
/// socket in them (nothing else: a directory holding more stays).
fn sweep(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    let uid = nix::unistd::getuid().as_raw();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("fork-core-"))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<i32>().ok())
            .filter(|&pid| pid > 0)
        else {
            continue;
        };
        let gone = matches!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
            Err(nix::errno::Errno::ESRCH)
        );
        let ours = std::os::unix::fs::MetadataExt::uid(&match entry.metadata() {
            Ok(m) if m.is_dir() => m,
            _ => continue,
        }) == uid;
        let dir = entry.path();
        let listened = std::os::unix::net::UnixStream::connect(dir.join("s")).is_ok();
        if gone && ours && !listened {
            let _ = std::fs::remove_file(dir.join("s"));
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn accept(listener: UnixListener, arrived: Arc<Arrived>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(admit(stream, arrived.clone()));
            }
            // Out of descriptors, say: the spawn that waits for this
            // connection fails after ARRIVAL; later ones may succeed.
            Err(e) => {
                tracing::warn!("accepting a worker's stream: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Reads a connection's header and files it under its spawn id (or answers
/// the probe). A connection without a valid header within [`ARRIVAL`] is
/// closed.
async fn admit(mut stream: UnixStream, arrived: Arc<Arrived>) {
    let mut head = [0; HEADER_LEN];
    match tokio::time::timeout(ARRIVAL, stream.read_exact(&mut head)).await {
        Ok(Ok(_)) if head[..8] == MAGIC[..] => {}
        _ => return,
    }
    let id = u64::from_le_bytes(head[8..].try_into().expect("8 bytes"));
    if id == PROBE {
        let _ = stream.write_all(b"+").await;
        return;
    }
    // The worker gets it as its own socket: blocking, as a socket pair's.
    let Ok(std) = stream.into_std() else { return };
    if std.set_nonblocking(false).is_err() {
        return;
    }
    let mut conns = lock(&arrived.conns);
    if let Some(Slot::GaveUp) = conns.get(&id) {
        // Too late: closed here, so the parent's end sees EOF.
        conns.remove(&id);
    } else if conns.len() < MAX_WAITING {
        conns.insert(id, Slot::Came(OwnedFd::from(std)));
        arrived.notify.notify_waiters();
    }
}

// ===== the parent =====

/// Reads where the remote side listens (its first frame after the
/// greetings, since ours asked it to), asks the connector to forward to
/// it, and checks the forward. `None` if the connector cannot forward, or
/// the remote side could not listen, or the forward failed its check
/// (logged): the workers' streams then go as channels.
///
/// # Errors
///
/// [`Error::RemoteHandshake`] if the stream fails or breaks the protocol
/// meanwhile.
pub(crate) async fn set_up(
    connector: &(impl Connector + ?Sized),
    host: &str,
    frames: &mut FrameReader,
) -> Result<Option<Box<dyn Forward>>> {
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        Error::RemoteHandshake(format!("{what} for workers' streams: {e}"))
    };
    let path = match frames.next().await {
        Ok(Some(Owned::Listening(path))) => path,
        Ok(Some(_)) => {
            return Err(Error::RemoteHandshake(
                "the remote side did not say where it listens for workers' streams".into(),
            ));
        }
        Ok(None) => return Err(failed("the remote side ended", &"EOF")),
        Err(ReadError::Io(e)) => return Err(failed("reading the answer", &e)),
        Err(ReadError::Protocol(e)) => return Err(failed("reading the answer", &e)),
    };
    if path.is_empty() {
        tracing::debug!("{host}: the remote side cannot listen; workers' streams go as channels");
        return Ok(None);
    }
    let remote = Path::new(OsStr::from_bytes(&path));
    let forward = match connector.forward(remote).await {
        Ok(Some(forward)) => forward,
        Ok(None) => return Ok(None),
        Err(e) => {
            tracing::warn!(
                "{host}: cannot forward a socket to {}: {e}; workers' streams go as channels",
                remote.display()
            );
            return Ok(None);
        }
    };
    match probe(forward.path()).await {
        Ok(()) => Ok(Some(forward)),
        Err(e) => {
            tracing::warn!(
                "{host}: the forward of {} to {} does not work: {e}; workers' streams go as \
                 channels",
                forward.path().display(),
                remote.display()
            );
            Ok(None)
        }
    }
}

/// One connection through the forward, answered by the remote side.
async fn probe(path: &Path) -> io::Result<()> {
    let check = async {
        let mut s = UnixStream::connect(path).await?;
        s.write_all(&header(PROBE)).await?;
        let mut answer = [0; 1];
        s.read_exact(&mut answer).await?;
        Ok(())
    };
    tokio::time::timeout(ARRIVAL, check)
        .await
        .unwrap_or_else(|_| Err(io::Error::other(format!("no answer within {ARRIVAL:?}"))))
}

/// Whether `socket` is a connection to the forward at `path` (a spawn's
/// socket made by [`connect`]), not one end of a socket pair.
pub(crate) fn is_through(socket: &OwnedFd, path: &Path) -> bool {
    nix::sys::socket::getpeername::<nix::sys::socket::UnixAddr>(std::os::fd::AsRawFd::as_raw_fd(
        socket,
    ))
    .ok()
    .and_then(|a| a.path().map(|p| p == path))
    .unwrap_or(false)
}

/// Writes spawn `id`'s header as the first bytes of `socket`, a new
/// connection (its buffer is empty, so 16 bytes never wait).
pub(crate) fn write_header(socket: &OwnedFd, id: u64) -> io::Result<()> {
    let h = header(id);
    let n = nix::unistd::write(socket.as_fd(), &h).map_err(io::Error::from)?;
    if n == h.len() {
        Ok(())
    } else {
        Err(io::Error::other("a short write of a stream's header"))
    }
}

/// A spawn's socket through the forward at `path`: this side's end (the
/// worker's stream) and a duplicate for the spawn request, which the relay
/// recognises ([`is_through`]), writes the header on and closes.
pub(crate) async fn connect(path: &Path) -> io::Result<(std::os::unix::net::UnixStream, OwnedFd)> {
    let ours = UnixStream::connect(path).await?.into_std()?;
    let theirs = OwnedFd::from(ours.try_clone()?);
    Ok((ours, theirs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_is_taken_by_the_id_its_header_names() {
        let listener = Listener::bind().unwrap();
        let mode = std::fs::metadata(listener.dir.clone()).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o700
        );
        probe(listener.path()).await.unwrap();
        let (mut ours, theirs) = connect(listener.path()).await.unwrap();
        assert!(is_through(&theirs, listener.path()));
        write_header(&theirs, 7).unwrap();
        drop(theirs);
        let worker = listener.take(7, ARRIVAL).await.unwrap();
        let mut worker = std::os::unix::net::UnixStream::from(worker);
        std::io::Write::write_all(&mut ours, b"ping").unwrap();
        let mut got = [0; 4];
        std::io::Read::read_exact(&mut worker, &mut got).unwrap();
        assert_eq!(&got, b"ping");
        // A pair's end is not a connection through the forward.
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(!is_through(&OwnedFd::from(a), listener.path()));
        let dir = listener.dir.clone();
        drop(listener);
        assert!(!dir.exists());
    }

    #[test]
    fn directories_of_processes_that_are_gone_are_swept() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = child.id();
        child.wait().unwrap();
        let base = base_dir();
        let stale = base.join(format!("fork-core-{gone}-test"));
        let kept = base.join(format!("fork-core-{}-test", std::process::id()));
        // Its process gone too, but something listens there (a process of
        // another pid namespace, say).
        let listened = base.join(format!("fork-core-{gone}-listened"));
        for dir in [&stale, &kept] {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join("s"), b"").unwrap();
        }
        std::fs::create_dir_all(&listened).unwrap();
        let listening = std::os::unix::net::UnixListener::bind(listened.join("s")).unwrap();
        let new = private_dir().unwrap();
        assert!(!stale.exists(), "{} was not swept", stale.display());
        assert!(kept.exists(), "a live process's directory was swept");
        assert!(listened.exists(), "a directory listened on was swept");
        drop(listening);
        for dir in [&kept, &new, &listened] {
            let _ = std::fs::remove_file(dir.join("s"));
            std::fs::remove_dir(dir).unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_spawn_whose_connection_never_comes_gets_none() {
        let listener = Listener::bind().unwrap();
        // A connection with a bad header is closed, not filed.
        let mut bad = UnixStream::connect(listener.path()).await.unwrap();
        bad.write_all(b"not a header....").await.unwrap();
        let mut rest = Vec::new();
        assert_eq!(bad.read_to_end(&mut rest).await.unwrap(), 0);
        assert!(listener.take(3, ARRIVAL).await.is_none());
        // Its connection, coming late, is closed at once, not kept.
        let (late, theirs) = connect(listener.path()).await.unwrap();
        write_header(&theirs, 3).unwrap();
        drop(theirs);
        let mut late = UnixStream::from_std(late).unwrap();
        let mut rest = Vec::new();
        assert_eq!(late.read_to_end(&mut rest).await.unwrap(), 0);
        assert!(lock(&listener.arrived.conns).is_empty());
    }
}
