//! Creating the server's Ed25519 signing key file for `hushd init` and the development server.
//!
//! The format and the loader belong to the federation crate
//! ([`hush_federation::keys::ServerSigningKey`]): one line
//! `ed25519 <version> <unpadded base64 of the 32-byte seed>`, file mode 0600. This module only
//! adds the operator-facing rules: never overwrite an existing key, create the directory.

use std::path::Path;

use hush_federation::keys::ServerSigningKey;

/// Why a key file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file exists already (a signing key is never overwritten).
    #[error("{0}: already exists; not overwriting a signing key")]
    Exists(String),
    /// File system or format error.
    #[error("{path}: {message}")]
    Other {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
}

/// Writes a new random key to `path` (mode 0600; refuses to overwrite) and returns its key ID
/// (`ed25519:VERSION`).
pub fn generate(path: &Path) -> Result<String, KeyFileError> {
    let other = |message: String| KeyFileError::Other {
        path: path.display().to_string(),
        message,
    };
    if path.exists() {
        return Err(KeyFileError::Exists(path.display().to_string()));
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| other(e.to_string()))?;
    }
    let key = ServerSigningKey::generate_random_version();
    key.save(path).map_err(|e| other(e.to_string()))?;
    Ok(key.key_id())
}

/// Reads a key file.
pub fn read(path: &Path) -> Result<ServerSigningKey, KeyFileError> {
    ServerSigningKey::load(path).map_err(|e| KeyFileError::Other {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD_NO_PAD;
    use base64::Engine;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn generate_then_read_exact_format() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("keys/signing.key");
        let id = generate(&path)?;
        let mode = std::fs::metadata(&path)?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = std::fs::read_to_string(&path)?;
        assert!(text.ends_with('\n') && text.lines().count() == 1);
        let fields: Vec<&str> = text.trim_end().split(' ').collect();
        assert_eq!(fields.len(), 3);
        assert_eq!(fields[0], "ed25519");
        assert!(!fields[2].ends_with('='));
        assert_eq!(STANDARD_NO_PAD.decode(fields[2])?.len(), 32);
        let key = read(&path)?;
        assert_eq!(id, format!("ed25519:{}", fields[1]));
        assert_eq!(key.key_id(), id);
        assert!(matches!(generate(&path), Err(KeyFileError::Exists(_))));
        assert_eq!(std::fs::read_to_string(&path)?, text, "must not overwrite");
        std::fs::write(&path, "ed25519 a_x c2hvcnQ\n")?;
        assert!(read(&path).is_err());
        Ok(())
    }
}
