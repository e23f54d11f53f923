//! Double Ratchet behaviour through session records: bounds, transactional decryption,
//! duplicates, expiry, persistence and the envelope.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use hush_crypto::consts::{MAX_RECEIVER_CHAINS, MAX_SKIP, MAX_SKIPPED_KEYS, SKIPPED_KEY_TTL_SECS};
use hush_crypto::errors::{DecryptError, EnvelopeError, PickleError};
use hush_crypto::message::RatchetMessage;
use hush_crypto::session_record::IncomingMessage;
use hush_crypto::{
    encrypted_content, parse_content, Account, OutgoingMessage, Party, Payload, PickleKey,
    SessionRecord,
};
use rand::rngs::StdRng;
use support::*;

fn pair(seed: u64) -> (StdRng, SessionRecord, SessionRecord, Account, Account) {
    let mut rng = rng(seed);
    let alice = device(&mut rng, "@alice:alpha.example", "ALICE1", 0);
    let mut bob = device(&mut rng, "@bob:beta.example", "BOB1", 1);
    let (a, b) = establish(&mut rng, &alice, &mut bob, true);
    (rng, a, b, alice, bob)
}

fn normal(m: &OutgoingMessage) -> RatchetMessage {
    match incoming(m) {
        IncomingMessage::Normal(r) => r,
        IncomingMessage::PreKey(p) => p.message,
    }
}

fn n(m: RatchetMessage) -> IncomingMessage {
    IncomingMessage::Normal(m)
}

/// P1: two encryptions from one stored snapshot reuse (key, nonce); the record generation
/// makes the second save detectable, and a live record never repeats a header.
#[test]
fn p01_snapshot_reuse_is_detectable_and_live_sessions_never_repeat_keys() {
    let (_rng, mut a, _b, _, _) = pair(1);
    let stored = a.to_bytes();
    let stored_generation = a.generation();
    // A store that accepts a save only if the generation grew (compare-and-swap).
    let save = |current: &mut u64, record: &SessionRecord| {
        if record.generation() > *current {
            *current = record.generation();
            Ok(())
        } else {
            Err("stale generation")
        }
    };
    let mut current = stored_generation;
    let mut first = SessionRecord::from_bytes(&stored).unwrap();
    let m1 = first.encrypt(b"first").unwrap();
    assert!(save(&mut current, &first).is_ok());
    let mut second = SessionRecord::from_bytes(&stored).unwrap();
    let m2 = second.encrypt(b"other").unwrap();
    assert_eq!(
        normal(&m1).header,
        normal(&m2).header,
        "same snapshot, same message key"
    );
    assert_eq!(save(&mut current, &second), Err("stale generation"));
    // Live: every header (ratchet key, N) is fresh.
    let mut seen = std::collections::HashSet::new();
    for _ in 0..200 {
        let h = normal(&a.encrypt(b"x").unwrap()).header;
        assert!(seen.insert((h.ratchet_key, h.counter)));
    }
}

/// P5: gaps beyond MAX_SKIP, N = u32::MAX and forged new ratchet keys with huge counters are
/// refused before any derivation, leaving the state unchanged.
#[test]
fn p05_skipped_key_dos_is_bounded() {
    let (mut rng, mut a, mut b, _, _) = pair(5);
    let first = normal(&a.encrypt(b"x").unwrap());
    b.decrypt(&mut rng, &n(first), T0).unwrap();
    // Bob's chain for Alice's current ratchet key now expects N = 1.
    let m = normal(&a.encrypt(b"y").unwrap());
    let before = b.to_bytes();
    let mut cases = Vec::new();
    let mut far = m.clone();
    far.header.counter = 1 + MAX_SKIP + 1;
    cases.push((
        far,
        DecryptError::TooFarAhead {
            gap: u64::from(MAX_SKIP) + 1,
        },
    ));
    let mut max = m.clone();
    max.header.counter = u32::MAX;
    cases.push((max, DecryptError::BeyondChainEnd));
    let mut new_key = m.clone();
    new_key.header.ratchet_key = hush_crypto::Curve25519Secret::generate(&mut rng).public_key();
    new_key.header.counter = MAX_SKIP + 1;
    cases.push((
        new_key.clone(),
        DecryptError::TooFarAhead {
            gap: u64::from(MAX_SKIP) + 1,
        },
    ));
    new_key.header.counter = 0;
    new_key.header.previous_counter = u32::MAX;
    cases.push((new_key, DecryptError::AuthenticationFailed));
    for (msg, expected) in cases {
        assert_eq!(b.decrypt(&mut rng, &n(msg), T0).unwrap_err(), expected);
        assert_eq!(b.to_bytes(), before, "state unchanged");
    }
    // A gap of exactly MAX_SKIP is allowed: m (N = 1) and N = 2..MAX_SKIP are skipped.
    for _ in 2..=MAX_SKIP {
        a.encrypt(b"skipped").unwrap();
    }
    let last = normal(&a.encrypt(b"last").unwrap());
    assert_eq!(last.header.counter, MAX_SKIP + 1);
    assert_eq!(
        b.decrypt(&mut rng, &n(last), T0).unwrap().as_slice(),
        b"last"
    );
    assert_eq!(b.active().unwrap().skipped_key_count(), MAX_SKIP as usize);
    assert_eq!(b.decrypt(&mut rng, &n(m), T0).unwrap().as_slice(), b"y");
}

/// P6 and P7: flipping any single bit of header or ciphertext fails and leaves the record
/// byte-identical; the genuine message still decrypts afterwards.
#[test]
fn p06_p07_every_bit_flip_fails_without_state_change() {
    let (mut rng, mut a, mut b, _, _) = pair(6);
    // Cover both an in-chain message and one that starts a new DH step.
    let in_chain = normal(&a.encrypt(b"in chain").unwrap()).to_bytes();
    for bytes in [in_chain] {
        let before = b.to_bytes();
        for bit in 0..bytes.len() * 8 {
            let mut bad = bytes.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            if let Ok(msg) = RatchetMessage::from_bytes(&bad) {
                assert!(b.decrypt(&mut rng, &n(msg), T0).is_err(), "bit {bit}");
            }
            assert_eq!(b.to_bytes(), before, "bit {bit}");
        }
        let good = RatchetMessage::from_bytes(&bytes).unwrap();
        assert!(b.decrypt(&mut rng, &n(good), T0).is_ok());
    }
    let reply = normal(&b.encrypt(b"new step").unwrap()).to_bytes();
    let before = a.to_bytes();
    for bit in (0..reply.len() * 8).step_by(3) {
        let mut bad = reply.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        if let Ok(msg) = RatchetMessage::from_bytes(&bad) {
            assert!(a.decrypt(&mut rng, &n(msg), T0).is_err(), "bit {bit}");
        }
        assert_eq!(a.to_bytes(), before);
    }
    assert!(a
        .decrypt(
            &mut rng,
            &n(RatchetMessage::from_bytes(&reply).unwrap()),
            T0
        )
        .is_ok());
}

/// P7: each header field is authenticated.
#[test]
fn p07_header_fields_are_authenticated() {
    let (mut rng, mut a, mut b, _, _) = pair(7);
    a.encrypt(b"0").unwrap();
    let m = normal(&a.encrypt(b"1").unwrap());
    let mut pn = m.clone();
    pn.header.previous_counter += 1;
    let mut counter = m.clone();
    counter.header.counter -= 1;
    let mut key = m.clone();
    key.header.ratchet_key = hush_crypto::Curve25519Secret::generate(&mut rng).public_key();
    for bad in [pn, counter, key] {
        assert!(b.decrypt(&mut rng, &n(bad), T0).is_err());
    }
    assert_eq!(b.decrypt(&mut rng, &n(m), T0).unwrap().as_slice(), b"1");
}

/// P13: a duplicate is rejected without state change, whether it is a repeat of an in-order
/// message or of one first decrypted from a stored skipped key.
#[test]
fn p13_duplicates_are_rejected_without_state_change() {
    let (mut rng, mut a, mut b, _, _) = pair(13);
    let msgs: Vec<RatchetMessage> = (0..3).map(|i| normal(&a.encrypt(&[i]).unwrap())).collect();
    assert_eq!(
        b.decrypt(&mut rng, &n(msgs[2].clone()), T0)
            .unwrap()
            .as_slice(),
        &[2]
    );
    assert_eq!(
        b.decrypt(&mut rng, &n(msgs[0].clone()), T0)
            .unwrap()
            .as_slice(),
        &[0]
    );
    for i in [2usize, 0] {
        let before = b.to_bytes();
        let counter = msgs[i].header.counter;
        assert_eq!(
            b.decrypt(&mut rng, &n(msgs[i].clone()), T0).unwrap_err(),
            DecryptError::Duplicate { counter }
        );
        assert_eq!(b.to_bytes(), before);
    }
    assert_eq!(
        b.decrypt(&mut rng, &n(msgs[1].clone()), T0)
            .unwrap()
            .as_slice(),
        &[1]
    );
}

/// P13 (exhaustive form): deliver each message twice in a shuffled order.
#[test]
fn p13_each_message_decrypts_exactly_once() {
    use rand::seq::SliceRandom;
    let (mut rng, mut a, mut b, _, _) = pair(14);
    let msgs: Vec<RatchetMessage> = (0..20u8)
        .map(|i| normal(&a.encrypt(&[i]).unwrap()))
        .collect();
    let mut order: Vec<usize> = (0..20).chain(0..20).collect();
    order.shuffle(&mut rng);
    let mut done = [false; 20];
    for i in order {
        let before = b.to_bytes();
        match b.decrypt(&mut rng, &n(msgs[i].clone()), T0) {
            Ok(pt) => {
                assert!(!done[i]);
                assert_eq!(pt.as_slice(), &[i as u8]);
                done[i] = true;
            }
            Err(e) => {
                assert!(done[i], "{e}");
                assert_eq!(
                    e,
                    DecryptError::Duplicate {
                        counter: msgs[i].header.counter
                    }
                );
                assert_eq!(b.to_bytes(), before);
            }
        }
    }
    assert!(done.iter().all(|d| *d));
}

/// P15: skipped keys expire after the TTL, the total is capped (oldest evicted), and only
/// MAX_RECEIVER_CHAINS chains are kept; expired material is gone from the serialized state.
#[test]
fn p15_skipped_keys_and_old_chains_do_not_live_forever() {
    // TTL.
    let (mut rng, mut a, mut b, _, _) = pair(15);
    let m0 = normal(&a.encrypt(b"0").unwrap());
    let m1 = normal(&a.encrypt(b"1").unwrap());
    let m2 = normal(&a.encrypt(b"2").unwrap());
    b.decrypt(&mut rng, &n(m2), T0).unwrap();
    assert_eq!(b.active().unwrap().skipped_key_count(), 2);
    let size_with_keys = b.to_bytes().len();
    assert_eq!(
        b.decrypt(&mut rng, &n(m0), T0 + SKIPPED_KEY_TTL_SECS - 1)
            .unwrap()
            .as_slice(),
        b"0"
    );
    assert_eq!(
        b.decrypt(&mut rng, &n(m1.clone()), T0 + SKIPPED_KEY_TTL_SECS)
            .unwrap_err(),
        DecryptError::Duplicate { counter: 2 - 1 }
    );
    b.expire(T0 + SKIPPED_KEY_TTL_SECS);
    assert_eq!(b.active().unwrap().skipped_key_count(), 0);
    assert!(b.to_bytes().len() < size_with_keys);

    // Cap: three chains with 1000 skipped keys each leave exactly MAX_SKIPPED_KEYS.
    let (mut rng, mut a, mut b, _, _) = pair(16);
    let mut first_of_chain = Vec::new();
    for _ in 0..3 {
        let mut msgs: Vec<RatchetMessage> = (0..=MAX_SKIP)
            .map(|_| normal(&a.encrypt(b"k").unwrap()))
            .collect();
        let last = msgs.pop().unwrap();
        first_of_chain.push(msgs.swap_remove(0));
        b.decrypt(&mut rng, &n(last), T0).unwrap();
        assert!(b.active().unwrap().skipped_key_count() <= MAX_SKIPPED_KEYS);
        let reply = b.encrypt(b"step").unwrap();
        a.decrypt(&mut rng, &incoming(&reply), T0).unwrap();
    }
    assert_eq!(b.active().unwrap().skipped_key_count(), MAX_SKIPPED_KEYS);
    // The oldest keys (first chain) were evicted; the newer ones still work.
    assert!(b
        .decrypt(&mut rng, &n(first_of_chain[0].clone()), T0)
        .is_err());
    assert!(b
        .decrypt(&mut rng, &n(first_of_chain[2].clone()), T0)
        .is_ok());

    // Chains: a message held back from the first chain fails once 5 newer chains exist.
    let (mut rng, mut a, mut b, _, _) = pair(17);
    let held = normal(&a.encrypt(b"held").unwrap());
    let sent = normal(&a.encrypt(b"sent").unwrap());
    b.decrypt(&mut rng, &n(sent), T0).unwrap();
    for _ in 0..MAX_RECEIVER_CHAINS {
        let reply = b.encrypt(b"r").unwrap();
        a.decrypt(&mut rng, &incoming(&reply), T0).unwrap();
        let m = a.encrypt(b"m").unwrap();
        b.decrypt(&mut rng, &incoming(&m), T0).unwrap();
    }
    assert_eq!(
        b.active().unwrap().receiver_chain_count(),
        MAX_RECEIVER_CHAINS
    );
    assert_eq!(
        b.active().unwrap().skipped_key_count(),
        0,
        "keys of the dropped chain are gone"
    );
    let before = b.to_bytes();
    assert!(b.decrypt(&mut rng, &n(held), T0).is_err());
    assert_eq!(b.to_bytes(), before);
}

/// Superseded receiving chains also expire after the TTL.
#[test]
fn p15_superseded_chain_expires() {
    let (mut rng, mut a, mut b, _, _) = pair(18);
    let held = normal(&a.encrypt(b"held").unwrap());
    let sent = normal(&a.encrypt(b"sent").unwrap());
    b.decrypt(&mut rng, &n(sent), T0).unwrap();
    let reply = b.encrypt(b"r").unwrap();
    a.decrypt(&mut rng, &incoming(&reply), T0).unwrap();
    let m = a.encrypt(b"m").unwrap();
    b.decrypt(&mut rng, &incoming(&m), T0).unwrap();
    let later = T0 + SKIPPED_KEY_TTL_SECS;
    assert!(b.decrypt(&mut rng, &n(held), later).is_err());
    b.expire(later);
    assert_eq!(b.active().unwrap().receiver_chain_count(), 1);
}

/// P21: Debug output of stateful types never contains key material.
#[test]
fn p21_debug_is_redacted() {
    let (_rng, a, _b, alice, _) = pair(21);
    let seed_hex = {
        let bytes = alice.to_bytes();
        // The seed follows version (1), user (2+len) and device (2+len) in the account format.
        let start = 1 + 2 + alice.user_id().len() + 2 + alice.device_id().len();
        hex::encode(&bytes[start..start + 32])
    };
    let debug = format!("{alice:?} {a:?} {:?}", PickleKey::new([0x77; 32]));
    assert!(!debug.contains(&seed_hex));
    assert!(!debug.to_lowercase().contains("7777"));
    assert!(!debug.contains("119, 119"));
    assert!(debug.contains("PickleKey(..)"));
    assert!(debug.contains("Account { user_id: \"@alice:alpha.example\""));
}

#[test]
fn pickles_round_trip_and_are_bound_to_key_kind_and_address() {
    let (mut rng, a, _b, alice, _) = pair(40);
    let key = PickleKey::new([1; 32]);
    let blob = a.seal(&mut rng, &key);
    let opened = SessionRecord::open(&key, "@bob:beta.example", "BOB1", &blob).unwrap();
    assert_eq!(opened.to_bytes(), a.to_bytes());
    assert_eq!(
        SessionRecord::open(&PickleKey::new([2; 32]), "@bob:beta.example", "BOB1", &blob)
            .unwrap_err(),
        PickleError::AuthenticationFailed
    );
    assert_eq!(
        SessionRecord::open(&key, "@bob:beta.example", "BOB2", &blob).unwrap_err(),
        PickleError::AuthenticationFailed
    );
    assert!(Account::open(&key, "@bob:beta.example", "BOB1", &blob).is_err());
    let mut bad = blob.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert!(SessionRecord::open(&key, "@bob:beta.example", "BOB1", &bad).is_err());
    assert!(SessionRecord::open(&key, "@bob:beta.example", "BOB1", &blob[..20]).is_err());
    let account_blob = alice.seal(&mut rng, &key);
    let restored = Account::open(&key, alice.user_id(), alice.device_id(), &account_blob).unwrap();
    assert_eq!(restored.to_bytes(), alice.to_bytes());
    assert_ne!(
        alice.seal(&mut rng, &key),
        account_blob,
        "fresh nonce each time"
    );
}

#[test]
fn envelope_round_trip_and_payload_binding() {
    let mut rng = rng(50);
    let alice = device(&mut rng, "@alice:alpha.example", "ALICE1", 0);
    let bob = device(&mut rng, "@bob:beta.example", "BOB1", 1);
    let bob2 = device(&mut rng, "@bob:beta.example", "BOB2", 1);
    let (a_ik, b_ik, b2_ik) = (
        alice.identity_key(),
        bob.identity_key(),
        bob2.identity_key(),
    );
    let me = Party {
        user_id: alice.user_id(),
        device_id: alice.device_id(),
        identity_key: &a_ik,
    };
    let to = Party {
        user_id: bob.user_id(),
        device_id: bob.device_id(),
        identity_key: &b_ik,
    };
    let other = Party {
        user_id: bob2.user_id(),
        device_id: bob2.device_id(),
        identity_key: &b2_ik,
    };
    let payload = Payload::new("m.text", serde_json::json!({"body": "hi"}), &me, &to);
    let mut rec = SessionRecord::new(bob.user_id(), bob.device_id());
    rec.promote(
        alice
            .initiate_outbound(&mut rng, &bundle(&bob, true), T0)
            .unwrap(),
    );
    let msg = rec.encrypt(&payload.to_bytes()).unwrap();
    let content = encrypted_content(&alice.curve25519_key(), &[(bob.curve25519_key(), msg)]);
    assert_eq!(content["algorithm"], "hush.x3dh.ratchet.v1");
    let entry = &content["ciphertext"][bob.curve25519_key().to_base64()];
    assert_eq!(entry["type"], 0);
    assert!(!entry["body"].as_str().unwrap().contains('='));
    let received = parse_content(&content, &bob.curve25519_key()).unwrap();
    assert_eq!(received.sender_key, alice.curve25519_key());
    let IncomingMessage::PreKey(pk) = received.message else {
        panic!()
    };
    let empty = SessionRecord::new(alice.user_id(), alice.device_id());
    let inbound = bob
        .accept_inbound(&mut rng, &empty, alice.user_id(), &pk, T0)
        .unwrap();
    let got = Payload::from_bytes(&inbound.plaintext).unwrap();
    assert_eq!(got.check(&me, &to), Ok(()));
    assert_eq!(
        got.check(&me, &other),
        Err(EnvelopeError::PayloadMismatch("recipient_device"))
    );
    assert_eq!(
        got.check(&to, &to),
        Err(EnvelopeError::PayloadMismatch("sender"))
    );
    assert_eq!(
        parse_content(&content, &bob2.curve25519_key()).unwrap_err(),
        EnvelopeError::NotForThisDevice
    );
    let mut wrong = content.clone();
    wrong["algorithm"] = "m.olm.v1.curve25519-aes-sha2".into();
    assert_eq!(
        parse_content(&wrong, &bob.curve25519_key()).unwrap_err(),
        EnvelopeError::UnsupportedAlgorithm
    );
    let mut t2 = content.clone();
    t2["ciphertext"][bob.curve25519_key().to_base64()]["type"] = 2.into();
    assert_eq!(
        parse_content(&t2, &bob.curve25519_key()).unwrap_err(),
        EnvelopeError::UnknownType(2)
    );
}
