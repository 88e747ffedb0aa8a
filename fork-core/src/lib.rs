//! Template processes that fork workers on request, for tokio programs.
//!
//! A big, multi-threaded tokio program must not `fork()` itself: the child
//! would inherit locks held by threads that do not exist in it, tokio's
//! global state, and the whole heap (a 2 GiB parent forks ~15 times a
//! second). fork-core keeps a small, **single-threaded, tokio-free template
//! process** instead and asks it to fork. Workers are cheap, share what the
//! template preloaded copy-on-write, and never inherit the parent's threads,
//! heap or descriptors. It is Perl's AnyEvent::Fork, with exit statuses,
//! typed arguments and no orphans.
//!
//! # The rule: `init` first
//!
//! Call [`init`] (or use [`#[fork_core::main]`](main)) as the very first thing
//! in `main`, before any thread or runtime. A template is this program run
//! again with a marker; in it, `init` never returns.
//!
//! ```no_run
//! use std::io::{Read, Write};
//! use fork_core::{Context, Entry, Template};
//!
//! fn shout(ctx: Context) -> std::io::Result<()> {
//!     let word: String = ctx.arg(0).expect("a word");
//!     ctx.socket().write_all(word.to_uppercase().as_bytes())
//! }
//! static SHOUT: Entry = fork_core::entry!(shout);
//!
//! #[fork_core::main]
//! async fn main() -> fork_core::Result<()> {
//!     let template = Template::shared()?;
//!     let mut worker = template.fork().arg("hello").run(&SHOUT).await?;
//!     let mut reply = String::new();
//!     let mut stream = worker.take_stream().unwrap();
//!     tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut reply).await?;
//!     assert_eq!(reply, "HELLO");
//!     assert!(worker.wait().await?.success());
//!     Ok(())
//! }
//! ```
//!
//! # Concepts
//!
//! - [`Template`]: a handle to a template process. [`Template::new`] execs a
//!   fresh one, [`Template::shared`] is the program-wide default,
//!   [`Template::early`] is forked by [`Init::early_template`] at start-up.
//!   Prepare it with [`Template::init`] (run an [`InitFn`] in it),
//!   [`Template::arg`] and [`Template::fd`].
//! - [`Fork`]: a process being forked from a template; add arguments and
//!   descriptors, then [`run`](Fork::run) an [`Entry`] in it, or make it a
//!   new [`template`](Fork::template).
//! - [`Worker`]: the parent's handle, like `tokio::process::Child`: pid,
//!   socket, [`wait`](Worker::wait), [`kill`](Worker::kill).
//! - [`Context`]: what the entry function receives in the worker.
//! - [`Command`]: `fork` + `exec` of an external program through a template.
//! - [`remote`]: templates on other hosts, reached over ssh or any command
//!   that gives stdio ([`Template::remote`]).
//! - [`shm`]: sealed shared memory, bytes another process maps without a
//!   copy and can trust not to change.
//!
//! # Guarantees
//!
//! - **Exit statuses**: the template reaps its children and reports each
//!   status; no zombies, whatever the parent does.
//! - **No orphans**: the template exits on EOF of its control socket (the
//!   parent exited, was killed, or dropped every handle); workers die with
//!   the template (`PR_SET_PDEATHSIG`).
//! - **No leaked descriptors**: a worker holds stdin (`/dev/null`), stdout,
//!   stderr, its socket and the descriptors sent to it, all close-on-exec,
//!   plus those your program opened itself in the template: in init
//!   functions, or before [`init`] (a static, a logger). A template closes
//!   the descriptors it inherited through an `exec` (those without
//!   close-on-exec, which no code of this program opened) and leaves the
//!   others to their owners.
//! - **Output written once**: a template flushes Rust's stdout and C's stdio
//!   buffers before each fork, so text an init function printed without a
//!   newline is not copied into every worker.
//! - **Signals**: templates and their workers run in a process group of
//!   their own, so Ctrl-C in a terminal or `kill -TERM -<pgid>` reaches only
//!   the parent, which decides what its workers do. A template ignores
//!   `SIGINT`, `SIGTERM`, `SIGHUP` and `SIGQUIT` and lives until its parent
//!   goes; workers start with the default signal dispositions and mask.
//! - **Reaping**: a template reaps only the processes it forked; a child
//!   that an init function started is left to the code that owns it.
//!
//! # Platform
//!
//! Linux only (`SOCK_SEQPACKET`, `PR_SET_PDEATHSIG`, `signalfd`, `waitid`,
//! `/proc`).

#![deny(missing_docs, unsafe_op_in_unsafe_fn)]
// Every `unsafe` block lives in `sys`, behind safe signatures.
#![deny(unsafe_code)]
#![warn(unreachable_pub)]
// The examples show `fn main` on purpose: the init-first rule is about `main`.
#![allow(clippy::needless_doctest_main)]

mod activation;
mod command;
mod context;
mod entry;
mod error;
pub mod fdpass;
mod fork;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod init;
mod process;
mod proto;
pub mod remote;
pub mod shm;
#[allow(unsafe_code)]
mod sys;
mod template;
#[cfg(feature = "test-support")]
pub mod testing;
mod worker;

pub use crate::activation::{ListenFd, take_listen_fds};
pub use crate::command::Command;
pub use crate::context::{Context, Slot, decode_arg};
pub use crate::entry::{Entry, EntryResult, InitFn, PANIC_EXIT_CODE};
pub use crate::error::{Error, LostCause, Result};
pub use crate::fork::Fork;
pub use crate::init::{Init, init};
pub use crate::template::Template;
pub use crate::worker::{Worker, WorkerHandle};

/// A signal to send to a worker ([`Worker::signal`]): nix's, re-exported.
pub use nix::sys::signal::Signal;

/// Runs an `async fn main` on a multi-threaded tokio runtime, after calling
/// [`init`] first.
///
/// `#[fork_core::main]` is `#[tokio::main]` with `fork_core::init()` placed
/// before the runtime is built, so the right order is the easy one. Options:
/// `early_template` (see [`Init::early_template`]) and
/// `flavor = "current_thread"`.
///
/// ```no_run
/// #[fork_core::main(early_template)]
/// async fn main() {
///     let template = fork_core::Template::early().unwrap();
///     println!("early template is pid {}", template.id());
/// }
/// ```
pub use fork_core_macros::main;

#[doc(hidden)]
pub mod __private {
    pub use crate::entry::{ENTRIES, EntryDef, INITS, InitDef, panic_message, run_entry, run_init};
    pub use linkme;
    pub use tokio;
}
