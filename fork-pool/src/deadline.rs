//! Time limits on the real clock, as tarpc's deadlines are.

use std::future::Future;
use std::time::{Duration, Instant};

/// A century: the longest duration kept as given. A longer one (up to
/// `Duration::MAX`, "never") is taken as this, rather than overflow the
/// clock.
pub(crate) const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `now + timeout`, with timeouts beyond [`FOREVER`] taken as that.
pub(crate) fn after(now: Instant, timeout: Duration) -> Instant {
    now + timeout.min(FOREVER)
}

/// Runs `fut` until `deadline` (a call's, on the real clock): `None` if the
/// deadline passed first.
///
/// The wait is on the runtime's timer, which need not follow the real
/// clock: on tokio's paused clock (tests), the timer fires as soon as the
/// runtime is idle; the time left is then measured again and waited again,
/// so the deadline still counts in real time.
pub(crate) async fn within<F: Future>(deadline: Instant, fut: F) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left.min(FOREVER), fut.as_mut()).await {
            Ok(output) => return Some(output),
            Err(_) if left.is_zero() => return None,
            Err(_) => {}
        }
    }
}
