//! Untrusted `m.room.encrypted` content and decrypted payload JSON.
#![no_main]
use hush_crypto::{parse_content, Curve25519PublicKey, Payload};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Payload::from_bytes(data);
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = parse_content(&value, &Curve25519PublicKey::from_bytes([9; 32]));
    }
});
