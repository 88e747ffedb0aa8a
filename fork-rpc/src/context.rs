//! Deadlines: tarpc's 10 s, a client's default, and per-call deadlines.
//!
//! Every tarpc call carries a [`Context`](tarpc::context::Context) whose
//! deadline ends the call with `RpcError::DeadlineExceeded` (and cancels it
//! in the worker). fork-rpc never rewrites a context's deadline: the call
//! ends when the context you pass says. You choose it one of three ways:
//!
//! - **tarpc's**: `tarpc::context::current()` expires 10 s from now (or at
//!   the deadline of the request being served, inside a handler);
//! - **the client's default**: [`Client::context`](crate::Client::context)
//!   makes a context expiring after the client's
//!   [`Config::default_timeout`](crate::Config::default_timeout) (tarpc's
//!   10 s if it has none); a pool has the same;
//! - **per call**: [`with_timeout`], or set `ctx.deadline` yourself.
//!
//! ```no_run
//! # use std::time::Duration;
//! # async fn doc(client: fork_rpc::Client<String, String>) -> Result<(), tarpc::client::RpcError> {
//! use tarpc::client::stub::Stub;
//!
//! // A minute, as the client's configuration says (Config::default_timeout).
//! let reply = client.call(client.context(), "slow job".into()).await?;
//! // Half a second for this call only.
//! let reply = client.call(fork_rpc::context::with_timeout(Duration::from_millis(500)), "ping".into()).await?;
//! # Ok(())
//! # }
//! ```
//!
//! Until 0.2 a client guessed: a deadline between 9.5 and 10 s ahead was
//! taken for `context::current()`'s and replaced by the default, which also
//! rewrote an explicit deadline of 9.7 s. There is no guess any more.

use std::future::Future;
use std::time::{Duration, Instant};

/// A context whose deadline is `timeout` from now, with tarpc's current
/// trace context. `Duration::MAX` means no limit (taken as a century, so
/// that the clock does not overflow).
pub fn with_timeout(timeout: Duration) -> tarpc::context::Context {
    let mut ctx = tarpc::context::current();
    ctx.deadline = after(Instant::now(), timeout);
    ctx
}

/// tarpc's current context, expiring `timeout` from now if there is one
/// (tarpc's 10 s otherwise): what [`Config::context`](crate::Config::context)
/// and [`Client::context`](crate::Client::context) make.
pub(crate) fn with_default(timeout: Option<Duration>) -> tarpc::context::Context {
    match timeout {
        Some(timeout) => with_timeout(timeout),
        None => tarpc::context::current(),
    }
}

/// A century: the longest timeout kept as given. A longer one (up to
/// `Duration::MAX`, "no limit") is taken as this, rather than overflow the
/// clock.
pub(crate) const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `now + timeout`, with timeouts beyond [`FOREVER`] taken as that.
pub(crate) fn after(now: Instant, timeout: Duration) -> Instant {
    now + timeout.min(FOREVER)
}

/// Runs `fut` until `deadline`, on the real clock (`std::time::Instant`, the
/// clock of tarpc's deadlines): `None` if the deadline passed first.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeout_beyond_a_century_is_a_century() {
        let now = Instant::now();
        assert_eq!(after(now, Duration::MAX), now + FOREVER);
        assert_eq!(
            after(now, Duration::from_secs(3)),
            now + Duration::from_secs(3)
        );
    }

    #[test]
    fn with_timeout_sets_the_deadline_it_is_given() {
        let before = Instant::now();
        let ctx = with_timeout(Duration::from_millis(9_700));
        let left = ctx.deadline - before;
        assert!(left >= Duration::from_millis(9_700), "{left:?}");
        assert!(left < Duration::from_millis(9_900), "{left:?}");
    }
}
