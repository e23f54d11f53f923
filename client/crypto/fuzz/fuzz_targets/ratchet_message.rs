//! Untrusted ratchet message bytes (envelope type 1).
#![no_main]
use hush_crypto::message::RatchetMessage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = RatchetMessage::from_bytes(data) {
        assert_eq!(m.to_bytes(), data);
    }
});
