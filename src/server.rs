//! Assembly and lifecycle: build the key caches, the verifier and the gRPC
//! services from a [`Config`], serve them on a bound listener, and drain on
//! shutdown within the grace period.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tracing::{info, warn};

use crate::config::{Config, ConnectionSettings};
use crate::health::Readiness;
use crate::keys::fetch::Fetcher;
use crate::keys::{IssuerKeys, KeyContext};
use crate::listener::ConnectionSlots;
use crate::pb;
use crate::service::ext_authz::{self, AuthzConfig};
use crate::service::{AuthzService, IntrospectService};
use crate::telemetry::http::{HttpServer, HttpState};
use crate::telemetry::{Metrics, Telemetry};
use crate::verify::{Trust, TrustedIssuer, Verifier};

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The HTTP client for key fetches could not be built.
    #[error("cannot build the HTTP client for key fetches")]
    HttpClient(#[source] reqwest::Error),
    /// Reflection could not be built from the descriptor sets.
    #[error("cannot build the reflection service")]
    Reflection(#[source] tonic_reflection::server::Error),
    /// The listener failed.
    #[error("cannot read the listener's address")]
    Listener(#[source] std::io::Error),
    /// The gRPC server failed.
    #[error("the gRPC server failed")]
    Transport(#[source] tonic::transport::Error),
    /// TLS could not be configured.
    #[error("cannot configure TLS")]
    Tls(#[source] crate::tls::TlsError),
}

/// Most concurrent calls (HTTP/2 streams) per client connection.
pub const MAX_CONCURRENT_STREAMS: u32 = 256;
/// A connection that has sent nothing for this long gets an HTTP/2 PING...
pub const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);
/// ...and is closed when the PING is not answered within this: a client
/// that vanished (a node lost, a half-open TCP connection) does not keep
/// its connection here for ever.
pub const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Most streams a connection may make the server reset for its own
/// protocol errors (a flow-control window overflowed, frames on a closed
/// stream) before it gets GOAWAY `ENHANCE_YOUR_CALM`: h2's and hyper's own
/// default, which tonic's server switches off (it passes `None`, "no
/// limit") unless it is set. Without it a client can make the server take
/// requests and reset their streams for as long as it likes on one
/// connection (the "MadeYouReset" attack, CVE-2025-8671; measured: 3,000
/// such resets on one connection, no GOAWAY).
pub const MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// The running parts of the service, shared by every RPC.
#[derive(Debug, Clone)]
pub struct App {
    /// The verifier (and, through it, the key caches).
    pub verifier: Arc<Verifier>,
    /// Readiness, for health.
    pub readiness: Arc<Readiness>,
    /// TLS for the listener (`None`: plaintext).
    pub tls: Option<Arc<crate::tls::TlsState>>,
    /// What [`App::reload`] needs.
    pub(crate) reload: Arc<crate::reload::ReloadContext>,
    /// The Envoy ext_authz server's settings.
    pub authz: Arc<AuthzConfig>,
    /// Client connection housekeeping (fixed at start; a reload keeps it).
    pub connections: ConnectionSettings,
    /// The cap on open client connections, with its count.
    pub connection_slots: ConnectionSlots,
    /// Spans and metrics of this app (its own Prometheus registry).
    pub telemetry: Telemetry,
}

impl App {
    /// Builds the key caches (spawning their refreshers) and the verifier.
    /// Must run inside a Tokio runtime.
    pub fn start(config: &Config) -> Result<App, ServeError> {
        let tls = config.tls.clone().map(crate::tls::TlsState::load).transpose().map_err(ServeError::Tls)?;
        let changed = Arc::new(Notify::new());
        let metrics = Arc::new(Metrics::new(config.clock.clone(), config.telemetry.meter.as_ref()));
        let ctx = KeyContext {
            fetcher: Fetcher::new().map_err(ServeError::HttpClient)?,
            clock: config.clock.clone(),
            observer: metrics.clone(),
            changed: changed.clone(),
        };
        let trust = Trust::new(config.issuers.iter().map(|i| TrustedIssuer {
            policy: Arc::new(i.policy.clone()),
            keys: IssuerKeys::start(Arc::from(i.issuer.as_str()), i.source.clone(), i.refresh, ctx.clone()),
        }));
        let verifier = Arc::new(Verifier::with_token_cache(trust, config.clock.clone(), config.token_cache_size));
        metrics.watch_keys(&verifier);
        let readiness = Arc::new(Readiness::new(verifier.clone(), changed));
        let reload = Arc::new(crate::reload::ReloadContext::new(ctx, config));
        Ok(App {
            verifier,
            readiness,
            tls,
            reload,
            authz: Arc::new(config.authz.clone()),
            connections: config.connections,
            connection_slots: ConnectionSlots::new(
                config.connections.max_connections,
                metrics.connection_gauge(config.connections.max_connections),
            ),
            telemetry: Telemetry::new(metrics),
        })
    }

    /// What the HTTP metrics and probe endpoint reads.
    pub fn http_state(&self) -> HttpState {
        HttpState {
            metrics: self.telemetry.metrics().clone(),
            readiness: self.readiness.clone(),
            verifier: self.verifier.clone(),
        }
    }
}

/// What [`run_with`] serves besides gRPC.
#[derive(Debug, Default)]
pub struct ServeOptions {
    /// Listener (already bound) for `/metrics`, `/healthz`, `/readyz`;
    /// `None`: not served.
    pub metrics_listener: Option<TcpListener>,
}

/// Names of the services whose health follows readiness.
fn health_services() -> Vec<&'static str> {
    vec![
        <pb::token_introspection_server::TokenIntrospectionServer<IntrospectService> as NamedService>::NAME,
        <envoy_types::ext_authz::v3::pb::AuthorizationServer<AuthzService> as NamedService>::NAME,
    ]
}

/// Serves the configured service on `listener` until `shutdown` resolves,
/// then drains in-flight calls for at most `config.shutdown_grace`.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    run_with(listener, config, ServeOptions::default(), shutdown).await
}

/// [`run`], also serving what `options` names (the metrics endpoint).
pub async fn run_with(
    listener: TcpListener,
    config: Config,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let app = App::start(&config)?;
    serve_with(listener, app, config.shutdown_grace, options, shutdown).await
}

/// [`serve`], also serving what `options` names. The metrics endpoint
/// stays up through the drain (so `/readyz` answers 503 and the last
/// scrape sees the drain) and stops after the gRPC server.
pub async fn serve_with(
    listener: TcpListener,
    app: App,
    grace: std::time::Duration,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let http = match options.metrics_listener {
        Some(l) => Some(HttpServer::spawn(l, app.http_state()).map_err(ServeError::Listener)?),
        None => None,
    };
    let result = serve(listener, app, grace, shutdown).await;
    if let Some(http) = http {
        http.stop().await;
    }
    result
}

/// Serves an already-built [`App`] (see [`run`]).
pub async fn serve(
    listener: TcpListener,
    app: App,
    grace: std::time::Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let addr = listener.local_addr().map_err(ServeError::Listener)?;
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let services = health_services();
    for service in std::iter::once("").chain(services.iter().copied()) {
        reporter.set_service_status(service, ServingStatus::NotServing).await;
    }
    reporter.set_service_status(crate::health::LIVENESS_SERVICE, ServingStatus::Serving).await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(ext_authz::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1().map_err(ServeError::Reflection)?;
    let reflection_v1alpha = reflection().build_v1alpha().map_err(ServeError::Reflection)?;

    let stop_health = CancellationToken::new();
    let health_task =
        tokio::spawn(app.readiness.clone().publish(reporter.clone(), services.clone(), stop_health.clone()));

    // HTTP/2 settings, measured with benches/loadgen.rs (README, Performance):
    // at most 256 concurrent streams per connection (tonic's default is
    // unbounded; with 512 calls in flight on one connection the bound cut
    // p99 from ~75 ms to ~15 ms at the same throughput, the queue moving to
    // the client); hyper's 1 MiB flow-control windows are kept (64 KiB or
    // adaptive windows measured no different: messages are under 1 KiB).
    let mut builder = Server::builder()
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .http2_keepalive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT))
        .http2_max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
        // With the client's grpc-timeout, whichever is shorter; answered
        // CANCELLED "Timeout expired". A call that completes on its first
        // poll pays for a timer made and dropped, never armed: 46 ns
        // (measured on the current-thread runtime), under 0.5 % of a call.
        .timeout(app.connections.call_timeout);
    if let Some(age) = app.connections.max_age {
        builder = builder.max_connection_age(age).max_connection_age_grace(app.connections.max_age_grace);
    }
    let router = builder
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(IntrospectService::new(app.verifier.clone()).with_telemetry(app.telemetry.clone()).into_server())
        .add_service(
            AuthzService::new(app.verifier.clone(), app.authz.clone())
                .with_telemetry(app.telemetry.clone())
                .into_server(),
        );

    let drain = CancellationToken::new();
    let drain_signal = drain.clone().cancelled_owned();
    let mut server = match app.tls.clone() {
        None => {
            let incoming =
                crate::listener::plaintext(listener, app.connection_slots.clone(), app.connections.handshake_timeout);
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, drain_signal))
        }
        Some(tls) => {
            info!(mtls = tls.requires_client_certificates(), "TLS on the gRPC listener");
            tokio::spawn(router.serve_with_incoming_shutdown(
                crate::tls::incoming(listener, tls, app.connection_slots.clone(), app.connections.handshake_timeout),
                drain_signal,
            ))
        }
    };
    info!(%addr, "serving gRPC");

    let result = tokio::select! {
        r = &mut server => Some(r),
        () = shutdown => None,
    };
    let result = match result {
        Some(r) => r,
        None => {
            // Not ready from the moment the drain starts.
            app.readiness.start_draining();
            stop_health.cancel();
            let _ = health_task.await;
            for service in std::iter::once("").chain(services.iter().copied()) {
                reporter.set_service_status(service, ServingStatus::NotServing).await;
            }
            info!(grace = ?grace, "draining: no new connections, finishing in-flight calls");
            drain.cancel();
            match tokio::time::timeout(grace, &mut server).await {
                Ok(r) => {
                    info!("drained; all in-flight calls finished");
                    r
                }
                Err(_) => {
                    warn!(grace = ?grace, "grace period over; closing the remaining connections");
                    server.abort();
                    return Ok(());
                }
            }
        }
    };
    stop_health.cancel();
    match result {
        Ok(r) => r.map_err(ServeError::Transport),
        Err(join) => {
            warn!(error = %join, "the server task ended abnormally");
            Ok(())
        }
    }
}
