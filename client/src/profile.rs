//! Profiles: one directory (and one store) per account on this machine, chosen with
//! `--profile` / `HUSH_PROFILE` under `--data-dir` / `HUSH_DATA_DIR`; plus reading the
//! passphrase and passwords (file, environment or terminal prompt).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::vault::Passphrase;

/// The default data directory: `$XDG_DATA_HOME/hush` or `~/.local/share/hush`.
pub fn default_data_dir() -> PathBuf {
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("hush");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/share/hush"),
        None => PathBuf::from(".hush"),
    }
}

/// The directory of a profile. Profile names are restricted to `[A-Za-z0-9._-]`.
pub fn profile_dir(data_dir: &Path, profile: &str) -> Result<PathBuf, String> {
    let ok = !profile.is_empty()
        && profile.len() <= 64
        && !profile.starts_with('.')
        && profile
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !ok {
        return Err(format!(
            "invalid profile name {profile:?} (use letters, digits, . _ -)"
        ));
    }
    Ok(data_dir.join("profiles").join(profile))
}

/// Reads the first line of a file as a secret.
pub fn read_secret_file(path: &Path) -> Result<Zeroizing<String>, String> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
    );
    let line = text.lines().next().unwrap_or_default();
    Ok(Zeroizing::new(line.to_owned()))
}

/// Where the store passphrase comes from.
#[derive(Debug, Clone, Default)]
pub struct PassphraseSource {
    /// `--passphrase-file`.
    pub file: Option<PathBuf>,
}

impl PassphraseSource {
    /// Reads the passphrase: `--passphrase-file`, then `HUSH_PASSPHRASE`, then a prompt
    /// (twice when `confirm`, for a new store).
    pub fn read(&self, confirm: bool) -> Result<Passphrase, String> {
        if let Some(path) = &self.file {
            return Ok(Passphrase::new(read_secret_file(path)?.to_string()));
        }
        if let Ok(value) = std::env::var("HUSH_PASSPHRASE") {
            return Ok(Passphrase::new(value));
        }
        if !std::io::stdin().is_terminal() {
            return Err(
                "no passphrase: set HUSH_PASSPHRASE, use --passphrase-file, or run in a terminal"
                    .into(),
            );
        }
        let first = Zeroizing::new(
            rpassword::prompt_password("Passphrase for the local store: ")
                .map_err(|e| format!("cannot read the passphrase: {e}"))?,
        );
        if confirm {
            let second = Zeroizing::new(
                rpassword::prompt_password("Repeat the passphrase: ")
                    .map_err(|e| format!("cannot read the passphrase: {e}"))?,
            );
            if first != second {
                return Err("the passphrases do not match".into());
            }
            if first.is_empty() {
                return Err("the passphrase must not be empty".into());
            }
        }
        Ok(Passphrase::new(first.to_string()))
    }
}

/// Reads an account password from a file or a prompt.
pub fn read_password(file: Option<&Path>, prompt: &str) -> Result<Zeroizing<String>, String> {
    if let Some(path) = file {
        return read_secret_file(path);
    }
    if !std::io::stdin().is_terminal() {
        return Err("no password: use --password-file, or run in a terminal".into());
    }
    rpassword::prompt_password(prompt)
        .map(Zeroizing::new)
        .map_err(|e| format!("cannot read the password: {e}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn profile_names_are_checked() {
        let base = Path::new("/d");
        assert_eq!(
            profile_dir(base, "alice-2").ok(),
            Some(PathBuf::from("/d/profiles/alice-2"))
        );
        assert!(profile_dir(base, "../x").is_err());
        assert!(profile_dir(base, "").is_err());
        assert!(profile_dir(base, "a/b").is_err());
    }
}
