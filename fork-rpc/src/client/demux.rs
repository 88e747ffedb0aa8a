//! What the parent reads: the worker's frames split into replies, events,
//! a panic report and a retire request; and how the connection ended.

use std::io;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use futures::Stream;
use serde::de::DeserializeOwned;
use tarpc::{Response, ServerError};
use tokio::sync::mpsc;

use super::events::UntakenEvents;
use super::lost::{End, Lost};
use crate::codec;
use crate::config::Format;
use crate::message::WorkerMsg;
use crate::shm::{self, scope};

/// Splits the worker's frames: replies go to tarpc, events to [`Events`](super::Events),
/// a panic report to [`Lost`]; records how the connection ended.
pub(super) struct Demux<T> {
    pub(super) inner: T,
    pub(super) events: mpsc::UnboundedSender<ReceivedEvent>,
    pub(super) untaken: Arc<UntakenEvents>,
    pub(super) lost: Arc<Lost>,
}

impl<T> Demux<T> {
    fn ended(&self, end: End) {
        if let Ok(mut e) = self.lost.ended.lock() {
            e.get_or_insert(end);
        }
    }
}

impl<T, Resp> Stream for Demux<T>
where
    T: Stream<Item = io::Result<WorkerMsg<Resp>>> + Unpin,
{
    type Item = io::Result<Response<Resp>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match Pin::new(&mut self.inner).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    self.ended(End::Disconnected);
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(e))) => {
                    // Unless the socket reported EOF or a reset first.
                    self.ended(End::Protocol(e.to_string()));
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Some(Ok(WorkerMsg::Reply(r)))) => return Poll::Ready(Some(Ok(r))),
                Poll::Ready(Some(Ok(WorkerMsg::Event(bytes)))) => {
                    if self.untaken.keep() {
                        let _ = self.events.send(ReceivedEvent {
                            bytes,
                            fds: Vec::new(),
                        });
                    }
                }
                Poll::Ready(Some(Ok(WorkerMsg::SharedEvent {
                    bytes, attached, ..
                }))) => {
                    // Dropped (its descriptors closed) unless kept.
                    if self.untaken.keep() {
                        let _ = self.events.send(ReceivedEvent {
                            bytes,
                            fds: attached,
                        });
                    }
                }
                Poll::Ready(Some(Ok(WorkerMsg::Retire))) => {
                    self.lost.retire.send_replace(true);
                }
                Poll::Ready(Some(Ok(WorkerMsg::Panic(panic)))) => {
                    if let Ok(mut p) = self.lost.panic.lock() {
                        *p = Some(panic);
                    }
                }
            }
        }
    }
}

/// The decoder of the worker's frames, in order: each is decoded with its
/// descriptors (see [`shm`](crate::shm)) as the source, and an event that
/// carries some takes them along.
pub(super) fn decode_frames<Resp: DeserializeOwned>(
    format: Format,
    limit: u64,
    shared: shm::Inbox,
) -> impl FnMut(&[u8]) -> io::Result<WorkerMsg<Resp>> {
    let mut shared = Some(shared);
    let mut seq = 0;
    move |body| {
        seq += 1;
        scope::decoding(&mut shared, seq - 1, || {
            let mut message = decode_reply(format, limit, body)?;
            if let WorkerMsg::SharedEvent { fds, attached, .. } = &mut message {
                *attached = scope::take_all()?;
                if attached.len() != *fds as usize {
                    return Err(codec::invalid(format!(
                        "an event that claims {fds} shared payloads came with {}",
                        attached.len()
                    )));
                }
            }
            Ok(message)
        })
    }
}

/// An event as the parent keeps it until it is taken: its bytes, and the
/// descriptors of its shared payloads.
#[derive(Debug)]
pub(super) struct ReceivedEvent {
    pub(super) bytes: Vec<u8>,
    pub(super) fds: Vec<OwnedFd>,
}

/// Decodes a frame from the worker. A reply whose value does not decode (a
/// type that encodes but cannot come back, such as a NaN in JSON) becomes an
/// error reply to its call: the frame was whole, so the connection goes on.
pub(crate) fn decode_reply<Resp: DeserializeOwned>(
    format: Format,
    limit: u64,
    bytes: &[u8],
) -> io::Result<WorkerMsg<Resp>> {
    codec::decode(format, limit, bytes).or_else(|e| match codec::reply_id(format, limit, bytes) {
        Some(request_id) => Ok(WorkerMsg::Reply(Response {
            request_id,
            message: Err(ServerError::new(
                io::ErrorKind::InvalidData,
                format!("the worker's reply could not be decoded: {e}"),
            )),
        })),
        None => Err(e),
    })
}

/// The worker's socket, noting in [`Lost`] when the worker closed it (or
/// reset it): a read error after that is the worker going away mid-frame,
/// not bad input.
pub(super) struct EofWatch<S> {
    inner: S,
    lost: Arc<Lost>,
}

impl<S> EofWatch<S> {
    pub(super) fn new(inner: S, lost: Arc<Lost>) -> Self {
        EofWatch { inner, lost }
    }

    fn disconnected(&self) {
        if let Ok(mut e) = self.lost.ended.lock() {
            e.get_or_insert(End::Disconnected);
        }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for EofWatch<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        match &poll {
            Poll::Ready(Ok(())) if buf.filled().len() == before && buf.remaining() > 0 => {
                self.disconnected();
            }
            Poll::Ready(Err(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                ) =>
            {
                self.disconnected();
            }
            _ => {}
        }
        poll
    }
}
