//! What travels on a worker's socket besides tarpc's own messages.
//!
//! Before framing, the worker sends one handshake: `[status u8][len u32
//! LE][message]`, status 0 when it is ready to serve, 1 when its init hook
//! failed (the message says why). After it, every frame from the worker is a
//! length-delimited [`WorkerMsg`] in the configured format, and every frame
//! from the parent a tarpc `ClientMessage`.

use std::os::fd::OwnedFd;

use serde::{Deserialize, Serialize};

use crate::error::HandlerPanic;

/// A frame from the worker: replies and events share one ordered stream.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum WorkerMsg<Resp> {
    /// A tarpc reply.
    Reply(tarpc::Response<Resp>),
    /// An event, already serialised in the configured format. A byte
    /// string, copied at once (the same bytes as a sequence of `u8` in
    /// bincode, which serde would read one at a time).
    Event(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A handler panicked; the worker exits next.
    Panic(HandlerPanic),
    /// The worker asks to be retired: send it nothing more, and close the
    /// connection once its calls are answered.
    Retire,
    /// An event whose encoding attached `fds` memory files
    /// ([`SharedBytes`](crate::SharedBytes)): they travel with the frame,
    /// and the parent keeps them in `attached` (once read) until the event
    /// is decoded.
    SharedEvent {
        bytes: Vec<u8>,
        fds: u32,
        #[serde(skip)]
        attached: Vec<OwnedFd>,
    },
}

/// Handshake status: ready to serve.
pub(crate) const READY: u8 = 0;
/// Handshake status: the init hook failed.
pub(crate) const INIT_FAILED: u8 = 1;
/// Longest handshake message accepted.
pub(crate) const MAX_HANDSHAKE: usize = 64 * 1024;

/// Encodes a handshake.
pub(crate) fn handshake(status: u8, message: &str) -> Vec<u8> {
    let message = &message.as_bytes()[..message.len().min(MAX_HANDSHAKE)];
    let mut out = Vec::with_capacity(5 + message.len());
    out.push(status);
    out.extend_from_slice(&(message.len() as u32).to_le_bytes());
    out.extend_from_slice(message);
    out
}
