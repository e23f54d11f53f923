//! The client-server API error type and the JSON body extractor.
//!
//! Every error leaves the server as `{"errcode": "M_...", "error": "..."}` with the status the
//! Matrix specification pairs with that code. Internal failures (database, I/O) are logged with
//! their detail and answered with a generic 500 so nothing about the server's internals leaks.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::store::StoreError;

/// A Matrix-shaped API error.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    errcode: &'static str,
    message: String,
    /// Extra top-level keys merged into the body (UIA fields, `retry_after_ms`, ...).
    extra: Map<String, Value>,
    /// When set, the body is exactly `extra` (a UIA challenge without an error).
    bare: bool,
    /// `Retry-After` header (whole seconds) for errors without `retry_after_ms` in the body.
    retry_after_secs: Option<u64>,
}

/// `Retry-After` of a 503 answered because the database is unreachable (seconds).
pub const DATABASE_UNAVAILABLE_RETRY_SECS: u64 = 1;

/// Whether a store error means that the database cannot be reached right now (down,
/// restarting, connection lost, no pooled connection free in time) or refused a transaction
/// that a retry can complete (serialisation failure, deadlock), rather than a bug. Nothing
/// was committed by the failed call, so the client may retry it as it is.
pub fn store_unavailable(err: &StoreError) -> bool {
    match err {
        StoreError::Database(e) => match e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(db) => db.code().is_some_and(|code| {
                // 08: connection exception; 57P01-57P03: administrator or crash shutdown,
                // cannot connect now; 53300: too many connections; 40001 / 40P01:
                // serialisation failure / deadlock.
                code.starts_with("08")
                    || code.starts_with("57P")
                    || matches!(code.as_ref(), "53300" | "40001" | "40P01")
            }),
            _ => false,
        },
        _ => false,
    }
}

/// Result alias for handlers.
pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    /// An error with an explicit status and errcode.
    pub fn new(status: StatusCode, errcode: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            errcode,
            message: message.into(),
            extra: Map::new(),
            bare: false,
            retry_after_secs: None,
        }
    }

    /// A user-interactive-auth challenge: 401 with exactly `body` (`flows`, `params`,
    /// `session`, `completed`), and no `errcode` so clients read it as "continue", not "failed".
    pub fn uia_challenge(body: Map<String, Value>) -> ApiError {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            errcode: "M_FORBIDDEN",
            message: String::new(),
            extra: body,
            bare: true,
            retry_after_secs: None,
        }
    }

    /// Adds a top-level key to the body.
    pub fn with_extra(mut self, key: &str, value: Value) -> ApiError {
        self.extra.insert(key.to_owned(), value);
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The Matrix errcode.
    pub fn errcode(&self) -> &'static str {
        self.errcode
    }

    /// 400 `M_NOT_JSON`: the body is not JSON.
    pub fn not_json(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "M_NOT_JSON", message)
    }

    /// 400 `M_BAD_JSON`: JSON of the wrong shape.
    pub fn bad_json(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "M_BAD_JSON", message)
    }

    /// 400 `M_INVALID_PARAM`.
    pub fn invalid_param(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "M_INVALID_PARAM", message)
    }

    /// 400 `M_MISSING_PARAM`.
    pub fn missing_param(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "M_MISSING_PARAM", message)
    }

    /// 400 `M_UNKNOWN` (a client error without a more specific code).
    pub fn unknown(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "M_UNKNOWN", message)
    }

    /// 401 `M_MISSING_TOKEN`.
    pub fn missing_token() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "M_MISSING_TOKEN",
            "Missing access token",
        )
    }

    /// 401 `M_UNKNOWN_TOKEN` with `soft_logout: false`.
    pub fn unknown_token() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "M_UNKNOWN_TOKEN",
            "Unrecognised access token",
        )
        .with_extra("soft_logout", Value::Bool(false))
    }

    /// 403 `M_FORBIDDEN`.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "M_FORBIDDEN", message)
    }

    /// 403 `M_USER_DEACTIVATED`.
    pub fn user_deactivated() -> ApiError {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "M_USER_DEACTIVATED",
            "This account has been deactivated",
        )
    }

    /// 404 `M_NOT_FOUND`.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "M_NOT_FOUND", message)
    }

    /// 400 `M_USER_IN_USE`.
    pub fn user_in_use() -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "M_USER_IN_USE",
            "User ID already taken",
        )
    }

    /// 400 `M_INVALID_USERNAME`.
    pub fn invalid_username(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "M_INVALID_USERNAME", message)
    }

    /// 413 `M_TOO_LARGE`.
    pub fn too_large() -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "M_TOO_LARGE",
            "Request body too large",
        )
    }

    /// 404 `M_UNRECOGNIZED`: unknown endpoint.
    pub fn unrecognized() -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "M_UNRECOGNIZED",
            "Unrecognized request",
        )
    }

    /// 405 `M_UNRECOGNIZED`: known endpoint, wrong method.
    pub fn method_not_allowed() -> ApiError {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "M_UNRECOGNIZED",
            "Method not allowed for this endpoint",
        )
    }

    /// 429 `M_LIMIT_EXCEEDED` with `retry_after_ms` and a `Retry-After` header (whole seconds,
    /// rounded up).
    pub fn limit_exceeded(retry_after_ms: u64) -> ApiError {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "M_LIMIT_EXCEEDED",
            "Too many requests",
        )
        .with_extra("retry_after_ms", Value::from(retry_after_ms))
    }

    /// 503 `M_UNKNOWN`: the server is shutting down or overloaded; retry later.
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "M_UNKNOWN", message)
    }

    /// 503 `M_UNKNOWN` with `Retry-After`: the database is unreachable or restarting, nothing
    /// was committed, retry the same request. The detail is logged here and never sent to the
    /// client.
    pub fn database_unavailable(detail: impl std::fmt::Display) -> ApiError {
        tracing::warn!(error = %detail, "database unavailable; answering 503");
        let mut err = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "M_UNKNOWN",
            "The server's database is temporarily unavailable; retry the request",
        );
        err.retry_after_secs = Some(DATABASE_UNAVAILABLE_RETRY_SECS);
        err
    }

    /// 500 `M_UNKNOWN`. The detail is logged here and never sent to the client.
    pub fn internal(detail: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %detail, "internal error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "M_UNKNOWN",
            "Internal server error",
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> ApiError {
        match err {
            StoreError::Database(_) if store_unavailable(&err) => {
                ApiError::database_unavailable(err)
            }
            StoreError::Database(_) | StoreError::Migrate(_) => ApiError::internal(err),
            StoreError::Limit(what) => ApiError::new(
                StatusCode::BAD_REQUEST,
                "M_RESOURCE_LIMIT_EXCEEDED",
                format!("Limit reached: {what}"),
            ),
            // Handlers match the expected Conflict/NotFound cases themselves; one that reaches
            // here was not expected by the caller and is a server bug.
            StoreError::Conflict | StoreError::NotFound => ApiError::internal(err),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry_after_secs = self
            .extra
            .get("retry_after_ms")
            .and_then(Value::as_u64)
            .map(|ms| ms.div_ceil(1000).max(1))
            .or(self.retry_after_secs);
        let mut body = self.extra;
        if !self.bare {
            body.insert("errcode".to_owned(), Value::from(self.errcode));
            body.insert("error".to_owned(), Value::from(self.message));
        }
        let mut response = (self.status, axum::Json(Value::Object(body))).into_response();
        if let Some(secs) = retry_after_secs {
            if let Ok(value) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}

/// A JSON request body deserialised into `T`, with Matrix-shaped rejections: unreadable or
/// non-JSON bodies get `M_NOT_JSON`, JSON that is not an object or does not fit `T` gets
/// `M_BAD_JSON`, and bodies over the configured limit get 413 `M_TOO_LARGE`.
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = read_body(req, state).await?;
        parse_json_object(&bytes).map(ApiJson)
    }
}

/// Reads a whole body, mapping a body over the limit to 413 `M_TOO_LARGE`.
pub async fn read_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large()
        } else {
            ApiError::not_json("Could not read the request body")
        }
    })
}

/// Parses a body that must be a JSON object into `T`.
pub fn parse_json_object<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|_| ApiError::not_json("Content not JSON"))?;
    if !value.is_object() {
        return Err(ApiError::bad_json("The request body must be a JSON object"));
    }
    serde_json::from_value(value).map_err(|e| ApiError::bad_json(format!("Invalid request: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_json(err: ApiError) -> (StatusCode, Value, Option<String>) {
        let response = err.into_response();
        let status = response.status();
        let retry = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap_or_default();
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, value, retry)
    }

    #[tokio::test]
    async fn limit_exceeded_has_retry_fields() {
        let (status, body, retry) = body_json(ApiError::limit_exceeded(1500)).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(body["errcode"], "M_LIMIT_EXCEEDED");
        assert_eq!(body["retry_after_ms"], 1500);
        assert!(body["error"].is_string());
        assert_eq!(retry.as_deref(), Some("2"));
    }

    #[tokio::test]
    async fn an_unreachable_database_is_a_retryable_503() {
        for err in [
            sqlx::Error::PoolTimedOut,
            sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
        ] {
            let (status, body, retry) = body_json(ApiError::from(StoreError::Database(err))).await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(body["errcode"], "M_UNKNOWN");
            assert!(body["error"].is_string());
            assert_eq!(retry.as_deref(), Some("1"));
        }
        // A query bug stays a 500 without Retry-After.
        let (status, _, retry) = body_json(ApiError::from(StoreError::Database(
            sqlx::Error::RowNotFound,
        )))
        .await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(retry, None);
    }

    #[tokio::test]
    async fn internal_errors_are_sanitised() {
        let (status, body, _) = body_json(ApiError::internal("secret table users_xyz")).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body["errcode"], "M_UNKNOWN");
        assert!(!body.to_string().contains("users_xyz"));
    }

    #[test]
    fn json_rejections_are_matrix_shaped() {
        #[derive(serde::Deserialize, Debug)]
        struct Body {
            #[allow(dead_code)]
            a: u32,
        }
        let not_json = parse_json_object::<Body>(b"{nope").map(|_| ()).err();
        assert_eq!(not_json.map(|e| e.errcode()), Some("M_NOT_JSON"));
        let array = parse_json_object::<Body>(b"[1]").map(|_| ()).err();
        assert_eq!(array.map(|e| e.errcode()), Some("M_BAD_JSON"));
        let shape = parse_json_object::<Body>(br#"{"a":"x"}"#).map(|_| ()).err();
        assert_eq!(shape.map(|e| e.errcode()), Some("M_BAD_JSON"));
        assert!(parse_json_object::<Body>(br#"{"a":1}"#).is_ok());
    }
}
