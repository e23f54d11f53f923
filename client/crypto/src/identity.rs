//! Device identity: one Ed25519 key per device. It signs (strict verification only) and its
//! X25519 form, obtained with the birational map, is the X3DH identity key.

use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand_core::{CryptoRng, RngCore};
use zeroize::Zeroizing;

use crate::consts::{ENCODED_KEY_LEN, KEY_LEN, KEY_TYPE_ED25519, SIGNATURE_LEN};
use crate::encoding::{base64_decode, base64_encode, decode_key, encode_key, key_bytes};
use crate::errors::KeyError;
use crate::keys::{Curve25519PublicKey, Curve25519Secret};

/// A validated Ed25519 identity public key: canonical encoding, not of small order.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct IdentityKey(VerifyingKey);

impl IdentityKey {
    /// Parses 32 raw bytes, rejecting non-canonical encodings (P10) and weak keys.
    pub fn from_bytes(bytes: &[u8; KEY_LEN]) -> Result<Self, KeyError> {
        let key = VerifyingKey::from_bytes(bytes).map_err(|_| KeyError::NonCanonical)?;
        // ed25519-dalek accepts some non-canonical y encodings; a re-encoding must match.
        if key.to_edwards().compress().to_bytes() != *bytes {
            return Err(KeyError::NonCanonical);
        }
        if key.is_weak() {
            return Err(KeyError::WeakKey);
        }
        Ok(Self(key))
    }

    /// The raw 32 bytes.
    pub fn to_bytes(&self) -> [u8; KEY_LEN] {
        self.0.to_bytes()
    }

    /// `Encode(IK)` = 0x06 || Ed25519 key.
    pub fn encode(&self) -> [u8; ENCODED_KEY_LEN] {
        encode_key(KEY_TYPE_ED25519, &self.to_bytes())
    }

    /// Parses `Encode(IK)`.
    pub fn decode(bytes: &[u8]) -> Result<Self, KeyError> {
        Self::from_bytes(&decode_key(KEY_TYPE_ED25519, bytes)?)
    }

    /// Unpadded base64 (the `ed25519:DEVICE` form).
    pub fn to_base64(&self) -> String {
        base64_encode(self.0.as_bytes())
    }

    /// Parses the base64 form with full validation.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        let bytes = base64_decode(text)?;
        Self::from_bytes(&key_bytes(&bytes)?)
    }

    /// The X25519 form (birational map to the Montgomery u-coordinate).
    pub fn to_curve25519(&self) -> Curve25519PublicKey {
        Curve25519PublicKey::from_bytes(self.0.to_montgomery().to_bytes())
    }

    /// Strict Ed25519 verification (rejects malleable and small-order signatures).
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), KeyError> {
        let sig = <[u8; SIGNATURE_LEN]>::try_from(signature).map_err(|_| KeyError::BadSignature)?;
        self.0
            .verify_strict(message, &Signature::from_bytes(&sig))
            .map_err(|_| KeyError::BadSignature)
    }

    /// The dalek key, for the JSON signature checks of hush-federation.
    pub fn as_verifying_key(&self) -> &VerifyingKey {
        &self.0
    }
}

impl fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdentityKey({})", self.to_base64())
    }
}

/// A device's identity key pair. The 32-byte seed is zeroized on drop; `Debug` is redacted.
pub struct IdentityKeyPair {
    signing: SigningKey,
}

impl IdentityKeyPair {
    /// A fresh identity.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let mut seed = Zeroizing::new([0u8; KEY_LEN]);
        rng.fill_bytes(seed.as_mut());
        Self::from_seed(&seed)
    }

    /// Restores an identity from its 32-byte seed (RFC 8032 secret key).
    pub fn from_seed(seed: &[u8; KEY_LEN]) -> Self {
        Self {
            signing: SigningKey::from_bytes(seed),
        }
    }

    /// The seed. Handle with care.
    pub fn seed(&self) -> Zeroizing<[u8; KEY_LEN]> {
        Zeroizing::new(self.signing.to_bytes())
    }

    /// The public identity key.
    pub fn public_key(&self) -> IdentityKey {
        IdentityKey(self.signing.verifying_key())
    }

    /// Signs a message with Ed25519.
    pub fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.signing.sign(message).to_bytes()
    }

    /// The X25519 secret for X3DH: the unclamped scalar bytes SHA-512(seed)[0..32].
    pub fn to_curve25519_secret(&self) -> Curve25519Secret {
        let scalar = Zeroizing::new(self.signing.to_scalar_bytes());
        Curve25519Secret::from_bytes(*scalar)
    }

    /// The dalek signing key, for the JSON signing of hush-federation.
    pub fn as_signing_key(&self) -> &SigningKey {
        &self.signing
    }
}

impl fmt::Debug for IdentityKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityKeyPair")
            .field("public", &self.public_key())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::diffie_hellman;

    fn hex_bytes(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap_or_default()
    }

    fn hex32(s: &str) -> [u8; 32] {
        key_bytes(&hex_bytes(s)).unwrap_or([0; 32])
    }

    /// RFC 8032 section 7.1, TESTs 1-3, through `IdentityKeyPair::sign` and `IdentityKey::verify`.
    #[test]
    fn rfc8032_tests_1_to_3() {
        let cases = [
            (
                "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
                "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
                "",
                "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
            ),
            (
                "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
                "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
                "72",
                "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
            ),
            (
                "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
                "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
                "af82",
                "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
            ),
        ];
        for (sk, pk, msg, sig) in cases {
            let pair = IdentityKeyPair::from_seed(&hex32(sk));
            assert_eq!(pair.public_key().to_bytes(), hex32(pk));
            let msg = hex_bytes(msg);
            assert_eq!(pair.sign(&msg).to_vec(), hex_bytes(sig));
            assert!(pair.public_key().verify(&msg, &hex_bytes(sig)).is_ok());
            let mut bad = hex_bytes(sig);
            bad[0] ^= 1;
            assert_eq!(
                pair.public_key().verify(&msg, &bad),
                Err(KeyError::BadSignature)
            );
        }
    }

    /// The X25519 form from the birational map agrees with DH on both sides.
    #[test]
    fn curve25519_form_is_consistent() {
        let a = IdentityKeyPair::from_seed(&[1u8; 32]);
        let b = IdentityKeyPair::from_seed(&[2u8; 32]);
        assert_eq!(
            a.to_curve25519_secret().public_key(),
            a.public_key().to_curve25519()
        );
        let ab = diffie_hellman(&a.to_curve25519_secret(), &b.public_key().to_curve25519());
        let ba = diffie_hellman(&b.to_curve25519_secret(), &a.public_key().to_curve25519());
        assert_eq!(ab.ok().map(|k| *k), ba.ok().map(|k| *k));
    }

    /// P10: weak keys and non-canonical re-encodings of a valid key are rejected.
    #[test]
    fn p10_weak_and_non_canonical_identity_keys_are_rejected() {
        // The identity point (y = 1) is of small order.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(IdentityKey::from_bytes(&identity), Err(KeyError::WeakKey));
        // y = p + 1 is a non-canonical encoding of the same point y = 1.
        let non_canonical =
            hex32("eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f");
        assert!(IdentityKey::from_bytes(&non_canonical).is_err());
        // A valid key with the sign bit set on x = 0 (the "negative zero" re-encoding).
        let mut neg_zero = identity;
        neg_zero[31] |= 0x80;
        assert!(IdentityKey::from_bytes(&neg_zero).is_err());
        // A normal key round-trips.
        let key = IdentityKeyPair::from_seed(&[9u8; 32]).public_key();
        assert_eq!(IdentityKey::from_bytes(&key.to_bytes()), Ok(key));
        assert_eq!(IdentityKey::decode(&key.encode()), Ok(key));
    }

    /// P3: strict verification rejects a malleable signature (s + L) that plain verify accepts
    /// in some libraries, and a signature by a small-order key.
    #[test]
    fn p03_strict_verification_rejects_malleable_signatures() {
        let pair = IdentityKeyPair::from_seed(&[3u8; 32]);
        let msg = b"prekey";
        let sig = pair.sign(msg);
        assert!(pair.public_key().verify(msg, &sig).is_ok());
        // s' = s + L (group order) is the classic malleability.
        let l: [u8; 32] = hex32("edd3f55c1a631258d69cf7a2def9de1400000000000000000000000000000010");
        let mut s = [0u8; 32];
        s.copy_from_slice(&sig[32..]);
        let mut carry = 0u16;
        for i in 0..32 {
            let v = u16::from(s[i]) + u16::from(l[i]) + carry;
            s[i] = (v & 0xff) as u8;
            carry = v >> 8;
        }
        let mut malleable = sig;
        malleable[32..].copy_from_slice(&s);
        assert_eq!(
            pair.public_key().verify(msg, &malleable),
            Err(KeyError::BadSignature)
        );
        assert_eq!(
            pair.public_key().verify(msg, &sig[..63]),
            Err(KeyError::BadSignature)
        );
    }

    #[test]
    fn p21_debug_of_identity_is_redacted() {
        let pair = IdentityKeyPair::from_seed(&[0x5a; 32]);
        let debug = format!("{pair:?}");
        assert!(!debug.contains(&hex::encode([0x5au8; 32])));
        assert!(!debug.contains(&base64_encode(&[0x5au8; 32])));
        assert!(!debug.contains(&hex::encode(*pair.to_curve25519_secret().to_bytes())));
        assert_eq!(
            debug,
            format!(
                "IdentityKeyPair {{ public: IdentityKey({}), .. }}",
                pair.public_key().to_base64()
            )
        );
    }
}
