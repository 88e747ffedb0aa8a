//! Serialisation of frame bodies, in the format the [`Config`](crate::Config)
//! names (the framing itself is [`frame`](crate::frame)'s).

use std::io;

use bincode::Options;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bounded;
use crate::config::Format;

fn bincode_options(limit: u64) -> impl Options {
    bincode::DefaultOptions::new().with_limit(limit)
}

pub(crate) fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// The error for a frame over the limit, naming the knob that sets it.
pub(crate) fn too_big(size: Option<u64>, limit: u64) -> io::Error {
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

/// Encodes one value in `format` into `out`, with no limit of its own
/// (`out` may set one, as [`frame::encode_into`](crate::frame::encode_into)
/// does).
pub(crate) fn encode_to<T: Serialize>(
    format: Format,
    out: impl io::Write,
    item: &T,
) -> io::Result<()> {
    match format {
        Format::Bincode => bincode::DefaultOptions::new()
            .serialize_into(out, item)
            .map_err(invalid),
        Format::Json => serde_json::to_writer(out, item).map_err(invalid),
    }
}
