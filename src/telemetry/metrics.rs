//! The service's metrics: one Prometheus registry per [`crate::App`]
//! (prometheus-client), mirrored to OpenTelemetry instruments when an OTLP
//! exporter is configured.
//!
//! | Prometheus name | type | labels |
//! |---|---|---|
//! | `clerk_introspect_verifications_total` | counter | `rpc`, `reason` |
//! | `clerk_introspect_verification_duration_seconds` | histogram | `rpc` |
//! | `clerk_introspect_requests_in_flight` | gauge | `rpc` |
//! | `clerk_introspect_jwks_fetches_total` | counter | `issuer`, `trigger`, `result` |
//! | `clerk_introspect_keys_loaded` | gauge | `issuer` |
//! | `clerk_introspect_keys_age_seconds` | gauge | `issuer` |
//! | `clerk_introspect_unknown_kid_refetches_suppressed_total` | counter | `issuer` |
//! | `clerk_introspect_connections` | gauge | none |
//! | `clerk_introspect_connections_max` | gauge | none |
//! | `clerk_introspect_connections_closed_by_server_total` | counter | `listener`, `reason` |
//! | `clerk_introspect_calls_in_flight` | gauge | none |
//! | `clerk_introspect_calls_in_flight_max` | gauge | none |
//! | `clerk_introspect_request_bytes_buffered` | gauge | none |
//! | `clerk_introspect_request_bytes_buffered_max` | gauge | none |
//! | `clerk_introspect_calls_refused_total` | counter | `limit` |
//! | `clerk_introspect_build_info` | gauge | `version` |
//! | `clerk_introspect_revocations_applied_total` | counter | `kind`, `source` |
//! | `clerk_introspect_revocation_entries` | gauge | none |
//! | `clerk_introspect_revocation_entries_max` | gauge | none |
//! | `clerk_introspect_revocation_events_deduplicated_total` | counter | none |
//! | `clerk_introspect_revocation_events_not_applied_total` | counter | `reason` |
//! | `clerk_introspect_revocation_store_up` | gauge | none |
//! | `clerk_introspect_revocation_store_errors_total` | counter | `op` |
//! | `clerk_introspect_revocation_store_lag_seconds` | histogram | none |
//! | `clerk_introspect_webhooks_total` | counter | `event_type`, `result` |
//!
//! Labels are bounded: `rpc` and `reason` are fixed strings, `issuer` is
//! one of the configured issuers (events are only ever reported for them),
//! `trigger` and `result` are fixed strings, `event_type` is one of Clerk's
//! event types the webhook endpoint knows, `other` or `unknown`. Never a
//! kid, subject, azp, token or signing secret.

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use opentelemetry::KeyValue;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use super::{REASON_VALID, Rpc};
use crate::clock::Clock;
use crate::keys::fetch::FetchError;
use crate::keys::{KeyObserver, Trigger};
use crate::verify::Verifier;

/// The prefix of every metric name.
pub const PREFIX: &str = "clerk_introspect";

/// Latency histogram buckets, in seconds: from 50 µs (a cached key and a
/// signature check) to 10 s (an unknown-kid refetch against a slow issuer).
pub const LATENCY_BUCKETS: [f64; 17] =
    [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    rpc: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabels {
    rpc: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IssuerLabels {
    issuer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FetchLabels {
    issuer: String,
    trigger: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookLabels {
    event_type: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// The `result` label of a JWKS fetch: `success`, or a fixed word for the
/// kind of failure (the logs have the details).
pub fn fetch_result(result: Result<usize, &FetchError>) -> &'static str {
    match result {
        Ok(_) => "success",
        Err(FetchError::Transport { .. }) => "transport_error",
        Err(FetchError::Timeout { .. }) => "timeout",
        Err(FetchError::Status { .. }) => "http_status",
        Err(FetchError::TooLarge { .. }) => "too_large",
        Err(FetchError::BadDiscovery { .. } | FetchError::IssuerMismatch { .. } | FetchError::BadJwksUri { .. }) => {
            "bad_discovery"
        }
        Err(FetchError::Jwks { .. }) => "bad_jwks",
        #[allow(unreachable_patterns)]
        Err(_) => "error",
    }
}

/// Per-issuer key state, read at scrape (and OTLP collection) time.
#[derive(Debug)]
struct KeyGauges {
    verifier: OnceLock<Weak<Verifier>>,
    clock: Arc<dyn Clock>,
}

/// One issuer's key state at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct IssuerKeyState {
    /// The configured issuer.
    pub issuer: String,
    /// Keys in the current set (0 before the first load).
    pub keys: usize,
    /// Seconds since the last good fetch; `None` before the first load and
    /// for static keys.
    pub age_seconds: Option<f64>,
}

impl KeyGauges {
    fn states(&self) -> Vec<IssuerKeyState> {
        let Some(verifier) = self.verifier.get().and_then(Weak::upgrade) else { return Vec::new() };
        let now = self.clock.now();
        let mut out: Vec<IssuerKeyState> = verifier
            .trust()
            .issuers()
            .map(|i| {
                let set = i.keys.current();
                IssuerKeyState {
                    issuer: i.keys.issuer().to_string(),
                    keys: set.as_ref().map_or(0, |s| s.keys().len()),
                    age_seconds: set
                        .and_then(|s| s.fetched_at())
                        .map(|at| now.duration_since(at).unwrap_or(Duration::ZERO).as_secs_f64()),
                }
            })
            .collect();
        out.sort_by(|a, b| a.issuer.cmp(&b.issuer));
        out
    }
}

impl Collector for KeyGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let states = self.states();
        {
            let mut family = encoder.encode_descriptor(
                "keys_loaded",
                "Usable keys in each issuer's current key set (0 before the first successful fetch).",
                None,
                MetricType::Gauge,
            )?;
            for s in &states {
                let labels = IssuerLabels { issuer: s.issuer.clone() };
                ConstGauge::new(i64::try_from(s.keys).unwrap_or(i64::MAX)).encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "keys_age",
            "Seconds since each issuer's keys were last fetched successfully (absent before the first load and for static keys).",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?;
        for s in &states {
            if let Some(age) = s.age_seconds {
                let labels = IssuerLabels { issuer: s.issuer.clone() };
                ConstGauge::new(age).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// The server limits' use, read at scrape time (the hot path updates
/// nothing for them).
#[derive(Debug, Default)]
struct LimitGauges {
    limits: OnceLock<Arc<dyn LimitUse>>,
}

impl Collector for LimitGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(limits) = self.limits.get() else { return Ok(()) };
        let as_i64 = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        for (name, help, value) in [
            (
                "calls_in_flight",
                "gRPC calls in progress on the listener (health checks included)",
                limits.calls_in_flight(),
            ),
            (
                "calls_in_flight_max",
                "Most gRPC calls in progress at once (--max-calls-in-flight; health checks have 64 more)",
                limits.max_calls(),
            ),
            (
                "request_bytes_buffered",
                "Bytes of gRPC requests read and held by calls in progress",
                limits.request_bytes(),
            ),
            (
                "request_bytes_buffered_max",
                "Most bytes of requests held at once (--max-request-bytes)",
                limits.max_request_bytes(),
            ),
        ] {
            let family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(as_i64(value)).encode(family)?;
        }
        Ok(())
    }
}

/// The same metrics as OpenTelemetry instruments (exported over OTLP).
struct OtelInstruments {
    verifications: opentelemetry::metrics::Counter<u64>,
    duration: opentelemetry::metrics::Histogram<f64>,
    in_flight: opentelemetry::metrics::UpDownCounter<i64>,
    fetches: opentelemetry::metrics::Counter<u64>,
    suppressed: opentelemetry::metrics::Counter<u64>,
    webhooks: opentelemetry::metrics::Counter<u64>,
    // Observable gauges live as long as their handles.
    _keys_loaded: opentelemetry::metrics::ObservableGauge<u64>,
    _keys_age: opentelemetry::metrics::ObservableGauge<f64>,
    _connections: opentelemetry::metrics::ObservableGauge<i64>,
}

impl OtelInstruments {
    fn new(meter: &opentelemetry::metrics::Meter, keys: &Arc<KeyGauges>, connections: &Gauge) -> Self {
        let loaded_source = keys.clone();
        let age_source = keys.clone();
        let connections = connections.clone();
        Self {
            verifications: meter
                .u64_counter("clerk_introspect.verifications")
                .with_description("Answered verifications, by RPC and reason.")
                .with_unit("{verification}")
                .build(),
            duration: meter
                .f64_histogram("clerk_introspect.verification.duration")
                .with_description("Time to answer a verification RPC.")
                .with_unit("s")
                .with_boundaries(LATENCY_BUCKETS.to_vec())
                .build(),
            in_flight: meter
                .i64_up_down_counter("clerk_introspect.requests.in_flight")
                .with_description("Verification RPCs being answered now.")
                .with_unit("{request}")
                .build(),
            fetches: meter
                .u64_counter("clerk_introspect.jwks.fetches")
                .with_description("JWKS fetches, by issuer, trigger and result.")
                .with_unit("{fetch}")
                .build(),
            suppressed: meter
                .u64_counter("clerk_introspect.unknown_kid_refetches.suppressed")
                .with_description("Unknown-kid refetches refused by the per-issuer cooldown.")
                .with_unit("{refetch}")
                .build(),
            webhooks: meter
                .u64_counter("clerk_introspect.webhooks")
                .with_description("Clerk webhook deliveries, by event type and result.")
                .with_unit("{delivery}")
                .build(),
            _keys_loaded: meter
                .u64_observable_gauge("clerk_introspect.keys.loaded")
                .with_description("Usable keys in each issuer's current key set.")
                .with_unit("{key}")
                .with_callback(move |observer| {
                    for s in loaded_source.states() {
                        observer.observe(s.keys as u64, &[KeyValue::new("issuer", s.issuer)]);
                    }
                })
                .build(),
            _keys_age: meter
                .f64_observable_gauge("clerk_introspect.keys.age")
                .with_description("Seconds since each issuer's keys were last fetched successfully.")
                .with_unit("s")
                .with_callback(move |observer| {
                    for s in age_source.states() {
                        if let Some(age) = s.age_seconds {
                            observer.observe(age, &[KeyValue::new("issuer", s.issuer)]);
                        }
                    }
                })
                .build(),
            _connections: meter
                .i64_observable_gauge("clerk_introspect.connections")
                .with_description("Client connections open on the gRPC listener.")
                .with_unit("{connection}")
                .with_callback(move |observer| observer.observe(connections.get(), &[]))
                .build(),
        }
    }
}

/// The metrics of one listener's connection table.
#[derive(Clone, Debug, Default)]
pub struct TableMetrics {
    /// Connections open now.
    pub open: Gauge,
    /// Connections the server asked to close, by reason.
    pub closed_by_server: Family<CloseLabels, Counter>,
}

/// Labels of [`TableMetrics::closed_by_server`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CloseLabels {
    /// `grpc`, `metrics` or `webhook`.
    pub listener: &'static str,
    /// `make_room` or `idle`.
    pub reason: &'static str,
}

/// Counters of calls refused by the server's limits.
#[derive(Clone, Debug, Default)]
pub struct LimitMetrics {
    /// Calls refused, by limit.
    pub refused: Family<RefusalLabels, Counter>,
}

/// Labels of [`LimitMetrics::refused`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// `calls_in_flight`, `request_bytes` or `request_timeout`.
    pub limit: &'static str,
}

/// How much of the server's call budgets is in use, read at scrape time.
pub trait LimitUse: Send + Sync + std::fmt::Debug {
    /// Calls in progress.
    fn calls_in_flight(&self) -> usize;
    /// Most calls in progress at once.
    fn max_calls(&self) -> usize;
    /// Request bytes held.
    fn request_bytes(&self) -> usize;
    /// Most request bytes held at once.
    fn max_request_bytes(&self) -> usize;
}

/// Store lag buckets, in seconds: from 1 ms (loopback Redis) to 30 s
/// (a replica catching up after an outage).
pub const STORE_LAG_BUCKETS: [f64; 14] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Labels of [`RevocationMetrics::applied`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppliedLabels {
    /// `session`, `user`, `membership` or `organization`.
    pub kind: &'static str,
    /// `record` (a webhook or this replica's own record call) or `store`
    /// (read from the shared store: another replica's event, or the replay).
    pub source: &'static str,
}

/// Labels of [`RevocationMetrics::not_applied`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NotAppliedLabels {
    /// `full` (the index is full), `invalid` (an entry that is not an event,
    /// or whose ids are out of bounds) or `expired` (older than the retention).
    pub reason: &'static str,
}

/// Labels of [`RevocationMetrics::store_errors`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreOpLabels {
    /// `append` or `read`.
    pub op: &'static str,
}

/// The revocation service's metrics (handles into the app's registry).
#[derive(Clone, Debug)]
pub struct RevocationMetrics {
    /// Revocations applied on this replica, by kind and source.
    pub applied: Family<AppliedLabels, Counter>,
    /// Entries in the index.
    pub entries: Gauge,
    /// `--revocation-max-entries`.
    pub entries_max: Gauge,
    /// Events recorded again under an id already applied and stored.
    pub deduplicated: Counter,
    /// Events not applied, by reason.
    pub not_applied: Family<NotAppliedLabels, Counter>,
    /// 1 while the store answers, 0 while it does not.
    pub store_up: Gauge,
    /// Store calls that failed, by operation.
    pub store_errors: Family<StoreOpLabels, Counter>,
    /// From the store's append to the event applied on this replica.
    pub store_lag: Histogram,
}

impl RevocationMetrics {
    fn register(registry: &mut Registry) -> Self {
        let applied = Family::<AppliedLabels, Counter>::default();
        for kind in ["session", "user", "membership", "organization"] {
            for source in ["record", "store"] {
                let _ = applied.get_or_create(&AppliedLabels { kind, source });
            }
        }
        registry.register(
            "revocations_applied",
            "Revocations applied on this replica, by kind (session, user, membership, organization) and source (record: a webhook or revoke on this replica; store: read from the shared store)",
            applied.clone(),
        );
        let entries = Gauge::default();
        registry.register(
            "revocation_entries",
            "Revocation entries held (sessions, users, memberships, organizations)",
            entries.clone(),
        );
        let entries_max = Gauge::default();
        registry.register(
            "revocation_entries_max",
            "Most revocation entries held (--revocation-max-entries); when full, new revocations are refused (the webhook answers 5xx)",
            entries_max.clone(),
        );
        let deduplicated = Counter::default();
        registry.register(
            "revocation_events_deduplicated",
            "Revocation events recorded again under an id already applied and stored (Svix redeliveries): nothing changed",
            deduplicated.clone(),
        );
        let not_applied = Family::<NotAppliedLabels, Counter>::default();
        for reason in ["full", "invalid", "expired"] {
            let _ = not_applied.get_or_create(&NotAppliedLabels { reason });
        }
        registry.register(
            "revocation_events_not_applied",
            "Revocation events not applied, by reason (full: the index is full; invalid: not an event or ids out of bounds; expired: older than the retention)",
            not_applied.clone(),
        );
        let store_up = Gauge::default();
        registry.register(
            "revocation_store_up",
            "1 while the revocation store answers (always 1 for the in-process store), 0 while it does not",
            store_up.clone(),
        );
        let store_errors = Family::<StoreOpLabels, Counter>::default();
        for op in ["append", "read"] {
            let _ = store_errors.get_or_create(&StoreOpLabels { op });
        }
        registry.register(
            "revocation_store_errors",
            "Revocation store calls that failed, by operation (append, read)",
            store_errors.clone(),
        );
        let store_lag = Histogram::new(STORE_LAG_BUCKETS);
        registry.register_with_unit(
            "revocation_store_lag",
            "Time from an event's append to the shared store to its application on this replica (other replicas' events and the replay)",
            Unit::Seconds,
            store_lag.clone(),
        );
        Self { applied, entries, entries_max, deduplicated, not_applied, store_up, store_errors, store_lag }
    }
}

/// The metrics of one [`crate::app::App`].
pub struct Metrics {
    registry: Registry,
    verifications: Family<VerdictLabels, Counter>,
    duration: Family<RpcLabels, Histogram, fn() -> Histogram>,
    in_flight: Family<RpcLabels, Gauge>,
    fetches: Family<FetchLabels, Counter>,
    suppressed: Family<IssuerLabels, Counter>,
    keys: Arc<KeyGauges>,
    connections: Gauge,
    connections_max: Gauge,
    closed_by_server: Family<CloseLabels, Counter>,
    refused: Family<RefusalLabels, Counter>,
    webhooks: Family<WebhookLabels, Counter>,
    limits: Arc<LimitGauges>,
    revocation: RevocationMetrics,
    otel: Option<OtelInstruments>,
    /// Each RPC's in-flight gauge and latency histogram, looked up in their
    /// families once (on the RPC's first call) instead of on every call.
    per_rpc: [OnceLock<RpcHandles>; Rpc::ALL.len()],
}

/// Handles into the per-RPC families (they share the families' values).
struct RpcHandles {
    in_flight: Gauge,
    duration: Histogram,
    /// The RPC's `REASON_VALID` counter: the common answer skips the
    /// family's lookup (a hash of the labels under a lock).
    valid: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").field("otlp", &self.otel.is_some()).finish_non_exhaustive()
    }
}

impl Metrics {
    /// A fresh registry (key ages read from `clock`), mirrored to `meter`
    /// when given. Call [`Metrics::watch_keys`] once the verifier exists.
    pub fn new(clock: Arc<dyn Clock>, meter: Option<&opentelemetry::metrics::Meter>) -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        let verifications = Family::<VerdictLabels, Counter>::default();
        registry.register(
            "verifications",
            "Answered verifications (Verify, GetClaims, Check), by RPC and reason (a REASON_* name from the API, UNAVAILABLE or CANCELLED)",
            verifications.clone(),
        );
        let duration = Family::<RpcLabels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "verification_duration",
            "Time to answer a verification RPC, from the handler's start to its answer",
            Unit::Seconds,
            duration.clone(),
        );
        let in_flight = Family::<RpcLabels, Gauge>::default();
        registry.register("requests_in_flight", "Verification RPCs being answered now", in_flight.clone());
        let fetches = Family::<FetchLabels, Counter>::default();
        registry.register(
            "jwks_fetches",
            "JWKS fetches (with discovery), by issuer, trigger (startup, scheduled, unknown_kid, unavailable) and result (success or the kind of failure)",
            fetches.clone(),
        );
        let suppressed = Family::<IssuerLabels, Counter>::default();
        registry.register(
            "unknown_kid_refetches_suppressed",
            "Unknown-kid refetches refused because the issuer's cooldown had not passed",
            suppressed.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build.get_or_create(&BuildLabels { version: env!("CARGO_PKG_VERSION") }).set(1);
        registry.register("build_info", "Always 1; the version label says which build is running", build);
        for rpc in [Rpc::Verify, Rpc::GetClaims] {
            // Present from the first scrape, so dashboards and rate() see zeros.
            in_flight.get_or_create(&RpcLabels { rpc: rpc.as_str() }).set(0);
        }
        let keys = Arc::new(KeyGauges { verifier: OnceLock::new(), clock });
        registry.register_collector(Box::new(keys.clone()));
        let connections = Gauge::default();
        registry.register("connections", "Client connections open on the gRPC listener", connections.clone());
        let connections_max = Gauge::default();
        registry.register(
            "connections_max",
            "Most client connections the gRPC listener holds open at once (--max-connections, as lowered to the open-files limit)",
            connections_max.clone(),
        );
        let closed_by_server = Family::<CloseLabels, Counter>::default();
        registry.register(
            "connections_closed_by_server",
            "Connections the server asked to close, by listener (grpc, metrics, webhook) and reason (make_room: the table was full and a new client came; idle: --max-connection-idle)",
            closed_by_server.clone(),
        );
        let refused = Family::<RefusalLabels, Counter>::default();
        registry.register(
            "calls_refused",
            "gRPC calls refused by a server limit (calls_in_flight, request_bytes: RESOURCE_EXHAUSTED; request_timeout: DEADLINE_EXCEEDED)",
            refused.clone(),
        );
        let webhooks = Family::<WebhookLabels, Counter>::default();
        registry.register(
            "webhooks",
            "Clerk webhook deliveries on --webhook-listen, by event type (Clerk's, other, or unknown when the body was not read) and result (applied, duplicate, ignored, bad_signature, stale, malformed, too_large, store_error)",
            webhooks.clone(),
        );
        let limits = Arc::new(LimitGauges::default());
        registry.register_collector(Box::new(limits.clone()));
        let revocation = RevocationMetrics::register(&mut registry);
        let otel = meter.map(|m| OtelInstruments::new(m, &keys, &connections));
        Self {
            revocation,
            registry,
            verifications,
            duration,
            in_flight,
            fetches,
            suppressed,
            keys,
            connections,
            connections_max,
            closed_by_server,
            refused,
            webhooks,
            limits,
            otel,
            per_rpc: Default::default(),
        }
    }

    fn rpc_handles(&self, rpc: Rpc) -> &RpcHandles {
        self.per_rpc[rpc as usize].get_or_init(|| {
            let labels = RpcLabels { rpc: rpc.as_str() };
            RpcHandles {
                in_flight: self.in_flight.get_or_create(&labels).clone(),
                duration: self.duration.get_or_create(&labels).clone(),
                valid: self
                    .verifications
                    .get_or_create(&VerdictLabels { rpc: rpc.as_str(), reason: REASON_VALID })
                    .clone(),
            }
        })
    }

    /// The metrics of the gRPC listener's connection table; records `max`
    /// as its cap.
    pub fn grpc_connections(&self, max: usize) -> TableMetrics {
        self.connections_max.set(i64::try_from(max).unwrap_or(i64::MAX));
        TableMetrics { open: self.connections.clone(), closed_by_server: self.closed_by_server.clone() }
    }

    /// The metrics of the admin port's connection table (its open
    /// connections are not exported; its closes are).
    pub fn admin_connections(&self) -> TableMetrics {
        TableMetrics { open: Gauge::default(), closed_by_server: self.closed_by_server.clone() }
    }

    /// The revocation service's metrics.
    pub fn revocation(&self) -> RevocationMetrics {
        self.revocation.clone()
    }

    /// The metrics of the webhook port's connection table (its open
    /// connections are not exported; its closes are).
    pub fn webhook_connections(&self) -> TableMetrics {
        TableMetrics { open: Gauge::default(), closed_by_server: self.closed_by_server.clone() }
    }

    /// The counters of calls refused by the server's limits.
    pub fn call_limits(&self) -> LimitMetrics {
        LimitMetrics { refused: self.refused.clone() }
    }

    /// Reads calls in flight and request bytes buffered from `limits` at
    /// scrape time. Only the first call counts.
    pub fn watch_limits(&self, limits: Arc<dyn LimitUse>) {
        let _ = self.limits.limits.set(limits);
    }

    /// Reads key state from `verifier` (held weakly: the key caches hold
    /// these metrics as their observer). Only the first call counts.
    pub fn watch_keys(&self, verifier: &Arc<Verifier>) {
        let _ = self.keys.verifier.set(Arc::downgrade(verifier));
    }

    /// Each issuer's key state now.
    pub fn key_states(&self) -> Vec<IssuerKeyState> {
        self.keys.states()
    }

    /// Counts one webhook delivery. `event_type` and `result` must come from
    /// fixed vocabularies (the webhook endpoint's), so the label set stays
    /// bounded.
    pub fn webhook_delivered(&self, event_type: &'static str, result: &'static str) {
        self.webhooks.get_or_create(&WebhookLabels { event_type, result }).inc();
        if let Some(o) = &self.otel {
            o.webhooks.add(1, &[KeyValue::new("event_type", event_type), KeyValue::new("result", result)]);
        }
    }

    /// Whether the metrics are mirrored to OpenTelemetry.
    pub fn exports_otlp(&self) -> bool {
        self.otel.is_some()
    }

    /// The registry, in the Prometheus text format 0.0.4.
    pub fn encode_prometheus(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }

    /// The registry, in the OpenMetrics text format 1.0.0 (ends with `# EOF`).
    pub fn encode_openmetrics(&self) -> String {
        let mut out = String::with_capacity(4096);
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub(super) fn request_started(&self, rpc: Rpc) {
        self.rpc_handles(rpc).in_flight.inc();
        if let Some(o) = &self.otel {
            o.in_flight.add(1, &[KeyValue::new("rpc", rpc.as_str())]);
        }
    }

    pub(super) fn request_finished(&self, rpc: Rpc, reason: &'static str, elapsed: Duration) {
        let handles = self.rpc_handles(rpc);
        handles.in_flight.dec();
        handles.duration.observe(elapsed.as_secs_f64());
        if reason == REASON_VALID {
            handles.valid.inc();
        } else {
            self.verifications.get_or_create(&VerdictLabels { rpc: rpc.as_str(), reason }).inc();
        }
        if let Some(o) = &self.otel {
            let rpc_kv = KeyValue::new("rpc", rpc.as_str());
            o.in_flight.add(-1, std::slice::from_ref(&rpc_kv));
            o.duration.record(elapsed.as_secs_f64(), std::slice::from_ref(&rpc_kv));
            o.verifications.add(1, &[rpc_kv, KeyValue::new("reason", reason)]);
        }
    }
}

impl KeyObserver for Metrics {
    fn fetch_finished(&self, issuer: &str, trigger: Trigger, result: Result<usize, &FetchError>) {
        let result = fetch_result(result);
        self.fetches.get_or_create(&FetchLabels { issuer: issuer.to_owned(), trigger: trigger.as_str(), result }).inc();
        if let Some(o) = &self.otel {
            o.fetches.add(
                1,
                &[
                    KeyValue::new("issuer", issuer.to_owned()),
                    KeyValue::new("trigger", trigger.as_str()),
                    KeyValue::new("result", result),
                ],
            );
        }
    }

    fn refetch_suppressed(&self, issuer: &str) {
        self.suppressed.get_or_create(&IssuerLabels { issuer: issuer.to_owned() }).inc();
        if let Some(o) = &self.otel {
            o.suppressed.add(1, &[KeyValue::new("issuer", issuer.to_owned())]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;

    fn metrics() -> Metrics {
        Metrics::new(Arc::new(SystemClock), None)
    }

    #[test]
    fn counters_appear_in_both_formats() {
        let m = metrics();
        m.request_started(Rpc::Verify);
        m.request_finished(Rpc::Verify, "REASON_EXPIRED", Duration::from_micros(80));
        m.fetch_finished("https://a.example.com", Trigger::Startup, Ok(2));
        m.refetch_suppressed("https://a.example.com");
        m.webhook_delivered("session.revoked", "applied");
        let text = m.encode_prometheus();
        for line in [
            "clerk_introspect_verifications_total{rpc=\"Verify\",reason=\"REASON_EXPIRED\"} 1",
            "clerk_introspect_requests_in_flight{rpc=\"Verify\"} 0",
            "clerk_introspect_verification_duration_seconds_count{rpc=\"Verify\"} 1",
            "clerk_introspect_verification_duration_seconds_bucket{rpc=\"Verify\",le=\"0.0001\"} 1",
            "clerk_introspect_jwks_fetches_total{issuer=\"https://a.example.com\",trigger=\"startup\",result=\"success\"} 1",
            "clerk_introspect_unknown_kid_refetches_suppressed_total{issuer=\"https://a.example.com\"} 1",
            "clerk_introspect_webhooks_total{event_type=\"session.revoked\",result=\"applied\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        assert!(!text.contains("# EOF"));
        assert!(!text.contains(".."), "prometheus-client ends help texts with a period itself:\n{text}");
        let om = m.encode_openmetrics();
        assert!(om.ends_with("# EOF\n"), "{om}");
        assert!(om.contains("# UNIT clerk_introspect_verification_duration_seconds seconds"), "{om}");
    }

    #[test]
    fn fetch_results_are_a_fixed_vocabulary() {
        let timeout = FetchError::Timeout { url: "https://a.example.com/jwks".into() };
        assert_eq!(fetch_result(Err(&timeout)), "timeout");
        let status = FetchError::Status { url: "u".into(), status: 500 };
        assert_eq!(fetch_result(Err(&status)), "http_status");
        assert_eq!(fetch_result(Ok(3)), "success");
    }

    #[test]
    fn key_gauges_are_empty_without_a_verifier() {
        let m = metrics();
        assert!(m.key_states().is_empty());
        let text = m.encode_prometheus();
        assert!(text.contains("# TYPE clerk_introspect_keys_loaded gauge"), "{text}");
        assert!(!text.contains("clerk_introspect_keys_loaded{"), "{text}");
    }
}
