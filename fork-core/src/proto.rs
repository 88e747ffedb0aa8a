//! The control protocol between a parent and a template process.
//!
//! Everything here is pure: bytes in, values out. The I/O lives in
//! [`crate::sys::scm`], the template loop in [`crate::template::serve`] and the
//! parent side in [`crate::template::conn`].
//!
//! # Framing
//!
//! The control socket is a `SOCK_SEQPACKET` pair, so a frame and the file
//! descriptors sent with it arrive together. A frame is an 8-byte header and a
//! payload:
//!
//! ```text
//! 0      1        2      3      4               8
//! +------+--------+------+------+---------------+--------------
//! | 'f'  | ver=2  | flags| nfds |  len (u32 LE) | payload (len bytes)
//! +------+--------+------+------+---------------+--------------
//! ```
//!
//! `flags` bit 0 (`MORE`) says the message continues in the next frame: big
//! messages (large arguments, more than [`MAX_FDS_PER_FRAME`] descriptors) are
//! split into frames of at most [`MAX_FRAME_PAYLOAD`] bytes and reassembled by
//! an [`Assembler`], which enforces a limit on the whole message. `nfds` is the
//! number of descriptors the sender attached to this frame; a mismatch with what
//! arrived (for example a truncated control message) is a protocol error.
//!
//! # Messages
//!
//! A reassembled message is a sequence of records, each a tag byte followed by
//! its fields. Integers are little-endian; byte strings and names are a `u32`
//! length and the bytes. Requests flow from the parent to the template,
//! replies back; several records may share one message, which is how both
//! sides batch.

use std::fmt;

/// First byte of every frame.
pub(crate) const MAGIC: u8 = b'f';
/// Protocol version carried in every frame. 2: a template's first reply is
/// [`Reply::Ready`].
pub(crate) const VERSION: u8 = 2;
/// Size of a frame header.
pub(crate) const HEADER_LEN: usize = 8;
/// Largest payload of a single frame; bigger messages are split.
pub(crate) const MAX_FRAME_PAYLOAD: usize = 64 * 1024;
/// Most descriptors attached to one frame (the kernel's `SCM_MAX_FD` is 253).
pub(crate) const MAX_FDS_PER_FRAME: usize = 250;
/// Default limit on a reassembled message.
pub(crate) const DEFAULT_MAX_MESSAGE: usize = 64 * 1024 * 1024;
/// Flag: the message continues in the next frame.
pub(crate) const FLAG_MORE: u8 = 1;

/// A protocol violation: what was wrong with the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProtoError(pub(crate) String);

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn err<T>(msg: impl Into<String>) -> Result<T, ProtoError> {
    Err(ProtoError(msg.into()))
}

// ===== frames =====

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) more: bool,
    pub(crate) nfds: usize,
    pub(crate) len: usize,
}

/// Encodes a frame header.
pub(crate) fn encode_header(h: Header) -> [u8; HEADER_LEN] {
    debug_assert!(h.nfds <= MAX_FDS_PER_FRAME && h.len <= MAX_FRAME_PAYLOAD);
    let len = (h.len as u32).to_le_bytes();
    [
        MAGIC,
        VERSION,
        if h.more { FLAG_MORE } else { 0 },
        h.nfds as u8,
        len[0],
        len[1],
        len[2],
        len[3],
    ]
}

/// Decodes and checks a whole frame (header and payload) as received.
pub(crate) fn decode_frame(frame: &[u8]) -> Result<(Header, &[u8]), ProtoError> {
    if frame.len() < HEADER_LEN {
        return err(format!("short frame: {} bytes", frame.len()));
    }
    if frame[0] != MAGIC {
        return err(format!("bad magic byte {:#04x}", frame[0]));
    }
    if frame[1] != VERSION {
        return err(format!(
            "unsupported protocol version {} (expected {VERSION})",
            frame[1]
        ));
    }
    if frame[2] & !FLAG_MORE != 0 {
        return err(format!("unknown frame flags {:#04x}", frame[2]));
    }
    let len = u32::from_le_bytes(frame[4..8].try_into().expect("4 bytes")) as usize;
    if len > MAX_FRAME_PAYLOAD {
        return err(format!(
            "frame payload of {len} bytes exceeds {MAX_FRAME_PAYLOAD}"
        ));
    }
    let payload = &frame[HEADER_LEN..];
    if payload.len() != len {
        return err(format!(
            "frame says {len} payload bytes but carries {}",
            payload.len()
        ));
    }
    let header = Header {
        more: frame[2] & FLAG_MORE != 0,
        nfds: frame[3] as usize,
        len,
    };
    Ok((header, payload))
}

/// Splits a message into frames: `(header, payload range, fd range)` triples.
///
/// Every frame carries at most [`MAX_FRAME_PAYLOAD`] bytes and
/// [`MAX_FDS_PER_FRAME`] descriptors; an empty message still makes one frame.
pub(crate) fn split(
    payload_len: usize,
    nfds: usize,
) -> impl Iterator<Item = (Header, std::ops::Range<usize>, std::ops::Range<usize>)> {
    let frames = payload_len
        .div_ceil(MAX_FRAME_PAYLOAD)
        .max(nfds.div_ceil(MAX_FDS_PER_FRAME))
        .max(1);
    (0..frames).map(move |i| {
        let b0 = (i * MAX_FRAME_PAYLOAD).min(payload_len);
        let b1 = ((i + 1) * MAX_FRAME_PAYLOAD).min(payload_len);
        let f0 = (i * MAX_FDS_PER_FRAME).min(nfds);
        let f1 = ((i + 1) * MAX_FDS_PER_FRAME).min(nfds);
        let header = Header {
            more: i + 1 < frames,
            nfds: f1 - f0,
            len: b1 - b0,
        };
        (header, b0..b1, f0..f1)
    })
}

/// A reassembled message: its payload and descriptors.
pub(crate) type Message<F> = (Vec<u8>, Vec<F>);

/// Reassembles frames into messages, carrying the descriptors along.
///
/// `F` is the descriptor type (an `OwnedFd` in the real code): the assembler
/// owns descriptors of a partial message, so they are closed if it is dropped.
#[derive(Debug)]
pub(crate) struct Assembler<F> {
    buf: Vec<u8>,
    fds: Vec<F>,
    limit: usize,
}

impl<F> Assembler<F> {
    pub(crate) fn new(limit: usize) -> Self {
        Assembler {
            buf: Vec::new(),
            fds: Vec::new(),
            limit,
        }
    }

    /// Adds one received frame. Returns the whole message once its last frame
    /// arrived. On error the partial message is discarded.
    pub(crate) fn push(
        &mut self,
        frame: &[u8],
        fds: Vec<F>,
    ) -> Result<Option<Message<F>>, ProtoError> {
        let result = self.push_inner(frame, fds);
        if result.is_err() {
            self.buf = Vec::new();
            self.fds = Vec::new();
        }
        result
    }

    fn push_inner(&mut self, frame: &[u8], fds: Vec<F>) -> Result<Option<Message<F>>, ProtoError> {
        let (header, payload) = decode_frame(frame)?;
        if header.nfds != fds.len() {
            return err(format!(
                "frame announces {} descriptors but {} arrived",
                header.nfds,
                fds.len()
            ));
        }
        if self.buf.len() + payload.len() > self.limit {
            return err(format!("message exceeds the limit of {} bytes", self.limit));
        }
        self.buf.extend_from_slice(payload);
        self.fds.extend(fds);
        if header.more {
            Ok(None)
        } else {
            Ok(Some((
                std::mem::take(&mut self.buf),
                std::mem::take(&mut self.fds),
            )))
        }
    }
}

// ===== records =====

/// A preparation step, applied in order inside a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    /// Append an argument (opaque bytes).
    Arg(Vec<u8>),
    /// Append the next descriptor of the message to the process's descriptors.
    Fd,
    /// Run a registered init function with its encoded argument.
    Init { name: String, arg: Vec<u8> },
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
}

mod tag {
    pub(super) const PREPARE: u8 = 0x01;
    pub(super) const SPAWN: u8 = 0x02;
    pub(super) const KILL: u8 = 0x03;
    pub(super) const PING: u8 = 0x04;

    pub(super) const OP_ARG: u8 = 0x01;
    pub(super) const OP_FD: u8 = 0x02;
    pub(super) const OP_INIT: u8 = 0x03;

    pub(super) const THEN_RUN: u8 = 0x01;
    pub(super) const THEN_TEMPLATE: u8 = 0x02;
    pub(super) const THEN_EXEC: u8 = 0x03;

    pub(super) const SPAWNED: u8 = 0x81;
    pub(super) const SPAWN_FAILED: u8 = 0x82;
    pub(super) const EXITED: u8 = 0x83;
    pub(super) const INIT_FAILED: u8 = 0x84;
    pub(super) const PONG: u8 = 0x85;
    pub(super) const PROTOCOL_ERROR: u8 = 0x86;
    pub(super) const READY: u8 = 0x87;

    pub(super) const FAIL_FORK: u8 = 1;
    pub(super) const FAIL_UNKNOWN: u8 = 2;
    pub(super) const FAIL_DUPLICATE: u8 = 3;
    pub(super) const FAIL_BAD: u8 = 4;
}

// ===== encoding =====

/// Appends records to a byte buffer.
#[derive(Debug, Default)]
pub(crate) struct Writer {
    pub(crate) buf: Vec<u8>,
    /// Set when a field was too long to encode (over 4 GiB); the message is
    /// then invalid and must not be sent.
    pub(crate) overflow: bool,
}

impl Writer {
    fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn i32(&mut self, v: i32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, v: &[u8]) {
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
    fn opt_bytes(&mut self, v: Option<&[u8]>) {
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
        }
    }
}

// ===== decoding =====

/// Reads records from a message, never trusting a length it was given.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtoError> {
        if self.buf.len() < n {
            return err(format!(
                "truncated message: wanted {n} more bytes, {} left",
                self.buf.len()
            ));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, ProtoError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, ProtoError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn i32(&mut self) -> Result<i32, ProtoError> {
        Ok(i32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64, ProtoError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn bool(&mut self) -> Result<bool, ProtoError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            b => err(format!("bad boolean byte {b}")),
        }
    }
    fn bytes(&mut self) -> Result<Vec<u8>, ProtoError> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
    fn string(&mut self) -> Result<String, ProtoError> {
        String::from_utf8(self.bytes()?).or_else(|_| err("a name is not UTF-8"))
    }
    fn opt_bytes(&mut self) -> Result<Option<Vec<u8>>, ProtoError> {
        Ok(if self.bool()? {
            Some(self.bytes()?)
        } else {
            None
        })
    }
    /// A count of items that each take at least `min` bytes: bounded by what
    /// is left, so a forged count cannot make us allocate.
    fn count(&mut self, min: usize) -> Result<usize, ProtoError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min) > self.buf.len() {
            return err(format!("count {n} exceeds the message"));
        }
        Ok(n)
    }

    fn ops(&mut self) -> Result<Vec<Op>, ProtoError> {
        let n = self.count(1)?;
        let mut ops = Vec::with_capacity(n);
        for _ in 0..n {
            ops.push(match self.u8()? {
                tag::OP_ARG => Op::Arg(self.bytes()?),
                tag::OP_FD => Op::Fd,
                tag::OP_INIT => Op::Init {
                    name: self.string()?,
                    arg: self.bytes()?,
                },
                t => return err(format!("unknown step tag {t:#04x}")),
            });
        }
        Ok(ops)
    }

    /// Reads the next request record.
    pub(crate) fn request(&mut self) -> Result<Request, ProtoError> {
        Ok(match self.u8()? {
            tag::PREPARE => Request::Prepare(self.ops()?),
            tag::SPAWN => {
                let id = self.u64()?;
                let ack = self.bool()?;
                let ops = self.ops()?;
                let then = match self.u8()? {
                    tag::THEN_RUN => Then::Run(self.string()?),
                    tag::THEN_TEMPLATE => Then::Template,
                    tag::THEN_EXEC => Then::Exec(self.exec()?),
                    t => return err(format!("unknown spawn action {t:#04x}")),
                };
                Request::Spawn { id, ack, ops, then }
            }
            tag::KILL => Request::Kill {
                pid: self.i32()?,
                signal: self.i32()?,
            },
            tag::PING => Request::Ping { id: self.u64()? },
            t => return err(format!("unknown request tag {t:#04x}")),
        })
    }

    fn exec(&mut self) -> Result<ExecSpec, ProtoError> {
        let program = self.bytes()?;
        let n = self.count(4)?;
        let args = (0..n).map(|_| self.bytes()).collect::<Result<_, _>>()?;
        let env_clear = self.bool()?;
        let n = self.count(5)?;
        let env = (0..n)
            .map(|_| Ok((self.bytes()?, self.opt_bytes()?)))
            .collect::<Result<_, ProtoError>>()?;
        let cwd = self.opt_bytes()?;
        let mut stdio = [None; 3];
        for s in &mut stdio {
            *s = if self.bool()? {
                Some(self.u32()?)
            } else {
                None
            };
        }
        Ok(ExecSpec {
            program,
            args,
            env_clear,
            env,
            cwd,
            stdio,
        })
    }

    /// Reads the next reply record.
    pub(crate) fn reply(&mut self) -> Result<Reply, ProtoError> {
        Ok(match self.u8()? {
            tag::SPAWNED => Reply::Spawned {
                id: self.u64()?,
                pid: self.i32()?,
            },
            tag::SPAWN_FAILED => {
                let id = self.u64()?;
                let failure = match self.u8()? {
                    tag::FAIL_FORK => SpawnFailure::Fork(self.i32()?),
                    tag::FAIL_UNKNOWN => SpawnFailure::UnknownEntry(self.string()?),
                    tag::FAIL_DUPLICATE => SpawnFailure::DuplicateEntry(self.string()?),
                    tag::FAIL_BAD => SpawnFailure::BadRequest(self.string()?),
                    t => return err(format!("unknown failure kind {t:#04x}")),
                };
                Reply::SpawnFailed { id, failure }
            }
            tag::EXITED => Reply::Exited {
                pid: self.i32()?,
                status: self.i32()?,
            },
            tag::INIT_FAILED => Reply::InitFailed {
                name: self.string()?,
                message: self.string()?,
            },
            tag::PONG => Reply::Pong { id: self.u64()? },
            tag::PROTOCOL_ERROR => Reply::ProtocolError {
                message: self.string()?,
            },
            tag::READY => Reply::Ready,
            t => return err(format!("unknown reply tag {t:#04x}")),
        })
    }
}

/// Counts the descriptors a request consumes from its message.
pub(crate) fn fds_needed(req: &Request) -> usize {
    let ops = |ops: &[Op]| ops.iter().filter(|o| matches!(o, Op::Fd)).count();
    match req {
        Request::Prepare(o) => ops(o),
        Request::Spawn { ops: o, .. } => 1 + ops(o),
        Request::Kill { .. } | Request::Ping { .. } => 0,
    }
}

// ===== the worker-socket acknowledgement =====

/// What a forked process reports on its own (stream) socket before it starts,
/// when the parent asked for it: `[status u8][len u32 LE][message]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ack {
    /// Preparation succeeded; the entry starts now.
    Ready,
    /// An init function failed: its name and message.
    InitFailed { name: String, message: String },
    /// `execvp` failed with this errno.
    ExecFailed(i32),
}

/// Size of the fixed part of an [`Ack`].
pub(crate) const ACK_HEADER: usize = 5;
/// Largest [`Ack`] message accepted.
pub(crate) const MAX_ACK: usize = 64 * 1024;

impl Ack {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let (status, body) = match self {
            Ack::Ready => (0u8, Vec::new()),
            Ack::InitFailed { name, message } => {
                let mut w = Writer::default();
                w.bytes(name.as_bytes());
                w.bytes(message.as_bytes());
                (1, w.buf)
            }
            Ack::ExecFailed(errno) => (2, errno.to_le_bytes().to_vec()),
        };
        let body = &body[..body.len().min(MAX_ACK)];
        let mut out = Vec::with_capacity(ACK_HEADER + body.len());
        out.push(status);
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(body);
        out
    }

    /// Decodes the fixed part: the status byte and body length.
    pub(crate) fn decode_header(h: [u8; ACK_HEADER]) -> Result<(u8, usize), ProtoError> {
        let len = u32::from_le_bytes(h[1..5].try_into().expect("4")) as usize;
        if h[0] > 2 {
            return err(format!("unknown acknowledgement status {}", h[0]));
        }
        if len > MAX_ACK {
            return err(format!("acknowledgement of {len} bytes is too long"));
        }
        Ok((h[0], len))
    }

    pub(crate) fn decode_body(status: u8, body: &[u8]) -> Result<Ack, ProtoError> {
        let mut r = Reader::new(body);
        let ack = match status {
            0 => Ack::Ready,
            1 => Ack::InitFailed {
                name: r.string()?,
                message: r.string()?,
            },
            2 => Ack::ExecFailed(r.i32()?),
            s => return err(format!("unknown acknowledgement status {s}")),
        };
        if !r.is_empty() {
            return err("trailing bytes after an acknowledgement");
        }
        Ok(ack)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip_request(req: Request) {
        let mut w = Writer::default();
        w.request(&req);
        let mut r = Reader::new(&w.buf);
        assert_eq!(r.request().unwrap(), req);
        assert!(r.is_empty());
    }

    fn roundtrip_reply(reply: Reply) {
        let mut w = Writer::default();
        w.reply(&reply);
        let mut r = Reader::new(&w.buf);
        assert_eq!(r.reply().unwrap(), reply);
        assert!(r.is_empty());
    }

    #[test]
    fn header_bytes() {
        let h = Header {
            more: true,
            nfds: 3,
            len: 0x0102,
        };
        assert_eq!(encode_header(h), [b'f', 2, 1, 3, 0x02, 0x01, 0, 0]);
        let mut frame = encode_header(h).to_vec();
        frame.extend(std::iter::repeat_n(7u8, 0x102));
        assert_eq!(decode_frame(&frame).unwrap().0, h);
    }

    #[test]
    fn frame_errors() {
        assert!(decode_frame(&[b'f', 2, 0]).unwrap_err().0.contains("short"));
        assert!(
            decode_frame(&[b'x', 2, 0, 0, 0, 0, 0, 0])
                .unwrap_err()
                .0
                .contains("magic")
        );
        assert!(
            decode_frame(&[b'f', 9, 0, 0, 0, 0, 0, 0])
                .unwrap_err()
                .0
                .contains("version")
        );
        assert!(
            decode_frame(&[b'f', 2, 4, 0, 0, 0, 0, 0])
                .unwrap_err()
                .0
                .contains("flags")
        );
        assert!(
            decode_frame(&[b'f', 2, 0, 0, 5, 0, 0, 0])
                .unwrap_err()
                .0
                .contains("carries")
        );
        assert!(
            decode_frame(&[b'f', 2, 0, 0, 0, 0, 0, 1])
                .unwrap_err()
                .0
                .contains("exceeds")
        );
    }

    #[test]
    fn spawn_request_bytes() {
        let mut w = Writer::default();
        w.request(&Request::Spawn {
            id: 7,
            ack: false,
            ops: vec![],
            then: Then::Run("e".into()),
        });
        assert_eq!(
            w.buf,
            [
                0x02, 7, 0, 0, 0, 0, 0, 0, 0, // tag, id
                0, // ack
                0, 0, 0, 0, // no ops
                0x01, 1, 0, 0, 0, b'e' // run "e"
            ]
        );
    }

    #[test]
    fn requests_roundtrip() {
        roundtrip_request(Request::Prepare(vec![
            Op::Arg(b"hello".to_vec()),
            Op::Fd,
            Op::Init {
                name: "m::init".into(),
                arg: vec![1, 2, 3],
            },
        ]));
        roundtrip_request(Request::Spawn {
            id: u64::MAX,
            ack: true,
            ops: vec![Op::Fd, Op::Arg(vec![])],
            then: Then::Template,
        });
        roundtrip_request(Request::Spawn {
            id: 1,
            ack: true,
            ops: vec![],
            then: Then::Exec(ExecSpec {
                program: b"ls".to_vec(),
                args: vec![b"ls".to_vec(), b"-l".to_vec()],
                env_clear: true,
                env: vec![(b"A".to_vec(), Some(b"1".to_vec())), (b"B".to_vec(), None)],
                cwd: Some(b"/tmp".to_vec()),
                stdio: [None, Some(0), Some(1)],
            }),
        });
        roundtrip_request(Request::Kill { pid: 42, signal: 9 });
        roundtrip_request(Request::Ping { id: 3 });
    }

    #[test]
    fn replies_roundtrip() {
        roundtrip_reply(Reply::Spawned { id: 1, pid: 99 });
        for failure in [
            SpawnFailure::Fork(11),
            SpawnFailure::UnknownEntry("x".into()),
            SpawnFailure::DuplicateEntry("y".into()),
            SpawnFailure::BadRequest("z".into()),
        ] {
            roundtrip_reply(Reply::SpawnFailed { id: 2, failure });
        }
        roundtrip_reply(Reply::Exited {
            pid: 5,
            status: 0x0900,
        });
        roundtrip_reply(Reply::InitFailed {
            name: "n".into(),
            message: "m".into(),
        });
        roundtrip_reply(Reply::Pong { id: 4 });
        roundtrip_reply(Reply::ProtocolError {
            message: "bad".into(),
        });
        roundtrip_reply(Reply::Ready);
        // The ready reply is its tag alone.
        let mut w = Writer::default();
        w.reply(&Reply::Ready);
        assert_eq!(w.buf, [0x87]);
    }

    #[test]
    fn truncated_and_forged_records_are_errors() {
        let mut w = Writer::default();
        w.request(&Request::Prepare(vec![Op::Arg(vec![0; 10])]));
        for cut in 0..w.buf.len() {
            assert!(
                Reader::new(&w.buf[..cut]).request().is_err(),
                "cut at {cut}"
            );
        }
        // A forged count must not allocate: 4 billion ops in a 5-byte message.
        let forged = [tag::PREPARE, 0xff, 0xff, 0xff, 0xff];
        assert!(
            Reader::new(&forged)
                .request()
                .unwrap_err()
                .0
                .contains("count")
        );
        // A forged length must not read past the end.
        let forged = [
            tag::PREPARE,
            1,
            0,
            0,
            0,
            tag::OP_ARG,
            0xff,
            0xff,
            0xff,
            0x7f,
        ];
        assert!(
            Reader::new(&forged)
                .request()
                .unwrap_err()
                .0
                .contains("truncated")
        );
        assert!(
            Reader::new(&[0x55])
                .request()
                .unwrap_err()
                .0
                .contains("unknown")
        );
        assert!(
            Reader::new(&[0x55])
                .reply()
                .unwrap_err()
                .0
                .contains("unknown")
        );
    }

    #[test]
    fn split_and_assemble() {
        let payload: Vec<u8> = (0..(MAX_FRAME_PAYLOAD * 2 + 10)).map(|i| i as u8).collect();
        let nfds = MAX_FDS_PER_FRAME + 3;
        let fds: Vec<usize> = (0..nfds).collect();
        let parts: Vec<_> = split(payload.len(), nfds).collect();
        assert_eq!(parts.len(), 3);
        let mut asm = Assembler::new(DEFAULT_MAX_MESSAGE);
        let mut out = None;
        for (h, b, f) in parts {
            let mut frame = encode_header(h).to_vec();
            frame.extend_from_slice(&payload[b]);
            assert!(out.is_none());
            out = asm.push(&frame, fds[f].to_vec()).unwrap();
        }
        let (p, f) = out.unwrap();
        assert_eq!(p, payload);
        assert_eq!(f, fds);
        // An empty message is one frame.
        assert_eq!(split(0, 0).count(), 1);
    }

    #[test]
    fn assembler_limits() {
        let mut asm: Assembler<()> = Assembler::new(10);
        let mut frame = encode_header(Header {
            more: true,
            nfds: 0,
            len: 8,
        })
        .to_vec();
        frame.extend([0; 8]);
        assert!(asm.push(&frame, vec![]).unwrap().is_none());
        assert!(asm.push(&frame, vec![]).unwrap_err().0.contains("limit"));
        // A descriptor count that does not match what arrived.
        let frame = encode_header(Header {
            more: false,
            nfds: 2,
            len: 0,
        });
        assert!(
            asm.push(&frame, vec![()])
                .unwrap_err()
                .0
                .contains("descriptors")
        );
    }

    #[test]
    fn acks() {
        for ack in [
            Ack::Ready,
            Ack::InitFailed {
                name: "a".into(),
                message: "b".into(),
            },
            Ack::ExecFailed(2),
        ] {
            let bytes = ack.encode();
            let (s, len) = Ack::decode_header(bytes[..ACK_HEADER].try_into().unwrap()).unwrap();
            assert_eq!(len, bytes.len() - ACK_HEADER);
            assert_eq!(Ack::decode_body(s, &bytes[ACK_HEADER..]).unwrap(), ack);
        }
        assert_eq!(Ack::Ready.encode(), [0, 0, 0, 0, 0]);
        assert!(Ack::decode_header([9, 0, 0, 0, 0]).is_err());
        assert!(Ack::decode_header([0, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(Ack::decode_body(0, &[1]).is_err());
    }

    #[test]
    fn fd_counting() {
        let req = Request::Spawn {
            id: 0,
            ack: false,
            ops: vec![Op::Fd, Op::Arg(vec![]), Op::Fd],
            then: Then::Template,
        };
        assert_eq!(fds_needed(&req), 3);
        assert_eq!(fds_needed(&Request::Ping { id: 0 }), 0);
    }
}
