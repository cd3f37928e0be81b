//! JSON with every object's keys sorted, written straight from a value: the bytes
//! `serde_json::to_value(value)?.to_string()` gives (a `Value`'s objects are sorted maps),
//! without building the `Value` — its maps, keys and strings were most of the cost of hashing
//! a log's leaves and exporting its lines (a few allocations per field of every event).
//!
//! Each object's fields are written as they come into the one output buffer, then put in key
//! order in place once the object ends; a key given twice keeps its last value, as a map does.
//! The fields' places (a stack shared by nested objects) and the copy a reordering needs are
//! buffers kept by the thread, so that writing an event allocates nothing once warm.

use serde::ser::{self, Serialize};
use std::borrow::Cow;
use std::cell::RefCell;

type Error = serde_json::Error;

/// Append `value`'s sorted-key compact JSON to `out`. On error `out` may hold part of it.
pub fn write_sorted<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), Error> {
    thread_local! {
        static SPARE: RefCell<(Vec<Field>, Vec<u8>)> = const { RefCell::new((Vec::new(), Vec::new())) };
    }
    // Taken for the call (a value whose `Serialize` writes sorted JSON itself gets new ones).
    let (mut fields, mut scratch) = SPARE.with(|spare| std::mem::take(&mut *spare.borrow_mut()));
    fields.clear();
    let written = value.serialize(Sorted { out, fields: &mut fields, scratch: &mut scratch });
    SPARE.with(|spare| *spare.borrow_mut() = (fields, scratch));
    written
}

/// A field of an object being written: its key and where its value is in the output.
type Field = (Cow<'static, str>, usize, usize);

/// A JSON string, escaped as `serde_json` escapes it.
fn string(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("writing to memory does not fail");
}

/// An integer, as `serde_json` writes it.
fn number(out: &mut Vec<u8>, n: impl Serialize) {
    serde_json::to_writer(&mut *out, &n).expect("writing to memory does not fail");
}

struct Sorted<'a> {
    out: &'a mut Vec<u8>,
    /// The fields of the objects being written, innermost last.
    fields: &'a mut Vec<Field>,
    scratch: &'a mut Vec<u8>,
}

/// An array being written.
struct Array<'a> {
    out: &'a mut Vec<u8>,
    fields: &'a mut Vec<Field>,
    scratch: &'a mut Vec<u8>,
    first: bool,
    /// Closed by `]}`: the array of a tuple variant, `{"variant":[…]}`.
    in_variant: bool,
}

/// An object being written: its fields' values, in the order they came, are in `out` from
/// `start`; `end` puts them in key order.
struct Object<'a> {
    out: &'a mut Vec<u8>,
    start: usize,
    /// This object's fields are those from `base` on.
    fields: &'a mut Vec<Field>,
    base: usize,
    scratch: &'a mut Vec<u8>,
    /// A map's key, waiting for its value.
    key: Option<String>,
    /// Closed by `}}`: the object of a struct variant, `{"variant":{…}}`.
    in_variant: bool,
}

impl<'a> Object<'a> {
    fn new(at: Sorted<'a>, in_variant: bool) -> Object<'a> {
        let (start, base) = (at.out.len(), at.fields.len());
        Object { out: at.out, start, fields: at.fields, base, scratch: at.scratch, key: None, in_variant }
    }

    fn field<T: Serialize + ?Sized>(&mut self, key: Cow<'static, str>, value: &T) -> Result<(), Error> {
        let from = self.out.len();
        value.serialize(Sorted { out: &mut *self.out, fields: &mut *self.fields, scratch: &mut *self.scratch })?;
        self.fields.push((key, from, self.out.len()));
        Ok(())
    }

    fn finish(self) -> Result<(), Error> {
        let fields = &mut self.fields[self.base..];
        // Stable: of a key given twice, the later value is the one kept.
        fields.sort_by(|a, b| a.0.cmp(&b.0));
        self.scratch.clear();
        self.scratch.extend_from_slice(&self.out[self.start..]);
        self.out.truncate(self.start);
        self.out.push(b'{');
        let mut first = true;
        for (i, (key, from, to)) in fields.iter().enumerate() {
            if fields.get(i + 1).is_some_and(|next| next.0 == *key) {
                continue;
            }
            if !first {
                self.out.push(b',');
            }
            first = false;
            string(self.out, key);
            self.out.push(b':');
            self.out.extend_from_slice(&self.scratch[from - self.start..to - self.start]);
        }
        self.out.push(b'}');
        if self.in_variant {
            self.out.push(b'}');
        }
        self.fields.truncate(self.base);
        Ok(())
    }
}

impl<'a> Sorted<'a> {
    /// `{"variant":` before a variant's content.
    fn open_variant(&mut self, variant: &str) {
        self.out.push(b'{');
        string(self.out, variant);
        self.out.push(b':');
    }
}

impl<'a> ser::Serializer for Sorted<'a> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Array<'a>;
    type SerializeTuple = Array<'a>;
    type SerializeTupleStruct = Array<'a>;
    type SerializeTupleVariant = Array<'a>;
    type SerializeMap = Object<'a>;
    type SerializeStruct = Object<'a>;
    type SerializeStructVariant = Object<'a>;

    fn serialize_bool(self, v: bool) -> Result<(), Error> {
        self.out.extend_from_slice(if v { b"true" } else { b"false" });
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Result<(), Error> {
        number(self.out, v);
        Ok(())
    }
    fn serialize_i16(self, v: i16) -> Result<(), Error> {
        number(self.out, v);
        Ok(())
    }
    fn serialize_i32(self, v: i32) -> Result<(), Error> {
        number(self.out, v);
        Ok(())
    }
    fn serialize_i64(self, v: i64) -> Result<(), Error> {
        number(self.out, v);
        Ok(())
    }
    fn serialize_u8(self, v: u8) -> Result<(), Error> {
        number(self.out, v);
        Ok(())
    }
    fn serialize_u16(self, v: u16) -> Result<(), Error> {
        number(self.out, v);
        Ok(())
    }
    fn serialize_u32(self, v: u32) -> Result<(), Error> {
        number(self.out, v);
        Ok(())
    }
    fn serialize_u64(self, v: u64) -> Result<(), Error> {
        number(self.out, v);
        Ok(())
    }
    fn serialize_i128(self, v: i128) -> Result<(), Error> {
        // A `Value` holds what fits 64 bits.
        match (i64::try_from(v), u64::try_from(v)) {
            (Ok(v), _) => self.serialize_i64(v),
            (_, Ok(v)) => self.serialize_u64(v),
            _ => Err(ser::Error::custom("number out of range")),
        }
    }
    fn serialize_u128(self, v: u128) -> Result<(), Error> {
        match u64::try_from(v) {
            Ok(v) => self.serialize_u64(v),
            Err(_) => Err(ser::Error::custom("number out of range")),
        }
    }
    // No event or command carries a float (money and quantities are `Decimal`, R2); serde's
    // trait asks for these, and they are written as a `Value` writes them.
    fn serialize_f32(self, v: f32) -> Result<(), Error> {
        // A `Value` keeps an `f32` as the `f64` it widens to.
        self.serialize_f64(f64::from(v))
    }
    fn serialize_f64(self, v: f64) -> Result<(), Error> {
        // Not finite: `null`, in a `Value` as written directly.
        serde_json::to_writer(&mut *self.out, &v)
    }
    fn serialize_char(self, v: char) -> Result<(), Error> {
        self.serialize_str(v.encode_utf8(&mut [0; 4]))
    }
    fn serialize_str(self, v: &str) -> Result<(), Error> {
        string(self.out, v);
        Ok(())
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), Error> {
        // A `Value` holds bytes as an array of numbers.
        use ser::SerializeSeq;
        let mut array = self.serialize_seq(Some(v.len()))?;
        for byte in v {
            array.serialize_element(byte)?;
        }
        array.end()
    }
    fn serialize_none(self) -> Result<(), Error> {
        self.serialize_unit()
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Error> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), Error> {
        self.out.extend_from_slice(b"null");
        Ok(())
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), Error> {
        self.serialize_unit()
    }
    fn serialize_unit_variant(self, _name: &'static str, _index: u32, variant: &'static str) -> Result<(), Error> {
        self.serialize_str(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _name: &'static str, value: &T) -> Result<(), Error> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        mut self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.open_variant(variant);
        value.serialize(Sorted { out: &mut *self.out, fields: &mut *self.fields, scratch: &mut *self.scratch })?;
        self.out.push(b'}');
        Ok(())
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Array<'a>, Error> {
        self.out.push(b'[');
        Ok(Array { out: self.out, fields: self.fields, scratch: self.scratch, first: true, in_variant: false })
    }
    fn serialize_tuple(self, len: usize) -> Result<Array<'a>, Error> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(self, _name: &'static str, len: usize) -> Result<Array<'a>, Error> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(mut self, _name: &'static str, _index: u32, variant: &'static str, _len: usize) -> Result<Array<'a>, Error> {
        self.open_variant(variant);
        self.out.push(b'[');
        Ok(Array { out: self.out, fields: self.fields, scratch: self.scratch, first: true, in_variant: true })
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Object<'a>, Error> {
        Ok(Object::new(self, false))
    }
    fn serialize_struct(self, _name: &'static str, _len: usize) -> Result<Object<'a>, Error> {
        Ok(Object::new(self, false))
    }
    fn serialize_struct_variant(mut self, _name: &'static str, _index: u32, variant: &'static str, _len: usize) -> Result<Object<'a>, Error> {
        self.open_variant(variant);
        Ok(Object::new(self, true))
    }
    fn collect_str<T: std::fmt::Display + ?Sized>(self, value: &T) -> Result<(), Error> {
        // Written in place (instants, amounts: nothing to escape), escaped after if need be.
        use std::io::Write;
        self.out.push(b'"');
        let start = self.out.len();
        write!(self.out, "{value}").map_err(Error::io)?;
        if self.out[start..].iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\') {
            let text = String::from_utf8(self.out.split_off(start)).expect("Display writes UTF-8");
            self.out.pop();
            string(self.out, &text);
        } else {
            self.out.push(b'"');
        }
        Ok(())
    }
}

impl Array<'_> {
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        value.serialize(Sorted { out: &mut *self.out, fields: &mut *self.fields, scratch: &mut *self.scratch })
    }

    fn close(self) -> Result<(), Error> {
        self.out.extend_from_slice(if self.in_variant { b"]}" } else { b"]" });
        Ok(())
    }
}

/// serde's four kinds of array, all written alike.
macro_rules! array {
    ($kind:ident, $element:ident) => {
        impl ser::$kind for Array<'_> {
            type Ok = ();
            type Error = Error;
            fn $element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
                self.element(value)
            }
            fn end(self) -> Result<(), Error> {
                self.close()
            }
        }
    };
}
array!(SerializeSeq, serialize_element);
array!(SerializeTuple, serialize_element);
array!(SerializeTupleStruct, serialize_field);
array!(SerializeTupleVariant, serialize_field);

impl ser::SerializeMap for Object<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Error> {
        // A `Value`'s keys are strings: a map's other keys as `serde_json` turns them into one.
        self.key = Some(match serde_json::to_value(key)? {
            serde_json::Value::String(s) => s,
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Bool(b) => b.to_string(),
            _ => return Err(ser::Error::custom("key must be a string")),
        });
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        let key = self.key.take().ok_or_else(|| ser::Error::custom("a map's value came before its key"))?;
        self.field(Cow::Owned(key), value)
    }
    fn end(self) -> Result<(), Error> {
        self.finish()
    }
}

/// A struct and a struct variant's fields, written alike.
macro_rules! fields {
    ($kind:ident) => {
        impl ser::$kind for Object<'_> {
            type Ok = ();
            type Error = Error;
            fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result<(), Error> {
                self.field(Cow::Borrowed(key), value)
            }
            fn end(self) -> Result<(), Error> {
                self.finish()
            }
        }
    };
}
fields!(SerializeStruct);
fields!(SerializeStructVariant);

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;
    use std::collections::{BTreeMap, HashMap};

    fn through_value<T: Serialize>(value: &T) -> String {
        serde_json::to_value(value).unwrap().to_string()
    }

    fn sorted<T: Serialize>(value: &T) -> String {
        let mut out = Vec::new();
        write_sorted(value, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[derive(Serialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
    enum Tagged {
        Unit,
        Fields {
            zeta: u8,
            alpha: Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            gone: Option<u8>,
        },
        Wrapped(Inner),
    }

    #[derive(Serialize)]
    struct Inner {
        b: Vec<Plain>,
        a: HashMap<u32, f64>,
        #[serde(flatten)]
        more: BTreeMap<String, i64>,
    }

    #[derive(Serialize)]
    enum Plain {
        Unit,
        New(i8),
        Tuple(u8, String),
        Struct { y: bool, x: char },
    }

    #[test]
    fn the_same_bytes_as_through_a_value() {
        let cases: Vec<Box<dyn Fn() -> (String, String)>> = vec![
            Box::new(|| (through_value(&Tagged::Unit), sorted(&Tagged::Unit))),
            Box::new(|| {
                let v = Tagged::Fields { zeta: 9, alpha: Some("quote \" and \u{1} é".into()), gone: None };
                (through_value(&v), sorted(&v))
            }),
            Box::new(|| {
                let v = Tagged::Wrapped(Inner {
                    b: vec![Plain::Unit, Plain::New(-3), Plain::Tuple(1, "t".into()), Plain::Struct { y: true, x: 'x' }],
                    a: HashMap::from([(2, 0.1), (10, f64::NAN), (1, 1e300)]),
                    more: BTreeMap::from([("type".to_string(), 5), ("aa".to_string(), -1)]),
                });
                (through_value(&v), sorted(&v))
            }),
            Box::new(|| (through_value(&(1.5f32, u64::MAX, i64::MIN, ())), sorted(&(1.5f32, u64::MAX, i64::MIN, ())))),
            Box::new(|| (through_value(&serde_bytes_like()), sorted(&serde_bytes_like()))),
            Box::new(|| {
                let v = [Displayed("2023-04-01T00:00:00+08:00"), Displayed("a \"quote\", a \\ and a\nline")];
                (through_value(&v), sorted(&v))
            }),
        ];
        for case in cases {
            let (expected, got) = case();
            assert_eq!(got, expected);
        }
    }

    /// A value written through its `Display` (as instants and amounts are).
    struct Displayed(&'static str);
    impl Serialize for Displayed {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_str(self.0)
        }
    }

    /// Bytes, as a `Value` holds them (an array of numbers).
    fn serde_bytes_like() -> impl Serialize {
        struct Bytes;
        impl Serialize for Bytes {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(&[0, 7, 255])
            }
        }
        Bytes
    }

    #[test]
    fn a_key_given_twice_keeps_its_last_value_as_a_map_does() {
        struct Twice;
        impl Serialize for Twice {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeMap;
                let mut map = s.serialize_map(None)?;
                map.serialize_entry("k", &1)?;
                map.serialize_entry("a", &2)?;
                map.serialize_entry("k", &3)?;
                map.end()
            }
        }
        assert_eq!(sorted(&Twice), through_value(&Twice));
        assert_eq!(sorted(&Twice), r#"{"a":2,"k":3}"#);
    }
}
