//! `GET /_matrix/key/v2/server` and `GET /_matrix/federation/v1/version` (no authentication).

use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};

use super::{internal, FedState};
use crate::xmatrix_auth::FederationError;

/// # GET /_matrix/key/v2/server
/// - Our self-signed key document: the current key under `verify_keys`, retired keys under
///   `old_verify_keys` (always present), valid for `federation.key_valid_for_secs`.
pub async fn server_keys(State(state): State<FedState>) -> Result<Json<Value>, FederationError> {
    let fed = &state.fed;
    crate::service::federation_keys::key_document(&fed.server_name, &fed.keys, fed.key_valid_for_ms)
        .map(Json)
        .map_err(internal)
}

/// # GET /_matrix/key/v2/server/{keyId}
/// - Deprecated form that older servers use; the key id is ignored and the whole document
///   returned.
pub async fn server_keys_by_id(
    state: State<FedState>,
    Path(_key_id): Path<String>,
) -> Result<Json<Value>, FederationError> {
    server_keys(state).await
}

/// # GET /_matrix/federation/v1/version
pub async fn version() -> Json<Value> {
    Json(json!({"server": {"name": "hushd", "version": env!("CARGO_PKG_VERSION")}}))
}
