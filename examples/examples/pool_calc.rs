//! Typed calls over a pool of workers forked from a prepared template.
//!
//! Shows: a template preloaded once by an init function (a table of primes,
//! shared copy-on-write by every worker); `Pool::builder` over that template,
//! and the client tarpc generated for the service working over the pool
//! unchanged (`CalcClient::from(pool.clone())`); a batch of calls sent at
//! once, spread over the workers, every result checked; an idempotent request
//! whose worker is killed in the middle of it, run again on another worker so
//! that the caller only sees the answer; the pool's `Stats`; and
//! `Pool::shutdown`, after which no worker is left.
//!
//! Run: `cargo run --example pool_calc` (under a second).

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use fork_core::{InitFn, Template};
use fork_pool::Pool;
use fork_rpc::{EventSender, RpcEntry, Setup};
use futures::future::try_join_all;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tarpc::context;

// ANCHOR: preload
/// The primes below 2^16: enough to factor any `u32` by trial division.
static PRIMES: OnceLock<Vec<u64>> = OnceLock::new();

/// An init function: runs once, in the template, before any worker exists.
fn load_primes(below: u64) -> Result<(), String> {
    let mut sieve = vec![true; below as usize];
    let mut primes = Vec::new();
    for n in 2..below as usize {
        if sieve[n] {
            primes.push(n as u64);
            for multiple in (n * n..below as usize).step_by(n) {
                sieve[multiple] = false;
            }
        }
    }
    PRIMES.set(primes).map_err(|_| "loaded twice".to_owned())
}

static LOAD_PRIMES: InitFn<u64> = fork_core::init_fn!(load_primes);
// ANCHOR_END: preload

// ANCHOR: service
#[tarpc::service]
trait Calc {
    /// The prime factors of `n` (below 2^32), smallest first. Takes at least
    /// `ms` milliseconds: a stand-in for a longer job.
    async fn factor(n: u64, ms: u64) -> Factors;
    /// How many primes the template loaded.
    async fn table_size() -> usize;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Factors {
    factors: Vec<u64>,
    /// The worker that answered.
    by: u32,
}

/// The event a worker sends when it starts factoring a number.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Started {
    n: u64,
}
// ANCHOR_END: service

// ANCHOR: server
#[derive(Clone)]
struct CalcServer {
    events: EventSender<Started>,
}

impl Calc for CalcServer {
    async fn factor(self, _: context::Context, n: u64, ms: u64) -> Factors {
        self.events
            .send(&Started { n })
            .expect("the parent is there");
        tokio::time::sleep(Duration::from_millis(ms)).await;
        let primes = PRIMES.get().expect("the template loaded the primes");
        let (mut rest, mut factors) = (n, Vec::new());
        for &p in primes.iter().take_while(|&&p| p * p <= n) {
            while rest.is_multiple_of(p) {
                factors.push(p);
                rest /= p;
            }
        }
        if rest > 1 {
            factors.push(rest);
        }
        Factors {
            factors,
            by: std::process::id(),
        }
    }

    async fn table_size(self, _: context::Context) -> usize {
        PRIMES.get().map_or(0, Vec::len)
    }
}

fn calc(setup: &mut Setup<Started>) -> Result<ServeCalc<CalcServer>, String> {
    Ok(CalcServer {
        events: setup.events(),
    }
    .serve())
}

static CALC: RpcEntry<CalcRequest, CalcResponse, Started> = fork_rpc::entry!(calc);
// ANCHOR_END: server

/// The parent's own check, without the table.
fn is_prime(n: u64) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

/// The processes that `pid` forked and has not reaped yet: for a template,
/// its workers (Linux: `/proc/PID/task/PID/children`).
fn children(pid: u32) -> std::io::Result<Vec<u32>> {
    let list = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))?;
    Ok(list
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

#[fork_core::main] // calls fork_core::init() first, then builds the runtime
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // ANCHOR: template
    // Our own template, prepared once: every worker forked from it has the
    // table without computing it.
    let template = Template::new()?;
    template.init(&LOAD_PRIMES, &(1 << 16));
    template.ready().await?;
    // ANCHOR_END: template

    // ANCHOR: pool
    let pool = Pool::builder(template.clone(), &CALC)
        .max(2) // at most two workers
        // Factoring has no side effect: if a worker dies under it, run it
        // again on another one.
        .idempotent(|request| matches!(request, CalcRequest::Factor { .. }))
        .build();
    let calc = CalcClient::from(pool.clone()); // tarpc's client, over the pool
    assert_eq!(calc.table_size(context::current()).await?, 6542);
    // ANCHOR_END: pool
    println!("every worker has the template's 6542 primes");

    // ANCHOR: batch
    // 40 calls at once. Each job takes 10 ms; they queue in the pool, and
    // the pool grows to its max while they wait.
    let numbers: Vec<u64> = (0..40).map(|i| u64::from(u32::MAX) - 2 * i).collect();
    let began = Instant::now();
    let calls = numbers
        .iter()
        .map(|&n| calc.factor(context::current(), n, 10));
    let answers = try_join_all(calls).await?;
    let took = began.elapsed();
    let mut by_worker = BTreeMap::new();
    for (&n, answer) in numbers.iter().zip(&answers) {
        assert_eq!(answer.factors.iter().product::<u64>(), n);
        assert!(
            answer.factors.iter().all(|&p| is_prime(p)),
            "{n}: {answer:?}"
        );
        *by_worker.entry(answer.by).or_insert(0) += 1;
    }
    // ANCHOR_END: batch
    println!(
        "{} numbers factored in {} ms; jobs per worker: {by_worker:?}",
        numbers.len(),
        took.as_millis()
    );
    for (n, answer) in numbers.iter().zip(&answers).take(3) {
        let factors: Vec<String> = answer.factors.iter().map(u64::to_string).collect();
        println!("  {n} = {}", factors.join(" × "));
    }

    // ANCHOR: retry
    let mut events = pool.events().expect("taken once");
    let n = 2_147_483_647; // 2^31 - 1, a prime, and not one of the batch
    let job = calc.factor(context::current(), n, 300);
    let killer = async {
        // Workers announce each number they start on: kill the worker that
        // took this one, in the middle of the job.
        loop {
            let (pid, started) = events.recv().await.expect("a job started");
            if started.expect("an event").n == n {
                kill(Pid::from_raw(pid as i32), Signal::SIGKILL).expect("kill");
                return pid;
            }
        }
    };
    let (answer, victim) = tokio::join!(job, killer);
    // The pool ran the job again on another worker: the caller just gets
    // the answer.
    let answer = answer?;
    assert_eq!(answer.factors, [n]);
    assert_ne!(answer.by, victim);
    assert_eq!(pool.stats().crashed, 1);
    // ANCHOR_END: retry
    println!(
        "{n} is prime: worker {victim} was killed under the job, worker {} ran it again",
        answer.by
    );

    // ANCHOR: stats
    let s = pool.stats();
    println!(
        "stats: {} idle, {} busy, {} queued; {} started, {} crashed, {} recycled; {} jobs completed",
        s.idle, s.busy, s.queued, s.spawned, s.crashed, s.recycled, s.completed
    );
    // One worker left: the killed one was not replaced, since no job waited.
    assert_eq!((s.idle + s.busy, s.crashed), (1, 1));
    // ANCHOR_END: stats

    // ANCHOR: shutdown
    pool.shutdown().await;
    assert_eq!(children(template.id())?, Vec::<u32>::new());
    template.shutdown().await?;
    // ANCHOR_END: shutdown
    println!("shut down: no worker left");
    Ok(())
}
