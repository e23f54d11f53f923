//! PostgreSQL stopped (immediate shutdown, as in a crash) and started again during load.
//!
//! Server A runs on a private PostgreSQL instance (never the shared cluster on :5432) that the
//! test stops for `HUSH_FAULT_PG_DOWN_SECS` (default 5) while two devices on A send to carol
//! (on A) and bob (on B, SQLite) and dave on B sends to carol; carol and bob keep syncing.
//! While the database is down, clients of A get only retryable failures: a Matrix-shaped 5xx
//! (`M_UNKNOWN`; at least one `503`, the answer for an unreachable database) or no answer, never a 200 for a message that was not stored (a false 200 would
//! show up as a missing message). After PostgreSQL is back, hushd recovers without a restart,
//! every acknowledged message is delivered exactly once in order per sender device, and both
//! outbound queues drain.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fault_support;
mod fed_common;

use std::time::Duration;

use fault_support::load::{
    assert_exactly_once_in_order, assert_queue_drains, login, register, Failure, SendLoop, SyncLoop,
};
use fault_support::pg::PrivatePg;
use fed_common::{Db, TestCa, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_during_load() {
    let down = fault_support::env_secs("HUSH_FAULT_PG_DOWN_SECS", 5);
    let mut pg = PrivatePg::start();
    let url = pg.create_database("hush_fault").await;
    let ca = TestCa::new();
    let a = TestServer::start_on(&ca, "127.0.0.2", Some(url), "", "").await;
    let b = TestServer::start(&ca, "127.0.0.3", Db::Sqlite, "").await;

    let alice = register(&a, "alice").await;
    let alice2 = login(&a, &alice.user).await;
    let carol = register(&a, "carol").await;
    let bob = register(&b, "bob").await;
    let dave = register(&b, "dave").await;

    let sync_carol = SyncLoop::start(&carol);
    let sync_bob = SyncLoop::start(&bob);
    let pace = Duration::from_millis(20);
    let targets = [carol.user.clone(), bob.user.clone()];
    let senders = [
        SendLoop::start(&alice, &targets, pace),
        SendLoop::start(&alice2, &targets, pace),
        SendLoop::start(&dave, std::slice::from_ref(&carol.user), pace),
    ];
    for sender in &senders {
        sender.wait_sent(10, Duration::from_secs(60)).await;
    }

    pg.stop();
    tokio::time::sleep(down).await;
    pg.start_again();
    let marks: Vec<usize> = senders.iter().map(SendLoop::sent).collect();
    for (sender, mark) in senders.iter().zip(marks) {
        // hushd recovers by itself: sends succeed again.
        sender.wait_sent(mark + 10, Duration::from_secs(90)).await;
    }

    let mut reports = Vec::new();
    for sender in senders {
        let from = sender.from.clone();
        reports.push((from, sender.finish().await));
    }
    assert_queue_drains(&a, &b.name, Duration::from_secs(60)).await;
    assert_queue_drains(&b, &a.name, Duration::from_secs(60)).await;

    let alices = [
        (&reports[0].0, reports[0].1.acked.as_slice()),
        (&reports[1].0, reports[1].1.acked.as_slice()),
    ];
    let at_carol = [
        alices[0],
        alices[1],
        (&reports[2].0, reports[2].1.acked.as_slice()),
    ];
    let carol_total = at_carol.iter().map(|(_, a)| a.len()).sum();
    sync_carol
        .wait_for(carol_total, Duration::from_secs(60))
        .await;
    let (events, carol_failures) = sync_carol.finish().await;
    assert_exactly_once_in_order("carol", &events, &at_carol);
    let bob_total = alices.iter().map(|(_, a)| a.len()).sum();
    sync_bob.wait_for(bob_total, Duration::from_secs(60)).await;
    let (events, _) = sync_bob.finish().await;
    assert_exactly_once_in_order("bob", &events, &alices);

    // What A's clients saw while the database was down.
    let seen_by_a: Vec<&Failure> = reports[0]
        .1
        .failures
        .iter()
        .chain(&reports[1].1.failures)
        .chain(&carol_failures)
        .collect();
    for failure in &seen_by_a {
        assert!(failure.is_retryable_shape(), "not retryable: {failure:?}");
    }
    let server_errors = seen_by_a
        .iter()
        .filter(|f| matches!(f, Failure::Http(..)))
        .count();
    let acked: usize = reports.iter().map(|(_, r)| r.acked.len()).sum();
    eprintln!(
        "acknowledged {acked}; while PostgreSQL was down A's clients saw {server_errors} \
         server errors ({} of them 503) and {} transport failures; example: {:?}",
        seen_by_a
            .iter()
            .filter(|f| matches!(f, Failure::Http(503, _)))
            .count(),
        seen_by_a.len() - server_errors,
        seen_by_a.iter().find(|f| matches!(f, Failure::Http(..)))
    );
    assert!(
        server_errors > 0,
        "no client saw the outage as a server error: {seen_by_a:?}"
    );
    // An unreachable database is answered with the retryable 503 (`Retry-After`), not a 500.
    let unavailable = seen_by_a
        .iter()
        .filter(|f| matches!(f, Failure::Http(503, body) if body["errcode"] == "M_UNKNOWN"))
        .count();
    assert!(
        unavailable > 0,
        "no 503 M_UNKNOWN while the database was down: {seen_by_a:?}"
    );
    drop(pg);
}
