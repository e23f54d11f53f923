//! The seam to password hashing (argon2id, run off the async runtime).
//!
//! `crate::password` is the project's shared helper; until it has landed this module hashes with
//! the `argon2` crate directly. Handlers only call [`hash`] and [`verify`].

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand::rngs::OsRng;
use zeroize::Zeroizing;

use crate::error::ApiError;

/// Hashes a password into an argon2id PHC string.
pub async fn hash(password: String) -> Result<String, ApiError> {
    let password = Zeroizing::new(password);
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| ApiError::internal(format!("password hashing failed: {e}")))
    })
    .await
    .map_err(ApiError::internal)?
}

/// Checks a password against a stored PHC string; `false` on mismatch or a malformed hash.
pub async fn verify(password: String, phc: String) -> bool {
    let password = Zeroizing::new(password);
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&phc)
            .map(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false)
}
