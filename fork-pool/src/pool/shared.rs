//! The state every part of a pool shares: the knobs, the seam that starts
//! workers, dispatch (workers and queue) and the lifecycle's bookkeeping,
//! behind one mutex, and the notifications between the parts. The parts
//! themselves live in their own modules (`lease`, `job`, `supervisor`,
//! `shutdown`, `retry`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;

use super::PoolEvents;
use super::dispatch::{Dispatch, Room, Seat};
use super::host::{HostEvent, HostEvents, Link, Slot};
use super::life::Life;
use super::metrics::{Locked, Metrics};
use super::retry::Retry;
use super::spawn::{Kind, Spawn};
use super::stats::Stats;
use crate::config::Config;
use crate::hosts::{self, Place};
use crate::scale::{Knobs, Snapshot};

/// Events of all workers, each with its worker's pid.
type EventsTx<Ev> = mpsc::UnboundedSender<(u32, fork_rpc::Result<Ev>)>;

pub(crate) struct Shared<K: Kind> {
    pub(crate) config: Config,
    pub(crate) knobs: Knobs,
    pub(crate) spawner: K,
    pub(crate) retry: Option<Retry<K::Req>>,
    pub(crate) state: Mutex<State<K>>,
    /// Wakes the supervisor.
    pub(crate) wake: Notify,
    /// Signals progress to `shutdown` and `wait_until` (a job finished, a
    /// worker came or left).
    pub(crate) changed: Notify,
    /// Set by `shutdown` past its deadline: workers still starting (an init
    /// hook that hangs) are given up on, and killed. Cleared when the pool
    /// opens again.
    pub(crate) abandon: watch::Sender<bool>,
    /// The count of shutdowns completed, each once every worker the pool
    /// started was reaped (see [`Pool::finished`](super::Pool::finished)).
    /// Set with [`State::life`], under the lock.
    pub(crate) done: watch::Sender<u64>,
    /// Room in a bounded queue.
    pub(crate) room: Room,
    pub(crate) metrics: Metrics,
    events_tx: EventsTx<K::Ev>,
    events_rx: Mutex<Option<PoolEvents<K::Ev>>>,
    /// Events are kept only once somebody took the stream.
    events_taken: AtomicBool,
    host_events_tx: mpsc::UnboundedSender<HostEvent>,
    host_events_rx: Mutex<Option<HostEvents>>,
    host_events_taken: AtomicBool,
    /// Set when the pool is shut down for good (its last handle dropped):
    /// the tasks watching its hosts end.
    pub(crate) for_good: watch::Sender<bool>,
}

/// A worker placed on a host, on its way.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Placed {
    pub(crate) host: usize,
    /// The host is to be connected first.
    pub(crate) connect: bool,
}

pub(crate) struct State<K: Kind> {
    pub(crate) dispatch: Dispatch<K>,
    pub(crate) next_id: u64,
    /// Every worker process the pool started that has not been reaped yet:
    /// members, and those that left (recycled, stopped, killed, lost) and
    /// are still exiting. Each leaves when its monitor sees it reaped.
    pub(crate) alive: HashMap<u64, K::Process>,
    pub(crate) starting: usize,
    /// Open, shutting down or shut down.
    pub(crate) life: Life,
    /// The supervisor's task is running: a shutdown waits until it has
    /// stopped, so that a pool opened again has one supervisor.
    pub(crate) supervising: bool,
    pub(crate) last_spawn: Option<Instant>,
    /// The hosts, as the builder listed them.
    pub(crate) hosts: Vec<Slot>,
    pub(crate) stats: Stats,
    /// When the supervisor will look again on its own.
    pub(crate) next_wake: Option<Instant>,
    /// The counters of `stats` as the metrics last showed them.
    #[cfg(feature = "metrics")]
    pub(crate) published: Stats,
}

// ===== impl State =====

impl<K: Kind> State<K> {
    /// A worker placed on `host` is no longer starting (it joined, failed,
    /// or was given up on).
    pub(crate) fn started(&mut self, host: usize) {
        self.starting -= 1;
        self.hosts[host].starting -= 1;
    }

    /// A worker of `host` died, or left the pool with its host.
    pub(crate) fn crashed_on(&mut self, host: usize) {
        self.stats.crashed += 1;
        self.hosts[host].stats.lost += 1;
    }
}

// ===== impl Shared =====

impl<S: Spawn> Shared<S> {
    /// A pool's shared state, with its supervisor started and the `idle`
    /// workers on their way.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub(crate) fn start(
        config: Config,
        hosts: Vec<Slot>,
        spawner: S,
        retry: Option<Retry<S::Req>>,
        metrics: Metrics,
    ) -> Arc<Self> {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (host_events_tx, host_events_rx) = mpsc::unbounded_channel();
        let mut knobs = config.knobs();
        // Hosts that all have a limit of their own cap the pool too.
        if let Some(sum) = hosts
            .iter()
            .map(Slot::max)
            .try_fold(0usize, |sum, max| Some(sum.saturating_add(max?)))
        {
            knobs.max = knobs.max.min(sum);
        }
        let shared = Arc::new(Shared {
            knobs,
            room: Room::new(config.queue_limit, config.overflow),
            config: Config {
                queue_limit: config.queue_limit.map(|n| n.max(1)),
                ..config
            },
            spawner,
            retry,
            state: Mutex::new(State {
                dispatch: Dispatch::new(knobs.load),
                next_id: 0,
                alive: HashMap::new(),
                starting: 0,
                life: Life::new(),
                supervising: false,
                last_spawn: None,
                hosts,
                stats: Stats::default(),
                next_wake: None,
                #[cfg(feature = "metrics")]
                published: Stats::default(),
            }),
            wake: Notify::new(),
            changed: Notify::new(),
            abandon: watch::Sender::new(false),
            done: watch::Sender::new(0),
            metrics,
            events_tx,
            events_rx: Mutex::new(Some(events_rx)),
            events_taken: AtomicBool::new(false),
            host_events_tx,
            host_events_rx: Mutex::new(Some(host_events_rx)),
            host_events_taken: AtomicBool::new(false),
            for_good: watch::Sender::new(false),
        });
        let spares = shared.count_launch(&mut shared.lock());
        let hosts = shared.lock().hosts.len();
        for host in 0..hosts {
            shared.watch_host(host);
        }
        shared.launch(spares);
        shared
    }

    /// Counts, under the lock, what an open pool starts with: the `idle`
    /// workers (up front, before any job can queue) and the supervisor.
    /// Their number, for [`launch`](Self::launch).
    pub(crate) fn count_launch(&self, st: &mut State<S>) -> Vec<Placed> {
        let now = Instant::now();
        let spares: Vec<Placed> = (0..self.knobs.idle)
            .map_while(|_| self.place(st, now))
            .collect();
        if !spares.is_empty() {
            st.last_spawn = Some(now);
        }
        st.supervising = true;
        spares
    }

    /// Starts the supervisor and the `spares` placed by
    /// [`count_launch`](Self::count_launch).
    pub(crate) fn launch(self: &Arc<Self>, spares: Vec<Placed>) {
        for placed in spares {
            tokio::spawn(self.clone().spawn_worker(placed));
        }
        tokio::spawn(self.clone().supervise());
    }

    /// Places one new worker on a host ([`hosts::place`]) and counts it as
    /// starting there; `None` if no host can take one now.
    pub(crate) fn place(&self, st: &mut State<S>, now: Instant) -> Option<Placed> {
        let Place::On(host) = hosts::place(&self.host_views(st), now) else {
            return None;
        };
        st.starting += 1;
        let slot = &mut st.hosts[host];
        slot.starting += 1;
        let connect = slot.link() == Link::Down;
        if connect {
            slot.set_link(Link::Connecting);
        }
        Some(Placed { host, connect })
    }

    /// The hosts as placement sees them.
    fn host_views(&self, st: &State<S>) -> Vec<hosts::HostView> {
        let mut ready = vec![0; st.hosts.len()];
        for m in st.dispatch.members.iter().filter(|m| m.leaving.is_none()) {
            ready[m.host] += 1;
        }
        st.hosts
            .iter()
            .zip(ready)
            .map(|(slot, ready)| slot.view(ready))
            .collect()
    }

    /// When a host may take a worker, if none can now: the scaling
    /// policy's back-off.
    pub(crate) fn hosts_backoff(&self, st: &State<S>, now: Instant) -> Option<Instant> {
        match hosts::place(&self.host_views(st), now) {
            Place::On(_) => None,
            Place::Wait(at) => at,
        }
    }

    /// Takes the stream of host events (once).
    pub(crate) fn take_host_events(&self) -> Option<HostEvents> {
        let rx = self.host_events_rx.lock().ok().and_then(|mut rx| rx.take());
        self.host_events_taken.store(true, Ordering::Release);
        rx
    }

    /// Passes on a host event, if somebody took the stream.
    pub(crate) fn host_event(&self, event: HostEvent) {
        if self.host_events_taken.load(Ordering::Acquire) {
            let _ = self.host_events_tx.send(event);
        }
    }

    /// The state, locked (changes show in the metrics once it is let go).
    pub(crate) fn lock(&self) -> Locked<'_, S> {
        let guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.metrics.locked(guard)
    }

    pub(crate) fn stats(&self) -> Stats {
        let st = self.lock();
        let mut stats = st.stats.clone();
        stats.starting = st.starting;
        stats.idle = st.dispatch.idle();
        stats.busy = st.dispatch.members.len() - stats.idle;
        stats.queued = st.dispatch.queued();
        stats.hosts = st
            .hosts
            .iter()
            .map(|slot| {
                let mut host = slot.stats.clone();
                host.up = slot.link() == Link::Up;
                host.starting = slot.starting;
                host
            })
            .collect();
        for m in &st.dispatch.members {
            let host = &mut stats.hosts[m.host];
            if m.load == 0 {
                host.idle += 1;
            } else {
                host.busy += 1;
            }
        }
        stats
    }

    /// Waits until the stats satisfy `condition`, and returns them.
    pub(crate) async fn wait_until(&self, condition: impl Fn(&Stats) -> bool) -> Stats {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let stats = self.stats();
            if condition(&stats) {
                return stats;
            }
            changed.await;
        }
    }

    /// Takes the stream of events (once).
    pub(crate) fn take_events(&self) -> Option<PoolEvents<S::Ev>> {
        let rx = self.events_rx.lock().ok().and_then(|mut rx| rx.take());
        self.events_taken.store(true, Ordering::Release);
        rx
    }

    /// Passes on an event of worker `pid`, if somebody took the stream.
    pub(crate) fn event(&self, pid: u32, event: fork_rpc::Result<S::Ev>) {
        if self.events_taken.load(Ordering::Acquire) {
            let _ = self.events_tx.send((pid, event));
        }
    }

    /// What the scaling policy sees.
    pub(crate) fn snapshot(&self, st: &State<S>, now: Instant) -> Snapshot {
        // Workers waiting for a host to connect do not count as coming:
        // the connection may fail, or take its whole timeout.
        let connecting: usize = st
            .hosts
            .iter()
            .filter(|slot| slot.link() == Link::Connecting)
            .map(|slot| slot.starting)
            .sum();
        let mut s = Snapshot {
            starting: st.starting - connecting,
            connecting,
            queued: st.dispatch.queued(),
            oldest_queued: st.dispatch.oldest_queued(),
            last_spawn: st.last_spawn,
            backoff_until: self.hosts_backoff(st, now),
            ..Snapshot::default()
        };
        for m in st.dispatch.members.iter().filter(|m| m.leaving.is_none()) {
            if m.reading_rss {
                // Back in a moment (or leaving): like a worker on its way, it
                // covers the queue and is not stopped.
                s.starting += 1;
            } else if m.load == 0 {
                s.idle.push((m.id, m.idle_since));
            } else {
                s.busy += 1;
            }
        }
        s
    }

    /// Whether the pool has fewer spare workers (idle or starting) than
    /// `idle` and room for another: what the scaling policy would start one
    /// for.
    pub(crate) fn spares_short(&self, st: &State<S>) -> bool {
        if self.knobs.idle == 0 {
            return false;
        }
        let (mut spares, mut total) = (st.starting, st.starting);
        for m in st.dispatch.members.iter().filter(|m| m.leaving.is_none()) {
            total += 1;
            spares += usize::from(m.load == 0);
        }
        spares < self.knobs.idle && total < self.knobs.max
    }

    /// A spare went to work: the supervisor starts another if `idle` asks,
    /// and [`wait_until`](Self::wait_until) looks again.
    pub(crate) fn went_to_work(&self, st: &State<S>) {
        if self.spares_short(st) {
            self.wake.notify_one();
        }
        self.changed.notify_waiters();
    }

    /// A place for a new job if one is free and no job queues before it.
    /// A pool shut down opens again: the job waits for its new workers.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`](crate::Error::Closed) while shutting down.
    pub(crate) fn try_take(self: &Arc<Self>) -> Result<Option<Seat<S>>, crate::Error> {
        let mut st = self.lock();
        let taken = match st.dispatch.try_take() {
            Ok(taken) => taken,
            Err(closed) => {
                let Some(spares) = self.reopen(&mut st) else {
                    return Err(closed);
                };
                drop(st);
                self.launch(spares);
                return Ok(None);
            }
        };
        let Some((seat, went_to_work)) = taken else {
            return Ok(None);
        };
        if went_to_work {
            self.went_to_work(&st);
        }
        Ok(Some(seat))
    }

    /// Hands free places to queued jobs.
    pub(crate) fn hand_out(&self, st: &mut State<S>) {
        if st.dispatch.hand_out() {
            self.went_to_work(st);
        }
    }
}
