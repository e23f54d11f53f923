//! End-to-end tests on one homeserver: real `hushd` (HTTPS with a test CA, SQLite or
//! PostgreSQL) and the real `hush` binary, one profile per device.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{Db, Device, Server, ServerOptions, TestCa};

struct World {
    _data: tempfile::TempDir,
    ca: TestCa,
    server: Server,
}

fn world(db: Db) -> World {
    let ca = TestCa::new();
    let server = Server::start(ServerOptions {
        ca: Some(&ca),
        db,
        ip: "127.0.0.1",
        extra: String::new(),
    });
    World {
        _data: tempfile::tempdir().unwrap(),
        ca,
        server,
    }
}

impl World {
    fn device(&self, profile: &str, name: &str) -> Device {
        Device::register(
            self._data.path(),
            profile,
            &self.server,
            Some(&self.ca),
            name,
        )
    }
}

fn multi_device_both_ways(db: Db) {
    let w = world(db);
    let alice1 = w.device("alice1", "alice");
    let alice2 = alice1.login_new_device("alice2", &[]);
    let bob = w.device("bob", "bob");

    let sent = alice1.send(&bob, "hello bob from alice1").ok();
    assert!(sent.stdout.contains("2 devices"), "bob + alice2: {sent:?}");
    let got = bob.receive();
    assert_eq!(Device::bodies(&got), vec!["hello bob from alice1"]);
    assert_eq!(got[got.len() - 1]["from"], alice1.user_id.as_str());
    // Alice's other device gets her own copy, filed under the conversation with Bob.
    let own = alice2.receive();
    let copies: Vec<_> = own.iter().filter(|v| v["type"] == "message").collect();
    assert_eq!(copies.len(), 1, "{own:?}");
    assert_eq!(copies[0]["outgoing"], true);
    assert_eq!(copies[0]["peer"], bob.user_id.as_str());

    bob.send(&alice1, "hi both alices").ok();
    alice2.send(&bob, "and hello from alice2").ok();
    let a1 = alice1.receive();
    assert_eq!(
        Device::bodies(&a1),
        vec!["hi both alices", "and hello from alice2"]
    );
    let a2 = alice2.receive();
    assert_eq!(Device::bodies(&a2), vec!["hi both alices"]);
    assert_eq!(
        Device::bodies(&bob.receive()),
        vec!["and hello from alice2"]
    );

    // Nothing is delivered twice.
    for d in [&alice1, &alice2, &bob] {
        assert!(Device::bodies(&d.receive()).is_empty());
    }
    // History holds the whole conversation, in arrival order, on Alice's first device.
    let h = alice1
        .run(&["history", &bob.user_id, "--json"])
        .ok()
        .json_lines();
    assert_eq!(
        Device::bodies(&h),
        vec![
            "hello bob from alice1",
            "hi both alices",
            "and hello from alice2"
        ]
    );
}

#[test]
fn multi_device_messages_reach_every_device_sqlite() {
    multi_device_both_ways(Db::Sqlite);
}

#[test]
fn multi_device_messages_reach_every_device_postgres() {
    multi_device_both_ways(Db::Postgres);
}

#[test]
fn offline_recipient_gets_everything_in_order_exactly_once() {
    let w = world(Db::Sqlite);
    let alice = w.device("alice", "alice");
    let bob = w.device("bob", "bob");
    // Lines too long to share a batch (two exceed BATCH_PAYLOAD_BUDGET), so each is its own
    // request and to-device event.
    let padding = "x".repeat(hush_client::engine::BATCH_PAYLOAD_BUDGET / 2);
    let lines: Vec<String> = (1..=150)
        .map(|i| format!("message number {i} {padding}"))
        .collect();
    alice
        .run_with_input(&["send", &bob.user_id, "--lines"], &lines.join("\n"))
        .ok();
    // More than one sync batch is waiting (the server sends at most 100 events per answer).
    let got = bob.receive();
    assert_eq!(Device::bodies(&got), lines);
    assert!(Device::bodies(&bob.receive()).is_empty());
    let seqs: Vec<i64> = got.iter().filter_map(|v| v["seq"].as_i64()).collect();
    assert!(seqs.windows(2).all(|p| p[0] < p[1]));
}

#[test]
fn new_device_of_a_contact_is_announced() {
    let w = world(Db::Sqlite);
    let alice = w.device("alice", "alice");
    let bob = w.device("bob", "bob");
    alice.send(&bob, "first").ok();
    assert!(alice.receive().is_empty());
    let bob2 = bob.login_new_device("bob2", &[]);
    // Alice's sync reports Bob's changed device list; listen shows the new device.
    let notices = alice.receive();
    let text: Vec<String> = notices
        .iter()
        .filter(|v| v["type"] == "notice")
        .map(|v| v["text"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        text.iter()
            .any(|t| t.contains("new device") && t.contains(&bob.user_id)),
        "{notices:?}"
    );
    // And the next message reaches both of Bob's devices.
    let sent = alice.send(&bob, "second").ok();
    assert!(sent.stdout.contains("2 devices"), "{sent:?}");
    assert_eq!(Device::bodies(&bob2.receive()), vec!["second"]);
    assert_eq!(Device::bodies(&bob.receive()), vec!["first", "second"]);
}

#[test]
fn verified_contact_identity_change_blocks_until_trusted() {
    let w = world(Db::Sqlite);
    let alice = w.device("alice", "alice");
    let bob = w.device("bob", "bob");
    alice.send(&bob, "before").ok();
    let v = alice.run(&["verify", &bob.user_id]).ok();
    let number: String = v
        .stdout
        .chars()
        .filter(char::is_ascii_digit)
        .take(60)
        .collect();
    assert_eq!(number.len(), 60, "{v:?}");
    // Bob sees the same safety number.
    let vb = bob.run(&["verify", &alice.user_id]).ok();
    let number_b: String = vb
        .stdout
        .chars()
        .filter(char::is_ascii_digit)
        .take(60)
        .collect();
    assert_eq!(number, number_b);
    alice.run(&["verify", &bob.user_id, "--mark-verified"]).ok();

    // Bob reinstalls: his old device is gone and a new identity appears.
    bob.run(&["logout"]).ok();
    let bob_new = Device {
        profile: "bob-new".into(),
        ..bob.clone()
    }
    .login_new_device("bob-new", &[]);

    let blocked = alice.send(&bob, "must not be sent");
    assert_eq!(blocked.code, 6, "{blocked:?}");
    assert!(blocked.stderr.contains("hush trust"), "{blocked:?}");
    assert!(Device::bodies(&bob_new.receive()).is_empty());
    // The safety number changed.
    let v2 = alice.run(&["verify", &bob.user_id]).ok();
    let number2: String = v2
        .stdout
        .chars()
        .filter(char::is_ascii_digit)
        .take(60)
        .collect();
    assert_ne!(number, number2);

    alice.run(&["trust", &bob.user_id]).ok();
    alice.send(&bob, "after trust").ok();
    assert_eq!(Device::bodies(&bob_new.receive()), vec!["after trust"]);
}

#[test]
fn killed_mid_send_neither_loses_nor_duplicates() {
    let w = world(Db::Sqlite);
    let alice = w.device("alice", "alice");
    let bob = w.device("bob", "bob");
    alice.send(&bob, "warm-up").ok();
    let mut expected_max = 0;
    for round in 0..3 {
        let lines: Vec<String> = (0..8000).map(|i| format!("r{round} m{i}")).collect();
        let mut child = alice
            .command()
            .args(["send", &bob.user_id, "--lines"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // The input is larger than a pipe buffer: written by its own thread, which stops
        // when the kill closes the pipe.
        let mut stdin = child.stdin.take().unwrap();
        let input = lines.join("\n");
        let writer = std::thread::spawn(move || {
            use std::io::Write;
            let _ = stdin.write_all(input.as_bytes());
        });
        // Kill once the first lines of this round are committed (the send commits a chunk
        // of lines before its requests leave), a little later each round.
        let prefix = format!("r{round} m");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let latest = alice
                .run(&["history", &bob.user_id, "--json", "--limit", "1"])
                .ok()
                .json_lines();
            if Device::bodies(&latest)
                .iter()
                .any(|b| b.starts_with(&prefix))
            {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "round {round} committed nothing"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(150 * round));
        assert!(
            child.try_wait().unwrap().is_none(),
            "send finished before the kill"
        );
        child.kill().unwrap();
        child.wait().unwrap();
        writer.join().unwrap();
        expected_max += 1;
    }
    // Restarting flushes anything that was committed but not acknowledged.
    alice.send(&bob, "final").ok();
    let history: Vec<String> = Device::bodies(
        &alice
            .run(&["history", &bob.user_id, "--json", "--limit", "100000"])
            .ok()
            .json_lines(),
    );
    let got = Device::bodies(&bob.receive());
    assert_eq!(got, history, "Bob got exactly what Alice stored, in order");
    let mut unique = got.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), got.len(), "no duplicates");
    // Each round delivered a gap-free prefix of its lines.
    for round in 0..expected_max {
        let prefix = format!("r{round} m");
        let nums: Vec<usize> = got
            .iter()
            .filter_map(|b| b.strip_prefix(&prefix).map(|n| n.parse().unwrap()))
            .collect();
        assert!(
            !nums.is_empty(),
            "round {round} sent nothing before the kill"
        );
        assert_eq!(nums, (0..nums.len()).collect::<Vec<_>>());
    }
    assert_eq!(got.last().map(String::as_str), Some("final"));
}

#[test]
fn wrong_passphrase_and_unknown_user_are_clear_errors() {
    let w = world(Db::Sqlite);
    let alice = w.device("alice", "alice");
    let out = alice
        .command()
        .env("HUSH_PASSPHRASE", "not the passphrase")
        .args(["whoami"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("passphrase is wrong"));
    let nobody = format!("@nobody:{}", w.server.name);
    let r = alice.run(&["send", &nobody, "hi"]);
    assert_eq!(r.code, 7, "{r:?}");
    assert!(r.stderr.contains("does not exist"), "{r:?}");
    let r = alice.run(&["send", "not-a-user", "hi"]);
    assert_eq!(r.code, 2, "{r:?}");
    let who = alice.run(&["whoami"]).ok();
    assert!(who.stdout.contains(&alice.user_id));
}

#[test]
fn relogin_with_the_same_device_id_replaces_the_old_identity() {
    let w = world(Db::Sqlite);
    let alice = w.device("alice", "alice");
    let bob = w.device("bob", "bob");
    alice.send(&bob, "before").ok();
    assert_eq!(Device::bodies(&bob.receive()), vec!["before"]);
    let whoami = bob.run(&["whoami"]).ok();
    let device_id = whoami
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("device:"))
        .map(|d| d.trim().to_owned())
        .unwrap_or_else(|| panic!("{whoami:?}"));

    // Bob's local data is lost (no logout); he logs in again under the same device ID. The
    // server still holds that device's old keys, which the new identity must replace.
    std::fs::remove_dir_all(bob.profile_dir()).unwrap();
    let again = Device {
        profile: "bob-again".into(),
        ..bob.clone()
    };
    let login = again.run(&[
        "login",
        "bob",
        "--server",
        &bob.server,
        "--password-file",
        &w._data.path().join("bob.password").display().to_string(),
        "--ca-file",
        &w.ca.pem_path.display().to_string(),
        "--device-id",
        &device_id,
    ]);
    assert_eq!(login.code, 0, "{login:?}");
    assert!(login.stdout.contains(&device_id), "{login:?}");
    assert!(login.stderr.contains("replacing"), "{login:?}");

    // Alice is told the key changed and her next message reaches the new identity.
    let sent = alice.send(&bob, "after").ok();
    assert!(
        format!("{}{}", sent.stdout, sent.stderr).contains("CHANGED"),
        "{sent:?}"
    );
    assert_eq!(Device::bodies(&again.receive()), vec!["after"]);

    // A device ID the server does not know yet is simply taken, without any replacing.
    let fresh = Device {
        profile: "bob-fresh".into(),
        ..bob.clone()
    };
    let login = fresh.run(&[
        "login",
        "bob",
        "--server",
        &bob.server,
        "--password-file",
        &w._data.path().join("bob.password").display().to_string(),
        "--ca-file",
        &w.ca.pem_path.display().to_string(),
        "--device-id",
        "BRANDNEWDEVICE",
    ]);
    assert_eq!(login.code, 0, "{login:?}");
    assert!(login.stdout.contains("BRANDNEWDEVICE"), "{login:?}");
    assert!(!login.stderr.contains("replacing"), "{login:?}");
}
