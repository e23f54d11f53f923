//! The outbound federation HTTPS client (feature `http`).
//!
//! [`FederationClient`] resolves a destination with [`discovery`](crate::discovery), signs every
//! request with the server key in an `Authorization: X-Matrix` header, sends the body as canonical
//! JSON, and turns the answer into either the expected type or a [`FederationError`] that tells
//! "could not reach the server" apart from "the server answered with an error".
//!
//! TLS uses rustls and trusts the operating system's root certificates plus any extra CA files
//! from the configuration (how tests and private deployments run). Only HTTPS is spoken; federation
//! requests do not follow redirects (well-known lookups do). Connections have a connect timeout and
//! every request an overall timeout; response bodies are read up to [`MAX_RESPONSE_BYTES`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::canonical::to_canonical_bytes;
use crate::discovery::{parse_override, DiscoveryError, OverrideError, Resolver};
use crate::ids::{ServerName, UserId};
use crate::keys::{
    unix_millis_now, verify_key_document, KeyDocumentError, ServerSigningKey, VerifiedServerKeys,
};
use crate::signing::SigningError;
use crate::wire::{self, ErrorBody};
use crate::xmatrix;

/// The largest response body the client reads.
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// Settings of the outbound client.
#[derive(Debug, Clone)]
pub struct FederationClientConfig {
    /// PEM files with extra CA certificates to trust besides the system roots.
    pub extra_ca_files: Vec<PathBuf>,
    /// Server names pinned to base URLs (`"hs2" -> "https://127.0.0.1:18448"`).
    pub overrides: HashMap<ServerName, String>,
    /// Port of well-known lookups (443; only tests change it).
    pub well_known_port: u16,
    /// Time allowed to establish a TCP+TLS connection.
    pub connect_timeout: Duration,
    /// Time allowed for a whole request, from sending to reading the last byte.
    pub request_timeout: Duration,
    /// The `User-Agent` sent.
    pub user_agent: String,
}

impl Default for FederationClientConfig {
    fn default() -> Self {
        Self {
            extra_ca_files: Vec::new(),
            overrides: HashMap::new(),
            well_known_port: 443,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            user_agent: format!("hush-federation/{}", env!("CARGO_PKG_VERSION")),
        }
    }
}

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientBuildError {
    /// A CA file could not be read.
    #[error("cannot read CA file {path}: {source}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A CA file holds no usable certificate.
    #[error("CA file {0} contains no valid PEM certificate")]
    NoCertificates(PathBuf),
    /// An override URL is invalid.
    #[error(transparent)]
    Override(#[from] OverrideError),
    /// The HTTP client could not be set up.
    #[error("cannot build HTTP client: {0}")]
    Http(String),
}

/// Why a federation request failed.
#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    /// No connection could be made (DNS, refused, TLS handshake or certificate failure, reset).
    #[error("{destination} is unreachable: {reason}")]
    Unreachable {
        /// The destination server name.
        destination: String,
        /// What went wrong.
        reason: String,
    },
    /// The connection or the request timed out.
    #[error("request to {destination} timed out")]
    Timeout {
        /// The destination server name.
        destination: String,
    },
    /// The remote server answered with a non-success status.
    #[error("{destination} answered {status}: {errcode:?} {error:?}")]
    Remote {
        /// The destination server name.
        destination: String,
        /// The HTTP status code.
        status: u16,
        /// The Matrix `errcode`, if the body had one.
        errcode: Option<String>,
        /// The Matrix `error` text, if the body had one.
        error: Option<String>,
    },
    /// The remote server answered 2xx with a body we cannot use.
    #[error("invalid response from {destination}: {reason}")]
    InvalidResponse {
        /// The destination server name.
        destination: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The request could not be signed (e.g. the body has floats).
    #[error("cannot sign request: {0}")]
    Signing(#[from] SigningError),
    /// A fetched key document failed verification.
    #[error("invalid key document: {0}")]
    InvalidKeys(#[from] KeyDocumentError),
    /// The destination could not be resolved.
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
}

impl FederationError {
    /// True when the server could not be reached at all (retry later with backoff).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Unreachable { .. } | Self::Timeout { .. })
    }

    /// The HTTP status the remote answered with, if it answered with an error.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Remote { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The Matrix errcode the remote answered with, if any.
    pub fn errcode(&self) -> Option<&str> {
        match self {
            Self::Remote { errcode, .. } => errcode.as_deref(),
            _ => None,
        }
    }
}

/// The outbound federation client of one server.
#[derive(Debug, Clone)]
pub struct FederationClient {
    origin: ServerName,
    key: Arc<ServerSigningKey>,
    http: reqwest::Client,
    resolver: Arc<Resolver>,
}

fn http_builder(
    config: &FederationClientConfig,
) -> Result<reqwest::ClientBuilder, ClientBuildError> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .https_only(true)
        .tls_built_in_webpki_certs(false)
        .tls_built_in_native_certs(true)
        .connect_timeout(config.connect_timeout)
        .timeout(config.request_timeout)
        .user_agent(config.user_agent.clone());
    for path in &config.extra_ca_files {
        let pem = std::fs::read(path).map_err(|source| ClientBuildError::CaFile {
            path: path.clone(),
            source,
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|_| ClientBuildError::NoCertificates(path.clone()))?;
        if certs.is_empty() {
            return Err(ClientBuildError::NoCertificates(path.clone()));
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    Ok(builder)
}

impl FederationClient {
    /// Builds the client for server `origin`, signing with `key`.
    pub fn new(
        origin: ServerName,
        key: Arc<ServerSigningKey>,
        config: &FederationClientConfig,
    ) -> Result<Self, ClientBuildError> {
        let http = http_builder(config)?
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ClientBuildError::Http(e.to_string()))?;
        let well_known_http = http_builder(config)?
            .redirect(reqwest::redirect::Policy::limited(5))
            .build()
            .map_err(|e| ClientBuildError::Http(e.to_string()))?;
        let overrides = config
            .overrides
            .iter()
            .map(|(name, url)| Ok((name.clone(), parse_override(name, url)?)))
            .collect::<Result<HashMap<_, _>, OverrideError>>()?;
        let resolver = Arc::new(Resolver::new(
            well_known_http,
            overrides,
            config.well_known_port,
        ));
        Ok(Self {
            origin,
            key,
            http,
            resolver,
        })
    }

    /// This server's name (the `origin` of every request).
    pub fn origin(&self) -> &ServerName {
        &self.origin
    }

    /// The resolver used to find destinations.
    pub fn resolver(&self) -> &Resolver {
        &self.resolver
    }

    /// Sends an X-Matrix-signed request and returns the JSON answer.
    ///
    /// `path_and_query` is the request target exactly as it goes on the wire (already
    /// percent-encoded), e.g. `/_matrix/federation/v1/user/devices/%40bob%3Ab.example`.
    pub async fn request_json(
        &self,
        destination: &ServerName,
        method: Method,
        path_and_query: &str,
        body: Option<&Value>,
    ) -> Result<Value, FederationError> {
        // The body is serialized once: the canonical bytes sent are also the signed content.
        let body_bytes = body
            .map(to_canonical_bytes)
            .transpose()
            .map_err(SigningError::from)?;
        let auth = match &body_bytes {
            Some(bytes) => xmatrix::sign_request_canonical(
                &self.key,
                &self.origin,
                destination,
                method.as_str(),
                path_and_query,
                bytes,
            )?,
            None => xmatrix::sign_request(
                &self.key,
                &self.origin,
                destination,
                method.as_str(),
                path_and_query,
                None,
            )?,
        };
        self.send(
            destination,
            method,
            path_and_query,
            body_bytes,
            Some(auth.to_header_value()),
        )
        .await
    }

    /// Sends an X-Matrix-signed request with a typed body and parses a typed answer.
    pub async fn request<B: Serialize, R: DeserializeOwned>(
        &self,
        destination: &ServerName,
        method: Method,
        path_and_query: &str,
        body: Option<&B>,
    ) -> Result<R, FederationError> {
        let body = body
            .map(serde_json::to_value)
            .transpose()
            .map_err(|_| SigningError::NotAnObject)?;
        let answer = self
            .request_json(destination, method, path_and_query, body.as_ref())
            .await?;
        parse_answer(destination, answer)
    }

    /// `PUT /_matrix/federation/v1/send/{txnId}`.
    pub async fn send_transaction(
        &self,
        destination: &ServerName,
        txn_id: &str,
        transaction: &wire::Transaction,
    ) -> Result<wire::TransactionResponse, FederationError> {
        let path = wire::send_transaction_path(txn_id);
        self.request(destination, Method::PUT, &path, Some(transaction))
            .await
    }

    /// `POST /_matrix/federation/v1/user/keys/query`.
    pub async fn query_keys(
        &self,
        destination: &ServerName,
        query: &wire::KeysQueryRequest,
    ) -> Result<wire::KeysQueryResponse, FederationError> {
        self.request(
            destination,
            Method::POST,
            wire::KEYS_QUERY_PATH,
            Some(query),
        )
        .await
    }

    /// `POST /_matrix/federation/v1/user/keys/claim`.
    pub async fn claim_keys(
        &self,
        destination: &ServerName,
        claim: &wire::KeysClaimRequest,
    ) -> Result<wire::KeysClaimResponse, FederationError> {
        self.request(
            destination,
            Method::POST,
            wire::KEYS_CLAIM_PATH,
            Some(claim),
        )
        .await
    }

    /// `GET /_matrix/federation/v1/user/devices/{userId}` on the user's own server.
    pub async fn user_devices(
        &self,
        user_id: &UserId,
    ) -> Result<wire::UserDevicesResponse, FederationError> {
        let path = wire::user_devices_path(user_id);
        self.request::<Value, _>(user_id.server_name(), Method::GET, &path, None)
            .await
    }

    /// `GET /_matrix/federation/v1/version` (unsigned).
    pub async fn version(
        &self,
        destination: &ServerName,
    ) -> Result<wire::VersionResponse, FederationError> {
        let answer = self
            .send(destination, Method::GET, wire::VERSION_PATH, None, None)
            .await?;
        parse_answer(destination, answer)
    }

    /// Fetches `GET /_matrix/key/v2/server` from `server` and verifies it (unsigned request).
    pub async fn fetch_server_keys(
        &self,
        server: &ServerName,
    ) -> Result<VerifiedServerKeys, FederationError> {
        let answer = self
            .send(server, Method::GET, wire::SERVER_KEYS_PATH, None, None)
            .await?;
        Ok(verify_key_document(&answer, server, unix_millis_now())?)
    }

    async fn send(
        &self,
        destination: &ServerName,
        method: Method,
        path_and_query: &str,
        body: Option<Vec<u8>>,
        authorization: Option<String>,
    ) -> Result<Value, FederationError> {
        let resolved = self.resolver.resolve(destination).await?;
        let url = resolved.base_url.join(path_and_query).map_err(|e| {
            DiscoveryError(format!(
                "cannot join {path_and_query} to {}: {e}",
                resolved.base_url
            ))
        })?;
        tracing::debug!(%destination, %method, path = %url.path(), "federation request");
        let mut request = self.http.request(method, url);
        if let Some(authorization) = authorization {
            request = request.header(reqwest::header::AUTHORIZATION, authorization);
        }
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        let mut response = request
            .send()
            .await
            .map_err(|e| transport_error(destination, &e))?;
        let status = response.status();
        let mut bytes = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| transport_error(destination, &e))?
        {
            if bytes.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(FederationError::InvalidResponse {
                    destination: destination.to_string(),
                    reason: "response body too large".into(),
                });
            }
            bytes.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            return Err(remote_error(destination, status, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| FederationError::InvalidResponse {
            destination: destination.to_string(),
            reason: format!("not JSON: {e}"),
        })
    }
}

fn parse_answer<R: DeserializeOwned>(
    destination: &ServerName,
    answer: Value,
) -> Result<R, FederationError> {
    serde_json::from_value(answer).map_err(|e| FederationError::InvalidResponse {
        destination: destination.to_string(),
        reason: e.to_string(),
    })
}

fn remote_error(destination: &ServerName, status: StatusCode, body: &[u8]) -> FederationError {
    let parsed: Option<ErrorBody> = serde_json::from_slice(body).ok();
    FederationError::Remote {
        destination: destination.to_string(),
        status: status.as_u16(),
        errcode: parsed.as_ref().map(|b| b.errcode.clone()),
        error: parsed.map(|b| b.error),
    }
}

fn transport_error(destination: &ServerName, error: &reqwest::Error) -> FederationError {
    if error.is_timeout() {
        return FederationError::Timeout {
            destination: destination.to_string(),
        };
    }
    // Include the source chain (e.g. the TLS certificate error), which reqwest's Display omits.
    let mut reason = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        reason.push_str(": ");
        reason.push_str(&inner.to_string());
        source = inner.source();
    }
    FederationError::Unreachable {
        destination: destination.to_string(),
        reason,
    }
}
