//! Pool benchmark: jobs per second through a fork-pool, compared with a
//! single fork-rpc worker called directly in the same run, and how CPU-bound
//! jobs scale from one worker to two.
//!
//! Run: `cargo bench -p benches --bench pool` (about 3 minutes), or
//! `cargo bench -p benches --bench pool -- --quick` (a few seconds; for CI).
//! `--only TEXT` measures only the rows whose part and name (as in
//! `overhead: pool, 1 worker, load 10, 10 in flight, current_thread`)
//! contain `TEXT` (to profile one of them with `perf` or `strace`, the
//! workers' pids are printed; or to measure one part, as in
//! `taskset -c 0 cargo bench -p benches --bench pool -- --only overhead`). Other arguments (`--bench`, which cargo passes) are ignored.
//!
//! Every worker serves the same `Job` service, forked from one template per
//! runtime:
//!
//! - **direct**: one worker from [`RpcWorker::builder`], called through its own
//!   client: the baseline.
//! - **pool**: a [`Pool`] with `idle(n).max(n)`, so that all its workers are
//!   there before the measurement and none comes or goes during it.
//!
//! Four parts, each measured with its peers side by side:
//!
//! 1. **Throughput**: trivial calls, 256 in flight, the pool with 2 workers
//!    at `load` 1, 2 and 10 (the rest wait in the pool's queue), and at
//!    `load` 128 (all 256 on the wire, as with the direct worker).
//! 2. **Overhead**: trivial calls, a pool of 1 worker at `load` L with L
//!    calls in flight, against the direct worker with L in flight: the same
//!    number of requests on the wire, so the difference is what the pool
//!    adds to a call. A second direct worker is measured with them as a
//!    control: its difference from the first is the method's own.
//! 3. **CPU-bound**: ~2 ms of arithmetic per job, 16 in flight, 1 worker
//!    against 2, at `load` 1 and at `load` 2.
//! 4. **Batches**: `Pool::map` over 100,000 trivial jobs on 2 workers at
//!    `load` 2 and 10, through the service and as plain function jobs
//!    (`fork_rpc::job!`, `Pool::run`): the same pool, two ways to call it.
//!
//! Calls are made by one task keeping N calls in flight (a new call as soon
//! as one returns). The machines this runs on are small, shared and noisy:
//! every measurement is split into rounds, and the rounds of the peers of a
//! part take turns, so a change in load hits them alike. Ratios are the
//! median of the per-round ratios (each round against its neighbour of the
//! other peer).
//!
//! The harness (options, rounds taking turns, samples, CPU accounting,
//! calls in flight, tables) is the `benches` library's, shared with the
//! spawn and rpc benches.

#![forbid(unsafe_code)]

use std::fmt::Display;
use std::future::Future;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use benches::Align::{Left, Right};
use benches::measure::side_by_side;
use benches::proc::load_average;
use benches::{
    Args, BoxResult, Caller, Rounds, Sample, Table, calls, ratio, spread, sum, terms, verdict,
};
use fork_core::Template;
use fork_pool::Pool;
use fork_rpc::{RpcEntry, RpcWorker, Setup};
use futures::future::Either;
use tarpc::client::RpcError;
use tokio::runtime::Runtime;

// ===== the service =====

// ANCHOR: service
/// The benchmarked jobs: a trivial one, and one that keeps a CPU busy.
#[tarpc::service]
trait Job {
    /// Returns `x`.
    async fn echo(x: u64) -> u64;
    /// Runs `rounds` rounds of arithmetic, then returns `x`.
    async fn spin(rounds: u64, x: u64) -> u64;
}

#[derive(Debug, Clone, Copy)]
struct JobServer;

impl Job for JobServer {
    async fn echo(self, _: tarpc::context::Context, x: u64) -> u64 {
        x
    }

    async fn spin(self, _: tarpc::context::Context, rounds: u64, x: u64) -> u64 {
        black_box(busy(rounds, x));
        x
    }
}

/// A fixed amount of arithmetic (xorshift steps, each depending on the
/// last), so that a job costs the same CPU time however the CPUs are shared.
fn busy(rounds: u64, seed: u64) -> u64 {
    let mut x = black_box(seed) | 1;
    for _ in 0..black_box(rounds) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    x
}

/// fork-rpc's init hook: builds the service in the worker.
fn job_service(_: &mut Setup<()>) -> Result<ServeJob<JobServer>, String> {
    Ok(JobServer.serve())
}
static JOB: RpcEntry<JobRequest, JobResponse> =
    fork_rpc::entry!(job_service, name = "benches::pool::job");
// ANCHOR_END: service

// ANCHOR: job
/// The trivial job as a plain function, for workers serving
/// `fork_rpc::jobs::ENTRY`.
fn echo(x: u64) -> Result<u64, String> {
    Ok(x)
}
static ECHO: fork_rpc::jobs::Job<u64, u64, String> = fork_rpc::job!(echo);
// ANCHOR_END: job

/// The rounds of [`busy`] that take `target` on this machine, calibrated
/// here, in the parent (the workers are forks of the same binary): the
/// fastest of a few tries, the one least disturbed by other load.
fn calibrate(target: Duration) -> u64 {
    const TRY: u64 = 1 << 20;
    let mut best = Duration::MAX;
    for _ in 0..7 {
        let start = Instant::now();
        black_box(busy(TRY, 7));
        best = best.min(start.elapsed());
    }
    (TRY as f64 * target.as_secs_f64() / best.as_secs_f64().max(1e-9)) as u64
}

// ===== the peers =====

type DirectClient = JobClient<fork_rpc::Client<JobRequest, JobResponse>>;
type JobPool = Pool<JobRequest, JobResponse>;
type PoolClient = JobClient<JobPool>;
type FnPool = fork_pool::JobPool;

/// How a call reaches a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// One fork-rpc worker, through its own client.
    Direct,
    /// Another direct worker, measured as the pools are: a control of the
    /// method (its ratio to the first shows how far two identical peers
    /// measured side by side differ).
    Control,
    /// Another direct worker whose caller does [`PAD`] of arithmetic before
    /// each call: what a little more work in the parent costs.
    Padded,
    /// A pool of `workers` workers (`idle = max = workers`) at `load`.
    Pool { workers: usize, load: usize },
    /// The same, running plain function jobs ([`ECHO`]) instead of the
    /// service.
    Jobs { workers: usize, load: usize },
}

impl Via {
    fn name(self) -> String {
        match self {
            Via::Direct => "direct worker".to_owned(),
            Via::Control => "direct worker again (control)".to_owned(),
            Via::Padded => "direct worker, 0.1 µs more in the parent per call".to_owned(),
            Via::Pool { workers: 1, load } => format!("pool, 1 worker, load {load}"),
            Via::Pool { workers, load } => format!("pool, {workers} workers, load {load}"),
            Via::Jobs { workers, load } => {
                format!("pool of function jobs, {workers} workers, load {load}")
            }
        }
    }
}

// ANCHOR: peers
/// Forks a direct worker (whose caller does `pad` rounds of [`busy`]
/// before each call).
async fn direct(template: &Template, pad: u64) -> BoxResult<Peer> {
    let (client, worker) = RpcWorker::builder(&mut template.fork(), &JOB)
        .spawn()
        .await?;
    let client = JobClient::from(client);
    Ok(Peer::Direct(Arc::new(Direct { client, pad }), worker))
}

/// Builds a pool of `workers` workers that neither grows nor shrinks, and
/// waits until they are all up.
async fn pool(template: &Template, workers: usize, load: usize) -> BoxResult<Peer> {
    let pool = Pool::builder(template.clone(), &JOB)
        .idle(workers)
        .max(workers)
        .load(load)
        .build();
    pool.wait_until(|s| s.idle == workers).await;
    Ok(Peer::Pool(Arc::new(JobClient::from(pool.clone())), pool))
}

/// The same for plain function jobs.
async fn jobs(template: &Template, workers: usize, load: usize) -> BoxResult<Peer> {
    let pool = Pool::jobs(template.clone())
        .idle(workers)
        .max(workers)
        .load(load)
        .build();
    pool.wait_until(|s| s.idle == workers).await;
    Ok(Peer::Jobs(pool))
}
// ANCHOR_END: peers

/// A peer and the parent's end of its connections.
#[derive(Debug)]
enum Peer {
    Direct(Arc<Direct>, RpcWorker),
    Pool(Arc<PoolClient>, JobPool),
    Jobs(FnPool),
}

impl Peer {
    async fn new(template: &Template, via: Via, pad: u64) -> BoxResult<Peer> {
        match via {
            Via::Direct | Via::Control => direct(template, 0).await,
            Via::Padded => direct(template, pad).await,
            Via::Pool { workers, load } => pool(template, workers, load).await,
            Via::Jobs { workers, load } => jobs(template, workers, load).await,
        }
    }

    fn pids(&self) -> Vec<u32> {
        match self {
            Peer::Direct(_, worker) => vec![worker.id()],
            Peer::Pool(_, pool) => pool.worker_pids(),
            Peer::Jobs(pool) => pool.worker_pids(),
        }
    }

    /// One round of calls, `depth` in flight, in a task on `rt`.
    fn round(
        &self,
        rt: &Runtime,
        work: Work,
        depth: usize,
        len: Duration,
    ) -> BoxResult<(u64, Duration)> {
        let task = match (self, work) {
            (Peer::Pool(client, pool), Work::Map(n)) => {
                let (client, pool) = (client.clone(), pool.clone());
                rt.spawn(async move {
                    let ctx = tarpc::context::current;
                    map(n, pool.map(0..n, |x| client.echo(ctx(), x))).await
                })
            }
            (Peer::Jobs(pool), Work::Map(n)) => {
                let pool = pool.clone();
                rt.spawn(async move { map(n, pool.map(0..n, |x| pool.run(&ECHO, x))).await })
            }
            (Peer::Direct(client, _), _) => rt.spawn(calls(client.clone(), work, depth, len)),
            (Peer::Pool(client, _), _) => rt.spawn(calls(client.clone(), work, depth, len)),
            (Peer::Jobs(_), _) => return Err("function jobs are measured with map".into()),
        };
        rt.block_on(task)?
    }

    /// Closes the connections and waits for the workers to exit; checks
    /// that a pool kept its workers all along.
    async fn close(self, via: Via) -> BoxResult<()> {
        match self {
            Peer::Direct(client, mut worker) => {
                drop(client);
                let status = worker.wait().await?;
                if !status.success() {
                    return Err(format!("the direct worker exited with {status}").into());
                }
            }
            Peer::Pool(client, pool) => {
                drop(client);
                steady(via, &pool.stats())?;
                pool.shutdown().await;
            }
            Peer::Jobs(pool) => {
                steady(via, &pool.stats())?;
                pool.shutdown().await;
            }
        }
        Ok(())
    }
}

/// Checks that a pool kept its workers all along.
fn steady(via: Via, stats: &fork_pool::Stats) -> BoxResult<()> {
    let workers = match via {
        Via::Pool { workers, .. } | Via::Jobs { workers, .. } => workers as u64,
        Via::Direct | Via::Control | Via::Padded => 1,
    };
    if stats.spawned != workers || stats.crashed != 0 || stats.recycled != 0 {
        let name = via.name();
        return Err(format!("{name}: workers came and went: {stats:?}").into());
    }
    Ok(())
}

/// Runs a batch of `n` trivial jobs through `results` (a pool's `map`),
/// checking every result and its order.
async fn map<E: std::error::Error + Send + Sync + 'static>(
    n: u64,
    results: impl futures::Stream<Item = Result<u64, E>>,
) -> BoxResult<(u64, Duration)> {
    use futures::StreamExt;
    let start = Instant::now();
    let mut results = std::pin::pin!(results.enumerate());
    while let Some((i, y)) = results.next().await {
        let y = y?;
        if y != i as u64 {
            return Err(format!("map: item {i} gave {y}").into());
        }
    }
    Ok((n, start.elapsed()))
}

// ===== calls =====

// The calls are made by `benches::calls`, through either client.

/// What each call does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Work {
    /// `echo`: nothing.
    Trivial,
    /// `spin` with this many rounds.
    Cpu(u64),
    /// A pool's `map` over this many trivial jobs.
    Map(u64),
}

/// A direct worker's client, and work its caller adds to each call.
#[derive(Debug)]
struct Direct {
    client: DirectClient,
    /// Rounds of [`busy`] before each call (none if 0).
    pad: u64,
}

// ANCHOR: callers
impl Caller for Direct {
    type Work = Work;
    type Error = RpcError;

    fn call(&self, work: Work, x: u64) -> impl Future<Output = Result<u64, RpcError>> + Send + '_ {
        if self.pad > 0 {
            black_box(busy(self.pad, x));
        }
        let ctx = tarpc::context::current();
        match work {
            Work::Trivial | Work::Map(_) => Either::Left(self.client.echo(ctx, x)),
            Work::Cpu(rounds) => Either::Right(self.client.spin(ctx, rounds, x)),
        }
    }
}

impl Caller for PoolClient {
    type Work = Work;
    type Error = RpcError;

    fn call(&self, work: Work, x: u64) -> impl Future<Output = Result<u64, RpcError>> + Send + '_ {
        let ctx = tarpc::context::current();
        match work {
            Work::Trivial | Work::Map(_) => Either::Left(self.echo(ctx, x)),
            Work::Cpu(rounds) => Either::Right(self.spin(ctx, rounds, x)),
        }
    }
}

// ANCHOR_END: callers

// ===== options =====

#[derive(Debug, Clone)]
struct Opts {
    /// `--quick` and `--only TEXT`.
    args: Args,
    /// Rounds per measurement of trivial calls, per peer.
    trivial: Rounds,
    /// The same for CPU-bound jobs.
    cpu: Rounds,
    /// Rounds of batches (each a `map` over [`Opts::batch_len`] jobs).
    batch: Rounds,
    /// Jobs in one batch.
    batch_len: u64,
    /// Rounds of [`busy`] that take [`PAD`] (calibrated in `main`).
    pad: u64,
}

impl Opts {
    fn from_args() -> Opts {
        let args = Args::from_env();
        let (trivial, cpu) = if args.quick {
            (
                Rounds::new(1, Duration::from_millis(100)),
                Rounds::new(1, Duration::from_millis(100)),
            )
        } else {
            (
                Rounds::new(15, Duration::from_millis(150)),
                Rounds::new(7, Duration::from_millis(400)),
            )
        };
        // A batch's length is its number of jobs: the time is not used.
        let (batch, batch_len) = if args.quick {
            (Rounds::new(1, Duration::ZERO), 5_000)
        } else {
            (Rounds::new(9, Duration::ZERO), 100_000)
        };
        Opts {
            args,
            trivial,
            cpu,
            batch,
            batch_len,
            pad: 0,
        }
    }
}

// ===== measuring =====

/// A row of the report: what was measured, and how it went.
#[derive(Debug)]
struct Row {
    part: Part,
    flavour: &'static str,
    via: Via,
    work: Work,
    depth: usize,
    sample: Sample<2>,
}

impl Row {
    fn what(&self) -> String {
        row_name(self.via, self.depth, self.flavour)
    }
}

fn row_name(via: Via, depth: usize, flavour: &str) -> String {
    let depth = if depth == 1 {
        "serial".to_owned()
    } else {
        format!("{depth} in flight")
    };
    format!("{}, {depth}, {flavour}", via.name())
}

/// One part of the benchmark: peers measured side by side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Throughput,
    Overhead,
    Cpu,
    Batch,
}

/// One part on one runtime: peers measured side by side.
#[derive(Debug, Clone, Copy)]
struct Measure<'a> {
    part: Part,
    flavour: &'static str,
    work: Work,
    /// Calls in flight.
    depth: usize,
    vias: &'a [Via],
}

impl<'a> Measure<'a> {
    fn trivial(part: Part, flavour: &'static str, depth: usize, vias: &'a [Via]) -> Self {
        Measure {
            part,
            flavour,
            work: Work::Trivial,
            depth,
            vias,
        }
    }
}

/// Forks the wanted peers of `m`, measures them with their rounds taking
/// turns (so a change in the machine's load hits them all alike), after a
/// quarter round each, untimed, as a warm-up; then closes them.
fn measure(
    rt: &Runtime,
    opts: &Opts,
    template: &Template,
    m: Measure<'_>,
    report: &mut Report,
) -> BoxResult<()> {
    let vias: Vec<Via> = m
        .vias
        .iter()
        .copied()
        .filter(|&via| {
            let part = format!("{:?}", m.part).to_lowercase();
            opts.args
                .wants(&format!("{part}: {}", row_name(via, m.depth, m.flavour)))
        })
        .collect();
    if vias.is_empty() {
        return Ok(());
    }
    let rounds = match m.work {
        Work::Trivial => opts.trivial,
        Work::Cpu(_) => opts.cpu,
        Work::Map(_) => opts.batch,
    };
    let mut peers = Vec::new();
    for &via in &vias {
        let peer = rt.block_on(Peer::new(template, via, opts.pad))?;
        if opts.args.only.is_some() {
            let name = row_name(via, m.depth, m.flavour);
            eprintln!("{name}: pids {:?}", peer.pids());
        }
        peers.push((via.name(), peer));
    }
    let samples = side_by_side(
        &format!("{:?}, {} in flight, {}", m.part, m.depth, m.flavour),
        &peers,
        rounds,
        opts.args.only.is_some(),
        Peer::pids,
        |peer, len| peer.round(rt, m.work, m.depth, len),
    )?;
    for ((_, peer), &via) in peers.into_iter().zip(&vias) {
        rt.block_on(peer.close(via))?;
    }
    for (via, sample) in vias.into_iter().zip(samples) {
        report.rows.push(Row {
            part: m.part,
            flavour: m.flavour,
            via,
            work: m.work,
            depth: m.depth,
            sample,
        });
    }
    Ok(())
}

// ===== report =====

/// Trivial jobs per second the pool must reach at load 10: 3× Perl's
/// AnyEvent::Fork::Pool (~107k/s at load 10).
const THROUGHPUT_TARGET: f64 = 300_000.0;
/// Most a call may cost through the pool, as a multiple of the cost through
/// a direct worker with the same number in flight.
const OVERHEAD_TARGET: f64 = 1.10;
/// Least speed-up of CPU-bound jobs from 1 worker to 2.
const SCALING_TARGET: f64 = 1.9;
/// Least rate of a batch of function jobs, as a multiple of the same batch
/// through the service on the same pool.
const JOBS_TARGET: f64 = 0.9;

#[derive(Debug, Default)]
struct Report {
    rows: Vec<Row>,
}

impl Report {
    fn find(&self, row: &Row, via: Via) -> Option<&Row> {
        self.rows.iter().find(|r| {
            r.part == row.part && r.flavour == row.flavour && r.depth == row.depth && r.via == via
        })
    }

    /// A row's rate over the direct worker's in the same part.
    fn vs_direct(&self, row: &Row) -> Option<f64> {
        let base = self.find(row, Via::Direct)?;
        (row.via != Via::Direct).then(|| row.sample.ratio_to(&base.sample))
    }

    /// The target of a row, and whether it was met.
    fn target(&self, row: &Row) -> Option<(String, bool)> {
        match (row.part, row.via) {
            (Part::Throughput, Via::Pool { load: 10, .. }) => Some((
                format!("≥ {:.0}k/s", THROUGHPUT_TARGET / 1000.0),
                row.sample.median() >= THROUGHPUT_TARGET,
            )),
            (Part::Overhead, Via::Pool { .. }) => {
                // Cost per call is the inverse of the rate.
                let cost = 1.0 / self.vs_direct(row)?;
                let limit = (OVERHEAD_TARGET - 1.0) * 100.0;
                let extra = (cost - 1.0) * 100.0;
                Some((
                    format!("≤ +{limit:.0}% per call vs direct: {extra:+.1}%"),
                    cost <= OVERHEAD_TARGET,
                ))
            }
            (Part::Batch, Via::Jobs { workers, load }) => {
                let service = self.find(row, Via::Pool { workers, load })?;
                let vs = row.sample.ratio_to(&service.sample);
                Some((
                    format!("≥ {JOBS_TARGET}× the service: {vs:.2}×"),
                    vs >= JOBS_TARGET,
                ))
            }
            (Part::Cpu, Via::Pool { workers: 2, load }) => {
                let one = self.find(row, Via::Pool { workers: 1, load })?;
                let scaling = row.sample.ratio_to(&one.sample);
                Some((
                    format!(
                        "≥ {SCALING_TARGET}× 1 worker: {scaling:.2}× (workers busy {:.2} CPUs)",
                        row.sample.busy(1)
                    ),
                    scaling >= SCALING_TARGET,
                ))
            }
            _ => None,
        }
    }

    fn print(&self) {
        let table = Table::new(&[
            ("part", Left),
            ("measurement", Left),
            ("jobs/s (median)", Right),
            ("µs/job", Right),
            ("× direct", Right),
            ("spread (min–max jobs/s)", Right),
            ("jobs", Right),
            ("CPU µs/job: parent + workers", Right),
            ("switches/job: parent + workers", Right),
            ("target", Left),
        ]);
        println!();
        println!("{}", table.head());
        for row in &self.rows {
            let rate = row.sample.median();
            let vs = self.vs_direct(row).map_or_else(String::new, ratio);
            let target = match (self.target(row), row.part) {
                (Some((t, ok)), _) => format!("{t}: {}", verdict(ok)),
                (None, _) if matches!(row.via, Via::Control | Via::Padded) => {
                    let cost = self.vs_direct(row).map_or(f64::NAN, |r| 1.0 / r);
                    let what = match row.via {
                        Via::Control => "control",
                        _ => "what 0.1 µs costs",
                    };
                    format!("{what}: {:+.1}% per call vs direct", (cost - 1.0) * 100.0)
                }
                // How much CPU the machine gave: the baseline of the scaling.
                (None, Part::Cpu) => format!("workers busy {:.2} CPUs", row.sample.busy(1)),
                (None, _) => String::new(),
            };
            let part = match (row.part, row.work) {
                (Part::Throughput, _) => "throughput".to_owned(),
                (Part::Overhead, _) => "overhead".to_owned(),
                (Part::Cpu, Work::Cpu(rounds)) => format!("CPU-bound ({rounds} rounds)"),
                (Part::Cpu, _) => "CPU-bound".to_owned(),
                (Part::Batch, Work::Map(n)) => format!("batch (map over {n})"),
                (Part::Batch, _) => "batch".to_owned(),
            };
            let cells: [&dyn Display; 10] = [
                &part,
                &row.what(),
                &format!("{rate:.0}"),
                &format!("{:.2}", 1e6 / rate),
                &vs,
                &spread(&row.sample),
                &row.sample.ops,
                &sum(&row.sample.cpu_per_op(), 2),
                &terms(&row.sample.switches_per_op(), 2),
                &target,
            ];
            println!("{}", table.row(&cells));
        }
        println!();
        println!("Targets:");
        for row in &self.rows {
            if let Some((target, ok)) = self.target(row) {
                println!(
                    "- {}: {:.0} jobs/s, {target}: {}",
                    row.what(),
                    row.sample.median(),
                    verdict(ok)
                );
            }
        }
        println!();
        println!(
            "For reference (not measured here): Perl's AnyEvent::Fork::Pool ~50k trivial jobs/s at load 2, ~107k/s at load 10; Python's ProcessPoolExecutor ~10k/s."
        );
    }
}

// ===== main =====

/// Trivial calls in flight in the throughput part, and calls in flight in
/// the CPU-bound part.
const MANY: usize = 256;
/// The work added to each call of [`Via::Padded`].
const PAD: Duration = Duration::from_nanos(100);
const CPU_DEPTH: usize = 16;

// ANCHOR: parts
/// Every part on one runtime, with workers forked from one template.
fn run_all(
    rt: &Runtime,
    opts: &Opts,
    flavour: &'static str,
    spin: Option<u64>,
    report: &mut Report,
) -> BoxResult<()> {
    let _rt = rt.enter();
    let template = Template::new()?;
    rt.block_on(template.ready())?;
    let two = |load| Via::Pool { workers: 2, load };
    let one = |load| Via::Pool { workers: 1, load };

    // 1. Throughput: many trivial calls in flight, 2 workers at load 1, 2,
    // 10, and at a load that takes all of them at once (no queue).
    let vias = [Via::Direct, two(1), two(2), two(10), two(MANY / 2)];
    measure(
        rt,
        opts,
        &template,
        Measure::trivial(Part::Throughput, flavour, MANY, &vias),
        report,
    )?;

    // 2. Overhead: 1 worker at load L, L calls in flight, against direct.
    for load in [1, 2, 10] {
        let vias = [Via::Direct, Via::Control, Via::Padded, one(load)];
        measure(
            rt,
            opts,
            &template,
            Measure::trivial(Part::Overhead, flavour, load, &vias),
            report,
        )?;
    }

    // 3. CPU-bound: ~2 ms jobs, 1 worker against 2, at load 1 (and 2).
    if let Some(rounds) = spin {
        let vias = [Via::Direct, one(1), two(1), one(2), two(2)];
        let m = Measure {
            part: Part::Cpu,
            flavour,
            work: Work::Cpu(rounds),
            depth: CPU_DEPTH,
            vias: &vias,
        };
        measure(rt, opts, &template, m, report)?;
    }

    // 4. Batches: `map` over many trivial jobs, on 2 workers, through the
    // service and as plain function jobs.
    for load in [2, 10] {
        let vias = [
            Via::Pool { workers: 2, load },
            Via::Jobs { workers: 2, load },
        ];
        let m = Measure {
            part: Part::Batch,
            flavour,
            work: Work::Map(opts.batch_len),
            depth: 2 * load,
            vias: &vias,
        };
        measure(rt, opts, &template, m, report)?;
    }
    rt.block_on(template.shutdown())?;
    Ok(())
}
// ANCHOR_END: parts

// ANCHOR: main
fn main() -> BoxResult<()> {
    // First thing, before any thread: turns template processes started from
    // this binary into templates.
    fork_core::init();
    let mut opts = Opts::from_args();
    let spin = calibrate(Duration::from_millis(2));
    eprintln!("a CPU-bound job: {spin} rounds of arithmetic, about 2 ms here");
    opts.pad = calibrate(PAD);
    eprintln!("0.1 µs more per call: {} rounds of arithmetic", opts.pad);
    let mut report = Report::default();
    let load_before = load_average();

    // The parent on a multi-thread runtime (as `#[tokio::main]` makes) ...
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    run_all(&rt, &opts, "multi-thread", Some(spin), &mut report)?;
    drop(rt);

    // ... and, for trivial calls, on a `current_thread` runtime.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    run_all(&rt, &opts, "current_thread", None, &mut report)?;
    drop(rt);
    // ANCHOR_END: main

    report.print();
    println!();
    println!(
        "Load average (1 min) of this machine: {load_before} before the run, {} after it.",
        load_average()
    );
    Ok(())
}
