//! [`SharedBytes`], a byte payload that crosses a fork-rpc connection as
//! sealed shared memory when it is big, and its serde form.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use fork_core::shm::SealedBytes;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};

use super::scope;

/// Immutable bytes for service arguments, results and events that crosses
/// to the other process as **sealed shared memory** when it is big: the
/// pages are shared, not copied, and the receiver can trust they never
/// change (see [`fork_core::shm`]).
///
/// Put it in a `#[tarpc::service]` method's arguments or result, or in an
/// event, like any serde type. In a frame fork-rpc writes, one at least
/// [`Config::shared_threshold`](crate::Config::shared_threshold) long
/// travels as the descriptor of a sealed memory file, beside the frame;
/// smaller ones, and any serialised elsewhere (to a file, or where
/// descriptors cannot travel), travel as their bytes. The receiver gets a
/// `SharedBytes` either way: [`is_shared`](SharedBytes::is_shared) tells
/// which.
///
/// Cheap to clone (a reference count); `Deref<Target = [u8]>`. Sending one
/// that is [shared](SharedBytes::is_shared) already (received, or made
/// with [`from_sealed`](SharedBytes::from_sealed)) copies nothing; sending
/// a big one made from a `Vec` copies it once into a memory file (per
/// send). To fill one without that copy, write into an
/// [`UnsealedBytes`](fork_core::shm::UnsealedBytes) and seal it.
///
/// A shared one holds a descriptor and a mapping while it lives.
///
/// ```
/// use fork_core::shm::UnsealedBytes;
/// use fork_rpc::SharedBytes;
///
/// # fn main() -> std::io::Result<()> {
/// // Filled in place, sent without a copy.
/// let mut image = UnsealedBytes::new(4 << 20)?;
/// image.fill(0x7f);
/// let image = SharedBytes::from_sealed(image.seal()?);
/// assert!(image.is_shared());
/// assert_eq!(image.len(), 4 << 20);
///
/// // Small, or made from a Vec: bytes on the heap (shared when sent, if
/// // big enough).
/// let note = SharedBytes::from(b"hello".to_vec());
/// assert!(!note.is_shared());
/// assert_eq!(&note[..], b"hello");
/// # Ok(())
/// # }
/// ```
///
/// The service method's signature is plain:
///
/// ```
/// use fork_rpc::SharedBytes;
///
/// #[tarpc::service]
/// trait Images {
///     /// Returns the image flipped.
///     async fn flip(image: SharedBytes) -> SharedBytes;
/// }
/// ```
#[derive(Clone)]
pub struct SharedBytes {
    repr: Repr,
}

#[derive(Clone)]
enum Repr {
    Heap(bytes::Bytes),
    Sealed(Arc<SealedBytes>),
}

// ===== impl SharedBytes =====

impl SharedBytes {
    /// Empty bytes.
    pub fn new() -> SharedBytes {
        SharedBytes::from(bytes::Bytes::new())
    }

    /// Bytes in a sealed memory file: sent without a copy.
    pub fn from_sealed(sealed: SealedBytes) -> SharedBytes {
        SharedBytes {
            repr: Repr::Sealed(Arc::new(sealed)),
        }
    }

    /// Whether the bytes live in a sealed memory file (made with
    /// [`from_sealed`](SharedBytes::from_sealed), or received as one)
    /// rather than on the heap.
    pub fn is_shared(&self) -> bool {
        matches!(self.repr, Repr::Sealed(_))
    }

    /// The sealed memory file, if the bytes live in one (for its
    /// descriptor, say).
    pub fn as_sealed(&self) -> Option<&SealedBytes> {
        match &self.repr {
            Repr::Sealed(s) => Some(s),
            Repr::Heap(_) => None,
        }
    }

    /// The bytes as a sealed memory file: this one's, or a new one they
    /// are copied into.
    fn sealed(&self) -> std::io::Result<Arc<SealedBytes>> {
        match &self.repr {
            Repr::Sealed(s) => Ok(s.clone()),
            Repr::Heap(b) => SealedBytes::copy_from_slice(b).map(Arc::new),
        }
    }
}

impl Default for SharedBytes {
    fn default() -> Self {
        SharedBytes::new()
    }
}

impl From<Vec<u8>> for SharedBytes {
    fn from(v: Vec<u8>) -> Self {
        SharedBytes::from(bytes::Bytes::from(v))
    }
}

impl From<bytes::Bytes> for SharedBytes {
    fn from(b: bytes::Bytes) -> Self {
        SharedBytes {
            repr: Repr::Heap(b),
        }
    }
}

impl From<&[u8]> for SharedBytes {
    fn from(b: &[u8]) -> Self {
        SharedBytes::from(bytes::Bytes::copy_from_slice(b))
    }
}

impl From<SealedBytes> for SharedBytes {
    fn from(s: SealedBytes) -> Self {
        SharedBytes::from_sealed(s)
    }
}

impl Deref for SharedBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.repr {
            Repr::Heap(b) => b,
            Repr::Sealed(s) => s,
        }
    }
}

impl AsRef<[u8]> for SharedBytes {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl PartialEq for SharedBytes {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for SharedBytes {}

impl fmt::Debug for SharedBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedBytes")
            .field("len", &self.len())
            .field("shared", &self.is_shared())
            .finish()
    }
}

// ===== serde =====

/// The bytes, as serde bytes (one length and the bytes in bincode).
struct Raw<'a>(&'a [u8]);

impl Serialize for Raw<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

/// How a `SharedBytes` is written: `Inline(bytes)`, or `Fd { index, len }`
/// with the descriptor in the frame's message (see the
/// [module docs](super)).
#[derive(Serialize)]
#[serde(rename = "SharedBytes")]
enum WireOut<'a> {
    Inline(Raw<'a>),
    Fd { index: u32, len: u64 },
}

#[derive(Deserialize)]
#[serde(rename = "SharedBytes")]
enum WireIn {
    Inline(Buf),
    Fd { index: u32, len: u64 },
}

impl Serialize for SharedBytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let wire =
            match scope::attach(self.len(), || self.sealed()).map_err(serde::ser::Error::custom)? {
                Some(index) => WireOut::Fd {
                    index,
                    len: self.len() as u64,
                },
                None => WireOut::Inline(Raw(self)),
            };
        wire.serialize(s)
    }
}

impl<'de> Deserialize<'de> for SharedBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match WireIn::deserialize(d)? {
            WireIn::Inline(Buf(v)) => Ok(SharedBytes::from(v)),
            WireIn::Fd { index, len } => {
                let (fd, max_len) = scope::take(index).map_err(de::Error::custom)?;
                if len > max_len {
                    return Err(de::Error::custom(scope::too_long(len, max_len)));
                }
                let sealed = SealedBytes::from_fd(fd, max_len).map_err(de::Error::custom)?;
                if sealed.len() as u64 != len {
                    return Err(de::Error::custom(format!(
                        "a shared payload of {} bytes, announced as {len}",
                        sealed.len()
                    )));
                }
                Ok(SharedBytes::from_sealed(sealed))
            }
        }
    }
}

/// Bytes however the format gives them: as bytes (bincode), or as a
/// sequence of numbers (JSON).
struct Buf(Vec<u8>);

impl<'de> Deserialize<'de> for Buf {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_byte_buf(BufVisitor)
    }
}

struct BufVisitor;

impl<'de> Visitor<'de> for BufVisitor {
    type Value = Buf;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("bytes")
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Buf, E> {
        Ok(Buf(v.to_vec()))
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Buf, E> {
        Ok(Buf(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Buf, A::Error> {
        // The hint is the format's claim: trust it only so far.
        let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(b) = seq.next_element()? {
            v.push(b);
        }
        Ok(Buf(v))
    }
}

#[cfg(test)]
mod tests {
    use super::super::channel::Limits;
    use super::*;
    use crate::codec;
    use crate::config::Format;

    const LIMITS: Limits = Limits {
        threshold: 8,
        max_len: 1 << 20,
        max_fds: 4,
    };

    fn round_trip(
        format: Format,
        value: &(SharedBytes, SharedBytes),
    ) -> (SharedBytes, SharedBytes) {
        let (bytes, attached) = scope::encoding(Some(LIMITS), || {
            codec::encode(format, 1 << 20, value).unwrap()
        });
        let fds = attached
            .iter()
            .map(|s| std::os::fd::AsFd::as_fd(&**s).try_clone_to_owned().unwrap())
            .collect();
        scope::decoding_received(fds, LIMITS.max_len, || {
            codec::decode(format, 1 << 20, &bytes).unwrap()
        })
    }

    #[test]
    fn big_payloads_go_as_descriptors_small_ones_inline_in_both_formats() {
        for format in [Format::Bincode, Format::Json] {
            let value = (
                SharedBytes::from(&b"small"[..]),
                SharedBytes::from(vec![9; 100]),
            );
            let (small, big) = round_trip(format, &value);
            assert_eq!((&small, &big), (&value.0, &value.1));
            assert!(!small.is_shared() && big.is_shared(), "{format:?}");
        }
    }

    #[test]
    fn without_a_sink_everything_goes_inline() {
        let value = SharedBytes::from(vec![1; 100]);
        let bytes = codec::encode(Format::Bincode, 1 << 20, &value).unwrap();
        assert!(bytes.len() > 100);
        let back: SharedBytes = codec::decode(Format::Bincode, 1 << 20, &bytes).unwrap();
        assert_eq!(back, value);
        assert!(!back.is_shared());
    }

    #[test]
    fn a_descriptor_marker_without_a_source_or_over_the_limit_fails() {
        let marker =
            codec::encode(Format::Bincode, 64, &WireOut::Fd { index: 0, len: 10 }).unwrap();
        let e = codec::decode::<SharedBytes>(Format::Bincode, 64, &marker).unwrap_err();
        assert!(e.to_string().contains("outside a fork-rpc frame"), "{e}");

        let sealed = SealedBytes::copy_from_slice(&[0; 10]).unwrap();
        let fd = std::os::fd::AsFd::as_fd(&sealed)
            .try_clone_to_owned()
            .unwrap();
        let e = scope::decoding_received(vec![fd], 9, || {
            codec::decode::<SharedBytes>(Format::Bincode, 64, &marker).unwrap_err()
        });
        assert!(e.to_string().contains("max_shared_len"), "{e}");
    }
}
