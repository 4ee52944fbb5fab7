//! Configuration reload without a restart: on SIGHUP, and when the config
//! file (or a key file it names, or a TLS file) changes.
//!
//! [`App::reload`] swaps the trust set in one step
//! ([`Verifier::set_trust`](crate::verify::Verifier::set_trust)): connections stay open, and a call in flight
//! finishes with the configuration it started with. An issuer whose
//! identifier, key source and refresh timing are unchanged keeps its key
//! cache (no refetch; only its policy is replaced if that changed); a new
//! issuer, or one whose key source or timing changed, gets a new cache; a
//! removed issuer's cache is dropped once no call uses it (its refresher
//! stops). A config that does not load is refused with an error in the log
//! and the running configuration stays.
//!
//! What a reload cannot change (the listen address, turning TLS on or off,
//! the shutdown grace) is reported as needing a restart; everything else in
//! the file applies.

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::Config;
use crate::config::file::Source;
use crate::keys::{IssuerKeys, KeyContext, KeySource};
use crate::server::{App, ServeError};
use crate::tls::TlsError;
use crate::verify::{Trust, TrustedIssuer};

/// What reload needs besides the [`App`]'s parts: the shared key context
/// (for new issuers' caches) and the settings only a restart can change.
pub struct ReloadContext {
    keys: KeyContext,
    listen: SocketAddr,
    shutdown_grace: Duration,
    /// Serializes reloads.
    lock: Mutex<()>,
}

impl fmt::Debug for ReloadContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadContext").field("listen", &self.listen).finish_non_exhaustive()
    }
}

impl ReloadContext {
    /// The context of an app started from `config` with `keys`.
    pub fn new(keys: KeyContext, config: &Config) -> Self {
        Self { keys, listen: config.listen, shutdown_grace: config.shutdown_grace, lock: Mutex::new(()) }
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
    /// Settings that changed in the file but need a restart.
    pub needs_restart: Vec<&'static str>,
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
        Ok(())
    }
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

impl App {
    /// Applies `config` to the running app (see the [module](self) docs).
    /// Must run inside a Tokio runtime (new issuers start refreshers).
    /// Readiness is recomputed at once: a new issuer is NOT_SERVING until
    /// its keys load, as at start-up.
    pub fn reload(&self, config: &Config) -> Result<ReloadSummary, ReloadError> {
        let ctx = &self.reload;
        let _one_at_a_time = ctx.lock.lock().unwrap_or_else(|e| e.into_inner());
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
        if config.listen != ctx.listen {
            summary.needs_restart.push("listen");
        }
        if config.shutdown_grace != ctx.shutdown_grace {
            summary.needs_restart.push("shutdown_grace");
        }

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
                    IssuerKeys::start(name.clone(), wanted.source.clone(), wanted.refresh, ctx.keys.clone())
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

/// Serves like [`crate::server::run_with`], and reloads while serving: on
/// SIGHUP, and every `config.watch_interval` when `source` (the config file
/// and the files it names) or the TLS files changed.
pub async fn run(
    listener: TcpListener,
    config: Config,
    source: Option<Source>,
    options: crate::server::ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let app = App::start(&config)?;
    let stop = CancellationToken::new();
    let watcher = tokio::spawn(watch(app.clone(), source, config.watch_interval, stop.clone()));
    let result = crate::server::serve_with(listener, app, config.shutdown_grace, options, shutdown).await;
    stop.cancel();
    let _ = watcher.await;
    result
}

/// Reloads on SIGHUP (always) and on file changes (checked every
/// `interval`; zero: never), until `stop`.
pub async fn watch(app: App, source: Option<Source>, mut interval: Duration, stop: CancellationToken) {
    let source = source.map(Arc::new);
    let mut hangup = hangup_signal();
    loop {
        let tick = async {
            if interval.is_zero() {
                std::future::pending::<()>().await;
            } else {
                tokio::time::sleep(interval).await;
            }
        };
        let forced = tokio::select! {
            () = stop.cancelled() => return,
            () = next_hangup(&mut hangup) => true,
            () = tick => false,
        };
        if forced {
            info!("received SIGHUP: reloading the configuration and TLS files");
        }
        if let Some(new_interval) = reload_once(&app, source.as_ref(), forced).await {
            interval = new_interval;
        }
    }
}

/// One reload pass; returns the new watch interval when the config changed.
async fn reload_once(app: &App, source: Option<&Arc<Source>>, forced: bool) -> Option<Duration> {
    let mut new_interval = None;
    match source {
        Some(source) => {
            let source = source.clone();
            let loaded = tokio::task::spawn_blocking(move || {
                if forced || source.changed() { Some((source.path().to_owned(), source.load())) } else { None }
            })
            .await
            .ok()
            .flatten();
            match loaded {
                None => {}
                Some((path, Err(e))) => {
                    error!(file = %path.display(), error = %e, "configuration reload refused; the running configuration stays in use");
                }
                Some((path, Ok(config))) => match app.reload(&config) {
                    Ok(summary) => {
                        info!(file = %path.display(), %summary, "configuration reloaded");
                        if !summary.needs_restart.is_empty() {
                            warn!(settings = ?summary.needs_restart, "these settings changed in the file but apply only after a restart");
                        }
                        new_interval = Some(config.watch_interval);
                    }
                    Err(e) => {
                        error!(file = %path.display(), error = %e, "configuration reload refused; the running configuration stays in use");
                    }
                },
            }
        }
        None if forced => info!("no --config file: only the TLS files (if any) are re-read"),
        None => {}
    }
    if let Some(tls) = app.tls.clone() {
        match tokio::task::spawn_blocking(move || if forced { tls.reload() } else { tls.reload_if_changed() }).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => {
                if forced {
                    debug!("TLS files unchanged");
                }
            }
            Ok(Err(e)) => {
                error!(error = %e, "TLS reload refused; the running certificates stay in use");
            }
            Err(e) => warn!(error = %e, "the TLS reload task failed"),
        }
    }
    new_interval
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = ();

#[cfg(unix)]
fn hangup_signal() -> Hangup {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGHUP; the configuration reloads only when its files change");
            None
        }
    }
}

#[cfg(not(unix))]
fn hangup_signal() -> Hangup {}

#[cfg(unix)]
async fn next_hangup(h: &mut Hangup) {
    match h {
        Some(s) => {
            if s.recv().await.is_none() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}

#[cfg(not(unix))]
async fn next_hangup(_: &mut Hangup) {
    std::future::pending::<()>().await;
}
