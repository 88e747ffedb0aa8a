//! Prefork servers on fork-core: Perl's Parallel::Prefork and
//! Parallel::MPM::Prefork for tokio, with what gunicorn, php-fpm and
//! Apache learned.
//!
//! A [`Prefork`] server forks workers from a [`fork_core::Template`] you
//! prepared (preloaded state, copy-on-write), hands each a duplicate of
//! your listening sockets, and keeps them with a **manager task** in the
//! parent that is never in the data path: each worker accepts connections
//! itself, on its own `current_thread` runtime, and only tells the manager
//! (over its fork-core socket, in small bounded frames) when it is ready,
//! busy or idle, and that it is alive.
//!
//! - **Workers that serve listeners**: a named worker function declared
//!   with [`entry!`] gets a [`Context`] (its listeners, the template's
//!   arguments) and a [`Link`] to the manager;
//!   [`Context::serve`] runs the usual accept loop.
//! - **Sizing**: [`Sizing::Fixed`] (Parallel::Prefork's `max_workers`) or
//!   [`Sizing::Spare`] (Parallel::MPM::Prefork's `start_servers`,
//!   `min_spare_servers`, `max_spare_servers`, `max_servers`), with
//!   Apache's doubling growth and one idle worker retired per tick, never a
//!   busy one.
//! - **Respawn without storms**: [`Config::spawn_interval`],
//!   [`Config::err_respawn_interval`] doubled while crashes go on, and
//!   [`Error::Boot`] after [`Config::max_boot_failures`] workers in a row
//!   fail before they are ready.
//! - **Graceful stop and reload**: [`Prefork::stop`] lets workers finish
//!   their connections within [`Config::graceful_timeout`] (a second stop
//!   kills at once); [`Prefork::reload`] starts the new generation first,
//!   then retires the old one oldest first, listeners open throughout.
//! - **Signals**: [`Prefork::trap_signals`] (gunicorn's meanings) or
//!   [`Prefork::trap_signals_with`] a [`Signals`] table of your own
//!   (Parallel::Prefork's `trap_signals`): stop, reload, resize, forward a
//!   signal to every worker, or a rolling restart, one worker at a time;
//!   [`Prefork::signal_received`], [`Prefork::wait_all_children`].
//! - **Data from workers and reap events**: [`Link::yell`] (or
//!   [`Link::yell_wait`]) sends a typed value to the parent at any time,
//!   [`Link::exit_with`] one with the worker's exit; the parent's
//!   [`Prefork::events`] stream gets them as [`Event::Data`], and an
//!   [`Event::Reaped`] with pid, generation, exit status, why it ended
//!   ([`ExitReason`]: recycled, retired, stopped, crashed, killed ...) and
//!   the exit value, for every worker, once. The manager never waits for
//!   the reader.
//! - **systemd**: with `NOTIFY_SOCKET` set, `READY=1`, `RELOADING=1` (with
//!   `MONOTONIC_USEC=`) and `STOPPING=1` as the server starts, reloads and
//!   stops (`Type=notify-reload`).
//!
//! # Example
//!
//! ```no_run
//! use fork_core::Template;
//! use fork_prefork::{Context, Prefork, PreforkEntry};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! // Each worker: accept, read a line's worth, answer with its pid.
//! async fn echo_pid(ctx: Context) -> std::io::Result<()> {
//!     ctx.serve(|mut conn, _link| async move {
//!         let mut buf = [0u8; 64];
//!         let _ = conn.read(&mut buf).await;
//!         let _ = conn.write_all(format!("{}\n", std::process::id()).as_bytes()).await;
//!     })
//!     .await
//! }
//! static ECHO_PID: PreforkEntry = fork_prefork::entry!(echo_pid);
//!
//! #[fork_core::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
//!     let addr = listener.local_addr()?;
//!     let server = Prefork::builder(Template::new()?, &ECHO_PID)
//!         .listener(listener)
//!         .workers(4)
//!         .start()?;
//!     server.wait_until(|s| s.idle == 4).await;
//!
//!     let mut conn = tokio::net::TcpStream::connect(addr).await?;
//!     conn.write_all(b"hi").await?;
//!     let mut pid = String::new();
//!     conn.read_to_string(&mut pid).await?;
//!     println!("served by worker {pid}");
//!
//!     server.stop().await?;
//!     Ok(())
//! }
//! ```
//!
//! # The accept strategy
//!
//! Every worker holds a duplicate of the same listening socket (one accept
//! queue, not `SO_REUSEPORT`): a connection waits in that queue until some
//! worker accepts it, so a worker that stops accepting (a reload, a graceful
//! stop) loses nothing, and the parent keeps the socket open across
//! reloads. Each worker polls the socket through tokio (epoll); an idle
//! worker may be woken for a connection another worker takes first.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod config;
mod entry;
mod error;
mod message;
mod policy;
mod server;
mod worker;

pub use crate::config::{AcceptOrder, Config, Sizing, Spare};
pub use crate::entry::PreforkEntry;
pub use crate::error::{BootFailure, Error, Result};
pub use crate::message::MAX_DATA;
pub use crate::server::{
    Builder, Data, Event, Events, ExitReason, Prefork, Reaped, SignalAction, Signals, Stats,
    WorkerInfo, WorkerState,
};
pub use crate::worker::{BlockingStream, Busy, Context, Link, Listener, Stream, WorkerResult};
pub use fork_core::Signal;

#[doc(hidden)]
pub mod __private {
    pub use crate::worker::run;
    pub use fork_core;
}
