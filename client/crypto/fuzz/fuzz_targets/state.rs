//! Stored ("pickled") state: the serialized formats and the encrypted blobs.
#![no_main]
use hush_crypto::{Account, PickleKey, Session, SessionRecord};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = SessionRecord::from_bytes(data) {
        // Serialization is stable: what is written parses back and is written identically.
        // (It may differ from `data` itself: sessions of state version 1 are written as
        // version 2.)
        let once = r.to_bytes();
        let again = SessionRecord::from_bytes(&once).expect("written state parses");
        assert_eq!(again.to_bytes().as_slice(), once.as_slice());
    }
    let _ = Session::from_bytes(data);
    let _ = Account::from_bytes(data);
    let key = PickleKey::new([7; 32]);
    let _ = SessionRecord::open(&key, "@a:b", "C", data);
    let _ = Account::open(&key, "@a:b", "C", data);
});
