//! The worker side: serving a tarpc service on the worker's socket.
//!
//! A worker serves one connection, so it does without tarpc's server
//! machinery (`BaseChannel`, which per request makes a tracing span with
//! OpenTelemetry context, a deadline timer entry, an abort handle and a
//! channel hop for the reply). One task, `Server`, serves the same wire
//! format in rounds:
//!
//! 1. read what the parent sent, and decode every complete frame: a request
//!    joins the queue, a cancellation drops its request (queued or running);
//! 2. start queued requests in arrival order, at most the [`Mode`]'s limit at
//!    once, and poll the running handlers until they all wait: a request
//!    whose deadline passed never starts, and a handler still running at
//!    its deadline is dropped (tarpc's rule: the caller has given up);
//! 3. append each reply, after the events its handler sent before it, to
//!    one output buffer;
//! 4. write that buffer with one non-blocking write.
//!
//! A batch of requests read together is thus answered with one write. When
//! the parent closes its side, the worker finishes every request it
//! received, writes the replies and shuts its side down.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, OwnedFd};
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, BytesMut};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tarpc::server::Serve;
use tarpc::{ClientMessage, Request, RequestName, Response, ServerError};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::{mpsc, oneshot};
use tracing::level_filters::LevelFilter;
use tracing::{Level, Span};

use crate::codec;
use crate::config::{Config, Format, Mode};
use crate::error::{Error, HandlerPanic, Result};
use crate::message::{self, WorkerMsg};

/// What a worker's init hook gets: its arguments and descriptors, a sender
/// for events, the receiver of descriptors sent later, and a place for the
/// done hook.
pub struct Setup<Ev> {
    args: Vec<Vec<u8>>,
    fds: Vec<OwnedFd>,
    events: EventSender<Ev>,
    fd_receiver: Option<FdReceiver>,
    done: Option<Box<dyn FnOnce()>>,
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
        let arg_error = |message: String| Error::Core(fork_core::Error::Arg { index, message });
        let bytes = self
            .args
            .get(index)
            .ok_or_else(|| arg_error(format!("no such argument ({} sent)", self.args.len())))?;
        bincode::deserialize(bytes).map_err(|e| arg_error(e.to_string()))
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

// ===== events =====

/// What an [`EventSender`] hands to the serving loop, in order.
enum Outgoing {
    /// An encoded frame (an event or a retire request), without its length.
    Frame(Vec<u8>),
    /// Write everything queued so far, then say so.
    Flush(oneshot::Sender<()>),
}

/// Sends events to the parent, in order with the replies (cheap to clone).
///
/// The serving loop writes the events queued so far before each reply, so an
/// event sent before a handler returns reaches the parent before that
/// handler's reply.
pub struct EventSender<Ev> {
    out: mpsc::UnboundedSender<Outgoing>,
    format: Format,
    limit: u64,
    _ev: PhantomData<fn(Ev)>,
}

impl<Ev> Clone for EventSender<Ev> {
    fn clone(&self) -> Self {
        EventSender {
            out: self.out.clone(),
            format: self.format,
            limit: self.limit,
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
            .send(Outgoing::Frame(frame))
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
        let event = codec::encode(self.format, self.limit, event)?;
        // The `Event` variant encodes the same whatever the reply type.
        let frame = codec::encode(self.format, self.limit, &WorkerMsg::<()>::Event(event))?;
        self.out
            .send(Outgoing::Frame(frame))
            .map_err(|_| Error::Io(io::ErrorKind::BrokenPipe.into()))
    }
}

// ===== descriptors =====

/// Receives descriptors the parent sends while the worker serves, in order.
#[derive(Debug)]
pub struct FdReceiver {
    sock: tokio::net::UnixDatagram,
}

impl FdReceiver {
    /// Waits for the next batch of descriptors; `None` once the parent
    /// closed the channel.
    ///
    /// # Errors
    ///
    /// I/O errors, or a truncated control message.
    pub async fn recv(&mut self) -> Result<Option<Vec<OwnedFd>>> {
        let mut buf = [0u8; 16];
        let got = self
            .sock
            .async_io(tokio::io::Interest::READABLE, || {
                fork_core::fdpass::recv_fds(self.sock.as_fd(), &mut buf)
            })
            .await?;
        Ok(got.map(|(_, fds)| fds))
    }
}

// ===== serving =====

/// Serves the service that `init` builds on the worker's socket, then exits.
/// This is what [`entry!`](crate::entry) calls; use it directly to serve from
/// your own [`fork_core::Entry`].
///
/// In order: decode the configuration the parent sent (in the fork's
/// [slot](fork_core::Context::take_slot)), build a
/// `current_thread` runtime, run `init` (the init hook: a failure is sent to
/// the parent as the error of its spawn call), serve until the parent closes
/// the connection, flush every reply, run the done hook, return.
///
/// # Errors
///
/// Setup failures, the init hook's failure, or a broken connection.
pub fn serve<S, Ev, E>(
    mut ctx: fork_core::Context,
    init: fn(&mut Setup<Ev>) -> std::result::Result<S, E>,
) -> Result<()>
where
    S: Serve + Clone + 'static,
    S::Req: DeserializeOwned + RequestName + 'static,
    S::Resp: Serialize + 'static,
    Ev: Serialize + 'static,
    E: fmt::Display,
{
    // fork-rpc's own configuration and descriptor channel come in the
    // fork's slot, apart from the user's arguments and descriptors.
    let slot = ctx.take_slot().unwrap_or_default();
    let config: Config = bincode::deserialize(&slot.data).map_err(|e| {
        Error::Protocol(format!("no fork-rpc configuration in the fork's slot: {e}"))
    })?;
    let side = slot
        .fds
        .into_iter()
        .next()
        .ok_or_else(|| Error::Protocol("no descriptor channel in the fork's slot".into()))?;
    let (socket, args, fds) = ctx.into_parts();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let _guard = rt.enter();
    socket.set_nonblocking(true)?;
    // Registered for writability too, though the worker rarely waits to
    // write: the parent reading replies then reports room here, which wakes
    // an idle worker just before the parent's next requests arrive, so it
    // is up when they do. A pool at load 2 does twice the jobs per second
    // with it on these machines (see the book's RPC performance chapter).
    let mut stream = tokio::net::UnixStream::from_std(socket)?;
    let side = std::os::unix::net::UnixDatagram::from(side);
    side.set_nonblocking(true)?;
    let side = tokio::net::UnixDatagram::from_std(side)?;

    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let mut setup = Setup {
        args,
        fds,
        events: EventSender {
            out: out_tx,
            format: config.format,
            limit: config.max_frame as u64,
            _ev: PhantomData,
        },
        fd_receiver: Some(FdReceiver { sock: side }),
        done: None,
    };
    let service = match init(&mut setup) {
        Ok(s) => s,
        Err(e) => {
            let message = e.to_string();
            let hs = message::handshake(message::INIT_FAILED, &message);
            rt.block_on(stream.write_all(&hs))?;
            return Err(Error::Init(message));
        }
    };
    let done = setup.done.take();
    drop(setup);
    // After the init hook: a hook it installed runs after ours.
    record_panic_locations();
    let result = rt.block_on(run(config, stream, service, out_rx));
    if let Some(done) = done {
        // Not after a handler's panic: the worker is failing.
        if !matches!(result, Err(Error::Panicked(_))) {
            done();
        }
    }
    result
}

/// Says the worker is ready, serves until the parent closes the connection
/// (or `SIGTERM` comes), then shuts the connection down. A handler's panic is
/// reported to the parent, and ends serving with [`Error::Panicked`].
async fn run<S>(
    config: Config,
    mut stream: tokio::net::UnixStream,
    service: S,
    events: mpsc::UnboundedReceiver<Outgoing>,
) -> Result<()>
where
    S: Serve + Clone + 'static,
    S::Req: DeserializeOwned + RequestName + 'static,
    S::Resp: Serialize + 'static,
{
    // Installed before the parent hears the worker is ready. Without a
    // handler (it cannot be installed), SIGTERM keeps its default action
    // and ends the worker at once.
    let terminate = signal(SignalKind::terminate()).ok();
    stream
        .write_all(&message::handshake(message::READY, ""))
        .await?;
    let mut server = Server::new(&config, stream, service, S::serve, events);
    server.terminate = terminate;
    match std::future::poll_fn(|cx| server.poll_serve(cx)).await? {
        End::Closed => {
            server.shutdown_write();
            Ok(())
        }
        End::Panicked(panic) => {
            // The parent gets everything queued before the panic, then its
            // message (unless it exceeds the frame limit), as long as it
            // reads.
            server.drain_events();
            let _ = server.push(&WorkerMsg::<()>::Panic(panic.clone()));
            let _ = std::future::poll_fn(|cx| server.poll_write(cx)).await;
            server.shutdown_write();
            // The worker then ends as every worker does (fork-core's entry
            // path: stdout flushed, `_exit`, no exit handlers of the
            // template), with code 101.
            Err(Error::Panicked(panic))
        }
    }
}

// ===== panics =====

thread_local! {
    /// Where the last panic on this thread happened, as the panic hook saw
    /// it (a `catch_unwind` payload does not say).
    static PANIC_LOCATION: std::cell::Cell<Option<String>> = const { std::cell::Cell::new(None) };
}

/// Installs a panic hook that records where a panic happens, then runs the
/// hook that was installed before (by default, the one that prints it).
/// Only in a worker, which is a process of fork-rpc's own.
fn record_panic_locations() {
    let previous = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        let location = info.location().map(ToString::to_string);
        PANIC_LOCATION.with(|l| l.set(location));
        previous(info);
    }));
}

/// A panic caught on this thread, with the location its hook recorded.
fn caught(payload: &(dyn std::any::Any + Send)) -> HandlerPanic {
    HandlerPanic {
        message: fork_core::__private::panic_message(payload),
        location: PANIC_LOCATION.with(std::cell::Cell::take),
    }
}

/// Most requests read ahead of the handlers, waiting their turn; beyond
/// this, the worker stops reading (the parent's writes then wait).
const MAX_QUEUED: usize = 1024;

/// Free room in the input buffer below which it grows before a read.
const MIN_READ_ROOM: usize = 4 * 1024;

/// How much the input buffer grows by when it has too little free room.
const READ_CHUNK: usize = 64 * 1024;

/// Most bytes read in one round; a round that reaches it polls again after
/// letting other tasks run.
const MAX_READ_PER_ROUND: usize = 256 * 1024;

/// Longest a round holds replies back while it starts more handlers: past
/// it, they are written before the next handler starts.
const MAX_HOLD: Duration = Duration::from_millis(1);

/// The clock as a round reads it: at most once after each handler that
/// ends, and only to start another.
#[derive(Default)]
struct RoundClock {
    /// The time, read since the last handler ended.
    now: Option<Instant>,
    /// The first time read in this round, or of the last write since.
    since: Option<Instant>,
}

/// How serving ended.
enum End {
    /// The parent closed its side and got every reply, or went away.
    Closed,
    /// A handler panicked.
    Panicked(HandlerPanic),
}

/// Where reading stood at the end of a round's read step.
enum ReadState {
    /// The socket has nothing more for now (or reading ended for good).
    Dry,
    /// The queue is full: reading resumes once it has room.
    Full,
    /// The round's read allowance is spent: poll again.
    Budget,
}

/// What became of a handler.
enum Outcome<Resp> {
    /// It returned this reply to request `.0`.
    Done(u64, std::result::Result<Resp, ServerError>),
    /// Request `.0` reached its deadline before its handler returned: no
    /// reply (the caller has given up).
    Expired(u64),
    /// Its request was cancelled: no reply.
    Cancelled,
    /// It panicked.
    Panicked(HandlerPanic),
}

/// Hashes request ids (counters, in practice) with one multiplication,
/// which spreads consecutive ids over a table's buckets.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(self.0.rotate_left(8) ^ u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The serving loop of one connection, polled by one task (see the module
/// docs). `F` is the future of [`Serve::serve`], which has no name.
struct Server<S: Serve, F> {
    stream: tokio::net::UnixStream,
    service: S,
    /// Starts a handler (`Serve::serve`).
    call: fn(S, tarpc::context::Context, S::Req) -> F,
    format: Format,
    max_frame: usize,
    /// Most handlers running at once.
    concurrency: usize,
    /// Bytes read and not decoded yet.
    input: BytesMut,
    /// Reading has ended: the parent closed its side, or sent what cannot be
    /// read.
    eof: bool,
    /// Why reading ended, if not a graceful close: the result of serving,
    /// once every request received is answered.
    failure: Option<Error>,
    /// Requests waiting for a handler, in arrival order.
    queue: VecDeque<Request<S::Req>>,
    /// Ids of the requests queued or running.
    in_flight: HashSet<u64, BuildHasherDefault<IdHasher>>,
    running: FuturesUnordered<Handler<F>>,
    events: mpsc::UnboundedReceiver<Outgoing>,
    /// Frames to write.
    output: BytesMut,
    /// Bytes written so far, in all.
    written: u64,
    /// Flush requests, each with the value of `written` that answers it.
    flushes: VecDeque<(u64, oneshot::Sender<()>)>,
    /// `SIGTERM`, until it came.
    terminate: Option<Signal>,
    /// `SIGTERM` came: reading stops once what was sent is read.
    terminating: bool,
}

// ===== impl Server =====

impl<S, F> Server<S, F>
where
    S: Serve + Clone,
    S::Req: DeserializeOwned + RequestName,
    S::Resp: Serialize,
    F: Future<Output = std::result::Result<S::Resp, ServerError>>,
{
    fn new(
        config: &Config,
        stream: tokio::net::UnixStream,
        service: S,
        call: fn(S, tarpc::context::Context, S::Req) -> F,
        events: mpsc::UnboundedReceiver<Outgoing>,
    ) -> Self {
        let concurrency = match config.mode {
            Mode::Sync => 1,
            Mode::Async { limit } => limit.max(1),
        };
        Server {
            stream,
            service,
            call,
            format: config.format,
            max_frame: config.max_frame,
            concurrency,
            input: BytesMut::new(),
            eof: false,
            failure: None,
            queue: VecDeque::new(),
            in_flight: HashSet::default(),
            running: FuturesUnordered::new(),
            events,
            output: BytesMut::new(),
            written: 0,
            flushes: VecDeque::new(),
            terminate: None,
            terminating: false,
        }
    }

    /// The frame limit, as the codec takes it.
    fn limit(&self) -> u64 {
        self.max_frame as u64
    }

    /// Serves one round: read, run the handlers, write. `Ready` once the
    /// parent closed its side and every reply is written, or when a handler
    /// panicked.
    fn poll_serve(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<End>> {
        let read = self.read(cx);
        self.poll_terminate(cx, &read)?;
        if let Some(panic) = self.run_handlers(cx)? {
            return Poll::Ready(Ok(End::Panicked(panic)));
        }
        self.poll_events(cx);
        let written = match self.poll_write(cx) {
            Poll::Ready(Err(e)) => return Poll::Ready(parent_gone(e).map(|()| End::Closed)),
            written => written,
        };
        if self.eof && self.queue.is_empty() && self.running.is_empty() {
            return match (written, self.failure.take()) {
                (Poll::Pending, _) => Poll::Pending,
                (Poll::Ready(_), Some(e)) => Poll::Ready(Err(e)),
                (Poll::Ready(_), None) => Poll::Ready(Ok(End::Closed)),
            };
        }
        let again = match read {
            ReadState::Dry => false,
            ReadState::Full => self.queue.len() < MAX_QUEUED,
            ReadState::Budget => true,
        };
        if again {
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }

    /// Honours `SIGTERM`: asks the parent to retire this worker (a pool
    /// sends it nothing more), reads what the parent already sent, then
    /// reads no more, so that the worker answers what it has and exits 0.
    ///
    /// # Errors
    ///
    /// If the retire request cannot be encoded.
    fn poll_terminate(&mut self, cx: &mut TaskContext<'_>, read: &ReadState) -> Result<()> {
        if let Some(term) = &mut self.terminate
            && term.poll_recv(cx).is_ready()
        {
            self.terminate = None;
            self.terminating = true;
            self.push(&WorkerMsg::<()>::Retire)?;
        }
        if self.terminating && !self.eof && matches!(read, ReadState::Dry) {
            self.stop_reading(None);
        }
        Ok(())
    }

    /// Reads and decodes what the parent sent, until the socket runs dry,
    /// the queue is full or the round's allowance is spent.
    fn read(&mut self, cx: &mut TaskContext<'_>) -> ReadState {
        let mut read = 0;
        loop {
            if let Err(e) = self.decode() {
                self.stop_reading(Some(Error::Protocol(format!("from the parent: {e}"))));
            }
            if self.eof {
                return ReadState::Dry;
            }
            if self.queue.len() >= MAX_QUEUED {
                return ReadState::Full;
            }
            if read >= MAX_READ_PER_ROUND {
                return ReadState::Budget;
            }
            if self.input.capacity() - self.input.len() < MIN_READ_ROOM {
                self.input.reserve(READ_CHUNK);
            }
            // A short read tells tokio the socket is drained, so the next
            // poll returns `Pending` without a system call.
            let stream = Pin::new(&mut self.stream);
            match tokio_util::io::poll_read_buf(stream, cx, &mut self.input) {
                Poll::Pending => return ReadState::Dry,
                Poll::Ready(Ok(0)) => {
                    let failure = (!self.input.is_empty()).then(|| {
                        Error::Protocol("the parent closed the connection inside a frame".into())
                    });
                    self.stop_reading(failure);
                }
                Poll::Ready(Ok(n)) => read += n,
                // The parent went away: nobody is left to answer.
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::ConnectionReset => {
                    self.stop_reading(None);
                }
                Poll::Ready(Err(e)) => self.stop_reading(Some(e.into())),
            }
        }
    }

    /// Ends reading; `failure` is the result of serving once the requests
    /// received are answered.
    fn stop_reading(&mut self, failure: Option<Error>) {
        self.eof = true;
        self.failure = failure;
        self.input = BytesMut::new();
    }

    /// Decodes the complete frames in the input buffer while the queue has
    /// room.
    ///
    /// # Errors
    ///
    /// A frame longer than the limit (checked before its bytes are awaited),
    /// or one that does not decode: nothing after it can be read.
    fn decode(&mut self) -> io::Result<()> {
        while self.queue.len() < MAX_QUEUED {
            let frame = codec::decode_frame::<ClientMessage<S::Req>>(
                &mut self.input,
                self.max_frame,
                self.format,
            )?;
            let Some(message) = frame else {
                break;
            };
            self.receive(message);
        }
        Ok(())
    }

    /// Takes in one message from the parent.
    fn receive(&mut self, message: ClientMessage<S::Req>) {
        match message {
            // A request whose id is in flight already is ignored, as tarpc
            // does.
            ClientMessage::Request(request) if self.in_flight.insert(request.id) => {
                self.queue.push_back(request);
            }
            ClientMessage::Cancel { request_id, .. } => self.cancel(request_id),
            _ => {}
        }
    }

    /// Drops request `id`, queued or running; its caller gave up, and gets
    /// no reply.
    fn cancel(&mut self, id: u64) {
        if !self.in_flight.remove(&id) {
            return;
        }
        if let Some(i) = self.queue.iter().position(|r| r.id == id) {
            self.queue.remove(i);
            return;
        }
        if let Some(handler) = Pin::new(&mut self.running)
            .iter_pin_mut()
            .find(|h| h.id == id)
        {
            handler.cancel();
        }
    }

    /// Starts queued requests while there is room, and polls the handlers
    /// until they all wait, appending the replies to the output. Returns a
    /// handler's panic.
    ///
    /// # Errors
    ///
    /// If not even the error reply saying a reply could not be encoded can
    /// be encoded.
    fn run_handlers(&mut self, cx: &mut TaskContext<'_>) -> Result<Option<HandlerPanic>> {
        let mut clock = RoundClock::default();
        loop {
            if let Err(message) = self.start_handlers(cx, &mut clock) {
                return Ok(Some(message));
            }
            let Poll::Ready(Some(outcome)) = self.running.poll_next_unpin(cx) else {
                return Ok(None);
            };
            clock.now = None;
            match outcome {
                Outcome::Done(id, reply) => {
                    self.in_flight.remove(&id);
                    // What the handler sent before it returned goes first.
                    self.drain_events();
                    self.push_reply(id, reply)?;
                }
                Outcome::Expired(id) => {
                    self.in_flight.remove(&id);
                }
                Outcome::Cancelled => {}
                Outcome::Panicked(panic) => return Ok(Some(panic)),
            }
        }
    }

    /// Starts queued requests, in order, while fewer than `concurrency` run;
    /// one past its deadline is dropped instead.
    ///
    /// # Errors
    ///
    /// A panic while starting a handler.
    fn start_handlers(
        &mut self,
        cx: &mut TaskContext<'_>,
        clock: &mut RoundClock,
    ) -> std::result::Result<(), HandlerPanic> {
        while self.running.len() < self.concurrency {
            let Some(request) = self.queue.pop_front() else {
                break;
            };
            let now = *clock.now.get_or_insert_with(Instant::now);
            if request.context.deadline <= now {
                self.in_flight.remove(&request.id);
                continue;
            }
            // Slow handlers one after the other (a backlog in sync mode) do
            // not hold back the replies made so far until the round ends. A
            // write error shows again when the round writes.
            let since = *clock.since.get_or_insert(now);
            if !self.output.is_empty() && now.duration_since(since) >= MAX_HOLD {
                let _ = self.poll_write(cx);
                clock.since = Some(now);
            }
            let handler = panic::catch_unwind(AssertUnwindSafe(|| self.start(request)))
                .map_err(|payload| caught(&*payload))?;
            self.running.push(handler);
        }
        Ok(())
    }

    /// Makes the handler of a request, in a child of the caller's trace
    /// context, as tarpc's server does when no OpenTelemetry subscriber is
    /// installed.
    fn start(&self, request: Request<S::Req>) -> Handler<F> {
        let Request {
            mut context,
            id,
            message,
        } = request;
        context.trace_context = tarpc::trace::Context {
            span_id: tarpc::trace::SpanId::random(&mut rand::rng()),
            ..context.trace_context
        };
        // Without a subscriber that wants it, even a disabled span costs
        // work (for the `log` crate) when made, entered and dropped.
        let span = (Level::INFO <= LevelFilter::current())
            .then(|| {
                tracing::info_span!(
                    "RPC",
                    rpc.trace_id = %context.trace_id(),
                    otel.kind = "server",
                    otel.name = message.name(),
                )
            })
            .filter(|span| !span.is_disabled());
        Handler {
            id,
            deadline: context.deadline,
            span,
            call: Some((self.call)(self.service.clone(), context, message)),
            timer: None,
            waker: None,
        }
    }

    /// Appends the reply to request `request_id`. A reply that cannot be
    /// sent (too big, not serialisable) fails its call, not the connection.
    fn push_reply(
        &mut self,
        request_id: u64,
        message: std::result::Result<S::Resp, ServerError>,
    ) -> Result<()> {
        let reply = WorkerMsg::Reply(Response {
            request_id,
            message,
        });
        if let Err(e) = codec::encode_frame(self.format, self.limit(), &reply, &mut self.output) {
            self.push(&WorkerMsg::<()>::Reply(Response {
                request_id,
                message: Err(ServerError::new(
                    io::ErrorKind::InvalidData,
                    format!("the reply could not be sent: {e}"),
                )),
            }))?;
        }
        Ok(())
    }

    /// Appends one message to the output.
    fn push(&mut self, message: &WorkerMsg<()>) -> Result<()> {
        Ok(codec::encode_frame(
            self.format,
            self.limit(),
            message,
            &mut self.output,
        )?)
    }

    /// Appends the events queued so far to the output, without waiting.
    /// Only those: a sender on another thread cannot keep the loop here.
    fn drain_events(&mut self) {
        for _ in 0..self.events.len() {
            match self.events.try_recv() {
                Ok(outgoing) => self.take_outgoing(outgoing),
                Err(_) => return,
            }
        }
    }

    /// Appends the events queued so far to the output, and registers for
    /// more.
    fn poll_events(&mut self, cx: &mut TaskContext<'_>) {
        loop {
            self.drain_events();
            match self.events.poll_recv(cx) {
                Poll::Ready(Some(outgoing)) => self.take_outgoing(outgoing),
                _ => return,
            }
        }
    }

    /// Appends an event's frame to the output, or notes a flush request.
    fn take_outgoing(&mut self, outgoing: Outgoing) {
        match outgoing {
            Outgoing::Frame(frame) => {
                // `EventSender` made it no longer than the frame limit.
                self.output.put_u32(frame.len() as u32);
                self.output.extend_from_slice(&frame);
            }
            Outgoing::Flush(done) => {
                let mark = self.written + self.output.len() as u64;
                self.flushes.push_back((mark, done));
            }
        }
    }

    /// Writes what the socket takes of the output, answering the flush
    /// requests it covers; `Ready` once the output is all written.
    fn poll_write(&mut self, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        let result = loop {
            if self.output.is_empty() {
                break Poll::Ready(Ok(()));
            }
            match Pin::new(&mut self.stream).poll_write(cx, &self.output) {
                Poll::Ready(Ok(0)) => break Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    self.output.advance(n);
                    self.written += n as u64;
                }
                other => break other.map_ok(drop),
            }
        };
        while let Some((mark, _)) = self.flushes.front() {
            if *mark > self.written {
                break;
            }
            if let Some((_, done)) = self.flushes.pop_front() {
                let _ = done.send(());
            }
        }
        result
    }

    /// Shuts down the sending side: the parent reads EOF after the last
    /// frame.
    fn shutdown_write(&self) {
        fork_core::fdpass::shutdown_write(self.stream.as_fd());
    }
}

/// The result of serving after a write error: the parent closing its end
/// without reading the last replies no longer wants them, which is a
/// graceful close too.
fn parent_gone(e: io::Error) -> Result<()> {
    match e.kind() {
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => Ok(()),
        _ => Err(e.into()),
    }
}

pin_project_lite::pin_project! {
    /// A running request handler, ended early by its deadline or a
    /// cancellation, and whose panic is caught.
    //
    // Fields (pin-project-lite takes no doc comments on them): `span` is the
    // handler's tracing span, if a subscriber wants it; `call`, `None` once
    // cancelled; `timer`, the deadline's, armed only once the handler waits
    // (so one that returns at once costs no timer); `waker`, to end the
    // handler on a cancellation.
    struct Handler<F> {
        id: u64,
        deadline: Instant,
        span: Option<Span>,
        #[pin]
        call: Option<F>,
        timer: Option<Pin<Box<tokio::time::Sleep>>>,
        waker: Option<Waker>,
    }
}

// ===== impl Handler =====

impl<F> Handler<F> {
    /// Drops the handler's future at once; it ends as `Cancelled` when
    /// polled next.
    fn cancel(self: Pin<&mut Self>) {
        let mut this = self.project();
        this.call.set(None);
        *this.timer = None;
        if let Some(waker) = this.waker.take() {
            waker.wake();
        }
    }
}

impl<F, Resp> Future for Handler<F>
where
    F: Future<Output = std::result::Result<Resp, ServerError>>,
{
    type Output = Outcome<Resp>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Outcome<Resp>> {
        let this = self.project();
        let Some(call) = this.call.as_pin_mut() else {
            return Poll::Ready(Outcome::Cancelled);
        };
        let _entered = this.span.as_ref().map(Span::enter);
        match panic::catch_unwind(AssertUnwindSafe(|| call.poll(cx))) {
            Ok(Poll::Ready(reply)) => return Poll::Ready(Outcome::Done(*this.id, reply)),
            Ok(Poll::Pending) => {}
            Err(panic) => {
                return Poll::Ready(Outcome::Panicked(caught(&*panic)));
            }
        }
        let deadline = tokio::time::Instant::from_std(*this.deadline);
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Outcome::Expired(*this.id));
        }
        if !this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *this.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}
