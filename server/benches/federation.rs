//! Federation throughput: 16 concurrent senders on server A send to-device messages to 16 users
//! on server B over HTTPS; measures messages per second end to end (from the first send until
//! every message has been synced by its recipient on B) and the mean EDUs per transaction.
//!
//! Run with `cargo bench -p hush-server --bench federation`. `HUSH_BENCH_REQUESTS` sets the
//! requests per sender (default 100; each request carries one message for each of the 16
//! recipients), `HUSH_BENCH_DB=postgres` runs both servers on PostgreSQL.
//!
//! Besides the rate it prints the load average before and after (figures taken on a busy
//! machine are lower bounds) and the CPU time (user + system, from `/proc/PID/stat`) each
//! `hushd` process spent during the run, per message.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/fed_common/mod.rs"]
mod fed_common;

use std::time::{Duration, Instant};

use fed_common::{Db, TestCa, TestServer, TestUser};
use serde_json::{json, Map, Value};

const SENDERS: usize = 16;
const RECIPIENTS: usize = 16;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run());
}

async fn run() {
    let requests: usize = std::env::var("HUSH_BENCH_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let db = match std::env::var("HUSH_BENCH_DB").as_deref() {
        Ok("postgres") => Db::Postgres,
        _ => Db::Sqlite,
    };
    let ca = TestCa::new();
    let limits = "[limits]\nmax_mailbox_per_device = 1000000\n";
    let mut a = TestServer::start_with(&ca, "127.0.0.2", db, "", limits).await;
    let b = TestServer::start_with(&ca, "127.0.0.3", db, "", limits).await;
    let mut senders = Vec::new();
    for i in 0..SENDERS {
        senders.push(a.register(&format!("sender{i}")).await);
    }
    let mut recipients = Vec::new();
    for i in 0..RECIPIENTS {
        recipients.push(b.register(&format!("recipient{i}")).await);
    }
    let per_recipient = SENDERS * requests;
    let total = per_recipient * RECIPIENTS;
    println!("federation bench: {SENDERS} senders x {requests} requests x {RECIPIENTS} recipients = {total} messages ({db:?})");

    let load_before = load_average();
    let cpu_before = [cpu_ticks(&a), cpu_ticks(&b), self_ticks()];
    let start = Instant::now();
    let receivers: Vec<_> = recipients
        .iter()
        .cloned()
        .map(|user| {
            let b = TestServerRef::of(&b);
            tokio::spawn(async move { drain(b, user, per_recipient).await })
        })
        .collect();
    let sends: Vec<_> = senders
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, sender)| {
            let a = TestServerRef::of(&a);
            let targets = recipients.clone();
            tokio::spawn(async move {
                for r in 0..requests {
                    let mut messages = Map::new();
                    for t in &targets {
                        messages.insert(
                            t.user_id.clone(),
                            json!({t.device_id.clone(): {"seq": i * requests + r, "body": "x".repeat(200)}}),
                        );
                    }
                    a.send(&sender, &format!("b{r}"), Value::Object(messages)).await;
                }
            })
        })
        .collect();
    for s in sends {
        s.await.unwrap();
    }
    let sent_at = start.elapsed();
    let mut received = 0;
    for r in receivers {
        received += r.await.unwrap();
    }
    let elapsed = start.elapsed();
    let cpu_after = [cpu_ticks(&a), cpu_ticks(&b), self_ticks()];
    #[allow(clippy::cast_precision_loss)]
    let rate = total as f64 / elapsed.as_secs_f64();
    println!(
        "all sends accepted by A after {:.2} s",
        sent_at.as_secs_f64()
    );
    println!(
        "received {received}/{total} on B after {:.2} s: {rate:.0} messages/s end to end",
        elapsed.as_secs_f64()
    );

    println!(
        "load average before: {load_before}; after: {}",
        load_average()
    );
    for (name, (before, after)) in ["hushd A", "hushd B", "bench clients"]
        .iter()
        .zip(cpu_before.iter().zip(cpu_after.iter()))
    {
        if let (Some(before), Some(after)) = (before, after) {
            #[allow(clippy::cast_precision_loss)]
            let secs = after.saturating_sub(*before) as f64 / CLOCK_TICKS_PER_SEC;
            #[allow(clippy::cast_precision_loss)]
            let per_message = secs * 1e6 / total as f64;
            println!("{name}: {secs:.2} s CPU during the run, {per_message:.1} µs per message");
        }
    }

    a.stop();
    let log = a.log();
    if let Some(line) = log
        .lines()
        .rev()
        .find(|l| l.contains("federation sender delivered"))
    {
        println!("A: {line}");
    }
}

/// `sysconf(_SC_CLK_TCK)` on Linux: the unit of the CPU times in `/proc/PID/stat`.
const CLOCK_TICKS_PER_SEC: f64 = 100.0;

/// The first three fields of `/proc/loadavg`.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// User + system CPU ticks of the `hushd` process serving `server` (found by its config path
/// on the command line), if it can be read.
fn cpu_ticks(server: &TestServer) -> Option<u64> {
    let config = server.config_path.to_str()?.as_bytes().to_vec();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if !cmdline
            .split(|b| *b == 0)
            .any(|arg| arg == config.as_slice())
        {
            continue;
        }
        return stat_ticks(&entry.path().join("stat"));
    }
    None
}

/// User + system CPU ticks of this bench process (its HTTP clients).
fn self_ticks() -> Option<u64> {
    stat_ticks(std::path::Path::new("/proc/self/stat"))
}

/// utime + stime of a `/proc/PID/stat` file.
fn stat_ticks(path: &std::path::Path) -> Option<u64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The parts of a server the spawned tasks need.
#[derive(Clone)]
struct TestServerRef {
    base: String,
    http: reqwest::Client,
}

impl TestServerRef {
    fn of(server: &TestServer) -> Self {
        TestServerRef {
            base: server.base.clone(),
            http: server.http.clone(),
        }
    }

    async fn send(&self, user: &TestUser, txn: &str, messages: Value) {
        let resp = self
            .http
            .put(format!(
                "{}/_matrix/client/v3/sendToDevice/m.bench/{txn}",
                self.base
            ))
            .bearer_auth(&user.token)
            .json(&json!({ "messages": messages }))
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "send: {}", resp.status());
    }
}

/// Syncs `user` until `count` messages arrived; returns how many did.
async fn drain(b: TestServerRef, user: TestUser, count: usize) -> usize {
    let mut since: Option<String> = None;
    let mut got = 0;
    let deadline = Instant::now() + Duration::from_secs(600);
    while got < count && Instant::now() < deadline {
        let mut url = format!("{}/_matrix/client/v3/sync?timeout=5000", b.base);
        if let Some(s) = &since {
            url.push_str(&format!("&since={s}"));
        }
        let body: Value = b
            .http
            .get(url)
            .bearer_auth(&user.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        got += body["to_device"]["events"].as_array().map_or(0, Vec::len);
        since = body["next_batch"].as_str().map(str::to_owned);
    }
    got
}
