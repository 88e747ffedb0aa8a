//! What a worker and its manager say to each other over the worker's
//! fork-core socket, and how it is framed: a frame is its body's length
//! (`u32`, big-endian), then the body, a message encoded with bincode
//! (fixed-width integers). Frames are at most [`MAX_FRAME`] bytes; a longer
//! length, a body that does not decode, or bytes after the message are a
//! protocol error, never a panic.

use std::io;
use std::time::Duration;

use bincode::Options;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::config::AcceptOrder;

/// The largest frame body either side accepts.
pub(crate) const MAX_FRAME: usize = 64 * 1024;

/// The longest failure message a worker sends (longer ones are cut).
pub(crate) const MAX_MESSAGE: usize = 4 * 1024;

/// The length prefix's size.
const HEADER: usize = 4;

/// What a [`Report::Data`] body adds to its bytes: the variant's tag
/// (`u32`) and the bytes' length (`u64`).
const DATA_OVERHEAD: usize = 4 + 8;

/// The largest value, encoded, that [`Link::yell`](crate::Link::yell)
/// sends: what fits in one frame beside the message's own header.
pub const MAX_DATA: usize = MAX_FRAME - DATA_OVERHEAD;

/// Worker → manager.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Report {
    /// The worker accepts connections now; it counts as idle.
    Ready,
    /// Its state: how many busy marks it holds (busy if any), how many
    /// requests it served, how many connections `serve` accepted. Sent
    /// when it changes, and as the heartbeat.
    State {
        busy: u32,
        served: u64,
        accepted: u64,
    },
    /// It could not start (its function returned an error before it was
    /// ready): why.
    Failed(String),
    /// Data for the parent ([`Link::yell`](crate::Link::yell)): a value the
    /// worker encoded with [`encode_data`], at most [`MAX_DATA`] bytes.
    Data(Vec<u8>),
    /// Why the worker stopped accepting, with its last state: sent once,
    /// as its function has returned, if something asked it to.
    Leaving(Leave),
    /// The value the worker leaves with ([`Link::exit_with`](crate::Link::exit_with)),
    /// encoded as [`Report::Data`]'s: sent once, as its function has
    /// returned, before [`Report::Leaving`].
    ExitData(Vec<u8>),
}

/// Why a worker stopped accepting, as it knows it: the first cause wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Leave {
    /// The manager told it to stop (or is gone).
    Told,
    /// It got `SIGTERM`.
    Terminated,
    /// Its function asked ([`Link::retire`](crate::Link::retire),
    /// [`Link::exit_with`](crate::Link::exit_with)).
    Retired,
    /// It reached [`max_requests`](crate::Config::max_requests).
    Recycled,
}

impl Leave {
    /// Its code in a worker's `leaving` cell (0 is none).
    pub(crate) fn code(self) -> u8 {
        match self {
            Leave::Told => 1,
            Leave::Terminated => 2,
            Leave::Retired => 3,
            Leave::Recycled => 4,
        }
    }

    /// The cause a code stands for.
    pub(crate) fn from_code(code: u8) -> Option<Leave> {
        match code {
            1 => Some(Leave::Told),
            2 => Some(Leave::Terminated),
            3 => Some(Leave::Retired),
            4 => Some(Leave::Recycled),
            _ => None,
        }
    }
}

/// Manager → worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Order {
    /// Stop accepting, finish the open connections, return.
    Stop,
}

/// What a worker is told at its fork, in fork-core's slot (its listeners
/// are the slot's descriptors, in order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Setup {
    /// The generation it belongs to (1 for the first, one more per reload).
    pub(crate) generation: u64,
    /// How often it reports its state when nothing changes.
    pub(crate) heartbeat: Duration,
    /// What each listener is.
    pub(crate) listeners: Vec<ListenerKind>,
    /// Retire after this many requests (busy marks).
    pub(crate) max_requests: Option<u64>,
    /// Which waiting worker gets the next connection.
    pub(crate) accept_order: AcceptOrder,
}

/// The kind of a listening socket, so the worker wraps it in the right
/// tokio type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum ListenerKind {
    /// A TCP listener.
    Tcp,
    /// A unix stream listener.
    Unix,
}

fn options() -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_big_endian()
        .with_limit(MAX_FRAME as u64)
}

/// Encodes one of our own messages as a frame.
///
/// # Panics
///
/// If it exceeds [`MAX_FRAME`]: the messages are small by construction
/// (a failure message is cut to [`MAX_MESSAGE`], data is checked against
/// [`MAX_DATA`] by [`Link::yell`](crate::Link::yell)).
pub(crate) fn frame<T: Serialize>(msg: &T) -> Vec<u8> {
    let body = options()
        .serialize(msg)
        .expect("a message of this crate encodes within the frame limit");
    let mut out = Vec::with_capacity(HEADER + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Decodes a frame's body.
pub(crate) fn decode<T: DeserializeOwned>(body: &[u8]) -> io::Result<T> {
    options()
        .deserialize(body)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("bad message: {e}")))
}

/// Encodes a worker's data for [`Report::Data`], with the same options as
/// the messages: bincode, fixed-width big-endian integers, and a limit of
/// [`MAX_DATA`] bytes.
pub(crate) fn encode_data<T: Serialize + ?Sized>(value: &T) -> bincode::Result<Vec<u8>> {
    options().with_limit(MAX_DATA as u64).serialize(value)
}

/// The size [`encode_data`] would give `value`, limit aside.
pub(crate) fn data_size<T: Serialize + ?Sized>(value: &T) -> bincode::Result<u64> {
    options().with_no_limit().serialized_size(value)
}

/// Decodes a worker's data, as [`encode_data`] encoded it: the whole of
/// `bytes`, nothing after the value.
pub(crate) fn decode_data<T: DeserializeOwned>(bytes: &[u8]) -> bincode::Result<T> {
    options().with_limit(MAX_DATA as u64).deserialize(bytes)
}

/// Decodes slot data.
pub(crate) fn decode_setup(data: &[u8]) -> io::Result<Setup> {
    decode(data)
}

/// Encodes slot data.
pub(crate) fn encode_setup(setup: &Setup) -> Vec<u8> {
    options()
        .serialize(setup)
        .expect("a setup encodes within the frame limit")
}

/// Cuts `message` to at most [`MAX_MESSAGE`] bytes, on a character boundary.
pub(crate) fn cut(mut message: String) -> String {
    if message.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
    }
    message
}

/// Reads the next frame's body into `buf`: `Ok(false)` on end of stream
/// before a frame starts.
///
/// # Errors
///
/// [`io::ErrorKind::InvalidData`] for a length above [`MAX_FRAME`],
/// [`io::ErrorKind::UnexpectedEof`] for a stream that ends inside a frame,
/// and the stream's errors.
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> io::Result<bool> {
    let mut head = [0u8; HEADER];
    if r.read(&mut head[..1]).await? == 0 {
        return Ok(false);
    }
    r.read_exact(&mut head[1..]).await?;
    let len = u32::from_be_bytes(head) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes exceeds the limit of {MAX_FRAME}"),
        ));
    }
    buf.resize(len, 0);
    r.read_exact(buf).await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_byte_by_byte() {
        assert_eq!(frame(&Report::Ready), [0, 0, 0, 4, 0, 0, 0, 0]);
        assert_eq!(
            frame(&Report::State {
                busy: 2,
                served: 7,
                accepted: 5,
            }),
            [
                0, 0, 0, 24, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 5
            ]
        );
        assert_eq!(frame(&Order::Stop), [0, 0, 0, 4, 0, 0, 0, 0]);
    }

    #[tokio::test]
    async fn reads_back_what_it_wrote() {
        let msgs = [
            Report::Ready,
            Report::State {
                busy: 1,
                served: 3,
                accepted: 2,
            },
            Report::Failed("no database".into()),
        ];
        let bytes: Vec<u8> = msgs.iter().flat_map(frame).collect();
        let mut r = &bytes[..];
        let mut buf = Vec::new();
        for msg in &msgs {
            assert!(read_frame(&mut r, &mut buf).await.unwrap());
            assert_eq!(&decode::<Report>(&buf).unwrap(), msg);
        }
        assert!(!read_frame(&mut r, &mut buf).await.unwrap());
    }

    #[tokio::test]
    async fn bad_bytes_are_errors_not_panics() {
        let mut buf = Vec::new();
        // A length over the limit.
        let mut r = &[0xff, 0xff, 0xff, 0xff][..];
        let e = read_frame(&mut r, &mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        // A stream that ends inside a frame.
        let mut r = &[0, 0, 0, 9, 1][..];
        let e = read_frame(&mut r, &mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        // No such variant; a string longer than its body; trailing bytes.
        assert!(decode::<Report>(&[0, 0, 0, 9]).is_err());
        assert!(decode::<Report>(&[0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0xff, 0xff]).is_err());
        assert!(decode::<Report>(&[0, 0, 0, 0, 1]).is_err());
    }

    #[test]
    fn failure_messages_are_cut_on_a_character_boundary() {
        let long = "é".repeat(MAX_MESSAGE);
        let cut = cut(long);
        assert!(cut.len() <= MAX_MESSAGE && cut.len() >= MAX_MESSAGE - 1);
        let body = frame(&Report::Failed(cut));
        assert!(body.len() <= MAX_FRAME);
    }

    #[test]
    fn data_frames_byte_by_byte() {
        // Tag 3, then the length as a u64, then the bytes.
        assert_eq!(
            frame(&Report::Data(vec![0xab, 0xcd])),
            [0, 0, 0, 14, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 2, 0xab, 0xcd]
        );
        // A value is encoded as the messages are: big-endian, fixed width.
        assert_eq!(
            encode_data(&(7u16, "hi")).unwrap(),
            [0, 7, 0, 0, 0, 0, 0, 0, 0, 2, b'h', b'i']
        );
        assert_eq!(
            decode_data::<(u16, String)>(&[0, 7, 0, 0, 0, 0, 0, 0, 0, 2, b'h', b'i']).unwrap(),
            (7, "hi".to_string())
        );
    }

    #[tokio::test]
    async fn the_largest_data_fills_a_frame_exactly() {
        let largest = Report::Data(vec![7; MAX_DATA]);
        let bytes = frame(&largest);
        assert_eq!(bytes.len(), HEADER + MAX_FRAME);
        let mut r = &bytes[..];
        let mut buf = Vec::new();
        assert!(read_frame(&mut r, &mut buf).await.unwrap());
        assert_eq!(decode::<Report>(&buf).unwrap(), largest);
        // One byte more does not encode, as a value or as a frame.
        assert!(
            encode_data(&vec![0u8; MAX_DATA]).is_err(),
            "a Vec adds its length"
        );
        assert!(encode_data(&[0u8; 8][..]).is_ok());
        assert_eq!(
            data_size(&vec![0u8; MAX_DATA]).unwrap(),
            8 + MAX_DATA as u64
        );
        assert!(
            options()
                .serialize(&Report::Data(vec![0; MAX_DATA + 1]))
                .is_err()
        );
    }

    #[test]
    fn bad_data_is_an_error_not_a_panic() {
        // Too short for its type; trailing bytes; a length past the end.
        assert!(decode_data::<u32>(&[0, 0, 1]).is_err());
        assert!(decode_data::<u16>(&[0, 0, 1]).is_err());
        assert!(decode_data::<Vec<u8>>(&[0xff; 8]).is_err());
        // A Data report whose length claims more than its body.
        assert!(decode::<Report>(&[0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 9, 1]).is_err());
    }

    #[test]
    fn leaving_frames_byte_by_byte() {
        // Tag 4, then the cause's tag.
        assert_eq!(
            frame(&Report::Leaving(Leave::Recycled)),
            [0, 0, 0, 8, 0, 0, 0, 4, 0, 0, 0, 3]
        );
        // Tag 5, then the value as Data's: it fits in a frame as Data does.
        assert_eq!(
            frame(&Report::ExitData(vec![9])),
            [0, 0, 0, 13, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 1, 9]
        );
        assert!(
            options()
                .serialize(&Report::ExitData(vec![0; MAX_DATA]))
                .is_ok()
        );
        for leave in [
            Leave::Told,
            Leave::Terminated,
            Leave::Retired,
            Leave::Recycled,
        ] {
            assert_eq!(Leave::from_code(leave.code()), Some(leave));
        }
        assert_eq!(Leave::from_code(0), None);
    }

    #[test]
    fn setup_round_trips() {
        let s = Setup {
            generation: 3,
            heartbeat: Duration::from_millis(250),
            listeners: vec![ListenerKind::Tcp, ListenerKind::Unix],
            max_requests: Some(12),
            accept_order: AcceptOrder::FirstIdle,
        };
        assert_eq!(decode_setup(&encode_setup(&s)).unwrap(), s);
    }
}
