//! Deadlines: tarpc's implicit 10 s, a per-client default, and per-call
//! overrides.
//!
//! Every tarpc call carries a [`Context`] whose deadline ends the call with
//! `RpcError::DeadlineExceeded` (and cancels it in the worker).
//! `tarpc::context::current()` sets it 10 s ahead, which kills long jobs by
//! surprise. fork-rpc keeps tarpc's meaning but lets you choose:
//!
//! - **per client**: [`Config::default_timeout`](crate::Config::default_timeout)
//!   replaces tarpc's implicit deadline for calls made with a context from
//!   `context::current()`;
//! - **per call**: [`with_timeout`] (or setting `ctx.deadline` yourself)
//!   makes a context whose deadline the client leaves alone.
//!
//! A context counts as implicit when its deadline is 10 s (minus up to
//! [`IMPLICIT_WINDOW`]) ahead, which is what `context::current()` makes; an
//! explicit deadline of between 9.5 and 10 s ahead is treated as implicit.

use std::future::Future;
use std::time::{Duration, Instant};

pub use tarpc::context::Context;

/// tarpc's implicit deadline.
const TARPC_DEFAULT: Duration = Duration::from_secs(10);

/// How old a `context::current()` may be and still count as implicit.
pub const IMPLICIT_WINDOW: Duration = Duration::from_millis(500);

/// A context whose deadline is `timeout` from now (a per-call override).
pub fn with_timeout(timeout: Duration) -> Context {
    let mut ctx = tarpc::context::current();
    ctx.deadline = after(Instant::now(), timeout);
    ctx
}

/// A century: the longest timeout kept as given. A longer one (up to
/// `Duration::MAX`, "no limit") is taken as this, rather than overflow the
/// clock.
pub const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `now + timeout`, with timeouts beyond [`FOREVER`] taken as that.
pub fn after(now: Instant, timeout: Duration) -> Instant {
    now + timeout.min(FOREVER)
}

/// Applies a client's default timeout to `ctx` if it carries tarpc's
/// implicit deadline (see the module docs); other contexts are returned as
/// they are. For code that queues calls before they reach a
/// [`Client`](crate::Client), such as a pool, so the wait counts.
pub fn apply_default(mut ctx: Context, default_timeout: Option<Duration>) -> Context {
    if let Some(timeout) = default_timeout
        && is_implicit(&ctx)
    {
        ctx.deadline = after(Instant::now(), timeout);
    }
    ctx
}

/// Runs `fut` until `deadline`, on the real clock (`std::time::Instant`, the
/// clock of tarpc's deadlines): `None` if the deadline passed first. For
/// code that waits on a call's behalf before it reaches a
/// [`Client`](crate::Client), such as a pool's queue.
///
/// The wait is on the runtime's timer, which need not follow the real
/// clock: on tokio's paused clock (tests), the timer fires as soon as the
/// runtime is idle; the time left is then measured again and waited again,
/// so the deadline still counts in real time.
pub async fn within<F: Future>(deadline: Instant, fut: F) -> Option<F::Output> {
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

/// Whether `ctx` carries tarpc's implicit deadline.
pub(crate) fn is_implicit(ctx: &Context) -> bool {
    let now = Instant::now();
    let latest = now + TARPC_DEFAULT;
    ctx.deadline <= latest && ctx.deadline + IMPLICIT_WINDOW > latest
}
