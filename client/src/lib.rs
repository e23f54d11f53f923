//! The bundled Hush client: an encrypted local store, the homeserver API, the messaging
//! engine (sessions, multi-device fan-out, trust on first use), the command line and the
//! terminal chat. The binary `hush` is a thin wrapper around [`cli::run`].
//!
//! See docs/client.md for the user guide and the storage layout.

pub mod api;
pub mod cli;
pub mod clock;
pub mod engine;
pub mod line_chunks;
pub mod profile;
pub mod store;
pub mod tui;
pub mod vault;
