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

/// A random number identifying this process in wake-up payloads (fixed for its lifetime).
pub fn instance_id() -> u64 {
    static ID: OnceLock<u64> = OnceLock::new();
    *ID.get_or_init(rand::random::<u64>)
}

/// The payload that wakes `(user_id, device_id)`.
pub(super) fn wake_payload(user_id: &str, device_id: &str) -> String {
    format!(
        "{user_id}{SEPARATOR}{device_id}{SEPARATOR}{:016x}",
        instance_id()
    )
}

/// Parses a payload into the event and whether this process sent it; `None` for foreign
/// payloads (someone else using the channel).
fn parse_payload(payload: &str) -> Option<(Wakeup, bool)> {
    let mut parts = payload.split(SEPARATOR);
    let first = parts.next()?;
    let own = format!("{:016x}", instance_id());
    if first == DEVICE_LISTS {
        let sender = parts.next()?;
        return Some((Wakeup::DeviceLists, sender == own));
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
    /// Some user's device list changed.
    DeviceLists,
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
    pool: PgPool,
    listener: Option<PgListener>,
    include_own: bool,
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
    pub async fn recv(&mut self) -> StoreResult<Wakeup> {
        loop {
            let Some(listener) = self.listener.as_mut() else {
                self.listener = Some(listen(&self.pool).await?);
                return Ok(Wakeup::Lost);
            };
            match listener.try_recv().await {
                Ok(Some(notification)) => {
                    if let Some((wakeup, own)) = parse_payload(notification.payload()) {
                        if !own || self.include_own {
                            return Ok(wakeup);
                        }
                    }
                }
                // Lost; `PgListener` has already reconnected and listens again.
                Ok(None) => return Ok(Wakeup::Lost),
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
                pool: pool.clone(),
                listener: Some(listen(pool).await?),
                include_own: false,
            })),
        }
    }

    /// Tells every process that some device list changed (call after the change committed).
    /// A no-op on SQLite.
    pub async fn notify_device_lists(&self) -> StoreResult<()> {
        match &self.backend {
            Backend::Sqlite { .. } => Ok(()),
            Backend::Postgres(pool) => {
                sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(WAKE_CHANNEL)
                    .bind(format!("{DEVICE_LISTS}{SEPARATOR}{:016x}", instance_id()))
                    .execute(pool)
                    .await?;
                Ok(())
            }
        }
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
        assert_eq!(parse_payload(""), None);
    }
}
