//! One small error enum per failure domain. No variant carries secret material.

use thiserror::Error;

/// A public key or signature that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyError {
    /// The byte string has the wrong length.
    #[error("key has {actual} bytes, expected {expected}")]
    InvalidLength {
        /// Required length.
        expected: usize,
        /// Length received.
        actual: usize,
    },
    /// The type byte names another kind of key.
    #[error("key type byte {actual:#04x}, expected {expected:#04x}")]
    WrongKeyType {
        /// Required type byte.
        expected: u8,
        /// Type byte received.
        actual: u8,
    },
    /// The Ed25519 encoding is not a point or not in canonical form.
    #[error("non-canonical or invalid Ed25519 point")]
    NonCanonical,
    /// The Ed25519 key is of small order.
    #[error("weak (small-order) Ed25519 key")]
    WeakKey,
    /// A Diffie-Hellman output was all zeros (low-order peer key).
    #[error("non-contributory Diffie-Hellman result")]
    NonContributory,
    /// Unpadded base64 could not be decoded.
    #[error("invalid base64")]
    InvalidBase64,
    /// A signature failed strict verification, or was malformed.
    #[error("invalid signature")]
    BadSignature,
}

/// A byte string from the network or from storage could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The input ended early.
    #[error("input truncated")]
    Truncated,
    /// Bytes remained after the last field.
    #[error("{0} trailing bytes")]
    TrailingBytes(usize),
    /// The version byte is not one this implementation speaks.
    #[error("unsupported version {0}")]
    UnsupportedVersion(u8),
    /// A field holds a value outside its range.
    #[error("invalid field: {0}")]
    InvalidField(&'static str),
    /// A length field exceeds its bound.
    #[error("{field} too long: {len} > {max}")]
    TooLong {
        /// The field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// A key inside the input is unusable.
    #[error("bad key: {0}")]
    Key(#[from] KeyError),
}

/// Encryption with a session failed; the session is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EncryptError {
    /// The sending counter would overflow; a new session is needed.
    #[error("message counter exhausted")]
    CounterExhausted,
    /// The plaintext exceeds [`crate::consts::MAX_PLAINTEXT_LEN`].
    #[error("plaintext of {0} bytes is too long")]
    PlaintextTooLong(usize),
    /// There is no session to encrypt with.
    #[error("no session")]
    NoSession,
}

/// Decryption with a session failed; the session is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecryptError {
    /// The message could not be parsed.
    #[error("malformed message: {0}")]
    Decode(#[from] DecodeError),
    /// The message was already decrypted (or its key was discarded).
    #[error("duplicate or discarded message {counter} on this chain")]
    Duplicate {
        /// The message counter N.
        counter: u32,
    },
    /// The message is further ahead than [`crate::consts::MAX_SKIP`].
    #[error("message gap {gap} exceeds the limit")]
    TooFarAhead {
        /// Messages that would have to be skipped.
        gap: u64,
    },
    /// The header contradicts earlier headers (N beyond the chain's announced length).
    #[error("message counter beyond the end of its chain")]
    BeyondChainEnd,
    /// The message belongs to a chain this session no longer keeps.
    #[error("message from an expired or unknown receiving chain")]
    UnknownChain,
    /// The peer's ratchet key yields a non-contributory DH output.
    #[error("non-contributory ratchet key")]
    NonContributory,
    /// AEAD authentication failed: wrong key, tampering or wrong associated data.
    #[error("authentication failed")]
    AuthenticationFailed,
    /// No session of the record decrypted the message.
    #[error("no session could decrypt the message")]
    NoMatchingSession,
}

/// Setting up a session with X3DH failed; nothing was changed or consumed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum X3dhError {
    /// A key in the bundle or message is unusable.
    #[error("bad key: {0}")]
    Key(#[from] KeyError),
    /// A prekey signature is missing or invalid (checked before any DH).
    #[error("prekey signature missing or invalid")]
    BadPreKeySignature,
    /// The bundle is malformed.
    #[error("malformed bundle: {0}")]
    MalformedBundle(&'static str),
    /// The prekey message names a signed prekey this account does not have (any more).
    #[error("unknown signed prekey {0}")]
    UnknownSignedPreKey(u32),
    /// The prekey message names a one-time prekey this account does not have.
    #[error("unknown one-time prekey {0}")]
    UnknownOneTimeKey(u32),
    /// The prekey message is not addressed to this account's identity.
    #[error("prekey message is for another identity or address")]
    WrongRecipient,
    /// The sender named in the message is not the one the caller expected.
    #[error("sender address mismatch")]
    SenderMismatch,
    /// The record is for another peer than the message's sender.
    #[error("session record belongs to another peer")]
    RecordMismatch,
    /// The first message did not decrypt; the one-time key stays available.
    #[error("initial message rejected: {0}")]
    Decrypt(#[from] DecryptError),
    /// The prekey message could not be parsed.
    #[error("malformed prekey message: {0}")]
    Decode(#[from] DecodeError),
}

/// Account (identity and prekey) management failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AccountError {
    /// All 2^32 - 1 key ids have been used; create a new device.
    #[error("key ids exhausted")]
    KeyIdsExhausted,
    /// A user or device identifier is empty or too long.
    #[error("invalid identifier")]
    InvalidIdentifier,
    /// Signing or JSON handling failed.
    #[error("signing failed: {0}")]
    Signing(String),
}

/// Published device keys failed validation.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DeviceKeysError {
    /// A required field is missing or has the wrong type.
    #[error("missing or malformed field {0}")]
    Malformed(&'static str),
    /// A key is unusable.
    #[error("bad key: {0}")]
    Key(#[from] KeyError),
    /// The self-signature is missing or invalid.
    #[error("device keys are not validly self-signed")]
    BadSignature,
    /// `curve25519:DEVICE` is not the Montgomery form of `ed25519:DEVICE`.
    #[error("curve25519 key does not match the ed25519 identity")]
    CurveKeyMismatch,
    /// The object names another user or device than expected.
    #[error("device keys for another user or device")]
    AddressMismatch,
    /// The device does not advertise `hush.x3dh.ratchet.v1`.
    #[error("device does not support the Hush algorithm")]
    UnsupportedAlgorithm,
}

/// Encrypted state could not be stored or restored.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PickleError {
    /// The blob is malformed or of an unknown version.
    #[error("malformed state: {0}")]
    Decode(#[from] DecodeError),
    /// Wrong key, wrong kind/address, or tampering.
    #[error("state authentication failed")]
    AuthenticationFailed,
}

/// An `m.room.encrypted` envelope or its inner payload is unacceptable.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EnvelopeError {
    /// Not valid JSON of the expected shape.
    #[error("malformed envelope: {0}")]
    Malformed(&'static str),
    /// Another algorithm than [`crate::consts::ALGORITHM`].
    #[error("unsupported algorithm")]
    UnsupportedAlgorithm,
    /// No ciphertext for this device's key.
    #[error("no ciphertext for this device")]
    NotForThisDevice,
    /// The message type is neither 0 nor 1.
    #[error("unknown message type {0}")]
    UnknownType(u64),
    /// The decrypted payload names another sender, recipient, device or key.
    #[error("payload field {0} does not match")]
    PayloadMismatch(&'static str),
    /// A body or key is not valid base64 or not a valid message.
    #[error("bad body: {0}")]
    Decode(#[from] DecodeError),
}

/// A safety number could not be computed or compared.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FingerprintError {
    /// The iteration count is outside the accepted range.
    #[error("invalid iteration count {0}")]
    InvalidIterations(u32),
    /// A party has no identity keys.
    #[error("no identity keys")]
    NoKeys,
    /// The scannable form is malformed.
    #[error("malformed scannable fingerprint")]
    Malformed,
    /// The scannable form uses another version.
    #[error("fingerprint version {theirs} differs from ours ({ours})")]
    VersionMismatch {
        /// Our version.
        ours: u8,
        /// Their version.
        theirs: u8,
    },
}
