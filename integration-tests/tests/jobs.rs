//! Plain function jobs (`fork_rpc::job!`) end to end: on one worker and on a
//! pool, with every pool guarantee (deadlines, crashes, panics, recycling,
//! time limits), batches (`map`, `pipeline`) and `capacity`.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fork_core::{InitFn, Template};
use fork_pool::Pool;
use fork_rpc::jobs::{Job, JobError};
use fork_rpc::{RpcWorker, WorkerLost};
use futures::{StreamExt, TryStreamExt};
use integration_tests::{Failed, all_exit, block_on, ensure, fail};
use serde::{Deserialize, Serialize};
use tarpc::client::RpcError;

// ===== the jobs =====

static PRELOADED: AtomicU64 = AtomicU64::new(0);

fn preload(v: u64) -> Result<(), String> {
    PRELOADED.store(v, Ordering::SeqCst);
    Ok(())
}
static PRELOAD: InitFn<u64> = fork_core::init_fn!(preload);

fn square(x: u64) -> Result<u64, String> {
    x.checked_mul(x)
        .ok_or_else(|| format!("{x} squared overflows"))
}
static SQUARE: Job<u64, u64, String> = fork_rpc::job!(square);

/// What a worker knows of itself.
#[derive(Debug, Serialize, Deserialize)]
struct Whoami {
    pid: u32,
    preloaded: u64,
    text: String,
}

fn whoami(text: String) -> Result<Whoami, String> {
    Ok(Whoami {
        pid: std::process::id(),
        preloaded: PRELOADED.load(Ordering::SeqCst),
        text,
    })
}
static WHOAMI: Job<String, Whoami, String> = fork_rpc::job!(whoami, name = "tests::whoami");

/// Blocks the worker for `ms`; its pid.
fn nap(ms: u64) -> Result<u32, ()> {
    std::thread::sleep(Duration::from_millis(ms));
    Ok(std::process::id())
}
static NAP: Job<u64, u32, ()> = fork_rpc::job!(nap);

fn exit_with(code: i32) -> Result<(), ()> {
    std::process::exit(code)
}
static EXIT_WITH: Job<i32, (), ()> = fork_rpc::job!(exit_with);

fn explode(message: String) -> Result<(), ()> {
    panic!("{message}")
}
static EXPLODE: Job<String, (), ()> = fork_rpc::job!(explode);

// ===== helpers =====

/// A template of our own, so that counting its children is exact.
fn template() -> Result<Template, Failed> {
    Template::new().map_err(fail)
}

fn lost<E>(e: &JobError<E>) -> Option<&WorkerLost> {
    e.call().and_then(WorkerLost::find)
}

// ===== tests =====

fn a_job_runs_on_one_worker_through_its_client() -> Result<(), Failed> {
    block_on(async {
        let t = template()?;
        let (client, mut worker) = RpcWorker::builder(&mut t.fork(), &fork_rpc::jobs::ENTRY)
            .spawn()
            .await
            .map_err(fail)?;
        let got = SQUARE
            .call(&client, client.context(), 12)
            .await
            .map_err(fail)?;
        ensure!(got == 144, "12 squared is {got}");
        let e = SQUARE
            .call(&client, client.context(), u64::MAX)
            .await
            .unwrap_err();
        ensure!(
            matches!(&e, JobError::Failed(m) if m == &format!("{} squared overflows", u64::MAX)),
            "{e:?}"
        );
        drop(client);
        ensure!(
            worker.wait().await.map_err(fail)?.success(),
            "worker failed"
        );
        Ok(())
    })
}

fn plain_jobs_run_on_a_pool_with_the_template_preloaded() -> Result<(), Failed> {
    block_on(async {
        let t = template()?;
        t.init(&PRELOAD, &42);
        let pool = Pool::jobs(t.clone()).max(2).build();
        ensure!(pool.run(&SQUARE, 9).await.map_err(fail)? == 81, "9 squared");
        let me = pool.run(&WHOAMI, "hello".to_owned()).await.map_err(fail)?;
        ensure!(
            me.pid != std::process::id() && me.preloaded == 42 && me.text == "hello",
            "{me:?}"
        );
        ensure!(WHOAMI.name() == "tests::whoami", "{}", WHOAMI.name());
        match pool.run(&SQUARE, 1 << 32).await {
            Err(JobError::Failed(m)) => ensure!(m.contains("overflows"), "{m}"),
            other => return Err(format!("{other:?}").into()),
        }
        // A function's error says nothing of its worker: it stays.
        ensure!(pool.stats().crashed == 0, "{:?}", pool.stats());
        pool.shutdown().await;
        Ok(())
    })
}

/// A batch submitted at once completes, though it takes longer than the
/// deadline: each job's deadline counts from when a worker takes it. An
/// explicit deadline still counts the time in the queue.
fn a_batch_completes_and_an_explicit_deadline_counts_the_queue() -> Result<(), Failed> {
    block_on(async {
        let t = template()?;
        let timeout = Duration::from_millis(300);
        let rpc = fork_rpc::Config::default().default_timeout(timeout);
        let pool = Pool::jobs(t.clone()).max(2).load(1).rpc(rpc).build();
        let start = Instant::now();
        let all = futures::future::join_all((0..200).map(|_| pool.run(&NAP, 5))).await;
        let took = start.elapsed();
        // 200 jobs of 5 ms on two workers: at least 500 ms, so the last
        // jobs waited in the queue longer than the deadline.
        ensure!(took > timeout, "the batch took only {took:?}");
        let failed = all.iter().filter(|r| r.is_err()).count();
        ensure!(
            failed == 0,
            "{failed} of 200 failed: {:?}",
            all.iter().find(|r| r.is_err())
        );

        // The same batch, each job within 300 ms from now: the tail fails.
        let ctx = fork_rpc::context::with_timeout(timeout);
        let all = futures::future::join_all((0..200).map(|_| pool.run_with(ctx, &NAP, 5))).await;
        let ok = all.iter().take_while(|r| r.is_ok()).count();
        ensure!(ok > 0, "no job finished in time");
        let late = &all[ok..];
        ensure!(
            !late.is_empty()
                && late
                    .iter()
                    .all(|r| matches!(r, Err(JobError::Call(RpcError::DeadlineExceeded)))),
            "after {ok} in time: {:?}",
            late.iter()
                .find(|r| !matches!(r, Err(JobError::Call(RpcError::DeadlineExceeded))))
        );
        pool.shutdown().await;
        Ok(())
    })
}

fn map_keeps_the_order_and_bounds_the_work_in_flight() -> Result<(), Failed> {
    block_on(async {
        let t = template()?;
        let pool = Pool::jobs(t.clone())
            .max(2)
            .load(3)
            .start(Duration::ZERO)
            .build();
        let in_flight = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        let squares: Vec<u64> = pool
            .map(0..500u64, |x| {
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                let call = pool.run(&SQUARE, x);
                let in_flight = &in_flight;
                async move {
                    let r = call.await;
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    r
                }
            })
            .try_collect()
            .await
            .map_err(fail)?;
        let want: Vec<u64> = (0..500).map(|x| x * x).collect();
        ensure!(squares == want, "out of order or wrong");
        let most = most.load(Ordering::SeqCst);
        ensure!(
            most == 6,
            "{most} calls in flight at most, not max × load = 6"
        );

        // pipeline: every result, as they complete.
        let got: BTreeSet<(u64, u64)> = pool
            .pipeline(0..100u64, |x| {
                let call = pool.run(&SQUARE, x);
                async move { call.await.map(|sq| (x, sq)) }
            })
            .try_collect()
            .await
            .map_err(fail)?;
        ensure!(got == (0..100).map(|x| (x, x * x)).collect(), "{got:?}");
        pool.shutdown().await;
        Ok(())
    })
}

/// A pipeline yields a fast job's result before a slow one's.
fn pipeline_yields_results_as_they_complete() -> Result<(), Failed> {
    block_on(async {
        let t = template()?;
        let pool = Pool::jobs(t.clone()).max(2).load(1).idle(2).build();
        pool.wait_until(|s| s.idle == 2).await;
        let mut results = pool.pipeline([2_000u64, 1], |ms| {
            let call = pool.run(&NAP, ms);
            async move { call.await.map(|_| ms) }
        });
        let first = results.next().await.ok_or("no result")?.map_err(fail)?;
        ensure!(first == 1, "the 2 s job came first");
        let second = results
            .next()
            .await
            .ok_or("no second result")?
            .map_err(fail)?;
        ensure!(second == 2_000, "{second}");
        pool.shutdown().await;
        Ok(())
    })
}

fn capacity_counts_the_free_places() -> Result<(), Failed> {
    block_on(async {
        let t = template()?;
        let pool = Pool::jobs(t.clone()).max(2).load(2).idle(2).build();
        pool.wait_until(|s| s.idle == 2).await;
        ensure!(pool.capacity() == 4, "capacity {}", pool.capacity());
        let running = tokio::spawn({
            let pool = pool.clone();
            async move { pool.run(&NAP, 300).await }
        });
        pool.wait_until(|s| s.busy == 1).await;
        ensure!(
            pool.capacity() == 3,
            "capacity {} with one job",
            pool.capacity()
        );
        running.await.map_err(fail)?.map_err(fail)?;
        pool.wait_until(|s| s.busy == 0).await;
        ensure!(
            pool.capacity() == 4,
            "capacity {} after it",
            pool.capacity()
        );
        pool.shutdown().await;
        ensure!(
            pool.capacity() == 0,
            "capacity {} after shutdown",
            pool.capacity()
        );
        Ok(())
    })
}

/// Crashes, panics, time limits and recycling hold for jobs as for
/// services.
fn every_pool_guarantee_holds_for_jobs() -> Result<(), Failed> {
    block_on(async {
        let t = template()?;
        let pool = Pool::jobs(t.clone())
            .max(1)
            .max_requests_exactly(3)
            // Long enough for a trivial job on a loaded machine.
            .job_timeout(Duration::from_secs(2))
            .build();
        // A worker that exits under a job: the job fails with its status,
        // the next runs on a new worker.
        let victim = pool.run(&NAP, 0).await.map_err(fail)?;
        let e = pool.run(&EXIT_WITH, 7).await.unwrap_err();
        let status = lost(&e).and_then(WorkerLost::status);
        ensure!(status.and_then(|s| s.code()) == Some(7), "{e:?}");
        let next = pool.run(&NAP, 0).await.map_err(fail)?;
        ensure!(next != victim, "ran on the dead worker");

        // A panic: its message reaches the caller.
        let e = pool.run(&EXPLODE, "kaboom".to_owned()).await.unwrap_err();
        let message = lost(&e).and_then(WorkerLost::panic_message);
        ensure!(message == Some("kaboom"), "{e:?}");

        // The time limit kills the stuck worker.
        let e = pool.run(&NAP, 60_000).await.unwrap_err();
        let timeout = e.call().and_then(fork_pool::Error::find);
        ensure!(timeout.is_some_and(fork_pool::Error::is_timeout), "{e:?}");

        // Recycling after exactly three jobs.
        let mut pids = Vec::new();
        for _ in 0..6 {
            pids.push(pool.run(&NAP, 0).await.map_err(fail)?);
        }
        ensure!(
            pids[0] == pids[2] && pids[2] != pids[3] && pids[3] == pids[5],
            "{pids:?}"
        );
        let stats = pool.stats();
        ensure!(
            stats.crashed == 2 && stats.timed_out == 1 && stats.recycled >= 1,
            "{stats:?}"
        );
        pool.shutdown().await;
        all_exit(pids).await?;
        Ok(())
    })
}

fn main() {
    fork_core::init();
    integration_tests::run(&[
        (
            "a_job_runs_on_one_worker_through_its_client",
            a_job_runs_on_one_worker_through_its_client,
        ),
        (
            "plain_jobs_run_on_a_pool_with_the_template_preloaded",
            plain_jobs_run_on_a_pool_with_the_template_preloaded,
        ),
        (
            "a_batch_completes_and_an_explicit_deadline_counts_the_queue",
            a_batch_completes_and_an_explicit_deadline_counts_the_queue,
        ),
        (
            "map_keeps_the_order_and_bounds_the_work_in_flight",
            map_keeps_the_order_and_bounds_the_work_in_flight,
        ),
        (
            "pipeline_yields_results_as_they_complete",
            pipeline_yields_results_as_they_complete,
        ),
        (
            "capacity_counts_the_free_places",
            capacity_counts_the_free_places,
        ),
        (
            "every_pool_guarantee_holds_for_jobs",
            every_pool_guarantee_holds_for_jobs,
        ),
    ]);
}
