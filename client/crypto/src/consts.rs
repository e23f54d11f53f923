//! Every protocol constant and resource bound of `hush.x3dh.ratchet.v1`, in one place.
//!
//! docs/protocol.md is normative; each value here is quoted there. Nothing else in the crate
//! hard-codes a limit, a label or a version byte.

/// Algorithm name used in `m.room.encrypted` content and in `device_keys.algorithms`.
pub const ALGORITHM: &str = "hush.x3dh.ratchet.v1";
/// Algorithm name of the Hush bundle claim (`keys/claim`), DESIGN.md section 5.
pub const BUNDLE_CLAIM_ALGORITHM: &str = "hush.x3dh_bundle";
/// Matrix algorithm name of signed X25519 prekeys (one-time and fallback keys).
pub const SIGNED_CURVE25519: &str = "signed_curve25519";

/// Wire version byte of ratchet headers, prekey messages and the X3DH derivation.
pub const PROTOCOL_VERSION: u8 = 1;

/// Type byte of an encoded X25519 public key (Signal's value).
pub const KEY_TYPE_X25519: u8 = 0x05;
/// Type byte of an encoded Ed25519 public key (never overlaps with [`KEY_TYPE_X25519`]).
pub const KEY_TYPE_ED25519: u8 = 0x06;
/// Length of a raw public key or secret scalar.
pub const KEY_LEN: usize = 32;
/// Length of an encoded (type-tagged) public key.
pub const ENCODED_KEY_LEN: usize = 1 + KEY_LEN;
/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// HKDF info of the X3DH shared secret.
pub const INFO_X3DH: &[u8] = b"Hush-X3DH-v1";
/// HKDF info of the Double Ratchet root-key step (KDF_RK).
pub const INFO_RATCHET: &[u8] = b"Hush-Ratchet-v1";
/// HKDF info that expands a message key into ChaCha20-Poly1305 key and nonce.
pub const INFO_MESSAGE_KEYS: &[u8] = b"Hush-MsgKeys-v1";
/// Every HKDF info string of the protocol; a test proves they are pairwise distinct.
pub const ALL_INFO_STRINGS: [&[u8]; 3] = [INFO_X3DH, INFO_RATCHET, INFO_MESSAGE_KEYS];
/// Prefix of X3DH key material: 32 bytes of 0xFF (X3DH spec, "F").
pub const X3DH_F: [u8; 32] = [0xFF; 32];
/// HMAC-SHA256 input that derives a message key from a chain key (KDF_CK).
pub const MESSAGE_KEY_SEED: u8 = 0x01;
/// HMAC-SHA256 input that derives the next chain key (KDF_CK).
pub const CHAIN_KEY_SEED: u8 = 0x02;
/// Output of the message-key expansion: 32-byte key followed by a 12-byte nonce.
pub const MESSAGE_KEY_MATERIAL_LEN: usize = 44;
/// ChaCha20-Poly1305 key length.
pub const AEAD_KEY_LEN: usize = 32;
/// ChaCha20-Poly1305 nonce length.
pub const AEAD_NONCE_LEN: usize = 12;
/// Poly1305 tag length (never truncated).
pub const AEAD_TAG_LEN: usize = 16;

/// Ratchet header: version (1) || ratchet public key (32) || PN (u32 BE) || N (u32 BE).
pub const HEADER_LEN: usize = 1 + KEY_LEN + 4 + 4;
/// Fixed part of a prekey message: version, Encode(IK_A), Encode(EK_A), SPK id,
/// OPK flag and OPK id.
pub const PREKEY_FIXED_LEN: usize = 1 + ENCODED_KEY_LEN + ENCODED_KEY_LEN + 4 + 1 + 4;
/// Largest user or device identifier accepted in the associated data or a prekey message.
pub const MAX_ID_LEN: usize = 255;
/// Largest plaintext the ratchet encrypts (64 KiB, the Matrix to-device event limit).
pub const MAX_PLAINTEXT_LEN: usize = 65_536;

/// Largest forward gap inside one receiving chain (messages skipped by one arrival).
pub const MAX_SKIP: u32 = 1_000;
/// Most skipped message keys a session stores; the oldest is evicted first.
pub const MAX_SKIPPED_KEYS: usize = 2_000;
/// Most receiving chains a session keeps (the newest and four older ones).
pub const MAX_RECEIVER_CHAINS: usize = 5;
/// Seconds a stored skipped key (and a superseded receiving chain) lives: 30 days.
pub const SKIPPED_KEY_TTL_SECS: u64 = 30 * 24 * 3600;
/// Most inactive sessions a [`crate::session_record::SessionRecord`] keeps (Sesame).
pub const MAX_INACTIVE_SESSIONS: usize = 40;

/// Signed prekey rotation period: 7 days.
pub const SPK_ROTATION_SECS: u64 = 7 * 24 * 3600;
/// How long a replaced signed prekey's private half is kept for in-flight messages: 30 days.
pub const SPK_RETENTION_SECS: u64 = 30 * 24 * 3600;
/// Most one-time prekeys (private halves) an account keeps, published or not.
pub const MAX_ONE_TIME_KEYS: usize = 5_000;
/// Number of one-time prekeys a client keeps published on its server.
pub const ONE_TIME_KEY_TARGET: usize = 100;
/// Refill the server's one-time key pool when its count falls below this.
pub const ONE_TIME_KEY_LOW_WATERMARK: usize = 25;

/// Version field hashed into each half of a safety number (Signal's value).
pub const FINGERPRINT_HASH_VERSION: u16 = 0;
/// SHA-512 iterations of a safety number (Signal's value).
pub const FINGERPRINT_ITERATIONS: u32 = 5_200;
/// Smallest accepted iteration count (libsignal rejects <= 1).
pub const FINGERPRINT_MIN_ITERATIONS: u32 = 2;
/// Largest accepted iteration count.
pub const FINGERPRINT_MAX_ITERATIONS: u32 = 1_000_000;
/// Version byte of the scannable fingerprint form.
pub const SCANNABLE_FINGERPRINT_VERSION: u8 = 1;
/// Length of one party's scannable fingerprint content.
pub const SCANNABLE_HALF_LEN: usize = 32;
/// Digits per party in the displayed safety number.
pub const FINGERPRINT_DIGITS_PER_PARTY: usize = 30;

/// Version of the serialized state formats of records and accounts.
pub const STATE_VERSION: u8 = 1;
/// Version of one serialized session. Version 2 added when the session's unanswered prekey
/// messages started; version 1 sessions are still read (that time is then unknown).
pub const SESSION_STATE_VERSION: u8 = 2;
/// A session whose prekey messages the peer has not answered after this long is no longer used
/// for sending: the sender claims a fresh bundle and starts a new session (the peer may have
/// lost the prekeys, or never received the first message). Same age as libsignal's rule.
pub const MAX_UNACKNOWLEDGED_SESSION_AGE_SECS: u64 = 30 * 24 * 3600;
/// Version byte of encrypted state blobs ("pickles").
pub const PICKLE_VERSION: u8 = 1;
/// XChaCha20-Poly1305 nonce length of encrypted state blobs.
pub const PICKLE_NONCE_LEN: usize = 24;
/// Largest serialized state accepted by a decoder (16 MiB).
pub const MAX_STATE_LEN: usize = 16 * 1024 * 1024;
