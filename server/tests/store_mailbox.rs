//! Store tests: to-device mailboxes (group commit, positions, acknowledgement, redelivery),
//! the outbound federation queue and retention. Every test runs on SQLite and on PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common_db;

use std::collections::BTreeSet;
use std::time::Duration;

use common_db::claim;
use hush_server::store::{
    DestinationRow, KeyUpload, OutboundEdu, SendOutcome, SendRequest, Store, ToDeviceMessage,
    TxnKey, Wakeup,
};

store_tests!(
    positions_ack_fetch_and_redelivery,
    group_commit_outcomes,
    mailbox_full_request_writes_nothing,
    batches_without_conflicts_and_late_conflicts,
    concurrent_committers_exactly_once_in_order,
    outbound_queue,
    prune_enforces_ttls,
    wakeups_follow_commits,
    many_recipients_in_one_batch,
    cancelled_commits_leave_store_usable,
    concurrent_acknowledgements,
);

const ALICE: &str = "@alice:hs.test";
const BOB: &str = "@bob:hs.test";

async fn user_with_devices(store: &Store, user: &str, devices: &[&str], now: i64) {
    store.create_user(user, None, None, now).await.unwrap();
    for device in devices {
        let token = format!("{user}/{device}");
        store
            .login_device(user, device, None, token.as_bytes(), now)
            .await
            .unwrap();
    }
}

fn txn(sender: &str, id: &str) -> TxnKey {
    TxnKey {
        user_id: sender.into(),
        device_id: "SENDER".into(),
        endpoint: "sendToDevice/m.test".into(),
        txn_id: id.into(),
    }
}

fn msg(user: &str, device: &str, sender: &str, body: &str) -> ToDeviceMessage {
    ToDeviceMessage {
        user_id: user.into(),
        device_id: device.into(),
        sender: sender.into(),
        event_type: "m.test".into(),
        content: format!(r#"{{"body":"{body}"}}"#),
    }
}

fn request(txn_id: &str, local: Vec<ToDeviceMessage>, remote: Vec<OutboundEdu>) -> SendRequest {
    SendRequest {
        txn: txn(BOB, txn_id),
        local,
        remote,
    }
}

fn edu(destination: &str, n: i64) -> OutboundEdu {
    OutboundEdu {
        destination: destination.into(),
        edu_type: "m.direct_to_device".into(),
        content: format!(r#"{{"n":{n}}}"#),
    }
}

fn body(content: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(content).unwrap();
    v["body"].as_str().unwrap().to_owned()
}

async fn positions_ack_fetch_and_redelivery(store: Store) {
    user_with_devices(&store, ALICE, &["D", "OTHER"], 1_000).await;
    let start = store.inbox_last_pos(ALICE, "D").await.unwrap().unwrap();
    assert_eq!(store.inbox_last_pos(ALICE, "NOPE").await.unwrap(), None);
    for i in 0..5 {
        let req = request(
            &format!("t{i}"),
            vec![
                msg(ALICE, "D", BOB, &format!("m{i}")),
                msg(ALICE, "OTHER", BOB, "x"),
            ],
            vec![],
        );
        let out = store.commit_sends(&[req], 100, 2_000).await.unwrap();
        assert_eq!(
            out,
            vec![SendOutcome::Committed(vec![
                (ALICE.into(), "D".into()),
                (ALICE.into(), "OTHER".into())
            ])]
        );
    }
    assert_eq!(
        store.inbox_last_pos(ALICE, "D").await.unwrap(),
        Some(start + 5)
    );
    assert_eq!(store.inbox_total().await.unwrap(), 10);

    let first = store
        .ack_and_fetch_inbox(ALICE, "D", start, 2)
        .await
        .unwrap();
    assert_eq!(
        first.iter().map(|e| e.pos).collect::<Vec<_>>(),
        vec![start + 1, start + 2]
    );
    assert_eq!(body(&first[0].content), "m0");
    assert_eq!(first[0].sender, BOB);
    assert_eq!(first[0].event_type, "m.test");
    // The same `since` again redelivers the same batch.
    assert_eq!(
        store
            .ack_and_fetch_inbox(ALICE, "D", start, 2)
            .await
            .unwrap(),
        first
    );
    assert_eq!(store.inbox_total().await.unwrap(), 10);
    // A later `since` acknowledges (deletes) up to it and returns the rest.
    let rest = store
        .ack_and_fetch_inbox(ALICE, "D", start + 2, 100)
        .await
        .unwrap();
    let bodies: Vec<_> = rest.iter().map(|e| body(&e.content)).collect();
    assert_eq!(bodies, vec!["m2", "m3", "m4"]);
    assert_eq!(store.inbox_total().await.unwrap(), 8);
    // An older `since` after the ack cannot bring deleted messages back.
    let again = store
        .ack_and_fetch_inbox(ALICE, "D", start, 100)
        .await
        .unwrap();
    assert_eq!(again, rest);
    let done = store
        .ack_and_fetch_inbox(ALICE, "D", start + 5, 100)
        .await
        .unwrap();
    assert!(done.is_empty());
    // The other device's mailbox is untouched by D's acknowledgements.
    assert_eq!(
        store
            .ack_and_fetch_inbox(ALICE, "OTHER", 0, 100)
            .await
            .unwrap()
            .len(),
        5
    );
    assert_eq!(store.inbox_total().await.unwrap(), 5);
    // Limit 0 returns nothing but still acknowledges.
    let other_last = store.inbox_last_pos(ALICE, "OTHER").await.unwrap().unwrap();
    assert!(store
        .ack_and_fetch_inbox(ALICE, "OTHER", other_last, 0)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.inbox_total().await.unwrap(), 0);
}

async fn group_commit_outcomes(store: Store) {
    user_with_devices(&store, ALICE, &["D"], 0).await;
    let d = || vec![(ALICE.to_owned(), "D".to_owned())];
    let batch = vec![
        request(
            "t1",
            vec![msg(ALICE, "D", BOB, "1a"), msg(ALICE, "D", BOB, "1b")],
            vec![],
        ),
        request("t1", vec![msg(ALICE, "D", BOB, "dup")], vec![]),
        request(
            "t2",
            vec![msg(ALICE, "D", BOB, "2a"), msg(ALICE, "D", BOB, "2b")],
            vec![edu("lost.test", 2)],
        ),
        request(
            "t3",
            vec![
                msg(ALICE, "D", BOB, "3"),
                msg(ALICE, "UNKNOWN", BOB, "dropped"),
                msg("@nobody:hs.test", "X", BOB, "dropped"),
            ],
            vec![edu("remote.test", 3)],
        ),
        request(
            "t4",
            vec![],
            vec![edu("remote.test", 4), edu("other.test", 4)],
        ),
    ];
    let out = store.commit_sends(&batch, 3, 0).await.unwrap();
    assert_eq!(
        out,
        vec![
            SendOutcome::Committed(d()),
            SendOutcome::Duplicate,
            SendOutcome::MailboxFull,
            SendOutcome::Committed(d()),
            SendOutcome::Committed(vec![]),
        ]
    );
    for (id, seen) in [("t1", true), ("t2", false), ("t3", true), ("t4", true)] {
        assert_eq!(store.txn_seen(&txn(BOB, id)).await.unwrap(), seen, "{id}");
    }
    let inbox = store.ack_and_fetch_inbox(ALICE, "D", 0, 100).await.unwrap();
    let bodies: Vec<_> = inbox.iter().map(|e| body(&e.content)).collect();
    assert_eq!(bodies, vec!["1a", "1b", "3"]);
    assert!(inbox.windows(2).all(|w| w[1].pos == w[0].pos + 1));
    // Only the committed requests' EDUs are queued.
    assert_eq!(store.outbound_total().await.unwrap(), 3);
    assert!(store
        .outbound_peek("lost.test", 10)
        .await
        .unwrap()
        .is_empty());

    // A replay in a later batch is a duplicate; the full request can be retried after an ack.
    let retry = vec![batch[0].clone(), batch[2].clone()];
    assert_eq!(
        store.commit_sends(&retry, 3, 0).await.unwrap(),
        vec![SendOutcome::Duplicate, SendOutcome::MailboxFull]
    );
    store
        .ack_and_fetch_inbox(ALICE, "D", inbox[1].pos, 100)
        .await
        .unwrap();
    assert_eq!(
        store.commit_sends(&retry, 3, 0).await.unwrap(),
        vec![SendOutcome::Duplicate, SendOutcome::Committed(d())]
    );
    let inbox = store
        .ack_and_fetch_inbox(ALICE, "D", inbox[1].pos, 100)
        .await
        .unwrap();
    let bodies: Vec<_> = inbox.iter().map(|e| body(&e.content)).collect();
    assert_eq!(bodies, vec!["3", "2a", "2b"]);
    assert_eq!(store.outbound_peek("lost.test", 10).await.unwrap().len(), 1);
    assert!(store.commit_sends(&[], 3, 0).await.unwrap().is_empty());
}

/// Batches in which every request has its own key (SQLite writes these in one command and
/// falls back to deciding request by request only when a key was used before or a mailbox
/// would overflow): positions continue after what is queued, several requests to one device
/// interleave in order, EDUs for several destinations keep their order, and a conflict found
/// late in the batch refuses only the request it belongs to.
async fn batches_without_conflicts_and_late_conflicts(store: Store) {
    user_with_devices(&store, ALICE, &["D", "E"], 0).await;
    let first = vec![request("a0", vec![msg(ALICE, "D", BOB, "0")], vec![])];
    store.commit_sends(&first, 4, 0).await.unwrap();
    let de = vec![
        (ALICE.to_owned(), "D".to_owned()),
        (ALICE.to_owned(), "E".to_owned()),
    ];
    let batch = vec![
        request(
            "a1",
            vec![
                msg(ALICE, "E", BOB, "e1"),
                msg(ALICE, "D", BOB, "1"),
                msg(ALICE, "GONE", BOB, "dropped"),
            ],
            vec![edu("one.test", 1), edu("two.test", 1)],
        ),
        request("a2", vec![], vec![edu("one.test", 2)]),
        request(
            "a3",
            vec![msg(ALICE, "D", BOB, "2"), msg(ALICE, "D", BOB, "3")],
            vec![],
        ),
    ];
    assert_eq!(
        store.commit_sends(&batch, 4, 0).await.unwrap(),
        vec![
            SendOutcome::Committed(de.clone()),
            SendOutcome::Committed(vec![]),
            SendOutcome::Committed(vec![de[0].clone()]),
        ]
    );
    let d = store.ack_and_fetch_inbox(ALICE, "D", 0, 10).await.unwrap();
    let bodies: Vec<_> = d.iter().map(|e| body(&e.content)).collect();
    assert_eq!(bodies, vec!["0", "1", "2", "3"], "exactly at the cap of 4");
    assert!(d.windows(2).all(|w| w[1].pos == w[0].pos + 1));
    let e = store.ack_and_fetch_inbox(ALICE, "E", 0, 10).await.unwrap();
    assert_eq!(e.len(), 1);
    let one: Vec<_> = store
        .outbound_peek("one.test", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, edu)| edu.content)
        .collect();
    assert_eq!(one, vec![r#"{"n":1}"#, r#"{"n":2}"#]);
    assert_eq!(store.outbound_peek("two.test", 10).await.unwrap().len(), 1);
    assert_eq!(store.outbound_total().await.unwrap(), 3);

    // A full mailbox late in a batch: only that request is refused, the rest is written and
    // the refused key stays unused.
    let last = d.last().unwrap().pos;
    let batch = vec![
        request(
            "b1",
            vec![msg(ALICE, "E", BOB, "e2")],
            vec![edu("one.test", 3)],
        ),
        request("b2", vec![msg(ALICE, "D", BOB, "over")], vec![]),
        request("b3", vec![msg(ALICE, "E", BOB, "e3")], vec![]),
    ];
    assert_eq!(
        store.commit_sends(&batch, 4, 0).await.unwrap(),
        vec![
            SendOutcome::Committed(vec![de[1].clone()]),
            SendOutcome::MailboxFull,
            SendOutcome::Committed(vec![de[1].clone()]),
        ]
    );
    assert!(!store.txn_seen(&txn(BOB, "b2")).await.unwrap());
    assert!(store.txn_seen(&txn(BOB, "b3")).await.unwrap());
    // A key used by an earlier batch: only that request is a duplicate.
    let replay = vec![
        request("a1", vec![msg(ALICE, "E", BOB, "replay")], vec![]),
        request("c1", vec![msg(ALICE, "E", BOB, "e4")], vec![]),
    ];
    assert_eq!(
        store.commit_sends(&replay, 4, 0).await.unwrap(),
        vec![
            SendOutcome::Duplicate,
            SendOutcome::Committed(vec![de[1].clone()]),
        ]
    );
    let e = store.ack_and_fetch_inbox(ALICE, "E", 0, 10).await.unwrap();
    let bodies: Vec<_> = e.iter().map(|e| body(&e.content)).collect();
    assert_eq!(bodies, vec!["e1", "e2", "e3", "e4"]);
    assert_eq!(store.outbound_peek("one.test", 10).await.unwrap().len(), 3);
    // After an acknowledgement the refused request fits.
    store
        .ack_and_fetch_inbox(ALICE, "D", last, 10)
        .await
        .unwrap();
    assert_eq!(
        store.commit_sends(&[batch[1].clone()], 4, 0).await.unwrap(),
        vec![SendOutcome::Committed(vec![de[0].clone()])]
    );
    let d = store
        .ack_and_fetch_inbox(ALICE, "D", last, 10)
        .await
        .unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].pos, last + 1, "positions are never reused");
}

async fn mailbox_full_request_writes_nothing(store: Store) {
    user_with_devices(&store, ALICE, &["EMPTY", "FULL"], 0).await;
    let fill: Vec<_> = (0..2)
        .map(|i| msg(ALICE, "FULL", BOB, &format!("f{i}")))
        .collect();
    store
        .commit_sends(&[request("fill", fill, vec![])], 2, 0)
        .await
        .unwrap();
    let both = request(
        "both",
        vec![msg(ALICE, "EMPTY", BOB, "e"), msg(ALICE, "FULL", BOB, "f")],
        vec![edu("remote.test", 1)],
    );
    assert_eq!(
        store.commit_sends(&[both], 2, 0).await.unwrap(),
        vec![SendOutcome::MailboxFull]
    );
    // Nothing of the request reached the device that had room, nor the outbound queue.
    assert!(store
        .ack_and_fetch_inbox(ALICE, "EMPTY", 0, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.outbound_total().await.unwrap(), 0);
    assert!(!store.txn_seen(&txn(BOB, "both")).await.unwrap());
    // Exactly at the cap is allowed.
    let exact: Vec<_> = (0..2)
        .map(|i| msg(ALICE, "EMPTY", BOB, &format!("e{i}")))
        .collect();
    assert!(matches!(
        store
            .commit_sends(&[request("exact", exact, vec![])], 2, 0)
            .await
            .unwrap()[0],
        SendOutcome::Committed(_)
    ));
}

async fn concurrent_committers_exactly_once_in_order(store: Store) {
    const SENDERS: usize = 16;
    const PER_SENDER: usize = 40;
    const TOTAL: usize = SENDERS * PER_SENDER;
    user_with_devices(&store, ALICE, &["R1", "R2"], 0).await;
    let start = store.inbox_last_pos(ALICE, "R1").await.unwrap().unwrap();

    // A reader that follows R1 the way /sync does, checking that positions never skip.
    let reader = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut since = start;
            let mut seen = Vec::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
            while seen.len() < TOTAL {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "reader timed out at {}",
                    seen.len()
                );
                let batch = store
                    .ack_and_fetch_inbox(ALICE, "R1", since, 37)
                    .await
                    .unwrap();
                for event in batch {
                    assert_eq!(
                        event.pos,
                        since + 1,
                        "a position became visible out of order"
                    );
                    since = event.pos;
                    seen.push(body(&event.content));
                }
                tokio::task::yield_now().await;
            }
            seen
        })
    };

    let mut senders = Vec::new();
    for s in 0..SENDERS {
        let store = store.clone();
        senders.push(tokio::spawn(async move {
            let sender = format!("@s{s}:hs.test");
            let mut j = 0;
            while j < PER_SENDER {
                // Batches of 1 to 3 requests, like the group-commit service produces.
                let n = ((s + j) % 3 + 1).min(PER_SENDER - j);
                let batch: Vec<SendRequest> = (j..j + n)
                    .map(|k| SendRequest {
                        txn: TxnKey {
                            user_id: sender.clone(),
                            device_id: "S".into(),
                            endpoint: "sendToDevice/m.test".into(),
                            txn_id: format!("t{k}"),
                        },
                        local: vec![
                            msg(ALICE, "R1", &sender, &format!("{s}/{k}")),
                            msg(ALICE, "R2", &sender, &format!("{s}/{k}")),
                        ],
                        remote: vec![],
                    })
                    .collect();
                let out = store.commit_sends(&batch, 1_000_000, 0).await.unwrap();
                assert!(out
                    .iter()
                    .all(|o| matches!(o, SendOutcome::Committed(r) if r.len() == 2)));
                j += n;
            }
            // A retry of an already committed request is a duplicate.
            let replay = SendRequest {
                txn: TxnKey {
                    user_id: sender.clone(),
                    device_id: "S".into(),
                    endpoint: "sendToDevice/m.test".into(),
                    txn_id: "t0".into(),
                },
                local: vec![msg(ALICE, "R1", &sender, "replayed")],
                remote: vec![],
            };
            assert_eq!(
                store.commit_sends(&[replay], 1_000_000, 0).await.unwrap(),
                vec![SendOutcome::Duplicate]
            );
        }));
    }
    for sender in senders {
        sender.await.unwrap();
    }
    let seen_r1 = reader.await.unwrap();

    let expected: BTreeSet<String> = (0..SENDERS)
        .flat_map(|s| (0..PER_SENDER).map(move |k| format!("{s}/{k}")))
        .collect();
    let unique: BTreeSet<String> = seen_r1.iter().cloned().collect();
    assert_eq!(seen_r1.len(), TOTAL, "every message exactly once");
    assert_eq!(unique, expected);
    // Nothing more (no replayed message) is queued for R1.
    let last = start + TOTAL as i64;
    assert!(store
        .ack_and_fetch_inbox(ALICE, "R1", last, 10)
        .await
        .unwrap()
        .is_empty());
    // Per sender, messages arrive in send order.
    for s in 0..SENDERS {
        let prefix = format!("{s}/");
        let order: Vec<usize> = seen_r1
            .iter()
            .filter_map(|b| b.strip_prefix(&prefix))
            .map(|k| k.parse().unwrap())
            .collect();
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "sender {s} out of order"
        );
    }
    // R2 got the same set, with contiguous positions.
    let r2_start = store.inbox_last_pos(ALICE, "R2").await.unwrap().unwrap() - TOTAL as i64;
    let r2 = store
        .ack_and_fetch_inbox(ALICE, "R2", r2_start, 10_000)
        .await
        .unwrap();
    assert_eq!(r2.len(), TOTAL);
    assert!(r2
        .iter()
        .enumerate()
        .all(|(i, e)| e.pos == r2_start + 1 + i as i64));
    let r2_set: BTreeSet<String> = r2.iter().map(|e| body(&e.content)).collect();
    assert_eq!(r2_set, expected);
}

async fn outbound_queue(store: Store) {
    store
        .enqueue_outbound(&[edu("a.test", 1), edu("b.test", 2), edu("a.test", 3)], 100)
        .await
        .unwrap();
    assert_eq!(store.outbound_total().await.unwrap(), 3);
    assert_eq!(
        store.outbound_due_destinations(100, 10).await.unwrap(),
        vec!["a.test".to_owned(), "b.test".to_owned()]
    );
    let a = store.outbound_peek("a.test", 10).await.unwrap();
    assert_eq!(a.len(), 2);
    assert_eq!(a[0].1.content, r#"{"n":1}"#);
    assert!(a[0].0 < a[1].0);
    let fresh = store.destination_state("a.test").await.unwrap().unwrap();
    assert_eq!(
        (fresh.retry_count, fresh.next_attempt_ts, fresh.last_txn_id),
        (0, 0, None)
    );

    // A failed attempt backs the destination off.
    let backoff = DestinationRow {
        destination: "a.test".into(),
        retry_count: 1,
        next_attempt_ts: 5_000,
        last_txn_id: Some("txn-1".into()),
    };
    store.set_destination_state(&backoff, 200).await.unwrap();
    assert_eq!(
        store.destination_state("a.test").await.unwrap(),
        Some(backoff)
    );
    assert_eq!(
        store.outbound_due_destinations(1_000, 10).await.unwrap(),
        vec!["b.test".to_owned()]
    );
    assert_eq!(
        store
            .outbound_due_destinations(5_000, 10)
            .await
            .unwrap()
            .len(),
        2
    );

    store.outbound_delete(&[a[0].0]).await.unwrap();
    let a = store.outbound_peek("a.test", 10).await.unwrap();
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].1.content, r#"{"n":3}"#);
    store.outbound_delete(&[a[0].0]).await.unwrap();
    assert_eq!(
        store.outbound_due_destinations(9_999, 10).await.unwrap(),
        vec!["b.test".to_owned()]
    );
    assert_eq!(store.destination_state("nowhere.test").await.unwrap(), None);
}

async fn prune_enforces_ttls(store: Store) {
    user_with_devices(&store, ALICE, &["D"], 0).await;
    let old = request(
        "old",
        vec![msg(ALICE, "D", BOB, "old")],
        vec![edu("r.test", 1)],
    );
    let new = request(
        "new",
        vec![msg(ALICE, "D", BOB, "new")],
        vec![edu("r.test", 2)],
    );
    store.commit_sends(&[old], 100, 1_000).await.unwrap();
    store.commit_sends(&[new], 100, 9_000).await.unwrap();
    store
        .create_uia_session("u-old", "register", 1_000)
        .await
        .unwrap();
    store
        .create_uia_session("u-new", "register", 9_000)
        .await
        .unwrap();

    // Cut-offs between the two: one of each goes (message, EDU, txn id, UIA session).
    let deleted = store.prune(5_000, 5_000, 5_000).await.unwrap();
    assert!(deleted >= 4, "deleted {deleted}");
    let inbox = store.ack_and_fetch_inbox(ALICE, "D", 0, 10).await.unwrap();
    assert_eq!(
        inbox.iter().map(|e| body(&e.content)).collect::<Vec<_>>(),
        vec!["new"]
    );
    assert_eq!(store.outbound_total().await.unwrap(), 1);
    assert!(!store.txn_seen(&txn(BOB, "old")).await.unwrap());
    assert!(store.txn_seen(&txn(BOB, "new")).await.unwrap());
    assert_eq!(store.get_uia_session("u-old").await.unwrap(), None);
    assert!(store.get_uia_session("u-new").await.unwrap().is_some());
    // Nothing left to prune at the same cut-offs.
    assert_eq!(store.prune(5_000, 5_000, 5_000).await.unwrap(), 0);
    // Everything expires eventually; the idle destination row goes with its queue.
    store.prune(i64::MAX, i64::MAX, i64::MAX).await.unwrap();
    assert_eq!(store.inbox_total().await.unwrap(), 0);
    assert_eq!(store.outbound_total().await.unwrap(), 0);
    assert_eq!(store.destination_state("r.test").await.unwrap(), None);
}

async fn wakeups_follow_commits(store: Store) {
    user_with_devices(&store, ALICE, &["D", "E"], 0).await;
    let Some(mut listener) = store.listen_wakeups().await.unwrap() else {
        assert!(
            !store.is_postgres(),
            "PostgreSQL must offer cross-process wake-ups"
        );
        return;
    };
    // The writer is this same process: ask for our own notifications too.
    listener.include_own(true);
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(10), listener.recv())
            .await
            .expect("no wake-up within 10 s")
            .unwrap()
    };
    let device = |d: &str| Wakeup::Device {
        user_id: ALICE.into(),
        device_id: d.into(),
    };
    let first = request("w1", vec![msg(ALICE, "D", BOB, "1")], vec![]);
    store
        .commit_sends(std::slice::from_ref(&first), 10, 0)
        .await
        .unwrap();
    assert_eq!(next().await, device("D"));
    // A duplicate writes nothing and wakes nobody: the next wake-up is for E.
    assert_eq!(
        store.commit_sends(&[first], 10, 0).await.unwrap(),
        vec![SendOutcome::Duplicate]
    );
    store
        .commit_sends(
            &[request("w2", vec![msg(ALICE, "E", BOB, "2")], vec![])],
            10,
            0,
        )
        .await
        .unwrap();
    assert_eq!(next().await, device("E"));
    // A claimed one-time key wakes its owner.
    let key = KeyUpload {
        algorithm: "signed_curve25519".into(),
        key_id: "K".into(),
        json: "{}".into(),
    };
    store
        .add_one_time_keys(ALICE, "D", &[key], 0)
        .await
        .unwrap();
    claim(&store, ALICE, "D", "signed_curve25519")
        .await
        .unwrap();
    assert_eq!(next().await, device("D"));
}

async fn many_recipients_in_one_batch(store: Store) {
    let devices: Vec<String> = (0..300).map(|i| format!("D{i:03}")).collect();
    let names: Vec<&str> = devices.iter().map(String::as_str).collect();
    user_with_devices(&store, ALICE, &names, 0).await;
    // Fill one mailbox so its head is not at the start.
    store
        .commit_sends(
            &[request("pre", vec![msg(ALICE, "D007", BOB, "pre")], vec![])],
            10,
            0,
        )
        .await
        .unwrap();
    let mut local: Vec<ToDeviceMessage> = names.iter().map(|d| msg(ALICE, d, BOB, d)).collect();
    local.push(msg(ALICE, "MISSING", BOB, "dropped"));
    local.push(msg("@ghost:hs.test", "D000", BOB, "dropped"));
    let second: Vec<ToDeviceMessage> = names
        .iter()
        .rev()
        .map(|d| msg(ALICE, d, BOB, &format!("{d}-2")))
        .collect();
    let out = store
        .commit_sends(
            &[
                request("all", local, vec![]),
                request("again", second, vec![]),
            ],
            10,
            0,
        )
        .await
        .unwrap();
    let expected: Vec<(String, String)> = devices
        .iter()
        .map(|d| (ALICE.to_owned(), d.clone()))
        .collect();
    assert_eq!(
        out,
        vec![
            SendOutcome::Committed(expected.clone()),
            SendOutcome::Committed(expected)
        ]
    );
    assert_eq!(store.inbox_total().await.unwrap(), 601);
    for d in ["D000", "D007", "D299"] {
        let inbox = store.ack_and_fetch_inbox(ALICE, d, 0, 10).await.unwrap();
        let bodies: Vec<_> = inbox.iter().map(|e| body(&e.content)).collect();
        let mut want = Vec::new();
        if d == "D007" {
            want.push("pre".to_owned());
        }
        want.push(d.to_owned());
        want.push(format!("{d}-2"));
        assert_eq!(bodies, want);
        assert!(inbox.windows(2).all(|w| w[1].pos == w[0].pos + 1));
        assert_eq!(
            store.inbox_last_pos(ALICE, d).await.unwrap(),
            inbox.last().map(|e| e.pos)
        );
    }
}

async fn cancelled_commits_leave_store_usable(store: Store) {
    user_with_devices(&store, ALICE, &["D"], 0).await;
    let start = store.inbox_last_pos(ALICE, "D").await.unwrap().unwrap();
    // Abort group commits at arbitrary points (as a dropped HTTP request would).
    for round in 0..40u64 {
        let batch: Vec<SendRequest> = (0..20)
            .map(|i| {
                request(
                    &format!("c{round}-{i}"),
                    vec![msg(ALICE, "D", BOB, &format!("{round}-{i}"))],
                    vec![],
                )
            })
            .collect();
        let task = {
            let store = store.clone();
            tokio::spawn(async move { store.commit_sends(&batch, 1_000_000, 0).await })
        };
        tokio::time::sleep(Duration::from_micros(round * 50)).await;
        task.abort();
        let _ = task.await;
        // The store keeps working right after the abort.
        let ok = request(
            &format!("ok{round}"),
            vec![msg(ALICE, "D", BOB, &format!("ok{round}"))],
            vec![],
        );
        assert!(matches!(
            store.commit_sends(&[ok], 1_000_000, 0).await.unwrap()[0],
            SendOutcome::Committed(_)
        ));
    }
    // Whatever was committed is all-or-nothing per batch, with contiguous positions.
    let inbox = store
        .ack_and_fetch_inbox(ALICE, "D", start, 100_000)
        .await
        .unwrap();
    assert!(inbox
        .iter()
        .enumerate()
        .all(|(i, e)| e.pos == start + 1 + i as i64));
    let bodies: Vec<String> = inbox.iter().map(|e| body(&e.content)).collect();
    for round in 0..40 {
        let n = bodies
            .iter()
            .filter(|b| b.starts_with(&format!("{round}-")))
            .count();
        assert!(n == 0 || n == 20, "round {round}: {n} of 20 committed");
        assert!(bodies.contains(&format!("ok{round}")));
        let first = format!("c{round}-0");
        assert_eq!(store.txn_seen(&txn(BOB, &first)).await.unwrap(), n == 20);
    }
}

/// Acknowledgements that arrive together are committed as a group: each deletes exactly its
/// own device's messages up to its own position, also when one device acknowledges twice.
async fn concurrent_acknowledgements(store: Store) {
    const DEVICES: usize = 20;
    let devices: Vec<String> = (0..DEVICES).map(|i| format!("D{i}")).collect();
    let names: Vec<&str> = devices.iter().map(String::as_str).collect();
    user_with_devices(&store, ALICE, &names, 0).await;
    let batch: Vec<SendRequest> = (0..3)
        .map(|n| {
            let local = names
                .iter()
                .map(|d| msg(ALICE, d, BOB, &format!("{d}-{n}")))
                .collect();
            request(&format!("t{n}"), local, vec![])
        })
        .collect();
    store.commit_sends(&batch, 100, 0).await.unwrap();
    let first = store.ack_and_fetch_inbox(ALICE, "D0", 0, 10).await.unwrap();
    let base = first[0].pos;
    // Device i acknowledges up to its message i % 3 (D0 twice: the first and the second).
    let acks = names.iter().enumerate().map(|(i, d)| {
        let store = store.clone();
        let d = (*d).to_owned();
        async move {
            store
                .ack_inbox(ALICE, &d, base + i64::try_from(i % 3).unwrap())
                .await
        }
    });
    let extra = store.ack_inbox(ALICE, "D0", base + 1);
    let (results, extra) = tokio::join!(futures::future::join_all(acks), extra);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    extra.unwrap();
    for (i, d) in names.iter().enumerate() {
        let left = store.ack_and_fetch_inbox(ALICE, d, 0, 10).await.unwrap();
        let bodies: Vec<_> = left.iter().map(|e| body(&e.content)).collect();
        let kept = if i == 0 { 2 } else { i % 3 + 1 };
        let expected: Vec<String> = (kept..3).map(|n| format!("{d}-{n}")).collect();
        assert_eq!(bodies, expected, "{d}");
    }
}
