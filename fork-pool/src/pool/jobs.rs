//! Jobs that are plain functions ([`fork_rpc::jobs`]) on a pool: a pool
//! of workers serving [`fork_rpc::jobs::ENTRY`], and the calls that run a
//! [`Job`] on it.

use std::future::Future;
use std::time::Duration;

use fork_rpc::jobs::{ENTRY, Job, JobCall, JobError, JobReply};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tarpc::context::Context;

use super::job::Expiry;
use super::{Builder, Pool};

/// A pool whose workers run plain function jobs: made with
/// [`Pool::jobs`], called with [`Pool::run`].
pub type JobPool = Pool<JobCall, JobReply>;

/// tarpc's deadline for a call whose context has none of its own.
const TARPC_TIMEOUT: Duration = Duration::from_secs(10);

impl Pool<JobCall, JobReply> {
    /// Starts building a pool of workers forked from `template` that run
    /// every [`Job`] of the program (workers serving
    /// [`fork_rpc::jobs::ENTRY`]): no service to define.
    pub fn jobs(template: fork_core::Template) -> Builder<JobCall, JobReply, ()> {
        Pool::builder(template, &ENTRY)
    }

    /// Runs `job` on `args` on a worker of the pool (Coro::ProcessPool's
    /// `process`, Python's `executor.submit`) and returns what the
    /// function returned: its value, or its error as
    /// [`JobError::Failed`]; [`JobError::Call`] if the job could not run
    /// to its end.
    ///
    /// The job's deadline counts from when a worker takes it, not from this
    /// call: the workers' [`default_timeout`](fork_rpc::Config::default_timeout)
    /// (tarpc's 10 s if there is none). So a batch of any size, submitted
    /// at once, completes: time in the queue does not count. For a
    /// deadline that does count it, use [`run_with`](Pool::run_with).
    ///
    /// ```no_run
    /// # use fork_rpc::jobs::Job;
    /// fn square(x: u64) -> Result<u64, String> {
    ///     x.checked_mul(x).ok_or_else(|| format!("{x} squared overflows"))
    /// }
    /// static SQUARE: Job<u64, u64, String> = fork_rpc::job!(square);
    ///
    /// # async fn doc(pool: fork_pool::JobPool) -> Result<(), Box<dyn std::error::Error>> {
    /// assert_eq!(pool.run(&SQUARE, 12).await?, 144);
    /// # Ok(())
    /// # }
    /// ```
    pub fn run<A, T, E>(
        &self,
        job: &Job<A, T, E>,
        args: A,
    ) -> impl Future<Output = Result<T, JobError<E>>> + Send + use<'_, A, T, E>
    where
        A: Serialize,
        T: DeserializeOwned,
        E: DeserializeOwned,
    {
        let timeout = self
            .handle
            .shared
            .config
            .rpc
            .default_timeout
            .unwrap_or(TARPC_TIMEOUT);
        self.run_until(Expiry::AfterStart(timeout), *job, args)
    }

    /// [`run`](Pool::run) within `ctx`: the job fails with
    /// `RpcError::DeadlineExceeded` at the context's deadline, time spent
    /// waiting in the queue included.
    pub fn run_with<A, T, E>(
        &self,
        ctx: Context,
        job: &Job<A, T, E>,
        args: A,
    ) -> impl Future<Output = Result<T, JobError<E>>> + Send + use<'_, A, T, E>
    where
        A: Serialize,
        T: DeserializeOwned,
        E: DeserializeOwned,
    {
        self.run_until(Expiry::At(ctx), *job, args)
    }

    fn run_until<A, T, E>(
        &self,
        expiry: Expiry,
        job: Job<A, T, E>,
        args: A,
    ) -> impl Future<Output = Result<T, JobError<E>>> + Send + use<'_, A, T, E>
    where
        A: Serialize,
        T: DeserializeOwned,
        E: DeserializeOwned,
    {
        let call = job
            .request(&args)
            .map(|request| self.handle.shared.call_until(expiry, request));
        async move {
            let reply = call?.await?;
            job.response(reply)
        }
    }
}
