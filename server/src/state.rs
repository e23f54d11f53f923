//! Shared application state handed to every handler through axum's `State`.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use crate::config::Config;
use crate::service::keys::RemoteKeys;
use crate::service::mailbox::{MailboxTask, MailboxWriter};
use crate::service::notify::Notifier;
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
    tasks: Mutex<Option<(MailboxTask, PrunerTask)>>,
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
    /// and the retention pruner). Must be called inside a tokio runtime.
    pub async fn new(config: Arc<Config>, store: Store) -> Result<AppState, StoreError> {
        Ok(AppState::with_notifier(config, store, Notifier::new()))
    }

    /// Like [`AppState::new`] with a given notifier (for example one that forwards wake-ups to
    /// other processes, see [`crate::service::notify::WakeBroadcast`]).
    pub fn with_notifier(config: Arc<Config>, store: Store, notifier: Notifier) -> AppState {
        let (mailbox, mailbox_task) = MailboxWriter::start(
            store.clone(),
            notifier.clone(),
            config.limits.max_mailbox_per_device,
        );
        let pruner = PrunerTask::start(store.clone(), &config.limits);
        AppState {
            inner: Arc::new(Inner {
                config,
                store,
                notifier,
                mailbox,
                remote_keys: OnceLock::new(),
                tasks: Mutex::new(Some((mailbox_task, pruner))),
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

    /// The remote key proxy, if federation installed one.
    pub fn remote_keys(&self) -> Option<&Arc<dyn RemoteKeys>> {
        self.inner.remote_keys.get()
    }

    /// Stops the background services: pending group commits are flushed first, then the writer
    /// and the pruner stop. Requests submitted afterwards get 503. Idempotent.
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
    }
}
