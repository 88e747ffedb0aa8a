//! Workers coming and going in a fork-pool, watched through its `Stats`.
//!
//! Shows, each with its own pool over one template:
//!
//! - **growth and shrinking**: a burst of jobs makes the pool grow, one more
//!   worker each `start` while jobs wait, up to `max`; once the burst is
//!   over, the workers stop after `stop`, all of them with `idle = 0` (where
//!   AnyEvent::Fork::Pool would keep them for ever);
//! - **spare workers**: `idle = 2` starts two workers up front, a burst with
//!   `start = 0` grows the pool to `max` at once, and after `stop` it shrinks
//!   back to two;
//! - **recycling**: with `max_requests(4).max_requests_jitter(2)` each worker serves 4 to 6
//!   jobs and leaves; a new one starts only when a job needs it;
//! - **a crash**: a worker killed with `SIGKILL` in the middle of a job; that
//!   job fails with `WorkerLost`, the jobs queued behind it run on a
//!   replacement;
//! - **shutdown**: queued and running jobs finish, no process of the pool is
//!   left, and the next call starts a new worker.
//!
//! It waits for states with `Pool::wait_until`, never by sleeping, and prints
//! the time since each step began.
//!
//! Run: `cargo run --example pool_scaling` (about 2 seconds).

use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use fork_core::Template;
use fork_pool::{Pool, Stats};
use fork_rpc::{EventSender, RpcEntry, Setup, WorkerLost};
use futures::future::{join_all, try_join_all};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tarpc::context;

// ANCHOR: service
#[tarpc::service]
trait Work {
    /// Announces job `job` with an event, works on it for `ms` milliseconds
    /// (without blocking the worker), and returns the worker's pid.
    async fn work(job: u32, ms: u64) -> u32;
}

#[derive(Clone)]
struct WorkServer {
    events: EventSender<u32>,
}

impl Work for WorkServer {
    async fn work(self, _: context::Context, job: u32, ms: u64) -> u32 {
        self.events.send(&job).expect("the parent is there");
        tokio::time::sleep(Duration::from_millis(ms)).await;
        std::process::id()
    }
}

fn worker(setup: &mut Setup<u32>) -> Result<ServeWork<WorkServer>, String> {
    Ok(WorkServer {
        events: setup.events(),
    }
    .serve())
}

/// The events are job numbers: "this worker started job n".
static WORKER: RpcEntry<WorkRequest, WorkResponse, u32> = fork_rpc::entry!(worker);
type WorkPool = Pool<WorkRequest, WorkResponse, u32>;
// ANCHOR_END: service

/// The processes that `pid` forked and has not reaped yet: for a template,
/// the workers of every pool over it (Linux: `/proc/PID/task/PID/children`).
fn children(pid: u32) -> std::io::Result<Vec<u32>> {
    let list = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))?;
    Ok(list
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

/// Workers in the pool: starting, idle or busy.
fn workers(s: &Stats) -> usize {
    s.starting + s.idle + s.busy
}

/// Waits until the stats satisfy `condition`, for at most 10 s.
async fn settle(
    pool: &WorkPool,
    what: &str,
    condition: impl Fn(&Stats) -> bool,
) -> Result<Stats, String> {
    tokio::time::timeout(Duration::from_secs(10), pool.wait_until(condition))
        .await
        .map_err(|_| format!("the pool never got to {what}: {:?}", pool.stats()))
}

fn ms(since: Instant) -> u128 {
    since.elapsed().as_millis()
}

#[fork_core::main] // calls fork_core::init() first, then builds the runtime
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let template = Template::new()?;
    grow_and_shrink(&template).await?;
    spare_workers(&template).await?;
    recycling(&template).await?;
    crash(&template).await?;
    shutdown(&template).await?;
    // ANCHOR: no_process_left
    // Every pool was shut down: the template has no child left.
    assert_eq!(children(template.id())?, Vec::<u32>::new());
    template.shutdown().await?;
    // ANCHOR_END: no_process_left
    println!("no process left");
    Ok(())
}

async fn grow_and_shrink(template: &Template) -> Result<(), Box<dyn std::error::Error>> {
    // ANCHOR: grow
    let start = Duration::from_millis(50);
    let stop = Duration::from_millis(300);
    let pool = Pool::builder(template.clone(), &WORKER)
        .max(4)
        .load(1) // one job per worker at a time: the rest wait in the queue
        .start(start)
        .stop(stop)
        .build(); // idle = 0: no worker until a job comes
    let client = WorkClient::from(pool.clone());

    // A burst: 8 jobs of 300 ms at once.
    let job = Duration::from_millis(300);
    let began = Instant::now();
    let burst = try_join_all((0..8).map(|n| client.work(context::current(), n, 300)));
    // Meanwhile, print the workers as they arrive.
    let watch = async {
        let mut seen = BTreeSet::new();
        while seen.len() < 4 {
            let known = seen.len();
            let s = pool.wait_until(|s| s.idle + s.busy > known).await;
            let new: Vec<u32> = pool
                .worker_pids()
                .into_iter()
                .filter(|&pid| seen.insert(pid))
                .collect();
            println!(
                "{:>5} ms  worker {new:?} started: {} busy, {} queued",
                ms(began),
                s.busy,
                s.queued
            );
        }
        began.elapsed()
    };
    let (pids, all_four) = tokio::join!(burst, watch);
    let used: BTreeSet<u32> = pids?.into_iter().collect();
    assert_eq!(used.len(), 4); // never more than max
    assert_eq!(pool.stats().spawned, 4);
    assert!(all_four >= 3 * start); // the first at once, then one per `start`
    // ANCHOR_END: grow
    println!("{:>5} ms  the burst is over", ms(began));

    // ANCHOR: shrink
    // Each worker leaves once idle for `stop`: with idle = 0, all of them.
    let s = settle(&pool, "no worker", |s| workers(s) == 0 && s.recycled == 4).await?;
    assert!(began.elapsed() >= job + stop);
    // ANCHOR_END: shrink
    println!(
        "{:>5} ms  all {} workers stopped, {} ms after they turned idle",
        ms(began),
        s.recycled,
        stop.as_millis()
    );
    pool.shutdown().await;
    Ok(())
}

async fn spare_workers(template: &Template) -> Result<(), Box<dyn std::error::Error>> {
    // ANCHOR: idle
    let pool = Pool::builder(template.clone(), &WORKER)
        .max(4)
        .idle(2) // two spare workers, started up front
        .load(1)
        .start(Duration::ZERO) // grow at once for the whole backlog
        .stop(Duration::from_millis(300))
        .build();
    let client = WorkClient::from(pool.clone());
    let began = Instant::now();
    settle(&pool, "2 idle workers", |s| s.idle == 2).await?;
    let spares: BTreeSet<u32> = pool.worker_pids().into_iter().collect();
    println!("{:>5} ms  2 spare workers: {spares:?}", ms(began));

    // Six jobs at once: the spares take two, four more are started at once,
    // but only two fit under max.
    let pids = try_join_all((0..6).map(|job| client.work(context::current(), job, 200))).await?;
    let used: BTreeSet<u32> = pids.into_iter().collect();
    assert_eq!(used.len(), 4);
    println!("{:>5} ms  6 jobs ran on 4 workers: {used:?}", ms(began));

    // After `stop`, back down to two idle workers.
    let s = settle(&pool, "2 workers", |s| workers(s) == 2 && s.recycled == 2).await?;
    assert_eq!(s.idle, 2);
    // ANCHOR_END: idle
    println!(
        "{:>5} ms  back to 2 idle workers: {:?}",
        ms(began),
        pool.worker_pids()
    );
    pool.shutdown().await;
    Ok(())
}

async fn recycling(template: &Template) -> Result<(), Box<dyn std::error::Error>> {
    // ANCHOR: recycle
    // Each worker leaves after 4 jobs, plus 0 to 2 at random.
    let pool = Pool::builder(template.clone(), &WORKER)
        .max(1)
        .max_requests(4)
        .max_requests_jitter(2)
        .build();
    let client = WorkClient::from(pool.clone());
    let mut runs: Vec<(u32, usize)> = Vec::new(); // (worker, jobs it ran)
    let mut job = 0;
    while pool.stats().recycled < 4 {
        let pid = client.work(context::current(), job, 0).await?;
        job += 1;
        match runs.last_mut() {
            Some((last, n)) if *last == pid => *n += 1,
            _ => runs.push((pid, 1)),
        }
    }
    assert_eq!(runs.len(), 4);
    assert!(runs.iter().all(|&(_, n)| (4..=6).contains(&n)), "{runs:?}");
    // The fourth worker left after its last job, and no job needs another.
    let s = pool.stats();
    assert_eq!((s.spawned, workers(&s)), (4, 0));
    // ANCHOR_END: recycle
    for (pid, n) in &runs {
        println!("worker {pid} served {n} jobs and was recycled");
    }
    println!("{job} jobs, {} workers, none running now", s.spawned);
    pool.shutdown().await;
    Ok(())
}

async fn crash(template: &Template) -> Result<(), Box<dyn std::error::Error>> {
    // ANCHOR: crash
    // One worker, one job at a time: job 0 runs, jobs 1 to 3 wait.
    let pool = Pool::builder(template.clone(), &WORKER)
        .max(1)
        .load(1)
        .build();
    let client = WorkClient::from(pool.clone());
    let mut events = pool.events().expect("taken once");
    let running = client.work(context::current(), 0, 10_000);
    let queued = join_all((1..=3).map(|job| client.work(context::current(), job, 0)));
    let killer = async {
        // The worker announces job 0: kill it in the middle of that job.
        let (victim, _job) = events.recv().await.expect("job 0 started");
        assert_eq!(pool.stats().queued, 3);
        kill(Pid::from_raw(victim as i32), Signal::SIGKILL).expect("kill");
        victim
    };
    let (running, queued, victim) = tokio::join!(running, queued, killer);

    // The job that was running fails, and says why...
    let err = running.unwrap_err();
    let lost = WorkerLost::find(&err).expect("its worker died");
    assert_eq!(lost.pid(), victim);
    assert_eq!(lost.status().and_then(|s| s.signal()), Some(9));
    // ... the queued ones ran on a replacement.
    let pids = queued.into_iter().collect::<Result<BTreeSet<u32>, _>>()?;
    let replacement = *pids.first().expect("3 jobs");
    assert_eq!(pids.len(), 1);
    assert_ne!(replacement, victim);
    let s = pool.stats();
    assert_eq!((s.crashed, s.spawned), (1, 2));
    // ANCHOR_END: crash
    println!("job 0: {lost}");
    println!("jobs 1-3 ran on worker {replacement}, which replaced it");
    println!(
        "{} workers started, {} crashed, {} idle now",
        s.spawned, s.crashed, s.idle
    );
    pool.shutdown().await;
    Ok(())
}

async fn shutdown(template: &Template) -> Result<(), Box<dyn std::error::Error>> {
    // ANCHOR: shutdown
    let pool = Pool::builder(template.clone(), &WORKER)
        .max(2)
        .load(1)
        .start(Duration::ZERO)
        .build();
    let client = WorkClient::from(pool.clone());
    let mut events = pool.events().expect("taken once");
    let began = Instant::now();
    // Five jobs of 100 ms: two run, three wait when the shutdown begins.
    let jobs = join_all((0..5).map(|job| client.work(context::current(), job, 100)));
    let shutdown = async {
        for _ in 0..2 {
            let (_pid, _job) = events.recv().await.expect("a job started");
        }
        let before = pool.stats();
        pool.shutdown().await; // drains the queue, then closes the workers
        before
    };
    let (jobs, before) = tokio::join!(jobs, shutdown);
    assert_eq!((before.busy, before.queued), (2, 3));
    let mut served = BTreeSet::new();
    for job in jobs {
        served.insert(job?); // every job ran
    }
    // No worker left.
    assert_eq!(workers(&pool.stats()), 0);
    assert_eq!(children(template.id())?, Vec::<u32>::new());
    // The pool can be used again: the next call starts a new worker.
    let pid = client.work(context::current(), 5, 0).await?;
    assert!(!served.contains(&pid));
    pool.shutdown().await;
    // ANCHOR_END: shutdown
    println!(
        "{:>5} ms  shut down with {} jobs running and {} queued: all 5 done",
        ms(began),
        before.busy,
        before.queued
    );
    println!("a call after the shutdown: served by a new worker");
    Ok(())
}
