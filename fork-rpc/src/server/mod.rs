//! The worker side: serving a tarpc service on the worker's socket.
//!
//! A worker serves one connection, so it does without tarpc's server
//! machinery (`BaseChannel`, which per request makes a tracing span with
//! OpenTelemetry context, a deadline timer entry, an abort handle and a
//! channel hop for the reply). One task, `Server`, serves the same wire
//! format in rounds:
//!
//! 1. read what the parent sent, and decode every complete frame: a request
//!    joins the queue, a cancellation drops its request (queued or running);
//! 2. start queued requests in arrival order, at most the [`Mode`]'s limit at
//!    once, and poll the running handlers until they all wait: a request
//!    whose deadline passed never starts, and a handler still running at
//!    its deadline is dropped (tarpc's rule: the caller has given up);
//! 3. append each reply, after the events its handler sent before it, to
//!    one output buffer;
//! 4. write that buffer with one non-blocking write.
//!
//! A batch of requests read together is thus answered with one write. When
//! the parent closes its side, the worker finishes every request it
//! received, writes the replies and shuts its side down.
//!
//! One concept a file: [`serve`](mod@serve) (the worker's life after the
//! fork), [`setup`] ([`Setup`], what the init hook gets), [`events`]
//! ([`EventSender`]), [`fds`] ([`FdReceiver`]), [`round`] (the serving
//! loop), [`handler`] (one running request), [`panic`](mod@panic) (a handler's panic
//! as the parent gets it).

mod events;
mod fds;
mod handler;
mod panic;
mod round;
mod serve;
mod setup;

pub use self::events::EventSender;
pub use self::fds::FdReceiver;
pub use self::serve::serve;
pub use self::setup::Setup;

#[cfg(doc)]
use crate::config::Mode;
