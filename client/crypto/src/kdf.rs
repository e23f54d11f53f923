//! The two key-derivation primitives of the protocol, HKDF-SHA256 and HMAC-SHA256, wrapped
//! once so that every derivation (and every known-answer test) takes the same code path.

use std::sync::OnceLock;

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

use crate::consts::KEY_LEN;

/// HMAC-SHA256 with its key already absorbed: cloning it and feeding data computes further
/// MACs under the same key without hashing the padded key again (two SHA-256 compressions
/// saved per MAC).
pub(crate) type HmacSha256 = Hmac<Sha256>;

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

/// HMAC-SHA256 keyed with a 32-byte key, ready to be cloned for several MACs.
pub(crate) fn hmac_keyed(key: &[u8; KEY_LEN]) -> HmacSha256 {
    // HMAC pads keys shorter than the hash block with zero bytes (RFC 2104), so a block-sized
    // key whose tail is zero is the same key; this constructor cannot fail.
    let mut padded = hmac::digest::Key::<HmacSha256>::default();
    padded[..KEY_LEN].copy_from_slice(key);
    let mac = <HmacSha256 as hmac::digest::KeyInit>::new(&padded);
    padded.as_mut_slice().zeroize();
    mac
}

/// HMAC-SHA256 under an already keyed state: HMAC(key, data) for the key of `keyed`.
pub(crate) fn hmac_with(keyed: &HmacSha256, data: &[u8]) -> Zeroizing<[u8; KEY_LEN]> {
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    out.copy_from_slice(&keyed.clone().chain_update(data).finalize().into_bytes());
    out
}

/// HKDF-SHA256 with the salt of 32 zero bytes (the message-key and X3DH salt), bit-identical
/// to `hkdf_sha256(Some(&[0; 32]), ikm, info, out)`. The salt's keyed HMAC state is computed
/// once per process, so the extract step costs two SHA-256 compressions instead of four.
/// Returns `None` only if `out` is longer than 255 * 32 bytes.
pub fn hkdf_sha256_zero_salt(ikm: &[u8], info: &[u8], out: &mut [u8]) -> Option<()> {
    static ZERO_SALT: OnceLock<HmacSha256> = OnceLock::new();
    let extract = ZERO_SALT.get_or_init(|| hmac_keyed(&[0u8; KEY_LEN]));
    // PRK = HMAC-SHA256(salt, IKM) (RFC 5869 section 2.2).
    let prk = hmac_with(extract, ikm);
    Hkdf::<Sha256>::from_prk(prk.as_ref())
        .ok()?
        .expand(info, out)
        .ok()
}

/// [`hkdf_sha256_zero_salt`] into a zeroizing fixed-size array.
pub fn hkdf_zero_salt_array<const N: usize>(ikm: &[u8], info: &[u8]) -> Zeroizing<[u8; N]> {
    let mut out = Zeroizing::new([0u8; N]);
    // N is a compile-time constant of at most 64 in this crate, far below the HKDF limit.
    let _ = hkdf_sha256_zero_salt(ikm, info, out.as_mut());
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

    /// The zero-salt fast path equals the generic HKDF for every output length and for
    /// IKM lengths around the SHA-256 block boundaries.
    #[test]
    fn zero_salt_fast_path_matches_generic_hkdf() {
        for ikm_len in [0usize, 1, 22, 32, 55, 56, 63, 64, 65, 100, 200] {
            let ikm: Vec<u8> = (0..ikm_len).map(|i| (i * 7 + 3) as u8).collect();
            for len in [1usize, 31, 32, 33, 44, 64, 82] {
                let mut fast = vec![0u8; len];
                assert!(hkdf_sha256_zero_salt(&ikm, b"Hush-MsgKeys-v1", &mut fast).is_some());
                assert_eq!(
                    fast,
                    hkdf_vec(Some(&[0u8; 32]), &ikm, b"Hush-MsgKeys-v1", len)
                );
            }
        }
        let expected =
            "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8";
        let mut okm = [0u8; 42];
        assert!(hkdf_sha256_zero_salt(&[0x0b; 22], b"", &mut okm).is_some());
        assert_eq!(hex::encode(okm), expected);
        let mut too_long = vec![0u8; 255 * 32 + 1];
        assert!(hkdf_sha256_zero_salt(b"ikm", b"", &mut too_long).is_none());
    }

    /// A pre-keyed HMAC state gives the same MAC as keying from scratch, however often it is
    /// reused.
    #[test]
    fn keyed_hmac_matches_one_shot_hmac() {
        for seed in 0u8..8 {
            let key: [u8; 32] = core::array::from_fn(|i| seed.wrapping_mul(31) ^ i as u8);
            let keyed = hmac_keyed(&key);
            for data in [&b""[..], &[0x01], &[0x02], &[0x5a; 64], &[0xa5; 200]] {
                assert_eq!(*hmac_with(&keyed, data), *hmac_sha256(&key, data));
            }
        }
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
