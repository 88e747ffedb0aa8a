//! [`RpcWorker`], the parent's handle to a worker's process, its events
//! and its descriptor channel.

use std::os::fd::{AsFd, BorrowedFd};
use std::process::ExitStatus;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::events::{Events, UntakenEvents};
use super::lost::Lost;
use crate::error::Result;

/// The parent's handle to an RPC worker: its process, its events, and the
/// channel for descriptors.
#[derive(Debug)]
pub struct RpcWorker<Ev = ()> {
    pub(super) untaken: Arc<UntakenEvents>,
    pub(super) lost: Arc<Lost>,
    pub(super) process: fork_core::Worker,
    pub(super) events: Option<Events<Ev>>,
    pub(super) fds: tokio::net::UnixDatagram,
}

impl<Ev> RpcWorker<Ev> {
    /// The worker's process id.
    pub fn id(&self) -> u32 {
        self.process.id()
    }

    /// A cloneable handle to wait for the worker process and signal it.
    pub fn handle(&self) -> fork_core::WorkerHandle {
        self.process.handle()
    }

    /// Resolves when the worker asks to be retired (see
    /// [`Client::retire_requested`](crate::Client::retire_requested)).
    pub async fn retire_request(&self) {
        let mut rx = self.lost.retire.subscribe();
        if rx.wait_for(|r| *r).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Takes the stream of the worker's events (once). Until it is taken,
    /// the first [`UNTAKEN_EVENTS`](crate::UNTAKEN_EVENTS) events are kept for it and later ones
    /// dropped, so that a worker whose events nobody reads cannot fill the
    /// parent's memory.
    pub fn events(&mut self) -> Option<Events<Ev>> {
        self.untaken.taken.store(true, Ordering::Release);
        self.events.take()
    }

    /// Sends descriptors to the running worker; they arrive, in order, at
    /// its [`FdReceiver`](crate::FdReceiver), beside the RPC stream. Send
    /// them before the call that uses them.
    ///
    /// # Errors
    ///
    /// I/O errors (for example the worker is gone), or more than
    /// [`fork_core::fdpass::MAX_FDS`] descriptors;
    /// [`fork_core::Error::RemoteUnsupported`] (in [`Error::Core`](crate::Error::Core))
    /// for a worker of a remote template: descriptors cannot cross hosts.
    pub async fn send_fds(&self, fds: &[BorrowedFd<'_>]) -> Result<()> {
        if self.process.template().is_remote() {
            return Err(fork_core::Error::RemoteUnsupported {
                what: "sending descriptors to a worker",
            }
            .into());
        }
        self.fds
            .async_io(tokio::io::Interest::WRITABLE, || {
                fork_core::fdpass::send_fds(self.fds.as_fd(), b"f", fds)
            })
            .await?;
        Ok(())
    }

    /// Sends one descriptor (see [`send_fds`](RpcWorker::send_fds)).
    ///
    /// # Errors
    ///
    /// As [`send_fds`](RpcWorker::send_fds).
    pub async fn send_fd(&self, fd: impl AsFd) -> Result<()> {
        self.send_fds(&[fd.as_fd()]).await
    }

    /// Waits for the worker to exit (after the clients were dropped, it
    /// finishes and exits 0): AnyEvent::Fork::RPC's `on_destroy`.
    ///
    /// # Errors
    ///
    /// As [`fork_core::Worker::wait`].
    pub async fn wait(&mut self) -> Result<ExitStatus> {
        Ok(self.process.wait().await?)
    }

    /// Kills the worker and waits for it.
    ///
    /// # Errors
    ///
    /// As [`fork_core::Worker::kill`].
    pub async fn kill(&mut self) -> Result<()> {
        Ok(self.process.kill().await?)
    }

    /// The underlying process handle (signals, `try_wait`).
    pub fn process(&mut self) -> &mut fork_core::Worker {
        &mut self.process
    }
}
