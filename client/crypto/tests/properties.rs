//! Property tests: delivery orders, tampering, bounds, and decoders fed arbitrary bytes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashSet;

use hush_crypto::consts::{MAX_RECEIVER_CHAINS, MAX_SKIPPED_KEYS};
use hush_crypto::message::{PreKeyMessage, RatchetMessage};
use hush_crypto::session_record::IncomingMessage;
use hush_crypto::{
    parse_content, Account, Curve25519PublicKey, Fingerprint, PickleKey, Session, SessionRecord,
};
use proptest::prelude::*;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use support::*;

struct InFlight {
    id: usize,
    message: IncomingMessage,
    plaintext: Vec<u8>,
}

/// Delivers `m` and checks it decrypts to its plaintext exactly once; a duplicate attempt
/// right after must fail and leave the record byte-identical.
fn deliver(
    rng: &mut rand::rngs::StdRng,
    record: &mut SessionRecord,
    m: &InFlight,
    done: &mut HashSet<usize>,
    duplicate: bool,
) {
    let pt = record.decrypt(rng, &m.message, T0).unwrap();
    assert_eq!(pt.as_slice(), m.plaintext.as_slice());
    assert!(done.insert(m.id), "message {} decrypted twice", m.id);
    if duplicate {
        let before = record.to_bytes();
        assert!(record.decrypt(rng, &m.message, T0).is_err());
        assert_eq!(record.to_bytes(), before);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// P13/P14: random interleavings across at least three DH steps: every message decrypts
    /// exactly once, duplicates fail without state change.
    #[test]
    fn p13_p14_any_delivery_order_decrypts_every_message_once(
        seed in any::<u64>(),
        rounds in prop::collection::vec(1usize..6, 4..9),
    ) {
        let mut rng = rng(seed);
        let alice = device(&mut rng, "@alice:alpha.example", "ALICE1", 0);
        let mut bob = device(&mut rng, "@bob:beta.example", "BOB1", 1);
        let (mut a, mut b) = establish(&mut rng, &alice, &mut bob, true);
        let mut to_bob: Vec<InFlight> = Vec::new();
        let mut to_alice: Vec<InFlight> = Vec::new();
        let mut done = HashSet::new();
        let mut next_id = 0;
        let mut ratchet_keys = HashSet::new();
        for (r, count) in rounds.iter().enumerate() {
            let alice_sends = r % 2 == 0;
            let (sender, queue) = if alice_sends { (&mut a, &mut to_bob) } else { (&mut b, &mut to_alice) };
            let mut this_round = Vec::new();
            for k in 0..*count {
                let plaintext = format!("{r}-{k}").into_bytes();
                let out = sender.encrypt(&plaintext).unwrap();
                let message = incoming(&out);
                if let IncomingMessage::Normal(m) = &message {
                    ratchet_keys.insert(m.header.ratchet_key);
                }
                this_round.push(InFlight { id: next_id, message, plaintext });
                next_id += 1;
            }
            // Deliver one of this round's messages (so the next sender ratchets), plus a
            // random selection of everything in flight, in random order.
            this_round.shuffle(&mut rng);
            let first = this_round.pop().unwrap();
            queue.extend(this_round);
            queue.shuffle(&mut rng);
            let take = rng.gen_range(0..=queue.len());
            let mut batch: Vec<InFlight> = queue.drain(..take).collect();
            batch.push(first);
            batch.shuffle(&mut rng);
            let receiver = if alice_sends { &mut b } else { &mut a };
            for m in &batch {
                let dup = rng.gen_bool(0.3);
                deliver(&mut rng, receiver, m, &mut done, dup);
            }
        }
        to_bob.shuffle(&mut rng);
        to_alice.shuffle(&mut rng);
        for m in &to_bob {
            deliver(&mut rng, &mut b, m, &mut done, true);
        }
        for m in &to_alice {
            deliver(&mut rng, &mut a, m, &mut done, true);
        }
        prop_assert_eq!(done.len(), next_id);
        prop_assert!(ratchet_keys.len() >= 3, "at least three DH steps");
        for r in [&a, &b] {
            let s = r.active().unwrap();
            prop_assert!(s.skipped_key_count() <= MAX_SKIPPED_KEYS);
            prop_assert!(s.receiver_chain_count() <= MAX_RECEIVER_CHAINS);
        }
    }

    /// P6: flipping any bit of a message fails and leaves the serialized state identical.
    #[test]
    fn p06_any_bit_flip_fails_without_state_change(seed in any::<u64>(), bit in any::<prop::sample::Index>(), step in any::<bool>()) {
        let mut rng = rng(seed);
        let alice = device(&mut rng, "@alice:alpha.example", "ALICE1", 0);
        let mut bob = device(&mut rng, "@bob:beta.example", "BOB1", 1);
        let (mut a, mut b) = establish(&mut rng, &alice, &mut bob, true);
        // Either an in-chain message (Alice) or a DH-step message (Bob answers twice).
        let (sender, receiver) = if step { (&mut b, &mut a) } else { (&mut a, &mut b) };
        let bytes = sender.encrypt(b"tamper me").unwrap().to_bytes();
        let bit = bit.index(bytes.len() * 8);
        let mut bad = bytes.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        let before = receiver.to_bytes();
        if let Ok(m) = RatchetMessage::from_bytes(&bad) {
            prop_assert!(receiver.decrypt(&mut rng, &IncomingMessage::Normal(m), T0).is_err());
        }
        prop_assert_eq!(receiver.to_bytes(), before);
        let good = IncomingMessage::Normal(RatchetMessage::from_bytes(&bytes).unwrap());
        prop_assert!(receiver.decrypt(&mut rng, &good, T0).is_ok());
    }

}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// P5/P15: whatever gaps a sender produces, stored skipped keys never exceed the cap.
    #[test]
    fn p05_p15_stored_skipped_keys_never_exceed_caps(seed in any::<u64>(), gaps in prop::collection::vec(0u32..1000, 1..8)) {
        let mut rng = rng(seed);
        let alice = device(&mut rng, "@alice:alpha.example", "ALICE1", 0);
        let mut bob = device(&mut rng, "@bob:beta.example", "BOB1", 1);
        let (mut a, mut b) = establish(&mut rng, &alice, &mut bob, true);
        for gap in gaps {
            for _ in 0..gap {
                a.encrypt(b"lost").unwrap();
            }
            let m = a.encrypt(b"kept").unwrap();
            let pt = b.decrypt(&mut rng, &incoming(&m), T0).unwrap();
            prop_assert_eq!(pt.as_slice(), b"kept");
            let s = b.active().unwrap();
            prop_assert!(s.skipped_key_count() <= MAX_SKIPPED_KEYS);
            prop_assert!(s.receiver_chain_count() <= MAX_RECEIVER_CHAINS);
            if rng.gen_bool(0.5) {
                let reply = b.encrypt(b"r").unwrap();
                a.decrypt(&mut rng, &incoming(&reply), T0).unwrap();
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Every decoder of untrusted bytes returns an error or a value, never panics.
    #[test]
    fn p07_p22_decoders_never_panic_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..400), t in 0u8..3) {
        let _ = RatchetMessage::from_bytes(&bytes);
        let _ = PreKeyMessage::from_bytes(&bytes);
        let _ = IncomingMessage::from_parts(t, &bytes);
        let _ = Session::from_bytes(&bytes);
        let _ = SessionRecord::from_bytes(&bytes);
        let _ = Account::from_bytes(&bytes);
        let key = PickleKey::new([3; 32]);
        let _ = SessionRecord::open(&key, "@a:b", "C", &bytes);
        let _ = Account::open(&key, "@a:b", "C", &bytes);
        let _ = Fingerprint::with_parameters(0, 2, &bytes, b"a", &bytes, b"b").map(|f| f.matches_scanned(&bytes));
        let _ = hush_crypto::Payload::from_bytes(&bytes);
        let text = String::from_utf8_lossy(&bytes);
        let own = Curve25519PublicKey::from_bytes([9; 32]);
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) {
            let _ = parse_content(&v, &own);
        }
        let content = serde_json::json!({"algorithm": "hush.x3dh.ratchet.v1", "sender_key": text,
            "ciphertext": {own.to_base64(): {"type": t, "body": text}}});
        let _ = parse_content(&content, &own);
        let _ = hush_crypto::KeyId::from_matrix_key_id(&text);
        let _ = hush_crypto::IdentityKey::from_base64(&text);
    }

    /// Mutations of valid encodings (the interesting part of the input space) never panic.
    #[test]
    fn decoders_never_panic_on_mutated_valid_input(seed in any::<u64>(), edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6), cut in any::<prop::sample::Index>()) {
        let samples = valid_samples(seed % 4);
        for (kind, mut bytes) in samples {
            for (i, v) in &edits {
                let i = i.index(bytes.len());
                bytes[i] = *v;
            }
            let cut = cut.index(bytes.len() + 1);
            for input in [&bytes[..], &bytes[..cut]] {
                match kind {
                    0 => { let _ = PreKeyMessage::from_bytes(input); }
                    1 => { let _ = RatchetMessage::from_bytes(input); }
                    2 => { let _ = SessionRecord::from_bytes(input); }
                    _ => { let _ = Account::from_bytes(input); }
                }
            }
        }
    }
}

/// (decoder kind, valid encoding) pairs.
type Samples = Vec<(u8, Vec<u8>)>;

fn valid_samples(seed: u64) -> Samples {
    use std::sync::OnceLock;
    static SAMPLES: OnceLock<Vec<Samples>> = OnceLock::new();
    let all = SAMPLES.get_or_init(|| {
        (0..4)
            .map(|s| {
                let mut rng = rand::rngs::StdRng::seed_from_u64(s);
                let alice = device(&mut rng, "@alice:alpha.example", "ALICE1", 2);
                let mut bob = device(&mut rng, "@bob:beta.example", "BOB1", 1);
                let mut rec = SessionRecord::new(bob.user_id(), bob.device_id());
                rec.promote(
                    alice
                        .initiate_outbound(&mut rng, &bundle(&bob, true), T0)
                        .unwrap(),
                );
                let pk = rec.encrypt(b"p").unwrap().to_bytes();
                let (mut a, _b) = establish(&mut rng, &alice, &mut bob, true);
                let normal = a.encrypt(b"n").unwrap().to_bytes();
                vec![
                    (0, pk),
                    (1, normal),
                    (2, a.to_bytes().to_vec()),
                    (3, alice.to_bytes().to_vec()),
                ]
            })
            .collect()
    });
    all[seed as usize % all.len()].clone()
}
