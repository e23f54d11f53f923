//! The operations layer over real HTTP against the real binary: rate limits, `/metrics`,
//! CORS, and the TLS listener with a certificate from a test CA.
//!
//! Rate limits and metrics run on both storage backends (the metrics' mailbox gauge is read
//! from the database). The TLS listener does not touch storage and runs on SQLite only.

mod ops_support;

use std::time::{Duration, Instant};

use ops_support::*;
use serde_json::{json, Value};

/// One test per storage backend for `async fn $body(backend: &str) -> TestResult`.
macro_rules! on_both_backends {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test]
            async fn sqlite() -> super::TestResult {
                super::$body("sqlite").await
            }
            #[tokio::test]
            async fn postgres() -> super::TestResult {
                super::$body("postgres").await
            }
        }
    };
}

on_both_backends!(
    login_rate_limit,
    login_rate_limit_answers_429_with_retry_after
);
on_both_backends!(
    send_to_device_limit,
    send_to_device_limit_is_per_user_and_switchable
);
on_both_backends!(
    metrics_and_cors,
    metrics_expose_the_named_series_and_cors_headers
);

async fn login_rate_limit_answers_429_with_retry_after(backend: &str) -> TestResult {
    let dir = tempfile::tempdir()?;
    let (db, _pg) = database(backend, dir.path())?;
    let mut env = server_env(dir.path(), &db);
    env.push(("HUSHD_RATE_LIMITS_LOGIN_BURST".into(), "3".into()));
    env.push(("HUSHD_RATE_LIMITS_LOGIN_PER_SECOND".into(), "0.01".into()));
    let server = Server::start(&[], &env_refs(&env), dir.path())?;
    let http = client()?;
    for _ in 0..3 {
        let (status, body) = login(&http, &server.url, "nobody", "wrong").await?;
        assert_eq!(status, 403, "{body}");
    }
    let resp = http
        .post(format!("{}/_matrix/client/v3/login", server.url))
        .json(&json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "nobody"}, "password": "wrong"}))
        .send()
        .await?;
    assert_eq!(resp.status(), 429);
    let retry_after: u64 = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or("no Retry-After")?;
    assert!((1..=100).contains(&retry_after), "{retry_after}");
    let body: Value = resp.json().await?;
    assert_eq!(body["errcode"], "M_LIMIT_EXCEEDED");
    let ms = body["retry_after_ms"].as_u64().ok_or("no retry_after_ms")?;
    assert!(ms > 0 && ms <= 100_000, "{ms}");

    let metrics = http
        .get(format!("{}/metrics", server.url))
        .send()
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains("hushd_rate_limited_total{limit=\"login\"} 1"),
        "{metrics}"
    );
    Ok(())
}

async fn send_to_device_limit_is_per_user_and_switchable(backend: &str) -> TestResult {
    for enabled in [true, false] {
        let dir = tempfile::tempdir()?;
        let (db, _pg) = database(backend, dir.path())?;
        let mut env = server_env(dir.path(), &db);
        env.push(("HUSHD_REGISTRATION".into(), "open".into()));
        env.push(("HUSHD_RATE_LIMITS_SEND_TO_DEVICE_BURST".into(), "2".into()));
        env.push((
            "HUSHD_RATE_LIMITS_SEND_TO_DEVICE_PER_SECOND".into(),
            "0.1".into(),
        ));
        env.push(("HUSHD_RATE_LIMITS_ENABLED".into(), enabled.to_string()));
        let server = Server::start(&[], &env_refs(&env), dir.path())?;
        let http = client()?;
        let (alice, alice_token) = register(&http, &server.url, "alice").await?;
        let (_, bob_token) = register(&http, &server.url, "bob").await?;
        let send = |token: String, txn: usize| {
            let http = http.clone();
            let url = format!(
                "{}/_matrix/client/v3/sendToDevice/m.test/t{txn}",
                server.url
            );
            let body = json!({"messages": {alice.clone(): {"*": {"n": txn}}}});
            async move {
                http.put(url)
                    .bearer_auth(token)
                    .json(&body)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            }
        };
        let mut statuses = Vec::new();
        for txn in 0..3 {
            statuses.push(send(alice_token.clone(), txn).await?);
        }
        let bob_status = send(bob_token.clone(), 0).await?;
        if enabled {
            assert_eq!(statuses, vec![200, 200, 429]);
        } else {
            assert_eq!(statuses, vec![200, 200, 200]);
        }
        assert_eq!(bob_status, 200, "another user has their own bucket");
    }
    Ok(())
}

async fn metrics_expose_the_named_series_and_cors_headers(backend: &str) -> TestResult {
    let dir = tempfile::tempdir()?;
    let (db, _pg) = database(backend, dir.path())?;
    let mut env = server_env(dir.path(), &db);
    env.push(("HUSHD_REGISTRATION".into(), "open".into()));
    env.push(("HUSHD_METRICS_REFRESH_SECS".into(), "1".into()));
    let server = Server::start(&[], &env_refs(&env), dir.path())?;
    let http = client()?;
    let (alice, token) = register(&http, &server.url, "alice").await?;
    for txn in 0..3 {
        let resp = http
            .put(format!(
                "{}/_matrix/client/v3/sendToDevice/m.test/m{txn}",
                server.url
            ))
            .bearer_auth(&token)
            .json(&json!({"messages": {alice.clone(): {"*": {"n": txn}}}}))
            .send()
            .await?;
        assert_eq!(resp.status(), 200);
    }
    let versions = http
        .get(format!("{}/_matrix/client/versions", server.url))
        .header("origin", "https://app.example")
        .send()
        .await?;
    assert_eq!(versions.headers()["access-control-allow-origin"], "*");
    assert_eq!(
        versions.headers()["access-control-allow-methods"],
        "GET, POST, PUT, DELETE, OPTIONS"
    );
    let preflight = http
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/_matrix/client/v3/keys/claim", server.url),
        )
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .send()
        .await?;
    assert_eq!(preflight.status(), 200);
    assert_eq!(
        preflight.headers()["access-control-allow-headers"],
        "X-Requested-With, Content-Type, Authorization"
    );
    let _ = http
        .get(format!("{}/not/a/route/secret-looking", server.url))
        .send()
        .await?;

    // The mailbox gauge is refreshed from the database every second.
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let resp = http.get(format!("{}/metrics", server.url)).send().await?;
        assert_eq!(resp.status(), 200);
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(content_type.starts_with("text/plain"), "{content_type}");
        let text = resp.text().await?;
        if text.contains("hushd_mailbox_queued_messages 3") || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(text.contains("hushd_mailbox_queued_messages 3"), "{text}");
    for series in [
        "hushd_http_requests_total{route=\"/_matrix/client/v3/sendToDevice/{event_type}/{txn_id}\",method=\"PUT\",status=\"200\"} 3",
        "hushd_http_requests_total{route=\"/_matrix/client/versions\",method=\"GET\",status=\"200\"} 1",
        "hushd_http_requests_total{route=\"unmatched\",method=\"GET\",status=\"404\"} 1",
        "hushd_http_request_duration_seconds_bucket{route=\"/_matrix/client/v3/register\",method=\"POST\",le=\"+Inf\"} 1",
        "# TYPE hushd_http_request_duration_seconds histogram",
        "hushd_sync_waiting 0",
        "hushd_build_info{version=",
        "hushd_rate_limited_total{limit=\"send_to_device\"} 0",
    ] {
        assert!(text.contains(series), "missing {series}\n{text}");
    }
    assert!(
        !text.contains("secret-looking"),
        "raw paths must not become labels"
    );
    Ok(())
}

struct TestPki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

fn test_pki() -> TestResult<TestPki> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Hush test CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = ca_params.self_signed(&ca_key)?;
    let leaf_key = KeyPair::generate()?;
    let mut leaf_params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key)?;
    Ok(TestPki {
        ca_pem: ca.pem(),
        cert_pem: leaf.pem(),
        key_pem: leaf_key.serialize_pem(),
    })
}

#[tokio::test]
async fn tls_listener_serves_http1_and_http2_with_a_test_ca() -> TestResult {
    let dir = tempfile::tempdir()?;
    let pki = test_pki()?;
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, &pki.cert_pem)?;
    std::fs::write(&key, &pki.key_pem)?;
    let (db, _pg) = database("sqlite", dir.path())?;
    let mut env = server_env(dir.path(), &db);
    env.push(("HUSHD_TLS_CERT".into(), cert.display().to_string()));
    env.push(("HUSHD_TLS_KEY".into(), key.display().to_string()));
    let server = Server::start(&[], &env_refs(&env), dir.path())?;
    assert!(
        server.url.starts_with("https://127.0.0.1:"),
        "{}",
        server.url
    );

    let ca = reqwest::Certificate::from_pem(pki.ca_pem.as_bytes())?;
    let h2 = reqwest::Client::builder()
        .add_root_certificate(ca.clone())
        .tls_built_in_root_certs(false)
        .build()?;
    let resp = h2
        .get(format!("{}/_matrix/client/versions", server.url))
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_2, "ALPN picks h2");
    let body: Value = resp.json().await?;
    assert!(body["versions"].is_array());

    let h1 = reqwest::Client::builder()
        .add_root_certificate(ca)
        .tls_built_in_root_certs(false)
        .http1_only()
        .build()?;
    for _ in 0..3 {
        let resp = h1
            .get(format!("{}/_matrix/client/versions", server.url))
            .send()
            .await?;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), reqwest::Version::HTTP_11);
    }

    // A client that does not trust the test CA is refused, and plain HTTP gets no answer.
    let untrusting = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .build()?;
    assert!(untrusting
        .get(format!("{}/_matrix/client/versions", server.url))
        .send()
        .await
        .is_err());
    let plain = server.url.replacen("https://", "http://", 1);
    assert!(client()?
        .get(format!("{plain}/_matrix/client/versions"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true));
    Ok(())
}

#[tokio::test]
async fn tls_key_that_does_not_match_is_refused_with_exit_2() -> TestResult {
    let dir = tempfile::tempdir()?;
    let a = test_pki()?;
    let b = test_pki()?;
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, &a.cert_pem)?;
    std::fs::write(&key, &b.key_pem)?;
    let (db, _pg) = database("sqlite", dir.path())?;
    let mut env = server_env(dir.path(), &db);
    env.push(("HUSHD_TLS_CERT".into(), cert.display().to_string()));
    env.push(("HUSHD_TLS_KEY".into(), key.display().to_string()));
    let out = run(&[], &env_refs(&env), dir.path(), "")?;
    assert_eq!(out.code(), 2, "{}", out.stderr);
    assert!(out.stderr.contains("tls.key"), "{}", out.stderr);
    Ok(())
}
