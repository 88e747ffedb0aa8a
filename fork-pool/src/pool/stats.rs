//! The pool's counters, as [`Pool::stats`](super::Pool::stats) shows them.

use super::host::HostStats;

/// A snapshot of a pool's state and counters.
///
/// The state (`starting` to `queued`) is the pool's now; the counters
/// (`spawned` and after) count over the pool's whole life: a pool used again
/// after [`shutdown`](super::Pool::shutdown) keeps counting from where it
/// was.
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
    /// Workers started since the pool was built (across shutdowns).
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
    /// Failed attempts to start a worker (or to connect its host).
    pub spawn_failures: u64,
    /// Each host's part, in the order the builder listed them (one, named
    /// after its template, unless [`Builder::host`](super::Builder::host)
    /// added more).
    pub hosts: Vec<HostStats>,
}
