//! Devices and access tokens.

use sqlx::Row;

use super::{
    purge_device, record_device_list_change, system_now, with_pools, with_tx, with_writer,
    DeviceRow, Millis, Store, StoreError, StoreResult, TokenOwner,
};

/// `last_seen_*` is written at most this often per device (ms).
const LAST_SEEN_GRANULARITY_MS: Millis = 60_000;

/// First mailbox position of a device created at `now`: `now × 1000`. A device deleted and
/// created again under the same ID therefore never reuses positions of its predecessor (unless
/// the old one received more than a million messages per second on average), so a stale
/// `since` token cannot acknowledge messages of the new device.
pub(super) fn initial_inbox_pos(now: Millis) -> i64 {
    now.max(0).saturating_mul(1000)
}

impl Store {
    // ---- devices and access tokens ---------------------------------------------------------------
    /// Creates the device if missing (keeping keys and inbox if it exists), stores the SHA-256 hash
    /// of a new access token for it, and invalidates that device's earlier tokens. Records a
    /// device-list change when the device is new.
    ///
    /// `NotFound` if the account does not exist or is deactivated. `display_name` is only used
    /// for a new device.
    pub async fn login_device(
        &self,
        user_id: &str,
        device_id: &str,
        display_name: Option<&str>,
        token_hash: &[u8],
        now: Millis,
    ) -> StoreResult<()> {
        let out: StoreResult<_> = with_tx!(self, |tx, pg| {
            let deactivated: Option<bool> =
                sqlx::query_scalar("SELECT deactivated FROM users WHERE user_id = $1")
                    .bind(user_id)
                    .fetch_optional(&mut *tx)
                    .await?;
            if deactivated != Some(false) {
                return Err(StoreError::NotFound);
            }
            let created = sqlx::query(
                "INSERT INTO devices (user_id, device_id, display_name, created_ts, inbox_last_pos) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (user_id, device_id) DO NOTHING",
            )
            .bind(user_id)
            .bind(device_id)
            .bind(display_name)
            .bind(now)
            .bind(initial_inbox_pos(now))
            .execute(&mut *tx)
            .await?
            .rows_affected()
                > 0;
            sqlx::query("DELETE FROM access_tokens WHERE user_id = $1 AND device_id = $2")
                .bind(user_id)
                .bind(device_id)
                .execute(&mut *tx)
                .await?;
            let inserted = sqlx::query(
                "INSERT INTO access_tokens (token_hash, user_id, device_id, created_ts) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (token_hash) DO NOTHING",
            )
            .bind(token_hash)
            .bind(user_id)
            .bind(device_id)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if inserted == 0 {
                return Err(StoreError::Conflict);
            }
            if created {
                record_device_list_change!(tx, user_id, now);
            }
        });
        // Access tokens may have been deleted (here and, through the database, in every other
        // process).
        self.tokens_revoked().await;
        out
    }

    /// Resolves a token hash; also records `last_seen_*` at most once a minute.
    pub async fn token_owner(&self, token_hash: &[u8]) -> StoreResult<Option<TokenOwner>> {
        self.token_owner_seen(token_hash, None, system_now()).await
    }

    /// Like [`Store::token_owner`], with the client's IP address and the current time:
    /// `last_seen_ip`/`last_seen_ts` are updated when the stored time is older than a minute.
    ///
    /// Answers are reused for up to [`super::TOKEN_CACHE_TTL`] (see the `token_cache` module:
    /// revocations in this process take effect at once, in other processes within that time).
    pub async fn token_owner_seen(
        &self,
        token_hash: &[u8],
        ip: Option<&str>,
        now: Millis,
    ) -> StoreResult<Option<TokenOwner>> {
        let cache_key: Option<[u8; 32]> = token_hash.try_into().ok();
        let started = std::time::Instant::now();
        let refresh_before = now - LAST_SEEN_GRANULARITY_MS;
        let mut generation = None;
        if let Some(key) = &cache_key {
            match self.tokens.get(key, started, refresh_before) {
                // Seen within the cache lifetime and `last_seen_*` is not yet due.
                Ok(owner) => return Ok(Some(owner)),
                Err(current) => generation = Some(current),
            }
        }
        let found = with_pools!(self, |r, pg| {
            let row = sqlx::query(
                "SELECT t.user_id, t.device_id, d.last_seen_ts FROM access_tokens t \
                 JOIN devices d ON d.user_id = t.user_id AND d.device_id = t.device_id \
                 WHERE t.token_hash = $1",
            )
            .bind(token_hash)
            .fetch_optional(r)
            .await?;
            match row {
                None => StoreResult::Ok(None),
                Some(row) => Ok(Some((
                    TokenOwner {
                        user_id: row.try_get("user_id")?,
                        device_id: row.try_get("device_id")?,
                    },
                    row.try_get::<Option<Millis>, _>("last_seen_ts")?,
                ))),
            }
        })?;
        let Some((owner, last_seen)) = found else {
            return Ok(None);
        };
        let mut last_seen = last_seen.unwrap_or(Millis::MIN);
        if last_seen <= refresh_before {
            last_seen = now;
            with_writer!(self, |w, pg| {
                sqlx::query(
                    "UPDATE devices SET last_seen_ts = $3, last_seen_ip = COALESCE($4, last_seen_ip) \
                     WHERE user_id = $1 AND device_id = $2",
                )
                .bind(&owner.user_id)
                .bind(&owner.device_id)
                .bind(now)
                .bind(ip)
                .execute(w)
                .await?;
                StoreResult::Ok(())
            })?;
        }
        if let (Some(key), Some(generation)) = (cache_key, generation) {
            self.tokens
                .put(key, owner.clone(), last_seen, generation, started);
        }
        Ok(Some(owner))
    }

    /// Lists a user's devices, ordered by device ID.
    pub async fn list_devices(&self, user_id: &str) -> StoreResult<Vec<DeviceRow>> {
        with_pools!(self, |r, pg| {
            let rows = sqlx::query(
                "SELECT device_id, display_name, last_seen_ip, last_seen_ts FROM devices \
                 WHERE user_id = $1 ORDER BY device_id",
            )
            .bind(user_id)
            .fetch_all(r)
            .await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                out.push(DeviceRow {
                    device_id: row.try_get("device_id")?,
                    display_name: row.try_get("display_name")?,
                    last_seen_ip: row.try_get("last_seen_ip")?,
                    last_seen_ts: row.try_get("last_seen_ts")?,
                });
            }
            Ok(out)
        })
    }

    /// One device of a user.
    pub async fn get_device(
        &self,
        user_id: &str,
        device_id: &str,
    ) -> StoreResult<Option<DeviceRow>> {
        with_pools!(self, |r, pg| {
            let row = sqlx::query(
                "SELECT device_id, display_name, last_seen_ip, last_seen_ts FROM devices \
                 WHERE user_id = $1 AND device_id = $2",
            )
            .bind(user_id)
            .bind(device_id)
            .fetch_optional(r)
            .await?;
            match row {
                None => Ok(None),
                Some(row) => Ok(Some(DeviceRow {
                    device_id: row.try_get("device_id")?,
                    display_name: row.try_get("display_name")?,
                    last_seen_ip: row.try_get("last_seen_ip")?,
                    last_seen_ts: row.try_get("last_seen_ts")?,
                })),
            }
        })
    }

    /// Sets a display name; `NotFound` for an unknown device.
    pub async fn set_device_display_name(
        &self,
        user_id: &str,
        device_id: &str,
        name: Option<&str>,
    ) -> StoreResult<()> {
        with_writer!(self, |w, pg| {
            let updated = sqlx::query(
                "UPDATE devices SET display_name = $3 WHERE user_id = $1 AND device_id = $2",
            )
            .bind(user_id)
            .bind(device_id)
            .bind(name)
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

    /// Deletes devices with their tokens, keys and mailbox in one transaction, and records a
    /// device-list change. Unknown device IDs are ignored.
    pub async fn delete_devices(
        &self,
        user_id: &str,
        device_ids: &[String],
        now: Millis,
    ) -> StoreResult<()> {
        let out: StoreResult<_> = with_tx!(self, |tx, pg| {
            let mut any = false;
            for device_id in device_ids {
                any |= purge_device!(tx, user_id, device_id);
            }
            if any {
                record_device_list_change!(tx, user_id, now);
            }
        });
        // Access tokens may have been deleted (here and, through the database, in every other
        // process).
        self.tokens_revoked().await;
        out
    }

    /// Deletes every device of a user (`/logout/all`) with tokens, keys and mailboxes, in one
    /// transaction; returns the deleted device IDs.
    pub async fn delete_all_devices(&self, user_id: &str, now: Millis) -> StoreResult<Vec<String>> {
        let out: StoreResult<_> = with_tx!(self, |tx, pg| {
            let devices: Vec<String> = sqlx::query_scalar(
                "SELECT device_id FROM devices WHERE user_id = $1 ORDER BY device_id",
            )
            .bind(user_id)
            .fetch_all(&mut *tx)
            .await?;
            for device_id in &devices {
                let _existed = purge_device!(tx, user_id, device_id);
            }
            if !devices.is_empty() {
                record_device_list_change!(tx, user_id, now);
            }
            devices
        });
        // Access tokens may have been deleted (here and, through the database, in every other
        // process).
        self.tokens_revoked().await;
        out
    }

    /// Device IDs of a local user (for `*` expansion and key queries), ordered.
    pub async fn device_ids(&self, user_id: &str) -> StoreResult<Vec<String>> {
        with_pools!(self, |r, pg| {
            Ok(sqlx::query_scalar(
                "SELECT device_id FROM devices WHERE user_id = $1 ORDER BY device_id",
            )
            .bind(user_id)
            .fetch_all(r)
            .await?)
        })
    }
}
