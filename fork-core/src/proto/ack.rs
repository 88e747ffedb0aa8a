//! The report a forked process writes on its own socket before its entry
//! starts, when the parent asked for one.

use super::decode::Reader;
use super::encode::Writer;
use super::{ProtoError, err};

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
}
