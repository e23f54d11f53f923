//! X3DH, prekeys, device keys and session-record behaviour, one test per pitfall.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashSet;

use hush_crypto::consts::{
    MAX_UNACKNOWLEDGED_SESSION_AGE_SECS, SPK_RETENTION_SECS, SPK_ROTATION_SECS,
};
use hush_crypto::errors::{DecryptError, DeviceKeysError, X3dhError};
use hush_crypto::prekeys::{signed_key_object, verify_key_object};
use hush_crypto::session_record::IncomingMessage;
use hush_crypto::{Account, DeviceKeys, KeyId, PreKeyBundle, SessionRecord};
use serde_json::Value;
use support::*;

fn flip_b64(value: &mut Value, pointer: &str) {
    let text = value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap()
        .to_owned();
    let mut bytes = hush_federation::base64::decode_lenient(&text).unwrap();
    bytes[3] ^= 0x01;
    *value.pointer_mut(pointer).unwrap() =
        Value::String(hush_federation::base64::encode_unpadded(&bytes));
}

#[test]
fn full_handshake_with_and_without_one_time_key() {
    let mut rng = rng(1);
    let alice = device(&mut rng, "@alice:alpha.example", "ALICE1", 0);
    let mut bob = device(&mut rng, "@bob:beta.example", "BOB1", 3);
    let (mut a, mut b) = establish(&mut rng, &alice, &mut bob, true);
    assert_eq!(bob.one_time_key_count(), 2);
    for i in 0..5u8 {
        let m = a.encrypt(&[i]).unwrap();
        assert_eq!(
            m.message_type(),
            1,
            "Alice stops sending prekey messages after a reply"
        );
        assert_eq!(
            b.decrypt(&mut rng, &incoming(&m), T0).unwrap().as_slice(),
            &[i]
        );
    }
    let (_a, _b) = establish(&mut rng, &alice, &mut bob, false);
    assert_eq!(bob.one_time_key_count(), 2);
}

/// P2: a forged initial message never burns the one-time key; an accepted one is consumed by
/// the caller in the same step as storing the session; a replay creates no second session.
#[test]
fn p02_one_time_key_consumed_only_after_successful_decryption() {
    let mut rng = rng(2);
    let alice = device(&mut rng, "@alice:alpha.example", "ALICE1", 0);
    let mut bob = device(&mut rng, "@bob:beta.example", "BOB1", 1);
    let otk_id = bundle(&bob, true).one_time_key().unwrap().id;
    let mut a_rec = SessionRecord::new(bob.user_id(), bob.device_id());
    a_rec.promote(
        alice
            .initiate_outbound(&mut rng, &bundle(&bob, true), T0)
            .unwrap(),
    );
    let first = prekey(&a_rec.encrypt(b"first").unwrap());
    let empty = SessionRecord::new(alice.user_id(), alice.device_id());

    let mut forged = first.clone();
    let last = forged.message.ciphertext.len() - 1;
    forged.message.ciphertext[last] ^= 0x80;
    let err = bob
        .accept_inbound(&mut rng, &empty, alice.user_id(), &forged, T0)
        .unwrap_err();
    assert_eq!(err, X3dhError::Decrypt(DecryptError::AuthenticationFailed));
    assert!(
        bob.has_one_time_key(otk_id),
        "a forgery must not burn the one-time key"
    );

    let inbound = bob
        .accept_inbound(&mut rng, &empty, alice.user_id(), &first, T0)
        .unwrap();
    assert_eq!(inbound.used_one_time_key, Some(otk_id));
    assert!(!inbound.existing_session);
    assert!(bob.remove_one_time_key(otk_id));
    let record = inbound.record;

    // Replaying the same initial message: the record already knows the base key, so no new
    // session is made and the repeated counter is rejected.
    let replay = bob.accept_inbound(&mut rng, &record, alice.user_id(), &first, T0);
    assert_eq!(
        replay.unwrap_err(),
        X3dhError::Decrypt(DecryptError::Duplicate { counter: 0 })
    );
    // Against a record that lost the session, the consumed key is gone: error, no session.
    let err = bob
        .accept_inbound(&mut rng, &empty, alice.user_id(), &first, T0)
        .unwrap_err();
    assert_eq!(err, X3dhError::UnknownOneTimeKey(otk_id.0));
}

/// P3: any bit flipped in a prekey signature, a prekey or the identity key aborts before DH.
#[test]
fn p03_bad_prekey_signatures_abort_the_handshake() {
    let mut rng = rng(3);
    let bob = device(&mut rng, "@bob:beta.example", "BOB1", 1);
    let keys = device_keys(&bob);
    let (claim_key, value) = claim(&bob, true);
    assert!(PreKeyBundle::from_claim(&keys, &claim_key, &value).is_ok());
    let spk_id = value["signed_prekey"]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone();
    let otk_id = value["one_time_key"]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone();
    let sig =
        |role: &str, id: &str| format!("/{role}/{id}/signatures/@bob:beta.example/ed25519:BOB1");
    for pointer in [
        sig("signed_prekey", &spk_id),
        format!("/signed_prekey/{spk_id}/key"),
        sig("one_time_key", &otk_id),
        format!("/one_time_key/{otk_id}/key"),
    ] {
        let mut bad = value.clone();
        flip_b64(&mut bad, &pointer);
        assert_eq!(
            PreKeyBundle::from_claim(&keys, &claim_key, &bad).unwrap_err(),
            X3dhError::BadPreKeySignature,
            "{pointer}"
        );
    }
    // Signed by another identity (e.g. the server substituted the device key).
    let mallory = device(&mut rng, "@bob:beta.example", "BOB1", 0);
    assert_eq!(
        PreKeyBundle::from_claim(&device_keys(&mallory), &claim_key, &value).unwrap_err(),
        X3dhError::BadPreKeySignature
    );
    // A missing signature.
    let mut unsigned = value.clone();
    unsigned["signed_prekey"][&spk_id]
        .as_object_mut()
        .unwrap()
        .remove("signatures");
    assert_eq!(
        PreKeyBundle::from_claim(&keys, &claim_key, &unsigned).unwrap_err(),
        X3dhError::BadPreKeySignature
    );
}

/// P4: an unknown one-time key id is an error, never a silent 3-DH; naming a key the sender
/// did not use fails authentication.
#[test]
fn p04_unknown_one_time_key_is_rejected_never_downgraded() {
    let mut rng = rng(4);
    let alice = device(&mut rng, "@alice:alpha.example", "ALICE1", 0);
    let bob = device(&mut rng, "@bob:beta.example", "BOB1", 2);
    let empty = SessionRecord::new(alice.user_id(), alice.device_id());
    let mut rec = SessionRecord::new(bob.user_id(), bob.device_id());
    rec.promote(
        alice
            .initiate_outbound(&mut rng, &bundle(&bob, true), T0)
            .unwrap(),
    );
    let mut msg = prekey(&rec.encrypt(b"x").unwrap());
    msg.one_time_key_id = Some(999_999);
    assert_eq!(
        bob.accept_inbound(&mut rng, &empty, alice.user_id(), &msg, T0)
            .unwrap_err(),
        X3dhError::UnknownOneTimeKey(999_999)
    );
    // The sender did a 3-DH (no one-time key) but the message names one: DH4 mismatch.
    let mut rec = SessionRecord::new(bob.user_id(), bob.device_id());
    rec.promote(
        alice
            .initiate_outbound(&mut rng, &bundle(&bob, false), T0)
            .unwrap(),
    );
    let mut msg = prekey(&rec.encrypt(b"x").unwrap());
    let real = bundle(&bob, true).one_time_key().unwrap().id;
    msg.one_time_key_id = Some(real.0);
    assert_eq!(
        bob.accept_inbound(&mut rng, &empty, alice.user_id(), &msg, T0)
            .unwrap_err(),
        X3dhError::Decrypt(DecryptError::AuthenticationFailed)
    );
    assert!(bob.has_one_time_key(real));
    // And the other way round: a 4-DH message with its one-time key id stripped.
    let mut rec = SessionRecord::new(bob.user_id(), bob.device_id());
    rec.promote(
        alice
            .initiate_outbound(&mut rng, &bundle(&bob, true), T0)
            .unwrap(),
    );
    let mut msg = prekey(&rec.encrypt(b"x").unwrap());
    msg.one_time_key_id = None;
    assert_eq!(
        bob.accept_inbound(&mut rng, &empty, alice.user_id(), &msg, T0)
            .unwrap_err(),
        X3dhError::Decrypt(DecryptError::AuthenticationFailed)
    );
}

/// P8: the server re-addresses Alice's ciphertext to Bob's other device, or to Carol, or claims
/// it came from someone else: rejected.
#[test]
fn p08_readdressed_messages_are_rejected() {
    let mut rng = rng(8);
    let alice = device(&mut rng, "@alice:alpha.example", "ALICE1", 0);
    let bob1 = device(&mut rng, "@bob:beta.example", "BOB1", 1);
    let bob2 = device(&mut rng, "@bob:beta.example", "BOB2", 1);
    let carol = device(&mut rng, "@carol:gamma.example", "CAROL1", 1);
    let mut rec = SessionRecord::new(bob1.user_id(), bob1.device_id());
    rec.promote(
        alice
            .initiate_outbound(&mut rng, &bundle(&bob1, false), T0)
            .unwrap(),
    );
    let msg = prekey(&rec.encrypt(b"for bob1 only").unwrap());
    let empty = SessionRecord::new(alice.user_id(), alice.device_id());
    for other in [&bob2, &carol] {
        // Even if the other device happens to hold a signed prekey with the same id, the
        // identity binding in the associated data makes decryption fail.
        assert!(other
            .accept_inbound(&mut rng, &empty, alice.user_id(), &msg, T0)
            .is_err());
    }
    // The homeserver says the event came from Mallory: refused before any DH.
    let mallory_rec = SessionRecord::new("@mallory:evil.example", "ALICE1");
    assert_eq!(
        bob1.accept_inbound(&mut rng, &mallory_rec, "@mallory:evil.example", &msg, T0)
            .unwrap_err(),
        X3dhError::SenderMismatch
    );
    // A message claiming another sender device than the one it was made for fails the AD.
    let mut renamed = msg.clone();
    renamed.sender_device = "ALICE2".to_owned();
    let rec2 = SessionRecord::new(alice.user_id(), "ALICE2");
    assert_eq!(
        bob1.accept_inbound(&mut rng, &rec2, alice.user_id(), &renamed, T0)
            .unwrap_err(),
        X3dhError::Decrypt(DecryptError::AuthenticationFailed)
    );
    assert!(bob1
        .accept_inbound(&mut rng, &empty, alice.user_id(), &msg, T0)
        .is_ok());
}

/// P9: low-order points as signed prekey, one-time key, base key or ratchet key are refused.
#[test]
fn p09_low_order_keys_are_rejected_in_every_role() {
    let mut rng = rng(9);
    let alice = device(&mut rng, "@alice:alpha.example", "ALICE1", 0);
    let bob = device(&mut rng, "@bob:beta.example", "BOB1", 1);
    let low = hush_crypto::Curve25519PublicKey::from_bytes([0; 32]);
    let order8 = {
        let mut k = [0u8; 32];
        k.copy_from_slice(
            &hex::decode("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")
                .unwrap(),
        );
        hush_crypto::Curve25519PublicKey::from_bytes(k)
    };
    // As SPK and OPK: properly signed by Bob, so only the DH check can catch them.
    for (spk, otk) in [
        (low, None),
        (order8, None),
        (bundle(&bob, false).signed_prekey().key, Some(order8)),
    ] {
        let mut value = serde_json::json!({"signed_prekey": {
            KeyId(50).to_matrix_key_id():
                signed_key_object(bob.identity(), bob.user_id(), bob.device_id(), &spk, true).unwrap()
        }});
        if let Some(otk) = otk {
            value["one_time_key"] = serde_json::json!({KeyId(51).to_matrix_key_id():
                signed_key_object(bob.identity(), bob.user_id(), bob.device_id(), &otk, false).unwrap()});
        }
        let b = PreKeyBundle::from_claim(&device_keys(&bob), "hush.x3dh_bundle:AAAAMg", &value)
            .unwrap();
        let err = alice.initiate_outbound(&mut rng, &b, T0).unwrap_err();
        assert_eq!(
            err,
            X3dhError::Key(hush_crypto::errors::KeyError::NonContributory)
        );
    }
    // As base key EK_A in a prekey message.
    let mut rec = SessionRecord::new(bob.user_id(), bob.device_id());
    rec.promote(
        alice
            .initiate_outbound(&mut rng, &bundle(&bob, true), T0)
            .unwrap(),
    );
    let mut msg = prekey(&rec.encrypt(b"x").unwrap());
    let empty = SessionRecord::new(alice.user_id(), alice.device_id());
    for bad in [low, order8] {
        msg.base_key = bad;
        assert_eq!(
            bob.accept_inbound(&mut rng, &empty, alice.user_id(), &msg, T0)
                .unwrap_err(),
            X3dhError::Key(hush_crypto::errors::KeyError::NonContributory)
        );
    }
    // As ratchet key in a header.
    let mut bob2 = device(&mut rng, "@bob:beta.example", "BOB2", 1);
    let (mut a, mut b) = establish(&mut rng, &alice, &mut bob2, true);
    let m = a.encrypt(b"y").unwrap();
    let IncomingMessage::Normal(mut m) = incoming(&m) else {
        panic!()
    };
    let before = b.to_bytes();
    for bad in [low, order8] {
        m.header.ratchet_key = bad;
        assert_eq!(
            b.decrypt(&mut rng, &IncomingMessage::Normal(m.clone()), T0)
                .unwrap_err(),
            DecryptError::NonContributory
        );
        assert_eq!(b.to_bytes(), before);
    }
}

/// P10 at the device-key level: a non-canonical or weak `ed25519` key is refused.
#[test]
fn p10_device_keys_with_bad_identity_are_rejected() {
    let mut rng = rng(10);
    let bob = device(&mut rng, "@bob:beta.example", "BOB1", 0);
    let mut value = bob.device_keys().unwrap();
    value["keys"]["ed25519:BOB1"] = Value::String(hush_federation::base64::encode_unpadded(&{
        let mut k = [0u8; 32];
        k[0] = 1;
        k
    }));
    assert!(matches!(
        DeviceKeys::from_json(&value, "@bob:beta.example", "BOB1"),
        Err(DeviceKeysError::Key(_))
    ));
}

/// P11: ephemeral keys never repeat; each DH step uses a new ratchet key; fan-out to several
/// devices yields independent sessions.
#[test]
fn p11_keys_are_never_reused_across_handshakes_or_steps() {
    let mut rng = rng(11);
    let alice = device(&mut rng, "@alice:alpha.example", "ALICE1", 0);
    let bob = device(&mut rng, "@bob:beta.example", "BOB1", 0);
    let b = bundle(&bob, false);
    let mut base_keys = HashSet::new();
    let mut ratchet_keys = HashSet::new();
    for _ in 0..1000 {
        let mut s = alice.initiate_outbound(&mut rng, &b, T0).unwrap();
        assert!(base_keys.insert(*s.base_key()));
        let m = prekey(&s.encrypt(b"x").unwrap());
        assert!(ratchet_keys.insert(m.message.header.ratchet_key));
        assert_ne!(m.message.header.ratchet_key, m.base_key);
    }
    // Ratchet keys over DH steps.
    let mut bob = device(&mut rng, "@bob:beta.example", "BOB2", 1);
    let (mut a, mut bb) = establish(&mut rng, &alice, &mut bob, true);
    let mut seen = HashSet::new();
    for _ in 0..10 {
        let m = a.encrypt(b"ping").unwrap();
        let IncomingMessage::Normal(r) = incoming(&m) else {
            panic!()
        };
        assert!(seen.insert(r.header.ratchet_key) || r.header.counter > 0);
        bb.decrypt(&mut rng, &incoming(&m), T0).unwrap();
        let m = bb.encrypt(b"pong").unwrap();
        let IncomingMessage::Normal(r) = incoming(&m) else {
            panic!()
        };
        assert!(seen.insert(r.header.ratchet_key));
        a.decrypt(&mut rng, &incoming(&m), T0).unwrap();
    }
    // Fan-out: the same plaintext to three devices gives three unrelated ciphertexts.
    let devices: Vec<Account> = (0..3)
        .map(|i| device(&mut rng, "@carol:gamma.example", &format!("C{i}"), 1))
        .collect();
    let bodies: HashSet<Vec<u8>> = devices
        .iter()
        .map(|d| {
            let mut s = alice
                .initiate_outbound(&mut rng, &bundle(d, true), T0)
                .unwrap();
            s.encrypt(b"same").unwrap().to_bytes()
        })
        .collect();
    assert_eq!(bodies.len(), 3);
}

/// P12: a signature made in one context never verifies in another: one-time key objects,
/// signed-prekey (fallback) objects and device keys are not interchangeable.
#[test]
fn p12_signature_contexts_are_separated() {
    let mut rng = rng(12);
    let bob = device(&mut rng, "@bob:beta.example", "BOB1", 1);
    let ik = bob.identity_key();
    let key = bundle(&bob, false).signed_prekey().key;
    let otk_obj =
        signed_key_object(bob.identity(), bob.user_id(), bob.device_id(), &key, false).unwrap();
    let spk_obj =
        signed_key_object(bob.identity(), bob.user_id(), bob.device_id(), &key, true).unwrap();
    assert!(verify_key_object(&otk_obj, &ik, bob.user_id(), bob.device_id(), false).is_ok());
    assert!(verify_key_object(&spk_obj, &ik, bob.user_id(), bob.device_id(), true).is_ok());
    // An OTK signature presented as an SPK (add "fallback": true, keep the signature).
    let mut as_spk = otk_obj.clone();
    as_spk["fallback"] = Value::Bool(true);
    assert!(verify_key_object(&as_spk, &ik, bob.user_id(), bob.device_id(), true).is_err());
    // An SPK object presented as an OTK.
    assert!(verify_key_object(&spk_obj, &ik, bob.user_id(), bob.device_id(), false).is_err());
    let mut stripped = spk_obj.clone();
    stripped.as_object_mut().unwrap().remove("fallback");
    assert!(verify_key_object(&stripped, &ik, bob.user_id(), bob.device_id(), false).is_err());
    // A device-keys signature does not sign a key object and vice versa.
    let dk = bob.device_keys().unwrap();
    let mut forged = otk_obj.clone();
    forged["signatures"] = dk["signatures"].clone();
    assert!(verify_key_object(&forged, &ik, bob.user_id(), bob.device_id(), false).is_err());
    let mut forged_dk = dk.clone();
    forged_dk["signatures"] = otk_obj["signatures"].clone();
    assert!(DeviceKeys::from_json(&forged_dk, bob.user_id(), bob.device_id()).is_err());
    // Signed by the same key for another user id: not valid for this one.
    assert!(verify_key_object(&otk_obj, &ik, "@eve:beta.example", bob.device_id(), false).is_err());
}

/// P16: a message to the previous signed prekey decrypts during the retention period; after it
/// the private key is erased and the message is rejected.
#[test]
fn p16_signed_prekey_rotation_and_retention() {
    let mut rng = rng(16);
    let alice = device(&mut rng, "@alice:alpha.example", "ALICE1", 0);
    let mut bob = device(&mut rng, "@bob:beta.example", "BOB1", 0);
    let old_bundle = bundle(&bob, false);
    let old_id = old_bundle.signed_prekey().id;
    assert!(!bob.signed_prekey_due(T0 + SPK_ROTATION_SECS - 1));
    assert!(bob.signed_prekey_due(T0 + SPK_ROTATION_SECS));
    let rotated_at = T0 + SPK_ROTATION_SECS;
    assert!(bob.maintain(&mut rng, rotated_at).unwrap());
    assert_ne!(bob.current_signed_prekey().unwrap().id(), old_id);
    assert!(!bob.maintain(&mut rng, rotated_at + 1).unwrap());

    let mut rec = SessionRecord::new(bob.user_id(), bob.device_id());
    rec.promote(alice.initiate_outbound(&mut rng, &old_bundle, T0).unwrap());
    let msg = prekey(&rec.encrypt(b"in flight").unwrap());
    let empty = SessionRecord::new(alice.user_id(), alice.device_id());
    let inside = rotated_at + SPK_RETENTION_SECS - 1;
    // Keep the schedule going: rotation within the window must not drop the old key early.
    let mut bob_later = Account::from_bytes(&bob.to_bytes()).unwrap();
    bob_later.maintain(&mut rng, inside).unwrap();
    assert!(bob_later
        .accept_inbound(&mut rng, &empty, alice.user_id(), &msg, inside)
        .is_ok());
    let after = rotated_at + SPK_RETENTION_SECS;
    bob.maintain(&mut rng, after).unwrap();
    assert!(
        bob.signed_prekeys().iter().all(|k| k.id() != old_id),
        "private key erased"
    );
    // Left: the key made at `rotated_at` (retired just now) and the new current one.
    assert_eq!(bob.signed_prekeys().len(), 2);
    let restored = Account::from_bytes(&bob.to_bytes()).unwrap();
    assert!(restored.signed_prekeys().iter().all(|k| k.id() != old_id));
    assert_eq!(
        bob.accept_inbound(&mut rng, &empty, alice.user_id(), &msg, after)
            .unwrap_err(),
        X3dhError::UnknownSignedPreKey(old_id.0)
    );
}

/// P17: replaying a one-time-key-less initial message after the session is established makes
/// no second session (base-key dedupe) and is rejected as a duplicate.
#[test]
fn p17_replayed_initial_message_without_one_time_key() {
    let mut rng = rng(17);
    let alice = device(&mut rng, "@alice:alpha.example", "ALICE1", 0);
    let bob = device(&mut rng, "@bob:beta.example", "BOB1", 0);
    let mut a_rec = SessionRecord::new(bob.user_id(), bob.device_id());
    a_rec.promote(
        alice
            .initiate_outbound(&mut rng, &bundle(&bob, false), T0)
            .unwrap(),
    );
    let first = prekey(&a_rec.encrypt(b"one").unwrap());
    let second = prekey(&a_rec.encrypt(b"two").unwrap());
    let empty = SessionRecord::new(alice.user_id(), alice.device_id());
    let inbound = bob
        .accept_inbound(&mut rng, &empty, alice.user_id(), &first, T0)
        .unwrap();
    assert_eq!(inbound.used_one_time_key, None);
    let mut record = inbound.record;
    // Alice's second prekey message (same handshake) goes to the same session.
    let again = bob
        .accept_inbound(&mut rng, &record, alice.user_id(), &second, T0)
        .unwrap();
    assert!(again.existing_session);
    assert_eq!(again.plaintext.as_slice(), b"two");
    assert_eq!(again.record.inactive_count(), 0);
    record = again.record;
    let before = record.to_bytes();
    let replay = bob.accept_inbound(&mut rng, &record, alice.user_id(), &first, T0);
    assert_eq!(
        replay.unwrap_err(),
        X3dhError::Decrypt(DecryptError::Duplicate { counter: 0 })
    );
    assert_eq!(record.to_bytes(), before);
    // The record's own decrypt gives the same answer for a type-0 message.
    assert_eq!(
        record
            .decrypt(&mut rng, &IncomingMessage::PreKey(Box::new(first)), T0)
            .unwrap_err(),
        DecryptError::Duplicate { counter: 0 }
    );
}

/// P19: Alice and Bob initiate at the same time; after each processes the other's initiation
/// and one more round trip both use the same session.
#[test]
fn p19_simultaneous_initiation_converges() {
    let mut rng = rng(19);
    let mut alice = device(&mut rng, "@alice:alpha.example", "ALICE1", 2);
    let mut bob = device(&mut rng, "@bob:beta.example", "BOB1", 2);
    let mut a_rec = SessionRecord::new(bob.user_id(), bob.device_id());
    let mut b_rec = SessionRecord::new(alice.user_id(), alice.device_id());
    a_rec.promote(
        alice
            .initiate_outbound(&mut rng, &bundle(&bob, true), T0)
            .unwrap(),
    );
    b_rec.promote(
        bob.initiate_outbound(&mut rng, &bundle(&alice, true), T0)
            .unwrap(),
    );
    let from_a = prekey(&a_rec.encrypt(b"hi from alice").unwrap());
    let from_b = prekey(&b_rec.encrypt(b"hi from bob").unwrap());
    let at_bob = bob
        .accept_inbound(&mut rng, &b_rec, alice.user_id(), &from_a, T0)
        .unwrap();
    bob.remove_one_time_key(at_bob.used_one_time_key.unwrap());
    b_rec = at_bob.record;
    let at_alice = alice
        .accept_inbound(&mut rng, &a_rec, bob.user_id(), &from_b, T0)
        .unwrap();
    alice.remove_one_time_key(at_alice.used_one_time_key.unwrap());
    a_rec = at_alice.record;
    assert_eq!(a_rec.inactive_count(), 1);
    // Their active sessions differ now. One round trip later they agree.
    let m = a_rec.encrypt(b"round 1").unwrap();
    assert_eq!(
        b_rec
            .decrypt(&mut rng, &incoming(&m), T0)
            .unwrap()
            .as_slice(),
        b"round 1"
    );
    let m = b_rec.encrypt(b"round 1 reply").unwrap();
    assert_eq!(
        a_rec
            .decrypt(&mut rng, &incoming(&m), T0)
            .unwrap()
            .as_slice(),
        b"round 1 reply"
    );
    assert_eq!(
        a_rec.active().unwrap().base_key(),
        b_rec.active().unwrap().base_key(),
        "both sides converged on one session"
    );
    for i in 0..3u8 {
        let m = a_rec.encrypt(&[i]).unwrap();
        assert_eq!(m.message_type(), 1);
        assert_eq!(
            b_rec
                .decrypt(&mut rng, &incoming(&m), T0)
                .unwrap()
                .as_slice(),
            &[i]
        );
        let m = b_rec.encrypt(&[i]).unwrap();
        assert_eq!(
            a_rec
                .decrypt(&mut rng, &incoming(&m), T0)
                .unwrap()
                .as_slice(),
            &[i]
        );
    }
}

/// P24: a device whose keys are not validly self-signed, or whose curve25519 key is not the
/// Montgomery form of its ed25519 key, never yields a DeviceKeys value, so it cannot be
/// encrypted to.
#[test]
fn p24_unsigned_or_inconsistent_devices_are_not_encrypted_to() {
    let mut rng = rng(24);
    let bob = device(&mut rng, "@bob:beta.example", "BOB1", 0);
    let good = bob.device_keys().unwrap();
    assert!(DeviceKeys::from_json(&good, "@bob:beta.example", "BOB1").is_ok());
    let mut unsigned = good.clone();
    unsigned.as_object_mut().unwrap().remove("signatures");
    assert_eq!(
        DeviceKeys::from_json(&unsigned, "@bob:beta.example", "BOB1").unwrap_err(),
        DeviceKeysError::BadSignature
    );
    // The server adds a device signed by its own key but claiming Bob's identity key.
    let mallory = device(&mut rng, "@bob:beta.example", "BOB1", 0);
    let mut injected = good.clone();
    injected["signatures"] = mallory.device_keys().unwrap()["signatures"].clone();
    assert_eq!(
        DeviceKeys::from_json(&injected, "@bob:beta.example", "BOB1").unwrap_err(),
        DeviceKeysError::BadSignature
    );
    let mut mismatched = good.clone();
    mismatched["keys"]["curve25519:BOB1"] = Value::String(mallory.curve25519_key().to_base64());
    assert_eq!(
        DeviceKeys::from_json(&mismatched, "@bob:beta.example", "BOB1").unwrap_err(),
        DeviceKeysError::CurveKeyMismatch
    );
    assert_eq!(
        DeviceKeys::from_json(&good, "@bob:beta.example", "BOB2").unwrap_err(),
        DeviceKeysError::AddressMismatch
    );
    let mut other_alg = good.clone();
    other_alg["algorithms"] = serde_json::json!(["m.olm.v1.curve25519-aes-sha2"]);
    assert_eq!(
        DeviceKeys::from_json(&other_alg, "@bob:beta.example", "BOB1").unwrap_err(),
        DeviceKeysError::UnsupportedAlgorithm
    );
}

/// Key ids are unique across signed and one-time prekeys and survive serialization.
#[test]
fn key_ids_stay_unique_across_serialization() {
    let mut rng = rng(30);
    let mut account = device(&mut rng, "@bob:beta.example", "BOB1", 10);
    let mut ids: HashSet<String> = account.one_time_keys().unwrap().keys().cloned().collect();
    ids.extend(account.fallback_keys().unwrap().keys().cloned());
    assert_eq!(ids.len(), 11);
    account.mark_keys_as_published();
    assert!(account.one_time_keys().unwrap().is_empty());
    let mut restored = Account::from_bytes(&account.to_bytes()).unwrap();
    assert_eq!(restored.to_bytes(), account.to_bytes());
    restored.generate_one_time_keys(&mut rng, 10).unwrap();
    restored.rotate_signed_prekey(&mut rng, T0 + 1).unwrap();
    let mut new_ids: HashSet<String> = restored.one_time_keys().unwrap().keys().cloned().collect();
    new_ids.extend(restored.fallback_keys().unwrap().keys().cloned());
    assert_eq!(new_ids.len(), 11);
    assert!(ids.is_disjoint(&new_ids), "no id is ever reused");
    for id in &new_ids {
        assert_eq!(
            KeyId::from_matrix_key_id(id).unwrap().to_matrix_key_id(),
            *id
        );
        assert_eq!(id.len(), "signed_curve25519:".len() + 6);
    }
    assert_eq!(Account::one_time_keys_wanted(5), 95);
    assert_eq!(Account::one_time_keys_wanted(50), 0);
}

/// The uploaded JSON has exactly the Matrix shapes.
#[test]
fn uploaded_key_objects_have_matrix_shapes() {
    let mut rng = rng(31);
    let account = device(&mut rng, "@bob:beta.example", "BOB1", 1);
    let dk = account.device_keys().unwrap();
    let mut fields: Vec<&String> = dk.as_object().unwrap().keys().collect();
    fields.sort();
    assert_eq!(
        fields,
        ["algorithms", "device_id", "keys", "signatures", "user_id"]
    );
    assert_eq!(
        dk["algorithms"],
        serde_json::json!(["hush.x3dh.ratchet.v1"])
    );
    assert_eq!(
        dk["keys"]["curve25519:BOB1"].as_str().unwrap(),
        account.curve25519_key().to_base64()
    );
    let fb = account.fallback_keys().unwrap();
    let (_, spk) = fb.iter().next().unwrap();
    assert_eq!(spk["fallback"], Value::Bool(true));
    assert_eq!(spk.as_object().unwrap().len(), 3);
    let otks = account.one_time_keys().unwrap();
    let (_, otk) = otks.iter().next().unwrap();
    let mut fields: Vec<&String> = otk.as_object().unwrap().keys().collect();
    fields.sort();
    assert_eq!(fields, ["key", "signatures"]);
    assert_eq!(
        otk["signatures"]["@bob:beta.example"]["ed25519:BOB1"]
            .as_str()
            .unwrap()
            .len(),
        86
    );
}

#[test]
fn an_unanswered_session_goes_stale_after_30_days_and_an_answered_one_never() {
    let mut rng = rng(30);
    let alice = device(&mut rng, "@alice:alpha.example", "ALICE1", 2);
    let mut bob = device(&mut rng, "@bob:beta.example", "BOB1", 4);
    let mut rec = SessionRecord::new(bob.user_id(), bob.device_id());
    assert!(rec.needs_new_session(T0), "no session yet");
    rec.promote(
        alice
            .initiate_outbound(&mut rng, &bundle(&bob, true), T0)
            .unwrap(),
    );
    let first = rec.encrypt(b"anyone there?").unwrap();
    assert_eq!(first.message_type(), 0, "unanswered: still prekey messages");
    let limit = T0 + MAX_UNACKNOWLEDGED_SESSION_AGE_SECS;
    assert!(!rec.needs_new_session(limit));
    assert!(rec.needs_new_session(limit + 1));
    // The start time survives serialization.
    let reloaded = SessionRecord::from_bytes(&rec.to_bytes()).unwrap();
    assert!(!reloaded.needs_new_session(limit));
    assert!(reloaded.needs_new_session(limit + 1));

    // A new session replaces the stale one; the stale one stays to decrypt a late answer.
    let stale_first = first;
    rec.promote(
        alice
            .initiate_outbound(&mut rng, &bundle(&bob, true), limit + 1)
            .unwrap(),
    );
    assert!(!rec.needs_new_session(limit + 2));
    let empty = SessionRecord::new(alice.user_id(), alice.device_id());
    let late = bob
        .accept_inbound(&mut rng, &empty, alice.user_id(), &prekey(&stale_first), T0)
        .unwrap();
    let mut b_rec = late.record;
    let answer = b_rec.encrypt(b"sorry, I was away").unwrap();
    let pt = rec
        .decrypt(&mut rng, &incoming(&answer), limit + 3)
        .unwrap();
    assert_eq!(pt.as_slice(), b"sorry, I was away");
    // The answered session is active again and never goes stale.
    assert!(!rec.needs_new_session(limit + 3));
    assert!(!rec.needs_new_session(u64::MAX));

    // An established session is never stale, whatever the clock says.
    let (a_rec, _) = establish(&mut rng, &alice, &mut bob, true);
    assert!(!a_rec.needs_new_session(u64::MAX));
}
