//! Test harness for the client-server API: starts a REAL `hushd` process (the binary built by
//! Cargo) on a free loopback port, on a fresh SQLite file or a fresh PostgreSQL database, and
//! talks to it over real HTTP with `reqwest`.
//!
//! * [`Backend`] picks the database; [`both_backends!`] turns one async test body into a
//!   `sqlite` and a `postgres` test.
//! * [`TestServer::start`] writes a `hushd.toml`, spawns `hushd --config ...`, and waits until
//!   `/versions` answers. [`TestServer::kill9`] and [`TestServer::restart`] crash and restart
//!   the same server on the same database. The process is killed and the database dropped when
//!   the value is dropped (also when a test panics).
//! * [`Client`] wraps one logged-in device with JSON helpers returning `(status, body)`.
//! * Debug aid: with `HUSH_API_TEST_INPROCESS=1` the router runs inside the test process instead
//!   of the binary (no ops middleware; "kill -9" drops its runtime). The default is the binary.
#![allow(dead_code, clippy::expect_used, clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Which database the server runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file in the server's temporary directory.
    Sqlite,
    /// A fresh PostgreSQL database `hush_test_<random>` (dropped afterwards).
    Postgres,
}

/// Runs one async test body on both backends: `both_backends!(name, |backend| async move {..})`.
#[macro_export]
macro_rules! both_backends {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                ($body)($crate::common::Backend::Sqlite).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                ($body)($crate::common::Backend::Postgres).await;
            }
        }
    };
}

/// A database created for one test: SQLite in the server's directory, or a fresh PostgreSQL
/// database dropped with this value.
struct Database {
    url: String,
    _pg: Option<hush_testkit::pg::PgTestDb>,
}

impl Database {
    async fn create(backend: Backend, dir: &std::path::Path) -> Database {
        match backend {
            Backend::Sqlite => Database {
                url: format!("sqlite://{}", dir.join("hushd.db").display()),
                _pg: None,
            },
            Backend::Postgres => {
                let db = hush_testkit::pg::PgTestDb::create("api").await;
                Database {
                    url: db.url.clone(),
                    _pg: Some(db),
                }
            }
        }
    }
}

/// Server options a test can change.
#[derive(Debug, Clone)]
pub struct Options {
    /// `open`, `token` or `closed`.
    pub registration: &'static str,
    /// `[limits]` entries as TOML lines (`key = value`).
    pub limits: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            registration: "open",
            limits: Vec::new(),
        }
    }
}

/// A running `hushd` on a fresh database.
pub struct TestServer {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The server name (`127.0.0.1:PORT`).
    pub server_name: String,
    /// Which backend it runs on.
    pub backend: Backend,
    /// HTTP client with keep-alive.
    pub http: reqwest::Client,
    child: Option<Child>,
    in_process: Option<InProcess>,
    config_path: PathBuf,
    log_path: PathBuf,
    db: Database,
    dir: tempfile::TempDir,
}

impl TestServer {
    /// Starts a server with default options (open registration).
    pub async fn start(backend: Backend) -> TestServer {
        TestServer::start_with(backend, Options::default()).await
    }

    /// Starts a server with the given options.
    pub async fn start_with(backend: Backend, options: Options) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = Database::create(backend, dir.path()).await;
        let port = hush_testkit::net::free_port("127.0.0.1");
        let server_name = format!("127.0.0.1:{port}");
        let config = format!(
            "server_name = \"{server_name}\"\n\
             listen = [\"127.0.0.1:{port}\"]\n\
             database_url = \"{db}\"\n\
             registration = \"{reg}\"\n\
             signing_key_path = \"{key}\"\n\
             shutdown_grace_secs = 1\n\
             [limits]\n{limits}\n\
             [rate_limits]\nenabled = false\n",
            db = db.url,
            reg = options.registration,
            key = dir.path().join("signing.key").display(),
            limits = options.limits.join("\n"),
        );
        hush_server::signing_key::generate(&dir.path().join("signing.key")).expect("signing key");
        let config_path = dir.path().join("hushd.toml");
        std::fs::write(&config_path, config).expect("write config");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .expect("http client");
        let mut server = TestServer {
            base: format!("http://{server_name}"),
            server_name,
            backend,
            http,
            child: None,
            in_process: None,
            log_path: dir.path().join("hushd.log"),
            config_path,
            db,
            dir,
        };
        server.spawn().await;
        server
    }

    async fn spawn(&mut self) {
        if std::env::var_os("HUSH_API_TEST_INPROCESS").is_some() {
            self.in_process = Some(InProcess::start(&self.config_path));
            self.wait_ready().await;
            return;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("log file");
        let log_err = log.try_clone().expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_hushd"))
            .arg("--config")
            .arg(&self.config_path)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .expect("spawn hushd");
        self.child = Some(child);
        self.wait_ready().await;
    }

    async fn wait_ready(&mut self) {
        let url = self.url("/_matrix/client/versions");
        for _ in 0..600 {
            if let Ok(resp) = self.http.get(&url).send().await {
                if resp.status() == StatusCode::OK {
                    return;
                }
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("hushd exited with {status}; log:\n{}", self.log());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("hushd did not become ready; log:\n{}", self.log());
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Kills the process with SIGKILL (no graceful shutdown) and waits for it.
    pub fn kill9(&mut self) {
        if let Some(server) = self.in_process.take() {
            server.crash();
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same database and port.
    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn().await;
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// `@localpart:server_name`.
    pub fn user_id(&self, localpart: &str) -> String {
        format!("@{localpart}:{}", self.server_name)
    }

    /// The database URL (tests may open the store directly, e.g. to issue tokens).
    pub fn database_url(&self) -> &str {
        &self.db.url
    }

    /// Sends a request without a token; returns `(status, JSON body or Null)`.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        send(self.http.request(method, self.url(path)), body).await
    }

    /// Registers `localpart` with `password` using the one-shot dummy auth.
    pub async fn register(&self, localpart: &str, password: &str) -> Client {
        let (status, body) = self
            .call(
                Method::POST,
                "/_matrix/client/v3/register",
                Some(json!({
                    "username": localpart,
                    "password": password,
                    "auth": {"type": "m.login.dummy"},
                })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "register {localpart}: {body}");
        self.client_from(&body)
    }

    /// Logs in with a password (optionally reusing a device ID).
    pub async fn login(&self, localpart: &str, password: &str, device_id: Option<&str>) -> Client {
        let mut req = json!({
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": localpart},
            "password": password,
        });
        if let Some(d) = device_id {
            req["device_id"] = json!(d);
        }
        let (status, body) = self
            .call(Method::POST, "/_matrix/client/v3/login", Some(req))
            .await;
        assert_eq!(status, StatusCode::OK, "login {localpart}: {body}");
        self.client_from(&body)
    }

    /// A [`Client`] from a login/register answer.
    pub fn client_from(&self, body: &Value) -> Client {
        Client {
            base: self.base.clone(),
            http: self.http.clone(),
            user_id: body["user_id"].as_str().expect("user_id").to_owned(),
            device_id: body["device_id"].as_str().expect("device_id").to_owned(),
            token: body["access_token"]
                .as_str()
                .expect("access_token")
                .to_owned(),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("--- hushd log ({:?}) ---\n{}", self.backend, self.log());
        }
    }
}

async fn send(req: reqwest::RequestBuilder, body: Option<Value>) -> (StatusCode, Value) {
    let req = match body {
        Some(b) => req.json(&b),
        None => req,
    };
    let resp = req.send().await.expect("request sent");
    let status = resp.status();
    let bytes = resp.bytes().await.expect("response body");
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, value)
}

/// One logged-in device.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
    /// Full user ID.
    pub user_id: String,
    /// Device ID.
    pub device_id: String,
    /// Access token.
    pub token: String,
}

impl Client {
    /// An authenticated request; returns `(status, JSON body or Null)`.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let req = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(&self.token);
        send(req, body).await
    }

    /// Like [`Client::call`] but returns `None` instead of panicking when the connection fails
    /// (the server may have been killed); only the status is returned.
    pub async fn try_call(&self, method: Method, path: &str, body: Value) -> Option<StatusCode> {
        let resp = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .ok()?;
        let status = resp.status();
        // Read the body so the answer is complete (a 200 whose body was cut off is not a 200).
        resp.bytes().await.ok()?;
        Some(status)
    }

    /// GET.
    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None).await
    }

    /// POST with a JSON body.
    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(body)).await
    }

    /// PUT with a JSON body.
    pub async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::PUT, path, Some(body)).await
    }

    /// `/sync` with optional `since` and `timeout` (ms); asserts 200.
    pub async fn sync(&self, since: Option<&str>, timeout_ms: u64) -> Value {
        let mut path = format!("/_matrix/client/v3/sync?timeout={timeout_ms}");
        if let Some(s) = since {
            path.push_str(&format!("&since={s}"));
        }
        let (status, body) = self.get(&path).await;
        assert_eq!(status, StatusCode::OK, "sync: {body}");
        body
    }

    /// Sends one to-device message per `(user, device)` target; asserts 200.
    pub async fn send_to_device(&self, event_type: &str, txn: &str, messages: Value) {
        let (status, body) = self
            .put(
                &format!("/_matrix/client/v3/sendToDevice/{event_type}/{txn}"),
                json!({ "messages": messages }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "sendToDevice: {body}");
    }
}

/// Signed-looking device keys for a client (the server does not verify signatures).
pub fn device_keys(client: &Client) -> Value {
    json!({
        "user_id": client.user_id,
        "device_id": client.device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "hush.x3dh.ratchet.v1"],
        "keys": {
            format!("curve25519:{}", client.device_id): format!("curve-{}", client.device_id),
            format!("ed25519:{}", client.device_id): format!("ed-{}", client.device_id),
        },
        "signatures": { client.user_id.clone(): {
            format!("ed25519:{}", client.device_id): "c2lnbmF0dXJl"
        }},
    })
}

/// A signed one-time key object with a recognisable key.
pub fn otk(key: &str) -> Value {
    json!({ "key": key, "signatures": {"@x:y": {"ed25519:D": "sig"}} })
}

/// Debug aid while the `hushd` binary is not wired yet (`HUSH_API_TEST_INPROCESS=1`): the API
/// router on its own runtime thread; "crashing" drops the runtime without any shutdown.
struct InProcess {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl InProcess {
    fn start(config_path: &std::path::Path) -> InProcess {
        let text = std::fs::read_to_string(config_path).expect("config");
        let config: hush_server::config::Config = toml::from_str(&text).expect("config parses");
        let (stop, stop_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.spawn(async move {
                let store = hush_server::store::Store::connect(&config.database_url)
                    .await
                    .expect("store");
                let addr = config.listen[0];
                let state = hush_server::state::AppState::new(std::sync::Arc::new(config), store)
                    .await
                    .expect("state");
                let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
                let _ = axum::serve(listener, hush_server::api::router(state)).await;
            });
            let _ = stop_rx.recv();
            rt.shutdown_background();
        });
        InProcess {
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn crash(mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
