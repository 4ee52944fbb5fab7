//! Readiness: `SERVING` once every trusted issuer has usable keys and every
//! [`Gate`] (the revocation service: the retention window replayed from the
//! store; with `--revocation-store-required`, the store not down for longer
//! than its outage limit) is open, and `NOT_SERVING` before that, while any
//! issuer's keys are stale, and from the moment the drain starts. Published through `grpc.health.v1.Health` for
//! the overall server (`""`) and for every service we serve.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tracing::info;

use crate::keys::KeyStatus;
use crate::verify::Verifier;

/// The health-check service name for liveness probes: `SERVING` from the
/// moment the gRPC server starts until the process exits, whatever the keys
/// or the drain. Readiness (`""` and the service names) goes `NOT_SERVING`
/// while an issuer is down; a liveness probe pointed at readiness would then
/// restart every replica during a Clerk outage and throw away the last good
/// keys that would otherwise keep serving. A process that stops answering
/// health checks still fails this probe.
pub const LIVENESS_SERVICE: &str = "liveness";

/// How often readiness is recomputed even without a key event (keys can go
/// stale by the passage of time alone).
pub const RECHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Another condition of readiness besides the keys (the revocation
/// service is one); asked at every recheck.
pub trait Gate: Send + Sync + std::fmt::Debug {
    /// Whether it lets the server be ready now, and its state in words.
    fn condition(&self) -> Condition;
}

/// One [`Gate`]'s state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condition {
    /// What it is (`revocation`).
    pub name: &'static str,
    /// Whether it lets the server be ready.
    pub ready: bool,
    /// Its state, for a person.
    pub state: String,
}

/// What the admin endpoint reads of health ([`Readiness`] is one).
pub trait HealthSource: Send + Sync + std::fmt::Debug {
    /// Readiness and each issuer's key state, now.
    fn report(&self) -> HealthReport;
}

/// Readiness and what it is made of, for a person.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthReport {
    /// Whether the server should receive traffic.
    pub ready: bool,
    /// Whether the drain has started.
    pub draining: bool,
    /// Each trusted issuer, by name.
    pub issuers: Vec<IssuerHealth>,
    /// Every other condition ([`Gate`]).
    pub conditions: Vec<Condition>,
}

/// One issuer's key state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuerHealth {
    /// The issuer.
    pub issuer: String,
    /// Its key state, in words.
    pub state: &'static str,
}

/// Shared readiness state.
#[derive(Debug)]
pub struct Readiness {
    verifier: Arc<Verifier>,
    draining: AtomicBool,
    changed: Arc<Notify>,
    gates: Vec<Arc<dyn Gate>>,
}

impl Readiness {
    /// Readiness over the verifier's trusted issuers; `changed` is poked by
    /// the key caches after each fetch.
    pub fn new(verifier: Arc<Verifier>, changed: Arc<Notify>) -> Self {
        Self { verifier, draining: AtomicBool::new(false), changed, gates: Vec::new() }
    }

    /// The same readiness, also closed while `gate` is.
    pub fn with_gate(mut self, gate: Arc<dyn Gate>) -> Self {
        self.gates.push(gate);
        self
    }

    /// Whether the server should receive traffic now.
    pub fn is_ready(&self) -> bool {
        !self.draining.load(Ordering::SeqCst)
            && self.verifier.trust().issuers().all(|i| i.keys.status() == KeyStatus::Ready)
            && self.gates.iter().all(|g| g.condition().ready)
    }

    /// Whether the drain has started.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Marks the start of the drain: not ready from now on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    /// Pokes the readiness task (after a configuration reload, say).
    pub fn poke(&self) {
        self.changed.notify_waiters();
    }

    /// Publishes readiness to `reporter` for `services` (and `""`) until
    /// `stop` is cancelled. Sets NOT_SERVING first.
    pub async fn publish(
        self: Arc<Self>,
        reporter: HealthReporter,
        services: Vec<&'static str>,
        stop: CancellationToken,
    ) {
        let mut last: Option<bool> = None;
        loop {
            let notified = self.changed.notified();
            let ready = self.is_ready();
            if last != Some(ready) {
                let status = if ready { ServingStatus::Serving } else { ServingStatus::NotServing };
                for service in std::iter::once("").chain(services.iter().copied()) {
                    reporter.set_service_status(service, status).await;
                }
                info!(ready, "readiness changed");
                last = Some(ready);
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = notified => {}
                () = tokio::time::sleep(RECHECK_INTERVAL) => {}
            }
        }
    }
}

impl HealthSource for Readiness {
    fn report(&self) -> HealthReport {
        let trust = self.verifier.trust();
        let mut issuers: Vec<IssuerHealth> = trust
            .issuers()
            .map(|i| IssuerHealth {
                issuer: i.keys.issuer().to_string(),
                state: match i.keys.status() {
                    KeyStatus::Loading => "loading (keys not fetched yet)",
                    KeyStatus::Ready => "ready",
                    KeyStatus::Stale => "stale (keys older than --max-key-staleness)",
                },
            })
            .collect();
        issuers.sort_by(|a, b| a.issuer.cmp(&b.issuer));
        let conditions = self.gates.iter().map(|g| g.condition()).collect();
        HealthReport { ready: self.is_ready(), draining: self.is_draining(), issuers, conditions }
    }
}
