//! Where revocations are shared between replicas: a small [`Store`] trait
//! (append, and read from a position, which serves both the start-up replay
//! of the retention window and the continuous subscription), so that
//! another engine (NATS JetStream) can be added beside the two here:
//!
//! - [`memory::MemoryStore`]: in-process, the default when no store is
//!   configured; right for one replica only (`serve` says so at start-up);
//! - [`redis::RedisStore`]: a Redis Stream (`XADD … MINID ~`, `XRANGE`,
//!   `XREAD BLOCK`), for any number of replicas.

pub mod memory;
pub mod redis;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use super::RevocationEvent;

/// A boxed, sendable future (the trait is object-safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The position of an entry in the store, opaque to readers (a Redis stream
/// id such as `1764683013000-0`), compared only by the store.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StoreId(pub String);

impl fmt::Display for StoreId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a read starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Position {
    /// The first entry appended at or after this time (Unix ms): the
    /// replay of the retention window.
    Since(u64),
    /// The entries after this one: the subscription, from the last entry
    /// applied.
    After(StoreId),
}

/// One entry read from the store.
#[derive(Clone, Debug)]
pub struct Stored {
    /// Its position.
    pub id: StoreId,
    /// When the store appended it (Unix ms), if the store says.
    pub appended_ms: Option<u64>,
    /// The event, or why the entry could not be read as one (it is skipped
    /// and counted; the position still moves past it).
    pub event: Result<RevocationEvent, String>,
}

/// Why the store could not be reached or answered.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store is unreachable, timed out or answered an error. The text
    /// never holds a password.
    #[error("{0}")]
    Unavailable(String),
}

/// A shared, ordered log of revocation events (see the [module docs](self)).
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// What it is, for logs (never a password).
    fn describe(&self) -> String;

    /// Whether other replicas read what this one appends (false for the
    /// in-process store).
    fn is_shared(&self) -> bool;

    /// Appends `event`; its position once durably recorded.
    fn append<'a>(&'a self, event: &'a RevocationEvent) -> BoxFuture<'a, Result<StoreId, StoreError>>;

    /// Up to `max` entries from `from`, in order. With `block`, waits up to
    /// that long for an entry when none is there yet (then answers empty).
    fn read<'a>(
        &'a self,
        from: &'a Position,
        max: usize,
        block: Option<Duration>,
    ) -> BoxFuture<'a, Result<Vec<Stored>, StoreError>>;
}

/// The milliseconds part of a stream id (`<ms>-<seq>`).
pub fn id_millis(id: &str) -> Option<u64> {
    id.split_once('-').map_or(id, |(ms, _)| ms).parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_carry_their_millisecond() {
        assert_eq!(super::id_millis("1764683013000-7"), Some(1_764_683_013_000));
        assert_eq!(super::id_millis("12"), Some(12));
        assert_eq!(super::id_millis("x-1"), None);
    }
}
