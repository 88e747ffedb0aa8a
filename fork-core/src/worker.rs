//! The parent's handle to a forked worker.

use std::process::ExitStatus;

use tokio::net::UnixStream;

use crate::Signal;
use crate::error::{Error, Result};
use crate::template::Template;
use crate::template::conn::{ExitWatch, Spawned};

/// A worker process forked from a [`Template`], like
/// [`tokio::process::Child`](https://docs.rs/tokio/latest/tokio/process/struct.Child.html).
///
/// The worker is a child of the template, not of this process; the template
/// reaps it and reports its exit status, so [`wait`](Worker::wait) works all
/// the same and no zombie is left behind, whatever happens to this handle.
///
/// # Caveats
///
/// Dropping the handle does not kill the worker unless
/// [`Fork::kill_on_drop`](crate::Fork::kill_on_drop) was set. A worker lives
/// at most as long as its template, which lives as long as a handle to it or
/// to one of its workers exists (and as long as this process lives).
#[derive(Debug)]
pub struct Worker {
    pid: u32,
    stream: Option<UnixStream>,
    exit: ExitWatch,
    template: Template,
    kill_on_drop: bool,
}

impl Worker {
    /// A process just forked, not yet handed to the caller: killed if
    /// dropped (the call that forked it gave up) until [`started`](Self::started).
    pub(crate) fn starting(spawned: Spawned, template: Template) -> Worker {
        Worker {
            pid: spawned.pid as u32,
            stream: None,
            exit: spawned.exit,
            template,
            kill_on_drop: true,
        }
    }

    /// The worker as handed to the caller, with its socket and the caller's
    /// choice of `kill_on_drop`.
    pub(crate) fn started(mut self, stream: Option<UnixStream>, kill_on_drop: bool) -> Worker {
        self.stream = stream;
        self.kill_on_drop = kill_on_drop;
        self
    }

    pub(crate) fn exit_watch(&self) -> ExitWatch {
        self.exit.clone()
    }

    /// The worker's process id.
    pub fn id(&self) -> u32 {
        self.pid
    }

    /// The template this worker was forked from.
    pub fn template(&self) -> &Template {
        &self.template
    }

    /// The parent's end of the worker's socket: a non-blocking, close-on-exec
    /// tokio `UnixStream`. `None` once taken, and for executed commands.
    pub fn stream(&mut self) -> Option<&mut UnixStream> {
        self.stream.as_mut()
    }

    /// Takes the parent's end of the socket out of the handle.
    pub fn take_stream(&mut self) -> Option<UnixStream> {
        self.stream.take()
    }

    /// A cloneable handle to wait for this worker and signal it from
    /// elsewhere (another task), while this `Worker` keeps the socket.
    pub fn handle(&self) -> WorkerHandle {
        WorkerHandle {
            pid: self.pid,
            exit: self.exit.clone(),
            template: self.template.clone(),
        }
    }

    /// Waits for the worker to exit and returns its status (exit code or
    /// signal, as reported by the template that reaped it).
    ///
    /// # Errors
    ///
    /// [`Error::TemplateGone`] if the template died first: the worker was
    /// killed with it and its status is lost.
    pub async fn wait(&mut self) -> Result<ExitStatus> {
        self.handle().wait().await
    }

    /// Returns the exit status if the worker has exited, without waiting.
    ///
    /// # Errors
    ///
    /// As [`wait`](Worker::wait).
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        self.handle().try_wait()
    }

    /// Sends `signal` to the worker (through its template, so a reused pid is
    /// never hit). Does nothing once the worker has exited.
    ///
    /// ```no_run
    /// # async fn doc(worker: fork_core::Worker) -> fork_core::Result<()> {
    /// use fork_core::Signal;
    ///
    /// worker.signal(Signal::SIGTERM)?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::TemplateGone`] if the template is gone.
    pub fn signal(&self, signal: Signal) -> Result<()> {
        if self.exit.borrow().is_some() {
            return Ok(());
        }
        self.template.conn().signal(self.pid as i32, signal as i32)
    }

    /// Sends `SIGKILL` without waiting (like `tokio::process::Child::start_kill`).
    ///
    /// # Errors
    ///
    /// As [`signal`](Worker::signal).
    pub fn start_kill(&mut self) -> Result<()> {
        self.signal(Signal::SIGKILL)
    }

    /// Kills the worker and waits for it to be reaped.
    ///
    /// # Errors
    ///
    /// As [`wait`](Worker::wait).
    pub async fn kill(&mut self) -> Result<()> {
        self.start_kill()?;
        self.wait().await.map(drop)
    }
}

fn status(v: Option<Result<ExitStatus, crate::error::Failure>>) -> Result<ExitStatus> {
    match v {
        Some(Ok(s)) => Ok(s),
        Some(Err(f)) => Err(f.to_error()),
        None => Err(Error::TemplateGone { status: None }),
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if self.kill_on_drop {
            let _ = self.start_kill();
        }
    }
}

/// A cloneable handle to a worker: wait for it, signal it. Made by
/// [`Worker::handle`]; it keeps the template alive like the `Worker` does.
#[derive(Debug, Clone)]
pub struct WorkerHandle {
    pid: u32,
    exit: ExitWatch,
    template: Template,
}

impl WorkerHandle {
    /// The worker's process id.
    pub fn id(&self) -> u32 {
        self.pid
    }

    /// Sends `signal` to the worker, as [`Worker::signal`].
    ///
    /// # Errors
    ///
    /// As [`Worker::signal`].
    pub fn signal(&self, signal: Signal) -> Result<()> {
        if self.exit.borrow().is_some() {
            return Ok(());
        }
        self.template.conn().signal(self.pid as i32, signal as i32)
    }

    /// Sends `SIGKILL` without waiting, as [`Worker::start_kill`].
    ///
    /// # Errors
    ///
    /// As [`Worker::signal`].
    pub fn start_kill(&self) -> Result<()> {
        self.signal(Signal::SIGKILL)
    }

    /// Waits for the worker to exit, as [`Worker::wait`].
    ///
    /// # Errors
    ///
    /// As [`Worker::wait`].
    pub async fn wait(&mut self) -> Result<ExitStatus> {
        match self.exit.wait_for(Option::is_some).await {
            Ok(v) => status(v.clone()),
            Err(_) => Err(Error::TemplateGone { status: None }),
        }
    }

    /// The exit status if the worker has exited, as [`Worker::try_wait`].
    ///
    /// # Errors
    ///
    /// As [`Worker::wait`].
    pub fn try_wait(&self) -> Result<Option<ExitStatus>> {
        match self.exit.borrow().clone() {
            None => Ok(None),
            v => status(v).map(Some),
        }
    }
}
