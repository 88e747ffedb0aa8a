//! [`SshConnector`]: the system's OpenSSH, one ControlMaster per host
//! (feature `openssh`).

use std::fmt;
use std::io;
use std::process::ExitStatus;
use std::sync::Arc;

use openssh::{KnownHosts, Stdio};
use tokio::sync::OnceCell;

use super::connector::{BoxFuture, Connection, Connector, RemoteCommand, Session};

/// A [`Connector`] over the user's OpenSSH, through the `openssh` crate
/// (native mux): one ssh connection (a ControlMaster) per connector, opened
/// on the first [`connect`](Connector::connect) and shared by every remote
/// template started through it, so a template after the first costs no
/// new ssh handshake. The user's `~/.ssh/config`, agent, `known_hosts`,
/// `ProxyJump` and certificates apply; authentication must not ask
/// anything on a terminal (use keys).
///
/// OpenSSH cannot signal a remote process: ending a session closes the
/// channel, and the remote side exits at EOF of its input, which a remote
/// template always does.
///
/// ```no_run
/// use fork_core::Template;
/// use fork_core::remote::SshConnector;
///
/// # async fn demo() -> fork_core::Result<()> {
/// let build1 = SshConnector::new("deploy@build-1");
/// let template = Template::remote(build1).program("/opt/app/bin/app").start().await?;
/// # Ok(()) }
/// ```
pub struct SshConnector {
    destination: String,
    known_hosts: KnownHosts,
    session: OnceCell<Arc<openssh::Session>>,
}

impl SshConnector {
    /// A connector to `destination` (`[user@]host` or
    /// `ssh://[user@]host[:port]`), checking its host key strictly against
    /// `known_hosts` (`StrictHostKeyChecking=yes`).
    pub fn new(destination: impl Into<String>) -> SshConnector {
        SshConnector {
            destination: destination.into(),
            known_hosts: KnownHosts::Strict,
            session: OnceCell::new(),
        }
    }

    /// How the host key is checked. The default is
    /// [`KnownHosts::Strict`]: an unknown host is refused.
    pub fn known_hosts(mut self, check: KnownHosts) -> SshConnector {
        self.known_hosts = check;
        self
    }

    /// A connector over a session opened by other means (a
    /// `openssh::SessionBuilder` with options of your own).
    pub fn from_session(session: Arc<openssh::Session>) -> SshConnector {
        SshConnector {
            destination: String::new(),
            known_hosts: KnownHosts::Strict,
            session: OnceCell::new_with(Some(session)),
        }
    }

    async fn session(&self) -> io::Result<&Arc<openssh::Session>> {
        self.session
            .get_or_try_init(|| async {
                openssh::Session::connect_mux(&self.destination, self.known_hosts.clone())
                    .await
                    .map(Arc::new)
            })
            .await
            .map_err(io::Error::other)
    }
}

impl fmt::Debug for SshConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SshConnector")
            .field("destination", &self.destination)
            .field("known_hosts", &self.known_hosts)
            .field("connected", &self.session.initialized())
            .finish()
    }
}

fn utf8(s: &std::ffi::OsStr) -> io::Result<&str> {
    s.to_str().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{s:?} is not UTF-8, which ssh needs"),
        )
    })
}

impl Connector for SshConnector {
    fn connect<'a>(&'a self, command: &'a RemoteCommand) -> BoxFuture<'a, io::Result<Connection>> {
        Box::pin(async move {
            let session = self.session().await?.clone();
            let mut cmd = session.arc_command(utf8(command.program())?);
            for arg in command.args() {
                cmd.arg(utf8(arg)?);
            }
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit());
            let mut child = cmd.spawn().await.map_err(io::Error::other)?;
            let missing = || io::Error::other("ssh gave no pipe for the remote command");
            let stdin = child.stdin().take().ok_or_else(missing)?;
            let stdout = child.stdout().take().ok_or_else(missing)?;
            Ok(Connection::new(stdout, stdin, SshChild(Some(child))))
        })
    }

    /// The destination; for a connector [from a
    /// session](SshConnector::from_session), `"ssh session"` (name it with
    /// [`RemoteBuilder::name`](super::RemoteBuilder::name)).
    fn name(&self) -> String {
        if self.destination.is_empty() {
            "ssh session".to_string()
        } else {
            self.destination.clone()
        }
    }
}

/// A remote command started over ssh, as a [`Session`].
#[derive(Debug)]
struct SshChild(Option<openssh::Child<Arc<openssh::Session>>>);

impl Session for SshChild {
    fn start_kill(&mut self) -> io::Result<()> {
        // No signal crosses: dropping the channel closes the remote
        // command's input, and the remote side exits on EOF.
        self.0.take();
        Ok(())
    }

    fn wait(&mut self) -> BoxFuture<'_, io::Result<Option<ExitStatus>>> {
        Box::pin(async move {
            match self.0.take() {
                Some(child) => child.wait().await.map(Some).map_err(io::Error::other),
                None => Ok(None),
            }
        })
    }
}
