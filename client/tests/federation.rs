//! End-to-end across two federated homeservers (HTTPS with a test CA on 127.0.0.1 and
//! 127.0.0.2): Alice with two devices on one, Bob on the other.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{federation_section, Db, Device, Server, ServerOptions, TestCa};

fn two_servers(ca: &TestCa, db: Db) -> (Server, Server) {
    let a = Server::start(ServerOptions {
        ca: Some(ca),
        db,
        ip: "127.0.0.1",
        extra: federation_section(ca),
    });
    let b = Server::start(ServerOptions {
        ca: Some(ca),
        db,
        ip: "127.0.0.2",
        extra: federation_section(ca),
    });
    (a, b)
}

fn federated_conversation(db: Db) {
    let ca = TestCa::new();
    let (alpha, beta) = two_servers(&ca, db);
    let data = tempfile::tempdir().unwrap();
    let alice1 = Device::register(data.path(), "alice1", &alpha, Some(&ca), "alice");
    let alice2 = alice1.login_new_device("alice2", &[]);
    let bob = Device::register(data.path(), "bob", &beta, Some(&ca), "bob");

    // Alice -> Bob across servers; her second device gets her copy.
    let sent = alice1.send(&bob, "hello beta").ok();
    assert!(sent.stdout.contains("2 devices"), "{sent:?}");
    assert_eq!(Device::bodies(&bob.receive_n(1, 60)), vec!["hello beta"]);
    let copy = alice2.receive_n(1, 30);
    assert_eq!(Device::bodies(&copy), vec!["hello beta"]);

    // Bob -> Alice reaches both of her devices.
    bob.send(&alice1, "hello alpha").ok();
    assert_eq!(
        Device::bodies(&alice1.receive_n(1, 60)),
        vec!["hello alpha"]
    );
    assert_eq!(
        Device::bodies(&alice2.receive_n(1, 60)),
        vec!["hello alpha"]
    );

    // Bob offline: everything waits and arrives in order, exactly once.
    let lines: Vec<String> = (1..=40).map(|i| format!("queued {i}")).collect();
    alice2
        .run_with_input(&["send", &bob.user_id, "--lines"], &lines.join("\n"))
        .ok();
    let got = bob.receive_n(40, 90);
    assert_eq!(Device::bodies(&got), lines);
}

#[test]
fn federated_conversation_sqlite() {
    federated_conversation(Db::Sqlite);
}

#[test]
fn federated_conversation_postgres() {
    federated_conversation(Db::Postgres);
}
