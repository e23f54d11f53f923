//! `hush chat USER`: a terminal chat (ratatui). The screen shows the conversation with
//! delivery marks, warnings about key changes, and an input line; F2 (or Ctrl-V) opens the
//! verify view with the safety number.
//!
//! [`ChatApp`] holds the screen state and is driven by key events and sync results, so it can
//! be tested with ratatui's `TestBackend`; [`run`] wires it to a real terminal.

use std::sync::Arc;
use std::time::Duration;

use crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Direction, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Wrap};
use ratatui::Frame;
use tokio::sync::mpsc;

use crate::cli::clock;
use crate::engine::{Client, ClientError, ClientResult, SyncOutcome};
use crate::store::StoredMessage;

/// Which screen is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// The conversation.
    Chat,
    /// The safety number and device keys.
    Verify,
}

/// What a key press asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this text.
    Send(String),
    /// Open the verify view (compute the safety number).
    OpenVerify,
    /// Mark the peer verified.
    MarkVerified,
    /// Accept the peer's changed identity.
    Trust,
    /// Leave.
    Quit,
}

/// The state of the chat screen.
#[derive(Debug)]
pub struct ChatApp {
    peer: String,
    me: String,
    messages: Vec<StoredMessage>,
    warnings: Vec<String>,
    input: String,
    status: String,
    view: View,
    verify_lines: Vec<String>,
}

impl ChatApp {
    /// A chat with `peer`, starting from the stored history.
    pub fn new(me: &str, peer: &str, history: Vec<StoredMessage>) -> Self {
        Self {
            peer: peer.to_owned(),
            me: me.to_owned(),
            messages: history,
            warnings: Vec::new(),
            input: String::new(),
            status: "Enter: send · F2: verify · Esc: quit".into(),
            view: View::Chat,
            verify_lines: Vec::new(),
        }
    }

    /// The current view.
    pub fn view(&self) -> View {
        self.view
    }

    /// Messages shown.
    pub fn messages(&self) -> &[StoredMessage] {
        &self.messages
    }

    /// Handles a key; returns what the caller must do.
    pub fn on_key(&mut self, key: KeyEvent) -> Option<Action> {
        if key.kind != KeyEventKind::Press {
            return None;
        }
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        match (self.view, key.code) {
            (_, KeyCode::Char('c')) if ctrl => Some(Action::Quit),
            (View::Chat, KeyCode::Esc) => Some(Action::Quit),
            (View::Verify, KeyCode::Esc) => {
                self.view = View::Chat;
                None
            }
            (View::Chat, KeyCode::F(2)) => Some(Action::OpenVerify),
            (View::Chat, KeyCode::Char('v')) if ctrl => Some(Action::OpenVerify),
            (View::Verify, KeyCode::Char('m')) => Some(Action::MarkVerified),
            (View::Verify, KeyCode::Char('t')) => Some(Action::Trust),
            (View::Chat, KeyCode::Enter) => {
                let text = self.input.trim().to_owned();
                self.input.clear();
                (!text.is_empty()).then_some(Action::Send(text))
            }
            (View::Chat, KeyCode::Backspace) => {
                self.input.pop();
                None
            }
            (View::Chat, KeyCode::Char(c)) if !ctrl => {
                self.input.push(c);
                None
            }
            _ => None,
        }
    }

    /// Adds what a sync delivered (only this conversation's messages are shown).
    pub fn on_sync(&mut self, outcome: &SyncOutcome) {
        for m in &outcome.messages {
            if m.peer == self.peer {
                self.messages.push(m.clone());
            }
        }
        self.warnings.extend(outcome.notices.iter().cloned());
    }

    /// Shows a warning line.
    pub fn warn(&mut self, text: String) {
        self.warnings.push(text);
    }

    /// Performs an action against the client and updates the screen.
    pub async fn perform(&mut self, client: &Client, action: &Action) -> ClientResult<()> {
        match action {
            Action::Send(text) => match client.send_text(&self.peer, text).await {
                Ok(report) => {
                    self.warnings.extend(report.notices);
                    self.reload(client).await?;
                    self.status = format!("Sent to {} devices.", report.devices);
                }
                Err(e @ ClientError::Untrusted { .. }) => {
                    self.warnings.push(format!("NOT SENT: {e}"));
                }
                Err(e @ ClientError::Queued(_)) => {
                    self.reload(client).await?;
                    self.status = e.to_string();
                }
                Err(e) => self.warnings.push(format!("NOT SENT: {e}")),
            },
            Action::OpenVerify => {
                let (fp, mine, theirs, verified) = client.safety_number(&self.peer).await?;
                let mut lines = vec![format!("Safety number with {}:", self.peer), String::new()];
                let grouped = fp.grouped();
                let groups: Vec<&str> = grouped.split(' ').collect();
                for row in groups.chunks(4) {
                    lines.push(format!("    {}", row.join(" ")));
                }
                lines.push(String::new());
                lines.push(format!("Your devices ({}):", self.me));
                lines.extend(
                    mine.iter()
                        .map(|d| format!("    {}  {}", d.device_id, d.ed25519)),
                );
                lines.push(format!("Devices of {}:", self.peer));
                lines.extend(theirs.iter().map(|d| {
                    let mark = if d.approved {
                        ""
                    } else {
                        "  (CHANGED, not accepted)"
                    };
                    format!("    {}  {}{mark}", d.device_id, d.ed25519)
                }));
                lines.push(String::new());
                lines.push(if verified {
                    "Verified. t: accept changed keys · Esc: back".into()
                } else {
                    "Not verified. m: mark verified (only if the numbers match) · Esc: back".into()
                });
                self.verify_lines = lines;
                self.view = View::Verify;
            }
            Action::MarkVerified => {
                client.mark_verified(&self.peer).await?;
                self.status = format!("{} marked verified.", self.peer);
                self.view = View::Chat;
            }
            Action::Trust => {
                let n = client.trust(&self.peer).await?;
                self.status = format!("Accepted {n} changed device key(s) of {}.", self.peer);
                self.warnings.clear();
                self.view = View::Chat;
            }
            Action::Quit => {}
        }
        Ok(())
    }

    async fn reload(&mut self, client: &Client) -> ClientResult<()> {
        self.messages = client.store().history(&self.peer, 500).await?;
        Ok(())
    }

    /// Draws the screen.
    pub fn draw(&self, frame: &mut Frame<'_>) {
        let warn_height = if self.warnings.is_empty() { 0 } else { 3 };
        let chunks = Layout::default()
            .direction(Direction::Vertical)
            .constraints([
                Constraint::Length(1),
                Constraint::Length(warn_height),
                Constraint::Min(3),
                Constraint::Length(3),
                Constraint::Length(1),
            ])
            .split(frame.area());
        let title = Line::from(vec![
            Span::styled(" hush ", Style::default().add_modifier(Modifier::REVERSED)),
            Span::raw(format!(" {} ↔ {}", self.me, self.peer)),
        ]);
        frame.render_widget(Paragraph::new(title), chunks[0]);
        if !self.warnings.is_empty() {
            let last: Vec<Line> = self
                .warnings
                .iter()
                .rev()
                .take(1)
                .map(|w| Line::from(Span::styled(w.clone(), Style::default().fg(Color::Red))))
                .collect();
            frame.render_widget(
                Paragraph::new(last)
                    .wrap(Wrap { trim: true })
                    .block(Block::default().borders(Borders::ALL).title("warning")),
                chunks[1],
            );
        }
        match self.view {
            View::Chat => {
                let height = chunks[2].height.saturating_sub(2) as usize;
                let lines: Vec<Line> = self
                    .messages
                    .iter()
                    .rev()
                    .take(height)
                    .rev()
                    .map(|m| {
                        let who = if m.outgoing {
                            "you".to_owned()
                        } else {
                            m.sender_user.clone()
                        };
                        let mark = match (m.outgoing, m.state.as_str()) {
                            (true, "pending") => " …",
                            (true, _) => " ✓",
                            _ => "",
                        };
                        Line::from(vec![
                            Span::styled(
                                format!("{} ", clock(m.ts)),
                                Style::default().fg(Color::DarkGray),
                            ),
                            Span::styled(
                                format!("{who}: "),
                                Style::default().add_modifier(Modifier::BOLD),
                            ),
                            Span::raw(m.body.clone()),
                            Span::styled(mark, Style::default().fg(Color::Green)),
                        ])
                    })
                    .collect();
                frame.render_widget(
                    Paragraph::new(lines)
                        .wrap(Wrap { trim: false })
                        .block(Block::default().borders(Borders::ALL).title("messages")),
                    chunks[2],
                );
            }
            View::Verify => {
                let lines: Vec<Line> = self
                    .verify_lines
                    .iter()
                    .map(|l| Line::from(l.clone()))
                    .collect();
                frame.render_widget(
                    Paragraph::new(lines)
                        .block(Block::default().borders(Borders::ALL).title("verify")),
                    chunks[2],
                );
            }
        }
        frame.render_widget(
            Paragraph::new(self.input.as_str())
                .block(Block::default().borders(Borders::ALL).title("message")),
            chunks[3],
        );
        frame.render_widget(
            Paragraph::new(Span::styled(
                self.status.clone(),
                Style::default().fg(Color::DarkGray),
            )),
            chunks[4],
        );
    }
}

/// Runs the chat in the terminal until the user quits.
pub async fn run(client: Client, peer: &str) -> ClientResult<()> {
    let client = Arc::new(client);
    if let Err(e) = client.flush_outbox().await {
        tracing::debug!("outbox not flushed: {e}");
    }
    let history = client.store().history(peer, 500).await?;
    let mut app = ChatApp::new(client.user_id(), peer, history);

    let (key_tx, mut key_rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || loop {
        match event::poll(Duration::from_millis(200)) {
            Ok(true) => match event::read() {
                Ok(Event::Key(k)) => {
                    if key_tx.send(k).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            },
            Ok(false) => {
                if key_tx.is_closed() {
                    return;
                }
            }
            Err(_) => return,
        }
    });
    let (sync_tx, mut sync_rx) = mpsc::unbounded_channel();
    let sync_client = Arc::clone(&client);
    let syncer = tokio::spawn(async move {
        loop {
            let r = sync_client.sync_once(25_000).await;
            let failed = r.is_err();
            if sync_tx.send(r).is_err() {
                return;
            }
            if failed {
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    });

    let mut terminal = ratatui::init();
    let result: ClientResult<()> = async {
        loop {
            terminal
                .draw(|f| app.draw(f))
                .map_err(|e| ClientError::Invalid(format!("terminal: {e}")))?;
            tokio::select! {
                Some(key) = key_rx.recv() => {
                    if let Some(action) = app.on_key(key) {
                        if action == Action::Quit {
                            return Ok(());
                        }
                        if let Err(e) = app.perform(&client, &action).await {
                            app.warn(e.to_string());
                        }
                    }
                }
                Some(r) = sync_rx.recv() => match r {
                    Ok(outcome) => app.on_sync(&outcome),
                    Err(e) => app.warn(format!("sync: {e}")),
                },
            }
        }
    }
    .await;
    ratatui::restore();
    syncer.abort();
    result
}
