//! Regenerates docs/test-vectors/*.json from fixed keys and fails on any difference.
//! Each intermediate value is derived a second time from the primitives (HKDF, HMAC, X25519,
//! ChaCha20-Poly1305) exactly as docs/protocol.md states it, and checked against what the
//! session API produced. Run with HUSH_REGENERATE_VECTORS=1 to rewrite the files.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::path::PathBuf;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hush_crypto::consts::{INFO_MESSAGE_KEYS, INFO_RATCHET, INFO_X3DH};
use hush_crypto::kdf::{hkdf_sha256, hmac_sha256};
use hush_crypto::keys::diffie_hellman;
use hush_crypto::message::{Header, RatchetMessage};
use hush_crypto::session_record::IncomingMessage;
use hush_crypto::x3dh::{associated_data, Party};
use hush_crypto::{
    Account, Curve25519PublicKey, Curve25519Secret, DeviceKeys, Fingerprint, IdentityKeyPair,
    OutgoingMessage, PreKeyBundle, SessionRecord,
};
use rand_core::{CryptoRng, RngCore};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const NOW: u64 = 1_800_000_000;

/// Hands out pre-chosen 32-byte values in order; the vectors list each one with its role.
struct ScriptedRng(VecDeque<[u8; 32]>);

impl RngCore for ScriptedRng {
    fn next_u32(&mut self) -> u32 {
        unimplemented!("not used by the crate")
    }
    fn next_u64(&mut self) -> u64 {
        unimplemented!("not used by the crate")
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        let next = self.0.pop_front().expect("script exhausted");
        assert_eq!(dest.len(), 32);
        dest.copy_from_slice(&next);
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}
impl CryptoRng for ScriptedRng {}

fn fixed(label: &str) -> [u8; 32] {
    Sha256::digest(format!("hush test vector: {label}").as_bytes()).into()
}

fn hx(b: impl AsRef<[u8]>) -> String {
    hex::encode(b)
}

fn kdf_rk(rk: &[u8; 32], dh: &[u8; 32]) -> ([u8; 32], [u8; 32]) {
    let mut out = [0u8; 64];
    hkdf_sha256(Some(rk), dh, INFO_RATCHET, &mut out).unwrap();
    (out[..32].try_into().unwrap(), out[32..].try_into().unwrap())
}

fn kdf_ck(ck: &[u8; 32]) -> ([u8; 32], [u8; 32]) {
    (*hmac_sha256(ck, &[0x01]), *hmac_sha256(ck, &[0x02]))
}

fn dh(secret: &Curve25519Secret, public: &Curve25519PublicKey) -> [u8; 32] {
    *diffie_hellman(secret, public).unwrap()
}

fn ratchet_of(m: &OutgoingMessage) -> RatchetMessage {
    match m {
        OutgoingMessage::PreKey(p) => p.message.clone(),
        OutgoingMessage::Normal(r) => r.clone(),
    }
}

/// Re-derives one message from (CK, header, AD, plaintext), checks it against `produced` and
/// returns its vector entry plus the next chain key.
fn message_vector(
    name: &str,
    sender: &str,
    ck: &[u8; 32],
    x3dh_ad: &[u8],
    plaintext: &[u8],
    produced: &OutgoingMessage,
) -> (Value, [u8; 32]) {
    let (mk, next_ck) = kdf_ck(ck);
    let mut material = [0u8; 44];
    hkdf_sha256(Some(&[0u8; 32]), &mk, INFO_MESSAGE_KEYS, &mut material).unwrap();
    let r = ratchet_of(produced);
    let header = r.header.to_bytes();
    let mut ad = x3dh_ad.to_vec();
    ad.extend_from_slice(&header);
    let ct = ChaCha20Poly1305::new(Key::from_slice(&material[..32]))
        .encrypt(
            Nonce::from_slice(&material[32..]),
            Payload {
                msg: plaintext,
                aad: &ad,
            },
        )
        .unwrap();
    assert_eq!(
        ct, r.ciphertext,
        "{name}: ciphertext differs from the spec derivation"
    );
    let body = produced.to_bytes();
    let entry = json!({
        "name": name,
        "from": sender,
        "type": produced.message_type(),
        "plaintext": String::from_utf8_lossy(plaintext),
        "chain_key": hx(ck),
        "message_key": hx(mk),
        "aead_key": hx(&material[..32]),
        "aead_nonce": hx(&material[32..]),
        "header": hx(header),
        "aead_associated_data": hx(&ad),
        "ciphertext": hx(&ct),
        "body": hx(&body),
        "body_base64": hush_federation::base64::encode_unpadded(&body),
    });
    (entry, next_ck)
}

fn generate() -> Vec<(&'static str, Value)> {
    let labels = [
        "bob signed prekey private",
        "bob one-time prekey private",
        "alice signed prekey private",
        "alice ephemeral (base) private",
        "alice ratchet private 0",
        "bob ratchet private 0",
        "alice ratchet private 1",
        "bob ratchet private 1",
    ];
    let mut rng = ScriptedRng(labels.iter().map(|l| fixed(l)).collect());
    let alice_seed = fixed("alice identity seed");
    let bob_seed = fixed("bob identity seed");
    let (alice_user, alice_dev) = ("@alice:alpha.example", "ALICEDEVICE");
    let (bob_user, bob_dev) = ("@bob:beta.example", "BOBDEVICE");

    let mut bob = Account::from_identity(
        &mut rng,
        IdentityKeyPair::from_seed(&bob_seed),
        bob_user,
        bob_dev,
        NOW,
    )
    .unwrap();
    bob.generate_one_time_keys(&mut rng, 1).unwrap();
    let alice = Account::from_identity(
        &mut rng,
        IdentityKeyPair::from_seed(&alice_seed),
        alice_user,
        alice_dev,
        NOW,
    )
    .unwrap();

    // What a homeserver returns for a hush.x3dh_bundle claim.
    let fallback = bob.fallback_keys().unwrap();
    let otks = bob.one_time_keys().unwrap();
    let (spk_id, spk_obj) = fallback.iter().next().unwrap();
    let (otk_id, otk_obj) = otks.iter().next().unwrap();
    let claim_key = format!("hush.x3dh_bundle:{}", spk_id.split(':').nth(1).unwrap());
    let claim_value = json!({"signed_prekey": {spk_id.clone(): spk_obj.clone()}, "one_time_key": {otk_id.clone(): otk_obj.clone()}});
    let bob_keys_json = bob.device_keys().unwrap();
    let bob_keys = DeviceKeys::from_json(&bob_keys_json, bob_user, bob_dev).unwrap();
    let bundle = PreKeyBundle::from_claim(&bob_keys, &claim_key, &claim_value).unwrap();

    let mut a_rec = SessionRecord::new(bob_user, bob_dev);
    a_rec.promote(alice.initiate_outbound(&mut rng, &bundle, NOW).unwrap());
    let a0 = a_rec.encrypt(b"Hello Bob, this is message A0").unwrap();
    let a1 = a_rec.encrypt(b"A1 arrives before A0").unwrap();

    // Bob receives A1 first (out of order), then A0.
    let IncomingMessage::PreKey(pk1) = IncomingMessage::from_parts(0, &a1.to_bytes()).unwrap()
    else {
        panic!()
    };
    let empty = SessionRecord::new(alice_user, alice_dev);
    let inbound = bob
        .accept_inbound(&mut rng, &empty, alice_user, &pk1, NOW)
        .unwrap();
    assert_eq!(inbound.plaintext.as_slice(), b"A1 arrives before A0");
    let mut b_rec = inbound.record;
    let pt = b_rec
        .decrypt(
            &mut rng,
            &IncomingMessage::from_parts(0, &a0.to_bytes()).unwrap(),
            NOW,
        )
        .unwrap();
    assert_eq!(pt.as_slice(), b"Hello Bob, this is message A0");
    let b0 = b_rec
        .encrypt(b"Hi Alice, B0 (Bob's first DH step)")
        .unwrap();
    let pt = a_rec
        .decrypt(
            &mut rng,
            &IncomingMessage::from_parts(1, &b0.to_bytes()).unwrap(),
            NOW,
        )
        .unwrap();
    assert_eq!(pt.as_slice(), b"Hi Alice, B0 (Bob's first DH step)");
    let a2 = a_rec.encrypt(b"A2 after Alice's DH step").unwrap();
    let pt = b_rec
        .decrypt(
            &mut rng,
            &IncomingMessage::from_parts(1, &a2.to_bytes()).unwrap(),
            NOW,
        )
        .unwrap();
    assert_eq!(pt.as_slice(), b"A2 after Alice's DH step");

    // Independent derivation.
    let alice_ik = IdentityKeyPair::from_seed(&alice_seed);
    let bob_ik = IdentityKeyPair::from_seed(&bob_seed);
    let a_x = alice_ik.to_curve25519_secret();
    let b_x = bob_ik.to_curve25519_secret();
    let spk = Curve25519Secret::from_bytes(fixed(labels[0]));
    let otk = Curve25519Secret::from_bytes(fixed(labels[1]));
    let ek = Curve25519Secret::from_bytes(fixed(labels[3]));
    let ra0 = Curve25519Secret::from_bytes(fixed(labels[4]));
    let rb0 = Curve25519Secret::from_bytes(fixed(labels[5]));
    let ra1 = Curve25519Secret::from_bytes(fixed(labels[6]));
    let dh1 = dh(&a_x, &spk.public_key());
    let dh2 = dh(&ek, &b_x.public_key());
    let dh3 = dh(&ek, &spk.public_key());
    let dh4 = dh(&ek, &otk.public_key());
    assert_eq!(dh1, dh(&spk, &a_x.public_key()));
    let mut ikm = vec![0xFFu8; 32];
    for d in [&dh1, &dh2, &dh3, &dh4] {
        ikm.extend_from_slice(d);
    }
    let mut sk = [0u8; 32];
    hkdf_sha256(Some(&[0u8; 32]), &ikm, INFO_X3DH, &mut sk).unwrap();
    let (a_ik_pub, b_ik_pub) = (alice_ik.public_key(), bob_ik.public_key());
    let ad = associated_data(
        &Party {
            user_id: alice_user,
            device_id: alice_dev,
            identity_key: &a_ik_pub,
        },
        &Party {
            user_id: bob_user,
            device_id: bob_dev,
            identity_key: &b_ik_pub,
        },
    );
    let (rk1, cka0) = kdf_rk(&sk, &dh(&ra0, &spk.public_key()));
    let (rk2, ckb0) = kdf_rk(&rk1, &dh(&rb0, &ra0.public_key()));
    assert_eq!(kdf_rk(&rk1, &dh(&ra0, &rb0.public_key())).1, ckb0);
    let (rk3, cka1) = kdf_rk(&rk2, &dh(&ra1, &rb0.public_key()));

    let (v_a0, ck) = message_vector(
        "A0",
        "alice",
        &cka0,
        &ad,
        b"Hello Bob, this is message A0",
        &a0,
    );
    let (v_a1, _) = message_vector("A1", "alice", &ck, &ad, b"A1 arrives before A0", &a1);
    let (v_b0, _) = message_vector(
        "B0",
        "bob",
        &ckb0,
        &ad,
        b"Hi Alice, B0 (Bob's first DH step)",
        &b0,
    );
    let (v_a2, _) = message_vector("A2", "alice", &cka1, &ad, b"A2 after Alice's DH step", &a2);
    assert_eq!(
        ratchet_of(&a2).header,
        Header {
            ratchet_key: ra1.public_key(),
            previous_counter: 2,
            counter: 0
        }
    );
    assert_eq!(ratchet_of(&b0).header.ratchet_key, rb0.public_key());

    let party = |name: &str, user: &str, dev: &str, seed: &[u8; 32], ik: &IdentityKeyPair| {
        json!({
            "name": name, "user_id": user, "device_id": dev,
            "identity_seed": hx(seed),
            "identity_ed25519": hx(ik.public_key().to_bytes()),
            "identity_ed25519_encoded": hx(ik.public_key().encode()),
            "identity_curve25519_private": hx(*ik.to_curve25519_secret().to_bytes()),
            "identity_curve25519": hx(ik.public_key().to_curve25519().to_bytes()),
        })
    };
    let random_values: Vec<Value> = labels
        .iter()
        .map(|l| json!({"role": l, "value": hx(fixed(l))}))
        .collect();
    let x3dh = json!({
        "description": "hush.x3dh.ratchet.v1 X3DH from fixed keys. random_values are what the crate's RNG returned, in order. Bob's key objects and device keys are exactly as uploaded; bundle_claim is the keys/claim entry for algorithm hush.x3dh_bundle.",
        "random_values": random_values,
        "alice": party("alice", alice_user, alice_dev, &alice_seed, &alice_ik),
        "bob": party("bob", bob_user, bob_dev, &bob_seed, &bob_ik),
        "bob_device_keys": bob_keys_json,
        "bob_signed_prekey": {"id": spk_id, "private": hx(*spk.to_bytes()), "public": hx(spk.public_key().to_bytes())},
        "bob_one_time_key": {"id": otk_id, "private": hx(*otk.to_bytes()), "public": hx(otk.public_key().to_bytes())},
        "bundle_claim": {claim_key: claim_value},
        "alice_ephemeral": {"private": hx(*ek.to_bytes()), "public": hx(ek.public_key().to_bytes())},
        "dh1": hx(dh1), "dh2": hx(dh2), "dh3": hx(dh3), "dh4": hx(dh4),
        "kdf_salt": hx([0u8; 32]),
        "kdf_ikm": hx(&ikm),
        "kdf_info": String::from_utf8_lossy(INFO_X3DH),
        "shared_secret": hx(sk),
        "associated_data": hx(&ad),
        "prekey_message_a0": hx(a0.to_bytes()),
    });
    let ratchet = json!({
        "description": "The first Double Ratchet messages of the x3dh.json session. Delivery order: Bob receives A1 (prekey message, out of order) then A0, answers B0 (after his first DH step), Alice decrypts B0 (DH step) and sends A2 (PN = 2).",
        "alice_ratchet_0": {"private": hx(*ra0.to_bytes()), "public": hx(ra0.public_key().to_bytes())},
        "bob_ratchet_0": {"private": hx(*rb0.to_bytes()), "public": hx(rb0.public_key().to_bytes())},
        "alice_ratchet_1": {"private": hx(*ra1.to_bytes()), "public": hx(ra1.public_key().to_bytes())},
        "kdf_rk_info": String::from_utf8_lossy(INFO_RATCHET),
        "message_keys_info": String::from_utf8_lossy(INFO_MESSAGE_KEYS),
        "root_keys": {
            "rk0 (= shared_secret)": hx(sk),
            "rk1 = KDF_RK(rk0, DH(alice_ratchet_0, bob_signed_prekey))": hx(rk1),
            "rk2 = KDF_RK(rk1, DH(bob_ratchet_0, alice_ratchet_0))": hx(rk2),
            "rk3 = KDF_RK(rk2, DH(alice_ratchet_1, bob_ratchet_0))": hx(rk3),
        },
        "messages": [v_a0, v_a1, v_b0, v_a2],
    });

    // Fingerprints: one device each, and Bob with a second device.
    let bob2 = IdentityKeyPair::from_seed(&fixed("bob second device seed")).public_key();
    let fp1 = Fingerprint::new(alice_user, &[a_ik_pub], bob_user, &[b_ik_pub]).unwrap();
    let fp1_bob = Fingerprint::new(bob_user, &[b_ik_pub], alice_user, &[a_ik_pub]).unwrap();
    assert_eq!(fp1.displayable(), fp1_bob.displayable());
    assert!(fp1.matches_scanned(&fp1_bob.scannable()).unwrap());
    let fp2 = Fingerprint::new(alice_user, &[a_ik_pub], bob_user, &[bob2, b_ik_pub]).unwrap();
    let fingerprint = json!({
        "description": "Safety numbers (version 0, 5200 SHA-512 iterations). Key material of a user = concatenation of Encode(IK) of its devices sorted bytewise; stable id = user ID in UTF-8.",
        "iterations": 5200,
        "version": 0,
        "cases": [
            {
                "local_user": alice_user, "local_keys": [hx(a_ik_pub.encode())],
                "remote_user": bob_user, "remote_keys": [hx(b_ik_pub.encode())],
                "displayable": fp1.displayable(), "grouped": fp1.grouped(),
                "scannable_local": hx(fp1.scannable()), "scannable_remote": hx(fp1_bob.scannable()),
            },
            {
                "local_user": alice_user, "local_keys": [hx(a_ik_pub.encode())],
                "remote_user": bob_user, "remote_keys": [hx(b_ik_pub.encode()), hx(bob2.encode())],
                "displayable": fp2.displayable(), "grouped": fp2.grouped(),
                "scannable_local": hx(fp2.scannable()),
            },
            {
                "note": "libsignal's known answer (keys are 0x05 || X25519, ids are phone numbers)",
                "local_user": "+14152222222", "local_keys": ["0506863bc66d02b40d27b8d49ca7c09e9239236f9d7d25d6fcca5ce13c7064d868"],
                "remote_user": "+14153333333", "remote_keys": ["05f781b6fb32fed9ba1cf2de978d4d5da28dc34046ae814402b5c0dbd96fda907b"],
                "displayable": "300354477692869396892869876765458257569162576843440918079131",
            },
        ],
    });
    vec![
        ("x3dh.json", x3dh),
        ("ratchet.json", ratchet),
        ("fingerprint.json", fingerprint),
    ]
}

#[test]
fn published_test_vectors_are_current() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/test-vectors");
    let regenerate = std::env::var_os("HUSH_REGENERATE_VECTORS").is_some();
    for (name, value) in generate() {
        let text = serde_json::to_string_pretty(&value).unwrap() + "\n";
        let path = dir.join(name);
        if regenerate {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &text).unwrap();
        }
        let stored = std::fs::read_to_string(&path).unwrap_or_else(|_| {
            panic!(
                "{} missing: run with HUSH_REGENERATE_VECTORS=1",
                path.display()
            )
        });
        assert_eq!(stored, text, "{name} differs from the regenerated vectors");
    }
}

#[test]
fn libsignal_fingerprint_case_in_vectors_is_reproduced() {
    let cases = generate()
        .into_iter()
        .find(|(n, _)| *n == "fingerprint.json")
        .unwrap()
        .1;
    let c = &cases["cases"][2];
    let key = |v: &Value| hex::decode(v[0].as_str().unwrap()).unwrap();
    let fp = Fingerprint::with_parameters(
        0,
        5200,
        &key(&c["local_keys"]),
        c["local_user"].as_str().unwrap().as_bytes(),
        &key(&c["remote_keys"]),
        c["remote_user"].as_str().unwrap().as_bytes(),
    )
    .unwrap();
    assert_eq!(fp.displayable(), c["displayable"].as_str().unwrap());
}
