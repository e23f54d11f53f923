//! [`Store::claim_keys`](crate::store::Store::claim_keys) on PostgreSQL: one statement per
//! claim.
//!
//! Every statement is a network round trip, and a claim group holds its transaction (and the
//! rows it locked) open across all of them. A claim is therefore ONE statement whose
//! data-modifying CTEs decide among themselves what to take, with the parameters `$1` user,
//! `$2` device, `$3` algorithm, `$4` now, `$5` the observer (or NULL), `$6` the interest
//! refresh cut-off:
//!
//! - `otk`: the oldest one-time key that no concurrent claim holds (`FOR UPDATE SKIP LOCKED`),
//!   deleted and returned; for a bundle only when the device has a signed prekey;
//! - `remembered`: that key copied into `claimed_one_time_keys` (a re-upload of it is then not
//!   stored again);
//! - a key claim: `fallback`, the fallback key marked used and returned only when `otk` found
//!   nothing; a bundle claim: `spk`, the fallback key (the signed prekey) read as it is;
//! - `interest`: the observer's device-list interest in the user, when the claim got something.
//!
//! All CTEs see the same snapshot, and the data-modifying ones run whether or not the final
//! `SELECT` reads them. The devices whose one-time keys were taken are woken with one
//! `pg_notify` call for the whole group, delivered at its commit.

use sqlx::Row;

use super::{claimed_from, Claimed, KeyClaim, INTEREST_REFRESH_MS};
use crate::store::notify::{wake_payloads, WakeOnCommit};
use crate::store::{Millis, StoreResult};

/// Row kinds in a claim statement's result.
const ROW_ONE_TIME_KEY: i32 = 0;
const ROW_FALLBACK: i32 = 1;

/// The oldest one-time key of the device that no concurrent claim holds.
const OLDEST_FREE_OTK: &str = "(SELECT seq FROM one_time_keys \
     WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 \
     ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED)";

/// The statement of a key claim (`bundle = false`) or a bundle claim.
fn claim_sql(bundle: bool) -> String {
    let (spk, otk_condition, fallback, got) = if bundle {
        (
            "spk AS (SELECT key_id, key_json FROM fallback_keys \
             WHERE user_id = $1 AND device_id = $2 AND algorithm = $3), ",
            " AND EXISTS (SELECT 1 FROM spk)",
            String::new(),
            "spk",
        )
    } else {
        (
            "",
            "",
            "fallback AS (UPDATE fallback_keys SET used = TRUE \
             WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 \
             AND NOT EXISTS (SELECT 1 FROM otk) RETURNING key_id, key_json), "
                .to_owned(),
            "fallback",
        )
    };
    format!(
        "WITH {spk}\
         otk AS (DELETE FROM one_time_keys WHERE seq = {OLDEST_FREE_OTK}{otk_condition} \
         RETURNING key_id, key_json), \
         remembered AS (INSERT INTO claimed_one_time_keys \
         (user_id, device_id, algorithm, key_id, key_json, claimed_ts) \
         SELECT $1, $2, $3, key_id, key_json, $4 FROM otk \
         ON CONFLICT (user_id, device_id, algorithm, key_id) \
         DO UPDATE SET key_json = excluded.key_json, claimed_ts = excluded.claimed_ts), \
         {fallback}\
         got AS (SELECT {ROW_ONE_TIME_KEY} AS kind, key_id, key_json FROM otk \
         UNION ALL SELECT {ROW_FALLBACK}, key_id, key_json FROM {got}), \
         interest AS (INSERT INTO device_list_interest (observer, target, updated_ts) \
         SELECT $5, $1, $4 WHERE $5 IS NOT NULL AND $5 <> $1 AND EXISTS (SELECT 1 FROM got) \
         ON CONFLICT (observer, target) DO UPDATE SET updated_ts = excluded.updated_ts \
         WHERE device_list_interest.updated_ts < $6) \
         SELECT kind, key_id, key_json FROM got"
    )
}

/// The two statements, built once: index 1 for bundles.
fn claim_statement(bundle: bool) -> &'static str {
    static ALL: std::sync::OnceLock<[String; 2]> = std::sync::OnceLock::new();
    let all = ALL.get_or_init(|| [claim_sql(false), claim_sql(true)]);
    all[usize::from(bundle)].as_str()
}

/// Claims the keys of several calls `(claims, observer, now)` in one transaction.
pub(super) async fn claim_group(
    pool: &sqlx::PgPool,
    jobs: &[(&[KeyClaim], Option<&str>, Millis)],
) -> StoreResult<Vec<Vec<Claimed>>> {
    let mut tx = pool.begin().await?;
    let mut all = Vec::with_capacity(jobs.len());
    let mut drained: Vec<(&str, &str)> = Vec::new();
    for &(claims, observer, now) in jobs {
        let mut out = Vec::with_capacity(claims.len());
        for claim in claims {
            let rows = sqlx::query(claim_statement(claim.bundle))
                .bind(claim.user_id.as_str())
                .bind(claim.device_id.as_str())
                .bind(claim.algorithm.as_str())
                .bind(now)
                .bind(observer)
                .bind(now - INTEREST_REFRESH_MS)
                .fetch_all(&mut *tx)
                .await?;
            let mut got = Vec::with_capacity(rows.len());
            for row in &rows {
                let is_one_time_key = row.try_get::<i32, _>(0)? == ROW_ONE_TIME_KEY;
                got.push((is_one_time_key, row.try_get(1)?, row.try_get(2)?));
            }
            if got.iter().any(|&(is_one_time_key, _, _)| is_one_time_key) {
                drained.push((claim.user_id.as_str(), claim.device_id.as_str()));
            }
            out.push(claimed_from(claim, got));
        }
        all.push(out);
    }
    // Their one-time key counts changed: wake those devices' syncs (in every process).
    drained.sort_unstable();
    drained.dedup();
    WakeOnCommit::wake_on_commit(&mut *tx, &wake_payloads(drained)).await?;
    tx.commit().await?;
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_differ_only_where_bundles_do() {
        let key = claim_statement(false);
        let bundle = claim_statement(true);
        assert!(
            key.contains("UPDATE fallback_keys SET used = TRUE"),
            "{key}"
        );
        assert!(!bundle.contains("UPDATE fallback_keys"), "{bundle}");
        assert!(bundle.contains("EXISTS (SELECT 1 FROM spk)"), "{bundle}");
        for sql in [key, bundle] {
            assert!(sql.contains("FOR UPDATE SKIP LOCKED"), "{sql}");
            assert!(sql.contains("INSERT INTO claimed_one_time_keys"), "{sql}");
            assert!(sql.contains("INSERT INTO device_list_interest"), "{sql}");
        }
    }
}
