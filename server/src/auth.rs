//! Access-token authentication.
//!
//! Tokens come from `Authorization: Bearer <token>` or, for older clients, `?access_token=`.
//! Only their SHA-256 is stored and looked up; the token itself is never logged.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts, Query};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use crate::error::ApiError;
use crate::service::identifiers::hash_token;
use crate::service::now_ms;
use crate::state::AppState;

/// The authenticated user and device of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthedDevice {
    /// Full user ID.
    pub user_id: String,
    /// Device ID of the access token.
    pub device_id: String,
}

#[derive(serde::Deserialize)]
struct TokenQuery {
    access_token: Option<String>,
}

/// The access token of a request, if any (header first, then the query string).
/// `Err(())` if the `Authorization` header is present but not a Bearer token.
fn token_of(parts: &Parts) -> Result<Option<String>, ()> {
    if let Some(value) = parts.headers.get(AUTHORIZATION) {
        let value = value.to_str().map_err(|_| ())?;
        let (scheme, token) = value.split_once(' ').ok_or(())?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(());
        }
        let token = token.trim();
        return Ok((!token.is_empty()).then(|| token.to_owned()));
    }
    Ok(Query::<TokenQuery>::try_from_uri(&parts.uri)
        .ok()
        .and_then(|q| q.0.access_token)
        .filter(|t| !t.is_empty()))
}

/// The client's address for `last_seen_ip`: the peer, or with `trust_forwarded_for` the last
/// `X-Forwarded-For` entry (the one the trusted reverse proxy added).
fn client_ip(state: &AppState, parts: &Parts) -> Option<IpAddr> {
    if state.config().trust_forwarded_for {
        let forwarded = parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .next_back()
            .and_then(|last| last.trim().parse::<IpAddr>().ok());
        if forwarded.is_some() {
            return forwarded;
        }
    }
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
}

async fn authenticate(state: &AppState, parts: &Parts) -> Result<AuthedDevice, ApiError> {
    let token = match token_of(parts) {
        Ok(Some(token)) => token,
        Ok(None) => return Err(ApiError::missing_token()),
        Err(()) => return Err(ApiError::unknown_token()),
    };
    let ip = client_ip(state, parts).map(|ip| ip.to_string());
    let owner = state
        .store()
        .token_owner_seen(&hash_token(&token), ip.as_deref(), now_ms())
        .await?;
    match owner {
        Some(owner) => Ok(AuthedDevice {
            user_id: owner.user_id,
            device_id: owner.device_id,
        }),
        None => Err(ApiError::unknown_token()),
    }
}

impl FromRequestParts<AppState> for AuthedDevice {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        authenticate(state, parts).await
    }
}

/// The user behind a request's access token, if it has a valid one (for rate-limit keys).
pub async fn user_for_request(state: &AppState, parts: &Parts) -> Option<String> {
    authenticate(state, parts).await.ok().map(|d| d.user_id)
}
