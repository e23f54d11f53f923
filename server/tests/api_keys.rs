//! End-to-end key endpoints over real HTTP against a real `hushd` (SQLite and PostgreSQL):
//! upload rules, query, claim order and exhaustion, fallback keys, the Hush bundle claim, and
//! 16 concurrent claimers.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::collections::HashSet;

use common::{device_keys, otk, Client, TestServer};
use reqwest::StatusCode;
use serde_json::{json, Value};

const V3: &str = "/_matrix/client/v3";

async fn upload(c: &Client, body: Value) -> (StatusCode, Value) {
    c.post(&format!("{V3}/keys/upload"), body).await
}

async fn claim(c: &Client, user: &str, device: &str, algorithm: &str) -> Value {
    let (status, body) = c
        .post(
            &format!("{V3}/keys/claim"),
            json!({"one_time_keys": {user: {device: algorithm}}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

both_backends!(upload_validation_and_counts, |backend| async move {
    let s = TestServer::start(backend).await;
    let a = s.register("alice", "pw").await;
    let b = s.register("bob", "pw").await;
    // Device-keys-only upload: counts present with an explicit zero.
    let (status, body) = upload(&a, json!({"device_keys": device_keys(&a)})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["one_time_key_counts"]["signed_curve25519"], 0);
    // Keys claiming to be someone else's -> 400.
    let (status, _) = upload(&a, json!({"device_keys": device_keys(&b)})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Missing required parts -> 400 M_BAD_JSON.
    for missing in ["algorithms", "keys", "signatures"] {
        let mut keys = device_keys(&a);
        keys.as_object_mut().expect("object").remove(missing);
        let (status, body) = upload(&a, json!({"device_keys": keys})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{missing}: {body}");
        assert_eq!(body["errcode"], "M_BAD_JSON", "{missing}");
    }
    let (status, body) = upload(&a, json!({"one_time_keys": {"no-colon": otk("k")}})).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (StatusCode::BAD_REQUEST, Some("M_BAD_JSON"))
    );
    // Idempotency with overlap: A,B,C then B,C,D -> 4.
    let (status, body) = upload(
        &a,
        json!({"one_time_keys": {"signed_curve25519:A": otk("a"), "signed_curve25519:B": otk("b"),
                                  "signed_curve25519:C": otk("c")}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["one_time_key_counts"]["signed_curve25519"], 3);
    let (status, body) = upload(
        &a,
        json!({"one_time_keys": {"signed_curve25519:B": otk("b"), "signed_curve25519:C": otk("c"),
                                  "signed_curve25519:D": otk("d")}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["one_time_key_counts"]["signed_curve25519"], 4);
    // Same ID, different content -> 400 M_UNKNOWN.
    let (status, body) = upload(
        &a,
        json!({"one_time_keys": {"signed_curve25519:A": otk("other")}}),
    )
    .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (StatusCode::BAD_REQUEST, Some("M_UNKNOWN")),
        "{body}"
    );
    // Sync reports the same count and the fallback list (empty, but present).
    let sync = a.sync(None, 0).await;
    assert_eq!(sync["device_one_time_keys_count"]["signed_curve25519"], 4);
    assert_eq!(sync["device_unused_fallback_key_types"], json!([]));
});

both_backends!(query_devices, |backend| async move {
    let s = TestServer::start(backend).await;
    let a = s.register("alice", "pw").await;
    let a2 = s.login("alice", "pw", None).await;
    let b = s.register("bob", "pw").await;
    let (status, _) = a
        .put(
            &format!("{V3}/devices/{}", a.device_id),
            json!({"display_name": "Phone"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let keys = device_keys(&a);
    assert_eq!(
        upload(&a, json!({"device_keys": keys})).await.0,
        StatusCode::OK
    );
    assert_eq!(
        upload(&a2, json!({"device_keys": device_keys(&a2)}))
            .await
            .0,
        StatusCode::OK
    );
    let query = |body: Value| {
        let b = b.clone();
        async move { b.post(&format!("{V3}/keys/query"), body).await }
    };
    // [] = all devices.
    let (status, body) = query(json!({"device_keys": {a.user_id.clone(): []}})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let devices = body["device_keys"][&a.user_id]
        .as_object()
        .expect("devices");
    assert_eq!(devices.len(), 2);
    let mine = &devices[&a.device_id];
    assert_eq!(mine["keys"], keys["keys"]);
    assert_eq!(mine["signatures"], keys["signatures"]);
    assert_eq!(mine["unsigned"]["device_display_name"], "Phone");
    // A specific device.
    let (_, body) =
        query(json!({"device_keys": {a.user_id.clone(): [a2.device_id.clone()]}})).await;
    let devices = body["device_keys"][&a.user_id]
        .as_object()
        .expect("devices");
    assert_eq!(devices.len(), 1);
    assert!(devices.contains_key(&a2.device_id));
    // Known user without keys -> {}; unknown user -> absent; remote -> failures.
    let (_, body) = query(json!({"device_keys": {
        b.user_id.clone(): [], "@ghost:".to_owned() + &s.server_name: [], "@r:remote.invalid": []}}))
    .await;
    assert_eq!(body["device_keys"][&b.user_id], json!({}));
    assert!(body["device_keys"]
        .get(format!("@ghost:{}", s.server_name))
        .is_none());
    assert!(body["failures"]["remote.invalid"].is_object(), "{body}");
    // Non-array per-user value -> 400 M_BAD_JSON.
    let (status, body) = query(json!({"device_keys": {a.user_id.clone(): {"X": {}}}})).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (StatusCode::BAD_REQUEST, Some("M_BAD_JSON"))
    );
});

both_backends!(claim_order_fallback_and_exhaustion, |backend| async move {
    let s = TestServer::start(backend).await;
    let a = s.register("alice", "pw").await;
    let b = s.register("bob", "pw").await;
    // Upload key "1" then key "0" in separate requests: "1" must come out first.
    upload(
        &a,
        json!({"one_time_keys": {"signed_curve25519:1": otk("one")}}),
    )
    .await;
    upload(
        &a,
        json!({"one_time_keys": {"signed_curve25519:0": otk("zero")}}),
    )
    .await;
    upload(&a, json!({"fallback_keys": {"signed_curve25519:F": {"key": "fb", "fallback": true, "signatures": {}}}})).await;
    let sync = a.sync(None, 0).await;
    assert_eq!(
        sync["device_unused_fallback_key_types"],
        json!(["signed_curve25519"])
    );

    let first = claim(&b, &a.user_id, &a.device_id, "signed_curve25519").await;
    assert_eq!(
        first["one_time_keys"][&a.user_id][&a.device_id]["signed_curve25519:1"],
        otk("one")
    );
    let second = claim(&b, &a.user_id, &a.device_id, "signed_curve25519").await;
    assert_eq!(
        second["one_time_keys"][&a.user_id][&a.device_id]["signed_curve25519:0"],
        otk("zero")
    );
    // Then the fallback key, twice (not consumed), and it is now marked used.
    for _ in 0..2 {
        let fb = claim(&b, &a.user_id, &a.device_id, "signed_curve25519").await;
        assert_eq!(
            fb["one_time_keys"][&a.user_id][&a.device_id]["signed_curve25519:F"]["key"],
            "fb"
        );
    }
    let sync = a.sync(None, 0).await;
    assert_eq!(sync["device_unused_fallback_key_types"], json!([]));
    assert_eq!(sync["device_one_time_keys_count"]["signed_curve25519"], 0);
    // Nothing of another algorithm: the user is omitted entirely.
    let none = claim(&b, &a.user_id, &a.device_id, "curve25519").await;
    assert!(none["one_time_keys"].get(&a.user_id).is_none(), "{none}");
    // A user with no keys at all: omitted.
    let none = claim(&a, &b.user_id, &b.device_id, "signed_curve25519").await;
    assert_eq!(none["one_time_keys"], json!({}));
    // Shape errors.
    let (status, body) = b
        .post(
            &format!("{V3}/keys/claim"),
            json!({"one_time_keys": {a.user_id.clone(): []}}),
        )
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (StatusCode::BAD_REQUEST, Some("M_BAD_JSON"))
    );
});

both_backends!(hush_bundle_claim, |backend| async move {
    let s = TestServer::start(backend).await;
    let a = s.register("alice", "pw").await;
    let b = s.register("bob", "pw").await;
    // No signed prekey yet: no bundle (and no OPK consumed).
    upload(
        &a,
        json!({"one_time_keys": {"signed_curve25519:O1": otk("opk1")}}),
    )
    .await;
    let none = claim(&b, &a.user_id, &a.device_id, "hush.x3dh_bundle").await;
    assert_eq!(none["one_time_keys"], json!({}), "{none}");
    let spk = json!({"key": "spk", "fallback": true, "signatures": {}});
    upload(&a, json!({"fallback_keys": {"signed_curve25519:S1": spk}})).await;
    // SPK + the one OPK.
    let got = claim(&b, &a.user_id, &a.device_id, "hush.x3dh_bundle").await;
    let device = got["one_time_keys"][&a.user_id][&a.device_id]
        .as_object()
        .expect("device");
    assert_eq!(device.len(), 1);
    let bundle = &device["hush.x3dh_bundle:S1"];
    assert_eq!(bundle["signed_prekey"]["signed_curve25519:S1"], spk);
    assert_eq!(bundle["one_time_key"]["signed_curve25519:O1"], otk("opk1"));
    // OPKs exhausted: SPK only; the SPK is never marked used by bundle claims.
    let got = claim(&b, &a.user_id, &a.device_id, "hush.x3dh_bundle").await;
    let bundle = &got["one_time_keys"][&a.user_id][&a.device_id]["hush.x3dh_bundle:S1"];
    assert_eq!(bundle["signed_prekey"]["signed_curve25519:S1"], spk);
    assert!(bundle.get("one_time_key").is_none(), "{got}");
    let sync = a.sync(None, 0).await;
    assert_eq!(
        sync["device_unused_fallback_key_types"],
        json!(["signed_curve25519"])
    );
    assert_eq!(sync["device_one_time_keys_count"]["signed_curve25519"], 0);
});

both_backends!(
    concurrent_claimers_never_share_a_key,
    |backend| async move {
        let s = TestServer::start(backend).await;
        let a = s.register("alice", "pw").await;
        const KEYS: usize = 64;
        const CLAIMERS: usize = 16;
        const PER_CLAIMER: usize = 6; // 96 claims for 64 keys: some must find none.
        let mut map = serde_json::Map::new();
        for i in 0..KEYS {
            map.insert(
                format!("signed_curve25519:K{i:03}"),
                otk(&format!("key{i}")),
            );
        }
        let (status, body) = upload(&a, json!({"one_time_keys": map})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let mut claimers = Vec::new();
        for i in 0..CLAIMERS {
            claimers.push(s.register(&format!("claimer{i}"), "pw").await);
        }
        let mut tasks = Vec::new();
        for c in claimers {
            let (user, device) = (a.user_id.clone(), a.device_id.clone());
            tasks.push(tokio::spawn(async move {
                let mut got = Vec::new();
                for _ in 0..PER_CLAIMER {
                    let body = claim(&c, &user, &device, "signed_curve25519").await;
                    if let Some(keys) = body["one_time_keys"][&user][&device].as_object() {
                        got.extend(keys.keys().cloned());
                    }
                }
                got
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("claimer task"));
        }
        let unique: HashSet<&String> = all.iter().collect();
        assert_eq!(all.len(), KEYS, "every key handed out, and only those");
        assert_eq!(unique.len(), KEYS, "no key handed out twice");
    }
);

both_backends!(
    device_list_changes_reach_watchers_only,
    |backend| async move {
        let s = TestServer::start(backend).await;
        let a = s.register("alice", "pw").await;
        let b = s.register("bob", "pw").await;
        let c = s.register("carol", "pw").await;
        let b_since = b.sync(None, 0).await["next_batch"]
            .as_str()
            .expect("nb")
            .to_owned();
        let c_since = c.sync(None, 0).await["next_batch"]
            .as_str()
            .expect("nb")
            .to_owned();
        // Bob looks at alice's keys, carol does not.
        let (status, _) = b
            .post(
                &format!("{V3}/keys/query"),
                json!({"device_keys": {a.user_id.clone(): []}}),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let _a2 = s.login("alice", "pw", None).await;
        let sync = b.sync(Some(&b_since), 10_000).await;
        let changed = sync["device_lists"]["changed"].as_array().expect("changed");
        assert!(changed.contains(&json!(a.user_id)), "{sync}");
        let sync = c.sync(Some(&c_since), 0).await;
        let changed = sync["device_lists"]["changed"].as_array().expect("changed");
        assert!(!changed.contains(&json!(a.user_id)), "{sync}");
        // keys/changes agrees, and rejects garbage tokens.
        let (status, body) = b
            .get(&format!("{V3}/keys/changes?from={b_since}&to={b_since}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body["changed"]
            .as_array()
            .expect("changed")
            .contains(&json!(a.user_id)));
        let (status, body) = b.get(&format!("{V3}/keys/changes?from=nope")).await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (StatusCode::BAD_REQUEST, Some("M_INVALID_PARAM"))
        );
    }
);
