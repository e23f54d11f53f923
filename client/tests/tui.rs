//! The terminal chat on ratatui's `TestBackend`, wired to a real client and server: it shows
//! a received message, sends one typed on the keyboard, and opens the verify view.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Device, Server, TestCa};
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use hush_client::tui::{Action, ChatApp, View};
use ratatui::backend::TestBackend;
use ratatui::Terminal;

fn screen(terminal: &Terminal<TestBackend>) -> String {
    let buffer = terminal.backend().buffer();
    let mut out = String::new();
    for y in 0..buffer.area.height {
        for x in 0..buffer.area.width {
            out.push_str(buffer[(x, y)].symbol());
        }
        out.push('\n');
    }
    out
}

fn key(code: KeyCode) -> KeyEvent {
    KeyEvent::new(code, KeyModifiers::NONE)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_shows_received_message_and_sends_typed_one() {
    let ca = TestCa::new();
    let server = Server::start_local(&ca);
    let data = tempfile::tempdir().unwrap();
    let alice = Device::register(data.path(), "alice", &server, Some(&ca), "alice");
    let bob = Device::register(data.path(), "bob", &server, Some(&ca), "bob");
    alice.send(&bob, "hello from the command line").ok();

    let client = bob.open_client().await;
    let history = client.store().history(&alice.user_id, 100).await.unwrap();
    let mut app = ChatApp::new(&bob.user_id, &alice.user_id, history);
    let mut terminal = Terminal::new(TestBackend::new(100, 20)).unwrap();

    // The sync loop delivers Alice's message; the screen shows it.
    let outcome = client.sync_once(0).await.unwrap();
    assert_eq!(outcome.messages.len(), 1);
    app.on_sync(&outcome);
    terminal.draw(|f| app.draw(f)).unwrap();
    let text = screen(&terminal);
    assert!(text.contains("hello from the command line"), "{text}");
    assert!(text.contains(&alice.user_id), "{text}");

    // Type a reply and press Enter.
    for c in "reply typed in the chat".chars() {
        assert_eq!(app.on_key(key(KeyCode::Char(c))), None);
    }
    terminal.draw(|f| app.draw(f)).unwrap();
    assert!(screen(&terminal).contains("reply typed in the chat"));
    let action = app.on_key(key(KeyCode::Enter)).unwrap();
    assert_eq!(action, Action::Send("reply typed in the chat".into()));
    app.perform(&client, &action).await.unwrap();
    terminal.draw(|f| app.draw(f)).unwrap();
    let text = screen(&terminal);
    assert!(
        text.contains("you: reply typed in the chat ✓"),
        "delivered mark: {text}"
    );

    // Alice receives it.
    assert_eq!(
        Device::bodies(&alice.receive()),
        vec!["reply typed in the chat"]
    );

    // The verify view shows the same safety number as `hush verify`.
    let action = app.on_key(key(KeyCode::F(2))).unwrap();
    app.perform(&client, &action).await.unwrap();
    assert_eq!(app.view(), View::Verify);
    terminal.draw(|f| app.draw(f)).unwrap();
    let text = screen(&terminal);
    let cli = alice.run(&["verify", &bob.user_id]).ok();
    let first_group: String = cli
        .stdout
        .lines()
        .nth(2)
        .unwrap()
        .trim()
        .split(' ')
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(first_group.len(), 5);
    assert!(text.contains(&first_group), "{text}\n{}", cli.stdout);
    assert_eq!(app.on_key(key(KeyCode::Esc)), None);
    assert_eq!(app.view(), View::Chat);
    assert_eq!(app.on_key(key(KeyCode::Esc)), Some(Action::Quit));
}
