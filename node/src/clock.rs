//! The node's one clock: Unix time in milliseconds or seconds, from the system or from a
//! manual clock that a test sets and moves.
//!
//! Times that are only recorded (audit events, commits, records, claims) read the system
//! through [`unix_ms`] and [`unix_s`]. Decisions that depend on the time (what is due, when
//! to try again) are pure functions of `now`; whoever runs them reads a [`Clock`], so a
//! test decides the time instead of sleeping through it. This module depends on nothing
//! else in the crate.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Unix milliseconds now, from the system clock (0 if it reads before 1970).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Unix seconds now, from the system clock (0 if it reads before 1970).
pub fn unix_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Where the time comes from: the system clock (the default), or a [`ManualClock`].
/// Clones read the same time.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    /// The manual clock's milliseconds; `None` for the system clock.
    manual: Option<Arc<AtomicU64>>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock::default()
    }

    /// Unix milliseconds now.
    pub fn now_ms(&self) -> u64 {
        match &self.manual {
            Some(ms) => ms.load(Ordering::SeqCst),
            None => unix_ms(),
        }
    }

    /// Unix seconds now (the milliseconds, rounded down).
    pub fn now_s(&self) -> u64 {
        self.now_ms() / 1000
    }
}

/// A clock that stands still until it is moved, for tests of what is due when. The
/// [`Clock`]s it hands out read its time.
#[derive(Clone, Debug)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock standing at `ms` Unix milliseconds.
    pub fn at_ms(ms: u64) -> ManualClock {
        ManualClock(Arc::new(AtomicU64::new(ms)))
    }

    /// A [`Clock`] that reads this one.
    pub fn clock(&self) -> Clock {
        Clock {
            manual: Some(self.0.clone()),
        }
    }

    /// Unix milliseconds, as it stands.
    pub fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }

    /// Moves the time on by `by` (saturating at the largest time it can hold).
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        let _ = self
            .0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |ms| {
                Some(ms.saturating_add(by))
            });
    }

    /// Sets the time to `ms` Unix milliseconds (backwards too, as a system clock may go).
    pub fn set_ms(&self, ms: u64) {
        self.0.store(ms, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_clock_reads_the_system_time() {
        let before = unix_ms();
        let read = Clock::system().now_ms();
        let after = unix_ms();
        assert!(before <= read && read <= after);
        let s = Clock::system().now_s();
        assert!(s.abs_diff(unix_s()) <= 1);
        assert!(s > 1_700_000_000, "after November 2023");
    }

    #[test]
    fn a_manual_clock_moves_only_when_told_and_its_clocks_follow() {
        let manual = ManualClock::at_ms(1_000_500);
        let clock = manual.clock();
        let copy = clock.clone();
        assert_eq!(clock.now_ms(), 1_000_500);
        assert_eq!(clock.now_s(), 1000);
        manual.advance(Duration::from_millis(499));
        assert_eq!(copy.now_ms(), 1_000_999);
        assert_eq!(copy.now_s(), 1000);
        manual.advance(Duration::from_millis(1));
        assert_eq!(clock.now_s(), 1001);
        manual.set_ms(5);
        assert_eq!(clock.now_ms(), 5);
        manual.advance(Duration::MAX);
        assert_eq!(manual.now_ms(), u64::MAX);
    }
}
