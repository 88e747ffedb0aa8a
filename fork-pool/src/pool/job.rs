//! A job: one call through the pool, from the moment it is made until its
//! worker answers. On a free worker at once (the usual case, nothing boxed),
//! or the rest (queued, under a time limit, retried) boxed.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, ready};
use std::time::Duration;

use futures::future::Either;
use tarpc::client::RpcError;
use tarpc::context::Context;
use tokio::time::Instant;

use super::deadline::{self, within};
use super::lease::Lease;
use super::shared::Shared;
use super::spawn::{Conn, Spawn, Wire};
use crate::error::Error;

/// When a job's time runs out.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Expiry {
    /// At the deadline of this context, which counts from when it was
    /// made: the time the job waits in the queue counts.
    At(Context),
    /// This long after a worker takes the job (in a context made then):
    /// the time in the queue does not count.
    AfterStart(Duration),
}

impl Expiry {
    /// Until when the job may wait for a worker.
    fn queue_deadline(&self) -> Instant {
        match self {
            Expiry::At(ctx) => deadline::to_tokio(ctx.deadline),
            Expiry::AfterStart(_) => deadline::after(Instant::now(), deadline::FOREVER),
        }
    }

    /// The context of the call, as a worker takes the job.
    fn context(&self) -> Context {
        match self {
            Expiry::At(ctx) => *ctx,
            Expiry::AfterStart(timeout) => fork_rpc::context::with_timeout(*timeout),
        }
    }
}

/// A job's future.
pub(crate) enum Job<'a, S: Spawn, F> {
    /// The worker's call, and the place it holds (given back after the
    /// call is dropped: fields drop in order).
    Running(F, Lease<'a, S>),
    Other(Pin<Box<dyn Future<Output = Result<S::Resp, RpcError>> + Send + 'a>>),
    Failed(Option<Error>),
    Done,
}

impl<S, F> Future for Job<'_, S, F>
where
    S: Spawn,
    F: Future<Output = Result<S::Resp, RpcError>> + Unpin,
{
    type Output = Result<S::Resp, RpcError>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match this {
            Job::Running(call, lease) => {
                let result = ready!(Pin::new(call).poll(cx));
                lease.answered = lease.pool().finish(lease.id, &result);
                // Gives the place back.
                *this = Job::Done;
                Poll::Ready(result)
            }
            Job::Other(job) => job.as_mut().poll(cx),
            Job::Failed(e) => Poll::Ready(Err(e
                .take()
                .expect("a pool's call polled after it completed")
                .into_rpc())),
            Job::Done => panic!("a pool's call polled after it completed"),
        }
    }
}

// ===== impl Shared: running jobs =====

impl<S: Spawn> Shared<S> {
    /// A call made through the pool (`Stub::call`): its context as it
    /// enters the pool, then run once, or with retries if it is idempotent;
    /// timed for the metrics from now until its answer.
    pub(crate) fn call(
        self: &Arc<Self>,
        ctx: Context,
        request: S::Req,
    ) -> impl Future<Output = Result<S::Resp, RpcError>> + '_ {
        // The deadline is the context's, as given: the time spent waiting
        // in the queue counts against it.
        self.call_until(Expiry::At(ctx), request)
    }

    /// A call whose time runs out as `expiry` says.
    pub(crate) fn call_until(
        self: &Arc<Self>,
        expiry: Expiry,
        request: S::Req,
    ) -> impl Future<Output = Result<S::Resp, RpcError>> + '_ {
        let job = if self.retry.as_ref().is_some_and(|r| r.applies(&request)) {
            Job::Other(Box::pin(self.run_retrying(expiry, Arc::new(request))))
        } else {
            self.run(expiry, Wire::Owned(request))
        };
        self.metrics.time(job)
    }

    /// Runs one job on one worker: at once if a place is free and the job
    /// has no time limit, with nothing boxed; else queued or timed, boxed.
    pub(crate) fn run(
        self: &Arc<Self>,
        expiry: Expiry,
        request: Wire<S::Req>,
    ) -> Job<'_, S, impl Future<Output = Result<S::Resp, RpcError>> + Send + Unpin + 'static + use<S>>
    {
        if self.config.job_timeout.is_none() {
            match self.try_take() {
                Ok(Some(seat)) => {
                    let (lease, client) = Lease::new(self, seat);
                    return Job::Running(client.call(expiry.context(), request), lease);
                }
                Ok(None) => {}
                Err(e) => return Job::Failed(Some(e)),
            }
        }
        Job::Other(Box::pin(self.run_slowly(expiry, request)))
    }

    /// [`run`](Self::run) for a job that queues or has a time limit. A
    /// context's deadline counts while it waits for a place.
    pub(crate) async fn run_slowly(
        self: &Arc<Self>,
        expiry: Expiry,
        request: Wire<S::Req>,
    ) -> Result<S::Resp, RpcError> {
        let (mut lease, client) = match within(expiry.queue_deadline(), self.acquire()).await {
            Some(lease) => lease.map_err(Error::into_rpc)?,
            None => return Err(RpcError::DeadlineExceeded),
        };
        let result = self
            .call_on(&lease, client, expiry.context(), request)
            .await;
        lease.answered = self.finish(lease.id, &result);
        result
    }

    /// The call of a job on the worker it was given, within the time limit
    /// if there is one (boxed: a call without a limit carries no timer).
    fn call_on<'a>(
        self: &'a Arc<Self>,
        lease: &'a Lease<'a, S>,
        client: Arc<S::Conn>,
        ctx: Context,
        request: Wire<S::Req>,
    ) -> impl Future<Output = Result<S::Resp, RpcError>> + 'a {
        let call = client.call(ctx, request);
        match self.config.job_timeout {
            None => Either::Left(call),
            Some(limit) => Either::Right(Box::pin(self.run_within(limit, lease, call))),
        }
    }

    /// Runs a job with a time limit; past it, the worker is killed.
    async fn run_within(
        self: &Arc<Self>,
        limit: Duration,
        lease: &Lease<'_, S>,
        call: impl Future<Output = Result<S::Resp, RpcError>>,
    ) -> Result<S::Resp, RpcError> {
        match tokio::time::timeout(limit, call).await {
            Ok(result) => result,
            Err(_) => {
                self.timed_out(lease.id);
                Err(Error::Timeout {
                    limit,
                    pid: lease.pid,
                }
                .into_rpc())
            }
        }
    }

    /// A job on worker `id` ended: takes the worker out if it was lost or
    /// its connection broke. Whether the job was answered.
    pub(crate) fn finish(self: &Arc<Self>, id: u64, result: &Result<S::Resp, RpcError>) -> bool {
        let Err(e) = result else { return true };
        if let Some(lost) = fork_rpc::WorkerLost::find(e) {
            self.lost(id, lost);
        } else if !matches!(e, RpcError::DeadlineExceeded | RpcError::Server(_)) {
            // (A call past its deadline or answered with an error says
            // nothing of the connection: the next job will, if it broke.)
            let mut st = self.lock();
            if let Some(host) = st
                .dispatch
                .members
                .iter()
                .find(|m| m.id == id && m.client.is_closed())
                .map(|m| m.host)
            {
                // It sent what cannot be read: it serves nothing more.
                // (Counted once, by the first of its jobs to see it.)
                st.crashed_on(host);
                if let Some(pid) = self.kill(st, id) {
                    tracing::warn!(pid, error = %e, "worker's connection broke; killing it");
                }
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use fork_core::Signal;
    use tokio::time::Instant;

    use super::*;
    use crate::config::Config;
    use crate::pool::spawn::Process;
    use crate::pool::testing::{self, World, ctx, settle, work};

    const SEC: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn job_timeout_fails_the_job_and_kills_the_worker_after_the_grace() {
        let config = Config {
            max: 1,
            job_timeout: Some(SEC),
            kill_grace: 2 * SEC,
            ..Config::default()
        };
        let world = World {
            stuck: true,
            ..World::default()
        };
        let (pool, fake) = testing::pool(config, world);
        let t0 = Instant::now();
        let e = settle(pool.call(ctx(), work(60 * SEC))).await.unwrap_err();
        assert!(matches!(Error::find(&e), Some(Error::Timeout { limit, .. }) if *limit == SEC));
        assert_eq!(Instant::now() - t0, SEC);
        let mut worker = fake.world().workers[0].clone();
        settle(worker.wait()).await;
        let signals: Vec<(Signal, Duration)> = worker
            .signals()
            .into_iter()
            .map(|(s, at)| (s, at - t0))
            .collect();
        assert_eq!(
            signals,
            [(Signal::SIGTERM, SEC), (Signal::SIGKILL, 3 * SEC)]
        );
        assert_eq!(pool.stats().timed_out, 1);
        // The next job runs on a new worker.
        let pid = settle(pool.call(ctx(), work(Duration::from_millis(1))))
            .await
            .unwrap();
        assert_eq!(pid, fake.world().workers[1].pid);
        settle(pool.shutdown()).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_queued_call_fails_at_its_deadline_and_leaves_the_queue() {
        let config = Config {
            max: 1,
            load: 1,
            ..Config::default()
        };
        let (pool, _fake) = testing::pool(config, World::default());
        let mut short = tarpc::context::current();
        short.deadline = std::time::Instant::now() + 2 * SEC;
        let t0 = Instant::now();
        let (running, queued) = settle(async {
            tokio::join!(
                pool.call(ctx(), work(10 * SEC)),
                pool.call(short, work(SEC))
            )
        })
        .await;
        assert!(running.is_ok());
        assert!(matches!(queued, Err(RpcError::DeadlineExceeded)));
        assert_eq!(pool.stats().queued, 0);
        assert_eq!(Instant::now() - t0, 10 * SEC);
        settle(pool.shutdown()).await;
    }
}
