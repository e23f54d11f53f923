//! Fuzz target `wire_bodies`: see [`hush_federation_fuzz::wire_bodies`].
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    hush_federation_fuzz::wire_bodies(data);
});
