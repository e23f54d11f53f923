//! The two key-derivation primitives of the protocol, HKDF-SHA256 and HMAC-SHA256, wrapped
//! once so that every derivation (and every known-answer test) takes the same code path.

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

/// HKDF-SHA256 (RFC 5869). `salt` of `None` means the zero string of hash length.
/// Returns `None` only if `out` is longer than 255 * 32 bytes, which no caller asks for.
pub fn hkdf_sha256(salt: Option<&[u8]>, ikm: &[u8], info: &[u8], out: &mut [u8]) -> Option<()> {
    Hkdf::<Sha256>::new(salt, ikm).expand(info, out).ok()
}

/// HKDF-SHA256 into a zeroizing fixed-size array.
pub fn hkdf_array<const N: usize>(
    salt: Option<&[u8]>,
    ikm: &[u8],
    info: &[u8],
) -> Zeroizing<[u8; N]> {
    let mut out = Zeroizing::new([0u8; N]);
    // N is a compile-time constant of at most 64 in this crate, far below the HKDF limit.
    let _ = hkdf_sha256(salt, ikm, info, out.as_mut());
    out
}

/// HMAC-SHA256(key, data).
pub fn hmac_sha256(key: &[u8], data: &[u8]) -> Zeroizing<[u8; 32]> {
    // HMAC accepts keys of any length; new_from_slice cannot fail for it.
    let mut out = Zeroizing::new([0u8; 32]);
    if let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) {
        mac.update(data);
        out.copy_from_slice(&mac.finalize().into_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap_or_default()
    }

    fn hkdf_vec(salt: Option<&[u8]>, ikm: &[u8], info: &[u8], len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        assert!(hkdf_sha256(salt, ikm, info, &mut out).is_some());
        out
    }

    #[test]
    fn rfc5869_a1() {
        let okm = hkdf_vec(
            Some(&h("000102030405060708090a0b0c")),
            &[0x0b; 22],
            &h("f0f1f2f3f4f5f6f7f8f9"),
            42,
        );
        assert_eq!(
            hex::encode(okm),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
        );
    }

    #[test]
    fn rfc5869_a2() {
        let ikm: Vec<u8> = (0x00..=0x4f).collect();
        let salt: Vec<u8> = (0x60..=0xaf).collect();
        let info: Vec<u8> = (0xb0..=0xff).collect();
        let okm = hkdf_vec(Some(&salt), &ikm, &info, 82);
        assert_eq!(
            hex::encode(okm),
            "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71cc30c58179ec3e87c14c01d5c1f3434f1d87"
        );
    }

    /// A.3: zero-length salt and info. Also proves that `None`, one zero byte and 32 zero bytes
    /// of salt are the same HMAC key (the X3DH and message-key salt).
    #[test]
    fn rfc5869_a3_and_zero_salt_equivalence() {
        let expected =
            "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8";
        assert_eq!(hex::encode(hkdf_vec(None, &[0x0b; 22], b"", 42)), expected);
        assert_eq!(
            hex::encode(hkdf_vec(Some(&[]), &[0x0b; 22], b"", 42)),
            expected
        );
        assert_eq!(
            hex::encode(hkdf_vec(Some(&[0u8; 32]), &[0x0b; 22], b"", 42)),
            expected
        );
        assert_eq!(
            hex::encode(hkdf_vec(Some(&[0u8; 1]), &[0x0b; 22], b"", 42)),
            expected
        );
    }

    #[test]
    fn rfc4231_test_cases_1_and_2() {
        assert_eq!(
            hex::encode(*hmac_sha256(&[0x0b; 20], b"Hi There")),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        assert_eq!(
            hex::encode(*hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
