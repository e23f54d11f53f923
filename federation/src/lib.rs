//! Hush's shared protocol layer: everything two homeservers (and a client) must agree on byte for
//! byte, with no web framework and no database.
//!
//! * [`ids`]: validated identifiers ([`ids::ServerName`], [`ids::UserId`], [`ids::DeviceId`]).
//! * [`base64`]: unpadded standard base64 as Matrix uses it (padded input accepted).
//! * [`canonical`]: canonical JSON, the single encoding every signature is computed over.
//! * [`signing`]: signed JSON (sign, verify, the bytes that are signed) with Ed25519.
//!
//! The pure modules build without default features; the `http` feature (on by default) adds the
//! networking parts.

#![deny(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod base64;
pub mod canonical;
pub mod ids;
pub mod keys;
pub mod signing;
pub mod xmatrix;
