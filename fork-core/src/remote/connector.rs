//! The transport seam: a [`Connector`] runs a command somewhere and hands
//! back its standard input and output as a [`Connection`].

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::future::Future;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::pin::Pin;
use std::process::ExitStatus;

use tokio::io::{AsyncRead, AsyncWrite};

use super::stream::{BoxRead, BoxWrite};

/// A boxed future, as [`Connector`] and [`Session`] return them (they are
/// object-safe, so that a pool can hold connectors of different kinds).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Starts a program somewhere (another host over ssh, a container, a local
/// command) with its standard input and output connected to this process:
/// how a [remote template](crate::Template::remote) is reached.
///
/// fork-core speaks its protocol over those two streams and needs nothing
/// else from the transport: the workers' streams travel as channels of it.
/// A transport that can also forward unix sockets (ssh can) may offer that
/// with [`forward`](Connector::forward): each worker's stream then gets a
/// connection of its own, which is faster (no relay on either side). The
/// program's standard error is the transport's business (ssh and the
/// [`CommandConnector`](super::CommandConnector) pass it through to this
/// process's).
///
/// # Implementing
///
/// `connect` runs `command` (its program and arguments, to be passed as they
/// are; see [`RemoteCommand::shell_line`] for transports that take one
/// string) and returns a [`Connection`]: the program's stdout to read, its
/// stdin to write, and a [`Session`] to end and reap the transport. The
/// program must get its stdin and stdout as a pipe or a socket (not a
/// terminal: no `ssh -t`).
///
/// ```
/// use fork_core::remote::{BoxFuture, CommandConnector, Connection, Connector, RemoteCommand};
///
/// /// Runs the remote template in a docker container.
/// #[derive(Debug)]
/// struct Docker { container: String }
///
/// impl Connector for Docker {
///     fn connect<'a>(&'a self, command: &'a RemoteCommand) -> BoxFuture<'a, std::io::Result<Connection>> {
///         let inner = CommandConnector::new("docker")
///             .args(["exec", "-i", self.container.as_str()]);
///         Box::pin(async move { inner.connect(command).await })
///     }
/// }
/// ```
pub trait Connector: Send + Sync + fmt::Debug {
    /// Runs `command` and connects to its standard input and output.
    ///
    /// # Errors
    ///
    /// If the transport or the command cannot be started.
    fn connect<'a>(&'a self, command: &'a RemoteCommand) -> BoxFuture<'a, io::Result<Connection>>;

    /// The name of the host (or container) this connector reaches, for
    /// [`Template::host`](crate::Template::host) and the errors that name
    /// it ([`Error::RemoteLost`](crate::Error::RemoteLost)), unless
    /// [`RemoteBuilder::name`](super::RemoteBuilder::name) gives another.
    /// The default is the connector's type name;
    /// [`CommandConnector`](super::CommandConnector) gives its command line,
    /// `SshConnector` (feature `openssh`) its destination.
    fn name(&self) -> String {
        std::any::type_name::<Self>().to_string()
    }

    /// Optional: makes a unix socket here whose every connection the
    /// transport carries to the unix socket `remote` on the other side
    /// (`ssh -L here:remote`). A remote template started through this
    /// connector then asks for it once, right after the greeting (the
    /// remote side listens at `remote` in a directory only this user can
    /// enter), checks it with one connection, and from then on each
    /// worker's stream is a connection of its own through it instead of a
    /// channel of the command's stdio: no relay on either side, and the
    /// transport's own flow control. The stream works the same either way.
    ///
    /// Called only if [`forwards`](Connector::forwards) says `true`.
    /// `Ok(None)`, the default, means the transport cannot forward; an
    /// error, or a forward that fails the check, is logged and the
    /// template uses channels of its stdio instead.
    /// [`RemoteBuilder::forward_streams`](super::RemoteBuilder::forward_streams)
    /// turns the request off.
    ///
    /// # Errors
    ///
    /// If the forward cannot be set up.
    fn forward<'a>(
        &'a self,
        remote: &'a Path,
    ) -> BoxFuture<'a, io::Result<Option<Box<dyn Forward>>>> {
        let _ = remote;
        Box::pin(async { Ok(None) })
    }

    /// Whether this connector implements [`forward`](Connector::forward):
    /// only then does the remote side listen for workers' streams. The
    /// default is `false`.
    fn forwards(&self) -> bool {
        false
    }
}

/// A forward of a unix socket, as [`Connector::forward`] makes it: a path
/// here whose connections reach the remote side's socket. Dropping it ends
/// the forward (connections made through it may stay until they end).
pub trait Forward: Send + Sync + fmt::Debug {
    /// The socket here: each connection to it is carried to the socket on
    /// the other side.
    fn path(&self) -> &Path;

    /// Ends every connection made through this forward, at once, so that
    /// this side's ends of them see EOF: the template's connection was
    /// found lost without an EOF (a partition: see
    /// [`RemoteBuilder::keepalive`](super::RemoteBuilder::keepalive)),
    /// and its workers' streams must not wait for a transport that no
    /// longer delivers. The default does nothing.
    fn cut(&mut self) {}
}

/// A connector behind a reference or a pointer is one: a shared connector
/// serves several templates (one ssh connection for all of them, with
/// `SshConnector`, feature `openssh`), and a boxed one lets a pool hold
/// connectors of different kinds.
macro_rules! connector_through {
    ($($pointer:ty),*) => {$(
        impl<C: Connector + ?Sized> Connector for $pointer {
            fn connect<'a>(
                &'a self,
                command: &'a RemoteCommand,
            ) -> BoxFuture<'a, io::Result<Connection>> {
                (**self).connect(command)
            }

            fn name(&self) -> String {
                (**self).name()
            }

            fn forward<'a>(
                &'a self,
                remote: &'a Path,
            ) -> BoxFuture<'a, io::Result<Option<Box<dyn Forward>>>> {
                (**self).forward(remote)
            }

            fn forwards(&self) -> bool {
                (**self).forwards()
            }
        }
    )*};
}

connector_through!(&C, std::sync::Arc<C>, Box<C>);

/// The command a [`Connector`] runs: the program's path on the other side
/// and its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteCommand {
    pub(crate) program: OsString,
    pub(crate) args: Vec<OsString>,
}

impl RemoteCommand {
    /// The program to run (a path on the other side).
    pub fn program(&self) -> &OsStr {
        &self.program
    }

    /// Its arguments.
    pub fn args(&self) -> &[OsString] {
        &self.args
    }

    /// The program and its arguments, each quoted for a POSIX shell and
    /// joined by spaces: for transports that pass one command line to a
    /// shell on the other side, as `ssh host '<line>'` does.
    ///
    /// ```
    /// # use fork_core::remote::RemoteCommand;
    /// # fn demo(command: &RemoteCommand) {
    /// let line = command.shell_line(); // e.g. '/opt/my app/bin' '--fork-core-remote-template'
    /// # }
    /// ```
    pub fn shell_line(&self) -> String {
        std::iter::once(&self.program)
            .chain(&self.args)
            .map(|w| shell_quote(w))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// `word` in single quotes, each `'` in it written as `'\''`.
fn shell_quote(word: &OsStr) -> String {
    let word = String::from_utf8_lossy(word.as_bytes());
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// A running transport: the local `ssh` process, a container exec, a
/// command. fork-core ends it when the template is done with it.
pub trait Session: Send + fmt::Debug {
    /// Ends the transport now, without waiting (kills the local process).
    /// Used when the other side does not end by itself after its input was
    /// closed.
    ///
    /// # Errors
    ///
    /// If it cannot be signalled.
    fn start_kill(&mut self) -> io::Result<()>;

    /// Waits until the transport has ended and reaps it: its exit status,
    /// if it has one.
    ///
    /// # Errors
    ///
    /// If it cannot be waited for.
    fn wait(&mut self) -> BoxFuture<'_, io::Result<Option<ExitStatus>>>;
}

/// What a [`Connector`] returns: the other program's standard output (to
/// read) and standard input (to write), and the [`Session`] that ends it.
pub struct Connection {
    pub(crate) reader: BoxRead,
    pub(crate) writer: BoxWrite,
    pub(crate) session: Box<dyn Session>,
}

impl Connection {
    /// A connection reading `reader` (the program's stdout), writing
    /// `writer` (its stdin), ended by `session`.
    pub fn new(
        reader: impl AsyncRead + Send + Unpin + 'static,
        writer: impl AsyncWrite + Send + Unpin + 'static,
        session: impl Session + 'static,
    ) -> Connection {
        Connection {
            reader: Box::new(reader),
            writer: Box::new(writer),
            session: Box::new(session),
        }
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_send_and_sync() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>() {}
        send_sync::<crate::remote::CommandConnector>();
        send_sync::<&crate::remote::CommandConnector>();
        send_sync::<std::sync::Arc<dyn Connector>>();
        send::<Connection>();
        send::<crate::remote::RemoteBuilder<crate::remote::CommandConnector>>();
        // What a pool spawns to watch a host: Send and 'static.
        fn send_static<F: std::future::Future + Send + 'static>(_: F) {}
        let _ = |t: &crate::Template| send_static(t.lost());
    }

    #[test]
    fn shell_lines_quote_every_word() {
        let c = RemoteCommand {
            program: "/opt/my app/bin".into(),
            args: vec!["it's".into(), "".into()],
        };
        assert_eq!(c.shell_line(), r"'/opt/my app/bin' 'it'\''s' ''");
    }
}
