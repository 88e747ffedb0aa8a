//! Bincode decoding that trusts no length beyond the bytes of the frame.
//!
//! bincode 1 hands a sequence's or a map's length, as the frame claims it,
//! to serde as [`SeqAccess::size_hint`] / [`MapAccess::size_hint`] without
//! checking it against the bytes that are left; serde's visitors for `Vec`,
//! `VecDeque`, `HashMap`, `HashSet`, `BinaryHeap`... preallocate that many
//! elements (up to 1 MiB: serde's private `size_hint::cautious`) before
//! they read one. So a 6-byte frame that claims 2^20 bytes allocates 1 MiB,
//! whatever the frame limit, and nested sequences allocate as much again
//! per level while they are decoded (serde-rs/serde#744, #850: there is no
//! fix upstream that holds for every format).
//!
//! [`deserialize`] is bincode's `Options::deserialize` for a frame, with
//! every size hint a visitor gets bounded by the bytes left: a wrapper
//! ([`Bounded`]) around bincode's deserializer passes everything through
//! unchanged, except that each `size_hint` it hands on is
//! `min(claimed, bytes left in the frame)`. It wraps everything that
//! reaches a nested value (visitors, sequence, map and enum access, seeds,
//! and the deserializers given to `visit_some` and
//! `visit_newtype_struct`), so sequences at every depth are bounded. The
//! bytes left are counted by the reader bincode reads the frame through
//! ([`Reader`], bincode's slice reader plus that count).
//!
//! # Guarantee
//!
//! No sequence or map preallocates room for more elements than there are
//! bytes left in the frame when its length has been read. Every element
//! takes at least one byte, and serde preallocates nothing for elements of
//! a zero-sized type, which may take none (see [`Bounded::bound`]); so a
//! length that lies costs at most what an honest frame of the same size
//! could make that sequence allocate: the memory of a message is bounded by
//! what its bytes can encode, not by the numbers in them.
//!
//! Everything else is what `Options::deserialize` does: the same values
//! (borrowed strings and bytes stay borrowed), the same errors, the same
//! `is_human_readable`; see [`deserialize`] for the limit and trailing
//! bytes.
//!
//! This file is long for one concept: serde's `Deserializer`, `SeqAccess`,
//! `MapAccess`, `EnumAccess`, `VariantAccess` and seed traits each need
//! every method forwarded through the one wrapper (about 400 lines of
//! one-line forwards); split, each part would be a fragment of it. The
//! tests, which feed it lying frames at every depth, are in `tests.rs`.
//!
//! JSON needs none of this: serde_json's sequence and map access give no
//! size hint (they keep `SeqAccess::size_hint`'s default, `None`, as of
//! serde_json 1.0.154), so serde preallocates nothing from a JSON frame.
//!
//! # Costs
//!
//! Everything is generic and inlined: a few nanoseconds per message (in a
//! benchmark, a tarpc request took 106 ns to decode instead of 100, a
//! reply 35 instead of 34), within the noise of a call. One case costs
//! more: a long sequence of small elements (a `Vec<u8>` not marked
//! `serde_bytes`), when the compiler does not inline its visitor into the
//! wrapper's: the wrapper's pointer makes the sequence access too big to
//! pass in registers, and the compiler then reloads the reader's state for
//! each element. Such a vector decoded up to 1.4 times as slowly (0.3 ns
//! more a byte) in a benchmark. Bytes through `serde_bytes`, and strings,
//! are read in one piece, as before.
//!
//! # Caveats
//!
//! The bound is on what a claimed length makes serde *preallocate*. A
//! sequence whose elements really are encoded in zero bytes without being
//! zero-sized (a struct all of whose serialized fields are zero-sized, with
//! `#[serde(skip)]` fields that are not) holds as many elements as it
//! claims, and grows to that size as they are read: those bytes do encode
//! that many elements. fork-rpc's own messages have no such element type;
//! a service's types could.

use std::cell::Cell;
use std::fmt;
use std::io;
use std::marker::PhantomData;

use bincode::{BincodeRead, ErrorKind, Options};
use serde::Deserialize;
use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor,
};

/// Decodes a `T` from all of `bytes` with bincode and `options`, as
/// `options.deserialize(bytes)` does, but with every sequence's and map's
/// size hint bounded by the bytes left (see the [module docs](self)).
///
/// As `Options::deserialize` (bincode 1.3.3, `src/internal.rs`), it
/// decodes with no byte limit, whatever `options` say: the slice bounds
/// every read, and a limit would only change which error a length past the
/// end reports (a size limit instead of the end of the input). Bytes left
/// after the value are an error, with bincode's message, as with bincode's
/// default options (`Options` does not tell its trailing-bytes setting, so
/// options that allow them are not honoured here).
///
/// # Errors
///
/// Those of `options.deserialize(bytes)`, unchanged.
pub(crate) fn deserialize<'de, T: Deserialize<'de>>(
    options: impl Options,
    bytes: &'de [u8],
) -> bincode::Result<T> {
    let left = Cell::new(bytes.len());
    let reader = Reader {
        frame: bytes,
        left: &left,
    };
    let seed = Bounded::new(PhantomData::<T>, &left);
    let value = options
        .with_no_limit()
        .deserialize_from_custom_seed(seed, reader)?;
    if left.get() != 0 {
        // bincode's `RejectTrailing`, word for word.
        return Err(Box::new(ErrorKind::Custom(
            "Slice had bytes remaining after deserialization".to_owned(),
        )));
    }
    Ok(value)
}

// ===== impl Reader =====

/// bincode's `SliceReader` (its `new` and its bytes left are private to
/// bincode), whose one piece of state, the number of bytes left, is shared
/// with the [`Bounded`] wrappers. Its reads and errors are `SliceReader`'s.
struct Reader<'de, 'f> {
    /// The whole frame.
    frame: &'de [u8],
    /// How many bytes at the end of `frame` are not read yet: the only
    /// state, so a read updates one word, as `SliceReader`'s does (keeping
    /// the rest of the slice as well, and the count besides, cost a third
    /// more on a long `Vec<u8>` in a benchmark).
    left: &'f Cell<usize>,
}

impl<'de> Reader<'de, '_> {
    /// The next `n` bytes, or `None` (and nothing read) if fewer are left.
    #[inline]
    fn take(&mut self, n: usize) -> Option<&'de [u8]> {
        let left = self.left.get();
        let rest = left.checked_sub(n)?;
        let start = self.frame.len() - left;
        // `get` never fails: `start + n <= frame.len()`. (Checking `n`
        // against `left` first, rather than checking the range, keeps a
        // loop of one-byte reads as fast as `SliceReader`'s; the other way
        // round, it was half again as slow in a benchmark.)
        let taken = self.frame.get(start..start + n)?;
        self.left.set(rest);
        Some(taken)
    }
}

/// `SliceReader`'s error for a string or bytes longer than what is left.
fn unexpected_eof() -> bincode::Error {
    Box::new(ErrorKind::Io(io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "",
    )))
}

impl io::Read for Reader<'_, '_> {
    /// All of `out`, or an error (and nothing read), as `SliceReader`.
    #[inline]
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let bytes = self.take(out.len()).ok_or(io::ErrorKind::UnexpectedEof)?;
        out.copy_from_slice(bytes);
        Ok(out.len())
    }

    #[inline]
    fn read_exact(&mut self, out: &mut [u8]) -> io::Result<()> {
        self.read(out).map(drop)
    }
}

impl<'de> BincodeRead<'de> for Reader<'de, '_> {
    #[inline]
    fn forward_read_str<V: Visitor<'de>>(
        &mut self,
        length: usize,
        visitor: V,
    ) -> bincode::Result<V::Value> {
        let bytes = self.take(length).ok_or_else(unexpected_eof)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => visitor.visit_borrowed_str(s),
            Err(e) => Err(Box::new(ErrorKind::InvalidUtf8Encoding(e))),
        }
    }

    #[inline]
    fn get_byte_buffer(&mut self, length: usize) -> bincode::Result<Vec<u8>> {
        // Checked against what is left before anything is allocated.
        self.take(length)
            .map(<[u8]>::to_vec)
            .ok_or_else(unexpected_eof)
    }

    #[inline]
    fn forward_read_bytes<V: Visitor<'de>>(
        &mut self,
        length: usize,
        visitor: V,
    ) -> bincode::Result<V::Value> {
        visitor.visit_borrowed_bytes(self.take(length).ok_or_else(unexpected_eof)?)
    }
}

// ===== impl Bounded =====

/// A serde deserializer, visitor, sequence, map, enum or variant access, or
/// seed, that behaves as the one it wraps, except that the size hints its
/// sequences and maps give are bounded by the bytes left in the frame; and
/// that whatever it hands on to decode a nested value is wrapped in turn.
///
/// It is the same type in each role, each trait implemented when the
/// wrapped value implements it. The wrapping costs one pointer per wrapped
/// value (see the module's costs).
struct Bounded<'f, T> {
    /// The wrapped deserializer, visitor, access or seed.
    inner: T,
    /// The bytes left in the frame, which the [`Reader`] keeps up to date.
    left: &'f Cell<usize>,
}

impl<'f, T> Bounded<'f, T> {
    /// `inner`, bounded by the bytes `left`.
    #[inline]
    fn new(inner: T, left: &'f Cell<usize>) -> Self {
        Self { inner, left }
    }

    /// `other`, wrapped as `self` is.
    #[inline]
    fn wrap<U>(&self, other: U) -> Bounded<'f, U> {
        Bounded::new(other, self.left)
    }

    /// A sequence's or map's size hint, at most the bytes left.
    ///
    /// Why the bytes left are enough: in bincode's encoding every value
    /// takes at least one byte. Integers, floats, `bool` and `char` take
    /// one or more; strings, bytes, sequences and maps start with their
    /// length (one byte or more); an `Option` with its tag byte; an enum
    /// with its variant index (one byte or more); a struct or a tuple is
    /// its fields. Only `()`, unit structs, `PhantomData`, `[T; 0]`, and
    /// structs and tuples of nothing else take none, and those are
    /// zero-sized, for which serde's `size_hint::cautious` preallocates
    /// nothing whatever the hint (the exception, a type that serializes as
    /// one of those but is not zero-sized, is in the module's caveats). A
    /// map's entry is a key and a value, so it takes a byte too. So a
    /// sequence that claims more elements than bytes are left cannot be
    /// whole, and room for that many is all that a whole one needs.
    #[inline]
    fn bound(&self, claimed: Option<usize>) -> Option<usize> {
        claimed.map(|n| n.min(self.left.get()))
    }
}

/// Forwards `Deserializer` methods to the wrapped deserializer, with the
/// visitor wrapped.
macro_rules! forward_deserialize {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {$(
        #[inline]
        fn $method<V: Visitor<'de>>(
            self,
            $($arg: $ty,)*
            visitor: V,
        ) -> Result<V::Value, Self::Error> {
            let visitor = self.wrap(visitor);
            self.inner.$method($($arg,)* visitor)
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Bounded<'_, D> {
    type Error = D::Error;

    forward_deserialize! {
        deserialize_any();
        deserialize_bool();
        deserialize_i8();
        deserialize_i16();
        deserialize_i32();
        deserialize_i64();
        deserialize_i128();
        deserialize_u8();
        deserialize_u16();
        deserialize_u32();
        deserialize_u64();
        deserialize_u128();
        deserialize_f32();
        deserialize_f64();
        deserialize_char();
        deserialize_str();
        deserialize_string();
        deserialize_bytes();
        deserialize_byte_buf();
        deserialize_option();
        deserialize_unit();
        deserialize_unit_struct(name: &'static str);
        deserialize_newtype_struct(name: &'static str);
        deserialize_seq();
        deserialize_tuple(len: usize);
        deserialize_tuple_struct(name: &'static str, len: usize);
        deserialize_map();
        deserialize_struct(name: &'static str, fields: &'static [&'static str]);
        deserialize_enum(name: &'static str, variants: &'static [&'static str]);
        deserialize_identifier();
        deserialize_ignored_any();
    }

    #[inline]
    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

/// Forwards `Visitor` methods that take a plain value.
macro_rules! forward_visit {
    ($($method:ident($ty:ty);)*) => {$(
        #[inline]
        fn $method<E: de::Error>(self, v: $ty) -> Result<Self::Value, E> {
            self.inner.$method(v)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Bounded<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.expecting(f)
    }

    forward_visit! {
        visit_bool(bool);
        visit_i8(i8);
        visit_i16(i16);
        visit_i32(i32);
        visit_i64(i64);
        visit_i128(i128);
        visit_u8(u8);
        visit_u16(u16);
        visit_u32(u32);
        visit_u64(u64);
        visit_u128(u128);
        visit_f32(f32);
        visit_f64(f64);
        visit_char(char);
        visit_str(&str);
        visit_borrowed_str(&'de str);
        visit_string(String);
        visit_bytes(&[u8]);
        visit_borrowed_bytes(&'de [u8]);
        visit_byte_buf(Vec<u8>);
    }

    #[inline]
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        self.inner.visit_none()
    }

    #[inline]
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        self.inner.visit_unit()
    }

    #[inline]
    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        let deserializer = self.wrap(deserializer);
        self.inner.visit_some(deserializer)
    }

    #[inline]
    fn visit_newtype_struct<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        let deserializer = self.wrap(deserializer);
        self.inner.visit_newtype_struct(deserializer)
    }

    #[inline]
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        let seq = self.wrap(seq);
        self.inner.visit_seq(seq)
    }

    #[inline]
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let map = self.wrap(map);
        self.inner.visit_map(map)
    }

    #[inline]
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        let data = self.wrap(data);
        self.inner.visit_enum(data)
    }
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Bounded<'_, S> {
    type Value = S::Value;

    #[inline]
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<S::Value, D::Error> {
        let deserializer = self.wrap(deserializer);
        self.inner.deserialize(deserializer)
    }
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Bounded<'_, A> {
    type Error = A::Error;

    #[inline]
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        let seed = self.wrap(seed);
        self.inner.next_element_seed(seed)
    }

    #[inline]
    fn size_hint(&self) -> Option<usize> {
        self.bound(self.inner.size_hint())
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Bounded<'_, A> {
    type Error = A::Error;

    #[inline]
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        let seed = self.wrap(seed);
        self.inner.next_key_seed(seed)
    }

    #[inline]
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        let seed = self.wrap(seed);
        self.inner.next_value_seed(seed)
    }

    #[inline]
    fn next_entry_seed<K: DeserializeSeed<'de>, V: DeserializeSeed<'de>>(
        &mut self,
        key: K,
        value: V,
    ) -> Result<Option<(K::Value, V::Value)>, A::Error> {
        let (key, value) = (self.wrap(key), self.wrap(value));
        self.inner.next_entry_seed(key, value)
    }

    #[inline]
    fn size_hint(&self) -> Option<usize> {
        self.bound(self.inner.size_hint())
    }
}

impl<'f, 'de, A: EnumAccess<'de>> EnumAccess<'de> for Bounded<'f, A> {
    type Error = A::Error;
    type Variant = Bounded<'f, A::Variant>;

    #[inline]
    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self::Variant), A::Error> {
        let seed = self.wrap(seed);
        let (value, variant) = self.inner.variant_seed(seed)?;
        Ok((value, Bounded::new(variant, self.left)))
    }
}

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for Bounded<'_, A> {
    type Error = A::Error;

    #[inline]
    fn unit_variant(self) -> Result<(), A::Error> {
        self.inner.unit_variant()
    }

    #[inline]
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        let seed = self.wrap(seed);
        self.inner.newtype_variant_seed(seed)
    }

    #[inline]
    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        let visitor = self.wrap(visitor);
        self.inner.tuple_variant(len, visitor)
    }

    #[inline]
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        let visitor = self.wrap(visitor);
        self.inner.struct_variant(fields, visitor)
    }
}

#[cfg(test)]
mod tests;
