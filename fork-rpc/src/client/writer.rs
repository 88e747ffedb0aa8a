//! The parent's writing side, with batching: callers write their frames
//! themselves, one non-blocking `write` each when alone; with other calls
//! in flight, a short-lived task writes every frame queued in that round
//! at once.

use std::io;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Buf, BytesMut};
use serde::Serialize;
use tokio::net::unix::OwnedWriteHalf;

use crate::config::Format;
use crate::frame;
use crate::shm;

/// Why a frame was not queued.
#[derive(Debug)]
pub(super) enum Unsent {
    /// It does not encode, or exceeds the frame limit.
    Encode(io::Error),
    /// A write failed before: the connection is broken.
    Broken,
}

/// The writing side of one connection.
pub(super) struct Writer {
    out: Mutex<Out>,
    write: OwnedWriteHalf,
    /// Where the memory files of the frames go (see [`shm`]).
    shared: shm::Outbox,
}

#[derive(Default)]
struct Out {
    /// Frames not written yet.
    buf: BytesMut,
    /// A task is writing `buf` (the socket was full, or a round batches).
    flushing: bool,
    /// Writing failed: the connection is broken.
    broken: bool,
    /// Every client is gone: shut down the sending side once `buf` is out.
    closing: bool,
    /// The number of the next frame queued (see [`shm`]).
    frames: u64,
}

fn lock(m: &Mutex<Out>) -> MutexGuard<'_, Out> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// ===== impl Writer =====

impl Writer {
    pub(super) fn new(write: OwnedWriteHalf, shared: shm::Outbox) -> Arc<Self> {
        Arc::new(Writer {
            out: Mutex::new(Out::default()),
            write,
            shared,
        })
    }

    /// Queues `item` as a frame, encoded straight into the queue (in
    /// `format`, at most `limit` bytes; its big payloads as memory files
    /// when `shared` allows, sent first), and writes what it can at once,
    /// without blocking, unless `defer`: then a task writes it with the
    /// others queued meanwhile. A task also finishes the rest if the socket
    /// is full.
    ///
    /// # Errors
    ///
    /// [`Unsent::Encode`] if `item` does not encode within the limit, or
    /// its memory files cannot be sent (nothing was queued);
    /// [`Unsent::Broken`] once a write failed.
    pub(super) fn send<T: Serialize>(
        self: &Arc<Self>,
        format: Format,
        limit: u64,
        shared: Option<shm::Limits>,
        item: &T,
        defer: bool,
    ) -> Result<(), Unsent> {
        let mut out = lock(&self.out);
        if out.broken {
            return Err(Unsent::Broken);
        }
        // Encoded under the lock, so that frames are queued in the order
        // they were encoded (and numbered so, for their memory files), each
        // copied once, into a buffer that is reused (its room comes back
        // once it is written).
        let start = out.buf.len();
        let (encoded, attached) = shm::scope::encoding(shared, || {
            frame::encode_into(format, limit, item, &mut out.buf)
        });
        encoded.map_err(Unsent::Encode)?;
        // Before the frame's bytes can be written.
        if !attached.is_empty()
            && let Err(e) = self.shared.send(out.frames, &attached)
        {
            out.buf.truncate(start);
            if e.kind() != io::ErrorKind::WouldBlock {
                return Err(Unsent::Encode(e));
            }
            // The worker has not read the descriptors sent before (it is
            // busy): the payloads go as bytes in the frame instead, if the
            // frame limit takes them.
            frame::encode_into(format, limit, item, &mut out.buf).map_err(|inline| {
                Unsent::Encode(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!("{e}; as bytes in the frame instead: {inline}"),
                ))
            })?;
        }
        out.frames += 1;
        if out.flushing {
            return Ok(());
        }
        // A flush task needs a runtime; without one (a call dropped after
        // its runtime shut down), write what the socket takes now.
        let runtime = tokio::runtime::Handle::try_current().ok();
        if !defer || runtime.is_none() {
            self.write_some(&mut out).map_err(|_| Unsent::Broken)?;
        }
        if let (false, Some(runtime)) = (out.buf.is_empty(), runtime) {
            out.flushing = true;
            runtime.spawn(flush(self.clone()));
        }
        Ok(())
    }

    /// Every client is gone: shuts the sending side down once what was
    /// queued is written (a graceful close).
    pub(super) fn close(&self) {
        let mut out = lock(&self.out);
        out.closing = true;
        if !out.flushing && out.buf.is_empty() {
            self.shutdown();
        }
    }

    fn shutdown(&self) {
        fork_core::fdpass::shutdown_write(self.write.as_ref().as_fd());
    }

    /// Writes as much of the queue as the socket takes now.
    fn write_some(&self, out: &mut Out) -> io::Result<()> {
        while !out.buf.is_empty() {
            match self.write.try_write(&out.buf) {
                Ok(n) => out.buf.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    out.broken = true;
                    out.buf.clear();
                    return Err(e);
                }
            }
        }
        if out.buf.is_empty() && out.closing {
            self.shutdown();
        }
        Ok(())
    }
}

/// Writes the queue: frames queued while other calls were in flight (so
/// that one write carries them all), or the rest once the socket has room.
async fn flush(writer: Arc<Writer>) {
    // Spawned by the first caller of a round, this runs once that caller's
    // task yields (next, on a multi-threaded runtime's same thread), after
    // the other callers of the round queued their frames.
    loop {
        if writer.write.writable().await.is_err() {
            let mut out = lock(&writer.out);
            out.broken = true;
            out.flushing = false;
            return;
        }
        let mut out = lock(&writer.out);
        if writer.write_some(&mut out).is_err() || out.buf.is_empty() {
            out.flushing = false;
            return;
        }
    }
}
