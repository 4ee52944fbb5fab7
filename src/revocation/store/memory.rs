//! The in-process store: a bounded log in this process. Events reach this
//! replica only; it is the default when no `--revocation-store` is given,
//! and what unit tests use (it can be switched off to act out an outage).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

use super::{BoxFuture, Position, Store, StoreError, StoreId, Stored};
use crate::revocation::RevocationEvent;

/// An in-process log of at most `capacity` events (the oldest dropped).
#[derive(Debug)]
pub struct MemoryStore {
    log: Mutex<Log>,
    appended: Notify,
    available: AtomicBool,
    capacity: usize,
}

#[derive(Debug, Default)]
struct Log {
    next: u64,
    entries: VecDeque<(u64, u64, RevocationEvent)>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl MemoryStore {
    /// An empty log of at most `capacity` events.
    pub fn new(capacity: usize) -> Self {
        Self { log: Mutex::default(), appended: Notify::new(), available: AtomicBool::new(true), capacity }
    }

    /// Makes every call fail (false) or work again (true), as an outage would.
    pub fn set_available(&self, available: bool) {
        self.available.store(available, Ordering::SeqCst);
    }

    /// Events held.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether no event is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.available.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(StoreError::Unavailable("the in-process store is switched off".into()))
        }
    }

    fn collect(&self, from: &Position, max: usize) -> Vec<Stored> {
        let log = self.lock();
        let after = match from {
            Position::After(id) => id.0.parse::<u64>().ok(),
            Position::Since(_) => None,
        };
        log.entries
            .iter()
            .filter(|(seq, ms, _)| match from {
                Position::Since(since) => ms >= since,
                Position::After(_) => after.is_none_or(|a| *seq > a),
            })
            .take(max)
            .map(|(seq, ms, e)| Stored { id: StoreId(seq.to_string()), appended_ms: Some(*ms), event: Ok(e.clone()) })
            .collect()
    }
}

impl Store for MemoryStore {
    fn describe(&self) -> String {
        "in-process (this replica only)".to_owned()
    }

    fn is_shared(&self) -> bool {
        false
    }

    fn append<'a>(&'a self, event: &'a RevocationEvent) -> BoxFuture<'a, Result<StoreId, StoreError>> {
        Box::pin(async move {
            self.check()?;
            let id = {
                let mut log = self.lock();
                let seq = log.next;
                log.next += 1;
                log.entries.push_back((seq, now_ms(), event.clone()));
                while log.entries.len() > self.capacity {
                    log.entries.pop_front();
                }
                seq
            };
            self.appended.notify_waiters();
            Ok(StoreId(id.to_string()))
        })
    }

    fn read<'a>(
        &'a self,
        from: &'a Position,
        max: usize,
        block: Option<Duration>,
    ) -> BoxFuture<'a, Result<Vec<Stored>, StoreError>> {
        Box::pin(async move {
            self.check()?;
            let notified = self.appended.notified();
            let found = self.collect(from, max);
            match block {
                Some(wait) if found.is_empty() => {
                    let _ = tokio::time::timeout(wait, notified).await;
                    self.check()?;
                    Ok(self.collect(from, max))
                }
                _ => Ok(found),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::revocation::{Cause, Revocation};

    fn event(id: &str) -> RevocationEvent {
        RevocationEvent {
            id: id.into(),
            revocation: Revocation::User { sub: "u".into() },
            cause: Cause::Operator,
            at_ms: 1,
        }
    }

    #[tokio::test]
    async fn appends_are_read_in_order_from_a_position() {
        let store = MemoryStore::new(3);
        let a = store.append(&event("a")).await.unwrap();
        store.append(&event("b")).await.unwrap();
        let all = store.read(&Position::Since(0), 10, None).await.unwrap();
        assert_eq!(all.iter().map(|s| s.event.as_ref().unwrap().id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        let after = store.read(&Position::After(a), 10, None).await.unwrap();
        assert_eq!(after.len(), 1);
        // A blocked read wakes on an append.
        let last = after[0].id.clone();
        let from = Position::After(last);
        let (read, _) = tokio::join!(store.read(&from, 10, Some(Duration::from_secs(10))), async {
            tokio::task::yield_now().await;
            store.append(&event("c")).await.unwrap()
        });
        assert_eq!(read.unwrap()[0].event.as_ref().unwrap().id, "c");
        store.append(&event("d")).await.unwrap();
        assert_eq!(store.len(), 3, "bounded");
        store.set_available(false);
        assert!(store.append(&event("e")).await.is_err());
        assert!(store.read(&Position::Since(0), 1, None).await.is_err());
    }
}
