//! Canary: a unique plaintext and every private key of both devices never appear in the
//! server's database files or log, in the HTTP traffic (recorded by a TCP relay between the
//! clients and a plain-HTTP `hushd`), or in the clients' store files; and the stores do not
//! reveal who talks to whom: no user ID, device ID or server address in them in plaintext.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use base64::Engine;
use common::{contains, Db, Device, Recorder, Server, ServerOptions, PASSPHRASE};
use hush_client::store::Store;
use hush_client::vault::Passphrase;
use hush_crypto::encoding::Reader;

/// Every 32-byte secret of a serialized account: identity seed, signed prekeys, one-time keys.
fn account_secrets(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut r = Reader::new(bytes);
    let mut out = Vec::new();
    r.u8().unwrap();
    r.bytes16("user", 255).unwrap();
    r.bytes16("device", 255).unwrap();
    out.push(r.array::<32>().unwrap().to_vec());
    r.u32().unwrap();
    let n = r.u32().unwrap();
    for _ in 0..n {
        r.u32().unwrap();
        out.push(r.array::<32>().unwrap().to_vec());
        r.u64().unwrap();
        r.option("retired", |r| r.u64()).unwrap();
    }
    let n = r.u32().unwrap();
    for _ in 0..n {
        r.u32().unwrap();
        out.push(r.array::<32>().unwrap().to_vec());
        r.u8().unwrap();
    }
    out
}

/// The forms a secret could leak in: raw bytes, hex and base64 variants.
fn forms(secret: &[u8]) -> Vec<Vec<u8>> {
    vec![
        secret.to_vec(),
        hex::encode(secret).into_bytes(),
        STANDARD_NO_PAD.encode(secret).into_bytes(),
        STANDARD.encode(secret).into_bytes(),
        URL_SAFE_NO_PAD.encode(secret).into_bytes(),
    ]
}

async fn secrets_of(device: &Device) -> (Vec<Vec<u8>>, String, String) {
    let store = Store::open(&device.profile_dir(), &Passphrase::new(PASSPHRASE.into()))
        .await
        .unwrap();
    let login = store.login().await.unwrap().unwrap();
    let mut tx = store.begin().await.unwrap();
    let account = store
        .account(&mut tx, &login.user_id, &login.device_id)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let secrets = account_secrets(&account.to_bytes());
    assert!(
        secrets.len() > 50,
        "identity, SPK and one-time keys: {}",
        secrets.len()
    );
    store.close().await;
    (secrets, login.access_token.to_string(), login.device_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_plaintext_and_private_keys_never_leak() {
    let server = Server::start(ServerOptions {
        ca: None,
        db: Db::Sqlite,
        ip: "127.0.0.1",
        extra: String::new(),
    });
    let relay = Recorder::start(&server.name);
    let data = tempfile::tempdir().unwrap();
    // Clients talk to the relay; the server name stays the real one.
    let mut alice = Device::register(data.path(), "alice", &server, None, "alice");
    let mut bob = Device::register(data.path(), "bob", &server, None, "bob");
    // Registration went straight to the server; from here every request passes the relay.
    for d in [&mut alice, &mut bob] {
        d.server = relay.url.clone();
        let store = Store::open(&d.profile_dir(), &Passphrase::new(PASSPHRASE.into()))
            .await
            .unwrap();
        let mut login = store.login().await.unwrap().unwrap();
        login.server_url = relay.url.clone();
        let mut tx = store.begin().await.unwrap();
        store.save_login(&mut tx, &login).await.unwrap();
        tx.commit().await.unwrap();
        store.close().await;
    }

    let canary = format!(
        "CANARY-{}-plaintext",
        hex::encode(rand::random::<[u8; 12]>())
    );
    alice.send(&bob, &canary).ok();
    let got = bob.receive();
    assert_eq!(Device::bodies(&got), vec![canary.clone()]);
    let reply = format!("{canary}-reply");
    bob.send(&alice, &reply).ok();
    assert_eq!(Device::bodies(&alice.receive()), vec![reply.clone()]);
    // The store decrypts the history (so the plaintext really is in there, encrypted).
    let h = alice.run(&["history", &bob.user_id, "--json"]).ok();
    assert!(h.stdout.contains(&canary));

    let (alice_keys, alice_token, alice_device) = secrets_of(&alice).await;
    let (bob_keys, bob_token, bob_device) = secrets_of(&bob).await;
    let traffic = relay.bytes.lock().unwrap().clone();
    assert!(
        contains(&traffic, b"sendToDevice"),
        "the relay saw the traffic"
    );

    let mut places: Vec<(String, Vec<u8>)> = vec![("HTTP traffic".into(), traffic)];
    for f in server.files() {
        places.push((f.display().to_string(), std::fs::read(&f).unwrap()));
    }
    for d in [&alice, &bob] {
        for f in d.store_files() {
            places.push((f.display().to_string(), std::fs::read(&f).unwrap()));
        }
    }
    assert!(
        places.len() >= 5,
        "{:?}",
        places.iter().map(|p| &p.0).collect::<Vec<_>>()
    );
    let mut needles: Vec<(String, Vec<u8>)> = vec![
        ("canary".into(), canary.clone().into_bytes()),
        ("reply".into(), reply.into_bytes()),
    ];
    for (i, k) in alice_keys.iter().chain(bob_keys.iter()).enumerate() {
        for (j, f) in forms(k).into_iter().enumerate() {
            needles.push((format!("private key {i} form {j}"), f));
        }
    }
    // Local metadata: the stores name no user, device or server in plaintext.
    let metadata: Vec<(&str, Vec<u8>)> = vec![
        ("alice's user ID", alice.user_id.clone().into_bytes()),
        ("bob's user ID", bob.user_id.clone().into_bytes()),
        ("alice's device ID", alice_device.into_bytes()),
        ("bob's device ID", bob_device.into_bytes()),
        ("the server address", server.name.clone().into_bytes()),
        ("the relay address", relay.url.clone().into_bytes()),
    ];
    for (name, bytes) in places.iter().filter(|(n, _)| n != "HTTP traffic") {
        if server
            .files()
            .iter()
            .any(|f| &f.display().to_string() == name)
        {
            continue;
        }
        for (what, needle) in &metadata {
            assert!(!contains(bytes, needle), "{what} found in {name}");
        }
    }
    for (name, bytes) in &places {
        for (what, needle) in &needles {
            assert!(!contains(bytes, needle), "{what} found in {name}");
        }
        // Access tokens travel in headers, but are never stored in plaintext anywhere.
        if name != "HTTP traffic" {
            for t in [&alice_token, &bob_token] {
                assert!(
                    !contains(bytes, t.as_bytes()),
                    "access token found in {name}"
                );
            }
        }
    }
}
