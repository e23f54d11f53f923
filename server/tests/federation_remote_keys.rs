//! The client API's `keys/query` and `keys/claim` for users on several remote servers: one
//! destination answers, another accepts connections and never answers. The request still
//! returns, with the live server's keys and the dead one listed in `failures`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fed_common;

use fed_common::{Db, TestCa, TestServer};
use reqwest::Method;
use serde_json::{json, Value};

/// A TCP listener on `ip` that accepts connections and never says a word (not even a TLS
/// handshake), so only a timeout gets a caller past it. Returns its `IP:PORT`.
async fn black_hole(ip: &str) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind(format!("{ip}:0"))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (addr, task)
}

async fn remote_keys_with_one_dead_server(db: Db) {
    let ca = TestCa::new();
    let a = TestServer::start(&ca, "127.0.0.2", db, "").await;
    let b = TestServer::start(&ca, "127.0.0.3", db, "").await;
    let (dead, hole) = black_hole("127.0.0.4").await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let ghost = format!("@ghost:{dead}");

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

    // keys/query: bob's keys arrive although the other destination never answers.
    let (status, body) = a
        .call(
            &alice,
            Method::POST,
            "/_matrix/client/v3/keys/query",
            Some(json!({
                "device_keys": {bob.user_id.clone(): [], ghost.clone(): []},
                "timeout": 2000,
            })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["device_keys"][&bob.user_id][&bob.device_id]["keys"], device_keys["keys"],
        "{body}"
    );
    let failures = body["failures"].as_object().unwrap();
    assert!(failures.contains_key(&dead), "{body}");
    assert!(!failures.contains_key(&b.name), "{body}");
    assert!(body["device_keys"].get(&ghost).is_none(), "{body}");

    // keys/claim: the same, and bob's one-time key is really claimed (consumed on B).
    let claim = json!({
        "one_time_keys": {
            bob.user_id.clone(): {bob.device_id.clone(): "signed_curve25519"},
            ghost.clone(): {"GHOSTDEV": "signed_curve25519"},
        },
        "timeout": 2000,
    });
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
    let failures = body["failures"].as_object().unwrap();
    assert!(failures.contains_key(&dead), "{body}");
    assert!(!failures.contains_key(&b.name), "{body}");
    let (status, body) = a
        .call(
            &alice,
            Method::POST,
            "/_matrix/client/v3/keys/claim",
            Some(claim),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["one_time_keys"].get(&bob.user_id),
        None::<&Value>,
        "the one-time key was consumed by the first claim: {body}"
    );
    hole.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_keys_with_one_dead_server_sqlite() {
    remote_keys_with_one_dead_server(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_keys_with_one_dead_server_postgres() {
    remote_keys_with_one_dead_server(Db::Postgres).await;
}
