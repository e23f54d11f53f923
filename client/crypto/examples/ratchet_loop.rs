//! Runs a fixed number of "encrypt + decrypt, 100 bytes" pairs on an established session, for
//! load-independent measurements: `valgrind --tool=callgrind` (instructions per pair is the
//! difference between two runs with different counts, divided by the difference in counts) or
//! `perf stat -e task-clock` (CPU time).
//!
//! Usage: `ratchet_loop [PAIRS] [x3dh]` (default 10000 pairs; with `x3dh`, that many X3DH
//! initiations instead).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;

use hush_crypto::session_record::IncomingMessage;
use hush_crypto::{Account, DeviceKeys, OutgoingMessage, PreKeyBundle, SessionRecord};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::json;

const NOW: u64 = 1_800_000_000;
const DEFAULT_PAIRS: u64 = 10_000;

fn bundle(bob: &Account) -> PreKeyBundle {
    let fallback = bob.fallback_keys().unwrap();
    let otks = bob.one_time_keys().unwrap();
    let (spk_id, spk) = fallback.iter().next().unwrap();
    let (otk_id, otk) = otks.iter().next().unwrap();
    let value = json!({"signed_prekey": {spk_id.clone(): spk.clone()}, "one_time_key": {otk_id.clone(): otk.clone()}});
    let keys =
        DeviceKeys::from_json(&bob.device_keys().unwrap(), bob.user_id(), bob.device_id()).unwrap();
    let claim = format!("hush.x3dh_bundle:{}", spk_id.split(':').nth(1).unwrap());
    PreKeyBundle::from_claim(&keys, &claim, &value).unwrap()
}

fn incoming(m: &OutgoingMessage) -> IncomingMessage {
    IncomingMessage::from_parts(m.message_type(), &m.to_bytes()).unwrap()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let pairs: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(DEFAULT_PAIRS);
    let x3dh = args.next().as_deref() == Some("x3dh");

    let mut rng = StdRng::seed_from_u64(7);
    let alice = Account::new(&mut rng, "@alice:alpha.example", "ALICE1", NOW).unwrap();
    let mut bob = Account::new(&mut rng, "@bob:beta.example", "BOB1", NOW).unwrap();
    bob.generate_one_time_keys(&mut rng, 1).unwrap();
    let b = bundle(&bob);
    if x3dh {
        for _ in 0..pairs {
            black_box(alice.initiate_outbound(&mut rng, &b, NOW).unwrap());
        }
        return;
    }
    let mut a_rec = SessionRecord::new(bob.user_id(), bob.device_id());
    a_rec.promote(alice.initiate_outbound(&mut rng, &b, NOW).unwrap());
    let IncomingMessage::PreKey(pk) = incoming(&a_rec.encrypt(b"hello").unwrap()) else {
        unreachable!()
    };
    let empty = SessionRecord::new(alice.user_id(), alice.device_id());
    let mut b_rec = bob
        .accept_inbound(&mut rng, &empty, alice.user_id(), &pk, NOW)
        .unwrap()
        .record;
    let reply = b_rec.encrypt(b"hi").unwrap();
    a_rec.decrypt(&mut rng, &incoming(&reply), NOW).unwrap();

    let plaintext = [0x61u8; 100];
    for _ in 0..pairs {
        let m = a_rec.encrypt(&plaintext).unwrap();
        black_box(b_rec.decrypt(&mut rng, &incoming(&m), NOW).unwrap());
    }
}
