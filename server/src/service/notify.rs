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
    /// Some device list changed (which one is not known); every waiter re-checks whether it
    /// cares.
    DeviceLists,
    /// The device lists of these users changed: only their followers (devices of users with a
    /// `device_list_interest` in one of them, and of the users themselves) re-check.
    DeviceListsOf(Vec<String>),
}

/// Forwards wake events to other processes (the PostgreSQL LISTEN/NOTIFY seam).
pub trait WakeBroadcast: Send + Sync {
    /// Publishes an event that was delivered locally.
    fn broadcast(&self, event: &WakeEvent);
}

type DeviceKey = (String, String);

struct Inner {
    devices: Mutex<HashMap<DeviceKey, watch::Sender<u64>>>,
    /// Per waiting user: woken when a device list that user follows changed.
    users: Mutex<HashMap<String, watch::Sender<u64>>>,
    /// Wakes every waiter (a change of unknown scope).
    device_lists: watch::Sender<u64>,
    waiting: AtomicUsize,
    broadcast: Option<Arc<dyn WakeBroadcast>>,
    /// Finds the followers of a changed device list; without it every waiter is woken.
    store: Option<Store>,
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
        Notifier::build(None, None)
    }

    /// A notifier that also forwards every wake to other processes.
    pub fn with_broadcast(broadcast: Arc<dyn WakeBroadcast>) -> Notifier {
        Notifier::build(Some(broadcast), None)
    }

    /// A notifier that looks up in `store` who follows a changed device list, so that
    /// [`WakeEvent::DeviceListsOf`] wakes only those waiters, and forwards wakes to
    /// `broadcast` if given.
    pub fn with_store(store: Store, broadcast: Option<Arc<dyn WakeBroadcast>>) -> Notifier {
        Notifier::build(broadcast, Some(store))
    }

    fn build(broadcast: Option<Arc<dyn WakeBroadcast>>, store: Option<Store>) -> Notifier {
        Notifier {
            inner: Arc::new(Inner {
                devices: Mutex::new(HashMap::new()),
                users: Mutex::new(HashMap::new()),
                device_lists: watch::Sender::new(0),
                waiting: AtomicUsize::new(0),
                broadcast,
                store,
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

    /// Wakes everyone waiting for device-list changes (the changed user is not known).
    pub fn wake_device_lists(&self) {
        self.wake(WakeEvent::DeviceLists);
    }

    /// `user_id`'s device list changed (committed): wakes the waiting syncs that follow it.
    pub fn wake_device_lists_of(&self, user_id: &str) {
        self.wake(WakeEvent::DeviceListsOf(vec![user_id.to_owned()]));
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
            WakeEvent::DeviceLists => self.wake_every_list_waiter(),
            WakeEvent::DeviceListsOf(users) => self.wake_followers(users.clone()),
        }
    }

    /// Wakes every waiter for a device-list change.
    fn wake_every_list_waiter(&self) {
        self.inner
            .device_lists
            .send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Looks up (in a task) who follows `users` and wakes those of them that wait here; wakes
    /// every waiter when that cannot be looked up.
    fn wake_followers(&self, users: Vec<String>) {
        if self.waiting() == 0 {
            return;
        }
        let (Some(store), Ok(runtime)) = (
            self.inner.store.clone(),
            tokio::runtime::Handle::try_current(),
        ) else {
            self.wake_every_list_waiter();
            return;
        };
        let notifier = self.clone();
        runtime.spawn(async move {
            match store.device_list_followers(&users).await {
                Ok(followers) => {
                    let waiting = notifier
                        .inner
                        .users
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    for follower in &followers {
                        if let Some(sender) = waiting.get(follower) {
                            sender.send_modify(|v| *v = v.wrapping_add(1));
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot look up device-list followers; waking every sync");
                    notifier.wake_every_list_waiter();
                }
            }
        });
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
        let user_lists = {
            let mut users = self
                .inner
                .users
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            users
                .entry(key.0.clone())
                .or_insert_with(|| watch::Sender::new(0))
                .subscribe()
        };
        self.inner.waiting.fetch_add(1, Ordering::Relaxed);
        Subscription {
            notifier: self.clone(),
            key,
            device,
            user_lists,
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
    /// A device list changed that this user may follow.
    DeviceLists,
}

/// A device's subscription; unsubscribes on drop.
pub struct Subscription {
    notifier: Notifier,
    key: DeviceKey,
    device: watch::Receiver<u64>,
    /// Device lists followed by this user.
    user_lists: watch::Receiver<u64>,
    /// Every device list (changes of unknown scope).
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
            r = self.user_lists.changed() => {
                if r.is_err() {
                    std::future::pending::<()>().await;
                }
                Woken::DeviceLists
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
        drop(devices);
        let mut users = self
            .notifier
            .inner
            .users
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if users
            .get(&self.key.0)
            .is_some_and(|sender| sender.receiver_count() <= 1)
        {
            users.remove(&self.key.0);
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
    /// Changed users not yet announced (`None` inside: a change of unknown scope).
    pending: Arc<Mutex<PendingLists>>,
}

/// Device-list changes waiting to be announced.
#[derive(Debug, Default)]
struct PendingLists {
    /// A change of unknown scope: announce "every list".
    all: bool,
    /// Users whose device lists changed.
    users: std::collections::BTreeSet<String>,
}

impl WakeBroadcast for PgWakeBroadcast {
    fn broadcast(&self, event: &WakeEvent) {
        {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            match event {
                WakeEvent::Device { .. } => return,
                WakeEvent::DeviceLists => pending.all = true,
                WakeEvent::DeviceListsOf(users) => pending.users.extend(users.iter().cloned()),
            }
        }
        // Stores one permit: changes arriving while a NOTIFY is being sent share the next.
        self.device_lists.notify_one();
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
            return Ok((Notifier::with_store(store.clone(), None), None));
        };
        let broadcast = Arc::new(PgWakeBroadcast::default());
        let announce = broadcast.device_lists.clone();
        let pending = broadcast.pending.clone();
        let notifier = Notifier::with_store(store.clone(), Some(broadcast));
        let (stop, _) = watch::channel(false);
        let tasks = vec![
            tokio::spawn(relay(listener, notifier.clone(), stop.subscribe())),
            tokio::spawn(announce_device_lists(
                store.clone(),
                announce,
                pending,
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
            Ok(Wakeup::DeviceListsOf(users)) => {
                notifier.deliver_local(&WakeEvent::DeviceListsOf(users));
            }
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

/// Sends one `NOTIFY` per burst of device-list changes, naming the changed users.
async fn announce_device_lists(
    store: Store,
    announce: Arc<Notify>,
    pending: Arc<Mutex<PendingLists>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            () = announce.notified() => {}
            _ = stop.changed() => return,
        }
        let burst = std::mem::take(&mut *pending.lock().unwrap_or_else(PoisonError::into_inner));
        let users: Vec<String> = if burst.all {
            Vec::new() // "every list"
        } else {
            burst.users.into_iter().collect()
        };
        if !burst.all && users.is_empty() {
            continue;
        }
        if let Err(e) = store.notify_device_lists(&users).await {
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
        b.broadcast(&WakeEvent::DeviceListsOf(vec!["@a:hs".into()]));
        assert!(fut.as_mut().enable(), "device-list changes are");
        let pending = b.pending.lock().map(|p| p.users.len()).unwrap_or(0);
        assert_eq!(pending, 1, "with the changed user");
    }

    #[tokio::test]
    async fn a_device_list_change_wakes_only_followers() {
        let Ok(dir) = tempfile::tempdir() else {
            panic!("no temporary directory");
        };
        let url = format!("sqlite://{}", dir.path().join("n.db").display());
        let Ok(store) = Store::connect(&url).await else {
            panic!("cannot open {url}");
        };
        for user in ["@alice:hs", "@bob:hs", "@carol:hs"] {
            assert!(store.create_user(user, None, None, 0).await.is_ok());
        }
        assert!(store
            .add_device_list_interest("@alice:hs", &["@carol:hs".to_owned()])
            .await
            .is_ok());
        let n = Notifier::with_store(store, None);
        let mut alice = n.subscribe("@alice:hs", "A");
        let mut carol = n.subscribe("@carol:hs", "C");
        let bob = n.subscribe("@bob:hs", "B");
        n.wake_device_lists_of("@carol:hs");
        let woken = tokio::time::timeout(Duration::from_secs(5), alice.changed()).await;
        assert_eq!(woken.ok(), Some(Woken::DeviceLists), "a follower wakes");
        let woken = tokio::time::timeout(Duration::from_secs(5), carol.changed()).await;
        assert_eq!(
            woken.ok(),
            Some(Woken::DeviceLists),
            "the user itself wakes"
        );
        // Followers are woken together, under one lock: bob would have been by now.
        assert!(
            !bob.user_lists.has_changed().unwrap_or(true),
            "bob follows nobody"
        );
        assert!(!bob.device_lists.has_changed().unwrap_or(true));
        assert!(!bob.device.has_changed().unwrap_or(true));
    }

    #[tokio::test]
    async fn without_a_store_a_named_change_wakes_every_list_waiter() {
        let n = Notifier::new();
        let mut sub = n.subscribe("@b:hs", "D");
        n.wake_device_lists_of("@a:hs");
        let woken = tokio::time::timeout(Duration::from_secs(5), sub.changed()).await;
        assert_eq!(woken.ok(), Some(Woken::DeviceLists));
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
