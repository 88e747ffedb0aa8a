//! The serving loop of one connection, [`Server`], in rounds (see the
//! [module docs](super)): read and decode, run the handlers, write.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::os::fd::AsFd;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tarpc::server::Serve;
use tarpc::{ClientMessage, Request, RequestName, Response, ServerError};
use tokio::io::AsyncWrite;
use tokio::signal::unix::Signal;
use tokio::sync::{mpsc, oneshot};
use tracing::Level;
use tracing::level_filters::LevelFilter;

use super::events::Outgoing;
use super::handler::{Handler, Outcome};
use super::panic::caught;
use crate::config::{Config, Format, Mode};
use crate::error::{Error, HandlerPanic, Result};
use crate::frame;
use crate::message::WorkerMsg;
use crate::shm::{self, scope};

/// Most requests read ahead of the handlers, waiting their turn; beyond
/// this, the worker stops reading (the parent's writes then wait).
const MAX_QUEUED: usize = 1024;

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
pub(super) enum End {
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
pub(super) struct Server<S: Serve, F> {
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
    /// Where the descriptors of the frames written go, and the number of
    /// the next frame written (see [`shm`]).
    shared_out: Option<(shm::Outbox, shm::Limits)>,
    frames_out: u64,
    /// Where the descriptors of the frames read come from (`None` only
    /// while a frame is decoded), and the number of the next frame read.
    shared_in: Option<shm::Inbox>,
    frames_in: u64,
    /// Bytes written so far, in all.
    written: u64,
    /// Flush requests, each with the value of `written` that answers it.
    flushes: VecDeque<(u64, oneshot::Sender<()>)>,
    /// `SIGTERM`, until it came.
    pub(super) terminate: Option<Signal>,
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
    pub(super) fn new(
        config: &Config,
        stream: tokio::net::UnixStream,
        shared: Option<(shm::Outbox, shm::Inbox)>,
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
            shared_out: shared
                .as_ref()
                .map(|(out, inbox)| (out.clone(), inbox.limits)),
            frames_out: 0,
            shared_in: shared.map(|(_, inbox)| inbox),
            frames_in: 0,
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
    pub(super) fn poll_serve(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<End>> {
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
            match frame::poll_fill(&mut self.stream, cx, &mut self.input) {
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
            let (format, limit) = (self.format, self.limit());
            let (shared, seq) = (&mut self.shared_in, &mut self.frames_in);
            let frame = frame::next(&mut self.input, self.max_frame, |body| {
                *seq += 1;
                scope::decoding(shared, *seq - 1, || {
                    frame::decode_body::<ClientMessage<S::Req>>(format, limit, body)
                })
            })?;
            let Some(message) = frame.transpose()? else {
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
            .find(|h| h.id() == id)
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
        let deadline = context.deadline;
        Handler::new(
            id,
            deadline,
            span,
            (self.call)(self.service.clone(), context, message),
        )
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
        let (format, limit, start) = (self.format, self.limit(), self.output.len());
        let limits = self.shared_out.as_ref().map(|(_, limits)| *limits);
        let (encoded, attached) = scope::encoding(limits, || {
            frame::encode_into(format, limit, &reply, &mut self.output)
        });
        // Its memory files go before its bytes (see `shm`).
        let sent = encoded.and_then(|()| {
            if let Some((out, _)) = self.shared_out.as_ref().filter(|_| !attached.is_empty())
                && let Err(e) = out.send(self.frames_out, &attached)
            {
                self.output.truncate(start);
                if e.kind() != io::ErrorKind::WouldBlock {
                    return Err(e);
                }
                // The parent has not read the descriptors sent before: the
                // payloads go as bytes in the frame instead, if the frame
                // limit takes them.
                frame::encode_into(format, limit, &reply, &mut self.output)?;
            }
            self.frames_out += 1;
            Ok(())
        });
        if let Err(e) = sent {
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
    pub(super) fn push(&mut self, message: &WorkerMsg<()>) -> Result<()> {
        frame::encode_into(self.format, self.limit(), message, &mut self.output)?;
        self.frames_out += 1;
        Ok(())
    }

    /// Appends the events queued so far to the output, without waiting.
    /// Only those: a sender on another thread cannot keep the loop here.
    pub(super) fn drain_events(&mut self) {
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
            Outgoing::Frame(body, attached) => {
                // Its memory files go before its bytes (see `shm`). If
                // they cannot, the frame still goes: the parent's decoding
                // of the event fails, saying its descriptors are missing.
                if let Some((out, _)) = self.shared_out.as_ref().filter(|_| !attached.is_empty())
                    && let Err(e) = out.send(self.frames_out, &attached)
                {
                    tracing::warn!("an event's shared payloads were not sent: {e}");
                }
                // `EventSender` made it no longer than the frame limit.
                frame::put(&mut self.output, &body);
                self.frames_out += 1;
            }
            Outgoing::Flush(done) => {
                let mark = self.written + self.output.len() as u64;
                self.flushes.push_back((mark, done));
            }
        }
    }

    /// Writes what the socket takes of the output, answering the flush
    /// requests it covers; `Ready` once the output is all written.
    pub(super) fn poll_write(&mut self, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
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
    pub(super) fn shutdown_write(&self) {
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
