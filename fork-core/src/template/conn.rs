//! The parent's side of a template's control socket.
//!
//! Requests are sent from the caller's task when the socket has room, and
//! queued for a writer task otherwise, so ordering holds and nobody blocks.
//! One reader task per template receives the replies (batched by the
//! template), completes the matching spawn requests and publishes exit
//! statuses, which the template reports because the workers are its children.

use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::io::unix::AsyncFd;
use tokio::sync::{oneshot, watch};

use crate::error::{Error, Failure, Result};
use crate::proto::{
    self, Assembler, HEADER_LEN, MAX_FRAME_PAYLOAD, Op, Reader, Reply, Request, SpawnFailure, Then,
    Writer,
};
use crate::sys::{self, scm};

/// Where a process's exit status will appear.
pub(crate) type ExitWatch = watch::Receiver<Option<Result<ExitStatus, Failure>>>;
type ExitSender = watch::Sender<Option<Result<ExitStatus, Failure>>>;

/// Where a template's exit status comes from once its connection ends.
#[derive(Debug)]
pub(crate) enum Reap {
    /// Nowhere: it is not this process's child.
    None,
    /// It is this process's child: reap it.
    Child(i32),
    /// Someone else reports it, as a raw wait status (a remote
    /// template's relay, from its transport), or the failure that ended
    /// the connection instead (a remote template's lost connection).
    Status(oneshot::Receiver<RemoteEnd>),
}

/// How a remote template's relay says the connection ended: the
/// transport's raw wait status, if it has one, or a loss.
pub(crate) type RemoteEnd = std::result::Result<Option<i32>, Failure>;

/// A process the template forked.
#[derive(Debug)]
pub(crate) struct Spawned {
    pub(crate) pid: i32,
    pub(crate) exit: ExitWatch,
}

#[derive(Debug)]
pub(crate) struct Conn {
    fd: AsyncFd<OwnedFd>,
    rt: tokio::runtime::Handle,
    out: Mutex<Outbox>,
    state: Mutex<State>,
    /// Set when the connection ended, with how.
    ended: watch::Sender<Option<Failure>>,
    /// Tells the reader to stop: the socket is handed to another process.
    handover: tokio::sync::Notify,
    /// The reader task, to wait for it to stop.
    reader: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

#[derive(Debug, Default)]
struct Outbox {
    queue: VecDeque<Frame>,
    writer: bool,
    close_when_flushed: bool,
    closed: bool,
}

#[derive(Debug)]
struct Frame {
    header: [u8; HEADER_LEN],
    payload: Vec<u8>,
    fds: Vec<OwnedFd>,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    spawns: HashMap<u64, oneshot::Sender<Result<Spawned>>>,
    pings: HashMap<u64, oneshot::Sender<Result<()>>>,
    releases: HashMap<u64, oneshot::Sender<Result<i32>>>,
    children: HashMap<i32, ExitSender>,
    failure: Option<Failure>,
    /// The template said it serves ([`Reply::Ready`]).
    ready: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; recover from poison anyway.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Conn {
    /// Takes over the parent's end of a control socket and starts its reader.
    /// `reap` says where the template's exit status comes from.
    pub(crate) fn start(fd: OwnedFd, reap: Reap) -> Result<Arc<Conn>> {
        let rt = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        sys::set_nonblocking(fd.as_fd(), true).map_err(Error::os(
            "making the template's control socket non-blocking",
        ))?;
        let conn = Arc::new(Conn {
            fd: sys::async_fd(fd).map_err(Error::os(
                "registering the template's control socket with tokio",
            ))?,
            rt,
            out: Mutex::new(Outbox::default()),
            state: Mutex::new(State::default()),
            ended: watch::channel(None).0,
            handover: tokio::sync::Notify::new(),
            reader: Mutex::new(None),
        });
        let reader = conn.rt.spawn(read_loop(conn.clone(), reap));
        *lock(&conn.reader) = Some(reader);
        Ok(conn)
    }

    /// Takes over a control socket another process handed over
    /// ([`Conn::hand_over`]): the template served there already.
    pub(crate) fn adopt(fd: OwnedFd) -> Result<Arc<Conn>> {
        let conn = Conn::start(fd, Reap::None)?;
        lock(&conn.state).ready = true;
        Ok(conn)
    }

    /// Asks the template to outlive its parent (see [`Request::Release`]);
    /// resolves with its pid once everything sent before was applied.
    pub(crate) async fn release(self: &Arc<Self>) -> Result<i32> {
        self.ask(|st| &mut st.releases, |id| Request::Release { id })
            .await
    }

    /// A fresh request id, with the receiver its answer will come to
    /// through the table `waiters` picks; the connection's failure if it
    /// failed.
    fn waiter<T>(
        &self,
        waiters: fn(&mut State) -> &mut HashMap<u64, oneshot::Sender<Result<T>>>,
    ) -> Result<(u64, oneshot::Receiver<Result<T>>)> {
        let (tx, rx) = oneshot::channel();
        let mut st = lock(&self.state);
        if let Some(f) = &st.failure {
            return Err(f.to_error());
        }
        let id = st.next_id;
        st.next_id += 1;
        waiters(&mut st).insert(id, tx);
        Ok((id, rx))
    }

    /// Sends the request `make` builds with a fresh id, its answer to come
    /// through the table `waiters` picks (the reader completes it, or
    /// [`fail`](Conn::fail) does).
    async fn ask<T>(
        self: &Arc<Self>,
        waiters: fn(&mut State) -> &mut HashMap<u64, oneshot::Sender<Result<T>>>,
        make: fn(u64) -> Request,
    ) -> Result<T> {
        let (id, rx) = self.waiter(waiters)?;
        if let Err(e) = self.send(&make(id), Vec::new()) {
            waiters(&mut lock(&self.state)).remove(&id);
            return Err(self.explain(e).await);
        }
        rx.await.unwrap_or_else(|_| Err(self.error()))
    }

    /// Stops using the socket and returns a descriptor for it, for another
    /// process to [adopt](Conn::adopt): the reader stops (nothing is read
    /// past the last reply), nothing more is sent, and the socket is never
    /// shut down from here, so the template sees no EOF. Call once
    /// [`release`](Conn::release) answered, with no request in flight.
    pub(crate) async fn hand_over(self: &Arc<Self>) -> Result<OwnedFd> {
        let fd = sys::dup_cloexec(self.sock())
            .map_err(Error::os("duplicating the template's control socket"))?;
        lock(&self.out).closed = true;
        self.handover.notify_one();
        let reader = lock(&self.reader).take();
        if let Some(reader) = reader {
            let _ = reader.await;
        }
        Ok(fd)
    }

    fn sock(&self) -> BorrowedFd<'_> {
        self.fd.get_ref().as_fd()
    }

    /// The failure that ended this connection, if any.
    pub(crate) fn failure(&self) -> Option<Failure> {
        lock(&self.state).failure.clone()
    }

    fn error(&self) -> Error {
        self.failure().unwrap_or(Failure::Gone(None)).to_error()
    }

    /// Sends one request with its descriptors (closed here once sent).
    pub(crate) fn send(self: &Arc<Self>, req: &Request, fds: Vec<OwnedFd>) -> Result<()> {
        let mut w = Writer::default();
        w.request(req);
        if w.overflow || w.buf.len() > proto::DEFAULT_MAX_MESSAGE {
            return Err(Error::Protocol(format!(
                "a request of {} bytes exceeds the limit of {} bytes; pass big data \
                 through a file descriptor (a file or a memfd) instead",
                if w.overflow {
                    u64::MAX
                } else {
                    w.buf.len() as u64
                },
                proto::DEFAULT_MAX_MESSAGE
            )));
        }
        let msg = w.buf;
        let mut out = lock(&self.out);
        if out.closed {
            return Err(self.error());
        }
        let mut fds = fds.into_iter();
        for (header, bytes, fd_range) in proto::split(msg.len(), fds.len()) {
            let frame_fds: Vec<OwnedFd> = fds.by_ref().take(fd_range.len()).collect();
            let header = proto::encode_header(header);
            if out.queue.is_empty() {
                let borrowed: Vec<BorrowedFd<'_>> = frame_fds.iter().map(AsFd::as_fd).collect();
                let parts = [IoSlice::new(&header), IoSlice::new(&msg[bytes.clone()])];
                match scm::send(self.sock(), &parts, &borrowed, true) {
                    Ok(_) => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(self.send_error(e)),
                }
            }
            out.queue.push_back(Frame {
                header,
                payload: msg[bytes].to_vec(),
                fds: frame_fds,
            });
        }
        if !out.queue.is_empty() && !out.writer {
            out.writer = true;
            self.rt.spawn(write_loop(self.clone()));
        }
        Ok(())
    }

    fn send_error(&self, e: io::Error) -> Error {
        match e.raw_os_error() {
            Some(libc::EPIPE | libc::ECONNRESET) => self.error(),
            _ => Error::Io(e),
        }
    }

    /// The error for a request that could not be sent: if the template is
    /// gone (the socket broke before the reader saw it end), why, once the
    /// reader knows (an init function failed, it exited with this status,
    /// it never served).
    async fn explain(&self, e: Error) -> Error {
        match e {
            Error::TemplateGone { status: None } => {
                self.ended().await;
                self.error()
            }
            e => e,
        }
    }

    /// Asks the template to fork; resolves once it reported the new pid.
    pub(crate) async fn spawn(
        self: &Arc<Self>,
        ack: bool,
        ops: Vec<Op>,
        then: Then,
        socket: OwnedFd,
        fds: Vec<OwnedFd>,
    ) -> Result<Spawned> {
        let (id, rx) = self.waiter(|st| &mut st.spawns)?;
        let mut all = Vec::with_capacity(1 + fds.len());
        all.push(socket);
        all.extend(fds);
        if let Err(e) = self.send(&Request::Spawn { id, ack, ops, then }, all) {
            lock(&self.state).spawns.remove(&id);
            return Err(self.explain(e).await);
        }
        let mut pending = PendingSpawn {
            conn: self.clone(),
            rx,
            taken: false,
        };
        let result = (&mut pending.rx).await;
        pending.taken = true;
        result.unwrap_or_else(|_| Err(self.error()))
    }

    /// Resolves once the template applied everything sent before.
    pub(crate) async fn ping(self: &Arc<Self>) -> Result<()> {
        self.ask(|st| &mut st.pings, |id| Request::Ping { id })
            .await
    }

    /// How the connection ended, once it did (`None` until then).
    pub(crate) fn ended_watch(&self) -> watch::Receiver<Option<Failure>> {
        self.ended.subscribe()
    }

    /// Marks the connection failed (first failure wins) and fails every
    /// request that waits on it.
    pub(crate) fn fail(&self, failure: Failure) {
        self.fail_inner(failure, false);
    }

    /// The template is gone (`end` says how): fail everything, and tell every
    /// child's waiter that its status is lost (the children died with it).
    fn finish(&self, end: Failure) {
        self.fail_inner(end, true);
    }

    /// Waits until the connection ended and says how.
    pub(crate) async fn ended(&self) -> Failure {
        let mut rx = self.ended.subscribe();
        let ended = rx.wait_for(Option::is_some).await;
        match ended {
            Ok(v) => v.clone().unwrap_or(Failure::Gone(None)),
            Err(_) => Failure::Gone(None),
        }
    }

    fn fail_inner(&self, failure: Failure, gone: bool) {
        let mut st = lock(&self.state);
        let first = st.failure.get_or_insert(failure.clone()).clone();
        for (_, tx) in st.spawns.drain() {
            let _ = tx.send(Err(first.to_error()));
        }
        for (_, tx) in st.pings.drain() {
            let _ = tx.send(Err(first.to_error()));
        }
        for (_, tx) in st.releases.drain() {
            let _ = tx.send(Err(first.to_error()));
        }
        if gone {
            for (_, tx) in st.children.drain() {
                tx.send_replace(Some(Err(failure.clone())));
            }
            self.ended.send_if_modified(|ended| {
                let first = ended.is_none();
                if first {
                    *ended = Some(failure);
                }
                first
            });
        }
    }

    /// Closes the sending side once queued requests are out: the template
    /// sees EOF and exits.
    pub(crate) fn close(&self) {
        let mut out = lock(&self.out);
        if out.closed {
            return;
        }
        if out.queue.is_empty() {
            out.closed = true;
            sys::shutdown(self.sock(), nix::sys::socket::Shutdown::Write);
        } else {
            out.close_when_flushed = true;
        }
    }

    fn dispatch(self: &Arc<Self>, msg: &[u8]) -> std::result::Result<(), proto::ProtoError> {
        let mut reader = Reader::new(msg);
        while !reader.is_empty() {
            let reply = reader.reply()?;
            let mut st = lock(&self.state);
            match reply {
                Reply::Spawned { id, pid } => {
                    let (tx, rx) = watch::channel(None);
                    st.children.insert(pid, tx);
                    let delivered = st
                        .spawns
                        .remove(&id)
                        .is_some_and(|waiter| waiter.send(Ok(Spawned { pid, exit: rx })).is_ok());
                    drop(st);
                    if !delivered {
                        // The spawn was given up on (its future dropped)
                        // before the pid came: no one holds this process, so
                        // it does not outlive the call that made it.
                        let _ = self.signal(pid, libc::SIGKILL);
                    }
                }
                Reply::SpawnFailed { id, failure } => {
                    let error = match failure {
                        SpawnFailure::Fork(errno) => {
                            Error::Fork(io::Error::from_raw_os_error(errno))
                        }
                        SpawnFailure::UnknownEntry(name) => Error::UnknownEntry(name),
                        SpawnFailure::DuplicateEntry(name) => Error::DuplicateEntry(name),
                        SpawnFailure::BadRequest(m) => Error::Protocol(m),
                    };
                    if let Some(waiter) = st.spawns.remove(&id) {
                        let _ = waiter.send(Err(error));
                    }
                }
                Reply::Exited { pid, status } => {
                    if let Some(tx) = st.children.remove(&pid) {
                        tx.send_replace(Some(Ok(ExitStatus::from_raw(status))));
                    }
                }
                Reply::Pong { id } => {
                    if let Some(waiter) = st.pings.remove(&id) {
                        let _ = waiter.send(Ok(()));
                    }
                }
                Reply::InitFailed { name, message } => {
                    drop(st);
                    self.fail(Failure::InitFailed { name, message });
                }
                Reply::ProtocolError { message } => {
                    drop(st);
                    self.fail(Failure::Protocol(format!(
                        "the template rejected a request: {message}"
                    )));
                }
                Reply::Ready => st.ready = true,
                Reply::Released { id, pid } => {
                    if let Some(waiter) = st.releases.remove(&id) {
                        let _ = waiter.send(Ok(pid));
                    }
                }
            }
        }
        Ok(())
    }

    /// Sends `signal` to a child of the template (ignored once it was reaped).
    pub(crate) fn signal(self: &Arc<Self>, pid: i32, signal: i32) -> Result<()> {
        self.send(&Request::Kill { pid, signal }, Vec::new())
    }
}

/// A spawn request waiting for its pid. Dropped before the pid was taken
/// (the spawn was given up on), it kills the process if there is one: no one
/// holds it. If the pid comes later, the reader kills it (see `dispatch`).
struct PendingSpawn {
    conn: Arc<Conn>,
    rx: oneshot::Receiver<Result<Spawned>>,
    /// The answer was received: the caller has it.
    taken: bool,
}

impl Drop for PendingSpawn {
    fn drop(&mut self) {
        if self.taken {
            return;
        }
        // After `close`, the reader's send fails (and it kills the process
        // itself), or it already sent, and the pid is here.
        self.rx.close();
        if let Ok(Ok(spawned)) = self.rx.try_recv() {
            let _ = self.conn.signal(spawned.pid, libc::SIGKILL);
        }
    }
}

/// Marks the connection gone if the reader task is dropped without finishing
/// (its runtime shut down), so later calls fail instead of hanging.
struct GoneOnDrop {
    conn: Arc<Conn>,
    /// Cleared when the socket was handed over: the template is not gone.
    armed: bool,
}

impl Drop for GoneOnDrop {
    fn drop(&mut self) {
        if self.armed {
            self.conn.finish(Failure::Gone(None));
        }
    }
}

async fn read_loop(conn: Arc<Conn>, reap: Reap) {
    let mut gone = GoneOnDrop {
        conn: conn.clone(),
        armed: true,
    };
    let mut buf = vec![0u8; HEADER_LEN + MAX_FRAME_PAYLOAD];
    let mut asm = Assembler::new(proto::DEFAULT_MAX_MESSAGE);
    let end = loop {
        let readable = tokio::select! {
            biased;
            () = conn.handover.notified() => {
                // Handed over: the other process reads from here on, and
                // the template is not gone.
                gone.armed = false;
                return;
            }
            readable = conn.fd.readable() => readable,
        };
        let mut ready = match readable {
            Ok(r) => r,
            Err(e) => break Failure::io(&e),
        };
        let protocol_error = match scm::recv(conn.sock(), &mut buf, true) {
            Ok(scm::Received::Frame { len, fds }) => match asm.push(&buf[..len], fds) {
                // A template never sends descriptors; any that came are closed.
                Ok(Some((msg, _fds))) => conn.dispatch(&msg).err().map(|e| e.0),
                Ok(None) => None,
                Err(e) => Some(e.0),
            },
            Ok(scm::Received::Eof) => break Failure::Gone(None),
            Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => break Failure::Gone(None),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                ready.clear_ready();
                None
            }
            Err(e) if e.kind() == io::ErrorKind::InvalidData => Some(e.to_string()),
            Err(e) => break Failure::io(&e),
        };
        if let Some(message) = protocol_error {
            // Stop talking to it; it sees EOF and exits, and we read to EOF.
            conn.fail(Failure::Protocol(format!(
                "malformed message from the template: {message}"
            )));
            sys::shutdown(conn.sock(), nix::sys::socket::Shutdown::Both);
        }
    };
    let end = match (end, reap) {
        (Failure::Gone(_), Reap::Child(pid)) => {
            let status = reap_child(pid).await.ok().map(ExitStatus::from_raw);
            Failure::Gone(status)
        }
        (Failure::Gone(_), Reap::Status(status)) => match status.await {
            Ok(Ok(status)) => Failure::Gone(status.map(ExitStatus::from_raw)),
            // Lost: the relay said so once everything before had come.
            Ok(Err(lost)) => lost,
            Err(_) => Failure::Gone(None),
        },
        (end, _) => end,
    };
    let end = match end {
        // It never said it serves: it did not reach `init` (or was killed
        // first), which says more than "gone".
        Failure::Gone(status) if !lock(&conn.state).ready => Failure::NotStarted(status),
        end => end,
    };
    conn.finish(end);
}

/// Waits for this process's child `pid` (a template it started) to exit,
/// on the runtime (its pidfd), and reaps it: its raw wait status. Without
/// pidfds (Linux before 5.3), a blocking thread waits instead.
pub(crate) async fn reap_child(pid: i32) -> io::Result<i32> {
    if let Ok(exited) = sys::pidfd_open(pid).and_then(sys::async_fd) {
        let _ = exited.readable().await;
        if let Some(status) = sys::try_reap(pid)? {
            return Ok(status);
        }
    }
    tokio::task::spawn_blocking(move || sys::wait_child(pid))
        .await
        .map_err(io::Error::other)?
}

async fn write_loop(conn: Arc<Conn>) {
    loop {
        let mut ready = match conn.fd.writable().await {
            Ok(r) => r,
            Err(_) => {
                let mut out = lock(&conn.out);
                out.queue.clear();
                out.writer = false;
                return;
            }
        };
        let mut out = lock(&conn.out);
        while let Some(frame) = out.queue.front() {
            let borrowed: Vec<BorrowedFd<'_>> = frame.fds.iter().map(AsFd::as_fd).collect();
            let parts = [IoSlice::new(&frame.header), IoSlice::new(&frame.payload)];
            match scm::send(conn.sock(), &parts, &borrowed, true) {
                Ok(_) => {
                    out.queue.pop_front();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready.clear_ready();
                    break;
                }
                Err(_) => {
                    // The template is gone; the reader reports it.
                    out.queue.clear();
                }
            }
        }
        if out.queue.is_empty() {
            out.writer = false;
            if out.close_when_flushed && !out.closed {
                out.closed = true;
                sys::shutdown(conn.sock(), nix::sys::socket::Shutdown::Write);
            }
            return;
        }
    }
}
