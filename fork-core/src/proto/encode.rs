//! Encoding records into a message.

use super::message::{ExecSpec, Op, Reply, Request, SpawnFailure, Then, tag};

/// Appends records to a byte buffer.
#[derive(Debug, Default)]
pub(crate) struct Writer {
    pub(crate) buf: Vec<u8>,
    /// Set when a field was too long to encode (over 4 GiB); the message is
    /// then invalid and must not be sent.
    pub(crate) overflow: bool,
}

impl Writer {
    pub(super) fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub(super) fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(super) fn i32(&mut self, v: i32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(super) fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(super) fn bytes(&mut self, v: &[u8]) {
        match u32::try_from(v.len()) {
            Ok(len) => {
                self.u32(len);
                self.buf.extend_from_slice(v);
            }
            Err(_) => {
                self.overflow = true;
                self.u32(0);
            }
        }
    }
    pub(super) fn opt_bytes(&mut self, v: Option<&[u8]>) {
        match v {
            None => self.u8(0),
            Some(v) => {
                self.u8(1);
                self.bytes(v);
            }
        }
    }

    fn ops(&mut self, ops: &[Op]) {
        self.u32(ops.len() as u32);
        for op in ops {
            match op {
                Op::Arg(a) => {
                    self.u8(tag::OP_ARG);
                    self.bytes(a);
                }
                Op::Fd => self.u8(tag::OP_FD),
                Op::SlotData(d) => {
                    self.u8(tag::OP_SLOT_DATA);
                    self.bytes(d);
                }
                Op::SlotFd => self.u8(tag::OP_SLOT_FD),
                Op::Init { name, arg } => {
                    self.u8(tag::OP_INIT);
                    self.bytes(name.as_bytes());
                    self.bytes(arg);
                }
            }
        }
    }

    /// Appends one request record.
    pub(crate) fn request(&mut self, req: &Request) {
        match req {
            Request::Prepare(ops) => {
                self.u8(tag::PREPARE);
                self.ops(ops);
            }
            Request::Spawn { id, ack, ops, then } => {
                self.u8(tag::SPAWN);
                self.u64(*id);
                self.u8(u8::from(*ack));
                self.ops(ops);
                match then {
                    Then::Run(name) => {
                        self.u8(tag::THEN_RUN);
                        self.bytes(name.as_bytes());
                    }
                    Then::Template => self.u8(tag::THEN_TEMPLATE),
                    Then::Exec(spec) => {
                        self.u8(tag::THEN_EXEC);
                        self.exec(spec);
                    }
                }
            }
            Request::Kill { pid, signal } => {
                self.u8(tag::KILL);
                self.i32(*pid);
                self.i32(*signal);
            }
            Request::Ping { id } => {
                self.u8(tag::PING);
                self.u64(*id);
            }
            Request::Release { id } => {
                self.u8(tag::RELEASE);
                self.u64(*id);
            }
        }
    }

    fn exec(&mut self, spec: &ExecSpec) {
        self.bytes(&spec.program);
        self.u32(spec.args.len() as u32);
        for a in &spec.args {
            self.bytes(a);
        }
        self.u8(u8::from(spec.env_clear));
        self.u32(spec.env.len() as u32);
        for (k, v) in &spec.env {
            self.bytes(k);
            self.opt_bytes(v.as_deref());
        }
        self.opt_bytes(spec.cwd.as_deref());
        for s in spec.stdio {
            match s {
                None => self.u8(0),
                Some(i) => {
                    self.u8(1);
                    self.u32(i);
                }
            }
        }
    }

    /// Appends one reply record.
    pub(crate) fn reply(&mut self, reply: &Reply) {
        match reply {
            Reply::Spawned { id, pid } => {
                self.u8(tag::SPAWNED);
                self.u64(*id);
                self.i32(*pid);
            }
            Reply::SpawnFailed { id, failure } => {
                self.u8(tag::SPAWN_FAILED);
                self.u64(*id);
                match failure {
                    SpawnFailure::Fork(errno) => {
                        self.u8(tag::FAIL_FORK);
                        self.i32(*errno);
                    }
                    SpawnFailure::UnknownEntry(name) => {
                        self.u8(tag::FAIL_UNKNOWN);
                        self.bytes(name.as_bytes());
                    }
                    SpawnFailure::DuplicateEntry(name) => {
                        self.u8(tag::FAIL_DUPLICATE);
                        self.bytes(name.as_bytes());
                    }
                    SpawnFailure::BadRequest(msg) => {
                        self.u8(tag::FAIL_BAD);
                        self.bytes(msg.as_bytes());
                    }
                }
            }
            Reply::Exited { pid, status } => {
                self.u8(tag::EXITED);
                self.i32(*pid);
                self.i32(*status);
            }
            Reply::InitFailed { name, message } => {
                self.u8(tag::INIT_FAILED);
                self.bytes(name.as_bytes());
                self.bytes(message.as_bytes());
            }
            Reply::Pong { id } => {
                self.u8(tag::PONG);
                self.u64(*id);
            }
            Reply::ProtocolError { message } => {
                self.u8(tag::PROTOCOL_ERROR);
                self.bytes(message.as_bytes());
            }
            Reply::Ready => self.u8(tag::READY),
            Reply::Released { id, pid } => {
                self.u8(tag::RELEASED);
                self.u64(*id);
                self.i32(*pid);
            }
        }
    }
}
