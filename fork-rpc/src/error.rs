//! Errors of fork-rpc, and the "worker lost" error inside tarpc's `RpcError`.

use std::fmt;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use tarpc::client::RpcError;

/// Errors of fork-rpc's own calls (spawning, sending descriptors, serving).
///
/// Errors of RPC calls are tarpc's [`RpcError`]; when the worker is gone, it
/// carries a [`WorkerLost`] (see [`WorkerLost::find`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Forking or starting the worker failed.
    #[error(transparent)]
    Core(#[from] fork_core::Error),

    /// The worker's init hook (given to [`entry!`](crate::entry!)) failed;
    /// its message. An init *function* of fork-core's (preloading in the
    /// template) that fails is `Error::Core` instead;
    /// [`is_init_failed`](Error::is_init_failed) is true for both.
    #[error("the worker's init hook failed: {0}")]
    Init(String),

    /// The worker is gone.
    #[error(transparent)]
    Lost(#[from] WorkerLost),

    /// The worker did not start serving within
    /// [`Config::start_timeout`](crate::Config::start_timeout) (an init hook
    /// or init function that does not return, a template that does not
    /// fork); it was killed.
    #[error(
        "the worker{} did not start serving within {limit:?} \
         (fork_rpc::Config::start_timeout); it was killed",
        .pid.map(|p| format!(" {p}")).unwrap_or_default()
    )]
    StartTimeout {
        /// The limit.
        limit: Duration,
        /// The worker's pid, if it was forked.
        pid: Option<u32>,
    },

    /// [`Builder::spawn_until`](crate::Builder::spawn_until) gave up on the start; the worker
    /// (if it was forked) was killed.
    #[error(
        "the start of the worker{} was given up on; it was killed",
        .pid.map(|p| format!(" {p}")).unwrap_or_default()
    )]
    StartAbandoned {
        /// The worker's pid, if it was forked.
        pid: Option<u32>,
    },

    /// A request handler panicked with this message, in the worker: the
    /// result of [`serve`](crate::serve) there (the worker then exits with
    /// [`PANIC_EXIT_CODE`](fork_core::PANIC_EXIT_CODE)). The parent sees
    /// [`WorkerLost`] with the same message.
    #[error("a request handler panicked: {0}")]
    Panicked(HandlerPanic),

    /// The peer broke the protocol (bad handshake, undecodable frame).
    #[error("protocol error: {0}")]
    Protocol(String),

    /// An I/O error.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// Something the worker runs before it serves failed: its init hook
    /// ([`Error::Init`]), or an init function of fork-core's in the
    /// template or the worker (`Error::Core` with
    /// [`fork_core::Error::InitFailed`]).
    pub fn is_init_failed(&self) -> bool {
        match self {
            Error::Init(_) => true,
            Error::Core(e) => e.is_init_failed(),
            _ => false,
        }
    }

    /// The worker is gone.
    pub fn is_worker_lost(&self) -> bool {
        matches!(self, Error::Lost(_))
    }

    /// The worker did not start in time.
    pub fn is_start_timeout(&self) -> bool {
        matches!(self, Error::StartTimeout { .. })
    }

    /// The start was given up on ([`Builder::spawn_until`](crate::Builder::spawn_until)).
    pub fn is_start_abandoned(&self) -> bool {
        matches!(self, Error::StartAbandoned { .. })
    }

    /// A request handler panicked (in the worker).
    pub fn is_panicked(&self) -> bool {
        matches!(self, Error::Panicked(_))
    }

    /// The peer broke the protocol: fork-rpc's, or fork-core's underneath.
    pub fn is_protocol(&self) -> bool {
        match self {
            Error::Protocol(_) => true,
            Error::Core(e) => e.is_protocol(),
            _ => false,
        }
    }
}

/// `Result` with fork-rpc's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The worker serving a client is gone: it exited, was killed, or panicked.
///
/// Calls pending on it fail with a tarpc
/// [`RpcError::Channel`](tarpc::client::RpcError::Channel) whose source is
/// this value, and so do all later calls; [`WorkerLost::find`] gets it out
/// of an `RpcError`.
#[derive(Debug, Clone, thiserror::Error)]
pub struct WorkerLost {
    pub(crate) pid: u32,
    pub(crate) status: Option<ExitStatus>,
    pub(crate) panic: Option<HandlerPanic>,
    /// The connection to the worker's remote template was lost.
    #[source]
    pub(crate) remote: Option<Arc<fork_core::Error>>,
}

/// A request handler's panic, as the worker caught it: its message, and
/// where in the source it happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandlerPanic {
    pub(crate) message: String,
    pub(crate) location: Option<String>,
}

impl HandlerPanic {
    /// The panic's message (a non-string payload says so).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Where it panicked (`file:line:column`), when the worker could tell:
    /// fork-rpc's panic hook records it and then calls the hook that was
    /// installed before (by default, the one that prints the panic).
    pub fn location(&self) -> Option<&str> {
        self.location.as_deref()
    }
}

impl fmt::Display for HandlerPanic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(location) = &self.location {
            write!(f, " (at {location})")?;
        }
        Ok(())
    }
}

impl WorkerLost {
    /// The worker's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// How the worker ended, when known (exit code or signal).
    pub fn status(&self) -> Option<ExitStatus> {
        self.status
    }

    /// The handler panic that ended the worker, if that is what happened:
    /// its message and location.
    pub fn panic(&self) -> Option<&HandlerPanic> {
        self.panic.as_ref()
    }

    /// The message of the handler panic that ended the worker, if that is
    /// what happened (a shortcut for `panic().map(HandlerPanic::message)`).
    pub fn panic_message(&self) -> Option<&str> {
        self.panic.as_ref().map(HandlerPanic::message)
    }

    /// The [`fork_core::Error::RemoteLost`] of the worker's remote template,
    /// if that is how the worker was lost: the connection to its host
    /// (which the error names) was lost, so its exit status is unknown.
    pub fn remote_lost(&self) -> Option<&fork_core::Error> {
        self.remote.as_deref()
    }

    /// Finds the `WorkerLost` inside an RPC error, if the call failed because
    /// the worker is gone.
    pub fn find(error: &RpcError) -> Option<&WorkerLost> {
        match error {
            RpcError::Channel(tarpc::ChannelError::Read(e)) => e.downcast_ref(),
            _ => None,
        }
    }

    /// `true` if the call failed because the worker is gone.
    pub fn is_lost(error: &RpcError) -> bool {
        Self::find(error).is_some()
    }

    pub(crate) fn into_rpc_error(self) -> RpcError {
        let source: Arc<dyn std::error::Error + Send + Sync> = Arc::new(self);
        RpcError::Channel(tarpc::ChannelError::Read(source))
    }
}

impl fmt::Display for WorkerLost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "worker {} lost", self.pid)?;
        if let Some(panic) = &self.panic {
            write!(f, ": a handler panicked: {panic}")?;
        }
        match &self.status {
            Some(status) => write!(f, " ({status})")?,
            None => write!(f, " (exit status unknown)")?,
        }
        if let Some(remote) = &self.remote {
            write!(f, ": {remote}")?;
        }
        Ok(())
    }
}
