//! `kill -9` of each server while clients send and sync through it.
//!
//! Servers A and B federate directly. Two devices on A send to bob (on B) and carol (on A);
//! dave on B sends to carol (on A) and erin (on B); bob, carol and erin keep long-polling.
//! Mid-load A is killed with SIGKILL and restarted, then B. Clients retry each send with the
//! same `txnId` until it gets a 200, and each sync with the same `since`, as real clients do.
//! Afterwards every acknowledged message was delivered exactly once, in order per sender
//! device, and both outbound queues drain. (federation_restart.rs covers a kill with a queue
//! but no client traffic.) Both databases.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fault_support;
mod fed_common;

use std::time::Duration;

use fault_support::load::{
    assert_exactly_once_in_order, assert_queue_drains, login, register, SendLoop, SyncLoop,
};
use fed_common::{Db, TestCa, TestServer};

/// Waits until every sender acknowledged `more` messages beyond its count now.
async fn let_traffic_flow(senders: &[SendLoop], more: usize) {
    let marks: Vec<usize> = senders.iter().map(SendLoop::sent).collect();
    for (sender, mark) in senders.iter().zip(marks) {
        sender.wait_sent(mark + more, Duration::from_secs(60)).await;
    }
}

async fn kill_during_load(db: Db) {
    let ca = TestCa::new();
    let mut a = TestServer::start(&ca, "127.0.0.2", db, "").await;
    let mut b = TestServer::start(&ca, "127.0.0.3", db, "").await;

    let alice = register(&a, "alice").await;
    let alice2 = login(&a, &alice.user).await;
    let carol = register(&a, "carol").await;
    let bob = register(&b, "bob").await;
    let dave = register(&b, "dave").await;
    let erin = register(&b, "erin").await;

    let syncs = [&bob, &carol, &erin].map(SyncLoop::start);
    let pace = Duration::from_millis(20);
    let to_bob_carol = [bob.user.clone(), carol.user.clone()];
    let to_carol_erin = [carol.user.clone(), erin.user.clone()];
    let senders = [
        SendLoop::start(&alice, &to_bob_carol, pace),
        SendLoop::start(&alice2, &to_bob_carol, pace),
        SendLoop::start(&dave, &to_carol_erin, pace),
    ];

    let_traffic_flow(&senders, 10).await;
    a.kill9();
    tokio::time::sleep(Duration::from_millis(700)).await;
    a.launch().await;
    let_traffic_flow(&senders, 10).await;
    b.kill9();
    tokio::time::sleep(Duration::from_millis(700)).await;
    b.launch().await;
    let_traffic_flow(&senders, 10).await;

    let mut reports = Vec::new();
    for sender in senders {
        let from = sender.from.clone();
        reports.push((from, sender.finish().await));
    }
    let send_failures: usize = reports.iter().map(|(_, r)| r.failures.len()).sum();
    assert!(send_failures > 0, "the kills did not interrupt any send");
    assert_queue_drains(&a, &b.name, Duration::from_secs(60)).await;
    assert_queue_drains(&b, &a.name, Duration::from_secs(60)).await;

    let (from_alice, from_alice2, from_dave) = (&reports[0], &reports[1], &reports[2]);
    let alices = [
        (&from_alice.0, from_alice.1.acked.as_slice()),
        (&from_alice2.0, from_alice2.1.acked.as_slice()),
    ];
    let at_carol = [
        alices[0],
        alices[1],
        (&from_dave.0, from_dave.1.acked.as_slice()),
    ];
    let at_erin = [(&from_dave.0, from_dave.1.acked.as_slice())];
    let expect: [(&str, &[_]); 3] = [("bob", &alices), ("carol", &at_carol), ("erin", &at_erin)];
    let mut sync_failures = 0;
    for (sync, (who, senders)) in syncs.into_iter().zip(expect) {
        let total = senders.iter().map(|(_, acked)| acked.len()).sum();
        sync.wait_for(total, Duration::from_secs(60)).await;
        let (events, failures) = sync.finish().await;
        sync_failures += failures.len();
        assert_exactly_once_in_order(who, &events, senders);
    }
    assert!(sync_failures > 0, "the kills did not interrupt any sync");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_each_server_under_load_sqlite() {
    kill_during_load(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_each_server_under_load_postgres() {
    kill_during_load(Db::Postgres).await;
}
