//! The checks behind the federation fuzz targets, one function per target.
//!
//! Each function takes arbitrary bytes, feeds them to a parser of `hush-federation` the way a
//! server or client does with input from the network, and asserts the properties that must hold
//! for every input: no panic, and round trips that agree with the parser. A failed assertion is a
//! finding, exactly like a panic inside the library.
//!
//! The same file is compiled into `federation/tests/fuzz_corpus.rs` and
//! `federation/tests/fuzz_never_panics.rs` (through `#[path]`), so stable `cargo test` replays the
//! committed corpora and runs proptest over the same checks. It may therefore use only crates
//! that `hush-federation` has as dependencies or dev-dependencies.

// Assertions are the point of this file: a failed one is a fuzzing finding.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ed25519_dalek::SigningKey;
use hush_federation::base64::{decode_lenient, encode_unpadded};
use hush_federation::canonical::{canonical_integer, to_canonical_string};
use hush_federation::ids::{
    is_valid_historical_localpart, is_valid_new_localpart, is_valid_opaque_id, DeviceId,
    ServerName, UserId,
};
use hush_federation::keys::{is_valid_key_version, split_key_id, verify_key_document};
use hush_federation::signing::{sign_json, signing_bytes, verify_json};
use hush_federation::wire::{
    encode_path_segment, DirectToDeviceContent, ErrorBody, KeysClaimRequest, KeysClaimResponse,
    KeysQueryRequest, KeysQueryResponse, Transaction, TransactionResponse, UserDevicesResponse,
    VersionResponse,
};
use hush_federation::xmatrix::XMatrixAuth;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

/// A fuzz target: it takes arbitrary bytes and panics on a finding.
pub type Target = fn(&[u8]);

/// The fuzz targets, by name, for the corpus replay test.
pub const TARGETS: &[(&str, Target)] = &[
    ("xmatrix_header", xmatrix_header),
    ("canonical_json", canonical_json),
    ("signed_json", signed_json),
    ("ids", ids),
    ("wire_bodies", wire_bodies),
];

/// The entity (server name) every signing check uses.
const ENTITY: &str = "a.example";
/// The key id every signing check uses.
const KEY_ID: &str = "ed25519:fuzz";

/// A fixed signing key (the seed is public: this is test data, not a secret).
fn fixed_key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

fn server(name: &str) -> ServerName {
    ServerName::parse(name).expect("a valid fixed server name")
}

/// `Authorization: X-Matrix ...` header parsing (federation/src/xmatrix.rs).
///
/// Properties: the parser never panics; a header it accepts, written back in our strict form,
/// parses to the same value; verification of an arbitrary header never panics.
pub fn xmatrix_header(data: &[u8]) {
    // Header values reach the parser as `&str` (after `HeaderValue::to_str`).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(auth) = XMatrixAuth::parse(text) else {
        return;
    };
    let written = auth.to_header_value();
    let again = XMatrixAuth::parse(&written).expect("our own header form parses");
    assert_eq!(
        again, auth,
        "header round trip changed the value: {written}"
    );
    let key = fixed_key().verifying_key();
    let body = json!({"edus": []});
    let ours = server("b.example");
    for content in [None, Some(&body)] {
        let _ = auth.verify("PUT", "/_matrix/federation/v1/send/1", content, &ours, &key);
    }
}

/// Is every number inside `value` accepted by canonical JSON?
fn numbers_are_canonical(value: &Value) -> bool {
    match value {
        Value::Number(n) => canonical_integer(n).is_ok(),
        Value::Array(items) => items.iter().all(numbers_are_canonical),
        Value::Object(map) => map.values().all(numbers_are_canonical),
        _ => true,
    }
}

/// Equality of JSON values where numbers compare by the integer canonical JSON makes of them
/// (`1e3` equals `1000`, `-0` equals `0`).
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            matches!((canonical_integer(x), canonical_integer(y)), (Ok(x), Ok(y)) if x == y)
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_value(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_value(v, w)))
        }
        _ => a == b,
    }
}

/// Canonical JSON (federation/src/canonical.rs) of arbitrary bytes parsed as JSON.
///
/// Properties: canonicalisation fails exactly when a number has no canonical form; the output
/// parses back to an equal value; canonicalising the output again gives the same bytes.
pub fn canonical_json(data: &[u8]) {
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    match to_canonical_string(&value) {
        Ok(text) => {
            let back: Value = serde_json::from_str(&text).expect("canonical JSON is JSON");
            assert!(same_value(&value, &back), "value changed: {text}");
            let twice = to_canonical_string(&back).expect("canonical JSON has a canonical form");
            assert_eq!(twice, text, "canonicalising twice is not stable");
        }
        Err(_) => assert!(
            !numbers_are_canonical(&value),
            "refused a value whose numbers are all canonical"
        ),
    }
}

/// Signed JSON (federation/src/signing.rs) and server key documents (federation/src/keys.rs)
/// from arbitrary bytes.
///
/// Properties: verifying never panics; if an object can be signed, the signature verifies,
/// also after the signed object went through JSON text and back.
pub fn signed_json(data: &[u8]) {
    let Ok(mut value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let key = fixed_key();
    let verifying = key.verifying_key();
    let _ = signing_bytes(&value);
    let _ = verify_json(&value, ENTITY, KEY_ID, &verifying);
    let _ = verify_key_document(&value, &server(ENTITY), 0);
    if sign_json(&mut value, ENTITY, KEY_ID, &key).is_ok() {
        verify_json(&value, ENTITY, KEY_ID, &verifying).expect("a fresh signature verifies");
        let text = serde_json::to_string(&value).expect("a Value serialises");
        let back: Value = serde_json::from_str(&text).expect("serialised JSON parses");
        verify_json(&back, ENTITY, KEY_ID, &verifying)
            .expect("a signature survives a JSON text round trip");
    }
}

/// Identifiers (federation/src/ids.rs), key ids, base64 and path encoding from an arbitrary
/// string.
///
/// Properties: parsers never panic; an accepted identifier keeps its exact text and its parts
/// put back together give that text; serde agrees with `parse`.
pub fn ids(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let as_json = Value::String(text.to_owned());

    let name = ServerName::parse(text);
    if let Ok(name) = &name {
        assert_eq!(name.as_str(), text);
        let _ = (name.host(), name.is_ip_literal());
        let port = name.port().map(|p| format!(":{p}"));
        let rest = &text[name.host_str().len()..];
        // A port is written as digits; leading zeros are allowed, so compare numerically.
        match port {
            None => assert!(
                rest.is_empty(),
                "server name {text:?} has text after the host"
            ),
            Some(_) => assert!(rest.starts_with(':') && rest.len() > 1),
        }
    }
    let de = serde_json::from_value::<ServerName>(as_json.clone());
    assert_eq!(de.ok(), name.ok(), "serde and parse disagree on {text:?}");

    let user = UserId::parse(text);
    if let Ok(user) = &user {
        assert_eq!(user.as_str(), text);
        assert_eq!(
            format!("@{}:{}", user.localpart(), user.server_name()),
            text
        );
        assert!(is_valid_historical_localpart(user.localpart()));
    }
    let de = serde_json::from_value::<UserId>(as_json.clone());
    assert_eq!(de.ok(), user.ok(), "serde and parse disagree on {text:?}");

    let device = DeviceId::parse(text);
    if let Ok(device) = &device {
        assert_eq!(device.as_str(), text);
    }
    let de = serde_json::from_value::<DeviceId>(as_json);
    assert_eq!(de.ok(), device.ok(), "serde and parse disagree on {text:?}");

    if is_valid_new_localpart(text) && text.len() < 200 {
        let user = UserId::new(text, &server(ENTITY)).expect("a valid new localpart");
        assert_eq!(user.localpart(), text);
    }
    let _ = is_valid_opaque_id(text);
    let _ = is_valid_key_version(text);
    if let Some((algorithm, version)) = split_key_id(text) {
        assert_eq!(format!("{algorithm}:{version}"), text);
    }
    if let Ok(bytes) = decode_lenient(text) {
        let encoded = encode_unpadded(&bytes);
        assert_eq!(decode_lenient(&encoded).ok(), Some(bytes));
    }
    let encoded = encode_path_segment(text);
    assert!(encoded.bytes().all(|b| b.is_ascii_graphic()));
}

/// Deserialises `value` as `T`; if that works, checks that `T` survives a serde round trip.
fn round_trip<T>(value: &Value) -> Option<T>
where
    T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug,
{
    let parsed = serde_json::from_value::<T>(value.clone()).ok()?;
    let written = serde_json::to_value(&parsed).expect("a parsed body serialises");
    let again = serde_json::from_value::<T>(written).expect("a written body parses");
    assert_eq!(again, parsed, "serde round trip changed the body");
    Some(parsed)
}

/// The federation request and response bodies of federation/src/wire.rs, above all the inbound
/// transaction (`PUT /_matrix/federation/v1/send/{txnId}`) and its `m.direct_to_device` EDUs.
///
/// Properties: parsing never panics; every body that parses survives a serde round trip.
pub fn wire_bodies(data: &[u8]) {
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    if let Some(transaction) = round_trip::<Transaction>(&value) {
        for edu in &transaction.edus {
            if let Some(Ok(content)) = edu.as_direct_to_device() {
                let written = serde_json::to_value(&content).expect("content serialises");
                let again: DirectToDeviceContent =
                    serde_json::from_value(written).expect("written content parses");
                assert_eq!(again, content);
            }
        }
    }
    round_trip::<DirectToDeviceContent>(&value);
    round_trip::<TransactionResponse>(&value);
    round_trip::<KeysQueryRequest>(&value);
    round_trip::<KeysQueryResponse>(&value);
    round_trip::<KeysClaimRequest>(&value);
    round_trip::<KeysClaimResponse>(&value);
    round_trip::<UserDevicesResponse>(&value);
    round_trip::<VersionResponse>(&value);
    round_trip::<ErrorBody>(&value);
}
