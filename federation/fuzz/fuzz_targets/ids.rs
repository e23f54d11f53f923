//! Fuzz target `ids`: see [`hush_federation_fuzz::ids`].
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    hush_federation_fuzz::ids(data);
});
