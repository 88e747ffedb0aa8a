//! The pool's knobs.

use std::time::Duration;

/// What a caller gets when the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Overflow {
    /// Wait until the queue has room (backpressure). The default.
    Wait,
    /// Fail at once with [`Error::QueueFull`](crate::Error::QueueFull).
    Error,
}

/// A pool's configuration. Every field says its default, unit and trade-off;
/// the names and meanings are AnyEvent::Fork::Pool's. A duration of
/// `Duration::MAX` means "never" (it is taken as
/// a century).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Most workers at once (the template not counted). More workers serve
    /// more jobs in parallel but cost memory and CPU contention. The default
    /// is the number of available CPUs; for a pool over several
    /// [hosts](crate::Host), the sum of their own limits, a host without
    /// one counting as many as this machine has CPUs.
    pub max: usize,
    /// Fewest idle workers kept ready, started up front: calls find a worker
    /// at once instead of waiting for a spawn, at the cost of idle
    /// processes. The default is 0.
    pub idle: usize,
    /// Jobs sent to one worker at once. 1 gives the lowest latency (a job
    /// never waits behind another in a worker); more keeps a worker busy
    /// between replies (throughput), and with async workers runs jobs
    /// concurrently. The default is 2.
    pub load: usize,
    /// How long jobs wait in the queue before another worker is started,
    /// and the least time between two starts while they keep waiting. Zero
    /// starts as many workers as the backlog needs at once. Longer absorbs
    /// short bursts without forking. The default is 100 ms.
    pub start: Duration,
    /// How long a worker stays idle before it is stopped (down to `idle`).
    /// Shorter frees memory sooner; longer avoids re-forking for the next
    /// burst. The default is 10 s.
    pub stop: Duration,
    /// Most jobs waiting in the pool's queue; `None` is unbounded. At least
    /// 1 (0 is taken as 1): the pool grows for jobs that wait, so with no
    /// room at all a pool with no free worker would never start one. The
    /// default is `None`.
    pub queue_limit: Option<usize>,
    /// What a call does when the queue is full. The default is
    /// [`Overflow::Wait`].
    pub overflow: Overflow,
    /// Recycle a worker (finish its jobs, then replace it when needed) after
    /// this many jobs, plus a random `0..=max_requests_jitter`, so workers
    /// do not all restart at once. Bounds leaks in worker code. The default
    /// is `None` (never).
    pub max_requests: Option<usize>,
    /// The random extra jobs before recycling (see `max_requests`); 0
    /// recycles after exactly `max_requests`. The default is 10% of
    /// `max_requests`, at least 1.
    pub max_requests_jitter: Option<usize>,
    /// Recycle a worker whose resident memory exceeds this many bytes,
    /// checked between jobs: whenever the worker turns idle, and at most
    /// every 100 ms while it stays busy (each check reads
    /// `VmRSS` in `/proc/<pid>/status`). A worker over
    /// the limit right after it started is not recycled again and again:
    /// the pool backs off and says so in the log. The default is `None`.
    pub max_rss: Option<u64>,
    /// A job's time limit: past it the call fails with
    /// [`Error::Timeout`](crate::Error::Timeout) and the worker, stuck or not,
    /// gets `SIGTERM`, then `SIGKILL` after `kill_grace`, and is replaced.
    /// The default is `None` (only the tarpc deadline of each call applies,
    /// which does not stop a busy worker).
    pub job_timeout: Option<Duration>,
    /// Time between the catchable `SIGTERM` and `SIGKILL` for a timed-out
    /// worker, and at shutdown. The default is 1 s.
    pub kill_grace: Duration,
    /// How long [`Pool::shutdown`](crate::Pool::shutdown) waits for queued
    /// and running jobs before it kills the workers, and for workers still
    /// starting (an init hook that hangs) before it gives up on them and
    /// kills them. The default is 30 s.
    pub shutdown_timeout: Duration,
    /// The RPC configuration of every worker (mode, format, frame limit,
    /// deadlines). The default is `fork_rpc::Config::default()`.
    pub rpc: fork_rpc::Config,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max: std::thread::available_parallelism().map_or(1, |n| n.get()),
            idle: 0,
            load: 2,
            start: Duration::from_millis(100),
            stop: Duration::from_secs(10),
            queue_limit: None,
            overflow: Overflow::Wait,
            max_requests: None,
            max_requests_jitter: None,
            max_rss: None,
            job_timeout: None,
            kill_grace: Duration::from_secs(1),
            shutdown_timeout: Duration::from_secs(30),
            rpc: fork_rpc::Config::default(),
        }
    }
}

impl Config {
    pub(crate) fn knobs(&self) -> crate::scale::Knobs {
        crate::scale::Knobs {
            max: self.max.max(1),
            idle: self.idle.min(self.max.max(1)),
            load: self.load.max(1),
            start: self.start,
            stop: self.stop,
        }
    }

    pub(crate) fn jitter(&self) -> u64 {
        let jitter = match (self.max_requests, self.max_requests_jitter) {
            (_, Some(j)) => j,
            (Some(n), None) => (n / 10).max(1),
            (None, None) => 0,
        };
        jitter as u64
    }
}
