//! Allocations per call, counted: a plain function job allocates no more
//! than the same call through a tarpc service on the same pool, in the
//! parent and in the worker (both count through this binary's global
//! allocator: the workers are its forks).
//!
//! One test in its own binary, on a `current_thread` runtime: nothing else
//! allocates while it counts.

use std::alloc::System;

use fork_core::Template;
use fork_pool::Pool;
use fork_rpc::jobs::Job;
use fork_rpc::{RpcEntry, Setup};
use integration_tests::{Failed, ensure, fail};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tarpc::context;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Allocations (and reallocations) this process made so far.
fn allocations() -> u64 {
    let stats = GLOBAL.stats();
    (stats.allocations + stats.reallocations) as u64
}

// ===== the same work, as a service and as jobs =====

#[tarpc::service]
trait Echo {
    async fn echo(x: u64) -> u64;
    /// The worker's allocations so far.
    async fn allocations() -> u64;
}

#[derive(Clone)]
struct EchoServer;

impl Echo for EchoServer {
    async fn echo(self, _: context::Context, x: u64) -> u64 {
        x
    }

    async fn allocations(self, _: context::Context) -> u64 {
        allocations()
    }
}

fn echo_service(_: &mut Setup<()>) -> Result<ServeEcho<EchoServer>, String> {
    Ok(EchoServer.serve())
}
static ECHO_SERVICE: RpcEntry<EchoRequest, EchoResponse> = fork_rpc::entry!(echo_service);

fn echo(x: u64) -> Result<u64, String> {
    Ok(x)
}
static ECHO: Job<u64, u64, String> = fork_rpc::job!(echo);

fn worker_allocations((): ()) -> Result<u64, String> {
    Ok(allocations())
}
static WORKER_ALLOCATIONS: Job<(), u64, String> = fork_rpc::job!(worker_allocations);

// ===== the test =====

const CALLS: u64 = 2_000;

/// Allocations per call in the parent and in the worker.
#[derive(Debug, Clone, Copy)]
struct PerCall {
    parent: f64,
    worker: f64,
}

fn a_function_job_allocates_no_more_than_a_service_call() -> Result<(), Failed> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(fail)?;
    rt.block_on(async {
        let template = Template::new().map_err(fail)?;
        let pool = Pool::builder(template.clone(), &ECHO_SERVICE)
            .idle(1)
            .max(1)
            .load(1)
            .build();
        pool.wait_until(|s| s.idle == 1).await;
        let client = EchoClient::from(pool.clone());
        let service = measure(
            || async { client.echo(context::current(), 7).await.map_err(fail) },
            || async { client.allocations(context::current()).await.map_err(fail) },
        )
        .await?;
        drop(client);
        pool.shutdown().await;

        let pool = Pool::jobs(template.clone()).idle(1).max(1).load(1).build();
        pool.wait_until(|s| s.idle == 1).await;
        let jobs = measure(
            || async { pool.run(&ECHO, 7).await.map_err(fail) },
            || async { pool.run(&WORKER_ALLOCATIONS, ()).await.map_err(fail) },
        )
        .await?;
        pool.shutdown().await;

        eprintln!("allocations per call: service {service:?}, function jobs {jobs:?}");
        ensure!(
            jobs.parent <= service.parent && jobs.worker <= service.worker,
            "function jobs allocate more: {jobs:?} against the service's {service:?}"
        );
        template.shutdown().await.map_err(fail)?;
        Ok(())
    })
}

/// Allocations per call of `call` (which must return 7), in the parent and
/// in the worker (`worker` reads its count), after a warm-up.
async fn measure<C, W, CF, WF>(call: C, worker: W) -> Result<PerCall, Failed>
where
    C: Fn() -> CF,
    CF: Future<Output = Result<u64, Failed>>,
    W: Fn() -> WF,
    WF: Future<Output = Result<u64, Failed>>,
{
    for _ in 0..CALLS {
        ensure!(call().await? == 7, "echo");
    }
    let in_worker = worker().await?;
    let region = Region::new(GLOBAL);
    for _ in 0..CALLS {
        call().await?;
    }
    let change = region.change();
    let parent = (change.allocations + change.reallocations) as f64 / CALLS as f64;
    // (The reading call itself is one more call: the count is a bound.)
    let worker = (worker().await? - in_worker) as f64 / CALLS as f64;
    Ok(PerCall { parent, worker })
}

fn main() {
    fork_core::init();
    integration_tests::run_quietly(&[(
        "a_function_job_allocates_no_more_than_a_service_call",
        a_function_job_allocates_no_more_than_a_service_call,
    )]);
}
