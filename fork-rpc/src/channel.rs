//! The parent's side of the RPC connection: tarpc's wire format without
//! tarpc's dispatch task.
//!
//! tarpc's client hands every call to a dispatch task and back, which costs
//! two task hand-offs per call (and on a multi-threaded runtime, wakeups of
//! other threads). Here the caller writes its request itself (batched with
//! any others waiting, with one non-blocking `write`), and one reader task
//! completes the callers' replies. Cancellation (a dropped call sends tarpc's
//! `Cancel`), deadlines and trace contexts work as with tarpc's client.

use std::collections::HashMap;
use std::io;
use std::marker::PhantomData;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::{Stream, StreamExt};
use serde::Serialize;
use tarpc::client::RpcError;
use tarpc::context::Context;
use tarpc::{ClientMessage, Request, Response, ServerError};
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{Semaphore, oneshot};

use crate::codec;
use crate::config::Format;

type Reply<Resp> = Result<Resp, ServerError>;

struct Shared<Resp> {
    pending: Mutex<Pending<Resp>>,
    out: Mutex<Out>,
    write: Arc<OwnedWriteHalf>,
    next_id: AtomicU64,
    in_flight: Semaphore,
    format: Format,
    limit: u64,
}

struct Pending<Resp> {
    waiting: HashMap<u64, oneshot::Sender<Reply<Resp>>>,
    /// The connection ended: no reply will come.
    ended: bool,
}

#[derive(Default)]
struct Out {
    /// Length-prefixed frames not written yet.
    buf: Vec<u8>,
    /// A task is writing `buf` (the socket was full).
    flushing: bool,
    /// Writing failed: the connection is broken.
    broken: bool,
    /// Every client is gone: shut down the sending side once `buf` is out.
    closing: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A cheap, cloneable handle; when the last one is dropped, the sending side
/// is shut down after what was queued (a graceful close).
pub(crate) struct Channel<Req, Resp> {
    shared: Arc<Shared<Resp>>,
    _closer: Arc<Closer<Resp>>,
    _req: PhantomData<fn(Req)>,
}

impl<Req, Resp> Clone for Channel<Req, Resp> {
    fn clone(&self) -> Self {
        Channel {
            shared: self.shared.clone(),
            _closer: self._closer.clone(),
            _req: PhantomData,
        }
    }
}

struct Closer<Resp>(Arc<Shared<Resp>>);

impl<Resp> Drop for Closer<Resp> {
    fn drop(&mut self) {
        let shared = &self.0;
        let mut out = lock(&shared.out);
        out.closing = true;
        if !out.flushing && out.buf.is_empty() {
            fork_core::fdpass::shutdown_write((*shared.write).as_ref().as_fd());
        }
    }
}

impl<Req: Serialize + Send + 'static, Resp: Send + 'static> Channel<Req, Resp> {
    /// Starts the reader task over `replies` and returns the channel.
    pub(crate) fn new(
        write: OwnedWriteHalf,
        replies: impl Stream<Item = io::Result<Response<Resp>>> + Send + 'static,
        format: Format,
        limit: u64,
        max_in_flight: usize,
    ) -> Self {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending {
                waiting: HashMap::new(),
                ended: false,
            }),
            out: Mutex::new(Out::default()),
            write: Arc::new(write),
            next_id: AtomicU64::new(0),
            in_flight: Semaphore::new(max_in_flight.max(1)),
            format,
            limit,
        });
        tokio::spawn(read_replies(shared.clone(), replies));
        Channel {
            _closer: Arc::new(Closer(shared.clone())),
            shared,
            _req: PhantomData,
        }
    }

    /// Makes one call, with tarpc's error kinds: `Send` if the request
    /// cannot be encoded, `Shutdown` if the connection is gone,
    /// `DeadlineExceeded`, `Server` for an error reply.
    pub(crate) async fn call(&self, ctx: Context, request: Req) -> Result<Resp, RpcError> {
        let shared = &self.shared;
        if ctx.deadline <= std::time::Instant::now() {
            return Err(RpcError::DeadlineExceeded);
        }
        let _permit = shared
            .in_flight
            .acquire()
            .await
            .map_err(|_| RpcError::Shutdown)?;
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = codec::encode(
            shared.format,
            shared.limit,
            &ClientMessage::Request(Request {
                context: ctx,
                id,
                message: request,
            }),
        )
        .map_err(|e| RpcError::Send(Box::new(e)))?;
        let (tx, rx) = oneshot::channel();
        let others_waiting = {
            let mut pending = lock(&shared.pending);
            if pending.ended {
                return Err(RpcError::Shutdown);
            }
            pending.waiting.insert(id, tx);
            pending.waiting.len() > 1
        };
        // From here on, dropping this future cancels the call.
        let guard = CancelOnDrop {
            shared,
            id,
            trace: ctx.trace_context,
            armed: true,
        };
        // Alone, write at once (latency); with other calls in flight, let a
        // task write everything queued in this round at once (throughput).
        if shared.send(&frame, others_waiting).is_err() {
            lock(&shared.pending).waiting.remove(&id);
            let mut guard = guard;
            guard.armed = false;
            return Err(RpcError::Shutdown);
        }
        let reply = tokio::time::timeout_at(ctx.deadline.into(), rx).await;
        let mut guard = guard;
        match reply {
            Ok(Ok(reply)) => {
                guard.armed = false;
                reply.map_err(RpcError::Server)
            }
            // The reader ended: the connection is gone.
            Ok(Err(_)) => {
                guard.armed = false;
                Err(RpcError::Shutdown)
            }
            // Past the deadline: the guard cancels it in the worker.
            Err(_) => Err(RpcError::DeadlineExceeded),
        }
    }
}

impl<Resp> Shared<Resp> {
    /// Queues a frame and writes what it can at once, without blocking; a
    /// task finishes the rest if the socket is full.
    fn send(self: &Arc<Self>, frame: &[u8], defer: bool) -> io::Result<()>
    where
        Resp: Send + 'static,
    {
        let mut out = lock(&self.out);
        if out.broken {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        out.buf
            .extend_from_slice(&(frame.len() as u32).to_be_bytes());
        out.buf.extend_from_slice(frame);
        if out.flushing {
            return Ok(());
        }
        // A flush task needs a runtime; without one (a call dropped after
        // its runtime shut down), write what the socket takes now.
        let runtime = tokio::runtime::Handle::try_current().ok();
        if !defer || runtime.is_none() {
            self.write_some(&mut out)?;
        }
        if let (false, Some(runtime)) = (out.buf.is_empty(), runtime) {
            out.flushing = true;
            runtime.spawn(flush(self.clone()));
        }
        Ok(())
    }

    /// Writes as much of the queue as the socket takes now.
    fn write_some(&self, out: &mut Out) -> io::Result<()> {
        while !out.buf.is_empty() {
            match self.write.try_write(&out.buf) {
                Ok(n) => {
                    out.buf.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    out.broken = true;
                    out.buf.clear();
                    return Err(e);
                }
            }
        }
        if out.buf.is_empty() && out.closing {
            fork_core::fdpass::shutdown_write((*self.write).as_ref().as_fd());
        }
        Ok(())
    }
}

/// Writes the queue: frames queued while other calls were in flight (so
/// that one write carries them all), or the rest once the socket has room.
async fn flush<Resp>(shared: Arc<Shared<Resp>>) {
    // Let the other callers of this round queue their frames first.
    tokio::task::yield_now().await;
    loop {
        if shared.write.writable().await.is_err() {
            let mut out = lock(&shared.out);
            out.broken = true;
            out.flushing = false;
            return;
        }
        let mut out = lock(&shared.out);
        if shared.write_some(&mut out).is_err() || out.buf.is_empty() {
            out.flushing = false;
            return;
        }
    }
}

/// Sends tarpc's `Cancel` for a call dropped before its reply.
struct CancelOnDrop<'a, Resp: Send + 'static> {
    shared: &'a Arc<Shared<Resp>>,
    id: u64,
    trace: tarpc::trace::Context,
    armed: bool,
}

impl<Resp: Send + 'static> Drop for CancelOnDrop<'_, Resp> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if lock(&self.shared.pending)
            .waiting
            .remove(&self.id)
            .is_none()
        {
            return;
        }
        let cancel: ClientMessage<()> = ClientMessage::Cancel {
            trace_context: self.trace,
            request_id: self.id,
        };
        if let Ok(frame) = codec::encode(self.shared.format, self.shared.limit, &cancel) {
            let _ = self.shared.send(&frame, true);
        }
    }
}

/// Completes the callers' replies until the connection ends, then fails
/// every call still waiting.
async fn read_replies<Resp>(
    shared: Arc<Shared<Resp>>,
    replies: impl Stream<Item = io::Result<Response<Resp>>>,
) {
    let mut replies = std::pin::pin!(replies);
    while let Some(Ok(reply)) = replies.next().await {
        let waiter = lock(&shared.pending).waiting.remove(&reply.request_id);
        if let Some(tx) = waiter {
            let _ = tx.send(reply.message);
        }
    }
    let mut pending = lock(&shared.pending);
    pending.ended = true;
    // Dropping the senders wakes every caller with "gone".
    pending.waiting.clear();
    drop(pending);
    shared.in_flight.close();
}
