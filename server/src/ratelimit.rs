//! Token-bucket rate limits per client IP and per user (`[rate_limits]` in the config).
//!
//! Each limited action has one bucket per key (an IP address, an IPv6 /64, or a user). A bucket
//! holds at most `burst` tokens and refills at `per_second`; a request takes one token or is
//! refused with the time until a token is available. A full bucket is the same as no bucket, so
//! idle buckets are evicted and memory stays bounded.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::{Bucket, RateLimits};

/// Buckets kept before a sweep is forced; beyond twice this the least recently used go.
const MAX_BUCKETS: usize = 100_000;

/// A rate-limited action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitKind {
    /// `/register` and registration-token validity, per IP.
    Register,
    /// `POST /login`, per IP and per target user.
    Login,
    /// `/keys/claim`, per requesting user.
    KeysClaim,
    /// `/sendToDevice`, per sending user.
    SendToDevice,
}

impl LimitKind {
    /// Every kind, for metrics.
    pub const ALL: [LimitKind; 4] = [
        LimitKind::Register,
        LimitKind::Login,
        LimitKind::KeysClaim,
        LimitKind::SendToDevice,
    ];

    /// Name used in metrics labels and logs (the config key).
    pub fn name(self) -> &'static str {
        match self {
            LimitKind::Register => "register",
            LimitKind::Login => "login",
            LimitKind::KeysClaim => "keys_claim",
            LimitKind::SendToDevice => "send_to_device",
        }
    }

    fn index(self) -> usize {
        match self {
            LimitKind::Register => 0,
            LimitKind::Login => 1,
            LimitKind::KeysClaim => 2,
            LimitKind::SendToDevice => 3,
        }
    }
}

/// Whom a bucket belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LimitKey {
    /// A client address (IPv6 addresses are grouped by /64).
    Ip(IpAddr),
    /// A user ID or a login name.
    User(String),
}

impl LimitKey {
    /// The key for a client address; IPv6 addresses share a bucket per /64 network.
    pub fn ip(addr: IpAddr) -> LimitKey {
        match addr {
            IpAddr::V4(v4) => LimitKey::Ip(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => LimitKey::Ip(IpAddr::V4(v4)),
                None => {
                    let bits = u128::from(v6) & !((1u128 << 64) - 1);
                    LimitKey::Ip(IpAddr::V6(bits.into()))
                }
            },
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct State {
    tokens: f64,
    updated: Instant,
}

/// The rate limiter shared by all requests.
#[derive(Debug)]
pub struct RateLimiter {
    enabled: bool,
    buckets: [Bucket; 4],
    state: Mutex<HashMap<(LimitKind, LimitKey), State>>,
    max_buckets: usize,
}

impl RateLimiter {
    /// A limiter for the configured buckets.
    pub fn new(config: &RateLimits) -> RateLimiter {
        RateLimiter {
            enabled: config.enabled,
            buckets: [
                config.register,
                config.login,
                config.keys_claim,
                config.send_to_device,
            ],
            state: Mutex::new(HashMap::new()),
            max_buckets: MAX_BUCKETS,
        }
    }

    /// Whether limits are switched on.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Takes one token from `key`'s bucket for `kind`, or says how long to wait.
    pub fn check(&self, kind: LimitKind, key: LimitKey, now: Instant) -> Result<(), Duration> {
        if !self.enabled {
            return Ok(());
        }
        let bucket = self.buckets[kind.index()];
        let burst = f64::from(bucket.burst);
        let mut map = match self.state.lock() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        };
        if map.len() >= self.max_buckets {
            self.evict(&mut map, now);
        }
        let state = map.entry((kind, key)).or_insert(State {
            tokens: burst,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(state.updated).as_secs_f64();
        state.tokens = (state.tokens + elapsed * bucket.per_second).min(burst);
        state.updated = now;
        if state.tokens >= 1.0 {
            state.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - state.tokens) / bucket.per_second;
            Err(Duration::from_secs_f64(wait.clamp(0.001, 86_400.0)))
        }
    }

    /// Drops every bucket that has refilled completely (it behaves exactly like a new one).
    pub fn sweep(&self, now: Instant) {
        let mut map = match self.state.lock() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        };
        self.drop_full(&mut map, now);
    }

    /// Number of buckets held (for tests and metrics).
    pub fn len(&self) -> usize {
        match self.state.lock() {
            Ok(map) => map.len(),
            Err(poisoned) => poisoned.into_inner().len(),
        }
    }

    /// Whether no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn drop_full(&self, map: &mut HashMap<(LimitKind, LimitKey), State>, now: Instant) {
        let buckets = self.buckets;
        map.retain(|(kind, _), state| {
            let bucket = buckets[kind.index()];
            let elapsed = now.saturating_duration_since(state.updated).as_secs_f64();
            state.tokens + elapsed * bucket.per_second < f64::from(bucket.burst)
        });
    }

    fn evict(&self, map: &mut HashMap<(LimitKind, LimitKey), State>, now: Instant) {
        self.drop_full(map, now);
        if map.len() >= self.max_buckets {
            // Still full of partly drained buckets (many distinct clients at once): forget the
            // least recently used half. That can only make the limit more lenient for them.
            let mut ages: Vec<Instant> = map.values().map(|s| s.updated).collect();
            let mid = ages.len() / 2;
            ages.select_nth_unstable(mid);
            let cutoff = ages[mid];
            map.retain(|_, s| s.updated > cutoff);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_second: f64, burst: u32) -> RateLimiter {
        let bucket = Bucket { per_second, burst };
        RateLimiter::new(&RateLimits {
            enabled: true,
            register: bucket,
            login: bucket,
            keys_claim: bucket,
            send_to_device: bucket,
        })
    }

    #[test]
    fn burst_then_refill() {
        let rl = limiter(2.0, 3);
        let t0 = Instant::now();
        let key = || LimitKey::User("@a:x".into());
        for _ in 0..3 {
            assert!(rl.check(LimitKind::Login, key(), t0).is_ok());
        }
        let wait = rl.check(LimitKind::Login, key(), t0).err();
        assert_eq!(wait.map(|d| d.as_millis()), Some(500));
        // Other kinds and keys have their own buckets.
        assert!(rl.check(LimitKind::KeysClaim, key(), t0).is_ok());
        assert!(rl
            .check(LimitKind::Login, LimitKey::User("@b:x".into()), t0)
            .is_ok());
        // Half a second later one token is back.
        let t1 = t0 + Duration::from_millis(500);
        assert!(rl.check(LimitKind::Login, key(), t1).is_ok());
        assert!(rl.check(LimitKind::Login, key(), t1).is_err());
    }

    #[test]
    fn disabled_never_limits() {
        let mut rl = limiter(0.001, 1);
        rl.enabled = false;
        let t0 = Instant::now();
        for _ in 0..100 {
            assert!(rl
                .check(LimitKind::Register, LimitKey::User("u".into()), t0)
                .is_ok());
        }
        assert!(rl.is_empty());
    }

    #[test]
    fn idle_buckets_are_swept_and_memory_is_bounded() {
        let mut rl = limiter(10.0, 2);
        rl.max_buckets = 100;
        let t0 = Instant::now();
        for i in 0..1000u32 {
            let key = LimitKey::ip(IpAddr::from(i.to_be_bytes()));
            let _ = rl.check(LimitKind::Register, key, t0);
        }
        assert!(rl.len() <= 100, "len {}", rl.len());
        rl.sweep(t0 + Duration::from_secs(1));
        assert!(rl.is_empty());
    }

    #[test]
    fn ipv6_grouped_by_prefix() {
        let a: IpAddr = "2001:db8::1".parse().unwrap_or(IpAddr::from([0u8; 16]));
        let b: IpAddr = "2001:db8::ffff:2"
            .parse()
            .unwrap_or(IpAddr::from([0u8; 16]));
        let c: IpAddr = "2001:db8:0:1::1".parse().unwrap_or(IpAddr::from([0u8; 16]));
        assert_eq!(LimitKey::ip(a), LimitKey::ip(b));
        assert_ne!(LimitKey::ip(a), LimitKey::ip(c));
        let mapped: IpAddr = "::ffff:1.2.3.4".parse().unwrap_or(IpAddr::from([0u8; 16]));
        assert_eq!(
            LimitKey::ip(mapped),
            LimitKey::Ip(IpAddr::from([1, 2, 3, 4]))
        );
    }
}
