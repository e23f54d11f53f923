//! Property tests of canonical JSON: it round-trips, is idempotent, sorts keys by code point,
//! contains no insignificant whitespace, and refuses non-integers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt;

use hush_federation::canonical::{to_canonical_string, CanonicalJsonError, MAX_SAFE_INTEGER};
use proptest::prelude::*;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

fn json_string() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-zA-Z0-9 _\"\\\\/\u{0}-\u{1f}\u{7f}\u{2028}é日😀]{0,12}",
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-MAX_SAFE_INTEGER..=MAX_SAFE_INTEGER).prop_map(Value::from),
        json_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((json_string(), inner), 0..6)
                .prop_map(|entries| Value::Object(entries.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Deserialises JSON while checking that every object's keys arrive in strictly increasing
/// code-point order.
struct OrderChecked;

impl<'de> Deserialize<'de> for OrderChecked {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(OrderVisitor)
    }
}

struct OrderVisitor;

impl<'de> Visitor<'de> for OrderVisitor {
    type Value = OrderChecked;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> Result<OrderChecked, E> {
        Ok(OrderChecked)
    }
    fn visit_bool<E>(self, _: bool) -> Result<OrderChecked, E> {
        Ok(OrderChecked)
    }
    fn visit_i64<E>(self, _: i64) -> Result<OrderChecked, E> {
        Ok(OrderChecked)
    }
    fn visit_u64<E>(self, _: u64) -> Result<OrderChecked, E> {
        Ok(OrderChecked)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<OrderChecked, E> {
        Err(E::custom("float in canonical output"))
    }
    fn visit_str<E>(self, _: &str) -> Result<OrderChecked, E> {
        Ok(OrderChecked)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OrderChecked, A::Error> {
        while seq.next_element::<OrderChecked>()?.is_some() {}
        Ok(OrderChecked)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OrderChecked, A::Error> {
        let mut previous: Option<String> = None;
        while let Some(key) = map.next_key::<String>()? {
            if let Some(previous) = &previous {
                if previous.as_bytes() >= key.as_bytes() {
                    return Err(de::Error::custom(format!("{previous:?} before {key:?}")));
                }
            }
            map.next_value::<OrderChecked>()?;
            previous = Some(key);
        }
        Ok(OrderChecked)
    }
}

/// Does `text` contain a whitespace byte outside string literals?
fn has_whitespace_outside_strings(text: &str) -> bool {
    let mut in_string = false;
    let mut escaped = false;
    for b in text.bytes() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
        } else if b == b'"' {
            in_string = true;
        } else if b.is_ascii_whitespace() {
            return true;
        }
    }
    false
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn parse_of_canonical_is_the_value(value in json_value()) {
        let canonical = to_canonical_string(&value).unwrap();
        let parsed: Value = serde_json::from_str(&canonical).unwrap();
        prop_assert_eq!(parsed, value);
    }

    #[test]
    fn canonical_is_idempotent(value in json_value()) {
        let once = to_canonical_string(&value).unwrap();
        let twice = to_canonical_string(&serde_json::from_str(&once).unwrap()).unwrap();
        prop_assert_eq!(once, twice);
    }

    #[test]
    fn keys_sorted_and_no_whitespace(value in json_value()) {
        let canonical = to_canonical_string(&value).unwrap();
        let checked: Result<OrderChecked, _> = serde_json::from_str(&canonical);
        prop_assert!(checked.is_ok(), "{:?}: {:?}", canonical, checked.err());
        prop_assert!(!has_whitespace_outside_strings(&canonical), "{}", canonical);
    }

    #[test]
    fn only_required_escapes(s in json_string()) {
        let canonical = to_canonical_string(&Value::String(s)).unwrap();
        let inner = &canonical[1..canonical.len() - 1];
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            prop_assert!(c >= ' ', "raw control character in {:?}", canonical);
            prop_assert!(c != '"', "unescaped quote in {:?}", canonical);
            if c != '\\' {
                continue;
            }
            match chars.next() {
                Some('"' | '\\' | 'b' | 't' | 'n' | 'f' | 'r') => {}
                Some('u') => {
                    let hex: String = chars.by_ref().take(4).collect();
                    prop_assert!(hex.chars().all(|h| h.is_ascii_digit() || ('a'..='f').contains(&h)), "{}", hex);
                    let code = u32::from_str_radix(&hex, 16).unwrap();
                    prop_assert!(code < 0x20 && ![0x08, 0x09, 0x0a, 0x0c, 0x0d].contains(&code), "{}", hex);
                }
                other => prop_assert!(false, "unexpected escape {:?} in {:?}", other, canonical),
            }
        }
    }

    /// serde_json's compact writer escapes exactly like canonical JSON (lowercase `\u00xx`, no `\/`)
    /// and, without its `preserve_order` feature, sorts keys by code point: an independent oracle.
    #[test]
    fn matches_serde_json_compact_output(value in json_value()) {
        let probe: Map<String, Value> = [("b".to_owned(), Value::Null), ("a".to_owned(), Value::Null)].into_iter().collect();
        let serde_json_sorts = probe.keys().next().map(String::as_str) == Some("a");
        if serde_json_sorts {
            prop_assert_eq!(to_canonical_string(&value).unwrap(), serde_json::to_string(&value).unwrap());
        }
    }

    #[test]
    fn fractions_are_refused(f in any::<f64>().prop_filter("non-integral", |f| f.fract() != 0.0 && f.is_finite())) {
        let value = serde_json::json!({"x": [f]});
        prop_assert!(matches!(to_canonical_string(&value), Err(CanonicalJsonError::NonIntegral(_))));
    }

    #[test]
    fn integers_outside_range_are_refused(i in prop_oneof![i64::MIN..-MAX_SAFE_INTEGER, (MAX_SAFE_INTEGER + 1)..=i64::MAX]) {
        prop_assert!(matches!(to_canonical_string(&Value::from(i)), Err(CanonicalJsonError::OutOfRange(_))));
    }
}
