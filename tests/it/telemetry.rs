//! Observability end to end: OTLP export to a collector the test runs (the
//! real binary, configured by the standard environment variables), the
//! Prometheus `/metrics` endpoint read with a real text-format parser, and
//! the HTTP `/healthz` and `/readyz` probes.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use clerk_introspect::clock::{Clock, ManualClock};
use clerk_introspect::config::{Config, IssuerConfig};
use clerk_introspect::pb::token_introspection_client::TokenIntrospectionClient;
use clerk_introspect::pb::{GetClaimsRequest, Reason, VerifyRequest};
use clerk_introspect::test_issuer::{TestIssuer, TestKey};
use clerk_introspect::{App, ServeError, ServeOptions};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{ResourceMetrics, metric, number_data_point};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, span::SpanKind};
use prometheus_parse::{Sample, Scrape, Value};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::transport::server::TcpIncoming;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::support::{POLL, READY_TIMEOUT, issuer_config};

const BIN: &str = env!("CARGO_BIN_EXE_clerk-introspect");

// === an OTLP/gRPC collector ===

/// Keeps every export it receives.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<ResourceSpans>>>,
    metrics: Arc<Mutex<Vec<ResourceMetrics>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.spans.lock().unwrap().extend(request.into_inner().resource_spans);
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.metrics.lock().unwrap().extend(request.into_inner().resource_metrics);
        Ok(tonic::Response::new(ExportMetricsServiceResponse { partial_success: None }))
    }
}

impl Collector {
    /// Serves OTLP/gRPC on a loopback port; returns the endpoint URL.
    async fn start(&self) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(self.clone()))
            .add_service(MetricsServiceServer::new(self.clone()));
        tokio::spawn(router.serve_with_incoming(TcpIncoming::from(listener)));
        format!("http://{addr}")
    }
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.as_ref()).and_then(|v| v.value.as_ref())
}

fn attr_str<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    match attr(attrs, key) {
        Some(any_value::Value::StringValue(s)) => Some(s),
        _ => None,
    }
}

fn any_value_text(v: &Option<AnyValue>) -> String {
    format!("{v:?}")
}

// === the binary, with OTLP export ===

/// A child process killed if the test ends (or panics) while it runs, so
/// that it never outlives the test holding the test's output pipes.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The running binary: its stderr lines (JSON logs) and addresses.
struct Child {
    child: KillOnDrop,
    grpc: String,
    http: String,
    log: std::thread::JoinHandle<Vec<String>>,
}

fn spawn_binary(issuer: &str, otlp: &str) -> Child {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--issuer", issuer])
        .args(["--log-format", "json"])
        // Each verification's debug line, as an operator turns it on; the
        // RPC spans themselves stay out of the logs (target `clerk_introspect::rpc`).
        .env("RUST_LOG", "info,clerk_introspect::telemetry=debug")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", otlp)
        .env("OTEL_SERVICE_NAME", "introspect-under-test")
        .env("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test,team=auth%2Cplatform")
        // No span is exported on a schedule during the test: what arrives
        // was flushed at shutdown. Metrics are exported every 200 ms.
        .env("OTEL_BSP_SCHEDULE_DELAY", "3600000")
        .env("OTEL_METRIC_EXPORT_INTERVAL", "200")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_PROTOCOL")
        .env_remove("OTEL_SDK_DISABLED")
        .env_remove("OTEL_TRACES_EXPORTER")
        .env_remove("OTEL_METRICS_EXPORTER")
        .env_remove("OTEL_TRACES_SAMPLER")
        .env_remove("INTROSPECT_LOG_FORMAT")
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the binary");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<(String, String)>();
    let log = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && let (Some(msg), Some(addr)) = (v["message"].as_str(), v["addr"].as_str())
            {
                let _ = tx.send((msg.to_owned(), addr.to_owned()));
            }
            lines.push(line);
        }
        lines
    });
    let (mut grpc, mut http) = (None, None);
    while grpc.is_none() || http.is_none() {
        let (msg, addr) = rx.recv_timeout(Duration::from_secs(30)).expect("the server logs its addresses");
        if msg.starts_with("serving gRPC") {
            grpc = Some(addr);
        } else if msg.starts_with("serving HTTP") {
            http = Some(addr);
        }
    }
    Child { child: KillOnDrop(child), grpc: grpc.unwrap(), http: http.unwrap(), log }
}

async fn wait_serving(channel: Channel) {
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        let s = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await;
        if s.is_ok_and(|s| s.into_inner().status == ServingStatus::Serving as i32) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "never SERVING");
        tokio::time::sleep(POLL).await;
    }
}

fn with_traceparent<T>(message: T, traceparent: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("traceparent", traceparent.parse().unwrap());
    request
}

#[tokio::test]
async fn otlp_export_continues_the_callers_trace() {
    let collector = Collector::default();
    let endpoint = collector.start().await;
    let key = TestKey::rsa("ins_otel");
    let issuer = TestIssuer::start(vec![key.clone()]).await.unwrap();
    let mut child = spawn_binary(issuer.issuer(), &endpoint);

    let channel = Channel::from_shared(format!("http://{}", child.grpc)).unwrap().connect_lazy();
    wait_serving(channel.clone()).await;
    let mut client = TokenIntrospectionClient::new(channel);

    // The caller's span: W3C trace context, sampled.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let traceparent = format!("00-{trace_id}-{caller_span}-01");
    let token = key.mint(&issuer.session_claims(SystemTime::now()));
    let signature = token.rsplit('.').next().unwrap().to_owned();
    let answer = client
        .verify(with_traceparent(VerifyRequest { token: token.clone(), expect: None }, &traceparent))
        .await
        .unwrap()
        .into_inner();
    assert!(answer.valid, "{answer:?}");
    let claims = client
        .get_claims(with_traceparent(GetClaimsRequest { token: token.clone(), expect: None }, &traceparent))
        .await;
    assert!(claims.is_ok(), "{claims:?}");
    // A call without trace context starts its own trace.
    let bad = client.verify(VerifyRequest { token: "not.a.token".into(), expect: None }).await.unwrap().into_inner();
    assert_eq!(Reason::try_from(bad.reason).unwrap(), Reason::Malformed);

    // /metrics of the binary answers too.
    let body = http_get(&child.http, "/metrics", None).await;
    assert_eq!(body.0, 200);
    assert_eq!(
        sample(
            &parse(&body.2),
            "clerk_introspect_verifications_total",
            &[("rpc", "Verify"), ("reason", "REASON_VALID")]
        ),
        Some(1.0)
    );

    // Metrics are exported while serving, key gauges read at collection time.
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        let gauge = collector.metrics.lock().unwrap().iter().rev().find_map(|r| {
            r.scope_metrics.iter().flat_map(|s| &s.metrics).find(|m| m.name == "clerk_introspect.keys.loaded").cloned()
        });
        if let Some(loaded) = gauge {
            let Some(metric::Data::Gauge(gauge)) = &loaded.data else { panic!("{loaded:?}") };
            assert_eq!(gauge.data_points.len(), 1);
            assert_eq!(attr_str(&gauge.data_points[0].attributes, "issuer"), Some(issuer.issuer()));
            assert_eq!(gauge.data_points[0].value, Some(number_data_point::Value::AsInt(1)));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no keys.loaded exported");
        tokio::time::sleep(POLL).await;
    }
    let exports_before_shutdown = collector.spans.lock().unwrap().len();
    assert_eq!(exports_before_shutdown, 0, "spans wait for the batch (or the shutdown flush)");

    // SIGTERM: drain, then flush the exporters before exiting.
    let kill = Command::new("kill").args(["-TERM", &child.child.0.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let status = tokio::task::spawn_blocking(move || child.child.0.wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(0));
    let lines = child.log.join().unwrap();
    for line in &lines {
        assert!(serde_json::from_str::<serde_json::Value>(line).is_ok(), "--log-format json: {line}");
        assert!(!line.contains(&signature), "a log line carries the token: {line}");
    }

    // The spans arrived, flushed at shutdown.
    let exported = collector.spans.lock().unwrap().clone();
    assert!(!exported.is_empty(), "no spans exported; logs:\n{}", lines.join("\n"));
    let resource = exported[0].resource.clone().unwrap_or_default();
    assert_eq!(attr_str(&resource.attributes, "service.name"), Some("introspect-under-test"));
    assert_eq!(attr_str(&resource.attributes, "deployment.environment"), Some("test"));
    assert_eq!(attr_str(&resource.attributes, "team"), Some("auth,platform"));
    let spans: Vec<_> = exported.iter().flat_map(|r| &r.scope_spans).flat_map(|s| &s.spans).collect();
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let verify = spans
        .iter()
        .find(|s| s.name == "introspect.v1.TokenIntrospection/Verify" && hex(&s.trace_id) == trace_id)
        .unwrap_or_else(|| panic!("no Verify span in the caller's trace: {spans:#?}"));
    assert_eq!(hex(&verify.parent_span_id), caller_span, "the caller's span is the parent");
    assert_eq!(verify.kind, SpanKind::Server as i32);
    assert_eq!(attr_str(&verify.attributes, "reason"), Some("REASON_VALID"));
    assert_eq!(attr_str(&verify.attributes, "issuer"), Some(issuer.issuer()));
    assert_eq!(attr_str(&verify.attributes, "kid"), Some("ins_otel"));
    assert_eq!(attr_str(&verify.attributes, "alg"), Some("RS256"));
    assert_eq!(attr_str(&verify.attributes, "rpc.system"), Some("grpc"));
    assert_eq!(attr(&verify.attributes, "cached"), Some(&any_value::Value::BoolValue(false)));
    let get_claims =
        spans.iter().find(|s| s.name == "introspect.v1.TokenIntrospection/GetClaims").expect("a GetClaims span");
    assert_eq!(hex(&get_claims.trace_id), trace_id);
    assert_eq!(hex(&get_claims.parent_span_id), caller_span);
    let rejected = spans
        .iter()
        .find(|s| attr_str(&s.attributes, "reason") == Some("REASON_MALFORMED"))
        .expect("the malformed call's span");
    assert_ne!(hex(&rejected.trace_id), trace_id, "no traceparent: a new trace");
    assert!(rejected.parent_span_id.is_empty(), "a root span");
    // Each RPC's log lines name its trace and its server span.
    let logged = |message: &str| -> serde_json::Value {
        let line = lines.iter().find(|l| l.contains(message)).unwrap_or_else(|| panic!("no {message:?} line"));
        serde_json::from_str(line).unwrap()
    };
    let valid_line = logged("token valid");
    assert_eq!(valid_line["trace_id"], trace_id, "{valid_line}");
    assert_eq!(valid_line["span_id"], hex(&verify.span_id).as_str(), "{valid_line}");
    let rejected_line = logged("token rejected");
    assert_eq!(rejected_line["trace_id"], hex(&rejected.trace_id).as_str(), "{rejected_line}");
    assert_eq!(rejected_line["span_id"], hex(&rejected.span_id).as_str(), "{rejected_line}");
    assert!(logged("serving gRPC").get("trace_id").is_none(), "a line outside any RPC has no trace");
    for s in &spans {
        for kv in &s.attributes {
            let text = any_value_text(&kv.value);
            assert!(!text.contains(&signature), "span {} attribute {} carries the token", s.name, kv.key);
        }
    }

    // The last metrics export (at shutdown) has the final counts.
    let exported = collector.metrics.lock().unwrap().clone();
    let last = exported.last().expect("metrics exported");
    let metrics: Vec<_> = last.scope_metrics.iter().flat_map(|s| &s.metrics).collect();
    let verifications = metrics
        .iter()
        .find(|m| m.name == "clerk_introspect.verifications")
        .unwrap_or_else(|| panic!("no verifications metric: {metrics:#?}"));
    let Some(metric::Data::Sum(sum)) = &verifications.data else { panic!("{verifications:?}") };
    let valid = sum
        .data_points
        .iter()
        .find(|p| {
            attr_str(&p.attributes, "rpc") == Some("Verify")
                && attr_str(&p.attributes, "reason") == Some("REASON_VALID")
        })
        .expect("Verify/REASON_VALID");
    assert_eq!(valid.value, Some(number_data_point::Value::AsInt(1)));
    let duration = metrics.iter().find(|m| m.name == "clerk_introspect.verification.duration").expect("duration");
    assert_eq!(duration.unit, "s");
    let Some(metric::Data::Histogram(h)) = &duration.data else { panic!("{duration:?}") };
    let verify_count: u64 =
        h.data_points.iter().filter(|p| attr_str(&p.attributes, "rpc") == Some("Verify")).map(|p| p.count).sum();
    assert_eq!(verify_count, 2);
}

// === in-process: the metrics endpoint ===

/// The server and its HTTP endpoint, both on 127.0.0.1:0.
struct Observed {
    channel: Channel,
    http: SocketAddr,
    clock: Arc<ManualClock>,
    app: App,
    stop: CancellationToken,
    task: JoinHandle<Result<(), ServeError>>,
}

impl Observed {
    async fn start(issuers: Vec<IssuerConfig>) -> Observed {
        let config = Config::new(issuers);
        let clock = Arc::new(ManualClock::starting_now());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = metrics_listener.local_addr().unwrap();
        let deps = clerk_introspect::app::Deps { clock: clock.clone(), ..Default::default() };
        let app = App::start(&config, deps).unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(clerk_introspect::serve(
            listener,
            app.clone(),
            ServeOptions { admin_listener: Some(metrics_listener), reload: None, ..ServeOptions::default() },
            stop.clone().cancelled_owned(),
        ));
        let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect_lazy();
        Observed { channel, http, clock, app, stop, task }
    }

    fn client(&self) -> TokenIntrospectionClient<Channel> {
        TokenIntrospectionClient::new(self.channel.clone())
    }

    async fn reason(&self, token: &str) -> Reason {
        let answer =
            self.client().verify(VerifyRequest { token: token.to_owned(), expect: None }).await.unwrap().into_inner();
        Reason::try_from(answer.reason).unwrap()
    }

    async fn get(&self, path: &str) -> (u16, String, String) {
        http_get(&self.http.to_string(), path, None).await
    }

    async fn scrape(&self) -> Scrape {
        let (status, content_type, body) = self.get("/metrics").await;
        assert_eq!(status, 200);
        assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
        parse(&body)
    }

    /// Polls `/readyz` until it answers `want`.
    async fn wait_readyz(&self, want: u16) -> String {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            let (status, _, body) = self.get("/readyz").await;
            if status == want {
                return body;
            }
            assert!(tokio::time::Instant::now() < deadline, "/readyz stayed {status}: {body}");
            tokio::time::sleep(POLL).await;
        }
    }
}

/// GET over a fresh connection: (status, content type, body).
async fn http_get(addr: &str, path: &str, accept: Option<&str>) -> (u16, String, String) {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut request = client.get(format!("http://{addr}{path}"));
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    let response = request.send().await.unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = response.status().as_u16();
    let content_type =
        response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    (status, content_type, response.text().await.unwrap())
}

fn parse(body: &str) -> Scrape {
    Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).expect("the Prometheus text format parses")
}

fn matching<'a>(scrape: &'a Scrape, name: &str, labels: &[(&str, &str)]) -> Vec<&'a Sample> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .collect()
}

/// The value of the one counter, gauge or untyped sample `name{labels}`.
fn sample(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let found = matching(scrape, name, labels);
    assert!(found.len() <= 1, "{name}{labels:?} is ambiguous: {found:?}");
    found.first().map(|s| match &s.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        other => panic!("{name}: {other:?}"),
    })
}

#[tokio::test]
async fn metrics_count_verifications_by_reason() {
    let key = TestKey::rsa("ins_metrics");
    let stranger = TestKey::rsa("ins_stranger");
    let issuer = TestIssuer::start(vec![key.clone()]).await.unwrap();
    issuer.set_up(false);
    let mut config = issuer_config(&issuer);
    config.refresh.unknown_kid_cooldown = Duration::from_secs(3600);
    let server = Observed::start(vec![config]).await;
    let name = issuer.issuer();

    // Down first: the startup fetch fails (and is counted), then succeeds.
    let down = parse(&server.get("/metrics").await.2);
    assert_eq!(sample(&down, "clerk_introspect_keys_loaded", &[("issuer", name)]), Some(0.0));
    issuer.set_up(true);
    server.wait_readyz(200).await;

    let now = server.clock.now();
    let claims = issuer.session_claims(now);
    let good = key.mint(&claims);
    let mut expired = claims.clone();
    expired["exp"] = json!(claims["iat"].as_i64().unwrap() - 120);
    let expired = key.mint(&expired);
    let forged = stranger.mint_with_header(&json!({"alg": "RS256", "kid": "ins_metrics"}), &claims);
    let unknown_1 = stranger.mint_with_header(&json!({"alg": "RS256", "kid": "ins_unknown_1"}), &claims);
    let unknown_2 = stranger.mint_with_header(&json!({"alg": "RS256", "kid": "ins_unknown_2"}), &claims);
    let calls: &[(&str, Reason)] = &[
        (&good, Reason::Valid),
        (&good, Reason::Valid),
        (&expired, Reason::Expired),
        ("", Reason::Malformed),
        ("a.b", Reason::Malformed),
        (&forged, Reason::BadSignature),
        (&unknown_1, Reason::UnknownKey),
        (&unknown_2, Reason::UnknownKey),
    ];
    for (token, want) in calls {
        assert_eq!(server.reason(token).await, *want);
    }
    let status = server.client().get_claims(GetClaimsRequest { token: "x".into(), expect: None }).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    // Envoy ext_authz Check is counted under its own rpc label.
    let mut authz = envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::new(
        server.channel.clone(),
    );
    for headers in [vec![("authorization".to_owned(), format!("Bearer {good}"))], vec![]] {
        let mut request = envoy_types::ext_authz::v3::pb::CheckRequest::default();
        let attributes = request.attributes.get_or_insert_with(Default::default);
        let http = attributes.request.get_or_insert_with(Default::default).http.get_or_insert_with(Default::default);
        http.method = "GET".into();
        http.path = "/".into();
        http.headers = headers.into_iter().collect();
        authz.check(request).await.unwrap();
    }
    server.clock.advance(Duration::from_secs(90));

    let scrape = server.scrape().await;
    let verify = |reason: &str| {
        sample(&scrape, "clerk_introspect_verifications_total", &[("rpc", "Verify"), ("reason", reason)])
    };
    assert_eq!(verify("REASON_VALID"), Some(2.0));
    assert_eq!(verify("REASON_EXPIRED"), Some(1.0));
    assert_eq!(verify("REASON_MALFORMED"), Some(2.0));
    assert_eq!(verify("REASON_BAD_SIGNATURE"), Some(1.0));
    assert_eq!(verify("REASON_UNKNOWN_KEY"), Some(2.0));
    assert_eq!(verify("REASON_MISSING_ROLE"), None, "no such call");
    assert_eq!(
        sample(
            &scrape,
            "clerk_introspect_verifications_total",
            &[("rpc", "GetClaims"), ("reason", "REASON_MALFORMED")]
        ),
        Some(1.0)
    );
    for reason in ["REASON_VALID", "REASON_MALFORMED"] {
        let check = sample(&scrape, "clerk_introspect_verifications_total", &[("rpc", "Check"), ("reason", reason)]);
        assert_eq!(check, Some(1.0), "Check {reason}");
    }
    // Latency: one observation per call, in seconds.
    let histogram = matching(&scrape, "clerk_introspect_verification_duration_seconds", &[("rpc", "Verify")]);
    let [h] = histogram.as_slice() else { panic!("{histogram:?}") };
    let Value::Histogram(buckets) = &h.value else { panic!("{h:?}") };
    assert_eq!(buckets.last().map(|b| (b.less_than, b.count)), Some((f64::INFINITY, 8.0)));
    assert!(buckets.iter().any(|b| b.less_than == 0.001), "sub-millisecond buckets: {buckets:?}");
    assert_eq!(
        sample(&scrape, "clerk_introspect_verification_duration_seconds_count", &[("rpc", "Verify")]),
        Some(8.0)
    );
    assert_eq!(sample(&scrape, "clerk_introspect_requests_in_flight", &[("rpc", "Verify")]), Some(0.0));
    // Key fetches: the failed and the good startup load, one unknown-kid refetch, then the cooldown.
    let fetches = |trigger: &str, result: &str| {
        sample(
            &scrape,
            "clerk_introspect_jwks_fetches_total",
            &[("issuer", name), ("trigger", trigger), ("result", result)],
        )
    };
    assert!(fetches("startup", "http_status").is_some_and(|n| n >= 1.0), "{:?}", fetches("startup", "http_status"));
    assert_eq!(fetches("startup", "success"), Some(1.0));
    assert_eq!(fetches("unknown_kid", "success"), Some(1.0));
    assert_eq!(
        sample(&scrape, "clerk_introspect_unknown_kid_refetches_suppressed_total", &[("issuer", name)]),
        Some(1.0)
    );
    assert_eq!(sample(&scrape, "clerk_introspect_keys_loaded", &[("issuer", name)]), Some(1.0));
    assert_eq!(sample(&scrape, "clerk_introspect_keys_age_seconds", &[("issuer", name)]), Some(90.0));
    assert_eq!(sample(&scrape, "clerk_introspect_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), Some(1.0));
    // Bounded labels: nothing from the tokens.
    for s in &scrape.samples {
        for (k, v) in s.labels.iter() {
            assert!(!v.contains("ins_unknown") && !v.contains("ins_metrics"), "{} has {k}={v}", s.metric);
        }
    }

    // Every metric the docs and the alert rules use is exported. A family
    // that has no sample until something happens (refusals, connections
    // closed by the server) is not in this scrape: it must be registered
    // under that name.
    let names: std::collections::HashSet<&str> = scrape.samples.iter().map(|s| s.metric.as_str()).collect();
    let registered = |metric: &str| {
        let stem = metric.trim_start_matches("clerk_introspect_").trim_end_matches("_total");
        include_str!("../../src/telemetry/metrics.rs").contains(&format!("\"{stem}\","))
    };
    for (doc, text) in [
        ("deploy/prometheus/alerts.yaml", include_str!("../../deploy/prometheus/alerts.yaml")),
        ("README.md", include_str!("../../README.md")),
        ("docs/observability.md", include_str!("../../docs/observability.md")),
        ("docs/operations.md", include_str!("../../docs/operations.md")),
    ] {
        let mut rest = text;
        while let Some(at) = rest.find("clerk_introspect_") {
            let tail = &rest[at..];
            let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
            let metric = &tail[..end];
            let known = names.contains(metric)
                || names.contains(format!("{metric}_bucket").as_str())
                || names.contains(metric.trim_end_matches("_bucket"))
                || registered(metric);
            assert!(known, "{doc} names {metric}, which /metrics does not export: {names:?}");
            rest = &tail[end..];
        }
    }

    // Prometheus asks for OpenMetrics, and gets it.
    let (status, content_type, body) = http_get(
        &server.http.to_string(),
        "/metrics",
        Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(content_type, "application/openmetrics-text; version=1.0.0; charset=utf-8");
    assert!(body.ends_with("# EOF\n"), "{body}");
    let om = parse(&body);
    assert_eq!(
        sample(&om, "clerk_introspect_verifications_total", &[("rpc", "Verify"), ("reason", "REASON_VALID")]),
        Some(2.0)
    );
}

#[tokio::test]
async fn readyz_follows_readiness_and_healthz_the_process() {
    let key = TestKey::rsa("ins_ready");
    let issuer = TestIssuer::start(vec![key.clone()]).await.unwrap();
    issuer.set_up(false);
    let server = Observed::start(vec![issuer_config(&issuer)]).await;

    let (status, _, body) = server.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains(&format!("issuer {}: loading", issuer.issuer())), "{body}");
    assert_eq!(server.get("/healthz").await.0, 200, "alive while not ready");

    issuer.set_up(true);
    let body = server.wait_readyz(200).await;
    assert!(body.starts_with("ready\n"), "{body}");
    assert!(server.app.readiness.is_ready());

    // Keys older than the allowed staleness: not ready, at once.
    server.clock.advance(Duration::from_secs(25 * 3600));
    let (status, _, body) = server.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("stale"), "{body}");
    assert_eq!(server.get("/healthz").await.0, 200);
    assert_eq!(server.get("/nothing-here").await.0, 404);
}

#[tokio::test]
async fn the_endpoint_answers_not_ready_through_the_drain_then_stops() {
    let key = TestKey::rsa("ins_drain");
    let issuer = TestIssuer::start(vec![key.clone()]).await.unwrap();
    let server = Observed::start(vec![issuer_config(&issuer)]).await;
    server.wait_readyz(200).await;
    // An unknown kid holds a call in a slow refetch, so the drain lasts.
    issuer.set_jwks_delay(Duration::from_secs(3));
    let token = TestKey::rsa("x")
        .mint_with_header(&json!({"alg": "RS256", "kid": "ins_rotated"}), &issuer.session_claims(server.clock.now()));
    let mut client = server.client();
    let before = issuer.jwks_requests();
    let in_flight = tokio::spawn(async move { client.verify(VerifyRequest { token, expect: None }).await });
    while issuer.jwks_requests() == before {
        tokio::time::sleep(POLL).await;
    }
    server.stop.cancel();
    let body = server.wait_readyz(503).await;
    assert!(body.contains("draining"), "{body}");
    let scrape = server.scrape().await;
    assert_eq!(sample(&scrape, "clerk_introspect_requests_in_flight", &[("rpc", "Verify")]), Some(1.0));
    let answer = in_flight.await.unwrap().expect("the in-flight call finishes").into_inner();
    assert_eq!(Reason::try_from(answer.reason).unwrap(), Reason::UnknownKey);
    server.task.await.unwrap().unwrap();
    assert!(std::net::TcpStream::connect(server.http).is_err(), "the HTTP endpoint stopped with the server");
}

#[test]
fn a_taken_metrics_port_is_a_startup_error_naming_the_flag() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().to_string();
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--metrics-listen", &port, "--issuer", "https://clerk.example.com"])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{stderr}");
    assert!(stderr.contains("--metrics-listen"), "{stderr}");
    // A bad OTLP endpoint is a configuration error naming the variable.
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--metrics-listen", "off", "--issuer", "https://clerk.example.com"])
        .env("RUST_LOG", "warn")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("OTEL_EXPORTER_OTLP_ENDPOINT"), "{stderr}");
}
