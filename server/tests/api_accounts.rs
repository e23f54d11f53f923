//! Accounts over real HTTP against a real `hushd` (SQLite and PostgreSQL): versions, register
//! (one-shot dummy, UIA dance, token flow, username rules), login, logout, whoami, and the
//! generic HTTP behaviour (404/405, OPTIONS, bad JSON, oversized bodies, tokens).
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use common::{Backend, Options, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const V3: &str = "/_matrix/client/v3";

fn assert_error(status: StatusCode, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status.as_u16(), want_status, "{body}");
    assert_eq!(body["errcode"], want_code, "{body}");
    assert!(body["error"].is_string(), "error text missing: {body}");
}

both_backends!(versions_and_discovery, |backend| async move {
    let s = TestServer::start(backend).await;
    let (status, body) = s.call(Method::GET, "/_matrix/client/versions", None).await;
    assert_eq!(status, StatusCode::OK);
    let versions = body["versions"].as_array().expect("versions array");
    assert!(versions.iter().any(|v| v == "v1.1"));
    assert!(body["unstable_features"].is_object());
    let (status, body) = s
        .call(Method::GET, "/.well-known/matrix/client", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(body["m.homeserver"]["base_url"].is_string());
    let (status, body) = s.call(Method::GET, &format!("{V3}/login"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["flows"][0]["type"], "m.login.password");
});

both_backends!(unknown_paths_and_methods, |backend| async move {
    let s = TestServer::start(backend).await;
    let (status, body) = s.call(Method::GET, "/_matrix/client/v3/nope", None).await;
    assert_error(status, &body, 404, "M_UNRECOGNIZED");
    let (status, body) = s.call(Method::GET, "/totally/elsewhere", None).await;
    assert_error(status, &body, 404, "M_UNRECOGNIZED");
    let (status, body) = s.call(Method::GET, &format!("{V3}/register"), None).await;
    assert_error(status, &body, 405, "M_UNRECOGNIZED");
    let (status, body) = s.call(Method::DELETE, &format!("{V3}/sync"), None).await;
    assert_error(status, &body, 405, "M_UNRECOGNIZED");
    // OPTIONS is answered without running the handler (no token needed, no UIA).
    let (status, _) = s
        .call(Method::OPTIONS, &format!("{V3}/account/whoami"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    // r0 aliases v3.
    let (status, body) = s.call(Method::GET, "/_matrix/client/r0/login", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
});

both_backends!(one_shot_dummy_registration, |backend| async move {
    let s = TestServer::start(backend).await;
    let (status, body) = s
        .call(
            Method::POST,
            &format!("{V3}/register"),
            Some(json!({"username": "Alice", "password": "pw-alice-1",
                        "device_id": "MYDEVICE", "auth": {"type": "m.login.dummy"}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], s.user_id("alice"), "downcased");
    assert_eq!(body["device_id"], "MYDEVICE", "device_id echoed");
    let alice = s.client_from(&body);
    let (status, who) = alice.get(&format!("{V3}/account/whoami")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(who["user_id"], s.user_id("alice"));
    assert_eq!(who["device_id"], "MYDEVICE");
    // Taken (also with different case) and invalid names; checked before UIA.
    let (status, body) = s
        .call(
            Method::POST,
            &format!("{V3}/register"),
            Some(json!({"username": "ALICE"})),
        )
        .await;
    assert_error(status, &body, 400, "M_USER_IN_USE");
    for bad in ["a!b", "a:b", "a b", "é", "a\"b", "a[b", "a@b", "a\nb", ""] {
        let (status, body) = s
            .call(
                Method::POST,
                &format!("{V3}/register"),
                Some(json!({"username": bad})),
            )
            .await;
        assert_error(status, &body, 400, "M_INVALID_USERNAME");
    }
    // register/available.
    let (status, body) = s
        .call(
            Method::GET,
            &format!("{V3}/register/available?username=bob"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["available"], true);
    let (status, body) = s
        .call(
            Method::GET,
            &format!("{V3}/register/available?username=alice"),
            None,
        )
        .await;
    assert_error(status, &body, 400, "M_USER_IN_USE");
    let (status, body) = s
        .call(
            Method::GET,
            &format!("{V3}/register/available?username=a%21"),
            None,
        )
        .await;
    assert_error(status, &body, 400, "M_INVALID_USERNAME");
});

both_backends!(uia_dance_and_inhibit_login, |backend| async move {
    let s = TestServer::start(backend).await;
    // `{}` -> 401 with flows, params and session, no errcode.
    let (status, body) = s
        .call(Method::POST, &format!("{V3}/register"), Some(json!({})))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["flows"][0]["stages"], json!(["m.login.dummy"]));
    assert!(body["params"].is_object());
    assert!(body.get("errcode").is_none());
    let session = body["session"].as_str().expect("session").to_owned();
    // Complete with the session; inhibit_login -> no token or device.
    let (status, body) = s
        .call(
            Method::POST,
            &format!("{V3}/register"),
            Some(
                json!({"username": "carol", "password": "pw", "inhibit_login": true,
                        "auth": {"type": "m.login.dummy", "session": session}}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], s.user_id("carol"));
    assert!(body.get("access_token").is_none());
    assert!(body.get("device_id").is_none());
    // She can log in afterwards.
    let carol = s.login("carol", "pw", None).await;
    assert_eq!(carol.user_id, s.user_id("carol"));
    // A stage that is not offered is refused with a challenge.
    let (status, body) = s
        .call(
            Method::POST,
            &format!("{V3}/register"),
            Some(json!({"username": "dave", "auth": {"type": "m.login.registration_token", "token": "x"}})),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body["session"].is_string());
    assert!(body["errcode"].is_string());
});

both_backends!(registration_closed, |backend| async move {
    let s = TestServer::start_with(
        backend,
        Options {
            registration: "closed",
            ..Options::default()
        },
    )
    .await;
    let (status, body) = s
        .call(
            Method::POST,
            &format!("{V3}/register"),
            Some(json!({"username": "x", "password": "y", "auth": {"type": "m.login.dummy"}})),
        )
        .await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    let (status, body) = s
        .call(
            Method::GET,
            "/_matrix/client/v1/register/m.login.registration_token/validity?token=abc",
            None,
        )
        .await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
});

both_backends!(token_registration_like_matrix_nio, |backend| async move {
    let s = TestServer::start_with(
        backend,
        Options {
            registration: "token",
            ..Options::default()
        },
    )
    .await;
    let store = hush_server::store::Store::connect(s.database_url())
        .await
        .expect("store");
    store
        .create_registration_token(
            &hush_server::store::RegistrationTokenRow {
                token: "letmein".into(),
                uses_allowed: Some(1),
                completed: 0,
                expiry_ts: None,
            },
            0,
        )
        .await
        .expect("token");
    let validity = "/_matrix/client/v1/register/m.login.registration_token/validity";
    let (status, body) = s
        .call(Method::GET, &format!("{validity}?token=letmein"), None)
        .await;
    assert_eq!(
        (status, &body["valid"]),
        (StatusCode::OK, &json!(true)),
        "{body}"
    );
    let (status, body) = s
        .call(Method::GET, &format!("{validity}?token=wrong"), None)
        .await;
    assert_eq!(
        (status, &body["valid"]),
        (StatusCode::OK, &json!(false)),
        "{body}"
    );

    // One-shot dummy is not enough when a token is required.
    let base = json!({"username": "erin", "password": "pw"});
    let mut req = base.clone();
    req["auth"] = json!({"type": "m.login.dummy"});
    let (status, body) = s
        .call(Method::POST, &format!("{V3}/register"), Some(req))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");

    // (a) auth without type -> 401 with the two-stage flow and a session.
    let mut req = base.clone();
    req["auth"] = json!({"initial_device_display_name": "nio"});
    let (status, body) = s
        .call(Method::POST, &format!("{V3}/register"), Some(req))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(
        body["flows"][0]["stages"],
        json!(["m.login.registration_token", "m.login.dummy"])
    );
    let session = body["session"].as_str().expect("session").to_owned();
    // Wrong token -> 401 with M_FORBIDDEN, session kept.
    let mut req = base.clone();
    req["auth"] =
        json!({"type": "m.login.registration_token", "token": "nope", "session": session});
    let (status, body) = s
        .call(Method::POST, &format!("{V3}/register"), Some(req))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");
    // (b) right token -> 401 with completed, flows, params, session.
    let mut req = base.clone();
    req["auth"] =
        json!({"type": "m.login.registration_token", "token": "letmein", "session": session});
    let (status, body) = s
        .call(Method::POST, &format!("{V3}/register"), Some(req))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["completed"], json!(["m.login.registration_token"]));
    assert!(body["params"].is_object() && body["flows"].is_array());
    assert_eq!(body["session"], session.as_str());
    // (c) dummy -> 200.
    let mut req = base.clone();
    req["auth"] = json!({"type": "m.login.dummy", "session": session});
    let (status, body) = s
        .call(Method::POST, &format!("{V3}/register"), Some(req))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], s.user_id("erin"));
    // The single use is consumed.
    let (_, body) = s
        .call(Method::GET, &format!("{validity}?token=letmein"), None)
        .await;
    assert_eq!(body["valid"], false);
});

both_backends!(login_rules, |backend| async move {
    let s = TestServer::start(backend).await;
    let first = s.register("frank", "right-pw").await;
    // Identifier with full user ID and capitals; legacy `user` field.
    let (status, body) = s
        .call(
            Method::POST,
            &format!("{V3}/login"),
            Some(json!({"type": "m.login.password",
                        "identifier": {"type": "m.id.user", "user": format!("@FRANK:{}", s.server_name)},
                        "password": "right-pw"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], s.user_id("frank"));
    assert!(body["access_token"].is_string() && body["device_id"].is_string());
    let (status, body) = s
        .call(
            Method::POST,
            &format!("{V3}/login"),
            Some(json!({"type": "m.login.password", "user": "frank", "password": "right-pw"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Wrong password and unknown user are both 403.
    let (status, body) = s
        .call(
            Method::POST,
            &format!("{V3}/login"),
            Some(json!({"type": "m.login.password", "user": "frank", "password": "wrong"})),
        )
        .await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    let (status, body) = s
        .call(
            Method::POST,
            &format!("{V3}/login"),
            Some(json!({"type": "m.login.password", "user": "nobody", "password": "x"})),
        )
        .await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    // Unknown login type, wrong shape, not JSON.
    let (status, body) = s
        .call(
            Method::POST,
            &format!("{V3}/login"),
            Some(json!({"type": "m.login.token", "token": "x"})),
        )
        .await;
    assert_error(status, &body, 400, "M_UNKNOWN");
    let (status, body) = s
        .call(
            Method::POST,
            &format!("{V3}/login"),
            Some(json!({"type": 5})),
        )
        .await;
    assert_error(status, &body, 400, "M_BAD_JSON");
    let resp = s
        .http
        .post(s.url(&format!("{V3}/login")))
        .body("{not json")
        .send()
        .await
        .expect("send");
    let status = resp.status();
    let body: Value = resp.json().await.expect("json");
    assert_error(status, &body, 400, "M_NOT_JSON");
    // Reusing the device ID keeps the device and revokes its old token.
    let again = s.login("frank", "right-pw", Some(&first.device_id)).await;
    assert_eq!(again.device_id, first.device_id);
    let (status, body) = first.get(&format!("{V3}/account/whoami")).await;
    assert_error(status, &body, 401, "M_UNKNOWN_TOKEN");
    let (status, _) = again.get(&format!("{V3}/account/whoami")).await;
    assert_eq!(status, StatusCode::OK);
});

both_backends!(deactivated_user_cannot_log_in, |backend| async move {
    let s = TestServer::start(backend).await;
    let g = s.register("gina", "pw").await;
    let store = hush_server::store::Store::connect(s.database_url())
        .await
        .expect("store");
    store
        .deactivate_user(&g.user_id, 0)
        .await
        .expect("deactivate");
    let (status, body) = s
        .call(
            Method::POST,
            &format!("{V3}/login"),
            Some(json!({"type": "m.login.password", "user": "gina", "password": "pw"})),
        )
        .await;
    assert_error(status, &body, 403, "M_USER_DEACTIVATED");
});

both_backends!(tokens_header_query_missing_unknown, |backend| async move {
    let s = TestServer::start(backend).await;
    let h = s.register("hank", "pw").await;
    let whoami = format!("{V3}/account/whoami");
    let (status, body) = s.call(Method::GET, &whoami, None).await;
    assert_error(status, &body, 401, "M_MISSING_TOKEN");
    let (status, body) = s
        .call(Method::GET, &format!("{whoami}?access_token=bogus"), None)
        .await;
    assert_error(status, &body, 401, "M_UNKNOWN_TOKEN");
    let (status, body) = s
        .call(
            Method::GET,
            &format!("{whoami}?access_token={}", h.token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], h.user_id);
    let resp = s
        .http
        .get(s.url(&whoami))
        .bearer_auth("not-a-token")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
});

both_backends!(logout_and_logout_all, |backend| async move {
    let s = TestServer::start(backend).await;
    let a = s.register("ivan", "pw").await;
    let b = s.login("ivan", "pw", None).await;
    let c = s.login("ivan", "pw", None).await;
    // Empty body is fine.
    let resp = s
        .http
        .post(s.url(&format!("{V3}/logout")))
        .bearer_auth(&a.token)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::OK);
    let (status, body) = a.get(&format!("{V3}/account/whoami")).await;
    assert_error(status, &body, 401, "M_UNKNOWN_TOKEN");
    let (_, devices) = b.get(&format!("{V3}/devices")).await;
    let ids: Vec<&str> = devices["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .filter_map(|d| d["device_id"].as_str())
        .collect();
    assert!(
        !ids.contains(&a.device_id.as_str()),
        "logout deletes the device"
    );
    assert_eq!(ids.len(), 2);
    let (status, _) = b.post(&format!("{V3}/logout/all"), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    for client in [&b, &c] {
        let (status, body) = client.get(&format!("{V3}/account/whoami")).await;
        assert_error(status, &body, 401, "M_UNKNOWN_TOKEN");
    }
});

both_backends!(oversized_and_malformed_bodies, |backend| async move {
    let s = TestServer::start_with(
        backend,
        Options {
            limits: vec!["max_request_bytes = 4096".into()],
            ..Options::default()
        },
    )
    .await;
    let j = s.register("judy", "pw").await;
    let big =
        json!({"messages": {j.user_id.clone(): {j.device_id.clone(): {"pad": "x".repeat(8192)}}}});
    let (status, body) = j.put(&format!("{V3}/sendToDevice/m.test/big1"), big).await;
    assert_error(status, &body, 413, "M_TOO_LARGE");
    // Not JSON, JSON that is not an object, wrong shape.
    for (raw, code) in [
        ("nope", "M_NOT_JSON"),
        ("[1,2]", "M_BAD_JSON"),
        ("{\"messages\": 3}", "M_BAD_JSON"),
    ] {
        let resp = s
            .http
            .put(s.url(&format!("{V3}/sendToDevice/m.test/t-{code}-{}", raw.len())))
            .bearer_auth(&j.token)
            .body(raw)
            .send()
            .await
            .expect("send");
        let status = resp.status();
        let body: Value = resp.json().await.expect("json");
        assert_error(status, &body, 400, code);
    }
});

#[allow(dead_code)]
fn _backend_is_used(_: Backend) {}

both_backends!(capabilities_and_filters, |backend| async move {
    let s = TestServer::start(backend).await;
    let k = s.register("kim", "pw").await;
    let (status, body) = k.get(&format!("{V3}/capabilities")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body["capabilities"].is_object(), "{body}");
    let (status, body) = k
        .post(
            &format!("{V3}/user/{}/filter", k.user_id),
            json!({"room": {"timeline": {"limit": 1}}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let id = body["filter_id"].as_str().expect("filter_id").to_owned();
    let (status, body) = k.get(&format!("{V3}/user/{}/filter/{id}", k.user_id)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.is_object());
    let (status, body) = k
        .post(
            &format!("{V3}/user/@other:{}/filter", s.server_name),
            json!({}),
        )
        .await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    // The filter is accepted by /sync and ignored.
    let (status, _) = k.get(&format!("{V3}/sync?filter={id}")).await;
    assert_eq!(status, StatusCode::OK);
});
