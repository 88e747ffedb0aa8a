//! Records through the encoder and back through the decoder, byte by byte.

use super::message::tag;
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
        ops: vec![
            Op::Fd,
            Op::Arg(vec![]),
            Op::SlotData(b"layer".to_vec()),
            Op::SlotFd,
        ],
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
    roundtrip_request(Request::Release { id: 5 });
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
    roundtrip_reply(Reply::Released { id: 6, pid: 77 });
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
