//! What telemetry costs on the hot path: `Verify` of a valid token through
//! the real service, under three set-ups:
//!
//! - `off`: no `tracing` subscriber (spans are disabled at their call
//!   site); the per-app Prometheus metrics are recorded, as always;
//! - `logs`: the production subscriber without an exporter (human-readable
//!   logs at `info`, written to a sink), Prometheus metrics;
//! - `otlp`: the same plus the OpenTelemetry layer and meter, exporting
//!   spans and metrics over OTLP/gRPC to a local collector that discards them.
//!
//! Each at two depths: `grpc` (a tonic client over loopback to the
//! in-process server) and `handler` (the service method called directly:
//! span, trace-context extraction, verification, metrics, no network).
//! `rpc_call` times the telemetry alone (begin, record, end of one call).
//!
//! Run: `cargo bench --bench telemetry_overhead`. After the criterion
//! groups, an interleaved run (set-ups alternated round by round, so that
//! load from other processes hits them alike) prints each set-up's time as
//! a ratio to `off`.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use clerk_introspect::config::Config;
use clerk_introspect::pb::token_introspection_client::TokenIntrospectionClient;
use clerk_introspect::pb::token_introspection_server::TokenIntrospection;
use clerk_introspect::pb::{Reason, VerifyRequest};
use clerk_introspect::service::IntrospectService;
use clerk_introspect::telemetry::otel::{OtelConfig, OtelPipeline};
use clerk_introspect::telemetry::{self, LogFormat, Rpc, Telemetry};
use clerk_introspect::test_issuer::{TestIssuer, TestKey};
use clerk_introspect::{App, ServeOptions};
use criterion::{BenchmarkId, Criterion};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tonic::transport::Channel;
use tonic::transport::server::TcpIncoming;
use tracing::Dispatch;

/// An OTLP collector that counts and discards.
#[derive(Clone, Default)]
struct Sink {
    spans: Arc<std::sync::atomic::AtomicUsize>,
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let n: usize =
            request.into_inner().resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
        self.spans.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

#[tonic::async_trait]
impl MetricsService for Sink {
    async fn export(
        &self,
        _request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        Ok(tonic::Response::new(ExportMetricsServiceResponse { partial_success: None }))
    }
}

/// One set-up: a server (with or without an OTLP meter), a client, a
/// service for direct calls, and the subscriber to run under.
struct Setup {
    name: &'static str,
    dispatch: Option<Dispatch>,
    client: TokenIntrospectionClient<Channel>,
    service: IntrospectService,
    telemetry: Telemetry,
}

struct World {
    /// Runs the servers, the clients and the benchmark loop: one thread, so
    /// the subscriber set for the loop is the one every span sees.
    rt: Runtime,
    /// Runs the collector and the OTLP exporters' connections.
    _bg: Runtime,
    token: String,
    setups: Vec<Setup>,
    sink: Sink,
    pipeline: Option<OtelPipeline>,
    _issuer: TestIssuer,
}

async fn start_server(issuer: &TestIssuer, meter: Option<opentelemetry::metrics::Meter>) -> (App, Channel) {
    let config = Config::new(vec![clerk_introspect::config::IssuerConfig::new(issuer.issuer())]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = App::start(&config, clerk_introspect::app::Deps { meter, ..Default::default() }).unwrap();
    tokio::spawn(clerk_introspect::serve(listener, app.clone(), ServeOptions::default(), std::future::pending::<()>()));
    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !app.readiness.is_ready() {
        assert!(Instant::now() < deadline, "the server never became ready");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (app, channel)
}

fn world() -> World {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let bg = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let sink = Sink::default();
    let endpoint = bg.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(sink.clone()))
            .add_service(MetricsServiceServer::new(sink.clone()));
        tokio::spawn(router.serve_with_incoming(TcpIncoming::from(listener)));
        format!("http://{addr}")
    });
    let otel_config = OtelConfig {
        traces_endpoint: Some(endpoint.clone()),
        metrics_endpoint: Some(endpoint),
        service_name: "telemetry-overhead-bench".into(),
        resource_attributes: Vec::new(),
    };
    let pipeline = bg.block_on(async { OtelPipeline::start(&otel_config) }).expect("OTLP exporters");

    let key = TestKey::rsa("ins_bench");
    let issuer = rt.block_on(TestIssuer::start(vec![key.clone()])).unwrap();
    let token = key.mint(&{
        let mut claims = issuer.session_claims(SystemTime::now());
        let iat = claims["iat"].as_i64().unwrap();
        claims["exp"] = serde_json::json!(iat + 3600);
        claims
    });
    let (plain, plain_channel) = rt.block_on(start_server(&issuer, None));
    let (metered, metered_channel) = rt.block_on(start_server(&issuer, pipeline.meter()));
    let logs = || Dispatch::new(telemetry::subscriber(LogFormat::Text, "info", None, std::io::sink, false));
    let otlp = Dispatch::new(telemetry::subscriber(LogFormat::Text, "info", pipeline.tracer(), std::io::sink, false));
    let service = |app: &App| IntrospectService::new(app.verifier.clone()).with_telemetry(app.telemetry.clone());
    let setups = vec![
        Setup {
            name: "off",
            dispatch: None,
            client: TokenIntrospectionClient::new(plain_channel.clone()),
            service: service(&plain),
            telemetry: plain.telemetry.clone(),
        },
        Setup {
            name: "logs",
            dispatch: Some(logs()),
            client: TokenIntrospectionClient::new(plain_channel),
            service: service(&plain),
            telemetry: plain.telemetry.clone(),
        },
        Setup {
            name: "otlp",
            dispatch: Some(otlp),
            client: TokenIntrospectionClient::new(metered_channel),
            service: service(&metered),
            telemetry: metered.telemetry.clone(),
        },
    ];
    World { rt, _bg: bg, token, setups, sink, pipeline: Some(pipeline), _issuer: issuer }
}

/// A traced caller: every request carries a sampled `traceparent`.
fn request(token: &str) -> tonic::Request<VerifyRequest> {
    let mut r = tonic::Request::new(VerifyRequest { token: token.to_owned(), expect: None });
    r.metadata_mut().insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap());
    r
}

fn under<R>(dispatch: &Option<Dispatch>, f: impl FnOnce() -> R) -> R {
    match dispatch {
        Some(d) => tracing::dispatcher::with_default(d, f),
        None => f(),
    }
}

fn grpc_once(w: &World, s: &Setup) {
    let mut client = s.client.clone();
    let answer = w.rt.block_on(client.verify(request(&w.token))).unwrap().into_inner();
    debug_assert_eq!(answer.reason, Reason::Valid as i32);
    std::hint::black_box(answer);
}

fn handler_once(w: &World, s: &Setup) {
    let answer = w.rt.block_on(s.service.verify(request(&w.token))).unwrap().into_inner();
    debug_assert_eq!(answer.reason, Reason::Valid as i32);
    std::hint::black_box(answer);
}

fn rpc_call_once(s: &Setup, metadata: &tonic::metadata::MetadataMap) {
    let mut call = s.telemetry.begin(Rpc::Verify, metadata);
    call.record_reason("REASON_VALID", tonic::Code::Ok);
    drop(std::hint::black_box(call));
}

fn criterion_groups(c: &mut Criterion, w: &World) {
    let metadata = request(&w.token).metadata().clone();
    for (group, run) in [("verify_grpc", grpc_once as fn(&World, &Setup)), ("verify_handler", handler_once)] {
        let mut g = c.benchmark_group(group);
        for s in &w.setups {
            g.bench_function(BenchmarkId::from_parameter(s.name), |b| under(&s.dispatch, || b.iter(|| run(w, s))));
        }
        g.finish();
    }
    let mut g = c.benchmark_group("rpc_call");
    for s in &w.setups {
        g.bench_function(BenchmarkId::from_parameter(s.name), |b| {
            under(&s.dispatch, || b.iter(|| rpc_call_once(s, &metadata)))
        });
    }
    g.finish();
}

/// Rounds of `per_round` calls per set-up, alternating set-ups each round;
/// returns the median per-call time of each set-up.
fn interleaved(w: &World, rounds: usize, per_round: usize, run: fn(&World, &Setup)) -> Vec<Duration> {
    let mut times: Vec<Vec<Duration>> = vec![Vec::with_capacity(rounds); w.setups.len()];
    for round in 0..rounds {
        // Rotate the order too, so no set-up always runs first.
        for k in 0..w.setups.len() {
            let i = (round + k) % w.setups.len();
            let s = &w.setups[i];
            let elapsed = under(&s.dispatch, || {
                let start = Instant::now();
                for _ in 0..per_round {
                    run(w, s);
                }
                start.elapsed()
            });
            times[i].push(elapsed / per_round as u32);
        }
    }
    times
        .into_iter()
        .map(|mut t| {
            t.sort();
            t[t.len() / 2]
        })
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--test" || a == "--list");
    let mut w = world();
    let mut c = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(4))
        .configure_from_args();
    criterion_groups(&mut c, &w);
    c.final_summary();
    if !quick {
        println!("\ninterleaved: median per-call time of 41 rounds, set-ups alternated; ratio to `off`");
        for (name, run, per_round) in
            [("verify_grpc", grpc_once as fn(&World, &Setup), 200), ("verify_handler", handler_once, 1000)]
        {
            // Warm up every set-up first.
            let _ = interleaved(&w, 3, per_round / 4, run);
            let medians = interleaved(&w, 41, per_round, run);
            let base = medians[0].as_secs_f64();
            let line: Vec<String> = w
                .setups
                .iter()
                .zip(&medians)
                .map(|(s, t)| format!("{} {:.2} µs ({:.3}×)", s.name, t.as_secs_f64() * 1e6, t.as_secs_f64() / base))
                .collect();
            println!("  {name:15} {}", line.join("  "));
        }
    }
    let pipeline = w.pipeline.take().unwrap();
    let errors = w._bg.block_on(async { tokio::task::spawn_blocking(move || pipeline.shutdown()).await.unwrap() });
    println!(
        "OTLP: {} spans received by the local collector{}",
        w.sink.spans.load(std::sync::atomic::Ordering::Relaxed),
        if errors.is_empty() { String::new() } else { format!("; shutdown: {errors:?}") }
    );
}
