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

pub mod consts;
pub mod encoding;
pub mod errors;
pub mod identity;
pub mod kdf;
pub mod keys;
pub mod message;
pub mod ratchet;
pub mod session;
