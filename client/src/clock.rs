//! The time the engine and the store decide with: session age (the 30-day rule of
//! docs/protocol.md §7), signed prekey rotation, key maintenance, pins, notices and message
//! timestamps all read the [`Clock`] of their [`crate::engine::Client`] instead of the system
//! time directly.
//!
//! A clock is the system time by default. [`Clock::shifted`] gives the system time plus a
//! [`TimeShift`] that can only move forward; every clone of the clock and of the shift sees the
//! same value, so a test can move one client's time ahead by days without touching any other
//! client or any global state.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A forward shift shared by every clock made from it with [`Clock::shifted`].
#[derive(Debug, Clone, Default)]
pub struct TimeShift {
    millis: Arc<AtomicU64>,
}

impl TimeShift {
    /// A shift of zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves the shifted clocks `by` further into the future.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        // `fetch_update` with a closure that always answers never fails.
        let _ = self
            .millis
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |m| {
                Some(m.saturating_add(by))
            });
    }

    /// The current shift.
    pub fn get(&self) -> Duration {
        Duration::from_millis(self.millis.load(Ordering::SeqCst))
    }
}

/// Where "now" comes from: the system time, optionally shifted forward.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    shift: Option<TimeShift>,
}

impl Clock {
    /// The system time.
    pub fn system() -> Self {
        Self { shift: None }
    }

    /// The system time plus `shift` (which later calls to [`TimeShift::advance`] move).
    pub fn shifted(shift: &TimeShift) -> Self {
        Self {
            shift: Some(shift.clone()),
        }
    }

    /// Milliseconds since the Unix epoch (0 if the system time is before it).
    pub fn now_ms(&self) -> u64 {
        let system = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        let shift = self.shift.as_ref().map_or(0, |s| {
            u64::try_from(s.get().as_millis()).unwrap_or(u64::MAX)
        });
        system.saturating_add(shift)
    }

    /// Seconds since the Unix epoch.
    pub fn now_secs(&self) -> u64 {
        self.now_ms() / 1000
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn a_shifted_clock_moves_with_its_shift_and_nothing_else_does() {
        let shift = TimeShift::new();
        let shifted = Clock::shifted(&shift);
        let copy = shifted.clone();
        let system = Clock::system();
        let before = system.now_secs();
        assert!(shifted.now_secs().abs_diff(before) <= 1);
        shift.advance(DAY * 31);
        shift.clone().advance(DAY);
        assert_eq!(shift.get(), DAY * 32);
        for clock in [&shifted, &copy] {
            let ahead = clock.now_secs() - system.now_secs();
            assert!(
                (32 * 86_400 - 1..=32 * 86_400 + 1).contains(&ahead),
                "{ahead}"
            );
        }
        assert!(
            system.now_secs() - before <= 1,
            "the system clock is not shifted"
        );
        assert!(Clock::default().now_secs().abs_diff(system.now_secs()) <= 1);
    }

    #[test]
    fn a_huge_shift_saturates() {
        let shift = TimeShift::new();
        shift.advance(Duration::MAX);
        shift.advance(Duration::MAX);
        assert_eq!(Clock::shifted(&shift).now_ms(), u64::MAX);
    }
}
