//! Allocations, counted (in the parent and in the worker: both count
//! through this binary's global allocator, the workers are its forks):
//!
//! - a plain function job allocates no more than the same call through a
//!   tarpc service on the same pool;
//! - a large payload is not copied into buffers of its own on the way: a
//!   1 MiB echo allocates about 1 MiB a side (the value decoded), and 64 of
//!   them in flight hold about what their payloads take.
//!
//! Tests in their own binary, one at a time, each on a `current_thread`
//! runtime: nothing else allocates while they count.

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
    /// Echoes a payload.
    async fn echo_bytes(data: bytes::Bytes) -> bytes::Bytes;
    /// The bytes the worker allocated so far.
    async fn allocated() -> u64;
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

    async fn echo_bytes(self, _: context::Context, data: bytes::Bytes) -> bytes::Bytes {
        data
    }

    async fn allocated(self, _: context::Context) -> u64 {
        GLOBAL.stats().bytes_allocated as u64
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

/// Runs a test on a `current_thread` runtime: the only thread that
/// allocates while it counts.
fn on_this_thread(test: impl Future<Output = Result<(), Failed>>) -> Result<(), Failed> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(fail)?
        .block_on(test)
}

/// Allocations per call in the parent and in the worker.
#[derive(Debug, Clone, Copy)]
struct PerCall {
    parent: f64,
    worker: f64,
}

fn a_function_job_allocates_no_more_than_a_service_call() -> Result<(), Failed> {
    on_this_thread(async {
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

const MIB: usize = 1 << 20;

/// Bytes allocated and freed, and the most live at once among the points
/// it was sampled.
#[derive(Debug, Default)]
struct Heap {
    peak: isize,
}

impl Heap {
    fn live() -> isize {
        let stats = GLOBAL.stats();
        stats.bytes_allocated as isize - stats.bytes_deallocated as isize
    }

    fn sample(&mut self, base: isize) {
        self.peak = self.peak.max(Self::live() - base);
    }
}

fn a_large_payload_is_not_copied_into_buffers_of_its_own() -> Result<(), Failed> {
    on_this_thread(async {
        let template = Template::new().map_err(fail)?;
        let (client, worker) = fork_rpc::RpcWorker::builder(&mut template.fork(), &ECHO_SERVICE)
            .spawn()
            .await
            .map_err(fail)?;
        let client = EchoClient::from(client);
        let payload = bytes::Bytes::from(vec![7u8; MIB]);
        // Warm-up: the connection's buffers grow to their size once.
        for _ in 0..4 {
            let back = client
                .echo_bytes(context::current(), payload.clone())
                .await
                .map_err(fail)?;
            ensure!(back == payload, "the payload came back changed");
        }
        const CALLS: usize = 20;
        let in_worker = client.allocated(context::current()).await.map_err(fail)?;
        let region = Region::new(GLOBAL);
        for _ in 0..CALLS {
            let back = client
                .echo_bytes(context::current(), payload.clone())
                .await
                .map_err(fail)?;
            ensure!(back.len() == MIB, "{} bytes came back", back.len());
        }
        let parent = region.change().bytes_allocated / CALLS;
        let worker_bytes = (client.allocated(context::current()).await.map_err(fail)? - in_worker)
            as usize
            / CALLS;
        eprintln!("bytes allocated per 1 MiB echo: parent {parent}, worker {worker_bytes}");
        // The decoded value is the one allocation of its size a side: the
        // frames go into buffers that are reused.
        ensure!(
            parent < MIB + MIB / 4 && worker_bytes < MIB + MIB / 4,
            "a 1 MiB echo allocates {parent} bytes in the parent and {worker_bytes} in the worker"
        );

        // 64 calls of 1 MiB in flight at once: the parent holds their
        // frames until written and their replies until read, no more.
        let base = Heap::live();
        let mut heap = Heap::default();
        let mut calls: futures::stream::FuturesUnordered<_> = (0..64)
            .map(|_| client.echo_bytes(context::current(), payload.clone()))
            .collect();
        let mut replies = Vec::new();
        while let Some(back) = futures::StreamExt::next(&mut calls).await {
            heap.sample(base);
            replies.push(back.map_err(fail)?);
        }
        heap.sample(base);
        let peak = heap.peak as usize;
        eprintln!(
            "64 calls of 1 MiB in flight: {} MiB live at most",
            peak / MIB
        );
        // Their replies (64 MiB, kept here), the frames queued (64 MiB at
        // most), and the connection's buffers: not a copy more.
        ensure!(
            peak <= 2 * 64 * MIB + 8 * MIB,
            "{} MiB live with 64 calls of 1 MiB in flight",
            peak / MIB
        );
        drop(replies);
        drop(calls);
        drop(client);
        let mut worker = worker;
        ensure!(
            worker.wait().await.map_err(fail)?.success(),
            "the worker failed"
        );
        template.shutdown().await.map_err(fail)?;
        Ok(())
    })
}

fn main() {
    fork_core::init();
    integration_tests::run_serially(&[
        (
            "a_function_job_allocates_no_more_than_a_service_call",
            a_function_job_allocates_no_more_than_a_service_call,
        ),
        (
            "a_large_payload_is_not_copied_into_buffers_of_its_own",
            a_large_payload_is_not_copied_into_buffers_of_its_own,
        ),
    ]);
}
