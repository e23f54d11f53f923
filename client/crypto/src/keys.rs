//! X25519 key types: a public key with its `Encode(PK)` form, a zeroizing secret with a
//! redacted `Debug`, and the one Diffie-Hellman function of the crate, which rejects
//! non-contributory (low-order) results.

use std::fmt;

use rand_core::{CryptoRng, RngCore};
use subtle::ConstantTimeEq;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::consts::{ENCODED_KEY_LEN, KEY_LEN, KEY_TYPE_X25519};
use crate::encoding::{base64_decode, base64_encode, decode_key, encode_key, key_bytes};
use crate::errors::KeyError;

/// An X25519 public key (a Montgomery u-coordinate).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Curve25519PublicKey([u8; KEY_LEN]);

impl Curve25519PublicKey {
    /// Wraps raw key bytes. Low-order points are caught at DH time by [`diffie_hellman`].
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The raw 32 bytes.
    pub fn to_bytes(&self) -> [u8; KEY_LEN] {
        self.0
    }

    /// The raw 32 bytes, borrowed.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// `Encode(PK)` = 0x05 || key.
    pub fn encode(&self) -> [u8; ENCODED_KEY_LEN] {
        encode_key(KEY_TYPE_X25519, &self.0)
    }

    /// Parses `Encode(PK)`.
    pub fn decode(bytes: &[u8]) -> Result<Self, KeyError> {
        decode_key(KEY_TYPE_X25519, bytes).map(Self)
    }

    /// Unpadded base64 of the raw key (the Matrix `curve25519:` / `key` form).
    pub fn to_base64(&self) -> String {
        base64_encode(&self.0)
    }

    /// Parses the Matrix base64 form.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        let bytes = base64_decode(text)?;
        key_bytes(&bytes).map(Self)
    }

    pub(crate) fn to_dalek(self) -> PublicKey {
        PublicKey::from(self.0)
    }
}

impl fmt::Debug for Curve25519PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Curve25519PublicKey({})", self.to_base64())
    }
}

/// An X25519 secret key. Zeroized on drop; `Debug` prints only the public half.
#[derive(Clone)]
pub struct Curve25519Secret(StaticSecret);

impl Curve25519Secret {
    /// A fresh random secret.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        rng.fill_bytes(bytes.as_mut());
        Self::from_bytes(*bytes)
    }

    /// Restores a secret from its 32 bytes (clamped when used).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(StaticSecret::from(bytes))
    }

    /// The secret bytes. Handle with care: the copy must be zeroized by the caller.
    pub fn to_bytes(&self) -> Zeroizing<[u8; KEY_LEN]> {
        Zeroizing::new(self.0.to_bytes())
    }

    /// The matching public key.
    pub fn public_key(&self) -> Curve25519PublicKey {
        Curve25519PublicKey(PublicKey::from(&self.0).to_bytes())
    }

    /// Constant-time equality of two secrets.
    pub fn ct_eq(&self, other: &Self) -> bool {
        bool::from(self.0.as_bytes().ct_eq(other.0.as_bytes()))
    }
}

impl fmt::Debug for Curve25519Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Curve25519Secret")
            .field("public", &self.public_key())
            .finish_non_exhaustive()
    }
}

/// X25519(secret, public), refusing all-zero (non-contributory) outputs.
pub fn diffie_hellman(
    secret: &Curve25519Secret,
    public: &Curve25519PublicKey,
) -> Result<Zeroizing<[u8; KEY_LEN]>, KeyError> {
    let shared = secret.0.diffie_hellman(&public.to_dalek());
    if !shared.was_contributory() {
        return Err(KeyError::NonContributory);
    }
    Ok(Zeroizing::new(shared.to_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex32(s: &str) -> [u8; 32] {
        let v = hex::decode(s).unwrap_or_default();
        key_bytes(&v).unwrap_or([0; 32])
    }

    /// RFC 7748 section 6.1 through the crate's own DH path.
    #[test]
    fn rfc7748_section_6_1() {
        let a = Curve25519Secret::from_bytes(hex32(
            "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
        ));
        let b = Curve25519Secret::from_bytes(hex32(
            "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
        ));
        assert_eq!(
            a.public_key().to_bytes(),
            hex32("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
        );
        assert_eq!(
            b.public_key().to_bytes(),
            hex32("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
        );
        let shared = hex32("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742");
        assert_eq!(
            diffie_hellman(&a, &b.public_key()).ok().map(|s| *s),
            Some(shared)
        );
        assert_eq!(
            diffie_hellman(&b, &a.public_key()).ok().map(|s| *s),
            Some(shared)
        );
    }

    /// RFC 7748 section 5.2 scalar multiplication vectors.
    #[test]
    fn rfc7748_section_5_2() {
        let cases = [
            (
                "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
                "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
                "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
            ),
            (
                "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
                "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
                "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957",
            ),
        ];
        for (k, u, out) in cases {
            let secret = Curve25519Secret::from_bytes(hex32(k));
            let public = Curve25519PublicKey::from_bytes(hex32(u));
            assert_eq!(
                diffie_hellman(&secret, &public).ok().map(|s| *s),
                Some(hex32(out))
            );
        }
    }

    /// RFC 7748 section 5.2 iterated vectors (1 and 1,000 iterations) through x25519().
    #[test]
    fn rfc7748_iterations() {
        let mut k = hex32("0900000000000000000000000000000000000000000000000000000000000000");
        let mut u = k;
        for i in 1..=1000 {
            let next = x25519_dalek::x25519(k, u);
            u = k;
            k = next;
            if i == 1 {
                assert_eq!(
                    k,
                    hex32("422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079")
                );
            }
        }
        assert_eq!(
            k,
            hex32("684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51")
        );
    }

    /// P9: every low-order u value yields an error, never an all-zero key.
    #[test]
    fn p09_low_order_points_are_rejected() {
        let secret = Curve25519Secret::from_bytes([0x42; 32]);
        for u in low_order_points() {
            assert_eq!(
                diffie_hellman(&secret, &Curve25519PublicKey::from_bytes(u)).err(),
                Some(KeyError::NonContributory),
                "u = {}",
                hex::encode(u)
            );
        }
    }

    /// Low-order u-coordinates (RFC 7748 / Wycheproof): 0, 1, the order-8 points, p-1, p, p+1,
    /// and the same values with the ignored top bit set (all rejected by pyca/cryptography too).
    pub(crate) fn low_order_points() -> Vec<[u8; 32]> {
        [
            "0000000000000000000000000000000000000000000000000000000000000000",
            "0100000000000000000000000000000000000000000000000000000000000000",
            "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
            "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
            "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b880",
            "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f11d7",
            "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
            "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
            "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        ]
        .iter()
        .map(|h| hex32(h))
        .collect()
    }

    fn assert_zeroize<T: zeroize::Zeroize>() {}
    fn assert_zeroize_on_drop<T: zeroize::ZeroizeOnDrop>() {}

    /// P21: the dalek crates are built with their `zeroize` features (CVE-2024-34063 was these
    /// features silently off); the impls below exist only when they are enabled.
    #[test]
    fn p21_dalek_zeroize_features_are_enabled() {
        assert_zeroize::<StaticSecret>();
        assert_zeroize_on_drop::<ed25519_dalek::SigningKey>();
    }

    #[test]
    fn debug_of_secret_is_redacted() {
        let secret = Curve25519Secret::from_bytes([0x11; 32]);
        let debug = format!("{secret:?}");
        assert!(!debug.contains(&hex::encode([0x11u8; 32])));
        assert!(!debug.contains(&base64_encode(&[0x11u8; 32])));
        assert!(debug.starts_with("Curve25519Secret { public: Curve25519PublicKey("));
    }
}
