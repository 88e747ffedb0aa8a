//! Frames: the 8-byte header, splitting a message into frames and
//! reassembling them with their descriptors.

use super::{
    FLAG_MORE, HEADER_LEN, MAGIC, MAX_FDS_PER_FRAME, MAX_FRAME_PAYLOAD, ProtoError, VERSION, err,
};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::DEFAULT_MAX_MESSAGE;

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
}
