//! [`SshConnector`]: the system's OpenSSH, one ControlMaster per host
//! (feature `openssh`).

use std::fmt;
use std::io;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use openssh::{ControlPersist, ForwardType, KnownHosts, Stdio};
use tokio::sync::Mutex;

use super::connector::{BoxFuture, Connection, Connector, Forward, RemoteCommand, Session};
use super::forward;

/// How long an idle ControlMaster of [`SshConnector::new`] stays.
const IDLE: NonZeroUsize = NonZeroUsize::new(5).expect("not zero");
/// How often its ControlMaster checks that the host answers
/// (`ServerAliveInterval`; after three unanswered checks it ends).
const SERVER_ALIVE: Duration = Duration::from_secs(5);

/// A [`Connector`] over the user's OpenSSH, through the `openssh` crate
/// (native mux): one ssh connection (a ControlMaster) per connector, opened
/// on the first [`connect`](Connector::connect) and shared by every remote
/// template started through it, so a template after the first costs no
/// new ssh handshake. The user's `~/.ssh/config`, agent, `known_hosts`,
/// `ProxyJump` and certificates apply; authentication must not ask
/// anything on a terminal (use keys).
///
/// Each worker's stream is a forwarded connection of its own through the
/// ControlMaster ([`Connector::forward`]; see
/// [`RemoteBuilder::forward_streams`](super::RemoteBuilder::forward_streams)).
///
/// The ControlMaster ends once it has carried nothing for 5 s
/// (`ControlPersist=5`): after every template through it has ended, and
/// also after this process was killed (the remote side ends at once, and
/// the ControlMaster 5 s later), so that it does not outlive us; and,
/// since it checks every 5 s that the host answers
/// (`ServerAliveInterval=5`), about 15 s after the host stopped
/// answering, even when what it carried could not be closed there. The
/// next start through the connector opens a new one.
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
    config_file: Option<PathBuf>,
    /// The ControlMaster, once connected; a new one replaces it when it is
    /// found closed (after a [cut](Forward::cut), or if it died).
    session: Mutex<Option<Arc<openssh::Session>>>,
}

impl SshConnector {
    /// A connector to `destination` (`[user@]host` or
    /// `ssh://[user@]host[:port]`), checking its host key strictly against
    /// `known_hosts` (`StrictHostKeyChecking=yes`).
    pub fn new(destination: impl Into<String>) -> SshConnector {
        SshConnector {
            destination: destination.into(),
            known_hosts: KnownHosts::Strict,
            config_file: None,
            session: Mutex::new(None),
        }
    }

    /// How the host key is checked. The default is
    /// [`KnownHosts::Strict`]: an unknown host is refused.
    pub fn known_hosts(mut self, check: KnownHosts) -> SshConnector {
        self.known_hosts = check;
        self
    }

    /// Reads this ssh_config file instead of `~/.ssh/config` (`ssh -F`).
    pub fn config_file(mut self, path: impl Into<PathBuf>) -> SshConnector {
        self.config_file = Some(path.into());
        self
    }

    /// A connector over a session opened by other means (a
    /// `openssh::SessionBuilder` with options of your own: give it a short
    /// `control_persist`, as [`new`](SshConnector::new) does, or its
    /// ControlMaster stays after this process is killed). Once that
    /// session is closed (its ControlMaster ended, or was ended by a
    /// [cut](Forward::cut)), connecting fails: the connector cannot open
    /// another like it.
    pub fn from_session(session: Arc<openssh::Session>) -> SshConnector {
        SshConnector {
            destination: String::new(),
            known_hosts: KnownHosts::Strict,
            config_file: None,
            session: Mutex::new(Some(session)),
        }
    }

    /// The ControlMaster: the open one, or a new one if there is none or
    /// it no longer answers.
    async fn session(&self) -> io::Result<Arc<openssh::Session>> {
        let mut slot = self.session.lock().await;
        if let Some(session) = &*slot {
            match session.check().await {
                Ok(()) => return Ok(session.clone()),
                Err(e) if self.destination.is_empty() => {
                    return Err(io::Error::other(format!("the ssh session is closed: {e}")));
                }
                Err(_) => {}
            }
        }
        let mut builder = openssh::SessionBuilder::default();
        builder
            .known_hosts_check(self.known_hosts.clone())
            .control_persist(ControlPersist::IdleFor(IDLE))
            .server_alive_interval(SERVER_ALIVE);
        if let Some(config) = &self.config_file {
            builder.config_file(config);
        }
        let session = builder
            .connect_mux(&self.destination)
            .await
            .map(Arc::new)
            .map_err(io::Error::other)?;
        *slot = Some(session.clone());
        Ok(session)
    }
}

impl fmt::Debug for SshConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SshConnector")
            .field("destination", &self.destination)
            .field("known_hosts", &self.known_hosts)
            .field("config_file", &self.config_file)
            .field(
                "connected",
                &self.session.try_lock().map_or(true, |s| s.is_some()),
            )
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
            let session = self.session().await?;
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

    /// A local forward (`ssh -L here:remote`) through the ControlMaster,
    /// from a socket in a new directory of mode 700 here. sshd must allow
    /// it (`AllowStreamLocalForwarding`, on by default). Its
    /// [cut](Forward::cut) ends the ControlMaster (`ssh -O exit`): every
    /// template and stream through this connector ends with it, and the
    /// next start connects anew.
    fn forward<'a>(
        &'a self,
        remote: &'a Path,
    ) -> BoxFuture<'a, io::Result<Option<Box<dyn Forward>>>> {
        Box::pin(async move {
            let session = self.session().await?;
            let dir = forward::private_dir()?;
            let local = dir.join("s");
            let requested = session
                .request_port_forward(ForwardType::Local, local.as_path(), remote)
                .await;
            if let Err(e) = requested {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(io::Error::other(e));
            }
            Ok(Some(Box::new(SshForward {
                session,
                dir,
                local,
                remote: remote.to_path_buf(),
            }) as Box<dyn Forward>))
        })
    }

    fn forwards(&self) -> bool {
        true
    }
}

/// A forward through the ControlMaster, as [`SshConnector::forward`] makes
/// it; closed (and its directory removed) on drop.
#[derive(Debug)]
struct SshForward {
    session: Arc<openssh::Session>,
    dir: PathBuf,
    local: PathBuf,
    remote: PathBuf,
}

impl Forward for SshForward {
    fn path(&self) -> &Path {
        &self.local
    }

    fn cut(&mut self) {
        // The mux protocol the crate speaks can stop the master listening,
        // which leaves its channels open; `-O exit` ends it.
        let exit = tokio::process::Command::new("ssh")
            .arg("-S")
            .arg(self.session.control_socket())
            .args(["-O", "exit", "fork-core"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(false)
            .spawn();
        if let Err(e) = exit {
            tracing::warn!("cannot end the ssh ControlMaster of a lost host: {e}");
        }
    }
}

impl Drop for SshForward {
    fn drop(&mut self) {
        let session = self.session.clone();
        let (dir, local, remote) = (self.dir.clone(), self.local.clone(), self.remote.clone());
        let close = async move {
            let _ = session
                .close_port_forward(ForwardType::Local, local.as_path(), remote.as_path())
                .await;
            let _ = std::fs::remove_dir_all(&dir);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(close);
            }
            Err(_) => {
                let _ = std::fs::remove_dir_all(&self.dir);
            }
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
