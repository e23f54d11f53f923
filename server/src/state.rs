//! Shared application state handed to every handler through axum's `State`.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use crate::config::Config;
use crate::service::keys::RemoteKeys;
use crate::service::mailbox::{MailboxTask, MailboxWriter, OutboundPoke, OutboundPokeSlot};
use crate::service::notify::{Notifier, WakeRelay};
use crate::service::pruner::PrunerTask;
use crate::store::{Store, StoreError};

/// Everything a request handler needs. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    config: Arc<Config>,
    store: Store,
    notifier: Notifier,
    mailbox: MailboxWriter,
    remote_keys: OnceLock<Arc<dyn RemoteKeys>>,
    outbound_poke: OutboundPokeSlot,
    tasks: Mutex<Option<(MailboxTask, PrunerTask)>>,
    relay: Mutex<Option<WakeRelay>>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("server_name", &self.inner.config.server_name)
            .field("notifier", &self.inner.notifier)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// Builds the state and starts the background services (the group-commit mailbox writer
    /// and the retention pruner). On PostgreSQL it also starts the cross-process wake-up relay
    /// (`LISTEN hush_wake`, see [`WakeRelay`]), so syncs waiting here wake for writes made by
    /// other `hushd` processes on the same database. Must be called inside a tokio runtime.
    pub async fn new(config: Arc<Config>, store: Store) -> Result<AppState, StoreError> {
        let (notifier, relay) = WakeRelay::start(&store).await?;
        let state = AppState::with_notifier(config, store, notifier);
        *state
            .inner
            .relay
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = relay;
        Ok(state)
    }

    /// Like [`AppState::new`] with a given notifier (for example one that forwards wake-ups to
    /// other processes, see [`crate::service::notify::WakeBroadcast`]).
    pub fn with_notifier(config: Arc<Config>, store: Store, notifier: Notifier) -> AppState {
        let outbound_poke = OutboundPokeSlot::default();
        let (mailbox, mailbox_task) = MailboxWriter::start(
            store.clone(),
            notifier.clone(),
            config.limits.max_mailbox_per_device,
            outbound_poke.clone(),
        );
        let pruner = PrunerTask::start(store.clone(), &config.limits);
        AppState {
            inner: Arc::new(Inner {
                config,
                store,
                notifier,
                mailbox,
                remote_keys: OnceLock::new(),
                outbound_poke,
                tasks: Mutex::new(Some((mailbox_task, pruner))),
                relay: Mutex::new(None),
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The sync wake-up hub.
    pub fn notifier(&self) -> &Notifier {
        &self.inner.notifier
    }

    /// The group-commit writer for sendToDevice.
    pub fn mailbox(&self) -> &MailboxWriter {
        &self.inner.mailbox
    }

    /// Number of `/sync` requests currently waiting (for a metrics gauge).
    pub fn waiting_syncs(&self) -> usize {
        self.inner.notifier.waiting()
    }

    /// Installs the proxy for remote users' keys (federation). Can be set once; returns `false`
    /// if one was already installed.
    pub fn set_remote_keys(&self, remote: Arc<dyn RemoteKeys>) -> bool {
        self.inner.remote_keys.set(remote).is_ok()
    }

    /// Installs the callback that tells the federation sender new EDUs were queued by
    /// `sendToDevice` (called after the commit). Can be set once; returns `false` if one was
    /// already installed.
    pub fn set_outbound_poke(&self, poke: OutboundPoke) -> bool {
        self.inner.outbound_poke.set(poke).is_ok()
    }

    /// The remote key proxy, if federation installed one.
    pub fn remote_keys(&self) -> Option<&Arc<dyn RemoteKeys>> {
        self.inner.remote_keys.get()
    }

    /// Stops the background services: pending group commits are flushed first, then the writer,
    /// the pruner and the wake-up relay stop. Requests submitted afterwards get 503. Idempotent.
    pub async fn shutdown(&self) {
        let tasks = self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some((mailbox, pruner)) = tasks {
            mailbox.shutdown().await;
            pruner.shutdown().await;
        }
        let relay = self
            .inner
            .relay
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(relay) = relay {
            relay.shutdown().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::store::{OutboundEdu, SendOutcome, SendRequest, TxnKey};

    fn request(txn: &str, remote: bool) -> SendRequest {
        SendRequest {
            txn: TxnKey {
                user_id: "@a:hs".into(),
                device_id: "D".into(),
                endpoint: "sendToDevice/m.test".into(),
                txn_id: txn.into(),
            },
            local: Vec::new(),
            remote: if remote {
                vec![OutboundEdu {
                    destination: "other.example".into(),
                    edu_type: "m.direct_to_device".into(),
                    content: "{}".into(),
                }]
            } else {
                Vec::new()
            },
        }
    }

    #[tokio::test]
    async fn remote_commits_poke_the_federation_sender_and_shutdown_refuses_new_work() {
        let Ok(dir) = tempfile::tempdir() else {
            panic!("tempdir");
        };
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let Ok(store) = Store::connect(&url).await else {
            panic!("store");
        };
        let Ok(state) = AppState::new(Arc::new(Config::default()), store).await else {
            panic!("state");
        };
        let pokes = Arc::new(AtomicUsize::new(0));
        let counter = pokes.clone();
        assert!(state.set_outbound_poke(Arc::new(move || {
            counter.fetch_add(1, Ordering::SeqCst);
        })));
        let local_only = state.mailbox().submit(request("t1", false)).await;
        assert!(matches!(local_only, Ok(SendOutcome::Committed(_))));
        assert_eq!(pokes.load(Ordering::SeqCst), 0);
        let remote = state.mailbox().submit(request("t2", true)).await;
        assert!(matches!(remote, Ok(SendOutcome::Committed(_))));
        assert_eq!(pokes.load(Ordering::SeqCst), 1);
        let replay = state.mailbox().submit(request("t2", true)).await;
        assert!(matches!(replay, Ok(SendOutcome::Duplicate)));
        assert_eq!(
            pokes.load(Ordering::SeqCst),
            1,
            "a duplicate queues nothing"
        );
        state.shutdown().await;
        let after = state.mailbox().submit(request("t3", false)).await;
        assert!(after.is_err(), "submissions after shutdown are refused");
    }
}
