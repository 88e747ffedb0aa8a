//! The sizing policy: a pure function from the workers' states, the knobs
//! and the time to what to do. No I/O; the manager applies the decisions.
//!
//! The rules, in the order [`decide`] applies them:
//!
//! - **Floor**: the current generation gets at least `floor` workers
//!   (starting ones included), at once: `Fixed(n)` always has floor `n`;
//!   spare regulation has `start_servers` at start and, at a reload, the
//!   size of the generation being replaced, and drops its floor to 0 once
//!   reached.
//! - **Spare regulation** (only on a maintenance tick): with fewer idle
//!   workers (starting ones count as idle) than `min_spare`, start
//!   `min(rate, deficit)` and double `rate` up to `max_rate`; with more
//!   than `max_spare`, retire the one idle the longest and reset `rate` to
//!   1; otherwise reset `rate` to 1. Never more than `max` workers in all:
//!   above it (after a resize down), the idle workers beyond it are
//!   retired, the longest idle first.
//! - **Surplus** (`Fixed` after a resize down): idle workers beyond `n` are
//!   retired, the longest idle first; a busy one never.
//! - **Pacing**: nothing starts before `backoff_until` (after abnormal
//!   exits), and with a `spawn_interval` one worker starts per interval.
//! - **Reload**: old-generation workers are retired, oldest first, as the
//!   current generation's workers become ready: `replacing` of them (the
//!   size of the old generation) are kept until as many new ones are
//!   ready. They drain gracefully, busy or not. Meanwhile no current
//!   worker is retired as a surplus (spare or `Fixed`), or the new
//!   generation could stay short of `replacing` and an old worker would
//!   never be told to go.

use std::time::Duration;

use tokio::time::Instant;

/// The knobs the policy reads (from [`Config`](crate::Config), in range).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Knobs {
    pub(crate) mode: Mode,
    pub(crate) spawn_interval: Duration,
}

/// Fixed or spare-regulated sizing, in range: `max_spare > min_spare`,
/// `max >= 1`, `max_rate >= 1`, `Fixed(n)` with `n >= 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Fixed(usize),
    Spare {
        min_spare: usize,
        max_spare: usize,
        max: usize,
        max_rate: usize,
    },
}

/// Where a worker is in its life, as the policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Forked or being forked, not ready yet.
    Starting,
    /// Ready with no busy mark, since then.
    Idle { since: Instant },
    /// Ready with at least one busy mark.
    Busy,
    /// Told to stop; finishing its connections.
    Stopping,
}

/// A worker as the policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct View {
    pub(crate) id: u64,
    /// Of the current generation.
    pub(crate) current: bool,
    pub(crate) phase: Phase,
    /// When it was started, to retire old ones oldest first.
    pub(crate) born: Instant,
}

/// What the policy sees.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub(crate) workers: Vec<View>,
    /// Current-generation workers to have at least (see the rules).
    pub(crate) floor: usize,
    /// Old-generation workers kept until as many new ones are ready.
    pub(crate) replacing: usize,
    /// Workers to start at the next spare growth.
    pub(crate) rate: usize,
    /// This is a maintenance tick: spare regulation runs.
    pub(crate) tick: bool,
    pub(crate) last_spawn: Option<Instant>,
    pub(crate) backoff_until: Option<Instant>,
}

/// What to do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Decision {
    /// Workers to start in the current generation.
    pub(crate) spawn: usize,
    /// Workers to tell to stop (gracefully).
    pub(crate) stop: Vec<u64>,
    /// The spare growth rate from now on.
    pub(crate) rate: usize,
    /// The floor from now on.
    pub(crate) floor: usize,
    /// When to decide again if nothing happens first (besides ticks).
    pub(crate) wake_at: Option<Instant>,
}

/// Decides, at `now`, what to start and what to retire.
pub(crate) fn decide(k: &Knobs, s: &Snapshot, now: Instant) -> Decision {
    let active = |current: bool| {
        s.workers
            .iter()
            .filter(move |w| w.current == current && w.phase != Phase::Stopping)
    };
    let current = active(true).count();
    let old = active(false).count();
    let mut d = Decision {
        spawn: 0,
        stop: Vec::new(),
        rate: s.rate.max(1),
        floor: s.floor,
        wake_at: None,
    };

    let floor = match k.mode {
        Mode::Fixed(n) => n,
        Mode::Spare { .. } => s.floor,
    };
    let mut want = floor.saturating_sub(current);
    let mut grew = false;
    let mut surplus = 0;
    match k.mode {
        Mode::Fixed(n) => surplus = current.saturating_sub(n),
        Mode::Spare {
            min_spare,
            max_spare,
            max,
            ..
        } if s.tick => {
            let idle = active(true)
                .filter(|w| matches!(w.phase, Phase::Starting | Phase::Idle { .. }))
                .count();
            if idle < min_spare {
                let room = max.saturating_sub(current + old);
                let grow = d.rate.min(min_spare - idle).min(room);
                if grow > want {
                    want = grow;
                    grew = true;
                }
            } else {
                if idle > max_spare {
                    surplus = 1;
                }
                d.rate = 1;
            }
            // Above `max` (after a resize down): the idle ones beyond it.
            surplus = surplus.max(current.saturating_sub(max));
        }
        Mode::Spare { .. } => {}
    }

    if old > 0 {
        // A reload is under way: the surplus waits until every old worker
        // was told to go (see the doc).
        surplus = 0;
    }

    // Pacing.
    if want > 0 {
        if let Some(until) = s.backoff_until.filter(|&t| t > now) {
            d.wake_at = Some(until);
        } else if k.spawn_interval.is_zero() {
            d.spawn = want;
        } else {
            match s.last_spawn.map(|t| after(t, k.spawn_interval)) {
                Some(due) if due > now => d.wake_at = Some(due),
                _ => d.spawn = 1,
            }
        }
    }
    if grew
        && d.spawn > 0
        && let Mode::Spare { max_rate, .. } = k.mode
    {
        d.rate = d.rate.saturating_mul(2).min(max_rate);
    }
    if matches!(k.mode, Mode::Spare { .. }) && current + d.spawn >= s.floor {
        d.floor = 0;
    }

    // Surplus: idle ones only, the longest idle first.
    if surplus > 0 {
        let mut idle: Vec<(Instant, u64)> = active(true)
            .filter_map(|w| match w.phase {
                Phase::Idle { since } => Some((since, w.id)),
                _ => None,
            })
            .collect();
        idle.sort();
        d.stop.extend(idle.iter().take(surplus).map(|&(_, id)| id));
    }

    // Reload: the old generation leaves as the new one is ready.
    if old > 0 {
        let ready = active(true)
            .filter(|w| matches!(w.phase, Phase::Idle { .. } | Phase::Busy))
            .count();
        let keep = s.replacing.saturating_sub(ready);
        let mut olds: Vec<(Instant, u64)> = active(false).map(|w| (w.born, w.id)).collect();
        olds.sort();
        d.stop.extend(
            olds.iter()
                .take(old.saturating_sub(keep))
                .map(|&(_, id)| id),
        );
    }
    d
}

/// `t + d`, or a century later if that overflows (`Duration::MAX`).
pub(crate) fn after(t: Instant, d: Duration) -> Instant {
    t.checked_add(d)
        .unwrap_or_else(|| t + Duration::from_secs(100 * 365 * 24 * 3600))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn fixed(n: usize) -> Knobs {
        Knobs {
            mode: Mode::Fixed(n),
            spawn_interval: Duration::ZERO,
        }
    }

    fn spare(min_spare: usize, max_spare: usize, max: usize) -> Knobs {
        Knobs {
            mode: Mode::Spare {
                min_spare,
                max_spare,
                max,
                max_rate: 32,
            },
            spawn_interval: Duration::ZERO,
        }
    }

    fn snapshot(workers: Vec<View>) -> Snapshot {
        Snapshot {
            workers,
            floor: 0,
            replacing: 0,
            rate: 1,
            tick: true,
            last_spawn: None,
            backoff_until: None,
        }
    }

    fn w(id: u64, current: bool, phase: Phase, born: Instant) -> View {
        View {
            id,
            current,
            phase,
            born,
        }
    }

    /// A world the decisions are applied to, tick by tick: started workers
    /// are ready at the next tick, in the phase `ready_as` gives them.
    struct World {
        k: Knobs,
        s: Snapshot,
        next: u64,
        now: Instant,
    }

    impl World {
        fn new(k: Knobs, floor: usize) -> World {
            let mut s = snapshot(Vec::new());
            s.floor = floor;
            World {
                k,
                s,
                next: 0,
                now: Instant::now(),
            }
        }

        /// One tick: every starting worker becomes `ready_as`, then the
        /// policy decides and its decision is applied. Returns it.
        fn tick(&mut self, ready_as: Phase) -> Decision {
            self.now += SEC;
            for v in &mut self.s.workers {
                if v.phase == Phase::Starting {
                    v.phase = ready_as;
                }
            }
            let d = decide(&self.k, &self.s, self.now);
            self.s.rate = d.rate;
            self.s.floor = d.floor;
            self.s.workers.retain(|v| !d.stop.contains(&v.id));
            for _ in 0..d.spawn {
                self.next += 1;
                self.s
                    .workers
                    .push(w(self.next, true, Phase::Starting, self.now));
            }
            d
        }

        fn count(&self) -> usize {
            self.s.workers.len()
        }
    }

    #[test]
    fn fixed_starts_all_at_once_and_replaces_what_left() {
        let now = Instant::now();
        let d = decide(&fixed(4), &snapshot(Vec::new()), now);
        assert_eq!((d.spawn, d.stop.len()), (4, 0));
        let idle = Phase::Idle { since: now };
        let s = snapshot((1..=3).map(|i| w(i, true, idle, now)).collect());
        assert_eq!(decide(&fixed(4), &s, now).spawn, 1);
        // Workers stopping do not count.
        let mut s = snapshot((1..=4).map(|i| w(i, true, idle, now)).collect());
        s.workers[0].phase = Phase::Stopping;
        assert_eq!(decide(&fixed(4), &s, now).spawn, 1);
    }

    #[test]
    fn spawn_interval_starts_one_per_interval() {
        let now = Instant::now();
        let k = Knobs {
            spawn_interval: SEC,
            ..fixed(3)
        };
        let mut s = snapshot(Vec::new());
        let d = decide(&k, &s, now);
        assert_eq!((d.spawn, d.wake_at), (1, None));
        s.last_spawn = Some(now);
        s.workers.push(w(1, true, Phase::Starting, now));
        let d = decide(&k, &s, now);
        assert_eq!((d.spawn, d.wake_at), (0, Some(now + SEC)));
        assert_eq!(decide(&k, &s, now + SEC).spawn, 1);
    }

    #[test]
    fn backoff_holds_every_start_until_it_ends() {
        let now = Instant::now();
        let mut s = snapshot(Vec::new());
        s.backoff_until = Some(now + 2 * SEC);
        let d = decide(&fixed(2), &s, now);
        assert_eq!((d.spawn, d.wake_at), (0, Some(now + 2 * SEC)));
        assert_eq!(decide(&fixed(2), &s, now + 2 * SEC).spawn, 2);
    }

    #[test]
    fn spare_growth_doubles_per_tick_up_to_the_cap_then_resets() {
        // Every worker is busy as soon as it is ready: the idle count stays
        // 0, below min_spare 32, so growth doubles each tick.
        let mut world = World::new(spare(32, 50, 200), 0);
        let mut spawned = Vec::new();
        for _ in 0..7 {
            spawned.push(world.tick(Phase::Busy).spawn);
        }
        assert_eq!(spawned, [1, 2, 4, 8, 16, 32, 32]);
        // Calm: the last 32 are idle, within [32, 50].
        let d = world.tick(Phase::Idle { since: world.now });
        assert_eq!((d.spawn, d.rate), (0, 1));
        // Busy again: growth starts over at 1.
        for v in &mut world.s.workers {
            v.phase = Phase::Busy;
        }
        assert_eq!(world.tick(Phase::Busy).spawn, 1);
    }

    #[test]
    fn spare_growth_never_passes_max() {
        let mut world = World::new(spare(40, 50, 20), 0);
        for _ in 0..10 {
            world.tick(Phase::Busy);
        }
        assert_eq!(world.count(), 20);
        assert_eq!(world.tick(Phase::Busy).spawn, 0);
    }

    #[test]
    fn spare_growth_runs_only_on_ticks() {
        let now = Instant::now();
        let mut s = snapshot(vec![w(1, true, Phase::Busy, now)]);
        s.tick = false;
        assert_eq!(decide(&spare(2, 4, 10), &s, now).spawn, 0);
        s.tick = true;
        assert_eq!(decide(&spare(2, 4, 10), &s, now).spawn, 1);
    }

    #[test]
    fn starting_workers_count_as_idle() {
        let now = Instant::now();
        let s = snapshot(vec![
            w(1, true, Phase::Starting, now),
            w(2, true, Phase::Starting, now),
        ]);
        assert_eq!(decide(&spare(2, 4, 10), &s, now).spawn, 0);
    }

    #[test]
    fn surplus_spares_leave_one_per_tick_the_longest_idle_never_a_busy_one() {
        let t0 = Instant::now();
        let k = spare(1, 2, 10);
        let mut workers = vec![
            w(1, true, Phase::Busy, t0),
            w(2, true, Phase::Busy, t0),
            w(
                3,
                true,
                Phase::Idle {
                    since: t0 + 3 * SEC,
                },
                t0,
            ),
            w(4, true, Phase::Idle { since: t0 + SEC }, t0),
            w(
                5,
                true,
                Phase::Idle {
                    since: t0 + 2 * SEC,
                },
                t0,
            ),
            w(
                6,
                true,
                Phase::Idle {
                    since: t0 + 4 * SEC,
                },
                t0,
            ),
        ];
        let mut retired = Vec::new();
        for _ in 0..4 {
            let d = decide(&k, &snapshot(workers.clone()), t0 + 10 * SEC);
            assert!(d.stop.len() <= 1);
            workers.retain(|v| !d.stop.contains(&v.id));
            retired.extend(d.stop);
        }
        // Four idle, at most two kept: the two idle the longest go, one per
        // tick; then nothing (two idle is not above max_spare).
        assert_eq!(retired, [4, 5]);
        assert!(workers.iter().filter(|v| v.phase == Phase::Busy).count() == 2);
    }

    #[test]
    fn all_busy_surplus_is_never_retired() {
        let t0 = Instant::now();
        // Fixed(2) with four workers after a resize: the two idle go at
        // once, the busy ones stay.
        let s = snapshot(vec![
            w(1, true, Phase::Busy, t0),
            w(2, true, Phase::Idle { since: t0 }, t0),
            w(3, true, Phase::Busy, t0),
            w(4, true, Phase::Idle { since: t0 }, t0),
        ]);
        let mut d = decide(&fixed(2), &s, t0);
        d.stop.sort();
        assert_eq!(d.stop, [2, 4]);
        let s = snapshot(vec![
            w(1, true, Phase::Busy, t0),
            w(2, true, Phase::Busy, t0),
            w(3, true, Phase::Busy, t0),
        ]);
        assert!(decide(&fixed(2), &s, t0).stop.is_empty());
    }

    #[test]
    fn spare_above_max_after_a_resize_retires_idle_workers_never_busy_ones() {
        let t0 = Instant::now();
        // max 2, four workers: two idle (well within max_spare), two busy.
        let k = spare(1, 6, 2);
        let mut s = snapshot(vec![
            w(1, true, Phase::Busy, t0),
            w(2, true, Phase::Idle { since: t0 + SEC }, t0),
            w(3, true, Phase::Idle { since: t0 }, t0),
            w(4, true, Phase::Busy, t0),
        ]);
        let mut d = decide(&k, &s, t0 + 10 * SEC);
        d.stop.sort();
        assert_eq!((d.spawn, d.stop), (0, vec![2, 3]));
        // Busy ones only: they stay (until they turn idle).
        s.workers.retain(|v| v.phase == Phase::Busy);
        assert!(decide(&k, &s, t0 + 10 * SEC).stop.is_empty());
        // Not on a tick: nothing yet.
        s.workers.push(w(5, true, Phase::Idle { since: t0 }, t0));
        s.tick = false;
        assert!(decide(&k, &s, t0 + 10 * SEC).stop.is_empty());
    }

    #[test]
    fn spare_floor_starts_start_servers_at_once_then_drops() {
        let mut world = World::new(spare(1, 3, 10), 5);
        world.s.tick = false;
        let d = world.tick(Phase::Idle { since: world.now });
        assert_eq!((d.spawn, d.floor), (5, 0));
        // Five idle, above max_spare 3: shrinking begins on the next tick.
        world.s.tick = true;
        let d = world.tick(Phase::Idle { since: world.now });
        assert_eq!((d.spawn, d.stop.len()), (0, 1));
    }

    #[test]
    fn reload_starts_the_new_generation_first_and_retires_the_old_oldest_first() {
        let t0 = Instant::now();
        let idle = Phase::Idle { since: t0 };
        let old = vec![
            w(2, false, Phase::Busy, t0 + SEC),
            w(1, false, idle, t0),
            w(3, false, idle, t0 + 2 * SEC),
        ];
        let mut s = snapshot(old.clone());
        s.replacing = 3;
        s.tick = false;
        // The new generation starts in full; no old worker leaves yet.
        let d = decide(&fixed(3), &s, t0);
        assert_eq!((d.spawn, d.stop.len()), (3, 0));
        s.workers
            .extend((4..=6).map(|i| w(i, true, Phase::Starting, t0)));
        assert!(decide(&fixed(3), &s, t0).stop.is_empty());
        // One new worker is ready: the oldest old one leaves, busy or not.
        s.workers[3].phase = idle;
        assert_eq!(decide(&fixed(3), &s, t0).stop, [1]);
        s.workers[1].phase = Phase::Stopping;
        s.workers[4].phase = Phase::Busy;
        assert_eq!(decide(&fixed(3), &s, t0).stop, [2]);
        s.workers[0].phase = Phase::Stopping;
        s.workers[5].phase = idle;
        let d = decide(&fixed(3), &s, t0);
        assert_eq!((d.spawn, d.stop), (0, vec![3]));
    }

    #[test]
    fn a_spare_reload_retires_every_old_worker_though_new_ones_ready_a_tick_apart() {
        // Six old workers; the six new ones get ready a few at a time, with
        // ticks in between at which the new idle ones are above max_spare.
        let t0 = Instant::now();
        let k = spare(2, 3, 8);
        let idle = Phase::Idle { since: t0 };
        let mut s = snapshot((0..6).map(|i| w(i, false, idle, t0)).collect());
        (s.replacing, s.floor, s.tick) = (6, 6, false);
        let mut next = 6;
        let apply = |s: &mut Snapshot, d: &Decision, next: &mut u64| {
            s.rate = d.rate;
            s.floor = d.floor;
            for v in &mut s.workers {
                if d.stop.contains(&v.id) {
                    v.phase = Phase::Stopping;
                }
            }
            for _ in 0..d.spawn {
                s.workers.push(w(*next, true, Phase::Starting, t0));
                *next += 1;
            }
        };
        let d = decide(&k, &s, t0);
        assert_eq!(d.spawn, 6, "the new generation starts in full");
        apply(&mut s, &d, &mut next);
        // Readiness comes in steps of 4, 1, 1, each followed by a tick.
        for ready in [4, 1, 1] {
            let starting = s
                .workers
                .iter_mut()
                .filter(|v| v.current && v.phase == Phase::Starting);
            for v in starting.take(ready) {
                v.phase = idle;
            }
            for tick in [false, true] {
                s.tick = tick;
                let d = decide(&k, &s, t0);
                apply(&mut s, &d, &mut next);
            }
        }
        let old_left: Vec<u64> = s
            .workers
            .iter()
            .filter(|v| !v.current && v.phase != Phase::Stopping)
            .map(|v| v.id)
            .collect();
        assert!(old_left.is_empty(), "old workers never told: {old_left:?}");
        // Then the surplus spares go, one per tick.
        s.tick = true;
        let d = decide(&k, &s, t0);
        assert_eq!(d.stop.len(), 1);
    }

    #[test]
    fn durations_at_their_limits_do_not_overflow() {
        let now = Instant::now();
        let k = Knobs {
            spawn_interval: Duration::MAX,
            ..fixed(2)
        };
        let mut s = snapshot(Vec::new());
        s.last_spawn = Some(now);
        let d = decide(&k, &s, now);
        assert_eq!(d.spawn, 0);
        assert!(d.wake_at.is_some_and(|t| t > now + 1000 * SEC));
    }
}
