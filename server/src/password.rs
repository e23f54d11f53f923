//! Password hashing (argon2id), run off the async runtime.
//!
//! Hashes are PHC strings (`$argon2id$v=19$m=19456,t=2,p=1$...`) with a random salt; the
//! parameters are the argon2 crate's defaults (the OWASP recommendation). Plaintext passwords
//! are taken by value and zeroized after use; hashing runs on the blocking thread pool so it
//! never stalls the request workers.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use zeroize::Zeroizing;

/// Why hashing or verifying failed (never because the password was wrong).
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// The hasher rejected its input (e.g. a password longer than argon2 accepts).
    #[error("password could not be hashed")]
    Hash,
    /// The stored hash is not a valid PHC string.
    #[error("stored password hash is malformed")]
    MalformedHash,
    /// The blocking task panicked or was cancelled.
    #[error("password hashing task failed")]
    Task,
}

/// Hashes `password` with argon2id and a fresh random salt.
pub async fn hash_password(password: String) -> Result<String, PasswordError> {
    let password = Zeroizing::new(password);
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut rand_core::OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .map_err(|_| PasswordError::Hash)
    })
    .await
    .map_err(|_| PasswordError::Task)?
}

/// Checks `password` against a stored PHC `hash`: `Ok(false)` for a wrong password.
pub async fn verify_password(password: String, hash: String) -> Result<bool, PasswordError> {
    let password = Zeroizing::new(password);
    tokio::task::spawn_blocking(move || {
        let parsed = PasswordHash::new(&hash).map_err(|_| PasswordError::MalformedHash)?;
        match Argon2::default().verify_password(password.as_bytes(), &parsed) {
            Ok(()) => Ok(true),
            Err(argon2::password_hash::Error::Password) => Ok(false),
            Err(_) => Err(PasswordError::MalformedHash),
        }
    })
    .await
    .map_err(|_| PasswordError::Task)?
}

/// Like [`verify_password`], but for an account that may not exist or has no password: with
/// `None` it still spends the time of one verification (against a fixed dummy hash) and returns
/// `Ok(false)`, so response timing does not reveal which user IDs exist.
pub async fn verify_password_or_dummy(
    password: String,
    hash: Option<String>,
) -> Result<bool, PasswordError> {
    match hash {
        Some(hash) => verify_password(password, hash).await,
        None => {
            // Hashing with a fresh salt costs the same as a verification with the same parameters.
            hash_password(password).await?;
            Ok(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_and_verify() {
        let hash = hash_password("correct horse".to_owned()).await.ok();
        let Some(hash) = hash else {
            panic!("hashing failed");
        };
        assert!(hash.starts_with("$argon2id$"));
        assert!(!hash.contains("correct horse"));
        assert_eq!(
            verify_password("correct horse".to_owned(), hash.clone())
                .await
                .ok(),
            Some(true)
        );
        assert_eq!(
            verify_password("wrong".to_owned(), hash.clone()).await.ok(),
            Some(false)
        );
        assert!(verify_password("x".to_owned(), "not a hash".to_owned())
            .await
            .is_err());
        assert_eq!(
            verify_password_or_dummy("x".to_owned(), None).await.ok(),
            Some(false)
        );
        // Same password, different salt.
        let again = hash_password("correct horse".to_owned()).await.ok();
        assert_ne!(again, Some(hash));
    }
}
