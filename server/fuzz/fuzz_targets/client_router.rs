//! Fuzz target `client_router`: arbitrary bodies through the real client-server router on a
//! temporary SQLite store (see [`hush_server_fuzz::router::Harness`]).
#![no_main]
use std::sync::OnceLock;

use hush_server_fuzz::router::Harness;
use libfuzzer_sys::fuzz_target;

static HARNESS: OnceLock<Harness> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    HARNESS.get_or_init(Harness::start).run(data);
});
