//! The `X-Matrix` request authentication of inbound federation requests, as an axum extractor.
//!
//! A handler that takes a [`FederationRequest`] runs only for a request whose
//! `Authorization: X-Matrix ...` header names this server as destination (or none), comes from a
//! server the allow/deny lists accept, and carries a valid signature by a current key of the
//! origin over `{method, uri, origin, destination, content}`. Everything else is refused before
//! the handler runs, so refused requests change nothing:
//!
//! * no X-Matrix header, a wrong signature, an unknown, expired or unfetchable key, or another
//!   destination: `401 M_UNAUTHORIZED`;
//! * a malformed header: `400 M_UNAUTHORIZED` (as Synapse answers);
//! * an origin the server policy refuses, or our own name: `403 M_FORBIDDEN`;
//! * a body that is not a JSON object: `400 M_NOT_JSON`.
//!
//! A successful authentication tells the outbound sender that the origin is alive (its retry
//! backoff is reset).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRef, FromRequest, OriginalUri, Request};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use hush_federation::ids::ServerName;
use hush_federation::xmatrix::{XMatrixAuth, XMatrixError};
use serde_json::{json, Value};

use crate::service::federation_policy::ServerPolicy;
use crate::service::remote_keys::RemoteKeyCache;

/// Called with the origin of every authenticated request.
pub type ContactHook = Arc<dyn Fn(&ServerName) + Send + Sync>;

/// What the extractor needs: our name, the key cache, the policy and the contact hook.
pub struct InboundAuth {
    /// This server's name (the only destination we accept).
    pub server_name: ServerName,
    /// Remote signing keys.
    pub keys: Arc<RemoteKeyCache>,
    /// Allow/deny lists.
    pub policy: Arc<ServerPolicy>,
    /// Told about every origin that authenticated (resets outbound backoff).
    pub on_contact: ContactHook,
    /// Largest accepted request body in bytes.
    pub max_body_bytes: usize,
}

impl std::fmt::Debug for InboundAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboundAuth")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// An authenticated federation request: who sent it and its JSON body.
#[derive(Debug, Clone)]
pub struct FederationRequest {
    /// The origin server, whose signature was verified.
    pub origin: ServerName,
    /// The JSON body (always an object), or `None` when the request had no body.
    pub body: Option<Value>,
}

/// A refusal, answered as a Matrix error body.
#[derive(Debug, Clone)]
pub struct FederationError {
    status: StatusCode,
    errcode: &'static str,
    message: String,
}

impl FederationError {
    /// A refusal with this status, errcode and message.
    pub fn new(status: StatusCode, errcode: &'static str, message: impl Into<String>) -> Self {
        FederationError {
            status,
            errcode,
            message: message.into(),
        }
    }

    /// `401 M_UNAUTHORIZED`.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED", message)
    }

    /// `403 M_FORBIDDEN`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "M_FORBIDDEN", message)
    }

    /// `400 M_BAD_JSON`.
    pub fn bad_json(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "M_BAD_JSON", message)
    }

    /// `500 M_UNKNOWN` (details are logged, not sent).
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "M_UNKNOWN",
            "Internal server error",
        )
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl IntoResponse for FederationError {
    fn into_response(self) -> Response {
        let body = json!({"errcode": self.errcode, "error": self.message});
        (self.status, axum::Json(body)).into_response()
    }
}

fn refusal(err: &XMatrixError) -> FederationError {
    match err {
        e if e.is_malformed() => FederationError::new(
            StatusCode::BAD_REQUEST,
            "M_UNAUTHORIZED",
            format!("Malformed X-Matrix header: {e}"),
        ),
        XMatrixError::WrongDestination(_) => {
            FederationError::unauthorized("Request is addressed to another server")
        }
        XMatrixError::NotXMatrix => FederationError::unauthorized("Missing X-Matrix authorization"),
        _ => FederationError::unauthorized("Invalid request signature"),
    }
}

impl<S> FromRequest<S> for FederationRequest
where
    S: Send + Sync,
    Arc<InboundAuth>: FromRef<S>,
{
    type Rejection = FederationError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let auth = Arc::<InboundAuth>::from_ref(state);
        let method = req.method().as_str().to_owned();
        // The signed `uri` is the request target as sent, including the query.
        let uri = req
            .extensions()
            .get::<OriginalUri>()
            .map(|o| o.0.clone())
            .unwrap_or_else(|| req.uri().clone());
        let uri = uri
            .path_and_query()
            .map(|pq| pq.as_str().to_owned())
            .unwrap_or_else(|| uri.path().to_owned());

        // Several Authorization headers may be sent (one per key); the first X-Matrix one that
        // parses is used.
        let mut header_error = None;
        let mut parsed = None;
        for value in req.headers().get_all(header::AUTHORIZATION) {
            let Ok(text) = value.to_str() else { continue };
            match XMatrixAuth::parse(text) {
                Ok(x) => {
                    parsed = Some(x);
                    break;
                }
                Err(XMatrixError::NotXMatrix) => {}
                Err(e) => header_error = Some(e),
            }
        }
        let Some(x) = parsed else {
            return Err(match header_error {
                Some(e) => refusal(&e),
                None => FederationError::unauthorized("Missing X-Matrix authorization"),
            });
        };
        if let Some(destination) = &x.destination {
            if destination != &auth.server_name {
                return Err(FederationError::unauthorized(
                    "Request is addressed to another server",
                ));
            }
        }
        if x.origin == auth.server_name {
            return Err(FederationError::forbidden(
                "Requests from ourselves are refused",
            ));
        }
        if !auth.policy.allows(&x.origin) {
            tracing::info!(origin = %x.origin, "refused request from a server the policy denies");
            return Err(FederationError::forbidden(
                "This server does not federate with yours",
            ));
        }

        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| FederationError::new(e.status(), "M_TOO_LARGE", e.body_text()))?;
        if bytes.len() > auth.max_body_bytes {
            return Err(FederationError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "M_TOO_LARGE",
                "Request body is too large",
            ));
        }
        let body = if bytes.is_empty() {
            None
        } else {
            match serde_json::from_slice::<Value>(&bytes) {
                Ok(value @ Value::Object(_)) => Some(value),
                _ => {
                    return Err(FederationError::new(
                        StatusCode::BAD_REQUEST,
                        "M_NOT_JSON",
                        "Body is not a JSON object",
                    ))
                }
            }
        };

        let key = auth.keys.key(&x.origin, &x.key).await.map_err(|e| {
            tracing::info!(origin = %x.origin, key = %x.key, error = %e, "refused federation request");
            FederationError::unauthorized(format!("No usable key: {e}"))
        })?;
        x.verify(&method, &uri, body.as_ref(), &auth.server_name, &key)
            .map_err(|e| {
                tracing::info!(origin = %x.origin, error = %e, "refused federation request");
                refusal(&e)
            })?;
        (auth.on_contact)(&x.origin);
        Ok(FederationRequest {
            origin: x.origin,
            body,
        })
    }
}
