//! `hushd admin ...`: operator commands that act on the configured database.
//!
//! Each function is one command: it validates its input, does the work through the [`Store`],
//! and returns plain data or a typed [`AdminError`] whose message can be printed as is (it never
//! contains a password or a hash). The command-line wiring lives in `main.rs`.

use crate::password::{self, PasswordError};
use crate::store::{DeviceRow, Millis, RegistrationTokenRow, Store, StoreError};

/// Longest user ID in bytes (Matrix limit).
pub const MAX_USER_ID_BYTES: usize = 255;
/// Longest registration token.
pub const MAX_REGISTRATION_TOKEN_LEN: usize = 64;
/// Length of generated registration tokens.
const GENERATED_TOKEN_LEN: usize = 24;

/// Why an admin command failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The user name is not a valid localpart or user ID of this server.
    #[error("invalid user name: {0}")]
    InvalidUser(String),
    /// The user ID is taken.
    #[error("user {0} already exists")]
    UserExists(String),
    /// No such account.
    #[error("user {0} does not exist")]
    UserNotFound(String),
    /// The password is unusable (e.g. empty).
    #[error("invalid password: {0}")]
    InvalidPassword(&'static str),
    /// The registration token or its parameters are malformed.
    #[error("invalid registration token: {0}")]
    InvalidToken(String),
    /// The registration token exists already.
    #[error("registration token already exists")]
    TokenExists,
    /// No such registration token.
    #[error("registration token does not exist")]
    TokenNotFound,
    /// Hashing failed.
    #[error(transparent)]
    Password(#[from] PasswordError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Current time in milliseconds since the Unix epoch.
fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Lower-cases a localpart and checks it: non-empty, only `a-z 0-9 . _ = - / +`.
pub fn normalize_localpart(localpart: &str) -> Result<String, AdminError> {
    let lower = localpart.to_lowercase();
    if lower.is_empty() {
        return Err(AdminError::InvalidUser("empty localpart".into()));
    }
    if let Some(bad) = lower
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '_' | '=' | '-' | '/' | '+'))
    {
        return Err(AdminError::InvalidUser(format!(
            "character {bad:?} is not allowed (use a-z 0-9 . _ = - / +)"
        )));
    }
    Ok(lower)
}

/// Turns `alice`, `@alice` or `@alice:server_name` into the full user ID of a local user.
pub fn local_user_id(server_name: &str, user: &str) -> Result<String, AdminError> {
    let bare = user.strip_prefix('@').unwrap_or(user);
    let localpart = match bare.split_once(':') {
        Some((localpart, server)) if server == server_name => localpart,
        Some((_, server)) => {
            return Err(AdminError::InvalidUser(format!(
                "{user} belongs to {server}, not to this server ({server_name})"
            )))
        }
        None => bare,
    };
    let user_id = format!("@{}:{server_name}", normalize_localpart(localpart)?);
    if user_id.len() > MAX_USER_ID_BYTES {
        return Err(AdminError::InvalidUser(format!(
            "user ID longer than {MAX_USER_ID_BYTES} bytes"
        )));
    }
    Ok(user_id)
}

/// Creates an account. `user` is a localpart (or a full local user ID); upper case is folded.
/// With `password` (hashed with argon2id) the user can log in; without it, only after
/// [`set_password`]. Returns the full user ID.
pub async fn create_user(
    store: &Store,
    server_name: &str,
    user: &str,
    password: Option<String>,
) -> Result<String, AdminError> {
    let user_id = local_user_id(server_name, user)?;
    let hash = match password {
        Some(password) if password.is_empty() => {
            return Err(AdminError::InvalidPassword("empty"));
        }
        Some(password) => Some(password::hash_password(password).await?),
        None => None,
    };
    match store
        .create_user(&user_id, hash.as_deref(), None, now_ms())
        .await
    {
        Ok(()) => Ok(user_id),
        Err(StoreError::Conflict) => Err(AdminError::UserExists(user_id)),
        Err(e) => Err(e.into()),
    }
}

/// Sets a new password for an existing, active account. Returns the full user ID.
pub async fn set_password(
    store: &Store,
    server_name: &str,
    user: &str,
    password: String,
) -> Result<String, AdminError> {
    let user_id = local_user_id(server_name, user)?;
    if password.is_empty() {
        return Err(AdminError::InvalidPassword("empty"));
    }
    match store.get_user(&user_id).await? {
        Some(row) if !row.deactivated => {}
        _ => return Err(AdminError::UserNotFound(user_id)),
    }
    let hash = password::hash_password(password).await?;
    store.set_password_hash(&user_id, &hash).await?;
    Ok(user_id)
}

/// Deactivates an account: it can no longer log in, and all its devices, tokens, keys and
/// mailboxes are deleted. Returns the full user ID.
pub async fn deactivate_user(
    store: &Store,
    server_name: &str,
    user: &str,
) -> Result<String, AdminError> {
    let user_id = local_user_id(server_name, user)?;
    match store.deactivate_user(&user_id, now_ms()).await {
        Ok(()) => Ok(user_id),
        Err(StoreError::NotFound) => Err(AdminError::UserNotFound(user_id)),
        Err(e) => Err(e.into()),
    }
}

/// Lists the devices of an account (`UserNotFound` if there is no such account).
pub async fn list_devices(
    store: &Store,
    server_name: &str,
    user: &str,
) -> Result<Vec<DeviceRow>, AdminError> {
    let user_id = local_user_id(server_name, user)?;
    if store.get_user(&user_id).await?.is_none() {
        return Err(AdminError::UserNotFound(user_id));
    }
    Ok(store.list_devices(&user_id).await?)
}

/// A new random registration token (24 letters and digits).
pub fn generate_registration_token() -> String {
    use rand::Rng;
    rand::thread_rng()
        .sample_iter(rand::distributions::Alphanumeric)
        .take(GENERATED_TOKEN_LEN)
        .map(char::from)
        .collect()
}

/// Creates a registration token: `token` (1-64 of `A-Z a-z 0-9 . _ ~ -`) or a generated one,
/// usable `uses_allowed` times (`None` = unlimited, otherwise at least 1) until `expiry_ts`
/// (ms since the epoch; `None` = never, otherwise in the future). Returns the stored row.
pub async fn create_registration_token(
    store: &Store,
    token: Option<&str>,
    uses_allowed: Option<i64>,
    expiry_ts: Option<Millis>,
) -> Result<RegistrationTokenRow, AdminError> {
    let token = match token {
        Some(token) => {
            validate_registration_token(token)?;
            token.to_owned()
        }
        None => generate_registration_token(),
    };
    if uses_allowed.is_some_and(|n| n < 1) {
        return Err(AdminError::InvalidToken("uses must be at least 1".into()));
    }
    let now = now_ms();
    if expiry_ts.is_some_and(|t| t <= now) {
        return Err(AdminError::InvalidToken("expiry is in the past".into()));
    }
    let row = RegistrationTokenRow {
        token,
        uses_allowed,
        completed: 0,
        expiry_ts,
    };
    match store.create_registration_token(&row, now).await {
        Ok(()) => Ok(row),
        Err(StoreError::Conflict) => Err(AdminError::TokenExists),
        Err(e) => Err(e.into()),
    }
}

/// Checks the registration token syntax (`[A-Za-z0-9._~-]{1,64}`).
pub fn validate_registration_token(token: &str) -> Result<(), AdminError> {
    if token.is_empty() || token.len() > MAX_REGISTRATION_TOKEN_LEN {
        return Err(AdminError::InvalidToken(format!(
            "must be 1 to {MAX_REGISTRATION_TOKEN_LEN} characters"
        )));
    }
    if !token
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '~' | '-'))
    {
        return Err(AdminError::InvalidToken(
            "only A-Z a-z 0-9 . _ ~ - are allowed".into(),
        ));
    }
    Ok(())
}

/// Lists every registration token with its usage.
pub async fn list_registration_tokens(
    store: &Store,
) -> Result<Vec<RegistrationTokenRow>, AdminError> {
    Ok(store.list_registration_tokens().await?)
}

/// Deletes a registration token.
pub async fn revoke_registration_token(store: &Store, token: &str) -> Result<(), AdminError> {
    match store.revoke_registration_token(token).await {
        Ok(()) => Ok(()),
        Err(StoreError::NotFound) => Err(AdminError::TokenNotFound),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn localparts() {
        assert_eq!(normalize_localpart("Alice").ok().as_deref(), Some("alice"));
        assert_eq!(
            normalize_localpart("a.b_c=d-e/f+g9").ok().as_deref(),
            Some("a.b_c=d-e/f+g9")
        );
        assert!(normalize_localpart("").is_err());
        assert!(normalize_localpart("al ice").is_err());
        assert!(normalize_localpart("al:ice").is_err());
        assert!(normalize_localpart("ålice").is_err());
    }

    #[test]
    fn user_ids() {
        let hs = "hs.test:8448";
        assert_eq!(
            local_user_id(hs, "Bob").ok().as_deref(),
            Some("@bob:hs.test:8448")
        );
        assert_eq!(
            local_user_id(hs, "@bob").ok().as_deref(),
            Some("@bob:hs.test:8448")
        );
        assert_eq!(
            local_user_id(hs, "@bob:hs.test:8448").ok().as_deref(),
            Some("@bob:hs.test:8448")
        );
        assert!(local_user_id(hs, "@bob:other.test").is_err());
        assert!(local_user_id(hs, &"x".repeat(250)).is_err());
    }

    #[test]
    fn tokens() {
        assert!(validate_registration_token("abc-DEF_1.2~").is_ok());
        assert!(validate_registration_token("").is_err());
        assert!(validate_registration_token("a b").is_err());
        assert!(validate_registration_token(&"a".repeat(65)).is_err());
        let generated = generate_registration_token();
        assert_eq!(generated.len(), GENERATED_TOKEN_LEN);
        assert!(validate_registration_token(&generated).is_ok());
        assert_ne!(generated, generate_registration_token());
    }
}
