//! Assembly and lifecycle: build the key caches, the verifier and the gRPC
//! services from a [`Config`], serve them on a bound listener, and drain on
//! shutdown within the grace period.
//!
//! [`connection`] serves each client connection (HTTP/2 settings, GOAWAY
//! on drain, age, idleness or to make room); [`limits`] bounds what calls
//! can make the server hold.

pub mod connection;
pub mod limits;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic_health::ServingStatus;
use tracing::{info, warn};

use crate::config::{Config, ConnectionSettings};
use crate::health::Readiness;
use crate::keys::fetch::Fetcher;
use crate::keys::{IssuerKeys, KeyContext};
use crate::listener::ConnectionTable;
use crate::pb;
use crate::service::ext_authz::{self, AuthzConfig};
use crate::service::{AuthzService, IntrospectService};
use crate::telemetry::http::{HttpServer, HttpState};
use crate::telemetry::{Metrics, Telemetry};
use crate::verify::{Trust, TrustedIssuer, Verifier};
use limits::CallLimits;

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
    /// TLS could not be configured.
    #[error("cannot configure TLS")]
    Tls(#[source] crate::tls::TlsError),
}

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
    /// The open client connections, at most `--max-connections`.
    pub connection_table: ConnectionTable,
    /// The budgets every call draws on (calls in flight, request bytes).
    pub limits: CallLimits,
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
        let limits = CallLimits::new(config.connections.call_limits(), metrics.call_limits());
        metrics.watch_limits(&limits);
        Ok(App {
            verifier,
            readiness,
            tls,
            reload,
            authz: Arc::new(config.authz.clone()),
            connections: config.connections,
            connection_table: ConnectionTable::new(
                "grpc",
                config.connections.max_connections,
                metrics.grpc_connections(config.connections.max_connections),
            ),
            limits,
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

    let routes = tonic::service::Routes::new(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(IntrospectService::new(app.verifier.clone()).with_telemetry(app.telemetry.clone()).into_server())
        .add_service(
            AuthzService::new(app.verifier.clone(), app.authz.clone())
                .with_telemetry(app.telemetry.clone())
                .into_server(),
        );
    let http2 = app.connections.http2();
    let drain = CancellationToken::new();
    let (table, limits) = (app.connection_table.clone(), app.limits.clone());
    let mut server = match app.tls.clone() {
        None => {
            let incoming = crate::listener::plaintext(listener, table.clone(), app.connections.handshake_timeout);
            tokio::spawn(connection::serve(incoming, routes, http2, limits, table, drain.clone()))
        }
        Some(tls) => {
            info!(mtls = tls.requires_client_certificates(), "TLS on the gRPC listener");
            let incoming = crate::tls::incoming(listener, tls, table.clone(), app.connections.handshake_timeout);
            tokio::spawn(connection::serve(incoming, routes, http2, limits, table, drain.clone()))
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
        Ok(()) => Ok(()),
        Err(join) => {
            warn!(error = %join, "the server task ended abnormally");
            Ok(())
        }
    }
}
