//! The records a message is made of: requests (parent to template) and
//! replies (template to parent), and their tags on the wire.

/// A preparation step, applied in order inside a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    /// Append an argument (opaque bytes).
    Arg(Vec<u8>),
    /// Append the next descriptor of the message to the process's descriptors.
    Fd,
    /// Run a registered init function with its encoded argument.
    Init { name: String, arg: Vec<u8> },
    /// Append to the data of the slot of the layer that runs the entry
    /// (`Fork::slot`); ignored by a template.
    SlotData(Vec<u8>),
    /// Append the next descriptor of the message to that slot's descriptors
    /// (closed by a template).
    SlotFd,
}

impl Op {
    /// Whether the step takes the next descriptor of its message.
    pub(crate) fn takes_fd(&self) -> bool {
        matches!(self, Op::Fd | Op::SlotFd)
    }
}

/// What a forked process does once its preparation steps ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Then {
    /// Call the registered entry function.
    Run(String),
    /// Serve this protocol on the socket (a new template).
    Template,
    /// Replace the process image.
    Exec(ExecSpec),
}

/// A command line to `execvp` in a forked process.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct ExecSpec {
    pub(crate) program: Vec<u8>,
    pub(crate) args: Vec<Vec<u8>>,
    pub(crate) env_clear: bool,
    /// `(key, Some(value))` sets, `(key, None)` removes.
    pub(crate) env: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    pub(crate) cwd: Option<Vec<u8>>,
    /// For stdin, stdout, stderr: index into the process's descriptors to
    /// install there, or `None` to keep the template's.
    pub(crate) stdio: [Option<u32>; 3],
}

/// Parent → template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Request {
    /// Apply steps to the template itself.
    Prepare(Vec<Op>),
    /// Fork. The first descriptor of the message is the child's socket; the
    /// child applies `ops`, then does `then`. With `ack`, the child reports on
    /// its socket once the steps succeeded (see [`Ack`]).
    Spawn {
        id: u64,
        ack: bool,
        ops: Vec<Op>,
        then: Then,
    },
    /// Send a signal to a child that has not been reaped yet.
    Kill { pid: i32, signal: i32 },
    /// Answered with [`Reply::Pong`] once everything before it was applied.
    Ping { id: u64 },
    /// The holder of the socket hands it to another process, or took it
    /// from one (`Template::into_fd` / `from_fd`): the template stops dying
    /// with the process that started it (it lives until its socket's EOF),
    /// and answers [`Reply::Released`] with its pid once everything before
    /// was applied.
    Release { id: u64 },
}

/// Why a spawn failed inside the template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SpawnFailure {
    /// `fork()` failed with this errno.
    Fork(i32),
    /// No entry is registered under this name.
    UnknownEntry(String),
    /// More than one entry is registered under this name.
    DuplicateEntry(String),
    /// The request was inconsistent (for example missing descriptors).
    BadRequest(String),
}

/// Template → parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    Spawned {
        id: u64,
        pid: i32,
    },
    SpawnFailed {
        id: u64,
        failure: SpawnFailure,
    },
    /// A child was reaped; `status` is the raw `waitpid` status.
    Exited {
        pid: i32,
        status: i32,
    },
    /// An init function failed in the template; the template exits after this.
    InitFailed {
        name: String,
        message: String,
    },
    Pong {
        id: u64,
    },
    /// The template received bytes it could not accept; it exits after this.
    ProtocolError {
        message: String,
    },
    /// The first reply of every template: it reached `init` and serves.
    Ready,
    /// The answer to [`Request::Release`]: the template's pid.
    Released {
        id: u64,
        pid: i32,
    },
}

pub(super) mod tag {
    pub(in crate::proto) const PREPARE: u8 = 0x01;
    pub(in crate::proto) const SPAWN: u8 = 0x02;
    pub(in crate::proto) const KILL: u8 = 0x03;
    pub(in crate::proto) const PING: u8 = 0x04;
    pub(in crate::proto) const RELEASE: u8 = 0x05;

    pub(in crate::proto) const OP_ARG: u8 = 0x01;
    pub(in crate::proto) const OP_FD: u8 = 0x02;
    pub(in crate::proto) const OP_INIT: u8 = 0x03;
    pub(in crate::proto) const OP_SLOT_DATA: u8 = 0x04;
    pub(in crate::proto) const OP_SLOT_FD: u8 = 0x05;

    pub(in crate::proto) const THEN_RUN: u8 = 0x01;
    pub(in crate::proto) const THEN_TEMPLATE: u8 = 0x02;
    pub(in crate::proto) const THEN_EXEC: u8 = 0x03;

    pub(in crate::proto) const SPAWNED: u8 = 0x81;
    pub(in crate::proto) const SPAWN_FAILED: u8 = 0x82;
    pub(in crate::proto) const EXITED: u8 = 0x83;
    pub(in crate::proto) const INIT_FAILED: u8 = 0x84;
    pub(in crate::proto) const PONG: u8 = 0x85;
    pub(in crate::proto) const PROTOCOL_ERROR: u8 = 0x86;
    pub(in crate::proto) const READY: u8 = 0x87;
    pub(in crate::proto) const RELEASED: u8 = 0x88;

    pub(in crate::proto) const FAIL_FORK: u8 = 1;
    pub(in crate::proto) const FAIL_UNKNOWN: u8 = 2;
    pub(in crate::proto) const FAIL_DUPLICATE: u8 = 3;
    pub(in crate::proto) const FAIL_BAD: u8 = 4;
}

/// Counts the descriptors a request consumes from its message.
pub(crate) fn fds_needed(req: &Request) -> usize {
    let ops = |ops: &[Op]| ops.iter().filter(|o| o.takes_fd()).count();
    match req {
        Request::Prepare(o) => ops(o),
        Request::Spawn { ops: o, .. } => 1 + ops(o),
        Request::Kill { .. } | Request::Ping { .. } | Request::Release { .. } => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd_counting() {
        let req = Request::Spawn {
            id: 0,
            ack: false,
            ops: vec![Op::Fd, Op::Arg(vec![]), Op::SlotFd, Op::Fd],
            then: Then::Template,
        };
        assert_eq!(fds_needed(&req), 4);
        assert_eq!(fds_needed(&Request::Ping { id: 0 }), 0);
    }
}
