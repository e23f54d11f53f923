//! `[federation] allow` and `deny` are honoured in both directions.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fed_common;

use std::time::Duration;

use fed_common::{federation_request, seqs, to_device_txn, Db, TestCa, TestServer};
use reqwest::Method;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_and_deny_lists() {
    let ca = TestCa::new();
    // A refuses C; B talks only to A; C has no lists.
    let a = TestServer::start(&ca, "127.0.0.2", Db::Sqlite, "deny = [\"127.0.0.4\"]\n").await;
    let b = TestServer::start(&ca, "127.0.0.3", Db::Sqlite, "allow = [\"127.0.0.2\"]\n").await;
    let c = TestServer::start(&ca, "127.0.0.4", Db::Sqlite, "").await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let carol = c.register("carol").await;

    // Refused directions.
    a.send_to_device(
        &alice,
        "1",
        json!({carol.user_id.clone(): {"*": {"seq": 1}}}),
    )
    .await;
    c.send_to_device(
        &carol,
        "2",
        json!({alice.user_id.clone(): {"*": {"seq": 2}}}),
    )
    .await;
    c.send_to_device(&carol, "3", json!({bob.user_id.clone(): {"*": {"seq": 3}}}))
        .await;
    b.send_to_device(&bob, "4", json!({carol.user_id.clone(): {"*": {"seq": 4}}}))
        .await;
    // Allowed directions.
    a.send_to_device(&alice, "5", json!({bob.user_id.clone(): {"*": {"seq": 5}}}))
        .await;
    b.send_to_device(&bob, "6", json!({alice.user_id.clone(): {"*": {"seq": 6}}}))
        .await;

    assert_eq!(
        seqs(&b.collect(&bob, 1, Duration::from_secs(8)).await),
        vec![5]
    );
    assert_eq!(
        seqs(&a.collect(&alice, 1, Duration::from_secs(8)).await),
        vec![6]
    );
    // Give the refused messages every chance to arrive (C retries with a short backoff).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(seqs(&c.collect(&carol, 1, Duration::from_millis(500)).await).is_empty());
    assert!(seqs(&a.collect(&alice, 1, Duration::from_millis(300)).await).is_empty());
    assert!(seqs(&b.collect(&bob, 1, Duration::from_millis(300)).await).is_empty());

    // A correctly signed request from C to A is refused with 403.
    let txn = to_device_txn(&c.name, &carol.user_id, &alice.user_id, 7);
    let (status, body) = federation_request(
        &a,
        &c.name,
        Some(&c.signing_key()),
        &a.name,
        Method::PUT,
        "/_matrix/federation/v1/send/policy1",
        Some(&txn),
    )
    .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (403, Some("M_FORBIDDEN")),
        "{body}"
    );
    // And A does not proxy key queries to C.
    let (status, body) = a
        .call(
            &alice,
            Method::POST,
            "/_matrix/client/v3/keys/query",
            Some(json!({"device_keys": {carol.user_id.clone(): []}})),
        )
        .await;
    assert_eq!(status, 200);
    assert!(body["failures"].get(&c.name).is_some(), "{body}");
    assert!(body["device_keys"].get(&carol.user_id).is_none(), "{body}");
}
