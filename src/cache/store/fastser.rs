//! A MessagePack serializer for the scalar keys and values most caches hold (integers, bools,
//! strings, and newtypes of them), writing exactly the bytes `rmp_serde` writes for them
//! (its default configuration; unit tests compare the two), inlined into the write path.
//! Anything else fails with [`Unsupported`] before writing a byte, and the caller serializes
//! it with `rmp_serde` instead.
//!
//! Serialized bytes are part of the protocol (keys are compared byte for byte by sync, and
//! checksums cover them), so this must never differ from `rmp_serde`.

use serde::ser::{Impossible, Serialize, Serializer};

/// What [`Fast`] does not serialize (left to `rmp_serde`).
#[derive(Debug)]
pub(super) struct Unsupported;

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not a scalar")
    }
}

impl std::error::Error for Unsupported {}

impl serde::ser::Error for Unsupported {
    fn custom<T: std::fmt::Display>(_msg: T) -> Self {
        Unsupported
    }
}

/// Where [`Fast`] writes.
pub(super) trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

/// The scalar MessagePack serializer (see the module docs).
pub(super) struct Fast<'a, S: Sink>(pub(super) &'a mut S);

/// `rmp::encode::write_uint`: the shortest form.
#[inline(always)]
pub(super) fn put_uint<S: Sink>(s: &mut S, v: u64) {
    if v < 128 {
        s.put(&[v as u8]);
    } else if v < 256 {
        s.put(&[0xcc, v as u8]);
    } else if v < 65_536 {
        let b = (v as u16).to_be_bytes();
        s.put(&[0xcd, b[0], b[1]]);
    } else if v < 4_294_967_296 {
        let b = (v as u32).to_be_bytes();
        s.put(&[0xce, b[0], b[1], b[2], b[3]]);
    } else {
        let b = v.to_be_bytes();
        s.put(&[0xcf, b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
    }
}

/// `rmp::encode::write_sint`: the shortest form (non-negative values as unsigned).
#[inline]
pub(super) fn put_sint<S: Sink>(s: &mut S, v: i64) {
    if v >= 0 {
        put_uint(s, v as u64);
    } else if v >= -32 {
        s.put(&[v as i8 as u8]);
    } else if v >= -128 {
        s.put(&[0xd0, v as i8 as u8]);
    } else if v >= -32_768 {
        let b = (v as i16).to_be_bytes();
        s.put(&[0xd1, b[0], b[1]]);
    } else if v >= -2_147_483_648 {
        let b = (v as i32).to_be_bytes();
        s.put(&[0xd2, b[0], b[1], b[2], b[3]]);
    } else {
        let b = v.to_be_bytes();
        s.put(&[0xd3, b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
    }
}

/// `rmp::encode::write_str`.
#[inline]
fn put_str<S: Sink>(s: &mut S, v: &str) -> Result<(), Unsupported> {
    let n = v.len();
    if n < 32 {
        s.put(&[0xa0 | n as u8]);
    } else if n < 256 {
        s.put(&[0xd9, n as u8]);
    } else if n < 65_536 {
        let b = (n as u16).to_be_bytes();
        s.put(&[0xda, b[0], b[1]]);
    } else if let Ok(n) = u32::try_from(n) {
        let b = n.to_be_bytes();
        s.put(&[0xdb, b[0], b[1], b[2], b[3]]);
    } else {
        return Err(Unsupported);
    }
    s.put(v.as_bytes());
    Ok(())
}

macro_rules! unsupported {
    ($($name:ident($($arg:ty),*);)*) => {
        $(
            fn $name(self, $(_: $arg),*) -> Result<Self::Ok, Self::Error> {
                Err(Unsupported)
            }
        )*
    };
}

impl<S: Sink> Serializer for Fast<'_, S> {
    type Ok = ();
    type Error = Unsupported;
    type SerializeSeq = Impossible<(), Unsupported>;
    type SerializeTuple = Impossible<(), Unsupported>;
    type SerializeTupleStruct = Impossible<(), Unsupported>;
    type SerializeTupleVariant = Impossible<(), Unsupported>;
    type SerializeMap = Impossible<(), Unsupported>;
    type SerializeStruct = Impossible<(), Unsupported>;
    type SerializeStructVariant = Impossible<(), Unsupported>;

    fn is_human_readable(&self) -> bool {
        // As rmp_serde's serializer (types that serialize differently for humans).
        false
    }

    #[inline]
    fn serialize_bool(self, v: bool) -> Result<(), Unsupported> {
        self.0.put(&[if v { 0xc3 } else { 0xc2 }]);
        Ok(())
    }

    #[inline]
    fn serialize_i8(self, v: i8) -> Result<(), Unsupported> {
        self.serialize_i64(i64::from(v))
    }

    #[inline]
    fn serialize_i16(self, v: i16) -> Result<(), Unsupported> {
        self.serialize_i64(i64::from(v))
    }

    #[inline]
    fn serialize_i32(self, v: i32) -> Result<(), Unsupported> {
        self.serialize_i64(i64::from(v))
    }

    #[inline]
    fn serialize_i64(self, v: i64) -> Result<(), Unsupported> {
        put_sint(self.0, v);
        Ok(())
    }

    #[inline]
    fn serialize_u8(self, v: u8) -> Result<(), Unsupported> {
        self.serialize_u64(u64::from(v))
    }

    #[inline]
    fn serialize_u16(self, v: u16) -> Result<(), Unsupported> {
        self.serialize_u64(u64::from(v))
    }

    #[inline]
    fn serialize_u32(self, v: u32) -> Result<(), Unsupported> {
        self.serialize_u64(u64::from(v))
    }

    #[inline]
    fn serialize_u64(self, v: u64) -> Result<(), Unsupported> {
        put_uint(self.0, v);
        Ok(())
    }

    #[inline]
    fn serialize_char(self, v: char) -> Result<(), Unsupported> {
        put_str(self.0, v.encode_utf8(&mut [0; 4]))
    }

    #[inline]
    fn serialize_str(self, v: &str) -> Result<(), Unsupported> {
        put_str(self.0, v)
    }

    #[inline]
    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        name: &'static str,
        value: &T,
    ) -> Result<(), Unsupported> {
        // rmp_serde's extension types travel as a newtype of this name.
        if name == "_ExtStruct" {
            return Err(Unsupported);
        }
        value.serialize(self)
    }

    unsupported! {
        serialize_i128(i128);
        serialize_u128(u128);
        serialize_f32(f32);
        serialize_f64(f64);
        serialize_bytes(&[u8]);
        serialize_none();
        serialize_unit();
        serialize_unit_struct(&'static str);
        serialize_unit_variant(&'static str, u32, &'static str);
    }

    fn serialize_some<T: ?Sized + Serialize>(self, _: &T) -> Result<(), Unsupported> {
        Err(Unsupported)
    }

    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<(), Unsupported> {
        Err(Unsupported)
    }

    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, Unsupported> {
        Err(Unsupported)
    }

    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Unsupported> {
        Err(Unsupported)
    }

    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, Unsupported> {
        Err(Unsupported)
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, Unsupported> {
        Err(Unsupported)
    }

    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Unsupported> {
        Err(Unsupported)
    }

    fn serialize_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStruct, Unsupported> {
        Err(Unsupported)
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, Unsupported> {
        Err(Unsupported)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Sink for Vec<u8> {
        fn put(&mut self, bytes: &[u8]) {
            self.extend_from_slice(bytes);
        }
    }

    fn fast<T: Serialize>(v: &T) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        v.serialize(Fast(&mut out)).ok().map(|()| out)
    }

    fn same<T: Serialize + std::fmt::Debug>(v: T) {
        assert_eq!(fast(&v), Some(rmp_serde::to_vec(&v).unwrap()), "{v:?}");
    }

    #[derive(serde::Serialize, Debug)]
    struct Id(u64);

    #[test]
    fn scalars_are_written_as_rmp_serde_writes_them() {
        let edges: [i128; 20] = [
            0,
            1,
            31,
            32,
            127,
            128,
            255,
            256,
            65_535,
            65_536,
            4_294_967_295,
            4_294_967_296,
            -1,
            -32,
            -33,
            -128,
            -129,
            -32_768,
            -32_769,
            -2_147_483_649,
        ];
        for e in edges {
            for d in [-1i128, 0, 1] {
                let v = e + d;
                if let Ok(u) = u64::try_from(v) {
                    same(u);
                    same(Id(u));
                }
                if let Ok(i) = i64::try_from(v) {
                    same(i);
                }
                if let Ok(i) = i32::try_from(v) {
                    same(i);
                }
                if let Ok(u) = u16::try_from(v) {
                    same(u);
                }
                if let Ok(i) = i8::try_from(v) {
                    same(i);
                }
            }
        }
        for v in [u64::MAX, i64::MAX as u64] {
            same(v);
        }
        for v in [i64::MIN, i64::MAX] {
            same(v);
        }
        for n in [0usize, 1, 31, 32, 255, 256, 65_535, 65_536, 70_000] {
            same("é".repeat(n / 2) + &"x".repeat(n % 2));
            same("k".repeat(n));
        }
        same(true);
        same(false);
        same('x');
        same('€');
    }

    #[test]
    fn other_types_are_left_to_rmp_serde_before_any_byte_is_written() {
        assert_eq!(fast(&(1u8, 2u8)), None);
        assert_eq!(fast(&Some(1u8)), None);
        assert_eq!(fast(&vec![1u8]), None);
        assert_eq!(fast(&1.5f64), None);
        assert_eq!(fast(&()), None);
        #[derive(serde::Serialize)]
        struct S {
            a: u32,
        }
        let mut out = Vec::new();
        assert!(S { a: 1 }.serialize(Fast(&mut out)).is_err());
        assert!(out.is_empty());
    }
}
