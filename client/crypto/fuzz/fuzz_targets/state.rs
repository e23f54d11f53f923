//! Stored ("pickled") state: the serialized formats and the encrypted blobs.
#![no_main]
use hush_crypto::{Account, PickleKey, Session, SessionRecord};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = SessionRecord::from_bytes(data) {
        assert_eq!(r.to_bytes().as_slice(), data);
    }
    let _ = Session::from_bytes(data);
    let _ = Account::from_bytes(data);
    let key = PickleKey::new([7; 32]);
    let _ = SessionRecord::open(&key, "@a:b", "C", data);
    let _ = Account::open(&key, "@a:b", "C", data);
});
