//! The parent side: spawning a worker and calling it.

use std::fmt;
use std::future::Future;
use std::io;
use std::marker::PhantomData;
use std::ops::Deref;
use std::os::fd::{AsFd, BorrowedFd};
use std::pin::Pin;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll, ready};
use std::time::Duration;

use futures::{Stream, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tarpc::client::RpcError;
use tarpc::client::stub::Stub;
use tarpc::{RequestName, Response, ServerError};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};

use crate::channel::{Channel, Sent, Start};
use crate::codec;
use crate::config::{Config, Format};
use crate::entry::RpcEntry;
use crate::error::{Error, Result, WorkerLost};
use crate::message::{self, WorkerMsg};

/// How long a failed call waits for the exit status of a worker whose
/// connection ended, before reporting it lost without one.
const STATUS_GRACE: Duration = Duration::from_secs(2);

/// [`RpcWorker::builder`]'s work: forks and starts the worker, giving up
/// when `give_up` resolves first or after `config.start_timeout`.
pub(crate) async fn spawn_until<Req, Resp, Ev>(
    fork: &mut fork_core::Fork,
    entry: &RpcEntry<Req, Resp, Ev>,
    config: &Config,
    give_up: impl Future<Output = ()>,
) -> Result<(Client<Req, Resp>, RpcWorker<Ev>)>
where
    Req: Serialize + RequestName + Send + 'static,
    Resp: Serialize + DeserializeOwned + Send + 'static,
{
    let forked = Mutex::new(None);
    let limit = config.start_timeout;
    let deadline = crate::context::after(std::time::Instant::now(), limit);
    let outcome = {
        let start = crate::context::within(deadline, start(fork, entry, config, &forked));
        tokio::select! {
            started = start => started,
            () = give_up => {
                let pid = forked.lock().ok().and_then(|f| f.as_ref().map(fork_core::WorkerHandle::id));
                Some(Err(Error::StartAbandoned { pid }))
            }
        }
        // The start is dropped here, which kills a worker that does not
        // serve yet.
    };
    let error = match outcome {
        Some(Ok(started)) => return Ok(started),
        Some(Err(e @ Error::StartAbandoned { .. })) => e,
        Some(Err(e)) => return Err(e),
        None => Error::StartTimeout {
            limit,
            pid: forked
                .lock()
                .ok()
                .and_then(|f| f.as_ref().map(fork_core::WorkerHandle::id)),
        },
    };
    // Wait until the killed worker is gone, so that the error means it.
    let handle = forked.lock().ok().and_then(|mut f| f.take());
    if let Some(mut worker) = handle {
        let _ = worker.start_kill();
        let _ = tokio::time::timeout(STATUS_GRACE, worker.wait()).await;
    }
    Err(error)
}

/// [`spawn_until`] without its time limit; puts the worker's handle in `forked`
/// as soon as it is forked.
async fn start<Req, Resp, Ev>(
    fork: &mut fork_core::Fork,
    entry: &RpcEntry<Req, Resp, Ev>,
    config: &Config,
    forked: &Mutex<Option<fork_core::WorkerHandle>>,
) -> Result<(Client<Req, Resp>, RpcWorker<Ev>)>
where
    Req: Serialize + RequestName + Send + 'static,
    Resp: Serialize + DeserializeOwned + Send + 'static,
{
    let (side_ours, side_theirs) = fork_core::fdpass::seqpacket_pair()?;
    let config_bytes = bincode::serialize(config).map_err(|e| Error::Protocol(e.to_string()))?;
    let mut worker = fork
        .slot(config_bytes, &[side_theirs.as_fd()])
        .run(entry.entry())
        .await?;
    if let Ok(mut f) = forked.lock() {
        *f = Some(worker.handle());
    }
    // Until it serves, a worker this call gives up on (an error, or the call
    // dropped while the init hook runs) is killed, not left behind.
    let mut unready = KillUnlessReady(Some(worker.handle()));
    drop(side_theirs);
    let mut stream = worker
        .take_stream()
        .ok_or_else(|| Error::Protocol("the worker has no socket".into()))?;
    let pid = worker.id();
    let lost = Arc::new(Lost {
        pid,
        panic: Mutex::new(None),
        retire: tokio::sync::watch::channel(false).0,
        ended: Mutex::new(None),
        exit: worker.handle(),
    });
    if let Err(e) = handshake(&mut stream).await {
        return Err(match e {
            Error::Io(_) => Error::Lost(lost.lost().await),
            e => {
                // The worker exits after reporting; wait for it, so that a
                // failed spawn leaves no process behind.
                let mut exit = lost.exit.clone();
                let _ = tokio::time::timeout(STATUS_GRACE, exit.wait()).await;
                e
            }
        });
    }
    let codec = LengthDelimitedCodec::builder()
        .max_frame_length(config.max_frame)
        .new_codec();
    let (read, write) = stream.into_split();
    let (format, limit) = (config.format, config.max_frame as u64);
    let frames = FramedRead::new(
        EofWatch {
            inner: read,
            lost: lost.clone(),
        },
        codec,
    )
    .map(move |frame| frame.and_then(|bytes| decode_reply(format, limit, &bytes)));
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let untaken = Arc::new(UntakenEvents::default());
    let demux = Demux {
        inner: Box::pin(frames),
        events: events_tx,
        untaken: untaken.clone(),
        lost: lost.clone(),
    };
    let channel = Channel::new(
        write,
        demux,
        config.format,
        config.max_frame as u64,
        config.max_in_flight_requests,
    );
    let side = std::os::unix::net::UnixDatagram::from(side_ours);
    side.set_nonblocking(true)?;
    let client = Client {
        inner: channel,
        lost: lost.clone(),
        default_timeout: config.default_timeout,
    };
    let worker = RpcWorker {
        untaken,
        lost,
        process: worker,
        events: Some(Events {
            rx: events_rx,
            format: config.format,
            limit: config.max_frame as u64,
            _ev: PhantomData,
        }),
        fds: tokio::net::UnixDatagram::from_std(side)?,
    };
    unready.0 = None;
    Ok((client, worker))
}

/// Kills a worker, unless disarmed, when dropped.
struct KillUnlessReady(Option<fork_core::WorkerHandle>);

impl Drop for KillUnlessReady {
    fn drop(&mut self) {
        if let Some(worker) = self.0.take() {
            let _ = worker.start_kill();
        }
    }
}

async fn handshake(stream: &mut tokio::net::UnixStream) -> Result<()> {
    let mut head = [0u8; 5];
    stream.read_exact(&mut head).await?;
    let len = u32::from_le_bytes(head[1..5].try_into().expect("4 bytes")) as usize;
    if len > message::MAX_HANDSHAKE {
        return Err(Error::Protocol(format!("handshake of {len} bytes")));
    }
    let mut text = vec![0u8; len];
    stream.read_exact(&mut text).await?;
    let text = String::from_utf8_lossy(&text).into_owned();
    match head[0] {
        message::READY => Ok(()),
        message::INIT_FAILED => Err(Error::Init(text)),
        s => Err(Error::Protocol(format!("unknown handshake status {s}"))),
    }
}

// ===== what is known about a worker's end =====

#[derive(Debug)]
struct Lost {
    pid: u32,
    panic: Mutex<Option<crate::error::HandlerPanic>>,
    /// Set when the worker asked to be retired.
    retire: tokio::sync::watch::Sender<bool>,
    /// How the connection ended, once it did.
    ended: Mutex<Option<End>>,
    exit: fork_core::WorkerHandle,
}

/// How a worker's connection ended.
#[derive(Debug, Clone)]
enum End {
    /// EOF or reset: the worker went away.
    Disconnected,
    /// The worker sent something the client could not accept.
    Protocol(String),
}

impl Lost {
    fn end(&self) -> Option<End> {
        self.ended.lock().ok().and_then(|e| e.clone())
    }

    /// The lost-worker error, with the exit status if it comes soon.
    async fn lost(&self) -> WorkerLost {
        let mut exit = self.exit.clone();
        let status = tokio::time::timeout(STATUS_GRACE, exit.wait())
            .await
            .ok()
            .and_then(|r| r.ok());
        WorkerLost {
            pid: self.pid,
            status,
            panic: self.panic.lock().ok().and_then(|p| p.clone()),
        }
    }
}

// ===== the client stub =====

/// The parent's stub for a worker's service: tarpc's wire format, with
/// fork-rpc's error mapping, and [contexts](Client::context) with the
/// configured default deadline. Cheap to clone; wrap it in
/// the generated client (`CalcClient::from(client)`).
///
/// Dropping every clone closes the connection gracefully: the worker
/// finishes what it received, flushes, runs its done hook and exits 0.
pub struct Client<Req, Resp> {
    inner: Channel<Req, Resp>,
    lost: Arc<Lost>,
    default_timeout: Option<Duration>,
}

impl<Req, Resp> Clone for Client<Req, Resp> {
    fn clone(&self) -> Self {
        Client {
            inner: self.inner.clone(),
            lost: self.lost.clone(),
            default_timeout: self.default_timeout,
        }
    }
}

impl<Req, Resp> fmt::Debug for Client<Req, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("pid", &self.lost.pid)
            .finish()
    }
}

impl<Req, Resp> Client<Req, Resp> {
    /// The worker's process id.
    pub fn pid(&self) -> u32 {
        self.lost.pid
    }

    /// Whether the worker asked to be retired (with
    /// [`EventSender::retire`](crate::EventSender::retire)): send it no new
    /// calls, and drop the clients once pending calls are answered.
    pub fn retire_requested(&self) -> bool {
        *self.lost.retire.borrow()
    }

    /// Whether the connection has ended: the worker closed it or went away,
    /// or sent what cannot be read. Every call fails from then on; a worker
    /// that sent bad bytes may still be running (end it with
    /// [`RpcWorker::kill`]).
    pub fn is_closed(&self) -> bool {
        self.lost.end().is_some()
    }

    /// Resolves when the worker asks to be retired (never, if it does not).
    pub async fn retire_request(&self) {
        let mut rx = self.lost.retire.subscribe();
        if rx.wait_for(|r| *r).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// A context for a call on this client: tarpc's current one, expiring
    /// after the client's [`default_timeout`](Config::default_timeout)
    /// from now (tarpc's 10 s if it has none). Contexts made otherwise
    /// (`tarpc::context::current()`, [`with_timeout`](crate::context::with_timeout))
    /// keep their deadlines: the client never rewrites one.
    ///
    /// ```no_run
    /// # async fn doc(client: fork_rpc::Client<String, String>) -> Result<(), tarpc::client::RpcError> {
    /// use tarpc::client::stub::Stub;
    ///
    /// let reply = client.call(client.context(), "a long job".into()).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn context(&self) -> tarpc::context::Context {
        let mut ctx = tarpc::context::current();
        if let Some(timeout) = self.default_timeout {
            ctx.deadline = crate::context::after(std::time::Instant::now(), timeout);
        }
        ctx
    }
}

impl<Req, Resp> Client<Req, Resp>
where
    Req: Serialize + RequestName + Send + 'static,
    Resp: Serialize + Send + 'static,
{
    /// Makes a call as [`Stub::call`] does, through a client kept in an
    /// `Arc`: the future holds the `Arc`, so it borrows nothing (it can be
    /// spawned, or kept beside the client it came from). For code built on
    /// the stub, such as a pool that lends its workers' clients to jobs.
    ///
    /// ```no_run
    /// # async fn doc(client: fork_rpc::Client<String, String>) {
    /// use std::sync::Arc;
    ///
    /// let client = Arc::new(client);
    /// let call = client.clone().call_owned(tarpc::context::current(), "ping".into());
    /// let reply = tokio::spawn(call).await.unwrap();
    /// # }
    /// ```
    pub fn call_owned(
        self: Arc<Self>,
        ctx: tarpc::context::Context,
        request: Req,
    ) -> impl Future<Output = Result<Resp, RpcError>> + Send + Unpin + 'static {
        Call::new(self, ctx, request)
    }
}

impl<Req, Resp> Stub for Client<Req, Resp>
where
    Req: Serialize + RequestName + Send + 'static,
    Resp: Serialize + Send + 'static,
{
    type Req = Req;
    type Resp = Resp;

    /// Sends the request when first polled; dropping the future before the
    /// reply cancels the call in the worker. The call ends at the
    /// context's deadline, as given (see [`Client::context`]).
    fn call(
        &self,
        ctx: tarpc::context::Context,
        request: Req,
    ) -> impl Future<Output = Result<Resp, RpcError>> {
        Call::new(self, ctx, request)
    }
}

// ===== a call =====

/// A call on a worker, through a client held by reference (the stub) or
/// in an `Arc` ([`Client::call_owned`]).
///
/// Written out as a state machine rather than an `async fn`: a call's
/// future is moved several times on its way (tarpc's generated method keeps
/// two copies of it), so its size counts, and an `async fn` keeps its
/// arguments beside every later state. The rare states are boxed.
struct Call<'a, C, Req, Resp>
where
    C: Deref<Target = Client<Req, Resp>>,
    Resp: Serialize + Send + 'static,
{
    client: C,
    state: CallState<'a, Req>,
}

enum CallState<'a, Req> {
    /// Not polled yet.
    Start(tarpc::context::Context, Req),
    /// Waiting for a place among the calls in flight.
    Full(Pin<Box<dyn Future<Output = Result<Sent, RpcError>> + Send + 'a>>),
    /// Sent, waiting for its outcome.
    Sent(Sent),
    /// Failed with an error that may mean the worker was lost: finding out.
    Explaining(Pin<Box<dyn Future<Output = RpcError> + Send + 'a>>),
    Done,
}

// Nothing in a call is pinned in place: the states that are futures are
// boxed.
impl<C, Req, Resp> Unpin for Call<'_, C, Req, Resp>
where
    C: Deref<Target = Client<Req, Resp>>,
    Resp: Serialize + Send + 'static,
{
}

impl<'a, C, Req, Resp> Call<'a, C, Req, Resp>
where
    C: Deref<Target = Client<Req, Resp>> + Clone + Send + Sync + 'a,
    Req: Serialize + RequestName + Send + 'static,
    Resp: Serialize + Send + 'static,
{
    fn new(client: C, ctx: tarpc::context::Context, request: Req) -> Self {
        // The deadline counts from when the call is made.
        Call {
            client,
            state: CallState::Start(ctx, request),
        }
    }

    /// The outcome of a failed call: errors that may mean the connection
    /// ended say why it did.
    fn fail(&mut self, e: RpcError) -> Option<RpcError> {
        if !matches!(
            e,
            RpcError::Shutdown | RpcError::Send(_) | RpcError::Channel(_)
        ) {
            return Some(e);
        }
        let lost = self.client.lost.clone();
        self.state = CallState::Explaining(Box::pin(explain(lost, e)));
        None
    }
}

impl<'a, C, Req, Resp> Future for Call<'a, C, Req, Resp>
where
    C: Deref<Target = Client<Req, Resp>> + Clone + Send + Sync + 'a,
    Req: Serialize + RequestName + Send + 'static,
    Resp: Serialize + Send + 'static,
{
    type Output = Result<Resp, RpcError>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if matches!(this.state, CallState::Start(..)) {
            // Starting a call uses the task's budget, as tokio's own
            // resources do: a task that starts call after call yields now
            // and then, so that the runtime writes and reads for them.
            ready!(tokio::task::coop::poll_proceed(cx)).made_progress();
        }
        loop {
            let failed = match std::mem::replace(&mut this.state, CallState::Done) {
                CallState::Start(ctx, request) => match this.client.inner.start(ctx, request) {
                    Ok(Start::Sent(sent)) => {
                        this.state = CallState::Sent(sent);
                        continue;
                    }
                    Ok(Start::Full(ctx, request)) => {
                        let client = this.client.clone();
                        this.state = CallState::Full(Box::pin(async move {
                            client.inner.start_waiting(ctx, request).await
                        }));
                        continue;
                    }
                    Err(e) => e,
                },
                CallState::Full(mut waiting) => match waiting.as_mut().poll(cx) {
                    Poll::Pending => {
                        this.state = CallState::Full(waiting);
                        return Poll::Pending;
                    }
                    Poll::Ready(Ok(sent)) => {
                        this.state = CallState::Sent(sent);
                        continue;
                    }
                    Poll::Ready(Err(e)) => e,
                },
                CallState::Sent(mut sent) => {
                    let outcome = this.client.inner.poll_sent(&mut sent, cx);
                    let Poll::Ready(outcome) = outcome else {
                        this.state = CallState::Sent(sent);
                        return Poll::Pending;
                    };
                    this.client.inner.end_call(sent);
                    match outcome {
                        Ok(reply) => return Poll::Ready(Ok(reply)),
                        Err(e) => e,
                    }
                }
                CallState::Explaining(mut explaining) => match explaining.as_mut().poll(cx) {
                    Poll::Pending => {
                        this.state = CallState::Explaining(explaining);
                        return Poll::Pending;
                    }
                    Poll::Ready(e) => return Poll::Ready(Err(e)),
                },
                CallState::Done => panic!("a fork-rpc call polled after it completed"),
            };
            if let Some(e) = this.fail(failed) {
                return Poll::Ready(Err(e));
            }
        }
    }
}

impl<C, Req, Resp> Drop for Call<'_, C, Req, Resp>
where
    C: Deref<Target = Client<Req, Resp>>,
    Resp: Serialize + Send + 'static,
{
    fn drop(&mut self) {
        if let CallState::Sent(sent) = std::mem::replace(&mut self.state, CallState::Done) {
            self.client.inner.end_call(sent);
        }
    }
}

/// What a call that failed with `e` (`Shutdown`, `Send` or `Channel`)
/// reports: the worker lost, with its exit status, if it went away; the
/// bad input, for later calls on a connection that died of it.
async fn explain(lost: Arc<Lost>, e: RpcError) -> RpcError {
    match lost.end() {
        Some(End::Disconnected) => lost.lost().await.into_rpc_error(),
        // Later calls on a connection that died of bad input say so.
        Some(End::Protocol(message)) if matches!(e, RpcError::Shutdown) => {
            let e: Arc<dyn std::error::Error + Send + Sync> =
                Arc::new(io::Error::new(io::ErrorKind::InvalidData, message));
            RpcError::Channel(tarpc::ChannelError::Read(e))
        }
        // The connection failed without a word on how (a write broke
        // before the reader saw EOF): lost, if the worker exits; its status
        // comes through its template a moment after the socket broke.
        None if !matches!(e, RpcError::Send(_)) => {
            let lost = lost.lost().await;
            if lost.status.is_some() {
                lost.into_rpc_error()
            } else {
                e
            }
        }
        _ => e,
    }
}

// ===== the worker handle =====

/// The parent's handle to an RPC worker: its process, its events, and the
/// channel for descriptors.
#[derive(Debug)]
pub struct RpcWorker<Ev = ()> {
    untaken: Arc<UntakenEvents>,
    lost: Arc<Lost>,
    process: fork_core::Worker,
    events: Option<Events<Ev>>,
    fds: tokio::net::UnixDatagram,
}

impl<Ev> RpcWorker<Ev> {
    /// The worker's process id.
    pub fn id(&self) -> u32 {
        self.process.id()
    }

    /// A cloneable handle to wait for the worker process and signal it.
    pub fn handle(&self) -> fork_core::WorkerHandle {
        self.process.handle()
    }

    /// Resolves when the worker asks to be retired (see
    /// [`Client::retire_requested`]).
    pub async fn retire_request(&self) {
        let mut rx = self.lost.retire.subscribe();
        if rx.wait_for(|r| *r).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Takes the stream of the worker's events (once). Until it is taken,
    /// the first [`UNTAKEN_EVENTS`] events are kept for it and later ones
    /// dropped, so that a worker whose events nobody reads cannot fill the
    /// parent's memory.
    pub fn events(&mut self) -> Option<Events<Ev>> {
        self.untaken.taken.store(true, Ordering::Release);
        self.events.take()
    }

    /// Sends descriptors to the running worker; they arrive, in order, at
    /// its [`FdReceiver`](crate::FdReceiver), beside the RPC stream. Send
    /// them before the call that uses them.
    ///
    /// # Errors
    ///
    /// I/O errors (for example the worker is gone), or more than
    /// [`fork_core::fdpass::MAX_FDS`] descriptors.
    pub async fn send_fds(&self, fds: &[BorrowedFd<'_>]) -> Result<()> {
        self.fds
            .async_io(tokio::io::Interest::WRITABLE, || {
                fork_core::fdpass::send_fds(self.fds.as_fd(), b"f", fds)
            })
            .await?;
        Ok(())
    }

    /// Sends one descriptor (see [`send_fds`](RpcWorker::send_fds)).
    ///
    /// # Errors
    ///
    /// As [`send_fds`](RpcWorker::send_fds).
    pub async fn send_fd(&self, fd: impl AsFd) -> Result<()> {
        self.send_fds(&[fd.as_fd()]).await
    }

    /// Waits for the worker to exit (after the clients were dropped, it
    /// finishes and exits 0): AnyEvent::Fork::RPC's `on_destroy`.
    ///
    /// # Errors
    ///
    /// As [`fork_core::Worker::wait`].
    pub async fn wait(&mut self) -> Result<ExitStatus> {
        Ok(self.process.wait().await?)
    }

    /// Kills the worker and waits for it.
    ///
    /// # Errors
    ///
    /// As [`fork_core::Worker::kill`].
    pub async fn kill(&mut self) -> Result<()> {
        Ok(self.process.kill().await?)
    }

    /// The underlying process handle (signals, `try_wait`).
    pub fn process(&mut self) -> &mut fork_core::Worker {
        &mut self.process
    }
}

/// The events a worker sends, in the order it sent them relative to its
/// replies. A [`Stream`] of `Result<Ev>` (an undecodable event is an error).
pub struct Events<Ev> {
    rx: mpsc::UnboundedReceiver<Vec<u8>>,
    format: Format,
    limit: u64,
    _ev: PhantomData<fn() -> Ev>,
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
        let bytes = self.rx.recv().await?;
        Some(self.decode(&bytes))
    }

    /// The next event if one is already here.
    pub fn try_recv(&mut self) -> Option<Result<Ev>> {
        let bytes = self.rx.try_recv().ok()?;
        Some(self.decode(&bytes))
    }

    fn decode(&self, bytes: &[u8]) -> Result<Ev> {
        codec::decode(self.format, self.limit, bytes)
            .map_err(|e| Error::Protocol(format!("undecodable event: {e}")))
    }
}

impl<Ev: DeserializeOwned> Stream for Events<Ev> {
    type Item = Result<Ev>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        self.rx
            .poll_recv(cx)
            .map(|o| o.map(|bytes| self.decode(&bytes)))
    }
}

impl<Ev> Unpin for Events<Ev> {}

/// How many events are kept for an [`Events`] stream not taken yet.
pub const UNTAKEN_EVENTS: usize = 1024;

/// Bookkeeping for events that arrive before anyone took the stream.
#[derive(Debug, Default)]
struct UntakenEvents {
    taken: AtomicBool,
    kept: AtomicUsize,
}

impl UntakenEvents {
    /// Whether to keep one more event.
    fn keep(&self) -> bool {
        self.taken.load(Ordering::Acquire)
            || self.kept.fetch_add(1, Ordering::Relaxed) < UNTAKEN_EVENTS
    }
}

// ===== what the client reads =====

/// Splits the worker's frames: replies go to tarpc, events to [`Events`],
/// a panic report to [`Lost`]; records how the connection ended.
struct Demux<T> {
    inner: T,
    events: mpsc::UnboundedSender<Vec<u8>>,
    untaken: Arc<UntakenEvents>,
    lost: Arc<Lost>,
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
                Poll::Ready(Some(Ok(WorkerMsg::Event(e)))) => {
                    if self.untaken.keep() {
                        let _ = self.events.send(e);
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
struct EofWatch<S> {
    inner: S,
    lost: Arc<Lost>,
}

impl<S> EofWatch<S> {
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
