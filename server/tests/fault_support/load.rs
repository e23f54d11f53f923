//! Client load for fault tests: senders that keep sending to-device messages (retrying each
//! `txnId` until it gets a 200, as a real client does), sync loops that keep long-polling through
//! outages, and the exactly-once, in-order check.
//!
//! Clients hold only a base URL and a token, never a [`TestServer`], so a test can kill and
//! restart servers while they run.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::task::JoinHandle;

use crate::fed_common::{TestServer, TestUser};

/// Password of every user [`TestServer::register`] makes.
const PASSWORD: &str = "correct horse battery staple";

/// Where a client talks to: one server, or several processes of one server (a client then
/// moves to the next process when one does not answer, as behind a load balancer).
#[derive(Clone)]
pub struct Endpoint {
    http: reqwest::Client,
    bases: Arc<Vec<String>>,
    current: Arc<AtomicUsize>,
}

impl Endpoint {
    /// The client API of `server` (survives restarts: same address).
    pub fn of(server: &TestServer) -> Endpoint {
        Endpoint::over(server.http.clone(), vec![server.base.clone()], 0)
    }

    /// Several `https://IP:PORT` bases of one server, starting with `bases[first]`.
    pub fn over(http: reqwest::Client, bases: Vec<String>, first: usize) -> Endpoint {
        Endpoint {
            http,
            bases: Arc::new(bases),
            current: Arc::new(AtomicUsize::new(first)),
        }
    }

    /// The base URL in use.
    pub fn base(&self) -> &str {
        &self.bases[self.current.load(Ordering::Relaxed) % self.bases.len()]
    }

    /// Moves to the next base (after a transport failure).
    fn fail_over(&self) {
        self.current.fetch_add(1, Ordering::Relaxed);
    }
}

/// A device logged in on a server.
#[derive(Clone)]
pub struct Device {
    /// Where its server is.
    pub endpoint: Endpoint,
    /// Its user and token.
    pub user: TestUser,
}

/// Registers `name` on `server`.
pub async fn register(server: &TestServer, name: &str) -> Device {
    Device {
        endpoint: Endpoint::of(server),
        user: server.register(name).await,
    }
}

/// Logs `user` in again: a second device of the same user.
pub async fn login(server: &TestServer, user: &TestUser) -> Device {
    let localpart = user
        .user_id
        .trim_start_matches('@')
        .split(':')
        .next()
        .unwrap();
    let resp = server
        .http
        .post(format!("{}/_matrix/client/v3/login", server.base))
        .json(&json!({
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": localpart},
            "password": PASSWORD,
        }))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    let body: Value = resp.json().await.unwrap();
    Device {
        endpoint: Endpoint::of(server),
        user: TestUser {
            user_id: body["user_id"].as_str().unwrap().to_owned(),
            device_id: body["device_id"].as_str().unwrap().to_owned(),
            token: body["access_token"].as_str().unwrap().to_owned(),
        },
    }
}

/// One failed attempt as the client saw it.
#[derive(Debug, Clone)]
pub enum Failure {
    /// No HTTP answer (connection refused or reset, timeout).
    Transport(String),
    /// An HTTP answer other than 200: status and body (`Value::Null` if not JSON).
    Http(u16, Value),
}

impl Failure {
    /// A failure is acceptable during an outage if nothing answered, or if the answer is a
    /// Matrix-shaped server error (5xx with a JSON `errcode`).
    pub fn is_retryable_shape(&self) -> bool {
        match self {
            Failure::Transport(_) => true,
            Failure::Http(status, body) => {
                (500..600).contains(status) && body["errcode"].as_str().is_some()
            }
        }
    }
}

/// A sender's outcome.
#[derive(Debug, Default)]
pub struct SendReport {
    /// Sequence numbers that got a 200, in order.
    pub acked: Vec<u64>,
    /// Every failed attempt.
    pub failures: Vec<Failure>,
}

/// A device sending to-device messages `{"seq": n, "dev": DEVICE}` one at a time to every
/// `(user, device)` target until told to stop. Each `txnId` is retried until it gets a 200.
pub struct SendLoop {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    task: JoinHandle<SendReport>,
    /// Who sends.
    pub from: TestUser,
}

impl SendLoop {
    /// Starts sending, one message every `pace` (plus the request time).
    pub fn start(from: &Device, targets: &[TestUser], pace: Duration) -> SendLoop {
        Self::start_limited(from, targets, pace, u64::MAX)
    }

    /// Like [`SendLoop::start`] but stops by itself after `limit` messages.
    pub fn start_limited(
        from: &Device,
        targets: &[TestUser],
        pace: Duration,
        limit: u64,
    ) -> SendLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let device = from.clone();
        let targets: Vec<TestUser> = targets.to_vec();
        let task = tokio::spawn({
            let stop = stop.clone();
            let sent = sent.clone();
            async move {
                let mut report = SendReport::default();
                let mut seq = 0;
                while !stop.load(Ordering::Relaxed) && seq < limit {
                    seq += 1;
                    send_until_ok(&device, &targets, seq, &mut report).await;
                    report.acked.push(seq);
                    sent.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(pace).await;
                }
                report
            }
        });
        SendLoop {
            stop,
            sent,
            task,
            from: from.user.clone(),
        }
    }

    /// Messages acknowledged so far.
    pub fn sent(&self) -> usize {
        self.sent.load(Ordering::Relaxed)
    }

    /// Waits until at least `n` messages were acknowledged.
    pub async fn wait_sent(&self, n: usize, wait: Duration) {
        let deadline = Instant::now() + wait;
        while self.sent() < n {
            assert!(Instant::now() < deadline, "only {} sent", self.sent());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops after the message in progress gets its 200; returns the report.
    pub async fn finish(self) -> SendReport {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// `PUT sendToDevice/m.test/f{seq}` until 200 (at most two minutes: a server that never
/// recovers fails the test).
async fn send_until_ok(device: &Device, targets: &[TestUser], seq: u64, report: &mut SendReport) {
    let mut messages = serde_json::Map::new();
    for target in targets {
        let per_user = messages
            .entry(target.user_id.clone())
            .or_insert_with(|| json!({}));
        per_user[&target.device_id] = json!({"seq": seq, "dev": device.user.device_id});
    }
    let body = json!({ "messages": messages });
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let url = format!(
            "{}/_matrix/client/v3/sendToDevice/m.test/f{seq}",
            device.endpoint.base()
        );
        let result = device
            .endpoint
            .http
            .put(&url)
            .bearer_auth(&device.user.token)
            .json(&body)
            .send()
            .await;
        match result {
            Ok(resp) if resp.status().as_u16() == 200 => return,
            Ok(resp) => {
                let status = resp.status().as_u16();
                let body = resp.json().await.unwrap_or(Value::Null);
                report.failures.push(Failure::Http(status, body));
            }
            Err(e) => {
                device.endpoint.fail_over();
                report.failures.push(Failure::Transport(e.to_string()));
            }
        }
        assert!(
            Instant::now() < deadline,
            "message {seq} never accepted: {:?}",
            report.failures.last()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A device long-polling `/sync` through outages, keeping every to-device event in arrival
/// order and acknowledging each batch by passing its `next_batch` as the next `since`.
pub struct SyncLoop {
    stop: Arc<AtomicBool>,
    events: Arc<Mutex<Vec<Value>>>,
    failures: Arc<Mutex<Vec<Failure>>>,
    task: JoinHandle<()>,
}

impl SyncLoop {
    /// Starts syncing.
    pub fn start(device: &Device) -> SyncLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let events = Arc::new(Mutex::new(Vec::new()));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let device = device.clone();
        let task = tokio::spawn({
            let (stop, events, failures) = (stop.clone(), events.clone(), failures.clone());
            async move {
                let mut since: Option<String> = None;
                loop {
                    // One more round after the stop: anything still there would be a duplicate.
                    let last = stop.load(Ordering::Relaxed);
                    match sync_once(&device, since.as_deref(), if last { 500 } else { 1000 }).await
                    {
                        Ok((batch, next)) => {
                            events.lock().unwrap().extend(batch);
                            since = Some(next);
                            if last {
                                return;
                            }
                        }
                        Err(failure) => {
                            failures.lock().unwrap().push(failure);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }
        });
        SyncLoop {
            stop,
            events,
            failures,
            task,
        }
    }

    /// Events received so far.
    pub fn received(&self) -> usize {
        self.events.lock().unwrap().len()
    }

    /// Waits until at least `n` events arrived or `wait` passed.
    pub async fn wait_for(&self, n: usize, wait: Duration) {
        let deadline = Instant::now() + wait;
        while self.received() < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops after one last sync and returns `(events, failures)`.
    pub async fn finish(self) -> (Vec<Value>, Vec<Failure>) {
        self.stop.store(true, Ordering::Relaxed);
        // The loop may be retrying against a dead server: bound the wait.
        let _ = tokio::time::timeout(Duration::from_secs(60), self.task).await;
        let events = std::mem::take(&mut *self.events.lock().unwrap());
        let failures = std::mem::take(&mut *self.failures.lock().unwrap());
        (events, failures)
    }
}

async fn sync_once(
    device: &Device,
    since: Option<&str>,
    timeout_ms: u64,
) -> Result<(Vec<Value>, String), Failure> {
    let mut url = format!(
        "{}/_matrix/client/v3/sync?timeout={timeout_ms}",
        device.endpoint.base()
    );
    if let Some(since) = since {
        url.push_str(&format!("&since={since}"));
    }
    let resp = device
        .endpoint
        .http
        .get(&url)
        .bearer_auth(&device.user.token)
        .send()
        .await
        .map_err(|e| {
            device.endpoint.fail_over();
            Failure::Transport(e.to_string())
        })?;
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    if status != 200 {
        return Err(Failure::Http(status, body));
    }
    let events = body["to_device"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let next = body["next_batch"]
        .as_str()
        .ok_or_else(|| Failure::Http(status, body.clone()))?
        .to_owned();
    Ok((events, next))
}

/// Asserts that `events` (in arrival order) hold, for each sender device, exactly the
/// acknowledged sequence numbers of its report, each once, in sending order.
pub fn assert_exactly_once_in_order(who: &str, events: &[Value], senders: &[(&TestUser, &[u64])]) {
    let mut got: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
    for event in events {
        assert_eq!(event["type"], "m.test", "{who}: unexpected event {event}");
        let key = (
            event["sender"].as_str().unwrap_or_default().to_owned(),
            event["content"]["dev"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
        got.entry(key)
            .or_default()
            .push(event["content"]["seq"].as_u64().unwrap());
    }
    for (sender, acked) in senders {
        let key = (sender.user_id.clone(), sender.device_id.clone());
        let arrived = got.remove(&key).unwrap_or_default();
        if arrived != *acked {
            let mut seen = std::collections::BTreeSet::new();
            let dups: Vec<u64> = arrived
                .iter()
                .filter(|s| !seen.insert(**s))
                .copied()
                .collect();
            let missing: Vec<u64> = acked
                .iter()
                .filter(|s| !seen.contains(s))
                .copied()
                .collect();
            panic!(
                "{who}: from {}/{}: {} acknowledged, {} arrived; missing {missing:?}, \
                 duplicated {dups:?}, in order: {}",
                sender.user_id,
                sender.device_id,
                acked.len(),
                arrived.len(),
                arrived.windows(2).all(|w| w[0] < w[1]),
            );
        }
    }
    assert!(
        got.is_empty(),
        "{who}: events from unknown senders: {got:?}"
    );
}

/// `(retries, backlog)` of `destination` in `hushd admin federation list` (`None` when not
/// listed, which means nothing is queued).
pub fn queue_state(server: &TestServer, destination: &str) -> Option<(i64, i64)> {
    let out = server.hushd(&["admin", "federation", "list"]);
    assert!(
        out.status.success(),
        "admin federation list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text.lines().find(|l| l.starts_with(destination))?;
    let field = |name: &str| -> i64 {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(name))
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1)
    };
    Some((field("retries="), field("backlog=")))
}

/// Waits until `server`'s queue for `destination` is empty (panics after `wait`).
pub async fn assert_queue_drains(server: &TestServer, destination: &str, wait: Duration) {
    let deadline = Instant::now() + wait;
    loop {
        let state = queue_state(server, destination);
        if state.is_none_or(|(_, backlog)| backlog == 0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "queue for {destination} did not drain: {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A `[federation] servers` entry pinning `name` to `url`.
pub fn pin(name: &str, url: &str) -> String {
    format!("servers = [{{ name = \"{name}\", url = \"{url}\" }}]\n")
}

/// The socket address of a running server (`IP:PORT` is its name).
pub fn addr_of(server: &TestServer) -> std::net::SocketAddr {
    server.name.parse().unwrap()
}
