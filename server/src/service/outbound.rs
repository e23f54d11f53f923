//! The outbound federation sender: drains the durable queue, one task per destination.
//!
//! * A manager task looks for destinations with queued EDUs whose next attempt is due (every
//!   [`OutboundConfig::poll_interval`], or at once after [`OutboundSender::poke`]) and starts a
//!   sender task for each that has none.
//! * A sender task sends one transaction at a time: the transaction already in flight (after a
//!   restart), else up to [`MAX_EDUS_PER_TXN`] queued EDUs and [`MAX_TXN_EDU_BYTES`], written to the store as the in-flight
//!   transaction before the first attempt. It retries the same txnId with the same body until the
//!   destination answers 200, waiting [`retry_delay_ms`] between attempts (exponential with
//!   jitter, capped at one hour). On 200 the EDUs are deleted and the next batch goes out. The
//!   task ends when the queue of its destination is empty.
//! * Any authenticated request from a destination ([`OutboundSender::contacted`]) ends its
//!   backoff at once, as does `hushd admin federation reset` (the waiting task rechecks the
//!   stored retry state every few seconds).
//! * Destinations the allow/deny lists refuse get nothing: their queue is dropped (logged).
//! * Several processes on one PostgreSQL: a sender task first takes the destination's advisory
//!   lock on the process's dedicated lock session ([`DestinationLockSession`]); a destination
//!   whose lock another process holds is left to that process (and tried again after
//!   [`CONTENDED_RETRY`]). When the owner dies PostgreSQL releases its locks and the next poll of
//!   another process takes over. If this process loses its lock session (checked every
//!   [`LOCK_PING`] and before every attempt), every sender task stops before its next attempt:
//!   the locks may already belong to someone else. A task releases its lock when its queue is
//!   empty, then pokes the manager, so EDUs queued by a process that found the lock taken are
//!   not left waiting. On SQLite (one process) no lock is taken. See `docs/adr/0004-federation-sender-advisory-locks.md`.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hush_federation::canonical::to_canonical_bytes;
use hush_federation::ids::ServerName;
use hush_federation::keys::unix_millis_now;
use rand::Rng;
use serde_json::{json, Value};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::service::federation_policy::ServerPolicy;
use crate::store::federation_txn::InflightTxn;
use crate::store::{DestinationLockSession, DestinationRow, Millis, Store};

/// Most EDUs in one transaction (the protocol's limit).
pub const MAX_EDUS_PER_TXN: i64 = 100;
/// Most bytes of EDU content in one transaction (unless a single EDU is bigger). Half of the
/// default request size limit (`limits.max_request_bytes`, 1 MiB) of a receiving `hushd`, so
/// that a transaction of many large EDUs is never refused as too large and stuck in the queue.
pub const MAX_TXN_EDU_BYTES: usize = 512 * 1024;
/// Longest wait between two attempts, whatever the configuration says.
pub const MAX_RETRY_DELAY_MS: u64 = 60 * 60 * 1000;
/// How often a backing-off task rechecks the stored retry state (for admin resets).
const RECHECK_MS: u64 = 3_000;
/// After failing to take a destination's lock (another process sends to it), how long this
/// process leaves it alone. Bounds how fast a dead owner's destinations are taken over.
pub const CONTENDED_RETRY: Duration = Duration::from_secs(1);
/// How often the lock session is checked; a session that fails the check (or takes longer than
/// [`LOCK_PING_TIMEOUT`]) is dropped and every sender task of this process stops.
pub const LOCK_PING: Duration = Duration::from_secs(2);
/// Longest wait for the lock session's answer to a check.
const LOCK_PING_TIMEOUT: Duration = Duration::from_secs(3);

/// A boxed future returned by [`TransactionTransport::send`].
pub type SendFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// Delivers one transaction (`PUT /_matrix/federation/v1/send/{txnId}`).
pub trait TransactionTransport: Send + Sync {
    /// Sends `body` as transaction `txn_id`; `Ok` only on a 2xx answer.
    fn send<'a>(
        &'a self,
        destination: &'a ServerName,
        txn_id: &'a str,
        body: &'a Value,
    ) -> SendFuture<'a>;
}

/// Retry timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Wait after the first failure (ms).
    pub min_ms: u64,
    /// Longest wait (ms); never more than [`MAX_RETRY_DELAY_MS`].
    pub max_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            min_ms: 2_000,
            max_ms: MAX_RETRY_DELAY_MS,
        }
    }
}

/// The wait after `failures` consecutive failures: `min * 2^(failures-1)`, capped at the
/// maximum, then scaled into `[50%, 100%]` by `jitter` (a number in `[0, 1)`) so servers that
/// failed together do not retry in lockstep.
pub fn retry_delay_ms(failures: u32, policy: &RetryPolicy, jitter: f64) -> u64 {
    let cap = policy.max_ms.clamp(1, MAX_RETRY_DELAY_MS);
    let exp = failures.saturating_sub(1).min(40);
    let base = policy.min_ms.max(1).saturating_mul(1u64 << exp).min(cap);
    let jitter = jitter.clamp(0.0, 1.0);
    // u64 -> f64 -> u64 is exact for delays below an hour.
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    let spread = ((base / 2) as f64 * jitter) as u64;
    (base - base / 2 + spread).min(cap)
}

/// Settings of the sender.
#[derive(Debug, Clone)]
pub struct OutboundConfig {
    /// This server's name (the `origin` of transactions).
    pub origin: ServerName,
    /// Retry timing.
    pub retry: RetryPolicy,
    /// How often the manager looks for due destinations.
    pub poll_interval: Duration,
}

struct Destination {
    /// Woken to end a backoff early.
    wake: Notify,
    /// Whether the task is waiting after a failure.
    backing_off: AtomicBool,
}

/// Which destinations this process may send to (advisory locks on PostgreSQL).
struct Ownership {
    /// PostgreSQL: destinations need a lock. SQLite: everything is ours.
    postgres: bool,
    /// The lock session; `None` until first needed and after it was lost.
    session: tokio::sync::Mutex<Option<DestinationLockSession>>,
    /// Bumped whenever the session is lost: tasks that took their lock under an older value no
    /// longer own their destination.
    generation: watch::Sender<u64>,
    /// Destinations another process held when we last tried, with when to try again.
    contended: Mutex<HashMap<String, Instant>>,
}

impl Ownership {
    fn new(postgres: bool) -> Ownership {
        Ownership {
            postgres,
            session: tokio::sync::Mutex::new(None),
            generation: watch::channel(0).0,
            contended: Mutex::new(HashMap::new()),
        }
    }

    fn generation(&self) -> u64 {
        *self.generation.borrow()
    }

    fn lose_session(&self, session: &mut Option<DestinationLockSession>, why: &str) {
        if session.take().is_some() {
            tracing::warn!(
                reason = why,
                "lost the federation lock session; every destination of this process stops sending"
            );
            self.generation.send_modify(|g| *g = g.wrapping_add(1));
        }
    }

    fn is_contended(&self, destination: &str) -> bool {
        let mut contended = self
            .contended
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match contended.get(destination) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                contended.remove(destination);
                false
            }
            None => false,
        }
    }

    /// Takes the lock of `destination`; `Some(generation)` when this process now owns it.
    async fn acquire(&self, store: &Store, destination: &str) -> Result<Option<u64>, String> {
        if !self.postgres {
            return Ok(Some(0));
        }
        let mut guard = self.session.lock().await;
        if guard.is_none() {
            *guard = store
                .destination_lock_session()
                .await
                .map_err(|e| format!("cannot open the lock session: {e}"))?;
            if guard.is_none() {
                return Ok(Some(0));
            }
        }
        let generation = self.generation();
        let Some(session) = guard.as_mut() else {
            return Ok(None);
        };
        match session.try_lock(destination).await {
            Ok(true) => Ok(Some(generation)),
            Ok(false) => {
                self.contended
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(destination.to_owned(), Instant::now() + CONTENDED_RETRY);
                Ok(None)
            }
            Err(e) => {
                self.lose_session(&mut guard, "lock query failed");
                Err(format!("cannot take the destination lock: {e}"))
            }
        }
    }

    /// Releases the lock of `destination` taken under `generation` (nothing to do when the
    /// session was lost since: the lock went with it).
    async fn release(&self, destination: &str, generation: u64) {
        if !self.postgres {
            return;
        }
        let mut guard = self.session.lock().await;
        if self.generation() != generation {
            return;
        }
        if let Some(session) = guard.as_mut() {
            match session.unlock(destination).await {
                Ok(true) => {
                    tracing::info!(%destination, "stopped sending to this destination (lock released)");
                }
                Ok(false) => tracing::warn!(%destination, "destination lock was not held"),
                Err(e) => {
                    tracing::warn!(%destination, error = %e, "cannot release a destination lock");
                    self.lose_session(&mut guard, "unlock failed");
                }
            }
        }
    }

    /// Confirms, just before an attempt, that the locks taken under `generation` are still
    /// held: the session answers a check (a live session keeps every lock it took). A session
    /// the database ended while we were backing off is noticed here rather than at the next
    /// [`LOCK_PING`], so a new owner and this process do not send to the destination at the
    /// same time.
    async fn confirm(&self, generation: u64) -> bool {
        if !self.postgres {
            return true;
        }
        let mut guard = self.session.lock().await;
        if self.generation() != generation {
            return false;
        }
        let Some(session) = guard.as_mut() else {
            return false;
        };
        match tokio::time::timeout(LOCK_PING_TIMEOUT, session.ping()).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "federation lock session check failed");
                self.lose_session(&mut guard, "check before an attempt failed");
                false
            }
            Err(_) => {
                self.lose_session(&mut guard, "check before an attempt timed out");
                false
            }
        }
    }

    /// Checks the lock session every [`LOCK_PING`] until `stop`.
    async fn keep_alive(&self, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(LOCK_PING) => {}
                _ = stop.changed() => return,
            }
            let mut guard = self.session.lock().await;
            let Some(session) = guard.as_mut() else {
                continue;
            };
            match tokio::time::timeout(LOCK_PING_TIMEOUT, session.ping()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "federation lock session check failed");
                    self.lose_session(&mut guard, "check failed");
                }
                Err(_) => self.lose_session(&mut guard, "check timed out"),
            }
        }
    }
}

struct Inner {
    store: Store,
    ownership: Ownership,
    /// When we last reset the backoff of a destination another process may be sending to.
    remote_resets: Mutex<HashMap<String, Instant>>,
    transport: Arc<dyn TransactionTransport>,
    policy: Arc<ServerPolicy>,
    config: OutboundConfig,
    active: Mutex<HashMap<String, Arc<Destination>>>,
    /// Destinations with a stored backoff but no running task (after a restart).
    dormant_backoff: Mutex<HashSet<String>>,
    poke: Notify,
    stop: watch::Sender<bool>,
    edus_sent: std::sync::atomic::AtomicU64,
    txns_sent: std::sync::atomic::AtomicU64,
}

/// Handle on the running sender; cheap to clone.
#[derive(Clone)]
pub struct OutboundSender {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for OutboundSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboundSender")
            .field("origin", &self.inner.config.origin)
            .finish_non_exhaustive()
    }
}

/// The running manager task.
#[derive(Debug)]
pub struct OutboundTask {
    handle: JoinHandle<()>,
}

impl OutboundTask {
    /// Waits for the manager to stop (after [`OutboundSender::shutdown`]).
    pub async fn join(self) {
        if let Err(e) = self.handle.await {
            tracing::warn!(error = %e, "federation sender ended abnormally");
        }
    }
}

impl OutboundSender {
    /// Starts the manager task.
    pub fn start(
        store: Store,
        transport: Arc<dyn TransactionTransport>,
        policy: Arc<ServerPolicy>,
        config: OutboundConfig,
    ) -> (OutboundSender, OutboundTask) {
        let (stop, _) = watch::channel(false);
        let postgres = store.is_postgres();
        let sender = OutboundSender {
            inner: Arc::new(Inner {
                store,
                ownership: Ownership::new(postgres),
                remote_resets: Mutex::new(HashMap::new()),
                transport,
                policy,
                config,
                active: Mutex::new(HashMap::new()),
                dormant_backoff: Mutex::new(HashSet::new()),
                poke: Notify::new(),
                stop,
                edus_sent: Default::default(),
                txns_sent: Default::default(),
            }),
        };
        let handle = tokio::spawn(sender.clone().manage());
        if postgres {
            let this = sender.clone();
            let stop = this.inner.stop.subscribe();
            tokio::spawn(async move { this.inner.ownership.keep_alive(stop).await });
        }
        (sender, OutboundTask { handle })
    }

    /// New EDUs were queued: look for work now instead of at the next poll.
    pub fn poke(&self) {
        self.inner.poke.notify_one();
    }

    /// `origin` just sent us an authenticated request: it is up, so stop backing off.
    pub fn contacted(&self, origin: &ServerName) {
        let name = origin.as_str();
        let running = self
            .inner
            .active
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned();
        if let Some(dest) = running {
            if dest.backing_off.load(Ordering::Acquire) {
                tracing::debug!(destination = %name, "destination contacted us; retrying now");
                dest.wake.notify_one();
            }
            return;
        }
        let dormant = self
            .inner
            .dormant_backoff
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
        let dormant = dormant || (self.inner.ownership.postgres && self.remote_reset_due(name));
        if dormant {
            let this = self.clone();
            let name = name.to_owned();
            tokio::spawn(async move {
                let now = now_ms();
                if let Err(e) = this
                    .inner
                    .store
                    .federation_reset_destination(&name, now)
                    .await
                {
                    tracing::warn!(destination = %name, error = %e, "cannot reset backoff");
                }
                this.poke();
            });
        }
    }

    /// With several processes, the task backing off for `destination` may run in another one;
    /// it rechecks the stored retry state, so we reset it there, at most once per [`RECHECK_MS`]
    /// per destination.
    fn remote_reset_due(&self, destination: &str) -> bool {
        let now = Instant::now();
        let mut resets = self
            .inner
            .remote_resets
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if resets.len() > 10_000 {
            resets.retain(|_, at| now.duration_since(*at) < Duration::from_millis(RECHECK_MS));
        }
        match resets.get(destination) {
            Some(at) if now.duration_since(*at) < Duration::from_millis(RECHECK_MS) => false,
            _ => {
                resets.insert(destination.to_owned(), now);
                true
            }
        }
    }

    /// `(transactions, EDUs)` delivered since start (for metrics and the benchmark).
    pub fn delivered(&self) -> (u64, u64) {
        (
            self.inner.txns_sent.load(Ordering::Relaxed),
            self.inner.edus_sent.load(Ordering::Relaxed),
        )
    }

    /// Stops the manager and every sender task. A transaction in flight stays stored and is
    /// resumed at the next start.
    pub fn shutdown(&self) {
        self.inner.stop.send_replace(true);
    }

    fn stopping(&self) -> bool {
        *self.inner.stop.borrow()
    }

    async fn manage(self) {
        let mut stop = self.inner.stop.subscribe();
        match self.inner.store.federation_overview().await {
            Ok(all) => {
                let now = now_ms();
                let mut dormant = self
                    .inner
                    .dormant_backoff
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                for d in all.into_iter().filter(|d| d.next_attempt_ts > now) {
                    dormant.insert(d.destination);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read federation destinations"),
        }
        loop {
            if self.stopping() {
                break;
            }
            match self
                .inner
                .store
                .outbound_due_destinations(now_ms(), 1_000)
                .await
            {
                Ok(due) => {
                    for destination in due {
                        self.ensure_task(destination);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the outbound queue"),
            }
            tokio::select! {
                _ = tokio::time::sleep(self.inner.config.poll_interval) => {}
                _ = self.inner.poke.notified() => {}
                _ = stop.changed() => {}
            }
        }
    }

    fn ensure_task(&self, destination: String) {
        if self.inner.ownership.is_contended(&destination) {
            return;
        }
        let dest = {
            let mut active = self
                .inner
                .active
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if active.contains_key(&destination) {
                return;
            }
            let dest = Arc::new(Destination {
                wake: Notify::new(),
                backing_off: AtomicBool::new(false),
            });
            active.insert(destination.clone(), dest.clone());
            dest
        };
        self.inner
            .dormant_backoff
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&destination);
        let this = self.clone();
        tokio::spawn(async move {
            let owned = match this
                .inner
                .ownership
                .acquire(&this.inner.store, &destination)
                .await
            {
                Ok(owned) => owned,
                Err(e) => {
                    tracing::warn!(%destination, error = %e, "federation sender cannot start");
                    None
                }
            };
            if let Some(generation) = owned {
                if this.inner.ownership.postgres {
                    tracing::info!(%destination, "sending to this destination (lock taken)");
                }
                if let Err(e) = this.drain(&destination, &dest, generation).await {
                    tracing::warn!(%destination, error = %e, "federation sender stopped; will restart");
                }
                this.inner.ownership.release(&destination, generation).await;
            }
            this.inner
                .active
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&destination);
            if owned.is_some() && this.inner.ownership.postgres {
                // Another process may have queued EDUs while we held the lock and found it
                // taken: look again now that it is free.
                this.poke();
            }
        });
    }

    /// Whether this process still owns what it locked under `generation`.
    fn owns(&self, generation: u64) -> bool {
        self.inner.ownership.generation() == generation
    }

    /// Sends everything queued for `destination`, one transaction at a time, while this process
    /// owns it (lock taken under `generation`).
    async fn drain(
        &self,
        destination: &str,
        dest: &Destination,
        generation: u64,
    ) -> Result<(), String> {
        let store = &self.inner.store;
        let name = ServerName::parse(destination).map_err(|e| e.to_string())?;
        if !self.inner.policy.allows(&name) {
            let dropped = store
                .federation_discard(destination)
                .await
                .map_err(|e| e.to_string())?;
            tracing::warn!(%destination, dropped, "dropped EDUs for a server the policy refuses");
            return Ok(());
        }
        let mut failures: u32 = store
            .destination_state(destination)
            .await
            .map_err(|e| e.to_string())?
            .map(|row| u32::try_from(row.retry_count).unwrap_or(u32::MAX))
            .unwrap_or(0);
        // Only a transaction stored before this task started (a restart, another process) can
        // be in flight at first; afterwards every transaction is built and finished here.
        let mut resumed = store
            .federation_inflight(destination)
            .await
            .map_err(|e| e.to_string())?;
        while !self.stopping() && self.owns(generation) {
            let (txn, body) = match resumed.take() {
                Some(txn) => {
                    let body: Value = serde_json::from_str(&txn.body).map_err(|e| e.to_string())?;
                    (txn, body)
                }
                None => match self.next_txn(destination).await? {
                    Some(built) => built,
                    None => return Ok(()),
                },
            };
            loop {
                if self.stopping() {
                    return Ok(());
                }
                if !self.owns(generation) || !self.inner.ownership.confirm(generation).await {
                    return Err("lost the destination lock".to_owned());
                }
                let mut lost = self.inner.ownership.generation.subscribe();
                let sent = tokio::select! {
                    sent = self.inner.transport.send(&name, &txn.txn_id, &body) => sent,
                    // The same txnId is retried by the next owner; the receiver deduplicates.
                    _ = lost.wait_for(|g| *g != generation) => {
                        return Err("lost the destination lock".to_owned());
                    }
                };
                match sent {
                    Ok(()) => {
                        store
                            .federation_finish_txn(&txn, now_ms())
                            .await
                            .map_err(|e| e.to_string())?;
                        dest.backing_off.store(false, Ordering::Release);
                        failures = 0;
                        self.inner.txns_sent.fetch_add(1, Ordering::Relaxed);
                        self.inner.edus_sent.fetch_add(
                            u64::try_from(txn.edu_ids.len()).unwrap_or(0),
                            Ordering::Relaxed,
                        );
                        break;
                    }
                    Err(reason) => {
                        failures = failures.saturating_add(1);
                        let delay = retry_delay_ms(
                            failures,
                            &self.inner.config.retry,
                            rand::thread_rng().gen::<f64>(),
                        );
                        let next = now_ms().saturating_add(i64::try_from(delay).unwrap_or(0));
                        tracing::info!(%destination, txn = %txn.txn_id, failures, delay_ms = delay, %reason,
                            "transaction failed; backing off");
                        let row = DestinationRow {
                            destination: destination.to_owned(),
                            retry_count: i64::from(failures),
                            next_attempt_ts: next,
                            last_txn_id: Some(txn.txn_id.clone()),
                        };
                        store
                            .set_destination_state(&row, now_ms())
                            .await
                            .map_err(|e| e.to_string())?;
                        dest.backing_off.store(true, Ordering::Release);
                        if self.wait_backoff(destination, dest, next, generation).await {
                            failures = 0;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Waits until `until`, an early wake (contact), an admin reset, shutdown or the loss of
    /// the destination lock. Returns `true` when the backoff was cut short by a contact or reset.
    async fn wait_backoff(
        &self,
        destination: &str,
        dest: &Destination,
        until: Millis,
        generation: u64,
    ) -> bool {
        let mut stop = self.inner.stop.subscribe();
        let mut lost = self.inner.ownership.generation.subscribe();
        loop {
            let now = now_ms();
            if now >= until || self.stopping() || !self.owns(generation) {
                return false;
            }
            let left = u64::try_from(until - now).unwrap_or(0);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(left.min(RECHECK_MS))) => {}
                _ = dest.wake.notified() => {
                    let _ = self.inner.store.federation_reset_destination(destination, now_ms()).await;
                    dest.backing_off.store(false, Ordering::Release);
                    return true;
                }
                _ = stop.changed() => return false,
                _ = lost.changed() => return false,
            }
            // An admin may have reset the destination in the database.
            if let Ok(Some(row)) = self.inner.store.destination_state(destination).await {
                if row.retry_count == 0 || row.next_attempt_ts <= now_ms() {
                    dest.backing_off.store(false, Ordering::Release);
                    return true;
                }
            }
        }
    }

    /// Builds the next transaction from the queue and stores it as in flight; returns it with
    /// its body as JSON (kept, so it is not parsed again from the stored text).
    async fn next_txn(&self, destination: &str) -> Result<Option<(InflightTxn, Value)>, String> {
        let store = &self.inner.store;
        let queued = store
            .outbound_peek(destination, MAX_EDUS_PER_TXN)
            .await
            .map_err(|e| e.to_string())?;
        if queued.is_empty() {
            return Ok(None);
        }
        let mut edus = Vec::with_capacity(queued.len());
        let mut ids = Vec::with_capacity(queued.len());
        // Stay well under receivers' request size limits; the rest waits for the next one.
        let take = edus_within_budget(
            queued.iter().map(|(_, edu)| edu.content.len()),
            MAX_TXN_EDU_BYTES,
        );
        for (id, edu) in queued.into_iter().take(take) {
            ids.push(id);
            // Content that cannot be signed (floats, huge integers) would block the queue forever.
            match serde_json::from_str::<Value>(&edu.content) {
                Ok(content) if to_canonical_bytes(&content).is_ok() => {
                    edus.push(json!({"edu_type": edu.edu_type, "content": content}));
                }
                _ => tracing::warn!(%destination, id, "dropping an EDU that cannot be signed"),
            }
        }
        let now = now_ms();
        let txn_id = format!("{now}_{:08x}", rand::thread_rng().gen::<u32>());
        let body = json!({
            "origin": self.inner.config.origin.as_str(),
            "origin_server_ts": now,
            "pdus": [],
            "edus": edus,
        });
        let txn = InflightTxn {
            destination: destination.to_owned(),
            txn_id,
            body: body.to_string(),
            edu_ids: ids,
        };
        store
            .federation_save_inflight(&txn, now)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Some((txn, body)))
    }
}

/// How many queued EDUs, with content of `sizes` bytes in queue order, go into one transaction:
/// the longest prefix within `budget` bytes, and at least one (an EDU bigger than the budget
/// goes alone rather than blocking the queue).
fn edus_within_budget(sizes: impl IntoIterator<Item = usize>, budget: usize) -> usize {
    let mut total = 0usize;
    let mut count = 0usize;
    for size in sizes {
        total = total.saturating_add(size);
        if count > 0 && total > budget {
            break;
        }
        count += 1;
    }
    count
}

fn now_ms() -> Millis {
    i64::try_from(unix_millis_now()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transactions_stay_within_the_byte_budget_but_always_carry_one_edu() {
        assert_eq!(edus_within_budget([], 100), 0);
        assert_eq!(edus_within_budget([10, 20, 30], 100), 3);
        assert_eq!(edus_within_budget([40, 60, 1], 100), 2);
        assert_eq!(edus_within_budget([101, 1], 100), 1);
        assert_eq!(edus_within_budget([1, 101], 100), 1);
        let big = MAX_TXN_EDU_BYTES / 3;
        assert_eq!(
            edus_within_budget(std::iter::repeat_n(big, 100), MAX_TXN_EDU_BYTES),
            3
        );
        // 100 EDUs of a typical size (a few KB) still fill a transaction.
        assert_eq!(
            edus_within_budget(std::iter::repeat_n(4_000, 100), MAX_TXN_EDU_BYTES),
            100
        );
    }

    #[test]
    fn delays_grow_exponentially_with_jitter_and_cap() {
        let policy = RetryPolicy {
            min_ms: 1_000,
            max_ms: 10 * MAX_RETRY_DELAY_MS,
        };
        assert_eq!(retry_delay_ms(1, &policy, 0.0), 500);
        assert_eq!(retry_delay_ms(1, &policy, 0.999_999), 999);
        assert_eq!(retry_delay_ms(2, &policy, 0.0), 1_000);
        assert_eq!(retry_delay_ms(4, &policy, 0.0), 4_000);
        for failures in [20, 40, u32::MAX] {
            for jitter in [0.0, 0.5, 0.99] {
                let d = retry_delay_ms(failures, &policy, jitter);
                assert!(d <= MAX_RETRY_DELAY_MS, "capped at one hour: {d}");
                assert!(d >= MAX_RETRY_DELAY_MS / 2);
            }
        }
        let short = RetryPolicy {
            min_ms: 50,
            max_ms: 200,
        };
        assert!(retry_delay_ms(10, &short, 0.99) <= 200);
    }
}
