//! Per-issuer key cache: OIDC discovery, JWKS fetch, a lock-free snapshot of
//! parsed keys, background refresh with backoff, bounded staleness, and the
//! single-flight, rate-limited refetches on an unknown `kid` and on a call
//! that finds the issuer without usable keys.
//!
//! While an issuer has no usable keys, the calls that find it so are logged
//! at most once per [`LOG_INTERVAL`] (with the count of the others), and so
//! are failed fetches.
//!
//! Keys are only ever looked up through an issuer ([`IssuerKeys`]), never
//! by a bare `kid`.

pub mod fetch;
pub mod jwk;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use tokio::sync::{Mutex, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::clock::Clock;
use crate::telemetry::throttle::{LOG_INTERVAL, LogThrottle};
use fetch::{FetchError, Fetcher};
use jwk::{Algorithm, VerificationKey};

/// Shortest refresh interval taken from a JWKS `Cache-Control: max-age`.
pub const MIN_REFRESH: Duration = Duration::from_secs(60);
/// Longest refresh interval taken from a JWKS `Cache-Control: max-age`.
pub const MAX_REFRESH: Duration = Duration::from_secs(3600);
/// Relative jitter applied to every refresh delay (±10 %).
pub const REFRESH_JITTER: f64 = 0.1;
/// Longest retry delay while an issuer has no usable keys (before they first
/// load, or once they are stale): the service is not ready meanwhile, so it
/// retries more eagerly than while it serves from good keys.
pub const STARTUP_MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Least time between two fetches started by calls that found the issuer
/// without usable keys ([`IssuerKeys::refetch_when_unusable`]): at most one
/// request per second to an issuer that is down, and answers come back
/// within about a second of its return.
pub const UNUSABLE_REFETCH_COOLDOWN: Duration = Duration::from_secs(1);
/// Longest a call waits for the fetch it started before it is answered
/// UNAVAILABLE (the fetch goes on without it). An issuer that answers
/// takes milliseconds; one that does not must not hold calls for the
/// fetch's own timeouts.
pub const UNUSABLE_REFETCH_WAIT: Duration = Duration::from_secs(1);

/// Where an issuer's keys come from.
#[derive(Clone, Debug)]
pub enum KeySource {
    /// `<issuer>/.well-known/openid-configuration` → `jwks_uri`.
    Discovery,
    /// A fixed JWKS URL (discovery skipped).
    JwksUri(String),
    /// Keys given in configuration: no network at all, never stale.
    Static(Vec<Arc<VerificationKey>>),
}

/// Timing of refreshes and refetches for one issuer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefreshSettings {
    /// Interval between scheduled refreshes when the JWKS response has no
    /// `max-age` (default 5 min).
    pub interval: Duration,
    /// Least time between two unknown-`kid` refetches (default 10 s).
    pub unknown_kid_cooldown: Duration,
    /// How long the last good keys stay in use while refreshes fail
    /// (default 24 h).
    pub max_staleness: Duration,
    /// First retry delay after a failed fetch (default 1 s), doubled up to
    /// `max_backoff`.
    pub initial_backoff: Duration,
    /// Longest retry delay (default 60 s).
    pub max_backoff: Duration,
}

impl Default for RefreshSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(300),
            unknown_kid_cooldown: Duration::from_secs(10),
            max_staleness: Duration::from_secs(24 * 3600),
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// What started a fetch: a label for logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Trigger {
    /// The first load (and its retries).
    Startup,
    /// A scheduled refresh (and its retries).
    Scheduled,
    /// A token named a kid we did not have.
    UnknownKid,
    /// A call found the issuer without usable keys.
    Unavailable,
}

impl Trigger {
    /// `startup`, `scheduled`, `unknown_kid` or `unavailable`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Trigger::Startup => "startup",
            Trigger::Scheduled => "scheduled",
            Trigger::UnknownKid => "unknown_kid",
            Trigger::Unavailable => "unavailable",
        }
    }
}

/// Receives key-cache events (for metrics). Every method has a no-op default.
pub trait KeyObserver: Send + Sync + 'static {
    /// A fetch finished: `Ok(n)` with `n` usable keys, or the error.
    fn fetch_finished(&self, _issuer: &str, _trigger: Trigger, _result: Result<usize, &FetchError>) {}
    /// An unknown-kid refetch was refused by the cooldown.
    fn refetch_suppressed(&self, _issuer: &str) {}
    /// Keys, staleness or readiness may have changed.
    fn keys_changed(&self) {}
}

/// An observer that ignores everything.
#[derive(Debug, Default)]
pub struct NoopObserver;
impl KeyObserver for NoopObserver {}

/// What every issuer's key cache shares: the HTTP client, the clock, the
/// observer, and a notifier poked whenever readiness may have changed.
#[derive(Clone)]
pub struct KeyContext {
    /// HTTP client for discovery and JWKS.
    pub fetcher: Fetcher,
    /// Wall clock (staleness).
    pub clock: Arc<dyn Clock>,
    /// Event sink (metrics).
    pub observer: Arc<dyn KeyObserver>,
    /// Poked after every fetch attempt.
    pub changed: Arc<Notify>,
}

/// The keys of one issuer at one moment: immutable, swapped as a whole.
#[derive(Debug)]
pub struct KeySet {
    keys: Vec<Arc<VerificationKey>>,
    /// When they were fetched (wall clock); `None` for static keys.
    fetched_at: Option<SystemTime>,
}

/// The result of looking a token's key up in a [`KeySet`].
#[derive(Debug)]
pub enum KeyMatch<'a> {
    /// The key to verify with.
    Found(&'a Arc<VerificationKey>),
    /// A key with this kid exists, but none that can verify `alg`.
    WrongType(&'a Arc<VerificationKey>),
    /// No key with this kid.
    UnknownKid,
    /// No kid in the token, and not exactly one key fits `alg`.
    Ambiguous,
}

impl KeySet {
    /// Builds a key set.
    pub fn new(keys: Vec<Arc<VerificationKey>>, fetched_at: Option<SystemTime>) -> Self {
        Self { keys, fetched_at }
    }

    /// The keys.
    pub fn keys(&self) -> &[Arc<VerificationKey>] {
        &self.keys
    }

    /// When the keys were fetched (`None` for static keys).
    pub fn fetched_at(&self) -> Option<SystemTime> {
        self.fetched_at
    }

    /// Finds the key for a token's `kid` and `alg`. Without a kid, the key
    /// is chosen only if exactly one key can verify `alg`.
    ///
    /// In a static set (keys from configuration, `fetched_at` `None`), a key
    /// configured without a kid (a PEM public key, say) also verifies a
    /// token whose kid no key has, when it is the only such key for `alg`:
    /// what Clerk's SDKs do with a networkless key. Fetched keys are only
    /// ever matched by kid.
    pub fn find(&self, kid: Option<&str>, alg: Algorithm) -> KeyMatch<'_> {
        match kid {
            Some(kid) => {
                let mut same_kid = self.keys.iter().filter(|k| k.kid() == Some(kid));
                let Some(first) = same_kid.next() else {
                    if self.fetched_at.is_none() {
                        let mut kidless = self.keys.iter().filter(|k| k.kid().is_none() && k.supports(alg));
                        if let (Some(k), None) = (kidless.next(), kidless.next()) {
                            return KeyMatch::Found(k);
                        }
                    }
                    return KeyMatch::UnknownKid;
                };
                if first.supports(alg) {
                    return KeyMatch::Found(first);
                }
                same_kid.find(|k| k.supports(alg)).map_or(KeyMatch::WrongType(first), KeyMatch::Found)
            }
            None => {
                let mut fitting = self.keys.iter().filter(|k| k.supports(alg));
                match (fitting.next(), fitting.next()) {
                    (Some(k), None) => KeyMatch::Found(k),
                    _ => KeyMatch::Ambiguous,
                }
            }
        }
    }

    /// Whether `key` (the same parsed key, by identity) is still in the set.
    pub fn contains(&self, key: &Arc<VerificationKey>) -> bool {
        self.keys.iter().any(|k| Arc::ptr_eq(k, key))
    }
}

/// Readiness of one issuer's keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyStatus {
    /// Keys have never loaded.
    Loading,
    /// Keys are loaded and fresh enough.
    Ready,
    /// Keys were loaded, but not refreshed within the allowed staleness.
    Stale,
}

struct FetchState {
    jwks_uri: Option<String>,
    last_unknown_kid_refetch: Option<Instant>,
    last_error: Option<String>,
}

/// The fetches that calls start while the issuer has no usable keys.
#[derive(Debug, Default)]
struct UnusableRefetch {
    last_started: Option<Instant>,
    in_flight: bool,
}

/// The key cache of one issuer. Reads ([`IssuerKeys::usable`]) are
/// lock-free; fetches run one at a time.
pub struct IssuerKeys {
    issuer: Arc<str>,
    source: KeySource,
    settings: RefreshSettings,
    ctx: KeyContext,
    snapshot: ArcSwapOption<KeySet>,
    fetch: Mutex<FetchState>,
    /// Number of finished fetch attempts (success or failure).
    generation: AtomicU64,
    unusable_refetch: std::sync::Mutex<UnusableRefetch>,
    /// Calls answered UNAVAILABLE, logged at most once per interval.
    unavailable_log: LogThrottle,
    /// Failed fetches, logged at most once per interval.
    failure_log: LogThrottle,
    cancel: CancellationToken,
}

impl std::fmt::Debug for IssuerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerKeys").field("issuer", &self.issuer).finish_non_exhaustive()
    }
}

impl Drop for IssuerKeys {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl IssuerKeys {
    /// Creates the cache and, for fetched keys, spawns its refresher task
    /// (which stops when the cache is dropped). Must run inside a Tokio
    /// runtime.
    pub fn start(issuer: Arc<str>, source: KeySource, settings: RefreshSettings, ctx: KeyContext) -> Arc<Self> {
        let snapshot = match &source {
            KeySource::Static(keys) => Some(Arc::new(KeySet::new(keys.clone(), None))),
            _ => None,
        };
        let this = Arc::new(Self {
            issuer,
            source,
            settings,
            ctx,
            snapshot: ArcSwapOption::new(snapshot),
            fetch: Mutex::new(FetchState { jwks_uri: None, last_unknown_kid_refetch: None, last_error: None }),
            generation: AtomicU64::new(0),
            unusable_refetch: std::sync::Mutex::new(UnusableRefetch::default()),
            unavailable_log: LogThrottle::new(LOG_INTERVAL),
            failure_log: LogThrottle::new(LOG_INTERVAL),
            cancel: CancellationToken::new(),
        });
        if !matches!(this.source, KeySource::Static(_)) {
            let span = info_span!("refresher", issuer = %this.issuer);
            tokio::spawn(refresher(Arc::downgrade(&this), this.cancel.clone()).instrument(span));
        }
        this
    }

    /// The issuer.
    pub fn issuer(&self) -> &Arc<str> {
        &self.issuer
    }

    /// Where the keys come from.
    pub fn source(&self) -> &KeySource {
        &self.source
    }

    /// The refresh settings.
    pub fn settings(&self) -> &RefreshSettings {
        &self.settings
    }

    /// The current key set if it may be used now: loaded, and not older
    /// than `max_staleness`. Lock-free.
    pub fn usable(&self) -> Option<Arc<KeySet>> {
        let set = self.snapshot.load_full()?;
        (!self.is_stale(&set)).then_some(set)
    }

    /// The current key set, even if stale (for `check-issuer` and metrics).
    pub fn current(&self) -> Option<Arc<KeySet>> {
        self.snapshot.load_full()
    }

    /// Loading, ready or stale.
    pub fn status(&self) -> KeyStatus {
        match self.snapshot.load_full() {
            None => KeyStatus::Loading,
            Some(set) if self.is_stale(&set) => KeyStatus::Stale,
            Some(_) => KeyStatus::Ready,
        }
    }

    /// The last fetch error, if the last attempt failed.
    pub async fn last_error(&self) -> Option<String> {
        self.fetch.lock().await.last_error.clone()
    }

    fn is_stale(&self, set: &KeySet) -> bool {
        match set.fetched_at {
            None => false,
            Some(at) => {
                let age = self.ctx.clock.now().duration_since(at).unwrap_or(Duration::ZERO);
                age > self.settings.max_staleness
            }
        }
    }

    /// A token named `kid`, which the usable key set lacks. Refetches the
    /// JWKS at most once per cooldown; concurrent callers wait for the same
    /// fetch. Returns the key set to look in again, or `None` when nothing
    /// new can be had now.
    pub async fn refetch_for_unknown_kid(&self, kid: &str) -> Option<Arc<KeySet>> {
        if matches!(self.source, KeySource::Static(_)) {
            return None;
        }
        let seen = self.generation.load(Ordering::Acquire);
        let mut state = self.fetch.lock().await;
        let current = self.usable();
        if current.as_ref().is_some_and(|s| s.keys.iter().any(|k| k.kid() == Some(kid))) {
            return current;
        }
        if self.generation.load(Ordering::Acquire) != seen {
            // A fetch finished while we waited for the lock: that was ours to share.
            return current;
        }
        if let Some(last) = state.last_unknown_kid_refetch
            && last.elapsed() < self.settings.unknown_kid_cooldown
        {
            self.ctx.observer.refetch_suppressed(&self.issuer);
            debug!(issuer = %self.issuer, "unknown kid: refetch suppressed by the cooldown");
            return None;
        }
        state.last_unknown_kid_refetch = Some(Instant::now());
        info!(issuer = %self.issuer, kid = %jwk::truncate(kid, 64), "unknown kid: refetching the JWKS");
        let _ = self.fetch_locked(&mut state, Trigger::UnknownKid).await;
        self.usable()
    }

    /// A call found this issuer without usable keys (never loaded, or stale).
    /// Starts a fetch, unless one that a call started is still running or
    /// one started less than [`UNUSABLE_REFETCH_COOLDOWN`] ago, and waits
    /// for it at most [`UNUSABLE_REFETCH_WAIT`]. Like the unknown-kid
    /// refetch it is single-flight: it shares a fetch that was running (the
    /// refresher's) instead of starting another. Returns the keys if they
    /// are usable now. Without it, recovery from an outage longer than the
    /// allowed staleness waited for the refresher's backoff (42 s measured).
    pub async fn refetch_when_unusable(self: &Arc<Self>) -> Option<Arc<KeySet>> {
        if matches!(self.source, KeySource::Static(_)) {
            return self.usable();
        }
        {
            let mut r = self.unusable_refetch.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if r.in_flight || r.last_started.is_some_and(|t| t.elapsed() < UNUSABLE_REFETCH_COOLDOWN) {
                return self.usable();
            }
            r.in_flight = true;
            r.last_started = Some(Instant::now());
        }
        let this = self.clone();
        let fetch = tokio::spawn(
            async move {
                let seen = this.generation.load(Ordering::Acquire);
                let mut state = this.fetch.lock().await;
                // A fetch that finished while we waited for the lock was ours to share.
                if this.generation.load(Ordering::Acquire) == seen && this.usable().is_none() {
                    debug!(issuer = %this.issuer, "no usable keys: fetching");
                    let _ = this.fetch_locked(&mut state, Trigger::Unavailable).await;
                }
                drop(state);
                this.unusable_refetch.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).in_flight = false;
            }
            .in_current_span(),
        );
        let _ = tokio::time::timeout(UNUSABLE_REFETCH_WAIT, fetch).await;
        self.usable()
    }

    /// A call is answered UNAVAILABLE for this issuer: logged at WARN at
    /// most once per [`LOG_INTERVAL`], with the number of such calls not
    /// logged since the previous line.
    pub fn note_unavailable(&self) {
        if let Some(since) = self.unavailable_log.admit() {
            let status = match self.status() {
                KeyStatus::Loading => "never loaded",
                KeyStatus::Stale => "stale",
                KeyStatus::Ready => "usable again",
            };
            warn!(
                issuer = %self.issuer,
                keys = status,
                unavailable_since_last_report = since,
                "verification unavailable: the issuer has no usable keys"
            );
        }
    }

    /// Fetches now (one fetch at a time), returning the delay until the
    /// next scheduled refresh, or the error.
    pub async fn refresh(&self, trigger: Trigger) -> Result<Duration, FetchError> {
        let mut state = self.fetch.lock().await;
        self.fetch_locked(&mut state, trigger).await
    }

    async fn fetch_locked(&self, state: &mut FetchState, trigger: Trigger) -> Result<Duration, FetchError> {
        let result = self.fetch_once(state, trigger).await;
        self.generation.fetch_add(1, Ordering::AcqRel);
        match &result {
            Ok((n, _)) => {
                if state.last_error.take().is_some() {
                    info!(issuer = %self.issuer, trigger = trigger.as_str(), keys = n, "keys fetched again after failed fetches");
                }
                self.failure_log.reset();
                self.unavailable_log.reset();
                self.ctx.observer.fetch_finished(&self.issuer, trigger, Ok(*n));
            }
            Err(e) => {
                if let Some(since) = self.failure_log.admit() {
                    warn!(issuer = %self.issuer, trigger = trigger.as_str(), error = %e, failed_since_last_report = since, "key fetch failed");
                }
                state.last_error = Some(e.to_string());
                if !matches!(trigger, Trigger::UnknownKid | Trigger::Unavailable) {
                    // The jwks_uri may have moved: discover again next time.
                    state.jwks_uri = None;
                }
                self.ctx.observer.fetch_finished(&self.issuer, trigger, Err(e));
            }
        }
        self.ctx.observer.keys_changed();
        self.ctx.changed.notify_waiters();
        result.map(|(_, next)| next)
    }

    async fn fetch_once(&self, state: &mut FetchState, trigger: Trigger) -> Result<(usize, Duration), FetchError> {
        let uri = match &self.source {
            KeySource::Static(keys) => return Ok((keys.len(), self.settings.interval)),
            KeySource::JwksUri(uri) => uri.clone(),
            KeySource::Discovery => match (&state.jwks_uri, trigger) {
                (Some(uri), Trigger::UnknownKid | Trigger::Unavailable) => uri.clone(),
                _ => {
                    let uri = self.ctx.fetcher.discover(&self.issuer).await?;
                    state.jwks_uri = Some(uri.clone());
                    uri
                }
            },
        };
        let body = self.ctx.fetcher.jwks(&uri).await?;
        let previous = self.snapshot.load_full();
        let previous_keys = previous.as_ref().map_or(&[][..], |s| &s.keys[..]);
        let parsed = jwk::parse_jwks(&body.body, previous_keys)
            .map_err(|source| FetchError::Jwks { url: uri.clone(), source })?;
        for skipped in &parsed.skipped {
            warn!(issuer = %self.issuer, kid = ?skipped.kid, reason = %skipped.reason, "JWKS key skipped");
        }
        let n = parsed.keys.len();
        let changed = previous
            .as_ref()
            .is_none_or(|p| p.keys.len() != n || p.keys.iter().zip(&parsed.keys).any(|(a, b)| !Arc::ptr_eq(a, b)));
        if changed {
            let kids: Vec<&str> = parsed.keys.iter().map(|k| k.kid().unwrap_or("")).collect();
            info!(issuer = %self.issuer, trigger = trigger.as_str(), keys = n, skipped = parsed.skipped.len(), ?kids, "keys loaded");
        } else {
            debug!(issuer = %self.issuer, trigger = trigger.as_str(), keys = n, "keys unchanged");
        }
        self.snapshot.store(Some(Arc::new(KeySet::new(parsed.keys, Some(self.ctx.clock.now())))));
        let next = body.max_age.map_or(self.settings.interval, |age| age.clamp(MIN_REFRESH, MAX_REFRESH));
        Ok((n, next))
    }
}

/// Keeps one issuer's keys fresh until the cache is dropped or cancelled.
async fn refresher(keys: Weak<IssuerKeys>, cancel: CancellationToken) {
    let mut trigger = Trigger::Startup;
    let mut failures: u32 = 0;
    loop {
        let Some(this) = keys.upgrade() else { return };
        let settings = this.settings;
        let delay = match this.refresh(trigger).await {
            Ok(next) => {
                failures = 0;
                trigger = Trigger::Scheduled;
                jitter(next)
            }
            Err(_) => {
                failures = failures.saturating_add(1);
                retry_delay(&settings, this.usable().is_some(), failures)
            }
        };
        drop(this);
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// The refresher's delay after its `failures`th consecutive failed fetch:
/// [`backoff`] up to `max_backoff` while the keys in hand are usable, and up
/// to [`STARTUP_MAX_BACKOFF`] while there are none (not loaded yet, or
/// stale), when the service is not ready and nothing else retries.
pub fn retry_delay(settings: &RefreshSettings, usable: bool, failures: u32) -> Duration {
    let max = if usable { settings.max_backoff } else { settings.max_backoff.min(STARTUP_MAX_BACKOFF) };
    backoff(settings.initial_backoff, max, failures)
}

/// `d` ± [`REFRESH_JITTER`].
pub fn jitter(d: Duration) -> Duration {
    let factor = 1.0 + REFRESH_JITTER * (2.0 * fastrand::f64() - 1.0);
    d.mul_f64(factor)
}

/// Exponential backoff with "equal jitter": after the `n`th consecutive
/// failure, a delay in `[b/2, b]` where `b = min(initial · 2^(n-1), max)`.
pub fn backoff(initial: Duration, max: Duration, failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(20);
    let base = initial.saturating_mul(1 << exp).min(max);
    base.mul_f64(0.5 + 0.5 * fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let (i, m) = (Duration::from_secs(1), Duration::from_secs(60));
        for _ in 0..100 {
            let d1 = backoff(i, m, 1);
            assert!(d1 >= Duration::from_millis(500) && d1 <= i);
            let d4 = backoff(i, m, 4);
            assert!(d4 >= Duration::from_secs(4) && d4 <= Duration::from_secs(8));
            let d30 = backoff(i, m, 30);
            assert!(d30 >= Duration::from_secs(30) && d30 <= m);
        }
    }

    #[test]
    fn without_usable_keys_the_refresher_retries_at_the_startup_pace() {
        let settings = RefreshSettings::default();
        for _ in 0..100 {
            let serving = retry_delay(&settings, true, 10);
            assert!(serving >= Duration::from_secs(30) && serving <= settings.max_backoff, "{serving:?}");
            let not_ready = retry_delay(&settings, false, 10);
            assert!(not_ready >= STARTUP_MAX_BACKOFF / 2 && not_ready <= STARTUP_MAX_BACKOFF, "{not_ready:?}");
        }
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        for _ in 0..100 {
            let d = jitter(Duration::from_secs(100));
            assert!(d >= Duration::from_secs(90) && d <= Duration::from_secs(110));
        }
    }
    #[test]
    fn a_static_key_without_kid_matches_any_kid_but_a_fetched_one_does_not() {
        let ed = |kid: Option<&str>| {
            let mut jwk = serde_json::json!({"kty": "OKP", "crv": "Ed25519",
                "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"});
            if let Some(kid) = kid {
                jwk["kid"] = kid.into();
            }
            Arc::new(jwk::key_from_jwk_json(&jwk).unwrap())
        };
        let static_set = KeySet::new(vec![ed(None)], None);
        assert!(matches!(static_set.find(Some("ins_any"), Algorithm::EdDSA), KeyMatch::Found(_)));
        assert!(matches!(static_set.find(None, Algorithm::EdDSA), KeyMatch::Found(_)));
        assert!(matches!(static_set.find(Some("ins_any"), Algorithm::ES256), KeyMatch::UnknownKid));
        // Two kid-less keys: no choice is made.
        let two = KeySet::new(vec![ed(None), ed(None)], None);
        assert!(matches!(two.find(Some("ins_any"), Algorithm::EdDSA), KeyMatch::UnknownKid));
        // A static key with a kid matches only that kid.
        let with_kid = KeySet::new(vec![ed(Some("ins_1"))], None);
        assert!(matches!(with_kid.find(Some("ins_2"), Algorithm::EdDSA), KeyMatch::UnknownKid));
        // Fetched keys are matched by kid only.
        let fetched = KeySet::new(vec![ed(None)], Some(SystemTime::now()));
        assert!(matches!(fetched.find(Some("ins_any"), Algorithm::EdDSA), KeyMatch::UnknownKid));
    }
}
