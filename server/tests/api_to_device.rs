//! To-device messaging and `/sync` over real HTTP against a real `hushd` (SQLite and
//! PostgreSQL): delivery shape, `*` expansion, txnId idempotency, limits, redelivery until
//! acknowledged, batching, long-poll wake-ups, exactly-once delivery with 16 concurrent senders,
//! and a `kill -9` in the middle of sending.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{otk, Client, Options, TestServer};
use reqwest::StatusCode;
use serde_json::{json, Value};

const V3: &str = "/_matrix/client/v3";

fn events(sync: &Value) -> Vec<Value> {
    sync["to_device"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Syncs until `want` events arrived in total (acknowledging as it goes); returns them.
async fn drain(c: &Client, mut since: Option<String>, want: usize) -> (Vec<Value>, String) {
    let mut got = Vec::new();
    loop {
        let sync = c.sync(since.as_deref(), 10_000).await;
        got.extend(events(&sync));
        since = Some(sync["next_batch"].as_str().expect("next_batch").to_owned());
        if got.len() >= want {
            // One more to acknowledge, and to prove nothing extra is pending.
            let last = c.sync(since.as_deref(), 0).await;
            got.extend(events(&last));
            let token = last["next_batch"].as_str().expect("next_batch").to_owned();
            return (got, token);
        }
    }
}

both_backends!(send_and_receive, |backend| async move {
    let s = TestServer::start(backend).await;
    let a = s.register("alice", "pw").await;
    let b = s.register("bob", "pw").await;
    let initial = b.sync(None, 0).await;
    for key in [
        "rooms",
        "presence",
        "account_data",
        "to_device",
        "device_lists",
    ] {
        assert!(initial[key].is_object(), "{key} missing: {initial}");
    }
    assert_eq!(
        initial["device_one_time_keys_count"]["signed_curve25519"],
        0
    );
    assert!(initial["device_unused_fallback_key_types"].is_array());
    let since = initial["next_batch"]
        .as_str()
        .expect("next_batch")
        .to_owned();
    a.send_to_device(
        "m.room.encrypted",
        "t1",
        json!({b.user_id.clone(): {b.device_id.clone(): {"body": "hi"}}}),
    )
    .await;
    let sync = b.sync(Some(&since), 10_000).await;
    assert_eq!(
        events(&sync),
        vec![json!({"sender": a.user_id, "type": "m.room.encrypted", "content": {"body": "hi"}})]
    );
    // Filters and presence parameters are accepted and ignored; bad since/timeout are 400.
    let (status, _) = b
        .get(&format!(
            "{V3}/sync?filter=%7B%7D&set_presence=offline&full_state=false"
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = b.get(&format!("{V3}/sync?since=garbage")).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (StatusCode::BAD_REQUEST, Some("M_INVALID_PARAM"))
    );
    let (status, body) = b.get(&format!("{V3}/sync?timeout=-5")).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (StatusCode::BAD_REQUEST, Some("M_INVALID_PARAM"))
    );
});

both_backends!(
    wildcard_includes_senders_own_devices,
    |backend| async move {
        let s = TestServer::start(backend).await;
        let a1 = s.register("alice", "pw").await;
        let a2 = s.login("alice", "pw", None).await;
        let b1 = s.register("bob", "pw").await;
        let b2 = s.login("bob", "pw", None).await;
        a1.send_to_device(
            "m.test",
            "w1",
            json!({a1.user_id.clone(): {"*": {"n": 1}}, b1.user_id.clone(): {"*": {"n": 2}}}),
        )
        .await;
        for (c, n) in [(&a1, 1), (&a2, 1), (&b1, 2), (&b2, 2)] {
            let got = events(&c.sync(None, 0).await);
            assert_eq!(got.len(), 1, "{}: {got:?}", c.device_id);
            assert_eq!(got[0]["content"]["n"], n);
        }
    }
);

both_backends!(txn_ids_are_idempotent_per_device, |backend| async move {
    let s = TestServer::start(backend).await;
    let a1 = s.register("alice", "pw").await;
    let a2 = s.login("alice", "pw", None).await;
    let b = s.register("bob", "pw").await;
    let msg = |n: u32| json!({b.user_id.clone(): {b.device_id.clone(): {"n": n}}});
    a1.send_to_device("m.test", "same", msg(1)).await;
    a1.send_to_device("m.test", "same", msg(1)).await; // replay: nothing new
    a2.send_to_device("m.test", "same", msg(2)).await; // other device: distinct
    a1.send_to_device("m.other", "same", msg(3)).await; // other endpoint: distinct
    let (got, _) = drain(&b, None, 3).await;
    let ns: Vec<u64> = got
        .iter()
        .filter_map(|e| e["content"]["n"].as_u64())
        .collect();
    assert_eq!(ns.len(), 3, "{got:?}");
    assert_eq!(ns.iter().collect::<HashSet<_>>().len(), 3);
    let (status, body) = a1
        .put(
            &format!("{V3}/sendToDevice/m.test/bad%20txn"),
            json!({"messages": {}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
});

both_backends!(limits_are_enforced, |backend| async move {
    let s = TestServer::start_with(
        backend,
        Options {
            limits: vec![
                "max_messages_per_request = 3".into(),
                "max_mailbox_per_device = 4".into(),
            ],
            ..Options::default()
        },
    )
    .await;
    let a = s.register("alice", "pw").await;
    let b = s.register("bob", "pw").await;
    let mut four = serde_json::Map::new();
    for d in ["D1", "D2", "D3", "D4"] {
        four.insert(d.into(), json!({}));
    }
    let (status, body) = a
        .put(
            &format!("{V3}/sendToDevice/m.test/many"),
            json!({"messages": {b.user_id.clone(): four}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"].as_str().unwrap_or("").contains('3'), "{body}");
    // Mailbox cap: four fit, the fifth is refused with a retryable 429.
    for i in 0..4 {
        a.send_to_device(
            "m.test",
            &format!("m{i}"),
            json!({b.user_id.clone(): {b.device_id.clone(): {"i": i}}}),
        )
        .await;
    }
    let (status, body) = a
        .put(
            &format!("{V3}/sendToDevice/m.test/m4"),
            json!({"messages": {b.user_id.clone(): {b.device_id.clone(): {"i": 4}}}}),
        )
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["errcode"], "M_LIMIT_EXCEEDED");
    assert!(body["retry_after_ms"].is_u64());
    // After the recipient drains, the same txnId goes through.
    let (got, _) = drain(&b, None, 4).await;
    assert_eq!(got.len(), 4);
    a.send_to_device(
        "m.test",
        "m4",
        json!({b.user_id.clone(): {b.device_id.clone(): {"i": 4}}}),
    )
    .await;
});

both_backends!(
    redelivery_until_acknowledged_and_batching,
    |backend| async move {
        let s = TestServer::start_with(
            backend,
            Options {
                limits: vec!["sync_batch = 5".into()],
                ..Options::default()
            },
        )
        .await;
        let a = s.register("alice", "pw").await;
        let b = s.register("bob", "pw").await;
        let start = b.sync(None, 0).await["next_batch"]
            .as_str()
            .expect("nb")
            .to_owned();
        for i in 0..12 {
            a.send_to_device(
                "m.test",
                &format!("r{i}"),
                json!({b.user_id.clone(): {b.device_id.clone(): {"i": i}}}),
            )
            .await;
        }
        // A long timeout still returns at once because messages are pending; at most 5 per answer.
        let first = b.sync(Some(&start), 60_000).await;
        let got: Vec<u64> = events(&first)
            .iter()
            .filter_map(|e| e["content"]["i"].as_u64())
            .collect();
        assert_eq!(got, vec![0, 1, 2, 3, 4]);
        // Repeating the same since redelivers the same batch (nothing was acknowledged).
        let again = b.sync(Some(&start), 0).await;
        assert_eq!(events(&again), events(&first));
        // Moving on acknowledges; the rest arrive in order, nothing twice.
        let mut since = first["next_batch"].as_str().expect("nb").to_owned();
        let mut rest = Vec::new();
        while rest.len() < 7 {
            let sync = b.sync(Some(&since), 0).await;
            rest.extend(
                events(&sync)
                    .iter()
                    .filter_map(|e| e["content"]["i"].as_u64()),
            );
            since = sync["next_batch"].as_str().expect("nb").to_owned();
        }
        assert_eq!(rest, (5..12).collect::<Vec<u64>>());
        // Going back to an acknowledged position does not resurrect deleted messages.
        let old = b
            .sync(Some(first["next_batch"].as_str().expect("nb")), 0)
            .await;
        let old_ids: Vec<u64> = events(&old)
            .iter()
            .filter_map(|e| e["content"]["i"].as_u64())
            .collect();
        assert!(old_ids.iter().all(|i| *i >= 5), "{old_ids:?}");
    }
);

both_backends!(
    long_poll_wakes_on_send_claim_and_device_change,
    |backend| async move {
        let s = TestServer::start(backend).await;
        let a = s.register("alice", "pw").await;
        let b = s.register("bob", "pw").await;
        let since = b.sync(None, 0).await["next_batch"]
            .as_str()
            .expect("nb")
            .to_owned();
        const TIMEOUT_MS: u64 = 60_000;

        // A message wakes the waiting sync long before its timeout.
        let waiter = {
            let (b, since) = (b.clone(), since.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let sync = b.sync(Some(&since), TIMEOUT_MS).await;
                (sync, started.elapsed())
            })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        a.send_to_device(
            "m.test",
            "wake",
            json!({b.user_id.clone(): {b.device_id.clone(): {"x": 1}}}),
        )
        .await;
        let (sync, elapsed) = waiter.await.expect("waiter");
        assert_eq!(events(&sync).len(), 1, "{sync}");
        assert!(
            elapsed < Duration::from_millis(TIMEOUT_MS),
            "returned by wake-up, not timeout"
        );
        let since = sync["next_batch"].as_str().expect("nb").to_owned();

        // A claim of one of bob's keys wakes bob with the new count.
        b.post(
            &format!("{V3}/keys/upload"),
            json!({"one_time_keys": {"signed_curve25519:K": otk("k")}}),
        )
        .await;
        let waiter = {
            let (b, since) = (b.clone(), since.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                (b.sync(Some(&since), TIMEOUT_MS).await, started.elapsed())
            })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (status, _) = a
        .post(&format!("{V3}/keys/claim"), json!({"one_time_keys": {b.user_id.clone(): {b.device_id.clone(): "signed_curve25519"}}}))
        .await;
        assert_eq!(status, StatusCode::OK);
        let (sync, elapsed) = waiter.await.expect("waiter");
        assert!(elapsed < Duration::from_millis(TIMEOUT_MS));
        assert_eq!(
            sync["device_one_time_keys_count"]["signed_curve25519"], 0,
            "{sync}"
        );
        let since = sync["next_batch"].as_str().expect("nb").to_owned();

        // Bob's own new device is a device-list change for bob.
        let waiter = {
            let (b, since) = (b.clone(), since.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                (b.sync(Some(&since), TIMEOUT_MS).await, started.elapsed())
            })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _b2 = s.login("bob", "pw", None).await;
        let (sync, elapsed) = waiter.await.expect("waiter");
        assert!(elapsed < Duration::from_millis(TIMEOUT_MS));
        let changed = sync["device_lists"]["changed"].as_array().expect("changed");
        assert!(changed.contains(&json!(b.user_id)), "{sync}");
    }
);

both_backends!(
    sixteen_concurrent_senders_exactly_once,
    |backend| async move {
        let s = TestServer::start(backend).await;
        let r = s.register("receiver", "pw").await;
        const SENDERS: usize = 16;
        const EACH: usize = 25;
        let mut senders = Vec::new();
        for i in 0..SENDERS {
            senders.push(s.register(&format!("sender{i}"), "pw").await);
        }
        let mut tasks = Vec::new();
        for (i, c) in senders.into_iter().enumerate() {
            let (user, device) = (r.user_id.clone(), r.device_id.clone());
            tasks.push(tokio::spawn(async move {
                for n in 0..EACH {
                    let msg = json!({user.clone(): {device.clone(): {"s": i, "n": n}}});
                    c.send_to_device("m.test", &format!("tx{n}"), msg.clone())
                        .await;
                    if n % 5 == 0 {
                        // A client retry of the same transaction must not duplicate.
                        c.send_to_device("m.test", &format!("tx{n}"), msg).await;
                    }
                }
            }));
        }
        for t in tasks {
            t.await.expect("sender");
        }
        let (got, _) = drain(&r, None, SENDERS * EACH).await;
        let ids: Vec<(u64, u64)> = got
            .iter()
            .map(|e| {
                (
                    e["content"]["s"].as_u64().expect("s"),
                    e["content"]["n"].as_u64().expect("n"),
                )
            })
            .collect();
        let unique: HashSet<_> = ids.iter().collect();
        assert_eq!(ids.len(), SENDERS * EACH, "no duplicates, nothing missing");
        assert_eq!(unique.len(), SENDERS * EACH);
        // Per sender, arrival order is send order.
        let mut per_sender: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for (snd, n) in ids {
            per_sender.entry(snd).or_default().push(n);
        }
        for ns in per_sender.values() {
            assert!(ns.windows(2).all(|w| w[0] < w[1]), "{ns:?}");
        }
    }
);

both_backends!(kill_dash_nine_while_sending, |backend| async move {
    let mut s = TestServer::start(backend).await;
    let r = s.register("receiver", "pw").await;
    const SENDERS: usize = 4;
    let mut senders = Vec::new();
    for i in 0..SENDERS {
        senders.push(s.register(&format!("sender{i}"), "pw").await);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (i, c) in senders.into_iter().enumerate() {
        let (user, device, stop) = (r.user_id.clone(), r.device_id.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let resp = c
                    .try_call(
                        reqwest::Method::PUT,
                        &format!("{V3}/sendToDevice/m.test/k{n}"),
                        json!({"messages": {user.clone(): {device.clone(): {"s": i, "n": n}}}}),
                    )
                    .await;
                match resp {
                    Some(StatusCode::OK) => acked.push(n),
                    _ => break, // The server is gone; stop sending.
                }
                n += 1;
            }
            acked
        }));
    }
    // Let some messages through, then crash the server mid-stream.
    tokio::time::sleep(Duration::from_millis(700)).await;
    s.kill9();
    stop.store(true, Ordering::Relaxed);
    let mut acked: HashSet<(u64, u64)> = HashSet::new();
    for (i, t) in tasks.into_iter().enumerate() {
        for n in t.await.expect("sender") {
            acked.insert((i as u64, n));
        }
    }
    assert!(
        !acked.is_empty(),
        "some sends must have succeeded before the kill"
    );
    s.restart().await;
    // Drain everything that is there (some unacknowledged sends may also have committed).
    let mut since: Option<String> = None;
    let mut got = Vec::new();
    loop {
        let sync = r.sync(since.as_deref(), 0).await;
        let batch = events(&sync);
        since = Some(sync["next_batch"].as_str().expect("nb").to_owned());
        if batch.is_empty() {
            break;
        }
        got.extend(batch);
    }
    let ids: Vec<(u64, u64)> = got
        .iter()
        .map(|e| {
            (
                e["content"]["s"].as_u64().expect("s"),
                e["content"]["n"].as_u64().expect("n"),
            )
        })
        .collect();
    let unique: HashSet<(u64, u64)> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "no message delivered twice");
    let missing: Vec<_> = acked.difference(&unique).collect();
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
});

both_backends!(
    remote_targets_become_one_edu_per_destination,
    |backend| async move {
        let s = TestServer::start(backend).await;
        let a = s.register("alice", "pw").await;
        let b = s.register("bob", "pw").await;
        a.send_to_device(
            "m.room.encrypted",
            "fed1",
            json!({
                "@x:one.example": {"XDEV": {"n": 1}},
                "@y:one.example": {"*": {"n": 2}},
                "@z:two.example:8448": {"ZDEV": {"n": 3}},
                b.user_id.clone(): {b.device_id.clone(): {"n": 4}},
            }),
        )
        .await;
        // The replay stores nothing more.
        a.send_to_device(
            "m.room.encrypted",
            "fed1",
            json!({"@x:one.example": {"XDEV": {"n": 1}}}),
        )
        .await;
        let store = hush_server::store::Store::connect(s.database_url())
            .await
            .expect("store");
        let one = store.outbound_peek("one.example", 10).await.expect("peek");
        assert_eq!(one.len(), 1, "one EDU for both users of one.example");
        let edu = &one[0].1;
        assert_eq!(edu.edu_type, "m.direct_to_device");
        let content: Value = serde_json::from_str(&edu.content).expect("json");
        assert_eq!(content["sender"], a.user_id.as_str());
        assert_eq!(content["type"], "m.room.encrypted");
        assert_eq!(content["message_id"].as_str().map(str::len), Some(16));
        assert_eq!(
            content["messages"]["@x:one.example"]["XDEV"],
            json!({"n": 1})
        );
        assert_eq!(
            content["messages"]["@y:one.example"]["*"],
            json!({"n": 2}),
            "`*` expands remotely"
        );
        let two = store
            .outbound_peek("two.example:8448", 10)
            .await
            .expect("peek");
        assert_eq!(two.len(), 1);
        // The local recipient got its message in the same request.
        let got = events(&b.sync(None, 0).await);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0]["content"]["n"], 4);
    }
);
