//! Criterion benchmarks: X3DH initiation and response, encrypt+decrypt of a 100-byte message,
//! a DH ratchet step, and the state serialization round trip.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use hush_crypto::session_record::IncomingMessage;
use hush_crypto::{Account, DeviceKeys, OutgoingMessage, PreKeyBundle, SessionRecord};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::json;

const NOW: u64 = 1_800_000_000;

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

struct Pair {
    rng: StdRng,
    alice: SessionRecord,
    bob: SessionRecord,
}

fn setup() -> (Account, Account, PreKeyBundle, StdRng) {
    let mut rng = StdRng::seed_from_u64(7);
    let alice = Account::new(&mut rng, "@alice:alpha.example", "ALICE1", NOW).unwrap();
    let mut bob = Account::new(&mut rng, "@bob:beta.example", "BOB1", NOW).unwrap();
    bob.generate_one_time_keys(&mut rng, 1).unwrap();
    let b = bundle(&bob);
    (alice, bob, b, rng)
}

fn established() -> Pair {
    let (alice, bob, b, mut rng) = setup();
    let mut a_rec = SessionRecord::new(bob.user_id(), bob.device_id());
    a_rec.promote(alice.initiate_outbound(&mut rng, &b, NOW).unwrap());
    let first = a_rec.encrypt(b"hello").unwrap();
    let IncomingMessage::PreKey(pk) = incoming(&first) else {
        unreachable!()
    };
    let empty = SessionRecord::new(alice.user_id(), alice.device_id());
    let mut b_rec = bob
        .accept_inbound(&mut rng, &empty, alice.user_id(), &pk, NOW)
        .unwrap()
        .record;
    let reply = b_rec.encrypt(b"hi").unwrap();
    a_rec.decrypt(&mut rng, &incoming(&reply), NOW).unwrap();
    Pair {
        rng,
        alice: a_rec,
        bob: b_rec,
    }
}

fn x3dh(c: &mut Criterion) {
    let (alice, bob, b, mut rng) = setup();
    c.bench_function(
        "x3dh_initiate (verified bundle, 4 DH + ratchet init)",
        |bench| bench.iter(|| black_box(alice.initiate_outbound(&mut rng, &b, NOW).unwrap())),
    );
    c.bench_function("x3dh_initiate_with_bundle_verification", |bench| {
        let keys = DeviceKeys::from_json(&bob.device_keys().unwrap(), bob.user_id(), bob.device_id()).unwrap();
        let fallback = bob.fallback_keys().unwrap();
        let otks = bob.one_time_keys().unwrap();
        let (spk_id, spk) = fallback.iter().next().unwrap();
        let (otk_id, otk) = otks.iter().next().unwrap();
        let value = json!({"signed_prekey": {spk_id.clone(): spk.clone()}, "one_time_key": {otk_id.clone(): otk.clone()}});
        let claim = format!("hush.x3dh_bundle:{}", spk_id.split(':').nth(1).unwrap());
        bench.iter(|| {
            let b = PreKeyBundle::from_claim(&keys, &claim, &value).unwrap();
            black_box(alice.initiate_outbound(&mut rng, &b, NOW).unwrap())
        })
    });
    let empty = SessionRecord::new(alice.user_id(), alice.device_id());
    c.bench_function(
        "x3dh_respond (accept_inbound incl. first decrypt)",
        |bench| {
            bench.iter_batched(
                || {
                    let mut s = alice.initiate_outbound(&mut rng, &b, NOW).unwrap();
                    let IncomingMessage::PreKey(pk) =
                        incoming(&s.encrypt(b"first message").unwrap())
                    else {
                        unreachable!()
                    };
                    pk
                },
                |pk| {
                    black_box(
                        bob.accept_inbound(
                            &mut StdRng::seed_from_u64(1),
                            &empty,
                            alice.user_id(),
                            &pk,
                            NOW,
                        )
                        .unwrap(),
                    )
                },
                BatchSize::SmallInput,
            )
        },
    );
}

fn messages(c: &mut Criterion) {
    let mut pair = established();
    let plaintext = [0x61u8; 100];
    let mut group = c.benchmark_group("ratchet");
    group.throughput(Throughput::Elements(1));
    group.bench_function("encrypt_decrypt_100_bytes (same chain)", |bench| {
        bench.iter(|| {
            let m = pair.alice.encrypt(&plaintext).unwrap();
            let IncomingMessage::Normal(r) = incoming(&m) else {
                unreachable!()
            };
            black_box(
                pair.bob
                    .decrypt(&mut pair.rng, &IncomingMessage::Normal(r), NOW)
                    .unwrap(),
            )
        })
    });
    group.bench_function(
        "dh_ratchet_step (ping-pong: each decrypt ratchets)",
        |bench| {
            let mut flip = false;
            bench.iter(|| {
                let (s, r) = if flip {
                    (&mut pair.bob, &mut pair.alice)
                } else {
                    (&mut pair.alice, &mut pair.bob)
                };
                flip = !flip;
                let m = s.encrypt(&plaintext).unwrap();
                black_box(r.decrypt(&mut pair.rng, &incoming(&m), NOW).unwrap())
            })
        },
    );
    group.finish();
    let pair = established();
    c.bench_function("session_record_serialize_round_trip", |bench| {
        bench.iter(|| black_box(SessionRecord::from_bytes(&pair.alice.to_bytes()).unwrap()))
    });
    let key = hush_crypto::PickleKey::new([5; 32]);
    let mut rng = StdRng::seed_from_u64(3);
    c.bench_function("session_record_sealed_round_trip", |bench| {
        bench.iter(|| {
            let blob = pair.alice.seal(&mut rng, &key);
            black_box(SessionRecord::open(&key, "@bob:beta.example", "BOB1", &blob).unwrap())
        })
    });
}

/// Primitive baselines measured under the same machine load, to put the protocol figures in
/// proportion (an X3DH initiation is about 7 X25519 operations plus 2 signature checks).
fn baselines(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(9);
    let a = hush_crypto::Curve25519Secret::generate(&mut rng);
    let b = hush_crypto::Curve25519Secret::generate(&mut rng).public_key();
    c.bench_function("baseline_x25519_dh", |bench| {
        bench.iter(|| black_box(hush_crypto::keys::diffie_hellman(&a, &b).unwrap()))
    });
    let ck = hush_crypto::ratchet::ChainKey::new(zeroize::Zeroizing::new([1; 32]), 0);
    c.bench_function("baseline_message_key_seal_100_bytes", |bench| {
        bench.iter(|| black_box(ck.message_key().encrypt(&[0x61; 100], b"ad")))
    });
}

criterion_group!(benches, baselines, x3dh, messages);
criterion_main!(benches);
