//! End-to-end key distribution: upload, query and claim (including the Hush bundle claim).
//!
//! Keys are public material stored verbatim; the server never verifies or alters signatures
//! (clients do). Remote users go through [`RemoteKeys`], which the federation layer installs
//! with [`crate::state::AppState::set_remote_keys`]; without it they are reported in `failures`.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::service::identifiers::server_of;
use crate::service::now_ms;
use crate::service::remote_keys::{fan_out, RemoteKeyCall};
use crate::state::AppState;
use crate::store::{Claimed, KeyClaim, KeyUpload, OtkUploadOutcome};

/// The Matrix algorithm of signed X25519 one-time and fallback keys.
pub const SIGNED_CURVE25519: &str = "signed_curve25519";
/// Hush extension: claiming this algorithm returns a device's X3DH bundle (see docs/api.md).
pub const BUNDLE_ALGORITHM: &str = "hush.x3dh_bundle";

/// A boxed future returned by [`RemoteKeys`] methods.
pub type RemoteFuture<'a> = Pin<Box<dyn Future<Output = Result<Value, String>> + Send + 'a>>;

/// Queries and claims keys of users on other servers (the federation seam).
///
/// Both methods get the request body for ONE destination in the federation API's shape
/// (`{"device_keys": {...}}` / `{"one_time_keys": {...}}`) and return that server's response
/// body, or an error message that ends up in the client's `failures`.
pub trait RemoteKeys: Send + Sync {
    /// `POST /_matrix/federation/v1/user/keys/query` on `destination`.
    fn query<'a>(&'a self, destination: &'a str, body: Value, timeout_ms: u64) -> RemoteFuture<'a>;
    /// `POST /_matrix/federation/v1/user/keys/claim` on `destination`.
    fn claim<'a>(&'a self, destination: &'a str, body: Value, timeout_ms: u64) -> RemoteFuture<'a>;
}

/// Default time a client lets us spend on remote servers.
pub const DEFAULT_REMOTE_TIMEOUT_MS: u64 = 10_000;

fn obj<'a>(value: &'a Value, what: &str) -> Result<&'a Map<String, Value>, ApiError> {
    value
        .as_object()
        .ok_or_else(|| ApiError::bad_json(format!("`{what}` must be an object")))
}

/// Splits `<algorithm>:<key_id>` (at the first colon; the key ID is opaque).
fn split_key_id(full: &str) -> Result<(&str, &str), ApiError> {
    match full.split_once(':') {
        Some((alg, id)) if !alg.is_empty() && !id.is_empty() => Ok((alg, id)),
        _ => Err(ApiError::bad_json(format!(
            "Key ID `{full}` must look like <algorithm>:<key_id>"
        ))),
    }
}

fn key_uploads(map: &Map<String, Value>, what: &str) -> Result<Vec<KeyUpload>, ApiError> {
    map.iter()
        .map(|(full, value)| {
            let (algorithm, key_id) = split_key_id(full)?;
            if !(value.is_string() || value.is_object()) {
                return Err(ApiError::bad_json(format!(
                    "`{what}.{full}` must be a string or a key object"
                )));
            }
            Ok(KeyUpload {
                algorithm: algorithm.to_owned(),
                key_id: key_id.to_owned(),
                json: value.to_string(),
            })
        })
        .collect()
}

/// Checks uploaded device keys: they must belong to the uploading device and carry
/// `algorithms`, `keys` and `signatures` of the right types.
pub fn validate_device_keys(keys: &Value, user_id: &str, device_id: &str) -> Result<(), ApiError> {
    let keys = obj(keys, "device_keys")?;
    if keys.get("user_id").and_then(Value::as_str) != Some(user_id) {
        return Err(ApiError::invalid_param(
            "device_keys.user_id does not match the authenticated user",
        ));
    }
    if keys.get("device_id").and_then(Value::as_str) != Some(device_id) {
        return Err(ApiError::invalid_param(
            "device_keys.device_id does not match the authenticated device",
        ));
    }
    let algorithms_ok = keys
        .get("algorithms")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().all(Value::is_string));
    if !algorithms_ok {
        return Err(ApiError::bad_json(
            "device_keys.algorithms must be an array of strings",
        ));
    }
    let keys_ok = keys
        .get("keys")
        .and_then(Value::as_object)
        .is_some_and(|k| !k.is_empty() && k.values().all(Value::is_string));
    if !keys_ok {
        return Err(ApiError::bad_json(
            "device_keys.keys must be a non-empty object of strings",
        ));
    }
    if !keys.get("signatures").is_some_and(Value::is_object) {
        return Err(ApiError::bad_json(
            "device_keys.signatures must be an object",
        ));
    }
    Ok(())
}

/// One-time key counts with an explicit `signed_curve25519` entry (0 when exhausted).
pub async fn otk_counts(
    state: &AppState,
    user_id: &str,
    device_id: &str,
) -> Result<BTreeMap<String, i64>, ApiError> {
    let mut counts = state
        .store()
        .one_time_key_counts(user_id, device_id)
        .await?;
    counts.entry(SIGNED_CURVE25519.to_owned()).or_insert(0);
    Ok(counts)
}

/// `POST /keys/upload`. Returns `one_time_key_counts`.
pub async fn upload(
    state: &AppState,
    user_id: &str,
    device_id: &str,
    body: &Map<String, Value>,
) -> Result<BTreeMap<String, i64>, ApiError> {
    let store = state.store();
    let now = now_ms();
    // Validate everything before writing anything.
    let device_keys = match body.get("device_keys") {
        None | Some(Value::Null) => None,
        Some(keys) => {
            validate_device_keys(keys, user_id, device_id)?;
            Some(keys.to_string())
        }
    };
    let otks = match body.get("one_time_keys") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => key_uploads(obj(v, "one_time_keys")?, "one_time_keys")?,
    };
    let max = state.config().limits.max_one_time_keys_per_upload;
    if otks.len() > max {
        return Err(ApiError::invalid_param(format!(
            "Too many one-time keys in one upload (at most {max})"
        )));
    }
    let fallbacks = match body.get("fallback_keys") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => key_uploads(obj(v, "fallback_keys")?, "fallback_keys")?,
    };
    let mut seen_fallback_algs = std::collections::BTreeSet::new();
    for key in &fallbacks {
        if !seen_fallback_algs.insert(key.algorithm.as_str()) {
            return Err(ApiError::bad_json(format!(
                "At most one fallback key per algorithm ({})",
                key.algorithm
            )));
        }
    }

    if let Some(json) = device_keys {
        if store
            .set_device_keys(user_id, device_id, &json, now)
            .await?
        {
            state.notifier().wake_device_lists_of(user_id);
        }
    }
    if !otks.is_empty() {
        if let OtkUploadOutcome::ConflictingKey(id, old, new) = store
            .add_one_time_keys(user_id, device_id, &otks, now)
            .await?
        {
            return Err(ApiError::unknown(format!(
                "One time key {id} already exists. Old key: {old}; new key: {new}"
            )));
        }
    }
    if !fallbacks.is_empty() {
        store
            .set_fallback_keys(user_id, device_id, &fallbacks)
            .await?;
    }
    otk_counts(state, user_id, device_id).await
}

/// Parses a `{"<user>": [devices]}` map for `keys/query`.
fn parse_query(device_keys: &Value) -> Result<BTreeMap<String, Vec<String>>, ApiError> {
    let map = obj(device_keys, "device_keys")?;
    let mut out = BTreeMap::new();
    for (user, devices) in map {
        let devices = devices
            .as_array()
            .ok_or_else(|| ApiError::bad_json(format!("device_keys.{user} must be an array")))?
            .iter()
            .map(|d| {
                d.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| ApiError::bad_json("Device IDs must be strings"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        out.insert(user.clone(), devices);
    }
    Ok(out)
}

fn timeout_of(body: &Map<String, Value>) -> u64 {
    body.get("timeout")
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_REMOTE_TIMEOUT_MS)
        .min(60_000)
}

/// Local device keys of one user in the client/federation response shape: the stored object
/// plus `unsigned.device_display_name`. `None` if the user does not exist.
pub async fn local_device_keys(
    state: &AppState,
    user_id: &str,
    devices: &[String],
) -> Result<Option<Map<String, Value>>, ApiError> {
    let stored = state.store().get_device_keys(user_id, devices).await?;
    if stored.is_empty() && state.store().get_user(user_id).await?.is_none() {
        return Ok(None);
    }
    let mut out = Map::new();
    for (device_id, (json, display_name)) in stored {
        let Ok(Value::Object(mut keys)) = serde_json::from_str::<Value>(&json) else {
            tracing::warn!(%user_id, %device_id, "stored device keys are not a JSON object");
            continue;
        };
        if let Some(name) = display_name {
            let unsigned = keys
                .entry("unsigned")
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(unsigned) = unsigned {
                unsigned.insert("device_display_name".into(), Value::from(name));
            }
        }
        out.insert(device_id, Value::Object(keys));
    }
    Ok(Some(out))
}

/// `POST /keys/query` for the authenticated `requester`.
pub async fn query(
    state: &AppState,
    requester: &str,
    body: &Map<String, Value>,
) -> Result<Value, ApiError> {
    let wanted = match body.get("device_keys") {
        Some(v) => parse_query(v)?,
        None => return Err(ApiError::bad_json("`device_keys` is required")),
    };
    let server_name = state.config().server_name.as_str();
    let mut device_keys = Map::new();
    let mut failures = Map::new();
    let mut remote: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    let mut local_users = Vec::new();
    for (user, devices) in &wanted {
        match server_of(user) {
            Some(server) if server == server_name => {
                if let Some(keys) = local_device_keys(state, user, devices).await? {
                    device_keys.insert(user.clone(), Value::Object(keys));
                    local_users.push(user.clone());
                }
            }
            Some(server) => {
                remote
                    .entry(server.to_owned())
                    .or_default()
                    .insert(user.clone(), json!(devices));
            }
            None => {} // Not a user ID: nothing to report.
        }
    }
    if !local_users.is_empty() {
        state
            .store()
            .add_device_list_interest(requester, &local_users)
            .await?;
    }
    let requests = remote
        .into_iter()
        .map(|(server, users)| (server, json!({ "device_keys": users })))
        .collect();
    let answers = fan_out(
        state.remote_keys(),
        RemoteKeyCall::Query,
        requests,
        timeout_of(body),
    )
    .await;
    for (server, answer) in answers {
        match answer {
            Ok(Value::Object(mut resp)) => {
                if let Some(Value::Object(keys)) = resp.remove("device_keys") {
                    for (user, devices) in keys {
                        // Only accept users that belong to the server that answered.
                        if server_of(&user) == Some(server.as_str()) && devices.is_object() {
                            device_keys.insert(user, devices);
                        }
                    }
                }
            }
            Ok(_) => {
                failures.insert(server, json!({"status": 502, "message": "Bad response"}));
            }
            Err(message) => {
                failures.insert(server, json!({"status": 503, "message": message}));
            }
        }
    }
    Ok(json!({
        "failures": failures,
        "device_keys": device_keys,
        "master_keys": {},
        "self_signing_keys": {},
        "user_signing_keys": {},
    }))
}

/// Parses `{"<user>": {"<device>": "<algorithm>"}}` for `keys/claim`.
fn parse_claim(
    one_time_keys: &Value,
) -> Result<BTreeMap<String, BTreeMap<String, String>>, ApiError> {
    let mut out = BTreeMap::new();
    for (user, devices) in obj(one_time_keys, "one_time_keys")? {
        let mut per_device = BTreeMap::new();
        for (device, algorithm) in obj(devices, "one_time_keys.<user>")? {
            let algorithm = algorithm
                .as_str()
                .ok_or_else(|| ApiError::bad_json("Claimed algorithms must be strings"))?;
            per_device.insert(device.clone(), algorithm.to_owned());
        }
        out.insert(user.clone(), per_device);
    }
    Ok(out)
}

fn key_json(json: &str) -> Value {
    serde_json::from_str(json).unwrap_or_else(|_| Value::String(json.to_owned()))
}

/// The answer for one device's claim; `None` when nothing was available.
fn claimed_json(claimed: Claimed) -> Option<Map<String, Value>> {
    let mut out = Map::new();
    match claimed {
        Claimed::Nothing => return None,
        Claimed::Key(key) => {
            out.insert(key.full_id, key_json(&key.json));
        }
        Claimed::Bundle {
            signed_prekey: spk,
            one_time_key,
        } => {
            let spk_key_id = spk
                .full_id
                .split_once(':')
                .map_or(spk.full_id.as_str(), |(_, id)| id)
                .to_owned();
            let mut bundle = Map::new();
            bundle.insert(
                "signed_prekey".into(),
                json!({ spk.full_id.clone(): key_json(&spk.json) }),
            );
            if let Some(opk) = one_time_key {
                bundle.insert(
                    "one_time_key".into(),
                    json!({ opk.full_id.clone(): key_json(&opk.json) }),
                );
            }
            out.insert(
                format!("{BUNDLE_ALGORITHM}:{spk_key_id}"),
                Value::Object(bundle),
            );
        }
    }
    Some(out)
}

/// `POST /keys/claim` without a local requester (the federation endpoint).
pub async fn claim(state: &AppState, body: &Map<String, Value>) -> Result<Value, ApiError> {
    claim_as(state, None, body).await
}

/// `POST /keys/claim`; a local `requester` starts watching the device lists of the local
/// users it claimed keys of.
pub async fn claim_as(
    state: &AppState,
    requester: Option<&str>,
    body: &Map<String, Value>,
) -> Result<Value, ApiError> {
    let wanted = match body.get("one_time_keys") {
        Some(v) => parse_claim(v)?,
        None => return Err(ApiError::bad_json("`one_time_keys` is required")),
    };
    let server_name = state.config().server_name.as_str();
    let mut one_time_keys = Map::new();
    let mut failures = Map::new();
    let mut remote: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    let mut local: Vec<KeyClaim> = Vec::new();
    for (user, devices) in wanted {
        match server_of(&user) {
            Some(server) if server == server_name => {
                for (device, algorithm) in devices {
                    let bundle = algorithm == BUNDLE_ALGORITHM;
                    local.push(KeyClaim {
                        user_id: user.clone(),
                        device_id: device,
                        algorithm: if bundle {
                            SIGNED_CURVE25519.to_owned()
                        } else {
                            algorithm
                        },
                        bundle,
                    });
                }
            }
            Some(server) => {
                remote
                    .entry(server.to_owned())
                    .or_default()
                    .insert(user.clone(), json!(devices));
            }
            None => {}
        }
    }
    // All local claims (and the requester's device-list interest in their owners) in one
    // transaction.
    let results = state
        .store()
        .claim_keys(&local, requester, now_ms())
        .await?;
    for (claim, claimed) in local.into_iter().zip(results) {
        // A claimed one-time key changes the owner's counts (or, for a fallback key, its
        // unused-fallback list): let it replenish.
        let wake = matches!(
            claimed,
            Claimed::Key(_)
                | Claimed::Bundle {
                    one_time_key: Some(_),
                    ..
                }
        );
        if wake {
            state
                .notifier()
                .wake_device(&claim.user_id, &claim.device_id);
        }
        if let Some(keys) = claimed_json(claimed) {
            // Exhausted users are omitted entirely, not `{}`.
            let entry = one_time_keys
                .entry(claim.user_id)
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(devices) = entry {
                devices.insert(claim.device_id, Value::Object(keys));
            }
        }
    }
    let requests = remote
        .into_iter()
        .map(|(server, users)| (server, json!({ "one_time_keys": users })))
        .collect();
    let answers = fan_out(
        state.remote_keys(),
        RemoteKeyCall::Claim,
        requests,
        timeout_of(body),
    )
    .await;
    for (server, answer) in answers {
        match answer {
            Ok(Value::Object(mut resp)) => {
                if let Some(Value::Object(keys)) = resp.remove("one_time_keys") {
                    for (user, devices) in keys {
                        let non_empty = devices.as_object().is_some_and(|d| !d.is_empty());
                        if server_of(&user) == Some(server.as_str()) && non_empty {
                            one_time_keys.insert(user, devices);
                        }
                    }
                }
            }
            Ok(_) => {
                failures.insert(server, json!({"status": 502, "message": "Bad response"}));
            }
            Err(message) => {
                failures.insert(server, json!({"status": 503, "message": message}));
            }
        }
    }
    Ok(json!({ "failures": failures, "one_time_keys": one_time_keys }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good_keys() -> Value {
        json!({
            "user_id": "@a:hs", "device_id": "D",
            "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
            "keys": {"ed25519:D": "k"},
            "signatures": {"@a:hs": {"ed25519:D": "s"}}
        })
    }

    #[test]
    fn device_keys_must_be_ours_and_complete() {
        assert!(validate_device_keys(&good_keys(), "@a:hs", "D").is_ok());
        let err = validate_device_keys(&good_keys(), "@b:hs", "D").err();
        assert_eq!(err.map(|e| e.status().as_u16()), Some(400));
        let err = validate_device_keys(&good_keys(), "@a:hs", "E").err();
        assert_eq!(err.map(|e| e.status().as_u16()), Some(400));
        for missing in ["algorithms", "keys", "signatures"] {
            let mut keys = good_keys();
            if let Some(map) = keys.as_object_mut() {
                map.remove(missing);
            }
            let err = validate_device_keys(&keys, "@a:hs", "D").err();
            assert_eq!(err.map(|e| e.errcode()), Some("M_BAD_JSON"), "{missing}");
        }
    }

    #[test]
    fn query_values_must_be_arrays() {
        assert!(parse_query(&json!({"@a:hs": []})).is_ok());
        let err = parse_query(&json!({"@a:hs": {"D": {}}})).err();
        assert_eq!(err.map(|e| e.errcode()), Some("M_BAD_JSON"));
    }

    #[test]
    fn key_ids_split_at_first_colon() {
        assert_eq!(
            split_key_id("signed_curve25519:AA:BB").ok(),
            Some(("signed_curve25519", "AA:BB"))
        );
        assert!(split_key_id("nocolon").is_err());
        assert!(split_key_id(":x").is_err());
    }
}
