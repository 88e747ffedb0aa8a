//! Typed calls to a tarpc service served by forked workers.
//!
//! Shows: a `#[tarpc::service]` trait, its implementation in the worker, the
//! init hook and `fork_rpc::entry!`, `RpcWorker::builder` from a template; a
//! sync worker (one call at a time, the rest wait their turn) and a
//! `Config::concurrent(3)` worker (three at once, the rest queued, never
//! rejected); deadlines: a per-client default (`Client::context`) instead of
//! tarpc's 10 s, and per-call ones with `fork_rpc::context::with_timeout`; graceful
//! close: drop every client, and the worker finishes the calls it received
//! and exits 0.
//!
//! Run: `cargo run --example rpc_calc` (about 3 seconds).

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use fork_core::Template;
use fork_rpc::{Config, RpcEntry, RpcWorker, Setup};
use futures::future::try_join_all;
use serde::{Deserialize, Serialize};
use tarpc::client::RpcError;
use tarpc::context;

// ANCHOR: service
/// The service: the parent calls these methods, a worker runs them. The
/// arguments and results are serde types.
#[tarpc::service]
trait Calc {
    /// `a + b`.
    async fn add(a: i64, b: i64) -> i64;
    /// `a / b`; dividing by zero is an error of the service itself.
    async fn div(a: i64, b: i64) -> Result<i64, MathError>;
    /// Sleeps `ms` milliseconds without blocking the worker, then returns
    /// how many calls this worker has run at once, at most, so far.
    async fn sleep(ms: u64) -> usize;
}

/// An application error: part of the reply, not a failure of the call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum MathError {
    DivisionByZero,
}
// ANCHOR_END: service

// ANCHOR: server
/// The implementation, in the worker. tarpc clones it for every request;
/// the counters are shared through `Rc`, since a worker serves on a
/// single-threaded runtime of its own.
#[derive(Clone, Default)]
struct CalcServer {
    running: Rc<Cell<usize>>,
    peak: Rc<Cell<usize>>,
}

impl Calc for CalcServer {
    async fn add(self, _: context::Context, a: i64, b: i64) -> i64 {
        a + b
    }

    async fn div(self, _: context::Context, a: i64, b: i64) -> Result<i64, MathError> {
        a.checked_div(b).ok_or(MathError::DivisionByZero)
    }

    async fn sleep(self, _: context::Context, ms: u64) -> usize {
        /// Counts a running call until it ends, also when a deadline
        /// cancels it (the handler future is dropped).
        struct Running(Rc<Cell<usize>>);
        impl Drop for Running {
            fn drop(&mut self) {
                self.0.set(self.0.get() - 1);
            }
        }
        self.running.set(self.running.get() + 1);
        let _running = Running(self.running.clone());
        self.peak.set(self.peak.get().max(self.running.get()));
        tokio::time::sleep(Duration::from_millis(ms)).await;
        self.peak.get()
    }
}
// ANCHOR_END: server

// ANCHOR: entry
/// The init hook: runs in the worker right after the fork and builds the
/// service it serves. An `Err` here is the error of `Builder::spawn`.
fn calc(_setup: &mut Setup<()>) -> Result<ServeCalc<CalcServer>, String> {
    Ok(CalcServer::default().serve())
}

/// The worker entry, registered under a stable name like fork-core's entries
/// and typed with the service's request and response types.
static CALC: RpcEntry<CalcRequest, CalcResponse> = fork_rpc::entry!(calc);
// ANCHOR_END: entry

/// Milliseconds, for printing.
fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

#[fork_core::main] // calls fork_core::init() first, then builds the runtime
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let template = Template::shared()?;

    // ANCHOR: spawn
    // A sync worker (the default mode). Its client makes contexts with a 1 s
    // deadline (client.context()); tarpc's context::current() keeps its 10 s.
    let config = Config::default().default_timeout(Duration::from_secs(1));
    let (client, mut worker) = RpcWorker::builder(&mut template.fork(), &CALC)
        .config(config)
        .spawn()
        .await?;
    let calc = CalcClient::from(client.clone()); // the client tarpc generated
    let sum = calc.add(context::current(), 40, 2).await?;
    let quotient = calc.div(context::current(), 7, 0).await?;
    // ANCHOR_END: spawn
    println!(
        "sync worker {}: 40 + 2 = {sum}, 7 / 0 = {quotient:?}",
        worker.id()
    );
    assert_eq!(sum, 42);
    assert_eq!(quotient, Err(MathError::DivisionByZero));

    // ANCHOR: sync
    // Four calls sent at once: the sync worker runs them one after the
    // other, in order; the others wait in the socket meanwhile.
    let start = Instant::now();
    let calls = (0..4).map(|_| calc.sleep(context::current(), 100));
    let peaks = try_join_all(calls).await?;
    let took = start.elapsed();
    assert!(peaks.iter().all(|&peak| peak == 1), "{peaks:?}");
    assert!(took >= Duration::from_millis(400));
    // ANCHOR_END: sync
    println!(
        "  4 calls of 100 ms took {}, at most {} at once",
        ms(took),
        peaks.iter().max().unwrap_or(&0)
    );

    // ANCHOR: deadlines
    // The client's default deadline ends a call made with its context.
    let start = Instant::now();
    let err = calc.sleep(client.context(), 10_000).await.unwrap_err();
    assert!(matches!(err, RpcError::DeadlineExceeded), "{err:?}");
    println!(
        "  default deadline: a 10 s call ended after {}",
        ms(start.elapsed())
    );

    // A per-call deadline, shorter...
    let start = Instant::now();
    let short = fork_rpc::context::with_timeout(Duration::from_millis(100));
    let err = calc.sleep(short, 10_000).await.unwrap_err();
    assert!(matches!(err, RpcError::DeadlineExceeded), "{err:?}");
    println!(
        "  with_timeout(100 ms): a 10 s call ended after {}",
        ms(start.elapsed())
    );

    // ... or longer than the client's default.
    let start = Instant::now();
    let long = fork_rpc::context::with_timeout(Duration::from_secs(5));
    calc.sleep(long, 1_200).await?;
    println!(
        "  with_timeout(5 s): a 1.2 s call finished after {}",
        ms(start.elapsed())
    );
    // ANCHOR_END: deadlines

    // ANCHOR: close_sync
    // The calls that missed their deadline were cancelled in the worker too:
    // this one is served at once. Then drop the clients: the worker exits 0.
    assert_eq!(calc.add(context::current(), 1, 1).await?, 2);
    drop((calc, client));
    let status = worker.wait().await?;
    assert_eq!(status.code(), Some(0));
    // ANCHOR_END: close_sync
    println!("  closed: worker {} exited with {status}", worker.id());

    // ANCHOR: concurrent
    // Up to three calls at once; more are queued, never rejected.
    let config = Config::default().concurrent(3);
    let (client, mut worker) = RpcWorker::builder(&mut template.fork(), &CALC)
        .config(config)
        .spawn()
        .await?;
    let calc = CalcClient::from(client);
    let start = Instant::now();
    let calls = (0..6).map(|_| calc.sleep(context::current(), 100));
    let peaks = try_join_all(calls).await?;
    let took = start.elapsed();
    assert_eq!(peaks.iter().max(), Some(&3), "{peaks:?}");
    assert!(took >= Duration::from_millis(200));
    // ANCHOR_END: concurrent
    println!(
        "concurrent(3) worker {}: 6 calls of 100 ms took {}, at most {} at once",
        worker.id(),
        ms(took),
        peaks.iter().max().unwrap_or(&0)
    );

    // ANCHOR: close
    // Graceful close: calls in flight on clones of the client, then the
    // last clone dropped. The worker finishes every call it received,
    // flushes the replies, runs its done hook (none here) and exits 0.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..5 {
        let calc = calc.clone();
        tasks.spawn(async move {
            calc.sleep(context::current(), 50).await?;
            calc.add(context::current(), i, i).await
        });
    }
    drop(calc); // the tasks hold the last clones
    let mut sums = Vec::new();
    while let Some(sum) = tasks.join_next().await {
        sums.push(sum??);
    }
    let status = worker.wait().await?;
    assert_eq!(status.code(), Some(0));
    // ANCHOR_END: close
    sums.sort_unstable();
    assert_eq!(sums, [0, 2, 4, 6, 8]);
    println!(
        "  closed with 5 calls in flight: all answered {sums:?}, worker {} exited with {status}",
        worker.id()
    );
    Ok(())
}
