//! The running service, built from a [`Config`]: the key caches, the
//! verifier, readiness, TLS, the gRPC services and their telemetry
//! ([`App::start`]), and configuration reload ([`App::reload`]).
//!
//! [`App::reload`] swaps the trust set in one step
//! ([`Verifier::set_trust`]): connections stay open, and a call in flight
//! finishes with the configuration it started with. An issuer whose
//! identifier, key source and refresh timing are unchanged keeps its key
//! cache (no refetch; only its policy is replaced if that changed); a new
//! issuer, or one whose key source or timing changed, gets a new cache; a
//! removed issuer's cache is dropped once no call uses it (its refresher
//! stops). What a reload cannot change (the listen address, turning TLS on
//! or off, the shutdown grace, connection and call limits) is reported as
//! needing a restart; everything else in the file applies.
//!
//! Serving the app is [`crate::server`]'s; the signal and file-watch loop
//! that calls [`App::reload`] is [`crate::server::reload`]'s.

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::clock::{Clock, SystemClock};
use crate::config::{Config, ConnectionSettings};
use crate::health::Readiness;
use crate::keys::fetch::Fetcher;
use crate::keys::{IssuerKeys, KeyContext, KeySource};
use crate::revocation::service::RevocationService;
use crate::revocation::store::Store;
use crate::revocation::store::memory::MemoryStore;
use crate::revocation::store::redis::{RedisStore, STREAM_KEY, UrlError};
use crate::service::{AuthzService, IntrospectService};
use crate::telemetry::{Metrics, Telemetry};
use crate::tls::{TlsError, TlsState};
use crate::verify::{Trust, TrustedIssuer, Verifier};
use crate::webhook::Endpoint;

/// What the app depends on besides its configuration (tests inject both).
#[derive(Clone)]
pub struct Deps {
    /// The wall clock.
    pub clock: Arc<dyn Clock>,
    /// An OpenTelemetry meter to mirror metrics to (OTLP), if exporting.
    pub meter: Option<opentelemetry::metrics::Meter>,
}

impl Default for Deps {
    fn default() -> Self {
        Self { clock: Arc::new(SystemClock), meter: None }
    }
}

impl fmt::Debug for Deps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deps").field("meter", &self.meter.is_some()).finish_non_exhaustive()
    }
}

/// Why the app could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The HTTP client for key fetches could not be built.
    #[error("cannot build the HTTP client for key fetches")]
    HttpClient(#[source] reqwest::Error),
    /// TLS could not be configured.
    #[error("cannot configure TLS")]
    Tls(#[source] TlsError),
    /// The revocation store cannot be used.
    #[error("cannot use the revocation store")]
    RevocationStore(#[source] UrlError),
}

/// The running parts of the service, shared by every RPC.
#[derive(Clone)]
pub struct App {
    /// The verifier (and, through it, the key caches).
    pub verifier: Arc<Verifier>,
    /// Readiness, for health.
    pub readiness: Arc<Readiness>,
    /// TLS for the listener (`None`: plaintext).
    pub tls: Option<Arc<TlsState>>,
    /// `introspect.v1.TokenIntrospection`.
    pub introspect: IntrospectService,
    /// Envoy's `envoy.service.auth.v3.Authorization`.
    pub authz: AuthzService,
    /// Client connection and call housekeeping (fixed at start).
    pub connections: ConnectionSettings,
    /// The gRPC listen address the app was started for (fixed at start).
    pub listen: SocketAddr,
    /// Longest drain after shutdown starts (fixed at start).
    pub shutdown_grace: Duration,
    /// Spans and metrics of this app (its own Prometheus registry).
    pub telemetry: Telemetry,
    /// Revocations: the index the verifier asks, the store, and the
    /// [`crate::revocation::Record`] the webhook endpoint calls.
    pub revocation: Arc<RevocationService>,
    /// The Clerk webhook endpoint's state (served when `ServeOptions` has
    /// a webhook listener); its signing secrets follow reloads.
    pub webhook: Arc<Endpoint>,
    /// `--webhook-listen` as started (a reload cannot change it).
    webhook_listen: Option<SocketAddr>,
    /// New issuers' key caches are made with this.
    keys: KeyContext,
    /// Serializes reloads.
    reloading: Arc<Mutex<()>>,
}

impl fmt::Debug for App {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("App")
            .field("listen", &self.listen)
            .field("tls", &self.tls.is_some())
            .field("connections", &self.connections)
            .finish_non_exhaustive()
    }
}

impl App {
    /// Builds the key caches (spawning their refreshers), the verifier and
    /// the services. Must run inside a Tokio runtime.
    pub fn start(config: &Config, deps: Deps) -> Result<App, StartError> {
        let tls = config.tls.clone().map(TlsState::load).transpose().map_err(StartError::Tls)?;
        let changed = Arc::new(Notify::new());
        let metrics = Arc::new(Metrics::new(deps.clock.clone(), deps.meter.as_ref()));
        let keys = KeyContext {
            fetcher: Fetcher::new().map_err(StartError::HttpClient)?,
            clock: deps.clock.clone(),
            observer: metrics.clone(),
            changed: changed.clone(),
        };
        let trust = Trust::new(config.issuers.iter().map(|i| TrustedIssuer {
            policy: Arc::new(i.policy.clone()),
            keys: IssuerKeys::start(Arc::from(i.issuer.as_str()), i.source.clone(), i.refresh, keys.clone()),
        }));
        let revocation = Arc::new(RevocationService::new(
            revocation_store(config)?,
            config.revocation.settings,
            deps.clock.clone(),
            metrics.revocation(),
            changed.clone(),
        ));
        let verifier = Arc::new(
            Verifier::with_token_cache(trust, deps.clock.clone(), config.token_cache_size)
                .with_revocations(revocation.index().clone()),
        );
        metrics.watch_keys(&verifier);
        let readiness = Arc::new(Readiness::new(verifier.clone(), changed).with_gate(revocation.clone()));
        revocation.spawn();
        let webhook = Arc::new(Endpoint::new(
            config.webhook.signing_secrets.clone(),
            config.webhook.max_body_bytes,
            deps.clock.clone(),
            metrics.clone(),
        ));
        let telemetry = Telemetry::new(metrics);
        Ok(App {
            introspect: IntrospectService::new(verifier.clone()).with_telemetry(telemetry.clone()),
            authz: AuthzService::new(verifier.clone(), Arc::new(config.authz.clone()))
                .with_telemetry(telemetry.clone()),
            verifier,
            readiness,
            tls,
            connections: config.connections,
            listen: config.listen,
            shutdown_grace: config.shutdown_grace,
            telemetry,
            revocation,
            webhook,
            webhook_listen: config.webhook.listen,
            keys,
            reloading: Arc::new(Mutex::new(())),
        })
    }

    /// Applies `config` to the running app (see the [module](self) docs).
    /// Must run inside a Tokio runtime (new issuers start refreshers).
    /// Readiness is recomputed at once: a new issuer is NOT_SERVING until
    /// its keys load, as at start-up.
    pub fn reload(&self, config: &Config) -> Result<ReloadSummary, ReloadError> {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let mut summary = ReloadSummary::default();

        // TLS first: it is the only part that can still fail.
        match (&self.tls, &config.tls) {
            (Some(state), Some(files)) if state.files() != *files => {
                state.reload_from(files.clone())?;
                summary.tls_files_changed = true;
            }
            (None, Some(_)) => summary.needs_restart.push("tls (turning TLS on)"),
            (Some(_), None) => summary.needs_restart.push("tls (turning TLS off)"),
            _ => {}
        }
        if config.listen != self.listen {
            summary.needs_restart.push("listen");
        }
        if config.shutdown_grace != self.shutdown_grace {
            summary.needs_restart.push("shutdown_grace");
        }
        if config.webhook.listen != self.webhook_listen {
            summary.needs_restart.push("webhook_listen");
        }
        if config.webhook.max_body_bytes != self.webhook.max_body_bytes() {
            summary.needs_restart.push("webhook_max_body_bytes");
        }
        self.webhook.set_secrets(config.webhook.signing_secrets.clone());
        summary.webhook_signing_secrets = self.webhook_listen.map(|_| config.webhook.signing_secrets.len());

        let current = self.verifier.trust();
        let mut issuers = Vec::with_capacity(config.issuers.len());
        for wanted in &config.issuers {
            let name: Arc<str> = Arc::from(wanted.issuer.as_str());
            let old = current.get(&wanted.issuer);
            let keys = match old {
                Some(old)
                    if same_source(old.keys.source(), &wanted.source) && *old.keys.settings() == wanted.refresh =>
                {
                    summary.kept.push(name.clone());
                    old.keys.clone()
                }
                other => {
                    if other.is_some() {
                        summary.new_key_source.push(name.clone());
                    } else {
                        summary.added.push(name.clone());
                    }
                    IssuerKeys::start(name.clone(), wanted.source.clone(), wanted.refresh, self.keys.clone())
                }
            };
            let policy = match old {
                Some(old) if *old.policy == wanted.policy => old.policy.clone(),
                _ => {
                    if old.is_some() && summary.kept.last() == Some(&name) {
                        summary.policy_changed.push(name.clone());
                    }
                    Arc::new(wanted.policy.clone())
                }
            };
            issuers.push(TrustedIssuer { policy, keys });
        }
        summary.removed = current
            .issuers()
            .map(|i| i.keys.issuer().clone())
            .filter(|i| !config.issuers.iter().any(|c| *c.issuer == **i))
            .collect();
        summary.removed.sort();
        self.verifier.set_trust(Trust::new(issuers));
        drop(current);
        self.readiness.poke();
        Ok(summary)
    }
}

/// Why a reload was refused (the running configuration stays).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new TLS files do not load.
    #[error("the new TLS files do not load: {0}")]
    Tls(#[from] TlsError),
}

/// What a reload changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadSummary {
    /// Issuers that kept their key cache.
    pub kept: Vec<Arc<str>>,
    /// Of those, the ones whose policy changed.
    pub policy_changed: Vec<Arc<str>>,
    /// Issuers whose key source or refresh timing changed: a new cache.
    pub new_key_source: Vec<Arc<str>>,
    /// Issuers added.
    pub added: Vec<Arc<str>>,
    /// Issuers removed.
    pub removed: Vec<Arc<str>>,
    /// Whether new TLS file paths were taken.
    pub tls_files_changed: bool,
    /// Settings that changed but need a restart.
    pub needs_restart: Vec<&'static str>,
    /// Webhook signing secrets now in use (re-read), when the webhook
    /// endpoint is served.
    pub webhook_signing_secrets: Option<usize>,
}

impl fmt::Display for ReloadSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |v: &[Arc<str>]| v.iter().map(|s| &**s).collect::<Vec<_>>().join(", ");
        write!(f, "{} issuer(s) kept their keys ({} with a new policy)", self.kept.len(), self.policy_changed.len())?;
        for (what, v) in
            [("added", &self.added), ("removed", &self.removed), ("new key source or timing", &self.new_key_source)]
        {
            if !v.is_empty() {
                write!(f, "; {what}: {}", list(v))?;
            }
        }
        if self.tls_files_changed {
            f.write_str("; new TLS files")?;
        }
        if let Some(n) = self.webhook_signing_secrets {
            write!(f, "; {n} webhook signing secret(s)")?;
        }
        Ok(())
    }
}

/// The revocation store `config` names: Redis, or in-process.
fn revocation_store(config: &Config) -> Result<Arc<dyn Store>, StartError> {
    let r = &config.revocation;
    Ok(match &r.store {
        None => Arc::new(MemoryStore::new(r.settings.max_entries)),
        Some(url) => Arc::new(
            RedisStore::new(&url.url, r.password.as_ref().map(|p| p.0.as_str()), STREAM_KEY, r.settings.retention)
                .map_err(StartError::RevocationStore)?,
        ),
    })
}

/// Whether two key sources are the same (static keys: the same keys, in order).
pub fn same_source(a: &KeySource, b: &KeySource) -> bool {
    match (a, b) {
        (KeySource::Discovery, KeySource::Discovery) => true,
        (KeySource::JwksUri(x), KeySource::JwksUri(y)) => x == y,
        (KeySource::Static(x), KeySource::Static(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| p.same_key_as(q))
        }
        _ => false,
    }
}
