//! Typed tarpc services inside workers forked by fork-core.
//!
//! A worker's socket becomes a [tarpc] transport: define a
//! `#[tarpc::service]` trait, implement it, declare an [`entry!`] whose init
//! hook builds the server, and start a worker serving it with
//! [`RpcWorker::builder`]. The parent gets
//! a [`Client`] stub to wrap in the tarpc-generated client
//! (`CalcClient::from(client)`), so every tarpc feature (deadlines,
//! cancellation, trace context) works unchanged; and an [`RpcWorker`] handle
//! for the process, its [events](Events) and passing descriptors.
//!
//! It is Perl's AnyEvent::Fork::RPC, typed:
//!
//! - **sync or async workers** ([`Mode`]): one request at a time in order,
//!   or up to a limit concurrently, queueing (never rejecting) the rest;
//! - **events** from worker to parent ([`EventSender`], [`Events`]), in order
//!   with the replies;
//! - **init and done hooks**: the init hook builds the service (its failure
//!   is the error of [`Builder::spawn`]), [`Setup::on_done`] runs after the last reply;
//! - **graceful close**: dropping every client lets the worker finish what it
//!   received, flush, run the done hook and exit 0 ([`RpcWorker::wait`]);
//!   so does `SIGTERM` sent to the worker (it also asks to be
//!   [retired](Client::retire_requested), reads nothing more, and answers
//!   what it had read);
//! - **a time limit on starting** ([`Config::start_timeout`]): a worker whose
//!   init hook hangs is killed and [`Builder::spawn`] fails;
//! - **the parent never panics on a worker's bytes**: a reply that does not
//!   decode, or that answers another method than its request (a worker
//!   serving another service), fails its call with an error;
//! - **worker death is never a hang**: calls fail at once with a
//!   [`WorkerLost`] carrying the exit status, and the message of a handler
//!   panic;
//! - **deadlines** beyond tarpc's implicit 10 s ([`context`]);
//! - **descriptors to a running worker** ([`RpcWorker::send_fds`],
//!   [`FdReceiver`]), on a side channel that leaves the RPC stream alone.
//!
//! The worker runs its own `current_thread` runtime, built after the fork;
//! the parent's runtime is yours.
//!
//! # Example
//!
//! ```no_run
//! use fork_core::Template;
//! use fork_rpc::{RpcEntry, RpcWorker, Setup};
//! use tarpc::context;
//!
//! #[tarpc::service]
//! trait Calc {
//!     async fn add(a: i64, b: i64) -> i64;
//! }
//!
//! #[derive(Clone)]
//! struct CalcServer;
//!
//! impl Calc for CalcServer {
//!     async fn add(self, _: context::Context, a: i64, b: i64) -> i64 {
//!         a + b
//!     }
//! }
//!
//! // The init hook runs in the worker and builds the service.
//! fn calc(_setup: &mut Setup<()>) -> Result<ServeCalc<CalcServer>, String> {
//!     Ok(CalcServer.serve())
//! }
//! static CALC: RpcEntry<CalcRequest, CalcResponse> = fork_rpc::entry!(calc);
//!
//! #[fork_core::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let template = Template::shared()?;
//!     let (client, mut worker) = RpcWorker::builder(&mut template.fork(), &CALC).spawn().await?;
//!     let calc = CalcClient::from(client);
//!     assert_eq!(calc.add(context::current(), 2, 3).await?, 5);
//!     drop(calc); // graceful close: the worker finishes and exits 0
//!     assert!(worker.wait().await?.success());
//!     Ok(())
//! }
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod bounded;
mod builder;
mod client;
mod codec;
mod config;
pub mod context;
mod entry;
mod error;
mod frame;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod jobs;
mod message;
mod server;
mod shm;
#[cfg(feature = "tower")]
mod tower;
mod variant;

pub use crate::builder::Builder;
pub use crate::client::{Client, Events, RpcWorker, UNTAKEN_EVENTS};
pub use crate::config::{Config, Format, Mode};
pub use crate::entry::RpcEntry;
pub use crate::error::{Error, HandlerPanic, Result, WorkerLost};
pub use crate::server::{EventSender, FdReceiver, Setup, serve};
pub use crate::shm::SharedBytes;
#[cfg(feature = "tower")]
pub use crate::tower::{ServiceFuture, TowerStub};

#[doc(hidden)]
pub mod __private {
    pub use fork_core;
    pub use linkme;
    pub use tarpc::ServerError;

    /// The worker's exit code for what `serve` returned: 0; 101 after a
    /// handler's panic (the panic hook printed it, the parent got its
    /// message); or 1 after printing the error (an init failure was already
    /// sent to the parent).
    pub fn exit_code(result: crate::Result<()>) -> i32 {
        match result {
            Ok(()) => 0,
            Err(crate::Error::Panicked(_)) => fork_core::PANIC_EXIT_CODE,
            Err(crate::Error::Init(_)) => 1,
            Err(e) => {
                eprintln!("fork-rpc worker {}: {e}", std::process::id());
                1
            }
        }
    }
}
