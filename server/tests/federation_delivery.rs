//! Three real `hushd` processes on 127.0.0.2/3/4 federating over HTTPS: to-device messages
//! both ways and to several servers in one request, remote key query and claim, and the public
//! key and version endpoints.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fed_common;

use std::time::Duration;

use fed_common::{seqs, Db, TestCa, TestServer};
use hush_federation::ids::ServerName;
use hush_federation::keys::{unix_millis_now, verify_key_document};
use reqwest::Method;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_and_keys_cross_three_servers() {
    let ca = TestCa::new();
    let a = TestServer::start(&ca, "127.0.0.2", Db::Sqlite, "").await;
    let b = TestServer::start(&ca, "127.0.0.3", Db::Sqlite, "").await;
    let c = TestServer::start(&ca, "127.0.0.4", Db::Sqlite, "").await;

    // The key document is self-signed, lists the current key and an (empty) old_verify_keys.
    let doc: Value = a
        .http
        .get(format!("{}/_matrix/key/v2/server", a.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let name = ServerName::parse(&a.name).unwrap();
    let verified = verify_key_document(&doc, &name, unix_millis_now()).unwrap();
    assert!(verified.verify_keys.contains_key(&a.signing_key().key_id()));
    assert!(doc["old_verify_keys"].is_object());
    let version: Value = a
        .http
        .get(format!("{}/_matrix/federation/v1/version", a.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(version["server"]["name"], "hushd");

    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let carol = c.register("carol").await;

    // One request from A to users on B and C (explicit device and `*`).
    a.send_to_device(
        &alice,
        "t1",
        json!({
            bob.user_id.clone(): {bob.device_id.clone(): {"seq": 1}},
            carol.user_id.clone(): {"*": {"seq": 2}},
        }),
    )
    .await;
    let at_bob = b.collect(&bob, 1, Duration::from_secs(10)).await;
    assert_eq!(seqs(&at_bob), vec![1], "bob: {at_bob:?}");
    assert_eq!(at_bob[0]["sender"], alice.user_id.as_str());
    assert_eq!(at_bob[0]["type"], "m.test");
    let at_carol = c.collect(&carol, 1, Duration::from_secs(10)).await;
    assert_eq!(seqs(&at_carol), vec![2], "carol: {at_carol:?}");

    // And back from B to A.
    b.send_to_device(
        &bob,
        "t2",
        json!({alice.user_id.clone(): {"*": {"seq": 3}}}),
    )
    .await;
    let at_alice = a.collect(&alice, 1, Duration::from_secs(10)).await;
    assert_eq!(seqs(&at_alice), vec![3]);
    assert_eq!(at_alice[0]["sender"], bob.user_id.as_str());

    // Remote keys: bob uploads device keys and one one-time key; alice queries and claims.
    let device_keys = json!({
        "user_id": bob.user_id, "device_id": bob.device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
        "keys": {format!("ed25519:{}", bob.device_id): "ed", format!("curve25519:{}", bob.device_id): "cu"},
        "signatures": {bob.user_id.clone(): {format!("ed25519:{}", bob.device_id): "sig"}},
    });
    let (status, body) = b
        .call(
            &bob,
            Method::POST,
            "/_matrix/client/v3/keys/upload",
            Some(json!({
                "device_keys": device_keys,
                "one_time_keys": {"signed_curve25519:AAAA": {"key": "otk1", "signatures": {}}},
            })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = a
        .call(
            &alice,
            Method::POST,
            "/_matrix/client/v3/keys/query",
            Some(json!({"device_keys": {bob.user_id.clone(): []}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["device_keys"][&bob.user_id][&bob.device_id]["keys"], device_keys["keys"],
        "{body}"
    );
    let claim = json!({"one_time_keys": {bob.user_id.clone(): {bob.device_id.clone(): "signed_curve25519"}}});
    let (status, body) = a
        .call(
            &alice,
            Method::POST,
            "/_matrix/client/v3/keys/claim",
            Some(claim.clone()),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["one_time_keys"][&bob.user_id][&bob.device_id]["signed_curve25519:AAAA"]["key"],
        "otk1",
        "{body}"
    );
    // The one-time key was consumed on B: a second claim gets nothing.
    let (_, body) = a
        .call(
            &alice,
            Method::POST,
            "/_matrix/client/v3/keys/claim",
            Some(claim),
        )
        .await;
    assert!(body["one_time_keys"].get(&bob.user_id).is_none(), "{body}");

    // An unreachable server is reported in `failures`, not as an error.
    let (status, body) = a
        .call(
            &alice,
            Method::POST,
            "/_matrix/client/v3/keys/query",
            Some(json!({"device_keys": {"@nobody:127.0.0.5:1": []}, "timeout": 2000})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["failures"].get("127.0.0.5:1").is_some(), "{body}");
}
