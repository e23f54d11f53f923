//! Identifier rules (user IDs, localparts, opaque IDs) and random identifiers from the OS CSPRNG.

use rand::distributions::{Alphanumeric, Uniform};
use rand::rngs::OsRng;
use rand::Rng;
use sha2::{Digest, Sha256};

/// Longest user ID in bytes (Matrix grammar).
pub const MAX_USER_ID_LEN: usize = 255;
/// Longest opaque ID (transaction IDs, device IDs chosen by clients).
pub const MAX_OPAQUE_ID_LEN: usize = 255;

/// Why a requested username was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsernameError {
    /// Empty, too long, or characters outside `a-z 0-9 . _ = - / +`.
    #[error("{0}")]
    Invalid(&'static str),
}

/// Turns what a user typed (`Alice`, `@alice:hs`) into a normalised localpart: lower-cased,
/// `@` and `:server` removed when the server part is ours.
pub fn normalise_localpart(input: &str, server_name: &str) -> Result<String, UsernameError> {
    let lowered = input.to_lowercase();
    let localpart = match lowered.strip_prefix('@') {
        Some(rest) => match rest.split_once(':') {
            Some((local, server)) if server == server_name.to_lowercase() => local.to_owned(),
            Some(_) => return Err(UsernameError::Invalid("User ID is not on this server")),
            None => rest.to_owned(),
        },
        None => lowered,
    };
    validate_localpart(&localpart, server_name)?;
    Ok(localpart)
}

/// Checks a localpart against the Matrix grammar and the total user-ID length.
pub fn validate_localpart(localpart: &str, server_name: &str) -> Result<(), UsernameError> {
    if localpart.is_empty() {
        return Err(UsernameError::Invalid("Username must not be empty"));
    }
    let allowed = |c: char| {
        c.is_ascii_lowercase()
            || c.is_ascii_digit()
            || matches!(c, '.' | '_' | '=' | '-' | '/' | '+')
    };
    if !localpart.chars().all(allowed) {
        return Err(UsernameError::Invalid(
            "Username may only contain a-z, 0-9 and . _ = - / +",
        ));
    }
    if localpart.len() + server_name.len() + 2 > MAX_USER_ID_LEN {
        return Err(UsernameError::Invalid("Username is too long"));
    }
    Ok(())
}

/// `@localpart:server_name`.
pub fn user_id(localpart: &str, server_name: &str) -> String {
    format!("@{localpart}:{server_name}")
}

/// The server part of a user ID (split at the first colon; the server may carry a port).
pub fn server_of(user_id: &str) -> Option<&str> {
    let rest = user_id.strip_prefix('@')?;
    let (local, server) = rest.split_once(':')?;
    if local.is_empty() || server.is_empty() {
        return None;
    }
    Some(server)
}

/// Whether `id` is a usable opaque ID: 1..=255 chars of `[0-9A-Za-z-._~]`.
pub fn is_opaque_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_OPAQUE_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// A new device ID: 10 upper-case letters.
pub fn new_device_id() -> String {
    let letters = Uniform::new_inclusive(b'A', b'Z');
    OsRng
        .sample_iter(letters)
        .take(10)
        .map(char::from)
        .collect()
}

/// A new access token: `hush_` and 40 alphanumerics (about 238 bits) from the OS CSPRNG.
pub fn new_access_token() -> String {
    let body: String = OsRng
        .sample_iter(&Alphanumeric)
        .take(40)
        .map(char::from)
        .collect();
    format!("hush_{body}")
}

/// A random alphanumeric string (UIA session IDs, federation `message_id`s).
pub fn random_alphanumeric(len: usize) -> String {
    OsRng
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// SHA-256 of an access token; only this is stored and looked up.
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn localparts_are_downcased_and_checked() {
        assert_eq!(
            normalise_localpart("Alice", "hs").ok().as_deref(),
            Some("alice")
        );
        assert_eq!(
            normalise_localpart("@Bob:hs", "hs").ok().as_deref(),
            Some("bob")
        );
        assert!(normalise_localpart("@bob:other", "hs").is_err());
        assert!(normalise_localpart("q 3", "hs").is_err());
        for bad in [
            "!", "\"", ":", "?", "\\", "@", "[", "]", "{", "|", "}", "£", "é", "\n", "'",
        ] {
            assert!(
                normalise_localpart(&format!("a{bad}b"), "hs").is_err(),
                "{bad:?}"
            );
        }
        assert!(normalise_localpart("a.b_c=d-e/f+g3", "hs").is_ok());
        assert!(normalise_localpart("", "hs").is_err());
        assert!(normalise_localpart(&"a".repeat(300), "hs").is_err());
    }

    #[test]
    fn servers_split_at_first_colon() {
        assert_eq!(server_of("@a:localhost:8448"), Some("localhost:8448"));
        assert_eq!(server_of("a:b"), None);
        assert_eq!(server_of("@:b"), None);
    }

    #[test]
    fn random_ids_have_the_right_shape() {
        let d = new_device_id();
        assert_eq!(d.len(), 10);
        assert!(d.bytes().all(|b| b.is_ascii_uppercase()));
        assert_ne!(new_access_token(), new_access_token());
        assert!(is_opaque_id("abc-._~1"));
        assert!(!is_opaque_id("a b"));
        assert!(!is_opaque_id(""));
    }
}
