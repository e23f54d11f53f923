//! The homeserver's client-server API (Matrix v3 subset): typed calls over reqwest, Matrix
//! errors turned into clear sentences, and retries with backoff on network errors and on
//! `429 M_LIMIT_EXCEEDED` (honouring `retry_after_ms`).

use std::fmt;
use std::path::Path;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use zeroize::Zeroizing;

/// How many times a request is retried after a network error or a rate limit.
const MAX_RETRIES: u32 = 5;
/// First backoff after a network error.
const BACKOFF_START: Duration = Duration::from_millis(250);
/// Longest single wait (backoff or `retry_after_ms`).
const BACKOFF_CAP: Duration = Duration::from_secs(10);
/// Timeout of an ordinary request (a long-polling sync adds its own timeout).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A failed API call.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The server could not be reached (after retries).
    #[error("the server at {url} is unreachable ({reason})")]
    Unreachable {
        /// The server's base URL.
        url: String,
        /// What went wrong, without secrets.
        reason: String,
    },
    /// The server answered with a Matrix error.
    #[error("{}", describe(*.status, .errcode, .error))]
    Matrix {
        /// HTTP status.
        status: u16,
        /// `errcode`.
        errcode: String,
        /// `error`.
        error: String,
    },
    /// Still rate limited after the retries.
    #[error("the server is rate limiting us; try again in {} s", .retry_after_ms.div_ceil(1000))]
    RateLimited {
        /// The last `retry_after_ms`.
        retry_after_ms: u64,
    },
    /// The answer did not have the expected shape.
    #[error("the server sent an unexpected answer: {0}")]
    Protocol(String),
    /// A local configuration problem (e.g. an unreadable CA file).
    #[error("{0}")]
    Config(String),
}

impl ApiError {
    /// The Matrix `errcode`, if the server sent one.
    pub fn errcode(&self) -> Option<&str> {
        match self {
            Self::Matrix { errcode, .. } => Some(errcode),
            _ => None,
        }
    }

    /// Whether the access token was refused (logged out elsewhere, device deleted).
    pub fn is_unknown_token(&self) -> bool {
        matches!(self.errcode(), Some("M_UNKNOWN_TOKEN" | "M_MISSING_TOKEN"))
    }
}

fn describe(status: u16, errcode: &str, error: &str) -> String {
    let sentence = match errcode {
        "M_FORBIDDEN" if status == 403 || status == 401 => {
            "the server refused: wrong user name or password, or not allowed"
        }
        "M_USER_IN_USE" => "that user name is already taken",
        "M_INVALID_USERNAME" => "that user name is not valid (use a-z, 0-9 and . _ = - /)",
        "M_UNKNOWN_TOKEN" | "M_MISSING_TOKEN" => {
            "the server no longer accepts this device's login (logged out or removed); run `hush login` again"
        }
        "M_USER_DEACTIVATED" => "this account has been deactivated",
        "M_NOT_FOUND" => "not found on the server",
        "M_TOO_LARGE" => "the request is too large for the server",
        "M_LIMIT_EXCEEDED" => "the server is rate limiting us",
        "M_UNRECOGNIZED" => "the server does not support this request (is it a Hush homeserver?)",
        _ => "",
    };
    if sentence.is_empty() {
        format!("the server answered {status} {errcode}: {error}")
    } else if error.is_empty() {
        sentence.to_owned()
    } else {
        format!("{sentence} ({errcode}: {error})")
    }
}

/// `access_token`, `user_id`, `device_id` of a login or registration.
#[derive(Deserialize)]
pub struct LoginResponse {
    /// The user ID.
    pub user_id: String,
    /// The device ID.
    pub device_id: String,
    /// The access token.
    pub access_token: String,
}

impl fmt::Debug for LoginResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginResponse")
            .field("user_id", &self.user_id)
            .field("device_id", &self.device_id)
            .finish_non_exhaustive()
    }
}

/// A device as listed by `GET /devices`.
#[derive(Debug, Clone, Deserialize)]
pub struct DeviceInfo {
    /// The device ID.
    pub device_id: String,
    /// Its display name.
    pub display_name: Option<String>,
    /// When it was last seen (ms).
    pub last_seen_ts: Option<u64>,
}

/// One to-device event from `/sync`.
#[derive(Debug, Clone, Deserialize)]
pub struct ToDeviceEvent {
    /// Sending user.
    pub sender: String,
    /// Event type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Content.
    pub content: Value,
}

/// The parts of a `/sync` answer the client uses.
#[derive(Debug, Clone, Default)]
pub struct SyncResponse {
    /// The next position.
    pub next_batch: String,
    /// To-device events in order.
    pub events: Vec<ToDeviceEvent>,
    /// Users whose device lists changed.
    pub changed: Vec<String>,
    /// Unclaimed `signed_curve25519` one-time keys of this device (None if absent).
    pub one_time_key_count: Option<usize>,
    /// Fallback key algorithms not yet used.
    pub unused_fallback: Option<Vec<String>>,
}

/// Connection settings of a profile.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<Zeroizing<String>>,
}

impl fmt::Debug for Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Api")
            .field("base", &self.base)
            .field("logged_in", &self.token.is_some())
            .finish()
    }
}

/// Builds the HTTP client, trusting `ca_file` (PEM) in addition to the web roots.
pub fn http_client(ca_file: Option<&Path>) -> Result<reqwest::Client, ApiError> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .connect_timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(32);
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| {
            ApiError::Config(format!("cannot read CA file {}: {e}", path.display()))
        })?;
        let cert = reqwest::Certificate::from_pem(&pem)
            .map_err(|e| ApiError::Config(format!("CA file {} is not PEM: {e}", path.display())))?;
        builder = builder.add_root_certificate(cert);
    }
    builder
        .build()
        .map_err(|e| ApiError::Config(format!("cannot build the HTTP client: {e}")))
}

impl Api {
    /// A client for the homeserver at `base` (e.g. `https://hs.example:8448`).
    pub fn new(http: reqwest::Client, base: &str) -> Self {
        Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token: None,
        }
    }

    /// The same client with an access token.
    pub fn with_token(mut self, token: &str) -> Self {
        self.token = Some(Zeroizing::new(token.to_owned()));
        self
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends one request with retries; returns the status and JSON body of the final answer.
    async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<(StatusCode, Value), ApiError> {
        let url = format!("{}/_matrix/client{path}", self.base);
        let mut backoff = BACKOFF_START;
        let mut attempt = 0;
        loop {
            let mut req = self.http.request(method.clone(), &url).timeout(timeout);
            if let Some(token) = &self.token {
                req = req.bearer_auth(token.as_str());
            }
            if let Some(body) = body {
                req = req.json(body);
            }
            match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let value: Value = resp.json().await.unwrap_or(Value::Null);
                    if status == StatusCode::TOO_MANY_REQUESTS {
                        let wait = value
                            .get("retry_after_ms")
                            .and_then(Value::as_u64)
                            .unwrap_or(backoff.as_millis() as u64);
                        attempt += 1;
                        if attempt > MAX_RETRIES {
                            return Err(ApiError::RateLimited {
                                retry_after_ms: wait,
                            });
                        }
                        tokio::time::sleep(Duration::from_millis(wait).min(BACKOFF_CAP)).await;
                        continue;
                    }
                    return Ok((status, value));
                }
                Err(e) => {
                    attempt += 1;
                    if attempt > MAX_RETRIES {
                        return Err(ApiError::Unreachable {
                            url: self.base.clone(),
                            reason: network_reason(&e),
                        });
                    }
                    tracing::debug!(attempt, "network error, retrying: {}", network_reason(&e));
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_CAP);
                }
            }
        }
    }

    /// A request whose success is 200; other answers become [`ApiError::Matrix`].
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ApiError> {
        let (status, value) = self.raw(method, path, body, REQUEST_TIMEOUT).await?;
        ok_or_error(status, value)
    }

    /// `GET /versions` (reachability check).
    pub async fn versions(&self) -> Result<Value, ApiError> {
        self.call(Method::GET, "/versions", None).await
    }

    /// Registers with user-interactive auth: `m.login.dummy`, and
    /// `m.login.registration_token` when a token is given and the server asks for it.
    pub async fn register(
        &self,
        username: &str,
        password: &str,
        token: Option<&str>,
        device_name: &str,
    ) -> Result<LoginResponse, ApiError> {
        let mut body = json!({
            "username": username,
            "password": password,
            "initial_device_display_name": device_name,
        });
        let (status, value) = self
            .raw(Method::POST, "/v3/register", Some(&body), REQUEST_TIMEOUT)
            .await?;
        if status == StatusCode::OK {
            return parse(value);
        }
        if status != StatusCode::UNAUTHORIZED {
            return Err(matrix_error(status, &value));
        }
        let session = value
            .get("session")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::Protocol("registration answer without a session".into()))?
            .to_owned();
        let stages = pick_flow(&value, token.is_some()).ok_or_else(|| {
            if value.to_string().contains("m.login.registration_token") {
                ApiError::Config(
                    "this server requires a registration token (use --token or --token-file)"
                        .into(),
                )
            } else {
                ApiError::Protocol(
                    "the server offers no registration flow this client supports".into(),
                )
            }
        })?;
        let mut last = value;
        for stage in stages {
            let auth = match stage.as_str() {
                "m.login.registration_token" => {
                    json!({"type": stage, "session": session, "token": token.unwrap_or_default()})
                }
                _ => json!({"type": stage, "session": session}),
            };
            body["auth"] = auth;
            let (status, value) = self
                .raw(Method::POST, "/v3/register", Some(&body), REQUEST_TIMEOUT)
                .await?;
            if status == StatusCode::OK {
                return parse(value);
            }
            if status != StatusCode::UNAUTHORIZED || value.get("errcode").is_some() {
                if stage == "m.login.registration_token" && status == StatusCode::UNAUTHORIZED {
                    return Err(ApiError::Config(
                        "the registration token was refused (wrong, used up or expired)".into(),
                    ));
                }
                return Err(matrix_error(status, &value));
            }
            last = value;
        }
        Err(ApiError::Protocol(format!(
            "registration did not complete: {}",
            last.get("completed").cloned().unwrap_or(Value::Null)
        )))
    }

    /// `POST /login` with a password.
    pub async fn login(
        &self,
        user: &str,
        password: &str,
        device_id: Option<&str>,
        device_name: &str,
    ) -> Result<LoginResponse, ApiError> {
        let mut body = json!({
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user},
            "password": password,
            "initial_device_display_name": device_name,
        });
        if let Some(id) = device_id {
            body["device_id"] = json!(id);
        }
        parse(self.call(Method::POST, "/v3/login", Some(&body)).await?)
    }

    /// `POST /logout` (deletes this device on the server).
    pub async fn logout(&self) -> Result<(), ApiError> {
        self.call(Method::POST, "/v3/logout", Some(&json!({})))
            .await
            .map(|_| ())
    }

    /// `GET /account/whoami` → `(user_id, device_id)`.
    pub async fn whoami(&self) -> Result<(String, Option<String>), ApiError> {
        let v = self.call(Method::GET, "/v3/account/whoami", None).await?;
        let user = v
            .get("user_id")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::Protocol("whoami without user_id".into()))?;
        let device = v
            .get("device_id")
            .and_then(Value::as_str)
            .map(str::to_owned);
        Ok((user.to_owned(), device))
    }

    /// `GET /devices`.
    pub async fn devices(&self) -> Result<Vec<DeviceInfo>, ApiError> {
        let v = self.call(Method::GET, "/v3/devices", None).await?;
        serde_json::from_value(v.get("devices").cloned().unwrap_or(Value::Null))
            .map_err(|e| ApiError::Protocol(format!("devices: {e}")))
    }

    /// `PUT /devices/{id}` with a display name.
    pub async fn rename_device(&self, device_id: &str, name: &str) -> Result<(), ApiError> {
        let path = format!("/v3/devices/{}", encode(device_id));
        self.call(Method::PUT, &path, Some(&json!({"display_name": name})))
            .await
            .map(|_| ())
    }

    /// `DELETE /devices/{id}` with password auth (user-interactive).
    pub async fn delete_device(
        &self,
        device_id: &str,
        user_id: &str,
        password: &str,
    ) -> Result<(), ApiError> {
        let path = format!("/v3/devices/{}", encode(device_id));
        let (status, value) = self
            .raw(Method::DELETE, &path, Some(&json!({})), REQUEST_TIMEOUT)
            .await?;
        if status == StatusCode::OK {
            return Ok(());
        }
        if status != StatusCode::UNAUTHORIZED {
            return Err(matrix_error(status, &value));
        }
        let session = value
            .get("session")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let body = json!({"auth": {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user_id},
            "password": password,
            "session": session,
        }});
        self.call(Method::DELETE, &path, Some(&body))
            .await
            .map(|_| ())
    }

    /// `POST /keys/upload`; returns the `signed_curve25519` count.
    pub async fn upload_keys(&self, body: &Value) -> Result<usize, ApiError> {
        let v = self
            .call(Method::POST, "/v3/keys/upload", Some(body))
            .await?;
        Ok(v.pointer("/one_time_key_counts/signed_curve25519")
            .and_then(Value::as_u64)
            .unwrap_or(0) as usize)
    }

    /// `POST /keys/query` for all devices of `users`.
    pub async fn query_keys(&self, users: &[String]) -> Result<Value, ApiError> {
        let mut device_keys = Map::new();
        for u in users {
            device_keys.insert(u.clone(), json!([]));
        }
        self.call(
            Method::POST,
            "/v3/keys/query",
            Some(&json!({"device_keys": device_keys, "timeout": 10000})),
        )
        .await
    }

    /// Whether the server already holds published device keys for `user_id`'s `device_id`.
    pub async fn device_has_keys(&self, user_id: &str, device_id: &str) -> Result<bool, ApiError> {
        let answer = self.query_keys(&[user_id.to_owned()]).await?;
        Ok(answer
            .get("device_keys")
            .and_then(|d| d.get(user_id))
            .and_then(|d| d.get(device_id))
            .is_some_and(Value::is_object))
    }

    /// `POST /keys/claim` with `{user: {device: algorithm}}`.
    pub async fn claim_keys(&self, wanted: &Map<String, Value>) -> Result<Value, ApiError> {
        self.call(
            Method::POST,
            "/v3/keys/claim",
            Some(&json!({"one_time_keys": wanted, "timeout": 10000})),
        )
        .await
    }

    /// `PUT /sendToDevice/{type}/{txn}`; idempotent per txn id.
    pub async fn send_to_device(
        &self,
        event_type: &str,
        txn_id: &str,
        messages: &Value,
    ) -> Result<(), ApiError> {
        let path = format!("/v3/sendToDevice/{}/{}", encode(event_type), encode(txn_id));
        self.call(Method::PUT, &path, Some(&json!({"messages": messages})))
            .await
            .map(|_| ())
    }

    /// `GET /sync` with `since` and a long-poll `timeout_ms`.
    pub async fn sync(
        &self,
        since: Option<&str>,
        timeout_ms: u64,
    ) -> Result<SyncResponse, ApiError> {
        let mut path = format!("/v3/sync?timeout={timeout_ms}");
        if let Some(since) = since {
            path.push_str("&since=");
            path.push_str(&encode(since));
        }
        let (status, v) = self
            .raw(
                Method::GET,
                &path,
                None,
                REQUEST_TIMEOUT + Duration::from_millis(timeout_ms),
            )
            .await?;
        let v = ok_or_error(status, v)?;
        let next_batch = v
            .get("next_batch")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::Protocol("sync without next_batch".into()))?
            .to_owned();
        let events = v
            .pointer("/to_device/events")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|e| serde_json::from_value(e.clone()).ok())
                    .collect()
            })
            .unwrap_or_default();
        let changed = v
            .pointer("/device_lists/changed")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|u| u.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let one_time_key_count = v
            .pointer("/device_one_time_keys_count/signed_curve25519")
            .and_then(Value::as_u64)
            .map(|n| n as usize)
            .or_else(|| v.get("device_one_time_keys_count").map(|_| 0));
        let unused_fallback = v
            .get("device_unused_fallback_key_types")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|u| u.as_str().map(str::to_owned))
                    .collect()
            });
        Ok(SyncResponse {
            next_batch,
            events,
            changed,
            one_time_key_count,
            unused_fallback,
        })
    }
}

fn network_reason(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connection failed".into()
    } else {
        // reqwest errors name the URL but never headers or bodies.
        e.to_string()
    }
}

/// Percent-encodes a path segment.
fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn matrix_error(status: StatusCode, value: &Value) -> ApiError {
    ApiError::Matrix {
        status: status.as_u16(),
        errcode: value
            .get("errcode")
            .and_then(Value::as_str)
            .unwrap_or("M_UNKNOWN")
            .to_owned(),
        error: value
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
    }
}

fn ok_or_error(status: StatusCode, value: Value) -> Result<Value, ApiError> {
    if status.is_success() {
        Ok(value)
    } else {
        Err(matrix_error(status, &value))
    }
}

fn parse(value: Value) -> Result<LoginResponse, ApiError> {
    serde_json::from_value(value).map_err(|e| ApiError::Protocol(format!("login answer: {e}")))
}

/// The first advertised flow made only of stages this client can do.
fn pick_flow(uia: &Value, have_token: bool) -> Option<Vec<String>> {
    let completed: Vec<&str> = uia
        .get("completed")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    uia.get("flows")?.as_array()?.iter().find_map(|flow| {
        let stages: Vec<String> = flow
            .get("stages")?
            .as_array()?
            .iter()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect();
        let ok = stages
            .iter()
            .all(|s| s == "m.login.dummy" || (s == "m.login.registration_token" && have_token));
        ok.then(|| {
            stages
                .into_iter()
                .filter(|s| !completed.contains(&s.as_str()))
                .collect()
        })
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn flows_are_chosen_by_available_stages() {
        let uia = json!({"flows": [{"stages": ["m.login.registration_token", "m.login.dummy"]}], "session": "s"});
        assert_eq!(pick_flow(&uia, false), None);
        assert_eq!(
            pick_flow(&uia, true),
            Some(vec![
                "m.login.registration_token".to_owned(),
                "m.login.dummy".to_owned()
            ])
        );
        let open = json!({"flows": [{"stages": ["m.login.dummy"]}]});
        assert_eq!(
            pick_flow(&open, false),
            Some(vec!["m.login.dummy".to_owned()])
        );
    }

    #[test]
    fn errors_read_as_sentences() {
        let e = matrix_error(
            StatusCode::BAD_REQUEST,
            &json!({"errcode": "M_USER_IN_USE", "error": "taken"}),
        );
        assert!(e.to_string().starts_with("that user name is already taken"));
        let e = matrix_error(StatusCode::INTERNAL_SERVER_ERROR, &json!({}));
        assert_eq!(e.to_string(), "the server answered 500 M_UNKNOWN: ");
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(encode("m.room.encrypted"), "m.room.encrypted");
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
    }
}
