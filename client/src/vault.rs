//! Encryption at rest: a random 32-byte data key, wrapped by a key derived from the passphrase
//! with argon2id, and the three keys derived from it: one for crypto-crate pickles, one for the
//! client's own sealed fields (message records, pins, the login), and one for keyed lookup
//! tags (HMAC-SHA256) that stand in for user and device IDs in indexed columns.
//!
//! Layout of the wrapped key: nonce (12) || ChaCha20-Poly1305(KEK, data key, AD).

use std::fmt;

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use hkdf::hmac::{Hmac, Mac};
use hkdf::Hkdf;
use hush_crypto::PickleKey;
use rand::RngCore;
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

/// Associated data of the wrapped data key.
const WRAP_AD: &[u8] = b"hush-client data key v1";
/// HKDF info of the pickle key.
const INFO_PICKLE: &[u8] = b"hush-client pickle key v1";
/// HKDF info of the field key.
const INFO_FIELD: &[u8] = b"hush-client field key v1";
/// HKDF info of the lookup-tag key.
const INFO_TAG: &[u8] = b"hush-client tag key v1";
/// Nonce length of ChaCha20-Poly1305.
const NONCE_LEN: usize = 12;

/// Errors of the vault.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The passphrase does not unwrap the data key.
    #[error("the passphrase is wrong (the local store could not be unlocked)")]
    WrongPassphrase,
    /// A stored ciphertext failed authentication.
    #[error("the local store is damaged: an encrypted record failed authentication ({0})")]
    Corrupt(&'static str),
    /// The key derivation parameters are invalid.
    #[error("invalid key derivation parameters: {0}")]
    Kdf(String),
}

/// Argon2id cost parameters, stored beside the salt so they can change for new stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_kib: u32,
    /// Iterations.
    pub t: u32,
    /// Parallelism.
    pub p: u32,
}

impl Default for KdfParams {
    /// OWASP's argon2id recommendation (19 MiB, 2 iterations, 1 lane).
    fn default() -> Self {
        Self {
            m_kib: 19 * 1024,
            t: 2,
            p: 1,
        }
    }
}

impl KdfParams {
    /// Encodes as `m,t,p`.
    pub fn encode(&self) -> String {
        format!("{},{},{}", self.m_kib, self.t, self.p)
    }

    /// Parses `m,t,p`.
    pub fn decode(text: &str) -> Result<Self, VaultError> {
        let parts: Vec<u32> = text
            .split(',')
            .map(|p| p.parse::<u32>())
            .collect::<Result<_, _>>()
            .map_err(|_| VaultError::Kdf(text.to_owned()))?;
        match parts.as_slice() {
            [m, t, p] => Ok(Self {
                m_kib: *m,
                t: *t,
                p: *p,
            }),
            _ => Err(VaultError::Kdf(text.to_owned())),
        }
    }
}

/// A passphrase; zeroized on drop, never printed.
pub struct Passphrase(Zeroizing<String>);

impl Passphrase {
    /// Wraps a passphrase (trailing newline removed).
    pub fn new(mut text: String) -> Self {
        while text.ends_with('\n') || text.ends_with('\r') {
            text.pop();
        }
        Self(Zeroizing::new(text))
    }

    fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Passphrase(..)")
    }
}

/// The unlocked keys of a store. Zeroized on drop; `Debug` is redacted.
pub struct Vault {
    pickle: PickleKey,
    field: Zeroizing<[u8; 32]>,
    tag: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Vault(..)")
    }
}

/// What a new store keeps in plaintext: the salt, the cost parameters and the wrapped key.
#[derive(Debug, Clone)]
pub struct WrappedKey {
    /// The argon2 salt.
    pub salt: Vec<u8>,
    /// The argon2 parameters.
    pub params: KdfParams,
    /// nonce || ciphertext of the data key.
    pub wrapped: Vec<u8>,
}

fn derive_kek(
    passphrase: &Passphrase,
    salt: &[u8],
    params: KdfParams,
) -> Result<Zeroizing<[u8; 32]>, VaultError> {
    let p = Params::new(params.m_kib, params.t, params.p, Some(32))
        .map_err(|e| VaultError::Kdf(e.to_string()))?;
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, p);
    let mut kek = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(passphrase.as_bytes(), salt, kek.as_mut())
        .map_err(|e| VaultError::Kdf(e.to_string()))?;
    Ok(kek)
}

fn aead_seal(key: &[u8; 32], plaintext: &[u8], ad: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    rand::thread_rng().fill_bytes(&mut nonce);
    let cipher = ChaCha20Poly1305::new(key.into());
    let ct = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad: ad,
            },
        )
        .unwrap_or_default();
    let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    out
}

fn aead_open(key: &[u8; 32], blob: &[u8], ad: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    if blob.len() < NONCE_LEN + 16 {
        return None;
    }
    let (nonce, ct) = blob.split_at(NONCE_LEN);
    let cipher = ChaCha20Poly1305::new(key.into());
    cipher
        .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: ad })
        .ok()
        .map(Zeroizing::new)
}

impl Vault {
    /// Creates a new random data key wrapped under `passphrase`.
    pub fn create(
        passphrase: &Passphrase,
        params: KdfParams,
    ) -> Result<(Self, WrappedKey), VaultError> {
        let mut salt = vec![0u8; 16];
        rand::thread_rng().fill_bytes(&mut salt);
        let kek = derive_kek(passphrase, &salt, params)?;
        let mut data_key = Zeroizing::new([0u8; 32]);
        rand::thread_rng().fill_bytes(data_key.as_mut());
        let wrapped = aead_seal(&kek, data_key.as_ref(), WRAP_AD);
        Ok((
            Self::from_data_key(&data_key),
            WrappedKey {
                salt,
                params,
                wrapped,
            },
        ))
    }

    /// Unwraps the data key; a wrong passphrase is [`VaultError::WrongPassphrase`].
    pub fn unlock(passphrase: &Passphrase, wrapped: &WrappedKey) -> Result<Self, VaultError> {
        let kek = derive_kek(passphrase, &wrapped.salt, wrapped.params)?;
        let data = aead_open(&kek, &wrapped.wrapped, WRAP_AD).ok_or(VaultError::WrongPassphrase)?;
        let mut key = Zeroizing::new([0u8; 32]);
        if data.len() != 32 {
            return Err(VaultError::Corrupt("data key"));
        }
        key.copy_from_slice(&data);
        Ok(Self::from_data_key(&key))
    }

    /// Derives the working keys from the data key.
    fn from_data_key(data_key: &[u8; 32]) -> Self {
        let hk = Hkdf::<Sha256>::new(None, data_key);
        let mut pickle = [0u8; 32];
        let mut field = Zeroizing::new([0u8; 32]);
        let mut tag = Zeroizing::new([0u8; 32]);
        // 32 bytes is always a valid HKDF-SHA256 output length.
        let _ = hk.expand(INFO_PICKLE, &mut pickle);
        let _ = hk.expand(INFO_FIELD, field.as_mut());
        let _ = hk.expand(INFO_TAG, tag.as_mut());
        let key = PickleKey::new(pickle);
        pickle.zeroize();
        Self {
            pickle: key,
            field,
            tag,
        }
    }

    /// A keyed lookup tag: HMAC-SHA256 under the tag key over `domain` and `parts`, each
    /// length-prefixed so no two inputs collide. Equal inputs give equal tags (so a column
    /// of tags can be indexed and searched), but without the data key a tag reveals nothing
    /// and cannot be confirmed by guessing IDs.
    pub fn tag(&self, domain: &str, parts: &[&[u8]]) -> Vec<u8> {
        // HMAC accepts keys of any length.
        let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(self.tag.as_ref()) else {
            return Vec::new();
        };
        for part in std::iter::once(domain.as_bytes()).chain(parts.iter().copied()) {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.finalize().into_bytes().to_vec()
    }

    /// The key for crypto-crate pickles (account, session records).
    pub fn pickle_key(&self) -> &PickleKey {
        &self.pickle
    }

    /// Encrypts a field value bound to `context` (e.g. `message:<id>`).
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> Vec<u8> {
        aead_seal(&self.field, plaintext, context.as_bytes())
    }

    /// Decrypts a field value sealed with the same context.
    pub fn open(&self, context: &str, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        aead_open(&self.field, blob, context.as_bytes()).ok_or(VaultError::Corrupt("field"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn cheap() -> KdfParams {
        KdfParams {
            m_kib: 64,
            t: 1,
            p: 1,
        }
    }

    #[test]
    fn unlock_with_right_passphrase_only() {
        let pass = Passphrase::new("correct horse\n".into());
        let (vault, wrapped) = Vault::create(&pass, cheap())
            .map_err(|e| e.to_string())
            .unwrap();
        let blob = vault.seal("ctx", b"secret");
        let again = Vault::unlock(&Passphrase::new("correct horse".into()), &wrapped).unwrap();
        assert_eq!(again.open("ctx", &blob).unwrap().as_slice(), b"secret");
        assert!(again.open("other", &blob).is_err());
        // Tags are stable under the same data key and separate domains and part boundaries.
        assert_eq!(vault.tag("peer", &[b"@a:x"]), again.tag("peer", &[b"@a:x"]));
        assert_ne!(vault.tag("peer", &[b"@a:x"]), vault.tag("pin", &[b"@a:x"]));
        assert_ne!(
            vault.tag("s", &[b"ab", b"c"]),
            vault.tag("s", &[b"a", b"bc"])
        );
        let (other, _) = Vault::create(&pass, cheap())
            .map_err(|e| e.to_string())
            .unwrap();
        assert_ne!(vault.tag("peer", &[b"@a:x"]), other.tag("peer", &[b"@a:x"]));
        assert!(matches!(
            Vault::unlock(&Passphrase::new("wrong".into()), &wrapped),
            Err(VaultError::WrongPassphrase)
        ));
    }

    #[test]
    fn params_round_trip_and_reject_garbage() {
        let p = KdfParams::default();
        assert_eq!(KdfParams::decode(&p.encode()).unwrap(), p);
        assert!(KdfParams::decode("1,2").is_err());
        assert!(KdfParams::decode("a,b,c").is_err());
    }
}
