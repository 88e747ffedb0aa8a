//! Big payloads as sealed shared memory: [`SharedBytes`], and how its
//! descriptors travel beside the frames of a connection.
//!
//! One concept a file: [`bytes`](mod@bytes) ([`SharedBytes`] and its serde
//! form), [`scope`] (the thread-local sink and source that encoding and
//! decoding a frame set, through which a `SharedBytes` hands over or takes
//! its descriptor), [`channel`] (the descriptor channel: one message per
//! frame that carries descriptors, tagged with the frame's number).
//!
//! # The wire
//!
//! Each connection has a `SOCK_SEQPACKET` pair of its own for this, apart
//! from the one [`RpcWorker::send_fds`](crate::RpcWorker::send_fds) uses,
//! so user descriptors and these never mix. Both sides number the frames
//! they write on the worker's socket, from 0, each direction on its own.
//! A frame whose encoding attached descriptors is preceded by one message
//! on the descriptor channel: the frame's number (`u64`, little-endian)
//! with all its descriptors, sent in the same critical section that queues
//! the frame, before the frame's bytes. Inside the frame, a `SharedBytes`
//! is `Fd { index, len }`: the index of its descriptor in that message.
//!
//! The receiver numbers the frames it reads; the first `Fd` of a frame
//! pulls the message (without waiting: it was sent before the frame's
//! bytes), closing older ones left behind by frames that failed to
//! decode. Descriptors of the message that no `Fd` claims are closed when
//! the frame is decoded. A frame that claims descriptors none were sent for
//! fails to decode, with an error that says so.
//!
//! The number is the frame's place in the stream and not part of the
//! `Fd` marker, because an event is encoded (by
//! [`EventSender::send`](crate::EventSender::send), on any thread) before
//! its place among the worker's frames is known.

pub(crate) mod bytes;
pub(crate) mod channel;
pub(crate) mod scope;

pub use self::bytes::SharedBytes;
pub(crate) use self::channel::{Inbox, Limits, Outbox};
