//! The hosts policy: where a new worker goes, and when a host is tried
//! again. Pure functions of the hosts' state and the time, as the scaling
//! policy ([`crate::scale`]) is; the supervisor applies them.
//!
//! - **Placement**: a new worker goes to the host, among those that can take
//!   one now, with the fewest workers (ready and starting) per unit of
//!   weight once it is there; ties go to the host listed first. A host can
//!   take one when it is below its own `max`, is not waiting out a back-off
//!   and was not lost for good (a host being connected takes workers: they
//!   wait for the connection).
//! - **Spawns that fail** on a host back it off: 50 ms, doubling up to 5 s
//!   (a failing init hook, `fork` at the process limit). The other hosts go
//!   on.
//! - **A host lost** (its connection ended, or its keepalive went
//!   unanswered) is down: tried again after 1 s, doubling up to 60 s, each
//!   delay shortened by up to a quarter at random so that the pools of many
//!   parents do not all knock at once; up again once a connection works.
//! - When no host can take a worker now, the earliest time one may.

use std::time::Duration;

use tokio::time::Instant;

/// Back-off after failed spawns on one host: first delay and ceiling.
pub(crate) const SPAWN_BACKOFF_FIRST: Duration = Duration::from_millis(50);
pub(crate) const SPAWN_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Back-off of a lost host between attempts to connect again.
pub(crate) const DOWN_BACKOFF_FIRST: Duration = Duration::from_secs(1);
pub(crate) const DOWN_BACKOFF_MAX: Duration = Duration::from_secs(60);

/// One host as placement sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HostView {
    /// Its workers, ready and starting.
    pub(crate) workers: usize,
    /// Its own limit of workers, if it has one.
    pub(crate) max: Option<usize>,
    /// Its share: a host of weight 2 gets twice the workers of a host of
    /// weight 1 (at least 1).
    pub(crate) weight: u32,
    /// It takes no worker before this (a back-off).
    pub(crate) not_before: Option<Instant>,
    /// It takes no worker at all: it was lost for good.
    pub(crate) unavailable: bool,
}

/// Where the next worker goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    /// On this host (its index).
    On(usize),
    /// Nowhere now; a host may take one at this time (`None`: only once
    /// a worker leaves or a connection is made).
    Wait(Option<Instant>),
}

/// Where a new worker goes at `now`.
pub(crate) fn place(hosts: &[HostView], now: Instant) -> Place {
    let mut best: Option<usize> = None;
    let mut wake: Option<Instant> = None;
    for (i, h) in hosts.iter().enumerate() {
        if h.unavailable || h.max.is_some_and(|max| h.workers >= max) {
            continue;
        }
        if let Some(at) = h.not_before.filter(|&at| at > now) {
            wake = Some(wake.map_or(at, |w| w.min(at)));
            continue;
        }
        // Fewer workers per weight once this one is there: compare
        // (workers + 1) / weight across hosts without dividing.
        let better = best.is_none_or(|b| {
            let (hb, ha) = (&hosts[b], h);
            (ha.workers as u128 + 1) * u128::from(hb.weight.max(1))
                < (hb.workers as u128 + 1) * u128::from(ha.weight.max(1))
        });
        if better {
            best = Some(i);
        }
    }
    best.map_or(Place::Wait(wake), Place::On)
}

/// The back-off after `failures` failed spawns in a row on a host (at
/// least one).
pub(crate) fn spawn_backoff(failures: u32) -> Duration {
    doubling(SPAWN_BACKOFF_FIRST, SPAWN_BACKOFF_MAX, failures)
}

/// How long a lost host stays down after `failures` lost connections or
/// failed attempts to connect in a row (at least one), shortened by
/// `jitter` (in `0.0..1.0`) times a quarter.
pub(crate) fn down_backoff(failures: u32, jitter: f64) -> Duration {
    let full = doubling(DOWN_BACKOFF_FIRST, DOWN_BACKOFF_MAX, failures);
    full.mul_f64(1.0 - jitter.clamp(0.0, 1.0) / 4.0)
}

fn doubling(first: Duration, max: Duration, failures: u32) -> Duration {
    first
        .saturating_mul(1 << failures.clamp(1, 17).saturating_sub(1))
        .min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn host(workers: usize) -> HostView {
        HostView {
            workers,
            max: None,
            weight: 1,
            not_before: None,
            unavailable: false,
        }
    }

    /// Places `n` workers one after another, as the supervisor does.
    fn fill(hosts: &mut [HostView], n: usize, now: Instant) -> Vec<usize> {
        let mut order = Vec::new();
        for _ in 0..n {
            match place(hosts, now) {
                Place::On(i) => {
                    hosts[i].workers += 1;
                    order.push(i);
                }
                Place::Wait(_) => break,
            }
        }
        order
    }

    #[test]
    fn workers_spread_evenly_ties_to_the_first_listed() {
        let now = Instant::now();
        let mut hosts = [host(0), host(0), host(0)];
        assert_eq!(fill(&mut hosts, 7, now), [0, 1, 2, 0, 1, 2, 0]);
        // A host that has more already gets none until the others catch up.
        let mut hosts = [host(3), host(0)];
        assert_eq!(fill(&mut hosts, 4, now), [1, 1, 1, 0]);
    }

    #[test]
    fn weights_share_workers_in_proportion() {
        let now = Instant::now();
        let mut hosts = [
            HostView {
                weight: 2,
                ..host(0)
            },
            host(0),
        ];
        let order = fill(&mut hosts, 9, now);
        assert_eq!(order, [0, 0, 1, 0, 0, 1, 0, 0, 1]);
        // A weight of 0 counts as 1.
        let mut hosts = [
            HostView {
                weight: 0,
                ..host(0)
            },
            host(0),
        ];
        assert_eq!(fill(&mut hosts, 2, now), [0, 1]);
    }

    #[test]
    fn a_host_at_its_max_takes_no_more() {
        let now = Instant::now();
        let mut hosts = [
            HostView {
                max: Some(1),
                ..host(0)
            },
            HostView {
                max: Some(2),
                ..host(0)
            },
        ];
        assert_eq!(fill(&mut hosts, 5, now), [0, 1, 1]);
        assert_eq!(place(&hosts, now), Place::Wait(None));
    }

    #[test]
    fn hosts_backing_off_or_unavailable_are_skipped_and_the_earliest_is_waited_for() {
        let now = Instant::now();
        let hosts = [
            HostView {
                not_before: Some(now + 3 * SEC),
                ..host(0)
            },
            HostView {
                not_before: Some(now + 2 * SEC),
                ..host(0)
            },
            HostView {
                unavailable: true,
                ..host(0)
            },
            host(5),
        ];
        // The host with 5 workers is the only one that can take one.
        assert_eq!(place(&hosts, now), Place::On(3));
        assert_eq!(place(&hosts[..3], now), Place::Wait(Some(now + 2 * SEC)));
        // Once the back-off is over, the empty host is preferred again.
        assert_eq!(place(&hosts, now + 2 * SEC), Place::On(1));
        // A back-off that ended is no back-off.
        assert_eq!(place(&hosts[..1], now + 3 * SEC), Place::On(0));
    }

    #[test]
    fn spawn_backoff_doubles_to_its_ceiling() {
        let ms = Duration::from_millis(1);
        assert_eq!(spawn_backoff(0), 50 * ms);
        assert_eq!(spawn_backoff(1), 50 * ms);
        assert_eq!(spawn_backoff(3), 200 * ms);
        assert_eq!(spawn_backoff(8), SPAWN_BACKOFF_MAX);
        assert_eq!(spawn_backoff(u32::MAX), SPAWN_BACKOFF_MAX);
    }

    #[test]
    fn a_down_host_waits_one_second_doubling_to_a_minute_less_its_jitter() {
        assert_eq!(down_backoff(1, 0.0), SEC);
        assert_eq!(down_backoff(2, 0.0), 2 * SEC);
        assert_eq!(down_backoff(6, 0.0), 32 * SEC);
        assert_eq!(down_backoff(7, 0.0), 60 * SEC);
        assert_eq!(down_backoff(40, 0.0), 60 * SEC);
        // Jitter shortens by up to a quarter, never lengthens.
        assert_eq!(down_backoff(3, 1.0), 3 * SEC);
        assert_eq!(down_backoff(3, 0.5), Duration::from_millis(3500));
        assert_eq!(down_backoff(3, 7.0), 3 * SEC);
    }
}
