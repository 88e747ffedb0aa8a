//! Templates: small single-threaded processes that fork workers on request.

pub(crate) mod conn;
pub(crate) mod serve;

use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::io::AsyncReadExt;

use self::conn::{Conn, ExitWatch};
use crate::command::Command;
use crate::entry::{Entry, InitFn};
use crate::error::{Error, Failure, Result};
use crate::proto::{self, Ack, ExecSpec, Op, Request, Then};
use crate::sys;
use crate::worker::Worker;

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
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.conn.close();
    }
}

enum Early {
    None,
    Started { fd: OwnedFd, pid: i32 },
    Live(Template),
}

static EARLY: Mutex<Early> = Mutex::new(Early::None);
static SHARED: Mutex<Option<Template>> = Mutex::new(None);

pub(crate) fn set_early(fd: OwnedFd, pid: i32) {
    *EARLY.lock().unwrap_or_else(|p| p.into_inner()) = Early::Started { fd, pid };
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
        if !crate::init::initialized() {
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

    fn from_conn(fd: OwnedFd, pid: u32, parent: Option<(Template, ExitWatch)>) -> Result<Template> {
        let reap = if parent.is_none() {
            Some(pid as i32)
        } else {
            None
        };
        let conn = Conn::start(fd, reap)?;
        Ok(Template {
            inner: Arc::new(Handle { conn, pid, parent }),
        })
    }

    /// The program-wide default template (AnyEvent::Fork's `new`): the early
    /// template if there is one, otherwise a template started with
    /// [`Template::new`] on first use and kept for the life of the program.
    /// If it died, a new one is started.
    ///
    /// Do not prepare the shared template with state only one part of the
    /// program wants; make your own with [`Template::new`] instead.
    ///
    /// # Errors
    ///
    /// As [`Template::new`].
    pub fn shared() -> Result<Template> {
        let mut shared = SHARED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = &*shared
            && t.is_alive()
        {
            return Ok(t.clone());
        }
        let t = match Template::early() {
            Ok(t) if t.is_alive() => t,
            _ => Template::new()?,
        };
        *shared = Some(t.clone());
        Ok(t)
    }

    /// The early template: a copy of this program forked by
    /// [`Init::early_template`](crate::Init::early_template) at the top of
    /// `main`, before any thread existed (AnyEvent::Fork::Early). Creating
    /// workers from it costs no `exec`, and it holds whatever `main` had
    /// set up before `init` (usually nothing).
    ///
    /// Every call returns a handle to the same process.
    ///
    /// # Errors
    ///
    /// [`Error::NoEarlyTemplate`] if none was requested,
    /// [`Error::NoRuntime`] outside a tokio runtime.
    pub fn early() -> Result<Template> {
        let mut early = EARLY.lock().unwrap_or_else(|p| p.into_inner());
        match &*early {
            Early::None => Err(Error::NoEarlyTemplate),
            Early::Live(t) => Ok(t.clone()),
            Early::Started { .. } => {
                tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
                let Early::Started { fd, pid } = std::mem::replace(&mut *early, Early::None) else {
                    unreachable!()
                };
                let t = Template::from_conn(fd, pid as u32, None)?;
                *early = Early::Live(t.clone());
                Ok(t)
            }
        }
    }

    /// The template's process id.
    pub fn id(&self) -> u32 {
        self.inner.pid
    }

    /// `false` once the template is known to be gone or failed.
    pub fn is_alive(&self) -> bool {
        self.inner.conn.failure().is_none()
    }

    /// Closes the template now and waits for it to exit: it kills and reaps
    /// every worker it forked (their [`Worker::wait`] then fails with
    /// [`Error::TemplateGone`]), and the parent reaps it. Other handles to it
    /// see it as gone.
    ///
    /// Dropping the last handle closes a template too, but in the background;
    /// `shutdown` is for a clean stop, such as the end of a program or test.
    ///
    /// # Errors
    ///
    /// [`Error::TemplateGone`] if its exit status cannot be observed (for a
    /// template forked from another one that is gone too).
    pub async fn shutdown(self) -> Result<std::process::ExitStatus> {
        let conn = self.inner.conn.clone();
        conn.close();
        let ended = conn.ended().await;
        if let Failure::Gone(Some(status)) | Failure::NotStarted(Some(status)) = ended {
            return Ok(status);
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
    pub fn fd(&self, fd: impl AsFd) -> &Self {
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

    /// Starts building a process forked from this template (AnyEvent::Fork's
    /// `fork`). Nothing is sent until [`Fork::run`] or [`Fork::template`].
    pub fn fork(&self) -> Fork {
        Fork {
            template: self.clone(),
            ops: Vec::new(),
            fds: Vec::new(),
            error: None,
            started: false,
            kill_on_drop: false,
        }
    }

    /// Starts building a command to execute in a process forked from this
    /// template: `fork` + `exec` without forking the (possibly big) parent.
    pub fn command(&self, program: impl Into<OsString>) -> Command {
        Command::new(self.fork(), program.into())
    }
}

/// A process to fork from a [`Template`], being prepared.
///
/// Steps queued here apply only to the new process, after what it inherits
/// from the template. Builder methods record errors instead of returning them;
/// the first one is returned by [`run`](Fork::run) or
/// [`template`](Fork::template), as with `std::process::Command`.
#[derive(Debug)]
#[must_use = "a Fork does nothing until run() or template() is awaited"]
pub struct Fork {
    template: Template,
    ops: Vec<Op>,
    fds: Vec<OwnedFd>,
    error: Option<Error>,
    started: bool,
    kill_on_drop: bool,
}

impl Fork {
    fn record(&mut self, e: Error) -> &mut Self {
        self.error.get_or_insert(e);
        self
    }

    /// Appends a typed argument (bincode-encoded); the entry reads it with
    /// [`Context::arg`](crate::Context::arg).
    pub fn arg<T: Serialize + ?Sized>(&mut self, arg: &T) -> &mut Self {
        match bincode::serialize(arg) {
            Ok(bytes) => self.arg_bytes(bytes),
            Err(e) => {
                let index = self.ops.len();
                self.record(Error::Arg {
                    index,
                    message: e.to_string(),
                })
            }
        }
    }

    /// Appends raw bytes as an argument.
    pub fn arg_bytes(&mut self, arg: impl Into<Vec<u8>>) -> &mut Self {
        self.ops.push(Op::Arg(arg.into()));
        self
    }

    /// Sends a duplicate of `fd` to the new process (the caller keeps its
    /// own). It arrives close-on-exec, after the template's descriptors.
    pub fn fd(&mut self, fd: impl AsFd) -> &mut Self {
        match sys::dup_cloexec(fd.as_fd()) {
            Ok(fd) => {
                self.ops.push(Op::Fd);
                self.fds.push(fd);
                self
            }
            Err(e) => self.record(Error::os("duplicating a descriptor to send")(e)),
        }
    }

    /// Runs an init function in the new process before its entry starts. A
    /// failure is returned by [`run`](Fork::run) as [`Error::InitFailed`].
    pub fn init<T: Serialize>(&mut self, init: &InitFn<T>, arg: &T) -> &mut Self {
        if let Err(e) = init.check() {
            return self.record(e);
        }
        match bincode::serialize(arg) {
            Ok(arg) => {
                self.ops.push(Op::Init {
                    name: init.name().to_owned(),
                    arg,
                });
                self
            }
            Err(e) => self.record(Error::Arg {
                index: 0,
                message: e.to_string(),
            }),
        }
    }

    /// Kill the worker (`SIGKILL`) when its [`Worker`] handle is dropped. Off
    /// by default: a dropped handle leaves the worker running (until its
    /// template goes away). A worker whose [`run`](Fork::run) was given up on
    /// before it returned the handle is killed either way.
    pub fn kill_on_drop(&mut self, kill: bool) -> &mut Self {
        self.kill_on_drop = kill;
        self
    }

    fn take(&mut self) -> Result<(Vec<Op>, Vec<OwnedFd>)> {
        if self.started {
            return Err(Error::AlreadyStarted);
        }
        self.started = true;
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        Ok((std::mem::take(&mut self.ops), std::mem::take(&mut self.fds)))
    }

    /// Forks the process and hands it over to `entry`, with its socket,
    /// arguments and descriptors (AnyEvent::Fork's `run`).
    ///
    /// Resolves once the template reported the new pid (and, if init
    /// functions were queued here, once they succeeded in the new process).
    ///
    /// Cancel-safe: if the future is dropped before it resolves (as by a
    /// timeout around a slow init function), the process it forked is
    /// killed, whatever [`kill_on_drop`](Fork::kill_on_drop) says, since no
    /// one could reach it. The same holds for an error after the fork.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownEntry`]/[`Error::DuplicateEntry`] for an entry that
    /// is not registered exactly once, [`Error::Fork`] if `fork()` failed in
    /// the template, [`Error::InitFailed`] if an init function failed (in the
    /// template or here), [`Error::TemplateGone`], or the first error a
    /// builder method recorded.
    pub async fn run(&mut self, entry: &Entry) -> Result<Worker> {
        entry.check()?;
        let (ops, fds) = self.take()?;
        let ack = ops.iter().any(|op| matches!(op, Op::Init { .. }));
        let (ours, theirs) =
            UnixStream::pair().map_err(Error::os("creating the worker's socket pair"))?;
        let spawned = self
            .template
            .conn()
            .spawn(
                ack,
                ops,
                Then::Run(entry.name().to_owned()),
                theirs.into(),
                fds,
            )
            .await?;
        // Until this returns it, the worker is killed if the call is given
        // up on (an error, or this future dropped while init functions run).
        let worker = Worker::starting(spawned, self.template.clone());
        let mut stream = tokio_stream(ours)?;
        if ack {
            match read_ack(&mut stream).await? {
                Some(Ack::Ready) => {}
                Some(Ack::InitFailed { name, message }) => {
                    return Err(Error::InitFailed { name, message });
                }
                Some(Ack::ExecFailed(_)) => {
                    return Err(Error::Protocol("unexpected exec report".into()));
                }
                None => return Err(exited_early(worker.exit_watch()).await),
            }
        }
        Ok(worker.started(Some(stream), self.kill_on_drop))
    }

    /// Forks the process and makes it a new template, which inherits
    /// everything the parent template had plus what was queued here.
    /// (AnyEvent::Fork: `$template->fork` used as a template.)
    ///
    /// # Errors
    ///
    /// As [`Fork::run`]; a failing init function queued here fails the new
    /// template (see [`Template::ready`]).
    pub async fn template(&mut self) -> Result<Template> {
        let (ops, fds) = self.take()?;
        let (ours, theirs) = sys::seqpacket_pair()
            .map_err(Error::os("creating the new template's control socket pair"))?;
        let spawned = self
            .template
            .conn()
            .spawn(false, ops, Then::Template, theirs, fds)
            .await?;
        Template::from_conn(
            ours,
            spawned.pid as u32,
            Some((self.template.clone(), spawned.exit)),
        )
    }

    /// Forks the process and executes a command in it.
    pub(crate) async fn exec(&mut self, spec: ExecSpec) -> Result<Worker> {
        let program = String::from_utf8_lossy(&spec.program).into_owned();
        let (ops, fds) = self.take()?;
        let (ours, theirs) =
            UnixStream::pair().map_err(Error::os("creating the worker's socket pair"))?;
        let spawned = self
            .template
            .conn()
            .spawn(true, ops, Then::Exec(spec), theirs.into(), fds)
            .await?;
        let worker = Worker::starting(spawned, self.template.clone());
        let mut stream = tokio_stream(ours)?;
        match read_ack(&mut stream).await? {
            // The socket is close-on-exec: EOF means exec succeeded.
            None => Ok(worker.started(None, self.kill_on_drop)),
            Some(Ack::ExecFailed(errno)) => Err(Error::Exec {
                program,
                source: std::io::Error::from_raw_os_error(errno),
            }),
            Some(Ack::InitFailed { name, message }) => Err(Error::InitFailed { name, message }),
            Some(Ack::Ready) => Err(Error::Protocol("unexpected ready report".into())),
        }
    }

    pub(crate) fn fd_count(&self) -> usize {
        self.fds.len()
    }
}

/// The parent's end of a worker's socket, non-blocking, for tokio.
fn tokio_stream(ours: UnixStream) -> Result<tokio::net::UnixStream> {
    ours.set_nonblocking(true)
        .map_err(Error::os("making the worker's socket non-blocking"))?;
    tokio::net::UnixStream::from_std(ours)
        .map_err(Error::os("registering the worker's socket with tokio"))
}

/// Reads the report a forked process writes before it starts; `None` on EOF.
async fn read_ack(stream: &mut tokio::net::UnixStream) -> Result<Option<Ack>> {
    let mut head = [0u8; proto::ACK_HEADER];
    if stream.read(&mut head[..1]).await? == 0 {
        return Ok(None);
    }
    stream.read_exact(&mut head[1..]).await?;
    let (status, len) = Ack::decode_header(head).map_err(|e| Error::Protocol(e.0))?;
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await?;
    Ack::decode_body(status, &body)
        .map(Some)
        .map_err(|e| Error::Protocol(e.0))
}

/// The error for a process that closed its socket before reporting.
async fn exited_early(mut exit: ExitWatch) -> Error {
    match exit.wait_for(Option::is_some).await {
        Ok(v) => match v.clone() {
            Some(Ok(status)) => Error::Exited(status),
            Some(Err(f)) => f.to_error(),
            None => Error::TemplateGone { status: None },
        },
        Err(_) => Error::TemplateGone { status: None },
    }
}
