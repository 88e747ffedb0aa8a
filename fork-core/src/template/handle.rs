//! The `Template` handle: a connection to a template process, its
//! preparation (init functions, arguments, descriptors) and its end.
//!
//! How to get one that is shared or forked early is in
//! [`registry`](super::registry); forking from it is in
//! [`fork`](crate::fork).

use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;

use serde::Serialize;

use super::conn::{Conn, ExitWatch, Reap};
use super::serve;
use crate::entry::InitFn;
use crate::error::{Error, Failure, Result};
use crate::proto::{self, Op, Request};
use crate::sys;

/// A handle to a template process: a small, single-threaded process that
/// forks workers when asked (AnyEvent::Fork's process object before `run`).
///
/// Get one with [`Template::new`] (a fresh process, exec'd from this
/// program's binary), [`Template::shared`] (the program-wide default, created
/// on first use) or [`Template::early`] (forked by [`init`](crate::init) at
/// start-up). Prepare it with [`init`](Template::init), [`arg`](Template::arg)
/// and [`fd`](Template::fd): everything it receives is inherited by every
/// process forked from it afterwards, and shared copy-on-write. Then
/// [`fork`](Template::fork) workers from it.
///
/// Preparation calls are queued and sent in the background, in order; they
/// return `&Self` so they chain. If one fails (an argument that does not
/// serialise, an init function that returns an error in the template), the
/// template is failed: [`ready`](Template::ready) and every later fork return
/// that error.
///
/// `Template` is a cheap handle (`Clone`). The process lives as long as any
/// handle to it or to one of its workers; when the last is dropped it gets
/// EOF and exits, and so do the workers it forked. If the parent dies, the
/// template and all its workers die too.
///
/// # Examples
///
/// ```no_run
/// use fork_core::{Context, Entry, Template};
///
/// fn hello(ctx: Context) -> i32 {
///     let n: u32 = ctx.arg(0).unwrap();
///     n as i32
/// }
/// static HELLO: Entry = fork_core::entry!(hello);
///
/// fn main() -> Result<(), fork_core::Error> {
///     fork_core::init();
///     let rt = tokio::runtime::Runtime::new()?;
///     rt.block_on(async {
///         let template = Template::shared()?;
///         let mut worker = template.fork().arg(&7u32).run(&HELLO).await?;
///         assert_eq!(worker.wait().await?.code(), Some(7));
///         Ok(())
///     })
/// }
/// ```
#[derive(Clone, Debug)]
pub struct Template {
    inner: Arc<Handle>,
}

#[derive(Debug)]
struct Handle {
    conn: Arc<Conn>,
    pid: u32,
    /// A template forked from another keeps its parent alive and gets its
    /// exit status from it.
    parent: Option<(Template, ExitWatch)>,
    /// This process started it (and reaps it); not so for a template forked
    /// from another, or taken over from another process.
    child: bool,
    /// The name of a remote template's host; `None` for a local one (this
    /// is what makes a template remote).
    host: Option<String>,
    /// A remote template's forward: workers' sockets are connections to
    /// this path (`remote/forward.rs`), not socket pairs.
    forward: Option<PathBuf>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.conn.close();
    }
}

impl Template {
    /// Starts a new template process by executing this program's own binary
    /// (`/proc/self/exe`, so a binary replaced on disk still works).
    ///
    /// The process is spawned with `posix_spawn` (safe and cheap from a big,
    /// threaded parent): its control socket is its standard input, a marker in
    /// its environment makes [`init`](crate::init) turn it into a template
    /// (the marker is then removed), and it closes the other descriptors it
    /// inherited through the `exec`. Its stdout and stderr are the parent's.
    /// It gets `argv[0]` only: `init` must come before the command line is
    /// parsed.
    ///
    /// It runs in a process group of its own, with its workers: signals for
    /// the parent's group (Ctrl-C in a terminal, `kill -TERM -<pgid>`) do not
    /// reach them, so the parent decides what happens to its workers. It
    /// ignores `SIGINT`, `SIGTERM`, `SIGHUP` and `SIGQUIT` sent to it
    /// directly (or to its cgroup, as systemd does at stop), and lives until
    /// its parent goes.
    ///
    /// A worker may start templates of its own.
    ///
    /// # Errors
    ///
    /// [`Error::NotInitialized`] if [`init`](crate::init) was not called (the
    /// new process would run `main` again), [`Error::NoRuntime`] outside a
    /// tokio runtime, [`Error::TemplateStart`] if the process cannot be
    /// spawned. A template that ends before it serves (its `main` did not
    /// reach `init`) fails the first fork with
    /// [`Error::TemplateNotStarted`].
    pub fn new() -> Result<Template> {
        if !crate::process::initialized() {
            return Err(Error::NotInitialized);
        }
        tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let (ours, theirs) = sys::seqpacket_pair().map_err(Error::TemplateStart)?;
        let arg0 = std::env::args_os()
            .next()
            .unwrap_or_else(|| OsString::from("fork-core-template"));
        let child = std::process::Command::new("/proc/self/exe")
            .arg0(arg0)
            // Its own process group: a signal for the parent's group (Ctrl-C
            // in a terminal, `kill -TERM -<pgid>`) does not reach it or its
            // workers; the parent decides what happens to them.
            .process_group(0)
            .env(
                serve::MARKER,
                format!("{}:{}", proto::VERSION, std::process::id()),
            )
            .stdin(Stdio::from(theirs))
            .spawn()
            .map_err(Error::TemplateStart)?;
        let pid = child.id();
        // Not waited for through `child`: the connection reaps it at EOF.
        drop(child);
        Template::from_conn(ours, pid, None)
    }

    pub(crate) fn from_conn(
        fd: OwnedFd,
        pid: u32,
        parent: Option<(Template, ExitWatch)>,
    ) -> Result<Template> {
        let reap = if parent.is_none() {
            Reap::Child(pid as i32)
        } else {
            Reap::None
        };
        let conn = Conn::start(fd, reap)?;
        Ok(Template {
            inner: Arc::new(Handle {
                conn,
                pid,
                child: parent.is_none(),
                parent,
                host: None,
                forward: None,
            }),
        })
    }

    /// A remote template, reached through the relay on the other end of
    /// `fd`, which reports the transport's exit status on `status`;
    /// `forward` is where workers' streams connect, if they do.
    pub(crate) fn from_remote(
        fd: OwnedFd,
        pid: u32,
        host: String,
        status: tokio::sync::oneshot::Receiver<super::conn::RemoteEnd>,
        forward: Option<PathBuf>,
    ) -> Result<Template> {
        let conn = Conn::start(fd, Reap::Status(status))?;
        Ok(Template {
            inner: Arc::new(Handle {
                conn,
                pid,
                parent: None,
                child: false,
                host: Some(host),
                forward,
            }),
        })
    }

    /// A new worker's socket: this side's end, and the end the spawn
    /// request carries (a socket pair; for a remote template whose
    /// streams are forwarded, a connection through the forward and a
    /// duplicate of it).
    pub(crate) async fn worker_socket(&self) -> Result<(UnixStream, OwnedFd)> {
        match &self.inner.forward {
            None => {
                let (ours, theirs) =
                    UnixStream::pair().map_err(Error::os("creating the worker's socket pair"))?;
                Ok((ours, theirs.into()))
            }
            // The forward is gone with the connection (its ControlMaster
            // ended): the template's own failure says why, if it knows.
            Some(path) => crate::remote::forward::connect(path).await.map_err(|e| {
                match self.inner.conn.failure() {
                    Some(failure) => failure.to_error(),
                    None => Error::RemoteLost {
                        host: self.host().unwrap_or_default().to_string(),
                        cause: crate::LostCause::Io(Arc::new(e)),
                    },
                }
            }),
        }
    }

    /// Whether this is a [remote template](crate::remote), started with
    /// [`Template::remote`].
    pub fn is_remote(&self) -> bool {
        self.inner.host.is_some()
    }

    /// The name of a [remote template](crate::remote)'s host
    /// ([`RemoteBuilder::name`](crate::remote::RemoteBuilder::name); by
    /// default the connector's [`name`](crate::remote::Connector::name)),
    /// as errors name it; `None` for a local template.
    pub fn host(&self) -> Option<&str> {
        self.inner.host.as_deref()
    }

    /// Resolves once the connection to this [remote
    /// template](crate::remote) was lost: with the [`Error::RemoteLost`]
    /// that its workers' [`wait`](crate::Worker::wait) and new forks then
    /// fail with. It never resolves for a local template, nor when the
    /// connection ends because this side shut it down (the last handle
    /// dropped, [`shutdown`](Template::shutdown)), nor when it failed
    /// otherwise (a protocol error). The future holds no handle: it does
    /// not keep the template alive.
    ///
    /// ```no_run
    /// # async fn doc(template: fork_core::Template) {
    /// let lost = template.lost();
    /// tokio::spawn(async move {
    ///     let e = lost.await;
    ///     eprintln!("{e}"); // lost the remote template on build-1: no answer for 10.0 s
    /// });
    /// # }
    /// ```
    pub fn lost(&self) -> impl Future<Output = Error> + Send + 'static {
        let mut ended = self.inner.conn.ended_watch();
        async move {
            if let Ok(end) = ended.wait_for(Option::is_some).await
                && let Some(lost @ Failure::RemoteLost { .. }) = end.clone()
            {
                return lost.to_error();
            }
            std::future::pending().await
        }
    }

    /// Whether the connection to this [remote template](crate::remote) was
    /// lost (see [`lost`](Template::lost)); `false` for a local template.
    pub fn is_lost(&self) -> bool {
        matches!(
            *self.inner.conn.ended_watch().borrow(),
            Some(Failure::RemoteLost { .. })
        )
    }

    /// Hands the template to another process, as a descriptor to send there
    /// (over a socket with `SCM_RIGHTS`, or inherited), where
    /// [`from_fd`](Template::from_fd) takes it over: AnyEvent::Fork's
    /// `to_fh`. Everything prepared so far (init functions, arguments,
    /// descriptors) stays in the template; the other process prepares it
    /// further and forks from it.
    ///
    /// The template then outlives this process: it lives until the other
    /// process closes the descriptor (or dies), and its workers with it.
    /// If this process started it, it still reaps it when it exits (in the
    /// background, on this runtime), so it leaves no zombie here.
    ///
    /// ```no_run
    /// # async fn doc() -> fork_core::Result<()> {
    /// use fork_core::Template;
    ///
    /// let template = Template::new()?;
    /// template.arg("preloaded for the other process");
    /// let fd = template.into_fd().await?;
    /// // ... send `fd` to the other process, which calls Template::from_fd.
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::HandOver`] if this is not the only handle to the template
    /// (a clone, a [`Fork`](crate::Fork) being prepared, or a worker forked
    /// from it, running or not, holds one: their exit statuses come on the
    /// connection that is handed over), or if it was forked from another
    /// template (it cannot outlive that one). The error of a failed
    /// preparation step, or [`Error::TemplateGone`].
    pub async fn into_fd(self) -> Result<OwnedFd> {
        if self.is_remote() {
            return Err(Error::HandOver(
                "it is a remote template, reached through this process's connection",
            ));
        }
        if self.inner.parent.is_some() {
            return Err(Error::HandOver(
                "it was forked from another template, which it cannot outlive",
            ));
        }
        if Arc::strong_count(&self.inner) > 1 {
            return Err(Error::HandOver(
                "other handles to it exist: clones, forks being prepared, or workers \
                 forked from it (running or not), whose statuses come on its connection",
            ));
        }
        let conn = self.inner.conn.clone();
        conn.release().await?;
        let fd = conn.hand_over().await?;
        if self.inner.child {
            reap_in_background(self.inner.pid);
        }
        Ok(fd)
    }

    /// Takes over a template another process handed over with
    /// [`into_fd`](Template::into_fd) (AnyEvent::Fork's `new_from_fh`): it
    /// is as that process prepared it, and this process prepares it further
    /// and forks from it. Dropping the last handle (or
    /// [`shutdown`](Template::shutdown)) ends it.
    ///
    /// The template is not this process's child: [`shutdown`](Template::shutdown)
    /// cannot return its exit status, and a template that died before it was
    /// taken over is [`Error::TemplateGone`]. A template answers at once; a
    /// socket whose peer reads and never answers (not a template) keeps the
    /// future waiting, so bound it with a timeout when the descriptor comes
    /// from a process you do not trust.
    ///
    /// # Errors
    ///
    /// [`Error::NoRuntime`] outside a tokio runtime; [`Error::TemplateGone`]
    /// if nothing serves on `fd`; [`Error::Protocol`] if what serves there is
    /// not a template.
    pub async fn from_fd(fd: OwnedFd) -> Result<Template> {
        let conn = Conn::adopt(fd)?;
        let pid = conn.release().await?;
        let pid = u32::try_from(pid)
            .map_err(|_| Error::Protocol(format!("the template said its pid is {pid}")))?;
        Ok(Template {
            inner: Arc::new(Handle {
                conn,
                pid,
                parent: None,
                child: false,
                host: None,
                forward: None,
            }),
        })
    }

    /// The template's process id (for a [remote](crate::remote) template,
    /// on its host).
    pub fn id(&self) -> u32 {
        self.inner.pid
    }

    /// `false` once the template is known to be gone or failed.
    pub fn is_alive(&self) -> bool {
        self.inner.conn.failure().is_none()
    }

    /// Closes the template now and waits for it to exit: it kills and reaps
    /// every worker it forked (their [`Worker::wait`](crate::Worker::wait) then fails with
    /// [`Error::TemplateGone`]), and the parent reaps it. Other handles to it
    /// see it as gone.
    ///
    /// Dropping the last handle closes a template too, but in the background;
    /// `shutdown` is for a clean stop, such as the end of a program or test.
    ///
    /// # Errors
    ///
    /// [`Error::TemplateGone`] if its exit status cannot be observed (for a
    /// template forked from another one that is gone too);
    /// [`Error::RemoteLost`] if the connection to a remote template was
    /// lost before.
    pub async fn shutdown(self) -> Result<std::process::ExitStatus> {
        let conn = self.inner.conn.clone();
        conn.close();
        let ended = conn.ended().await;
        match ended {
            Failure::Gone(Some(status)) | Failure::NotStarted(Some(status)) => return Ok(status),
            lost @ Failure::RemoteLost { .. } => return Err(lost.to_error()),
            _ => {}
        }
        if let Some((_, exit)) = &self.inner.parent {
            let mut exit = exit.clone();
            if let Ok(v) = exit.wait_for(Option::is_some).await
                && let Some(Ok(status)) = v.clone()
            {
                return Ok(status);
            }
        }
        Err(Error::TemplateGone { status: None })
    }

    pub(crate) fn conn(&self) -> &Arc<Conn> {
        &self.inner.conn
    }

    fn prepare(&self, ops: Vec<Op>, fds: Vec<OwnedFd>) -> &Self {
        if let Err(e) = self.inner.conn.send(&Request::Prepare(ops), fds) {
            self.poison(&e);
        }
        self
    }

    fn poison(&self, e: &Error) {
        self.inner.conn.fail(Failure::Protocol(format!(
            "a preparation step could not be sent: {e}"
        )));
    }

    /// Runs an init function inside the template, with `arg` (AnyEvent::Fork's
    /// `eval`/`require`): load data or libraries once, and every process forked
    /// afterwards has them, shared copy-on-write.
    ///
    /// If it fails or panics, the template reports the error and exits:
    /// [`ready`](Template::ready) and later forks return
    /// [`Error::InitFailed`].
    pub fn init<T: Serialize>(&self, init: &InitFn<T>, arg: &T) -> &Self {
        if let Err(e) = init.check() {
            self.poison(&e);
            return self;
        }
        match bincode::serialize(arg) {
            Ok(arg) => self.prepare(
                vec![Op::Init {
                    name: init.name().to_owned(),
                    arg,
                }],
                Vec::new(),
            ),
            Err(e) => {
                self.poison(&Error::Arg {
                    index: 0,
                    message: e.to_string(),
                });
                self
            }
        }
    }

    /// Appends a typed argument (bincode-encoded) to the template's argument
    /// list; every worker forked afterwards receives it (see
    /// [`Context::arg`](crate::Context::arg)).
    pub fn arg<T: Serialize + ?Sized>(&self, arg: &T) -> &Self {
        match bincode::serialize(arg) {
            Ok(bytes) => self.arg_bytes(bytes),
            Err(e) => {
                self.poison(&Error::Arg {
                    index: 0,
                    message: e.to_string(),
                });
                self
            }
        }
    }

    /// Appends raw bytes to the template's argument list.
    pub fn arg_bytes(&self, arg: impl Into<Vec<u8>>) -> &Self {
        self.prepare(vec![Op::Arg(arg.into())], Vec::new())
    }

    /// Sends a duplicate of `fd` to the template; every worker forked
    /// afterwards holds it (see [`Context::fds`](crate::Context::fds)). The
    /// caller keeps its own descriptor.
    ///
    /// A [remote](crate::remote) template cannot receive descriptors: it is
    /// failed with [`Error::RemoteUnsupported`].
    pub fn fd(&self, fd: impl AsFd) -> &Self {
        if self.is_remote() {
            self.inner
                .conn
                .fail(Failure::RemoteUnsupported("passing file descriptors"));
            return self;
        }
        match sys::dup_cloexec(fd.as_fd()) {
            Ok(fd) => self.prepare(vec![Op::Fd], vec![fd]),
            Err(e) => {
                self.poison(&Error::os("duplicating a descriptor to send")(e));
                self
            }
        }
    }

    /// Waits until the template has applied every preparation step sent so
    /// far.
    ///
    /// # Errors
    ///
    /// The error of a failed step ([`Error::InitFailed`] for an init
    /// function), or [`Error::TemplateGone`].
    pub async fn ready(&self) -> Result<()> {
        self.inner.conn.ping().await
    }
}

/// Reaps the template process `pid`, this process's child, once it exits.
fn reap_in_background(pid: u32) {
    let pid = pid as i32;
    tokio::spawn(async move {
        let _ = super::conn::reap_child(pid).await;
    });
}
