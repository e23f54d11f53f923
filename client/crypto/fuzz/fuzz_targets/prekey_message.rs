//! Untrusted prekey message bytes (envelope type 0).
#![no_main]
use hush_crypto::message::PreKeyMessage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = PreKeyMessage::from_bytes(data) {
        // Whatever parses must re-encode to the same bytes.
        assert_eq!(m.to_bytes(), data);
    }
});
