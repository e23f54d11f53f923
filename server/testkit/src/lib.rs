//! Test-only helpers shared by the integration tests of `hush-server`, `hush-client` and
//! `hush-federation` (a dev-dependency only; never linked into a binary):
//!
//! * [`ca::TestCa`]: a certificate authority made for one test, issuing server certificates for
//!   loopback IPs and HTTPS clients that trust only it;
//! * [`pg`]: fresh PostgreSQL databases on 127.0.0.1:5432, dropped when the test is done or, for
//!   databases a killed test process left behind, by the next test process;
//! * [`net::free_port`]: a free TCP port on a loopback address;
//! * [`fuzz`]: the committed corpus of a fuzz target and a proptest strategy of inputs built
//!   from it, so that cargo-fuzz targets also run on stable `cargo test`.
//!
//! Helpers panic with a clear message when the machine lacks what the suite needs (PostgreSQL,
//! a writable temporary directory): a test cannot go on without them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod ca;
pub mod fuzz;
pub mod net;
pub mod pg;
