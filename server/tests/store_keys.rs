//! Store tests: device keys, one-time keys, fallback keys and device-list changes.
//! Every test runs on SQLite and on PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common_db;

use std::collections::BTreeSet;

use common_db::{claim, claim_as};
use hush_server::store::{
    Claimed, KeyClaim, KeyUpload, OtkUploadOutcome, PruneCutoffs, Store, StoreError,
};

store_tests!(
    device_keys_change_detection,
    otk_upload_idempotent_and_overlap,
    otk_conflict_rolls_back_upload,
    otk_unknown_device,
    claim_in_upload_order_not_key_id,
    concurrent_claimers_never_share_a_key,
    claimed_key_reupload_not_handed_out_again,
    claim_keys_in_one_group,
    fallback_key_semantics,
    device_list_interest_and_changes,
    device_list_pruned_horizon,
);

const ALICE: &str = "@alice:hs.test";
const BOB: &str = "@bob:hs.test";
const ALG: &str = "signed_curve25519";

fn key(id: &str, json: &str) -> KeyUpload {
    KeyUpload {
        algorithm: ALG.into(),
        key_id: id.into(),
        json: json.into(),
    }
}

async fn user_with_device(store: &Store, user: &str, device: &str) {
    if store.get_user(user).await.unwrap().is_none() {
        store.create_user(user, None, None, 0).await.unwrap();
    }
    let token = format!("{user}/{device}");
    store
        .login_device(user, device, None, token.as_bytes(), 0)
        .await
        .unwrap();
}

async fn device_keys_change_detection(store: Store) {
    user_with_device(&store, ALICE, "D1").await;
    user_with_device(&store, ALICE, "D2").await;
    let p0 = store.device_list_position().await.unwrap();
    assert!(store
        .set_device_keys(ALICE, "D1", r#"{"a":1}"#, 0)
        .await
        .unwrap());
    let p1 = store.device_list_position().await.unwrap();
    assert!(p1 > p0);
    // Identical re-upload: no change, no stream entry.
    assert!(!store
        .set_device_keys(ALICE, "D1", r#"{"a":1}"#, 0)
        .await
        .unwrap());
    assert_eq!(store.device_list_position().await.unwrap(), p1);
    assert!(store
        .set_device_keys(ALICE, "D1", r#"{"a":2}"#, 0)
        .await
        .unwrap());
    assert!(store.device_list_position().await.unwrap() > p1);
    assert!(matches!(
        store.set_device_keys(ALICE, "NOPE", "{}", 0).await,
        Err(StoreError::NotFound)
    ));

    store
        .set_device_display_name(ALICE, "D1", Some("Phone"))
        .await
        .unwrap();
    let all = store.get_device_keys(ALICE, &[]).await.unwrap();
    // D2 has no keys, so it is not listed.
    assert_eq!(all.len(), 1);
    assert_eq!(
        all["D1"],
        (r#"{"a":2}"#.to_owned(), Some("Phone".to_owned()))
    );
    store
        .set_device_keys(ALICE, "D2", r#"{"b":1}"#, 0)
        .await
        .unwrap();
    let some = store
        .get_device_keys(ALICE, &["D2".into(), "UNKNOWN".into()])
        .await
        .unwrap();
    assert_eq!(some.keys().collect::<Vec<_>>(), vec!["D2"]);
    assert!(store.get_device_keys(BOB, &[]).await.unwrap().is_empty());
}

async fn otk_upload_idempotent_and_overlap(store: Store) {
    user_with_device(&store, ALICE, "D").await;
    let abc = [
        key("A", r#"{"key":"a"}"#),
        key("B", r#"{"key":"b"}"#),
        key("C", r#"{"key":"c"}"#),
    ];
    assert_eq!(
        store.add_one_time_keys(ALICE, "D", &abc, 0).await.unwrap(),
        OtkUploadOutcome::Stored
    );
    assert_eq!(store.one_time_key_counts(ALICE, "D").await.unwrap()[ALG], 3);
    // The same upload again is a no-op.
    assert_eq!(
        store.add_one_time_keys(ALICE, "D", &abc, 0).await.unwrap(),
        OtkUploadOutcome::Stored
    );
    assert_eq!(store.one_time_key_counts(ALICE, "D").await.unwrap()[ALG], 3);
    // Overlap B, C, D: only D is new.
    let bcd = [
        key("B", r#"{"key":"b"}"#),
        key("C", r#"{"key":"c"}"#),
        key("D", r#"{"key":"d"}"#),
    ];
    store.add_one_time_keys(ALICE, "D", &bcd, 0).await.unwrap();
    assert_eq!(store.one_time_key_counts(ALICE, "D").await.unwrap()[ALG], 4);
    // Another algorithm is counted separately; a string-valued key is kept verbatim.
    let legacy = KeyUpload {
        algorithm: "curve25519".into(),
        key_id: "L".into(),
        json: r#""c2FtcGxl""#.into(),
    };
    store
        .add_one_time_keys(ALICE, "D", &[legacy], 0)
        .await
        .unwrap();
    let counts = store.one_time_key_counts(ALICE, "D").await.unwrap();
    assert_eq!(counts.len(), 2);
    assert_eq!(counts["curve25519"], 1);
    let claimed = claim(&store, ALICE, "D", "curve25519").await.unwrap();
    assert_eq!(claimed.full_id, "curve25519:L");
    assert_eq!(claimed.json, r#""c2FtcGxl""#);
}

async fn otk_conflict_rolls_back_upload(store: Store) {
    user_with_device(&store, ALICE, "D").await;
    store
        .add_one_time_keys(ALICE, "D", &[key("A", r#"{"key":"a"}"#)], 0)
        .await
        .unwrap();
    let upload = [
        key("NEW", r#"{"key":"n"}"#),
        key("A", r#"{"key":"DIFFERENT"}"#),
    ];
    let outcome = store
        .add_one_time_keys(ALICE, "D", &upload, 0)
        .await
        .unwrap();
    assert_eq!(
        outcome,
        OtkUploadOutcome::ConflictingKey(
            format!("{ALG}:A"),
            r#"{"key":"a"}"#.into(),
            r#"{"key":"DIFFERENT"}"#.into()
        )
    );
    // Nothing of the conflicting upload was stored, the old key is unchanged.
    assert_eq!(store.one_time_key_counts(ALICE, "D").await.unwrap()[ALG], 1);
    let claimed = claim(&store, ALICE, "D", ALG).await.unwrap();
    assert_eq!(claimed.json, r#"{"key":"a"}"#);
    // Two different keys under one ID in the same upload conflict too.
    let twice = [key("X", r#"{"key":"1"}"#), key("X", r#"{"key":"2"}"#)];
    assert!(matches!(
        store
            .add_one_time_keys(ALICE, "D", &twice, 0)
            .await
            .unwrap(),
        OtkUploadOutcome::ConflictingKey(..)
    ));
    assert!(store
        .one_time_key_counts(ALICE, "D")
        .await
        .unwrap()
        .is_empty());
}

async fn otk_unknown_device(store: Store) {
    user_with_device(&store, ALICE, "D").await;
    assert!(matches!(
        store
            .add_one_time_keys(ALICE, "NOPE", &[key("A", "{}")], 0)
            .await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store
            .set_fallback_keys(ALICE, "NOPE", &[key("F", "{}")])
            .await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(claim(&store, ALICE, "NOPE", ALG).await, None);
}

async fn claim_in_upload_order_not_key_id(store: Store) {
    user_with_device(&store, ALICE, "D").await;
    // Key IDs chosen so that lexicographic order is the reverse of upload order.
    let ids = ["AAAAHg", "AAAAEQ", "AAAAAQ", "1", "0"];
    for id in ids {
        store
            .add_one_time_keys(ALICE, "D", &[key(id, &format!(r#"{{"key":"{id}"}}"#))], 0)
            .await
            .unwrap();
    }
    let mut got = Vec::new();
    while let Some(k) = claim(&store, ALICE, "D", ALG).await {
        got.push(k.full_id);
    }
    let expected: Vec<String> = ids.iter().map(|id| format!("{ALG}:{id}")).collect();
    assert_eq!(got, expected);
    assert!(store
        .one_time_key_counts(ALICE, "D")
        .await
        .unwrap()
        .is_empty());
}

async fn concurrent_claimers_never_share_a_key(store: Store) {
    const KEYS: usize = 200;
    const CLAIMERS: usize = 16;
    user_with_device(&store, ALICE, "D").await;
    let keys: Vec<KeyUpload> = (0..KEYS)
        .map(|i| key(&format!("K{i:04}"), &format!(r#"{{"key":"{i}"}}"#)))
        .collect();
    for chunk in keys.chunks(50) {
        store.add_one_time_keys(ALICE, "D", chunk, 0).await.unwrap();
    }
    store
        .set_fallback_keys(ALICE, "D", &[key("FB", r#"{"key":"fb","fallback":true}"#)])
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..CLAIMERS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            let mut fallbacks = 0;
            // Claim until only the fallback key comes back (a few times, to overlap the tail).
            while fallbacks < 3 {
                let k = claim(&store, ALICE, "D", ALG).await.unwrap();
                if k.full_id == format!("{ALG}:FB") {
                    fallbacks += 1;
                } else {
                    mine.push(k.full_id);
                }
            }
            mine
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let unique: BTreeSet<_> = all.iter().cloned().collect();
    assert_eq!(
        all.len(),
        unique.len(),
        "a one-time key was handed out twice"
    );
    assert_eq!(unique.len(), KEYS, "every key is handed out once");
    assert!(store
        .one_time_key_counts(ALICE, "D")
        .await
        .unwrap()
        .is_empty());
    // The fallback key was never consumed, only marked used.
    assert!(store
        .get_fallback_key(ALICE, "D", ALG)
        .await
        .unwrap()
        .is_some());
    assert!(store
        .unused_fallback_key_types(ALICE, "D")
        .await
        .unwrap()
        .is_empty());
}

fn claim_of(user: &str, device: &str, bundle: bool) -> KeyClaim {
    KeyClaim {
        user_id: user.into(),
        device_id: device.into(),
        algorithm: ALG.into(),
        bundle,
    }
}

fn key_id(claimed: &Claimed) -> Option<&str> {
    match claimed {
        Claimed::Key(key) => Some(key.full_id.as_str()),
        _ => None,
    }
}

/// `claim_keys` as the API calls it: several calls in one group, key and bundle claims, the
/// requester's device-list interest in each user it got keys of, and claimed keys remembered.
async fn claim_keys_in_one_group(store: Store) {
    const CAROL: &str = "@carol:hs.test";
    user_with_device(&store, ALICE, "A").await;
    user_with_device(&store, BOB, "B").await;
    user_with_device(&store, CAROL, "C").await;
    let o1 = key("O1", r#"{"key":"o1"}"#);
    store
        .add_one_time_keys(BOB, "B", &[o1.clone(), key("O2", r#"{"key":"o2"}"#)], 0)
        .await
        .unwrap();
    store
        .set_fallback_keys(BOB, "B", &[key("F", r#"{"key":"f","fallback":true}"#)])
        .await
        .unwrap();

    // Alice: two key claims of bob's device, one of her own and one of carol's (no keys);
    // carol: a bundle of bob's device and one of her own.
    let alice_claims = [
        claim_of(BOB, "B", false),
        claim_of(BOB, "B", false),
        claim_of(ALICE, "A", false),
        claim_of(CAROL, "C", false),
    ];
    let carol_claims = [claim_of(BOB, "B", true), claim_of(CAROL, "C", true)];
    let alice = store.claim_keys(&alice_claims, Some(ALICE), 1_000);
    let carol = store.claim_keys(&carol_claims, Some(CAROL), 1_000);
    let (alice, carol) = tokio::join!(alice, carol);
    let (alice, carol) = (alice.unwrap(), carol.unwrap());
    assert_eq!(alice.len(), 4);
    assert_eq!(alice[2], Claimed::Nothing, "alice's device has no keys");
    assert_eq!(alice[3], Claimed::Nothing, "carol's device has no keys");
    assert_eq!(
        carol[1],
        Claimed::Nothing,
        "carol's device has no signed prekey"
    );
    let Claimed::Bundle {
        signed_prekey,
        one_time_key,
    } = &carol[0]
    else {
        panic!("a bundle: {carol:?}");
    };
    assert_eq!(signed_prekey.full_id, format!("{ALG}:F"));
    // Both one-time keys are handed out once, in upload order, between the three claims of
    // bob's device; whichever call ran last gets the fallback key.
    let mut got: Vec<&str> = alice[..2].iter().filter_map(key_id).collect();
    got.extend(one_time_key.iter().map(|k| k.full_id.as_str()));
    got.sort_unstable();
    let (o1_id, o2_id, f_id) = (format!("{ALG}:O1"), format!("{ALG}:O2"), format!("{ALG}:F"));
    let expected_otks = vec![o1_id.as_str(), o2_id.as_str()];
    if one_time_key.is_some() {
        assert_eq!(got.len(), 3);
        assert!(got.contains(&f_id.as_str()), "{got:?}");
        got.retain(|id| *id != f_id);
    }
    assert_eq!(got, expected_otks, "{alice:?} {carol:?}");
    assert!(store
        .one_time_key_counts(BOB, "B")
        .await
        .unwrap()
        .is_empty());
    // A key claim that fell back to the fallback key marked it used; a bundle never does.
    let unused = store.unused_fallback_key_types(BOB, "B").await.unwrap();
    assert_eq!(unused.is_empty(), one_time_key.is_some(), "{unused:?}");

    // Interest: alice and carol follow bob now; nobody follows alice or carol (no keys).
    assert_eq!(
        store.device_list_followers(&[BOB.into()]).await.unwrap(),
        vec![ALICE.to_owned(), BOB.to_owned(), CAROL.to_owned()]
    );
    assert_eq!(
        store.device_list_followers(&[CAROL.into()]).await.unwrap(),
        vec![CAROL.to_owned()]
    );
    // Claimed keys are remembered: bob's client retrying its upload stores nothing.
    store
        .add_one_time_keys(BOB, "B", &[o1], 2_000)
        .await
        .unwrap();
    assert!(store
        .one_time_key_counts(BOB, "B")
        .await
        .unwrap()
        .is_empty());
    // Exhausted and without a fallback key: nothing, and no interest recorded.
    store
        .add_one_time_keys(CAROL, "C", &[key("X", r#"{"key":"x"}"#)], 0)
        .await
        .unwrap();
    let out = store
        .claim_keys(
            &[claim_of(CAROL, "C", false), claim_of(CAROL, "C", false)],
            None,
            3_000,
        )
        .await
        .unwrap();
    assert_eq!(key_id(&out[0]), Some(format!("{ALG}:X").as_str()));
    assert_eq!(out[1], Claimed::Nothing);
}

async fn claimed_key_reupload_not_handed_out_again(store: Store) {
    user_with_device(&store, ALICE, "D").await;
    let k = key("AAAAAQ", r#"{"key":"one"}"#);
    store
        .add_one_time_keys(ALICE, "D", std::slice::from_ref(&k), 1_000)
        .await
        .unwrap();
    assert!(claim(&store, ALICE, "D", ALG).await.is_some());
    // A client retrying its earlier upload: accepted, but not stored again.
    assert_eq!(
        store
            .add_one_time_keys(ALICE, "D", std::slice::from_ref(&k), 2_000)
            .await
            .unwrap(),
        OtkUploadOutcome::Stored
    );
    assert!(store
        .one_time_key_counts(ALICE, "D")
        .await
        .unwrap()
        .is_empty());
    assert_eq!(claim(&store, ALICE, "D", ALG).await, None);
    // A different key reusing the ID is a new key.
    let other = key("AAAAAQ", r#"{"key":"two"}"#);
    store
        .add_one_time_keys(ALICE, "D", &[other], 2_000)
        .await
        .unwrap();
    let claimed = claim(&store, ALICE, "D", ALG).await.unwrap();
    assert_eq!(claimed.json, r#"{"key":"two"}"#);
    // Once the memory has expired, the old key would be accepted again.
    store
        .prune_with(PruneCutoffs {
            mailbox_before: 0,
            txn_before: 0,
            uia_before: 0,
            claimed_keys_before: i64::MAX,
        })
        .await
        .unwrap();
    store
        .add_one_time_keys(ALICE, "D", &[k], 3_000)
        .await
        .unwrap();
    assert_eq!(store.one_time_key_counts(ALICE, "D").await.unwrap()[ALG], 1);
}

async fn fallback_key_semantics(store: Store) {
    user_with_device(&store, ALICE, "D").await;
    assert!(store
        .unused_fallback_key_types(ALICE, "D")
        .await
        .unwrap()
        .is_empty());
    assert_eq!(claim(&store, ALICE, "D", ALG).await, None);
    let f1 = key("F1", r#"{"key":"f1","fallback":true}"#);
    store
        .set_fallback_keys(ALICE, "D", std::slice::from_ref(&f1))
        .await
        .unwrap();
    assert_eq!(
        store.unused_fallback_key_types(ALICE, "D").await.unwrap(),
        vec![ALG]
    );

    // A one-time key is preferred over the fallback key.
    store
        .add_one_time_keys(ALICE, "D", &[key("O", r#"{"key":"o"}"#)], 0)
        .await
        .unwrap();
    assert_eq!(
        claim(&store, ALICE, "D", ALG).await.unwrap().full_id,
        format!("{ALG}:O")
    );
    assert_eq!(
        store.unused_fallback_key_types(ALICE, "D").await.unwrap(),
        vec![ALG]
    );

    // The bundle claim reads the fallback key without marking it.
    let Claimed::Bundle {
        signed_prekey: read,
        one_time_key: None,
    } = claim_as(&store, ALICE, "D", ALG, true).await
    else {
        panic!("a bundle with the signed prekey and no one-time key");
    };
    assert_eq!(
        (read.full_id.as_str(), read.json.as_str()),
        ("signed_curve25519:F1", f1.json.as_str())
    );
    assert_eq!(
        store.unused_fallback_key_types(ALICE, "D").await.unwrap(),
        vec![ALG]
    );

    // The Matrix claim marks it used but keeps returning it.
    for _ in 0..2 {
        let got = claim(&store, ALICE, "D", ALG).await.unwrap();
        assert_eq!(got.full_id, format!("{ALG}:F1"));
    }
    assert!(store
        .unused_fallback_key_types(ALICE, "D")
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store
            .get_fallback_key(ALICE, "D", ALG)
            .await
            .unwrap()
            .unwrap()
            .full_id,
        format!("{ALG}:F1")
    );

    // Re-uploading the same key keeps it used; a new key replaces it and is unused.
    store.set_fallback_keys(ALICE, "D", &[f1]).await.unwrap();
    assert!(store
        .unused_fallback_key_types(ALICE, "D")
        .await
        .unwrap()
        .is_empty());
    store
        .set_fallback_keys(ALICE, "D", &[key("F2", r#"{"key":"f2","fallback":true}"#)])
        .await
        .unwrap();
    assert_eq!(
        store.unused_fallback_key_types(ALICE, "D").await.unwrap(),
        vec![ALG]
    );
    assert_eq!(
        store
            .get_fallback_key(ALICE, "D", ALG)
            .await
            .unwrap()
            .unwrap()
            .full_id,
        format!("{ALG}:F2")
    );
    // Fallback keys are never part of the one-time key pool: a claim gets the fallback key.
    assert_eq!(
        claim(&store, ALICE, "D", ALG).await.unwrap().full_id,
        format!("{ALG}:F2")
    );
    assert!(store
        .one_time_key_counts(ALICE, "D")
        .await
        .unwrap()
        .is_empty());
}

async fn device_list_interest_and_changes(store: Store) {
    const CAROL: &str = "@carol:hs.test";
    user_with_device(&store, ALICE, "A1").await;
    user_with_device(&store, BOB, "B1").await;
    user_with_device(&store, CAROL, "C1").await;
    store
        .add_device_list_interest(ALICE, &[BOB.into(), ALICE.into()])
        .await
        .unwrap();
    let since = store.device_list_position().await.unwrap();
    assert!(store
        .device_list_changes(ALICE, since)
        .await
        .unwrap()
        .is_empty());

    user_with_device(&store, BOB, "B2").await; // new device
    user_with_device(&store, CAROL, "C2").await; // Alice does not follow Carol
    store.set_device_keys(BOB, "B2", "{}", 0).await.unwrap();
    assert_eq!(
        store.device_list_changes(ALICE, since).await.unwrap(),
        vec![BOB.to_owned()]
    );
    assert_eq!(
        store.device_list_changes(BOB, since).await.unwrap(),
        vec![BOB.to_owned()]
    );
    assert_eq!(
        store.device_list_changes(CAROL, since).await.unwrap(),
        vec![CAROL.to_owned()]
    );

    let mid = store.device_list_position().await.unwrap();
    store
        .delete_devices(ALICE, &["A1".into()], 0)
        .await
        .unwrap();
    assert_eq!(
        store.device_list_changes(ALICE, mid).await.unwrap(),
        vec![ALICE.to_owned()]
    );
    assert_eq!(
        store.device_list_changes(ALICE, since).await.unwrap(),
        vec![ALICE.to_owned(), BOB.to_owned()]
    );
    // Changes announced from elsewhere (e.g. federation) use the same stream.
    let remote = "@dan:remote.test".to_owned();
    store
        .add_device_list_interest(ALICE, std::slice::from_ref(&remote))
        .await
        .unwrap();
    let before = store.device_list_position().await.unwrap();
    let after = store
        .record_device_list_changes(std::slice::from_ref(&remote), 0)
        .await
        .unwrap();
    assert_eq!(after, before + 1);
    assert_eq!(
        store.device_list_changes(ALICE, before).await.unwrap(),
        vec![remote]
    );
}

async fn device_list_pruned_horizon(store: Store) {
    user_with_device(&store, ALICE, "A1").await;
    user_with_device(&store, BOB, "B1").await;
    store
        .add_device_list_interest(ALICE, &[BOB.into()])
        .await
        .unwrap();
    let p = store.device_list_position().await.unwrap();
    // Old changes (ts 0) and a recent one.
    store
        .record_device_list_changes(&[BOB.into()], 10)
        .await
        .unwrap();
    store
        .record_device_list_changes(&[BOB.into()], 10_000)
        .await
        .unwrap();
    let deleted = store.prune(1_000, 0, 0).await.unwrap();
    assert!(deleted >= 3, "old stream rows pruned: {deleted}");
    // A reader from before the horizon gets everything it follows.
    assert_eq!(
        store.device_list_changes(ALICE, p).await.unwrap(),
        vec![ALICE.to_owned(), BOB.to_owned()]
    );
    // A reader after the horizon gets the precise answer.
    let now = store.device_list_position().await.unwrap();
    assert!(store
        .device_list_changes(ALICE, now)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store.device_list_changes(ALICE, now - 1).await.unwrap(),
        vec![BOB.to_owned()]
    );
}
