//! Hush's shared protocol layer: everything two homeservers (and a client) must agree on byte for
//! byte, with no web framework and no database. This is the project's one implementation of each
//! of these; other crates use it rather than re-implementing any part.
//!
//! Pure modules (no I/O; they build with `default-features = false`, as the crypto crate uses them):
//!
//! * [`ids`]: validated identifiers: [`ids::ServerName`] (`host[:port]`, DNS/IPv4/`[IPv6]`),
//!   [`ids::UserId`] (`@localpart:server`, split at the first colon, at most 255 bytes) and
//!   [`ids::DeviceId`], plus [`ids::is_valid_new_localpart`] for registrations.
//! * [`base64`]: unpadded standard base64 as Matrix uses it for keys and signatures (padded input
//!   accepted).
//! * [`canonical`]: canonical JSON, the single encoding every signature is computed over (sorted
//!   keys, no whitespace, integers only, minimal escaping), independent of serde_json's features.
//! * [`signing`]: signed JSON with Ed25519: the bytes that are signed, `sign_json` (keeps other
//!   signatures and `unsigned`) and `verify_json` (strict verification of one entity's key).
//! * [`keys`]: the server signing key (`ed25519:<version>`, Synapse-style key file, zeroized,
//!   redacted `Debug`), the self-signed key document of `/_matrix/key/v2/server`, and verification
//!   of a document fetched from another server.
//! * [`xmatrix`]: the `Authorization: X-Matrix` header: signing a request, the strict header we send,
//!   a liberal parser for what others send, and verification against a key and our own name.
//! * [`wire`]: serde types of the federation bodies (transactions, `m.direct_to_device` EDUs, remote
//!   key query/claim, user devices, version, error body) and percent-encoded endpoint paths.
//!
//! Networking modules (feature `http`, on by default):
//!
//! * [`discovery`]: server name to `https://host:port` (config overrides, IP literals, explicit
//!   ports, cached `/.well-known/matrix/server`, port 8448; no SRV lookups).
//! * [`client`]: the outbound HTTPS client (reqwest + rustls, system roots plus extra CA files)
//!   that signs every request and reports "unreachable" apart from "the remote said no".
//!
//! # Example
//!
//! ```
//! use hush_federation::ids::ServerName;
//! use hush_federation::keys::ServerSigningKey;
//! use hush_federation::signing::verify_json;
//! use hush_federation::xmatrix::{sign_request, XMatrixAuth};
//! use serde_json::json;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let origin = ServerName::parse("a.example")?;
//! let destination = ServerName::parse("b.example")?;
//! let key = ServerSigningKey::generate("a_1")?;
//!
//! // Signed JSON.
//! let mut object = json!({"one": 1, "two": "Two"});
//! key.sign_json(&mut object, &origin)?;
//! verify_json(&object, "a.example", "ed25519:a_1", &key.verifying_key())?;
//!
//! // An X-Matrix header, as sent by `a.example` and checked by `b.example`.
//! let body = json!({"device_keys": {"@bob:b.example": []}});
//! let uri = "/_matrix/federation/v1/user/keys/query";
//! let header = sign_request(&key, &origin, &destination, "POST", uri, Some(&body))?.to_header_value();
//! let auth = XMatrixAuth::parse(&header)?;
//! auth.verify("POST", uri, Some(&body), &destination, &key.verifying_key())?;
//! # Ok(())
//! # }
//! ```
//!
//! `examples/signing_tool.rs` exposes the pure parts over stdin/stdout for the interoperability
//! tests in `tests/interop/` (Python `signedjson` and `canonicaljson`).

#![deny(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod base64;
pub mod canonical;
#[cfg(feature = "http")]
pub mod client;
#[cfg(feature = "http")]
pub mod discovery;
pub mod ids;
pub mod keys;
pub mod signing;
pub mod wire;
pub mod xmatrix;
