//! Both ends of the byte stream: a reader that cuts it into frames (never
//! buffering more than one frame of the limit) and a writer task that
//! sends the frames every part queues, in order.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;

use super::wire::{self, Frame};
use crate::proto::ProtoError;

/// Frames queued for the writer at most: with data frames of 32 KiB, 2 MiB.
pub(crate) const OUT_QUEUE: usize = 64;

/// The reading half of a connection.
pub(crate) type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
/// The writing half of a connection.
pub(crate) type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// An owned frame, as the reader hands it on.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Owned {
    Hello(Vec<u8>),
    Control(Vec<u8>),
    Data { channel: u64, bytes: Vec<u8> },
    Eof { channel: u64 },
    Credit { channel: u64, bytes: u32 },
    Close { channel: u64 },
    Ping { timeout_ms: u32 },
    Pong,
    Listening(Vec<u8>),
    Forwarded { channel: u64 },
}

impl From<Frame<'_>> for Owned {
    fn from(f: Frame<'_>) -> Owned {
        match f {
            Frame::Hello(p) => Owned::Hello(p.to_vec()),
            Frame::Control(p) => Owned::Control(p.to_vec()),
            Frame::Data { channel, bytes } => Owned::Data {
                channel,
                bytes: bytes.to_vec(),
            },
            Frame::Eof { channel } => Owned::Eof { channel },
            Frame::Credit { channel, bytes } => Owned::Credit { channel, bytes },
            Frame::Close { channel } => Owned::Close { channel },
            Frame::Ping { timeout_ms } => Owned::Ping { timeout_ms },
            Frame::Pong => Owned::Pong,
            Frame::Listening(p) => Owned::Listening(p.to_vec()),
            Frame::Forwarded { channel } => Owned::Forwarded { channel },
        }
    }
}

/// Why reading stopped.
#[derive(Debug)]
pub(crate) enum ReadError {
    Io(io::Error),
    Protocol(ProtoError),
}

/// Cuts a byte stream into frames.
pub(crate) struct FrameReader {
    r: BoxRead,
    buf: Vec<u8>,
    start: usize,
    max_control: usize,
}

impl std::fmt::Debug for FrameReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameReader")
            .field("buffered", &(self.buf.len() - self.start))
            .finish_non_exhaustive()
    }
}

impl FrameReader {
    pub(crate) fn new(r: BoxRead, max_control: usize) -> FrameReader {
        FrameReader {
            r,
            buf: Vec::new(),
            start: 0,
            max_control,
        }
    }

    /// The bytes read but not yet decoded (for an error message).
    pub(crate) fn pending(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// The next frame of a relay loop: `Ok(None)` once the stream ends or
    /// breaks (nothing more comes: the loop ends quietly), `Err` with what
    /// was wrong if the other side broke the protocol.
    pub(crate) async fn next_or_end(&mut self) -> Result<Option<Owned>, String> {
        match self.next().await {
            Ok(frame) => Ok(frame),
            Err(ReadError::Io(_)) => Ok(None),
            Err(ReadError::Protocol(e)) => Err(e.0),
        }
    }

    /// The next frame; `Ok(None)` at the end of the stream between frames.
    ///
    /// # Errors
    ///
    /// I/O errors, a malformed frame, or the end of the stream inside one.
    pub(crate) async fn next(&mut self) -> Result<Option<Owned>, ReadError> {
        loop {
            match wire::decode(&self.buf[self.start..], self.max_control) {
                Ok(Some((frame, used))) => {
                    let frame = Owned::from(frame);
                    self.start += used;
                    return Ok(Some(frame));
                }
                Ok(None) => {}
                Err(e) => return Err(ReadError::Protocol(e)),
            }
            // Room for more: drop what was decoded, keep the partial frame.
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            self.buf.reserve(64 * 1024);
            let n = self
                .r
                .read_buf(&mut self.buf)
                .await
                .map_err(ReadError::Io)?;
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ReadError::Protocol(ProtoError(format!(
                        "the stream ended inside a frame ({} bytes of it came)",
                        self.buf.len()
                    ))))
                };
            }
        }
    }
}

/// What the writer task is asked to do.
#[derive(Debug)]
pub(crate) enum Out {
    /// Write these bytes (one or more encoded frames).
    Frame(Vec<u8>),
    /// Flush, close the stream's writing side, and stop.
    Close,
}

/// The queue to the writer task. Sending waits while it is full: the stream
/// is the bottleneck, and every sender slows down to its pace.
#[derive(Debug, Clone)]
pub(crate) struct Outbox(pub(crate) mpsc::Sender<Out>);

impl Outbox {
    /// Queues `frame`; `false` once the writer has stopped.
    pub(crate) async fn send(&self, frame: &Frame<'_>) -> bool {
        self.0.send(Out::Frame(wire::to_vec(frame))).await.is_ok()
    }

    /// Queues `frame` if there is room now; `false` if the queue is full
    /// (the stream is busy: what is queued shows life anyway) or the
    /// writer has stopped. For keepalive frames, which must never wait.
    pub(crate) fn try_send(&self, frame: &Frame<'_>) -> bool {
        self.0.try_send(Out::Frame(wire::to_vec(frame))).is_ok()
    }

    /// Asks the writer to close the stream once what was queued is out.
    pub(crate) async fn close(&self) {
        let _ = self.0.send(Out::Close).await;
    }
}

/// Writes queued frames until asked to close or the stream fails, then
/// closes the writing side (the other end reads EOF). The error that
/// stopped it, if one did.
pub(crate) async fn write_loop(mut rx: mpsc::Receiver<Out>, w: BoxWrite) -> io::Result<()> {
    let mut w = BufWriter::with_capacity(64 * 1024, w);
    let mut result = Ok(());
    while let Some(out) = rx.recv().await {
        let Out::Frame(bytes) = out else { break };
        if let Err(e) = w.write_all(&bytes).await {
            result = Err(e);
            break;
        }
        if rx.is_empty()
            && let Err(e) = w.flush().await
        {
            result = Err(e);
            break;
        }
    }
    let _ = w.flush().await;
    let _ = w.shutdown().await;
    // Dropping the writer closes it (a pipe's shutdown does nothing).
    drop(w);
    rx.close();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(bytes: Vec<u8>) -> FrameReader {
        FrameReader::new(Box::new(std::io::Cursor::new(bytes)), 100)
    }

    #[tokio::test]
    async fn reads_frames_then_eof() {
        let mut bytes = wire::to_vec(&Frame::Control(b"abc"));
        wire::encode(&Frame::Eof { channel: 2 }, &mut bytes);
        let mut r = reader(bytes);
        assert_eq!(
            r.next().await.unwrap(),
            Some(Owned::Control(b"abc".to_vec()))
        );
        assert_eq!(r.next().await.unwrap(), Some(Owned::Eof { channel: 2 }));
        assert_eq!(r.next().await.unwrap(), None);
    }

    #[tokio::test]
    async fn eof_inside_a_frame_is_an_error() {
        let bytes = wire::to_vec(&Frame::Control(b"abc"));
        let mut r = reader(bytes[..bytes.len() - 1].to_vec());
        assert!(matches!(r.next().await, Err(ReadError::Protocol(_))));
    }

    /// A stream that hands each write it gets to the test, as it comes.
    struct Writes(mpsc::UnboundedSender<Vec<u8>>);

    impl AsyncWrite for Writes {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<io::Result<usize>> {
            let _ = self.0.send(buf.to_vec());
            std::task::Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn frames_queued_together_leave_in_one_write() {
        let (tx, rx) = mpsc::channel(OUT_QUEUE);
        let out = Outbox(tx);
        let mut expected = Vec::new();
        for channel in 1..=10 {
            let frame = Frame::Data {
                channel,
                bytes: b"call",
            };
            wire::encode(&frame, &mut expected);
            assert!(out.send(&frame).await);
        }
        out.close().await;
        let (writes, mut written) = mpsc::unbounded_channel();
        write_loop(rx, Box::new(Writes(writes)))
            .await
            .expect("the writes succeed");
        let mut all = Vec::new();
        while let Ok(w) = written.try_recv() {
            all.push(w);
        }
        assert_eq!(all, [expected]);
    }

    #[tokio::test]
    async fn a_frame_alone_leaves_without_waiting_for_more() {
        let (tx, rx) = mpsc::channel(OUT_QUEUE);
        let out = Outbox(tx);
        let (writes, mut written) = mpsc::unbounded_channel();
        let writer = tokio::spawn(write_loop(rx, Box::new(Writes(writes))));
        assert!(out.send(&Frame::Eof { channel: 3 }).await);
        // Nothing else is queued and the writer is not closed: the frame
        // is written all the same.
        let first = tokio::time::timeout(std::time::Duration::from_secs(10), written.recv())
            .await
            .expect("the frame was held back");
        assert_eq!(first, Some(wire::to_vec(&Frame::Eof { channel: 3 })));
        out.close().await;
        writer.await.unwrap().expect("the writes succeed");
    }

    #[tokio::test]
    async fn garbage_is_an_error() {
        let mut r = reader(b"Welcome to the host! Have a nice day.\n".to_vec());
        assert!(matches!(r.next().await, Err(ReadError::Protocol(_))));
    }
}
