//! Entry points for fuzzing the control protocol's decoders (feature
//! `fuzzing`; not a stable API, hidden from the docs).
//!
//! Each function takes arbitrary bytes, cuts them into what a peer could
//! send, and drives the real decoders of `proto` the way their callers do:
//!
//! - [`template_requests`]: what a template reads from its parent
//!   (`template/serve.rs`: `Assembler::push` per frame, then, per message,
//!   `Reader::request` until the message is consumed and the descriptor
//!   count check against `fds_needed`);
//! - [`template_replies`]: what the parent reads from a template
//!   (`template/conn.rs`: `read_loop` and `dispatch`, with `Reader::reply`);
//! - [`remote_stream`]: what the parent reads from a remote template's
//!   byte stream (`remote/bridge.rs`: frames, the greeting, replies);
//! - [`worker_ack`]: the report a forked process writes on its socket before
//!   it starts (`template/mod.rs`: `read_ack`, with `Ack::decode_header` and
//!   `Ack::decode_body`).
//!
//! Descriptors are `()` instead of `OwnedFd`: the assembler only counts and
//! carries them. None of these functions may panic, hang, or allocate more
//! than a small multiple of [`MESSAGE_LIMIT`] (or `MAX_ACK`), whatever the
//! bytes; the fuzz targets in `fuzz/` check exactly that. Besides, every
//! message that decodes must encode back to the same bytes (the encoding is
//! canonical): a difference is a disagreement between `Writer` and `Reader`,
//! and panics.
//!
//! # Input layout of the frame-based entry points
//!
//! The input is a sequence of deliveries, each what one `recvmsg` on the
//! control socket returns:
//!
//! ```text
//! [ctl u8][nfds u8][len u16 LE][len bytes]
//! ```
//!
//! - `ctl` bit 0 (`RAW`): the bytes are a whole frame as sent, header
//!   included. Otherwise they are a payload, and a correct header is put in
//!   front of them, with the `MORE` flag from `ctl` bit 1 and `nfds`
//!   (at most `MAX_FDS_PER_FRAME`) as the announced descriptor count; so the
//!   fuzzer can reach the record decoders without getting lengths right.
//! - `nfds` descriptors arrive with the frame (at most 253, the kernel's
//!   `SCM_MAX_FD`); one more when `ctl` bit 2 is set, so that the count can
//!   differ from what a built header announces.
//! - If fewer than `len` bytes are left, the delivery takes what is left. A
//!   delivery of no bytes and no descriptors is end of file, as `scm::recv`
//!   reports it: the input ends there.
//!
//! The frames a `len` of 16 bits can carry (up to 65535 bytes) all fit the
//! receive buffer of the real loops (`HEADER_LEN + MAX_FRAME_PAYLOAD`), so
//! none is truncated; the header's own length check is reached through raw
//! frames.

use crate::proto::{
    ACK_HEADER, Ack, Assembler, FLAG_MORE, HEADER_LEN, MAGIC, MAX_FDS_PER_FRAME, Reader, Reply,
    Request, VERSION, Writer, fds_needed,
};

/// The limit on a reassembled message used here, in bytes, instead of the
/// real loops' 64 MiB.
///
/// The limit is a parameter of the same `Assembler` code, so a small one
/// changes no code path; but it lets inputs of a fuzzer's size (up to
/// 128 KiB in `.ci/fuzz`) reach the limit check, and it makes "allocates
/// beyond the limit" something the fuzzer's allocation cap can catch: the
/// assembler's buffer grows to at most twice the limit (128 KiB), far below
/// the 1 MiB cap of `.ci/fuzz`, while one allocation sized from an
/// unchecked length field would exceed it. One whole frame (64 KiB of
/// payload) fits it exactly, and two do not.
pub const MESSAGE_LIMIT: usize = 64 * 1024;

/// Most descriptors one `recvmsg` can deliver (the kernel's `SCM_MAX_FD`).
const SCM_MAX_FD: usize = 253;

/// `ctl` bits of a delivery (see the module docs).
const CTL_RAW: u8 = 1;
const CTL_MORE: u8 = 2;
const CTL_EXTRA_FD: u8 = 4;

/// Drives what a template does with the bytes its parent sends; see the
/// module docs for the input layout. Returns how many messages were
/// accepted (every request decoded, and as many descriptors as they need).
///
/// After a protocol error the template reports it and keeps reading (it
/// only stops acting on requests), so this goes on with the next frame too.
///
/// # Panics
///
/// If a decoded message does not encode back to the same bytes; anything
/// else that panics is a bug of the decoders.
pub fn template_requests(data: &[u8]) -> usize {
    let mut asm = Assembler::<()>::new(MESSAGE_LIMIT);
    let mut accepted = 0;
    for (frame, fds) in Deliveries(data) {
        // As `Server::serve`: an error is fatal to the template, which
        // reports it and reads on; the assembler dropped the partial message.
        if let Ok(Some((msg, fds))) = asm.push(&frame, fds)
            && requests(&msg, fds.len()).is_some()
        {
            accepted += 1;
        }
    }
    accepted
}

/// The requests of one message and the descriptor check, as
/// `Server::handle` makes them; `None` where it fails the template.
fn requests(msg: &[u8], fds: usize) -> Option<Vec<Request>> {
    let mut reader = Reader::new(msg);
    let mut requests = Vec::new();
    while !reader.is_empty() {
        requests.push(reader.request().ok()?);
    }
    let mut w = Writer::default();
    for request in &requests {
        w.request(request);
    }
    assert_eq!(
        w.buf, msg,
        "requests decoded from a message encode differently"
    );
    let needed: usize = requests.iter().map(fds_needed).sum();
    (needed == fds).then_some(requests)
}

/// Drives what a parent does with the bytes a template sends; see the
/// module docs for the input layout. Returns how many messages were
/// dispatched whole.
///
/// The first protocol error ends the input, as in `read_loop`: the parent
/// shuts the connection down and reads nothing more. Descriptors that
/// arrive are dropped, as there.
///
/// # Panics
///
/// If a decoded message does not encode back to the same bytes; anything
/// else that panics is a bug of the decoders.
pub fn template_replies(data: &[u8]) -> usize {
    let mut asm = Assembler::<()>::new(MESSAGE_LIMIT);
    let mut dispatched = 0;
    for (frame, fds) in Deliveries(data) {
        match asm.push(&frame, fds) {
            Ok(Some((msg, _fds))) => match replies(&msg) {
                Some(_) => dispatched += 1,
                None => break,
            },
            Ok(None) => {}
            Err(_) => break,
        }
    }
    dispatched
}

/// The replies of one message, as `Conn::dispatch` reads them; `None` at
/// the first that does not decode.
fn replies(msg: &[u8]) -> Option<Vec<Reply>> {
    let mut reader = Reader::new(msg);
    let mut replies = Vec::new();
    while !reader.is_empty() {
        replies.push(reader.reply().ok()?);
    }
    let mut w = Writer::default();
    for reply in &replies {
        w.reply(reply);
    }
    assert_eq!(
        w.buf, msg,
        "replies decoded from a message encode differently"
    );
    Some(replies)
}

/// Drives what a parent does with the start-up report of a forked process,
/// as `read_ack` does: `data` is everything the process wrote on its socket
/// before closing it (only the first report is read). Returns whether a
/// report was accepted.
///
/// # Panics
///
/// If an accepted report does not encode back to the bytes it was read
/// from; anything else that panics is a bug of the decoder.
pub fn worker_ack(data: &[u8]) -> bool {
    // EOF before the first byte is "no report" (the exec succeeded); EOF
    // later is an error of `read_exact`.
    let Some(head) = data.first_chunk::<ACK_HEADER>() else {
        return false;
    };
    let Ok((status, len)) = Ack::decode_header(*head) else {
        return false;
    };
    // As `read_ack`: the body's buffer is allocated from the length in the
    // header (which `decode_header` bounds) before the body is read.
    let mut body = vec![0u8; len];
    let Some(bytes) = data.get(ACK_HEADER..ACK_HEADER + len) else {
        return false;
    };
    body.copy_from_slice(bytes);
    let Ok(ack) = Ack::decode_body(status, &body) else {
        return false;
    };
    assert_eq!(
        ack.encode(),
        data[..ACK_HEADER + len],
        "an acknowledgement encodes differently"
    );
    true
}

/// Cuts fuzzer input into deliveries: a frame and its descriptors.
struct Deliveries<'a>(&'a [u8]);

impl Iterator for Deliveries<'_> {
    type Item = (Vec<u8>, Vec<()>);

    fn next(&mut self) -> Option<Self::Item> {
        let (&[ctl, nfds, l0, l1], rest) = self.0.split_first_chunk::<4>()?;
        let len = usize::from(u16::from_le_bytes([l0, l1])).min(rest.len());
        let (bytes, rest) = rest.split_at(len);
        self.0 = rest;
        let nfds = usize::from(nfds);
        let arrived = (nfds + usize::from(ctl & CTL_EXTRA_FD != 0)).min(SCM_MAX_FD);
        let frame = if ctl & CTL_RAW != 0 {
            bytes.to_vec()
        } else {
            let mut frame = Vec::with_capacity(HEADER_LEN + bytes.len());
            frame.extend_from_slice(&[
                MAGIC,
                VERSION,
                if ctl & CTL_MORE != 0 { FLAG_MORE } else { 0 },
                nfds.min(MAX_FDS_PER_FRAME) as u8,
            ]);
            frame.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            frame.extend_from_slice(bytes);
            frame
        };
        if frame.is_empty() && arrived == 0 {
            return None;
        }
        Some((frame, vec![(); arrived]))
    }
}

/// Seeds for the fuzz corpus: valid input made with the real encoders.
///
/// `cargo test -p fork-core --features fuzzing fuzzing` checks that each
/// seed is accepted and that the files in `fuzz/corpus/` are up to date;
/// with `FORK_FUZZ_WRITE_CORPUS=1` it writes them instead.
/// Drives what a parent does with the byte stream of a remote template
/// (`remote/builder.rs`'s greeting, then `remote/bridge.rs`'s reader): the
/// input is the stream itself. Frames are cut by `wire::decode` (with
/// [`MESSAGE_LIMIT`] for control messages instead of the real 4 MiB); the
/// first must be a greeting that decodes, each control message must decode
/// as replies (as the template's connection dispatches them). Returns how
/// many frames were accepted; stops at the first error, as the reader does.
///
/// # Panics
///
/// If a decoded frame or greeting does not encode back to the same bytes.
pub fn remote_stream(data: &[u8]) -> usize {
    use crate::remote::hello::Hello;
    use crate::remote::wire::{self, Frame};
    let mut at = 0;
    let mut accepted = 0;
    while let Ok(Some((frame, used))) = wire::decode(&data[at..], MESSAGE_LIMIT) {
        assert_eq!(
            wire::to_vec(&frame),
            data[at..at + used],
            "a frame encodes differently"
        );
        at += used;
        let ok = match (accepted, frame) {
            (0, Frame::Hello(payload)) => match Hello::decode(payload) {
                Ok(hello) => {
                    assert_eq!(hello.encode(), payload, "a greeting encodes differently");
                    true
                }
                Err(_) => false,
            },
            (0, _) | (_, Frame::Hello(_)) => false,
            (_, Frame::Control(msg)) => replies(msg).is_some(),
            (
                _,
                Frame::Data { .. }
                | Frame::Eof { .. }
                | Frame::Credit { .. }
                | Frame::Close { .. }
                | Frame::Ping { .. }
                | Frame::Pong
                | Frame::Listening(_)
                | Frame::Forwarded { .. },
            ) => true,
        };
        if !ok {
            break;
        }
        accepted += 1;
    }
    accepted
}

#[cfg(test)]
mod corpus {
    use super::*;
    use crate::proto::{ExecSpec, Op, SpawnFailure, Then, encode_header, split};

    /// One delivery per frame of `msg`, split as `Conn::send` splits it
    /// (raw frames, headers made by `encode_header`), with `nfds`
    /// descriptors spread as it spreads them.
    fn deliveries(msg: &[u8], nfds: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for (header, bytes, fds) in split(msg.len(), nfds) {
            let mut frame = encode_header(header).to_vec();
            frame.extend_from_slice(&msg[bytes]);
            out.push(CTL_RAW);
            out.push(fds.len() as u8);
            out.extend_from_slice(&(frame.len() as u16).to_le_bytes());
            out.extend_from_slice(&frame);
        }
        out
    }

    fn requests(reqs: &[Request]) -> Vec<u8> {
        let mut w = Writer::default();
        for r in reqs {
            w.request(r);
        }
        let nfds = reqs.iter().map(fds_needed).sum();
        deliveries(&w.buf, nfds)
    }

    fn replies(replies: &[Reply]) -> Vec<u8> {
        let mut w = Writer::default();
        for r in replies {
            w.reply(r);
        }
        deliveries(&w.buf, 0)
    }

    /// `(target, file name, bytes)` of every seed.
    fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
        let spawn_run = Request::Spawn {
            id: 7,
            ack: true,
            ops: vec![
                Op::Arg(b"config".to_vec()),
                Op::Fd,
                Op::Init {
                    name: "app::init".into(),
                    arg: vec![1, 2, 3],
                },
            ],
            then: Then::Run("app::worker".into()),
        };
        let spawn_exec = Request::Spawn {
            id: 8,
            ack: true,
            ops: vec![Op::Fd, Op::Fd],
            then: Then::Exec(ExecSpec {
                program: b"ls".to_vec(),
                args: vec![b"ls".to_vec(), b"-l".to_vec()],
                env_clear: false,
                env: vec![(b"A".to_vec(), Some(b"1".to_vec())), (b"B".to_vec(), None)],
                cwd: Some(b"/tmp".to_vec()),
                stdio: [None, Some(0), Some(1)],
            }),
        };
        let prepare = Request::Prepare(vec![
            Op::Arg(vec![0; 40]),
            Op::Fd,
            Op::Init {
                name: "app::preload".into(),
                arg: vec![],
            },
        ]);
        // A message of more than one frame (past `MAX_FRAME_PAYLOAD`) would
        // exceed `MESSAGE_LIMIT`; a batch of many small requests is the
        // common big message.
        let batch: Vec<Request> = (0..40)
            .map(|id| match id % 3 {
                0 => Request::Ping { id },
                1 => Request::Kill {
                    pid: id as i32,
                    signal: 15,
                },
                _ => Request::Spawn {
                    id,
                    ack: false,
                    ops: vec![],
                    then: Then::Template,
                },
            })
            .collect();
        let mut two_messages = requests(&[Request::Ping { id: 1 }]);
        two_messages.extend(requests(std::slice::from_ref(&spawn_run)));

        let every_reply = [
            Reply::Ready,
            Reply::Spawned { id: 1, pid: 4242 },
            Reply::SpawnFailed {
                id: 2,
                failure: SpawnFailure::Fork(11),
            },
            Reply::SpawnFailed {
                id: 3,
                failure: SpawnFailure::UnknownEntry("app::nope".into()),
            },
            Reply::SpawnFailed {
                id: 4,
                failure: SpawnFailure::DuplicateEntry("app::twice".into()),
            },
            Reply::SpawnFailed {
                id: 5,
                failure: SpawnFailure::BadRequest("bad".into()),
            },
            Reply::Exited {
                pid: 4242,
                status: 0x0900,
            },
            Reply::Pong { id: 6 },
        ];
        let mut replies_then_more = replies(&[Reply::Ready]);
        replies_then_more.extend(replies(&[
            Reply::Spawned { id: 0, pid: 100 },
            Reply::Exited {
                pid: 100,
                status: 0,
            },
        ]));

        vec![
            (
                "template_requests",
                "seed-ping",
                requests(&[Request::Ping { id: 1 }]),
            ),
            (
                "template_requests",
                "seed-spawn-run",
                requests(&[spawn_run]),
            ),
            (
                "template_requests",
                "seed-spawn-exec",
                requests(&[spawn_exec]),
            ),
            ("template_requests", "seed-prepare", requests(&[prepare])),
            (
                "template_requests",
                "seed-kill",
                requests(&[Request::Kill { pid: 42, signal: 9 }]),
            ),
            ("template_requests", "seed-batch", requests(&batch)),
            ("template_requests", "seed-two-messages", two_messages),
            ("template_replies", "seed-ready", replies(&[Reply::Ready])),
            (
                "template_replies",
                "seed-every-reply",
                replies(&every_reply),
            ),
            (
                "template_replies",
                "seed-init-failed",
                replies(&[Reply::InitFailed {
                    name: "app::init".into(),
                    message: "no config".into(),
                }]),
            ),
            (
                "template_replies",
                "seed-protocol-error",
                replies(&[Reply::ProtocolError {
                    message: "unknown request tag 0x55".into(),
                }]),
            ),
            ("template_replies", "seed-two-messages", replies_then_more),
            ("worker_ack", "seed-ready", Ack::Ready.encode()),
            (
                "worker_ack",
                "seed-init-failed",
                Ack::InitFailed {
                    name: "app::init".into(),
                    message: "no config".into(),
                }
                .encode(),
            ),
            (
                "worker_ack",
                "seed-exec-failed",
                Ack::ExecFailed(2).encode(),
            ),
            ("remote_stream", "seed-greeting-and-a-worker", remote_seed()),
        ]
    }

    /// A remote template's stream: its greeting, the path of its socket for
    /// workers' streams, a spawn's reply, a keepalive's answer, the
    /// worker's bytes, credit for the parent's, the worker's EOF and exit.
    fn remote_seed() -> Vec<u8> {
        use crate::remote::hello::{Hello, VERSION};
        use crate::remote::wire::{Frame, encode};
        let hello = Hello {
            version: VERSION,
            same_build: false,
            listen: false,
            pid: 4242,
            build_id: vec![0xab; 20],
        };
        let mut out = Vec::new();
        encode(&Frame::Hello(&hello.encode()), &mut out);
        let mut w = Writer::default();
        w.reply(&Reply::Ready);
        w.reply(&Reply::Spawned { id: 0, pid: 4243 });
        encode(&Frame::Listening(b"/tmp/fork-core-AbC123/s"), &mut out);
        encode(&Frame::Control(&w.buf), &mut out);
        encode(&Frame::Pong, &mut out);
        encode(
            &Frame::Data {
                channel: 0,
                bytes: b"HELLO",
            },
            &mut out,
        );
        encode(
            &Frame::Credit {
                channel: 0,
                bytes: 5,
            },
            &mut out,
        );
        encode(&Frame::Eof { channel: 0 }, &mut out);
        let mut w = Writer::default();
        w.reply(&Reply::Exited {
            pid: 4243,
            status: 0,
        });
        encode(&Frame::Control(&w.buf), &mut out);
        out
    }

    #[test]
    fn seeds_are_accepted_and_committed() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
        let write = std::env::var_os("FORK_FUZZ_WRITE_CORPUS").is_some_and(|v| v == "1");
        for (target, name, bytes) in seeds() {
            let accepted = match target {
                "template_requests" => template_requests(&bytes) > 0,
                "template_replies" => template_replies(&bytes) > 0,
                "worker_ack" => worker_ack(&bytes),
                "remote_stream" => remote_stream(&bytes) > 0,
                _ => unreachable!("{target}"),
            };
            assert!(accepted, "{target}/{name} is not accepted");
            let path = dir.join(target).join(name);
            if write {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, &bytes).unwrap();
            } else {
                let committed = std::fs::read(&path).unwrap_or_default();
                assert!(
                    committed == bytes,
                    "{} is missing or stale: run FORK_FUZZ_WRITE_CORPUS=1 \
                     cargo test -p fork-core --features fuzzing fuzzing",
                    path.display()
                );
            }
        }
    }

    #[test]
    fn deliveries_follow_the_layout() {
        // A built header, one descriptor announced and two arriving.
        let input = [CTL_MORE | CTL_EXTRA_FD, 1, 2, 0, b'a', b'b'];
        let all: Vec<_> = Deliveries(&input).collect();
        assert_eq!(
            all,
            [(
                vec![MAGIC, VERSION, FLAG_MORE, 1, 2, 0, 0, 0, b'a', b'b'],
                vec![(); 2]
            )]
        );
        // A length past the end takes what is left; an empty raw delivery
        // without descriptors is EOF.
        let input = [CTL_RAW, 0, 9, 0, 1, 2];
        assert_eq!(
            Deliveries(&input).collect::<Vec<_>>(),
            [(vec![1, 2], vec![])]
        );
        assert_eq!(Deliveries(&[CTL_RAW, 0, 0, 0, 5]).count(), 0);
    }

    #[test]
    fn a_forged_remote_stream_is_refused() {
        // No greeting first; an unknown kind; a length past the limit.
        assert_eq!(remote_stream(&[4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]), 0);
        assert_eq!(remote_stream(&[0x7f; 13]), 0);
        assert_eq!(
            remote_stream(&[2, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]),
            0
        );
        // The seed with its last byte cut off: all but its last frame.
        let seed = remote_seed();
        assert_eq!(remote_stream(&seed), 8);
        assert_eq!(remote_stream(&seed[..seed.len() - 1]), 7);
    }

    #[test]
    fn forged_input_is_refused() {
        assert_eq!(template_requests(&[0, 0, 1, 0, 0x55]), 0);
        // Announced descriptors that do not arrive.
        assert_eq!(template_requests(&[CTL_EXTRA_FD, 0, 1, 0, 0x04]), 0);
        let mut ping = Writer::default();
        ping.request(&Request::Ping { id: 0 });
        let with = |ctl: u8, nfds: u8| {
            let mut input = vec![ctl, nfds, ping.buf.len() as u8, 0];
            input.extend_from_slice(&ping.buf);
            template_requests(&input)
        };
        assert_eq!(with(0, 0), 1);
        // The header announces none and one arrives: the assembler refuses.
        assert_eq!(with(CTL_EXTRA_FD, 0), 0);
        // One announced and arrived, but a ping needs none: `handle` refuses.
        assert_eq!(with(0, 1), 0);
        assert!(!worker_ack(&[0, 1, 0, 0, 0, 0]));
        assert!(!worker_ack(&[1, 0xff, 0xff, 0xff, 0xff]));
    }
}
