//! Plain functions as jobs on a pool: no service, no server type, no entry
//! (Coro::ProcessPool's `process` and `map`, Python's `executor.submit` and
//! `executor.map`).
//!
//! Shows: `fork_rpc::job!` over ordinary functions, one of them using what
//! the template preloaded; `Pool::jobs` and `Pool::run`, a function's own
//! error; `Pool::map` over 20,000 jobs, results in input order, and
//! `Pool::pipeline`, results as they complete; `Pool::capacity`; and the
//! rule for deadlines: a job's time counts from when a worker takes it
//! (`run`), unless you give a deadline (`run_with`), which counts the queue.
//!
//! Run: `cargo run --example pool_jobs` (a few seconds).

use std::sync::OnceLock;
use std::time::Duration;

use fork_core::{InitFn, Template};
use fork_pool::Pool;
use fork_rpc::jobs::{Job, JobError};
use futures::{StreamExt, TryStreamExt};
use tarpc::client::RpcError;

// ANCHOR: jobs
/// The primes below 2^16, loaded once in the template.
static PRIMES: OnceLock<Vec<u64>> = OnceLock::new();

fn load_primes(below: u64) -> Result<(), String> {
    let primes = (2..below)
        .filter(|&n| {
            (2..n)
                .take_while(|d| d * d <= n)
                .all(|d| !n.is_multiple_of(d))
        })
        .collect();
    PRIMES.set(primes).map_err(|_| "loaded twice".to_owned())
}
static LOAD_PRIMES: InitFn<u64> = fork_core::init_fn!(load_primes);

/// The prime factors of `n`, smallest first; only below 2^32.
fn factor(mut n: u64) -> Result<Vec<u64>, String> {
    if n >= 1 << 32 {
        return Err(format!("{n} is too big to factor here"));
    }
    let mut factors = Vec::new();
    for &p in PRIMES.get().ok_or("the template loaded no primes")? {
        while n.is_multiple_of(p) {
            factors.push(p);
            n /= p;
        }
    }
    if n > 1 {
        factors.push(n);
    }
    Ok(factors)
}
static FACTOR: Job<u64, Vec<u64>, String> = fork_rpc::job!(factor);

/// Sleeps `ms` milliseconds in the worker: a stand-in for a longer job.
fn nap(ms: u64) -> Result<u64, String> {
    std::thread::sleep(Duration::from_millis(ms));
    Ok(ms)
}
static NAP: Job<u64, u64, String> = fork_rpc::job!(nap);
// ANCHOR_END: jobs

#[fork_core::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // ANCHOR: run
    let template = Template::new()?;
    template.init(&LOAD_PRIMES, &(1 << 16));
    // Two workers, always there (`idle`): the pipeline below needs both.
    let pool = Pool::jobs(template.clone()).max(2).idle(2).build();

    let factors = pool.run(&FACTOR, 360).await?;
    println!("360 = {factors:?}");
    assert_eq!(factors, [2, 2, 2, 3, 3, 5]);
    // The function's own error, as it returned it.
    match pool.run(&FACTOR, 1 << 40).await {
        Err(JobError::Failed(e)) => println!("2^40: {e}"),
        other => panic!("2^40 gave {other:?}"),
    }
    // ANCHOR_END: run

    // ANCHOR: map
    // 20,000 jobs, at most max × load in flight, results in input order.
    let all: Vec<Vec<u64>> = pool
        .map(1..=20_000, |n| pool.run(&FACTOR, n))
        .try_collect()
        .await?;
    let primes = all.iter().filter(|f| f.len() == 1).count();
    println!("{primes} primes up to 20,000");
    assert_eq!(primes, 2262);
    assert_eq!(all[359], [2, 2, 2, 3, 3, 5]);

    // As they complete: the short nap first, though it was given last
    // (each goes to a worker of its own).
    pool.wait_until(|s| s.idle == 2).await;
    let mut naps = pool.pipeline([300, 10], |ms| pool.run(&NAP, ms));
    let first = naps.next().await.ok_or("no result")??;
    println!("first back: the {first} ms nap");
    assert_eq!(first, 10);
    let second = naps.next().await.ok_or("no second result")??;
    assert_eq!(second, 300);
    // ANCHOR_END: map

    // ANCHOR: capacity
    pool.wait_until(|s| s.busy == 0).await;
    println!("free places now: {}", pool.capacity());
    assert_eq!(pool.capacity(), 2 * 2); // two workers, load 2
    // ANCHOR_END: capacity

    // ANCHOR: deadlines
    // 40 naps of 50 ms on 2 workers take a second. With `run`, each job's
    // time counts from when a worker takes it: all complete, though the
    // default deadline here is 500 ms.
    let rpc = fork_rpc::Config::default().default_timeout(Duration::from_millis(500));
    let naps = Pool::jobs(template.clone()).max(2).load(1).rpc(rpc).build();
    let all = futures::future::join_all((0..40).map(|_| naps.run(&NAP, 50))).await;
    assert!(all.iter().all(Result::is_ok));
    // A deadline you give counts the time in the queue: the tail fails.
    let ctx = naps.context(); // 500 ms from now
    let all = futures::future::join_all((0..40).map(|_| naps.run_with(ctx, &NAP, 50))).await;
    let late = all
        .iter()
        .filter(|r| matches!(r, Err(JobError::Call(RpcError::DeadlineExceeded))))
        .count();
    println!("with one deadline for the batch: {late} of 40 too late");
    assert!(late > 0 && all[0].is_ok());
    // ANCHOR_END: deadlines

    naps.shutdown().await;
    pool.shutdown().await;
    template.shutdown().await?;
    Ok(())
}
