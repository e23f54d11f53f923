//! Wake-ups for long-polling `/sync` requests.
//!
//! Each waiting device subscribes to a per-device `watch` channel (created on demand and dropped
//! when nobody waits) plus one shared device-list channel. Writers call [`Notifier::wake`] after
//! their data is committed; a subscribed sync wakes within the same scheduler tick.
//!
//! Cross-process seam: with several `hushd` processes on one PostgreSQL, a write in one process
//! must wake a sync waiting in another. [`Notifier::with_broadcast`] installs a [`WakeBroadcast`]
//! that forwards every local wake (for example as `NOTIFY hush_wake, '<json>'`); the matching
//! listener task (`LISTEN hush_wake`) calls [`Notifier::deliver_local`] for events from other
//! processes. The in-process path needs nothing else.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

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
