//! Costs on the federation hot path: canonical JSON of a full transaction (100 to-device EDUs),
//! signing and verifying its X-Matrix header, and parsing the header.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hush_federation::canonical::to_canonical_bytes;
use hush_federation::ids::{ServerName, UserId};
use hush_federation::keys::ServerSigningKey;
use hush_federation::wire::{
    DeviceTarget, DirectToDeviceContent, Edu, Transaction, MAX_EDUS_PER_TRANSACTION,
};
use hush_federation::xmatrix::{sign_request, XMatrixAuth};
use serde_json::{json, Value};

fn full_transaction() -> Value {
    let origin = ServerName::parse("a.example").unwrap();
    let edus = (0..MAX_EDUS_PER_TRANSACTION)
        .map(|i| {
            let content = DirectToDeviceContent {
                sender: UserId::parse(&format!("@sender{i}:a.example")).unwrap(),
                event_type: "m.room.encrypted".into(),
                message_id: format!("msg{i:08}"),
                messages: BTreeMap::from([(
                    UserId::parse(&format!("@user{i}:b.example")).unwrap(),
                    BTreeMap::from([(
                        DeviceTarget::AllDevices,
                        json!({"algorithm": "m.olm.v1.curve25519-aes-sha2", "sender_key": "k".repeat(43),
                               "ciphertext": {"k".repeat(43): {"type": 1, "body": "c".repeat(400)}}}),
                    )]),
                )]),
            };
            Edu::direct_to_device(&content).unwrap()
        })
        .collect();
    serde_json::to_value(Transaction::new(origin, 1_700_000_000_000, edus)).unwrap()
}

fn benches(c: &mut Criterion) {
    let key = ServerSigningKey::from_seed("a_1", &[1u8; 32]).unwrap();
    let origin = ServerName::parse("a.example").unwrap();
    let destination = ServerName::parse("b.example").unwrap();
    let body = full_transaction();
    let uri = "/_matrix/federation/v1/send/1700000000000";

    let mut group = c.benchmark_group("transaction_100_edus");
    group.throughput(Throughput::Elements(MAX_EDUS_PER_TRANSACTION as u64));
    group.bench_function("canonical_json", |b| {
        b.iter(|| to_canonical_bytes(&body).unwrap())
    });
    group.bench_function("xmatrix_sign", |b| {
        b.iter(|| sign_request(&key, &origin, &destination, "PUT", uri, Some(&body)).unwrap())
    });
    let header = sign_request(&key, &origin, &destination, "PUT", uri, Some(&body))
        .unwrap()
        .to_header_value();
    let verifying_key = key.verifying_key();
    group.bench_function("xmatrix_parse_and_verify", |b| {
        b.iter(|| {
            XMatrixAuth::parse(&header)
                .unwrap()
                .verify("PUT", uri, Some(&body), &destination, &verifying_key)
                .unwrap()
        })
    });
    group.finish();

    c.bench_function("xmatrix_parse_header", |b| {
        b.iter(|| XMatrixAuth::parse(&header).unwrap())
    });
}

criterion_group!(signing, benches);
criterion_main!(signing);
