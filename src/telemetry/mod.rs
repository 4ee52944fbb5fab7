//! Observability: logs, spans and metrics. Nothing recorded here ever contains a token or a signature: spans
//! and logs carry the issuer, kid, algorithm and reason; metric labels are
//! bounded (RPC, reason, configured issuer, fetch trigger and result).
//!
//! - Logs: `tracing` to stderr, human-readable by default or one JSON
//!   object per line ([`LogFormat`]); `RUST_LOG` sets the levels.
//! - Spans: one server span per RPC ([`Telemetry::begin`] → [`RpcCall`]),
//!   continuing the caller's W3C `traceparent`; exported over OTLP/gRPC
//!   when [`otel`] is configured, in the logs at `debug` ([`RPC_TARGET`]).
//! - Metrics ([`metrics`]): a per-[`crate::app::App`] Prometheus registry,
//!   served by [`crate::server::admin`] on `--metrics-listen`, and mirrored
//!   to OTLP when configured.
//! - [`throttle`]: at most one line per interval for a repeating warning.

pub mod metrics;
pub mod otel;
pub mod throttle;

use std::sync::Arc;
use std::time::Instant;

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::{Span, Subscriber, field};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::verify::{VerifiedToken, VerifyError};
pub use metrics::Metrics;

/// The format of log lines on stderr.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (colored on a terminal).
    #[default]
    Text,
    /// One JSON object per line, with the current span's fields, for log
    /// pipelines.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("invalid value {other:?}; use text or json")),
        }
    }
}

/// Builds the subscriber: log lines in `format` to `writer`, filtered by
/// `RUST_LOG` (default `default_level`), plus, when `tracer` is given, the
/// OpenTelemetry layer (see [`otel::layer_filter`] for what it exports).
/// [`init`] installs it; benchmarks install it for one scope.
pub fn subscriber<W>(
    format: LogFormat,
    default_level: &str,
    tracer: Option<opentelemetry_sdk::trace::Tracer>,
    writer: W,
    ansi: bool,
) -> impl Subscriber + for<'a> LookupSpan<'a> + Send + Sync + 'static
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    subscriber_with_filter(format, filter, tracer, writer, ansi)
}

fn subscriber_with_filter<W>(
    format: LogFormat,
    filter: EnvFilter,
    tracer: Option<opentelemetry_sdk::trace::Tracer>,
    writer: W,
    ansi: bool,
) -> impl Subscriber + for<'a> LookupSpan<'a> + Send + Sync + 'static
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let dispatch = DispatchCell::default();
    let logs = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer().with_ansi(ansi).with_writer(writer).boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .event_format(JsonWithTraceIds {
                json: tracing_subscriber::fmt::format()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false),
                dispatch: dispatch.clone(),
            })
            .with_writer(writer)
            .boxed(),
    };
    let spans = tracer.map(|t| {
        tracing_opentelemetry::layer()
            .with_tracer(t)
            .with_tracked_inactivity(false)
            .with_location(false)
            .with_threads(false)
            .with_filter(otel::layer_filter())
    });
    tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(spans)
        // Wants no span or event of its own (so it enables nothing); only
        // keeps the dispatcher.
        .with(dispatch.with_filter(tracing_subscriber::filter::LevelFilter::OFF))
}

/// JSON log lines (tracing-subscriber's), plus `trace_id` and `span_id`
/// (W3C hex) when the current span is traced by OpenTelemetry, so that a
/// log pipeline can join each line of an RPC to its exported trace. The
/// RPC spans are DEBUG spans, hidden from the logs at `info`; their ids are
/// read from the OpenTelemetry layer, which always takes them.
struct JsonWithTraceIds {
    json: tracing_subscriber::fmt::format::Format<tracing_subscriber::fmt::format::Json>,
    dispatch: DispatchCell,
}

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for JsonWithTraceIds
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> tracing_subscriber::fmt::FormatFields<'w> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let Some((trace_id, span_id)) = self.dispatch.current_trace_ids() else {
            return self.json.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.json.format_event(ctx, tracing_subscriber::fmt::format::Writer::new(&mut line), event)?;
        // One JSON object and a newline: the ids go in before its last brace.
        match line.trim_end().strip_suffix('}') {
            Some(object) => writeln!(writer, r#"{object},"trace_id":"{trace_id}","span_id":"{span_id}"}}"#),
            None => writer.write_str(&line),
        }
    }
}

/// The dispatcher the logs belong to, kept when it is built. Inside an
/// event, `Span::current()` sees no dispatcher (tracing's re-entrancy
/// guard) and the log layer's own view hides the filtered-out RPC spans;
/// the dispatcher itself knows the current span and its OpenTelemetry ids.
#[derive(Clone, Default)]
struct DispatchCell(Arc<std::sync::OnceLock<tracing::dispatcher::WeakDispatch>>);

impl DispatchCell {
    /// The OpenTelemetry trace and span ids of the current span, if it is traced.
    fn current_trace_ids(&self) -> Option<(opentelemetry::trace::TraceId, opentelemetry::trace::SpanId)> {
        use opentelemetry::trace::TraceContextExt as _;
        let dispatch = self.0.get()?.upgrade()?;
        let current = dispatch.current_span();
        let cx = tracing_opentelemetry::get_otel_context(current.id()?, &dispatch)?;
        let sc = cx.span().span_context().clone();
        sc.is_valid().then(|| (sc.trace_id(), sc.span_id()))
    }
}

impl<S: Subscriber> Layer<S> for DispatchCell {
    fn on_register_dispatch(&self, dispatch: &tracing::Dispatch) {
        let _ = self.0.set(dispatch.downgrade());
    }
}

/// Installs the global subscriber: logs on stderr in `format`, filtered by
/// `RUST_LOG` (default: `default_level`, e.g. `info`), and spans exported
/// through `tracer` when OpenTelemetry is on. A second call does nothing.
pub fn init(format: LogFormat, default_level: &str, tracer: Option<opentelemetry_sdk::trace::Tracer>) {
    let ansi = format == LogFormat::Text && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = subscriber(format, default_level, tracer, std::io::stderr, ansi).try_init();
}

/// Installs human-readable logging only (see [`init`]).
pub fn init_logging(default_level: &str) {
    init(LogFormat::Text, default_level, None);
}

/// The RPCs that verify a token, as span names and metric labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rpc {
    /// `introspect.v1.TokenIntrospection/Verify`.
    Verify,
    /// `introspect.v1.TokenIntrospection/GetClaims`.
    GetClaims,
    /// `envoy.service.auth.v3.Authorization/Check` (Envoy ext_authz).
    Check,
}

impl Rpc {
    /// Every RPC.
    pub const ALL: [Rpc; 3] = [Rpc::Verify, Rpc::GetClaims, Rpc::Check];

    /// The method name, also the `rpc` metric label: `Verify`, `GetClaims`, `Check`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Rpc::Verify => "Verify",
            Rpc::GetClaims => "GetClaims",
            Rpc::Check => "Check",
        }
    }

    /// The fully qualified gRPC service.
    pub const fn service(self) -> &'static str {
        match self {
            Rpc::Verify | Rpc::GetClaims => "introspect.v1.TokenIntrospection",
            Rpc::Check => "envoy.service.auth.v3.Authorization",
        }
    }

    /// `service/method`, the OpenTelemetry span name of a gRPC server span.
    pub const fn full_name(self) -> &'static str {
        match self {
            Rpc::Verify => "introspect.v1.TokenIntrospection/Verify",
            Rpc::GetClaims => "introspect.v1.TokenIntrospection/GetClaims",
            Rpc::Check => "envoy.service.auth.v3.Authorization/Check",
        }
    }
}

/// The metric label (and span field) for calls that ended with
/// `UNAVAILABLE`: the token's issuer had no usable keys.
pub const REASON_UNAVAILABLE: &str = "UNAVAILABLE";
/// The metric label for calls whose client went away before an answer.
pub const REASON_CANCELLED: &str = "CANCELLED";

/// The `reason` label of a valid answer.
pub const REASON_VALID: &str = "REASON_VALID";

/// The telemetry handle the gRPC services hold: cheap to clone.
#[derive(Clone, Debug)]
pub struct Telemetry {
    metrics: Arc<Metrics>,
}

impl Telemetry {
    /// A handle recording into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }

    /// A handle with its own registry, not served anywhere: for services
    /// built outside an [`crate::App`] (unit tests, benchmarks).
    pub fn detached() -> Self {
        Self::new(Arc::new(Metrics::new(Arc::new(crate::clock::SystemClock), None)))
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Starts one RPC: its server span (child of the caller's W3C
    /// `traceparent` in `metadata`, if any), the in-flight gauge and the
    /// latency timer. Run the handler inside [`RpcCall::span`] and call
    /// [`RpcCall::record`] with the outcome; dropping the call ends it
    /// (counted as [`REASON_CANCELLED`] if nothing was recorded).
    pub fn begin(&self, rpc: Rpc, metadata: &tonic::metadata::MetadataMap) -> RpcCall {
        let span = rpc_span(rpc);
        if !span.is_disabled() {
            let parent = TraceContextPropagator::new().extract(&MetadataExtractor(metadata));
            // Fails only when no OpenTelemetry layer is installed: nothing to continue then.
            let _ = span.set_parent(parent);
        }
        self.metrics.request_started(rpc);
        RpcCall { rpc, span, started: Instant::now(), metrics: self.metrics.clone(), reason: None }
    }
}

/// The target of the RPC spans. They are DEBUG spans (as tower-http's
/// request spans are): with the default `RUST_LOG=info` and no exporter
/// they are disabled at their call site and cost nothing; the OpenTelemetry
/// layer always takes them ([`otel::layer_filter`]); `RUST_LOG=debug` (or
/// `clerk_introspect::rpc=debug`) shows them in the logs.
pub const RPC_TARGET: &str = "clerk_introspect::rpc";

/// The server span of `rpc`. Fields recorded later: `issuer`, `kid`, `alg`,
/// `reason`, `cached` (true when another layer answered from its cache:
/// `Span::current().record("cached", true)`), the gRPC status.
fn rpc_span(rpc: Rpc) -> Span {
    macro_rules! span {
        ($name:literal) => {
            tracing::debug_span!(
                target: RPC_TARGET,
                $name,
                otel.kind = "server",
                otel.status_code = field::Empty,
                rpc.system = "grpc",
                rpc.service = rpc.service(),
                rpc.method = rpc.as_str(),
                rpc.grpc.status_code = field::Empty,
                issuer = field::Empty,
                kid = field::Empty,
                alg = field::Empty,
                reason = field::Empty,
                cached = false,
            )
        };
    }
    match rpc {
        // The span name is the gRPC method's full name (OpenTelemetry RPC conventions).
        Rpc::Verify => span!("introspect.v1.TokenIntrospection/Verify"),
        Rpc::GetClaims => span!("introspect.v1.TokenIntrospection/GetClaims"),
        Rpc::Check => span!("envoy.service.auth.v3.Authorization/Check"),
    }
}

/// One RPC in progress (see [`Telemetry::begin`]).
#[derive(Debug)]
pub struct RpcCall {
    rpc: Rpc,
    span: Span,
    started: Instant,
    metrics: Arc<Metrics>,
    reason: Option<&'static str>,
}

impl RpcCall {
    /// The server span: instrument the handler's future with it.
    pub fn span(&self) -> &Span {
        &self.span
    }

    /// Records a verification outcome: on the span (issuer, kid, algorithm,
    /// reason, gRPC status) and, when the call ends, in the metrics.
    pub fn record(&mut self, outcome: Result<&VerifiedToken, &VerifyError>) {
        let span = &self.span;
        match outcome {
            Ok(t) => {
                span.record("issuer", &*t.issuer);
                if let Some(kid) = t.key.kid() {
                    span.record("kid", kid);
                }
                span.record("alg", t.algorithm.as_str());
                tracing::debug!(parent: span, issuer = %t.issuer, kid = t.key.kid().unwrap_or(""), alg = t.algorithm.as_str(), "token valid");
                self.finish(REASON_VALID, tonic::Code::Ok);
            }
            Err(VerifyError::Rejected(r)) => {
                tracing::debug!(parent: span, reason = r.reason_name(), message = %r.message, "token rejected");
                let code = if self.rpc == Rpc::GetClaims { tonic::Code::Unauthenticated } else { tonic::Code::Ok };
                self.finish(r.reason_name(), code);
            }
            Err(VerifyError::Unavailable { issuer }) => {
                // Logged by the key cache, at most once per interval per
                // issuer (`IssuerKeys::note_unavailable`), not once per call.
                span.record("issuer", &**issuer);
                self.finish(REASON_UNAVAILABLE, tonic::Code::Unavailable);
            }
        }
    }

    /// Records an answer that is not a verification outcome (e.g. a Check
    /// request without a token): `reason` is the label, a fixed string.
    pub fn record_reason(&mut self, reason: &'static str, code: tonic::Code) {
        self.finish(reason, code);
    }

    fn finish(&mut self, reason: &'static str, code: tonic::Code) {
        self.span.record("reason", reason);
        self.span.record("rpc.grpc.status_code", code as i64);
        if is_server_error(code) {
            self.span.record("otel.status_code", "ERROR");
        }
        self.reason = Some(reason);
    }
}

impl Drop for RpcCall {
    fn drop(&mut self) {
        let reason = self.reason.unwrap_or(REASON_CANCELLED);
        self.metrics.request_finished(self.rpc, reason, self.started.elapsed());
    }
}

/// gRPC codes that mark a server span as failed (OpenTelemetry semantic
/// conventions for RPC): the client's own errors do not.
fn is_server_error(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(code, Unknown | DeadlineExceeded | Unimplemented | Internal | Unavailable | DataLoss)
}

/// Reads W3C trace context from gRPC metadata.
pub struct MetadataExtractor<'a>(pub &'a tonic::metadata::MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_names_follow_the_grpc_paths() {
        use tonic::server::NamedService;
        for rpc in Rpc::ALL {
            assert_eq!(rpc.full_name(), format!("{}/{}", rpc.service(), rpc.as_str()));
        }
        assert_eq!(
            crate::pb::token_introspection_server::TokenIntrospectionServer::<crate::service::IntrospectService>::NAME,
            Rpc::Verify.service()
        );
    }

    #[test]
    fn span_names_are_the_full_method_names() {
        let _guard = tracing::subscriber::set_default(tracing_subscriber::registry());
        for rpc in Rpc::ALL {
            let span = rpc_span(rpc);
            assert_eq!(span.metadata().map(|m| m.name()), Some(rpc.full_name()));
            for field in ["issuer", "kid", "alg", "reason", "cached", "otel.kind", "rpc.grpc.status_code"] {
                assert!(span.field(field).is_some(), "{rpc:?} declares {field}");
            }
        }
    }

    #[test]
    fn rpc_spans_are_off_at_info_without_an_exporter_and_on_at_debug() {
        let info = subscriber_with_filter(LogFormat::Text, EnvFilter::new("info"), None, std::io::sink, false);
        tracing::subscriber::with_default(info, || assert!(rpc_span(Rpc::Verify).is_disabled()));
        let debug = subscriber_with_filter(LogFormat::Json, EnvFilter::new("debug"), None, std::io::sink, false);
        tracing::subscriber::with_default(debug, || assert!(!rpc_span(Rpc::Verify).is_disabled()));
    }

    /// A `MakeWriter` that keeps what the logs wrote.
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    impl Captured {
        fn lines(&self) -> Vec<serde_json::Value> {
            let bytes = self.0.lock().unwrap().clone();
            String::from_utf8(bytes)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
                .collect()
        }
    }

    fn traceparent() -> tonic::metadata::MetadataMap {
        let mut md = tonic::metadata::MetadataMap::new();
        md.insert("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".parse().unwrap());
        md
    }

    #[test]
    fn json_logs_carry_the_trace_and_span_ids_of_a_traced_rpc() {
        use opentelemetry::trace::TracerProvider as _;
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let out = Captured::default();
        let subscriber = subscriber_with_filter(
            LogFormat::Json,
            EnvFilter::new("info"),
            Some(provider.tracer("test")),
            out.clone(),
            false,
        );
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("before any RPC");
            let call = Telemetry::detached().begin(Rpc::Verify, &traceparent());
            let own_span_id = {
                use opentelemetry::trace::TraceContextExt as _;
                call.span().context().span().span_context().span_id().to_string()
            };
            call.span().in_scope(|| tracing::warn!(issuer = "https://clerk.example.com", "inside the RPC"));
            tracing::info!(span_id = %own_span_id, "after the RPC");
        });
        let lines = out.lines();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(lines[0]["message"], "before any RPC");
        assert!(lines[0].get("trace_id").is_none(), "{}", lines[0]);
        let inside = &lines[1];
        assert_eq!(inside["message"], "inside the RPC");
        assert_eq!(inside["issuer"], "https://clerk.example.com");
        assert_eq!(inside["level"], "WARN");
        // The caller's trace, and the server span's own id (not the caller's).
        assert_eq!(inside["trace_id"], "0af7651916cd43dd8448eb211c80319c", "{lines:?}");
        assert_eq!(inside["span_id"], lines[2]["span_id"]);
        assert_ne!(inside["span_id"], "b7ad6b7169203331");
        assert!(lines[2].get("trace_id").is_none(), "{}", lines[2]);
    }

    #[test]
    fn json_logs_have_no_trace_ids_without_opentelemetry() {
        let out = Captured::default();
        let subscriber = subscriber_with_filter(LogFormat::Json, EnvFilter::new("debug"), None, out.clone(), false);
        tracing::subscriber::with_default(subscriber, || {
            let call = Telemetry::detached().begin(Rpc::Verify, &traceparent());
            call.span().in_scope(|| tracing::warn!("inside the RPC"));
        });
        let lines = out.lines();
        let inside = lines.iter().find(|l| l["message"] == "inside the RPC").expect("the event is logged");
        // The span's own fields are there (debug shows RPC spans); no ids.
        assert_eq!(inside["span"]["rpc.method"], "Verify");
        assert!(inside.get("trace_id").is_none() && inside.get("span_id").is_none(), "{inside}");
    }

    #[test]
    fn the_extractor_reads_ascii_metadata() {
        let mut md = tonic::metadata::MetadataMap::new();
        md.insert("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".parse().unwrap());
        md.insert_bin("x-bin", tonic::metadata::MetadataValue::from_bytes(b"\x00\x01"));
        let ex = MetadataExtractor(&md);
        assert_eq!(ex.get("traceparent"), Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"));
        assert_eq!(ex.keys(), vec!["traceparent"]);
        use opentelemetry::trace::TraceContextExt;
        let cx = TraceContextPropagator::new().extract(&ex);
        let sc = cx.span().span_context().clone();
        assert!(sc.is_remote() && sc.is_sampled());
        assert_eq!(sc.trace_id().to_string(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(sc.span_id().to_string(), "b7ad6b7169203331");
    }
}
