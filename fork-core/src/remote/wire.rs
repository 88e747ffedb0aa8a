//! Frames on the byte stream between a parent and a remote template: pure
//! functions from bytes to values, so that they can be fuzzed and tested
//! byte by byte.
//!
//! ```text
//! 0       1                   9               13
//! +-------+-------------------+---------------+---------------------
//! | kind  | channel (u64 LE)  |  len (u32 LE) | payload (len bytes)
//! +-------+-------------------+---------------+---------------------
//! ```
//!
//! | kind | name    | channel | payload                                  |
//! |------|---------|---------|------------------------------------------|
//! | 1    | Hello   | 0       | the greeting (`hello.rs`), ≤ 4 KiB       |
//! | 2    | Control | 0       | a control message (`proto`'s records)    |
//! | 3    | Data    | worker  | bytes of a worker's stream, 1..=32 KiB   |
//! | 4    | Eof     | worker  | empty: the sender's side of it ended     |
//! | 5    | Credit  | worker  | u32 LE: bytes the receiver has delivered |
//! | 6    | Close   | worker  | empty: the sender's end of it is gone    |
//! | 7    | Ping    | 0       | u32 LE: the sender's keepalive timeout, ms |
//! | 8    | Pong    | 0       | empty: the answer to a ping              |
//! | 9    | Listening | 0     | the socket's path there, or empty: none  |
//! | 10   | Forwarded | spawn | empty: that spawn's stream comes by the socket |
//!
//! A header is checked as soon as its 13 bytes are there, before any of its
//! payload is buffered: an oversized length, an unknown kind, a channel
//! where none belongs or a wrong fixed length is an error at once, so a
//! peer cannot make the reader buffer more than one frame of the limit.

use super::super::proto::ProtoError;

/// Size of a frame header.
pub(crate) const HEADER_LEN: usize = 13;
/// Largest payload of a data frame.
pub(crate) const MAX_DATA: usize = 32 * 1024;
/// Largest greeting.
pub(crate) const MAX_HELLO: usize = 4 * 1024;

const HELLO: u8 = 1;
const CONTROL: u8 = 2;
const DATA: u8 = 3;
const EOF: u8 = 4;
const CREDIT: u8 = 5;
const CLOSE: u8 = 6;
const PING: u8 = 7;
const PONG: u8 = 8;
const LISTENING: u8 = 9;
const FORWARDED: u8 = 10;

/// One frame, borrowing its payload from the buffer it was decoded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Frame<'a> {
    /// The greeting each side sends first.
    Hello(&'a [u8]),
    /// A control message: requests from the parent, replies from the
    /// template, in the local control protocol's record format.
    Control(&'a [u8]),
    /// Bytes of the stream of channel `channel` (a worker's socket).
    Data { channel: u64, bytes: &'a [u8] },
    /// The sender will send no more bytes on `channel`.
    Eof { channel: u64 },
    /// The receiver delivered `bytes` more bytes of `channel`: the sender
    /// may send that many more.
    Credit { channel: u64, bytes: u32 },
    /// The sender's local end of `channel` is closed for good (nothing
    /// reads it any more): the receiver closes its own end at once, both
    /// ways, so the process there sees `EPIPE` and EOF as it would on a
    /// local socket whose peer is gone.
    Close { channel: u64 },
    /// The parent's keepalive (see `keepalive.rs`): the other side answers
    /// with [`Frame::Pong`], and counts the connection lost if it hears
    /// nothing at all for `timeout_ms` milliseconds.
    Ping { timeout_ms: u32 },
    /// The answer to a [`Frame::Ping`].
    Pong,
    /// Remote side → parent, first after the greetings when the parent's
    /// greeting asked it to listen for workers' streams (`forward.rs`):
    /// the path of its socket, or empty if it could not listen.
    Listening(&'a [u8]),
    /// Parent → remote side: the spawn request `channel` (its id) that
    /// follows takes as its worker's socket the connection to the listening
    /// socket that names it, not a channel of this stream.
    Forwarded { channel: u64 },
}

/// Decodes the frame at the start of `buf`: the frame and how many bytes it
/// took, `Ok(None)` if more bytes are needed. `max_control` bounds control
/// payloads (each side chooses its own).
///
/// # Errors
///
/// An unknown kind, a payload over its limit, a fixed-size payload of the
/// wrong size, a channel number on a frame that has none, an empty data
/// frame: as soon as the header shows it.
pub(crate) fn decode(
    buf: &[u8],
    max_control: usize,
) -> Result<Option<(Frame<'_>, usize)>, ProtoError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let kind = buf[0];
    let channel = u64::from_le_bytes(buf[1..9].try_into().expect("8 bytes"));
    let len = u32::from_le_bytes(buf[9..13].try_into().expect("4 bytes")) as usize;
    let (min, max) = match kind {
        HELLO | LISTENING => (0, MAX_HELLO),
        CONTROL => (0, max_control),
        DATA => (1, MAX_DATA),
        EOF | CLOSE | FORWARDED => (0, 0),
        CREDIT | PING => (4, 4),
        PONG => (0, 0),
        k => return Err(ProtoError(format!("unknown frame kind {k:#04x}"))),
    };
    if len < min || len > max {
        return Err(ProtoError(format!(
            "frame of kind {kind} with {len} payload bytes (allowed: {min}..={max})"
        )));
    }
    if matches!(kind, HELLO | CONTROL | PING | PONG | LISTENING) && channel != 0 {
        return Err(ProtoError(format!(
            "frame of kind {kind} on channel {channel} (it has none)"
        )));
    }
    let Some(payload) = buf.get(HEADER_LEN..HEADER_LEN + len) else {
        return Ok(None);
    };
    let frame = match kind {
        HELLO => Frame::Hello(payload),
        CONTROL => Frame::Control(payload),
        DATA => Frame::Data {
            channel,
            bytes: payload,
        },
        EOF => Frame::Eof { channel },
        CLOSE => Frame::Close { channel },
        PING => Frame::Ping {
            timeout_ms: u32::from_le_bytes(payload.try_into().expect("4 bytes")),
        },
        PONG => Frame::Pong,
        LISTENING => Frame::Listening(payload),
        FORWARDED => Frame::Forwarded { channel },
        _ => Frame::Credit {
            channel,
            bytes: u32::from_le_bytes(payload.try_into().expect("4 bytes")),
        },
    };
    Ok(Some((frame, HEADER_LEN + len)))
}

/// Appends `frame` to `out`.
///
/// # Panics
///
/// If a payload exceeds what a `u32` length holds (callers bound payloads
/// far below that).
pub(crate) fn encode(frame: &Frame<'_>, out: &mut Vec<u8>) {
    let credit;
    let ping;
    let (kind, channel, payload): (u8, u64, &[u8]) = match *frame {
        Frame::Hello(p) => (HELLO, 0, p),
        Frame::Control(p) => (CONTROL, 0, p),
        Frame::Data { channel, bytes } => (DATA, channel, bytes),
        Frame::Eof { channel } => (EOF, channel, &[]),
        Frame::Close { channel } => (CLOSE, channel, &[]),
        Frame::Ping { timeout_ms } => {
            ping = timeout_ms.to_le_bytes();
            (PING, 0, &ping)
        }
        Frame::Pong => (PONG, 0, &[]),
        Frame::Listening(p) => (LISTENING, 0, p),
        Frame::Forwarded { channel } => (FORWARDED, channel, &[]),
        Frame::Credit { channel, bytes } => {
            credit = bytes.to_le_bytes();
            (CREDIT, channel, &credit)
        }
    };
    let len = u32::try_from(payload.len()).expect("a frame payload under 4 GiB");
    out.reserve(HEADER_LEN + payload.len());
    out.push(kind);
    out.extend_from_slice(&channel.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(payload);
}

/// [`encode`] into a new buffer.
pub(crate) fn to_vec(frame: &Frame<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    encode(frame, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 1024;

    #[test]
    fn header_bytes() {
        let bytes = to_vec(&Frame::Data {
            channel: 0x0102,
            bytes: b"hi",
        });
        assert_eq!(bytes, [3, 2, 1, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, b'h', b'i']);
        assert_eq!(
            to_vec(&Frame::Credit {
                channel: 7,
                bytes: 0x0403_0201
            }),
            [5, 7, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 1, 2, 3, 4]
        );
        assert_eq!(to_vec(&Frame::Eof { channel: 1 }).len(), HEADER_LEN);
        assert_eq!(
            to_vec(&Frame::Ping {
                timeout_ms: 0x0403_0201
            }),
            [7, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 1, 2, 3, 4]
        );
        assert_eq!(
            to_vec(&Frame::Pong),
            [8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn round_trips() {
        let frames = [
            Frame::Hello(b"greeting"),
            Frame::Control(b""),
            Frame::Control(&[9; 100]),
            Frame::Data {
                channel: u64::MAX,
                bytes: &[1; MAX_DATA],
            },
            Frame::Eof { channel: 3 },
            Frame::Close { channel: 4 },
            Frame::Ping { timeout_ms: 10_000 },
            Frame::Pong,
            Frame::Listening(b"/tmp/fork-core-x/s"),
            Frame::Listening(b""),
            Frame::Forwarded { channel: 12 },
            Frame::Credit {
                channel: 0,
                bytes: u32::MAX,
            },
        ];
        let mut stream = Vec::new();
        for f in &frames {
            encode(f, &mut stream);
        }
        let mut at = 0;
        for f in &frames {
            let (got, used) = decode(&stream[at..], LIMIT).unwrap().unwrap();
            assert_eq!(&got, f);
            at += used;
        }
        assert_eq!(at, stream.len());
        assert_eq!(decode(&stream[at..], LIMIT), Ok(None));
    }

    #[test]
    fn truncated_frames_need_more_bytes() {
        let bytes = to_vec(&Frame::Data {
            channel: 1,
            bytes: b"abc",
        });
        for cut in 0..bytes.len() {
            assert_eq!(decode(&bytes[..cut], LIMIT), Ok(None), "cut at {cut}");
        }
        assert!(decode(&bytes, LIMIT).unwrap().is_some());
    }

    fn header(kind: u8, channel: u64, len: u32) -> Vec<u8> {
        let mut h = vec![kind];
        h.extend_from_slice(&channel.to_le_bytes());
        h.extend_from_slice(&len.to_le_bytes());
        h
    }

    #[test]
    fn oversized_lengths_fail_on_the_header_alone() {
        let e = decode(&header(2, 0, LIMIT as u32 + 1), LIMIT).unwrap_err();
        assert!(e.0.contains("payload bytes"), "{e}");
        assert!(decode(&header(3, 1, MAX_DATA as u32 + 1), LIMIT).is_err());
        assert!(decode(&header(1, 0, MAX_HELLO as u32 + 1), LIMIT).is_err());
        assert!(decode(&header(2, 0, u32::MAX), LIMIT).is_err());
    }

    #[test]
    fn malformed_headers() {
        let e = decode(&header(0, 0, 0), LIMIT).unwrap_err();
        assert!(e.0.contains("unknown frame kind"), "{e}");
        assert!(decode(&header(0xff, 0, 0), LIMIT).is_err());
        // An empty data frame, a credit of the wrong size, an Eof with bytes.
        assert!(decode(&header(3, 1, 0), LIMIT).is_err());
        assert!(decode(&header(5, 1, 3), LIMIT).is_err());
        assert!(decode(&header(4, 1, 1), LIMIT).is_err());
        assert!(decode(&header(6, 1, 1), LIMIT).is_err());
        assert!(decode(&header(4, 1, 1), LIMIT).is_err());
        // Listening has no channel, Forwarded no payload.
        assert!(decode(&header(9, 1, 0), LIMIT).is_err());
        assert!(decode(&header(9, 0, MAX_HELLO as u32 + 1), LIMIT).is_err());
        assert!(decode(&header(10, 3, 1), LIMIT).is_err());
        assert!(decode(&header(11, 0, 0), LIMIT).is_err());
        // A ping carries its timeout; a pong nothing; neither a channel.
        assert!(decode(&header(7, 0, 3), LIMIT).is_err());
        assert!(decode(&header(8, 0, 1), LIMIT).is_err());
        assert!(decode(&header(7, 1, 4), LIMIT).is_err());
        assert!(decode(&header(8, 2, 0), LIMIT).is_err());
        // Control and greetings belong to no channel.
        let e = decode(&header(2, 5, 0), LIMIT).unwrap_err();
        assert!(e.0.contains("has none"), "{e}");
        assert!(decode(&header(1, 1, 0), LIMIT).is_err());
    }

    #[test]
    fn every_prefix_of_garbage_is_an_answer_not_a_panic() {
        let garbage: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
        for start in 0..64 {
            for end in start..start + 64 {
                let _ = decode(&garbage[start..end], LIMIT);
            }
        }
    }
}
