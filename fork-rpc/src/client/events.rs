//! [`Events`], the worker's events as the parent receives them.

use std::fmt;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context as TaskContext, Poll};

use futures::Stream;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use super::demux::ReceivedEvent;
use crate::codec;
use crate::config::Format;
use crate::error::{Error, Result};
use crate::shm::scope;

/// The events a worker sends, in the order it sent them relative to its
/// replies. A [`Stream`] of `Result<Ev>` (an undecodable event is an error).
pub struct Events<Ev> {
    pub(super) rx: mpsc::UnboundedReceiver<ReceivedEvent>,
    pub(super) format: Format,
    pub(super) limit: u64,
    pub(super) max_shared_len: u64,
    pub(super) _ev: PhantomData<fn() -> Ev>,
}

impl<Ev> fmt::Debug for Events<Ev> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Events").finish_non_exhaustive()
    }
}

impl<Ev: DeserializeOwned> Events<Ev> {
    /// The next event; `None` once the worker's connection ended and every
    /// event was taken.
    pub async fn recv(&mut self) -> Option<Result<Ev>> {
        let event = self.rx.recv().await?;
        Some(self.decode(event))
    }

    /// The next event if one is already here.
    pub fn try_recv(&mut self) -> Option<Result<Ev>> {
        let event = self.rx.try_recv().ok()?;
        Some(self.decode(event))
    }

    fn decode(&self, event: ReceivedEvent) -> Result<Ev> {
        scope::decoding_received(event.fds, self.max_shared_len, || {
            codec::decode(self.format, self.limit, &event.bytes)
        })
        .map_err(|e| Error::Protocol(format!("undecodable event: {e}")))
    }
}

impl<Ev: DeserializeOwned> Stream for Events<Ev> {
    type Item = Result<Ev>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        self.rx
            .poll_recv(cx)
            .map(|o| o.map(|event| self.decode(event)))
    }
}

impl<Ev> Unpin for Events<Ev> {}

/// How many events are kept for an [`Events`] stream not taken yet.
pub const UNTAKEN_EVENTS: usize = 1024;

/// Bookkeeping for events that arrive before anyone took the stream.
#[derive(Debug, Default)]
pub(super) struct UntakenEvents {
    pub(super) taken: AtomicBool,
    pub(super) kept: AtomicUsize,
}

impl UntakenEvents {
    /// Whether to keep one more event.
    pub(super) fn keep(&self) -> bool {
        self.taken.load(Ordering::Acquire)
            || self.kept.fetch_add(1, Ordering::Relaxed) < UNTAKEN_EVENTS
    }
}
