//! End-to-end key endpoints (logic in [`crate::service::keys`]).

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::api::extract::ApiQuery;
use crate::api::sync::SyncToken;
use crate::auth::AuthedDevice;
use crate::error::{ApiError, ApiJson, ApiResult};
use crate::service::keys;
use crate::state::AppState;

/// # POST /_matrix/client/v3/keys/upload
/// - `device_keys` must name the authenticated user and device (else 400) and carry
///   `algorithms`, `keys`, `signatures` (else 400 `M_BAD_JSON`); stored verbatim.
/// - One-time keys: identical re-uploads are ignored; a different key under a used ID is
///   400 `M_UNKNOWN`. Fallback keys replace the previous one per algorithm (unused again).
/// - Answers `one_time_key_counts` with an explicit `signed_curve25519` count.
pub async fn upload(
    State(state): State<AppState>,
    auth: AuthedDevice,
    ApiJson(body): ApiJson<Map<String, Value>>,
) -> ApiResult<Json<Value>> {
    let counts = keys::upload(&state, &auth.user_id, &auth.device_id, &body).await?;
    Ok(Json(json!({ "one_time_key_counts": counts })))
}

/// # POST /_matrix/client/v3/keys/query
/// `[]` means all devices; a known user without keys is `{}`; remote users go through the
/// federation proxy (or `failures` when none is installed).
pub async fn query(
    State(state): State<AppState>,
    auth: AuthedDevice,
    ApiJson(body): ApiJson<Map<String, Value>>,
) -> ApiResult<Json<Value>> {
    Ok(Json(keys::query(&state, &auth.user_id, &body).await?))
}

/// # POST /_matrix/client/v3/keys/claim
/// Matrix claims consume one-time keys in upload order, then fall back to the (marked used,
/// never consumed) fallback key; users with nothing left are omitted. Hush extension:
/// algorithm `hush.x3dh_bundle` (docs/api.md).
pub async fn claim(
    State(state): State<AppState>,
    auth: AuthedDevice,
    ApiJson(body): ApiJson<Map<String, Value>>,
) -> ApiResult<Json<Value>> {
    Ok(Json(keys::claim(&state, &auth.user_id, &body).await?))
}

/// Query of `GET /keys/changes`.
#[derive(Debug, Deserialize)]
pub struct ChangesQuery {
    from: Option<String>,
    to: Option<String>,
}

/// # GET /_matrix/client/v3/keys/changes?from=&to=
/// Users whose device lists changed since the `from` sync token (`to` is validated and
/// otherwise ignored: changes up to now are returned).
pub async fn changes(
    State(state): State<AppState>,
    auth: AuthedDevice,
    ApiQuery(query): ApiQuery<ChangesQuery>,
) -> ApiResult<Json<Value>> {
    let from = query
        .from
        .ok_or_else(|| ApiError::missing_param("from is required"))?;
    let from = SyncToken::parse(&from)?;
    if let Some(to) = &query.to {
        SyncToken::parse(to)?;
    }
    let changed = state
        .store()
        .device_list_changes(&auth.user_id, from.device_lists)
        .await?;
    Ok(Json(json!({ "changed": changed, "left": [] })))
}
