//! Fuzz target `fed_transaction`: see [`hush_server_fuzz::fed_transaction`].
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    hush_server_fuzz::fed_transaction(data);
});
