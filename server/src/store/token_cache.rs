//! A short-lived, in-process memory of access-token look-ups.
//!
//! Every authenticated request resolves its token; without this each one costs a database
//! read. An answer is reused for at most [`TOKEN_CACHE_TTL`]:
//!
//! * Within this process every store method that deletes access tokens (login replacing a
//!   device's token, logout, device deletion, deactivation) empties the cache when its
//!   transaction commits, and a look-up that raced with such a change is not remembered (a
//!   generation counter), so a revoked token is refused at once by the process that revoked it.
//! * Another process sharing the database (a second `hushd` on the same PostgreSQL, or
//!   `hushd admin` deactivating a user) cannot reach this memory: there a revoked token keeps
//!   working for at most [`TOKEN_CACHE_TTL`] longer.
//!
//! Keys are SHA-256 hashes of tokens, never tokens.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::{Millis, TokenOwner};

/// How long a token look-up is reused.
pub const TOKEN_CACHE_TTL: Duration = Duration::from_secs(1);

/// Most remembered tokens; when full, expired entries are dropped, then everything.
const TOKEN_CACHE_MAX: usize = 10_000;

#[derive(Debug, Default)]
struct Inner {
    /// Bumped by every invalidation.
    generation: u64,
    /// Owner, when it was looked up, and the device's `last_seen_ts` as of then.
    entries: HashMap<[u8; 32], (TokenOwner, Instant, Millis)>,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub(super) struct TokenCache {
    inner: Mutex<Inner>,
}

impl TokenCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The remembered owner of `hash`, if fresh and its device's remembered `last_seen_ts` is
    /// after `refresh_before` (so that the caller need not rewrite it); otherwise the current
    /// generation, to be passed to [`TokenCache::put`] after the database look-up.
    pub(super) fn get(
        &self,
        hash: &[u8; 32],
        now: Instant,
        refresh_before: Millis,
    ) -> Result<TokenOwner, u64> {
        let inner = self.lock();
        match inner.entries.get(hash) {
            Some((owner, at, seen))
                if now.saturating_duration_since(*at) < TOKEN_CACHE_TTL
                    && *seen > refresh_before =>
            {
                Ok(owner.clone())
            }
            _ => Err(inner.generation),
        }
    }

    /// Remembers a look-up made at `now` (with the device's `last_seen_ts` after it), unless the
    /// cache was invalidated since `generation` was read (the answer may predate a revocation).
    pub(super) fn put(
        &self,
        hash: [u8; 32],
        owner: TokenOwner,
        last_seen: Millis,
        generation: u64,
        now: Instant,
    ) {
        let mut inner = self.lock();
        if inner.generation != generation {
            return;
        }
        if inner.entries.len() >= TOKEN_CACHE_MAX {
            inner
                .entries
                .retain(|_, (_, at, _)| now.saturating_duration_since(*at) < TOKEN_CACHE_TTL);
            if inner.entries.len() >= TOKEN_CACHE_MAX {
                inner.entries.clear();
            }
        }
        inner.entries.insert(hash, (owner, now, last_seen));
    }

    /// Forgets everything; called after every transaction that may have deleted access tokens
    /// (committed or not). Look-ups read the generation before the database, so one that saw
    /// the token before the commit is not remembered.
    pub(super) fn invalidate(&self) {
        let mut inner = self.lock();
        inner.generation = inner.generation.wrapping_add(1);
        inner.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner() -> TokenOwner {
        TokenOwner {
            user_id: "@a:x".into(),
            device_id: "D".into(),
        }
    }

    #[test]
    fn remembers_until_expiry_or_invalidation() {
        let cache = TokenCache::default();
        let t0 = Instant::now();
        let generation = cache.get(&[1; 32], t0, 0).err().unwrap_or(u64::MAX);
        cache.put([1; 32], owner(), 100, generation, t0);
        assert_eq!(cache.get(&[1; 32], t0, 0).ok(), Some(owner()));
        assert!(cache.get(&[1; 32], t0 + TOKEN_CACHE_TTL, 0).is_err());
        cache.invalidate();
        assert!(cache.get(&[1; 32], t0, 0).is_err());
    }

    #[test]
    fn a_lookup_that_raced_with_a_revocation_is_not_remembered() {
        let cache = TokenCache::default();
        let t0 = Instant::now();
        let generation = cache.get(&[2; 32], t0, 0).err().unwrap_or(u64::MAX);
        cache.invalidate(); // a logout committed while the look-up ran
        cache.put([2; 32], owner(), 100, generation, t0);
        assert!(cache.get(&[2; 32], t0, 0).is_err());
    }

    #[test]
    fn a_due_last_seen_rewrite_bypasses_the_cache() {
        let cache = TokenCache::default();
        let t0 = Instant::now();
        let generation = cache.get(&[3; 32], t0, 0).err().unwrap_or(u64::MAX);
        cache.put([3; 32], owner(), 100, generation, t0);
        assert!(cache.get(&[3; 32], t0, 99).is_ok());
        assert!(cache.get(&[3; 32], t0, 100).is_err());
    }
}
