//! End-to-end key material: device keys, one-time keys (claimed in upload order) and fallback keys.

use std::collections::BTreeMap;

use sqlx::Row;
use tokio::sync::oneshot;

mod pg_claim;
mod sqlite_claim;

use super::{
    record_device_list_change, with_pools, with_tx, ClaimedKey, KeyUpload, Millis,
    OtkUploadOutcome, Store, StoreError, StoreResult,
};

/// Most unclaimed one-time keys kept for one device; an upload beyond it fails with
/// `StoreError::Limit` and stores nothing.
pub const MAX_ONE_TIME_KEYS_PER_DEVICE: i64 = 10_000;

impl Store {
    // ---- end-to-end keys --------------------------------------------------------------------------
    /// Stores device keys. Returns `true` if they changed (a device-list change is recorded).
    /// `NotFound` for an unknown device.
    pub async fn set_device_keys(
        &self,
        user_id: &str,
        device_id: &str,
        json: &str,
        now: Millis,
    ) -> StoreResult<bool> {
        with_tx!(self, |tx, pg| {
            let current: Option<Option<String>> = sqlx::query_scalar(
                "SELECT device_keys FROM devices WHERE user_id = $1 AND device_id = $2",
            )
            .bind(user_id)
            .bind(device_id)
            .fetch_optional(&mut *tx)
            .await?;
            match current {
                None => return Err(StoreError::NotFound),
                Some(Some(existing)) if existing == json => false,
                Some(_) => {
                    sqlx::query(
                        "UPDATE devices SET device_keys = $3 WHERE user_id = $1 AND device_id = $2",
                    )
                    .bind(user_id)
                    .bind(device_id)
                    .bind(json)
                    .execute(&mut *tx)
                    .await?;
                    record_device_list_change!(tx, user_id, now);
                    true
                }
            }
        })
    }

    /// Device keys of the given devices (all when `device_ids` is empty), with display names:
    /// `device_id -> (json, display_name)`. Devices without uploaded keys are left out.
    pub async fn get_device_keys(
        &self,
        user_id: &str,
        device_ids: &[String],
    ) -> StoreResult<BTreeMap<String, (String, Option<String>)>> {
        with_pools!(self, |r, pg| {
            let mut out = BTreeMap::new();
            if device_ids.is_empty() {
                let rows = sqlx::query(
                    "SELECT device_id, device_keys, display_name FROM devices \
                     WHERE user_id = $1 AND device_keys IS NOT NULL",
                )
                .bind(user_id)
                .fetch_all(r)
                .await?;
                for row in &rows {
                    out.insert(
                        row.try_get("device_id")?,
                        (row.try_get("device_keys")?, row.try_get("display_name")?),
                    );
                }
            } else {
                for chunk in device_ids.chunks(500) {
                    let mut qb = sqlx::QueryBuilder::<Db>::new(
                        "SELECT device_id, device_keys, display_name FROM devices WHERE user_id = ",
                    );
                    qb.push_bind(user_id);
                    qb.push(" AND device_keys IS NOT NULL AND device_id IN (");
                    let mut list = qb.separated(", ");
                    for id in chunk {
                        list.push_bind(id);
                    }
                    qb.push(")");
                    let rows = qb.build().fetch_all(r).await?;
                    for row in &rows {
                        out.insert(
                            row.try_get("device_id")?,
                            (row.try_get("device_keys")?, row.try_get("display_name")?),
                        );
                    }
                }
            }
            Ok(out)
        })
    }

    /// Adds one-time keys in upload order; identical re-uploads are ignored.
    ///
    /// A key whose ID is stored with different content gives `ConflictingKey` and nothing of the
    /// upload is stored. A key identical to one claimed recently (see [`Store::prune`]) is
    /// ignored, so a retried upload cannot hand it out twice; a different key reusing a claimed
    /// ID is a new key and is stored. `NotFound` for an unknown device, `Limit` above
    /// [`MAX_ONE_TIME_KEYS_PER_DEVICE`] unclaimed keys.
    pub async fn add_one_time_keys(
        &self,
        user_id: &str,
        device_id: &str,
        keys: &[KeyUpload],
        now: Millis,
    ) -> StoreResult<OtkUploadOutcome> {
        with_tx!(self, |tx, pg| {
            let exists: Option<i64> = sqlx::query_scalar(
                "SELECT created_ts FROM devices WHERE user_id = $1 AND device_id = $2",
            )
            .bind(user_id)
            .bind(device_id)
            .fetch_optional(&mut *tx)
            .await?;
            if exists.is_none() {
                return Err(StoreError::NotFound);
            }
            for key in keys {
                let claimed: Option<String> = sqlx::query_scalar(
                    "SELECT key_json FROM claimed_one_time_keys \
                     WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 AND key_id = $4",
                )
                .bind(user_id)
                .bind(device_id)
                .bind(&key.algorithm)
                .bind(&key.key_id)
                .fetch_optional(&mut *tx)
                .await?;
                if claimed.as_deref() == Some(key.json.as_str()) {
                    continue;
                }
                let inserted = sqlx::query(
                    "INSERT INTO one_time_keys (user_id, device_id, algorithm, key_id, key_json, created_ts) \
                     VALUES ($1, $2, $3, $4, $5, $6) \
                     ON CONFLICT (user_id, device_id, algorithm, key_id) DO NOTHING",
                )
                .bind(user_id)
                .bind(device_id)
                .bind(&key.algorithm)
                .bind(&key.key_id)
                .bind(&key.json)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if inserted == 0 {
                    let existing: String = sqlx::query_scalar(
                        "SELECT key_json FROM one_time_keys \
                         WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 AND key_id = $4",
                    )
                    .bind(user_id)
                    .bind(device_id)
                    .bind(&key.algorithm)
                    .bind(&key.key_id)
                    .fetch_one(&mut *tx)
                    .await?;
                    if existing != key.json {
                        // Leaving without commit rolls back the keys stored so far.
                        return Ok(OtkUploadOutcome::ConflictingKey(
                            format!("{}:{}", key.algorithm, key.key_id),
                            existing,
                            key.json.clone(),
                        ));
                    }
                }
            }
            let count: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM one_time_keys WHERE user_id = $1 AND device_id = $2",
            )
            .bind(user_id)
            .bind(device_id)
            .fetch_one(&mut *tx)
            .await?;
            if count > MAX_ONE_TIME_KEYS_PER_DEVICE {
                return Err(StoreError::Limit("one-time keys per device"));
            }
            OtkUploadOutcome::Stored
        })
    }

    /// Replaces the fallback key for each algorithm given (new key is unused). Re-uploading the
    /// identical key keeps its `used` flag. `NotFound` for an unknown device.
    pub async fn set_fallback_keys(
        &self,
        user_id: &str,
        device_id: &str,
        keys: &[KeyUpload],
    ) -> StoreResult<()> {
        with_tx!(self, |tx, pg| {
            let exists: Option<i64> = sqlx::query_scalar(
                "SELECT created_ts FROM devices WHERE user_id = $1 AND device_id = $2",
            )
            .bind(user_id)
            .bind(device_id)
            .fetch_optional(&mut *tx)
            .await?;
            if exists.is_none() {
                return Err(StoreError::NotFound);
            }
            for key in keys {
                sqlx::query(
                    "INSERT INTO fallback_keys (user_id, device_id, algorithm, key_id, key_json, used) \
                     VALUES ($1, $2, $3, $4, $5, FALSE) \
                     ON CONFLICT (user_id, device_id, algorithm) DO UPDATE \
                     SET key_id = excluded.key_id, key_json = excluded.key_json, used = FALSE \
                     WHERE fallback_keys.key_id <> excluded.key_id \
                     OR fallback_keys.key_json <> excluded.key_json",
                )
                .bind(user_id)
                .bind(device_id)
                .bind(&key.algorithm)
                .bind(&key.key_id)
                .bind(&key.json)
                .execute(&mut *tx)
                .await?;
            }
        })
    }

    /// Unclaimed one-time keys per algorithm (algorithms with none are absent; the caller adds
    /// explicit zeros).
    pub async fn one_time_key_counts(
        &self,
        user_id: &str,
        device_id: &str,
    ) -> StoreResult<BTreeMap<String, i64>> {
        with_pools!(self, |r, pg| {
            let rows = sqlx::query(
                "SELECT algorithm, COUNT(*) AS n FROM one_time_keys \
                 WHERE user_id = $1 AND device_id = $2 GROUP BY algorithm",
            )
            .bind(user_id)
            .bind(device_id)
            .fetch_all(r)
            .await?;
            let mut out = BTreeMap::new();
            for row in &rows {
                out.insert(row.try_get("algorithm")?, row.try_get("n")?);
            }
            Ok(out)
        })
    }

    /// Algorithms whose fallback key has not been used, ordered.
    pub async fn unused_fallback_key_types(
        &self,
        user_id: &str,
        device_id: &str,
    ) -> StoreResult<Vec<String>> {
        with_pools!(self, |r, pg| {
            Ok(sqlx::query_scalar(
                "SELECT algorithm FROM fallback_keys \
                 WHERE user_id = $1 AND device_id = $2 AND used = FALSE ORDER BY algorithm",
            )
            .bind(user_id)
            .bind(device_id)
            .fetch_all(r)
            .await?)
        })
    }

    /// The current fallback key of `algorithm` without marking it used.
    pub async fn get_fallback_key(
        &self,
        user_id: &str,
        device_id: &str,
        algorithm: &str,
    ) -> StoreResult<Option<ClaimedKey>> {
        with_pools!(self, |r, pg| {
            let row = sqlx::query(
                "SELECT key_id, key_json FROM fallback_keys \
                 WHERE user_id = $1 AND device_id = $2 AND algorithm = $3",
            )
            .bind(user_id)
            .bind(device_id)
            .bind(algorithm)
            .fetch_optional(r)
            .await?;
            match row {
                None => Ok(None),
                Some(row) => {
                    let key_id: String = row.try_get("key_id")?;
                    Ok(Some(ClaimedKey {
                        full_id: format!("{algorithm}:{key_id}"),
                        json: row.try_get("key_json")?,
                    }))
                }
            }
        })
    }
}

/// A device-list interest is refreshed by a claim only when its `updated_ts` is at least this
/// old, so repeated claims of the same user's keys do not rewrite the row each time (the
/// interest then expires at most this much earlier than its TTL says).
const INTEREST_REFRESH_MS: Millis = 60_000;

/// One device's part of a [`Store::claim_keys`] call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyClaim {
    /// Owner of the keys.
    pub user_id: String,
    /// Device whose keys are claimed.
    pub device_id: String,
    /// Algorithm of the one-time (and fallback) key.
    pub algorithm: String,
    /// The Hush bundle claim: the fallback key is the signed prekey, read but never marked
    /// used, plus one one-time key when one is left.
    pub bundle: bool,
}

/// What one [`KeyClaim`] got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claimed {
    /// Nothing was available (for a bundle: the device has no signed prekey).
    Nothing,
    /// The oldest one-time key, or else the fallback key (now marked used).
    Key(ClaimedKey),
    /// A bundle: the signed prekey and, if one was left, a one-time key.
    Bundle {
        /// The fallback key of the algorithm, not marked used.
        signed_prekey: ClaimedKey,
        /// The claimed one-time key.
        one_time_key: Option<ClaimedKey>,
    },
}

impl Store {
    /// Claims keys of several devices atomically, in the given order, and, when `observer` is
    /// a local requester, records its device-list interest in every other user it got keys
    /// of. Returns one [`Claimed`] per claim.
    ///
    /// Group commit: concurrent calls in this process are committed together in ONE
    /// transaction (one commit, on PostgreSQL one fsync, for the whole group). The caller that
    /// finds no commit running becomes the leader: it takes every queued call and commits them
    /// in a spawned task (so a cancelled caller cannot abort the others' commit); the calls that
    /// queued meanwhile are taken by the next leader. If a group fails, each of its calls is
    /// retried alone, so one call's error never becomes another's.
    pub async fn claim_keys(
        &self,
        claims: &[KeyClaim],
        observer: Option<&str>,
        now: Millis,
    ) -> StoreResult<Vec<Claimed>> {
        if claims.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, mut answer) = oneshot::channel();
        self.claims.push(ClaimJob {
            claims: claims.to_vec(),
            observer: observer.map(str::to_owned),
            now,
            reply,
        });
        let leader = self.claims.leader.clone().lock_owned().await;
        match answer.try_recv() {
            Ok(result) => return result, // committed by the previous leader
            Err(oneshot::error::TryRecvError::Closed) => return Err(lost_claim()),
            Err(oneshot::error::TryRecvError::Empty) => {}
        }
        let jobs = self.claims.take();
        let store = self.clone();
        tokio::spawn(async move {
            let _leader = leader;
            store.commit_claim_group(jobs).await;
        });
        answer.await.unwrap_or_else(|_| Err(lost_claim()))
    }

    /// Commits `jobs` in one transaction and answers each; on failure retries each alone.
    async fn commit_claim_group(&self, jobs: Vec<ClaimJob>) {
        if jobs.len() > 1 {
            let outcome = {
                let refs: Vec<(&[KeyClaim], Option<&str>, Millis)> = jobs
                    .iter()
                    .map(|j| (j.claims.as_slice(), j.observer.as_deref(), j.now))
                    .collect();
                self.claim_tx(&refs).await
            };
            match outcome {
                Ok(results) if results.len() == jobs.len() => {
                    for (job, result) in jobs.into_iter().zip(results) {
                        let _ = job.reply.send(Ok(result));
                    }
                    return;
                }
                Ok(_) => tracing::error!("claim group returned the wrong number of results"),
                Err(e) => tracing::warn!(error = %e, "claim group failed; retrying one by one"),
            }
        }
        for job in jobs {
            let result = self
                .claim_tx(&[(job.claims.as_slice(), job.observer.as_deref(), job.now)])
                .await
                .and_then(|mut r| r.pop().ok_or_else(lost_claim));
            let _ = job.reply.send(result);
        }
    }

    /// The claims of several calls `(claims, observer, now)` in one transaction.
    async fn claim_tx(
        &self,
        jobs: &[(&[KeyClaim], Option<&str>, Millis)],
    ) -> StoreResult<Vec<Vec<Claimed>>> {
        match &self.backend {
            super::Backend::Sqlite { writer, .. } => sqlite_claim::claim_group(writer, jobs).await,
            super::Backend::Postgres(pool) => pg_claim::claim_group(pool, jobs).await,
        }
    }
}

/// What `claim` got, from the rows of its claim statement (either backend), each
/// `(whether it is the claimed one-time key, key ID, key JSON)`; any other row is the fallback
/// key (for a bundle, the signed prekey).
fn claimed_from(claim: &KeyClaim, rows: Vec<(bool, String, String)>) -> Claimed {
    let (mut one_time_key, mut fallback) = (None, None);
    for (is_one_time_key, key_id, json) in rows {
        let key = ClaimedKey {
            full_id: format!("{}:{key_id}", claim.algorithm),
            json,
        };
        if is_one_time_key {
            one_time_key = Some(key);
        } else {
            fallback = Some(key);
        }
    }
    match (claim.bundle, one_time_key, fallback) {
        (true, one_time_key, Some(signed_prekey)) => Claimed::Bundle {
            signed_prekey,
            one_time_key,
        },
        (false, Some(key), _) | (false, None, Some(key)) => Claimed::Key(key),
        _ => Claimed::Nothing,
    }
}

/// The error of a claim whose group commit task went away without answering.
fn lost_claim() -> StoreError {
    StoreError::Database(sqlx::Error::WorkerCrashed)
}

/// One queued [`Store::claim_keys`] call.
pub(super) struct ClaimJob {
    claims: Vec<KeyClaim>,
    observer: Option<String>,
    now: Millis,
    reply: oneshot::Sender<StoreResult<Vec<Claimed>>>,
}

/// The queue and leader lock of the claim group commit.
#[derive(Default)]
pub(super) struct ClaimGroup {
    queue: std::sync::Mutex<Vec<ClaimJob>>,
    leader: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl ClaimGroup {
    fn push(&self, job: ClaimJob) {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(job);
    }

    fn take(&self) -> Vec<ClaimJob> {
        std::mem::take(
            &mut *self
                .queue
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}
