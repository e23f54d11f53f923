//! Cache of other servers' signing keys, used to verify X-Matrix request signatures.
//!
//! A key document is fetched from the origin itself (`GET /_matrix/key/v2/server`), verified
//! (self-signed by every listed key, `valid_until_ts` in the future) and cached until its
//! `valid_until_ts`, capped at seven days. A request signed with a key id the cache does not know
//! triggers a refetch (at most once per [`KeyCachePolicy::min_refetch_ms`] per server, so forged
//! key ids cannot make us hammer a server). Failed fetches back off exponentially per server.
//! A key listed only under `old_verify_keys` no longer signs requests: it is reported as expired.
//!
//! It also holds [`fan_out`], which sends the client API's `keys/query` and `keys/claim` for
//! remote users to every destination server at once, so one slow or dead server costs the
//! client at most one timeout, not one timeout per server.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use futures::StreamExt;
use hush_federation::ids::ServerName;
use hush_federation::keys::{unix_millis_now, VerifiedServerKeys};
use serde_json::Value;

use crate::service::keys::RemoteKeys;

/// How many destinations one client request talks to at the same time.
pub const MAX_PARALLEL_DESTINATIONS: usize = 64;
/// Extra time the fan-out grants a proxy beyond the request's own timeout before it gives up
/// on a destination itself (the proxy normally enforces the timeout; this bounds one that
/// does not).
const FAN_OUT_GRACE_MS: u64 = 500;

/// Which federation key endpoint a [`fan_out`] calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteKeyCall {
    /// `POST /_matrix/federation/v1/user/keys/query`.
    Query,
    /// `POST /_matrix/federation/v1/user/keys/claim`.
    Claim,
}

/// Sends one request body per destination server through `proxy`, all destinations
/// concurrently (at most [`MAX_PARALLEL_DESTINATIONS`] at a time), each bounded by
/// `timeout_ms`. Returns every destination's answer or failure message, ordered by server
/// name; without a proxy every destination fails with the same message.
pub async fn fan_out(
    proxy: Option<&Arc<dyn RemoteKeys>>,
    call: RemoteKeyCall,
    requests: BTreeMap<String, Value>,
    timeout_ms: u64,
) -> Vec<(String, Result<Value, String>)> {
    let Some(proxy) = proxy else {
        return requests
            .into_keys()
            .map(|server| {
                (
                    server,
                    Err("Federation is not available on this server".to_owned()),
                )
            })
            .collect();
    };
    let limit = Duration::from_millis(timeout_ms.saturating_add(FAN_OUT_GRACE_MS));
    // Collected first, so no closure is part of the stream's type.
    let calls: Vec<_> = requests
        .into_iter()
        .map(|(server, body)| async move {
            let answer = {
                let request = match call {
                    RemoteKeyCall::Query => proxy.query(&server, body, timeout_ms),
                    RemoteKeyCall::Claim => proxy.claim(&server, body, timeout_ms),
                };
                match tokio::time::timeout(limit, request).await {
                    Ok(answer) => answer,
                    Err(_) => Err(format!("{server} did not answer in time")),
                }
            };
            (server, answer)
        })
        .collect();
    let mut answers: Vec<(String, Result<Value, String>)> = futures::stream::iter(calls)
        .buffer_unordered(MAX_PARALLEL_DESTINATIONS)
        .collect()
        .await;
    answers.sort_by(|a, b| a.0.cmp(&b.0));
    answers
}

/// A boxed future returned by [`KeyFetcher::fetch`].
pub type FetchFuture<'a> =
    Pin<Box<dyn Future<Output = Result<VerifiedServerKeys, String>> + Send + 'a>>;

/// Fetches a server's key document (`GET https://SERVER/_matrix/key/v2/server`).
pub trait KeyFetcher: Send + Sync {
    /// Returns the key document of `server`, checked with
    /// [`hush_federation::keys::verify_key_document`], or why it could not be had.
    fn fetch<'a>(&'a self, server: &'a ServerName) -> FetchFuture<'a>;
}

/// Why no key could be found for a signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyLookupError {
    /// The server's current key document does not list this key id.
    #[error("{server} publishes no key {key_id}")]
    UnknownKey {
        /// The origin server.
        server: String,
        /// The key id the request named.
        key_id: String,
    },
    /// The key is retired (listed under `old_verify_keys`) and may no longer sign requests.
    #[error("key {key_id} of {server} has expired")]
    Expired {
        /// The origin server.
        server: String,
        /// The retired key id.
        key_id: String,
    },
    /// The key document could not be fetched or did not verify (or we are backing off).
    #[error("keys of {server} are unavailable: {reason}")]
    Unavailable {
        /// The origin server.
        server: String,
        /// What went wrong.
        reason: String,
    },
}

/// Timing knobs of the cache.
#[derive(Debug, Clone, Copy)]
pub struct KeyCachePolicy {
    /// Least time between two fetches of one server's keys while its cached document is valid.
    pub min_refetch_ms: u64,
    /// First wait after a failed fetch.
    pub failure_backoff_min_ms: u64,
    /// Longest wait after repeated failed fetches.
    pub failure_backoff_max_ms: u64,
}

impl Default for KeyCachePolicy {
    fn default() -> Self {
        KeyCachePolicy {
            min_refetch_ms: 2_000,
            failure_backoff_min_ms: 1_000,
            failure_backoff_max_ms: 5 * 60_000,
        }
    }
}

struct Cached {
    keys: VerifiedServerKeys,
    cache_until: u64,
    fetched_at: u64,
}

#[derive(Default)]
struct Slot {
    cached: Option<Cached>,
    failures: u32,
    retry_at: u64,
}

/// The cache of remote server keys. Cheap to share behind an `Arc`.
pub struct RemoteKeyCache {
    fetcher: Arc<dyn KeyFetcher>,
    policy: KeyCachePolicy,
    slots: Mutex<HashMap<ServerName, Slot>>,
    fetch_locks: Mutex<HashMap<ServerName, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for RemoteKeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteKeyCache")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

enum Lookup {
    Found(VerifyingKey),
    Refused(KeyLookupError),
    Fetch,
}

impl RemoteKeyCache {
    /// A cache that fetches through `fetcher`.
    pub fn new(fetcher: Arc<dyn KeyFetcher>, policy: KeyCachePolicy) -> RemoteKeyCache {
        RemoteKeyCache {
            fetcher,
            policy,
            slots: Mutex::new(HashMap::new()),
            fetch_locks: Mutex::new(HashMap::new()),
        }
    }

    /// The public key `key_id` of `server`, valid now; fetches the key document when needed.
    pub async fn key(
        &self,
        server: &ServerName,
        key_id: &str,
    ) -> Result<VerifyingKey, KeyLookupError> {
        match self.lookup(server, key_id, unix_millis_now(), false) {
            Lookup::Found(key) => return Ok(key),
            Lookup::Refused(err) => return Err(err),
            Lookup::Fetch => {}
        }
        // One fetch per server at a time; later callers see its result in the cache.
        let lock = {
            let mut locks = self
                .fetch_locks
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            locks.entry(server.clone()).or_default().clone()
        };
        let _guard = lock.lock().await;
        match self.lookup(server, key_id, unix_millis_now(), true) {
            Lookup::Found(key) => return Ok(key),
            Lookup::Refused(err) => return Err(err),
            Lookup::Fetch => {}
        }
        let fetched = self.fetcher.fetch(server).await;
        let now = unix_millis_now();
        // Checked again here so no fetcher can hand us another server's or a stale document.
        let verified = fetched.and_then(|keys| {
            if &keys.server_name != server {
                Err(format!("key document names {}", keys.server_name))
            } else if keys.valid_until_ts <= now {
                Err("key document has expired".to_owned())
            } else {
                Ok(keys)
            }
        });
        {
            let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
            let slot = slots.entry(server.clone()).or_default();
            match verified {
                Ok(keys) => {
                    let cache_until = keys.cache_until(now);
                    slot.cached = Some(Cached {
                        keys,
                        cache_until,
                        fetched_at: now,
                    });
                    slot.failures = 0;
                    slot.retry_at = 0;
                }
                Err(reason) => {
                    slot.failures = slot.failures.saturating_add(1);
                    slot.retry_at = now.saturating_add(self.failure_delay(slot.failures));
                    tracing::warn!(%server, %reason, "fetching server keys failed");
                    return Err(KeyLookupError::Unavailable {
                        server: server.to_string(),
                        reason,
                    });
                }
            }
        }
        match self.lookup(server, key_id, now, true) {
            Lookup::Found(key) => Ok(key),
            Lookup::Refused(err) => Err(err),
            Lookup::Fetch => Err(KeyLookupError::UnknownKey {
                server: server.to_string(),
                key_id: key_id.to_owned(),
            }),
        }
    }

    /// Forgets everything cached about `server` (used by tests and after an admin reset).
    pub fn forget(&self, server: &ServerName) {
        self.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(server);
    }

    fn failure_delay(&self, failures: u32) -> u64 {
        let exp = failures.saturating_sub(1).min(30);
        self.policy
            .failure_backoff_min_ms
            .saturating_mul(1u64 << exp)
            .min(self.policy.failure_backoff_max_ms)
    }

    /// Answers from the cache. With `before_fetch`, also decides whether a fetch is allowed now.
    fn lookup(&self, server: &ServerName, key_id: &str, now: u64, before_fetch: bool) -> Lookup {
        let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(slot) = slots.get(server) else {
            return Lookup::Fetch;
        };
        let mut fresh = false;
        if let Some(cached) = &slot.cached {
            if cached.cache_until > now {
                fresh = true;
                if let Some(key) = cached.keys.verify_keys.get(key_id) {
                    return Lookup::Found(*key);
                }
                if cached.keys.old_verify_keys.contains_key(key_id) {
                    return Lookup::Refused(KeyLookupError::Expired {
                        server: server.to_string(),
                        key_id: key_id.to_owned(),
                    });
                }
            }
        }
        if !before_fetch {
            return Lookup::Fetch;
        }
        if slot.retry_at > now {
            return Lookup::Refused(KeyLookupError::Unavailable {
                server: server.to_string(),
                reason: "backing off after a failed key fetch".to_owned(),
            });
        }
        let recently_fetched = slot.cached.as_ref().is_some_and(|c| {
            fresh && c.fetched_at.saturating_add(self.policy.min_refetch_ms) > now
        });
        if recently_fetched {
            return Lookup::Refused(KeyLookupError::UnknownKey {
                server: server.to_string(),
                key_id: key_id.to_owned(),
            });
        }
        Lookup::Fetch
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use hush_federation::keys::verify_key_document;
    use hush_federation::keys::{build_key_document, OldVerifyKey, ServerSigningKey};
    use serde_json::Value;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Serves whatever document the test put in, counting fetches.
    struct Served {
        document: Mutex<Option<Value>>,
        fetches: AtomicUsize,
    }

    impl KeyFetcher for Served {
        fn fetch<'a>(&'a self, server: &'a ServerName) -> FetchFuture<'a> {
            self.fetches.fetch_add(1, Ordering::SeqCst);
            let doc = self.document.lock().unwrap().clone();
            Box::pin(async move {
                let doc = doc.ok_or_else(|| "connection refused".to_owned())?;
                verify_key_document(&doc, server, unix_millis_now()).map_err(|e| e.to_string())
            })
        }
    }

    fn setup(policy: KeyCachePolicy) -> (Arc<Served>, RemoteKeyCache, ServerName) {
        let served = Arc::new(Served {
            document: Mutex::new(None),
            fetches: AtomicUsize::new(0),
        });
        let cache = RemoteKeyCache::new(served.clone(), policy);
        (served, cache, ServerName::parse("remote.example").unwrap())
    }

    fn publish(
        served: &Served,
        name: &ServerName,
        keys: &[&ServerSigningKey],
        old: &[OldVerifyKey],
        until: u64,
    ) {
        let doc = build_key_document(name, keys, old, until).unwrap();
        *served.document.lock().unwrap() = Some(doc);
    }

    #[tokio::test]
    async fn caches_until_valid_and_refetches_unknown_ids() {
        let policy = KeyCachePolicy {
            min_refetch_ms: 0,
            ..KeyCachePolicy::default()
        };
        let (served, cache, name) = setup(policy);
        let first = ServerSigningKey::generate("one").unwrap();
        publish(&served, &name, &[&first], &[], unix_millis_now() + 60_000);
        let got = cache.key(&name, &first.key_id()).await.unwrap();
        assert_eq!(got, first.verifying_key());
        cache.key(&name, &first.key_id()).await.unwrap();
        assert_eq!(
            served.fetches.load(Ordering::SeqCst),
            1,
            "second lookup is cached"
        );

        // Rotation: a new key id makes the cache refetch; the old key is now expired.
        let second = ServerSigningKey::generate("two").unwrap();
        let old = OldVerifyKey {
            key_id: first.key_id(),
            key: first.verifying_key(),
            expired_ts: 1,
        };
        publish(
            &served,
            &name,
            &[&second],
            &[old],
            unix_millis_now() + 60_000,
        );
        assert_eq!(
            cache.key(&name, &second.key_id()).await.unwrap(),
            second.verifying_key()
        );
        assert_eq!(served.fetches.load(Ordering::SeqCst), 2);
        assert!(matches!(
            cache.key(&name, &first.key_id()).await,
            Err(KeyLookupError::Expired { .. })
        ));
        assert!(matches!(
            cache.key(&name, "ed25519:nope").await,
            Err(KeyLookupError::UnknownKey { .. })
        ));
    }

    /// A proxy whose every call waits until `parties` calls are in flight at once, then
    /// answers with the destination's name; a destination named `dead` never answers.
    struct Rendezvous {
        barrier: tokio::sync::Barrier,
    }

    impl RemoteKeys for Rendezvous {
        fn query<'a>(
            &'a self,
            destination: &'a str,
            body: Value,
            _timeout_ms: u64,
        ) -> crate::service::keys::RemoteFuture<'a> {
            Box::pin(async move {
                if destination == "dead" {
                    std::future::pending::<()>().await;
                }
                self.barrier.wait().await;
                Ok::<Value, String>(serde_json::json!({"server": destination, "body": body}))
            })
        }

        fn claim<'a>(
            &'a self,
            destination: &'a str,
            body: Value,
            timeout_ms: u64,
        ) -> crate::service::keys::RemoteFuture<'a> {
            self.query(destination, body, timeout_ms)
        }
    }

    #[tokio::test]
    async fn fan_out_asks_every_destination_at_once() {
        // Answers come only when both live destinations are asked concurrently: asked one
        // after another, the first would wait at the barrier until its timeout.
        let proxy: Arc<dyn RemoteKeys> = Arc::new(Rendezvous {
            barrier: tokio::sync::Barrier::new(2),
        });
        let requests: BTreeMap<String, Value> = ["b.example", "dead", "a.example"]
            .iter()
            .map(|s| (s.to_string(), serde_json::json!({ "to": s })))
            .collect();
        for call in [RemoteKeyCall::Query, RemoteKeyCall::Claim] {
            let answers = fan_out(Some(&proxy), call, requests.clone(), 300).await;
            let names: Vec<&str> = answers.iter().map(|(s, _)| s.as_str()).collect();
            assert_eq!(names, ["a.example", "b.example", "dead"]);
            for (server, answer) in &answers[..2] {
                let answer = answer.as_ref().unwrap();
                assert_eq!(answer["server"], server.as_str());
                assert_eq!(answer["body"]["to"], server.as_str());
            }
            assert!(answers[2]
                .1
                .as_ref()
                .unwrap_err()
                .contains("did not answer"));
        }
        let answers = fan_out(None, RemoteKeyCall::Query, requests, 300).await;
        assert_eq!(answers.len(), 3);
        assert!(answers.iter().all(|(_, a)| a.is_err()));
    }

    #[tokio::test]
    async fn unknown_key_refetch_is_rate_limited() {
        let (served, cache, name) = setup(KeyCachePolicy::default());
        let key = ServerSigningKey::generate("one").unwrap();
        publish(&served, &name, &[&key], &[], unix_millis_now() + 60_000);
        cache.key(&name, &key.key_id()).await.unwrap();
        for _ in 0..5 {
            assert!(cache.key(&name, "ed25519:forged").await.is_err());
        }
        assert_eq!(served.fetches.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn failed_fetches_back_off_and_bad_documents_are_refused() {
        let (served, cache, name) = setup(KeyCachePolicy::default());
        assert!(matches!(
            cache.key(&name, "ed25519:one").await,
            Err(KeyLookupError::Unavailable { .. })
        ));
        assert!(cache.key(&name, "ed25519:one").await.is_err());
        assert_eq!(
            served.fetches.load(Ordering::SeqCst),
            1,
            "second try is inside the backoff"
        );

        // A document that has already expired is refused.
        let (served, cache, name) = setup(KeyCachePolicy::default());
        let key = ServerSigningKey::generate("one").unwrap();
        publish(
            &served,
            &name,
            &[&key],
            &[],
            unix_millis_now().saturating_sub(1),
        );
        assert!(matches!(
            cache.key(&name, &key.key_id()).await,
            Err(KeyLookupError::Unavailable { .. })
        ));

        // A document for another server is refused.
        let (served, cache, name) = setup(KeyCachePolicy::default());
        let other = ServerName::parse("other.example").unwrap();
        publish(&served, &other, &[&key], &[], unix_millis_now() + 60_000);
        assert!(cache.key(&name, &key.key_id()).await.is_err());
    }
}
