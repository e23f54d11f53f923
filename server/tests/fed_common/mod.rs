//! Multi-server test harness: a test CA made with rcgen, real `hushd` processes on their own
//! loopback addresses speaking HTTPS, and small client helpers.
//!
//! Each server is named `IP:PORT` (an IP literal, so no discovery is needed), gets a certificate
//! for its IP signed by the test CA, and trusts that CA through `[federation] ca_files`.
//! Databases: SQLite in the server's temporary directory, or a fresh PostgreSQL database with a
//! unique name on 127.0.0.1:5432.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub use hush_testkit::ca::TestCa;
use hush_testkit::net::free_port;

/// Which database a server uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    /// SQLite in the server's directory.
    Sqlite,
    /// A fresh PostgreSQL database.
    Postgres,
}

/// Creates a fresh PostgreSQL database and returns its URL. It outlives the test (servers may
/// still use it while the test ends); the next test process drops it (`hush_testkit::pg`).
pub async fn fresh_postgres() -> String {
    hush_testkit::pg::PgTestDb::create("fed").await.persist()
}

/// A registered user with a logged-in device.
#[derive(Debug, Clone)]
pub struct TestUser {
    /// Full user ID.
    pub user_id: String,
    /// Device ID.
    pub device_id: String,
    /// Access token.
    pub token: String,
}

/// One running (or stopped) `hushd`.
pub struct TestServer {
    /// Server name, `IP:PORT`.
    pub name: String,
    /// `https://IP:PORT`.
    pub base: String,
    /// Working directory (config, key, SQLite database, log).
    pub dir: tempfile::TempDir,
    /// The config file.
    pub config_path: PathBuf,
    /// Client trusting the test CA.
    pub http: reqwest::Client,
    child: Option<Child>,
}

/// Federation settings for fast tests: short backoffs, quick polling.
pub const FAST_FEDERATION: &str =
    "retry_min_ms = 200\nretry_max_ms = 1000\npoll_interval_ms = 20\n";

impl TestServer {
    /// Writes a config for `ip` and starts the server; `federation_extra` is appended to the
    /// `[federation]` section.
    pub async fn start(ca: &TestCa, ip: &str, db: Db, federation_extra: &str) -> TestServer {
        Self::start_with(ca, ip, db, federation_extra, "").await
    }

    /// Like [`TestServer::start`] with `sections` (whole TOML sections such as `[limits]`)
    /// appended after `[federation]`.
    pub async fn start_with(
        ca: &TestCa,
        ip: &str,
        db: Db,
        federation_extra: &str,
        sections: &str,
    ) -> TestServer {
        let database_url = match db {
            Db::Sqlite => None,
            Db::Postgres => Some(fresh_postgres().await),
        };
        Self::start_on(ca, ip, database_url, federation_extra, sections).await
    }

    /// Like [`TestServer::start_with`] on the database at `database_url` (`None`: SQLite in the
    /// server's directory).
    pub async fn start_on(
        ca: &TestCa,
        ip: &str,
        database_url: Option<String>,
        federation_extra: &str,
        sections: &str,
    ) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port(ip);
        let name = format!("{ip}:{port}");
        let (cert, key) = ca.issue(ip, dir.path());
        let database_url = database_url
            .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("hushd.db").display()));
        let signing_key = dir.path().join("signing.key");
        hush_federation::keys::ServerSigningKey::generate_random_version()
            .save(&signing_key)
            .unwrap();
        let config = format!(
            r#"server_name = "{name}"
listen = ["{ip}:{port}"]
database_url = "{database_url}"
registration = "open"
signing_key_path = "{signing}"
shutdown_grace_secs = 2

[tls]
cert = "{cert}"
key = "{key}"

[rate_limits]
enabled = false

[federation]
ca_files = ["{ca}"]
{fast}{federation_extra}
{sections}
"#,
            fast = FAST_FEDERATION
                .lines()
                .filter(|l| {
                    let key = l.split('=').next().unwrap_or_default().trim();
                    !federation_extra.contains(key)
                })
                .map(|l| format!("{l}\n"))
                .collect::<String>(),
            signing = signing_key.display(),
            cert = cert.display(),
            key = key.display(),
            ca = ca.pem_path.display(),
        );
        let config_path = dir.path().join("hushd.toml");
        std::fs::write(&config_path, config).unwrap();
        let mut server = TestServer {
            name,
            base: format!("https://{ip}:{port}"),
            dir,
            config_path,
            http: ca.client(),
            child: None,
        };
        server.launch().await;
        server
    }

    /// Starts the process (after [`TestServer::stop`] or [`TestServer::kill9`]) and waits until
    /// it answers.
    pub async fn launch(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("hushd.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_hushd"))
            .arg("--config")
            .arg(&self.config_path)
            .arg("serve")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let url = format!("{}/_matrix/federation/v1/version", self.base);
            if let Ok(resp) = self.http.get(&url).send().await {
                if resp.status().is_success() {
                    return;
                }
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("hushd exited with {status}; log:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "hushd did not start; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("hushd.log")).unwrap_or_default()
    }

    /// Stops the server gracefully (SIGTERM) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Kills the server with SIGKILL (no chance to clean up).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Runs `hushd --config CONFIG ARGS...` to completion.
    pub fn hushd(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_hushd"))
            .arg("--config")
            .arg(&self.config_path)
            .args(args)
            .output()
            .unwrap()
    }

    /// The server's signing key as the test can use it to forge requests.
    pub fn signing_key(&self) -> hush_federation::keys::ServerSigningKey {
        hush_federation::keys::ServerSigningKey::load(&self.dir.path().join("signing.key")).unwrap()
    }

    /// Registers `name` with a password and returns its first device.
    pub async fn register(&self, name: &str) -> TestUser {
        let resp = self
            .http
            .post(format!("{}/_matrix/client/v3/register", self.base))
            .json(&json!({
                "username": name,
                "password": "correct horse battery staple",
                "auth": {"type": "m.login.dummy"},
            }))
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let body: Value = resp.json().await.unwrap();
        assert!(status.is_success(), "register {name}: {status} {body}");
        TestUser {
            user_id: body["user_id"].as_str().unwrap().to_owned(),
            device_id: body["device_id"].as_str().unwrap().to_owned(),
            token: body["access_token"].as_str().unwrap().to_owned(),
        }
    }

    /// An authenticated client-API request; returns `(status, body)`.
    pub async fn call(
        &self,
        user: &TestUser,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&user.token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// `PUT sendToDevice` with `messages`; asserts 200.
    pub async fn send_to_device(&self, user: &TestUser, txn: &str, messages: Value) {
        let (status, body) = self
            .call(
                user,
                reqwest::Method::PUT,
                &format!("/_matrix/client/v3/sendToDevice/m.test/{txn}"),
                Some(json!({ "messages": messages })),
            )
            .await;
        assert_eq!(status, 200, "sendToDevice: {body}");
    }

    /// One `/sync`; returns the to-device events and `next_batch`.
    pub async fn sync(
        &self,
        user: &TestUser,
        since: Option<&str>,
        timeout_ms: u64,
    ) -> (Vec<Value>, String) {
        let mut path = format!("/_matrix/client/v3/sync?timeout={timeout_ms}");
        if let Some(since) = since {
            path.push_str(&format!("&since={since}"));
        }
        let (status, body) = self.call(user, reqwest::Method::GET, &path, None).await;
        assert_eq!(status, 200, "sync: {body}");
        let events = body["to_device"]["events"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        (
            events,
            body["next_batch"].as_str().unwrap_or_default().to_owned(),
        )
    }

    /// Syncs until `count` events arrived in total or `wait` passed; returns all events
    /// received (acknowledging each batch) and keeps going a little after reaching `count` so
    /// duplicates would show.
    pub async fn collect(&self, user: &TestUser, count: usize, wait: Duration) -> Vec<Value> {
        let deadline = Instant::now() + wait;
        let mut since: Option<String> = None;
        let mut all = Vec::new();
        loop {
            let (events, next) = self.sync(user, since.as_deref(), 200).await;
            all.extend(events);
            since = Some(next);
            if all.len() >= count {
                // One more round: anything left would be a duplicate.
                let (events, _) = self.sync(user, since.as_deref(), 300).await;
                all.extend(events);
                return all;
            }
            if Instant::now() > deadline {
                return all;
            }
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The `seq` field of every event's content.
pub fn seqs(events: &[Value]) -> Vec<u64> {
    let mut out: Vec<u64> = events
        .iter()
        .filter_map(|e| e["content"]["seq"].as_u64())
        .collect();
    out.sort_unstable();
    out
}

/// Sends a federation request to `target` as `origin`, signed with `key` over `destination`
/// (normally the target's name), with `header_destination` in the header. `key = None` sends no
/// Authorization header. Returns `(status, body)`.
#[allow(clippy::too_many_arguments)]
pub async fn federation_request(
    target: &TestServer,
    origin: &str,
    key: Option<&hush_federation::keys::ServerSigningKey>,
    destination: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut req = target
        .http
        .request(method.clone(), format!("{}{path}", target.base));
    if let Some(key) = key {
        let origin = hush_federation::ids::ServerName::parse(origin).unwrap();
        let destination = hush_federation::ids::ServerName::parse(destination).unwrap();
        let auth = hush_federation::xmatrix::sign_request(
            key,
            &origin,
            &destination,
            method.as_str(),
            path,
            body,
        )
        .unwrap();
        req = req.header("Authorization", auth.to_header_value());
    }
    if let Some(body) = body {
        req = req.json(body);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// A transaction body from `origin` with one `m.direct_to_device` EDU by `sender` to every
/// device of `target_user`, carrying `{"seq": seq}`.
pub fn to_device_txn(origin: &str, sender: &str, target_user: &str, seq: u64) -> Value {
    json!({
        "origin": origin,
        "origin_server_ts": 1,
        "pdus": [],
        "edus": [{
            "edu_type": "m.direct_to_device",
            "content": {
                "sender": sender,
                "type": "m.test",
                "message_id": format!("forged{seq}"),
                "messages": {target_user: {"*": {"seq": seq}}},
            }
        }]
    })
}
