//! The template side: a blocking, single-threaded, tokio-free loop.
//!
//! The loop waits on its control socket and a `signalfd`. It drains every
//! request that is ready (up to a batch), forks as asked, reaps its own
//! children and sends all replies of one round in one message. It exits when
//! the control socket reaches EOF (the parent closed it or died); its
//! children die with it through `PR_SET_PDEATHSIG`.
//!
//! Signals: `SIGCHLD` is read from the signalfd. `SIGINT`, `SIGTERM`,
//! `SIGHUP` and `SIGQUIT` are read from it too and ignored: a template lives
//! until its parent goes (the parent decides what its workers do), even when
//! a signal meant for a whole process group or cgroup reaches it. Forked
//! processes get the signal mask the template started with.

use std::collections::{HashSet, VecDeque};
use std::io::{self, IoSlice, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::context::{Context, Slot};
use crate::entry::{find_entry, find_init};
use crate::proto::{
    self, Ack, Assembler, ExecSpec, HEADER_LEN, MAX_FRAME_PAYLOAD, Op, ProtoError, Reader, Reply,
    Request, SpawnFailure, Then, Writer,
};
use crate::sys::scm::{self, Received};
use crate::sys::{self, Forked, Forker};

/// Environment variable that turns an exec'd program into a template. Its
/// value is `<protocol version>:<parent pid>`.
pub(crate) const MARKER: &str = "FORK_CORE_TEMPLATE";

/// Most messages handled before replies are flushed and signals checked.
const BATCH: usize = 64;

/// Exit codes of the template itself.
const EXIT_PROTOCOL: i32 = 2;
const EXIT_INIT_FAILED: i32 = 3;
/// Exit code of a forked process whose preparation failed.
const EXIT_CHILD_INIT_FAILED: i32 = 1;
/// Exit code of a forked process whose `exec` failed (as in shells).
const EXIT_EXEC_FAILED: i32 = 127;

/// Signals a template reads and ignores (see the module docs).
const IGNORED: [Signal; 4] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
];

/// Name under which template start-up failures are reported.
const STARTUP: &str = "fork_core::template";

/// Runs a template in a process started by `exec` with the marker set and its
/// control socket on standard input. Never returns.
pub(crate) fn exec_main() -> ! {
    let forker = Forker::new();
    // The socket is on fd 0; move it away and put /dev/null there.
    let ctrl = match sys::take_stdin() {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("fork-core template: cannot take over its socket: {e}");
            sys::exit_now(EXIT_PROTOCOL)
        }
    };
    match forker {
        Ok(forker) => sys::remove_env_single_threaded(&forker, MARKER),
        Err(e) => startup_failed(ctrl, e),
    }
    if let Err(e) = sys::close_inherited(ctrl.as_fd()) {
        startup_failed(ctrl, e)
    }
    run(ctrl, Vec::new(), Vec::new(), Vec::new(), VecDeque::new())
}

/// Runs a template forked from the parent at start-up (the early template).
pub(crate) fn early_main(ctrl: OwnedFd) -> ! {
    let setup = || {
        sys::new_process_group()?;
        sys::null_stdin()?;
        sys::close_inherited(ctrl.as_fd())
    };
    if let Err(e) = setup() {
        startup_failed(ctrl, e)
    }
    run(ctrl, Vec::new(), Vec::new(), Vec::new(), VecDeque::new())
}

fn startup_failed(ctrl: OwnedFd, e: io::Error) -> ! {
    let mut out = Writer::default();
    out.reply(&Reply::InitFailed {
        name: STARTUP.into(),
        message: e.to_string(),
    });
    let _ = send_message(&ctrl, &out.buf);
    sys::exit_now(EXIT_INIT_FAILED)
}

/// Serves on `ctrl` with the given inherited arguments and descriptors, after
/// applying `ops` (with their descriptors) as if they had been sent.
fn run(
    ctrl: OwnedFd,
    args: Vec<Vec<u8>>,
    fds: Vec<OwnedFd>,
    ops: Vec<Op>,
    mut op_fds: VecDeque<OwnedFd>,
) -> ! {
    // Initialise std's stdout here, once, rather than in every worker that
    // flushes it on its way out.
    drop(io::stdout().lock());
    // This process is the program after `init`: a worker forked from it may
    // start templates of its own.
    crate::process::mark_initialized();
    super::title::name_template();
    let mut server = match Server::new(ctrl, args, fds) {
        Ok(s) => s,
        Err((ctrl, e)) => startup_failed(ctrl, e),
    };
    // Says it serves (before any reply to what was queued for it): a parent
    // that never hears this knows the program did not reach `init`.
    server.out.reply(&Reply::Ready);
    if !ops.is_empty() {
        server.prepare(ops, &mut op_fds);
    }
    server.flush();
    server.serve()
}

/// Sends one message (split into frames) without descriptors, blocking.
fn send_message(ctrl: &OwnedFd, msg: &[u8]) -> io::Result<()> {
    for (header, bytes, _) in proto::split(msg.len(), 0) {
        let header = proto::encode_header(header);
        let parts = [IoSlice::new(&header), IoSlice::new(&msg[bytes])];
        scm::send(ctrl.as_fd(), &parts, &[], false)?;
    }
    Ok(())
}

struct Server {
    /// `None` only in a forked child, which closed it.
    ctrl: Option<OwnedFd>,
    sigfd: Option<SignalFd>,
    forker: Forker,
    /// The signal mask before `SIGCHLD` was blocked, restored in children.
    mask: SigSet,
    me: u32,
    args: Vec<Vec<u8>>,
    fds: Vec<OwnedFd>,
    children: HashSet<i32>,
    asm: Assembler<OwnedFd>,
    out: Writer,
    /// Set once the template reported a fatal error (a failed init function,
    /// a protocol violation): the exit code it will end with. From then on it
    /// only reaps and reports its children and honours kill requests, until
    /// EOF. Exiting at once would make the kernel reset the connection and
    /// lose the report.
    failed: Option<i32>,
}

impl Server {
    fn new(
        ctrl: OwnedFd,
        args: Vec<Vec<u8>>,
        fds: Vec<OwnedFd>,
    ) -> Result<Server, (OwnedFd, io::Error)> {
        let setup = || -> io::Result<(Forker, SigSet, SignalFd)> {
            let forker = Forker::new()?;
            // An inherited SIG_IGN for SIGCHLD would make the kernel reap our
            // children and lose their exit statuses.
            sys::reset_signal(libc::SIGCHLD)?;
            let mask = SigSet::thread_get_mask()?;
            let mut read = SigSet::empty();
            for signal in [Signal::SIGCHLD].into_iter().chain(IGNORED) {
                read.add(signal);
            }
            read.thread_block()?;
            let sigfd =
                SignalFd::with_flags(&read, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
            Ok((forker, mask, sigfd))
        };
        match setup() {
            Ok((forker, mask, sigfd)) => Ok(Server {
                ctrl: Some(ctrl),
                sigfd: Some(sigfd),
                forker,
                mask,
                me: std::process::id(),
                args,
                fds,
                children: HashSet::new(),
                asm: Assembler::new(proto::DEFAULT_MAX_MESSAGE),
                out: Writer::default(),
                failed: None,
            }),
            Err(e) => Err((ctrl, e)),
        }
    }

    fn ctrl(&self) -> &OwnedFd {
        self.ctrl.as_ref().expect("the template's control socket")
    }

    fn serve(mut self) -> ! {
        let mut buf = vec![0u8; HEADER_LEN + MAX_FRAME_PAYLOAD];
        loop {
            let (input, signalled) = self.wait();
            if signalled {
                let sigfd = self.sigfd.as_ref().expect("signalfd");
                while let Ok(Some(_)) = sigfd.read_signal() {}
                self.reap();
            }
            if input {
                for _ in 0..BATCH {
                    match scm::recv(self.ctrl().as_fd(), &mut buf, true) {
                        Ok(Received::Frame { len, fds }) => match self.asm.push(&buf[..len], fds) {
                            Ok(Some((msg, fds))) => self.handle(&msg, fds),
                            Ok(None) => {}
                            Err(e) => self.fatal(e),
                        },
                        Ok(Received::Eof) => self.shutdown(),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                            self.fatal(ProtoError(e.to_string()))
                        }
                        Err(_) => self.shutdown(),
                    }
                }
            }
            self.flush();
        }
    }

    /// Blocks until the control socket or the signalfd is ready.
    fn wait(&self) -> (bool, bool) {
        let ctrl = self.ctrl().as_fd();
        let sigfd = self.sigfd.as_ref().expect("signalfd").as_fd();
        let mut fds = [
            PollFd::new(ctrl, PollFlags::POLLIN),
            PollFd::new(sigfd, PollFlags::POLLIN),
        ];
        loop {
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => break,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => self.exit(EXIT_PROTOCOL),
            }
        }
        let ready = |f: &PollFd<'_>| !f.revents().unwrap_or(PollFlags::empty()).is_empty();
        (ready(&fds[0]), ready(&fds[1]))
    }

    /// Reaps the template's own children that exited, and reports them.
    /// Children that init functions started are left to their owners: one
    /// that exited is not reaped here (its owner's `wait` would fail, and a
    /// later `kill` could hit a reused pid).
    fn reap(&mut self) {
        loop {
            match sys::peek_exited() {
                Ok(Some(pid)) if self.children.contains(&pid) => match sys::try_reap(pid) {
                    Ok(Some(status)) => self.exited(pid, status),
                    _ => return,
                },
                // A child that is not ours exited first, and stays until its
                // owner reaps it: look at ours one by one.
                Ok(Some(_)) => return self.reap_each(),
                Ok(None) | Err(_) => return,
            }
        }
    }

    /// Reaps each of the template's children that exited.
    fn reap_each(&mut self) {
        let exited: Vec<(i32, i32)> = self
            .children
            .iter()
            .filter_map(|&pid| Some((pid, sys::try_reap(pid).ok()??)))
            .collect();
        for (pid, status) in exited {
            self.exited(pid, status);
        }
    }

    fn exited(&mut self, pid: i32, status: i32) {
        self.children.remove(&pid);
        self.out.reply(&Reply::Exited { pid, status });
    }

    fn flush(&mut self) {
        if self.out.buf.is_empty() {
            return;
        }
        let msg = std::mem::take(&mut self.out.buf);
        if send_message(self.ctrl(), &msg).is_err() {
            // The parent is gone.
            self.shutdown();
        }
        self.out.buf = msg;
        self.out.buf.clear();
    }

    /// The parent closed the connection (or died): kill and reap every child,
    /// so none is left as a zombie for init to collect, and exit.
    fn shutdown(&mut self) -> ! {
        for &pid in &self.children {
            let _ = sys::kill(pid, libc::SIGKILL);
        }
        for &pid in &self.children {
            let _ = sys::wait_child(pid);
        }
        self.exit(self.failed.unwrap_or(0))
    }

    fn exit(&self, code: i32) -> ! {
        sys::exit_now(code)
    }

    /// Reports a protocol violation; the template is failed from now on.
    fn fatal(&mut self, e: ProtoError) {
        if self.failed.is_none() {
            self.out.reply(&Reply::ProtocolError { message: e.0 });
            self.failed = Some(EXIT_PROTOCOL);
        }
    }

    /// Handles one reassembled message.
    fn handle(&mut self, msg: &[u8], fds: Vec<OwnedFd>) {
        let mut reader = Reader::new(msg);
        let mut requests = Vec::new();
        while !reader.is_empty() {
            match reader.request() {
                Ok(r) => requests.push(r),
                Err(e) => return self.fatal(e),
            }
        }
        let needed: usize = requests.iter().map(proto::fds_needed).sum();
        if needed != fds.len() {
            return self.fatal(ProtoError(format!(
                "the message needs {needed} descriptors but carries {}",
                fds.len()
            )));
        }
        let mut fds = VecDeque::from(fds);
        for request in requests {
            if self.failed.is_some() && !matches!(request, Request::Kill { .. }) {
                // A failed template forks nothing and prepares nothing more;
                // the parent already failed these requests on its side.
                continue;
            }
            match request {
                Request::Prepare(ops) => self.prepare(ops, &mut fds),
                Request::Spawn { id, ack, ops, then } => self.spawn(id, ack, ops, then, &mut fds),
                Request::Kill { pid, signal } => {
                    if self.children.contains(&pid) {
                        let _ = sys::kill(pid, signal);
                    }
                }
                Request::Ping { id } => self.out.reply(&Reply::Pong { id }),
                Request::Release { id } => {
                    // From now on, the socket's EOF is its end (as always),
                    // not its parent's death: the parent handed it over.
                    let _ = sys::outlive_parent();
                    let pid = self.me as i32;
                    self.out.reply(&Reply::Released { id, pid });
                }
            }
        }
    }

    /// Applies preparation steps to the template itself.
    fn prepare(&mut self, ops: Vec<Op>, fds: &mut VecDeque<OwnedFd>) {
        for op in ops {
            match op {
                Op::Arg(a) => self.args.push(a),
                Op::Fd => self
                    .fds
                    .push(fds.pop_front().expect("descriptors were counted")),
                // A slot belongs to one forked process: a template keeps none.
                Op::SlotData(_) => {}
                Op::SlotFd => drop(fds.pop_front()),
                Op::Init { name, arg } => {
                    let result = run_init(&name, &arg).and_then(|()| {
                        // User code ran: make sure it left us single-threaded.
                        self.forker = Forker::new().map_err(|e| {
                            format!(
                                "{e}; an init function must not leave threads running in a template"
                            )
                        })?;
                        Ok(())
                    });
                    if let Err(message) = result {
                        self.out.reply(&Reply::InitFailed { name, message });
                        self.failed = Some(EXIT_INIT_FAILED);
                        return;
                    }
                }
            }
        }
    }

    fn spawn(&mut self, id: u64, ack: bool, ops: Vec<Op>, then: Then, fds: &mut VecDeque<OwnedFd>) {
        let socket = fds.pop_front().expect("descriptors were counted");
        let nfds = ops.iter().filter(|o| o.takes_fd()).count();
        let own: VecDeque<OwnedFd> = fds.drain(..nfds).collect();
        if let Then::Run(name) = &then
            && let Err(e) = find_entry(name)
        {
            let failure = match e {
                crate::Error::DuplicateEntry(n) => SpawnFailure::DuplicateEntry(n),
                _ => SpawnFailure::UnknownEntry(name.clone()),
            };
            self.out.reply(&Reply::SpawnFailed { id, failure });
            return;
        }
        // Text buffered in the template (an init function's `print!`) is
        // written now, once, not copied into the child to be written again.
        sys::flush_stdio();
        match self.forker.fork() {
            Ok(Forked::Parent { child }) => {
                self.children.insert(child);
                self.out.reply(&Reply::Spawned { id, pid: child });
                // `socket` and `own` drop here: the template keeps no copy.
            }
            Ok(Forked::Child) => self.child(socket, own, ops, then, ack),
            Err(e) => {
                let errno = e.raw_os_error().unwrap_or(libc::EIO);
                self.out.reply(&Reply::SpawnFailed {
                    id,
                    failure: SpawnFailure::Fork(errno),
                });
            }
        }
    }

    /// The forked child: drop the template's machinery, prepare, and go.
    fn child(
        &mut self,
        socket: OwnedFd,
        mut own: VecDeque<OwnedFd>,
        ops: Vec<Op>,
        then: Then,
        ack: bool,
    ) -> ! {
        if !matches!(sys::die_with_parent(self.me), Ok(true)) {
            sys::exit_now(EXIT_CHILD_INIT_FAILED);
        }
        drop(self.ctrl.take());
        drop(self.sigfd.take());
        let _ = self.mask.thread_set_mask();
        let mut args = std::mem::take(&mut self.args);
        let mut fds = std::mem::take(&mut self.fds);
        if then == Then::Template {
            run(socket, args, fds, ops, own)
        }
        let socket = UnixStream::from(socket);
        let mut exec_fds = Vec::new();
        let mut slot = Slot::default();
        for op in ops {
            match op {
                Op::Arg(a) => args.push(a),
                Op::SlotData(d) => slot.data.extend(d),
                Op::SlotFd => slot
                    .fds
                    .push(own.pop_front().expect("descriptors were counted")),
                Op::Fd => {
                    let fd = own.pop_front().expect("descriptors were counted");
                    if matches!(then, Then::Exec(_)) {
                        exec_fds.push(fd);
                    } else {
                        fds.push(fd);
                    }
                }
                Op::Init { name, arg } => {
                    if let Err(message) = run_init(&name, &arg) {
                        if ack {
                            let _ =
                                (&socket).write_all(&Ack::InitFailed { name, message }.encode());
                        }
                        sys::exit_now(EXIT_CHILD_INIT_FAILED);
                    }
                }
            }
        }
        match then {
            Then::Run(name) => {
                if ack && (&socket).write_all(&Ack::Ready.encode()).is_err() {
                    sys::exit_now(EXIT_CHILD_INIT_FAILED);
                }
                let def = find_entry(&name).expect("checked before forking");
                super::title::name_worker(def.name);
                let code = (def.run)(Context::new(socket, args, fds, slot));
                // Rust's stdout is flushed; C `atexit` handlers and static
                // destructors copied from the template do not run, as after
                // any fork (they belong to the template).
                let _ = io::stdout().flush();
                sys::exit_now(code)
            }
            Then::Exec(spec) => {
                let e = exec(spec, &exec_fds);
                let errno = e.raw_os_error().unwrap_or(libc::EINVAL);
                let _ = (&socket).write_all(&Ack::ExecFailed(errno).encode());
                sys::exit_now(EXIT_EXEC_FAILED)
            }
            Then::Template => unreachable!("handled above"),
        }
    }
}

fn run_init(name: &str, arg: &[u8]) -> Result<(), String> {
    let def = find_init(name).map_err(|e| e.to_string())?;
    (def.run)(arg)
}

/// Replaces the process image; returns only the error.
fn exec(spec: ExecSpec, fds: &[OwnedFd]) -> io::Error {
    let env = if spec.env_clear || !spec.env.is_empty() {
        let mut vars: Vec<(Vec<u8>, Vec<u8>)> = if spec.env_clear {
            Vec::new()
        } else {
            std::env::vars_os()
                .map(|(k, v)| (sys::os_bytes(&k), sys::os_bytes(&v)))
                .collect()
        };
        for (key, value) in spec.env {
            vars.retain(|(k, _)| *k != key);
            if let Some(v) = value {
                vars.push((key, v));
            }
        }
        Some(vars)
    } else {
        None
    };
    let image = match sys::ExecImage::new(&spec.program, &spec.args, env, spec.cwd.as_deref()) {
        Ok(i) => i,
        Err(e) => return e,
    };
    let stdio = spec.stdio.map(|i| sys::borrow_index(fds, i));
    image.exec(stdio)
}
