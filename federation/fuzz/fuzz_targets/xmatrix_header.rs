//! Fuzz target `xmatrix_header`: see [`hush_federation_fuzz::xmatrix_header`].
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    hush_federation_fuzz::xmatrix_header(data);
});
