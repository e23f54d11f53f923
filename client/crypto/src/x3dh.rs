//! X3DH (Signal's specification, DESIGN.md section 5): the verified prekey bundle, the key
//! agreement for both roles, and the identity-binding associated data.
//!
//! A [`PreKeyBundle`] can only be built by verifying every signature, so the initiator cannot
//! reach a Diffie-Hellman computation with an unverified key. Every DH output is checked for
//! contributory behaviour.

use serde_json::Value;
use zeroize::Zeroizing;

use crate::consts::{BUNDLE_CLAIM_ALGORITHM, INFO_X3DH, KEY_LEN, MAX_ID_LEN, X3DH_F};
use crate::encoding::Writer;
use crate::errors::{KeyError, X3dhError};
use crate::identity::IdentityKey;
use crate::kdf::hkdf_sha256_zero_salt;
use crate::keys::Curve25519PublicKey;
use crate::prekeys::{verify_key_object, DeviceKeys, KeyId};

/// The X3DH KDF: HKDF-SHA256(salt = 32 zero bytes, IKM = F || DH1 || ... || DHn, info),
/// filling `out`. Hush uses `info` = [`INFO_X3DH`] and a 32-byte output; the parameters exist
/// so that libsignal's known answers can be reproduced through the same code.
pub fn kdf(info: &[u8], dh_outputs: &[&[u8; KEY_LEN]], out: &mut [u8]) -> Option<()> {
    let mut ikm = Zeroizing::new(Vec::with_capacity(KEY_LEN * (1 + dh_outputs.len())));
    ikm.extend_from_slice(&X3DH_F);
    for dh in dh_outputs {
        ikm.extend_from_slice(dh.as_slice());
    }
    hkdf_sha256_zero_salt(&ikm, info, out)
}

/// SK = the 32-byte X3DH output with Hush's info string.
pub(crate) fn shared_secret(dh_outputs: &[&[u8; KEY_LEN]]) -> Zeroizing<[u8; KEY_LEN]> {
    let mut sk = Zeroizing::new([0u8; KEY_LEN]);
    // 32 bytes is always within HKDF's output limit.
    let _ = kdf(INFO_X3DH, dh_outputs, sk.as_mut());
    sk
}

/// One end of a session: a user, one of its devices and that device's identity key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Party<'a> {
    /// The user ID, e.g. `@alice:alpha.example`.
    pub user_id: &'a str,
    /// The device ID.
    pub device_id: &'a str,
    /// The device's identity key.
    pub identity_key: &'a IdentityKey,
}

/// AD = Encode(IK_A) || Encode(IK_B) || u16-prefixed user_A, device_A, user_B, device_B.
pub fn associated_data(initiator: &Party<'_>, responder: &Party<'_>) -> Vec<u8> {
    let mut w = Writer::new();
    w.raw(&initiator.identity_key.encode());
    w.raw(&responder.identity_key.encode());
    for id in [
        initiator.user_id,
        initiator.device_id,
        responder.user_id,
        responder.device_id,
    ] {
        w.bytes16(id.as_bytes());
    }
    w.into_bytes().to_vec()
}

/// Checks that an identifier fits the wire formats (1..=255 bytes).
pub(crate) fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ID_LEN
}

/// A prekey of a bundle whose signature was verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifiedPreKey {
    /// The key id.
    pub id: KeyId,
    /// The public key.
    pub key: Curve25519PublicKey,
}

/// A peer device's X3DH bundle with every signature verified against its pinned identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreKeyBundle {
    device: DeviceKeys,
    signed_prekey: VerifiedPreKey,
    one_time_key: Option<VerifiedPreKey>,
}

impl PreKeyBundle {
    /// Parses and verifies one entry of a `keys/claim` answer for the `hush.x3dh_bundle`
    /// algorithm: `claim_key` is `hush.x3dh_bundle:<SPK id>` and `value` is
    /// `{"signed_prekey": {"signed_curve25519:<id>": SPK}, ["one_time_key": {"signed_curve25519:<id>": OPK}]}`.
    /// `device` is the (pinned) verified device the claim was for.
    pub fn from_claim(
        device: &DeviceKeys,
        claim_key: &str,
        value: &Value,
    ) -> Result<Self, X3dhError> {
        let spk_id = claim_key
            .strip_prefix(BUNDLE_CLAIM_ALGORITHM)
            .and_then(|t| t.strip_prefix(':'))
            .ok_or(X3dhError::MalformedBundle("claim key"))?;
        let map = value
            .as_object()
            .ok_or(X3dhError::MalformedBundle("bundle"))?;
        let spk = single_entry(map.get("signed_prekey"), "signed_prekey")?
            .ok_or(X3dhError::MalformedBundle("signed_prekey"))?;
        let otk = single_entry(map.get("one_time_key"), "one_time_key")?;
        let signed_prekey = verify_entry(device, spk, true)?;
        if signed_prekey.id.to_base64() != spk_id {
            return Err(X3dhError::MalformedBundle(
                "claim key names another signed prekey",
            ));
        }
        let one_time_key = otk.map(|e| verify_entry(device, e, false)).transpose()?;
        Ok(Self {
            device: device.clone(),
            signed_prekey,
            one_time_key,
        })
    }

    /// The device the bundle belongs to.
    pub fn device(&self) -> &DeviceKeys {
        &self.device
    }

    /// The verified signed prekey.
    pub fn signed_prekey(&self) -> &VerifiedPreKey {
        &self.signed_prekey
    }

    /// The verified one-time prekey, if the server had one left.
    pub fn one_time_key(&self) -> Option<&VerifiedPreKey> {
        self.one_time_key.as_ref()
    }
}

fn single_entry<'a>(
    value: Option<&'a Value>,
    field: &'static str,
) -> Result<Option<(&'a String, &'a Value)>, X3dhError> {
    let Some(value) = value else {
        return Ok(None);
    };
    let map = value.as_object().ok_or(X3dhError::MalformedBundle(field))?;
    if map.len() != 1 {
        return Err(X3dhError::MalformedBundle(field));
    }
    Ok(map.iter().next())
}

fn verify_entry(
    device: &DeviceKeys,
    (key_id, object): (&String, &Value),
    fallback: bool,
) -> Result<VerifiedPreKey, X3dhError> {
    let id = KeyId::from_matrix_key_id(key_id).map_err(|_| X3dhError::MalformedBundle("key id"))?;
    let key = verify_key_object(
        object,
        device.identity_key(),
        device.user_id(),
        device.device_id(),
        fallback,
    )
    .map_err(|e| match e {
        KeyError::BadSignature => X3dhError::BadPreKeySignature,
        other => X3dhError::Key(other),
    })?;
    Ok(VerifiedPreKey { id, key })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{diffie_hellman, Curve25519Secret};

    fn h32(s: &str) -> [u8; 32] {
        crate::encoding::key_bytes(&hex::decode(s).unwrap_or_default()).unwrap_or([0; 32])
    }

    /// libsignal KAT (reference 8.2 item 1): 3-DH with info "WhisperText" and a 64-byte output,
    /// computed through the crate's DH and X3DH KDF from both sides.
    #[test]
    fn libsignal_x3dh_kat() {
        let alice_identity = Curve25519Secret::from_bytes(h32(
            "9040f0d4e09cf38f6dc7c13779c908c015a1da4fa78737a080eb0a6f4f5f8f58",
        ));
        let alice_base = Curve25519Secret::from_bytes(h32(
            "10ae7c64d1e61cd596b76a0db5012673391cae66edbfcf073b4da80516a47449",
        ));
        let bob_identity = Curve25519Secret::from_bytes(h32(
            "4875cc69ddf8ea0719ec947d61081135868d5fd801f02c0225e516df2156605e",
        ));
        let bob_spk = Curve25519Secret::from_bytes(h32(
            "583900131fb727998b7803fe6ac22cc591f342e4e42a8c8d5d78194209b8d253",
        ));
        assert_eq!(
            hex::encode(bob_identity.public_key().encode()),
            "05f1f43874f6966956c2dd473f8fa15adeb71d1cb991b2341692324cefb1c5e626"
        );
        assert_eq!(
            hex::encode(bob_spk.public_key().encode()),
            "05ac248a8f263be6863576eb0362e28c828f0107a3379d34bab1586bf8c770cd67"
        );
        assert_eq!(
            hex::encode(alice_identity.public_key().encode()),
            "05b4a8455660ada65b401007f615e654041746432e3339c6875149bceefcb42b4a"
        );
        assert_eq!(
            hex::encode(alice_base.public_key().encode()),
            "05e2c05860f2ac6b2b57ba564b421ffe71e4b128c591e46e0491cc9b33dbf22a27"
        );
        let dh = |s: &Curve25519Secret, p: &Curve25519Secret| {
            diffie_hellman(s, &p.public_key())
                .map(|k| *k)
                .unwrap_or([0; 32])
        };
        let alice = [
            dh(&alice_identity, &bob_spk),
            dh(&alice_base, &bob_identity),
            dh(&alice_base, &bob_spk),
        ];
        let bob = [
            dh(&bob_spk, &alice_identity),
            dh(&bob_identity, &alice_base),
            dh(&bob_spk, &alice_base),
        ];
        assert_eq!(alice, bob);
        let mut out = [0u8; 64];
        assert!(kdf(b"WhisperText", &[&alice[0], &alice[1], &alice[2]], &mut out).is_some());
        assert_eq!(
            hex::encode(&out[..32]),
            "cdbd35392e300db7b28f9e8501eb21b224cd8ca0a009c8339fbe89614035bcb2"
        );
        assert_eq!(
            hex::encode(&out[32..]),
            "ab9be50e5cb22a925446ab90ee5670545f4fd32902459ec274b6ad0ae5d6031a"
        );
    }

    /// P12: every HKDF info string of the protocol is distinct, at least 8 bytes, and not a
    /// prefix of another.
    #[test]
    fn p12_info_strings_are_unique() {
        let all = crate::consts::ALL_INFO_STRINGS;
        for (i, a) in all.iter().enumerate() {
            assert!(a.len() >= 8);
            for (j, b) in all.iter().enumerate() {
                if i != j {
                    assert!(!a.starts_with(b), "{:?} / {:?}", a, b);
                }
            }
        }
    }

    #[test]
    fn associated_data_is_unambiguous() {
        let ik = crate::identity::IdentityKeyPair::from_seed(&[1; 32]).public_key();
        let a = |u, d| Party {
            user_id: u,
            device_id: d,
            identity_key: &ik,
        };
        let x = associated_data(&a("@a:b", "CD"), &a("@e:f", "G"));
        let y = associated_data(&a("@a:b", "C"), &a("D@e:f", "G"));
        assert_ne!(x, y);
        assert_eq!(x.len(), 33 + 33 + 2 + 4 + 2 + 2 + 2 + 4 + 2 + 1);
    }
}
