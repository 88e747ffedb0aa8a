//! Hosts: the templates a pool forks its workers from, local or remote,
//! each with its own limits ([`Host`]); what the pool knows of each
//! (`Slot`); and what it shows of them ([`HostStats`], [`HostEvent`]).

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use rand::RngExt;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::hosts::{self, HostView};

/// Makes a host's template anew (a remote one: connects).
pub(crate) type Connect =
    Arc<dyn Fn() -> BoxFuture<'static, fork_core::Result<fork_core::Template>> + Send + Sync>;

/// A template a pool forks workers from, with its own limits: the pool's
/// own machine, or another one through a remote template
/// ([`fork_core::remote`]).
///
/// A pool over several hosts ([`Builder::host`](crate::Builder::host))
/// places each new worker on the host with the fewest workers per unit of
/// [weight](Host::weight), below the host's own [`max`](Host::max) and the
/// pool's [`Config::max`](crate::Config::max), and dispatches each call to
/// the least-loaded worker, whatever its host. A host whose connection is
/// lost (EOF, a keepalive unanswered) is **down**: its workers leave the
/// pool at once (calls running there fail with fork-rpc's
/// [`WorkerLost`](fork_rpc::WorkerLost), or run again elsewhere when
/// [idempotent](crate::Builder::idempotent)), calls waiting go to the other
/// hosts, and a host made with [`Host::connect`] is connected again with
/// back-off (1 s doubling to 60 s) when the pool next wants a worker there.
/// [`Pool::host_events`](crate::Pool::host_events) tells when hosts go down
/// and come up; [`Stats::hosts`](crate::Stats::hosts) counts per host.
///
/// ```no_run
/// use fork_core::Template;
/// use fork_core::remote::CommandConnector;
/// use fork_pool::{Host, JobPool, Pool};
///
/// # async fn demo() -> fork_core::Result<()> {
/// let pool: JobPool = Pool::jobs(Template::shared()?)
///     .max(12)
///     .host(
///         Host::connect("build-1", || {
///             Template::remote(CommandConnector::new("ssh").arg("build-1").shell_line(true))
///                 .start()
///         })
///         .max(8)
///         .weight(2),
///     )
///     .build();
/// # Ok(())
/// # }
/// ```
pub struct Host {
    pub(crate) name: String,
    pub(crate) source: Source,
    pub(crate) max: Option<usize>,
    pub(crate) weight: u32,
}

/// Where a host's template comes from.
pub(crate) enum Source {
    /// Given once: a remote one lost is down for good.
    Template(fork_core::Template),
    /// Made (connected) when needed, and again after a loss.
    Connect(Connect),
}

/// A change of a host of the pool, from
/// [`Pool::host_events`](crate::Pool::host_events).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum HostEvent {
    /// The host was connected (the first time, or again after it was
    /// down): the pool starts workers there again.
    Up {
        /// The host's name.
        host: String,
    },
    /// The host is down: its connection was lost, or connecting failed.
    /// Its workers left the pool; it is tried again after a back-off.
    Down {
        /// The host's name.
        host: String,
        /// What happened.
        error: Arc<fork_rpc::Error>,
    },
}

/// The stream of [`HostEvent`]s of a pool.
pub type HostEvents = mpsc::UnboundedReceiver<HostEvent>;

/// One host's part of [`Stats`](crate::Stats).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HostStats {
    /// Its name.
    pub name: String,
    /// Connected (a local template always is; a host made with
    /// [`Host::connect`] once it connected, and until it is lost).
    pub up: bool,
    /// Its workers being started.
    pub starting: usize,
    /// Its workers ready with no job.
    pub idle: usize,
    /// Its workers with at least one job.
    pub busy: usize,
    /// Workers started there.
    pub spawned: u64,
    /// Its workers that died unexpectedly, or left the pool when the host
    /// was lost.
    pub lost: u64,
    /// The times it went down.
    pub downs: u64,
    /// The times it was connected by [`Host::connect`]'s function.
    pub connects: u64,
}

// ===== impl Host =====

impl Host {
    /// A host forking from `template` (local, or remote as
    /// [`Template::remote`](fork_core::Template::remote) starts one). A
    /// remote template given this way cannot be connected again: once
    /// lost, the host stays down. Use [`Host::connect`] for hosts that
    /// should come back.
    pub fn new(name: impl Into<String>, template: fork_core::Template) -> Self {
        Host {
            name: name.into(),
            source: Source::Template(template),
            max: None,
            weight: 1,
        }
    }

    /// A host whose template `connect` makes: called when the pool first
    /// wants a worker there, and again after the host was lost (with
    /// back-off, while it fails).
    ///
    /// `name` names the host in [`Stats::hosts`](crate::Stats::hosts) and
    /// [`HostEvent`]s; the errors of its workers' calls name it as the
    /// template does ([`Template::host`](fork_core::Template::host)). Give
    /// the template the same name
    /// ([`RemoteBuilder::name`](fork_core::remote::RemoteBuilder::name), or
    /// an `SshConnector` to that destination, whose name it is) so that
    /// both agree:
    ///
    /// ```no_run
    /// use fork_core::Template;
    /// use fork_core::remote::CommandConnector;
    /// use fork_pool::Host;
    ///
    /// let ssh = CommandConnector::new("ssh").args(["-T", "build-1"]).shell_line(true);
    /// let host = Host::connect("build-1", move || {
    ///     Template::remote(ssh.clone()).name("build-1").start()
    /// });
    /// ```
    pub fn connect<F, Fut>(name: impl Into<String>, connect: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = fork_core::Result<fork_core::Template>> + Send + 'static,
    {
        Host {
            name: name.into(),
            source: Source::Connect(Arc::new(move || connect().boxed())),
            max: None,
            weight: 1,
        }
    }

    /// At most `max` workers on this host (besides the pool's
    /// [`Config::max`](crate::Config::max), which caps them all). No limit
    /// of its own by default.
    pub fn max(mut self, max: usize) -> Self {
        self.max = Some(max);
        self
    }

    /// Its share of new workers: a host of weight 2 gets twice as many as
    /// one of weight 1 (the default; 0 counts as 1).
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the pool's state starts with for it.
    pub(crate) fn slot(&self) -> Slot {
        Slot::new(
            self.name.clone(),
            self.max,
            self.weight,
            matches!(self.source, Source::Template(_)),
        )
    }
}

impl fmt::Debug for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Host")
            .field("name", &self.name)
            .field("max", &self.max)
            .field("weight", &self.weight)
            .finish_non_exhaustive()
    }
}

// ===== Slot =====

/// Whether a host is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Link {
    /// Connected: its template forks.
    Up,
    /// Not connected (not yet, or lost): the next worker placed there
    /// connects first.
    Down,
    /// Being connected (by the first worker placed there; the others
    /// placed there meanwhile, on a first connection only, wait for the
    /// outcome).
    Connecting,
    /// Lost, and it cannot be connected again.
    Gone,
}

/// A host as the pool's state knows it.
#[derive(Debug)]
pub(crate) struct Slot {
    /// Whether it is connected; workers placed on it while it is being
    /// connected wait here for the outcome.
    link: watch::Sender<Link>,
    /// Counted up at each connection: a loss reported for an older one is
    /// old news.
    pub(crate) generation: u64,
    /// Its workers being started.
    pub(crate) starting: usize,
    /// Failed spawns in a row, and the back-off they set.
    pub(crate) spawn_failures: u32,
    /// Losses and failed connections in a row.
    pub(crate) down_failures: u32,
    /// No worker goes there before this.
    pub(crate) not_before: Option<Instant>,
    /// It can be connected again after a loss ([`Host::connect`]).
    reconnects: bool,
    /// Why it is down, once it was.
    pub(crate) last_error: Option<Arc<fork_rpc::Error>>,
    max: Option<usize>,
    weight: u32,
    /// Counters (`starting`, `idle`, `busy` and `up` are filled in when the
    /// stats are read).
    pub(crate) stats: HostStats,
}

impl Slot {
    /// A host given as a template (`connected`), or to be connected.
    pub(crate) fn new(name: String, max: Option<usize>, weight: u32, connected: bool) -> Self {
        Slot {
            link: watch::Sender::new(if connected { Link::Up } else { Link::Down }),
            reconnects: !connected,
            last_error: None,
            generation: 0,
            starting: 0,
            spawn_failures: 0,
            down_failures: 0,
            not_before: None,
            max,
            weight,
            stats: HostStats {
                name,
                ..HostStats::default()
            },
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.stats.name
    }

    pub(crate) fn link(&self) -> Link {
        *self.link.borrow()
    }

    pub(crate) fn set_link(&mut self, link: Link) {
        self.link.send_replace(link);
    }

    /// Tells when it is no longer being connected.
    pub(crate) fn watch_link(&self) -> watch::Receiver<Link> {
        self.link.subscribe()
    }

    pub(crate) fn max(&self) -> Option<usize> {
        self.max
    }

    /// It was lost, or connecting failed: it is down (for good if it
    /// cannot be connected again), and tried again after the back-off
    /// this returns.
    pub(crate) fn down(&mut self, rng: &mut impl rand::Rng) -> Duration {
        self.set_link(if self.reconnects {
            Link::Down
        } else {
            Link::Gone
        });
        self.down_failures += 1;
        let backoff = hosts::down_backoff(self.down_failures, rng.random());
        self.not_before = Some(Instant::now() + backoff);
        backoff
    }

    /// What placement sees, with `workers` ready on it.
    pub(crate) fn view(&self, workers: usize) -> HostView {
        HostView {
            workers: workers + self.starting,
            max: self.max,
            weight: self.weight,
            not_before: self.not_before,
            // A host being connected takes workers (they wait for the
            // connection) the first time; coming back from a loss, only
            // the worker that connects it waits there.
            unavailable: match self.link() {
                Link::Gone => true,
                Link::Connecting => self.down_failures > 0,
                Link::Up | Link::Down => false,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::*;
    use crate::config::Config;
    use crate::pool::testing::{self, FakeHost, World, ctx, settle, work};

    const SEC: Duration = Duration::from_secs(1);

    fn config(max: usize) -> Config {
        Config {
            max,
            load: 1,
            start: Duration::ZERO,
            ..Config::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn workers_spread_by_weight_within_each_hosts_max() {
        let world = World {
            hosts: vec![
                FakeHost {
                    max: Some(1),
                    ..FakeHost::local("a")
                },
                FakeHost {
                    weight: 2,
                    ..FakeHost::local("b")
                },
                FakeHost::local("c"),
            ],
            ..World::default()
        };
        let (pool, fake) = testing::pool(config(7), world);
        let jobs = futures::future::join_all((0..7).map(|_| pool.call(ctx(), work(SEC))));
        let busy = async {
            let stats = pool.wait_until(|s| s.busy == 7).await;
            stats
                .hosts
                .iter()
                .map(|h| (h.name.clone(), h.busy))
                .collect::<Vec<_>>()
        };
        let (answers, busy) = settle(async { tokio::join!(jobs, busy) }).await;
        assert!(answers.iter().all(Result::is_ok));
        // a stops at its max; b gets twice c's share of the rest.
        assert_eq!(
            busy,
            [
                ("a".to_owned(), 1),
                ("b".to_owned(), 4),
                ("c".to_owned(), 2)
            ]
        );
        let mut hosts = fake.worker_hosts();
        hosts.sort_unstable();
        assert_eq!(hosts, [0, 1, 1, 1, 1, 2, 2]);
        settle(pool.shutdown()).await;
    }

    #[tokio::test(start_paused = true)]
    async fn hosts_with_limits_of_their_own_cap_the_pool() {
        let world = World {
            hosts: vec![
                FakeHost {
                    max: Some(1),
                    ..FakeHost::local("a")
                },
                FakeHost {
                    max: Some(2),
                    ..FakeHost::local("b")
                },
            ],
            ..World::default()
        };
        let (pool, fake) = testing::pool(config(10), world);
        let jobs = futures::future::join_all((0..6).map(|_| pool.call(ctx(), work(SEC))));
        let t0 = Instant::now();
        let answers = settle(jobs).await;
        assert!(answers.iter().all(Result::is_ok));
        assert_eq!(
            fake.world().workers.len(),
            3,
            "more workers than the hosts allow"
        );
        assert_eq!(Instant::now() - t0, 2 * SEC, "six jobs on three workers");
        settle(pool.shutdown()).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_host_fails_its_calls_others_take_the_queue_and_it_comes_back() {
        let world = World {
            hosts: vec![
                FakeHost {
                    max: Some(1),
                    ..FakeHost::local("a")
                },
                FakeHost {
                    max: Some(2),
                    ..FakeHost::remote("b")
                },
            ],
            ..World::default()
        };
        let (pool, fake) = testing::pool(config(3), world);
        let mut events = pool.take_host_events().unwrap();
        // Three running (one on a, two on b, which connects), one queued.
        let running = futures::future::join_all((0..3).map(|_| pool.call(ctx(), work(10 * SEC))));
        let queued = pool.call(ctx(), work(SEC));
        let lose = async {
            let stats = settle(pool.wait_until(|s| s.busy == 3 && s.queued == 1)).await;
            assert!(stats.hosts[1].up);
            assert!(matches!(events.recv().await, Some(HostEvent::Up { host }) if host == "b"));
            fake.lose(1);
            Instant::now()
        };
        let (running, queued, lost_at) =
            settle(async { tokio::join!(running, queued, lose) }).await;
        // The two calls on b failed at once; a's and the queued one ran on a.
        let failed: Vec<bool> = running.iter().map(Result::is_err).collect();
        assert_eq!(failed.iter().filter(|&&f| f).count(), 2, "{running:?}");
        assert_eq!(queued.unwrap(), fake.world().workers[0].pid);
        match events.try_recv() {
            Ok(HostEvent::Down { host, .. }) => assert_eq!(host, "b"),
            other => panic!("no down event: {other:?}"),
        }
        let stats = pool.stats();
        let b = &stats.hosts[1];
        assert_eq!((b.up, b.downs, b.lost, b.idle + b.busy), (false, 1, 2, 0));
        assert_eq!(stats.crashed, 2);

        // While calls waited (11 s), b was tried again after 1 s, then
        // 2 s, then 4 s, each less up to a quarter of jitter.
        let connects = fake.world().hosts[1].connects.clone();
        let gaps: Vec<Duration> = std::iter::once(connects[1] - lost_at)
            .chain(connects.windows(2).skip(1).map(|w| w[1] - w[0]))
            .collect();
        assert_eq!(gaps.len(), 3, "{gaps:?}");
        for (gap, full) in gaps.iter().zip([SEC, 2 * SEC, 4 * SEC]) {
            assert!(
                (full * 3 / 4..=full).contains(gap),
                "retried after {gap:?}, not within a quarter below {full:?}: {gaps:?}"
            );
        }
        assert_eq!(pool.stats().hosts[1].connects, 1);

        // Reachable again: the next retry (within 8 s) brings it back.
        fake.heal(1);
        let t0 = Instant::now();
        let calls = futures::future::join_all((0..3).map(|_| pool.call(ctx(), work(20 * SEC))));
        let up = async {
            let event = events.recv().await;
            assert!(
                matches!(event, Some(HostEvent::Up { ref host }) if host == "b"),
                "{event:?}"
            );
            Instant::now() - t0
        };
        let (calls, up) = settle(async { tokio::join!(calls, up) }).await;
        assert!(calls.iter().all(Result::is_ok));
        assert!(up <= 8 * SEC, "back after {up:?}");
        let b = pool.stats().hosts[1].clone();
        assert_eq!((b.up, b.connects, b.downs, b.spawned), (true, 2, 1, 4));
        settle(pool.shutdown()).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_host_comes_back_without_waiting_for_calls() {
        let world = World {
            hosts: vec![FakeHost::local("a"), FakeHost::remote("b")],
            ..World::default()
        };
        let (pool, fake) = testing::pool(config(4), world);
        let mut events = pool.take_host_events().unwrap();
        // Two calls at once connect b.
        let (x, y) = settle(async {
            tokio::join!(pool.call(ctx(), work(SEC)), pool.call(ctx(), work(SEC)))
        })
        .await;
        assert!(x.is_ok() && y.is_ok());
        assert!(matches!(
            settle(events.recv()).await,
            Some(HostEvent::Up { .. })
        ));
        fake.lose(1);
        assert!(matches!(
            settle(events.recv()).await,
            Some(HostEvent::Down { .. })
        ));
        let lost_at = Instant::now();
        fake.heal(1);
        // No call comes, yet b is connected again after its back-off.
        assert!(matches!(settle(events.recv()).await, Some(HostEvent::Up { host }) if host == "b"));
        let after = Instant::now() - lost_at;
        assert!((SEC * 3 / 4..=SEC).contains(&after), "back after {after:?}");
        assert!(pool.stats().hosts[1].up);
        settle(pool.shutdown()).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_remote_host_given_as_a_template_stays_down_once_lost() {
        let world = World {
            hosts: vec![
                FakeHost::local("a"),
                FakeHost {
                    given: true,
                    ..FakeHost::remote("b")
                },
            ],
            ..World::default()
        };
        let (pool, fake) = testing::pool(config(4), world);
        let mut events = pool.take_host_events().unwrap();
        let calls = futures::future::join_all((0..4).map(|_| pool.call(ctx(), work(SEC))));
        assert!(settle(calls).await.iter().all(Result::is_ok));
        assert_eq!(pool.stats().hosts[1].spawned, 2);
        fake.lose(1);
        fake.heal(1);
        assert!(matches!(
            settle(events.recv()).await,
            Some(HostEvent::Down { .. })
        ));
        // Calls for a minute and more: all on a, and b never tried again.
        for _ in 0..70 {
            let calls = futures::future::join_all((0..4).map(|_| pool.call(ctx(), work(SEC))));
            assert!(settle(calls).await.iter().all(Result::is_ok));
        }
        let b = pool.stats().hosts[1].clone();
        assert_eq!((b.up, b.spawned, b.connects), (false, 2, 0));
        assert!(fake.world().hosts[1].connects.is_empty());
        assert!(events.try_recv().is_err(), "b came back");
        settle(pool.shutdown()).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_shutdown_gives_up_on_a_connection_that_does_not_end() {
        let config = Config {
            idle: 2,
            shutdown_timeout: SEC,
            ..config(2)
        };
        let world = World {
            hosts: vec![FakeHost {
                connect_time: Duration::from_secs(24 * 3600),
                ..FakeHost::remote("b")
            }],
            ..World::default()
        };
        let (pool, fake) = testing::pool(config, world);
        let stats = settle(pool.wait_until(|s| s.starting == 2)).await;
        assert!(!stats.hosts[0].up);
        let t0 = Instant::now();
        settle(pool.shutdown()).await;
        assert_eq!(Instant::now() - t0, SEC, "shutdown waited past its timeout");
        let stats = pool.stats();
        assert_eq!((stats.starting, stats.hosts[0].starting), (0, 0));
        assert!(fake.world().workers.is_empty());
        assert_eq!(
            stats.spawn_failures, 0,
            "giving up is no failure of the host"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_host_never_reached_is_down_and_calls_go_elsewhere_or_fail() {
        let world = World {
            hosts: vec![FakeHost {
                down: true,
                ..FakeHost::remote("b")
            }],
            ..World::default()
        };
        let (pool, fake) = testing::pool(config(2), world);
        let mut events = pool.take_host_events().unwrap();
        // Nothing can serve: the call fails with the connection's error,
        // not hanging.
        let e = settle(pool.call(ctx(), work(SEC))).await.unwrap_err();
        assert!(
            matches!(crate::Error::find(&e), Some(crate::Error::Spawn(_))),
            "{e:?}"
        );
        assert!(matches!(events.recv().await, Some(HostEvent::Down { host, .. }) if host == "b"));
        assert_eq!(fake.world().hosts[0].connects.len(), 1);
        assert!(!pool.stats().hosts[0].up);
        settle(pool.shutdown()).await;

        // Beside a reachable host, the calls go there.
        let world = World {
            hosts: vec![
                FakeHost {
                    down: true,
                    ..FakeHost::remote("b")
                },
                FakeHost::local("a"),
            ],
            ..World::default()
        };
        let (pool, fake) = testing::pool(config(2), world);
        let answers = settle(futures::future::join_all(
            (0..4).map(|_| pool.call(ctx(), work(SEC))),
        ))
        .await;
        assert!(answers.iter().all(Result::is_ok));
        assert!(fake.worker_hosts().iter().all(|&h| h == 1));
        settle(pool.shutdown()).await;
    }
}
