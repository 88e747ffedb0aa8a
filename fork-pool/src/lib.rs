//! One typed client over a load-balanced, self-scaling pool of forked
//! workers: Perl's AnyEvent::Fork::Pool for tokio and tarpc, with its holes
//! fixed.
//!
//! A [`Pool`] forks [fork-rpc](fork_rpc) workers from a template you
//! prepared (preloaded state, arguments, descriptors) and implements tarpc's
//! `Stub`, so the generated client works over it unchanged:
//! `CalcClient::from(pool.clone())`.
//!
//! - **Plain function jobs**: [`Pool::jobs`] and [`Pool::run`] run any
//!   function declared with [`fork_rpc::job!`], no service needed;
//!   [`Pool::map`] and [`Pool::pipeline`] run batches with bounded work in
//!   flight.
//! - **Dispatch**: each job goes to the least-loaded worker whose load is
//!   below [`Config::load`], else waits in a FIFO queue. Ties go to the
//!   oldest worker, so light load concentrates on few workers and the others
//!   can reach [`Config::stop`] and leave.
//! - **Scaling**: grow while jobs wait (after [`Config::start`]; zero means at
//!   once), shrink idle workers after [`Config::stop`] down to
//!   [`Config::idle`] (also with `idle = 0`), never above [`Config::max`].
//! - **Recycling**: after [`Config::max_requests`] jobs (with jitter), above
//!   [`Config::max_rss`], or when a worker calls
//!   [`retire`](fork_rpc::EventSender::retire).
//! - **Crashes**: a dead worker is replaced; queued jobs are never lost; jobs
//!   running on it fail with [`WorkerLost`](fork_rpc::WorkerLost), or run
//!   again elsewhere when marked [idempotent](Builder::idempotent); failing
//!   spawns back off, and their error reaches the callers.
//! - **Hosts**: one pool over several templates, local and remote
//!   ([`Builder::host`], [`Host`]): each with its own limit and weight,
//!   calls least-loaded across all; a host lost is marked down, its calls
//!   fail promptly naming it (or run again elsewhere when idempotent), and
//!   it is connected again with back-off ([`Pool::host_events`],
//!   [`Stats::hosts`]).
//! - **Timeouts**: [`Config::job_timeout`] fails a job and kills its worker
//!   (`SIGTERM`, then `SIGKILL`).
//! - **Shutdown**: [`Pool::shutdown`] drains and leaves no process, and the
//!   next call starts workers again; dropping the last handle shuts the
//!   pool down for good, in the background.
//! - **Observability**: [`Pool::stats`], `tracing` events and, with the
//!   feature `metrics`, [metrics](#metrics).
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use fork_core::Template;
//! use fork_pool::Pool;
//! use fork_rpc::{RpcEntry, Setup};
//! use tarpc::context;
//!
//! #[tarpc::service]
//! trait Calc {
//!     async fn square(x: u64) -> u64;
//! }
//!
//! #[derive(Clone)]
//! struct CalcServer;
//!
//! impl Calc for CalcServer {
//!     async fn square(self, _: context::Context, x: u64) -> u64 {
//!         x * x
//!     }
//! }
//!
//! fn calc(_setup: &mut Setup<()>) -> Result<ServeCalc<CalcServer>, String> {
//!     Ok(CalcServer.serve())
//! }
//! static CALC: RpcEntry<CalcRequest, CalcResponse> = fork_rpc::entry!(calc);
//!
//! #[fork_core::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let pool = Pool::builder(Template::shared()?, &CALC)
//!         .max(4)
//!         .load(2)
//!         .stop(Duration::from_secs(5))
//!         .build();
//!     let calc = CalcClient::from(pool.clone());
//!     let squares = futures::future::try_join_all((0..100).map(|x| calc.square(context::current(), x))).await?;
//!     assert_eq!(squares[9], 81);
//!     println!("{:?}", pool.stats());
//!     pool.shutdown().await;
//!     Ok(())
//! }
//! ```
//!
//! # Tuning recipes
//!
//! As the original's documentation has them:
//!
//! - **Lowest latency**: `load = 1` (a job never waits behind another in a
//!   worker) and `idle = max` (workers are always there: no dynamic sizing).
//! - **Low latency with sizing**: `load = 1`, `start = 0`.
//! - **CPU-bound throughput**: `max` = the number of CPUs, `load = 2` or more
//!   so a worker never waits for its next job.
//! - **I/O-bound work**: async workers (`fork_rpc::Config::concurrent`) with a
//!   high `load`, and `max` small.
//! - **Bursty load**: a longer `start` absorbs short bursts without forking;
//!   a longer `stop` keeps workers for the next burst.
//!
//! # Metrics
//!
//! With the feature `metrics`, a pool records its state, its counters and
//! the latency of its calls through the [`metrics`](https://docs.rs/metrics)
//! facade, to the recorder (an exporter, such as
//! `metrics-exporter-prometheus`) installed **when the pool is built**: it
//! registers its metrics then, so install the recorder first (a pool built
//! before records nothing). Every metric has the label `pool`: the pool's
//! `Builder::metrics_label`, by default the entry's registered name, so that
//! several pools in one program are told apart.
//!
//! | metric | kind | what |
//! |---|---|---|
//! | `fork_pool_workers` | gauge | workers in the pool, idle or busy ([`Stats::idle`] + [`Stats::busy`]) |
//! | `fork_pool_workers_starting` | gauge | workers being started ([`Stats::starting`]) |
//! | `fork_pool_workers_busy` | gauge | workers with at least one job ([`Stats::busy`]) |
//! | `fork_pool_jobs_running` | gauge | jobs on workers (up to [`Config::load`] per worker) |
//! | `fork_pool_jobs_queued` | gauge | jobs waiting in the queue ([`Stats::queued`]) |
//! | `fork_pool_workers_spawned_total` | counter | workers started ([`Stats::spawned`]) |
//! | `fork_pool_spawn_failures_total` | counter | failed attempts to start a worker ([`Stats::spawn_failures`]) |
//! | `fork_pool_workers_crashed_total` | counter | workers lost unexpectedly: killed, panicked, exited, or sent what cannot be read ([`Stats::crashed`]) |
//! | `fork_pool_workers_recycled_total` | counter | workers that left for `max_requests`, `max_rss`, `stop` or their `retire()` ([`Stats::recycled`]) |
//! | `fork_pool_jobs_timed_out_total` | counter | jobs past [`Config::job_timeout`], their workers killed ([`Stats::timed_out`]) |
//! | `fork_pool_jobs_completed_total` | counter | calls answered ([`Stats::completed`]) |
//! | `fork_pool_jobs_failed_total` | counter | calls that ended with an error, after their retries: a lost worker, a timeout, a full queue, a closed pool, a deadline, an error of the service |
//! | `fork_pool_call_duration_seconds` | histogram | seconds from the moment a call is made until its answer or error, the time it queued and its retries included |
//!
//! A call dropped before it ends (its caller gave up) counts in neither
//! `completed`, `failed` nor the histogram. The gauges and counters change
//! with the pool's state, under its lock, and the histogram when a call
//! ends; the handles are registered once, at build, so recording allocates
//! and locks nothing beyond what the recorder itself does. Without the
//! feature, nothing is recorded and nothing is paid.
//!
//! The `pool_metrics` example installs `metrics-exporter-prometheus`'s
//! recorder, runs jobs on a pool, and prints what Prometheus would scrape.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod config;
mod error;
mod hosts;
mod pool;
mod scale;
#[cfg(feature = "tower")]
mod tower;

pub use crate::config::{Config, Overflow};
pub use crate::error::{Error, Result};
pub use crate::pool::{
    Builder, Host, HostEvent, HostEvents, HostStats, JobPool, Pool, PoolEvents, Stats,
};
