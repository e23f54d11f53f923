//! Several `hushd` processes of one homeserver on one PostgreSQL database (issue #6, item 1).
//!
//! Real processes, a fresh database per test, clients talking to processes directly:
//! * a long-polling `/sync` on one process wakes for a send, a key claim and a device-list
//!   change handled by another, and after its listening connection was cut;
//! * the same txnId sent to two processes is delivered once;
//! * a token revoked through one process is refused by another at once (not after its token
//!   cache expires);
//! * a federation destination shared by three processes is sent by one at a time (a recording
//!   receiver sees at most one request at once and every EDU exactly once, in order), and when
//!   the sending process is killed with SIGKILL another takes over and drains the queue; an
//!   owner whose lock session the database ends stops sending and the queue still drains once.
//!
//! The only time limits are generous deadlines that turn a hang into a failure; a sync that
//! returns "before its 30 s timeout" is the functional proof that it was woken.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fed_common;
mod multi_common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fed_common::{TestCa, TestUser};
use multi_common::{events, next_batch, Cluster, CLUSTER_IP};
use serde_json::{json, Value};

/// Long-poll timeout used where a wake-up is expected.
const LONG_POLL_MS: u64 = 30_000;
/// A sync that returns before this was woken, not timed out.
const WOKEN_BEFORE: Duration = Duration::from_secs(15);

/// Long-polls `user` on process `p` of `cluster` in the background from `since`.
fn long_poll(
    cluster: &Cluster,
    p: usize,
    user: &TestUser,
    since: &str,
) -> tokio::task::JoinHandle<(Value, Duration)> {
    let base = cluster.procs[p].base.clone();
    let ca_client = cluster.long_poll_client.clone();
    let url = format!("{base}/_matrix/client/v3/sync?timeout={LONG_POLL_MS}&since={since}");
    let token = user.token.clone();
    tokio::spawn(async move {
        let started = Instant::now();
        let resp = ca_client.get(url).bearer_auth(token).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        (resp.json().await.unwrap(), started.elapsed())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_wakes_across_processes_and_txn_ids_hold_across_processes() {
    let ca = TestCa::new();
    let cluster = Cluster::start(&ca, 3).await;
    let [p0, p1, p2] = [&cluster.procs[0], &cluster.procs[1], &cluster.procs[2]];

    // Register on p0, log in on p1, send from p2; alice waits on p0.
    let alice = p0.register("alice").await;
    p0.register("bob").await;
    let bob = p1.login("bob").await;
    let first = p0.sync(&alice, None, 0).await;
    let since = next_batch(&first);

    let waiter = long_poll(&cluster, 0, &alice, &since);
    p0.wait_for_waiting_syncs(1).await;
    let to_alice =
        |seq: u64| json!({ alice.user_id.clone(): { alice.device_id.clone(): {"seq": seq} } });
    p2.send_to_device(&bob, "t1", to_alice(1)).await;
    let (answer, took) = waiter.await.unwrap();
    let got = events(&answer);
    assert_eq!(got.len(), 1, "{answer}");
    assert_eq!(got[0]["content"]["seq"], 1);
    assert_eq!(got[0]["sender"], bob.user_id.as_str());
    assert!(
        took < WOKEN_BEFORE,
        "the sync was not woken by the other process"
    );
    let since = next_batch(&answer);

    // The same txnId on two processes at once: both answer 200, one message is delivered.
    let (a, b) = tokio::join!(
        p1.send_to_device(&bob, "dup", to_alice(2)),
        p2.send_to_device(&bob, "dup", to_alice(2)),
    );
    assert_eq!((a, b), (200, 200));
    p0.send_to_device(&bob, "dup", to_alice(2)).await;
    let answer = p0.sync(&alice, Some(&since), 0).await;
    let got = events(&answer);
    assert_eq!(got.len(), 1, "delivered once: {answer}");
    assert_eq!(got[0]["content"]["seq"], 2);
    let since = next_batch(&answer);
    let answer = p1.sync(&alice, Some(&since), 0).await;
    assert!(events(&answer).is_empty(), "no duplicate later: {answer}");
    let since = next_batch(&answer);

    // A one-time key claimed through p2 wakes alice's sync on p0 (new key count).
    let (status, body) = p0
        .request(
            Some(&alice),
            reqwest::Method::POST,
            "/_matrix/client/v3/keys/upload",
            Some(json!({"one_time_keys": {"signed_curve25519:AAAAAQ": {
                "key": "otk-one", "signatures": {"@x:y": {"ed25519:D": "sig"}}
            }}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let waiter = long_poll(&cluster, 0, &alice, &since);
    p0.wait_for_waiting_syncs(1).await;
    let (status, body) = p2
        .request(
            Some(&bob),
            reqwest::Method::POST,
            "/_matrix/client/v3/keys/claim",
            Some(json!({"one_time_keys": {alice.user_id.clone(): {
                alice.device_id.clone(): "signed_curve25519"
            }}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.to_string().contains("otk-one"), "claimed: {body}");
    let (answer, took) = waiter.await.unwrap();
    assert!(
        took < WOKEN_BEFORE,
        "the claim on p2 did not wake p0: {answer}"
    );
    assert_eq!(
        answer["device_one_time_keys_count"]["signed_curve25519"]
            .as_u64()
            .unwrap_or(0),
        0,
        "{answer}"
    );
    let since = next_batch(&answer);

    // A device-list change on p1 (alice logs in a new device) wakes alice's sync on p0.
    let waiter = long_poll(&cluster, 0, &alice, &since);
    p0.wait_for_waiting_syncs(1).await;
    p1.login("alice").await;
    let (answer, took) = waiter.await.unwrap();
    assert!(
        took < WOKEN_BEFORE,
        "device-list change not seen across processes"
    );
    let changed = answer["device_lists"]["changed"].to_string();
    assert!(changed.contains(&alice.user_id), "{answer}");
    let since = next_batch(&answer);

    // Cut every LISTEN connection: the waiting sync is woken once (nothing missed in the gap
    // stays asleep), and cross-process wake-ups keep working after the reconnect.
    let waiter = long_poll(&cluster, 0, &alice, &since);
    p0.wait_for_waiting_syncs(1).await;
    let terminated = terminate_backends(&cluster.database_url, "LISTEN%").await;
    assert!(
        terminated >= 3,
        "one listener per process, found {terminated}"
    );
    let (answer, took) = waiter.await.unwrap();
    assert!(
        took < WOKEN_BEFORE,
        "a lost listener must wake its waiters once"
    );
    let since = next_batch(&answer);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !p0.log().contains("wake-up listener reconnected") {
        assert!(
            Instant::now() < deadline,
            "no reconnect logged:\n{}",
            p0.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let waiter = long_poll(&cluster, 0, &alice, &since);
    p0.wait_for_waiting_syncs(1).await;
    p2.send_to_device(&bob, "t3", to_alice(3)).await;
    let (answer, took) = waiter.await.unwrap();
    assert!(took < WOKEN_BEFORE, "wake-ups after a reconnect");
    assert_eq!(events(&answer).len(), 1, "{answer}");
    assert_eq!(events(&answer)[0]["content"]["seq"], 3);
}

/// A token revoked through one process is refused by another process that remembered it,
/// without waiting for its token cache to expire: the revocation reaches the other process as a
/// notification on the wake-up channel, ahead of anything committed after it. The test orders
/// events through that channel instead of timing them: a message sent through p0 after the
/// logout wakes a sync on p1 only after p1 processed every earlier notification, including the
/// revocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revoked_through_one_process_is_refused_by_the_others() {
    let ca = TestCa::new();
    let cluster = Cluster::start(&ca, 2).await;
    let [p0, p1] = [&cluster.procs[0], &cluster.procs[1]];
    let alice = p0.register("alice").await;
    let bob = p1.register("bob").await;
    let carol = p0.register("carol").await;
    // p1 resolves (and remembers) alice's token.
    let (status, body) = p1
        .request(
            Some(&alice),
            reqwest::Method::GET,
            "/_matrix/client/v3/account/whoami",
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // alice logs out through p0.
    let (status, body) = p0
        .request(
            Some(&alice),
            reqwest::Method::POST,
            "/_matrix/client/v3/logout",
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // A message sent through p0 after the logout wakes bob's sync on p1: p1 has handled every
    // notification committed before it.
    let since = next_batch(&p1.sync(&bob, None, 0).await);
    let waiter = long_poll(&cluster, 1, &bob, &since);
    p1.wait_for_waiting_syncs(1).await;
    p0.send_to_device(
        &carol,
        "after-logout",
        json!({ bob.user_id.clone(): { bob.device_id.clone(): {"seq": 1} } }),
    )
    .await;
    let (answer, took) = waiter.await.unwrap();
    assert_eq!(events(&answer).len(), 1, "{answer}");
    assert!(took < WOKEN_BEFORE, "the send on p0 did not wake p1");

    // So p1 refuses the revoked token now.
    let (status, body) = p1
        .request(
            Some(&alice),
            reqwest::Method::GET,
            "/_matrix/client/v3/account/whoami",
            None,
        )
        .await;
    assert_eq!(
        status, 401,
        "revoked token accepted by another process: {body}"
    );
    assert_eq!(body["errcode"], "M_UNKNOWN_TOKEN", "{body}");
}

/// Terminates the database sessions of `database_url` whose current query matches `pattern`
/// (SQL `LIKE`); returns how many.
async fn terminate_backends(database_url: &str, pattern: &str) -> i64 {
    use sqlx::Connection;
    let db = database_url.rsplit('/').next().unwrap().to_owned();
    let mut conn = sqlx::PgConnection::connect("postgres://postgres@127.0.0.1:5432/postgres")
        .await
        .unwrap();
    sqlx::query_scalar::<_, i64>(
        "SELECT COUNT(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = $1 AND query LIKE $2 AND pid <> pg_backend_pid()) t",
    )
    .bind(db)
    .bind(pattern)
    .fetch_one(&mut conn)
    .await
    .unwrap()
}

/// What the recording federation receiver saw.
#[derive(Default)]
struct Recorded {
    /// Accepted transactions in arrival order: `(txnId, seqs of its EDUs)`.
    accepted: Vec<(String, Vec<u64>)>,
    /// Requests refused while failing.
    refused: usize,
}

/// A federation receiver that records `PUT /send/{txnId}` and can fail on purpose.
struct Receiver {
    name: String,
    recorded: Arc<Mutex<Recorded>>,
    failing: Arc<AtomicBool>,
    /// Most *different* transactions in flight at once. The same txnId sent twice at once is
    /// allowed (ADR 0004: an owner that lost its lock session mid-request and the new owner
    /// both send the stored in-flight transaction, which the receiver deduplicates); two
    /// different transactions at once would mean two processes building transactions.
    max_concurrent: Arc<AtomicUsize>,
    _dir: tempfile::TempDir,
}

impl Receiver {
    async fn start(ca: &TestCa) -> Receiver {
        use axum::extract::{Path, State};
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = ca.issue(CLUSTER_IP, dir.path());
        let tls =
            hush_server::serve::load_tls(&hush_server::config::TlsConfig { cert, key }).unwrap();
        let listener = std::net::TcpListener::bind((CLUSTER_IP, 0)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let name = format!("{CLUSTER_IP}:{}", listener.local_addr().unwrap().port());
        let recorded = Arc::new(Mutex::new(Recorded::default()));
        let failing = Arc::new(AtomicBool::new(false));
        let max_concurrent = Arc::new(AtomicUsize::new(0));
        let current = Arc::new(Mutex::new(HashMap::new()));
        #[derive(Clone)]
        struct Ctx {
            recorded: Arc<Mutex<Recorded>>,
            failing: Arc<AtomicBool>,
            max_concurrent: Arc<AtomicUsize>,
            /// Requests in flight per txnId.
            current: Arc<Mutex<HashMap<String, usize>>>,
        }
        let ctx = Ctx {
            recorded: recorded.clone(),
            failing: failing.clone(),
            max_concurrent: max_concurrent.clone(),
            current,
        };
        /// One request counted in `current` until it ends, also when it ends by being dropped
        /// (its sender was killed and the connection closed mid-request): a dropped request
        /// that stayed counted would look like a transaction in flight forever.
        struct InFlight {
            current: Arc<Mutex<HashMap<String, usize>>>,
            txn_id: String,
        }
        impl Drop for InFlight {
            fn drop(&mut self) {
                let mut current = self.current.lock().unwrap();
                if let Some(n) = current.get_mut(&self.txn_id) {
                    *n -= 1;
                    if *n == 0 {
                        current.remove(&self.txn_id);
                    }
                }
            }
        }
        async fn send(
            State(ctx): State<Ctx>,
            Path(txn_id): Path<String>,
            axum::Json(body): axum::Json<Value>,
        ) -> (http::StatusCode, axum::Json<Value>) {
            let distinct = {
                let mut current = ctx.current.lock().unwrap();
                *current.entry(txn_id.clone()).or_insert(0) += 1;
                current.len()
            };
            let in_flight = InFlight {
                current: ctx.current.clone(),
                txn_id: txn_id.clone(),
            };
            ctx.max_concurrent.fetch_max(distinct, Ordering::SeqCst);
            // Hold the request a little so that two senders would overlap.
            tokio::time::sleep(Duration::from_millis(30)).await;
            drop(in_flight);
            if ctx.failing.load(Ordering::SeqCst) {
                ctx.recorded.lock().unwrap().refused += 1;
                return (
                    http::StatusCode::SERVICE_UNAVAILABLE,
                    axum::Json(json!({"errcode": "M_UNKNOWN", "error": "down"})),
                );
            }
            let seqs = body["edus"]
                .as_array()
                .map(|edus| {
                    edus.iter()
                        .flat_map(|edu| {
                            edu["content"]["messages"]
                                .as_object()
                                .into_iter()
                                .flat_map(|users| users.values())
                                .flat_map(|devices| {
                                    devices.as_object().into_iter().flat_map(|d| d.values())
                                })
                                .filter_map(|m| m["seq"].as_u64())
                                .collect::<Vec<_>>()
                        })
                        .collect()
                })
                .unwrap_or_default();
            ctx.recorded.lock().unwrap().accepted.push((txn_id, seqs));
            (http::StatusCode::OK, axum::Json(json!({"pdus": {}})))
        }
        let app = axum::Router::new()
            .route(
                "/_matrix/federation/v1/send/{txn_id}",
                axum::routing::put(send),
            )
            .with_state(ctx);
        let tls = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(tls));
        tokio::spawn(async move {
            let _ = axum_server::from_tcp_rustls(listener, tls)
                .serve(app.into_make_service())
                .await;
        });
        Receiver {
            name,
            recorded,
            failing,
            max_concurrent,
            _dir: dir,
        }
    }

    /// Every seq accepted, counting a retried txnId once (as a real receiver deduplicates).
    fn delivered(&self) -> Vec<u64> {
        let recorded = self.recorded.lock().unwrap();
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (txn_id, seqs) in &recorded.accepted {
            if seen.insert(txn_id.clone()) {
                out.extend(seqs.iter().copied());
            }
        }
        out
    }

    async fn wait_delivered(&self, n: usize, cluster: &Cluster) {
        let deadline = Instant::now() + Duration::from_secs(40);
        while self.delivered().len() < n {
            if Instant::now() > deadline {
                let logs: Vec<String> = cluster.procs.iter().map(|p| p.log()).collect();
                panic!(
                    "only {:?} delivered; logs:\n{}",
                    self.delivered(),
                    logs.join("\n-----\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The processes whose log says they hold the lock of `destination` right now.
fn owners(cluster: &Cluster, destination: &str) -> Vec<usize> {
    cluster
        .procs
        .iter()
        .enumerate()
        .filter(|(_, p)| p.running())
        .filter(|(_, p)| {
            let log = p.log();
            let mine = |what: &str| {
                log.lines()
                    .filter(|l| l.contains(what) && l.contains(destination))
                    .count()
            };
            mine("lock taken") > mine("lock released")
        })
        .map(|(i, _)| i)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sender_per_destination_and_takeover_after_kill9() {
    let ca = TestCa::new();
    let receiver = Receiver::start(&ca).await;
    let mut cluster = Cluster::start(&ca, 3).await;
    let alice = cluster.procs[0].register("alice").await;
    let remote_user = format!("@bob:{}", receiver.name);
    let message = |seq: u64| json!({ remote_user.clone(): { "*": {"seq": seq} } });

    // Phase 1: sends spread over the three processes are delivered once each, in order.
    for seq in 0..15u64 {
        let p = &cluster.procs[usize::try_from(seq).unwrap() % 3];
        p.send_to_device(&alice, &format!("a{seq}"), message(seq))
            .await;
    }
    receiver.wait_delivered(15, &cluster).await;
    assert_eq!(receiver.delivered(), (0..15).collect::<Vec<_>>());

    // Phase 2: the receiver fails, so the owner keeps its lock while backing off.
    receiver.failing.store(true, Ordering::SeqCst);
    for seq in 15..30u64 {
        let p = &cluster.procs[usize::try_from(seq).unwrap() % 3];
        p.send_to_device(&alice, &format!("a{seq}"), message(seq))
            .await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let owner = loop {
        let refused = receiver.recorded.lock().unwrap().refused;
        let owners = owners(&cluster, &receiver.name);
        assert!(owners.len() <= 1, "two owners at once: {owners:?}");
        if refused > 0 && owners.len() == 1 {
            break owners[0];
        }
        assert!(Instant::now() < deadline, "no owner is retrying");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    cluster.procs[owner].kill9();
    receiver.failing.store(false, Ordering::SeqCst);

    // Another process takes over and drains the queue.
    receiver.wait_delivered(30, &cluster).await;
    assert_eq!(receiver.delivered(), (0..30).collect::<Vec<_>>());
    assert_eq!(
        receiver.max_concurrent.load(Ordering::SeqCst),
        1,
        "two processes sent different transactions to the destination at the same time"
    );
    let takers = owners(&cluster, &receiver.name).len()
        + cluster
            .procs
            .iter()
            .filter(|p| p.running())
            .filter(|p| p.log().contains("lock released"))
            .count();
    assert!(takers >= 1, "a surviving process took the destination over");
    // The queue is empty and nothing is in flight.
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&cluster.database_url)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: i64 = sqlx::query_scalar(
            "SELECT (SELECT COUNT(*) FROM federation_outbound) + \
             (SELECT COUNT(*) FROM federation_txn_inflight)",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        if left == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{left} rows left in the queue");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Phase 3: the owner loses its lock session (the database ends it) while backing off: it
    // stops sending, and the destination is taken again (by any process) and drained.
    receiver.failing.store(true, Ordering::SeqCst);
    let survivor = cluster.procs.iter().position(|p| p.running()).unwrap();
    for seq in 30..40u64 {
        cluster.procs[survivor]
            .send_to_device(&alice, &format!("a{seq}"), message(seq))
            .await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let refused_before = receiver.recorded.lock().unwrap().refused;
    while owners(&cluster, &receiver.name).len() != 1
        || receiver.recorded.lock().unwrap().refused == refused_before
    {
        assert!(Instant::now() < deadline, "no owner is retrying");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let terminated = terminate_lock_sessions(&cluster.database_url).await;
    assert!(terminated >= 1, "the owner's lock session");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cluster
        .procs
        .iter()
        .any(|p| p.running() && p.log().contains("lost the federation lock session"))
    {
        assert!(Instant::now() < deadline, "the session loss went unnoticed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    receiver.failing.store(false, Ordering::SeqCst);
    receiver.wait_delivered(40, &cluster).await;
    assert_eq!(receiver.delivered(), (0..40).collect::<Vec<_>>());
    assert_eq!(
        receiver.max_concurrent.load(Ordering::SeqCst),
        1,
        "two processes sent different transactions at the same time"
    );

    // Nothing more arrives later (no duplicate transaction from a second sender).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.delivered(), (0..40).collect::<Vec<_>>());
}

/// Terminates every federation lock session on the cluster's database (recognised by the
/// queries only those sessions run); returns how many.
async fn terminate_lock_sessions(database_url: &str) -> i64 {
    use sqlx::Connection;
    let db = database_url.rsplit('/').next().unwrap().to_owned();
    let mut conn = sqlx::PgConnection::connect("postgres://postgres@127.0.0.1:5432/postgres")
        .await
        .unwrap();
    sqlx::query_scalar::<_, i64>(
        "SELECT COUNT(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = $1 AND pid <> pg_backend_pid() AND (query LIKE '%advisory%' \
         OR query = 'SELECT 1' OR query LIKE 'SET tcp_keepalives%')) t",
    )
    .bind(db)
    .fetch_one(&mut conn)
    .await
    .unwrap()
}
