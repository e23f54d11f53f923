//! Canonical JSON (Matrix appendix "Canonical JSON").
//!
//! The one encoding that both sides of a signature agree on: object keys sorted by Unicode code
//! point, no insignificant whitespace, integers only (in `±(2^53 - 1)`), non-ASCII characters written
//! raw, and only the escapes JSON requires (`\"`, `\\`, the short forms `\b \t \n \f \r`, and
//! lowercase `\u00xx` for the other control characters).
//!
//! Keys are sorted here explicitly, so the result does not depend on whether `serde_json`'s
//! `preserve_order` feature is enabled somewhere in the dependency graph. Numbers that arrive as
//! floats are accepted only when they are integral and in range (`1e10` becomes `10000000000`, `-0`
//! becomes `0`), as the specification's examples require; anything else is an error.

use std::fmt::Write as _;

use serde_json::{Map, Number, Value};

/// The largest integer canonical JSON allows (`2^53 - 1`); the smallest is its negation.
pub const MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;

/// Why a JSON value has no canonical form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanonicalJsonError {
    /// A number with a fraction, or not finite.
    #[error("canonical JSON allows only integers, found {0}")]
    NonIntegral(String),
    /// An integer outside `[-(2^53 - 1), 2^53 - 1]`.
    #[error("integer {0} is outside the range canonical JSON allows")]
    OutOfRange(String),
}

/// Encodes `value` as a canonical JSON string.
pub fn to_canonical_string(value: &Value) -> Result<String, CanonicalJsonError> {
    let mut out = String::new();
    write_value(&mut out, value)?;
    Ok(out)
}

/// Encodes `value` as canonical JSON bytes (UTF-8), the input of every Matrix signature.
pub fn to_canonical_bytes(value: &Value) -> Result<Vec<u8>, CanonicalJsonError> {
    to_canonical_string(value).map(String::into_bytes)
}

/// Returns the integer a JSON number stands for, if canonical JSON accepts it.
pub fn canonical_integer(number: &Number) -> Result<i64, CanonicalJsonError> {
    if let Some(i) = number.as_i64() {
        return if (-MAX_SAFE_INTEGER..=MAX_SAFE_INTEGER).contains(&i) {
            Ok(i)
        } else {
            Err(CanonicalJsonError::OutOfRange(number.to_string()))
        };
    }
    if number.as_u64().is_some() {
        // Larger than i64::MAX, so certainly out of range.
        return Err(CanonicalJsonError::OutOfRange(number.to_string()));
    }
    match number.as_f64() {
        Some(f) if f.is_finite() && f.fract() == 0.0 => {
            // `MAX_SAFE_INTEGER` is exactly representable as f64, so this comparison is exact.
            if f.abs() <= MAX_SAFE_INTEGER as f64 {
                // In range and integral: the conversion is exact (and maps -0.0 to 0).
                #[allow(clippy::cast_possible_truncation)]
                Ok(f as i64)
            } else {
                Err(CanonicalJsonError::OutOfRange(number.to_string()))
            }
        }
        _ => Err(CanonicalJsonError::NonIntegral(number.to_string())),
    }
}

fn write_value(out: &mut String, value: &Value) -> Result<(), CanonicalJsonError> {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => {
            let i = canonical_integer(n)?;
            // Writing to a String cannot fail.
            let _ = write!(out, "{i}");
        }
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_value(out, item)?;
            }
            out.push(']');
        }
        Value::Object(map) => write_object(out, map)?,
    }
    Ok(())
}

fn write_object(out: &mut String, map: &Map<String, Value>) -> Result<(), CanonicalJsonError> {
    write_entries(
        out,
        map.iter().map(|(key, item)| (key.as_str(), item)).collect(),
    )
}

/// Writes an object given as borrowed entries (keys must be distinct).
fn write_entries(
    out: &mut String,
    mut entries: Vec<(&str, &Value)>,
) -> Result<(), CanonicalJsonError> {
    // `str` orders by UTF-8 bytes, which is the same as ordering by Unicode code point.
    entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    out.push('{');
    for (index, (key, item)) in entries.into_iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        write_string(out, key);
        out.push(':');
        write_value(out, item)?;
    }
    out.push('}');
    Ok(())
}

/// Canonical JSON of the object made of `entries` (distinct keys), without building a
/// [`Value`] first; used to sign large objects without copying them.
pub(crate) fn entries_to_canonical_bytes(
    entries: Vec<(&str, &Value)>,
) -> Result<Vec<u8>, CanonicalJsonError> {
    let mut out = String::new();
    write_entries(&mut out, entries)?;
    Ok(out.into_bytes())
}

fn write_string(out: &mut String, s: &str) {
    out.push('"');
    // Copy runs of characters that need no escape in one go. Every byte that needs an escape is
    // ASCII, so slicing around it always lands on a character boundary.
    let mut run_start = 0;
    for (index, byte) in s.bytes().enumerate() {
        let short = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            0x08 => "\\b",
            b'\t' => "\\t",
            b'\n' => "\\n",
            0x0C => "\\f",
            b'\r' => "\\r",
            0x00..=0x1F => "",
            _ => continue,
        };
        out.push_str(&s[run_start..index]);
        if short.is_empty() {
            let _ = write!(out, "\\u{byte:04x}");
        } else {
            out.push_str(short);
        }
        run_start = index + 1;
    }
    out.push_str(&s[run_start..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn canon(text: &str) -> Result<String, CanonicalJsonError> {
        let value: Value = serde_json::from_str(text).unwrap();
        to_canonical_string(&value)
    }

    #[test]
    fn spec_examples() {
        assert_eq!(canon("{}").as_deref(), Ok("{}"));
        assert_eq!(
            canon(r#"{"one": 1, "two": "Two"}"#).as_deref(),
            Ok(r#"{"one":1,"two":"Two"}"#)
        );
        assert_eq!(
            canon(r#"{"b": "2", "a": "1"}"#).as_deref(),
            Ok(r#"{"a":"1","b":"2"}"#)
        );
        assert_eq!(
            canon(
                r#"{"auth": {"success": true, "mxid": "@john.doe:example.com",
                "profile": {"display_name": "John Doe", "three_pids": [
                {"medium": "email", "address": "john.doe@example.org"},
                {"medium": "msisdn", "address": "123456789"}]}}}"#
            )
            .as_deref(),
            Ok(
                r#"{"auth":{"mxid":"@john.doe:example.com","profile":{"display_name":"John Doe","three_pids":[{"address":"john.doe@example.org","medium":"email"},{"address":"123456789","medium":"msisdn"}]},"success":true}}"#
            )
        );
        assert_eq!(
            canon(r#"{"a": "日本語"}"#).as_deref(),
            Ok(r#"{"a":"日本語"}"#)
        );
        assert_eq!(
            canon(r#"{"本": 2, "日": 1}"#).as_deref(),
            Ok(r#"{"日":1,"本":2}"#)
        );
        assert_eq!(canon(r#"{"a": "\u65E5"}"#).as_deref(), Ok(r#"{"a":"日"}"#));
        assert_eq!(canon(r#"{"a": null}"#).as_deref(), Ok(r#"{"a":null}"#));
        assert_eq!(
            canon(r#"{"a": -0, "b": 1e10}"#).as_deref(),
            Ok(r#"{"a":0,"b":10000000000}"#)
        );
    }

    #[test]
    fn escapes_exactly_what_is_required() {
        let value = json!({"s": "\"\\/\u{08}\t\n\u{0C}\r\u{00}\u{1f}\u{7f}\u{2028}é"});
        assert_eq!(
            to_canonical_string(&value).as_deref(),
            Ok("{\"s\":\"\\\"\\\\/\\b\\t\\n\\f\\r\\u0000\\u001f\u{7f}\u{2028}é\"}")
        );
        let keyed = json!({"\u{1b}": 1});
        assert_eq!(
            to_canonical_string(&keyed).as_deref(),
            Ok("{\"\\u001b\":1}")
        );
    }

    #[test]
    fn sorts_by_code_point_not_utf16() {
        // U+FF61 sorts before U+1F600 by code point, but after it in UTF-16 code units.
        let value = json!({"\u{1F600}": 1, "\u{FF61}": 2, "a": 3, "B": 4});
        assert_eq!(
            to_canonical_string(&value).as_deref(),
            Ok("{\"B\":4,\"a\":3,\"\u{FF61}\":2,\"\u{1F600}\":1}")
        );
    }

    #[test]
    fn integer_range() {
        assert_eq!(
            canon("[9007199254740991]").as_deref(),
            Ok("[9007199254740991]")
        );
        assert_eq!(
            canon("[-9007199254740991]").as_deref(),
            Ok("[-9007199254740991]")
        );
        assert!(matches!(
            canon("[9007199254740992]"),
            Err(CanonicalJsonError::OutOfRange(_))
        ));
        assert!(matches!(
            canon("[-9007199254740992]"),
            Err(CanonicalJsonError::OutOfRange(_))
        ));
        assert!(matches!(
            canon("[18446744073709551615]"),
            Err(CanonicalJsonError::OutOfRange(_))
        ));
        assert!(matches!(
            canon("[1e300]"),
            Err(CanonicalJsonError::OutOfRange(_))
        ));
    }

    #[test]
    fn rejects_fractions() {
        assert!(matches!(
            canon("[1.5]"),
            Err(CanonicalJsonError::NonIntegral(_))
        ));
        assert!(matches!(
            canon(r#"{"a":{"b":[0.1]}}"#),
            Err(CanonicalJsonError::NonIntegral(_))
        ));
        assert_eq!(canon("[2.0]").as_deref(), Ok("[2]"));
    }
}
