//! The server-server API (inbound): key publication, version, transactions and remote E2E keys.
//!
//! Unauthenticated: `GET /_matrix/key/v2/server[/{keyId}]` and `GET /_matrix/federation/v1/version`.
//! Every other route takes a [`FederationRequest`], so it runs only after the X-Matrix signature
//! was verified (see [`crate::xmatrix_auth`]).

pub mod keys;
pub mod send;
pub mod server_keys;

use std::sync::Arc;

use axum::extract::FromRef;
use axum::routing::{get, post, put};
use axum::Router;

use crate::service::federation_hub::Federation;
use crate::state::AppState;
use crate::xmatrix_auth::{FederationError, InboundAuth};

/// The state of federation handlers: the application state plus the federation services.
#[derive(Clone)]
pub struct FedState {
    /// Store, mailbox writer, notifier, configuration.
    pub app: AppState,
    /// Keys, client, policy, sender.
    pub fed: Arc<Federation>,
}

impl FromRef<FedState> for Arc<InboundAuth> {
    fn from_ref(state: &FedState) -> Arc<InboundAuth> {
        state.fed.auth.clone()
    }
}

/// The federation routes with their state applied, to be merged into the main router (they have
/// no fallback of their own).
pub fn router(app: AppState, fed: Arc<Federation>) -> Router {
    Router::new()
        .route("/_matrix/key/v2/server", get(server_keys::server_keys))
        .route("/_matrix/key/v2/server/", get(server_keys::server_keys))
        .route(
            "/_matrix/key/v2/server/{key_id}",
            get(server_keys::server_keys_by_id),
        )
        .route("/_matrix/federation/v1/version", get(server_keys::version))
        .route(
            "/_matrix/federation/v1/send/{txn_id}",
            put(send::send_transaction),
        )
        .route(
            "/_matrix/federation/v1/send/{txn_id}/",
            put(send::send_transaction),
        )
        .route("/_matrix/federation/v1/user/keys/query", post(keys::query))
        .route("/_matrix/federation/v1/user/keys/claim", post(keys::claim))
        .route(
            "/_matrix/federation/v1/user/devices/{user_id}",
            get(keys::user_devices),
        )
        .with_state(FedState { app, fed })
}

/// Maps a store or service failure to a 500 (details logged, not sent).
fn internal(err: impl std::fmt::Display) -> FederationError {
    tracing::error!(error = %err, "federation request failed");
    FederationError::internal()
}
