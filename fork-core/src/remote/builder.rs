//! [`Template::remote`] and its builder: connect, greet, check, relay.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;

use super::agent::FLAG;
use super::bridge;
use super::connector::{Connection, Connector, RemoteCommand, Session};
use super::forward;
use super::hello::{Hello, Mismatch};
use super::keepalive::{self, Heard, Knobs, Stamped};
use super::stream::{BoxWrite, FrameReader, Owned, ReadError};
use super::upload;
use super::wire::{self, Frame};
use crate::error::{Error, Result};
use crate::sys;
use crate::template::Template;

/// Largest control message accepted from a remote template (its replies are
/// small: pids, statuses, error messages).
const MAX_REPLY: usize = 4 * 1024 * 1024;

impl Template {
    /// Starts building a **remote template**: this program's binary run by
    /// `connector` (on another host over ssh, in a container, or as a local
    /// command), serving fork requests from there. See the
    /// [`remote`](crate::remote) module.
    ///
    /// ```no_run
    /// use fork_core::Template;
    /// use fork_core::remote::CommandConnector;
    ///
    /// # async fn demo() -> fork_core::Result<()> {
    /// let ssh = CommandConnector::new("ssh").args(["-T", "build-1"]).shell_line(true);
    /// let template = Template::remote(ssh).program("/opt/app/bin/app").start().await?;
    /// # Ok(()) }
    /// ```
    pub fn remote<C: Connector>(connector: C) -> RemoteBuilder<C> {
        RemoteBuilder {
            connector,
            program: Program::Here,
            same_build: true,
            timeout: Duration::from_secs(30),
            name: None,
            keepalive: Knobs {
                interval: Some(keepalive::INTERVAL),
                timeout: keepalive::TIMEOUT,
            },
            forward_streams: true,
            keep_uploads: 3,
        }
    }
}

/// A remote template being configured: made by [`Template::remote`],
/// started with [`start`](RemoteBuilder::start).
#[derive(Debug)]
#[must_use = "a RemoteBuilder does nothing until start() is awaited"]
pub struct RemoteBuilder<C> {
    connector: C,
    program: Program,
    same_build: bool,
    timeout: Duration,
    name: Option<String>,
    keepalive: Knobs,
    forward_streams: bool,
    keep_uploads: usize,
}

/// Which binary the other side runs.
#[derive(Debug)]
enum Program {
    /// The path of this binary here.
    Here,
    /// This path there.
    At(OsString),
    /// This binary, uploaded into this directory there.
    UploadTo(PathBuf),
}

impl<C: Connector> RemoteBuilder<C> {
    /// The path of this program's binary on the other side. The default is
    /// this binary's own path here (right for a local command, or a host
    /// where the program is installed at the same place). Replaces an
    /// earlier [`upload_to`](RemoteBuilder::upload_to).
    pub fn program(mut self, path: impl Into<OsString>) -> Self {
        self.program = Program::At(path.into());
        self
    }

    /// Runs this binary **uploaded** into `dir` on the other side, instead
    /// of a binary already there ([`program`](RemoteBuilder::program)).
    /// Replaces an earlier `program`.
    ///
    /// Before starting, [`start`](RemoteBuilder::start) makes sure that
    /// `dir/<this program's file name>-<its SHA-256>` exists there and has
    /// that SHA-256, through the connector itself: it runs `sh -c` with a
    /// short script, which hashes the file there with `sha256sum`. If the
    /// file is missing, is not the user's, or has other content, the
    /// binary is sent on the script's standard input into a temporary
    /// file in `dir`, its hash checked on arrival, made executable (mode
    /// 755) and renamed over the target, so a parent starting it
    /// meanwhile, or another uploading at once, never runs a half-written
    /// file. The next start finds it and sends nothing. So the other side
    /// needs a POSIX `sh`, `sha256sum`, `mktemp`, `cat`, `chmod` and `mv`
    /// (GNU coreutils or busybox). The binary is hashed here once per
    /// process; every start hashes the file there (`sha256sum` reads it
    /// whole: about 0.17 s for a 60 MB debug build, measured on loopback,
    /// against 3 ms for a start without the check).
    ///
    /// `dir` is created if missing; a relative one is relative to where
    /// the connector's command starts (over ssh, the home directory; `~`
    /// is not expanded). It
    /// should be writable by this user only: whoever can write there can
    /// replace the binary between the check and the start (the greeting's
    /// build-id check, [`same_build`](RemoteBuilder::same_build), is a
    /// second line of defence against a stale or foreign file, not against
    /// a hostile one). After an upload, older uploads of this program there
    /// beyond the newest three are removed
    /// ([`keep_uploads`](RemoteBuilder::keep_uploads)).
    ///
    /// ```no_run
    /// use fork_core::Template;
    /// use fork_core::remote::CommandConnector;
    ///
    /// # async fn demo() -> fork_core::Result<()> {
    /// let ssh = CommandConnector::new("ssh").args(["-T", "build-1"]).shell_line(true);
    /// // Runs e.g. ~/.cache/my-app/my-app-3f2a…c9 on build-1.
    /// let template = Template::remote(ssh).upload_to(".cache/my-app").start().await?;
    /// # Ok(()) }
    /// ```
    pub fn upload_to(mut self, dir: impl Into<PathBuf>) -> Self {
        self.program = Program::UploadTo(dir.into());
        self
    }

    /// How many uploads of this program [`upload_to`](RemoteBuilder::upload_to)
    /// keeps in its directory, the one it just uploaded included: after an
    /// upload (not on a start that found its file there), the user's
    /// other `<name>-<sha256>` files there beyond the newest `n`, by
    /// modification time, are removed. Other files are left alone. The
    /// default is 3, so that a parent of the build before, still starting
    /// remote templates during a rolling deploy, finds its file; `0` counts
    /// as 1; `usize::MAX` keeps them all. A remote side already running a
    /// removed file runs on (Linux keeps an executable that is running).
    pub fn keep_uploads(mut self, n: usize) -> Self {
        self.keep_uploads = n;
        self
    }

    /// Whether the other side must run the very same build as this one:
    /// the same build id (the linker's GNU build id, or a hash of the
    /// binary). Arguments and replies are encoded by both sides' code, so a
    /// different build can misread them; turn it off only for builds you
    /// know to be compatible. The default is `true`. The protocol versions
    /// must match either way.
    pub fn same_build(mut self, required: bool) -> Self {
        self.same_build = required;
        self
    }

    /// How long the connection and the greeting may take (an ssh login, a
    /// container start). The default is 30 s.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The host's name, as [`Template::host`] gives it and
    /// [`Error::RemoteLost`] names it. The default is the connector's
    /// [`name`](Connector::name) (an ssh destination, a command line).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// How a lost connection is noticed when it gives no EOF (a network
    /// partition, a frozen host): this side sends a ping every `interval`,
    /// the other side answers, and the connection counts as **lost** when
    /// nothing at all (no answer, no data) came for `timeout`: the
    /// template then fails with [`Error::RemoteLost`] (see
    /// [`Template::lost`]). The other side applies the same `timeout` to
    /// what it hears from here, and when it hears nothing for that long it
    /// ends as at EOF: its template kills and reaps its workers and it
    /// exits, so a partitioned host keeps no orphans.
    ///
    /// The defaults are **2 s** and **10 s**. Any bytes count as life, so a
    /// busy link never times out; an idle one carries a 13-byte ping and
    /// pong every 2 s. The timeout must exceed the round trip plus the
    /// interval (pings are not matched to answers: on a link whose round
    /// trip exceeds the interval the answers still come one per interval,
    /// only later); 10 s tolerates round trips of several seconds and a
    /// few lost pings' worth of TCP retransmission, while a host that went
    /// away is reported within 10 to 12 s. Shorten both for faster
    /// failover on a good network; lengthen the timeout for links that
    /// stall for seconds.
    ///
    /// # Panics
    ///
    /// If `interval` is zero or `timeout` is not longer than `interval`.
    pub fn keepalive(mut self, interval: Duration, timeout: Duration) -> Self {
        assert!(
            !interval.is_zero() && timeout > interval,
            "keepalive: the interval ({interval:?}) must be non-zero and shorter than the \
             timeout ({timeout:?})"
        );
        self.keepalive = Knobs {
            interval: Some(interval),
            timeout,
        };
        self
    }

    /// Whether each worker's stream may get a connection of its own through
    /// the connector's [forward](Connector::forward) of a unix socket
    /// (`SshConnector`, feature `openssh`, has one), instead of a channel
    /// of the connection to the remote template. The default is `true`:
    /// with ssh it is faster (pipelined calls through a forwarded stream
    /// were measured 1.3x as fast: see the book's figures), and a stream
    /// works the same either way. A connector that cannot forward, a
    /// remote side that cannot listen (its socket lives in a new directory
    /// of mode 700 under `$XDG_RUNTIME_DIR`, else the temporary
    /// directory), or a forward that fails its check at start (an sshd
    /// with `AllowStreamLocalForwarding no`) leaves the streams in
    /// channels, with a warning logged through `tracing`.
    ///
    /// When the connection is found lost by the keepalive (no EOF: a
    /// partition), the forward is [cut](super::Forward::cut), so the
    /// workers' streams here end at once as channels do. On an EOF, they
    /// end when their workers do: the remote template kills them when it
    /// loses its parent.
    pub fn forward_streams(mut self, allowed: bool) -> Self {
        self.forward_streams = allowed;
        self
    }

    /// Runs the program through the connector, checks its greeting, and
    /// returns the template. It then works as a local one: prepare it,
    /// fork workers from it (their pids are the remote host's; their exit
    /// statuses are reported, so [`Worker::wait`](crate::Worker::wait) and
    /// [`Worker::kill`](crate::Worker::kill) behave the same), and its
    /// workers' streams are ordinary tokio sockets here. Descriptors cannot
    /// cross: [`Fork::fd`](crate::Fork::fd), [`Template::fd`] and the
    /// standard streams of a [`Command`](crate::Command) fail with
    /// [`Error::RemoteUnsupported`], as does
    /// [`Fork::template`](crate::Fork::template); [`Template::into_fd`]
    /// fails with [`Error::HandOver`].
    ///
    /// # Errors
    ///
    /// [`Error::NoRuntime`] outside a tokio runtime;
    /// [`Error::RemoteUpload`] if [`upload_to`](RemoteBuilder::upload_to)
    /// was asked and the upload failed (which step, in which directory);
    /// [`Error::RemoteConnect`] if the connector fails;
    /// [`Error::RemoteHandshake`] if what answers is not a fork-core
    /// remote template (its first bytes are in the message), ends before
    /// greeting, or does not greet within the timeout;
    /// [`Error::RemoteVersion`] and [`Error::RemoteBuild`] on a mismatch.
    /// The command is ended in each case.
    pub async fn start(self) -> Result<Template> {
        tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let host = self.name.unwrap_or_else(|| self.connector.name());
        let program = match self.program {
            Program::At(p) => p,
            Program::Here => std::fs::read_link("/proc/self/exe")
                .map_err(Error::RemoteConnect)?
                .into_os_string(),
            Program::UploadTo(dir) => {
                upload::ensure(
                    &self.connector,
                    &host,
                    &dir,
                    self.keep_uploads,
                    self.timeout,
                )
                .await?
            }
        };
        let command = RemoteCommand {
            program,
            args: vec![FLAG.into()],
        };
        let listen = self.forward_streams && self.connector.forwards();
        let ours = Hello::ours(std::process::id(), self.same_build, listen);
        let timeout = self.timeout;
        let connected = tokio::time::timeout(timeout, self.connector.connect(&command)).await;
        let Connection {
            reader,
            mut writer,
            session,
        } = match connected {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(Error::RemoteConnect(e)),
            Err(_) => {
                return Err(Error::RemoteHandshake(format!(
                    "the connector did not connect within {timeout:?}"
                )));
            }
        };
        let heard = Heard::new();
        let reader = Box::new(Stamped::new(reader, heard.clone()));
        let mut frames = FrameReader::new(reader, MAX_REPLY);
        let greeted = tokio::time::timeout(timeout, greet(&mut frames, &mut writer, &ours)).await;
        let theirs = match greeted {
            Ok(Ok(theirs)) => theirs,
            Ok(Err(e)) => return Err(abandon(session, e).await),
            Err(_) => {
                let e = Error::RemoteHandshake(format!(
                    "no greeting within {timeout:?} (is the program's path right, and does its \
                     main call fork_core::init() first?)"
                ));
                return Err(abandon(session, e).await);
            }
        };
        let forward = if listen {
            let set_up = forward::set_up(&self.connector, &host, &mut frames);
            match tokio::time::timeout(timeout, set_up).await {
                Ok(Ok(forward)) => forward,
                Ok(Err(e)) => return Err(abandon(session, e).await),
                Err(_) => {
                    let e = Error::RemoteHandshake(format!(
                        "setting up the forward for workers' streams took over {timeout:?}"
                    ));
                    return Err(abandon(session, e).await);
                }
            }
        } else {
            None
        };
        let (ours_fd, bridge_fd) = match sys::seqpacket_pair() {
            Ok(pair) => pair,
            Err(e) => {
                let e = Error::os("creating a remote template's control socket pair")(e);
                return Err(abandon(session, e).await);
            }
        };
        let (status_tx, status_rx) = oneshot::channel();
        let forwarded = forward.as_ref().map(|f| f.path().to_path_buf());
        let template =
            Template::from_remote(ours_fd, theirs.pid, host.clone(), status_rx, forwarded)?;
        tokio::spawn(bridge::run(
            bridge_fd,
            bridge::Stream {
                frames,
                writer,
                session,
                heard,
                forward,
            },
            bridge::Loss {
                host,
                keepalive: self.keepalive,
            },
            std::sync::Arc::downgrade(template.conn()),
            status_tx,
        ));
        Ok(template)
    }
}

/// Reads the other side's greeting, checks it, and greets back.
async fn greet(frames: &mut FrameReader, writer: &mut BoxWrite, ours: &Hello) -> Result<Hello> {
    let theirs = match frames.next().await {
        Ok(Some(Owned::Hello(payload))) => Hello::decode(&payload)
            .map_err(|e| Error::RemoteHandshake(format!("a malformed greeting: {e}")))?,
        Ok(Some(_)) => {
            return Err(Error::RemoteHandshake(
                "the other side sent frames before greeting".into(),
            ));
        }
        Ok(None) => {
            return Err(Error::RemoteHandshake(
                "the command ended without greeting (is the program's path right, and does \
                 its main call fork_core::init() first?)"
                    .into(),
            ));
        }
        Err(ReadError::Protocol(_)) => {
            let pending = frames.pending();
            let shown = &pending[..pending.len().min(200)];
            return Err(Error::RemoteHandshake(format!(
                "the command wrote {:?}, which is not a fork-core remote template's greeting",
                String::from_utf8_lossy(shown)
            )));
        }
        Err(ReadError::Io(e)) => {
            return Err(Error::RemoteHandshake(format!(
                "reading the greeting failed: {e}"
            )));
        }
    };
    ours.check(&theirs).map_err(|m| match m {
        Mismatch::Version { ours, theirs } => Error::RemoteVersion { ours, theirs },
        Mismatch::Build { ours, theirs } => Error::RemoteBuild { ours, theirs },
    })?;
    let greeting = wire::to_vec(&Frame::Hello(&ours.encode()));
    writer
        .write_all(&greeting)
        .await
        .and(writer.flush().await)
        .map_err(|e| Error::RemoteHandshake(format!("greeting it failed: {e}")))?;
    Ok(theirs)
}

/// Ends a transport whose template was refused, reaping it in the
/// background; returns `e`.
async fn abandon(mut session: Box<dyn Session>, e: Error) -> Error {
    let _ = session.start_kill();
    tokio::spawn(async move {
        let _ = session.wait().await;
    });
    e
}
