//! JSON as QEMU reads and writes it: duplicate keys are an error on input, and output
//! uses QEMU's `", "` / `": "` separators and `\uXXXX` escapes for anything outside
//! printable ASCII (qobject/qjson.c), so replies are byte-identical where values are.

use std::fmt;
use std::io::{self, Write};

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Parses one framed message. Errors are QEMU-style descriptions (without the
/// "JSON parse error, " prefix).
pub(crate) fn parse(text: &[u8]) -> Result<Value, String> {
    let mut de = serde_json::Deserializer::from_slice(text);
    let value = Strict.deserialize(&mut de).map_err(describe)?;
    de.end().map_err(describe)?;
    Ok(value)
}

fn describe(e: serde_json::Error) -> String {
    let msg = e.to_string();
    if msg.starts_with("duplicate key") {
        return "duplicate key".into();
    }
    if msg.starts_with("expected value") || msg.starts_with("EOF") {
        return "expecting value".into();
    }
    if msg.starts_with("key must be a string") {
        return "key is not a string in object".into();
    }
    if msg.starts_with("expected `:`") {
        return "missing : in object pair".into();
    }
    if msg.starts_with("expected `,` or `}`") {
        return "expected separator in dict".into();
    }
    if msg.starts_with("expected `,` or `]`") {
        return "expected separator in list".into();
    }
    if msg.starts_with("expected ident") {
        return "invalid keyword".into();
    }
    // Anything else: serde_json's own words, without the position.
    match msg.find(" at line ") {
        Some(pos) => msg[..pos].to_string(),
        None => msg,
    }
}

/// A `Value` deserializer that refuses duplicate object keys (QEMU's "duplicate key").
struct Strict;

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut v = Vec::new();
        while let Some(item) = seq.next_element_seed(Strict)? {
            v.push(item);
        }
        Ok(Value::Array(v))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut m = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if m.contains_key(&key) {
                return Err(de::Error::custom("duplicate key"));
            }
            let value = map.next_value_seed(Strict)?;
            m.insert(key, value);
        }
        Ok(Value::Object(m))
    }
}

/// serde_json's compact output with QEMU's separators and escapes.
struct QemuFormatter;

impl serde_json::ser::Formatter for QemuFormatter {
    fn begin_array_value<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }
    fn begin_object_key<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }
    fn begin_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }
    fn write_string_fragment<W: ?Sized + Write>(&mut self, w: &mut W, s: &str) -> io::Result<()> {
        let mut start = 0;
        for (i, c) in s.char_indices() {
            if c.is_ascii() && c != '\x7f' {
                continue;
            }
            w.write_all(&s.as_bytes()[start..i])?;
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                write!(w, "\\u{unit:04X}")?;
            }
            start = i + c.len_utf8();
        }
        w.write_all(&s.as_bytes()[start..])
    }
    fn write_char_escape<W: ?Sized + Write>(
        &mut self,
        w: &mut W,
        escape: serde_json::ser::CharEscape,
    ) -> io::Result<()> {
        use serde_json::ser::CharEscape::*;
        let s: &[u8] = match escape {
            Quote => b"\\\"",
            ReverseSolidus => b"\\\\",
            Solidus => b"\\/",
            Backspace => b"\\b",
            FormFeed => b"\\f",
            LineFeed => b"\\n",
            CarriageReturn => b"\\r",
            Tab => b"\\t",
            AsciiControl(c) => return write!(w, "\\u{c:04X}"),
        };
        w.write_all(s)
    }
}

/// Appends `value` in QEMU's output format.
pub(crate) fn write(out: &mut Vec<u8>, value: &Value) {
    let mut ser = serde_json::Serializer::with_formatter(&mut *out, QemuFormatter);
    // Serializing a `Value` into a Vec cannot fail (keys are strings, no I/O errors).
    let _ = serde::Serialize::serialize(value, &mut ser);
}

/// `value` in QEMU's output format.
pub(crate) fn to_string(value: &Value) -> String {
    let mut out = Vec::new();
    write(&mut out, value);
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn qemu_separators_and_escapes() {
        let v =
            json!({"status": "running", "running": true, "l": [1, 2], "s": "é\u{1}\"\u{1F600}"});
        assert_eq!(
            to_string(&v),
            r#"{"status": "running", "running": true, "l": [1, 2], "s": "\u00E9\u0001\"\uD83D\uDE00"}"#
        );
    }

    #[test]
    fn parse_errors_read_like_qemu() {
        assert_eq!(parse(br#"{"a":1,"a":2}"#).unwrap_err(), "duplicate key");
        assert_eq!(
            parse(br#"{"execute" "x"}"#).unwrap_err(),
            "missing : in object pair"
        );
        assert_eq!(
            parse(br#"{"a":1 2}"#).unwrap_err(),
            "expected separator in dict"
        );
        assert_eq!(parse(b"}").unwrap_err(), "expecting value");
        assert_eq!(
            parse(br#"{"a":{"b":[1,{}]}}"#).unwrap(),
            json!({"a":{"b":[1,{}]}})
        );
    }
}
