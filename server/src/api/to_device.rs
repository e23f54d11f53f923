//! `PUT /sendToDevice/{eventType}/{txnId}`.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Map, Value};

use crate::auth::AuthedDevice;
use crate::error::{ApiError, ApiJson, ApiResult};
use crate::service::identifiers::{is_opaque_id, random_alphanumeric, server_of};
use crate::service::mailbox::MailboxError;
use crate::state::AppState;
use crate::store::{OutboundEdu, SendOutcome, SendRequest, ToDeviceMessage, TxnKey};

/// How long a sender whose recipient's mailbox is full should wait before retrying.
pub const MAILBOX_FULL_RETRY_MS: u64 = 5_000;

/// Checks the path parameters and the body of a sendToDevice request and returns its
/// `messages` map (400 `M_INVALID_PARAM` or `M_BAD_JSON` otherwise). No database access.
pub fn check_send_request<'a>(
    event_type: &str,
    txn_id: &str,
    body: &'a Map<String, Value>,
) -> ApiResult<&'a Map<String, Value>> {
    if !is_opaque_id(txn_id) {
        return Err(ApiError::invalid_param("Invalid transaction ID"));
    }
    if event_type.is_empty() || event_type.len() > 255 {
        return Err(ApiError::invalid_param("Invalid event type"));
    }
    match body.get("messages") {
        Some(Value::Object(m)) => Ok(m),
        Some(_) => Err(ApiError::bad_json("`messages` must be an object")),
        None => Err(ApiError::bad_json("`messages` is required")),
    }
}

/// Checks one entry `messages.<user_id>` of a sendToDevice body: an object of object contents
/// (else 400 `M_BAD_JSON`) for something shaped like a user ID (else 400 `M_INVALID_PARAM`).
/// Returns the user's server name and the device map.
pub fn check_user_messages<'a>(
    user_id: &'a str,
    devices: &'a Value,
) -> ApiResult<(&'a str, &'a Map<String, Value>)> {
    let devices = devices
        .as_object()
        .ok_or_else(|| ApiError::bad_json(format!("messages.{user_id} must be an object")))?;
    if devices.values().any(|c| !c.is_object()) {
        return Err(ApiError::bad_json("Message contents must be objects"));
    }
    let server = server_of(user_id)
        .ok_or_else(|| ApiError::invalid_param(format!("`{user_id}` is not a user ID")))?;
    Ok((server, devices))
}

/// Expands a request body into local messages and one EDU per remote destination.
async fn expand(
    state: &AppState,
    sender: &str,
    event_type: &str,
    messages: &Map<String, Value>,
) -> ApiResult<(Vec<ToDeviceMessage>, Vec<OutboundEdu>)> {
    let server_name = state.config().server_name.as_str();
    let max = state.config().limits.max_messages_per_request;
    let too_many = || {
        ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "M_TOO_LARGE",
            format!("Too many messages in one request (at most {max} target devices)"),
        )
    };
    let mut local = Vec::new();
    let mut remote: BTreeMap<&str, Map<String, Value>> = BTreeMap::new();
    let mut total = 0usize;
    for (user_id, devices) in messages {
        let (server, devices) = check_user_messages(user_id, devices)?;
        if server != server_name {
            total += devices.len();
            if total > max {
                return Err(too_many());
            }
            remote
                .entry(server)
                .or_default()
                .insert(user_id.clone(), Value::Object(devices.clone()));
            continue;
        }
        // Explicit device IDs win over `*` for the same device.
        let mut targets: BTreeMap<String, &Value> = BTreeMap::new();
        if let Some(content) = devices.get("*") {
            for device_id in state.store().device_ids(user_id).await? {
                targets.insert(device_id, content);
            }
        }
        for (device_id, content) in devices {
            if device_id != "*" {
                targets.insert(device_id.clone(), content);
            }
        }
        total += targets.len();
        if total > max {
            return Err(too_many());
        }
        for (device_id, content) in targets {
            local.push(ToDeviceMessage {
                user_id: user_id.clone(),
                device_id,
                sender: sender.to_owned(),
                event_type: event_type.to_owned(),
                content: content.to_string(),
            });
        }
    }
    let remote = remote
        .into_iter()
        .map(|(destination, messages)| OutboundEdu {
            destination: destination.to_owned(),
            edu_type: "m.direct_to_device".to_owned(),
            content: json!({
                "sender": sender,
                "type": event_type,
                "message_id": random_alphanumeric(16),
                "messages": messages,
            })
            .to_string(),
        })
        .collect();
    Ok((local, remote))
}

/// # PUT /_matrix/client/v3/sendToDevice/{eventType}/{txnId}
/// - Idempotent per (device, event type, txnId): a repeat answers `{}` and enqueues nothing.
/// - `*` expands to every device of a local user, the sender's own included.
/// - Remote users: one `m.direct_to_device` EDU per destination, queued durably.
/// - The 200 is sent only after the group commit that contains this request.
/// - A full recipient mailbox refuses the whole request with 429 `M_LIMIT_EXCEEDED`.
pub async fn send(
    State(state): State<AppState>,
    auth: AuthedDevice,
    Path((event_type, txn_id)): Path<(String, String)>,
    ApiJson(body): ApiJson<Map<String, Value>>,
) -> ApiResult<Json<Value>> {
    let messages = check_send_request(&event_type, &txn_id, &body)?;
    let (local, remote) = expand(&state, &auth.user_id, &event_type, messages).await?;
    let request = SendRequest {
        txn: TxnKey {
            user_id: auth.user_id,
            device_id: auth.device_id,
            endpoint: format!("sendToDevice/{event_type}"),
            txn_id,
        },
        local,
        remote,
    };
    match state.mailbox().submit(request).await {
        Ok(SendOutcome::Committed(_)) | Ok(SendOutcome::Duplicate) => Ok(Json(json!({}))),
        Ok(SendOutcome::MailboxFull) => Err(ApiError::new(
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            "M_LIMIT_EXCEEDED",
            "A recipient's mailbox is full; retry later with the same transaction ID",
        )
        .with_extra("retry_after_ms", Value::from(MAILBOX_FULL_RETRY_MS))),
        Err(MailboxError::ShuttingDown) => {
            Err(ApiError::unavailable("The server is shutting down; retry"))
        }
        Err(MailboxError::Commit(detail)) => Err(ApiError::internal(detail)),
        Err(MailboxError::Unavailable(detail)) => Err(ApiError::database_unavailable(detail)),
    }
}
