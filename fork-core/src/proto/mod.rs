//! The control protocol between a parent and a template process.
//!
//! Everything here is pure: bytes in, values out. The I/O lives in
//! [`crate::sys::scm`], the template loop in [`crate::template::serve`] and the
//! parent side in [`crate::template::conn`].
//!
//! # Framing
//!
//! The control socket is a `SOCK_SEQPACKET` pair, so a frame and the file
//! descriptors sent with it arrive together. A frame is an 8-byte header and a
//! payload:
//!
//! ```text
//! 0      1        2      3      4               8
//! +------+--------+------+------+---------------+--------------
//! | 'f'  | ver=2  | flags| nfds |  len (u32 LE) | payload (len bytes)
//! +------+--------+------+------+---------------+--------------
//! ```
//!
//! `flags` bit 0 (`MORE`) says the message continues in the next frame: big
//! messages (large arguments, more than [`MAX_FDS_PER_FRAME`] descriptors) are
//! split into frames of at most [`MAX_FRAME_PAYLOAD`] bytes and reassembled by
//! an [`Assembler`], which enforces a limit on the whole message. `nfds` is the
//! number of descriptors the sender attached to this frame; a mismatch with what
//! arrived (for example a truncated control message) is a protocol error.
//!
//! # Messages
//!
//! A reassembled message is a sequence of records, each a tag byte followed by
//! its fields. Integers are little-endian; byte strings and names are a `u32`
//! length and the bytes. Requests flow from the parent to the template,
//! replies back; several records may share one message, which is how both
//! sides batch.

use std::fmt;

/// First byte of every frame.
pub(crate) const MAGIC: u8 = b'f';
/// Protocol version carried in every frame. 2: a template's first reply is
/// [`Reply::Ready`].
pub(crate) const VERSION: u8 = 2;
/// Size of a frame header.
pub(crate) const HEADER_LEN: usize = 8;
/// Largest payload of a single frame; bigger messages are split.
pub(crate) const MAX_FRAME_PAYLOAD: usize = 64 * 1024;
/// Most descriptors attached to one frame (the kernel's `SCM_MAX_FD` is 253).
pub(crate) const MAX_FDS_PER_FRAME: usize = 250;
/// Default limit on a reassembled message.
pub(crate) const DEFAULT_MAX_MESSAGE: usize = 64 * 1024 * 1024;
/// Flag: the message continues in the next frame.
pub(crate) const FLAG_MORE: u8 = 1;

/// A protocol violation: what was wrong with the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProtoError(pub(crate) String);

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn err<T>(msg: impl Into<String>) -> Result<T, ProtoError> {
    Err(ProtoError(msg.into()))
}

mod ack;
mod decode;
mod encode;
mod frame;
mod message;
#[cfg(test)]
mod tests;

pub(crate) use self::ack::{ACK_HEADER, Ack};
pub(crate) use self::decode::Reader;
pub(crate) use self::encode::Writer;
pub(crate) use self::frame::{Assembler, encode_header, split};
pub(crate) use self::message::{ExecSpec, Op, Reply, Request, SpawnFailure, Then, fds_needed};
