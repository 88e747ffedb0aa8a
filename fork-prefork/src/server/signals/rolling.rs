//! A rolling restart ([`SignalAction::Rolling`](crate::SignalAction::Rolling)):
//! a signal to one worker at a time. The pacing is a pure function of the
//! restart's state, the server's [`Stats`] and the time, tested step by
//! step below; the trap's loop sends the signals it decides.

use std::collections::VecDeque;
use std::time::Duration;

use fork_core::Signal;
use tokio::time::Instant;

use crate::policy::after;
use crate::server::stats::{Stats, WorkerState};

/// What to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Send the signal to this worker now.
    Signal(u32),
    /// Look again when the stats change, or at this time.
    Wait(Option<Instant>),
    /// Every worker was signalled, and the last one is gone and replaced
    /// (or ignored the signal), or the server stopped.
    Done,
}

/// A rolling restart under way. Rules, in order:
///
/// 1. once the server has stopped, it is done;
/// 2. the worker signalled last is waited for: until it has exited and no
///    worker is starting (its replacement is ready), or at most `patience`
///    after its signal (it ignored it);
/// 3. then until `interval` after that signal;
/// 4. then the next queued worker still there and not stopping gets the
///    signal, once it is ready (a worker still starting has no handler for
///    the signal yet); with none left, it is done.
#[derive(Debug)]
pub(crate) struct Rolling {
    signal: Signal,
    interval: Duration,
    patience: Duration,
    /// Pids still to signal, oldest first.
    queue: VecDeque<u32>,
    /// The worker signalled last, and when.
    current: Option<(u32, Instant)>,
}

/// The workers serving, oldest first, but `except`.
fn serving(stats: &Stats, except: Option<u32>) -> VecDeque<u32> {
    stats
        .workers
        .iter()
        .filter(|w| w.state != WorkerState::Stopping)
        .filter_map(|w| w.pid)
        .filter(|&pid| Some(pid) != except)
        .collect()
}

impl Rolling {
    /// A rolling restart of the workers serving now; a worker is waited
    /// for at most `patience` after its signal.
    pub(crate) fn new(
        signal: Signal,
        interval: Duration,
        patience: Duration,
        stats: &Stats,
    ) -> Rolling {
        Rolling {
            signal,
            interval,
            patience,
            queue: serving(stats, None),
            current: None,
        }
    }

    /// The signal the workers get.
    pub(crate) fn signal(&self) -> Signal {
        self.signal
    }

    /// Another request while this one runs: starts over with every worker
    /// serving now but the one being replaced, with the new signal and
    /// interval; the pacing goes on from the last signal.
    pub(crate) fn restart(&mut self, signal: Signal, interval: Duration, stats: &Stats) {
        self.signal = signal;
        self.interval = interval;
        self.queue = serving(stats, self.current.map(|(pid, _)| pid));
    }

    /// What to do now.
    pub(crate) fn step(&mut self, stats: &Stats, now: Instant) -> Step {
        if stats.stopped {
            return Step::Done;
        }
        if let Some((pid, at)) = self.current {
            let alive = stats.workers.iter().any(|w| w.pid == Some(pid));
            if alive {
                let give_up = after(at, self.patience);
                if now < give_up {
                    return Step::Wait(Some(give_up));
                }
            } else if stats.starting > 0 {
                return Step::Wait(None);
            }
            let next = after(at, self.interval);
            if now < next {
                return Step::Wait(Some(next));
            }
            self.current = None;
        }
        while let Some(pid) = self.queue.pop_front() {
            match stats.workers.iter().find(|w| w.pid == Some(pid)) {
                None => {}
                Some(w) if w.state == WorkerState::Stopping => {}
                Some(w) if w.state == WorkerState::Starting => {
                    self.queue.push_front(pid);
                    return Step::Wait(None);
                }
                Some(_) => {
                    self.current = Some((pid, now));
                    return Step::Signal(pid);
                }
            }
        }
        Step::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::stats::WorkerInfo;

    fn worker(pid: u32, state: WorkerState) -> WorkerInfo {
        WorkerInfo {
            pid: Some(pid),
            generation: 1,
            state,
            served: 0,
            accepted: 0,
        }
    }

    /// Ready workers with these pids, and `starting` more being forked.
    fn stats(pids: &[u32], starting: usize) -> Stats {
        let mut workers: Vec<_> = pids.iter().map(|&p| worker(p, WorkerState::Idle)).collect();
        workers.extend((0..starting).map(|_| WorkerInfo {
            pid: None,
            generation: 1,
            state: WorkerState::Starting,
            served: 0,
            accepted: 0,
        }));
        Stats {
            idle: pids.len(),
            starting,
            workers,
            ..Stats::default()
        }
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn one_worker_at_a_time_each_replaced_before_the_next() {
        let t0 = Instant::now();
        let mut r = Rolling::new(Signal::SIGTERM, 100 * MS, 1000 * MS, &stats(&[1, 2, 3], 0));
        assert_eq!(r.step(&stats(&[1, 2, 3], 0), t0), Step::Signal(1));
        // Still there: wait for it, up to the patience.
        assert_eq!(
            r.step(&stats(&[1, 2, 3], 0), t0 + 150 * MS),
            Step::Wait(Some(t0 + 1000 * MS))
        );
        // Gone, its replacement starting: wait, with no deadline.
        assert_eq!(r.step(&stats(&[2, 3], 1), t0 + 200 * MS), Step::Wait(None));
        // Replaced, and the interval has passed: the next.
        assert_eq!(
            r.step(&stats(&[2, 3, 4], 0), t0 + 210 * MS),
            Step::Signal(2)
        );
        // Gone and replaced at once, but the interval has not passed.
        let t1 = t0 + 210 * MS;
        assert_eq!(
            r.step(&stats(&[3, 4, 5], 0), t1 + 10 * MS),
            Step::Wait(Some(t1 + 100 * MS))
        );
        assert_eq!(
            r.step(&stats(&[3, 4, 5], 0), t1 + 100 * MS),
            Step::Signal(3)
        );
        // The last one: done once it is replaced; the new ones are not
        // signalled.
        let t2 = t1 + 100 * MS;
        assert_eq!(
            r.step(&stats(&[3, 4, 5], 0), t2),
            Step::Wait(Some(t2 + 1000 * MS))
        );
        assert_eq!(r.step(&stats(&[4, 5], 1), t2 + 300 * MS), Step::Wait(None));
        assert_eq!(r.step(&stats(&[4, 5, 6], 0), t2 + 400 * MS), Step::Done);
    }

    #[test]
    fn a_worker_that_ignores_the_signal_is_left_after_the_patience() {
        let t0 = Instant::now();
        let s = stats(&[1, 2], 0);
        let mut r = Rolling::new(Signal::SIGUSR1, 100 * MS, 500 * MS, &s);
        assert_eq!(r.step(&s, t0), Step::Signal(1));
        assert_eq!(r.step(&s, t0 + 499 * MS), Step::Wait(Some(t0 + 500 * MS)));
        assert_eq!(r.step(&s, t0 + 500 * MS), Step::Signal(2));
    }

    #[test]
    fn workers_gone_or_stopping_meanwhile_are_skipped() {
        let t0 = Instant::now();
        let mut r = Rolling::new(Signal::SIGTERM, MS, MS, &stats(&[1, 2, 3], 0));
        let mut s = stats(&[3], 0);
        s.workers.insert(0, worker(2, WorkerState::Stopping));
        assert_eq!(r.step(&s, t0), Step::Signal(3));
        let mut stopped = stats(&[3], 0);
        stopped.stopped = true;
        assert_eq!(r.step(&stopped, t0), Step::Done);
    }

    #[test]
    fn a_worker_still_starting_is_signalled_once_ready() {
        let t0 = Instant::now();
        let mut s = stats(&[2], 0);
        s.workers.insert(0, worker(1, WorkerState::Starting));
        let mut r = Rolling::new(Signal::SIGTERM, MS, MS, &s);
        assert_eq!(r.step(&s, t0), Step::Wait(None));
        assert_eq!(r.step(&stats(&[1, 2], 0), t0), Step::Signal(1));
    }

    #[test]
    fn a_second_request_starts_over_with_every_worker_serving() {
        let t0 = Instant::now();
        let mut r = Rolling::new(Signal::SIGTERM, 100 * MS, 1000 * MS, &stats(&[1, 2, 3], 0));
        assert_eq!(r.step(&stats(&[1, 2, 3], 0), t0), Step::Signal(1));
        assert_eq!(
            r.step(&stats(&[2, 3, 4], 0), t0 + 100 * MS),
            Step::Signal(2)
        );
        // Again, while 2 is being replaced: 3, then 4 (already new); never
        // 2 twice; with the newer signal and interval.
        let now = stats(&[2, 3, 4], 0);
        r.restart(Signal::SIGQUIT, 50 * MS, &now);
        assert_eq!(r.signal(), Signal::SIGQUIT);
        let t1 = t0 + 100 * MS;
        assert_eq!(
            r.step(&stats(&[3, 4, 5], 0), t1 + 10 * MS),
            Step::Wait(Some(t1 + 50 * MS))
        );
        assert_eq!(r.step(&stats(&[3, 4, 5], 0), t1 + 50 * MS), Step::Signal(3));
        let t2 = t1 + 50 * MS;
        assert_eq!(r.step(&stats(&[4, 5, 6], 0), t2 + 50 * MS), Step::Signal(4));
        let t3 = t2 + 50 * MS;
        assert_eq!(r.step(&stats(&[5, 6, 7], 0), t3 + 50 * MS), Step::Done);
    }
}
