//! The client-server HTTP API: routing and thin handlers (one file per area).
//!
//! Every route is served under `/_matrix/client/v3` and aliased under `/_matrix/client/r0`.
//! Unknown paths get 404 `M_UNRECOGNIZED`, known paths with a wrong method 405
//! `M_UNRECOGNIZED`, and `OPTIONS` (CORS preflight) is answered before any handler runs.

pub mod accounts;
pub mod devices;
pub mod extract;
pub mod federation;
pub mod keys;
pub mod misc;
pub mod sync;
pub mod to_device;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;

use crate::error::ApiError;
use crate::state::AppState;

/// The client-server routes relative to `/_matrix/client/{v3,r0}`.
fn client_routes() -> Router<AppState> {
    Router::new()
        .route("/login", get(accounts::login_flows).post(accounts::login))
        .route("/register", post(accounts::register))
        .route("/register/available", get(accounts::register_available))
        .route("/logout", post(accounts::logout))
        .route("/logout/all", post(accounts::logout_all))
        .route("/account/whoami", get(accounts::whoami))
        .route("/devices", get(devices::list))
        .route(
            "/devices/{device_id}",
            get(devices::get_one)
                .put(devices::update)
                .delete(devices::delete_one),
        )
        .route("/delete_devices", post(devices::delete_many))
        .route("/keys/upload", post(keys::upload))
        .route("/keys/query", post(keys::query))
        .route("/keys/claim", post(keys::claim))
        .route("/keys/changes", get(keys::changes))
        .route("/sendToDevice/{event_type}/{txn_id}", put(to_device::send))
        .route("/sync", get(sync::sync))
        .route("/capabilities", get(misc::capabilities))
        .route("/user/{user_id}/filter", post(misc::create_filter))
        .route("/user/{user_id}/filter/{filter_id}", get(misc::get_filter))
}

/// The whole client-server API with its state applied.
pub fn router(state: AppState) -> Router {
    let max_body = state.config().limits.max_request_bytes;
    Router::new()
        .nest("/_matrix/client/v3", client_routes())
        .nest("/_matrix/client/r0", client_routes())
        .route("/_matrix/client/versions", get(misc::versions))
        .route(
            "/_matrix/client/v1/register/m.login.registration_token/validity",
            get(accounts::registration_token_validity),
        )
        .route("/.well-known/matrix/client", get(misc::well_known_client))
        .fallback(unrecognized)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            preflight_and_size,
        ))
        .with_state(state)
}

async fn unrecognized() -> ApiError {
    ApiError::unrecognized()
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}

/// Answers `OPTIONS` without running handlers (CORS headers are added by the outer layer) and
/// refuses bodies whose declared length is over the limit before reading them.
async fn preflight_and_size(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if req.method() == Method::OPTIONS {
        return (StatusCode::OK, axum::Json(serde_json::json!({}))).into_response();
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let limit = u64::try_from(state.config().limits.max_request_bytes).unwrap_or(u64::MAX);
    if declared.is_some_and(|len| len > limit) {
        return ApiError::too_large().into_response();
    }
    next.run(req).await
}
