//! Configuration reload while serving: on SIGHUP, and when the config file
//! (or a key file it names, or a TLS file) changes. The loop here notices
//! and loads; [`App::reload`] applies (see [`crate::app`]). A config that
//! does not load is refused with an error in the log and the running
//! configuration stays.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::app::App;
use crate::config::Loader;

/// Reloads on SIGHUP (always) and on file changes (checked every
/// `interval`; zero: never), until `stop`.
pub async fn watch(app: App, loader: Option<Arc<Loader>>, mut interval: Duration, stop: CancellationToken) {
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
        if let Some(new_interval) = reload_once(&app, loader.as_ref(), forced).await {
            interval = new_interval;
        }
    }
}

/// One reload pass; returns the new watch interval when the config changed.
async fn reload_once(app: &App, loader: Option<&Arc<Loader>>, forced: bool) -> Option<Duration> {
    let mut new_interval = None;
    match loader.and_then(|l| l.file().map(|path| (l.clone(), path.to_owned()))) {
        Some((loader, path)) => {
            let loaded = tokio::task::spawn_blocking(move || {
                if forced || loader.changed() { Some((path, loader.load())) } else { None }
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
