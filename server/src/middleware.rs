//! HTTP middleware around the API router: CORS, access logs and metrics, rate limits.
//!
//! Order (outside in): [`observe`] (latency, status, access log) -> [`cors`] (answers `OPTIONS`
//! itself, adds the CORS headers to every response) -> router -> [`route_stage`] (runs after
//! routing, so it knows the route template; applies rate limits and labels the response).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::middleware::{from_fn, from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures::future::BoxFuture;
use http::header::{HeaderName, HeaderValue};
use http::{Method, StatusCode};
use sha2::{Digest, Sha256};

use crate::metrics::Metrics;
use crate::ratelimit::{LimitKey, LimitKind, RateLimiter};

/// Route label of requests that matched no route (never the raw path: it is unbounded).
pub const UNMATCHED: &str = "unmatched";

/// Finds the user an access token in a request belongs to (for per-user rate limits).
pub trait UserLookup: Send + Sync + 'static {
    /// The user ID, or `None` when the request carries no valid token.
    fn user_for_request<'a>(
        &'a self,
        parts: &'a http::request::Parts,
    ) -> BoxFuture<'a, Option<String>>;
}

/// What the middleware needs.
pub struct Ops {
    /// Where request metrics go.
    pub metrics: Arc<Metrics>,
    /// The rate limiter.
    pub limiter: Arc<RateLimiter>,
    /// Token -> user, for per-user limits.
    pub users: Arc<dyn UserLookup>,
    /// Take the client IP from `X-Forwarded-For`.
    pub trust_forwarded_for: bool,
    /// Largest body read when a limit needs to look into it (`/login`).
    pub max_body: usize,
    /// Recent token -> user answers.
    pub user_cache: UserCache,
}

/// How long a token -> user answer is reused for rate-limit keys.
const USER_CACHE_TTL: Duration = Duration::from_secs(60);
/// Most remembered tokens.
const USER_CACHE_MAX: usize = 10_000;

/// Remembers which user an `Authorization` header belonged to, so per-user limits do not cost a
/// database lookup on top of the handler's own authentication. Used only to pick a rate-limit
/// bucket (a stale entry after a logout can only charge that user's bucket; the handler still
/// refuses the token). Keys are SHA-256 hashes of the header, never the token itself.
#[derive(Debug, Default)]
pub struct UserCache {
    map: Mutex<HashMap<[u8; 32], (String, Instant)>>,
}

impl UserCache {
    fn get(&self, key: &[u8; 32], now: Instant) -> Option<String> {
        let map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(key)
            .filter(|(_, at)| now.saturating_duration_since(*at) < USER_CACHE_TTL)
            .map(|(user, _)| user.clone())
    }

    fn put(&self, key: [u8; 32], user: String, now: Instant) {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= USER_CACHE_MAX {
            map.retain(|_, (_, at)| now.saturating_duration_since(*at) < USER_CACHE_TTL);
            if map.len() >= USER_CACHE_MAX {
                map.clear();
            }
        }
        map.insert(key, (user, now));
    }
}

/// The user of a request's access token, from the cache or the [`UserLookup`].
async fn request_user(ops: &Ops, parts: &http::request::Parts, now: Instant) -> Option<String> {
    let key: Option<[u8; 32]> = parts
        .headers
        .get(http::header::AUTHORIZATION)
        .map(|v| Sha256::digest(v.as_bytes()).into());
    if let Some(user) = key.as_ref().and_then(|k| ops.user_cache.get(k, now)) {
        return Some(user);
    }
    let user = ops.users.user_for_request(parts).await?;
    if let Some(key) = key {
        ops.user_cache.put(key, user.clone(), now);
    }
    Some(user)
}

/// The route template a response was produced for (set by [`route_stage`]). Holds axum's
/// shared template string (or a constant), so labelling a response allocates nothing.
#[derive(Debug, Clone)]
enum RouteLabel {
    /// The template of the route that matched.
    Matched(MatchedPath),
    /// A fixed label ([`UNMATCHED`], CORS preflight).
    Fixed(&'static str),
}

impl RouteLabel {
    fn as_str(&self) -> &str {
        match self {
            RouteLabel::Matched(path) => path.as_str(),
            RouteLabel::Fixed(label) => label,
        }
    }
}

/// Wraps `router` (all routes already added) in the operations middleware.
pub fn wrap(router: Router, ops: Arc<Ops>) -> Router {
    router
        .route_layer(from_fn_with_state(ops.clone(), route_stage))
        .layer(from_fn(cors))
        .layer(from_fn_with_state(ops, observe))
}

/// Records latency and status per route template and writes the access log line. The query
/// string is never logged: it can carry an access token.
async fn observe(State(ops): State<Arc<Ops>>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = method_label(req.method());
    let response = next.run(req).await;
    let elapsed = start.elapsed();
    let route = response
        .extensions()
        .get::<RouteLabel>()
        .map(RouteLabel::as_str)
        .unwrap_or(UNMATCHED);
    let status = response.status().as_u16();
    ops.metrics.observe_request(route, method, status, elapsed);
    tracing::info!(
        target: "hushd::access",
        method,
        route,
        status,
        latency_us = elapsed.as_micros() as u64,
        "request"
    );
    response
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::HEAD => "HEAD",
        _ => "other",
    }
}

/// Answers `OPTIONS` on every path without running endpoint logic and adds the CORS headers
/// (matrix-subset section 0) to every response.
async fn cors(req: Request, next: Next) -> Response {
    let mut response = if req.method() == Method::OPTIONS {
        let mut r = json_response(StatusCode::OK, serde_json::json!({}));
        r.extensions_mut()
            .insert(RouteLabel::Fixed("OPTIONS (CORS)"));
        r
    } else {
        next.run(req).await
    };
    let headers = response.headers_mut();
    headers.insert(
        HeaderName::from_static("access-control-allow-origin"),
        HeaderValue::from_static("*"),
    );
    headers.insert(
        HeaderName::from_static("access-control-allow-methods"),
        HeaderValue::from_static("GET, POST, PUT, DELETE, OPTIONS"),
    );
    headers.insert(
        HeaderName::from_static("access-control-allow-headers"),
        HeaderValue::from_static("X-Requested-With, Content-Type, Authorization"),
    );
    response
}

/// Runs after routing: applies the rate limit of the route, then labels the response.
async fn route_stage(State(ops): State<Arc<Ops>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .cloned()
        .map_or(RouteLabel::Fixed(UNMATCHED), RouteLabel::Matched);
    let req = match limit(&ops, route.as_str(), req).await {
        Ok(req) => req,
        Err(mut response) => {
            response.extensions_mut().insert(route);
            return response;
        }
    };
    let mut response = next.run(req).await;
    response.extensions_mut().insert(route);
    response
}

/// Which limit a route falls under.
fn classify(method: &Method, route: &str) -> Option<LimitKind> {
    if *method == Method::POST && route.ends_with("/register") {
        return Some(LimitKind::Register);
    }
    if *method == Method::GET && route.ends_with("/register/m.login.registration_token/validity") {
        return Some(LimitKind::Register);
    }
    if *method == Method::POST && route.ends_with("/login") {
        return Some(LimitKind::Login);
    }
    if *method == Method::POST && route.ends_with("/keys/claim") {
        return Some(LimitKind::KeysClaim);
    }
    if *method == Method::PUT && route.contains("/sendToDevice/") {
        return Some(LimitKind::SendToDevice);
    }
    None
}

/// The client address: the peer, or with `trust_forwarded_for` the last `X-Forwarded-For`
/// entry (the one the trusted proxy added).
fn client_ip(ops: &Ops, req: &Request) -> Option<IpAddr> {
    if ops.trust_forwarded_for {
        let forwarded = req
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .last()
            .and_then(|last| last.trim().parse::<IpAddr>().ok());
        if forwarded.is_some() {
            return forwarded;
        }
    }
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
}

/// Why [`limit`] refused a request.
enum Refusal {
    /// A bucket is empty; retry after this many milliseconds.
    Limited(u64),
    /// The body could not be read within `max_body`.
    TooLarge,
}

async fn limit(ops: &Ops, route: &str, req: Request) -> Result<Request, Response> {
    if !ops.limiter.enabled() {
        return Ok(req);
    }
    let Some(kind) = classify(req.method(), route) else {
        return Ok(req);
    };
    limit_kind(ops, kind, req)
        .await
        .map_err(|refusal| match refusal {
            Refusal::Limited(ms) => {
                ops.metrics.rate_limited(kind);
                tracing::debug!(limit = kind.name(), "rate limited");
                limit_exceeded(ms)
            }
            Refusal::TooLarge => too_large(),
        })
}

async fn limit_kind(ops: &Ops, kind: LimitKind, req: Request) -> Result<Request, Refusal> {
    let now = Instant::now();
    let check = |key: LimitKey| -> Result<(), Refusal> {
        ops.limiter
            .check(kind, key, now)
            .map_err(|wait| Refusal::Limited(wait.as_millis() as u64))
    };
    match kind {
        LimitKind::Register => {
            if let Some(ip) = client_ip(ops, &req) {
                check(LimitKey::ip(ip))?;
            }
            Ok(req)
        }
        LimitKind::Login => {
            if let Some(ip) = client_ip(ops, &req) {
                check(LimitKey::ip(ip))?;
            }
            let (parts, body) = req.into_parts();
            let bytes = axum::body::to_bytes(body, ops.max_body)
                .await
                .map_err(|_| Refusal::TooLarge)?;
            if let Some(user) = login_name(&bytes) {
                check(LimitKey::User(user))?;
            }
            Ok(Request::from_parts(parts, Body::from(bytes)))
        }
        LimitKind::KeysClaim | LimitKind::SendToDevice => {
            let (parts, body) = req.into_parts();
            if let Some(user) = request_user(ops, &parts, now).await {
                check(LimitKey::User(user))?;
            }
            Ok(Request::from_parts(parts, body))
        }
    }
}

/// The (lower-cased localpart of the) user a `/login` body names, if any.
fn login_name(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let name = value
        .get("identifier")
        .and_then(|i| i.get("user"))
        .or_else(|| value.get("user"))
        .and_then(|u| u.as_str())?;
    let local = name.strip_prefix('@').unwrap_or(name);
    let local = local.split(':').next().unwrap_or(local);
    Some(local.to_lowercase())
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response {
    (status, axum::Json(body)).into_response()
}

/// `429 M_LIMIT_EXCEEDED` with `retry_after_ms` and a `Retry-After` header (whole seconds,
/// rounded up).
pub fn limit_exceeded(retry_after_ms: u64) -> Response {
    let mut response = json_response(
        StatusCode::TOO_MANY_REQUESTS,
        serde_json::json!({
            "errcode": "M_LIMIT_EXCEEDED",
            "error": "Too many requests",
            "retry_after_ms": retry_after_ms,
        }),
    );
    let secs = retry_after_ms.div_ceil(1000).max(1);
    if let Ok(value) = HeaderValue::from_str(&secs.to_string()) {
        response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, value);
    }
    response
}

fn too_large() -> Response {
    json_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        serde_json::json!({"errcode": "M_TOO_LARGE", "error": "Request body too large"}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Bucket, RateLimits};
    use axum::routing::{get, post, put};
    use tower::ServiceExt;

    struct NoUsers;
    impl UserLookup for NoUsers {
        fn user_for_request<'a>(
            &'a self,
            parts: &'a http::request::Parts,
        ) -> BoxFuture<'a, Option<String>> {
            let user = parts
                .headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(|v| v.trim_start_matches("Bearer ").to_owned());
            Box::pin(async move { user })
        }
    }

    fn test_app(enabled: bool) -> (Router, Arc<Metrics>) {
        let bucket = Bucket {
            per_second: 0.01,
            burst: 2,
        };
        let limits = RateLimits {
            enabled,
            register: bucket,
            login: bucket,
            keys_claim: bucket,
            send_to_device: bucket,
        };
        let metrics = Arc::new(Metrics::new());
        let ops = Arc::new(Ops {
            metrics: metrics.clone(),
            limiter: Arc::new(RateLimiter::new(&limits)),
            users: Arc::new(NoUsers),
            trust_forwarded_for: true,
            max_body: 1024,
            user_cache: UserCache::default(),
        });
        let router = Router::new()
            .route(
                "/_matrix/client/v3/login",
                post(|body: String| async move { body }),
            )
            .route("/_matrix/client/v3/versions", get(|| async { "ok" }))
            .route(
                "/_matrix/client/v3/sendToDevice/{t}/{txn}",
                put(|| async { "sent" }),
            );
        (wrap(router, ops), metrics)
    }

    fn req(method: Method, uri: &str, body: &str, auth: Option<&str>) -> Request {
        let mut builder = http::Request::builder()
            .method(method)
            .uri(uri)
            .header("x-forwarded-for", "10.9.9.9, 192.0.2.7");
        if let Some(a) = auth {
            builder = builder.header("authorization", format!("Bearer {a}"));
        }
        builder
            .body(Body::from(body.to_owned()))
            .unwrap_or_else(|_| Request::new(Body::empty()))
    }

    #[tokio::test]
    async fn cors_on_every_response_and_options_short_circuits() {
        let (app, _) = test_app(true);
        let r = app
            .clone()
            .oneshot(req(
                Method::OPTIONS,
                "/_matrix/client/v3/anything",
                "",
                None,
            ))
            .await
            .map_err(|e| e.to_string());
        let r = r.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["access-control-allow-origin"], "*");
        let r = app
            .oneshot(req(Method::GET, "/nope", "", None))
            .await
            .unwrap_or_else(|e| match e {});
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            r.headers()["access-control-allow-headers"],
            "X-Requested-With, Content-Type, Authorization"
        );
    }

    #[tokio::test]
    async fn login_limited_per_user_and_body_passed_through() {
        let (app, metrics) = test_app(true);
        let body = r#"{"type":"m.login.password","identifier":{"type":"m.id.user","user":"@Alice:hs"},"password":"p"}"#;
        for _ in 0..2 {
            let r = app
                .clone()
                .oneshot(req(Method::POST, "/_matrix/client/v3/login", body, None))
                .await
                .unwrap_or_else(|e| match e {});
            assert_eq!(r.status(), StatusCode::OK);
            let echoed = axum::body::to_bytes(r.into_body(), 4096).await;
            assert_eq!(echoed.ok().as_deref(), Some(body.as_bytes()));
        }
        let r = app
            .clone()
            .oneshot(req(Method::POST, "/_matrix/client/v3/login", body, None))
            .await
            .unwrap_or_else(|e| match e {});
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry: u64 = r.headers()["retry-after"]
            .to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        assert!(retry >= 1);
        let bytes = axum::body::to_bytes(r.into_body(), 4096)
            .await
            .unwrap_or_default();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        assert_eq!(json["errcode"], "M_LIMIT_EXCEEDED");
        assert!(json["retry_after_ms"].as_u64().unwrap_or(0) > 0);
        assert!(metrics
            .render()
            .contains("hushd_rate_limited_total{limit=\"login\"} 1"));
    }

    #[tokio::test]
    async fn send_limited_per_user_not_for_others_and_off_switch() {
        let (app, metrics) = test_app(true);
        let send = |user: &str| {
            req(
                Method::PUT,
                "/_matrix/client/v3/sendToDevice/m.x/t1",
                "{}",
                Some(user),
            )
        };
        for _ in 0..2 {
            let r = app
                .clone()
                .oneshot(send("@a:hs"))
                .await
                .unwrap_or_else(|e| match e {});
            assert_eq!(r.status(), StatusCode::OK);
        }
        let r = app
            .clone()
            .oneshot(send("@a:hs"))
            .await
            .unwrap_or_else(|e| match e {});
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        let r = app
            .clone()
            .oneshot(send("@b:hs"))
            .await
            .unwrap_or_else(|e| match e {});
        assert_eq!(r.status(), StatusCode::OK);
        let text = metrics.render();
        assert!(text.contains(
            "hushd_http_requests_total{route=\"/_matrix/client/v3/sendToDevice/{t}/{txn}\",method=\"PUT\",status=\"429\"} 1"
        ));
        let (off, _) = test_app(false);
        for _ in 0..5 {
            let r = off
                .clone()
                .oneshot(send("@a:hs"))
                .await
                .unwrap_or_else(|e| match e {});
            assert_eq!(r.status(), StatusCode::OK);
        }
    }

    struct Counting(std::sync::atomic::AtomicUsize);
    impl UserLookup for Counting {
        fn user_for_request<'a>(
            &'a self,
            _parts: &'a http::request::Parts,
        ) -> BoxFuture<'a, Option<String>> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Box::pin(async { Some("@c:hs".to_owned()) })
        }
    }

    #[tokio::test]
    async fn token_lookups_are_cached_per_header() {
        let lookups = Arc::new(Counting(Default::default()));
        let ops = Ops {
            metrics: Arc::new(Metrics::new()),
            limiter: Arc::new(RateLimiter::new(&RateLimits::default())),
            users: lookups.clone(),
            trust_forwarded_for: false,
            max_body: 1024,
            user_cache: UserCache::default(),
        };
        let now = Instant::now();
        let parts = |token: &str| req(Method::PUT, "/x", "", Some(token)).into_parts().0;
        for _ in 0..3 {
            assert_eq!(
                request_user(&ops, &parts("t1"), now).await.as_deref(),
                Some("@c:hs")
            );
        }
        assert_eq!(lookups.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        let _ = request_user(&ops, &parts("t2"), now).await;
        assert_eq!(lookups.0.load(std::sync::atomic::Ordering::SeqCst), 2);
        // After the TTL the lookup is repeated.
        let _ = request_user(&ops, &parts("t1"), now + USER_CACHE_TTL).await;
        assert_eq!(lookups.0.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[test]
    fn login_names() {
        assert_eq!(
            login_name(br#"{"identifier":{"user":"@Bob:x.org"}}"#).as_deref(),
            Some("bob")
        );
        assert_eq!(login_name(br#"{"user":"carol"}"#).as_deref(), Some("carol"));
        assert_eq!(login_name(b"not json"), None);
    }
}
