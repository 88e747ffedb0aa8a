//! [`CommandConnector`]: any local command that gives stdio.

use std::ffi::OsString;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{ExitStatus, Stdio};

use tokio::net::unix::pipe;

use super::connector::{BoxFuture, Connection, Connector, RemoteCommand, Session};
use crate::sys;

/// A [`Connector`] that runs a local command with the remote command
/// appended: `ssh host`, `docker exec -i container`, `kubectl exec -i pod
/// --`, or a plain local command (`env -i`, `sh -c 'exec "$@"' sh`) for
/// tests. Its stdin and stdout are the connection; its stderr is this
/// process's.
///
/// The command runs in a process group of its own (Ctrl-C in a terminal
/// does not reach it: the parent decides when it ends, by closing its
/// input).
///
/// # Examples
///
/// ```no_run
/// use fork_core::Template;
/// use fork_core::remote::CommandConnector;
///
/// # async fn demo() -> fork_core::Result<()> {
/// // The same binary, started as a "remote" template by a local command.
/// let template = Template::remote(CommandConnector::new("env").arg("-i")).start().await?;
///
/// // Over ssh, the remote command is one shell line.
/// let ssh = CommandConnector::new("ssh").args(["-T", "-o", "BatchMode=yes", "build-1"]).shell_line(true);
/// let remote = Template::remote(ssh).program("/opt/app/bin/app").start().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct CommandConnector {
    program: OsString,
    args: Vec<OsString>,
    shell_line: bool,
}

impl CommandConnector {
    /// Runs `program` with the remote command appended as arguments.
    pub fn new(program: impl Into<OsString>) -> CommandConnector {
        CommandConnector {
            program: program.into(),
            args: Vec::new(),
            shell_line: false,
        }
    }

    /// Adds an argument before the remote command.
    pub fn arg(mut self, arg: impl Into<OsString>) -> CommandConnector {
        self.args.push(arg.into());
        self
    }

    /// Adds arguments before the remote command.
    pub fn args<I, S>(mut self, args: I) -> CommandConnector
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Appends the remote command as one shell-quoted argument
    /// ([`RemoteCommand::shell_line`]) instead of one argument per word: for
    /// `ssh`, which hands its command line to a shell on the other side.
    /// Off by default.
    pub fn shell_line(mut self, on: bool) -> CommandConnector {
        self.shell_line = on;
        self
    }

    fn spawn(&self, command: &RemoteCommand) -> io::Result<Connection> {
        let mut cmd = std::process::Command::new(&self.program);
        cmd.args(&self.args);
        if self.shell_line {
            cmd.arg(command.shell_line());
        } else {
            cmd.arg(command.program()).args(command.args());
        }
        let mut child = cmd
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdin = OwnedFd::from(child.stdin.take().expect("piped"));
        let stdout = OwnedFd::from(child.stdout.take().expect("piped"));
        let pid = child.id() as i32;
        // Reaped by `ChildSession::wait` (on a pidfd), not through `child`.
        drop(child);
        let session = ChildSession { pid, reaped: None };
        let writer = pipe::Sender::from_owned_fd(stdin);
        let reader = pipe::Receiver::from_owned_fd(stdout);
        match (reader, writer) {
            (Ok(r), Ok(w)) => Ok(Connection::new(r, w, session)),
            (Err(e), _) | (_, Err(e)) => {
                let mut session = session;
                let _ = session.start_kill();
                tokio::spawn(async move {
                    let _ = session.wait().await;
                });
                Err(e)
            }
        }
    }
}

impl Connector for CommandConnector {
    fn connect<'a>(&'a self, command: &'a RemoteCommand) -> BoxFuture<'a, io::Result<Connection>> {
        Box::pin(async move { self.spawn(command) })
    }

    /// The command line before the remote command: `ssh -T build-1`.
    fn name(&self) -> String {
        std::iter::once(&self.program)
            .chain(&self.args)
            .map(|w| w.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// A local child process as a [`Session`].
#[derive(Debug)]
struct ChildSession {
    pid: i32,
    /// Its status once reaped (its pid may then belong to another process).
    reaped: Option<ExitStatus>,
}

impl Session for ChildSession {
    fn start_kill(&mut self) -> io::Result<()> {
        if self.reaped.is_some() {
            return Ok(());
        }
        // Not reaped yet: the pid is still this child's.
        sys::kill(self.pid, libc::SIGKILL)
    }

    fn wait(&mut self) -> BoxFuture<'_, io::Result<Option<ExitStatus>>> {
        Box::pin(async move {
            if self.reaped.is_none() {
                let status = crate::template::conn::reap_child(self.pid).await?;
                self.reaped = Some(ExitStatus::from_raw(status));
            }
            Ok(self.reaped)
        })
    }
}

impl Drop for ChildSession {
    fn drop(&mut self) {
        if self.reaped.is_none() {
            // Not waited for: reap it in the background, so it leaves no
            // zombie (its stream is closed, so it ends).
            let pid = self.pid;
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = crate::template::conn::reap_child(pid).await;
                });
            }
        }
    }
}
