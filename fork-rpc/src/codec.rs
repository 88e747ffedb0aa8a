//! Serialisation of frames, in the format the [`Config`](crate::Config) names.

use std::io;
use std::marker::PhantomData;
use std::pin::Pin;

use bincode::Options;
use bytes::{Bytes, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::config::Format;

/// A `tokio-serde` codec for tarpc's `serde_transport`: encodes `Out`,
/// decodes `In`, in a format chosen at run time.
#[derive(Debug)]
pub(crate) struct Codec<In, Out> {
    format: Format,
    limit: u64,
    _types: PhantomData<fn(Out) -> In>,
}

impl<In, Out> Codec<In, Out> {
    pub(crate) fn new(format: Format, max_frame: usize) -> Self {
        Codec {
            format,
            limit: max_frame as u64,
            _types: PhantomData,
        }
    }
}

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

impl<In, Out: Serialize> tarpc::tokio_serde::Serializer<Out> for Codec<In, Out> {
    type Error = io::Error;

    fn serialize(self: Pin<&mut Self>, item: &Out) -> io::Result<Bytes> {
        encode(self.format, self.limit, item).map(Bytes::from)
    }
}

impl<In: DeserializeOwned, Out> tarpc::tokio_serde::Deserializer<In> for Codec<In, Out> {
    type Error = io::Error;

    fn deserialize(self: Pin<&mut Self>, src: &BytesMut) -> io::Result<In> {
        decode(self.format, self.limit, src)
    }
}

impl<In, Out> Unpin for Codec<In, Out> {}
