//! `hushd.toml`: the homeserver configuration.
//!
//! CONTRACT: the field names below are shared by the HTTP layer and the operations layer.
//! Loading (file + `HUSHD_*` environment overrides), defaults, validation and the commented
//! example written by `hushd init` are implemented by the operations work.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Who may register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RegistrationMode {
    /// Nobody; accounts are made with `hushd admin user create`.
    Closed,
    /// With a registration token (`m.login.registration_token`).
    Token,
    /// Anyone (`m.login.dummy`). For development.
    Open,
}

/// The whole configuration.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The server name users and peers see (`example.org` or `host:port`).
    pub server_name: String,
    /// Addresses to listen on.
    pub listen: Vec<SocketAddr>,
    /// `sqlite://PATH` or `postgres://...`.
    pub database_url: String,
    /// Registration mode.
    pub registration: RegistrationMode,
    /// Path of the Ed25519 signing key file.
    pub signing_key_path: PathBuf,
    /// Optional TLS.
    pub tls: Option<TlsConfig>,
    /// Bounds.
    pub limits: Limits,
    /// Rate limits.
    pub rate_limits: RateLimits,
}

/// TLS certificate and key files (PEM).
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain file.
    pub cert: PathBuf,
    /// Private key file.
    pub key: PathBuf,
}

/// Size and retention bounds.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request body accepted (bytes); larger gets 413 M_TOO_LARGE.
    pub max_request_bytes: usize,
    /// Most target devices in one sendToDevice request.
    pub max_messages_per_request: usize,
    /// Most undelivered messages queued for one device.
    pub max_mailbox_per_device: i64,
    /// Most to-device events in one /sync answer.
    pub sync_batch: i64,
    /// Longest /sync long-poll (ms).
    pub max_sync_timeout_ms: u64,
    /// Undelivered messages expire after this many seconds.
    pub message_ttl_secs: u64,
    /// Idempotency (txnId) records expire after this many seconds.
    pub txn_ttl_secs: u64,
    /// Most one-time keys in one upload.
    pub max_one_time_keys_per_upload: usize,
}

/// One token bucket: `burst` requests at once, refilled at `per_second`.
#[derive(Debug, Clone, Copy, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Bucket {
    /// Sustained rate.
    pub per_second: f64,
    /// Burst size.
    pub burst: u32,
}

/// Rate limits per user and per IP.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimits {
    /// Master switch.
    pub enabled: bool,
    /// `/register` (and token validity), per IP.
    pub register: Bucket,
    /// `/login`, per IP and per user.
    pub login: Bucket,
    /// `/keys/claim`, per user.
    pub keys_claim: Bucket,
    /// `/sendToDevice`, per user.
    pub send_to_device: Bucket,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server_name: "localhost:8008".to_owned(),
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 8008))],
            database_url: "sqlite://data/hushd.db".to_owned(),
            registration: RegistrationMode::Closed,
            signing_key_path: PathBuf::from("data/signing.key"),
            tls: None,
            limits: Limits::default(),
            rate_limits: RateLimits::default(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_bytes: 1024 * 1024,
            max_messages_per_request: 1000,
            max_mailbox_per_device: 10_000,
            sync_batch: 100,
            max_sync_timeout_ms: 120_000,
            message_ttl_secs: 30 * 24 * 3600,
            txn_ttl_secs: 24 * 3600,
            max_one_time_keys_per_upload: 200,
        }
    }
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            enabled: true,
            register: Bucket {
                per_second: 0.2,
                burst: 5,
            },
            login: Bucket {
                per_second: 0.5,
                burst: 10,
            },
            keys_claim: Bucket {
                per_second: 20.0,
                burst: 100,
            },
            send_to_device: Bucket {
                per_second: 200.0,
                burst: 1000,
            },
        }
    }
}
