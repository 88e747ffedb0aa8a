//! The parent's connection: tarpc's wire format without tarpc's dispatch
//! task. The thin concurrent shell around the [`InFlight`] table and the
//! reader [`Election`]: one lock over both, the [`ReadLock`] over the reply
//! stream, the socket's waker, and the [`Writer`].
//!
//! tarpc's client hands every call to a dispatch task and back, which costs
//! two task hand-offs per call (and on a multi-threaded runtime, wakeups of
//! other threads). Here callers do the work themselves: a caller writes its
//! request itself ([`super::writer`]), and the waiting call elected reader
//! ([`super::reader`]) reads the replies, its own and others'.
//!
//! Cancellation (a dropped call sends tarpc's `Cancel`), deadlines and trace
//! contexts work as with tarpc's client. Deadlines share one timer, in the
//! background task ([`super::background`]), set to the earliest: calls with
//! the usual, growing deadlines never touch a timer themselves (on a
//! multi-threaded runtime, registering one from outside the runtime's
//! threads wakes one of them).

use std::io;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context as TaskContext, Poll, Wake, Waker, ready};
use std::time::Instant;

use futures::Stream;
use serde::Serialize;
use tarpc::client::RpcError;
use tarpc::context::Context;
use tarpc::{ClientMessage, Request, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

use super::background;
use super::in_flight::{InFlight, Outcome};
use super::read_lock::ReadLock;
use super::reader::{Election, Look};
use super::writer::{Unsent, Writer};
use crate::config::Format;
use crate::shm;
use crate::variant;

/// The decoded replies from the worker, until the connection ends.
type Replies<Resp> = Pin<Box<dyn Stream<Item = io::Result<Response<Resp>>> + Send>>;

/// What the connection's lock guards: the table and the election, which
/// change together.
pub(super) struct State<Resp> {
    pub(super) calls: InFlight<Resp>,
    pub(super) election: Election,
}

pub(super) struct Shared<Resp> {
    state: Arc<Mutex<State<Resp>>>,
    /// The reply stream, read by one caller at a time; `None` once it
    /// ended.
    replies: ReadLock<Option<Replies<Resp>>>,
    /// The waker the socket holds: it wakes the current reader.
    socket_waker: Waker,
    writer: Arc<Writer>,
    next_id: AtomicU64,
    /// The places in flight; a [`Sent`] call owns one.
    in_flight: Arc<Semaphore>,
    format: Format,
    limit: u64,
    /// Big [`SharedBytes`](crate::SharedBytes) travel as memory files
    /// within these limits.
    shared: shm::Limits,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The waker registered with the socket: passes readiness on to the
/// elected reader.
struct SocketWaker<Resp> {
    state: Arc<Mutex<State<Resp>>>,
}

// ===== impl SocketWaker =====

impl<Resp: Send + 'static> Wake for SocketWaker<Resp> {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let waker = {
            let st = &mut *lock(&self.state);
            st.election.socket_woke(&st.calls)
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// A cheap, cloneable handle; when the last one is dropped, the sending side
/// is shut down after what was queued (a graceful close).
pub(crate) struct Channel<Req, Resp> {
    shared: Arc<Shared<Resp>>,
    _closer: Arc<Closer>,
    _req: PhantomData<fn(Req)>,
}

/// Closes the writing side when the last [`Channel`] goes.
struct Closer(Arc<Writer>);

impl Drop for Closer {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// How [`Channel::start`] went.
pub(crate) enum Start<Req> {
    Sent(Sent),
    /// Every place in flight is taken: the call, to wait for one.
    Full(Context, Req),
}

/// A call sent and not yet ended. It owns its place in flight: dropping it
/// gives the place back. Its owner hands it to [`Channel::end_call`] to
/// cancel it in the worker if it is unanswered.
pub(crate) struct Sent {
    id: u64,
    /// Not answered yet (or expired): ending it cancels it in the worker.
    armed: bool,
    _permit: OwnedSemaphorePermit,
}

// ===== impl Channel =====

impl<Req, Resp> Clone for Channel<Req, Resp> {
    fn clone(&self) -> Self {
        Channel {
            shared: self.shared.clone(),
            _closer: self._closer.clone(),
            _req: PhantomData,
        }
    }
}

impl<Req: Serialize + Send + 'static, Resp: Serialize + Send + 'static> Channel<Req, Resp> {
    /// Starts the background task over `replies` and returns the channel.
    pub(crate) fn new(
        write: tokio::net::unix::OwnedWriteHalf,
        replies: impl Stream<Item = io::Result<Response<Resp>>> + Send + 'static,
        format: Format,
        limit: u64,
        max_in_flight: usize,
        (shared_out, shared): (shm::Outbox, shm::Limits),
    ) -> Self {
        let state = Arc::new(Mutex::new(State {
            calls: InFlight::new(),
            election: Election::new(),
        }));
        let writer = Writer::new(write, shared_out);
        let shared = Arc::new(Shared {
            socket_waker: Waker::from(Arc::new(SocketWaker {
                state: state.clone(),
            })),
            state,
            replies: ReadLock::new(Some(Box::pin(replies))),
            writer: writer.clone(),
            next_id: AtomicU64::new(0),
            in_flight: Arc::new(Semaphore::new(max_in_flight.max(1))),
            format,
            limit,
            shared,
        });
        tokio::spawn(background::run(shared.clone()));
        Channel {
            _closer: Arc::new(Closer(writer)),
            shared,
            _req: PhantomData,
        }
    }

    /// Starts a call: fails it if its deadline passed; takes a place in
    /// flight, or hands the call back if none is free (it then waits for one
    /// in [`start_waiting`](Self::start_waiting)); encodes, registers and
    /// sends it. Errors have tarpc's kinds: `Send` if the request cannot be
    /// encoded, `Shutdown` if the connection is gone, `DeadlineExceeded`.
    pub(crate) fn start(&self, ctx: Context, request: Req) -> Result<Start<Req>, RpcError> {
        if ctx.deadline <= Instant::now() {
            return Err(RpcError::DeadlineExceeded);
        }
        let permit = match self.shared.in_flight.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(TryAcquireError::NoPermits) => return Ok(Start::Full(ctx, request)),
            Err(TryAcquireError::Closed) => return Err(RpcError::Shutdown),
        };
        self.send_call(ctx, request, permit).map(Start::Sent)
    }

    /// [`start`](Self::start) for a call that found no place free: waits
    /// for one.
    pub(crate) async fn start_waiting(&self, ctx: Context, request: Req) -> Result<Sent, RpcError> {
        let permit = self
            .shared
            .in_flight
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| RpcError::Shutdown)?;
        self.send_call(ctx, request, permit)
    }

    /// Sends a call that holds a place in flight (given back, by dropping
    /// it, if it fails).
    fn send_call(
        &self,
        ctx: Context,
        request: Req,
        permit: OwnedSemaphorePermit,
    ) -> Result<Sent, RpcError> {
        let shared = &self.shared;
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let method = variant::name_of(&request);
        let others_waiting = {
            let st = &mut *lock(&shared.state);
            let registered = st
                .calls
                .register(id, ctx.deadline, method, ctx.trace_context)
                .map_err(|_| RpcError::Shutdown)?;
            // The background task looks at the timer and the watch when
            // woken.
            if let Some(background) = st.election.registered(registered) {
                background.wake_by_ref();
            }
            registered.others
        };
        // Alone, write at once (latency); with other calls in flight, let a
        // task write everything queued in this round at once (throughput).
        let message = ClientMessage::Request(Request {
            context: ctx,
            id,
            message: request,
        });
        if let Err(unsent) = shared.writer.send(
            shared.format,
            shared.limit,
            Some(shared.shared),
            &message,
            others_waiting,
        ) {
            shared.forget(id);
            return Err(match unsent {
                Unsent::Encode(e) => RpcError::Send(Box::new(e)),
                Unsent::Broken => RpcError::Shutdown,
            });
        }
        // From here on, ending the call before its outcome cancels it.
        Ok(Sent {
            id,
            armed: true,
            _permit: permit,
        })
    }
}

impl<Req, Resp: Serialize + Send + 'static> Channel<Req, Resp> {
    /// The outcome of a sent call, once it has one: its reply, `Shutdown`
    /// if the connection ended first, `DeadlineExceeded`, `Server` for an
    /// error reply.
    pub(crate) fn poll_sent(
        &self,
        sent: &mut Sent,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Result<Resp, RpcError>> {
        Poll::Ready(match ready!(self.shared.poll_reply(sent.id, cx)) {
            Outcome::Reply(reply) => {
                sent.armed = false;
                reply.map_err(RpcError::Server)
            }
            Outcome::Ended => {
                sent.armed = false;
                Err(RpcError::Shutdown)
            }
            // Still armed: ending it cancels it in the worker.
            Outcome::Expired => Err(RpcError::DeadlineExceeded),
        })
    }

    /// Ends a sent call, whether or not it has its outcome: one without its
    /// reply is forgotten and cancelled in the worker (tarpc's `Cancel`).
    /// Its place in flight is given back when `sent` is dropped, here.
    pub(crate) fn end_call(&self, sent: Sent) {
        let shared = &self.shared;
        if sent.armed
            && let Some(trace_context) = shared.forget(sent.id)
        {
            let cancel: ClientMessage<()> = ClientMessage::Cancel {
                trace_context,
                request_id: sent.id,
            };
            let _ = shared
                .writer
                .send(shared.format, shared.limit, None, &cancel, true);
        }
    }
}

// ===== impl Shared =====

impl<Resp: Serialize + Send + 'static> Shared<Resp> {
    /// How call `id` ended, or `Pending`. The call polled last is the
    /// reader; it reads if the socket woke a reader that did not read.
    fn poll_reply(&self, id: u64, cx: &mut TaskContext<'_>) -> Poll<Outcome<Resp>> {
        {
            let st = &mut *lock(&self.state);
            if let Some(outcome) = st.calls.outcome(id, cx.waker()) {
                return Poll::Ready(outcome);
            }
            if !st.election.polled(id) {
                return Poll::Pending;
            }
        }
        self.read(Some(id));
        lock(&self.state)
            .calls
            .outcome(id, cx.waker())
            .map_or(Poll::Pending, Poll::Ready)
    }

    /// Reads every reply the socket has, completing the calls they answer,
    /// and leaves the socket's wakeups to a reader that will read (see
    /// [`Election`]). If another thread is reading, leaves it to that one.
    /// `me` is the call reading, if one is: it is not woken for its own
    /// reply (a task woken while it runs is polled again, and on a
    /// multi-threaded runtime that wakes another thread).
    pub(super) fn read(&self, me: Option<u64>) {
        self.replies.run(|replies| {
            loop {
                {
                    let st = &mut *lock(&self.state);
                    st.election.start_read(&st.calls);
                }
                self.read_available(replies, me);
                // The reader elected before that last read may have got
                // its reply in it: elect another and read again, so that
                // no wakeup goes to a call that no longer waits.
                let st = &*lock(&self.state);
                if st.election.ready(&st.calls) {
                    break;
                }
            }
        });
    }

    /// Reads until the socket has nothing more (its wakeup then goes to the
    /// elected reader) or the connection ended.
    fn read_available(&self, replies: &mut Option<Replies<Resp>>, me: Option<u64>) {
        let mut cx = TaskContext::from_waker(&self.socket_waker);
        while let Some(stream) = replies.as_mut() {
            match stream.as_mut().poll_next(&mut cx) {
                Poll::Pending => return,
                Poll::Ready(Some(Ok(reply))) => {
                    let id = reply.request_id;
                    let waker = lock(&self.state).calls.complete(id, reply.message);
                    if let Some(waker) = waker.filter(|_| me != Some(id)) {
                        waker.wake();
                    }
                }
                Poll::Ready(None | Some(Err(_))) => {
                    // Dropping the stream ends the worker's event stream.
                    *replies = None;
                    self.end();
                }
            }
        }
    }

    /// The connection ended: wake every waiting call (it finds no reply)
    /// and the background task (it stops).
    fn end(&self) {
        let mut wakers = Vec::new();
        {
            let st = &mut *lock(&self.state);
            st.calls.end(&mut wakers);
            wakers.extend(st.election.take_background());
        }
        self.in_flight.close();
        for waker in wakers {
            waker.wake();
        }
    }

    /// Forgets a call that will not wait for its reply, electing another
    /// reader if it was the reader. If it was unanswered, its trace
    /// context, to cancel it with.
    fn forget(&self, id: u64) -> Option<tarpc::trace::Context> {
        let (unanswered, was_reader) = {
            let st = &mut *lock(&self.state);
            (st.calls.forget(id), st.election.is_reader(id))
        };
        if was_reader {
            self.read(None);
        }
        unanswered
    }

    /// Fails the waiting calls whose deadline passed by `now`; returns the
    /// earliest deadline left, which the timer is set to.
    pub(super) fn expire(&self, now: Instant) -> Option<Instant> {
        let mut wakers = Vec::new();
        let next = lock(&self.state).calls.expire(now, &mut wakers);
        for waker in wakers {
            waker.wake();
        }
        next
    }

    /// The background task's look every [`WATCH`](super::reader::WATCH):
    /// reads for a reader that did not. Whether to look again.
    pub(super) fn watch(&self) -> bool {
        let started = self.next_id.load(Ordering::Relaxed);
        let Look { read, again } = {
            let st = &mut *lock(&self.state);
            st.election.watch(&mut st.calls, started)
        };
        if read {
            self.read(None);
        }
        again
    }

    pub(super) fn state(&self) -> MutexGuard<'_, State<Resp>> {
        lock(&self.state)
    }
}
