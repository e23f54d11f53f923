//! End-to-end throughput of the real `hushd` over loopback HTTP/1.1 keep-alive.
//!
//! Run: `cargo bench -p hush-server --bench throughput`
//! (environment: `BENCH_N` messages per phase, default 10000; `BENCH_BACKENDS`, default
//! `sqlite,postgres`; `BENCH_RSS_MESSAGES`, default 100000).
//!
//! For each backend it starts a release `hushd` (rate limits off, logs at `warn`) on a fresh
//! database and measures: to-device sends/s with 1 and with 16 concurrent senders; /sync drain
//! messages/s; live end-to-end messages/s while the receiver long-polls; wake-up latency of an
//! idle long-poll (send start -> sync answer) p50/p99; keys/claim per second with 16 concurrent
//! claimers; and the peak RSS (VmHWM) of hushd after `BENCH_RSS_MESSAGES` messages are queued.

mod bench_support;
#[path = "../tests/ops_support/mod.rs"]
mod ops_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bench_support::{env_usize, memory_mb, percentile, phase_done, Account, Bench, Conn, CpuMeter};
use ops_support::{database, env_refs, server_env, Server, TestResult};
use serde_json::{json, Value};

const SENDERS: usize = 16;
const CLAIMERS: usize = 16;
const WAKEUPS: usize = 500;

struct Row {
    metric: &'static str,
    value: f64,
    unit: &'static str,
    goal: &'static str,
}

/// Adds the CPU cost per item of the phase `meter` measured: hushd's, then the bench client's
/// (both share the machine, so the client's cost bounds what a wall-clock figure can show).
fn cpu_rows(
    rows: &mut Vec<Row>,
    meter: &CpuMeter,
    items: usize,
    server: &'static str,
    client: &'static str,
) {
    let (server_us, client_us) = meter.per_item_us(items);
    rows.push(Row {
        metric: server,
        value: server_us,
        unit: "us CPU",
        goal: "",
    });
    rows.push(Row {
        metric: client,
        value: client_us,
        unit: "us CPU",
        goal: "",
    });
}

/// Sends `n` messages to `to`'s device from `senders` accounts concurrently; messages/s.
async fn send_phase(
    bench: &Arc<Bench>,
    senders: &[Account],
    to: &Account,
    n: usize,
    tag: &str,
) -> TestResult<f64> {
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let per = n / senders.len();
    for (s, sender) in senders.iter().enumerate() {
        let bench = bench.clone();
        let sender = sender.clone();
        let to = to.clone();
        let tag = tag.to_owned();
        let count = if s == 0 {
            n - per * (senders.len() - 1)
        } else {
            per
        };
        tasks.spawn(async move {
            // One connection per sender, as a real client keeps one.
            let mut conn = Conn::open(&bench.base).await?;
            let pad = "x".repeat(64);
            for i in 0..count {
                let txn = format!("{tag}-{s}-{i}");
                conn.send(
                    &sender,
                    &txn,
                    &to.user_id,
                    &to.device_id,
                    &json!({"i": i, "pad": pad}),
                )
                .await?;
            }
            TestResult::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

async fn run_backend(backend: &str, n: usize, rss_messages: usize) -> TestResult<Vec<Row>> {
    let dir = tempfile::tempdir()?;
    let (db, _pg) = database(backend, dir.path())?;
    let mut env = server_env(dir.path(), &db);
    for (k, v) in [
        ("HUSHD_REGISTRATION", "open"),
        ("HUSHD_RATE_LIMITS_ENABLED", "false"),
        ("HUSHD_LIMITS_MAX_MAILBOX_PER_DEVICE", "1000000"),
        ("HUSHD_LIMITS_MAX_ONE_TIME_KEYS_PER_UPLOAD", "1000"),
    ] {
        env.push((k.into(), v.into()));
    }
    let server = Server::start(&[], &env_refs(&env), dir.path())?;
    let http = reqwest::Client::builder()
        .http1_only()
        .pool_max_idle_per_host(64)
        .timeout(Duration::from_secs(120))
        .build()?;
    let bench = Arc::new(Bench {
        http,
        base: server.url.clone(),
    });
    let mut rows = Vec::new();

    phase_done(server.pid(), "started");
    let receiver = bench.register("receiver").await?;
    let mut senders = Vec::new();
    for i in 0..SENDERS {
        senders.push(bench.register(&format!("sender{i}")).await?);
    }

    // 1. Sends, one sender then sixteen.
    phase_done(server.pid(), "registered 17 accounts");
    let meter = CpuMeter::start(server.pid());
    let one = send_phase(&bench, &senders[..1], &receiver, n, "one").await?;
    rows.push(Row {
        metric: "sends/s, 1 sender",
        value: one,
        unit: "msg/s",
        goal: ">= 3000",
    });
    cpu_rows(
        &mut rows,
        &meter,
        n,
        "  hushd CPU per send",
        "  bench CPU per send",
    );
    phase_done(server.pid(), "sends, 1 sender");
    let meter = CpuMeter::start(server.pid());
    let many = send_phase(&bench, &senders, &receiver, n, "many").await?;
    rows.push(Row {
        metric: "sends/s, 16 senders",
        value: many,
        unit: "msg/s",
        goal: ">= 10000",
    });
    cpu_rows(
        &mut rows,
        &meter,
        n,
        "  hushd CPU per send",
        "  bench CPU per send",
    );
    phase_done(server.pid(), "sends, 16 senders");

    // 2. Drain the 2n queued messages through /sync.
    let meter = CpuMeter::start(server.pid());
    let start = Instant::now();
    let mut since: Option<String> = None;
    let mut drained = 0;
    loop {
        let (next, events) = bench.sync(&receiver, since.as_deref(), 0).await?;
        since = Some(next);
        if events.is_empty() {
            break;
        }
        drained += events.len();
    }
    let drain = drained as f64 / start.elapsed().as_secs_f64();
    if drained != 2 * n {
        return Err(format!("drained {drained} of {} messages", 2 * n).into());
    }
    rows.push(Row {
        metric: "sync drain",
        value: drain,
        unit: "msg/s",
        goal: "",
    });
    cpu_rows(
        &mut rows,
        &meter,
        drained,
        "  hushd CPU per message",
        "  bench CPU per message",
    );
    phase_done(server.pid(), "sync drain");

    // 3. Live: the receiver long-polls while 16 senders send n messages.
    let receive = {
        let bench = bench.clone();
        let receiver = receiver.clone();
        let mut since = since.clone();
        tokio::spawn(async move {
            let mut got = 0;
            while got < n {
                let (next, events) = bench.sync(&receiver, since.as_deref(), 30_000).await?;
                since = Some(next);
                got += events.len();
            }
            TestResult::Ok((Instant::now(), since))
        })
    };
    let meter = CpuMeter::start(server.pid());
    let start = Instant::now();
    send_phase(&bench, &senders, &receiver, n, "live").await?;
    let (done, after_live) = receive.await??;
    let live = n as f64 / (done - start).as_secs_f64();
    rows.push(Row {
        metric: "live end-to-end, 16 senders",
        value: live,
        unit: "msg/s",
        goal: ">= 5000",
    });
    cpu_rows(
        &mut rows,
        &meter,
        n,
        "  hushd CPU per message",
        "  bench CPU per message",
    );
    phase_done(server.pid(), "live");

    // 4. Wake-up latency of an idle long-poll.
    let mut since = after_live;
    // Settle: acknowledge everything first.
    let (next, _) = bench.sync(&receiver, since.as_deref(), 0).await?;
    since = Some(next);
    let mut latencies = Vec::with_capacity(WAKEUPS);
    for i in 0..WAKEUPS {
        let poll = {
            let bench = bench.clone();
            let receiver = receiver.clone();
            let since = since.clone();
            tokio::spawn(async move { bench.sync(&receiver, since.as_deref(), 30_000).await })
        };
        // Let the long-poll reach the server and park.
        tokio::time::sleep(Duration::from_millis(3)).await;
        let t0 = Instant::now();
        bench
            .send(
                &senders[i % SENDERS],
                &format!("wake-{i}"),
                &receiver.user_id,
                &receiver.device_id,
                json!({"i": i}),
            )
            .await?;
        let (next, events) = poll.await??;
        let elapsed = t0.elapsed();
        if events.is_empty() {
            return Err("a wake-up returned no event".into());
        }
        latencies.push(elapsed);
        since = Some(next);
    }
    latencies.sort();
    rows.push(Row {
        metric: "wake-up latency p50",
        value: percentile(&latencies, 0.50).as_secs_f64() * 1000.0,
        unit: "ms",
        goal: "",
    });
    rows.push(Row {
        metric: "wake-up latency p99",
        value: percentile(&latencies, 0.99).as_secs_f64() * 1000.0,
        unit: "ms",
        goal: "<= 10",
    });

    // 5. Claims: one device uploads n one-time keys, 16 claimers take them.
    let owner = bench.register("keyowner").await?;
    let batch = 1000;
    for b in 0..n.div_ceil(batch) {
        let mut keys = serde_json::Map::new();
        for i in b * batch..((b + 1) * batch).min(n) {
            keys.insert(
                format!("signed_curve25519:K{i:08}"),
                json!({"key": format!("{i:043}"), "signatures": {owner.user_id.clone(): {format!("ed25519:{}", owner.device_id): "sig"}}}),
            );
        }
        let resp = bench
            .http
            .post(format!("{}/_matrix/client/v3/keys/upload", bench.base))
            .bearer_auth(&owner.token)
            .json(&json!({"one_time_keys": keys}))
            .send()
            .await?;
        if resp.status() != 200 {
            return Err(format!("upload: {} {}", resp.status(), resp.text().await?).into());
        }
    }
    let mut claimers = Vec::new();
    for i in 0..CLAIMERS {
        claimers.push(bench.register(&format!("claimer{i}")).await?);
    }
    let meter = CpuMeter::start(server.pid());
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for claimer in claimers {
        let bench = bench.clone();
        let owner = owner.clone();
        tasks.spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..n / CLAIMERS {
                let body: Value = bench
                    .http
                    .post(format!("{}/_matrix/client/v3/keys/claim", bench.base))
                    .bearer_auth(&claimer.token)
                    .json(&json!({"one_time_keys": {owner.user_id.clone(): {owner.device_id.clone(): "signed_curve25519"}}}))
                    .send()
                    .await?
                    .json()
                    .await?;
                let keys = &body["one_time_keys"][&owner.user_id][&owner.device_id];
                let id = keys
                    .as_object()
                    .and_then(|m| m.keys().next().cloned())
                    .ok_or(format!("claim returned no key: {body}"))?;
                ids.push(id);
            }
            TestResult::Ok(ids)
        });
    }
    let mut all_ids = Vec::new();
    while let Some(r) = tasks.join_next().await {
        all_ids.extend(r??);
    }
    let claims = all_ids.len() as f64 / start.elapsed().as_secs_f64();
    let total = all_ids.len();
    all_ids.sort();
    all_ids.dedup();
    if all_ids.len() != total {
        return Err("two claims got the same one-time key".into());
    }
    rows.push(Row {
        metric: "claims/s, 16 claimers",
        value: claims,
        unit: "claims/s",
        goal: ">= 5000",
    });
    cpu_rows(
        &mut rows,
        &meter,
        total,
        "  hushd CPU per claim",
        "  bench CPU per claim",
    );
    phase_done(server.pid(), "claims");

    // 6. Peak RSS with rss_messages queued: 100 devices of one user, '*' fan-out.
    let devices = 100;
    let fan = bench.register("fanout").await?;
    for _ in 1..devices {
        bench.login("fanout").await?;
    }
    phase_done(server.pid(), "100 devices logged in");
    let requests = rss_messages / devices;
    let mut tasks = tokio::task::JoinSet::new();
    for (s, sender) in senders.iter().enumerate() {
        let bench = bench.clone();
        let sender = sender.clone();
        let fan = fan.clone();
        tasks.spawn(async move {
            for i in (s..requests).step_by(SENDERS) {
                bench
                    .send(
                        &sender,
                        &format!("rss-{i}"),
                        &fan.user_id,
                        "*",
                        json!({"i": i, "pad": "x".repeat(64)}),
                    )
                    .await?;
            }
            TestResult::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    phase_done(server.pid(), "100k queued");
    let (_, hwm) = memory_mb(server.pid());
    rows.push(Row {
        metric: "peak RSS (VmHWM), 100k queued",
        value: hwm,
        unit: "MB",
        goal: "<= 100",
    });
    Ok(rows)
}

fn main() -> TestResult {
    // `cargo bench` passes `--bench`; a filter argument is not supported.
    let n = env_usize("BENCH_N", 10_000);
    let rss_messages = env_usize("BENCH_RSS_MESSAGES", 100_000);
    let backends = std::env::var("BENCH_BACKENDS").unwrap_or_else(|_| "sqlite,postgres".into());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    println!("hushd throughput, N = {n} per phase, loopback HTTP/1.1 keep-alive");
    let mut table = Vec::new();
    for backend in backends.split(',').map(str::trim).filter(|b| !b.is_empty()) {
        eprintln!("running {backend} ...");
        let rows = runtime.block_on(run_backend(backend, n, rss_messages))?;
        for row in rows {
            table.push((backend.to_owned(), row));
        }
    }
    println!(
        "{:<10} {:<32} {:>12} {:<9} goal (sqlite)",
        "backend", "metric", "value", "unit"
    );
    for (backend, row) in table {
        println!(
            "{:<10} {:<32} {:>12.1} {:<9} {}",
            backend, row.metric, row.value, row.unit, row.goal
        );
    }
    Ok(())
}
