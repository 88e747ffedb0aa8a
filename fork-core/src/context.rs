//! What an entry function receives in the worker.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;

use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// Everything a worker was given: its socket, its arguments and its file
/// descriptors (the `$fh, @args` of AnyEvent::Fork's `run`).
///
/// Arguments come in the order they were sent: first those sent to the
/// template(s) it was forked from, then its own. Descriptors likewise.
///
/// The socket is a blocking [`std::os::unix::net::UnixStream`] connected to the
/// parent's [`Worker::stream`](crate::Worker::stream). To use it with tokio
/// inside the worker, build a runtime first and convert it with
/// [`Context::into_tokio_socket`].
#[derive(Debug)]
pub struct Context {
    socket: UnixStream,
    args: Vec<Vec<u8>>,
    fds: Vec<OwnedFd>,
    slot: Option<Slot>,
}

/// What a layer built on fork-core (fork-rpc, say) sent along with a fork
/// for its own code around the entry, apart from the arguments and
/// descriptors that the entry's user sends: see
/// [`Fork::slot`](crate::Fork::slot) and [`Context::take_slot`].
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct Slot {
    /// The data, as given to `Fork::slot`.
    pub data: Vec<u8>,
    /// The descriptors, in order; close-on-exec.
    pub fds: Vec<OwnedFd>,
}

impl Context {
    pub(crate) fn new(
        socket: UnixStream,
        args: Vec<Vec<u8>>,
        fds: Vec<OwnedFd>,
        slot: Slot,
    ) -> Context {
        Context {
            socket,
            args,
            fds,
            slot: Some(slot),
        }
    }

    /// Takes the [`Slot`] sent with [`Fork::slot`](crate::Fork::slot): for
    /// the layer that runs the entry, before it hands the context on. Empty
    /// if nothing was sent; `None` once taken.
    pub fn take_slot(&mut self) -> Option<Slot> {
        self.slot.take()
    }

    /// The socket connected to the parent. `&UnixStream` implements `Read`
    /// and `Write`, so `ctx.socket().write_all(..)` works.
    pub fn socket(&self) -> &UnixStream {
        &self.socket
    }

    /// All arguments as raw bytes (typed ones are bincode-encoded).
    pub fn args(&self) -> &[Vec<u8>] {
        &self.args
    }

    /// Decodes argument `index`, sent with [`Fork::arg`](crate::Fork::arg) or
    /// [`Template::arg`](crate::Template::arg).
    ///
    /// # Errors
    ///
    /// [`Error::Arg`] if there is no such argument or it does not decode as `T`.
    pub fn arg<T: DeserializeOwned>(&self, index: usize) -> Result<T> {
        decode_arg(&self.args, index)
    }

    /// The descriptors sent to this process, in order.
    pub fn fds(&self) -> &[OwnedFd] {
        &self.fds
    }

    /// Takes ownership of the descriptors.
    pub fn take_fds(&mut self) -> Vec<OwnedFd> {
        std::mem::take(&mut self.fds)
    }

    /// Splits the context into socket, arguments and descriptors (the slot,
    /// if not taken, is dropped).
    pub fn into_parts(self) -> (UnixStream, Vec<Vec<u8>>, Vec<OwnedFd>) {
        (self.socket, self.args, self.fds)
    }

    /// Turns the socket into a tokio `UnixStream` (non-blocking).
    ///
    /// # Errors
    ///
    /// Fails outside a tokio runtime or if the socket cannot be registered.
    pub fn into_tokio_socket(self) -> Result<tokio::net::UnixStream> {
        self.socket.set_nonblocking(true)?;
        Ok(tokio::net::UnixStream::from_std(self.socket)?)
    }
}

/// Decodes argument `index` of `args`, the raw arguments a worker got (as
/// [`Context::args`] gives them): what [`Context::arg`] does, for layers
/// that keep the arguments themselves (fork-rpc's `Setup`, fork-prefork's
/// `Context`).
///
/// ```
/// let args = vec![bincode::serialize(&42u32).unwrap()];
/// assert_eq!(fork_core::decode_arg::<u32>(&args, 0).unwrap(), 42);
/// assert!(fork_core::decode_arg::<u32>(&args, 1).is_err());
/// ```
///
/// # Errors
///
/// [`Error::Arg`] if there is no such argument or it does not decode as `T`.
pub fn decode_arg<T: DeserializeOwned>(args: &[Vec<u8>], index: usize) -> Result<T> {
    let bytes = args.get(index).ok_or_else(|| Error::Arg {
        index,
        message: format!("no such argument ({} sent)", args.len()),
    })?;
    bincode::deserialize(bytes).map_err(|e| Error::Arg {
        index,
        message: e.to_string(),
    })
}
