//! Cross-process wake-ups on PostgreSQL (`LISTEN`/`NOTIFY`).
//!
//! Writes that should wake a waiting `/sync` (new mail for a device, a claimed one-time key)
//! send `NOTIFY hush_wake` inside their transaction, so PostgreSQL delivers it only if and when
//! the transaction commits, to every `hushd` process listening. Device-list changes are
//! announced right after their commit with [`Store::notify_device_lists`]. On SQLite (one
//! process) all of this is a no-op and the in-process notifier is enough.
//!
//! Every payload carries the sending process's [`instance_id`], so a listener can skip its own
//! notifications (that process already woke its local waiters directly).
//!
//! A group commit wakes all its recipient devices with ONE notification (a few when the list
//! is longer than PostgreSQL's payload limit, see [`MAX_PAYLOAD`]): every notification costs
//! the committing transaction a queue entry and every listening process a round of parsing,
//! so one per device made the relay's cost grow with the messages instead of the commits.

use std::collections::VecDeque;
use std::sync::OnceLock;

use sqlx::postgres::PgListener;
use sqlx::PgPool;

use super::{Backend, Store, StoreResult};

/// The channel all wake-ups use.
pub const WAKE_CHANNEL: &str = "hush_wake";

/// Separates user ID and device ID in a payload (neither can contain a tab).
const SEPARATOR: char = '\t';

/// First field of the payload announcing a device-list change (user IDs start with `@`).
const DEVICE_LISTS: &str = "*lists";

/// First field of the payload announcing that access tokens were revoked.
const TOKENS: &str = "*tokens";

/// First field of a payload that wakes several devices: `*devices\t<instance>` followed by one
/// `\n<user>\t<device>` per device.
const DEVICES: &str = "*devices";

/// Separates the devices of a multi-device payload (IDs contain no newline).
const LINE: char = '\n';

/// Longest payload sent, in bytes. PostgreSQL refuses payloads of 8,000 bytes or more; longer
/// device lists are split over several notifications.
const MAX_PAYLOAD: usize = 7_900;

/// A random number identifying this process in wake-up payloads (fixed for its lifetime).
pub fn instance_id() -> u64 {
    static ID: OnceLock<u64> = OnceLock::new();
    *ID.get_or_init(rand::random::<u64>)
}

/// The single-device payload that wakes `(user_id, device_id)`. Processes of this version
/// send [`wake_payloads`] instead; this form is still parsed, as processes of earlier versions
/// send it during a rolling upgrade.
#[cfg(test)]
fn wake_payload(user_id: &str, device_id: &str) -> String {
    format!(
        "{user_id}{SEPARATOR}{device_id}{SEPARATOR}{:016x}",
        instance_id()
    )
}

/// The payloads that wake `devices` (each `(user_id, device_id)`): one per [`MAX_PAYLOAD`]
/// bytes of device list, and none for an empty list.
pub(super) fn wake_payloads<'a>(
    devices: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Vec<String> {
    let head = format!("{DEVICES}{SEPARATOR}{:016x}", instance_id());
    let mut out = Vec::new();
    let mut current = String::new();
    for (user_id, device_id) in devices {
        let line_len = 2 + user_id.len() + device_id.len();
        if !current.is_empty() && current.len() + line_len > MAX_PAYLOAD {
            out.push(std::mem::take(&mut current));
        }
        if current.is_empty() {
            current.push_str(&head);
        }
        current.push(LINE);
        current.push_str(user_id);
        current.push(SEPARATOR);
        current.push_str(device_id);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Parses a multi-device payload (`*devices\t<instance>\n<user>\t<device>...`).
fn parse_devices(payload: &str, own: &str) -> Option<(Vec<Wakeup>, bool)> {
    let mut lines = payload.split(LINE);
    let head = lines.next()?;
    let sender = head.strip_prefix(DEVICES)?.strip_prefix(SEPARATOR)?;
    let mut devices = Vec::new();
    for line in lines {
        let (user_id, device_id) = line.split_once(SEPARATOR)?;
        if !user_id.starts_with('@') {
            return None;
        }
        devices.push(Wakeup::Device {
            user_id: user_id.to_owned(),
            device_id: device_id.to_owned(),
        });
    }
    Some((devices, sender == own))
}

/// Parses a payload into its events and whether this process sent it; `None` for foreign
/// payloads (someone else using the channel).
fn parse_payloads(payload: &str) -> Option<(Vec<Wakeup>, bool)> {
    let own = format!("{:016x}", instance_id());
    if payload.starts_with(DEVICES) {
        return parse_devices(payload, &own);
    }
    if payload.starts_with(DEVICE_LISTS) && payload.contains(LINE) {
        // `*lists\t<instance>` followed by one `\n<user>` per changed user.
        let mut lines = payload.split(LINE);
        let sender = lines
            .next()?
            .strip_prefix(DEVICE_LISTS)?
            .strip_prefix(SEPARATOR)?;
        let users: Vec<String> = lines.map(str::to_owned).collect();
        if users.iter().any(|u| !u.starts_with('@')) {
            return None;
        }
        return Some((vec![Wakeup::DeviceListsOf(users)], sender == own));
    }
    let (wakeup, own) = parse_payload(payload)?;
    Some((vec![wakeup], own))
}

/// Parses a single-event payload into the event and whether this process sent it; `None` for
/// foreign payloads (someone else using the channel).
fn parse_payload(payload: &str) -> Option<(Wakeup, bool)> {
    let mut parts = payload.split(SEPARATOR);
    let first = parts.next()?;
    let own = format!("{:016x}", instance_id());
    if first == DEVICE_LISTS {
        let sender = parts.next()?;
        return Some((Wakeup::DeviceLists, sender == own));
    }
    if first == TOKENS {
        let sender = parts.next()?;
        return Some((Wakeup::Tokens, sender == own));
    }
    if !first.starts_with('@') {
        return None;
    }
    let device_id = parts.next()?;
    // Payloads of older versions have no instance field: treat them as foreign.
    let sender = parts.next().unwrap_or("");
    Some((
        Wakeup::Device {
            user_id: first.to_owned(),
            device_id: device_id.to_owned(),
        },
        sender == own,
    ))
}

/// Backend-specific "wake these devices when this transaction commits".
pub(super) trait WakeOnCommit {
    /// Queues one notification per payload (PostgreSQL) or does nothing (SQLite).
    async fn wake_on_commit(&mut self, payloads: &[String]) -> Result<(), sqlx::Error>;
}

impl WakeOnCommit for sqlx::SqliteConnection {
    async fn wake_on_commit(&mut self, _payloads: &[String]) -> Result<(), sqlx::Error> {
        Ok(())
    }
}

impl WakeOnCommit for sqlx::PgConnection {
    async fn wake_on_commit(&mut self, payloads: &[String]) -> Result<(), sqlx::Error> {
        if payloads.is_empty() {
            return Ok(());
        }
        sqlx::query("SELECT pg_notify($1, p) FROM UNNEST($2::text[]) AS p")
            .bind(WAKE_CHANNEL)
            .bind(payloads)
            .execute(&mut *self)
            .await?;
        Ok(())
    }
}

/// One received wake-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wakeup {
    /// This device has news (mail, or one of its one-time keys was claimed).
    Device {
        /// User ID.
        user_id: String,
        /// Device ID.
        device_id: String,
    },
    /// Some user's device list changed (which one is not known).
    DeviceLists,
    /// The device lists of these users changed.
    DeviceListsOf(Vec<String>),
    /// Access tokens were revoked by another process: forget remembered token look-ups. The
    /// listener has already emptied this store's token cache when it returns this.
    Tokens,
    /// The listening connection was lost and has just been re-established; notifications may
    /// have been missed in between, so every waiter should re-check.
    Lost,
}

/// A dedicated connection listening for wake-ups from every process (PostgreSQL only).
///
/// When the connection drops, [`WakeListener::recv`] tries to open a new one: it returns an
/// error while the database cannot be reached (call it again, after a pause, to retry) and
/// [`Wakeup::Lost`] once listening again.
pub struct WakeListener {
    store: Store,
    pool: PgPool,
    listener: Option<PgListener>,
    include_own: bool,
    /// Events of a multi-device notification not yet returned.
    pending: VecDeque<Wakeup>,
}

impl std::fmt::Debug for WakeListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WakeListener")
            .field("connected", &self.listener.is_some())
            .finish_non_exhaustive()
    }
}

async fn listen(pool: &PgPool) -> StoreResult<PgListener> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(WAKE_CHANNEL).await?;
    Ok(listener)
}

impl WakeListener {
    /// Also report notifications sent by this process (normally skipped: the process woke its
    /// own waiters already). For tests that run several stores in one process.
    pub fn include_own(&mut self, include: bool) {
        self.include_own = include;
    }

    /// Drops the listening connection as if it had been lost (for tests of the reconnect
    /// path); the next [`WakeListener::recv`] reconnects and reports [`Wakeup::Lost`].
    pub fn disconnect(&mut self) {
        self.listener = None;
    }

    /// Waits for the next wake-up from another process.
    ///
    /// A revocation of access tokens ([`Wakeup::Tokens`]) empties this store's token cache
    /// before it is returned, so a request that starts after the relay saw it cannot use a
    /// remembered look-up of a revoked token. A lost connection empties it too (revocations
    /// may have been missed).
    pub async fn recv(&mut self) -> StoreResult<Wakeup> {
        loop {
            if let Some(wakeup) = self.pending.pop_front() {
                return Ok(wakeup);
            }
            let Some(listener) = self.listener.as_mut() else {
                self.listener = Some(listen(&self.pool).await?);
                self.store.tokens.invalidate();
                return Ok(Wakeup::Lost);
            };
            match listener.try_recv().await {
                Ok(Some(notification)) => {
                    if let Some((wakeups, own)) = parse_payloads(notification.payload()) {
                        if !own || self.include_own {
                            if wakeups.contains(&Wakeup::Tokens) {
                                self.store.tokens.invalidate();
                            }
                            self.pending.extend(wakeups);
                        }
                    }
                }
                // Lost; `PgListener` has already reconnected and listens again.
                Ok(None) => {
                    self.store.tokens.invalidate();
                    return Ok(Wakeup::Lost);
                }
                Err(e) => {
                    // Lost and not re-established: start over with a fresh listener.
                    self.listener = None;
                    return Err(e.into());
                }
            }
        }
    }
}

impl Store {
    /// Starts listening for wake-ups sent by any process sharing this PostgreSQL database;
    /// `None` on SQLite (single process, nothing to listen to).
    pub async fn listen_wakeups(&self) -> StoreResult<Option<WakeListener>> {
        match &self.backend {
            Backend::Sqlite { .. } => Ok(None),
            Backend::Postgres(pool) => Ok(Some(WakeListener {
                store: self.clone(),
                pool: pool.clone(),
                listener: Some(listen(pool).await?),
                include_own: false,
                pending: VecDeque::new(),
            })),
        }
    }

    /// Forgets this process's remembered token look-ups and, on PostgreSQL, tells every other
    /// process to forget theirs (call after a transaction that may have deleted access tokens,
    /// committed or not). If the notification cannot be sent, other processes still stop
    /// accepting a revoked token within [`super::TOKEN_CACHE_TTL`].
    pub(super) async fn tokens_revoked(&self) {
        self.tokens.invalidate();
        if let Backend::Postgres(pool) = &self.backend {
            let sent = sqlx::query("SELECT pg_notify($1, $2)")
                .bind(WAKE_CHANNEL)
                .bind(format!("{TOKENS}{SEPARATOR}{:016x}", instance_id()))
                .execute(pool)
                .await;
            if let Err(e) = sent {
                tracing::warn!(error = %e, "cannot announce a token revocation to other processes");
            }
        }
    }

    /// Tells every process that the device lists of `users` changed, or, with no users, that
    /// some device list changed (call after the change committed). Long user lists are split
    /// over several notifications. A no-op on SQLite.
    pub async fn notify_device_lists(&self, users: &[String]) -> StoreResult<()> {
        let Backend::Postgres(pool) = &self.backend else {
            return Ok(());
        };
        let head = format!("{DEVICE_LISTS}{SEPARATOR}{:016x}", instance_id());
        let mut payloads = Vec::new();
        let mut current = head.clone();
        for user in users {
            if current.len() > head.len() && current.len() + 1 + user.len() > MAX_PAYLOAD {
                payloads.push(std::mem::replace(&mut current, head.clone()));
            }
            current.push(LINE);
            current.push_str(user);
        }
        payloads.push(current);
        sqlx::query("SELECT pg_notify($1, p) FROM UNNEST($2::text[]) AS p")
            .bind(WAKE_CHANNEL)
            .bind(payloads)
            .execute(pool)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_mark_their_sender() {
        let p = wake_payload("@a:hs", "DEV");
        assert_eq!(
            parse_payload(&p),
            Some((
                Wakeup::Device {
                    user_id: "@a:hs".into(),
                    device_id: "DEV".into()
                },
                true
            ))
        );
        let foreign = "@a:hs\tDEV\t0000000000000000";
        assert!(matches!(parse_payload(foreign), Some((_, false))) || instance_id() == 0);
        assert_eq!(parse_payload("@a:hs\tDEV").map(|(_, own)| own), Some(false));
        assert_eq!(
            parse_payload(&format!("{DEVICE_LISTS}\t{:016x}", instance_id())),
            Some((Wakeup::DeviceLists, true))
        );
        assert_eq!(parse_payload("hello"), None);
        let lists = format!("{DEVICE_LISTS}\t{:016x}\n@a:hs\n@b:hs", instance_id());
        assert_eq!(
            parse_payloads(&lists),
            Some((
                vec![Wakeup::DeviceListsOf(vec!["@a:hs".into(), "@b:hs".into()])],
                true
            ))
        );
        let many: Vec<String> = (0..2_000).map(|i| format!("@user{i}:hs")).collect();
        let payloads = wake_payloads(many.iter().map(|u| (u.as_str(), "DEVICE")));
        assert!(payloads.len() > 1, "split over several notifications");
        let mut woken = Vec::new();
        for p in &payloads {
            assert!(p.len() <= MAX_PAYLOAD);
            let (events, own) = parse_payloads(p).unwrap_or_default();
            assert!(own);
            woken.extend(events);
        }
        assert_eq!(woken.len(), many.len());
        assert_eq!(
            woken.first(),
            Some(&Wakeup::Device {
                user_id: "@user0:hs".into(),
                device_id: "DEVICE".into()
            })
        );
        assert_eq!(parse_payload(""), None);
    }
}
