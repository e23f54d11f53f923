//! Hush end-to-end encryption core (`hush.x3dh.ratchet.v1`): device identities, signed
//! prekeys, X3DH, the Double Ratchet, Sesame session records, the `m.room.encrypted`
//! envelope and safety numbers.
//!
//! The crate is pure: no I/O, no clock, no async. Randomness comes in through `rand_core`
//! traits and time as `now` (seconds) from the caller, so every operation is deterministic
//! under test. docs/protocol.md is the normative description of everything on the wire.
//!
//! # Flow
//!
//! ```
//! use hush_crypto::{Account, DeviceKeys, IncomingMessage, PreKeyBundle, SessionRecord};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut rng = rand::rngs::OsRng;
//! let now = 1_800_000_000; // the caller's clock, in seconds
//! let alice = Account::new(&mut rng, "@alice:alpha.example", "ALICE1", now)?;
//! let mut bob = Account::new(&mut rng, "@bob:beta.example", "BOB1", now)?;
//! bob.generate_one_time_keys(&mut rng, 1)?;
//! // Bob uploads bob.device_keys()?, bob.fallback_keys()? and bob.one_time_keys()?.
//!
//! // Alice verifies Bob's device keys (keys/query) and his bundle (keys/claim).
//! let bob_keys = DeviceKeys::from_json(&bob.device_keys()?, "@bob:beta.example", "BOB1")?;
//! let (spk_id, spk) = bob.fallback_keys()?.into_iter().next().ok_or("no spk")?;
//! let claim = serde_json::json!({"signed_prekey": {spk_id.clone(): spk}});
//! let claim_key = format!("hush.x3dh_bundle:{}", &spk_id["signed_curve25519:".len()..]);
//! let bundle = PreKeyBundle::from_claim(&bob_keys, &claim_key, &claim)?;
//!
//! let mut to_bob = SessionRecord::new("@bob:beta.example", "BOB1");
//! to_bob.promote(alice.initiate_outbound(&mut rng, &bundle, now)?);
//! let outgoing = to_bob.encrypt(b"hello")?; // persist `to_bob`, then send
//!
//! // Bob receives (type, body) from the envelope.
//! let incoming = IncomingMessage::from_parts(outgoing.message_type(), &outgoing.to_bytes())?;
//! let IncomingMessage::PreKey(prekey) = incoming else { return Err("expected type 0".into()) };
//! let empty = SessionRecord::new("@alice:alpha.example", "ALICE1");
//! let inbound = bob.accept_inbound(&mut rng, &empty, "@alice:alpha.example", &prekey, now)?;
//! assert_eq!(inbound.plaintext.as_slice(), b"hello");
//! // One transaction: store inbound.record, remove the used one-time key, store the account.
//! if let Some(id) = inbound.used_one_time_key {
//!     bob.remove_one_time_key(id);
//! }
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod account;
pub mod consts;
pub mod encoding;
pub mod envelope;
pub mod errors;
pub mod fingerprint;
pub mod identity;
pub mod kdf;
pub mod keys;
pub mod message;
pub mod pickle;
pub mod prekeys;
pub mod ratchet;
pub mod session;
pub mod session_record;
pub mod trust;
pub mod x3dh;

pub use account::{Account, InboundSession};
pub use envelope::{encrypted_content, parse_content, Payload, ReceivedEnvelope};
pub use fingerprint::Fingerprint;
pub use identity::{IdentityKey, IdentityKeyPair};
pub use keys::{Curve25519PublicKey, Curve25519Secret};
pub use pickle::PickleKey;
pub use prekeys::{DeviceKeys, KeyId};
pub use session::{OutgoingMessage, Session};
pub use session_record::{IncomingMessage, SessionRecord};
pub use trust::{IdentityChange, TrustStore};
pub use x3dh::{Party, PreKeyBundle};
