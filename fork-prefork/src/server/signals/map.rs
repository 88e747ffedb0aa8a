//! [`Signals`]: which signal does what, as Parallel::Prefork's
//! `trap_signals` table says it.

use std::time::Duration;

use fork_core::Signal;

/// What a trapped signal makes the server do, in [`Signals`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignalAction {
    /// A graceful [`stop`](crate::Prefork::stop); a second one while it is
    /// under way: a quick stop.
    Stop,
    /// A quick stop: the workers are killed at once.
    QuickStop,
    /// A [`reload`](crate::Prefork::reload) (with the reload callback;
    /// without one, logged).
    Reload,
    /// One worker more ([`resize_by(1)`](crate::Prefork::resize_by)).
    Grow,
    /// One worker fewer, never below 1 ([`resize_by(-1)`](crate::Prefork::resize_by)).
    Shrink,
    /// Nothing but noting it in
    /// [`signal_received`](crate::Prefork::signal_received): the signal no
    /// longer has its default action (Parallel::Prefork's `undef`).
    Ignore,
    /// Sends this signal to every worker at once
    /// ([`signal_all_children`](crate::Prefork::signal_all_children);
    /// Parallel::Prefork's `HUP => 'TERM'`).
    Forward(Signal),
    /// A rolling restart (Parallel::Prefork's `HUP => ['TERM', 5]`): sends
    /// `signal` to the workers running when it arrives, **one at a time**,
    /// oldest first (one still starting once it is ready). The next one gets it once the previous one has exited,
    /// no worker is starting (its replacement is ready), and `interval` has
    /// passed since the previous signal; so at most one worker is down at
    /// any time, and a worker that takes long to finish its connections
    /// holds the next one back. A worker still running a
    /// [`graceful_timeout`](crate::Config::graceful_timeout) after its
    /// signal (it ignores the signal) is left, and the next one gets it.
    ///
    /// `SIGTERM` is the usual signal: a worker finishes its open
    /// connections and exits 0 (its reap says
    /// [`Stopped`](crate::ExitReason::Stopped)), and the server starts a
    /// replacement, from the current template. A signal that ends the
    /// worker at once (`SIGKILL`, or one it does not handle) drops its
    /// connections; its reap says [`Killed`](crate::ExitReason::Killed).
    ///
    /// The same signal again while a rolling restart runs starts it over:
    /// every worker serving then that it has not signalled yet is queued
    /// again, oldest first (those it already replaced included, so each
    /// is restarted after the newest request), with the newer request's
    /// signal and interval; the worker being replaced is waited for
    /// first, as always. Two rolling restarts never run at once.
    Rolling {
        /// The signal each worker gets.
        signal: Signal,
        /// The least time between two workers' signals.
        interval: Duration,
    },
}

impl SignalAction {
    /// The order signals noticed together are acted on: stops first, then
    /// a reload, a rolling restart, resizes, and forwarding.
    pub(super) fn rank(self) -> u8 {
        match self {
            SignalAction::Stop | SignalAction::QuickStop => 0,
            SignalAction::Reload => 1,
            SignalAction::Rolling { .. } => 2,
            SignalAction::Shrink => 3,
            SignalAction::Grow => 4,
            SignalAction::Forward(_) => 5,
            SignalAction::Ignore => 6,
        }
    }
}

/// Which signals the server traps, and what each does: the table
/// [`Prefork::trap_signals_with`](crate::Prefork::trap_signals_with)
/// installs (Parallel::Prefork's `trap_signals`). Signals not in it keep
/// their disposition.
///
/// [`Signals::default()`] is gunicorn's table, the one
/// [`trap_signals`](crate::Prefork::trap_signals) installs:
///
/// | signal | action |
/// |---|---|
/// | `SIGTERM` | [`Stop`](SignalAction::Stop) (a second one: quick) |
/// | `SIGINT`, `SIGQUIT` | [`QuickStop`](SignalAction::QuickStop) |
/// | `SIGHUP` | [`Reload`](SignalAction::Reload) |
/// | `SIGTTIN`, `SIGTTOU` | [`Grow`](SignalAction::Grow), [`Shrink`](SignalAction::Shrink) |
/// | `SIGUSR1`, `SIGUSR2` | [`Forward`](SignalAction::Forward) the same signal |
///
/// ```
/// use std::time::Duration;
/// use fork_core::Signal;
/// use fork_prefork::{SignalAction, Signals};
///
/// // Parallel::Prefork's `trap_signals => { TERM => 'TERM', HUP => ['TERM', 5] }`:
/// // TERM stops, HUP restarts the workers one every 5 s.
/// let signals = Signals::empty()
///     .on(Signal::SIGTERM, SignalAction::Stop)
///     .on(Signal::SIGHUP, SignalAction::Rolling {
///         signal: Signal::SIGTERM,
///         interval: Duration::from_secs(5),
///     });
/// assert_eq!(signals.action(Signal::SIGINT), None);
///
/// // The default table, with HUP a rolling restart instead of a reload.
/// let signals = Signals::default().on(Signal::SIGHUP, SignalAction::Rolling {
///     signal: Signal::SIGTERM,
///     interval: Duration::from_secs(1),
/// });
/// assert_eq!(signals.action(Signal::SIGTERM), Some(SignalAction::Stop));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signals {
    /// At most one action per signal, in the order they were set.
    actions: Vec<(Signal, SignalAction)>,
}

impl Default for Signals {
    /// gunicorn's table (see [`Signals`]).
    fn default() -> Self {
        Signals::empty()
            .on(Signal::SIGTERM, SignalAction::Stop)
            .on(Signal::SIGINT, SignalAction::QuickStop)
            .on(Signal::SIGQUIT, SignalAction::QuickStop)
            .on(Signal::SIGHUP, SignalAction::Reload)
            .on(Signal::SIGTTIN, SignalAction::Grow)
            .on(Signal::SIGTTOU, SignalAction::Shrink)
            .on(Signal::SIGUSR1, SignalAction::Forward(Signal::SIGUSR1))
            .on(Signal::SIGUSR2, SignalAction::Forward(Signal::SIGUSR2))
    }
}

impl Signals {
    /// A table that traps no signal.
    pub fn empty() -> Signals {
        Signals {
            actions: Vec::new(),
        }
    }

    /// Traps `signal` to do `action`, in place of what the table said for
    /// it.
    pub fn on(mut self, signal: Signal, action: SignalAction) -> Signals {
        match self.actions.iter_mut().find(|(s, _)| *s == signal) {
            Some(entry) => entry.1 = action,
            None => self.actions.push((signal, action)),
        }
        self
    }

    /// Leaves `signal` untrapped (its disposition unchanged).
    pub fn remove(mut self, signal: Signal) -> Signals {
        self.actions.retain(|(s, _)| *s != signal);
        self
    }

    /// What `signal` does, if it is trapped.
    pub fn action(&self, signal: Signal) -> Option<SignalAction> {
        self.actions
            .iter()
            .find(|(s, _)| *s == signal)
            .map(|&(_, a)| a)
    }

    /// The trapped signals and their actions, in the order they are acted
    /// on when noticed together (stops first, then a reload, a rolling
    /// restart, resizes, forwarding, the ignored ones).
    pub fn iter(&self) -> impl Iterator<Item = (Signal, SignalAction)> + '_ {
        let mut actions = self.actions.clone();
        actions.sort_by_key(|&(_, a)| a.rank());
        actions.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_table_is_gunicorns_in_the_order_acted_on() {
        let order: Vec<Signal> = Signals::default().iter().map(|(s, _)| s).collect();
        assert_eq!(
            order,
            [
                Signal::SIGTERM,
                Signal::SIGINT,
                Signal::SIGQUIT,
                Signal::SIGHUP,
                Signal::SIGTTOU,
                Signal::SIGTTIN,
                Signal::SIGUSR1,
                Signal::SIGUSR2,
            ]
        );
    }

    #[test]
    fn on_replaces_and_remove_untraps() {
        let s = Signals::default()
            .on(Signal::SIGHUP, SignalAction::Forward(Signal::SIGTERM))
            .remove(Signal::SIGUSR2)
            .on(Signal::SIGWINCH, SignalAction::Ignore);
        assert_eq!(
            s.action(Signal::SIGHUP),
            Some(SignalAction::Forward(Signal::SIGTERM))
        );
        assert_eq!(s.action(Signal::SIGUSR2), None);
        assert_eq!(s.iter().count(), 8);
        assert_eq!(
            s.iter().last(),
            Some((Signal::SIGWINCH, SignalAction::Ignore))
        );
    }
}
