//! Device management: list, get, rename, delete (with password UIA).

use axum::extract::{Path, Request, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::accounts::{check_password, login_user, remove_devices, Identifier};
use crate::auth::AuthedDevice;
use crate::error::{parse_json_object, read_body, ApiError, ApiJson, ApiResult};
use crate::service::uia::{self, Uia};
use crate::state::AppState;
use crate::store::{DeviceRow, StoreError};

fn device_json(row: DeviceRow) -> Value {
    // matrix-nio requires these keys to be present (null allowed).
    json!({
        "device_id": row.device_id,
        "display_name": row.display_name,
        "last_seen_ip": row.last_seen_ip,
        "last_seen_ts": row.last_seen_ts,
    })
}

/// # GET /_matrix/client/v3/devices
pub async fn list(State(state): State<AppState>, auth: AuthedDevice) -> ApiResult<Json<Value>> {
    let devices: Vec<Value> = state
        .store()
        .list_devices(&auth.user_id)
        .await?
        .into_iter()
        .map(device_json)
        .collect();
    Ok(Json(json!({ "devices": devices })))
}

/// # GET /_matrix/client/v3/devices/{deviceId}
/// 404 for unknown devices and other users' devices alike.
pub async fn get_one(
    State(state): State<AppState>,
    auth: AuthedDevice,
    Path(device_id): Path<String>,
) -> ApiResult<Json<Value>> {
    match state.store().get_device(&auth.user_id, &device_id).await? {
        Some(row) => Ok(Json(device_json(row))),
        None => Err(ApiError::not_found("Unknown device")),
    }
}

/// Body of `PUT /devices/{deviceId}`.
#[derive(Debug, Deserialize)]
pub struct UpdateDevice {
    display_name: Option<String>,
}

/// # PUT /_matrix/client/v3/devices/{deviceId}
/// Sets (or clears, with `null`) the display name; 404 for unknown devices.
pub async fn update(
    State(state): State<AppState>,
    auth: AuthedDevice,
    Path(device_id): Path<String>,
    ApiJson(body): ApiJson<UpdateDevice>,
) -> ApiResult<Json<Value>> {
    match state
        .store()
        .set_device_display_name(&auth.user_id, &device_id, body.display_name.as_deref())
        .await
    {
        Ok(()) => Ok(Json(json!({}))),
        Err(StoreError::NotFound) => Err(ApiError::not_found("Unknown device")),
        Err(e) => Err(e.into()),
    }
}

/// Body of device deletion requests.
#[derive(Deserialize, Default)]
pub struct DeleteBody {
    auth: Option<Value>,
    devices: Option<Vec<String>>,
}

/// Runs the `m.login.password` UIA for deleting devices of `auth.user_id`.
async fn password_uia(state: &AppState, who: &AuthedDevice, auth: Option<&Value>) -> ApiResult<()> {
    let flow = Uia::new(
        state.store().clone(),
        format!("delete_devices:{}", who.user_id),
        vec![vec![uia::PASSWORD]],
    );
    let stage = flow.start(auth).await?;
    let identifier = match stage.auth.get("identifier") {
        Some(v) => Some(
            serde_json::from_value::<Identifier>(v.clone())
                .map_err(|_| ApiError::bad_json("Invalid identifier"))?,
        ),
        None => None,
    };
    let legacy = stage.auth.get("user").and_then(Value::as_str);
    let user = match (&identifier, legacy) {
        (None, None) => who.user_id.clone(),
        _ => login_user(identifier.as_ref(), legacy)?,
    };
    let password = stage
        .auth
        .get("password")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    match check_password(state, &user, password).await {
        Ok(user_id) if user_id == who.user_id => {}
        Ok(_) => {
            return Err(ApiError::forbidden(
                "Authenticated as a different user than the one whose devices are deleted",
            ))
        }
        Err(e) if e.errcode() == "M_FORBIDDEN" || e.errcode() == "M_USER_DEACTIVATED" => {
            return Err(flow.failed(&stage, "M_FORBIDDEN", "Invalid password"));
        }
        Err(e) => return Err(e),
    }
    let session = stage.session.clone();
    flow.complete(stage, serde_json::Map::new()).await?;
    flow.finish(&session).await;
    Ok(())
}

/// # DELETE /_matrix/client/v3/devices/{deviceId}
/// `m.login.password` UIA; a body-less request is treated like `{}` (401 challenge).
pub async fn delete_one(
    State(state): State<AppState>,
    auth: AuthedDevice,
    Path(device_id): Path<String>,
    req: Request,
) -> ApiResult<Json<Value>> {
    let bytes = read_body(req, &state).await?;
    let body: DeleteBody = if bytes.iter().all(u8::is_ascii_whitespace) {
        DeleteBody::default()
    } else {
        parse_json_object(&bytes)?
    };
    password_uia(&state, &auth, body.auth.as_ref()).await?;
    remove_devices(&state, &auth.user_id, &[device_id]).await?;
    Ok(Json(json!({})))
}

/// # POST /_matrix/client/v3/delete_devices
/// `{"devices": [...], "auth": {...}}` with `m.login.password` UIA (matrix-nio uses this).
pub async fn delete_many(
    State(state): State<AppState>,
    auth: AuthedDevice,
    ApiJson(body): ApiJson<DeleteBody>,
) -> ApiResult<Json<Value>> {
    let devices = body
        .devices
        .ok_or_else(|| ApiError::bad_json("devices is required"))?;
    password_uia(&state, &auth, body.auth.as_ref()).await?;
    remove_devices(&state, &auth.user_id, &devices).await?;
    Ok(Json(json!({})))
}
