//! Rate-limited log lines: a recurring event (a failed accept, a call that
//! finds its issuer without keys, a failed key fetch) is logged at most once
//! per interval, and each line says how many occurrences went unlogged
//! since the previous one.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Default interval between two lines about the same recurring event.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Decides when a recurring event is logged. Shared by reference (`&self`):
/// it can sit in a struct that many tasks use.
#[derive(Debug)]
pub struct LogThrottle {
    interval: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    last_logged: Option<Instant>,
    suppressed: u64,
}

impl LogThrottle {
    /// At most one line per `interval`.
    pub const fn new(interval: Duration) -> Self {
        Self { interval, state: Mutex::new(State { last_logged: None, suppressed: 0 }) }
    }

    /// The event happened: `Some(n)` when it is to be logged now, `n` being
    /// the occurrences not logged since the previous line; `None` to stay
    /// quiet (the occurrence is counted for the next line). The first
    /// occurrence, and the first after [`reset`](Self::reset), is always logged.
    pub fn admit(&self) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if s.last_logged.is_some_and(|t| t.elapsed() < self.interval) {
            s.suppressed += 1;
            return None;
        }
        s.last_logged = Some(Instant::now());
        Some(std::mem::take(&mut s.suppressed))
    }

    /// The condition ended (keys loaded again, say): the next occurrence is
    /// logged at once, and occurrences not logged are forgotten.
    pub fn reset(&self) {
        let mut s = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *s = State::default();
    }
}

impl Default for LogThrottle {
    fn default() -> Self {
        Self::new(LOG_INTERVAL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_line_per_interval_with_the_count_of_the_rest() {
        let t = LogThrottle::new(Duration::from_secs(10));
        assert_eq!(t.admit(), Some(0), "the first occurrence is logged");
        for _ in 0..499 {
            assert_eq!(t.admit(), None);
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(t.admit(), Some(499), "the next line counts what was not logged");
        assert_eq!(t.admit(), None);
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(t.admit(), None);
        t.reset();
        assert_eq!(t.admit(), Some(0), "after a reset, at once and from zero");
    }
}
