//! Fuzz target `client_bodies`: see [`hush_server_fuzz::client_bodies`].
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    hush_server_fuzz::client_bodies(data);
});
