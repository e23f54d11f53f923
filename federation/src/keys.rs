//! The server's Ed25519 signing key and server key documents (`GET /_matrix/key/v2/server`).
//!
//! * [`ServerSigningKey`]: the key with its version (key id `ed25519:<version>`, version characters
//!   `[a-zA-Z0-9_]`), stored as a one-line key file `ed25519 <version> <unpadded base64 seed>` (the
//!   format Synapse uses), written with mode 0600. The seed is zeroized on drop and never printed.
//! * [`build_key_document`]: the self-signed document a server publishes, with `verify_keys`,
//!   `old_verify_keys` (always present, possibly empty) and `valid_until_ts`, signed by every
//!   current key.
//! * [`verify_key_document`]: checks a document fetched from a remote server: the server name
//!   matches, `valid_until_ts` is in the future, and every listed ed25519 key signed it.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write as _;
use std::path::Path;

use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use zeroize::{Zeroize as _, Zeroizing};

use crate::base64::{decode_lenient, encode_unpadded};
use crate::ids::ServerName;
use crate::signing::{self, SigningError};

/// The only key algorithm Hush signs with.
pub const ED25519: &str = "ed25519";
/// Receivers never trust a key document for longer than this after fetching it (7 days), whatever
/// its `valid_until_ts` says.
pub const MAX_KEY_VALIDITY_MS: u64 = 7 * 24 * 60 * 60 * 1000;

/// Why a signing key could not be loaded, parsed or saved.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key version is empty or has characters outside `[a-zA-Z0-9_]`.
    #[error("invalid key version (allowed: a-z, A-Z, 0-9, _)")]
    InvalidVersion,
    /// The key file is not `ed25519 <version> <base64 seed>`.
    #[error("malformed key file: {0}")]
    MalformedFile(&'static str),
    /// Reading or writing the key file failed.
    #[error("key file I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// Is `version` a valid key version (`[a-zA-Z0-9_]+`)?
pub fn is_valid_key_version(version: &str) -> bool {
    !version.is_empty()
        && version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Splits a key id such as `ed25519:a_Abc1` into algorithm and version.
pub fn split_key_id(key_id: &str) -> Option<(&str, &str)> {
    key_id.split_once(':')
}

/// Milliseconds since the Unix epoch, now.
pub fn unix_millis_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A server's Ed25519 signing key with its version.
///
/// The seed is zeroized when the key is dropped; `Debug` shows only the key id and the public key.
pub struct ServerSigningKey {
    version: String,
    key: SigningKey,
}

impl ServerSigningKey {
    /// Makes a new random key with the given version.
    pub fn generate(version: &str) -> Result<Self, KeyError> {
        if !is_valid_key_version(version) {
            return Err(KeyError::InvalidVersion);
        }
        let key = SigningKey::generate(&mut rand_core::OsRng);
        Ok(Self {
            version: version.to_owned(),
            key,
        })
    }

    /// Makes a new random key with a fresh random version of the form `a_XXXX`.
    pub fn generate_random_version() -> Self {
        const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        let mut bytes = [0u8; 4];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
        let suffix: String = bytes
            .iter()
            .map(|b| char::from(CHARS[usize::from(*b) % CHARS.len()]))
            .collect();
        Self {
            version: format!("a_{suffix}"),
            key: SigningKey::generate(&mut rand_core::OsRng),
        }
    }

    /// Builds a key from a 32-byte seed.
    pub fn from_seed(version: &str, seed: &[u8; 32]) -> Result<Self, KeyError> {
        if !is_valid_key_version(version) {
            return Err(KeyError::InvalidVersion);
        }
        Ok(Self {
            version: version.to_owned(),
            key: SigningKey::from_bytes(seed),
        })
    }

    /// Parses a key file: its first non-empty line must be `ed25519 <version> <base64 seed>`.
    pub fn parse_key_file(text: &str) -> Result<Self, KeyError> {
        let line = text
            .lines()
            .map(str::trim)
            .find(|line| !line.is_empty())
            .ok_or(KeyError::MalformedFile("the file is empty"))?;
        let mut parts = line.split_whitespace();
        let (Some(algorithm), Some(version), Some(seed_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(KeyError::MalformedFile(
                "expected `ed25519 <version> <seed>`",
            ));
        };
        if algorithm != ED25519 {
            return Err(KeyError::MalformedFile("only ed25519 keys are supported"));
        }
        let seed = Zeroizing::new(
            decode_lenient(seed_b64).map_err(|_| KeyError::MalformedFile("seed is not base64"))?,
        );
        let mut seed_array: [u8; 32] = seed
            .as_slice()
            .try_into()
            .map_err(|_| KeyError::MalformedFile("seed is not 32 bytes"))?;
        let key = Self::from_seed(version, &seed_array);
        seed_array.zeroize();
        key
    }

    /// Reads a key file.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = Zeroizing::new(std::fs::read_to_string(path)?);
        Self::parse_key_file(&text)
    }

    /// The key file line for this key (contains the secret seed).
    pub fn to_key_file(&self) -> Zeroizing<String> {
        let seed = Zeroizing::new(self.key.to_bytes());
        let seed_b64 = Zeroizing::new(encode_unpadded(seed.as_slice()));
        Zeroizing::new(format!(
            "{ED25519} {} {}\n",
            self.version,
            seed_b64.as_str()
        ))
    }

    /// Writes the key file with mode 0600 (on Unix), replacing any existing file atomically.
    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let file_name = path
            .file_name()
            .ok_or(KeyError::MalformedFile("the key path has no file name"))?;
        let mut temp_name = file_name.to_os_string();
        temp_name.push(format!(".tmp{}", std::process::id()));
        let temp_path = dir.join(temp_name);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let result = (|| {
            let mut file = options.open(&temp_path)?;
            file.write_all(self.to_key_file().as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&temp_path, path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&temp_path);
        }
        Ok(result?)
    }

    /// The key version (the part after `ed25519:`).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The key id, `ed25519:<version>`.
    pub fn key_id(&self) -> String {
        format!("{ED25519}:{}", self.version)
    }

    /// The public key.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The public key as unpadded base64 (43 characters).
    pub fn public_key_base64(&self) -> String {
        encode_unpadded(self.key.verifying_key().as_bytes())
    }

    /// The underlying Ed25519 key.
    pub fn signing_key(&self) -> &SigningKey {
        &self.key
    }

    /// Signs a JSON object in place as `server_name` with this key.
    pub fn sign_json(
        &self,
        value: &mut Value,
        server_name: &ServerName,
    ) -> Result<(), SigningError> {
        signing::sign_json(value, server_name.as_str(), &self.key_id(), &self.key)
    }
}

impl fmt::Debug for ServerSigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerSigningKey")
            .field("key_id", &self.key_id())
            .field("public_key", &self.public_key_base64())
            .finish_non_exhaustive()
    }
}

/// A retired key, published under `old_verify_keys`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OldVerifyKey {
    /// Its key id, `ed25519:<version>`.
    pub key_id: String,
    /// The public key.
    pub key: VerifyingKey,
    /// When it stopped being used (ms since the epoch).
    pub expired_ts: u64,
}

/// `verify_keys` entry of a key document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyKeyJson {
    /// Unpadded base64 public key.
    pub key: String,
}

/// `old_verify_keys` entry of a key document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OldVerifyKeyJson {
    /// Unpadded base64 public key.
    pub key: String,
    /// When the key stopped being used (ms since the epoch).
    pub expired_ts: u64,
}

/// The fields of a server key document (`GET /_matrix/key/v2/server`), as sent on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerKeysJson {
    /// The server the keys belong to.
    pub server_name: ServerName,
    /// Current keys by key id.
    pub verify_keys: BTreeMap<String, VerifyKeyJson>,
    /// Retired keys by key id.
    #[serde(default)]
    pub old_verify_keys: BTreeMap<String, OldVerifyKeyJson>,
    /// Until when the document may be trusted (ms since the epoch).
    pub valid_until_ts: u64,
}

/// Builds the self-signed key document of `server_name`, signed by every key in `keys`.
pub fn build_key_document(
    server_name: &ServerName,
    keys: &[&ServerSigningKey],
    old_keys: &[OldVerifyKey],
    valid_until_ts: u64,
) -> Result<Value, SigningError> {
    let document = ServerKeysJson {
        server_name: server_name.clone(),
        verify_keys: keys
            .iter()
            .map(|k| {
                (
                    k.key_id(),
                    VerifyKeyJson {
                        key: k.public_key_base64(),
                    },
                )
            })
            .collect(),
        old_verify_keys: old_keys
            .iter()
            .filter(|old| !keys.iter().any(|k| k.key_id() == old.key_id))
            .map(|old| {
                let json = OldVerifyKeyJson {
                    key: encode_unpadded(old.key.as_bytes()),
                    expired_ts: old.expired_ts,
                };
                (old.key_id.clone(), json)
            })
            .collect(),
        valid_until_ts,
    };
    let mut value = serde_json::to_value(document).map_err(|_| SigningError::NotAnObject)?;
    for key in keys {
        key.sign_json(&mut value, server_name)?;
    }
    Ok(value)
}

/// Why a fetched key document was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyDocumentError {
    /// The document does not have the required fields.
    #[error("malformed key document: {0}")]
    Malformed(String),
    /// `server_name` is not the server we asked.
    #[error("key document is for {found}, expected {expected}")]
    WrongServer {
        /// The server we asked.
        expected: String,
        /// The name in the document.
        found: String,
    },
    /// `valid_until_ts` is not in the future.
    #[error("key document expired at {0}")]
    Expired(u64),
    /// No usable ed25519 key is listed.
    #[error("key document lists no ed25519 key")]
    NoKeys,
    /// A listed key is not 32 bytes of base64, or not a valid Ed25519 point.
    #[error("key {0} is malformed")]
    MalformedKey(String),
    /// A key id is listed both as current and as old.
    #[error("key {0} is listed as both current and old")]
    DuplicateKey(String),
    /// A listed key did not sign the document (or its signature is wrong).
    #[error("key {key_id} did not sign the document: {source}")]
    Signature {
        /// The key whose signature failed.
        key_id: String,
        /// What was wrong.
        source: SigningError,
    },
}

/// A key document whose signatures and validity were checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedServerKeys {
    /// The server the keys belong to.
    pub server_name: ServerName,
    /// Current keys by key id (ed25519 only).
    pub verify_keys: BTreeMap<String, VerifyingKey>,
    /// Retired keys by key id with their `expired_ts` (unparseable entries are dropped).
    pub old_verify_keys: BTreeMap<String, (VerifyingKey, u64)>,
    /// `valid_until_ts` as published.
    pub valid_until_ts: u64,
}

impl VerifiedServerKeys {
    /// Until when a cache may use these keys, fetched at `fetched_at_ms`: the published
    /// `valid_until_ts`, capped at seven days after fetching.
    pub fn cache_until(&self, fetched_at_ms: u64) -> u64 {
        self.valid_until_ts
            .min(fetched_at_ms.saturating_add(MAX_KEY_VALIDITY_MS))
    }
}

fn parse_verifying_key(key_id: &str, b64: &str) -> Result<VerifyingKey, KeyDocumentError> {
    let bytes =
        decode_lenient(b64).map_err(|_| KeyDocumentError::MalformedKey(key_id.to_owned()))?;
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|_| KeyDocumentError::MalformedKey(key_id.to_owned()))?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| KeyDocumentError::MalformedKey(key_id.to_owned()))
}

/// Verifies a key document fetched from `expected_server` at time `now_ms`.
///
/// Checks that `server_name` matches, `valid_until_ts > now_ms`, at least one ed25519 key is listed,
/// no key id is both current and old, and every listed ed25519 key signed the document. Keys of
/// other algorithms are ignored.
pub fn verify_key_document(
    document: &Value,
    expected_server: &ServerName,
    now_ms: u64,
) -> Result<VerifiedServerKeys, KeyDocumentError> {
    let parsed: ServerKeysJson = serde_json::from_value(document.clone())
        .map_err(|e| KeyDocumentError::Malformed(e.to_string()))?;
    if &parsed.server_name != expected_server {
        return Err(KeyDocumentError::WrongServer {
            expected: expected_server.to_string(),
            found: parsed.server_name.to_string(),
        });
    }
    if parsed.valid_until_ts <= now_ms {
        return Err(KeyDocumentError::Expired(parsed.valid_until_ts));
    }
    let mut verify_keys = BTreeMap::new();
    for (key_id, entry) in &parsed.verify_keys {
        if parsed.old_verify_keys.contains_key(key_id) {
            return Err(KeyDocumentError::DuplicateKey(key_id.clone()));
        }
        if split_key_id(key_id).map(|(alg, _)| alg) != Some(ED25519) {
            continue;
        }
        let key = parse_verifying_key(key_id, &entry.key)?;
        signing::verify_json(document, expected_server.as_str(), key_id, &key).map_err(
            |source| KeyDocumentError::Signature {
                key_id: key_id.clone(),
                source,
            },
        )?;
        verify_keys.insert(key_id.clone(), key);
    }
    if verify_keys.is_empty() {
        return Err(KeyDocumentError::NoKeys);
    }
    let old_verify_keys = parsed
        .old_verify_keys
        .iter()
        .filter_map(|(key_id, entry)| {
            let key = parse_verifying_key(key_id, &entry.key).ok()?;
            Some((key_id.clone(), (key, entry.expired_ts)))
        })
        .collect();
    Ok(VerifiedServerKeys {
        server_name: parsed.server_name,
        verify_keys,
        old_verify_keys,
        valid_until_ts: parsed.valid_until_ts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn name(s: &str) -> ServerName {
        ServerName::parse(s).unwrap()
    }

    #[test]
    fn key_file_round_trip() {
        let key = ServerSigningKey::parse_key_file(
            "ed25519 a_Abc1 YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1\n",
        )
        .unwrap();
        assert_eq!(key.key_id(), "ed25519:a_Abc1");
        let again = ServerSigningKey::parse_key_file(&key.to_key_file()).unwrap();
        assert_eq!(again.verifying_key(), key.verifying_key());
        assert_eq!(again.version(), "a_Abc1");
    }

    #[test]
    fn key_file_errors() {
        for bad in [
            "",
            "ed25519 a_1",
            "curve25519 a_1 YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1",
            "ed25519 a-1 YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1",
            "ed25519 a_1 AAAA",
            "ed25519 a_1 !!!!",
            "ed25519 a_1 YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1 extra",
        ] {
            assert!(ServerSigningKey::parse_key_file(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn save_and_load_with_private_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing.key");
        let key = ServerSigningKey::generate("a_1").unwrap();
        key.save(&path).unwrap();
        let loaded = ServerSigningKey::load(&path).unwrap();
        assert_eq!(loaded.verifying_key(), key.verifying_key());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Saving again replaces the file.
        let other = ServerSigningKey::generate("a_2").unwrap();
        other.save(&path).unwrap();
        assert_eq!(ServerSigningKey::load(&path).unwrap().version(), "a_2");
    }

    #[test]
    fn debug_is_redacted() {
        let key = ServerSigningKey::from_seed("v1", &[9u8; 32]).unwrap();
        let seed_b64 = encode_unpadded(&[9u8; 32]);
        let debug = format!("{key:?}");
        assert!(debug.contains("ed25519:v1"));
        assert!(!debug.contains(&seed_b64));
        assert!(!debug.contains("[9, 9"));
    }

    #[test]
    fn random_versions_are_valid() {
        let key = ServerSigningKey::generate_random_version();
        assert!(is_valid_key_version(key.version()));
        assert!(key.version().starts_with("a_"));
        assert!(ServerSigningKey::generate("bad version").is_err());
    }

    #[test]
    fn key_document_round_trip() {
        let server = name("hs.example");
        let k1 = ServerSigningKey::generate("a_1").unwrap();
        let k2 = ServerSigningKey::generate("a_2").unwrap();
        let old = ServerSigningKey::generate("old").unwrap();
        let old_keys = [OldVerifyKey {
            key_id: old.key_id(),
            key: old.verifying_key(),
            expired_ts: 5,
        }];
        let doc = build_key_document(&server, &[&k1, &k2], &old_keys, 2_000).unwrap();
        assert_eq!(
            doc["old_verify_keys"]["ed25519:old"]["expired_ts"],
            json!(5)
        );
        assert_eq!(
            doc["signatures"]["hs.example"].as_object().map(|m| m.len()),
            Some(2)
        );
        let verified = verify_key_document(&doc, &server, 1_000).unwrap();
        assert_eq!(verified.verify_keys.len(), 2);
        assert_eq!(
            verified.verify_keys.get("ed25519:a_1"),
            Some(&k1.verifying_key())
        );
        assert_eq!(
            verified.old_verify_keys.get("ed25519:old").map(|o| o.1),
            Some(5)
        );
        assert_eq!(verified.cache_until(1_000), 2_000);
        let mut long_lived = verified.clone();
        long_lived.valid_until_ts = 100 * MAX_KEY_VALIDITY_MS;
        assert_eq!(long_lived.cache_until(1_000), 1_000 + MAX_KEY_VALIDITY_MS);
    }

    #[test]
    fn old_verify_keys_always_present() {
        let server = name("hs.example");
        let k1 = ServerSigningKey::generate("a_1").unwrap();
        let doc = build_key_document(&server, &[&k1], &[], 10).unwrap();
        assert_eq!(doc["old_verify_keys"], json!({}));
    }

    #[test]
    fn key_document_rejections() {
        let server = name("hs.example");
        let k1 = ServerSigningKey::generate("a_1").unwrap();
        let k2 = ServerSigningKey::generate("a_2").unwrap();
        let doc = build_key_document(&server, &[&k1], &[], 2_000).unwrap();

        assert!(matches!(
            verify_key_document(&doc, &name("other.example"), 1_000),
            Err(KeyDocumentError::WrongServer { .. })
        ));
        assert!(matches!(
            verify_key_document(&doc, &server, 2_000),
            Err(KeyDocumentError::Expired(2_000))
        ));

        // A listed key that did not sign.
        let mut unsigned_key = doc.clone();
        unsigned_key["verify_keys"]["ed25519:a_2"] = json!({"key": k2.public_key_base64()});
        assert!(matches!(
            verify_key_document(&unsigned_key, &server, 1_000),
            Err(KeyDocumentError::Signature { .. })
        ));

        // Tampered validity.
        let mut tampered = doc.clone();
        tampered["valid_until_ts"] = json!(9_999_999);
        assert!(matches!(
            verify_key_document(&tampered, &server, 1_000),
            Err(KeyDocumentError::Signature { .. })
        ));

        // Signed by another server name.
        let foreign = build_key_document(&name("evil.example"), &[&k1], &[], 2_000).unwrap();
        let mut relabelled = foreign.clone();
        relabelled["server_name"] = json!("hs.example");
        assert!(verify_key_document(&relabelled, &server, 1_000).is_err());

        // No keys at all.
        let mut empty =
            json!({"server_name": "hs.example", "verify_keys": {}, "valid_until_ts": 2_000});
        k1.sign_json(&mut empty, &server).unwrap();
        assert!(matches!(
            verify_key_document(&empty, &server, 1_000),
            Err(KeyDocumentError::NoKeys)
        ));

        // Malformed shape.
        assert!(matches!(
            verify_key_document(&json!({"server_name": "hs.example"}), &server, 1_000),
            Err(KeyDocumentError::Malformed(_))
        ));
        let mut bad_key = json!({"server_name": "hs.example", "verify_keys": {"ed25519:x": {"key": "AAAA"}}, "valid_until_ts": 2_000});
        k1.sign_json(&mut bad_key, &server).unwrap();
        assert!(matches!(
            verify_key_document(&bad_key, &server, 1_000),
            Err(KeyDocumentError::MalformedKey(_))
        ));
    }
}
