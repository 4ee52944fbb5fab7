//! The revocation service of one replica: it implements [`Record`] (the
//! webhook endpoint calls it), follows the store, sweeps expired entries,
//! and tells readiness ([`Gate`]).
//!
//! **Recording** an event applies it to this replica's [`Index`] at once,
//! then appends it to the store. "Applied here" and "appended" are tracked
//! apart: an event applied during a store outage answers
//! [`RecordError::Store`] (the webhook answers 5xx, Svix retries), and the
//! retry, though its id is already applied here, is appended then (and
//! only then answered [`Recorded::Duplicate`] on later deliveries).
//!
//! **Following** the store: at start-up the retention window is replayed
//! (from now − retention), then the store is read continuously from the last
//! entry applied (a blocking read). A read that fails is retried with a
//! backoff ([`READ_BACKOFF_MIN`] doubling to [`READ_BACKOFF_MAX`]) from
//! the same position, so after an outage the replica catches up and nothing
//! is lost; everything already applied keeps being enforced meanwhile.
//!
//! **Readiness** ([`Gate`]): closed until the replay is done. With
//! `--revocation-store-required`, also closed while the store has been down
//! longer than the outage limit. Without it (the default) a store outage
//! does not take authentication down; and a replica that cannot replay at
//! start-up (the store is down) opens after the outage limit anyway and
//! replays as soon as the store answers.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;
use tracing::{info, warn};

use super::index::{Applied, Index, Kind, check_event};
use super::store::{Position, Store, StoreId, Stored};
use super::{Record, RecordError, Recorded, RevocationEvent};
use crate::clock::Clock;
use crate::health::{Condition, Gate};
use crate::telemetry::metrics::{AppliedLabels, NotAppliedLabels, RevocationMetrics, StoreOpLabels};
use crate::telemetry::throttle::LogThrottle;

/// Default `--revocation-retention`: the longest a token accepted by this
/// server can live (JWT templates; session tokens live 60 s).
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// Default `--revocation-max-entries`.
pub const DEFAULT_MAX_ENTRIES: usize = 1_000_000;
/// Default `--revocation-store-outage-limit`.
pub const DEFAULT_OUTAGE_LIMIT: Duration = Duration::from_secs(30);
/// Entries read per call, in the replay and while following.
pub const READ_PAGE: usize = 1000;
/// How long one blocking read waits for a new entry.
pub const FOLLOW_BLOCK: Duration = Duration::from_secs(1);
/// First wait after a failed read.
pub const READ_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest wait after failed reads.
pub const READ_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Interval between two sweeps of expired entries.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// The service's settings (from `--revocation-*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// How long an entry lives after its event.
    pub retention: Duration,
    /// Most entries held.
    pub max_entries: usize,
    /// Whether a store outage longer than `outage_limit` closes readiness.
    pub store_required: bool,
    /// See `store_required`; also how long a replica that cannot replay at
    /// start-up waits before it opens anyway (when not required).
    pub outage_limit: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            retention: DEFAULT_RETENTION,
            max_entries: DEFAULT_MAX_ENTRIES,
            store_required: false,
            outage_limit: DEFAULT_OUTAGE_LIMIT,
        }
    }
}

/// The store's state as the service sees it.
#[derive(Debug)]
struct StoreState {
    /// Whether the last call to the store worked.
    up: AtomicBool,
    /// Since when it has not (None while up).
    down_since: Mutex<Option<Instant>>,
    /// Whether the start-up replay is done.
    replayed: AtomicBool,
    /// Events applied by the replay.
    replayed_events: AtomicU64,
    started: Instant,
}

/// The revocation service (see the [module docs](self)).
pub struct RevocationService {
    index: Arc<Index>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    settings: Settings,
    state: StoreState,
    metrics: RevocationMetrics,
    changed: Arc<Notify>,
    full_log: LogThrottle,
    store_log: LogThrottle,
}

impl std::fmt::Debug for RevocationService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RevocationService")
            .field("store", &self.store.describe())
            .field("entries", &self.index.len())
            .finish_non_exhaustive()
    }
}

/// Unix milliseconds of `t`.
fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl RevocationService {
    /// A service over a fresh index, `store`, reading event expiry from
    /// `clock`; `changed` is poked when readiness may have changed. Call
    /// [`RevocationService::spawn`] to start following the store.
    pub fn new(
        store: Arc<dyn Store>,
        settings: Settings,
        clock: Arc<dyn Clock>,
        metrics: RevocationMetrics,
        changed: Arc<Notify>,
    ) -> Self {
        metrics.entries_max.set(i64::try_from(settings.max_entries).unwrap_or(i64::MAX));
        metrics.store_up.set(1);
        let shared = store.is_shared();
        Self {
            index: Arc::new(Index::new(settings.retention, settings.max_entries)),
            store,
            clock,
            settings,
            state: StoreState {
                up: AtomicBool::new(true),
                down_since: Mutex::new(None),
                replayed: AtomicBool::new(!shared),
                replayed_events: AtomicU64::new(0),
                started: Instant::now(),
            },
            metrics,
            changed,
            full_log: LogThrottle::default(),
            store_log: LogThrottle::default(),
        }
    }

    /// The index the verifier asks.
    pub fn index(&self) -> &Arc<Index> {
        &self.index
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The settings.
    pub fn settings(&self) -> Settings {
        self.settings
    }

    /// Whether the start-up replay is done.
    pub fn is_replayed(&self) -> bool {
        self.state.replayed.load(Ordering::Acquire)
    }

    /// Whether the last call to the store worked.
    pub fn store_is_up(&self) -> bool {
        self.state.up.load(Ordering::Acquire)
    }

    /// Starts the tasks: following a shared store (replay, then the
    /// subscription) and the sweep. They hold the service weakly and stop
    /// once it is dropped.
    pub fn spawn(self: &Arc<Self>) {
        if self.store.is_shared() {
            tokio::spawn(follow(Arc::downgrade(self)));
        } else {
            info!(
                "revocations reach this replica only: no --revocation-store is configured, so a webhook or revoke applies on the replica that receives it"
            );
        }
        tokio::spawn(sweep(Arc::downgrade(self)));
    }

    fn now_ms(&self) -> u64 {
        unix_ms(self.clock.now())
    }

    fn store_ok(&self) {
        if !self.state.up.swap(true, Ordering::AcqRel) {
            let down = self.state.down_since.lock().unwrap_or_else(|e| e.into_inner()).take();
            info!(store = %self.store.describe(), down_for = ?down.map(|d| d.elapsed()), "the revocation store answers again");
            self.store_log.reset();
            self.changed.notify_waiters();
        }
        self.metrics.store_up.set(1);
    }

    fn store_failed(&self, op: &'static str, error: &dyn std::fmt::Display) {
        self.metrics.store_errors.get_or_create(&StoreOpLabels { op }).inc();
        self.metrics.store_up.set(0);
        if self.state.up.swap(false, Ordering::AcqRel) {
            *self.state.down_since.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
            self.changed.notify_waiters();
        }
        if let Some(suppressed) = self.store_log.admit() {
            warn!(store = %self.store.describe(), op, error = %error, suppressed, "the revocation store does not answer; revocations already applied stay enforced");
        }
    }

    /// How long the store has been down (None while up).
    pub fn store_down_for(&self) -> Option<Duration> {
        self.state.down_since.lock().unwrap_or_else(|e| e.into_inner()).map(|d| d.elapsed())
    }

    fn not_applied(&self, reason: &'static str) {
        self.metrics.not_applied.get_or_create(&NotAppliedLabels { reason }).inc();
        if reason == "full"
            && let Some(suppressed) = self.full_log.admit()
        {
            warn!(
                max_entries = self.settings.max_entries,
                suppressed,
                "the revocation index is full: new revocations are refused (the webhook answers 5xx so Clerk retries) until entries expire; raise --revocation-max-entries"
            );
        }
    }

    fn applied(&self, kind: Kind, source: &'static str) {
        self.metrics.applied.get_or_create(&AppliedLabels { kind: kind.as_str(), source }).inc();
        self.metrics.entries.set(i64::try_from(self.index.len()).unwrap_or(i64::MAX));
    }

    /// [`Record::record`]: apply here, then append (see the [module docs](self)).
    pub async fn record_event(&self, event: RevocationEvent) -> Result<Recorded, RecordError> {
        if let Err(e) = check_event(&event) {
            self.not_applied("invalid");
            return Err(RecordError::Invalid(e.to_string()));
        }
        match self.index.apply(&event, self.now_ms(), false) {
            Applied::Full => {
                self.not_applied("full");
                return Err(RecordError::Full(self.settings.max_entries));
            }
            // Nothing it refuses can still be valid.
            Applied::Expired => {
                self.not_applied("expired");
                return Ok(Recorded::Applied);
            }
            Applied::Duplicate if self.index.was_appended(&event.id) => {
                self.metrics.deduplicated.inc();
                return Ok(Recorded::Duplicate);
            }
            // Applied here before, but its append failed: append it now.
            Applied::Duplicate => {}
            Applied::New => self.applied(Kind::of(&event.revocation), "record"),
        }
        if !self.store.is_shared() {
            self.index.mark_appended(&event.id);
            return Ok(Recorded::Applied);
        }
        match self.store.append(&event).await {
            Ok(_) => {
                self.store_ok();
                self.index.mark_appended(&event.id);
                Ok(Recorded::Applied)
            }
            Err(e) => {
                self.store_failed("append", &e);
                Err(RecordError::Store(e.to_string()))
            }
        }
    }

    /// Applies entries read from the store; the position of the last one.
    fn apply_stored(&self, entries: Vec<Stored>) -> Option<StoreId> {
        let now_ms = self.now_ms();
        let wall_ms = unix_ms(SystemTime::now());
        let mut last = None;
        for stored in entries {
            last = Some(stored.id);
            let event = match stored.event {
                Ok(e) if check_event(&e).is_ok() => e,
                _ => {
                    self.not_applied("invalid");
                    continue;
                }
            };
            match self.index.apply(&event, now_ms, true) {
                Applied::New => {
                    self.applied(Kind::of(&event.revocation), "store");
                    if let Some(appended) = stored.appended_ms {
                        let lag = wall_ms.saturating_sub(appended);
                        self.metrics.store_lag.observe(lag as f64 / 1000.0);
                    }
                }
                Applied::Duplicate => {}
                Applied::Expired => self.not_applied("expired"),
                Applied::Full => self.not_applied("full"),
            }
        }
        last
    }

    fn readiness(&self) -> Condition {
        let name = "revocation";
        let store = self.store.describe();
        let limit = self.settings.outage_limit;
        let down_for = self.store_down_for();
        if !self.is_replayed() {
            let waited = self.state.started.elapsed();
            if self.settings.store_required || waited < limit {
                let state = format!("replaying the retention window from {store} (waiting {} s)", waited.as_secs());
                return Condition { name, ready: false, state };
            }
            let state = format!(
                "serving without the replay: {store} did not answer within {} s; replaying as soon as it does",
                limit.as_secs()
            );
            return Condition { name, ready: true, state };
        }
        match down_for {
            Some(d) if self.settings.store_required && d >= limit => Condition {
                name,
                ready: false,
                state: format!(
                    "{store} down for {} s, over the {} s allowed (--revocation-store-required)",
                    d.as_secs(),
                    limit.as_secs()
                ),
            },
            Some(d) => Condition {
                name,
                ready: true,
                state: format!(
                    "{store} down for {} s; serving with the {} revocations applied",
                    d.as_secs(),
                    self.index.len()
                ),
            },
            None => {
                Condition { name, ready: true, state: format!("{store}: {} revocations applied", self.index.len()) }
            }
        }
    }
}

impl Gate for RevocationService {
    fn condition(&self) -> Condition {
        self.readiness()
    }
}

impl Record for RevocationService {
    fn record(
        &self,
        event: RevocationEvent,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Recorded, RecordError>> + Send + '_>> {
        Box::pin(self.record_event(event))
    }
}

/// The next backoff after `current`.
fn next_backoff(current: Duration) -> Duration {
    (current * 2).min(READ_BACKOFF_MAX)
}

/// Replays the retention window, then follows the store, until the service
/// is dropped.
async fn follow(service: Weak<RevocationService>) {
    let mut backoff = READ_BACKOFF_MIN;
    // The replay: from now − retention, page by page, until a short page.
    let mut position = loop {
        let Some(s) = service.upgrade() else { return };
        let since = unix_ms(SystemTime::now()).saturating_sub(s.index.retention().as_millis() as u64);
        let mut position = Position::Since(since);
        let mut replayed = 0u64;
        let outcome = loop {
            match s.store.read(&position, READ_PAGE, None).await {
                Ok(page) => {
                    let full = page.len() == READ_PAGE;
                    replayed += page.len() as u64;
                    if let Some(last) = s.apply_stored(page) {
                        position = Position::After(last);
                    }
                    if !full {
                        break Ok(());
                    }
                }
                Err(e) => break Err(e),
            }
        };
        match outcome {
            Ok(()) => {
                s.store_ok();
                s.state.replayed_events.store(replayed, Ordering::Relaxed);
                s.state.replayed.store(true, Ordering::Release);
                s.changed.notify_waiters();
                info!(store = %s.store.describe(), events = replayed, entries = s.index.len(), "revocations replayed");
                break match position {
                    // An empty window: follow from its start.
                    Position::Since(ms) => Position::After(StoreId(format!("{ms}-0"))),
                    after => after,
                };
            }
            Err(e) => {
                s.store_failed("read", &e);
                drop(s);
                tokio::time::sleep(backoff).await;
                backoff = next_backoff(backoff);
            }
        }
    };
    backoff = READ_BACKOFF_MIN;
    loop {
        let Some(s) = service.upgrade() else { return };
        match s.store.read(&position, READ_PAGE, Some(FOLLOW_BLOCK)).await {
            Ok(page) => {
                s.store_ok();
                backoff = READ_BACKOFF_MIN;
                if let Some(last) = s.apply_stored(page) {
                    position = Position::After(last);
                }
            }
            Err(e) => {
                s.store_failed("read", &e);
                drop(s);
                tokio::time::sleep(backoff).await;
                backoff = next_backoff(backoff);
            }
        }
    }
}

/// Drops expired entries every [`SWEEP_INTERVAL`] until the service is dropped.
async fn sweep(service: Weak<RevocationService>) {
    loop {
        tokio::time::sleep(SWEEP_INTERVAL).await;
        let Some(s) = service.upgrade() else { return };
        let dropped = s.index.sweep(s.now_ms());
        s.metrics.entries.set(i64::try_from(s.index.len()).unwrap_or(i64::MAX));
        if dropped > 0 {
            tracing::debug!(dropped, entries = s.index.len(), "expired revocations dropped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::revocation::store::memory::MemoryStore;
    use crate::revocation::{Cause, Revocation};
    use crate::telemetry::Metrics;

    /// The in-memory store, claiming to be shared so that the service
    /// appends to it and follows it as it would Redis.
    #[derive(Debug)]
    struct Shared(MemoryStore);

    impl Store for Shared {
        fn describe(&self) -> String {
            "shared test store".into()
        }
        fn is_shared(&self) -> bool {
            true
        }
        fn append<'a>(
            &'a self,
            e: &'a RevocationEvent,
        ) -> super::super::store::BoxFuture<'a, Result<StoreId, super::super::store::StoreError>> {
            self.0.append(e)
        }
        fn read<'a>(
            &'a self,
            from: &'a Position,
            max: usize,
            block: Option<Duration>,
        ) -> super::super::store::BoxFuture<'a, Result<Vec<Stored>, super::super::store::StoreError>> {
            self.0.read(from, max, block)
        }
    }

    fn service(store: Arc<dyn Store>, settings: Settings) -> Arc<RevocationService> {
        let clock = Arc::new(ManualClock::starting_now());
        let metrics = Metrics::new(clock.clone(), None).revocation();
        Arc::new(RevocationService::new(store, settings, clock, metrics, Arc::new(Notify::new())))
    }

    fn event(id: &str, sub: &str) -> RevocationEvent {
        RevocationEvent {
            id: id.into(),
            revocation: Revocation::User { sub: sub.into() },
            cause: Cause::UserBanned,
            at_ms: unix_ms(SystemTime::now()),
        }
    }

    #[tokio::test]
    async fn an_event_recorded_in_an_outage_is_applied_at_once_and_appended_on_the_retry() {
        let store = Arc::new(Shared(MemoryStore::new(100)));
        let s = service(store.clone(), Settings::default());
        store.0.set_available(false);
        let e = event("svix_1", "user_1");
        assert!(matches!(s.record(e.clone()).await, Err(RecordError::Store(_))));
        assert!(s.index().was_applied("svix_1"), "applied here at once");
        assert!(!s.store_is_up());
        assert!(store.0.is_empty());
        // Svix retries after the store is back: appended now, not swallowed.
        store.0.set_available(true);
        assert_eq!(s.record(e.clone()).await.unwrap(), Recorded::Applied);
        assert_eq!(store.0.len(), 1);
        assert!(s.store_is_up());
        // A further redelivery is a duplicate.
        assert_eq!(s.record(e).await.unwrap(), Recorded::Duplicate);
        assert_eq!(store.0.len(), 1);
    }

    #[tokio::test]
    async fn another_replicas_events_arrive_through_the_store_and_the_replay() {
        let store = Arc::new(Shared(MemoryStore::new(100)));
        let a = service(store.clone(), Settings::default());
        a.record(event("e1", "user_1")).await.unwrap();
        // B starts after e1: it replays it before it is ready.
        let b = service(store.clone(), Settings::default());
        assert!(!b.condition().ready);
        b.spawn();
        while !b.is_replayed() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(b.condition().ready, "{:?}", b.condition());
        assert!(b.index().was_applied("e1") && b.index().was_appended("e1"));
        // Then it follows: A's next event reaches B.
        a.record(event("e2", "user_2")).await.unwrap();
        while !b.index().was_applied("e2") {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // B's own record of an event it already read is a duplicate.
        assert_eq!(b.record(event("e2", "user_2")).await.unwrap(), Recorded::Duplicate);
    }

    #[tokio::test]
    async fn readiness_follows_the_policy() {
        let store = Arc::new(Shared(MemoryStore::new(100)));
        store.0.set_available(false);
        let limit = Duration::from_millis(300);
        let relaxed = service(store.clone(), Settings { outage_limit: limit, ..Settings::default() });
        let strict =
            service(store.clone(), Settings { outage_limit: limit, store_required: true, ..Settings::default() });
        relaxed.spawn();
        strict.spawn();
        assert!(!relaxed.condition().ready && !strict.condition().ready, "replaying");
        tokio::time::sleep(limit + Duration::from_millis(50)).await;
        assert!(relaxed.condition().ready, "opens without the replay after the limit: {:?}", relaxed.condition());
        assert!(!strict.condition().ready, "required: waits for the replay");
        store.0.set_available(true);
        while !(strict.is_replayed() && relaxed.is_replayed()) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(strict.condition().ready);
        // An outage while serving: the relaxed replica stays ready, the strict
        // one closes after the limit.
        store.0.set_available(false);
        while strict.store_down_for().is_none_or(|d| d < limit) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(relaxed.condition().ready);
        assert!(!strict.condition().ready, "{:?}", strict.condition());
        store.0.set_available(true);
        while !strict.store_is_up() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(strict.condition().ready);
    }

    #[tokio::test]
    async fn a_full_index_refuses_to_record_and_invalid_events_are_refused() {
        let s = service(Arc::new(MemoryStore::new(10)), Settings { max_entries: 1, ..Settings::default() });
        assert_eq!(s.record(event("a", "user_1")).await.unwrap(), Recorded::Applied);
        assert!(matches!(s.record(event("b", "user_2")).await, Err(RecordError::Full(1))));
        assert!(matches!(s.record(event("", "user_3")).await, Err(RecordError::Invalid(_))));
        // The same user again needs no new entry, but the ids table is full too.
        assert!(matches!(s.record(event("c", "user_1")).await, Err(RecordError::Full(1))));
    }
}
