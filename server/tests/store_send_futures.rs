//! Compile-time check: every `Store` method returns a `Send` future, so axum handlers and
//! `tokio::spawn` can await them. (The function below is type-checked, never run.)
#![allow(dead_code)]

use hush_server::store::{PruneCutoffs, RegistrationTokenRow, Store, TxnKey};

fn is_send<T: Send>(_: T) {}

fn store_futures_are_send(s: &Store, t: &TxnKey, r: &RegistrationTokenRow, ids: &[String]) {
    is_send(s.clone());
    is_send(Store::connect(""));
    is_send(s.create_user("", None, None, 0));
    is_send(s.get_user(""));
    is_send(s.deactivate_user("", 0));
    is_send(s.set_password_hash("", ""));
    is_send(s.create_registration_token(r, 0));
    is_send(s.list_registration_tokens());
    is_send(s.revoke_registration_token(""));
    is_send(s.registration_token_valid("", 0));
    is_send(s.create_uia_session("", "", 0));
    is_send(s.get_uia_session(""));
    is_send(s.complete_uia_stage("", "", ""));
    is_send(s.delete_uia_session(""));
    is_send(s.login_device("", "", None, &[], 0));
    is_send(s.token_owner(&[]));
    is_send(s.token_owner_seen(&[], None, 0));
    is_send(s.list_devices(""));
    is_send(s.get_device("", ""));
    is_send(s.set_device_display_name("", "", None));
    is_send(s.delete_devices("", ids, 0));
    is_send(s.delete_all_devices("", 0));
    is_send(s.device_ids(""));
    is_send(s.set_device_keys("", "", "", 0));
    is_send(s.get_device_keys("", ids));
    is_send(s.add_one_time_keys("", "", &[], 0));
    is_send(s.set_fallback_keys("", "", &[]));
    is_send(s.one_time_key_counts("", ""));
    is_send(s.unused_fallback_key_types("", ""));
    is_send(s.claim_keys(&[], None, 0));
    is_send(s.get_fallback_key("", "", ""));
    is_send(s.device_list_position());
    is_send(s.device_list_changes("", 0));
    is_send(s.add_device_list_interest("", ids));
    is_send(s.record_device_list_changes(ids, 0));
    is_send(s.commit_sends(&[], 0, 0));
    is_send(s.ack_and_fetch_inbox("", "", 0, 0));
    is_send(s.inbox_last_pos("", ""));
    is_send(s.inbox_total());
    is_send(s.txn_seen(t));
    is_send(s.enqueue_outbound(&[], 0));
    is_send(s.outbound_due_destinations(0, 0));
    is_send(s.outbound_peek("", 0));
    is_send(s.outbound_delete(&[]));
    is_send(s.outbound_total());
    is_send(s.destination_state(""));
    is_send(s.prune(0, 0, 0));
    is_send(s.prune_with(PruneCutoffs {
        mailbox_before: 0,
        txn_before: 0,
        uia_before: 0,
        claimed_keys_before: 0,
    }));
    is_send(s.close());
}
