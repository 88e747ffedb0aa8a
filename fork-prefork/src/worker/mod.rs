//! The worker's side: what a prefork entry function gets ([`Context`]),
//! its line to the manager ([`Link`]), its listeners, and the runtime and
//! background tasks around the function.

use std::future::Future;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::de::DeserializeOwned;

mod accept;
mod link;
mod listener;
mod report;
mod serve;

pub use self::link::{Busy, Link};
pub use self::listener::{BlockingStream, Listener, Stream};

use self::link::Shared;
use crate::message::{self, Report};

/// What a prefork worker's function gets: its listeners, its [`Link`] to
/// the manager, and the arguments and descriptors it inherited from its
/// template (see [`fork_core::Context`]).
///
/// Most workers hand it to [`serve`](Context::serve), the accept loop. A
/// worker with a loop of its own takes the [listeners](Context::take_listeners),
/// says it is [ready](Link::ready), marks itself [busy](Link::busy) per
/// request and stops accepting once [draining](Link::draining).
#[derive(Debug)]
pub struct Context {
    link: Link,
    listeners: Vec<Listener>,
    args: Vec<Vec<u8>>,
    fds: Vec<OwnedFd>,
}

impl Context {
    /// The worker's line to its manager.
    pub fn link(&self) -> &Link {
        &self.link
    }

    /// The listeners, in the order they were given to the
    /// [`Builder`](crate::Builder).
    pub fn listeners(&self) -> &[Listener] {
        &self.listeners
    }

    /// Takes the listeners out, for a loop of your own.
    pub fn take_listeners(&mut self) -> Vec<Listener> {
        std::mem::take(&mut self.listeners)
    }

    /// The arguments the worker inherited from its template
    /// ([`fork_core::Template::arg`]), as raw bytes.
    pub fn args(&self) -> &[Vec<u8>] {
        &self.args
    }

    /// Decodes argument `index` (see [`fork_core::Context::arg`]).
    ///
    /// # Errors
    ///
    /// [`fork_core::Error::Arg`] if there is no such argument or it does not
    /// decode as `T`.
    pub fn arg<T: DeserializeOwned>(&self, index: usize) -> fork_core::Result<T> {
        fork_core::decode_arg(&self.args, index)
    }

    /// The descriptors the worker inherited from its template
    /// ([`fork_core::Template::fd`]).
    pub fn fds(&self) -> &[OwnedFd] {
        &self.fds
    }

    /// Takes those descriptors out.
    pub fn take_fds(&mut self) -> Vec<OwnedFd> {
        std::mem::take(&mut self.fds)
    }
}

/// What a prefork worker's function may return: `()` or a `Result<(), E>`.
/// An error returned before the worker was [ready](Link::ready) is sent to
/// the manager (in [`BootFailure::Reported`](crate::BootFailure::Reported)),
/// printed to stderr, and the worker exits with code 1.
pub trait WorkerResult {
    /// `Err` with the error's `Debug` form.
    fn into_outcome(self) -> Result<(), String>;
}

impl WorkerResult for () {
    fn into_outcome(self) -> Result<(), String> {
        Ok(())
    }
}

impl<E: std::fmt::Debug> WorkerResult for Result<(), E> {
    fn into_outcome(self) -> Result<(), String> {
        self.map_err(|e| format!("{e:?}"))
    }
}

/// Runs a prefork worker: what [`entry!`](crate::entry) calls in the
/// forked process. Builds a `current_thread` runtime, starts the reporting
/// and order-reading tasks, runs `f`, reports how it ended, and returns
/// the exit code.
#[doc(hidden)]
pub fn run<F, Fut>(mut ctx: fork_core::Context, f: F) -> i32
where
    F: FnOnce(Context) -> Fut,
    Fut: Future,
    Fut::Output: WorkerResult,
{
    let slot = ctx.take_slot().unwrap_or_default();
    let (socket, args, fds) = ctx.into_parts();
    let setup = match message::decode_setup(&slot.data) {
        Ok(s) if s.listeners.len() == slot.fds.len() => s,
        Ok(_) | Err(_) => {
            return fail_early(
                &socket,
                "no prefork setup in the fork's slot: this entry must be started by a \
                 fork_prefork::Prefork server"
                    .into(),
            );
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail_early(&socket, format!("building the worker's runtime: {e}")),
    };
    let code = rt.block_on(async move {
        let stream = match socket
            .set_nonblocking(true)
            .and_then(|()| tokio::net::UnixStream::from_std(socket))
        {
            Ok(s) => s,
            Err(e) => {
                eprintln!("fork-prefork worker: its socket: {e}");
                return 1;
            }
        };
        let (input, output) = stream.into_split();
        let shared = Arc::new(Shared::new(setup.generation, setup.max_requests));
        let orders = tokio::spawn(report::orders(input, shared.clone()));
        let reporter = tokio::spawn(report::report(shared.clone(), output, setup.heartbeat));
        // Readable once the worker drains: ends `Listener::accept_blocking`.
        let drained = match listener::Drained::new() {
            Ok(d) => d,
            Err(e) => {
                *shared.failure.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(format!("making an eventfd: {e}"));
                return finish(&shared, reporter, 1).await;
            }
        };
        tokio::spawn(drained.clone().on_drain(Link {
            shared: shared.clone(),
        }));
        let mut listeners = Vec::with_capacity(slot.fds.len());
        for (fd, kind) in slot.fds.into_iter().zip(setup.listeners) {
            match Listener::from_fd(fd, kind, drained.clone(), setup.accept_order) {
                Ok(l) => listeners.push(l),
                Err(e) => {
                    *shared.failure.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(format!("registering a listener with tokio: {e}"));
                    return finish(&shared, reporter, 1).await;
                }
            }
        }
        let ctx = Context {
            link: Link {
                shared: shared.clone(),
            },
            listeners,
            args,
            fds,
        };
        let outcome = f(ctx).await.into_outcome();
        orders.abort();
        match outcome {
            Ok(()) => finish(&shared, reporter, 0).await,
            Err(why) => {
                eprintln!("Error: {why}");
                *shared.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
                finish(&shared, reporter, 1).await
            }
        }
    });
    // The process exits right after; tasks still running are dropped.
    rt.shutdown_background();
    code
}

/// Lets the reporting task send the last state (or the failure), then
/// returns `code`.
async fn finish(shared: &Shared, reporter: tokio::task::JoinHandle<()>, code: i32) -> i32 {
    shared.finished.store(true, Ordering::Release);
    shared.changed.notify_one();
    let _ = reporter.await;
    code
}

/// Reports a failure before the runtime exists, on the blocking socket.
fn fail_early(socket: &std::os::unix::net::UnixStream, why: String) -> i32 {
    eprintln!("fork-prefork worker: {why}");
    let _ = (&*socket).write_all(&message::frame(&Report::Failed(message::cut(why))));
    1
}
