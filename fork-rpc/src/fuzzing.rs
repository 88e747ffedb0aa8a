//! Entry points for fuzzing fork-rpc's frame decoding (feature `fuzzing`;
//! not a stable API, hidden from the docs).
//!
//! Each function takes arbitrary bytes as what one side reads from the
//! other, and drives the real decoders the way the connection does:
//!
//! - [`rpc_worker_frames`]: what a worker reads from its parent, through
//!   `frame::decode`, which is what `Server::decode` does for every frame
//!   (`frame::next`: the length prefix, the frame limit checked before the
//!   frame's bytes are awaited; `frame::decode_body`:
//!   `codec::decode::<tarpc::ClientMessage<Req>>` inside `catch_unwind`),
//!   without descriptors;
//! - [`rpc_parent_frames`]: what a parent reads from its worker, through
//!   `frame::next` with the frame limit, as the client's `FrameRead` does,
//!   then `decode_reply` (with its fallback that turns a reply whose value
//!   does not decode into an error reply) and, for an event, the decoding
//!   `Events` makes.
//!
//! The service is [`Fuzz`], a `#[tarpc::service]` whose requests,
//! responses and event ([`Progress`]) carry strings, byte vectors,
//! integers, floats, options and nested enums.
//!
//! None of these functions may panic, hang, or allocate more than a small
//! multiple of [`MAX_FRAME`], whatever the bytes; the fuzz targets in
//! `fuzz/` check exactly that.
//!
//! # Input layout
//!
//! ```text
//! [mode u8][bytes read from the socket]
//! ```
//!
//! `mode` bit 0 chooses the format: 0 is [`Format::Bincode`], 1
//! [`Format::Json`]. The other bits, `k = mode >> 1`, choose how the bytes
//! arrive: all in one read when `k` is 0, else in reads of `k * k` bytes
//! (1 to 16129), so that frames are cut anywhere.

use bytes::BytesMut;
use serde::{Deserialize, Serialize};
use tarpc::ClientMessage;

use crate::client::decode_reply;
use crate::codec;
use crate::config::Format;
use crate::frame;
use crate::message::WorkerMsg;

/// The frame limit used here (the real default is 16 MiB).
///
/// The limit is a parameter of the same code, so a small one changes no
/// code path; but it lets inputs of a fuzzer's size (up to 128 KiB in
/// `.ci/fuzz`) hold frames up to the limit and past it, and it makes
/// "allocates beyond the frame limit" something the fuzzer's allocation
/// cap (1 MiB in `.ci/fuzz`, 16 times this) catches: a buffer sized from a
/// length field that was not checked against the limit would exceed it.
pub const MAX_FRAME: usize = 64 * 1024;

/// A service like the ones fork-rpc serves, for the fuzz targets: its
/// generated `FuzzRequest` and `FuzzResponse` are what the frames carry.
#[tarpc::service]
pub trait Fuzz {
    /// Stores `value` under `key`.
    async fn put(key: String, value: Vec<u8>, ttl: Option<u64>, tags: Vec<Tag>) -> Stored;
    /// Items matching `filter`.
    async fn query(filter: Filter, limit: Option<u32>) -> Vec<Item>;
    /// Arithmetic on integers of several widths.
    async fn add(a: i64, b: i32, c: u8, wrap: bool) -> i128;
    /// Nothing.
    async fn ping();
}

/// A label, nested in [`Filter`] and [`Item`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Tag {
    /// No data.
    Plain,
    /// A name.
    Named(String),
    /// A number and an optional sub-number.
    Numbered {
        /// The number.
        n: u64,
        /// The sub-number.
        sub: Option<i16>,
    },
}

/// What to query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Filter {
    /// Everything.
    All,
    /// One key.
    Key(String),
    /// Keys with a prefix.
    Prefix {
        /// The prefix.
        prefix: String,
        /// At most this many.
        max: Option<u32>,
    },
    /// Items with a tag.
    Tagged(Tag),
    /// Items with either tag.
    Either(Tag, Option<Tag>),
}

/// A stored item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// Its key.
    pub key: String,
    /// Its value.
    pub value: Vec<u8>,
    /// A score (a NaN cannot come back in JSON: its reply does not decode).
    pub score: f64,
    /// Its tag.
    pub tag: Option<Tag>,
}

/// The outcome of [`Fuzz::put`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Stored {
    /// A new key.
    New,
    /// An existing key; its old value.
    Replaced {
        /// The old value.
        old: Vec<u8>,
    },
    /// Refused, with the reason.
    Rejected(String),
}

/// The event type of the fuzzed connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Progress {
    /// A job started.
    Started {
        /// The job.
        id: u64,
    },
    /// A step, with a note.
    Step(u32, String),
    /// Done, with an optional result.
    Done(Option<Vec<u8>>),
}

/// The format and the reads of an input (see the module docs).
fn split_input(data: &[u8]) -> Option<(Format, impl Iterator<Item = &[u8]>)> {
    let (&mode, rest) = data.split_first()?;
    let format = if mode & 1 == 0 {
        Format::Bincode
    } else {
        Format::Json
    };
    let k = usize::from(mode >> 1);
    let read = if k == 0 { rest.len().max(1) } else { k * k };
    Some((format, rest.chunks(read)))
}

/// Drives what a worker does with the bytes its parent sends; see the
/// module docs for the input layout. Returns how many messages (requests
/// and cancellations) were decoded.
///
/// Decoding stops at the first error, as the worker stops reading.
pub fn rpc_worker_frames(data: &[u8]) -> usize {
    let Some((format, reads)) = split_input(data) else {
        return 0;
    };
    let mut input = BytesMut::new();
    let mut received = 0;
    for read in reads {
        input.extend_from_slice(read);
        loop {
            match frame::decode::<ClientMessage<FuzzRequest>>(&mut input, MAX_FRAME, format) {
                Ok(Some(_)) => received += 1,
                Ok(None) => break,
                Err(_) => return received,
            }
        }
    }
    received
}

/// Drives what a parent does with the bytes its worker sends; see the
/// module docs for the input layout. Returns how many frames were decoded
/// (replies, error replies made by the fallback, events, panic reports and
/// retire requests).
///
/// Decoding stops at the first error, as the client's stream ends there.
pub fn rpc_parent_frames(data: &[u8]) -> usize {
    let Some((format, reads)) = split_input(data) else {
        return 0;
    };
    let limit = MAX_FRAME as u64;
    let mut input = BytesMut::new();
    let mut received = 0;
    let mut take = |frame: &[u8]| match decode_reply::<FuzzResponse>(format, limit, frame) {
        Ok(message) => {
            if let WorkerMsg::Event(bytes) = message {
                // As `Events::decode`: an event that does not decode is an
                // error of that event only.
                let _ = codec::decode::<Progress>(format, limit, &bytes);
            }
            received += 1;
            true
        }
        Err(_) => false,
    };
    for read in reads {
        input.extend_from_slice(read);
        loop {
            // As `FrameRead` reads.
            match frame::next(&mut input, MAX_FRAME, &mut take) {
                Ok(Some(true)) => {}
                Ok(None) => break,
                Ok(Some(false)) | Err(_) => return received,
            }
        }
    }
    // At EOF, as `FrameRead` ends: the rest of a frame is an error.
    received
}

/// Seeds for the fuzz corpus: valid input made with the real encoders.
///
/// `cargo test -p fork-rpc --features fuzzing fuzzing` checks that each
/// seed is accepted and that the files in `fuzz/corpus/` are up to date;
/// with `FORK_FUZZ_WRITE_CORPUS=1` it writes them instead.
#[cfg(test)]
mod corpus {
    use std::time::{Duration, Instant};

    use tarpc::{Request, Response, ServerError};

    use super::*;

    const FORMATS: [(Format, u8, &str); 2] =
        [(Format::Bincode, 0, "bincode"), (Format::Json, 1, "json")];

    fn context() -> tarpc::context::Context {
        let mut ctx = tarpc::context::current();
        ctx.deadline = Instant::now() + Duration::from_secs(10);
        ctx
    }

    /// Frames as the client writes them: `codec::encode`, then
    /// `frame::put`.
    fn requests(format: Format, mode: u8, messages: &[ClientMessage<FuzzRequest>]) -> Vec<u8> {
        let mut out = BytesMut::new();
        for m in messages {
            let body = codec::encode(format, MAX_FRAME as u64, m).unwrap();
            frame::put(&mut out, &body);
        }
        let mut input = vec![mode];
        input.extend_from_slice(&out);
        input
    }

    /// Frames as the worker writes them: replies with `encode_into`,
    /// events encoded twice, as `EventSender` does.
    fn replies(format: Format, mode: u8, messages: &[WorkerMsg<FuzzResponse>]) -> Vec<u8> {
        let mut out = BytesMut::new();
        for m in messages {
            frame::encode_into(format, MAX_FRAME as u64, m, &mut out).unwrap();
        }
        let mut input = vec![mode];
        input.extend_from_slice(&out);
        input
    }

    fn event(format: Format, event: &Progress) -> WorkerMsg<FuzzResponse> {
        WorkerMsg::Event(codec::encode(format, MAX_FRAME as u64, event).unwrap())
    }

    fn request(id: u64, message: FuzzRequest) -> ClientMessage<FuzzRequest> {
        ClientMessage::Request(Request {
            context: context(),
            id,
            message,
        })
    }

    fn reply(request_id: u64, message: FuzzResponse) -> WorkerMsg<FuzzResponse> {
        WorkerMsg::Reply(Response {
            request_id,
            message: Ok(message),
        })
    }

    /// `(target, file name, bytes)` of every seed.
    fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
        let mut seeds = Vec::new();
        for (format, mode, name) in FORMATS {
            let put = || FuzzRequest::Put {
                key: "k".into(),
                value: vec![1, 2, 3],
                ttl: Some(60),
                tags: vec![
                    Tag::Plain,
                    Tag::Named("n".into()),
                    Tag::Numbered {
                        n: 7,
                        sub: Some(-1),
                    },
                ],
            };
            let query = FuzzRequest::Query {
                filter: Filter::Either(Tag::Named("a".into()), Some(Tag::Plain)),
                limit: None,
            };
            let prefix = FuzzRequest::Query {
                filter: Filter::Prefix {
                    prefix: "p".into(),
                    max: Some(3),
                },
                limit: Some(10),
            };
            let add = FuzzRequest::Add {
                a: -5,
                b: 7,
                c: 255,
                wrap: true,
            };
            let cancel = ClientMessage::Cancel {
                trace_context: context().trace_context,
                request_id: 1,
            };
            seeds.push((
                "rpc_worker_frames",
                format!("seed-{name}-put"),
                requests(format, mode, &[request(1, put())]),
            ));
            seeds.push((
                "rpc_worker_frames",
                format!("seed-{name}-batch"),
                requests(
                    format,
                    mode,
                    &[
                        request(1, query),
                        request(2, prefix),
                        request(3, add),
                        request(4, FuzzRequest::Ping {}),
                        cancel,
                    ],
                ),
            ));
            // The same, arriving 9 bytes at a time.
            seeds.push((
                "rpc_worker_frames",
                format!("seed-{name}-small-reads"),
                requests(format, mode | 3 << 1, &[request(1, put())]),
            ));

            let items = FuzzResponse::Query(vec![Item {
                key: "k".into(),
                value: vec![0; 4],
                score: 0.5,
                tag: Some(Tag::Numbered { n: 1, sub: None }),
            }]);
            seeds.push((
                "rpc_parent_frames",
                format!("seed-{name}-replies"),
                replies(
                    format,
                    mode,
                    &[
                        reply(1, FuzzResponse::Put(Stored::New)),
                        reply(2, FuzzResponse::Put(Stored::Replaced { old: vec![9] })),
                        reply(3, FuzzResponse::Put(Stored::Rejected("full".into()))),
                        reply(4, items),
                        reply(5, FuzzResponse::Add(-1)),
                        reply(6, FuzzResponse::Ping(())),
                    ],
                ),
            ));
            seeds.push((
                "rpc_parent_frames",
                format!("seed-{name}-events"),
                replies(
                    format,
                    mode | 2 << 1,
                    &[
                        event(format, &Progress::Started { id: 1 }),
                        event(format, &Progress::Step(2, "half".into())),
                        event(format, &Progress::Done(Some(vec![1]))),
                        WorkerMsg::Reply(Response {
                            request_id: 1,
                            message: Err(ServerError::new(
                                std::io::ErrorKind::TimedOut,
                                "late".into(),
                            )),
                        }),
                        WorkerMsg::Retire,
                        WorkerMsg::Panic(crate::error::HandlerPanic {
                            message: "handler panicked".into(),
                            location: Some("src/lib.rs:1:1".into()),
                        }),
                    ],
                ),
            ));
        }
        // A reply whose value JSON cannot bring back (a NaN is written as
        // `null`): the fallback makes it an error reply.
        let nan = FuzzResponse::Query(vec![Item {
            key: String::new(),
            value: vec![],
            score: f64::NAN,
            tag: None,
        }]);
        seeds.push((
            "rpc_parent_frames",
            "seed-json-undecodable-reply".into(),
            replies(Format::Json, 1, &[reply(1, nan)]),
        ));
        seeds
    }

    #[test]
    fn seeds_are_accepted_and_committed() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
        let write = std::env::var_os("FORK_FUZZ_WRITE_CORPUS").is_some_and(|v| v == "1");
        let decode = |target: &str, bytes: &[u8]| match target {
            "rpc_worker_frames" => rpc_worker_frames(bytes),
            "rpc_parent_frames" => rpc_parent_frames(bytes),
            _ => unreachable!("{target}"),
        };
        for (target, name, bytes) in seeds() {
            let decoded = decode(target, &bytes);
            assert!(decoded > 0, "{target}/{name} is not accepted");
            let path = dir.join(target).join(&name);
            if write {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, &bytes).unwrap();
            } else {
                // A request carries its deadline as a duration from when it
                // was encoded, so the bytes change with time: the committed
                // seed must decode as the new one does.
                let committed = std::fs::read(&path).unwrap_or_default();
                assert!(
                    decode(target, &committed) == decoded,
                    "{} is missing or stale: run FORK_FUZZ_WRITE_CORPUS=1 \
                     cargo test -p fork-rpc --features fuzzing fuzzing",
                    path.display()
                );
            }
        }
    }

    #[test]
    fn every_seed_frame_decodes() {
        for (target, name, bytes) in seeds() {
            let frames = match (target, name.contains("batch"), name.contains("events")) {
                ("rpc_worker_frames", true, _) => 5,
                ("rpc_parent_frames", _, true) => 6,
                ("rpc_parent_frames", _, _) if name.contains("replies") => 6,
                _ => 1,
            };
            let decoded = match target {
                "rpc_worker_frames" => rpc_worker_frames(&bytes),
                _ => rpc_parent_frames(&bytes),
            };
            assert_eq!(decoded, frames, "{target}/{name}");
        }
    }

    #[test]
    fn limits_and_panics_are_errors() {
        // A frame announced past the limit is refused before its bytes come.
        let mut input = BytesMut::from(&((MAX_FRAME as u32 + 1).to_be_bytes())[..]);
        let e = frame::decode::<ClientMessage<FuzzRequest>>(&mut input, MAX_FRAME, Format::Bincode)
            .unwrap_err();
        assert!(e.to_string().contains("exceeds max_frame"), "{e}");
        // One within it makes room for itself, and waits.
        let mut input = BytesMut::from(&((MAX_FRAME as u32).to_be_bytes())[..]);
        let frame =
            frame::decode::<ClientMessage<FuzzRequest>>(&mut input, MAX_FRAME, Format::Bincode);
        assert!(matches!(frame, Ok(None)));
        assert!(input.capacity() >= MAX_FRAME + 4);
        // An absurd deadline panics in tarpc; the panic is an error.
        let json = br#"{"Request":{"context":{"deadline":{"secs":18446744073709551615,"nanos":0},"trace_context":{"trace_id":0,"span_id":0,"sampling_decision":"Unsampled"}},"id":1,"message":{"Ping":{}}}}"#;
        let mut input = BytesMut::new();
        input.extend_from_slice(&(json.len() as u32).to_be_bytes());
        input.extend_from_slice(json);
        let e = frame::decode::<ClientMessage<FuzzRequest>>(&mut input, MAX_FRAME, Format::Json)
            .unwrap_err();
        assert!(e.to_string().contains("overflow"), "{e}");
        assert!(input.is_empty());
    }
}
