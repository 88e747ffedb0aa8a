//! The worker side: serving a tarpc service on the worker's socket.

use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, OwnedFd};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use bytes::Bytes;
use futures::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tarpc::server::{BaseChannel, Channel, Serve};
use tarpc::{ClientMessage, RequestName, Response};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

use crate::codec;
use crate::config::{Config, Format, Mode};
use crate::error::{Error, Result};
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

    /// The arguments sent with the fork (see [`fork_core::Context::args`]),
    /// without fork-rpc's own.
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
    /// template), without fork-rpc's own.
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

/// What the writer task gets: encoded frames, in the order they were
/// produced, then `Close`.
enum Outgoing {
    Frame(Vec<u8>),
    /// Write everything queued so far, then say so.
    Flush(tokio::sync::oneshot::Sender<()>),
    Close,
}

/// Sends events to the parent, in order with the replies (cheap to clone).
///
/// Events and replies go through one queue, so an event sent before a
/// handler returns reaches the parent before that handler's reply.
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
    /// socket. Events are written by a task of the worker's runtime, so a
    /// handler that computes without awaiting holds them back until it
    /// returns or awaits; call this to send progress at once
    /// (AnyEvent::Fork::RPC's `flush`).
    ///
    /// # Errors
    ///
    /// If the connection is closed.
    pub async fn flush(&self) -> Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
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

// ===== the transport tarpc serves on =====

/// Requests come from the framed read half; replies go to the writer's
/// queue.
struct ServerTransport<Req, Resp> {
    inbound: Pin<Box<dyn Stream<Item = io::Result<ClientMessage<Req>>>>>,
    out: mpsc::UnboundedSender<Outgoing>,
    format: Format,
    limit: u64,
    _resp: PhantomData<fn(Resp)>,
}

impl<Req, Resp> Stream for ServerTransport<Req, Resp> {
    type Item = io::Result<ClientMessage<Req>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        self.inbound.as_mut().poll_next(cx)
    }
}

impl<Req, Resp: Serialize> Sink<Response<Resp>> for ServerTransport<Req, Resp> {
    type Error = io::Error;

    fn poll_ready(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, item: Response<Resp>) -> io::Result<()> {
        let request_id = item.request_id;
        let frame = match codec::encode(self.format, self.limit, &WorkerMsg::Reply(item)) {
            Ok(frame) => frame,
            // A reply that cannot be sent (too big, not serialisable) fails
            // its call, not the connection.
            Err(e) => {
                let error = Response::<()> {
                    request_id,
                    message: Err(tarpc::ServerError::new(
                        io::ErrorKind::InvalidData,
                        format!("the reply could not be sent: {e}"),
                    )),
                };
                codec::encode(self.format, self.limit, &WorkerMsg::Reply(error))?
            }
        };
        self.out
            .send(Outgoing::Frame(frame))
            .map_err(|_| io::ErrorKind::BrokenPipe.into())
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

// ===== serving =====

/// Serves the service that `init` builds on the worker's socket, then exits.
/// This is what [`entry!`](crate::entry) calls; use it directly to serve from
/// your own [`fork_core::Entry`].
///
/// In order: decode the configuration the parent sent, build a
/// `current_thread` runtime, run `init` (the init hook: a failure is sent to
/// the parent as the error of its spawn call), serve until the parent closes
/// the connection, flush every reply, run the done hook, return.
///
/// # Errors
///
/// Setup failures, the init hook's failure, or a broken connection.
pub fn serve<S, Ev, E>(
    ctx: fork_core::Context,
    init: fn(&mut Setup<Ev>) -> std::result::Result<S, E>,
) -> Result<()>
where
    S: Serve + Clone + 'static,
    S::Req: DeserializeOwned + RequestName + 'static,
    S::Resp: Serialize + 'static,
    Ev: Serialize + 'static,
    E: fmt::Display,
{
    let (socket, mut args, mut fds) = ctx.into_parts();
    let config: Config = args
        .pop()
        .and_then(|b| bincode::deserialize(&b).ok())
        .ok_or_else(|| Error::Protocol("no fork-rpc configuration among the arguments".into()))?;
    let side = fds
        .pop()
        .ok_or_else(|| Error::Protocol("no descriptor channel among the descriptors".into()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let _guard = rt.enter();
    socket.set_nonblocking(true)?;
    let mut stream = tokio::net::UnixStream::from_std(socket)?;
    let side = std::os::unix::net::UnixDatagram::from(side);
    side.set_nonblocking(true)?;
    let side = tokio::net::UnixDatagram::from_std(side)?;

    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let mut setup = Setup {
        args,
        fds,
        events: EventSender {
            out: out_tx.clone(),
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
    let result = rt.block_on(run(config, stream, service, out_tx, out_rx));
    if let Some(done) = done {
        done();
    }
    result
}

async fn run<S>(
    config: Config,
    mut stream: tokio::net::UnixStream,
    service: S,
    out_tx: mpsc::UnboundedSender<Outgoing>,
    out_rx: mpsc::UnboundedReceiver<Outgoing>,
) -> Result<()>
where
    S: Serve + Clone + 'static,
    S::Req: DeserializeOwned + RequestName + 'static,
    S::Resp: Serialize + 'static,
{
    stream
        .write_all(&message::handshake(message::READY, ""))
        .await?;
    let (read, write) = stream.into_split();
    let codec = || {
        LengthDelimitedCodec::builder()
            .max_frame_length(config.max_frame)
            .new_codec()
    };
    let (format, limit) = (config.format, config.max_frame as u64);
    let inbound = FramedRead::new(read, codec()).map(move |frame| {
        frame.and_then(|bytes| codec::decode::<ClientMessage<S::Req>>(format, limit, &bytes))
    });
    // The writer runs in this task, beside the handlers: a reply queued by
    // a handler wakes this same task, with no hop to another one.
    let writer = write_loop(FramedWrite::new(write, codec()), out_rx);
    tokio::pin!(writer);
    let transport = ServerTransport {
        inbound: Box::pin(inbound),
        out: out_tx.clone(),
        format,
        limit,
        _resp: PhantomData,
    };
    let requests = BaseChannel::with_defaults(transport).execute(service);
    let (panic_tx, mut panic_rx) = mpsc::unbounded_channel::<String>();
    let concurrency = match config.mode {
        Mode::Sync => 1,
        Mode::Async { limit } => limit.max(1),
    };
    let serving = drive(requests, concurrency, panic_tx);
    let mut written = None;
    let panicked = tokio::select! {
        () = serving => None,
        Some(message) = panic_rx.recv() => Some(message),
        // The writer only ends early on a write error: the parent is gone.
        result = &mut writer => {
            written = Some(result);
            None
        }
    };
    if let Some(message) = &panicked {
        let frame = codec::encode(format, limit, &WorkerMsg::<()>::Panic(message.clone()))?;
        let _ = out_tx.send(Outgoing::Frame(frame));
    }
    let written = match written {
        Some(result) => result,
        None => {
            let _ = out_tx.send(Outgoing::Close);
            writer.await
        }
    };
    if panicked.is_some() {
        // The default hook printed the panic; the parent got its message.
        std::process::exit(fork_core::PANIC_EXIT_CODE);
    }
    match written {
        Ok(()) => Ok(()),
        // The parent closed its end without reading the last replies: it
        // no longer wants them, which is a graceful close too.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Writes frames in the order they were produced, flushing whenever the
/// queue runs dry (so a burst costs one write), until `Close`.
async fn write_loop(
    mut framed: FramedWrite<tokio::net::unix::OwnedWriteHalf, LengthDelimitedCodec>,
    mut out: mpsc::UnboundedReceiver<Outgoing>,
) -> io::Result<()> {
    loop {
        match out.recv().await {
            Some(Outgoing::Frame(frame)) => {
                framed.feed(Bytes::from(frame)).await?;
                if out.is_empty() {
                    SinkExt::<Bytes>::flush(&mut framed).await?;
                }
            }
            Some(Outgoing::Flush(done)) => {
                SinkExt::<Bytes>::flush(&mut framed).await?;
                let _ = done.send(());
            }
            Some(Outgoing::Close) | None => {
                SinkExt::<Bytes>::flush(&mut framed).await?;
                return framed.into_inner().shutdown().await;
            }
        }
    }
}

/// Most requests read ahead of the handlers, waiting their turn.
const MAX_QUEUED: usize = 1024;

/// Runs the request handlers `limit` at a time, in arrival order, while
/// polling the request stream all along: that is what reads further
/// requests, writes replies, and cancels handlers whose deadline passed or
/// whose caller gave up (tarpc aborts them), even while a handler runs.
async fn drive<F>(
    requests: impl Stream<Item = F>,
    limit: usize,
    panics: mpsc::UnboundedSender<String>,
) where
    F: std::future::Future<Output = ()>,
{
    let mut requests = std::pin::pin!(requests);
    let mut queue = std::collections::VecDeque::new();
    let mut running = futures::stream::FuturesUnordered::new();
    let mut ended = false;
    loop {
        while running.len() < limit {
            match queue.pop_front() {
                Some(handler) => running.push(guarded(handler, panics.clone())),
                None => break,
            }
        }
        if ended && running.is_empty() && queue.is_empty() {
            return;
        }
        tokio::select! {
            next = requests.next(), if !ended && queue.len() < MAX_QUEUED => match next {
                Some(handler) => queue.push_back(handler),
                None => ended = true,
            },
            Some(()) = running.next(), if !running.is_empty() => {}
        }
    }
}

/// Runs a handler, reporting a panic instead of unwinding through the
/// serving loop.
async fn guarded(
    handler: impl std::future::Future<Output = ()>,
    panics: mpsc::UnboundedSender<String>,
) {
    if let Err(panic) = AssertUnwindSafe(handler).catch_unwind().await {
        let _ = panics.send(fork_core::__private::panic_message(&*panic));
    }
}
