//! The error type of fork-core.

use std::io;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

/// Errors of fork-core.
///
/// Branch on the `is_*` predicates rather than on variants where one exists:
/// the enum is `#[non_exhaustive]` and grows.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// [`init`](crate::init) was not the first thing the program did: threads
    /// were already running or a tokio runtime was entered, so forking would
    /// be undefined behaviour.
    #[error(
        "fork_core::init() must be called first thing in main, before any thread or tokio runtime starts: {0}"
    )]
    InitOrder(String),

    /// A template was requested but [`init`](crate::init) was never called, so
    /// the program's `main` would run again inside the template.
    #[error(
        "fork_core::init() was not called: call it first thing in main (or use #[fork_core::main])"
    )]
    NotInitialized,

    /// The call needs to run inside a tokio runtime.
    #[error("this must be called from inside a tokio runtime")]
    NoRuntime,

    /// No early template exists: it must be requested with
    /// [`Init::early_template`](crate::Init::early_template).
    #[error("no early template: request one with fork_core::Init::new().early_template(true)")]
    NoEarlyTemplate,

    /// The template process could not be started.
    #[error("failed to start a template process: {0}{hint}", hint = hint(.0))]
    TemplateStart(#[source] io::Error),

    /// The template process is gone (it exited, was killed, or its connection
    /// failed), so nothing can be forked from it and the exit status of its
    /// workers is unknown (they were killed with it).
    #[error("the template process is gone{}", describe_status(.status))]
    TemplateGone {
        /// The template's exit status, when the parent could observe it.
        status: Option<ExitStatus>,
    },

    /// [`Template::into_fd`](crate::Template::into_fd) was refused: other
    /// handles to the template, or workers it forked that still run, need
    /// its connection.
    #[error("the template cannot be handed over: {0}")]
    HandOver(&'static str),

    /// The template process ended before it started serving: started with
    /// [`Template::new`](crate::Template::new), it is this program run
    /// again, and it did not reach [`init`](crate::init) (its `main`
    /// returned or exited first, typically on a command line it did not
    /// like: a template gets only `argv[0]`), or it was killed first.
    #[error("{}", not_started(.status))]
    TemplateNotStarted {
        /// The template's exit status, when the parent could observe it.
        status: Option<ExitStatus>,
    },

    /// An init function failed or panicked, in the template or in a forked
    /// process before its entry started.
    #[error("init function `{name}` failed: {message}")]
    InitFailed {
        /// The init function's registered name.
        name: String,
        /// Its error message (or panic message).
        message: String,
    },

    /// No entry or init function is registered under this name.
    #[error("no entry or init function is registered as `{0}`")]
    UnknownEntry(String),

    /// More than one entry or init function is registered under this name.
    #[error("more than one entry or init function is registered as `{0}`")]
    DuplicateEntry(String),

    /// `fork()` failed in the template (for example `EAGAIN` at `RLIMIT_NPROC`).
    #[error("fork failed in the template: {0}{hint}", hint = fork_hint(.0))]
    Fork(#[source] io::Error),

    /// A command could not be executed in the forked process.
    #[error("failed to execute `{program}`: {source}")]
    Exec {
        /// The program that was to run.
        program: String,
        /// Why `execvp` failed.
        #[source]
        source: io::Error,
    },

    /// The other side broke the protocol (malformed or oversized frame,
    /// missing descriptors, truncated control message). The connection is
    /// closed.
    #[error("protocol error: {0}")]
    Protocol(String),

    /// An argument could not be encoded or decoded.
    #[error("argument {index}: {message}")]
    Arg {
        /// Position of the argument.
        index: usize,
        /// What went wrong.
        message: String,
    },

    /// A forked process exited before its entry started (for example it was
    /// killed while its init functions ran).
    #[error("the forked process exited before its entry started ({0})")]
    Exited(ExitStatus),

    /// A [`Fork`](crate::Fork) was started twice; its descriptors were
    /// already sent.
    #[error("this Fork was already started; build a new one with Template::fork()")]
    AlreadyStarted,

    /// A system call failed in the parent: `op` says what it was doing.
    #[error("{op}: {source}{hint}", hint = hint(.source))]
    Os {
        /// What failed, for example "creating the worker's socket pair".
        op: &'static str,
        /// The error of the system call.
        #[source]
        source: io::Error,
    },

    /// A [remote template](crate::remote) could not be started: the
    /// connector failed to run its command.
    #[error("failed to start a remote template: {0}")]
    RemoteConnect(#[source] io::Error),

    /// What a [connector](crate::remote::Connector) started is not a
    /// fork-core remote template, or did not greet in time: the message
    /// says what came instead.
    #[error("remote template handshake failed: {0}")]
    RemoteHandshake(String),

    /// The remote template speaks another protocol version (another
    /// release of fork-core). The high byte is the stream protocol's, the
    /// low byte the control protocol's.
    #[error(
        "the remote template speaks protocol {theirs:#06x}, this program {ours:#06x}: \
         deploy the same build on both sides"
    )]
    RemoteVersion {
        /// This side's version.
        ours: u16,
        /// The remote side's.
        theirs: u16,
    },

    /// The remote template runs another build of the program (its build id
    /// differs), and the same build was required
    /// ([`RemoteBuilder::same_build`](crate::remote::RemoteBuilder::same_build)).
    #[error(
        "the remote template runs another build of this program (build id {theirs}, here \
         {ours}): deploy the same binary, or allow it with RemoteBuilder::same_build(false)"
    )]
    RemoteBuild {
        /// This binary's build id, in hex.
        ours: String,
        /// The remote binary's.
        theirs: String,
    },

    /// This program's binary could not be put on the other side for a
    /// remote template
    /// ([`RemoteBuilder::upload_to`](crate::remote::RemoteBuilder::upload_to)):
    /// `failure` says which step failed, `detail` what the other side said
    /// (a tool's message, an exit status), `source` the error here, if the
    /// step failed here.
    #[error(
        "uploading this program to {dir:?} on {host} failed: {failure}{}",
        detail_suffix(.detail)
    )]
    RemoteUpload {
        /// The host's name ([`RemoteBuilder::name`](crate::remote::RemoteBuilder::name)).
        host: String,
        /// The directory on the other side.
        dir: std::path::PathBuf,
        /// The step that failed.
        failure: crate::remote::UploadFailure,
        /// What the other side said about it, or an empty string.
        detail: String,
        /// The error here, when the step failed here.
        #[source]
        source: Option<io::Error>,
    },

    /// What was asked cannot be done with a remote template: `what` says
    /// what (passing file descriptors, forking a template from it).
    #[error("{what} is not possible with a remote template")]
    RemoteUnsupported {
        /// What was asked.
        what: &'static str,
    },

    /// The connection to a [remote template](crate::remote) was lost
    /// (see [`LostCause`]) without this side shutting it down: its
    /// workers' streams ended, each worker's
    /// [`wait`](crate::Worker::wait) and every pending or new fork fail
    /// with this error. The workers may still run on the host until its
    /// side notices (its keepalive timeout); they are not this process's
    /// any more. See [`Template::lost`](crate::Template::lost).
    #[error("lost the remote template on {host}: {cause}")]
    RemoteLost {
        /// The host's name ([`RemoteBuilder::name`](crate::remote::RemoteBuilder::name)).
        host: String,
        /// How the loss was noticed.
        #[source]
        cause: LostCause,
    },

    /// An I/O error in the parent.
    #[error("I/O error: {0}{hint}", hint = hint(.0))]
    Io(#[from] io::Error),
}

/// How the connection to a remote template was found lost
/// ([`Error::RemoteLost`]).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum LostCause {
    /// The stream ended (EOF) though this side did not shut it down: the
    /// transport (ssh, the command) or the remote side ended.
    #[error("the connection ended (EOF)")]
    Eof,
    /// Reading or writing the stream failed.
    #[error("the connection failed: {0}")]
    Io(#[source] Arc<io::Error>),
    /// Nothing at all came for this long (at least the keepalive timeout):
    /// a partition, or a frozen host.
    #[error("no answer for {:.1} s", .0.as_secs_f64())]
    Silent(Duration),
}

impl PartialEq for LostCause {
    fn eq(&self, other: &LostCause) -> bool {
        match (self, other) {
            (LostCause::Eof, LostCause::Eof) => true,
            (LostCause::Io(a), LostCause::Io(b)) => {
                a.kind() == b.kind() && a.to_string() == b.to_string()
            }
            (LostCause::Silent(a), LostCause::Silent(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for LostCause {}

impl Error {
    /// An [`Error::Os`] for `op`.
    pub(crate) fn os(op: &'static str) -> impl FnOnce(io::Error) -> Error {
        move |source| Error::Os { op, source }
    }
}

/// What an errno usually means here, for the limits users hit.
fn hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EMFILE) => {
            " (this process's limit on open descriptors, RLIMIT_NOFILE, is reached: `ulimit -n`)"
        }
        Some(libc::ENFILE) => " (the system-wide limit on open files is reached)",
        Some(libc::ENOMEM) => " (out of memory)",
        _ => "",
    }
}

/// [`hint`] for a failed `fork()`.
fn fork_hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EAGAIN) => {
            " (a limit on processes is reached: the user's RLIMIT_NPROC (`ulimit -u`), \
             the cgroup's pids.max, or the system's pid or thread limit)"
        }
        _ => hint(e),
    }
}

fn not_started(status: &Option<ExitStatus>) -> String {
    let mut s = format!(
        "the template process ended before it started serving{}",
        describe_status(status)
    );
    if status.is_some_and(|s| s.code().is_some()) {
        s.push_str(
            ": its main returned or exited before calling fork_core::init(); a template is \
             this program run again with only argv[0], so init() must come first in main, \
             before the command line is parsed",
        );
    }
    s
}

fn detail_suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    }
}

fn describe_status(status: &Option<ExitStatus>) -> String {
    match status {
        Some(s) => format!(" ({s})"),
        None => String::new(),
    }
}

impl Error {
    /// The template process (and with it every worker it forked) is gone,
    /// or never started serving.
    pub fn is_template_gone(&self) -> bool {
        matches!(
            self,
            Error::TemplateGone { .. } | Error::TemplateNotStarted { .. }
        )
    }

    /// An init function failed.
    pub fn is_init_failed(&self) -> bool {
        matches!(self, Error::InitFailed { .. })
    }

    /// A protocol violation.
    pub fn is_protocol(&self) -> bool {
        matches!(self, Error::Protocol(_))
    }

    /// The remote side runs another protocol version or another build.
    pub fn is_remote_mismatch(&self) -> bool {
        matches!(
            self,
            Error::RemoteVersion { .. } | Error::RemoteBuild { .. }
        )
    }

    /// What was asked cannot be done with a remote template (passing
    /// descriptors, among others).
    pub fn is_remote_unsupported(&self) -> bool {
        matches!(self, Error::RemoteUnsupported { .. })
    }

    /// The connection to a remote template was lost ([`Error::RemoteLost`]).
    pub fn is_remote_lost(&self) -> bool {
        matches!(self, Error::RemoteLost { .. })
    }
}

/// `Result` with fork-core's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A failure that many waiters share (all requests pending on a connection,
/// every worker of a template). Cheap to clone, turned into an [`Error`] for
/// each waiter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    Gone(Option<ExitStatus>),
    /// Gone before it said it serves.
    NotStarted(Option<ExitStatus>),
    InitFailed {
        name: String,
        message: String,
    },
    Protocol(String),
    Io(io::ErrorKind, String),
    /// Not possible with a remote template.
    RemoteUnsupported(&'static str),
    /// The connection to a remote template was lost.
    RemoteLost {
        host: String,
        cause: LostCause,
    },
}

impl Failure {
    pub(crate) fn to_error(&self) -> Error {
        match self {
            Failure::Gone(status) => Error::TemplateGone { status: *status },
            Failure::NotStarted(status) => Error::TemplateNotStarted { status: *status },
            Failure::InitFailed { name, message } => Error::InitFailed {
                name: name.clone(),
                message: message.clone(),
            },
            Failure::Protocol(m) => Error::Protocol(m.clone()),
            Failure::Io(kind, m) => Error::Io(io::Error::new(*kind, m.clone())),
            Failure::RemoteUnsupported(what) => Error::RemoteUnsupported { what },
            Failure::RemoteLost { host, cause } => Error::RemoteLost {
                host: host.clone(),
                cause: cause.clone(),
            },
        }
    }

    pub(crate) fn io(e: &io::Error) -> Failure {
        Failure::Io(e.kind(), e.to_string())
    }
}
