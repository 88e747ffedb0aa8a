//! [`Stats`]: what a server looks like from outside.

/// A snapshot of a prefork server, from [`Prefork::stats`](crate::Prefork::stats).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// The current generation: 1 at start, one more per reload.
    pub generation: u64,
    /// Workers being forked or not ready yet.
    pub starting: usize,
    /// Ready workers with no busy mark.
    pub idle: usize,
    /// Ready workers with at least one busy mark.
    pub busy: usize,
    /// Workers told to stop, finishing their connections.
    pub stopping: usize,
    /// Workers started since the server started.
    pub spawned: u64,
    /// Workers reaped since the server started.
    pub exited: u64,
    /// Of those, the ones that ended abnormally after they were ready:
    /// reaped as [`Crashed`](crate::ExitReason::Crashed) (a non-zero code,
    /// or a signal the server did not send, without being told to stop),
    /// [`TimedOut`](crate::ExitReason::TimedOut) or
    /// [`Broken`](crate::ExitReason::Broken).
    pub crashed: u64,
    /// Workers that failed before they were ready (forks that failed
    /// included).
    pub boot_failures: u64,
    /// Values workers sent ([`Link::yell`](crate::Link::yell)) that were
    /// dropped because [`Config::data_backlog`](crate::Config::data_backlog)
    /// values waited unread in the [event stream](crate::Prefork::events).
    pub data_dropped: u64,
    /// Maintenance ticks done (every
    /// [`Config::maintenance_interval`](crate::Config::maintenance_interval)):
    /// each one applies the sizing policy once. Await it with
    /// [`Prefork::wait_until`](crate::Prefork::wait_until) to let the
    /// policy act (or not) a given number of times.
    pub ticks: u64,
    /// The server stopped (every worker reaped).
    pub stopped: bool,
    /// Every worker, oldest first.
    pub workers: Vec<WorkerInfo>,
}

impl Stats {
    /// Workers in all states.
    pub fn total(&self) -> usize {
        self.starting + self.idle + self.busy + self.stopping
    }

    /// Connections accepted by the workers now running
    /// ([`WorkerInfo::accepted`] summed).
    pub fn accepted(&self) -> u64 {
        self.workers.iter().map(|w| w.accepted).sum()
    }

    /// The pids of the workers of `generation` (forked ones only).
    pub fn pids_of(&self, generation: u64) -> Vec<u32> {
        self.workers
            .iter()
            .filter(|w| w.generation == generation)
            .filter_map(|w| w.pid)
            .collect()
    }
}

/// One worker, in [`Stats::workers`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerInfo {
    /// Its pid; `None` while it is being forked.
    pub pid: Option<u32>,
    /// Its generation.
    pub generation: u64,
    /// Where it is in its life.
    pub state: WorkerState,
    /// Requests it reported having served (busy marks taken).
    pub served: u64,
    /// Connections [`Context::serve`](crate::Context::serve) accepted in
    /// it.
    pub accepted: u64,
}

/// Where a worker is in its life, in [`WorkerInfo`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WorkerState {
    /// Being forked, or not ready yet.
    Starting,
    /// Ready, with no busy mark.
    Idle,
    /// Ready, with at least one busy mark.
    Busy,
    /// Told to stop; finishing its connections.
    Stopping,
}
