//! Wake-ups for long-polling `/sync` requests.
//!
//! Each waiting device subscribes to a per-device `watch` channel (created on demand and dropped
//! when nobody waits) plus one shared device-list channel. Writers call [`Notifier::wake`] after
//! their data is committed; a subscribed sync wakes within the same scheduler tick.
//!
//! Across processes (several `hushd` on one PostgreSQL, see `docs/scaling.md`), a write in one
//! process must wake a sync waiting in another:
//!
//! * Device wake-ups (new mail, a claimed one-time key) are sent by the store itself as
//!   `NOTIFY hush_wake` inside the writing transaction, so they are delivered exactly when the
//!   data is visible. The broadcast below therefore does not repeat them.
//! * Device-list changes are announced after their commit by [`PgWakeBroadcast`], installed with
//!   [`Notifier::with_broadcast`] (changes close together share one `NOTIFY`).
//! * [`WakeRelay`] holds a `LISTEN hush_wake` connection and hands other processes' events to
//!   [`Notifier::deliver_local`]. Notifications a process sent itself are skipped (it woke its
//!   own waiters directly). When the connection drops it reconnects with backoff and then wakes
//!   every local waiter once, since anything sent during the gap was missed.
//!
//! On SQLite (one process) none of this runs; the in-process path needs nothing else.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::store::{Store, StoreError, WakeListener, Wakeup};

/// Something that happened and may be of interest to waiting syncs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum WakeEvent {
    /// New to-device mail or a key-count change for one device.
    Device {
        /// Local user ID.
        user_id: String,
        /// Device ID.
        device_id: String,
    },
    /// Some user's device list changed; every waiter re-checks whether it cares.
    DeviceLists,
}

/// Forwards wake events to other processes (the PostgreSQL LISTEN/NOTIFY seam).
pub trait WakeBroadcast: Send + Sync {
    /// Publishes an event that was delivered locally.
    fn broadcast(&self, event: &WakeEvent);
}

type DeviceKey = (String, String);

struct Inner {
    devices: Mutex<HashMap<DeviceKey, watch::Sender<u64>>>,
    device_lists: watch::Sender<u64>,
    waiting: AtomicUsize,
    broadcast: Option<Arc<dyn WakeBroadcast>>,
}

/// The in-process wake-up hub. Cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("waiting", &self.waiting())
            .finish_non_exhaustive()
    }
}

impl Default for Notifier {
    fn default() -> Self {
        Notifier::new()
    }
}

impl Notifier {
    /// A notifier that wakes only syncs in this process.
    pub fn new() -> Notifier {
        Notifier::build(None)
    }

    /// A notifier that also forwards every wake to other processes.
    pub fn with_broadcast(broadcast: Arc<dyn WakeBroadcast>) -> Notifier {
        Notifier::build(Some(broadcast))
    }

    fn build(broadcast: Option<Arc<dyn WakeBroadcast>>) -> Notifier {
        Notifier {
            inner: Arc::new(Inner {
                devices: Mutex::new(HashMap::new()),
                device_lists: watch::Sender::new(0),
                waiting: AtomicUsize::new(0),
                broadcast,
            }),
        }
    }

    /// Wakes local waiters and forwards the event to other processes.
    pub fn wake(&self, event: WakeEvent) {
        self.deliver_local(&event);
        if let Some(broadcast) = &self.inner.broadcast {
            broadcast.broadcast(&event);
        }
    }

    /// Wakes one device.
    pub fn wake_device(&self, user_id: &str, device_id: &str) {
        self.wake(WakeEvent::Device {
            user_id: user_id.to_owned(),
            device_id: device_id.to_owned(),
        });
    }

    /// Wakes everyone waiting for device-list changes.
    pub fn wake_device_lists(&self) {
        self.wake(WakeEvent::DeviceLists);
    }

    /// Wakes local waiters only (used for events received from other processes).
    pub fn deliver_local(&self, event: &WakeEvent) {
        match event {
            WakeEvent::Device { user_id, device_id } => {
                let devices = self
                    .inner
                    .devices
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if let Some(sender) = devices.get(&(user_id.clone(), device_id.clone())) {
                    sender.send_modify(|v| *v = v.wrapping_add(1));
                }
            }
            WakeEvent::DeviceLists => {
                self.inner
                    .device_lists
                    .send_modify(|v| *v = v.wrapping_add(1));
            }
        }
    }

    /// Wakes every local waiter once (after a gap in which wake-ups from other processes may
    /// have been missed). Each waiting sync re-reads its state and answers.
    pub fn wake_all_local(&self) {
        {
            let devices = self
                .inner
                .devices
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for sender in devices.values() {
                sender.send_modify(|v| *v = v.wrapping_add(1));
            }
        }
        self.inner
            .device_lists
            .send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Subscribes a device. Subscribe *before* reading the store so that no commit between the
    /// read and the wait is missed.
    pub fn subscribe(&self, user_id: &str, device_id: &str) -> Subscription {
        let key = (user_id.to_owned(), device_id.to_owned());
        let device = {
            let mut devices = self
                .inner
                .devices
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            devices
                .entry(key.clone())
                .or_insert_with(|| watch::Sender::new(0))
                .subscribe()
        };
        self.inner.waiting.fetch_add(1, Ordering::Relaxed);
        Subscription {
            notifier: self.clone(),
            key,
            device,
            device_lists: self.inner.device_lists.subscribe(),
        }
    }

    /// Number of live subscriptions (waiting or about to wait syncs).
    pub fn waiting(&self) -> usize {
        self.inner.waiting.load(Ordering::Relaxed)
    }
}

/// What woke a [`Subscription`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woken {
    /// The device itself (mail, key counts).
    Device,
    /// A device list somewhere changed.
    DeviceLists,
}

/// A device's subscription; unsubscribes on drop.
pub struct Subscription {
    notifier: Notifier,
    key: DeviceKey,
    device: watch::Receiver<u64>,
    device_lists: watch::Receiver<u64>,
}

impl Subscription {
    /// Waits for the next wake-up after the subscription was made (or after the previous
    /// `changed` returned).
    pub async fn changed(&mut self) -> Woken {
        tokio::select! {
            biased;
            r = self.device.changed() => {
                if r.is_err() {
                    // The sender is kept in the map while we hold a receiver; unreachable in
                    // practice, but never spin.
                    std::future::pending::<()>().await;
                }
                Woken::Device
            }
            r = self.device_lists.changed() => {
                if r.is_err() {
                    std::future::pending::<()>().await;
                }
                Woken::DeviceLists
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.notifier.inner.waiting.fetch_sub(1, Ordering::Relaxed);
        let mut devices = self
            .notifier
            .inner
            .devices
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Our own receiver is still alive here, so "1" means we are the last one.
        if devices
            .get(&self.key)
            .is_some_and(|sender| sender.receiver_count() <= 1)
        {
            devices.remove(&self.key);
        }
    }
}

/// Shortest pause before reconnecting the wake-up listener after a failure.
const RELAY_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest pause between reconnection attempts.
const RELAY_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Announces device-list changes to other processes (PostgreSQL `NOTIFY`, sent by a background
/// task of [`WakeRelay`] so the caller never waits). Device wake-ups are not repeated: the store
/// already sends them inside the writing transaction.
#[derive(Debug, Default)]
pub struct PgWakeBroadcast {
    device_lists: Arc<Notify>,
}

impl WakeBroadcast for PgWakeBroadcast {
    fn broadcast(&self, event: &WakeEvent) {
        if matches!(event, WakeEvent::DeviceLists) {
            // Stores one permit: changes arriving while a NOTIFY is being sent share the next.
            self.device_lists.notify_one();
        }
    }
}

/// The cross-process wake-up tasks of one process (PostgreSQL only).
#[derive(Debug)]
pub struct WakeRelay {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl WakeRelay {
    /// Builds the notifier of a process and, on PostgreSQL, starts listening for other
    /// processes' wake-ups. On SQLite returns a purely local notifier and no relay.
    pub async fn start(store: &Store) -> Result<(Notifier, Option<WakeRelay>), StoreError> {
        let Some(listener) = store.listen_wakeups().await? else {
            return Ok((Notifier::new(), None));
        };
        let broadcast = Arc::new(PgWakeBroadcast::default());
        let announce = broadcast.device_lists.clone();
        let notifier = Notifier::with_broadcast(broadcast);
        let (stop, _) = watch::channel(false);
        let tasks = vec![
            tokio::spawn(relay(listener, notifier.clone(), stop.subscribe())),
            tokio::spawn(announce_device_lists(
                store.clone(),
                announce,
                stop.subscribe(),
            )),
        ];
        Ok((notifier, Some(WakeRelay { stop, tasks })))
    }

    /// Stops listening and announcing.
    pub async fn shutdown(self) {
        self.stop.send_replace(true);
        for task in self.tasks {
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "wake-up relay ended abnormally");
            }
        }
    }
}

/// Hands other processes' wake-ups to local waiters; reconnects with backoff.
async fn relay(mut listener: WakeListener, notifier: Notifier, mut stop: watch::Receiver<bool>) {
    let mut backoff = RELAY_BACKOFF_MIN;
    loop {
        let next = tokio::select! {
            next = listener.recv() => next,
            _ = stop.changed() => return,
        };
        match next {
            Ok(Wakeup::Device { user_id, device_id }) => {
                notifier.deliver_local(&WakeEvent::Device { user_id, device_id });
            }
            Ok(Wakeup::DeviceLists) => notifier.deliver_local(&WakeEvent::DeviceLists),
            // Another process revoked access tokens; the listener has already emptied the
            // store's token cache before handing this over.
            Ok(Wakeup::Tokens) => {}
            Ok(Wakeup::Lost) => {
                tracing::warn!(
                    waiting = notifier.waiting(),
                    "wake-up listener reconnected; waking every waiting sync once"
                );
                notifier.wake_all_local();
                backoff = RELAY_BACKOFF_MIN;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_ms = backoff.as_millis() as u64,
                    "wake-up listener lost its database connection");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return,
                }
                backoff = (backoff * 2).min(RELAY_BACKOFF_MAX);
            }
        }
    }
}

/// Sends one `NOTIFY` per burst of device-list changes.
async fn announce_device_lists(
    store: Store,
    pending: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            () = pending.notified() => {}
            _ = stop.changed() => return,
        }
        if let Err(e) = store.notify_device_lists().await {
            // Other processes' syncs see the change at their next wake-up or timeout.
            tracing::warn!(error = %e, "cannot announce a device-list change to other processes");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn wake_after_subscribe_is_seen() {
        let n = Notifier::new();
        let mut sub = n.subscribe("@a:hs", "D");
        n.wake_device("@a:hs", "D");
        let woken = tokio::time::timeout(Duration::from_secs(5), sub.changed()).await;
        assert_eq!(woken.ok(), Some(Woken::Device));
    }

    #[tokio::test]
    async fn other_devices_do_not_wake() {
        let n = Notifier::new();
        let mut sub = n.subscribe("@a:hs", "D");
        n.wake_device("@a:hs", "OTHER");
        let woken = tokio::time::timeout(Duration::from_millis(50), sub.changed()).await;
        assert!(woken.is_err());
        n.wake_device_lists();
        let woken = tokio::time::timeout(Duration::from_secs(5), sub.changed()).await;
        assert_eq!(woken.ok(), Some(Woken::DeviceLists));
    }

    #[tokio::test]
    async fn drop_unsubscribes() {
        let n = Notifier::new();
        let a = n.subscribe("@a:hs", "D");
        let b = n.subscribe("@a:hs", "D");
        assert_eq!(n.waiting(), 2);
        drop(a);
        assert_eq!(n.inner.devices.lock().map(|d| d.len()).unwrap_or(0), 1);
        drop(b);
        assert_eq!(n.waiting(), 0);
        assert_eq!(n.inner.devices.lock().map(|d| d.len()).unwrap_or(1), 0);
    }

    struct Recorder(Mutex<Vec<WakeEvent>>);
    impl WakeBroadcast for Recorder {
        fn broadcast(&self, event: &WakeEvent) {
            if let Ok(mut v) = self.0.lock() {
                v.push(event.clone());
            }
        }
    }

    #[tokio::test]
    async fn wake_all_local_wakes_every_device() {
        let n = Notifier::new();
        let mut a = n.subscribe("@a:hs", "D");
        let mut b = n.subscribe("@b:hs", "E");
        n.wake_all_local();
        let woken = tokio::time::timeout(Duration::from_secs(5), a.changed()).await;
        assert_eq!(woken.ok(), Some(Woken::Device));
        let woken = tokio::time::timeout(Duration::from_secs(5), b.changed()).await;
        assert_eq!(woken.ok(), Some(Woken::Device));
    }

    #[test]
    fn pg_broadcast_forwards_only_device_lists() {
        let b = PgWakeBroadcast::default();
        b.broadcast(&WakeEvent::Device {
            user_id: "@a:hs".into(),
            device_id: "D".into(),
        });
        let fut = b.device_lists.notified();
        tokio::pin!(fut);
        assert!(!fut.as_mut().enable(), "device wakes are not forwarded");
        b.broadcast(&WakeEvent::DeviceLists);
        assert!(fut.as_mut().enable(), "device-list changes are");
    }

    #[test]
    fn broadcast_seam_sees_every_wake() {
        let rec = Arc::new(Recorder(Mutex::new(Vec::new())));
        let n = Notifier::with_broadcast(rec.clone());
        n.wake_device("@a:hs", "D");
        n.wake_device_lists();
        let seen = rec.0.lock().map(|v| v.len()).unwrap_or(0);
        assert_eq!(seen, 2);
    }
}
