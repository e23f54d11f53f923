//! Fuzz target `signed_json`: see [`hush_federation_fuzz::signed_json`].
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    hush_federation_fuzz::signed_json(data);
});
