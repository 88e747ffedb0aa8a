//! [`EventSender`]: events from worker to parent, in order with the
//! replies.

use std::fmt;
use std::io;
use std::marker::PhantomData;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::codec;
use crate::config::Format;
use crate::error::{Error, Result};
use crate::message::WorkerMsg;
use crate::shm::Limits;
use crate::shm::scope::{self, Attached};

/// What an [`EventSender`] hands to the serving loop, in order.
pub(super) enum Outgoing {
    /// An encoded frame (an event or a retire request), without its length,
    /// and the memory files its encoding attached.
    Frame(Vec<u8>, Attached),
    /// Write everything queued so far, then say so.
    Flush(oneshot::Sender<()>),
}

/// Sends events to the parent, in order with the replies (cheap to clone).
///
/// The serving loop writes the events queued so far before each reply, so an
/// event sent before a handler returns reaches the parent before that
/// handler's reply.
pub struct EventSender<Ev> {
    pub(super) out: mpsc::UnboundedSender<Outgoing>,
    pub(super) format: Format,
    pub(super) limit: u64,
    /// Big [`SharedBytes`](crate::SharedBytes) in events travel as memory
    /// files within these limits.
    pub(super) shared: Option<Limits>,
    pub(super) _ev: PhantomData<fn(Ev)>,
}

impl<Ev> Clone for EventSender<Ev> {
    fn clone(&self) -> Self {
        EventSender {
            out: self.out.clone(),
            format: self.format,
            limit: self.limit,
            shared: self.shared,
            _ev: PhantomData,
        }
    }
}

impl<Ev> fmt::Debug for EventSender<Ev> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventSender")
            .field("format", &self.format)
            .finish()
    }
}

impl<Ev> EventSender<Ev> {
    /// Asks the parent to retire this worker (AnyEvent::Fork::Pool's
    /// `retire`): it sends no new calls, and closes the connection once the
    /// calls already sent are answered, so the worker finishes and exits 0.
    /// A pool then starts a fresh worker if it needs one. Ordered with
    /// replies and events, like an event.
    ///
    /// # Errors
    ///
    /// If the connection is closed.
    pub fn retire(&self) -> Result<()> {
        let frame = codec::encode(self.format, self.limit, &WorkerMsg::<()>::Retire)?;
        self.out
            .send(Outgoing::Frame(frame, Vec::new()))
            .map_err(|_| Error::Io(io::ErrorKind::BrokenPipe.into()))
    }
}

impl<Ev: Serialize> EventSender<Ev> {
    /// Waits until every event (and reply) queued so far was written to the
    /// socket. Events are written by the task serving requests, so a
    /// handler that computes without awaiting holds them back until it
    /// returns or awaits; call this to send progress at once
    /// (AnyEvent::Fork::RPC's `flush`).
    ///
    /// # Errors
    ///
    /// If the connection is closed.
    pub async fn flush(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.out
            .send(Outgoing::Flush(tx))
            .map_err(|_| Error::Io(io::ErrorKind::BrokenPipe.into()))?;
        rx.await
            .map_err(|_| Error::Io(io::ErrorKind::BrokenPipe.into()))
    }

    /// Queues an event for the parent; it is written as soon as the
    /// worker's runtime gets to it (see [`flush`](EventSender::flush)).
    ///
    /// # Errors
    ///
    /// If it cannot be serialised, or the connection is closed.
    pub fn send(&self, event: &Ev) -> Result<()> {
        let (event, attached) = scope::encoding(self.shared, || {
            codec::encode(self.format, self.limit, event)
        });
        let event = event?;
        // The event variants encode the same whatever the reply type.
        let message = if attached.is_empty() {
            WorkerMsg::<()>::Event(event)
        } else {
            WorkerMsg::SharedEvent {
                bytes: event,
                fds: attached.len() as u32,
                attached: Vec::new(),
            }
        };
        let frame = codec::encode(self.format, self.limit, &message)?;
        self.out
            .send(Outgoing::Frame(frame, attached))
            .map_err(|_| Error::Io(io::ErrorKind::BrokenPipe.into()))
    }
}
