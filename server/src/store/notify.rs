//! Cross-process wake-ups on PostgreSQL (`LISTEN`/`NOTIFY`).
//!
//! Writes that should wake a waiting `/sync` (new mail for a device, a claimed one-time key)
//! send `NOTIFY hush_wake` inside their transaction, so PostgreSQL delivers it only if and when
//! the transaction commits, to every `hushd` process listening. On SQLite (one process) this is
//! a no-op and the in-process notifier is enough.

use sqlx::postgres::PgListener;

use super::{Backend, Store, StoreResult};

/// The channel all wake-ups use.
pub const WAKE_CHANNEL: &str = "hush_wake";

/// Separates user ID and device ID in a payload (neither can contain a tab).
const SEPARATOR: char = '\t';

/// The payload that wakes `(user_id, device_id)`.
pub(super) fn wake_payload(user_id: &str, device_id: &str) -> String {
    format!("{user_id}{SEPARATOR}{device_id}")
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
    /// The listening connection was lost and re-established; notifications may have been
    /// missed, so every waiter should re-check.
    Lost,
}

/// A dedicated connection listening for wake-ups from every process (PostgreSQL only).
pub struct WakeListener {
    listener: PgListener,
}

impl std::fmt::Debug for WakeListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WakeListener").finish_non_exhaustive()
    }
}

impl WakeListener {
    /// Waits for the next wake-up. Reconnects by itself after a lost connection (reporting
    /// [`Wakeup::Lost`] once); an error means the database could not be reached again.
    pub async fn recv(&mut self) -> StoreResult<Wakeup> {
        loop {
            match self.listener.try_recv().await? {
                None => return Ok(Wakeup::Lost),
                Some(notification) => {
                    if let Some((user_id, device_id)) = notification.payload().split_once(SEPARATOR)
                    {
                        return Ok(Wakeup::Device {
                            user_id: user_id.to_owned(),
                            device_id: device_id.to_owned(),
                        });
                    }
                    // Not ours (someone else used the channel): ignore.
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
            Backend::Postgres(pool) => {
                let mut listener = PgListener::connect_with(pool).await?;
                listener.listen(WAKE_CHANNEL).await?;
                Ok(Some(WakeListener { listener }))
            }
        }
    }
}
