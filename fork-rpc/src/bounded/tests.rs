//! The wrapper fed lying frames at every depth, against bincode as it is.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::panic;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tarpc::{ClientMessage, Response, ServerError};

use super::*;
use crate::error::HandlerPanic;
use crate::message::WorkerMsg;

/// The options `codec::decode` uses.
fn options() -> impl Options {
    bincode::DefaultOptions::new().with_limit(64 * 1024)
}

/// bincode as it is, as `codec::decode` used it before.
fn plain<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> bincode::Result<T> {
    options().deserialize(bytes)
}

fn bounded<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> bincode::Result<T> {
    deserialize(options(), bytes)
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    options().serialize(value).unwrap()
}

// ===== size hints =====

thread_local! {
    /// The size hints [`SeqHint`] and [`MapHint`] were handed, in order.
    static HINTS: RefCell<Vec<Option<usize>>> = const { RefCell::new(Vec::new()) };
}

/// The size hints handed out while `decode` runs (whether it succeeds
/// or not).
fn hints<T>(decode: impl FnOnce() -> bincode::Result<T>) -> Vec<Option<usize>> {
    HINTS.with(|h| h.borrow_mut().clear());
    let _ = decode();
    HINTS.with(|h| h.take())
}

/// A sequence of bytes that notes the size hint it is handed before it
/// reads an element (and preallocates nothing).
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct SeqHint(Vec<u8>);

impl<'de> Deserialize<'de> for SeqHint {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Notes;
        impl<'de> Visitor<'de> for Notes {
            type Value = SeqHint;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a sequence")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<SeqHint, A::Error> {
                HINTS.with(|h| h.borrow_mut().push(seq.size_hint()));
                let mut bytes = Vec::new();
                while let Some(b) = seq.next_element()? {
                    bytes.push(b);
                }
                Ok(SeqHint(bytes))
            }
        }
        deserializer.deserialize_seq(Notes)
    }
}

/// A map of bytes that notes the size hint it is handed, likewise.
struct MapHint;

impl<'de> Deserialize<'de> for MapHint {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Notes;
        impl<'de> Visitor<'de> for Notes {
            type Value = MapHint;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<MapHint, A::Error> {
                HINTS.with(|h| h.borrow_mut().push(map.size_hint()));
                while map.next_entry::<u8, u8>()?.is_some() {}
                Ok(MapHint)
            }
        }
        deserializer.deserialize_map(Notes)
    }
}

/// Every way bincode reaches a nested value.
#[derive(Deserialize)]
#[allow(dead_code)]
enum Nest {
    Unit,
    Newtype(SeqHint),
    Tuple(u8, SeqHint),
    Struct { a: u8, s: SeqHint },
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct InStruct {
    a: u8,
    s: SeqHint,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct Newtype(SeqHint);

/// The hints the plain and the bounded decoder hand out for `frame`
/// decoded as `T`.
fn both<T: DeserializeOwned>(frame: &[u8]) -> [Vec<Option<usize>>; 2] {
    [hints(|| plain::<T>(frame)), hints(|| bounded::<T>(frame))]
}

#[test]
fn hints_are_bounded_by_the_bytes_left() {
    // Each frame claims a length of 250 (one byte in bincode's varint
    // encoding) and holds fewer bytes after it: bincode hands the claim
    // on, the wrapper the bytes left.
    let (claim, some) = (250, Some);
    assert_eq!(both::<SeqHint>(&[claim, 1, 2, 3]), [[some(250)], [some(3)]]);
    assert_eq!(
        both::<MapHint>(&[claim, 1, 2, 3, 4]),
        [[some(250)], [some(4)]]
    );
    assert_eq!(
        both::<InStruct>(&[7, claim, 1, 2]),
        [[some(250)], [some(2)]]
    );
    assert_eq!(
        both::<Option<SeqHint>>(&[1, claim, 1]),
        [[some(250)], [some(1)]]
    );
    assert_eq!(both::<Newtype>(&[claim, 1, 2]), [[some(250)], [some(2)]]);
    assert_eq!(both::<Nest>(&[1, claim, 1, 2, 3]), [[some(250)], [some(3)]]);
    assert_eq!(both::<Nest>(&[2, 7, claim, 1, 2]), [[some(250)], [some(2)]]);
    assert_eq!(both::<Nest>(&[3, 7, claim, 1]), [[some(250)], [some(1)]]);
    assert_eq!(
        both::<Vec<SeqHint>>(&[1, claim, 1, 2]),
        [[some(250)], [some(2)]]
    );
    assert_eq!(
        both::<BTreeMap<u8, SeqHint>>(&[1, 7, claim, 1, 2]),
        [[some(250)], [some(2)]]
    );
    assert_eq!(
        both::<BTreeMap<SeqHint, u8>>(&[1, claim, 1, 2]),
        [[some(250)], [some(2)]]
    );
    // Nested three deep: a map value in a vector in an option.
    assert_eq!(
        both::<Option<Vec<HashMap<u8, SeqHint>>>>(&[1, 1, 1, 7, claim, 1]),
        [[some(250)], [some(1)]]
    );
}

#[test]
fn a_hint_within_the_bytes_left_is_unchanged() {
    // Two elements claimed, three bytes left: the claim stands, and the
    // value decodes (the byte after the sequence is the tuple's).
    let frame = [2, 5, 6, 9];
    assert_eq!(both::<(SeqHint, u8)>(&frame), [[Some(2)], [Some(2)]]);
    assert_eq!(
        bounded::<(SeqHint, u8)>(&frame).unwrap(),
        (SeqHint(vec![5, 6]), 9)
    );
}

#[test]
fn a_mebibyte_claimed_in_six_bytes_preallocates_nothing() {
    // The frame of fuzz/README.md ("Known findings"): a
    // `WorkerMsg::Event` (variant 1) whose `Vec<u8>` claims 2^20 bytes
    // (`fc` then a `u32`), and nothing after it.
    let frame = [0x01, 0xfc, 0x00, 0x00, 0x10, 0x00];
    // It fails to decode, as it did, with the same error.
    let e = bounded::<WorkerMsg<()>>(&frame).unwrap_err().to_string();
    assert_eq!(e, plain::<WorkerMsg<()>>(&frame).unwrap_err().to_string());
    // The hint serde's `Vec<u8>` visitor preallocates from (with
    // `size_hint::cautious`, capped at 1 MiB): plain bincode hands it
    // 2^20, so 1 MiB; the wrapper 0, as no byte is left, so nothing.
    // (A counting allocator would show the allocation itself, but it
    // needs `unsafe impl GlobalAlloc`, which `forbid(unsafe_code)`
    // refuses in tests too: the fuzz targets check the allocation,
    // under libFuzzer's 1 MiB cap, with this frame in their corpus.)
    #[derive(Deserialize)]
    #[allow(dead_code)]
    enum Head {
        Reply(u8),
        Event(SeqHint),
    }
    assert_eq!(both::<Head>(&frame), [[Some(1 << 20)], [Some(0)]]);
    // Nested: a map of 2^20 sequences of 2^20 bytes, in eleven bytes.
    let frame = [
        0xfc, 0x00, 0x00, 0x10, 0x00, 0x07, 0xfc, 0x00, 0x00, 0x10, 0x00,
    ];
    assert_eq!(
        both::<HashMap<u8, SeqHint>>(&frame[..]),
        [[Some(1 << 20)], [Some(0)]]
    );
}

#[test]
fn serdes_own_vec_visitor_gets_the_bound() {
    /// 16 bytes in memory, none in bincode (the module's caveat): a
    /// `Vec` of them decodes whatever length it claims, and its
    /// capacity afterwards tells what serde preallocated.
    #[derive(Deserialize)]
    struct Unencoded {
        #[serde(skip)]
        _pad: u128,
    }
    // 100 elements claimed, then 3 bytes, the tuple's.
    let frame = [100, 1, 2, 3];
    let (v, ..) = plain::<(Vec<Unencoded>, u8, u8, u8)>(&frame).unwrap();
    assert_eq!((v.len(), v.capacity()), (100, 100));
    let (v, ..) = bounded::<(Vec<Unencoded>, u8, u8, u8)>(&frame).unwrap();
    // Preallocated for 3, then grown by pushing.
    assert_eq!(v.len(), 100);
    assert_ne!(v.capacity(), 100);
}

// ===== everything else unchanged =====

/// What decoding `bytes` as `T` gives: the value, the error or a panic.
fn outcome<T: fmt::Debug>(decode: fn(&[u8]) -> bincode::Result<T>, bytes: &[u8]) -> String {
    match panic::catch_unwind(|| decode(bytes)) {
        Ok(Ok(value)) => format!("{value:?}"),
        Ok(Err(e)) => format!("error: {e}"),
        Err(_) => "panic".to_owned(),
    }
}

/// Decodes the encoding of `value` with both decoders, and every prefix
/// of it and every change of one of its bytes to a value that matters
/// to bincode (0, 1, varint markers, a high bit): both give the same
/// outcome each time, a value for the encoding. (Not always `value`:
/// tarpc 0.38 writes a `ServerError`'s kind as an `i32` and reads a
/// `u32`, so through bincode `TimedOut` comes back as `Other`.)
fn agree<T: Serialize + DeserializeOwned + fmt::Debug>(value: &T) {
    let bytes = encode(value);
    assert!(bounded::<T>(&bytes).is_ok());
    let mut inputs: Vec<Vec<u8>> = (0..=bytes.len()).map(|n| bytes[..n].to_vec()).collect();
    for i in 0..bytes.len() {
        for b in [0, 1, 0x7f, 0xfb, 0xfc, 0xfd, 0xfe, 0xff, bytes[i] ^ 0x80] {
            let mut changed = bytes.clone();
            changed[i] = b;
            inputs.push(changed);
        }
    }
    for input in &inputs {
        assert_eq!(
            outcome(|b: &[u8]| plain::<T>(b), input),
            outcome(|b: &[u8]| bounded::<T>(b), input),
            "{input:02x?}"
        );
    }
}

#[derive(Debug, Serialize, Deserialize)]
enum Tag {
    Plain,
    Named(String),
    Numbered { n: u64, sub: Option<i16> },
}

#[derive(Debug, Serialize, Deserialize)]
struct Item {
    key: String,
    value: Vec<u8>,
    score: f64,
    tags: Vec<Tag>,
    by_name: BTreeMap<String, Vec<Option<Tag>>>,
    queue: VecDeque<(u8, char)>,
    wide: (u128, i128, f32, bool),
    unit: (),
}

fn item() -> Item {
    Item {
        key: "k€y".into(),
        value: vec![0, 1, 255],
        score: -0.5,
        tags: vec![
            Tag::Plain,
            Tag::Named("n".into()),
            Tag::Numbered {
                n: 300,
                sub: Some(-1),
            },
        ],
        by_name: BTreeMap::from([
            ("a".into(), vec![None, Some(Tag::Plain)]),
            ("b".into(), vec![]),
        ]),
        queue: VecDeque::from([(1, 'é'), (2, '🦀')]),
        wide: (u128::MAX, i128::MIN, 1.5, true),
        unit: (),
    }
}

#[test]
fn every_value_decodes_as_plain_bincode_does() {
    agree(&item());
    agree(&vec![item(), item()]);
    agree(&Some(Tag::Numbered { n: 1, sub: None }));
    agree(&(
        String::new(),
        Vec::<Vec<u8>>::new(),
        vec![vec![1u8], vec![]],
    ));
    agree(&HashMap::from([(7u32, "seven".to_owned())]));
    agree(&WorkerMsg::Reply(Response {
        request_id: 7,
        message: Ok(vec![item()]),
    }));
    agree(&WorkerMsg::<()>::Reply(Response {
        request_id: 8,
        message: Err(ServerError::new(io::ErrorKind::TimedOut, "late".into())),
    }));
    agree(&WorkerMsg::<()>::Event(encode(&item())));
    agree(&WorkerMsg::<()>::Panic(HandlerPanic {
        message: "boom".into(),
        location: Some("src/lib.rs:1:1".into()),
    }));
    agree(&WorkerMsg::<()>::Retire);
}

#[test]
fn requests_decode_as_plain_bincode_does() {
    /// tarpc's message from the parent; its deadline is decoded
    /// relative to the clock, so it is left out of the comparison.
    struct Request(ClientMessage<Item>);
    impl<'de> Deserialize<'de> for Request {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            ClientMessage::deserialize(d).map(Request)
        }
    }
    impl Serialize for Request {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            self.0.serialize(s)
        }
    }
    impl fmt::Debug for Request {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match &self.0 {
                ClientMessage::Request(r) => f
                    .debug_struct("Request")
                    .field("id", &r.id)
                    .field("trace_context", &r.context.trace_context)
                    .field("message", &r.message)
                    .finish(),
                cancel => cancel.fmt(f),
            }
        }
    }
    agree(&Request(ClientMessage::Request(tarpc::Request {
        context: tarpc::context::current(),
        id: 1,
        message: item(),
    })));
    agree(&Request(ClientMessage::Cancel {
        trace_context: tarpc::context::current().trace_context,
        request_id: 1,
    }));
}

/// The fuzz service's messages, as the corpus seeds have them.
#[cfg(feature = "fuzzing")]
#[test]
fn the_fuzz_services_messages_decode_as_plain_bincode_does() {
    use crate::fuzzing::{Filter, FuzzRequest, FuzzResponse, Progress, Stored};
    agree(&FuzzRequest::Put {
        key: "k".into(),
        value: vec![1, 2, 3],
        ttl: Some(60),
        tags: vec![crate::fuzzing::Tag::Named("n".into())],
    });
    agree(&FuzzRequest::Query {
        filter: Filter::Either(crate::fuzzing::Tag::Plain, None),
        limit: Some(3),
    });
    agree(&FuzzResponse::Put(Stored::Replaced { old: vec![9] }));
    agree(&FuzzResponse::Query(vec![crate::fuzzing::Item {
        key: "k".into(),
        value: vec![0; 4],
        score: 0.5,
        tag: Some(crate::fuzzing::Tag::Numbered { n: 1, sub: None }),
    }]));
    agree(&Progress::Done(Some(vec![1])));
}

#[test]
fn borrowed_stays_borrowed() {
    #[derive(Deserialize)]
    struct Borrows<'a> {
        s: &'a str,
        #[serde(borrow)]
        c: Cow<'a, str>,
        b: &'a [u8],
    }
    let frame = encode(&("str", "cow", &b"bytes"[..]));
    let v = bounded::<Borrows<'_>>(&frame).unwrap();
    assert_eq!((v.s, v.b), ("str", &b"bytes"[..]));
    assert!(matches!(v.c, Cow::Borrowed("cow")));
}

#[test]
fn not_human_readable() {
    struct Readable(bool);
    impl<'de> Deserialize<'de> for Readable {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let readable = d.is_human_readable();
            u8::deserialize(d)?;
            Ok(Readable(readable))
        }
    }
    assert!(!bounded::<Readable>(&[0]).unwrap().0);
}

#[test]
fn errors_are_bincodes() {
    // Trailing bytes, the end of the input inside a string and inside a
    // number, bad UTF-8, a bad tag.
    for frame in [&[1, b'a', 0][..], &[3, b'a'], &[0xfd, 1], &[1, 0xff]] {
        let (p, b) = (plain::<String>(frame), bounded::<String>(frame));
        assert_eq!(p.unwrap_err().to_string(), b.unwrap_err().to_string());
    }
    let (p, b) = (plain::<Option<u8>>(&[2]), bounded::<Option<u8>>(&[2]));
    assert_eq!(p.unwrap_err().to_string(), b.unwrap_err().to_string());
}
