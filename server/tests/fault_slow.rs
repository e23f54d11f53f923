//! A slow receiver: a large backlog queued while the peer was unreachable, then delivered
//! through a link throttled to 32 KiB/s per connection and direction, while the recipient
//! syncs. Everything arrives exactly once, in order per sender device, and the queue drains.
//! `HUSH_FAULT_SLOW_MESSAGES` sets the backlog per sender device (default 250, four devices).
//! Both databases.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fault_support;
mod fed_common;

use std::time::Duration;

use fault_support::load::{
    addr_of, assert_exactly_once_in_order, assert_queue_drains, login, pin, queue_state, register,
    SendLoop, SyncLoop,
};
use fault_support::proxy::{FaultProxy, Mode};
use fed_common::{Db, TestCa, TestServer, TestUser};

async fn slow_receiver(db: Db) {
    let per_device: u64 = std::env::var("HUSH_FAULT_SLOW_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(250);
    let ca = TestCa::new();
    let b = TestServer::start(&ca, "127.0.0.3", db, "").await;
    let proxy = FaultProxy::start("127.0.0.3", addr_of(&b)).await;
    let extra = format!(
        "{}retry_min_ms = 200\nretry_max_ms = 2000\n",
        pin(&b.name, &proxy.url())
    );
    let a = TestServer::start(&ca, "127.0.0.2", db, &extra).await;

    let alice = register(&a, "alice").await;
    let alice2 = login(&a, &alice.user).await;
    let carol = register(&a, "carol").await;
    let carol2 = login(&a, &carol.user).await;
    let bob = register(&b, "bob").await;
    let targets = [bob.user.clone()];

    // The backlog builds while B is unreachable.
    proxy.set(Mode::Drop);
    let senders = [&alice, &alice2, &carol, &carol2]
        .map(|d| SendLoop::start_limited(d, &targets, Duration::ZERO, per_device));
    let mut reports = Vec::new();
    for sender in senders {
        sender
            .wait_sent(per_device as usize, Duration::from_secs(120))
            .await;
        let from = sender.from.clone();
        reports.push((from, sender.finish().await));
    }
    let total: usize = reports.iter().map(|(_, r)| r.acked.len()).sum();
    let state = queue_state(&a, &b.name);
    assert!(
        state.is_some_and(|(_, backlog)| backlog >= i64::try_from(total).unwrap() - 100),
        "backlog not queued: {state:?} for {total}"
    );

    // B heals but is slow; bob syncs while the backlog trickles in.
    let sync_bob = SyncLoop::start(&bob);
    proxy.set(Mode::Slow {
        bytes_per_sec: 32 * 1024,
    });
    sync_bob.wait_for(total, Duration::from_secs(120)).await;
    assert_queue_drains(&a, &b.name, Duration::from_secs(60)).await;
    assert!(
        proxy.count(|s| &s.slow_bytes) > 100_000,
        "the backlog did not go through the throttle"
    );
    let expected: Vec<_> = reports
        .iter()
        .map(|(from, r)| (from, r.acked.as_slice()))
        .collect();
    let (events, _) = sync_bob.finish().await;
    assert_exactly_once_in_order("bob", &events, &expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_receiver_sqlite() {
    slow_receiver(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_receiver_postgres() {
    slow_receiver(Db::Postgres).await;
}

/// The exactly-once check itself rejects a duplicate, a loss and a reordering.
#[test]
fn the_check_catches_duplicates_losses_and_reordering() {
    let alice = TestUser {
        user_id: "@alice:a".to_owned(),
        device_id: "D1".to_owned(),
        token: String::new(),
    };
    let event = |seq: u64| serde_json::json!({"type": "m.test", "sender": "@alice:a", "content": {"seq": seq, "dev": "D1"}});
    let acked = [1, 2, 3];
    let check = |seqs: &[u64]| {
        let events: Vec<_> = seqs.iter().map(|s| event(*s)).collect();
        std::panic::catch_unwind(|| {
            assert_exactly_once_in_order("t", &events, &[(&alice, &acked)]);
        })
        .is_ok()
    };
    assert!(check(&[1, 2, 3]));
    assert!(!check(&[1, 2, 2, 3]), "duplicate");
    assert!(!check(&[1, 3]), "loss");
    assert!(!check(&[1, 3, 2]), "reordering");
}
