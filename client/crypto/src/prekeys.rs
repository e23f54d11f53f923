//! Prekeys and their Matrix JSON forms: key ids, signed key objects
//! (`{"key", ["fallback": true,] "signatures"}`), and verified `device_keys`.
//!
//! All canonical JSON and JSON signatures come from `hush_federation::signing`; this crate has
//! no JSON canonicalization of its own.

use std::fmt;

use hush_federation::signing::{sign_json, verify_json};
use serde_json::{json, Map, Value};

use crate::consts::{ALGORITHM, SIGNED_CURVE25519};
use crate::encoding::{base64_decode, base64_encode};
use crate::errors::{AccountError, DeviceKeysError, KeyError};
use crate::identity::{IdentityKey, IdentityKeyPair};
use crate::keys::{Curve25519PublicKey, Curve25519Secret};

/// A prekey id: a u32, written in JSON as unpadded base64 of its 4 big-endian bytes
/// (`AAAAAQ` for 1), prefixed with the algorithm: `signed_curve25519:AAAAAQ`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub u32);

impl KeyId {
    /// The 6-character base64 form.
    pub fn to_base64(self) -> String {
        base64_encode(&self.0.to_be_bytes())
    }

    /// The Matrix map key `signed_curve25519:<id>`.
    pub fn to_matrix_key_id(self) -> String {
        format!("{SIGNED_CURVE25519}:{}", self.to_base64())
    }

    /// Parses `signed_curve25519:<id>`; only our own 4-byte ids are accepted.
    pub fn from_matrix_key_id(text: &str) -> Result<Self, KeyError> {
        let id = text
            .strip_prefix(SIGNED_CURVE25519)
            .and_then(|t| t.strip_prefix(':'))
            .ok_or(KeyError::InvalidBase64)?;
        Self::from_base64(id)
    }

    /// Parses the 6-character base64 form.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        let bytes = base64_decode(text)?;
        let arr = <[u8; 4]>::try_from(bytes.as_slice()).map_err(|_| KeyError::InvalidLength {
            expected: 4,
            actual: bytes.len(),
        })?;
        // Reject alternative spellings of the same id so that ids compare as strings too.
        if base64_encode(&arr) != text {
            return Err(KeyError::InvalidBase64);
        }
        Ok(Self(u32::from_be_bytes(arr)))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

/// The `ed25519:DEVICE` key id used in signatures and `device_keys.keys`.
pub fn ed25519_key_id(device_id: &str) -> String {
    format!("ed25519:{device_id}")
}

/// The `curve25519:DEVICE` key id of `device_keys.keys`.
pub fn curve25519_key_id(device_id: &str) -> String {
    format!("curve25519:{device_id}")
}

/// Builds and signs a prekey object: `{"key": b64, ["fallback": true,] "signatures": ...}`.
pub fn signed_key_object(
    identity: &IdentityKeyPair,
    user_id: &str,
    device_id: &str,
    key: &Curve25519PublicKey,
    fallback: bool,
) -> Result<Value, AccountError> {
    let mut object = Map::new();
    object.insert("key".to_owned(), Value::String(key.to_base64()));
    if fallback {
        object.insert("fallback".to_owned(), Value::Bool(true));
    }
    let mut value = Value::Object(object);
    sign_json(
        &mut value,
        user_id,
        &ed25519_key_id(device_id),
        identity.as_signing_key(),
    )
    .map_err(|e| AccountError::Signing(e.to_string()))?;
    Ok(value)
}

/// Verifies a prekey object against the device identity and returns its key. `fallback`
/// says which role is expected: an SPK object must carry `"fallback": true` and an OPK object
/// must not, so a signature made for one role never passes as the other (P12).
pub fn verify_key_object(
    object: &Value,
    identity: &IdentityKey,
    user_id: &str,
    device_id: &str,
    fallback: bool,
) -> Result<Curve25519PublicKey, KeyError> {
    let map = object.as_object().ok_or(KeyError::BadSignature)?;
    let is_fallback = map
        .get("fallback")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if is_fallback != fallback {
        return Err(KeyError::BadSignature);
    }
    verify_json(
        object,
        user_id,
        &ed25519_key_id(device_id),
        identity.as_verifying_key(),
    )
    .map_err(|_| KeyError::BadSignature)?;
    let key = map
        .get("key")
        .and_then(Value::as_str)
        .ok_or(KeyError::InvalidBase64)?;
    Curve25519PublicKey::from_base64(key)
}

/// A signed prekey (SPK) with its private half. Zeroized on drop; `Debug` is redacted.
#[derive(Clone)]
pub struct SignedPreKey {
    pub(crate) id: KeyId,
    pub(crate) secret: Curve25519Secret,
    pub(crate) created_at: u64,
    pub(crate) retired_at: Option<u64>,
}

impl SignedPreKey {
    /// Its id.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// Its public key.
    pub fn public_key(&self) -> Curve25519PublicKey {
        self.secret.public_key()
    }

    /// When it was created (caller's clock, seconds).
    pub fn created_at(&self) -> u64 {
        self.created_at
    }

    /// When a newer SPK replaced it, if one did.
    pub fn retired_at(&self) -> Option<u64> {
        self.retired_at
    }
}

impl fmt::Debug for SignedPreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedPreKey")
            .field("id", &self.id)
            .field("public", &self.public_key())
            .field("created_at", &self.created_at)
            .field("retired_at", &self.retired_at)
            .finish_non_exhaustive()
    }
}

/// A one-time prekey (OPK) with its private half. Zeroized on drop; `Debug` is redacted.
#[derive(Clone)]
pub struct OneTimePreKey {
    pub(crate) secret: Curve25519Secret,
    pub(crate) published: bool,
}

impl fmt::Debug for OneTimePreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OneTimePreKey")
            .field("public", &self.secret.public_key())
            .field("published", &self.published)
            .finish_non_exhaustive()
    }
}

/// A peer device's `device_keys`, verified: self-signed with its Ed25519 key, the
/// `curve25519` key equal to the Montgomery form of the `ed25519` key, and the Hush algorithm
/// advertised. Only devices that pass are ever encrypted to (P24).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceKeys {
    user_id: String,
    device_id: String,
    identity_key: IdentityKey,
}

impl DeviceKeys {
    /// Builds and signs our own `device_keys` object.
    pub fn sign(
        identity: &IdentityKeyPair,
        user_id: &str,
        device_id: &str,
    ) -> Result<Value, AccountError> {
        let ik = identity.public_key();
        let mut keys = Map::new();
        keys.insert(ed25519_key_id(device_id), Value::String(ik.to_base64()));
        keys.insert(
            curve25519_key_id(device_id),
            Value::String(ik.to_curve25519().to_base64()),
        );
        let mut value = json!({
            "user_id": user_id,
            "device_id": device_id,
            "algorithms": [ALGORITHM],
            "keys": keys,
        });
        sign_json(
            &mut value,
            user_id,
            &ed25519_key_id(device_id),
            identity.as_signing_key(),
        )
        .map_err(|e| AccountError::Signing(e.to_string()))?;
        Ok(value)
    }

    /// Verifies a `device_keys` object from `keys/query` for the expected user and device.
    pub fn from_json(
        value: &Value,
        expected_user: &str,
        expected_device: &str,
    ) -> Result<Self, DeviceKeysError> {
        let map = value
            .as_object()
            .ok_or(DeviceKeysError::Malformed("device_keys"))?;
        let field = |name: &'static str| {
            map.get(name)
                .and_then(Value::as_str)
                .ok_or(DeviceKeysError::Malformed(name))
        };
        let user_id = field("user_id")?;
        let device_id = field("device_id")?;
        if user_id != expected_user || device_id != expected_device {
            return Err(DeviceKeysError::AddressMismatch);
        }
        if !crate::x3dh::valid_id(user_id) || !crate::x3dh::valid_id(device_id) {
            return Err(DeviceKeysError::Malformed("identifier length"));
        }
        let algorithms = map
            .get("algorithms")
            .and_then(Value::as_array)
            .ok_or(DeviceKeysError::Malformed("algorithms"))?;
        if !algorithms.iter().any(|a| a.as_str() == Some(ALGORITHM)) {
            return Err(DeviceKeysError::UnsupportedAlgorithm);
        }
        let keys = map
            .get("keys")
            .and_then(Value::as_object)
            .ok_or(DeviceKeysError::Malformed("keys"))?;
        let ed = keys
            .get(&ed25519_key_id(device_id))
            .and_then(Value::as_str)
            .ok_or(DeviceKeysError::Malformed("keys.ed25519"))?;
        let curve = keys
            .get(&curve25519_key_id(device_id))
            .and_then(Value::as_str)
            .ok_or(DeviceKeysError::Malformed("keys.curve25519"))?;
        let identity_key = IdentityKey::from_base64(ed)?;
        if Curve25519PublicKey::from_base64(curve)? != identity_key.to_curve25519() {
            return Err(DeviceKeysError::CurveKeyMismatch);
        }
        verify_json(
            value,
            user_id,
            &ed25519_key_id(device_id),
            identity_key.as_verifying_key(),
        )
        .map_err(|_| DeviceKeysError::BadSignature)?;
        Ok(Self {
            user_id: user_id.to_owned(),
            device_id: device_id.to_owned(),
            identity_key,
        })
    }

    /// The user ID.
    pub fn user_id(&self) -> &str {
        &self.user_id
    }

    /// The device ID.
    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    /// The device's Ed25519 identity key.
    pub fn identity_key(&self) -> &IdentityKey {
        &self.identity_key
    }

    /// The device's X25519 key (`curve25519:DEVICE`, the envelope recipient key).
    pub fn curve25519_key(&self) -> Curve25519PublicKey {
        self.identity_key.to_curve25519()
    }
}
