//! The enum variant a value is, found through `Serialize` without
//! serialising anything.
//!
//! tarpc's generated clients match the reply of a call against the variant
//! of its request (`CalcResponse::Add` for `CalcRequest::Add`) and reach
//! `unreachable!()` on any other. A worker serving another service (an entry
//! typed wrongly, two versions of one service) can send a well-formed reply
//! of another method, so the client checks it first: a request and its
//! reply must be variants of the same name (tarpc names both after the
//! method).

use std::fmt;

use serde::Serialize;
use serde::ser::{self, Impossible};

/// The name of the enum variant `value` is, or `None` if it is no enum.
/// Costs one call: the serializer stops at the variant.
pub(crate) fn name_of<T: Serialize + ?Sized>(value: &T) -> Option<&'static str> {
    match value.serialize(Spy) {
        Err(Stop::Variant(name)) => Some(name),
        _ => None,
    }
}

/// Stops a serialisation at once, saying why.
#[derive(Debug)]
enum Stop {
    /// The value is this variant of an enum.
    Variant(&'static str),
    /// The value is no enum.
    NotEnum,
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stop::Variant(name) => write!(f, "variant {name}"),
            Stop::NotEnum => f.write_str("not an enum"),
        }
    }
}

impl std::error::Error for Stop {}

impl ser::Error for Stop {
    fn custom<M: fmt::Display>(_: M) -> Self {
        Stop::NotEnum
    }
}

/// A serializer that records the variant of an enum and stops there.
struct Spy;

type Never = Impossible<(), Stop>;

macro_rules! not_enum {
    ($($method:ident($($arg:ty),*);)*) => {
        $(
            fn $method(self, $(_: $arg),*) -> Result<(), Stop> {
                Err(Stop::NotEnum)
            }
        )*
    };
}

impl ser::Serializer for Spy {
    type Ok = ();
    type Error = Stop;
    type SerializeSeq = Never;
    type SerializeTuple = Never;
    type SerializeTupleStruct = Never;
    type SerializeTupleVariant = Never;
    type SerializeMap = Never;
    type SerializeStruct = Never;
    type SerializeStructVariant = Never;

    not_enum! {
        serialize_bool(bool);
        serialize_i8(i8);
        serialize_i16(i16);
        serialize_i32(i32);
        serialize_i64(i64);
        serialize_u8(u8);
        serialize_u16(u16);
        serialize_u32(u32);
        serialize_u64(u64);
        serialize_f32(f32);
        serialize_f64(f64);
        serialize_char(char);
        serialize_str(&str);
        serialize_bytes(&[u8]);
        serialize_none();
        serialize_unit();
        serialize_unit_struct(&'static str);
    }

    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<(), Stop> {
        Err(Stop::NotEnum)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: &T,
    ) -> Result<(), Stop> {
        Err(Stop::NotEnum)
    }

    fn serialize_unit_variant(self, _: &'static str, _: u32, v: &'static str) -> Result<(), Stop> {
        Err(Stop::Variant(v))
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        v: &'static str,
        _: &T,
    ) -> Result<(), Stop> {
        Err(Stop::Variant(v))
    }

    fn serialize_seq(self, _: Option<usize>) -> Result<Never, Stop> {
        Err(Stop::NotEnum)
    }

    fn serialize_tuple(self, _: usize) -> Result<Never, Stop> {
        Err(Stop::NotEnum)
    }

    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Never, Stop> {
        Err(Stop::NotEnum)
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        v: &'static str,
        _: usize,
    ) -> Result<Never, Stop> {
        Err(Stop::Variant(v))
    }

    fn serialize_map(self, _: Option<usize>) -> Result<Never, Stop> {
        Err(Stop::NotEnum)
    }

    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Never, Stop> {
        Err(Stop::NotEnum)
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        v: &'static str,
        _: usize,
    ) -> Result<Never, Stop> {
        Err(Stop::Variant(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    enum Request {
        Add { a: i64, b: i64 },
        Ping {},
        Stop,
        Pair(u8, u8),
    }

    #[derive(Serialize)]
    enum Response {
        Add(i64),
    }

    #[derive(Serialize)]
    struct Plain {
        x: u8,
    }

    #[test]
    fn variants_are_named_without_serialising_their_fields() {
        assert_eq!(name_of(&Request::Add { a: 1, b: 2 }), Some("Add"));
        assert_eq!(name_of(&Request::Ping {}), Some("Ping"));
        assert_eq!(name_of(&Request::Stop), Some("Stop"));
        assert_eq!(name_of(&Request::Pair(1, 2)), Some("Pair"));
        assert_eq!(name_of(&Response::Add(3)), Some("Add"));
    }

    #[test]
    fn other_values_have_no_variant() {
        assert_eq!(name_of(&Plain { x: 1 }), None);
        assert_eq!(name_of("text"), None);
        assert_eq!(name_of(&7u32), None);
        assert_eq!(name_of(&Some(Response::Add(1))), None);
        assert_eq!(name_of(&vec![1, 2]), None);
    }
}
