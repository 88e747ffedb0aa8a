//! fork-pool, end to end: typed pooled calls, knobs, dispatch, scaling,
//! recycling, crashes, timeouts, shutdown, stats, and a chaos test.

use std::collections::{BTreeSet, HashSet};
use std::os::unix::process::ExitStatusExt;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fork_core::{InitFn, Template};
use fork_pool::{Overflow, Pool};
use fork_rpc::{EventSender, RpcEntry, Setup, WorkerLost};
use futures::FutureExt;
use integration_tests::{Failed, all_exit, block_on, children_of, ensure, fail, state_of};
use tarpc::client::RpcError;
use tarpc::context;

#[tarpc::service]
trait Job {
    /// The worker's pid.
    async fn pid() -> u32;
    /// Sleeps without blocking the worker; returns its pid.
    async fn sleep(ms: u64) -> u32;
    /// Sends an event, then sleeps; returns the pid.
    async fn announced_sleep(ms: u64) -> u32;
    /// Blocks the worker (cannot be cancelled); returns its pid.
    async fn block(ms: u64) -> u32;
    /// Allocates and keeps `mib` MiB; returns the pid.
    async fn grow(mib: usize) -> u32;
    /// Asks the pool to retire this worker; returns its pid.
    async fn retire() -> u32;
    /// The value the template preloaded, and the argument sent to it.
    async fn preloaded() -> (u64, String);
}

#[derive(Clone)]
struct JobServer {
    events: EventSender<()>,
    arg: String,
}

static HOARD: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

impl Job for JobServer {
    async fn pid(self, _: context::Context) -> u32 {
        std::process::id()
    }

    async fn sleep(self, _: context::Context, ms: u64) -> u32 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        std::process::id()
    }

    async fn announced_sleep(self, _: context::Context, ms: u64) -> u32 {
        self.events.send(&()).expect("event");
        tokio::time::sleep(Duration::from_millis(ms)).await;
        std::process::id()
    }

    async fn block(self, _: context::Context, ms: u64) -> u32 {
        std::thread::sleep(Duration::from_millis(ms));
        std::process::id()
    }

    async fn grow(self, _: context::Context, mib: usize) -> u32 {
        let mut hoard = HOARD.lock().unwrap();
        hoard.push(vec![1u8; mib << 20]);
        std::process::id()
    }

    // ANCHOR: retire_server
    async fn retire(self, _: context::Context) -> u32 {
        self.events.retire().expect("retire");
        std::process::id()
    }
    // ANCHOR_END: retire_server

    async fn preloaded(self, _: context::Context) -> (u64, String) {
        (PRELOADED.load(Ordering::SeqCst), self.arg)
    }
}

static PRELOADED: AtomicU64 = AtomicU64::new(0);
fn preload(v: u64) -> Result<(), String> {
    PRELOADED.store(v, Ordering::SeqCst);
    Ok(())
}
static PRELOAD: InitFn<u64> = fork_core::init_fn!(preload);

static BIG: OnceLock<Vec<u8>> = OnceLock::new();
fn preload_big(mib: usize) -> Result<(), String> {
    BIG.set(vec![7u8; mib << 20])
        .map_err(|_| "twice".to_string())
}
static PRELOAD_BIG: InitFn<usize> = fork_core::init_fn!(preload_big);

fn job(setup: &mut Setup<()>) -> Result<ServeJob<JobServer>, String> {
    let arg: String = setup.arg(0).unwrap_or_default();
    if arg == "fail" {
        return Err("cannot start: no database".into());
    }
    if arg == "hang" {
        // Says so on the descriptor given to the template, then never
        // returns (a connection that never answers).
        if let Some(fd) = setup.take_fds().pop() {
            let _ = std::io::Write::write_all(&mut std::fs::File::from(fd), b"h");
        }
        loop {
            std::thread::park();
        }
    }
    Ok(JobServer {
        events: setup.events(),
        arg,
    }
    .serve())
}
static JOB: RpcEntry<JobRequest, JobResponse> = fork_rpc::entry!(job);

type Client = JobClient<Pool<JobRequest, JobResponse>>;

/// A worker that says it is ready, answers its first request with a frame
/// that is no message at all, then waits for the parent to close.
fn garbling_worker(ctx: fork_core::Context) -> i32 {
    use std::io::{Read, Write};
    let mut socket = ctx.socket();
    let mut buf = [0u8; 1024];
    let garbled = socket.write_all(&[0, 0, 0, 0, 0]).is_ok()
        && matches!(socket.read(&mut buf), Ok(n) if n > 0)
        && socket.write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff]).is_ok();
    while garbled && matches!(socket.read(&mut buf), Ok(n) if n > 0) {}
    0
}
static GARBLING: RpcEntry<JobRequest, JobResponse> =
    RpcEntry::from_entry(fork_core::entry!(garbling_worker));

fn pool_on(template: &Template) -> fork_pool::Builder<JobRequest, JobResponse, ()> {
    Pool::builder(template.clone(), &JOB)
}

/// A template of our own, so that counting its children is exact.
async fn template() -> Result<Template, Failed> {
    Template::new().map_err(fail)
}

fn lost(e: &RpcError) -> Option<&WorkerLost> {
    WorkerLost::find(e)
}

/// Polls `fut` once, outside tokio's cooperative budget (spent, it makes a
/// ready future look pending): its output, if it is ready.
fn poll_once<F: Future + Unpin>(fut: &mut F) -> Option<F::Output> {
    tokio::task::unconstrained(fut).now_or_never()
}

// ===== tests =====

fn typed_calls_through_a_prepared_template() -> Result<(), Failed> {
    block_on(async {
        let t = template().await?;
        t.init(&PRELOAD, &77);
        t.arg("configured");
        let pool = pool_on(&t).max(2).build();
        let client = Client::from(pool.clone());
        let (value, arg) = client.preloaded(context::current()).await.map_err(fail)?;
        ensure!(value == 77 && arg == "configured", "got {value}, {arg}");
        pool.shutdown().await;
        Ok(())
    })
}

fn start_zero_grows_at_once_and_max_is_respected() -> Result<(), Failed> {
    block_on(async {
        let t = template().await?;
        let pool = pool_on(&t).max(3).load(2).start(Duration::ZERO).build();
        let client = Client::from(pool.clone());
        let calls = (0..6).map(|_| client.sleep(context::current(), 300));
        let pids: BTreeSet<u32> = futures::future::try_join_all(calls)
            .await
            .map_err(fail)?
            .into_iter()
            .collect();
        ensure!(
            pids.len() == 3,
            "6 jobs at load 2 with start 0 ran on {pids:?}"
        );
        ensure!(
            pool.stats().spawned == 3,
            "spawned {}",
            pool.stats().spawned
        );
        pool.shutdown().await;
        Ok(())
    })
}

fn long_start_keeps_jobs_queued_on_the_first_worker() -> Result<(), Failed> {
    block_on(async {
        let t = template().await?;
        let pool = pool_on(&t)
            .max(4)
            .load(2)
            .start(Duration::from_secs(3600))
            .build();
        let client = Client::from(pool.clone());
        let calls = (0..6).map(|_| client.sleep(context::current(), 20));
        let pids: BTreeSet<u32> = futures::future::try_join_all(calls)
            .await
            .map_err(fail)?
            .into_iter()
            .collect();
        ensure!(pids.len() == 1, "with a long start, jobs ran on {pids:?}");
        pool.shutdown().await;
        Ok(())
    })
}

fn light_load_concentrates_on_one_worker() -> Result<(), Failed> {
    block_on(async {
        let t = template().await?;
        // ANCHOR: concentrate
        let pool = pool_on(&t).max(3).idle(3).build();
        let client = Client::from(pool.clone());
        let mut pids = HashSet::new();
        for _ in 0..20 {
            pids.insert(client.pid(context::current()).await.map_err(fail)?);
        }
        ensure!(pids.len() == 1, "one call at a time spread over {pids:?}");
        // Concurrent jobs at load 1 spread over the workers.
        let pool1 = pool_on(&t).max(3).idle(3).load(1).build();
        let client1 = Client::from(pool1.clone());
        let calls = (0..3).map(|_| client1.sleep(context::current(), 200));
        let spread: BTreeSet<u32> = futures::future::try_join_all(calls)
            .await
            .map_err(fail)?
            .into_iter()
            .collect();
        ensure!(
            spread.len() == 3,
            "3 concurrent jobs at load 1 ran on {spread:?}"
        );
        // ANCHOR_END: concentrate
        pool.shutdown().await;
        pool1.shutdown().await;
        Ok(())
    })
}

/// A call given up on (dropped, as by a timeout around it) while it runs
/// on a worker, or while it waits in the queue, gives its place back: the
/// jobs behind it get the place, and the counts return to zero with none of
/// them counted as answered.
fn calls_given_up_give_their_places_back() -> Result<(), Failed> {
    block_on(async {
        let t = template().await?;
        // Workers that serve their two jobs at once.
        let pool = pool_on(&t)
            .max(1)
            .idle(1)
            .load(2)
            .rpc(fork_rpc::Config::default().concurrent(2))
            .build();
        pool.wait_until(|s| s.idle == 1).await;
        let client = Client::from(pool.clone());
        let mut running = Box::pin(client.sleep(context::current(), 60_000));
        let mut other = Box::pin(client.sleep(context::current(), 60_000));
        let mut queued = Box::pin(client.sleep(context::current(), 60_000));
        let mut last = Box::pin(client.pid(context::current()));
        for call in [&mut running, &mut other, &mut queued] {
            ensure!(
                futures::poll!(call.as_mut()).is_pending(),
                "sleep(60 s) returned"
            );
        }
        ensure!(
            futures::poll!(last.as_mut()).is_pending(),
            "a call beyond load 2 did not queue"
        );
        let stats = pool.stats();
        ensure!(
            stats.busy == 1 && stats.queued == 2,
            "two jobs running and two queued: {stats:?}"
        );
        // The running call's place goes to the first in the queue, which is
        // given up on before it takes it: the place goes on to the last.
        drop(running);
        drop(queued);
        let pid = tokio::time::timeout(Duration::from_secs(5), last)
            .await
            .map_err(|_| "a place given up on did not reach the queue")?
            .map_err(fail)?;
        ensure!(
            pool.worker_pids() == [pid],
            "answered by {pid}, not the worker"
        );
        drop(other);
        let stats = pool.wait_until(|s| s.idle == 1 && s.busy == 0).await;
        ensure!(
            stats.queued == 0 && stats.completed == 1 && stats.spawned == 1,
            "after giving up: {stats:?}"
        );
        pool.shutdown().await;
        Ok(())
    })
}

fn idle_workers_stop_after_stop_down_to_idle() -> Result<(), Failed> {
    block_on(async {
        for keep in [0usize, 1] {
            let t = template().await?;
            let pool = pool_on(&t)
                .max(3)
                .idle(keep)
                .load(1)
                .start(Duration::ZERO)
                .stop(Duration::from_millis(200))
                .build();
            let client = Client::from(pool.clone());
            let calls = (0..3).map(|_| client.sleep(context::current(), 100));
            let pids: Vec<u32> = futures::future::try_join_all(calls).await.map_err(fail)?;
            let used: BTreeSet<u32> = pids.into_iter().collect();
            ensure!(used.len() == 3, "idle {keep}: burst ran on {used:?}");
            // All but `keep` workers leave after `stop`, and exit.
            let settled = tokio::time::timeout(
                Duration::from_secs(10),
                pool.wait_until(|s| s.idle + s.busy + s.starting == keep),
            )
            .await
            .map_err(|_| format!("idle {keep}: the pool did not shrink: {:?}", pool.stats()))?;
            ensure!(settled.idle == keep, "idle {keep}: {settled:?}");
            let survivors: BTreeSet<u32> = pool.worker_pids().into_iter().collect();
            ensure!(
                survivors.len() == keep,
                "idle {keep}: {survivors:?} survived"
            );
            let gone: Vec<u32> = used.difference(&survivors).copied().collect();
            all_exit(gone).await?;
            ensure!(
                pool.stats().recycled as usize == 3 - keep,
                "idle {keep}: {:?}",
                pool.stats()
            );
            pool.shutdown().await;
        }
        Ok(())
    })
}

fn a_spare_that_goes_to_work_is_replaced() -> Result<(), Failed> {
    block_on(async {
        let t = template().await?;
        let pool = pool_on(&t).max(2).idle(1).build();
        let client = Client::from(pool.clone());
        let mut events = pool.events().ok_or("no events")?;
        pool.wait_until(|s| s.idle == 1).await;
        let job = client.announced_sleep(context::current(), 2_000);
        let check = async {
            let _event = events.recv().await.ok_or("no event")?;
            // One worker busy, and a new spare.
            tokio::time::timeout(
                Duration::from_secs(10),
                pool.wait_until(|s| s.busy == 1 && s.idle == 1),
            )
            .await
            .map_err(|_| format!("no new spare: {:?}", pool.stats()))
        };
        let (job, stats) = tokio::join!(job, check);
        job.map_err(fail)?;
        ensure!(stats?.spawned == 2, "spawned {:?}", pool.stats());
        pool.shutdown().await;
        Ok(())
    })
}

fn max_requests_recycles_with_jitter() -> Result<(), Failed> {
    block_on(async {
        let t = template().await?;
        let pool = pool_on(&t).max(1).max_requests_exactly(5).build();
        let client = Client::from(pool.clone());
        let mut pids = Vec::new();
        for _ in 0..20 {
            pids.push(client.pid(context::current()).await.map_err(fail)?);
        }
        let distinct: BTreeSet<u32> = pids.iter().copied().collect();
        ensure!(
            distinct.len() == 4,
            "20 jobs at 5 per worker ran on {distinct:?}"
        );
        for chunk in pids.chunks(5) {
            ensure!(
                chunk.iter().all(|p| *p == chunk[0]),
                "a worker served other than 5: {pids:?}"
            );
        }
        ensure!(pool.stats().recycled >= 3, "{:?}", pool.stats());
        pool.shutdown().await;
        all_exit(distinct).await
    })
}

fn memory_ceiling_recycles_but_not_fresh_workers() -> Result<(), Failed> {
    block_on(async {
        let t = template().await?;
        // ANCHOR: max_rss
        let pool = pool_on(&t).max(1).max_rss(64 << 20).build();
        let client = Client::from(pool.clone());
        let first = client.pid(context::current()).await.map_err(fail)?;
        let grown = client.grow(context::current(), 100).await.map_err(fail)?;
        ensure!(first == grown, "grew on another worker");
        // The memory is checked between jobs: the next job finds a new worker.
        let next = client.pid(context::current()).await.map_err(fail)?;
        ensure!(next != grown, "a worker over max_rss was kept");
        all_exit([grown]).await?;
        pool.shutdown().await;

        // A template so big that every fresh worker is over the limit: no
        // recycling storm, the worker stays.
        let big = template().await?;
        big.init(&PRELOAD_BIG, &80);
        big.ready().await.map_err(fail)?;
        let pool = pool_on(&big).max(1).max_rss(64 << 20).build();
        let client = Client::from(pool.clone());
        let mut pids = BTreeSet::new();
        for _ in 0..5 {
            pids.insert(client.pid(context::current()).await.map_err(fail)?);
            // Give the 100 ms check interval a chance without sleeping: the
            // call itself takes time; repeat enough times.
        }
        ensure!(
            pids.len() == 1,
            "fresh over-limit workers were recycled: {pids:?}"
        );
        ensure!(pool.stats().recycled == 0, "{:?}", pool.stats());
        // ANCHOR_END: max_rss
        pool.shutdown().await;
        Ok(())
    })
}

fn retire_from_inside_a_worker() -> Result<(), Failed> {
    block_on(async {
        let t = template().await?;
        // ANCHOR: retire
        let pool = pool_on(&t).max(1).build();
        let client = Client::from(pool.clone());
        let retired = client.retire(context::current()).await.map_err(fail)?;
        let next = client.pid(context::current()).await.map_err(fail)?;
        ensure!(next != retired, "the retired worker took another job");
        all_exit([retired]).await?;
        // ANCHOR_END: retire
        ensure!(
            pool.stats().crashed == 0,
            "retirement counted as a crash: {:?}",
            pool.stats()
        );
        pool.shutdown().await;
        Ok(())
    })
}

fn crashed_workers_are_replaced_and_queued_jobs_kept() -> Result<(), Failed> {
    block_on(async {
        let t = template().await?;
        let pool = pool_on(&t).max(1).load(1).build();
        let client = Client::from(pool.clone());
        let mut events = pool.events().ok_or("no events")?;
        let victim = client.pid(context::current()).await.map_err(fail)?;
        // One job running on the victim, four queued behind it.
        let running = client.announced_sleep(context::current(), 60_000);
        let queued = futures::future::join_all((0..4).map(|_| client.pid(context::current())));
        let kill = async {
            // Kill once the first job runs (the others wait: load 1, max 1).
            let (pid, _) = events.recv().await.ok_or("no event")?;
            if pid != victim || pool.stats().queued != 4 {
                return Err(format!("the job ran on {pid}, {:?}", pool.stats()));
            }
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(victim as i32),
                nix::sys::signal::Signal::SIGKILL,
            )
            .map_err(|e| e.to_string())
        };
        let (running, queued, killed) = tokio::join!(running, queued, kill);
        killed?;
        let e = running.unwrap_err();
        let l = lost(&e).ok_or(format!("running job gave {e:?}"))?;
        ensure!(
            l.status().and_then(|s| s.signal()) == Some(libc::SIGKILL),
            "{l}"
        );
        for r in queued {
            let pid = r.map_err(fail)?;
            ensure!(pid != victim, "a queued job ran on the dead worker");
        }
        let stats = pool.stats();
        ensure!(stats.crashed == 1 && stats.spawned == 2, "{stats:?}");
        pool.shutdown().await;
        Ok(())
    })
}

/// A worker whose connection breaks on bad bytes is killed and replaced,
/// not kept to fail every later job.
fn a_worker_that_breaks_its_connection_is_replaced() -> Result<(), Failed> {
    block_on(async {
        let t = template().await?;
        let pool = Pool::builder(t.clone(), &GARBLING)
            .idle(1)
            .max(1)
            .load(2)
            .build();
        pool.wait_until(|s| s.idle == 1).await;
        let first = pool.worker_pids();
        let client = Client::from(pool.clone());
        // Two jobs on the worker: both fail, and it counts once.
        let (a, b) = tokio::join!(
            client.pid(context::current()),
            client.pid(context::current())
        );
        ensure!(
            [&a, &b].iter().all(|r| r.is_err())
                && [&a, &b]
                    .iter()
                    .any(|r| matches!(r, Err(RpcError::Channel(_)))),
            "a garbled reply gave {a:?} and {b:?}"
        );
        all_exit(first.clone()).await?;
        let stats = pool.wait_until(|s| s.spawned == 2 && s.idle == 1).await;
        ensure!(stats.crashed == 1, "{stats:?}");
        ensure!(
            pool.worker_pids() != first,
            "the broken worker is still in the pool"
        );
        pool.shutdown().await;
        Ok(())
    })
}

fn idempotent_jobs_are_retried_once() -> Result<(), Failed> {
    block_on(async {
        let t = template().await?;
        let pool = pool_on(&t)
            .max(1)
            .load(1)
            .idempotent(|r| matches!(r, JobRequest::AnnouncedSleep { .. }))
            .build();
        let client = Client::from(pool.clone());
        let mut events = pool.events().ok_or("no events")?;
        let victim = client.pid(context::current()).await.map_err(fail)?;
        let job = client.announced_sleep(context::current(), 300);
        let kill = async {
            // Kill once the job runs on the worker.
            let (pid, _) = events.recv().await.ok_or("no event")?;
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            )
            .map_err(|e| e.to_string())
        };
        let (job, killed) = tokio::join!(job, kill);
        killed?;
        let pid = job.map_err(fail)?;
        ensure!(pid != victim, "retried on the dead worker");
        pool.shutdown().await;
        Ok(())
    })
}

fn failing_init_backs_off_and_reaches_callers() -> Result<(), Failed> {
    block_on(async {
        let t = template().await?;
        // ANCHOR: init_failure
        t.arg("fail");
        let pool = pool_on(&t).max(2).build();
        let client = Client::from(pool.clone());
        for _ in 0..3 {
            let e = client.pid(context::current()).await.unwrap_err();
            match fork_pool::Error::find(&e) {
                Some(fork_pool::Error::Spawn(cause)) => {
                    // The cause itself, typed, and in the message.
                    ensure!(
                        matches!(&**cause, fork_rpc::Error::Init(m) if m == "cannot start: no database"),
                        "cause {cause:?}"
                    );
                    let shown = fork_pool::Error::find(&e).map(ToString::to_string);
                    ensure!(
                        shown.as_deref()
                            == Some(
                                "no worker could be started: the worker's init hook failed: cannot start: no database"
                            ),
                        "message {shown:?}"
                    );
                }
                other => return Err(format!("got {e:?} / {other:?}").into()),
            }
        }
        // Three calls, three failed starts, not a storm.
        let failures = pool.stats().spawn_failures;
        ensure!((3..=4).contains(&failures), "{failures} failed starts");
        // ANCHOR_END: init_failure
        ensure!(
            children_of(t.id()).map_err(fail)?.is_empty(),
            "workers left"
        );
        pool.shutdown().await;
        Ok(())
    })
}

/// A worker whose init hook never returns holds shutdown up only until its
/// timeout, and is killed.
fn shutdown_gives_up_on_a_hung_start() -> Result<(), Failed> {
    block_on(async {
        let t = template().await?;
        let (mut hung_r, hung_w) = std::io::pipe().map_err(fail)?;
        t.arg("hang");
        t.fd(&hung_w);
        drop(hung_w);
        let pool = pool_on(&t)
            .idle(1)
            .shutdown_timeout(Duration::from_millis(200))
            .build();
        tokio::task::spawn_blocking(move || std::io::Read::read_exact(&mut hung_r, &mut [0]))
            .await
            .map_err(fail)?
            .map_err(fail)?;
        let workers = children_of(t.id()).map_err(fail)?;
        ensure!(workers.len() == 1, "workers {workers:?}");
        tokio::time::timeout(Duration::from_secs(10), pool.shutdown())
            .await
            .map_err(|_| "shutdown hung")?;
        all_exit(workers).await?;
        let stats = pool.stats();
        ensure!(stats.starting == 0 && stats.spawned == 0, "{stats:?}");
        Ok(())
    })
}

fn job_timeout_kills_the_stuck_worker() -> Result<(), Failed> {
    block_on(async {
        let t = template().await?;
        // ANCHOR: job_timeout
        let pool = pool_on(&t)
            .max(1)
            .load(2)
            .job_timeout(Duration::from_millis(300))
            .kill_grace(Duration::from_millis(200))
            .build();
        let client = Client::from(pool.clone());
        let stuck = client.pid(context::current()).await.map_err(fail)?;
        // A blocking job (it cannot be cancelled) and one waiting behind it
        // in the same worker.
        let (a, b) = tokio::join!(
            client.block(context::current(), 60_000),
            client.pid(context::current())
        );
        // Both jobs exceed their limit (the one behind waits on the stuck
        // worker); whichever the pool sees first times out and gets the
        // worker ended: SIGTERM asks a fork-rpc worker to finish what it
        // has, which a stuck one cannot, so SIGKILL follows after the grace
        // period, and the other job may see the worker lost to it first.
        let timed_out = |e: &RpcError| matches!(fork_pool::Error::find(e), Some(fork_pool::Error::Timeout { pid, .. }) if *pid == stuck);
        let terminated = |e: &RpcError| {
            lost(e).and_then(|l| l.status()).and_then(|s| s.signal()) == Some(libc::SIGKILL)
        };
        let e = a.unwrap_err();
        ensure!(timed_out(&e) || terminated(&e), "stuck job gave {e:?}");
        match b {
            Err(e_b) => {
                ensure!(
                    timed_out(&e_b) || terminated(&e_b),
                    "the job behind gave {e_b:?}"
                );
                ensure!(
                    timed_out(&e) || timed_out(&e_b),
                    "no job timed out: {e:?}, {e_b:?}"
                );
            }
            Ok(pid) => {
                ensure!(pid != stuck, "ran on the stuck worker");
                ensure!(timed_out(&e), "stuck job gave {e:?}");
            }
        }
        all_exit([stuck]).await?;
        let next = client.pid(context::current()).await.map_err(fail)?;
        ensure!(next != stuck, "the stuck worker served again");
        ensure!(pool.stats().timed_out >= 1, "{:?}", pool.stats());
        // ANCHOR_END: job_timeout
        pool.shutdown().await;
        Ok(())
    })
}

fn shutdown_drains_and_leaves_nothing() -> Result<(), Failed> {
    block_on(async {
        let t = template().await?;
        let pool = pool_on(&t).max(2).load(1).start(Duration::ZERO).build();
        let client = Client::from(pool.clone());
        let mut events = pool.events().ok_or("no events")?;
        // Six jobs: two run, four wait in the queue when shutdown starts.
        let jobs = futures::future::join_all(
            (0..6).map(|_| client.announced_sleep(context::current(), 100)),
        );
        let shutdown = async {
            for _ in 0..2 {
                let _event = events.recv().await.ok_or("no event")?;
            }
            let before = pool.stats();
            let mut shutdown = Box::pin(pool.shutdown());
            ensure!(
                poll_once(&mut shutdown).is_none(),
                "shut down with jobs running"
            );
            // Begun: a new call fails until it is done.
            let e = client.pid(context::current()).await.unwrap_err();
            ensure!(
                matches!(fork_pool::Error::find(&e), Some(fork_pool::Error::Closed)),
                "a call during the shutdown gave {e:?}"
            );
            shutdown.await;
            Ok::<_, String>(before)
        };
        let (jobs, before) = tokio::join!(jobs, shutdown);
        let before = before?;
        ensure!(before.queued == 4, "at shutdown: {before:?}");
        for j in jobs {
            j.map_err(fail)?;
        }
        ensure!(
            children_of(t.id()).map_err(fail)?.is_empty(),
            "workers left: {:?}",
            children_of(t.id())
        );
        ensure!(
            pool.stats().idle + pool.stats().busy == 0,
            "{:?}",
            pool.stats()
        );
        Ok(())
    })
}

/// After `shutdown`, the next call opens the pool again: new workers from
/// the same template, every one of them gone after the next shutdown;
/// `finished` waits for the shutdown after it was taken.
fn a_pool_is_used_again_after_shutdown() -> Result<(), Failed> {
    block_on(async {
        let t = template().await?;
        t.init(&PRELOAD, &42);
        t.arg("again");
        let pool = pool_on(&t).max(2).idle(1).build();
        let client = Client::from(pool.clone());
        // Four answers and the pids of the workers that gave four more.
        let batch = || async {
            let answers =
                futures::future::try_join_all((0..4).map(|_| client.preloaded(context::current())));
            let pids =
                futures::future::try_join_all((0..4).map(|_| client.pid(context::current())));
            let (answers, pids) = tokio::try_join!(answers, pids).map_err(fail)?;
            for answer in answers {
                ensure!(answer == (42, "again".to_string()), "answered {answer:?}");
            }
            Ok::<_, Failed>(pids.into_iter().collect::<BTreeSet<u32>>())
        };
        let gone = |pids: &BTreeSet<u32>| -> Result<(), Failed> {
            for &pid in pids {
                ensure!(state_of(pid).is_none(), "worker {pid} is still there");
            }
            let left = children_of(t.id()).map_err(fail)?;
            ensure!(left.is_empty(), "workers left: {left:?}");
            Ok(())
        };
        let mut first_shutdown = Box::pin(pool.finished());
        // ANCHOR: reuse
        let before = batch().await?;
        pool.shutdown().await; // no worker left
        gone(&before)?;
        let after = batch().await?; // served by new workers
        ensure!(before.is_disjoint(&after), "{before:?} served again");
        // ANCHOR_END: reuse
        // Taken before the shutdown, it resolves though the pool is open
        // again. (Awaited: another thread may still be passing the news on
        // when `shutdown` returns.)
        let resolves = |finished| tokio::time::timeout(Duration::from_secs(10), finished);
        resolves(&mut first_shutdown)
            .await
            .map_err(|_| "finished() missed the shutdown")?;
        // The `idle` spare is back, and the counters went on counting.
        let stats = tokio::time::timeout(Duration::from_secs(10), pool.wait_until(|s| s.idle >= 1))
            .await
            .map_err(|_| format!("no spare: {:?}", pool.stats()))?;
        ensure!(stats.completed == 16, "{stats:?}");
        ensure!(
            stats.spawned as usize >= before.len() + after.len(),
            "{stats:?}"
        );
        let mut second_shutdown = Box::pin(pool.finished());
        ensure!(
            poll_once(&mut second_shutdown).is_none(),
            "finished() resolved with the pool open"
        );
        pool.shutdown().await;
        gone(&after)?;
        resolves(&mut second_shutdown)
            .await
            .map_err(|_| "finished() missed the second shutdown")?;
        // Shut down and not used since: at once.
        ensure!(
            poll_once(&mut Box::pin(pool.finished())).is_some(),
            "finished() of a pool shut down waited"
        );
        Ok(())
    })
}

fn bounded_queue_waits_or_fails() -> Result<(), Failed> {
    block_on(async {
        for overflow in [Overflow::Error, Overflow::Wait] {
            let t = template().await?;
            // ANCHOR: queue_limit
            let pool = pool_on(&t).max(1).load(1).queue_limit(2, overflow).build();
            let client = Client::from(pool.clone());
            let mut events = pool.events().ok_or("no events")?;
            let first = client.announced_sleep(context::current(), 200);
            let rest = async {
                let _event = events.recv().await.ok_or("no event")?;
                // One runs; two may wait; the fourth finds the queue full.
                let queued =
                    futures::future::join_all((0..3).map(|_| client.pid(context::current())));
                Ok::<_, String>(queued.await)
            };
            let (first, rest) = tokio::join!(first, rest);
            first.map_err(fail)?;
            let rest = rest?;
            let full = rest
                .iter()
                .filter(|r| matches!(r, Err(e) if matches!(fork_pool::Error::find(e), Some(fork_pool::Error::QueueFull(2)))))
                .count();
            let ok = rest.iter().filter(|r| r.is_ok()).count();
            match overflow {
                Overflow::Error => ensure!(full == 1 && ok == 2, "error overflow: {rest:?}"),
                _ => ensure!(full == 0 && ok == 3, "wait overflow: {rest:?}"),
            }
            // ANCHOR_END: queue_limit
            pool.shutdown().await;
        }
        Ok(())
    })
}

/// A queue limit of 0 is taken as 1: the first call of a pool that has no
/// worker yet waits for the one it starts, with either overflow.
fn a_queue_of_zero_still_lets_the_pool_grow() -> Result<(), Failed> {
    block_on(async {
        for overflow in [Overflow::Error, Overflow::Wait] {
            let t = template().await?;
            let pool = pool_on(&t).max(1).queue_limit(0, overflow).build();
            let client = Client::from(pool.clone());
            let call = client.pid(context::current());
            tokio::time::timeout(Duration::from_secs(10), call)
                .await
                .map_err(|_| format!("{overflow:?}: the first call hung"))?
                .map_err(fail)?;
            ensure!(
                pool.stats().spawned == 1,
                "{overflow:?}: {:?}",
                pool.stats()
            );
            pool.shutdown().await;
        }
        Ok(())
    })
}

/// Every knob at its limit ("no limit"): calls are served, a killed worker
/// is replaced, and shutdown ends, with no overflow on the way.
fn knobs_at_their_limits() -> Result<(), Failed> {
    block_on(async {
        let t = template().await?;
        let pool = pool_on(&t)
            .idle(2)
            .max(3)
            .load(usize::MAX)
            .start(Duration::MAX)
            .stop(Duration::MAX)
            .max_requests(usize::MAX)
            .max_requests_jitter(usize::MAX)
            .job_timeout(Duration::MAX)
            .kill_grace(Duration::MAX)
            .shutdown_timeout(Duration::MAX)
            .rpc(fork_rpc::Config::default().default_timeout(Duration::MAX))
            .build();
        let client = Client::from(pool.clone());
        let run = async {
            let victim = client.pid(pool.context()).await.map_err(fail)?;
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(victim as i32),
                nix::sys::signal::Signal::SIGKILL,
            )
            .map_err(fail)?;
            pool.wait_until(|s| s.crashed == 1).await;
            let next = client
                .pid(fork_rpc::context::with_timeout(Duration::MAX))
                .await
                .map_err(fail)?;
            ensure!(next != victim, "a job ran on the killed worker");
            let pids = pool.worker_pids();
            pool.shutdown().await;
            all_exit(pids).await
        };
        tokio::time::timeout(Duration::from_secs(20), run)
            .await
            .map_err(|_| "the pool hung")?
    })
}

fn dropping_the_pool_shuts_it_down() -> Result<(), Failed> {
    block_on(async {
        let t = template().await?;
        // ANCHOR: drop
        let pool = pool_on(&t).max(2).idle(2).build();
        let client = Client::from(pool.clone());
        client.pid(context::current()).await.map_err(fail)?;
        let pids = pool.worker_pids();
        ensure!(!pids.is_empty(), "no workers");
        let finished = pool.finished();
        drop(client);
        drop(pool);
        finished.await; // every worker has exited and was reaped
        // ANCHOR_END: drop
        for pid in pids {
            ensure!(
                state_of(pid).is_none(),
                "worker {pid} is still there ({:?}) after finished",
                state_of(pid)
            );
        }
        ensure!(
            children_of(t.id()).map_err(fail)?.is_empty(),
            "the template still has children"
        );
        Ok(())
    })
}

fn chaos() -> Result<(), Failed> {
    block_on(async {
        let t = template().await?;
        // ANCHOR: chaos_pool
        let pool = pool_on(&t)
            .max(4)
            .idle(4)
            .load(1)
            .start(Duration::ZERO)
            .idempotent(|r| matches!(r, JobRequest::Sleep { .. }))
            // A kill every 10 ms among 4 workers: on a loaded machine, where
            // a start or a job takes longer, one job can meet four kills in
            // a row (seen once in CI-like conditions with 3).
            .retries(8)
            .build();
        // ANCHOR_END: chaos_pool
        let client = Client::from(pool.clone());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let killer = {
            let pool = pool.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut kills = 0u32;
                let mut rng = 0x2545_f491_4f6c_dd1du64;
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let pids = pool.worker_pids();
                    if pids.is_empty() {
                        continue;
                    }
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let victim = pids[(rng % pids.len() as u64) as usize];
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(victim as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    kills += 1;
                }
                kills
            })
        };
        let total = 4_000;
        let mut ok_idempotent = 0;
        let mut lost_plain = 0;
        let mut ok_plain = 0;
        let calls = futures::future::join_all((0..total).map(|i| {
            let c = client.clone();
            async move {
                // Queued jobs wait long under this load: no tarpc deadline.
                let ctx = fork_rpc::context::with_timeout(Duration::from_secs(300));
                if i % 2 == 0 {
                    (true, c.sleep(ctx, 0).await.map(drop))
                } else {
                    (false, c.pid(ctx).await.map(drop))
                }
            }
        }));
        // No call hangs: every one returns, and soon.
        let results = tokio::time::timeout(Duration::from_secs(120), calls)
            .await
            .map_err(|_| "calls hung under chaos")?;
        stop.store(true, Ordering::Relaxed);
        let kills = killer.await.map_err(fail)?;
        for (idempotent, r) in results {
            match (idempotent, r) {
                (true, Ok(())) => ok_idempotent += 1,
                (true, Err(e)) => return Err(format!("an idempotent job failed: {e:?}").into()),
                (false, Ok(())) => ok_plain += 1,
                // Only a job running on a killed worker may fail, and says
                // so; a queued one is never lost.
                (false, Err(e)) => {
                    ensure!(lost(&e).is_some(), "job failed with {e:?}");
                    lost_plain += 1;
                }
            }
        }
        ensure!(kills > 10, "only {kills} kills");
        ensure!(
            ok_idempotent + ok_plain + lost_plain <= total,
            "counted twice"
        );
        ensure!(
            ok_idempotent == total / 2,
            "{ok_idempotent} idempotent jobs succeeded"
        );
        ensure!(lost_plain > 0, "no job was lost: the chaos did not bite");
        // Back to its size, and everything works.
        tokio::time::timeout(Duration::from_secs(10), pool.wait_until(|s| s.idle == 4))
            .await
            .map_err(|_| format!("the pool did not recover: {:?}", pool.stats()))?;
        // (Idempotent calls: a worker killed last may not be noticed yet.)
        for _ in 0..10 {
            client.sleep(context::current(), 0).await.map_err(fail)?;
        }
        pool.shutdown().await;
        ensure!(
            children_of(t.id()).map_err(fail)?.is_empty(),
            "processes left"
        );
        Ok(())
    })
}

/// A pool of one worker (`load` 1) running a job that lasts a minute, once
/// it runs: the pool, a client, and the job's task (abort it when done).
async fn busy_with_a_long_job(
    builder: fork_pool::Builder<JobRequest, JobResponse, ()>,
) -> Result<
    (
        Pool<JobRequest, JobResponse>,
        Client,
        tokio::task::JoinHandle<Result<u32, RpcError>>,
    ),
    Failed,
> {
    let pool = builder.max(1).load(1).build();
    let client = Client::from(pool.clone());
    let mut events = pool.events().ok_or("no events")?;
    let long = tokio::spawn({
        let client = client.clone();
        async move { client.announced_sleep(context::current(), 60_000).await }
    });
    let _event = events.recv().await.ok_or("no event")?;
    Ok((pool, client, long))
}

/// A queued call fails at its deadline, whatever the workers do: behind a
/// long job, and when no worker ever becomes ready.
fn a_queued_call_fails_at_its_deadline() -> Result<(), Failed> {
    block_on(async {
        let t = template().await?;
        let (pool, client, long) = busy_with_a_long_job(pool_on(&t)).await?;
        // ANCHOR: queue_deadline
        // It fails at its deadline, not when the job before it ends.
        let e = tokio::time::timeout(
            Duration::from_secs(10),
            client.pid(fork_rpc::context::with_timeout(Duration::from_millis(300))),
        )
        .await
        .map_err(|_| "the queued call outlived its deadline")?
        .unwrap_err();
        ensure!(
            matches!(e, RpcError::DeadlineExceeded),
            "queued call gave {e:?}"
        );
        ensure!(pool.stats().queued == 0, "{:?}", pool.stats());
        // ANCHOR_END: queue_deadline
        long.abort();
        pool.shutdown().await;

        // The same with the pool's default deadline, from `Pool::context`.
        let t = template().await?;
        let rpc = fork_rpc::Config::default().default_timeout(Duration::from_millis(300));
        let (pool, client, long) = busy_with_a_long_job(pool_on(&t).rpc(rpc)).await?;
        let e = tokio::time::timeout(Duration::from_secs(10), client.pid(pool.context()))
            .await
            .map_err(|_| "the queued call outlived the pool's default deadline")?
            .unwrap_err();
        ensure!(
            matches!(e, RpcError::DeadlineExceeded),
            "queued call gave {e:?}"
        );
        long.abort();
        pool.shutdown().await;

        // A worker that never becomes ready (its init hook hangs).
        let t = template().await?;
        let (_hung_r, hung_w) = std::io::pipe().map_err(fail)?;
        t.arg("hang").fd(&hung_w);
        let pool = pool_on(&t).max(1).shutdown_timeout(Duration::ZERO).build();
        let client = Client::from(pool.clone());
        let e = tokio::time::timeout(
            Duration::from_secs(10),
            client.pid(fork_rpc::context::with_timeout(Duration::from_millis(300))),
        )
        .await
        .map_err(|_| "the call outlived its deadline")?
        .unwrap_err();
        ensure!(matches!(e, RpcError::DeadlineExceeded), "call gave {e:?}");
        pool.shutdown().await;
        ensure!(
            children_of(t.id()).map_err(fail)?.is_empty(),
            "workers left"
        );
        Ok(())
    })
}

/// A queued call whose caller gives up leaves the queue at once, with its
/// room in a bounded queue.
fn a_dropped_queued_call_leaves_the_queue() -> Result<(), Failed> {
    block_on(async {
        let t = template().await?;
        let builder = pool_on(&t).queue_limit(2, Overflow::Error);
        let (pool, client, long) = busy_with_a_long_job(builder).await?;
        for _ in 0..2 {
            let gave_up =
                tokio::time::timeout(Duration::from_millis(20), client.pid(context::current()))
                    .await;
            ensure!(gave_up.is_err(), "a queued call returned {gave_up:?}");
        }
        ensure!(
            pool.stats().queued == 0,
            "after giving up: {:?}",
            pool.stats()
        );
        // Their room is back: two calls queue, the third finds it full.
        let queued: Vec<_> = (0..2)
            .map(|_| {
                let client = client.clone();
                tokio::spawn(async move { client.pid(context::current()).await })
            })
            .collect();
        pool.wait_until(|s| s.queued == 2).await;
        let e = client.pid(context::current()).await.unwrap_err();
        ensure!(
            matches!(
                fork_pool::Error::find(&e),
                Some(fork_pool::Error::QueueFull(2))
            ),
            "third call gave {e:?}"
        );
        for call in queued {
            call.abort();
        }
        long.abort();
        pool.shutdown().await;
        Ok(())
    })
}

/// When `shutdown` returns, every worker the pool started is gone and
/// reaped, including one it killed before (a timed-out job's).
fn shutdown_returns_once_every_worker_is_reaped() -> Result<(), Failed> {
    block_on(async {
        let t = template().await?;
        let pool = pool_on(&t)
            .max(1)
            .job_timeout(Duration::from_millis(100))
            .kill_grace(Duration::from_millis(500))
            .build();
        let client = Client::from(pool.clone());
        // Blocks its worker's thread: SIGTERM cannot end it, SIGKILL will.
        let e = client.block(context::current(), 60_000).await.unwrap_err();
        let Some(fork_pool::Error::Timeout { pid, .. }) = fork_pool::Error::find(&e) else {
            return Err(format!("the blocked job gave {e:?}").into());
        };
        let pid = *pid;
        pool.shutdown().await;
        ensure!(
            integration_tests::state_of(pid).is_none(),
            "worker {pid} is still there ({:?}) after shutdown",
            integration_tests::state_of(pid)
        );
        ensure!(
            children_of(t.id()).map_err(fail)?.is_empty(),
            "workers left"
        );
        Ok(())
    })
}

/// A worker that does not start within the RPC start timeout is killed, and
/// the callers learn why; the pool does not keep it "starting" for ever.
fn a_start_that_hangs_fails_the_callers() -> Result<(), Failed> {
    block_on(async {
        let t = template().await?;
        let (_hung_r, hung_w) = std::io::pipe().map_err(fail)?;
        t.arg("hang").fd(&hung_w);
        let limit = Duration::from_millis(200);
        let pool = pool_on(&t)
            .max(1)
            .rpc(fork_rpc::Config::default().start_timeout(limit))
            .build();
        let client = Client::from(pool.clone());
        let e = tokio::time::timeout(Duration::from_secs(10), client.pid(context::current()))
            .await
            .map_err(|_| "the call hung on a start that hangs")?
            .unwrap_err();
        match fork_pool::Error::find(&e) {
            Some(fork_pool::Error::Spawn(cause)) => ensure!(
                matches!(&**cause, fork_rpc::Error::StartTimeout { limit: l, pid: Some(_) } if *l == limit),
                "cause {cause:?}"
            ),
            other => return Err(format!("got {e:?} / {other:?}").into()),
        }
        let stats = pool.wait_until(|s| s.starting == 0).await;
        ensure!(stats.spawn_failures >= 1, "{stats:?}");
        pool.shutdown().await;
        ensure!(
            children_of(t.id()).map_err(fail)?.is_empty(),
            "workers left"
        );
        Ok(())
    })
}

/// A spawn failure reaches the callers with its cause, typed: here `fork`
/// at the process limit, with its errno.
fn spawn_errors_keep_their_cause() -> Result<(), Failed> {
    block_on(async {
        let t = template().await?;
        let limited = t
            .fork()
            .init(&integration_tests::FORBID_FORKS, &())
            .template()
            .await
            .map_err(fail)?;
        let pool = pool_on(&limited).max(1).build();
        let client = Client::from(pool.clone());
        let e = client.pid(context::current()).await.unwrap_err();
        let Some(pool_error @ fork_pool::Error::Spawn(cause)) = fork_pool::Error::find(&e) else {
            return Err(format!("expected a spawn error, got {e:?}").into());
        };
        match &**cause {
            fork_rpc::Error::Core(fork_core::Error::Fork(io)) => {
                ensure!(io.raw_os_error() == Some(libc::EAGAIN), "errno {io:?}")
            }
            other => return Err(format!("cause {other:?}").into()),
        }
        ensure!(
            std::error::Error::source(pool_error).is_some(),
            "no source for {pool_error:?}"
        );
        let shown = pool_error.to_string();
        ensure!(
            shown.starts_with(
                "no worker could be started: fork failed in the template: \
                 Resource temporarily unavailable"
            ) && shown.contains("RLIMIT_NPROC"),
            "message: {shown}"
        );
        pool.shutdown().await;
        Ok(())
    })
}

/// Ctrl-C in a terminal, or `kill -<signal> -<pgid>`, reaches the whole
/// process group of a program: its pool's template and workers are not in
/// it, so the program, which handles the signal, shuts the pool down
/// gracefully and no job is killed by the signal.
fn group_signals_leave_the_parent_in_charge() -> Result<(), Failed> {
    use std::io::{BufRead, BufReader, Read};
    use std::os::unix::process::CommandExt;
    block_on(async {
        for signal in [
            nix::sys::signal::Signal::SIGINT,
            nix::sys::signal::Signal::SIGTERM,
        ] {
            let mut host = std::process::Command::new(env!("CARGO_BIN_EXE_template-host"))
                .arg("group-signal")
                .process_group(0)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .map_err(fail)?;
            let mut out = BufReader::new(host.stdout.take().ok_or("no stdout")?);
            let mut ready = String::new();
            out.read_line(&mut ready).map_err(fail)?;
            // "ready <template pid> [<worker pid>, <worker pid>]"
            let pids: Vec<u32> = ready
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|n| n.parse().ok())
                .collect();
            ensure!(
                ready.starts_with("ready ") && pids.len() == 3,
                "{signal}: helper said {ready:?}"
            );
            nix::sys::signal::killpg(nix::unistd::Pid::from_raw(host.id() as i32), signal)
                .map_err(fail)?;
            let mut rest = String::new();
            out.read_to_string(&mut rest).map_err(fail)?;
            let status = host.wait().map_err(fail)?;
            ensure!(
                status.success(),
                "{signal}: helper exited with {status}: {rest}"
            );
            ensure!(
                rest == format!("{}\njobs ok: 4, crashed: 0\n", signal.as_str()),
                "{signal}: helper said {rest:?}"
            );
            all_exit(pids).await?;
        }
        Ok(())
    })
}

fn main() {
    fork_core::init();
    integration_tests::run(&[
        (
            "typed_calls_through_a_prepared_template",
            typed_calls_through_a_prepared_template,
        ),
        (
            "start_zero_grows_at_once_and_max_is_respected",
            start_zero_grows_at_once_and_max_is_respected,
        ),
        (
            "long_start_keeps_jobs_queued_on_the_first_worker",
            long_start_keeps_jobs_queued_on_the_first_worker,
        ),
        (
            "light_load_concentrates_on_one_worker",
            light_load_concentrates_on_one_worker,
        ),
        (
            "calls_given_up_give_their_places_back",
            calls_given_up_give_their_places_back,
        ),
        (
            "idle_workers_stop_after_stop_down_to_idle",
            idle_workers_stop_after_stop_down_to_idle,
        ),
        (
            "a_spare_that_goes_to_work_is_replaced",
            a_spare_that_goes_to_work_is_replaced,
        ),
        (
            "max_requests_recycles_with_jitter",
            max_requests_recycles_with_jitter,
        ),
        (
            "memory_ceiling_recycles_but_not_fresh_workers",
            memory_ceiling_recycles_but_not_fresh_workers,
        ),
        ("retire_from_inside_a_worker", retire_from_inside_a_worker),
        (
            "crashed_workers_are_replaced_and_queued_jobs_kept",
            crashed_workers_are_replaced_and_queued_jobs_kept,
        ),
        (
            "a_worker_that_breaks_its_connection_is_replaced",
            a_worker_that_breaks_its_connection_is_replaced,
        ),
        (
            "idempotent_jobs_are_retried_once",
            idempotent_jobs_are_retried_once,
        ),
        (
            "failing_init_backs_off_and_reaches_callers",
            failing_init_backs_off_and_reaches_callers,
        ),
        (
            "shutdown_gives_up_on_a_hung_start",
            shutdown_gives_up_on_a_hung_start,
        ),
        (
            "job_timeout_kills_the_stuck_worker",
            job_timeout_kills_the_stuck_worker,
        ),
        (
            "shutdown_drains_and_leaves_nothing",
            shutdown_drains_and_leaves_nothing,
        ),
        (
            "a_pool_is_used_again_after_shutdown",
            a_pool_is_used_again_after_shutdown,
        ),
        ("bounded_queue_waits_or_fails", bounded_queue_waits_or_fails),
        (
            "a_queue_of_zero_still_lets_the_pool_grow",
            a_queue_of_zero_still_lets_the_pool_grow,
        ),
        ("knobs_at_their_limits", knobs_at_their_limits),
        (
            "dropping_the_pool_shuts_it_down",
            dropping_the_pool_shuts_it_down,
        ),
        ("chaos", chaos),
        (
            "a_queued_call_fails_at_its_deadline",
            a_queued_call_fails_at_its_deadline,
        ),
        (
            "a_dropped_queued_call_leaves_the_queue",
            a_dropped_queued_call_leaves_the_queue,
        ),
        (
            "shutdown_returns_once_every_worker_is_reaped",
            shutdown_returns_once_every_worker_is_reaped,
        ),
        (
            "spawn_errors_keep_their_cause",
            spawn_errors_keep_their_cause,
        ),
        (
            "a_start_that_hangs_fails_the_callers",
            a_start_that_hangs_fails_the_callers,
        ),
        (
            "group_signals_leave_the_parent_in_charge",
            group_signals_leave_the_parent_in_charge,
        ),
    ]);
}
