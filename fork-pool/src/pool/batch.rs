//! Batches: many calls through a pool with bounded work in flight, their
//! results in input order ([`Pool::map`]) or as they complete
//! ([`Pool::pipeline`]); and [`Pool::capacity`].

use std::future::Future;

use futures::{Stream, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tarpc::RequestName;

use super::Pool;

impl<Req, Resp, Ev> Pool<Req, Resp, Ev>
where
    Req: Serialize + DeserializeOwned + RequestName + Send + Sync + 'static,
    Resp: Serialize + DeserializeOwned + Send + Sync + 'static,
    Ev: DeserializeOwned + Send + Sync + 'static,
{
    /// Jobs that would start at once, without queueing: the free places
    /// (see [`Config::load`](crate::Config::load)) on the workers running
    /// now; 0 while jobs queue. The pool may still grow to
    /// [`Config::max`](crate::Config::max) workers (Coro::ProcessPool's
    /// `capacity`).
    pub fn capacity(&self) -> usize {
        self.handle.shared.lock().dispatch.free()
    }

    /// The most calls a batch keeps in flight: every place of a pool grown
    /// to its [`max`](crate::Config::max). More would only wait in the
    /// queue.
    fn batch_limit(&self) -> usize {
        let knobs = self.handle.shared.config.knobs();
        knobs.max * knobs.load
    }

    /// Calls `f` on every item, at most `max × load` calls in flight (as
    /// many as the workers of a full pool take), and yields the results in
    /// the order of the items (Coro::ProcessPool's `map`, Python's
    /// `executor.map`). Results come as soon as every earlier one has:
    /// count them for progress.
    ///
    /// `f` makes each call as its turn comes, so a context it makes
    /// (`pool.context()`) counts from then, not from the start of the batch;
    /// the calls do not age in the queue.
    ///
    /// ```no_run
    /// # use fork_rpc::jobs::Job;
    /// use futures::TryStreamExt;
    /// # fn square(x: u64) -> Result<u64, String> { Ok(x * x) }
    /// # static SQUARE: Job<u64, u64, String> = fork_rpc::job!(square);
    ///
    /// # async fn doc(pool: fork_pool::JobPool) -> Result<(), Box<dyn std::error::Error>> {
    /// let squares: Vec<u64> = pool.map(0..1000, |x| pool.run(&SQUARE, x)).try_collect().await?;
    /// assert_eq!(squares[999], 998_001);
    /// # Ok(())
    /// # }
    /// ```
    pub fn map<I, F, Fut>(
        &self,
        items: I,
        f: F,
    ) -> impl Stream<Item = Fut::Output> + use<Req, Resp, Ev, I, F, Fut>
    where
        I: IntoIterator,
        F: FnMut(I::Item) -> Fut,
        Fut: Future,
    {
        futures::stream::iter(items)
            .map(f)
            .buffered(self.batch_limit())
    }

    /// [`map`](Pool::map), yielding each result as soon as its call
    /// completes, whatever the order (Coro::ProcessPool's `pipeline`). To
    /// tell results apart, return the item with its result from `f`.
    pub fn pipeline<I, F, Fut>(
        &self,
        items: I,
        f: F,
    ) -> impl Stream<Item = Fut::Output> + use<Req, Resp, Ev, I, F, Fut>
    where
        I: IntoIterator,
        F: FnMut(I::Item) -> Fut,
        Fut: Future,
    {
        futures::stream::iter(items)
            .map(f)
            .buffer_unordered(self.batch_limit())
    }
}
