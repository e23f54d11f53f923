//! Batched sending through the engine (`Client::send_many`), against a real `hushd` (HTTPS,
//! SQLite) and the real `hush` binary on the receiving side: batches reach every device in
//! order exactly once, and a batch that the server refused stays queued with its transaction
//! ID, is re-sent by the next run and is shown once even when a copy already got through.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Db, Device, Server, ServerOptions, TestCa};
use hush_client::engine::{ClientError, ENCRYPTED_EVENT};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn texts(n: usize, tag: &str) -> Vec<String> {
    (0..n).map(|i| format!("{tag} message {i:04}")).collect()
}

/// Alice's stored conversation with `peer`: `(body, state)`.
fn history(alice: &Device, peer: &Device) -> Vec<(String, String)> {
    alice
        .run(&["history", &peer.user_id, "--json", "--limit", "100000"])
        .ok()
        .json_lines()
        .iter()
        .map(|v| {
            (
                v["body"].as_str().unwrap().to_owned(),
                v["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn batches_reach_every_device_in_order_exactly_once() {
    let ca = TestCa::new();
    let server = Server::start_local(&ca);
    let data = tempfile::tempdir().unwrap();
    let alice = Device::register(data.path(), "alice", &server, Some(&ca), "alice");
    let alice2 = alice.login_new_device("alice2", &[]);
    let bob = Device::register(data.path(), "bob", &server, Some(&ca), "bob");
    let bob2 = bob.login_new_device("bob2", &[]);
    // 300 messages to three devices: several batches, each well under the request budget,
    // one request at a time (as the CLI sends), so the order is kept.
    let sent = texts(300, "batched");
    let rt = runtime();
    let reports = rt.block_on(async {
        let client = alice.open_client().await;
        let reports = client.send_many(&bob.user_id, &sent, 1).await.unwrap();
        client.into_store().close().await;
        reports
    });
    assert_eq!(reports.len(), sent.len());
    assert!(reports.iter().all(|r| r.devices == 3));
    for device in [&bob, &bob2] {
        let got = device.receive();
        assert_eq!(
            Device::bodies(&got),
            sent,
            "{} got every message",
            device.profile
        );
        assert!(got.iter().all(|m| m["from"] == alice.user_id.as_str()));
        assert!(
            Device::bodies(&device.receive()).is_empty(),
            "nothing twice"
        );
    }
    // Alice's other device files its copies under the conversation with Bob.
    let copies = alice2.receive();
    assert_eq!(Device::bodies(&copies), sent);
    assert!(copies
        .iter()
        .all(|m| m["peer"] == bob.user_id.as_str() && m["outgoing"] == true));
    let stored = history(&alice, &bob);
    assert_eq!(
        stored.iter().map(|(b, _)| b.clone()).collect::<Vec<_>>(),
        sent
    );
    assert!(stored.iter().all(|(_, state)| state == "sent"));

    // With several requests in flight, batches may arrive in any order (each one in order);
    // still every message arrives exactly once.
    let more = texts(300, "windowed");
    rt.block_on(async {
        let client = alice.open_client().await;
        client.send_many(&bob.user_id, &more, 4).await.unwrap();
        client.into_store().close().await;
    });
    let mut got = Device::bodies(&bob.receive());
    got.sort();
    assert_eq!(got, more);
    assert!(Device::bodies(&bob.receive()).is_empty(), "nothing twice");
}

#[test]
fn a_refused_batch_stays_queued_and_is_shown_once_after_a_resend() {
    let ca = TestCa::new();
    // Bob's device may hold at most 3 undelivered messages: with 3 waiting, every request
    // to him is refused (429, nothing stored) until he syncs.
    let server = Server::start(ServerOptions {
        ca: Some(&ca),
        db: Db::Sqlite,
        ip: "127.0.0.1",
        extra: "[limits]\nmax_mailbox_per_device = 3\n".into(),
    });
    let data = tempfile::tempdir().unwrap();
    let alice = Device::register(data.path(), "alice", &server, Some(&ca), "alice");
    let bob = Device::register(data.path(), "bob", &server, Some(&ca), "bob");
    for i in 0..3 {
        alice.send(&bob, &format!("warm-up {i}")).ok();
    }
    let sent = texts(80, "queued");
    let rt = runtime();
    rt.block_on(async {
        let client = alice.open_client().await;
        let refused = client.send_many(&bob.user_id, &sent, 1).await;
        assert!(
            matches!(refused, Err(ClientError::Queued(_))),
            "{refused:?}"
        );
        let queued = client.store().outbox().await.unwrap();
        let ids: usize = queued.iter().map(|(_, ids, _)| ids.len()).sum();
        assert!(queued.len() >= 2, "several batches queued");
        assert_eq!(ids, sent.len(), "every message is queued");
        client.into_store().close().await;
    });
    assert_eq!(
        Device::bodies(&bob.receive()),
        ["warm-up 0", "warm-up 1", "warm-up 2"]
    );
    rt.block_on(async {
        // The server accepts the first batch, but Alice "crashes" before recording that:
        // the request is made with the queued transaction ID and the outbox is left alone.
        let client = alice.open_client().await;
        let queued = client.store().outbox().await.unwrap();
        let (txn_id, _, messages) = &queued[0];
        client
            .api()
            .send_to_device(ENCRYPTED_EVENT, txn_id, messages)
            .await
            .unwrap();
        client.into_store().close().await;
        // The next run re-sends everything queued with the same transaction IDs.
        let client = alice.open_client().await;
        assert_eq!(client.flush_outbox().await.unwrap(), sent.len());
        assert!(client.store().outbox().await.unwrap().is_empty());
        client.into_store().close().await;
    });
    let got = bob.receive();
    assert_eq!(Device::bodies(&got), sent, "in order, exactly once");
    assert!(Device::bodies(&bob.receive()).is_empty());
    let stored = history(&alice, &bob);
    assert_eq!(stored.len(), 3 + sent.len());
    assert!(stored.iter().all(|(_, state)| state == "sent"));
}
