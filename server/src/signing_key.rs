//! The server's Ed25519 signing key file.
//!
//! Format (exact; the federation layer reads the same file): one line
//! `ed25519 <version> <unpadded standard base64 of the 32-byte seed>`, newline-terminated,
//! file mode 0600. `<version>` is `[A-Za-z0-9_]+`; the key ID is `ed25519:<version>`.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine;
use ed25519_dalek::SigningKey;
use rand::Rng;
use zeroize::Zeroizing;

/// Why a key file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The content is not `ed25519 VERSION SEED`.
    #[error("{path}: not a signing key file ({reason})")]
    Format {
        /// The file.
        path: String,
        /// What is wrong.
        reason: &'static str,
    },
}

/// A fresh random key version (`a_` and four letters or digits).
pub fn new_version() -> String {
    let suffix: String = rand::thread_rng()
        .sample_iter(rand::distributions::Alphanumeric)
        .take(4)
        .map(char::from)
        .collect();
    format!("a_{suffix}")
}

/// Writes a new random key to `path` (mode 0600; refuses to overwrite) and returns its key ID
/// (`ed25519:VERSION`).
pub fn generate(path: &Path) -> Result<String, KeyFileError> {
    let io = |source| KeyFileError::Io {
        path: path.display().to_string(),
        source,
    };
    if let Some(parent) = path.parent() {
        if !parent.as_os_str().is_empty() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
    }
    let key = SigningKey::generate(&mut rand_core::OsRng);
    let version = new_version();
    let seed = Zeroizing::new(STANDARD_NO_PAD.encode(key.to_bytes()));
    let line = Zeroizing::new(format!("ed25519 {version} {}\n", seed.as_str()));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    file.write_all(line.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(format!("ed25519:{version}"))
}

/// Reads a key file: `(version, key)`.
pub fn read(path: &Path) -> Result<(String, SigningKey), KeyFileError> {
    let format = |reason| KeyFileError::Format {
        path: path.display().to_string(),
        reason,
    };
    let text =
        Zeroizing::new(
            std::fs::read_to_string(path).map_err(|source| KeyFileError::Io {
                path: path.display().to_string(),
                source,
            })?,
        );
    let mut fields = text.split_whitespace();
    if fields.next() != Some("ed25519") {
        return Err(format("expected the algorithm ed25519"));
    }
    let version = fields.next().ok_or_else(|| format("missing version"))?;
    if version.is_empty()
        || !version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(format("bad version"));
    }
    let seed_b64 = fields.next().ok_or_else(|| format("missing key"))?;
    if fields.next().is_some() {
        return Err(format("trailing data"));
    }
    let seed = Zeroizing::new(
        STANDARD_NO_PAD
            .decode(seed_b64)
            .map_err(|_| format("key is not unpadded base64"))?,
    );
    let seed: Zeroizing<[u8; 32]> = Zeroizing::new(
        seed.as_slice()
            .try_into()
            .map_err(|_| format("key is not 32 bytes"))?,
    );
    Ok((version.to_owned(), SigningKey::from_bytes(&seed)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn generate_then_read() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("keys/signing.key");
        let id = generate(&path)?;
        let mode = std::fs::metadata(&path)?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = std::fs::read_to_string(&path)?;
        let fields: Vec<&str> = text.trim_end().split(' ').collect();
        assert_eq!(fields.len(), 3);
        assert_eq!(fields[0], "ed25519");
        assert_eq!(STANDARD_NO_PAD.decode(fields[2])?.len(), 32);
        let (version, key) = read(&path)?;
        assert_eq!(id, format!("ed25519:{version}"));
        assert_eq!(STANDARD_NO_PAD.encode(key.to_bytes()), fields[2]);
        assert!(generate(&path).is_err(), "must not overwrite");
        std::fs::write(&path, "ed25519 a_x c2hvcnQ\n")?;
        assert!(matches!(read(&path), Err(KeyFileError::Format { .. })));
        Ok(())
    }
}
