//! Worker streams multiplexed over the one byte stream, with per-channel
//! flow control.
//!
//! Each worker's stream is a channel, numbered by the spawn request that
//! made it. On both sides a channel ends in a real unix socket (the
//! worker's socket on the remote host; here, the other end of the socket
//! pair whose first end is the [`Worker`](crate::Worker)'s stream), so the
//! code on either side sees an ordinary socket.
//!
//! Two tasks serve a channel on each side:
//!
//! - the **pump** reads the local socket and sends `Data` frames, but only
//!   as many bytes as it has credit for; at EOF it sends `Eof`;
//! - the **drain** writes the `Data` that came to the local socket, then
//!   grants the bytes back to the sender as `Credit`; at `Eof` it shuts
//!   down the socket's writing side.
//!
//! # Flow control
//!
//! A sender starts with [`WINDOW`] bytes of credit per channel and spends
//! it as it sends; the receiver returns credit once the bytes left its
//! memory (were written to the local socket). So the bytes buffered for
//! one channel on the receiving side never exceed [`WINDOW`] (a sender
//! that overruns it is a protocol error), and a worker that does not read
//! only stops its own channel: its drain waits, its sender runs out of
//! credit and stops reading its socket, and the writer on that socket
//! blocks in the kernel, as it would on a local socket. The reader of the
//! stream never waits for a channel.
//!
//! Credit is granted back in batches of [`GRANT`] bytes (half the window),
//! never one per `Data` frame: a grant of its own is a write, an ssh packet
//! and a wakeup of every process on the way, for nothing the sender needs
//! yet (it still holds at least half a window). It is never withheld so
//! that a channel stalls: a sender out of credit has a whole window
//! unacknowledged, so the drain still has bytes to deliver, and delivering
//! them reaches the grant.
//!
//! If the local socket cannot be written (its reader is gone: the worker
//! exited, or the parent dropped the worker's stream), the drain sends
//! `Close` and stops; the other side then closes its own end of the
//! channel both ways, so the process there sees `EPIPE` on its next write
//! and EOF, as on a local socket whose peer is gone. What was still on the
//! way for the channel is dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Notify, mpsc, watch};

use super::stream::Outbox;
use super::wire::{Frame, MAX_DATA};
use crate::proto::ProtoError;

/// Bytes a sender may have sent on one channel that the receiver has not
/// yet delivered: the most one channel buffers on the receiving side.
pub(crate) const WINDOW: usize = 256 * 1024;
/// Credit is returned once this much was delivered.
pub(crate) const GRANT: usize = WINDOW / 2;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The channels of one connection.
#[derive(Debug)]
pub(crate) struct Mux {
    out: Outbox,
    chans: Mutex<HashMap<u64, Chan>>,
    closed: watch::Sender<bool>,
}

/// The reader's view of a channel.
#[derive(Debug)]
struct Chan {
    /// To the drain: bytes, or `None` for `Eof`.
    inbound: mpsc::UnboundedSender<Option<Vec<u8>>>,
    /// Bytes received and not yet delivered.
    buffered: Arc<Mutex<usize>>,
    credit: Arc<Credit>,
    /// Set when the other side's end is gone (`Close`): pump and drain
    /// stop, and the local socket closes.
    gone: watch::Sender<bool>,
    /// Tasks still running (pump and drain); removed at zero.
    tasks: u8,
}

/// The pump's credit.
#[derive(Debug)]
struct Credit {
    bytes: Mutex<usize>,
    more: Notify,
}

impl Credit {
    /// Waits until there is credit; how much.
    async fn wait(&self) -> usize {
        loop {
            let more = self.more.notified();
            let now = *lock(&self.bytes);
            if now > 0 {
                return now;
            }
            more.await;
        }
    }

    fn spend(&self, n: usize) {
        *lock(&self.bytes) -= n;
    }

    fn grant(&self, n: usize) -> Result<(), ProtoError> {
        let mut bytes = lock(&self.bytes);
        let total = *bytes + n;
        if total > WINDOW {
            return Err(ProtoError(format!(
                "a credit of {n} bytes raises a window of {WINDOW} bytes to {total}"
            )));
        }
        *bytes = total;
        drop(bytes);
        self.more.notify_one();
        Ok(())
    }
}

/// The bytes a drain delivered and has not yet granted back.
#[derive(Debug, Default)]
struct Owed(usize);

impl Owed {
    /// `n` more bytes were delivered: the credit to grant now, if any.
    fn delivered(&mut self, n: usize) -> Option<u32> {
        self.0 += n;
        if self.0 < GRANT {
            return None;
        }
        let grant = std::mem::take(&mut self.0);
        Some(u32::try_from(grant).expect("a grant is at most a window"))
    }
}

impl Mux {
    pub(crate) fn new(out: Outbox) -> Arc<Mux> {
        Arc::new(Mux {
            out,
            chans: Mutex::new(HashMap::new()),
            closed: watch::channel(false).0,
        })
    }

    /// Opens channel `id` on `socket` (non-blocking, registered with the
    /// runtime), starting its pump and drain. A channel that exists is
    /// left alone and `socket` closed (ids are unique per connection).
    pub(crate) fn open(self: &Arc<Self>, id: u64, socket: UnixStream) {
        let (inbound, rx) = mpsc::unbounded_channel();
        let credit = Arc::new(Credit {
            bytes: Mutex::new(WINDOW),
            more: Notify::new(),
        });
        let buffered = Arc::new(Mutex::new(0));
        let gone = watch::channel(false).0;
        let (pump_gone, drain_gone) = (gone.subscribe(), gone.subscribe());
        {
            let mut chans = lock(&self.chans);
            if *self.closed.borrow() || chans.contains_key(&id) {
                return;
            }
            chans.insert(
                id,
                Chan {
                    inbound,
                    buffered: buffered.clone(),
                    credit: credit.clone(),
                    gone,
                    tasks: 2,
                },
            );
        }
        let (r, w) = socket.into_split();
        tokio::spawn(pump(self.clone(), id, r, credit, pump_gone));
        tokio::spawn(drain(self.clone(), id, w, rx, buffered, drain_gone));
    }

    /// `Data` came for channel `id`.
    ///
    /// # Errors
    ///
    /// If the sender overran the window. Data for a channel that does not
    /// exist (any more) is dropped.
    pub(crate) fn data(&self, id: u64, bytes: Vec<u8>) -> Result<(), ProtoError> {
        let chans = lock(&self.chans);
        let Some(chan) = chans.get(&id) else {
            return Ok(());
        };
        if chan.inbound.is_closed() {
            // Its drain stopped (the local end is gone): dropped.
            return Ok(());
        }
        let mut buffered = lock(&chan.buffered);
        if *buffered + bytes.len() > WINDOW {
            return Err(ProtoError(format!(
                "channel {id} overran its window of {WINDOW} bytes"
            )));
        }
        *buffered += bytes.len();
        drop(buffered);
        let _ = chan.inbound.send(Some(bytes));
        Ok(())
    }

    /// `Eof` came for channel `id`.
    pub(crate) fn eof(&self, id: u64) {
        if let Some(chan) = lock(&self.chans).get(&id) {
            let _ = chan.inbound.send(None);
        }
    }

    /// `Close` came for channel `id`: its local end closes, both ways.
    pub(crate) fn close_channel(&self, id: u64) {
        if let Some(chan) = lock(&self.chans).get(&id) {
            chan.gone.send_replace(true);
        }
    }

    /// `Credit` came for channel `id`.
    ///
    /// # Errors
    ///
    /// If it raises the credit above the window. Credit for a channel that
    /// does not exist (any more) is dropped.
    pub(crate) fn credit(&self, id: u64, bytes: u32) -> Result<(), ProtoError> {
        let credit = match lock(&self.chans).get(&id) {
            Some(chan) => chan.credit.clone(),
            None => return Ok(()),
        };
        credit.grant(bytes as usize)
    }

    /// Ends every channel: their sockets close, here and (once the stream
    /// is gone) on the other side.
    pub(crate) fn close(&self) {
        self.closed.send_replace(true);
        lock(&self.chans).clear();
    }

    /// Open channels (for tests and diagnostics).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        lock(&self.chans).len()
    }

    fn finished(&self, id: u64) {
        let mut chans = lock(&self.chans);
        if let Some(chan) = chans.get_mut(&id) {
            chan.tasks -= 1;
            if chan.tasks == 0 {
                chans.remove(&id);
            }
        }
    }
}

/// Resolves once the connection is closed.
async fn closed(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|c| *c).await;
}

/// Local socket → `Data` frames, within the credit.
async fn pump(
    mux: Arc<Mux>,
    id: u64,
    mut r: OwnedReadHalf,
    credit: Arc<Credit>,
    mut gone: watch::Receiver<bool>,
) {
    let mut stop = mux.closed.subscribe();
    let mut buf = vec![0u8; MAX_DATA];
    loop {
        let n = tokio::select! {
            () = closed(&mut stop) => break,
            () = closed(&mut gone) => break,
            n = async {
                let avail = credit.wait().await.min(MAX_DATA);
                // A reset (the local peer died with unread bytes) ends the
                // stream like EOF.
                r.read(&mut buf[..avail]).await.unwrap_or(0)
            } => n,
        };
        if n == 0 {
            mux.out.send(&Frame::Eof { channel: id }).await;
            break;
        }
        credit.spend(n);
        let frame = Frame::Data {
            channel: id,
            bytes: &buf[..n],
        };
        if !mux.out.send(&frame).await {
            break;
        }
    }
    mux.finished(id);
}

/// `Data` received → local socket; credit back.
async fn drain(
    mux: Arc<Mux>,
    id: u64,
    mut w: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Option<Vec<u8>>>,
    buffered: Arc<Mutex<usize>>,
    mut gone: watch::Receiver<bool>,
) {
    let mut stop = mux.closed.subscribe();
    let mut owed = Owed::default();
    loop {
        let item = tokio::select! {
            () = closed(&mut stop) => break,
            () = closed(&mut gone) => break,
            item = rx.recv() => item,
        };
        let Some(Some(bytes)) = item else { break };
        let written = tokio::select! {
            () = closed(&mut stop) => break,
            () = closed(&mut gone) => break,
            r = w.write_all(&bytes) => r,
        };
        if written.is_err() {
            // Its reader is gone: the other side closes its end too.
            mux.out.send(&Frame::Close { channel: id }).await;
            break;
        }
        *lock(&buffered) -= bytes.len();
        if let Some(bytes) = owed.delivered(bytes.len())
            && !mux.out.send(&Frame::Credit { channel: id, bytes }).await
        {
            break;
        }
    }
    // Dropping the writing half shuts it down: the local reader sees EOF.
    rx.close();
    drop(w);
    mux.finished(id);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::stream::{OUT_QUEUE, Out, Owned as F};
    use crate::remote::wire;

    /// A mux whose frames land in a queue the test reads.
    fn mux() -> (Arc<Mux>, mpsc::Receiver<Out>) {
        let (tx, rx) = mpsc::channel(OUT_QUEUE);
        (Mux::new(Outbox(tx)), rx)
    }

    async fn next(rx: &mut mpsc::Receiver<Out>) -> Vec<u8> {
        match rx.recv().await {
            Some(Out::Frame(f)) => f,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    fn decoded(bytes: &[u8]) -> F {
        F::from(wire::decode(bytes, 0).unwrap().unwrap().0)
    }

    #[tokio::test]
    async fn a_sender_stops_at_the_window_until_credit_comes() {
        let (mux, mut rx) = mux();
        let (local, mut user) = UnixStream::pair().unwrap();
        mux.open(1, local);
        // The user writes more than a window; only a window's worth leaves.
        let big = vec![7u8; WINDOW + MAX_DATA];
        let writer = tokio::spawn(async move {
            user.write_all(&big).await.unwrap();
            user
        });
        let mut sent = 0;
        while sent < WINDOW {
            match decoded(&next(&mut rx).await) {
                F::Data { channel: 1, bytes } => sent += bytes.len(),
                f => panic!("unexpected {f:?}"),
            }
        }
        assert_eq!(sent, WINDOW);
        tokio::task::yield_now().await;
        assert!(rx.try_recv().is_err(), "sent past the window");
        mux.credit(1, MAX_DATA as u32).unwrap();
        let mut more = 0;
        while more < MAX_DATA {
            match decoded(&next(&mut rx).await) {
                F::Data { bytes, .. } => more += bytes.len(),
                f => panic!("unexpected {f:?}"),
            }
        }
        drop(writer.await.unwrap());
        // EOF is read like bytes: with credit.
        mux.credit(1, WINDOW as u32).unwrap();
        assert_eq!(decoded(&next(&mut rx).await), F::Eof { channel: 1 });
    }

    #[tokio::test]
    async fn a_receiver_refuses_more_than_the_window() {
        let (mux, _rx) = mux();
        let (local, _user) = UnixStream::pair().unwrap();
        mux.open(1, local);
        // Nobody reads `_user`'s side quickly enough to matter: the check
        // is on what is buffered plus what comes.
        for _ in 0..WINDOW / MAX_DATA {
            mux.data(1, vec![0; MAX_DATA]).unwrap();
        }
        let e = loop {
            match mux.data(1, vec![0; MAX_DATA]) {
                Err(e) => break e,
                // The drain delivered some already: keep pushing.
                Ok(()) => tokio::task::yield_now().await,
            }
        };
        assert!(e.0.contains("overran"), "{e}");
    }

    #[tokio::test]
    async fn credit_above_the_window_is_refused_and_unknown_channels_ignored() {
        let (mux, _rx) = mux();
        let (local, _user) = UnixStream::pair().unwrap();
        mux.open(3, local);
        assert!(mux.credit(3, 1).is_err());
        assert!(mux.credit(9, 1).is_ok());
        assert!(mux.data(9, vec![1]).is_ok());
        mux.eof(9);
    }

    #[test]
    fn owed_credit_is_granted_half_a_window_at_a_time() {
        let mut owed = Owed::default();
        assert_eq!(owed.delivered(5), None);
        for _ in 0..GRANT / MAX_DATA - 1 {
            assert_eq!(owed.delivered(MAX_DATA), None);
        }
        // The grant is everything owed, then the count starts again.
        assert_eq!(owed.delivered(MAX_DATA), Some((GRANT + 5) as u32));
        assert_eq!(owed.delivered(GRANT - 1), None);
        assert_eq!(owed.delivered(1), Some(GRANT as u32));
    }

    /// A sender that spends its window in frames of every size, against a
    /// receiver that delivers what it holds: the sender is never left
    /// without credit once the receiver has delivered everything, however
    /// the frames fall, and the grants stay few.
    #[test]
    fn batched_credit_never_stalls_a_sender() {
        for size in [1, 13, 1000, 4096, MAX_DATA - 1, MAX_DATA] {
            let (mut credit, mut held, mut owed) = (WINDOW, 0, Owed::default());
            let (mut sent, mut grants) = (0, 0);
            while sent < 8 * WINDOW {
                while credit > 0 {
                    let n = size.min(credit);
                    credit -= n;
                    held += n;
                    sent += n;
                    assert!(held <= WINDOW, "the receiver holds more than a window");
                }
                // Delivered frame by frame, as the drain does.
                while held > 0 {
                    let n = size.min(held);
                    held -= n;
                    if let Some(g) = owed.delivered(n) {
                        credit += g as usize;
                        grants += 1;
                    }
                }
                assert!(credit > 0, "frames of {size} bytes: the sender stalls");
            }
            assert!(grants <= sent / GRANT, "{grants} grants for {sent} bytes");
        }
    }

    #[tokio::test]
    async fn credit_comes_back_in_half_windows_not_per_frame() {
        let (mux, mut rx) = mux();
        let (local, mut user) = UnixStream::pair().unwrap();
        mux.open(2, local);
        let mut got = vec![0u8; MAX_DATA];
        for _ in 0..WINDOW / MAX_DATA {
            mux.data(2, vec![1; MAX_DATA]).unwrap();
            user.read_exact(&mut got).await.unwrap();
        }
        for _ in 0..WINDOW / GRANT {
            assert_eq!(
                decoded(&next(&mut rx).await),
                F::Credit {
                    channel: 2,
                    bytes: GRANT as u32
                }
            );
        }
        // A small message, delivered: no grant of its own (the drain
        // finished its turn before the bytes could be read).
        mux.data(2, b"ping".to_vec()).unwrap();
        user.read_exact(&mut got[..4]).await.unwrap();
        assert!(rx.try_recv().is_err(), "a grant for four bytes");
    }

    #[tokio::test]
    async fn data_is_delivered_and_eof_closes() {
        let (mux, mut rx) = mux();
        let (local, mut user) = UnixStream::pair().unwrap();
        mux.open(5, local);
        mux.data(5, b"hello".to_vec()).unwrap();
        let mut got = [0u8; 5];
        user.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
        mux.eof(5);
        let mut rest = Vec::new();
        user.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        // The user closes its side: the pump says Eof and the channel goes.
        drop(user);
        assert_eq!(decoded(&next(&mut rx).await), F::Eof { channel: 5 });
        for _ in 0..100 {
            if mux.len() == 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(mux.len(), 0);
    }

    #[tokio::test]
    async fn a_stalled_channel_does_not_stall_another() {
        let (mux, _rx) = mux();
        let (stalled, _never_read) = UnixStream::pair().unwrap();
        let (live, mut user) = UnixStream::pair().unwrap();
        mux.open(1, stalled);
        mux.open(2, live);
        // Channel 1 gets a full window nobody reads.
        for _ in 0..WINDOW / MAX_DATA {
            mux.data(1, vec![0; MAX_DATA]).unwrap();
        }
        mux.data(2, b"ping".to_vec()).unwrap();
        let mut got = [0u8; 4];
        user.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
    }

    #[tokio::test]
    async fn a_gone_reader_closes_the_channel_on_the_other_side() {
        let (mux, mut rx) = mux();
        let (local, user) = UnixStream::pair().unwrap();
        mux.open(4, local);
        drop(user);
        for _ in 0..3 {
            mux.data(4, vec![1; MAX_DATA]).unwrap();
        }
        // The pump sees EOF, the drain cannot write: Eof and Close, in
        // either order; what comes after is dropped, not an error.
        let mut got = vec![decoded(&next(&mut rx).await), decoded(&next(&mut rx).await)];
        got.sort_by_key(|f| matches!(f, F::Close { .. }));
        assert_eq!(got, [F::Eof { channel: 4 }, F::Close { channel: 4 }]);
        for _ in 0..20 {
            mux.data(4, vec![1; MAX_DATA]).unwrap();
        }
    }

    #[tokio::test]
    async fn close_closes_the_local_end_both_ways() {
        let (mux, _rx) = mux();
        let (local, mut user) = UnixStream::pair().unwrap();
        mux.open(6, local);
        mux.close_channel(6);
        let mut rest = Vec::new();
        user.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        // The pump's half is gone too: writing fails once the socket is
        // closed (the first write may still be buffered).
        let mut failed = false;
        for _ in 0..100 {
            if user.write_all(&[0; 1024]).await.is_err() {
                failed = true;
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(failed, "the local end is still open for writing");
    }
}
