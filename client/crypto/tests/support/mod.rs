//! Shared fixtures: deterministic accounts, the claim answer a homeserver would give, and
//! established session pairs.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use hush_crypto::session_record::IncomingMessage;
use hush_crypto::{Account, DeviceKeys, OutgoingMessage, PreKeyBundle, SessionRecord};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::{json, Value};

pub const T0: u64 = 1_800_000_000;

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// A device with a signed prekey and `otks` published one-time keys.
pub fn device(rng: &mut StdRng, user: &str, dev: &str, otks: usize) -> Account {
    let mut account = Account::new(rng, user, dev, T0).unwrap();
    account.generate_one_time_keys(rng, otks).unwrap();
    account
}

/// The peer's verified device keys, as a client gets them from keys/query.
pub fn device_keys(account: &Account) -> DeviceKeys {
    DeviceKeys::from_json(
        &account.device_keys().unwrap(),
        account.user_id(),
        account.device_id(),
    )
    .unwrap()
}

/// The `hush.x3dh_bundle` claim entry a homeserver builds from the uploaded keys: the current
/// fallback (signed pre)key plus the first unclaimed one-time key, if any.
pub fn claim(account: &Account, with_otk: bool) -> (String, Value) {
    let fallback = account.fallback_keys().unwrap();
    let (spk_id, spk) = fallback.iter().next().unwrap();
    let mut value = json!({"signed_prekey": {spk_id.clone(): spk.clone()}});
    if with_otk {
        let otks = account.one_time_keys().unwrap();
        let (id, otk) = otks.iter().next().unwrap();
        value["one_time_key"] = json!({id.clone(): otk.clone()});
    }
    let short = spk_id.split(':').nth(1).unwrap();
    (format!("hush.x3dh_bundle:{short}"), value)
}

pub fn bundle(account: &Account, with_otk: bool) -> PreKeyBundle {
    let (key, value) = claim(account, with_otk);
    PreKeyBundle::from_claim(&device_keys(account), &key, &value).unwrap()
}

/// Parses an outgoing message the way the receiver sees it.
pub fn incoming(m: &OutgoingMessage) -> IncomingMessage {
    IncomingMessage::from_parts(m.message_type(), &m.to_bytes()).unwrap()
}

pub fn prekey(m: &OutgoingMessage) -> hush_crypto::message::PreKeyMessage {
    match incoming(m) {
        IncomingMessage::PreKey(p) => *p,
        IncomingMessage::Normal(_) => panic!("expected a prekey message"),
    }
}

/// Alice initiates to Bob; Bob accepts the first message and answers; Alice decrypts the
/// answer. Returns (Alice's record of Bob, Bob's record of Alice).
pub fn establish(
    rng: &mut StdRng,
    alice: &Account,
    bob: &mut Account,
    with_otk: bool,
) -> (SessionRecord, SessionRecord) {
    let session = alice
        .initiate_outbound(rng, &bundle(bob, with_otk), T0)
        .unwrap();
    let mut a_rec = SessionRecord::new(bob.user_id(), bob.device_id());
    a_rec.promote(session);
    let first = a_rec.encrypt(b"hello bob").unwrap();
    let b_rec = SessionRecord::new(alice.user_id(), alice.device_id());
    let inbound = bob
        .accept_inbound(rng, &b_rec, alice.user_id(), &prekey(&first), T0)
        .unwrap();
    assert_eq!(inbound.plaintext.as_slice(), b"hello bob");
    if let Some(id) = inbound.used_one_time_key {
        assert!(bob.remove_one_time_key(id));
    }
    let mut b_rec = inbound.record;
    let reply = b_rec.encrypt(b"hi alice").unwrap();
    assert_eq!(reply.message_type(), 1);
    let pt = a_rec.decrypt(rng, &incoming(&reply), T0).unwrap();
    assert_eq!(pt.as_slice(), b"hi alice");
    (a_rec, b_rec)
}
