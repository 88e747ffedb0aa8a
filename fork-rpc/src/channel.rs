//! The parent's side of the RPC connection: tarpc's wire format without
//! tarpc's dispatch task.
//!
//! tarpc's client hands every call to a dispatch task and back, which costs
//! two task hand-offs per call (and on a multi-threaded runtime, wakeups of
//! other threads). Here callers do the work themselves:
//!
//! - **Writing**: a caller writes its request itself, with one non-blocking
//!   `write` when it is alone; with other calls in flight, a short-lived
//!   task writes every request queued in that round at once.
//! - **Reading**: one waiting caller at a time is the *reader*, the one
//!   polled last: the socket wakes it when replies arrive, it reads them
//!   and completes the calls they answer (its own and others'), and when
//!   its own reply is in it hands the role to another waiting caller. A
//!   serial call is thus woken by the socket directly, as in a hand-written
//!   ping-pong. With no call waiting, a background task reads (events, the
//!   end of the connection).
//!
//! A reader's task may not poll it again soon, or ever: it may be busy, or
//! waiting for something else while it keeps the call (a second call made
//! in the same task is polled after it, so it takes the role). While calls
//! are in flight, the background task looks every [`WATCH`]: a wakeup that
//! no one read since its last look means the reader is not reading, so it
//! reads for it and names another reader. Such a reader delays the replies
//! of others by at most twice that; it never stalls them.
//!
//! Cancellation (a dropped call sends tarpc's `Cancel`), deadlines and trace
//! contexts work as with tarpc's client. Deadlines share one timer, in the
//! background task, set to the earliest: calls with the usual, growing
//! deadlines never touch a timer themselves (on a multi-threaded runtime,
//! registering one from outside the runtime's threads wakes one of them).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::marker::PhantomData;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::task::{Context as TaskContext, Poll, Wake, Waker, ready};
use std::time::{Duration, Instant};

use futures::Stream;
use serde::Serialize;
use tarpc::client::RpcError;
use tarpc::context::Context;
use tarpc::{ClientMessage, Request, Response, ServerError};
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{Semaphore, TryAcquireError};

use crate::codec;
use crate::config::Format;
use crate::variant;

type Reply<Resp> = Result<Resp, ServerError>;

/// How often the background task checks, while calls are in flight, that
/// the socket's wakeups are read.
pub(crate) const WATCH: Duration = Duration::from_millis(10);

/// The decoded replies from the worker, until the connection ends.
type Replies<Resp> = Pin<Box<dyn Stream<Item = io::Result<Response<Resp>>> + Send>>;

struct Shared<Resp> {
    state: Arc<Mutex<State<Resp>>>,
    /// The reply stream, locked by whoever reads; `None` once it ended.
    replies: Mutex<Option<Replies<Resp>>>,
    /// Someone found `replies` locked and left the reading to its holder:
    /// the holder reads again after unlocking.
    turned_away: AtomicBool,
    /// The waker the socket holds: it wakes the current reader.
    socket_waker: Waker,
    out: Mutex<Out>,
    write: Arc<OwnedWriteHalf>,
    next_id: AtomicU64,
    in_flight: Semaphore,
    format: Format,
    limit: u64,
}

struct State<Resp> {
    calls: HashMap<u64, Slot<Resp>>,
    /// Who reads when replies arrive.
    reader: Reader,
    /// The background reader's waker, once it ran.
    background: Option<Waker>,
    /// The earliest deadline of a waiting call, or one before it: when the
    /// background task's timer fires.
    timer: Option<Instant>,
    /// The socket woke the reader and no one read since.
    unread: bool,
    /// The background task checks every [`WATCH`] that wakeups are read.
    watching: bool,
    /// Calls started (`next_id`) when the background task last checked.
    started_at_check: u64,
    /// The connection ended: no reply will come.
    ended: bool,
}

/// A call waiting for its reply, its reply, or its expiry.
enum Slot<Resp> {
    Waiting {
        waker: Option<Waker>,
        deadline: Instant,
        /// The variant of the request (tarpc names it after the method),
        /// which the reply must match.
        method: Option<&'static str>,
    },
    Done(Reply<Resp>),
    /// Past its deadline, not yet told.
    Expired,
}

/// How a call ended.
enum Outcome<Resp> {
    Reply(Reply<Resp>),
    /// The connection ended first.
    Ended,
    Expired,
}

/// Who is woken when the socket has replies.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reader {
    Call(u64),
    Background,
}

impl<Resp> State<Resp> {
    /// How call `id` ended, removing a reply from its slot; else stores
    /// `waker` to be woken when it ends.
    fn outcome(&mut self, id: u64, waker: &Waker) -> Option<Outcome<Resp>> {
        match self.calls.get_mut(&id) {
            Some(Slot::Waiting { waker: stored, .. }) => {
                match stored {
                    Some(w) if w.will_wake(waker) => {}
                    _ => *stored = Some(waker.clone()),
                }
                None
            }
            Some(Slot::Done(_)) => match self.calls.remove(&id) {
                Some(Slot::Done(reply)) => Some(Outcome::Reply(reply)),
                _ => unreachable!("checked above"),
            },
            Some(Slot::Expired) => Some(Outcome::Expired),
            None => Some(Outcome::Ended),
        }
    }

    /// Whether `id` is a call still waiting, whose task can be woken.
    fn can_read(&self, id: u64) -> bool {
        matches!(
            self.calls.get(&id),
            Some(Slot::Waiting { waker: Some(_), .. })
        )
    }

    /// Whether the designated reader will read when woken.
    fn reader_ready(&self) -> bool {
        match self.reader {
            Reader::Call(id) => self.can_read(id),
            Reader::Background => true,
        }
    }

    /// Keeps the reader if it still waits, else names a waiting call, else
    /// the background task.
    fn designate(&mut self) {
        if self.reader_ready() {
            return;
        }
        self.reader = self
            .calls
            .iter()
            .find(|(_, slot)| matches!(slot, Slot::Waiting { waker: Some(_), .. }))
            .map_or(Reader::Background, |(&id, _)| Reader::Call(id));
    }

    /// The waker of the designated reader; the background task's when the
    /// designated call stopped waiting.
    fn reader_waker(&self) -> Option<&Waker> {
        if let Reader::Call(id) = self.reader
            && let Some(Slot::Waiting {
                waker: Some(waker), ..
            }) = self.calls.get(&id)
        {
            return Some(waker);
        }
        self.background.as_ref()
    }
}

/// The waker registered with the socket: passes readiness on to the
/// designated reader.
struct SocketWaker<Resp> {
    state: Arc<Mutex<State<Resp>>>,
}

impl<Resp: Send + 'static> Wake for SocketWaker<Resp> {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let waker = {
            let mut st = lock(&self.state);
            st.unread = true;
            st.reader_waker().cloned()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
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

impl<Req: Serialize + Send + 'static, Resp: Serialize + Send + 'static> Channel<Req, Resp> {
    /// Starts the background reader over `replies` and returns the channel.
    pub(crate) fn new(
        write: OwnedWriteHalf,
        replies: impl Stream<Item = io::Result<Response<Resp>>> + Send + 'static,
        format: Format,
        limit: u64,
        max_in_flight: usize,
    ) -> Self {
        let state = Arc::new(Mutex::new(State {
            calls: HashMap::new(),
            reader: Reader::Background,
            background: None,
            timer: None,
            // Until the first read, the socket has no waker: whoever polls
            // first reads.
            unread: true,
            watching: false,
            started_at_check: 0,
            ended: false,
        }));
        let shared = Arc::new(Shared {
            socket_waker: Waker::from(Arc::new(SocketWaker {
                state: state.clone(),
            })),
            state,
            replies: Mutex::new(Some(Box::pin(replies))),
            turned_away: AtomicBool::new(false),
            out: Mutex::new(Out::default()),
            write: Arc::new(write),
            next_id: AtomicU64::new(0),
            in_flight: Semaphore::new(max_in_flight.max(1)),
            format,
            limit,
        });
        tokio::spawn(read_in_background(shared.clone()));
        Channel {
            _closer: Arc::new(Closer(shared.clone())),
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
        match self.shared.in_flight.try_acquire() {
            Ok(permit) => permit.forget(),
            Err(TryAcquireError::NoPermits) => return Ok(Start::Full(ctx, request)),
            Err(TryAcquireError::Closed) => return Err(RpcError::Shutdown),
        }
        self.send_call(ctx, request).map(Start::Sent)
    }

    /// [`start`](Self::start) for a call that found no place free: waits
    /// for one.
    pub(crate) async fn start_waiting(&self, ctx: Context, request: Req) -> Result<Sent, RpcError> {
        self.shared
            .in_flight
            .acquire()
            .await
            .map_err(|_| RpcError::Shutdown)?
            .forget();
        self.send_call(ctx, request)
    }

    /// Sends a call that holds a place in flight (given back if it fails).
    fn send_call(&self, ctx: Context, request: Req) -> Result<Sent, RpcError> {
        let shared = &self.shared;
        let give_back = |e: RpcError| {
            shared.in_flight.add_permits(1);
            Err(e)
        };
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let method = variant::name_of(&request);
        let frame = match codec::encode(
            shared.format,
            shared.limit,
            &ClientMessage::Request(Request {
                context: ctx,
                id,
                message: request,
            }),
        ) {
            Ok(frame) => frame,
            Err(e) => return give_back(RpcError::Send(Box::new(e))),
        };
        let others_waiting = {
            let mut st = lock(&shared.state);
            if st.ended {
                drop(st);
                return give_back(RpcError::Shutdown);
            }
            st.calls.insert(
                id,
                Slot::Waiting {
                    waker: None,
                    deadline: ctx.deadline,
                    method,
                },
            );
            // Only a deadline earlier than the timer's moves it; the
            // background task looks at both when woken.
            let earlier = st.timer.is_none_or(|at| ctx.deadline < at);
            if earlier {
                st.timer = Some(ctx.deadline);
            }
            if earlier || !st.watching {
                st.watching = true;
                if let Some(background) = &st.background {
                    background.wake_by_ref();
                }
            }
            st.calls.len() > 1
        };
        // Alone, write at once (latency); with other calls in flight, let a
        // task write everything queued in this round at once (throughput).
        if shared.send(&frame, others_waiting).is_err() {
            shared.forget(id);
            return give_back(RpcError::Shutdown);
        }
        // From here on, ending the call before its outcome cancels it.
        Ok(Sent {
            id,
            trace: ctx.trace_context,
            armed: true,
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
    /// reply is forgotten and cancelled in the worker (tarpc's `Cancel`);
    /// its place in flight is given back.
    pub(crate) fn end_call(&self, sent: Sent) {
        let shared = &self.shared;
        if sent.armed && shared.forget(sent.id) {
            let cancel: ClientMessage<()> = ClientMessage::Cancel {
                trace_context: sent.trace,
                request_id: sent.id,
            };
            if let Ok(frame) = codec::encode(shared.format, shared.limit, &cancel) {
                let _ = shared.send(&frame, true);
            }
        }
        shared.in_flight.add_permits(1);
    }
}

/// A reply of another method than its request's (see [`crate::variant`])
/// becomes an error reply: tarpc's generated client would panic on it.
fn check_method<Resp: Serialize>(method: Option<&'static str>, reply: Reply<Resp>) -> Reply<Resp> {
    match (&reply, method) {
        (Ok(resp), Some(asked)) => match variant::name_of(resp) {
            Some(answered) if answered != asked => Err(ServerError::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the worker answered a `{asked}` request with a `{answered}` reply: \
                     it serves another service than this client's (an entry typed \
                     wrongly, or another version of the service)"
                ),
            )),
            _ => reply,
        },
        _ => reply,
    }
}

/// How [`Channel::start`] went.
pub(crate) enum Start<Req> {
    Sent(Sent),
    /// Every place in flight is taken: the call, to wait for one.
    Full(Context, Req),
}

/// A call sent and not yet ended: it holds a place in flight until
/// [`Channel::end_call`] (which every owner must call, also when dropped).
pub(crate) struct Sent {
    id: u64,
    trace: tarpc::trace::Context,
    /// Not answered yet (or expired): ending it cancels it in the worker.
    armed: bool,
}

impl<Resp: Serialize + Send + 'static> Shared<Resp> {
    /// How call `id` ended, or `Pending`. The call polled last is the
    /// reader (its task is surely still polling it); it reads if the socket
    /// woke a reader that did not read. An expired call keeps its slot until
    /// it is forgotten (and cancelled).
    fn poll_reply(&self, id: u64, cx: &mut TaskContext<'_>) -> Poll<Outcome<Resp>> {
        {
            let mut st = lock(&self.state);
            if let Some(outcome) = st.outcome(id, cx.waker()) {
                return Poll::Ready(outcome);
            }
            st.reader = Reader::Call(id);
            if !st.unread {
                return Poll::Pending;
            }
        }
        self.read(Some(id));
        lock(&self.state)
            .outcome(id, cx.waker())
            .map_or(Poll::Pending, Poll::Ready)
    }

    /// Reads every reply the socket has, completing the calls they answer,
    /// and leaves the socket's wakeups to a reader that will read: a
    /// waiting call, or the background task. If another thread is reading,
    /// leaves it to that one. `me` is the call reading, if one is: it is
    /// not woken for its own reply (a task woken while it runs is polled
    /// again, and on a multi-threaded runtime that wakes another thread).
    fn read(&self, me: Option<u64>) {
        loop {
            let mut replies = match self.replies.try_lock() {
                Ok(replies) => replies,
                Err(TryLockError::Poisoned(p)) => p.into_inner(),
                Err(TryLockError::WouldBlock) => {
                    // Its holder may have finished its last read already:
                    // ask it to look again, unless it has gone meanwhile.
                    self.turned_away.store(true, Ordering::SeqCst);
                    match self.replies.try_lock() {
                        Ok(replies) => replies,
                        Err(TryLockError::Poisoned(p)) => p.into_inner(),
                        Err(TryLockError::WouldBlock) => return,
                    }
                }
            };
            self.turned_away.store(false, Ordering::SeqCst);
            loop {
                {
                    let mut st = lock(&self.state);
                    st.designate();
                    st.unread = false;
                }
                self.read_available(&mut replies, me);
                // The reader named before that last read may have got its
                // reply in it: name another and read again, so that no
                // wakeup goes to a call that no longer waits.
                if lock(&self.state).reader_ready() {
                    break;
                }
            }
            drop(replies);
            if !self.turned_away.load(Ordering::SeqCst) {
                return;
            }
        }
    }

    /// Reads until the socket has nothing more (its wakeup then goes to the
    /// designated reader) or the connection ended.
    fn read_available(&self, replies: &mut Option<Replies<Resp>>, me: Option<u64>) {
        let mut cx = TaskContext::from_waker(&self.socket_waker);
        while let Some(stream) = replies.as_mut() {
            match stream.as_mut().poll_next(&mut cx) {
                Poll::Pending => return,
                Poll::Ready(Some(Ok(reply))) => self.complete(reply, me),
                Poll::Ready(None | Some(Err(_))) => {
                    // Dropping the stream ends the worker's event stream.
                    *replies = None;
                    self.end();
                }
            }
        }
    }

    /// Hands a reply to its call, waking it unless it is `me`.
    fn complete(&self, reply: Response<Resp>, me: Option<u64>) {
        let mut st = lock(&self.state);
        let Some(slot) = st.calls.get_mut(&reply.request_id) else {
            // Cancelled meanwhile.
            return;
        };
        if let Slot::Waiting { waker, method, .. } = slot {
            let waker = waker.take();
            *slot = Slot::Done(check_method(*method, reply.message));
            drop(st);
            if let Some(waker) = waker.filter(|_| me != Some(reply.request_id)) {
                waker.wake();
            }
        }
    }

    /// The connection ended: wake every waiting call (it finds no reply)
    /// and the background reader (it stops).
    fn end(&self) {
        let mut wakers = Vec::new();
        {
            let mut st = lock(&self.state);
            st.ended = true;
            st.calls.retain(|_, slot| match slot {
                Slot::Waiting { waker, .. } => {
                    wakers.extend(waker.take());
                    false
                }
                // Replies that came before the end stay for their calls.
                Slot::Done(_) | Slot::Expired => true,
            });
            wakers.extend(st.background.take());
        }
        self.in_flight.close();
        for waker in wakers {
            waker.wake();
        }
    }

    /// Forgets a call that will not wait for its reply, naming another
    /// reader if it was the reader. Whether it was unanswered.
    fn forget(&self, id: u64) -> bool {
        let (unanswered, was_reader) = {
            let mut st = lock(&self.state);
            let slot = st.calls.remove(&id);
            (
                matches!(slot, Some(Slot::Waiting { .. } | Slot::Expired)),
                st.reader == Reader::Call(id),
            )
        };
        if was_reader {
            self.read(None);
        }
        unanswered
    }

    /// Fails the waiting calls whose deadline passed by `now`; returns the
    /// earliest deadline left, which the timer is set to.
    fn expire(&self, now: Instant) -> Option<Instant> {
        let mut wakers = Vec::new();
        let mut next: Option<Instant> = None;
        let mut st = lock(&self.state);
        for slot in st.calls.values_mut() {
            if let Slot::Waiting {
                waker, deadline, ..
            } = slot
            {
                if *deadline <= now {
                    wakers.extend(waker.take());
                    *slot = Slot::Expired;
                } else {
                    next = Some(next.map_or(*deadline, |at| at.min(*deadline)));
                }
            }
        }
        st.timer = next;
        drop(st);
        for waker in wakers {
            waker.wake();
        }
        next
    }

    /// The background task's look every [`WATCH`]: if the socket's last
    /// wakeup was not read, the reader it went to is not polling; reads for
    /// it and names another (its task got that wakeup, so it needs no other
    /// one). Whether to look again: calls started or waited since.
    fn watch(&self) -> bool {
        let started = self.next_id.load(Ordering::Relaxed);
        let (unread, watching) = {
            let mut st = lock(&self.state);
            if st.unread
                && let Reader::Call(id) = st.reader
                && let Some(Slot::Waiting { waker, .. }) = st.calls.get_mut(&id)
            {
                *waker = None;
            }
            let idle = started == st.started_at_check
                && !st.calls.values().any(|s| matches!(s, Slot::Waiting { .. }));
            st.started_at_check = started;
            st.watching = !idle;
            (st.unread, st.watching)
        };
        if unread {
            self.read(None);
        }
        watching
    }
}

/// Reads when no call waits, so that events and the end of the connection
/// still get noticed; while calls are in flight, checks every [`WATCH`]
/// that the reader reads; fails calls past their deadline. Ends when the
/// connection does.
async fn read_in_background<Resp: Serialize + Send + 'static>(shared: Arc<Shared<Resp>>) {
    let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
    // What the timer is set for.
    let mut timer_for: Option<Instant> = None;
    // When to check on the reader next.
    let mut check: Option<Instant> = None;
    std::future::poll_fn(|cx| {
        let (mut deadline, mut watching, unread) = {
            let mut st = lock(&shared.state);
            if st.ended {
                return Poll::Ready(());
            }
            match &st.background {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => st.background = Some(cx.waker().clone()),
            }
            (st.timer, st.watching, st.unread)
        };
        if unread {
            shared.read(None);
        }
        loop {
            if watching && check.is_none() {
                check = Some(Instant::now() + WATCH);
            }
            let Some(at) = deadline.into_iter().chain(check).min() else {
                break;
            };
            if timer_for != Some(at) {
                // Deadlines are on the real clock (tarpc's); the timer is on
                // the runtime's, which need not be the real one: tokio's
                // paused clock in tests runs ahead of it. Set `at - now`
                // ahead; if it fires early, it is set again for what is left,
                // and the task yields meanwhile rather than spin.
                let on_runtime =
                    tokio::time::Instant::now() + at.saturating_duration_since(Instant::now());
                match &mut timer {
                    Some(timer) => timer.as_mut().reset(on_runtime),
                    None => timer = Some(Box::pin(tokio::time::sleep_until(on_runtime))),
                }
                timer_for = Some(at);
            }
            if let Some(timer) = &mut timer
                && timer.as_mut().poll(cx).is_pending()
            {
                break;
            }
            let now = Instant::now();
            if now < at {
                timer_for = None;
                continue;
            }
            if deadline.is_some_and(|at| at <= now) {
                deadline = shared.expire(now);
            }
            if check.is_some_and(|at| at <= now) {
                check = None;
                watching = shared.watch();
            }
        }
        if lock(&shared.state).ended {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
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
    // Spawned by the first caller of a round, this runs once that caller's
    // task yields (next, on a multi-threaded runtime's same thread), after
    // the other callers of the round queued their frames.
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
