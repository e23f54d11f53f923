//! Hush end-to-end encryption core (`hush.x3dh.ratchet.v1`): device identities, signed
//! prekeys, X3DH, the Double Ratchet, Sesame session records, the `m.room.encrypted`
//! envelope and safety numbers.
//!
//! The crate is pure: no I/O, no clock, no async. Randomness comes in through `rand_core`
//! traits and time as `now` (seconds) from the caller, so every operation is deterministic
//! under test. docs/protocol.md is the normative description of everything on the wire.

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
