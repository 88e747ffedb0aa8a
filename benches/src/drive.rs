//! What a round does: runs operations for about a given time and returns
//! how many it did and how long that took.
//!
//! - [`calls`]: one task keeps N calls in flight (the rpc and pool
//!   benches).
//! - [`in_flight`]: N tasks each run an operation in a loop (template
//!   spawns).
//! - [`repeat`]: this thread runs a synchronous operation in a loop (raw
//!   forks).

use std::error::Error;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::task::JoinSet;

use crate::BoxResult;

/// A client that makes calls which return their argument (an echo, or a
/// job that returns `x` after its work).
pub trait Caller: Send + Sync + 'static {
    /// What a call is asked to do besides (`()` if calls are all alike).
    type Work: Copy + Send + Sync + 'static;
    /// How a call fails.
    type Error: Error + Send + Sync + 'static;

    /// One call, doing `work`, that must return `x`.
    fn call(
        &self,
        work: Self::Work,
        x: u64,
    ) -> impl Future<Output = Result<u64, Self::Error>> + Send + '_;
}

// ANCHOR: calls
/// Keeps `depth` calls in flight from one task, starting a new one as soon
/// as one returns, until `len` has passed; then waits for the last ones.
/// With `depth` 1, one call after the other.
pub async fn calls<C: Caller>(
    client: Arc<C>,
    work: C::Work,
    depth: usize,
    len: Duration,
) -> BoxResult<(u64, Duration)> {
    let start = Instant::now();
    let deadline = start + len;
    let call = |x: u64| {
        let client = &client;
        async move {
            let y = client.call(work, x).await?;
            if y != x {
                return Err(format!("call({x}) returned {y}").into());
            }
            BoxResult::Ok(())
        }
    };
    // Serial calls are a plain loop, as a caller would write them. (A
    // `FuturesUnordered` holding one future wakes its task again every
    // time that future is pending, which costs an extra scheduling per call.)
    if depth == 1 {
        let mut done = 0;
        while done == 0 || Instant::now() < deadline {
            call(done).await?;
            done += 1;
        }
        return Ok((done, start.elapsed()));
    }
    let mut running = FuturesUnordered::new();
    let mut next = 0u64;
    for _ in 0..depth {
        running.push(call(next));
        next += 1;
    }
    let mut done = 0;
    while let Some(result) = running.next().await {
        result?;
        done += 1;
        if Instant::now() < deadline {
            running.push(call(next));
            next += 1;
        }
    }
    Ok((done, start.elapsed()))
}
// ANCHOR_END: calls

/// Runs `op` over and over in `depth` tokio tasks (so `depth` operations are
/// in flight) until `len` has passed, and waits for the last ones.
///
/// # Panics
///
/// Outside a tokio runtime.
pub async fn in_flight<F, Fut>(len: Duration, depth: usize, op: F) -> BoxResult<(u64, Duration)>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = BoxResult<()>> + Send + 'static,
{
    let start = Instant::now();
    let deadline = start + len;
    let mut tasks = JoinSet::new();
    for _ in 0..depth {
        let op = op.clone();
        tasks.spawn(async move {
            let mut done = 0u64;
            while Instant::now() < deadline {
                op().await?;
                done += 1;
            }
            BoxResult::Ok(done)
        });
    }
    let mut done = 0;
    while let Some(result) = tasks.join_next().await {
        done += result??;
    }
    Ok((done, start.elapsed()))
}

/// Runs the synchronous `op` until `len` has passed or `max` operations are
/// done.
///
/// # Errors
///
/// The first error of `op`.
pub fn repeat(
    len: Duration,
    max: u64,
    mut op: impl FnMut() -> io::Result<()>,
) -> BoxResult<(u64, Duration)> {
    let start = Instant::now();
    let mut done = 0;
    while done < max && start.elapsed() < len {
        op()?;
        done += 1;
    }
    Ok((done, start.elapsed()))
}
