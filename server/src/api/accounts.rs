//! Accounts: login, registration (with user-interactive auth), logout, whoami.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::api::extract::ApiQuery;
use crate::auth::AuthedDevice;
use crate::config::RegistrationMode;
use crate::error::{ApiError, ApiJson, ApiResult};
use crate::service::identifiers::{
    hash_token, is_opaque_id, new_access_token, new_device_id, normalise_localpart,
    random_alphanumeric, user_id as make_user_id,
};
use crate::service::uia::{self, Uia};
use crate::service::{now_ms, passwords};
use crate::state::AppState;
use crate::store::StoreError;

/// # GET /_matrix/client/v3/login
pub async fn login_flows() -> Json<Value> {
    Json(json!({ "flows": [{ "type": "m.login.password" }] }))
}

/// The `identifier` object of login and password UIA.
#[derive(Debug, Deserialize)]
pub struct Identifier {
    /// The identifier type; only `m.id.user` is supported.
    #[serde(rename = "type")]
    pub kind: String,
    /// The user name or full user ID.
    pub user: Option<String>,
}

/// Body of `POST /login`.
#[derive(Deserialize)]
pub struct LoginRequest {
    /// The login type; only `m.login.password` is supported.
    #[serde(rename = "type")]
    pub kind: String,
    /// Who is logging in.
    pub identifier: Option<Identifier>,
    /// Deprecated top-level user.
    pub user: Option<String>,
    /// The password.
    pub password: Option<String>,
    /// The device to reuse, if any.
    pub device_id: Option<String>,
    /// Display name of a new device.
    pub initial_device_display_name: Option<String>,
}

/// A login request that passed every check that needs no database.
pub struct CheckedLogin {
    /// The user name or user ID as given (not yet normalised).
    pub user: String,
    /// The password to check.
    pub password: String,
    /// The requested device ID, or a fresh one.
    pub device_id: String,
    /// Display name of a new device.
    pub display_name: Option<String>,
}

impl LoginRequest {
    /// Checks the login type, the identifier, the password's presence and the device ID, in
    /// that order (400/`M_UNKNOWN`-shaped errors, no database access).
    pub fn check(self) -> ApiResult<CheckedLogin> {
        if self.kind != uia::PASSWORD {
            return Err(ApiError::unknown("Unknown login type"));
        }
        let user = login_user(self.identifier.as_ref(), self.user.as_deref())?;
        let password = self
            .password
            .ok_or_else(|| ApiError::bad_json("password is required"))?;
        let device_id = checked_device_id(self.device_id)?;
        Ok(CheckedLogin {
            user,
            password,
            device_id,
            display_name: self.initial_device_display_name,
        })
    }
}

/// Picks the user name out of `identifier` or the legacy `user` field.
pub fn login_user(identifier: Option<&Identifier>, legacy: Option<&str>) -> ApiResult<String> {
    match identifier {
        Some(id) if id.kind == "m.id.user" => id
            .user
            .clone()
            .ok_or_else(|| ApiError::bad_json("identifier.user is required")),
        Some(_) => Err(ApiError::unknown(
            "Only m.id.user identifiers are supported",
        )),
        None => legacy
            .map(str::to_owned)
            .ok_or_else(|| ApiError::bad_json("identifier is required")),
    }
}

/// Checks a user's password. `Ok(user_id)` if it matches; 403 `M_FORBIDDEN` for a wrong
/// password or an unknown user alike; 403 `M_USER_DEACTIVATED` for a deactivated account.
pub async fn check_password(state: &AppState, user: &str, password: String) -> ApiResult<String> {
    let server_name = &state.config().server_name;
    let forbidden = || ApiError::forbidden("Invalid username or password");
    let Ok(localpart) = normalise_localpart(user, server_name) else {
        return Err(forbidden());
    };
    let user_id = make_user_id(&localpart, server_name);
    let row = state.store().get_user(&user_id).await?;
    let hash = row.as_ref().and_then(|r| r.password_hash.clone());
    let matches = passwords::verify(password, hash).await?;
    if row.as_ref().is_some_and(|r| r.deactivated) {
        // Deactivation clears the hash; say so instead of "wrong password" (as Synapse does).
        return Err(ApiError::user_deactivated());
    }
    if !matches {
        return Err(forbidden());
    }
    Ok(user_id)
}

/// A requested device ID if it is a valid opaque ID (else 400 `M_INVALID_PARAM`), or a fresh one.
pub fn checked_device_id(device_id: Option<String>) -> ApiResult<String> {
    match device_id {
        Some(id) if is_opaque_id(&id) => Ok(id),
        Some(_) => Err(ApiError::invalid_param(
            "device_id must be 1-255 characters of [A-Za-z0-9-._~]",
        )),
        None => Ok(new_device_id()),
    }
}

/// Creates (or reuses) a device with a fresh access token and returns the token.
async fn open_session(
    state: &AppState,
    user_id: &str,
    device_id: &str,
    display_name: Option<&str>,
) -> ApiResult<String> {
    let token = new_access_token();
    state
        .store()
        .login_device(
            user_id,
            device_id,
            display_name,
            &hash_token(&token),
            now_ms(),
        )
        .await?;
    state.notifier().wake_device_lists_of(user_id);
    Ok(token)
}

/// # POST /_matrix/client/v3/login
/// - `m.login.password` with `identifier` (`m.id.user`) or the legacy `user` field.
/// - The user name is down-cased; a full user ID of this server is accepted.
/// - An existing `device_id` is reused (keys and inbox survive, older tokens are revoked).
pub async fn login(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<LoginRequest>,
) -> ApiResult<Json<Value>> {
    let CheckedLogin {
        user,
        password,
        device_id,
        display_name,
    } = req.check()?;
    let user_id = check_password(&state, &user, password).await?;
    let token = open_session(&state, &user_id, &device_id, display_name.as_deref()).await?;
    Ok(Json(json!({
        "user_id": user_id,
        "access_token": token,
        "device_id": device_id,
        "home_server": state.config().server_name,
    })))
}

/// Query of `POST /register`.
#[derive(Debug, Deserialize)]
pub struct RegisterQuery {
    /// `user` (or absent); `guest` is refused.
    pub kind: Option<String>,
}

/// Body of `POST /register`.
#[derive(Deserialize)]
pub struct RegisterRequest {
    /// The user-interactive authentication dict.
    pub auth: Option<Value>,
    /// The wanted user name (a random one if absent).
    pub username: Option<String>,
    /// The password (an account without one cannot log in).
    pub password: Option<String>,
    /// The device to create.
    pub device_id: Option<String>,
    /// Display name of the new device.
    pub initial_device_display_name: Option<String>,
    /// Create the account without logging in.
    #[serde(default)]
    pub inhibit_login: bool,
}

fn registration_flows(mode: RegistrationMode) -> Vec<Vec<&'static str>> {
    match mode {
        RegistrationMode::Token => vec![vec![uia::REGISTRATION_TOKEN, uia::DUMMY]],
        _ => vec![vec![uia::DUMMY]],
    }
}

/// Normalises a requested username (a localpart or a user ID of `server_name`); 400
/// `M_INVALID_USERNAME` if it is not allowed.
pub fn requested_localpart(username: &str, server_name: &str) -> ApiResult<String> {
    normalise_localpart(username, server_name)
        .map_err(|e| ApiError::invalid_username(e.to_string()))
}

/// Normalises a requested username and checks it is free.
async fn available_localpart(state: &AppState, username: &str) -> ApiResult<String> {
    let server_name = &state.config().server_name;
    let localpart = requested_localpart(username, server_name)?;
    let user_id = make_user_id(&localpart, server_name);
    if state.store().get_user(&user_id).await?.is_some() {
        return Err(ApiError::user_in_use());
    }
    Ok(localpart)
}

/// # POST /_matrix/client/v3/register
/// - Closed registration and `kind=guest` get 403 `M_FORBIDDEN`.
/// - Username checks (`M_INVALID_USERNAME`, `M_USER_IN_USE`) run before UIA.
/// - Open: flow `[m.login.dummy]`, including the one-shot form without a session.
/// - Token: flow `[m.login.registration_token, m.login.dummy]`; the token's use is consumed
///   only when the account is created.
pub async fn register(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<RegisterQuery>,
    ApiJson(req): ApiJson<RegisterRequest>,
) -> ApiResult<Json<Value>> {
    let mode = state.config().registration;
    if mode == RegistrationMode::Closed {
        return Err(ApiError::forbidden("Registration is disabled"));
    }
    if query.kind.as_deref().is_some_and(|k| k != "user") {
        return Err(ApiError::forbidden("Guest access is disabled"));
    }
    let localpart = match &req.username {
        Some(name) => Some(available_localpart(&state, name).await?),
        None => None,
    };
    let device_id = checked_device_id(req.device_id.clone())?;

    let flow = Uia::new(state.store().clone(), "register", registration_flows(mode));
    let stage = flow.start(req.auth.as_ref()).await?;
    let mut new_params = Map::new();
    // m.login.dummy always passes; a registration token must be valid now.
    if stage.stage == uia::REGISTRATION_TOKEN {
        let token = stage
            .auth
            .get("token")
            .and_then(Value::as_str)
            .unwrap_or("");
        let valid = !token.is_empty()
            && token.len() <= 64
            && state
                .store()
                .registration_token_valid(token, now_ms())
                .await?;
        if !valid {
            return Err(flow.failed(&stage, "M_FORBIDDEN", "Invalid registration token"));
        }
        new_params.insert("registration_token".into(), Value::from(token));
    }
    let session = stage.session.clone();
    let params = flow.complete(stage, new_params).await?;

    // All stages done: create the account.
    let server_name = state.config().server_name.clone();
    let localpart = match localpart {
        Some(l) => l,
        None => format!("u{}", random_alphanumeric(12).to_lowercase()),
    };
    let user_id = make_user_id(&localpart, &server_name);
    let password_hash = match req.password {
        Some(p) => Some(passwords::hash(p).await?),
        None => None,
    };
    let token = params.get("registration_token").and_then(Value::as_str);
    match state
        .store()
        .create_user(&user_id, password_hash.as_deref(), token, now_ms())
        .await
    {
        Ok(()) => {}
        Err(StoreError::Conflict) => return Err(ApiError::user_in_use()),
        Err(StoreError::NotFound) => {
            flow.finish(&session).await;
            return Err(ApiError::forbidden(
                "The registration token is no longer valid",
            ));
        }
        Err(e) => return Err(e.into()),
    }
    flow.finish(&session).await;

    if req.inhibit_login {
        return Ok(Json(
            json!({ "user_id": user_id, "home_server": server_name }),
        ));
    }
    let access_token = open_session(
        &state,
        &user_id,
        &device_id,
        req.initial_device_display_name.as_deref(),
    )
    .await?;
    Ok(Json(json!({
        "user_id": user_id,
        "access_token": access_token,
        "device_id": device_id,
        "home_server": server_name,
    })))
}

/// Query of `GET /register/available`.
#[derive(Debug, Deserialize)]
pub struct AvailableQuery {
    username: Option<String>,
}

/// # GET /_matrix/client/v3/register/available?username=
pub async fn register_available(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<AvailableQuery>,
) -> ApiResult<Json<Value>> {
    if state.config().registration == RegistrationMode::Closed {
        return Err(ApiError::forbidden("Registration is disabled"));
    }
    let username = query
        .username
        .ok_or_else(|| ApiError::missing_param("username is required"))?;
    available_localpart(&state, &username).await?;
    Ok(Json(json!({ "available": true })))
}

/// Query of the registration-token validity endpoint.
#[derive(Debug, Deserialize)]
pub struct TokenValidityQuery {
    token: Option<String>,
}

/// # GET /_matrix/client/v1/register/m.login.registration_token/validity?token=
/// 403 unless registration is token-gated.
pub async fn registration_token_validity(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<TokenValidityQuery>,
) -> ApiResult<Json<Value>> {
    if state.config().registration != RegistrationMode::Token {
        return Err(ApiError::forbidden("Registration tokens are not in use"));
    }
    let token = query
        .token
        .ok_or_else(|| ApiError::missing_param("token is required"))?;
    let valid = !token.is_empty()
        && token.len() <= 64
        && state
            .store()
            .registration_token_valid(&token, now_ms())
            .await?;
    Ok(Json(json!({ "valid": valid })))
}

/// Deletes devices and tells waiting syncs that device lists changed.
pub async fn remove_devices(state: &AppState, user_id: &str, devices: &[String]) -> ApiResult<()> {
    state
        .store()
        .delete_devices(user_id, devices, now_ms())
        .await?;
    state.notifier().wake_device_lists_of(user_id);
    Ok(())
}

/// # POST /_matrix/client/v3/logout
/// Deletes the device with its token, keys and inbox. The body is ignored.
pub async fn logout(State(state): State<AppState>, auth: AuthedDevice) -> ApiResult<Json<Value>> {
    remove_devices(&state, &auth.user_id, &[auth.device_id]).await?;
    Ok(Json(json!({})))
}

/// # POST /_matrix/client/v3/logout/all
/// Deletes every device of the user. The body is ignored.
pub async fn logout_all(
    State(state): State<AppState>,
    auth: AuthedDevice,
) -> ApiResult<Json<Value>> {
    let devices = state.store().device_ids(&auth.user_id).await?;
    remove_devices(&state, &auth.user_id, &devices).await?;
    Ok(Json(json!({})))
}

/// # GET /_matrix/client/v3/account/whoami
pub async fn whoami(auth: AuthedDevice) -> Json<Value> {
    Json(json!({ "user_id": auth.user_id, "device_id": auth.device_id, "is_guest": false }))
}
