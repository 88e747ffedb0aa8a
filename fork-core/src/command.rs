//! Executing external commands from a template: the fast `fork` + `exec`.

use std::ffi::OsString;
use std::os::fd::AsFd;
use std::path::PathBuf;

use std::os::fd::OwnedFd;

use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe::Receiver;

use crate::error::Result;
use crate::fork::Fork;
use crate::proto::ExecSpec;
use crate::sys;
use crate::template::Template;
use crate::worker::Worker;

impl Template {
    /// Starts building a command to execute in a process forked from this
    /// template: `fork` + `exec` without forking the (possibly big) parent.
    pub fn command(&self, program: impl Into<OsString>) -> Command {
        Command::new(self.fork(), program.into())
    }
}

/// A command to execute in a process forked from a template, like
/// [`std::process::Command`], made with [`Template::command`](crate::Template::command).
///
/// The big parent never forks: the small template does, and the child calls
/// `execvp`. Standard streams default to the template's (stdin is
/// `/dev/null`, stdout and stderr are the parent's at template creation);
/// [`stdin`](Command::stdin), [`stdout`](Command::stdout) and
/// [`stderr`](Command::stderr) redirect them to descriptors sent from here.
/// The environment is the template's unless changed.
///
/// Descriptors are passed as they are. `O_NONBLOCK` belongs to the open file
/// description, which the parent and the command share, so a non-blocking
/// descriptor (a tokio pipe, say) stays non-blocking in the command, which
/// most programs do not expect (`tr: write error: Resource temporarily
/// unavailable`). Pass blocking descriptors (`std::io::pipe`, or tokio's
/// `into_blocking_fd`), or let [`output`](Command::output) make the pipes.
///
/// # Examples
///
/// ```no_run
/// # async fn demo(template: fork_core::Template) -> fork_core::Result<()> {
/// let (reader, writer) = std::io::pipe()?;
/// let mut child = template.command("echo").arg("hi").stdout(&writer).spawn().await?;
/// drop(writer);
/// assert!(child.wait().await?.success());
/// let out = std::io::read_to_string(reader)?;
/// assert_eq!(out, "hi\n");
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "a Command does nothing until spawn() is awaited"]
pub struct Command {
    fork: Fork,
    spec: ExecSpec,
}

impl Command {
    pub(crate) fn new(fork: Fork, program: OsString) -> Command {
        Command {
            fork,
            spec: ExecSpec {
                program: sys::os_bytes(&program),
                ..ExecSpec::default()
            },
        }
    }

    /// Adds an argument.
    pub fn arg(&mut self, arg: impl Into<OsString>) -> &mut Self {
        self.spec.args.push(sys::os_bytes(&arg.into()));
        self
    }

    /// Adds arguments.
    pub fn args<I, S>(&mut self, args: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        for a in args {
            self.arg(a);
        }
        self
    }

    /// Sets an environment variable.
    pub fn env(&mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> &mut Self {
        self.spec.env.push((
            sys::os_bytes(&key.into()),
            Some(sys::os_bytes(&value.into())),
        ));
        self
    }

    /// Removes an environment variable.
    pub fn env_remove(&mut self, key: impl Into<OsString>) -> &mut Self {
        self.spec.env.push((sys::os_bytes(&key.into()), None));
        self
    }

    /// Starts from an empty environment.
    pub fn env_clear(&mut self) -> &mut Self {
        self.spec.env_clear = true;
        self.spec.env.clear();
        self
    }

    /// Sets the working directory.
    pub fn current_dir(&mut self, dir: impl Into<PathBuf>) -> &mut Self {
        self.spec.cwd = Some(sys::os_bytes(dir.into().as_os_str()));
        self
    }

    fn stdio(&mut self, slot: usize, fd: impl AsFd) -> &mut Self {
        self.spec.stdio[slot] = Some(self.fork.fd_count() as u32);
        self.fork.fd(fd);
        self
    }

    /// Redirects standard input from a duplicate of `fd`.
    pub fn stdin(&mut self, fd: impl AsFd) -> &mut Self {
        self.stdio(0, fd)
    }

    /// Redirects standard output to a duplicate of `fd`.
    pub fn stdout(&mut self, fd: impl AsFd) -> &mut Self {
        self.stdio(1, fd)
    }

    /// Redirects standard error to a duplicate of `fd`.
    pub fn stderr(&mut self, fd: impl AsFd) -> &mut Self {
        self.stdio(2, fd)
    }

    /// Kill the process when the returned [`Worker`] is dropped.
    pub fn kill_on_drop(&mut self, kill: bool) -> &mut Self {
        self.fork.kill_on_drop(kill);
        self
    }

    /// Runs the command to completion and collects its output, like
    /// [`std::process::Command::output`]: standard output and error are
    /// captured through pipes unless they were redirected with
    /// [`stdout`](Command::stdout) or [`stderr`](Command::stderr).
    ///
    /// # Errors
    ///
    /// As [`spawn`](Command::spawn), and I/O errors reading the pipes.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(template: fork_core::Template) -> fork_core::Result<()> {
    /// let out = template.command("sh").args(["-c", "echo hi; echo oops >&2; exit 3"]).output().await?;
    /// assert_eq!(out.status.code(), Some(3));
    /// assert_eq!(out.stdout, b"hi\n");
    /// assert_eq!(out.stderr, b"oops\n");
    /// # Ok(()) }
    /// ```
    pub async fn output(&mut self) -> Result<std::process::Output> {
        let mut capture = |slot: usize| -> Result<Option<Receiver>> {
            if self.spec.stdio[slot].is_some() {
                return Ok(None);
            }
            let (reader, writer) = std::io::pipe()?;
            self.stdio(slot, &writer);
            // Only the reader (its own file description) becomes non-blocking.
            Ok(Some(Receiver::from_owned_fd(OwnedFd::from(reader))?))
        };
        let stdout = capture(1)?;
        let stderr = capture(2)?;
        let mut child = self.spawn().await?;
        let (stdout, stderr, status) =
            tokio::try_join!(read_all(stdout), read_all(stderr), child.wait())?;
        Ok(std::process::Output {
            status,
            stdout,
            stderr,
        })
    }

    /// Forks from the template and executes the command. Resolves once
    /// `exec` succeeded; the returned [`Worker`] has no stream, and
    /// [`Worker::wait`] gives the command's exit status. Cancel-safe as
    /// [`Fork::run`](crate::Fork::run): given up on before it returns, it
    /// kills the process.
    ///
    /// # Errors
    ///
    /// [`Error::Exec`](crate::Error::Exec) if the program cannot be executed
    /// (not found, not executable, ...), with the OS error;
    /// [`Error::Fork`](crate::Error::Fork) and
    /// [`Error::TemplateGone`](crate::Error::TemplateGone) as for
    /// [`Fork::run`].
    pub async fn spawn(&mut self) -> Result<Worker> {
        let spec = self.spec.clone();
        self.fork.exec(spec).await
    }
}

async fn read_all(pipe: Option<Receiver>) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    if let Some(mut pipe) = pipe {
        pipe.read_to_end(&mut buf).await?;
    }
    Ok(buf)
}
