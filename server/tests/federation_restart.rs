//! Durability of the outbound queue: a destination that was down gets everything exactly once
//! (and its backoff ends as soon as it contacts us), and a sender killed with SIGKILL mid-queue
//! loses and duplicates nothing after a restart. The kill test runs on SQLite and PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fed_common;

use std::time::Duration;

use fed_common::{seqs, Db, TestCa, TestServer, TestUser};
use futures::stream::{self, StreamExt};
use serde_json::json;

/// `(retries, next_attempt_ms, backlog)` of `destination` in `hushd admin federation list`.
fn admin_state(server: &TestServer, destination: &str) -> Option<(i64, i64, i64)> {
    let out = server.hushd(&["admin", "federation", "list"]);
    assert!(
        out.status.success(),
        "{}",
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
    Some((
        field("retries="),
        field("next_attempt_ms="),
        field("backlog="),
    ))
}

async fn send_many(
    server: &TestServer,
    from: &TestUser,
    to: &TestUser,
    range: std::ops::RangeInclusive<u64>,
) {
    stream::iter(range)
        .for_each_concurrent(16, |seq| async move {
            server
                .send_to_device(
                    from,
                    &format!("m{seq}"),
                    json!({to.user_id.clone(): {to.device_id.clone(): {"seq": seq}}}),
                )
                .await;
        })
        .await;
}

fn now_ms() -> i64 {
    i64::try_from(hush_federation::keys::unix_millis_now()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_destination_receives_everything_once() {
    let ca = TestCa::new();
    // A long first backoff: only the contact from B can explain a quick delivery.
    let slow = "retry_min_ms = 10000\nretry_max_ms = 60000\n";
    let a = TestServer::start(&ca, "127.0.0.2", Db::Sqlite, slow).await;
    let mut b = TestServer::start(&ca, "127.0.0.3", Db::Sqlite, "").await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;

    b.stop();
    send_many(&a, &alice, &bob, 1..=60).await;
    // A has tried, failed and is backing off with the messages queued.
    let mut state = None;
    for _ in 0..50 {
        state = admin_state(&a, &b.name);
        if state.is_some_and(|(retries, _, _)| retries > 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (retries, next_attempt, backlog) = state.expect("destination listed");
    assert!(
        retries > 0 && backlog == 60,
        "retries={retries} backlog={backlog}"
    );
    assert!(next_attempt > now_ms() + 2_000, "backing off");

    b.launch().await;
    // B contacts A (a message for alice): A ends its backoff for B at once.
    b.send_to_device(
        &bob,
        "ping",
        json!({alice.user_id.clone(): {"*": {"seq": 0}}}),
    )
    .await;
    let got = b.collect(&bob, 60, Duration::from_secs(8)).await;
    let arrived = now_ms();
    assert_eq!(seqs(&got), (1..=60).collect::<Vec<_>>(), "exactly once");
    assert!(
        arrived < next_attempt,
        "delivered before the backoff would have ended"
    );
    let after = admin_state(&a, &b.name);
    assert!(
        after.is_none_or(|(r, _, backlog)| r == 0 && backlog == 0),
        "{after:?}"
    );
}

async fn kill_mid_queue(db: Db) {
    let ca = TestCa::new();
    let mut a = TestServer::start(&ca, "127.0.0.2", db, "").await;
    let mut b = TestServer::start(&ca, "127.0.0.3", db, "").await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;

    // Part one is delivered while B is up, part two queues while B is down; A is killed while
    // a transaction is in flight and the queue is not empty.
    send_many(&a, &alice, &bob, 1..=150).await;
    b.stop();
    send_many(&a, &alice, &bob, 151..=300).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.kill9();
    let (_, _, backlog) = admin_state(&a, &b.name).expect("queued for B");
    assert!(backlog > 0, "the kill happened with a queue");
    b.launch().await;
    a.launch().await;
    let got = b.collect(&bob, 300, Duration::from_secs(15)).await;
    assert_eq!(
        seqs(&got),
        (1..=300).collect::<Vec<_>>(),
        "nothing lost or duplicated"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_killed_mid_queue_sqlite() {
    kill_mid_queue(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_killed_mid_queue_postgres() {
    kill_mid_queue(Db::Postgres).await;
}
