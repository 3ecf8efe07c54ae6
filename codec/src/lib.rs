//! Typed messages <-> envelope fields (`type` + JSON `payload`).
//!
//! Commands and events are plain serde enums, externally tagged: the variant name is the
//! envelope's type, the variant's content is the payload. [`encode`] splits one serialization
//! into the two; [`decode`] feeds them back without building an intermediate JSON value, so a
//! message costs one pass each way.

pub mod refusal;

use serde::de::{self, DeserializeOwned, IntoDeserializer};
use serde::{Deserializer, Serialize};
use std::fmt;

/// The content type of every payload and state the SDK writes.
pub const JSON: &str = "application/json";

/// Why a message could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodecError(pub String);

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CodecError {}

/// Encodes an externally tagged enum value into `(type, payload)`.
///
/// ```
/// #[derive(serde::Serialize)]
/// #[serde(rename_all = "kebab-case")]
/// enum Event { ToppedUp { amount: i64 } }
///
/// let (ty, payload) = tollgate_codec::encode(&Event::ToppedUp { amount: 5 }).unwrap();
/// assert_eq!(ty, "topped-up");
/// assert_eq!(payload, br#"{"amount":5}"#);
/// ```
pub fn encode<T: Serialize>(value: &T) -> Result<(String, Vec<u8>), CodecError> {
    let bytes = serde_json::to_vec(value).map_err(|e| CodecError(e.to_string()))?;
    let (name, payload) = split_tagged(bytes)?;
    // An object of several keys (an internally tagged enum, a struct) splits at its first key
    // into a name and a payload that is not one JSON value: refused, never written.
    if serde_json::from_slice::<de::IgnoredAny>(&payload).is_err() {
        return Err(not_tagged());
    }
    Ok((name, payload))
}

fn not_tagged() -> CodecError {
    CodecError(
        "value is not an externally tagged enum (`{\"type\": payload}` or `\"type\"`): commands and events \
         must be plain serde enums, without #[serde(untagged)], `tag` or `content`"
            .into(),
    )
}

fn split_tagged(mut bytes: Vec<u8>) -> Result<(String, Vec<u8>), CodecError> {
    // A unit variant serializes as a bare string: `"opened"`.
    if bytes.first() == Some(&b'"') {
        let name = serde_json::from_slice::<String>(&bytes).map_err(|e| CodecError(e.to_string()))?;
        return Ok((name, b"null".to_vec()));
    }
    // Otherwise `{"name":<payload>}`; variant names never contain quotes or escapes.
    let malformed = not_tagged;
    if bytes.len() < 5 || bytes[0] != b'{' || bytes[1] != b'"' || bytes[bytes.len() - 1] != b'}' {
        return Err(malformed());
    }
    let end = bytes[2..].iter().position(|b| *b == b'"').ok_or_else(malformed)? + 2;
    if bytes.get(end + 1) != Some(&b':') || bytes[2..end].contains(&b'\\') {
        return Err(malformed());
    }
    let name = String::from_utf8(bytes[2..end].to_vec()).map_err(|_| malformed())?;
    bytes.pop();
    bytes.drain(..end + 2);
    Ok((name, bytes))
}

/// Decodes `(type, payload)` into an externally tagged enum.
///
/// ```
/// #[derive(serde::Deserialize, Debug, PartialEq)]
/// #[serde(rename_all = "kebab-case")]
/// enum Command { TopUp { amount: i64 }, Close }
///
/// let cmd: Command = tollgate_codec::decode("top-up", br#"{"amount":5}"#).unwrap();
/// assert_eq!(cmd, Command::TopUp { amount: 5 });
/// let err = tollgate_codec::decode::<Command>("withdraw", b"{}").unwrap_err();
/// assert!(err.0.contains("unknown variant `withdraw`"));
/// ```
pub fn decode<T: DeserializeOwned>(type_name: &str, payload: &[u8]) -> Result<T, CodecError> {
    T::deserialize(Tagged { type_name, payload }).map_err(|e| CodecError(e.0))
}

/// Checks that `T` has the shape [`decode`] reads: an externally tagged enum (or one whose
/// `#[serde(other)]` variant takes every unknown type). An enum that wraps others with
/// `#[serde(untagged)]`, or is internally or adjacently tagged (`tag`, `content`), cannot be
/// decoded from a type and a payload; this says so before any message does. Run it in a
/// native test of an actor's message types.
///
/// ```
/// #[derive(serde::Deserialize)]
/// enum Plain { Opened, Closed }
/// #[derive(serde::Deserialize)]
/// #[serde(untagged)]
/// enum Wrapper { Plain(Plain) }
///
/// assert!(tollgate_codec::check_enum::<Plain>().is_ok());
/// let err = tollgate_codec::check_enum::<Wrapper>().unwrap_err();
/// assert!(err.0.contains("Wrapper") && err.0.contains("untagged"), "{err}");
/// ```
pub fn check_enum<T: DeserializeOwned>() -> Result<(), CodecError> {
    // No variant is named so; an externally tagged enum answers "unknown variant".
    const PROBE: &str = "\u{1}tollgate-shape-probe";
    match decode::<T>(PROBE, b"null") {
        Ok(_) => Ok(()),
        Err(e) if is_unknown_variant(&e) => Ok(()),
        Err(e) => Err(CodecError(format!(
            "`{}` cannot be decoded from a type and a payload: {e}",
            std::any::type_name::<T>()
        ))),
    }
}

/// Whether a decode error means the type name is unknown rather than the payload malformed.
pub fn is_unknown_variant(error: &CodecError) -> bool {
    error.0.starts_with("unknown variant")
}

/// Encodes a state (or any value) as JSON.
pub fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    to_json_in(Vec::with_capacity(128), value)
}

/// [`to_json`] into `buffer` (appended to): a buffer sized for the expected output spares
/// re-copying a large value as it grows.
///
/// ```
/// let bytes = tollgate_codec::to_json_in(Vec::with_capacity(64), &[1, 2]).unwrap();
/// assert_eq!(bytes, b"[1,2]");
/// ```
pub fn to_json_in<T: Serialize>(mut buffer: Vec<u8>, value: &T) -> Result<Vec<u8>, CodecError> {
    serde_json::to_writer(&mut buffer, value).map_err(|e| CodecError(e.to_string()))?;
    Ok(buffer)
}

/// Decodes a state (or any value) from JSON.
pub fn from_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    serde_json::from_slice(bytes).map_err(|e| CodecError(e.to_string()))
}

#[derive(Debug)]
struct Error(String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<M: fmt::Display>(msg: M) -> Self {
        Error(msg.to_string())
    }
}

fn json_error(e: serde_json::Error) -> Error {
    Error(e.to_string())
}

struct Tagged<'a> {
    type_name: &'a str,
    payload: &'a [u8],
}

impl<'de> Deserializer<'de> for Tagged<'de> {
    type Error = Error;

    fn deserialize_any<V: de::Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Error> {
        Err(Error(
            "only an externally tagged enum decodes from a type and a payload; this type asks for \
             another shape (#[serde(untagged)], `tag` or `content`): make it a plain serde enum, \
             one variant per message type"
                .into(),
        ))
    }

    fn deserialize_enum<V: de::Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_enum(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct identifier ignored_any
    }
}

impl<'de> de::EnumAccess<'de> for Tagged<'de> {
    type Error = Error;
    type Variant = Self;

    fn variant_seed<S: de::DeserializeSeed<'de>>(self, seed: S) -> Result<(S::Value, Self), Error> {
        let de: de::value::StrDeserializer<'_, Error> = self.type_name.into_deserializer();
        Ok((seed.deserialize(de)?, self))
    }
}

impl<'de> de::VariantAccess<'de> for Tagged<'de> {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        match self.payload.trim_ascii() {
            b"" | b"null" | b"{}" => Ok(()),
            _ => Err(Error(format!("`{}` takes no payload", self.type_name))),
        }
    }

    fn newtype_variant_seed<S: de::DeserializeSeed<'de>>(self, seed: S) -> Result<S::Value, Error> {
        let mut de = serde_json::Deserializer::from_slice(self.payload);
        let value = seed.deserialize(&mut de).map_err(json_error)?;
        de.end().map_err(json_error)?;
        Ok(value)
    }

    fn tuple_variant<V: de::Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Error> {
        let mut de = serde_json::Deserializer::from_slice(self.payload);
        let value = de.deserialize_tuple(len, visitor).map_err(json_error)?;
        de.end().map_err(json_error)?;
        Ok(value)
    }

    fn struct_variant<V: de::Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let mut de = serde_json::Deserializer::from_slice(self.payload);
        let value = de.deserialize_struct("", fields, visitor).map_err(json_error)?;
        de.end().map_err(json_error)?;
        Ok(value)
    }
}

/// `actual` cut down to the object fields `expected` states, recursively, so that comparing the
/// result with `expected` checks only what was stated (how scenario files compare `then.kv` and
/// the test helpers compare read models). An empty object in `expected` means an empty object;
/// arrays and other values compare whole.
///
/// ```
/// use serde_json::json;
/// let actual = json!({"balance": 5, "held": 2, "lines": [1, 2]});
/// assert_eq!(tollgate_codec::stated(&actual, &json!({"balance": 5})), json!({"balance": 5}));
/// assert_eq!(tollgate_codec::stated(&actual, &json!({"lines": [1]})), json!({"lines": [1, 2]}));
/// ```
pub fn stated(actual: &serde_json::Value, expected: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match (actual, expected) {
        (Value::Object(actual), Value::Object(expected)) if !expected.is_empty() => Value::Object(
            expected.iter().filter_map(|(k, e)| actual.get(k).map(|a| (k.clone(), stated(a, e)))).collect(),
        ),
        _ => actual.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Deserialize;

    #[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
    #[serde(rename_all = "kebab-case")]
    enum Msg {
        Unit,
        Newtype(i64),
        Tuple(u8, String),
        Struct { name: String, amount: i64, tags: Vec<String> },
    }

    fn msg() -> impl Strategy<Value = Msg> {
        prop_oneof![
            Just(Msg::Unit),
            any::<i64>().prop_map(Msg::Newtype),
            (any::<u8>(), ".*").prop_map(|(a, b)| Msg::Tuple(a, b)),
            (".*", any::<i64>(), prop::collection::vec(".*", 0..3)).prop_map(|(name, amount, tags)| Msg::Struct {
                name,
                amount,
                tags
            }),
        ]
    }

    proptest! {
        #[test]
        fn round_trips(m in msg()) {
            let (ty, payload) = encode(&m).unwrap();
            prop_assert_eq!(decode::<Msg>(&ty, &payload).unwrap(), m);
        }
    }

    #[test]
    fn names_the_missing_field() {
        let err = decode::<Msg>("struct", br#"{"name":"x"}"#).unwrap_err();
        assert!(err.0.contains("missing field `amount`"), "{err}");
    }

    #[test]
    fn rejects_trailing_garbage_and_unknown_types() {
        assert!(decode::<Msg>("newtype", b"5 6").is_err());
        let err = decode::<Msg>("nope", b"{}").unwrap_err();
        assert!(is_unknown_variant(&err), "{err}");
        assert!(decode::<Msg>("unit", b"7").is_err());
    }

    #[test]
    fn refuses_non_enums() {
        assert!(encode(&5u32).is_err());
        assert!(encode(&vec![1]).is_err());
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    #[serde(tag = "type", rename_all = "kebab-case")]
    enum Internal {
        Earned { points: u64 },
    }

    #[derive(Deserialize, Debug, PartialEq)]
    #[serde(untagged)]
    enum Wrapped {
        Msg(Msg),
    }

    #[derive(Deserialize, Debug, PartialEq)]
    #[serde(rename_all = "kebab-case")]
    enum Open {
        Unit,
        #[serde(other)]
        Other,
    }

    #[test]
    fn other_enum_shapes_are_refused_both_ways_never_written_half() {
        // Serialized as {"type":"earned","points":5}: several keys, not a type and a payload.
        let err = encode(&Internal::Earned { points: 5 }).unwrap_err();
        assert!(err.0.contains("externally tagged"), "{err}");
        let err = encode(&serde_json::json!({"a": 1, "b": 2})).unwrap_err();
        assert!(err.0.contains("externally tagged"), "{err}");
        for err in [
            decode::<Internal>("earned", br#"{"points":5}"#).unwrap_err(),
            decode::<Wrapped>("unit", b"null").unwrap_err(),
        ] {
            assert!(!is_unknown_variant(&err) && err.0.contains("untagged"), "{err}");
        }
        assert!(check_enum::<Internal>().unwrap_err().0.contains("Internal"));
        assert!(check_enum::<Wrapped>().unwrap_err().0.contains("Wrapped"));
        assert_eq!(check_enum::<Msg>(), Ok(()));
        assert_eq!(check_enum::<Open>(), Ok(()), "#[serde(other)] takes every unknown type");
    }
}
