//! The parent's writing side, with batching: callers write their frames
//! themselves, one non-blocking `write` each when alone; with other calls
//! in flight, a short-lived task writes every frame queued in that round
//! at once.

use std::io;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Buf, BytesMut};
use fork_core::shm::SealedBytes;
use tokio::net::unix::OwnedWriteHalf;

use crate::frame;
use crate::shm;

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

    /// Queues a frame with `body` (after sending the memory files its
    /// encoding `attached`, if any) and writes what it can at once, without
    /// blocking, unless `defer`: then a task writes it with the others
    /// queued meanwhile. A task also finishes the rest if the socket is
    /// full.
    ///
    /// # Errors
    ///
    /// `BrokenPipe` once a write failed; the error of sending the memory
    /// files (the frame is then not queued).
    pub(super) fn send(
        self: &Arc<Self>,
        body: &[u8],
        attached: &[Arc<SealedBytes>],
        defer: bool,
    ) -> io::Result<()> {
        let mut out = lock(&self.out);
        if out.broken {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        // In the lock that orders the frames, before the frame's bytes.
        if !attached.is_empty() {
            self.shared.send(out.frames, attached)?;
        }
        out.frames += 1;
        frame::put(&mut out.buf, body);
        if out.flushing {
            return Ok(());
        }
        // A flush task needs a runtime; without one (a call dropped after
        // its runtime shut down), write what the socket takes now.
        let runtime = tokio::runtime::Handle::try_current().ok();
        if !defer || runtime.is_none() {
            self.write_some(&mut out)?;
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
