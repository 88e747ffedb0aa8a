//! The manager: one tokio task in the parent that keeps the workers. It
//! applies the sizing policy ([`crate::policy`]), forks, retires, replaces
//! and reaps workers, paces restarts after crashes, halts on boot loops,
//! reloads and stops. It is never in the data path: workers accept on
//! their own; the manager only reads their small reports.
//!
//! This file holds its state, its loop and a tick (the policy applied,
//! forks, stats); `commands` what the handles ask, `workers` what happens
//! to workers, `deadlines` the timeouts, `reap` how an exit is classified.

use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use fork_core::{Template, WorkerHandle};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::events::Sink;
use super::monitor::Event;
use super::signals::Sent;
use super::stats::{Stats, WorkerInfo, WorkerState};
use crate::config::Config;
use crate::entry::PreforkEntry;
use crate::error::{Error, Result};
use crate::message::{self, Leave, ListenerKind, Setup};
use crate::policy::{self, Knobs, Phase, Snapshot, View, after};

use self::deadlines::earliest;

mod commands;
mod deadlines;
mod reap;
mod workers;

/// What the handles ask of the manager.
#[derive(Debug)]
pub(crate) enum Command {
    /// Start a new generation from `template`; answer once the old one is
    /// gone (or the new one failed to boot).
    Reload {
        template: Template,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Stop gracefully; a second time, at once. Answer once every worker
    /// is reaped.
    Stop { reply: oneshot::Sender<Result<()>> },
    /// Change the number of workers (see [`Resize`]); answer with the new
    /// one at once.
    Resize {
        size: Resize,
        reply: oneshot::Sender<usize>,
    },
}

/// A new number of workers: fixed sizing's count, spare sizing's most.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Resize {
    To(usize),
    By(isize),
}

/// A worker as the manager keeps it.
#[derive(Debug)]
struct Member {
    id: u64,
    generation: u64,
    /// Known once forked.
    pid: Option<u32>,
    handle: Option<WorkerHandle>,
    born: Instant,
    ready: bool,
    busy: u32,
    idle_since: Instant,
    served: u64,
    accepted: u64,
    /// Why it could not start, as it said.
    failure: Option<String>,
    /// Turned true to tell it to stop.
    stop: watch::Sender<bool>,
    /// Told to stop, and killed at this deadline if still there.
    deadline: Option<Instant>,
    killed: bool,
    /// It sent bytes that are no report.
    broken: bool,
    /// When it last reported.
    heard: Instant,
    /// It missed the heartbeat timeout: aborted, and killed at this time.
    timed_out: Option<Instant>,
    /// It was not ready within the start timeout, and was killed.
    start_timed_out: bool,
    /// Why it stopped accepting, as it said as it left.
    leave: Option<Leave>,
    /// The value it left with, as it sent it.
    exit_data: Option<Vec<u8>>,
}

impl Member {
    fn stopping(&self) -> bool {
        self.deadline.is_some()
    }

    fn phase(&self) -> Phase {
        if self.stopping() {
            Phase::Stopping
        } else if !self.ready {
            Phase::Starting
        } else if self.busy > 0 {
            Phase::Busy
        } else {
            Phase::Idle {
                since: self.idle_since,
            }
        }
    }

    fn kill(&mut self) {
        if let Some(handle) = &self.handle {
            let _ = handle.start_kill();
        }
        self.killed = true;
    }
}

/// The counters of [`Stats`].
#[derive(Debug, Default)]
struct Counters {
    spawned: u64,
    exited: u64,
    crashed: u64,
    boot_failures: u64,
    data_dropped: u64,
    ticks: u64,
}

/// How far the server is in stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stopping {
    /// Workers were told to stop and have until their deadline.
    Graceful,
    /// Workers were killed.
    Quick,
}

pub(crate) struct Manager {
    config: Config,
    knobs: Knobs,
    entry: PreforkEntry,
    listeners: Vec<(OwnedFd, ListenerKind)>,
    template: Template,
    generation: u64,
    /// The highest generation ever started: a new one is above it.
    newest: u64,
    /// While a reload is under way: the generation it replaces and its
    /// template, to go back to if the new one cannot boot.
    previous: Option<(u64, Template)>,
    /// Oldest first.
    members: Vec<Member>,
    next_id: u64,
    floor: usize,
    replacing: usize,
    rate: usize,
    last_spawn: Option<Instant>,
    backoff_until: Option<Instant>,
    /// Abnormal exits (boot failures included) since a worker was last
    /// ready.
    abnormal_streak: u32,
    /// Boot failures in a row.
    boot_streak: u32,
    stopping: Option<Stopping>,
    /// Why the server halted on its own.
    halted: Option<Error>,
    reloads: Vec<(u64, oneshot::Sender<Result<()>>)>,
    stops: Vec<oneshot::Sender<Result<()>>>,
    counters: Counters,
    events: mpsc::Sender<Event>,
    /// The user's event stream.
    sink: Sink,
    /// The signals the handles sent to workers.
    sent: Sent,
    stats: watch::Sender<Stats>,
    done: watch::Sender<Option<Result<()>>>,
}

/// What the builder hands to the manager.
pub(crate) struct Parts {
    pub(crate) config: Config,
    pub(crate) entry: PreforkEntry,
    pub(crate) listeners: Vec<(OwnedFd, ListenerKind)>,
    pub(crate) template: Template,
    pub(crate) stats: watch::Sender<Stats>,
    pub(crate) done: watch::Sender<Option<Result<()>>>,
    pub(crate) sink: Sink,
    pub(crate) sent: Sent,
}

/// A random number in `0..=max`.
fn jitter(max: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    if max == 0 {
        return 0;
    }
    // A fresh random key per call: randomness enough to spread restarts.
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    random % (max.saturating_add(1)).max(1)
}

/// Spare regulation's tick, kept within what tokio's timer takes.
fn tick_period(d: Duration) -> Duration {
    d.clamp(
        Duration::from_millis(1),
        Duration::from_secs(365 * 24 * 3600),
    )
}

impl Manager {
    pub(crate) fn new(parts: Parts, events: mpsc::Sender<Event>) -> Manager {
        let knobs = parts.config.knobs();
        let floor = parts.config.start_servers();
        Manager {
            knobs,
            entry: parts.entry,
            listeners: parts.listeners,
            template: parts.template,
            generation: 1,
            newest: 1,
            previous: None,
            members: Vec::new(),
            next_id: 0,
            floor,
            replacing: 0,
            rate: 1,
            last_spawn: None,
            backoff_until: None,
            abnormal_streak: 0,
            boot_streak: 0,
            stopping: None,
            halted: None,
            reloads: Vec::new(),
            stops: Vec::new(),
            counters: Counters::default(),
            events,
            sink: parts.sink,
            sent: parts.sent,
            stats: parts.stats,
            done: parts.done,
            config: parts.config,
        }
    }

    /// The manager's loop, until every worker is reaped after a stop.
    pub(crate) async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut events: mpsc::Receiver<Event>,
    ) {
        let mut ticks = tokio::time::interval(tick_period(self.config.maintenance_interval));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is now: start_servers come from the floor anyway.
        ticks.tick().await;
        let mut handles = true;
        let mut tick = false;
        loop {
            let wake = self.step(Instant::now(), tick);
            self.publish();
            if self.stopping.is_some() && self.members.is_empty() {
                break;
            }
            tick = false;
            let sleep = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now));
            tokio::select! {
                command = commands.recv(), if handles => match command {
                    Some(command) => self.command(command),
                    // Every handle is gone: stop, in the background.
                    None => {
                        handles = false;
                        self.stop(Instant::now());
                    }
                },
                Some(event) = events.recv() => self.event(event),
                _ = ticks.tick() => tick = true,
                () = sleep, if wake.is_some() => {}
            }
        }
        self.finish();
    }

    /// Applies the policy (unless stopping), kills workers past their
    /// deadline, answers finished reloads; returns when to look again.
    fn step(&mut self, now: Instant, tick: bool) -> Option<Instant> {
        let mut wake = None;
        if tick {
            self.counters.ticks += 1;
        }
        if self.stopping.is_none() {
            let d = policy::decide(&self.knobs, &self.snapshot(tick), now);
            self.rate = d.rate;
            self.floor = d.floor;
            for id in d.stop {
                self.ask_to_stop(id, now);
            }
            for _ in 0..d.spawn {
                self.spawn(now);
            }
            wake = d.wake_at;
        }
        wake = earliest(wake, self.enforce_deadlines(now));
        let oldest = self.members.iter().map(|m| m.generation).min();
        let (done, waiting): (Vec<_>, Vec<_>) = self
            .reloads
            .drain(..)
            .partition(|&(generation, _)| oldest.is_none_or(|o| o >= generation));
        self.reloads = waiting;
        // Published first: whoever awaited the reload sees its result.
        self.publish();
        for (_, reply) in done {
            let _ = reply.send(Ok(()));
        }
        if oldest.is_none_or(|o| o >= self.generation) {
            // The generation before is gone: nothing to go back to.
            self.previous = None;
        }
        wake
    }

    fn snapshot(&self, tick: bool) -> Snapshot {
        Snapshot {
            workers: self
                .members
                .iter()
                .map(|m| View {
                    id: m.id,
                    current: m.generation == self.generation,
                    phase: m.phase(),
                    born: m.born,
                })
                .collect(),
            floor: self.floor,
            replacing: self.replacing,
            rate: self.rate,
            tick,
            last_spawn: self.last_spawn,
            backoff_until: self.backoff_until,
        }
    }

    /// Forks a worker of the current generation, in a task of its own.
    fn spawn(&mut self, now: Instant) {
        let id = self.next_id;
        self.next_id += 1;
        let setup = Setup {
            generation: self.generation,
            heartbeat: self.config.heartbeat,
            listeners: self.listeners.iter().map(|&(_, kind)| kind).collect(),
            max_requests: self
                .config
                .max_requests
                .map(|n| n.saturating_add(jitter(self.config.max_requests_jitter))),
            accept_order: self.config.accept_order,
        };
        let fds: Vec<_> = self.listeners.iter().map(|(fd, _)| fd.as_fd()).collect();
        let mut fork = self.template.fork();
        fork.slot(message::encode_setup(&setup), &fds)
            .kill_on_drop(true);
        let entry = self.entry;
        let events = self.events.clone();
        tokio::spawn(async move {
            let result = fork.run(entry.entry()).await;
            // If the manager is gone, the worker is dropped, and killed.
            let _ = events.send(Event::Spawned { id, result }).await;
        });
        self.members.push(Member {
            id,
            generation: self.generation,
            pid: None,
            handle: None,
            born: now,
            ready: false,
            busy: 0,
            idle_since: now,
            served: 0,
            accepted: 0,
            failure: None,
            stop: watch::channel(false).0,
            deadline: None,
            killed: false,
            broken: false,
            heard: now,
            timed_out: None,
            start_timed_out: false,
            leave: None,
            exit_data: None,
        });
        self.last_spawn = Some(now);
        self.counters.spawned += 1;
    }

    fn member(&mut self, id: u64) -> Option<&mut Member> {
        self.members.iter_mut().find(|m| m.id == id)
    }

    /// Tells a worker to stop accepting and finish; it is killed at the
    /// graceful timeout.
    fn ask_to_stop(&mut self, id: u64, now: Instant) {
        let grace = self.config.graceful_timeout;
        let quick = self.stopping == Some(Stopping::Quick);
        if let Some(m) = self.member(id)
            && !m.stopping()
        {
            m.deadline = Some(after(now, grace));
            m.stop.send_replace(true);
            if quick {
                m.kill();
            }
        }
    }

    fn publish(&self) {
        let mut stats = Stats {
            generation: self.generation,
            spawned: self.counters.spawned,
            exited: self.counters.exited,
            crashed: self.counters.crashed,
            boot_failures: self.counters.boot_failures,
            data_dropped: self.counters.data_dropped,
            ticks: self.counters.ticks,
            ..Stats::default()
        };
        for m in &self.members {
            let state = match m.phase() {
                Phase::Starting => WorkerState::Starting,
                Phase::Idle { .. } => WorkerState::Idle,
                Phase::Busy => WorkerState::Busy,
                Phase::Stopping => WorkerState::Stopping,
            };
            match state {
                WorkerState::Starting => stats.starting += 1,
                WorkerState::Idle => stats.idle += 1,
                WorkerState::Busy => stats.busy += 1,
                WorkerState::Stopping => stats.stopping += 1,
            }
            stats.workers.push(WorkerInfo {
                pid: m.pid,
                generation: m.generation,
                state,
                served: m.served,
                accepted: m.accepted,
            });
        }
        self.stats.send_if_modified(|old| {
            let changed = *old != stats;
            if changed {
                *old = stats;
            }
            changed
        });
    }

    /// Every worker is reaped: say how the server ended.
    fn finish(mut self) {
        // The listeners close before anyone hears the server stopped: a
        // connection made after `stop()` returned is refused.
        self.listeners.clear();
        let outcome = match self.halted.take() {
            Some(e) => Err(e),
            None => Ok(()),
        };
        self.stats.send_modify(|s| s.stopped = true);
        for reply in self.stops.drain(..) {
            let _ = reply.send(outcome.clone());
        }
        for (_, reply) in self.reloads.drain(..) {
            let _ = reply.send(Err(Error::Stopped));
        }
        tracing::info!("stopped");
        self.done.send_replace(Some(outcome));
    }
}
