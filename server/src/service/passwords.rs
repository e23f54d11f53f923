//! The seam to password hashing (`crate::password`: argon2id, run off the async runtime).

use crate::error::ApiError;

/// Hashes a password into an argon2id PHC string.
pub async fn hash(password: String) -> Result<String, ApiError> {
    crate::password::hash_password(password)
        .await
        .map_err(ApiError::internal)
}

/// Checks a password against a stored PHC string. With `None` (unknown user, no password) it
/// spends the same time and returns `false`, so timing does not reveal which accounts exist.
pub async fn verify(password: String, phc: Option<String>) -> Result<bool, ApiError> {
    crate::password::verify_password_or_dummy(password, phc)
        .await
        .map_err(ApiError::internal)
}
