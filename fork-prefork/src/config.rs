//! A prefork server's knobs.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How many workers a server keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Sizing {
    /// Always this many workers, replaced when they exit
    /// (Parallel::Prefork's `max_workers`; at least 1).
    Fixed(usize),
    /// As many as the load needs, regulated by the number of idle workers
    /// (Parallel::MPM::Prefork, Apache's prefork MPM, php-fpm's `dynamic`).
    Spare(Spare),
}

impl Default for Sizing {
    /// `Fixed(10)`, Parallel::Prefork's default.
    fn default() -> Self {
        Sizing::Fixed(10)
    }
}

/// The knobs of self-regulating sizing ([`Sizing::Spare`]). The names,
/// meanings and defaults are Parallel::MPM::Prefork's; the growth is
/// Apache's.
///
/// Once per [`Config::maintenance_interval`] the manager counts the idle
/// workers of the current generation (a worker still starting counts as
/// idle). Below `min_spare_servers` it starts `min(rate, deficit, room)` and
/// doubles `rate` (1, 2, 4, ... up to `max_spawn_rate`); above
/// `max_spare_servers` it retires the worker idle the longest, gracefully
/// (never a busy one); otherwise `rate` goes back to 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Spare {
    /// Workers started at once when the server starts (and the least a
    /// reload starts). The default is 5.
    pub start_servers: usize,
    /// Fewest idle workers: below it, more are started. More spares absorb
    /// bursts without waiting for a fork, at the cost of idle processes.
    /// The default is 5.
    pub min_spare_servers: usize,
    /// Most idle workers: above it, one is retired per maintenance tick.
    /// Taken as at least `min_spare_servers + 1`, as Apache does, so the
    /// pool does not start and retire workers in turn. The default is 10.
    pub max_spare_servers: usize,
    /// Most workers at once (a reload may exceed it while the old
    /// generation drains). The default is 73, Parallel::MPM::Prefork's
    /// (sized for blocking workers that serve one connection at a time;
    /// tokio workers need far fewer).
    pub max_servers: usize,
    /// Most workers started in one maintenance tick while the growth
    /// doubles. Higher reaches the needed size sooner after a burst; lower
    /// forks less at once. The default is 32 (Apache's and php-fpm's).
    pub max_spawn_rate: usize,
}

impl Default for Spare {
    fn default() -> Self {
        Spare {
            start_servers: 5,
            min_spare_servers: 5,
            max_spare_servers: 10,
            max_servers: 73,
            max_spawn_rate: 32,
        }
    }
}

/// A prefork server's configuration. Every field says its default, unit
/// and trade-off. A duration of `Duration::MAX` means "never".
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// How many workers: [`Sizing::Fixed`] or [`Sizing::Spare`]. The
    /// default is `Fixed(10)`.
    pub sizing: Sizing,
    /// How often spare regulation looks at the idle workers (with
    /// [`Sizing::Spare`]). Shorter reacts sooner to load; longer forks and
    /// retires less eagerly. The default is 1 s (Apache's and php-fpm's).
    pub maintenance_interval: Duration,
    /// Least time between two worker starts. Zero starts as many as needed
    /// at once; more spreads the forks (and their CPU) over time. The
    /// default is 0 (Parallel::Prefork's).
    pub spawn_interval: Duration,
    /// Delay before the next start after a worker exited abnormally (a
    /// non-zero code or a signal, not asked for), doubled for each further
    /// abnormal exit before a new worker reports ready, up to
    /// `err_respawn_max`: a crashing worker is not restarted in a tight
    /// loop. The default is 1 s (Parallel::Prefork's).
    pub err_respawn_interval: Duration,
    /// Ceiling of the doubled `err_respawn_interval`. The default is 30 s.
    pub err_respawn_max: Duration,
    /// Workers that fail before they are ready, in a row, that stop the
    /// server with [`Error::Boot`](crate::Error::Boot) (gunicorn halts on
    /// boot errors instead of forking for ever). During a reload, they fail
    /// the reload and the old generation keeps serving. At least 1. The
    /// default is 5.
    pub max_boot_failures: u32,
    /// How long a worker told to stop (at [`stop`](crate::Prefork::stop),
    /// a reload, or as a surplus spare) may take to finish its open
    /// connections before it is killed (`SIGKILL`). Longer lets slow
    /// requests finish; shorter bounds a stop or reload. The default is
    /// 30 s (gunicorn's).
    pub graceful_timeout: Duration,
    /// How long a worker may take from its fork until it is ready (its
    /// function called [`Context::serve`](crate::Context::serve) or
    /// [`Link::ready`](crate::Link::ready)); past it, the worker is killed
    /// (`SIGKILL`) and counts as a boot failure
    /// ([`BootFailure::StartTimeout`](crate::BootFailure::StartTimeout)).
    /// Longer lets a slow start finish; shorter notices a hung one. The
    /// default is 60 s.
    pub start_timeout: Duration,
    /// How often a ready worker reports its state when nothing changed.
    /// The default is 1 s.
    pub heartbeat: Duration,
    /// A ready worker not heard from for this long (its runtime is stuck:
    /// a `loop {}`, a blocking call) gets `SIGABRT` (catchable; by default
    /// it ends the worker), then `SIGKILL` one heartbeat later, and is
    /// replaced; it counts as a crash. Longer than `heartbeat`, or every
    /// worker times out. gunicorn's `timeout`. The default is `None` (off).
    pub timeout: Option<Duration>,
    /// Recycle a worker after this many requests (busy marks: with
    /// [`Context::serve`](crate::Context::serve), connections), plus a
    /// random `0..=max_requests_jitter` picked per worker so that workers
    /// do not all restart together: it stops accepting, finishes its open
    /// connections, exits 0 and is replaced; its reap says
    /// [`Recycled`](crate::ExitReason::Recycled). Bounds leaks in worker
    /// code.
    /// The default is `None` (never).
    pub max_requests: Option<u64>,
    /// The random extra requests before recycling (see `max_requests`).
    /// The default is 0.
    pub max_requests_jitter: u64,
    /// How many [`Event::Data`](crate::Event::Data) values may wait unread
    /// in the [event stream](crate::Prefork::events): past it, new data is
    /// dropped and counted in [`Stats::data_dropped`](crate::Stats::data_dropped),
    /// so that a reader slow to read never blocks the manager nor fills
    /// the parent's memory. Reap events are never dropped (there is one per
    /// worker). Larger absorbs longer bursts; each waiting value holds up to
    /// [`MAX_DATA`](crate::MAX_DATA) bytes. The default is 1024.
    pub data_backlog: usize,
    /// Which waiting worker [`Context::serve`](crate::Context::serve)'s next
    /// connection goes to (see [`AcceptOrder`]). The default is
    /// [`AcceptOrder::RoundRobin`].
    pub accept_order: AcceptOrder,
}

/// Which of the workers waiting for a connection gets the next one (in
/// [`Context::serve`](crate::Context::serve) and
/// [`Listener::accept_blocking`](crate::Listener::accept_blocking)). Either
/// way the kernel wakes one worker per connection, and a worker whose
/// runtime has not taken its last connection yet is not waiting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum AcceptOrder {
    /// In turn: a worker that accepted waits behind the others for its
    /// next one, so idle workers share connections evenly (8 workers, 64
    /// keep-alive connections: 8 each). Right when workers are about as
    /// many as CPUs, and for handlers that use CPU: no worker holds more
    /// connections than its share.
    #[default]
    RoundRobin,
    /// The first worker in a fixed order that is waiting (Cloudflare's
    /// "LIFO" for nginx's `EPOLLEXCLUSIVE`): a worker that keeps up takes
    /// connection after connection, and the others only what it cannot
    /// take. With more workers than CPUs and light handlers, fewer workers
    /// are active, with fewer context switches (the prefork benchmark: 8
    /// workers on 2 CPUs, 1.1–1.2× round robin's requests per second); but
    /// keep-alive connections made while the server is idle may all go to
    /// one worker, which later serves all their requests on one CPU.
    FirstIdle,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            sizing: Sizing::default(),
            maintenance_interval: Duration::from_secs(1),
            spawn_interval: Duration::ZERO,
            err_respawn_interval: Duration::from_secs(1),
            err_respawn_max: Duration::from_secs(30),
            max_boot_failures: 5,
            graceful_timeout: Duration::from_secs(30),
            start_timeout: Duration::from_secs(60),
            heartbeat: Duration::from_secs(1),
            timeout: None,
            max_requests: None,
            max_requests_jitter: 0,
            data_backlog: 1024,
            accept_order: AcceptOrder::RoundRobin,
        }
    }
}

impl Config {
    /// The knobs the policy reads, with the values that make no sense
    /// brought into range.
    pub(crate) fn knobs(&self) -> crate::policy::Knobs {
        use crate::policy::{Knobs, Mode};
        let mode = match self.sizing {
            Sizing::Fixed(n) => Mode::Fixed(n.max(1)),
            Sizing::Spare(s) => {
                let max = s.max_servers.max(1);
                let min_spare = s.min_spare_servers.min(max);
                Mode::Spare {
                    min_spare,
                    max_spare: s.max_spare_servers.max(min_spare + 1),
                    max,
                    max_rate: s.max_spawn_rate.max(1),
                }
            }
        };
        Knobs {
            mode,
            spawn_interval: self.spawn_interval,
        }
    }

    /// Workers to start when the server starts.
    pub(crate) fn start_servers(&self) -> usize {
        match self.sizing {
            Sizing::Fixed(n) => n.max(1),
            Sizing::Spare(s) => s.start_servers.min(s.max_servers.max(1)),
        }
    }
}
