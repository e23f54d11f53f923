//! Encrypted state at rest ("pickles"): XChaCha20-Poly1305 under a caller-supplied 32-byte key
//! with a random 24-byte nonce, bound by associated data to the kind of record, the peer
//! address and the format version, so a blob cannot be swapped between records.

use std::fmt;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand_core::{CryptoRng, RngCore};
use zeroize::Zeroizing;

use crate::account::Account;
use crate::consts::{KEY_LEN, PICKLE_NONCE_LEN, PICKLE_VERSION};
use crate::encoding::Writer;
use crate::errors::{DecodeError, PickleError};
use crate::session_record::SessionRecord;

/// The kind of state inside a blob (part of the associated data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// A device [`Account`].
    Account,
    /// A [`SessionRecord`].
    SessionRecord,
}

impl RecordKind {
    fn label(self) -> &'static [u8] {
        match self {
            Self::Account => b"hush-account",
            Self::SessionRecord => b"hush-session-record",
        }
    }
}

/// The 32-byte key that encrypts stored state. Zeroized on drop; `Debug` is redacted.
#[derive(Clone)]
pub struct PickleKey(Zeroizing<[u8; KEY_LEN]>);

impl PickleKey {
    /// Wraps a key (e.g. unwrapped from the passphrase-protected store key).
    pub fn new(bytes: [u8; KEY_LEN]) -> Self {
        Self(Zeroizing::new(bytes))
    }
}

impl fmt::Debug for PickleKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PickleKey(..)")
    }
}

/// AD = u8 length || kind label || u16 length || address || version.
fn associated_data(kind: RecordKind, address: &str) -> Vec<u8> {
    let mut w = Writer::new();
    w.u8(kind.label().len() as u8);
    w.raw(kind.label());
    w.bytes16(address.as_bytes());
    w.u8(PICKLE_VERSION);
    w.into_bytes().to_vec()
}

/// Encrypts serialized state: version (1) || nonce (24) || ciphertext || tag (16).
pub fn seal<R: RngCore + CryptoRng>(
    rng: &mut R,
    key: &PickleKey,
    kind: RecordKind,
    address: &str,
    state: &[u8],
) -> Vec<u8> {
    let mut nonce = [0u8; PICKLE_NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    let cipher = XChaCha20Poly1305::new(key.0.as_ref().into());
    let ad = associated_data(kind, address);
    let ct = cipher
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: state,
                aad: &ad,
            },
        )
        .unwrap_or_default();
    let mut out = Vec::with_capacity(1 + PICKLE_NONCE_LEN + ct.len());
    out.push(PICKLE_VERSION);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    out
}

/// Decrypts a blob made by [`seal`] with the same key, kind and address.
pub fn open(
    key: &PickleKey,
    kind: RecordKind,
    address: &str,
    blob: &[u8],
) -> Result<Zeroizing<Vec<u8>>, PickleError> {
    let (&version, rest) = blob.split_first().ok_or(DecodeError::Truncated)?;
    if version != PICKLE_VERSION {
        return Err(DecodeError::UnsupportedVersion(version).into());
    }
    if rest.len() < PICKLE_NONCE_LEN + crate::consts::AEAD_TAG_LEN {
        return Err(DecodeError::Truncated.into());
    }
    let (nonce, ct) = rest.split_at(PICKLE_NONCE_LEN);
    let cipher = XChaCha20Poly1305::new(key.0.as_ref().into());
    let ad = associated_data(kind, address);
    cipher
        .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad: &ad })
        .map(Zeroizing::new)
        .map_err(|_| PickleError::AuthenticationFailed)
}

/// The address a record is bound to: `<byte length of user_id>:<user_id>|<device_id>`.
fn record_address(user_id: &str, device_id: &str) -> String {
    format!("{}:{user_id}|{device_id}", user_id.len())
}

impl SessionRecord {
    /// Serializes and encrypts the record.
    pub fn seal<R: RngCore + CryptoRng>(&self, rng: &mut R, key: &PickleKey) -> Vec<u8> {
        let address = record_address(self.user_id(), self.device_id());
        seal(
            rng,
            key,
            RecordKind::SessionRecord,
            &address,
            &self.to_bytes(),
        )
    }

    /// Decrypts and parses a record stored for the given peer device.
    pub fn open(
        key: &PickleKey,
        user_id: &str,
        device_id: &str,
        blob: &[u8],
    ) -> Result<Self, PickleError> {
        let address = record_address(user_id, device_id);
        let bytes = open(key, RecordKind::SessionRecord, &address, blob)?;
        let record = Self::from_bytes(&bytes)?;
        if record.user_id() != user_id || record.device_id() != device_id {
            return Err(PickleError::AuthenticationFailed);
        }
        Ok(record)
    }
}

impl Account {
    /// Serializes and encrypts the account.
    pub fn seal<R: RngCore + CryptoRng>(&self, rng: &mut R, key: &PickleKey) -> Vec<u8> {
        let address = record_address(self.user_id(), self.device_id());
        seal(rng, key, RecordKind::Account, &address, &self.to_bytes())
    }

    /// Decrypts and parses the account of the given user and device.
    pub fn open(
        key: &PickleKey,
        user_id: &str,
        device_id: &str,
        blob: &[u8],
    ) -> Result<Self, PickleError> {
        let address = record_address(user_id, device_id);
        let bytes = open(key, RecordKind::Account, &address, blob)?;
        let account = Self::from_bytes(&bytes)?;
        if account.user_id() != user_id || account.device_id() != device_id {
            return Err(PickleError::AuthenticationFailed);
        }
        Ok(account)
    }
}
