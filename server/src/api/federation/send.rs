//! `PUT /_matrix/federation/v1/send/{txnId}`: inbound transactions.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use futures::future::join_all;
use hush_federation::ids::{ServerName, UserId};
use serde_json::{json, Map, Value};

use super::{internal, FedState};
use crate::service::identifiers::server_of;
use crate::service::mailbox::MailboxError;
use crate::store::{SendOutcome, SendRequest, StoreError, ToDeviceMessage, TxnKey};
use crate::xmatrix_auth::{FederationError, FederationRequest};

/// The EDU type carrying to-device messages.
pub const DIRECT_TO_DEVICE: &str = "m.direct_to_device";
/// Most EDUs read from one transaction (the protocol's limit); the rest are ignored.
pub const MAX_EDUS: usize = 100;
/// Longest accepted transaction or message ID.
pub const MAX_ID_LEN: usize = 255;
/// Idempotency endpoint name of whole transactions, keyed by origin.
const TXN_ENDPOINT: &str = "federation/send";
/// Idempotency endpoint name of to-device EDUs, keyed by (origin, message_id).
const MESSAGE_ENDPOINT: &str = "federation/m.direct_to_device";

/// # PUT /_matrix/federation/v1/send/{txnId} (and with a trailing slash)
/// - X-Matrix authenticated; a body whose `origin` is another server is refused with 403.
/// - Deduplicated by (origin, txnId): a repeat answers 200 and changes nothing.
/// - `m.direct_to_device` EDUs: the sender must belong to the origin, targets must be local
///   users, `*` means every device of the user, and each EDU is deduplicated by
///   (origin, message_id). Everything is committed before the 200.
/// - Unknown EDU types and fields are ignored; a malformed EDU is logged and dropped, and the
///   answer is still `200 {"pdus": {}}` (any error makes senders back off the whole server).
pub async fn send_transaction(
    State(state): State<FedState>,
    Path(txn_id): Path<String>,
    request: FederationRequest,
) -> Result<Json<Value>, FederationError> {
    let origin = request.origin;
    check_txn_id(&txn_id)?;
    let body = check_transaction_body(&origin, request.body)?;
    let app = &state.app;
    let txn_key = TxnKey {
        user_id: origin.to_string(),
        device_id: String::new(),
        endpoint: TXN_ENDPOINT.to_owned(),
        txn_id,
    };
    if app.store().txn_seen(&txn_key).await.map_err(internal)? {
        return Ok(Json(json!({"pdus": {}})));
    }

    let mut requests = Vec::new();
    for edu in parse_to_device_edus(&origin, state.fed.server_name.as_str(), &body) {
        match to_device_request(&state, &origin, edu).await {
            Ok(Some(request)) => requests.push(request),
            Ok(None) => {}
            Err(e) => return Err(internal(e)),
        }
    }
    let mailbox = app.mailbox();
    let outcomes = join_all(requests.into_iter().map(|r| mailbox.submit(r))).await;
    for outcome in outcomes {
        match outcome {
            Ok(SendOutcome::Committed(_) | SendOutcome::Duplicate) => {}
            Ok(SendOutcome::MailboxFull) => {
                tracing::warn!(%origin, "dropped a to-device EDU: a recipient's mailbox is full");
            }
            Err(
                e @ (MailboxError::ShuttingDown
                | MailboxError::Commit(_)
                | MailboxError::Unavailable(_)),
            ) => {
                // Not committed: the sender retries the same transaction later.
                return Err(internal(e));
            }
        }
    }
    let marker = SendRequest {
        txn: txn_key,
        local: Vec::new(),
        remote: Vec::new(),
    };
    mailbox.submit(marker).await.map_err(internal)?;
    Ok(Json(json!({"pdus": {}})))
}

/// Checks the `{txnId}` of the path: 1 to [`MAX_ID_LEN`] bytes, else 400 `M_INVALID_PARAM`.
pub fn check_txn_id(txn_id: &str) -> Result<(), FederationError> {
    if txn_id.is_empty() || txn_id.len() > MAX_ID_LEN {
        return Err(FederationError::new(
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
            "Invalid transaction ID",
        ));
    }
    Ok(())
}

/// Checks a transaction body from `origin` (the X-Matrix authenticated server): it must be a
/// JSON object (else 400 `M_BAD_JSON`), and an `origin` field, if present, must name the signing
/// server (else 403 `M_FORBIDDEN`). Returns the object.
pub fn check_transaction_body(
    origin: &ServerName,
    body: Option<Value>,
) -> Result<Map<String, Value>, FederationError> {
    let Some(Value::Object(body)) = body else {
        return Err(FederationError::bad_json("A transaction needs a JSON body"));
    };
    if let Some(claimed) = body.get("origin") {
        if claimed.as_str() != Some(origin.as_str()) {
            tracing::warn!(%origin, "transaction claims to come from another server");
            return Err(FederationError::forbidden(
                "The transaction's origin is not the signing server",
            ));
        }
    }
    Ok(body)
}

/// One validated `m.direct_to_device` EDU of an inbound transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundToDevice {
    /// The sending user, a valid user ID of the transaction's origin.
    pub sender: String,
    /// The event type of every message (1 to [`MAX_ID_LEN`] bytes).
    pub event_type: String,
    /// The sender's deduplication ID (1 to [`MAX_ID_LEN`] bytes).
    pub message_id: String,
    /// The messages for users of this server, per user in body order.
    pub users: Vec<InboundUserMessages>,
}

/// The messages of one [`InboundToDevice`] EDU for one local user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundUserMessages {
    /// The target user (a user of this server).
    pub user_id: String,
    /// `(device ID or "*", message content as JSON text)`; only object contents are kept.
    pub devices: Vec<(String, String)>,
}

/// The `m.direct_to_device` EDUs of a checked transaction body (see
/// [`check_transaction_body`]), validated without touching the database.
///
/// At most [`MAX_EDUS`] EDUs are read; other EDU types are ignored; an EDU without content or a
/// required field, with a `sender` that is not a user of `origin`, or with a bad `type` or
/// `message_id` is dropped (and logged). Targets that are not users of `our_name` and
/// non-object device maps or contents are skipped. Never fails, whatever the body.
pub fn parse_to_device_edus(
    origin: &ServerName,
    our_name: &str,
    body: &Map<String, Value>,
) -> Vec<InboundToDevice> {
    let edus = body.get("edus").and_then(Value::as_array);
    edus.into_iter()
        .flatten()
        .take(MAX_EDUS)
        .filter(|edu| edu.get("edu_type").and_then(Value::as_str) == Some(DIRECT_TO_DEVICE))
        .filter_map(|edu| parse_to_device_edu(origin, our_name, edu.get("content")))
        .collect()
}

/// Validates the content of one `m.direct_to_device` EDU; `None` (logged) when it is dropped.
fn parse_to_device_edu(
    origin: &ServerName,
    our_name: &str,
    content: Option<&Value>,
) -> Option<InboundToDevice> {
    let Some(content) = content.and_then(Value::as_object) else {
        tracing::info!(%origin, "dropped a to-device EDU without content");
        return None;
    };
    let field = |name: &str| content.get(name).and_then(Value::as_str);
    let (Some(sender), Some(event_type), Some(message_id), Some(messages)) = (
        field("sender"),
        field("type"),
        field("message_id"),
        content.get("messages").and_then(Value::as_object),
    ) else {
        tracing::info!(%origin, "dropped a to-device EDU missing required fields");
        return None;
    };
    let sender_ok = UserId::parse(sender).is_ok_and(|u| u.server_name() == origin);
    if !sender_ok {
        tracing::warn!(%origin, "dropped a to-device EDU from a user of another server");
        return None;
    }
    if event_type.is_empty()
        || event_type.len() > MAX_ID_LEN
        || message_id.is_empty()
        || message_id.len() > MAX_ID_LEN
    {
        tracing::info!(%origin, "dropped a to-device EDU with a bad type or message_id");
        return None;
    }
    let mut users = Vec::new();
    for (user_id, devices) in messages {
        if server_of(user_id) != Some(our_name) {
            tracing::info!(%origin, "ignored to-device messages for a user not on this server");
            continue;
        }
        let Some(devices) = devices.as_object() else {
            continue;
        };
        let devices = devices
            .iter()
            .filter(|(_, message)| message.is_object())
            .map(|(device_id, message)| (device_id.clone(), message.to_string()))
            .collect();
        users.push(InboundUserMessages {
            user_id: user_id.clone(),
            devices,
        });
    }
    Some(InboundToDevice {
        sender: sender.to_owned(),
        event_type: event_type.to_owned(),
        message_id: message_id.to_owned(),
        users,
    })
}

/// Turns one validated `m.direct_to_device` EDU into a mailbox request (expanding `*` to the
/// user's devices), or `None` (logged) when it must be dropped for having too many messages.
async fn to_device_request(
    state: &FedState,
    origin: &ServerName,
    edu: InboundToDevice,
) -> Result<Option<SendRequest>, StoreError> {
    let app = &state.app;
    let limit = app.config().limits.max_messages_per_request;
    let mut local = Vec::new();
    for user in edu.users {
        for (device_id, content) in user.devices {
            let targets = if device_id == "*" {
                app.store().device_ids(&user.user_id).await?
            } else {
                vec![device_id]
            };
            for device_id in targets {
                local.push(ToDeviceMessage {
                    user_id: user.user_id.clone(),
                    device_id,
                    sender: edu.sender.clone(),
                    event_type: edu.event_type.clone(),
                    content: content.clone(),
                });
            }
        }
        if local.len() > limit {
            tracing::warn!(%origin, "dropped a to-device EDU with too many messages");
            return Ok(None);
        }
    }
    Ok(Some(SendRequest {
        txn: TxnKey {
            user_id: origin.to_string(),
            device_id: String::new(),
            endpoint: MESSAGE_ENDPOINT.to_owned(),
            txn_id: edu.message_id,
        },
        local,
        remote: Vec::new(),
    }))
}

/// Keeps only the entries of `map` whose key is a user of `server`.
pub(super) fn local_users_only(map: &Map<String, Value>, server: &str) -> Map<String, Value> {
    map.iter()
        .filter(|(user, _)| server_of(user) == Some(server))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}
