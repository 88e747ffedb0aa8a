//! Serialisation of frames, in the format the [`Config`](crate::Config) names.

use std::io;
use std::panic;

use bincode::Options;
use bytes::{Buf, BufMut, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bounded;
use crate::config::Format;

fn bincode_options(limit: u64) -> impl Options {
    bincode::DefaultOptions::new().with_limit(limit)
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// The error for a frame over the limit, naming the knob that sets it.
fn too_big(size: Option<u64>, limit: u64) -> io::Error {
    let size = size.map_or_else(|| "more than that".to_owned(), |n| format!("{n} bytes"));
    invalid(format!(
        "the frame exceeds max_frame, the frame limit of {limit} bytes \
         (fork_rpc::Config::max_frame): it needs {size}"
    ))
}

/// Encodes one value in `format`; fails if the result exceeds `limit` bytes.
pub(crate) fn encode<T: Serialize>(format: Format, limit: u64, item: &T) -> io::Result<Vec<u8>> {
    let bytes = match format {
        Format::Bincode => bincode_options(limit)
            .serialize(item)
            .map_err(|e| match *e {
                bincode::ErrorKind::SizeLimit => too_big(
                    bincode::DefaultOptions::new().serialized_size(item).ok(),
                    limit,
                ),
                e => invalid(e),
            })?,
        Format::Json => serde_json::to_vec(item).map_err(invalid)?,
    };
    if bytes.len() as u64 > limit {
        return Err(too_big(Some(bytes.len() as u64), limit));
    }
    Ok(bytes)
}

/// Decodes one value in `format`, whose frame is at most `limit` bytes.
///
/// No length in `bytes` is trusted beyond the bytes that follow it, so
/// what a frame makes the decoder allocate is bounded by what its bytes
/// can encode: bincode hands a sequence's claimed length to serde, which
/// preallocates from it, so bincode decodes through [`bounded`], which
/// caps it at the bytes left; serde_json claims no length (see the
/// [`bounded`] module docs).
pub(crate) fn decode<T: DeserializeOwned>(
    format: Format,
    limit: u64,
    bytes: &[u8],
) -> io::Result<T> {
    match format {
        Format::Bincode => bounded::deserialize(bincode_options(limit), bytes).map_err(invalid),
        Format::Json => serde_json::from_slice(bytes).map_err(invalid),
    }
}

/// Splits the next whole frame off `input` and decodes it, as the worker
/// reads what the parent sends: a length (`u32`, big-endian), then a value
/// encoded in `format`.
///
/// The length is checked against `max_frame` as soon as it is read, before
/// the frame's bytes are awaited: for a frame not whole yet, `input` gets
/// room for the rest of it (at most `max_frame` bytes) and `Ok(None)` is
/// returned. A decoded frame is removed from `input`.
///
/// # Errors
///
/// A frame longer than `max_frame`, or one that does not decode as `T`
/// (a panic while decoding included, with its message): nothing after it
/// can be read.
pub(crate) fn decode_frame<T: DeserializeOwned>(
    input: &mut BytesMut,
    max_frame: usize,
    format: Format,
) -> io::Result<Option<T>> {
    let Some(prefix) = input.first_chunk::<4>() else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(*prefix) as usize;
    if len > max_frame {
        return Err(too_big(Some(len as u64), max_frame as u64));
    }
    if input.len() < 4 + len {
        input.reserve(4 + len - input.len());
        return Ok(None);
    }
    let frame = &input[4..4 + len];
    // Decoding can panic on what the parent sent: tarpc adds the deadline
    // it reads to the clock, which overflows on an absurd one.
    let limit = max_frame as u64;
    let message = panic::catch_unwind(|| decode::<T>(format, limit, frame))
        .unwrap_or_else(|panic| Err(invalid(fork_core::__private::panic_message(&*panic))));
    input.advance(4 + len);
    message.map(Some)
}

/// The request id of a frame that starts as a reply (a
/// [`WorkerMsg::Reply`](crate::message::WorkerMsg)), whatever follows it: a
/// reply whose value does not decode then fails its own call, not the
/// connection.
pub(crate) fn reply_id(format: Format, limit: u64, bytes: &[u8]) -> Option<u64> {
    /// The start of a `WorkerMsg::Reply`: its variant, then the first field
    /// of tarpc's `Response`.
    #[derive(serde::Deserialize)]
    enum Head {
        Reply(ReplyHead),
    }
    #[derive(serde::Deserialize)]
    struct ReplyHead {
        request_id: u64,
    }
    // `Head` holds no sequence or map, and bincode reads nothing after
    // it: nothing here preallocates, so plain bincode will do.
    let head = match format {
        Format::Bincode => bincode_options(limit)
            .allow_trailing_bytes()
            .deserialize(bytes)
            .ok(),
        Format::Json => serde_json::from_slice(bytes).ok(),
    };
    head.map(|Head::Reply(r)| r.request_id)
}

/// Appends one value to `out` as a frame: its length (`u32`, big-endian, as
/// `LengthDelimitedCodec` writes it), then the value encoded in `format`.
/// Encodes in one pass and stops as soon as the frame exceeds `limit` bytes.
///
/// # Errors
///
/// If the value cannot be encoded or its frame exceeds `limit` bytes; `out`
/// is then left as it was.
pub(crate) fn encode_frame<T: Serialize>(
    format: Format,
    limit: u64,
    item: &T,
    out: &mut BytesMut,
) -> io::Result<()> {
    let start = out.len();
    out.put_u32(0);
    let mut body = Limited {
        out,
        left: limit.min(u32::MAX.into()),
        limit,
    };
    let encoded = match format {
        Format::Bincode => bincode::DefaultOptions::new()
            .serialize_into(&mut body, item)
            .map_err(invalid),
        Format::Json => serde_json::to_writer(&mut body, item).map_err(invalid),
    };
    match encoded {
        Ok(()) => {
            let len = (out.len() - start - 4) as u32;
            out[start..start + 4].copy_from_slice(&len.to_be_bytes());
            Ok(())
        }
        Err(e) => {
            out.truncate(start);
            Err(e)
        }
    }
}

/// Appends to a buffer, failing once more than `left` bytes would be written.
struct Limited<'a> {
    out: &'a mut BytesMut,
    left: u64,
    /// The limit, for the error message.
    limit: u64,
}

impl io::Write for Limited<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.len() as u64 > self.left {
            return Err(too_big(None, self.limit));
        }
        self.left -= buf.len() as u64;
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
