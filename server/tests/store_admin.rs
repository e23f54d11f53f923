//! Admin command functions against a real store, on SQLite and on PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common_db;

use hush_server::admin::{self, AdminError};
use hush_server::password;
use hush_server::store::Store;

store_tests!(admin_users, admin_registration_tokens);

const HS: &str = "hs.test";

async fn admin_users(store: Store) {
    let id = admin::create_user(&store, HS, "Alice", Some("pw-1".into()))
        .await
        .unwrap();
    assert_eq!(id, "@alice:hs.test");
    let row = store.get_user(&id).await.unwrap().unwrap();
    let hash = row.password_hash.unwrap();
    assert!(password::verify_password("pw-1".into(), hash.clone())
        .await
        .unwrap());
    assert!(!password::verify_password("pw-2".into(), hash)
        .await
        .unwrap());

    assert!(matches!(
        admin::create_user(&store, HS, "@alice:hs.test", None).await,
        Err(AdminError::UserExists(_))
    ));
    assert!(matches!(
        admin::create_user(&store, HS, "bad name", None).await,
        Err(AdminError::InvalidUser(_))
    ));
    assert!(matches!(
        admin::create_user(&store, HS, "bob", Some(String::new())).await,
        Err(AdminError::InvalidPassword(_))
    ));

    admin::set_password(&store, HS, "alice", "pw-2".into())
        .await
        .unwrap();
    let hash = store
        .get_user(&id)
        .await
        .unwrap()
        .unwrap()
        .password_hash
        .unwrap();
    assert!(password::verify_password("pw-2".into(), hash)
        .await
        .unwrap());

    store
        .login_device(&id, "DEV", Some("Phone"), b"token-hash", 0)
        .await
        .unwrap();
    let devices = admin::list_devices(&store, HS, "alice").await.unwrap();
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].device_id, "DEV");
    assert!(matches!(
        admin::list_devices(&store, HS, "nobody").await,
        Err(AdminError::UserNotFound(_))
    ));

    assert_eq!(
        admin::deactivate_user(&store, HS, "alice").await.unwrap(),
        id
    );
    assert!(admin::list_devices(&store, HS, "alice")
        .await
        .unwrap()
        .is_empty());
    assert!(store.get_user(&id).await.unwrap().unwrap().deactivated);
    assert!(matches!(
        admin::set_password(&store, HS, "alice", "pw-3".into()).await,
        Err(AdminError::UserNotFound(_))
    ));
    assert!(matches!(
        admin::deactivate_user(&store, HS, "nobody").await,
        Err(AdminError::UserNotFound(_))
    ));
}

async fn admin_registration_tokens(store: Store) {
    let far = 4_102_444_800_000; // 2100-01-01
    let named = admin::create_registration_token(&store, Some("invite-1"), Some(2), Some(far))
        .await
        .unwrap();
    assert_eq!(named.token, "invite-1");
    let generated = admin::create_registration_token(&store, None, None, None)
        .await
        .unwrap();
    assert_eq!(generated.token.len(), 24);
    assert!(matches!(
        admin::create_registration_token(&store, Some("invite-1"), None, None).await,
        Err(AdminError::TokenExists)
    ));
    assert!(matches!(
        admin::create_registration_token(&store, Some("bad token"), None, None).await,
        Err(AdminError::InvalidToken(_))
    ));
    assert!(matches!(
        admin::create_registration_token(&store, None, Some(0), None).await,
        Err(AdminError::InvalidToken(_))
    ));
    assert!(matches!(
        admin::create_registration_token(&store, None, None, Some(1)).await,
        Err(AdminError::InvalidToken(_))
    ));

    store
        .create_user("@r:hs.test", None, Some("invite-1"), 0)
        .await
        .unwrap();
    let list = admin::list_registration_tokens(&store).await.unwrap();
    assert_eq!(list.len(), 2);
    let invite = list.iter().find(|t| t.token == "invite-1").unwrap();
    assert_eq!(
        (invite.uses_allowed, invite.completed, invite.expiry_ts),
        (Some(2), 1, Some(far))
    );

    admin::revoke_registration_token(&store, "invite-1")
        .await
        .unwrap();
    assert!(matches!(
        admin::revoke_registration_token(&store, "invite-1").await,
        Err(AdminError::TokenNotFound)
    ));
    assert_eq!(
        admin::list_registration_tokens(&store).await.unwrap().len(),
        1
    );
}
