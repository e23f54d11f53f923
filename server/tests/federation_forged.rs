//! Forged and misaddressed federation requests are refused and change nothing; a rotated key
//! is published under `old_verify_keys` and no longer accepted for requests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fed_common;

use std::time::Duration;

use fed_common::{federation_request, seqs, to_device_txn, Db, TestCa, TestServer};
use hush_federation::keys::ServerSigningKey;
use reqwest::Method;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_requests_are_refused() {
    let ca = TestCa::new();
    let mut a = TestServer::start(&ca, "127.0.0.2", Db::Sqlite, "").await;
    let b = TestServer::start(&ca, "127.0.0.3", Db::Sqlite, "").await;
    let c_name = "127.0.0.4:9"; // a name that is not B
    let bob = b.register("bob").await;
    let mallory = format!("@mallory:{}", a.name);

    // Rotate A's key before B ever sees it: the old key must now count as expired.
    let old_key = a.signing_key();
    a.stop();
    let out = a.hushd(&["keys", "rotate"]);
    assert!(
        out.status.success(),
        "rotate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    a.launch().await;
    let new_key = a.signing_key();
    assert_ne!(old_key.key_id(), new_key.key_id());
    let doc: Value = a
        .http
        .get(format!("{}/_matrix/key/v2/server", a.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        doc["old_verify_keys"].get(old_key.key_id()).is_some(),
        "{doc}"
    );
    assert!(doc["verify_keys"].get(new_key.key_id()).is_some(), "{doc}");

    let send = |n: u64| format!("/_matrix/federation/v1/send/forged{n}");
    let txn = |n: u64| to_device_txn(&a.name, &mallory, &bob.user_id, n);

    // Unsigned.
    let (status, body) = federation_request(
        &b,
        &a.name,
        None,
        &b.name,
        Method::PUT,
        &send(1),
        Some(&txn(1)),
    )
    .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (401, Some("M_UNAUTHORIZED"))
    );
    // Expired (retired) key.
    let (status, _) = federation_request(
        &b,
        &a.name,
        Some(&old_key),
        &b.name,
        Method::PUT,
        &send(2),
        Some(&txn(2)),
    )
    .await;
    assert_eq!(status, 401);
    // Wrongly signed: A's key id, another key's signature.
    let impostor = ServerSigningKey::generate(new_key.version()).unwrap();
    let (status, _) = federation_request(
        &b,
        &a.name,
        Some(&impostor),
        &b.name,
        Method::PUT,
        &send(3),
        Some(&txn(3)),
    )
    .await;
    assert_eq!(status, 401);
    // Unknown key id.
    let unknown = ServerSigningKey::generate("never_published").unwrap();
    let (status, _) = federation_request(
        &b,
        &a.name,
        Some(&unknown),
        &b.name,
        Method::PUT,
        &send(4),
        Some(&txn(4)),
    )
    .await;
    assert_eq!(status, 401);
    // Addressed (and signed) for another destination.
    let (status, _) = federation_request(
        &b,
        &a.name,
        Some(&new_key),
        c_name,
        Method::PUT,
        &send(5),
        Some(&txn(5)),
    )
    .await;
    assert_eq!(status, 401);
    // Signed by A but the body claims another origin.
    let mut other_origin = txn(6);
    other_origin["origin"] = json!(c_name);
    let (status, body) = federation_request(
        &b,
        &a.name,
        Some(&new_key),
        &b.name,
        Method::PUT,
        &send(6),
        Some(&other_origin),
    )
    .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (403, Some("M_FORBIDDEN"))
    );
    // Signed by A, speaking for a user of another server: accepted as a transaction (200, as
    // senders expect) but the EDU is dropped.
    let foreign = to_device_txn(&a.name, &format!("@eve:{c_name}"), &bob.user_id, 7);
    let (status, _) = federation_request(
        &b,
        &a.name,
        Some(&new_key),
        &b.name,
        Method::PUT,
        &send(7),
        Some(&foreign),
    )
    .await;
    assert_eq!(status, 200);
    // Other endpoints are protected too.
    let query = json!({"device_keys": {bob.user_id.clone(): []}});
    let (status, _) = federation_request(
        &b,
        &a.name,
        None,
        &b.name,
        Method::POST,
        "/_matrix/federation/v1/user/keys/query",
        Some(&query),
    )
    .await;
    assert_eq!(status, 401);

    // A correctly signed request is delivered, and it is the only thing bob ever gets.
    let (status, body) = federation_request(
        &b,
        &a.name,
        Some(&new_key),
        &b.name,
        Method::PUT,
        &send(8),
        Some(&txn(8)),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"pdus": {}}));
    // Replaying the same transaction (and the same message_id in a new one) changes nothing.
    let (status, _) = federation_request(
        &b,
        &a.name,
        Some(&new_key),
        &b.name,
        Method::PUT,
        &send(8),
        Some(&txn(8)),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = federation_request(
        &b,
        &a.name,
        Some(&new_key),
        &b.name,
        Method::PUT,
        &format!("{}/", send(9)),
        Some(&txn(8)),
    )
    .await;
    assert_eq!(status, 200, "trailing slash accepted");
    let got = b.collect(&bob, 1, Duration::from_secs(5)).await;
    assert_eq!(seqs(&got), vec![8], "{got:?}");
}
