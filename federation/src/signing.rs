//! Signed JSON (Matrix appendix "Signing JSON").
//!
//! To sign an object: remove `signatures` and `unsigned`, encode the rest as
//! [canonical JSON](crate::canonical), sign the bytes with Ed25519, and store the unpadded base64
//! signature at `signatures[entity][key_id]`, then put `unsigned` back. Verification repeats the
//! first two steps and checks the signature with [`VerifyingKey::verify_strict`], which also rejects
//! small-order keys and non-canonical signatures.

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde_json::{Map, Value};

use crate::base64::{decode_lenient, encode_unpadded};
use crate::canonical::{entries_to_canonical_bytes, CanonicalJsonError};

/// Why signing or verifying a JSON object failed.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    /// Only JSON objects can carry signatures.
    #[error("only JSON objects can be signed")]
    NotAnObject,
    /// The object (without `signatures` and `unsigned`) has no canonical JSON form.
    #[error(transparent)]
    Canonical(#[from] CanonicalJsonError),
    /// `signatures` exists but is not an object of objects of strings.
    #[error("the signatures field is malformed")]
    MalformedSignatures,
    /// There is no signature by this entity with this key id.
    #[error("no signature by {entity} with key {key_id}")]
    MissingSignature {
        /// The entity whose signature was looked for.
        entity: String,
        /// The key id that was looked for.
        key_id: String,
    },
    /// The signature is not 64 bytes of base64.
    #[error("the signature is not valid base64 of 64 bytes")]
    MalformedSignature,
    /// The signature does not verify against the key.
    #[error("the signature does not match")]
    BadSignature,
}

/// Returns the bytes that are signed: the canonical JSON of `value` without `signatures` and
/// `unsigned`.
pub fn signing_bytes(value: &Value) -> Result<Vec<u8>, SigningError> {
    let object = value.as_object().ok_or(SigningError::NotAnObject)?;
    let entries = object
        .iter()
        .filter(|(key, _)| key.as_str() != "signatures" && key.as_str() != "unsigned")
        .map(|(key, item)| (key.as_str(), item))
        .collect();
    Ok(entries_to_canonical_bytes(entries)?)
}

/// Signs `bytes` and returns the unpadded base64 signature (86 characters).
pub fn sign_bytes(bytes: &[u8], key: &SigningKey) -> String {
    encode_unpadded(&key.sign(bytes).to_bytes())
}

/// Checks an unpadded (or padded) base64 Ed25519 signature over `bytes`.
pub fn verify_bytes(
    bytes: &[u8],
    signature_b64: &str,
    key: &VerifyingKey,
) -> Result<(), SigningError> {
    let raw = decode_lenient(signature_b64).map_err(|_| SigningError::MalformedSignature)?;
    let raw: [u8; 64] = raw
        .try_into()
        .map_err(|_| SigningError::MalformedSignature)?;
    let signature = Signature::from_bytes(&raw);
    key.verify_strict(bytes, &signature)
        .map_err(|_| SigningError::BadSignature)
}

/// Signs a JSON object in place as `entity` with key `key_id` (e.g. `ed25519:a_Abc1`).
///
/// Existing signatures (by other entities or keys) are kept, and `unsigned` is left untouched.
pub fn sign_json(
    value: &mut Value,
    entity: &str,
    key_id: &str,
    key: &SigningKey,
) -> Result<(), SigningError> {
    let signature = sign_bytes(&signing_bytes(value)?, key);
    let object = value.as_object_mut().ok_or(SigningError::NotAnObject)?;
    let signatures = object
        .entry("signatures")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .ok_or(SigningError::MalformedSignatures)?;
    let by_entity = signatures
        .entry(entity)
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .ok_or(SigningError::MalformedSignatures)?;
    by_entity.insert(key_id.to_owned(), Value::String(signature));
    Ok(())
}

/// Returns the signature `signatures[entity][key_id]` of `value`, if there is one.
pub fn signature_of<'a>(
    value: &'a Value,
    entity: &str,
    key_id: &str,
) -> Result<&'a str, SigningError> {
    let missing = || SigningError::MissingSignature {
        entity: entity.to_owned(),
        key_id: key_id.to_owned(),
    };
    let object = value.as_object().ok_or(SigningError::NotAnObject)?;
    let signatures = object.get("signatures").ok_or_else(missing)?;
    let signatures = signatures
        .as_object()
        .ok_or(SigningError::MalformedSignatures)?;
    let by_entity = signatures.get(entity).ok_or_else(missing)?;
    let by_entity = by_entity
        .as_object()
        .ok_or(SigningError::MalformedSignatures)?;
    let signature = by_entity.get(key_id).ok_or_else(missing)?;
    signature.as_str().ok_or(SigningError::MalformedSignatures)
}

/// Verifies the signature of `entity` with key `key_id` on a JSON object.
///
/// Fails if that signature is absent, malformed or wrong; other signatures are ignored.
pub fn verify_json(
    value: &Value,
    entity: &str,
    key_id: &str,
    key: &VerifyingKey,
) -> Result<(), SigningError> {
    let signature = signature_of(value, entity, key_id)?;
    verify_bytes(&signing_bytes(value)?, signature, key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SEED: &str = "YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1";

    fn appendix_key() -> SigningKey {
        let seed = decode_lenient(SEED).unwrap();
        let seed: [u8; 32] = seed.try_into().unwrap();
        SigningKey::from_bytes(&seed)
    }

    #[test]
    fn appendix_vector_empty_object() {
        let key = appendix_key();
        let mut value = json!({});
        sign_json(&mut value, "domain", "ed25519:1", &key).unwrap();
        assert_eq!(
            value,
            json!({"signatures": {"domain": {"ed25519:1":
                "K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ"}}})
        );
        verify_json(&value, "domain", "ed25519:1", &key.verifying_key()).unwrap();
    }

    #[test]
    fn appendix_vector_simple_object() {
        let key = appendix_key();
        let mut value = json!({"one": 1, "two": "Two"});
        sign_json(&mut value, "domain", "ed25519:1", &key).unwrap();
        assert_eq!(
            signature_of(&value, "domain", "ed25519:1").unwrap(),
            "KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw"
        );
        verify_json(&value, "domain", "ed25519:1", &key.verifying_key()).unwrap();
    }

    #[test]
    fn unsigned_is_kept_and_ignored() {
        let key = appendix_key();
        let mut value = json!({"one": 1, "two": "Two", "unsigned": {"age": 5}});
        sign_json(&mut value, "domain", "ed25519:1", &key).unwrap();
        assert_eq!(value["unsigned"], json!({"age": 5}));
        assert_eq!(
            signature_of(&value, "domain", "ed25519:1").unwrap(),
            "KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw"
        );
        value["unsigned"] = json!({"age": 99});
        verify_json(&value, "domain", "ed25519:1", &key.verifying_key()).unwrap();
    }

    #[test]
    fn existing_signatures_are_kept() {
        let key = appendix_key();
        let other = SigningKey::from_bytes(&[7u8; 32]);
        let mut value = json!({"a": 1});
        sign_json(&mut value, "other", "ed25519:x", &other).unwrap();
        sign_json(&mut value, "domain", "ed25519:1", &key).unwrap();
        verify_json(&value, "other", "ed25519:x", &other.verifying_key()).unwrap();
        verify_json(&value, "domain", "ed25519:1", &key.verifying_key()).unwrap();
    }

    #[test]
    fn tampering_and_wrong_keys_fail() {
        let key = appendix_key();
        let mut value = json!({"one": 1});
        sign_json(&mut value, "domain", "ed25519:1", &key).unwrap();
        let mut changed = value.clone();
        changed["one"] = json!(2);
        assert!(matches!(
            verify_json(&changed, "domain", "ed25519:1", &key.verifying_key()),
            Err(SigningError::BadSignature)
        ));
        let other = SigningKey::from_bytes(&[7u8; 32]).verifying_key();
        assert!(matches!(
            verify_json(&value, "domain", "ed25519:1", &other),
            Err(SigningError::BadSignature)
        ));
        assert!(matches!(
            verify_json(&value, "elsewhere", "ed25519:1", &key.verifying_key()),
            Err(SigningError::MissingSignature { .. })
        ));
        assert!(matches!(
            verify_json(&value, "domain", "ed25519:2", &key.verifying_key()),
            Err(SigningError::MissingSignature { .. })
        ));
        let mut bad = value.clone();
        bad["signatures"]["domain"]["ed25519:1"] = json!("AAAA");
        assert!(matches!(
            verify_json(&bad, "domain", "ed25519:1", &key.verifying_key()),
            Err(SigningError::MalformedSignature)
        ));
        bad["signatures"] = json!("nope");
        assert!(matches!(
            verify_json(&bad, "domain", "ed25519:1", &key.verifying_key()),
            Err(SigningError::MalformedSignatures)
        ));
        assert!(matches!(
            verify_json(&json!([1]), "domain", "ed25519:1", &key.verifying_key()),
            Err(SigningError::NotAnObject)
        ));
    }

    #[test]
    fn padded_signature_accepted() {
        let key = appendix_key();
        let mut value = json!({});
        sign_json(&mut value, "domain", "ed25519:1", &key).unwrap();
        let padded = format!("{}==", signature_of(&value, "domain", "ed25519:1").unwrap());
        value["signatures"]["domain"]["ed25519:1"] = json!(padded);
        verify_json(&value, "domain", "ed25519:1", &key.verifying_key()).unwrap();
    }

    #[test]
    fn floats_cannot_be_signed() {
        let key = appendix_key();
        let mut value = json!({"a": 1.5});
        assert!(matches!(
            sign_json(&mut value, "domain", "ed25519:1", &key),
            Err(SigningError::Canonical(_))
        ));
    }
}
