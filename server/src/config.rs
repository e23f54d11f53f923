//! `hushd.toml`: the homeserver configuration.
//!
//! CONTRACT: the field names below are shared by the HTTP layer and the operations layer.
//!
//! Loading works on a TOML tree: the defaults (serialised from [`Config::default`]) are the
//! schema, so every key has a default, an environment override (`HUSHD_` + the key path in upper
//! case with `.` as `_`, for example `HUSHD_LIMITS_SYNC_BATCH`) and a place in the commented
//! example written by `hushd init`. Errors name the key that is wrong.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

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

/// How log lines are written to standard error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The whole configuration.
#[derive(Clone, serde::Deserialize, serde::Serialize)]
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
    /// Log line format.
    pub log_format: LogFormat,
    /// How long a graceful shutdown waits for in-flight requests (seconds).
    pub shutdown_grace_secs: u64,
    /// Threads of the async runtime; 0 = automatic ([`Config::runtime_threads`]).
    pub worker_threads: usize,
    /// Take the client address for per-IP rate limits from the last `X-Forwarded-For` entry
    /// (only behind a reverse proxy that sets it).
    pub trust_forwarded_for: bool,
    /// Optional TLS.
    pub tls: Option<TlsConfig>,
    /// Bounds.
    pub limits: Limits,
    /// Rate limits.
    pub rate_limits: RateLimits,
    /// The Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// Server-server federation (see docs/federation.md).
    pub federation: FederationConfig,
}

/// A server name pinned to a base URL (skips discovery).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerPin {
    /// The server name as it appears in user IDs.
    pub name: String,
    /// Where to reach it, e.g. `https://10.0.0.2:8448`.
    pub url: String,
}

/// `[federation]`: who we federate with, how we reach them, and the retry policy.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FederationConfig {
    /// Servers we federate with (`name`, `name:port` or `*.domain`); empty = all not denied.
    pub allow: Vec<String>,
    /// Servers refused in both directions (same forms; wins over `allow`).
    pub deny: Vec<String>,
    /// Server names pinned to base URLs.
    pub servers: Vec<ServerPin>,
    /// Extra PEM CA files trusted for outbound HTTPS.
    pub ca_files: Vec<PathBuf>,
    /// Validity of our published key document (seconds).
    pub key_valid_for_secs: u64,
    /// First wait after a failed transaction (ms).
    pub retry_min_ms: u64,
    /// Longest wait between attempts (ms; never more than one hour).
    pub retry_max_ms: u64,
    /// How often the sender looks for newly queued EDUs (ms).
    pub poll_interval_ms: u64,
    /// Time allowed for one outbound request (seconds).
    pub request_timeout_secs: u64,
}

impl Default for FederationConfig {
    fn default() -> Self {
        FederationConfig {
            allow: Vec::new(),
            deny: Vec::new(),
            servers: Vec::new(),
            ca_files: Vec::new(),
            key_valid_for_secs: 24 * 60 * 60,
            retry_min_ms: 2_000,
            retry_max_ms: 60 * 60 * 1000,
            poll_interval_ms: 50,
            request_timeout_secs: 30,
        }
    }
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

/// The Prometheus `/metrics` endpoint.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve `/metrics` at all.
    pub enabled: bool,
    /// Serve `/metrics` only on these addresses; empty = on the `listen` addresses.
    pub listen: Vec<SocketAddr>,
    /// How often the mailbox depth gauge is refreshed from the database (seconds).
    pub refresh_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server_name: "localhost:8008".to_owned(),
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 8008))],
            database_url: "sqlite://data/hushd.db".to_owned(),
            registration: RegistrationMode::Closed,
            signing_key_path: PathBuf::from("data/signing.key"),
            log_format: LogFormat::Text,
            shutdown_grace_secs: 20,
            worker_threads: 0,
            trust_forwarded_for: false,
            tls: None,
            limits: Limits::default(),
            rate_limits: RateLimits::default(),
            metrics: MetricsConfig::default(),
            federation: FederationConfig::default(),
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

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            listen: Vec::new(),
            refresh_secs: 15,
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("server_name", &self.server_name)
            .field("listen", &self.listen)
            .field("database_url", &redact_url(&self.database_url))
            .field("registration", &self.registration)
            .field("signing_key_path", &self.signing_key_path)
            .field("log_format", &self.log_format)
            .field("shutdown_grace_secs", &self.shutdown_grace_secs)
            .field("worker_threads", &self.worker_threads)
            .field("trust_forwarded_for", &self.trust_forwarded_for)
            .field("tls", &self.tls)
            .field("limits", &self.limits)
            .field("rate_limits", &self.rate_limits)
            .field("metrics", &self.metrics)
            .finish()
    }
}

/// A database URL with any password replaced by `***` (for logs and `Debug`).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{host}{tail}")
            } else {
                format!("{scheme}://{user}@{host}{tail}")
            }
        }
        None => url.to_owned(),
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("{path}: not valid TOML: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// What the parser said (with line and column).
        message: String,
    },
    /// A key has a bad value or is unknown.
    #[error("{key}: {message}")]
    Invalid {
        /// Dotted key path, e.g. `limits.sync_batch`.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// An environment override could not be parsed.
    #[error("{var}: {message}")]
    Env {
        /// The variable, e.g. `HUSHD_LIMITS_SYNC_BATCH`.
        var: String,
        /// What is wrong.
        message: String,
    },
}

impl ConfigError {
    fn invalid(key: &str, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.to_owned(),
            message: message.into(),
        }
    }
}

/// The environment variable that overrides a dotted key path.
pub fn env_var_for(key: &str) -> String {
    format!("HUSHD_{}", key.replace('.', "_").to_uppercase())
}

/// Keys that exist although the default tree does not show them (optional sections).
const OPTIONAL_LEAVES: &[&str] = &["tls.cert", "tls.key"];

impl Config {
    /// The development configuration used by `hushd` without `--config`: the defaults with
    /// open registration.
    pub fn dev() -> Config {
        Config {
            registration: RegistrationMode::Open,
            ..Config::default()
        }
    }

    /// How many threads the async runtime gets: `worker_threads`, or when that is 0, one on
    /// SQLite and one per available CPU on PostgreSQL. On SQLite every query already runs on
    /// a thread of its own (sqlx's per-connection worker), so the runtime only parses, checks
    /// and answers requests; with a second runtime thread each hand-off between a database
    /// thread and the runtime also wakes the other runtime thread, which cost more than it
    /// gave on the measured machines (docs/performance.md).
    pub fn runtime_threads(&self) -> usize {
        match self.worker_threads {
            0 if self.database_url.starts_with("sqlite://") => 1,
            0 => std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get),
            n => n,
        }
    }

    /// Loads `path` (or only the defaults when `None`), applies the `HUSHD_*` environment
    /// overrides and validates the result.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with(Config::default(), path, |name| std::env::var(name).ok())
    }

    /// [`Config::load`] over a given base (the defaults of every key not in the file) and
    /// environment lookup.
    pub fn load_with(
        base: Config,
        path: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut table = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Syntax {
                        path: path.to_owned(),
                        message: e.to_string().trim().replace('\n', " "),
                    })?
            }
            None => toml::Table::new(),
        };
        let base_tree = to_tree(&base)?;
        apply_env(&base_tree, &mut table, &env)?;
        check_keys(&base_tree, &table, "")?;
        let mut merged = base_tree.clone();
        for (key, value) in leaves(&table, "") {
            check_leaf(&base_tree, &key, value)?;
            set_path(&mut merged, &key, value.clone());
        }
        let config = Config::deserialize(toml::Value::Table(merged)).map_err(|e| {
            if e.message().contains("tls") || table.contains_key("tls") {
                ConfigError::invalid("tls", format!("{} (set both cert and key)", e.message()))
            } else {
                ConfigError::invalid("config", e.message())
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that parse but make no sense, naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_server_name(&self.server_name)
            .map_err(|m| ConfigError::invalid("server_name", m))?;
        if self.listen.is_empty() {
            return Err(ConfigError::invalid(
                "listen",
                "at least one address is needed",
            ));
        }
        let db = &self.database_url;
        let db_ok = ["sqlite://", "postgres://", "postgresql://"]
            .iter()
            .any(|p| db.starts_with(p) && db.len() > p.len());
        if !db_ok {
            return Err(ConfigError::invalid(
                "database_url",
                "must start with sqlite:// or postgres://",
            ));
        }
        if self.signing_key_path.as_os_str().is_empty() {
            return Err(ConfigError::invalid(
                "signing_key_path",
                "must not be empty",
            ));
        }
        if self.worker_threads > 1024 {
            return Err(ConfigError::invalid(
                "worker_threads",
                "must be at most 1024 (0 = automatic)",
            ));
        }
        if self.shutdown_grace_secs > 3600 {
            return Err(ConfigError::invalid(
                "shutdown_grace_secs",
                "must be at most 3600",
            ));
        }
        if let Some(tls) = &self.tls {
            if tls.cert.as_os_str().is_empty() {
                return Err(ConfigError::invalid("tls.cert", "must not be empty"));
            }
            if tls.key.as_os_str().is_empty() {
                return Err(ConfigError::invalid("tls.key", "must not be empty"));
            }
        }
        let l = &self.limits;
        let positive: [(&str, u64); 8] = [
            ("limits.max_request_bytes", l.max_request_bytes as u64),
            (
                "limits.max_messages_per_request",
                l.max_messages_per_request as u64,
            ),
            (
                "limits.max_mailbox_per_device",
                l.max_mailbox_per_device.max(0) as u64,
            ),
            ("limits.sync_batch", l.sync_batch.max(0) as u64),
            ("limits.max_sync_timeout_ms", l.max_sync_timeout_ms),
            ("limits.message_ttl_secs", l.message_ttl_secs),
            ("limits.txn_ttl_secs", l.txn_ttl_secs),
            (
                "limits.max_one_time_keys_per_upload",
                l.max_one_time_keys_per_upload as u64,
            ),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(ConfigError::invalid(key, "must be greater than 0"));
            }
        }
        if l.max_request_bytes < 1024 {
            return Err(ConfigError::invalid(
                "limits.max_request_bytes",
                "must be at least 1024",
            ));
        }
        if l.sync_batch > 10_000 {
            return Err(ConfigError::invalid(
                "limits.sync_batch",
                "must be at most 10000",
            ));
        }
        let r = &self.rate_limits;
        for (name, bucket) in [
            ("register", r.register),
            ("login", r.login),
            ("keys_claim", r.keys_claim),
            ("send_to_device", r.send_to_device),
        ] {
            if !(bucket.per_second.is_finite() && bucket.per_second > 0.0) {
                return Err(ConfigError::invalid(
                    &format!("rate_limits.{name}.per_second"),
                    "must be a number greater than 0",
                ));
            }
            if bucket.burst == 0 {
                return Err(ConfigError::invalid(
                    &format!("rate_limits.{name}.burst"),
                    "must be at least 1",
                ));
            }
        }
        if self.metrics.refresh_secs == 0 {
            return Err(ConfigError::invalid(
                "metrics.refresh_secs",
                "must be at least 1",
            ));
        }
        Ok(())
    }

    /// Every `HUSHD_*` variable in `vars` that is not an override this version knows
    /// (worth a warning: probably a typo).
    pub fn unknown_env_vars(vars: impl Iterator<Item = String>) -> Vec<String> {
        let known: Vec<String> = known_keys().iter().map(|k| env_var_for(k)).collect();
        vars.filter(|v| v.starts_with("HUSHD_") && !known.contains(v))
            .collect()
    }
}

/// Every dotted key path the configuration accepts.
pub fn known_keys() -> Vec<String> {
    let Ok(tree) = to_tree(&Config::default()) else {
        return Vec::new();
    };
    let mut keys: Vec<String> = leaves(&tree, "").into_iter().map(|(k, _)| k).collect();
    keys.extend(OPTIONAL_LEAVES.iter().map(|k| (*k).to_owned()));
    keys
}

fn to_tree(config: &Config) -> Result<toml::Table, ConfigError> {
    toml::Table::try_from(config).map_err(|e| ConfigError::invalid("config", e.to_string()))
}

/// Leaves of a table as `(dotted path, value)`; arrays are leaves.
fn leaves<'a>(table: &'a toml::Table, prefix: &str) -> Vec<(String, &'a toml::Value)> {
    let mut out = Vec::new();
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            toml::Value::Table(inner) => out.extend(leaves(inner, &path)),
            other => out.push((path, other)),
        }
    }
    out
}

fn get_path<'a>(table: &'a toml::Table, path: &str) -> Option<&'a toml::Value> {
    let mut parts = path.split('.');
    let mut value = table.get(parts.next()?)?;
    for part in parts {
        value = value.as_table()?.get(part)?;
    }
    Some(value)
}

fn set_path(table: &mut toml::Table, path: &str, value: toml::Value) {
    let mut parts: Vec<&str> = path.split('.').collect();
    let Some(last) = parts.pop() else { return };
    let mut current = table;
    for part in parts {
        let entry = current
            .entry(part.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        let toml::Value::Table(next) = entry else {
            return;
        };
        current = next;
    }
    current.insert(last.to_owned(), value);
}

/// Refuses keys that the schema does not have.
fn check_keys(schema: &toml::Table, table: &toml::Table, prefix: &str) -> Result<(), ConfigError> {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        if path == "tls" {
            let toml::Value::Table(tls) = value else {
                return Err(ConfigError::invalid(
                    "tls",
                    "must be a table with cert and key",
                ));
            };
            for k in tls.keys() {
                if k != "cert" && k != "key" {
                    return Err(ConfigError::invalid(&format!("tls.{k}"), "unknown key"));
                }
            }
            continue;
        }
        match (schema.get(key), value) {
            (None, _) => return Err(ConfigError::invalid(&path, "unknown key")),
            (Some(toml::Value::Table(inner)), toml::Value::Table(given)) => {
                check_keys(inner, given, &path)?
            }
            (Some(toml::Value::Table(_)), _) => {
                return Err(ConfigError::invalid(&path, "must be a table"))
            }
            (Some(_), _) => {}
        }
    }
    Ok(())
}

/// Checks one given value by deserialising the defaults with only that value replaced, so a
/// type error is reported against its own key.
fn check_leaf(schema: &toml::Table, key: &str, value: &toml::Value) -> Result<(), ConfigError> {
    if OPTIONAL_LEAVES.contains(&key) {
        return match value {
            toml::Value::String(_) => Ok(()),
            _ => Err(ConfigError::invalid(key, "must be a string (a file path)")),
        };
    }
    if key == "listen" || key == "metrics.listen" {
        let toml::Value::Array(items) = value else {
            return Err(ConfigError::invalid(
                key,
                "must be a list of addresses like [\"127.0.0.1:8008\"]",
            ));
        };
        for item in items {
            let text = item.as_str().unwrap_or_default();
            if text.parse::<SocketAddr>().is_err() {
                return Err(ConfigError::invalid(
                    key,
                    format!("invalid address {item} (expected IP:PORT such as 127.0.0.1:8008)"),
                ));
            }
        }
    }
    let mut probe = schema.clone();
    set_path(&mut probe, key, value.clone());
    Config::deserialize(toml::Value::Table(probe))
        .map(|_| ())
        .map_err(|e| ConfigError::invalid(key, e.message()))
}

/// Applies `HUSHD_*` overrides for every key of the schema to the file's table.
fn apply_env(
    schema: &toml::Table,
    table: &mut toml::Table,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    for (key, default) in leaves(schema, "") {
        let var = env_var_for(&key);
        let Some(raw) = env(&var) else { continue };
        let parsed = parse_env_value(default, raw.trim()).map_err(|message| ConfigError::Env {
            var: var.clone(),
            message,
        })?;
        set_path(table, &key, parsed);
    }
    for key in OPTIONAL_LEAVES {
        if let Some(raw) = env(&env_var_for(key)) {
            set_path(table, key, toml::Value::String(raw));
        }
    }
    Ok(())
}

fn parse_env_value(default: &toml::Value, raw: &str) -> Result<toml::Value, String> {
    Ok(match default {
        toml::Value::String(_) => toml::Value::String(raw.to_owned()),
        toml::Value::Integer(_) => toml::Value::Integer(
            raw.parse()
                .map_err(|_| format!("expected an integer, got {raw:?}"))?,
        ),
        toml::Value::Float(_) => toml::Value::Float(
            raw.parse()
                .map_err(|_| format!("expected a number, got {raw:?}"))?,
        ),
        toml::Value::Boolean(_) => match raw {
            "true" | "1" | "yes" | "on" => toml::Value::Boolean(true),
            "false" | "0" | "no" | "off" => toml::Value::Boolean(false),
            _ => return Err(format!("expected true or false, got {raw:?}")),
        },
        toml::Value::Array(_) => toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_owned()))
                .collect(),
        ),
        other => return Err(format!("cannot be set from the environment ({other})")),
    })
}

/// `host[:port]` with host a DNS name, IPv4 literal or `[IPv6]` literal.
fn validate_server_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > 255 {
        return Err("must be at most 255 characters".into());
    }
    let (host, port) = if let Some(rest) = name.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return Err("unclosed [ in IPv6 literal".into());
        };
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("invalid IPv6 literal {v6:?}"));
        }
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or("expected :PORT after ]")?),
        };
        (None, port)
    } else {
        match name.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(name), None),
        }
    };
    if let Some(host) = host {
        let ok = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
        if !ok {
            return Err(format!(
                "invalid host {host:?} (expected a DNS name, IP address or [IPv6] literal, optionally with :PORT)"
            ));
        }
    }
    if let Some(port) = port {
        match port.parse::<u16>() {
            Ok(p) if p > 0 => {}
            _ => return Err(format!("invalid port {port:?}")),
        }
    }
    Ok(())
}

/// One documented key of the configuration.
struct KeyDoc {
    key: &'static str,
    doc: &'static str,
}

/// The documentation of every key, in file order. `hushd init`, `hushd config example` and
/// docs/operations.md are generated from this list and the defaults.
const KEY_DOCS: &[KeyDoc] = &[
    KeyDoc { key: "server_name", doc: "The name in user IDs (@alice:NAME) and the name peers use. A DNS name or host:port. Cannot change later." },
    KeyDoc { key: "listen", doc: "Addresses to listen on (IP:PORT). Use [\"0.0.0.0:8448\", \"[::]:8448\"] for all interfaces." },
    KeyDoc { key: "database_url", doc: "sqlite://PATH (created if missing; the embedded default) or postgres://USER[:PASSWORD]@HOST[:PORT]/DB." },
    KeyDoc { key: "registration", doc: "Who may register: \"closed\" (admin creates accounts), \"token\" (needs a registration token from `hushd admin token create`) or \"open\" (anyone; development only)." },
    KeyDoc { key: "signing_key_path", doc: "The Ed25519 server signing key written by `hushd init`. Back it up with the database." },
    KeyDoc { key: "log_format", doc: "\"text\" or \"json\" (one object per line). The level comes from RUST_LOG (default \"info\")." },
    KeyDoc { key: "shutdown_grace_secs", doc: "On SIGTERM or Ctrl-C: stop accepting, then wait at most this long for in-flight requests." },
    KeyDoc { key: "worker_threads", doc: "Threads of the async runtime. 0 = automatic: 1 on SQLite (its queries run on threads of their own, and one runtime thread saves a cross-thread wake-up at every hand-off), one per CPU on PostgreSQL." },
    KeyDoc { key: "trust_forwarded_for", doc: "Behind a reverse proxy: take the client IP for per-IP rate limits from X-Forwarded-For (last entry). Leave false when clients connect directly." },
    KeyDoc { key: "tls.cert", doc: "PEM certificate chain. Without a [tls] section hushd speaks plain HTTP (for use behind a reverse proxy)." },
    KeyDoc { key: "tls.key", doc: "PEM private key (PKCS#8, PKCS#1 or SEC1) for tls.cert." },
    KeyDoc { key: "limits.max_request_bytes", doc: "Largest request body; larger gets 413 M_TOO_LARGE." },
    KeyDoc { key: "limits.max_messages_per_request", doc: "Most target devices in one sendToDevice request." },
    KeyDoc { key: "limits.max_mailbox_per_device", doc: "Most undelivered to-device messages queued for one device; more are refused." },
    KeyDoc { key: "limits.sync_batch", doc: "Most to-device events in one /sync answer." },
    KeyDoc { key: "limits.max_sync_timeout_ms", doc: "Longest /sync long-poll; larger client timeouts are cut to this." },
    KeyDoc { key: "limits.message_ttl_secs", doc: "Undelivered to-device messages are deleted after this long." },
    KeyDoc { key: "limits.txn_ttl_secs", doc: "Idempotency records (txnId) are kept this long." },
    KeyDoc { key: "limits.max_one_time_keys_per_upload", doc: "Most one-time keys in one keys/upload." },
    KeyDoc { key: "rate_limits.enabled", doc: "Master switch for all rate limits (answers 429 M_LIMIT_EXCEEDED with retry_after_ms and Retry-After)." },
    KeyDoc { key: "rate_limits.register", doc: "Token bucket for /register and registration-token validity checks, per client IP: `burst` at once, refilled at `per_second`." },
    KeyDoc { key: "rate_limits.login", doc: "Token bucket for POST /login, per client IP and per user being logged in." },
    KeyDoc { key: "rate_limits.keys_claim", doc: "Token bucket for /keys/claim, per requesting user (nobody can drain a key pool)." },
    KeyDoc { key: "rate_limits.send_to_device", doc: "Token bucket for /sendToDevice, per sending user." },
    KeyDoc { key: "metrics.enabled", doc: "Serve Prometheus metrics at /metrics." },
    KeyDoc { key: "metrics.listen", doc: "Serve /metrics only on these extra addresses (e.g. [\"127.0.0.1:9108\"]); empty = on the main listeners." },
    KeyDoc { key: "metrics.refresh_secs", doc: "How often the mailbox depth gauge is read from the database." },
    KeyDoc { key: "federation.allow", doc: "Servers we federate with: names, name:port, or *.domain for subdomains. Empty = every server not denied." },
    KeyDoc { key: "federation.deny", doc: "Servers refused in both directions (same forms as allow; deny wins)." },
    KeyDoc { key: "federation.servers", doc: "Pins that bypass discovery: [{ name = \"beta.example\", url = \"https://10.0.0.2:8448\" }]." },
    KeyDoc { key: "federation.ca_files", doc: "Extra PEM CA files trusted for outbound federation HTTPS (besides the system roots)." },
    KeyDoc { key: "federation.key_valid_for_secs", doc: "How long our published key document is valid; peers cache it at most this long (and at most 7 days)." },
    KeyDoc { key: "federation.retry_min_ms", doc: "Wait after the first failed transaction to a server; doubles per failure, with jitter." },
    KeyDoc { key: "federation.retry_max_ms", doc: "Longest wait between attempts (at most one hour). Ends early when the server contacts us." },
    KeyDoc { key: "federation.poll_interval_ms", doc: "How often the sender looks for newly queued messages." },
    KeyDoc { key: "federation.request_timeout_secs", doc: "Time allowed for one outbound federation request." },
];

#[cfg(test)]
fn doc_for(key: &str) -> &'static str {
    KEY_DOCS
        .iter()
        .find(|d| d.key == key)
        .map(|d| d.doc)
        .unwrap_or("")
}

fn render_value(value: &toml::Value) -> String {
    match value {
        toml::Value::Table(t) => {
            let inner: Vec<String> = t
                .iter()
                .map(|(k, v)| format!("{k} = {}", render_value(v)))
                .collect();
            format!("{{ {} }}", inner.join(", "))
        }
        toml::Value::Array(items) => {
            let inner: Vec<String> = items.iter().map(render_value).collect();
            format!("[{}]", inner.join(", "))
        }
        other => other.to_string(),
    }
}

fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// The commented `hushd.toml` for `config` (every key, its meaning, its environment variable).
/// `hushd init` writes it with closed registration; docs/operations.md shows it for the defaults.
pub fn example_toml(config: &Config) -> String {
    let tree = to_tree(config).unwrap_or_default();
    let mut out = String::from(
        "# hushd.toml: the Hush homeserver configuration.\n\
         # Every key is optional (the value shown is the default unless `hushd init` chose it) and\n\
         # can be overridden by the environment variable named beside it.\n\n",
    );
    let mut section = "";
    for doc in KEY_DOCS {
        let (sec, name) = doc.key.rsplit_once('.').unwrap_or(("", doc.key));
        let commented = sec == "tls" && config.tls.is_none();
        if sec != section {
            section = sec;
            let hash = if commented { "# " } else { "" };
            out.push_str(&format!("{hash}[{sec}]\n"));
        }
        let value = match (doc.key, &config.tls) {
            ("tls.cert", None) => "\"/etc/hushd/fullchain.pem\"".to_owned(),
            ("tls.key", None) => "\"/etc/hushd/privkey.pem\"".to_owned(),
            _ => get_path(&tree, doc.key)
                .map(render_value)
                .unwrap_or_default(),
        };
        for line in wrap(doc.doc, 94) {
            out.push_str(&format!("# {line}\n"));
        }
        let vars: Vec<String> = match get_path(&tree, doc.key) {
            Some(toml::Value::Table(t)) => t
                .keys()
                .map(|k| env_var_for(&format!("{}.{k}", doc.key)))
                .collect(),
            _ => vec![env_var_for(doc.key)],
        };
        out.push_str(&format!("# (env {})\n", vars.join(", ")));
        let hash = if commented { "# " } else { "" };
        out.push_str(&format!("{hash}{name} = {value}\n\n"));
    }
    while out.ends_with("\n\n") {
        out.pop();
    }
    out
}

/// The configuration reference as a Markdown table (key, default, environment variable,
/// meaning), as included in docs/operations.md.
pub fn reference_markdown() -> String {
    let tree = to_tree(&Config::default()).unwrap_or_default();
    let mut out = String::from("| key | default | environment | meaning |\n|---|---|---|---|\n");
    for doc in KEY_DOCS {
        let default = get_path(&tree, doc.key)
            .map(render_value)
            .unwrap_or_else(|| "(unset)".into());
        let env = match get_path(&tree, doc.key) {
            Some(toml::Value::Table(t)) => t
                .keys()
                .map(|k| format!("`{}`", env_var_for(&format!("{}.{k}", doc.key))))
                .collect::<Vec<_>>()
                .join(", "),
            _ => format!("`{}`", env_var_for(doc.key)),
        };
        out.push_str(&format!(
            "| `{}` | `{}` | {} | {} |\n",
            doc.key,
            default.replace('|', "\\|"),
            env,
            doc.doc.replace('|', "\\|")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load_text(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().map_err(|e| ConfigError::invalid("test", e.to_string()))?;
        let path = dir.path().join("hushd.toml");
        std::fs::write(&path, text).map_err(|e| ConfigError::invalid("test", e.to_string()))?;
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::load_with(Config::default(), Some(&path), |k| env.get(k).cloned())
    }

    fn err_text(text: &str) -> String {
        match load_text(text, &[]) {
            Ok(_) => "accepted".into(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn empty_file_gives_defaults() -> Result<(), ConfigError> {
        let config = load_text("", &[])?;
        assert_eq!(config.server_name, "localhost:8008");
        assert_eq!(config.limits.sync_batch, 100);
        assert!(config.tls.is_none());
        Ok(())
    }

    #[test]
    fn runtime_threads_follow_the_backend_unless_set() -> Result<(), ConfigError> {
        assert_eq!(load_text("", &[])?.runtime_threads(), 1, "SQLite");
        let pg = load_text("database_url = \"postgres://u@db/hush\"", &[])?;
        assert_eq!(
            pg.runtime_threads(),
            std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
        );
        let set = load_text("", &[("HUSHD_WORKER_THREADS", "3")])?;
        assert_eq!(set.runtime_threads(), 3);
        assert!(err_text("worker_threads = 5000").starts_with("worker_threads: "));
        Ok(())
    }

    #[test]
    fn errors_name_the_key() {
        assert!(err_text("listen = [\"nope\"]").starts_with("listen: invalid address"));
        assert!(err_text("database_url = \"mysql://x\"")
            .starts_with("database_url: must start with sqlite:// or postgres://"));
        assert!(err_text("colour = 1").starts_with("colour: unknown key"));
        assert!(err_text("[limits]\nfoo = 1").starts_with("limits.foo: unknown key"));
        assert!(err_text("[limits]\nsync_batch = \"x\"").starts_with("limits.sync_batch: "));
        assert!(err_text("[limits]\nsync_batch = 0").starts_with("limits.sync_batch: "));
        assert!(err_text("registration = \"maybe\"").starts_with("registration: "));
        assert!(err_text("server_name = \"bad name\"").starts_with("server_name: "));
        assert!(err_text("[tls]\ncert = \"a\"").starts_with("tls"));
        assert!(err_text("[tls]\ncert = \"a\"\nkey = \"b\"\nx = 1").starts_with("tls.x: unknown"));
        assert!(
            err_text("[rate_limits]\nlogin = { per_second = 0.0, burst = 1 }")
                .starts_with("rate_limits.login.per_second: ")
        );
        assert!(err_text("[rate_limits.login]\nburst = -1").starts_with("rate_limits.login.burst"));
        assert!(err_text("server_name = ").contains("not valid TOML"));
    }

    #[test]
    fn env_overrides_file() -> Result<(), ConfigError> {
        let config = load_text(
            "server_name = \"file.example\"\n[limits]\nsync_batch = 5",
            &[
                ("HUSHD_SERVER_NAME", "env.example"),
                ("HUSHD_LISTEN", "127.0.0.1:1, [::1]:2"),
                ("HUSHD_LIMITS_SYNC_BATCH", "7"),
                ("HUSHD_RATE_LIMITS_ENABLED", "false"),
                ("HUSHD_RATE_LIMITS_LOGIN_PER_SECOND", "3"),
                ("HUSHD_TLS_CERT", "/c.pem"),
                ("HUSHD_TLS_KEY", "/k.pem"),
                ("HUSHD_REGISTRATION", "token"),
            ],
        )?;
        assert_eq!(config.server_name, "env.example");
        assert_eq!(config.listen.len(), 2);
        assert_eq!(config.limits.sync_batch, 7);
        assert!(!config.rate_limits.enabled);
        assert_eq!(config.rate_limits.login.per_second, 3.0);
        assert_eq!(config.registration, RegistrationMode::Token);
        assert_eq!(config.tls.map(|t| t.cert), Some(PathBuf::from("/c.pem")));
        let bad = load_text("", &[("HUSHD_LIMITS_SYNC_BATCH", "many")]);
        assert!(
            matches!(bad, Err(ConfigError::Env { ref var, .. }) if var == "HUSHD_LIMITS_SYNC_BATCH")
        );
        Ok(())
    }

    #[test]
    fn example_parses_back_to_its_config() -> Result<(), ConfigError> {
        let config = Config {
            server_name: "example.org".into(),
            ..Config::default()
        };
        let text = example_toml(&config);
        let back = load_text(&text, &[])?;
        assert_eq!(back.server_name, "example.org");
        assert_eq!(back.registration, RegistrationMode::Closed);
        assert_eq!(back.rate_limits.login.burst, 10);
        for key in known_keys() {
            let parent = key.rsplit_once('.').map(|x| x.0).unwrap_or("");
            assert!(
                !doc_for(&key).is_empty() || !doc_for(parent).is_empty(),
                "undocumented key {key}"
            );
            assert!(text.contains(&env_var_for(&key)), "example lacks {key}");
        }
        Ok(())
    }

    #[test]
    fn redacts_database_password() {
        assert_eq!(
            redact_url("postgres://u:secret@db:5432/hush"),
            "postgres://u:***@db:5432/hush"
        );
        assert_eq!(redact_url("sqlite://data/x.db"), "sqlite://data/x.db");
        let config = Config {
            database_url: "postgres://u:secret@db/hush".into(),
            ..Config::default()
        };
        assert!(!format!("{config:?}").contains("secret"));
    }
}
