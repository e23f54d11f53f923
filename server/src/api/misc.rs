//! Discovery and small endpoints: versions, capabilities, well-known, filters.

use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};

use crate::auth::AuthedDevice;
use crate::error::{ApiError, ApiJson, ApiResult};
use crate::state::AppState;

/// Spec versions this server speaks (the subset Hush implements is documented in docs/api.md).
pub const VERSIONS: &[&str] = &[
    "r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10",
    "v1.11", "v1.12",
];

/// # GET /_matrix/client/versions
/// No authentication; also the health check.
pub async fn versions() -> Json<Value> {
    Json(json!({ "versions": VERSIONS, "unstable_features": {} }))
}

/// # GET /_matrix/client/v3/capabilities
/// Password change is not offered over the API.
pub async fn capabilities(_auth: AuthedDevice) -> Json<Value> {
    Json(json!({ "capabilities": { "m.change_password": { "enabled": false } } }))
}

/// # GET /.well-known/matrix/client
/// Points clients at this server (scheme from whether TLS is configured).
pub async fn well_known_client(State(state): State<AppState>) -> Json<Value> {
    let config = state.config();
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    Json(json!({ "m.homeserver": { "base_url": format!("{scheme}://{}", config.server_name) } }))
}

/// # POST /_matrix/client/v3/user/{userId}/filter
/// Filters are accepted and ignored (there are no rooms); always returns filter `0`.
pub async fn create_filter(
    auth: AuthedDevice,
    Path(user_id): Path<String>,
    ApiJson(_filter): ApiJson<Value>,
) -> ApiResult<Json<Value>> {
    if user_id != auth.user_id {
        return Err(ApiError::forbidden("Cannot create filters for other users"));
    }
    Ok(Json(json!({ "filter_id": "0" })))
}

/// # GET /_matrix/client/v3/user/{userId}/filter/{filterId}
/// Returns the empty filter for any ID this server handed out.
pub async fn get_filter(
    auth: AuthedDevice,
    Path((user_id, filter_id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    if user_id != auth.user_id {
        return Err(ApiError::forbidden("Cannot read other users' filters"));
    }
    if filter_id != "0" {
        return Err(ApiError::not_found("No such filter"));
    }
    Ok(Json(json!({})))
}
