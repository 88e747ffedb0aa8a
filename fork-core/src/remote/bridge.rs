//! The parent's side of a remote template: a relay between the local
//! control socket of the template's [`Conn`](crate::template::conn) (which
//! works exactly as for a local template) and the byte stream.
//!
//! Requests from the `Conn` go out as `Control` frames; the socket each
//! spawn request carries (the far end of the socket pair whose near end
//! becomes the [`Worker`](crate::Worker)'s stream) becomes a channel of the
//! [`Mux`], unless it is a connection through the connector's forward
//! (`forward.rs`), which carries the stream itself; any other descriptor
//! is closed here (descriptors cannot cross:
//! [`Fork::fd`](crate::Fork::fd) refuses them before, and a slot's are
//! replaced on the other side). Replies come back as `Control` frames and
//! go to the `Conn` as they are; it decodes and checks them.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::connector::{Forward, Session};
use super::ctrl::Ctrl;
use super::forward;
use super::keepalive::{self, Heard, Knobs};
use super::mux::Mux;
use super::stream::{BoxWrite, FrameReader, OUT_QUEUE, Outbox, Owned, ReadError, write_loop};
use super::wire::Frame;
use crate::error::{Failure, LostCause};
use crate::proto::{self, Assembler, Reader, Request, Then};
use crate::template::conn::{Conn, RemoteEnd};

/// How long the other side may take to end after its input was closed, and
/// to be reaped after it was killed.
const GRACE: Duration = Duration::from_secs(5);

/// The transport of a remote template, as the builder hands it on.
pub(crate) struct Stream {
    pub(crate) frames: FrameReader,
    pub(crate) writer: BoxWrite,
    pub(crate) session: Box<dyn Session>,
    /// Stamped by `frames`' reader whenever bytes come.
    pub(crate) heard: Heard,
    /// The forward workers' streams take instead of channels, if any
    /// (`forward.rs`).
    pub(crate) forward: Option<Box<dyn Forward>>,
}

/// What the relay needs to notice a lost connection and name it.
pub(crate) struct Loss {
    pub(crate) host: String,
    pub(crate) keepalive: Knobs,
}

/// How the relay's reading ended.
#[derive(Debug)]
enum End {
    /// The stream ended, or this side shut it down.
    Eof,
    /// Reading failed.
    Io(io::Error),
    /// The other side broke the protocol: what was wrong.
    Protocol(String),
    /// The `Conn` stopped reading (it found a reply malformed).
    ConnGone,
    /// The keepalive found the connection lost, or writing failed.
    Lost(LostCause),
}

/// Runs the relay until the stream ends, this side shuts it down, or the
/// connection is lost (EOF, an I/O error or the keepalive timeout before
/// this side shut it down: before the `Conn` closed its end, whether or
/// not what it sent before was relayed yet); then reports the transport's
/// exit status on `status` and closes `conn_side` (the `Conn` sees EOF). A
/// loss is reported at once instead: `status` gets the
/// [`Failure::RemoteLost`] and `conn_side` is shut down for writing, so the
/// `Conn` reads what came before, then EOF, and fails with the loss.
pub(crate) async fn run(
    conn_side: OwnedFd,
    stream: Stream,
    loss: Loss,
    conn: Weak<Conn>,
    status: oneshot::Sender<RemoteEnd>,
) {
    let Stream {
        frames,
        writer,
        mut session,
        heard,
        mut forward,
    } = stream;
    let ctrl = match Ctrl::new(conn_side) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            fail(&conn, format!("cannot relay to the remote template: {e}"));
            end_session(&mut session, Some(status)).await;
            return;
        }
    };
    let (tx, rx) = mpsc::channel(OUT_QUEUE);
    let out = Outbox(tx);
    let (write_failed_tx, mut write_failed) = oneshot::channel();
    let writer = tokio::spawn(async move {
        if let Err(e) = write_loop(rx, writer).await {
            let _ = write_failed_tx.send(e);
        }
    });
    let mux = Mux::new(out.clone());
    let (closed_tx, mut closed_rx) = oneshot::channel();
    let pings = keepalive::ping_until_lost(loss.keepalive, heard, out.clone());
    tokio::pin!(pings);
    let forwarded = forward.as_ref().map(|f| f.path().to_path_buf());
    let requests = tokio::spawn(forward_requests(
        ctrl.clone(),
        mux.clone(),
        out,
        closed_tx,
        forwarded,
    ));
    let reading = read_replies(frames, &ctrl, &mux);
    tokio::pin!(reading);
    let end = tokio::select! {
        // Our shutdown first: an EOF that follows it is not a loss.
        biased;
        Ok(()) = &mut closed_rx => {
            // The handle closed: the other side ends on EOF of its input;
            // if it does not within the grace period, end the transport.
            // Nothing is lost from here on.
            let end = match tokio::time::timeout(GRACE, &mut reading).await {
                Ok(end) => end,
                Err(_) => {
                    let _ = session.start_kill();
                    tokio::time::timeout(GRACE, &mut reading).await.unwrap_or(End::Eof)
                }
            };
            match end {
                End::Protocol(m) => End::Protocol(m),
                _ => End::ConnGone,
            }
        }
        // The `Conn` may have closed while `forward_requests` is still
        // behind what was queued before: its socket says so at once, and
        // an end that follows our shutdown is not a loss.
        end = &mut reading => match end {
            End::Eof | End::Io(_) if ctrl.peer_done() => End::ConnGone,
            end => end,
        },
        silent = &mut pings => End::Lost(LostCause::Silent(silent)),
        Ok(e) = &mut write_failed => End::Lost(LostCause::Io(Arc::new(e))),
    };
    let cause = match end {
        End::Protocol(message) => {
            fail(
                &conn,
                format!("malformed data from the remote template: {message}"),
            );
            None
        }
        End::ConnGone => None,
        End::Eof => Some(LostCause::Eof),
        End::Io(e) => Some(LostCause::Io(Arc::new(e))),
        End::Lost(cause) => Some(cause),
    };
    if let (Some(LostCause::Silent(_)), Some(forward)) = (&cause, &mut forward) {
        // The transport delivers nothing: the workers' streams through it
        // would wait for it forever.
        forward.cut();
    }
    let status = match cause {
        Some(cause) => {
            tracing::debug!("lost the remote template on {}: {cause}", loss.host);
            let _ = status.send(Err(Failure::RemoteLost {
                host: loss.host,
                cause,
            }));
            // The `Conn` reads what came before, then EOF: it fails now.
            ctrl.shutdown_write();
            None
        }
        None => Some(status),
    };
    // Every channel ends: the workers' streams here see EOF at once.
    mux.close();
    requests.abort();
    let _ = requests.await;
    // The stream is over: closing our side ends the other side if it still
    // reads (a lost one, once it reads again).
    writer.abort();
    let _ = writer.await;
    end_session(&mut session, status).await;
    // `ctrl` drops here: the `Conn` reads EOF and takes the status.
}

fn fail(conn: &Weak<Conn>, message: String) {
    if let Some(conn) = conn.upgrade() {
        conn.fail(Failure::Protocol(message));
    }
}

/// Waits for the transport to end (killing it after the grace period) and
/// sends its exit status, unless a loss was sent instead.
async fn end_session(session: &mut Box<dyn Session>, status: Option<oneshot::Sender<RemoteEnd>>) {
    let ended = match tokio::time::timeout(GRACE, session.wait()).await {
        Ok(ended) => ended,
        Err(_) => {
            let _ = session.start_kill();
            tokio::time::timeout(GRACE, session.wait())
                .await
                .unwrap_or(Ok(None))
        }
    };
    if let Some(status) = status {
        let _ = status.send(Ok(ended.ok().flatten().map(ExitStatusExt::into_raw)));
    }
}

/// Stream → `Conn` and channels, until the stream ends or breaks, or the
/// `Conn` stops reading.
async fn read_replies(mut frames: FrameReader, ctrl: &Ctrl, mux: &Mux) -> End {
    loop {
        let frame = match frames.next().await {
            Ok(Some(frame)) => frame,
            Ok(None) => return End::Eof,
            Err(ReadError::Io(e)) => return End::Io(e),
            Err(ReadError::Protocol(e)) => return End::Protocol(e.0),
        };
        let applied = match frame {
            Owned::Control(msg) => {
                if ctrl.send(&msg, Vec::new()).await.is_err() {
                    // The `Conn` stopped reading (it found the message
                    // malformed, and says so itself).
                    return End::ConnGone;
                }
                Ok(())
            }
            Owned::Data { channel, bytes } => mux.data(channel, bytes),
            Owned::Eof { channel } => {
                mux.eof(channel);
                Ok(())
            }
            Owned::Close { channel } => {
                mux.close_channel(channel);
                Ok(())
            }
            Owned::Credit { channel, bytes } => mux.credit(channel, bytes),
            // Life, which the reader stamped already.
            Owned::Pong => Ok(()),
            Owned::Ping { .. } => return End::Protocol("a ping from the remote side".into()),
            Owned::Listening(_) => {
                return End::Protocol("a listening socket out of turn".into());
            }
            Owned::Forwarded { .. } => {
                return End::Protocol("a parent's frame from the remote side".into());
            }
            Owned::Hello(_) => return End::Protocol("a second greeting".into()),
        };
        if let Err(e) = applied {
            return End::Protocol(e.0);
        }
    }
}

/// `Conn` → stream: forwards each request message, and opens a channel for
/// each spawn's socket once the request is queued (so that the other side
/// knows the channel before its first bytes). A spawn's socket that is a
/// connection through the forward at `forwarded` gets its header instead,
/// and the other side a `Forwarded` frame before the request.
async fn forward_requests(
    ctrl: Arc<Ctrl>,
    mux: Arc<Mux>,
    out: Outbox,
    closed: oneshot::Sender<()>,
    forwarded: Option<PathBuf>,
) {
    let mut asm = Assembler::new(proto::DEFAULT_MAX_MESSAGE);
    'requests: while let Ok(Some((msg, fds))) = ctrl.recv(&mut asm).await {
        let mut sockets = spawn_sockets(&msg, fds);
        if let Some(path) = &forwarded {
            let mut channels = Vec::with_capacity(sockets.len());
            for (id, socket) in sockets {
                if !forward::is_through(&socket, path) {
                    channels.push((id, socket));
                    continue;
                }
                // On failure the other side never gets this connection:
                // the spawn fails there once it gave up waiting for it.
                if let Err(e) = forward::write_header(&socket, id) {
                    tracing::warn!("cannot start a remote worker's stream: {e}");
                }
                if !out.send(&Frame::Forwarded { channel: id }).await {
                    break 'requests;
                }
            }
            sockets = channels;
        }
        if !out.send(&Frame::Control(&msg)).await {
            break;
        }
        for (id, socket) in sockets {
            match stream(socket) {
                Ok(s) => mux.open(id, s),
                // The socket is closed: the worker sees EOF.
                Err(e) => tracing::warn!("cannot relay a remote worker's stream: {e}"),
            }
        }
    }
    // EOF: every handle to the template is gone. From now on an EOF is
    // ours, not a loss: say so first, then close the stream's writing side
    // once what was queued is out; the other side ends.
    let _ = closed.send(());
    out.close().await;
}

/// The socket of each spawn request of a message, by request id; every
/// other descriptor is closed.
pub(crate) fn spawn_sockets<F>(msg: &[u8], fds: Vec<F>) -> Vec<(u64, F)> {
    let mut fds = fds.into_iter();
    let mut sockets = Vec::new();
    let mut reader = Reader::new(msg);
    while !reader.is_empty() {
        let Ok(request) = reader.request() else { break };
        let mut own = fds.by_ref().take(proto::fds_needed(&request));
        if let Request::Spawn { id, then, .. } = &request
            && *then != Then::Template
            && let Some(socket) = own.next()
        {
            sockets.push((*id, socket));
        }
        own.for_each(drop);
    }
    sockets
}

fn stream(fd: OwnedFd) -> std::io::Result<tokio::net::UnixStream> {
    let s = std::os::unix::net::UnixStream::from(fd);
    s.set_nonblocking(true)?;
    tokio::net::UnixStream::from_std(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Op, Writer};
    use crate::remote::connector::BoxFuture;
    use crate::sys;
    use tokio::io::DuplexStream;

    #[test]
    fn each_spawn_keeps_its_socket_and_closes_the_rest() {
        let mut w = Writer::default();
        w.request(&Request::Prepare(vec![Op::Arg(vec![1])]));
        w.request(&Request::Spawn {
            id: 7,
            ack: false,
            ops: vec![Op::SlotData(vec![]), Op::SlotFd, Op::SlotFd],
            then: Then::Run("e".into()),
        });
        w.request(&Request::Ping { id: 8 });
        w.request(&Request::Spawn {
            id: 9,
            ack: true,
            ops: vec![],
            then: Then::Run("e".into()),
        });
        let got = spawn_sockets(&w.buf, vec!["s7", "slot", "slot", "s9"]);
        assert_eq!(got, [(7, "s7"), (9, "s9")]);
    }

    /// A transport that has ended with status 0 by the time it is waited
    /// for.
    #[derive(Debug)]
    struct Ended;

    impl Session for Ended {
        fn start_kill(&mut self) -> io::Result<()> {
            Ok(())
        }

        fn wait(&mut self) -> BoxFuture<'_, io::Result<Option<std::process::ExitStatus>>> {
            Box::pin(async { Ok(Some(std::process::ExitStatus::from_raw(0))) })
        }
    }

    /// A relay whose remote side never reads: its writer stalls at once,
    /// so `forward_requests` soon waits for room in the queue.
    struct Stalled {
        /// The `Conn`'s end of the control socket.
        conn: Ctrl,
        /// The remote side's output: dropped, it is the stream's EOF.
        remote_out: DuplexStream,
        /// The remote side's input, never read.
        _remote_in: DuplexStream,
        status: oneshot::Receiver<RemoteEnd>,
    }

    async fn stalled_relay() -> Stalled {
        let (conn_end, relay_end) = sys::seqpacket_pair().unwrap();
        let (from_remote, remote_out) = tokio::io::duplex(1024);
        let (to_remote, remote_in) = tokio::io::duplex(64);
        let stream = Stream {
            frames: FrameReader::new(Box::new(from_remote), proto::DEFAULT_MAX_MESSAGE),
            writer: Box::new(to_remote),
            session: Box::new(Ended),
            heard: Heard::new(),
            forward: None,
        };
        let hour = Duration::from_secs(3600);
        let loss = Loss {
            host: "stalled".into(),
            keepalive: Knobs {
                interval: Some(hour),
                timeout: 2 * hour,
            },
        };
        let (status_tx, status) = oneshot::channel();
        tokio::spawn(run(relay_end, stream, loss, Weak::new(), status_tx));
        let conn = Ctrl::new(conn_end).unwrap();
        // More requests than the queue to the stalled writer holds: the
        // last ones wait in `forward_requests` and in the socket.
        for id in 0..2 * OUT_QUEUE as u64 {
            let mut w = Writer::default();
            w.request(&Request::Ping { id });
            conn.send(&w.buf, Vec::new()).await.unwrap();
        }
        Stalled {
            conn,
            remote_out,
            _remote_in: remote_in,
            status,
        }
    }

    /// The `Conn` shut down (our shutdown) while `forward_requests` was
    /// still behind requests queued before it; the remote side's EOF came
    /// first. That EOF is ours: the status, not a loss.
    #[tokio::test]
    async fn an_eof_after_our_shutdown_is_not_a_loss_however_far_behind_the_relay_is() {
        let relay = stalled_relay().await;
        relay.conn.shutdown_write();
        drop(relay.remote_out);
        let end = tokio::time::timeout(2 * GRACE, relay.status)
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(end, Ok(Some(0))), "{end:?}");
    }

    /// The same EOF without our shutdown is a loss, reported at once.
    #[tokio::test]
    async fn an_eof_before_our_shutdown_is_a_loss_at_once() {
        let relay = stalled_relay().await;
        drop(relay.remote_out);
        let end = tokio::time::timeout(GRACE / 5, relay.status)
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(
                &end,
                Err(Failure::RemoteLost { host, cause: LostCause::Eof }) if host == "stalled"
            ),
            "{end:?}"
        );
    }
}
