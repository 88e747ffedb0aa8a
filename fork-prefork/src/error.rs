//! The error type of fork-prefork.

use std::process::ExitStatus;
use std::sync::Arc;

/// Errors of a prefork server.
///
/// Cheap to clone: every waiter on a server that stopped gets the same one.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Workers failed before they were ready
    /// [`max_boot_failures`](crate::Config::max_boot_failures) times in a
    /// row: the server stopped (or, during a reload, the reload failed and
    /// the old generation kept serving) instead of forking for ever.
    #[error("{failures} workers in a row failed before they were ready; the last: {cause}")]
    Boot {
        /// Failures in a row.
        failures: u32,
        /// Why the last one failed.
        cause: BootFailure,
    },
    /// The server is stopping or stopped: it takes no reload. In a worker,
    /// [`Link::yell_wait`](crate::Link::yell_wait) found that nothing more
    /// can be written to the manager (it is gone).
    #[error("the prefork server is stopped")]
    Stopped,
    /// [`reload`](crate::Prefork::reload) was called on a server built
    /// without [`on_reload`](crate::Builder::on_reload).
    #[error("no reload callback: build the server with Builder::on_reload, or call reload_with")]
    NoReloadCallback,
    /// The reload callback failed to prepare a template.
    #[error("the reload callback failed: {0}")]
    Reload(#[source] Arc<dyn std::error::Error + Send + Sync>),
    /// A listener could not be used (its kind could not be read, or it is
    /// not listening).
    #[error("listener {index}: {source}")]
    Listener {
        /// Its position among the builder's listeners.
        index: usize,
        /// Why.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// A value given to [`Link::yell`](crate::Link::yell) encodes to more
    /// than [`MAX_DATA`](crate::MAX_DATA) bytes: it was not sent.
    #[error("data of {size} bytes exceeds the limit of {limit}")]
    DataTooLarge {
        /// Its size encoded.
        size: u64,
        /// [`MAX_DATA`](crate::MAX_DATA).
        limit: usize,
    },
    /// [`Link::yell`](crate::Link::yell) found 4 MiB of data waiting in
    /// the worker, unwritten: the value was not queued
    /// ([`Link::yell_wait`](crate::Link::yell_wait) waits instead).
    #[error("{queued} bytes of data wait unwritten in the worker")]
    DataBacklog {
        /// The bytes waiting.
        queued: usize,
    },
    /// A worker's data could not be encoded ([`Link::yell`](crate::Link::yell))
    /// or decoded as the type asked for ([`Data::decode`](crate::Data::decode)).
    #[error("worker data: {0}")]
    Data(#[source] Arc<bincode::Error>),
    /// The signal handlers of [`trap_signals`](crate::Prefork::trap_signals)
    /// could not be installed.
    #[error("cannot install the signal handlers: {0}")]
    Signals(#[source] Arc<std::io::Error>),
    /// The call needs to run inside a tokio runtime.
    #[error("a prefork server must be started from inside a tokio runtime")]
    NoRuntime,
}

/// Why a worker failed before it was ready.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum BootFailure {
    /// It could not be forked (an init function failed, `fork` failed, the
    /// template is gone).
    #[error("it could not be forked: {0}")]
    Spawn(#[source] Arc<fork_core::Error>),
    /// Its function returned an error before the worker was ready.
    #[error("it reported {message:?} and exited ({status})")]
    Reported {
        /// The error, as the worker's function returned it (`Debug` form).
        message: String,
        /// Its exit status.
        status: ExitStatus,
    },
    /// It exited (or was killed) before it was ready, saying nothing.
    #[error("it exited before it was ready ({0})")]
    Exited(ExitStatus),
    /// It was not ready within [`Config::start_timeout`](crate::Config::start_timeout)
    /// and was killed.
    #[error("it was not ready within {0:?} (Config::start_timeout) and was killed")]
    StartTimeout(std::time::Duration),
}

impl Error {
    /// Workers failed to start, again and again.
    pub fn is_boot(&self) -> bool {
        matches!(self, Error::Boot { .. })
    }
}

/// `Result` with fork-prefork's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
