//! Accounts, registration tokens and user-interactive auth sessions.

use sqlx::Row;

use super::{
    purge_device, record_device_list_change, with_pools, with_tx, with_writer, Millis,
    RegistrationTokenRow, Store, StoreError, StoreResult, UserRow,
};

impl Store {
    // ---- accounts -------------------------------------------------------------------------
    /// Creates an account; `Conflict` if the user ID is taken. With `token`, atomically
    /// checks and consumes one use of that registration token (`NotFound` if the token is
    /// unknown, expired or used up).
    pub async fn create_user(
        &self,
        user_id: &str,
        password_hash: Option<&str>,
        token: Option<&str>,
        now: Millis,
    ) -> StoreResult<()> {
        with_tx!(self, |tx, pg| {
            let inserted = sqlx::query(
                "INSERT INTO users (user_id, password_hash, deactivated, created_ts) \
                 VALUES ($1, $2, FALSE, $3) ON CONFLICT (user_id) DO NOTHING",
            )
            .bind(user_id)
            .bind(password_hash)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if inserted == 0 {
                return Err(StoreError::Conflict);
            }
            if let Some(token) = token {
                // The WHERE clause is re-checked under the row lock, so concurrent
                // registrations cannot overspend a token.
                let consumed = sqlx::query(
                    "UPDATE registration_tokens SET completed = completed + 1 \
                     WHERE token = $1 AND (expiry_ts IS NULL OR expiry_ts > $2) \
                     AND (uses_allowed IS NULL OR completed < uses_allowed)",
                )
                .bind(token)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if consumed == 0 {
                    return Err(StoreError::NotFound);
                }
            }
        })
    }

    /// Looks up an account.
    pub async fn get_user(&self, user_id: &str) -> StoreResult<Option<UserRow>> {
        with_pools!(self, |r, pg| {
            let row = sqlx::query(
                "SELECT user_id, password_hash, deactivated FROM users WHERE user_id = $1",
            )
            .bind(user_id)
            .fetch_optional(r)
            .await?;
            row.map(|row| {
                Ok(UserRow {
                    user_id: row.try_get("user_id")?,
                    password_hash: row.try_get("password_hash")?,
                    deactivated: row.try_get("deactivated")?,
                })
            })
            .transpose()
            .map_err(|e: sqlx::Error| StoreError::Database(e))
        })
    }

    /// Marks an account deactivated and deletes all its devices, tokens, keys and mailboxes.
    ///
    /// The password hash is cleared too; `NotFound` if the account does not exist.
    pub async fn deactivate_user(&self, user_id: &str, now: Millis) -> StoreResult<()> {
        let out: StoreResult<_> = with_tx!(self, |tx, pg| {
            let updated = sqlx::query(
                "UPDATE users SET deactivated = TRUE, password_hash = NULL WHERE user_id = $1",
            )
            .bind(user_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if updated == 0 {
                return Err(StoreError::NotFound);
            }
            let devices: Vec<String> =
                sqlx::query_scalar("SELECT device_id FROM devices WHERE user_id = $1")
                    .bind(user_id)
                    .fetch_all(&mut *tx)
                    .await?;
            for device_id in &devices {
                let _existed = purge_device!(tx, user_id, device_id);
            }
            sqlx::query("DELETE FROM device_list_interest WHERE observer = $1")
                .bind(user_id)
                .execute(&mut *tx)
                .await?;
            if !devices.is_empty() {
                record_device_list_change!(tx, user_id, now);
            }
        });
        // Access tokens may have been deleted (here and, through the database, in every other
        // process).
        self.tokens_revoked().await;
        out
    }

    /// Replaces the password hash; `NotFound` if the account does not exist.
    pub async fn set_password_hash(&self, user_id: &str, hash: &str) -> StoreResult<()> {
        with_writer!(self, |w, pg| {
            let updated = sqlx::query("UPDATE users SET password_hash = $2 WHERE user_id = $1")
                .bind(user_id)
                .bind(hash)
                .execute(w)
                .await?
                .rows_affected();
            if updated == 0 {
                Err(StoreError::NotFound)
            } else {
                Ok(())
            }
        })
    }

    // ---- registration tokens ----------------------------------------------------------------
    /// Creates a registration token; `Conflict` if it exists. `row.completed` is stored as given
    /// (normally 0).
    pub async fn create_registration_token(
        &self,
        row: &RegistrationTokenRow,
        now: Millis,
    ) -> StoreResult<()> {
        with_writer!(self, |w, pg| {
            let inserted = sqlx::query(
                "INSERT INTO registration_tokens (token, uses_allowed, completed, expiry_ts, created_ts) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (token) DO NOTHING",
            )
            .bind(&row.token)
            .bind(row.uses_allowed)
            .bind(row.completed)
            .bind(row.expiry_ts)
            .bind(now)
            .execute(w)
            .await?
            .rows_affected();
            if inserted == 0 {
                Err(StoreError::Conflict)
            } else {
                Ok(())
            }
        })
    }

    /// Lists every token, ordered by token string.
    pub async fn list_registration_tokens(&self) -> StoreResult<Vec<RegistrationTokenRow>> {
        with_pools!(self, |r, pg| {
            let rows = sqlx::query(
                "SELECT token, uses_allowed, completed, expiry_ts FROM registration_tokens ORDER BY token",
            )
            .fetch_all(r)
            .await?;
            rows.iter()
                .map(|row| {
                    Ok(RegistrationTokenRow {
                        token: row.try_get("token")?,
                        uses_allowed: row.try_get("uses_allowed")?,
                        completed: row.try_get("completed")?,
                        expiry_ts: row.try_get("expiry_ts")?,
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()
                .map_err(StoreError::Database)
        })
    }

    /// Deletes a token; `NotFound` if unknown.
    pub async fn revoke_registration_token(&self, token: &str) -> StoreResult<()> {
        with_writer!(self, |w, pg| {
            let deleted = sqlx::query("DELETE FROM registration_tokens WHERE token = $1")
                .bind(token)
                .execute(w)
                .await?
                .rows_affected();
            if deleted == 0 {
                Err(StoreError::NotFound)
            } else {
                Ok(())
            }
        })
    }

    /// Whether a token is currently usable (exists, not expired, uses left).
    pub async fn registration_token_valid(&self, token: &str, now: Millis) -> StoreResult<bool> {
        with_pools!(self, |r, pg| {
            let found: Option<i64> = sqlx::query_scalar(
                "SELECT completed FROM registration_tokens \
                 WHERE token = $1 AND (expiry_ts IS NULL OR expiry_ts > $2) \
                 AND (uses_allowed IS NULL OR completed < uses_allowed)",
            )
            .bind(token)
            .bind(now)
            .fetch_optional(r)
            .await?;
            Ok(found.is_some())
        })
    }

    // ---- user-interactive auth sessions ---------------------------------------------------------
    /// Creates a UIA session bound to a request kind (`register`, `delete_devices:<user>`...).
    /// `Conflict` if the session ID exists.
    pub async fn create_uia_session(
        &self,
        session_id: &str,
        kind: &str,
        now: Millis,
    ) -> StoreResult<()> {
        with_writer!(self, |w, pg| {
            let inserted = sqlx::query(
                "INSERT INTO uia_sessions (session_id, kind, stages, params, created_ts) \
                 VALUES ($1, $2, '[]', '{}', $3) ON CONFLICT (session_id) DO NOTHING",
            )
            .bind(session_id)
            .bind(kind)
            .bind(now)
            .execute(w)
            .await?
            .rows_affected();
            if inserted == 0 {
                Err(StoreError::Conflict)
            } else {
                Ok(())
            }
        })
    }

    /// Returns `(kind, completed stages, stored params JSON)`; `None` if unknown or expired
    /// (expired sessions are deleted by [`Store::prune`]).
    pub async fn get_uia_session(
        &self,
        session_id: &str,
    ) -> StoreResult<Option<(String, Vec<String>, String)>> {
        with_pools!(self, |r, pg| {
            let row =
                sqlx::query("SELECT kind, stages, params FROM uia_sessions WHERE session_id = $1")
                    .bind(session_id)
                    .fetch_optional(r)
                    .await?;
            match row {
                None => Ok(None),
                Some(row) => {
                    let kind: String = row.try_get("kind")?;
                    let stages: String = row.try_get("stages")?;
                    let params: String = row.try_get("params")?;
                    Ok(Some((kind, parse_stages(&stages), params)))
                }
            }
        })
    }

    /// Records a completed stage (once) and replaces the stored params JSON (e.g. the validated
    /// registration token); `NotFound` if the session is unknown.
    pub async fn complete_uia_stage(
        &self,
        session_id: &str,
        stage: &str,
        params_json: &str,
    ) -> StoreResult<()> {
        with_tx!(self, |tx, pg| {
            let stages: Option<String> =
                sqlx::query_scalar("SELECT stages FROM uia_sessions WHERE session_id = $1")
                    .bind(session_id)
                    .fetch_optional(&mut *tx)
                    .await?;
            let Some(stages) = stages else {
                return Err(StoreError::NotFound);
            };
            let mut stages = parse_stages(&stages);
            if !stages.iter().any(|s| s == stage) {
                stages.push(stage.to_owned());
            }
            let stages = serde_json::to_string(&stages).unwrap_or_else(|_| "[]".to_owned());
            sqlx::query("UPDATE uia_sessions SET stages = $2, params = $3 WHERE session_id = $1")
                .bind(session_id)
                .bind(stages)
                .bind(params_json)
                .execute(&mut *tx)
                .await?;
        })
    }

    /// Deletes a UIA session (no error if it does not exist).
    pub async fn delete_uia_session(&self, session_id: &str) -> StoreResult<()> {
        with_writer!(self, |w, pg| {
            sqlx::query("DELETE FROM uia_sessions WHERE session_id = $1")
                .bind(session_id)
                .execute(w)
                .await?;
            Ok(())
        })
    }
}

/// Completed stages are stored as a JSON array of strings.
fn parse_stages(json: &str) -> Vec<String> {
    serde_json::from_str(json).unwrap_or_default()
}
