//! Load: many accounts, many waiting long-polls and many messages on one or several `hushd`
//! processes.
//!
//! Run: `cargo bench -p hush-server --bench load`
//!
//! Environment (defaults in brackets; scale them down for a smoke run):
//! * `LOAD_USERS` [10000] accounts, one device each;
//! * `LOAD_SYNCS` [1000] devices that long-poll `/sync` for the whole run (the first accounts);
//! * `LOAD_MESSAGES` [100000] to-device messages sent in the throughput phase;
//! * `LOAD_SENDERS` [32] concurrent sending tasks;
//! * `LOAD_WAKEUPS` [1000] isolated wake-ups measured with every sync parked;
//! * `LOAD_CONFIGS` [`sqlite,postgres,postgres-3`]: `sqlite` and `postgres` are one process,
//!   `postgres-N` is N processes sharing one PostgreSQL database;
//! * `LOAD_DRAIN_SECS` [60] how long to wait after the last send for every message to arrive;
//! * `LOAD_WAKE_TIMEOUT_MS` [2000] how long one isolated wake-up may take before it counts as
//!   missed.
//!
//! Accounts are created through the hush-server library's store (`Store::create_user` and
//! `Store::login_device`, the calls registration makes), before `hushd` starts, with ONE argon2
//! hash computed up front and shared by every account: registering 10,000 accounts through the
//! API would spend 10,000 argon2 hashes (tens of milliseconds of CPU each), which measures the
//! password hash rather than the server. Every other request goes through HTTP/1.1 keep-alive on
//! loopback to release `hushd` processes (rate limits off, logs at `warn`).
//!
//! Phases per configuration:
//! 1. Every sync device long-polls (`timeout=30000`) in a loop; syncs are spread round-robin
//!    over the processes.
//! 2. Throughput: `LOAD_SENDERS` tasks send `LOAD_MESSAGES` messages, each from a non-syncing
//!    account to a pseudo-random syncing device, spread round-robin over the processes. Reports
//!    sends/s and the delivery latency under that load (send's 200 -> the sync answer carrying
//!    the message).
//! 3. Wake-ups: with every sync parked, `LOAD_WAKEUPS` messages one at a time to pseudo-random
//!    devices; wake-up latency is the time from the send's 200 to the waiting sync returning the
//!    message (clamped at zero: the sync answer can overtake the send's 200).
//! 4. Peak RSS (`VmHWM`) of every `hushd` process.
//!
//! It also prints the CPU time per message of the throughput phase (user + system, from
//! `/proc/PID/stat`) of every `hushd` and, on PostgreSQL, of the database backends serving the
//! bench's database, with the transactions committed per message: on a shared machine these
//! compare runs better than wall-clock rates.
//!
//! The bench client shares the machine with the servers (and, on a shared machine, with anything
//! else running): the figures are lower bounds. The load average is printed with them.

#[path = "../tests/ops_support/mod.rs"]
mod ops_support;

mod bench_support;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bench_support::{env_usize, memory_mb, percentile, Account, Bench};
use futures::stream::{self, StreamExt, TryStreamExt};
use hush_server::password::hash_password;
use hush_server::service::identifiers::{hash_token, new_access_token};
use hush_server::service::now_ms;
use hush_server::store::Store;
use ops_support::{database, env_refs, server_env, PgDatabase, Server, TestResult};
use serde_json::json;
use tokio::sync::Notify;

/// The server name of the bench servers.
const SERVER_NAME: &str = "localhost";
/// Long-poll timeout of every sync (ms).
const SYNC_TIMEOUT_MS: u64 = 30_000;
/// Reqwest clients shared by the syncing tasks (each keeps its own connection pool).
const SYNC_CLIENTS: usize = 4;
/// Concurrent account creations through the store.
const CREATE_CONCURRENCY: usize = 16;
/// Clock ticks per second of the CPU times in `/proc/PID/stat` (`USER_HZ`, 100 on Linux).
const CLOCK_TICKS_PER_SEC: f64 = 100.0;

/// Size of one run.
#[derive(Clone, Copy)]
struct Sizes {
    users: usize,
    syncs: usize,
    messages: usize,
    senders: usize,
    wakeups: usize,
    drain: Duration,
    wake_timeout: Duration,
}

/// What one configuration measured.
struct Figures {
    config: String,
    create_per_s: f64,
    sends_per_s: f64,
    delivered: usize,
    duplicates: usize,
    load_p50_ms: f64,
    load_p99_ms: f64,
    wake_p50_ms: f64,
    wake_p99_ms: f64,
    wake_max_ms: f64,
    woken: usize,
    missed: usize,
    /// Peak RSS per process (MB).
    peak_rss: Vec<f64>,
    /// RSS of all processes together before the syncs started and with all of them parked (MB).
    idle_rss: f64,
    parked_rss: f64,
    loadavg_before: String,
    loadavg_after: String,
    /// CPU time (user + system) per message sent in the throughput phase, per `hushd` (ms).
    hushd_cpu_ms: Vec<f64>,
    /// CPU time of the PostgreSQL backends serving this database per message (ms), if any.
    pg_cpu_ms: Option<f64>,
    /// PostgreSQL transactions committed per message in the throughput phase, if any.
    pg_commits: Option<f64>,
}

/// CPU seconds (user + system) used so far by process `pid` (0 if it is gone).
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may contain spaces):
    // state is the first, utime the 12th and stime the 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / CLOCK_TICKS_PER_SEC
}

/// What PostgreSQL has done for one database: CPU seconds of its current backends (by pid)
/// and transactions committed.
struct PgUsage {
    cpu: std::collections::HashMap<u32, f64>,
    commits: i64,
}

/// Reads [`PgUsage`] of the database at `url` (the backends are on this machine).
async fn pg_usage(url: &str) -> TestResult<PgUsage> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await?;
    let pids: Vec<i32> = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
         AND pid <> pg_backend_pid()",
    )
    .fetch_all(&mut conn)
    .await?;
    let commits: i64 = sqlx::query_scalar(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(&mut conn)
    .await?;
    conn.close().await?;
    let cpu = pids
        .into_iter()
        .filter_map(|p| u32::try_from(p).ok())
        .map(|p| (p, cpu_secs(p)))
        .collect();
    Ok(PgUsage { cpu, commits })
}

/// Milliseconds in an `Instant` difference, as `f64`.
fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The first three fields of `/proc/loadavg`.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The soft limit on open files of this process (children inherit it).
fn open_files_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// A deterministic pseudo-random index below `n` for message `k` (splitmix64).
fn pick(k: u64, n: usize) -> usize {
    let mut z = k.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z % n.max(1) as u64) as usize
}

/// Creates `users` accounts with one device each through the store; returns them and the
/// creation rate.
async fn create_accounts(database_url: &str, users: usize) -> TestResult<(Vec<Account>, f64)> {
    let store = Store::connect(database_url).await?;
    let hash = hash_password("bench password".to_owned()).await?;
    let start = Instant::now();
    let accounts: Vec<Account> = stream::iter(0..users)
        .map(|i| {
            let store = store.clone();
            let hash = hash.clone();
            async move {
                let user_id = format!("@load{i}:{SERVER_NAME}");
                let device_id = format!("LOAD{i}");
                let token = new_access_token();
                let now = now_ms();
                store
                    .create_user(&user_id, Some(hash.as_str()), None, now)
                    .await?;
                store
                    .login_device(&user_id, &device_id, None, &hash_token(&token), now)
                    .await?;
                TestResult::Ok(Account {
                    user_id,
                    device_id,
                    token,
                })
            }
        })
        .buffered(CREATE_CONCURRENCY)
        .try_collect()
        .await?;
    let rate = users as f64 / start.elapsed().as_secs_f64();
    store.close().await;
    Ok((accounts, rate))
}

/// Shared state of the syncing tasks.
struct Receipts {
    /// Per message ID: nanoseconds since `epoch` when a sync returned it (0 = not yet).
    received: Vec<AtomicU64>,
    delivered: AtomicUsize,
    duplicates: AtomicUsize,
    /// Sync requests currently in flight.
    in_flight: AtomicUsize,
    arrived: Notify,
    epoch: Instant,
    stop: AtomicBool,
}

impl Receipts {
    fn since_epoch(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    fn received_at(&self, id: usize) -> Option<Instant> {
        let ns = self.received.get(id)?.load(Ordering::Acquire);
        (ns != 0).then(|| self.epoch + Duration::from_nanos(ns))
    }
}

/// One device's long-poll loop: records when each message ID arrives.
async fn sync_loop(bench: Arc<Bench>, who: Account, receipts: Arc<Receipts>) -> TestResult {
    let (mut since, _) = bench.sync(&who, None, 0).await?;
    while !receipts.stop.load(Ordering::Relaxed) {
        receipts.in_flight.fetch_add(1, Ordering::SeqCst);
        let answer = bench.sync(&who, Some(&since), SYNC_TIMEOUT_MS).await;
        let now = Instant::now();
        receipts.in_flight.fetch_sub(1, Ordering::SeqCst);
        let (next, events) = answer?;
        since = next;
        if events.is_empty() {
            continue;
        }
        let at = receipts.since_epoch(now);
        for event in &events {
            let Some(id) = event["content"]["id"].as_u64() else {
                continue;
            };
            let Some(slot) = usize::try_from(id)
                .ok()
                .and_then(|id| receipts.received.get(id))
            else {
                continue;
            };
            if slot
                .compare_exchange(0, at, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                receipts.delivered.fetch_add(1, Ordering::Relaxed);
            } else {
                receipts.duplicates.fetch_add(1, Ordering::Relaxed);
            }
        }
        receipts.arrived.notify_waiters();
    }
    Ok(())
}

/// Runs one configuration: `backend` is `sqlite` or `postgres`, on `processes` processes.
async fn run_config(
    name: &str,
    backend: &str,
    processes: usize,
    sizes: Sizes,
) -> TestResult<Figures> {
    let dir = tempfile::tempdir()?;
    let (db, _pg): (String, Option<PgDatabase>) = database(backend, dir.path())?;
    let loadavg_before = loadavg();

    eprintln!("  creating {} accounts through the store ...", sizes.users);
    let (accounts, create_per_s) = create_accounts(&db, sizes.users).await?;
    eprintln!("  {create_per_s:.0} accounts/s");

    let mut env = server_env(dir.path(), &db);
    for (k, v) in [
        ("HUSHD_SERVER_NAME", SERVER_NAME),
        ("HUSHD_RATE_LIMITS_ENABLED", "false"),
        ("HUSHD_LIMITS_MAX_MAILBOX_PER_DEVICE", "1000000"),
    ] {
        env.push((k.into(), v.into()));
    }
    let mut servers = Vec::new();
    for _ in 0..processes {
        // One after the other: the first creates the shared signing key.
        servers.push(Server::start(&[], &env_refs(&env), dir.path())?);
    }
    let sync_clients: Vec<reqwest::Client> = (0..SYNC_CLIENTS)
        .map(|_| {
            reqwest::Client::builder()
                .http1_only()
                .pool_max_idle_per_host(sizes.syncs)
                .timeout(Duration::from_secs(120))
                .build()
        })
        .collect::<Result<_, _>>()?;
    let send_client = reqwest::Client::builder()
        .http1_only()
        .pool_max_idle_per_host(sizes.senders.max(1) * 2)
        .timeout(Duration::from_secs(120))
        .build()?;
    let senders_per_process: Vec<Arc<Bench>> = servers
        .iter()
        .map(|s| {
            Arc::new(Bench {
                http: send_client.clone(),
                base: s.url.clone(),
            })
        })
        .collect();

    let rss_total = |servers: &[Server]| servers.iter().map(|s| memory_mb(s.pid()).0).sum::<f64>();
    let idle_rss = rss_total(&servers);

    // 1. Every sync device long-polls.
    let total_ids = sizes.messages + sizes.wakeups;
    let receipts = Arc::new(Receipts {
        received: (0..total_ids).map(|_| AtomicU64::new(0)).collect(),
        delivered: AtomicUsize::new(0),
        duplicates: AtomicUsize::new(0),
        in_flight: AtomicUsize::new(0),
        arrived: Notify::new(),
        epoch: Instant::now(),
        stop: AtomicBool::new(false),
    });
    let mut sync_tasks = tokio::task::JoinSet::new();
    for (i, who) in accounts.iter().take(sizes.syncs).enumerate() {
        let bench = Arc::new(Bench {
            http: sync_clients[i % SYNC_CLIENTS].clone(),
            base: servers[i % processes].url.clone(),
        });
        sync_tasks.spawn(sync_loop(bench, who.clone(), receipts.clone()));
    }
    wait_parked(&receipts, &mut sync_tasks, sizes.syncs).await?;
    let parked_rss = rss_total(&servers);
    eprintln!(
        "  {} syncs parked: hushd RSS {idle_rss:.1} -> {parked_rss:.1} MB",
        sizes.syncs
    );

    // 2. Throughput.
    let senders: Arc<Vec<Account>> = Arc::new(if accounts.len() > sizes.syncs {
        accounts[sizes.syncs..].to_vec()
    } else {
        accounts.clone()
    });
    let targets: Arc<Vec<Account>> = Arc::new(accounts[..sizes.syncs].to_vec());
    let sent_at: Arc<Vec<AtomicU64>> =
        Arc::new((0..sizes.messages).map(|_| AtomicU64::new(0)).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let hushd_cpu_before: Vec<f64> = servers.iter().map(|s| cpu_secs(s.pid())).collect();
    let pg_before = match backend {
        "postgres" => Some(pg_usage(&db).await?),
        _ => None,
    };
    let start = Instant::now();
    let mut send_tasks = tokio::task::JoinSet::new();
    for _ in 0..sizes.senders {
        let (senders, targets, sent_at, next, receipts, benches) = (
            senders.clone(),
            targets.clone(),
            sent_at.clone(),
            next.clone(),
            receipts.clone(),
            senders_per_process.clone(),
        );
        send_tasks.spawn(async move {
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= sent_at.len() {
                    return TestResult::Ok(());
                }
                let from = &senders[k % senders.len()];
                let to = &targets[pick(k as u64, targets.len())];
                benches[k % benches.len()]
                    .send(
                        from,
                        &format!("a{k}"),
                        &to.user_id,
                        &to.device_id,
                        json!({"id": k, "pad": "x".repeat(64)}),
                    )
                    .await?;
                sent_at[k].store(receipts.since_epoch(Instant::now()), Ordering::Release);
            }
        });
    }
    while let Some(r) = send_tasks.join_next().await {
        r??;
    }
    let send_time = start.elapsed();
    let sends_per_s = sizes.messages as f64 / send_time.as_secs_f64();
    eprintln!(
        "  {} sends in {:.1} s: {sends_per_s:.0}/s",
        sizes.messages,
        send_time.as_secs_f64()
    );
    let drain_deadline = Instant::now() + sizes.drain;
    while receipts.delivered.load(Ordering::Relaxed) < sizes.messages
        && Instant::now() < drain_deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let delivered = receipts.delivered.load(Ordering::Relaxed);
    // CPU per message of the throughput phase (sends and their deliveries).
    let per_message = |secs: f64| secs * 1000.0 / sizes.messages.max(1) as f64;
    let hushd_cpu_ms: Vec<f64> = servers
        .iter()
        .zip(&hushd_cpu_before)
        .map(|(s, before)| per_message(cpu_secs(s.pid()) - before))
        .collect();
    let (pg_cpu_ms, pg_commits) = match &pg_before {
        Some(before) => {
            let after = pg_usage(&db).await?;
            // Backends that started during the phase count from zero.
            let cpu: f64 = after
                .cpu
                .iter()
                .map(|(pid, now)| now - before.cpu.get(pid).copied().unwrap_or(0.0))
                .sum();
            (
                Some(per_message(cpu)),
                Some((after.commits - before.commits) as f64 / sizes.messages.max(1) as f64),
            )
        }
        None => (None, None),
    };
    let mut under_load: Vec<Duration> = (0..sizes.messages)
        .filter_map(|k| {
            let sent = sent_at[k].load(Ordering::Acquire);
            let got = receipts.received[k].load(Ordering::Acquire);
            (got != 0).then(|| Duration::from_nanos(got.saturating_sub(sent)))
        })
        .collect();
    under_load.sort();
    eprintln!("  delivered {delivered} of {}", sizes.messages);

    // 3. Isolated wake-ups with every sync parked.
    wait_parked(&receipts, &mut sync_tasks, sizes.syncs).await?;
    let mut wakes = Vec::with_capacity(sizes.wakeups);
    let mut missed = 0;
    for w in 0..sizes.wakeups {
        let id = sizes.messages + w;
        let from = &senders[w % senders.len()];
        let to = &targets[pick(id as u64, targets.len())];
        senders_per_process[w % processes]
            .send(
                from,
                &format!("w{w}"),
                &to.user_id,
                &to.device_id,
                json!({"id": id}),
            )
            .await?;
        let ok = Instant::now();
        let deadline = ok + sizes.wake_timeout;
        let got = loop {
            let arrived = receipts.arrived.notified();
            if let Some(at) = receipts.received_at(id) {
                break Some(at);
            }
            if tokio::time::timeout_at(deadline.into(), arrived)
                .await
                .is_err()
            {
                break receipts.received_at(id);
            }
        };
        match got {
            Some(at) => wakes.push(at.saturating_duration_since(ok)),
            None => {
                missed += 1;
                if missed >= 10 {
                    eprintln!(
                        "  10 wake-ups missed their {:?}: stopping",
                        sizes.wake_timeout
                    );
                    break;
                }
            }
        }
        // Let the woken sync park again before the next one.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    wakes.sort();

    // 4. Memory.
    let peak_rss: Vec<f64> = servers.iter().map(|s| memory_mb(s.pid()).1).collect();
    receipts.stop.store(true, Ordering::Relaxed);
    sync_tasks.abort_all();
    let loadavg_after = loadavg();
    drop(servers);

    Ok(Figures {
        config: name.to_owned(),
        create_per_s,
        sends_per_s,
        delivered,
        duplicates: receipts.duplicates.load(Ordering::Relaxed),
        load_p50_ms: ms(percentile(&under_load, 0.50)),
        load_p99_ms: ms(percentile(&under_load, 0.99)),
        wake_p50_ms: ms(percentile(&wakes, 0.50)),
        wake_p99_ms: ms(percentile(&wakes, 0.99)),
        wake_max_ms: ms(wakes.last().copied().unwrap_or_default()),
        woken: wakes.len(),
        missed,
        peak_rss,
        idle_rss,
        parked_rss,
        loadavg_before,
        loadavg_after,
        hushd_cpu_ms,
        pg_cpu_ms,
        pg_commits,
    })
}

/// Waits until every sync task has a request in flight, then a little longer so the server
/// side has parked them; fails if a sync task ended.
async fn wait_parked(
    receipts: &Receipts,
    tasks: &mut tokio::task::JoinSet<TestResult>,
    syncs: usize,
) -> TestResult {
    let deadline = Instant::now() + Duration::from_secs(120);
    while receipts.in_flight.load(Ordering::SeqCst) < syncs {
        if let Some(done) = tasks.try_join_next() {
            done??;
            return Err("a sync task ended early".into());
        }
        if Instant::now() > deadline {
            return Err("the syncs did not all start within 120 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(())
}

fn main() -> TestResult {
    // `cargo bench` passes `--bench`; a filter argument is not supported.
    let sizes = Sizes {
        users: env_usize("LOAD_USERS", 10_000),
        syncs: env_usize("LOAD_SYNCS", 1_000),
        messages: env_usize("LOAD_MESSAGES", 100_000),
        senders: env_usize("LOAD_SENDERS", 32).max(1),
        wakeups: env_usize("LOAD_WAKEUPS", 1_000),
        drain: Duration::from_secs(env_usize("LOAD_DRAIN_SECS", 60) as u64),
        wake_timeout: Duration::from_millis(env_usize("LOAD_WAKE_TIMEOUT_MS", 2_000) as u64),
    };
    if sizes.syncs == 0 || sizes.users < sizes.syncs {
        return Err("need LOAD_SYNCS >= 1 and LOAD_USERS >= LOAD_SYNCS".into());
    }
    let needed = sizes.syncs + sizes.senders * 2 + 256;
    if let Some(limit) = open_files_limit().filter(|&limit| limit < needed) {
        return Err(format!(
            "open files limit {limit} < {needed}: raise it first (ulimit -n {needed})"
        )
        .into());
    }
    let configs =
        std::env::var("LOAD_CONFIGS").unwrap_or_else(|_| "sqlite,postgres,postgres-3".into());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    println!(
        "hushd load: {} accounts, {} waiting syncs, {} messages from {} concurrent senders, \
         {} isolated wake-ups; loopback HTTP/1.1 keep-alive",
        sizes.users, sizes.syncs, sizes.messages, sizes.senders, sizes.wakeups
    );
    let mut all = Vec::new();
    for config in configs.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        let (backend, processes) = match config.split_once('-') {
            Some((b, n)) => (
                b,
                n.parse::<usize>()
                    .map_err(|_| format!("bad config {config}"))?,
            ),
            None => (config, 1),
        };
        if !matches!(backend, "sqlite" | "postgres") || processes == 0 {
            return Err(format!("bad config {config}").into());
        }
        if backend == "sqlite" && processes > 1 {
            return Err("SQLite runs as one process".into());
        }
        eprintln!("running {config} ...");
        let figures = runtime.block_on(run_config(config, backend, processes, sizes))?;
        print_figures(&figures, &sizes);
        all.push(figures);
    }
    println!();
    println!(
        "{:<12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}  load average before / after",
        "config", "sends/s", "load p50", "load p99", "wake p50", "wake p99", "woken", "peak MB",
    );
    for f in &all {
        let peak = f
            .peak_rss
            .iter()
            .map(|m| format!("{m:.0}"))
            .collect::<Vec<_>>()
            .join("/");
        println!(
            "{:<12} {:>9.0} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9} {:>9}  {} / {}",
            f.config,
            f.sends_per_s,
            f.load_p50_ms,
            f.load_p99_ms,
            f.wake_p50_ms,
            f.wake_p99_ms,
            format!("{}/{}", f.woken, f.woken + f.missed),
            peak,
            f.loadavg_before,
            f.loadavg_after
        );
    }
    println!("goals: wake p99 <= 50 ms with the syncs parked; peak RSS <= 300 MB per process");
    Ok(())
}

/// Prints one configuration's figures as they come.
fn print_figures(f: &Figures, sizes: &Sizes) {
    println!("{}:", f.config);
    println!(
        "  accounts created through the store: {:.0}/s",
        f.create_per_s
    );
    println!(
        "  sends: {:.0}/s; delivered {} of {} ({} duplicates)",
        f.sends_per_s, f.delivered, sizes.messages, f.duplicates
    );
    println!(
        "  delivery latency under that load (send 200 -> sync answer): p50 {:.1} ms, p99 {:.1} ms",
        f.load_p50_ms, f.load_p99_ms
    );
    println!(
        "  wake-up with {} syncs parked (send 200 -> sync answer): p50 {:.1} ms, p99 {:.1} ms, \
         max {:.1} ms; {} woken, {} missed",
        sizes.syncs, f.wake_p50_ms, f.wake_p99_ms, f.wake_max_ms, f.woken, f.missed
    );
    println!(
        "  hushd RSS (all processes) before the syncs {:.1} MB, with {} parked {:.1} MB \
         ({:.1} KB per waiter)",
        f.idle_rss,
        sizes.syncs,
        f.parked_rss,
        (f.parked_rss - f.idle_rss) * 1024.0 / sizes.syncs as f64
    );
    for (i, m) in f.peak_rss.iter().enumerate() {
        println!("  hushd #{i} peak RSS (VmHWM): {m:.1} MB");
    }
    let cpu = f
        .hushd_cpu_ms
        .iter()
        .map(|m| format!("{m:.2}"))
        .collect::<Vec<_>>()
        .join(" / ");
    println!("  CPU per message in the throughput phase: hushd {cpu} ms");
    if let (Some(pg), Some(commits)) = (f.pg_cpu_ms, f.pg_commits) {
        println!(
            "  PostgreSQL backends of this database: {pg:.2} ms CPU and {commits:.2} commits \
             per message"
        );
    }
    println!(
        "  load average before: {}, after: {}",
        f.loadavg_before, f.loadavg_after
    );
}
