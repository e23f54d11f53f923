//! A federation peer cut off by a TCP fault proxy while clients keep sending, then healed.
//!
//! Server A (127.0.0.2) reaches server B (127.0.0.3) only through the proxy (A pins B's name to
//! the proxy's address). Three devices on A keep sending to two devices on B, which keep
//! syncing. The proxy then drops (resets) or stalls (accepts, never forwards, so A's request
//! times out) every connection for `HUSH_FAULT_CUTOFF_SECS` (default 10 s; set it to 300 for
//! a five-minute partition). Throughout, every send gets a 200 (the message is in A's durable
//! queue); A sees the failures (retries > 0, backlog > 0). After healing, every message arrives
//! at B exactly once, in order per sender device, and A's queue drains. Both databases.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fault_support;
mod fed_common;

use std::time::Duration;

use fault_support::load::{
    addr_of, assert_exactly_once_in_order, assert_queue_drains, login, pin, queue_state, register,
    SendLoop, SyncLoop,
};
use fault_support::proxy::{FaultProxy, Mode};
use fed_common::{Db, TestCa, TestServer};

/// A's federation settings: pinned through the proxy, backoff capped at 2 s (the default cap
/// is one hour), and a 2 s request timeout so a stalled request fails quickly.
fn through_proxy(b: &TestServer, proxy: &FaultProxy) -> String {
    format!(
        "{}retry_min_ms = 200\nretry_max_ms = 2000\nrequest_timeout_secs = 2\n",
        pin(&b.name, &proxy.url())
    )
}

async fn cut_off(db: Db, mode: Mode) {
    let cutoff = fault_support::env_secs("HUSH_FAULT_CUTOFF_SECS", 10);
    let ca = TestCa::new();
    let b = TestServer::start(&ca, "127.0.0.3", db, "").await;
    let proxy = FaultProxy::start("127.0.0.3", addr_of(&b)).await;
    let a = TestServer::start(&ca, "127.0.0.2", db, &through_proxy(&b, &proxy)).await;

    let alice = register(&a, "alice").await;
    let alice2 = login(&a, &alice.user).await;
    let carol = register(&a, "carol").await;
    let bob = register(&b, "bob").await;
    let bob2 = login(&b, &bob.user).await;
    let targets = [bob.user.clone(), bob2.user.clone()];
    let sync_bob = SyncLoop::start(&bob);
    let sync_bob2 = SyncLoop::start(&bob2);
    let pace = Duration::from_millis(50);
    let senders = [&alice, &alice2, &carol].map(|d| SendLoop::start(d, &targets, pace));

    // Traffic flows before the fault.
    sync_bob.wait_for(3, Duration::from_secs(30)).await;
    assert!(sync_bob.received() >= 3, "no delivery before the fault");

    proxy.set(mode);
    let sent_before: usize = senders.iter().map(SendLoop::sent).sum();
    tokio::time::sleep(cutoff).await;
    let sent_during = senders.iter().map(SendLoop::sent).sum::<usize>() - sent_before;
    let state = queue_state(&a, &b.name);
    match mode {
        Mode::Drop => assert!(proxy.count(|s| &s.resets) > 0, "the proxy reset nothing"),
        Mode::Stall => assert!(proxy.count(|s| &s.stalls) > 0, "the proxy stalled nothing"),
        _ => unreachable!(),
    }
    assert!(sent_during > 0, "sends stopped during the partition");
    assert!(
        state.is_some_and(|(retries, backlog)| retries > 0 && backlog > 0),
        "A did not notice the partition: {state:?}"
    );

    proxy.set(Mode::Pass);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut reports = Vec::new();
    for sender in senders {
        let from = sender.from.clone();
        reports.push((from, sender.finish().await));
    }
    let total: usize = reports.iter().map(|(_, r)| r.acked.len()).sum();
    for (from, report) in &reports {
        assert!(
            report.failures.is_empty(),
            "{}: sends failed during the partition: {:?}",
            from.user_id,
            report.failures
        );
    }
    assert_queue_drains(&a, &b.name, Duration::from_secs(60)).await;
    sync_bob.wait_for(total, Duration::from_secs(60)).await;
    sync_bob2.wait_for(total, Duration::from_secs(60)).await;
    let expected: Vec<_> = reports
        .iter()
        .map(|(from, r)| (from, r.acked.as_slice()))
        .collect();
    let (events, _) = sync_bob.finish().await;
    assert_exactly_once_in_order("bob", &events, &expected);
    let (events, _) = sync_bob2.finish().await;
    assert_exactly_once_in_order("bob2", &events, &expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_peer_sqlite() {
    cut_off(Db::Sqlite, Mode::Drop).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_peer_postgres() {
    cut_off(Db::Postgres, Mode::Drop).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_peer_sqlite() {
    cut_off(Db::Sqlite, Mode::Stall).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_peer_postgres() {
    cut_off(Db::Postgres, Mode::Stall).await;
}
