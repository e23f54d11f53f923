//! The 30-day rule for unanswered sessions (docs/protocol.md §7) end to end, with the engine's
//! clock moved ahead: Alice (the library `Client` with a shifted [`Clock`]) writes to Bob (the
//! real `hush` binary, system time) on a real `hushd`, Bob never answers, and Alice writes
//! again days later. After more than 30 days Alice claims a fresh bundle and starts a new
//! session; within 30 days she keeps the first one. Bob decrypts everything either way.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{Device, Server, TestCa};
use hush_client::clock::{Clock, TimeShift};
use hush_client::engine::Client;
use hush_crypto::{Curve25519PublicKey, SessionRecord};

const DAY: Duration = Duration::from_secs(86_400);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The session record `client` keeps for the only device of `user`.
async fn record_with(client: &Client, user: &str) -> SessionRecord {
    let store = client.store();
    let mut tx = store.begin().await.unwrap();
    let pins = store.pinned_devices(&mut tx, user).await.unwrap();
    assert_eq!(pins.len(), 1, "{user} has one device");
    let record = store
        .record(&mut tx, user, &pins[0].device_id)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    record
}

fn base_key(record: &SessionRecord) -> Curve25519PublicKey {
    *record.active().expect("an active session").base_key()
}

/// What one run of the scenario showed.
struct Seen {
    /// Alice's sessions with Bob's device: the handshake of the first message, of the second,
    /// and how many inactive sessions she keeps after the second.
    first_base: Curve25519PublicKey,
    second_base: Curve25519PublicKey,
    alice_inactive: usize,
    /// Bob's sessions with Alice's device after receiving both: active plus inactive.
    bob_sessions: usize,
    /// The messages Bob shows, and their timestamps (ms).
    bodies: Vec<String>,
    stamps: Vec<u64>,
}

/// Alice writes, Bob does not answer, Alice's clock moves `days` ahead, Alice writes again;
/// then Bob receives.
fn unanswered_then_later(days: u32) -> Seen {
    let ca = TestCa::new();
    let server = Server::start_local(&ca);
    let data = tempfile::tempdir().unwrap();
    let alice = Device::register(data.path(), "alice", &server, Some(&ca), "alice");
    let bob = Device::register(data.path(), "bob", &server, Some(&ca), "bob");
    let rt = runtime();
    let shift = TimeShift::new();
    let (first_base, second_base, alice_inactive) = rt.block_on(async {
        let client = alice.open_client().await.with_clock(Clock::shifted(&shift));
        client.send_text(&bob.user_id, "before").await.unwrap();
        let first = record_with(&client, &bob.user_id).await;
        assert!(
            first.active().unwrap().has_pending_prekey(),
            "Bob has not answered"
        );
        shift.advance(DAY * days);
        client.send_text(&bob.user_id, "after").await.unwrap();
        let second = record_with(&client, &bob.user_id).await;
        assert!(second.active().unwrap().has_pending_prekey());
        client.into_store().close().await;
        (base_key(&first), base_key(&second), second.inactive_count())
    });
    let got = bob.receive();
    assert!(
        got.iter().all(|v| v["type"] != "notice"),
        "Bob decrypted everything: {got:?}"
    );
    assert!(Device::bodies(&bob.receive()).is_empty(), "nothing twice");
    let bob_sessions = rt.block_on(async {
        let client = bob.open_client().await;
        let record = record_with(&client, &alice.user_id).await;
        client.into_store().close().await;
        usize::from(record.active().is_some()) + record.inactive_count()
    });
    let messages: Vec<_> = got.iter().filter(|v| v["type"] == "message").collect();
    Seen {
        first_base,
        second_base,
        alice_inactive,
        bob_sessions,
        bodies: Device::bodies(&got),
        stamps: messages.iter().map(|v| v["ts"].as_u64().unwrap()).collect(),
    }
}

#[test]
fn an_unanswered_session_is_replaced_after_30_days_and_both_messages_decrypt() {
    let seen = unanswered_then_later(31);
    assert_ne!(
        seen.second_base, seen.first_base,
        "a new bundle was claimed and a new handshake made"
    );
    assert_eq!(
        seen.alice_inactive, 1,
        "the stale session is kept for a late answer"
    );
    assert_eq!(seen.bob_sessions, 2, "Bob accepted two handshakes");
    assert_eq!(seen.bodies, ["before", "after"]);
    // Alice's clock also dates her messages.
    assert!(seen.stamps[1] - seen.stamps[0] >= 31 * 86_400_000);
}

#[test]
fn an_unanswered_session_is_reused_within_30_days() {
    let seen = unanswered_then_later(29);
    assert_eq!(seen.second_base, seen.first_base, "the same session");
    assert_eq!(seen.alice_inactive, 0);
    assert_eq!(seen.bob_sessions, 1, "Bob saw one handshake");
    assert_eq!(seen.bodies, ["before", "after"]);
    assert!(seen.stamps[1] - seen.stamps[0] >= 29 * 86_400_000);
}
