//! Store tests: accounts, registration tokens, UIA sessions, devices and access tokens.
//! Every test runs on SQLite and on PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common_db;

use common_db::claim;
use hush_server::store::{
    KeyUpload, RegistrationTokenRow, SendOutcome, SendRequest, Store, StoreError, ToDeviceMessage,
    TokenOwner, TxnKey,
};

store_tests!(
    user_create_and_conflict,
    registration_token_consumption,
    registration_token_concurrent_last_use,
    deactivate_purges_devices,
    uia_sessions,
    login_token_lookup_and_logout,
    relogin_replaces_token_keeps_device,
    device_delete_purges_everything,
    device_recreated_gets_fresh_positions,
    display_names,
);

const ALICE: &str = "@alice:hs.test";
const BOB: &str = "@bob:hs.test";

fn hash(token: &str) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).to_vec()
}

async fn user_create_and_conflict(store: Store) {
    assert_eq!(store.get_user(ALICE).await.unwrap(), None);
    store
        .create_user(ALICE, Some("$argon2id$x"), None, 1000)
        .await
        .unwrap();
    let row = store.get_user(ALICE).await.unwrap().unwrap();
    assert_eq!(row.user_id, ALICE);
    assert_eq!(row.password_hash.as_deref(), Some("$argon2id$x"));
    assert!(!row.deactivated);
    let again = store.create_user(ALICE, None, None, 1001).await;
    assert!(matches!(again, Err(StoreError::Conflict)), "{again:?}");
    // The conflicting attempt changed nothing.
    assert_eq!(
        store
            .get_user(ALICE)
            .await
            .unwrap()
            .unwrap()
            .password_hash
            .as_deref(),
        Some("$argon2id$x")
    );
    store.set_password_hash(ALICE, "$argon2id$y").await.unwrap();
    assert_eq!(
        store
            .get_user(ALICE)
            .await
            .unwrap()
            .unwrap()
            .password_hash
            .as_deref(),
        Some("$argon2id$y")
    );
    assert!(matches!(
        store.set_password_hash(BOB, "h").await,
        Err(StoreError::NotFound)
    ));
    // A user without a password.
    store.create_user(BOB, None, None, 1000).await.unwrap();
    assert_eq!(
        store.get_user(BOB).await.unwrap().unwrap().password_hash,
        None
    );
}

async fn registration_token_consumption(store: Store) {
    let token = |t: &str, uses: Option<i64>, expiry: Option<i64>| RegistrationTokenRow {
        token: t.to_owned(),
        uses_allowed: uses,
        completed: 0,
        expiry_ts: expiry,
    };
    store
        .create_registration_token(&token("two", Some(2), None), 0)
        .await
        .unwrap();
    store
        .create_registration_token(&token("old", None, Some(5_000)), 0)
        .await
        .unwrap();
    store
        .create_registration_token(&token("free", None, None), 0)
        .await
        .unwrap();
    assert!(matches!(
        store
            .create_registration_token(&token("two", None, None), 0)
            .await,
        Err(StoreError::Conflict)
    ));

    assert!(store.registration_token_valid("two", 1000).await.unwrap());
    assert!(store.registration_token_valid("old", 4_999).await.unwrap());
    assert!(!store.registration_token_valid("old", 5_000).await.unwrap());
    assert!(!store.registration_token_valid("nope", 0).await.unwrap());

    store
        .create_user("@u1:hs", None, Some("two"), 1000)
        .await
        .unwrap();
    store
        .create_user("@u2:hs", None, Some("two"), 1000)
        .await
        .unwrap();
    assert!(!store.registration_token_valid("two", 1000).await.unwrap());
    // Used up: the account is not created.
    assert!(matches!(
        store.create_user("@u3:hs", None, Some("two"), 1000).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(store.get_user("@u3:hs").await.unwrap(), None);
    // Expired and unknown tokens.
    assert!(matches!(
        store.create_user("@u4:hs", None, Some("old"), 6_000).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.create_user("@u5:hs", None, Some("nope"), 0).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(store.get_user("@u5:hs").await.unwrap(), None);
    // A taken user ID does not spend a use.
    assert!(matches!(
        store.create_user("@u1:hs", None, Some("free"), 0).await,
        Err(StoreError::Conflict)
    ));

    let list = store.list_registration_tokens().await.unwrap();
    let names: Vec<_> = list
        .iter()
        .map(|t| (t.token.as_str(), t.completed))
        .collect();
    assert_eq!(names, vec![("free", 0), ("old", 0), ("two", 2)]);
    assert_eq!(list[2].uses_allowed, Some(2));
    assert_eq!(list[1].expiry_ts, Some(5_000));

    store.revoke_registration_token("free").await.unwrap();
    assert!(matches!(
        store.revoke_registration_token("free").await,
        Err(StoreError::NotFound)
    ));
    assert!(!store.registration_token_valid("free", 0).await.unwrap());
}

async fn registration_token_concurrent_last_use(store: Store) {
    store
        .create_registration_token(
            &RegistrationTokenRow {
                token: "three".into(),
                uses_allowed: Some(3),
                completed: 0,
                expiry_ts: None,
            },
            0,
        )
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..12 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .create_user(&format!("@c{i}:hs"), None, Some("three"), 0)
                .await
        }));
    }
    let mut ok = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(()) => ok += 1,
            Err(StoreError::NotFound) => {}
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(ok, 3);
    let list = store.list_registration_tokens().await.unwrap();
    assert_eq!(list[0].completed, 3);
}

async fn deactivate_purges_devices(store: Store) {
    store.create_user(ALICE, Some("h"), None, 0).await.unwrap();
    store
        .login_device(ALICE, "D1", None, &hash("t1"), 0)
        .await
        .unwrap();
    store
        .login_device(ALICE, "D2", None, &hash("t2"), 0)
        .await
        .unwrap();
    let before = store.device_list_position().await.unwrap();
    store.deactivate_user(ALICE, 10).await.unwrap();
    let row = store.get_user(ALICE).await.unwrap().unwrap();
    assert!(row.deactivated);
    assert_eq!(row.password_hash, None);
    assert!(store.device_ids(ALICE).await.unwrap().is_empty());
    assert_eq!(store.token_owner(&hash("t1")).await.unwrap(), None);
    assert!(store.device_list_position().await.unwrap() > before);
    // Deactivated accounts cannot log in; unknown accounts cannot be deactivated.
    assert!(matches!(
        store.login_device(ALICE, "D3", None, &hash("t3"), 0).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.deactivate_user(BOB, 0).await,
        Err(StoreError::NotFound)
    ));
}

async fn uia_sessions(store: Store) {
    store
        .create_uia_session("s1", "register", 100)
        .await
        .unwrap();
    assert!(matches!(
        store.create_uia_session("s1", "register", 100).await,
        Err(StoreError::Conflict)
    ));
    let (kind, stages, params) = store.get_uia_session("s1").await.unwrap().unwrap();
    assert_eq!(
        (kind.as_str(), stages.len(), params.as_str()),
        ("register", 0, "{}")
    );
    store
        .complete_uia_stage("s1", "m.login.registration_token", r#"{"token":"abc"}"#)
        .await
        .unwrap();
    store
        .complete_uia_stage("s1", "m.login.registration_token", r#"{"token":"abc"}"#)
        .await
        .unwrap();
    store
        .complete_uia_stage("s1", "m.login.dummy", r#"{"token":"abc"}"#)
        .await
        .unwrap();
    let (_, stages, params) = store.get_uia_session("s1").await.unwrap().unwrap();
    assert_eq!(stages, vec!["m.login.registration_token", "m.login.dummy"]);
    assert_eq!(params, r#"{"token":"abc"}"#);
    assert!(matches!(
        store
            .complete_uia_stage("nope", "m.login.dummy", "{}")
            .await,
        Err(StoreError::NotFound)
    ));
    // Expiry is enforced by prune.
    store
        .create_uia_session("s2", "register", 5_000)
        .await
        .unwrap();
    store.prune(0, 0, 1_000).await.unwrap();
    assert_eq!(store.get_uia_session("s1").await.unwrap(), None);
    assert!(store.get_uia_session("s2").await.unwrap().is_some());
    store.delete_uia_session("s2").await.unwrap();
    assert_eq!(store.get_uia_session("s2").await.unwrap(), None);
}

async fn login_token_lookup_and_logout(store: Store) {
    store.create_user(ALICE, Some("h"), None, 0).await.unwrap();
    assert!(matches!(
        store.login_device(BOB, "X", None, &hash("tx"), 0).await,
        Err(StoreError::NotFound)
    ));
    let pos0 = store.device_list_position().await.unwrap();
    store
        .login_device(ALICE, "PHONE", Some("Phone"), &hash("tok-a"), 1_000)
        .await
        .unwrap();
    let pos1 = store.device_list_position().await.unwrap();
    assert!(pos1 > pos0, "a new device is a device-list change");
    assert_eq!(
        store.device_list_changes(ALICE, pos0).await.unwrap(),
        vec![ALICE.to_owned()]
    );

    let owner = store
        .token_owner_seen(&hash("tok-a"), Some("10.0.0.1"), 100_000)
        .await
        .unwrap();
    assert_eq!(
        owner,
        Some(TokenOwner {
            user_id: ALICE.into(),
            device_id: "PHONE".into()
        })
    );
    assert_eq!(store.token_owner(&hash("unknown")).await.unwrap(), None);
    let device = store.get_device(ALICE, "PHONE").await.unwrap().unwrap();
    assert_eq!(device.display_name.as_deref(), Some("Phone"));
    assert_eq!(device.last_seen_ip.as_deref(), Some("10.0.0.1"));
    assert_eq!(device.last_seen_ts, Some(100_000));
    // Within a minute: not rewritten.
    store
        .token_owner_seen(&hash("tok-a"), Some("10.0.0.2"), 130_000)
        .await
        .unwrap();
    let device = store.get_device(ALICE, "PHONE").await.unwrap().unwrap();
    assert_eq!(device.last_seen_ts, Some(100_000));
    // After a minute: rewritten.
    store
        .token_owner_seen(&hash("tok-a"), Some("10.0.0.3"), 161_000)
        .await
        .unwrap();
    let device = store.get_device(ALICE, "PHONE").await.unwrap().unwrap();
    assert_eq!(device.last_seen_ts, Some(161_000));
    assert_eq!(device.last_seen_ip.as_deref(), Some("10.0.0.3"));

    // Logout = delete the device.
    store
        .delete_devices(ALICE, &["PHONE".into()], 2_000)
        .await
        .unwrap();
    assert_eq!(store.token_owner(&hash("tok-a")).await.unwrap(), None);
    assert_eq!(store.get_device(ALICE, "PHONE").await.unwrap(), None);
    assert!(store.device_list_position().await.unwrap() > pos1);

    // logout/all
    store
        .login_device(ALICE, "A", None, &hash("ta"), 0)
        .await
        .unwrap();
    store
        .login_device(ALICE, "B", None, &hash("tb"), 0)
        .await
        .unwrap();
    let gone = store.delete_all_devices(ALICE, 0).await.unwrap();
    assert_eq!(gone, vec!["A".to_owned(), "B".to_owned()]);
    assert_eq!(store.token_owner(&hash("ta")).await.unwrap(), None);
    assert_eq!(store.token_owner(&hash("tb")).await.unwrap(), None);
    assert!(store.list_devices(ALICE).await.unwrap().is_empty());
}

async fn relogin_replaces_token_keeps_device(store: Store) {
    store.create_user(ALICE, Some("h"), None, 0).await.unwrap();
    store
        .login_device(ALICE, "DEV", Some("first"), &hash("old"), 0)
        .await
        .unwrap();
    store
        .set_device_keys(ALICE, "DEV", r#"{"k":1}"#, 0)
        .await
        .unwrap();
    deliver(&store, ALICE, "DEV", "t1").await;
    let pos = store.device_list_position().await.unwrap();
    store
        .login_device(ALICE, "DEV", Some("second"), &hash("new"), 10)
        .await
        .unwrap();
    // Old token is gone, new works, device, keys and inbox were kept; no device-list change.
    assert_eq!(store.token_owner(&hash("old")).await.unwrap(), None);
    assert!(store.token_owner(&hash("new")).await.unwrap().is_some());
    let device = store.get_device(ALICE, "DEV").await.unwrap().unwrap();
    assert_eq!(device.display_name.as_deref(), Some("first"));
    assert_eq!(store.get_device_keys(ALICE, &[]).await.unwrap().len(), 1);
    assert_eq!(
        store
            .ack_and_fetch_inbox(ALICE, "DEV", 0, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(store.device_list_position().await.unwrap(), pos);
}

/// Sends one message to `(user, device)` from Bob's device `BOBDEV`.
async fn deliver(store: &Store, user: &str, device: &str, txn: &str) {
    let req = SendRequest {
        txn: TxnKey {
            user_id: BOB.into(),
            device_id: "BOBDEV".into(),
            endpoint: "sendToDevice/m.test".into(),
            txn_id: txn.into(),
        },
        local: vec![ToDeviceMessage {
            user_id: user.into(),
            device_id: device.into(),
            sender: BOB.into(),
            event_type: "m.test".into(),
            content: format!(r#"{{"txn":"{txn}"}}"#),
        }],
        remote: vec![],
    };
    let out = store.commit_sends(&[req], 100, 0).await.unwrap();
    assert!(matches!(out[0], SendOutcome::Committed(_)), "{out:?}");
}

async fn device_delete_purges_everything(store: Store) {
    store.create_user(ALICE, Some("h"), None, 0).await.unwrap();
    store
        .login_device(ALICE, "GONE", None, &hash("t-gone"), 0)
        .await
        .unwrap();
    store
        .login_device(ALICE, "STAYS", None, &hash("t-stays"), 0)
        .await
        .unwrap();
    for device in ["GONE", "STAYS"] {
        store
            .set_device_keys(ALICE, device, r#"{"dk":1}"#, 0)
            .await
            .unwrap();
        let otks: Vec<KeyUpload> = (0..3)
            .map(|i| KeyUpload {
                algorithm: "signed_curve25519".into(),
                key_id: format!("K{i}"),
                json: format!(r#"{{"key":"{device}{i}"}}"#),
            })
            .collect();
        store
            .add_one_time_keys(ALICE, device, &otks, 0)
            .await
            .unwrap();
        store
            .set_fallback_keys(
                ALICE,
                device,
                &[KeyUpload {
                    algorithm: "signed_curve25519".into(),
                    key_id: "F".into(),
                    json: "{}".into(),
                }],
            )
            .await
            .unwrap();
        // One claimed key, so the claimed-key memory has a row too.
        claim(&store, ALICE, device, "signed_curve25519")
            .await
            .unwrap();
        deliver(&store, ALICE, device, &format!("m-{device}")).await;
    }
    let total_before = store.inbox_total().await.unwrap();
    assert_eq!(total_before, 2);
    // An idempotency record of the device's own sends.
    let own_txn = TxnKey {
        user_id: ALICE.into(),
        device_id: "GONE".into(),
        endpoint: "sendToDevice/m.test".into(),
        txn_id: "mine".into(),
    };
    let own = SendRequest {
        txn: own_txn.clone(),
        local: vec![],
        remote: vec![],
    };
    store.commit_sends(&[own], 100, 0).await.unwrap();
    assert!(store.txn_seen(&own_txn).await.unwrap());

    store
        .delete_devices(ALICE, &["GONE".into(), "NEVER-EXISTED".into()], 5)
        .await
        .unwrap();
    assert_eq!(
        store.device_ids(ALICE).await.unwrap(),
        vec!["STAYS".to_owned()]
    );
    assert_eq!(store.token_owner(&hash("t-gone")).await.unwrap(), None);
    assert!(store.token_owner(&hash("t-stays")).await.unwrap().is_some());
    assert!(store
        .one_time_key_counts(ALICE, "GONE")
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store
            .get_fallback_key(ALICE, "GONE", "signed_curve25519")
            .await
            .unwrap(),
        None
    );
    assert_eq!(store.inbox_total().await.unwrap(), 1);
    let keys = store.get_device_keys(ALICE, &[]).await.unwrap();
    assert_eq!(keys.keys().collect::<Vec<_>>(), vec!["STAYS"]);
    // The other device is untouched.
    assert_eq!(
        store.one_time_key_counts(ALICE, "STAYS").await.unwrap()["signed_curve25519"],
        2
    );
    // Recreating the device starts empty: no old keys, no old mail, no remembered claims.
    store
        .login_device(ALICE, "GONE", None, &hash("t-gone2"), 10)
        .await
        .unwrap();
    assert!(store
        .one_time_key_counts(ALICE, "GONE")
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .ack_and_fetch_inbox(ALICE, "GONE", 0, 10)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .get_device_keys(ALICE, &["GONE".into()])
        .await
        .unwrap()
        .is_empty());
    assert!(!store.txn_seen(&own_txn).await.unwrap());
}

async fn device_recreated_gets_fresh_positions(store: Store) {
    store.create_user(ALICE, None, None, 0).await.unwrap();
    store
        .login_device(ALICE, "D", None, &hash("a"), 1_000)
        .await
        .unwrap();
    for i in 0..5 {
        deliver(&store, ALICE, "D", &format!("x{i}")).await;
    }
    let old = store.ack_and_fetch_inbox(ALICE, "D", 0, 10).await.unwrap();
    let old_last = old.last().unwrap().pos;
    store
        .delete_devices(ALICE, &["D".into()], 2_000)
        .await
        .unwrap();
    store
        .login_device(ALICE, "D", None, &hash("b"), 2_000)
        .await
        .unwrap();
    deliver(&store, ALICE, "D", "y").await;
    // A stale `since` from the old device must not acknowledge the new device's message.
    let new = store
        .ack_and_fetch_inbox(ALICE, "D", old_last, 10)
        .await
        .unwrap();
    assert_eq!(new.len(), 1);
    assert!(new[0].pos > old_last);
}

async fn display_names(store: Store) {
    store.create_user(ALICE, None, None, 0).await.unwrap();
    store
        .login_device(ALICE, "D", None, &hash("a"), 0)
        .await
        .unwrap();
    let list = store.list_devices(ALICE).await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].display_name, None);
    assert_eq!(list[0].last_seen_ip, None);
    store
        .set_device_display_name(ALICE, "D", Some("Laptop"))
        .await
        .unwrap();
    assert_eq!(
        store
            .get_device(ALICE, "D")
            .await
            .unwrap()
            .unwrap()
            .display_name
            .as_deref(),
        Some("Laptop")
    );
    store
        .set_device_display_name(ALICE, "D", None)
        .await
        .unwrap();
    assert_eq!(
        store
            .get_device(ALICE, "D")
            .await
            .unwrap()
            .unwrap()
            .display_name,
        None
    );
    assert!(matches!(
        store
            .set_device_display_name(ALICE, "NOPE", Some("x"))
            .await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.set_device_display_name(BOB, "D", Some("x")).await,
        Err(StoreError::NotFound)
    ));
}
