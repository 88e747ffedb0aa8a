//! The framing of a worker's socket, both ways, after the handshake: a
//! frame is its body's length (`u32`, big-endian, as tokio-util's
//! `LengthDelimitedCodec` writes it), then the body, a value encoded by
//! [`codec`] in the configured format.
//!
//! The one implementation of it: the parent writes its requests with
//! [`put`] and reads the worker's frames with [`next`] (through
//! [`FrameRead`]); the worker reads with [`decode`] and writes with
//! [`encode_into`] and [`put`]. A body is decoded where it lies in the
//! input buffer, and a reply is encoded straight into the output buffer.

use std::io;
use std::panic;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use bytes::{Buf, BufMut, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::AsyncRead;

use crate::codec;
use crate::config::Format;

/// The length prefix's size.
const HEADER: usize = 4;

/// Free room in an input buffer below which it grows before a read.
const MIN_READ_ROOM: usize = 4 * 1024;

/// How much an input buffer grows by when it has too little free room.
const READ_CHUNK: usize = 64 * 1024;

/// Appends a frame whose body is already encoded (no longer than the frame
/// limit: [`codec::encode`] checked it).
pub(crate) fn put(out: &mut BytesMut, body: &[u8]) {
    out.reserve(HEADER + body.len());
    out.put_u32(body.len() as u32);
    out.extend_from_slice(body);
}

/// Appends one value to `out` as a frame, encoded in `format`, in one pass;
/// stops as soon as the frame exceeds `limit` bytes.
///
/// # Errors
///
/// If the value cannot be encoded or its frame exceeds `limit` bytes; `out`
/// is then left as it was.
pub(crate) fn encode_into<T: Serialize>(
    format: Format,
    limit: u64,
    item: &T,
    out: &mut BytesMut,
) -> io::Result<()> {
    let start = out.len();
    out.put_u32(0);
    let mut body = Limited {
        out,
        left: limit.min(u32::MAX.into()),
        limit,
        stage: [0; STAGE],
        staged: 0,
    };
    let encoded = codec::encode_to(format, &mut body, item);
    body.spill();
    match encoded {
        Ok(()) => {
            let len = (out.len() - start - HEADER) as u32;
            out[start..start + HEADER].copy_from_slice(&len.to_be_bytes());
            Ok(())
        }
        Err(e) => {
            out.truncate(start);
            Err(e)
        }
    }
}

/// Hands the body of the next whole frame in `input` to `f`, then removes
/// the frame from `input`.
///
/// The length is checked against `max_frame` as soon as it is read, before
/// the frame's bytes are awaited: for a frame not whole yet, `input` gets
/// room for the rest of it (at most `max_frame` bytes) and `Ok(None)` is
/// returned.
///
/// # Errors
///
/// A frame longer than `max_frame`: nothing after it can be read.
pub(crate) fn next<T>(
    input: &mut BytesMut,
    max_frame: usize,
    f: impl FnOnce(&[u8]) -> T,
) -> io::Result<Option<T>> {
    let Some(prefix) = input.first_chunk::<HEADER>() else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(*prefix) as usize;
    if len > max_frame {
        return Err(codec::too_big(Some(len as u64), max_frame as u64));
    }
    if input.len() < HEADER + len {
        input.reserve(HEADER + len - input.len());
        return Ok(None);
    }
    let out = f(&input[HEADER..HEADER + len]);
    input.advance(HEADER + len);
    Ok(Some(out))
}

/// Splits the next whole frame off `input` and decodes it, as the worker
/// reads what the parent sends (see [`next`]; the worker itself calls
/// [`next`] and [`decode_body`] with the frame's descriptors around).
///
/// # Errors
///
/// A frame longer than `max_frame`, or one that does not decode as `T`
/// (a panic while decoding included, with its message): nothing after it
/// can be read.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn decode<T: DeserializeOwned>(
    input: &mut BytesMut,
    max_frame: usize,
    format: Format,
) -> io::Result<Option<T>> {
    let limit = max_frame as u64;
    next(input, max_frame, |body| decode_body(format, limit, body))?.transpose()
}

/// Decodes one frame's body from the parent, a panic while decoding
/// included (with its message): tarpc adds the deadline it reads to the
/// clock, which overflows on an absurd one.
pub(crate) fn decode_body<T: DeserializeOwned>(
    format: Format,
    limit: u64,
    body: &[u8],
) -> io::Result<T> {
    panic::catch_unwind(|| codec::decode::<T>(format, limit, body))
        .unwrap_or_else(|panic| Err(codec::invalid(fork_core::__private::panic_message(&*panic))))
}

/// Reads into `input` what `reader` has, making room first. `Ready(Ok(0))`
/// at the end of the stream.
pub(crate) fn poll_fill<R: AsyncRead + Unpin>(
    reader: &mut R,
    cx: &mut TaskContext<'_>,
    input: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    if input.capacity() - input.len() < MIN_READ_ROOM {
        input.reserve(READ_CHUNK);
    }
    // A short read tells tokio the socket is drained, so the next poll
    // returns `Pending` without a system call.
    tokio_util::io::poll_read_buf(Pin::new(reader), cx, input)
}

/// The frames read from a byte stream, each handed to a decoding function
/// where it lies in the read buffer: the parent's reading side.
pub(crate) struct FrameRead<R, D> {
    reader: R,
    input: BytesMut,
    max_frame: usize,
    decode: D,
    /// The stream ended (or failed): nothing more comes.
    done: bool,
}

// ===== impl FrameRead =====

impl<R, D, T> FrameRead<R, D>
where
    R: AsyncRead + Unpin,
    D: FnMut(&[u8]) -> io::Result<T>,
{
    pub(crate) fn new(reader: R, max_frame: usize, decode: D) -> Self {
        FrameRead {
            reader,
            input: BytesMut::new(),
            max_frame,
            decode,
            done: false,
        }
    }

    /// The next decoded frame; `None` at the end of the stream, after an
    /// error (a frame over the limit, one that does not decode, the stream
    /// ending inside a frame).
    pub(crate) fn poll_frame(&mut self, cx: &mut TaskContext<'_>) -> Poll<Option<io::Result<T>>> {
        if self.done {
            return Poll::Ready(None);
        }
        loop {
            match next(&mut self.input, self.max_frame, &mut self.decode) {
                Ok(Some(Ok(frame))) => return Poll::Ready(Some(Ok(frame))),
                Ok(None) => {}
                Ok(Some(Err(e))) | Err(e) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
            }
            match poll_fill(&mut self.reader, cx, &mut self.input) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    self.done = true;
                    if self.input.is_empty() {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the worker closed the connection inside a frame",
                    ))));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }
}

impl<R, D, T> futures::Stream for FrameRead<R, D>
where
    R: AsyncRead + Unpin,
    D: FnMut(&[u8]) -> io::Result<T> + Unpin,
{
    type Item = io::Result<T>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_frame(cx)
    }
}

/// Bytes a [`Limited`] gathers before it appends them.
const STAGE: usize = 128;

/// Appends to a buffer, failing once more than `left` bytes would be written.
///
/// Small writes (bincode writes each primitive on its own: a `Vec<u8>` that
/// serde sees as a sequence is a write per byte) are gathered in `stage`
/// and appended together: a store each instead of a call into `BytesMut`.
/// [`spill`](Limited::spill) appends what is left.
struct Limited<'a> {
    out: &'a mut BytesMut,
    left: u64,
    /// The limit, for the error message.
    limit: u64,
    stage: [u8; STAGE],
    /// Bytes in `stage`.
    staged: usize,
}

// ===== impl Limited =====

impl Limited<'_> {
    /// Appends what was gathered.
    fn spill(&mut self) {
        self.out.extend_from_slice(&self.stage[..self.staged]);
        self.staged = 0;
    }
}

impl io::Write for Limited<'_> {
    #[inline]
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_all(buf).map(|()| buf.len())
    }

    // What bincode calls, once per primitive: inlined, so that the length
    // of a primitive's bytes is known where it is copied.
    #[inline]
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        if buf.len() as u64 > self.left {
            return Err(codec::too_big(None, self.limit));
        }
        self.left -= buf.len() as u64;
        if let Some(room) = self.stage.get_mut(self.staged..self.staged + buf.len()) {
            room.copy_from_slice(buf);
            self.staged += buf.len();
        } else {
            self.spill();
            if buf.len() < STAGE {
                self.stage[..buf.len()].copy_from_slice(buf);
                self.staged = buf.len();
            } else {
                self.out.extend_from_slice(buf);
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 64;

    fn bodies(input: &mut BytesMut) -> io::Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        while let Some(body) = next(input, MAX, <[u8]>::to_vec)? {
            out.push(body);
        }
        Ok(out)
    }

    #[test]
    fn put_then_next_round_trips_and_waits_for_the_rest() {
        let mut out = BytesMut::new();
        put(&mut out, b"one");
        put(&mut out, b"");
        put(&mut out, b"three");
        assert_eq!(&out[..4], &3u32.to_be_bytes());
        // Cut after the second frame's header and inside the third's body.
        let mut input = BytesMut::from(&out[..7 + 4 + 6]);
        assert_eq!(bodies(&mut input).unwrap(), [b"one".to_vec(), Vec::new()]);
        assert_eq!(input.len(), 6);
        assert!(input.capacity() >= 4 + 5, "room made for the whole frame");
        input.extend_from_slice(&out[7 + 4 + 6..]);
        assert_eq!(bodies(&mut input).unwrap(), [b"three".to_vec()]);
        assert!(input.is_empty());
    }

    #[test]
    fn a_length_over_the_limit_fails_before_its_bytes() {
        let mut input = BytesMut::from(&((MAX as u32 + 1).to_be_bytes())[..]);
        let e = next(&mut input, MAX, |_| ()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("exceeds max_frame"), "{e}");
        // At the limit, it waits.
        let mut input = BytesMut::from(&((MAX as u32).to_be_bytes())[..]);
        assert!(matches!(next(&mut input, MAX, |_| ()), Ok(None)));
    }

    #[test]
    fn encode_into_frames_a_value_and_refuses_one_over_the_limit() {
        let mut out = BytesMut::from(&b"kept"[..]);
        encode_into(Format::Bincode, MAX as u64, &"hi".to_owned(), &mut out).unwrap();
        let mut input = out.split_off(4);
        let value = decode::<String>(&mut input, MAX, Format::Bincode).unwrap();
        assert_eq!(value.as_deref(), Some("hi"));
        let e = encode_into(Format::Json, MAX as u64, &"x".repeat(MAX), &mut out).unwrap_err();
        assert!(e.to_string().contains("max_frame"), "{e}");
        assert_eq!(&out[..], b"kept", "the output is left as it was");
    }

    #[tokio::test]
    async fn frame_read_decodes_frames_cut_anywhere_and_fails_on_a_cut_frame() {
        use futures::StreamExt;
        use tokio::io::AsyncWriteExt;

        let mut bytes = BytesMut::new();
        for body in [&b"a"[..], b"bc", b"def"] {
            put(&mut bytes, body);
        }
        let (mut tx, rx) = tokio::io::duplex(3);
        let mut frames = FrameRead::new(rx, MAX, |b: &[u8]| Ok(b.to_vec()));
        let all = bytes.to_vec();
        let writer = tokio::spawn(async move {
            tx.write_all(&all).await.unwrap();
            // Half a frame, then the end.
            tx.write_all(&9u32.to_be_bytes()).await.unwrap();
            tx.write_all(b"abc").await.unwrap();
        });
        for want in [&b"a"[..], b"bc", b"def"] {
            assert_eq!(frames.next().await.unwrap().unwrap(), want);
        }
        let e = frames.next().await.unwrap().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert!(frames.next().await.is_none());
        writer.await.unwrap();
    }
}
