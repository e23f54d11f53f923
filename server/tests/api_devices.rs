//! Device management over real HTTP against a real `hushd` (SQLite and PostgreSQL): list with
//! null fields, get, rename, delete with password UIA (the Complement sequence), delete_devices.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use common::TestServer;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const V3: &str = "/_matrix/client/v3";

both_backends!(list_get_rename, |backend| async move {
    let s = TestServer::start(backend).await;
    let a = s.register("alice", "pw").await;
    let (status, body) = a.get(&format!("{V3}/devices")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let devices = body["devices"].as_array().expect("devices");
    assert_eq!(devices.len(), 1);
    for key in ["device_id", "display_name", "last_seen_ip", "last_seen_ts"] {
        assert!(
            devices[0].get(key).is_some(),
            "{key} must be present: {body}"
        );
    }
    let path = format!("{V3}/devices/{}", a.device_id);
    let (status, _) = a.put(&path, json!({"display_name": "Laptop"})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = a.get(&path).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["display_name"], "Laptop");
    assert_eq!(body["device_id"], a.device_id.as_str());
    // Unknown device and another user's device: 404.
    let (status, body) = a.get(&format!("{V3}/devices/NOSUCH")).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (StatusCode::NOT_FOUND, Some("M_NOT_FOUND"))
    );
    let b = s.register("bob", "pw").await;
    let (status, _) = a.get(&format!("{V3}/devices/{}", b.device_id)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = a
        .put(
            &format!("{V3}/devices/{}", b.device_id),
            json!({"display_name": "x"}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
});

both_backends!(delete_with_password_uia, |backend| async move {
    let s = TestServer::start(backend).await;
    let a = s.register("alice", "alice-pw").await;
    let victim = s.login("alice", "alice-pw", None).await;
    let _other = s.register("bob", "bob-pw").await;
    let path = format!("{V3}/devices/{}", victim.device_id);

    // Body-less DELETE -> 401 UIA.
    let resp = s
        .http
        .delete(s.url(&path))
        .bearer_auth(&a.token)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["flows"][0]["stages"], json!(["m.login.password"]));
    let session = body["session"].as_str().expect("session").to_owned();

    // Wrong password -> 401 with flows, session and M_FORBIDDEN.
    let (status, body) = a
        .call(
            Method::DELETE,
            &path,
            Some(
                json!({"auth": {"type": "m.login.password", "session": session,
                "identifier": {"type": "m.id.user", "user": a.user_id}, "password": "wrong"}}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");
    assert!(body["flows"].is_array() && body["session"].is_string());

    // Another user's (correct) password -> 403.
    let (status, body) = a
        .call(
            Method::DELETE,
            &path,
            Some(
                json!({"auth": {"type": "m.login.password", "session": session,
                "identifier": {"type": "m.id.user", "user": "bob"}, "password": "bob-pw"}}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    // Correct password -> 200; the device is gone and its token is dead.
    let (status, body) = a
        .call(
            Method::DELETE,
            &path,
            Some(
                json!({"auth": {"type": "m.login.password", "session": session,
                "identifier": {"type": "m.id.user", "user": a.user_id}, "password": "alice-pw"}}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = a.get(&path).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = victim.get(&format!("{V3}/sync")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
});

both_backends!(bulk_delete_devices, |backend| async move {
    let s = TestServer::start(backend).await;
    let a = s.register("carol", "pw").await;
    let d1 = s.login("carol", "pw", None).await;
    let d2 = s.login("carol", "pw", None).await;
    let req = json!({"devices": [d1.device_id, d2.device_id]});
    let (status, body) = a.post(&format!("{V3}/delete_devices"), req.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let session = body["session"].as_str().expect("session").to_owned();
    let mut req = req;
    req["auth"] =
        json!({"type": "m.login.password", "session": session, "user": "carol", "password": "pw"});
    let (status, body) = a.post(&format!("{V3}/delete_devices"), req).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, body) = a.get(&format!("{V3}/devices")).await;
    let devices = body["devices"].as_array().expect("devices");
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0]["device_id"], a.device_id.as_str());
    // Missing `devices` is a shape error.
    let (status, body) = a.post(&format!("{V3}/delete_devices"), json!({})).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (StatusCode::BAD_REQUEST, Some("M_BAD_JSON"))
    );
});
