//! The pool: [`Pool`], the handle users call through, and its parts, one
//! concept per module:
//!
//! - `builder`: [`Builder`], the knobs and `build`;
//! - `spawn`: the seams to worker processes (start, call, signal, reap,
//!   watch), over fork-rpc, with a test double in `testing`;
//! - `member`: a worker as the pool sees it;
//! - `dispatch`: choosing a worker, the queue (plain state);
//! - `lease`: a job's place on a worker, given back on drop;
//! - `job`: a call through the pool, from entry to answer;
//! - `jobs`: plain function jobs ([`fork_rpc::jobs`]) on a pool;
//! - `batch`: many calls with bounded work in flight (`map`, `pipeline`);
//! - `retry`: running idempotent jobs again;
//! - `supervisor`: scaling, spawning, replacing, recycling, watching;
//! - `host`: [`Host`] and what the pool knows and shows of each host;
//! - `link`: connecting hosts, noticing their loss, connecting again;
//! - `life`: open, shutting down, shut down, open again (plain state);
//! - `shutdown`: draining and reaping, and opening again;
//! - `deadline`: tokio's clock, and where a call's deadline enters;
//! - `shared`: the state the parts share;
//! - `stats`: [`Stats`];
//! - `metrics`: the same, and the calls' latency, through the `metrics`
//!   facade (feature `metrics`).

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tarpc::RequestName;
use tarpc::client::RpcError;
use tarpc::client::stub::Stub;
use tarpc::context::Context;
use tokio::sync::mpsc;

use self::shared::Shared;
use self::spawn::RpcSpawn;
use crate::config::Config;

mod batch;
mod builder;
pub(crate) mod deadline;
mod dispatch;
mod host;
mod job;
mod jobs;
mod lease;
mod life;
mod link;
mod member;
mod metrics;
mod retry;
mod shared;
mod shutdown;
mod spawn;
mod stats;
mod supervisor;
#[cfg(test)]
mod testing;

pub use self::builder::Builder;
pub use self::host::{Host, HostEvent, HostEvents, HostStats};
pub use self::jobs::JobPool;
pub use self::stats::Stats;

/// The events of all workers of a pool, each with its worker's pid.
pub type PoolEvents<Ev> = mpsc::UnboundedReceiver<(u32, fork_rpc::Result<Ev>)>;

/// One typed client over many workers: least-loaded dispatch, a FIFO queue,
/// growth on backlog, shrinking when idle, recycling, crash replacement,
/// job timeouts and graceful shutdown (AnyEvent::Fork::Pool, and more).
///
/// `Pool` implements tarpc's [`Stub`], so the generated client works over it
/// unchanged: `CalcClient::from(pool.clone())`. It is a cheap handle
/// (`Clone`); when the last handle is dropped, the pool shuts down for good
/// in the background, as [`shutdown`](Pool::shutdown) would. After
/// `shutdown` itself, the next call opens it again.
pub struct Pool<Req, Resp, Ev = ()> {
    handle: Arc<Handle<Req, Resp, Ev>>,
}

/// What the handles of one pool share; dropping it shuts the pool down.
struct Handle<Req, Resp, Ev> {
    shared: Arc<Shared<RpcSpawn<Req, Resp, Ev>>>,
    /// Shuts the pool down in the background.
    on_drop: Box<dyn Fn() + Send + Sync>,
}

impl<Req, Resp, Ev> Drop for Handle<Req, Resp, Ev> {
    fn drop(&mut self) {
        (self.on_drop)();
    }
}

// ===== impl Pool =====

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
            .field("entry", &self.handle.shared.spawner.entry)
            .finish_non_exhaustive()
    }
}

impl<Req, Resp, Ev> Pool<Req, Resp, Ev>
where
    Req: Serialize + DeserializeOwned + RequestName + Send + Sync + 'static,
    Resp: Serialize + DeserializeOwned + Send + Sync + 'static,
    Ev: DeserializeOwned + Send + Sync + 'static,
{
    /// Starts building a pool of workers forked from `template` (prepared as
    /// you like: preloaded state, arguments, descriptors), each serving
    /// `entry`.
    ///
    /// The template is the pool's first [`Host`], named `local` (or, for
    /// a remote template, after its [host](fork_core::Template::host));
    /// more can be added with [`Builder::host`].
    pub fn builder(
        template: fork_core::Template,
        entry: &fork_rpc::RpcEntry<Req, Resp, Ev>,
    ) -> Builder<Req, Resp, Ev> {
        let name = template.host().unwrap_or("local").to_owned();
        Pool::builder_on(Host::new(name, template), entry)
    }

    /// Starts building a pool whose first host is `host` (a remote
    /// template that connects when needed, for example), each worker
    /// serving `entry`. More hosts can be added with [`Builder::host`].
    pub fn builder_on(
        host: Host,
        entry: &fork_rpc::RpcEntry<Req, Resp, Ev>,
    ) -> Builder<Req, Resp, Ev> {
        Builder {
            hosts: vec![host],
            entry: *entry,
            config: Config::default(),
            max_given: false,
            idempotent: None,
            retries: 1,
            #[cfg(feature = "metrics")]
            metrics_label: None,
        }
    }

    fn from_shared(shared: Arc<Shared<RpcSpawn<Req, Resp, Ev>>>) -> Self {
        let closing = shared.clone();
        Pool {
            handle: Arc::new(Handle {
                shared,
                on_drop: Box::new(move || closing.drop_all_handles()),
            }),
        }
    }

    /// A context for a call on the pool: tarpc's current one, expiring
    /// after the workers' [`default_timeout`](fork_rpc::Config::default_timeout)
    /// from now (tarpc's 10 s if it has none), as
    /// [`fork_rpc::Client::context`] makes. The time a call waits in the
    /// queue counts against its deadline. Contexts made otherwise keep
    /// their deadlines.
    pub fn context(&self) -> Context {
        self.handle.shared.config.rpc.context()
    }

    /// Resolves once the pool has shut down, by [`shutdown`](Pool::shutdown)
    /// or by the drop of its last handle, and every worker it started was
    /// reaped (AnyEvent::Fork::Pool's `on_destroy`). The future holds no
    /// handle: take it, drop the pool, and await it.
    ///
    /// ```no_run
    /// # async fn doc(pool: fork_pool::Pool<String, String>) {
    /// let finished = pool.finished();
    /// drop(pool); // the last handle: the pool shuts down in the background
    /// finished.await; // every worker has exited and was reaped
    /// # }
    /// ```
    ///
    /// A pool can be used again after `shutdown`, so the future waits for
    /// one shutdown: taken while the pool is open or shutting down, it
    /// resolves at the end of the next shutdown to complete, even if a call
    /// opens the pool again before the future is polled; taken while the
    /// pool is shut down (and no call has opened it since), it resolves at
    /// once.
    pub fn finished(&self) -> impl Future<Output = ()> + Send + 'static {
        self.handle.shared.finished()
    }

    /// A snapshot of the pool's state and counters.
    pub fn stats(&self) -> Stats {
        self.handle.shared.stats()
    }

    /// The process ids of the current workers (not those starting).
    pub fn worker_pids(&self) -> Vec<u32> {
        let st = self.handle.shared.lock();
        st.dispatch.members.iter().map(|m| m.pid).collect()
    }

    /// Takes the stream of events from all workers, each with its worker's
    /// pid (once; `None` afterwards). Events sent before it is taken are
    /// dropped, so that a pool whose events nobody reads does not hoard them.
    pub fn events(&self) -> Option<PoolEvents<Ev>> {
        self.handle.shared.take_events()
    }

    /// Takes the stream of [`HostEvent`]s: hosts going down and coming up
    /// (once; `None` afterwards). As with [`events`](Pool::events), only
    /// what happens after it is taken is kept.
    pub fn host_events(&self) -> Option<HostEvents> {
        self.handle.shared.take_host_events()
    }

    /// Waits until the pool's [`Stats`] satisfy `condition`, re-checking
    /// whenever a worker starts, goes to work, leaves, dies or turns idle,
    /// and returns them. For tests and for programs that scale in steps.
    pub async fn wait_until(&self, condition: impl Fn(&Stats) -> bool) -> Stats {
        self.handle.shared.wait_until(condition).await
    }

    /// Stops taking new calls (until it returns, they fail with
    /// [`Error::Closed`](crate::Error::Closed)), lets the queued and running
    /// jobs finish, closes the workers (they exit 0) and waits for them.
    /// After [`Config::shutdown_timeout`], jobs still queued fail with
    /// [`Error::Closed`](crate::Error::Closed) and workers still running are
    /// killed. When it returns, no worker of the pool remains: every
    /// process it started was reaped. A `shutdown` called while another is
    /// under way returns when that one is done; called on a pool shut down,
    /// it returns at once. Once begun, a shutdown runs to its end in the
    /// background even if the future is dropped.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn doc(pool: fork_pool::Pool<String, String>) -> Result<(), tarpc::client::RpcError> {
    /// use tarpc::client::stub::Stub;
    ///
    /// pool.shutdown().await; // every worker has exited and was reaped
    /// // The next call starts a fresh worker from the same template.
    /// let answer = pool.call(pool.context(), "again".to_string()).await?;
    /// # let _ = answer;
    /// // Closed for good: no handle is left to call it.
    /// let finished = pool.finished();
    /// drop(pool);
    /// finished.await;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Reuse
    ///
    /// The pool can be used again afterwards, as Coro::ProcessPool's can:
    /// the next call opens it and starts fresh workers from the same
    /// template, as at build. The [`idle`](Config::idle) spares start with
    /// that call (not before: when `shutdown` returns, no worker runs), and
    /// every knob applies again: the queue limit, recycling, timeouts,
    /// scaling. The [`Stats`] counters keep counting (they count over the
    /// pool's life), the stream of [`events`](Pool::events) carries on, and
    /// clients made from the pool keep working.
    ///
    /// The pool opens again on its own, on the next call, rather than by an
    /// explicit `reopen()`: clients made from the pool
    /// (`CalcClient::from(pool.clone())`, a tower service) only make calls,
    /// and would otherwise each need a pool handle, or fail for a reason
    /// they cannot fix. Closing for good already has its own way, which
    /// cannot be undone: dropping every handle.
    ///
    /// # Caveats
    ///
    /// A task still making calls after `shutdown` starts workers again. To
    /// close a pool for good, drop every handle (the pool and the clients
    /// made from it); [`finished`](Pool::finished) tells when that is done.
    /// A pool over a template that was shut down fails such calls with
    /// [`Error::Spawn`](crate::Error::Spawn).
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
        self.handle.shared.call(ctx, request)
    }
}
