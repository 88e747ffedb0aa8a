//! What is known about a worker's end: how its connection ended, its
//! panic, its exit status; and how a failed call explains itself with it.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tarpc::client::RpcError;

use crate::error::WorkerLost;

/// How long a failed call waits for the exit status of a worker whose
/// connection ended, before reporting it lost without one.
pub(super) const STATUS_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub(super) struct Lost {
    pub(super) pid: u32,
    pub(super) panic: Mutex<Option<crate::error::HandlerPanic>>,
    /// Set when the worker asked to be retired.
    pub(super) retire: tokio::sync::watch::Sender<bool>,
    /// How the connection ended, once it did.
    pub(super) ended: Mutex<Option<End>>,
    pub(super) exit: fork_core::WorkerHandle,
}

/// How a worker's connection ended.
#[derive(Debug, Clone)]
pub(super) enum End {
    /// EOF or reset: the worker went away.
    Disconnected,
    /// The worker sent something the client could not accept.
    Protocol(String),
}

impl Lost {
    pub(super) fn end(&self) -> Option<End> {
        self.ended.lock().ok().and_then(|e| e.clone())
    }

    /// The lost-worker error, with the exit status if it comes soon.
    pub(super) async fn lost(&self) -> WorkerLost {
        let mut exit = self.exit.clone();
        let (status, remote) = match tokio::time::timeout(STATUS_GRACE, exit.wait()).await {
            Ok(Ok(status)) => (Some(status), None),
            Ok(Err(e)) if e.is_remote_lost() => (None, Some(Arc::new(e))),
            _ => (None, None),
        };
        WorkerLost {
            pid: self.pid,
            status,
            panic: self.panic.lock().ok().and_then(|p| p.clone()),
            remote,
        }
    }
}

/// What a call that failed with `e` (`Shutdown`, `Send` or `Channel`)
/// reports: the worker lost, with its exit status, if it went away; the
/// bad input, for later calls on a connection that died of it.
pub(super) async fn explain(lost: Arc<Lost>, e: RpcError) -> RpcError {
    match lost.end() {
        Some(End::Disconnected) => lost.lost().await.into_rpc_error(),
        // Later calls on a connection that died of bad input say so.
        Some(End::Protocol(message)) if matches!(e, RpcError::Shutdown) => {
            let e: Arc<dyn std::error::Error + Send + Sync> =
                Arc::new(io::Error::new(io::ErrorKind::InvalidData, message));
            RpcError::Channel(tarpc::ChannelError::Read(e))
        }
        // The connection failed without a word on how (a write broke
        // before the reader saw EOF): lost, if the worker exits; its status
        // comes through its template a moment after the socket broke.
        None if !matches!(e, RpcError::Send(_)) => {
            let lost = lost.lost().await;
            if lost.status.is_some() {
                lost.into_rpc_error()
            } else {
                e
            }
        }
        _ => e,
    }
}
