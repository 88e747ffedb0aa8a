//! The remote side: this program started by a [`Connector`](super::Connector)
//! with [`FLAG`] as its only argument.
//!
//! [`init`](crate::init) sees the flag and calls [`main`], which, still
//! single-threaded, forks a local template (exactly as an early template is
//! forked, with the same checks), then builds a `current_thread` runtime and
//! relays between its standard input and output (the stream to the parent)
//! and that template's control socket. It forks nothing else: the template
//! forks the workers, on this host, and reaps them.
//!
//! - Requests from the parent go to the template, with the descriptors
//!   they need made here: each spawn's socket (one end of a new socket
//!   pair, the other end becoming the worker's channel; or, when the
//!   parent announced it, the connection that came for it through the
//!   forwarded socket: see `forward.rs`) and, for each slot
//!   descriptor, one end of a new `SOCK_SEQPACKET` pair whose other end is
//!   closed. Requests that would need descriptors from the parent, a new
//!   template, or a hand-over are refused.
//! - Replies from the template go to the parent as they are.
//! - Standard output is the stream, so the template (and every worker)
//!   gets this process's standard error as its standard output: what they
//!   print does not corrupt the stream.
//!
//! Lifetimes: at EOF of its input (the parent is gone, or dropped the
//! template), or when it heard nothing from the parent for the keepalive
//! timeout the parent's pings carry (a partition: see `keepalive.rs`; it
//! answers each ping), the relay closes the template's control socket;
//! the template kills and reaps its workers and exits, as a local template
//! does when its parent goes; this process reaps it and exits. If this
//! process is killed, the template sees EOF the same way.

use std::collections::HashSet;
use std::io::Write as _;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, watch};

use super::ctrl::Ctrl;
use super::forward::{self, Listener};
use super::hello::{Hello, Mismatch};
use super::keepalive::{self, Heard, Stamped};
use super::mux::Mux;
use super::stream::{BoxWrite, FrameReader, OUT_QUEUE, Outbox, Owned, ReadError, write_loop};
use super::wire::{self, Frame};
use crate::proto::{self, Assembler, Op, Reader, Reply, Request, SpawnFailure, Then, Writer};
use crate::sys::{self, Forked, Forker};
use crate::template::serve;

/// The argument that makes [`init`](crate::init) start the remote side.
pub(crate) const FLAG: &str = "--fork-core-remote-template";

/// Exit codes of the remote side.
const EXIT_SETUP: i32 = 2;
const EXIT_MISMATCH: i32 = 3;
const EXIT_PROTOCOL: i32 = 4;
/// It heard nothing from the parent for the keepalive timeout.
const EXIT_LOST: i32 = 5;

/// How long the template may take to exit once its socket is closed.
const TEMPLATE_GRACE: Duration = Duration::from_secs(2);

/// Whether this process was started as the remote side: [`FLAG`] is its
/// only argument.
pub(crate) fn requested() -> bool {
    let mut args = std::env::args_os().skip(1);
    args.next().is_some_and(|a| a == FLAG) && args.next().is_none()
}

fn die(what: &str, e: impl std::fmt::Display) -> ! {
    let _ = writeln!(std::io::stderr(), "fork-core remote template: {what}: {e}");
    sys::exit_now(EXIT_SETUP)
}

/// Runs the remote side. Never returns.
pub(crate) fn main() -> ! {
    let forker = Forker::new().unwrap_or_else(|e| die("cannot start", e));
    let (input, output) =
        sys::take_stdio().unwrap_or_else(|e| die("cannot take over its standard streams", e));
    let (ours, theirs) =
        sys::seqpacket_pair().unwrap_or_else(|e| die("cannot create the template's socket", e));
    sys::flush_stdio();
    match forker.fork() {
        Ok(Forked::Child) => {
            drop((ours, input, output));
            serve::early_main(theirs)
        }
        Ok(Forked::Parent { child }) => {
            drop(theirs);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap_or_else(|e| die("cannot build its runtime", e));
            let code = rt.block_on(relay(input, output, ours, child));
            sys::exit_now(code)
        }
        Err(e) => die("cannot fork the template", e),
    }
}

/// Greets, checks the parent's greeting, relays until EOF; the exit code.
async fn relay(input: OwnedFd, output: OwnedFd, ctrl: OwnedFd, template: i32) -> i32 {
    let code = relay_inner(input, output, ctrl, template).await;
    // The template's socket is closed by now: it ends its workers and exits.
    let _ = tokio::time::timeout(TEMPLATE_GRACE, crate::template::conn::reap_child(template)).await;
    code
}

async fn relay_inner(input: OwnedFd, output: OwnedFd, ctrl: OwnedFd, template: i32) -> i32 {
    let streams = (|| {
        sys::set_nonblocking(input.as_fd(), true)?;
        sys::set_nonblocking(output.as_fd(), true)?;
        Ok::<_, std::io::Error>((
            pipe::Receiver::from_owned_fd_unchecked(input)?,
            pipe::Sender::from_owned_fd_unchecked(output)?,
            Ctrl::new(ctrl)?,
        ))
    })();
    let (reader, writer, ctrl) = match streams {
        Ok(s) => s,
        Err(e) => die("cannot use its standard streams", e),
    };
    let heard = Heard::new();
    let reader = Stamped::new(reader, heard.clone());
    let mut frames = FrameReader::new(Box::new(reader), proto::DEFAULT_MAX_MESSAGE);
    let mut writer: BoxWrite = Box::new(writer);
    let ours = Hello::ours(template as u32, false, false);
    let greeting = wire::to_vec(&Frame::Hello(&ours.encode()));
    if writer.write_all(&greeting).await.is_err() || writer.flush().await.is_err() {
        return 0;
    }
    let listen = match frames.next().await {
        Ok(Some(Owned::Hello(payload))) => match Hello::decode(&payload) {
            Ok(theirs) => {
                if let Err(m) = ours.check(&theirs) {
                    let e = match m {
                        Mismatch::Version { ours, theirs } => {
                            format!("protocol {theirs:#06x} in the parent, {ours:#06x} here")
                        }
                        Mismatch::Build { ours, theirs } => {
                            format!("build {theirs} in the parent, {ours} here")
                        }
                    };
                    let _ = writeln!(std::io::stderr(), "fork-core remote template: {e}");
                    return EXIT_MISMATCH;
                }
                theirs.listen
            }
            Err(e) => {
                let _ = writeln!(std::io::stderr(), "fork-core remote template: {e}");
                return EXIT_PROTOCOL;
            }
        },
        // The parent went (or refused our greeting) before greeting.
        Ok(None) | Err(ReadError::Io(_)) => return 0,
        Ok(Some(_)) | Err(ReadError::Protocol(_)) => return EXIT_PROTOCOL,
    };

    let (tx, rx) = mpsc::channel(OUT_QUEUE);
    let out = Outbox(tx);
    let writer = tokio::spawn(write_loop(rx, writer));
    let mux = Mux::new(out.clone());
    let ctrl = Arc::new(ctrl);
    let mut streams = Streams::default();
    if listen {
        // Before any reply: the parent reads this answer first.
        streams.listen(&out).await;
    }
    let mut replies = tokio::spawn(forward_replies(ctrl.clone(), out.clone()));
    let (timeout, timeout_rx) = watch::channel(keepalive::FIRST_PING);
    let code = tokio::select! {
        r = read_requests(&mut frames, &ctrl, &mux, &out, &timeout, &mut streams) => match r {
            Ok(()) => 0,
            Err(message) => {
                let _ = writeln!(
                    std::io::stderr(),
                    "fork-core remote template: malformed data from the parent: {message}"
                );
                EXIT_PROTOCOL
            }
        },
        // The template is gone (it failed, or was killed): so is this side.
        _ = &mut replies => 0,
        silent = keepalive::until_lost(heard, timeout_rx) => {
            let _ = writeln!(
                std::io::stderr(),
                "fork-core remote template: heard nothing from the parent for {:.1} s; \
                 ending (its workers too)",
                silent.as_secs_f64()
            );
            EXIT_LOST
        }
    };
    mux.close();
    drop(streams);
    replies.abort();
    let _ = replies.await;
    // The last reference to the template's socket: it sees EOF.
    drop(ctrl);
    // Bounded: on a lost connection the queue may be full for good.
    let _ = tokio::time::timeout(Duration::from_secs(1), out.close()).await;
    drop(out);
    let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
    code
}

/// Template → parent: each reply message as it is.
async fn forward_replies(ctrl: Arc<Ctrl>, out: Outbox) {
    let mut asm = Assembler::new(proto::DEFAULT_MAX_MESSAGE);
    while let Ok(Some((msg, _fds))) = ctrl.recv(&mut asm).await {
        if !out.send(&Frame::Control(&msg)).await {
            break;
        }
    }
}

/// Where workers' streams come from besides channels: the socket the
/// parent reaches through its connector's forward (`forward.rs`), once it
/// asked for it, and the spawns announced as coming that way.
#[derive(Default)]
struct Streams {
    listener: Option<Listener>,
    forwarded: HashSet<u64>,
}

impl Streams {
    /// Listens, and says where (or, empty, that it cannot): what the
    /// parent's greeting asked for.
    async fn listen(&mut self, out: &Outbox) {
        match Listener::bind() {
            Ok(listener) => {
                let path = listener.path().as_os_str().as_bytes().to_vec();
                self.listener = Some(listener);
                out.send(&Frame::Listening(&path)).await;
            }
            Err(e) => {
                let _ = writeln!(
                    std::io::stderr(),
                    "fork-core remote template: cannot listen for workers' streams: {e}"
                );
                out.send(&Frame::Listening(&[])).await;
            }
        }
    }

    /// The worker's socket of spawn `id` if it was announced as forwarded:
    /// `Ok(None)` if not, `Err` if its connection did not come within
    /// `ARRIVAL` or half the keepalive `timeout`, whichever is shorter
    /// (nothing is read from the parent meanwhile: a longer wait would
    /// count as the parent's silence). Meanwhile it sends a `Pong` every
    /// 100 ms, so that the parent, whose pings wait unread, does not count
    /// this side's silence either.
    async fn take(
        &mut self,
        id: u64,
        timeout: Duration,
        out: &Outbox,
    ) -> Result<Option<OwnedFd>, String> {
        if !self.forwarded.remove(&id) {
            return Ok(None);
        }
        let Some(listener) = &self.listener else {
            return Err("its stream was announced as forwarded, but nothing listens".into());
        };
        let arrived = listener.take(id, forward::ARRIVAL.min(timeout / 2));
        tokio::pin!(arrived);
        let mut alive = tokio::time::interval(Duration::from_millis(100));
        let arrived = loop {
            tokio::select! {
                arrived = &mut arrived => break arrived,
                _ = alive.tick() => {
                    out.try_send(&Frame::Pong);
                }
            }
        };
        match arrived {
            Some(fd) => Ok(Some(fd)),
            None => Err("its stream did not come through the forwarded socket in time".into()),
        }
    }
}

/// Parent → template and channels, until EOF (`Ok`) or a protocol error.
async fn read_requests(
    frames: &mut FrameReader,
    ctrl: &Ctrl,
    mux: &Arc<Mux>,
    out: &Outbox,
    timeout: &watch::Sender<Duration>,
    streams: &mut Streams,
) -> Result<(), String> {
    loop {
        let Some(frame) = frames.next_or_end().await? else {
            return Ok(());
        };
        match frame {
            Owned::Control(msg) => {
                let timeout = *timeout.borrow();
                if !control(&msg, ctrl, mux, out, streams, timeout).await? {
                    // The template is gone.
                    return Ok(());
                }
            }
            Owned::Data { channel, bytes } => mux.data(channel, bytes).map_err(|e| e.0)?,
            Owned::Eof { channel } => mux.eof(channel),
            Owned::Close { channel } => mux.close_channel(channel),
            Owned::Credit { channel, bytes } => mux.credit(channel, bytes).map_err(|e| e.0)?,
            Owned::Ping { timeout_ms } => {
                let ms = Duration::from_millis(timeout_ms.into());
                timeout.send_if_modified(|t| std::mem::replace(t, ms) != ms);
                // Never waits: a full queue shows life anyway.
                out.try_send(&Frame::Pong);
            }
            Owned::Forwarded { channel } => {
                if streams.listener.is_none() || !streams.forwarded.insert(channel) {
                    return Err(format!(
                        "spawn {channel} announced as forwarded out of turn"
                    ));
                }
            }
            Owned::Pong => return Err("a pong from the parent".into()),
            Owned::Listening(_) => return Err("a listening socket from the parent".into()),
            Owned::Hello(_) => return Err("a second greeting".into()),
        }
    }
}

/// The descriptors a request needs, made here, or why it is refused.
struct Made {
    fds: Vec<OwnedFd>,
    /// The spawn's channel: its id and the near end of the worker's socket.
    channel: Option<(u64, StdUnixStream)>,
}

/// `forwarded`: the worker's socket of a spawn, when it came through the
/// forwarded socket (no channel then).
fn make_fds(request: &Request, forwarded: Option<OwnedFd>) -> Result<Made, String> {
    let (ops, spawn) = match request {
        Request::Prepare(ops) => (ops, None),
        Request::Spawn { id, ops, then, .. } => {
            if *then == Then::Template {
                return Err("a template cannot be forked from a remote template".into());
            }
            (ops, Some(*id))
        }
        Request::Release { .. } => return Err("a remote template cannot be handed over".into()),
        Request::Kill { .. } | Request::Ping { .. } => {
            return Ok(Made {
                fds: Vec::new(),
                channel: None,
            });
        }
    };
    if ops.iter().any(|op| matches!(op, Op::Fd)) {
        return Err("descriptors cannot be passed to a remote template".into());
    }
    let mut fds = Vec::new();
    let mut channel = None;
    if let Some(id) = spawn {
        if let Some(socket) = forwarded {
            fds.push(socket);
        } else {
            let (near, far) = StdUnixStream::pair().map_err(|e| e.to_string())?;
            fds.push(OwnedFd::from(far));
            channel = Some((id, near));
        }
    }
    for op in ops {
        if matches!(op, Op::SlotFd) {
            // A slot's descriptor stays behind; the process gets a socket
            // whose peer is closed in its place.
            let (kept, _closed) = sys::seqpacket_pair().map_err(|e| e.to_string())?;
            fds.push(kept);
        }
    }
    Ok(Made { fds, channel })
}

/// Handles one control message from the parent: forwards what the template
/// can do, with the descriptors made here, and answers what it cannot.
/// `Ok(false)` if the template is gone.
async fn control(
    msg: &[u8],
    ctrl: &Ctrl,
    mux: &Arc<Mux>,
    out: &Outbox,
    streams: &mut Streams,
    timeout: Duration,
) -> Result<bool, String> {
    let mut reader = Reader::new(msg);
    let mut forward = Writer::default();
    let mut refused = Writer::default();
    let mut fds = Vec::new();
    let mut channels = Vec::new();
    while !reader.is_empty() {
        let request = reader.request().map_err(|e| e.0)?;
        let forwarded = match &request {
            Request::Spawn { id, .. } => streams.take(*id, timeout, out).await,
            _ => Ok(None),
        };
        match forwarded.and_then(|socket| make_fds(&request, socket)) {
            Ok(made) => {
                fds.extend(made.fds);
                channels.extend(made.channel);
                forward.request(&request);
            }
            Err(message) => match request {
                Request::Spawn { id, .. } => refused.reply(&Reply::SpawnFailed {
                    id,
                    failure: SpawnFailure::BadRequest(message),
                }),
                _ => refused.reply(&Reply::ProtocolError { message }),
            },
        }
    }
    // Channels first: the parent's bytes for them follow this message.
    for (id, near) in channels {
        let opened = near
            .set_nonblocking(true)
            .and_then(|()| tokio::net::UnixStream::from_std(near));
        if let Ok(stream) = opened {
            mux.open(id, stream);
        }
    }
    if !forward.buf.is_empty() && ctrl.send(&forward.buf, fds).await.is_err() {
        return Ok(false);
    }
    if !refused.buf.is_empty() {
        out.send(&Frame::Control(&refused.buf)).await;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_needs_descriptors_from_the_parent_is_refused() {
        let spawn = |ops, then| Request::Spawn {
            id: 1,
            ack: false,
            ops,
            then,
        };
        assert!(make_fds(&spawn(vec![Op::Fd], Then::Run("e".into())), None).is_err());
        assert!(make_fds(&spawn(vec![], Then::Template), None).is_err());
        assert!(make_fds(&Request::Release { id: 1 }, None).is_err());
        assert!(make_fds(&Request::Prepare(vec![Op::Fd]), None).is_err());
        let made = make_fds(
            &spawn(
                vec![Op::SlotFd, Op::Arg(vec![]), Op::SlotFd],
                Then::Run("e".into()),
            ),
            None,
        )
        .unwrap();
        // The worker's socket and two stand-ins for the slot's descriptors.
        assert_eq!(made.fds.len(), 3);
        assert_eq!(made.channel.map(|(id, _)| id), Some(1));
        assert!(
            make_fds(&Request::Ping { id: 2 }, None)
                .unwrap()
                .fds
                .is_empty()
        );
        // A forwarded stream is the worker's socket itself: no channel.
        let (socket, _peer) = StdUnixStream::pair().unwrap();
        let made = make_fds(&spawn(vec![], Then::Run("e".into())), Some(socket.into())).unwrap();
        assert_eq!(made.fds.len(), 1);
        assert!(made.channel.is_none());
    }
}
