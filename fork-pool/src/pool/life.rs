//! A pool's life: open, shutting down (draining, then reaping), shut down,
//! and open again on the next call; and the count of shutdowns completed,
//! which [`Pool::finished`](super::Pool::finished) waits on. Plain state
//! (no I/O, no clock), tested here rule by rule.
//!
//! - An open pool takes calls; `shutdown` starts draining it.
//! - A pool shutting down takes no call; another `shutdown` waits for the
//!   end of the one under way, and so does `finished`.
//! - Past draining (reaping), the supervisor stops, and workers that
//!   arrive are killed.
//! - Once every worker was reaped, the pool is shut down and the count of
//!   shutdowns goes up by one. Then `shutdown` has nothing to do,
//!   `finished` resolves at once, and a call opens the pool again.
//! - The count never goes down: a waiter for the end of a shutdown sees it
//!   even if a call opened the pool again before the waiter looked.

/// Where a pool is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// It takes calls.
    Open,
    /// Shutting down: it takes no call; the queued and running jobs finish.
    Draining,
    /// Shutting down, past draining: its workers are closed and waited for.
    Reaping,
    /// Shut down, every worker reaped: the next call opens it again.
    Shut,
}

/// What a call of `shutdown` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shutdown {
    /// Shuts the pool down: drains it, then reaps its workers.
    Run,
    /// Waits until the count of shutdowns reaches this: another call of
    /// `shutdown` is under way.
    Wait(u64),
    /// Nothing: the pool is shut down already.
    Done,
}

/// A pool's phase and its count of shutdowns.
#[derive(Debug)]
pub(crate) struct Life {
    phase: Phase,
    /// Shutdowns completed.
    shutdowns: u64,
}

// ===== impl Life =====

impl Life {
    /// A new pool's: open, never shut down.
    pub(crate) fn new() -> Self {
        Life {
            phase: Phase::Open,
            shutdowns: 0,
        }
    }

    /// `shutdown` was called.
    pub(crate) fn shutdown(&mut self) -> Shutdown {
        match self.phase {
            Phase::Open => {
                self.phase = Phase::Draining;
                Shutdown::Run
            }
            Phase::Draining | Phase::Reaping => Shutdown::Wait(self.finished_at()),
            Phase::Shut => Shutdown::Done,
        }
    }

    /// The queue and the running jobs are done, or the time for them is up:
    /// the workers are closed next.
    pub(crate) fn drained(&mut self) {
        debug_assert_eq!(self.phase, Phase::Draining);
        self.phase = Phase::Reaping;
    }

    /// Every worker was reaped: the pool is shut down. The count of
    /// shutdowns it reached.
    pub(crate) fn reaped(&mut self) -> u64 {
        debug_assert_eq!(self.phase, Phase::Reaping);
        self.phase = Phase::Shut;
        self.shutdowns += 1;
        self.shutdowns
    }

    /// Shuts down at once, without waiting for anything (there is no
    /// runtime to wait on): the count of shutdowns it reached, or `None` if
    /// the pool was shut down already.
    pub(crate) fn end_now(&mut self) -> Option<u64> {
        if self.phase == Phase::Shut {
            return None;
        }
        self.phase = Phase::Shut;
        self.shutdowns += 1;
        Some(self.shutdowns)
    }

    /// A call found the pool closed: whether it opens it again (it was shut
    /// down, not shutting down).
    pub(crate) fn reopen(&mut self) -> bool {
        let shut = self.phase == Phase::Shut;
        if shut {
            self.phase = Phase::Open;
        }
        shut
    }

    /// The count of shutdowns that `finished` waits for: the one under way
    /// or the next one; the last one if the pool is shut down.
    pub(crate) fn finished_at(&self) -> u64 {
        match self.phase {
            Phase::Shut => self.shutdowns,
            Phase::Open | Phase::Draining | Phase::Reaping => self.shutdowns + 1,
        }
    }

    /// Whether the supervisor keeps working: the pool is open or draining.
    pub(crate) fn supervised(&self) -> bool {
        matches!(self.phase, Phase::Open | Phase::Draining)
    }

    /// Whether the pool is past draining: a worker that arrives now is
    /// killed.
    pub(crate) fn reaping(&self) -> bool {
        self.phase == Phase::Reaping
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shutdown_drains_reaps_then_counts() {
        let mut life = Life::new();
        assert_eq!(life.finished_at(), 1);
        assert!(life.supervised() && !life.reaping());
        assert_eq!(life.shutdown(), Shutdown::Run);
        assert_eq!(life.phase, Phase::Draining);
        assert!(
            life.supervised(),
            "the supervisor serves the queue while draining"
        );
        life.drained();
        assert!(!life.supervised() && life.reaping());
        assert_eq!(life.reaped(), 1);
        assert_eq!(life.phase, Phase::Shut);
        assert!(!life.supervised() && !life.reaping());
    }

    #[test]
    fn a_second_shutdown_waits_for_the_first_and_a_late_one_has_nothing_to_do() {
        let mut life = Life::new();
        assert_eq!(life.shutdown(), Shutdown::Run);
        assert_eq!(life.shutdown(), Shutdown::Wait(1));
        life.drained();
        assert_eq!(life.shutdown(), Shutdown::Wait(1));
        assert_eq!(life.reaped(), 1);
        assert_eq!(life.shutdown(), Shutdown::Done);
    }

    #[test]
    fn only_a_pool_shut_down_opens_again() {
        let mut life = Life::new();
        assert!(!life.reopen(), "an open pool opened again");
        life.shutdown();
        assert!(!life.reopen(), "a call opened a pool draining");
        life.drained();
        assert!(!life.reopen(), "a call opened a pool reaping");
        life.reaped();
        assert!(life.reopen());
        assert_eq!(life.phase, Phase::Open);
        assert!(life.supervised());
        // And it shuts down again, counted.
        assert_eq!(life.shutdown(), Shutdown::Run);
        life.drained();
        assert_eq!(life.reaped(), 2);
    }

    #[test]
    fn finished_waits_for_the_next_shutdown_or_none_if_shut() {
        let mut life = Life::new();
        // Taken while open: the end of the next shutdown.
        let open = life.finished_at();
        life.shutdown();
        // Taken while shutting down: the end of this one.
        assert_eq!(life.finished_at(), open);
        life.drained();
        assert_eq!(life.finished_at(), open);
        // The count this shutdown reaches is the one they wait for.
        let count = life.reaped();
        assert_eq!(count, open);
        // Taken while shut: at once.
        assert_eq!(life.finished_at(), count);
        // Opened again at once: a new waiter waits for the next shutdown,
        // and the count reached stays (the waiters above still see it).
        assert!(life.reopen());
        assert_eq!(life.finished_at(), count + 1);
        life.shutdown();
        life.drained();
        assert_eq!(life.reaped(), count + 1);
    }

    #[test]
    fn ending_now_counts_once() {
        let mut life = Life::new();
        assert_eq!(life.end_now(), Some(1));
        assert_eq!(life.end_now(), None, "a pool shut down was counted again");
        assert_eq!(life.finished_at(), 1);
        // Also in the middle of a shutdown.
        let mut life = Life::new();
        life.shutdown();
        assert_eq!(life.end_now(), Some(1));
        assert_eq!(life.phase, Phase::Shut);
    }
}
