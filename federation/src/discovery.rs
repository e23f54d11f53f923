//! Server discovery: which `https://host:port` serves a given server name (feature `http`).
//!
//! In order:
//! 1. A configured override (`server name -> "https://host:port"`) wins. Tests and private
//!    deployments pin names to addresses this way.
//! 2. An IP literal goes to that IP, on its explicit port or 8448.
//! 3. A host name with an explicit port goes to that host and port.
//! 4. Otherwise `GET https://NAME/.well-known/matrix/server` is asked for `{"m.server":
//!    "delegated[:port]"}` (redirects followed, body read as JSON whatever its content type). The
//!    delegated name is resolved by rules 2 and 3, or gets port 8448. Answers are cached per
//!    `Cache-Control: max-age` (24 hours when absent, at most 48 hours); failures and invalid
//!    answers are cached for one hour.
//! 5. Otherwise the name itself on port 8448.
//!
//! DNS SRV records (`_matrix-fed._tcp`, `_matrix._tcp`) are **not** looked up: Hush deployments
//! use well-known delegation, explicit ports or overrides instead.
//!
//! `origin` and `destination` in signed requests always stay the *undelegated* server name; only
//! the network address comes from here.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::Url;
use serde::Deserialize;

use crate::ids::ServerName;
use crate::wire::WELL_KNOWN_SERVER_PATH;

/// The federation port used when nothing else says otherwise.
pub const DEFAULT_FEDERATION_PORT: u16 = 8448;
/// How long a well-known answer without `max-age` is cached.
pub const WELL_KNOWN_DEFAULT_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// The longest a well-known answer is cached, whatever it says.
pub const WELL_KNOWN_MAX_TTL: Duration = Duration::from_secs(48 * 60 * 60);
/// How long a failed or invalid well-known lookup is cached.
pub const WELL_KNOWN_ERROR_TTL: Duration = Duration::from_secs(60 * 60);
/// The largest well-known body read.
pub const WELL_KNOWN_MAX_BYTES: usize = 64 * 1024;
/// Timeout of one well-known lookup.
pub const WELL_KNOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// A configuration value that is not an acceptable override URL.
#[derive(Debug, thiserror::Error)]
#[error("invalid override URL for {server}: {reason}")]
pub struct OverrideError {
    /// The server name being overridden.
    pub server: String,
    /// What is wrong with the URL.
    pub reason: String,
}

/// Parses an override base URL: `https://host[:port]` with no path, query or credentials.
pub fn parse_override(server: &ServerName, url: &str) -> Result<Url, OverrideError> {
    let error = |reason: &str| OverrideError {
        server: server.to_string(),
        reason: reason.to_owned(),
    };
    let parsed = Url::parse(url).map_err(|e| error(&e.to_string()))?;
    if parsed.scheme() != "https" {
        return Err(error("federation is HTTPS only"));
    }
    if parsed.host_str().is_none() {
        return Err(error("no host"));
    }
    if parsed.path() != "/" || parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(error("must be a base URL without path or query"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(error("must not contain credentials"));
    }
    Ok(parsed)
}

/// A server name that cannot be turned into a URL (should not happen for validated names).
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot resolve server: {0}")]
pub struct DiscoveryError(pub String);

/// How a server name was resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolvedVia {
    /// A configured override.
    Override,
    /// The name is an IP literal.
    IpLiteral,
    /// The name has an explicit port.
    ExplicitPort,
    /// `/.well-known/matrix/server` delegated to this name.
    WellKnown(ServerName),
    /// Nothing else applied: the name on port 8448.
    DefaultPort,
}

/// Where to send federation requests for a server name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// `https://host:port/`, to which request paths are appended.
    pub base_url: Url,
    /// Which rule produced it.
    pub via: ResolvedVia,
}

#[derive(Debug, Clone)]
struct CachedWellKnown {
    delegated: Option<ServerName>,
    expires: Instant,
}

/// Resolves server names to base URLs, caching well-known answers.
#[derive(Debug)]
pub struct Resolver {
    overrides: HashMap<ServerName, Url>,
    well_known_port: u16,
    http: reqwest::Client,
    cache: Mutex<HashMap<ServerName, CachedWellKnown>>,
}

#[derive(Deserialize)]
struct WellKnownServer {
    #[serde(rename = "m.server")]
    server: String,
}

impl Resolver {
    /// Builds a resolver.
    ///
    /// `http` fetches well-known documents (it should follow redirects and trust the same roots as
    /// federation requests). `well_known_port` is 443 in production; tests can point it elsewhere.
    pub fn new(
        http: reqwest::Client,
        overrides: HashMap<ServerName, Url>,
        well_known_port: u16,
    ) -> Self {
        Self {
            overrides,
            well_known_port,
            http,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Resolves `name` (see the module documentation for the rules).
    pub async fn resolve(&self, name: &ServerName) -> Result<Resolved, DiscoveryError> {
        if let Some(url) = self.overrides.get(name) {
            return Ok(Resolved {
                base_url: url.clone(),
                via: ResolvedVia::Override,
            });
        }
        if let Some(resolved) = direct(name)? {
            return Ok(resolved);
        }
        Ok(match self.well_known(name).await {
            Some(delegated) => {
                let base_url = match direct(&delegated)? {
                    Some(resolved) => resolved.base_url,
                    None => base_url(delegated.host_str(), DEFAULT_FEDERATION_PORT)?,
                };
                Resolved {
                    base_url,
                    via: ResolvedVia::WellKnown(delegated),
                }
            }
            None => Resolved {
                base_url: base_url(name.host_str(), DEFAULT_FEDERATION_PORT)?,
                via: ResolvedVia::DefaultPort,
            },
        })
    }

    /// Forgets the cached well-known answer for `name` (e.g. after the operator reset it).
    pub fn forget(&self, name: &ServerName) {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
    }

    async fn well_known(&self, name: &ServerName) -> Option<ServerName> {
        let now = Instant::now();
        if let Some(entry) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
        {
            if entry.expires > now {
                return entry.delegated.clone();
            }
        }
        let (delegated, ttl) = match self.fetch_well_known(name).await {
            Ok((delegated, ttl)) => (Some(delegated), ttl),
            Err(reason) => {
                tracing::debug!(server = %name, %reason, "no usable well-known delegation");
                (None, WELL_KNOWN_ERROR_TTL)
            }
        };
        let entry = CachedWellKnown {
            delegated: delegated.clone(),
            expires: now + ttl,
        };
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.clone(), entry);
        delegated
    }

    async fn fetch_well_known(&self, name: &ServerName) -> Result<(ServerName, Duration), String> {
        let mut url = base_url(name.host_str(), self.well_known_port).map_err(|e| e.0)?;
        url.set_path(WELL_KNOWN_SERVER_PATH);
        let mut response = self
            .http
            .get(url)
            .timeout(WELL_KNOWN_TIMEOUT)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("status {}", response.status()));
        }
        let ttl = response
            .headers()
            .get(reqwest::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .map_or(WELL_KNOWN_DEFAULT_TTL, cache_lifetime);
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
            if body.len() + chunk.len() > WELL_KNOWN_MAX_BYTES {
                return Err("body too large".into());
            }
            body.extend_from_slice(&chunk);
        }
        let parsed: WellKnownServer = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        let delegated = ServerName::parse(&parsed.server).map_err(|e| e.to_string())?;
        Ok((delegated, ttl))
    }
}

/// Resolution by rules 2 and 3 (IP literal, explicit port), if one applies.
fn direct(name: &ServerName) -> Result<Option<Resolved>, DiscoveryError> {
    if name.is_ip_literal() {
        let port = name.port().unwrap_or(DEFAULT_FEDERATION_PORT);
        let base_url = base_url(name.host_str(), port)?;
        return Ok(Some(Resolved {
            base_url,
            via: ResolvedVia::IpLiteral,
        }));
    }
    match name.port() {
        Some(port) => {
            let base_url = base_url(name.host_str(), port)?;
            Ok(Some(Resolved {
                base_url,
                via: ResolvedVia::ExplicitPort,
            }))
        }
        None => Ok(None),
    }
}

/// `https://host:port/` for a validated host (DNS name, IPv4, or bracketed IPv6).
fn base_url(host: &str, port: u16) -> Result<Url, DiscoveryError> {
    Url::parse(&format!("https://{host}:{port}/"))
        .map_err(|e| DiscoveryError(format!("{host}:{port} is not a usable address: {e}")))
}

/// The cache lifetime that a `Cache-Control` header value asks for: `max-age` capped at
/// [`WELL_KNOWN_MAX_TTL`], zero for `no-store`/`no-cache`, else [`WELL_KNOWN_DEFAULT_TTL`].
pub fn cache_lifetime(cache_control: &str) -> Duration {
    let mut lifetime = WELL_KNOWN_DEFAULT_TTL;
    for directive in cache_control.split(',') {
        let directive = directive.trim();
        let (name, value) = match directive.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
            None => (directive, None),
        };
        if name.eq_ignore_ascii_case("no-store") || name.eq_ignore_ascii_case("no-cache") {
            return Duration::ZERO;
        }
        if name.eq_ignore_ascii_case("max-age") {
            if let Some(seconds) = value.and_then(|v| v.parse::<u64>().ok()) {
                lifetime = Duration::from_secs(seconds);
            }
        }
    }
    lifetime.min(WELL_KNOWN_MAX_TTL)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> ServerName {
        ServerName::parse(s).unwrap()
    }

    #[test]
    fn direct_rules() {
        let r = direct(&name("127.0.0.2")).unwrap().unwrap();
        assert_eq!(r.base_url.as_str(), "https://127.0.0.2:8448/");
        assert_eq!(r.via, ResolvedVia::IpLiteral);
        let r = direct(&name("[::1]:99")).unwrap().unwrap();
        assert_eq!(r.base_url.as_str(), "https://[::1]:99/");
        let r = direct(&name("hs.example:1234")).unwrap().unwrap();
        assert_eq!(r.base_url.as_str(), "https://hs.example:1234/");
        assert_eq!(r.via, ResolvedVia::ExplicitPort);
        assert!(direct(&name("hs.example")).unwrap().is_none());
    }

    #[test]
    fn cache_control() {
        assert_eq!(cache_lifetime("max-age=600"), Duration::from_secs(600));
        assert_eq!(
            cache_lifetime("public, Max-Age = \"60\""),
            Duration::from_secs(60)
        );
        assert_eq!(cache_lifetime("max-age=999999999"), WELL_KNOWN_MAX_TTL);
        assert_eq!(cache_lifetime("public"), WELL_KNOWN_DEFAULT_TTL);
        assert_eq!(cache_lifetime("max-age=abc"), WELL_KNOWN_DEFAULT_TTL);
        assert_eq!(cache_lifetime("no-store"), Duration::ZERO);
        assert_eq!(cache_lifetime(""), WELL_KNOWN_DEFAULT_TTL);
    }

    #[test]
    fn overrides_must_be_https_base_urls() {
        let n = name("hs2");
        assert_eq!(
            parse_override(&n, "https://127.0.0.1:18448")
                .unwrap()
                .as_str(),
            "https://127.0.0.1:18448/"
        );
        assert!(parse_override(&n, "http://127.0.0.1:18448").is_err());
        assert!(parse_override(&n, "https://127.0.0.1:18448/path").is_err());
        assert!(parse_override(&n, "https://u:p@127.0.0.1").is_err());
        assert!(parse_override(&n, "not a url").is_err());
    }

    #[tokio::test]
    async fn overrides_win_and_skip_the_network() {
        let n = name("hs2");
        let url = parse_override(&n, "https://127.0.0.1:18448").unwrap();
        let resolver = Resolver::new(
            reqwest::Client::new(),
            HashMap::from([(n.clone(), url)]),
            443,
        );
        let r = resolver.resolve(&n).await.unwrap();
        assert_eq!(r.base_url.as_str(), "https://127.0.0.1:18448/");
        assert_eq!(r.via, ResolvedVia::Override);
        let r = resolver.resolve(&name("127.0.0.3:9000")).await.unwrap();
        assert_eq!(r.base_url.as_str(), "https://127.0.0.3:9000/");
    }
}
