//! [`Setup`], what a worker's init hook gets.

use std::fmt;
use std::os::fd::OwnedFd;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::events::EventSender;
use super::fds::FdReceiver;
use crate::error::Result;

/// What a worker's init hook gets: its arguments and descriptors, a sender
/// for events, the receiver of descriptors sent later, and a place for the
/// done hook.
pub struct Setup<Ev> {
    pub(super) args: Vec<Vec<u8>>,
    pub(super) fds: Vec<OwnedFd>,
    pub(super) events: EventSender<Ev>,
    pub(super) fd_receiver: Option<FdReceiver>,
    pub(super) done: Option<Box<dyn FnOnce()>>,
}

impl<Ev> fmt::Debug for Setup<Ev> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Setup")
            .field("args", &self.args.len())
            .field("fds", &self.fds)
            .finish_non_exhaustive()
    }
}

impl<Ev: Serialize> Setup<Ev> {
    /// A sender of events to the parent (AnyEvent::Fork::RPC's `event`).
    pub fn events(&self) -> EventSender<Ev> {
        self.events.clone()
    }

    /// The arguments sent with the fork (see [`fork_core::Context::args`]).
    pub fn args(&self) -> &[Vec<u8>] {
        &self.args
    }

    /// Decodes argument `index` (see [`fork_core::Context::arg`]).
    ///
    /// # Errors
    ///
    /// If there is no such argument or it does not decode as `T`.
    pub fn arg<T: DeserializeOwned>(&self, index: usize) -> Result<T> {
        Ok(fork_core::decode_arg(&self.args, index)?)
    }

    /// Takes the descriptors sent with the fork (and inherited from the
    /// template).
    pub fn take_fds(&mut self) -> Vec<OwnedFd> {
        std::mem::take(&mut self.fds)
    }

    /// Takes the receiver of descriptors the parent sends while the worker
    /// serves (with [`RpcWorker::send_fds`](crate::RpcWorker::send_fds)).
    /// `None` if already taken.
    pub fn fd_receiver(&mut self) -> Option<FdReceiver> {
        self.fd_receiver.take()
    }

    /// Registers the done hook: it runs after the last reply was flushed,
    /// once the parent closed the connection, before the worker exits with
    /// code 0.
    pub fn on_done(&mut self, done: impl FnOnce() + 'static) {
        self.done = Some(Box::new(done));
    }
}
