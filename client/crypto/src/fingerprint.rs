//! Safety numbers: Signal's numeric fingerprint over each user's sorted device identity keys
//! and user ID, its 60-digit display form and a scannable byte form compared in constant time.

use std::fmt;

use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

use crate::consts::{
    FINGERPRINT_DIGITS_PER_PARTY, FINGERPRINT_HASH_VERSION, FINGERPRINT_ITERATIONS,
    FINGERPRINT_MAX_ITERATIONS, FINGERPRINT_MIN_ITERATIONS, SCANNABLE_FINGERPRINT_VERSION,
    SCANNABLE_HALF_LEN,
};
use crate::errors::FingerprintError;
use crate::identity::IdentityKey;

/// One party's iterated hash: h = SHA-512(version (u16 BE) || key || stable_id || key), then
/// `iterations - 1` more times h = SHA-512(h || key). Returns the 64-byte digest.
pub fn party_digest(
    version: u16,
    iterations: u32,
    key: &[u8],
    stable_id: &[u8],
) -> Result<[u8; 64], FingerprintError> {
    if !(FINGERPRINT_MIN_ITERATIONS..=FINGERPRINT_MAX_ITERATIONS).contains(&iterations) {
        return Err(FingerprintError::InvalidIterations(iterations));
    }
    let mut hash = Sha512::new()
        .chain_update(version.to_be_bytes())
        .chain_update(key)
        .chain_update(stable_id)
        .chain_update(key)
        .finalize();
    for _ in 1..iterations {
        hash = Sha512::new()
            .chain_update(hash)
            .chain_update(key)
            .finalize();
    }
    let mut out = [0u8; 64];
    out.copy_from_slice(&hash);
    Ok(out)
}

/// The 30 displayed digits of one party: six 5-byte big-endian chunks, each mod 100000.
pub fn party_digits(digest: &[u8; 64]) -> String {
    let mut out = String::with_capacity(FINGERPRINT_DIGITS_PER_PARTY);
    for chunk in digest[..30].chunks_exact(5) {
        let v = chunk.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
        out.push_str(&format!("{:05}", v % 100_000));
    }
    out
}

/// The fingerprint input of a user: the concatenation of `Encode(IK)` of every device,
/// sorted by encoding (duplicates removed).
pub fn user_key_material(keys: &[IdentityKey]) -> Result<Vec<u8>, FingerprintError> {
    if keys.is_empty() {
        return Err(FingerprintError::NoKeys);
    }
    let mut encoded: Vec<[u8; 33]> = keys.iter().map(IdentityKey::encode).collect();
    encoded.sort_unstable();
    encoded.dedup();
    Ok(encoded.concat())
}

/// A safety number between the local user and a remote user.
#[derive(Clone, PartialEq, Eq)]
pub struct Fingerprint {
    local: [u8; 64],
    remote: [u8; 64],
}

impl Fingerprint {
    /// Computes the safety number with Hush's parameters (version 0, 5200 iterations).
    pub fn new(
        local_user: &str,
        local_keys: &[IdentityKey],
        remote_user: &str,
        remote_keys: &[IdentityKey],
    ) -> Result<Self, FingerprintError> {
        Self::with_parameters(
            FINGERPRINT_HASH_VERSION,
            FINGERPRINT_ITERATIONS,
            &user_key_material(local_keys)?,
            local_user.as_bytes(),
            &user_key_material(remote_keys)?,
            remote_user.as_bytes(),
        )
    }

    /// The general form over raw key material and stable ids (reproduces libsignal's KAT).
    pub fn with_parameters(
        version: u16,
        iterations: u32,
        local_key: &[u8],
        local_id: &[u8],
        remote_key: &[u8],
        remote_id: &[u8],
    ) -> Result<Self, FingerprintError> {
        Ok(Self {
            local: party_digest(version, iterations, local_key, local_id)?,
            remote: party_digest(version, iterations, remote_key, remote_id)?,
        })
    }

    /// The 60 digits both users see: the smaller 30-digit half first.
    pub fn displayable(&self) -> String {
        let a = party_digits(&self.local);
        let b = party_digits(&self.remote);
        if a <= b {
            a + &b
        } else {
            b + &a
        }
    }

    /// The displayable form in 12 groups of 5 digits.
    pub fn grouped(&self) -> String {
        let digits = self.displayable();
        let groups: Vec<&str> = (0..digits.len())
            .step_by(5)
            .filter_map(|i| digits.get(i..i + 5))
            .collect();
        groups.join(" ")
    }

    /// The scannable form (e.g. for a QR code): version (1) || local (32) || remote (32).
    pub fn scannable(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 2 * SCANNABLE_HALF_LEN);
        out.push(SCANNABLE_FINGERPRINT_VERSION);
        out.extend_from_slice(&self.local[..SCANNABLE_HALF_LEN]);
        out.extend_from_slice(&self.remote[..SCANNABLE_HALF_LEN]);
        out
    }

    /// Compares our fingerprint with the peer's scanned one, crosswise (their local half must
    /// equal our remote half and vice versa), in constant time.
    pub fn matches_scanned(&self, theirs: &[u8]) -> Result<bool, FingerprintError> {
        let (&version, rest) = theirs.split_first().ok_or(FingerprintError::Malformed)?;
        if version != SCANNABLE_FINGERPRINT_VERSION {
            return Err(FingerprintError::VersionMismatch {
                ours: SCANNABLE_FINGERPRINT_VERSION,
                theirs: version,
            });
        }
        if rest.len() != 2 * SCANNABLE_HALF_LEN {
            return Err(FingerprintError::Malformed);
        }
        let (their_local, their_remote) = rest.split_at(SCANNABLE_HALF_LEN);
        let a = their_local.ct_eq(&self.remote[..SCANNABLE_HALF_LEN]);
        let b = their_remote.ct_eq(&self.local[..SCANNABLE_HALF_LEN]);
        Ok(bool::from(a & b))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Fingerprint").field(&self.grouped()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::IdentityKeyPair;

    /// libsignal KAT (reference 8.2 item 3).
    #[test]
    fn libsignal_fingerprint_kat() {
        let alice =
            hex::decode("0506863bc66d02b40d27b8d49ca7c09e9239236f9d7d25d6fcca5ce13c7064d868")
                .unwrap_or_default();
        let bob = hex::decode("05f781b6fb32fed9ba1cf2de978d4d5da28dc34046ae814402b5c0dbd96fda907b")
            .unwrap_or_default();
        let fp =
            Fingerprint::with_parameters(0, 5200, &alice, b"+14152222222", &bob, b"+14153333333");
        let expected = "300354477692869396892869876765458257569162576843440918079131";
        assert_eq!(
            fp.as_ref().map(Fingerprint::displayable).ok().as_deref(),
            Some(expected)
        );
        let fp2 =
            Fingerprint::with_parameters(0, 5200, &bob, b"+14153333333", &alice, b"+14152222222");
        assert_eq!(fp2.map(|f| f.displayable()).ok().as_deref(), Some(expected));
    }

    #[test]
    fn iterations_are_bounded() {
        assert_eq!(
            party_digest(0, 1, b"k", b"i"),
            Err(FingerprintError::InvalidIterations(1))
        );
        assert!(party_digest(0, 1_000_001, b"k", b"i").is_err());
    }

    #[test]
    fn both_sides_agree_and_scannable_matches_crosswise() {
        let a1 = IdentityKeyPair::from_seed(&[1; 32]).public_key();
        let a2 = IdentityKeyPair::from_seed(&[2; 32]).public_key();
        let b1 = IdentityKeyPair::from_seed(&[3; 32]).public_key();
        let alice = Fingerprint::new("@a:x", &[a1, a2], "@b:y", &[b1]);
        let bob = Fingerprint::new("@b:y", &[b1], "@a:x", &[a2, a1]);
        let (Ok(alice), Ok(bob)) = (alice, bob) else {
            panic!("fingerprint failed");
        };
        assert_eq!(alice.displayable(), bob.displayable());
        assert_eq!(alice.displayable().len(), 60);
        assert_eq!(alice.grouped().len(), 71);
        assert_eq!(alice.matches_scanned(&bob.scannable()), Ok(true));
        assert_eq!(alice.matches_scanned(&alice.scannable()), Ok(false));
        let mut bad = bob.scannable();
        bad[5] ^= 1;
        assert_eq!(alice.matches_scanned(&bad), Ok(false));
        bad[0] = 9;
        assert!(matches!(
            alice.matches_scanned(&bad),
            Err(FingerprintError::VersionMismatch { .. })
        ));
        assert_eq!(
            alice.matches_scanned(&bad[..10]),
            Err(FingerprintError::VersionMismatch { ours: 1, theirs: 9 })
        );
        // A new device changes the number.
        let other = Fingerprint::new("@a:x", &[a1], "@b:y", &[b1]).map(|f| f.displayable());
        assert_ne!(other.ok(), Some(alice.displayable()));
    }
}
