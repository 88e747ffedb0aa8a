//! Errors of fork-pool, and how they travel inside tarpc's `RpcError`.

use std::sync::Arc;
use std::time::Duration;

use tarpc::client::RpcError;

/// Errors of the pool itself.
///
/// Calls made through the pool return tarpc's [`RpcError`]; a pool error
/// travels as `RpcError::Send` with this as its source ([`Error::find`]
/// gets it back). A worker that dies under a call gives fork-rpc's
/// [`WorkerLost`](fork_rpc::WorkerLost) instead.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The pool is shut down (or shutting down) and takes no new calls.
    #[error("the pool is shut down")]
    Closed,
    /// The queue is full and the pool is configured to fail.
    #[error("the pool's queue is full ({0} jobs waiting)")]
    QueueFull(usize),
    /// The job exceeded the pool's time limit; its worker was killed.
    #[error("the job exceeded its time limit of {limit:?}; worker {pid} was killed")]
    Timeout {
        /// The limit.
        limit: Duration,
        /// The killed worker.
        pid: u32,
    },
    /// No worker could be started (and none is running): the last failure
    /// (for example a failing init hook, `fork` at the process limit, a
    /// start timeout), also as the [`source`](std::error::Error::source).
    #[error("no worker could be started: {0}")]
    Spawn(#[source] Arc<fork_rpc::Error>),
}

impl Error {
    /// The pool error inside an RPC error, if there is one.
    pub fn find(error: &RpcError) -> Option<&Error> {
        match error {
            RpcError::Send(e) => e.downcast_ref(),
            _ => None,
        }
    }

    pub(crate) fn into_rpc(self) -> RpcError {
        RpcError::Send(Box::new(self))
    }
}

/// `Result` with fork-pool's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
