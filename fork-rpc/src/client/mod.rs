//! The parent side: spawning a worker and calling it.
//!
//! One concept a file:
//!
//! - [`spawn`](mod@spawn): the fork, the handshake, the pieces put together;
//! - [`stub`]: [`Client`], tarpc's `Stub`; [`call`]: the future of a call;
//! - [`connection`]: the connection's concurrent shell, over two plain state
//!   machines, the [`in_flight`] table and the reader election
//!   ([`reader`]), with the [`read_lock`] on the reply stream, the batching
//!   [`writer`] and the [`background`] task;
//! - [`demux`]: the worker's frames split into replies, events and reports;
//! - [`events`], [`worker`] ([`RpcWorker`]) and [`lost`] (what is known
//!   about a worker's end).

mod background;
mod call;
mod connection;
mod demux;
mod events;
mod in_flight;
mod lost;
mod read_lock;
mod reader;
mod spawn;
mod stub;
mod worker;
mod writer;

#[cfg(feature = "fuzzing")]
pub(crate) use self::demux::decode_reply;
pub use self::events::{Events, UNTAKEN_EVENTS};
pub(crate) use self::spawn::spawn_until;
pub use self::stub::Client;
pub use self::worker::RpcWorker;
