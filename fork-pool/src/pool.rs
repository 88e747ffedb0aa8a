//! The pool: dispatch, the queue, workers' lifecycle, shutdown.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context as TaskContext, Poll, ready};
use std::time::{Duration, Instant};

use crate::deadline::{FOREVER, after};
use fork_core::Signal;
use futures::future::Either;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tarpc::RequestName;
use tarpc::client::RpcError;
use tarpc::client::stub::Stub;
use tarpc::context::Context;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::config::{Config, Overflow};
use crate::error::Error;
use crate::scale::{self, Knobs, Snapshot};

/// Tells idempotent requests apart.
type IsIdempotent<Req> = Box<dyn Fn(&Req) -> bool + Send + Sync>;

/// The events of all workers of a pool, each with its worker's pid.
pub type PoolEvents<Ev> = mpsc::UnboundedReceiver<(u32, fork_rpc::Result<Ev>)>;

/// How often a busy worker's memory is checked at most (an idle one is
/// checked after every job).
const RSS_INTERVAL: Duration = Duration::from_millis(100);
/// Back-off after failed spawns: first delay and ceiling.
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// One typed client over many workers: least-loaded dispatch, a FIFO queue,
/// growth on backlog, shrinking when idle, recycling, crash replacement,
/// job timeouts and graceful shutdown (AnyEvent::Fork::Pool, and more).
///
/// `Pool` implements tarpc's [`Stub`], so the generated client works over it
/// unchanged: `CalcClient::from(pool.clone())`. It is a cheap handle
/// (`Clone`); when the last handle is dropped, the pool shuts down in the
/// background as [`shutdown`](Pool::shutdown) would.
pub struct Pool<Req, Resp, Ev = ()> {
    handle: Arc<Handle<Req, Resp, Ev>>,
}

impl<Req, Resp, Ev> Clone for Pool<Req, Resp, Ev> {
    fn clone(&self) -> Self {
        Pool {
            handle: self.handle.clone(),
        }
    }
}

impl<Req, Resp, Ev> fmt::Debug for Pool<Req, Resp, Ev> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("entry", &self.handle.shared.entry)
            .finish_non_exhaustive()
    }
}

struct Handle<Req, Resp, Ev> {
    shared: Arc<Shared<Req, Resp, Ev>>,
    /// Shuts the pool down in the background.
    on_drop: Box<dyn Fn() + Send + Sync>,
}

impl<Req, Resp, Ev> Drop for Handle<Req, Resp, Ev> {
    fn drop(&mut self) {
        (self.on_drop)();
    }
}

/// Builds a [`Pool`]; see [`Config`] for every knob.
pub struct Builder<Req, Resp, Ev> {
    template: fork_core::Template,
    entry: fork_rpc::RpcEntry<Req, Resp, Ev>,
    config: Config,
    idempotent: Option<IsIdempotent<Req>>,
    retries: u32,
}

impl<Req, Resp, Ev> fmt::Debug for Builder<Req, Resp, Ev> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A snapshot of a pool's state and counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Workers being started.
    pub starting: usize,
    /// Workers ready with no job.
    pub idle: usize,
    /// Workers with at least one job.
    pub busy: usize,
    /// Jobs waiting in the queue.
    pub queued: usize,
    /// Workers started since the pool was built.
    pub spawned: u64,
    /// Workers that left because of `max_requests`, `max_rss`, `stop` or
    /// their own `retire()`.
    pub recycled: u64,
    /// Workers that died unexpectedly (killed, panicked, exited), or that
    /// sent what cannot be read (the pool then kills them).
    pub crashed: u64,
    /// Jobs that exceeded `job_timeout` (their workers were killed).
    pub timed_out: u64,
    /// Jobs answered successfully (failed attempts not counted).
    pub completed: u64,
    /// Failed attempts to start a worker.
    pub spawn_failures: u64,
}

struct Shared<Req, Resp, Ev> {
    config: Config,
    knobs: Knobs,
    template: fork_core::Template,
    entry: fork_rpc::RpcEntry<Req, Resp, Ev>,
    idempotent: Option<IsIdempotent<Req>>,
    retries: u32,
    state: Mutex<State<Req, Resp>>,
    /// Wakes the supervisor.
    wake: Notify,
    /// Signals progress to `shutdown` (a job finished, a worker left).
    changed: Notify,
    /// Set by `shutdown` past its deadline: workers still starting (an init
    /// hook that hangs) are given up on, and killed.
    abandon: tokio::sync::watch::Sender<bool>,
    /// Room in a bounded queue.
    queue_room: Option<Arc<Semaphore>>,
    events_tx: mpsc::UnboundedSender<(u32, fork_rpc::Result<Ev>)>,
    events_rx: Mutex<Option<PoolEvents<Ev>>>,
    /// Events are kept only once somebody took the stream.
    events_taken: std::sync::atomic::AtomicBool,
}

struct State<Req, Resp> {
    members: Vec<Member<Req, Resp>>,
    next_id: u64,
    queue: VecDeque<Waiter<Req, Resp>>,
    /// The id of the next job to queue.
    next_waiter: u64,
    /// Every worker process the pool started that has not been reaped yet:
    /// members, and those that left (recycled, stopped, killed, lost) and
    /// are still exiting. Each leaves when its monitor sees it reaped.
    alive: HashMap<u64, fork_core::WorkerHandle>,
    starting: usize,
    closed: bool,
    finished: bool,
    last_spawn: Option<Instant>,
    consecutive_failures: u32,
    backoff_until: Option<Instant>,
    stats: Stats,
    rng: u64,
    /// When the supervisor will look again on its own.
    next_wake: Option<Instant>,
}

struct Member<Req, Resp> {
    id: u64,
    pid: u32,
    /// Shared with the jobs running on it (one reference to count per job,
    /// where a client clone has three).
    client: Arc<fork_rpc::Client<Req, Resp>>,
    process: fork_core::WorkerHandle,
    load: usize,
    served: u64,
    /// Recycle after this many jobs.
    limit: Option<u64>,
    /// Why it takes no more jobs, once it does not.
    leaving: Option<Leave>,
    idle_since: Instant,
    rss_checked: Instant,
    /// The memory check found it over the limit right after it started:
    /// the limit is too low for this worker; do not recycle it for memory.
    rss_exempt: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leave {
    Recycled,
    Retired,
    Memory,
    Idle,
}

struct Waiter<Req, Resp> {
    id: u64,
    tx: oneshot::Sender<Result<Grant<Req, Resp>, Error>>,
    since: Instant,
    _room: Option<OwnedSemaphorePermit>,
}

/// A job counted on a worker: the worker and its client.
struct Taken<Req, Resp> {
    id: u64,
    client: Arc<fork_rpc::Client<Req, Resp>>,
    pid: u32,
}

/// A job's place on a worker: the worker's client, and the slot that gives
/// the place back when dropped.
struct Grant<Req, Resp> {
    slot: Slot,
    client: Arc<fork_rpc::Client<Req, Resp>>,
    pid: u32,
}

/// Gives a worker's place back to the pool when dropped.
struct Slot {
    id: u64,
    /// The job was answered (counted in `Stats::completed`).
    answered: bool,
    pool: Option<Arc<dyn Release>>,
}

/// What a [`Slot`] calls back into (the pool, with its types erased).
trait Release: Send + Sync {
    fn release(self: Arc<Self>, id: u64, answered: bool);
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            pool.release(self.id, self.answered);
        }
    }
}

impl Slot {
    fn disarm(mut self) {
        self.pool = None;
    }
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A random extra in `0..=jitter` that `taken` does not reject, if one
/// exists: workers recycled after `max_requests` then never all leave at
/// once (with at least as many values as workers).
fn pick_jitter(rng: &mut u64, jitter: u64, taken: impl Fn(u64) -> bool) -> u64 {
    if jitter == 0 {
        return 0;
    }
    // `0..=u64::MAX` is every value.
    let within = |x: u64| jitter.checked_add(1).map_or(x, |n| x % n);
    let start = within(splitmix(rng));
    (0..=jitter.min(4096))
        .map(|i| within(start.wrapping_add(i)))
        .find(|&e| !taken(e))
        .unwrap_or(start)
}

// ===== impl Builder =====

impl<Req, Resp, Ev> Builder<Req, Resp, Ev>
where
    Req: Serialize + DeserializeOwned + RequestName + Send + Sync + 'static,
    Resp: Serialize + DeserializeOwned + Send + Sync + 'static,
    Ev: DeserializeOwned + Send + Sync + 'static,
{
    /// Replaces the whole configuration.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Sets [`Config::max`].
    pub fn max(mut self, max: usize) -> Self {
        self.config.max = max;
        self
    }

    /// Sets [`Config::idle`].
    pub fn idle(mut self, idle: usize) -> Self {
        self.config.idle = idle;
        self
    }

    /// Sets [`Config::load`].
    pub fn load(mut self, load: usize) -> Self {
        self.config.load = load;
        self
    }

    /// Sets [`Config::start`].
    pub fn start(mut self, start: Duration) -> Self {
        self.config.start = start;
        self
    }

    /// Sets [`Config::stop`].
    pub fn stop(mut self, stop: Duration) -> Self {
        self.config.stop = stop;
        self
    }

    /// Bounds the queue ([`Config::queue_limit`], [`Config::overflow`]).
    pub fn queue_limit(mut self, limit: usize, overflow: Overflow) -> Self {
        self.config.queue_limit = Some(limit);
        self.config.overflow = overflow;
        self
    }

    /// Sets [`Config::max_requests`] (and optionally the jitter).
    pub fn max_requests(mut self, jobs: u64, jitter: Option<u64>) -> Self {
        self.config.max_requests = Some(jobs);
        self.config.max_requests_jitter = jitter;
        self
    }

    /// Sets [`Config::max_rss`] in bytes.
    pub fn max_rss(mut self, bytes: u64) -> Self {
        self.config.max_rss = Some(bytes);
        self
    }

    /// Sets [`Config::job_timeout`].
    pub fn job_timeout(mut self, limit: Duration) -> Self {
        self.config.job_timeout = Some(limit);
        self
    }

    /// Sets [`Config::kill_grace`].
    pub fn kill_grace(mut self, grace: Duration) -> Self {
        self.config.kill_grace = grace;
        self
    }

    /// Sets [`Config::shutdown_timeout`].
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.config.shutdown_timeout = timeout;
        self
    }

    /// Sets the workers' RPC configuration ([`Config::rpc`]).
    pub fn rpc(mut self, rpc: fork_rpc::Config) -> Self {
        self.config.rpc = rpc;
        self
    }

    /// Marks requests that may run more than once: when the worker running
    /// one dies, the pool runs it again on another worker instead of
    /// failing it, up to [`retries`](Builder::retries) times (once by
    /// default).
    pub fn idempotent(
        mut self,
        is_idempotent: impl Fn(&Req) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.idempotent = Some(Box::new(is_idempotent));
        self
    }

    /// How many times an [idempotent](Builder::idempotent) job is run again
    /// after its worker died. The default is 1.
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// Builds the pool: starts the supervisor, which starts `idle` workers
    /// at once.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn build(self) -> Pool<Req, Resp, Ev> {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id());
        let shared = Arc::new(Shared {
            knobs: self.config.knobs(),
            queue_room: self
                .config
                .queue_limit
                .map(|n| Arc::new(Semaphore::new(n.max(1)))),
            config: Config {
                queue_limit: self.config.queue_limit.map(|n| n.max(1)),
                ..self.config
            },
            template: self.template,
            entry: self.entry,
            idempotent: self.idempotent,
            retries: self.retries,
            state: Mutex::new(State {
                members: Vec::new(),
                next_id: 0,
                queue: VecDeque::new(),
                next_waiter: 0,
                alive: HashMap::new(),
                starting: 0,
                closed: false,
                finished: false,
                last_spawn: None,
                consecutive_failures: 0,
                backoff_until: None,
                stats: Stats::default(),
                rng: seed,
                next_wake: None,
            }),
            wake: Notify::new(),
            changed: Notify::new(),
            abandon: tokio::sync::watch::Sender::new(false),
            events_tx,
            events_rx: Mutex::new(Some(events_rx)),
            events_taken: std::sync::atomic::AtomicBool::new(false),
        });
        // The `idle` workers start up front, before any job can queue.
        let spares = shared.knobs.idle;
        if spares > 0 {
            let mut st = shared.lock();
            st.starting = spares;
            st.last_spawn = Some(Instant::now());
        }
        for _ in 0..spares {
            tokio::spawn(shared.clone().spawn_worker());
        }
        tokio::spawn(supervise(shared.clone()));
        let closing = shared.clone();
        Pool {
            handle: Arc::new(Handle {
                shared,
                on_drop: Box::new(move || closing.drop_all_handles()),
            }),
        }
    }
}

// ===== impl Pool =====

impl<Req, Resp, Ev> Pool<Req, Resp, Ev>
where
    Req: Serialize + DeserializeOwned + RequestName + Send + Sync + 'static,
    Resp: Serialize + DeserializeOwned + Send + Sync + 'static,
    Ev: DeserializeOwned + Send + Sync + 'static,
{
    /// Starts building a pool of workers forked from `template` (prepared as
    /// you like: preloaded state, arguments, descriptors), each serving
    /// `entry`.
    pub fn builder(
        template: fork_core::Template,
        entry: &fork_rpc::RpcEntry<Req, Resp, Ev>,
    ) -> Builder<Req, Resp, Ev> {
        Builder {
            template,
            entry: *entry,
            config: Config::default(),
            idempotent: None,
            retries: 1,
        }
    }

    /// A context for a call on the pool: tarpc's current one, expiring
    /// after the workers' [`default_timeout`](fork_rpc::Config::default_timeout)
    /// from now (tarpc's 10 s if it has none), as
    /// [`fork_rpc::Client::context`] makes. The time a call waits in the
    /// queue counts against its deadline. Contexts made otherwise keep
    /// their deadlines.
    pub fn context(&self) -> Context {
        let mut ctx = tarpc::context::current();
        if let Some(timeout) = self.handle.shared.config.rpc.default_timeout {
            ctx.deadline = crate::deadline::after(std::time::Instant::now(), timeout);
        }
        ctx
    }

    /// A snapshot of the pool's state and counters.
    pub fn stats(&self) -> Stats {
        self.handle.shared.stats()
    }

    /// The process ids of the current workers (not those starting).
    pub fn worker_pids(&self) -> Vec<u32> {
        self.handle
            .shared
            .lock()
            .members
            .iter()
            .map(|m| m.pid)
            .collect()
    }

    /// Takes the stream of events from all workers, each with its worker's
    /// pid (once; `None` afterwards). Events sent before it is taken are
    /// dropped, so that a pool whose events nobody reads does not hoard them.
    pub fn events(&self) -> Option<PoolEvents<Ev>> {
        let shared = &self.handle.shared;
        let rx = shared.events_rx.lock().ok().and_then(|mut rx| rx.take());
        shared
            .events_taken
            .store(true, std::sync::atomic::Ordering::Release);
        rx
    }

    /// Waits until the pool's [`Stats`] satisfy `condition`, re-checking
    /// whenever a worker starts, leaves, dies or turns idle, and returns
    /// them. For tests and for programs that scale in steps.
    pub async fn wait_until(&self, condition: impl Fn(&Stats) -> bool) -> Stats {
        let shared = &self.handle.shared;
        loop {
            let changed = shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let stats = shared.stats();
            if condition(&stats) {
                return stats;
            }
            changed.await;
        }
    }

    /// Stops taking new calls (they fail with [`Error::Closed`]), lets the
    /// queued and running jobs finish, closes the workers (they exit 0) and
    /// waits for them. After [`Config::shutdown_timeout`], jobs still queued
    /// fail with [`Error::Closed`] and workers still running are killed.
    /// Afterwards no worker of the pool remains.
    pub async fn shutdown(&self) {
        self.handle.shared.shutdown().await;
    }
}

impl<Req, Resp, Ev> Stub for Pool<Req, Resp, Ev>
where
    Req: Serialize + DeserializeOwned + RequestName + Send + Sync + 'static,
    Resp: Serialize + DeserializeOwned + Send + Sync + 'static,
    Ev: DeserializeOwned + Send + Sync + 'static,
{
    type Req = Req;
    type Resp = Resp;

    // A plain function returning a hand-written future rather than an
    // `async fn`: the future of a call is moved several times on its way
    // (tarpc's generated method keeps two copies of it, the caller moves it
    // into its own future, a `FuturesUnordered`, a task), so every byte
    // counts; an `async fn` would keep the context and the request beside
    // every later state. The slow paths (queueing, a time limit, retries)
    // are boxed for the same reason.
    fn call(&self, ctx: Context, request: Req) -> impl Future<Output = Result<Resp, RpcError>> {
        let shared = &self.handle.shared;
        if shared.retries > 0 && shared.idempotent.as_ref().is_some_and(|is| is(&request)) {
            Job::Other(Box::pin(shared.run_retrying(ctx, request)))
        } else {
            shared.run(ctx, request)
        }
    }
}

// ===== a job =====

/// A job's future: on a worker at once (the usual case), or the rest
/// (queued, under a time limit, or retried) boxed.
enum Job<'a, Req, Resp, Ev, F>
where
    Req: Serialize + DeserializeOwned + RequestName + Send + Sync + 'static,
    Resp: Serialize + DeserializeOwned + Send + Sync + 'static,
    Ev: DeserializeOwned + Send + Sync + 'static,
{
    /// The worker's call, and the place it holds (given back after the
    /// call is dropped: fields drop in order).
    Running(F, Place<'a, Req, Resp, Ev>),
    Other(Pin<Box<dyn Future<Output = Result<Resp, RpcError>> + Send + 'a>>),
    Failed(Option<Error>),
    Done,
}

impl<Req, Resp, Ev, F> Future for Job<'_, Req, Resp, Ev, F>
where
    Req: Serialize + DeserializeOwned + RequestName + Send + Sync + 'static,
    Resp: Serialize + DeserializeOwned + Send + Sync + 'static,
    Ev: DeserializeOwned + Send + Sync + 'static,
    F: Future<Output = Result<Resp, RpcError>> + Unpin,
{
    type Output = Result<Resp, RpcError>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match this {
            Job::Running(call, place) => {
                let result = ready!(Pin::new(call).poll(cx));
                place.answered = place.pool.finish(place.id, &result);
                // Gives the place back.
                *this = Job::Done;
                Poll::Ready(result)
            }
            Job::Other(job) => job.as_mut().poll(cx),
            Job::Failed(e) => Poll::Ready(Err(e
                .take()
                .expect("a pool's call polled after it completed")
                .into_rpc())),
            Job::Done => panic!("a pool's call polled after it completed"),
        }
    }
}

/// A job waiting in the queue: dropped before it left the queue (its caller
/// gave up), it takes the job out.
struct Queued<'a, Req, Resp, Ev>
where
    Req: Serialize + DeserializeOwned + RequestName + Send + Sync + 'static,
    Resp: Serialize + DeserializeOwned + Send + Sync + 'static,
    Ev: DeserializeOwned + Send + Sync + 'static,
{
    pool: &'a Arc<Shared<Req, Resp, Ev>>,
    /// The job's id in the queue, until it left it.
    id: Option<u64>,
}

impl<Req, Resp, Ev> Drop for Queued<'_, Req, Resp, Ev>
where
    Req: Serialize + DeserializeOwned + RequestName + Send + Sync + 'static,
    Resp: Serialize + DeserializeOwned + Send + Sync + 'static,
    Ev: DeserializeOwned + Send + Sync + 'static,
{
    fn drop(&mut self) {
        let Some(id) = self.id else { return };
        let mut st = self.pool.lock();
        // Not found if it was handed a place meanwhile: that place is given
        // back when the unreceived grant is dropped.
        if let Some(i) = st.queue.iter().position(|w| w.id == id) {
            st.queue.remove(i);
            drop(st);
            self.pool.changed.notify_waiters();
        }
    }
}

/// A job's place on a worker, given back when dropped.
struct Place<'a, Req, Resp, Ev>
where
    Req: Serialize + DeserializeOwned + RequestName + Send + Sync + 'static,
    Resp: Serialize + DeserializeOwned + Send + Sync + 'static,
    Ev: DeserializeOwned + Send + Sync + 'static,
{
    pool: &'a Arc<Shared<Req, Resp, Ev>>,
    id: u64,
    /// The job was answered (counted in `Stats::completed`).
    answered: bool,
}

impl<Req, Resp, Ev> Drop for Place<'_, Req, Resp, Ev>
where
    Req: Serialize + DeserializeOwned + RequestName + Send + Sync + 'static,
    Resp: Serialize + DeserializeOwned + Send + Sync + 'static,
    Ev: DeserializeOwned + Send + Sync + 'static,
{
    fn drop(&mut self) {
        self.pool.release_job(self.id, self.answered);
    }
}

// ===== impl Shared =====

impl<Req, Resp, Ev> Shared<Req, Resp, Ev>
where
    Req: Serialize + DeserializeOwned + RequestName + Send + Sync + 'static,
    Resp: Serialize + DeserializeOwned + Send + Sync + 'static,
    Ev: DeserializeOwned + Send + Sync + 'static,
{
    fn lock(&self) -> MutexGuard<'_, State<Req, Resp>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stats(&self) -> Stats {
        let st = self.lock();
        let mut stats = st.stats.clone();
        stats.starting = st.starting;
        stats.idle = st.members.iter().filter(|m| m.load == 0).count();
        stats.busy = st.members.len() - stats.idle;
        stats.queued = st.queue.len();
        stats
    }

    /// The least-loaded worker that takes jobs and has room; ties go to the
    /// oldest, so light load concentrates on few workers and the rest can
    /// reach `stop`.
    fn pick(&self, st: &State<Req, Resp>) -> Option<usize> {
        let mut best: Option<(usize, usize)> = None;
        for (i, m) in st.members.iter().enumerate() {
            if m.leaving.is_some() || m.load >= self.knobs.load {
                continue;
            }
            if best.is_none_or(|(_, load)| m.load < load) {
                best = Some((i, m.load));
                if m.load == 0 {
                    break;
                }
            }
        }
        best.map(|(i, _)| i)
    }

    /// Counts a job on worker `i`.
    fn take_place(&self, st: &mut State<Req, Resp>, i: usize) -> Taken<Req, Resp> {
        let m = &mut st.members[i];
        m.load += 1;
        let went_to_work = m.load == 1;
        let taken = Taken {
            id: m.id,
            client: m.client.clone(),
            pid: m.pid,
        };
        if went_to_work && self.spares_short(st) {
            // A spare went to work: the supervisor starts another.
            self.wake.notify_one();
        }
        taken
    }

    /// A place taken with [`take_place`](Self::take_place), as one that
    /// gives itself back when dropped, also from another task (for the
    /// queue).
    fn grant(self: &Arc<Self>, Taken { id, client, pid }: Taken<Req, Resp>) -> Grant<Req, Resp> {
        let pool: Arc<dyn Release> = self.clone();
        Grant {
            slot: Slot {
                id,
                answered: false,
                pool: Some(pool),
            },
            client,
            pid,
        }
    }

    /// Whether the pool has fewer spare workers (idle or starting) than
    /// `idle` and room for another: what the scaling policy would start one
    /// for.
    fn spares_short(&self, st: &State<Req, Resp>) -> bool {
        if self.knobs.idle == 0 {
            return false;
        }
        let (mut spares, mut total) = (st.starting, st.starting);
        for m in st.members.iter().filter(|m| m.leaving.is_none()) {
            total += 1;
            spares += usize::from(m.load == 0);
        }
        spares < self.knobs.idle && total < self.knobs.max
    }

    /// Hands free places to queued jobs, oldest first.
    fn dispatch(self: &Arc<Self>, st: &mut State<Req, Resp>) {
        while !st.queue.is_empty() {
            let Some(i) = self.pick(st) else { break };
            let waiter = st.queue.pop_front().expect("not empty");
            let grant = self.grant(self.take_place(st, i));
            if let Err(Ok(grant)) = waiter.tx.send(Ok(grant)) {
                // The caller gave up meanwhile: take the place back.
                grant.slot.disarm();
                st.members[i].load -= 1;
            }
        }
    }

    /// A place on a worker (as [`take_place`](Self::take_place)) if one is
    /// free and no job queues before this one; `None` if the job must queue.
    fn try_place(&self) -> Result<Option<Taken<Req, Resp>>, Error> {
        let mut st = self.lock();
        if st.closed {
            return Err(Error::Closed);
        }
        if st.queue.is_empty()
            && let Some(i) = self.pick(&st)
        {
            return Ok(Some(self.take_place(&mut st, i)));
        }
        Ok(None)
    }

    /// [`try_place`](Self::try_place), as a [`Grant`].
    fn try_acquire(self: &Arc<Self>) -> Result<Option<Grant<Req, Resp>>, Error> {
        Ok(self.try_place()?.map(|place| self.grant(place)))
    }

    /// Gets a place on a worker, waiting in the queue if none is free. Takes
    /// a free place when called, not when first polled.
    fn acquire(self: &Arc<Self>) -> impl Future<Output = Result<Grant<Req, Resp>, Error>> + '_ {
        match self.try_acquire() {
            Ok(Some(grant)) => Either::Left(std::future::ready(Ok(grant))),
            Ok(None) => Either::Right(Box::pin(self.queue_up())),
            Err(e) => Either::Left(std::future::ready(Err(e))),
        }
    }

    /// Waits in the queue (after waiting for room in it, if it is bounded
    /// and the caller chose to wait) for a place on a worker.
    async fn queue_up(self: &Arc<Self>) -> Result<Grant<Req, Resp>, Error> {
        let room = match &self.queue_room {
            None => None,
            Some(sem) => match self.config.overflow {
                Overflow::Error => Some(
                    sem.clone()
                        .try_acquire_owned()
                        .map_err(|_| Error::QueueFull(self.config.queue_limit.unwrap_or(0)))?,
                ),
                Overflow::Wait => Some(
                    sem.clone()
                        .acquire_owned()
                        .await
                        .map_err(|_| Error::Closed)?,
                ),
            },
        };
        let (rx, id) = {
            let mut st = self.lock();
            if st.closed {
                return Err(Error::Closed);
            }
            if st.queue.is_empty()
                && let Some(i) = self.pick(&st)
            {
                return Ok(self.grant(self.take_place(&mut st, i)));
            }
            let (tx, rx) = oneshot::channel();
            let id = st.next_waiter;
            st.next_waiter += 1;
            st.queue.push_back(Waiter {
                id,
                tx,
                since: Instant::now(),
                _room: room,
            });
            // The supervisor grows the pool for waiting jobs, if it can.
            if st.members.len() + st.starting < self.knobs.max {
                self.wake.notify_one();
            }
            (rx, id)
        };
        self.changed.notify_waiters();
        // A caller that gives up (its future dropped, as by a timeout or a
        // deadline) takes its job out of the queue, and the room with it.
        let mut queued = Queued {
            pool: self,
            id: Some(id),
        };
        let result = rx.await;
        queued.id = None;
        result.unwrap_or(Err(Error::Closed))
    }

    /// Runs an idempotent job, and again on another worker (up to
    /// `retries` times) while the worker it ran on is lost.
    async fn run_retrying(self: &Arc<Self>, ctx: Context, request: Req) -> Result<Resp, RpcError> {
        // A copy of the request, to run it again.
        let copy = bincode::serialize(&request).ok();
        let mut result = self.run(ctx, request).await;
        let mut retries = self.retries;
        while let (Err(e), Some(copy)) = (&result, &copy) {
            if retries == 0 || !fork_rpc::WorkerLost::is_lost(e) {
                break;
            }
            let Ok(request) = bincode::deserialize(copy) else {
                break;
            };
            retries -= 1;
            tracing::debug!(error = %e, "running an idempotent job again on another worker");
            result = self.run(ctx, request).await;
        }
        result
    }

    /// Runs one job on one worker: at once if a place is free and the job
    /// has no time limit, with nothing boxed; else queued or timed, boxed.
    fn run(
        self: &Arc<Self>,
        ctx: Context,
        request: Req,
    ) -> Job<
        '_,
        Req,
        Resp,
        Ev,
        impl Future<Output = Result<Resp, RpcError>> + Send + Unpin + use<Req, Resp, Ev>,
    > {
        if self.config.job_timeout.is_none() {
            match self.try_place() {
                Ok(Some(Taken { id, client, .. })) => {
                    let place = Place {
                        pool: self,
                        id,
                        answered: false,
                    };
                    return Job::Running(client.call_owned(ctx, request), place);
                }
                Ok(None) => {}
                Err(e) => return Job::Failed(Some(e)),
            }
        }
        Job::Other(Box::pin(self.run_slowly(ctx, request)))
    }

    /// [`run`](Self::run) for a job that queues or has a time limit. The
    /// call's deadline counts while it waits for a place.
    async fn run_slowly(self: &Arc<Self>, ctx: Context, request: Req) -> Result<Resp, RpcError> {
        let mut grant = match crate::deadline::within(ctx.deadline, self.acquire()).await {
            Some(grant) => grant.map_err(Error::into_rpc)?,
            None => return Err(RpcError::DeadlineExceeded),
        };
        let result = self.call_on(&grant, ctx, request).await;
        grant.slot.answered = self.finish(grant.slot.id, &result);
        result
    }

    /// The call of a job on the worker it was granted, within the time
    /// limit if there is one (boxed: a call without a limit carries no
    /// timer).
    fn call_on<'a>(
        self: &'a Arc<Self>,
        grant: &'a Grant<Req, Resp>,
        ctx: Context,
        request: Req,
    ) -> impl Future<Output = Result<Resp, RpcError>> + 'a {
        match self.config.job_timeout {
            None => Either::Left(Stub::call(&*grant.client, ctx, request)),
            Some(limit) => Either::Right(Box::pin(self.run_within(limit, grant, ctx, request))),
        }
    }

    /// A job on worker `id` ended: takes the worker out if it was lost or
    /// its connection broke. Whether the job was answered.
    fn finish(self: &Arc<Self>, id: u64, result: &Result<Resp, RpcError>) -> bool {
        let Err(e) = result else { return true };
        if let Some(lost) = fork_rpc::WorkerLost::find(e) {
            self.lost(id, lost);
        } else if !matches!(e, RpcError::DeadlineExceeded | RpcError::Server(_)) {
            // (A call past its deadline or answered with an error says
            // nothing of the connection: the next job will, if it broke.)
            let mut st = self.lock();
            if st
                .members
                .iter()
                .any(|m| m.id == id && m.client.is_closed())
            {
                // It sent what cannot be read: it serves nothing more.
                // (Counted once, by the first of its jobs to see it.)
                st.stats.crashed += 1;
                if let Some(pid) = self.kill(st, id) {
                    tracing::warn!(pid, error = %e, "worker's connection broke; killing it");
                }
            }
        }
        false
    }

    /// Runs a job with a time limit; past it, the worker is killed.
    async fn run_within(
        self: &Arc<Self>,
        limit: Duration,
        grant: &Grant<Req, Resp>,
        ctx: Context,
        request: Req,
    ) -> Result<Resp, RpcError> {
        match tokio::time::timeout(limit, Stub::call(&*grant.client, ctx, request)).await {
            Ok(result) => result,
            Err(_) => {
                self.timed_out(grant.slot.id);
                Err(Error::Timeout {
                    limit,
                    pid: grant.pid,
                }
                .into_rpc())
            }
        }
    }

    /// A job finished: free its place, retire the worker if it is due,
    /// feed the queue.
    fn release_job(self: &Arc<Self>, id: u64, answered: bool) {
        // Read the clock only when something needs it.
        let mut clock = None;
        let mut now = || *clock.get_or_insert_with(Instant::now);
        let mut check_rss = None;
        let mut leaving = None;
        let mut turned_idle = false;
        {
            let mut st = self.lock();
            if answered {
                st.stats.completed += 1;
            }
            if let Some(i) = st.members.iter().position(|m| m.id == id) {
                let m = &mut st.members[i];
                m.load -= 1;
                m.served += 1;
                if m.load == 0 {
                    m.idle_since = now();
                    turned_idle = true;
                }
                if m.leaving.is_none() {
                    if m.limit.is_some_and(|limit| m.served >= limit) {
                        m.leaving = Some(Leave::Recycled);
                    } else if m.client.retire_requested() {
                        m.leaving = Some(Leave::Retired);
                    } else if self.config.max_rss.is_some()
                        && !m.rss_exempt
                        && (m.load == 0 || now().duration_since(m.rss_checked) >= RSS_INTERVAL)
                    {
                        m.rss_checked = now();
                        check_rss = Some((m.pid, m.served));
                    }
                }
                if m.leaving.is_some() && m.load == 0 {
                    leaving = Some(Self::take_leaving(&mut st, i));
                }
                if st.members.get(i).is_some_and(|m| m.load == 0) || leaving.is_some() {
                    self.changed.notify_waiters();
                }
            }
            self.dispatch(&mut st);
            // Wake the supervisor only when it can act: a worker left; jobs
            // wait and the pool may grow; or a worker turned idle that may be
            // stopped (more idle than `idle`) and no timer of the supervisor
            // would look before its `stop` is due.
            let may_grow = st.members.len() + st.starting < self.knobs.max;
            let timer_needed = turned_idle
                && st
                    .next_wake
                    .is_none_or(|at| at > after(now(), self.config.stop))
                && st.members.iter().filter(|m| m.load == 0).count() > self.knobs.idle;
            if leaving.is_some() || (!st.queue.is_empty() && may_grow) || timer_needed {
                self.wake.notify_one();
            }
        }
        if let Some(m) = leaving {
            self.leave(m);
        }
        if let Some((pid, served)) = check_rss {
            self.check_rss(id, pid, served);
        }
    }

    fn check_rss(self: &Arc<Self>, id: u64, pid: u32, served: u64) {
        let Some(limit) = self.config.max_rss else {
            return;
        };
        let Some(rss) = rss_of(pid) else { return };
        if rss <= limit {
            return;
        }
        let mut st = self.lock();
        let Some(i) = st.members.iter().position(|m| m.id == id) else {
            return;
        };
        let m = &mut st.members[i];
        if served <= 1 {
            // Over the limit from the start: recycling would only fork
            // another one just as big, again and again.
            m.rss_exempt = true;
            tracing::warn!(
                pid,
                rss,
                limit,
                "a fresh worker is already over max_rss; not recycling it for memory"
            );
            return;
        }
        if m.leaving.is_none() {
            m.leaving = Some(Leave::Memory);
            tracing::info!(pid, rss, limit, "recycling a worker over max_rss");
        }
        if m.load == 0 {
            let m = Self::take_leaving(&mut st, i);
            self.wake.notify_one();
            drop(st);
            self.leave(m);
        }
    }

    /// Takes a leaving worker out of the pool (counted as recycled, in the
    /// same critical section, so stats stay consistent).
    fn take_leaving(st: &mut State<Req, Resp>, i: usize) -> Member<Req, Resp> {
        st.stats.recycled += 1;
        st.members.remove(i)
    }

    /// A worker leaves gracefully: dropping its client closes the connection
    /// once its jobs are answered, and it exits 0.
    fn leave(&self, m: Member<Req, Resp>) {
        tracing::debug!(pid = m.pid, reason = ?m.leaving, served = m.served, "worker leaves");
        self.changed.notify_waiters();
    }

    /// A job saw its worker die: take the worker out (the supervisor starts
    /// a replacement if one is needed).
    fn lost(self: &Arc<Self>, id: u64, lost: &fork_rpc::WorkerLost) {
        let mut st = self.lock();
        if let Some(i) = st.members.iter().position(|m| m.id == id) {
            st.members.remove(i);
            st.stats.crashed += 1;
            tracing::warn!(pid = lost.pid(), status = ?lost.status(), "worker lost");
            self.wake.notify_one();
            self.changed.notify_waiters();
        }
    }

    /// A job exceeded the time limit: take its worker out, `SIGTERM` it, and
    /// `SIGKILL` it after the grace period.
    fn timed_out(self: &Arc<Self>, id: u64) {
        let mut st = self.lock();
        st.stats.timed_out += 1;
        if let Some(pid) = self.kill(st, id) {
            tracing::warn!(pid, limit = ?self.config.job_timeout, "job timed out; killing its worker");
        }
    }

    /// Takes worker `id` out, if it is still in, and ends it: `SIGTERM`,
    /// then `SIGKILL` after the grace period. Its pid, if it was in.
    fn kill(self: &Arc<Self>, mut st: MutexGuard<'_, State<Req, Resp>>, id: u64) -> Option<u32> {
        let i = st.members.iter().position(|m| m.id == id)?;
        let m = st.members.remove(i);
        self.wake.notify_one();
        self.changed.notify_waiters();
        drop(st);
        terminate(m.process, self.config.kill_grace);
        Some(m.pid)
    }

    fn snapshot(&self, st: &State<Req, Resp>) -> Snapshot {
        let mut s = Snapshot {
            starting: st.starting,
            queued: st.queue.len(),
            oldest_queued: st.queue.front().map(|w| w.since),
            last_spawn: st.last_spawn,
            backoff_until: st.backoff_until,
            ..Snapshot::default()
        };
        for m in st.members.iter().filter(|m| m.leaving.is_none()) {
            if m.load == 0 {
                s.idle.push((m.id, m.idle_since));
            } else {
                s.busy += 1;
            }
        }
        s
    }

    /// Starts one worker; on success it joins the pool and takes queued jobs.
    async fn spawn_worker(self: Arc<Self>) {
        let mut abandon = self.abandon.subscribe();
        let mut fork = self.template.fork();
        let give_up = async move {
            let _ = abandon.wait_for(|given_up| *given_up).await;
        };
        let result = fork_rpc::RpcWorker::builder(&mut fork, &self.entry)
            .config(self.config.rpc.clone())
            .spawn_until(give_up)
            .await;
        if let Err(fork_rpc::Error::StartAbandoned { pid }) = result {
            // Killed, and gone.
            self.lock().starting -= 1;
            self.changed.notify_waiters();
            tracing::warn!(?pid, "gave up on a worker still starting at shutdown");
            return;
        }
        let mut st = self.lock();
        if st.closed
            && st.finished
            && let Ok((client, worker)) = result
        {
            // Shut down meanwhile: end this worker, and count it as
            // starting until it is gone, so that `shutdown` waits for it.
            drop(st);
            drop(client);
            let shared = self.clone();
            tokio::spawn(async move {
                let mut handle = worker.handle();
                let _ = handle.signal(Signal::SIGKILL);
                let _ = handle.wait().await;
                shared.lock().starting -= 1;
                shared.changed.notify_waiters();
            });
            return;
        }
        st.starting -= 1;
        match result {
            Ok((client, worker)) => {
                st.consecutive_failures = 0;
                st.backoff_until = None;
                st.stats.spawned += 1;
                let id = st.next_id;
                st.next_id += 1;
                let limit = self.config.max_requests.map(|n| {
                    let taken: Vec<u64> = st.members.iter().filter_map(|m| m.limit).collect();
                    let extra = pick_jitter(&mut st.rng, self.config.jitter(), |e| {
                        taken.contains(&n.saturating_add(e))
                    });
                    n.saturating_add(extra).max(1)
                });
                let now = Instant::now();
                let pid = worker.id();
                st.alive.insert(id, worker.handle());
                st.members.push(Member {
                    id,
                    pid,
                    client: Arc::new(client),
                    process: worker.handle(),
                    load: 0,
                    served: 0,
                    limit,
                    leaving: None,
                    idle_since: now,
                    rss_checked: now,
                    rss_exempt: false,
                });
                tracing::debug!(pid, "worker started");
                self.dispatch(&mut st);
                drop(st);
                tokio::spawn(monitor(self.clone(), id, worker));
            }
            Err(e) => {
                st.stats.spawn_failures += 1;
                st.consecutive_failures += 1;
                let backoff = BACKOFF_FIRST
                    .saturating_mul(1 << st.consecutive_failures.min(16).saturating_sub(1))
                    .min(BACKOFF_MAX);
                st.backoff_until = Some(Instant::now() + backoff);
                tracing::warn!(error = %e, ?backoff, "could not start a worker");
                if st.members.is_empty() && st.starting == 0 {
                    // Nothing will serve the queue soon: tell the callers.
                    let e = Arc::new(e);
                    for waiter in st.queue.drain(..) {
                        let _ = waiter.tx.send(Err(Error::Spawn(e.clone())));
                    }
                }
            }
        }
        self.wake.notify_one();
        self.changed.notify_waiters();
    }

    async fn shutdown(self: &Arc<Self>) {
        let deadline = tokio::time::Instant::now() + self.config.shutdown_timeout.min(FOREVER);
        {
            let mut st = self.lock();
            if st.finished {
                return;
            }
            st.closed = true;
        }
        if let Some(sem) = &self.queue_room {
            sem.close();
        }
        tracing::debug!("pool shutting down");
        // Drain the queue and the running jobs.
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let st = self.lock();
                let busy = st.members.iter().any(|m| m.load > 0);
                if st.queue.is_empty() && !busy {
                    break;
                }
            }
            self.wake.notify_one();
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                break;
            }
        }
        // Close every worker and wait for it; kill what is left at the deadline.
        let (members, waiters) = {
            let mut st = self.lock();
            st.finished = true;
            (
                std::mem::take(&mut st.members),
                std::mem::take(&mut st.queue),
            )
        };
        for waiter in waiters {
            let _ = waiter.tx.send(Err(Error::Closed));
        }
        // Dropping the members closes their connections: they finish and
        // exit 0.
        drop(members);
        self.wake.notify_one();
        // Wait until every worker process the pool started was reaped: those
        // just closed, those that left before (recycled, stopped, killed,
        // lost) and are still exiting, and those still starting (killed as
        // they arrive, see `finished`). Past the deadline, kill what is left
        // and give up on starts (they are killed too).
        let mut killed = false;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let alive: Vec<fork_core::WorkerHandle> = {
                let st = self.lock();
                if st.alive.is_empty() && st.starting == 0 {
                    break;
                }
                st.alive.values().cloned().collect()
            };
            if killed {
                changed.await;
            } else if tokio::time::timeout_at(deadline, changed).await.is_err() {
                killed = true;
                for process in alive {
                    let _ = process.signal(Signal::SIGKILL);
                }
                self.abandon.send_replace(true);
            }
        }
        tracing::debug!("pool shut down");
    }

    fn drop_all_handles(self: &Arc<Self>) {
        let shared = self.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { shared.shutdown().await });
        } else {
            // No runtime: close what can be closed synchronously.
            let mut st = shared.lock();
            st.closed = true;
            st.finished = true;
            st.members.clear();
            st.queue.clear();
        }
    }
}

impl<Req, Resp, Ev> Release for Shared<Req, Resp, Ev>
where
    Req: Serialize + DeserializeOwned + RequestName + Send + Sync + 'static,
    Resp: Serialize + DeserializeOwned + Send + Sync + 'static,
    Ev: DeserializeOwned + Send + Sync + 'static,
{
    fn release(self: Arc<Self>, id: u64, answered: bool) {
        self.release_job(id, answered);
    }
}

/// `SIGTERM` now, `SIGKILL` after `grace` if the worker is still there.
fn terminate(process: fork_core::WorkerHandle, grace: Duration) {
    let _ = process.signal(Signal::SIGTERM);
    tokio::spawn(async move {
        let mut waiting = process.clone();
        if tokio::time::timeout(grace, waiting.wait()).await.is_err() {
            let _ = process.signal(Signal::SIGKILL);
        }
    });
}

/// Resident memory of `pid` in bytes, from `VmRSS` in `/proc/<pid>/status`.
fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Watches one worker: forwards its events, honours its retire request,
/// and notices its death.
async fn monitor<Req, Resp, Ev>(
    shared: Arc<Shared<Req, Resp, Ev>>,
    id: u64,
    mut worker: fork_rpc::RpcWorker<Ev>,
) where
    Req: Serialize + DeserializeOwned + RequestName + Send + Sync + 'static,
    Resp: Serialize + DeserializeOwned + Send + Sync + 'static,
    Ev: DeserializeOwned + Send + Sync + 'static,
{
    let pid = worker.id();
    let mut exit = worker.handle();
    let mut events = worker.events();
    let mut retire_seen = false;
    let status = loop {
        tokio::select! {
            status = exit.wait() => break status,
            event = async { events.as_mut()?.recv().await }, if events.is_some() => match event {
                Some(event) => {
                    if shared.events_taken.load(std::sync::atomic::Ordering::Acquire) {
                        let _ = shared.events_tx.send((pid, event));
                    }
                }
                None => events = None,
            },
            () = worker.retire_request(), if !retire_seen => {
                retire_seen = true;
                let mut st = shared.lock();
                if let Some(i) = st.members.iter().position(|m| m.id == id) {
                    st.members[i].leaving.get_or_insert(Leave::Retired);
                    if st.members[i].load == 0 {
                        let m = Shared::<Req, Resp, Ev>::take_leaving(&mut st, i);
                        shared.wake.notify_one();
                        drop(st);
                        shared.leave(m);
                    }
                }
            }
        }
    };
    // Events sent before the exit may still be queued.
    if let Some(events) = events.as_mut() {
        while let Some(event) = events.try_recv() {
            if shared
                .events_taken
                .load(std::sync::atomic::Ordering::Acquire)
            {
                let _ = shared.events_tx.send((pid, event));
            }
        }
    }
    let mut st = shared.lock();
    if let Some(i) = st.members.iter().position(|m| m.id == id) {
        st.members.remove(i);
        st.stats.crashed += 1;
        tracing::warn!(pid, ?status, "worker died");
        shared.wake.notify_one();
    }
    // Reaped (or its template is gone): nothing of it is left.
    st.alive.remove(&id);
    drop(st);
    shared.changed.notify_waiters();
}

/// The supervisor: applies the scaling policy whenever something changed
/// or a timer is due.
async fn supervise<Req, Resp, Ev>(shared: Arc<Shared<Req, Resp, Ev>>)
where
    Req: Serialize + DeserializeOwned + RequestName + Send + Sync + 'static,
    Resp: Serialize + DeserializeOwned + Send + Sync + 'static,
    Ev: DeserializeOwned + Send + Sync + 'static,
{
    loop {
        let now = Instant::now();
        let (decision, stopped) = {
            let mut st = shared.lock();
            if st.finished {
                return;
            }
            let snapshot = shared.snapshot(&st);
            let mut decision = scale::decide(&shared.knobs, &snapshot, now);
            if st.closed {
                // Draining: only start workers for jobs still queued.
                decision.stop.clear();
                if st.queue.is_empty() {
                    decision.spawn = 0;
                }
            }
            let mut stopped = Vec::new();
            for id in &decision.stop {
                if let Some(i) = st.members.iter().position(|m| m.id == *id && m.load == 0) {
                    st.members[i].leaving = Some(Leave::Idle);
                    stopped.push(Shared::<Req, Resp, Ev>::take_leaving(&mut st, i));
                }
            }
            if decision.spawn > 0 {
                st.starting += decision.spawn;
                st.last_spawn = Some(now);
            }
            st.next_wake = decision.wake_at;
            (decision, stopped)
        };
        for m in stopped {
            tracing::debug!(pid = m.pid, "stopping an idle worker");
            shared.leave(m);
        }
        for _ in 0..decision.spawn {
            tokio::spawn(shared.clone().spawn_worker());
        }
        match decision.wake_at {
            Some(at) => {
                // The time left on the real clock, waited on the runtime's:
                // on a paused tokio clock moved ahead (tests), `at` itself is
                // past there, and the loop would turn without waiting.
                let left = at.saturating_duration_since(Instant::now());
                let _ = tokio::time::timeout(left, shared.wake.notified()).await;
            }
            None => shared.wake.notified().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_gives_live_workers_distinct_limits() {
        let mut rng = 42;
        let mut taken = Vec::new();
        for _ in 0..5 {
            let e = pick_jitter(&mut rng, 4, |e| taken.contains(&e));
            assert!(e <= 4);
            assert!(!taken.contains(&e), "{e} given twice");
            taken.push(e);
        }
        // More workers than values: repeats are unavoidable but stay in range.
        assert!(pick_jitter(&mut rng, 4, |e| taken.contains(&e)) <= 4);
        assert_eq!(pick_jitter(&mut rng, 0, |_| false), 0);
        // Any value is within the widest jitter.
        let e = pick_jitter(&mut rng, u64::MAX, |e| e == 0);
        assert_ne!(e, 0);
    }

    #[test]
    fn splitmix_is_not_constant() {
        let mut rng = 1;
        let a = splitmix(&mut rng);
        let b = splitmix(&mut rng);
        assert_ne!(a, b);
    }
}
