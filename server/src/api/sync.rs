//! `GET /sync`: to-device delivery, key counts and device-list changes, with long-polling.
//!
//! The `next_batch` token is `s<to-device position>_<device-list position>`. Calling `/sync`
//! with `since=T` acknowledges (deletes) this device's messages at or before T's position and
//! returns the ones after it, so a repeated `since` redelivers everything not yet acknowledged.

use std::time::Duration;

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::api::extract::ApiQuery;
use crate::auth::AuthedDevice;
use crate::error::{ApiError, ApiResult};
use crate::service::keys::SIGNED_CURVE25519;
use crate::service::notify::Woken;
use crate::state::AppState;

/// A parsed `since` / `next_batch` token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncToken {
    /// Last to-device position delivered (and acknowledged by the next request).
    pub to_device: i64,
    /// Device-list stream position.
    pub device_lists: i64,
}

impl SyncToken {
    /// Parses `s<pos>_<dl>`; anything else is 400 `M_INVALID_PARAM`.
    pub fn parse(token: &str) -> ApiResult<SyncToken> {
        let bad = || ApiError::invalid_param("Invalid sync token");
        let rest = token.strip_prefix('s').ok_or_else(bad)?;
        let (pos, dl) = rest.split_once('_').ok_or_else(bad)?;
        let to_device: i64 = pos.parse().map_err(|_| bad())?;
        let device_lists: i64 = dl.parse().map_err(|_| bad())?;
        if to_device < 0 || device_lists < 0 {
            return Err(bad());
        }
        Ok(SyncToken {
            to_device,
            device_lists,
        })
    }

    /// Renders the token.
    pub fn render(&self) -> String {
        format!("s{}_{}", self.to_device, self.device_lists)
    }
}

/// Query of `GET /sync`. `filter`, `full_state`, `set_presence` and `use_state_after` are
/// accepted and ignored.
#[derive(Debug, Deserialize)]
pub struct SyncQuery {
    since: Option<String>,
    timeout: Option<String>,
}

/// # GET /_matrix/client/v3/sync
/// - Without `since`: answers at once with everything pending (nothing acknowledged).
/// - With `since`: acknowledges up to it, then waits up to `timeout` ms (capped by
///   `limits.max_sync_timeout_ms`) until a message arrives for this device, one of its keys is
///   claimed, or a device list it watches changes.
/// - At most `limits.sync_batch` to-device events per answer.
pub async fn sync(
    State(state): State<AppState>,
    auth: AuthedDevice,
    ApiQuery(query): ApiQuery<SyncQuery>,
) -> ApiResult<Json<Value>> {
    let since = query.since.as_deref().map(SyncToken::parse).transpose()?;
    let timeout_ms = match query.timeout.as_deref() {
        None | Some("") => 0,
        Some(t) => t
            .parse::<u64>()
            .map_err(|_| ApiError::invalid_param("timeout must be a non-negative integer"))?,
    };
    let timeout_ms = timeout_ms.min(state.config().limits.max_sync_timeout_ms);
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);

    // Subscribe before the first read so a commit in between still wakes us.
    let mut subscription = state.notifier().subscribe(&auth.user_id, &auth.device_id);
    let (answer, has_news) = build(&state, &auth, since).await?;
    let Some(since) = since else {
        return Ok(Json(answer)); // Initial sync: answer at once.
    };
    if has_news || Instant::now() >= deadline {
        return Ok(Json(answer));
    }
    loop {
        let woken = tokio::select! {
            w = subscription.changed() => Some(w),
            _ = tokio::time::sleep_until(deadline) => None,
        };
        if woken == Some(Woken::DeviceLists) {
            // A device list changed somewhere: answer only if it concerns us (one cheap query
            // per waiter instead of a whole answer).
            let changed = state
                .store()
                .device_list_changes(&auth.user_id, since.device_lists)
                .await?;
            if changed.is_empty() {
                continue;
            }
        }
        // Mail or a key-count change for this device, a relevant device-list change, or the
        // timeout: answer with the fresh state.
        let (answer, _) = build(&state, &auth, Some(since)).await?;
        return Ok(Json(answer));
    }
}

/// Builds one answer; the flag says whether it carries anything new (events or changes).
async fn build(
    state: &AppState,
    auth: &AuthedDevice,
    since: Option<SyncToken>,
) -> ApiResult<(Value, bool)> {
    let store = state.store();
    let ack = since.map_or(0, |s| s.to_device);
    // One connection for the reads; the device-list position is read before the changes so
    // nothing falls between them.
    let reads = store
        .sync_reads(
            &auth.user_id,
            &auth.device_id,
            ack,
            state.config().limits.sync_batch,
        )
        .await?;
    if reads.unacknowledged {
        store.ack_inbox(&auth.user_id, &auth.device_id, ack).await?;
    }
    let dl_now = reads.device_list_pos;
    let events = reads.events;
    let changed = match since {
        Some(s) if s.device_lists < dl_now => {
            store
                .device_list_changes(&auth.user_id, s.device_lists)
                .await?
        }
        _ => Vec::new(),
    };
    let mut counts = reads.one_time_key_counts;
    counts.entry(SIGNED_CURVE25519.to_owned()).or_insert(0);
    let fallback = reads.unused_fallback_key_types;
    let next = SyncToken {
        to_device: events.last().map_or(ack, |e| e.pos),
        device_lists: since.map_or(dl_now, |s| dl_now.max(s.device_lists)),
    };
    let has_news = !events.is_empty() || !changed.is_empty();
    let events: Vec<Value> = events
        .into_iter()
        .map(|e| {
            let content = serde_json::from_str::<Value>(&e.content).unwrap_or_else(|_| json!({}));
            json!({ "sender": e.sender, "type": e.event_type, "content": content })
        })
        .collect();
    let answer = json!({
        "next_batch": next.render(),
        "rooms": { "join": {}, "invite": {}, "leave": {}, "knock": {} },
        "presence": { "events": [] },
        "account_data": { "events": [] },
        "to_device": { "events": events },
        "device_lists": { "changed": changed, "left": [] },
        "device_one_time_keys_count": counts,
        "device_unused_fallback_key_types": fallback,
    });
    Ok((answer, has_news))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_garbage() {
        let t = SyncToken {
            to_device: 42,
            device_lists: 7,
        };
        assert_eq!(SyncToken::parse(&t.render()).ok(), Some(t));
        for bad in [
            "", "s", "s1", "x1_2", "s1_", "s_1", "s-1_2", "s1_2_3", "s1_x",
        ] {
            assert!(SyncToken::parse(bad).is_err(), "{bad}");
        }
    }
}
