//! `hush send --lines` with the real binary against a real `hushd` (HTTPS, SQLite): lines that
//! are ready go out together in batched requests (counted by the server's own
//! `hushd_http_requests_total` metric), arrive in order exactly once, and a line of a slow
//! stream is sent while the input is still open.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::process::Stdio;

use common::{Device, Server, TestCa};

const SEND_ROUTE: &str = "route=\"/_matrix/client/v3/sendToDevice/{event_type}/{txn_id}\"";

fn start() -> (TestCa, Server, tempfile::TempDir) {
    let ca = TestCa::new();
    let server = Server::start_local(&ca);
    (ca, server, tempfile::tempdir().unwrap())
}

/// How many `PUT sendToDevice` requests the server has answered (any status), from its
/// `/metrics`.
fn send_requests(server: &Server, ca: &TestCa) -> u64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let text = rt.block_on(async {
        hush_client::api::http_client(Some(&ca.pem_path))
            .unwrap()
            .get(format!("{}/metrics", server.url))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    text.lines()
        .filter(|l| {
            l.starts_with("hushd_http_requests_total{")
                && l.contains(SEND_ROUTE)
                && l.contains("method=\"PUT\"")
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

#[test]
fn ready_lines_go_out_in_batches_in_order_exactly_once() {
    let (ca, server, data) = start();
    let alice = Device::register(data.path(), "alice", &server, Some(&ca), "alice");
    let bob = Device::register(data.path(), "bob", &server, Some(&ca), "bob");
    let lines: Vec<String> = (0..600).map(|i| format!("line number {i:04}")).collect();
    // Empty lines (one every 50) are skipped.
    let mut input = String::new();
    for (i, line) in lines.iter().enumerate() {
        if i % 50 == 0 {
            input.push('\n');
        }
        input.push_str(line);
        input.push('\n');
    }
    let before = send_requests(&server, &ca);
    let out = alice
        .run_with_input(&["send", &bob.user_id, "--lines"], &input)
        .ok();
    let requests = send_requests(&server, &ca) - before;
    assert!(
        out.stdout.contains(&format!(
            "Sent {} messages to {}.",
            lines.len(),
            bob.user_id
        )),
        "{out:?}"
    );
    eprintln!("{requests} sendToDevice requests for {} lines", lines.len());
    assert!(requests > 0);
    // At most 64 messages per request: 10 requests if every line was ready in one chunk.
    assert!(
        requests * 4 <= lines.len() as u64,
        "{requests} requests for {} lines",
        lines.len()
    );
    let got = bob.receive();
    assert_eq!(Device::bodies(&got), lines, "in order");
    assert!(got.iter().all(|m| m["from"] == alice.user_id.as_str()));
    assert!(Device::bodies(&bob.receive()).is_empty(), "nothing twice");
    let history = alice
        .run(&["history", &bob.user_id, "--json", "--limit", "10000"])
        .ok()
        .json_lines();
    assert_eq!(Device::bodies(&history), lines);
    assert!(history.iter().all(|m| m["state"] == "sent"));
}

#[test]
fn a_line_of_a_slow_stream_is_sent_before_the_input_ends() {
    let (ca, server, data) = start();
    let alice = Device::register(data.path(), "alice", &server, Some(&ca), "alice");
    let bob = Device::register(data.path(), "bob", &server, Some(&ca), "bob");
    let mut child = alice
        .command()
        .args(["send", &bob.user_id, "--lines"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"first\n").unwrap();
    stdin.flush().unwrap();
    // Standard input stays open: "first" must arrive without waiting for more.
    let got = bob.receive_n(1, 60);
    assert_eq!(Device::bodies(&got), ["first"]);
    assert!(
        child.try_wait().unwrap().is_none(),
        "send still reads its input"
    );
    stdin.write_all(b"\nsecond\n").unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("Sent 2 messages to {}.", bob.user_id)),
        "{stdout}"
    );
    assert_eq!(Device::bodies(&bob.receive()), ["second"]);
}
