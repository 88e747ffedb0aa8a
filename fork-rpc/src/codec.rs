//! Serialisation of frames, in the format the [`Config`](crate::Config) names.

use std::io;

use bincode::Options;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::config::Format;

fn bincode_options(limit: u64) -> impl Options {
    bincode::DefaultOptions::new().with_limit(limit)
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// Encodes one value in `format`.
/// Encodes one value in `format`; fails if the result exceeds `limit` bytes.
pub(crate) fn encode<T: Serialize>(format: Format, limit: u64, item: &T) -> io::Result<Vec<u8>> {
    let bytes = match format {
        Format::Bincode => bincode_options(limit).serialize(item).map_err(invalid)?,
        Format::Json => serde_json::to_vec(item).map_err(invalid)?,
    };
    if bytes.len() as u64 > limit {
        return Err(invalid(format!(
            "{} bytes exceed the frame limit of {limit}",
            bytes.len()
        )));
    }
    Ok(bytes)
}

/// Decodes one value in `format`; never allocates more than `limit` bytes.
pub(crate) fn decode<T: DeserializeOwned>(
    format: Format,
    limit: u64,
    bytes: &[u8],
) -> io::Result<T> {
    match format {
        Format::Bincode => bincode_options(limit).deserialize(bytes).map_err(invalid),
        Format::Json => serde_json::from_slice(bytes).map_err(invalid),
    }
}
