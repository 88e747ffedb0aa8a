//! Deadlines on tokio's clock: the pool's own `after`, `FOREVER` and
//! `within`, and the one place where a call's tarpc deadline (on the real
//! clock, `std::time::Instant`) enters the pool ([`to_tokio`]).
//!
//! Everything inside the pool measures time with [`tokio::time::Instant`],
//! so that its lifecycle can be tested on tokio's paused clock. A call's
//! deadline is converted once, when the call is made.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// A century: the longest timeout kept as given. A longer one (up to
/// `Duration::MAX`, "never") is taken as this, rather than overflow the
/// clock.
pub(crate) const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `now + timeout`, with timeouts beyond [`FOREVER`] taken as that.
pub(crate) fn after(now: Instant, timeout: Duration) -> Instant {
    now + timeout.min(FOREVER)
}

/// Runs `fut` until `deadline`: `None` if the deadline passed first.
pub(crate) async fn within<F: Future>(deadline: Instant, fut: F) -> Option<F::Output> {
    tokio::time::timeout_at(deadline, fut).await.ok()
}

/// A tarpc deadline (on the real clock) as an instant on tokio's clock:
/// the time left now, from tokio's now.
pub(crate) fn to_tokio(deadline: std::time::Instant) -> Instant {
    let left = deadline.saturating_duration_since(std::time::Instant::now());
    after(Instant::now(), left)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_deadline_keeps_the_time_left_on_the_paused_clock() {
        let deadline = to_tokio(std::time::Instant::now() + Duration::from_secs(5));
        let left = deadline - Instant::now();
        assert!(left <= Duration::from_secs(5) && left > Duration::from_secs(4));
        // A deadline already past is now.
        let past = to_tokio(std::time::Instant::now() - Duration::from_secs(1));
        assert!(past <= Instant::now());
        // "Never" does not overflow.
        assert!(after(Instant::now(), Duration::MAX) > Instant::now());
        assert_eq!(
            within(
                Instant::now() + Duration::from_secs(1),
                std::future::pending::<()>()
            )
            .await,
            None
        );
        assert_eq!(
            within(Instant::now() + Duration::from_secs(1), async { 7 }).await,
            Some(7)
        );
    }
}
