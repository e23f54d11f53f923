//! Remote end-to-end key endpoints: `user/keys/query`, `user/keys/claim`, `user/devices`.
//!
//! They reuse the client API's key logic (including the Hush bundle claim), restricted to users
//! of this server.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use super::send::local_users_only;
use super::{internal, FedState};
use crate::service::identifiers::server_of;
use crate::xmatrix_auth::{FederationError, FederationRequest};

fn body_object(request: FederationRequest) -> Result<Map<String, Value>, FederationError> {
    match request.body {
        Some(Value::Object(map)) => Ok(map),
        _ => Err(FederationError::bad_json("A JSON body is required")),
    }
}

/// # POST /_matrix/federation/v1/user/keys/query
/// - `{"device_keys": {"@u:us": [devices]}}`; users of other servers are ignored.
/// - Answers `device_keys` in the client API's shape (with `unsigned.device_display_name`).
pub async fn query(State(state): State<FedState>, request: FederationRequest) -> Response {
    let origin = request.origin.to_string();
    let body = match body_object(request) {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let Some(Value::Object(wanted)) = body.get("device_keys") else {
        return FederationError::bad_json("`device_keys` must be an object").into_response();
    };
    let mut local = Map::new();
    local.insert(
        "device_keys".into(),
        Value::Object(local_users_only(wanted, state.fed.server_name.as_str())),
    );
    match crate::service::keys::query(&state.app, &origin, &local).await {
        Ok(Value::Object(mut answer)) => {
            answer.remove("failures");
            Json(Value::Object(answer)).into_response()
        }
        Ok(_) => internal("keys query returned a non-object").into_response(),
        Err(e) => e.into_response(),
    }
}

/// # POST /_matrix/federation/v1/user/keys/claim
/// - `{"one_time_keys": {"@u:us": {"DEV": "signed_curve25519"}}}`; users of other servers are
///   ignored. Same rules as the client API: atomic one-shot claims, fallback keys, and the
///   `hush.x3dh_bundle` bundle claim.
pub async fn claim(State(state): State<FedState>, request: FederationRequest) -> Response {
    let body = match body_object(request) {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let Some(Value::Object(wanted)) = body.get("one_time_keys") else {
        return FederationError::bad_json("`one_time_keys` must be an object").into_response();
    };
    let mut local = Map::new();
    local.insert(
        "one_time_keys".into(),
        Value::Object(local_users_only(wanted, state.fed.server_name.as_str())),
    );
    match crate::service::keys::claim(&state.app, &local).await {
        Ok(Value::Object(mut answer)) => {
            answer.remove("failures");
            Json(Value::Object(answer)).into_response()
        }
        Ok(_) => internal("keys claim returned a non-object").into_response(),
        Err(e) => e.into_response(),
    }
}

/// # GET /_matrix/federation/v1/user/devices/{userId}
/// - Every device of a local user with its keys (if uploaded) and display name, and the current
///   device-list stream position as `stream_id`. Unknown or non-local users: 404.
pub async fn user_devices(
    State(state): State<FedState>,
    Path(user_id): Path<String>,
    _request: FederationRequest,
) -> Result<Json<Value>, FederationError> {
    let not_here = || FederationError::new(StatusCode::NOT_FOUND, "M_NOT_FOUND", "Not a user here");
    if server_of(&user_id) != Some(state.fed.server_name.as_str()) {
        return Err(not_here());
    }
    let store = state.app.store();
    if store.get_user(&user_id).await.map_err(internal)?.is_none() {
        return Err(not_here());
    }
    let devices = store.list_devices(&user_id).await.map_err(internal)?;
    let keys = store
        .get_device_keys(&user_id, &[])
        .await
        .map_err(internal)?;
    let stream_id = store.device_list_position().await.map_err(internal)?;
    let devices: Vec<Value> = devices
        .into_iter()
        .map(|d| {
            let mut entry = json!({"device_id": d.device_id});
            if let Some((json, _)) = keys.get(&d.device_id) {
                if let Ok(k) = serde_json::from_str::<Value>(json) {
                    entry["keys"] = k;
                }
            }
            if let Some(name) = d.display_name {
                entry["device_display_name"] = Value::from(name);
            }
            entry
        })
        .collect();
    Ok(Json(json!({
        "user_id": user_id,
        "stream_id": stream_id.max(0),
        "devices": devices,
    })))
}
