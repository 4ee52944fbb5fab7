//! Serving an [`App`]: the gRPC listener (plaintext or TLS) with its
//! connection table and call limits, the admin HTTP endpoint, the reload
//! loop, and the drain on shutdown within the grace period. [`serve`] is
//! the one entry point; [`run`] starts an [`App`] from a [`Config`] and
//! serves it (what tests call).
//!
//! - [`listener`]: the accept loops (plaintext, TLS), the connection table
//!   and the handshake deadline;
//! - [`connection`]: each connection's HTTP/2 serving and the reasons the
//!   server closes one;
//! - [`limits`]: what calls can make the server hold;
//! - [`admin`]: `/metrics`, `/healthz`, `/readyz`;
//! - [`webhook`]: `POST /webhooks/clerk` on `--webhook-listen`;
//! - [`reload`]: SIGHUP and file changes, applied by [`App::reload`].

pub mod admin;
pub mod connection;
pub mod limits;
pub mod listener;
pub mod reload;
pub mod webhook;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic_health::ServingStatus;
use tracing::{info, warn};

use crate::app::{App, Deps, StartError};
use crate::config::{Config, Loader};
use crate::pb;
use crate::service::ext_authz;
use crate::service::{AuthzService, IntrospectService};
use admin::AdminServer;
use limits::CallLimits;
use listener::ConnectionTable;
use webhook::{WebhookListener, WebhookServer};

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The app could not start.
    #[error(transparent)]
    Start(#[from] StartError),
    /// Reflection could not be built from the descriptor sets.
    #[error("cannot build the reflection service")]
    Reflection(#[source] tonic_reflection::server::Error),
    /// The listener failed.
    #[error("cannot read the listener's address")]
    Listener(#[source] std::io::Error),
}

/// What [`serve`] does besides gRPC.
#[derive(Debug, Default)]
pub struct ServeOptions {
    /// Listener (already bound) for `/metrics`, `/healthz`, `/readyz`;
    /// `None`: not served.
    pub admin_listener: Option<TcpListener>,
    /// Reload while serving (SIGHUP, file changes); `None`: no reloads.
    pub reload: Option<Reloading>,
    /// Listener (already bound to `--webhook-listen`) for Clerk's webhooks,
    /// and the [`crate::revocation::Record`] their events go to; `None`:
    /// not served.
    pub webhook: Option<WebhookListener>,
}

/// How the server reloads while serving.
#[derive(Debug)]
pub struct Reloading {
    /// The configuration's layers and file (`None`: no config file; only
    /// TLS files are re-read).
    pub loader: Option<Arc<Loader>>,
    /// How often the files are checked for changes (zero: on SIGHUP only).
    pub watch_interval: Duration,
}

/// Names of the services whose health follows readiness.
fn health_services() -> Vec<&'static str> {
    vec![
        <pb::token_introspection_server::TokenIntrospectionServer<IntrospectService> as NamedService>::NAME,
        <envoy_types::ext_authz::v3::pb::AuthorizationServer<AuthzService> as NamedService>::NAME,
    ]
}

/// Starts an [`App`] from `config` (system clock, no OpenTelemetry) and
/// serves it on `listener` until `shutdown` resolves, then drains.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let app = App::start(&config, Deps::default())?;
    serve(listener, app, ServeOptions::default(), shutdown).await
}

/// Serves `app` on `listener` (and what `options` names) until `shutdown`
/// resolves, then drains in-flight calls for at most the app's shutdown
/// grace. The admin endpoint stays up through the drain (so `/readyz`
/// answers 503 and the last scrape sees the drain) and stops after the
/// gRPC server; so does the webhook endpoint (a delivery it cannot take
/// any more is retried by Svix, on another replica).
pub async fn serve(
    listener: TcpListener,
    app: App,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let admin = match options.admin_listener {
        Some(l) => Some(AdminServer::spawn(l, admin::AdminState::of(&app)).map_err(ServeError::Listener)?),
        None => None,
    };
    let webhook = match options.webhook {
        Some(w) => Some(
            WebhookServer::spawn(
                w.listener,
                app.webhook.clone(),
                w.record,
                webhook::Limits {
                    metrics: app.telemetry.metrics().webhook_connections(),
                    ..webhook::Limits::default()
                },
            )
            .map_err(ServeError::Listener)?,
        ),
        None => None,
    };
    let stop_reload = CancellationToken::new();
    let reloader = options
        .reload
        .map(|r| tokio::spawn(reload::watch(app.clone(), r.loader, r.watch_interval, stop_reload.clone())));
    let result = serve_grpc(listener, app, shutdown).await;
    stop_reload.cancel();
    if let Some(task) = reloader {
        let _ = task.await;
    }
    if let Some(webhook) = webhook {
        webhook.stop().await;
    }
    if let Some(admin) = admin {
        admin.stop().await;
    }
    result
}

/// The gRPC part of [`serve`].
async fn serve_grpc(
    listener: TcpListener,
    app: App,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let grace = app.shutdown_grace;
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
        .add_service(app.introspect.clone().into_server())
        .add_service(app.authz.clone().into_server());
    let metrics = app.telemetry.metrics();
    let max_connections = listener::fit_to_file_limit(app.connections.max_connections);
    let table = ConnectionTable::new("grpc", max_connections, metrics.grpc_connections(max_connections));
    let limits = CallLimits::new(limits::Settings::from(&app.connections), metrics.call_limits());
    metrics.watch_limits(Arc::new(limits.clone()));
    let http2 = connection::Http2Settings::from(&app.connections);
    let drain = CancellationToken::new();
    let mut server = match app.tls.clone() {
        None => {
            let incoming = listener::plaintext(listener, table.clone(), app.connections.handshake_timeout);
            tokio::spawn(connection::serve(incoming, routes, http2, limits, table, drain.clone()))
        }
        Some(tls) => {
            info!(mtls = tls.requires_client_certificates(), "TLS on the gRPC listener");
            let incoming = listener::tls(listener, tls, table.clone(), app.connections.handshake_timeout);
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
