//! Binary wire formats: the ratchet header, the ratchet message (type 1) and the prekey
//! message (type 0). Layouts are fixed in docs/protocol.md; decoders never panic.

use crate::consts::{
    AEAD_TAG_LEN, HEADER_LEN, KEY_LEN, MAX_ID_LEN, MAX_PLAINTEXT_LEN, PREKEY_FIXED_LEN,
    PROTOCOL_VERSION,
};
use crate::encoding::{Reader, Writer};
use crate::errors::DecodeError;
use crate::identity::IdentityKey;
use crate::keys::Curve25519PublicKey;

/// The fixed-length ratchet header, sent in the clear and authenticated as associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The sender's current ratchet public key (DHs).
    pub ratchet_key: Curve25519PublicKey,
    /// PN: number of messages in the sender's previous sending chain.
    pub previous_counter: u32,
    /// N: this message's index in the current sending chain.
    pub counter: u32,
}

impl Header {
    /// version (1) || ratchet key (32) || PN (u32 BE) || N (u32 BE).
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0] = PROTOCOL_VERSION;
        out[1..1 + KEY_LEN].copy_from_slice(self.ratchet_key.as_bytes());
        out[1 + KEY_LEN..5 + KEY_LEN].copy_from_slice(&self.previous_counter.to_be_bytes());
        out[5 + KEY_LEN..].copy_from_slice(&self.counter.to_be_bytes());
        out
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let version = r.u8()?;
        if version != PROTOCOL_VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let ratchet_key = Curve25519PublicKey::from_bytes(r.array()?);
        let previous_counter = r.u32()?;
        let counter = r.u32()?;
        Ok(Self {
            ratchet_key,
            previous_counter,
            counter,
        })
    }
}

/// A ratchet message (type 1): header || ChaCha20-Poly1305 ciphertext with its tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RatchetMessage {
    /// The header.
    pub header: Header,
    /// Ciphertext followed by the 16-byte tag.
    pub ciphertext: Vec<u8>,
}

impl RatchetMessage {
    /// The wire bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.ciphertext.len());
        out.extend_from_slice(&self.header.to_bytes());
        out.extend_from_slice(&self.ciphertext);
        out
    }

    /// Parses the wire bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let header = Header::read(&mut r)?;
        let ciphertext = r.rest();
        if ciphertext.len() < AEAD_TAG_LEN {
            return Err(DecodeError::Truncated);
        }
        if ciphertext.len() > MAX_PLAINTEXT_LEN + AEAD_TAG_LEN {
            return Err(DecodeError::TooLong {
                field: "ciphertext",
                len: ciphertext.len(),
                max: MAX_PLAINTEXT_LEN + AEAD_TAG_LEN,
            });
        }
        Ok(Self {
            header,
            ciphertext: ciphertext.to_vec(),
        })
    }
}

/// A prekey message (type 0): the X3DH initiation data plus the first ratchet message.
/// The initiator sends it for every message until the peer answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreKeyMessage {
    /// IK_A, the initiator's Ed25519 identity key.
    pub identity_key: IdentityKey,
    /// EK_A, the initiator's ephemeral (base) key.
    pub base_key: Curve25519PublicKey,
    /// Id of the responder's signed prekey that was used.
    pub signed_prekey_id: u32,
    /// Id of the responder's one-time prekey that was used, if any.
    pub one_time_key_id: Option<u32>,
    /// The initiator's user ID.
    pub sender_user: String,
    /// The initiator's device ID.
    pub sender_device: String,
    /// The embedded ratchet message.
    pub message: RatchetMessage,
}

impl PreKeyMessage {
    /// version || Encode(IK_A) || Encode(EK_A) || SPK id || OPK flag || OPK id ||
    /// u16-prefixed sender user || u16-prefixed sender device || ratchet message.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(PROTOCOL_VERSION);
        w.raw(&self.identity_key.encode());
        w.raw(&self.base_key.encode());
        w.u32(self.signed_prekey_id);
        match self.one_time_key_id {
            Some(id) => {
                w.u8(1);
                w.u32(id);
            }
            None => {
                w.u8(0);
                w.u32(0);
            }
        }
        w.bytes16(self.sender_user.as_bytes());
        w.bytes16(self.sender_device.as_bytes());
        w.raw(&self.message.to_bytes());
        w.into_bytes().to_vec()
    }

    /// Parses the wire bytes; the identity key is fully validated.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() < PREKEY_FIXED_LEN {
            return Err(DecodeError::Truncated);
        }
        let mut r = Reader::new(bytes);
        let version = r.u8()?;
        if version != PROTOCOL_VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let identity_key = IdentityKey::decode(r.take(crate::consts::ENCODED_KEY_LEN)?)?;
        let base_key = Curve25519PublicKey::decode(r.take(crate::consts::ENCODED_KEY_LEN)?)?;
        let signed_prekey_id = r.u32()?;
        let flag = r.u8()?;
        let otk_id = r.u32()?;
        let one_time_key_id = match (flag, otk_id) {
            (0, 0) => None,
            (1, id) => Some(id),
            _ => return Err(DecodeError::InvalidField("one_time_key_id")),
        };
        let sender_user = r.string16("sender_user", MAX_ID_LEN)?;
        let sender_device = r.string16("sender_device", MAX_ID_LEN)?;
        let message = RatchetMessage::from_bytes(r.rest())?;
        Ok(Self {
            identity_key,
            base_key,
            signed_prekey_id,
            one_time_key_id,
            sender_user,
            sender_device,
            message,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::IdentityKeyPair;

    fn sample() -> PreKeyMessage {
        PreKeyMessage {
            identity_key: IdentityKeyPair::from_seed(&[1; 32]).public_key(),
            base_key: Curve25519PublicKey::from_bytes([2; 32]),
            signed_prekey_id: 7,
            one_time_key_id: Some(9),
            sender_user: "@alice:alpha.example".to_owned(),
            sender_device: "ALICEDEV".to_owned(),
            message: RatchetMessage {
                header: Header {
                    ratchet_key: Curve25519PublicKey::from_bytes([3; 32]),
                    previous_counter: 4,
                    counter: 5,
                },
                ciphertext: vec![6; 20],
            },
        }
    }

    #[test]
    fn prekey_message_round_trip() {
        let m = sample();
        assert_eq!(PreKeyMessage::from_bytes(&m.to_bytes()), Ok(m.clone()));
        let mut none = m;
        none.one_time_key_id = None;
        assert_eq!(PreKeyMessage::from_bytes(&none.to_bytes()), Ok(none));
    }

    /// P7/P22: the header has a fixed length and its fields are where the spec says.
    #[test]
    fn p07_p22_header_layout_is_fixed() {
        let h = sample().message.header;
        let bytes = h.to_bytes();
        assert_eq!(bytes.len(), 41);
        assert_eq!(bytes[0], 1);
        assert_eq!(&bytes[1..33], &[3u8; 32]);
        assert_eq!(&bytes[33..37], &4u32.to_be_bytes());
        assert_eq!(&bytes[37..41], &5u32.to_be_bytes());
    }

    #[test]
    fn p22_decoders_reject_bad_input() {
        let m = sample();
        let bytes = m.to_bytes();
        for cut in 0..PREKEY_FIXED_LEN {
            assert!(PreKeyMessage::from_bytes(&bytes[..cut]).is_err());
        }
        let mut v = bytes.clone();
        v[0] = 2;
        assert_eq!(
            PreKeyMessage::from_bytes(&v),
            Err(DecodeError::UnsupportedVersion(2))
        );
        let mut v = bytes.clone();
        v[1] = crate::consts::KEY_TYPE_X25519;
        assert!(PreKeyMessage::from_bytes(&v).is_err());
        let mut v = bytes;
        v[1 + 33 + 33 + 4] = 2;
        assert!(PreKeyMessage::from_bytes(&v).is_err());
        assert_eq!(
            RatchetMessage::from_bytes(&[1; 41 + 15]),
            Err(DecodeError::Truncated)
        );
    }
}
