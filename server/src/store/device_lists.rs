//! Device-list change stream and who follows whom.

use super::{
    record_device_list_change, system_now, with_pools, with_tx, Millis, Store, StoreResult,
};

impl Store {
    // ---- device-list changes -----------------------------------------------------------------------
    /// The current device-list stream position.
    pub async fn device_list_position(&self) -> StoreResult<i64> {
        with_pools!(self, |r, pg| {
            Ok(
                sqlx::query_scalar("SELECT value FROM stream_counters WHERE name = 'device_list'")
                    .fetch_one(r)
                    .await?,
            )
        })
    }

    /// Users (local) whose device lists changed after `since` and that `observer` cares about
    /// (the observer itself and users it has queried keys for or exchanged messages with).
    ///
    /// Sorted and without duplicates. If `since` is older than the pruned part of the stream,
    /// every user the observer follows (and the observer) is reported as changed.
    pub async fn device_list_changes(
        &self,
        observer: &str,
        since: i64,
    ) -> StoreResult<Vec<String>> {
        with_pools!(self, |r, pg| {
            let pruned: i64 = sqlx::query_scalar(
                "SELECT value FROM stream_counters WHERE name = 'device_list_pruned'",
            )
            .fetch_one(r)
            .await?;
            let users: Vec<String> = if since < pruned {
                sqlx::query_scalar(
                    "SELECT $1 UNION SELECT target FROM device_list_interest WHERE observer = $1 \
                     ORDER BY 1",
                )
                .bind(observer)
                .fetch_all(r)
                .await?
            } else {
                // One probe of `device_list_stream_user` per followed user, so the cost does
                // not grow with the length of the stream after `since`.
                sqlx::query_scalar(
                    "SELECT f.u FROM (SELECT $1 AS u UNION \
                     SELECT target FROM device_list_interest WHERE observer = $1) AS f \
                     WHERE EXISTS (SELECT 1 FROM device_list_stream s \
                     WHERE s.user_id = f.u AND s.pos > $2) ORDER BY f.u",
                )
                .bind(observer)
                .bind(since)
                .fetch_all(r)
                .await?
            };
            Ok(users)
        })
    }

    /// Who follows the device lists of `users`: the users themselves and every observer with a
    /// `device_list_interest` in one of them (the users whose `/sync` reports such a change,
    /// see [`Store::device_list_changes`]). Sorted, without duplicates. One probe of the
    /// `device_list_interest_target` index per user.
    pub async fn device_list_followers(&self, users: &[String]) -> StoreResult<Vec<String>> {
        let mut followers: std::collections::BTreeSet<String> = users.iter().cloned().collect();
        with_pools!(self, |r, pg| {
            for user in users {
                let observers: Vec<String> = sqlx::query_scalar(
                    "SELECT observer FROM device_list_interest WHERE target = $1",
                )
                .bind(user)
                .fetch_all(r)
                .await?;
                followers.extend(observers);
            }
            StoreResult::Ok(())
        })?;
        Ok(followers.into_iter().collect())
    }

    /// Records that `observer` is interested in `target`'s device list (refreshing the time of
    /// interest; interests unused for the mailbox TTL are pruned).
    pub async fn add_device_list_interest(
        &self,
        observer: &str,
        targets: &[String],
    ) -> StoreResult<()> {
        let now = system_now();
        with_tx!(self, |tx, pg| {
            for target in targets.iter().filter(|t| t.as_str() != observer) {
                sqlx::query(
                    "INSERT INTO device_list_interest (observer, target, updated_ts) VALUES ($1, $2, $3) \
                     ON CONFLICT (observer, target) DO UPDATE SET updated_ts = excluded.updated_ts",
                )
                .bind(observer)
                .bind(target)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
        })
    }

    /// Records device-list changes for users whose devices changed elsewhere (for example a
    /// remote user announced by an `m.device_list_update` EDU). Returns the new position.
    pub async fn record_device_list_changes(
        &self,
        user_ids: &[String],
        now: Millis,
    ) -> StoreResult<i64> {
        with_tx!(self, |tx, pg| {
            for user_id in user_ids {
                record_device_list_change!(tx, user_id, now);
            }
            let pos: i64 =
                sqlx::query_scalar("SELECT value FROM stream_counters WHERE name = 'device_list'")
                    .fetch_one(&mut *tx)
                    .await?;
            pos
        })
    }
}
