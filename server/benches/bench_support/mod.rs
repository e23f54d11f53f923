//! Helpers shared by the benches that drive a real `hushd` over loopback HTTP/1.1
//! (`throughput`, `load`): a small client for register/login/sendToDevice/sync, process memory
//! from `/proc`, percentiles and environment knobs.
#![allow(dead_code)]

use std::time::Duration;

use serde_json::{json, Value};

use crate::ops_support::TestResult;

/// A logged-in device.
#[derive(Clone)]
pub struct Account {
    /// Full user ID.
    pub user_id: String,
    /// Device ID.
    pub device_id: String,
    /// Access token.
    pub token: String,
}

impl Account {
    /// Reads the account from a register or login answer (`what` names the call in errors).
    fn from_login_body(body: &Value, what: &str) -> TestResult<Account> {
        let field = |k: &str| {
            body[k]
                .as_str()
                .map(str::to_owned)
                .ok_or(format!("{what}: {body}"))
        };
        Ok(Account {
            user_id: field("user_id")?,
            device_id: field("device_id")?,
            token: field("access_token")?,
        })
    }
}

/// One HTTP/1.1 keep-alive connection to `hushd`, driven by hyper directly (no pool, redirect
/// or timeout layers): the send phases use one per sender so that the client's own CPU cost
/// per request stays small next to the server's (both share the machine).
pub struct Conn {
    sender: hyper::client::conn::http1::SendRequest<String>,
    authority: String,
}

impl Conn {
    /// Connects to `base` (`http://HOST:PORT`).
    pub async fn open(base: &str) -> TestResult<Conn> {
        let authority = base
            .strip_prefix("http://")
            .ok_or("the bench connects over plain HTTP")?
            .trim_end_matches('/')
            .to_owned();
        let stream = tokio::net::TcpStream::connect(&authority).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        // Runs the connection until `sender` is dropped.
        tokio::spawn(connection);
        Ok(Conn { sender, authority })
    }

    /// One sendToDevice request: `content` to `device` of `to` (`*` = all its devices); an
    /// answer other than 200 is an error.
    pub async fn send(
        &mut self,
        from: &Account,
        txn: &str,
        to: &str,
        device: &str,
        content: &Value,
    ) -> TestResult {
        use http_body_util::BodyExt as _;
        let body = serde_json::to_string(&json!({"messages": {to: {device: content}}}))?;
        let request = http::Request::put(format!("/_matrix/client/v3/sendToDevice/m.bench/{txn}"))
            .header(http::header::HOST, &self.authority)
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", from.token),
            )
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body)?;
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let answer = response.into_body().collect().await?.to_bytes();
        if status != http::StatusCode::OK {
            return Err(format!("send: {status} {}", String::from_utf8_lossy(&answer)).into());
        }
        Ok(())
    }
}

/// An HTTP client bound to one `hushd`.
pub struct Bench {
    /// The keep-alive client.
    pub http: reqwest::Client,
    /// Base URL of the server.
    pub base: String,
}

impl Bench {
    /// Registers `name` (open registration, `m.login.dummy`).
    pub async fn register(&self, name: &str) -> TestResult<Account> {
        let body: Value = self
            .http
            .post(format!("{}/_matrix/client/v3/register", self.base))
            .json(&json!({"username": name, "password": "bench password", "auth": {"type": "m.login.dummy"}}))
            .send()
            .await?
            .json()
            .await?;
        Account::from_login_body(&body, "register")
    }

    /// Logs in as `name` with the bench password (a new device).
    pub async fn login(&self, name: &str) -> TestResult<Account> {
        let body: Value = self
            .http
            .post(format!("{}/_matrix/client/v3/login", self.base))
            .json(&json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": name}, "password": "bench password"}))
            .send()
            .await?
            .json()
            .await?;
        Account::from_login_body(&body, "login")
    }

    /// One sendToDevice request: `content` to `device` of `to` (`*` = all its devices).
    pub async fn send(
        &self,
        from: &Account,
        txn: &str,
        to: &str,
        device: &str,
        content: Value,
    ) -> TestResult {
        let resp = self
            .http
            .put(format!(
                "{}/_matrix/client/v3/sendToDevice/m.bench/{txn}",
                self.base
            ))
            .bearer_auth(&from.token)
            .json(&json!({"messages": {to: {device: content}}}))
            .send()
            .await?;
        if resp.status() != 200 {
            return Err(format!("send: {} {}", resp.status(), resp.text().await?).into());
        }
        Ok(())
    }

    /// One /sync: `(next_batch, number of to-device events, the events)`.
    pub async fn sync(
        &self,
        who: &Account,
        since: Option<&str>,
        timeout_ms: u64,
    ) -> TestResult<(String, Vec<Value>)> {
        let mut url = format!("{}/_matrix/client/v3/sync?timeout={timeout_ms}", self.base);
        if let Some(since) = since {
            url.push_str("&since=");
            url.push_str(since);
        }
        let body: Value = self
            .http
            .get(url)
            .bearer_auth(&who.token)
            .send()
            .await?
            .json()
            .await?;
        let next = body["next_batch"]
            .as_str()
            .ok_or(format!("sync: {body}"))?
            .to_owned();
        let events = body["to_device"]["events"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        Ok((next, events))
    }
}

/// `(VmRSS, VmHWM)` of a process in MB.
pub fn memory_mb(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Clock ticks per second of `/proc/PID/stat` times (`USER_HZ`, 100 on every Linux ABI).
const USER_HZ: u64 = 100;

/// CPU time (user + system, all threads) a process has used so far, from `/proc/PID/stat`
/// (zero if it cannot be read). Resolution: one clock tick (10 ms).
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis,
    // where field 3 (state) has index 0, utime (field 14) index 11 and stime (15) index 12.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: u64 = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse::<u64>().ok())
        .sum();
    Duration::from_micros(ticks * 1_000_000 / USER_HZ)
}

/// CPU time used by `hushd` and by the bench process itself over one phase.
pub struct CpuMeter {
    pid: u32,
    server: Duration,
    client: Duration,
}

impl CpuMeter {
    /// Starts measuring `hushd` (process `pid`) and this process.
    pub fn start(pid: u32) -> CpuMeter {
        CpuMeter {
            pid,
            server: cpu_time(pid),
            client: cpu_time(std::process::id()),
        }
    }

    /// `(hushd, bench client)` CPU microseconds per item over `items` items since the start.
    pub fn per_item_us(&self, items: usize) -> (f64, f64) {
        let n = items.max(1) as f64;
        let server = cpu_time(self.pid).saturating_sub(self.server);
        let client = cpu_time(std::process::id()).saturating_sub(self.client);
        (
            server.as_secs_f64() * 1e6 / n,
            client.as_secs_f64() * 1e6 / n,
        )
    }
}

/// Prints the memory of hushd after a phase (to standard error, as a diagnostic).
pub fn phase_done(pid: u32, phase: &str) {
    let (rss, hwm) = memory_mb(pid);
    eprintln!("  {phase:<28} hushd RSS {rss:7.1} MB, peak {hwm:7.1} MB");
}

/// `name` from the environment as a number, else `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The `p` quantile (0..=1) of sorted durations (zero when empty).
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}
