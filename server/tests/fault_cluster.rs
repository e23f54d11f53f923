//! `kill -9` of one of three `hushd` processes sharing one PostgreSQL database while clients
//! send and sync through all of them.
//!
//! The cluster (one homeserver, three processes on 127.0.0.1, see `multi_common`) federates
//! with server B (127.0.0.3, SQLite). Devices on each process send to bob (on B) and to carol
//! and erin (on the cluster, syncing through processes 2 and 1); dave on B sends to carol; bob
//! syncs on B; gina (on the cluster) syncs through process 0, so every process serves a sync.
//! Mid-load the process that holds the federation lock for B is killed with SIGKILL; clients of the dead process move to the next one (as behind a load balancer), with
//! the same `txnId` for an unanswered send and the same `since` for an unanswered sync. Later
//! the process is started again. Afterwards every acknowledged message was delivered exactly
//! once, in order per sender device, and both outbound queues drain (another process took the
//! destination over).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fault_support;
mod fed_common;
mod multi_common;

use std::time::{Duration, Instant};

use fault_support::load::{
    assert_exactly_once_in_order, assert_queue_drains, register, Device, Endpoint, SendLoop,
    SyncLoop,
};
use fed_common::{Db, TestCa, TestServer, TestUser};
use multi_common::Cluster;

/// The process whose log says it holds the federation lock of `destination` (the first one
/// if none does yet).
fn owner(cluster: &Cluster, destination: &str) -> usize {
    cluster
        .procs
        .iter()
        .position(|p| {
            let log = p.log();
            let count = |what: &str| {
                log.lines()
                    .filter(|l| l.contains(what) && l.contains(destination))
                    .count()
            };
            p.running() && count("lock taken") > count("lock released")
        })
        .unwrap_or(0)
}

/// Rows left in the cluster's outbound queue (queued or in flight).
async fn cluster_backlog(database_url: &str) -> i64 {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(database_url).await.unwrap();
    let left = sqlx::query_scalar(
        "SELECT (SELECT COUNT(*) FROM federation_outbound) + \
         (SELECT COUNT(*) FROM federation_txn_inflight)",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    let _ = conn.close().await;
    left
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_one_of_three_processes_under_load() {
    let ca = TestCa::new();
    let mut cluster = Cluster::start(&ca, 3).await;
    let b = TestServer::start(&ca, "127.0.0.3", Db::Sqlite, "").await;
    let bases: Vec<String> = cluster.procs.iter().map(|p| p.base.clone()).collect();
    let on = |user: TestUser, first: usize| Device {
        endpoint: Endpoint::over(ca.client(), bases.clone(), first),
        user,
    };

    let alice = on(cluster.procs[0].register("alice").await, 0);
    let alice2 = on(cluster.procs[1].login("alice").await, 1);
    let frank = on(cluster.procs[2].register("frank").await, 2);
    let carol = on(cluster.procs[2].register("carol").await, 2);
    let erin = on(cluster.procs[1].register("erin").await, 1);
    let gina = on(cluster.procs[0].register("gina").await, 0);
    let bob = register(&b, "bob").await;
    let dave = register(&b, "dave").await;

    let syncs = [&bob, &carol, &erin, &gina].map(SyncLoop::start);
    let pace = Duration::from_millis(20);
    let targets = [
        bob.user.clone(),
        carol.user.clone(),
        erin.user.clone(),
        gina.user.clone(),
    ];
    let senders = [
        SendLoop::start(&alice, &targets, pace),
        SendLoop::start(&alice2, &targets, pace),
        SendLoop::start(&frank, &targets, pace),
        SendLoop::start(&dave, std::slice::from_ref(&carol.user), pace),
    ];
    let flow = |senders: &[SendLoop]| senders.iter().map(SendLoop::sent).collect::<Vec<_>>();
    let marks = flow(&senders);
    for (sender, mark) in senders.iter().zip(marks) {
        sender.wait_sent(mark + 10, Duration::from_secs(60)).await;
    }

    let victim = owner(&cluster, &b.name);
    eprintln!(
        "killing process {victim} (holds the federation lock for B: {})",
        {
            let log = cluster.procs[victim].log();
            log.contains("lock taken") && log.contains(&b.name)
        }
    );
    cluster.procs[victim].kill9();
    let marks = flow(&senders);
    for (sender, mark) in senders.iter().zip(marks) {
        // The survivors carry every client.
        sender.wait_sent(mark + 10, Duration::from_secs(60)).await;
    }
    cluster.procs[victim].launch().await;
    let marks = flow(&senders);
    for (sender, mark) in senders.iter().zip(marks) {
        sender.wait_sent(mark + 10, Duration::from_secs(60)).await;
    }

    let mut reports = Vec::new();
    for sender in senders {
        let from = sender.from.clone();
        reports.push((from, sender.finish().await));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = cluster_backlog(&cluster.database_url).await;
        if left == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{left} rows left in the queue");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_queue_drains(&b, &cluster.name, Duration::from_secs(60)).await;

    let from_cluster: Vec<_> = reports[..3]
        .iter()
        .map(|(from, r)| (from, r.acked.as_slice()))
        .collect();
    let mut at_carol = from_cluster.clone();
    at_carol.push((&reports[3].0, reports[3].1.acked.as_slice()));
    let expect = [
        ("bob", from_cluster.clone()),
        ("carol", at_carol),
        ("erin", from_cluster.clone()),
        ("gina", from_cluster),
    ];
    let mut client_failures: usize = reports.iter().map(|(_, r)| r.failures.len()).sum();
    for (sync, (who, senders)) in syncs.into_iter().zip(expect) {
        let total = senders.iter().map(|(_, acked)| acked.len()).sum();
        sync.wait_for(total, Duration::from_secs(60)).await;
        let (events, failures) = sync.finish().await;
        client_failures += failures.len();
        assert_exactly_once_in_order(who, &events, &senders);
    }
    eprintln!("client-side failed attempts (sends and syncs): {client_failures}");
    assert!(client_failures > 0, "the kill interrupted no client");
}
