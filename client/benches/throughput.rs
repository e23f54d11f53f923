//! End-to-end throughput between two clients on two federated homeservers: Alice (on alpha)
//! sends N messages to Bob (on beta); Bob syncs, decrypts and stores them. Every ratchet step
//! and every plaintext goes through the encrypted client store on disk.
//!
//! Run: `cargo bench -p hush-client --bench throughput` (HUSHD_BIN selects the server binary,
//! else a release `hushd` is built; HUSH_BENCH_MESSAGES the count, default 2000;
//! HUSH_BENCH_WINDOW the requests in flight). Alice sends in calls of 200 messages to
//! `Client::send_many`, which packs them into batches (one request per batch).
//! Prints three figures: concurrent send+receive, send only, and receive (drain) only.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{federation_section, Db, Device, Server, ServerOptions, TestCa};
use hush_client::engine::Client;

async fn drain(bob: &Client, n: usize) -> usize {
    let mut got = 0;
    let deadline = Instant::now() + Duration::from_secs(300);
    while got < n && Instant::now() < deadline {
        got += bob.sync_once(5_000).await.unwrap().messages.len();
    }
    got
}

fn main() {
    let n: usize = std::env::var("HUSH_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let window: usize = std::env::var("HUSH_BENCH_WINDOW")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16);
    let ca = TestCa::new();
    let alpha = Server::start(ServerOptions {
        ca: Some(&ca),
        db: Db::Sqlite,
        ip: "127.0.0.1",
        extra: federation_section(&ca),
    });
    let beta = Server::start(ServerOptions {
        ca: Some(&ca),
        db: Db::Sqlite,
        ip: "127.0.0.2",
        extra: federation_section(&ca),
    });
    let data = tempfile::tempdir().unwrap();
    let alice_d = Device::register(data.path(), "alice", &alpha, Some(&ca), "alice");
    let bob_d = Device::register(data.path(), "bob", &beta, Some(&ca), "bob");
    // Establish the session and Bob's answer so both ratchets are running.
    alice_d.send(&bob_d, "warm-up").ok();
    assert_eq!(Device::bodies(&bob_d.receive_n(1, 60)).len(), 1);
    bob_d.send(&alice_d, "warm-up reply").ok();
    assert_eq!(Device::bodies(&alice_d.receive_n(1, 60)).len(), 1);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let alice = Arc::new(alice_d.open_client().await);
        let bob = Arc::new(bob_d.open_client().await);
        let peer = bob_d.user_id.clone();
        let texts: Vec<String> = (0..n).map(|i| format!("benchmark message {i:06} {}", "x".repeat(64))).collect();

        // 1. Concurrent: Alice sends while Bob syncs; time until Bob stored the last one.
        let start = Instant::now();
        let sender = {
            let alice = Arc::clone(&alice);
            let texts = texts.clone();
            let peer = peer.clone();
            tokio::spawn(async move {
                for chunk in texts.chunks(200) {
                    alice.send_many(&peer, chunk, window).await.unwrap();
                }
                Instant::now()
            })
        };
        let got = drain(&bob, n).await;
        let e2e = start.elapsed();
        let sent_at = sender.await.unwrap();
        assert_eq!(got, n, "Bob received everything");
        println!(
            "end to end (send + federate + sync + decrypt + store), {n} messages: {:.2} s = {:.0} msg/s (sending alone finished after {:.2} s)",
            e2e.as_secs_f64(),
            n as f64 / e2e.as_secs_f64(),
            (sent_at - start).as_secs_f64()
        );

        // 2. Send only (Bob offline), then 3. Bob drains the backlog.
        let start = Instant::now();
        for chunk in texts.chunks(200) {
            alice.send_many(&peer, chunk, window).await.unwrap();
        }
        let send = start.elapsed();
        println!("send only: {:.0} msg/s", n as f64 / send.as_secs_f64());
        // Let federation deliver everything to beta before timing the drain.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let start = Instant::now();
        let got = drain(&bob, n).await;
        let recv = start.elapsed();
        assert_eq!(got, n);
        println!("receive only (sync + decrypt + store): {:.0} msg/s", n as f64 / recv.as_secs_f64());
    });
}
