//! Several `hushd` processes of ONE homeserver on one PostgreSQL database.
//!
//! Every process of a [`Cluster`] has its own listen address but the same `server_name` (the
//! address of process 0), the same signing key file and the same `database_url`; clients talk
//! to processes directly (no proxy). Uses the test CA of `fed_common`.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::fed_common::{fresh_postgres, TestCa, TestUser, FAST_FEDERATION};
use hush_testkit::net::free_port;

/// The loopback address the cluster listens on.
pub const CLUSTER_IP: &str = "127.0.0.1";

/// One process of the cluster.
pub struct Proc {
    /// `https://IP:PORT` of this process.
    pub base: String,
    config_path: PathBuf,
    log_path: PathBuf,
    http: reqwest::Client,
    child: Option<Child>,
}

/// Several processes of one homeserver sharing a PostgreSQL database.
pub struct Cluster {
    /// The shared server name (`IP:PORT` of process 0).
    pub name: String,
    /// The processes.
    pub procs: Vec<Proc>,
    /// The shared database.
    pub database_url: String,
    /// An HTTPS client trusting the test CA with room for long-polls (60 s timeout).
    pub long_poll_client: reqwest::Client,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts `n` processes on a fresh PostgreSQL database.
    pub async fn start(ca: &TestCa, n: usize) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<u16> = (0..n).map(|_| free_port(CLUSTER_IP)).collect();
        let name = format!("{CLUSTER_IP}:{}", ports[0]);
        let (cert, key) = ca.issue(CLUSTER_IP, dir.path());
        let database_url = fresh_postgres().await;
        let signing_key = dir.path().join("signing.key");
        hush_federation::keys::ServerSigningKey::generate_random_version()
            .save(&signing_key)
            .unwrap();
        let mut procs = Vec::new();
        for (i, port) in ports.iter().enumerate() {
            let config = format!(
                r#"server_name = "{name}"
listen = ["{CLUSTER_IP}:{port}"]
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
{FAST_FEDERATION}
"#,
                signing = signing_key.display(),
                cert = cert.display(),
                key = key.display(),
                ca = ca.pem_path.display(),
            );
            let config_path = dir.path().join(format!("hushd{i}.toml"));
            std::fs::write(&config_path, config).unwrap();
            procs.push(Proc {
                base: format!("https://{CLUSTER_IP}:{port}"),
                config_path,
                log_path: dir.path().join(format!("hushd{i}.log")),
                http: ca.client(),
                child: None,
            });
        }
        // One after the other: the first one runs the migrations.
        for proc in &mut procs {
            proc.launch().await;
        }
        let pem = std::fs::read(&ca.pem_path).unwrap();
        let long_poll_client = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        Cluster {
            name,
            procs,
            database_url,
            long_poll_client,
            dir,
        }
    }
}

impl Proc {
    /// Starts the process and waits until it answers.
    pub async fn launch(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
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
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let url = format!("{}/_matrix/client/versions", self.base);
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

    /// The process's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Whether the process is running (not killed by the test).
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the process with SIGKILL (no clean-up, its database sessions just vanish).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Registers `name` (password `correct horse battery staple`) on this process.
    pub async fn register(&self, name: &str) -> TestUser {
        let (status, body) = self
            .request(
                None,
                reqwest::Method::POST,
                "/_matrix/client/v3/register",
                Some(json!({
                    "username": name,
                    "password": "correct horse battery staple",
                    "auth": {"type": "m.login.dummy"},
                })),
            )
            .await;
        assert_eq!(status, 200, "register {name}: {body}");
        user_from(&body)
    }

    /// Logs `name` in on this process (a new device).
    pub async fn login(&self, name: &str) -> TestUser {
        let (status, body) = self
            .request(
                None,
                reqwest::Method::POST,
                "/_matrix/client/v3/login",
                Some(json!({
                    "type": "m.login.password",
                    "identifier": {"type": "m.id.user", "user": name},
                    "password": "correct horse battery staple",
                })),
            )
            .await;
        assert_eq!(status, 200, "login {name}: {body}");
        user_from(&body)
    }

    /// One request (authenticated when `user` is given); returns `(status, body)`.
    pub async fn request(
        &self,
        user: Option<&TestUser>,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(user) = user {
            req = req.bearer_auth(&user.token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// `PUT sendToDevice/m.test/{txn}`; returns the status.
    pub async fn send_to_device(&self, user: &TestUser, txn: &str, messages: Value) -> u16 {
        let (status, body) = self
            .request(
                Some(user),
                reqwest::Method::PUT,
                &format!("/_matrix/client/v3/sendToDevice/m.test/{txn}"),
                Some(json!({ "messages": messages })),
            )
            .await;
        assert!(status == 200, "sendToDevice {txn}: {status} {body}");
        status
    }

    /// One `/sync`; returns the whole answer.
    pub async fn sync(&self, user: &TestUser, since: Option<&str>, timeout_ms: u64) -> Value {
        let mut path = format!("/_matrix/client/v3/sync?timeout={timeout_ms}");
        if let Some(since) = since {
            path.push_str(&format!("&since={since}"));
        }
        let (status, body) = self
            .request(Some(user), reqwest::Method::GET, &path, None)
            .await;
        assert_eq!(status, 200, "sync: {body}");
        body
    }

    /// The `hushd_sync_waiting` gauge of this process.
    pub async fn waiting_syncs(&self) -> u64 {
        let resp = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap();
        let text = resp.text().await.unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("hushd_sync_waiting "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Waits until at least `n` syncs are long-polling on this process.
    pub async fn wait_for_waiting_syncs(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.waiting_syncs().await < n {
            assert!(Instant::now() < deadline, "no sync is waiting");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn user_from(body: &Value) -> TestUser {
    TestUser {
        user_id: body["user_id"].as_str().unwrap().to_owned(),
        device_id: body["device_id"].as_str().unwrap().to_owned(),
        token: body["access_token"].as_str().unwrap().to_owned(),
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The to-device events of a sync answer.
pub fn events(answer: &Value) -> Vec<Value> {
    answer["to_device"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The `next_batch` of a sync answer.
pub fn next_batch(answer: &Value) -> String {
    answer["next_batch"].as_str().unwrap_or_default().to_owned()
}
