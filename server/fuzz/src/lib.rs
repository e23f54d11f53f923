//! Fuzzing harnesses of the server's request parsing (see docs/fuzzing.md).
//!
//! [`checks`] holds the pure targets (federation transactions, client request bodies) and
//! [`router`] drives the real client-server router. Both files are also compiled into the
//! server's stable tests (`server/tests/parse_*.rs`), which replay the committed corpora.

pub mod checks;
pub mod router;

pub use checks::{client_bodies, fed_transaction};
