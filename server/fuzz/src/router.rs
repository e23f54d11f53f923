//! Arbitrary bodies through the real client-server router (`hush_server::api::router`), in
//! process, on a temporary SQLite store: the keys endpoints (whose body checks live in
//! `service::keys`, next to the database calls) and sendToDevice, end to end.
//!
//! Compiled into the fuzz crate and, through `#[path]`, into `server/tests/parse_router.rs`.

// Assertions are the point of this file: a failed one is a fuzzing finding.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use hush_server::config::{Config, RegistrationMode};
use hush_server::state::AppState;
use hush_server::store::Store;
use serde_json::{json, Value};
use tower::ServiceExt as _;

/// The routes a fuzz input can pick with its first byte (all authenticated as one user).
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/_matrix/client/v3/keys/upload"),
    ("POST", "/_matrix/client/v3/keys/query"),
    ("POST", "/_matrix/client/v3/keys/claim"),
    ("PUT", "/_matrix/client/v3/sendToDevice/m.room.encrypted/"),
];

/// A router on its own SQLite database with one registered, logged-in user.
pub struct Harness {
    runtime: tokio::runtime::Runtime,
    router: Router,
    token: String,
    txn: AtomicU64,
    _state: AppState,
}

impl Harness {
    /// Starts a harness in a fresh directory under the system temporary directory.
    pub fn start() -> Harness {
        let dir = std::env::temp_dir().join(format!("hush-fuzz-router-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the harness directory");
        Harness::in_dir(&dir)
    }

    /// Starts a harness whose SQLite database lives in `dir`.
    pub fn in_dir(dir: &Path) -> Harness {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let db: PathBuf = dir.join("hushd.db");
        let config = Config {
            server_name: "b.example".to_owned(),
            database_url: format!("sqlite://{}", db.display()),
            registration: RegistrationMode::Open,
            ..Config::default()
        };
        let (router, state, token) = runtime.block_on(async {
            let store = Store::connect(&config.database_url)
                .await
                .expect("the SQLite store opens");
            let state = AppState::new(Arc::new(config), store)
                .await
                .expect("the state starts");
            let router = hush_server::api::router(state.clone());
            let mut token = String::new();
            for name in ["fuzz", "peer"] {
                let body = json!({"username": name, "auth": {"type": "m.login.dummy"}});
                let request = Request::builder()
                    .method(Method::POST)
                    .uri("/_matrix/client/v3/register")
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Body::from(body.to_string()))
                    .expect("a valid request");
                let response = router.clone().oneshot(request).await.expect("infallible");
                assert_eq!(response.status(), StatusCode::OK, "registration works");
                let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
                    .await
                    .expect("a body");
                let answer: Value = serde_json::from_slice(&bytes).expect("a JSON answer");
                if token.is_empty() {
                    token = answer["access_token"].as_str().expect("a token").to_owned();
                }
            }
            (router, state, token)
        });
        Harness {
            runtime,
            router,
            token,
            txn: AtomicU64::new(0),
            _state: state,
        }
    }

    /// Sends the body `data[1..]` to the route `data[0]` picks and checks the answer: never a
    /// 5xx, and every error is a Matrix error body (`errcode` `M_*`).
    pub fn run(&self, data: &[u8]) {
        let Some((&selector, body)) = data.split_first() else {
            return;
        };
        let (method, path) = ROUTES[usize::from(selector) % ROUTES.len()];
        let mut uri = path.to_owned();
        if uri.ends_with('/') {
            uri.push_str(&format!("t{}", self.txn.fetch_add(1, Ordering::Relaxed)));
        }
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_vec()))
            .expect("a valid request");
        self.runtime.block_on(async {
            let response = self
                .router
                .clone()
                .oneshot(request)
                .await
                .expect("infallible");
            let status = response.status();
            let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .expect("a body");
            assert!(
                !status.is_server_error(),
                "{method} {path} answered {status}: {}",
                String::from_utf8_lossy(&bytes)
            );
            if !status.is_success() {
                let answer: Value = serde_json::from_slice(&bytes).expect("a JSON error body");
                let errcode = answer["errcode"].as_str().unwrap_or_default();
                assert!(
                    errcode.starts_with("M_"),
                    "{status} without errcode: {answer}"
                );
            }
        });
    }
}
