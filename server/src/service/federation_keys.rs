//! This server's signing keys: the current key, the retired ones, the published key document and
//! `hushd keys rotate`.
//!
//! The current key lives in `signing_key_path` (`ed25519 <version> <seed>`). Retired public keys
//! live next to it in `<signing_key_path>.old`, one per line: `ed25519 <version> <public key>
//! <expired_ts>`. They are published under `old_verify_keys` so signatures made before a
//! rotation can still be checked, but no request signed by them is accepted any more. Both files
//! belong in every backup.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ed25519_dalek::VerifyingKey;
use hush_federation::base64::{decode_lenient, encode_unpadded};
use hush_federation::ids::ServerName;
use hush_federation::keys::{
    build_key_document, is_valid_key_version, unix_millis_now, OldVerifyKey, ServerSigningKey,
};
use serde_json::Value;

/// The current signing key and the retired public keys.
#[derive(Debug)]
pub struct ServerKeys {
    /// The key that signs everything now.
    pub current: Arc<ServerSigningKey>,
    /// Retired keys, oldest first.
    pub old: Vec<OldVerifyKey>,
}

/// Where the retired keys of `signing_key_path` are kept.
pub fn old_keys_path(signing_key_path: &Path) -> PathBuf {
    let mut name = signing_key_path.as_os_str().to_owned();
    name.push(".old");
    PathBuf::from(name)
}

fn parse_old_line(line: &str) -> Result<OldVerifyKey, String> {
    let parts: Vec<&str> = line.split_whitespace().collect();
    let [alg, version, public, expired] = parts.as_slice() else {
        return Err("expected `ed25519 <version> <public key> <expired_ts>`".to_owned());
    };
    if *alg != "ed25519" || !is_valid_key_version(version) {
        return Err(format!("bad key id {alg}:{version}"));
    }
    let bytes: [u8; 32] = decode_lenient(public)
        .map_err(|e| e.to_string())?
        .try_into()
        .map_err(|_| "public key is not 32 bytes".to_owned())?;
    let key = VerifyingKey::from_bytes(&bytes).map_err(|e| e.to_string())?;
    let expired_ts = expired.parse::<u64>().map_err(|e| e.to_string())?;
    Ok(OldVerifyKey {
        key_id: format!("ed25519:{version}"),
        key,
        expired_ts,
    })
}

/// Loads the current key and the retired keys (a missing `.old` file means none).
pub fn load(signing_key_path: &Path) -> Result<ServerKeys, String> {
    let current = Arc::new(
        ServerSigningKey::load(signing_key_path)
            .map_err(|e| format!("{}: {e}", signing_key_path.display()))?,
    );
    let old_path = old_keys_path(signing_key_path);
    let old = match std::fs::read_to_string(&old_path) {
        Ok(text) => text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| parse_old_line(l).map_err(|e| format!("{}: {e}", old_path.display())))
            .collect::<Result<Vec<_>, _>>()?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(format!("{}: {e}", old_path.display())),
    };
    Ok(ServerKeys { current, old })
}

/// Replaces the signing key with a new random one and appends the old public key to the
/// retired keys. Returns `(old key id, new key id)`. The running server picks the new key up
/// when it is restarted.
pub fn rotate(signing_key_path: &Path) -> Result<(String, String), String> {
    let keys = load(signing_key_path)?;
    let mut new = ServerSigningKey::generate_random_version();
    while new.key_id() == keys.current.key_id() || keys.old.iter().any(|o| o.key_id == new.key_id())
    {
        new = ServerSigningKey::generate_random_version();
    }
    // The retired key is recorded first: if we stop half-way the old key is still current and
    // merely listed twice, which the key document filters out.
    let old_path = old_keys_path(signing_key_path);
    let line = format!(
        "ed25519 {} {} {}\n",
        keys.current.version(),
        keys.current.public_key_base64(),
        unix_millis_now()
    );
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&old_path)
        .map_err(|e| format!("{}: {e}", old_path.display()))?;
    file.write_all(line.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("{}: {e}", old_path.display()))?;
    new.save(signing_key_path)
        .map_err(|e| format!("{}: {e}", signing_key_path.display()))?;
    Ok((keys.current.key_id(), new.key_id()))
}

/// The self-signed key document (`GET /_matrix/key/v2/server`), valid for `valid_for_ms`.
pub fn key_document(
    server_name: &ServerName,
    keys: &ServerKeys,
    valid_for_ms: u64,
) -> Result<Value, String> {
    let until = unix_millis_now().saturating_add(valid_for_ms.max(1));
    build_key_document(server_name, &[keys.current.as_ref()], &keys.old, until)
        .map_err(|e| e.to_string())
}

/// The public key of `key` in unpadded base64 (for `hushd keys` output).
pub fn public_key_text(key: &VerifyingKey) -> String {
    encode_unpadded(key.as_bytes())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use hush_federation::keys::verify_key_document;

    #[test]
    fn rotation_keeps_old_public_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing.key");
        ServerSigningKey::generate("first")
            .unwrap()
            .save(&path)
            .unwrap();
        let (old_id, new_id) = rotate(&path).unwrap();
        assert_eq!(old_id, "ed25519:first");
        let (older_id, newest_id) = rotate(&path).unwrap();
        assert_eq!(older_id, new_id);
        let keys = load(&path).unwrap();
        assert_eq!(keys.current.key_id(), newest_id);
        let old_ids: Vec<_> = keys.old.iter().map(|o| o.key_id.clone()).collect();
        assert_eq!(old_ids, vec![old_id.clone(), new_id.clone()]);

        let name = ServerName::parse("hs.example").unwrap();
        let doc = key_document(&name, &keys, 60_000).unwrap();
        let verified = verify_key_document(&doc, &name, unix_millis_now()).unwrap();
        assert!(verified.verify_keys.contains_key(&newest_id));
        assert!(verified.old_verify_keys.contains_key(&old_id));
        assert!(verified.old_verify_keys.contains_key(&new_id));
        assert_eq!(doc["old_verify_keys"].as_object().unwrap().len(), 2);
    }

    #[test]
    fn broken_old_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing.key");
        ServerSigningKey::generate("k")
            .unwrap()
            .save(&path)
            .unwrap();
        std::fs::write(old_keys_path(&path), "ed25519 x notbase64 12\n").unwrap();
        assert!(load(&path).is_err());
    }
}
