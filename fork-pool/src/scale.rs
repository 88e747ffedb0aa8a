//! The scaling policy: a pure function from the pool's state and the time to
//! what to do. No I/O; the supervisor applies the decisions.

use std::time::Duration;

use tokio::time::Instant;

use crate::pool::deadline::after;

/// The knobs the policy reads (a subset of [`Config`](crate::Config)).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Knobs {
    pub(crate) max: usize,
    pub(crate) idle: usize,
    pub(crate) load: usize,
    pub(crate) start: Duration,
    pub(crate) stop: Duration,
}

/// What the policy sees.
#[derive(Debug, Clone, Default)]
pub(crate) struct Snapshot {
    /// Workers ready with nothing to do: `(id, idle since)`.
    pub(crate) idle: Vec<(u64, Instant)>,
    /// Workers ready and working.
    pub(crate) busy: usize,
    /// Workers being started.
    pub(crate) starting: usize,
    /// Workers waiting for their host to connect: they count against
    /// `max`, but not as covering the queue (the connection may fail, or
    /// take its whole timeout).
    pub(crate) connecting: usize,
    /// Jobs waiting in the queue, and since when the oldest waits.
    pub(crate) queued: usize,
    pub(crate) oldest_queued: Option<Instant>,
    /// When the last worker was started.
    pub(crate) last_spawn: Option<Instant>,
    /// No spawning before this (back-off after failures).
    pub(crate) backoff_until: Option<Instant>,
}

/// What to do now, and when to look again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Decision {
    /// Workers to start.
    pub(crate) spawn: usize,
    /// Idle workers to stop.
    pub(crate) stop: Vec<u64>,
    /// The next time the decision may change without any event.
    pub(crate) wake_at: Option<Instant>,
}

fn earliest(a: Option<Instant>, b: Instant) -> Option<Instant> {
    Some(a.map_or(b, |a| a.min(b)))
}

/// Decides, at `now`, how to scale.
///
/// - **Grow** while jobs wait and fewer than `max` workers exist: with
///   `start` zero at once, as many as the waiting jobs need at `load` each
///   (counting workers already starting); otherwise the first worker at
///   once, then one more once the oldest job waited `start`, and one more
///   per `start` while jobs wait.
/// - **Keep `idle`** idle workers (ready or starting), within `max`, when no
///   job waits.
/// - **Shrink**: stop workers idle for `stop` or longer, the longest idle
///   first, while more than `idle` are idle and no job waits. With
///   `idle = 0` every idle worker is stopped in the end.
/// - Nothing is started before `backoff_until`.
/// - Workers waiting for their host to connect count against `max`, but
///   cover no job.
pub(crate) fn decide(k: &Knobs, s: &Snapshot, now: Instant) -> Decision {
    let mut d = Decision::default();
    let total = s.idle.len() + s.busy + s.starting + s.connecting;
    let room = k.max.saturating_sub(total);
    let load = k.load.max(1);

    let mut want = 0;
    // Keep `idle` workers idle or on their way (while jobs wait, `start`
    // paces the growth instead).
    if s.queued == 0 {
        want = want.max(k.idle.saturating_sub(s.idle.len() + s.starting));
    }
    // Cover the backlog.
    let uncovered = s.queued.saturating_sub(s.starting.saturating_mul(load));
    if uncovered > 0 {
        if k.start.is_zero() {
            want = want.max(uncovered.div_ceil(load));
        } else if total == 0 {
            // No worker at all: start the first one at once, as the original.
            want = want.max(1);
        } else if let Some(oldest) = s.oldest_queued {
            let due_by_wait = after(oldest, k.start);
            let due_by_rate = s.last_spawn.map_or(now, |t| after(t, k.start));
            let due = due_by_wait.max(due_by_rate);
            if due <= now {
                want = want.max(1);
            } else {
                d.wake_at = earliest(d.wake_at, due);
            }
        }
    }
    let want = want.min(room);
    if want > 0 {
        match s.backoff_until {
            Some(until) if until > now => d.wake_at = earliest(d.wake_at, until),
            _ => d.spawn = want,
        }
    }

    // Shrink: only when nothing waits.
    if s.queued == 0 && s.idle.len() > k.idle {
        let mut idle = s.idle.clone();
        idle.sort_by_key(|&(_, since)| since);
        let excess = idle.len() - k.idle;
        for &(id, since) in idle.iter().take(excess) {
            let due = after(since, k.stop);
            if due <= now {
                d.stop.push(id);
            } else {
                d.wake_at = earliest(d.wake_at, due);
            }
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn knobs() -> Knobs {
        Knobs {
            max: 4,
            idle: 0,
            load: 2,
            start: Duration::from_millis(100),
            stop: Duration::from_secs(10),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn starts_idle_workers_up_front() {
        let now = Instant::now();
        let k = Knobs { idle: 2, ..knobs() };
        let d = decide(&k, &Snapshot::default(), now);
        assert_eq!(d.spawn, 2);
        // Two already starting: nothing more.
        let s = Snapshot {
            starting: 2,
            ..Snapshot::default()
        };
        assert_eq!(decide(&k, &s, now).spawn, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn start_zero_grows_at_once_for_the_whole_backlog() {
        let now = Instant::now();
        let k = Knobs {
            start: Duration::ZERO,
            ..knobs()
        };
        let s = Snapshot {
            queued: 5,
            oldest_queued: Some(now),
            ..Snapshot::default()
        };
        // 5 jobs at load 2 need 3 workers.
        assert_eq!(decide(&k, &s, now).spawn, 3);
        // Never above max.
        let s = Snapshot {
            queued: 100,
            oldest_queued: Some(now),
            busy: 3,
            ..Snapshot::default()
        };
        assert_eq!(decide(&k, &s, now).spawn, 1);
        // Workers already starting cover jobs too.
        let s = Snapshot {
            queued: 4,
            oldest_queued: Some(now),
            starting: 2,
            ..Snapshot::default()
        };
        assert_eq!(decide(&k, &s, now).spawn, 0);
        // Workers waiting for their host to connect do not cover them, but
        // count against max.
        let s = Snapshot {
            queued: 4,
            oldest_queued: Some(now),
            connecting: 2,
            ..Snapshot::default()
        };
        assert_eq!(decide(&k, &s, now).spawn, 2);
        let s = Snapshot { connecting: 3, ..s };
        assert_eq!(decide(&k, &s, now).spawn, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn start_delay_adds_one_worker_per_period_while_jobs_wait() {
        let t0 = Instant::now();
        let k = knobs();
        let mut s = Snapshot {
            queued: 10,
            oldest_queued: Some(t0),
            busy: 1,
            ..Snapshot::default()
        };
        // Not yet: the job has not waited `start`.
        let d = decide(&k, &s, t0);
        assert_eq!(d.spawn, 0);
        assert_eq!(d.wake_at, Some(t0 + k.start));
        tokio::time::advance(k.start).await;
        let t1 = Instant::now();
        assert_eq!(decide(&k, &s, t1).spawn, 1);
        // Right after a spawn: wait another period.
        s.last_spawn = Some(t1);
        s.starting = 1;
        s.queued = 10;
        let d = decide(&k, &s, t1);
        assert_eq!(d.spawn, 0);
        assert_eq!(d.wake_at, Some(t1 + k.start));
        tokio::time::advance(k.start).await;
        let t2 = Instant::now();
        assert_eq!(decide(&k, &s, t2).spawn, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn spares_do_not_bypass_start_under_backlog() {
        let now = Instant::now();
        let k = Knobs { idle: 2, ..knobs() };
        let s = Snapshot {
            busy: 1,
            queued: 8,
            oldest_queued: Some(now),
            ..Snapshot::default()
        };
        assert_eq!(decide(&k, &s, now).spawn, 0);
        // A spare that went to work is replaced when nothing waits.
        let s = Snapshot {
            busy: 1,
            idle: vec![(1, now)],
            ..Snapshot::default()
        };
        assert_eq!(decide(&k, &s, now).spawn, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_worker_starts_at_once() {
        let now = Instant::now();
        let s = Snapshot {
            queued: 3,
            oldest_queued: Some(now),
            ..Snapshot::default()
        };
        assert_eq!(decide(&knobs(), &s, now).spawn, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn shrinks_to_idle_after_stop_even_with_idle_zero() {
        let t0 = Instant::now();
        let k = knobs();
        let s = Snapshot {
            idle: vec![(1, t0), (2, t0 + Duration::from_secs(1))],
            ..Snapshot::default()
        };
        let d = decide(&k, &s, t0);
        assert!(d.stop.is_empty());
        assert_eq!(d.wake_at, Some(t0 + k.stop));
        tokio::time::advance(k.stop).await;
        let t1 = Instant::now();
        // Worker 1 expired; worker 2 a second later.
        let d = decide(&k, &s, t1);
        assert_eq!(d.stop, vec![1]);
        assert_eq!(d.wake_at, Some(t0 + Duration::from_secs(11)));
        tokio::time::advance(Duration::from_secs(1)).await;
        let t2 = Instant::now();
        assert_eq!(decide(&k, &s, t2).stop, vec![1, 2]);
    }

    #[tokio::test(start_paused = true)]
    async fn keeps_idle_workers_and_stops_the_longest_idle() {
        let t0 = Instant::now();
        let k = Knobs { idle: 1, ..knobs() };
        let s = Snapshot {
            idle: vec![(7, t0 + Duration::from_secs(2)), (3, t0)],
            ..Snapshot::default()
        };
        tokio::time::advance(Duration::from_secs(60)).await;
        let now = Instant::now();
        assert_eq!(decide(&k, &s, now).stop, vec![3]);
    }

    #[tokio::test(start_paused = true)]
    async fn no_shrinking_while_jobs_wait() {
        let t0 = Instant::now();
        let k = knobs();
        let s = Snapshot {
            idle: vec![(1, t0)],
            queued: 1,
            oldest_queued: Some(t0),
            ..Snapshot::default()
        };
        tokio::time::advance(Duration::from_secs(60)).await;
        let now = Instant::now();
        assert!(decide(&k, &s, now).stop.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_delays_spawning() {
        let t0 = Instant::now();
        let k = Knobs {
            start: Duration::ZERO,
            ..knobs()
        };
        let s = Snapshot {
            queued: 1,
            oldest_queued: Some(t0),
            backoff_until: Some(t0 + Duration::from_secs(1)),
            ..Snapshot::default()
        };
        let d = decide(&k, &s, t0);
        assert_eq!(d.spawn, 0);
        assert_eq!(d.wake_at, Some(t0 + Duration::from_secs(1)));
        tokio::time::advance(Duration::from_secs(1)).await;
        let t1 = Instant::now();
        assert_eq!(decide(&k, &s, t1).spawn, 1);
    }

    #[test]
    fn knobs_at_their_limits_mean_never_and_do_not_overflow() {
        let now = Instant::now();
        let k = Knobs {
            max: 4,
            idle: 1,
            load: usize::MAX,
            start: Duration::MAX,
            stop: Duration::MAX,
        };
        // Workers starting at an unbounded load cover any backlog.
        let s = Snapshot {
            queued: 10,
            oldest_queued: Some(now),
            starting: 2,
            ..Snapshot::default()
        };
        assert_eq!(decide(&k, &s, now).spawn, 0);
        // A backlog with a worker ready: the next one is due in "never".
        let s = Snapshot {
            queued: 10,
            oldest_queued: Some(now),
            busy: 1,
            last_spawn: Some(now),
            ..Snapshot::default()
        };
        let d = decide(&k, &s, now);
        assert_eq!(d.spawn, 0);
        assert!(
            d.wake_at
                .is_some_and(|at| at > now + Duration::from_secs(3600 * 24 * 365))
        );
        // Idle workers beyond `idle` are never stopped.
        let s = Snapshot {
            idle: vec![(1, now), (2, now)],
            ..Snapshot::default()
        };
        let d = decide(&k, &s, now);
        assert!(d.stop.is_empty());
    }
}
