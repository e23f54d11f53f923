//! [`Store::claim_keys`](crate::store::Store::claim_keys) on SQLite: one command per claim.
//!
//! Each command sent to sqlx's SQLite connection is a round trip to its worker thread, and a
//! claim group waits for all of them while it holds the single writer. A claim is therefore ONE
//! multi-statement command whose statements decide among themselves what to take, with the
//! parameters `?1` user, `?2` device, `?3` algorithm, `?4` now, `?5` the observer (or NULL),
//! `?6` the interest refresh cut-off (every statement uses its numbers without gaps, so sqlx
//! binds them as numbered):
//!
//! 1. the observer's device-list interest in the user, when the claim will get something;
//! 2. the oldest one-time key copied into `claimed_one_time_keys` (a re-upload of it is then
//!    not stored again);
//! 3. a key claim: the fallback key marked used and returned only when no one-time key is left;
//!    a bundle claim: the fallback key (the signed prekey) returned as it is;
//! 4. the oldest one-time key deleted and returned (for a bundle only when it has a signed
//!    prekey).
//!
//! The group's `BEGIN IMMEDIATE` travels with its first claim and its `COMMIT` with its last,
//! outside sqlx's transaction manager as for sends ([`SqliteWriter::begin_raw`]).

use std::sync::OnceLock;

use sqlx::Row;

use super::{claimed_from, Claimed, KeyClaim, INTEREST_REFRESH_MS};
use crate::store::connect::SqliteWriter;
use crate::store::{Millis, StoreResult};

/// "The device has a one-time key of the algorithm."
const HAS_OTK: &str = "EXISTS (SELECT 1 FROM one_time_keys \
     WHERE user_id = ?1 AND device_id = ?2 AND algorithm = ?3)";
/// "The device has a fallback key (signed prekey) of the algorithm."
const HAS_FALLBACK: &str = "EXISTS (SELECT 1 FROM fallback_keys \
     WHERE user_id = ?1 AND device_id = ?2 AND algorithm = ?3)";
/// The `seq` of the oldest one-time key.
const OLDEST_OTK: &str = "(SELECT seq FROM one_time_keys \
     WHERE user_id = ?1 AND device_id = ?2 AND algorithm = ?3 ORDER BY seq LIMIT 1)";

/// Row kinds in a claim command's result.
const ROW_ONE_TIME_KEY: i64 = 0;
const ROW_FALLBACK_USED: i64 = 1;
const ROW_SIGNED_PREKEY: i64 = 2;

/// The command of one claim: `bundle` or key claim, with the group's `BEGIN` (`first`) and
/// `COMMIT` (`last`).
fn claim_sql(bundle: bool, first: bool, last: bool) -> String {
    let gets_something = if bundle {
        HAS_FALLBACK.to_owned()
    } else {
        format!("({HAS_OTK} OR {HAS_FALLBACK})")
    };
    let otk_condition = if bundle {
        format!(" AND {HAS_FALLBACK}")
    } else {
        String::new()
    };
    let fallback = if bundle {
        format!(
            "SELECT {ROW_SIGNED_PREKEY}, key_id, key_json FROM fallback_keys \
             WHERE user_id = ?1 AND device_id = ?2 AND algorithm = ?3; "
        )
    } else {
        format!(
            "UPDATE fallback_keys SET used = TRUE \
             WHERE user_id = ?1 AND device_id = ?2 AND algorithm = ?3 AND NOT {HAS_OTK} \
             RETURNING {ROW_FALLBACK_USED}, key_id, key_json; "
        )
    };
    format!(
        "{begin}\
         INSERT INTO device_list_interest (observer, target, updated_ts) \
         SELECT ?5, ?1, ?4 WHERE ?5 IS NOT NULL AND ?5 <> ?1 AND {gets_something} \
         ON CONFLICT (observer, target) DO UPDATE SET updated_ts = excluded.updated_ts \
         WHERE device_list_interest.updated_ts < ?6; \
         INSERT INTO claimed_one_time_keys \
         (user_id, device_id, algorithm, key_id, key_json, claimed_ts) \
         SELECT user_id, device_id, algorithm, key_id, key_json, ?4 FROM one_time_keys \
         WHERE seq = {OLDEST_OTK}{otk_condition} \
         ON CONFLICT (user_id, device_id, algorithm, key_id) \
         DO UPDATE SET key_json = excluded.key_json, claimed_ts = excluded.claimed_ts; \
         {fallback}\
         DELETE FROM one_time_keys WHERE seq = {OLDEST_OTK}{otk_condition} \
         RETURNING {ROW_ONE_TIME_KEY}, key_id, key_json\
         {commit}",
        begin = if first { "BEGIN IMMEDIATE; " } else { "" },
        commit = if last { "; COMMIT" } else { "" },
    )
}

/// The eight claim commands, built once: index `bundle * 4 + first * 2 + last`.
fn claim_command(bundle: bool, first: bool, last: bool) -> &'static str {
    static ALL: OnceLock<Vec<String>> = OnceLock::new();
    let all = ALL.get_or_init(|| {
        (0..8)
            .map(|i| claim_sql(i & 4 != 0, i & 2 != 0, i & 1 != 0))
            .collect()
    });
    let index = usize::from(bundle) * 4 + usize::from(first) * 2 + usize::from(last);
    all.get(index).map_or("", String::as_str)
}

/// Claims the keys of several calls `(claims, observer, now)` in one transaction on the writer.
pub(super) async fn claim_group(
    writer: &SqliteWriter,
    jobs: &[(&[KeyClaim], Option<&str>, Millis)],
) -> StoreResult<Vec<Vec<Claimed>>> {
    let total: usize = jobs.iter().map(|(claims, _, _)| claims.len()).sum();
    if total == 0 {
        return Ok(jobs.iter().map(|_| Vec::new()).collect());
    }
    let mut guard = writer.lock().await?;
    writer
        .in_raw_transaction(&mut guard, async |conn| claim_all(conn, jobs, total).await)
        .await
}

/// The commands of [`claim_group`]; `total` is the number of claims (at least one).
async fn claim_all(
    conn: &mut sqlx::SqliteConnection,
    jobs: &[(&[KeyClaim], Option<&str>, Millis)],
    total: usize,
) -> StoreResult<Vec<Vec<Claimed>>> {
    let mut done = 0;
    let mut all = Vec::with_capacity(jobs.len());
    for &(claims, observer, now) in jobs {
        let mut out = Vec::with_capacity(claims.len());
        for claim in claims {
            let sql = claim_command(claim.bundle, done == 0, done + 1 == total);
            done += 1;
            let rows = sqlx::query(sql)
                .bind(claim.user_id.as_str())
                .bind(claim.device_id.as_str())
                .bind(claim.algorithm.as_str())
                .bind(now)
                .bind(observer)
                .bind(now - INTEREST_REFRESH_MS)
                .fetch_all(&mut *conn)
                .await?;
            let mut got = Vec::with_capacity(rows.len());
            for row in &rows {
                let is_one_time_key = row.try_get::<i64, _>(0)? == ROW_ONE_TIME_KEY;
                got.push((is_one_time_key, row.try_get(1)?, row.try_get(2)?));
            }
            out.push(claimed_from(claim, got));
        }
        all.push(out);
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_begin_and_commit_only_where_asked() {
        for i in 0..8 {
            let (bundle, first, last) = (i & 4 != 0, i & 2 != 0, i & 1 != 0);
            let sql = claim_command(bundle, first, last);
            assert_eq!(sql.starts_with("BEGIN IMMEDIATE; "), first, "{sql}");
            assert_eq!(sql.ends_with("; COMMIT"), last, "{sql}");
            assert_eq!(
                sql.contains("UPDATE fallback_keys SET used"),
                !bundle,
                "{sql}"
            );
            // Numbered parameters only, ?1 to ?6 (no gaps: see the module documentation).
            assert!(!sql.contains("?7") && !sql.contains('$'), "{sql}");
        }
    }
}
