//! Errors of fork-pool, and how they travel inside tarpc's `RpcError`.

use std::sync::Arc;
use std::time::Duration;

use tarpc::ChannelError;
use tarpc::client::RpcError;

/// Errors of the pool itself.
///
/// Calls made through the pool return tarpc's [`RpcError`]; a pool error
/// travels inside it, as the [`source`](std::error::Error::source), and
/// [`Error::find`] gets it back:
///
/// - a call the pool could not place ([`Closed`](Error::Closed),
///   [`QueueFull`](Error::QueueFull), [`Spawn`](Error::Spawn)) fails with
///   `RpcError::Send`: the request was never sent;
/// - a job the pool ended ([`Timeout`](Error::Timeout)) fails with
///   `RpcError::Channel`: it was sent, and its worker's connection ended,
///   as when a worker dies under a call (fork-rpc's
///   [`WorkerLost`](fork_rpc::WorkerLost) travels the same way).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The pool is shutting down and takes no new calls; jobs still queued
    /// when its [`shutdown_timeout`](crate::Config::shutdown_timeout) ran
    /// out fail with it too. Once [`shutdown`](crate::Pool::shutdown) has
    /// returned, the next call opens the pool again.
    #[error("the pool is shutting down")]
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
            RpcError::Channel(ChannelError::Read(e)) => e.downcast_ref(),
            _ => None,
        }
    }

    /// The pool is shutting down.
    pub fn is_closed(&self) -> bool {
        matches!(self, Error::Closed)
    }

    /// The queue was full.
    pub fn is_queue_full(&self) -> bool {
        matches!(self, Error::QueueFull(_))
    }

    /// The job exceeded the pool's time limit.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout { .. })
    }

    /// No worker could be started.
    pub fn is_spawn(&self) -> bool {
        matches!(self, Error::Spawn(_))
    }

    /// This error as the RPC error of a call (see [`Error`]).
    pub(crate) fn into_rpc(self) -> RpcError {
        match self {
            Error::Timeout { .. } => RpcError::Channel(ChannelError::Read(Arc::new(self))),
            _ => RpcError::Send(Box::new(self)),
        }
    }
}

/// `Result` with fork-pool's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pool_error_is_found_in_its_rpc_error() {
        let errors = [
            Error::Closed,
            Error::QueueFull(3),
            Error::Timeout {
                limit: Duration::from_secs(1),
                pid: 42,
            },
        ];
        for error in errors {
            let rpc = error.clone().into_rpc();
            let found = Error::find(&rpc).map(ToString::to_string);
            assert_eq!(found, Some(error.to_string()), "{rpc:?}");
        }
    }

    #[test]
    fn a_timed_out_job_is_a_broken_channel_not_an_unsent_request() {
        let rpc = Error::Timeout {
            limit: Duration::from_secs(1),
            pid: 42,
        }
        .into_rpc();
        assert!(matches!(rpc, RpcError::Channel(_)), "{rpc:?}");
        assert!(matches!(Error::Closed.into_rpc(), RpcError::Send(_)));
    }
}
