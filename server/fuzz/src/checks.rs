//! Pure checks of the server's request parsing, one function per fuzz target.
//!
//! Each function takes arbitrary bytes as a request body, runs the same parse and validation
//! functions the handlers run before they touch the database, and asserts what must hold for
//! every input: no panic, errors are Matrix-shaped 4xx, and what is accepted is well-formed.
//!
//! Compiled into the fuzz crate and, through `#[path]`, into `server/tests/parse_fuzz.rs`
//! (stable `cargo test`: proptest plus a replay of the committed corpora), so it may use only
//! crates that `hush-server` has as dependencies.

// Assertions are the point of this file: a failed one is a fuzzing finding.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use hush_federation::ids::{ServerName, UserId};
use hush_server::api::accounts::{
    checked_device_id, requested_localpart, LoginRequest, RegisterRequest,
};
use hush_server::api::federation::send::{
    check_transaction_body, check_txn_id, parse_to_device_edus, MAX_EDUS, MAX_ID_LEN,
};
use hush_server::api::to_device::{check_send_request, check_user_messages};
use hush_server::error::{parse_json_object, ApiError};
use hush_server::service::identifiers::{is_opaque_id, normalise_localpart, server_of};
use hush_server::service::keys::validate_device_keys;
use serde_json::{Map, Value};

/// A fuzz target: it takes arbitrary bytes and panics on a finding.
pub type Target = fn(&[u8]);

/// The fuzz targets, by name, for the corpus replay test.
pub const TARGETS: &[(&str, Target)] = &[
    ("fed_transaction", fed_transaction),
    ("client_bodies", client_bodies),
];

/// The origin of every fuzzed transaction (the X-Matrix authenticated server).
const ORIGIN: &str = "a.example";
/// This server's name.
const OUR_NAME: &str = "b.example";

/// A client error must be a 4xx with an `M_` code (never a 500 for bad input).
fn assert_client_error(err: &ApiError) {
    assert!(
        err.status().is_client_error(),
        "bad input answered with {}",
        err.status()
    );
    assert!(err.errcode().starts_with("M_"), "errcode {}", err.errcode());
}

/// `PUT /_matrix/federation/v1/send/{txnId}` (server/src/api/federation/send.rs): the body as the
/// X-Matrix extractor hands it over (a JSON object or nothing), then the transaction checks and
/// the pure parse of its `m.direct_to_device` EDUs.
///
/// Properties: no panic; refusals are 4xx; every EDU kept has a sender of the origin, a bounded
/// type and message ID, and only users of this server with object contents.
pub fn fed_transaction(data: &[u8]) {
    let origin = ServerName::parse(ORIGIN).expect("fixed origin");
    let txn_id = String::from_utf8_lossy(&data[..data.len().min(300)]);
    if let Err(err) = check_txn_id(&txn_id) {
        assert!(err.status().is_client_error());
    }
    let body = match serde_json::from_slice::<Value>(data) {
        Ok(value @ Value::Object(_)) => Some(value),
        Ok(_) | Err(_) if data.is_empty() => None,
        Ok(_) | Err(_) => return, // refused by the extractor with 400 M_NOT_JSON
    };
    let body = match check_transaction_body(&origin, body) {
        Ok(body) => body,
        Err(err) => {
            assert!(err.status().is_client_error(), "{}", err.status());
            return;
        }
    };
    let edus = parse_to_device_edus(&origin, OUR_NAME, &body);
    assert!(edus.len() <= MAX_EDUS);
    for edu in &edus {
        let sender = UserId::parse(&edu.sender).expect("kept senders are user IDs");
        assert_eq!(sender.server_name(), &origin);
        for id in [&edu.event_type, &edu.message_id] {
            assert!(!id.is_empty() && id.len() <= MAX_ID_LEN);
        }
        for user in &edu.users {
            assert_eq!(server_of(&user.user_id), Some(OUR_NAME));
            for (_, content) in &user.devices {
                let content: Value = serde_json::from_str(content).expect("content is JSON");
                assert!(content.is_object());
            }
        }
    }
}

/// The client-server request bodies whose checks need no database: `POST /login`,
/// `POST /register`, `PUT /sendToDevice/{type}/{txnId}` and the `device_keys` of
/// `POST /keys/upload`. The first byte picks the endpoint, the rest is the body, parsed as
/// `ApiJson` does.
///
/// Properties: no panic; every refusal is a 4xx `M_*` error; accepted device IDs are opaque
/// IDs, accepted usernames make valid user IDs, accepted sendToDevice targets name a server.
pub fn client_bodies(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let result = match selector % 4 {
        0 => login(body),
        1 => register(body),
        2 => send_to_device(body),
        _ => keys_upload(body),
    };
    if let Err(err) = result {
        assert_client_error(&err);
    }
}

fn login(body: &[u8]) -> Result<(), ApiError> {
    let checked = parse_json_object::<LoginRequest>(body)?.check()?;
    assert!(is_opaque_id(&checked.device_id));
    // What `check_password` does next before the database.
    if let Ok(localpart) = normalise_localpart(&checked.user, OUR_NAME) {
        let _ = UserId::parse(&format!("@{localpart}:{OUR_NAME}"));
    }
    Ok(())
}

fn register(body: &[u8]) -> Result<(), ApiError> {
    let request = parse_json_object::<RegisterRequest>(body)?;
    if let Some(username) = &request.username {
        let localpart = requested_localpart(username, OUR_NAME)?;
        let user_id = format!("@{localpart}:{OUR_NAME}");
        assert!(
            UserId::parse(&user_id).is_ok(),
            "accepted username makes the invalid user ID {user_id:?}"
        );
    }
    let device_id = checked_device_id(request.device_id)?;
    assert!(is_opaque_id(&device_id));
    Ok(())
}

fn send_to_device(body: &[u8]) -> Result<(), ApiError> {
    let body = parse_json_object::<Map<String, Value>>(body)?;
    let messages = check_send_request("m.room.encrypted", "txn1", &body)?;
    for (user_id, devices) in messages {
        let (server, devices) = check_user_messages(user_id, devices)?;
        assert!(!server.is_empty());
        assert!(devices.values().all(Value::is_object));
    }
    Ok(())
}

fn keys_upload(body: &[u8]) -> Result<(), ApiError> {
    let body = parse_json_object::<Map<String, Value>>(body)?;
    match body.get("device_keys") {
        None | Some(Value::Null) => Ok(()),
        Some(keys) => validate_device_keys(keys, "@alice:b.example", "ALICEDEVICE"),
    }
}
