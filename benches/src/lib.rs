//! The harness the three benchmarks (`benches/benches/{spawn,rpc,pool}.rs`)
//! share, so that each of them holds only what is its own: its peers, its
//! workloads, its rows and its targets.
//!
//! - [`Args`] and [`Rounds`]: the command line (`--quick`, `--only TEXT`)
//!   and how long a measurement runs.
//! - [`drive`]: what one round does: [`calls`] kept in flight by one task,
//!   an operation looped by several tasks ([`in_flight`]) or by this thread
//!   ([`repeat`]).
//! - [`measure`]: the loops around the rounds: a warm-up, the timed rounds
//!   (taking turns when peers are measured side by side), their costs, and
//!   the progress line on stderr.
//! - [`Sample`] and [`Costs`]: the rates of the rounds, and the CPU time and
//!   context switches they cost each party (this process, a template,
//!   workers).
//! - [`proc`]: the readers of those figures, from `getrusage` and `/proc`,
//!   and of a process's memory.
//! - [`Table`]: the Markdown tables the reports print.
//!
//! The machines the benchmarks run on are small, shared and noisy, so every
//! measurement is split into rounds and reported as the median round and the
//! spread, and compared with a peer measured in the same run.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod costs;
pub mod drive;
pub mod measure;
mod opts;
pub mod proc;
mod report;
mod sample;

pub use self::costs::Costs;
pub use self::drive::{Caller, calls, in_flight, repeat};
pub use self::opts::{Args, Rounds};
pub use self::report::{Align, Table, ratio, spread, sum, terms, verdict};
pub use self::sample::Sample;

/// What the benchmarks' steps return: any error, boxed.
pub type BoxResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;
