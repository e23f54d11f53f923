//! The outbound client and discovery against a real HTTPS server (axum + rustls) with a test CA.

#![cfg(feature = "http")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::result_large_err)]

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use hush_federation::client::{
    ClientBuildError, FederationClient, FederationClientConfig, FederationError,
};
use hush_federation::discovery::{ResolvedVia, Resolver};
use hush_federation::ids::{ServerName, UserId};
use hush_federation::keys::{build_key_document, unix_millis_now, ServerSigningKey};
use hush_federation::wire::{
    DeviceTarget, DirectToDeviceContent, Edu, KeysQueryRequest, Transaction,
};
use hush_federation::xmatrix::XMatrixAuth;
use serde_json::{json, Value};

struct Pki {
    _dir: tempfile::TempDir,
    ca_file: std::path::PathBuf,
    cert_pem: String,
    key_pem: String,
}

fn make_pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Hush federation test CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca_cert, &ca_key).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();
    Pki {
        _dir: dir,
        ca_file,
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

struct ServerState {
    /// The name this test server answers to (used as `destination` when verifying).
    name: ServerName,
    /// Its own signing key, for the key document.
    key: ServerSigningKey,
    /// Name published in the key document (normally `name`).
    key_doc_name: ServerName,
    /// The key the origin signs with.
    origin_key: ed25519_dalek::VerifyingKey,
    /// `m.server` of the well-known answer; `None` answers 404.
    delegate: Mutex<Option<String>>,
    well_known_hits: AtomicUsize,
    received: Mutex<Vec<(String, Option<Value>)>>,
}

fn error(status: StatusCode, errcode: &str) -> Response {
    (status, Json(json!({"errcode": errcode, "error": "test"}))).into_response()
}

fn check_auth(
    state: &ServerState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Option<Value>, Response> {
    let header = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| error(StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED"))?;
    let auth =
        XMatrixAuth::parse(header).map_err(|_| error(StatusCode::BAD_REQUEST, "M_UNAUTHORIZED"))?;
    let content: Option<Value> = if body.is_empty() {
        None
    } else {
        Some(
            serde_json::from_slice(body)
                .map_err(|_| error(StatusCode::BAD_REQUEST, "M_NOT_JSON"))?,
        )
    };
    let raw_uri = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    auth.verify(
        method.as_str(),
        raw_uri,
        content.as_ref(),
        &state.name,
        &state.origin_key,
    )
    .map_err(|_| error(StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED"))?;
    state
        .received
        .lock()
        .unwrap()
        .push((raw_uri.to_owned(), content.clone()));
    Ok(content)
}

async fn well_known(State(state): State<Arc<ServerState>>) -> Response {
    state.well_known_hits.fetch_add(1, Ordering::SeqCst);
    match state.delegate.lock().unwrap().clone() {
        Some(delegate) => (
            [("cache-control", "max-age=600")],
            Json(json!({"m.server": delegate})),
        )
            .into_response(),
        None => error(StatusCode::NOT_FOUND, "M_NOT_FOUND"),
    }
}

async fn key_doc(State(state): State<Arc<ServerState>>) -> Json<Value> {
    Json(
        build_key_document(
            &state.key_doc_name,
            &[&state.key],
            &[],
            unix_millis_now() + 3_600_000,
        )
        .unwrap(),
    )
}

async fn send_txn(
    State(state): State<Arc<ServerState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match check_auth(&state, &method, &uri, &headers, &body) {
        Ok(_) => Json(json!({"pdus": {}})).into_response(),
        Err(response) => response,
    }
}

async fn user_devices(
    State(state): State<Arc<ServerState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match check_auth(&state, &method, &uri, &headers, &body) {
        Ok(_) => Json(json!({"user_id": "@bob:remote.test", "stream_id": 4, "devices": [{"device_id": "BOBDEV"}]})).into_response(),
        Err(response) => response,
    }
}

async fn forbidden_query() -> Response {
    error(StatusCode::FORBIDDEN, "M_FORBIDDEN")
}

async fn slow_version() -> Json<Value> {
    tokio::time::sleep(Duration::from_secs(5)).await;
    Json(json!({"server": {"name": "slow", "version": "0"}}))
}

struct TestServer {
    port: u16,
    state: Arc<ServerState>,
    pki: Pki,
}

async fn start_server(name: &str, origin_key: ed25519_dalek::VerifyingKey) -> TestServer {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pki = make_pki();
    let state = Arc::new(ServerState {
        name: ServerName::parse(name).unwrap(),
        key: ServerSigningKey::generate("srv").unwrap(),
        key_doc_name: ServerName::parse(name).unwrap(),
        origin_key,
        delegate: Mutex::new(None),
        well_known_hits: AtomicUsize::new(0),
        received: Mutex::new(Vec::new()),
    });
    let app = Router::new()
        .route("/.well-known/matrix/server", get(well_known))
        .route("/_matrix/key/v2/server", get(key_doc))
        .route("/_matrix/federation/v1/send/{txn}", put(send_txn))
        .route(
            "/_matrix/federation/v1/user/devices/{user}",
            get(user_devices),
        )
        .route(
            "/_matrix/federation/v1/user/keys/query",
            post(forbidden_query),
        )
        .route("/_matrix/federation/v1/version", get(slow_version))
        .with_state(state.clone());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let tls = axum_server::tls_rustls::RustlsConfig::from_pem(
        pki.cert_pem.clone().into_bytes(),
        pki.key_pem.clone().into_bytes(),
    )
    .await
    .unwrap();
    tokio::spawn(async move {
        let _ = axum_server::from_tcp_rustls(listener, tls)
            .serve(app.into_make_service())
            .await;
    });
    TestServer { port, state, pki }
}

fn client_for(
    server: &TestServer,
    key: Arc<ServerSigningKey>,
    remote: &str,
    trust: bool,
) -> FederationClient {
    let config = FederationClientConfig {
        extra_ca_files: if trust {
            vec![server.pki.ca_file.clone()]
        } else {
            vec![]
        },
        overrides: HashMap::from([(
            ServerName::parse(remote).unwrap(),
            format!("https://localhost:{}", server.port),
        )]),
        request_timeout: Duration::from_secs(1),
        ..FederationClientConfig::default()
    };
    FederationClient::new(ServerName::parse("origin.test").unwrap(), key, &config).unwrap()
}

fn sample_transaction() -> Transaction {
    let content = DirectToDeviceContent {
        sender: UserId::parse("@alice:origin.test").unwrap(),
        event_type: "m.room.encrypted".into(),
        message_id: "m1".into(),
        messages: [(
            UserId::parse("@bob:remote.test").unwrap(),
            [(DeviceTarget::AllDevices, json!({"ciphertext": "é\u{1}"}))]
                .into_iter()
                .collect(),
        )]
        .into_iter()
        .collect(),
    };
    Transaction::new(
        ServerName::parse("origin.test").unwrap(),
        1_690_000_000_000,
        vec![Edu::direct_to_device(&content).unwrap()],
    )
}

#[tokio::test]
async fn signed_transaction_is_verified_by_the_receiver() {
    let key = Arc::new(ServerSigningKey::generate("a_1").unwrap());
    let server = start_server("remote.test", key.verifying_key()).await;
    let client = client_for(&server, key, "remote.test", true);
    let transaction = sample_transaction();
    let response = client
        .send_transaction(
            &ServerName::parse("remote.test").unwrap(),
            "txn 1/x",
            &transaction,
        )
        .await
        .unwrap();
    assert!(response.pdus.is_empty());
    let received = server.state.received.lock().unwrap().clone();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].0, "/_matrix/federation/v1/send/txn%201%2Fx");
    assert_eq!(
        received[0].1.as_ref().unwrap(),
        &serde_json::to_value(&transaction).unwrap()
    );
}

#[tokio::test]
async fn signed_get_with_percent_encoded_path() {
    let key = Arc::new(ServerSigningKey::generate("a_1").unwrap());
    let server = start_server("remote.test", key.verifying_key()).await;
    let client = client_for(&server, key, "remote.test", true);
    let devices = client
        .user_devices(&UserId::parse("@bob:remote.test").unwrap())
        .await
        .unwrap();
    assert_eq!(devices.stream_id, 4);
    assert_eq!(devices.devices[0].device_id.as_str(), "BOBDEV");
    let received = server.state.received.lock().unwrap().clone();
    assert_eq!(
        received[0],
        (
            "/_matrix/federation/v1/user/devices/%40bob%3Aremote.test".to_owned(),
            None
        )
    );
}

#[tokio::test]
async fn wrong_key_is_refused_as_a_remote_error() {
    let key = Arc::new(ServerSigningKey::generate("a_1").unwrap());
    let impostor = Arc::new(ServerSigningKey::generate("a_1").unwrap());
    let server = start_server("remote.test", key.verifying_key()).await;
    let client = client_for(&server, impostor, "remote.test", true);
    let err = client
        .send_transaction(
            &ServerName::parse("remote.test").unwrap(),
            "1",
            &sample_transaction(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(401));
    assert_eq!(err.errcode(), Some("M_UNAUTHORIZED"));
    assert!(!err.is_unreachable());
    assert!(server.state.received.lock().unwrap().is_empty());
}

#[tokio::test]
async fn requests_for_another_destination_are_refused() {
    // Signed for "other.test" but delivered to a server that calls itself "remote.test".
    let key = Arc::new(ServerSigningKey::generate("a_1").unwrap());
    let server = start_server("remote.test", key.verifying_key()).await;
    let client = client_for(&server, key, "other.test", true);
    let err = client
        .send_transaction(
            &ServerName::parse("other.test").unwrap(),
            "1",
            &sample_transaction(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(401));
}

#[tokio::test]
async fn remote_errors_carry_the_errcode() {
    let key = Arc::new(ServerSigningKey::generate("a_1").unwrap());
    let server = start_server("remote.test", key.verifying_key()).await;
    let client = client_for(&server, key, "remote.test", true);
    let err = client
        .query_keys(
            &ServerName::parse("remote.test").unwrap(),
            &KeysQueryRequest::default(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, FederationError::Remote { status: 403, .. }),
        "{err:?}"
    );
    assert_eq!(err.errcode(), Some("M_FORBIDDEN"));
}

#[tokio::test]
async fn slow_servers_time_out() {
    let key = Arc::new(ServerSigningKey::generate("a_1").unwrap());
    let server = start_server("remote.test", key.verifying_key()).await;
    let client = client_for(&server, key, "remote.test", true);
    let err = client
        .version(&ServerName::parse("remote.test").unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, FederationError::Timeout { .. }), "{err:?}");
    assert!(err.is_unreachable());
}

#[tokio::test]
async fn closed_ports_are_unreachable() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let key = Arc::new(ServerSigningKey::generate("a_1").unwrap());
    let config = FederationClientConfig {
        overrides: HashMap::from([(
            ServerName::parse("gone.test").unwrap(),
            format!("https://127.0.0.1:{port}"),
        )]),
        ..FederationClientConfig::default()
    };
    let client =
        FederationClient::new(ServerName::parse("origin.test").unwrap(), key, &config).unwrap();
    let err = client
        .version(&ServerName::parse("gone.test").unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(err, FederationError::Unreachable { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn untrusted_certificates_are_refused() {
    let key = Arc::new(ServerSigningKey::generate("a_1").unwrap());
    let server = start_server("remote.test", key.verifying_key()).await;
    let client = client_for(&server, key, "remote.test", false);
    let err = client
        .fetch_server_keys(&ServerName::parse("remote.test").unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, FederationError::Unreachable { reason, .. } if reason.to_lowercase().contains("certificate")),
        "{err:?}"
    );
}

#[tokio::test]
async fn fetches_and_verifies_key_documents() {
    let key = Arc::new(ServerSigningKey::generate("a_1").unwrap());
    let server = start_server("remote.test", key.verifying_key()).await;
    let client = client_for(&server, key.clone(), "remote.test", true);
    let keys = client
        .fetch_server_keys(&ServerName::parse("remote.test").unwrap())
        .await
        .unwrap();
    assert_eq!(
        keys.verify_keys.get("ed25519:srv"),
        Some(&server.state.key.verifying_key())
    );

    // The same document served for a name it does not belong to is refused.
    let client = client_for(&server, key, "impostor.test", true);
    let err = client
        .fetch_server_keys(&ServerName::parse("impostor.test").unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, FederationError::InvalidKeys(_)), "{err:?}");
}

#[tokio::test]
async fn well_known_delegation_is_followed_and_cached() {
    let key = Arc::new(ServerSigningKey::generate("a_1").unwrap());
    let server = start_server("localhost", key.verifying_key()).await;
    *server.state.delegate.lock().unwrap() = Some(format!("127.0.0.1:{}", server.port));
    let config = FederationClientConfig {
        extra_ca_files: vec![server.pki.ca_file.clone()],
        well_known_port: server.port,
        ..FederationClientConfig::default()
    };
    let client =
        FederationClient::new(ServerName::parse("origin.test").unwrap(), key, &config).unwrap();
    let localhost = ServerName::parse("localhost").unwrap();
    let resolved = client.resolver().resolve(&localhost).await.unwrap();
    assert_eq!(
        resolved.base_url.as_str(),
        format!("https://127.0.0.1:{}/", server.port)
    );
    assert_eq!(
        resolved.via,
        ResolvedVia::WellKnown(ServerName::parse(&format!("127.0.0.1:{}", server.port)).unwrap())
    );
    // A signed request goes to the delegated address but is signed for "localhost".
    client
        .send_transaction(&localhost, "t1", &sample_transaction())
        .await
        .unwrap();
    assert_eq!(
        server.state.well_known_hits.load(Ordering::SeqCst),
        1,
        "cached after the first lookup"
    );
    // Forgetting the cache fetches again.
    client.resolver().forget(&localhost);
    client.resolver().resolve(&localhost).await.unwrap();
    assert_eq!(server.state.well_known_hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn missing_well_known_falls_back_to_8448_and_is_cached() {
    let key = Arc::new(ServerSigningKey::generate("a_1").unwrap());
    let server = start_server("localhost", key.verifying_key()).await;
    let http = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(&server.pki.ca_file).unwrap()).unwrap(),
        )
        .build()
        .unwrap();
    let resolver = Resolver::new(http, HashMap::new(), server.port);
    let localhost = ServerName::parse("localhost").unwrap();
    for _ in 0..2 {
        let resolved = resolver.resolve(&localhost).await.unwrap();
        assert_eq!(resolved.base_url.as_str(), "https://localhost:8448/");
        assert_eq!(resolved.via, ResolvedVia::DefaultPort);
    }
    assert_eq!(
        server.state.well_known_hits.load(Ordering::SeqCst),
        1,
        "the failure is cached"
    );
    // IP literals and explicit ports never ask.
    resolver
        .resolve(&ServerName::parse("127.0.0.1").unwrap())
        .await
        .unwrap();
    resolver
        .resolve(&ServerName::parse("localhost:1").unwrap())
        .await
        .unwrap();
    assert_eq!(server.state.well_known_hits.load(Ordering::SeqCst), 1);
}

#[test]
fn bad_configuration_is_reported() {
    let key = Arc::new(ServerSigningKey::generate("a_1").unwrap());
    let origin = ServerName::parse("origin.test").unwrap();
    let config = FederationClientConfig {
        extra_ca_files: vec!["/nonexistent/ca.pem".into()],
        ..Default::default()
    };
    assert!(matches!(
        FederationClient::new(origin.clone(), key.clone(), &config),
        Err(ClientBuildError::CaFile { .. })
    ));
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let config = FederationClientConfig {
        extra_ca_files: vec![empty],
        ..Default::default()
    };
    assert!(matches!(
        FederationClient::new(origin.clone(), key.clone(), &config),
        Err(ClientBuildError::NoCertificates(_))
    ));
    let config = FederationClientConfig {
        overrides: HashMap::from([(
            ServerName::parse("x").unwrap(),
            "http://127.0.0.1:1".to_owned(),
        )]),
        ..Default::default()
    };
    assert!(matches!(
        FederationClient::new(origin, key, &config),
        Err(ClientBuildError::Override(_))
    ));
}
