//! Request and response bodies of the federation endpoints Hush speaks, as serde types.
//!
//! Unknown fields are ignored on input (peers such as Synapse add their own), and a malformed EDU
//! inside a transaction is dropped rather than failing the whole transaction, because a receiver
//! must answer 200 once the request is authenticated. Signed objects (device keys, one-time keys)
//! are kept as raw [`serde_json::Value`] so their signatures stay checkable.
//!
//! Paths are built by the functions at the bottom, which percent-encode path segments.

use std::collections::BTreeMap;
use std::fmt;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::ids::{DeviceId, ServerName, UserId};

/// The EDU type of to-device messages.
pub const EDU_DIRECT_TO_DEVICE: &str = "m.direct_to_device";
/// The most EDUs a transaction may carry.
pub const MAX_EDUS_PER_TRANSACTION: usize = 100;
/// The most PDUs a transaction may carry.
pub const MAX_PDUS_PER_TRANSACTION: usize = 50;
/// The longest `message_id` of a to-device EDU, in characters.
pub const MAX_MESSAGE_ID_CHARS: usize = 32;

/// Body of `PUT /_matrix/federation/v1/send/{txnId}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transaction {
    /// The sending server.
    pub origin: ServerName,
    /// When the transaction was created on the origin (ms since the epoch).
    pub origin_server_ts: u64,
    /// Room events. Hush has no rooms: it always sends `[]` and ignores what it receives.
    #[serde(default)]
    pub pdus: Vec<Value>,
    /// Ephemeral events. EDUs that are not objects with an `edu_type` string are dropped on input.
    #[serde(default, deserialize_with = "lenient_edus")]
    pub edus: Vec<Edu>,
}

impl Transaction {
    /// A transaction carrying `edus` and no PDUs.
    pub fn new(origin: ServerName, origin_server_ts: u64, edus: Vec<Edu>) -> Self {
        Self {
            origin,
            origin_server_ts,
            pdus: Vec::new(),
            edus,
        }
    }
}

fn lenient_edus<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Edu>, D::Error> {
    let raw = Option::<Vec<Value>>::deserialize(deserializer)?.unwrap_or_default();
    Ok(raw
        .into_iter()
        .filter_map(|v| serde_json::from_value(v).ok())
        .collect())
}

/// Response of `PUT /_matrix/federation/v1/send/{txnId}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TransactionResponse {
    /// Per-PDU results keyed by event ID (always empty for Hush).
    #[serde(default)]
    pub pdus: BTreeMap<String, Value>,
}

/// One ephemeral data unit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Edu {
    /// Its type, e.g. [`EDU_DIRECT_TO_DEVICE`].
    pub edu_type: String,
    /// Its content; shape depends on the type.
    #[serde(default)]
    pub content: Value,
}

impl Edu {
    /// Wraps to-device messages in an EDU.
    pub fn direct_to_device(content: &DirectToDeviceContent) -> Result<Self, serde_json::Error> {
        Ok(Self {
            edu_type: EDU_DIRECT_TO_DEVICE.to_owned(),
            content: serde_json::to_value(content)?,
        })
    }

    /// The to-device content, if this is an `m.direct_to_device` EDU (`Some(Err)` if malformed).
    pub fn as_direct_to_device(&self) -> Option<Result<DirectToDeviceContent, serde_json::Error>> {
        (self.edu_type == EDU_DIRECT_TO_DEVICE)
            .then(|| DirectToDeviceContent::deserialize(&self.content))
    }
}

/// Content of an `m.direct_to_device` EDU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DirectToDeviceContent {
    /// The user who sent the messages (must belong to the transaction's origin).
    pub sender: UserId,
    /// The event type of every message, e.g. `m.room.encrypted`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Unique per sender, for deduplication (at most [`MAX_MESSAGE_ID_CHARS`] characters).
    pub message_id: String,
    /// Message content per target user and device.
    pub messages: BTreeMap<UserId, BTreeMap<DeviceTarget, Value>>,
}

/// A to-device target: one device, or `*` for all of the user's devices.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DeviceTarget {
    /// `*`: every device of the user.
    AllDevices,
    /// One device.
    Device(DeviceId),
}

impl DeviceTarget {
    /// The string form (`*` or the device ID).
    pub fn as_str(&self) -> &str {
        match self {
            Self::AllDevices => "*",
            Self::Device(device) => device.as_str(),
        }
    }
}

impl fmt::Display for DeviceTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for DeviceTarget {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for DeviceTarget {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        if text == "*" {
            return Ok(Self::AllDevices);
        }
        DeviceId::parse(&text)
            .map(Self::Device)
            .map_err(serde::de::Error::custom)
    }
}

/// Body of `POST /_matrix/federation/v1/user/keys/query`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KeysQueryRequest {
    /// Users whose keys are wanted, each with the devices wanted (empty list = all devices).
    pub device_keys: BTreeMap<UserId, Vec<DeviceId>>,
}

/// Response of `POST /_matrix/federation/v1/user/keys/query`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KeysQueryResponse {
    /// Signed device keys per user and device.
    #[serde(default)]
    pub device_keys: BTreeMap<UserId, BTreeMap<DeviceId, Value>>,
    /// Cross-signing master keys per user, if any.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub master_keys: BTreeMap<UserId, Value>,
    /// Cross-signing self-signing keys per user, if any.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub self_signing_keys: BTreeMap<UserId, Value>,
}

/// Body of `POST /_matrix/federation/v1/user/keys/claim`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KeysClaimRequest {
    /// The key algorithm wanted per user and device (e.g. `signed_curve25519`).
    pub one_time_keys: BTreeMap<UserId, BTreeMap<DeviceId, String>>,
}

/// Response of `POST /_matrix/federation/v1/user/keys/claim`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KeysClaimResponse {
    /// Claimed keys per user and device, keyed by `<algorithm>:<key id>`. Users or devices with no
    /// key left are absent.
    #[serde(default)]
    pub one_time_keys: BTreeMap<UserId, BTreeMap<DeviceId, BTreeMap<String, Value>>>,
}

/// Response of `GET /_matrix/federation/v1/user/devices/{userId}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserDevicesResponse {
    /// The user.
    pub user_id: UserId,
    /// The user's current device-list stream position.
    pub stream_id: u64,
    /// The user's devices.
    #[serde(default)]
    pub devices: Vec<UserDevice>,
    /// Cross-signing master key, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_key: Option<Value>,
    /// Cross-signing self-signing key, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_signing_key: Option<Value>,
}

/// One device in a [`UserDevicesResponse`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserDevice {
    /// The device.
    pub device_id: DeviceId,
    /// Its signed device keys (absent if it has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<Value>,
    /// Its public display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_display_name: Option<String>,
}

/// Response of `GET /_matrix/federation/v1/version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionResponse {
    /// The server software.
    pub server: ServerSoftware,
}

/// Name and version of a server's software.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerSoftware {
    /// Software name.
    #[serde(default)]
    pub name: String,
    /// Software version.
    #[serde(default)]
    pub version: String,
}

/// The standard Matrix error body, `{"errcode": "...", "error": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Machine-readable code, e.g. `M_FORBIDDEN`.
    pub errcode: String,
    /// Human-readable text.
    #[serde(default)]
    pub error: String,
}

/// Characters left unescaped in a path segment: the RFC 3986 "unreserved" set.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes one path segment (`@alice:hs` becomes `%40alice%3Ahs`).
pub fn encode_path_segment(segment: &str) -> String {
    utf8_percent_encode(segment, PATH_SEGMENT).to_string()
}

/// Path of the server key document.
pub const SERVER_KEYS_PATH: &str = "/_matrix/key/v2/server";
/// Path of the version endpoint.
pub const VERSION_PATH: &str = "/_matrix/federation/v1/version";
/// Path of the remote key query endpoint.
pub const KEYS_QUERY_PATH: &str = "/_matrix/federation/v1/user/keys/query";
/// Path of the remote key claim endpoint.
pub const KEYS_CLAIM_PATH: &str = "/_matrix/federation/v1/user/keys/claim";
/// Path of the well-known delegation document.
pub const WELL_KNOWN_SERVER_PATH: &str = "/.well-known/matrix/server";

/// Path of `PUT /_matrix/federation/v1/send/{txnId}`.
pub fn send_transaction_path(txn_id: &str) -> String {
    format!(
        "/_matrix/federation/v1/send/{}",
        encode_path_segment(txn_id)
    )
}

/// Path of `GET /_matrix/federation/v1/user/devices/{userId}`.
pub fn user_devices_path(user_id: &UserId) -> String {
    format!(
        "/_matrix/federation/v1/user/devices/{}",
        encode_path_segment(user_id.as_str())
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn transaction_always_has_pdus() {
        let origin = ServerName::parse("a.example").unwrap();
        let txn = Transaction::new(origin, 7, vec![]);
        assert_eq!(
            serde_json::to_value(&txn).unwrap(),
            json!({"origin": "a.example", "origin_server_ts": 7, "pdus": [], "edus": []})
        );
    }

    #[test]
    fn transaction_parsing_is_lenient() {
        let txn: Transaction = serde_json::from_value(json!({
            "origin": "a.example",
            "origin_server_ts": 1690000000000u64,
            "pdus": [],
            "extra": true,
            "edus": [
                {"edu_type": "m.typing", "content": {"room_id": "!r"}},
                42,
                {"content": {}},
                {"edu_type": "m.direct_to_device", "content": {
                    "sender": "@alice:a.example",
                    "type": "m.room.encrypted",
                    "message_id": "hiezohf6Hoo7kaev",
                    "org.matrix.opentracing_context": "{}",
                    "messages": {"@bob:b.example": {"BOBDEVICE": {"ciphertext": "x"}, "*": {"c": 1}}}
                }}
            ]
        }))
        .unwrap();
        assert_eq!(txn.edus.len(), 2);
        assert!(txn.edus[0].as_direct_to_device().is_none());
        let content = txn.edus[1].as_direct_to_device().unwrap().unwrap();
        assert_eq!(content.sender.as_str(), "@alice:a.example");
        assert_eq!(content.event_type, "m.room.encrypted");
        let bob = UserId::parse("@bob:b.example").unwrap();
        let targets: Vec<_> = content.messages[&bob].keys().cloned().collect();
        assert_eq!(
            targets,
            vec![
                DeviceTarget::AllDevices,
                DeviceTarget::Device(DeviceId::parse("BOBDEVICE").unwrap())
            ]
        );
        // Missing edus and pdus are fine on input.
        let bare: Transaction =
            serde_json::from_value(json!({"origin": "a.example", "origin_server_ts": 1})).unwrap();
        assert!(bare.edus.is_empty() && bare.pdus.is_empty());
    }

    #[test]
    fn malformed_to_device_content_is_reported() {
        let edu = Edu {
            edu_type: EDU_DIRECT_TO_DEVICE.into(),
            content: json!({"sender": "not-a-user", "type": "t", "message_id": "m", "messages": {}}),
        };
        assert!(matches!(edu.as_direct_to_device(), Some(Err(_))));
    }

    #[test]
    fn to_device_round_trip() {
        let content = DirectToDeviceContent {
            sender: UserId::parse("@alice:a.example").unwrap(),
            event_type: "m.room.encrypted".into(),
            message_id: "m1".into(),
            messages: BTreeMap::from([(
                UserId::parse("@bob:b.example").unwrap(),
                BTreeMap::from([(DeviceTarget::AllDevices, json!({"k": 1}))]),
            )]),
        };
        let edu = Edu::direct_to_device(&content).unwrap();
        assert_eq!(edu.content["type"], json!("m.room.encrypted"));
        assert_eq!(
            edu.content["messages"]["@bob:b.example"]["*"],
            json!({"k": 1})
        );
        assert_eq!(edu.as_direct_to_device().unwrap().unwrap(), content);
    }

    #[test]
    fn key_bodies() {
        let query: KeysQueryRequest = serde_json::from_value(
            json!({"device_keys": {"@bob:b": [], "@carol:b": ["DEV"]}, "timeout": 10}),
        )
        .unwrap();
        assert_eq!(query.device_keys.len(), 2);
        let response = KeysQueryResponse::default();
        assert_eq!(
            serde_json::to_value(&response).unwrap(),
            json!({"device_keys": {}})
        );
        let claim: KeysClaimRequest = serde_json::from_value(
            json!({"one_time_keys": {"@bob:b": {"DEV": "signed_curve25519"}}}),
        )
        .unwrap();
        assert_eq!(
            claim.one_time_keys[&UserId::parse("@bob:b").unwrap()]
                [&DeviceId::parse("DEV").unwrap()],
            "signed_curve25519"
        );
        let claimed: KeysClaimResponse =
            serde_json::from_value(json!({"one_time_keys": {"@bob:b": {"DEV": {
            "signed_curve25519:AAAAHg": {"key": "k", "signatures": {}}}}}, "failures": {}}))
            .unwrap();
        assert_eq!(claimed.one_time_keys.len(), 1);
        assert!(
            serde_json::from_value::<KeysQueryRequest>(json!({"device_keys": {"bob": []}}))
                .is_err()
        );
    }

    #[test]
    fn user_devices_and_version() {
        let devices: UserDevicesResponse = serde_json::from_value(json!({
            "user_id": "@bob:b", "stream_id": 3,
            "devices": [{"device_id": "D1", "keys": {"k": 1}}, {"device_id": "D2", "device_display_name": "Phone"}]
        }))
        .unwrap();
        assert_eq!(devices.devices.len(), 2);
        assert_eq!(
            devices.devices[1].device_display_name.as_deref(),
            Some("Phone")
        );
        let out = serde_json::to_value(&devices).unwrap();
        assert!(out.get("master_key").is_none());
        let version: VersionResponse = serde_json::from_value(
            json!({"server": {"name": "Synapse", "version": "1.0", "x": 1}}),
        )
        .unwrap();
        assert_eq!(version.server.name, "Synapse");
    }

    #[test]
    fn paths_are_percent_encoded() {
        let user = UserId::parse("@alice:hs.example:8448").unwrap();
        assert_eq!(
            user_devices_path(&user),
            "/_matrix/federation/v1/user/devices/%40alice%3Ahs.example%3A8448"
        );
        assert_eq!(
            send_transaction_path("17.a~b_c-d"),
            "/_matrix/federation/v1/send/17.a~b_c-d"
        );
        assert_eq!(
            send_transaction_path("a/b c"),
            "/_matrix/federation/v1/send/a%2Fb%20c"
        );
    }
}
