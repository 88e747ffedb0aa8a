//! Decoding records from a message, never trusting a length it carries.

use super::message::{ExecSpec, Op, Reply, Request, SpawnFailure, Then, tag};
use super::{ProtoError, err};

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

    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], ProtoError> {
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
    pub(super) fn u8(&mut self) -> Result<u8, ProtoError> {
        Ok(self.take(1)?[0])
    }
    pub(super) fn u32(&mut self) -> Result<u32, ProtoError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    pub(super) fn i32(&mut self) -> Result<i32, ProtoError> {
        Ok(i32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    pub(super) fn u64(&mut self) -> Result<u64, ProtoError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    pub(super) fn bool(&mut self) -> Result<bool, ProtoError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            b => err(format!("bad boolean byte {b}")),
        }
    }
    pub(super) fn bytes(&mut self) -> Result<Vec<u8>, ProtoError> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
    pub(super) fn string(&mut self) -> Result<String, ProtoError> {
        String::from_utf8(self.bytes()?).or_else(|_| err("a name is not UTF-8"))
    }
    pub(super) fn opt_bytes(&mut self) -> Result<Option<Vec<u8>>, ProtoError> {
        Ok(if self.bool()? {
            Some(self.bytes()?)
        } else {
            None
        })
    }
    /// A count of items that each take at least `min` bytes: bounded by what
    /// is left, so a forged count cannot make us allocate.
    pub(super) fn count(&mut self, min: usize) -> Result<usize, ProtoError> {
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
                tag::OP_SLOT_DATA => Op::SlotData(self.bytes()?),
                tag::OP_SLOT_FD => Op::SlotFd,
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
            tag::RELEASE => Request::Release { id: self.u64()? },
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
            tag::RELEASED => Reply::Released {
                id: self.u64()?,
                pid: self.i32()?,
            },
            t => return err(format!("unknown reply tag {t:#04x}")),
        })
    }
}
