//! Wall-clock time behind a trait, so that token lifetimes and key staleness
//! can be tested without sleeping.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of the current wall-clock time.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// The current time.
    fn now(&self) -> SystemTime;

    /// The current time in whole seconds since the Unix epoch (floored).
    fn unix_seconds(&self) -> i64 {
        unix_seconds(self.now())
    }
}

/// Seconds since the Unix epoch, floored; negative before 1970.
pub fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => {
            let d = e.duration();
            let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            if d.subsec_nanos() > 0 { -secs - 1 } else { -secs }
        }
    }
}

/// The operating system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that only moves when told to: for tests and benchmarks.
#[derive(Debug)]
pub struct ManualClock {
    /// Nanoseconds since the Unix epoch.
    nanos: AtomicI64,
}

impl ManualClock {
    /// A clock stopped at `t`.
    pub fn new(t: SystemTime) -> Self {
        let nanos = t.duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)).unwrap_or(0);
        Self { nanos: AtomicI64::new(nanos) }
    }

    /// A clock stopped at the current system time.
    pub fn starting_now() -> Self {
        Self::new(SystemTime::now())
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        let step = i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
        self.nanos.fetch_add(step, Ordering::SeqCst);
    }

    /// Sets the clock to `t`.
    pub fn set(&self, t: SystemTime) {
        let nanos = t.duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)).unwrap_or(0);
        self.nanos.store(nanos, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        let nanos = self.nanos.load(Ordering::SeqCst);
        UNIX_EPOCH + Duration::from_nanos(u64::try_from(nanos).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_seconds_floors_both_sides_of_the_epoch() {
        assert_eq!(unix_seconds(UNIX_EPOCH + Duration::from_millis(1500)), 1);
        assert_eq!(unix_seconds(UNIX_EPOCH - Duration::from_millis(500)), -1);
        assert_eq!(unix_seconds(UNIX_EPOCH - Duration::from_secs(2)), -2);
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(UNIX_EPOCH + Duration::from_secs(100));
        assert_eq!(c.unix_seconds(), 100);
        c.advance(Duration::from_secs(5));
        assert_eq!(c.unix_seconds(), 105);
    }
}
