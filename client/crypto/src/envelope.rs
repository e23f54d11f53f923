//! The to-device `m.room.encrypted` content and the JSON payload inside each ciphertext.
//!
//! ```json
//! {"algorithm": "hush.x3dh.ratchet.v1", "sender_key": "<curve25519 b64>",
//!  "ciphertext": {"<recipient curve25519 b64>": {"type": 0, "body": "<unpadded b64>"}}}
//! ```

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::consts::{ALGORITHM, MAX_PLAINTEXT_LEN};
use crate::encoding::{base64_decode, base64_encode};
use crate::errors::{DecodeError, EnvelopeError};
use crate::keys::Curve25519PublicKey;
use crate::session::OutgoingMessage;
use crate::session_record::IncomingMessage;
use crate::x3dh::Party;

/// Builds the `m.room.encrypted` content for one or more recipient devices.
pub fn encrypted_content(
    sender_key: &Curve25519PublicKey,
    messages: &[(Curve25519PublicKey, OutgoingMessage)],
) -> Value {
    let mut ciphertext = Map::new();
    for (recipient, message) in messages {
        ciphertext.insert(
            recipient.to_base64(),
            json!({"type": message.message_type(), "body": base64_encode(&message.to_bytes())}),
        );
    }
    json!({"algorithm": ALGORITHM, "sender_key": sender_key.to_base64(), "ciphertext": ciphertext})
}

/// The part of an envelope addressed to one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedEnvelope {
    /// The sender device's X25519 identity (`sender_key`), to find its session record.
    pub sender_key: Curve25519PublicKey,
    /// The parsed message.
    pub message: IncomingMessage,
}

/// Parses `m.room.encrypted` content and extracts the message for `own_key`.
pub fn parse_content(
    content: &Value,
    own_key: &Curve25519PublicKey,
) -> Result<ReceivedEnvelope, EnvelopeError> {
    let map = content
        .as_object()
        .ok_or(EnvelopeError::Malformed("content"))?;
    let algorithm = map
        .get("algorithm")
        .and_then(Value::as_str)
        .ok_or(EnvelopeError::Malformed("algorithm"))?;
    if algorithm != ALGORITHM {
        return Err(EnvelopeError::UnsupportedAlgorithm);
    }
    let sender_key = map
        .get("sender_key")
        .and_then(Value::as_str)
        .ok_or(EnvelopeError::Malformed("sender_key"))?;
    let sender_key = Curve25519PublicKey::from_base64(sender_key).map_err(DecodeError::Key)?;
    let entry = map
        .get("ciphertext")
        .and_then(Value::as_object)
        .ok_or(EnvelopeError::Malformed("ciphertext"))?
        .get(&own_key.to_base64())
        .ok_or(EnvelopeError::NotForThisDevice)?;
    let message_type = entry
        .get("type")
        .and_then(Value::as_u64)
        .ok_or(EnvelopeError::Malformed("type"))?;
    let message_type = match message_type {
        0 | 1 => message_type as u8,
        other => return Err(EnvelopeError::UnknownType(other)),
    };
    let body = entry
        .get("body")
        .and_then(Value::as_str)
        .ok_or(EnvelopeError::Malformed("body"))?;
    // Base64 expands by 4/3; refuse absurd bodies before decoding.
    if body.len() > 2 * MAX_PLAINTEXT_LEN {
        return Err(EnvelopeError::Malformed("body too long"));
    }
    let body = base64_decode(body).map_err(DecodeError::Key)?;
    let message = IncomingMessage::from_parts(message_type, &body)?;
    Ok(ReceivedEnvelope {
        sender_key,
        message,
    })
}

/// `{"ed25519": "<b64>"}` as in Olm payloads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayloadKeys {
    /// The device's Ed25519 identity key, base64.
    pub ed25519: String,
}

/// The JSON plaintext inside each ciphertext. It names both ends so that a server cannot
/// re-address a ciphertext to another user or device unnoticed (P8).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    /// The event type of the decrypted event.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The decrypted event content.
    pub content: Value,
    /// Sending user.
    pub sender: String,
    /// Sending device.
    pub sender_device: String,
    /// Sending device's identity key.
    pub keys: PayloadKeys,
    /// Receiving user.
    pub recipient: String,
    /// Receiving device.
    pub recipient_device: String,
    /// Receiving device's identity key.
    pub recipient_keys: PayloadKeys,
}

impl Payload {
    /// Builds a payload from sender to recipient.
    pub fn new(
        event_type: &str,
        content: Value,
        sender: &Party<'_>,
        recipient: &Party<'_>,
    ) -> Self {
        Self {
            event_type: event_type.to_owned(),
            content,
            sender: sender.user_id.to_owned(),
            sender_device: sender.device_id.to_owned(),
            keys: PayloadKeys {
                ed25519: sender.identity_key.to_base64(),
            },
            recipient: recipient.user_id.to_owned(),
            recipient_device: recipient.device_id.to_owned(),
            recipient_keys: PayloadKeys {
                ed25519: recipient.identity_key.to_base64(),
            },
        }
    }

    /// The JSON bytes to encrypt.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses decrypted bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        serde_json::from_slice(bytes).map_err(|_| EnvelopeError::Malformed("payload"))
    }

    /// Checks that the payload names exactly the expected sender and recipient devices and keys.
    pub fn check(&self, sender: &Party<'_>, recipient: &Party<'_>) -> Result<(), EnvelopeError> {
        let checks = [
            (self.sender == sender.user_id, "sender"),
            (self.sender_device == sender.device_id, "sender_device"),
            (self.keys.ed25519 == sender.identity_key.to_base64(), "keys"),
            (self.recipient == recipient.user_id, "recipient"),
            (
                self.recipient_device == recipient.device_id,
                "recipient_device",
            ),
            (
                self.recipient_keys.ed25519 == recipient.identity_key.to_base64(),
                "recipient_keys",
            ),
        ];
        match checks.iter().find(|(ok, _)| !ok) {
            Some((_, field)) => Err(EnvelopeError::PayloadMismatch(field)),
            None => Ok(()),
        }
    }
}
