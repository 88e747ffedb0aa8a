//! Forking from a template: the [`Fork`] builder, and what a forked process
//! reports before its entry starts.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use serde::Serialize;
use tokio::io::AsyncReadExt;

use crate::entry::{Entry, InitFn};
use crate::error::{Error, Result};
use crate::proto::{self, Ack, ExecSpec, Op, Then};
use crate::sys;
use crate::template::Template;
use crate::template::conn::ExitWatch;
use crate::worker::Worker;

impl Template {
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
    ///
    /// Descriptors cannot be sent to a [remote](crate::remote) template's
    /// process: [`run`](Fork::run) then fails with
    /// [`Error::RemoteUnsupported`].
    pub fn fd(&mut self, fd: impl AsFd) -> &mut Self {
        if self.template.is_remote() {
            return self.record(Error::RemoteUnsupported {
                what: "passing file descriptors",
            });
        }
        match sys::dup_cloexec(fd.as_fd()) {
            Ok(fd) => {
                self.ops.push(Op::Fd);
                self.fds.push(fd);
                self
            }
            Err(e) => self.record(Error::os("duplicating a descriptor to send")(e)),
        }
    }

    /// Whether this fork goes to a [remote template](crate::remote), where
    /// descriptors cannot travel: a layer that would pass some (in its
    /// [`slot`](Fork::slot)) does without them.
    pub fn is_remote(&self) -> bool {
        self.template.is_remote()
    }

    /// Sends data and descriptors to the code that runs the entry in the new
    /// process, apart from its arguments and descriptors: for a layer built
    /// on fork-core that wraps entries (fork-rpc sends its configuration and
    /// a descriptor channel this way), so that the entry's user keeps
    /// [`arg`](Fork::arg) and [`fd`](Fork::fd) to themselves. The worker
    /// takes it with [`Context::take_slot`](crate::Context::take_slot).
    /// Calling it again adds to the slot. The descriptors are duplicated
    /// (the caller keeps its own), as with [`fd`](Fork::fd). For a
    /// [remote](crate::remote) template they cannot cross: the process gets,
    /// in their place, sockets whose peer is closed.
    pub fn slot(&mut self, data: impl Into<Vec<u8>>, fds: &[BorrowedFd<'_>]) -> &mut Self {
        self.ops.push(Op::SlotData(data.into()));
        for fd in fds {
            match sys::dup_cloexec(*fd) {
                Ok(fd) => {
                    self.ops.push(Op::SlotFd);
                    self.fds.push(fd);
                }
                Err(e) => return self.record(Error::os("duplicating a descriptor to send")(e)),
            }
        }
        self
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
        let (ours, theirs) = self.template.worker_socket().await?;
        let spawned = self
            .template
            .conn()
            .spawn(ack, ops, Then::Run(entry.name().to_owned()), theirs, fds)
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
    /// template (see [`Template::ready`]). [`Error::RemoteUnsupported`] from
    /// a [remote](crate::remote) template.
    pub async fn template(&mut self) -> Result<Template> {
        if self.template.is_remote() {
            return Err(Error::RemoteUnsupported {
                what: "forking a template from a remote template",
            });
        }
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
        let (ours, theirs) = self.template.worker_socket().await?;
        let spawned = self
            .template
            .conn()
            .spawn(true, ops, Then::Exec(spec), theirs, fds)
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

    /// How many descriptors the process will have from here (the slot's
    /// not counted): the index of the next one sent with [`fd`](Fork::fd).
    pub(crate) fn fd_count(&self) -> usize {
        self.ops.iter().filter(|op| matches!(op, Op::Fd)).count()
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
